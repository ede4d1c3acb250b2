//! Starting the kernel's wait for a cgroup move before the runtime needs it.
//!
//! Moving a process into a cgroup (what `runc create`, `run` and `exec` do
//! with the process they start) takes a kernel-wide semaphore for writing.
//! Unless a cgroup hierarchy is mounted with `favordynmods`, the first
//! writer waits for an RCU grace period before it gets it (8-16 ms on the
//! development VM, a third of a `runc create`). The kernel keeps the
//! semaphore writer-friendly from that first writer's arrival until a grace
//! period after the last writer is done: a writer arriving meanwhile waits
//! only for what is left of the grace period already under way, or not at
//! all.
//!
//! So when a request is about to have the runtime move a process
//! (CreateContainer, a pod's pause, an exec), criusd first moves one of its
//! own threads into the cgroup that thread is already in, on a blocking
//! thread, without waiting for it: nothing changes but the semaphore is
//! taken, and the grace period runs while criusd builds the spec and the
//! runtime starts up; the runtime's own move then finds it over or nearly.
//! Measured on the development VM (`runc create` of a pod container,
//! alternating): p50 33.7 ms without, 21.7 ms with.
//!
//! Off where there is nothing to gain (a hierarchy mounted with
//! `favordynmods`, see [`moves_wait_for_rcu`]) and, for
//! good, after the first move that fails (criusd without the right to write
//! its cgroup files, e.g. in a container with a read-only cgroupfs). At most
//! one move is under way at a time: concurrent requests share it.
//! Written by hand: no crate does this.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cgroup hierarchy mounted on the host (from /proc/self/mountinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// cgroup v2 (`cgroup2`) rather than a v1 hierarchy.
    pub unified: bool,
    /// The super options (a v1 hierarchy's controllers, `cpu`, `cpuacct`,
    /// `name=systemd`...; `favordynmods` on either).
    pub options: Vec<String>,
    /// The cgroup shown at the mount point (`/` unless a sub-tree is
    /// mounted, as in containers).
    pub root: String,
    /// Where it is mounted.
    pub point: PathBuf,
}

/// The cgroup hierarchies of a mountinfo text, in its order.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split(' ').collect();
        let tail: Vec<&str> = after.split(' ').collect();
        let (Some(root), Some(point), Some(kind)) = (fields.get(3), fields.get(4), tail.first())
        else {
            continue;
        };
        let unified = match *kind {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let options = tail
            .get(2)
            .map(|o| o.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        out.push(CgroupMount {
            unified,
            options,
            root: crate::host::unescape_mountinfo(root),
            point: PathBuf::from(crate::host::unescape_mountinfo(point)),
        });
    }
    out
}

/// Whether moving a process into a cgroup waits for an RCU grace period
/// on a host with these cgroup mounts: there are some, and none carries
/// `favordynmods` (a mount option, or the kernel's
/// `cgroup_favordynmods=true` boot option, which shows as one).
pub fn moves_wait_for_rcu(mounts: &[CgroupMount]) -> bool {
    !mounts.is_empty()
        && !mounts
            .iter()
            .any(|m| m.options.iter().any(|o| o == "favordynmods"))
}

/// The file through which a thread is moved into the cgroup it is in, from
/// its `/proc/thread-self/cgroup` text: `tasks` of the first v1 hierarchy
/// it is in that is mounted with its cgroup visible, else `cgroup.threads`
/// of the v2 one. Writing a thread id there takes the same kernel-wide
/// semaphore as the runtime's moves.
pub fn thread_target(mounts: &[CgroupMount], thread_cgroup: &str) -> Option<PathBuf> {
    let mut v2 = None;
    for line in thread_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let unified = controllers.is_empty();
        let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
        let found = mounts.iter().find_map(|m| {
            let same = if unified {
                m.unified
            } else {
                !m.unified && wanted.iter().all(|c| m.options.iter().any(|o| o == c))
            };
            if !same {
                return None;
            }
            let rel = relative_to(&m.root, path)?;
            let file = if unified { "cgroup.threads" } else { "tasks" };
            Some(m.point.join(rel).join(file))
        });
        match (found, unified) {
            (Some(p), false) => return Some(p),
            (Some(p), true) => v2 = v2.or(Some(p)),
            (None, _) => {}
        }
    }
    v2
}

/// `path` below the mount's `root`, without a leading slash; `None` when
/// the cgroup is not visible there.
fn relative_to<'a>(root: &str, path: &'a str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(rest.trim_start_matches('/'))
}

/// Starts cgroup moves' waits ahead of the runtime (see the module doc).
#[derive(Clone)]
pub struct Primer {
    inner: Arc<Inner>,
}

struct Inner {
    /// The host's cgroup hierarchies; moves are off when this is empty.
    mounts: Vec<CgroupMount>,
    on: AtomicBool,
    in_flight: AtomicBool,
    /// Moves by result (`ok`, `error`).
    counter: Option<prometheus::IntCounterVec>,
}

impl Primer {
    /// A primer that never moves anything (unit tests, and hosts where
    /// moves do not wait).
    pub fn off() -> Self {
        Self::with(Vec::new(), None)
    }

    /// The primer for the host of these cgroup mounts ([`cgroup_mounts`]
    /// of /proc/self/mountinfo): on when its cgroup moves wait for a grace
    /// period. `counter` counts the moves by result.
    pub fn for_host(mounts: Vec<CgroupMount>, counter: prometheus::IntCounterVec) -> Self {
        if !moves_wait_for_rcu(&mounts) {
            return Self::off();
        }
        Self::with(mounts, Some(counter))
    }

    fn with(mounts: Vec<CgroupMount>, counter: Option<prometheus::IntCounterVec>) -> Self {
        let on = !mounts.is_empty();
        Primer {
            inner: Arc::new(Inner {
                mounts,
                on: AtomicBool::new(on),
                in_flight: AtomicBool::new(false),
                counter,
            }),
        }
    }

