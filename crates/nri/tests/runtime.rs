//! The runtime side against plugins speaking the real protocol over a real
//! unix socket.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crius_nri::api;
use crius_nri::api_ttrpc;
use crius_nri::runtime::{event_bit, Nri, Options, StateSource};
use crius_nri::stub::Stub;
use ttrpc::asynchronous::TtrpcContext;

struct State;

impl StateSource for State {
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        let pod = api::PodSandbox {
            id: "pod1".into(),
            name: "web".into(),
            ..Default::default()
        };
        let ctr = api::Container {
            id: "ctr1".into(),
            pod_sandbox_id: "pod1".into(),
            name: "nginx".into(),
            ..Default::default()
        };
        (vec![pod], vec![ctr])
    }
}

/// What a test plugin saw, and how it behaves.
#[derive(Default)]
struct Seen {
    configured: Option<api::ConfigureRequest>,
    synced: Option<api::SynchronizeRequest>,
    created: Vec<String>,
}

struct TestPlugin {
    tag: &'static str,
    hang: bool,
    seen: Arc<Mutex<Seen>>,
}

#[async_trait::async_trait]
impl api_ttrpc::Plugin for TestPlugin {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        self.seen.lock().unwrap().configured = Some(req);
        Ok(api::ConfigureResponse {
            events: event_bit(api::Event::CREATE_CONTAINER),
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        self.seen.lock().unwrap().synced = Some(req);
        Ok(api::SynchronizeResponse::default())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        self.seen
            .lock()
            .unwrap()
            .created
            .push(req.container.id.clone());
        if self.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut adjust = api::ContainerAdjustment::new();
        adjust.env.push(api::KeyValue {
            key: format!("FROM_{}", self.tag),
            value: req.pod.name.clone(),
            ..Default::default()
        });
        adjust
            .annotations
            .insert(format!("nri.test/{}", self.tag), "yes".into());
        adjust.mounts.push(api::Mount {
            destination: format!("/{}", self.tag),
            type_: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["nosuid".into()],
            ..Default::default()
        });
        Ok(api::CreateContainerResponse {
            adjust: Some(adjust).into(),
            ..Default::default()
        })
    }
}

fn plugin(tag: &'static str, hang: bool) -> (Arc<TestPlugin>, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let p = Arc::new(TestPlugin {
        tag,
        hang,
        seen: seen.clone(),
    });
    (p, seen)
}

async fn start(
    dir: &tempfile::TempDir,
    request_timeout: Duration,
) -> (Arc<Nri>, std::path::PathBuf) {
    let socket = dir.path().join("nri").join("nri.sock");
    let nri = Nri::listen(
        Options {
            socket_path: socket.clone(),
            registration_timeout: Duration::from_secs(5),
            request_timeout,
            runtime_name: "crius".into(),
            runtime_version: "test".into(),
        },
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

fn pod_and_container() -> (api::PodSandbox, api::Container) {
    let pod = api::PodSandbox {
        id: "pod2".into(),
        name: "db".into(),
        ..Default::default()
    };
    let ctr = api::Container {
        id: "ctr2".into(),
        pod_sandbox_id: "pod2".into(),
        ..Default::default()
    };
    (pod, ctr)
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
    let (pb, seen_b) = plugin("B", false);
    let _b = Stub::connect(&socket, "second", "20", pb).await.unwrap();
    let (pa, seen_a) = plugin("A", false);
    let _a = Stub::connect(&socket, "first", "10", pa).await.unwrap();
    wait_for(&nri, 2).await;
    assert!(nri.has_plugins());
    assert_eq!(nri.plugin_names(), ["10-first", "20-second"]);

    {
        let seen = seen_a.lock().unwrap();
        let conf = seen.configured.as_ref().expect("configured");
        assert_eq!(conf.runtime_name, "crius");
        assert_eq!(conf.request_timeout, 2000);
        assert_eq!(conf.registration_timeout, 5000);
        let sync = seen.synced.as_ref().expect("synchronized");
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
    assert_eq!(seen_b.lock().unwrap().created, ["ctr2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_plugin_costs_at_most_the_request_timeout_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(500);
    let (nri, socket) = start(&dir, timeout).await;
    let (hung, seen_hung) = plugin("H", true);
    let _h = Stub::connect(&socket, "hung", "05", hung).await.unwrap();
    let (good, _) = plugin("G", false);
    let _g = Stub::connect(&socket, "good", "50", good).await.unwrap();
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
    assert_eq!(seen_hung.lock().unwrap().created, ["ctr2"]);
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
    let (p, _) = plugin("D", false);
    let stub = Stub::connect(&socket, "gone", "10", p).await.unwrap();
    wait_for(&nri, 1).await;
    stub.close().await;
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
        Options {
            socket_path: socket.clone(),
            registration_timeout: Duration::from_millis(200),
            request_timeout: Duration::from_secs(1),
            runtime_name: "crius".into(),
            runtime_version: "test".into(),
        },
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
    let opts = Options {
        socket_path: socket.clone(),
        registration_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        runtime_name: "crius".into(),
        runtime_version: "test".into(),
    };
    // Someone listens there: refused, and the first keeps its socket.
    assert!(Nri::listen(opts.clone(), Arc::new(State)).await.is_err());
    let (p, _) = plugin("K", false);
    let _k = Stub::connect(&socket, "kept", "10", p).await.unwrap();
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
    let (p, _) = plugin("S", false);
    let _s = Stub::connect(&stale, "second", "10", p).await.unwrap();
    wait_for(&second, 1).await;
}
