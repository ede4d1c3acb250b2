//! containerd-shim-crius-v2: the per-pod shim.
//!
//! The shim is started by criusd (or by a containerd) following containerd's
//! runtime v2 conventions. This module holds what both sides agree on: the
//! command line of the shim binary.

pub mod args;
