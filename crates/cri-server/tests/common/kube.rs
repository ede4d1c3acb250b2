//! A fake Kubernetes API server for driving criusd with the real `kubectl`,
//! and helpers to run kubectl against it.
//!
//! The server speaks plain HTTP/1.1 on 127.0.0.1 and serves what kubectl's
//! exec, attach and port-forward need: discovery (`/api`, `/apis`,
//! `/api/v1`, `/version`) and `GET` of the pods a test registered. Like
//! kubelet, it turns `.../pods/NAME/{exec,attach,portforward}` into the CRI
//! `Exec` / `Attach` / `PortForward` call on criusd, sends the client's
//! upgrade request on to the URL criusd returned (same method, the
//! upgrade headers, `Host` rewritten), relays the response head, and after
//! a `101` splices the two connections until either side closes: what
//! kubelet's streaming proxy (`proxy.UpgradeAwareHandler`) does.
//!
//! Every request is logged; the log is printed when a test panics while the
//! server is alive.

use bytes::{Buf, BytesMut};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tonic::transport::Channel;

/// The kubectl binary the tests run: `$CRIUS_TEST_KUBECTL` or
/// `/usr/bin/kubectl`.
pub fn kubectl_binary() -> Option<PathBuf> {
    let p = std::env::var_os("CRIUS_TEST_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));
    p.exists().then_some(p)
}

/// A container of a registered pod.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub name: String,
    /// The CRI container id.
    pub id: String,
    pub image: String,
    pub stdin: bool,
    /// The runtime closes its stdin when the first attach ends (`kubectl
    /// run -i` creates such containers).
    pub stdin_once: bool,
    pub tty: bool,
}

/// A pod as the fake API server reports it (always `Running`).
#[derive(Debug, Clone)]
pub struct FakePod {
    pub name: String,
    pub uid: String,
    /// The CRI pod sandbox id (for port-forward).
    pub sandbox_id: String,
    pub pod_ip: String,
    pub host_network: bool,
    pub containers: Vec<FakeContainer>,
}

impl FakePod {
    pub fn new(name: &str, uid: &str, sandbox_id: &str) -> FakePod {
        FakePod {
            name: name.into(),
            uid: uid.into(),
            sandbox_id: sandbox_id.into(),
            pod_ip: "10.0.0.1".into(),
            host_network: false,
            containers: Vec::new(),
        }
    }

    pub fn ip(mut self, ip: &str) -> FakePod {
        if !ip.is_empty() {
            self.pod_ip = ip.into();
        }
        self
    }

    pub fn host_network(mut self) -> FakePod {
        self.host_network = true;
        self
    }

    /// Adds a container (`id` is the CRI container id).
    pub fn container(
        mut self,
        name: &str,
        id: &str,
        image: &str,
        stdin: bool,
        tty: bool,
    ) -> FakePod {
        self.containers.push(FakeContainer {
            name: name.into(),
            id: id.into(),
            image: image.into(),
            stdin,
            stdin_once: false,
            tty,
        });
        self
    }

    /// Marks the container added last `stdinOnce`.
    pub fn stdin_once(mut self) -> FakePod {
        if let Some(c) = self.containers.last_mut() {
            c.stdin_once = true;
        }
        self
    }

    fn json(&self) -> serde_json::Value {
        const T: &str = "2024-01-01T00:00:00Z";
        let containers: Vec<_> = self
            .containers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "image": c.image, "stdin": c.stdin,
                    "stdinOnce": c.stdin_once, "tty": c.tty,
                    "imagePullPolicy": "IfNotPresent",
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "resources": {},
                })
            })
            .collect();
        let statuses: Vec<_> = self
            .containers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "ready": true, "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": T}},
                    "image": c.image, "imageID": "", "containerID": format!("crius://{}", c.id),
                })
            })
            .collect();
        serde_json::json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name, "namespace": "default", "uid": self.uid,
                "resourceVersion": "1", "creationTimestamp": T,
            },
            "spec": {
                "containers": containers,
                "hostNetwork": self.host_network,
                "nodeName": "crius-test-node",
                "restartPolicy": "Always",
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": T}],
                "hostIP": "127.0.0.1",
                "podIP": self.pod_ip,
                "podIPs": [{"ip": self.pod_ip}],
                "startTime": T,
                "containerStatuses": statuses,
            },
        })
    }
}

