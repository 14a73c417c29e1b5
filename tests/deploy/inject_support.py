"""Running `credbroker inject` for tests/deploy/test_inject.py: a test CA and serving certificates
(openssl), the webhook process against fakecloud's emulated API server, AdmissionReviews over
verified HTTPS, patches applied with a real JSON Patch library, and a patched pod seen as the
one-Deployment document list manifests.CHECKS expect.

The end-to-end test's pod (`PodSandbox`) runs in a private network and mount namespace: the
sidecar's fixed ports (127.0.0.1:8189, 0.0.0.0:8190) are its own, and the pod's volumes are bind
mounts at their mountPaths, as kubelet would make them.
"""

from __future__ import annotations

import base64
import copy
import http.client as http_client
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jsonpatch
import pytest

import manifests as m

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "admission"
FAKECLOUD = m.BIN_DIR / "fakecloud"
IMAGE = "ghcr.io/credbroker/credbroker:test"
# The API server's own limit on a webhook call (MutatingWebhookConfiguration timeoutSeconds max
# is 30, deploy/injector uses 5): an answer must come well inside it.
WEBHOOK_TIMEOUT = 5.0


def load_conformance_helpers():
    """tests/conformance/conftest.py (fakecloud, HTTP and SDK runners) under its own module name,
    so that `pytest tests/conformance tests/deploy` does not see two modules named conftest."""
    name = "conformance_helpers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, m.ROOT / "tests" / "conformance" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


conformance = load_conformance_helpers()
wait_for = conformance.wait_for


def require_tool(name: str, hint: str) -> str:
    """The tool's path, or a failure (never a skip) saying how to install it."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not on PATH: {hint}")
    return path


def require_binaries() -> None:
    for exe in (m.CREDBROKER, FAKECLOUD):
        if not exe.is_file():
            pytest.fail(f"{exe} is missing: build it first (cargo build --workspace --bins)")


# --- certificates -------------------------------------------------------------------------------

def openssl(*args: str, cwd: Path | None = None) -> None:
    exe = require_tool("openssl", "apt-get install openssl")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=30)
    assert proc.returncode == 0, f"openssl {' '.join(args)} failed:\n{proc.stderr}"


@dataclass
class TestCA:
    """A throw-away CA (EC P-256) that issues serving certificates for 127.0.0.1."""

    __test__ = False  # not a test class, whatever its name
    dir: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.dir / f"{self.name}-ca.crt"

    @property
    def key(self) -> Path:
        return self.dir / f"{self.name}-ca.key"

    @classmethod
    def create(cls, dir: Path, name: str) -> "TestCA":
        dir.mkdir(parents=True, exist_ok=True)
        ca = cls(dir, name)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "2", "-subj", f"/CN={name} test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        return ca

    def issue(self, out: Path, cn: str) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for `cn`, valid for IP 127.0.0.1 and localhost."""
        out.mkdir(parents=True, exist_ok=True)
        key, csr, crt, ext = (out / f"{cn}.key", out / f"{cn}.csr", out / f"{cn}.crt", out / f"{cn}.ext")
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                       "keyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
                "-out", str(csr), "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                "-CAcreateserial", "-out", str(crt), "-days", "1", "-extfile", str(ext))
        return crt.read_bytes(), key.read_bytes()


class SecretVolume:
    """A directory laid out like a kubelet Secret volume: `tls.crt -> ..data/tls.crt`, with
    `..data` a symlink to a timestamped directory that an update replaces atomically."""

    def __init__(self, dir: Path):
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.generation = 0

    def write(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        stamp = self.dir / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self.generation:09d}"
        stamp.mkdir()
        for name, content in files.items():
            (stamp / name).write_bytes(content)
        old = os.readlink(self.dir / "..data") if (self.dir / "..data").is_symlink() else None
        tmp = self.dir / "..data_tmp"
        os.symlink(stamp.name, tmp)
        os.rename(tmp, self.dir / "..data")  # the atomic swap
        for name in files:
            link = self.dir / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old:
            shutil.rmtree(self.dir / old)

    def path(self, name: str) -> Path:
        return self.dir / name


