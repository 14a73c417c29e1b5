//! Serving a cached credential on each surface without a socket: request head → router →
//! guard → cache lookup → response bytes, plus the request metrics — everything the broker
//! does per request except hyper's parsing and writing (which the load benchmark's floor
//! measures). The clouds are started exactly as `credbroker serve` starts them, against the
//! in-process fakes, and benchmarked once every credential is held.

use std::hint::black_box;
use std::time::Duration;

use credbroker::http::server::Handler;
use credbroker_benches::inproc::{InProcess, body_of};
use credbroker_benches::setup::Clouds;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn serve_cached(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (broker, specs) = rt.block_on(async {
        let broker = InProcess::start(Clouds::ALL).await.expect("broker starts");
        broker
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("broker ready");
        let specs = broker.specs().await.expect("request specs");
        for (target, spec) in &specs {
            let (status, body) = body_of(broker.call(spec).await).await;
            assert_eq!(
                status,
                200,
                "{}: {}",
                target.name(),
                String::from_utf8_lossy(&body).len()
            );
        }
        (broker, specs)
    });

    let mut group = c.benchmark_group("serve_cached");
    group.throughput(Throughput::Elements(1));
    for (target, spec) in &specs {
        let parts = spec.parts();
        let router = &broker.router;
        group.bench_function(target.name(), |b| {
            b.to_async(&rt).iter(|| async {
                let (status, body) = body_of(router.call(parts.clone()).await).await;
                black_box((status, body.len()))
            })
        });
    }
    // What cloning the request head costs (included above; the server moves it instead).
    let parts = specs[0].1.parts();
    group.bench_function("request-head-clone (baseline)", |b| {
        b.iter(|| black_box(parts.clone()))
    });
    group.finish();
    drop(broker);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = serve_cached
}
criterion_main!(benches);
