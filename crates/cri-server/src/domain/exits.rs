//! The one path by which containers and pods end: an exit is recorded
//! here whoever notices it (the container's exit watcher, a failed start,
//! StopContainer finding the shim gone, StopPodSandbox, the sandbox
//! watcher finding the shim dead, start-up recovery), so every exit gets
//! the same reason rules (OOMKilled, Completed, Error), the same event,
//! the same NRI notice and the same wake-up of StopContainer's waiters.
//! The watchers (a container's exit, a pod's pause and shim) live here
//! too; `crate::recover` only reconciles records at start-up.

use crate::daemon::Daemon;
use crate::domain::now_nanos;
use crate::errors::{internal, store_status, CriError};
use crate::shimclient::Shim;
use crius_store::{ContainerRecord, ContainerState, SandboxState};
use k8s_cri::v1::ContainerEventType;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Exit code recorded for a container whose fate is unknown.
pub const UNKNOWN_EXIT_CODE: u32 = 255;
/// Reason recorded for a container whose shim or task vanished.
pub const UNKNOWN_REASON: &str = "Unknown";

/// How long a Wait call may block.
pub const WAIT_FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How a container ended, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit status.
    pub code: u32,
    /// The reason; `None` derives it (OOMKilled, Completed or Error).
    pub reason: Option<String>,
    /// A message for people.
    pub message: Option<String>,
    /// When the process exited (nanoseconds), when the shim knows it; the
    /// time of recording otherwise.
    pub finished_at: Option<i64>,
}

impl Exit {
    /// An exit with status `code`, the reason derived.
    pub fn code(code: u32) -> Exit {
        Exit {
            code,
            reason: None,
            message: None,
            finished_at: None,
        }
    }

    /// An exit with its reason and message given.
    pub fn because(code: u32, reason: &str, message: impl Into<String>) -> Exit {
        Exit {
            code,
            reason: Some(reason.to_string()),
            message: Some(message.into()),
            finished_at: None,
        }
    }

    /// A container whose shim or task is gone: nobody knows how it ended.
    pub fn unknown(message: impl Into<String>) -> Exit {
        Exit::because(UNKNOWN_EXIT_CODE, UNKNOWN_REASON, message)
    }

    /// The time the process exited (ignored unless positive).
    pub fn at(mut self, nanos: Option<i64>) -> Exit {
        self.finished_at = nanos.filter(|t| *t > 0);
        self
    }
}

/// The memory cgroup file that counts the container's OOM kills.
fn oom_control(daemon: &Daemon, record: &ContainerRecord) -> Option<PathBuf> {
    let dir = crate::domain::stats::container_cgroup_dir(daemon, record)?;
    Some(
        Path::new("/sys/fs/cgroup/memory")
            .join(dir.trim_start_matches('/'))
            .join("memory.oom_control"),
    )
}

/// Whether `oom_control` recorded an OOM kill (a file read: call on the
/// blocking pool).
fn oom_killed(oom_control: &Path) -> bool {
    std::fs::read_to_string(oom_control)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
        })
        .is_some_and(|n| n > 0)
}

/// Records a container's exit, once: a container already EXITED keeps its
/// first exit. Emits the stopped event, tells NRI and wakes StopContainer.
pub async fn record(daemon: &Daemon, id: &str, exit: Exit) {
    let oom_control = daemon
        .store
        .get_container(id)
        .ok()
        .and_then(|r| oom_control(daemon, &r));
    let Exit {
        code,
        reason,
        message,
        finished_at,
    } = exit;
    let store = daemon.store.clone();
    let cid = id.to_string();
    let r = tokio::task::spawn_blocking(move || {
        let reason = reason.unwrap_or_else(|| {
            if oom_control.as_deref().is_some_and(oom_killed) {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string()
        });
        let mut changed = false;
        store
            .update_container_status(&cid, |s| {
                if s.state == ContainerState::Exited {
                    return;
                }
                s.state = ContainerState::Exited;
                s.exit_code = Some(code as i32);
                s.finished_at = Some(finished_at.unwrap_or_else(now_nanos));
                s.reason = Some(reason);
                s.message = message;
                changed = true;
            })
            .map(|r| (r, changed))
    })
    .await;
    daemon.exited.notify_waiters();
    match r {
        Ok(Ok((record, true))) => {
            super::container::events::emit(
                daemon,
                &record,
                ContainerEventType::ContainerStoppedEvent,
            );
            crate::nri::events::container_exited(daemon, &record);
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(container = id, error = %e, "cannot record exit"),
        Err(e) => tracing::warn!(container = id, error = %e, "cannot record exit"),
    }
}

/// Watches a started container and records its exit (or the loss of its
/// shim).
pub fn watch(daemon: Arc<Daemon>, shim: Shim, id: String) {
    tokio::spawn(async move {
        match shim.wait(&id, "", WAIT_FOREVER).await {
            Ok(status) => record(&daemon, &id, Exit::code(status)).await,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "lost the container's shim");
                record(&daemon, &id, Exit::unknown(e.to_string())).await;
            }
        }
    });
}

