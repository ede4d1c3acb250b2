use super::*;
use oci_spec::runtime::{MountBuilder, ProcessBuilder, SpecBuilder};
use serde_json::{json, Value};

fn spec() -> Spec {
    let mut annotations = std::collections::HashMap::new();
    annotations.insert("keep".to_string(), "1".to_string());
    annotations.insert("gone".to_string(), "2".to_string());
    let mut s = SpecBuilder::default()
        .process(
            ProcessBuilder::default()
                .env(vec!["PATH=/bin".to_string(), "OLD=1".to_string()])
                .args(vec!["/bin/sh".to_string()])
                .build()
                .unwrap(),
        )
        .annotations(annotations)
        .mounts(vec![
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source("/a")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    // A linux part as crius writes it: namespaces, a device, a cgroup rule,
    // resources, a cgroups path.
    let linux = json!({
        "cgroupsPath": "/kubepods/pod1/c1",
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}],
        "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
        "resources": {
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": {"limit": 1000, "swap": 1000},
            "cpu": {"shares": 2, "quota": 50000, "period": 100000},
            "blockIO": {"weight": 10}
        },
        "sysctl": {"net.ipv4.ip_forward": "0"},
        "intelRdt": {"closID": "old"}
    });
    s.set_linux(Some(serde_json::from_value(linux).unwrap()));
    s
}

/// The adjusted spec as JSON, from plugin "p" with fresh owners.
fn apply(adj: &NriAdjustment) -> Result<Value, AdjustError> {
    let mut owners = Owners::default();
    apply_adjustment(&spec(), "p", adj, &mut owners).map(|s| serde_json::to_value(s).unwrap())
}

fn ok(adj: &NriAdjustment) -> Value {
    apply(adj).unwrap_or_else(|e| panic!("{adj:?}: {e}"))
}

