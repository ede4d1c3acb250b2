//! NRI against the real daemon: a plugin speaking the real protocol over
//! criusd's NRI socket registers, is synchronized with the pods that exist,
//! and adjusts a container as it is created (env, annotation, mount; a
//! device, a CDI device, an rlimit, the OOM score, CPU shares and the memory
//! limit); two plugins setting the same variable fail the creation; a
//! plugin that never answers delays CreateContainer by at most the request
//! timeout and is dropped; a plugin sees a pod's and a container's
//! lifecycle events in order, changes an update and lowers a running
//! container's CPU shares by itself (UpdateContainers); a plugin's error
//! on RunPodSandbox fails and removes the pod; a plugin criusd starts
//! from its plugin directory gets its configuration, adjusts containers,
//! and is stopped with the daemon; CreateContainer's answer updates and
//! evicts other containers; a validating plugin sees the merged
//! adjustment, its owners and the plugins, and its rejection fails the
//! creation.

mod common;

use common::nri::{assert_no_process_of, install_test_plugin, processes_of, Behaviour, TestPlugin};
use common::pod::*;
use crius_nri::api;
use crius_nri::stub::{cpu_shares_update, Script};
use k8s_cri::v1::{LinuxContainerResources, UpdateContainerResourcesRequest};
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: the `Leftovers` guard of one
/// kills what is in the shared test cgroup, the other's containers too.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `nri` entry of a verbose Status (what `crictl info` shows).
async fn nri_info(rt: &mut Rt) -> serde_json::Value {
    verbose_info(rt).await.remove("nri").expect("an nri entry")
}

