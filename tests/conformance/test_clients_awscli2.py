"""AWS CLI v2 (Debian 12's awscli 2.9.19-1: its own botocore fork under awscli/botocore, on Debian's
python3), with only an application container's environment, copies, lists and reads objects in
the recording S3 fake; every request must be signed with the credentials the fake STS issued.

CLI v2 2.9.19 reads only the literal AWS_CONTAINER_AUTHORIZATION_TOKEN
(awscli/botocore/credentials.py ContainerProvider._build_headers) and allows only the hosts
169.254.170.2, localhost and 127.0.0.1 for an http FULL_URI (awscli/botocore/utils.py
ContainerMetadataFetcher._ALLOWED_HOSTS). For IMDS it needs the endpoint with a trailing slash
(IMDSFetcher._fetch_metadata_token concatenates 'latest/api/token'). Not to be confused with the v1
CLI in the SDK venv.
"""

from __future__ import annotations

import subprocess

from conftest import (app_subprocess_env, assert_s3_signed_with_issued, aws_issued_by_key, require_tool, status_count,
                      surface_count, with_literal_aws_token, with_only_the_token_file)
from recording_fakes import FakeS3

AWS2 = "/usr/bin/aws"
HINT = "apt-get install awscli (Debian 12: 2.9.19-1)"


def aws2(args: list[str], env: dict, home, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = require_tool(AWS2, HINT)
    return subprocess.run([exe, "--no-cli-pager", *args], env=app_subprocess_env(env, home),
                          capture_output=True, text=True, timeout=timeout)


def test_it_is_the_v2_cli(tmp_path):
    out = aws2(["--version"], {}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("aws-cli/2.9.19 "), out.stdout


def s3_round_trip(s3: FakeS3, env: dict, home) -> None:
    ep = ["--endpoint-url", s3.url]
    src = home / "hello.txt"
    src.write_text("hello from aws-cli v2\n")
    out = aws2(["s3", "cp", str(src), "s3://bucket/dir/hello.txt", *ep], env, home)
    assert out.returncode == 0, out.stderr
    out = aws2(["s3", "ls", "--recursive", "s3://bucket", *ep], env, home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "dir/hello.txt", out.stdout
    out = aws2(["s3", "cp", "s3://bucket/dir/hello.txt", "-", *ep], env, home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from aws-cli v2\n"


def test_cli_v2_s3_through_the_container_endpoint(fakecloud, aws_broker, tmp_path):
    env = with_literal_aws_token(aws_broker.app_env())
    before = surface_count(aws_broker, "aws-container")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        s3_round_trip(s3, env, tmp_path)
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-container") > before


def test_cli_v2_with_only_the_token_file_fails_as_documented(aws_broker, tmp_path):
    """`credbroker env` alone: CLI v2 sends no Authorization, gets 401 and stops (the container
    provider's error ends botocore's chain)."""
    env = with_only_the_token_file(aws_broker.app_env())
    before = status_count(aws_broker, "aws-container", 401)
    out = aws2(["s3", "ls", "s3://bucket", "--endpoint-url", "http://127.0.0.1:9"], env, tmp_path)
    assert out.returncode != 0
    assert "Error when retrieving credentials from container-role" in out.stderr, out.stderr
    assert "401" in out.stderr, out.stderr
    assert status_count(aws_broker, "aws-container", 401) > before


def test_cli_v2_refuses_a_loopback_host_outside_its_allowlist(aws_broker, tmp_path):
    """Any other loopback address (here 127.0.0.2) is refused before a request is made: the
    broker must be reached as 127.0.0.1 or localhost (botocore v1 accepts all of 127/8)."""
    env = with_literal_aws_token(aws_broker.app_env())
    port = aws_broker.creds_addr.rsplit(":", 1)[1]
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"http://127.0.0.2:{port}/v1/credentials"
    out = aws2(["s3", "ls", "s3://bucket", "--endpoint-url", "http://127.0.0.1:9"], env, tmp_path)
    assert out.returncode != 0
    assert "Unsupported host '127.0.0.2'" in out.stderr, out.stderr


def test_cli_v2_imds_needs_the_endpoint_with_a_trailing_slash(aws_broker, tmp_path):
    # Its botocore builds `self._base_url + 'latest/api/token'` (awscli/botocore/utils.py,
    # IMDSFetcher._fetch_metadata_token; METADATA_BASE_URL ends in "/"), so the endpoint as the
    # contract exports it, without the slash, gives an invalid URL before any request is made.
    env = aws_broker.app_env()
    imds_only = {k: env[k] for k in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_REGION")}
    assert not imds_only["AWS_EC2_METADATA_SERVICE_ENDPOINT"].endswith("/")
    out = aws2(["s3", "ls", "s3://bucket", "--endpoint-url", "http://127.0.0.1:9"], imds_only, tmp_path)
    assert out.returncode != 0
    assert "latest/api/token" in out.stderr and "Invalid endpoint" in out.stderr, out.stderr


def test_cli_v2_s3_through_imdsv2(fakecloud, aws_broker, tmp_path):
    # With the slash the CLI asks for `/latest/...`; SDKs that append "/latest/..." to a slashed
    # endpoint ask for `//latest/...`, which the listener serves the same way.
    env = aws_broker.app_env()
    imds_only = {k: env[k] for k in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_REGION")}
    imds_only["AWS_EC2_METADATA_SERVICE_ENDPOINT"] += "/"
    before = surface_count(aws_broker, "aws-imds")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        s3_round_trip(s3, imds_only, tmp_path)
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-imds") > before