/// The field an adjustment is refused for.
fn refused(adj: &NriAdjustment) -> String {
    match apply(adj) {
        Err(AdjustError::Refused { plugin, field, .. }) => {
            assert_eq!(plugin, "p");
            field
        }
        other => panic!("{adj:?} not refused: {other:?}"),
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn empty_adjustment_changes_nothing() {
    let s = spec();
    let mut owners = Owners::default();
    assert_eq!(
        apply_adjustment(&s, "p", &NriAdjustment::default(), &mut owners).unwrap(),
        s
    );
    assert_eq!(owners, Owners::default());
}

#[test]
fn env() {
    let cases: &[(&[(&str, &str)], &[&str])] = &[
        (&[], &["PATH=/bin", "OLD=1"]),
        (&[("NEW", "x")], &["PATH=/bin", "OLD=1", "NEW=x"]),
        (&[("OLD", "2")], &["PATH=/bin", "OLD=2"]),
        (&[("-OLD", "")], &["PATH=/bin"]),
        (&[("-MISSING", "")], &["PATH=/bin", "OLD=1"]),
        (
            &[("A", ""), ("-A", ""), ("B", "b=c")],
            &["PATH=/bin", "OLD=1", "B=b=c"],
        ),
        (&[("-OLD", ""), ("OLD", "3")], &["PATH=/bin", "OLD=3"]),
    ];
    for (env, want) in cases {
        let adj = NriAdjustment {
            env: kv(env),
            ..Default::default()
        };
        assert_eq!(ok(&adj)["process"]["env"], json!(want), "{env:?}");
    }
    for bad in ["", "A=B", "-", "X\0"] {
        let adj = NriAdjustment {
            env: kv(&[(bad, "v")]),
            ..Default::default()
        };
        assert_eq!(refused(&adj), "env", "{bad:?}");
    }
}

#[test]
fn annotations() {
    let cases: &[(&[(&str, &str)], Value)] = &[
        (
            &[("new", "v")],
            json!({"gone": "2", "keep": "1", "new": "v"}),
        ),
        (&[("keep", "9")], json!({"gone": "2", "keep": "9"})),
        (&[("-gone", "")], json!({"keep": "1"})),
        (&[("-none", "")], json!({"gone": "2", "keep": "1"})),
    ];
    for (ann, want) in cases {
        let adj = NriAdjustment {
            annotations: kv(ann),
            ..Default::default()
        };
        assert_eq!(ok(&adj)["annotations"], *want, "{ann:?}");
    }
    for bad in ["", "-"] {
        let adj = NriAdjustment {
            annotations: kv(&[(bad, "v")]),
            ..Default::default()
        };
        assert_eq!(refused(&adj), "annotations", "{bad:?}");
    }
}

fn m(dest: &str, kind: &str, source: &str, options: &[&str]) -> NriMount {
    NriMount {
        destination: dest.into(),
        kind: kind.into(),
        source: source.into(),
        options: strs(options),
    }
}

#[test]
fn mounts() {
    let dests = |v: &Value| -> Vec<String> {
        v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{} {} {}",
                    m["destination"].as_str().unwrap(),
                    m["source"].as_str().unwrap_or(""),
                    m["options"]
                        .as_array()
                        .map(|o| o
                            .iter()
                            .map(|x| x.as_str().unwrap())
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default()
                )
            })
            .collect()
    };
    let cases: &[(Vec<NriMount>, &[&str])] = &[
        (
            vec![m("/extra", "tmpfs", "tmpfs", &["nosuid", "size=1m"])],
            &["/proc proc ", "/data /a ", "/extra tmpfs nosuid,size=1m"],
        ),
        (
            vec![m("/data", "bind", "/b", &["rbind", "ro"])],
            &["/proc proc ", "/data /b rbind,ro"],
        ),
        (vec![m("-/data", "", "", &[])], &["/proc proc "]),
        (
            vec![m("-/nothing", "", "", &[])],
            &["/proc proc ", "/data /a "],
        ),
        // parents first: a mount below /proc goes after it, /x before it
        (
            vec![m("/proc/x", "tmpfs", "t", &[]), m("/x", "tmpfs", "t", &[])],
            &["/proc proc ", "/data /a ", "/x t ", "/proc/x t "],
        ),
    ];
    for (mounts, want) in cases {
        let adj = NriAdjustment {
            mounts: mounts.clone(),
            ..Default::default()
        };
        assert_eq!(dests(&ok(&adj)), *want, "{mounts:?}");
    }
    for bad in ["relative", "", "-rel", "/a\0b"] {
        let adj = NriAdjustment {
            mounts: vec![m(bad, "bind", "/x", &[])],
            ..Default::default()
        };
        assert_eq!(refused(&adj), "mounts", "{bad:?}");
    }
}

#[test]
fn args() {
    let cases: &[(&[&str], Value)] = &[
        (&["/bin/true", "x"], json!(["/bin/true", "x"])),
        (&["", "/bin/false"], json!(["/bin/false"])),
        (&[""], json!(["/bin/sh"])),
    ];
    for (args, want) in cases {
        let adj = NriAdjustment {
            args: strs(args),
            ..Default::default()
        };
        assert_eq!(ok(&adj)["process"]["args"], *want, "{args:?}");
    }
}

fn hook(path: &str, timeout: Option<i64>) -> NriHook {
    NriHook {
        path: path.into(),
        args: strs(&["h", "1"]),
        env: strs(&["E=1"]),
        timeout,
    }
}

