"""AWS: boto3's default chain finds the sidecar through AWS_CONTAINER_CREDENTIALS_FULL_URI."""

import json

import boto3

creds = boto3.Session().get_credentials()
frozen = creds.get_frozen_credentials()
print(json.dumps({
    "cloud": "aws",
    "provider": creds.method,                      # "container-role" through the sidecar
    "access_key_suffix": frozen.access_key[-4:],
    "expires": str(getattr(creds, "_expiry_time", "")),
}))
