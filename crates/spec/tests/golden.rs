//! Golden `config.json` files: a table of representative pods, containers
//! and edits whose specs are compared with the files in `tests/golden/`.
//!
//! The files hold the spec as JSON with sorted keys (maps such as the
//! annotations have no order of their own), so a difference is one of
//! content. `CRIUS_UPDATE_GOLDEN=1 cargo test -p crius-spec --test golden`
//! rewrites them; otherwise a difference fails with a line diff.

use crius_spec::container::{container_spec, ContainerInput, DeviceNode};
use crius_spec::mounts::HostPropagation;
use crius_spec::nri::{self, NriAdjustment};
use crius_spec::user::{self, ResolvedUser};
use crius_spec::{
    cgroups, edit, sandbox, userns, AppArmor, CgroupDriver, CgroupFeatures, HostFacts, ImageConfig,
    SandboxFacts,
};
use k8s_cri::v1::{
    security_profile::ProfileType, Capability, ContainerConfig, ContainerMetadata, HugepageLimit,
    IdMapping, Int64Value, KeyValue, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    Mount as CriMount, MountPropagation, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    SeLinuxOption, SecurityProfile, UserNamespace,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

const SANDBOX_ID: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const CONTAINER_ID: &str = "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";
const LOCAL_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_LOG",
  "architectures": ["SCMP_ARCH_X86_64"],
  "flags": ["SECCOMP_FILTER_FLAG_LOG"],
  "syscalls": [
    {"names": ["mkdir", "rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
  ]
}"#;

fn load_profile(path: &str) -> Result<String, String> {
    match path {
        "/profiles/local.json" => Ok(LOCAL_PROFILE.to_string()),
        _ => Err(format!("{path}: no such file")),
    }
}

/// A map (annotations, sysctls, unified cgroup settings) of these pairs.
fn strings(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            namespace: "prod".into(),
            uid: "u1".into(),
            attempt: 0,
        }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/prod_web_u1".into(),
        annotations: strings(&[("io.kubernetes.pod.x", "1"), ("other", "2")]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/besteffort/podu1".into(),
            sysctls: strings(&[
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("kernel.shm_rmid_forced", "1"),
            ]),
            security_context: Some(LinuxSandboxSecurityContext::default()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_pod_sc(f: impl FnOnce(&mut LinuxSandboxSecurityContext)) -> PodSandboxConfig {
    let mut p = pod();
    let linux = p.linux.as_mut().unwrap();
    f(linux.security_context.as_mut().unwrap());
    p
}

/// The host's network, PID and IPC namespaces (NODE).
fn host_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: 2,
        pid: 2,
        ipc: 2,
        ..Default::default()
    }
}

fn host_namespaces_pod() -> PodSandboxConfig {
    let mut p = with_pod_sc(|s| {
        s.privileged = true;
        s.namespace_options = Some(host_namespaces());
    });
    p.linux.as_mut().unwrap().sysctls.clear();
    p
}

fn userns_options() -> UserNamespace {
    let m = |container_id, host_id, length| IdMapping {
        container_id,
        host_id,
        length,
    };
    UserNamespace {
        mode: 0,
        uids: vec![m(0, 100_000, 65536)],
        gids: vec![m(0, 200_000, 65536)],
    }
}

fn userns_pod() -> PodSandboxConfig {
    with_pod_sc(|s| {
        s.namespace_options = Some(NamespaceOption {
            userns_options: Some(userns_options()),
            ..Default::default()
        })
    })
}

fn host() -> HostFacts {
    HostFacts {
        capabilities: crius_spec::caps::from_cap_eff("000001fffeffffff"),
        oom_score_adj: -500,
        can_lower_oom_score_adj: false,
        pod_annotations: vec!["io.kubernetes.pod.*".into()],
        container_annotations: vec!["example.com/*".into()],
        hostname: "node-1".into(),
        ..Default::default()
    }
}

fn pause_image() -> ImageConfig {
    ImageConfig {
        user: "65535:65535".into(),
        entrypoint: vec!["/pause".into()],
        ..Default::default()
    }
}

fn sandbox_facts() -> SandboxFacts {
    SandboxFacts {
        id: SANDBOX_ID.into(),
        netns_path: Some("/run/crius/netns/cni-1".into()),
        shm_path: Some("/run/crius/sandboxes/s/shm".into()),
        ..Default::default()
    }
}

fn pod_facts() -> SandboxFacts {
    SandboxFacts {
        pid: Some(4242),
        hosts_path: Some("/var/lib/crius/sandboxes/s/hosts".into()),
        resolv_conf_path: Some("/var/lib/crius/sandboxes/s/resolv.conf".into()),
        hostname_path: Some("/var/lib/crius/sandboxes/s/hostname".into()),
        ..sandbox_facts()
    }
}

fn app_image() -> ImageConfig {
    ImageConfig {
        user: "app".into(),
        env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
        entrypoint: vec!["/entry".into()],
        cmd: vec!["serve".into(), "--port=80".into()],
        working_dir: "/srv".into(),
        volumes: vec!["/data".into(), "/cache".into()],
    }
}

fn container() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "app".into(),
            attempt: 1,
        }),
        envs: vec![
            KeyValue {
                key: "LANG".into(),
                value: "en_US.UTF-8".into(),
            },
            KeyValue {
                key: "MODE".into(),
                value: "prod".into(),
            },
        ],
        annotations: strings(&[("example.com/owner", "team"), ("dropped", "x")]),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

