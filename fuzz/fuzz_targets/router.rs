//! Arbitrary request heads through the credential listener's router, with every cloud enabled
//! as the emulated clouds configure a sidecar: guards, routing, every surface's header and query
//! handling. The emulators are stopped before the broker starts, so every exchange fails at once
//! (a closed loopback port) and no network is used.
#![no_main]

use std::sync::OnceLock;

use credbroker::cli::ServeArgs;
use credbroker::config::Env;
use credbroker::surface::Router;
use libfuzzer_sys::fuzz_target;

struct World {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("credbroker-fuzz-{}", std::process::id()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let router = runtime.block_on(async {
            let scape = fakecloud::Cloudscape::start(fakecloud::CloudscapeOptions::new(dir.join("cloud")))
                .await
                .unwrap();
            // The sidecar writes its files (the AWS Authorization value, OCI's) there; as a
            // pod's emptyDir would, the directory exists before it starts.
            std::fs::create_dir_all(dir.join("files")).unwrap();
            let sidecar = scape
                .sidecar(&fakecloud::sidecar::CLOUDS, &dir.join("files"))
                .unwrap();
            scape.shutdown().await;
            let (args, env) = ServeArgs::from_settings(sidecar, &[]).unwrap();
            let env = Env::from_pairs(env);
            let configs = credbroker::app::configure(&args, &env).unwrap();
            let started = credbroker::app::start(&args, &env, configs).unwrap();
            credbroker::app::router(&started).unwrap()
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
        // IMDSv2 session tokens are not credentials; "//latest/..." is the same resource as
        // "/latest/..." (the IMDS surface accepts what aws-sdk-go v1 sends for an endpoint
        // ending in "/").
        && !(path.starts_with("/latest/api/") || path.starts_with("//latest/api/"));
    if credential_route && status == 200 {
        panic!("{method} {path} answered 200 without a credential");
    }
});
