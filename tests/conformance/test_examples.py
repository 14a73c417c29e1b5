"""The scripts in examples/ run unmodified against the real binary, with all four clouds enabled and
only the application container's environment, and report the credentials the fakes issued."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (sidecar_env, ROOT, app_subprocess_env, start_broker)

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def all_clouds(fakecloud, tmp_path_factory):
    env = sidecar_env(fakecloud, "aws", "gcp", "azure", "oci")
    broker = start_broker(tmp_path_factory.mktemp("examples"), env)
    yield broker
    broker.stop()


def run_example(name: str, broker, home: Path) -> dict:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], env=app_subprocess_env(broker.app_env(), home),
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_aws_example(fakecloud, all_clouds, tmp_path):
    got = run_example("aws_credentials.py", all_clouds, tmp_path)
    assert got["provider"] == "container-role"
    issued = [r["credentials"]["AccessKeyId"] for r in fakecloud.issued("aws")]
    assert any(k.endswith(got["access_key_suffix"]) for k in issued)


def test_gcp_example(fakecloud, all_clouds, tmp_path):
    got = run_example("gcp_token.py", all_clouds, tmp_path)
    assert got["provider"] == "google.auth.compute_engine.credentials"
    assert got["project"] == fakecloud.desc["gcp"]["project_id"]
    assert got["service_account"] == fakecloud.desc["gcp"]["service_account"]


def test_azure_example(all_clouds, tmp_path):
    got = run_example("azure_token.py", all_clouds, tmp_path)
    assert got["provider"] == "ManagedIdentityCredential" and got["expires_on"] > 0


def test_oci_example(fakecloud, all_clouds, tmp_path):
    got = run_example("oci_signer.py", all_clouds, tmp_path)
    assert got["region"] == fakecloud.desc["oci"]["region"]
    assert got["tenancy"] == fakecloud.desc["oci"]["tenancy"]