fn with_sc(f: impl FnOnce(&mut LinuxContainerSecurityContext)) -> ContainerConfig {
    let mut c = container();
    let mut sc = LinuxContainerSecurityContext {
        masked_paths: vec!["/proc/kcore".into(), "/proc/keys".into()],
        readonly_paths: vec!["/proc/sys".into()],
        ..Default::default()
    };
    f(&mut sc);
    c.linux.as_mut().unwrap().security_context = Some(sc);
    c
}

fn profile(t: ProfileType, r: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.into(),
    })
}

fn full_resources() -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 128 << 20,
        oom_score_adj: 900,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![
            HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            },
            HugepageLimit {
                page_size: "1GB".into(),
                limit: 0,
            },
        ],
        unified: strings(&[("memory.high", "50000000"), ("pids.max", "100")]),
    }
}

/// One container case: the pod, the container, and what differs from the
/// defaults.
struct Case {
    pod: PodSandboxConfig,
    config: ContainerConfig,
    host: HostFacts,
    sandbox: SandboxFacts,
    user: ResolvedUser,
    devices: Vec<DeviceNode>,
    propagation: HashMap<String, HostPropagation>,
    target_pid: Option<u32>,
}

impl Case {
    fn new(config: ContainerConfig) -> Case {
        Case {
            pod: pod(),
            config,
            host: host(),
            sandbox: pod_facts(),
            user: ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![1000, 10],
                username: Some("app".into()),
            },
            devices: vec![],
            propagation: HashMap::new(),
            target_pid: None,
        }
    }

    fn spec(&self) -> oci_spec::runtime::Spec {
        let image = app_image();
        let input = ContainerInput {
            id: CONTAINER_ID,
            config: &self.config,
            sandbox_config: &self.pod,
            image: &image,
            image_name: "registry.example/app:1.0",
            user: &self.user,
            sandbox: &self.sandbox,
            host: &self.host,
            host_propagation: &self.propagation,
            volume_dir: "/var/lib/crius/containers/c/volumes",
            devices: &self.devices,
            target_pid: self.target_pid,
            load_profile: &load_profile,
        };
        container_spec(&input).unwrap_or_else(|e| panic!("container spec: {e}"))
    }
}

