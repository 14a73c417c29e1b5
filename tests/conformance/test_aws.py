"""AWS conformance: boto3/botocore and the AWS CLI against the running broker, with only an
application container's environment, get exactly the credentials the fake STS issued."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import (sidecar_env, http, run_json, run_python, start_broker,
                      app_subprocess_env, wait_for)

FROZEN = """
import boto3, json
creds = boto3.Session().get_credentials()
f = creds.get_frozen_credentials()
print(json.dumps({"method": creds.method, "access_key": f.access_key, "secret_key": f.secret_key, "token": f.token}))
"""


def latest_issued(fakecloud):
    issued = fakecloud.issued("aws")
    assert issued, "the fake STS issued nothing"
    return issued[-1]["credentials"]


def assert_same(got: dict, issued: dict):
    assert got["access_key"] == issued["AccessKeyId"]
    assert got["secret_key"] == issued["SecretAccessKey"]
    assert got["token"] == issued["SessionToken"]


def test_env_output_names_the_surfaces_and_forbids_bypass(aws_broker):
    env = aws_broker.app_env()
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == f"{aws_broker.url}/v1/credentials"
    assert Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).is_file()
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == aws_broker.url
    assert env["AWS_REGION"] == "us-east-1"
    assert "AWS_ROLE_ARN" not in env and "AWS_WEB_IDENTITY_TOKEN_FILE" not in env
    out = subprocess.run([str(aws_broker.proc.args[0]), "env", "--listen",
                          aws_broker.creds_addr, *aws_broker.args],
                         env=aws_broker.sidecar_env, capture_output=True, text=True, check=True).stdout
    assert "must NOT be set" in out and "AWS_ROLE_ARN" in out


def test_boto3_container_provider_gets_the_issued_credentials(fakecloud, aws_broker, tmp_path):
    got = run_json(FROZEN, aws_broker.app_env(), tmp_path)
    assert got["method"] == "container-role"
    assert_same(got, latest_issued(fakecloud))


def test_boto3_imdsv2_gets_the_issued_credentials(fakecloud, aws_broker, tmp_path):
    env = aws_broker.app_env()
    imds_only = {k: env[k] for k in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_REGION")}
    got = run_json(FROZEN, imds_only, tmp_path)
    assert got["method"] == "iam-role"
    assert_same(got, latest_issued(fakecloud))


def test_aws_cli_uses_the_container_credentials(fakecloud, aws_broker, tmp_path):
    env = app_subprocess_env(aws_broker.app_env(), tmp_path)
    aws = str(Path(sys.executable).parent / "aws")
    out = subprocess.run([aws, "configure", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    issued = latest_issued(fakecloud)
    line = next(l for l in out.stdout.splitlines() if l.strip().startswith("access_key"))
    assert issued["AccessKeyId"][-4:] in line and "container-role" in line, out.stdout


def test_missing_or_wrong_authorization_is_a_4xx(aws_broker):
    url = f"{aws_broker.url}/v1/credentials"
    status, headers, body = http("GET", url)
    assert status == 401 and json.loads(body)["Code"] == "Unauthorized"
    status, _, body = http("GET", url, {"Authorization": "wrong"})
    assert status == 403 and json.loads(body)["Code"] == "AccessDenied"
    token = Path(aws_broker.app_env()["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text()
    status, headers, body = http("GET", url, {"Authorization": token})
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert set(doc) >= {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId"}


def test_botocore_sees_a_retryable_5xx_while_sts_is_down(fakecloud, tmp_path):
    fakecloud.fault("aws", kind="status", status=503)  # until cleared
    before = len(fakecloud.log("aws"))
    try:
        broker = start_broker(tmp_path / "down", sidecar_env(fakecloud, "aws"), wait_ready=False)
        try:
            token = wait_for(lambda: (tmp_path / "down" / "aws-auth-token").read_text(), what="auth token")
            status, _, body = wait_for(
                lambda: (r := http("GET", f"{broker.url}/v1/credentials", {"Authorization": token}))[0] != 200 and r,
                what="an answer")
            assert status == 503, body
            assert json.loads(body)["Code"] == "ServiceUnavailable"
            assert broker.readyz("aws")[0] == 503
            proc = run_python(FROZEN, broker.app_env(), tmp_path)
            assert proc.returncode != 0
            assert "503" in proc.stderr, proc.stderr
            # Backoff bounds the upstream calls: a few in ~4 s of botocore retries, not one per request.
            calls = len(fakecloud.log("aws")) - before
            assert 1 <= calls <= 6, calls
            fakecloud.clear("aws")
            wait_for(lambda: broker.readyz()[0] == 200, timeout=20, what="recovery after STS is back")
            got = run_json(FROZEN, broker.app_env(), tmp_path)
            assert_same(got, latest_issued(fakecloud))
        finally:
            broker.stop()
    finally:
        fakecloud.clear("aws")


def test_permanent_denial_is_a_4xx_with_the_upstream_code(fakecloud, tmp_path):
    fakecloud.fault("aws", kind="error", code="AccessDenied")
    try:
        broker = start_broker(tmp_path / "denied", sidecar_env(fakecloud, "aws"), wait_ready=False)
        try:
            token = wait_for(lambda: (tmp_path / "denied" / "aws-auth-token").read_text(), what="auth token")
            status, _, body = wait_for(
                lambda: (r := http("GET", f"{broker.url}/v1/credentials", {"Authorization": token}))[0] != 503 and r,
                what="the denial")
            assert status == 403
            assert json.loads(body)["Code"] == "AccessDenied"
            status, _, body = broker.readyz("aws")
            assert status == 503 and b"AccessDenied" in body
        finally:
            broker.stop()
    finally:
        fakecloud.clear("aws")


def test_sigterm_exits_zero(fakecloud, tmp_path):
    broker = start_broker(tmp_path / "term", sidecar_env(fakecloud, "aws"))
    assert broker.stop() == 0


def test_token_file_never_logged(fakecloud, aws_broker):
    token = Path(fakecloud.token_path("aws")).read_text()
    logs = aws_broker.logs()
    assert token not in logs
    for record in fakecloud.issued("aws"):
        creds = record["credentials"]
        assert creds["SecretAccessKey"] not in logs and creds["SessionToken"] not in logs


def test_node_sdk_default_chain_gets_the_issued_credentials(fakecloud, aws_broker, tmp_path):
    from conftest import run_node_json
    code = """
const { fromNodeProviderChain } = require("@aws-sdk/credential-providers");
fromNodeProviderChain()().then(c => console.log(JSON.stringify(
  {access_key: c.accessKeyId, secret_key: c.secretAccessKey, token: c.sessionToken})))
  .catch(e => { console.error(e); process.exit(1); });
"""
    got = run_node_json(code, aws_broker.app_env(), tmp_path)
    # Earlier tests start other brokers on the same fake STS, so "latest issued" may be theirs:
    # compare with the credentials this broker holds, and check the fake issued those.
    token = Path(aws_broker.app_env()["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text()
    _, _, body = http("GET", f"{aws_broker.url}/v1/credentials", {"Authorization": token})
    held = json.loads(body)
    issued = next(r["credentials"] for r in fakecloud.issued("aws")
                  if r["credentials"]["AccessKeyId"] == held["AccessKeyId"])
    assert_same(got, issued)
