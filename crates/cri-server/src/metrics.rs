//! Prometheus metrics: a tower layer that counts and times every CRI call,
//! the registry of the daemon's other metrics, and the `/metrics` endpoint.

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    /// CRI requests by method.
    pub requests: IntCounterVec,
    /// CRI errors by method and gRPC code name.
    pub errors: IntCounterVec,
    /// CRI request latency by method.
    pub latency: HistogramVec,
    /// Pod sandboxes by state (set at scrape time from the store).
    pub pods: IntGaugeVec,
    /// Containers by state (set at scrape time from the store).
    pub containers: IntGaugeVec,
    /// Image pulls by result (`ok`, `error`).
    pub image_pulls: IntCounterVec,
    /// Bytes of the images pulled.
    pub image_pull_bytes: IntCounter,
    /// Image pull duration.
    pub image_pull_duration: Histogram,
    /// Time to launch a pod's shim and have it answer.
    pub shim_spawn_duration: Histogram,
    /// CNI ADD/DEL duration by operation.
    pub cni_duration: HistogramVec,
    /// CNI failures by operation.
    pub cni_failures: IntCounterVec,
    /// Exec sessions by kind (`sync`, `stream`).
    pub execs: IntCounterVec,
    /// Cgroup moves started ahead of the runtime's, by result (`ok`,
    /// `error`; see [`crate::cgroup_primer`]).
    pub cgroup_primes: IntCounterVec,
    /// Pod start-up phases.
    pub pod_phases: HistogramVec,
    /// Container start-up phases.
    pub container_phases: HistogramVec,
    /// Calls to NRI plugins by plugin, event and result (`ok`, `error`).
    pub nri_requests: IntCounterVec,
    /// NRI plugin call latency by plugin and event.
    pub nri_latency: HistogramVec,
}

