//! OCI runtime spec generation for crius.
//!
//! Everything here is a pure function: inputs are the CRI request (as plain
//! data), the image configuration and facts about the sandbox; the output is
//! an OCI runtime spec. No I/O happens in this crate.

pub mod oom;
