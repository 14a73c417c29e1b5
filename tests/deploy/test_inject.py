"""`credbroker inject`, the running webhook, against fakecloud's emulated API server.

- AdmissionReview fixtures (fixtures/admission/*.json, shaped as kube-apiserver sends them) over
  verified HTTPS; every patch applied with a real JSON Patch library (jsonpatch), the pod
  validated strictly against the Kubernetes 1.29 and 1.33 schemas and held to the overlays'
  invariants (manifests.CHECKS but OVERLAY_ONLY_CHECKS) and the injector's own (INJECT_CHECKS).
- The ServiceAccount lookup with a real client (kubectl), a ServiceAccount created just before
  its pod, and the API server down (hanging, refusing): a refusal within --api-timeout-ms.
- The serving certificate replaced as a Secret volume update replaces it: the next connection
  gets the new one, same process.
- End to end: an injected pod's sidecar and application run as local processes in the pod's
  own network and mount namespaces; each cloud's real SDK gets what fakecloud issued.
- Every CREDBROKER_* variable deploy/injector sets is a setting of `credbroker inject`.

Regenerate fixtures/admission/already-injected.json after an intended change of the mutation
with CREDBROKER_REGENERATE_FIXTURES=1 (the test then writes it and fails, to be committed).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import inject_support as s
import manifests as m
from test_manifests import K8S_VERSIONS, validate_strict

CLOUDS_OF = {
    "aws": {"aws"},
    "azure": {"azure"},
    "gcp": {"gcp"},
    "oci": {"oci"},
    "all-clouds": set(m.CLOUDS),
    "skip-containers": set(m.CLOUDS),
}
SKIPPED = {"skip-containers": {"logs", "istio-proxy"}}
NAMESPACE = "team"
# Short, so the outage tests are quick; the shipped default (2000) is as far inside 5 s.
API_TIMEOUT_MS = 1000
INJECTED_POD_CHECKS = [c for c in m.CHECKS if c not in m.OVERLAY_ONLY_CHECKS]


# --- the injector's own invariants --------------------------------------------------------------

def token_projections(docs) -> list[tuple[str, dict]]:
    """(volume name, serviceAccountToken projection) for every projected token in the pod."""
    return [(v["name"], src["serviceAccountToken"]) for v in m.pod_spec(docs).get("volumes", [])
            for src in v.get("projected", {}).get("sources", []) if "serviceAccountToken" in src]


def containers(docs) -> list[dict]:
    spec = m.pod_spec(docs)
    return spec.get("initContainers", []) + spec["containers"]


def expected_audiences(docs, clouds) -> list:
    audiences = [m.AUDIENCE[c] for c in ("aws", "azure") if c in clouds]
    if "gcp" in clouds:
        audiences.append(m.gcp_credential_configuration(docs)["audience"])
    if "oci" in clouds:
        audiences.append(None)  # the API server's own audience, what proxymux reviews
    return sorted(audiences, key=str)


def check_sidecar_first(docs, clouds):
    first = m.pod_spec(docs)["initContainers"][0]
    assert first["name"] == m.SIDECAR, f"the first initContainer is {first['name']}, not the sidecar"
    assert first.get("restartPolicy") == "Always", "the sidecar is not a native sidecar (restartPolicy)"
    probe = first.get("startupProbe", {}).get("httpGet", {})
    assert probe.get("path") == "/readyz" and probe.get("port") == "ops", f"startupProbe {probe}"
    assert m.port_number(first, "ops") == 8190, "the ops port is not 8190"


def check_one_token_per_cloud(docs, clouds):
    got = sorted((t.get("audience") for _, t in token_projections(docs)), key=str)
    assert got == expected_audiences(docs, clouds), \
        f"projected token audiences {got}, expected one per cloud: {expected_audiences(docs, clouds)}"


def check_tokens_in_sidecar_only(docs, clouds):
    for name, _ in token_projections(docs):
        mounted_by = [c["name"] for c in containers(docs)
                      if any(mt["name"] == name for mt in c.get("volumeMounts", []))]
        assert mounted_by == [m.SIDECAR], f"token volume {name} is mounted by {mounted_by}, not the sidecar alone"


def check_shared_volume(docs, clouds):
    vol = m.volume(docs, "credbroker-shared")
    assert vol.get("emptyDir", {}).get("medium") == "Memory", "credbroker-shared is not an in-memory emptyDir"
    for c in containers(docs):
        mount = m.mounts_by_path(c).get("/var/run/credbroker")
        if c["name"] == m.SIDECAR:
            assert mount and not mount.get("readOnly"), "the sidecar cannot write /var/run/credbroker"
        elif mount:
            assert mount["name"] == "credbroker-shared" and mount.get("readOnly") is True, \
                f"{c['name']}: /var/run/credbroker is not credbroker-shared read-only"


def check_injected_annotation(docs, clouds):
    value = m.pod_meta(docs).get("annotations", {}).get("credbroker.io/injected", "")
    assert set(value.split(",")) == set(clouds), f"credbroker.io/injected is {value!r}, not {sorted(clouds)}"


INJECT_CHECKS = [check_sidecar_first, check_one_token_per_cloud, check_tokens_in_sidecar_only,
                 check_shared_volume, check_injected_annotation]


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    s.require_binaries()
    fake = s.conformance.start_fakecloud(tmp_path_factory.mktemp("fakecloud"))
    s.seed_service_accounts(fake.desc, json.loads((s.FIXTURES / "serviceaccounts.json").read_text()))
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return s.TestCA.create(tmp_path_factory.mktemp("ca"), "webhook")


def serving_volume(ca: s.TestCA, dir: Path) -> s.SecretVolume:
    crt, key = ca.issue(dir / "issued", "credbroker-injector")
    vol = s.SecretVolume(dir / "tls")
    vol.write({"tls.crt": crt, "tls.key": key, "ca.crt": ca.cert.read_bytes()})
    return vol


@pytest.fixture(scope="module")
def hook(fake, ca, tmp_path_factory):
    work = tmp_path_factory.mktemp("webhook")
    vol = serving_volume(ca, work)
    hook = s.start_webhook(work, fake.desc, vol.path("tls.crt"), vol.path("tls.key"), ca.cert,
                           api_timeout_ms=API_TIMEOUT_MS)
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def admitted(hook):
    """fixture name -> (review sent, response, patched pod), each fixture admitted once."""
    cache = {}

    def get(name):
        if name not in cache:
            review = s.fixture(name)
            response = hook.review(review)["response"]
            cache[name] = (review, response, s.apply(review["request"]["object"], response))
        return cache[name]
    return get


def env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


# --- 1. the fixtures ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLOUDS_OF)
def test_fixture_is_injected_and_valid(name, admitted):
    review, response, pod = admitted(name)
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True, response
    assert response["patchType"] == "JSONPatch" and isinstance(response["patch"], str)
    for version in K8S_VERSIONS:
        validate_strict(pod, version)
    docs = s.as_documents(pod)
    for version in K8S_VERSIONS:
        validate_strict(docs[0], version)
    for check in INJECTED_POD_CHECKS + INJECT_CHECKS:
        check(docs, CLOUDS_OF[name])


@pytest.mark.parametrize("name", CLOUDS_OF)
def test_app_env_is_what_credbroker_env_prints(name, admitted, tmp_path):
    review, _, pod = admitted(name)
    docs, clouds = s.as_documents(pod), CLOUDS_OF[name]
    proc = m.credbroker_env(m.sidecar_env_for_local_run(docs, clouds, tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr
    exports, forbidden = m.parse_env_output(proc.stdout)
    assert set(exports) == clouds, f"credbroker env enabled {sorted(exports)} for the sidecar's env"
    expected = {k: v for cloud in exports.values() for k, v in cloud.items()}
    if "aws" in clouds:
        assert "AWS_ROLE_ARN" in forbidden, forbidden
    before = {c["name"]: c for c in review["request"]["object"]["spec"].get("initContainers", [])
              + review["request"]["object"]["spec"]["containers"]}
    for c in containers(docs):
        if c["name"] == m.SIDECAR:
            continue
        if c["name"] in SKIPPED.get(name, ()):
            assert c == before[c["name"]], f"{c['name']} is in skip-containers but was changed"
            continue
        env = m.resolve_env(docs, c)
        mine = {k: v for k, v in env.items() if m.app_cloud(k)}
        assert mine == expected, f"{c['name']}: env differs from `credbroker env`"
        assert not forbidden & env.keys(), f"{c['name']} keeps {forbidden & env.keys()}"
        # What the pod set itself and no cloud owns is kept as it was.
        own = [e for e in before[c["name"]].get("env", []) if e["name"] not in forbidden]
        assert [e for e in c["env"] if e["name"] in {o["name"] for o in own}] == own


def test_bypass_variables_in_the_input_pod_are_removed(admitted):
    """The fixtures carry what other webhooks or copied manifests put there."""
    for name, gone in [("aws", {"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"}),
                       ("azure", {"AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID"}),
                       ("gcp", {"GOOGLE_APPLICATION_CREDENTIALS"}),
                       ("all-clouds", {"AWS_ROLE_ARN", "AZURE_CLIENT_ID", "GOOGLE_APPLICATION_CREDENTIALS"})]:
        review, _, pod = admitted(name)
        assert gone <= env_names(review["request"]["object"]["spec"]["containers"][0]), name
        app = m.app(s.as_documents(pod))
        assert not gone & env_names(app), f"{name}: the app keeps {gone & env_names(app)}"
    # A skipped container keeps them.
    _, _, pod = admitted("skip-containers")
    logs = next(c for c in pod["spec"]["containers"] if c["name"] == "logs")
    assert "AWS_ROLE_ARN" in env_names(logs)


@pytest.mark.parametrize("name", CLOUDS_OF)
def test_admitting_the_injected_pod_again_changes_nothing(name, admitted, hook):
    review, _, pod = admitted(name)
    again = copy.deepcopy(review)
    again["request"]["uid"] = str(uuid.uuid4())
    again["request"]["object"] = pod
    response = hook.review(again)["response"]
    assert response["uid"] == again["request"]["uid"] and response["allowed"] is True, response
    assert "patch" not in response and "patchType" not in response, s.patch_of(response).patch


def test_already_injected_fixture_gets_no_patch(admitted, hook):
    """fixtures/admission/already-injected.json: what all-clouds.json became at an earlier admission."""
    path = s.FIXTURES / "already-injected.json"
    if os.environ.get("CREDBROKER_REGENERATE_FIXTURES"):
        review, _, pod = admitted("all-clouds")
        out = copy.deepcopy(review)
        out["request"]["uid"] = "a6c2f0d4-1b1e-4d0a-9d3e-000000000013"
        out["request"]["object"] = pod
        path.write_text(json.dumps(out, indent=2) + "\n")
        pytest.fail(f"{path} regenerated: review and commit it")
    review = s.fixture("already-injected")
    response = hook.review(review)["response"]
    assert response["uid"] == review["request"]["uid"] and response["allowed"] is True
    assert "patch" not in response and "patchType" not in response, \
        f"already-injected.json got a patch: {s.patch_of(response).patch} (if the mutation changed on purpose, " \
        "regenerate it: CREDBROKER_REGENERATE_FIXTURES=1 pytest tests/deploy/test_inject.py -k already_injected)"


def test_unlabelled_pod_is_left_alone(hook):
    review = s.fixture("aws")
    del review["request"]["object"]["metadata"]["labels"]["credbroker.io/inject"]
    response = hook.review(review)["response"]
    assert response["allowed"] is True and "patch" not in response, response


def test_automounted_cluster_token_stays_the_apps_and_ours_the_sidecars(admitted):
    """A pod that keeps automountServiceAccountToken (the ServiceAccount admission plugin has
    added kube-api-access-*): the injector's OCI token goes to the sidecar at the same path, the
    application keeps its own volume; the result is valid."""
    _, response, pod = admitted("automount")
    assert response["allowed"] is True
    for version in K8S_VERSIONS:
        validate_strict(pod, version)
    docs = s.as_documents(pod)
    side, app = m.sidecar(docs), m.app(docs)
    path = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert m.mounts_by_path(side)[path]["name"] == "credbroker-oci-token"
    assert m.mounts_by_path(app)[path]["name"] == "kube-api-access-7xk2q"
    for check in (check_sidecar_first, check_shared_volume):
        check(docs, {"oci"})
    ours = [n for n, _ in token_projections(docs) if n.startswith("credbroker-")]
    assert ours == ["credbroker-oci-token"]
    assert not any(mt["name"] in ours for c in containers(docs) if c["name"] != m.SIDECAR
                   for mt in c.get("volumeMounts", []))


@pytest.mark.parametrize("name,account,says", [
    ("no-identity", "team/no-identity", "annotate it with one of"),
    ("missing-serviceaccount", "team/ghost", "create the ServiceAccount"),
])
def test_refusal_names_the_serviceaccount_and_what_to_do(name, account, says, admitted):
    review, response, pod = admitted(name)
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is False and "patch" not in response, response
    message = response["status"]["message"]
    assert account in message and says in message, message
    assert pod == review["request"]["object"]


def test_non_pod_object_is_refused_with_its_uid(admitted):
    review, response, _ = admitted("not-a-pod")
    assert response["allowed"] is False and "patch" not in response
    assert "Pods only" in response["status"]["message"], response
    # The API server rejects a review whose uid is not the request's ("expected response.uid=...")
    # and reports that instead of the message.
    assert response["uid"] == review["request"]["uid"], response


def test_garbage_gets_an_error_review(hook):
    status, raw = hook.post((s.FIXTURES / "garbage.bin").read_bytes())
    assert status == 200
    answer = json.loads(raw)
    assert answer["kind"] == "AdmissionReview" and answer["response"]["allowed"] is False
    assert "AdmissionReview" in answer["response"]["status"]["message"], answer


def test_oversized_body_is_refused_without_hanging(hook):
    review = s.fixture("oversized")
    review["request"]["object"]["metadata"]["annotations"]["example.com/padding"] = "x" * (4 * 2**20 + 1)
    body = json.dumps(review).encode()
    assert len(body) > 4 * 2**20
    started = time.monotonic()
    status, raw = hook.post(body)
    assert time.monotonic() - started < s.WEBHOOK_TIMEOUT
    assert status == 200, (status, raw[:300])
    answer = json.loads(raw)["response"]
    assert answer["allowed"] is False and "patch" not in answer, answer
    assert "larger than 4194304 bytes" in answer["status"]["message"], answer
    # Still serving.
    assert hook.review(s.fixture("aws"))["response"]["allowed"] is True


def test_wrong_path_and_method(hook):
    assert hook.post(b"{}", path="/")[0] == 404


# --- the checks fail on broken pods -------------------------------------------------------------

def env_entry(container, name):
    return next(e for e in container["env"] if e["name"] == name)


def sidecar_second(d):
    inits = m.pod_spec(d)["initContainers"]
    inits.insert(1, inits.pop(0))


def token_volume(d, name):
    return m.volume(d, name)["projected"]["sources"][0]["serviceAccountToken"]


def second_aws_token(d):
    extra = copy.deepcopy(m.volume(d, "credbroker-aws-token"))
    extra["name"] = "credbroker-aws-token-2"
    m.pod_spec(d)["volumes"].append(extra)
    m.sidecar(d)["volumeMounts"].append({"name": extra["name"], "mountPath": "/var/run/aws2", "readOnly": True})


def literal_identity_header(d):
    entry = env_entry(m.app(d), "IDENTITY_HEADER")
    del entry["valueFrom"]
    entry["value"] = "fixed"


def drop_gcp_annotation(d):
    del m.pod_meta(d)["annotations"]["credbroker.io/gcp-credential-configuration"]


BREAKAGES = {
    "sidecar second": (check_sidecar_first, sidecar_second),
    "sidecar not native": (check_sidecar_first, lambda d: m.sidecar(d).pop("restartPolicy")),
    "startup probe elsewhere": (check_sidecar_first,
                                lambda d: m.sidecar(d)["startupProbe"]["httpGet"].update(path="/healthz")),
    "two AWS tokens": (check_one_token_per_cloud, second_aws_token),
    "azure audience": (check_one_token_per_cloud,
                       lambda d: token_volume(d, "credbroker-azure-token").update(audience="api://other")),
    "oci token with audience": (check_one_token_per_cloud,
                                lambda d: token_volume(d, "credbroker-oci-token").update(audience="oci")),
    "token in app": (check_tokens_in_sidecar_only, lambda d: m.app(d)["volumeMounts"].append(
        {"name": "credbroker-gcp-token", "mountPath": "/var/run/secrets/sts.googleapis.com/serviceaccount"})),
    "shared dir on disk": (check_shared_volume, lambda d: m.volume(d, "credbroker-shared")["emptyDir"].pop("medium")),
    "app writes shared dir": (check_shared_volume,
                              lambda d: m.mounts_by_path(m.app(d))["/var/run/credbroker"].pop("readOnly")),
    "injected annotation short": (check_injected_annotation,
                                  lambda d: m.pod_meta(d)["annotations"].update({"credbroker.io/injected": "aws"})),
    # The overlays' checks, on the injected pod.
    "gcp configuration annotation missing": (m.check_token_audiences, drop_gcp_annotation),
    "gcp token audience": (m.check_token_audiences,
                           lambda d: token_volume(d, "credbroker-gcp-token").update(audience="//iam.googleapis.com/x")),
    "app keeps AWS_ROLE_ARN": (m.check_app_env, lambda d: m.app(d)["env"].append(
        {"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::123456789012:role/x"})),
    "identity header literal": (m.check_app_env, literal_identity_header),
    "auth token file elsewhere": (m.check_shared_files, lambda d: env_entry(
        m.app(d), "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").update(value="/tmp/token")),
    "sidecar lacks AZURE_CLIENT_ID": (m.check_sidecar_enables, lambda d: m.sidecar(d)["env"].remove(
        env_entry(m.sidecar(d), "AZURE_CLIENT_ID"))),
    "no memory limit": (m.check_resources, lambda d: m.sidecar(d)["resources"]["limits"].pop("memory")),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_check_rejects_broken_injected_pod(breakage, admitted):
    check, mutate = BREAKAGES[breakage]
    docs = s.as_documents(admitted("all-clouds")[2])
    check(copy.deepcopy(docs), set(m.CLOUDS))  # passes before the mistake
    mutate(docs)
    with pytest.raises(AssertionError):
        check(docs, set(m.CLOUDS))


def test_every_inject_check_has_a_breakage():
    covered = {check for check, _ in BREAKAGES.values()}
    assert set(INJECT_CHECKS) <= covered, f"no breakage test for {set(INJECT_CHECKS) - covered}"


def test_schema_rejects_a_broken_patched_pod(admitted):
    pod = copy.deepcopy(admitted("all-clouds")[2])
    pod["spec"]["initContainers"][0]["restartPolicy"] = "Sometimes"
    pod["spec"]["volumes"][-1]["projected"]["sources"][0]["serviceAccountToken"]["expirySeconds"] = 1
    with pytest.raises(AssertionError, match="invalid"):
        validate_strict(pod, K8S_VERSIONS[-1])


# --- 2. the ServiceAccount lookup ---------------------------------------------------------------

def env_value(container, name):
    entry = next((e for e in container.get("env", []) if e["name"] == name), None)
    return None if entry is None else entry.get("value", entry.get("valueFrom"))


@pytest.mark.parametrize("name", ["aws", "azure", "gcp", "oci", "all-clouds"])
def test_kubectl_shows_the_annotations_the_webhook_acted_on(name, admitted, fake, tmp_path):
    review, _, pod = admitted(name)
    account = review["request"]["object"]["spec"]["serviceAccountName"]
    got = json.loads(s.kubectl(fake.desc, tmp_path, "get", "serviceaccount", account, "-n", NAMESPACE,
                               "-o", "json").stdout)
    ann = got["metadata"].get("annotations", {})
    docs = s.as_documents(pod)
    side = m.sidecar(docs)
    tokens = {n: t for n, t in token_projections(docs)}
    enabled = set()
    if "eks.amazonaws.com/role-arn" in ann:
        enabled.add("aws")
        assert env_value(side, "AWS_ROLE_ARN") == ann["eks.amazonaws.com/role-arn"]
        assert tokens["credbroker-aws-token"]["expirationSeconds"] == \
            int(ann.get("eks.amazonaws.com/token-expiration", 86400))
        regional = ann.get("eks.amazonaws.com/sts-regional-endpoints", "true") == "true"
        assert env_value(side, "AWS_STS_REGIONAL_ENDPOINTS") == ("regional" if regional else "legacy")
    if "azure.workload.identity/client-id" in ann:
        enabled.add("azure")
        assert env_value(side, "AZURE_CLIENT_ID") == ann["azure.workload.identity/client-id"]
        flag = s.FLAGS[s.FLAGS.index("--azure-tenant-id") + 1]
        assert env_value(side, "AZURE_TENANT_ID") == ann.get("azure.workload.identity/tenant-id", flag)
        assert tokens["credbroker-azure-token"]["expirationSeconds"] == \
            int(ann.get("azure.workload.identity/service-account-token-expiration", 3600))
    if "iam.gke.io/gcp-service-account" in ann:
        enabled.add("gcp")
        config = m.gcp_credential_configuration(docs)
        assert config["service_account_impersonation_url"].endswith(
            f"/serviceAccounts/{ann['iam.gke.io/gcp-service-account']}:generateAccessToken")
    if ann.get("credbroker.io/oci") == "true":
        enabled.add("oci")
    assert enabled == CLOUDS_OF[name]
    check_injected_annotation(docs, enabled)


def test_serviceaccount_created_just_before_the_pod_is_seen(hook, fake, tmp_path):
    """No cache to miss: the pod is admitted right after `kubectl create` and `annotate`, and an
    annotation changed afterwards is what the next pod gets."""
    account = f"racer-{uuid.uuid4().hex[:8]}"
    review = s.fixture("aws")
    review["request"]["object"]["spec"]["serviceAccountName"] = account
    review["request"]["object"]["spec"]["serviceAccount"] = account
    refused = hook.review(s.with_uid(review, str(uuid.uuid4())))["response"]
    assert refused["allowed"] is False and f"{NAMESPACE}/{account} does not exist" in refused["status"]["message"]
    role = "arn:aws:iam::123456789012:role/racer"
    s.kubectl(fake.desc, tmp_path, "create", "serviceaccount", account, "-n", NAMESPACE)
    s.kubectl(fake.desc, tmp_path, "annotate", "serviceaccount", account, "-n", NAMESPACE,
              f"eks.amazonaws.com/role-arn={role}")
    response = hook.review(s.with_uid(review, str(uuid.uuid4())))["response"]
    assert response["allowed"] is True, response
    pod = s.apply(review["request"]["object"], response)
    assert env_value(pod["spec"]["initContainers"][0], "AWS_ROLE_ARN") == role
    s.kubectl(fake.desc, tmp_path, "annotate", "--overwrite", "serviceaccount", account, "-n", NAMESPACE,
              f"eks.amazonaws.com/role-arn={role}-2")
    response = hook.review(s.with_uid(review, str(uuid.uuid4())))["response"]
    pod = s.apply(review["request"]["object"], response)
    assert env_value(pod["spec"]["initContainers"][0], "AWS_ROLE_ARN") == f"{role}-2"


@pytest.mark.parametrize("mode,says", [
    ("hang", "did not answer within"),
    ("refuse", "cannot read ServiceAccount"),
])
def test_api_server_down_is_a_prompt_refusal(mode, says, hook, fake):
    status, body = s.kube_admin(fake.desc, "POST", "/down", {"mode": mode})
    assert status in (200, 204), body
    try:
        for _ in range(2):  # a fresh connection and whatever the client kept
            review = s.with_uid(s.fixture("aws"), str(uuid.uuid4()))
            started = time.monotonic()
            response = hook.review(review)["response"]
            took = time.monotonic() - started
            assert took < API_TIMEOUT_MS / 1000 + 0.75, f"{mode}: answered after {took:.2f}s"
            assert response["uid"] == review["request"]["uid"]
            assert response["allowed"] is False, response
            message = response["status"]["message"]
            assert says in message and f"{NAMESPACE}/aws-only" in message, message
    finally:
        status, body = s.kube_admin(fake.desc, "DELETE", "/down")
        assert status in (200, 204), body
    # Back: the next pod is injected.
    s.wait_for(lambda: hook.review(s.with_uid(s.fixture("aws"), str(uuid.uuid4())))["response"]["allowed"],
               timeout=10, what="injection after the API server is back")


# --- 3. TLS -------------------------------------------------------------------------------------

def test_serving_certificate_is_replaced_without_a_restart(fake, ca, tmp_path):
    vol = serving_volume(ca, tmp_path / "first")
    hook = s.start_webhook(tmp_path / "webhook", fake.desc, vol.path("tls.crt"), vol.path("tls.key"), ca.cert)
    try:
        host, port = hook.host_port
        first = s.der(vol.path("tls.crt").read_bytes())
        assert s.presented_certificate(host, port, ca.cert) == first
        assert hook.review(s.fixture("aws"))["response"]["allowed"] is True

        # A half-done rotation (a key that does not fit) keeps the certificate in service.
        other = s.TestCA.create(tmp_path / "other-ca", "rotated")
        crt, key = other.issue(tmp_path / "other", "credbroker-injector")
        _, stray_key = other.issue(tmp_path / "stray", "stray")
        vol.write({"tls.crt": crt, "tls.key": stray_key, "ca.crt": other.cert.read_bytes()})
        time.sleep(0.5)
        assert s.presented_certificate(host, port, ca.cert) == first

        # The Secret's new pair, from another CA, swapped in as kubelet swaps ..data.
        vol.write({"tls.crt": crt, "tls.key": key, "ca.crt": other.cert.read_bytes()})
        s.wait_for(lambda: s.presented_certificate(host, port) == s.der(crt), timeout=5,
                   what="the new certificate on a new connection")
        assert s.presented_certificate(host, port, other.cert) == s.der(crt)  # verifies against the new CA
        hook.ca = other.cert
        assert hook.review(s.fixture("aws"))["response"]["allowed"] is True
        hook.ca = ca.cert
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            hook.review(s.fixture("aws"))
        assert hook.proc.poll() is None, "the webhook restarted"
        assert "serving certificate reloaded" in hook.logs()
    finally:
        hook.stop()


# --- 5. the injector Deployment's settings ------------------------------------------------------

def test_every_setting_in_the_injector_deployment_is_an_inject_flag(fake, ca, tmp_path):
    deployment = m.load_yaml_file(m.ROOT / "deploy" / "injector" / "base" / "deployment.yaml")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["inject"]
    set_here = {e["name"]: e.get("value") for e in container["env"] if e["name"].startswith("CREDBROKER_")}
    mentioned = set(re.findall(r"CREDBROKER_[A-Z0-9_]+", (m.ROOT / "deploy" / "injector" / "base" /
                                                          "deployment.yaml").read_text()))
    assert set(set_here) <= mentioned and len(set_here) >= 5, set_here
    help_text = subprocess.run([str(m.CREDBROKER), "inject", "--help"], capture_output=True, text=True,
                               check=True, timeout=30).stdout
    known = set(re.findall(r"\[env: (CREDBROKER_[A-Z0-9_]+)=", help_text))
    assert not mentioned - known, f"deployment.yaml names settings `credbroker inject` lacks: {mentioned - known}"

    # And the binary starts from exactly those variables (paths and ports made local).
    vol = serving_volume(ca, tmp_path)
    local = {"CREDBROKER_LISTEN": "127.0.0.1:0", "CREDBROKER_OPS_LISTEN": "127.0.0.1:0",
             "CREDBROKER_TLS_CERT_FILE": str(vol.path("tls.crt")),
             "CREDBROKER_TLS_KEY_FILE": str(vol.path("tls.key"))}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KUBECONFIG": fake.desc["kube"]["kubeconfig"],
           **{k: local.get(k, v) for k, v in set_here.items()},
           "CREDBROKER_ADDR_FILE": str(tmp_path / "addrs")}
    proc = subprocess.Popen([str(m.CREDBROKER), *container["args"]], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        s.wait_for(lambda: (tmp_path / "addrs").exists() or proc.poll() is not None, what="addr file")
        assert proc.poll() is None, proc.stdout.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=10)[0].decode()
    records = [json.loads(line) for line in out.splitlines()]  # CREDBROKER_LOG_FORMAT=json took effect
    listening = next(r for r in records if r["message"] == "admission webhook listening")
    assert listening["image"] == set_here["CREDBROKER_IMAGE"], listening


# --- 4. end to end: the injected pod works --------------------------------------------------------

POD_UID = "5f0c2a7e-3b1d-4e8a-9c6f-7d2e1b0a9c84"  # what the API server would assign
TOKENS = "/var/run/fakecloud-tokens"  # fakecloud's token directories, in the pod's namespace
IMAGE_BIN = "/var/run/image/usr/local/bin"  # the image's credbroker, in the pod's namespace

AWS_SDK = """
import boto3, json
creds = boto3.Session().get_credentials()
f = creds.get_frozen_credentials()
print(json.dumps({"method": creds.method, "access_key": f.access_key, "secret_key": f.secret_key, "token": f.token}))
"""

GCP_SDK = """
import json
import google.auth, google.auth.transport.requests as tr
creds, project = google.auth.default()
creds.refresh(tr.Request())
print(json.dumps({"type": type(creds).__module__ + "." + type(creds).__name__, "project": project,
                  "token": creds.token, "email": creds.service_account_email}))
