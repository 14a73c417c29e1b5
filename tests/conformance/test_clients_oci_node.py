"""oci-common / oci-objectstorage 2.142.1 (npm, the OCI TypeScript SDK), with only an application
container's environment (resource principal 2.2: the files the broker writes), signs Object
Storage calls the fake OCI API verifies; across an RPST rotation it keeps signing with the RPST it
loaded until that one's `exp` has passed, then re-reads the files: it refreshes only then
(oci-common lib/auth/security-token-adapter.js `isValid`: `payload.exp > secondsSinceEpoch`, checked
by file-based-resource-principal-federation-client.js `getSecurityToken`)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from conftest import sidecar_env, NODE_MODULES, run_node_json, start_broker

HINT = "npm ci in target/conformance-node (tests/conformance/node/package.json)"

ACROSS_ROTATION = """
const fs = require("fs"), crypto = require("crypto");
const common = require("oci-common"), os = require("oci-objectstorage");
const sha = s => crypto.createHash("sha256").update(s).digest("hex");
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const rpstPath = process.env.OCI_RESOURCE_PRINCIPAL_RPST;
  const first = fs.readFileSync(rpstPath, "utf8");
  const exp = JSON.parse(Buffer.from(first.split(".")[1], "base64url").toString()).exp;
  const provider = await common.ResourcePrincipalAuthenticationDetailsProvider.builder();
  const client = new os.ObjectStorageClient({ authenticationDetailsProvider: provider });
  client.endpoint = %(endpoint)s;
  const out = { first_sha: sha(first), exp, calls: [] };
  out.calls.push((await client.getNamespace({})).value);
  // The broker rewrites the file at about half-life: wait for it, then call again before exp.
  while (sha(fs.readFileSync(rpstPath, "utf8")) === out.first_sha) {
    if (Date.now() / 1000 > exp) throw new Error("the broker did not rotate the RPST before exp");
    await sleep(200);
  }
  out.rotated_sha = sha(fs.readFileSync(rpstPath, "utf8"));
  out.rotated_before_exp = Date.now() / 1000 < exp - 1;
  out.calls.push((await client.getNamespace({})).value);
  while (Date.now() / 1000 < exp + 1.5) await sleep(200);
  out.calls.push((await client.getNamespace({})).value);
  out.final_sha = sha(fs.readFileSync(rpstPath, "utf8"));
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
"""


def set_rpst_lifetime(fake, seconds: int) -> None:
    req = urllib.request.Request(fake.admin("oci") + "/settings", method="POST",
                                 data=json.dumps({"rpst_lifetime_secs": seconds}).encode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["rpst_lifetime_secs"] == seconds


def test_oci_typescript_sdk_signs_with_the_files_and_refreshes_only_after_exp(fakecloud, tmp_path):
    if not (NODE_MODULES / "oci-objectstorage").is_dir():
        pytest.fail(f"oci-objectstorage is missing: {HINT} (scripts/test installs it)")
    set_rpst_lifetime(fakecloud, 16)
    try:
        broker = start_broker(tmp_path / "rotating", sidecar_env(fakecloud, "oci"))
        try:
            before = len(fakecloud.log("oci_api"))
            endpoint = json.dumps(fakecloud.desc["oci"]["api_endpoint"])
            started = time.monotonic()
            got = run_node_json(ACROSS_ROTATION % {"endpoint": endpoint}, broker.app_env(), tmp_path)
            assert time.monotonic() - started < 60
        finally:
            broker.stop()
    finally:
        set_rpst_lifetime(fakecloud, 3600)
    assert got["calls"] == ["credbrokerdemo"] * 3
    assert got["rotated_before_exp"] is True
    calls = [(r["outcome"], r["rpst_sha256"]) for r in fakecloud.log("oci_api")[before:]]
    # 1: the loaded RPST; 2: the file already holds a newer one, the SDK still signs with the
    # loaded one (still valid); 3: past its exp the SDK re-read the files and signs with the new one.
    assert calls[0] == ("ok", got["first_sha"]), calls
    assert calls[1] == ("ok", got["first_sha"]), calls
    assert calls[2][0] == "ok" and calls[2][1] != got["first_sha"], calls
    assert calls[2][1] in (got["rotated_sha"], got["final_sha"]), calls
    assert len(calls) == 3, calls  # no 401 and no retry: the expired RPST was never sent
    issued = {r["rpst_sha256"] for r in fakecloud.log("oci") if r["outcome"] == "issued"}
    assert {got["first_sha"], calls[2][1]} <= issued
