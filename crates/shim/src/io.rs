//! Container stdio.
//!
//! The stdout/stderr fields of CreateTaskRequest and ExecProcessRequest name
//! where the process output goes:
//! - a plain path (containerd's FIFOs, or a regular file): handed to the
//!   runtime as the process's fd directly, no copying;
//! - `file:///abs/path`: appended to that file;
//! - `capped-file:///abs/path?limit=N`: the shim appends at most N bytes to
//!   that file from a pipe and reads and drops the rest, so that the
//!   process never blocks and the file never grows past N (criusd's
//!   ExecSync output);
//! - `crilog:///abs/path/0.log`: the shim writes the CRI log file itself
//!   (kubelet format) from pipes; stdout and stderr naming the same file
//!   share one writer;
//! - `attach`: the shim copies the output from a pipe to attached clients
//!   only (a CRI container without a log path can still be attached to);
//! - empty: /dev/null.
//!
//! stdin is a FIFO path (copied into a pipe so that CloseIO can close it),
//! `attach` / `attach-once` (a pipe fed only by Attach clients; `-once`
//! closes it when the first attach client goes away, CRI's StdinOnce), or
//! empty. With a terminal the runtime sends the pty master over a console
//! socket; the shim copies it to stdout and copies stdin into it, until the
//! process was reaped and its last output arrived (see `console_step`).
//!
//! Output that the shim copies (CRI logs, terminals) is also fanned out to
//! attached clients (see [`Attachers`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::crilog::{CriLogWriter, Stream};
use crate::runc::ProcStdio;

const COPY_BUF: usize = 32 * 1024;
const COPY_STACK: usize = 128 * 1024;

/// Errors of stdio set-up.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// Opening or creating something failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The stdio URI is not acceptable.
    #[error("unsupported stdio {0:?}")]
    Unsupported(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> IoError {
    let what = what.into();
    move |source| IoError::Io { what, source }
}

/// Where one output stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Nowhere.
    Null,
    /// A path handed to the process directly (FIFO or regular file).
    Path(PathBuf),
    /// A CRI log file written by the shim.
    CriLog(PathBuf),
    /// A file the shim writes at most `limit` bytes to, dropping the rest.
    CappedFile {
        /// The file.
        path: PathBuf,
        /// The most bytes written to it.
        limit: u64,
    },
    /// Copied by the shim to attached clients only.
    Attach,
}

/// Parses a stdout/stderr field.
pub fn parse_target(s: &str) -> Result<Target, IoError> {
    match s {
        "" => return Ok(Target::Null),
        "attach" => return Ok(Target::Attach),
        _ => {}
    }
    let (scheme, mut rest) = match s.split_once("://") {
        Some((sch, r)) => (sch, r),
        None => ("", s),
    };
    let mut limit = None;
    if scheme == "capped-file" {
        let (p, n) = rest
            .rsplit_once("?limit=")
            .ok_or_else(|| IoError::Unsupported(s.to_string()))?;
        limit = Some(
            n.parse::<u64>()
                .map_err(|_| IoError::Unsupported(s.to_string()))?,
        );
        rest = p;
    }
    let path = PathBuf::from(rest);
    if !path.is_absolute() || rest.split('/').any(|c| c == "..") {
        return Err(IoError::Unsupported(s.to_string()));
    }
    match scheme {
        "" | "file" | "fifo" => Ok(Target::Path(path)),
        "crilog" => Ok(Target::CriLog(path)),
        "capped-file" => Ok(Target::CappedFile {
            path,
            limit: limit.unwrap_or(0),
        }),
        _ => Err(IoError::Unsupported(s.to_string())),
    }
}

/// Where stdin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinMode {
    /// No stdin (/dev/null).
    Null,
    /// A FIFO copied into a pipe.
    Fifo(PathBuf),
    /// A pipe fed by Attach clients; `once`: closed when the first client
    /// detaches.
    Attach {
        /// CRI StdinOnce.
        once: bool,
    },
}

/// Parses a stdin field.
pub fn parse_stdin(s: &str) -> Result<StdinMode, IoError> {
    match s {
        "" => Ok(StdinMode::Null),
        "attach" => Ok(StdinMode::Attach { once: false }),
        "attach-once" => Ok(StdinMode::Attach { once: true }),
        _ => match parse_target(s)? {
            Target::Path(p) => Ok(StdinMode::Fifo(p)),
            _ => Err(IoError::Unsupported(s.to_string())),
        },
    }
}

/// Frame stream code of stdout in the attach protocol.
pub const ATTACH_STDOUT: u8 = 1;
/// Frame stream code of stderr in the attach protocol.
pub const ATTACH_STDERR: u8 = 2;

