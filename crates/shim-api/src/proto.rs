//! Generated bindings of `crius.shim.v1.Shim` (proto/crius/shim/v1/shim.proto).

#![allow(warnings, clippy::all, missing_docs)]

/// Messages.
pub mod shim {
    include!(concat!(env!("OUT_DIR"), "/crius/shim.rs"));
}

/// The ttrpc service trait, server map and synchronous client.
pub mod shim_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/crius/shim_ttrpc.rs"));
}

/// The asynchronous client (criusd's).
#[cfg(feature = "client")]
pub mod shim_ttrpc_async {
    include!(concat!(env!("OUT_DIR"), "/crius-async/shim_ttrpc.rs"));
}