"""

AZURE_SDK = """
import json
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
mi = ManagedIdentityCredential()
token = mi.get_token("https://storage.azure.com/.default")
default = DefaultAzureCredential(exclude_cli_credential=True, exclude_powershell_credential=True,
                                 exclude_developer_cli_credential=True, exclude_visual_studio_code_credential=True)
via_default = default.get_token("https://vault.azure.net/.default")
print(json.dumps({"source": type(mi._credential).__name__, "token": token.token,
                  "default_token": via_default.token}))
"""

OCI_SDK = """
import json, oci, requests
endpoint = {endpoint!r}
signer = oci.auth.signers.get_resource_principals_signer()
client = oci.object_storage.ObjectStorageClient({{}}, signer=signer, service_endpoint=endpoint)
namespace = client.get_namespace().data
raw = requests.get(endpoint + "/20160918/whoami", auth=signer, timeout=10)
print(json.dumps({{"namespace": namespace, "tenancy": signer.tenancy_id, "region": signer.region,
                  "raw_status": raw.status_code, "raw": raw.json()}}))
"""


class RunningPod:
    """fakecloud, the webhook, and the admitted pod's sidecar in one PodSandbox."""

    def __init__(self, root: Path, ca: s.TestCA):
        self.root = root
        self.sandbox = s.PodSandbox(root / "sandbox")
        try:
            self.start(ca)
        except BaseException:
            self.sandbox.close()  # no process of a half-made pod outlives the test
            raise

    def start(self, ca: s.TestCA) -> None:
        root, sb = self.root, self.sandbox
        # fakecloud, inside the pod's network namespace (the sidecar reaches it on loopback).
        state, ready = root / "fakecloud", root / "fakecloud" / "ready.json"
        state.mkdir()
        fake = sb.popen([str(s.FAKECLOUD), "run", "--state-dir", str(state), "--ready-file", str(ready)],
                        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, state / "fakecloud.log")
        s.wait_for(lambda: ready.exists() or fake.poll() is not None, what="fakecloud ready file")
        assert fake.poll() is None, (state / "fakecloud.log").read_text()
        self.desc = json.loads(ready.read_text())
        # The webhook, with the cloud-wide flags pointing sidecars at fakecloud's upstreams.
        vol = serving_volume(ca, root / "certs")
        self.hook = s.start_webhook(root / "webhook", self.desc, vol.path("tls.crt"), vol.path("tls.key"),
                                    ca.cert, flags=s.webhook_flags(self.desc), wrap=sb.wrap(mount=False))
        sb.procs.append(self.hook.proc)
        # The admission, as the API server makes it (HTTPS verified against the CA bundle).
        self.review = s.fixture("e2e")
        status, body = sb.http("POST", f"https://{self.hook.webhook_addr}/mutate",
                               headers={"Content-Type": "application/json"},
                               data=json.dumps(self.review).encode(), cafile=str(ca.cert))
        assert status == 200, body
        self.response = json.loads(body)["response"]
        assert self.response["allowed"] is True, self.response
        self.pod = s.apply(self.review["request"]["object"], self.response)
        spec = self.pod["spec"]
        self.sidecar = spec["initContainers"][0]
        self.app = next(c for c in spec["containers"] if c["name"] == "app")
        # kubelet: volumes, mounts, environment. fakecloud's token directories are where the
        # pod's projected tokens link to.
        sb.bind(Path(self.desc["tokens"]["aws"]).parent.parent, TOKENS, read_only=True)
        sources = s.volume_sources(self.pod, self.desc, POD_UID, root / "volumes", TOKENS)
        self.sidecar_only = self.mount(sources)
        oci = self.desc["oci"]
        self.service = {"KUBERNETES_SERVICE_HOST": oci["proxymux_host"],
                        "KUBERNETES_SERVICE_PORT": "443",
                        "KUBERNETES_SERVICE_PORT_PROXYMUX": str(oci["proxymux_port"])}
        # The sidecar: the image's entrypoint (credbroker) with the container's args and env, as
        # its user (the image's 65532, no capabilities, no privilege escalation).
        assert "command" not in self.sidecar
        sb.sh(f"mkdir -p {IMAGE_BIN} && touch {IMAGE_BIN}/credbroker && "
              f"mount --bind {shlex.quote(str(m.CREDBROKER))} {IMAGE_BIN}/credbroker")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/nonroot",
               **s.container_env(self.pod, self.sidecar, POD_UID, self.service)}
        user = s.run_as(self.pod, self.sidecar, image_user=65532)
        self.sidecar_proc = sb.popen([*s.setpriv(*user), f"{IMAGE_BIN}/credbroker", *self.sidecar["args"]],
                                     env, root / "sidecar.log")
        probe = self.sidecar["startupProbe"]["httpGet"]
        url = f"http://127.0.0.1:{m.port_number(self.sidecar, probe['port'])}{probe['path']}"
        s.wait_for(lambda: self.sidecar_proc.poll() is not None or sb.http("GET", url, timeout=3)[0] == 200,
                   timeout=60, interval=0.2, what="the sidecar's startupProbe")
        assert self.sidecar_proc.poll() is None, self.sidecar_log()

    def mount(self, sources: dict[str, Path]) -> list[str]:
        """Bind-mounts every volume the sidecar or the app mounts; returns the sidecar's own
        mount paths (hidden from the app again in its own mount namespace)."""
        wanted = {}
        for c in (self.sidecar, self.app):
            for mt in c.get("volumeMounts", []):
                prev = wanted.setdefault(mt["mountPath"], mt["name"])
                assert prev == mt["name"], f"{mt['mountPath']}: two volumes at one path"
        for path, name in sorted(wanted.items()):
            self.sandbox.bind(sources[name], path, read_only=False)
        app_paths = {mt["mountPath"] for mt in self.app.get("volumeMounts", [])}
        return sorted(set(wanted) - app_paths)

    def sidecar_log(self) -> str:
        return (self.root / "sidecar.log").read_text(errors="replace")

    def app_env(self) -> dict[str, str]:
        return s.container_env(self.pod, self.app, POD_UID, self.service)

    def run_in_app(self, code: str, *args: str) -> subprocess.Popen:
        """Python `code` with ONLY the application container's environment (and PATH, HOME), as
        the application's user, in the app's own mount namespace: the sidecar's volumes
        unmounted, its own read-only, the Python interpreter reachable by that user."""
        q = shlex.quote
        uid, gid, groups = s.run_as(self.pod, self.app)
        home = f"/var/run/app-home/{uuid.uuid4().hex}"
        script = " && ".join(
            [f"umount {q(p)}" for p in reversed(self.sidecar_only)]
            + [f"mount -o remount,bind,ro {q(mt['mountPath'])}" for mt in self.app.get("volumeMounts", [])
               if mt.get("readOnly")]
            + s.expose_script([Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()],
                              f"/var/run/exposed/{uuid.uuid4().hex}")
            + [f"mkdir -p {home}", f"chown {uid}:{gid} {home}", 'exec "$@"'])
        env = s.conformance.app_subprocess_env(self.app_env(), Path(home))
        cmd = [*self.sandbox.wrap(), "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
               *s.setpriv(uid, gid, groups), sys.executable, "-c", code, *args]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def log(self, cloud: str) -> list[dict]:
        status, body = self.sandbox.http("GET", self.desc[cloud]["admin"] + "/log")
        assert status == 200, body
        return json.loads(body)

    def close(self) -> None:
        self.sandbox.close()


