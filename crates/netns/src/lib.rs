//! Network namespaces and the CNI caller.
//!
//! This crate owns everything between a pod and its network:
//!
//! * [`netns`]: persistent network namespaces bind-mounted on a file
//!   (created by the pod's shim, removed at sandbox shutdown), and running
//!   code inside one;
//! * [`podns`]: a pod's IPC and UTS namespaces pinned the same way when no
//!   infra (pause) process holds them, with the hostname and sysctls;
//! * [`cni`]: finding the CNI network configuration kubelet-style (first
//!   valid file of the conf dir in lexical order), locating plugin binaries,
//!   executing the plugin list for ADD/CHECK/DEL with the CNI environment,
//!   `runtimeConfig` and `prevResult` chaining, caching ADD results for DEL,
//!   and parsing results into the pod IPs.

pub mod cni;
pub mod netns;
pub mod podns;

pub use cni::{CniError, CniNetwork, CniResult, PodIps, PodNetwork, PortMapping};
pub use netns::{NetNs, NetnsError};
