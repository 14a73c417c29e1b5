"""deploy/kustomize: every overlay builds, validates strictly against the Kubernetes schemas, and
holds the sidecar invariants; the application's env is what `credbroker env` prints.

The breakage tests at the end apply one deliberate mistake each to a built overlay and show that
the corresponding check rejects it, so no invariant here passes vacuously.
"""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest
import yaml

import manifests as m
from manifests import KUSTOMIZE_DIR, OVERLAYS

# 1.29: native sidecars (initContainer restartPolicy: Always) are on by default from here on, so
# this is the oldest cluster the manifests support. 1.33: the newest minor kubectl's kustomize
# here was released with; kubernetes-validate is pinned in requirements.txt.
K8S_VERSIONS = ["1.29.0", "1.33.0"]


def validate_strict(doc: dict, version: str) -> None:
    """Strict schema validation (unknown fields are errors), failing with a one-line reason."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')} is invalid for Kubernetes "
                             f"{version} at {where or '.'}: {err.message}") from None


def overlay_dir(name: str):
    return KUSTOMIZE_DIR / "overlays" / name


def kustomization_files():
    return sorted(KUSTOMIZE_DIR.rglob("kustomization.yaml"))


def resource_files():
    """Plain resource manifests listed under `resources:` (complete objects, validated alone)."""
    files = []
    for k in kustomization_files():
        spec = yaml.safe_load(k.read_text())
        for entry in spec.get("resources", []):
            path = (k.parent / entry).resolve()
            if path.is_file():
                files.append(path)
    return sorted(set(files))


def test_kustomize_is_recent_enough():
    major = int(m.kustomize_version().split(".")[0])
    assert major >= 5, "components and replacements need kustomize >= 5 (kubectl >= 1.27)"


@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(KUSTOMIZE_DIR)))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_resource_file_validates_strictly(path, version):
    docs = m.load_yaml_file(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        validate_strict(doc, version)


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_build_validates_strictly(overlay, version):
    path = KUSTOMIZE_DIR / "base" if overlay == "base" else overlay_dir(overlay)
    docs = m.build(path)
    assert {d["kind"] for d in docs} >= {"Deployment", "ServiceAccount"}
    for doc in docs:
        validate_strict(doc, version)


def test_native_sidecar_is_rejected_by_older_schema():
    """The pinned schema really is consulted: 1.27's has no restartPolicy on init containers."""
    deployment = m.one(m.build(overlay_dir("aws")), "Deployment")
    with pytest.raises(AssertionError, match="restartPolicy"):
        validate_strict(deployment, "1.27.0")


def test_every_yaml_file_is_used():
    """No manifest or patch lies around unbuilt (and so unvalidated)."""
    used = set()
    for k in kustomization_files():
        used.add(k)
        spec = yaml.safe_load(k.read_text())
        for entry in spec.get("resources", []) + spec.get("components", []):
            used.add((k.parent / entry).resolve())
        for patch in spec.get("patches", []):
            if "path" in patch:
                used.add((k.parent / patch["path"]).resolve())
        for gen in spec.get("configMapGenerator", []):
            for f in gen.get("files", []):
                used.add((k.parent / f.split("=")[-1]).resolve())
    files = {p.resolve() for p in KUSTOMIZE_DIR.rglob("*") if p.suffix in (".yaml", ".yml", ".json")}
    stray = sorted(str(p.relative_to(KUSTOMIZE_DIR)) for p in files - used)
    assert not stray, f"not referenced by any kustomization: {stray}"


def test_gcp_configurations_agree():
    """The two overlays' copies of the credential configuration are identical."""
    a = json.loads((overlay_dir("gcp") / "credential-configuration.json").read_text())
    b = json.loads((overlay_dir("all-clouds") / "credential-configuration.json").read_text())
    assert a == b