@pytest.fixture(scope="module")
def running_pod(ca, tmp_path_factory):
    pod = RunningPod(tmp_path_factory.mktemp("e2e"), ca)
    yield pod
    pod.close()


@pytest.fixture(scope="module")
def sdk_results(running_pod):
    """Each cloud's SDK, run at once, in the application container."""
    programs = {"aws": AWS_SDK, "gcp": GCP_SDK, "azure": AZURE_SDK,
                "oci": OCI_SDK.format(endpoint=running_pod.desc["oci_api"]["endpoint"])}
    procs = {cloud: running_pod.run_in_app(code) for cloud, code in programs.items()}
    results = {}
    try:
        for cloud, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            results[cloud] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def sdk_result(sdk_results, cloud):
    code, out, err = sdk_results[cloud]
    assert code == 0, f"{cloud} SDK exited {code}\nstdout: {out}\nstderr: {err}"
    return json.loads(out.strip().splitlines()[-1])


APP_VIEW = """
import json, os, sys
paths = sys.argv[1:]
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "visible": {p: sorted(os.listdir(p)) for p in paths if os.path.isdir(p) and os.listdir(p)},
                  "shared": sorted(os.listdir("/var/run/credbroker")),
                  "shared_writable": os.access("/var/run/credbroker", os.W_OK)}))
"""


