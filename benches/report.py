#!/usr/bin/env python3
"""Assembles the benchmark parts (JSON under target/bench/) into target/bench-report.md and
target/bench-report.json, with every target checked. Exits 1 if a correctness check failed
(load errors, more than one upstream exchange for a cold cache, a rotation that did not use
the new token, a part that did not run); a missed performance target is reported, not fatal.

Usage: benches/report.py --mode full|smoke [--dir target/bench]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report_matrix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine() -> dict:
    lscpu = {}
    for line in sh("lscpu").splitlines():
        k, _, v = line.partition(":")
        lscpu[k.strip()] = v.strip()
    return {
        "cpu": lscpu.get("Model name", platform.processor()),
        "cpus": lscpu.get("CPU(s)", str(os.cpu_count())),
        "cores": lscpu.get("Core(s) per socket", "?") + " core(s) × " + lscpu.get("Socket(s)", "?") + " socket(s), "
                 + lscpu.get("Thread(s) per core", "?") + " thread(s) per core",
        "hypervisor": lscpu.get("Hypervisor vendor", ""),
        "kernel": platform.release(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else [],
        "commit": sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def criterion_results(root: Path) -> list[dict]:
    out = []
    for bench in sorted(root.glob("**/new/benchmark.json")):
        meta = load(bench)
        est = load(bench.parent / "estimates.json")
        if not meta or not est:
            continue
        out.append({
            "id": meta.get("full_id") or meta.get("title"),
            "mean_ns": est["mean"]["point_estimate"],
            "median_ns": est["median"]["point_estimate"],
            "ci_ns": [est["mean"]["confidence_interval"]["lower_bound"],
                      est["mean"]["confidence_interval"]["upper_bound"]],
        })
    return out


def fmt(x, digits=0):
    if x is None:
        return "–"
    if isinstance(x, float) and x != x:  # NaN
        return "–"
    return f"{x:,.{digits}f}"


def spread(s: dict, digits=0, scale=1.0) -> str:
    if not s or not s.get("n"):
        return "–"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if s["n"] == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["full", "smoke"], required=True)
    ap.add_argument("--dir", default=str(ROOT / "target/bench"))
    ap.add_argument("--binary", default=None, help="the release binary whose size is reported")
    ap.add_argument("--baseline-binary", default=None, help="the baseline binary, for its size")
    ap.add_argument("--command", default="scripts/bench", help="the command that reproduces this report")
    ap.add_argument("--only", default="", help="the parts that ran (scripts/bench --only); empty: all")
    args = ap.parse_args()
    ran = set(filter(None, args.only.split(",")))
    d = Path(args.dir)

    names = ("matrix", "matrix_wrk", "sizing", "load", "refresh", "fleet", "startup", "startup_all", "startup_baseline",
             "startup_all_baseline", "ttfc", "admission", "identities")
    parts = {name: load(d / f"{name}.json") for name in names}
    loadavg_log = []
    if (d / "loadavg.jsonl").exists():
        loadavg_log = [json.loads(line) for line in (d / "loadavg.jsonl").read_text().splitlines() if line.strip()]
    crit = criterion_results(ROOT / "target/criterion") if args.mode == "full" else []
    m = machine()
    binary = Path(args.binary) if args.binary else None
    binary_bytes = binary.stat().st_size if binary and binary.exists() else None
    base_bin = Path(args.baseline_binary) if args.baseline_binary else None
    baseline_bytes = base_bin.stat().st_size if base_bin and base_bin.exists() else None

    problems: list[str] = []
    for name in ("matrix", "refresh", "fleet", "startup", "admission", "identities"):
        if parts[name] is None and (not ran or name in ran):
            problems.append(f"part {name!r} produced no result")
    checks: list[tuple[str, str, str, bool | None]] = []  # what, figure, target, met

    L, R, F, S, T = (parts[k] for k in ("load", "refresh", "fleet", "startup", "ttfc"))
    M, Z = parts["matrix"], parts["sizing"]
    if M:
        problems.extend(report_matrix.problems(M))
        checks.extend(report_matrix.checks(M))
        for p in M["placements"]:
            srv = {s["label"]: s for s in p["servers"]}
            if p["placement"] == "pinned" and "broker" in srv and srv["broker"].get("idle_rss_kib"):
                b = srv["broker"]
                base = srv.get("baseline", {}).get("idle_rss_kib")
                checks.append(("idle RSS, AWS+GCP+Azure held (matrix, pinned)",
                               f"{b['idle_rss_kib'] / 1024:.1f} MiB" + (f" (baseline {base / 1024:.1f})" if base else ""),
                               "≤ 8 MiB", b["idle_rss_kib"] <= 8 * 1024))
                checks.append(("peak RSS under load (VmHWM, pinned matrix)", f"{b['peak_rss_kib'] / 1024:.1f} MiB",
                               "≤ 24 MiB", b["peak_rss_kib"] <= 24 * 1024))
    for extra in (Z, parts["matrix_wrk"]):
        if extra:
            problems.extend(report_matrix.problems(extra))
    if L:
        for c in L["cells"]:
            if c["errors"]:
                problems.append(f"load {c['target']}@{c['connections']}: {c['errors']} failed requests")
        for c in (c for c in L["cells"] if c["connections"] == 64):
            r, p = c["rps_ratio"], c["p99_ratio"]
            checks.append((f"throughput vs floor, {c['target']} @ 64 conns", spread(r, 2) + "×", "≥ 0.90×",
                           r["n"] and r["median"] >= 0.9))
            checks.append((f"p99 vs floor p99, {c['target']} @ 64 conns",
                           f"{spread(p, 2)}× ({fmt(c['broker_p99_us']['median'])} vs {fmt(c['floor_p99_us']['median'])} µs)",
                           "≤ 1.25×", p["n"] and p["median"] <= 1.25))
        checks.append(("idle RSS (AWS+GCP+Azure held)", f"{L['idle_rss_kib'] / 1024:.1f} MiB", "≤ 10 MiB",
                       L["idle_rss_kib"] <= 10 * 1024))
        checks.append(("peak RSS under load (VmHWM, whole load run)", f"{L['peak_rss_kib'] / 1024:.1f} MiB",
                       "≤ 24 MiB", L["peak_rss_kib"] <= 24 * 1024))
    if S:
        SB, SAB = parts["startup_baseline"], parts["startup_all_baseline"]
        checks.append(("idle RSS (AWS only, startup.py)", f"{S['idle_rss_mib']:.1f} MiB"
                       + (f" (baseline {SB['idle_rss_mib']:.1f})" if SB else ""), "≤ 8 MiB",
                       S["idle_rss_mib"] <= 8))
        aws0 = None
        if R:
            aws0 = next((e["ms"]["median"] for e in R["exchange"]
                         if e["cloud"] == "aws" and e["injected_latency_ms"] == 0), None)
        budget = 25 + (aws0 or 0)
        for what, st_part, base_part in (("AWS", S, SB), ("all clouds", parts["startup_all"], SAB)):
            if not st_part:
                continue
            st = st_part["start_to_ready_ms"]
            base = f"; baseline {base_part['start_to_ready_ms']['median']:.1f}" if base_part else ""
            checks.append((f"start → /readyz 200 ({what}, local fakes)",
                           f"median {st['median']:.1f} ms (min {st['min']:.1f}, max {st['max']:.1f}{base})",
                           f"≤ 25 ms + one exchange ({budget:.1f} ms)", st["median"] <= budget))
    if binary_bytes is not None and args.mode == "full":
        checks.append(("release binary, stripped", f"{binary_bytes / MIB:.2f} MiB"
                       + (f" (baseline {baseline_bytes / MIB:.2f})" if baseline_bytes else ""), "≤ 12 MiB",
                       binary_bytes <= 12 * MIB))
    if T:
        checks.append(("time to first credential, boto3: direct / through broker",
                       f"{T['speedup']:.1f}× ({T['direct']['credential_ms']['median']:.1f} vs "
                       f"{T['broker']['credential_ms']['median']:.1f} ms)", "≥ 10×", T["speedup"] >= 10))
    if F:
        by = {(r["name"], r["jitter"]): r for r in F}
        mass = [r for r in F if r["name"].startswith("mass start (")]
        if len(mass) == 2:
            plain = by[(mass[0]["name"], False)]["refresh_peak_rps"]
            jit = by[(mass[0]["name"], True)]["refresh_peak_rps"]
            checks.append(("fleet: refresh peak with jitter / without (10,000 pods, mass start)",
                           f"{jit} / {plain} req/s = {jit / plain:.3f}", "≤ 0.10", jit <= plain / 10))
    if R:
        for h in R["cold_cache"]:
            ok = h["upstream_exchanges"] == 1 and h["ok_responses"] == h["clients"]
            checks.append((f"cold cache, {h['clients']} concurrent clients ({h['target']})",
                           f"{h['upstream_exchanges']} exchange(s), {h['ok_responses']} × 200", "1 exchange, all 200", ok))
            if not ok:
                problems.append(f"cold cache {h['target']}: {h['upstream_exchanges']} exchanges, "
                                f"{h['ok_responses']}/{h['clients']} answered 200")
        if not R["rotation"]["used_new_token"]:
            problems.append("rotation: an exchange after rotation did not carry the new token")

    md: list[str] = []
    w = md.append
    w(f"# credbroker benchmark report ({args.mode})\n")
    w(f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['cores']}{', ' + m['hypervisor'] + ' guest' if m['hypervisor'] else ''}), "
      f"Linux {m['kernel']}; load average at the end "
      f"{' '.join(m['loadavg'])}; commit {m['commit']}; {m['date']}.")
    w(f"\nReproduce: `{args.command}` (at commit {m['commit']}; the baseline binary is "
      "`target/baseline/credbroker` when present).")
    if loadavg_log:
        w("\nLoad average (1/5/15 min) when each part started: "
          + "; ".join(f"{e['part']} {e['loadavg']}" for e in loadavg_log) + ".")
    if args.mode == "smoke":
        w("\n**Smoke run** (debug build, a fraction of a second per part): proves the benchmarks run; "
          "the figures mean nothing. `scripts/bench` gives the real ones.")
    w("\n## Targets\n")
    w("| what | figure | target | |")
    w("|---|---|---|---|")
    for what, figure, target, met in checks:
        w(f"| {what} | {figure} | {target} | {'met' if met else 'MISSED'} |")

    if M:
        report_matrix.render(M, w)
    if parts["matrix_wrk"]:
        report_matrix.render(parts["matrix_wrk"], w, "Load matrix, wrk (smoke)")
    if Z:
        report_matrix.render_sizing(Z, w)
    if L:
        w(f"\n## Load: broker vs bare-hyper floor (`scripts/bench`, part `load`)\n")
        w(f"Closed loop, HTTP/1.1 keep-alive, {L['duration_s']} s measured after {L['warmup_s']} s warm-up, "
          f"{L['repeat']} alternating broker/floor run pairs per cell: median (min–max). The load generator "
          "shares the 2 cores. CPU is the server's user+system time per request.\n")
        w("| surface | conns | broker req/s | floor req/s | ratio | broker p50 / p99 / p99.9 µs | floor p99 µs | p99 ratio | CPU µs/req broker / floor |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in L["cells"]:
            b = c["broker"]
            mid = sorted(b, key=lambda s: s["rps"])[len(b) // 2]
            fcpu = sorted(c["floor"], key=lambda s: s["rps"])[len(c["floor"]) // 2]
            w(f"| {c['target']} ({c['body_bytes']} B) | {c['connections']} | {spread(c['broker_rps'])} | "
              f"{spread(c['floor_rps'])} | {spread(c['rps_ratio'], 2)} | {fmt(mid['p50_us'])} / {fmt(mid['p99_us'])} / "
              f"{fmt(mid['p999_us'])} | {spread(c['floor_p99_us'])} | {spread(c['p99_ratio'], 2)} | "
              f"{fmt(mid['server_cpu_us_per_req'], 1)} / {fmt(fcpu['server_cpu_us_per_req'], 1)} |")
        w(f"\nBroker RSS: idle {L['idle_rss_kib'] / 1024:.1f} MiB (all three clouds' credentials held), "
          f"peak {L['peak_rss_kib'] / 1024:.1f} MiB over the whole run (256 connections included); "
          f"floor peak {L['floor_peak_rss_kib'] / 1024:.1f} MiB.")

    if crit:
        w("\n## Micro-benchmarks (criterion, `cargo bench -p credbroker-benches`)\n")
        w("| benchmark | mean | median |")
        w("|---|---:|---:|")
        for c in crit:
            w(f"| {c['id']} | {c['mean_ns']:,.0f} ns | {c['median_ns']:,.0f} ns |")
    elif args.mode == "smoke":
        w("\n## Micro-benchmarks\n\nRun once each in test mode (`cargo test -p credbroker-benches --benches`).")

    if R:
        w("\n## Refresh path (`credbroker-bench refresh`)\n")
        w("| exchange | upstream round trips | injected latency | ms: median (min–max) |")
        w("|---|---:|---:|---:|")
        for e in R["exchange"]:
            w(f"| {e['cloud']}: {e['how']} | {e['round_trips']} | {e['injected_latency_ms']} ms | {spread(e['ms'], 2)} |")
        rot = R["rotation"]
        w(f"\nkubelet-style rotation (`..data` swap) → a servable credential from an exchange with the new token, "
          f"while STS had denied the old one: {spread(rot['ms'], 1)} ms over {rot['ms']['n']} rotations; "
          f"new token used every time: {rot['used_new_token']}. (While a credential is valid a rotation costs "
          "nothing: the next scheduled refresh re-reads the file.)\n")
        w("| cold cache | clients | injected latency | upstream exchanges | answered 200 | last answer after |")
        w("|---|---:|---:|---:|---:|---:|")
        for h in R["cold_cache"]:
            w(f"| {h['target']} | {h['clients']} | {h['injected_latency_ms']} ms | {h['upstream_exchanges']} | "
              f"{h['ok_responses']} | {h['all_answered_ms']:.0f} ms |")

    if T:
        w("\n## Time to first credential, a new boto3 process (`benches/ttfc.py`)\n")
        w(f"Fake STS with {T['sts_latency_ms']} ms injected latency; {T['runs']} processes each way. "
          "`credential` = `Session().get_credentials().get_frozen_credentials()`.\n")
        w("| path | credential ms | boto3 import ms | whole process ms |")
        w("|---|---:|---:|---:|")
        for k, label in (("broker", "through the broker (container provider)"), ("direct", "boto3's own web-identity exchange")):
            x = T[k]
            w(f"| {label} | {spread(x['credential_ms'], 1)} | {spread(x['import_ms'])} | {spread(x['process_ms'])} |")
        w(f"\nSpeed-up: {T['speedup']}× on the credential, {T['process_speedup']}× on the whole process.")

    if S:
        w("\n## Start-up (`benches/startup.py`)\n")
        for label, s in (("", S), ("", parts["startup_all"]), ("baseline, ", parts["startup_baseline"]),
                         ("baseline, ", parts["startup_all_baseline"])):
            if s:
                st = s["start_to_ready_ms"]
                w(f"- {label}clouds {s.get('clouds', 'aws')}: start → `/readyz` 200 median {st['median']} ms "
                  f"(min {st['min']}, max {st['max']}, {s['runs']} runs); idle RSS {s['idle_rss_mib']} MiB.")
        if binary_bytes is not None and args.mode == "full":
            w(f"- release binary (LTO, stripped): {binary_bytes / MIB:.2f} MiB"
              + (f"; baseline {baseline_bytes / MIB:.2f} MiB." if baseline_bytes else "."))

    if F:
        w("\n## Fleet simulation (`credbroker-bench fleet`)\n")
        w(f"{F[0]['pods']:,} pods, 24 h, 1-hour AWS credentials, the broker's own `Policy::refresh_at` and "
          "`retry_delay`; \"refresh\" columns exclude the start-up burst (first start window + 10 min). "
          "GCP's STS quota is 6,000/min (100/s) per project.\n")
        w("| scenario | jitter | exchanges | peak/s (all) | refresh peak/s | refresh p99/s | refresh peak/min | outage window peak/s | failed | pods ever without credential |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in F:
            w(f"| {r['name']} | {'±10 %' if r['jitter'] else 'none'} | {r['exchanges']:,} | {r['peak_rps']:,} | "
              f"{r['refresh_peak_rps']:,} | {r['refresh_p99_rps']:.0f} | {r['refresh_peak_per_min']:,} | "
              f"{fmt(r['outage_peak_rps'])} | {r['failed_exchanges']:,} | {r['pods_ever_without_credential']} |")

    A, I = parts["admission"], parts["identities"]
    if A:
        w("\n## Admission webhook (`credbroker-bench admission`)\n")
        w("An AdmissionReview of a labelled two-container pod whose ServiceAccount names all four clouds "
          f"(the patch has {A['patch_operations']} operations). Latency in µs, sequential reviews on one "
          "keep-alive connection, as the API server sends them.\n")
        w("| what | p50 µs | p99 µs | max µs | reviews |")
        w("|---|---:|---:|---:|---:|")
        for label, q in (("review in process, ServiceAccount in memory (read excluded)", A["in_process"]),
                         ("`credbroker inject` over HTTPS, ServiceAccount read from the API server (read included)", A["https"]),
                         ("the same again (A/A control)", A["https_again"]),
                         ("the ServiceAccount GET alone (emulated API server, same client)", A["api_read"])):
            w(f"| {label} | {fmt(q['p50_us'])} | {fmt(q['p99_us'])} | {fmt(q['max_us'])} | {q['n']} |")
        if A.get("wrk"):
            x = A["wrk"]
            w(f"| wrk, 1 connection, the same POST (read included) | {fmt(x['p50_us'])} | {fmt(x['p99_us'])} | – | "
              f"{x['requests']:,} ({x['requests_per_s']:.0f}/s, {x['errors']} errors) |")
        w(f"\nWebhook RSS: idle {A['rss_idle_kib'] / 1024:.1f} MiB, after the runs {A['rss_after_kib'] / 1024:.1f} MiB, "
          f"peak {A['rss_peak_kib'] / 1024:.1f} MiB.")
        checks.append(("admission p99, ServiceAccount read included (HTTPS)", f"{fmt(A['https']['p99_us'])} µs",
                       "well inside the webhook's 5 s timeout", A["https"]["p99_us"] < 1_000_000))
        if A.get("wrk") and A["wrk"]["errors"]:
            problems.append(f"admission: wrk counted {A['wrk']['errors']} errors")
    if I:
        w("\n## Several identities per pod (`credbroker-bench identities`)\n")
        w(f"The binary holding two AWS roles and one chained from the default, two Azure identities, two Google "
          f"service accounts; every credential issued for {I['lifetime_s']} s; {I['seconds']} s run "
          f"({I['cycles']:.1f} lifetimes). Counts from the emulators' logs.\n")
        w("| cloud | identity | upstream call | exchanges | per lifetime |")
        w("|---|---|---|---:|---:|")
        for c in I["counts"]:
            w(f"| {c['cloud']} | {c['identity']} | {c['how']} | {c['exchanges']} | {c['per_cycle']:.2f} |")
        w(f"\nChained role: {I['chained_rederived']} calls signed with a new base session (re-derived), "
          f"{I['chained_own_refresh']} on its own schedule, {I['chained_failed']} failed; from STS issuing a base "
          f"session to the chained call signed with it: {spread(I['rederive_ms'], 1)} ms. GCP: {I['gcp_sts']} STS "
          f"exchanges for {I['gcp_impersonations']} impersonations.")
        if I["chained_failed"]:
            problems.append(f"identities: {I['chained_failed']} chained calls failed")

    if problems:
        w("\n## Problems\n")
        for p in problems:
            w(f"- {p}")

    text = "\n".join(md) + "\n"
    (ROOT / "target").mkdir(exist_ok=True)
    suffix = "" if args.mode == "full" else "-smoke"
    (ROOT / f"target/bench-report{suffix}.md").write_text(text)
    (ROOT / f"target/bench-report{suffix}.json").write_text(json.dumps({
        "mode": args.mode, "machine": m, "command": args.command, "loadavg_log": loadavg_log,
        "binary_bytes": binary_bytes, "baseline_binary_bytes": baseline_bytes, "criterion": crit,
        "checks": [{"what": a, "figure": b, "target": c, "met": bool(dd)} for a, b, c, dd in checks],
        "problems": problems, **parts}, indent=2))
    print(text)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
