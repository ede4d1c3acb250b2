//! Generated bindings of `crius.shim.v1.Shim` (proto/crius/shim/v1/shim.proto).

#![allow(warnings, clippy::all, missing_docs)]

/// Messages.
pub mod shim {
    include!(concat!(env!("OUT_DIR"), "/crius/shim.rs"));
}

/// The ttrpc service trait, server map and client.
pub mod shim_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/crius/shim_ttrpc.rs"));
}
