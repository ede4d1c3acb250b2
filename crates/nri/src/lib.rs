//! NRI (Node Resource Interface) for criusd: the generated protocol
//! bindings and the connection multiplexer NRI runs them over.
//!
//! An NRI plugin connects to the runtime's socket and carries two ttrpc
//! connections over that one stream: the runtime calls the plugin's `Plugin`
//! service on one, the plugin calls the runtime's `Runtime` service
//! (`RegisterPlugin`, `UpdateContainers`) on the other. [`mux`] does the
//! splitting.

pub mod mux;
pub mod runtime;
pub mod stub;

/// Messages of `proto/nri/v1alpha1/api.proto`.
#[allow(warnings, clippy::all, missing_docs)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/nri/api.rs"));
}

/// ttrpc clients and services of `proto/nri/v1alpha1/api.proto`.
#[allow(warnings, clippy::all, missing_docs)]
pub mod api_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/nri/api_ttrpc.rs"));
}
