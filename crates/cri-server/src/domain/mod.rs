//! The pod and container domain below the RPC layer (`crate::rpc`): the
//! sandbox and container lifecycles, the one exit path and the watchers
//! (`exits`), hand-back, what the node's runtime reports (`node`), stats,
//! streaming backends and user namespaces. Nothing here knows of tonic,
//! and "runtime" below means the OCI runtime (runc, crun) only.

pub mod container;
pub mod exits;
pub mod filter;
pub mod handback;
pub mod info;
pub mod node;
pub mod sandbox;
pub mod stats;
pub mod stream;
pub mod userns;
pub mod version;

/// Adds `nodev` and `nosuid` (as asked) to the overlay mounts of a root
/// filesystem as the host mounts it (`<bundle>/rootfs`). runc bind-mounts
/// that mount as the container's `/`, and a bind keeps these flags, so they
/// hold inside the container as well: `nosuid` only where setuid files
/// could not raise privileges anyway (no_new_privs, the pause), `nodev`
/// where the container has no business with device nodes in its rootfs
/// (`/dev` is a tmpfs of its own). A user namespace pod's overlay is always
/// mounted with both (by the shim, `crius_shim::mount`).
pub fn harden_rootfs(
    mut mounts: Vec<crius_image::Mount>,
    nodev: bool,
    nosuid: bool,
) -> Vec<crius_image::Mount> {
    for m in mounts.iter_mut().filter(|m| m.kind == "overlay") {
        for (want, opt) in [(nosuid, "nosuid"), (nodev, "nodev")] {
            if want && !m.options.iter().any(|o| o == opt) {
                m.options.push(opt.to_string());
            }
        }
    }
    mounts
}

/// Now, in nanoseconds since the Unix epoch (the CRI's timestamps).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Runs `f` on the store on the blocking pool (record writes are durable:
/// they fsync); a failure is a CRI status.
pub async fn store_blocking<T: Send + 'static>(
    daemon: &crate::daemon::Daemon,
    f: impl FnOnce(&crius_store::Store) -> Result<T, crius_store::StoreError> + Send + 'static,
) -> Result<T, crate::errors::CriError> {
    let store = daemon.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| crate::errors::internal("store", e))?
        .map_err(crate::errors::store_status)
}

/// A record looked up by Stop or Remove, which succeed for what does not
/// exist: `None` when nothing has the id.
pub fn present<T>(
    lookup: Result<T, crius_store::StoreError>,
) -> Result<Option<T>, crate::errors::CriError> {
    match lookup {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.is_absent() => Ok(None),
        Err(e) => Err(crate::errors::store_status(e)),
    }
}