fn fuse(permissions: &str) -> DeviceNode {
    DeviceNode {
        path: "/dev/fuse".into(),
        kind: 'c',
        major: 10,
        minor: 229,
        file_mode: 0o666,
        uid: 0,
        gid: 0,
        permissions: permissions.into(),
    }
}

fn sda() -> DeviceNode {
    DeviceNode {
        path: "/dev/xvda".into(),
        kind: 'b',
        major: 8,
        minor: 0,
        file_mode: 0o660,
        uid: 0,
        gid: 6,
        permissions: "rw".into(),
    }
}

fn sandbox_json(pod: &PodSandboxConfig, host: &HostFacts) -> oci_spec::runtime::Spec {
    sandbox::sandbox_spec(pod, &pause_image(), &sandbox_facts(), host, &load_profile)
        .unwrap_or_else(|e| panic!("sandbox spec: {e}"))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    canonical(serde_json::to_value(v).expect("serialisable"))
}

fn bytes_value(b: &[u8]) -> Value {
    canonical(serde_json::from_slice(b).expect("edits return JSON"))
}

/// The capability sets sorted: oci-spec keeps them in hash sets, which
/// serialise in no fixed order (a spec or a bare process).
fn canonical(mut v: Value) -> Value {
    for pointer in ["/process/capabilities", "/capabilities"] {
        if let Some(sets) = v.pointer_mut(pointer).and_then(Value::as_object_mut) {
            for set in sets.values_mut() {
                if let Some(list) = set.as_array_mut() {
                    list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                }
            }
        }
    }
    v
}

