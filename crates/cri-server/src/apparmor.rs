//! AppArmor on the host: whether the kernel has it, crius's default profile
//! for RuntimeDefault containers and pauses (loaded at start-up with
//! `apparmor_parser`, as containerd and CRI-O load theirs), and which
//! profiles the kernel has loaded (a Localhost profile must be one of them).
//!
//! What a request then gets is decided by the pure
//! `crius_spec::common::apparmor_profile` from the [`AppArmor`] state built
//! here: on a kernel with AppArmor but no way to load the default profile,
//! RuntimeDefault fails with FailedPrecondition naming what is missing,
//! instead of every runc start failing on a profile nothing loaded.
//! The kernel's files are read below a root directory given by the caller
//! (`/sys`), so that tests can hand a fake tree.

use crius_spec::{AppArmor, HostFacts};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// The name of crius's default profile.
pub const DEFAULT_PROFILE: &str = "crius-default";

/// crius's default profile: everything a container normally does, but no
/// mounts, no writes to the kernel's knobs under /proc and /sys (beyond
/// the cgroup tree and the kernel.shm* sysctls), no reads of kernel memory,
/// firmware or the security filesystem, and signals and ptrace only among
/// processes under the same profile (and from unconfined ones).
pub const PROFILE_TEXT: &str = r#"#include <tunables/global>

