//! The task service driven over ttrpc: a real shim, runc and busybox.

mod common;

use std::time::Duration;

use common::*;
use containerd_shim_protos::api;

#[test]
fn lifecycle_exec_kill_wait_delete() {
    if !root_or_skip("lifecycle") {
        return;
    }
    prerequisites();
    let events = tempfile::tempdir().unwrap();
    let ev_sock = events.path().join("events.sock");
    let (sink, _server) = events_server(&ev_sock);
    let shim = Shim::start("life", Some(&ev_sock));
    let id = format!("life{}", std::process::id());
    let b = bundle(
        shim.path(),
        &id,
        &spec(&id, &["sh", "-c", "echo started; exec sleep 100000"], false),
    );
    let out = shim.path().join("out.txt");
    let outs = format!("file://{}", out.display());
    let pid = shim.create(&id, &b, &outs, &outs, false);
    assert!(pid > 0);
    assert_eq!(
        shim.state(&id, "").status,
        containerd_shim_protos::types::task::Status::CREATED.into()
    );
    assert_eq!(shim.start_task(&id, "").unwrap(), pid);
    assert_eq!(
        shim.state(&id, "").status,
        containerd_shim_protos::types::task::Status::RUNNING.into()
    );
    assert!(eventually(Duration::from_secs(10), || read(&out).contains("started")));

    // An exec with its own output, exit code 3.
    let xout = shim.path().join("exec.txt");
    shim.exec(
        &id,
        "x1",
        &["sh", "-c", "echo from-exec; exit 3"],
        false,
        "",
        &format!("file://{}", xout.display()),
    );
    let xpid = shim.start_task(&id, "x1").unwrap();
    assert!(xpid > 0 && xpid != pid);
    assert_eq!(shim.wait(&id, "x1"), 3);
    assert!(read(&xout).contains("from-exec"));
    let d = shim.delete(&id, "x1").unwrap();
    assert_eq!(d.exit_status, 3);
    assert!(shim.delete(&id, "x1").is_err(), "exec deleted twice");

    // Pids lists the init.
    let mut preq = api::PidsRequest::new();
    preq.id = id.clone();
    let pids = shim.client.pids(ctx(), &preq).unwrap();
    assert!(
        pids.processes.iter().any(|p| p.pid == pid),
        "{:?}",
        pids.processes
    );

    // Stats report the cgroup.
    let mut sreq = api::StatsRequest::new();
    sreq.id = id.clone();
    let st = shim.client.stats(ctx(), &sreq).unwrap();
    assert_eq!(st.stats.type_url, "io.containerd.cgroups.v1.Metrics");
    assert!(!st.stats.value.is_empty());

    // Update: a pids limit lands in the cgroup.
    let mut ureq = api::UpdateTaskRequest::new();
    ureq.id = id.clone();
    let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = br#"{"pids":{"limit":77}}"#.to_vec();
    ureq.resources = Some(any).into();
    shim.client.update(ctx(), &ureq).unwrap();
    let pids_max = std::path::Path::new("/sys/fs/cgroup/pids")
        .join(cgroup_path(&id).trim_start_matches('/'))
        .join("pids.max");
    assert_eq!(read(&pids_max).trim(), "77");

    // Pause / resume.
    let mut pr = api::PauseRequest::new();
    pr.id = id.clone();
    shim.client.pause(ctx(), &pr).unwrap();
    assert_eq!(
        shim.state(&id, "").status,
        containerd_shim_protos::types::task::Status::PAUSED.into()
    );
    let mut rr = api::ResumeRequest::new();
    rr.id = id.clone();
    shim.client.resume(ctx(), &rr).unwrap();
    assert_eq!(
        shim.state(&id, "").status,
        containerd_shim_protos::types::task::Status::RUNNING.into()
    );

    // A running container cannot be deleted.
    assert!(shim.delete(&id, "").is_err());

    // Checkpoint is refused clearly.
    let mut cr = api::CheckpointTaskRequest::new();
    cr.id = id.clone();
    let err = shim.client.checkpoint(ctx(), &cr).unwrap_err();
    assert!(format!("{err:?}").contains("not supported"), "{err:?}");

    shim.kill(&id, "", 9, false).unwrap();
    assert_eq!(shim.wait(&id, ""), 137);
    let st = shim.state(&id, "");
    assert_eq!(
        st.status,
        containerd_shim_protos::types::task::Status::STOPPED.into()
    );
    assert_eq!(st.exit_status, 137);
    assert!(shim.kill(&id, "", 9, false).is_err(), "kill after exit");
    let d = shim.delete(&id, "").unwrap();
    assert_eq!(d.exit_status, 137);
    assert!(
        shim.delete(&id, "").is_err(),
        "second delete must say not found"
    );

    // Events, in order, once each.
    assert!(sink.wait_until(Duration::from_secs(10), |v| v
        .iter()
        .any(|(t, _, _)| t == "/tasks/delete")));
    let topics = sink.topics_for(&id);
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete"
        ]
        .iter()
        .filter(|t| **t != "/tasks/paused" && **t != "/tasks/resumed")
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    );

    // No task left: Shutdown makes the shim exit and remove its socket.
    shim.shutdown();
    assert!(
        eventually(Duration::from_secs(10), || !shim.alive()),
        "shim still running"
    );
    let sock = shim.address.trim_start_matches("unix://").to_string();
    assert!(!std::path::Path::new(&sock).exists(), "socket left behind");
}