@pytest.mark.parametrize("check", m.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_invariant(overlay, check):
    check(m.build(overlay_dir(overlay)), OVERLAYS[overlay])


def known_clouds(scratch) -> str:
    """The binary's "no cloud is enabled" message names the variables of every cloud it knows."""
    proc = m.credbroker_env({}, scratch)
    assert proc.returncode != 0 and "no cloud is enabled" in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("overlay,cloud", [(o, c) for o, cs in OVERLAYS.items() for c in sorted(cs)])
def test_app_env_is_what_credbroker_env_prints(overlay, cloud, tmp_path):
    docs = m.build(overlay_dir(overlay))
    env = m.sidecar_env_for_local_run(docs, OVERLAYS[overlay], tmp_path)
    proc = m.credbroker_env(env, tmp_path)
    exports, forbidden = m.parse_env_output(proc.stdout) if proc.returncode == 0 else ({}, set())
    if cloud not in exports:
        message = known_clouds(tmp_path)
        if not any(var in message for var in m.ENABLING_ENV[cloud]):
            pytest.skip(f"this credbroker build does not implement {cloud} yet")
        raise AssertionError(f"credbroker env did not enable {cloud} with the overlay's sidecar env:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    app_env = m.resolve_env(docs, m.app(docs))
    mine = {k: v for k, v in app_env.items() if m.app_cloud(k) == cloud}
    assert mine == exports[cloud], f"{overlay}/{cloud}: app env differs from `credbroker env`"
    assert not forbidden & app_env.keys(), f"app sets what credbroker env forbids: {forbidden & app_env.keys()}"


# --- each check fails on the mistake it guards against ------------------------------------------

def env_entry(container, name):
    return next(e for e in container["env"] if e["name"] == name)


def add_app_env(name, value="x"):
    return lambda d: m.app(d)["env"].append({"name": name, "value": value})


def set_sidecar_env(name, value):
    def mutate(d):
        entry = env_entry(m.sidecar(d), name)
        entry.pop("valueFrom", None)
        entry["value"] = value
    return mutate


def set_app_env(name, value):
    def mutate(d):
        entry = env_entry(m.app(d), name)
        entry.pop("valueFrom", None)
        entry["value"] = value
    return mutate


def volume_token(d, name):
    return m.volume(d, name)["projected"]["sources"][0]["serviceAccountToken"]


def move_sidecar_to_containers(d):
    spec = m.pod_spec(d)
    side = m.sidecar(d)
    spec["initContainers"].remove(side)
    del side["restartPolicy"]
    spec["containers"].append(side)


BREAKAGES = {
    "no restartPolicy": (m.check_native_sidecar, lambda d: m.sidecar(d).pop("restartPolicy")),
    "restartPolicy OnFailure": (m.check_native_sidecar,
                                lambda d: m.sidecar(d).update(restartPolicy="OnFailure")),
    "sidecar as regular container": (m.check_native_sidecar, move_sidecar_to_containers),
    "no startupProbe": (m.check_probes, lambda d: m.sidecar(d).pop("startupProbe")),
    "startupProbe on /healthz": (m.check_probes,
                                 lambda d: m.sidecar(d)["startupProbe"]["httpGet"].update(path="/healthz")),
    "startupProbe on credential port": (m.check_probes,
                                        lambda d: m.sidecar(d)["startupProbe"]["httpGet"].update(port=8189)),
    "ops listener moved, probes not": (m.check_probes,
                                       set_sidecar_env("CREDBROKER_OPS_LISTEN", "0.0.0.0:9000")),
    "short startup budget": (m.check_probes,
                             lambda d: m.sidecar(d)["startupProbe"].update(failureThreshold=3)),
    "metrics port unnamed": (m.check_metrics_port, lambda d: m.sidecar(d)["ports"][0].pop("name")),
    "no scrape annotation": (m.check_scrape_annotations,
                             lambda d: m.pod_meta(d)["annotations"].pop("prometheus.io/scrape")),
    "credential listener on all interfaces": (m.check_metrics_port,
                                              set_sidecar_env("CREDBROKER_LISTEN", "0.0.0.0:8189")),
    "writable root fs": (m.check_security,
                         lambda d: m.sidecar(d)["securityContext"].update(readOnlyRootFilesystem=False)),
    "runs as root": (m.check_security, lambda d: m.sidecar(d)["securityContext"].update(
        runAsUser=0, runAsNonRoot=False)),
    "privilege escalation": (m.check_security,
                             lambda d: m.app(d)["securityContext"].update(allowPrivilegeEscalation=True)),
    "capabilities kept": (m.check_security, lambda d: m.sidecar(d)["securityContext"].pop("capabilities")),
    "no seccomp": (m.check_security, lambda d: (m.sidecar(d)["securityContext"].pop("seccompProfile"),
                                                m.pod_spec(d)["securityContext"].pop("seccompProfile"))),
    "hostNetwork": (m.check_security, lambda d: m.pod_spec(d).update(hostNetwork=True)),
    "no memory limit": (m.check_resources, lambda d: m.sidecar(d)["resources"]["limits"].pop("memory")),
    "tiny memory limit": (m.check_resources,
                          lambda d: m.sidecar(d)["resources"]["limits"].update(memory="12Mi")),
    "shared dir on disk": (m.check_shared_files,
                           lambda d: m.volume(d, "credbroker-shared")["emptyDir"].pop("medium")),
    "app mount writable": (m.check_shared_files,
                           lambda d: m.mounts_by_path(m.app(d))["/var/run/credbroker"].pop("readOnly")),
    "auth token file mismatch": (m.check_shared_files, lambda d: env_entry(
        m.app(d), "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").update(value="/tmp/other")),
    "oci files elsewhere": (m.check_shared_files, lambda d: env_entry(
        m.app(d), "OCI_RESOURCE_PRINCIPAL_RPST").update(value="/var/run/oci/rpst")),
    "aws audience": (m.check_token_audiences,
                     lambda d: volume_token(d, "aws-iam-token").update(audience="sts.googleapis.com")),
    "azure audience": (m.check_token_audiences,
                       lambda d: volume_token(d, "azure-identity-token").update(audience="api://other")),
    "gcp audience": (m.check_token_audiences,
                     lambda d: volume_token(d, "gcp-sts-token").update(audience="//iam.googleapis.com/x")),
    "oci token with audience": (m.check_token_audiences,
                                lambda d: volume_token(d, "kube-api-access").update(audience="oci")),
    "token mounted in app": (m.check_token_audiences, lambda d: m.app(d)["volumeMounts"].append(
        {"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount"})),
    "automount": (m.check_no_automounted_token,
                  lambda d: m.pod_spec(d).update(automountServiceAccountToken=True)),
    "sidecar lacks AWS_ROLE_ARN": (m.check_sidecar_enables, lambda d: m.sidecar(d)["env"].remove(
        env_entry(m.sidecar(d), "AWS_ROLE_ARN"))),
    **{f"app has {name}": (m.check_app_env, add_app_env(name)) for name in (
        "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID", "GOOGLE_APPLICATION_CREDENTIALS")},
    "app lacks IDENTITY_ENDPOINT": (m.check_app_env, lambda d: m.app(d)["env"].remove(
        env_entry(m.app(d), "IDENTITY_ENDPOINT"))),
    "app points elsewhere": (m.check_app_env, lambda d: env_entry(
        m.app(d), "GCE_METADATA_HOST").update(value="127.0.0.1:9999")),
    "identity header mismatch": (m.check_app_env, set_app_env("IDENTITY_HEADER", "fixed")),
    "app uses envFrom": (m.check_app_env,
                         lambda d: m.app(d).update(envFrom=[{"configMapRef": {"name": "credbroker-aws"}}])),
    "azure webhook label": (m.check_no_webhook_injection,
                            lambda d: m.pod_meta(d)["labels"].update({"azure.workload.identity/use": "true"})),
    "irsa annotation": (m.check_no_webhook_injection, lambda d: m.one(d, "ServiceAccount")["metadata"][
        "annotations"].update({"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"})),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_check_rejects(breakage):
    check, mutate = BREAKAGES[breakage]
    docs = m.build(overlay_dir("all-clouds"))
    check(copy.deepcopy(docs), OVERLAYS["all-clouds"])  # passes before the mistake
    mutate(docs)
    with pytest.raises(AssertionError):
        check(docs, OVERLAYS["all-clouds"])


def test_every_check_has_a_breakage():
    covered = {check for check, _ in BREAKAGES.values()}
    assert covered == set(m.CHECKS), f"no breakage test for {set(m.CHECKS) - covered}"
