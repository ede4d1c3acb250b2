//! Start-up recovery: reconciles the records loaded from the store with the
//! pods' shims, which keep running while criusd is down.
//!
//! For every sandbox the shim is reached at its recorded address (or at the
//! address a shim launched for it would have, when criusd died before it
//! recorded one). A sandbox whose shim is gone becomes NOTREADY; what the
//! shim left (its containers' processes and rootfs mounts, the netns, IPC
//! and UTS pins and /dev/shm) is cleaned by Stop/Remove through the shim
//! binary's `delete` action. For every container the shim is asked for
//! the task's state: an exit that
//! happened while criusd was down is recorded with the shim's exit code and
//! time, a running container gets its exit watcher again, and a container
//! whose shim or task is gone becomes EXITED with a reason and a message.

use crate::daemon::Daemon;
use crate::domain::exits::{self, update_sandbox, watch_sandbox, Exit};
use containerd_shim_protos::types::task::Status as TaskStatus;
use crius_store::{ContainerState, SandboxRecord, SandboxState};
use std::sync::Arc;

/// What recovery found, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Sandboxes whose shim answered.
    pub sandboxes_live: usize,
    /// Sandboxes that became (or stayed) NOTREADY.
    pub sandboxes_not_ready: usize,
    /// Running containers whose exit watcher was started again.
    pub containers_watched: usize,
    /// Containers whose exit (while criusd was down, or of a lost shim or
    /// task) was recorded now.
    pub containers_exited: usize,
}

/// What became of a sandbox's shim.
enum Shim {
    /// It answers and knows the sandbox.
    Live(crate::shimclient::Shim),
    /// It answers but does not know the sandbox (criusd died before
    /// CreateSandbox); only Shutdown is left to do with it.
    Empty(String),
    /// Nothing answers.
    Gone,
}

/// Connects to a sandbox's shim and checks that it knows the sandbox.
async fn find_shim(daemon: &Daemon, record: &SandboxRecord) -> Shim {
    let id = &record.metadata.id;
    let address = record
        .status
        .shim_address
        .clone()
        .unwrap_or_else(|| crate::domain::sandbox::shim_address(daemon, id));
    let Ok(client) = daemon.shim_host.connect(&address).await else {
        return Shim::Gone;
    };
    match client.sandbox_status(id).await {
        Ok(_) => Shim::Live(client),
        Err(e) if e.is_not_found() => Shim::Empty(address),
        Err(e) => {
            tracing::info!(sandbox = %id, error = %e, "shim does not answer for the sandbox");
            Shim::Gone
        }
    }
}

/// Reconciles one container of a pod whose shim answered.
async fn recover_container(
    daemon: &Arc<Daemon>,
    shim: &crate::shimclient::Shim,
    record: &crius_store::ContainerRecord,
    summary: &mut Summary,
) {
    let id = record.metadata.id.as_str();
    let state = record.status.state;
    if !matches!(state, ContainerState::Running | ContainerState::Created) {
        return;
    }
    match shim.state(id, "").await {
        Ok(s) => {
            let status = s.status.enum_value_or(TaskStatus::UNKNOWN);
            match (state, status) {
                (_, TaskStatus::STOPPED) if state == ContainerState::Running => {
                    let at = s
                        .exited_at
                        .as_ref()
                        .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
                    tracing::info!(container = %id, exit_code = s.exit_status, "container exited while criusd was down");
                    exits::record(daemon, id, Exit::code(s.exit_status).at(at)).await;
                    summary.containers_exited += 1;
                }
                (ContainerState::Running, _) => {
                    exits::watch(daemon.clone(), shim.clone(), id.to_string());
                    summary.containers_watched += 1;
                }
                // A created container stays created, whatever the task
                // says: StartContainer or RemoveContainer deal with it.
                _ => {}
            }
        }
        Err(e) if e.is_not_found() => {
            // The record was written but the task never made it into the
            // shim (criusd died during CreateContainer), or it was deleted.
            let lost = "the pod's shim does not know the container after a criusd restart";
            exits::record(daemon, id, Exit::unknown(lost)).await;
            summary.containers_exited += 1;
        }
        Err(e) => {
            tracing::warn!(container = %id, error = %e, "cannot ask the shim about the container");
            if state == ContainerState::Running {
                // Keep watching: the watcher records the loss if the shim
                // turns out to be gone.
                exits::watch(daemon.clone(), shim.clone(), id.to_string());
                summary.containers_watched += 1;
            }
        }
    }
}

