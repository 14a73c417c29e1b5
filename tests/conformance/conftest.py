"""Fixtures for the SDK conformance suite.

Each test runs real SDKs in a subprocess whose environment is only what an application container
would have: PATH, HOME, and the lines `credbroker env` prints. The broker is the real binary
(`credbroker serve`) and the upstreams are `fakecloud run`, both from target/debug.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("CREDBROKER_BIN_DIR", ROOT / "target" / "debug"))
CREDBROKER = BIN_DIR / "credbroker"
FAKECLOUD = BIN_DIR / "fakecloud"
NODE_MODULES = ROOT / "target" / "conformance-node" / "node_modules"


def wait_for(predicate, timeout=15.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def http(method: str, url: str, headers: dict | None = None, timeout: float = 5.0):
    """(status, headers, body) for a raw request; never raises on HTTP errors."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class FakeCloud:
    """A running `fakecloud run` and its description (endpoints, token paths, admin URLs)."""

    proc: subprocess.Popen
    state_dir: Path
    desc: dict

    def admin(self, cloud: str) -> str:
        return self.desc[cloud]["admin"]

    def log(self, cloud: str) -> list[dict]:
        status, _, body = http("GET", self.admin(cloud) + "/log")
        assert status == 200, body
        return json.loads(body)

    def issued(self, cloud: str) -> list[dict]:
        return [r for r in self.log(cloud) if r.get("outcome") == "issued"]

    def fault(self, cloud: str, **fault) -> None:
        data = json.dumps(fault).encode()
        req = urllib.request.Request(self.admin(cloud) + "/faults", data=data, method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status in (200, 204), resp.read()

    def clear(self, cloud: str) -> None:
        status, _, body = http("DELETE", self.admin(cloud) + "/faults")
        assert status in (200, 204), body

    def token_path(self, cloud: str) -> str:
        return self.desc["tokens"][cloud]

    def rotate(self) -> None:
        status, _, body = http("POST", self.desc["issuer"] + "/_fake/rotate")
        assert status == 200, body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_fakecloud(state_dir: Path, *extra: str) -> FakeCloud:
    state_dir.mkdir(parents=True, exist_ok=True)
    ready = state_dir / "ready.json"
    log = open(state_dir / "fakecloud.log", "wb")
    proc = subprocess.Popen(
        [str(FAKECLOUD), "run", "--state-dir", str(state_dir), "--ready-file", str(ready), *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_for(lambda: ready.exists() or proc.poll() is not None, what="fakecloud ready file")
    assert proc.poll() is None, (state_dir / "fakecloud.log").read_text()
    return FakeCloud(proc=proc, state_dir=state_dir, desc=json.loads(ready.read_text()))


@dataclass
class Broker:
    """A running `credbroker serve` with the sidecar-side environment of a pod."""

    proc: subprocess.Popen
    workdir: Path
    sidecar_env: dict
    args: list[str]
    creds_addr: str = ""
    ops_addr: str = ""
    log_path: Path = field(default=None)

    @property
    def url(self) -> str:
        return f"http://{self.creds_addr}"

    @property
    def ops(self) -> str:
        return f"http://{self.ops_addr}"

    def readyz(self, cloud: str | None = None):
        return http("GET", self.ops + "/readyz" + (f"/{cloud}" if cloud else ""))

    def metrics(self) -> str:
        return http("GET", self.ops + "/metrics")[2].decode()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def app_env(self) -> dict:
        """What `credbroker env` says the application container needs."""
        out = subprocess.run(
            [str(CREDBROKER), "env", "--listen", self.creds_addr, *self.args],
            env=self.sidecar_env, capture_output=True, text=True, check=True,
        ).stdout
        env = {}
        for line in out.splitlines():
            if line.startswith("export "):
                name, _, value = line[len("export "):].partition("=")
                env[name] = value.strip("'")
        return env

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return -9
        return self.proc.returncode


def sidecar_env(fake: FakeCloud, *clouds: str) -> dict:
    """The sidecar's environment for `clouds` ("aws", "gcp", "azure", "oci"), as fakecloud
    describes it (`Cloudscape::sidecar`, the same the demo and the Rust tests use): what each
    cloud's webhook injects, pointed at the emulators, plus credbroker's settings. `{files}`, the
    directory the sidecar writes into, is filled in by start_broker."""
    env = {}
    for cloud in clouds:
        env.update(fake.desc["sidecar"][cloud])
    return env


# fakecloud::sidecar::AZURE_IDENTITY_HEADER, the App Service header the Azure sidecar is given.
AZURE_IDENTITY_HEADER = "fakecloud-identity-header-0123456789abcdef"


def start_broker(workdir: Path, sidecar_env: dict, args: list[str] | None = None,
                 wait_ready: bool = True) -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    addr_file = workdir / "addrs"
    args = list(args or [])
    sidecar_env = {k: v.replace("{files}", str(workdir)) for k, v in sidecar_env.items()}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), **sidecar_env}
    log_path = workdir / "broker.log"
    proc = subprocess.Popen(
        [str(CREDBROKER), "--log-level", os.environ.get("BROKER_LOG_LEVEL", "debug"), "serve",
         "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--addr-file", str(addr_file), *args],
        env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
    )
    broker = Broker(proc=proc, workdir=workdir, sidecar_env=env, args=args, log_path=log_path)
    wait_for(lambda: addr_file.exists() or proc.poll() is not None, what="broker addr file")
    assert proc.poll() is None, log_path.read_text()
    addrs = dict(line.split("=", 1) for line in addr_file.read_text().split())
    broker.creds_addr, broker.ops_addr = addrs["credentials"], addrs["ops"]
    if wait_ready:
        wait_for(lambda: broker.readyz()[0] == 200, what="/readyz 200")
    return broker


def app_subprocess_env(app_env: dict, home: Path) -> dict:
    """Only what an application container has: PATH, HOME and the broker's exports."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), **app_env}


def run_python(code: str, app_env: dict, home: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=app_subprocess_env(app_env, home),
                          capture_output=True, text=True, timeout=timeout)


def run_json(code: str, app_env: dict, home: Path, timeout: float = 90):
    proc = run_python(code, app_env, home, timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_node(code: str, app_env: dict, home: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """Runs `node -e code` with the node SDKs on NODE_PATH and only the app container's env."""
    env = app_subprocess_env(app_env, home)
    env["NODE_PATH"] = str(NODE_MODULES)
    return subprocess.run(["node", "-e", code], env=env, capture_output=True, text=True, timeout=timeout)


def run_node_json(code: str, app_env: dict, home: Path, timeout: float = 90):
    proc = run_node(code, app_env, home, timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fakecloud(tmp_path_factory):
    fake = start_fakecloud(tmp_path_factory.mktemp("fakecloud"))
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def aws_broker(fakecloud, tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("broker"), sidecar_env(fakecloud, "aws"))
    yield broker
    broker.stop()
