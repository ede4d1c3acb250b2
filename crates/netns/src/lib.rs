//! Network namespaces and the CNI caller.
//!
//! This crate owns everything between a pod and its network: finding the CNI
//! network configuration kubelet-style (first valid file of the conf dir in
//! lexical order), locating plugin binaries, and (in later modules) creating
//! network namespaces and executing plugins.

pub mod cni;
