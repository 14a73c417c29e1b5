"""The container image, built without a Docker daemon by deploy/image/build-oci.sh (umoci).

The image is built from the shipped binary (target/shipped/credbroker: `-p credbroker
--no-default-features`, as deploy/Dockerfile builds it; scripts/test makes it), stripped by the
script, unpacked as a container runtime would, and run from its own root filesystem with chroot as
the image's user:
`--version`, then `serve` against the emulated AWS STS, which must become ready and hand out
credentials. That proves the image holds everything the binary needs at run time (loader,
libraries, CA bundle, user) and nothing is borrowed from this machine.

Needs umoci and root (scripts/test installs umoci when it can); skipped otherwise. The checks that
the shipped binary carries no emulator need neither and always run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from manifests import BIN_DIR, CREDBROKER, ROOT

BUILD = ROOT / "deploy" / "image" / "build-oci.sh"
FAKECLOUD = BIN_DIR / "fakecloud"
SHIPPED = ROOT / "target" / "shipped" / "credbroker"
UID = 65532
# What only the emulators bring: fakecloud itself, its token issuing (jsonwebtoken) and its
# certificate authority (rcgen).
EMULATOR_CRATES = ("fakecloud", "jsonwebtoken", "rcgen")

needs_image = [
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="building and chrooting into the image needs root"),
]


def dockerfile_cargo_args() -> list[str]:
    """The `cargo build` words of deploy/Dockerfile's build stage."""
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(l for l in text.splitlines() if "cargo build" in l)
    words = line.split("cargo build", 1)[1].split("&&")[0].split()
    return [w for w in words if w not in ("--release", "--locked")]


