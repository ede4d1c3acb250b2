//! The sandbox service: netns and /dev/shm for the pod, the pause container,
//! a container joining them, and ShutdownSandbox leaving nothing behind
//! (also after a CreateSandbox that failed half-way).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use containerd_shim_protos::sandbox_api as sb;
use containerd_shim_protos::sandbox_sync::SandboxClient;

fn pid_alive(pid: u32) -> bool {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    !stat.is_empty() && !stat.contains(") Z")
}

/// `s` joined to the pod's network namespace `netns` and binding its
/// `/dev/shm` tmpfs `shm`, as a CRI client writes it (the shim edits no
/// spec).
fn in_pod(mut s: serde_json::Value, netns: &str, shm: &str) -> serde_json::Value {
    let nss = s["linux"]["namespaces"].as_array_mut().unwrap();
    nss.retain(|n| n["type"] != "network");
    nss.push(serde_json::json!({"type": "network", "path": netns}));
    s["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rw"]
    }));
    s
}

/// A test's shim (`None` when not root): the pod id `<prefix><pid>`, the
/// shim serving it and a sandbox client of it.
fn start(what: &str, prefix: &str) -> Option<(String, Shim, SandboxClient)> {
    if !root_or_skip(what) {
        return None;
    }
    prerequisites();
    let sid = format!("{prefix}{}", std::process::id());
    let shim = Shim::start(&sid, None);
    let sbc = SandboxClient::new(shim.raw.clone());
    Some((sid, shim, sbc))
}

/// ShutdownSandbox; the shim exits within 20 s.
fn shut_down(sbc: &SandboxClient, sid: &str, shim: &Shim) {
    let mut sh = sb::ShutdownSandboxRequest::new();
    sh.sandbox_id = sid.into();
    let _ = sbc.shutdown_sandbox(ctx(), &sh);
    assert!(
        eventually(Duration::from_secs(20), || !shim.alive()),
        "shim still running"
    );
}

