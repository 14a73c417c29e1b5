#!/usr/bin/env python3
"""Time to first credential for a new process: boto3 through the broker vs boto3 doing its own
web-identity exchange against the same fake STS, with 50 ms injected STS latency.

Each sample is a fresh Python process with only an application container's environment: for
the broker, what `credbroker env` prints; for the direct path, what the EKS webhook injects
(AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, plus AWS_ENDPOINT_URL_STS for the fake). Inside the
process it times `boto3.Session().get_credentials().get_frozen_credentials()` (the credential
chain, up to usable keys); the process's whole wall time is reported beside it.

Usage: benches/ttfc.py --python target/conformance-venv/bin/python [--runs N] [--latency-ms 50]
       [--bin target/release/credbroker] [--fakecloud target/release/fakecloud]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, time
t0 = time.perf_counter()
import boto3
t1 = time.perf_counter()
session = boto3.Session()
t2 = time.perf_counter()
creds = session.get_credentials().get_frozen_credentials()
t3 = time.perf_counter()
assert creds.access_key and creds.secret_key and creds.token
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "session_ms": (t2 - t1) * 1e3,
                  "credential_ms": (t3 - t2) * 1e3}))
"""


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise SystemExit(f"ttfc: timed out waiting for {what}")


def http(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"content-type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def sample(python: str, env: dict) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([python, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    wall = (time.perf_counter() - t0) * 1e3
    if out.returncode != 0:
        raise SystemExit(f"ttfc: probe failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_ms"] = wall
    return result


def summary(values):
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True, help="a Python with boto3 (the conformance venv)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--bin", default=str(ROOT / "target/release/credbroker"))
    ap.add_argument("--fakecloud", default=str(ROOT / "target/release/fakecloud"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="credbroker-ttfc-"))
    ready = tmp / "ready.json"
    fake = subprocess.Popen([args.fakecloud, "run", "--state-dir", str(tmp / "cloud"), "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = None
    try:
        wait_for(lambda: ready.exists() and ready.stat().st_size > 0, what="fakecloud")
        desc = json.loads(ready.read_text())
        aws = desc["aws"]
        sidecar = {
            "PATH": os.environ["PATH"],
            "AWS_ROLE_ARN": aws["role_arn"],
            "AWS_WEB_IDENTITY_TOKEN_FILE": desc["tokens"]["aws"],
            "AWS_ENDPOINT_URL_STS": aws["sts_endpoint"],
            "AWS_REGION": aws["region"],
            "AWS_ROLE_SESSION_NAME": "ttfc",
        }
        status, body = http("POST", aws["admin"] + "/faults",
                            json.dumps({"kind": "latency", "ms": args.latency_ms}).encode())
        assert status in (200, 204), body
        addr_file = tmp / "addrs"
        flags = ["--aws-auth-token-file", str(tmp / "aws-auth")]
        broker = subprocess.Popen([args.bin, "--log-level", "warn", "serve", "--listen", "127.0.0.1:0",
                                   "--ops-listen", "127.0.0.1:0", "--addr-file", str(addr_file), *flags],
                                  env=sidecar, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: addr_file.exists() and addr_file.stat().st_size > 0, what="broker addr file")
        addrs = dict(line.split("=", 1) for line in addr_file.read_text().split())
        wait_for(lambda: http("GET", f"http://{addrs['ops']}/readyz")[0] == 200, what="/readyz")
        out = subprocess.run([args.bin, "env", "--listen", addrs["credentials"], *flags],
                             env=sidecar, capture_output=True, text=True, check=True).stdout
        home = tmp / "home"
        home.mkdir()
        base = {"PATH": os.environ["PATH"], "HOME": str(home)}
        via_broker = dict(base)
        for line in out.splitlines():
            if line.startswith("export "):
                k, _, v = line[len("export "):].partition("=")
                via_broker[k] = v.strip("'")
        direct = {**base, **{k: v for k, v in sidecar.items() if k != "PATH"}}

        calls_before = len(json.loads(http("GET", aws["admin"] + "/log")[1]))
        sample(args.python, via_broker)  # warm the page cache for Python and boto3
        broker_s, direct_s = [], []
        for _ in range(args.runs):
            broker_s.append(sample(args.python, via_broker))
            direct_s.append(sample(args.python, direct))
        sts_calls = len(json.loads(http("GET", aws["admin"] + "/log")[1])) - calls_before

        def fig(rows, key):
            return summary([r[key] for r in rows])

        b, d = fig(broker_s, "credential_ms"), fig(direct_s, "credential_ms")
        print(json.dumps({
            "runs": args.runs,
            "sts_latency_ms": args.latency_ms,
            "broker": {k: fig(broker_s, k) for k in ("credential_ms", "session_ms", "import_ms", "process_ms")},
            "direct": {k: fig(direct_s, k) for k in ("credential_ms", "session_ms", "import_ms", "process_ms")},
            "speedup": round(d["median"] / b["median"], 2),
            "process_speedup": round(fig(direct_s, "process_ms")["median"] / fig(broker_s, "process_ms")["median"], 2),
            # The direct path exchanges once per process; through the broker, no process does.
            "sts_calls_during_samples": sts_calls,
        }, indent=2))
    finally:
        for p in (broker, fake):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
