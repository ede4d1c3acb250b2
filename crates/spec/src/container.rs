//! The spec of an application container.

use crate::common::{self, Parts, Profile};
use crate::error::{invalid, SpecError};
use crate::mounts::{self, HostPropagation};
use crate::oci;
use crate::sandbox::host_namespaces;
use crate::user::{ResolvedUser, SupplementalGroupsPolicy, UserRequest};
use crate::{
    annotations as ann, caps, cgroups, oom, process, HostFacts, ImageConfig, SandboxFacts,
};
use k8s_cri::v1::{ContainerConfig, NamespaceMode, PodSandboxConfig};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, LinuxNamespaceType as Ns, LinuxResources};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

const SC: &str = "config.linux.security_context";

/// A device node to create in the container, resolved by the caller from
/// the host (a CRI device, or every host device for privileged containers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// File mode bits.
    pub file_mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// cgroup permissions (`rwm` subset).
    pub permissions: String,
}

/// Everything a container spec is made from.
pub struct ContainerInput<'a> {
    /// The container id.
    pub id: &'a str,
    /// The CRI container config.
    pub config: &'a ContainerConfig,
    /// The pod's CRI config.
    pub sandbox_config: &'a PodSandboxConfig,
    /// The image config.
    pub image: &'a ImageConfig,
    /// The image name as requested (for the image-name annotation).
    pub image_name: &'a str,
    /// The user, resolved with [`crate::user::resolve`] from [`user_request`].
    pub user: &'a ResolvedUser,
    /// Facts about the sandbox.
    pub sandbox: &'a SandboxFacts,
    /// Facts about the host.
    pub host: &'a HostFacts,
    /// Propagation of the host mounts under the CRI mounts' host paths.
    pub host_propagation: &'a HashMap<String, HostPropagation>,
    /// Directory under which image volumes get their empty directories.
    pub volume_dir: &'a str,
    /// Device nodes to create.
    pub devices: &'a [DeviceNode],
    /// The pid of the container whose pid namespace a TARGET mode joins.
    pub target_pid: Option<u32>,
    /// Reads a Localhost seccomp profile.
    pub load_profile: &'a dyn Fn(&str) -> Result<String, String>,
}

/// What the request and the image say about the user, for the caller to
/// resolve against the image's /etc/passwd and /etc/group.
pub fn user_request(config: &ContainerConfig, image: &ImageConfig) -> UserRequest {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    UserRequest {
        run_as_user: sc.run_as_user.map(|v| v.value),
        run_as_username: sc.run_as_username.clone(),
        run_as_group: sc.run_as_group.map(|v| v.value),
        supplemental_groups: sc.supplemental_groups.clone(),
        policy: if sc.supplemental_groups_policy == 1 {
            SupplementalGroupsPolicy::Strict
        } else {
            SupplementalGroupsPolicy::Merge
        },
        image_user: image.user.clone(),
    }
}

/// The image volumes the container gets (the caller creates their source
/// directories before the container is created).
pub fn image_volumes(input: &ContainerInput<'_>) -> Result<Vec<mounts::MountEntry>, SpecError> {
    let cri = mounts::cri_mounts(
        &input.config.mounts,
        input.host_propagation,
        input.host.rro_mounts,
    )?;
    Ok(mounts::image_volume_mounts(
        &input.image.volumes,
        input.volume_dir,
        &cri,
    ))
}

/// `HOSTNAME` of a container: the pod's hostname; for a host-network pod
/// that names none, the node's (as containerd).
fn hostname_env<'a>(input: &'a ContainerInput<'_>) -> &'a str {
    match input.sandbox_config.hostname.as_str() {
        "" => &input.host.hostname,
        h => h,
    }
}

/// `linux.maskedPaths` and `linux.readonlyPaths`: none for a privileged
/// container; the lists the client sent when it sent a security context
/// (kubelet always does: the defaults for `procMount: Default`, empty lists
/// for `Unmasked`), so empty means none; crius's defaults when it sent
/// none at all (proto3 cannot tell an empty list from a missing one, the
/// message's presence can).
fn proc_paths(
    sc: Option<&k8s_cri::v1::LinuxContainerSecurityContext>,
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    let owned = |paths: &[&str]| paths.iter().map(|s| s.to_string()).collect();
    match sc {
        _ if privileged => (Vec::new(), Vec::new()),
        Some(sc) => (sc.masked_paths.clone(), sc.readonly_paths.clone()),
        None => (
            owned(common::DEFAULT_MASKED_PATHS),
            owned(common::DEFAULT_READONLY_PATHS),
        ),
    }
}