#[test]
fn pod_lifecycle_and_cleanup() {
    let Some((sid, shim, sbc)) = start("sandbox", "pod") else {
        return;
    };
    let state = shim.path().join("state").join(&shim.namespace).join(&sid);

    // Half-way failure: the netns is made, the shm mount cannot be; nothing
    // may stay behind.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("shm"), b"in the way").unwrap();
    let pause_spec = in_pod(
        spec(&sid, &["sleep", "100000"], false),
        &state.join("netns").display().to_string(),
        &state.join("shm").display().to_string(),
    );
    let pause = bundle(shim.path(), &sid, &pause_spec);
    let mut creq = sb::CreateSandboxRequest::new();
    creq.sandbox_id = sid.clone();
    creq.bundle_path = pause.to_string_lossy().into_owned();
    creq.annotations
        .insert("io.crius.shim.shm-size".into(), "1048576".into());
    assert!(sbc.create_sandbox(ctx(), &creq).is_err());
    assert!(
        !state.join("netns").exists(),
        "netns left after failed create"
    );
    assert!(
        mounts_below(shim.path()).is_empty(),
        "{:?}",
        mounts_below(shim.path())
    );
    std::fs::remove_file(state.join("shm")).unwrap();

    // Now for real.
    sbc.create_sandbox(ctx(), &creq).unwrap();
    assert!(sbc.create_sandbox(ctx(), &creq).is_err(), "second create");
    let mut sreq = sb::SandboxStatusRequest::new();
    sreq.sandbox_id = sid.clone();
    let st = sbc.sandbox_status(ctx(), &sreq).unwrap();
    assert_eq!(st.state, "SANDBOX_CREATED");
    let netns = st.info.get("netns").cloned().expect("netns in info");
    let shm = st.info.get("shm").cloned().expect("shm in info");
    // Where the pause's spec above points.
    assert_eq!(netns, state.join("netns").display().to_string());
    assert_eq!(shm, state.join("shm").display().to_string());
    let mounts = read(Path::new("/proc/self/mountinfo"));
    let shm_line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(shm.as_str()))
        .expect("shm mounted");
    assert!(
        shm_line.contains("tmpfs") && shm_line.contains("size=1024k"),
        "{shm_line}"
    );
    assert!(
        shm_line.contains("nosuid") && shm_line.contains("nodev") && shm_line.contains("noexec"),
        "{shm_line}"
    );
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(netns.as_str())),
        "netns not mounted"
    );

    let mut start = sb::StartSandboxRequest::new();
    start.sandbox_id = sid.clone();
    let pause_pid = sbc.start_sandbox(ctx(), &start).unwrap().pid;
    assert!(pause_pid > 0);
    let ns_ino = std::fs::metadata(&netns).unwrap().ino();
    let pause_ns = std::fs::metadata(format!("/proc/{pause_pid}/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(ns_ino, pause_ns, "pause is not in the pod netns");
    assert_eq!(
        sbc.sandbox_status(ctx(), &sreq).unwrap().state,
        "SANDBOX_READY"
    );

    // A container of the pod joins the netns and shares /dev/shm.
    let cid = format!("app{}", std::process::id());
    let mut s = in_pod(
        spec(
            &cid,
            &["sh", "-c", "echo shared > /dev/shm/x; exec sleep 100000"],
            false,
        ),
        &netns,
        &shm,
    );
    s["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": sid});
    let b = bundle(shim.path(), &cid, &s);
    let app_pid = shim.create(&cid, &b, "", "", false);
    shim.start_task(&cid, "").unwrap();
    assert!(eventually(Duration::from_secs(20), || read(
        &Path::new(&shm).join("x")
    ) == "shared\n"));
    let app_ns = std::fs::metadata(format!("/proc/{app_pid}/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(app_ns, ns_ino);

    // A second `start` for a container of this pod finds the same shim.
    let out = std::process::Command::new(SHIM)
        .args([
            "-namespace",
            &shim.namespace,
            "-id",
            &cid,
            "-address",
            "/run/crius-test.sock",
            "start",
        ])
        .current_dir(&b)
        .env("CRIUS_SHIM_SOCKET_DIR", shim.path().join("s"))
        .env("CRIUS_SHIM_STATE_DIR", shim.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), shim.address);

    // Pod metrics are the pause container's cgroup metrics.
    let mut mreq = sb::SandboxMetricsRequest::new();
    mreq.sandbox_id = sid.clone();
    let m = sbc.sandbox_metrics(ctx(), &mreq).unwrap();
    assert_eq!(m.metrics.id, sid);
    assert_eq!(m.metrics.data.type_url, "io.containerd.cgroups.v1.Metrics");

    let mut ping = sb::PingRequest::new();
    ping.sandbox_id = sid.clone();
    sbc.ping_sandbox(ctx(), &ping).unwrap();
    ping.sandbox_id = "other".into();
    assert!(sbc.ping_sandbox(ctx(), &ping).is_err());
    let p = sbc.platform(ctx(), &sb::PlatformRequest::new()).unwrap();
    assert_eq!(p.platform.os, "linux");

    // ShutdownSandbox: everything goes, then the shim exits.
    shut_down(&sbc, &sid, &shim);
    assert!(
        !pid_alive(pause_pid) && !pid_alive(app_pid),
        "processes left"
    );
    assert!(
        mounts_below(shim.path()).is_empty(),
        "{:?}",
        mounts_below(shim.path())
    );
    assert!(!Path::new(&netns).exists(), "netns file left");
    assert!(!state.exists(), "state dir left");
}

#[test]
fn host_network_and_ipc_pod() {
    let Some((sid, shim, sbc)) = start("host pod", "hpod") else {
        return;
    };
    let mut s = spec(&sid, &["sleep", "100000"], false);
    s["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    let pause = bundle(shim.path(), &sid, &s);
    let mut creq = sb::CreateSandboxRequest::new();
    creq.sandbox_id = sid.clone();
    creq.bundle_path = pause.to_string_lossy().into_owned();
    creq.annotations
        .insert("io.crius.shim.network".into(), "host".into());
    creq.annotations
        .insert("io.crius.shim.ipc".into(), "host".into());
    sbc.create_sandbox(ctx(), &creq).unwrap();
    let mut sreq = sb::SandboxStatusRequest::new();
    sreq.sandbox_id = sid.clone();
    let st = sbc.sandbox_status(ctx(), &sreq).unwrap();
    assert!(st.info.is_empty(), "{:?}", st.info);
    assert!(mounts_below(shim.path()).is_empty());
    let mut start = sb::StartSandboxRequest::new();
    start.sandbox_id = sid.clone();
    let pid = sbc.start_sandbox(ctx(), &start).unwrap().pid;
    let host_ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        host_ns
    );

    // StopSandbox kills the pause; WaitSandbox returns its exit.
    let mut stop = sb::StopSandboxRequest::new();
    stop.sandbox_id = sid.clone();
    sbc.stop_sandbox(ctx(), &stop).unwrap();
    let mut w = sb::WaitSandboxRequest::new();
    w.sandbox_id = sid.clone();
    assert_eq!(sbc.wait_sandbox(ctx(), &w).unwrap().exit_status, 137);
    assert_eq!(
        sbc.sandbox_status(ctx(), &sreq).unwrap().state,
        "SANDBOX_NOTREADY"
    );
    shut_down(&sbc, &sid, &shim);
    assert!(!pid_alive(pid));
}

/// The `status` line `key` of a process, e.g. `Uid:`.
fn proc_status(pid: u32, key: &str) -> String {
    read(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn ns_ino(pid: u32, kind: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .ino()
}

#[test]
fn pid_holder_pod() {
    if !root_or_skip("pid holder pod") {
        return;
    }
    prerequisites();
    let sid = format!("ppod{}", std::process::id());
    let shim = Shim::start(&sid, None);
    let sbc = SandboxClient::new(shim.raw.clone());
    let mut creq = sb::CreateSandboxRequest::new();
    creq.sandbox_id = sid.clone();
    creq.bundle_path = shim.path().join(&sid).to_string_lossy().into_owned();
    for (k, v) in [
        ("io.crius.shim.infra", "pid-holder"),
        ("io.crius.shim.hostname", "held"),
        ("io.crius.shim.shm-size", "1048576"),
    ] {
        creq.annotations.insert(k.into(), v.into());
    }
    sbc.create_sandbox(ctx(), &creq).unwrap();
    let mut sreq = sb::SandboxStatusRequest::new();
    sreq.sandbox_id = sid.clone();
    let info = sbc.sandbox_status(ctx(), &sreq).unwrap().info;
    let (netns, ipc, uts, shm) = (&info["netns"], &info["ipc"], &info["uts"], &info["shm"]);
    let mut start = sb::StartSandboxRequest::new();
    start.sandbox_id = sid.clone();
    let holder = sbc.start_sandbox(ctx(), &start).unwrap().pid;
    assert!(holder > 1);
    assert_eq!(
        sbc.sandbox_status(ctx(), &sreq).unwrap().pid,
        holder,
        "status reports the holder"
    );

    // In the pod's pinned namespaces, a PID namespace of its own, confined.
    let me = std::process::id();
    for (kind, pin) in [("net", netns), ("ipc", ipc), ("uts", uts)] {
        assert_eq!(
            ns_ino(holder, kind),
            std::fs::metadata(pin).unwrap().ino(),
            "{kind}"
        );
    }
    assert_ne!(ns_ino(holder, "pid"), ns_ino(me, "pid"));
    assert_eq!(ns_ino(holder, "mnt"), ns_ino(me, "mnt"));
    assert_eq!(
        proc_status(holder, "NSpid:").split_whitespace().last(),
        Some("1")
    );
    assert_eq!(proc_status(holder, "Uid:"), "65535\t65535\t65535\t65535");
    assert_eq!(proc_status(holder, "Gid:"), "65535\t65535\t65535\t65535");
    assert_eq!(proc_status(holder, "Groups:"), "");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(proc_status(holder, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(proc_status(holder, "NoNewPrivs:"), "1");
    assert_eq!(proc_status(holder, "Seccomp:"), "2");
    // Named as itself, not as a shim: `crius-pid-holder <root>`, with the
    // command name to match (what `ps -e` and `pgrep` show).
    let cmdline = std::fs::read(format!("/proc/{holder}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    assert_eq!(args.len(), 2, "{:?}", String::from_utf8_lossy(&cmdline));
    assert_eq!(args[0], b"crius-pid-holder");
    assert!(
        args[1].ends_with(b"/holder-root"),
        "{:?}",
        String::from_utf8_lossy(args[1])
    );
    assert_eq!(proc_status(holder, "Name:"), "crius-pid-holde");
    let root = std::fs::read_link(format!("/proc/{holder}/root")).unwrap();
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "the holder's root {} is not empty",
        root.display()
    );
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{holder}/fd"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(fds, vec![Path::new("/dev/null"); 3], "{fds:?}");

    // A container of the pod joins the holder's PID namespace, where the
    // holder is 1 and the container's process is not.
    let cid = format!("papp{}", std::process::id());
    let mut s = spec(
        &cid,
        &["sh", "-c", "echo $$ > /dev/shm/pid; exec sleep 100000"],
        false,
    );
    let nss = s["linux"]["namespaces"].as_array_mut().unwrap();
    nss.retain(|n| !["network", "pid", "ipc", "uts"].contains(&n["type"].as_str().unwrap()));
    for (kind, path) in [
        ("network", netns.clone()),
        ("ipc", ipc.clone()),
        ("uts", uts.clone()),
        ("pid", format!("/proc/{holder}/ns/pid")),
    ] {
        nss.push(serde_json::json!({"type": kind, "path": path}));
    }
    s.as_object_mut().unwrap().remove("hostname");
    s["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rw"]
    }));
    s["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": sid});
    let b = bundle(shim.path(), &cid, &s);
    let app = shim.create(&cid, &b, "", "", false);
    shim.start_task(&cid, "").unwrap();
    assert_eq!(ns_ino(app, "pid"), ns_ino(holder, "pid"));
    let inside = Path::new(shm).join("pid");
    assert!(eventually(Duration::from_secs(10), || inside.exists()));
    let inner_pid: u32 = read(&inside).trim().parse().unwrap();
    assert!(
        inner_pid > 1,
        "the container's process is {inner_pid} inside"
    );

    // A WaitSandbox in flight returns when StopSandbox kills the holder,
    // and with it the whole PID namespace.
    let waiter = {
        let sbc = SandboxClient::new(shim.raw.clone());
        let sid = sid.clone();
        std::thread::spawn(move || {
            let mut w = sb::WaitSandboxRequest::new();
            w.sandbox_id = sid;
            sbc.wait_sandbox(ctx(), &w).map(|r| r.exit_status)
        })
    };
    let mut stop = sb::StopSandboxRequest::new();
    stop.sandbox_id = sid.clone();
    sbc.stop_sandbox(ctx(), &stop).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), 137);
    assert!(!pid_alive(holder), "holder alive after stop");
    assert!(!pid_alive(app), "container alive after stop");
    assert_eq!(
        sbc.sandbox_status(ctx(), &sreq).unwrap().state,
        "SANDBOX_NOTREADY"
    );
    let state = shim.path().join("state").join(&shim.namespace).join(&sid);
    let mut sh = sb::ShutdownSandboxRequest::new();
    sh.sandbox_id = sid.clone();
    let _ = sbc.shutdown_sandbox(ctx(), &sh);
    assert!(
        eventually(Duration::from_secs(20), || !shim.alive()),
        "shim still running"
    );
    assert!(!state.exists(), "pod directory left");
    assert!(mounts_below(shim.path()).is_empty());
}