def presented_certificate(host: str, port: int, ca: Path | None = None) -> bytes:
    """The DER certificate a new TLS connection is served (verified against `ca` when given)."""
    if ca is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True)


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


# --- the webhook --------------------------------------------------------------------------------

# The cloud-wide flags of a production-like webhook (the fixtures' patches do not depend on where
# a test's fakecloud listens, so an already-injected pod stays already injected).
FLAGS = [
    "--aws-region", "eu-west-1",
    "--azure-tenant-id", "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "--gcp-workload-identity-provider",
    "//iam.googleapis.com/projects/314159265358/locations/global/workloadIdentityPools/clusters/providers/prod-eu",
    "--gcp-project-id", "shop-prod",
    "--oci-region", "eu-frankfurt-1",
]


def webhook_flags(desc: dict) -> list[str]:
    """The cloud-wide flags that point injected sidecars at fakecloud's upstreams."""
    return [
        "--aws-region", desc["aws"]["region"],
        "--aws-sts-endpoint", desc["aws"]["sts_endpoint"],
        "--azure-tenant-id", desc["azure"]["tenant_id"],
        "--azure-authority-host", desc["azure"]["authority_host"],
        "--gcp-workload-identity-provider", desc["gcp"]["audience"],
        "--gcp-project-id", desc["gcp"]["project_id"],
        "--gcp-sts-url", desc["gcp"]["sts_endpoint"],
        "--gcp-iam-credentials-url", desc["gcp"]["iam_endpoint"],
        "--oci-region", desc["oci"]["region"],
    ]


@dataclass
class Webhook:
    proc: subprocess.Popen
    workdir: Path
    ca: Path
    webhook_addr: str = ""
    ops_addr: str = ""
    api_timeout_ms: int = 2000
    log_path: Path = field(default=None)

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.webhook_addr.rsplit(":", 1)
        return host, int(port)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, body: bytes, path: str = "/mutate", timeout: float = WEBHOOK_TIMEOUT) -> tuple[int, bytes]:
        """POST over HTTPS, the server's certificate verified against the test CA."""
        host, port = self.host_port
        ctx = ssl.create_default_context(cafile=str(self.ca))
        conn = http_client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def review(self, review: dict | bytes, timeout: float = WEBHOOK_TIMEOUT) -> dict:
        """The AdmissionReview answering `review` (a 200 whose body is an AdmissionReview)."""
        body = review if isinstance(review, bytes) else json.dumps(review).encode()
        status, raw = self.post(body, timeout=timeout)
        assert status == 200, f"/mutate answered {status}: {raw[:500]!r}"
        answer = json.loads(raw)
        assert answer.get("apiVersion") == "admission.k8s.io/v1" and answer.get("kind") == "AdmissionReview", answer
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_webhook(workdir: Path, desc: dict, cert: Path, key: Path, ca: Path, api_timeout_ms: int = 2000,
                  flags: list[str] = FLAGS, wrap: list[str] | None = None) -> Webhook:
    """`credbroker inject` reading ServiceAccounts from fakecloud's API server (KUBECONFIG),
    on 127.0.0.1:0 ports, with cloud-wide `flags`; `wrap` prefixes the command (nsenter, for the
    end-to-end test)."""
    require_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    addr_file = workdir / "addrs"
    log_path = workdir / "webhook.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir),
           "KUBECONFIG": desc["kube"]["kubeconfig"]}
    cmd = [*(wrap or []), str(m.CREDBROKER), "--log-level", "debug", "inject",
           "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--addr-file", str(addr_file),
           "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--image", IMAGE,
           "--api-timeout-ms", str(api_timeout_ms), *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    hook = Webhook(proc=proc, workdir=workdir, ca=ca, api_timeout_ms=api_timeout_ms, log_path=log_path)
    try:
        wait_for(lambda: addr_file.exists() or proc.poll() is not None, what="webhook addr file")
        assert proc.poll() is None, hook.logs()
        addrs = dict(line.split("=", 1) for line in addr_file.read_text().split())
    except BaseException:
        hook.stop()
        raise
    hook.webhook_addr, hook.ops_addr = addrs["webhook"], addrs["ops"]
    return hook


# --- reviews and patches ------------------------------------------------------------------------

def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def patch_of(response: dict) -> jsonpatch.JsonPatch | None:
    if "patch" not in response:
        assert "patchType" not in response, response
        return None
    assert response["patchType"] == "JSONPatch", response
    return jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"], validate=True)))


def apply(pod: dict, response: dict) -> dict:
    """The pod with the response's patch applied (a copy; the pod itself when there is none)."""
    patch = patch_of(response)
    return copy.deepcopy(pod) if patch is None else patch.apply(pod)


def as_documents(pod: dict) -> list[dict]:
    """The patched pod as the document list manifests.CHECKS take: a Deployment named
    `example-app` whose template is the pod (strictly valid: apps/v1 selector and labels)."""
    meta = copy.deepcopy(pod["metadata"])
    labels = meta.setdefault("labels", {})
    labels.setdefault("app.kubernetes.io/name", "example-app")
    template_meta = {k: v for k, v in meta.items() if k in ("labels", "annotations")}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "example-app", "namespace": meta.get("namespace", "default")},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": labels["app.kubernetes.io/name"]}},
            "template": {"metadata": template_meta, "spec": copy.deepcopy(pod["spec"])},
        },
    }
    return [deployment]


