"""OCI: the resource principal signer reads the sidecar's files (OCI_RESOURCE_PRINCIPAL_VERSION=2.2,
OCI_RESOURCE_PRINCIPAL_RPST, OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM, OCI_RESOURCE_PRINCIPAL_REGION)."""

import json

import oci

signer = oci.auth.signers.get_resource_principals_signer()
print(json.dumps({
    "cloud": "oci",
    "provider": type(signer).__name__,
    "region": signer.region,
    "tenancy": signer.get_claim("res_tenant"),
}))