profile crius-default flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=crius-default,
  ptrace (trace,read,tracedby,readby) peer=crius-default,

  deny mount,

  # /proc: no writes to the files at its top, to sysctls other than
  # kernel.shm*, to sysrq-trigger; no access to kcore.
  deny @{PROC}/* w,
  deny @{PROC}/sys/[^k]** w,
  deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,

  # /sys: writable only below /sys/fs/cgroup; firmware and the security
  # filesystem not even readable.
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}
"#;

/// Whether the kernel has AppArmor enabled.
pub fn enabled(sys: &Path) -> bool {
    std::fs::read_to_string(sys.join("module/apparmor/parameters/enabled"))
        .is_ok_and(|s| s.trim() == "Y")
}

/// The profile names in the kernel's list (`NAME (MODE)` per line).
pub fn parse_loaded(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_end();
            let name = match l.rfind(" (") {
                Some(i) if l.ends_with(')') => &l[..i],
                _ => l,
            };
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The profiles the kernel has loaded (none when the list cannot be read).
pub fn loaded(sys: &Path) -> Vec<String> {
    std::fs::read_to_string(sys.join("kernel/security/apparmor/profiles"))
        .map(|t| parse_loaded(&t))
        .unwrap_or_default()
}

/// `apparmor_parser` where Debian and Ubuntu install it, or on PATH.
pub fn find_parser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("apparmor_parser"))
        .find(|p| p.is_file())
}

/// Writes the default profile into `dir` and loads (or replaces) it in the
/// kernel with `parser -Kr` (no cache: the kernel decides what it runs).
fn load_default(parser: &Path, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    // Private like every directory under the state dir.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join(DEFAULT_PROFILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    std::io::Write::write_all(&mut f, PROFILE_TEXT.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    drop(f);
    let out = std::process::Command::new(parser)
        .arg("-Kr")
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", parser.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -Kr {} failed ({}): {}",
            parser.display(),
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The host's AppArmor state at start-up: with AppArmor enabled, crius's
/// default profile is loaded unless the kernel has it already; without a
/// parser (or when loading fails) RuntimeDefault gets the reason instead.
pub fn detect(sys: &Path, state_dir: &Path, parser: Option<&Path>) -> AppArmor {
    if !enabled(sys) {
        return AppArmor::Disabled;
    }
    let mut default = Ok(DEFAULT_PROFILE.to_string());
    if !loaded(sys).iter().any(|p| p == DEFAULT_PROFILE) {
        let outcome = match parser {
            None => Err(format!(
                "apparmor_parser is not installed (package apparmor), so the profile \
                 {DEFAULT_PROFILE} cannot be loaded; install it and restart criusd"
            )),
            Some(p) => load_default(p, &state_dir.join("apparmor")),
        };
        match outcome {
            Ok(()) => tracing::info!(profile = DEFAULT_PROFILE, "loaded the AppArmor profile"),
            Err(why) => {
                tracing::warn!(error = %why, "AppArmor is enabled but its default profile is not loaded: RuntimeDefault pods and containers will be refused");
                default = Err(why);
            }
        }
    }
    AppArmor::Enabled {
        default,
        loaded: loaded(sys),
    }
}

/// The host facts with the loaded profiles as the kernel has them now
/// (profiles may be loaded while criusd runs); unchanged without AppArmor.
pub fn refresh<'a>(host: &'a HostFacts, sys: &Path) -> Cow<'a, HostFacts> {
    match &host.apparmor {
        AppArmor::Disabled => Cow::Borrowed(host),
        AppArmor::Enabled { default, .. } => {
            let mut h = host.clone();
            h.apparmor = AppArmor::Enabled {
                default: default.clone(),
                loaded: loaded(sys),
            };
            Cow::Owned(h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys: AppArmor `enabled` ("Y", "N" or absent) and a profile
    /// list.
    fn fake_sys(enabled: Option<&str>, profiles: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if let Some(e) = enabled {
            let p = d.path().join("module/apparmor/parameters");
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("enabled"), format!("{e}\n")).unwrap();
        }
        let k = d.path().join("kernel/security/apparmor");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("profiles"), profiles).unwrap();
        d
    }

    /// A fake apparmor_parser that logs its arguments and, when `ok`,
    /// "loads" the profile by adding it to the fake kernel list.
    fn fake_parser(dir: &Path, sys: &Path, ok: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("apparmor_parser");
        let profiles = sys.join("kernel/security/apparmor/profiles");
        let body = if ok {
            format!(
                "#!/bin/sh\necho \"$@\" >> {log}\necho 'crius-default (enforce)' >> {profiles}\n",
                log = dir.join("log").display(),
                profiles = profiles.display()
            )
        } else {
            "#!/bin/sh\necho 'cannot load: permission denied' >&2\nexit 1\n".to_string()
        };
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn loaded_profile_lists() {
        let cases = [
            ("", vec![]),
            (
                "crius-default (enforce)\n/usr/bin/man (complain)\n",
                vec!["crius-default", "/usr/bin/man"],
            ),
            (
                "name with (parens) (enforce)\nbare\n",
                vec!["name with (parens)", "bare"],
            ),
            ("  \n", vec![]),
        ];
        for (text, want) in cases {
            assert_eq!(parse_loaded(text), want, "{text:?}");
        }
    }

    #[test]
    fn detection_and_loading() {
        let work = tempfile::tempdir().unwrap();
        let state = work.path().join("state");

        // No AppArmor (the parameter missing, or N): disabled, no parser run.
        for enabled in [None, Some("N")] {
            let sys = fake_sys(enabled, "");
            let parser = fake_parser(work.path(), sys.path(), true);
            assert_eq!(
                detect(sys.path(), &state, Some(&parser)),
                AppArmor::Disabled
            );
            assert!(!work.path().join("log").exists(), "parser ran");
        }

        // Enabled, default already loaded: used as is, parser not run.
        let sys = fake_sys(Some("Y"), "crius-default (enforce)\nmine (enforce)\n");
        let parser = fake_parser(work.path(), sys.path(), true);
        assert_eq!(
            detect(sys.path(), &state, Some(&parser)),
            AppArmor::Enabled {
                default: Ok("crius-default".into()),
                loaded: vec!["crius-default".into(), "mine".into()],
            }
        );
        assert!(!work.path().join("log").exists(), "parser ran");

        // Enabled, not loaded: written under the state dir and loaded.
        let sys = fake_sys(Some("Y"), "mine (enforce)\n");
        let parser = fake_parser(work.path(), sys.path(), true);
        let got = detect(sys.path(), &state, Some(&parser));
        assert_eq!(
            got,
            AppArmor::Enabled {
                default: Ok("crius-default".into()),
                loaded: vec!["mine".into(), "crius-default".into()],
            }
        );
        let file = state.join("apparmor/crius-default");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), PROFILE_TEXT);
        let log = std::fs::read_to_string(work.path().join("log")).unwrap();
        assert_eq!(log.trim(), format!("-Kr {}", file.display()));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&state.join("apparmor")), 0o700);
            assert_eq!(mode(&file), 0o600);
        }

        // Enabled, no parser: RuntimeDefault will say why.
        let sys = fake_sys(Some("Y"), "");
        match detect(sys.path(), &state, None) {
            AppArmor::Enabled {
                default: Err(why), ..
            } => assert!(why.contains("apparmor_parser is not installed"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Enabled, the parser fails: its message is kept.
        let bad = work.path().join("bad");
        std::fs::create_dir_all(&bad).unwrap();
        let parser = fake_parser(&bad, sys.path(), false);
        match detect(sys.path(), &state, Some(&parser)) {
            AppArmor::Enabled {
                default: Err(why), ..
            } => assert!(why.contains("permission denied"), "{why}"),
            other => panic!("{other:?}"),
        }

        // A profile loaded later is seen by the next request.
        let host = HostFacts {
            apparmor: AppArmor::Enabled {
                default: Ok("crius-default".into()),
                loaded: vec![],
            },
            ..HostFacts::default()
        };
        std::fs::write(
            sys.path().join("kernel/security/apparmor/profiles"),
            "late (enforce)\n",
        )
        .unwrap();
        match &refresh(&host, sys.path()).apparmor {
            AppArmor::Enabled { loaded, .. } => assert_eq!(loaded, &["late".to_string()]),
            other => panic!("{other:?}"),
        }
        let off = HostFacts::default();
        assert!(matches!(refresh(&off, sys.path()), Cow::Borrowed(_)));
    }

    /// The profile text is valid AppArmor policy: Debian's parser checks it
    /// without a kernel (`-Q`: parse only; `-K`: no cache).
    #[test]
    fn profile_text_parses() {
        let parser = find_parser().expect(
            "apparmor_parser is needed to check the profile (package apparmor; \
             `cargo xtask setup` installs it)",
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(DEFAULT_PROFILE);
        std::fs::write(&file, PROFILE_TEXT).unwrap();
        let out = std::process::Command::new(&parser)
            .args(["-Q", "-K"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // And a broken profile is caught, so the check means something.
        std::fs::write(&file, "profile broken {\n  no_such_rule,\n}\n").unwrap();
        let out = std::process::Command::new(&parser)
            .args(["-Q", "-K"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}
