//! Tests of the list-level CNI calls with fake plugins: shell scripts written
//! into a temporary bin dir that record their environment and stdin and
//! print canned results.

use super::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

struct Fixture {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    rec: PathBuf,
    cache: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let rec = dir.path().join("rec");
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&rec).unwrap();
        Fixture {
            _dir: dir,
            bin,
            rec,
            cache,
        }
    }

    /// A fake plugin: appends "<COMMAND> <type>" to the call log, saves its
    /// stdin and CNI environment, prints `add_result` on ADD, and fails
    /// with `fail` (a CNI error object) on the verb named by `fail_on`.
    fn plugin(&self, name: &str, add_result: &Value, fail_on: Option<(&str, &str)>) {
        let rec = self.rec.display();
        let fail = match fail_on {
            Some((verb, obj)) => format!(
                "if [ \"$CNI_COMMAND\" = {verb} ]; then echo '{obj}'; echo 'stderr noise' >&2; exit 1; fi\n"
            ),
            None => String::new(),
        };
        let body = format!(
            "#!/bin/sh\n\
             in=$(cat)\n\
             echo \"$CNI_COMMAND {name}\" >> {rec}/calls\n\
             printf '%s' \"$in\" > {rec}/{name}.$CNI_COMMAND.stdin\n\
             env | grep '^CNI_' | sort > {rec}/{name}.$CNI_COMMAND.env\n\
             {fail}\
             if [ \"$CNI_COMMAND\" = ADD ]; then echo '{result}'; fi\n\
             if [ \"$CNI_COMMAND\" = VERSION ]; then echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}'; fi\n\
             exit 0\n",
            result = add_result
        );
        let path = self.bin.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.rec.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The plugins of [`three_plugin_list`], all succeeding: first,
    /// second and third give 10.0.0.2, .3 and .4.
    fn three_plugins(&self) {
        for (name, ip) in [
            ("first", "10.0.0.2/24"),
            ("second", "10.0.0.3/24"),
            ("third", "10.0.0.4/24"),
        ] {
            self.plugin(name, &result_with(ip), None);
        }
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.rec.join("calls"));
    }

    fn stdin(&self, plugin: &str, verb: &str) -> Value {
        let text = std::fs::read_to_string(self.rec.join(format!("{plugin}.{verb}.stdin")))
            .unwrap_or_else(|e| panic!("{plugin} {verb} was not called: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn env(&self, plugin: &str, verb: &str) -> String {
        std::fs::read_to_string(self.rec.join(format!("{plugin}.{verb}.env"))).unwrap()
    }

    fn network(&self, list: Value) -> CniNetwork {
        let parsed =
            NetworkConfigList::parse(Path::new("10-test.conflist"), list.to_string().as_bytes())
                .unwrap();
        CniNetwork::new(parsed, std::slice::from_ref(&self.bin), &self.cache)
            .with_timeout(Duration::from_secs(30))
    }
}

fn result_with(ip: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/test"}],
        "ips": [{"address": ip, "interface": 0}]
    })
}

fn pod() -> PodNetwork {
    let mut p = PodNetwork::new(
        "sandbox1",
        Path::new("/run/netns/test"),
        "default",
        "web",
        "uid-1",
    );
    p.port_mappings = vec![PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }];
    p
}

fn three_plugin_list(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "testnet",
        "plugins": [
            {"type": "first", "capabilities": {"portMappings": true}, "cniVersion": "0.0.1"},
            {"type": "second", "capabilities": {"bandwidth": true, "portMappings": false}},
            {"type": "third", "name": "ignored", "prevResult": {"stale": true}}
        ]
    })
}

