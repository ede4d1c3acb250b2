//! Exec, attach and port-forward through criusd for real: the CRI call
//! returns a URL on criusd's streaming server, a client upgrades to SPDY or
//! WebSocket, and the work happens in a container of a running pod.

mod common;

use common::pod::*;
use common::stream_client::*;
use crius_cri_server::streaming::spdy::Frame;
use futures_util::SinkExt;
use k8s_cri::v1::{AttachRequest, ContainerConfig, ExecRequest, PortForwardRequest};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn container(name: &str, image: &str, cmd: &[&str], stdin: bool) -> ContainerConfig {
    ContainerConfig {
        stdin,
        // kubelet always sets a log path; attach fans out the logged output.
        log_path: format!("{name}.log"),
        ..common::pod::container(name, image, cmd)
    }
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn exec_attach_and_port_forward_in_a_pod() {
    let Some(case) = Case::start(&SERIAL, "crius-stream", "stream").await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid, pod_id) = case.split_running().await;
    let shell = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("shell", &image, &["/bin/busybox", "sleep", "100000"], false),
    )
    .await;
    let echo = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container(
            "echo",
            &image,
            &["/bin/sh", "-c", "while read l; do echo echo:$l; done"],
            true,
        ),
    )
    .await;
    let httpd = "mkdir -p /tmp/www && echo hello-httpd > /tmp/www/index.html && exec /bin/busybox httpd -f -p 8080 -h /tmp/www";
    let web = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("web", &image, &["/bin/sh", "-c", httpd], false),
    )
    .await;

    // SPDY exec: stdout, stderr and exit code 3 in a v4 status.
    let exec = |cmd: &[&str], stdin: bool, tty: bool| ExecRequest {
        container_id: shell.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    };
    let url = rt
        .exec(exec(
            &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        ))
        .await
        .unwrap()
        .into_inner()
        .url;
    let (status, _, client) = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 101);
    let mut c = client.unwrap();
    let error = c.open(&[("streamtype", "error")]).await;
    let stdout = c.open(&[("streamtype", "stdout")]).await;
    let stderr = c.open(&[("streamtype", "stderr")]).await;
    let got = c.collect(&[error, stdout, stderr]).await;
    assert_eq!(text(&got, stdout), "out\n");
    assert_eq!(text(&got, stderr), "err\n");
    let st: serde_json::Value = serde_json::from_str(&text(&got, error)).unwrap();
    assert_eq!(st["details"]["causes"][0]["message"], "3", "{st}");

    // The URL was single-use.
    let (status, _, _) = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 404);

    // SPDY TTY exec: a prompt, a resize visible through `stty size`.
    let url = rt
        .exec(exec(&["/bin/sh"], true, true))
        .await
        .unwrap()
        .into_inner()
        .url;
    let (_, _, client) = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await;
    let mut c = client.unwrap();
    let error = c.open(&[("streamtype", "error")]).await;
    let stdin = c.open(&[("streamtype", "stdin")]).await;
    let stdout = c.open(&[("streamtype", "stdout")]).await;
    let resize = c.open(&[("streamtype", "resize")]).await;
    c.data(resize, br#"{"Width":123,"Height":45}"#, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.data(stdin, b"stty size; exit 7\n", false).await;
    let got = c.collect(&[error, stdout]).await;
    let out = text(&got, stdout);
    assert!(out.contains("45 123"), "{out:?}");
    assert!(out.contains('#'), "no prompt in {out:?}");
    assert!(
        text(&got, error).contains("\"7\""),
        "{:?}",
        text(&got, error)
    );

    // WebSocket exec: stdin is delivered and its close ends `cat`.
    let url = rt
        .exec(exec(&["/bin/busybox", "cat"], true, false))
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, proto) = ws_connect(&url, "v5.channel.k8s.io").await;
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    let got = ws_stdin_then_collect(&mut ws, b"piped\n").await;
    assert_eq!(ch(&got, 1), "piped\n");
    assert!(ch(&got, 3).contains("Success"), "{:?}", ch(&got, 3));

    // Attach to a container that echoes its stdin.
    let url = rt
        .attach(AttachRequest {
            container_id: echo.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    ws.send(Message::Binary([&[0u8][..], b"ping\n"].concat().into()))
        .await
        .unwrap();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains("echo:ping") {
        assert!(
            std::time::Instant::now() < deadline,
            "attach output: {seen:?}"
        );
        use futures_util::StreamExt;
        if let Ok(Some(Ok(Message::Binary(d)))) =
            tokio::time::timeout(Duration::from_secs(30), ws.next()).await
        {
            if d.first() == Some(&1) {
                seen.push_str(&String::from_utf8_lossy(&d[1..]));
            }
        }
    }
    drop(ws);
    // Attach with stdin to a container created without it is refused.
    let err = rt
        .attach(AttachRequest {
            container_id: shell.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Port-forward over SPDY to busybox httpd in the pod.
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut page = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !page.contains("hello-httpd") {
        assert!(
            std::time::Instant::now() < deadline,
            "no page from httpd: {page:?}"
        );
        let url = if page.is_empty() {
            url.clone()
        } else {
            // httpd may not have been listening yet: a new URL for a retry.
            tokio::time::sleep(Duration::from_millis(200)).await;
            rt.port_forward(PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![8080],
            })
            .await
            .unwrap()
            .into_inner()
            .url
        };
        let (status, _, client) = SpdyClient::connect(&url, &["portforward.k8s.io"]).await;
        assert_eq!(status, 101);
        let mut c = client.unwrap();
        let err = c
            .open(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ])
            .await;
        let data = c
            .open(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
            .await;
        c.data(data, b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n", false)
            .await;
        let got = c.collect(&[data, err]).await;
        page = format!("{}{}", text(&got, data), text(&got, err));
        if page.is_empty() {
            page.push(' ');
        }
        let _ = c
            .send(Frame::GoAway {
                last_stream_id: 0,
                status: 0,
            })
            .await;
    }
    assert!(page.contains("200 OK"), "{page}");

    let _ = web;
    stop_and_remove_pod(&mut rt, &pod_id).await;
    assert!(
        mounts_below(&env.dir).is_empty(),
        "mounts left: {:?}",
        mounts_below(&env.dir)
    );
    assert!(cgroup_dirs(&uid).is_empty());
    remove_cgroup_parents(&uid);
}
