"""deploy/injector: every kustomization builds; core objects validate strictly against the Kubernetes
1.29 and 1.33 schemas, cert-manager objects against cert-manager's v1 schemas; the webhook invariants
hold; gen-certs.sh makes a certificate that verifies for the Service's DNS name.

The breakage tests at the end apply one deliberate mistake each and show that the corresponding
check rejects it.
"""

from __future__ import annotations

import base64
import copy
import subprocess

import pytest
import yaml

import injector as inj
import manifests as m
from injector import INJECTOR_DIR
from test_manifests import K8S_VERSIONS, validate_strict

SERVICE_DNS = "credbroker-injector.credbroker-system.svc"
GEN_CERTS = INJECTOR_DIR / "gen-certs.sh"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The output directory of a real gen-certs.sh run."""
    out = tmp_path_factory.mktemp("injector-certs")
    proc = subprocess.run([str(GEN_CERTS), str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"gen-certs.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def builds(generated):
    return {
        "base": INJECTOR_DIR / "base",
        "cert-manager": INJECTOR_DIR / "overlays" / "cert-manager",
        "gen-certs": generated,
    }


BUILDS = ["base", "cert-manager", "gen-certs"]


def build(name, generated):
    return m.build(builds(generated)[name])


def validate(doc, version):
    if inj.is_crd_kind(doc):
        inj.validate_crd(doc)
    else:
        validate_strict(doc, version)


@pytest.mark.parametrize("name", BUILDS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_build_validates_strictly(name, version, generated):
    docs = build(name, generated)
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                     "Service", "PodDisruptionBudget", "MutatingWebhookConfiguration"}, kinds
    for doc in docs:
        validate(doc, version)


def test_cert_manager_overlay_has_its_objects(generated):
    docs = build("cert-manager", generated)
    crds = [d for d in docs if inj.is_crd_kind(d)]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in crds) == [
        ("Certificate", "credbroker-injector-ca"), ("Certificate", "credbroker-injector-serving"),
        ("Issuer", "credbroker-injector-ca"), ("Issuer", "credbroker-injector-selfsigned")]
    serving = m.one(docs, "Certificate", "credbroker-injector-serving")["spec"]
    assert SERVICE_DNS in serving["dnsNames"]
    assert serving["secretName"] == "credbroker-injector-tls"
    assert serving["issuerRef"]["name"] == "credbroker-injector-ca"
    ca_issuer = m.one(docs, "Issuer", "credbroker-injector-ca")["spec"]["ca"]
    ca_cert = m.one(docs, "Certificate", "credbroker-injector-ca")["spec"]
    assert ca_cert["isCA"] is True and ca_issuer["secretName"] == ca_cert["secretName"]
    hook = m.one(docs, "MutatingWebhookConfiguration")
    ns, name = hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    assert (ns, name) == ("credbroker-system", "credbroker-injector-serving")
    assert all("caBundle" not in w["clientConfig"] for w in hook["webhooks"]), "cainjector sets caBundle"


@pytest.mark.parametrize("mistake", ["unknown field", "no secretName", "bad usage", "bad algorithm"])
def test_cert_manager_schema_is_consulted(mistake, generated):
    docs = build("cert-manager", generated)
    cert = copy.deepcopy(m.one(docs, "Certificate", "credbroker-injector-serving"))
    inj.validate_crd(cert)
    if mistake == "unknown field":
        cert["spec"]["dnsName"] = ["typo"]
    elif mistake == "no secretName":
        del cert["spec"]["secretName"]
    elif mistake == "bad usage":
        cert["spec"]["usages"].append("serverAuth")
    else:
        cert["spec"]["privateKey"]["algorithm"] = "DSA"
    with pytest.raises(AssertionError, match="cert-manager"):
        inj.validate_crd(cert)
    issuer = copy.deepcopy(m.one(docs, "Issuer", "credbroker-injector-ca"))
    del issuer["spec"]["ca"]["secretName"]
    with pytest.raises(AssertionError, match="secretName"):
        inj.validate_crd(issuer)


def test_unknown_custom_kinds_are_not_skipped():
    with pytest.raises(AssertionError, match="no schema"):
        inj.validate_crd({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
                          "metadata": {"name": "x"}})


def openssl(*args):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


def test_gen_certs_certificate_verifies_for_the_service(generated):
    proc = openssl("verify", "-CAfile", str(generated / "ca.crt"), "-verify_hostname", SERVICE_DNS,
                   "-purpose", "sslserver", str(generated / "tls.crt"))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    wrong = openssl("verify", "-CAfile", str(generated / "ca.crt"), "-verify_hostname",
                    "credbroker-injector.default.svc", str(generated / "tls.crt"))
    assert wrong.returncode != 0, "the certificate verifies for a name it must not cover"
    key_mode = (generated / "tls.key").stat().st_mode & 0o777
    assert key_mode == 0o600, f"tls.key is mode {oct(key_mode)}"


def test_gen_certs_secret_and_ca_bundle_match_the_files(generated):
    docs = build("gen-certs", generated)
    secret = m.one(docs, "Secret", "credbroker-injector-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["namespace"] == "credbroker-system"
    for key, path in (("tls.crt", "tls.crt"), ("tls.key", "tls.key"), ("ca.crt", "ca.crt")):
        assert base64.b64decode(secret["data"][key]) == (generated / path).read_bytes(), key
    for hook in m.one(docs, "MutatingWebhookConfiguration")["webhooks"]:
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == (generated / "ca.crt").read_bytes()
    mounted = m.one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("secret", {}).get("secretName") == secret["metadata"]["name"] for v in mounted)


def test_gen_certs_rerun_keeps_the_ca(tmp_path):
    for _ in range(2):
        proc = subprocess.run([str(GEN_CERTS), str(tmp_path), "30"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        if _ == 0:
            first_ca, first_cert = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "tls.crt").read_bytes()
    assert (tmp_path / "ca.crt").read_bytes() == first_ca, "a renewal must keep the CA (and caBundle)"
    assert (tmp_path / "tls.crt").read_bytes() != first_cert, "a renewal must issue a new certificate"
    bad = subprocess.run([str(GEN_CERTS), str(tmp_path), "soon"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "DAYS must be a number" in bad.stderr


def test_every_yaml_file_is_used():
    used = set()
    for k in INJECTOR_DIR.rglob("kustomization.yaml"):
        used.add(k.resolve())
        spec = yaml.safe_load(k.read_text())
        for entry in spec.get("resources", []) + spec.get("components", []):
            used.add((k.parent / entry).resolve())
        for patch in spec.get("patches", []):
            if "path" in patch:
                used.add((k.parent / patch["path"]).resolve())
    files = {p.resolve() for p in INJECTOR_DIR.rglob("*") if p.suffix in (".yaml", ".yml", ".json")}
    stray = sorted(str(p.relative_to(INJECTOR_DIR)) for p in files - used)
    assert not stray, f"not referenced by any kustomization: {stray}"


@pytest.mark.parametrize("check", inj.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", BUILDS)
def test_invariant(name, check, generated):
    check(build(name, generated))


# --- each check fails on the mistake it guards against ------------------------------------------

def role(d):
    return m.one(d, "ClusterRole")


def hook(d):
    return inj.webhooks(d)[0]


def add_list_verb(d):
    role(d)["rules"][0]["verbs"].append("list")


def add_secrets(d):
    role(d)["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})


def add_role(d):
    d.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
              "metadata": {"name": "extra", "namespace": "credbroker-system"},
              "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})


def bind_other_account(d):
    m.one(d, "ClusterRoleBinding")["subjects"][0]["name"] = "default"


def drop_spread(d):
    inj.pod_spec(d)["topologySpreadConstraints"] = [
        c for c in inj.pod_spec(d)["topologySpreadConstraints"] if c["topologyKey"] != "kubernetes.io/hostname"]


def include_own_namespace(d):
    hook(d)["namespaceSelector"]["matchExpressions"][0]["values"].remove("credbroker-system")


def service_port_moved(d):
    m.one(d, "Service")["spec"]["ports"][0]["port"] = 8443


def target_elsewhere(d):
    m.one(d, "Service")["spec"]["ports"][0]["targetPort"] = "ops"


def listen_moved(d):
    next(e for e in inj.container(d)["env"] if e["name"] == "CREDBROKER_LISTEN")["value"] = "0.0.0.0:10250"


BREAKAGES = {
    "list verb": (inj.check_rbac_get_serviceaccounts_only, add_list_verb),
    "secrets": (inj.check_rbac_get_serviceaccounts_only, add_secrets),
    "wildcard resources": (inj.check_rbac_get_serviceaccounts_only,
                           lambda d: role(d)["rules"][0].update(resources=["*"])),
    "extra role": (inj.check_rbac_get_serviceaccounts_only, add_role),
    "bound to another account": (inj.check_rbac_get_serviceaccounts_only, bind_other_account),
    "no objectSelector": (inj.check_failure_policy_only_under_object_selector,
                          lambda d: hook(d).pop("objectSelector")),
    "broader objectSelector": (inj.check_failure_policy_only_under_object_selector,
                               lambda d: hook(d).update(objectSelector={})),
    "failurePolicy Ignore": (inj.check_failure_policy_only_under_object_selector,
                             lambda d: hook(d).update(failurePolicy="Ignore")),
    "UPDATE too": (inj.check_failure_policy_only_under_object_selector,
                   lambda d: hook(d)["rules"][0]["operations"].append("UPDATE")),
    "reinvocation Never": (inj.check_webhook_settings, lambda d: hook(d).update(reinvocationPolicy="Never")),
    "sideEffects Some": (inj.check_webhook_settings, lambda d: hook(d).update(sideEffects="Some")),
    "v1beta1 reviews": (inj.check_webhook_settings,
                        lambda d: hook(d).update(admissionReviewVersions=["v1", "v1beta1"])),
    "matchPolicy Exact": (inj.check_webhook_settings, lambda d: hook(d).update(matchPolicy="Exact")),
    "timeout 30": (inj.check_webhook_settings, lambda d: hook(d).update(timeoutSeconds=30)),
    "no timeout": (inj.check_webhook_settings, lambda d: hook(d).pop("timeoutSeconds")),
    "one replica": (inj.check_availability, lambda d: inj.deployment(d)["spec"].update(replicas=1)),
    "no PDB": (inj.check_availability, lambda d: d.remove(m.one(d, "PodDisruptionBudget"))),
    "PDB minAvailable 0": (inj.check_availability,
                           lambda d: m.one(d, "PodDisruptionBudget")["spec"].update(minAvailable=0)),
    "PDB selects nothing": (inj.check_availability, lambda d: m.one(d, "PodDisruptionBudget")["spec"].update(
        selector={"matchLabels": {"app": "other"}})),
    "no node spread": (inj.check_availability, drop_spread),
    "rollout drops a replica": (inj.check_availability, lambda d: inj.deployment(d)["spec"]["strategy"][
        "rollingUpdate"].update(maxUnavailable=1)),
    "own namespace selected": (inj.check_namespace_selector_excludes_own_namespace, include_own_namespace),
    "no namespaceSelector": (inj.check_namespace_selector_excludes_own_namespace,
                             lambda d: hook(d).pop("namespaceSelector")),
    "service port moved": (inj.check_service_wiring, service_port_moved),
    "service targets ops": (inj.check_service_wiring, target_elsewhere),
    "webhook listens elsewhere": (inj.check_service_wiring, listen_moved),
    "wrong path": (inj.check_service_wiring,
                   lambda d: hook(d)["clientConfig"]["service"].update(path="/inject")),
    "service selects nothing": (inj.check_service_wiring,
                                lambda d: m.one(d, "Service")["spec"].update(selector={"app": "x"})),
    "TLS mount writable": (inj.check_service_wiring,
                           lambda d: inj.container(d)["volumeMounts"][0].pop("readOnly")),
    "writable root fs": (inj.check_security,
                         lambda d: inj.container(d)["securityContext"].update(readOnlyRootFilesystem=False)),
    "runs as root": (inj.check_security, lambda d: (inj.container(d)["securityContext"].update(runAsUser=0),
                                                    inj.pod_spec(d)["securityContext"].update(runAsUser=0))),
    "escalation": (inj.check_security,
                   lambda d: inj.container(d)["securityContext"].update(allowPrivilegeEscalation=True)),
    "capabilities kept": (inj.check_security, lambda d: inj.container(d)["securityContext"].pop("capabilities")),
    "no seccomp": (inj.check_security, lambda d: (inj.container(d)["securityContext"].pop("seccompProfile"),
                                                  inj.pod_spec(d)["securityContext"].pop("seccompProfile"))),
    "hostNetwork": (inj.check_security, lambda d: inj.pod_spec(d).update(hostNetwork=True)),
    "no memory limit": (inj.check_security, lambda d: inj.container(d)["resources"]["limits"].pop("memory")),
    "readiness on webhook port": (inj.check_security,
                                  lambda d: inj.container(d)["readinessProbe"]["httpGet"].update(port="webhook")),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_check_rejects(breakage, generated):
    check, mutate = BREAKAGES[breakage]
    docs = build("cert-manager", generated)
    check(copy.deepcopy(docs))  # passes before the mistake
    mutate(docs)
    with pytest.raises(AssertionError):
        check(docs)


def test_every_check_has_a_breakage():
    covered = {check for check, _ in BREAKAGES.values()}
    assert covered == set(inj.CHECKS), f"no breakage test for {set(inj.CHECKS) - covered}"
