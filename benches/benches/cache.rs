//! The credential cache under contention: N tasks (on the broker's 2 runtime threads) reading
//! one held credential at once, through the pinned-slot path (AWS: `Slot::get`) and the
//! dynamic-key path (GCP, Azure: `Cache::get`, a map lookup under a mutex first). Reported
//! time is wall time per read with all N tasks reading, i.e. the inverse of throughput.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use credbroker::clock::SystemClock;
use credbroker::clouds::Cloud;
use credbroker::clouds::aws::Aws;
use credbroker::exchange::{Exchange, ExchangeError, Fresh};
use credbroker::metrics::Metrics;
use credbroker::refresh::Cache;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// An upstream that answers at once with a one-hour credential.
struct Instantly;

impl Exchange<String> for Instantly {
    type Credential = Vec<u8>;

    async fn exchange(&self, _key: &String) -> Result<Fresh<Vec<u8>>, ExchangeError> {
        Ok(Fresh {
            value: vec![b'x'; 700],
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        })
    }
}

const WAIT: Duration = Duration::from_millis(900);

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let key = "arn:aws:iam::123456789012:role/bench".to_string();
    let (cache, slot) = rt.block_on(async {
        let cache = Cache::builder("bench", Instantly)
            .sdk_window(<Aws as Cloud>::SDK_WINDOW)
            .clock(Arc::new(SystemClock))
            .metrics(Arc::new(Metrics::new()))
            .build();
        let slot = cache.pin(key.clone());
        slot.get(Duration::from_secs(5))
            .await
            .expect("first exchange");
        (cache, slot)
    });

    let mut group = c.benchmark_group("cache_contention");
    group.throughput(Throughput::Elements(1));
    for tasks in [1usize, 2, 16] {
        group.bench_with_input(
            BenchmarkId::new("pinned Slot::get", tasks),
            &tasks,
            |b, &tasks| {
                b.iter_custom(|iters| {
                    let per_task = iters.div_ceil(tasks as u64);
                    rt.block_on(async {
                        let start = Instant::now();
                        let handles: Vec<_> = (0..tasks)
                            .map(|_| {
                                let slot = slot.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per_task {
                                        black_box(slot.get(WAIT).await.is_ok());
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.expect("reader task");
                        }
                        start.elapsed()
                    })
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("dynamic Cache::get", tasks),
            &tasks,
            |b, &tasks| {
                b.iter_custom(|iters| {
                    let per_task = iters.div_ceil(tasks as u64);
                    rt.block_on(async {
                        let start = Instant::now();
                        let handles: Vec<_> = (0..tasks)
                            .map(|_| {
                                let cache = cache.clone();
                                let key = key.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per_task {
                                        black_box(cache.get(&key, WAIT).await.is_ok());
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.expect("reader task");
                        }
                        start.elapsed()
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = contention
}
criterion_main!(benches);
