"""Old Python SDKs that production images still pin, in their own venv (target/clients-venv-old),
each with only an application container's environment:

- google-auth 1.6.3 (2019): reads GCE_METADATA_ROOT (GCE_METADATA_HOST did not exist yet) for data
  and GCE_METADATA_IP for its ping `GET /` with `Metadata-Flavor: Google`
  (google/auth/compute_engine/_metadata.py `_METADATA_ROOT`, `_METADATA_IP_ROOT`, `ping`).
- boto3 1.26.165 / botocore 1.29.165 (2023): the container provider reads only the literal
  AWS_CONTAINER_AUTHORIZATION_TOKEN (botocore/credentials.py `ContainerProvider._build_headers`,
  `ENV_VAR_AUTH_TOKEN`; AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE arrived in botocore 1.32.0) and
  allows only 169.254.170.2, localhost and 127.0.0.1 (botocore/utils.py
  `ContainerMetadataFetcher._ALLOWED_HOSTS`).
- azure-identity 1.8.0 (2022): IMDS at AZURE_POD_IDENTITY_AUTHORITY_HOST (_credentials/imds.py), but
  no App Service 2019-08-01 (IDENTITY_ENDPOINT/IDENTITY_HEADER; added in 1.9.0): with IDENTITY_ENDPOINT
  set and neither IDENTITY_SERVER_THUMBPRINT nor IMDS_ENDPOINT, `ManagedIdentityCredential.__init__`
  picks no credential at all and `get_token` raises "No managed identity endpoint found"
  (_credentials/managed_identity.py). So the IDENTITY_* pair `credbroker env` prints when
  --azure-identity-header is set breaks it; AZURE_POD_IDENTITY_AUTHORITY_HOST alone works.
"""

from __future__ import annotations

import json
import subprocess

from conftest import (sidecar_env, AZURE_IDENTITY_HEADER, OLD_SDKS_VENV, app_subprocess_env, assert_s3_signed_with_issued,
                      aws_issued_by_key, azure_issued_tokens, gcp_issued_tokens, require_tool,
                      start_broker, status_count, surface_count, with_literal_aws_token, with_only_the_token_file)
from recording_fakes import FakeS3

HINT = "pip install -r tests/conformance/clients/requirements-old-sdks.txt into target/clients-venv-old"


def old_python() -> str:
    return require_tool(OLD_SDKS_VENV / "bin" / "python", HINT)


