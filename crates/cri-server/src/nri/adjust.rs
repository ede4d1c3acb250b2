//! Between NRI's messages and crius' spec: a plugin's `ContainerAdjustment`
//! as the spec crate's [`NriAdjustment`] (maps in key order, enums by their
//! names), and the Linux part of a container being created as plugins see
//! it (its resources, OOM score, rlimits, devices, namespaces).

use crius_nri::api;
use crius_spec::nri::{
    NriAdjustment, NriCpu, NriDevice, NriDeviceRule, NriHook, NriHooks, NriIoPriority, NriMemory,
    NriMemoryPolicy, NriMount, NriRdt, NriResources, NriRlimit, NriScheduler, NriSeccomp,
    NriSeccompArg, NriSyscall,
};
use oci_spec::runtime::Spec;
use protobuf::{EnumFull, EnumOrUnknown};

/// An enum value's name in the protocol (`unknown(<n>)` for a value the
/// vendored api does not have, which the spec crate refuses).
fn name<E: EnumFull>(e: &EnumOrUnknown<E>) -> String {
    match e.enum_value() {
        Ok(v) => v.descriptor().name().to_string(),
        Err(n) => format!("unknown({n})"),
    }
}

/// A map's entries in key order.
fn sorted<V: Clone, T>(
    m: &std::collections::HashMap<String, V>,
    f: impl Fn(&V) -> T,
) -> Vec<(String, T)> {
    let mut out: Vec<(String, T)> = m.iter().map(|(k, v)| (k.clone(), f(v))).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn hooks(list: &[api::Hook]) -> Vec<NriHook> {
    list.iter()
        .map(|h| NriHook {
            path: h.path.clone(),
            args: h.args.clone(),
            env: h.env.clone(),
            timeout: h.timeout.as_ref().map(|t| t.value),
        })
        .collect()
}

fn resources(r: &api::LinuxResources) -> NriResources {
    let m = r.memory.as_ref();
    let c = r.cpu.as_ref();
    NriResources {
        memory: m.map_or_else(NriMemory::default, |m| NriMemory {
            limit: m.limit.as_ref().map(|v| v.value),
            reservation: m.reservation.as_ref().map(|v| v.value),
            swap: m.swap.as_ref().map(|v| v.value),
            kernel: m.kernel.as_ref().map(|v| v.value),
            kernel_tcp: m.kernel_tcp.as_ref().map(|v| v.value),
            swappiness: m.swappiness.as_ref().map(|v| v.value),
            disable_oom_killer: m.disable_oom_killer.as_ref().map(|v| v.value),
            use_hierarchy: m.use_hierarchy.as_ref().map(|v| v.value),
        }),
        cpu: c.map_or_else(NriCpu::default, |c| NriCpu {
            shares: c.shares.as_ref().map(|v| v.value),
            quota: c.quota.as_ref().map(|v| v.value),
            period: c.period.as_ref().map(|v| v.value),
            realtime_runtime: c.realtime_runtime.as_ref().map(|v| v.value),
            realtime_period: c.realtime_period.as_ref().map(|v| v.value),
            cpus: c.cpus.clone(),
            mems: c.mems.clone(),
        }),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        blockio_class: r.blockio_class.as_ref().map(|v| v.value.clone()),
        rdt_class: r.rdt_class.as_ref().map(|v| v.value.clone()),
        unified: sorted(&r.unified, String::clone),
        devices: r
            .devices
            .iter()
            .map(|d| NriDeviceRule {
                allow: d.allow,
                kind: d.type_.clone(),
                major: d.major.as_ref().map(|v| v.value),
                minor: d.minor.as_ref().map(|v| v.value),
                access: d.access.clone(),
            })
            .collect(),
        pids: r.pids.as_ref().map(|p| p.limit),
    }
}

fn seccomp(p: &api::LinuxSeccomp) -> NriSeccomp {
    NriSeccomp {
        default_action: p.default_action.clone(),
        default_errno: p.default_errno.as_ref().map(|v| v.value),
        architectures: p.architectures.clone(),
        flags: p.flags.clone(),
        listener_path: p.listener_path.clone(),
        listener_metadata: p.listener_metadata.clone(),
        syscalls: p
            .syscalls
            .iter()
            .map(|s| NriSyscall {
                names: s.names.clone(),
                action: s.action.clone(),
                errno_ret: s.errno_ret.as_ref().map(|v| v.value),
                args: s
                    .args
                    .iter()
                    .map(|a| NriSeccompArg {
                        index: a.index,
                        value: a.value,
                        value_two: a.value_two,
                        op: a.op.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A plugin's adjustment in the spec crate's terms.
pub fn from_proto(a: &api::ContainerAdjustment) -> NriAdjustment {
    let h = a.hooks.as_ref();
    let hook_list =
        |f: fn(&api::Hooks) -> &Vec<api::Hook>| h.map(|h| hooks(f(h))).unwrap_or_default();
    let mut adj = NriAdjustment {
        env: a
            .env
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        annotations: sorted(&a.annotations, String::clone),
        mounts: a
            .mounts
            .iter()
            .map(|m| NriMount {
                destination: m.destination.clone(),
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect(),
        hooks: NriHooks {
            prestart: hook_list(|h| &h.prestart),
            create_runtime: hook_list(|h| &h.create_runtime),
            create_container: hook_list(|h| &h.create_container),
            start_container: hook_list(|h| &h.start_container),
            poststart: hook_list(|h| &h.poststart),
            poststop: hook_list(|h| &h.poststop),
        },
        args: a.args.clone(),
        rlimits: a
            .rlimits
            .iter()
            .map(|r| NriRlimit {
                kind: r.type_.clone(),
                hard: r.hard,
                soft: r.soft,
            })
            .collect(),
        cdi_devices: a.CDI_devices.iter().map(|d| d.name.clone()).collect(),
        ..Default::default()
    };
    let Some(l) = a.linux.as_ref() else {
        return adj;
    };
    adj.devices = l
        .devices
        .iter()
        .map(|d| NriDevice {
            path: d.path.clone(),
            kind: d.type_.clone(),
            major: d.major,
            minor: d.minor,
            file_mode: d.file_mode.as_ref().map(|v| v.value),
            uid: d.uid.as_ref().map(|v| v.value),
            gid: d.gid.as_ref().map(|v| v.value),
        })
        .collect();
    adj.resources = l.resources.as_ref().map(resources).unwrap_or_default();
    adj.cgroups_path = l.cgroups_path.clone();
    adj.oom_score_adj = l.oom_score_adj.as_ref().map(|v| v.value);
    adj.io_priority = l.io_priority.as_ref().map(|p| NriIoPriority {
        class: name(&p.class),
        priority: p.priority,
    });
    adj.seccomp_policy = l.seccomp_policy.as_ref().map(seccomp);
    adj.namespaces = l
        .namespaces
        .iter()
        .map(|n| (n.type_.clone(), n.path.clone()))
        .collect();
    adj.sysctl = sorted(&l.sysctl, String::clone);
    adj.net_devices = sorted(&l.net_devices, |d| d.name.clone());
    adj.scheduler = l.scheduler.as_ref().map(|s| NriScheduler {
        policy: name(&s.policy),
        nice: s.nice,
        priority: s.priority,
        flags: s.flags.iter().map(name).collect(),
        runtime: s.runtime,
        deadline: s.deadline,
        period: s.period,
    });
    adj.rdt = l.rdt.as_ref().map(|r| NriRdt {
        clos_id: r.clos_id.as_ref().map(|v| v.value.clone()),
        schemata: r.schemata.as_ref().map(|v| v.value.clone()),
        enable_monitoring: r.enable_monitoring.as_ref().map(|v| v.value),
        remove: r.remove,
    });
    adj.memory_policy = l.memory_policy.as_ref().map(|m| NriMemoryPolicy {
        mode: name(&m.mode),
        nodes: m.nodes.clone(),
        flags: m.flags.iter().map(name).collect(),
    });
    adj
}

/// The Linux part of a container being created, as plugins are told it:
/// namespaces, devices, resources, OOM score, cgroups path, sysctls.
pub fn linux_container(spec: &Spec) -> api::LinuxContainer {
    let Some(linux) = spec.linux().as_ref() else {
        return api::LinuxContainer::default();
    };
    let mut out = api::LinuxContainer {
        namespaces: linux
            .namespaces()
            .iter()
            .flatten()
            .map(|n| api::LinuxNamespace {
                type_: serde_json::to_value(n.typ())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                path: n
                    .path()
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        devices: linux
            .devices()
            .iter()
            .flatten()
            .map(|d| api::LinuxDevice {
                path: d.path().display().to_string(),
                type_: d.typ().as_str().to_string(),
                major: d.major(),
                minor: d.minor(),
                file_mode: d
                    .file_mode()
                    .map(|v| api::OptionalFileMode {
                        value: v,
                        ..Default::default()
                    })
                    .into(),
                uid: d
                    .uid()
                    .map(|v| api::OptionalUInt32 {
                        value: v,
                        ..Default::default()
                    })
                    .into(),
                gid: d
                    .gid()
                    .map(|v| api::OptionalUInt32 {
                        value: v,
                        ..Default::default()
                    })
                    .into(),
                ..Default::default()
            })
            .collect(),
        cgroups_path: linux
            .cgroups_path()
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        sysctl: linux.sysctl().clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(score) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        out.oom_score_adj = Some(api::OptionalInt {
            value: score.into(),
            ..Default::default()
        })
        .into();
    }
    if let Some(r) = linux.resources().as_ref() {
        let i64v = |v: Option<i64>| {
            v.map(|value| api::OptionalInt64 {
                value,
                ..Default::default()
            })
            .into()
        };
        let u64v = |v: Option<u64>| {
            v.map(|value| api::OptionalUInt64 {
                value,
                ..Default::default()
            })
            .into()
        };
        let mut res = api::LinuxResources::default();
        if let Some(m) = r.memory() {
            res.memory = Some(api::LinuxMemory {
                limit: i64v(m.limit()),
                reservation: i64v(m.reservation()),
                swap: i64v(m.swap()),
                swappiness: u64v(m.swappiness()),
                ..Default::default()
            })
            .into();
        }
        if let Some(c) = r.cpu() {
            res.cpu = Some(api::LinuxCPU {
                shares: u64v(c.shares()),
                quota: i64v(c.quota()),
                period: u64v(c.period()),
                realtime_runtime: i64v(c.realtime_runtime()),
                realtime_period: u64v(c.realtime_period()),
                cpus: c.cpus().clone().unwrap_or_default(),
                mems: c.mems().clone().unwrap_or_default(),
                ..Default::default()
            })
            .into();
        }
        res.hugepage_limits = r
            .hugepage_limits()
            .iter()
            .flatten()
            .map(|h| api::HugepageLimit {
                page_size: h.page_size().clone(),
                limit: h.limit() as u64,
                ..Default::default()
            })
            .collect();
        res.unified = r.unified().clone().unwrap_or_default();
        if let Some(p) = r.pids() {
            res.pids = Some(api::LinuxPids {
                limit: p.limit(),
                ..Default::default()
            })
            .into();
        }
        out.resources = Some(res).into();
    }
    out
}

/// The rlimits of a container being created, as plugins are told them.
pub fn rlimits(spec: &Spec) -> Vec<api::POSIXRlimit> {
    spec.process()
        .as_ref()
        .and_then(|p| p.rlimits().clone())
        .unwrap_or_default()
        .iter()
        .map(|r| api::POSIXRlimit {
            type_: serde_json::to_value(r.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            hard: r.hard(),
            soft: r.soft(),
            ..Default::default()
        })
        .collect()
}

/// The NRI field a spec-crate owner name (`env "FOO"`,
/// `linux.resources.memory.limit`, ...) stands for, and the entry's key for
/// a compound field. `None` for what NRI does not track.
pub fn owner_field(owned: &str) -> Option<(api::Field, Option<String>)> {
    use api::Field as F;
    // A compound field's entry: `<kind> "<key>"`, the key Debug-quoted
    // (JSON reads it back but for exotic escapes).
    let unquote = |q: &str| {
        serde_json::from_str::<String>(q).unwrap_or_else(|_| q.trim_matches('"').to_string())
    };
    if let Some(at) = owned.find(" \"") {
        let (kind, quoted) = (&owned[..at], &owned[at + 1..]);
        let field = match kind {
            "annotation" => F::Annotations,
            "env" => F::Env,
            "mount" => F::Mounts,
            "device" => F::Devices,
            "CDI device" => F::CdiDevices,
            "hugepage limit" => F::HugepageLimits,
            "net device" => F::LinuxNetDevices,
            "unified" => F::CgroupsUnified,
            "namespace" => F::Namespace,
            "sysctl" => F::Sysctl,
            "rlimit" => F::Rlimits,
            _ => return None,
        };
        return Some((field, Some(unquote(quoted))));
    }
    let field = match owned {
        "args" => F::Args,
        "linux.resources.memory.limit" => F::MemLimit,
        "linux.resources.memory.reservation" => F::MemReservation,
        "linux.resources.memory.swap" => F::MemSwapLimit,
        "linux.resources.memory.kernel" => F::MemKernelLimit,
        "linux.resources.memory.kernelTCP" => F::MemTCPLimit,
        "linux.resources.memory.swappiness" => F::MemSwappiness,
        "linux.resources.memory.disableOOMKiller" => F::MemDisableOomKiller,
        "linux.resources.memory.useHierarchy" => F::MemUseHierarchy,
        "linux.resources.cpu.shares" => F::CPUShares,
        "linux.resources.cpu.quota" => F::CPUQuota,
        "linux.resources.cpu.period" => F::CPUPeriod,
        "linux.resources.cpu.realtimeRuntime" => F::CPURealtimeRuntime,
        "linux.resources.cpu.realtimePeriod" => F::CPURealtimePeriod,
        "linux.resources.cpu.cpus" => F::CPUSetCPUs,
        "linux.resources.cpu.mems" => F::CPUSetMems,
        "linux.resources.pids.limit" => F::PidsLimit,
        "linux.resources.blockio_class" => F::BlockioClass,
        "linux.resources.rdt_class" => F::RdtClass,
        "linux.cgroups_path" => F::CgroupsPath,
        "linux.oom_score_adj" => F::OomScoreAdj,
        "linux.io_priority" => F::IoPriority,
        "linux.seccomp_policy" => F::SeccompPolicy,
        "linux.scheduler" => F::LinuxSched,
        "linux.rdt.closID" => F::RdtClosID,
        "linux.rdt.schemata" => F::RdtSchemata,
        "linux.rdt.enableMonitoring" => F::RdtEnableMonitoring,
        "linux.memory_policy" => F::MemoryPolicy,
        _ => return None,
    };
    Some((field, None))
}

/// Who set what of container `id`, in the protocol's shape (for
/// ValidateContainerAdjustment).
pub fn owning_plugins(id: &str, owners: &crius_spec::nri::Owners) -> api::OwningPlugins {
    let mut fields = api::FieldOwners::new();
    for (owned, plugin) in owners.owned() {
        match owner_field(owned) {
            Some((field, None)) => {
                fields.simple.insert(field as i32, plugin.to_string());
            }
            Some((field, Some(key))) => {
                fields
                    .compound
                    .entry(field as i32)
                    .or_default()
                    .owners
                    .insert(key, plugin.to_string());
            }
            None => tracing::debug!(field = owned, "NRI: an owned field NRI does not name"),
        }
    }
    let mut out = api::OwningPlugins::new();
    out.owners.insert(id.to_string(), fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_names_as_nri_fields() {
        use api::Field as F;
        let key = |s: &str| Some(s.to_string());
        type Want = Option<(api::Field, Option<String>)>;
        let cases: &[(&str, Want)] = &[
            ("env \"FOO\"", Some((F::Env, key("FOO")))),
            ("annotation \"a.b/c\"", Some((F::Annotations, key("a.b/c")))),
            ("mount \"/data\"", Some((F::Mounts, key("/data")))),
            ("device \"/dev/null\"", Some((F::Devices, key("/dev/null")))),
            (
                "CDI device \"vendor.com/gpu=0\"",
                Some((F::CdiDevices, key("vendor.com/gpu=0"))),
            ),
            (
                "hugepage limit \"2MB\"",
                Some((F::HugepageLimits, key("2MB"))),
            ),
            (
                "net device \"eth1\"",
                Some((F::LinuxNetDevices, key("eth1"))),
            ),
            (
                "unified \"memory.high\"",
                Some((F::CgroupsUnified, key("memory.high"))),
            ),
            (
                "namespace \"network\"",
                Some((F::Namespace, key("network"))),
            ),
            (
                "sysctl \"net.core.somaxconn\"",
                Some((F::Sysctl, key("net.core.somaxconn"))),
            ),
            (
                "rlimit \"RLIMIT_NOFILE\"",
                Some((F::Rlimits, key("RLIMIT_NOFILE"))),
            ),
            ("env \"WITH\\\"QUOTE\"", Some((F::Env, key("WITH\"QUOTE")))),
            ("args", Some((F::Args, None))),
            ("linux.resources.memory.limit", Some((F::MemLimit, None))),
            (
                "linux.resources.memory.kernelTCP",
                Some((F::MemTCPLimit, None)),
            ),
            ("linux.resources.cpu.shares", Some((F::CPUShares, None))),
            ("linux.resources.cpu.cpus", Some((F::CPUSetCPUs, None))),
            ("linux.resources.pids.limit", Some((F::PidsLimit, None))),
            ("linux.oom_score_adj", Some((F::OomScoreAdj, None))),
            ("linux.rdt.schemata", Some((F::RdtSchemata, None))),
            ("linux.memory_policy", Some((F::MemoryPolicy, None))),
            ("hooks.prestart", None),
            ("something else", None),
        ];
        for (owned, want) in cases {
            assert_eq!(&owner_field(owned), want, "{owned}");
        }
    }

    #[test]
    fn owners_in_the_protocols_shape() {
        let mut o = crius_spec::nri::Owners::default();
        o.claim("env \"A\"", "10-a").unwrap();
        o.claim("env \"B\"", "20-b").unwrap();
        o.claim("linux.resources.memory.limit", "20-b").unwrap();
        o.claim("annotation \"x\"", "10-a").unwrap();
        o.clear("annotation \"x\"", "20-b");
        let got = owning_plugins("c1", &o);
        let f = &got.owners["c1"];
        assert_eq!(got.owners.len(), 1);
        assert_eq!(f.simple.len(), 1);
        assert_eq!(f.simple[&(api::Field::MemLimit as i32)], "20-b");
        let env = &f.compound[&(api::Field::Env as i32)].owners;
        assert_eq!(env.len(), 2);
        assert_eq!((env["A"].as_str(), env["B"].as_str()), ("10-a", "20-b"));
        // A removed entry is nobody's.
        assert!(!f.compound.contains_key(&(api::Field::Annotations as i32)));
    }

    /// Every kind of field comes across, maps in key order, enums by name.
    #[test]
    fn adjustment_from_the_protocol() {
        let mut a = api::ContainerAdjustment::new();
        a.env.push(api::KeyValue {
            key: "A".into(),
            value: "1".into(),
            ..Default::default()
        });
        a.annotations.insert("b".into(), "2".into());
        a.annotations.insert("a".into(), "1".into());
        a.rlimits.push(api::POSIXRlimit {
            type_: "RLIMIT_NOFILE".into(),
            hard: 10,
            soft: 5,
            ..Default::default()
        });
        a.CDI_devices.push(api::CDIDevice {
            name: "v.com/c=d".into(),
            ..Default::default()
        });
        let mut hooks = api::Hooks::new();
        hooks.poststop.push(api::Hook {
            path: "/h".into(),
            timeout: Some(api::OptionalInt {
                value: 3,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        });
        a.hooks = Some(hooks).into();
        let mut l = api::LinuxContainerAdjustment::new();
        l.oom_score_adj = Some(api::OptionalInt {
            value: 7,
            ..Default::default()
        })
        .into();
        l.io_priority = Some(api::LinuxIOPriority {
            class: api::IOPrioClass::IOPRIO_CLASS_IDLE.into(),
            priority: 1,
            ..Default::default()
        })
        .into();
        l.scheduler = Some(api::LinuxScheduler {
            policy: api::LinuxSchedulerPolicy::SCHED_FIFO.into(),
            flags: vec![api::LinuxSchedulerFlag::SCHED_FLAG_RECLAIM.into()],
            ..Default::default()
        })
        .into();
        l.memory_policy = Some(api::LinuxMemoryPolicy {
            mode: api::MpolMode::MPOL_INTERLEAVE.into(),
            flags: vec![api::MpolFlag::MPOL_F_RELATIVE_NODES.into()],
            ..Default::default()
        })
        .into();
        let mut r = api::LinuxResources::new();
        r.cpu = Some(api::LinuxCPU {
            shares: Some(api::OptionalUInt64 {
                value: 100,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into();
        r.memory = Some(api::LinuxMemory {
            limit: Some(api::OptionalInt64 {
                value: 1 << 20,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into();
        l.resources = Some(r).into();
        l.net_devices.insert(
            "eth1".into(),
            api::LinuxNetDevice {
                name: "n1".into(),
                ..Default::default()
            },
        );
        a.linux = Some(l).into();

        let got = from_proto(&a);
        assert_eq!(got.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(
            got.annotations,
            [
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string())
            ]
        );
        assert_eq!(
            got.rlimits,
            [NriRlimit {
                kind: "RLIMIT_NOFILE".into(),
                hard: 10,
                soft: 5
            }]
        );
        assert_eq!(got.cdi_devices, ["v.com/c=d"]);
        assert_eq!(got.hooks.poststop[0].timeout, Some(3));
        assert_eq!(got.oom_score_adj, Some(7));
        assert_eq!(
            got.io_priority,
            Some(NriIoPriority {
                class: "IOPRIO_CLASS_IDLE".into(),
                priority: 1
            })
        );
        let s = got.scheduler.unwrap();
        assert_eq!(
            (s.policy.as_str(), s.flags),
            ("SCHED_FIFO", vec!["SCHED_FLAG_RECLAIM".to_string()])
        );
        let m = got.memory_policy.unwrap();
        assert_eq!(
            (m.mode.as_str(), m.flags),
            ("MPOL_INTERLEAVE", vec!["MPOL_F_RELATIVE_NODES".to_string()])
        );
        assert_eq!(got.resources.cpu.shares, Some(100));
        assert_eq!(got.resources.memory.limit, Some(1 << 20));
        assert_eq!(got.resources.memory.swap, None);
        assert_eq!(got.net_devices, [("eth1".to_string(), "n1".to_string())]);
        // an empty adjustment is empty
        assert_eq!(
            from_proto(&api::ContainerAdjustment::new()),
            NriAdjustment::default()
        );
    }

    #[test]
    fn container_as_plugins_see_it() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "oomScoreAdj": 5,
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 9, "soft": 8}]},
            "linux": {
                "cgroupsPath": "/p/c",
                "namespaces": [{"type": "network", "path": "/n"}],
                "resources": {"cpu": {"shares": 256, "cpus": "0"}, "memory": {"limit": 100}}
            }
        }))
        .unwrap();
        let l = linux_container(&spec);
        assert_eq!(l.cgroups_path, "/p/c");
        assert_eq!(l.namespaces[0].type_, "network");
        assert_eq!(l.namespaces[0].path, "/n");
        assert_eq!(l.oom_score_adj.value, 5);
        let r = l.resources.unwrap();
        assert_eq!(r.cpu.shares.value, 256);
        assert_eq!(r.cpu.cpus, "0");
        assert_eq!(r.memory.limit.value, 100);
        let rl = rlimits(&spec);
        assert_eq!(
            (rl[0].type_.as_str(), rl[0].hard, rl[0].soft),
            ("RLIMIT_NOFILE", 9, 8)
        );
    }
}
