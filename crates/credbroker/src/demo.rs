//! `credbroker demo`: the emulated clouds and the broker in one process, no network needed.

use std::path::PathBuf;
use std::time::Duration;

use fakecloud::{Cloudscape, CloudscapeOptions};
use tokio::sync::watch;

use crate::app::{self, AppError};
use crate::cli::{CommonArgs, DemoArgs, ServeArgs};
use crate::clouds::{CloudFlags, aws, azure, gcp, oci};
use crate::config::Env;
use crate::secret::Secret;

pub async fn run(args: DemoArgs, mut shutdown: watch::Receiver<bool>) -> Result<(), AppError> {
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("credbroker-demo-{}", std::process::id()))
    });
    let scape = Cloudscape::start(CloudscapeOptions {
        state_dir: state_dir.clone(),
        rotate_every: Some(Duration::from_secs(args.rotate_every.max(1))),
        ..CloudscapeOptions::default()
    })
    .await
    .map_err(|e| {
        AppError::Runtime(format!(
            "cannot start the emulated clouds in {}: {e}",
            state_dir.display()
        ))
    })?;

    let mut env = Env::default();
    env.set("AWS_ROLE_ARN", fakecloud::aws::DEMO_ROLE_ARN);
    env.set(
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        scape.aws_token.path().display().to_string(),
    );
    env.set("AWS_ENDPOINT_URL_STS", scape.sts.url());
    env.set("AWS_REGION", fakecloud::aws::DEFAULT_REGION);
    env.set("AWS_ROLE_SESSION_NAME", "credbroker-demo");
    env.set(
        "GOOGLE_APPLICATION_CREDENTIALS",
        scape.gcp_credentials.display().to_string(),
    );
    env.set("GOOGLE_CLOUD_PROJECT", fakecloud::gcp::DEMO_PROJECT_ID);
    env.set("AZURE_CLIENT_ID", fakecloud::azure::DEMO_CLIENT_ID);
    env.set("AZURE_TENANT_ID", fakecloud::azure::DEMO_TENANT_ID);
    env.set(
        "AZURE_FEDERATED_TOKEN_FILE",
        scape.azure_token.path().display().to_string(),
    );
    env.set("AZURE_AUTHORITY_HOST", format!("{}/", scape.entra.url()));
    // The demo prints the env itself, in the same process, so a random value works here.
    let identity_header = {
        let raw: [u8; 24] = rand::random();
        Secret::new(base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            raw,
        ))
    };
    // What an OKE pod has: kubelet's service variables pointing at proxymux, the cluster CA.
    env.set(
        "OCI_RESOURCE_PRINCIPAL_REGION",
        fakecloud::oci::DEFAULT_REGION,
    );
    env.set("KUBERNETES_SERVICE_HOST", scape.proxymux.host().to_string());
    env.set(
        "KUBERNETES_SERVICE_PORT_PROXYMUX",
        scape.proxymux.port().to_string(),
    );
    env.set(
        "OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH",
        scape.oci_ca_path.display().to_string(),
    );
    let oci_dir: PathBuf = state_dir.join("oci-files");

    let aws_auth: PathBuf = state_dir.join("aws-auth-token");
    let serve_args = ServeArgs {
        common: CommonArgs {
            listen: args.listen,
            allow_non_loopback: false,
            ops_listen: args.ops_listen,
            upstream_ca_file: None,
            group_readable_files: false,
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            addr_file: None,
        },
        clouds: CloudFlags {
            aws: aws::Flags {
                aws_auth_token_file: Some(aws_auth.clone()),
                ..aws::Flags::default()
            },
            gcp: gcp::Flags {
                gcp_cluster_name: Some("credbroker-demo".into()),
                gcp_cluster_location: Some("us-central1".into()),
                gcp_zone: Some("us-central1-a".into()),
                ..gcp::Flags::default()
            },
            azure: azure::Flags {
                azure_identity_header: Some(identity_header.clone()),
                ..azure::Flags::default()
            },
            oci: oci::Flags {
                oci_output_dir: Some(oci_dir.clone()),
                oci_token_file: scape.oci_token.path(),
            },
        },
    };

    let bound = app::bind(serve_args.clone(), &env).await?;
    let (listen, ops) = (bound.creds_addr, bound.ops_addr);
    let mut shown = serve_args.clone();
    shown.common.listen = listen;
    let exports = app::env_lines(&shown, &env)?;
    println!(
        "credbroker demo: emulated clouds under {}",
        state_dir.display()
    );
    println!("  OIDC issuer   {}", scape.issuer_url());
    println!(
        "  AWS STS       {}  (role {})",
        scape.sts.url(),
        fakecloud::aws::DEMO_ROLE_ARN
    );
    println!(
        "  GCP STS + IAM {}  (service account {})",
        scape.gcp.url(),
        fakecloud::gcp::DEMO_SERVICE_ACCOUNT
    );
    println!(
        "  Entra ID      {}  (tenant {}, client {})",
        scape.entra.url(),
        fakecloud::azure::DEMO_TENANT_ID,
        fakecloud::azure::DEMO_CLIENT_ID
    );
    println!(
        "  OCI proxymux  {}  (cluster CA {}); OCI API {}",
        scape.proxymux.url(),
        scape.oci_ca_path.display(),
        scape.oci_api.url()
    );
    println!(
        "  tokens rotate every {} s, kubelet-style",
        args.rotate_every
    );
    println!("  broker        credentials on {listen}, ops on {ops}");
    println!();
    print!("{exports}");
    println!();
    println!("# Check it (another terminal):");
    println!("curl -s http://{ops}/readyz");
    println!(
        "curl -s -H \"Authorization: $(cat {})\" http://{listen}/v1/credentials",
        aws_auth.display()
    );
    println!(
        "TOKEN=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://{listen}/latest/api/token) && \
         curl -s -H \"X-aws-ec2-metadata-token: $TOKEN\" http://{listen}/latest/meta-data/iam/security-credentials/{}",
        fakecloud::aws::DEMO_ROLE_ARN
            .rsplit('/')
            .next()
            .unwrap_or_default()
    );
    println!(
        "# with boto3 installed: env -i PATH=\"$PATH\" AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{listen}/v1/credentials \
         AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={} AWS_REGION=us-east-1 python3 -c 'import boto3; print(boto3.Session().get_credentials().get_frozen_credentials().access_key)'",
        aws_auth.display()
    );
    println!(
        "curl -s -H 'Metadata-Flavor: Google' http://{listen}/computeMetadata/v1/instance/service-accounts/default/token"
    );
    println!(
        "# with google-auth installed: env -i PATH=\"$PATH\" GCE_METADATA_HOST={listen} GCE_METADATA_IP={listen} \
         python3 -c 'import google.auth, google.auth.transport.requests as r; c, p = google.auth.default(); c.refresh(r.Request()); print(p, c.token[:12])'"
    );
    println!(
        "curl -s -H 'Metadata: true' 'http://{listen}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/'"
    );
    println!(
        "curl -s -H 'X-IDENTITY-HEADER: {}' 'http://{listen}/msi/token?api-version=2019-08-01&resource=https://vault.azure.net'",
        identity_header.expose()
    );
    println!(
        "# with azure-identity installed: env -i PATH=\"$PATH\" AZURE_POD_IDENTITY_AUTHORITY_HOST=http://{listen} python3 -c \
         'from azure.identity import ManagedIdentityCredential as M; print(M().get_token(\"https://management.azure.com/.default\").expires_on)'"
    );
    println!(
        "ls -l {dir} && curl -s http://{ops}/readyz/oci",
        dir = oci_dir.display()
    );
    println!(
        "# with the oci SDK installed: env -i PATH=\"$PATH\" OCI_RESOURCE_PRINCIPAL_VERSION=2.2 OCI_RESOURCE_PRINCIPAL_RPST={dir}/rpst \
         OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM={dir}/private.pem OCI_RESOURCE_PRINCIPAL_REGION={region} python3 -c 'import oci; \
         s = oci.auth.signers.get_resource_principals_signer(); \
         print(oci.object_storage.ObjectStorageClient({{}}, signer=s, service_endpoint=\"{api}\").get_namespace().data)'",
        dir = oci_dir.display(),
        region = fakecloud::oci::DEFAULT_REGION,
        api = scape.oci_api.url()
    );
    println!();
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let (stop_tx, stop_rx) = watch::channel(false);
    let exit_after = args.exit_after;
    tokio::spawn(async move {
        match exit_after {
            Some(secs) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                    _ = crate::http::server::stopped(&mut shutdown) => {}
                }
            }
            None => {
                crate::http::server::stopped(&mut shutdown).await;
            }
        }
        let _ = stop_tx.send(true);
    });
    bound.run(stop_rx).await;
    drop(scape);
    Ok(())
}
