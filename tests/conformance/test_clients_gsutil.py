"""gsutil 5.38 (PyPI; JSON API through google-apitools 0.5.35), with only an application
container's environment plus the boto config a GCE image ships (`[GoogleCompute] service_account =
default`, as /etc/boto.cfg on GCE), uploads, lists and reads objects in the recording GCS fake
(https: gsutil's JSON API is https only); every request must carry the token the fake Google IAM
issued through the broker.

gsutil takes GCE credentials only when the boto config has `[GoogleCompute] service_account`
(gslib/gcs_json_credentials.py `_HasGceCreds`); apitools then probes `GET http://$GCE_METADATA_ROOT/`
with `Metadata-Flavor: Google` and wants 200 and the `Metadata-Flavor: Google` response header
(apitools/base/py/util.py `DetectGce`), and reads `GCE_METADATA_ROOT` for every metadata call
(credentials_lib.py `_GceMetadataRequest`); the vendored oauth2client fetches the token from
`GCE_METADATA_HOST`, else `GCE_METADATA_ROOT` (oauth2client/contrib/_metadata.py).
"""

from __future__ import annotations

import subprocess

from conftest import (CLIENTS_VENV, app_subprocess_env, gcp_issued_tokens, offline_dns,
                      require_tool, status_count, surface_count)
from recording_fakes import FakeGCS, LoopbackCert

HINT = "pip install -r tests/conformance/clients/requirements.txt into target/clients-venv"


def boto_config(home, gcs: FakeGCS, cert: LoopbackCert) -> str:
    path = home / "boto.cfg"
    path.write_text(f"""[GoogleCompute]
service_account = default

[Credentials]
gs_json_host = 127.0.0.1
gs_json_port = {gcs.port}

[Boto]
ca_certificates_file = {cert.cert_path}
num_retries = 1

[GSUtil]
prefer_api = json
software_update_check_period = 0
""")
    return str(path)


def gsutil(args: list[str], env: dict, home) -> subprocess.CompletedProcess:
    exe = require_tool(CLIENTS_VENV / "bin" / "gsutil", HINT)
    return subprocess.run(offline_dns([exe, *args], home), env=app_subprocess_env(env, home),
                          capture_output=True, text=True, timeout=120)


def test_gsutil_through_the_metadata_server(fakecloud, gcp_broker, tmp_path):
    cert = LoopbackCert(tmp_path)
    before = surface_count(gcp_broker, "gcp-metadata")
    with FakeGCS(lambda token: token in gcp_issued_tokens(fakecloud), tls=cert) as gcs:
        env = {**gcp_broker.app_env(), "BOTO_CONFIG": boto_config(tmp_path, gcs, cert)}
        src = tmp_path / "hello.txt"
        src.write_text("hello from gsutil\n")
        out = gsutil(["cp", str(src), "gs://bucket/dir/hello.txt"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        out = gsutil(["ls", "-r", "gs://bucket"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        assert "gs://bucket/dir/hello.txt" in out.stdout.split(), out.stdout
        out = gsutil(["cat", "gs://bucket/dir/hello.txt"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "hello from gsutil\n"
    tokens = {r["bearer"] for r in gcs.records}
    assert len(tokens) == 1 and None not in tokens, gcs.records
    issued = gcp_issued_tokens(fakecloud)[tokens.pop()]
    assert issued["service_account"] == fakecloud.desc["gcp"]["service_account"]
    assert surface_count(gcp_broker, "gcp-metadata") > before


def test_gsutil_root_probe_needs_the_flavor_header_on_the_response(gcp_broker, tmp_path):
    """apitools' DetectGce, run from gsutil's venv against the broker: true only because `/`
    answers 200 with `Metadata-Flavor: Google` while the request carries the header."""
    python = require_tool(CLIENTS_VENV / "bin" / "python", HINT)
    code = "from apitools.base.py import util; print(util.DetectGce())"
    before = status_count(gcp_broker, "gcp-metadata", 200)
    out = subprocess.run(offline_dns([python, "-c", code], tmp_path),
                         env=app_subprocess_env(gcp_broker.app_env(), tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr
    assert status_count(gcp_broker, "gcp-metadata", 200) == before + 1