/// Records `exit` for every container of a pod that has not ended;
/// returns how many.
pub async fn pod_containers(daemon: &Daemon, sandbox_id: &str, exit: &Exit) -> usize {
    let mut n = 0;
    for c in daemon.store.list_sandbox_containers(sandbox_id) {
        if matches!(
            c.status.state,
            ContainerState::Running | ContainerState::Created
        ) {
            record(daemon, &c.metadata.id, exit.clone()).await;
            n += 1;
        }
    }
    n
}

/// The exit of a pod's containers that StopPodSandbox took with it.
pub fn pod_stopped() -> Exit {
    Exit::because(137, "PodStopped", "the pod sandbox was stopped")
}

/// Changes a sandbox's status record, durably (a failure is logged too).
pub async fn update_sandbox(
    daemon: &Daemon,
    id: &str,
    f: impl FnOnce(&mut crius_store::SandboxStatus) + Send + 'static,
) -> Result<(), CriError> {
    let store = daemon.store.clone();
    let sid = id.to_string();
    let r = match tokio::task::spawn_blocking(move || store.update_sandbox_status(&sid, f)).await {
        Ok(r) => r.map(|_| ()).map_err(store_status),
        Err(e) => Err(internal("store", e)),
    };
    if let Err(e) = &r {
        tracing::warn!(sandbox = %id, error = %e.message(), "cannot update the sandbox record");
    }
    r
}

/// Marks a sandbox NOTREADY: its pause (if any) is gone; the first exit
/// time is kept.
pub async fn pod_not_ready(daemon: &Daemon, id: &str) -> Result<(), CriError> {
    update_sandbox(daemon, id, |s| {
        s.state = SandboxState::NotReady;
        s.pid = None;
        if s.exited_at.is_none() {
            s.exited_at = Some(now_nanos());
        }
    })
    .await
}

/// Resolves when the pause container of `id` exits or the shim at
/// `address` goes away (or cannot be reached). A parked future on the
/// daemon's connection to the shim: no thread per pod.
async fn wait_sandbox(daemon: &Daemon, address: &str, id: &str) -> Result<(), String> {
    let shim = match daemon.shim(id).await.filter(|s| s.address() == address) {
        Some(s) => s,
        None => daemon
            .shim_host
            .connect(address)
            .await
            .map_err(|e| e.to_string())?,
    };
    shim.wait_sandbox(id, WAIT_FOREVER)
        .await
        .map_err(|e| e.to_string())
}

/// Watches a READY sandbox: when its pause container exits or its shim
/// dies while the record still says READY (no StopPodSandbox did it), the
/// sandbox becomes NOTREADY, and when the shim is gone its containers
/// become EXITED with a reason and a message.
pub fn watch_sandbox(daemon: Arc<Daemon>, id: String, address: String) {
    tokio::spawn(async move {
        let waited = wait_sandbox(&daemon, &address, &id).await;
        let _lock = daemon.locks.lock(&id).await;
        let Ok(record) = daemon.store.get_sandbox(&id) else {
            return;
        };
        if record.status.state != SandboxState::Ready
            || record.status.shim_address.as_deref() != Some(address.as_str())
        {
            return;
        }
        let shim_alive = match daemon.shim_host.connect(&address).await {
            Ok(c) => c.sandbox_status(&id).await.is_ok(),
            Err(_) => false,
        };
        tracing::warn!(sandbox = %id, shim_alive, wait = ?waited, "the pod's pause container or shim is gone; the sandbox is NOTREADY");
        let _ = pod_not_ready(&daemon, &id).await;
        if !shim_alive {
            daemon.shims.lock().await.remove(&id);
            pod_containers(&daemon, &id, &Exit::unknown("the pod's shim died")).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_table() {
        let cases = [
            (Exit::code(0), 0, None, None),
            (
                Exit::unknown("gone"),
                UNKNOWN_EXIT_CODE,
                Some(UNKNOWN_REASON),
                Some("gone"),
            ),
            (
                pod_stopped(),
                137,
                Some("PodStopped"),
                Some("the pod sandbox was stopped"),
            ),
            (
                Exit::because(128, "StartError", "no such file"),
                128,
                Some("StartError"),
                Some("no such file"),
            ),
        ];
        for (exit, code, reason, message) in cases {
            assert_eq!(exit.code, code);
            assert_eq!(exit.reason.as_deref(), reason);
            assert_eq!(exit.message.as_deref(), message);
            assert_eq!(exit.finished_at, None);
        }
        assert_eq!(Exit::code(1).at(Some(5)).finished_at, Some(5));
        assert_eq!(Exit::code(1).at(Some(0)).finished_at, None);
        assert_eq!(Exit::code(1).at(None).finished_at, None);
    }
}