/// Clients attached to a process's output. Each gets frames of
/// `[stream: u8][len: u32 big-endian][data]`; a client that cannot keep up
/// (a write blocked for [`ATTACH_WRITE_TIMEOUT`]) or went away is dropped.
#[derive(Default)]
pub struct Attachers {
    conns: Mutex<Vec<UnixStream>>,
}

/// How long a write to an attached client may block.
pub const ATTACH_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Encodes one attach frame header.
pub fn frame_header(stream: u8, len: usize) -> [u8; 5] {
    let l = (len.min(u32::MAX as usize) as u32).to_be_bytes();
    [stream, l[0], l[1], l[2], l[3]]
}

impl Attachers {
    /// Adds a client.
    pub fn add(&self, s: UnixStream) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// Sends `data` of `stream` to every client.
    pub fn broadcast(&self, stream: u8, data: &[u8]) {
        let mut g = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_empty() || data.is_empty() {
            return;
        }
        let hdr = frame_header(stream, data.len());
        g.retain_mut(|c| c.write_all(&hdr).and_then(|_| c.write_all(data)).is_ok());
    }

    /// Closes every client (they read EOF).
    pub fn close_all(&self) {
        let mut g = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for c in g.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Counts running copy threads so an exit can wait for output to drain.
#[derive(Default)]
pub struct Drain {
    running: Mutex<usize>,
    cv: Condvar,
}

impl Drain {
    fn enter(self: &Arc<Self>) -> DrainGuard {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        DrainGuard(self.clone())
    }

    /// Waits until every copy thread ended, at most `timeout`; true if they
    /// did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let g = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match self.cv.wait_timeout_while(g, timeout, |n| *n > 0) {
            Ok((n, _)) => *n == 0,
            Err(e) => *e.into_inner().0 == 0,
        }
    }
}

struct DrainGuard(Arc<Drain>);

impl Drop for DrainGuard {
    fn drop(&mut self) {
        let mut n = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.0.cv.notify_all();
    }
}

/// The shim-side state of a process's stdio after set-up.
#[derive(Default)]
pub struct ProcIo {
    /// The stdin pipe's write end (closed by CloseIO).
    pub stdin: Arc<Mutex<Option<File>>>,
    /// Asks the stdin FIFO's copy thread to finish (see [`stdin_copy`]).
    pub stdin_fifo: Option<StdinClose>,
    /// The pty master, when the process has a terminal.
    pub console: Option<Arc<File>>,
    /// Tells the terminal's copy thread that the process exited: dropped
    /// (by [`ProcIo::process_exited`], or with the rest) it ends the wait
    /// in [`spawn_console_copy`].
    console_exited: Option<File>,
    /// CRI log writers (for ReopenLog).
    pub logs: Vec<Arc<Mutex<CriLogWriter>>>,
    /// Copy threads in flight.
    pub drain: Arc<Drain>,
    /// Whether any copy thread was started.
    pub copies: bool,
    /// Attached output clients.
    pub attach: Arc<Attachers>,
    /// stdin closes when the first attach client detaches.
    pub stdin_once: bool,
}

impl ProcIo {
    /// Tells the copy threads that the process was reaped (see
    /// [`spawn_console_copy`]); idempotent. Returns how long its output
    /// may still take to arrive after a reap (a terminal's settling).
    pub fn process_exited(&mut self) -> Duration {
        match self.console_exited.take() {
            Some(_) => CONSOLE_SETTLE + CONSOLE_SETTLE_STEP,
            None => Duration::ZERO,
        }
    }

