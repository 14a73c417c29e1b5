"""The AWS SDK for Ruby (Debian 12's ruby-aws-sdk-core 3.168.1, ruby-aws-sdk-s3 1.117.2), with only
an application container's environment, cannot get credentials from the broker.

aws-sdk-core 3.168.1 has no AWS_CONTAINER_CREDENTIALS_FULL_URI support: its chain takes
ECSCredentials only for AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, else InstanceProfileCredentials
(lib/aws-sdk-core/credential_provider_chain.rb `instance_profile_credentials`), which honours
AWS_EC2_METADATA_SERVICE_ENDPOINT (instance_profile_credentials.rb `resolve_endpoint`). With
`credbroker env` it therefore goes for IMDSv2 and never asks the container endpoint, but it cannot
reach the broker: `@port = options[:port] || 80` (instance_profile_credentials.rb `initialize`)
and `Net::HTTP.new(uri.hostname || @endpoint, @port || uri.port)` (`open_connection`) always
connect to port 80 of the endpoint's host, whatever port AWS_EC2_METADATA_SERVICE_ENDPOINT names.
A broker listening on 127.0.0.1:80 serves it (second test, in a private network namespace where
port 80 is free).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import (sidecar_env, app_subprocess_env, assert_s3_signed_with_issued, aws_issued_by_key, connects_in_empty_netns, require_tool, start_broker, start_fakecloud, surface_count)
from recording_fakes import FakeS3

HINT = "apt-get install ruby-aws-sdk-s3 (Debian 12: 1.117.2-1, with ruby-aws-sdk-core 3.168.1-2)"

RUBY = """
require 'aws-sdk-s3'
require 'json'
s3 = Aws::S3::Client.new(endpoint: ARGV[0], force_path_style: true)
s3.put_object(bucket: 'bucket', key: 'dir/hello.txt', body: "hello from ruby\\n")
keys = s3.list_objects_v2(bucket: 'bucket').contents.map(&:key)
body = s3.get_object(bucket: 'bucket', key: 'dir/hello.txt').body.read
puts JSON.dump({keys: keys, body: body, provider: s3.config.credentials.class.name,
                core: Aws::CORE_GEM_VERSION})
"""


def test_ruby_sdk_takes_imds_from_credbroker_env_but_always_port_80(aws_broker, tmp_path):
    """The failure, shown in an empty network namespace: the SDK connects to 127.0.0.1:80 (the
    endpoint's host with port 80), never to the broker's port; the S3 call then has no credentials."""
    ruby = require_tool("/usr/bin/ruby", HINT)
    env = aws_broker.app_env()
    out, connects = connects_in_empty_netns([ruby, "-e", RUBY, "http://127.0.0.1:9"], env, tmp_path)
    assert out.returncode != 0
    assert "Aws::Errors::MissingCredentialsError" in out.stderr, out.stderr
    port = aws_broker.creds_addr.rsplit(":", 1)[1]
    assert any('inet_addr("127.0.0.1")' in l and "htons(80)" in l for l in connects), connects
    assert not any(f"htons({port})" in l for l in connects), connects
    assert not any("169.254" in l for l in connects), connects


def inside_private_netns(workdir: str) -> None:
    """Runs in `unshare -n` (see below): fakecloud, a broker on 127.0.0.1:80, the recording S3 and
    the Ruby SDK with `credbroker env`; prints what the outer test checks."""
    work = Path(workdir)
    fake = start_fakecloud(work / "fakecloud")
    broker = start_broker(work / "broker", sidecar_env(fake, "aws"), listen="127.0.0.1:80")
    try:
        env = broker.app_env()
        with FakeS3(lambda akid: aws_issued_by_key(fake, akid)) as s3:
            out = subprocess.run(["/usr/bin/ruby", "-e", RUBY, s3.url], env=app_subprocess_env(env, work),
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            assert_s3_signed_with_issued(fake, s3)
        print(json.dumps({"ruby": json.loads(out.stdout.strip().splitlines()[-1]), "env": env,
                          "imds_200": surface_count(broker, "aws-imds")}))
    finally:
        broker.stop()
        fake.stop()


def test_ruby_sdk_works_with_the_broker_on_port_80(tmp_path):
    require_tool("/usr/bin/ruby", HINT)
    ip = shutil.which("ip") or "/usr/sbin/ip"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"import test_clients_ruby as t; t.inside_private_netns({str(tmp_path)!r})"
    out = subprocess.run(["unshare", "-n", "sh", "-c", f'{ip} link set lo up && exec "$0" -c "$1"',
                          sys.executable, code], capture_output=True, text=True, timeout=180,
                         env={**os.environ})
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["env"]["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == "http://127.0.0.1:80"
    assert got["ruby"] == {"keys": ["dir/hello.txt"], "body": "hello from ruby\n",
                           "provider": "Aws::InstanceProfileCredentials", "core": "3.168.1"}
    assert got["imds_200"] > 0