    /// Whether moves are (still) made.
    pub fn is_on(&self) -> bool {
        self.inner.on.load(Ordering::Relaxed)
    }

    /// Moves a blocking thread into its own cgroup, in the background; does
    /// nothing when off or while a move is under way. Call it from the
    /// Tokio runtime, as early as possible in a request that will have the
    /// runtime move a process.
    pub fn prime(&self) {
        if !self.is_on() || self.inner.in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let r = move_this_thread(&inner.mounts);
            inner.in_flight.store(false, Ordering::Release);
            let result = if r.is_ok() { "ok" } else { "error" };
            if let Some(c) = &inner.counter {
                c.with_label_values(&[result]).inc();
            }
            if let Err(e) = r {
                inner.on.store(false, Ordering::Relaxed);
                tracing::info!(error = %e, "cannot move a thread into its own cgroup; cgroup moves are no longer started ahead of the runtime");
            }
        });
    }
}

/// Writes the calling thread's id into the cgroup file that moves it where
/// it already is.
fn move_this_thread(mounts: &[CgroupMount]) -> std::io::Result<()> {
    let own = std::fs::read_to_string("/proc/thread-self/cgroup")?;
    let target = thread_target(mounts, &own).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no mounted cgroup hierarchy shows this thread's cgroup",
        )
    })?;
    write_tid(&target)
}

fn write_tid(target: &Path) -> std::io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    std::fs::OpenOptions::new()
        .write(true)
        .open(target)?
        .write_all(tid.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This development VM: v1 hierarchies with cgroup2 beside them.
    const HYBRID: &str = "\
24 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
25 24 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
26 24 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
27 24 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 24 0:26 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
29 24 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    /// A v2-only host.
    const V2: &str =
        "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
    /// Inside a container: sub-trees mounted, a combined v1 hierarchy and
    /// a mount point with a space.
    const NESTED: &str = "\
40 30 0:23 /kubepods/pod1 /sys/fs/cgroup/cpu,cpuacct ro,relatime - cgroup cgroup rw,cpu,cpuacct
41 30 0:25 /kubepods/pod1 /sys/fs/cgroup/my\\040memory ro,relatime - cgroup cgroup rw,memory
42 30 0:27 /kubepods/pod1 /sys/fs/cgroup/unified ro,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mounts_from_mountinfo() {
        let m = cgroup_mounts(HYBRID);
        assert_eq!(m.len(), 5);
        assert!(!m[0].unified && m[0].options == ["rw", "cpu"]);
        assert_eq!(cgroup_mounts(V2)[0].options, ["rw", "nsdelegate"]);
        assert_eq!(m[3].options, ["rw", "name=systemd"]);
        assert!(m[4].unified && m[4].point == Path::new("/sys/fs/cgroup/unified"));
        let n = cgroup_mounts(NESTED);
        assert_eq!(n[1].point, Path::new("/sys/fs/cgroup/my memory"));
        assert_eq!(n[1].root, "/kubepods/pod1");
        assert!(cgroup_mounts("22 1 8:1 / / rw - ext4 /dev/vda rw\n").is_empty());
    }

    #[test]
    fn thread_targets() {
        // (mountinfo, /proc/thread-self/cgroup, expected file)
        let cases: &[(&str, &str, Option<&str>)] = &[
            // The first v1 hierarchy the thread is in that is mounted.
            (
                HYBRID,
                "9:name=systemd:/\n8:pids:/\n4:memory:/daemons/crius\n1:cpu:/\n0::/\n",
                Some("/sys/fs/cgroup/systemd/tasks"),
            ),
            (
                HYBRID,
                "8:pids:/\n4:memory:/daemons/crius\n0::/\n",
                Some("/sys/fs/cgroup/memory/daemons/crius/tasks"),
            ),
            // Only v2 known: its cgroup.threads.
            (
                HYBRID,
                "8:pids:/\n0::/a/b\n",
                Some("/sys/fs/cgroup/unified/a/b/cgroup.threads"),
            ),
            (
                V2,
                "0::/system.slice/criusd.service\n",
                Some("/sys/fs/cgroup/system.slice/criusd.service/cgroup.threads"),
            ),
            // A combined hierarchy, a sub-tree mount, an escaped mount point.
            (
                NESTED,
                "3:cpu,cpuacct:/kubepods/pod1/c1\n",
                Some("/sys/fs/cgroup/cpu,cpuacct/c1/tasks"),
            ),
            (
                NESTED,
                "5:memory:/kubepods/pod1\n",
                Some("/sys/fs/cgroup/my memory/tasks"),
            ),
            // Outside the mounted sub-tree (or only a name-alike): not visible.
            (NESTED, "3:cpu,cpuacct:/kubepods/pod10\n", None),
            (
                NESTED,
                "3:cpu,cpuacct:/other\n0::/kubepods/pod1/x\n",
                Some("/sys/fs/cgroup/unified/x/cgroup.threads"),
            ),
            // A hierarchy with only some of the controllers does not match.
            (HYBRID, "3:cpu,cpuset:/\n", None),
            // Nothing mounted, nothing parseable.
            ("", "0::/\n", None),
            (HYBRID, "garbage\n", None),
        ];
        for (mountinfo, own, want) in cases {
            let got = thread_target(&cgroup_mounts(mountinfo), own);
            assert_eq!(got.as_deref(), want.map(Path::new), "{own:?}");
        }
    }

    #[tokio::test]
    async fn off_does_nothing() {
        let p = Primer::off();
        assert!(!p.is_on());
        p.prime();
        assert!(!p.inner.in_flight.load(Ordering::Acquire));
    }
}
