//! Metrics after a real pod lifecycle, the pod and container start-up
//! timelines, and span export over OTLP to a fake collector.

mod common;

use common::pod::*;
use common::registry::is_root;
use k8s_cri::v1::{
    ContainerConfig, ContainerStatusRequest, CreateContainerRequest, PodSandboxConfig,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use std::time::{Duration, Instant};

/// The phases of a container's start-up, in order.
const CONTAINER_PHASES: [&str; 9] = [
    "name_reservation",
    "image_check",
    "record",
    "rootfs_mount",
    "container_spec",
    "bundle_write",
    "runc_create",
    "start_lookup",
    "runc_start",
];

/// The kit's container sleeping, without a log path or Linux settings.
fn sleeper(name: &str, image: &str) -> ContainerConfig {
    ContainerConfig {
        log_path: String::new(),
        linux: None,
        ..container(name, image, &["/bin/busybox", "sleep", "1000"])
    }
}

/// Creates and starts a container; returns its id and the wall time of
/// the two calls.
async fn create_and_start(
    env: &Env,
    pod_id: &str,
    pod_config: &PodSandboxConfig,
    image: &str,
) -> (String, Duration) {
    let mut rt = env.daemon.runtime().await;
    let started = Instant::now();
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(sleeper("sleeper", image)),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", env.daemon.log_text()))
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e:?}\n{}", env.daemon.log_text()));
    (id, started.elapsed())
}

