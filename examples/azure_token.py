"""Azure: ManagedIdentityCredential finds the sidecar's IMDS (AZURE_POD_IDENTITY_AUTHORITY_HOST) or its
App Service endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER)."""

import json

from azure.identity import ManagedIdentityCredential

token = ManagedIdentityCredential().get_token("https://management.azure.com/.default")
print(json.dumps({"cloud": "azure", "provider": "ManagedIdentityCredential", "expires_on": token.expires_on}))
