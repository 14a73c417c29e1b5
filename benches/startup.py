#!/usr/bin/env python3
"""Startup and footprint: process start -> /readyz 200 against the local fakes, idle RSS, binary size.

Usage: benches/startup.py [--runs N] [--clouds aws|all] [--bin target/release/credbroker]
                          [--fakecloud target/release/fakecloud]
Prints one JSON object. Uses only the standard library. "Ready" is the first 200 from /readyz,
polled every 0.5 ms on the ops address the broker writes to --addr-file (port 0, no collisions).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakeenv import broker_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def section_bytes(binary: str, name: str) -> int | None:
    """The size of one ELF section (section headers survive `strip`), or None without it."""
    try:
        out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 5 and fields[1] == name:
            return int(fields[5], 16)
    return None


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - not up yet
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bin", default=str(ROOT / "target/release/credbroker"))
    ap.add_argument("--fakecloud", default=str(ROOT / "target/release/fakecloud"))
    ap.add_argument("--idle-seconds", type=float, default=3.0)
    ap.add_argument("--clouds", choices=["aws", "all"], default="aws",
                    help="aws: one STS round trip to readiness; all: AWS, GCP and Azure")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="credbroker-startup-"))
    ready_file = tmp / "ready.json"
    fake = subprocess.Popen([args.fakecloud, "run", "--state-dir", str(tmp / "cloud"), "--ready-file", str(ready_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ready_file.exists():
            assert time.monotonic() < deadline and fake.poll() is None, "fakecloud did not start"
            time.sleep(0.01)
        desc = json.loads(ready_file.read_text())
        env = broker_env(desc, args.clouds)
        times_ms, rss = [], []
        for i in range(args.runs):
            addr_file = tmp / f"addrs-{i}"
            t0 = time.perf_counter()
            p = subprocess.Popen([args.bin, "--log-level", "warn", "serve", "--listen", "127.0.0.1:0",
                                  "--ops-listen", "127.0.0.1:0", "--addr-file", str(addr_file),
                                  "--aws-auth-token-file", str(tmp / "auth")],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ops = None
            while ops is None or not ready(f"http://{ops}/readyz"):
                assert p.poll() is None, "broker exited"
                if ops is None and addr_file.exists():
                    text = addr_file.read_text()
                    if "ops=" in text:
                        ops = dict(line.split("=", 1) for line in text.split())["ops"]
                        continue
                time.sleep(0.0005)
            times_ms.append((time.perf_counter() - t0) * 1000)
            if i == 0:
                time.sleep(args.idle_seconds)
                rss.append(rss_kib(p.pid))
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)
        size = Path(args.bin).stat().st_size
        print(json.dumps({
            "runs": args.runs,
            "clouds": args.clouds,
            "start_to_ready_ms": {"median": round(statistics.median(times_ms), 2), "min": round(min(times_ms), 2),
                                  "max": round(max(times_ms), 2)},
            "idle_rss_mib": round(rss[0] / 1024, 2),
            "binary_bytes": size,
            "binary_mib": round(size / 2**20, 2),
            # The functions laid out together by crates/credbroker/link/hot.ld (benches/layout.py):
            # None means the layout was not applied (a debug build, or a linker without it).
            "hot_text_bytes": section_bytes(args.bin, ".text.hot"),
        }, indent=2))
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    main()
