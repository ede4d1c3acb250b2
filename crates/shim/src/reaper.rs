//! Child reaping for the serving shim.
//!
//! The shim is a child subreaper: every container process (runc's init and
//! exec children are re-parented to it) and every runc invocation ends up as
//! its child. One thread waits for SIGCHLD (delivered through a self-pipe, so
//! no signal mask is inherited by children) and reaps with `waitpid(-1)`.
//!
//! Commands the shim runs itself (runc) are spawned with the reaper lock held
//! and registered under their pid before the lock is released, so their exit
//! status can never be stolen. Other exits go to the exit hook (the task
//! service); exits that nobody claims yet are kept, tagged with a sequence
//! number, so that an exit racing with `runc start`/`runc exec` (the pid is
//! only known once runc returns) is still delivered exactly once.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// How many unclaimed exits are remembered (orphans nobody asks about).
const MAX_UNCLAIMED: usize = 256;

/// Errors of the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// Installing the SIGCHLD handler or the self-pipe failed.
    #[error("reaper setup: {0}")]
    Setup(#[source] io::Error),
    /// Spawning a command failed.
    #[error("spawn {cmd}: {source}")]
    Spawn {
        /// The program.
        cmd: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The reaper thread is gone.
    #[error("reaper thread stopped")]
    Stopped,
}

/// A reaped exit: pid and wait status (as `waitpid` returns it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The process id.
    pub pid: i32,
    /// The raw wait status.
    pub status: i32,
}

impl Exit {
    /// The exit code as containerd reports it: the code, or 128+signal.
    pub fn code(&self) -> u32 {
        exit_code(self.status)
    }
}

/// Converts a raw wait status to containerd's exit status convention.
pub fn exit_code(status: i32) -> u32 {
    let st = ExitStatus::from_raw(status);
    if let Some(c) = st.code() {
        c as u32
    } else if let Some(sig) = st.signal() {
        128 + sig as u32
    } else {
        255
    }
}

/// Called (with the reaper lock NOT held) for every exit of a process that no
/// command waiter claimed. It returns whether it knew the pid. It receives the
/// reaper so it can record the exit as unclaimed under its own locks.
pub type ExitHook = Box<dyn Fn(Exit) + Send + Sync>;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, Sender<i32>>,
    seq: u64,
    unclaimed: VecDeque<(u64, Exit)>,
}

/// The reaper. One per process.
pub struct Reaper {
    state: Mutex<State>,
    hook: OnceLock<ExitHook>,
}

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is valid.
        unsafe {
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
    }
}

impl Reaper {
    /// A reaper with no handler and no thread, for tests that only build
    /// command lines.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Reaper {
        Reaper {
            state: Mutex::new(State::default()),
            hook: OnceLock::new(),
        }
    }

    /// Installs the SIGCHLD handler and starts the reaper thread.
    pub fn start() -> Result<Arc<Reaper>, ReaperError> {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid two-int array.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if r != 0 {
            return Err(ReaperError::Setup(io::Error::last_os_error()));
        }
        // SAFETY: pipe2 returned two fresh descriptors that we now own.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The read end blocks; the write end (signal handler) must not.
        // SAFETY: plain fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(rd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(rd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        SIGNAL_FD.store(wr.as_raw_fd(), Ordering::SeqCst);
        std::mem::forget(wr);
        // SAFETY: installing a handler that only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigchld as *const () as usize;
            sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut()) != 0 {
                return Err(ReaperError::Setup(io::Error::last_os_error()));
            }
        }
        let reaper = Arc::new(Reaper {
            state: Mutex::new(State::default()),
            hook: OnceLock::new(),
        });
        let r2 = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || r2.run(std::fs::File::from(rd)))
            .map_err(ReaperError::Setup)?;
        Ok(reaper)
    }

    /// Sets the exit hook (once).
    pub fn set_hook(&self, hook: ExitHook) {
        let _ = self.hook.set(hook);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, mut pipe: std::fs::File) {
        let mut buf = [0u8; 64];
        loop {
            let mut others = Vec::new();
            {
                let mut st = self.lock();
                loop {
                    let mut status = 0;
                    // SAFETY: waitpid with a valid status pointer.
                    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                    if pid <= 0 {
                        break;
                    }
                    st.seq += 1;
                    if let Some(tx) = st.waiters.remove(&pid) {
                        let _ = tx.send(status);
                    } else {
                        others.push(Exit { pid, status });
                    }
                }
            }
            for e in others {
                match self.hook.get() {
                    Some(h) => h(e),
                    None => self.record_unclaimed(e),
                }
            }
            match pipe.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// The current exit sequence number; exits recorded after it are
    /// considered by [`Reaper::take_unclaimed`].
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Records an exit nobody knew about (called by the hook, under the
    /// caller's own lock so that a concurrent registration cannot miss it).
    pub fn record_unclaimed(&self, e: Exit) {
        let mut st = self.lock();
        let seq = st.seq;
        if st.unclaimed.len() >= MAX_UNCLAIMED {
            st.unclaimed.pop_front();
        }
        st.unclaimed.push_back((seq, e));
    }

    /// Takes the exit of `pid` recorded after sequence `since`, if any.
    pub fn take_unclaimed(&self, pid: i32, since: u64) -> Option<Exit> {
        let mut st = self.lock();
        let i = st
            .unclaimed
            .iter()
            .position(|(s, e)| e.pid == pid && *s > since)?;
        st.unclaimed.remove(i).map(|(_, e)| e)
    }

    /// Spawns `cmd` and registers it so that its exit comes back through the
    /// returned handle and never to the hook.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Spawned, ReaperError> {
        let (tx, rx) = channel();
        let mut st = self.lock();
        let child = cmd.spawn().map_err(|source| ReaperError::Spawn {
            cmd: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        st.waiters.insert(child.id() as i32, tx);
        Ok(Spawned { child, rx })
    }
}

/// A command spawned through the reaper.
pub struct Spawned {
    /// The child (do not call `wait` on it: the reaper owns its exit).
    pub child: Child,
    rx: Receiver<i32>,
}

impl Spawned {
    /// Waits for the exit and returns the raw wait status.
    pub fn wait(self) -> Result<i32, ReaperError> {
        drop(self.child.stdin);
        self.rx.recv().map_err(|_| ReaperError::Stopped)
    }

    /// Reads stdout to the end, then waits.
    pub fn wait_with_output(mut self) -> Result<(i32, Vec<u8>), ReaperError> {
        drop(self.child.stdin.take());
        let mut out = Vec::new();
        if let Some(mut so) = self.child.stdout.take() {
            let _ = so.read_to_end(&mut out);
        }
        let st = self.rx.recv().map_err(|_| ReaperError::Stopped)?;
        Ok((st, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        // (raw wait status, expected containerd exit status)
        let cases = [(0, 0), (1 << 8, 1), (137 << 8, 137), (9, 137), (15, 143)];
        for (raw, want) in cases {
            assert_eq!(exit_code(raw), want, "{raw}");
        }
    }
}
