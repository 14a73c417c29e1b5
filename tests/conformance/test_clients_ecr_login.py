"""amazon-ecr-credential-helper (Debian 12's 0.6.0; Go, aws-sdk-go-v2: config 1.17.10, credentials
1.12.23, feature/ec2/imds 1.12.19, service/ecr 1.17.20), the docker credential helper
`docker-credential-ecr-login`, with only an application container's environment, gets a registry
password from a recording ECR fake (GetAuthorizationToken, SigV4 verified with the issued secret).

ECR's endpoint is `https://api.ecr.us-east-1.amazonaws.com` with no override in this version, so the
whole scenario runs in a private network and mount namespace: loopback only, /etc/hosts mapping that
name to 127.0.0.1, the fake on port 443 with a certificate the helper trusts through SSL_CERT_FILE.

aws-sdk-go-v2 config 1.17.10 reads only the literal AWS_CONTAINER_AUTHORIZATION_TOKEN and, with
AWS_CONTAINER_CREDENTIALS_FULL_URI set, has no IMDS fallback (config/resolve_credentials.go
`resolveCredsFromProfile`: one `switch` case, `resolveLocalHTTPCredProvider(...,
envConfig.ContainerAuthorizationToken, ...)`; config/env_config.go
`awsContainerPProviderAuthorizationEnvVar`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (AWS_AUTH_TOKEN, sidecar_env, app_subprocess_env, assert_s3_signed_with_issued, aws_issued_by_key, require_tool, start_broker, start_fakecloud, status_count, surface_count,
                      with_literal_aws_token, with_only_the_token_file)
from recording_fakes import FakeECR, LoopbackCert

HELPER = "/usr/bin/docker-credential-ecr-login"
HINT = "apt-get install amazon-ecr-credential-helper (Debian 12: 0.6.0-1+b2)"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
ECR_API = "api.ecr.us-east-1.amazonaws.com"


def inside_private_netns(workdir: str) -> None:
    """fakecloud, the broker, the ECR fake on 127.0.0.1:443 and the helper, three ways; prints
    what the outer tests check."""
    work = Path(workdir)
    fake = start_fakecloud(work / "fakecloud")
    broker = start_broker(work / "broker", {**sidecar_env(fake, "aws"), "CREDBROKER_AWS_AUTH_TOKEN": AWS_AUTH_TOKEN})
    cert = LoopbackCert(work, dns_names=(ECR_API,))
    results = {}
    try:
        full = broker.app_env()
        scenarios = {
            "container_literal": with_literal_aws_token(full),
            "env_only": with_only_the_token_file(full),
            "imds": {k: full[k] for k in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_REGION")},
        }
        for name, env in scenarios.items():
            before = {s: (surface_count(broker, s), status_count(broker, s, 401))
                      for s in ("aws-container", "aws-imds")}
            with FakeECR(lambda akid: aws_issued_by_key(fake, akid), tls=cert) as ecr:
                home = work / name
                home.mkdir()
                out = subprocess.run([HELPER, "get"], input=REGISTRY,
                                     env={**app_subprocess_env(env, home), "SSL_CERT_FILE": cert.cert_path,
                                          "AWS_ECR_DISABLE_CACHE": "true"},
                                     capture_output=True, text=True, timeout=120)
                signed = None
                if ecr.records:
                    try:
                        assert_s3_signed_with_issued(fake, ecr)
                        signed = True
                    except AssertionError as err:
                        signed = str(err)
                results[name] = {
                    "rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr[-2000:],
                    # The helper logs there, not on stderr.
                    "log": log.read_text()[-2000:] if (log := home / ".ecr" / "log" / "ecr-login.log").exists() else "",
                    "passwords": ecr.passwords, "requests": len(ecr.records), "signed_with_issued": signed,
                    "surfaces": {s: [surface_count(broker, s) - b[0], status_count(broker, s, 401) - b[1]]
                                 for s, b in before.items()},
                }
    finally:
        broker.stop()
        fake.stop()
    print(json.dumps(results))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    require_tool(HELPER, HINT)
    work = tmp_path_factory.mktemp("ecr-netns")
    hosts = work / "hosts"
    hosts.write_text(f"127.0.0.1 localhost {ECR_API}\n")
    ip = shutil.which("ip") or "/usr/sbin/ip"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"import test_clients_ecr_login as t; t.inside_private_netns({str(work)!r})"
    script = f'{ip} link set lo up && mount --bind "$0" /etc/hosts && exec "$1" -c "$2"'
    out = subprocess.run(["unshare", "-nm", "sh", "-c", script, str(hosts), sys.executable, code],
                         capture_output=True, text=True, timeout=300, env={**os.environ})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ecr_login_through_the_container_endpoint(results):
    r = results["container_literal"]
    assert r["rc"] == 0, r["stderr"]
    got = json.loads(r["stdout"])
    assert got["Username"] == "AWS" and got["Secret"] == r["passwords"][-1]
    assert r["signed_with_issued"] is True
    assert r["surfaces"]["aws-container"][0] > 0 and r["surfaces"]["aws-imds"][0] == 0


def test_ecr_login_with_only_the_token_file_fails_as_documented(results):
    r = results["env_only"]
    assert r["rc"] != 0
    assert "failed to load credentials, Unauthorized: the Authorization header is required" in r["log"], r["log"]
    assert r["requests"] == 0, "nothing may be signed without credentials"
    assert r["surfaces"]["aws-container"][1] > 0, "the container endpoint answered 401"
    assert r["surfaces"]["aws-imds"] == [0, 0], "no IMDS fallback"


def test_ecr_login_through_imdsv2(results):
    r = results["imds"]
    assert r["rc"] == 0, r["stderr"]
    got = json.loads(r["stdout"])
    assert got["Secret"] == r["passwords"][-1]
    assert r["signed_with_issued"] is True
    assert r["surfaces"]["aws-imds"][0] > 0 and r["surfaces"]["aws-container"] == [0, 0]
