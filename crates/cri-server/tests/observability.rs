//! Metrics after a real pod lifecycle, and the pod start-up timeline.

mod common;

use common::pod::*;
use common::registry::is_root;
use k8s_cri::v1::{
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use std::time::Instant;

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

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_timeline_of_a_pod() {
    if !is_root() {
        eprintln!("observability: skipped (needs root)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let env = Env::start_with("crius-obs", &format!("[metrics]\naddress = \"{addr}\"\n"));
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
    let st = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let phases = info["timeline"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    // CNI ADD and the pause start run side by side: the one that finished
    // first comes first; the pod files need the IPs and come last.
    assert_eq!(
        names[..5],
        [
            "name_reservation",
            "image",
            "pause_spec_and_rootfs",
            "shim_spawn",
            "netns_and_shm",
        ]
    );
    let mut side_by_side = names[5..7].to_vec();
    side_by_side.sort();
    assert_eq!(
        side_by_side,
        ["cni_add", "pause_create_and_start"],
        "{names:?}"
    );
    assert_eq!(names[7..], ["pod_files"], "{names:?}");
    let total: u64 = phases.iter().map(|p| p["nanos"].as_u64().unwrap()).sum();
    assert!(phases.iter().all(|p| p["nanos"].as_u64().unwrap() > 0));
    assert!(total as u128 <= wall.as_nanos(), "{total} > {wall:?}");

    let body = scrape(&addr);
    assert_eq!(value(&body, "crius_pods{state=\"ready\"}"), 1.0);
    assert_eq!(
        value(&body, "crius_image_pulls_total{result=\"ok\"}"),
        1.0,
        "the pause image"
    );
    assert!(value(&body, "crius_image_pull_bytes_total") > 0.0);
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

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
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
