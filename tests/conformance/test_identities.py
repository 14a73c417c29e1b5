"""Several identities per pod, with the real SDKs choosing them and only an application
container's environment: two boto3 processes with two AWS_CONTAINER_CREDENTIALS_FULL_URIs get two
roles; ManagedIdentityCredential(client_id=...) in Python and node gets each managed identity's
token; google-auth compute_engine.Credentials(service_account_email=...) gets each service
account's token, and both impersonations share one STS exchange."""

from __future__ import annotations

import json

import pytest

from conftest import (AWS_AUTH_TOKEN, app_subprocess_env, aws_issued_by_key, azure_issued_tokens,
                      gcp_issued_tokens, http, run_json, run_node_json, sidecar_env, start_broker)


def identity_blocks(broker) -> dict[str, dict[str, str]]:
    """`credbroker env`'s commented blocks: identity name -> the variables it sets instead."""
    import subprocess
    from conftest import CREDBROKER
    out = subprocess.run([str(CREDBROKER), "env", "--listen", broker.creds_addr, *broker.args],
                         env=broker.sidecar_env, capture_output=True, text=True, check=True).stdout
    blocks, current = {}, None
    for line in out.splitlines():
        if line.startswith("# ") and " identity " in line:
            current = line.split(" identity ", 1)[1].split(":", 1)[0]
            blocks[current] = {}
        elif line.startswith("#   export ") and current:
            name, _, value = line[len("#   export "):].partition("=")
            blocks[current][name] = value.strip("'")
    return blocks


@pytest.fixture(scope="module")
def multi(fakecloud, tmp_path_factory):
    """One broker holding two identities in each of AWS, Azure and GCP."""
    desc = fakecloud.desc
    env = {
        **sidecar_env(fakecloud, "aws", "gcp", "azure"),
        "CREDBROKER_AWS_AUTH_TOKEN": AWS_AUTH_TOKEN,
        "CREDBROKER_AWS_ROLE": f"reader={desc['aws']['reader_role_arn']}",
        "CREDBROKER_AZURE_IDENTITY": desc["azure"]["second_client_id"],
        "CREDBROKER_GCP_SERVICE_ACCOUNT": desc["gcp"]["second_service_account"],
    }
    broker = start_broker(tmp_path_factory.mktemp("multi"), env)
    yield broker
    broker.stop()


BOTO3 = """
import boto3, json
c = boto3.Session().get_credentials().get_frozen_credentials()
print(json.dumps({"key": c.access_key, "secret": c.secret_key, "token": c.token}))
"""


def test_two_boto3_processes_with_two_full_uris_get_two_roles(fakecloud, multi, tmp_path):
    env = multi.app_env()
    blocks = identity_blocks(multi)
    assert blocks["reader"]["AWS_CONTAINER_CREDENTIALS_FULL_URI"].endswith("/v1/credentials/reader")
    reader_env = {**env, **blocks["reader"]}
    default = run_json(BOTO3, env, tmp_path)
    reader = run_json(BOTO3, reader_env, tmp_path)
    assert default["key"] != reader["key"]
    roles = {}
    for got in (default, reader):
        issued = aws_issued_by_key(fakecloud, got["key"])
        assert issued and issued["SecretAccessKey"] == got["secret"] and issued["SessionToken"] == got["token"]
        record = next(r for r in fakecloud.issued("aws") if r["credentials"]["AccessKeyId"] == got["key"])
        roles[got["key"]] = record["role_arn"]
    assert roles[default["key"]] == fakecloud.desc["aws"]["role_arn"]
    assert roles[reader["key"]] == fakecloud.desc["aws"]["reader_role_arn"]


