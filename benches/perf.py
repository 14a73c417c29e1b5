#!/usr/bin/env python3
"""Where the pinned broker's cycles go under wrk: `perf record` of the server on CPU 1 while wrk
(CPU 0) drives one surface, then the share of each object (kernel, credbroker, libc) and the
top functions of the broker's own code. The README's perf figures come from this script.

Usage: cargo build --profile profiling -p credbroker --no-default-features --bin credbroker
       python3 benches/perf.py [--target aws-container] [--connections 64] [--seconds 6]
Needs perf and wrk. The profiling build carries the symbols the release build strips.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakeenv import broker_env, start_fakecloud, stop, wait_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AUTH = "credbroker-perf-auth-token-0123456789"
IDENTITY_HEADER = "credbroker-perf-identity-header"
ARM = "https%3A%2F%2Fmanagement.azure.com%2F"
TARGETS = {
    "aws-container": ("/v1/credentials", {"Authorization": AUTH}),
    "aws-imds": ("/latest/meta-data/iam/security-credentials/credbroker-demo", {}),
    "gce-token": ("/computeMetadata/v1/instance/service-accounts/default/token", {"Metadata-Flavor": "Google"}),
    "azure-imds": (f"/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ARM}", {"Metadata": "true"}),
    "azure-app-service": (f"/msi/token?api-version=2019-08-01&resource={ARM}", {"X-IDENTITY-HEADER": IDENTITY_HEADER}),
}


def call(url: str, headers: dict, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def report(data: Path, *args: str) -> list[str]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio", "-g", "none", *args],
                         capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("#")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default=str(ROOT / "target/profiling/credbroker"))
    ap.add_argument("--fakecloud", default=str(ROOT / "target/release/fakecloud"))
    ap.add_argument("--target", choices=sorted(TARGETS), default="aws-container")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=6)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="credbroker-perf-"))
    fake, desc = start_fakecloud(args.fakecloud, tmp)
    procs = [fake]
    try:
        (tmp / "auth").write_text(AUTH)
        broker = subprocess.Popen(
            ["taskset", "-c", "1", args.broker, "--log-level", "warn", "serve", "--listen", "127.0.0.1:0",
             "--ops-listen", "127.0.0.1:0", "--addr-file", str(tmp / "addrs"), "--aws-auth-token-file",
             str(tmp / "auth"), "--azure-identity-header", IDENTITY_HEADER],
            env=broker_env(desc), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(broker)
        addrs = dict(line.split("=", 1) for line in wait_file(tmp / "addrs", broker).split())
        base = f"http://{addrs['credentials']}"
        while call(f"http://{addrs['ops']}/readyz", {})[0] != 200:
            assert broker.poll() is None, "broker exited"
            time.sleep(0.1)
        path, headers = TARGETS[args.target]
        if args.target == "aws-imds":
            status, session = call(f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
                                   "PUT")
            assert status == 200, status
            headers = {"X-aws-ec2-metadata-token": session.decode()}
        status, body = call(base + path, headers)
        assert status == 200, f"{args.target}: {status} {body[:200]!r}"
        wrk = ["taskset", "-c", "0", "wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
        for k, v in headers.items():
            wrk += ["-H", f"{k}: {v}"]
        load = subprocess.Popen(wrk + [base + path], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        data = tmp / "perf.data"
        subprocess.run(["perf", "record", "-F", "2999", "-g", "-o", str(data), "-p", str(broker.pid), "--",
                        "sleep", str(max(1, args.seconds - 2))], capture_output=True, check=True)
        out = load.communicate()[0]
        print(f"{args.target}, {args.connections} connections, server on CPU 1, wrk on CPU 0:")
        print("\n".join(line for line in out.splitlines() if "Requests/sec" in line or " 99%" in line))
        print("-- cycles by object")
        print("\n".join(report(data, "--sort", "dso")[:5]))
        print("-- top functions of the broker")
        print("\n".join(report(data, "--sort", "sym", "--dsos", Path(args.broker).name)[:10]))
        broker.send_signal(signal.SIGTERM)
    finally:
        stop(*procs)


if __name__ == "__main__":
    main()
