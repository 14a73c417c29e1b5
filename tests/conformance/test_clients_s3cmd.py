"""s3cmd 2.3.0 (Debian 12): its own AWS credential code cannot reach the broker (see the test)."""

from __future__ import annotations

from conftest import connects_in_empty_netns, require_tool, with_literal_aws_token


def test_s3cmd_cannot_be_pointed_at_the_broker(aws_broker, tmp_path):
    """s3cmd 2.3.0 (Debian 12) has its own credential code with neither container credentials nor a
    configurable IMDS: S3/Config.py `Config.role_config` uses STS for AWS_ROLE_ARN, else
    `httplib.HTTPConnection(host='169.254.169.254')`. Shown with the whole `credbroker env`
    output, in an empty network namespace."""
    exe = require_tool("/usr/bin/s3cmd", "apt-get install s3cmd (Debian 12: 2.3.0-1)")
    config = tmp_path / "s3cfg"
    config.write_text("[default]\nhost_base = 127.0.0.1:9\nhost_bucket = 127.0.0.1:9\nuse_https = False\n")
    out, connects = connects_in_empty_netns([exe, "-c", str(config), "ls", "s3://bucket"],
                                            with_literal_aws_token(aws_broker.app_env()), tmp_path)
    assert out.returncode != 0
    assert any('inet_addr("169.254.169.254")' in l and "htons(80)" in l for l in connects), connects
    port = aws_broker.creds_addr.rsplit(":", 1)[1]
    assert not any(f"htons({port})" in l for l in connects), connects
