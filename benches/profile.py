#!/usr/bin/env python3
"""Instructions per request, broker vs floor, per surface, from callgrind (valgrind): a count, not a
time, so it holds on a busy machine. The server runs under callgrind; once it answers, its counters
are zeroed (callgrind_control -z), wrk drives it for a while, and the counters are dumped
(callgrind_control -d): Ir of that window / requests wrk completed = user-space instructions per
request (the kernel's TCP work is not counted). The floor (credbroker-bench floor) serves the same
shape. callgrind_annotate's top inclusive entries go to target/profile/<server>-<surface>.txt.

Usage: benches/profile.py [--broker target/profiling/credbroker] [--broker-args "..."]
                          [--bench target/profiling/credbroker-bench] [--targets aws-imds,...]
                          [--cache-sim]   (cache misses per request too: callgrind's cache model)
Build first: cargo build --profile profiling -p credbroker -p fakecloud -p credbroker-benches --bins
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakeenv import broker_env, start_fakecloud, stop, wait_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IDENTITY_HEADER = "credbroker-bench-identity-header"
ARM = "https%3A%2F%2Fmanagement.azure.com%2F"
ROLE = "credbroker-demo"


def get(url: str, headers: dict, method="GET") -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def requests_for(auth: str, session: str) -> dict[str, tuple[str, dict]]:
    return {
        "aws-container": ("/v1/credentials", {"Authorization": auth}),
        "aws-imds": (f"/latest/meta-data/iam/security-credentials/{ROLE}", {"X-aws-ec2-metadata-token": session}),
        "gce-token": ("/computeMetadata/v1/instance/service-accounts/default/token", {"Metadata-Flavor": "Google"}),
        "azure-imds": (f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ARM}", {"Metadata": "true"}),
        "azure-app-service": (f"/msi/token?api-version=2019-08-01&resource={ARM}",
                              {"X-IDENTITY-HEADER": IDENTITY_HEADER}),
    }


def callgrind(out: Path, cache_sim: bool = False, lines: bool = False) -> list[str]:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
           f"--cache-sim={'yes' if cache_sim or lines else 'no'}"]
    if lines:
        # 4 KiB L1s (64 lines): a loop's lines stay, but a request's footprint (well over 32
        # KiB of code for hyper alone) cannot, so misses approximate the distinct code and data
        # lines one request touches. That is what a request costs when the kernel's work between
        # requests has evicted the server's lines, which the default model (user space only)
        # never does.
        cmd += ["--I1=4096,4,64", "--D1=4096,4,64", "--LL=67108864,16,64"]
    return cmd


def drive(addr: str, path: str, headers: dict, pid: int, seconds: int, conns: int, tmp: Path,
          dump: Path) -> dict:
    lua = tmp / "h.lua"
    lua.write_text("".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items()))
    url = f"http://{addr}{path}"
    # Warm: first requests page in code and fill caches; then count from zero.
    subprocess.run(["wrk", "-t1", f"-c{conns}", "-d2s", "-s", str(lua), url], capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    for f in Path(dump.parent).glob(dump.name + "*"):
        f.unlink()
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    m = re.search(r"(\d+) requests in", out)
    requests = int(m.group(1)) if m else 0
    time.sleep(0.5)
    dumps = sorted(Path(dump.parent).glob(dump.name + "*"), key=lambda p: p.stat().st_mtime)
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=95", str(dumps[-1])],
                          capture_output=True, text=True).stdout
    # One total per event (Ir alone, or with --cache-sim the I1/LL/D1 misses too).
    events = re.search(r"^Events shown:\s+(.*)$", text, re.M)
    names = events.group(1).split() if events else ["Ir"]
    line = next((l for l in text.splitlines() if "PROGRAM TOTALS" in l), "")
    totals = dict(zip(names, (int(n.replace(",", "")) for n in re.findall(r"([\d,]+) \(100\.0%\)", line))))
    ir = totals.get("Ir", 0)
    out = {"requests": requests, "ir": ir, "ir_per_request": round(ir / requests) if requests else None,
           "annotate": text}
    if len(totals) > 1 and requests:
        out["per_request"] = {k: round(v / requests, 1) for k, v in totals.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default=str(ROOT / "target/profiling/credbroker"))
    ap.add_argument("--broker-args", default="")
    ap.add_argument("--bench", default=str(ROOT / "target/profiling/credbroker-bench"))
    ap.add_argument("--fakecloud", default=str(ROOT / "target/profiling/fakecloud"))
    ap.add_argument("--targets", default="aws-container,aws-imds,gce-token,azure-imds,azure-app-service")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--floor-args", default="",
                    help="flags for the floor (e.g. --header-read-timeout-ms 0: hyper without its "
                         "per-request header timer)")
    ap.add_argument("--label", default="broker")
    ap.add_argument("--cache-sim", action="store_true",
                    help="callgrind's cache simulation: I1/D1/LL misses per request as well "
                         "(a model of the host's caches, user space only; slower)")
    ap.add_argument("--lines", action="store_true",
                    help="4 KiB L1 caches instead: misses per request approximate the distinct "
                         "code (I1) and data (D1) lines a request touches")
    args = ap.parse_args()
    outdir = ROOT / "target/profile"
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="credbroker-profile-"))
    fake, desc = start_fakecloud(args.fakecloud, tmp)
    procs = [fake]
    try:
        env = broker_env(desc)
        dump = outdir / f"callgrind.{args.label}"
        broker = subprocess.Popen(
            callgrind(dump, args.cache_sim, args.lines) + [args.broker, "--log-level", "warn", *shlex.split(args.broker_args), "serve",
                               "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
                               "--addr-file", str(tmp / "addrs"), "--aws-auth-token-file", str(tmp / "auth"),
                               "--azure-identity-header", IDENTITY_HEADER],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(broker)
        addrs = dict(line.split("=", 1) for line in wait_file(tmp / "addrs", broker).split())
        deadline = time.monotonic() + 120
        while get(f"http://{addrs['ops']}/readyz", {})[0] != 200:
            assert time.monotonic() < deadline, "broker not ready"
            time.sleep(0.2)
        auth = (tmp / "auth").read_text()
        session = get(f"http://{addrs['credentials']}/latest/api/token",
                      {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, "PUT")[1].decode()
        reqs = requests_for(auth, session)
        results = {}
        for target in args.targets.split(","):
            path, headers = reqs[target]
            status, body, hdrs = get(f"http://{addrs['credentials']}{path}", headers)
            assert status == 200, f"{target}: {status} {body[:200]!r}"
            r = {"body_bytes": len(body)}
            b = drive(addrs["credentials"], path, headers, broker.pid, args.seconds, args.connections, tmp, dump)
            (outdir / f"{args.label}-{target}.txt").write_text(b.pop("annotate"))
            r[args.label] = b
            if args.floor:
                shape = {"status": 200, "body_len": len(body),
                         "headers": [[k.lower(), v] for k, v in hdrs.items()
                                     if k.lower() not in ("content-length", "date", "connection")]}
                fdump = outdir / "callgrind.floor"
                faddr_file = tmp / f"floor-{target}"
                floor = subprocess.Popen(callgrind(fdump, args.cache_sim, args.lines) + [args.bench, "floor", "--shape", json.dumps(shape),
                                                              "--addr-file", str(faddr_file),
                                                              *shlex.split(args.floor_args)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(floor)
                faddr = wait_file(faddr_file, floor).strip()
                f = drive(faddr, path, headers, floor.pid, args.seconds, args.connections, tmp, fdump)
                (outdir / f"floor-{target}.txt").write_text(f.pop("annotate"))
                r["floor"] = f
                if f["ir_per_request"] and b["ir_per_request"]:
                    r["extra_ir_per_request"] = b["ir_per_request"] - f["ir_per_request"]
                floor.terminate()
                floor.wait()
            results[target] = r
        print(json.dumps({"connections": args.connections, "seconds": args.seconds, "label": args.label,
                          "broker_args": args.broker_args, "results": results}, indent=2))
    finally:
        stop(*procs)


if __name__ == "__main__":
    main()
