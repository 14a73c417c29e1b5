"""Building the kustomize overlays and the invariants every built overlay must hold.

Each `check_*` function takes the documents of one `kustomize build` and the set of clouds the
overlay enables, and raises AssertionError naming what is wrong. test_manifests.py runs them on
every overlay, and runs them again on deliberately broken copies to show that each one fails.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import posixpath
import re
import shutil
import subprocess
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "deploy" / "kustomize"
BIN_DIR = Path(os.environ.get("CREDBROKER_BIN_DIR", ROOT / "target" / "debug"))
CREDBROKER = BIN_DIR / "credbroker"

CLOUDS = ("aws", "gcp", "azure", "oci")
OVERLAYS = {
    "aws": {"aws"},
    "gcp": {"gcp"},
    "azure": {"azure"},
    "oci": {"oci"},
    "all-clouds": set(CLOUDS),
}
SIDECAR = "credbroker"
APP = "app"

# Projected service-account token audiences the clouds accept (docs/aws.md, "IRSA webhook";
# docs/azure.md, "Workload identity webhook"; docs/gcp.md, "STS token exchange"). GCP's is the
# workload identity provider's resource name, checked against the credential configuration.
AUDIENCE = {
    "aws": "sts.amazonaws.com",
    "azure": "api://AzureADTokenExchange",
}

# Variables that make some SDK skip the sidecar (web identity / workload identity / key files
# come before the container, IMDS and metadata providers in the default chains), plus static
# keys. From `credbroker env`'s "must NOT be set" lines and docs/aws.md, "Provider chain order";
# docs/azure.md, "Credential precedence"; docs/gcp.md, "Metadata server detection".
FORBIDDEN_APP_ENV = {
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
    "GOOGLE_APPLICATION_CREDENTIALS",
}

# The application-side variables the contract (spec/interface.md) names for each cloud.
CONTRACT_APP_ENV = {
    "aws": {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT"},
    "gcp": {"GCE_METADATA_HOST", "GCE_METADATA_IP"},
    "azure": {"AZURE_POD_IDENTITY_AUTHORITY_HOST", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"},
    "oci": {"OCI_RESOURCE_PRINCIPAL_VERSION", "OCI_RESOURCE_PRINCIPAL_RPST",
            "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM", "OCI_RESOURCE_PRINCIPAL_REGION"},
}

# The variables that enable each cloud in the sidecar (spec/interface.md).
ENABLING_ENV = {
    "aws": {"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"},
    "gcp": {"GOOGLE_APPLICATION_CREDENTIALS"},
    "azure": {"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"},
    "oci": {"OCI_RESOURCE_PRINCIPAL_REGION", "CREDBROKER_OCI_OUTPUT_DIR"},
}

# The default kube-apiserver token path (OCI's proxymux reviews a token for the API server's
# own audience, which a serviceAccountToken projection without `audience` yields).
KUBE_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

# Sizing bounds for the sidecar (docs/deploying.md#resources has the measurement): the release
# build peaked at 9.4 MiB RSS serving 3,200 requests from 32 clients, rounded up to 10 MiB. The
# request must cover it, the limit must leave at least 4x headroom over it and stay small enough
# that a sidecar does not dominate the pod.
MEASURED_PEAK_RSS = 10 * 2**20
MAX_SIDECAR_LIMIT = 256 * 2**20


def app_cloud(name: str) -> str | None:
    """Which cloud an application-container variable belongs to (None: not a cloud's)."""
    if name.startswith("AWS_"):
        return "aws"
    if name.startswith(("GCE_", "GOOGLE_", "CLOUDSDK_")):
        return "gcp"
    if name.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_")):
        return "azure"
    if name.startswith("OCI_"):
        return "oci"
    return None


# --- building -----------------------------------------------------------------------------------

def kustomize_command() -> list[str]:
    """`kustomize build`, or the kustomize built into kubectl (kubectl >= 1.27 has v5)."""
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    raise AssertionError("neither kustomize nor kubectl is on PATH: cannot build the overlays")


def kustomize_version() -> str:
    cmd = kustomize_command()
    if cmd[1] == "kustomize":  # kubectl
        out = subprocess.run([cmd[0], "version", "--client"], capture_output=True, text=True,
                             check=True).stdout
        m = re.search(r"Kustomize Version:\s*v?(\S+)", out)
    else:
        out = subprocess.run([cmd[0], "version"], capture_output=True, text=True,
                             check=True).stdout
        m = re.search(r"v?(\d+\.\d+\.\d+)", out)
    assert m, f"cannot read the kustomize version from {out!r}"
    return m.group(1)


@functools.cache
def _build_text(path: Path) -> str:
    proc = subprocess.run([*kustomize_command(), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"kustomize build {path} failed:\n{proc.stderr}"
    return proc.stdout


def build(path: Path) -> list[dict]:
    """The documents of `kustomize build PATH` (a fresh copy each call: tests mutate them)."""
    return [d for d in yaml.safe_load_all(_build_text(path)) if d]


def load_yaml_file(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- navigating a build -------------------------------------------------------------------------

def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def pod_meta(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["metadata"]


def sidecar(docs: list[dict]) -> dict:
    found = [c for c in pod_spec(docs).get("initContainers", []) if c["name"] == SIDECAR]
    assert len(found) == 1, f"expected one initContainer named {SIDECAR}, found {len(found)}"
    return found[0]


def app(docs: list[dict]) -> dict:
    found = [c for c in pod_spec(docs)["containers"] if c["name"] == APP]
    assert len(found) == 1, f"expected one container named {APP}, found {len(found)}"
    return found[0]


def configmap_data(docs: list[dict], name: str) -> dict:
    """Data of the ConfigMap a (kustomize-renamed) reference points at."""
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name:
            return d.get("data", {})
    raise AssertionError(f"ConfigMap {name} is referenced but not part of the build")


def resolve_env(docs: list[dict], container: dict) -> dict[str, str]:
    """A container's env as the process sees it. fieldRef values become `fieldref-PATH`."""
    assert "envFrom" not in container, f"{container['name']}: envFrom hides what is set; list env"
    env = {}
    for e in container.get("env", []):
        assert e["name"] not in env, f"{container['name']}: {e['name']} set twice"
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        src = e.get("valueFrom", {})
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            data = configmap_data(docs, ref["name"])
            assert ref["key"] in data, f"{e['name']}: ConfigMap {ref['name']} has no key {ref['key']}"
            env[e["name"]] = data[ref["key"]]
        elif "fieldRef" in src:
            env[e["name"]] = f"fieldref-{src['fieldRef']['fieldPath']}"
        else:
            raise AssertionError(f"{e['name']}: unsupported valueFrom {src}")
    return env


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"{container['name']}: no port named {port}")


def mounts_by_path(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volume(docs: list[dict], name: str) -> dict:
    found = [v for v in pod_spec(docs).get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"expected one volume named {name}, found {len(found)}"
    return found[0]


def file_source(docs: list[dict], container: dict, path: str) -> tuple[dict, dict, str]:
    """(mount, volume, path inside the volume) that provides the file at `path`."""
    best = None
    for mount_path, mount in mounts_by_path(container).items():
        prefix = mount_path.rstrip("/") + "/"
        if path.startswith(prefix) and (best is None or len(mount_path) > len(best["mountPath"])):
            best = mount
    assert best is not None, f"{container['name']}: nothing is mounted where {path} lives"
    rel = path[len(best["mountPath"].rstrip("/")) + 1:]
    return best, volume(docs, best["name"]), rel


def projected_token(vol: dict, rel: str) -> dict:
    """The serviceAccountToken projection written at `rel` in a projected volume."""
    assert "projected" in vol, f"volume {vol['name']} is not a projected volume"
    for src in vol["projected"]["sources"]:
        tok = src.get("serviceAccountToken")
        if tok and tok["path"] == rel:
            return tok
    raise AssertionError(f"volume {vol['name']} projects no service-account token at {rel}")


def quantity(q) -> float:
    """A Kubernetes resource quantity in base units (bytes or cores)."""
    s = str(q)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    for suffix, factor in units.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * factor
    return float(s)


def effective_security(docs: list[dict], container: dict) -> dict:
    """The container's security settings with the pod-level ones it inherits."""
    pod = pod_spec(docs).get("securityContext", {})
    own = container.get("securityContext", {})
    merged = {k: pod[k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile") if k in pod}
    merged.update(own)
    return merged


# --- invariants ---------------------------------------------------------------------------------

def check_native_sidecar(docs, clouds):
    side = sidecar(docs)
    assert side.get("restartPolicy") == "Always", \
        "credbroker must be a native sidecar: an initContainer with restartPolicy: Always"
    assert side.get("args", [None])[0] == "serve", f"sidecar args {side.get('args')} do not run `serve`"
    assert not side.get("command"), "the image's ENTRYPOINT is the binary; do not override command"
    inits = pod_spec(docs)["initContainers"]
    assert inits.index(side) == 0, "credbroker must be the first initContainer (it starts first)"


def ops_port(docs) -> int:
    env = resolve_env(docs, sidecar(docs))
    addr = env.get("CREDBROKER_OPS_LISTEN", "0.0.0.0:8190")
    return int(addr.rsplit(":", 1)[1])


def check_probes(docs, clouds):
    side = sidecar(docs)
    ops = ops_port(docs)
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        assert probe in side, f"sidecar has no {probe}"
        get = side[probe].get("httpGet")
        assert get, f"sidecar {probe} is not an httpGet"
        assert get["path"] == path, f"sidecar {probe} asks {get['path']}, not {path}"
        assert port_number(side, get["port"]) == ops, \
            f"sidecar {probe} probes port {get['port']}, not the ops listener's {ops}"
    start = side["startupProbe"]
    budget = start.get("periodSeconds", 10) * start.get("failureThreshold", 3)
    assert budget >= 120, f"startupProbe gives the first exchange only {budget}s (retries need minutes)"


def check_metrics_port(docs, clouds):
    side = sidecar(docs)
    ops = ops_port(docs)
    named = [p for p in side.get("ports", []) if p["containerPort"] == ops]
    assert named and named[0].get("name"), f"the ops/metrics port {ops} is not declared as a named port"
    listen = resolve_env(docs, side).get("CREDBROKER_LISTEN", "127.0.0.1:8189")
    host = listen.rsplit(":", 1)[0]
    assert host in ("127.0.0.1", "[::1]"), f"credential listener {listen} is not loopback"
    assert all(p["containerPort"] != int(listen.rsplit(":", 1)[1]) for p in side.get("ports", [])), \
        "the credential listener's port must not be declared (it is loopback-only)"


def check_scrape_annotations(docs, clouds):
    """The overlays' pods are scraped on the sidecar's ops port (an injected pod keeps its own
    prometheus.io/* annotations: they name one port per pod, the application's if it has any)."""
    ops = ops_port(docs)
    annotations = pod_meta(docs).get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true", "pod lacks prometheus.io/scrape: true"
    assert annotations.get("prometheus.io/port") == str(ops), \
        f"prometheus.io/port {annotations.get('prometheus.io/port')} is not the ops port {ops}"
    assert annotations.get("prometheus.io/path") == "/metrics", "prometheus.io/path is not /metrics"


def check_security(docs, clouds):
    spec = pod_spec(docs)
    assert not spec.get("hostNetwork"), "hostNetwork would put the credential listener on the node's loopback"
    for container in (sidecar(docs), app(docs)):
        sec = effective_security(docs, container)
        name = container["name"]
        assert sec.get("runAsNonRoot") is True, f"{name}: runAsNonRoot is not true"
        assert sec.get("runAsUser", 1) != 0, f"{name}: runs as uid 0"
        assert sec.get("readOnlyRootFilesystem") is True, f"{name}: root filesystem is writable"
        assert sec.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false"
        assert sec.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities are not drop [ALL]"
        assert not sec.get("capabilities", {}).get("add"), f"{name}: adds capabilities"
        assert sec.get("privileged") is not True, f"{name}: privileged"
        assert sec.get("seccompProfile", {}).get("type") == "RuntimeDefault", \
            f"{name}: seccompProfile is not RuntimeDefault"
    side = sidecar(docs)
    assert isinstance(side["securityContext"].get("runAsUser"), int) and side["securityContext"]["runAsUser"] > 0, \
        "sidecar must name a numeric non-root uid (kubelet cannot check a user name)"


def check_resources(docs, clouds):
    res = sidecar(docs).get("resources", {})
    req, lim = res.get("requests", {}), res.get("limits", {})
    for key in ("cpu", "memory"):
        assert key in req, f"sidecar has no {key} request"
    assert "memory" in lim, "sidecar has no memory limit"
    assert quantity(req["memory"]) >= MEASURED_PEAK_RSS, \
        f"sidecar memory request {req['memory']} is below the measured RSS"
    assert quantity(lim["memory"]) >= 4 * MEASURED_PEAK_RSS, \
        f"sidecar memory limit {lim['memory']} leaves less than 4x headroom over the measured RSS"
    assert quantity(lim["memory"]) <= MAX_SIDECAR_LIMIT, f"sidecar memory limit {lim['memory']} is oversized"
    for key in ("cpu", "memory"):
        if key in lim:
            assert quantity(req[key]) <= quantity(lim[key]), f"sidecar {key} request exceeds its limit"


def shared_volume_mount(docs, container, path) -> dict:
    mount, vol, _ = file_source(docs, container, path)
    assert vol.get("emptyDir", {}).get("medium") == "Memory", \
        f"{container['name']}: {path} is not on a memory-backed emptyDir (secrets must not hit the node's disk)"
    return mount


def check_shared_files(docs, clouds):
    side, application = sidecar(docs), app(docs)
    senv, aenv = resolve_env(docs, side), resolve_env(docs, application)
    shared = []
    if "aws" in clouds:
        path = senv.get("CREDBROKER_AWS_AUTH_TOKEN_FILE")
        assert path, "AWS: CREDBROKER_AWS_AUTH_TOKEN_FILE is not set in the sidecar"
        assert aenv.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") == path, \
            "AWS: the application's AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE is not the sidecar's auth token file"
        shared.append(path)
    if "oci" in clouds:
        out = senv.get("CREDBROKER_OCI_OUTPUT_DIR")
        assert out, "OCI: CREDBROKER_OCI_OUTPUT_DIR is not set in the sidecar"
        for var, name in (("OCI_RESOURCE_PRINCIPAL_RPST", "rpst"),
                          ("OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM", "private.pem")):
            assert aenv.get(var) == posixpath.join(out, name), f"OCI: {var} is not {out}/{name}"
            shared.append(aenv[var])
    for path in shared:
        smount = shared_volume_mount(docs, side, path)
        amount = shared_volume_mount(docs, application, path)
        assert smount["name"] == amount["name"], f"{path}: sidecar and app mount different volumes"
        assert not smount.get("readOnly"), f"{path}: the sidecar cannot write it (read-only mount)"
        assert amount.get("readOnly") is True, f"{path}: the application's mount is not read-only"
    if shared:
        assert pod_spec(docs).get("securityContext", {}).get("fsGroup"), \
            "shared secret files are 0640: the pod needs an fsGroup for the application to read them"
        assert senv.get("CREDBROKER_GROUP_READABLE_FILES") == "true", \
            "the sidecar must write the shared files group-readable (CREDBROKER_GROUP_READABLE_FILES)"


def gcp_credential_configuration(docs) -> dict:
    senv = resolve_env(docs, sidecar(docs))
    path = senv["GOOGLE_APPLICATION_CREDENTIALS"]
    _, vol, rel = file_source(docs, sidecar(docs), path)
    if "downwardAPI" in vol:
        # The injector's way: a pod annotation, projected as a file by the downward API.
        return json.loads(downward_api_annotation(docs, vol, rel))
    assert "configMap" in vol, f"GCP: {path} does not come from a ConfigMap"
    data = configmap_data(docs, vol["configMap"]["name"])
    assert rel in data, f"GCP: ConfigMap {vol['configMap']['name']} has no key {rel}"
    return json.loads(data[rel])


def downward_api_annotation(docs, vol: dict, rel: str) -> str:
    """The content of file `rel` of a downwardAPI volume projecting a pod annotation."""
    items = [i for i in vol["downwardAPI"].get("items", []) if i["path"] == rel]
    assert len(items) == 1, f"downwardAPI volume {vol['name']} has no file {rel}"
    field = items[0].get("fieldRef", {}).get("fieldPath", "")
    match = re.fullmatch(r"metadata\.annotations\['([^']+)'\]", field)
    assert match, f"downwardAPI volume {vol['name']}: {rel} is {field!r}, not a pod annotation"
    annotations = pod_meta(docs).get("annotations", {})
    assert match.group(1) in annotations, f"the pod has no annotation {match.group(1)} for {rel}"
    return annotations[match.group(1)]


def check_token_audiences(docs, clouds):
    side, application = sidecar(docs), app(docs)
    senv = resolve_env(docs, side)
    token_vars = {"aws": "AWS_WEB_IDENTITY_TOKEN_FILE", "azure": "AZURE_FEDERATED_TOKEN_FILE"}
    for cloud, var in token_vars.items():
        if cloud not in clouds:
            continue
        assert var in senv, f"{cloud}: {var} is not set in the sidecar"
        _, vol, rel = file_source(docs, side, senv[var])
        tok = projected_token(vol, rel)
        assert tok.get("audience") == AUDIENCE[cloud], \
            f"{cloud}: token audience {tok.get('audience')!r}, expected {AUDIENCE[cloud]!r}"
        assert tok.get("expirationSeconds", 3600) >= 600, f"{cloud}: expirationSeconds below kubelet's minimum"
    if "gcp" in clouds:
        cfg = gcp_credential_configuration(docs)
        assert cfg["type"] == "external_account", "GCP: credential configuration is not external_account"
        assert re.fullmatch(r"//iam\.googleapis\.com/projects/\d+/locations/global/workloadIdentityPools/"
                            r"[^/]+/providers/[^/]+", cfg["audience"]), \
            f"GCP: audience {cfg['audience']!r} is not a workload identity provider's resource name"
        _, vol, rel = file_source(docs, side, cfg["credential_source"]["file"])
        tok = projected_token(vol, rel)
        assert tok.get("audience") == cfg["audience"], \
            f"GCP: token audience {tok.get('audience')!r} is not the configuration's {cfg['audience']!r}"
    if "oci" in clouds:
        token = senv.get("CREDBROKER_OCI_TOKEN_FILE", KUBE_TOKEN)
        _, vol, rel = file_source(docs, side, token)
        tok = projected_token(vol, rel)
        assert "audience" not in tok, "OCI: proxymux needs a token for the kube-apiserver's own audience"
        ca = senv.get("OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH",
                      posixpath.join(posixpath.dirname(KUBE_TOKEN), "ca.crt"))
        _, cavol, carel = file_source(docs, side, ca)
        sources = [s["configMap"] for s in cavol["projected"]["sources"] if "configMap" in s]
        assert any(s["name"] == "kube-root-ca.crt" and any(i["path"] == carel for i in s.get("items", []))
                   for s in sources), "OCI: the cluster CA (kube-root-ca.crt) is not projected for proxymux"
    # No service-account token reaches the application container.
    for mount in application.get("volumeMounts", []):
        vol = volume(docs, mount["name"])
        assert not any("serviceAccountToken" in s for s in vol.get("projected", {}).get("sources", [])), \
            f"app: mounts service-account token volume {mount['name']}"


def check_no_automounted_token(docs, clouds):
    """The overlays turn the cluster token off (an injected pod keeps the user's choice)."""
    assert pod_spec(docs).get("automountServiceAccountToken") is False, \
        "automountServiceAccountToken must be false (the app would get the cluster token)"


def check_sidecar_enables(docs, clouds):
    senv = resolve_env(docs, sidecar(docs))
    for cloud in CLOUDS:
        present = ENABLING_ENV[cloud] & senv.keys()
        if cloud in clouds:
            assert present == ENABLING_ENV[cloud], \
                f"{cloud}: sidecar lacks {sorted(ENABLING_ENV[cloud] - present)}"
        else:
            assert not present, f"{cloud} is not part of this overlay but the sidecar sets {sorted(present)}"


def check_app_env(docs, clouds):
    aenv = resolve_env(docs, app(docs))
    bad = sorted(FORBIDDEN_APP_ENV & aenv.keys())
    assert not bad, f"app: {bad} make SDKs bypass the sidecar"
    for cloud in CLOUDS:
        names = {k for k in aenv if app_cloud(k) == cloud}
        if cloud in clouds:
            missing = CONTRACT_APP_ENV[cloud] - names
            assert not missing, f"{cloud}: app lacks {sorted(missing)}"
        else:
            assert not names, f"{cloud} is not part of this overlay but the app sets {sorted(names)}"
    listen = resolve_env(docs, sidecar(docs)).get("CREDBROKER_LISTEN", "127.0.0.1:8189")
    for name, value in aenv.items():
        for m in re.finditer(r"(?:^|//)(\d+\.\d+\.\d+\.\d+:\d+)", value):
            assert m.group(1) == listen, f"app: {name}={value} does not point at the sidecar's {listen}"
    if "azure" in clouds:
        senv = resolve_env(docs, sidecar(docs))
        assert aenv["IDENTITY_HEADER"] == senv.get("CREDBROKER_AZURE_IDENTITY_HEADER"), \
            "azure: the app's IDENTITY_HEADER differs from the sidecar's --azure-identity-header"


def check_no_webhook_injection(docs, clouds):
    """The clouds' own webhooks would inject the bypassing variables into the app container."""
    labels = pod_meta(docs).get("labels", {})
    assert labels.get("azure.workload.identity/use") != "true", \
        "the azure-workload-identity webhook would inject AZURE_* into the app (label azure.workload.identity/use)"
    for sa in (d for d in docs if d["kind"] == "ServiceAccount"):
        ann = sa["metadata"].get("annotations", {})
        assert "eks.amazonaws.com/role-arn" not in ann, \
            "the EKS pod-identity webhook would inject AWS_ROLE_ARN into the app (SA annotation eks.amazonaws.com/role-arn)"
        assert sa.get("automountServiceAccountToken") is False, \
            f"ServiceAccount {sa['metadata']['name']}: automountServiceAccountToken is not false"


CHECKS = [
    check_native_sidecar, check_probes, check_metrics_port, check_scrape_annotations, check_security,
    check_resources, check_shared_files, check_token_audiences, check_no_automounted_token,
    check_sidecar_enables, check_app_env, check_no_webhook_injection,
]

# What the overlays decide but `credbroker inject` leaves to the pod's author (its own scrape
# annotations, its own automountServiceAccountToken): every other check holds for an injected pod.
OVERLAY_ONLY_CHECKS = {check_scrape_annotations, check_no_automounted_token}


# --- `credbroker env` for a built overlay -------------------------------------------------------

def parse_env_output(text: str) -> tuple[dict[str, dict[str, str]], set[str]]:
    """(exports per cloud, forbidden names) from `credbroker env` output."""
    exports: dict[str, dict[str, str]] = {}
    forbidden: set[str] = set()
    cloud = None
    for line in text.splitlines():
        if m := re.fullmatch(r"# (\w+)", line.strip()):
            cloud = m.group(1)
            exports.setdefault(cloud, {})
        elif line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            assert cloud, f"export before a cloud header: {line}"
            exports[cloud][name] = value.strip("'\"")
        elif "must NOT be set" in line:
            forbidden |= set(line.split(":")[-1].split())
    return exports, forbidden


def unsigned_jwt(claims: dict) -> str:
    """A JWT-shaped token (`credbroker env` reads no signature; it never leaves this machine)."""
    def b64(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl"


def sidecar_env_for_local_run(docs: list[dict], clouds: set[str], scratch: Path) -> dict[str, str]:
    """The sidecar's env for running `credbroker env` on this machine: files the pod would get
    from volumes are written under `scratch` (paths the application sees stay as they are)."""
    env = {k: v for k, v in resolve_env(docs, sidecar(docs)).items()
           if not any(k in ENABLING_ENV[c] for c in CLOUDS if c not in clouds)}
    jwt = unsigned_jwt({"iss": "https://kubernetes.default.svc", "iat": int(time.time()),
                        "exp": int(time.time()) + 3600,
                        "sub": "system:serviceaccount:default:example-app"})
    scratch.mkdir(parents=True, exist_ok=True)

    def local_token(name: str) -> str:
        p = scratch / name
        p.write_text(jwt)
        return str(p)

    for var in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AZURE_FEDERATED_TOKEN_FILE"):
        if var in env:
            env[var] = local_token(var.lower())
    if "gcp" in clouds:
        cfg = gcp_credential_configuration(docs)
        cfg["credential_source"]["file"] = local_token("gcp-token")
        path = scratch / "credential-configuration.json"
        path.write_text(json.dumps(cfg))
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(path)
    if "oci" in clouds:
        env["CREDBROKER_OCI_TOKEN_FILE"] = local_token("oci-token")
        # Any well-formed PEM bundle stands in for the cluster CA.
        env["OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH"] = "/etc/ssl/certs/ca-certificates.crt"
        env["KUBERNETES_SERVICE_HOST"] = "127.0.0.1"  # kubelet sets it; `env` makes no request
    return env


def credbroker_env(env: dict[str, str], scratch: Path) -> subprocess.CompletedProcess:
    assert CREDBROKER.exists(), f"{CREDBROKER} is missing: build it first (cargo build --bins)"
    return subprocess.run(
        [str(CREDBROKER), "env"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), **env},
        capture_output=True, text=True, timeout=30,
    )