#[test]
fn add_chains_results_and_injects_config() {
    let fx = Fixture::new();
    fx.three_plugins();
    let net = fx.network(three_plugin_list("1.0.0"));

    let result = net.add(&pod()).unwrap();
    assert_eq!(fx.calls(), vec!["ADD first", "ADD second", "ADD third"]);
    assert_eq!(result.raw, result_with("10.0.0.4/24"));
    assert_eq!(
        result.pod_ips("eth0").unwrap().primary,
        "10.0.0.4".parse::<std::net::IpAddr>().unwrap()
    );

    let first = fx.stdin("first", "ADD");
    assert_eq!(first["name"], "testnet");
    assert_eq!(first["cniVersion"], "1.0.0");
    assert!(first.get("prevResult").is_none());
    assert_eq!(
        first["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    let second = fx.stdin("second", "ADD");
    assert_eq!(second["prevResult"], result_with("10.0.0.2/24"));
    assert!(
        second.get("runtimeConfig").is_none(),
        "bandwidth not offered, portMappings not supported: {second}"
    );
    let third = fx.stdin("third", "ADD");
    assert_eq!(third["name"], "testnet");
    assert_eq!(third["prevResult"], result_with("10.0.0.3/24"));
    assert!(third.get("runtimeConfig").is_none());

    let env = fx.env("first", "ADD");
    let want = format!(
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=uid-1\n\
         CNI_COMMAND=ADD\nCNI_CONTAINERID=sandbox1\nCNI_IFNAME=eth0\nCNI_NETNS=/run/netns/test\nCNI_PATH={}\n",
        fx.bin.display()
    );
    assert_eq!(env, want);

    // The final result is cached under the libcni-style name.
    let cached: Value = serde_json::from_slice(
        &std::fs::read(fx.cache.join("results/testnet-sandbox1-eth0")).unwrap(),
    )
    .unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["result"], result_with("10.0.0.4/24"));
    assert_eq!(net.cached_result(&pod()).unwrap().unwrap(), result);
}

#[test]
fn del_runs_in_reverse_with_the_cached_result_after_restart() {
    let fx = Fixture::new();
    fx.three_plugins();
    fx.network(three_plugin_list("1.0.0")).add(&pod()).unwrap();
    fx.clear_calls();

    // A new daemon: a fresh network object reading the same cache.
    let net = fx.network(three_plugin_list("1.0.0"));
    net.del(&pod()).unwrap();
    assert_eq!(fx.calls(), vec!["DEL third", "DEL second", "DEL first"]);
    for name in ["first", "second", "third"] {
        let stdin = fx.stdin(name, "DEL");
        assert_eq!(stdin["prevResult"], result_with("10.0.0.4/24"), "{name}");
        assert_eq!(stdin["name"], "testnet");
        // The namespace path is not a mounted netns: plugins get none.
        assert!(fx.env(name, "DEL").contains("CNI_NETNS=\n"), "{name}");
    }
    assert_eq!(
        fx.stdin("first", "DEL")["runtimeConfig"]["portMappings"][0]["hostPort"],
        8080
    );
    assert!(!fx.cache.join("results/testnet-sandbox1-eth0").exists());
    assert!(net.cached_result(&pod()).unwrap().is_none());

    // Again: still succeeds, now without prevResult.
    fx.clear_calls();
    net.del(&pod()).unwrap();
    assert_eq!(fx.calls(), vec!["DEL third", "DEL second", "DEL first"]);
    assert!(fx.stdin("third", "DEL").get("prevResult").is_none());
}

#[test]
fn del_before_040_has_no_prev_result_and_tolerates_a_corrupt_cache() {
    let fx = Fixture::new();
    fx.plugin("only", &json!({"cniVersion": "0.3.1", "ips": []}), None);
    let list = json!({"cniVersion": "0.3.1", "name": "old", "plugins": [{"type": "only"}]});
    let net = fx.network(list);
    net.add(&pod()).unwrap();
    std::fs::write(fx.cache.join("results/old-sandbox1-eth0"), "{corrupt").unwrap();
    net.del(&pod()).unwrap();
    assert!(fx.stdin("only", "DEL").get("prevResult").is_none());
    assert!(!fx.cache.join("results/old-sandbox1-eth0").exists());
}

#[test]
fn failed_add_is_rolled_back_and_names_the_plugin() {
    let fx = Fixture::new();
    fx.plugin("first", &result_with("10.0.0.2/24"), None);
    fx.plugin(
        "second",
        &result_with("10.0.0.3/24"),
        Some(("ADD", r#"{"cniVersion":"1.0.0","code":11,"msg":"no more addresses","details":"range 10.0.0.0/30 full"}"#)),
    );
    fx.plugin("third", &result_with("10.0.0.4/24"), None);
    let net = fx.network(three_plugin_list("1.0.0"));
    let err = net.add(&pod()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(
        msg,
        "network \"testnet\": CNI plugin second ADD failed (code 11): no more addresses; range 10.0.0.0/30 full; output: stderr noise"
    );
    assert_eq!(
        fx.calls(),
        vec!["ADD first", "ADD second", "DEL second", "DEL first"]
    );
    assert_eq!(
        fx.stdin("first", "DEL")["prevResult"],
        result_with("10.0.0.2/24")
    );
    assert!(!fx.cache.join("results/testnet-sandbox1-eth0").exists());
}

#[test]
fn unusable_result_fails_the_add() {
    let fx = Fixture::new();
    fx.plugin(
        "first",
        &json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}),
        None,
    );
    let net =
        fx.network(json!({"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "first"}]}));
    let err = net.add(&pod()).unwrap_err();
    assert!(
        matches!(err, CniError::Result { ref plugin, .. } if plugin == "first"),
        "{err}"
    );
    assert_eq!(fx.calls(), vec!["ADD first", "DEL first"]);
}

#[test]
fn del_failure_keeps_the_cache_for_a_retry() {
    let fx = Fixture::new();
    fx.plugin(
        "first",
        &result_with("10.0.0.2/24"),
        Some(("DEL", r#"{"code":999,"msg":"busy"}"#)),
    );
    let net =
        fx.network(json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "first"}]}));
    net.add(&pod()).unwrap();
    let err = net.del(&pod()).unwrap_err();
    assert!(
        err.to_string()
            .contains("first DEL failed (code 999): busy"),
        "{err}"
    );
    assert!(net.cached_result(&pod()).unwrap().is_some());
}

#[test]
fn check_uses_the_cached_result_in_order() {
    let fx = Fixture::new();
    fx.three_plugins();
    let net = fx.network(three_plugin_list("1.0.0"));
    let err = net.check(&pod()).unwrap_err();
    assert!(matches!(err, CniError::CheckUnavailable { .. }), "{err}");
    net.add(&pod()).unwrap();
    fx.clear_calls();
    net.check(&pod()).unwrap();
    assert_eq!(
        fx.calls(),
        vec!["CHECK first", "CHECK second", "CHECK third"]
    );
    assert_eq!(
        fx.stdin("first", "CHECK")["prevResult"],
        result_with("10.0.0.4/24")
    );

    let mut disabled = three_plugin_list("1.0.0");
    disabled["disableCheck"] = json!(true);
    assert!(matches!(
        fx.network(disabled).check(&pod()),
        Err(CniError::CheckUnavailable { .. })
    ));
    assert!(matches!(
        fx.network(three_plugin_list("0.3.1")).check(&pod()),
        Err(CniError::CheckUnavailable { .. })
    ));
}

#[test]
fn missing_plugin_and_versions() {
    let fx = Fixture::new();
    fx.plugin("first", &result_with("10.0.0.2/24"), None);
    let net = fx.network(json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "first"}, {"type": "absent"}]}));
    let err = net.add(&pod()).unwrap_err();
    assert!(
        matches!(err, CniError::PluginNotFound { ref plugin, .. } if plugin == "absent"),
        "{err}"
    );
    // The first plugin was undone.
    assert_eq!(fx.calls(), vec!["ADD first", "DEL first"]);
    assert_eq!(
        net.plugin_versions("first").unwrap(),
        vec!["0.4.0", "1.0.0"]
    );
}