/// Builds an application container's spec.
pub fn container_spec(input: &ContainerInput<'_>) -> Result<oci_spec::runtime::Spec, SpecError> {
    let config = input.config;
    let host = input.host;
    let meta = config.metadata.clone().unwrap_or_default();
    if meta.name.is_empty() {
        return Err(invalid("config.metadata.name", "must not be empty"));
    }
    let pod_meta = input.sandbox_config.metadata.clone().unwrap_or_default();
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let pod_sc = input
        .sandbox_config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let privileged = sc.privileged;
    if privileged && !pod_sc.privileged {
        return Err(invalid(
            format!("{SC}.privileged"),
            "a privileged container needs a privileged pod sandbox",
        ));
    }
    let hn = host_namespaces(input.sandbox_config);

    // Process.
    let args = process::merge_args(
        &config.command,
        &config.args,
        &input.image.entrypoint,
        &input.image.cmd,
    )?;
    let mut env = process::merge_env(
        &input.image.env,
        config
            .envs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str())),
    );
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, common::DEFAULT_PATH_ENV.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", hostname_env(input)));
    }
    let cwd = process::working_dir(&config.working_dir, &input.image.working_dir)?;
    let cap_field = format!("{SC}.capabilities");
    let (add, drop) = sc
        .capabilities
        .as_ref()
        .map(|c| (c.add_capabilities.clone(), c.drop_capabilities.clone()))
        .unwrap_or_default();
    let caps = caps::compute(&add, &drop, privileged, &host.capabilities, &cap_field)?;

    // Security profiles: containers are unconfined unless asked otherwise.
    #[allow(deprecated)]
    let deprecated_seccomp = sc.seccomp_profile_path.clone();
    let seccomp_profile = common::profile(
        sc.seccomp.as_ref(),
        &deprecated_seccomp,
        Profile::Unconfined,
        &format!("{SC}.seccomp"),
    )?;
    let seccomp = common::seccomp(
        &seccomp_profile,
        privileged,
        &caps,
        input.load_profile,
        &format!("{SC}.seccomp"),
    )?;
    #[allow(deprecated)]
    let deprecated_apparmor = sc.apparmor_profile.clone();
    let apparmor_profile = common::profile(
        sc.apparmor.as_ref(),
        &deprecated_apparmor,
        Profile::RuntimeDefault,
        &format!("{SC}.apparmor"),
    )?;
    let apparmor = common::apparmor_profile(
        &apparmor_profile,
        privileged,
        &host.apparmor,
        &format!("{SC}.apparmor"),
    )?;

    // Namespaces: the pod's network, IPC and UTS; pid per mode.
    let pause = input.sandbox.pid;
    let proc_ns = |kind: &str| pause.map(|p| format!("/proc/{p}/ns/{kind}"));
    let mut namespaces = vec![common::namespace(Ns::Mount, None)];
    if !hn.network {
        let net = input.sandbox.netns_path.clone().or_else(|| proc_ns("net"));
        namespaces.push(common::namespace(Ns::Network, net));
        let uts = input.sandbox.uts_path.clone().or_else(|| proc_ns("uts"));
        namespaces.push(common::namespace(Ns::Uts, uts));
    }
    if !hn.ipc {
        let ipc = input.sandbox.ipc_path.clone().or_else(|| proc_ns("ipc"));
        namespaces.push(common::namespace(Ns::Ipc, ipc));
    }
    let pid_mode = pid_mode(config, hn.pid, pause.is_some());
    match NamespaceMode::try_from(pid_mode) {
        Ok(NamespaceMode::Node) => {
            if !hn.pid {
                return Err(invalid(
                    format!("{SC}.namespace_options.pid"),
                    "NODE pid mode needs a pod in the host pid namespace",
                ));
            }
        }
        Ok(NamespaceMode::Pod) => {
            if pause.is_none() && !hn.pid {
                return Err(invalid(
                    format!("{SC}.namespace_options.pid"),
                    "POD pid mode needs a pod whose namespace_options.pid is POD (this pod shares no PID namespace)",
                ));
            }
            namespaces.push(common::namespace(Ns::Pid, proc_ns("pid")))
        }
        Ok(NamespaceMode::Container) => namespaces.push(common::namespace(Ns::Pid, None)),
        Ok(NamespaceMode::Target) => {
            let target = input.target_pid.ok_or_else(|| {
                invalid(
                    format!("{SC}.namespace_options.target_id"),
                    "the target container is not running",
                )
            })?;
            namespaces.push(common::namespace(
                Ns::Pid,
                Some(format!("/proc/{target}/ns/pid")),
            ));
        }
        Err(_) => {
            return Err(invalid(
                format!("{SC}.namespace_options.pid"),
                format!("unknown mode {pid_mode}"),
            ));
        }
    }

    // Mounts.
    let cri = mounts::cri_mounts(&config.mounts, input.host_propagation, host.rro_mounts)?;
    // As containerd: a bidirectional mount needs the container's root
    // mount shared, a host-to-container one needs it at least slave.
    let rootfs_propagation = if cri.iter().any(|m| m.options.iter().any(|o| o == "rshared")) {
        Some("rshared")
    } else if cri.iter().any(|m| m.options.iter().any(|o| o == "rslave")) {
        Some("rslave")
    } else {
        None
    };
    let volumes = mounts::image_volume_mounts(&input.image.volumes, input.volume_dir, &cri);
    let all_mounts = mounts::merge(vec![
        mounts::default_mounts(privileged),
        vec![mounts::shm_mount(if hn.ipc {
            None
        } else {
            input.sandbox.shm_path.as_deref()
        })],
        mounts::pod_file_mounts(
            input.sandbox.hosts_path.as_deref(),
            input.sandbox.resolv_conf_path.as_deref(),
            input.sandbox.hostname_path.as_deref(),
            sc.readonly_rootfs,
        ),
        volumes,
        cri,
    ]);

    // Resources and devices.
    let resources_field = "config.linux.resources";
    let (resources, oom_req) = match &linux.resources {
        Some(r) => (
            cgroups::resources(r, host.cgroup_features, resources_field)?,
            r.oom_score_adj,
        ),
        None => (LinuxResources::default(), 0),
    };
    let oom_req = i32::try_from(oom_req)
        .map_err(|_| invalid(format!("{resources_field}.oom_score_adj"), "out of range"))?;
    // A privileged container may use every device, unless its handler
    // hands it no host devices (then only those it asked for).
    let all_devices = privileged && !host.privileged_without_host_devices;
    let mut device_rules = vec![common::device_rule(all_devices, None, None, None, "rwm")?];
    let mut devices = Vec::new();
    for (i, d) in input.devices.iter().enumerate() {
        if d.kind != 'c' && d.kind != 'b' {
            return Err(invalid(
                format!("config.devices[{i}]"),
                format!("{:?} is not a device node", d.path),
            ));
        }
        if !d.permissions.chars().all(|c| "rwm".contains(c)) || d.permissions.is_empty() {
            return Err(invalid(
                format!("config.devices[{i}].permissions"),
                format!("{:?} is not a subset of rwm", d.permissions),
            ));
        }
        let mut device = LinuxDevice::default();
        device.set_path(PathBuf::from(&d.path));
        device.set_typ(oci::from_name::<LinuxDeviceType>(
            &d.kind.to_string(),
            "device type",
        )?);
        device.set_major(d.major);
        device.set_minor(d.minor);
        device.set_file_mode(Some(d.file_mode));
        device.set_uid(Some(d.uid));
        device.set_gid(Some(d.gid));
        devices.push(device);
        if !all_devices {
            device_rules.push(common::device_rule(
                true,
                Some(d.kind),
                Some(d.major),
                Some(d.minor),
                &d.permissions,
            )?);
        }
    }

    let (masked, readonly) = proc_paths(linux.security_context.as_ref(), privileged);
    // cgroupns hides the host's hierarchy: containerd's choice, on the
    // unified hierarchy only (v1 tools expect the full paths) and not for
    // privileged containers.
    if host.cgroup_features.unified && !privileged {
        namespaces.push(common::namespace(Ns::Cgroup, None));
    }

    let mut annotations = vec![
        (
            ann::CONTAINER_TYPE.to_string(),
            ann::CONTAINER_TYPE_CONTAINER.to_string(),
        ),
        (ann::CONTAINER_NAME.to_string(), meta.name.clone()),
        (ann::SANDBOX_ID.to_string(), input.sandbox.id.clone()),
        (ann::SANDBOX_NAME.to_string(), pod_meta.name.clone()),
        (
            ann::SANDBOX_NAMESPACE.to_string(),
            pod_meta.namespace.clone(),
        ),
        (ann::SANDBOX_UID.to_string(), pod_meta.uid.clone()),
        (ann::IMAGE_NAME.to_string(), input.image_name.to_string()),
    ];
    // The handler's allow-lists: matching pod annotations, then matching
    // container annotations (a container's value wins on a shared key).
    let mut passed: BTreeMap<String, String> =
        ann::passthrough(&input.sandbox_config.annotations, &host.pod_annotations)
            .into_iter()
            .collect();
    passed.extend(ann::passthrough(
        &config.annotations,
        &host.container_annotations,
    ));
    annotations.extend(passed);

    let pod_parent = input
        .sandbox_config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    let mut spec = common::assemble(Parts {
        args,
        env,
        cwd,
        terminal: config.tty,
        uid: input.user.uid,
        gid: input.user.gid,
        additional_gids: input.user.additional_gids.clone(),
        caps,
        no_new_privileges: sc.no_new_privs,
        oom_score_adj: oom::restrict_oom_score_adj(
            oom_req,
            host.oom_score_adj,
            host.can_lower_oom_score_adj,
        ),
        apparmor,
        selinux: common::selinux_label(sc.selinux_options.as_ref(), host.selinux),
        nofile: host.nofile_hard.min(1_048_576),
        hostname: None,
        readonly_rootfs: sc.readonly_rootfs,
        mounts: all_mounts,
        namespaces,
        cgroups_path: cgroups::cgroups_path(&pod_parent, input.id, host.cgroup_driver),
        resources,
        devices,
        device_rules,
        sysctls: HashMap::new(),
        seccomp,
        masked_paths: masked,
        readonly_paths: readonly,
        annotations,
    })?;
    if let (Some(p), Some(l)) = (rootfs_propagation, spec.linux_mut().as_mut()) {
        l.set_rootfs_propagation(Some(p.to_string()));
    }
    Ok(spec)
}