/// Latency buckets from 1 ms to ~2 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("crius".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("cri_requests_total", "CRI requests received, by method"),
            &["method"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "cri_errors_total",
                "CRI requests that failed, by method and gRPC code",
            ),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "cri_request_duration_seconds",
                "CRI request latency, by method",
            )
            .buckets(BUCKETS.to_vec()),
            &["method"],
        )?;
        let pods = IntGaugeVec::new(Opts::new("pods", "Pod sandboxes by state"), &["state"])?;
        let containers =
            IntGaugeVec::new(Opts::new("containers", "Containers by state"), &["state"])?;
        let image_pulls = IntCounterVec::new(
            Opts::new("image_pulls_total", "Image pulls by result"),
            &["result"],
        )?;
        let image_pull_bytes =
            IntCounter::new("image_pull_bytes_total", "Bytes of the images pulled")?;
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
        };
        let histogram_vec = |name: &str, help: &str, label: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                &[label],
            )
        };
        let image_pull_duration = histogram("image_pull_duration_seconds", "Image pull duration")?;
        let shim_spawn_duration =
            histogram("shim_spawn_duration_seconds", "Time to launch a pod's shim")?;
        let cni_duration = histogram_vec(
            "cni_duration_seconds",
            "CNI call duration by operation",
            "op",
        )?;
        let cni_failures = IntCounterVec::new(
            Opts::new("cni_failures_total", "CNI failures by operation"),
            &["op"],
        )?;
        let execs =
            IntCounterVec::new(Opts::new("execs_total", "Exec sessions by kind"), &["kind"])?;
        let cgroup_primes = IntCounterVec::new(
            Opts::new(
                "cgroup_primes_total",
                "Cgroup moves started ahead of the runtime's, by result",
            ),
            &["result"],
        )?;
        let pod_phases = histogram_vec(
            "pod_startup_phase_seconds",
            "Duration of each pod start-up phase",
            "phase",
        )?;
        let container_phases = histogram_vec(
            "container_startup_phase_seconds",
            "Duration of each container start-up phase",
            "phase",
        )?;
        let nri_requests = IntCounterVec::new(
            Opts::new(
                "nri_requests_total",
                "Calls to NRI plugins, by plugin, event and result",
            ),
            &["plugin", "event", "result"],
        )?;
        let nri_latency = HistogramVec::new(
            HistogramOpts::new(
                "nri_request_duration_seconds",
                "NRI plugin call latency, by plugin and event",
            )
            .buckets(BUCKETS.to_vec()),
            &["plugin", "event"],
        )?;
        registry.register(Box::new(nri_requests.clone()))?;
        registry.register(Box::new(nri_latency.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(pods.clone()))?;
        registry.register(Box::new(containers.clone()))?;
        registry.register(Box::new(image_pulls.clone()))?;
        registry.register(Box::new(image_pull_bytes.clone()))?;
        registry.register(Box::new(image_pull_duration.clone()))?;
        registry.register(Box::new(shim_spawn_duration.clone()))?;
        registry.register(Box::new(cni_duration.clone()))?;
        registry.register(Box::new(cni_failures.clone()))?;
        registry.register(Box::new(execs.clone()))?;
        registry.register(Box::new(cgroup_primes.clone()))?;
        registry.register(Box::new(pod_phases.clone()))?;
        registry.register(Box::new(container_phases.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            errors,
            latency,
            pods,
            containers,
            image_pulls,
            image_pull_bytes,
            image_pull_duration,
            shim_spawn_duration,
            cni_duration,
            cni_failures,
            execs,
            cgroup_primes,
            pod_phases,
            container_phases,
            nri_requests,
            nri_latency,
        })
    }

    /// The registry, for other modules to register their metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets the pod and container gauges from the store.
    pub fn refresh(&self, store: &crius_store::Store) {
        use crius_store::{ContainerState, SandboxState};
        let (mut ready, mut not_ready) = (0, 0);
        for s in store.list_sandboxes() {
            match s.status.state {
                SandboxState::Ready => ready += 1,
                SandboxState::NotReady => not_ready += 1,
            }
        }
        self.pods.with_label_values(&["ready"]).set(ready);
        self.pods.with_label_values(&["notready"]).set(not_ready);
        let mut counts = [0i64; 4];
        for c in store.list_containers() {
            let i = match c.status.state {
                ContainerState::Created => 0,
                ContainerState::Running => 1,
                ContainerState::Exited => 2,
                ContainerState::Unknown => 3,
            };
            counts[i] += 1;
        }
        for (state, n) in ["created", "running", "exited", "unknown"]
            .iter()
            .zip(counts)
        {
            self.containers.with_label_values(&[state]).set(n);
        }
    }

    /// Records a start-up timeline into the phase histograms.
    pub fn observe_phases(&self, pod: bool, timeline: &[crius_store::Phase]) {
        let family = if pod {
            &self.pod_phases
        } else {
            &self.container_phases
        };
        for p in timeline {
            family
                .with_label_values(&[&p.name])
                .observe(p.nanos as f64 / 1e9);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl crius_nri::runtime::Observer for Metrics {
    fn observe(&self, plugin: &str, event: &str, took: std::time::Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.nri_requests
            .with_label_values(&[plugin, event, result])
            .inc();
        self.nri_latency
            .with_label_values(&[plugin, event])
            .observe(took.as_secs_f64());
    }
}

/// The short method name of a gRPC path: `/runtime.v1.RuntimeService/Version`
/// becomes `RuntimeService/Version`.
pub fn method_name(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("");
    let method = parts.next().unwrap_or("");
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}/{method}")
}

/// The name of a gRPC status code, as Prometheus labels it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// A tower layer recording every request into [`Metrics`].
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer over shared metrics.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_name(req.uri().path());
        let metrics = self.metrics.clone();
        // Take the service that was polled ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let start = Instant::now();
            metrics.requests.with_label_values(&[&method]).inc();
            let result = inner.call(req).await;
            metrics
                .latency
                .with_label_values(&[&method])
                .observe(start.elapsed().as_secs_f64());
            let code = match &result {
                // A unary error is a trailers-only response: the status is a header.
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unknown,
            };
            if code != tonic::Code::Ok {
                metrics
                    .errors
                    .with_label_values(&[&method, code_name(code)])
                    .inc();
            }
            result
        })
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown` resolves, within the
/// default connection limits (see [`crate::listener`]). Returns the bound
/// address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: Option<Arc<crius_store::Store>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with_limits(
        addr,
        metrics,
        store,
        crate::listener::Limits::default(),
        shutdown,
    )
    .await
}

/// The `/metrics` endpoint at the configured address, which a reload can
/// open, move or close.
pub struct Endpoint {
    metrics: Arc<Metrics>,
    store: Arc<crius_store::Store>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The address served now (as configured) and its accept loop.
    running: tokio::sync::Mutex<Option<(String, tokio::task::JoinHandle<()>)>>,
}

impl Endpoint {
    /// An endpoint serving nothing yet.
    pub fn new(
        metrics: Arc<Metrics>,
        store: Arc<crius_store::Store>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Endpoint {
            metrics,
            store,
            shutdown,
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// Serves on `address` ("" for none) from now on; returns the address
    /// bound when it opened or moved. The new address is bound before the
    /// old one closes, unless it cannot be bound while the old is open
    /// (the same port): then the old closes first. A failure leaves the
    /// endpoint closed and says why.
    pub async fn set_address(&self, address: &str) -> Result<Option<SocketAddr>, String> {
        let mut running = self.running.lock().await;
        let current = running.as_ref().map(|(a, _)| a.as_str()).unwrap_or("");
        if current == address {
            return Ok(None);
        }
        if address.is_empty() {
            if let Some((_, task)) = running.take() {
                task.abort();
            }
            return Ok(None);
        }
        let addr: SocketAddr = address
            .parse()
            .map_err(|e| format!("metrics.address {address:?}: {e}"))?;
        let start = || {
            serve(
                addr,
                self.metrics.clone(),
                Some(self.store.clone()),
                self.shutdown.clone(),
            )
        };
        let started = match start().await {
            Ok(s) => Ok(s),
            Err(_) if running.is_some() => {
                if let Some((_, task)) = running.take() {
                    task.abort();
                    // The accept loop (and its listener) is gone once the
                    // aborted task has been polled.
                    let _ = task.await;
                }
                start().await
            }
            Err(e) => Err(e),
        };
        match started {
            Ok((bound, task)) => {
                if let Some((_, old)) = running.replace((address.to_string(), task)) {
                    old.abort();
                }
                Ok(Some(bound))
            }
            Err(e) => {
                if let Some((_, old)) = running.take() {
                    old.abort();
                }
                Err(format!("cannot serve metrics on {addr}: {e}"))
            }
        }
    }
}

/// [`serve`] within the given connection limits.
pub async fn serve_with_limits(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: Option<Arc<crius_store::Store>>,
    limits: crate::listener::Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(crate::listener::accept_loop(
        "metrics",
        listener,
        limits,
        shutdown,
        move |stream, peer| {
            let metrics = metrics.clone();
            let store = store.clone();
            async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let metrics = metrics.clone();
                        let store = store.clone();
                        async move { respond(&req, &metrics, store.as_deref()) }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = limits.http1().serve_connection(io, service).await {
                    tracing::debug!(%peer, error = %e, "metrics connection ended");
                }
            }
        },
    ));
    Ok((local, handle))
}

fn respond(
    req: &hyper::Request<hyper::body::Incoming>,
    metrics: &Metrics,
    store: Option<&crius_store::Store>,
) -> Result<hyper::Response<Full<Bytes>>, http::Error> {
    if req.uri().path() != "/metrics" || req.method() != hyper::Method::GET {
        return hyper::Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found\n")));
    }
    if let Some(store) = store {
        metrics.refresh(store);
    }
    hyper::Response::builder()
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(metrics.render())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        let cases = [
            (
                "/runtime.v1.RuntimeService/Version",
                "RuntimeService/Version",
            ),
            (
                "/runtime.v1.ImageService/PullImage",
                "ImageService/PullImage",
            ),
            ("/x", "x/"),
        ];
        for (path, want) in cases {
            assert_eq!(method_name(path), want);
        }
        assert_eq!(code_name(tonic::Code::InvalidArgument), "InvalidArgument");
    }

    #[test]
    fn nri_calls_by_plugin_and_event() {
        use crius_nri::runtime::Observer;
        use std::time::Duration;
        let metrics = Metrics::new().unwrap();
        // (plugin, event, took, ok)
        let calls = [
            ("10-a", "RunPodSandbox", 3, true),
            ("10-a", "RunPodSandbox", 30, true),
            ("10-a", "StartContainer", 1, false),
            ("20-b", "RunPodSandbox", 2000, false),
        ];
        for (p, e, ms, ok) in calls {
            metrics.observe(p, e, Duration::from_millis(ms), ok);
        }
        let text = metrics.render();
        for want in [
            r#"crius_nri_requests_total{event="RunPodSandbox",plugin="10-a",result="ok"} 2"#,
            r#"crius_nri_requests_total{event="StartContainer",plugin="10-a",result="error"} 1"#,
            r#"crius_nri_requests_total{event="RunPodSandbox",plugin="20-b",result="error"} 1"#,
            r#"crius_nri_request_duration_seconds_count{event="RunPodSandbox",plugin="10-a"} 2"#,
            r#"crius_nri_request_duration_seconds_sum{event="RunPodSandbox",plugin="10-a"} 0.033"#,
            r#"crius_nri_request_duration_seconds_bucket{event="RunPodSandbox",plugin="20-b",le="1"} 0"#,
            r#"crius_nri_request_duration_seconds_bucket{event="RunPodSandbox",plugin="20-b",le="2.5"} 1"#,
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        assert!(!text.contains(r#"plugin="20-b",result="ok""#), "{text}");
    }

    #[tokio::test]
    async fn layer_counts_and_endpoint_serves() {
        use tower::{Layer, Service, ServiceExt};
        let metrics = Arc::new(Metrics::new().unwrap());
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let mut resp = http::Response::new(());
            if req.uri().path().ends_with("/Fail") {
                resp.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("3"));
            }
            Ok::<_, std::convert::Infallible>(resp)
        });
        let mut svc = MetricsLayer::new(metrics.clone()).layer(inner);
        for path in [
            "/runtime.v1.RuntimeService/Version",
            "/runtime.v1.RuntimeService/Version",
            "/runtime.v1.RuntimeService/Fail",
        ] {
            let req = http::Request::builder().uri(path).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        let text = metrics.render();
        assert!(
            text.contains("crius_cri_requests_total{method=\"RuntimeService/Version\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "crius_cri_errors_total{code=\"InvalidArgument\",method=\"RuntimeService/Fail\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "crius_cri_request_duration_seconds_count{method=\"RuntimeService/Version\"} 2"
            ),
            "{text}"
        );

        let (tx, rx) = tokio::sync::watch::channel(false);
        let (addr, handle) = serve("127.0.0.1:0".parse().unwrap(), metrics, None, rx)
            .await
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("crius_cri_requests_total"), "{body}");
        tx.send(true).unwrap();
        handle.await.unwrap();
    }
}