#[test]
fn load_checks_plugins() {
    let fx = Fixture::new();
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("10-n.conflist"),
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "first"}]}).to_string(),
    )
    .unwrap();
    let bins = [fx.bin.clone()];
    assert!(matches!(
        CniNetwork::load(conf.path(), &bins, &fx.cache, false),
        Err(CniError::Config(ConfigError::MissingPlugins { .. }))
    ));
    fx.plugin("first", &result_with("10.0.0.2/24"), None);
    let net = CniNetwork::load(conf.path(), &bins, &fx.cache, false).unwrap();
    assert_eq!(net.name(), "n");
    assert_eq!(net.config().plugins.len(), 1);
}

#[test]
fn plugin_timeout_is_reported() {
    let fx = Fixture::new();
    let path = fx.bin.join("hang");
    std::fs::write(&path, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let net = fx
        .network(json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "hang"}]}))
        .with_timeout(Duration::from_millis(300));
    let err = net.del(&pod()).unwrap_err();
    assert!(
        matches!(&err, CniError::Exec { source, .. } if matches!(**source, ExecError::Timeout { .. })),
        "{err}"
    );
}

#[test]
fn runtime_config_follows_capabilities() {
    let list = NetworkConfigList::parse(
        Path::new("x.conflist"),
        br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"}]}"#,
    )
    .unwrap();
    let mut full = pod();
    full.bandwidth = Some(Bandwidth {
        ingress_rate: 1000,
        ingress_burst: 2000,
        egress_rate: 3000,
        egress_burst: 4000,
    });
    full.ip_ranges = vec![
        vec![IpRange {
            subnet: "10.1.0.0/16".into(),
            range_start: String::new(),
            range_end: String::new(),
            gateway: "10.1.0.1".into(),
        }],
        vec![IpRange {
            subnet: "fd00:10::/64".into(),
            range_start: String::new(),
            range_end: String::new(),
            gateway: String::new(),
        }],
    ];
    full.dns = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    full.port_mappings.push(PortMapping {
        host_port: 5353,
        container_port: 53,
        protocol: "udp".into(),
        host_ip: "127.0.0.1".into(),
    });
    let bare = PodNetwork::new("c", Path::new("/n"), "ns", "p", "u");

    let cases: Vec<(Value, &PodNetwork, Option<Value>)> = vec![
        (json!({"type": "a"}), &full, None),
        (json!({"type": "a", "capabilities": {}}), &full, None),
        (
            json!({"type": "a", "capabilities": {"portMappings": true}}),
            &full,
            Some(json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
            ]})),
        ),
        (
            json!({"type": "a", "capabilities": {"portMappings": true}}),
            &bare,
            Some(json!({"portMappings": []})),
        ),
        (
            json!({"type": "a", "capabilities": {"bandwidth": true, "dns": false, "mac": true}}),
            &full,
            Some(
                json!({"bandwidth": {"ingressRate": 1000, "ingressBurst": 2000, "egressRate": 3000, "egressBurst": 4000}}),
            ),
        ),
        (
            json!({"type": "a", "capabilities": {"bandwidth": true}}),
            &bare,
            None,
        ),
        (
            json!({"type": "a", "capabilities": {"ipRanges": true, "dns": true}}),
            &full,
            Some(json!({
                "ipRanges": [[{"subnet": "10.1.0.0/16", "gateway": "10.1.0.1"}], [{"subnet": "fd00:10::/64"}]],
                "dns": {"servers": ["10.96.0.10"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]}
            })),
        ),
        (
            json!({"type": "a", "capabilities": {"portMappings": "yes"}}),
            &full,
            None,
        ),
    ];
    for (raw, pod, want) in cases {
        let plugin = PluginConfig {
            plugin_type: "a".into(),
            raw: raw.clone(),
        };
        let got = plugin_config(&list, &plugin, None, &pod.capability_args());
        assert_eq!(got.get("runtimeConfig"), want.as_ref(), "{raw}");
        assert_eq!(got["name"], "n");
        assert_eq!(got["cniVersion"], "1.0.0");
        assert_eq!(
            got["capabilities"],
            raw.get("capabilities").cloned().unwrap_or(Value::Null)
        );
    }
}

