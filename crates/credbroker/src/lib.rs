//! credbroker: short-lived cloud credentials for Kubernetes workloads, served on loopback in the
//! clouds' own metadata formats.
//!
//! Data flow: [`token`] (the projected service-account token, watched) → [`exchange`] (one
//! exchanger per cloud, in [`clouds`]) → [`refresh`] (cache and refresher) → the surfaces in
//! [`clouds`] (HTTP routes via [`surface`], or files) → [`ops`] (health, readiness, metrics).

pub mod app;
pub mod cli;
pub mod clock;
pub mod clouds;
pub mod config;
pub mod cpus;
pub mod demo;
pub mod exchange;
pub mod fsutil;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod refresh;
mod run;
pub mod secret;
pub mod surface;
pub mod timefmt;
pub mod token;

pub use run::run;
