//! The trash: where unused snapshots, blobs and unfinished unpacks go
//! before they are deleted.
//!
//! Deleting an unpacked layer of tens of thousands of files takes seconds;
//! renaming it takes microseconds. Garbage collection (and so RemoveImage)
//! therefore only renames what it collects into `<images>/trash/` (0700,
//! on the same filesystem, so the rename is atomic) under a name no other
//! entry has, and a single background sweeper on the blocking pool deletes
//! the trash's entries with [`crate::tree::remove_tree`]. Whatever a crash
//! leaves in the trash is deleted by the sweep at the next start.
//!
//! A renamed entry is gone from where it was at once: a pull of the same
//! image meanwhile unpacks and downloads into fresh directories, and the
//! trash's names never collide with theirs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The trash directory of an image directory.
pub const TRASH_DIR: &str = "trash";

/// The trash directory and the state of its sweeper.
pub struct Trash {
    dir: PathBuf,
    /// Part of every name: names stay unique across restarts too (the
    /// counter starts again at zero).
    prefix: String,
    next: AtomicU64,
    sweeper: Mutex<SweeperState>,
    /// Signalled when a sweeper stops (tests and benchmarks wait on it).
    idle: std::sync::Condvar,
}

#[derive(Default)]
struct SweeperState {
    /// A sweeper is running.
    running: bool,
    /// Something was moved in since the running sweeper last listed the
    /// trash: it sweeps once more.
    dirty: bool,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Names of the entries deleted.
    pub removed: Vec<String>,
    /// Entries that could not be deleted (logged; retried at the next sweep).
    pub failed: usize,
}

