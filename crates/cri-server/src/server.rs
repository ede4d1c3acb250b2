//! The gRPC server on the CRI unix socket.

use crate::config::Config;
use crate::daemon::Daemon;
use crate::service::{ImageSvc, RuntimeSvc};
use anyhow::{bail, Context};
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

/// How often disk usage is measured (kubelet asks for stats every 10 s).
const USAGE_REFRESH: Duration = Duration::from_secs(10);

/// Largest gRPC message accepted or sent, as kubelet's client allows.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// How long in-flight calls may run on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

fn create_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("cannot create directory {}", path.display()))
}

/// Makes one of criusd's own directories with exactly `mode` (also when it
/// exists, e.g. from an older version with looser modes).
fn private_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    crius_store::private::dir_with_mode(path, mode)
        .with_context(|| format!("cannot create directory {}", path.display()))
}

/// Binds the CRI socket: creates its parent directory, replaces a stale socket
/// file (refusing when another daemon still answers on it) and sets mode 0660.
pub fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        // 0711 when made here: the socket's group must reach it. Not
        // changed when it exists (it may be a system directory like /run).
        create_dir(parent, 0o711)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another process is serving on {}; refusing to replace its socket",
                    path.display()
                );
            }
            tracing::info!(socket = %path.display(), "replacing stale socket");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(listener)
}

/// Installs SIGTERM and SIGINT handlers now (so a signal that arrives while
/// the daemon starts up is not lost to the default action) and returns a
/// future that resolves when either arrives. Must run inside the runtime.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down: no new calls, finishing in-flight ones"
        );
    })
}

/// Opens the store, binds the socket and serves until `shutdown` resolves;
/// then stops accepting, lets in-flight calls finish and removes the socket.
/// Every few seconds, hands the heap's free pages back to the kernel:
/// glibc keeps what a burst of requests freed (the top of each arena only
/// shrinks past a threshold, holes never), so after pods come and go the
/// resident set would stay at its high-water mark. The walk over a heap of
/// a few MiB takes well under a millisecond.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Installs the SIGHUP handler now (a SIGHUP during start-up must not end
/// the daemon); `run` reloads the configuration on each one.
pub fn hangup_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).context("cannot handle SIGHUP")
}

pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Option<(tokio::signal::unix::Signal, crate::reload::Reloader)>,
) -> anyhow::Result<()> {
    match crate::host::raise_nofile_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(
                before,
                after,
                "raised the soft open-file limit to the hard limit"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the soft open-file limit"),
    }
    // `root` is private. `state` is 0711: the CRI socket (0660, for its
    // group) lives in it by default, and its group must be able to reach
    // it; nothing in it can be listed, and every directory in it is 0700.
    private_dir(&config.root, 0o700)?;
    private_dir(&config.state, 0o711)?;
    // The default runtime root (runc makes it 0700 as well; made here so
    // that it is private whichever runtime comes first).
    private_dir(&config.state.join("runc"), 0o700)?;
    let (store, report) = crius_store::Store::open(&config.root.join("store"))
        .with_context(|| format!("cannot open the store under {}", config.root.display()))?;
    for (path, reason) in &report.quarantined {
        tracing::warn!(path = %path.display(), reason = %reason, "record set aside");
    }
    tracing::info!(
        records = report.loaded,
        quarantined = report.quarantined.len(),
        "store loaded"
    );

    let socket = config.socket.clone();
    let daemon = Arc::new(Daemon::new(config, store).context("cannot load runtime state")?);
    crate::recover::recover(&daemon).await;
    crate::nri::start(&daemon).await;
    tokio::spawn({
        let d = daemon.clone();
        async move { crate::recover::gc_network(&d).await }
    });
    tokio::spawn(return_freed_memory());
    // Disk usage (ImageFsInfo, writable layers in stats) is measured here,
    // never on a request.
    tokio::spawn(daemon.images.clone().run_usage_refresher(USAGE_REFRESH));
    let listener = bind_socket(&socket)?;
    tracing::info!(socket = %socket.display(), version = env!("CARGO_PKG_VERSION"), "criusd serving");

    // The shutdown future is shared: the servers stop accepting when it
    // fires, and the grace timer starts from the same moment.
    let (fired_tx, fired_rx) = tokio::sync::watch::channel(false);
    let stream_config = crate::streaming::StreamingConfig {
        address: daemon
            .config()
            .stream
            .address
            .parse()
            .context("stream.address")?,
        tls: (!daemon.config().stream.tls_cert_file.is_empty()).then(|| {
            crate::streaming::TlsFiles {
                cert: daemon.config().stream.tls_cert_file.clone().into(),
                key: daemon.config().stream.tls_key_file.clone().into(),
            }
        }),
        ..Default::default()
    };
    let backend = Arc::new(crate::domain::stream::ShimBackend::new(daemon.clone()));
    let (streaming, streaming_task) =
        crate::streaming::StreamingServer::start(stream_config, backend, fired_rx.clone())
            .await
            .context("cannot start the streaming server")?;
    tracing::info!(address = %streaming.local_addr(), "streaming server listening");
    let runtime = RuntimeServiceServer::new(RuntimeSvc::new(daemon.clone(), streaming))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let image = ImageServiceServer::new(ImageSvc::new(daemon.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);

    let signal = async move {
        shutdown.await;
        crate::notify::stopping();
        let _ = fired_tx.send(true);
    };
    let metrics = daemon.metrics.clone();
    let metrics_endpoint = Arc::new(crate::metrics::Endpoint::new(
        metrics.clone(),
        daemon.store.clone(),
        fired_rx.clone(),
    ));
    if let Some(bound) = metrics_endpoint
        .set_address(&daemon.config().metrics.address)
        .await
        .map_err(anyhow::Error::msg)?
    {
        tracing::info!(address = %bound, "serving metrics on /metrics");
    }
    if let Some((mut hangup, reloader)) = reload {
        let d = daemon.clone();
        let endpoint = metrics_endpoint.clone();
        let mut current = (*daemon.config()).clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                crate::notify::reloading();
                reloader.reload_and_log(&d, &endpoint, &mut current).await;
                crate::notify::ready();
            }
        });
    }
    // Clients other than Go's send an :authority made from the socket path,
    // which h2 would reject: see grpc_authority.
    let incoming = UnixListenerStream::new(listener)
        .map(|conn| conn.map(crate::grpc_authority::AuthorityRewrite::new));
    let serve = tonic::transport::Server::builder()
        .trace_fn(crate::telemetry::cri_span)
        .layer(crate::metrics::MetricsLayer::new(metrics))
        .add_service(runtime)
        .add_service(image)
        .serve_with_incoming_shutdown(incoming, signal);
    let grace = async move {
        let mut rx = fired_rx;
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    // The socket is bound (connections queue until the server polls them)
    // and recovery is done.
    crate::notify::ready();
    let result = tokio::select! {
        r = serve => r.context("gRPC server failed"),
        _ = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight calls did not finish in time");
            Ok(())
        }
    };
    metrics_endpoint.set_address("").await.ok();
    streaming_task.abort();
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(socket = %socket.display(), error = %e, "cannot remove socket"),
    }
    crate::nri::stop(&daemon).await;
    // The NRI socket is ours while we listen on it; plugins that look for
    // it must not find a dead one.
    if daemon.nri.get().is_some() && !daemon.config().nri.disable_connections {
        let nri_socket = daemon.config().nri.socket_path.clone();
        if let Err(e) = std::fs::remove_file(&nri_socket) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %nri_socket.display(), error = %e, "cannot remove the NRI socket");
            }
        }
    }
    tracing::info!("criusd stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_but_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/c.sock");
        let first = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A live listener must not be stolen.
        let err = bind_socket(&path).unwrap_err().to_string();
        assert!(err.contains("another process"), "{err}");
        drop(first);
        // Now the file is stale. Other tests in this process fork children,
        // and a child holds a copy of the listener until its exec closes it,
        // so the socket may answer for a moment after the drop.
        let mut tries = 0;
        let _second = loop {
            match bind_socket(&path) {
                Ok(l) => break l,
                Err(e) if tries < 100 && e.to_string().contains("another process") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("stale socket not replaced: {e:#}"),
            }
        };

        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let err = bind_socket(&plain).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
    }
}
