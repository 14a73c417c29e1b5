"""The load-matrix sections of target/bench-report.md (`credbroker-bench matrix` results):
broker vs floor with wrk and our generator, the A/A control, the Go floor, the baseline binary,
and the runtime-sizing variants. Used by benches/report.py."""

from __future__ import annotations

RPS_TARGET = 0.95
P99_TARGET = 1.25


def _f(x, digits=0):
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:,.{digits}f}"


def _med(s):
    return s["median"] if s and s.get("n") else None


def _sp(s, digits=2, scale=1.0):
    if not s or not s.get("n"):
        return "–"
    if s["n"] == 1 or s["min"] == s["max"]:
        return _f(s["median"] * scale, digits)
    return f"{_f(s['median'] * scale, digits)} ({_f(s['min'] * scale, digits)}–{_f(s['max'] * scale, digits)})"


def _by(cell, label):
    return next((x for x in cell["summary"] if x["label"] == label), None)


def _ratio(a, b):
    a, b = _med(a), _med(b)
    return a / b if a and b else None


def _aa(cell):
    """floor-b / floor, throughput and p99: median (min–max) over the cell's rounds."""
    aa = cell.get("aa")
    return (_sp(aa["rps"]), _sp(aa["p99"])) if aa else ("–", "–")


def checks(M) -> list[tuple[str, str, str, bool]]:
    """One target row per placement and surface: wrk, every connection count."""
    out = []
    for p in M["placements"]:
        if p["skipped"] or p["placement"] == "quota":
            continue
        surfaces = []
        for c in p["cells"]:
            if c["tool"] == "wrk" and c["surface"] not in surfaces:
                surfaces.append(c["surface"])
        for surface in surfaces:
            cells = [c for c in p["cells"] if c["tool"] == "wrk" and c["surface"] == surface]
            rps, p99, ok, void = [], [], True, []
            for c in cells:
                b = _by(c, "broker")
                r, q = _med(b["rps_ratio"]), _med(b["p99_ratio"])
                rps.append(_f(r, 2))
                p99.append(_f(q, 2))
                ok = ok and r is not None and q is not None and r >= RPS_TARGET and q <= P99_TARGET
                if c["void"]:
                    void.append(str(c["connections"]))
            conns = "/".join(str(c["connections"]) for c in cells)
            fig = f"{'/'.join(rps)}× throughput, {'/'.join(p99)}× p99 at {conns} connections"
            if void:
                fig += f" (VOID at {', '.join(void)}: A/A medians out of bounds)"
            out.append((f"{surface} vs floor, {p['placement']}, wrk", fig,
                        f"≥ {RPS_TARGET:.2f}× and ≤ {P99_TARGET:.2f}×", ok))
    return out


def problems(M) -> list[str]:
    out = []
    for p in M["placements"]:
        for c in p["cells"]:
            for s in c["summary"]:
                if s["errors"]:
                    out.append(f"matrix {p['placement']} {c['surface']}@{c['connections']} {c['tool']} "
                               f"{s['label']}: {s['errors']} failed requests")
    return out


