"""The invariants of deploy/injector (credbroker inject, the mutating admission webhook).

Each `check_*` takes the documents of one `kustomize build` and raises AssertionError naming what
is wrong. test_injector.py runs them on every build, and on deliberately broken copies to show that
each one fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

import manifests as m

INJECTOR_DIR = m.ROOT / "deploy" / "injector"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
NAMESPACE = "credbroker-system"
INJECT_LABEL = {"credbroker.io/inject": "true"}
# The API server labels every namespace with its name (since 1.21); the namespaceSelector keys on it.
NAME_LABEL = "kubernetes.io/metadata.name"
DEFAULT_WEBHOOK_PORT = 443  # admissionregistration/v1 ServiceReference.port default

# Kinds that are CRDs, validated against the vendored cert-manager schemas, not Kubernetes'.
CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): SCHEMA_DIR / "cert-manager-v1.21.1-certificate.json",
    ("cert-manager.io/v1", "Issuer"): SCHEMA_DIR / "cert-manager-v1.21.1-issuer.json",
}


def crd_schema(doc: dict) -> dict | None:
    path = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    return json.loads(path.read_text()) if path else None


def validate_crd(doc: dict) -> None:
    schema = crd_schema(doc)
    assert schema is not None, f"no schema for {doc.get('apiVersion')} {doc.get('kind')}"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path)
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')} is invalid against cert-manager "
                             f"v1.21.1 at {where or '.'}: {err.message}")


def is_crd_kind(doc: dict) -> bool:
    return doc.get("apiVersion", "").startswith("cert-manager.io/")


# --- navigating a build -------------------------------------------------------------------------

def deployment(docs):
    return m.one(docs, "Deployment", "credbroker-injector")


def pod_spec(docs):
    return deployment(docs)["spec"]["template"]["spec"]


def container(docs):
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1, f"expected the injector container alone, found {len(containers)}"
    return containers[0]


def env(docs) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs).get("env", []) if "value" in e}


def webhooks(docs):
    hooks = m.one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hooks, "the MutatingWebhookConfiguration has no webhooks"
    return hooks


def selector_matches(selector: dict, labels: dict) -> bool:
    """A metav1.LabelSelector evaluated as the API server does (empty selects everything)."""
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


# --- invariants ---------------------------------------------------------------------------------

def check_rbac_get_serviceaccounts_only(docs):
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert len(roles) == 1 and roles[0]["kind"] == "ClusterRole", \
        f"expected one ClusterRole, found {[(d['kind'], d['metadata']['name']) for d in roles]}"
    rules = roles[0].get("rules", [])
    assert rules == [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]}], \
        f"the injector's ClusterRole must grant exactly get on core serviceaccounts, not {rules}"
    assert not roles[0].get("aggregationRule"), "an aggregated ClusterRole can grow beyond get"
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert len(bindings) == 1 and bindings[0]["kind"] == "ClusterRoleBinding", \
        f"expected one ClusterRoleBinding, found {[(d['kind'], d['metadata']['name']) for d in bindings]}"
    binding = bindings[0]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": roles[0]["metadata"]["name"]}, f"roleRef {binding['roleRef']}"
    sa = pod_spec(docs)["serviceAccountName"]
    ns = deployment(docs)["metadata"]["namespace"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}], \
        f"the binding's subjects {binding['subjects']} are not the Deployment's ServiceAccount {ns}/{sa}"
    m.one(docs, "ServiceAccount", sa)


def check_failure_policy_only_under_object_selector(docs):
    for hook in webhooks(docs):
        assert hook.get("failurePolicy") == "Fail", f"{hook['name']}: failurePolicy is not Fail"
        assert hook.get("objectSelector") == {"matchLabels": INJECT_LABEL}, \
            f"{hook['name']}: failurePolicy Fail without objectSelector {INJECT_LABEL} would block every pod " \
            f"while the injector is down (objectSelector: {hook.get('objectSelector')})"
        assert hook.get("rules") == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                      "resources": ["pods"], "scope": "Namespaced"}], \
            f"{hook['name']}: rules must be CREATE of core v1 pods only, not {hook.get('rules')}"


def check_webhook_settings(docs):
    for hook in webhooks(docs):
        name = hook["name"]
        assert hook.get("reinvocationPolicy") == "IfNeeded", f"{name}: reinvocationPolicy is not IfNeeded"
        assert hook.get("sideEffects") == "None", f"{name}: sideEffects is not None"
        assert hook.get("admissionReviewVersions") == ["v1"], f"{name}: admissionReviewVersions is not [v1]"
        assert hook.get("matchPolicy") == "Equivalent", f"{name}: matchPolicy is not Equivalent"
        timeout = hook.get("timeoutSeconds")
        assert isinstance(timeout, int) and 1 <= timeout <= 10, \
            f"{name}: timeoutSeconds {timeout} must be set, at most 10"


def check_availability(docs):
    dep = deployment(docs)
    assert dep["spec"].get("replicas") == 2, f"the injector runs {dep['spec'].get('replicas')} replicas, not 2"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 1, f"expected one PodDisruptionBudget, found {len(pdbs)}"
    pdb = pdbs[0]
    assert pdb["spec"].get("minAvailable") == 1, f"PDB minAvailable is {pdb['spec'].get('minAvailable')}, not 1"
    assert pdb["metadata"].get("namespace") == dep["metadata"]["namespace"], "the PDB is in another namespace"
    assert selector_matches(pdb["spec"]["selector"], labels), "the PDB does not select the injector's pods"
    spread = [c for c in pod_spec(docs).get("topologySpreadConstraints", [])
              if c["topologyKey"] == "kubernetes.io/hostname" and c["whenUnsatisfiable"] == "DoNotSchedule"
              and c.get("maxSkew") == 1 and selector_matches(c["labelSelector"], labels)]
    anti = pod_spec(docs).get("affinity", {}).get("podAntiAffinity", {}) \
        .get("requiredDuringSchedulingIgnoredDuringExecution", [])
    anti = [a for a in anti if a["topologyKey"] == "kubernetes.io/hostname"
            and selector_matches(a["labelSelector"], labels)]
    assert spread or anti, "the replicas are not spread across nodes (hostname topology spread or anti-affinity)"
    strategy = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
    assert strategy.get("maxUnavailable") == 0, "a rollout may take a replica down before its successor is ready"


def check_namespace_selector_excludes_own_namespace(docs):
    own = deployment(docs)["metadata"]["namespace"]
    for hook in webhooks(docs):
        selector = hook.get("namespaceSelector")
        assert selector, f"{hook['name']}: no namespaceSelector (the webhook would gate its own pods)"
        for ns in (own, "kube-system"):
            assert not selector_matches(selector, {NAME_LABEL: ns}), \
                f"{hook['name']}: namespaceSelector selects {ns}"
        assert selector_matches(selector, {NAME_LABEL: "default"}), \
            f"{hook['name']}: namespaceSelector does not select ordinary namespaces"


def check_service_wiring(docs):
    dep = deployment(docs)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    c = container(docs)
    listen = listen_port(env(docs).get("CREDBROKER_LISTEN", "0.0.0.0:9443"))
    for hook in webhooks(docs):
        ref = hook["clientConfig"].get("service")
        assert ref and not hook["clientConfig"].get("url"), f"{hook['name']}: clientConfig is not a service reference"
        assert ref.get("path") == "/mutate", f"{hook['name']}: path {ref.get('path')} is not /mutate"
        svc = m.one(docs, "Service", ref["name"])
        assert svc["metadata"].get("namespace") == ref["namespace"], \
            f"{hook['name']}: Service {ref['name']} is not in {ref['namespace']}"
        assert selector_matches({"matchLabels": svc["spec"]["selector"]}, labels), \
            f"Service {ref['name']} does not select the injector's pods"
        port = ref.get("port", DEFAULT_WEBHOOK_PORT)
        ports = [p for p in svc["spec"]["ports"] if p["port"] == port]
        assert ports, f"Service {ref['name']} has no port {port} (the webhook's clientConfig port)"
        target = m.port_number(c, ports[0].get("targetPort", port))
        assert target == listen, f"Service port {port} targets {target}, but the webhook listens on {listen}"
    cert = env(docs).get("CREDBROKER_TLS_CERT_FILE")
    key = env(docs).get("CREDBROKER_TLS_KEY_FILE")
    assert cert and key, "the injector has no TLS certificate and key files"
    for path in (cert, key):
        mount, vol, _ = file_source(docs, c, path)
        assert mount.get("readOnly") is True, f"{path}: the TLS mount is not read-only"
        assert vol.get("secret", {}).get("secretName") == "credbroker-injector-tls", \
            f"{path}: not from Secret credbroker-injector-tls"


def file_source(docs, c, path):
    best = None
    for mount in c.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and (best is None or len(mount["mountPath"]) > len(best["mountPath"])):
            best = mount
    assert best is not None, f"nothing is mounted where {path} lives"
    vols = [v for v in pod_spec(docs).get("volumes", []) if v["name"] == best["name"]]
    assert len(vols) == 1, f"no volume {best['name']}"
    return best, vols[0], path[len(best["mountPath"].rstrip("/")) + 1:]


def check_security(docs):
    spec = pod_spec(docs)
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), \
        "the injector shares a host namespace"
    pod = spec.get("securityContext", {})
    c = container(docs)
    sec = {k: pod[k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile") if k in pod}
    sec.update(c.get("securityContext", {}))
    assert sec.get("runAsNonRoot") is True, "runAsNonRoot is not true"
    assert sec.get("runAsUser") == 65532, f"runs as uid {sec.get('runAsUser')}, not 65532"
    assert sec.get("readOnlyRootFilesystem") is True, "root filesystem is writable"
    assert sec.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false"
    assert sec.get("capabilities", {}).get("drop") == ["ALL"], "capabilities are not drop [ALL]"
    assert not sec.get("capabilities", {}).get("add"), "adds capabilities"
    assert sec.get("privileged") is not True, "privileged"
    assert sec.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccompProfile is not RuntimeDefault"
    res = c.get("resources", {})
    assert {"cpu", "memory"} <= res.get("requests", {}).keys(), "no cpu/memory requests"
    assert "memory" in res.get("limits", {}), "no memory limit"
    ops = listen_port(env(docs).get("CREDBROKER_OPS_LISTEN", "0.0.0.0:8190"))
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet")
        assert get and get["path"] == path, f"{probe} does not GET {path}"
        assert m.port_number(c, get["port"]) == ops, f"{probe} is not on the ops port {ops}"
    assert c.get("args", [None])[0] == "inject", f"the container runs {c.get('args')}, not `inject`"


CHECKS = [
    check_rbac_get_serviceaccounts_only, check_failure_policy_only_under_object_selector,
    check_webhook_settings, check_availability, check_namespace_selector_excludes_own_namespace,
    check_service_wiring, check_security,
]
