//! The streaming server's backend: exec and attach through the pod's shim,
//! port-forward by connecting inside the pod's network namespace.

use crate::daemon::Daemon;
use crate::shimclient::{Shim, Stdio, ATTACH_TIMEOUT};
use crate::streaming::backend::{Backend, BackendError, BoxRead, BoxWrite, StreamIo};
use crius_store::ContainerState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// How long output may trail the exit of a process before it is cut off.
/// The shim closes its end of an output FIFO once the process's output is
/// copied (it reports the exit only after that, or after its own drain
/// timeout), so the pump normally sees EOF at once and this bound only
/// matters when something else keeps the output open (a background
/// process holding the terminal) or the shim's copy lags on a loaded node:
/// 300 ms once cut the last line of a terminal's output under load.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long a streamed exec may run (the client's connection bounds it too).
const EXEC_FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The shim-backed streaming backend.
pub struct ShimBackend {
    daemon: Arc<Daemon>,
}

impl ShimBackend {
    /// A backend over the daemon state.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        ShimBackend { daemon }
    }

    async fn running(
        &self,
        container_id: &str,
    ) -> Result<(crius_store::ContainerRecord, Shim), BackendError> {
        let record = self
            .daemon
            .store
            .get_container(container_id)
            .map_err(|e| BackendError::NotFound(e.to_string()))?;
        if record.status.state != ContainerState::Running {
            return Err(BackendError::FailedPrecondition(format!(
                "container {} is not running",
                record.metadata.id
            )));
        }
        let shim = self
            .daemon
            .shim(&record.metadata.sandbox_id)
            .await
            .ok_or_else(|| {
                BackendError::FailedPrecondition("the pod's shim is not running".into())
            })?;
        Ok((record, shim))
    }
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Internal(e.to_string())
}

fn mkfifo(path: &Path) -> Result<(), BackendError> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(internal)
}

/// Copies a FIFO to the client until `done` fires and the FIFO has been
/// quiet for [`OUTPUT_GRACE`] (the shim may hold the FIFO open, so EOF is
/// not guaranteed).
async fn pump_out(
    mut from: pipe::Receiver,
    mut to: BoxWrite,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let finished = *done.borrow();
        let read = if finished {
            match tokio::time::timeout(OUTPUT_GRACE, from.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = from.read(&mut buf) => r,
                _ = done.changed() => continue,
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

#[async_trait::async_trait]
impl Backend for ShimBackend {
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> Result<i32, BackendError> {
        let (record, shim) = self.running(container_id).await?;
        // The runtime moves the exec'd process into the container's cgroups.
        self.daemon.cgroup_primer.prime();
        let id = record.metadata.id.clone();
        let state = self.daemon.paths.container_state(&id);
        let config = tokio::fs::read(self.daemon.paths.container_spec(&id))
            .await
            .map_err(internal)?;
        // (The Exec RPC refused an empty command before handing out the URL.)
        let process = crius_spec::edit::exec_process(&config, &cmd, io.tty).map_err(internal)?;
        let exec_id = format!("stream-{}", &crius_store::generate_id()[..16]);
        let dir = state.join(&exec_id);
        crius_store::private::dir(&dir).map_err(internal)?;
        let result = run_exec(&shim, &id, &exec_id, &dir, process, io).await;
        let _ = shim.delete_task(&id, &exec_id).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn attach(&self, container_id: &str, io: StreamIo) -> Result<(), BackendError> {
        let (record, shim) = self.running(container_id).await?;
        let config = crate::domain::container::view::stored_config(&record);
        if io.stdin.is_some() && !config.stdin {
            return Err(BackendError::FailedPrecondition(
                "the container was not created with stdin".into(),
            ));
        }
        attach_via_shim(&self.daemon, &shim, &record.metadata.id, io).await
    }

    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
        stream: tokio::io::DuplexStream,
    ) -> Result<(), BackendError> {
        let sandbox = self
            .daemon
            .store
            .get_sandbox(sandbox_id)
            .map_err(|e| BackendError::NotFound(e.to_string()))?;
        if sandbox.status.state != crius_store::SandboxState::Ready {
            return Err(BackendError::FailedPrecondition(format!(
                "pod sandbox {sandbox_id} is not ready"
            )));
        }
        // A pod on the host's network has no namespace of its own: its
        // localhost is the host's (where criusd runs).
        let netns = sandbox.status.netns_path.clone();
        let std_stream = tokio::task::spawn_blocking(move || match netns {
            Some(netns) => {
                crius_netns::netns::run_in(Path::new(&netns), move || connect_localhost(port))
                    .map_err(internal)
            }
            None => Ok(connect_localhost(port)),
        })
        .await
        .map_err(internal)??
        .map_err(|e| {
            BackendError::Internal(format!("cannot connect to port {port} in the pod: {e}"))
        })?;
        std_stream.set_nonblocking(true).map_err(internal)?;
        let target = tokio::net::TcpStream::from_std(std_stream).map_err(internal)?;
        crate::streaming::splice(stream, target)
            .await
            .map_err(internal)?;
        Ok(())
    }
}

/// Connects to `port` on localhost as kubelet's runtimes do (Go's dial of
/// `localhost:PORT`): 127.0.0.1 first, then ::1 when nothing listens on
/// the IPv4 address.
fn connect_localhost(port: u16) -> std::io::Result<std::net::TcpStream> {
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match std::net::TcpStream::connect_timeout(&v4, Duration::from_secs(10)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            // The IPv4 error tells more when IPv6 is not there at all.
            std::net::TcpStream::connect_timeout(&v6, Duration::from_secs(10)).map_err(|_| e)
        }
        r => r,
    }
}

async fn run_exec(
    shim: &Shim,
    id: &str,
    exec_id: &str,
    dir: &Path,
    process: Vec<u8>,
    io: StreamIo,
) -> Result<i32, BackendError> {
    let StreamIo {
        stdin,
        stdout,
        stderr,
        tty,
        resize,
    } = io;
    let fifo = |name: &str, wanted: bool| -> Result<Option<PathBuf>, BackendError> {
        if !wanted {
            return Ok(None);
        }
        let p = dir.join(name);
        mkfifo(&p)?;
        Ok(Some(p))
    };
    let in_path = fifo("stdin", stdin.is_some())?;
    let out_path = fifo("stdout", stdout.is_some())?;
    let err_path = fifo("stderr", stderr.is_some() && !tty)?;
    // Our ends first: the shim opens its ends read-write, so nobody blocks.
    let out_rx = match &out_path {
        Some(p) => Some(
            pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(internal)?,
        ),
        None => None,
    };
    let err_rx = match &err_path {
        Some(p) => Some(
            pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(internal)?,
        ),
        None => None,
    };
    let in_tx = match &in_path {
        Some(p) => Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(p)
                .map_err(internal)?,
        ),
        None => None,
    };
    let as_str = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    shim.exec(
        id,
        exec_id,
        process,
        Stdio {
            terminal: tty,
            stdin: as_str(&in_path),
            stdout: as_str(&out_path),
            stderr: as_str(&err_path),
        },
    )
    .await
    .map_err(internal)?;
    shim.start_task(id, exec_id).await.map_err(internal)?;

    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut pumps = Vec::new();
    if let (Some(rx), Some(w)) = (out_rx, stdout) {
        pumps.push(tokio::spawn(pump_out(rx, w, done_rx.clone())));
    }
    if let (Some(rx), Some(w)) = (err_rx, stderr) {
        pumps.push(tokio::spawn(pump_out(rx, w, done_rx.clone())));
    }
    let stdin_task = match (in_tx, stdin) {
        (Some(mut tx), Some(mut r)) => {
            let shim = shim.clone();
            let (id, exec_id) = (id.to_string(), exec_id.to_string());
            Some(tokio::spawn(async move {
                let _ = copy_in(&mut r, &mut tx).await;
                drop(tx);
                let _ = shim.close_stdin(&id, &exec_id).await;
            }))
        }
        _ => None,
    };
    let resize_task = resize.map(|mut rx| {
        let shim = shim.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            while let Some(size) = rx.recv().await {
                let _ = shim
                    .resize_pty(&id, &exec_id, size.width as u32, size.height as u32)
                    .await;
            }
        })
    });
    let status = shim.wait(id, exec_id, EXEC_FOREVER).await;
    let _ = done_tx.send(true);
    for p in pumps {
        let _ = p.await;
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    if let Some(t) = resize_task {
        t.abort();
    }
    status.map(|s| s as i32).map_err(internal)
}

