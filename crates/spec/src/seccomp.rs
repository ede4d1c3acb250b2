//! The RuntimeDefault seccomp profile.
//!
//! An allow-list in the spirit of the profile containerd and Docker ship:
//! everything not listed fails with EPERM; some syscalls are allowed only
//! when the container holds the capability that guards them; `clone` may not
//! create namespaces without CAP_SYS_ADMIN and `clone3` then reports ENOSYS so
//! that libc falls back to `clone`; `socket` may not open AF_VSOCK.
//!
//! [`ALLOWED`] is the one table of syscalls allowed to every container,
//! [`BY_CAPABILITY`] the one of those a capability unlocks; [`DENIED`]
//! lists syscalls that must never appear in either (io_uring, removed from
//! containerd's and moby's default profiles in 2023: it bypasses seccomp
//! filtering of the operations it performs and has been a steady source of
//! kernel exploits).

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

/// Syscalls every container may make.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "arch_prctl",
    "modify_ldt",
];

/// Syscalls no container may make, whatever its capabilities: they must
/// not be in [`ALLOWED`] or [`BY_CAPABILITY`] (checked by a test).
pub const DENIED: &[&str] = &["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// Syscalls allowed only with a capability.
pub const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The namespace flags of clone(2) (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET).
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const AF_VSOCK: u64 = 40;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut r = LinuxSyscall::default();
    r.set_names(names.iter().map(|n| n.to_string()).collect());
    r.set_action(action);
    r.set_errno_ret(None);
    r.set_args(None);
    r
}

/// An allow rule for `name` when argument 0 compares with `value`
/// (`value_two` for the masked operators).
fn allow_arg0(
    name: &str,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSyscall {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(value)
        .op(op);
    if let Some(v) = value_two {
        arg = arg.value_two(v);
    }
    let arg = arg
        .build()
        .expect("a seccomp argument's builder has no required field");
    let mut r = rule(&[name], LinuxSeccompAction::ScmpActAllow);
    r.set_args(Some(vec![arg]));
    r
}

/// The profile for a container holding `caps`, as the OCI `linux.seccomp` object.
pub fn default_profile(caps: &[String]) -> LinuxSeccomp {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut names: Vec<&str> = ALLOWED.to_vec();
    for (cap, calls) in BY_CAPABILITY {
        if has(cap) {
            for c in *calls {
                if !names.contains(c) {
                    names.push(c);
                }
            }
        }
    }
    names.sort_unstable();
    let mut syscalls = vec![rule(&names, LinuxSeccompAction::ScmpActAllow)];
    for persona in [0u64, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff] {
        syscalls.push(allow_arg0(
            "personality",
            LinuxSeccompOperator::ScmpCmpEq,
            persona,
            None,
        ));
    }
    syscalls.push(allow_arg0(
        "socket",
        LinuxSeccompOperator::ScmpCmpNe,
        AF_VSOCK,
        None,
    ));
    if !has("CAP_SYS_ADMIN") {
        syscalls.push(allow_arg0(
            "clone",
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
        ));
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }
    let mut p = LinuxSeccomp::default();
    p.set_default_action(LinuxSeccompAction::ScmpActErrno);
    p.set_default_errno_ret(Some(EPERM));
    p.set_architectures(Some(vec![
        Arch::ScmpArchX86_64,
        Arch::ScmpArchX86,
        Arch::ScmpArchX32,
    ]));
    p.set_flags(None);
    p.set_listener_path(None);
    p.set_listener_metadata(None);
    p.set_syscalls(Some(syscalls));
    p
}

/// Whether `profile` (as made by [`default_profile`]) allows `syscall`
/// whatever its arguments: a rule with action `SCMP_ACT_ALLOW` and no
/// argument conditions names it.
pub fn allows_unconditionally(profile: &LinuxSeccomp, syscall: &str) -> bool {
    profile.syscalls().as_ref().is_some_and(|rules| {
        rules.iter().any(|r| {
            r.action() == LinuxSeccompAction::ScmpActAllow
                && r.args().is_none()
                && r.names().iter().any(|x| x == syscall)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn known_syscalls() {
        let every_cap: Vec<String> = BY_CAPABILITY.iter().map(|(c, _)| c.to_string()).collect();
        let none = default_profile(&[]);
        let all = default_profile(&every_cap);
        let all_json = serde_json::to_value(&all).unwrap();
        // (syscall, allowed without capabilities, allowed with all of them)
        let table = [
            ("io_uring_setup", false, false),
            ("io_uring_enter", false, false),
            ("io_uring_register", false, false),
            ("read", true, true),
            ("write", true, true),
            ("execve", true, true),
            ("openat", true, true),
            ("mmap", true, true),
            ("exit_group", true, true),
            ("mount", false, true),
            ("ptrace", false, true),
            ("reboot", false, true),
            ("keyctl", false, false),
            ("kexec_load", false, false),
            ("open_by_handle_at", false, false),
        ];
        for (call, want_none, want_all) in table {
            assert_eq!(allows_unconditionally(&none, call), want_none, "{call}");
            assert_eq!(allows_unconditionally(&all, call), want_all, "{call}");
        }
        // The tables agree: nothing denied is allowed anywhere, nothing twice.
        for call in DENIED {
            assert!(!ALLOWED.contains(call), "{call}");
            assert!(
                !BY_CAPABILITY.iter().any(|(_, c)| c.contains(call)),
                "{call}"
            );
            let rules = all_json["syscalls"].as_array().unwrap();
            assert!(
                !rules
                    .iter()
                    .any(|r| r["names"].as_array().unwrap().iter().any(|n| n == call)),
                "{call} in a rule"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for call in ALLOWED {
            assert!(seen.insert(call), "{call} twice in ALLOWED");
        }
    }

    fn allowed_names(p: &Value) -> Vec<String> {
        p["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn capability_gated_syscalls() {
        let none = serde_json::to_value(default_profile(&[])).unwrap();
        let names = allowed_names(&none);
        // (syscall, allowed without caps)
        let table = [
            ("read", true),
            ("mount", false),
            ("unshare", false),
            ("ptrace", false),
            ("keyctl", false),
            ("add_key", false),
            ("reboot", false),
            ("chroot", false),
            ("socket", false),
        ];
        for (call, want) in table {
            assert_eq!(names.iter().any(|n| n == call), want, "{call}");
        }
        // clone is restricted, clone3 answers ENOSYS.
        let rules = none["syscalls"].as_array().unwrap();
        assert!(rules
            .iter()
            .any(|r| r["names"][0] == "clone" && r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"));
        assert!(rules
            .iter()
            .any(|r| r["names"][0] == "clone3" && r["errnoRet"] == 38));
        assert!(rules
            .iter()
            .any(|r| r["names"][0] == "socket" && r["args"][0]["value"] == 40));

        let admin = serde_json::to_value(default_profile(&[
            "CAP_SYS_ADMIN".to_string(),
            "CAP_SYS_CHROOT".to_string(),
        ]))
        .unwrap();
        let names = allowed_names(&admin);
        for call in ["mount", "unshare", "setns", "clone", "clone3", "chroot"] {
            assert!(names.iter().any(|n| n == call), "{call}");
        }
        assert!(!admin["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["names"][0] == "clone3" && r["action"] == "SCMP_ACT_ERRNO"));
        // The profile reads back as the same OCI seccomp object.
        let back: LinuxSeccomp = serde_json::from_value(none).unwrap();
        assert_eq!(back, default_profile(&[]));
        let _: LinuxSeccomp = serde_json::from_value(admin).unwrap();
    }
}