/// One request the fake API server got, and what became of it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub target: String,
    /// The headers worth seeing (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The response, the CRI URL, the negotiated protocol, errors.
    pub outcome: String,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.target)?;
        for (k, v) in &self.headers {
            write!(f, "\n    {k}: {v}")?;
        }
        write!(f, "\n    => {}", self.outcome)
    }
}

/// Headers recorded in the log.
const LOGGED_HEADERS: &[&str] = &[
    "accept",
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-protocol",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
    "user-agent",
];

/// Headers of the client's upgrade request sent on to criusd (besides a
/// rewritten `Host`).
const FORWARDED_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "user-agent",
    "content-length",
];

struct State {
    addr: SocketAddr,
    runtime: RuntimeServiceClient<Channel>,
    pods: Mutex<HashMap<String, FakePod>>,
    log: Mutex<Vec<Logged>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl State {
    fn log_request(&self, req: &HttpReq) -> usize {
        let headers = req
            .headers
            .iter()
            .filter(|(k, _)| LOGGED_HEADERS.contains(&k.to_ascii_lowercase().as_str()))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let mut log = self.log.lock().unwrap();
        log.push(Logged {
            method: req.method.clone(),
            target: req.target.clone(),
            headers,
            outcome: "(no response yet)".into(),
        });
        log.len() - 1
    }

    fn append_outcome(&self, idx: usize, text: &str) {
        if let Some(l) = self.log.lock().unwrap().get_mut(idx) {
            l.outcome.push_str(text);
        }
    }

    fn outcome(&self, idx: usize, text: String) {
        if let Some(l) = self.log.lock().unwrap().get_mut(idx) {
            l.outcome = text;
        }
    }
}

/// The fake API server; stops (and prints its log if the thread is
/// panicking) on drop.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1 (a free port); CRI calls go to `runtime`.
    pub async fn start(runtime: RuntimeServiceClient<Channel>) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake apiserver");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            addr,
            runtime,
            pods: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let t = tokio::spawn(serve_connection(stream, st.clone()));
                let mut tasks = st.tasks.lock().unwrap();
                tasks.retain(|t| !t.is_finished());
                tasks.push(t.abort_handle());
            }
        });
        FakeApiServer { addr, state, task }
    }

    /// Registers (or replaces) a pod.
    pub fn add_pod(&self, pod: FakePod) {
        self.state
            .pods
            .lock()
            .unwrap()
            .insert(pod.name.clone(), pod);
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// The requests so far, one after the other.
    pub fn log_text(&self) -> String {
        self.requests()
            .iter()
            .enumerate()
            .map(|(i, l)| format!("[{i}] {l}\n"))
            .collect()
    }

    /// How many requests satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Logged) -> bool) -> usize {
        self.requests().iter().filter(|l| pred(l)).count()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- fake apiserver {} requests ----\n{}---- end of requests ----",
                self.addr,
                self.log_text()
            );
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone)]
struct HttpReq {
    method: String,
    target: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

impl HttpReq {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn params(&self, name: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1" | "True"))
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the end of a head (`\r\n\r\n`); returns its length, or
/// `None` on EOF before any byte.
async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() > 256 * 1024 {
            return Err(std::io::Error::other("head too large"));
        }
        if s.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads a request head off `buf`/`s`; the bytes after it stay in `buf`.
async fn read_request(s: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Option<HttpReq>> {
    let Some(end) = read_head(s, buf).await? else {
        return Ok(None);
    };
    let head = buf.split_to(end);
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k), url_decode(v))
        })
        .collect();
    Ok(Some(HttpReq {
        method,
        path: path.to_string(),
        target,
        query,
        headers,
    }))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Unknown",
    }
}

