//! credbroker: short-lived cloud credentials for Kubernetes workloads, served on loopback in the
//! clouds' own metadata formats.
//!
//! Data flow (docs/architecture.md): [`token`] (the projected service-account token, watched)
//! → [`exchange`] (one exchanger per cloud, in [`clouds`]) → [`refresh`] (cache and refresher)
//! → the surfaces in [`clouds`] (HTTP routes through [`surface`], or files) → [`ops`] (health,
//! readiness, metrics). [`clouds::CLOUDS`] is the one registry of clouds; [`app`] wires them.

pub mod app;
pub mod cli;
pub mod clock;
pub mod clouds;
pub mod config;
pub mod cpus;
#[cfg(feature = "demo")]
mod demo;
pub mod exchange;
pub mod fs;
pub mod http;
pub mod inject;
pub mod metrics;
pub mod ops;
pub mod refresh;
mod run;
pub mod secret;
pub mod surface;
#[cfg(test)]
mod testing;
pub mod timefmt;
pub mod token;

pub use run::run;