/// The timeline in a container's verbose status: (phase, nanoseconds).
async fn container_timeline(env: &Env, id: &str) -> Vec<(String, u64)> {
    let st = env
        .daemon
        .runtime()
        .await
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    info["timeline"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline in {info}"))
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["nanos"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn assert_container_timeline(timeline: &[(String, u64)], wall: Duration) {
    let names: Vec<&str> = timeline.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, CONTAINER_PHASES);
    assert!(timeline.iter().all(|(_, n)| *n > 0), "{timeline:?}");
    let total: u64 = timeline.iter().map(|(_, n)| n).sum();
    assert!(total as u128 <= wall.as_nanos(), "{total} > {wall:?}");
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: crius\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// The tests of this file run one at a time: a finished test's clean-up
/// kills every process in the shared test cgroup, which would take the
/// other test's containers (even a `runc init` mid-create) with it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_timeline_of_a_pod() {
    if !is_root() {
        eprintln!("observability: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let addr = common::free_metrics_addr();
    // The plain CNI path here (the loopback binary, DEL inside the netns);
    // the other pod tests run the defaults.
    let env = Env::start_with_cni(
        "crius-obs",
        "builtin_loopback = false, teardown_netns_first = false",
        &format!("[metrics]\naddress = \"{addr}\"\n"),
    );
    let mut rt = env.daemon.runtime().await;

    let started = Instant::now();
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod("obs", "uid-obs")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let wall = started.elapsed();

    // The timeline has every phase, each with a duration, summing to no
    // more than the call took.
    let (_, info) = pod_status_info(&mut rt, &id).await;
    let phases = info["timeline"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    // The pod (no namespace options: one PID namespace for the pod) gets
    // the shim's PID-namespace holder, criusd's default: no pause image or
    // spec, a check of the pod's spec instead. CNI ADD and the shim's part
    // (spawn, CreateSandbox with the pinned namespaces, the holder's
    // start) run side by side: the side that finished first comes first;
    // the pod files need the IPs and come last.
    assert_eq!(
        names[..3],
        ["name_reservation", "pod_spec_check", "netns"],
        "{names:?}"
    );
    let shim_side = ["shim_spawn", "sandbox_create", "pod_start"];
    let side_by_side = &names[3..7];
    assert!(
        side_by_side[..3] == shim_side && side_by_side[3] == "cni_add"
            || side_by_side[0] == "cni_add" && side_by_side[1..] == shim_side,
        "{names:?}"
    );
    assert_eq!(names[7..], ["pod_files"], "{names:?}");
    let total: u64 = phases.iter().map(|p| p["nanos"].as_u64().unwrap()).sum();
    assert!(phases.iter().all(|p| p["nanos"].as_u64().unwrap() > 0));
    assert!(total as u128 <= wall.as_nanos(), "{total} > {wall:?}");

    let body = scrape(&addr);
    assert_eq!(value(&body, "crius_pods{state=\"ready\"}"), 1.0);
    assert_eq!(
        value(&body, "crius_image_pull_bytes_total"),
        0.0,
        "no pause image pulled"
    );
    assert_eq!(value(&body, "crius_shim_spawn_duration_seconds_count"), 1.0);
    assert_eq!(
        value(&body, "crius_cni_duration_seconds_count{op=\"add\"}"),
        1.0
    );
    assert_eq!(
        value(
            &body,
            "crius_pod_startup_phase_seconds_count{phase=\"cni_add\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &body,
            "crius_cri_requests_total{method=\"RuntimeService/RunPodSandbox\"}"
        ),
        1.0
    );

    // A container's timeline covers CreateContainer and StartContainer.
    let image = env.pull_busybox().await;
    let body = scrape(&addr);
    assert_eq!(
        value(&body, "crius_image_pulls_total{result=\"ok\"}"),
        1.0,
        "busybox"
    );
    assert!(value(&body, "crius_image_pull_bytes_total") > 0.0);
    let (cid, wall) = create_and_start(&env, &id, &pod("obs", "uid-obs"), &image).await;
    assert_container_timeline(&container_timeline(&env, &cid).await, wall);
    // Created, not started: CreateContainer's phases only.
    let created = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(sleeper("idle", &image)),
            sandbox_config: Some(pod("obs", "uid-obs")),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let timeline = container_timeline(&env, &created).await;
    let names: Vec<&str> = timeline.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, CONTAINER_PHASES[..7]);
    let body = scrape(&addr);
    // Two containers created, one started.
    for (i, phase) in CONTAINER_PHASES.iter().enumerate() {
        assert_eq!(
            value(
                &body,
                &format!("crius_container_startup_phase_seconds_count{{phase=\"{phase}\"}}")
            ),
            if i < 7 { 2.0 } else { 1.0 },
            "{phase}"
        );
    }
    assert_eq!(value(&body, "crius_containers{state=\"running\"}"), 1.0);
    assert_eq!(value(&body, "crius_containers{state=\"created\"}"), 1.0);
    // Where a cgroup move waits for an RCU grace period (no hierarchy with
    // favordynmods, as on the development VM), each CreateContainer first
    // moves one of criusd's threads where it already is, so that the wait
    // starts before the runtime's move: every such move succeeded, and
    // every thread of criusd is still in criusd's cgroups.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if crius_cri_server::host::cgroup_moves_wait_for_rcu(&mountinfo) {
        let ok = value(&body, "crius_cgroup_primes_total{result=\"ok\"}");
        assert!(
            (1.0..=2.0).contains(&ok),
            "{ok} moves for two CreateContainers"
        );
        assert!(
            !body.contains("crius_cgroup_primes_total{result=\"error\"}"),
            "{body}"
        );
    } else {
        assert!(!body.contains("crius_cgroup_primes_total{"), "{body}");
    }
    let pid = env.daemon.child.as_ref().unwrap().id();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        if let Ok(cgroups) = std::fs::read_to_string(task.join("cgroup")) {
            assert_eq!(cgroups, own, "thread {}", task.display());
        }
    }

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    // DEL ran inside the netns, so the pod's veth is gone already.
    let ports = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &env.net.bridge])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout);
    assert!(ports.trim().is_empty(), "veth left after stop: {ports}");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let body = scrape(&addr);
    assert_eq!(value(&body, "crius_pods{state=\"ready\"}"), 0.0);
    assert_eq!(value(&body, "crius_pods{state=\"notready\"}"), 0.0);
    assert_eq!(
        value(&body, "crius_cni_duration_seconds_count{op=\"del\"}"),
        1.0
    );
    assert!(cgroup_dirs("uid-obs").is_empty());
    remove_cgroup_parents("uid-obs");
}