/// Every golden case: (file name, the value).
fn cases() -> Vec<(&'static str, Value)> {
    let mut out: Vec<(&'static str, Value)> = Vec::new();

    // Pause containers.
    out.push(("sandbox_default", to_value(&sandbox_json(&pod(), &host()))));
    out.push((
        "sandbox_host_namespaces_privileged",
        to_value(&sandbox_json(&host_namespaces_pod(), &host())),
    ));
    let mut resourced = with_pod_sc(|s| {
        s.run_as_user = Some(Int64Value { value: 1234 });
        s.run_as_group = Some(Int64Value { value: 5678 });
        s.supplemental_groups = vec![4, 44];
        s.seccomp = profile(ProfileType::Unconfined, "");
        s.selinux_options = Some(SeLinuxOption {
            user: "system_u".into(),
            role: "".into(),
            r#type: "container_t".into(),
            level: "s0:c1,c2".into(),
        });
    });
    resourced.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        cpu_shares: 2,
        cpu_period: 100_000,
        cpu_quota: 200_000,
        memory_limit_in_bytes: 256 << 20,
        ..Default::default()
    });
    let selinux_host = HostFacts {
        selinux: true,
        apparmor: AppArmor::Enabled {
            default: Ok("crius-default".into()),
            loaded: vec!["crius-default".into()],
        },
        cgroup_driver: CgroupDriver::Cgroupfs,
        ..host()
    };
    out.push((
        "sandbox_user_resources_selinux",
        to_value(&sandbox_json(&resourced, &selinux_host)),
    ));
    let maps = userns::pod_mappings(&userns_pod()).unwrap().unwrap();
    let pause = sandbox_json(&userns_pod(), &host());
    out.push((
        "sandbox_userns",
        to_value(&userns::apply(pause, &maps, None).unwrap()),
    ));

    // Application containers.
    let default = Case::new(container()).spec();
    out.push(("container_default", to_value(&default)));

    let mut c = Case::new(with_sc(|s| s.privileged = true));
    c.pod = with_pod_sc(|s| s.privileged = true);
    c.devices = vec![fuse("rwm"), sda()];
    c.user = ResolvedUser::default();
    out.push(("container_privileged", to_value(&c.spec())));

    let mut c = Case::new(with_sc(|s| {
        s.privileged = true;
        s.namespace_options = Some(host_namespaces());
    }));
    c.pod = host_namespaces_pod();
    c.sandbox.netns_path = None;
    c.sandbox.shm_path = None;
    c.host.privileged_without_host_devices = true;
    c.devices = vec![fuse("rw")];
    out.push((
        "container_host_namespaces_without_host_devices",
        to_value(&c.spec()),
    ));

    let mut c = Case::new(with_sc(|s| {
        s.namespace_options = Some(NamespaceOption {
            pid: 3,
            target_id: "other".into(),
            userns_options: Some(userns_options()),
            ..Default::default()
        });
    }));
    c.pod = userns_pod();
    c.target_pid = Some(777);
    let spec = userns::apply(c.spec(), &maps, Some("/proc/4242/ns/user")).unwrap();
    out.push(("container_userns_target_pid", to_value(&spec)));

    let seccomp = |p: Option<SecurityProfile>, deprecated: &str, add: &[&str]| {
        #[allow(deprecated)]
        let config = with_sc(|s| {
            s.seccomp = p;
            s.seccomp_profile_path = deprecated.into();
            s.capabilities = Some(Capability {
                add_capabilities: add.iter().map(|c| c.to_string()).collect(),
                drop_capabilities: vec!["CAP_KILL".into()],
                ..Default::default()
            });
        });
        Case::new(config).spec()
    };
    out.push((
        "container_seccomp_runtime_default",
        to_value(&seccomp(profile(ProfileType::RuntimeDefault, ""), "", &[])),
    ));
    out.push((
        "container_seccomp_runtime_default_sys_admin",
        to_value(&seccomp(
            None,
            "runtime/default",
            &["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"],
        )),
    ));
    out.push((
        "container_seccomp_localhost",
        to_value(&seccomp(
            profile(ProfileType::Localhost, "/profiles/local.json"),
            "",
            &[],
        )),
    ));

    let mut resources = container();
    resources.linux.as_mut().unwrap().resources = Some(full_resources());
    out.push((
        "container_resources",
        to_value(&Case::new(resources.clone()).spec()),
    ));
    let mut c = Case::new(resources);
    c.host.cgroup_driver = CgroupDriver::Systemd;
    c.host.cgroup_features = CgroupFeatures {
        swap: false,
        hugetlb: false,
        unified: true,
    };
    c.pod.linux.as_mut().unwrap().cgroup_parent = "kubepods-besteffort-podu1.slice".into();
    out.push(("container_resources_systemd_v2", to_value(&c.spec())));

    let mut c = Case::new(container());
    c.devices = vec![fuse("rw"), sda()];
    out.push(("container_devices", to_value(&c.spec())));

    let mut mounts = with_sc(|s| s.readonly_rootfs = true);
    let cri = |c: &str, h: &str, ro: bool, rro: bool, p: MountPropagation| CriMount {
        container_path: c.into(),
        host_path: h.into(),
        readonly: ro,
        recursive_read_only: rro,
        propagation: p as i32,
        ..Default::default()
    };
    mounts.mounts = vec![
        cri(
            "/data",
            "/srv/data",
            false,
            false,
            MountPropagation::PropagationPrivate,
        ),
        cri(
            "/etc/config",
            "/srv/config",
            true,
            true,
            MountPropagation::PropagationPrivate,
        ),
        cri(
            "/var/lib/kubelet",
            "/var/lib/kubelet",
            false,
            false,
            MountPropagation::PropagationBidirectional,
        ),
        cri(
            "/mnt/slave",
            "/mnt/host",
            true,
            false,
            MountPropagation::PropagationHostToContainer,
        ),
        cri(
            "/etc/hosts",
            "/srv/hosts",
            true,
            false,
            MountPropagation::PropagationPrivate,
        ),
    ];
    let mut c = Case::new(mounts);
    c.host.rro_mounts = true;
    c.propagation = [
        ("/var/lib/kubelet".to_string(), HostPropagation::Shared),
        ("/mnt/host".to_string(), HostPropagation::Slave),
    ]
    .into_iter()
    .collect();
    out.push(("container_mounts_readonly_rootfs", to_value(&c.spec())));

    let passwd = user::parse_passwd("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n");
    let group =
        user::parse_group("root:x:0:\napp:x:1000:\nwww-data:x:33:web\naudio:x:29:web,app\n");
    #[allow(deprecated)]
    let security = with_sc(|s| {
        s.run_as_username = "web".into();
        s.run_as_group = Some(Int64Value { value: 29 });
        s.supplemental_groups = vec![1000, 4];
        s.supplemental_groups_policy = 1;
        s.no_new_privs = true;
        s.apparmor = profile(ProfileType::Localhost, "my-app");
        s.selinux_options = Some(SeLinuxOption {
            user: "".into(),
            role: "".into(),
            r#type: "spc_t".into(),
            level: "s0".into(),
        });
        s.capabilities = Some(Capability {
            add_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
    });
    let request = crius_spec::container::user_request(&security, &app_image());
    let mut c = Case::new(security);
    c.user = user::resolve(&request, &passwd, &group).unwrap();
    c.host.selinux = true;
    c.host.apparmor = AppArmor::Enabled {
        default: Ok("crius-default".into()),
        loaded: vec!["crius-default".into(), "my-app".into()],
    };
    let mut tty = c.config.clone();
    tty.tty = true;
    tty.command = vec!["/bin/sh".into()];
    tty.args = vec!["-c".into(), "sleep 1".into()];
    tty.working_dir = "/tmp".into();
    c.config = tty;
    out.push(("container_security_context", to_value(&c.spec())));

    // Edits of an existing container's config.json.
    let config = serde_json::to_vec_pretty(&default).unwrap();
    let cmd: Vec<String> = ["sh", "-c", "echo hi"].map(String::from).to_vec();
    out.push((
        "edit_exec_process",
        bytes_value(&edit::exec_process(&config, &cmd, false).unwrap()),
    ));
    let security_spec = serde_json::to_vec(&c.spec()).unwrap();
    out.push((
        "edit_exec_process_tty",
        bytes_value(&edit::exec_process(&security_spec, &cmd, true).unwrap()),
    ));
    let update = cgroups::resources(
        &LinuxContainerResources {
            cpu_shares: 1024,
            memory_limit_in_bytes: 32 << 20,
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 2 << 20,
            }],
            unified: strings(&[("memory.low", "1000")]),
            ..Default::default()
        },
        CgroupFeatures::default(),
        "linux",
    )
    .unwrap();
    out.push(("edit_resources_update_value", to_value(&update)));
    let mut with_resources = container();
    with_resources.linux.as_mut().unwrap().resources = Some(full_resources());
    let resourced = serde_json::to_vec(&Case::new(with_resources).spec()).unwrap();
    out.push((
        "edit_update_resources",
        bytes_value(&edit::update_resources(&resourced, &update).unwrap()),
    ));
    out.push((
        "edit_update_resources_none_before",
        bytes_value(&edit::update_resources(&config, &update).unwrap()),
    ));

    // An NRI adjustment applied to the default container.
    let adj = nri_adjustment();
    let mut owners = nri::Owners::default();
    let adjusted = nri::apply_adjustment(&default, "10-plugin", &adj, &mut owners)
        .unwrap_or_else(|e| panic!("adjustment: {e}"));
    out.push(("nri_adjustment", to_value(&adjusted)));

    out
}

