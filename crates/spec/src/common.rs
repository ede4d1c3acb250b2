//! Pieces shared by the sandbox and container builders.

use crate::error::{invalid, SpecError};
use crate::mounts::MountEntry;
use crate::oci;
use crate::seccomp;
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::SecurityProfile;
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespace, LinuxNamespaceType,
    LinuxResources, LinuxSeccomp, PosixRlimitBuilder, PosixRlimitType, Spec, User,
};
use std::collections::HashMap;
use std::path::PathBuf;

/// Paths masked in every unprivileged container.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in every unprivileged container.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The default PATH when neither image nor request sets one.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which kind of security profile applies, after the deprecated string
/// fields have been folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// The runtime's default.
    RuntimeDefault,
    /// None.
    Unconfined,
    /// A profile on the node (seccomp: a JSON file path; AppArmor: a name).
    Localhost(String),
}

/// Reads a CRI security profile, falling back to the deprecated path string
/// (`runtime/default`, `docker/default`, `unconfined`, `localhost/<ref>`),
/// then to `default`.
pub fn profile(
    p: Option<&SecurityProfile>,
    deprecated: &str,
    default: Profile,
    field: &str,
) -> Result<Profile, SpecError> {
    if let Some(p) = p {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Profile::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Profile::Unconfined),
            Ok(ProfileType::Localhost) => {
                if p.localhost_ref.is_empty() {
                    Err(invalid(
                        format!("{field}.localhost_ref"),
                        "must be set for a Localhost profile",
                    ))
                } else {
                    Ok(Profile::Localhost(p.localhost_ref.clone()))
                }
            }
            Err(_) => Err(invalid(
                format!("{field}.profile_type"),
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    match deprecated {
        "" => Ok(default),
        "runtime/default" | "docker/default" => Ok(Profile::RuntimeDefault),
        "unconfined" => Ok(Profile::Unconfined),
        other => match other.strip_prefix("localhost/") {
            Some(r) if !r.is_empty() => Ok(Profile::Localhost(r.to_string())),
            _ => Err(invalid(field, format!("unknown profile {other:?}"))),
        },
    }
}

/// The OCI seccomp object for a profile, or None for unconfined.
/// `load` reads a Localhost profile file (I/O stays with the caller).
pub fn seccomp(
    profile: &Profile,
    privileged: bool,
    caps: &[String],
    load: &dyn Fn(&str) -> Result<String, String>,
    field: &str,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if privileged {
        return Ok(None);
    }
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => Ok(Some(seccomp::default_profile(caps))),
        Profile::Localhost(path) => {
            if !path.starts_with('/') {
                return Err(invalid(
                    field,
                    format!("localhost seccomp profile {path:?} is not an absolute path"),
                ));
            }
            let text = load(path).map_err(|e| {
                invalid(field, format!("cannot read seccomp profile {path:?}: {e}"))
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                invalid(
                    field,
                    format!("seccomp profile {path:?} is not valid JSON: {e}"),
                )
            })?;
            let profile = serde_json::from_value::<LinuxSeccomp>(v).map_err(|e| {
                invalid(
                    field,
                    format!("seccomp profile {path:?} is not an OCI seccomp profile: {e}"),
                )
            })?;
            Ok(Some(profile))
        }
    }
}

/// The AppArmor profile name for the process, if any: none where the
/// kernel has no AppArmor (a Localhost profile is then refused), none for
/// Unconfined and privileged RuntimeDefault, the runtime's default profile
/// for RuntimeDefault (FailedPrecondition when it could not be loaded), and
/// a Localhost profile only when the kernel has it loaded.
pub fn apparmor_profile(
    profile: &Profile,
    privileged: bool,
    host: &crate::AppArmor,
    field: &str,
) -> Result<Option<String>, SpecError> {
    let crate::AppArmor::Enabled { default, loaded } = host else {
        return match profile {
            Profile::Localhost(name) => Err(invalid(
                field,
                format!(
                    "AppArmor profile {name:?} requested but AppArmor is not enabled on this host"
                ),
            )),
            _ => Ok(None),
        };
    };
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault if privileged => Ok(None),
        Profile::RuntimeDefault => {
            default
                .clone()
                .map(Some)
                .map_err(|why| SpecError::FailedPrecondition {
                    field: field.to_string(),
                    message: format!(
                    "AppArmor is enabled but the runtime's default profile is not loaded: {why}"
                ),
                })
        }
        Profile::Localhost(name) if loaded.iter().any(|l| l == name) => Ok(Some(name.clone())),
        Profile::Localhost(name) => Err(invalid(
            field,
            format!("AppArmor profile {name:?} is not loaded"),
        )),
    }
}

