//! credbroker: short-lived cloud credentials for Kubernetes workloads, served on loopback in the
//! clouds' own metadata formats.
//!
//! Data flow: [`token`] (the projected service-account token, watched) → [`exchange`] (one
//! exchanger per cloud, in [`clouds`]) → [`refresh`] (cache and refresher) → the surfaces in
//! [`clouds`] (HTTP routes or files) → [`ops`] (health, readiness, metrics).

pub mod clock;
pub mod exchange;
pub mod metrics;
pub mod refresh;
pub mod secret;
pub mod timefmt;
