//! The container half of the RuntimeService.

pub mod devices;
pub mod events;
pub mod image_mounts;
pub mod lifecycle;
pub mod update;
pub mod view;

/// Containers as hand-back creates them: an unclaimed container is
/// removed.
pub static HANDBACK: crate::domain::handback::Kind = crate::domain::handback::Kind {
    name: "container",
    exists: |daemon, id| daemon.store.get_container(id).is_ok(),
    clean_up: |daemon, id| Box::pin(async move { lifecycle::remove(&daemon, &id).await }),
};