async fn respond(
    s: &mut TcpStream,
    code: u16,
    body: &serde_json::Value,
    close: bool,
) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        reason_phrase(code),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.flush().await
}

fn status_json(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// `(namespace, pod, subresource)` of a pod path.
fn pod_route(path: &str) -> Option<(String, String, Option<String>)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, "pods", name] => Some((ns.to_string(), name.to_string(), None)),
        [ns, "pods", name, sub] => Some((ns.to_string(), name.to_string(), Some(sub.to_string()))),
        _ => None,
    }
}

fn discovery(path: &str, addr: SocketAddr) -> Option<serde_json::Value> {
    let sub = |name: &str, kind: &str, verbs: &[&str]| serde_json::json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
    Some(match path {
        "/version" => serde_json::json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0-crius-fake",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2024-01-01T00:00:00Z", "goVersion": "go1.23.0",
            "compiler": "gc", "platform": "linux/amd64",
        }),
        "/api" => serde_json::json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
        }),
        "/apis" => serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        "/api/v1" => serde_json::json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
            "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "list"], "shortNames": ["po"], "categories": ["all"]},
                sub("pods/attach", "PodAttachOptions", &["create", "get"]),
                sub("pods/exec", "PodExecOptions", &["create", "get"]),
                sub("pods/log", "Pod", &["get"]),
                sub("pods/portforward", "PodPortForwardOptions", &["create", "get"]),
            ],
        }),
        _ => return None,
    })
}

