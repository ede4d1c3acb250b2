//! The runtime side against plugins speaking the real protocol over a real
//! unix socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crius_nri::api;
use crius_nri::runtime::{event_bit, Nri, Options, StateSource, UpdateFuture};
use crius_nri::stub::{AdjustFn, Recorder, Script};

struct State;

impl StateSource for State {
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        let (pod, ctr) = pod_with_container("pod1", "web", "ctr1");
        (vec![pod], vec![ctr])
    }
}

/// A CreateContainer adjustment tagged `tag`: env `FROM_<tag>=<pod name>`,
/// annotation `nri.test/<tag>=yes`, a tmpfs at `/<tag>`.
fn tagged(tag: &'static str) -> AdjustFn {
    Box::new(move |req: &api::CreateContainerRequest| {
        let mut adjust = api::ContainerAdjustment::new();
        adjust.env.push(api::KeyValue {
            key: format!("FROM_{tag}"),
            value: req.pod.name.clone(),
            ..Default::default()
        });
        adjust
            .annotations
            .insert(format!("nri.test/{tag}"), "yes".into());
        adjust.mounts.push(api::Mount {
            destination: format!("/{tag}"),
            type_: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["nosuid".into()],
            ..Default::default()
        });
        adjust
    })
}

/// A plugin subscribed to CreateContainer that adjusts as [`tagged`] (or hangs).
fn plugin(tag: &'static str, hang: bool) -> Arc<Recorder> {
    Recorder::new(Script {
        events: event_bit(api::Event::CREATE_CONTAINER),
        adjust: Some(tagged(tag)),
        hang: if hang {
            vec!["CreateContainer"]
        } else {
            vec![]
        },
        ..Default::default()
    })
}

/// The runtime's options for a test socket: runtime "crius", version "test".
fn options(
    socket: &std::path::Path,
    registration_timeout: Duration,
    request_timeout: Duration,
) -> Options {
    Options {
        socket_path: socket.to_path_buf(),
        registration_timeout,
        request_timeout,
        runtime_name: "crius".into(),
        runtime_version: "test".into(),
    }
}

async fn start(
    dir: &tempfile::TempDir,
    request_timeout: Duration,
) -> (Arc<Nri>, std::path::PathBuf) {
    let socket = dir.path().join("nri").join("nri.sock");
    let nri = Nri::listen(
        options(&socket, Duration::from_secs(5), request_timeout),
        Arc::new(State),
    )
    .await
    .unwrap();
    (nri, socket)
}

