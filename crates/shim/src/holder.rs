//! The PID-namespace holder of a pod whose containers share one PID
//! namespace (`io.crius.shim.infra = pid-holder`), in place of a pause
//! container.
//!
//! A pod without a user namespace needs a process only to be PID 1 of its
//! shared PID namespace: its network, IPC and UTS namespaces are pinned by
//! the shim as for any pod without an infra process. Starting a pause
//! container for that costs a full `runc run` (tens of milliseconds of CPU
//! and of pod start-up, with another rootfs mount per pod); the shim
//! instead runs its own binary again in the pod's namespaces, named
//! `crius-pid-holder <root>` (its `argv[0]`, so that process listings and
//! whatever looks for shims by command line do not take it for a shim),
//! with `unshare(CLONE_NEWPID)` before the exec, and that process forks
//! the holder, PID 1 of the new namespace.
//! Written here because no crate runs such a process: it is the one piece
//! of process set-up the shim does without the OCI runtime.
//!
//! The holder is confined more tightly than a pause container: before it
//! reports ready it has /dev/null as its only files, its root is an empty
//! directory (chroot), it has no capabilities (bounding and ambient sets
//! cleared, uid and gid 65535 without supplementary groups), no new
//! privileges, is not dumpable (no ptrace or /proc/<pid>/root access
//! without CAP_SYS_PTRACE), and a seccomp filter allows only the system
//! calls of its loop (wait for a signal, reap, exit); any other kills it.
//! It reaps the children the namespace hands it and exits on SIGTERM or
//! SIGINT; SIGKILL from the shim ends it, and with it every process of
//! the namespace.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The `argv[0]` under which the shim binary runs the holder's launcher
/// (and so the holder): its command line is `crius-pid-holder <root>`.
/// Its command name (`comm`, at most 15 bytes) is set to the same,
/// truncated: `crius-pid-holde`.
pub const ARGV0: &str = "crius-pid-holder";

/// The file in the pod's directory naming the holder (`<pid> <start
/// time>`), for the `delete` action after a dead shim.
pub const RECORD: &str = "pid-holder";

/// The user and group the holder runs as (those of the usual pause image).
const HOLDER_ID: libc::uid_t = 65535;

/// Runs the holder's launcher: forks the holder (PID 1 of the PID
/// namespace the caller unshared before the exec) and, once the holder is
/// confined, prints its pid and exits 0; exits 1 if the holder could not be
/// confined. `root` is an empty directory for the holder's root.
pub fn launch(root: &Path) -> ! {
    // The command name is the binary's file name (`containerd-shim`,
    // truncated) whatever `argv[0]` says: name it after the holder too, so
    // `ps -e` and `pgrep` do not show it as a shim. Inherited by the fork.
    // SAFETY: a NUL-terminated string of 15 bytes, the most `comm` holds.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"crius-pid-holde".as_ptr(), 0, 0, 0) };
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        fail("pipe", io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned here only.
    let (mut ready_r, ready_w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: this process runs no other thread (main calls this first).
    match unsafe { libc::fork() } {
        -1 => fail("fork", io::Error::last_os_error()),
        0 => {
            drop(ready_r);
            // `confine` moves it to fd 3 and closes the rest.
            let ready = ready_w.into_raw_fd();
            let code = match confine(root, ready) {
                Ok(()) => serve(),
                Err(_) => 1,
            };
            // SAFETY: ends this process only.
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(ready_w);
            let mut b = [0u8; 1];
            if matches!(ready_r.read(&mut b), Ok(1)) {
                let mut out = io::stdout();
                let _ = writeln!(out, "{pid}");
                let _ = out.flush();
                std::process::exit(0);
            }
            let mut status = 0;
            // SAFETY: `pid` is this process's child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            eprintln!("crius-pid-holder: the holder exited while confining itself ({status})");
            std::process::exit(1);
        }
    }
}

fn fail(what: &str, e: io::Error) -> ! {
    eprintln!("crius-pid-holder: {what}: {e}");
    std::process::exit(1)
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Everything the holder does before it reports ready, in this order:
/// files, root, identity and capabilities, signals, seccomp.
fn confine(root: &Path, ready: libc::c_int) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let root = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("root with a NUL byte"))?;
    // Raw: `confine` closes every descriptor but 0-3 itself.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into_raw_fd();
    // SAFETY: plain descriptor and process syscalls on valid arguments;
    // this process is single-threaded.
    unsafe {
        // 0-2: /dev/null; 3: the ready pipe; nothing else.
        for fd in 0..3 {
            check(libc::dup2(null, fd))?;
        }
        check(libc::dup2(ready, 3))?;
        let r = libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        if r != 0 {
            for fd in 4..4096 {
                libc::close(fd);
            }
        }
        // Best effort: the pause's usual adjustment (needs CAP_SYS_RESOURCE).
        let adj = b"-998";
        let f = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
        if f >= 0 {
            libc::write(f, adj.as_ptr().cast(), adj.len());
            libc::close(f);
        }
        check(libc::chdir(root.as_ptr()))?;
        check(libc::chroot(c".".as_ptr()))?;
        check(libc::chdir(c"/".as_ptr()))?;
        for cap in 0..64 {
            // EINVAL past the last capability of this kernel.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(HOLDER_ID, HOLDER_ID, HOLDER_ID))?;
        // Leaving uid 0 clears the permitted and effective sets.
        check(libc::setresuid(HOLDER_ID, HOLDER_ID, HOLDER_ID))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))?;
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &all,
            std::ptr::null_mut(),
        ))?;
    }
    install_seccomp()
}