def with_uid(review: dict, uid: str) -> dict:
    review = copy.deepcopy(review)
    review["request"]["uid"] = uid
    return review


# --- fakecloud's API server ---------------------------------------------------------------------

def kube_admin(desc: dict, method: str, path: str, body=None) -> tuple[int, bytes]:
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(desc["kube"]["admin"] + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def seed_service_accounts(desc: dict, accounts: list[dict]) -> None:
    status, body = kube_admin(desc, "POST", "/serviceaccounts", accounts)
    assert status in (200, 201), body


def kubectl(desc: dict, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Real kubectl against fakecloud's API server (its kubeconfig), with its own HOME and cache."""
    exe = require_tool("kubectl", "install kubectl (https://kubernetes.io/docs/tasks/tools/; Debian: kubernetes-client)")
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([exe, "--kubeconfig", desc["kube"]["kubeconfig"], "--cache-dir", str(home / "cache"),
                           "--request-timeout=10s", *args],
                          env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                          capture_output=True, text=True, timeout=30)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)} failed:\n{proc.stderr}"
    return proc


# --- the injected pod, run as local processes ---------------------------------------------------

class PodSandbox:
    """A private network and mount namespace standing in for one pod: loopback up, a tmpfs over
    /var/run (so /var/run/secrets/... and /var/run/credbroker are the pod's), /etc as an overlay
    whose writes stay in the namespace (GCP's configuration is mounted under /etc/credbroker).
    A `sleep` holds the namespaces; every process of the pod joins them with nsenter."""

    def __init__(self, scratch: Path):
        self.unshare = require_tool("unshare", "apt-get install util-linux")
        self.nsenter = require_tool("nsenter", "apt-get install util-linux")
        self.ip = require_tool("ip", "apt-get install iproute2")
        if os.geteuid() != 0:
            pytest.fail("the end-to-end test mounts the pod's volumes in a private mount namespace: run it as root")
        self.scratch = scratch
        overlay = scratch / "etc-overlay"
        overlay.mkdir(parents=True)
        setup = " && ".join([
            f"{self.ip} link set lo up",
            "mount -t tmpfs -o mode=0755 pod-run /var/run",
            f"mount -t tmpfs -o mode=0700 etc-overlay {shlex.quote(str(overlay))}",
            f"mkdir {shlex.quote(str(overlay / 'upper'))} {shlex.quote(str(overlay / 'work'))}",
            f"mount -t overlay pod-etc -o lowerdir=/etc,upperdir={overlay / 'upper'},workdir={overlay / 'work'} /etc",
            "echo ready",
            "exec sleep 3600",
        ])
        self.holder = subprocess.Popen([self.unshare, "--net", "--mount", "--propagation", "private",
                                        "sh", "-c", setup], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.kill()
            raise AssertionError(f"cannot make the pod's namespaces: {self.holder.stderr.read()}")
        self.procs: list[subprocess.Popen] = []

    def wrap(self, mount: bool = True) -> list[str]:
        """The command prefix that runs a program inside the pod's namespaces."""
        return [self.nsenter, "-t", str(self.holder.pid), "-n", *(["-m"] if mount else [])]

    def run(self, cmd: list[str], env: dict | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.wrap(), *cmd], env=env, capture_output=True, text=True, timeout=timeout, **kw)

    def sh(self, script: str) -> None:
        proc = self.run(["sh", "-ec", script], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert proc.returncode == 0, f"in the pod's namespace: {script}\n{proc.stderr}"

    def popen(self, cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
        proc = subprocess.Popen([*self.wrap(), *cmd], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def bind(self, source: Path, target: str, read_only: bool) -> None:
        """`source` (a directory) mounted at `target` as kubelet mounts a volume."""
        q = shlex.quote
        self.sh(f"mkdir -p {q(target)} && mount --bind {q(str(source))} {q(target)}"
                + (f" && mount -o remount,bind,ro {q(target)}" if read_only else ""))

    def http(self, method: str, url: str, headers: dict | None = None, data: bytes | None = None,
             cafile: str | None = None, timeout: float = 10) -> tuple[int, bytes]:
        """An HTTP request made from inside the pod's network namespace (curl)."""
        curl = require_tool("curl", "apt-get install curl")
        cmd = [curl, "-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--max-time", str(timeout)]
        for k, v in (headers or {}).items():
            cmd += ["-H", f"{k}: {v}"]
        if data is not None:
            cmd += ["--data-binary", "@-"]
        if cafile:
            cmd += ["--cacert", cafile]
        proc = subprocess.run([*self.wrap(mount=False), *cmd, url], input=data, capture_output=True,
                              timeout=timeout + 5)
        assert proc.returncode == 0, f"curl {method} {url}: {proc.stderr.decode(errors='replace')}"
        body, _, code = proc.stdout.rpartition(b"\n")
        return int(code), body

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.holder.kill()
        self.holder.wait()


# --- what kubelet does for the injected pod -----------------------------------------------------

def pod_field(pod: dict, path: str, uid: str) -> str:
    """A downward-API field, as kubelet resolves it (the API server assigns the uid)."""
    meta = pod["metadata"]
    if path == "metadata.uid":
        return uid
    if path in ("metadata.name", "metadata.namespace"):
        return meta[path.split(".", 1)[1]]
    if match := re.fullmatch(r"metadata\.annotations\['([^']+)'\]", path):
        return meta.get("annotations", {})[match.group(1)]
    raise AssertionError(f"the end-to-end harness does not resolve the downward-API field {path}")


def container_env(pod: dict, container: dict, uid: str, service: dict) -> dict[str, str]:
    """The container's environment as kubelet gives it: its env with downward-API values
    resolved, and the service variables of the cluster's `kubernetes` Service."""
    env = dict(service)
    assert not container.get("envFrom"), f"{container['name']}: envFrom is not resolved here"
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e.get("valueFrom", {}).get("fieldRef")
            assert ref, f"{container['name']}: {e['name']} has a valueFrom the harness cannot resolve"
            env[e["name"]] = pod_field(pod, ref["fieldPath"], uid)
    return env


def jwt_audience(token: str):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("aud")


def volume_sources(pod: dict, desc: dict, uid: str, root: Path, tokens: str) -> dict[str, Path]:
    """Volume name -> a directory with what kubelet would put in it: a projected token is
    fakecloud's token for that audience (kubelet would mint one; here a link to `tokens`/CLOUD/
    token, where the pod sees fakecloud's token directories), the cluster CA is the CA that
    signed fakecloud's proxymux, downward-API files are the pod's fields, an emptyDir is empty,
    group-owned by the pod's fsGroup and setgid (kubelet's SetVolumeOwnership)."""
    fs_group = pod["spec"].get("securityContext", {}).get("fsGroup")
    by_audience = {m.AUDIENCE["aws"]: "aws", m.AUDIENCE["azure"]: "azure", desc["gcp"]["audience"]: "gcp"}
    out = {}
    for vol in pod["spec"].get("volumes", []):
        path = root / vol["name"]
        path.mkdir(parents=True)
        out[vol["name"]] = path
        if "emptyDir" in vol:
            if fs_group is not None:
                os.chown(path, 0, fs_group)
            path.chmod(0o2777 if fs_group is not None else 0o777)
            continue
        if "projected" in vol:
            sources = vol["projected"]["sources"]
        elif "downwardAPI" in vol:
            sources = [{"downwardAPI": vol["downwardAPI"]}]
        else:
            raise AssertionError(f"the end-to-end harness does not provide volume {vol['name']}: {vol}")
        for src in sources:
            if tok := src.get("serviceAccountToken"):
                audience = tok.get("audience")
                cloud = by_audience.get(audience, "oci" if audience is None else None)
                assert cloud, f"volume {vol['name']} asks for a token for {audience!r}, which no cloud accepts"
                token = Path(desc["tokens"][cloud])
                if audience is not None:
                    aud = jwt_audience(token.read_text())
                    aud = aud if isinstance(aud, list) else [aud]
                    # fakecloud mints GCP's for the provider's name with `https:`; STS takes it
                    # with or without (docs/gcp.md, "Subject JWT checks"), as the projection asks.
                    assert audience in aud or (cloud == "gcp" and "https:" + audience in aud), \
                        f"fakecloud's {cloud} token is for {aud}, not {audience}"
                (path / tok["path"]).symlink_to(f"{tokens}/{cloud}/token")  # follows fakecloud's `..data` swaps
            elif cm := src.get("configMap"):
                assert cm["name"] == "kube-root-ca.crt", f"no ConfigMap {cm['name']} in this cluster"
                for item in cm["items"]:
                    assert item["key"] == "ca.crt"
                    shutil.copy(desc["oci"]["ca_path"], path / item["path"])
            elif dapi := src.get("downwardAPI"):
                for item in dapi["items"]:
                    (path / item["path"]).write_text(pod_field(pod, item["fieldRef"]["fieldPath"], uid))
            else:
                raise AssertionError(f"volume {vol['name']}: unsupported projection {src}")
    return out


def run_as(pod: dict, container: dict, image_user: int = 0) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups) kubelet gives the container: its securityContext, else
    the pod's, else the image's user; fsGroup and supplementalGroups as extra groups."""
    own, pod_sc = container.get("securityContext", {}), pod["spec"].get("securityContext", {})
    uid = own.get("runAsUser", pod_sc.get("runAsUser", image_user))
    gid = own.get("runAsGroup", pod_sc.get("runAsGroup", image_user))
    groups = ([pod_sc["fsGroup"]] if "fsGroup" in pod_sc else []) + pod_sc.get("supplementalGroups", [])
    return uid, gid, groups


def setpriv(uid: int, gid: int, groups: list[int]) -> list[str]:
    """The command prefix that drops to a container's user: no capabilities, no_new_privs
    (allowPrivilegeEscalation: false)."""
    exe = require_tool("setpriv", "apt-get install util-linux")
    return [exe, f"--reuid={uid}", f"--regid={gid}", f"--groups={','.join(map(str, groups or [gid]))}",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]


def expose_script(paths: list[Path], stash: str) -> list[str]:
    """Shell commands (for a private mount namespace) that make `paths` reachable by any user
    where an ancestor directory is not (a root-only HOME holding the Python interpreter): each
    path is bind-mounted aside, a tmpfs covers the closed ancestor, the path is bound back."""
    q = shlex.quote
    closed: dict[Path, list[Path]] = {}
    for path in paths:
        for ancestor in [*reversed(path.parents), path]:
            if not os.stat(ancestor).st_mode & 0o001:
                closed.setdefault(ancestor, []).append(path)
                break
    cmds, n = [], 0
    for ancestor, inside in closed.items():
        for path in inside:
            n += 1
            cmds += [f"mkdir -p {stash}/{n}", f"mount --bind {q(str(path))} {stash}/{n}"]
        cmds.append(f"mount -t tmpfs -o mode=0755 exposed {q(str(ancestor))}")
        for i, path in enumerate(inside, start=n - len(inside) + 1):
            cmds += [f"mkdir -p {q(str(path))}", f"mount --bind {stash}/{i} {q(str(path))}"]
    return cmds