/// A fake OTLP/gRPC collector on 127.0.0.1 that keeps what it receives and
/// counts the connections made to it.
struct Collector {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    received: Received,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone, Default)]
struct Received {
    spans: std::sync::Arc<std::sync::Mutex<Vec<otlp::trace::v1::Span>>>,
    services: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

use opentelemetry_proto::tonic as otlp;
use otlp::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            if let Some(resource) = &rs.resource {
                for kv in &resource.attributes {
                    if kv.key == "service.name" {
                        self.services.lock().unwrap().push(string_value(kv));
                    }
                }
            }
            for ss in rs.scope_spans {
                self.spans.lock().unwrap().extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> Collector {
        use futures_util::StreamExt;
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        let incoming =
            tokio_stream::wrappers::TcpListenerStream::new(listener).inspect(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            });
        let received = Received::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(received.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Collector {
            addr,
            connections,
            received,
            stop: Some(stop),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn spans(&self) -> Vec<otlp::trace::v1::Span> {
        self.received.spans.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn string_value(kv: &otlp::common::v1::KeyValue) -> String {
    use otlp::common::v1::any_value::Value;
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(span: &otlp::trace::v1::Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(string_value)
}

fn children<'a>(
    spans: &'a [otlp::trace::v1::Span],
    parent: &otlp::trace::v1::Span,
) -> Vec<&'a otlp::trace::v1::Span> {
    spans
        .iter()
        .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
        .collect()
}

/// The one span named `name` among `spans` whose attribute `key` is `value`.
fn one<'a>(
    spans: &[&'a otlp::trace::v1::Span],
    name: &str,
    key: &str,
    value: &str,
) -> &'a otlp::trace::v1::Span {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && attr(s, key).as_deref() == Some(value))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want one {name} span with {key}={value}, have: {:#?}",
        spans
            .iter()
            .map(|s| (&s.name, &s.attributes))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn names<'a>(spans: &[&'a otlp::trace::v1::Span]) -> std::collections::BTreeSet<&'a str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

async fn run_pod(env: &Env, config: &PodSandboxConfig) -> String {
    common::pod::run_pod(env, &mut env.daemon.runtime().await, config).await
}

async fn stop_and_remove_pod(env: &Env, id: &str) {
    common::pod::stop_and_remove_pod(&mut env.daemon.runtime().await, id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_go_to_an_otlp_collector_only_when_configured() {
    if !is_root() {
        eprintln!("observability: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let collector = Collector::start().await;
    let endpoint = format!("http://{}", collector.addr);
    // With a pause container: its image and spec steps are among the
    // spans (the metrics test above runs the holder's path).
    let mut env = Env::start_with("crius-otlp", common::WITH_PAUSE);

    // Off (the key is empty): not even the standard OpenTelemetry
    // environment variables, pointing at the collector, make criusd export.
    env.daemon.signal_and_wait(libc::SIGTERM);
    env.daemon.env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(),
            endpoint.clone(),
        ),
    ];
    env.daemon.restart();
    let image = env.pull_busybox().await;
    let first_config = pod("otlp-a", "uid-otlp-a");
    let first_pod = run_pod(&env, &first_config).await;
    let (first_ctr, _) = create_and_start(&env, &first_pod, &first_config, &image).await;
    assert!(env.daemon.signal_and_wait(libc::SIGTERM).success());
    assert_eq!(
        collector.connections(),
        0,
        "criusd connected with export off"
    );
    assert!(collector.spans().is_empty());

    // On.
    let mut text = std::fs::read_to_string(&env.daemon.config).unwrap();
    text.push_str(&format!(
        "[tracing]\notlp_endpoint = \"{endpoint}\"\nsampling_ratio = 1.0\nservice_name = \"crius-test\"\n"
    ));
    std::fs::write(&env.daemon.config, text).unwrap();
    env.daemon.restart();
    // The container timeline is kept with the container across a restart.
    let names_after_restart: Vec<String> = container_timeline(&env, &first_ctr)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names_after_restart, CONTAINER_PHASES);
    stop_and_remove_pod(&env, &first_pod).await;

    let config = pod("otlp-b", "uid-otlp-b");
    let pod_id = run_pod(&env, &config).await;
    let (ctr, _) = create_and_start(&env, &pod_id, &config, &image).await;
    stop_and_remove_pod(&env, &pod_id).await;
    // A graceful stop flushes what is still buffered.
    assert!(env.daemon.signal_and_wait(libc::SIGTERM).success());
    assert!(collector.connections() > 0);
    assert!(
        collector
            .received
            .services
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "crius-test"),
        "service.name"
    );

    let spans = collector.spans();
    let all: Vec<&otlp::trace::v1::Span> = spans.iter().collect();
    let roots: Vec<_> = all
        .iter()
        .copied()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();

    // RunPodSandbox: cri -> run_pod_sandbox -> store, image, spec, shim
    // spawn, shim calls, CNI (-> one span per plugin).
    let of_method = |method: &str| -> Vec<&otlp::trace::v1::Span> {
        let method = format!("/runtime.v1.RuntimeService/{method}");
        roots
            .iter()
            .copied()
            .filter(|s| attr(s, "method").as_deref() == Some(method.as_str()))
            .collect()
    };
    let call = one(&of_method("RunPodSandbox"), "cri", "pod", &pod_id);
    let run = one(
        &children(&spans, call),
        "run_pod_sandbox",
        "sandbox",
        &pod_id,
    );
    let steps = children(&spans, run);
    for name in ["store", "image", "spec", "shim_spawn", "shim", "cni"] {
        assert!(
            names(&steps).contains(name),
            "no {name} under run_pod_sandbox: {:?}",
            names(&steps)
        );
    }
    for method in ["CreateSandbox", "SandboxStatus", "StartSandbox"] {
        let shim = one(&steps, "shim", "method", method);
        assert_eq!(attr(shim, "id").as_deref(), Some(pod_id.as_str()));
    }
    let store = one(&steps, "store", "op", "add_sandbox");
    assert_eq!(attr(store, "sandbox").as_deref(), Some(pod_id.as_str()));
    let cni = one(&steps, "cni", "op", "add");
    let plugins = children(&spans, cni);
    assert!(!plugins.is_empty() && plugins.iter().all(|p| p.name == "cni_plugin"));
    one(&plugins, "cni_plugin", "plugin", "bridge");

    // CreateContainer: cri (pod and container ids) -> create_container ->
    // store, image, spec, shim Create.
    let call = one(&of_method("CreateContainer"), "cri", "container", &ctr);
    assert_eq!(attr(call, "pod").as_deref(), Some(pod_id.as_str()));
    let create = one(
        &children(&spans, call),
        "create_container",
        "container",
        &ctr,
    );
    let steps = children(&spans, create);
    for name in ["store", "image", "spec", "shim"] {
        assert!(
            names(&steps).contains(name),
            "no {name} under create_container: {:?}",
            names(&steps)
        );
    }
    let shim = one(&steps, "shim", "method", "Create");
    assert_eq!(attr(shim, "id").as_deref(), Some(ctr.as_str()));
    one(&steps, "image", "op", "prepare_rootfs");
    one(&steps, "spec", "container", &ctr);

    // StartContainer: cri -> start_container -> shim Start.
    let call = one(&of_method("StartContainer"), "cri", "container", &ctr);
    let start = one(
        &children(&spans, call),
        "start_container",
        "container",
        &ctr,
    );
    one(&children(&spans, start), "shim", "method", "Start");

    for uid in ["uid-otlp-a", "uid-otlp-b"] {
        assert!(cgroup_dirs(uid).is_empty());
        remove_cgroup_parents(uid);
    }
}
