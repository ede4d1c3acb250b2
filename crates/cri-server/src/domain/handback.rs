//! Cancellation-safe creation with hand-back of abandoned results.
//!
//! tonic drops a handler's future when the caller cancels or its deadline
//! passes. RunPodSandbox and CreateContainer therefore run in a detached
//! task, so that a creation is never abandoned half-way (it completes or
//! rolls back). When it completes after its caller went away, the finished
//! object is parked under its name for a while: a retry with the same name
//! and the same request gets it back instead of "name reserved"; when nobody
//! asks before the expiry, it is torn down. A retry that arrives while the
//! creation still runs waits for it and gets its result.
//!
//! What is created is described by a [`Kind`] its domain module supplies
//! (how to tell that an object still exists, how to tear it down): this
//! module knows nothing of pods and containers.
//!
//! The idea is CRI-O's resource store; this is written for crius.

use crate::daemon::Daemon;
use crate::errors::CriError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// How long a finished but unclaimed object is kept by default (the
/// default of the `handback_expiry` config key).
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(300);

/// The teardown of an unclaimed object (by id).
pub type CleanUp =
    fn(Arc<Daemon>, String) -> std::pin::Pin<Box<dyn Future<Output = Result<(), CriError>> + Send>>;

/// A kind of object created through hand-back, as its domain module
/// describes it.
pub struct Kind {
    /// Its name, which also separates the kinds' names (`sandbox`).
    pub name: &'static str,
    /// Whether the object with this id still exists.
    pub exists: fn(&Daemon, &str) -> bool,
    /// Tears an unclaimed object down after the expiry.
    pub clean_up: CleanUp,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Kind {
    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.name)
    }
}

type Outcome = Option<Result<String, CriError>>;

struct Entry {
    generation: u64,
    fingerprint: String,
    result: watch::Receiver<Outcome>,
}

/// Creations in flight and finished objects waiting for their caller.
pub struct Handback {
    entries: Mutex<HashMap<String, Entry>>,
    generation: AtomicU64,
    /// In milliseconds; changed by a configuration reload.
    expiry_ms: AtomicU64,
}

impl Default for Handback {
    fn default() -> Self {
        Handback::new(DEFAULT_EXPIRY)
    }
}

impl Handback {
    /// A hand-back store keeping unclaimed objects for `expiry`.
    pub fn new(expiry: Duration) -> Self {
        Handback {
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            expiry_ms: AtomicU64::new(expiry.as_millis().try_into().unwrap_or(u64::MAX)),
        }
    }

