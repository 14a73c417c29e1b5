"""GCP conformance: Python google-auth and node's google-auth-library against the running broker,
with only an application container's environment, get exactly the tokens the fake Google STS and
IAM Credentials issued; raw HTTP checks of every metadata-server rule; kubelet token rotation."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (sidecar_env, CREDBROKER, http, run_json, run_node_json, run_python, sha256,
                      start_broker, wait_for)

DEFAULT_SCOPES = ["https://www.googleapis.com/auth/cloud-platform",
                  "https://www.googleapis.com/auth/userinfo.email"]
GCS_RO = "https://www.googleapis.com/auth/devstorage.read_only"
AUDIENCE = "https://svc.example.com"
FLAVOR = {"Metadata-Flavor": "Google"}

PYTHON = """
import json
import google.auth, google.auth.transport.requests as tr
from google.oauth2 import id_token
req = tr.Request()
creds, project = google.auth.default()
creds.refresh(req)
scoped = creds.with_scopes([%r])
scoped.refresh(req)
idt = id_token.fetch_id_token(req, %r)
print(json.dumps({"type": type(creds).__module__ + "." + type(creds).__name__, "project": project,
                  "token": creds.token, "email": creds.service_account_email, "scoped": scoped.token,
                  "id_token": idt}))
""" % (GCS_RO, AUDIENCE)

NODE = """
const { GoogleAuth } = require("google-auth-library");
(async () => {
  const auth = new GoogleAuth();
  const client = await auth.getClient();
  const token = await auth.getAccessToken();
  const project = await auth.getProjectId();
  const scoped = await new GoogleAuth({ scopes: [%s] }).getAccessToken();
  const idc = await auth.getIdTokenClient(%s);
  const headers = await idc.getRequestHeaders();
  const authz = typeof headers.get === "function" ? headers.get("authorization") : (headers.Authorization || headers.authorization);
  console.log(JSON.stringify({ client: client.constructor.name, token, project, scoped,
                               id_token: authz.replace(/^Bearer /, "") }));
})().catch(e => { console.error(e); process.exit(1); });
""" % (json.dumps(GCS_RO), json.dumps(AUDIENCE))


@pytest.fixture(scope="module")
def gcp_broker(fakecloud, tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("gcp-broker"), sidecar_env(fakecloud, "gcp"))
    yield broker
    broker.stop()


def issued(fakecloud, api: str) -> list[dict]:
    return [r for r in fakecloud.issued("gcp") if r["api"] == api]


def issued_access_token(fakecloud, token: str) -> dict:
    matches = [r for r in issued(fakecloud, "generateAccessToken") + issued(fakecloud, "sts")
               if r["token"] == token]
    assert matches, "the fake issued no such token"
    return matches[-1]


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def md(broker, path: str, headers: dict | None = FLAVOR):
    return http("GET", f"{broker.url}/computeMetadata/v1/{path}", headers)


# === environment ===

def test_env_points_sdks_at_the_metadata_server_and_forbids_bypass(gcp_broker):
    env = gcp_broker.app_env()
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"):
        assert env[name] == gcp_broker.creds_addr
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in env
    out = subprocess.run([str(CREDBROKER), "env", "--listen", gcp_broker.creds_addr, *gcp_broker.args],
                         env=gcp_broker.sidecar_env, capture_output=True, text=True, check=True).stdout
    forbidden = next(l for l in out.splitlines() if "must NOT be set" in l)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in forbidden
    assert "hostAliases" in out and "metadata.google.internal" in out


# === SDKs ===

def test_python_google_auth_gets_the_issued_tokens(fakecloud, gcp_broker, tmp_path):
    got = run_json(PYTHON, gcp_broker.app_env(), tmp_path)
    gcp = fakecloud.desc["gcp"]
    assert got["type"] == "google.auth.compute_engine.credentials.Credentials"
    assert got["project"] == gcp["project_id"]
    assert got["email"] == gcp["service_account"]
    default = issued_access_token(fakecloud, got["token"])
    assert default["api"] == "generateAccessToken"
    assert sorted(default["scopes"]) == DEFAULT_SCOPES
    assert default["service_account"] == gcp["service_account"]
    scoped = issued_access_token(fakecloud, got["scoped"])
    assert scoped["scopes"] == [GCS_RO]
    assert got["scoped"] != got["token"]
    ids = [r for r in issued(fakecloud, "generateIdToken") if r["token"] == got["id_token"]]
    assert ids and ids[-1]["audience"] == AUDIENCE and ids[-1]["include_email"] is True
    claims = jwt_claims(got["id_token"])
    assert claims["aud"] == AUDIENCE and claims["email"] == gcp["service_account"]


def test_node_google_auth_library_gets_the_issued_tokens(fakecloud, gcp_broker, tmp_path):
    got = run_node_json(NODE, gcp_broker.app_env(), tmp_path)
    gcp = fakecloud.desc["gcp"]
    assert got["client"] == "Compute"
    assert got["project"] == gcp["project_id"]
    default = issued_access_token(fakecloud, got["token"])
    assert sorted(default["scopes"]) == DEFAULT_SCOPES
    scoped = issued_access_token(fakecloud, got["scoped"])
    assert scoped["scopes"] == [GCS_RO]
    assert got["scoped"] != got["token"]
    ids = [r for r in issued(fakecloud, "generateIdToken") if r["token"] == got["id_token"]]
    assert ids and ids[-1]["audience"] == AUDIENCE
    assert jwt_claims(got["id_token"])["aud"] == AUDIENCE


def test_both_sdks_share_the_cached_token_per_scope_set(fakecloud, gcp_broker, tmp_path):
    py = run_json(PYTHON, gcp_broker.app_env(), tmp_path)
    node = run_node_json(NODE, gcp_broker.app_env(), tmp_path)
    assert py["token"] == node["token"]
    assert py["scoped"] == node["scoped"]


# === raw HTTP: every metadata rule ===

def test_root_answers_without_the_header_and_is_flavored(gcp_broker):
    status, headers, body = http("GET", gcp_broker.url + "/")
    assert (status, body) == (200, b"computeMetadata/\n")
    assert headers["metadata-flavor"] == "Google"


@pytest.mark.parametrize("path", ["project/project-id", "instance/service-accounts/default/token",
                                  "instance/service-accounts/default/?recursive=true", ""])
def test_missing_flavor_header_is_403(gcp_broker, path):
    status, headers, body = md(gcp_broker, path, headers={})
    assert status == 403
    assert body == b'Missing required header "Metadata-Flavor": "Google"\n'
    assert headers["metadata-flavor"] == "Google"
    status, _, _ = md(gcp_broker, path, headers={"Metadata-Flavor": "Googl"})
    assert status == 403


@pytest.mark.parametrize("path", ["/", "/computeMetadata/v1/instance/service-accounts/default/token"])
def test_x_forwarded_for_is_403(gcp_broker, path):
    status, headers, _ = http("GET", gcp_broker.url + path, {**FLAVOR, "X-Forwarded-For": "10.1.2.3"})
    assert status == 403
    assert headers["metadata-flavor"] == "Google"


def test_legacy_endpoints_are_not_served(gcp_broker):
    for path in ["/computeMetadata/v1beta1/instance/service-accounts/default/token",
                 "/0.1/meta-data/service-accounts/default/acquire"]:
        status, _, body = http("GET", gcp_broker.url + path, FLAVOR)
        assert status == 404, path
        assert b"access_token" not in body


def test_token_json_and_expires_in_decreasing(gcp_broker):
    status, headers, body = md(gcp_broker, "instance/service-accounts/default/token")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["metadata-flavor"] == "Google"
    first = json.loads(body)
    assert set(first) == {"access_token", "expires_in", "token_type"}
    assert first["token_type"] == "Bearer" and first["expires_in"] > 0
    time.sleep(2.1)
    second = json.loads(md(gcp_broker, "instance/service-accounts/default/token")[2])
    assert second["access_token"] == first["access_token"]
    assert 0 < second["expires_in"] < first["expires_in"]
    # More than the SDKs' 5-minute window: they do not refetch in a loop.
    assert second["expires_in"] > 300


def test_text_entries_and_content_types(fakecloud, gcp_broker):
    gcp = fakecloud.desc["gcp"]
    expect = {
        "project/project-id": gcp["project_id"],
        "project/numeric-project-id": gcp["project_number"],
        "instance/service-accounts/default/email": gcp["service_account"],
        f"instance/service-accounts/{gcp['service_account']}/email": gcp["service_account"],
        "instance/service-accounts/default/aliases": "default\n",
        "instance/service-accounts/default/scopes": "".join(s + "\n" for s in DEFAULT_SCOPES),
        "universe/universe-domain": "googleapis.com",
    }
    for path, want in expect.items():
        status, headers, body = md(gcp_broker, path)
        assert (status, body.decode()) == (200, want), path
        assert headers["content-type"] == "application/text", path
        assert headers["metadata-flavor"] == "Google", path
    for path in ["instance/id", "instance/name", "instance/hostname"]:
        status, _, body = md(gcp_broker, path)
        assert status == 200 and body, path
    # Not configured (no --gcp-zone / --gcp-cluster-name): not defined.
    assert md(gcp_broker, "instance/zone")[0] == 404
    assert md(gcp_broker, "instance/attributes/cluster-name")[0] == 404


def test_directories_with_and_without_slash_and_recursive(fakecloud, gcp_broker):
    email = fakecloud.desc["gcp"]["service_account"]
    for path in ["instance/service-accounts/", "instance/service-accounts"]:
        status, headers, body = md(gcp_broker, path)
        assert (status, body.decode()) == (200, f"default/\n{email}/\n"), path
        assert headers["content-type"] == "application/text"
    for path in ["instance/service-accounts/default/?recursive=true",
                 "instance/service-accounts/default?recursive=true"]:
        status, headers, body = md(gcp_broker, path)
        assert status == 200 and headers["content-type"] == "application/json", path
        assert json.loads(body) == {"aliases": ["default"], "email": email, "scopes": DEFAULT_SCOPES}


def test_identity_is_a_raw_jwt_and_needs_an_audience(gcp_broker):
    status, headers, body = md(gcp_broker, f"instance/service-accounts/default/identity?audience={AUDIENCE}&format=full")
    assert status == 200 and headers["content-type"] == "application/text"
    assert jwt_claims(body.decode())["aud"] == AUDIENCE
    status, _, body = md(gcp_broker, "instance/service-accounts/default/identity")
    assert (status, body) == (400, b"non-empty audience parameter required\n")


def test_scopes_query_selects_a_different_token(fakecloud, gcp_broker):
    default = json.loads(md(gcp_broker, "instance/service-accounts/default/token")[2])["access_token"]
    status, _, body = md(gcp_broker, f"instance/service-accounts/default/token?scopes={GCS_RO},{GCS_RO}")
    assert status == 200
    scoped = json.loads(body)["access_token"]
    assert scoped != default
    assert issued_access_token(fakecloud, scoped)["scopes"] == [GCS_RO]


def test_every_answer_within_the_sdk_timeout(fakecloud, gcp_broker):
    # New scope sets, each a fresh generateAccessToken (on the federated STS token every scope set
    # shares), with Google slower than the broker's 2.2 s wait: answers still come within 2.5 s
    # (SDKs give up at 3 s), as a retryable 503, and the exchange goes on behind it.
    fakecloud.fault("gcp", kind="latency", ms=2600)
    try:
        statuses = []
        for i in range(4):
            started = time.monotonic()
            status, headers, _ = md(gcp_broker, f"instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/s{i}")
            assert time.monotonic() - started < 2.5
            assert headers["metadata-flavor"] == "Google"
            statuses.append(status)
        assert set(statuses) == {503}, statuses
    finally:
        fakecloud.clear("gcp")
    status, _, _ = md(gcp_broker, "instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/s0")
    assert status == 200


# === upstream trouble ===

def test_503_while_sts_is_down_then_recovery(fakecloud, tmp_path):
    fakecloud.fault("gcp", kind="status", status=503)  # until cleared
    try:
        broker = start_broker(tmp_path / "down", sidecar_env(fakecloud, "gcp"), wait_ready=False)
        try:
            started = time.monotonic()
            status, headers, body = md(broker, "instance/service-accounts/default/token")
            assert time.monotonic() - started < 2.5
            assert status == 503, body
            assert headers["metadata-flavor"] == "Google"
            assert broker.readyz("gcp")[0] == 503
            fakecloud.clear("gcp")
            wait_for(lambda: broker.readyz("gcp")[0] == 200, timeout=20, what="recovery")
            status, _, body = md(broker, "instance/service-accounts/default/token")
            assert status == 200
            assert issued_access_token(fakecloud, json.loads(body)["access_token"])
        finally:
            broker.stop()
    finally:
        fakecloud.clear("gcp")


def test_permanent_denial_is_403_with_the_upstream_reason(fakecloud, gcp_broker, tmp_path):
    gcp = fakecloud.desc["gcp"]
    member = ("principal://iam.googleapis.com/projects/%s/locations/global/workloadIdentityPools/%s/subject/"
              "system:serviceaccount:default:app" % (gcp["project_number"], gcp["pool"]))
    def bind(bound: bool):
        data = json.dumps({"service_account": gcp["service_account"], "member": member, "bound": bound}).encode()
        import urllib.request
        req = urllib.request.Request(gcp["admin"] + "/bindings", data=data, method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
    bind(False)
    try:
        status, headers, body = md(gcp_broker, "instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/denied")
        assert status == 403, body
        assert b"PERMISSION_DENIED" in body and b"iam.serviceAccounts.getAccessToken" in body
        assert headers["metadata-flavor"] == "Google"
        code = "import google.auth, google.auth.transport.requests as tr\n" \
               "c, _ = google.auth.default(scopes=['https://www.googleapis.com/auth/denied'])\n" \
               "c = c.with_scopes(['https://www.googleapis.com/auth/denied'])\nc.refresh(tr.Request())\n"
        proc = run_python(code, gcp_broker.app_env(), tmp_path)
        assert proc.returncode != 0 and "iam.serviceAccounts.getAccessToken" in proc.stderr, proc.stderr
    finally:
        bind(True)


# === direct federation ===

def test_direct_federation_serves_the_sts_token_and_no_identity(fakecloud, tmp_path):
    direct = {**sidecar_env(fakecloud, "gcp"),
              "GOOGLE_APPLICATION_CREDENTIALS": fakecloud.desc["gcp"]["credentials_file_direct"]}
    broker = start_broker(tmp_path / "direct", direct)
    try:
        status, _, body = md(broker, "instance/service-accounts/default/token")
        assert status == 200
        record = issued_access_token(fakecloud, json.loads(body)["access_token"])
        assert record["api"] == "sts" and sorted(record["scopes"]) == DEFAULT_SCOPES
        status, _, body = md(broker, f"instance/service-accounts/default/identity?audience={AUDIENCE}")
        assert status == 404
        assert b"(default/app) is not annotated with a target Google service account" in body
        got = run_json("import google.auth, google.auth.transport.requests as tr, json\n"
                       "c, p = google.auth.default(); c.refresh(tr.Request())\n"
                       "print(json.dumps({'token': c.token, 'project': p}))\n", broker.app_env(), tmp_path)
        assert issued_access_token(fakecloud, got["token"])["api"] == "sts"
    finally:
        broker.stop()


# === token rotation ===

def test_kubelet_rotation_reaches_the_next_sts_exchange(fakecloud, tmp_path):
    # Direct federation: every new scope set is its own STS exchange (with impersonation the
    # federated STS token is shared and next exchanged at its refresh point).
    direct = {**sidecar_env(fakecloud, "gcp"),
              "GOOGLE_APPLICATION_CREDENTIALS": fakecloud.desc["gcp"]["credentials_file_direct"]}
    broker = start_broker(tmp_path / "direct", direct)
    try:
        assert md(broker, "instance/service-accounts/default/token")[0] == 200
        token_path = Path(fakecloud.token_path("gcp"))
        before = token_path.read_text()
        fakecloud.rotate()
        after = wait_for(lambda: (t := token_path.read_text()) != before and t, what="rotated token")
        status, _, _ = md(broker, "instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/after-rotation")
        assert status == 200
        sts = [r for r in fakecloud.log("gcp") if r["api"] == "sts"]
        assert sts[-1]["subject_token_sha256"] == sha256(after)
        assert sha256(before) != sha256(after)
    finally:
        broker.stop()


def test_no_token_in_the_logs(fakecloud, gcp_broker):
    logs = gcp_broker.logs()
    assert Path(fakecloud.token_path("gcp")).read_text() not in logs
    for record in fakecloud.issued("gcp"):
        assert record["token"] not in logs


def test_check_summarises_gcp_without_secrets(fakecloud, tmp_path):
    import os
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **sidecar_env(fakecloud, "gcp")}
    out = subprocess.run([str(CREDBROKER), "check"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("gcp: "))
    assert line.startswith("gcp: ok: impersonating " + fakecloud.desc["gcp"]["service_account"]), line
    for record in fakecloud.issued("gcp"):
        assert record["token"] not in out.stdout + out.stderr


def test_unservable_credential_source_fails_at_start(fakecloud, tmp_path):
    import os
    doc = json.loads(Path(fakecloud.desc["gcp"]["credentials_file"]).read_text())
    doc["credential_source"] = {"executable": {"command": "/bin/true"}}
    bad = tmp_path / "exec.json"
    bad.write_text(json.dumps(doc))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GOOGLE_APPLICATION_CREDENTIALS": str(bad)}
    out = subprocess.run([str(CREDBROKER), "serve", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "GOOGLE_APPLICATION_CREDENTIALS: credential_source.executable" in out.stderr + out.stdout
