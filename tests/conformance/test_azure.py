"""Azure conformance: Python azure-identity and node @azure/identity ManagedIdentityCredential
against the running broker, through the IMDS endpoint (AZURE_POD_IDENTITY_AUTHORITY_HOST) and,
separately, the App Service endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER), with only an
application container's environment. Tokens must be exactly the ones the fake Entra issued for
those scopes. Then every serving rule over raw HTTP, and the error path of each Entra code."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import (sidecar_env, AZURE_IDENTITY_HEADER, http, run_json, run_node_json,
                      run_python, start_broker, wait_for)

VAULT = "https://vault.azure.net"
STORAGE = "https://storage.azure.com"
MGMT = "https://management.azure.com/"
WARM = [MGMT, "https://graph.microsoft.com"]

def py_two_tokens(first: str, second: str, **credential_kwargs) -> str:
    """Python code printing the tokens ManagedIdentityCredential gets for two resources."""
    return f"""
import json
from azure.identity import ManagedIdentityCredential
cred = ManagedIdentityCredential(**json.loads({json.dumps(json.dumps(credential_kwargs))}))
a = cred.get_token("{first}/.default")
b = cred.get_token("{second}/.default")
print(json.dumps({{"source": type(cred._credential).__name__, "first": a.token, "second": b.token,
                  "first_expires_on": a.expires_on}}))