def cargo_tree(*args: str) -> set[str]:
    """Crate names in the normal (shipped) dependency tree `cargo tree` prints for `args`."""
    out = subprocess.run(["cargo", "tree", "--locked", "-e", "normal,build", "--prefix", "none", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_the_image_build_carries_no_emulator():
    args = dockerfile_cargo_args()
    assert "--no-default-features" in args and "-p" in args, args
    # `cargo tree` takes the package and feature words; `--bin NAME` only picks the artefact.
    i = args.index("--bin")
    shipped = cargo_tree(*(args[:i] + args[i + 2:]))
    assert "credbroker" in shipped and "reqwest" in shipped, sorted(shipped)
    assert not shipped & set(EMULATOR_CRATES), sorted(shipped & set(EMULATOR_CRATES))
    # The control: the default build (the newcomer's demo) does pull them in.
    assert set(EMULATOR_CRATES) <= cargo_tree("-p", "credbroker"), "the check cannot fail"


def test_the_shipped_binary_has_no_demo():
    assert SHIPPED.exists(), f"{SHIPPED} is built by scripts/test (cargo build -p credbroker --no-default-features)"
    proc = subprocess.run([str(SHIPPED), "demo"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "without the `demo` feature" in proc.stderr, proc.stderr
    # Nothing of the emulators was linked in: none of their crate paths appear in the binary.
    blob = SHIPPED.read_bytes()
    for crate in EMULATOR_CRATES:
        assert f"/{crate}-".encode() not in blob and f"crates/{crate}/".encode() not in blob, crate


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return None, b""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(layout dir, unpacked bundle dir) of a freshly built image."""
    for mark in needs_image:
        if mark.args[0]:
            pytest.skip(mark.kwargs["reason"])
    work = tmp_path_factory.mktemp("image")
    layout, bundle = work / "layout", work / "bundle"
    run(BUILD, SHIPPED, layout, "test")
    run("umoci", "unpack", "--image", f"{layout}:test", bundle)
    return layout, bundle


def test_image_config(image):
    _, bundle = image
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["user"]["uid"] == UID and config["process"]["user"]["gid"] == UID
    assert config["process"]["args"] == ["/usr/local/bin/credbroker", "serve"]


def test_image_holds_only_the_runtime(image):
    _, bundle = image
    rootfs = bundle / "rootfs"
    files = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if p.is_file())
    assert "usr/local/bin/credbroker" in files
    assert "etc/ssl/certs/ca-certificates.crt" in files
    assert not (rootfs / "bin" / "sh").exists(), "the image carries a shell"
    libs = [f for f in files if ".so" in f]
    assert libs and all(f.startswith(("lib/", "lib64/", "usr/lib")) for f in libs), libs
    assert len(files) <= 12, f"unexpected files in the image: {files}"
    passwd = (rootfs / "etc" / "passwd").read_text()
    assert f"nonroot:x:{UID}:{UID}:" in passwd


def chroot_cmd(rootfs: Path, *args: str) -> list[str]:
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    return [chroot, f"--userspec={UID}:{UID}", str(rootfs), "/usr/local/bin/credbroker", *args]


def test_image_runs_version(image):
    _, bundle = image
    out = run(*chroot_cmd(bundle / "rootfs", "--version"), env={}).stdout
    expected = run(CREDBROKER, "--version").stdout
    assert out == expected and out.startswith("credbroker ")


def test_image_serves_aws_credentials(image, tmp_path):
    """`serve` from the image's rootfs, as the image's user, against the emulated STS."""
    _, bundle = image
    rootfs = bundle / "rootfs"
    # What the pod's volumes would provide: the projected token and the shared emptyDir.
    state = rootfs / "var" / "run" / "fake"
    shared = rootfs / "var" / "run" / "credbroker"
    shared.mkdir(parents=True)
    os.chown(shared, UID, UID)
    ready = tmp_path / "ready.json"
    fake = subprocess.Popen([str(FAKECLOUD), "run", "--state-dir", str(state), "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = None
    try:
        wait_for(lambda: ready.exists() or fake.poll() is not None, "fakecloud")
        assert fake.poll() is None, "fakecloud exited"
        aws = json.loads(ready.read_text())["aws"]
        for p in [state, *state.rglob("*")]:
            os.chmod(p, os.stat(p).st_mode | 0o055)  # kubelet projects tokens world-readable
        token_in_image = "/" + str(Path(json.loads(ready.read_text())["tokens"]["aws"]).relative_to(rootfs))
        env = {
            "AWS_ROLE_ARN": aws["role_arn"],
            "AWS_WEB_IDENTITY_TOKEN_FILE": token_in_image,
            "AWS_ENDPOINT_URL_STS": aws["sts_endpoint"],
            "AWS_REGION": aws["region"],
            "CREDBROKER_AWS_AUTH_TOKEN_FILE": "/var/run/credbroker/aws-auth-token",
            "CREDBROKER_GROUP_READABLE_FILES": "true",
            "CREDBROKER_ADDR_FILE": "/var/run/credbroker/addrs",
            "CREDBROKER_LISTEN": "127.0.0.1:0",
            "CREDBROKER_OPS_LISTEN": "127.0.0.1:0",
        }
        log = open(tmp_path / "broker.log", "wb")
        broker = subprocess.Popen(chroot_cmd(rootfs, "serve"), env=env, stdout=log, stderr=subprocess.STDOUT)
        addrs_file = shared / "addrs"
        wait_for(lambda: addrs_file.exists() or broker.poll() is not None, "broker addresses")
        assert broker.poll() is None, (tmp_path / "broker.log").read_text()
        addrs = dict(line.split("=", 1) for line in addrs_file.read_text().split())
        wait_for(lambda: get(f"http://{addrs['ops']}/readyz")[0] == 200, "/readyz 200")
        auth_file = shared / "aws-auth-token"
        assert auth_file.stat().st_uid == UID and auth_file.stat().st_mode & 0o777 == 0o640
        status, body = get(f"http://{addrs['credentials']}/v1/credentials",
                           {"Authorization": auth_file.read_text()})
        assert status == 200, body
        assert json.loads(body)["AccessKeyId"]
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
        fake.terminate()
        fake.wait(timeout=10)
