"""Fixtures for the SDK conformance suite.

Each test runs real SDKs in a subprocess whose environment is only what an application container
would have: PATH, HOME, and the lines `credbroker env` prints. The broker is the real binary
(`credbroker serve`) and the upstreams are `fakecloud run`, both from target/debug.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
                 wait_ready: bool = True, listen: str = "127.0.0.1:0") -> Broker:
    workdir.mkdir(parents=True, exist_ok=True)
    addr_file = workdir / "addrs"
    args = list(args or [])
    sidecar_env = {k: v.replace("{files}", str(workdir)) for k, v in sidecar_env.items()}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), **sidecar_env}
    log_path = workdir / "broker.log"
    proc = subprocess.Popen(
        [str(CREDBROKER), "--log-level", os.environ.get("BROKER_LOG_LEVEL", "debug"), "serve",
         "--listen", listen, "--ops-listen", "127.0.0.1:0", "--addr-file", str(addr_file), *args],
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
def gcp_broker(fakecloud, tmp_path_factory):
    """(test_gcp.py has its own.)"""
    broker = start_broker(tmp_path_factory.mktemp("gcp-broker"), sidecar_env(fakecloud, "gcp"))
    yield broker
    broker.stop()


# The Authorization value the AWS brokers here are given, as the deploy/ overlays and the
# injector give the pod's UID to the sidecar (--aws-auth-token) and the application.
AWS_AUTH_TOKEN = "4c1b7a52-3d0e-4f6a-9b8c-2e7d5a1f0c93"


@pytest.fixture(scope="module")
def aws_broker(fakecloud, tmp_path_factory):
    """An AWS sidecar configured as the overlays and the injector configure it: the token file and
    the literal value (`credbroker env` prints both)."""
    env = {**sidecar_env(fakecloud, "aws"), "CREDBROKER_AWS_AUTH_TOKEN": AWS_AUTH_TOKEN}
    broker = start_broker(tmp_path_factory.mktemp("broker"), env)
    yield broker
    broker.stop()


# === the client matrix (test_clients_*.py) ===

CLIENTS_VENV = ROOT / "target" / "clients-venv"
OLD_SDKS_VENV = ROOT / "target" / "clients-venv-old"


def require_tool(path, hint: str) -> str:
    """The client program at `path`, or a failure (never a skip) saying how to install it."""
    path = Path(path)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: {hint} (scripts/test installs it)")
    return str(path)


def with_literal_aws_token(env: dict) -> dict:
    """The app env as `credbroker env` prints it for a sidecar given --aws-auth-token: with the
    literal AWS_CONTAINER_AUTHORIZATION_TOKEN that clients reading only it need (AWS CLI v2,
    aws-sdk-go v1 before 1.47.11, minio-go, botocore before 1.32), equal to the file's content."""
    assert env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN") == AWS_AUTH_TOKEN, env
    assert Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text() == AWS_AUTH_TOKEN
    return env


def with_only_the_token_file(env: dict) -> dict:
    """The app env of a pod given only the token file (no --aws-auth-token): what such clients
    cannot use."""
    return {k: v for k, v in env.items() if k != "AWS_CONTAINER_AUTHORIZATION_TOKEN"}


def aws_issued_by_key(fake: FakeCloud, access_key_id: str) -> dict | None:
    """The credentials the fake STS issued with this access key id, or None."""
    for record in fake.issued("aws"):
        if record["credentials"]["AccessKeyId"] == access_key_id:
            return record["credentials"]
    return None


def gcp_issued_tokens(fake: FakeCloud) -> dict:
    """Access token -> the fake's issue record (generateAccessToken, or STS for direct federation)."""
    return {r["token"]: r for r in fake.issued("gcp") if r["api"] in ("generateAccessToken", "sts")}


def azure_issued_tokens(fake: FakeCloud) -> dict:
    """Entra access token -> the fake's issue record (with its scope)."""
    return {r["access_token"]: r for r in fake.issued("azure")}


def status_count(broker: Broker, surface: str, status: int) -> int:
    """credbroker_requests_total for one surface (aws-container, aws-imds, …) and status."""
    total = 0
    for line in broker.metrics().splitlines():
        if line.startswith("credbroker_requests_total{") and f'surface="{surface}"' in line \
                and f'status="{status}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def surface_count(broker: Broker, surface: str) -> int:
    return status_count(broker, surface, 200)


def assert_s3_signed_with_issued(fake: FakeCloud, s3) -> str:
    """Every request the recording S3 saw was SigV4-signed (verified) with one credential the fake
    STS issued, session token included; returns its access key id."""
    assert s3.records, "the client sent nothing to S3"
    keys = {r["access_key"] for r in s3.records}
    assert len(keys) == 1, s3.records
    key = keys.pop()
    issued = aws_issued_by_key(fake, key)
    assert issued is not None, f"{key} was not issued by the fake STS"
    assert all(r["signature"] == "valid" for r in s3.records), s3.records
    assert {r["session_token"] for r in s3.records} == {issued["SessionToken"]}
    return key


def offline_dns(cmd: list[str], home: Path) -> list[str]:
    """`cmd` in a private mount namespace whose /etc/hosts maps the Google metadata and API names to
    127.0.0.1 and whose resolver is 127.0.0.1: a client that looks a name up on a path the test does
    not mean it to take gets a refused connection on loopback, and no DNS query leaves the machine."""
    hosts, resolv = home / "hosts", home / "resolv.conf"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 metadata.google.internal metadata "
                     "storage.googleapis.com www.googleapis.com oauth2.googleapis.com\n")
    resolv.write_text("nameserver 127.0.0.1\n")
    script = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(hosts), str(resolv), *cmd]


def connects_in_empty_netns(cmd: list[str], env: dict, home: Path, timeout: float = 120):
    """Runs `cmd` in a new, empty network namespace (loopback down: every connect fails at once with
    ENETUNREACH, nothing leaves the machine) under strace; returns (process, the AF_INET connect
    lines), to show where a client would connect to, e.g. a hard-coded 169.254.169.254."""
    unshare, strace = shutil.which("unshare"), shutil.which("strace")
    if not (unshare and strace):
        pytest.fail("unshare (util-linux) and strace are needed (apt-get install strace; scripts/test installs it)")
    trace = home / "connect.trace"
    proc = subprocess.run([unshare, "-rn", strace, "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *cmd],
                          env=app_subprocess_env(env, home), capture_output=True, text=True, timeout=timeout)
    return proc, [line for line in trace.read_text().splitlines() if "AF_INET" in line]
