"""OCI conformance: the Python `oci` SDK, with only an application container's environment
(OCI_RESOURCE_PRINCIPAL_VERSION=2.2, the RPST and key file paths, the region), signs requests with
the files the broker writes; the fake OCI API verifies every signature
(docs/oci.md, "Request signing")."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import pytest

from conftest import sidecar_env, http, run_json, sha256, start_broker, wait_for

SIGN_AND_CALL = """
import json, oci, requests
endpoint = {endpoint!r}
signer = oci.auth.signers.get_resource_principals_signer()
client = oci.object_storage.ObjectStorageClient({{}}, signer=signer, service_endpoint=endpoint)
namespace = client.get_namespace().data
raw = requests.get(endpoint + "/20160918/whoami", auth=signer, timeout=10)
print(json.dumps({{"namespace": namespace, "tenancy": signer.tenancy_id, "region": signer.region,
                  "raw_status": raw.status_code, "raw": raw.json()}}))
"""

# One long-running process, as an application is: the SDK keeps signing with the RPST it loaded
# until the API answers 401, then reloads the files once and retries
# (docs/oci.md, "Refresh windows").
ACROSS_ROTATION = """
import json, oci, time
endpoint = {endpoint!r}
signer = oci.auth.signers.get_resource_principals_signer()
client = oci.object_storage.ObjectStorageClient({{}}, signer=signer, service_endpoint=endpoint)
first_token = signer.security_token.security_token
first_exp = signer.security_token.get_jwt()["exp"]
first = client.get_namespace().data
while time.time() < first_exp + 1.5:
    time.sleep(0.25)
second = client.get_namespace().data
print(json.dumps({{"first": first, "second": second, "first_exp": first_exp,
                  "first_token_sha": __import__("hashlib").sha256(first_token.encode()).hexdigest(),
                  "second_token_sha": __import__("hashlib").sha256(
                      signer.security_token.security_token.encode()).hexdigest()}}))