    /// How long unclaimed objects are kept.
    pub fn expiry(&self) -> Duration {
        Duration::from_millis(self.expiry_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sets how long objects parked from now on are kept (a reload).
    pub fn set_expiry(&self, expiry: Duration) {
        self.expiry_ms.store(
            expiry.as_millis().try_into().unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Names with a creation in flight or an object waiting, for tests
    /// and diagnostics.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the entry of `key` if it is still `generation`; tells whether
    /// it was there.
    fn claim(&self, key: &str, generation: u64) -> bool {
        let mut map = self.lock();
        if map.get(key).is_some_and(|e| e.generation == generation) {
            map.remove(key);
            true
        } else {
            false
        }
    }
}

async fn clean_up(daemon: Arc<Daemon>, kind: &'static Kind, id: String) {
    match (kind.clean_up)(daemon, id.clone()).await {
        Ok(()) => tracing::info!(id = %id, kind = ?kind, "removed an unclaimed object"),
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            tracing::warn!(id = %id, kind = ?kind, error = %e.message(), "cannot remove an unclaimed object")
        }
    }
}

/// Runs the creation `create` of the object called `name` (with the request
/// fingerprint `fingerprint`) detached from the caller, or joins or claims
/// one already under way or finished for the same name and request.
pub async fn create<F>(
    daemon: &Arc<Daemon>,
    kind: &'static Kind,
    name: &str,
    fingerprint: String,
    create: impl Fn() -> F,
) -> Result<String, CriError>
where
    F: Future<Output = Result<String, CriError>> + Send + 'static,
{
    let key = kind.key(name);
    let hb = &daemon.handback;
    loop {
        let joined = {
            let mut map = hb.lock();
            match map.get(&key) {
                Some(e) if e.fingerprint == fingerprint => Some((e.generation, e.result.clone())),
                Some(_) => None,
                None => {
                    let generation = hb.generation.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = watch::channel(None);
                    map.insert(
                        key.clone(),
                        Entry {
                            generation,
                            fingerprint: fingerprint.clone(),
                            result: rx.clone(),
                        },
                    );
                    drop(map);
                    // The creation keeps the caller's span as its parent.
                    let fut = create().in_current_span();
                    spawn_tracked(daemon.clone(), kind, key.clone(), generation, tx, fut);
                    Some((generation, rx))
                }
            }
        };
        let Some((generation, mut rx)) = joined else {
            // A different request holds the name: run it detached but
            // untracked; the store answers with the holder's id.
            return tokio::spawn(create().in_current_span())
                .await
                .map_err(|e| CriError::internal(format!("creation task failed: {e}")))?;
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => Some(Err(CriError::internal("creation task vanished"))),
        };
        let result = outcome.unwrap_or_else(|| Err(CriError::internal("creation task vanished")));
        match result {
            Ok(id) => {
                let claimed = hb.claim(&key, generation);
                if (kind.exists)(daemon, &id) {
                    if claimed {
                        tracing::debug!(id = %id, name = %key, "handed the created object to its caller");
                    }
                    return Ok(id);
                }
                if claimed {
                    // Removed (by id) while parked: create it anew.
                    continue;
                }
                return Err(CriError::aborted(format!(
                    "{name} was created but removed before it could be handed back; retry"
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs a creation detached; parks its result until claimed or expired.
fn spawn_tracked<F>(
    d: Arc<Daemon>,
    kind: &'static Kind,
    key: String,
    generation: u64,
    tx: watch::Sender<Outcome>,
    fut: F,
) where
    F: Future<Output = Result<String, CriError>> + Send + 'static,
{
    tokio::spawn(async move {
        let result = match tokio::spawn(fut).await {
            Ok(r) => r,
            Err(e) => Err(CriError::internal(format!("creation task failed: {e}"))),
        };
        let id = result.as_ref().ok().cloned();
        tx.send_replace(Some(result));
        let Some(id) = id else {
            d.handback.claim(&key, generation);
            return;
        };
        // Parked: a waiting caller claims it at once, a retry later;
        // otherwise it expires.
        tokio::time::sleep(d.handback.expiry()).await;
        if d.handback.claim(&key, generation) {
            tracing::info!(id = %id, name = %key, "nobody claimed the created object; removing it");
            clean_up(d, kind, id).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_only_the_same_generation() {
        let hb = Handback::new(Duration::from_secs(1));
        let (_tx, rx) = watch::channel(None);
        hb.lock().insert(
            "sandbox/a".into(),
            Entry {
                generation: 7,
                fingerprint: "f".into(),
                result: rx,
            },
        );
        assert_eq!(hb.pending(), 1);
        assert!(!hb.claim("sandbox/a", 8));
        assert!(hb.claim("sandbox/a", 7));
        assert!(!hb.claim("sandbox/a", 7));
        assert_eq!(hb.pending(), 0);
        assert_ne!(
            crate::domain::sandbox::HANDBACK.key("x"),
            crate::domain::container::HANDBACK.key("x")
        );
    }

    use crate::rpc::{container_create::create_container, sandbox_run::run_pod_sandbox};
    use crate::testing::{create_request, run_request, until, TestDaemon};
    use crius_store::SandboxState;

    /// A call whose caller gives up before the shim's `method` is let
    /// through.
    async fn abandoned<F: Future>(call: F) {
        let r = tokio::time::timeout(Duration::from_millis(200), call).await;
        assert!(r.is_err(), "the call should have outlived its caller");
    }

    #[tokio::test]
    async fn a_pod_that_outlived_its_caller_is_handed_to_the_retry() {
        // Whether the retry comes while the creation still runs (it joins)
        // or after it finished (it claims the parked pod).
        for retry_while_running in [true, false] {
            let t = TestDaemon::start();
            let d = &t.daemon;
            let gate = t.fakes.hold("StartSandbox");
            let req = run_request("slow");
            abandoned(run_pod_sandbox(d, req.clone())).await;
            let retry = {
                let (d, req) = (d.clone(), req.clone());
                tokio::spawn(async move { run_pod_sandbox(&d, req).await })
            };
            if retry_while_running {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(!retry.is_finished());
            }
            gate.add_permits(1);
            let id = retry.await.unwrap().unwrap().pod_sandbox_id;
            // One pod, made once, ready, claimed.
            assert_eq!(t.fakes.calls(&["Launch"]), [format!("Launch {id}")]);
            assert_eq!(d.store.list_sandboxes().len(), 1);
            assert_eq!(
                d.store.get_sandbox(&id).unwrap().status.state,
                SandboxState::Ready
            );
            assert_eq!(d.handback.pending(), 0);
            // Claimed once: a later identical call is refused (name taken).
            let err = run_pod_sandbox(d, req).await.expect_err("name is taken");
            assert!(err.message().contains(&id), "{}", err.message());
        }
    }

    #[tokio::test]
    async fn an_unclaimed_pod_is_removed_after_the_expiry() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        d.handback.set_expiry(Duration::from_millis(300));
        let gate = t.fakes.hold("StartSandbox");
        let req = run_request("slow");
        abandoned(run_pod_sandbox(d, req.clone())).await;
        gate.add_permits(1);
        until("the unclaimed pod to be torn down", || {
            !t.fakes.calls(&["ShutdownSandbox"]).is_empty() && d.store.list_sandboxes().is_empty()
        })
        .await;
        until("the hand-back entry to go", || d.handback.pending() == 0).await;
        let name = crate::domain::sandbox::sandbox_name(req.config.as_ref().unwrap());
        assert_eq!(d.store.name_holder(&name), None);
        assert!(t.fakes.netns_held().is_empty());
        assert!(t.fakes.attached().is_empty());
        // The name is free for a new pod.
        gate.add_permits(1);
        let id = run_pod_sandbox(d, req).await.unwrap().pod_sandbox_id;
        assert_eq!(d.store.name_holder(&name), Some(id));
    }

    #[tokio::test]
    async fn a_container_that_outlived_its_caller_is_handed_back_or_removed() {
        // (claimed by a retry, or left to expire).
        for claimed in [true, false] {
            let t = TestDaemon::start();
            let d = &t.daemon;
            d.handback.set_expiry(Duration::from_millis(300));
            let sid = run_pod_sandbox(d, run_request("web"))
                .await
                .unwrap()
                .pod_sandbox_id;
            let gate = t.fakes.hold("Create");
            let req = create_request(&sid, "web", "app");
            abandoned(create_container(d, req.clone())).await;
            gate.add_permits(1);
            if claimed {
                let id = create_container(d, req).await.unwrap().container_id;
                assert_eq!(t.fakes.calls(&["Create"]), [format!("Create {id}")]);
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(
                    d.store.get_container(&id).is_ok(),
                    "a claimed container stays"
                );
            } else {
                until("the unclaimed container to be removed", || {
                    !t.fakes.calls(&["Delete"]).is_empty() && d.store.list_containers().is_empty()
                })
                .await;
                let id = crate::testing::id_of(&t.fakes, "Create");
                assert_eq!(t.fakes.shim_of(&sid).unwrap().task(&id), None);
            }
            until("the hand-back entry to go", || d.handback.pending() == 0).await;
        }
    }
}
