"""moto's server as a second, independent STS: boto3 and the AWS CLI, through the broker, get
moto-issued credentials that moto itself accepts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import app_subprocess_env, http, run_json, sidecar_env, start_broker, wait_for

ROLE = "arn:aws:iam::123456789012:role/moto-role"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    moto_server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http("GET", url + "/moto-api/")[0] == 200, timeout=60, what="moto server")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_boto3_through_broker_gets_moto_credentials_moto_accepts(fakecloud, moto, tmp_path):
    # The emulated pod's AWS sidecar, with moto as STS and moto's role. moto does not verify
    # the token; the issuer's kubelet-style file is still what is sent.
    sidecar = {**sidecar_env(fakecloud, "aws"), "AWS_ROLE_ARN": ROLE, "AWS_ENDPOINT_URL_STS": moto}
    broker = start_broker(tmp_path / "broker", sidecar)
    try:
        env = broker.app_env()
        code = f"""
import boto3, json
s = boto3.Session()
c = s.get_credentials().get_frozen_credentials()
ident = s.client("sts", endpoint_url={moto!r}).get_caller_identity()
print(json.dumps({{"access_key": c.access_key, "arn": ident["Arn"], "account": ident["Account"]}}))
"""
        got = run_json(code, env, tmp_path)
        assert got["arn"].startswith("arn:aws:sts::123456789012:assumed-role/moto-role/"), got
        assert got["account"] == "123456789012"
        # The CLI too, through the container endpoint.
        aws = str(Path(sys.executable).parent / "aws")
        out = subprocess.run([aws, "sts", "get-caller-identity", "--endpoint-url", moto, "--output", "json"],
                             env=app_subprocess_env(env, tmp_path), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Arn"] == got["arn"]
    finally:
        broker.stop()


def test_chained_role_through_broker_is_the_role_moto_sees(fakecloud, moto, tmp_path):
    """`--aws-chained-role`: the broker calls moto's AssumeRole signed with the base role's
    credentials; boto3 on `/v1/credentials/cross` holds a session that moto's own
    GetCallerIdentity names as the chained (cross-account) role, and S3 accepts it."""
    cross = "arn:aws:iam::210987654321:role/moto-cross-account"
    sidecar = {**sidecar_env(fakecloud, "aws"), "AWS_ROLE_ARN": ROLE, "AWS_ENDPOINT_URL_STS": moto,
               "CREDBROKER_AWS_CHAINED_ROLE": f"cross={cross}@default"}
    broker = start_broker(tmp_path / "broker", sidecar)
    try:
        env = broker.app_env()
        code = f"""
import boto3, json, os
s = boto3.Session()
ident = s.client("sts", endpoint_url={moto!r}).get_caller_identity()
s3 = s.client("s3", endpoint_url={moto!r}, region_name="us-east-1")
s3.create_bucket(Bucket="chained-" + os.environ["WHO"])
s3.put_object(Bucket="chained-" + os.environ["WHO"], Key="k", Body=b"v")
body = s3.get_object(Bucket="chained-" + os.environ["WHO"], Key="k")["Body"].read().decode()
print(json.dumps({{"arn": ident["Arn"], "account": ident["Account"], "body": body,
                   "key": s.get_credentials().get_frozen_credentials().access_key}}))
"""
        base = run_json(code, {**env, "WHO": "base"}, tmp_path)
        uri = env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] + "/cross"
        chained = run_json(code, {**env, "WHO": "cross", "AWS_CONTAINER_CREDENTIALS_FULL_URI": uri}, tmp_path)
        assert base["arn"].startswith("arn:aws:sts::123456789012:assumed-role/moto-role/"), base
        assert chained["arn"].startswith("arn:aws:sts::210987654321:assumed-role/moto-cross-account/"), chained
        assert chained["account"] == "210987654321"
        assert chained["key"] != base["key"] and chained["body"] == "v"
    finally:
        broker.stop()