def run(code: str, env: dict, home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([old_python(), "-c", code, *args], env=app_subprocess_env(env, home),
                          capture_output=True, text=True, timeout=120)


OLD_PYTHON = """
import json
import google.auth, google.auth.transport.requests as tr
creds, project = google.auth.default()
creds.refresh(tr.Request())
print(json.dumps({"type": type(creds).__module__ + "." + type(creds).__name__, "project": project,
                  "token": creds.token, "email": creds.service_account_email,
                  "version": __import__("importlib.metadata").metadata.version("google-auth")}))
"""


def assert_default_token(fakecloud, token: str) -> None:
    issued = gcp_issued_tokens(fakecloud).get(token)
    assert issued is not None, "the fake issued no such token"
    assert issued["service_account"] == fakecloud.desc["gcp"]["service_account"]
    assert "https://www.googleapis.com/auth/cloud-platform" in issued["scopes"]


def test_old_python_google_auth_uses_gce_metadata_root(fakecloud, gcp_broker, tmp_path):
    python = old_python()
    env = gcp_broker.app_env()
    before = surface_count(gcp_broker, "gcp-metadata")
    proc = subprocess.run([python, "-c", OLD_PYTHON], env=app_subprocess_env(env, tmp_path),
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["version"] == "1.6.3"
    assert got["type"] == "google.auth.compute_engine.credentials.Credentials"
    assert got["project"] == fakecloud.desc["gcp"]["project_id"]
    assert got["email"] == fakecloud.desc["gcp"]["service_account"]
    assert_default_token(fakecloud, got["token"])
    assert surface_count(gcp_broker, "gcp-metadata") > before


def test_old_python_google_auth_needs_gce_metadata_root(fakecloud, gcp_broker, tmp_path):
    """Without GCE_METADATA_ROOT (only GCE_METADATA_HOST/IP) 1.6.3 pings the broker (GCE_METADATA_IP)
    but sends its data calls to metadata.google.internal: why `credbroker env` exports all three.
    Shown by the URLs the module computes at import, so no DNS lookup leaves the machine."""
    python = old_python()
    env = {k: v for k, v in gcp_broker.app_env().items() if k != "GCE_METADATA_ROOT"}
    code = "from google.auth.compute_engine import _metadata as m; print(m._METADATA_ROOT, m._METADATA_IP_ROOT)"
    proc = subprocess.run([python, "-c", code], env=app_subprocess_env(env, tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout.split() == ["http://metadata.google.internal/computeMetadata/v1/",
                                   f"http://{gcp_broker.creds_addr}"], proc.stdout + proc.stderr


BOTO3 = """
import json, sys, boto3
session = boto3.Session()
s3 = session.client("s3", endpoint_url=sys.argv[1])
s3.put_object(Bucket="bucket", Key="dir/hello.txt", Body=b"hello from boto3 1.26")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bucket")["Contents"]]
body = s3.get_object(Bucket="bucket", Key="dir/hello.txt")["Body"].read().decode()
print(json.dumps({"keys": keys, "body": body, "method": session.get_credentials().method,
                  "botocore": __import__("botocore").__version__}))
"""


def boto3_round_trip(fakecloud, env: dict, home) -> dict:
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        out = run(BOTO3, env, home, s3.url)
        assert out.returncode == 0, out.stderr[-3000:]
    assert_s3_signed_with_issued(fakecloud, s3)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["keys"] == ["dir/hello.txt"] and got["body"] == "hello from boto3 1.26"
    assert got["botocore"] == "1.29.165"
    return got


def test_old_boto3_through_the_container_endpoint(fakecloud, aws_broker, tmp_path):
    before = surface_count(aws_broker, "aws-container")
    got = boto3_round_trip(fakecloud, with_literal_aws_token(aws_broker.app_env()), tmp_path)
    assert got["method"] == "container-role"
    assert surface_count(aws_broker, "aws-container") > before


def test_old_boto3_with_only_the_token_file_fails_as_documented(aws_broker, tmp_path):
    env = with_only_the_token_file(aws_broker.app_env())
    before = status_count(aws_broker, "aws-container", 401)
    out = run("import boto3; boto3.Session().get_credentials().get_frozen_credentials()", env, tmp_path)
    assert out.returncode != 0
    assert "Error when retrieving credentials from container-role" in out.stderr, out.stderr[-2000:]
    assert status_count(aws_broker, "aws-container", 401) > before


def test_old_boto3_through_imdsv2(fakecloud, aws_broker, tmp_path):
    env = aws_broker.app_env()
    imds_only = {k: env[k] for k in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_REGION")}
    before = surface_count(aws_broker, "aws-imds")
    got = boto3_round_trip(fakecloud, imds_only, tmp_path)
    assert got["method"] == "iam-role"
    assert surface_count(aws_broker, "aws-imds") > before


AZURE = """
import json
from azure.identity import ManagedIdentityCredential
token = ManagedIdentityCredential().get_token("https://storage.azure.com/.default")
print(json.dumps({"token": token.token, "version": __import__("azure.identity").identity.__version__}))
"""


def test_old_azure_identity_through_imds(fakecloud, tmp_path):
    broker = start_broker(tmp_path / "azure", sidecar_env(fakecloud, "azure"))
    try:
        env = broker.app_env()
        assert env["IDENTITY_HEADER"] == AZURE_IDENTITY_HEADER
        imds_only = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": env["AZURE_POD_IDENTITY_AUTHORITY_HOST"]}
        before = surface_count(broker, "azure-imds")
        out = run(AZURE, imds_only, tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["version"] == "1.8.0"
        assert azure_issued_tokens(fakecloud)[got["token"]]["scope"] == "https://storage.azure.com/.default"
        assert surface_count(broker, "azure-imds") > before

        # The whole `credbroker env` of a broker with --azure-identity-header: nothing is asked.
        before_all = sum(surface_count(broker, s) for s in ("azure-imds", "azure-app-service"))
        out = run(AZURE, env, tmp_path)
        assert out.returncode != 0
        assert "No managed identity endpoint found" in out.stderr, out.stderr[-2000:]
        assert sum(surface_count(broker, s) for s in ("azure-imds", "azure-app-service")) == before_all
    finally:
        broker.stop()