#[test]
fn cni_args_and_validation_table() {
    let p = pod();
    assert_eq!(
        exec::cni_args_string(&p.cni_args()),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=uid-1"
    );
    type Tweak = fn(&mut PodNetwork);
    let cases: &[(&str, Tweak, bool)] = &[
        ("valid", |_| {}, true),
        ("empty id", |p| p.container_id.clear(), false),
        ("id with slash", |p| p.container_id = "../x".into(), false),
        (
            "id starting with dot",
            |p| p.container_id = ".x".into(),
            false,
        ),
        (
            "id with dash and dot",
            |p| p.container_id = "a-b.c_d".into(),
            true,
        ),
        (
            "long ifname",
            |p| p.ifname = "a234567890123456".into(),
            false,
        ),
        (
            "15 char ifname",
            |p| p.ifname = "a23456789012345".into(),
            true,
        ),
        ("ifname with space", |p| p.ifname = "eth 0".into(), false),
        ("ifname dot", |p| p.ifname = ".".into(), false),
        ("empty ifname", |p| p.ifname.clear(), false),
        ("semicolon in name", |p| p.name = "a;b".into(), false),
        ("relative netns", |p| p.netns_path = "netns".into(), false),
    ];
    for (name, tweak, ok) in cases {
        let mut p = pod();
        tweak(&mut p);
        assert_eq!(p.validate(true).is_ok(), *ok, "{name}");
    }
    // DEL accepts a missing namespace path.
    let mut p = pod();
    p.netns_path = PathBuf::new();
    assert!(p.validate(false).is_ok());
    assert!(matches!(
        CniNetwork::new(
            NetworkConfigList::parse(Path::new("x.conf"), br#"{"name":"n","type":"a"}"#).unwrap(),
            &[],
            Path::new("/nonexistent"),
        )
        .add(&{
            let mut p = pod();
            p.container_id = "a/b".into();
            p
        }),
        Err(CniError::InvalidArgument(_))
    ));
}

#[test]
fn version_comparison() {
    for (v, want) in [
        ("0.1.0", false),
        ("0.3.1", false),
        ("0.4.0", true),
        ("1.0.0", true),
        ("1.1.0", true),
        ("", false),
    ] {
        assert_eq!(at_least_040(v), want, "{v}");
    }
}

#[test]
fn which_networks_need_the_netns_for_del() {
    let table = [
        (
            json!([{"type": "bridge", "ipam": {"type": "host-local"}}, {"type": "loopback"}]),
            false,
        ),
        (
            json!([{"type": "bridge", "ipMasq": false, "ipam": {"type": "static"}}]),
            false,
        ),
        (
            json!([{"type": "bridge", "ipMasq": true, "ipam": {"type": "host-local"}}]),
            true,
        ),
        (json!([{"type": "bridge", "ipam": {"type": "dhcp"}}]), true),
        (json!([{"type": "bridge", "ipam": {}}]), false),
        (
            json!([{"type": "ptp", "ipMasq": true, "ipam": {"type": "host-local"}}]),
            true,
        ),
        (
            json!([{"type": "ptp", "ipam": {"type": "host-local"}}, {"type": "portmap"}, {"type": "bandwidth"}, {"type": "firewall"}]),
            false,
        ),
        (
            json!([{"type": "macvlan", "master": "eth0", "ipam": {"type": "host-local"}}]),
            false,
        ),
        (
            json!([{"type": "ipvlan", "ipam": {"type": "whereabouts"}}]),
            true,
        ),
        (json!([{"type": "bridge"}, {"type": "tuning"}]), true),
        (json!([{"type": "host-device", "device": "eth1"}]), true),
        (json!([{"type": "calico"}]), true),
        (
            json!([{"type": "bridge", "ipam": {"type": "host-local"}}, {"type": "cilium-cni"}]),
            true,
        ),
    ];
    for (plugins, needs) in table {
        let list = json!({"cniVersion": "1.0.0", "name": "n", "plugins": plugins});
        let parsed =
            NetworkConfigList::parse(Path::new("n.conflist"), list.to_string().as_bytes()).unwrap();
        assert_eq!(del_needs_netns(&parsed), needs, "{plugins}");
    }
}

#[test]
fn status_and_gc_need_spec_1_1() {
    let f = Fixture::new();
    f.plugin("a", &result_with("10.0.0.2/24"), None);
    f.plugin(
        "b",
        &result_with("10.0.0.2/24"),
        Some((
            "STATUS",
            r#"{"code":50,"msg":"plugin not ready","details":"no leases yet"}"#,
        )),
    );
    let list = |version: &str, plugins: Value| {
        f.network(json!({"cniVersion": version, "name": "gcnet", "plugins": plugins}))
    };
    let both = json!([{"type": "a"}, {"type": "b"}]);
    let valid = vec![
        ("sandbox1".to_string(), "eth0".to_string()),
        ("sandbox2".to_string(), "eth0".to_string()),
    ];

    // (spec version, plugins, STATUS outcome: None ready, Some(text in the error),
    //  whether the plugins are called at all)
    let cases = [
        ("1.0.0", both.clone(), None, false),
        ("0.4.0", both.clone(), None, false),
        ("1.1.0", json!([{"type": "a"}]), None, true),
        ("1.1.0", both.clone(), Some("plugin not ready"), true),
    ];
    for (version, plugins, want, called) in cases {
        f.clear_calls();
        let net = list(version, plugins);
        match (net.status(), want) {
            (Ok(()), None) => {}
            (Err(e), Some(text)) => {
                let e = e.to_string();
                assert!(e.contains(text) && e.contains("STATUS"), "{version}: {e}")
            }
            (got, want) => panic!("{version}: STATUS {got:?}, want {want:?}"),
        }
        net.gc(&valid).unwrap();
        assert_eq!(
            f.calls().iter().any(|c| c.starts_with("GC ")),
            called,
            "{version}: {:?}",
            f.calls()
        );
    }
    // GC tells every plugin, in order, which attachments to keep, with the
    // network's name and version; only CNI_COMMAND and CNI_PATH are set.
    let calls: Vec<String> = f
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("GC "))
        .collect();
    assert_eq!(calls, ["GC a", "GC b"]);
    let gc = f.stdin("b", "GC");
    assert_eq!(gc["name"], "gcnet");
    assert_eq!(gc["cniVersion"], "1.1.0");
    assert_eq!(
        gc[VALID_ATTACHMENTS],
        json!([{"containerID": "sandbox1", "ifname": "eth0"}, {"containerID": "sandbox2", "ifname": "eth0"}])
    );
    let env = f.env("a", "GC");
    assert_eq!(
        env,
        format!("CNI_COMMAND=GC\nCNI_PATH={}\n", f.bin.display())
    );
}
