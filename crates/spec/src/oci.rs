//! Typed OCI values with nothing in them.
//!
//! oci-spec's `Default` for `Spec`, `Process`, `Linux`, `Root` and
//! `LinuxCapabilities` is a sample container (a shell, youki's hostname,
//! default mounts, namespaces and capabilities), and its builders start
//! from that default; the builders here start from nothing, so that a spec
//! holds exactly what crius puts into it.

use crate::error::SpecError;
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType,
    Process, Root, Spec,
};
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::de::{DeserializeOwned, IntoDeserializer};
use std::path::PathBuf;

/// A spec with only its version set.
#[allow(deprecated)] // Spec's uid/gid mappings: cleared like the rest.
pub fn spec() -> Spec {
    let mut s = Spec::default();
    s.set_version(crate::OCI_VERSION.to_string());
    s.set_root(None);
    s.set_mounts(None);
    s.set_process(None);
    s.set_hostname(None);
    s.set_domainname(None);
    s.set_hooks(None);
    s.set_annotations(None);
    s.set_linux(None);
    s.set_solaris(None);
    s.set_windows(None);
    s.set_vm(None);
    s.set_zos(None);
    s.set_uid_mappings(None);
    s.set_gid_mappings(None);
    s
}

/// A process running as root in `/`, nothing else set.
pub fn process() -> Process {
    let mut p = Process::default();
    p.set_terminal(None);
    p.set_console_size(None);
    p.set_user(Default::default());
    p.set_args(None);
    p.set_command_line(None);
    p.set_env(None);
    p.set_cwd(PathBuf::from("/"));
    p.set_capabilities(None);
    p.set_rlimits(None);
    p.set_no_new_privileges(None);
    p.set_apparmor_profile(None);
    p.set_oom_score_adj(None);
    p.set_selinux_label(None);
    p.set_io_priority(None);
    p.set_scheduler(None);
    p.set_exec_cpu_affinity(None);
    p
}

/// Linux settings with nothing set.
pub fn linux() -> Linux {
    let mut l = Linux::default();
    l.set_net_devices(None);
    l.set_uid_mappings(None);
    l.set_gid_mappings(None);
    l.set_sysctl(None);
    l.set_resources(None);
    l.set_cgroups_path(None);
    l.set_namespaces(None);
    l.set_devices(None);
    l.set_seccomp(None);
    l.set_rootfs_propagation(None);
    l.set_masked_paths(None);
    l.set_readonly_paths(None);
    l.set_mount_label(None);
    l.set_intel_rdt(None);
    l.set_memory_policy(None);
    l.set_personality(None);
    l.set_time_offsets(None);
    l
}

/// The root filesystem `rootfs`, read-only when `readonly`.
pub fn root(readonly: bool) -> Root {
    let mut r = Root::default();
    r.set_path(PathBuf::from("rootfs"));
    r.set_readonly(Some(readonly));
    r
}

/// The bounding, effective and permitted sets all `caps` (inheritable and
/// ambient unset).
pub fn capabilities(caps: &Capabilities) -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()));
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps.clone()));
    c.set_inheritable(None);
    c.set_ambient(None);
    c
}

/// An OCI enum value from its name in config.json (`CAP_CHOWN`,
/// `RLIMIT_NOFILE`, `SCMP_ACT_ALLOW`, ...), as deserialising the JSON
/// string would give it.
pub fn from_name<T: DeserializeOwned>(name: &str, what: &str) -> Result<T, SpecError> {
    let de: StrDeserializer<'_, ValueError> = name.into_deserializer();
    T::deserialize(de).map_err(|e| SpecError::Internal(format!("{what} {name:?}: {e}")))
}

/// Capability names as a typed set.
pub fn capability_set(names: &[String]) -> Result<Capabilities, SpecError> {
    names
        .iter()
        .map(|n| from_name::<Capability>(n, "capability"))
        .collect()
}

/// The namespace entry joining `path`, or a new one when `path` is None.
pub fn namespace(kind: LinuxNamespaceType, path: Option<String>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(kind);
    n.set_path(path.map(PathBuf::from));
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_values_serialise_to_nothing_but_required_fields() {
        let cases = [
            (
                serde_json::to_value(spec()).unwrap(),
                json!({"ociVersion": crate::OCI_VERSION}),
            ),
            (
                serde_json::to_value(process()).unwrap(),
                json!({"user": {"uid": 0, "gid": 0}, "cwd": "/"}),
            ),
            (serde_json::to_value(linux()).unwrap(), json!({})),
            (
                serde_json::to_value(root(true)).unwrap(),
                json!({"path": "rootfs", "readonly": true}),
            ),
            (
                serde_json::to_value(capabilities(&Capabilities::new())).unwrap(),
                json!({"bounding": [], "effective": [], "permitted": []}),
            ),
            (
                serde_json::to_value(namespace(LinuxNamespaceType::Network, Some("/n".into())))
                    .unwrap(),
                json!({"type": "network", "path": "/n"}),
            ),
            (
                serde_json::to_value(namespace(LinuxNamespaceType::Mount, None)).unwrap(),
                json!({"type": "mount"}),
            ),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn names_as_config_json_spells_them() {
        let caps = capability_set(&["CAP_CHOWN".into(), "CAP_SYS_ADMIN".into()]).unwrap();
        assert!(caps.contains(&Capability::Chown) && caps.contains(&Capability::SysAdmin));
        let cases: [(&str, Result<LinuxNamespaceType, ()>); 4] = [
            ("network", Ok(LinuxNamespaceType::Network)),
            ("cgroup", Ok(LinuxNamespaceType::Cgroup)),
            ("user", Ok(LinuxNamespaceType::User)),
            ("net", Err(())),
        ];
        for (name, want) in cases {
            let got = from_name::<LinuxNamespaceType>(name, "namespace").map_err(|_| ());
            assert_eq!(got, want, "{name}");
        }
        let e = capability_set(&["CAP_NOPE".into()]).unwrap_err();
        assert!(
            matches!(&e, SpecError::Internal(m) if m.contains("CAP_NOPE")),
            "{e:?}"
        );
    }
}
