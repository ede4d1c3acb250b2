//! systemd's readiness protocol (`Type=notify`): READY, RELOADING and
//! STOPPING go to the socket in `NOTIFY_SOCKET`. The variable is taken out
//! of the environment at start-up so that the shims, runc and the CNI
//! plugins criusd starts never see it (runc would relay its containers'
//! notifications). Without the variable nothing is sent.

use sd_notify::NotifyState;
use std::ffi::OsString;
use std::sync::OnceLock;

static SOCKET: OnceLock<Option<OsString>> = OnceLock::new();

/// Takes `NOTIFY_SOCKET` out of the environment. Call it once, first thing
/// in `main`, while the process has a single thread.
pub fn init() {
    let value = std::env::var_os("NOTIFY_SOCKET");
    if value.is_some() {
        // Before any other thread exists: nothing reads the environment
        // concurrently.
        std::env::remove_var("NOTIFY_SOCKET");
    }
    let _ = SOCKET.set(value.filter(|v| !v.is_empty()));
}

fn send_to(path: &OsString, message: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        sock.send_to_addr(message.as_bytes(), &SocketAddr::from_abstract_name(name)?)?;
    } else {
        sock.send_to(message.as_bytes(), std::path::Path::new(path))?;
    }
    Ok(())
}

/// Sends `states` to the service manager, if there is one.
pub fn notify(states: &[NotifyState]) {
    let Some(Some(path)) = SOCKET.get() else {
        return;
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    match send_to(path, &message) {
        Ok(()) => tracing::debug!(message = message.trim_end(), "notified the service manager"),
        Err(e) => tracing::warn!(error = %e, "cannot notify the service manager"),
    }
}

/// READY=1.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// RELOADING=1 with the time, as `Type=notify-reload` wants it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// STOPPING=1.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}