#[test]
fn hooks_are_appended_by_kind() {
    let adj = NriAdjustment {
        hooks: NriHooks {
            prestart: vec![hook("/a", None)],
            create_runtime: vec![hook("/b", Some(5)), hook("/c", None)],
            create_container: vec![hook("/d", None)],
            start_container: vec![hook("/e", None)],
            poststart: vec![hook("/f", None)],
            poststop: vec![hook("/g", None)],
        },
        ..Default::default()
    };
    let h = &ok(&adj)["hooks"];
    let paths = |k: &str| -> Vec<&str> {
        h[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x["path"].as_str().unwrap())
            .collect()
    };
    assert_eq!(paths("prestart"), ["/a"]);
    assert_eq!(paths("createRuntime"), ["/b", "/c"]);
    assert_eq!(paths("createContainer"), ["/d"]);
    assert_eq!(paths("startContainer"), ["/e"]);
    assert_eq!(paths("poststart"), ["/f"]);
    assert_eq!(paths("poststop"), ["/g"]);
    assert_eq!(
        h["createRuntime"][0],
        json!({"path": "/b", "args": ["h", "1"], "env": ["E=1"], "timeout": 5})
    );
    for (bad, field) in [
        (hook("rel", None), "hooks.poststop"),
        (hook("/x", Some(0)), "hooks.poststop"),
    ] {
        let adj = NriAdjustment {
            hooks: NriHooks {
                poststop: vec![bad],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(refused(&adj), field);
    }
}

fn rlimit(kind: &str, hard: u64, soft: u64) -> NriRlimit {
    NriRlimit {
        kind: kind.into(),
        hard,
        soft,
    }
}

fn dev(path: &str, kind: &str, major: i64, minor: i64) -> NriDevice {
    NriDevice {
        path: path.into(),
        kind: kind.into(),
        major,
        minor,
        file_mode: Some(0o100666),
        uid: Some(1),
        gid: None,
    }
}

#[test]
fn devices() {
    let cases: &[(Vec<NriDevice>, Value, Value)] = &[
        (
            vec![dev("/dev/null2", "c", 1, 3)],
            json!([
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
                {"path": "/dev/null2", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 1},
            ]),
            json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            ]),
        ),
        (
            vec![dev("/dev/loop9", "b", 7, 9)],
            json!([
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
                {"path": "/dev/loop9", "type": "b", "major": 7, "minor": 9, "fileMode": 0o666, "uid": 1},
            ]),
            json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "b", "major": 7, "minor": 9, "access": "rwm"},
            ]),
        ),
        // replaced at its path
        (
            vec![dev("/dev/fuse", "c", 10, 230)],
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 230, "fileMode": 0o666, "uid": 1}]),
            json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 230, "access": "rw"},
            ]),
        ),
        // removed
        (
            vec![dev("-/dev/fuse", "", 0, 0)],
            json!([]),
            json!([{"allow": false, "access": "rwm"}]),
        ),
    ];
    for (devs, want, rules) in cases {
        let adj = NriAdjustment {
            devices: devs.clone(),
            ..Default::default()
        };
        let s = ok(&adj);
        assert_eq!(s["linux"]["devices"], *want, "{devs:?}");
        assert_eq!(s["linux"]["resources"]["devices"], *rules, "{devs:?}");
    }
    for bad in [dev("dev/x", "c", 1, 1), dev("/dev/x", "x", 1, 1)] {
        let adj = NriAdjustment {
            devices: vec![bad],
            ..Default::default()
        };
        assert_eq!(refused(&adj), "linux.devices");
    }
}

