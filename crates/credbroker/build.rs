//! Link settings for the `credbroker` binary only (tests and dependencies are untouched).
//!
//! Relative relocations packed as RELR (`-z pack-relative-relocs`): a position-independent
//! binary keeps one 24-byte `.rela.dyn` entry per pointer it must relocate at start-up, and the
//! dynamic loader reads every entry, so the whole table stays resident for the life of the
//! process. Ours held ~460 KiB of entries (mostly vtables and string tables), all of it in the
//! idle RSS of every pod's sidecar. RELR encodes runs of adjacent pointers as bitmaps: the same
//! relocations in a few KiB, and the binary stays PIE (ASLR intact). It needs glibc ≥ 2.36 at run
//! time, which the image's base (distroless cc-debian12) has; the loader refuses an older glibc
//! with a message naming `GLIBC_ABI_DT_RELR`, it never runs half-relocated.
//! Measured in docs/benchmarks.md ("Idle memory").
//!
//! The functions a sidecar runs, laid out together (`link/hot.ld`, written by
//! benches/layout.py): start-up runs ~1.7 MiB of functions scattered over ~10 MiB of `.text`,
//! and every first touch maps its page and the kernel's fault-around neighbours, so most of
//! `.text` stayed resident. The script is an `INSERT BEFORE .text` fragment (the default layout
//! stays as it is) listing section patterns; optimised builds only, since a debug binary's
//! hundreds of thousands of sections would make every test link slower for nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CREDBROKER_NO_RELR");
    println!("cargo:rerun-if-changed=link/hot.ld");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    // Escape hatch for building on a glibc older than 2.36 (the loader would refuse the binary).
    let opted_out = std::env::var_os("CREDBROKER_NO_RELR").is_some();
    if os == "linux" && env == "gnu" && !opted_out {
        println!("cargo:rustc-link-arg-bin=credbroker=-Wl,-z,pack-relative-relocs");
    }
    let optimised = std::env::var("OPT_LEVEL").is_ok_and(|level| level != "0");
    if os == "linux" && optimised {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bin=credbroker=-Wl,-T,{dir}/link/hot.ld");
    }
}
