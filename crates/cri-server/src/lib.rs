//! criusd: the crius CRI daemon.
//!
//! The daemon serves the CRI v1 `RuntimeService` and `ImageService` on a unix
//! socket and translates requests into calls on the store, the spec builder,
//! the image service and the per-pod shims.

pub mod apparmor;
pub mod cgroup_primer;
pub mod config;
pub mod config_docs;
pub mod daemon;
pub mod domain;
pub mod errors;
pub mod grpc_authority;
pub mod health;
pub mod host;
pub mod image;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod nri;
pub mod paths;
pub mod recover;
pub mod reload;
pub mod rpc;
pub mod server;
pub mod service;
pub mod shimclient;
pub mod shimscope;
pub mod streaming;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