#[test]
fn resources() {
    let r = |f: &dyn Fn(&mut NriResources)| {
        let mut res = NriResources::default();
        f(&mut res);
        NriAdjustment {
            resources: res,
            ..Default::default()
        }
    };
    // (adjustment, JSON pointer into the spec, value there)
    let cases: Vec<(NriAdjustment, &str, Value)> = vec![
        (
            r(&|x| x.memory.limit = Some(2000)),
            "/linux/resources/memory",
            json!({"limit": 2000, "swap": 2000}),
        ),
        (
            r(&|x| {
                x.memory.limit = Some(2000);
                x.memory.swap = Some(4000)
            }),
            "/linux/resources/memory",
            json!({"limit": 2000, "swap": 4000}),
        ),
        (
            r(&|x| {
                x.memory.reservation = Some(500);
                x.memory.kernel = Some(600);
                x.memory.kernel_tcp = Some(700);
                x.memory.swappiness = Some(10);
                x.memory.disable_oom_killer = Some(true);
                x.memory.use_hierarchy = Some(false);
            }),
            "/linux/resources/memory",
            json!({
                "limit": 1000, "swap": 1000, "reservation": 500, "kernel": 600,
                "kernelTCP": 700, "swappiness": 10, "disableOOMKiller": true,
                "useHierarchy": false
            }),
        ),
        (
            r(&|x| {
                x.cpu.shares = Some(512);
                x.cpu.quota = Some(-1);
                x.cpu.period = Some(50000);
                x.cpu.realtime_runtime = Some(1000);
                x.cpu.realtime_period = Some(2000);
                x.cpu.cpus = "0-1,3".into();
                x.cpu.mems = "0".into();
            }),
            "/linux/resources/cpu",
            json!({
                "shares": 512, "quota": -1, "period": 50000, "realtimeRuntime": 1000,
                "realtimePeriod": 2000, "cpus": "0-1,3", "mems": "0"
            }),
        ),
        (
            r(&|x| {
                x.hugepage_limits = vec![
                    ("2MB".into(), 1 << 21),
                    ("1GB".into(), 0),
                    ("2MB".into(), 1 << 22),
                ]
            }),
            "/linux/resources/hugepageLimits",
            json!([{"pageSize": "1GB", "limit": 0}, {"pageSize": "2MB", "limit": 1 << 22}]),
        ),
        (
            r(&|x| x.unified = kv(&[("memory.high", "100000")])),
            "/linux/resources/unified",
            json!({"memory.high": "100000"}),
        ),
        (
            r(&|x| {
                x.devices = vec![NriDeviceRule {
                    allow: true,
                    kind: "c".into(),
                    major: Some(5),
                    minor: None,
                    access: "rw".into(),
                }]
            }),
            "/linux/resources/devices",
            json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 5, "access": "rw"}]),
        ),
        (
            r(&|x| x.pids = Some(64)),
            "/linux/resources/pids",
            json!({"limit": 64}),
        ),
        (
            r(&|x| x.blockio_class = Some(String::new())),
            "/linux/resources/blockIO",
            Value::Null,
        ),
        (
            r(&|x| x.rdt_class = Some("gold".into())),
            "/linux/intelRdt",
            json!({"closID": "gold"}),
        ),
        (
            r(&|x| x.rdt_class = Some(String::new())),
            "/linux/intelRdt",
            Value::Null,
        ),
    ];
    for (adj, pointer, want) in cases {
        let s = ok(&adj);
        assert_eq!(
            s.pointer(pointer).cloned().unwrap_or(Value::Null),
            want,
            "{adj:?}"
        );
    }
    let bad: Vec<(NriAdjustment, &str)> = vec![
        (
            r(&|x| x.memory.limit = Some(-5)),
            "linux.resources.memory.limit",
        ),
        (
            r(&|x| x.memory.swappiness = Some(101)),
            "linux.resources.memory.swappiness",
        ),
        (
            r(&|x| x.cpu.cpus = "0;1".into()),
            "linux.resources.cpu.cpus",
        ),
        (
            r(&|x| x.hugepage_limits = vec![("../x".into(), 1)]),
            "linux.resources.hugepage_limits",
        ),
        (
            r(&|x| x.unified = kv(&[("../memory.max", "1")])),
            "linux.resources.unified",
        ),
        (
            r(&|x| {
                x.devices = vec![NriDeviceRule {
                    access: "rwx".into(),
                    ..Default::default()
                }]
            }),
            "linux.resources.devices",
        ),
        // no block I/O class configuration in crius: refused, not dropped
        (
            r(&|x| x.blockio_class = Some("slow".into())),
            "linux.resources.blockio_class",
        ),
        (
            r(&|x| x.rdt_class = Some("..".into())),
            "linux.resources.rdt_class",
        ),
    ];
    for (adj, field) in bad {
        assert_eq!(refused(&adj), field, "{adj:?}");
    }
}

