"""obstore 0.12.1 (PyPI; Python over the Rust object_store crate 0.14.2, which has its own
credential code for AWS, GCP and Azure), with only an application container's environment, puts,
lists and gets objects in local recording fakes of S3, GCS (XML API) and Azure Blob; every request
must carry exactly what the fake STS / Google IAM / Entra issued through the broker.

object_store facts (object_store-0.14.2, docs/conformance.md): S3 builder `from_env` reads every
`AWS_*` variable it knows; IMDS is `AWS_METADATA_ENDPOINT` (aws/builder.rs `MetadataEndpoint`),
not `AWS_EC2_METADATA_SERVICE_ENDPOINT`; the container provider needs both
`AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, read untrimmed
(aws/credential.rs `eks_credential`). GCS: `GCE_METADATA_HOST` with `?audience=` on the token
request (gcp/credential.rs `make_metadata_request`). Azure: one managed-identity provider at
`IDENTITY_ENDPOINT` with api-version 2019-08-01, `metadata: true` and `x-identity-header` from
`IDENTITY_HEADER`, `expires_on` a JSON string (azure/credential.rs `ImdsManagedIdentityProvider`).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import (sidecar_env, assert_s3_signed_with_issued, AZURE_IDENTITY_HEADER, CLIENTS_VENV, app_subprocess_env, aws_issued_by_key,
                      azure_issued_tokens, gcp_issued_tokens,
                      require_tool, start_broker, surface_count)
from recording_fakes import FakeAzureBlob, FakeGCS, FakeS3

HINT = "pip install -r tests/conformance/clients/requirements.txt into target/clients-venv"

ROUND_TRIP = """
import json, sys, obstore
from obstore.store import {store}
store = {store}({args})
obstore.put(store, "dir/hello.txt", b"hello from obstore")
listed = [m["path"] for batch in obstore.list(store) for m in batch]
body = bytes(obstore.get(store, "dir/hello.txt").bytes())
print(json.dumps({{"listed": listed, "body": body.decode()}}))
"""


def run_obstore(store: str, args: str, env: dict, home) -> subprocess.CompletedProcess:
    python = require_tool(CLIENTS_VENV / "bin" / "python", HINT)
    code = ROUND_TRIP.format(store=store, args=args)
    return subprocess.run([python, "-c", code], env=app_subprocess_env(env, home),
                          capture_output=True, text=True, timeout=120)


def assert_round_trip(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"listed": ["dir/hello.txt"], "body": "hello from obstore"}


def s3_args(s3: FakeS3) -> str:
    return f'"bucket", endpoint={s3.url!r}, client_options={{"allow_http": True}}'


def test_obstore_s3_through_the_container_endpoint(fakecloud, aws_broker, tmp_path):
    env = aws_broker.app_env()
    before = surface_count(aws_broker, "aws-container")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        assert_round_trip(run_obstore("S3Store", s3_args(s3), env, tmp_path))
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-container") > before


def test_obstore_s3_through_imdsv2(fakecloud, aws_broker, tmp_path):
    """The IMDS part of `credbroker env` alone: object_store finds IMDS through AWS_METADATA_ENDPOINT."""
    env = aws_broker.app_env()
    imds_only = {k: v for k, v in env.items() if k.startswith("AWS_") and "CONTAINER" not in k}
    assert "AWS_METADATA_ENDPOINT" in imds_only, "credbroker env must name IMDS for object_store"
    before = surface_count(aws_broker, "aws-imds")
    with FakeS3(lambda akid: aws_issued_by_key(fakecloud, akid)) as s3:
        assert_round_trip(run_obstore("S3Store", s3_args(s3), imds_only, tmp_path))
    assert_s3_signed_with_issued(fakecloud, s3)
    assert surface_count(aws_broker, "aws-imds") > before


def test_obstore_gcs_through_the_metadata_server(fakecloud, gcp_broker, tmp_path):
    env = gcp_broker.app_env()
    before = surface_count(gcp_broker, "gcp-metadata")
    with FakeGCS(lambda token: token in gcp_issued_tokens(fakecloud)) as gcs:
        args = f'"bucket", config={{"google_base_url": {gcs.url!r}}}, client_options={{"allow_http": True}}'
        assert_round_trip(run_obstore("GCSStore", args, env, tmp_path))
    tokens = {r["bearer"] for r in gcs.records}
    assert len(tokens) == 1 and None not in tokens, gcs.records
    issued = gcp_issued_tokens(fakecloud)[tokens.pop()]
    # object_store asks for no scopes: the default token (cloud-platform) is what it gets.
    assert "https://www.googleapis.com/auth/cloud-platform" in issued["scopes"]
    assert surface_count(gcp_broker, "gcp-metadata") > before


@pytest.fixture(scope="module")
def azure_broker(fakecloud, tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("azure-broker"), sidecar_env(fakecloud, "azure"))
    yield broker
    broker.stop()


def azure_args(blob: FakeAzureBlob) -> str:
    return (f'"container", config={{"account_name": "devaccount", "endpoint": {blob.url!r}}}, '
            f'client_options={{"allow_http": True}}')


def assert_azure_storage_token(fakecloud, blob: FakeAzureBlob) -> None:
    tokens = {r["bearer"] for r in blob.records}
    assert len(tokens) == 1 and None not in tokens, blob.records
    issued = azure_issued_tokens(fakecloud)[tokens.pop()]
    assert issued["scope"] == "https://storage.azure.com/.default"


def test_obstore_azure_through_the_app_service_endpoint(fakecloud, azure_broker, tmp_path):
    env = azure_broker.app_env()
    assert env["IDENTITY_HEADER"] == AZURE_IDENTITY_HEADER
    before = surface_count(azure_broker, "azure-app-service")
    with FakeAzureBlob(lambda token: token in azure_issued_tokens(fakecloud)) as blob:
        assert_round_trip(run_obstore("AzureStore", azure_args(blob), env, tmp_path))
    assert_azure_storage_token(fakecloud, blob)
    assert surface_count(azure_broker, "azure-app-service") > before


def test_obstore_azure_through_imds(fakecloud, tmp_path):
    """A broker without --azure-identity-header (no App Service endpoint): object_store has no
    AZURE_POD_IDENTITY_AUTHORITY_HOST and defaults to http://169.254.169.254, so `credbroker env`
    must name IMDS for it as AZURE_MSI_ENDPOINT; it sends the same 2019-08-01 request with
    `metadata: true` there."""
    sidecar = {k: v for k, v in sidecar_env(fakecloud, "azure").items() if k != "CREDBROKER_AZURE_IDENTITY_HEADER"}
    broker = start_broker(tmp_path / "imds-only", sidecar)
    try:
        env = broker.app_env()
        assert "IDENTITY_ENDPOINT" not in env
        # Checked before obstore runs: without it obstore would call the real link-local IMDS.
        assert env.get("AZURE_MSI_ENDPOINT") == f"{broker.url}/metadata/identity/oauth2/token", env
        before = surface_count(broker, "azure-imds")
        with FakeAzureBlob(lambda token: token in azure_issued_tokens(fakecloud)) as blob:
            assert_round_trip(run_obstore("AzureStore", azure_args(blob), env, tmp_path))
        assert_azure_storage_token(fakecloud, blob)
        assert surface_count(broker, "azure-imds") > before
    finally:
        broker.stop()