fn spec_of(env: &Env, id: &str) -> serde_json::Value {
    let path = env
        .dir
        .join("state/containers")
        .join(id)
        .join("bundle/config.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_adjusts_the_containers_it_sees_created() {
    let Some(case) = Case::start(&SERIAL, "nri-adjust", "nri-adjust").await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid, pod_id) = case.split_running().await;

    // NRI is on by default; the socket is private to root.
    {
        use std::os::unix::fs::PermissionsExt;
        let socket = env.daemon.nri_socket();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(socket.parent().unwrap()), 0o700);
    }

    // Before any plugin: created as asked, no NRI trace.
    let plain = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("plain", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    assert!(spec_of(&env, &plain)["annotations"]["nri.test/plugin"].is_null());

    let before = nri_info(&mut rt).await;
    assert_eq!(before["enable"], true);
    assert_eq!(before["listening"], true);
    assert_eq!(
        before["socketPath"],
        env.daemon.nri_socket().display().to_string()
    );
    assert_eq!(before["plugins"], serde_json::json!([]));

    let plugin = TestPlugin::connect(&env.daemon, "adjuster", "10", Behaviour::Adjust).await;
    // crictl info lists the plugin.
    assert_eq!(
        nri_info(&mut rt).await["plugins"],
        serde_json::json!(["10-adjuster"])
    );
    {
        let seen = plugin.plugin.seen();
        let conf = seen.configured.as_ref().unwrap();
        assert_eq!(conf.runtime_name, "crius");
        assert_eq!(conf.request_timeout, 2000);
        assert_eq!(conf.registration_timeout, 5000);
        let sync = &seen.syncs[0];
        let pods: Vec<&str> = sync.pods.iter().map(|p| p.id.as_str()).collect();
        let containers: Vec<&str> = sync.containers.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(pods, [pod_id.as_str()]);
        assert_eq!(containers, [plain.as_str()]);
    }

    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("adjusted", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    assert_eq!(plugin.plugin.seen().trail(), ["CreateContainer adjusted"]);
    assert_eq!(plugin.plugin.seen().events[0].pod.name, "nri-adjust");
    // In the spec ...
    let spec = spec_of(&env, &id);
    assert_eq!(spec["annotations"]["nri.test/plugin"], "adjuster");
    assert!(
        spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "NRI_TEST_ENV=nri-adjust"),
        "{}",
        spec["process"]["env"]
    );
    // ... and inside the container.
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &["/bin/busybox", "sh", "-c", "echo $NRI_TEST_ENV"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "nri-adjust"), "{err}");
    let (code, out, err) = exec(&mut rt, &id, &["/bin/busybox", "cat", "/proc/self/mounts"]).await;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/nri-test"))
        .unwrap_or_else(|| panic!("no /nri-test mount:\n{out}"));
    assert!(line.starts_with("tmpfs /nri-test tmpfs "), "{line}");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");

    plugin.close().await;
    teardown(&env, &mut rt, &pod_id, &uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_plugin_delays_creation_by_at_most_the_request_timeout() {
    let Some(case) = Case::start(&SERIAL, "nri-silent", "nri-silent").await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid, pod_id) = case.split_running().await;
    let plugin = TestPlugin::connect(&env.daemon, "silent", "05", Behaviour::Hang).await;

    let t = Instant::now();
    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("waited", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(plugin.plugin.seen().events.len(), 1);
    // Waited for the plugin (2 s, the default) and no longer.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(3),
        "{took:?}"
    );
    assert!(spec_of(&env, &id)["annotations"]["nri.test/plugin"].is_null());
    assert!(
        env.daemon
            .log_text()
            .lines()
            .any(|l| l.contains("NRI plugin dropped") && l.contains("05-silent")),
        "{}",
        env.daemon.log_text()
    );
    // Dropped: not asked about the next container.
    run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("unwaited", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    assert_eq!(plugin.plugin.seen().events.len(), 1);

    teardown(&env, &mut rt, &pod_id, &uid).await;
}

/// The CPU shares of container `id` of pod `uid`, from its cgroup (v1).
fn cpu_shares(uid: &str, id: &str) -> String {
    let path = std::path::Path::new("/sys/fs/cgroup/cpu")
        .join(common::pod::cg_root())
        .join(format!("pod{uid}"))
        .join(id)
        .join("cpu.shares");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

async fn status_shares(rt: &mut Rt, id: &str) -> i64 {
    status_of(rt, id)
        .await
        .resources
        .and_then(|r| r.linux)
        .map(|l| l.cpu_shares)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_sees_the_lifecycle_in_order_and_updates_cpu_shares() {
    let metrics_addr = common::free_metrics_addr();
    let metrics = format!("[metrics]\naddress = \"{metrics_addr}\"\n");
    let Some(case) = Case::start_with(&SERIAL, "nri-events", "nri-events", &metrics).await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid) = case.split();
    let uid = uid.as_str();
    // Subscribed to every event.
    let plugin = TestPlugin::scripted(&env.daemon, "recorder", "20", Script::default()).await;
    let pod_id = run_pod(&env, &mut rt, &pod).await;
    let mut c = container("app", &image, &["/bin/busybox", "sleep", "3600"]);
    c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        cpu_shares: 1024,
        ..Default::default()
    });
    let id = run(&env, &mut rt, &pod_id, &pod, c).await;
    assert_eq!(cpu_shares(uid, &id), "1024");
    {
        let seen = plugin.plugin.seen();
        let run = &seen.of("RunPodSandbox")[0].pod;
        assert_eq!((run.id.as_str(), run.uid.as_str()), (pod_id.as_str(), uid));
        assert!(
            run.linux
                .namespaces
                .iter()
                .any(|n| n.type_ == "network" && !n.path.is_empty()),
            "{run:?}"
        );
        assert!(run.linux.cgroups_path.contains(&pod_id), "{run:?}");
        let started = seen.of("PostStartContainer")[0].container.clone().unwrap();
        assert_eq!(started.id, id);
        assert_eq!(
            started.state.enum_value_or_default(),
            crius_nri::api::ContainerState::CONTAINER_RUNNING
        );
        assert!(started.pid > 0);
        assert!(started.linux.cgroups_path.ends_with(&id), "{started:?}");
        assert_eq!(started.linux.resources.cpu.shares.value, 1024);
        assert_eq!(started.args, ["/bin/busybox", "sleep", "3600"]);
    }

    // UpdateContainerResources asks for 512; the plugin, asked, first sets
    // 200 itself (UpdateContainers, back into criusd while criusd waits for
    // its answer: no deadlock, no timeout), then answers 300, which wins.
    {
        let mut script = plugin.plugin.script();
        script.call_back_on_update = vec![cpu_shares_update(&id, 200)];
        script.updates = vec![cpu_shares_update(&id, 300)];
    }
    let t = Instant::now();
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e:?}\n{}", env.daemon.log_text()));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    {
        let seen = plugin.plugin.seen();
        assert_eq!(seen.call_backs, [Ok(vec![])]);
        let asked = seen.of("UpdateContainer")[0].resources.clone().unwrap();
        assert_eq!(asked.cpu.shares.value, 512);
    }
    assert_eq!(cpu_shares(uid, &id), "300");
    assert_eq!(status_shares(&mut rt, &id).await, 300);
    {
        let mut script = plugin.plugin.script();
        script.call_back_on_update.clear();
        script.updates.clear();
    }

    // Unsolicited: the plugin lowers the running container's shares.
    let resp = plugin
        .stub
        .runtime
        .update_containers(
            ttrpc::context::with_timeout(10_000_000_000),
            &crius_nri::api::UpdateContainersRequest {
                update: vec![cpu_shares_update(&id, 128), cpu_shares_update("nosuch", 2)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let failed: Vec<&str> = resp
        .failed
        .iter()
        .map(|u| u.container_id.as_str())
        .collect();
    assert_eq!(failed, ["nosuch"]);
    assert_eq!(cpu_shares(uid, &id), "128");
    assert_eq!(status_shares(&mut rt, &id).await, 128);

    // An eviction stops the container.
    let victim = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("victim", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    let resp = plugin
        .stub
        .runtime
        .update_containers(
            ttrpc::context::with_timeout(10_000_000_000),
            &crius_nri::api::UpdateContainersRequest {
                evict: vec![crius_nri::api::ContainerEviction {
                    container_id: victim.clone(),
                    reason: "test".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(resp.failed.is_empty());
    assert_eq!(
        status_of(&mut rt, &victim).await.state,
        k8s_cri::v1::ContainerState::ContainerExited as i32
    );

    rt.stop_container(k8s_cri::v1::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(k8s_cri::v1::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    teardown(&env, &mut rt, &pod_id, uid).await;
    let (victim_trail, trail): (Vec<String>, Vec<String>) = plugin
        .plugin
        .seen()
        .trail()
        .into_iter()
        .partition(|e| e.ends_with(" victim"));
    // The evicted container: told stopped once (by its exit), then removed
    // with its pod.
    assert_eq!(
        victim_trail,
        [
            "CreateContainer victim",
            "PostCreateContainer victim",
            "StartContainer victim",
            "PostStartContainer victim",
            "StopContainer victim",
            "RemoveContainer victim",
        ]
    );
    assert_eq!(
        trail,
        [
            "RunPodSandbox nri-events",
            "CreateContainer app",
            "PostCreateContainer app",
            "StartContainer app",
            "PostStartContainer app",
            "UpdateContainer app",
            "PostUpdateContainer app",
            "StopContainer app",
            "RemoveContainer app",
            "StopPodSandbox nri-events",
            "RemovePodSandbox nri-events",
        ]
    );
    // Every call is in the metrics, by plugin and event.
    let metrics = common::scrape_metrics(&metrics_addr, Duration::from_secs(5)).unwrap();
    for event in ["RunPodSandbox", "UpdateContainer", "RemovePodSandbox"] {
        let want = format!(
            "crius_nri_requests_total{{event=\"{event}\",plugin=\"20-recorder\",result=\"ok\"}} 1"
        );
        assert!(metrics.contains(&want), "{want} not in\n{metrics}");
    }

    // A plugin's error on RunPodSandbox fails the pod, which is removed.
    plugin.plugin.script().fail = vec!["RunPodSandbox"];
    let refused_uid = "nri-refused-uid";
    let err = rt
        .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest {
            config: Some(common::pod::pod("nri-refused", refused_uid)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("20-recorder"), "{err:?}");
    let pods = rt
        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert!(cgroup_dirs(refused_uid).is_empty());
    remove_cgroup_parents(refused_uid);
    plugin.close().await;
}

/// CreateContainer's answer may update and evict other containers: once
/// the new container is created, the update goes through
/// UpdateContainerResources' path (cgroup and ContainerStatus) and the
/// evicted container is stopped; the new one is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_answer_updates_and_evicts_other_containers() {
    let Some(case) = Case::start(&SERIAL, "nri-create-upd", "nri-create-upd").await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid, pod_id) = case.split_running().await;
    let sleeper = |name: &str| {
        let mut c = container(name, &image, &["/bin/busybox", "sleep", "3600"]);
        c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
            cpu_shares: 1024,
            ..Default::default()
        });
        c
    };
    let app = run(&env, &mut rt, &pod_id, &pod, sleeper("app")).await;
    let victim = run(&env, &mut rt, &pod_id, &pod, sleeper("victim")).await;
    assert_eq!(cpu_shares(&uid, &app), "1024");

    let plugin = TestPlugin::scripted(
        &env.daemon,
        "placer",
        "30",
        Script {
            events: crius_nri::runtime::event_bit(api::Event::CREATE_CONTAINER),
            create_updates: vec![cpu_shares_update(&app, 256)],
            create_evictions: vec![api::ContainerEviction {
                container_id: victim.clone(),
                reason: "room for the newcomer".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let newcomer = run(&env, &mut rt, &pod_id, &pod, sleeper("newcomer")).await;
    assert_eq!(plugin.plugin.seen().of("CreateContainer").len(), 1);
    assert_eq!(cpu_shares(&uid, &app), "256");
    assert_eq!(status_shares(&mut rt, &app).await, 256);
    let state = |s: k8s_cri::v1::ContainerState| s as i32;
    assert_eq!(
        status_of(&mut rt, &victim).await.state,
        state(k8s_cri::v1::ContainerState::ContainerExited)
    );
    assert_eq!(
        status_of(&mut rt, &app).await.state,
        state(k8s_cri::v1::ContainerState::ContainerRunning)
    );
    assert_eq!(
        status_of(&mut rt, &newcomer).await.state,
        state(k8s_cri::v1::ContainerState::ContainerRunning)
    );
    assert_eq!(cpu_shares(&uid, &newcomer), "1024");

    plugin.close().await;
    teardown(&env, &mut rt, &pod_id, &uid).await;
}

/// A validating plugin (subscribed to ValidateContainerAdjustment) is
/// told, after every CreateContainer answer, the merged adjustment, who
/// set what (NRI's owners) and the plugins asked; its rejection fails
/// CreateContainer (FailedPrecondition naming it) and leaves nothing
/// behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_sees_the_adjustment_and_its_owners_and_may_refuse_it() {
    let Some(case) = Case::start(&SERIAL, "nri-validate", "nri-validate").await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid, pod_id) = case.split_running().await;
    let adjuster = TestPlugin::connect(&env.daemon, "adjuster", "10", Behaviour::Adjust).await;
    let validator = TestPlugin::scripted(
        &env.daemon,
        "validator",
        "90",
        Script {
            events: crius_nri::runtime::event_bit(api::Event::VALIDATE_CONTAINER_ADJUSTMENT),
            ..Default::default()
        },
    )
    .await;

    let cfg = container("checked", &image, &["/bin/busybox", "sleep", "3600"]);
    let id = run(&env, &mut rt, &pod_id, &pod, cfg.clone()).await;
    {
        let seen = validator.plugin.seen();
        assert!(seen.events.is_empty(), "{:?}", seen.trail());
        assert_eq!(seen.validations.len(), 1);
        let v = &seen.validations[0];
        assert_eq!(v.pod.id, pod_id);
        assert_eq!(v.container.name, "checked");
        // The container as it was before the adjustments.
        assert!(!v
            .container
            .env
            .iter()
            .any(|e| e.starts_with("NRI_TEST_ENV=")));
        assert_eq!(v.adjust.env[0].key, "NRI_TEST_ENV");
        assert_eq!(v.adjust.mounts[0].destination, "/nri-test");
        let owners = &v.owners.owners[&v.container.id];
        let owner =
            |field: api::Field, key: &str| owners.compound[&(field as i32)].owners[key].clone();
        assert_eq!(owner(api::Field::Env, "NRI_TEST_ENV"), "10-adjuster");
        assert_eq!(
            owner(api::Field::Annotations, "nri.test/plugin"),
            "10-adjuster"
        );
        assert_eq!(owner(api::Field::Mounts, "/nri-test"), "10-adjuster");
        let plugins: Vec<(&str, &str)> = v
            .plugins
            .iter()
            .map(|p| (p.index.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(plugins, [("10", "adjuster"), ("90", "validator")]);
    }
    let (code, out, _) = exec(
        &mut rt,
        &id,
        &["/bin/busybox", "sh", "-c", "echo $NRI_TEST_ENV"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "nri-validate"));

    // Rejected: the creation fails, naming the validator and its reason.
    validator.plugin.script().reject = Some("no tmpfs here".into());
    let mut cfg = cfg;
    cfg.metadata.as_mut().unwrap().name = "refused".into();
    let err = create(&mut rt, &pod_id, &pod, cfg)
        .await
        .expect_err("a rejected adjustment must fail the creation");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("90-validator") && err.message().contains("no tmpfs here"),
        "{err:?}"
    );
    let names: Vec<String> = rt
        .list_containers(k8s_cri::v1::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.metadata.unwrap().name)
        .collect();
    assert_eq!(names, ["checked"]);
    assert_eq!(adjuster.plugin.seen().of("CreateContainer").len(), 2);

    validator.close().await;
    adjuster.close().await;
    teardown(&env, &mut rt, &pod_id, &uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_started_plugin_is_configured_adjusts_containers_and_stops_with_criusd() {
    let Some(case) = Case::start(&SERIAL, "nri-prestart", "nri-prestart").await else {
        return;
    };
    let (_guards, mut env, image, _, pod, uid) = case.split();
    let uid = uid.as_str();

    // The plugin, its configuration (by name; the indexed file of another
    // index is not its), and what is not a plugin or not startable.
    let plugin = install_test_plugin(
        &env.daemon,
        "10-prestarted",
        &[
            ("prestarted.conf", "NRI_PRESTART_ENV = from-config\n"),
            ("20-prestarted.conf", "NRI_PRESTART_ENV = wrong-file\n"),
        ],
    );
    let dir = env.daemon.nri_plugin_dir();
    std::fs::write(dir.join("README"), "not a plugin").unwrap();
    std::fs::copy(&plugin, dir.join("helper")).unwrap();
    std::fs::copy(&plugin, dir.join("30-oversized")).unwrap();
    std::fs::write(
        env.daemon.nri_config_dir().join("30-oversized.conf"),
        vec![b'x'; (1 << 20) + 1],
    )
    .unwrap();
    // Started at the next start-up, which waits for it to register.
    env.daemon.signal_and_wait(libc::SIGTERM);
    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    let info = nri_info(&mut rt).await;
    assert_eq!(
        info["plugins"],
        serde_json::json!(["10-prestarted"]),
        "{info}"
    );
    assert_eq!(info["listening"], true);
    assert_eq!(
        info["pluginPath"],
        env.daemon.nri_plugin_dir().display().to_string()
    );
    let pids = processes_of(&plugin);
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert!(processes_of(&dir.join("30-oversized")).is_empty());
    assert!(processes_of(&dir.join("helper")).is_empty());
    // Its environment is NRI's: name, index, descriptor; nothing else.
    let mut environ: Vec<String> = std::fs::read(format!("/proc/{}/environ", pids[0]))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    environ.sort();
    assert_eq!(
        environ,
        [
            "NRI_PLUGIN_IDX=10",
            "NRI_PLUGIN_NAME=prestarted",
            "NRI_PLUGIN_SOCKET=3"
        ]
    );
    let log = env.daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("configured by crius with 31 bytes of configuration")),
        "the plugin's output is logged; log:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("30-oversized") && l.contains("larger than")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("NRI plugin skipped") && l.contains("helper")),
        "{log}"
    );

    let pod_id = run_pod(&env, &mut rt, &pod).await;
    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("adjusted", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo $NRI_PRESTART_PLUGIN $NRI_PRESTART_ENV",
        ],
    )
    .await;
    assert_eq!(
        (code, out.trim()),
        (0, "10-prestarted from-config"),
        "{err}"
    );
    teardown(&env, &mut rt, &pod_id, uid).await;

    // A clean stop kills and reaps it ...
    env.daemon.signal_and_wait(libc::SIGTERM);
    assert!(
        processes_of(&plugin).is_empty(),
        "{:?}",
        processes_of(&plugin)
    );
    let log = env.daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("NRI plugin process stopped") && l.contains("10-prestarted")),
        "{log}"
    );
    // ... and when criusd dies, the plugin sees its connection close and
    // exits by itself.
    env.daemon.restart();
    assert_eq!(processes_of(&plugin).len(), 1);
    env.daemon.signal_and_wait(libc::SIGKILL);
    assert_no_process_of(&plugin, Duration::from_secs(10), "criusd was killed");
}

/// What the resource plugin of the next test asks for: a device node
/// (`/dev/nri-null`, the host's null device), RLIMIT_NOFILE 4141/4242
/// (replacing crius' own), the CDI device `nri.test/cdi=env0`, an
/// OOM score of 123, 512 CPU shares and a 64 MiB memory limit.
fn resource_adjustment() -> api::ContainerAdjustment {
    let mut linux = api::LinuxContainerAdjustment::new();
    linux.devices.push(api::LinuxDevice {
        path: "/dev/nri-null".into(),
        type_: "c".into(),
        major: 1,
        minor: 3,
        file_mode: Some(api::OptionalFileMode {
            value: 0o666,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    });
    linux.oom_score_adj = Some(api::OptionalInt {
        value: 123,
        ..Default::default()
    })
    .into();
    let mut resources = api::LinuxResources::new();
    resources.cpu = Some(api::LinuxCPU {
        shares: Some(api::OptionalUInt64 {
            value: 512,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .into();
    resources.memory = Some(api::LinuxMemory {
        limit: Some(api::OptionalInt64 {
            value: 64 << 20,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .into();
    linux.resources = Some(resources).into();
    let mut adjust = api::ContainerAdjustment::new();
    adjust.linux = Some(linux).into();
    adjust.CDI_devices.push(api::CDIDevice {
        name: "nri.test/cdi=env0".into(),
        ..Default::default()
    });
    adjust.rlimits.push(api::POSIXRlimit {
        type_: "RLIMIT_NOFILE".into(),
        hard: 4242,
        soft: 4141,
        ..Default::default()
    });
    adjust
}

/// A plugin's device node, CDI device, rlimit, OOM score, CPU shares and
/// memory limit, seen from inside the container and in its cgroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_injects_a_device_an_rlimit_an_oom_score_and_resources() {
    // The CDI device the plugin asks for: `NRI_CDI=env0` in the container.
    let cdi = tempfile::Builder::new()
        .prefix("crius-nri-cdi")
        .tempdir_in("/tmp")
        .unwrap();
    let spec = serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": "nri.test/cdi",
        "devices": [{"name": "env0", "containerEdits": {"env": ["NRI_CDI=env0"]}}],
    });
    std::fs::write(cdi.path().join("nri.json"), spec.to_string()).unwrap();
    let cdi_dirs = format!("[cdi]\nspec_dirs = [\"{}\"]\n", cdi.path().display());
    let Some(case) = Case::start_with(&SERIAL, "nri-res", "nri-res", &cdi_dirs).await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid, pod_id) = case.split_running().await;
    let plugin = TestPlugin::connect(
        &env.daemon,
        "resources",
        "30",
        Behaviour::Answer(Box::new(resource_adjustment())),
    )
    .await;
    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("limited", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    assert_eq!(plugin.plugin.seen().events.len(), 1);

    // The device node, usable (allowed in the device cgroup).
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "ls -l /dev/nri-null && echo x > /dev/nri-null && echo written",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("crw-rw-rw-"), "{out}");
    assert!(out.contains("1,   3"), "{out}");
    assert!(out.contains("written"), "{out}");
    // The rlimit and the OOM score of the container's process (the pod's
    // processes may share a PID namespace: found by its command line; the
    // status says whether it was found, whatever the glob's last entry).
    let of_sleep = |file: &str| {
        format!(
            "found=1; for p in /proc/[0-9]*; do \
             if [ \"$(tr '\\0' ' ' < $p/cmdline)\" = '/bin/busybox sleep 3600 ' ]; \
             then cat $p/{file} && found=0; fi; done; exit $found"
        )
    };
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &["/bin/busybox", "sh", "-c", &of_sleep("limits")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let files: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        files[3..5],
        ["4141", "4242"],
        "{out}\n{}",
        spec_of(&env, &id)["process"]
    );
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &["/bin/busybox", "sh", "-c", &of_sleep("oom_score_adj")],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "123"), "{err}");
    // The CDI device, resolved after the plugins answered.
    let (code, out, err) = exec(&mut rt, &id, &["/bin/busybox", "sh", "-c", "echo $NRI_CDI"]).await;
    assert_eq!((code, out.trim()), (0, "env0"), "{err}");
    // The memory limit as the container sees it ...
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &[
            "/bin/busybox",
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "67108864"), "{err}");
    // ... and the cgroup on the host.
    let read = |controller: &str, file: &str| {
        let p = container_cgroup(controller, &uid, &id).join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    };
    assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(read("cpu", "cpu.shares"), "512");

    plugin.stub.close().await;
    teardown(&env, &mut rt, &pod_id, &uid).await;
}

/// Issue 20, test 4: two plugins setting the same environment variable
/// make CreateContainer fail, naming both plugins and the variable, and
/// leave nothing behind; without the conflict the name is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugins_setting_one_env_var_fail_the_creation() {
    let Some(case) = Case::start(&SERIAL, "nri-conflict", "nri-conflict").await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid, pod_id) = case.split_running().await;
    let setting = |value: &str| {
        let mut adjust = api::ContainerAdjustment::new();
        adjust.env.push(api::KeyValue {
            key: "NRI_CONFLICT".into(),
            value: value.into(),
            ..Default::default()
        });
        Behaviour::Answer(Box::new(adjust))
    };
    let first = TestPlugin::connect(&env.daemon, "first", "10", setting("one")).await;
    let second = TestPlugin::connect(&env.daemon, "second", "20", setting("two")).await;
    let containers_dir = env.dir.join("state/containers");
    let entries = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(entries(&containers_dir), Vec::<String>::new());
    // (the pod's own cgroups)
    let cgroups = cgroup_dirs(&uid);

    let cfg = container("clash", &image, &["/bin/busybox", "sleep", "3600"]);
    let err = create(&mut rt, &pod_id, &pod, cfg.clone())
        .await
        .expect_err("conflicting adjustments must fail the creation");
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    let msg = err.message();
    assert!(
        msg.contains("\"20-second\"")
            && msg.contains("\"10-first\"")
            && msg.contains("env \"NRI_CONFLICT\""),
        "{msg}"
    );
    assert_eq!(first.plugin.seen().events.len(), 1);
    assert_eq!(second.plugin.seen().events.len(), 1);
    // Nothing left: no record, no bundle or state, no cgroup.
    let list = rt
        .list_containers(k8s_cri::v1::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(list.containers.is_empty(), "{:?}", list.containers);
    assert_eq!(entries(&containers_dir), Vec::<String>::new());
    assert_eq!(cgroup_dirs(&uid), cgroups);

    // One plugin alone: the name was released and the creation works.
    second.stub.close().await;
    let id = run(&env, &mut rt, &pod_id, &pod, cfg).await;
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &["/bin/busybox", "sh", "-c", "echo $NRI_CONFLICT"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "one"), "{err}");

    first.stub.close().await;
    teardown(&env, &mut rt, &pod_id, &uid).await;
}
