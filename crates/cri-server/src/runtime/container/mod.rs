//! The container half of the RuntimeService.

pub mod devices;
pub mod events;
pub mod image_mounts;
pub mod lifecycle;
pub mod status;
pub mod update;
