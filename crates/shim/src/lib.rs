//! containerd-shim-crius-v2: the per-pod shim.
//!
//! The shim is started by criusd (or by a containerd) following containerd's
//! runtime v2 conventions: `start` spawns (or finds) the serving shim of the
//! pod, which serves containerd's task API (v2 and v3 names), the sandbox
//! API and crius's own `crius.shim.v1.Shim` service over ttrpc. See the
//! crate README for the protocol criusd speaks; what criusd and the shim
//! share of it (the command line, the pod options, the socket and state
//! layout, the bindings of crius's service) is in crius-shim-api.

pub mod crilog;
pub mod events;
pub mod holder;
pub mod idmap;
pub mod io;
pub mod log;
pub mod mem;
pub mod mount;
pub mod oom;
pub mod reaper;
pub mod runc;
pub mod sandbox;
pub mod serve;
pub mod start;
pub mod stats;
pub mod task;