/// The spec as JSON (for tests and verbose status).
pub fn to_json(spec: &oci_spec::runtime::Spec) -> Value {
    serde_json::to_value(spec).unwrap_or(Value::Null)
}

/// A container's PID namespace mode (a raw `NamespaceMode`, unchecked).
/// Without namespace options the container shares the pod's PID
/// namespace, as containerd and CRI-O read a missing message (mode POD is
/// 0): the pod's PID 1's (pause or holder), or the host's for a pod on the
/// host's. A pod without such a process has none to share, so there it
/// gets its own. (kubelet always sends the options.)
fn pid_mode(config: &ContainerConfig, host_pid: bool, pod_pid1: bool) -> i32 {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|sc| sc.namespace_options.as_ref())
        .map(|n| n.pid)
        .unwrap_or(if host_pid {
            NamespaceMode::Node
        } else if pod_pid1 {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        } as i32)
}

/// Whether a container's processes live in its pod's own shared PID
/// namespace, whose PID 1 is the pod's pause or PID-namespace holder
/// (`pod_pid1`): killing that PID 1 then kills every one of them (the
/// kernel ends a PID namespace with its init). Not for pods on the host's
/// PID namespace, nor containers with a namespace of their own or a
/// target's.
pub fn in_pod_pid_namespace(
    config: &ContainerConfig,
    sandbox_config: &PodSandboxConfig,
    pod_pid1: bool,
) -> bool {
    let host_pid = host_namespaces(sandbox_config).pid;
    pod_pid1 && !host_pid && pid_mode(config, host_pid, pod_pid1) == NamespaceMode::Pod as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::mount;
    use crate::user;
    use k8s_cri::v1::MountPropagation;
    use k8s_cri::v1::{
        security_profile::ProfileType, Capability, ContainerMetadata, Int64Value, KeyValue,
        LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount as CriMount, NamespaceOption,
        SecurityProfile,
    };
    use serde_json::json;

    fn pod(privileged: bool) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: crate::testutil::pod_metadata(),
            hostname: "web-0".into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/podu1".into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn which_containers_live_in_the_pods_pid_namespace() {
        let ns = |pid: NamespaceMode| {
            Some(NamespaceOption {
                pid: pid as i32,
                ..Default::default()
            })
        };
        let container = |o: Option<NamespaceOption>| ContainerConfig {
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: o,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod_with = |pid: NamespaceMode| crate::testutil::pod_with_namespaces(ns(pid));
        // (container's pid option, pod's pid option, pod has a PID 1) -> in it
        let cases = [
            (
                ns(NamespaceMode::Pod),
                pod_with(NamespaceMode::Pod),
                true,
                true,
            ),
            (None, pod_with(NamespaceMode::Pod), true, true),
            (None, pod(false), true, true),
            (
                ns(NamespaceMode::Pod),
                pod_with(NamespaceMode::Pod),
                false,
                false,
            ),
            (None, pod_with(NamespaceMode::Container), false, false),
            (
                ns(NamespaceMode::Container),
                pod_with(NamespaceMode::Pod),
                true,
                false,
            ),
            (
                ns(NamespaceMode::Target),
                pod_with(NamespaceMode::Pod),
                true,
                false,
            ),
            (None, pod_with(NamespaceMode::Node), true, false),
            (
                ns(NamespaceMode::Node),
                pod_with(NamespaceMode::Node),
                true,
                false,
            ),
        ];
        for (i, (c, p, pid1, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                in_pod_pid_namespace(&container(c), &p, pid1),
                want,
                "case {i}"
            );
        }
        // A container without any linux section shares the pod's.
        assert!(in_pod_pid_namespace(
            &ContainerConfig::default(),
            &pod(false),
            true
        ));
    }

    fn image() -> ImageConfig {
        ImageConfig {
            user: "app".into(),
            env: vec!["PATH=/bin".into(), "A=1".into()],
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            working_dir: "/srv".into(),
            volumes: vec!["/data".into()],
        }
    }

    fn base() -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            envs: vec![KeyValue {
                key: "A".into(),
                value: "2".into(),
            }],
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    struct Fixture {
        pod: PodSandboxConfig,
        image: ImageConfig,
        user: ResolvedUser,
        sandbox: SandboxFacts,
        host: HostFacts,
        prop: HashMap<String, HostPropagation>,
        devices: Vec<DeviceNode>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                pod: pod(false),
                image: image(),
                user: ResolvedUser {
                    uid: 1000,
                    gid: 1000,
                    additional_gids: vec![1000, 10],
                    username: Some("app".into()),
                },
                sandbox: SandboxFacts {
                    id: "s".repeat(64),
                    netns_path: Some("/run/crius/netns/p".into()),
                    shm_path: Some("/run/crius/sb/shm".into()),
                    pid: Some(4242),
                    ipc_path: None,
                    uts_path: None,
                    hosts_path: Some("/run/crius/sb/hosts".into()),
                    resolv_conf_path: Some("/run/crius/sb/resolv.conf".into()),
                    hostname_path: Some("/run/crius/sb/hostname".into()),
                },
                host: HostFacts {
                    capabilities: caps::from_cap_eff("000001fffeffffff"),
                    can_lower_oom_score_adj: false,
                    ..Default::default()
                },
                prop: HashMap::new(),
                devices: vec![],
            }
        }

        fn build(&self, c: &ContainerConfig, target: Option<u32>) -> Result<Value, SpecError> {
            let load = |p: &str| -> Result<String, String> {
                if p == "/profiles/allow.json" {
                    Ok(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#.into())
                } else {
                    Err("missing".into())
                }
            };
            let input = ContainerInput {
                id: &"c".repeat(64),
                config: c,
                sandbox_config: &self.pod,
                image: &self.image,
                image_name: "docker.io/library/app:1",
                user: &self.user,
                sandbox: &self.sandbox,
                host: &self.host,
                host_propagation: &self.prop,
                volume_dir: "/var/lib/crius/containers/c/volumes",
                devices: &self.devices,
                target_pid: target,
                load_profile: &load,
            };
            container_spec(&input).map(|s| to_json(&s))
        }
    }

    fn sc(f: impl FnOnce(&mut LinuxContainerSecurityContext)) -> ContainerConfig {
        let mut c = base();
        let mut s = LinuxContainerSecurityContext::default();
        f(&mut s);
        c.linux.as_mut().unwrap().security_context = Some(s);
        c
    }

    #[test]
    fn process_user_env_and_annotations() {
        let f = Fixture::new();
        let s = f.build(&base(), None).unwrap();
        assert_eq!(s["process"]["args"], json!(["/entry", "serve"]));
        assert_eq!(
            s["process"]["env"],
            json!(["PATH=/bin", "A=2", "HOSTNAME=web-0"])
        );
        assert_eq!(s["process"]["cwd"], "/srv");
        assert_eq!(
            s["process"]["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 10]})
        );
        assert_eq!(s["process"]["oomScoreAdj"], 0);
        assert_eq!(s["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(s["annotations"][ann::CONTAINER_TYPE], "container");
        assert_eq!(s["annotations"][ann::CONTAINER_NAME], "app");
        assert_eq!(s["annotations"][ann::IMAGE_NAME], "docker.io/library/app:1");
        assert_eq!(s["annotations"][ann::SANDBOX_ID], "s".repeat(64));
        assert_eq!(
            s["linux"]["cgroupsPath"],
            format!("/kubepods/podu1/{}", "c".repeat(64))
        );
        assert!(
            s["linux"].get("seccomp").is_none(),
            "containers are unconfined by default"
        );
        assert!(s.get("hostname").is_none());

        let mut c = base();
        c.command = vec!["/bin/sh".into()];
        c.args = vec!["-c".into(), "id".into()];
        c.tty = true;
        c.working_dir = "/tmp".into();
        let s = f.build(&c, None).unwrap();
        assert_eq!(s["process"]["args"], json!(["/bin/sh", "-c", "id"]));
        assert_eq!(s["process"]["terminal"], true);
        assert_eq!(s["process"]["cwd"], "/tmp");
    }

    #[test]
    fn user_request_from_config() {
        let c = sc(|s| {
            s.run_as_user = Some(Int64Value { value: 7 });
            s.run_as_group = Some(Int64Value { value: 8 });
            s.supplemental_groups = vec![9];
            s.supplemental_groups_policy = 1;
        });
        let r = user_request(&c, &image());
        assert_eq!(r.run_as_user, Some(7));
        assert_eq!(r.run_as_group, Some(8));
        assert_eq!(r.policy, SupplementalGroupsPolicy::Strict);
        let resolved = user::resolve(&r, &[], &[]).unwrap();
        assert_eq!(
            (resolved.uid, resolved.gid, resolved.additional_gids),
            (7, 8, vec![8, 9])
        );
    }

    #[test]
    fn namespaces_by_mode() {
        let f = Fixture::new();
        let ns = crate::testutil::namespaces;
        let pid_of = |s: &Value| ns(s).into_iter().find(|(t, _)| t == "pid");
        // mount (new), the pod's network, then these UTS and IPC paths.
        let first_four = |uts: &str, ipc: &str| {
            [
                ("mount".to_string(), None),
                (
                    "network".to_string(),
                    Some("/run/crius/netns/p".to_string()),
                ),
                ("uts".to_string(), Some(uts.to_string())),
                ("ipc".to_string(), Some(ipc.to_string())),
            ]
        };
        let s = f.build(&base(), None).unwrap();
        assert_eq!(
            ns(&s)[..4],
            first_four("/proc/4242/ns/uts", "/proc/4242/ns/ipc")
        );
        assert_eq!(
            pid_of(&s),
            Some(("pid".into(), Some("/proc/4242/ns/pid".into()))),
            "without options: the pause's (POD is the protobuf default)"
        );
        let mode = |m: i32| {
            sc(|s| {
                s.namespace_options = Some(NamespaceOption {
                    pid: m,
                    target_id: "t".into(),
                    ..Default::default()
                })
            })
        };
        assert_eq!(
            pid_of(&f.build(&mode(0), None).unwrap()),
            Some(("pid".into(), Some("/proc/4242/ns/pid".into())))
        );
        assert_eq!(
            pid_of(&f.build(&mode(3), Some(77)).unwrap()),
            Some(("pid".into(), Some("/proc/77/ns/pid".into())))
        );
        assert!(f
            .build(&mode(3), None)
            .unwrap_err()
            .to_string()
            .contains("target_id"));
        assert!(f
            .build(&mode(2), None)
            .unwrap_err()
            .to_string()
            .contains("host pid"));

        // A pod without a pause process: its pinned IPC and UTS namespaces;
        // no pod PID namespace to join.
        let mut f = Fixture::new();
        f.sandbox.pid = None;
        f.sandbox.ipc_path = Some("/run/crius/sb/ipc".into());
        f.sandbox.uts_path = Some("/run/crius/sb/uts".into());
        let s = f.build(&base(), None).unwrap();
        assert_eq!(
            ns(&s)[..4],
            first_four("/run/crius/sb/uts", "/run/crius/sb/ipc")
        );
        assert_eq!(pid_of(&s), Some(("pid".into(), None)));
        assert!(f
            .build(&mode(0), None)
            .unwrap_err()
            .to_string()
            .contains("namespace_options.pid"));
    }

    #[test]
    fn mounts_and_rootfs() {
        let f = Fixture::new();
        let mut c = sc(|s| s.readonly_rootfs = true);
        c.mounts = vec![CriMount {
            container_path: "/etc/hosts".into(),
            host_path: "/my/hosts".into(),
            ..Default::default()
        }];
        let s = f.build(&c, None).unwrap();
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(
            mount(&s, "/etc/hosts").unwrap()["source"],
            "/my/hosts",
            "a CRI mount overrides the pod file"
        );
        assert!(mount(&s, "/etc/resolv.conf").unwrap()["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro")));
        assert_eq!(
            mount(&s, "/dev/shm").unwrap()["source"],
            "/run/crius/sb/shm"
        );
        assert_eq!(
            mount(&s, "/data").unwrap()["source"],
            "/var/lib/crius/containers/c/volumes/0"
        );
        let dests: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let proc_pos = dests.iter().position(|d| *d == "/proc").unwrap();
        let cg_pos = dests.iter().position(|d| *d == "/sys/fs/cgroup").unwrap();
        assert!(proc_pos < cg_pos);
        let mut bad = base();
        bad.mounts = vec![CriMount {
            container_path: "rel".into(),
            host_path: "/x".into(),
            ..Default::default()
        }];
        assert!(f
            .build(&bad, None)
            .unwrap_err()
            .to_string()
            .contains("config.mounts[0].container_path"));
    }

    #[test]
    fn rootfs_propagation_follows_the_mounts() {
        let mut f = Fixture::new();
        f.prop.insert("/shared".into(), HostPropagation::Shared);
        f.prop.insert("/slave".into(), HostPropagation::Slave);
        let m = |host: &str, p: MountPropagation| CriMount {
            container_path: format!("/mnt{host}"),
            host_path: host.into(),
            propagation: p as i32,
            ..Default::default()
        };
        let cases = [
            (vec![], None),
            (
                vec![m("/slave", MountPropagation::PropagationPrivate)],
                None,
            ),
            (
                vec![m("/slave", MountPropagation::PropagationHostToContainer)],
                Some("rslave"),
            ),
            (
                vec![
                    m("/slave", MountPropagation::PropagationHostToContainer),
                    m("/shared", MountPropagation::PropagationBidirectional),
                ],
                Some("rshared"),
            ),
        ];
        for (mounts, want) in cases {
            let mut c = base();
            c.mounts = mounts;
            let s = f.build(&c, None).unwrap();
            assert_eq!(s["linux"]["rootfsPropagation"].as_str(), want);
        }
        // Bidirectional needs a shared host mount.
        let mut c = base();
        c.mounts = vec![m("/slave", MountPropagation::PropagationBidirectional)];
        assert!(f.build(&c, None).is_err());
    }

    #[test]
    fn security() {
        let mut f = Fixture::new();
        let c = sc(|s| {
            s.capabilities = Some(Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["KILL".into()],
                ..Default::default()
            });
            s.no_new_privs = true;
            s.seccomp = Some(SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                ..Default::default()
            });
            s.masked_paths = vec!["/proc/x".into()];
        });
        let s = f.build(&c, None).unwrap();
        let caps = s["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")) && !caps.contains(&json!("CAP_KILL")));
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(s["linux"]["maskedPaths"], json!(["/proc/x"]));
        assert_eq!(s["linux"]["readonlyPaths"], json!([]), "sent empty: none");

        let local = sc(|s| {
            s.seccomp = Some(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: "/profiles/allow.json".into(),
            })
        });
        assert_eq!(
            f.build(&local, None).unwrap()["linux"]["seccomp"]["defaultAction"],
            "SCMP_ACT_ALLOW"
        );

        // Privileged needs a privileged pod; then gets all held caps, no masks, writable sysfs.
        let privileged = sc(|s| s.privileged = true);
        assert!(f
            .build(&privileged, None)
            .unwrap_err()
            .to_string()
            .contains("privileged pod"));
        f.pod = pod(true);
        let s = f.build(&privileged, None).unwrap();
        assert_eq!(crate::testutil::bounding(&s).len(), 40);
        assert!(s["linux"]["maskedPaths"].as_array().unwrap().is_empty());
        assert!(!mount(&s, "/sys").unwrap()["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro")));
        assert_eq!(
            s["linux"]["resources"]["devices"][0],
            json!({"allow": true, "access": "rwm"})
        );
    }

    #[test]
    fn hostname_env_per_network_mode() {
        let host_network = |hostname: &str| {
            let mut p = pod(false);
            p.hostname = hostname.into();
            let sc = p.linux.as_mut().unwrap().security_context.as_mut().unwrap();
            sc.namespace_options = Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            });
            p
        };
        let with_env = |k: &str, v: &str| {
            let mut c = base();
            c.envs.push(KeyValue {
                key: k.into(),
                value: v.into(),
            });
            c
        };
        // (pod, container, the HOSTNAME the container gets)
        let cases = [
            (pod(false), base(), "HOSTNAME=web-0"),
            (host_network(""), base(), "HOSTNAME=node-1"),
            (host_network("named"), base(), "HOSTNAME=named"),
            (
                host_network(""),
                with_env("HOSTNAME", "mine"),
                "HOSTNAME=mine",
            ),
        ];
        for (i, (p, c, want)) in cases.into_iter().enumerate() {
            let mut f = Fixture::new();
            f.host.hostname = "node-1".into();
            f.pod = p;
            let s = f.build(&c, None).unwrap();
            let env: Vec<&str> = s["process"]["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e.as_str().filter(|e| e.starts_with("HOSTNAME=")))
                .collect();
            assert_eq!(env, [want], "case {i}");
        }
    }

    #[test]
    fn masked_and_readonly_paths_as_sent() {
        let defaults = |paths: &[&str]| json!(paths);
        let no_sc = {
            let mut c = base();
            c.linux = None;
            c
        };
        // (container, privileged pod, maskedPaths, readonlyPaths)
        let cases = [
            (
                no_sc,
                false,
                defaults(common::DEFAULT_MASKED_PATHS),
                defaults(common::DEFAULT_READONLY_PATHS),
            ),
            (
                base(),
                false,
                defaults(common::DEFAULT_MASKED_PATHS),
                defaults(common::DEFAULT_READONLY_PATHS),
            ),
            // procMount: Default (kubelet sends its lists).
            (
                sc(|s| {
                    s.masked_paths = vec!["/proc/kcore".into()];
                    s.readonly_paths = vec!["/proc/sys".into()];
                }),
                false,
                json!(["/proc/kcore"]),
                json!(["/proc/sys"]),
            ),
            // procMount: Unmasked (kubelet sends empty lists).
            (sc(|_| {}), false, json!([]), json!([])),
            (
                sc(|s| {
                    s.privileged = true;
                    s.masked_paths = vec!["/proc/kcore".into()];
                }),
                true,
                json!([]),
                json!([]),
            ),
        ];
        for (i, (c, privileged, masked, readonly)) in cases.into_iter().enumerate() {
            let mut f = Fixture::new();
            f.pod = pod(privileged);
            let s = f.build(&c, None).unwrap();
            assert_eq!(s["linux"]["maskedPaths"], masked, "case {i}");
            assert_eq!(s["linux"]["readonlyPaths"], readonly, "case {i}");
        }
    }

    #[test]
    fn cgroup_namespace_on_the_unified_hierarchy_only() {
        // (unified hierarchy, privileged container, gets a cgroup namespace)
        let cases = [
            (false, false, false),
            (false, true, false),
            (true, false, true),
            (true, true, false),
        ];
        for (unified, privileged, want) in cases {
            let mut f = Fixture::new();
            f.host.cgroup_features.unified = unified;
            f.pod = pod(privileged);
            let s = f.build(&sc(|s| s.privileged = privileged), None).unwrap();
            let cgroupns = crate::testutil::namespaces(&s)
                .into_iter()
                .filter(|(t, _)| t == "cgroup")
                .collect::<Vec<_>>();
            let expected = if want {
                vec![("cgroup".to_string(), None)]
            } else {
                vec![]
            };
            assert_eq!(
                cgroupns, expected,
                "unified {unified} privileged {privileged}"
            );
        }
    }

    #[test]
    fn annotations_pass_through_the_handler_allow_lists() {
        let mut f = Fixture::new();
        f.pod.annotations = [
            ("pod.example.com/a", "pa"),
            ("pod.example.com/b/c", "deep"),
            ("shared", "from-pod"),
            ("other", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut c = base();
        c.annotations = [
            ("ctr.example.com/gpu", "1"),
            ("shared", "from-container"),
            ("pod.example.com/z", "c"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let passed = |f: &Fixture| -> Vec<(String, String)> {
            let s = f.build(&c, None).unwrap();
            let mut out: Vec<(String, String)> = s["annotations"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| !k.starts_with("io.kubernetes.cri."))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            out.sort();
            out
        };
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(passed(&f).is_empty(), "nothing without allow-lists");
        // Pod patterns select pod annotations only; `*` stops at a `/`.
        f.host.pod_annotations = vec!["pod.example.com/*".into(), "shared".into()];
        assert_eq!(
            passed(&f),
            pairs(&[("pod.example.com/a", "pa"), ("shared", "from-pod")])
        );
        // Container patterns select container annotations; the container's
        // value wins on a shared key.
        f.host.container_annotations = vec!["ctr.example.com/*".into(), "shared".into()];
        assert_eq!(
            passed(&f),
            pairs(&[
                ("ctr.example.com/gpu", "1"),
                ("pod.example.com/a", "pa"),
                ("shared", "from-container"),
            ])
        );
    }

    fn fuse() -> DeviceNode {
        DeviceNode {
            path: "/dev/fuse".into(),
            kind: 'c',
            major: 10,
            minor: 229,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
            permissions: "rw".into(),
        }
    }

    #[test]
    fn resources_and_devices() {
        let mut f = Fixture::new();
        f.devices = vec![fuse()];
        let mut c = base();
        c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 1 << 26,
            oom_score_adj: -500,
            cpu_shares: 2,
            ..Default::default()
        });
        let s = f.build(&c, None).unwrap();
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 1 << 26);
        assert_eq!(s["linux"]["resources"]["cpu"]["shares"], 2);
        assert_eq!(
            s["process"]["oomScoreAdj"], 0,
            "cannot go below the daemon's own"
        );
        assert_eq!(s["linux"]["devices"][0]["path"], "/dev/fuse");
        assert_eq!(
            s["linux"]["resources"]["devices"][1],
            json!({"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"})
        );
        f.host.can_lower_oom_score_adj = true;
        assert_eq!(f.build(&c, None).unwrap()["process"]["oomScoreAdj"], -500);
        f.devices[0].permissions = "rwx".into();
        assert!(f
            .build(&base(), None)
            .unwrap_err()
            .to_string()
            .contains("config.devices[0].permissions"));
    }

    #[test]
    fn privileged_device_cgroup_by_handler() {
        let mut f = Fixture::new();
        f.pod = pod(true);
        f.devices = vec![fuse()];
        let privileged = sc(|s| s.privileged = true);
        // (privileged, privileged_without_host_devices, the device cgroup rules)
        let fuse = json!({"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"});
        let deny = json!({"allow": false, "access": "rwm"});
        let cases = [
            (true, false, json!([{"allow": true, "access": "rwm"}])),
            (true, true, json!([deny, fuse])),
            (false, false, json!([deny, fuse])),
            (false, true, json!([deny, fuse])),
        ];
        for (is_privileged, without_host_devices, rules) in cases {
            f.host.privileged_without_host_devices = without_host_devices;
            let c = if is_privileged {
                privileged.clone()
            } else {
                base()
            };
            let s = f.build(&c, None).unwrap();
            assert_eq!(
                s["linux"]["resources"]["devices"], rules,
                "{is_privileged} {without_host_devices}"
            );
            assert_eq!(s["linux"]["devices"][0]["path"], "/dev/fuse");
        }
    }

    #[test]
    fn invalid_requests() {
        let f = Fixture::new();
        let mut no_name = base();
        no_name.metadata = None;
        assert!(f
            .build(&no_name, None)
            .unwrap_err()
            .to_string()
            .contains("config.metadata.name"));
        let mut no_cmd = Fixture::new();
        no_cmd.image.entrypoint.clear();
        no_cmd.image.cmd.clear();
        assert!(no_cmd
            .build(&base(), None)
            .unwrap_err()
            .to_string()
            .contains("config.command"));
        let bad_cap = sc(|s| {
            s.capabilities = Some(Capability {
                add_capabilities: vec!["SYS_RESOURCE".into()],
                ..Default::default()
            })
        });
        assert!(f
            .build(&bad_cap, None)
            .unwrap_err()
            .to_string()
            .contains("capabilities.add_capabilities"));
    }
}
