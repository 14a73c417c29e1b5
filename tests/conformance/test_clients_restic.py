"""restic (Debian 12's 0.14.0; Go, minio-go v7.0.46), with only an application container's
environment, initialises a repository, backs up a file and lists the snapshot in the recording S3
fake; every request must be signed with the credentials the fake STS issued.

minio-go 7.0.46 pkg/credentials/iam_aws.go `IAM.Retrieve` reads only the literal
AWS_CONTAINER_AUTHORIZATION_TOKEN, and for IMDS uses its `Endpoint` field or
http://169.254.169.254 (`defaultIAMRoleEndpoint`), no environment variable; restic 0.14.0
internal/backend/s3/s3.go builds `credentials.IAM{}` without an Endpoint. minio-go's `Chain`
falls back to anonymous (unsigned) requests when no provider yields a key.
"""

from __future__ import annotations

import subprocess

from conftest import (app_subprocess_env, connects_in_empty_netns, assert_s3_signed_with_issued, aws_issued_by_key, require_tool,
                      status_count, surface_count, with_literal_aws_token, with_only_the_token_file)
from recording_fakes import FakeS3

RESTIC = "/usr/bin/restic"
HINT = "apt-get install restic (Debian 12: 0.14.0-1+b5)"
PASSWORD = {"RESTIC_PASSWORD": "conformance-repository-password"}


def restic(args: list[str], env: dict, home, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = require_tool(RESTIC, HINT)
    return subprocess.run([exe, "--no-cache", *args], env=app_subprocess_env({**env, **PASSWORD}, home),
                          capture_output=True, text=True, timeout=timeout)


def test_restic_version(tmp_path):
    assert restic(["version"], {}, tmp_path).stdout.startswith("restic 0.14.0 ")


def test_restic_s3_through_the_container_endpoint(fakecloud, aws_broker, tmp_path):
    env = with_literal_aws_token(aws_broker.app_env())
    before = surface_count(aws_broker, "aws-container")
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hello from restic\n")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        repo = ["-r", f"s3:{s3.url}/bucket/repo"]
        out = restic([*repo, "init"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        out = restic([*repo, "backup", str(data)], env, tmp_path)
        assert out.returncode == 0, out.stderr
        out = restic([*repo, "ls", "latest"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        assert str(data / "hello.txt") in out.stdout.split(), out.stdout
        assert any(k.startswith("repo/snapshots/") for k in s3.buckets["bucket"])
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-container") > before


def test_restic_with_only_the_token_file_goes_anonymous(aws_broker, tmp_path):
    """`credbroker env` alone: minio-go sends no Authorization, gets 401, and its chain falls back
    to unsigned requests, which the store refuses."""
    env = with_only_the_token_file(aws_broker.app_env())
    before = status_count(aws_broker, "aws-container", 401)
    with FakeS3(lambda akid: None) as s3:
        out = restic(["-r", f"s3:{s3.url}/bucket/repo", "init"], env, tmp_path)
    assert out.returncode != 0
    assert status_count(aws_broker, "aws-container", 401) > before
    assert s3.records and all(r["signature"] == "missing" for r in s3.records), s3.records


def test_restic_imds_goes_to_the_link_local_address_only(aws_broker, tmp_path):
    """IMDS cannot be pointed anywhere: with only the IMDS variables restic (minio-go) connects to
    169.254.169.254:80 (shown in an empty network namespace, where that connect fails at once)."""
    env = aws_broker.app_env()
    imds_only = {**{k: env[k] for k in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_REGION")}, **PASSWORD}
    exe = require_tool(RESTIC, HINT)
    out, connects = connects_in_empty_netns([exe, "--no-cache", "-r", "s3:http://127.0.0.1:9/bucket/repo",
                                             "snapshots"], imds_only, tmp_path)
    assert out.returncode != 0
    assert any('inet_addr("169.254.169.254")' in l and "htons(80)" in l for l in connects), connects
    port = aws_broker.creds_addr.rsplit(":", 1)[1]
    assert not any(f"htons({port})" in l for l in connects), connects
