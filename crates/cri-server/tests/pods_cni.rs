//! criusd and its CNI plugins. What a pod offers them: the node's pod CIDR
//! (pushed by kubelet with UpdateRuntimeConfig) as `ipRanges`, which the
//! real host-local IPAM then allocates from; the pod's DNS settings as
//! `dns`; its bandwidth annotations as `bandwidth`; a bandwidth annotation
//! that is not a quantity refused before anything is made. And CNI 1.1:
//! `STATUS` decides NetworkReady, `GC` at start-up gets the pods criusd
//! knows.

mod common;

use common::pod::*;
use common::registry::is_root;
use common::script;
use k8s_cri::v1::{NetworkConfig, RuntimeConfig, StatusRequest, UpdateRuntimeConfigRequest};
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread")]
async fn pod_cidr_dns_and_bandwidth_reach_the_plugins() {
    if !is_root() {
        eprintln!("pods_cni_capabilities: skipped (needs root)");
        return;
    }
    let env = Env::start("crius-cni-caps");
    let mut rt = env.daemon.runtime().await;

    // The test network's conflist, with a first plugin that records what
    // it is given, and the bridge's host-local IPAM taking ipRanges.
    let captured = env.dir.join("captured-add.json");
    script(
        &env.dir.join("cni-bin/capture"),
        &format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then cat > {}; echo '{{\"cniVersion\":\"1.0.0\"}}'; fi\n",
            captured.display()
        ),
    );
    let conflist_path = env.net.conf_dir.join("10-test.conflist");
    let mut conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist_path).unwrap()).unwrap();
    let plugins = conflist["plugins"].as_array_mut().unwrap();
    // host-local adds the offered ranges to its own: it gets none here.
    plugins[0]["capabilities"] = serde_json::json!({"ipRanges": true});
    plugins[0]["ipam"] = serde_json::json!({"type": "host-local"});
    plugins.insert(
        0,
        serde_json::json!({"type": "capture", "capabilities": {"dns": true, "bandwidth": true, "ipRanges": true}}),
    );
    std::fs::write(&conflist_path, conflist.to_string()).unwrap();

    // The upper half of the test network's /24 is the node's pod CIDR.
    let pod_cidr = format!("{}128/25", env.net.prefix);
    rt.update_runtime_config(UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: pod_cidr.clone(),
            }),
        }),
    })
    .await
    .unwrap();

    // A bandwidth annotation that is not a quantity: refused, naming it.
    let uid = "uid-cni-caps";
    let mut config = pod("caps", uid);
    let _logs = LogDir(PathBuf::from(&config.log_directory));
    config
        .annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "lots".into());
    let err = rt
        .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a bad bandwidth annotation");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("kubernetes.io/egress-bandwidth"),
        "{err:?}"
    );
    assert!(!captured.exists(), "no plugin ran for a refused pod");

    config
        .annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "10M".into());
    let pod_id = run_pod(&env, &mut rt, &config).await;

    // host-local allocated from the pod CIDR, not from its own range.
    let status = pod_status(&mut rt, &pod_id).await;
    let ip = status.network.unwrap().ip;
    let last: u32 = ip
        .strip_prefix(&env.net.prefix)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{ip} not in {}", env.net.subnet));
    assert!((129..255).contains(&last), "{ip} not in {pod_cidr}");

    let add: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&captured).unwrap()).unwrap();
    let rc = &add["runtimeConfig"];
    assert_eq!(rc["ipRanges"], serde_json::json!([[{"subnet": pod_cidr}]]));
    let dns = config.dns_config.as_ref().unwrap();
    assert_eq!(
        rc["dns"],
        serde_json::json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options})
    );
    assert_eq!(rc["bandwidth"]["egressRate"], 10_000_000);
    assert_eq!(rc["bandwidth"]["egressBurst"], u32::MAX);
    assert_eq!(rc["bandwidth"]["ingressRate"], 0);

    teardown(&env, &mut rt, &pod_id, uid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cni_1_1_status_and_gc() {
    if !is_root() {
        eprintln!("pods_cni: skipped (needs root)");
        return;
    }
    let mut env = Env::start("crius-cni-11");
    // A CNI 1.1 network of one fake plugin (Debian's reference plugins
    // predate 1.1): its STATUS fails while `down` exists, its GC records
    // its input.
    let down = env.dir.join("down");
    let gc = env.dir.join("gc.json");
    script(
        &env.dir.join("cni-bin/fake11"),
        &format!(
            r#"#!/bin/sh
in=$(cat)
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
ADD) echo '{{"cniVersion":"1.1.0","interfaces":[{{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}}],"ips":[{{"address":"10.99.0.5/24","interface":0}}]}}' ;;
STATUS) if [ -e {down} ]; then echo '{{"cniVersion":"1.1.0","code":50,"msg":"no leases available"}}'; exit 1; fi ;;
GC) printf '%s' "$in" > {gc} ;;
esac
exit 0
"#,
            down = down.display(),
            gc = gc.display()
        ),
    );
    std::fs::write(
        env.net.conf_dir.join("10-test.conflist"),
        r#"{"cniVersion":"1.1.0","name":"fake11net","plugins":[{"type":"fake11"}]}"#,
    )
    .unwrap();
    let mut rt = env.daemon.runtime().await;
    let network_ready = |s: &k8s_cri::v1::StatusResponse| {
        s.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.r#type == "NetworkReady"))
            .cloned()
            .unwrap()
    };
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(network_ready(&status).status, "{status:?}");
    std::fs::write(&down, "").unwrap();
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let cond = network_ready(&status);
    assert!(!cond.status, "{cond:?}");
    assert!(cond.message.contains("no leases available"), "{cond:?}");
    std::fs::remove_file(&down).unwrap();

    let uid = "uid-cni-11";
    let config = pod("cni11", uid);
    let _logs = LogDir(PathBuf::from(&config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &config).await;
    assert!(
        !gc.exists(),
        "{}",
        std::fs::read_to_string(&gc).unwrap_or_default()
    );

    // After a restart the plugin is told which attachments are valid.
    env.daemon.signal_and_wait(libc::SIGKILL);
    env.daemon.restart();
    wait_for("CNI GC at start-up", || gc.exists()).await;
    let input: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gc).unwrap()).unwrap();
    assert_eq!(input["name"], "fake11net");
    assert_eq!(
        input["cni.dev/valid-attachments"],
        serde_json::json!([{"containerID": pod_id, "ifname": "eth0"}])
    );

    let mut rt = env.daemon.runtime().await;
    teardown(&env, &mut rt, &pod_id, uid).await;
}
