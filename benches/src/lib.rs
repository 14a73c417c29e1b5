//! credbroker's benchmarks, shared by the criterion benches (`benches/benches/`) and the
//! `credbroker-bench` binary (load generator, bare-hyper floor, refresh path, fleet simulation).
//!
//! `scripts/bench` runs all of it and writes `target/bench-report.md`; `scripts/bench --smoke`
//! is the short version CI runs so the benchmarks cannot rot.

pub mod admission;
pub mod fleet;
pub mod floor;
pub mod identities;
pub mod inproc;
pub mod load;
pub mod loadsuite;
pub mod matrix;
pub mod placement;
pub mod procs;
pub mod procstat;
pub mod refresh;
pub mod setup;
pub mod stats;
pub mod targets;
pub mod tool;
pub mod wrk;
