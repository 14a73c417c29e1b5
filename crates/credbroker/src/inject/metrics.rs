//! The webhook's metrics: reviews by outcome, their latency (ServiceAccount read included),
//! and the ServiceAccount reads on their own.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What became of a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Unchanged,
    Refused,
    Malformed,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Injected,
        Outcome::Unchanged,
        Outcome::Refused,
        Outcome::Malformed,
        Outcome::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
            Outcome::Malformed => "malformed",
            Outcome::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

pub struct InjectMetrics {
    registry: Registry,
    reviews: Family<OutcomeLabels, Counter>,
    review_seconds: Histogram,
    reads: Family<OutcomeLabels, Counter>,
    read_seconds: Histogram,
}

impl std::fmt::Debug for InjectMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InjectMetrics")
    }
}

impl Default for InjectMetrics {
    fn default() -> Self {
        // 100 µs … ~3 s: a review is sub-millisecond without the read, a read one round trip.
        let buckets = || Histogram::new(exponential_buckets(0.0001, 2.5, 12));
        let mut registry = Registry::default();
        let reviews = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "credbroker_admission_reviews",
            "AdmissionReviews answered, by outcome (injected, unchanged, refused, malformed, error)",
            reviews.clone(),
        );
        let review_seconds = buckets();
        registry.register(
            "credbroker_admission_review_duration_seconds",
            "Time to answer one AdmissionReview, the ServiceAccount read included",
            review_seconds.clone(),
        );
        let reads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "credbroker_serviceaccount_reads",
            "ServiceAccount reads from the API server, by outcome (ok, failed)",
            reads.clone(),
        );
        let read_seconds = buckets();
        registry.register(
            "credbroker_serviceaccount_read_duration_seconds",
            "Time to read one ServiceAccount from the API server",
            read_seconds.clone(),
        );
        // Every series present at zero from the start.
        for o in Outcome::ALL {
            reviews.get_or_create_owned(&OutcomeLabels { outcome: o.label() });
        }
        for outcome in ["ok", "failed"] {
            reads.get_or_create_owned(&OutcomeLabels { outcome });
        }
        InjectMetrics {
            registry,
            reviews,
            review_seconds,
            reads,
            read_seconds,
        }
    }
}

impl InjectMetrics {
    pub fn observe(&self, outcome: Outcome, took: Duration) {
        self.reviews
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
        self.review_seconds.observe(took.as_secs_f64());
    }

    pub fn observe_read(&self, took: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.reads.get_or_create(&OutcomeLabels { outcome }).inc();
        self.read_seconds.observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