/// The SELinux process label from CRI options, when SELinux is enabled.
pub fn selinux_label(opts: Option<&k8s_cri::v1::SeLinuxOption>, enabled: bool) -> Option<String> {
    let o = opts?;
    if !enabled
        || (o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
    {
        return None;
    }
    let or = |s: &str, d: &str| {
        if s.is_empty() {
            d.to_string()
        } else {
            s.to_string()
        }
    };
    Some(format!(
        "{}:{}:{}:{}",
        or(&o.user, "system_u"),
        or(&o.role, "system_r"),
        or(&o.r#type, "container_t"),
        or(&o.level, "s0")
    ))
}

/// Checks pod sysctls: only namespaced ones, and none of a namespace the pod
/// shares with the host.
pub fn validate_sysctls(
    sysctls: &HashMap<String, String>,
    host_network: bool,
    host_ipc: bool,
    field: &str,
) -> Result<(), SpecError> {
    for key in sysctls.keys() {
        let k = key.replace('/', ".");
        let ipc = k == "kernel.sem"
            || k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k.starts_with("fs.mqueue.");
        let net = k.starts_with("net.");
        let uts = k == "kernel.hostname" || k == "kernel.domainname";
        if !(ipc || net || uts) {
            return Err(invalid(
                field,
                format!("sysctl {key:?} is not namespaced and cannot be set for a pod"),
            ));
        }
        if net && host_network {
            return Err(invalid(
                field,
                format!("sysctl {key:?} cannot be set for a pod on the host network"),
            ));
        }
        if ipc && host_ipc {
            return Err(invalid(
                field,
                format!("sysctl {key:?} cannot be set for a pod sharing the host IPC namespace"),
            ));
        }
    }
    Ok(())
}

/// The OCI namespace entry joining `path`, or a new one when `path` is None.
pub fn namespace(kind: LinuxNamespaceType, path: Option<String>) -> LinuxNamespace {
    oci::namespace(kind, path)
}

/// Everything both builders put into a spec, gathered before assembly.
pub struct Parts {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub terminal: bool,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privileges: bool,
    pub oom_score_adj: i32,
    pub apparmor: Option<String>,
    pub selinux: Option<String>,
    pub nofile: u64,
    pub hostname: Option<String>,
    pub readonly_rootfs: bool,
    pub mounts: Vec<MountEntry>,
    pub namespaces: Vec<LinuxNamespace>,
    pub cgroups_path: String,
    pub resources: LinuxResources,
    pub devices: Vec<LinuxDevice>,
    pub device_rules: Vec<LinuxDeviceCgroup>,
    pub sysctls: HashMap<String, String>,
    pub seccomp: Option<LinuxSeccomp>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub annotations: Vec<(String, String)>,
}

/// A device cgroup rule: `allow` (or deny) `access` to the devices of
/// `kind` (`c` or `b`; all when None) with the given numbers (any when None).
pub fn device_rule(
    allow: bool,
    kind: Option<char>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup, SpecError> {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(
        kind.map(|k| oci::from_name::<LinuxDeviceType>(&k.to_string(), "device type"))
            .transpose()?,
    );
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    Ok(r)
}

/// Assembles the OCI spec.
pub fn assemble(p: Parts) -> Result<Spec, SpecError> {
    let mut user = User::default();
    user.set_uid(p.uid);
    user.set_gid(p.gid);
    user.set_additional_gids(Some(p.additional_gids));
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(p.nofile)
        .soft(p.nofile)
        .build()
        .map_err(|e| SpecError::Internal(format!("rlimit: {e}")))?;

    let mut process = oci::process();
    process.set_terminal(Some(p.terminal));
    process.set_user(user);
    process.set_args(Some(p.args));
    process.set_env(Some(p.env));
    process.set_cwd(PathBuf::from(p.cwd));
    process.set_capabilities(Some(oci::capabilities(&oci::capability_set(&p.caps)?)));
    process.set_rlimits(Some(vec![nofile]));
    process.set_no_new_privileges(Some(p.no_new_privileges));
    process.set_oom_score_adj(Some(p.oom_score_adj));
    process.set_apparmor_profile(p.apparmor);
    process.set_selinux_label(p.selinux.clone());

    let mut resources = p.resources;
    resources.set_devices(Some(p.device_rules));
    let mut linux = oci::linux();
    linux.set_namespaces(Some(p.namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(p.cgroups_path)));
    linux.set_resources(Some(resources));
    linux.set_masked_paths(Some(p.masked_paths));
    linux.set_readonly_paths(Some(p.readonly_paths));
    linux.set_devices((!p.devices.is_empty()).then_some(p.devices));
    linux.set_sysctl((!p.sysctls.is_empty()).then_some(p.sysctls));
    linux.set_seccomp(p.seccomp);
    linux.set_mount_label(p.selinux);

    let mut spec = oci::spec();
    spec.set_process(Some(process));
    spec.set_root(Some(oci::root(p.readonly_rootfs)));
    spec.set_mounts(Some(p.mounts.iter().map(MountEntry::to_oci).collect()));
    spec.set_annotations(Some(p.annotations.into_iter().collect()));
    spec.set_linux(Some(linux));
    spec.set_hostname(p.hostname);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        let f = "config.linux.security_context.seccomp";
        let sp = |t: ProfileType, r: &str| SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let cases: Vec<(Option<SecurityProfile>, &str, Result<Profile, &str>)> = vec![
            (None, "", Ok(Profile::Unconfined)),
            (None, "runtime/default", Ok(Profile::RuntimeDefault)),
            (None, "docker/default", Ok(Profile::RuntimeDefault)),
            (None, "unconfined", Ok(Profile::Unconfined)),
            (
                None,
                "localhost/x.json",
                Ok(Profile::Localhost("x.json".into())),
            ),
            (None, "weird", Err("unknown profile")),
            (
                Some(sp(ProfileType::RuntimeDefault, "")),
                "unconfined",
                Ok(Profile::RuntimeDefault),
            ),
            (
                Some(sp(ProfileType::Localhost, "/p.json")),
                "",
                Ok(Profile::Localhost("/p.json".into())),
            ),
            (
                Some(sp(ProfileType::Localhost, "")),
                "",
                Err("localhost_ref"),
            ),
            (
                Some(SecurityProfile {
                    profile_type: 7,
                    localhost_ref: String::new(),
                }),
                "",
                Err("profile_type"),
            ),
        ];
        for (p, dep, want) in cases {
            let got = profile(p.as_ref(), dep, Profile::Unconfined, f);
            match want {
                Ok(w) => assert_eq!(got.unwrap(), w, "{p:?} {dep}"),
                Err(s) => assert!(got.unwrap_err().to_string().contains(s), "{p:?} {dep}"),
            }
        }
    }

    #[test]
    fn seccomp_and_apparmor() {
        let f = "seccomp";
        let load = |p: &str| -> Result<String, String> {
            match p {
                "/ok.json" => Ok(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#.into()),
                "/bad.json" => Ok("{".into()),
                "/array.json" => Ok("[1]".into()),
                _ => Err("no such file".into()),
            }
        };
        use oci_spec::runtime::LinuxSeccompAction;
        let action = |p: Option<LinuxSeccomp>| p.map(|p| p.default_action());
        let cases = [
            (Profile::Unconfined, false, None),
            (Profile::RuntimeDefault, true, None),
            (
                Profile::RuntimeDefault,
                false,
                Some(LinuxSeccompAction::ScmpActErrno),
            ),
            (
                Profile::Localhost("/ok.json".into()),
                false,
                Some(LinuxSeccompAction::ScmpActAllow),
            ),
        ];
        for (profile, privileged, want) in cases {
            let got = seccomp(&profile, privileged, &[], &load, f).unwrap();
            assert_eq!(action(got), want, "{profile:?} {privileged}");
        }
        for (path, msg) in [
            ("/bad.json", "not valid JSON"),
            ("/array.json", "not an OCI seccomp profile"),
            ("/none.json", "no such file"),
            ("rel.json", "absolute"),
        ] {
            let e = seccomp(&Profile::Localhost(path.into()), false, &[], &load, f)
                .unwrap_err()
                .to_string();
            assert!(e.contains(msg), "{e}");
        }
    }

    #[test]
    fn apparmor_decisions() {
        use crate::AppArmor;
        let enabled = |default: Result<&str, &str>| AppArmor::Enabled {
            default: default.map(String::from).map_err(String::from),
            loaded: vec!["crius-default".into(), "my-app".into()],
        };
        let local = |n: &str| Profile::Localhost(n.into());
        type Case = (
            Profile,
            bool,
            AppArmor,
            Result<Option<&'static str>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            // No AppArmor in the kernel: nothing applied, Localhost refused.
            (Profile::RuntimeDefault, false, AppArmor::Disabled, Ok(None)),
            (Profile::Unconfined, false, AppArmor::Disabled, Ok(None)),
            (
                local("my-app"),
                false,
                AppArmor::Disabled,
                Err("not enabled"),
            ),
            // Enabled with the default profile loaded.
            (
                Profile::RuntimeDefault,
                false,
                enabled(Ok("crius-default")),
                Ok(Some("crius-default")),
            ),
            (
                Profile::RuntimeDefault,
                true,
                enabled(Ok("crius-default")),
                Ok(None),
            ),
            (
                Profile::Unconfined,
                false,
                enabled(Ok("crius-default")),
                Ok(None),
            ),
            (
                local("my-app"),
                false,
                enabled(Ok("crius-default")),
                Ok(Some("my-app")),
            ),
            (
                local("my-app"),
                true,
                enabled(Ok("crius-default")),
                Ok(Some("my-app")),
            ),
            (
                local("not-there"),
                false,
                enabled(Ok("crius-default")),
                Err("\"not-there\" is not loaded"),
            ),
            // Enabled, but the default could not be loaded.
            (
                Profile::RuntimeDefault,
                false,
                enabled(Err("apparmor_parser is not installed")),
                Err("apparmor_parser is not installed"),
            ),
            (
                Profile::RuntimeDefault,
                true,
                enabled(Err("no parser")),
                Ok(None),
            ),
            (
                local("my-app"),
                false,
                enabled(Err("no parser")),
                Ok(Some("my-app")),
            ),
        ];
        for (profile, privileged, host, want) in cases {
            let got = apparmor_profile(&profile, privileged, &host, "f.apparmor");
            match want {
                Ok(w) => assert_eq!(
                    got.unwrap(),
                    w.map(String::from),
                    "{profile:?} {privileged} {host:?}"
                ),
                Err(msg) => {
                    let e = got.expect_err(&format!("{profile:?} {host:?}"));
                    let kind_ok = matches!(
                        (&profile, &e),
                        (
                            Profile::RuntimeDefault,
                            SpecError::FailedPrecondition { .. }
                        ) | (Profile::Localhost(_), SpecError::InvalidArgument { .. })
                    );
                    assert!(kind_ok, "{profile:?} {host:?}: {e:?}");
                    let e = e.to_string();
                    assert!(e.contains(msg) && e.contains("f.apparmor"), "{e}");
                }
            }
        }
    }

    #[test]
    fn sysctls() {
        let f = "config.linux.sysctls";
        let m = |k: &str| -> HashMap<String, String> {
            [(k.to_string(), "1".to_string())].into_iter().collect()
        };
        let cases = [
            ("net.ipv4.ip_forward", false, false, true),
            ("net/ipv4/ping_group_range", false, false, true),
            ("net.core.somaxconn", true, false, false),
            ("kernel.shm_rmid_forced", false, false, true),
            ("kernel.shmmax", false, true, false),
            ("fs.mqueue.msg_max", false, false, true),
            ("kernel.panic", false, false, false),
            ("vm.swappiness", false, false, false),
        ];
        for (k, hn, hi, ok) in cases {
            let r = validate_sysctls(&m(k), hn, hi, f);
            assert_eq!(r.is_ok(), ok, "{k}: {r:?}");
        }
    }

    #[test]
    fn selinux() {
        let o = k8s_cri::v1::SeLinuxOption {
            user: "u".into(),
            role: "".into(),
            r#type: "t".into(),
            level: "s0:c1".into(),
        };
        assert_eq!(selinux_label(Some(&o), true).unwrap(), "u:system_r:t:s0:c1");
        assert_eq!(selinux_label(Some(&o), false), None);
        assert_eq!(selinux_label(None, true), None);
    }
}
