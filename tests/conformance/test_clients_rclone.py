"""rclone (Debian's 1.60.1: Go, aws-sdk-go 1.44.133, golang.org/x/oauth2 0.3.0, cloud.google.com/go
0.56 compute/metadata), with only an application container's environment, uploads, lists and reads
objects in local recording fakes of S3 and GCS; every request must carry the credential the fake
STS / Google IAM issued through the broker (SigV4 verified with the issued secret).

aws-sdk-go v1 before 1.47.11 reads only the literal AWS_CONTAINER_AUTHORIZATION_TOKEN
(aws/defaults/defaults.go `httpCredProvider`: `p.AuthorizationToken =
os.Getenv(httpProviderAuthorizationEnvVar)`), so the container surface needs it (docs/conformance.md).
"""

from __future__ import annotations

import subprocess

from conftest import (sidecar_env, app_subprocess_env, assert_s3_signed_with_issued, aws_issued_by_key, connects_in_empty_netns, gcp_issued_tokens, require_tool, start_broker, status_count,
                      surface_count, with_literal_aws_token, with_only_the_token_file)
from recording_fakes import FakeGCS, FakeS3

RCLONE = "/usr/bin/rclone"
HINT = "apt-get install rclone (Debian 12: 1.60.1+dfsg-2+b5)"


def rclone(args: list[str], env: dict, home, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = require_tool(RCLONE, HINT)
    return subprocess.run([exe, "--config", str(home / "no-rclone.conf"), "--low-level-retries", "2",
                           "--retries", "1", *args], env=app_subprocess_env(env, home),
                          capture_output=True, text=True, timeout=timeout)


def s3_round_trip(s3: FakeS3, env: dict, home) -> None:
    flags = ["--s3-provider", "Other", "--s3-env-auth", "--s3-endpoint", s3.url,
             "--s3-force-path-style", "--s3-no-check-bucket"]
    src = home / "hello.txt"
    src.write_text("hello from rclone\n")
    out = rclone([*flags, "copyto", str(src), ":s3:bucket/dir/hello.txt"], env, home)
    assert out.returncode == 0, out.stderr
    out = rclone([*flags, "lsf", "-R", ":s3:bucket"], env, home)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == ["dir/", "dir/hello.txt"]
    out = rclone([*flags, "cat", ":s3:bucket/dir/hello.txt"], env, home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from rclone\n"


def test_rclone_s3_through_the_container_endpoint(fakecloud, aws_broker, tmp_path):
    env = with_literal_aws_token(aws_broker.app_env())
    before_container, before_imds = surface_count(aws_broker, "aws-container"), surface_count(aws_broker, "aws-imds")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        s3_round_trip(s3, env, tmp_path)
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-container") > before_container
    assert surface_count(aws_broker, "aws-imds") == before_imds


def test_rclone_s3_with_only_the_token_file_fails_as_documented(fakecloud, aws_broker, tmp_path):
    """With only `credbroker env`'s output rclone cannot get credentials: aws-sdk-go 1.44.133 never
    reads AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, so it calls /v1/credentials without
    Authorization (401), and since AWS_CONTAINER_CREDENTIALS_FULL_URI is set its default chain
    holds no IMDS provider to fall back to (aws/defaults/defaults.go RemoteCredProvider; rclone
    backend/s3/s3.go s3Connection uses the session's default chain when env_auth is set)."""
    env = with_only_the_token_file(aws_broker.app_env())
    before_401, before_imds = status_count(aws_broker, "aws-container", 401), surface_count(aws_broker, "aws-imds")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        out = rclone(["--s3-provider", "Other", "--s3-env-auth", "--s3-endpoint", s3.url,
                      "--s3-force-path-style", "lsf", ":s3:bucket"], env, tmp_path)
    assert out.returncode != 0
    assert "NoCredentialProviders: no valid providers in chain" in out.stderr, out.stderr
    assert s3.records == []
    assert status_count(aws_broker, "aws-container", 401) > before_401
    assert surface_count(aws_broker, "aws-imds") == before_imds


def test_rclone_s3_through_imdsv2(fakecloud, aws_broker, tmp_path):
    env = aws_broker.app_env()
    imds_only = {k: env[k] for k in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_REGION")}
    before = surface_count(aws_broker, "aws-imds")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        s3_round_trip(s3, imds_only, tmp_path)
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-imds") > before


def test_rclone_gcs_through_the_metadata_server(fakecloud, gcp_broker, tmp_path):
    env = gcp_broker.app_env()
    with FakeGCS(lambda token: token in gcp_issued_tokens(fakecloud)) as gcs:
        flags = ["--gcs-endpoint", f"{gcs.url}/storage/v1/", "--gcs-bucket-policy-only"]
        src = tmp_path / "hello.txt"
        src.write_text("hello gcs\n")
        out = rclone([*flags, "copyto", str(src), ":gcs:bucket/dir/hello.txt"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        out = rclone([*flags, "lsf", "-R", ":gcs:bucket"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.split()) == ["dir/", "dir/hello.txt"]
        out = rclone([*flags, "cat", ":gcs:bucket/dir/hello.txt"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "hello gcs\n"
    tokens = {r["bearer"] for r in gcs.records}
    assert len(tokens) == 1 and None not in tokens, gcs.records
    issued = gcp_issued_tokens(fakecloud)[tokens.pop()]
    # rclone asks google.DefaultClient for storage.DevstorageFullControlScope.
    assert issued["scopes"] == ["https://www.googleapis.com/auth/devstorage.full_control"]
    assert issued["service_account"] == fakecloud.desc["gcp"]["service_account"]


def test_rclone_azureblob_msi_is_hard_coded_to_the_link_local_address(fakecloud, tmp_path):
    """rclone 1.60.1's Azure Blob MSI cannot be pointed at the broker: backend/azureblob/imds.go
    `GetMSIToken` requests the constant msiEndpointDefault
    (http://169.254.169.254/metadata/identity/oauth2/token) and reads no variable. Shown in an
    empty network namespace with the whole `credbroker env` output for Azure."""
    broker = start_broker(tmp_path / "azure", sidecar_env(fakecloud, "azure"))
    try:
        env = broker.app_env()
        exe = require_tool(RCLONE, HINT)
        out, connects = connects_in_empty_netns(
            [exe, "--config", str(tmp_path / "no.conf"), "--low-level-retries", "1", "--retries", "1",
             "--azureblob-account", "devaccount", "--azureblob-use-msi",
             "--azureblob-endpoint", "http://127.0.0.1:9", "lsf", ":azureblob:container"], env, tmp_path)
        assert out.returncode != 0
        assert any('inet_addr("169.254.169.254")' in l and "htons(80)" in l for l in connects), connects
        port = broker.creds_addr.rsplit(":", 1)[1]
        assert not any(f"htons({port})" in l for l in connects), connects
    finally:
        broker.stop()
