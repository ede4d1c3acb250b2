//! The container half of the RuntimeService.

pub mod status;