def test_imdsv2_lists_every_role_and_serves_each(multi):
    status, _, token = http("PUT", f"{multi.url}/latest/api/token",
                            {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200
    h = {"X-aws-ec2-metadata-token": token.decode()}
    status, _, listing = http("GET", f"{multi.url}/latest/meta-data/iam/security-credentials/", h)
    names = listing.decode().split("\n")
    assert names == ["credbroker-demo", "reader"], names
    keys = set()
    for name in names:
        status, _, body = http("GET", f"{multi.url}/latest/meta-data/iam/security-credentials/{name}", h)
        assert status == 200, body
        keys.add(json.loads(body)["AccessKeyId"])
    assert len(keys) == 2
    status, _, _ = http("GET", f"{multi.url}/latest/meta-data/iam/security-credentials/nobody", h)
    assert status == 404
    status, _, body = http("GET", f"{multi.url}/v1/credentials/nobody", {"Authorization": AWS_AUTH_TOKEN})
    assert status == 404 and json.loads(body)["Code"] == "NotFound"


AZURE_PY = """
import json, sys
from azure.identity import ManagedIdentityCredential
kw = {{"client_id": sys.argv[1]}} if len(sys.argv) > 1 and sys.argv[1] else {{}}
t = ManagedIdentityCredential(**kw).get_token("https://vault.azure.net/.default")
print(json.dumps({{"token": t.token}}))
"""


def azure_py(client_id: str, env: dict, home) -> str:
    import subprocess, sys
    code = AZURE_PY.format()
    proc = subprocess.run([sys.executable, "-c", code, client_id], env=app_subprocess_env(env, home),
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["token"]


@pytest.mark.parametrize("endpoint", ["imds", "app-service"])
def test_managed_identity_credential_with_client_id_python(fakecloud, multi, tmp_path, endpoint):
    env = multi.app_env()
    if endpoint == "imds":
        env = {k: v for k, v in env.items() if k not in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")}
    second = fakecloud.desc["azure"]["second_client_id"]
    first = fakecloud.desc["azure"]["client_id"]
    tokens = {cid: azure_py(cid, env, tmp_path) for cid in (first, second)}
    tokens["default"] = azure_py("", env, tmp_path)
    issued = azure_issued_tokens(fakecloud)
    assert issued[tokens[first]]["client_id"] == first
    assert issued[tokens[second]]["client_id"] == second
    assert tokens["default"] == tokens[first]


def test_managed_identity_credential_with_client_id_node(fakecloud, multi, tmp_path):
    env = {k: v for k, v in multi.app_env().items() if k not in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")}
    second = fakecloud.desc["azure"]["second_client_id"]
    code = f"""
const {{ ManagedIdentityCredential }} = require("@azure/identity");
new ManagedIdentityCredential({{ clientId: "{second}" }}).getToken("https://storage.azure.com/.default")
  .then(t => console.log(JSON.stringify({{ token: t.token }})))
  .catch(e => {{ console.error(e); process.exit(1); }});
"""
    token = run_node_json(code, env, tmp_path)["token"]
    assert azure_issued_tokens(fakecloud)[token]["client_id"] == second


# google-auth (Python, 2.62) selects a service account for the *info* request only: its
# compute_engine.Credentials._perform_refresh_token always fetches the token from
# service-accounts/default/token ("Always fetch token with default service account email",
# google/auth/compute_engine/credentials.py). So from Python the other accounts are reached with the
# library's own metadata helper, addressed by email, and an unmodified Credentials(email) object
# still gets the default account's token -- which this test pins, so a google-auth that starts
# honouring the email shows up here. node's google-auth-library Compute({serviceAccountEmail})
# uses service-accounts/EMAIL/token (build/src/auth/computeclient.js) and gets the right one.
GCP_PY = """
import json, sys
import google.auth.transport.requests as tr
from google.auth import compute_engine
from google.auth.compute_engine import _metadata
request = tr.Request()
token, _ = _metadata.get_service_account_token(request, service_account=sys.argv[1])
c = compute_engine.Credentials(service_account_email=sys.argv[1])
c.refresh(request)
print(json.dumps({"token": token, "credentials_token": c.token, "email": c.service_account_email}))
"""

GCP_NODE = """
const {Compute} = require('google-auth-library');
(async () => {
  const c = new Compute({serviceAccountEmail: process.argv[2]});
  const t = await c.getAccessToken();
  console.log(JSON.stringify({token: t.token}));
})().catch(e => { console.error(e); process.exit(1); });
"""


def test_compute_engine_credentials_per_service_account_share_one_sts_exchange(fakecloud, multi, tmp_path):
    import subprocess, sys
    env = multi.app_env()
    first = fakecloud.desc["gcp"]["service_account"]
    second = fakecloud.desc["gcp"]["second_service_account"]
    got = {}
    for email in (first, second, "default"):
        proc = subprocess.run([sys.executable, "-c", GCP_PY, email], env=app_subprocess_env(env, tmp_path),
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr
        got[email] = json.loads(proc.stdout.strip().splitlines()[-1])
    issued = gcp_issued_tokens(fakecloud)
    assert issued[got[first]["token"]]["service_account"] == first
    assert issued[got[second]["token"]]["service_account"] == second
    assert got["default"]["token"] == got[first]["token"]
    # Credentials(email) learns the email from .../EMAIL/?recursive=true but takes its token from default.
    assert got[second]["email"] == second
    assert issued[got[second]["credentials_token"]]["service_account"] == first
    node = run_node_json(GCP_NODE.replace("process.argv[2]", json.dumps(second)), env, tmp_path)
    assert issued_or_refetch(fakecloud, node["token"])["service_account"] == second
    # Both impersonations were made with one federated token: one STS exchange for the broker
    # (its pinned federated token), not one per service account.
    subject_tokens = {r["subject_token_sha256"] for r in fakecloud.issued("gcp") if r["api"] == "sts"}
    sts_calls = [r for r in fakecloud.issued("gcp") if r["api"] == "sts"]
    impersonations = [r for r in fakecloud.issued("gcp") if r["api"] == "generateAccessToken"]
    assert len({r["service_account"] for r in impersonations}) >= 2
    assert len(sts_calls) < len(impersonations), (len(sts_calls), len(impersonations), subject_tokens)
    status, _, listing = http("GET", f"{multi.url}/computeMetadata/v1/instance/service-accounts/",
                              {"Metadata-Flavor": "Google"})
    assert f"{second}/" in listing.decode().split("\n")


def issued_or_refetch(fakecloud, token):
    return gcp_issued_tokens(fakecloud)[token]
