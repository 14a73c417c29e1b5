//! Prometheus metrics: exchanges, their latency, credential expiry, requests, token reloads.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    pub cloud: &'static str,
    pub outcome: &'static str,
}

impl ExchangeLabels {
    const OUTCOMES: [&'static str; 3] = ["success", "transient_error", "permanent_error"];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloudLabels {
    pub cloud: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub surface: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    cloud: &'static str,
    key: String,
}

/// Something that can report, at scrape time, how long its credentials have left.
pub trait ExpirySource: Send + Sync + 'static {
    /// `(cloud, key, seconds until expiry)` for every credential held.
    fn expiries(&self, out: &mut Vec<(&'static str, String, f64)>);
}

#[derive(Default)]
struct ExpiryCollector {
    sources: Mutex<Vec<std::sync::Weak<dyn ExpirySource>>>,
}

impl fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut rows = Vec::new();
        self.sources.lock().retain(|weak| match weak.upgrade() {
            Some(source) => {
                source.expiries(&mut rows);
                true
            }
            None => false,
        });
        let family = Family::<ExpiryLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (cloud, key, secs) in rows {
            family.get_or_create(&ExpiryLabels { cloud, key }).set(secs);
        }
        let metric = encoder.encode_descriptor(
            "credbroker_credential_expiry_seconds",
            "Seconds until the held credential expires, per cloud and identity key",
            None,
            MetricType::Gauge,
        )?;
        family.encode(metric)
    }
}

pub struct Metrics {
    registry: Registry,
    pub exchanges: Family<ExchangeLabels, Counter>,
    pub exchange_seconds: Family<CloudLabels, Histogram>,
    pub requests: Family<RequestLabels, Counter>,
    pub token_reloads: Family<TokenLabels, Counter>,
    expiry: Arc<ExpiryCollector>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        registry.register(
            "credbroker_exchanges",
            "Upstream token exchanges by cloud and outcome (success, transient_error, permanent_error)",
            exchanges.clone(),
        );
        let exchange_seconds = Family::<CloudLabels, Histogram>::new_with_constructor(
            exchange_histogram as fn() -> Histogram,
        );
        registry.register(
            "credbroker_exchange_duration_seconds",
            "Latency of one upstream token exchange",
            exchange_seconds.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "credbroker_requests",
            "Requests on the credential listener by surface and HTTP status",
            requests.clone(),
        );
        let token_reloads = Family::<TokenLabels, Counter>::default();
        registry.register(
            "credbroker_token_reloads",
            "Service-account token file re-reads that found new content, by outcome (valid, invalid)",
            token_reloads.clone(),
        );
        let expiry = Arc::new(ExpiryCollector::default());
        registry.register_collector(Box::new(expiry.clone()));
        // Known series start at zero, so dashboards and alerts see them before the first event
        // (Prometheus, "Instrumentation: avoid missing metrics").
        for outcome in ["valid", "invalid"] {
            token_reloads.get_or_create_owned(&TokenLabels { outcome });
        }
        Metrics {
            registry,
            exchanges,
            exchange_seconds,
            requests,
            token_reloads,
            expiry,
        }
    }

    pub fn add_expiry_source(&self, source: std::sync::Weak<dyn ExpirySource>) {
        self.expiry.sources.lock().push(source);
    }

    /// Creates a cloud's exchange series at zero (every outcome, and the latency histogram).
    pub fn declare_cloud(&self, cloud: &'static str) {
        for outcome in ExchangeLabels::OUTCOMES {
            self.exchanges
                .get_or_create_owned(&ExchangeLabels { cloud, outcome });
        }
        self.exchange_seconds
            .get_or_create_owned(&CloudLabels { cloud });
    }

    /// Creates a surface's request series at zero (its `200`, the status that must be there).
    pub fn declare_surface(&self, surface: &'static str) {
        self.requests.get_or_create_owned(&RequestLabels {
            surface,
            status: 200,
        });
    }

    pub fn request(&self, surface: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { surface, status })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn exchange_histogram() -> Histogram {
    // 5 ms … ~10 s: local fakes answer in milliseconds, real STS in tens to hundreds.
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl ExpirySource for Fixed {
        fn expiries(&self, out: &mut Vec<(&'static str, String, f64)>) {
            out.push(("aws", "arn:aws:iam::1:role/r".into(), 1234.0));
        }
    }

    #[test]
    fn renders_all_families() {
        let m = Metrics::new();
        m.exchanges
            .get_or_create(&ExchangeLabels {
                cloud: "aws",
                outcome: "success",
            })
            .inc();
        m.exchange_seconds
            .get_or_create(&CloudLabels { cloud: "aws" })
            .observe(0.02);
        m.request("aws-container", 200);
        m.token_reloads
            .get_or_create(&TokenLabels { outcome: "valid" })
            .inc();
        let source: Arc<dyn ExpirySource> = Arc::new(Fixed);
        m.add_expiry_source(Arc::downgrade(&source));
        let text = m.render();
        assert!(
            text.contains(r#"credbroker_exchanges_total{cloud="aws",outcome="success"} 1"#),
            "{text}"
        );
        assert!(text.contains("credbroker_exchange_duration_seconds_bucket"));
        assert!(
            text.contains(r#"credbroker_requests_total{surface="aws-container",status="200"} 1"#)
        );
        assert!(text.contains(r#"credbroker_token_reloads_total{outcome="valid"} 1"#));
        assert!(text.contains(r#"credbroker_credential_expiry_seconds{cloud="aws",key="arn:aws:iam::1:role/r"} 1234"#), "{text}");
        drop(source);
        assert!(!m.render().contains("credbroker_credential_expiry_seconds{"));
    }
}
