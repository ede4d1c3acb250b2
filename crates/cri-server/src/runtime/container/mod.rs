//! The container half of the RuntimeService.

pub mod lifecycle;
pub mod status;