/// Reports ready on fd 3 (see `confine`), then waits for signals: reaps
/// on SIGCHLD, exits 0 on SIGTERM or SIGINT.
fn serve() -> i32 {
    // SAFETY: the ready pipe is fd 3 (see `confine`); these calls are the
    // ones the seccomp filter allows.
    unsafe {
        if libc::write(3, b"1".as_ptr().cast(), 1) != 1 {
            return 1;
        }
        libc::close(3);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        loop {
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            match sig {
                libc::SIGCHLD => {
                    while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
                }
                libc::SIGTERM | libc::SIGINT => return 0,
                _ => {}
            }
        }
    }
}

/// One BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const SockFilter,
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// `offsetof(struct seccomp_data, nr)` and `arch`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_003e);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_00b7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// The system calls the holder makes once confined.
fn allowed() -> [u32; 9] {
    [
        libc::SYS_rt_sigtimedwait,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_restart_syscall,
        libc::SYS_rt_sigreturn,
    ]
    .map(|n| n as u32)
}

/// The filter: another architecture or a system call not in `allowed`
/// kills the process (x32 numbers on x86_64 match none of them).
fn program(arch: u32, allowed: &[u32]) -> Vec<SockFilter> {
    let n = allowed.len();
    let ins = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let mut p = vec![
        ins(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
        ins(BPF_JEQ_K, 0, (n + 1) as u8, arch),
        ins(BPF_LD_W_ABS, 0, 0, DATA_NR),
    ];
    for (i, nr) in allowed.iter().enumerate() {
        p.push(ins(BPF_JEQ_K, (n - i) as u8, 0, *nr));
    }
    p.push(ins(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS));
    p.push(ins(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
    p
}

fn install_seccomp() -> io::Result<()> {
    let arch =
        AUDIT_ARCH.ok_or_else(|| io::Error::other("no seccomp filter for this architecture"))?;
    let p = program(arch, &allowed());
    let prog = SockFprog {
        len: p.len() as libc::c_ushort,
        filter: p.as_ptr(),
    };
    // SAFETY: `prog` points at `p`, alive across the call.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const SockFprog,
            0,
            0,
        )
    })
}

/// The start time of a process (field 22 of /proc/<pid>/stat), to tell it
/// from a later process with the same pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Writes the holder's record in the pod's directory.
pub fn write_record(pod_dir: &Path, pid: i32) -> io::Result<()> {
    let t = start_time(pid).ok_or_else(|| io::Error::other(format!("no process {pid}")))?;
    crate::task::write_atomic(&pod_dir.join(RECORD), format!("{pid} {t}").as_bytes())
}

/// Kills the holder a pod's record names, if that process still runs
/// (same pid and start time); removes the record.
pub fn kill_recorded(pod_dir: &Path) -> io::Result<()> {
    let path: PathBuf = pod_dir.join(RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    if let (Some(Ok(pid)), Some(Ok(t))) = (it.next(), it.next()) {
        let pid = pid as i32;
        if pid > 1 && start_time(pid) == Some(t) {
            // SAFETY: signals the recorded process, checked above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    std::fs::remove_file(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_program_table() {
        // (allowed, the jump offsets of the checks) for one architecture.
        let p = program(7, &[10, 20, 30]);
        let want = vec![
            SockFilter {
                code: BPF_LD_W_ABS,
                jt: 0,
                jf: 0,
                k: DATA_ARCH,
            },
            // Another architecture: to the kill, past the load and 3 checks.
            SockFilter {
                code: BPF_JEQ_K,
                jt: 0,
                jf: 4,
                k: 7,
            },
            SockFilter {
                code: BPF_LD_W_ABS,
                jt: 0,
                jf: 0,
                k: DATA_NR,
            },
            SockFilter {
                code: BPF_JEQ_K,
                jt: 3,
                jf: 0,
                k: 10,
            },
            SockFilter {
                code: BPF_JEQ_K,
                jt: 2,
                jf: 0,
                k: 20,
            },
            SockFilter {
                code: BPF_JEQ_K,
                jt: 1,
                jf: 0,
                k: 30,
            },
            SockFilter {
                code: BPF_RET_K,
                jt: 0,
                jf: 0,
                k: SECCOMP_RET_KILL_PROCESS,
            },
            SockFilter {
                code: BPF_RET_K,
                jt: 0,
                jf: 0,
                k: SECCOMP_RET_ALLOW,
            },
        ];
        assert_eq!(p, want);
        // Every allowed call jumps to the ALLOW at the end.
        for (i, ins) in p.iter().enumerate().skip(3).take(3) {
            assert_eq!(i + 1 + ins.jt as usize, p.len() - 1, "{i}");
        }
        assert_eq!(2 + p[1].jf as usize, p.len() - 2);
    }

    #[test]
    fn start_time_of_self_and_records() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
        let dir = tempfile::tempdir().unwrap();
        // No record: nothing to do.
        kill_recorded(dir.path()).unwrap();
        // A record of a process that is not the one recorded (start time
        // differs): not signalled, the record goes.
        std::fs::write(dir.path().join(RECORD), format!("{me} 1")).unwrap();
        kill_recorded(dir.path()).unwrap();
        assert!(!dir.path().join(RECORD).exists());
        // Garbage: the record goes.
        std::fs::write(dir.path().join(RECORD), "x y").unwrap();
        kill_recorded(dir.path()).unwrap();
        assert!(!dir.path().join(RECORD).exists());
    }
}