fn nri_adjustment() -> NriAdjustment {
    use crius_spec::nri::{
        NriCpu, NriDevice, NriDeviceRule, NriHook, NriHooks, NriMemory, NriMount, NriResources,
        NriRlimit,
    };
    NriAdjustment {
        env: vec![
            ("MODE".into(), "debug".into()),
            ("-LANG".into(), String::new()),
            ("NEW".into(), "1".into()),
        ],
        annotations: vec![
            ("nri.example/added".into(), "yes".into()),
            (
                format!("-{}", "io.kubernetes.cri.image-name"),
                String::new(),
            ),
        ],
        mounts: vec![NriMount {
            destination: "/nri".into(),
            kind: "bind".into(),
            source: "/var/lib/nri".into(),
            options: vec!["rbind".into(), "ro".into()],
        }],
        hooks: NriHooks {
            prestart: vec![NriHook {
                path: "/usr/bin/hook".into(),
                args: vec!["hook".into(), "pre".into()],
                env: vec!["A=1".into()],
                timeout: Some(5),
            }],
            ..Default::default()
        },
        rlimits: vec![NriRlimit {
            kind: "RLIMIT_NPROC".into(),
            hard: 512,
            soft: 256,
        }],
        devices: vec![NriDevice {
            path: "/dev/nri0".into(),
            kind: "c".into(),
            major: 240,
            minor: 1,
            file_mode: Some(0o600),
            uid: Some(0),
            gid: None,
        }],
        resources: NriResources {
            memory: NriMemory {
                limit: Some(96 << 20),
                ..Default::default()
            },
            cpu: NriCpu {
                shares: Some(300),
                cpus: "1".into(),
                ..Default::default()
            },
            hugepage_limits: vec![("2MB".into(), 2 << 20)],
            unified: vec![("memory.oom.group".into(), "1".into())],
            devices: vec![NriDeviceRule {
                allow: true,
                kind: "c".into(),
                major: Some(240),
                minor: Some(1),
                access: "rw".into(),
            }],
            pids: Some(64),
            ..Default::default()
        },
        oom_score_adj: Some(10),
        sysctl: vec![("net.core.somaxconn".into(), "1024".into())],
        ..Default::default()
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A line diff of `want` and `got` (the lines of each not in the other,
/// in order, with a few lines of context).
fn diff(want: &str, got: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    // Longest common subsequence, then a walk over it.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(('-', a[i]));
            i += 1;
        } else {
            lines.push(('+', b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= 3);
    let mut out = String::new();
    let mut skipped = false;
    for (k, (tag, line)) in lines.iter().enumerate() {
        if near(k) {
            if skipped {
                out.push_str("   ...\n");
                skipped = false;
            }
            out.push_str(&format!("{tag}  {line}\n"));
        } else {
            skipped = true;
        }
    }
    out
}

#[test]
fn golden_config_json() {
    let update = std::env::var("CRIUS_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let dir = golden_dir();
    let mut failures = Vec::new();
    let cases = cases();
    let mut names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "golden names are unique");
    for (name, value) in cases {
        let path = dir.join(format!("{name}.json"));
        let got = serde_json::to_string_pretty(&value).unwrap() + "\n";
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{name}: differs from {} (- golden, + now):\n{}",
                path.display(),
                diff(&want, &got)
            )),
            Err(e) => failures.push(format!("{name}: {}: {e}", path.display())),
        }
    }
    // No file without a case (a renamed case leaves none behind).
    if !update {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let stem = file.trim_end_matches(".json");
            if !names.contains(&stem) {
                failures.push(format!("{file}: no case writes it"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(rewrite with CRIUS_UPDATE_GOLDEN=1 if the change is intended)",
        failures.join("\n")
    );
}

#[test]
fn the_diff_names_changed_lines() {
    let cases = [
        ("a\nb\nc\n", "a\nb\nc\n", ""),
        ("a\nb\nc\n", "a\nx\nc\n", "   a\n-  b\n+  x\n   c\n"),
        ("a\n", "a\nb\n", "   a\n+  b\n"),
        ("a\nb\n", "b\n", "-  a\n   b\n"),
    ];
    for (want, got, d) in cases {
        assert_eq!(diff(want, got), d, "{want:?} vs {got:?}");
    }
}
