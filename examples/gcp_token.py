"""GCP: google.auth.default() finds the GCE metadata server the sidecar serves (GCE_METADATA_HOST)."""

import json

import google.auth
import google.auth.transport.requests

credentials, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
credentials.refresh(google.auth.transport.requests.Request())
print(json.dumps({
    "cloud": "gcp",
    "provider": type(credentials).__module__,      # google.auth.compute_engine.credentials
    "project": project,
    "service_account": credentials.service_account_email,
    "expires": credentials.expiry.isoformat() if credentials.expiry else None,
}))