impl Trash {
    /// Opens (creating, 0700) the trash directory `dir`.
    pub fn open(dir: &Path) -> io::Result<Trash> {
        crius_store::private::dir(dir)?;
        Ok(Trash {
            dir: dir.to_path_buf(),
            prefix: format!("{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(0),
            sweeper: Mutex::new(SweeperState::default()),
            idle: std::sync::Condvar::new(),
        })
    }

    /// The trash directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A name no entry of the trash has had: `<kind>-<prefix>-<n>`.
    fn fresh_name(&self, kind: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{kind}-{}-{n}", self.prefix)
    }

    /// Renames `path` (a file or a directory tree) into the trash; returns
    /// its name there, or `None` when `path` does not exist. `kind` (a
    /// short word: `snapshot`, `blob`, `unpack`) starts the name. Fails
    /// when the rename does (e.g. `EXDEV`: the caller then deletes in
    /// place). Blocking, but short: one rename.
    pub fn move_in(&self, path: &Path, kind: &str) -> io::Result<Option<String>> {
        let name = self.fresh_name(kind);
        match rename_noreplace(path, &self.dir.join(&name)) {
            Ok(()) => {
                self.sweeper.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
                Ok(Some(name))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Names of the entries in the trash.
    pub fn entries(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Deletes every entry of the trash (blocking: may take seconds).
    /// Failures are logged and counted; the entry stays for the next sweep.
    /// Run one at a time ([`Trash::start_sweep`] makes sure).
    pub fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let names = match self.entries() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(path = %self.dir.display(), error = %e, "cannot list the trash; retried at the next sweep");
                report.failed += 1;
                return report;
            }
        };
        for name in names {
            let p = self.dir.join(&name);
            let started = std::time::Instant::now();
            match crate::tree::remove_tree_if_exists(&p) {
                Ok(()) => {
                    tracing::debug!(path = %p.display(), took = ?started.elapsed(), "deleted from the trash");
                    report.removed.push(name);
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot delete from the trash; retried at the next sweep");
                    report.failed += 1;
                }
            }
        }
        report
    }

    /// Claims the sweeper: true when the caller is now the one sweeper
    /// and must call [`Trash::sweep_loop`]; false when one is running (it
    /// sweeps again, so what was moved in meanwhile goes too).
    pub fn start_sweep(&self) -> bool {
        let mut st = self.sweeper.lock().unwrap_or_else(|p| p.into_inner());
        st.dirty = true;
        if st.running {
            return false;
        }
        st.running = true;
        true
    }

    /// The sweeper's body (blocking), after [`Trash::start_sweep`] returned
    /// true: sweeps until nothing was moved in during the last sweep;
    /// `after` gets each sweep's report.
    pub fn sweep_loop(&self, mut after: impl FnMut(&SweepReport)) {
        loop {
            {
                let mut st = self.sweeper.lock().unwrap_or_else(|p| p.into_inner());
                if !st.dirty {
                    st.running = false;
                    self.idle.notify_all();
                    return;
                }
                st.dirty = false;
            }
            let report = self.sweep();
            after(&report);
        }
    }

    /// Whether no sweeper is running.
    pub fn is_idle(&self) -> bool {
        !self
            .sweeper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
    }

    /// Waits (blocking, at most `timeout`) until no sweeper runs; whether
    /// none does.
    pub fn wait_idle(&self, timeout: std::time::Duration) -> bool {
        let st = self.sweeper.lock().unwrap_or_else(|p| p.into_inner());
        let (st, _) = self
            .idle
            .wait_timeout_while(st, timeout, |s| s.running)
            .unwrap_or_else(|p| p.into_inner());
        !st.running
    }
}

/// rename(2) that never replaces an existing entry (`RENAME_NOREPLACE`).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: valid NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Moving files, trees and absent paths in; names never repeat; the
    /// sweep empties the trash.
    #[test]
    fn move_in_and_sweep() {
        let tmp = tempfile::tempdir().unwrap();
        let trash = Trash::open(&tmp.path().join("trash")).unwrap();
        let mode = std::fs::metadata(trash.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::create_dir_all(tmp.path().join("tree/a/b")).unwrap();
        std::fs::write(tmp.path().join("tree/a/b/f"), b"x").unwrap();
        std::fs::write(tmp.path().join("file"), b"y").unwrap();
        // (path, kind, moved)
        let cases = [
            ("tree", "snapshot", true),
            ("file", "blob", true),
            ("absent", "blob", false),
            ("tree", "snapshot", false),
        ];
        let mut names = Vec::new();
        for (path, kind, moved) in cases {
            let got = trash.move_in(&tmp.path().join(path), kind).unwrap();
            assert_eq!(got.is_some(), moved, "{path}");
            if let Some(n) = got {
                assert!(n.starts_with(&format!("{kind}-")), "{n}");
                assert!(!tmp.path().join(path).exists(), "{path} still there");
                names.push(n);
            }
        }
        names.sort();
        assert_eq!(trash.entries().unwrap(), names);
        assert!(trash.start_sweep());
        assert!(!trash.start_sweep(), "one sweeper at a time");
        let mut reports = Vec::new();
        trash.sweep_loop(|r| reports.push(r.clone()));
        assert_eq!(reports.len(), 1, "{reports:?}");
        let mut removed = reports[0].removed.clone();
        removed.sort();
        assert_eq!(removed, names);
        assert_eq!(reports[0].failed, 0);
        assert!(trash.entries().unwrap().is_empty());
        assert!(trash.is_idle());
        assert!(trash.wait_idle(std::time::Duration::from_millis(1)));
    }

    /// Two tries at the same name cannot replace each other, across two
    /// openings of one trash (a restart) too.
    #[test]
    fn names_are_unique_across_openings() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Trash::open(&tmp.path().join("trash")).unwrap();
        let b = Trash::open(&tmp.path().join("trash")).unwrap();
        for i in 0..20 {
            for t in [&a, &b] {
                let f = tmp.path().join(format!("f{i}"));
                std::fs::write(&f, b"z").unwrap();
                t.move_in(&f, "blob").unwrap().unwrap();
            }
        }
        assert_eq!(a.entries().unwrap().len(), 40);
        // An existing name is refused, never replaced.
        std::fs::write(tmp.path().join("g"), b"g").unwrap();
        let taken = a.entries().unwrap()[0].clone();
        let err = rename_noreplace(&tmp.path().join("g"), &a.dir().join(&taken)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    }

    /// A sweep asked for while one runs makes the running one sweep again,
    /// so nothing moved in meanwhile is left.
    #[test]
    fn a_request_during_a_sweep_sweeps_again() {
        let tmp = tempfile::tempdir().unwrap();
        let trash = std::sync::Arc::new(Trash::open(&tmp.path().join("trash")).unwrap());
        std::fs::write(tmp.path().join("first"), b"1").unwrap();
        trash.move_in(&tmp.path().join("first"), "blob").unwrap();
        assert!(trash.start_sweep());
        let mut rounds = 0;
        let t = trash.clone();
        let dir = tmp.path().to_path_buf();
        trash.sweep_loop(|_| {
            rounds += 1;
            if rounds == 1 {
                // Moved in while the sweeper runs; its start_sweep is
                // answered by the running one.
                std::fs::write(dir.join("second"), b"2").unwrap();
                t.move_in(&dir.join("second"), "blob").unwrap();
                assert!(!t.start_sweep());
            }
        });
        assert_eq!(rounds, 2);
        assert!(trash.entries().unwrap().is_empty());
    }

    /// What cannot be deleted stays, counted, and does not stop the rest.
    #[test]
    fn failures_are_counted_and_kept() {
        if !nix::unistd::geteuid().is_root() {
            // Needs an immutable file (chattr), which only root can set.
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let trash = Trash::open(&tmp.path().join("trash")).unwrap();
        std::fs::create_dir_all(tmp.path().join("stuck")).unwrap();
        std::fs::write(tmp.path().join("stuck/f"), b"x").unwrap();
        std::fs::write(tmp.path().join("free"), b"y").unwrap();
        let stuck = trash
            .move_in(&tmp.path().join("stuck"), "snapshot")
            .unwrap()
            .unwrap();
        trash
            .move_in(&tmp.path().join("free"), "blob")
            .unwrap()
            .unwrap();
        let f = trash.dir().join(&stuck).join("f");
        let chattr = |flag: &str| {
            std::process::Command::new("chattr")
                .arg(flag)
                .arg(&f)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !chattr("+i") {
            // A filesystem without the immutable flag (tmpfs): nothing to test.
            return;
        }
        let report = trash.sweep();
        assert!(chattr("-i"));
        assert_eq!(report.failed, 1, "{report:?}");
        assert_eq!(report.removed.len(), 1, "{report:?}");
        assert_eq!(trash.entries().unwrap(), vec![stuck]);
        assert!(trash.sweep().failed == 0);
        assert!(trash.entries().unwrap().is_empty());
    }
}