async fn serve_connection(mut s: TcpStream, st: Arc<State>) {
    let mut buf = BytesMut::new();
    loop {
        let req = match read_request(&mut s, &mut buf).await {
            Ok(Some(r)) => r,
            _ => return,
        };
        let idx = st.log_request(&req);
        if req.header("transfer-encoding").is_some() {
            st.outcome(idx, "400: chunked bodies are not supported".into());
            let _ = respond(
                &mut s,
                400,
                &status_json(400, "BadRequest", "chunked body"),
                true,
            )
            .await;
            return;
        }
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if let Some((ns, name, Some(sub))) = pod_route(&req.path) {
            if matches!(sub.as_str(), "exec" | "attach" | "portforward") {
                // The upgrade requests carry no body; whatever follows the
                // head goes on to criusd.
                stream_request(s, buf, req, ns, name, sub, idx, st).await;
                return;
            }
        }
        while buf.len() < len {
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        buf.advance(len);
        let (code, body) = route(&req, &st);
        st.outcome(idx, format!("{code}"));
        if respond(&mut s, code, &body, false).await.is_err() {
            return;
        }
    }
}

fn route(req: &HttpReq, st: &State) -> (u16, serde_json::Value) {
    if req.method != "GET" {
        return (
            405,
            status_json(405, "MethodNotAllowed", "method not allowed"),
        );
    }
    if let Some(body) = discovery(&req.path, st.addr) {
        return (200, body);
    }
    if let Some((ns, name, None)) = pod_route(&req.path) {
        let pod = st.pods.lock().unwrap().get(&name).cloned();
        return match pod {
            Some(p) if ns == "default" => (200, p.json()),
            _ => (
                404,
                status_json(404, "NotFound", &format!("pods \"{name}\" not found")),
            ),
        };
    }
    (
        404,
        status_json(
            404,
            "NotFound",
            &format!(
                "the server could not find the requested resource ({})",
                req.path
            ),
        ),
    )
}

fn grpc_error(what: &str, e: tonic::Status) -> (u16, &'static str, String) {
    let code = match e.code() {
        tonic::Code::NotFound => 404,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => 400,
        _ => 500,
    };
    let reason = match code {
        404 => "NotFound",
        400 => "BadRequest",
        _ => "InternalError",
    };
    (code, reason, format!("{what}: {}", e.message()))
}

/// The CRI call behind a streaming subresource: the URL to proxy to.
async fn cri_url(
    req: &HttpReq,
    st: &State,
    ns: &str,
    name: &str,
    sub: &str,
) -> Result<String, (u16, &'static str, String)> {
    let pod = st
        .pods
        .lock()
        .unwrap()
        .get(name)
        .cloned()
        .filter(|_| ns == "default")
        .ok_or_else(|| (404, "NotFound", format!("pods \"{name}\" not found")))?;
    let mut rt = st.runtime.clone();
    let container = || -> Result<FakeContainer, (u16, &'static str, String)> {
        let wanted = req.param("container").unwrap_or("");
        let c = if wanted.is_empty() {
            pod.containers.first()
        } else {
            pod.containers.iter().find(|c| c.name == wanted)
        };
        c.cloned().ok_or_else(|| {
            (
                400,
                "BadRequest",
                format!("container {wanted} is not valid for pod {name}"),
            )
        })
    };
    match sub {
        "exec" => {
            let c = container()?;
            let r = ExecRequest {
                container_id: c.id,
                cmd: req.params("command"),
                tty: req.flag("tty"),
                stdin: req.flag("stdin"),
                stdout: req.flag("stdout"),
                stderr: req.flag("stderr"),
            };
            rt.exec(r)
                .await
                .map(|r| r.into_inner().url)
                .map_err(|e| grpc_error("CRI Exec", e))
        }
        "attach" => {
            let c = container()?;
            let r = AttachRequest {
                container_id: c.id,
                stdin: req.flag("stdin"),
                tty: req.flag("tty"),
                stdout: req.flag("stdout"),
                stderr: req.flag("stderr"),
            };
            rt.attach(r)
                .await
                .map(|r| r.into_inner().url)
                .map_err(|e| grpc_error("CRI Attach", e))
        }
        _ => {
            let mut port = Vec::new();
            for v in req.params("ports").into_iter().chain(req.params("port")) {
                for p in v.split(',').filter(|p| !p.is_empty()) {
                    port.push(
                        p.trim()
                            .parse::<i32>()
                            .map_err(|_| (400, "BadRequest", format!("invalid port {p:?}")))?,
                    );
                }
            }
            let r = PortForwardRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                port,
            };
            rt.port_forward(r)
                .await
                .map(|r| r.into_inner().url)
                .map_err(|e| grpc_error("CRI PortForward", e))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_request(
    mut client: TcpStream,
    leftover: BytesMut,
    req: HttpReq,
    ns: String,
    name: String,
    sub: String,
    idx: usize,
    st: Arc<State>,
) {
    let url = match cri_url(&req, &st, &ns, &name, &sub).await {
        Ok(u) => u,
        Err((code, reason, msg)) => {
            st.outcome(idx, format!("{code}: {msg}"));
            let _ = respond(&mut client, code, &status_json(code, reason, &msg), true).await;
            return;
        }
    };
    let fail = |msg: String| (502u16, "InternalError", msg);
    let result: Result<(), (u16, &'static str, String)> = async {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| fail(format!("unsupported streaming URL {url}")))?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut up = TcpStream::connect(host)
            .await
            .map_err(|e| fail(format!("cannot connect to {url}: {e}")))?;
        let mut head = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", req.method);
        for (k, v) in &req.headers {
            if FORWARDED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        up.write_all(head.as_bytes())
            .await
            .map_err(|e| fail(format!("sending to {url}: {e}")))?;
        if !leftover.is_empty() {
            up.write_all(&leftover)
                .await
                .map_err(|e| fail(format!("sending to {url}: {e}")))?;
        }
        let mut rbuf = BytesMut::new();
        let end = tokio::time::timeout(Duration::from_secs(30), read_head(&mut up, &mut rbuf))
            .await
            .map_err(|_| fail(format!("no response head from {url} in 30 s")))?
            .map_err(|e| fail(format!("reading the response of {url}: {e}")))?
            .ok_or_else(|| fail(format!("{url} closed without a response")))?;
        let resp_head = String::from_utf8_lossy(&rbuf[..end]).into_owned();
        let status_line = resp_head.lines().next().unwrap_or("").to_string();
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let resp_header = |name: &str| {
            resp_head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let proto = resp_header("sec-websocket-protocol")
            .or_else(|| resp_header("x-stream-protocol-version"))
            .unwrap_or_default();
        st.outcome(
            idx,
            format!("proxied to {url}: {status_line} (protocol {proto:?})"),
        );
        // Relay the head (and anything read past it) as it is.
        client
            .write_all(&rbuf)
            .await
            .map_err(|e| fail(format!("relaying to the client: {e}")))?;
        if code == 101 {
            let r = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            st.append_outcome(
                idx,
                &match r {
                    Ok((a, b)) => format!("; spliced {a} bytes up, {b} down"),
                    Err(e) => format!("; splice ended: {e}"),
                },
            );
        } else {
            // Relay the error body, then close.
            let len: usize = resp_header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut have = rbuf.len() - end;
            let mut chunk = [0u8; 8192];
            while have < len {
                let n = match tokio::time::timeout(Duration::from_secs(10), up.read(&mut chunk))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => break,
                };
                have += n;
                let _ = client.write_all(&chunk[..n]).await;
            }
            let body = String::from_utf8_lossy(&rbuf[end..]).into_owned();
            st.append_outcome(idx, &format!("; body {body:?}"));
            let _ = client.shutdown().await;
        }
        Ok(())
    }
    .await;
    if let Err((code, reason, msg)) = result {
        st.outcome(idx, format!("{code}: {msg}"));
        let _ = respond(&mut client, code, &status_json(code, reason, &msg), true).await;
    }
}

/// What a finished kubectl run left.
#[derive(Debug)]
pub struct KubectlOutput {
    pub args: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for KubectlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kubectl {}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }
}

/// kubectl on a kubeconfig that points at a fake API server.
pub struct Kubectl {
    pub bin: PathBuf,
    /// `HOME` of kubectl; holds the kubeconfig and the cache.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// Longest a `run` may take before kubectl is killed.
    pub timeout: Duration,
}

impl Kubectl {
    /// Writes the kubeconfig under `dir` (created); `None` without kubectl.
    pub fn new(dir: &Path, server: &FakeApiServer) -> Option<Kubectl> {
        let bin = kubectl_binary()?;
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
                server.addr
            ),
        )
        .unwrap();
        Some(Kubectl {
            bin,
            dir: dir.to_path_buf(),
            kubeconfig,
            timeout: Duration::from_secs(60),
        })
    }

    /// kubectl with `args` (after the global flags) and more environment,
    /// killed on drop; stdio is left to the caller.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
        let cache = self.dir.join("cache");
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=30s")
            .arg(format!("--cache-dir={}", cache.display()));
        if let Ok(v) = std::env::var("CRIUS_TEST_KUBECTL_V") {
            cmd.arg(format!("-v={v}"));
        }
        cmd.args(args)
            .env("HOME", &self.dir)
            .env("KUBECACHEDIR", &cache)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("KUBECTL_REMOTE_COMMAND_WEBSOCKETS")
            .env_remove("KUBECTL_PORT_FORWARD_WEBSOCKETS")
            .envs(env.iter().copied())
            .kill_on_drop(true);
        cmd
    }

    /// Starts kubectl with `args` (after the global flags) and more
    /// environment; stdin, stdout and stderr are pipes.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> KubectlProc {
        let mut cmd = self.command(args, env);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let reader = |mut r: Box<dyn AsyncRead + Unpin + Send>, sink: Arc<Mutex<Vec<u8>>>| {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        let readers = vec![
            reader(Box::new(child.stdout.take().unwrap()), out.clone()),
            reader(Box::new(child.stderr.take().unwrap()), err.clone()),
        ];
        KubectlProc {
            args: args.join(" "),
            stdin: child.stdin.take(),
            child,
            out,
            err,
            readers,
        }
    }

    /// Starts kubectl with `args` on a new pseudo-terminal of `rows` x
    /// `cols` (its stdin, stdout and stderr, and its controlling terminal,
    /// so that resizing it sends kubectl `SIGWINCH`): what a user at a
    /// terminal runs.
    pub fn spawn_on_pty(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        rows: u16,
        cols: u16,
    ) -> PtyKubectl {
        let (master, slave) = open_pty(rows, cols);
        let mut cmd = self.command(args, env);
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn kubectl");
        // The slave's copies held by `cmd` go: kubectl (and what it
        // starts) is all that has it open, and the master reads EOF/EIO
        // once kubectl is gone.
        drop(cmd);
        // SAFETY: the AsyncFd owns the descriptor, open until it drops.
        let master = unsafe { tokio::io::unix::AsyncFd::register(master) };
        let master = Arc::new(master.expect("register the pty with tokio"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (m, sink) = (master.clone(), out.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            loop {
                let Ok(mut ready) = m.readable().await else {
                    return;
                };
                let r = ready.try_io(|fd| {
                    // SAFETY: reading into a buffer of the given length.
                    let n =
                        unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                match r {
                    Ok(Ok(0)) => return,
                    Ok(Ok(n)) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                    // EIO: every slave descriptor is closed.
                    Ok(Err(_)) => return,
                    Err(_would_block) => {}
                }
            }
        });
        PtyKubectl {
            args: args.join(" "),
            child,
            master,
            out,
            reader: Some(reader),
        }
    }

    /// Runs kubectl to the end with `stdin` piped in (then closed); kills
    /// it and panics after [`Kubectl::timeout`].
    pub async fn run(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> KubectlOutput {
        let mut p = self.spawn(args, env);
        p.write_stdin(stdin).await;
        p.close_stdin();
        match p.wait(self.timeout).await {
            Some(status) => KubectlOutput {
                args: p.args.clone(),
                status,
                stdout: p.stdout(),
                stderr: p.stderr(),
            },
            None => {
                p.kill().await;
                panic!(
                    "kubectl {} did not finish within {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    p.args,
                    self.timeout,
                    p.stdout(),
                    p.stderr()
                );
            }
        }
    }

    /// Starts `kubectl port-forward pod/POD :REMOTE` on 127.0.0.1 and waits
    /// for its "Forwarding from" line; panics if it exits first.
    pub async fn port_forward(&self, pod: &str, remote: u16, env: &[(&str, &str)]) -> PortForward {
        let target = format!("pod/{pod}");
        let ports = format!(":{remote}");
        let mut p = self.spawn(
            &["port-forward", "--address", "127.0.0.1", &target, &ports],
            env,
        );
        let deadline = Instant::now() + self.timeout;
        loop {
            let out = p.stdout();
            if let Some(rest) = out.split("Forwarding from 127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if rest.len() > digits.len() {
                    if let Ok(local_port) = digits.parse() {
                        return PortForward {
                            proc: p,
                            local_port,
                        };
                    }
                }
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                p.drain_readers().await;
                panic!(
                    "kubectl {} exited ({status}) before forwarding\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    p.args,
                    p.stdout(),
                    p.stderr()
                );
            }
            if Instant::now() > deadline {
                p.kill().await;
                panic!(
                    "kubectl {} printed no \"Forwarding from\" line in {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    p.args,
                    self.timeout,
                    p.stdout(),
                    p.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running kubectl; killed on drop.
pub struct KubectlProc {
    pub args: String,
    pub child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl KubectlProc {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Writes to kubectl's stdin (errors, e.g. kubectl already gone, are
    /// ignored: the output checks tell).
    pub async fn write_stdin(&mut self, data: &[u8]) {
        if let Some(w) = self.stdin.as_mut() {
            if !data.is_empty() {
                let _ = w.write_all(data).await;
                let _ = w.flush().await;
            }
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until `pred(stdout, stderr)` holds; false after `timeout` or
    /// when kubectl exited without it holding.
    pub async fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str, &str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stdout(), &self.stderr()) {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                self.drain_readers().await;
                return pred(&self.stdout(), &self.stderr());
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) for kubectl to exit and its output to be read.
    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .ok()?;
        self.drain_readers().await;
        Some(status)
    }

    async fn drain_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
    }

    /// Kills kubectl (if still running) and reaps it.
    pub async fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill().await;
        self.drain_readers().await;
    }

    /// Whether kubectl is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for KubectlProc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for r in &self.readers {
            r.abort();
        }
    }
}

/// A `kubectl port-forward` in the background; killed on drop.
pub struct PortForward {
    pub proc: KubectlProc,
    pub local_port: u16,
}

/// A new pseudo-terminal pair `(master, slave)` of size `ws`, with the
/// descriptors' default flags.
pub fn openpty(ws: &libc::winsize) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty fills in two descriptors; the name buffer and the
    // termios may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            ws,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two open descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// A new pseudo-terminal pair `(master, slave)` of `rows` x `cols`, both
/// close-on-exec (the slave is dup'ed onto the child's stdio) and the
/// master non-blocking.
fn open_pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (master, slave) = openpty(&libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    for (fd, nonblock) in [(&master, true), (&slave, false)] {
        // SAFETY: fcntl on a descriptor owned here.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
            if nonblock {
                let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
    }
    (master, slave)
}

/// kubectl on a pseudo-terminal (see [`Kubectl::spawn_on_pty`]); killed
/// on drop.
pub struct PtyKubectl {
    pub args: String,
    pub child: tokio::process::Child,
    master: Arc<tokio::io::unix::AsyncFd<OwnedFd>>,
    out: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl PtyKubectl {
    /// Everything written to the terminal so far (kubectl's and, through
    /// it, the container's).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Types `data` at the terminal.
    pub async fn type_in(&self, data: &[u8]) {
        let mut rest = data;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rest.is_empty() {
            // SAFETY: writing from a buffer of the given length.
            let n = unsafe {
                libc::write(
                    self.master.get_ref().as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                )
            };
            if n > 0 {
                rest = &rest[n as usize..];
                continue;
            }
            let e = std::io::Error::last_os_error();
            assert!(
                n < 0 && e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline,
                "writing to the terminal of kubectl {}: {e}",
                self.args
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resizes the terminal (the kernel sends kubectl `SIGWINCH`).
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize.
        let r = unsafe { libc::ioctl(self.master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Waits until `pred(output)` holds; false after `timeout` or when
    /// kubectl exited without it holding.
    pub async fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.output()) {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                self.drain().await;
                return pred(&self.output());
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Types `keys`, again every half second, until `pred(output)` holds;
    /// false after `timeout` or when kubectl exited without it holding.
    pub async fn type_until(
        &mut self,
        keys: &[u8],
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.type_in(keys).await;
            if self.wait_for(Duration::from_millis(500), &pred).await {
                return true;
            }
            if Instant::now() > deadline || !self.running() {
                return false;
            }
        }
    }

    /// Waits (bounded) for kubectl to exit and the terminal to be read.
    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .ok()?;
        self.drain().await;
        Some(status)
    }

    async fn drain(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
    }

    /// Kills kubectl (if still running) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
        self.drain().await;
    }

    /// Whether kubectl is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PtyKubectl {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(r) = &self.reader {
            r.abort();
        }
    }
}