"""


def api_endpoint(fake) -> str:
    return fake.desc["oci"]["api_endpoint"]


def api_log(fake) -> list[dict]:
    return fake.log("oci_api")


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def set_rpst_lifetime(fake, seconds: int) -> None:
    import urllib.request
    req = urllib.request.Request(fake.admin("oci") + "/settings", method="POST",
                                 data=json.dumps({"rpst_lifetime_secs": seconds}).encode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["rpst_lifetime_secs"] == seconds


@pytest.fixture(scope="module")
def oci_broker(fakecloud, tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("oci-broker"), sidecar_env(fakecloud, "oci"))
    yield broker
    broker.stop()


def test_env_output_is_resource_principal_2_2(oci_broker):
    env = oci_broker.app_env()
    out_dir = oci_broker.workdir / "oci"
    assert env == {
        "OCI_RESOURCE_PRINCIPAL_VERSION": "2.2",
        "OCI_RESOURCE_PRINCIPAL_RPST": str(out_dir / "rpst"),
        "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM": str(out_dir / "private.pem"),
        "OCI_RESOURCE_PRINCIPAL_REGION": "us-ashburn-1",
    }
    status, _, body = oci_broker.readyz("oci")
    assert status == 200 and b"oci: ready" in body


def test_files_are_atomic_outputs_without_newline(oci_broker):
    env = oci_broker.app_env()
    rpst_path, pem_path = Path(env["OCI_RESOURCE_PRINCIPAL_RPST"]), Path(env["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM"])
    rpst, pem = rpst_path.read_text(), pem_path.read_text()
    assert not rpst.endswith("\n") and not rpst.startswith("ST$")
    assert pem.startswith("-----BEGIN PRIVATE KEY-----") and not pem.endswith("\n")
    for path in (rpst_path, pem_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(rpst_path.parent)) == ["private.pem", "rpst"]
    claims = jwt_claims(rpst)
    assert claims["exp"] > time.time() + 60 and "jwk" in claims


def test_sdk_resource_principal_signer_is_accepted(fakecloud, oci_broker, tmp_path):
    got = run_json(SIGN_AND_CALL.format(endpoint=api_endpoint(fakecloud)), oci_broker.app_env(), tmp_path)
    assert got["namespace"] == "credbrokerdemo"
    assert got["tenancy"] == fakecloud.desc["oci"]["tenancy"]
    assert got["region"] == "us-ashburn-1"
    assert got["raw_status"] == 200 and got["raw"]["authenticated"] is True
    rpst = Path(oci_broker.app_env()["OCI_RESOURCE_PRINCIPAL_RPST"]).read_text()
    recent = api_log(fakecloud)[-2:]
    assert [r["outcome"] for r in recent] == ["ok", "ok"], recent
    assert {r["rpst_sha256"] for r in recent} == {sha256(rpst)}
    issued = [r for r in fakecloud.log("oci") if r["outcome"] == "issued"]
    assert issued[-1]["rpst_sha256"] == sha256(rpst)


def test_sdk_recovers_after_rpst_rotation_through_its_401_retry(fakecloud, tmp_path):
    set_rpst_lifetime(fakecloud, 16)
    try:
        broker = start_broker(tmp_path / "rotating", sidecar_env(fakecloud, "oci"))
        try:
            before = len(api_log(fakecloud))
            got = run_json(ACROSS_ROTATION.format(endpoint=api_endpoint(fakecloud)), broker.app_env(), tmp_path)
            assert got["first"] == got["second"] == "credbrokerdemo"
            assert got["first_token_sha"] != got["second_token_sha"]
            calls = api_log(fakecloud)[before:]
            outcomes = [(r["outcome"], r["rpst_sha256"]) for r in calls]
            # ok with the first RPST; then the stale RPST is refused; then the retry, signed
            # with the RPST the SDK re-read from the file, is accepted.
            assert outcomes == [
                ("ok", got["first_token_sha"]),
                ("error:NotAuthenticated", got["first_token_sha"]),
                ("ok", got["second_token_sha"]),
            ], calls
            assert "expired" in calls[1]["reason"]
            issued = {r["rpst_sha256"] for r in fakecloud.log("oci") if r["outcome"] == "issued"}
            assert got["second_token_sha"] in issued
            # The broker rewrote the file ahead of expiry: the new RPST was on disk in time.
            assert broker.readyz("oci")[0] == 200
        finally:
            broker.stop()
    finally:
        set_rpst_lifetime(fakecloud, 3600)


def test_restart_reuses_the_key_file(fakecloud, tmp_path):
    out = tmp_path / "shared-volume"
    args = ["--oci-output-dir", str(out)]
    broker = start_broker(tmp_path / "first", sidecar_env(fakecloud, "oci"), args)
    pem_path = out / "private.pem"
    pem = pem_path.read_text()
    old_rpst = (out / "rpst").read_text()
    assert broker.stop() == 0
    # The files survive the broker; the RPST is still usable by the app meanwhile.
    assert pem_path.read_text() == pem
    broker = start_broker(tmp_path / "second", sidecar_env(fakecloud, "oci"), args)
    try:
        assert pem_path.read_text() == pem
        new_rpst = (out / "rpst").read_text()
        assert new_rpst != old_rpst
        assert jwt_claims(new_rpst)["jwk"] == jwt_claims(old_rpst)["jwk"]
    finally:
        broker.stop()


def test_proxymux_403_means_not_ready_with_the_reason(fakecloud, tmp_path):
    fakecloud.fault("oci", kind="status", status=403)  # until cleared
    try:
        broker = start_broker(tmp_path / "denied", sidecar_env(fakecloud, "oci"), wait_ready=False)
        try:
            status, _, body = wait_for(
                lambda: (r := broker.readyz("oci"))[0] == 503 and b"enhanced" in r[2] and r,
                what="a not-ready answer naming the cause")
            assert b"cluster must be an enhanced cluster" in body, body
            assert not (tmp_path / "denied" / "oci" / "rpst").exists()
        finally:
            broker.stop()
    finally:
        fakecloud.clear("oci")


def test_secrets_never_logged(fakecloud, oci_broker):
    env = oci_broker.app_env()
    logs = oci_broker.logs()
    rpst = Path(env["OCI_RESOURCE_PRINCIPAL_RPST"]).read_text()
    pem = Path(env["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM"]).read_text()
    sa_token = Path(fakecloud.token_path("oci")).read_text()
    assert "rpst written" in logs
    for secret in (rpst, rpst.split(".")[1], sa_token, pem.splitlines()[1]):
        assert secret not in logs
