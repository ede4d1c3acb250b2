//! The spec of a pod's infra (pause) container.

use crate::common::{self, Parts, Profile};
use crate::error::{invalid, SpecError};
use crate::user::{self, UserRequest};
use crate::{
    annotations as ann, cgroups, mounts, oom, process, HostFacts, ImageConfig, SandboxFacts,
};
use k8s_cri::v1::{NamespaceMode, PodSandboxConfig};
use oci_spec::runtime::{LinuxNamespaceType as Ns, LinuxResources};

/// The `oom_score_adj` kubelet's pause containers conventionally get.
pub const PAUSE_OOM_SCORE_ADJ: i32 = -998;

/// Host namespaces a pod asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostNamespaces {
    /// Host network.
    pub network: bool,
    /// Host PID namespace.
    pub pid: bool,
    /// Host IPC namespace.
    pub ipc: bool,
}

/// Which host namespaces the pod config asks for.
pub fn host_namespaces(config: &PodSandboxConfig) -> HostNamespaces {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let node = NamespaceMode::Node as i32;
    match ns {
        Some(o) => HostNamespaces {
            network: o.network == node,
            pid: o.pid == node,
            ipc: o.ipc == node,
        },
        None => HostNamespaces::default(),
    }
}

/// Whether a pod needs an infra (pause) process to hold its namespaces:
/// its containers share a PID namespace (pid mode POD, which is also what
/// a config without namespace options means), or it asks for its own user
/// namespace. Any other pod's namespaces can be pinned without a process.
pub fn needs_infra(config: &PodSandboxConfig) -> bool {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    match ns {
        None => true,
        Some(o) => {
            o.pid == NamespaceMode::Pod as i32
                || o.userns_options
                    .as_ref()
                    .is_some_and(|u| u.mode == NamespaceMode::Pod as i32)
        }
    }
}

/// Validates the parts of a pod config that the spec depends on.
pub fn validate(config: &PodSandboxConfig, host: &HostFacts) -> Result<(), SpecError> {
    let hn = host_namespaces(config);
    if let Some(linux) = &config.linux {
        common::validate_sysctls(&linux.sysctls, hn.network, hn.ipc, "config.linux.sysctls")?;
        cgroups::validate_parent(
            &linux.cgroup_parent,
            host.cgroup_driver,
            "config.linux.cgroup_parent",
        )?;
    }
    Ok(())
}

