//! Pieces shared by the sandbox and container builders.

use crate::error::{invalid, SpecError};
use crate::mounts::MountEntry;
use crate::seccomp;
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::SecurityProfile;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

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
pub fn seccomp_json(
    profile: &Profile,
    privileged: bool,
    caps: &[String],
    load: &dyn Fn(&str) -> Result<String, String>,
    field: &str,
) -> Result<Option<Value>, SpecError> {
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
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                invalid(
                    field,
                    format!("seccomp profile {path:?} is not valid JSON: {e}"),
                )
            })?;
            serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(v.clone()).map_err(|e| {
                invalid(
                    field,
                    format!("seccomp profile {path:?} is not an OCI seccomp profile: {e}"),
                )
            })?;
            Ok(Some(v))
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
pub fn namespace(kind: &str, path: Option<String>) -> Value {
    match path {
        Some(p) => json!({ "type": kind, "path": p }),
        None => json!({ "type": kind }),
    }
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
    pub namespaces: Vec<Value>,
    pub cgroups_path: String,
    pub resources: Value,
    pub devices: Vec<Value>,
    pub device_rules: Vec<Value>,
    pub sysctls: HashMap<String, String>,
    pub seccomp: Option<Value>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub annotations: Vec<(String, String)>,
}

/// Assembles the OCI spec.
pub fn assemble(p: Parts) -> Result<oci_spec::runtime::Spec, SpecError> {
    let capset = json!(p.caps);
    let mut process = json!({
        "terminal": p.terminal,
        "user": { "uid": p.uid, "gid": p.gid, "additionalGids": p.additional_gids },
        "args": p.args,
        "env": p.env,
        "cwd": p.cwd,
        "capabilities": {
            "bounding": capset, "effective": capset, "permitted": capset,
        },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": p.nofile, "soft": p.nofile }],
        "noNewPrivileges": p.no_new_privileges,
        "oomScoreAdj": p.oom_score_adj,
    });
    if let Some(a) = p.apparmor {
        process["apparmorProfile"] = json!(a);
    }
    if let Some(s) = &p.selinux {
        process["selinuxLabel"] = json!(s);
    }
    let mut resources = p.resources;
    if let Value::Object(map) = &mut resources {
        map.insert("devices".into(), Value::Array(p.device_rules));
    }
    let mut linux = json!({
        "namespaces": p.namespaces,
        "cgroupsPath": p.cgroups_path,
        "resources": resources,
        "maskedPaths": p.masked_paths,
        "readonlyPaths": p.readonly_paths,
    });
    if !p.devices.is_empty() {
        linux["devices"] = Value::Array(p.devices);
    }
    if !p.sysctls.is_empty() {
        linux["sysctl"] = json!(p.sysctls);
    }
    if let Some(s) = p.seccomp {
        linux["seccomp"] = s;
    }
    if let Some(s) = &p.selinux {
        linux["mountLabel"] = json!(s);
    }
    let annotations: Map<String, Value> = p
        .annotations
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut spec = json!({
        "ociVersion": crate::OCI_VERSION,
        "process": process,
        "root": { "path": "rootfs", "readonly": p.readonly_rootfs },
        "mounts": p.mounts.iter().map(MountEntry::to_json).collect::<Vec<_>>(),
        "annotations": annotations,
        "linux": linux,
    });
    if let Some(h) = p.hostname {
        spec["hostname"] = json!(h);
    }
    serde_json::from_value(spec).map_err(|e| SpecError::Internal(e.to_string()))
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
                _ => Err("no such file".into()),
            }
        };
        assert!(seccomp_json(&Profile::Unconfined, false, &[], &load, f)
            .unwrap()
            .is_none());
        assert!(seccomp_json(&Profile::RuntimeDefault, true, &[], &load, f)
            .unwrap()
            .is_none());
        assert_eq!(
            seccomp_json(&Profile::RuntimeDefault, false, &[], &load, f)
                .unwrap()
                .unwrap()["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        assert_eq!(
            seccomp_json(&Profile::Localhost("/ok.json".into()), false, &[], &load, f)
                .unwrap()
                .unwrap()["defaultAction"],
            "SCMP_ACT_ALLOW"
        );
        for (path, msg) in [
            ("/bad.json", "not valid JSON"),
            ("/none.json", "no such file"),
            ("rel.json", "absolute"),
        ] {
            let e = seccomp_json(&Profile::Localhost(path.into()), false, &[], &load, f)
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
