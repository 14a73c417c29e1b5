//! HTTP plumbing shared by the credential listener, the ops listener and the exchangers.

pub mod client;
pub mod drain;
pub mod guard;
pub mod idle;
pub mod memo;
pub mod server;