/// Builds the pause container's spec.
pub fn sandbox_spec(
    config: &PodSandboxConfig,
    image: &ImageConfig,
    sandbox: &SandboxFacts,
    host: &HostFacts,
    load_profile: &dyn Fn(&str) -> Result<String, String>,
) -> Result<oci_spec::runtime::Spec, SpecError> {
    validate(config, host)?;
    let hn = host_namespaces(config);
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged;
    let meta = config.metadata.clone().unwrap_or_default();

    let args = process::merge_args(&[], &[], &image.entrypoint, &image.cmd)
        .map_err(|_| invalid("image", "the pause image sets no Entrypoint or Cmd"))?;
    let mut env = image.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, common::DEFAULT_PATH_ENV.to_string());
    }
    let resolved = user::resolve(
        &UserRequest {
            run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
            run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
            supplemental_groups: sc.supplemental_groups.clone(),
            image_user: image.user.clone(),
            ..Default::default()
        },
        &[],
        &[],
    )
    .map_err(|e| match e {
        SpecError::InvalidArgument { message, .. } => {
            invalid("config.linux.security_context", message)
        }
        other => other,
    })?;

    let caps = crate::caps::compute(
        &[],
        &[],
        privileged,
        &host.capabilities,
        "config.linux.security_context.capabilities",
    )?;
    #[allow(deprecated)]
    let deprecated_seccomp = sc.seccomp_profile_path.clone();
    let seccomp_profile = common::profile(
        sc.seccomp.as_ref(),
        &deprecated_seccomp,
        Profile::RuntimeDefault,
        "config.linux.security_context.seccomp",
    )?;
    let seccomp = common::seccomp(
        &seccomp_profile,
        privileged,
        &caps,
        load_profile,
        "config.linux.security_context.seccomp",
    )?;
    let apparmor_profile = common::profile(
        sc.apparmor.as_ref(),
        "",
        Profile::RuntimeDefault,
        "config.linux.security_context.apparmor",
    )?;
    let apparmor = common::apparmor_profile(
        &apparmor_profile,
        privileged,
        &host.apparmor,
        "config.linux.security_context.apparmor",
    )?;

    let mut namespaces = vec![common::namespace(Ns::Mount, None)];
    if !hn.network {
        namespaces.push(common::namespace(Ns::Network, sandbox.netns_path.clone()));
        namespaces.push(common::namespace(Ns::Uts, None));
    }
    if !hn.pid {
        namespaces.push(common::namespace(Ns::Pid, None));
    }
    if !hn.ipc {
        namespaces.push(common::namespace(Ns::Ipc, None));
    }

    let resources = match &linux.resources {
        Some(r) => cgroups::resources(r, host.cgroup_features, "config.linux.resources")?,
        None => LinuxResources::default(),
    };
    let mut annotations = vec![
        (
            ann::CONTAINER_TYPE.to_string(),
            ann::CONTAINER_TYPE_SANDBOX.to_string(),
        ),
        (ann::SANDBOX_ID.to_string(), sandbox.id.clone()),
        (ann::SANDBOX_NAME.to_string(), meta.name.clone()),
        (ann::SANDBOX_NAMESPACE.to_string(), meta.namespace.clone()),
        (ann::SANDBOX_UID.to_string(), meta.uid.clone()),
        (
            ann::SANDBOX_LOG_DIR.to_string(),
            config.log_directory.clone(),
        ),
    ];
    annotations.extend(ann::passthrough(&config.annotations, &host.pod_annotations));

    let mounts = mounts::merge(vec![
        mounts::default_mounts(privileged),
        vec![mounts::shm_mount(if hn.ipc {
            None
        } else {
            sandbox.shm_path.as_deref()
        })],
    ]);
    let (masked, readonly) = if privileged {
        (vec![], vec![])
    } else {
        (
            common::DEFAULT_MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            common::DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    };
    common::assemble(Parts {
        args,
        env,
        cwd: if image.working_dir.is_empty() {
            "/".into()
        } else {
            image.working_dir.clone()
        },
        terminal: false,
        uid: resolved.uid,
        gid: resolved.gid,
        additional_gids: resolved.additional_gids,
        caps,
        no_new_privileges: true,
        oom_score_adj: oom::restrict_oom_score_adj(
            PAUSE_OOM_SCORE_ADJ,
            host.oom_score_adj,
            host.can_lower_oom_score_adj,
        ),
        apparmor,
        selinux: common::selinux_label(sc.selinux_options.as_ref(), host.selinux),
        nofile: host.nofile_hard.min(1_048_576),
        hostname: if hn.network {
            None
        } else {
            Some(config.hostname.clone())
        },
        readonly_rootfs: true,
        mounts,
        namespaces,
        cgroups_path: cgroups::cgroups_path(&linux.cgroup_parent, &sandbox.id, host.cgroup_driver),
        resources,
        devices: vec![],
        device_rules: vec![common::device_rule(privileged, None, None, None, "rwm")?],
        sysctls: linux.sysctls.clone(),
        seccomp,
        masked_paths: masked,
        readonly_paths: readonly,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{
        security_profile::ProfileType, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
        NamespaceOption, SecurityProfile,
    };
    use serde_json::Value;

    fn pod() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: pod_metadata(),
            hostname: "web-0".into(),
            log_directory: "/var/log/pods/prod_web_u1".into(),
            annotations: strings(&[("io.katacontainers.x", "1"), ("other", "2")]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/besteffort/podu1".into(),
                sysctls: strings(&[("net.ipv4.ip_unprivileged_port_start", "0")]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn facts() -> SandboxFacts {
        SandboxFacts {
            id: "a".repeat(64),
            netns_path: Some("/run/crius/netns/x".into()),
            shm_path: Some("/run/crius/sandboxes/x/shm".into()),
            ..Default::default()
        }
    }

    fn pause() -> ImageConfig {
        ImageConfig {
            user: "65535:65535".into(),
            entrypoint: vec!["/pause".into()],
            ..Default::default()
        }
    }

    fn no_files(_: &str) -> Result<String, String> {
        Err("no files in this test".into())
    }

    fn build(config: &PodSandboxConfig, host: &HostFacts) -> Result<Value, SpecError> {
        sandbox_spec(config, &pause(), &facts(), host, &no_files)
            .map(|s| serde_json::to_value(s).unwrap())
    }

    use crate::testutil::{mount, namespaces as ns_types, pod_metadata, strings};

    #[test]
    fn default_pod() {
        let host = HostFacts {
            pod_annotations: vec!["io.katacontainers.*".into()],
            oom_score_adj: 0,
            can_lower_oom_score_adj: false,
            ..Default::default()
        };
        let s = build(&pod(), &host).unwrap();
        assert_eq!(s["process"]["args"], serde_json::json!(["/pause"]));
        assert_eq!(s["process"]["user"]["uid"], 65535);
        assert_eq!(
            s["process"]["oomScoreAdj"], 0,
            "clamped to the daemon's own value"
        );
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["hostname"], "web-0");
        assert_eq!(
            s["linux"]["cgroupsPath"],
            format!("/kubepods/besteffort/podu1/{}", "a".repeat(64))
        );
        assert_eq!(
            s["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
            "0"
        );
        assert_eq!(
            s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO",
            "RuntimeDefault unless privileged"
        );
        assert_eq!(s["annotations"][ann::CONTAINER_TYPE], "sandbox");
        assert_eq!(s["annotations"][ann::SANDBOX_NAMESPACE], "prod");
        assert_eq!(s["annotations"]["io.katacontainers.x"], "1");
        assert!(s["annotations"].get("other").is_none());
        let shm = mount(&s, "/dev/shm").unwrap();
        assert_eq!(shm["source"], "/run/crius/sandboxes/x/shm");
        assert_eq!(
            ns_types(&s),
            vec![
                ("mount".into(), None),
                ("network".into(), Some("/run/crius/netns/x".into())),
                ("uts".into(), None),
                ("pid".into(), None),
                ("ipc".into(), None)
            ]
        );
        let caps = crate::testutil::bounding(&s);
        assert_eq!(caps.len(), crate::caps::DEFAULT_CAPABILITIES.len());
        assert!(!s["linux"]["maskedPaths"].as_array().unwrap().is_empty());
    }

    #[test]
    fn infra_table() {
        use k8s_cri::v1::UserNamespace;
        let with = crate::testutil::pod_with_namespaces;
        let opts = |pid: i32, userns: Option<i32>| {
            Some(NamespaceOption {
                pid,
                userns_options: userns.map(|mode| UserNamespace {
                    mode,
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let cases = [
            (PodSandboxConfig::default(), true),
            (with(None), true),
            (with(opts(0, None)), true),
            (with(opts(1, None)), false),
            (with(opts(2, None)), false),
            (with(opts(1, Some(0))), true),
            (with(opts(1, Some(2))), false),
        ];
        for (i, (c, want)) in cases.into_iter().enumerate() {
            assert_eq!(needs_infra(&c), want, "case {i}");
        }
    }

    #[test]
    fn host_namespaces_and_privileged() {
        let mut c = pod();
        let linux = c.linux.as_mut().unwrap();
        linux.sysctls.clear();
        linux.security_context = Some(LinuxSandboxSecurityContext {
            privileged: true,
            namespace_options: Some(NamespaceOption {
                network: 2,
                pid: 2,
                ipc: 2,
                ..Default::default()
            }),
            ..Default::default()
        });
        let host = HostFacts {
            capabilities: crate::caps::from_cap_eff("000001fffeffffff"),
            ..Default::default()
        };
        let s = build(&c, &host).unwrap();
        assert_eq!(ns_types(&s), vec![("mount".into(), None)]);
        assert!(s.get("hostname").is_none());
        assert!(s["linux"].get("seccomp").is_none());
        assert_eq!(crate::testutil::bounding(&s).len(), 40);
        assert!(s["linux"]["maskedPaths"].as_array().unwrap().is_empty());
        let shm = mount(&s, "/dev/shm").unwrap();
        assert_eq!(
            shm["source"], "/dev/shm",
            "host IPC binds the host's /dev/shm"
        );
        assert_eq!(s["process"]["oomScoreAdj"], PAUSE_OOM_SCORE_ADJ);
    }

    #[test]
    fn invalid_pods() {
        let host = HostFacts::default();
        let with = |f: &dyn Fn(&mut PodSandboxConfig)| {
            let mut c = pod();
            f(&mut c);
            c
        };
        let cases: Vec<(PodSandboxConfig, &str)> = vec![
            (
                with(&|c| {
                    c.linux
                        .as_mut()
                        .unwrap()
                        .sysctls
                        .insert("kernel.panic".into(), "1".into());
                }),
                "config.linux.sysctls",
            ),
            (
                with(&|c| {
                    let l = c.linux.as_mut().unwrap();
                    l.security_context = Some(LinuxSandboxSecurityContext {
                        namespace_options: Some(NamespaceOption {
                            network: 2,
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }),
                "host network",
            ),
            (
                with(&|c| {
                    c.linux.as_mut().unwrap().cgroup_parent = "kubepods.slice".into();
                }),
                "config.linux.cgroup_parent",
            ),
            (
                with(&|c| {
                    c.linux.as_mut().unwrap().security_context =
                        Some(LinuxSandboxSecurityContext {
                            seccomp: Some(SecurityProfile {
                                profile_type: ProfileType::Localhost as i32,
                                localhost_ref: "/x.json".into(),
                            }),
                            ..Default::default()
                        });
                }),
                "cannot read seccomp profile",
            ),
        ];
        for (c, want) in cases {
            let e = build(&c, &host).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let mut systemd = HostFacts {
            cgroup_driver: cgroups::CgroupDriver::Systemd,
            ..Default::default()
        };
        let e = build(&pod(), &systemd).unwrap_err().to_string();
        assert!(e.contains(".slice"), "{e}");
        systemd.cgroup_driver = cgroups::CgroupDriver::Systemd;
        let c = with(&|c| {
            c.linux.as_mut().unwrap().cgroup_parent = "kubepods-podu1.slice".into();
        });
        let s = build(&c, &systemd).unwrap();
        assert_eq!(
            s["linux"]["cgroupsPath"],
            format!("kubepods-podu1.slice:crius:{}", "a".repeat(64))
        );
    }
}