/// Recovers one sandbox and its containers.
async fn recover_sandbox(daemon: &Arc<Daemon>, record: SandboxRecord, summary: &mut Summary) {
    let id = record.metadata.id.clone();
    let _lock = daemon.locks.lock(&id).await;
    match find_shim(daemon, &record).await {
        Shim::Live(shim) => {
            summary.sandboxes_live += 1;
            daemon.shims.lock().await.insert(id.clone(), shim.clone());
            if record.status.shim_address.is_none() {
                // criusd died while RunPodSandbox ran: the pod never became
                // ready. Record what Stop/Remove need to tear it down.
                let address = shim.address().to_string();
                let netns = daemon.shim_pod_dir(&id).netns();
                let netns = netns.exists().then(|| netns.display().to_string());
                tracing::info!(sandbox = %id, "found the shim of a half-created sandbox");
                let _ = update_sandbox(daemon, &id, move |s| {
                    s.shim_address = Some(address);
                    if s.netns_path.is_none() {
                        s.netns_path = netns;
                    }
                })
                .await;
            }
            if record.status.state != SandboxState::Ready {
                summary.sandboxes_not_ready += 1;
            }
            for c in daemon.store.list_sandbox_containers(&id) {
                recover_container(daemon, &shim, &c, summary).await;
            }
            if record.status.state == SandboxState::Ready {
                watch_sandbox(daemon.clone(), id.clone(), shim.address().to_string());
            }
        }
        other => {
            summary.sandboxes_not_ready += 1;
            daemon.shims.lock().await.remove(&id);
            if let (Shim::Empty(address), None) = (other, &record.status.shim_address) {
                // Recorded so that Stop/Remove shut the idle shim down.
                let _ = update_sandbox(daemon, &id, move |s| s.shim_address = Some(address)).await;
            }
            if record.status.state == SandboxState::Ready {
                tracing::warn!(sandbox = %id, "the pod's shim is gone; the sandbox is NOTREADY");
                let _ = exits::pod_not_ready(daemon, &id).await;
            }
            let lost = Exit::unknown("the pod's shim was gone when criusd restarted");
            summary.containers_exited += exits::pod_containers(daemon, &id, &lost).await;
        }
    }
}

/// Reconciles every record with the shims; runs before the socket is
/// served. Never fails: what cannot be reconciled is logged and left for
/// Stop/Remove.
pub async fn recover(daemon: &Arc<Daemon>) -> Summary {
    let mut summary = Summary::default();
    for record in daemon.store.list_sandboxes() {
        recover_sandbox(daemon, record, &mut summary).await;
    }
    // Containers whose sandbox record is gone cannot run anywhere.
    for c in daemon.store.list_containers() {
        if daemon.store.get_sandbox(&c.metadata.sandbox_id).is_err()
            && matches!(
                c.status.state,
                ContainerState::Running | ContainerState::Created
            )
        {
            let lost = Exit::unknown("the container's pod sandbox record is gone");
            exits::record(daemon, &c.metadata.id, lost).await;
            summary.containers_exited += 1;
        }
    }
    tracing::info!(
        live = summary.sandboxes_live,
        not_ready = summary.sandboxes_not_ready,
        watched = summary.containers_watched,
        exited = summary.containers_exited,
        "recovered state"
    );
    summary
}

