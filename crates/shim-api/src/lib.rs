//! What criusd and its per-pod shim, containerd-shim-crius-v2, share: the
//! ttrpc bindings of crius's own `crius.shim.v1.Shim` service ([`proto`]),
//! the pod options criusd passes in CreateSandbox ([`options`]), where the
//! shims' sockets and private directories are ([`paths`]), the shim's
//! command line ([`args`]) and how a serving shim is launched
//! ([`launch`]); with the `client` feature also criusd's asynchronous
//! client ([`client`]) and shim launcher. The shim crate's README
//! describes the protocol.

pub mod args;
#[cfg(feature = "client")]
pub mod client;
pub mod idmap;
pub mod launch;
pub mod options;
pub mod paths;
pub mod proto;

/// The containerd namespace crius runs its pods in.
pub const NAMESPACE: &str = "k8s.io";