#[test]
fn exits_racing_start_are_delivered_once() {
    if !root_or_skip("exit race") {
        return;
    }
    prerequisites();
    let shim = Shim::start("race", None);
    for i in 0..10 {
        let id = format!("race{}-{i}", std::process::id());
        let b = bundle(shim.path(), &id, &spec(&id, &["true"], false));
        shim.create(&id, &b, "", "", false);
        shim.start_task(&id, "").unwrap();
        assert_eq!(shim.wait(&id, ""), 0);
        // An exec whose process exits at once.
        assert_eq!(shim.delete(&id, "").unwrap().exit_status, 0);
    }
    // Execs racing with runc exec returning.
    let id = format!("racex{}", std::process::id());
    let b = bundle(shim.path(), &id, &spec(&id, &["sleep", "100000"], false));
    shim.create(&id, &b, "", "", false);
    shim.start_task(&id, "").unwrap();
    for i in 0..10 {
        let x = format!("e{i}");
        shim.exec(&id, &x, &["sh", "-c", &format!("exit {i}")], false, "", "");
        shim.start_task(&id, &x).unwrap();
        assert_eq!(shim.wait(&id, &x), i);
        assert_eq!(shim.delete(&id, &x).unwrap().exit_status, i);
    }
    shim.kill(&id, "", 9, true).unwrap();
    assert_eq!(shim.wait(&id, ""), 137);
    shim.delete(&id, "").unwrap();
}

#[test]
fn create_failure_reports_runtime_error() {
    if !root_or_skip("create failure") {
        return;
    }
    prerequisites();
    let shim = Shim::start("fail", None);
    let id = format!("fail{}", std::process::id());
    let b = bundle(shim.path(), &id, &spec(&id, &["/no/such/binary"], false));
    shim.ids.lock().unwrap().push(id.clone());
    let mut req = api::CreateTaskRequest::new();
    req.id = id.clone();
    req.bundle = b.to_string_lossy().into_owned();
    // runc create succeeds (exec happens at start) or fails; start must fail.
    match shim.client.create(ctx(), &req) {
        Ok(_) => {
            let err = shim.start_task(&id, "").unwrap_err();
            assert!(format!("{err:?}").contains("no such file"), "{err:?}");
        }
        Err(e) => assert!(format!("{e:?}").contains("no such file"), "{e:?}"),
    }
    // A bundle without config.json: the runtime's own message comes back.
    let id2 = format!("nocfg{}", std::process::id());
    let b2 = shim.path().join(&id2);
    std::fs::create_dir_all(&b2).unwrap();
    let mut req = api::CreateTaskRequest::new();
    req.id = id2;
    req.bundle = b2.to_string_lossy().into_owned();
    let err = shim.client.create(ctx(), &req).unwrap_err();
    assert!(format!("{err:?}").contains("config.json"), "{err:?}");
}

#[test]
fn delete_action_cleans_up_after_a_dead_shim() {
    use containerd_shim_protos::protobuf::Message;
    if !root_or_skip("delete action") {
        return;
    }
    prerequisites();
    let shim = Shim::start("dead", None);
    let id = format!("dead{}", std::process::id());
    let b = bundle(shim.path(), &id, &spec(&id, &["sleep", "100000"], false));
    let pid = shim.create(&id, &b, "", "", false);
    shim.start_task(&id, "").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || !shim.alive()));
    let run_delete = || {
        std::process::Command::new(SHIM)
            .args([
                "-namespace",
                &shim.namespace,
                "-id",
                &id,
                "-address",
                "/run/crius-test.sock",
                "delete",
            ])
            .current_dir(&b)
            .env_remove("CRIUS_SHIM_RUNTIME_ROOT")
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = run_delete();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = api::DeleteResponse::parse_from_bytes(&out.stdout).unwrap();
        assert_eq!(r.exit_status, 137);
        assert!(r.exited_at.is_some());
    }
    // The runtime no longer knows the container and its process is gone.
    let st = std::process::Command::new("runc")
        .arg("--root")
        .arg(&shim.runc_root)
        .args(["state", &id])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(eventually(Duration::from_secs(10), || {
        let stat = read(std::path::Path::new(&format!("/proc/{pid}/stat")));
        stat.is_empty() || stat.contains(") Z")
    }));
}