def _main_table(w, tool, cells):
    w(f"\n{tool}:\n")
    w("| surface | conns | broker req/s | floor req/s | broker/floor | p99 µs broker / floor | p99 ratio | "
      "baseline/floor | go-floor/floor | broker/go | A/A rps | A/A p99 | rounds | CPU µs/req broker / floor | |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in cells:
        b, f, base, go = (_by(c, k) for k in ("broker", "floor", "baseline", "go-floor"))
        if not b or not f:
            continue
        r, q = _med(b["rps_ratio"]), _med(b["p99_ratio"])
        met = r is not None and q is not None and r >= RPS_TARGET and q <= P99_TARGET
        aar, aap = _aa(c)
        mark = "VOID" if c["void"] else ("met" if met else "MISSED")
        w(f"| {c['surface']} ({c['body_bytes']} B) | {c['connections']} | {_sp(b['rps'], 0)} | "
          f"{_sp(f['rps'], 0)} | {_sp(b['rps_ratio'])} | {_f(_med(b['p99_us']))} / {_f(_med(f['p99_us']))} | "
          f"{_sp(b['p99_ratio'])} | {_sp(base['rps_ratio']) if base else '–'} | "
          f"{_sp(go['rps_ratio']) if go else '–'} | {_f(_ratio(b['rps'], go['rps']), 2) if go else '–'} | "
          f"{aar} | {aap} | {len(c['rounds'])} | "
          f"{_f(_med(b['server_us_per_req']), 1)} / {_f(_med(f['server_us_per_req']), 1)} | {mark} |")


def render(M, w, title="Load matrix: broker vs floor (`credbroker-bench matrix`)"):
    aa = M["aa"]
    lay = M["layout"]
    w(f"\n## {title}\n")
    w(f"Closed loop, HTTP/1.1 keep-alive. {M['rounds']} rounds per cell, servers in rotating order "
      f"(round k starts with the k-th server), {M['duration_s']} s measured per run. Ratios are per round, "
      f"to the floor's run of that round: median (min–max) over the rounds. **A/A control**: a second "
      f"floor instance (floor-b) is measured like any server and summarised the same way; a cell counts only "
      f"if floor-b/floor's median is within ±{aa['rps'] * 100:.0f} % throughput and ±{aa['p99'] * 100:.0f} % "
      f"p99 (a cell outside gets up to {M.get('extra_rounds', 2)} extra rounds), otherwise it is VOID. "
      f"Pinned: servers `taskset -c {lay['server_cpu']}`, generator `taskset -c {lay['client_cpu']}`; "
      f"quota: server in a cgroup of {lay['quota']} CPU, generator pinned; unpinned: neither. "
      f"wrk: `{M['wrk_version']}`, `-t1 -cN -dS --latency` with a Lua script for the headers; ours: "
      f"`credbroker-bench gen`, {M['own_threads']} runtime thread(s), {M['own_warmup_s']} s warm-up. "
      "CPU figures are user+system time of the process over the run (`/proc`, `getrusage`).")
    for p in M["placements"]:
        w(f"\n### {p['placement']}\n")
        if p["skipped"]:
            w(f"Not run: {p['skipped']}")
            continue
        if p.get("cgroup"):
            th = p.get("throttled")
            w(f"cgroup: `{p['cgroup']}`" + (f"; throttled {th[0]} periods, {th[1]:.1f} s over the runs" if th else "")
              + "\n")
        w("| server | command | threads | idle RSS MiB | peak RSS MiB |")
        w("|---|---|---:|---:|---:|")
        for s in p["servers"]:
            rss = lambda k: _f(s[k] / 1024, 1) if s.get(k) else "–"
            w(f"| {s['label']} | `{s['command'].strip()}` | {_f(s.get('threads'))} | {rss('idle_rss_kib')} | "
              f"{rss('peak_rss_kib')} |")
        wrk = [c for c in p["cells"] if c["tool"] == "wrk"]
        own = [c for c in p["cells"] if c["tool"] == "own"]
        for tool, cells in (("wrk", wrk), ("our generator", own)):
            if cells:
                _main_table(w, tool, cells)
        if own and wrk:
            w("\nwrk vs our generator, same servers, same placement (figures: wrk / ours):\n")
            w("| surface | conns | floor req/s | broker/floor | p99 ratio | generator busy | generator µs/req | "
              "floor busy | floor p99 µs | A/A |")
            w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for c in own:
                cw = next((x for x in wrk if x["surface"] == c["surface"] and x["connections"] == c["connections"]), None)
                if not cw:
                    continue
                fw, fo = _by(cw, "floor"), _by(c, "floor")
                bw, bo = _by(cw, "broker"), _by(c, "broker")
                pct = lambda s: _f((_med(s) or 0) * 100) + " %"
                w(f"| {c['surface']} | {c['connections']} | {_f(_med(fw['rps']))} / {_f(_med(fo['rps']))} | "
                  f"{_f(_med(bw['rps_ratio']), 2)} / {_f(_med(bo['rps_ratio']), 2)} | "
                  f"{_f(_med(bw['p99_ratio']), 2)} / {_f(_med(bo['p99_ratio']), 2)} | "
                  f"{pct(fw['client_busy'])} / {pct(fo['client_busy'])} | "
                  f"{_f(_med(fw['client_us_per_req']), 1)} / {_f(_med(fo['client_us_per_req']), 1)} | "
                  f"{pct(fw['server_busy'])} / {pct(fo['server_busy'])} | "
                  f"{_f(_med(fw['p99_us']))} / {_f(_med(fo['p99_us']))} | "
                  f"{'VOID' if cw['void'] else 'counts'} / {'VOID' if c['void'] else 'counts'} |")


def render_sizing(S, w):
    tools = sorted({c["tool"] for p in S["placements"] for c in p["cells"]})
    w("\n## Runtime sizing (`credbroker-bench matrix` with broker variants)\n")
    w("The same broker binary with different runtimes, against the floor (whose runtime is sized by "
      f"`credbroker::cpus` like the broker's default) and its A/A twin; load: {', '.join(tools)}. "
      "`broker` is the default "
      "(`--worker-threads auto`). Cells: median over the rounds; ratios to the floor of the same round; "
      "VOID: the A/A medians out of bounds.\n")
    for p in S["placements"]:
        if p["skipped"]:
            w(f"- {p['placement']}: not run: {p['skipped']}")
            continue
        threads = {s["label"]: s.get("threads") for s in p["servers"]}
        cmds = {s["label"]: s["command"] for s in p["servers"]}
        th = p.get("throttled")
        w(f"\n### {p['placement']}" + (f" ({p['cgroup']}; throttled {th[0]} periods, {th[1]:.1f} s)" if th else "") + "\n")
        labels = [s["label"] for s in p["servers"]]
        w("| cell | " + " | ".join(f"{l} ({_f(threads.get(l))} thr)" for l in labels) + " | rounds |")
        w("|---:|" + "---:|" * len(labels) + "---:|")
        for c in p["cells"]:
            row = []
            for l in labels:
                s = _by(c, l)
                perf = ""
                if s and s.get("syscalls_per_req", {}).get("n"):
                    perf = (f"; per request {_f(_med(s['context_switches_per_req']), 2)} cs, "
                            f"{_f(_med(s['syscalls_per_req']), 2)} syscalls, "
                            f"{_f(_med(s['task_clock_us_per_req']), 1)} µs CPU")
                row.append("–" if not s else f"{_f(_med(s['rps']))} req/s, {_f(_med(s['rps_ratio']), 2)}×; "
                                             f"p99 {_f(_med(s['p99_us']))} µs ({_f(_med(s['p99_ratio']), 2)}×); "
                                             f"busy {_f((_med(s['server_busy']) or 0) * 100)} %{perf}")
            w(f"| {c['surface']} {c['connections']} | " + " | ".join(row) + f" | {len(c['rounds'])}"
              + (" VOID" if c["void"] else "") + " |")
        w("\nCommands: " + "; ".join(f"{l}: `{cmds[l].strip()}`" for l in labels))
