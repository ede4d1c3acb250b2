//! OOM-kill detection for a container's memory cgroup: cgroup v1 through an
//! eventfd registered on `memory.oom_control`, cgroup v2 through inotify on
//! `memory.events` (`oom_kill` counter). One small thread per container; it
//! ends when the cgroup is removed.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use containerd_shim_protos::events::task::TaskOOM;

use crate::events::{Event, Publisher};
use crate::stats::{parse_kv, v1_dir, v2_dir};

/// A running OOM watch (the thread ends by itself with the cgroup).
pub struct OomWatch;

fn oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_kv(&text)
        .into_iter()
        .find(|(k, _)| *k == "oom_kill")
        .map(|(_, v)| v)
}

fn publish(p: &Publisher, id: &str) {
    tracing::info!(container = id, "OOM kill");
    let mut m = TaskOOM::new();
    m.container_id = id.to_string();
    p.publish(Event::Oom(m));
}

impl OomWatch {
    /// Starts watching the memory cgroup of `pid` for container `id`.
    /// Returns None (and logs) when the cgroup cannot be watched.
    pub fn start(pid: i32, id: String, publisher: Publisher) -> Option<OomWatch> {
        let r = match v2_dir(pid) {
            Ok(Some(dir)) => watch_v2(dir, id.clone(), publisher),
            Ok(None) => v1_dir(pid, "memory").and_then(|d| watch_v1(d, id.clone(), publisher)),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => Some(OomWatch),
            Err(e) => {
                tracing::warn!(container = %id, "no OOM watch: {e}");
                None
            }
        }
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name("oom".into())
        .stack_size(64 * 1024)
        .spawn(f)
        .map(|_| ())
}

fn watch_v1(dir: PathBuf, id: String, publisher: Publisher) -> io::Result<()> {
    let ctl = dir.join("memory.oom_control");
    let oc = File::open(&ctl)?;
    // SAFETY: eventfd returns a new descriptor or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: efd is a fresh descriptor we own.
    let mut ev = unsafe { File::from_raw_fd(efd) };
    let mut reg = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.event_control"))?;
    reg.write_all(format!("{} {}", ev.as_raw_fd(), oc.as_raw_fd()).as_bytes())?;
    spawn(move || {
        let _oc = oc;
        let mut b = [0u8; 8];
        loop {
            if ev.read_exact(&mut b).is_err() {
                return;
            }
            // The eventfd also fires when the cgroup is removed. It is
            // signalled before the kernel kills (and counts) the victim, so
            // every event of a live cgroup is an OOM.
            if !dir.exists() {
                return;
            }
            publish(&publisher, &id);
        }
    })
}

fn watch_v2(dir: PathBuf, id: String, publisher: Publisher) -> io::Result<()> {
    let events = dir.join("memory.events");
    // SAFETY: inotify_init1 returns a new descriptor or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let mut ino = unsafe { File::from_raw_fd(fd) };
    let c = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid fd and NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut seen = oom_kills(&events).unwrap_or(0);
    spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            match ino.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let Some(n) = oom_kills(&events) else { return };
            if n > seen {
                seen = n;
                publish(&publisher, &id);
            }
        }
    })
}
