//! `GetContainerEvents`: lifecycle events of containers, fanned out to
//! every subscriber through the daemon's broadcast channel.

use crate::daemon::Daemon;
use crius_store::ContainerRecord;
use k8s_cri::v1::{ContainerEventResponse, ContainerEventType};
use tokio::sync::broadcast::error::RecvError;

/// Builds the event of `record`: the pod's status and the statuses of the
/// pod's containers (as they are now) come along.
pub fn event(
    daemon: &Daemon,
    record: &ContainerRecord,
    kind: ContainerEventType,
) -> ContainerEventResponse {
    let pod_sandbox_status = daemon
        .store
        .get_sandbox(&record.metadata.sandbox_id)
        .ok()
        .map(|s| crate::domain::sandbox::view::status(&s, false).0);
    let containers_statuses = daemon
        .store
        .list_sandbox_containers(&record.metadata.sandbox_id)
        .iter()
        .map(|c| super::view::status(c, false).0)
        .collect();
    ContainerEventResponse {
        container_id: record.metadata.id.clone(),
        container_event_type: kind as i32,
        created_at: crate::domain::now_nanos(),
        pod_sandbox_status,
        containers_statuses,
    }
}

/// Sends an event of `record` to the subscribers (none listening is fine).
pub fn emit(daemon: &Daemon, record: &ContainerRecord, kind: ContainerEventType) {
    if daemon.events.receiver_count() == 0 {
        return;
    }
    let _ = daemon.events.send(event(daemon, record, kind));
}

/// Sends an event of container `id` as the store has it now.
pub fn emit_id(daemon: &Daemon, id: &str, kind: ContainerEventType) {
    if daemon.events.receiver_count() == 0 {
        return;
    }
    if let Ok(record) = daemon.store.get_container(id) {
        emit(daemon, &record, kind);
    }
}

/// Sends an event of a pod sandbox itself (as containerd does for the
/// evented PLEG: the sandbox id as `container_id`, the pod's status and
/// its containers' statuses).
pub fn emit_sandbox(
    daemon: &Daemon,
    sandbox: &crius_store::SandboxRecord,
    kind: ContainerEventType,
) {
    if daemon.events.receiver_count() == 0 {
        return;
    }
    let containers_statuses = daemon
        .store
        .list_sandbox_containers(&sandbox.metadata.id)
        .iter()
        .map(|c| super::view::status(c, false).0)
        .collect();
    let _ = daemon.events.send(ContainerEventResponse {
        container_id: sandbox.metadata.id.clone(),
        container_event_type: kind as i32,
        created_at: crate::domain::now_nanos(),
        pod_sandbox_status: Some(crate::domain::sandbox::view::status(sandbox, false).0),
        containers_statuses,
    });
}

/// The stream `GetContainerEvents` answers with.
pub type EventStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = k8s_cri::v1::ContainerEventResponse> + Send + 'static>,
>;

/// A stream of the events from now on. A subscriber that falls more than
/// [`crate::daemon::EVENT_BUFFER`] events behind skips the ones it missed
/// (with a warning) rather than stalling everybody else.
pub fn subscribe(daemon: &Daemon) -> EventStream {
    let mut rx = daemon.events.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // The client went away: stop listening.
                _ = tx.closed() => return,
                got = rx.recv() => match got {
                    Ok(ev) => {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a GetContainerEvents subscriber fell behind");
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}
