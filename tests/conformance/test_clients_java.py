"""Java google-auth-library 0.18.0 (Debian 12's libgoogle-auth-java), with only an application
container's environment, must get exactly the access token the fake Google IAM issued. It reads
GCE_METADATA_HOST and probes `GET /`, checking the `Metadata-Flavor: Google` response header
(ComputeEngineCredentials.getMetadataServerUrl, runningOnComputeEngine).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import (app_subprocess_env, gcp_issued_tokens,
                      require_tool, surface_count)

DEBIAN_JAVA = "/usr/share/java"
JAVA_JARS = ["google-auth-library-oauth2-http", "google-auth-library-credentials", "google-http-client",
             "google-http-client-jackson2", "google-http-client-gson", "guava", "opencensus-api",
             "opencensus-contrib-http-util", "jackson-core", "gson", "httpclient", "httpcore",
             "commons-logging", "commons-codec", "auto-value-annotations", "grpc-context"]
JAVA_HINT = "apt-get install libgoogle-auth-java (Debian 12: 0.18.0-2) and a JDK (java 11+)"

JAVA = """
import com.google.auth.oauth2.ComputeEngineCredentials;
import com.google.auth.oauth2.GoogleCredentials;

public class GAuth {
    public static void main(String[] args) throws Exception {
        GoogleCredentials creds = GoogleCredentials.getApplicationDefault();
        creds.refresh();
        System.out.println("{\\"type\\": \\"" + creds.getClass().getName() + "\\", \\"token\\": \\""
            + creds.getAccessToken().getTokenValue() + "\\", \\"account\\": \\""
            + ((ComputeEngineCredentials) creds).getAccount() + "\\"}");
    }
}
"""

def assert_default_token(fakecloud, token: str) -> None:
    issued = gcp_issued_tokens(fakecloud).get(token)
    assert issued is not None, "the fake issued no such token"
    assert issued["service_account"] == fakecloud.desc["gcp"]["service_account"]
    assert "https://www.googleapis.com/auth/cloud-platform" in issued["scopes"]


def java_classpath() -> str:
    jars = [Path(DEBIAN_JAVA) / f"{name}.jar" for name in JAVA_JARS]
    for jar in jars:
        if not jar.is_file():
            pytest.fail(f"{jar} is missing: {JAVA_HINT} (scripts/test installs it)")
    return ":".join(map(str, jars))


def test_java_google_auth_0_18_from_debian(fakecloud, gcp_broker, tmp_path):
    java = require_tool("/usr/bin/java", JAVA_HINT)
    source = tmp_path / "GAuth.java"
    source.write_text(JAVA)
    env = gcp_broker.app_env()
    before = surface_count(gcp_broker, "gcp-metadata")
    proc = subprocess.run([java, "-cp", java_classpath(), str(source)], env=app_subprocess_env(env, tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["type"] == "com.google.auth.oauth2.ComputeEngineCredentials"
    assert got["account"] == fakecloud.desc["gcp"]["service_account"]
    assert_default_token(fakecloud, got["token"])
    assert surface_count(gcp_broker, "gcp-metadata") > before
