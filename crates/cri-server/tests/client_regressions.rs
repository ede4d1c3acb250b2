//! Regressions that real clients (kubectl through kubelet, crictl, client-go)
//! found and the earlier tests did not: localhost in a pod whose CNI
//! configuration has no `loopback` plugin, port-forward to a host-network
//! pod, attach to containers without a log path, and stdin of a streamed
//! exec that arrives before the process has started. The streaming steps
//! follow client-go's order of frames (see `common::stream_client`).

mod common;

use common::pod::*;
use common::registry::is_root;
use common::stream_client::*;
use futures_util::{SinkExt, StreamExt};
use k8s_cri::v1::{AttachRequest, ExecRequest, NamespaceMode, NamespaceOption, PortForwardRequest};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The tests of this file run one at a time (they share the test cgroup
/// tree, whose leftovers guard kills every process in it).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// busybox httpd serving `text` on `addr` (e.g. `127.0.0.1:8080`).
fn httpd(name: &str, image: &str, addr: &str, text: &str) -> k8s_cri::v1::ContainerConfig {
    let script = format!(
        "mkdir -p /tmp/www && echo {text} > /tmp/www/index.html && exec /bin/busybox httpd -f -p {addr} -h /tmp/www"
    );
    container(name, image, &["/bin/sh", "-c", &script])
}

/// Runs the pod and in it busybox httpd `web` serving `text` on `addr`;
/// returns the pod's id.
async fn pod_serving(
    env: &Env,
    rt: &mut Rt,
    config: &k8s_cri::v1::PodSandboxConfig,
    image: &str,
    addr: &str,
    text: &str,
) -> String {
    let pod_id = run_pod(env, rt, config).await;
    run(env, rt, &pod_id, config, httpd("web", image, addr, text)).await;
    pod_id
}

/// Port-forwards `port` of the pod until `want` comes back (the server
/// may not listen yet); returns the response.
async fn forward_until(rt: &mut Rt, pod_id: &str, port: u16, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod_id.into(),
                port: vec![port as i32],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let (data, error) =
            spdy_port_forward(&url, port, b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n").await;
        if data.contains(want) {
            assert!(error.is_empty(), "error stream: {error}");
            return data;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} of {pod_id}: data {data:?}, error {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn localhost_and_port_forward_without_a_loopback_plugin() {
    if !is_root() {
        eprintln!("client_regressions: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start_without_loopback("crius-nolo");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;

    // Two containers of one pod talk over 127.0.0.1, and port-forward
    // reaches a server that listens on 127.0.0.1 only.
    let config = pod("nolo", "uid-nolo");
    let pod_id = pod_serving(&env, &mut rt, &config, &image, "127.0.0.1:8080", "hello-lo").await;
    let side = run(
        &env,
        &mut rt,
        &pod_id,
        &config,
        container("side", &image, &["/bin/busybox", "sleep", "100000"]),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = exec(
            &mut rt,
            &side,
            &[
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/",
            ],
        )
        .await;
        if code == 0 && out.contains("hello-lo") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar to 127.0.0.1:8080: {code} {out:?} {err:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = forward_until(&mut rt, &pod_id, 8080, "hello-lo").await;
    assert!(page.contains("200 OK"), "{page}");
    // Nothing listens on 8081: the error stream says so, the data stream
    // ends, nothing hangs.
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![8081],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (data, error) = spdy_port_forward(&url, 8081, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(data.is_empty(), "{data}");
    assert!(
        error.contains("8081") && error.contains("refused"),
        "{error}"
    );
    teardown(&env, &mut rt, &pod_id, "uid-nolo").await;

    // A pod on the host's network: its localhost is the host's.
    let port = common::free_port();
    let mut config = pod("hostnet", "uid-hostnet");
    pod_security(&mut config).namespace_options = Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let addr = format!("127.0.0.1:{port}");
    let pod_id = pod_serving(&env, &mut rt, &config, &image, &addr, "hello-host").await;
    let page = forward_until(&mut rt, &pod_id, port, "hello-host").await;
    assert!(page.contains("200 OK"), "{page}");
    teardown(&env, &mut rt, &pod_id, "uid-hostnet").await;
}

/// Attaches over WebSocket v5 and reads stdout until it contains `want`,
/// after sending `input` (if any) on stdin.
async fn ws_attach_until(url: &str, input: Option<&[u8]>, want: &str) -> String {
    let (mut ws, proto) = ws_connect(url, "v5.channel.k8s.io").await;
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    if let Some(input) = input {
        ws.send(Message::Binary([&[0u8][..], input].concat().into()))
            .await
            .unwrap();
    }
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains(want) {
        assert!(Instant::now() < deadline, "attach output: {seen:?}");
        if let Ok(Some(Ok(Message::Binary(d)))) =
            tokio::time::timeout(Duration::from_secs(30), ws.next()).await
        {
            if d.first() == Some(&1) {
                seen.push_str(&String::from_utf8_lossy(&d[1..]));
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_with_and_without_a_log_path() {
    let Some(case) = Case::start(&SERIAL, "crius-attach", "attach").await else {
        return;
    };
    let (_guards, env, image, mut rt, config, _, pod_id) = case.split_running().await;
    let echo_loop = ["/bin/sh", "-c", "while read l; do echo got:$l; done"];
    let start = |name: &str, cmd: &[&str], log: bool, stdin: bool, once: bool, tty: bool| {
        let mut c = container(name, &image, cmd);
        if !log {
            c.log_path.clear();
        }
        c.stdin = stdin;
        c.stdin_once = once;
        c.tty = tty;
        let (env, pod_id, config) = (&env, pod_id.clone(), config.clone());
        let mut rt = rt.clone();
        async move { run(env, &mut rt, &pod_id, &config, c).await }
    };
    let plain = start("plain", &echo_loop, false, true, false, false).await;
    let logged = start("logged", &echo_loop, true, true, false, false).await;
    let once = start("once", &echo_loop, false, true, true, false).await;
    let tty = start("tty", &["/bin/sh"], false, true, false, true).await;
    let ticker = start(
        "ticker",
        &["/bin/sh", "-c", "while true; do echo tick; sleep 0.1; done"],
        false,
        false,
        false,
        false,
    )
    .await;
    let attach = |id: &str, stdin: bool, tty: bool| AttachRequest {
        container_id: id.into(),
        stdin,
        tty,
        stdout: true,
        stderr: !tty,
    };
    let url = |r: tonic::Response<k8s_cri::v1::AttachResponse>| r.into_inner().url;

    // No log path: output still reaches attached clients, stdin still
    // reaches the process.
    let u = url(rt.attach(attach(&plain, true, false)).await.unwrap());
    ws_attach_until(&u, Some(b"one\n"), "got:one").await;
    // Attaching twice works (the first client went away).
    let u = url(rt.attach(attach(&plain, true, false)).await.unwrap());
    ws_attach_until(&u, Some(b"two\n"), "got:two").await;
    // Output only, no stdin.
    let u = url(rt.attach(attach(&ticker, false, false)).await.unwrap());
    ws_attach_until(&u, None, "tick").await;
    // A terminal.
    let u = url(rt.attach(attach(&tty, true, true)).await.unwrap());
    ws_attach_until(&u, Some(b"echo tty-$((40+2))\n"), "tty-42").await;

    // With a log path: the output reaches the attached client and the log.
    let u = url(rt.attach(attach(&logged, true, false)).await.unwrap());
    ws_attach_until(&u, Some(b"logged\n"), "got:logged").await;
    let log = std::path::Path::new(&config.log_directory).join("logged/0.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("stdout F got:logged")
    {
        assert!(
            Instant::now() < deadline,
            "{} lacks the line",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // stdin_once over SPDY, the way client-go attaches: the input, then the
    // stdin stream's close, which closes the container's stdin: its loop
    // ends and it exits.
    let u = url(rt.attach(attach(&once, true, false)).await.unwrap());
    let (out, _) = spdy_exec_stdin(&u, b"last\n", false).await;
    assert!(out.contains("got:last"), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_of(&mut rt, &once).await;
        if s.state == k8s_cri::v1::ContainerState::ContainerExited as i32 {
            assert_eq!(s.exit_code, 0);
            break;
        }
        assert!(Instant::now() < deadline, "stdin_once container still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    teardown(&env, &mut rt, &pod_id, "uid-attach").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_stdin_sent_at_once_is_never_lost() {
    let Some(case) = Case::start(&SERIAL, "crius-stdin", "stdin").await else {
        return;
    };
    let (_guards, env, image, mut rt, config, _, pod_id) = case.split_running().await;
    let shell = run(
        &env,
        &mut rt,
        &pod_id,
        &config,
        container("shell", &image, &["/bin/busybox", "sleep", "100000"]),
    )
    .await;
    // Exits 0 only when it read both lines and its echo went out: a
    // missing count with a successful status means the output was lost
    // after the process wrote it.
    let count =
        "n=0; while read l; do n=$((n+1)); done; echo count:$n || exit 4; [ $n = 2 ] || exit 3";
    // The input goes out as soon as the streams are open, then its end:
    // `kubectl exec -i` with piped input. With a terminal the end is ^D.
    for round in 0..50 {
        for (spdy, tty) in [(true, false), (true, true), (false, false), (false, true)] {
            let url = rt
                .exec(ExecRequest {
                    container_id: shell.clone(),
                    cmd: ["/bin/sh", "-c", count].map(String::from).to_vec(),
                    tty,
                    stdin: true,
                    stdout: true,
                    stderr: !tty,
                })
                .await
                .unwrap()
                .into_inner()
                .url;
            let input: &[u8] = if tty {
                b"alpha\nbeta\n\x04"
            } else {
                b"alpha\nbeta\n"
            };
            let (out, status) = if spdy {
                spdy_exec_stdin(&url, input, tty).await
            } else {
                ws_exec_stdin(&url, input).await
            };
            assert!(
                out.contains("count:2"),
                "round {round}, spdy {spdy}, tty {tty}: stdout {out:?}, status {status:?}"
            );
        }
    }
    teardown(&env, &mut rt, &pod_id, "uid-stdin").await;
}