async fn copy_in(from: &mut BoxRead, to: &mut pipe::Sender) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Attach: the shim connects to a unix socket criusd listens on and sends
/// the output as frames (1 byte stream, 4 bytes big-endian length, data);
/// stdin bytes go the other way.
async fn attach_via_shim(
    daemon: &Daemon,
    shim: &Shim,
    id: &str,
    io: StreamIo,
) -> Result<(), BackendError> {
    let layout = daemon.shim_layout();
    crius_store::private::dir(&layout.socket_dir).map_err(internal)?;
    let socket = layout.attach_socket(&crius_store::generate_id()[..12]);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(internal)?;
    // Only the shim (root) connects: 0600, whatever the umask made it.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(internal)?;
    }
    let want_stdin = io.stdin.is_some();
    // The shim connects while the call is under way: the call runs beside
    // the accept.
    let call = {
        let (shim, cid, sock) = (shim.clone(), id.to_string(), socket.display().to_string());
        tokio::spawn(async move { shim.attach(&cid, &sock, want_stdin).await })
    };
    let accepted = tokio::time::timeout(ATTACH_TIMEOUT, listener.accept()).await;
    let _ = std::fs::remove_file(&socket);
    call.await.map_err(internal)?.map_err(internal)?;
    let (conn, _) = accepted
        .map_err(|_| BackendError::Internal("the shim did not connect for attach".into()))?
        .map_err(internal)?;
    let (mut rd, mut wr) = conn.into_split();
    let StreamIo {
        stdin,
        mut stdout,
        mut stderr,
        ..
    } = io;
    let stdin_task = stdin.map(|mut r| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut r, &mut wr).await;
            let _ = wr.shutdown().await;
        })
    });
    let mut header = [0u8; 5];
    loop {
        if rd.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > 16 * 1024 * 1024 {
            break;
        }
        let mut data = vec![0u8; len];
        if rd.read_exact(&mut data).await.is_err() {
            break;
        }
        let sink = match header[0] {
            2 => stderr.as_mut().or(stdout.as_mut()),
            _ => stdout.as_mut(),
        };
        if let Some(w) = sink {
            if w.write_all(&data).await.is_err() {
                break;
            }
        }
    }
    if let Some(mut w) = stdout {
        let _ = w.shutdown().await;
    }
    if let Some(mut w) = stderr {
        let _ = w.shutdown().await;
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(())
}