#[test]
fn swap_follows_the_memory_limit_only_where_there_is_one() {
    let adj = NriAdjustment {
        resources: NriResources {
            memory: NriMemory {
                limit: Some(2000),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let mut no_swap = serde_json::to_value(spec()).unwrap();
    no_swap["linux"]["resources"]["memory"] = json!({"limit": 1000});
    let no_swap: Spec = serde_json::from_value(no_swap).unwrap();
    let got = apply_adjustment(&no_swap, "p", &adj, &mut Owners::default()).unwrap();
    assert_eq!(
        serde_json::to_value(got).unwrap()["linux"]["resources"]["memory"],
        json!({"limit": 2000})
    );
}

#[test]
fn linux_fields() {
    let l = |f: &dyn Fn(&mut NriAdjustment)| {
        let mut a = NriAdjustment::default();
        f(&mut a);
        a
    };
    let cases: Vec<(NriAdjustment, &str, Value)> = vec![
        (
            l(&|a| a.oom_score_adj = Some(-998)),
            "/process/oomScoreAdj",
            json!(-998),
        ),
        (
            l(&|a| {
                a.io_priority = Some(NriIoPriority {
                    class: "IOPRIO_CLASS_RT".into(),
                    priority: 3,
                })
            }),
            "/process/ioPriority",
            json!({"class": "IOPRIO_CLASS_RT", "priority": 3}),
        ),
        (
            l(&|a| {
                a.io_priority = Some(NriIoPriority {
                    class: "IOPRIO_CLASS_NONE".into(),
                    priority: 0,
                })
            }),
            "/process/ioPriority",
            Value::Null,
        ),
        (
            l(&|a| a.namespaces = kv(&[("network", "/run/netns/x"), ("-pid", ""), ("ipc", "")])),
            "/linux/namespaces",
            json!([{"type": "network", "path": "/run/netns/x"}, {"type": "ipc"}]),
        ),
        (
            l(&|a| {
                a.sysctl = kv(&[
                    ("-net.ipv4.ip_forward", ""),
                    ("kernel.shm_rmid_forced", "1"),
                ])
            }),
            "/linux/sysctl",
            json!({"kernel.shm_rmid_forced": "1"}),
        ),
        (
            l(&|a| a.net_devices = kv(&[("eth9", "net1"), ("eth8", ""), ("-eth8", "")])),
            "/linux/netDevices",
            json!({"eth9": {"name": "net1"}}),
        ),
        (
            l(&|a| {
                a.scheduler = Some(NriScheduler {
                    policy: "SCHED_BATCH".into(),
                    nice: 5,
                    flags: strs(&["SCHED_FLAG_RECLAIM"]),
                    ..Default::default()
                })
            }),
            "/process/scheduler",
            json!({"policy": "SCHED_BATCH", "nice": 5, "priority": 0, "flags": ["SCHED_FLAG_RECLAIM"]}),
        ),
        (
            l(&|a| {
                a.rdt = Some(NriRdt {
                    remove: true,
                    schemata: Some(strs(&["L3:0=f"])),
                    enable_monitoring: Some(true),
                    ..Default::default()
                })
            }),
            "/linux/intelRdt",
            json!({"schemata": ["L3:0=f"], "enableMonitoring": true}),
        ),
        (
            l(&|a| {
                a.rdt = Some(NriRdt {
                    clos_id: Some("new".into()),
                    ..Default::default()
                })
            }),
            "/linux/intelRdt",
            json!({"closID": "new"}),
        ),
        (
            l(&|a| {
                a.memory_policy = Some(NriMemoryPolicy {
                    mode: "MPOL_BIND".into(),
                    nodes: "0-1".into(),
                    flags: strs(&["MPOL_F_STATIC_NODES"]),
                })
            }),
            "/linux/memoryPolicy",
            json!({"mode": "MPOL_BIND", "nodes": "0-1", "flags": ["MPOL_F_STATIC_NODES"]}),
        ),
        (
            l(&|a| {
                a.rlimits = vec![
                    rlimit("RLIMIT_NOFILE", 100, 50),
                    rlimit("RLIMIT_NPROC", 10, 10),
                    rlimit("RLIMIT_NOFILE", 200, 200),
                ]
            }),
            "/process/rlimits",
            json!([
                {"type": "RLIMIT_NOFILE", "hard": 200, "soft": 200},
                {"type": "RLIMIT_NPROC", "hard": 10, "soft": 10},
            ]),
        ),
        // the cgroups path it already has
        (
            l(&|a| a.cgroups_path = "/kubepods/pod1/c1".into()),
            "/linux/cgroupsPath",
            json!("/kubepods/pod1/c1"),
        ),
    ];
    for (adj, pointer, want) in cases {
        let s = ok(&adj);
        assert_eq!(
            s.pointer(pointer).cloned().unwrap_or(Value::Null),
            want,
            "{adj:?}"
        );
    }
    let bad: Vec<(NriAdjustment, &str)> = vec![
        (l(&|a| a.oom_score_adj = Some(1001)), "linux.oom_score_adj"),
        (
            l(&|a| {
                a.io_priority = Some(NriIoPriority {
                    class: "IOPRIO_CLASS_BE".into(),
                    priority: 8,
                })
            }),
            "linux.io_priority",
        ),
        (
            l(&|a| a.namespaces = kv(&[("bogus", "")])),
            "linux.namespaces",
        ),
        (
            l(&|a| a.namespaces = kv(&[("net", "rel")])),
            "linux.namespaces",
        ),
        (l(&|a| a.sysctl = kv(&[("", "1")])), "linux.sysctl"),
        (
            l(&|a| a.net_devices = kv(&[("a/b", "")])),
            "linux.net_devices",
        ),
        // the oci-spec crate spells this flag its own way: not representable
        (
            l(&|a| {
                a.scheduler = Some(NriScheduler {
                    policy: "SCHED_OTHER".into(),
                    flags: strs(&["SCHED_FLAG_RESET_ON_FORK"]),
                    ..Default::default()
                })
            }),
            "linux.scheduler",
        ),
        (
            l(&|a| {
                a.memory_policy = Some(NriMemoryPolicy {
                    mode: "MPOL_WHATEVER".into(),
                    ..Default::default()
                })
            }),
            "linux.memory_policy",
        ),
        (
            l(&|a| a.rlimits = vec![rlimit("RLIMIT_BOGUS", 1, 1)]),
            "rlimits",
        ),
        (
            l(&|a| a.rlimits = vec![rlimit("RLIMIT_NOFILE", 1, 2)]),
            "rlimits",
        ),
        // crius owns the cgroups path
        (
            l(&|a| a.cgroups_path = "/elsewhere".into()),
            "linux.cgroups_path",
        ),
        (
            l(&|a| a.cdi_devices = strs(&["not-qualified"])),
            "CDI_devices",
        ),
    ];
    for (adj, field) in bad {
        assert_eq!(refused(&adj), field, "{adj:?}");
    }
}

#[test]
fn seccomp_policy() {
    let policy = NriSeccomp {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno: Some(1),
        architectures: strs(&["SCMP_ARCH_X86_64"]),
        flags: strs(&["SECCOMP_FILTER_FLAG_LOG"]),
        syscalls: vec![NriSyscall {
            names: strs(&["read", "write"]),
            action: "SCMP_ACT_ALLOW".into(),
            errno_ret: None,
            args: vec![NriSeccompArg {
                index: 0,
                value: 1,
                value_two: 0,
                op: "SCMP_CMP_EQ".into(),
            }],
        }],
        ..Default::default()
    };
    let adj = NriAdjustment {
        seccomp_policy: Some(policy.clone()),
        ..Default::default()
    };
    assert_eq!(
        ok(&adj)["linux"]["seccomp"],
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{
                "names": ["read", "write"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 1, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]
            }]
        })
    );
    for bad in [
        NriSeccomp {
            default_action: "SCMP_ACT_NOPE".into(),
            ..policy.clone()
        },
        NriSeccomp {
            architectures: strs(&["SCMP_ARCH_Z80"]),
            ..policy.clone()
        },
        NriSeccomp {
            syscalls: vec![NriSyscall::default()],
            ..policy.clone()
        },
    ] {
        let adj = NriAdjustment {
            seccomp_policy: Some(bad),
            ..Default::default()
        };
        assert_eq!(refused(&adj), "linux.seccomp_policy");
    }
}

