"""What the benchmark scripts share: fakecloud started and its description read, waiting for a file
a process writes, the environment an application container gets for the clouds fakecloud emulates
(from its ready file), and stopping what a script started."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


def wait_file(path: Path, proc: subprocess.Popen, timeout=120.0) -> str:
    """The contents of `path` once `proc` has written it (non-empty)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert proc.poll() is None, f"process exited ({proc.args})"
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.05)
    return path.read_text()


def start_fakecloud(binary: str, tmp: Path) -> tuple[subprocess.Popen, dict]:
    """fakecloud serving from `tmp/cloud`, and its ready file's description."""
    fake = subprocess.Popen([binary, "run", "--state-dir", str(tmp / "cloud"), "--ready-file", str(tmp / "ready.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return fake, json.loads(wait_file(tmp / "ready.json", fake))
    except BaseException:
        stop(fake)
        raise


def stop(*procs: subprocess.Popen) -> None:
    """Each process still running terminated (last started first), killed if it lingers."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def broker_env(desc: dict, clouds: str = "all") -> dict[str, str]:
    """The broker's environment for fakecloud's clouds: `aws`, or `all` (AWS, GCP and Azure)."""
    env = {
        "PATH": os.environ["PATH"],
        "AWS_ROLE_ARN": desc["aws"]["role_arn"], "AWS_WEB_IDENTITY_TOKEN_FILE": desc["tokens"]["aws"],
        "AWS_ENDPOINT_URL_STS": desc["aws"]["sts_endpoint"], "AWS_REGION": desc["aws"]["region"],
    }
    if clouds == "all":
        env.update({
            "GOOGLE_APPLICATION_CREDENTIALS": desc["gcp"]["credentials_file"],
            "GOOGLE_CLOUD_PROJECT": desc["gcp"]["project_id"],
            "AZURE_CLIENT_ID": desc["azure"]["client_id"], "AZURE_TENANT_ID": desc["azure"]["tenant_id"],
            "AZURE_FEDERATED_TOKEN_FILE": desc["tokens"]["azure"],
            "AZURE_AUTHORITY_HOST": desc["azure"]["authority_host"],
        })
    return env