def test_e2e_pod_is_the_injected_one(running_pod):
    pod = running_pod.pod
    for version in K8S_VERSIONS:
        validate_strict(pod, version)
    for check in INJECTED_POD_CHECKS + INJECT_CHECKS:
        check(s.as_documents(pod), set(m.CLOUDS))
    env = running_pod.app_env()
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == env["IDENTITY_HEADER"] == POD_UID
    # The application's view: none of the sidecar's token or configuration files, the shared
    # files read-only.
    assert running_pod.sidecar_only, "the sidecar mounts nothing of its own"
    proc = running_pod.run_in_app(APP_VIEW, *running_pod.sidecar_only)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    view = json.loads(out)
    assert view == {"uid": 1001, "gid": 1001, "groups": [65532], "visible": {},
                    "shared": ["aws-auth-token", "oci"], "shared_writable": False}, view
    # The sidecar runs as the image's user, without capabilities or privilege escalation.
    status = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{running_pod.sidecar_proc.pid}/status").read_text().splitlines() if ":\t" in line)
    assert status["Uid"].split()[0] == status["Gid"].split()[0] == "65532", status
    assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1", status


def test_e2e_aws_boto3_gets_what_sts_issued(running_pod, sdk_results):
    got = sdk_result(sdk_results, "aws")
    assert got["method"] == "container-role"
    issued = [r for r in running_pod.log("aws") if r.get("outcome") == "issued"]
    assert issued, "the fake STS issued nothing"
    creds = issued[-1]["credentials"]
    assert (got["access_key"], got["secret_key"], got["token"]) == \
        (creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    # The ServiceAccount's role, the pod's name as the session (what CloudTrail shows).
    assert issued[-1]["role_arn"] == running_pod.desc["aws"]["role_arn"]
    assert issued[-1]["session_name"] == running_pod.pod["metadata"]["name"]


def test_e2e_gcp_google_auth_gets_what_iam_issued(running_pod, sdk_results):
    got = sdk_result(sdk_results, "gcp")
    gcp = running_pod.desc["gcp"]
    assert got["type"] == "google.auth.compute_engine.credentials.Credentials"
    assert got["project"] == gcp["project_id"] and got["email"] == gcp["service_account"]
    issued = {r["token"]: r for r in running_pod.log("gcp")
              if r.get("outcome") == "issued" and r.get("api") == "generateAccessToken"}
    assert got["token"] in issued, "google-auth's token is not one IAM Credentials issued"
    assert issued[got["token"]]["service_account"] == gcp["service_account"]


def test_e2e_azure_identity_gets_what_entra_issued(running_pod, sdk_results):
    got = sdk_result(sdk_results, "azure")
    # App Service: the X-IDENTITY-HEADER the app sends (its IDENTITY_HEADER, the pod's uid) is the
    # sidecar's CREDBROKER_AZURE_IDENTITY_HEADER (the same downward-API value).
    assert got["source"] == "AppServiceCredential", got
    issued = {r["access_token"]: r for r in running_pod.log("azure") if r.get("outcome") == "issued"}
    assert got["token"] in issued and got["default_token"] in issued, (got, list(issued.values()))
    assert issued[got["token"]]["scope"].startswith("https://storage.azure.com")
    azure = running_pod.desc["azure"]
    assert {(r["client_id"], r["tenant"]) for r in issued.values()} == {(azure["client_id"], azure["tenant_id"])}
    assert issued[got["default_token"]]["scope"].startswith("https://vault.azure.net")


def test_e2e_oci_sdk_signs_with_what_proxymux_issued(running_pod, sdk_results):
    got = sdk_result(sdk_results, "oci")
    oci = running_pod.desc["oci"]
    assert got["namespace"] == "credbrokerdemo" and got["tenancy"] == oci["tenancy"]
    assert got["region"] == oci["region"]
    assert got["raw_status"] == 200 and got["raw"]["authenticated"] is True
    issued = {r["rpst_sha256"] for r in running_pod.log("oci") if r.get("outcome") == "issued"}
    calls = running_pod.log("oci_api")[-2:]
    assert [r["outcome"] for r in calls] == ["ok", "ok"], calls
    assert {r["rpst_sha256"] for r in calls} <= issued