#[test]
fn bootstrap_protocol_on_stdin() {
    use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
    use containerd_shim_protos::protobuf::Message;
    use std::io::Write;
    if !root_or_skip("bootstrap") {
        return;
    }
    prerequisites();
    let tmp = tempfile::Builder::new()
        .prefix("cb")
        .tempdir_in("/tmp")
        .unwrap();
    let ev_sock = tmp.path().join("ev.sock");
    let (sink, _server) = events_server(&ev_sock);
    let ns = format!("b{}", std::process::id());
    let id = format!("boot{}", std::process::id());
    let mut bp = BootstrapParams::new();
    bp.instance_id = id.clone();
    bp.namespace = ns.clone();
    bp.containerd_ttrpc_address = ev_sock.to_string_lossy().into_owned();
    bp.socket_dir = Some(tmp.path().join("sd").to_string_lossy().into_owned());
    let bundle_dir = bundle(tmp.path(), &id, &spec(&id, &["true"], false));
    let mut child = std::process::Command::new(SHIM)
        .args([
            "-namespace",
            &ns,
            "-id",
            &id,
            "-address",
            "/run/crius-test.sock",
            "start",
        ])
        .current_dir(&bundle_dir)
        .env("CRIUS_SHIM_STATE_DIR", tmp.path().join("state"))
        .env("CRIUS_SHIM_RUNTIME_ROOT", tmp.path().join("runc"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bootstrap = bp.write_to_bytes().unwrap();
    child.stdin.take().unwrap().write_all(&bootstrap).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let r = BootstrapResult::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(r.protocol, "ttrpc");
    assert!(
        r.address
            .starts_with(&format!("unix://{}/", tmp.path().join("sd").display())),
        "{}",
        r.address
    );

    let raw = containerd_shim_protos::ttrpc::Client::connect(&r.address).unwrap();
    let client = containerd_shim_protos::TaskClient::new(raw);
    let shim_pid = client
        .connect(ctx(), &api::ConnectRequest::new())
        .unwrap()
        .shim_pid;
    let runc_root = tmp.path().join("runc").join(&ns);
    let _cleanup = Cleanup {
        pid: shim_pid,
        root: runc_root,
        id: id.clone(),
        dir: tmp.path().to_path_buf(),
    };
    let mut req = api::CreateTaskRequest::new();
    req.id = id.clone();
    req.bundle = bundle_dir.to_string_lossy().into_owned();
    client.create(ctx(), &req).unwrap();
    // Events go to the address given in the bootstrap parameters.
    assert!(sink.wait_until(Duration::from_secs(10), |v| v
        .iter()
        .any(|(t, _, _)| t == "/tasks/create")));
    let mut k = api::KillRequest::new();
    k.id = id.clone();
    k.signal = 9;
    client.kill(ctx(), &k).unwrap();
    let mut d = api::DeleteRequest::new();
    d.id = id.clone();
    let mut w = api::WaitRequest::new();
    w.id = id.clone();
    assert_eq!(client.wait(ctx(), &w).unwrap().exit_status, 137);
    client.delete(ctx(), &d).unwrap();
    let _ = client.shutdown(ctx(), &api::ShutdownRequest::new());
}

/// Kills a shim and its container on drop (for tests that start a shim by
/// hand).
struct Cleanup {
    pid: u32,
    root: std::path::PathBuf,
    id: String,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in [
            vec!["kill", "--all", &self.id, "9"],
            vec!["delete", "--force", &self.id],
        ] {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(&self.root)
                .args(&args)
                .output();
        }
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ =
                std::fs::remove_dir(e.path().join(cgroup_path(&self.id).trim_start_matches('/')));
        }
        let stat = read(std::path::Path::new(&format!("/proc/{}/stat", self.pid)));
        if !stat.is_empty() && !stat.contains(") Z") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        unmount_below(&self.dir);
    }
}

#[test]
fn unstarted_exec_and_container_removed_behind_our_back() {
    if !root_or_skip("unstarted exec") {
        return;
    }
    prerequisites();
    let shim = Shim::start("gone", None);
    let id = format!("gone{}", std::process::id());
    let b = bundle(shim.path(), &id, &spec(&id, &["sleep", "100000"], false));
    shim.create(&id, &b, "", "", false);
    shim.start_task(&id, "").unwrap();
    shim.exec(&id, "never", &["true"], false, "", "");
    shim.kill(&id, "", 9, false).unwrap();
    assert_eq!(shim.wait(&id, ""), 137);
    // The exec can no longer start; its waiters are released.
    assert!(shim.start_task(&id, "never").is_err());
    assert_eq!(shim.wait(&id, "never"), 255);
    assert_eq!(shim.delete(&id, "never").unwrap().exit_status, 255);
    // Someone removed the container from the runtime: Delete still works.
    let st = std::process::Command::new("runc")
        .arg("--root")
        .arg(&shim.runc_root)
        .args(["delete", "--force", &id])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(shim.delete(&id, "").unwrap().exit_status, 137);
    assert!(shim.delete(&id, "").is_err());
}