"""


NODE_TWO_TOKENS = """
const { ManagedIdentityCredential } = require("@azure/identity");
(async () => {
  const cred = new ManagedIdentityCredential();
  const a = await cred.getToken("%s/.default");
  const b = await cred.getToken("%s/.default");
  console.log(JSON.stringify({first: a.token, second: b.token, first_expires_on: a.expiresOnTimestamp}));
})().catch(e => { console.error(e); process.exit(1); });
"""


def issued_for(fake, scope: str) -> list[str]:
    return [r["access_token"] for r in fake.issued("azure") if r["scope"] == scope]


def only_token_for(fake, scope: str) -> str:
    tokens = issued_for(fake, scope)
    assert len(tokens) == 1, f"{scope}: {len(tokens)} tokens issued (one per scope expected)"
    return tokens[0]


@pytest.fixture(scope="module")
def azure_broker(fakecloud, tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("azure-broker"), sidecar_env(fakecloud, "azure"),
                          ["--azure-resources", ",".join(WARM)])
    yield broker
    broker.stop()


def imds_env(broker) -> dict:
    env = broker.app_env()
    return {"AZURE_POD_IDENTITY_AUTHORITY_HOST": env["AZURE_POD_IDENTITY_AUTHORITY_HOST"]}


def app_service_env(broker) -> dict:
    env = broker.app_env()
    return {k: env[k] for k in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")}


def imds_url(broker, resource: str, extra: str = "", path: str = "/metadata/identity/oauth2/token") -> str:
    q = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": resource})
    return f"{broker.url}{path}?{q}{extra}"


def app_url(broker, resource: str, extra: str = "") -> str:
    q = urllib.parse.urlencode({"api-version": "2019-08-01", "resource": resource})
    return f"{broker.url}/msi/token?{q}{extra}"


# === environment ===

def test_env_output_names_both_endpoints_and_forbids_workload_identity(azure_broker):
    env = azure_broker.app_env()
    assert env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] == azure_broker.url
    assert env["IDENTITY_ENDPOINT"] == f"{azure_broker.url}/msi/token"
    assert env["IDENTITY_HEADER"] == AZURE_IDENTITY_HEADER
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
        assert name not in env
    import subprocess
    out = subprocess.run([str(azure_broker.proc.args[0]), "env", "--listen", azure_broker.creds_addr,
                          *azure_broker.args], env=azure_broker.sidecar_env, capture_output=True,
                         text=True, check=True).stdout
    forbidden = next(l for l in out.splitlines() if l.startswith("# azure: must NOT be set"))
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
        assert name in forbidden


def test_readyz_waits_for_the_warm_resources(fakecloud, azure_broker):
    status, _, body = azure_broker.readyz("azure")
    assert status == 200 and body == b"azure: ready\n"
    for resource in WARM:
        scope = resource + "/.default"
        assert issued_for(fakecloud, scope), f"{scope} not fetched at start"
    # The trailing slash is kept: https://management.azure.com/ -> https://management.azure.com//.default
    assert issued_for(fakecloud, "https://management.azure.com//.default")


# === SDKs ===

def test_python_imds_two_resources_get_the_two_issued_tokens(fakecloud, azure_broker, tmp_path):
    code = py_two_tokens(VAULT, STORAGE)
    got = run_json(code, imds_env(azure_broker), tmp_path)
    assert got["source"] == "ImdsCredential"
    assert got["first"] == only_token_for(fakecloud, VAULT + "/.default")
    assert got["second"] == only_token_for(fakecloud, STORAGE + "/.default")
    assert got["first"] != got["second"]
    assert 3500 < got["first_expires_on"] - time.time() <= 3600


def test_python_app_service_two_resources_get_the_two_issued_tokens(fakecloud, azure_broker, tmp_path):
    code = py_two_tokens(VAULT, STORAGE)
    got = run_json(code, app_service_env(azure_broker), tmp_path)
    assert got["source"] == "AppServiceCredential"
    # The same cached tokens: one exchange per scope, whatever the surface.
    assert got["first"] == only_token_for(fakecloud, VAULT + "/.default")
    assert got["second"] == only_token_for(fakecloud, STORAGE + "/.default")


def test_python_explicit_client_id_is_served_and_another_is_unavailable(fakecloud, azure_broker, tmp_path):
    ours = fakecloud.desc["azure"]["client_id"]
    got = run_json(py_two_tokens(MGMT.rstrip("/"), VAULT, client_id=ours), imds_env(azure_broker), tmp_path)
    assert got["source"] == "ImdsCredential"
    assert got["second"] == only_token_for(fakecloud, VAULT + "/.default")
    other = "00000000-0000-0000-0000-000000000042"
    proc = run_python(py_two_tokens(VAULT, STORAGE, client_id=other), imds_env(azure_broker), tmp_path)
    assert proc.returncode != 0
    assert "CredentialUnavailableError" in proc.stderr and "Identity not found" in proc.stderr, proc.stderr


def test_node_imds_two_resources_get_the_two_issued_tokens(fakecloud, azure_broker, tmp_path):
    keyvault, cosmos = "https://vault.azure.net", "https://cosmos.azure.com"
    got = run_node_json(NODE_TWO_TOKENS % (keyvault, cosmos), imds_env(azure_broker), tmp_path)
    assert got["first"] == only_token_for(fakecloud, keyvault + "/.default")
    assert got["second"] == only_token_for(fakecloud, cosmos + "/.default")
    assert 3500_000 < got["first_expires_on"] - time.time() * 1000 <= 3600_000


def test_node_app_service_two_resources_get_the_two_issued_tokens(fakecloud, azure_broker, tmp_path):
    eventhubs, servicebus = "https://eventhubs.azure.net", "https://servicebus.azure.net"
    got = run_node_json(NODE_TWO_TOKENS % (eventhubs, servicebus), app_service_env(azure_broker), tmp_path)
    assert got["first"] == only_token_for(fakecloud, eventhubs + "/.default")
    assert got["second"] == only_token_for(fakecloud, servicebus + "/.default")


def test_python_retries_through_a_throttled_and_a_failing_entra(fakecloud, azure_broker, tmp_path):
    """Transient upstream failure with nothing cached: a 503 the SDK retries, then the token."""
    fakecloud.fault("azure", kind="status", status=429, count=1, retry_after=1)
    fakecloud.fault("azure", kind="status", status=503, count=1)
    resource = "https://ossrdbms-aad.database.windows.net"
    code = py_two_tokens(resource, resource)
    try:
        got = run_json(code, imds_env(azure_broker), tmp_path)
    finally:
        fakecloud.clear("azure")
    assert got["first"] == only_token_for(fakecloud, resource + "/.default")
    outcomes = [r["outcome"] for r in fakecloud.log("azure") if r.get("scope") == resource + "/.default"]
    assert outcomes == ["fault:status", "fault:status", "issued"], outcomes


# === serving rules, raw HTTP ===

def test_imds_response_shape(fakecloud, azure_broker):
    status, headers, body = http("GET", imds_url(azure_broker, MGMT), {"Metadata": "true"})
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert set(doc) == {"access_token", "refresh_token", "expires_in", "expires_on", "not_before",
                        "resource", "token_type", "client_id"}
    assert all(isinstance(v, str) for v in doc.values()), doc
    assert doc["resource"] == MGMT and doc["token_type"] == "Bearer" and doc["refresh_token"] == ""
    assert doc["client_id"] == fakecloud.desc["azure"]["client_id"]
    now = int(time.time())
    assert abs(int(doc["expires_on"]) - int(doc["expires_in"]) - now) <= 2
    assert int(doc["not_before"]) <= now < int(doc["expires_on"])
    assert int(doc["expires_in"]) > 600, "never inside the SDKs' 5 min window"
    assert doc["access_token"] == issued_for(fakecloud, "https://management.azure.com//.default")[-1]


def test_imds_resource_is_echoed_exactly(azure_broker):
    for resource in (VAULT, VAULT + "/", VAULT + "/.default"):
        status, _, body = http("GET", imds_url(azure_broker, resource), {"Metadata": "true"})
        assert status == 200 and json.loads(body)["resource"] == resource


def test_imds_requires_the_metadata_header_and_answers_probes_at_once(azure_broker):
    started = time.monotonic()
    status, headers, body = http("GET", f"{azure_broker.url}/metadata/identity/oauth2/token")
    assert time.monotonic() - started < 0.5
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "invalid_request",
                                "error_description": "Required metadata header not specified"}
    status, _, _ = http("GET", imds_url(azure_broker, MGMT), {"Metadata": "false"})
    assert status == 400


def test_imds_refuses_x_forwarded_for(azure_broker):
    status, _, body = http("GET", imds_url(azure_broker, MGMT),
                           {"Metadata": "true", "X-Forwarded-For": "203.0.113.7"})
    assert status == 400 and "X-Forwarded-For" in json.loads(body)["error_description"]


def test_imds_metadata_segment_is_case_insensitive_and_trailing_slash_works(azure_broker):
    for path in ("/METADATA/identity/oauth2/token", "/Metadata/identity/oauth2/token/"):
        status, _, body = http("GET", imds_url(azure_broker, MGMT, path=path), {"Metadata": "true"})
        assert status == 200, (path, body)


def test_imds_parameters(fakecloud, azure_broker):
    ours = fakecloud.desc["azure"]["client_id"]
    cases = [
        (f"{azure_broker.url}/metadata/identity/oauth2/token?resource={MGMT}", 400, "api-version"),
        (f"{azure_broker.url}/metadata/identity/oauth2/token?api-version=2018-02-01", 400, "resource"),
        (imds_url(azure_broker, MGMT, "&resource=https%3A%2F%2Fvault.azure.net"), 400, "Duplicate"),
        (imds_url(azure_broker, MGMT, f"&client_id={ours}"), 200, None),
        (imds_url(azure_broker, MGMT, f"&client_id={ours.upper()}"), 200, None),
        (imds_url(azure_broker, MGMT, "&client_id=00000000-0000-0000-0000-000000000001"), 400, "Identity not found"),
        (imds_url(azure_broker, MGMT, "&object_id=00000000-0000-0000-0000-000000000001"), 400, "Identity not found"),
        (imds_url(azure_broker, MGMT, "&msi_res_id=/subscriptions/x/resourcegroups/y"), 400, "Identity not found"),
        (imds_url(azure_broker, MGMT, f"&client_id={ours}&object_id=x"), 400, "Only one"),
    ]
    for url, want, why in cases:
        status, _, body = http("GET", url, {"Metadata": "true"})
        assert status == want, (url, body)
        if why:
            assert why in json.loads(body)["error_description"], (url, body)


def test_imdsv2_probe_keeps_sdks_on_v1(azure_broker):
    status, headers, body = http("POST", f"{azure_broker.url}/metadata/identity/credential?cred-api-version=1.0",
                                 {"Metadata": "true"})
    assert status == 404
    assert not headers.get("Server", "").startswith("IMDS/")
    assert json.loads(body)["error"] == "not_found"


def test_app_service_rules(fakecloud, azure_broker):
    url = app_url(azure_broker, VAULT)
    status, _, _ = http("GET", url)
    assert status == 400
    status, _, _ = http("GET", url, {"X-IDENTITY-HEADER": "x" * len(AZURE_IDENTITY_HEADER)})
    assert status == 401
    status, _, _ = http("GET", url, {"X-IDENTITY-HEADER": AZURE_IDENTITY_HEADER, "X-Forwarded-For": "1.2.3.4"})
    assert status == 400
    status, _, body = http("GET", app_url(azure_broker, VAULT).replace("2019-08-01", "2017-09-01"),
                           {"X-IDENTITY-HEADER": AZURE_IDENTITY_HEADER})
    assert status == 400, body
    status, headers, body = http("GET", url, {"X-IDENTITY-HEADER": AZURE_IDENTITY_HEADER})
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert all(isinstance(v, str) for v in doc.values()), doc
    assert doc["resource"] == VAULT and doc["token_type"] == "Bearer"
    assert doc["client_id"] == fakecloud.desc["azure"]["client_id"]
    assert int(doc["expires_on"]) - time.time() > 600
    for extra, want in [(f"&client_id={fakecloud.desc['azure']['client_id']}", 200),
                        ("&principal_id=00000000-0000-0000-0000-000000000001", 400),
                        ("&mi_res_id=/subscriptions/x", 400)]:
        status, _, body = http("GET", app_url(azure_broker, VAULT, extra), {"X-IDENTITY-HEADER": AZURE_IDENTITY_HEADER})
        assert status == want, (extra, body)


def test_tokens_and_assertion_never_logged(fakecloud, azure_broker):
    logs = azure_broker.logs()
    assert Path(fakecloud.token_path("azure")).read_text() not in logs
    assert AZURE_IDENTITY_HEADER not in logs
    for record in fakecloud.issued("azure"):
        assert record["access_token"] not in logs


# === Entra error codes ===

@pytest.mark.parametrize("code,status,error", [
    ("70021", 400, "invalid_request"),
    ("700211", 401, "invalid_client"),
    ("700213", 401, "invalid_client"),
    ("700016", 400, "unauthorized_client"),
    ("invalid_scope", 400, "invalid_scope"),
])
def test_permanent_denials_pass_the_upstream_error_through(fakecloud, azure_broker, code, status, error):
    resource = f"https://denied-{code}.example.com"
    fakecloud.fault("azure", kind="error", code=code, count=1)
    try:
        got, _, body = http("GET", imds_url(azure_broker, resource), {"Metadata": "true"})
    finally:
        fakecloud.clear("azure")
    assert got == status, body
    doc = json.loads(body)
    assert doc["error"] == error
    assert doc["error_description"].startswith("AADSTS"), doc
    # Backing off (long): the next caller gets the same answer without another Entra call.
    before = len(fakecloud.log("azure"))
    got, _, _ = http("GET", imds_url(azure_broker, resource), {"Metadata": "true"})
    assert got == status and len(fakecloud.log("azure")) == before


def test_expired_assertion_is_retried_once_with_a_fresh_read(fakecloud, azure_broker):
    resource = "https://expired-once.example.com"
    fakecloud.fault("azure", kind="error", code="700024", count=1)
    try:
        status, _, body = http("GET", imds_url(azure_broker, resource), {"Metadata": "true"})
    finally:
        fakecloud.clear("azure")
    assert status == 200, body
    outcomes = [r["outcome"] for r in fakecloud.log("azure") if r.get("scope") == resource + "/.default"]
    assert outcomes == ["fault:error", "issued"]

    resource = "https://expired-twice.example.com"
    fakecloud.fault("azure", kind="error", code="700024", count=2)
    try:
        status, _, body = http("GET", imds_url(azure_broker, resource), {"Metadata": "true"})
    finally:
        fakecloud.clear("azure")
    assert status == 401 and json.loads(body)["error"] == "invalid_client"
    assert json.loads(body)["error_description"].startswith("AADSTS700024")


def test_throttling_and_5xx_are_a_retryable_503_with_nothing_cached(fakecloud, azure_broker):
    for fault, resource in [({"kind": "status", "status": 429, "retry_after": 2}, "https://throttled.example.com"),
                            ({"kind": "status", "status": 500}, "https://failing.example.com")]:
        fakecloud.fault("azure", count=1, **fault)
        try:
            status, _, body = http("GET", imds_url(azure_broker, resource), {"Metadata": "true"})
        finally:
            fakecloud.clear("azure")
        assert status == 503, body
        # Retried by the broker after its backoff (>= Retry-After): the SDK's retry then succeeds.
        status, _, body = wait_for(
            lambda: (r := http("GET", imds_url(azure_broker, resource), {"Metadata": "true"}))[0] == 200 and r,
            timeout=10, what="recovery")
        assert json.loads(body)["access_token"] == only_token_for(fakecloud, resource + "/.default")


def test_fic_mismatch_at_start_is_surfaced_in_readiness(fakecloud, tmp_path):
    fakecloud.fault("azure", kind="error", code="70021")  # until cleared
    try:
        broker = start_broker(tmp_path / "fic", sidecar_env(fakecloud, "azure"), wait_ready=False)
        try:
            status, _, body = wait_for(
                lambda: (r := broker.readyz("azure"))[0] == 503 and b"AADSTS70021" in r[2] and r,
                what="readiness to report the FIC mismatch")
            assert b"invalid_request" in body
            status, _, body = http("GET", imds_url(broker, MGMT), {"Metadata": "true"})
            assert status == 400 and json.loads(body)["error_description"].startswith("AADSTS70021")
            assert "federated identity credential" in broker.logs()
        finally:
            broker.stop()
    finally:
        fakecloud.clear("azure")


def test_entra_down_at_start_then_back(fakecloud, tmp_path):
    fakecloud.fault("azure", kind="status", status=503)  # until cleared
    try:
        broker = start_broker(tmp_path / "down", sidecar_env(fakecloud, "azure"), wait_ready=False)
        try:
            status, _, body = wait_for(
                lambda: (r := http("GET", imds_url(broker, MGMT), {"Metadata": "true"}))[0] != 200 and r,
                what="an answer")
            assert status == 503, body
            assert broker.readyz("azure")[0] == 503
            fakecloud.clear("azure")
            wait_for(lambda: broker.readyz("azure")[0] == 200, timeout=20, what="recovery")
        finally:
            broker.stop()
    finally:
        fakecloud.clear("azure")