#[test]
fn sizes_are_bounded() {
    let adj = NriAdjustment {
        env: (0..=MAX_ENTRIES)
            .map(|i| (format!("V{i}"), String::new()))
            .collect(),
        ..Default::default()
    };
    assert_eq!(refused(&adj), "env");
    let adj = NriAdjustment {
        cdi_devices: vec!["a.com/b=c".into(); MAX_ENTRIES + 1],
        ..Default::default()
    };
    assert_eq!(refused(&adj), "CDI_devices");
    let rule = |n: usize| NriSyscall {
        names: (0..n).map(|i| format!("s{i}")).collect(),
        action: "SCMP_ACT_ALLOW".into(),
        ..Default::default()
    };
    let policy = |n: usize| NriAdjustment {
        seccomp_policy: Some(NriSeccomp {
            default_action: "SCMP_ACT_ERRNO".into(),
            syscalls: vec![rule(n)],
            ..Default::default()
        }),
        ..Default::default()
    };
    // one rule with 2000 names: within the bound
    assert!(apply(&policy(2000)).is_ok());
    assert_eq!(
        refused(&policy(MAX_SECCOMP_ENTRIES)),
        "linux.seccomp_policy.syscalls"
    );
}

/// Two plugins adjusting, in order: the field the second conflicts on
/// (None: both apply).
#[test]
fn conflicts_between_plugins() {
    let env = |pairs: &[(&str, &str)]| NriAdjustment {
        env: kv(pairs),
        ..Default::default()
    };
    let res = |f: &dyn Fn(&mut NriResources)| {
        let mut r = NriResources::default();
        f(&mut r);
        NriAdjustment {
            resources: r,
            ..Default::default()
        }
    };
    let with = |f: &dyn Fn(&mut NriAdjustment)| {
        let mut a = NriAdjustment::default();
        f(&mut a);
        a
    };
    let cases: Vec<(NriAdjustment, NriAdjustment, Option<&str>)> = vec![
        (env(&[("X", "1")]), env(&[("X", "2")]), Some("env \"X\"")),
        (env(&[("X", "1")]), env(&[("Y", "2")]), None),
        // removing another's variable is allowed
        (env(&[("X", "1")]), env(&[("-X", "")]), None),
        // removing the container's own and then setting it is not a conflict
        (env(&[("-OLD", "")]), env(&[("OLD", "2")]), None),
        (
            with(&|a| a.annotations = kv(&[("k", "1")])),
            with(&|a| a.annotations = kv(&[("k", "2")])),
            Some("annotation \"k\""),
        ),
        (
            with(&|a| a.mounts = vec![m("/m", "tmpfs", "t", &[])]),
            with(&|a| a.mounts = vec![m("/m", "tmpfs", "u", &[])]),
            Some("mount \"/m\""),
        ),
        (
            with(&|a| a.devices = vec![dev("/dev/x", "c", 1, 1)]),
            with(&|a| a.devices = vec![dev("/dev/x", "c", 1, 2)]),
            Some("device \"/dev/x\""),
        ),
        (
            with(&|a| a.rlimits = vec![rlimit("RLIMIT_NOFILE", 1, 1)]),
            with(&|a| a.rlimits = vec![rlimit("RLIMIT_NOFILE", 2, 2)]),
            Some("rlimit \"RLIMIT_NOFILE\""),
        ),
        (
            with(&|a| a.rlimits = vec![rlimit("RLIMIT_NOFILE", 1, 1)]),
            with(&|a| a.rlimits = vec![rlimit("RLIMIT_NPROC", 2, 2)]),
            None,
        ),
        (
            with(&|a| a.args = strs(&["/a"])),
            with(&|a| a.args = strs(&["/b"])),
            Some("args"),
        ),
        // args with an empty first element override
        (
            with(&|a| a.args = strs(&["/a"])),
            with(&|a| a.args = strs(&["", "/b"])),
            None,
        ),
        (
            with(&|a| a.oom_score_adj = Some(1)),
            with(&|a| a.oom_score_adj = Some(2)),
            Some("linux.oom_score_adj"),
        ),
        (
            res(&|r| r.cpu.shares = Some(2)),
            res(&|r| r.cpu.shares = Some(3)),
            Some("linux.resources.cpu.shares"),
        ),
        (
            res(&|r| r.cpu.shares = Some(2)),
            res(&|r| r.cpu.quota = Some(3)),
            None,
        ),
        (
            res(&|r| r.memory.limit = Some(2)),
            res(&|r| r.memory.limit = Some(3)),
            Some("linux.resources.memory.limit"),
        ),
        // the swap limit that follows a memory limit is nobody's
        (
            res(&|r| r.memory.limit = Some(2)),
            res(&|r| r.memory.swap = Some(3)),
            None,
        ),
        (
            res(&|r| r.hugepage_limits = vec![("2MB".into(), 1)]),
            res(&|r| r.hugepage_limits = vec![("2MB".into(), 2)]),
            Some("hugepage limit \"2MB\""),
        ),
        (
            res(&|r| r.unified = kv(&[("a.b", "1")])),
            res(&|r| r.unified = kv(&[("a.b", "2")])),
            Some("unified \"a.b\""),
        ),
        (
            res(&|r| r.pids = Some(1)),
            res(&|r| r.pids = Some(2)),
            Some("linux.resources.pids.limit"),
        ),
        (
            with(&|a| a.sysctl = kv(&[("k.x", "1")])),
            with(&|a| a.sysctl = kv(&[("k.x", "2")])),
            Some("sysctl \"k.x\""),
        ),
        (
            with(&|a| a.namespaces = kv(&[("ipc", "")])),
            with(&|a| a.namespaces = kv(&[("-ipc", "")])),
            Some("namespace \"ipc\""),
        ),
        (
            with(&|a| a.cdi_devices = strs(&["v.com/c=d"])),
            with(&|a| a.cdi_devices = strs(&["v.com/c=d"])),
            Some("CDI device \"v.com/c=d\""),
        ),
        // hooks add up
        (
            with(&|a| a.hooks.prestart = vec![hook("/a", None)]),
            with(&|a| a.hooks.prestart = vec![hook("/b", None)]),
            None,
        ),
    ];
    for (first, second, want) in cases {
        let mut owners = Owners::default();
        let s = apply_adjustment(&spec(), "10-first", &first, &mut owners).unwrap();
        let got = apply_adjustment(&s, "20-second", &second, &mut owners);
        match want {
            None => assert!(got.is_ok(), "{first:?} {second:?}: {got:?}"),
            Some(field) => {
                let e = got.unwrap_err();
                assert_eq!(
                    e,
                    AdjustError::Conflict {
                        field: field.into(),
                        plugin: "20-second".into(),
                        other: "10-first".into()
                    }
                );
                let msg = e.to_string();
                assert!(
                    msg.contains("10-first") && msg.contains("20-second") && msg.contains(field),
                    "{msg}"
                );
            }
        }
    }
}

#[test]
fn a_plugin_may_set_what_it_removed() {
    let mut owners = Owners::default();
    let set = |v: &str| NriAdjustment {
        env: kv(&[("X", v)]),
        ..Default::default()
    };
    let unset = NriAdjustment {
        env: kv(&[("-X", "")]),
        ..Default::default()
    };
    let s = apply_adjustment(&spec(), "a", &set("1"), &mut owners).unwrap();
    let s = apply_adjustment(&s, "b", &unset, &mut owners).unwrap();
    let s = apply_adjustment(&s, "b", &set("2"), &mut owners).unwrap();
    assert!(s
        .process()
        .as_ref()
        .unwrap()
        .env()
        .as_ref()
        .unwrap()
        .contains(&"X=2".to_string()));
    // but a third may not
    assert!(matches!(
        apply_adjustment(&s, "c", &set("3"), &mut owners),
        Err(AdjustError::Conflict { other, .. }) if other == "b"
    ));
}
