//! Arbitrary request heads through the credential listener's router, with AWS, GCP and Azure
//! enabled: guards, routing, every surface's header and query handling. Upstreams point at a
//! closed loopback port, so exchanges fail at once and no network is used.
#![no_main]

use std::sync::OnceLock;

use clap::Parser;
use credbroker::cli::{Cli, Command};
use credbroker::config::Env;
use credbroker::surface::Router;
use libfuzzer_sys::fuzz_target;

/// A JWT-shaped token (unsigned content is fine: nothing verifies it here) expiring in 2100.
const TOKEN: &str = "eyJhbGciOiAiUlMyNTYiLCAia2lkIjogImsifQ.eyJpc3MiOiAiaHR0cHM6Ly9rOHMiLCAic3ViIjogInN5c3RlbTpzZXJ2aWNlYWNjb3VudDpkZWZhdWx0OmFwcCIsICJhdWQiOiBbInN0cy5hbWF6b25hd3MuY29tIl0sICJleHAiOiA0MTAyNDQ0ODAwLCAiaWF0IjogMTcwMDAwMDAwMH0.c2lnbmF0dXJl";
/// A loopback port nothing listens on (discard).
const CLOSED: &str = "http://127.0.0.1:9";

struct World {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("credbroker-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let account = dir.join("external_account.json");
        let doc = serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/pool/providers/prov",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{CLOSED}/v1/token"),
            "service_account_impersonation_url": format!("{CLOSED}/v1/projects/-/serviceAccounts/sa@proj.iam.gserviceaccount.com:generateAccessToken"),
            "credential_source": {"file": token.display().to_string(), "format": {"type": "text"}},
        });
        std::fs::write(&account, doc.to_string()).unwrap();
        let token = token.display().to_string();
        let env = Env::from_pairs([
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/fuzz"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.as_str()),
            ("AWS_ENDPOINT_URL_STS", CLOSED),
            ("AWS_REGION", "us-east-1"),
            ("GOOGLE_APPLICATION_CREDENTIALS", &account.display().to_string()),
            ("GOOGLE_CLOUD_PROJECT", "fuzz-project"),
            ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
            ("AZURE_TENANT_ID", "66666666-7777-8888-9999-000000000000"),
            ("AZURE_FEDERATED_TOKEN_FILE", token.as_str()),
            ("AZURE_AUTHORITY_HOST", "http://127.0.0.1:9/"),
        ]);
        let auth = dir.join("aws-auth-token").display().to_string();
        let cli = Cli::try_parse_from([
            "credbroker",
            "serve",
            "--aws-auth-token-file",
            &auth,
            "--azure-identity-header",
            "fuzz-identity-header-0123456789",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let router = runtime.block_on(async {
            let configs = credbroker::app::configure(&args, &env).unwrap();
            let started = credbroker::app::start(&args, configs).unwrap();
            let surfaces = started.clouds.iter().flat_map(|c| c.surfaces()).collect();
            Router::new(surfaces, started.metrics.clone())
        });
        World { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return;
    };
    let mut builder = http::Request::builder().method(method).uri(path);
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let (_, resp) = w.runtime.block_on(w.router.route(&parts));
    let status = resp.status().as_u16();
    // Nothing is servable (every upstream is closed): no request may get a credential.
    let path = parts.uri.path();
    let credential_route = (path.starts_with("/v1/credentials")
        || path.contains("security-credentials/")
        || path.ends_with("/token")
        || path.ends_with("/token/")
        || path.ends_with("/identity"))
        // IMDSv2 session tokens are not credentials.
        && !path.starts_with("/latest/api/");
    if credential_route && status == 200 {
        panic!("{method} {path} answered 200 without a credential");
    }
});