/// CNI garbage collection at start-up (networks of spec 1.1.0 and later):
/// the plugins are told the attachments of every pod criusd has a record
/// of and free anything else, e.g. the IPAM lease of a pod whose CNI DEL a
/// crash prevented. Runs plugins: off the async workers, after recovery.
pub async fn gc_network(daemon: &Arc<Daemon>) {
    let valid: Vec<(String, String)> = daemon
        .store
        .list_sandboxes()
        .into_iter()
        .map(|s| {
            (
                s.metadata.id.clone(),
                crius_netns::cni::DEFAULT_IFNAME.to_string(),
            )
        })
        .collect();
    let d = daemon.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let network = d.cni_network()?;
        if !crius_netns::cni::at_least_110(&network.config().cni_version) {
            return Ok(None);
        }
        network.gc(&valid).map(|()| Some(valid.len()))
    })
    .await;
    match outcome {
        Ok(Ok(Some(kept))) => tracing::info!(kept, "CNI GC done"),
        Ok(Ok(None)) => tracing::debug!("CNI GC skipped: the network's spec version has none"),
        Ok(Err(e)) => tracing::warn!(error = %e, "CNI GC failed"),
        Err(e) => tracing::warn!(error = %e, "CNI GC task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::container::lifecycle as container;
    use crate::domain::exits::{UNKNOWN_EXIT_CODE, UNKNOWN_REASON};
    use crate::domain::sandbox::lifecycle as sandbox;
    use crate::shimclient::ShimApi;
    use crate::testing::{create_request, run_request, TestDaemon};

    /// A pod with a running container `run` and a created one `new`, as an
    /// earlier criusd left them; criusd's connections are gone (a restart).
    async fn left_behind(t: &TestDaemon) -> (String, String, String) {
        let d = &t.daemon;
        let sid = sandbox::run(d, run_request("web")).await.unwrap();
        let (run, _) = container::create(d, create_request(&sid, "web", "run"))
            .await
            .unwrap();
        // Started without a watcher in this criusd.
        let shim = t.fakes.shim_of(&sid).unwrap();
        let pid = shim.start_task(&run, "").await.unwrap();
        d.store
            .update_container_status(&run, |s| {
                s.state = ContainerState::Running;
                s.pid = Some(pid);
                s.started_at = Some(crate::domain::now_nanos());
            })
            .unwrap();
        let (new, _) = container::create(d, create_request(&sid, "web", "new"))
            .await
            .unwrap();
        d.shims.lock().await.clear();
        t.fakes.clear_journal();
        (sid, run, new)
    }

    #[tokio::test]
    async fn recovery_reconciles_records_with_the_shims() {
        // (the shim still runs, the summary, the pod's state, the running
        // container's and the created one's states afterwards).
        let cases = [
            (
                true,
                Summary {
                    sandboxes_live: 1,
                    sandboxes_not_ready: 0,
                    containers_watched: 1,
                    containers_exited: 0,
                },
                SandboxState::Ready,
                ContainerState::Running,
                ContainerState::Created,
            ),
            (
                false,
                Summary {
                    sandboxes_live: 0,
                    sandboxes_not_ready: 1,
                    containers_watched: 0,
                    containers_exited: 2,
                },
                SandboxState::NotReady,
                ContainerState::Exited,
                ContainerState::Exited,
            ),
        ];
        for (alive, want, pod_state, run_state, new_state) in cases {
            let t = TestDaemon::start();
            let d = &t.daemon;
            let (sid, run, new) = left_behind(&t).await;
            let shim = t.fakes.shim_of(&sid).unwrap();
            if !alive {
                // The shim died with criusd; its processes' exits were
                // never seen (no watcher records them).
                shim.die();
            }
            let summary = recover(d).await;
            assert_eq!(summary, want, "alive {alive}");
            assert_eq!(d.store.get_sandbox(&sid).unwrap().status.state, pod_state);
            let state = |id: &str| d.store.get_container(id).unwrap().status;
            assert_eq!(state(&run).state, run_state, "alive {alive}");
            assert_eq!(state(&new).state, new_state, "alive {alive}");
            if alive {
                // Connected again, and the container's exit is watched.
                assert!(d.shims.lock().await.contains_key(&sid));
                shim.exit(&run, 0);
                crate::testing::until("the exit to be recorded", || {
                    d.store
                        .get_container(&run)
                        .is_ok_and(|r| r.status.state == ContainerState::Exited)
                })
                .await;
                assert_eq!(state(&run).reason.as_deref(), Some("Completed"));
                assert!(t.fakes.calls(&["ShimDelete", "ShimDeletePod"]).is_empty());
            } else {
                assert!(d.shims.lock().await.is_empty());
                for id in [&run, &new] {
                    assert_eq!(state(id).reason.as_deref(), Some(UNKNOWN_REASON));
                    assert_eq!(state(id).exit_code, Some(UNKNOWN_EXIT_CODE as i32));
                }
                // Stop and Remove have the shim binary's `delete` clean up
                // after the dead shim: each container, then the pod.
                sandbox::stop(d, &sid).await.unwrap();
                let deletes = t.fakes.calls(&["ShimDelete", "ShimDeletePod"]);
                assert_eq!(deletes.len(), 3, "{deletes:?}");
                assert!(deletes.contains(&format!("ShimDelete {run}")));
                assert!(deletes.contains(&format!("ShimDelete {new}")));
                assert_eq!(deletes[2], format!("ShimDeletePod {sid}"));
                sandbox::remove(d, &sid).await.unwrap();
                assert!(d.store.get_sandbox(&sid).is_err());
                assert!(d.store.list_containers().is_empty());
            }
        }
    }

    #[tokio::test]
    async fn recovery_records_exits_that_happened_while_criusd_was_down() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        let (sid, run, _) = left_behind(&t).await;
        let shim = t.fakes.shim_of(&sid).unwrap();
        // Nobody watched it: the record still says Running.
        shim.exit(&run, 7);
        let summary = recover(d).await;
        assert_eq!(summary.containers_exited, 1);
        assert_eq!(summary.sandboxes_live, 1);
        let status = d.store.get_container(&run).unwrap().status;
        assert_eq!(status.state, ContainerState::Exited);
        assert_eq!(status.exit_code, Some(7));
    }

    #[tokio::test]
    async fn a_half_created_pod_gets_its_shim_address_recorded() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        let (sid, _, _) = left_behind(&t).await;
        // criusd died before it recorded the pod ready with its address.
        d.store
            .update_sandbox_status(&sid, |s| {
                s.state = SandboxState::NotReady;
                s.shim_address = None;
            })
            .unwrap();
        let summary = recover(d).await;
        assert_eq!(summary.sandboxes_live, 1);
        let record = d.store.get_sandbox(&sid).unwrap();
        assert_eq!(
            record.status.shim_address.as_deref(),
            Some(t.fakes.shim_of(&sid).unwrap().address())
        );
        // Stop tears it down through its shim.
        sandbox::stop(d, &sid).await.unwrap();
        assert!(!t.fakes.shim_of(&sid).unwrap().alive());
    }
}