    /// Closes stdin (CloseIO); idempotent. stdin fed from a FIFO is
    /// closed by its copy thread once it has passed on what the FIFO
    /// already holds: a caller that writes its input and closes right
    /// away must not see the EOF overtake the bytes.
    pub fn close_stdin(&self) {
        match &self.stdin_fifo {
            Some(close) => close.request(),
            None => {
                self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        }
    }

    /// Attaches a client connected at `conn`: it gets the output and, with
    /// `stdin`, feeds the process's stdin.
    pub fn attach(&self, conn: UnixStream, stdin: bool) -> Result<(), IoError> {
        if !self.copies {
            return Err(IoError::Unsupported(
                "the output of this process does not go through the shim".into(),
            ));
        }
        conn.set_write_timeout(Some(ATTACH_WRITE_TIMEOUT))
            .map_err(io_err("attach socket"))?;
        if stdin {
            if self
                .stdin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
            {
                return Err(IoError::Unsupported("the process has no stdin open".into()));
            }
            let reader = conn.try_clone().map_err(io_err("attach socket"))?;
            let to = self.stdin.clone();
            let once = self.stdin_once;
            std::thread::Builder::new()
                .name("attach-in".into())
                .stack_size(COPY_STACK)
                .spawn(move || {
                    let mut buf = LazyBuf::new();
                    loop {
                        let data = match buf.read_from(&reader) {
                            Ok([]) | Err(_) => break,
                            Ok(d) => d,
                        };
                        let mut g = to.lock().unwrap_or_else(|e| e.into_inner());
                        let Some(w) = g.as_mut() else { break };
                        if w.write_all(data).is_err() {
                            break;
                        }
                    }
                    if once {
                        to.lock().unwrap_or_else(|e| e.into_inner()).take();
                    }
                })
                .map_err(io_err("spawn attach thread"))?;
        }
        self.attach.add(conn);
        Ok(())
    }

    /// Reopens the CRI log files (log rotation).
    pub fn reopen_logs(&self) -> io::Result<()> {
        for l in &self.logs {
            l.lock().unwrap_or_else(|e| e.into_inner()).reopen()?;
        }
        Ok(())
    }

    /// Sets the terminal size.
    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        let Some(c) = &self.console else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "process has no terminal",
            ));
        };
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on an fd we own.
        let r = unsafe { libc::ioctl(c.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What the process gets and what the shim keeps.
pub struct Prepared {
    /// Handed to the runtime.
    pub stdio: ProcStdio,
    /// Kept by the shim.
    pub io: ProcIo,
    /// The console socket, when a terminal is requested.
    pub console: Option<ConsoleSocket>,
    /// Output targets, used to attach the pty master after the runtime ran.
    out: Option<OutSink>,
    stdin_mode: StdinMode,
}

type Sink = Box<dyn FnMut(&[u8]) -> io::Result<()> + Send>;

enum OutSink {
    Null,
    File(File),
    /// A file taking at most `left` more bytes; the rest is dropped.
    Capped {
        file: File,
        left: u64,
    },
    Log(Arc<Mutex<CriLogWriter>>),
}

impl OutSink {
    fn into_sink(self, stream: Stream, attach: Arc<Attachers>) -> Sink {
        let code = match stream {
            Stream::Stdout => ATTACH_STDOUT,
            Stream::Stderr => ATTACH_STDERR,
        };
        match self {
            OutSink::Null => Box::new(move |b| {
                attach.broadcast(code, b);
                Ok(())
            }),
            OutSink::File(mut f) => Box::new(move |b| {
                attach.broadcast(code, b);
                f.write_all(b)
            }),
            OutSink::Capped { mut file, mut left } => Box::new(move |b| {
                attach.broadcast(code, b);
                let n = (b.len() as u64).min(left) as usize;
                if n > 0 {
                    left -= n as u64;
                    file.write_all(&b[..n])?;
                }
                // Past the cap the output is read and dropped: the process
                // goes on as if it had been written.
                Ok(())
            }),
            OutSink::Log(l) => Box::new(move |b| {
                attach.broadcast(code, b);
                l.lock().unwrap_or_else(|e| e.into_inner()).write(stream, b)
            }),
        }
    }
}

fn open_path(p: &Path) -> Result<File, IoError> {
    let is_fifo = std::fs::metadata(p)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    let mut o = OpenOptions::new();
    if is_fifo {
        // O_RDWR does not block waiting for the reader.
        o.read(true).write(true);
    } else {
        // Exec output files (file://): private, as their directory.
        o.append(true).create(true).mode(crius_store::private::FILE);
    }
    o.custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map_err(io_err(format!("open {}", p.display())))
}

fn pipe() -> Result<(File, File), IoError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io_err("pipe")(io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors owned from here on.
    unsafe { Ok((File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))) }
}

/// A read buffer whose pages are only touched when data lands in them (a
/// zeroed buffer would keep all of it resident in every copy thread).
struct LazyBuf(Vec<u8>);

impl LazyBuf {
    fn new() -> LazyBuf {
        LazyBuf(Vec::with_capacity(COPY_BUF))
    }

    /// read(2) into the buffer; returns the bytes read.
    fn read_from(&mut self, fd: &impl AsRawFd) -> io::Result<&[u8]> {
        self.0.clear();
        let cap = self.0.capacity();
        // SAFETY: reads at most `cap` bytes into the vector's allocation;
        // the length is set to what the kernel wrote.
        unsafe {
            let n = libc::read(
                fd.as_raw_fd(),
                self.0.as_mut_ptr() as *mut libc::c_void,
                cap,
            );
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            self.0.set_len(n as usize);
        }
        Ok(&self.0)
    }
}

fn spawn_copy(
    name: &str,
    drain: &Arc<Drain>,
    from: impl AsRawFd + Send + 'static,
    mut to: Sink,
) -> Result<JoinHandle<()>, IoError> {
    let guard = drain.enter();
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(COPY_STACK)
        .spawn(move || {
            let _guard = guard;
            let mut buf = LazyBuf::new();
            loop {
                match buf.read_from(&from) {
                    Ok([]) => break,
                    Ok(data) => {
                        if to(data).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .map_err(io_err("spawn copy thread"))
}

/// How long a terminal's output may still arrive after its process was
/// reaped: quiet for this long, the copy ends.
const CONSOLE_SETTLE: Duration = Duration::from_millis(50);
/// How often the master is read again meanwhile.
const CONSOLE_SETTLE_STEP: Duration = Duration::from_millis(5);
/// The longest wait between reads of a master whose terminal is closed
/// while its process runs (something may open the terminal again).
const CONSOLE_RECHECK_MAX: Duration = Duration::from_secs(1);

/// What one failed read of a pty master means for its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsoleStep {
    /// Read again now.
    Retry,
    /// Wait this long (or until the process exits), then read again.
    Wait(Duration),
    /// The output is complete.
    Done,
}

/// The copy's state after the terminal was seen closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsoleClosed {
    /// The process has not been reaped; the next wait for its exit.
    Running(Duration),
    /// Reaped: output still arriving until this instant means more to copy.
    Settling(std::time::Instant),
}

/// Decides what a failed read (`errno`) of a pty master leads to. Linux
/// fails the read with EIO once the terminal's last holder closed it, but
/// not only then: the last bytes a process wrote just before exiting can
/// reach the master a few milliseconds after its read saw the terminal
/// closed (found by a test whose `echo` just before `exit` went missing
/// about once in a thousand terminal execs; a read 10 ms later returned
/// it). So EIO ends the copy only after the process was reaped and the
/// master stayed quiet for [`CONSOLE_SETTLE`], as containerd's shim keeps
/// reading its console until the process's exit closes it.
fn console_step(
    errno: Option<i32>,
    closed: &mut Option<ConsoleClosed>,
    exited: bool,
    now: std::time::Instant,
) -> ConsoleStep {
    match errno {
        Some(libc::EINTR) => return ConsoleStep::Retry,
        Some(libc::EIO) => {}
        _ => return ConsoleStep::Done,
    }
    let state = closed.get_or_insert(ConsoleClosed::Running(Duration::from_millis(10)));
    if let ConsoleClosed::Running(next) = *state {
        if !exited {
            *state = ConsoleClosed::Running((next * 2).min(CONSOLE_RECHECK_MAX));
            return ConsoleStep::Wait(next);
        }
        *state = ConsoleClosed::Settling(now + CONSOLE_SETTLE);
    }
    match *state {
        ConsoleClosed::Settling(until) if now < until => {
            ConsoleStep::Wait(CONSOLE_SETTLE_STEP.min(until - now))
        }
        _ => ConsoleStep::Done,
    }
}

/// Whether `fd` became readable or hung up within `timeout`.
fn wait_readable(fd: &File, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd we own.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Copies a pty master to `to` until the terminal is closed for good (see
/// [`console_step`]); `exited` turns readable (its writer closes) once the
/// process was reaped.
fn spawn_console_copy(
    drain: &Arc<Drain>,
    master: File,
    exited: File,
    mut to: Sink,
) -> Result<JoinHandle<()>, IoError> {
    let guard = drain.enter();
    std::thread::Builder::new()
        .name("pty-out".into())
        .stack_size(COPY_STACK)
        .spawn(move || {
            let _guard = guard;
            let mut buf = LazyBuf::new();
            let mut closed = None;
            let mut reaped = false;
            loop {
                let errno = match buf.read_from(&master) {
                    Ok([]) => break,
                    Ok(data) => {
                        if to(data).is_err() {
                            break;
                        }
                        // Open again, or still arriving: the next EIO
                        // starts over (settling from then on if reaped).
                        closed = None;
                        continue;
                    }
                    Err(e) => e.raw_os_error(),
                };
                reaped = reaped || wait_readable(&exited, Duration::ZERO);
                match console_step(errno, &mut closed, reaped, std::time::Instant::now()) {
                    ConsoleStep::Retry => {}
                    ConsoleStep::Done => break,
                    ConsoleStep::Wait(d) if reaped => std::thread::sleep(d),
                    ConsoleStep::Wait(d) => reaped = wait_readable(&exited, d),
                }
            }
        })
        .map_err(io_err("spawn console copy thread"))
}

/// The requesting end of a stdin copy thread's close (a pipe: dropping it
/// asks for the close as well).
pub struct StdinClose(File);

impl StdinClose {
    /// Asks the copy thread to pass on what the FIFO holds, then close.
    fn request(&self) {
        // Non-blocking: one byte is enough, a full pipe already asks.
        let _ = (&self.0).write(&[1]);
    }
}

/// What one poll of the FIFO's copy says.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// Everything readable was passed on; writers may send more.
    More,
    /// The FIFO reached EOF (every writer closed) or the target is gone.
    Done,
}

/// Passes on what the non-blocking `fifo` holds right now.
fn drain_fifo(fifo: &File, buf: &mut LazyBuf, to: &Mutex<Option<File>>) -> Drained {
    loop {
        let data = match buf.read_from(fifo) {
            Ok([]) => return Drained::Done,
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::More,
            Err(_) => return Drained::Done,
        };
        let mut g = to.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = g.as_mut() else {
            return Drained::Done;
        };
        if w.write_all(data).is_err() {
            return Drained::Done;
        }
    }
}

/// Copies the stdin FIFO at `path` into `to` until every writer closed
/// the FIFO or a close is requested through the returned handle; either
/// way what the FIFO holds is passed on first, then `to` is closed.
///
/// The FIFO is opened here, before the caller gets the process started, so
/// that bytes written and the writer closed at once are never lost with a
/// pipe nobody had open. It is opened non-blocking (no writer needs to be
/// there yet) and polled: Linux reports POLLHUP on it only once a writer
/// has come and gone.
fn stdin_copy(
    path: &Path,
    to: Arc<Mutex<Option<File>>>,
    drain: &Arc<Drain>,
) -> Result<StdinClose, IoError> {
    let fifo = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    let (wake_r, wake_w) = pipe()?;
    for f in [&wake_r, &wake_w] {
        // SAFETY: F_SETFL on a descriptor we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    }
    let d = drain.clone();
    std::thread::Builder::new()
        .name("stdin".into())
        .stack_size(COPY_STACK)
        .spawn(move || {
            let _ = &d;
            let mut buf = LazyBuf::new();
            loop {
                let mut fds = [
                    libc::pollfd {
                        fd: fifo.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: wake_r.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds we own.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    break;
                }
                if fds[0].revents != 0 && drain_fifo(&fifo, &mut buf, &to) == Drained::Done {
                    break;
                }
                if fds[1].revents != 0 {
                    // Closing: pass on what is there, then stop.
                    drain_fifo(&fifo, &mut buf, &to);
                    break;
                }
            }
            to.lock().unwrap_or_else(|e| e.into_inner()).take();
        })
        .map_err(io_err("spawn stdin thread"))?;
    Ok(StdinClose(wake_w))
}

/// A listening console socket for `--console-socket`.
pub struct ConsoleSocket {
    listener: UnixListener,
    /// Its path.
    pub path: PathBuf,
}

impl ConsoleSocket {
    /// Binds a console socket at `path`.
    pub fn bind(path: PathBuf) -> Result<ConsoleSocket, IoError> {
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(io_err(format!("bind {}", path.display())))?;
        // Only the runtime (root) connects.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io_err(format!("chmod {}", path.display())))?;
        Ok(ConsoleSocket { listener, path })
    }

    /// Receives the pty master the runtime sent (after it returned).
    pub fn receive(&self) -> Result<File, IoError> {
        self.listener
            .set_nonblocking(true)
            .map_err(io_err("console socket"))?;
        let (conn, _) = self
            .listener
            .accept()
            .map_err(io_err("runtime did not connect to the console socket"))?;
        conn.set_nonblocking(false)
            .map_err(io_err("console socket"))?;
        recv_fd(conn.as_raw_fd()).map_err(io_err("receive pty master"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_fd(sock: RawFd) -> io::Result<File> {
    let mut data = [0u8; 4096];
    // Room for one fd in the control message.
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr points at live buffers for the duration of recvmsg.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const RawFd);
                return Ok(File::from(OwnedFd::from_raw_fd(fd)));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no file descriptor in console message",
    ))
}

/// Prepares stdio for a process. `console_path` is where to put the console
/// socket when `terminal` is set.
pub fn prepare(
    stdin: &str,
    stdout: &str,
    stderr: &str,
    terminal: bool,
    console_path: PathBuf,
) -> Result<Prepared, IoError> {
    let out_t = parse_target(stdout)?;
    let err_t = if terminal {
        Target::Null
    } else {
        parse_target(stderr)?
    };
    let stdin_mode = parse_stdin(stdin)?;
    let mut io = ProcIo {
        stdin_once: stdin_mode == StdinMode::Attach { once: true },
        ..ProcIo::default()
    };
    let mut stdio = ProcStdio::default();
    let mut writers: Vec<(PathBuf, Arc<Mutex<CriLogWriter>>)> = Vec::new();
    let mut log_for = |p: &PathBuf, io: &mut ProcIo| -> Result<Arc<Mutex<CriLogWriter>>, IoError> {
        if let Some((_, w)) = writers.iter().find(|(q, _)| q == p) {
            return Ok(w.clone());
        }
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let w = Arc::new(Mutex::new(
            CriLogWriter::open(p).map_err(io_err(format!("open log {}", p.display())))?,
        ));
        writers.push((p.clone(), w.clone()));
        io.logs.push(w.clone());
        Ok(w)
    };

    if terminal {
        let console = ConsoleSocket::bind(console_path)?;
        let out = match &out_t {
            Target::Null | Target::Attach => OutSink::Null,
            Target::Path(p) => OutSink::File(open_path(p)?),
            Target::CappedFile { path, limit } => OutSink::Capped {
                file: open_path(path)?,
                left: *limit,
            },
            Target::CriLog(p) => OutSink::Log(log_for(p, &mut io)?),
        };
        return Ok(Prepared {
            stdio,
            io,
            console: Some(console),
            out: Some(out),
            stdin_mode,
        });
    }

    for (t, stream) in [(&out_t, Stream::Stdout), (&err_t, Stream::Stderr)] {
        let f = match t {
            Target::Null => None,
            Target::Path(p) => Some(open_path(p)?),
            Target::CriLog(_) | Target::Attach | Target::CappedFile { .. } => {
                let out = match t {
                    Target::CriLog(p) => OutSink::Log(log_for(p, &mut io)?),
                    Target::CappedFile { path, limit } => OutSink::Capped {
                        file: open_path(path)?,
                        left: *limit,
                    },
                    _ => OutSink::Null,
                };
                let (r, wr) = pipe()?;
                let name = if stream == Stream::Stdout {
                    "stdout"
                } else {
                    "stderr"
                };
                let sink = out.into_sink(stream, io.attach.clone());
                spawn_copy(name, &io.drain, r, sink)?;
                io.copies = true;
                Some(wr)
            }
        };
        match stream {
            Stream::Stdout => stdio.stdout = f,
            Stream::Stderr => stdio.stderr = f,
        }
    }
    match &stdin_mode {
        StdinMode::Null => {}
        StdinMode::Fifo(p) => {
            let (r, w) = pipe()?;
            stdio.stdin = Some(r);
            *io.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
            io.stdin_fifo = Some(stdin_copy(p, io.stdin.clone(), &io.drain)?);
        }
        StdinMode::Attach { .. } => {
            let (r, w) = pipe()?;
            stdio.stdin = Some(r);
            *io.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
        }
    }
    Ok(Prepared {
        stdio,
        io,
        console: None,
        out: None,
        stdin_mode,
    })
}

impl Prepared {
    /// Takes the runtime's stdio.
    pub fn take_stdio(&mut self) -> ProcStdio {
        std::mem::take(&mut self.stdio)
    }

    /// Finishes set-up after the runtime ran: receives the pty master and
    /// starts copying. Returns the shim's side.
    pub fn finish(mut self) -> Result<ProcIo, IoError> {
        if let Some(cs) = self.console.take() {
            let master = Arc::new(cs.receive()?);
            if let Some(out) = self.out.take() {
                let r = master.try_clone().map_err(io_err("dup pty master"))?;
                let sink = out.into_sink(Stream::Stdout, self.io.attach.clone());
                let (exited, tell) = pipe()?;
                spawn_console_copy(&self.io.drain, r, exited, sink)?;
                self.io.console_exited = Some(tell);
                self.io.copies = true;
            }
            match std::mem::replace(&mut self.stdin_mode, StdinMode::Null) {
                StdinMode::Null => {}
                StdinMode::Fifo(p) => {
                    let w = master.try_clone().map_err(io_err("dup pty master"))?;
                    *self.io.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
                    self.io.stdin_fifo =
                        Some(stdin_copy(&p, self.io.stdin.clone(), &self.io.drain)?);
                }
                StdinMode::Attach { .. } => {
                    let w = master.try_clone().map_err(io_err("dup pty master"))?;
                    *self.io.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
                }
            }
            self.io.console = Some(master);
        }
        Ok(self.io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_reads_after_eio() {
        use std::time::Instant;
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let running = |d| Some(ConsoleClosed::Running(d));
        let settling = |d| Some(ConsoleClosed::Settling(t0 + d));
        // (errno, state before, reaped, now, step, state after)
        type Case = (
            Option<i32>,
            Option<ConsoleClosed>,
            bool,
            Duration,
            ConsoleStep,
            Option<ConsoleClosed>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Interrupted: read again.
            (Some(libc::EINTR), None, false, ms(0), ConsoleStep::Retry, None),
            // Any other error but EIO ends the copy.
            (Some(libc::EBADF), None, false, ms(0), ConsoleStep::Done, None),
            (None, None, true, ms(0), ConsoleStep::Done, None),
            // EIO while the process runs: wait for its exit, longer each
            // time, up to the most.
            (Some(libc::EIO), None, false, ms(0), ConsoleStep::Wait(ms(10)), running(ms(20))),
            (Some(libc::EIO), running(ms(640)), false, ms(0), ConsoleStep::Wait(ms(640)), running(ms(1000))),
            (Some(libc::EIO), running(ms(1000)), false, ms(0), ConsoleStep::Wait(ms(1000)), running(ms(1000))),
            // Reaped: settle, reading every step, until quiet long enough.
            (Some(libc::EIO), None, true, ms(0), ConsoleStep::Wait(CONSOLE_SETTLE_STEP), settling(CONSOLE_SETTLE)),
            (Some(libc::EIO), running(ms(80)), true, ms(7), ConsoleStep::Wait(CONSOLE_SETTLE_STEP), settling(ms(7) + CONSOLE_SETTLE)),
            (Some(libc::EIO), settling(ms(50)), true, ms(48), ConsoleStep::Wait(ms(2)), settling(ms(50))),
            (Some(libc::EIO), settling(ms(50)), true, ms(50), ConsoleStep::Done, settling(ms(50))),
        ];
        for (i, (errno, before, reaped, now, step, after)) in cases.into_iter().enumerate() {
            let mut state = before;
            assert_eq!(
                console_step(errno, &mut state, reaped, t0 + now),
                step,
                "case {i}"
            );
            assert_eq!(state, after, "case {i}");
        }
    }

    /// A pty pair: the master and the slave's path.
    fn open_pty() -> (File, PathBuf) {
        let (mut m, mut s) = (0, 0);
        let mut name = [0 as libc::c_char; 64];
        // SAFETY: valid out-pointers; NULL termios and winsize are allowed.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                name.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: openpty returned two descriptors we now own; the name is
        // NUL-terminated.
        unsafe {
            libc::close(s);
            let path = std::ffi::CStr::from_ptr(name.as_ptr());
            (File::from_raw_fd(m), PathBuf::from(path.to_str().unwrap()))
        }
    }

    #[test]
    fn console_copy_outlives_a_closed_terminal_until_the_exit() {
        let (master, slave) = open_pty();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink: Sink = {
            let got = got.clone();
            Box::new(move |b| {
                got.lock().unwrap().extend_from_slice(b);
                Ok(())
            })
        };
        let drain = Arc::new(Drain::default());
        let (exited, tell) = pipe().unwrap();
        spawn_console_copy(&drain, master, exited, sink).unwrap();
        let write = |text: &[u8]| {
            let mut f = OpenOptions::new().write(true).open(&slave).unwrap();
            f.write_all(text).unwrap();
        };
        // The terminal's only holder writes and closes it: the master
        // reads EIO. Then it is opened again and written to before the
        // process exits; that output is the process's too.
        write(b"one");
        std::thread::sleep(Duration::from_millis(100));
        write(b"two");
        assert!(
            !drain.wait(Duration::from_millis(100)),
            "ended before the exit"
        );
        drop(tell);
        assert!(
            drain.wait(Duration::from_secs(10)),
            "did not end after the exit"
        );
        assert_eq!(&got.lock().unwrap()[..], b"onetwo");
    }

    #[test]
    fn targets() {
        let cases = [
            ("", Some(Target::Null)),
            ("attach", Some(Target::Attach)),
            ("attach:///x", None),
            ("/run/fifo/out", Some(Target::Path("/run/fifo/out".into()))),
            ("file:///var/log/x", Some(Target::Path("/var/log/x".into()))),
            (
                "crilog:///var/log/pods/p/c/0.log",
                Some(Target::CriLog("/var/log/pods/p/c/0.log".into())),
            ),
            ("crilog://relative/0.log", None),
            ("crilog:///var/log/../etc/passwd", None),
            ("binary:///usr/bin/logger", None),
            (
                "capped-file:///run/x/stdout?limit=16777216",
                Some(Target::CappedFile {
                    path: "/run/x/stdout".into(),
                    limit: 16 << 20,
                }),
            ),
            ("capped-file:///run/x/stdout", None),
            ("capped-file:///run/x/stdout?limit=-1", None),
            ("capped-file://relative?limit=1", None),
            ("capped-file:///run/../x?limit=1", None),
            ("relative", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_target(input).ok(), want, "{input}");
        }
    }

    /// Sets up FIFO stdin, lets `feed` write into the FIFO, and returns
    /// what the process's stdin pipe delivers up to its EOF.
    fn stdin_through_fifo(feed: impl FnOnce(&Path, &ProcIo)) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut p = prepare(
            &fifo.display().to_string(),
            "",
            "",
            false,
            dir.path().join("c.sock"),
        )
        .unwrap();
        let mut stdio = p.take_stdio();
        let io = p.finish().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(stdio.stdin.as_mut().unwrap(), &mut got).unwrap();
            got
        });
        feed(&fifo, &io);
        let got = reader.join().unwrap();
        drop(io);
        got
    }

    #[test]
    fn fifo_stdin_is_delivered_whole_before_its_eof() {
        // criusd's order: write everything, close the FIFO, CloseIO at once.
        for _ in 0..200 {
            let got = stdin_through_fifo(|fifo, io| {
                let mut w = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(fifo)
                    .unwrap();
                w.write_all(b"alpha\nbeta\n").unwrap();
                drop(w);
                io.close_stdin();
            });
            assert_eq!(got, b"alpha\nbeta\n");
        }
        // CloseIO while the writer is still open: what was written goes
        // first, then the EOF.
        let got = stdin_through_fifo(|fifo, io| {
            let mut w = OpenOptions::new().write(true).open(fifo).unwrap();
            w.write_all(b"still open\n").unwrap();
            io.close_stdin();
            std::thread::sleep(Duration::from_millis(50));
            drop(w);
        });
        assert_eq!(got, b"still open\n");
        // The writer closing is an EOF by itself.
        let got = stdin_through_fifo(|fifo, _| {
            let mut w = OpenOptions::new().write(true).open(fifo).unwrap();
            w.write_all(b"x").unwrap();
        });
        assert_eq!(got, b"x");
        // No writer ever came: CloseIO still ends stdin.
        let got = stdin_through_fifo(|_, io| io.close_stdin());
        assert!(got.is_empty());
    }

    #[test]
    fn attach_target_reaches_attached_clients_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = prepare("", "attach", "attach", false, dir.path().join("c.sock")).unwrap();
        let stdio = p.take_stdio();
        let io = p.finish().unwrap();
        assert!(
            io.copies,
            "output of an attach target goes through the shim"
        );
        let (ours, theirs) = UnixStream::pair().unwrap();
        io.attach(theirs, false).unwrap();
        stdio.stdout.unwrap().write_all(b"to out").unwrap();
        let mut frame = [0u8; 11];
        let mut r = ours.try_clone().unwrap();
        r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Read::read_exact(&mut r, &mut frame).unwrap();
        assert_eq!(&frame[..5], &frame_header(ATTACH_STDOUT, 6));
        assert_eq!(&frame[5..], b"to out");
        stdio.stderr.unwrap().write_all(b"to err").unwrap();
        std::io::Read::read_exact(&mut r, &mut frame).unwrap();
        assert_eq!(&frame[..5], &frame_header(ATTACH_STDERR, 6));
        assert_eq!(&frame[5..], b"to err");
        // Nothing was written anywhere else.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn capped_file_takes_the_cap_and_drops_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let (out, err) = (d.path().join("stdout"), d.path().join("stderr"));
        let limit = 1 << 20;
        let mut prep = prepare(
            "",
            &format!("capped-file://{}?limit={limit}", out.display()),
            &format!("capped-file://{}?limit=10", err.display()),
            false,
            d.path().join("console"),
        )
        .unwrap();
        let stdio = prep.take_stdio();
        let io = prep.finish().unwrap();
        // The "process": 5 MiB on stdout, a little on stderr; nothing may
        // block although the files take only part of it.
        let (mut o, mut e) = (stdio.stdout.unwrap(), stdio.stderr.unwrap());
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..80 {
                o.write_all(&chunk).unwrap();
            }
            e.write_all(b"0123456789abcdef").unwrap();
        });
        writer.join().unwrap();
        io.drain.wait(Duration::from_secs(10));
        assert_eq!(std::fs::metadata(&out).unwrap().len(), limit);
        assert_eq!(std::fs::read(&err).unwrap(), b"0123456789");
    }

    #[test]
    fn crilog_pipes_write_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let uri = format!("crilog://{}", log.display());
        let mut p = prepare("", &uri, &uri, false, dir.path().join("c.sock")).unwrap();
        let stdio = p.take_stdio();
        let io = p.finish().unwrap();
        stdio.stdout.unwrap().write_all(b"out line\n").unwrap();
        stdio.stderr.unwrap().write_all(b"err line\n").unwrap();
        io.drain.wait(Duration::from_secs(30));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(" stdout F out line\n"), "{text}");
        assert!(text.contains(" stderr F err line\n"), "{text}");
    }
}