async fn wait_for(nri: &Nri, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while nri.plugin_names().len() != n {
        assert!(
            Instant::now() < deadline,
            "plugins: {:?}",
            nri.plugin_names()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The ids of the containers a plugin saw created.
fn created(p: &Recorder) -> Vec<String> {
    p.seen()
        .of("CreateContainer")
        .iter()
        .map(|e| e.container.as_ref().unwrap().id.clone())
        .collect()
}

/// Pod `pod_id` named `name` with one container `ctr_id` ("nginx").
fn pod_with_container(pod_id: &str, name: &str, ctr_id: &str) -> (api::PodSandbox, api::Container) {
    let pod = api::PodSandbox {
        id: pod_id.into(),
        name: name.into(),
        ..Default::default()
    };
    let ctr = api::Container {
        id: ctr_id.into(),
        pod_sandbox_id: pod_id.into(),
        name: "nginx".into(),
        ..Default::default()
    };
    (pod, ctr)
}

fn pod_and_container() -> (api::PodSandbox, api::Container) {
    pod_with_container("pod2", "db", "ctr2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_register_sync_and_adjust_in_index_order() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (nri, socket) = start(&dir, Duration::from_secs(2)).await;
    assert!(!nri.has_plugins());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600);

    // Registered out of order: called in index order.
    let pb = plugin("B", false);
    let _b = pb.connect(&socket, "second", "20").await.unwrap();
    let pa = plugin("A", false);
    let _a = pa.connect(&socket, "first", "10").await.unwrap();
    wait_for(&nri, 2).await;
    assert!(nri.has_plugins());
    assert_eq!(nri.plugin_names(), ["10-first", "20-second"]);

    {
        let seen = pa.seen();
        let conf = seen.configured.as_ref().expect("configured");
        assert_eq!(conf.runtime_name, "crius");
        assert_eq!(conf.request_timeout, 2000);
        assert_eq!(conf.registration_timeout, 5000);
        assert_eq!(seen.syncs.len(), 1);
        let sync = &seen.syncs[0];
        assert!(!sync.more);
        assert_eq!(sync.pods[0].id, "pod1");
        assert_eq!(sync.containers[0].id, "ctr1");
    }

    let (pod, ctr) = pod_and_container();
    let adjustments = nri.create_container(&pod, &ctr).await;
    let plugins: Vec<_> = adjustments.iter().map(|a| a.plugin.as_str()).collect();
    assert_eq!(plugins, ["10-first", "20-second"]);
    let a = &adjustments[0].adjust;
    assert_eq!(a.env[0].key, "FROM_A");
    assert_eq!(a.env[0].value, "db");
    assert_eq!(
        a.annotations.get("nri.test/A").map(String::as_str),
        Some("yes")
    );
    assert_eq!(a.mounts[0].destination, "/A");
    assert_eq!(a.mounts[0].options, ["nosuid"]);
    assert_eq!(adjustments[1].adjust.env[0].key, "FROM_B");
    assert_eq!(created(&pb), ["ctr2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_plugin_costs_at_most_the_request_timeout_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(500);
    let (nri, socket) = start(&dir, timeout).await;
    let hung = plugin("H", true);
    let _h = hung.connect(&socket, "hung", "05").await.unwrap();
    let good = plugin("G", false);
    let _g = good.connect(&socket, "good", "50").await.unwrap();
    wait_for(&nri, 2).await;

    let (pod, ctr) = pod_and_container();
    let t = Instant::now();
    let adjustments = nri.create_container(&pod, &ctr).await;
    let took = t.elapsed();
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + Duration::from_millis(400), "{took:?}");
    // The good plugin, after the silent one, still ran.
    assert_eq!(adjustments.len(), 1);
    assert_eq!(adjustments[0].plugin, "50-good");
    assert_eq!(created(&hung), ["ctr2"]);
    assert_eq!(nri.plugin_names(), ["50-good"]);
    // Next time the silent one is not asked.
    let t = Instant::now();
    assert_eq!(nri.create_container(&pod, &ctr).await.len(), 1);
    assert!(t.elapsed() < timeout, "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_plugin_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (nri, socket) = start(&dir, Duration::from_secs(2)).await;
    let p = plugin("D", false);
    let stub = p.connect(&socket, "gone", "10").await.unwrap();
    wait_for(&nri, 1).await;
    p.close(stub).await;
    let (pod, ctr) = pod_and_container();
    let t = Instant::now();
    assert!(nri.create_container(&pod, &ctr).await.is_empty());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!nri.has_plugins());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_registers_is_not_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let nri = Nri::listen(
        options(&socket, Duration::from_millis(200), Duration::from_secs(1)),
        Arc::new(State),
    )
    .await
    .unwrap();
    let mut idle = tokio::net::UnixStream::connect(&socket).await.unwrap();
    // The runtime gives up on it and closes the connection.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await
    .expect("closed in time")
    .unwrap();
    assert_eq!(n, 0);
    assert!(!nri.has_plugins());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let (first, socket) = start(&dir, Duration::from_secs(1)).await;
    let opts = options(&socket, Duration::from_secs(1), Duration::from_secs(1));
    // Someone listens there: refused, and the first keeps its socket.
    assert!(Nri::listen(opts.clone(), Arc::new(State)).await.is_err());
    let p = plugin("K", false);
    let _k = p.connect(&socket, "kept", "10").await.unwrap();
    wait_for(&first, 1).await;
    // A socket file nobody answers on is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let second = Nri::listen(
        Options {
            socket_path: stale.clone(),
            ..opts
        },
        Arc::new(State),
    )
    .await
    .unwrap();
    let p = plugin("S", false);
    let _s = p.connect(&stale, "second", "10").await.unwrap();
    wait_for(&second, 1).await;
}

/// A runtime whose state is given and that records the updates and
/// evictions plugins ask for; updates of a container `ghost*` fail.
#[derive(Default)]
struct Host {
    pods: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
    /// (plugin, container id, cpu shares) of each update, evictions as
    /// (plugin, container id, "evict").
    applied: std::sync::Mutex<Vec<(String, String, String)>>,
}

impl StateSource for Host {
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        (self.pods.clone(), self.containers.clone())
    }

    fn update_containers(
        &self,
        plugin: String,
        update: Vec<api::ContainerUpdate>,
        evict: Vec<api::ContainerEviction>,
    ) -> UpdateFuture {
        let mut failed = Vec::new();
        let mut applied = self.applied.lock().unwrap();
        for u in update {
            if u.container_id.starts_with("ghost") {
                if !u.ignore_failure {
                    failed.push(u);
                }
                continue;
            }
            let shares = u
                .linux
                .resources
                .cpu
                .shares
                .as_ref()
                .map(|s| s.value.to_string())
                .unwrap_or_default();
            applied.push((plugin.clone(), u.container_id.clone(), shares));
        }
        for e in evict {
            applied.push((plugin.clone(), e.container_id, "evict".into()));
        }
        Box::pin(async move { failed })
    }
}

async fn start_with(
    host: Arc<Host>,
    request_timeout: Duration,
) -> (Arc<Nri>, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let nri = Nri::listen(
        options(&socket, Duration::from_secs(5), request_timeout),
        host,
    )
    .await
    .unwrap();
    (nri, socket, dir)
}

fn bits(events: &[api::Event]) -> i32 {
    events.iter().fold(0, |m, e| m | event_bit(*e))
}

fn update(id: &str, shares: u64, ignore_failure: bool) -> api::ContainerUpdate {
    api::ContainerUpdate {
        ignore_failure,
        ..crius_nri::stub::cpu_shares_update(id, shares)
    }
}

fn eviction(id: &str, reason: &str) -> api::ContainerEviction {
    api::ContainerEviction {
        container_id: id.into(),
        reason: reason.into(),
        ..Default::default()
    }
}

/// Every event of one pod and container lifecycle, in turn.
async fn lifecycle(nri: &Nri) {
    let (pod, ctr) = pod_and_container();
    nri.run_pod_sandbox(&pod).await.unwrap();
    nri.create_container(&pod, &ctr).await;
    nri.post_create_container(&pod, &ctr).await;
    nri.start_container(&pod, &ctr).await.unwrap();
    nri.post_start_container(&pod, &ctr).await;
    nri.update_container(&pod, &ctr, &api::LinuxResources::default())
        .await
        .unwrap();
    nri.post_update_container(&pod, &ctr).await;
    nri.stop_container(&pod, &ctr).await;
    nri.remove_container(&pod, &ctr).await;
    nri.stop_pod_sandbox(&pod).await;
    nri.remove_pod_sandbox(&pod).await;
}

#[derive(Default)]
struct Calls(std::sync::Mutex<Vec<(String, String, bool)>>);

impl crius_nri::runtime::Observer for Calls {
    fn observe(&self, plugin: &str, event: &str, _took: Duration, ok: bool) {
        self.0
            .lock()
            .unwrap()
            .push((plugin.into(), event.into(), ok));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_to_the_subscribed_plugins_in_index_order() {
    let (nri, socket, _dir) = start_with(Arc::default(), Duration::from_secs(2)).await;
    let calls = Arc::new(Calls::default());
    nri.set_observer(calls.clone());
    let all = Recorder::new(Script::default());
    let _all = all.connect(&socket, "all", "20").await.unwrap();
    let some = Recorder::new(Script {
        events: bits(&[api::Event::RUN_POD_SANDBOX, api::Event::STOP_CONTAINER]),
        ..Default::default()
    });
    let _some = some.connect(&socket, "some", "10").await.unwrap();
    wait_for(&nri, 2).await;
    lifecycle(&nri).await;
    assert_eq!(
        all.seen().trail(),
        [
            "RunPodSandbox db",
            "CreateContainer nginx",
            "PostCreateContainer nginx",
            "StartContainer nginx",
            "PostStartContainer nginx",
            "UpdateContainer nginx",
            "PostUpdateContainer nginx",
            "StopContainer nginx",
            "RemoveContainer nginx",
            "StopPodSandbox db",
            "RemovePodSandbox db",
        ]
    );
    assert_eq!(
        some.seen().trail(),
        ["RunPodSandbox db", "StopContainer nginx"]
    );
    // The observer saw every call, by plugin and event, the lower index
    // first: Configure and Synchronize of each, then the events.
    let calls = calls.0.lock().unwrap().clone();
    let events: Vec<(&str, &str)> = calls
        .iter()
        .filter(|(_, e, _)| e != "Configure" && e != "Synchronize")
        .map(|(p, e, ok)| {
            assert!(ok);
            (p.as_str(), e.as_str())
        })
        .collect();
    assert_eq!(
        &events[..3],
        [
            ("10-some", "RunPodSandbox"),
            ("20-all", "RunPodSandbox"),
            ("20-all", "CreateContainer")
        ]
    );
    assert_eq!(events.len(), 13);
    for p in ["10-some", "20-all"] {
        for e in ["Configure", "Synchronize"] {
            assert!(calls.iter().any(|c| c.0 == p && c.1 == e), "{p} {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_fail_the_refusable_events_and_late_plugins_are_dropped() {
    let timeout = Duration::from_millis(500);
    let (nri, socket, _dir) = start_with(Arc::default(), timeout).await;
    let calls = Arc::new(Calls::default());
    nri.set_observer(calls.clone());
    let refuser = Recorder::new(Script {
        fail: vec![
            "RunPodSandbox",
            "StartContainer",
            "UpdateContainer",
            "StopPodSandbox",
        ],
        ..Default::default()
    });
    let _r = refuser.connect(&socket, "refuser", "10").await.unwrap();
    let after = Recorder::new(Script::default());
    let _a = after.connect(&socket, "after", "20").await.unwrap();
    wait_for(&nri, 2).await;
    let (pod, ctr) = pod_and_container();

    // The first refusal fails the pod; the plugins after it are not asked.
    let err = nri.run_pod_sandbox(&pod).await.unwrap_err();
    assert_eq!(err.plugin, "10-refuser");
    assert_eq!(err.event, "RunPodSandbox");
    assert!(
        err.to_string().contains("refused by the test plugin"),
        "{err}"
    );
    assert!(after.seen().events.is_empty());
    assert!(nri.start_container(&pod, &ctr).await.is_err());
    assert!(nri
        .update_container(&pod, &ctr, &api::LinuxResources::default())
        .await
        .is_err());
    // A notification's error is logged: the next plugin still gets it.
    nri.stop_pod_sandbox(&pod).await;
    assert_eq!(after.seen().trail(), ["StopPodSandbox db"]);
    // A refusing plugin is kept.
    assert_eq!(nri.plugin_names(), ["10-refuser", "20-after"]);
    assert!(calls
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(p, e, ok)| p == "10-refuser" && e == "RunPodSandbox" && !ok));

    // One that does not answer in time is dropped, the event goes on.
    refuser.script().fail.clear();
    refuser.script().hang = vec!["StartContainer"];
    let t = Instant::now();
    nri.start_container(&pod, &ctr).await.unwrap();
    assert!(
        t.elapsed() < timeout + Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(nri.plugin_names(), ["20-after"]);
    assert_eq!(
        after.seen().trail(),
        ["StopPodSandbox db", "StartContainer nginx"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_node_is_synchronized_in_pages() {
    // 40 pods of ~200 KiB each: ~8 MiB, over ttrpc's 4 MiB message limit.
    let pods: Vec<api::PodSandbox> = (0..40)
        .map(|i| api::PodSandbox {
            id: format!("pod{i}"),
            annotations: [("big".to_string(), "x".repeat(200 << 10))].into(),
            ..Default::default()
        })
        .collect();
    let containers = vec![api::Container {
        id: "ctr0".into(),
        pod_sandbox_id: "pod0".into(),
        ..Default::default()
    }];
    let host = Arc::new(Host {
        pods,
        containers,
        ..Default::default()
    });
    let (nri, socket, _dir) = start_with(host.clone(), Duration::from_secs(5)).await;
    let paged = Recorder::new(Script {
        sync_updates: vec![update("ctr0", 100, false), update("ghost", 1, true)],
        ..Default::default()
    });
    let _p = paged.connect(&socket, "paged", "10").await.unwrap();
    wait_for(&nri, 1).await;
    {
        let seen = paged.seen();
        assert!(seen.syncs.len() >= 3, "{} pages", seen.syncs.len());
        let (last, first) = seen.syncs.split_last().unwrap();
        assert!(first.iter().all(|s| s.more) && !last.more);
        let pods: usize = seen.syncs.iter().map(|s| s.pods.len()).sum();
        let ctrs: usize = seen.syncs.iter().map(|s| s.containers.len()).sum();
        assert_eq!((pods, ctrs), (40, 1));
    }
    // The updates of the last answer were applied (the failed one ignored).
    assert_eq!(
        *host.applied.lock().unwrap(),
        [(
            "10-paged".to_string(),
            "ctr0".to_string(),
            "100".to_string()
        )]
    );

    // A plugin that does not answer `more` cannot take pages: not admitted.
    let unpaged = Recorder::new(Script {
        paged_sync: false,
        ..Default::default()
    });
    let _u = unpaged.connect(&socket, "unpaged", "20").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(nri.plugin_names(), ["10-paged"]);
    assert_eq!(unpaged.seen().syncs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_evictions_reach_the_runtime_without_deadlock() {
    let host = Arc::new(Host::default());
    let (nri, socket, _dir) = start_with(host.clone(), Duration::from_secs(2)).await;
    // A plugin that, asked about an update, first updates another container
    // itself (UpdateContainers, back into the runtime while the runtime
    // waits for its answer), then answers with updates and an eviction.
    let p = Recorder::new(Script {
        call_back_on_update: vec![
            update("other", 64, false),
            update("ghost1", 1, false),
            update("ghost2", 1, true),
        ],
        updates: vec![update("ctr2", 512, false), update("other", 128, false)],
        evictions: vec![eviction("victim", "test")],
        ..Default::default()
    });
    let _p = p.connect(&socket, "updater", "10").await.unwrap();
    wait_for(&nri, 1).await;
    let (pod, ctr) = pod_and_container();
    let t = Instant::now();
    let answers = nri
        .update_container(&pod, &ctr, &api::LinuxResources::default())
        .await
        .unwrap();
    // No wait on the request timeout: the call back was served at once.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(nri.plugin_names(), ["10-updater"]);
    {
        let seen = p.seen();
        // The plugin learnt which of its updates failed (not the ignored one).
        let failed = seen.call_backs[0].as_ref().unwrap();
        let ids: Vec<&str> = failed.iter().map(|u| u.container_id.as_str()).collect();
        assert_eq!(ids, ["ghost1"]);
    }
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].plugin, "10-updater");
    assert_eq!(answers[0].update.len(), 2);
    assert_eq!(answers[0].evict[0].container_id, "victim");
    // Applying them goes to the runtime.
    assert!(nri.apply_updates(answers).await.is_empty());
    // StopContainer's answer carries updates too.
    let stop = nri.stop_container(&pod, &ctr).await;
    assert_eq!(stop[0].update.len(), 2);
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        *host.applied.lock().unwrap(),
        [
            s("10-updater", "other", "64"),
            s("10-updater", "ctr2", "512"),
            s("10-updater", "other", "128"),
            s("10-updater", "victim", "evict"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_updates_need_a_registered_plugin_and_the_runtime_says_what_failed() {
    let host = Arc::new(Host::default());
    let (nri, socket, _dir) = start_with(host.clone(), Duration::from_secs(2)).await;
    let p = Recorder::new(Script::default());
    let stub = p.connect(&socket, "pusher", "10").await.unwrap();
    wait_for(&nri, 1).await;
    let resp = stub
        .runtime
        .update_containers(
            ttrpc::context::with_timeout(5_000_000_000),
            &api::UpdateContainersRequest {
                update: vec![update("a", 2, false), update("ghost", 2, false)],
                evict: vec![eviction("b", "")],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(resp.failed.len(), 1);
    assert_eq!(resp.failed[0].container_id, "ghost");
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        *host.applied.lock().unwrap(),
        [s("10-pusher", "a", "2"), s("10-pusher", "b", "evict")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_container_is_sent_once_per_container_until_removed() {
    let (nri, socket, _dir) = start_with(Arc::default(), Duration::from_secs(2)).await;
    // Its StopContainer answer carries one update.
    let p = Recorder::new(Script {
        updates: vec![update("other", 2, false)],
        ..Default::default()
    });
    let _p = p.connect(&socket, "once", "10").await.unwrap();
    wait_for(&nri, 1).await;
    let (pod, ctr) = pod_and_container();
    let (a, b) = tokio::join!(
        nri.stop_container_once(&pod, &ctr),
        nri.stop_container_once(&pod, &ctr)
    );
    // One of them sent it and got the updates; the other waited.
    assert_eq!(a.len() + b.len(), 1);
    assert!(nri.stop_container_once(&pod, &ctr).await.is_empty());
    assert_eq!(p.seen().trail(), ["StopContainer nginx"]);
    // After RemoveContainer the id may be a new container's: sent again.
    nri.remove_container(&pod, &ctr).await;
    assert_eq!(nri.stop_container_once(&pod, &ctr).await.len(), 1);
    assert_eq!(
        p.seen().trail(),
        [
            "StopContainer nginx",
            "RemoveContainer nginx",
            "StopContainer nginx"
        ]
    );
}

/// CreateContainer's answer carries updates and evictions of other
/// containers besides the adjustment; a plugin answering only those is in
/// the answers, one answering nothing is not. A validator's rejection, its
/// error and its silence each refuse the adjustment, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_carry_updates_and_validators_decide() {
    let (nri, socket, _dir) =
        start_with(Arc::new(Host::default()), Duration::from_millis(500)).await;
    let create = bits(&[api::Event::CREATE_CONTAINER]);
    let updater = Recorder::new(Script {
        events: create,
        create_updates: vec![update("other", 100, false)],
        create_evictions: vec![eviction("victim", "room")],
        ..Default::default()
    });
    let _u = updater.connect(&socket, "updater", "10").await.unwrap();
    let silent = Recorder::new(Script {
        events: create,
        ..Default::default()
    });
    let _s = silent.connect(&socket, "quiet", "20").await.unwrap();
    wait_for(&nri, 2).await;
    assert!(!nri.has_validators());
    let (pod, ctr) = pod_and_container();
    let answers = nri.create_container(&pod, &ctr).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].plugin, "10-updater");
    assert_eq!(answers[0].adjust, api::ContainerAdjustment::default());
    let u = answers[0].updates();
    assert_eq!(u.update[0].container_id, "other");
    assert_eq!(u.evict[0].container_id, "victim");
    assert_eq!(created(&silent), ["ctr2"]);

    let validator = Recorder::new(Script {
        events: bits(&[api::Event::VALIDATE_CONTAINER_ADJUSTMENT]),
        ..Default::default()
    });
    let _v = validator.connect(&socket, "validator", "90").await.unwrap();
    wait_for(&nri, 3).await;
    assert!(nri.has_validators());
    let instances: Vec<(String, String)> = nri
        .plugin_instances()
        .into_iter()
        .map(|p| (p.index, p.name))
        .collect();
    assert_eq!(
        instances,
        [
            ("10".to_string(), "updater".to_string()),
            ("20".into(), "quiet".into()),
            ("90".into(), "validator".into())
        ]
    );
    let req = api::ValidateContainerAdjustmentRequest {
        pod: Some(pod.clone()).into(),
        container: Some(ctr.clone()).into(),
        update: answers[0].update.clone(),
        ..Default::default()
    };
    assert_eq!(nri.validate_container_adjustment(&req).await, Ok(()));
    assert_eq!(validator.seen().validations.len(), 1);
    assert_eq!(
        validator.seen().validations[0].update[0].container_id,
        "other"
    );
    // (validators get no CreateContainer unless subscribed)
    assert!(validator.seen().events.is_empty());

    validator.script().reject = Some("too greedy".into());
    let err = nri.validate_container_adjustment(&req).await.unwrap_err();
    assert_eq!(err.plugin, "90-validator");
    assert!(err.to_string().contains("rejected: too greedy"), "{err}");
    validator.script().reject = None;
    validator.script().fail = vec!["ValidateContainerAdjustment"];
    let err = nri.validate_container_adjustment(&req).await.unwrap_err();
    assert!(err.to_string().contains("failed"), "{err}");
    // A silent validator fails the creation too, once, and is dropped.
    validator.script().fail.clear();
    validator.script().hang = vec!["ValidateContainerAdjustment"];
    let t = Instant::now();
    let err = nri.validate_container_adjustment(&req).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(err.plugin, "90-validator");
    assert!(!nri.has_validators());
    assert_eq!(nri.validate_container_adjustment(&req).await, Ok(()));
}

/// A runtime whose containers appear as the test commits them.
#[derive(Default)]
struct Growing(std::sync::Mutex<Vec<api::Container>>);

impl StateSource for Growing {
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        (Vec::new(), self.0.lock().unwrap().clone())
    }
}

fn synced_ids(p: &Recorder) -> Vec<String> {
    p.seen()
        .syncs
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.id.clone()))
        .collect()
}

/// NRI's "block plugin sync": a plugin registering while an operation is
/// in flight is synchronized only once the operation is done: it sees the
/// operation's container in its Synchronize and not through its event;
/// an operation starting while it is being synchronized waits and sends
/// it the event. With no plugin connected there is no block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_registering_during_an_operation_sees_its_object_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let host = Arc::new(Growing::default());
    let nri = Nri::listen(
        options(&socket, Duration::from_secs(5), Duration::from_secs(2)),
        host.clone(),
    )
    .await
    .unwrap();
    assert!(nri.block_sync().await.is_none());

    let first = plugin("A", false);
    let _a = first.connect(&socket, "first", "10").await.unwrap();
    wait_for(&nri, 1).await;
    let (pod, ctr) = pod_and_container();

    // An operation in flight: its event sent, its container not committed.
    let block = nri.block_sync().await.expect("a plugin is connected");
    assert_eq!(nri.create_container(&pod, &ctr).await.len(), 1);
    let late = plugin("B", false);
    let connecting = {
        let (late, socket) = (late.clone(), socket.clone());
        tokio::spawn(async move { late.connect(&socket, "late", "20").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        late.seen().syncs.is_empty(),
        "synchronized during the operation"
    );
    assert_eq!(nri.plugin_names(), ["10-first"]);
    // Another operation waits behind the pending synchronization.
    let waiting = {
        let nri = nri.clone();
        tokio::spawn(async move {
            let block = nri.block_sync().await;
            (block, nri.plugin_names())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    host.0.lock().unwrap().push(ctr.clone());
    drop(block);

    let _b = connecting.await.unwrap().unwrap();
    let (second_block, names_then) = waiting.await.unwrap();
    assert!(second_block.is_some());
    // The waiting operation started once the late plugin was in.
    assert_eq!(names_then, ["10-first", "20-late"]);
    assert_eq!(synced_ids(&late), ["ctr2"]);
    assert!(created(&late).is_empty());
    // Its own event reaches both.
    let mut next = ctr.clone();
    next.id = "ctr3".into();
    assert_eq!(nri.create_container(&pod, &next).await.len(), 2);
    drop(second_block);
    assert_eq!(created(&late), ["ctr3"]);
    assert_eq!(created(&first), ["ctr2", "ctr3"]);
}

/// A plugin of an older NRI without an event's own call (UNIMPLEMENTED)
/// gets the notification as a StateChange, as NRI sends it; its error
/// there refuses a refusable event. Events with answers have no fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_plugin_gets_events_as_state_changes() {
    let (nri, socket, _dir) = start_with(Arc::new(Host::default()), Duration::from_secs(2)).await;
    let old = Recorder::new(Script {
        unimplemented: vec!["RunPodSandbox", "PostCreateContainer", "UpdateContainer"],
        ..Default::default()
    });
    let _o = old.connect(&socket, "old", "10").await.unwrap();
    wait_for(&nri, 1).await;
    let (pod, ctr) = pod_and_container();
    assert_eq!(nri.run_pod_sandbox(&pod).await, Ok(()));
    nri.post_create_container(&pod, &ctr).await;
    nri.post_start_container(&pod, &ctr).await;
    {
        let seen = old.seen();
        let changes: Vec<(api::Event, String, Option<String>)> = seen
            .state_changes
            .iter()
            .map(|c| {
                (
                    c.event.enum_value_or_default(),
                    c.pod.id.clone(),
                    c.container.as_ref().map(|c| c.id.clone()),
                )
            })
            .collect();
        assert_eq!(
            changes,
            [
                (api::Event::RUN_POD_SANDBOX, "pod2".to_string(), None),
                (
                    api::Event::POST_CREATE_CONTAINER,
                    "pod2".to_string(),
                    Some("ctr2".to_string())
                ),
            ]
        );
        // PostStartContainer it has: no StateChange.
        assert_eq!(seen.of("PostStartContainer").len(), 1);
    }
    // UpdateContainer has no StateChange form: it fails.
    let err = nri
        .update_container(&pod, &ctr, &api::LinuxResources::new())
        .await
        .unwrap_err();
    assert_eq!(err.event, "UpdateContainer");
    assert_eq!(old.seen().state_changes.len(), 2);
    // An error on the StateChange of a refusable event refuses it.
    old.script().fail = vec!["StateChange"];
    let err = nri.run_pod_sandbox(&pod).await.unwrap_err();
    assert_eq!(err.plugin, "10-old");
    assert_eq!(nri.plugin_names(), ["10-old"]);
}
