//! Container security and requests: the default seccomp profile, pid
//! namespace targeting, the image's user, mount propagation, runtime
//! features, and bad requests that must leave nothing behind.

mod common;

use common::pod::*;
use common::registry::{busybox_entries, image_with_config, is_root, layer, Compression, Entry};
use k8s_cri::v1::{
    Capability, Mount, MountPropagation, NamespaceMode, NamespaceOption, RemoveContainerRequest,
    SecurityProfile,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tests of this file run one at a time: an environment's leftovers
/// guard kills every process in the test cgroup tree, which the other
/// test's containers share.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn security_namespaces_user_mounts_and_bad_requests() {
    if !is_root() {
        eprintln!("containers_security: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("crius-ctr-sec");
    let image = format!("{}/busybox:test", env.registry.addr);
    // An image whose config names a user.
    let user_image = image_with_config(
        vec![layer(&busybox_entries(), Compression::Gzip)],
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "User": "1234:5678"}),
    );
    env.registry.push_image("userimg", "test", &user_image);
    let user_ref = format!("{}/userimg:test", env.registry.addr);
    // An image with a named user who is a member of an extra group.
    let group_image = image_with_config(
        vec![
            layer(&busybox_entries(), Compression::Gzip),
            layer(
                &[
                    Entry::Dir("etc"),
                    Entry::File(
                        "etc/passwd",
                        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n".to_vec(),
                        0o644,
                    ),
                    Entry::File(
                        "etc/group",
                        b"root:x:0:\napp:x:1000:\nextra:x:2000:app\n".to_vec(),
                        0o644,
                    ),
                ],
                Compression::Gzip,
            ),
        ],
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "User": "app"}),
    );
    env.registry.push_image("groupimg", "test", &group_image);
    let group_ref = format!("{}/groupimg:test", env.registry.addr);
    pull(&env, &image).await;
    pull(&env, &user_ref).await;
    pull(&env, &group_ref).await;
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-ctr-sec";
    // Privileged containers need a privileged pod.
    let pod_config = privileged_pod("sec", uid);
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    let sleeper = |name: &str, img: &str| container(name, img, &["/bin/busybox", "sleep", "4242"]);

    // The default seccomp profile refuses personality(ADDR_NO_RANDOMIZE);
    // the same container unconfined may do it.
    let mut confined = sleeper("confined", &image);
    security(&mut confined).seccomp = Some(SecurityProfile {
        profile_type: k8s_cri::v1::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    // A PID namespace of its own (the TARGET check below joins it).
    security(&mut confined).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    });
    let confined = run(&env, &mut rt, &pod_id, &pod_config, confined).await;
    let mut unconfined = sleeper("unconfined", &image);
    security(&mut unconfined).seccomp = Some(SecurityProfile {
        profile_type: k8s_cri::v1::security_profile::ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    });
    let unconfined = run(&env, &mut rt, &pod_id, &pod_config, unconfined).await;
    let probe = ["/bin/busybox", "linux64", "-R", "/bin/busybox", "true"];
    let (code, _, err) = exec(&mut rt, &confined, &probe).await;
    assert_ne!(
        code, 0,
        "personality was allowed under RuntimeDefault: {err}"
    );
    let (code, _, err) = exec(&mut rt, &unconfined, &probe).await;
    assert_eq!(code, 0, "personality failed unconfined: {err}");
    // A Seccomp-filtered container reports it in /proc/self/status.
    let (_, out, _) = exec(
        &mut rt,
        &confined,
        &["/bin/busybox", "cat", "/proc/self/status"],
    )
    .await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let (_, out, _) = exec(
        &mut rt,
        &unconfined,
        &["/bin/busybox", "cat", "/proc/self/status"],
    )
    .await;
    assert!(out.contains("Seccomp:\t0"), "{out}");

    // Dropped capabilities are gone: NET_RAW is bit 13 of CapEff.
    let mut dropped = sleeper("dropped", &image);
    security(&mut dropped).capabilities = Some(Capability {
        drop_capabilities: vec!["NET_RAW".into(), "CHOWN".into()],
        ..Default::default()
    });
    let dropped = run(&env, &mut rt, &pod_id, &pod_config, dropped).await;
    let (_, out, _) = exec(
        &mut rt,
        &dropped,
        &["/bin/busybox", "cat", "/proc/self/status"],
    )
    .await;
    let cap_eff = out
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(cap_eff & (1 << 13), 0, "NET_RAW still held: {cap_eff:x}");
    assert_eq!(cap_eff & 1, 0, "CHOWN still held: {cap_eff:x}");
    assert_ne!(cap_eff & (1 << 5), 0, "KILL should stay: {cap_eff:x}");

    // A privileged container gets the host's devices; others do not.
    if Path::new("/dev/loop0").exists() {
        let mut privileged = sleeper("privileged", &image);
        security(&mut privileged).privileged = true;
        let privileged = run(&env, &mut rt, &pod_id, &pod_config, privileged).await;
        let probe = ["/bin/busybox", "test", "-b", "/dev/loop0"];
        let (code, _, err) = exec(&mut rt, &privileged, &probe).await;
        assert_eq!(code, 0, "no /dev/loop0 in a privileged container: {err}");
        let (code, _, _) = exec(&mut rt, &dropped, &probe).await;
        assert_ne!(code, 0, "/dev/loop0 in an unprivileged container");
    }

    // A container in the pid namespace of another (TARGET) sees its
    // processes; one in the pod's (no namespace options: POD) does not.
    let mut target = sleeper("target", &image);
    target.command = vec!["/bin/busybox".into(), "sleep".into(), "5151".into()];
    security(&mut target).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        target_id: confined.clone(),
        ..Default::default()
    });
    let target = run(&env, &mut rt, &pod_id, &pod_config, target).await;
    let (_, out, _) = exec(&mut rt, &target, &["/bin/busybox", "ps"]).await;
    assert!(
        out.contains("sleep 4242") && out.contains("sleep 5151"),
        "{out}"
    );
    let (_, out, _) = exec(&mut rt, &dropped, &["/bin/busybox", "ps"]).await;
    assert!(!out.contains("sleep 5151"), "{out}");
    // ... and sees the pod's: the shim's PID-namespace holder (criusd's
    // default `pid_holder`) is its pid 1, as its own confined user.
    assert!(
        out.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[0] == "1" && f[1] == "65535" && f[2] == "crius-pid-holder"
        }),
        "{out}"
    );

    // The image's User takes effect; run_as_user overrides the uid.
    let img_user = run(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        sleeper("imguser", &user_ref),
    )
    .await;
    let (_, out, _) = exec(&mut rt, &img_user, &["/bin/busybox", "id"]).await;
    assert!(
        out.contains("uid=1234") && out.contains("gid=5678"),
        "{out}"
    );
    let mut as_user = sleeper("asuser", &user_ref);
    security(&mut as_user).run_as_user = Some(k8s_cri::v1::Int64Value { value: 4321 });
    let as_user = run(&env, &mut rt, &pod_id, &pod_config, as_user).await;
    let (_, out, _) = exec(&mut rt, &as_user, &["/bin/busybox", "id", "-u"]).await;
    assert_eq!(out.trim(), "4321");

    // SupplementalGroupsPolicy: Merge adds the groups /etc/group gives the
    // user, Strict only the primary group and the requested ones.
    for (name, policy, want) in [("merge", 0, "1000 2000 3000"), ("strict", 1, "1000 3000")] {
        let mut c = sleeper(name, &group_ref);
        let sc = security(&mut c);
        sc.supplemental_groups = vec![3000];
        sc.supplemental_groups_policy = policy;
        let id = run(&env, &mut rt, &pod_id, &pod_config, c).await;
        let (_, out, _) = exec(&mut rt, &id, &["/bin/busybox", "id", "-G"]).await;
        let mut got: Vec<&str> = out.split_whitespace().collect();
        got.sort_unstable();
        assert_eq!(got.join(" "), want, "{name}");
        assert_status_user_is_id(&mut rt, &id).await;
        let (_, out, _) = exec(&mut rt, &id, &["/bin/busybox", "id", "-un"]).await;
        assert_eq!(out.trim(), "app");
    }

    // rslave (host-to-container) propagation from a shared mount made here:
    // a mount made on the host afterwards shows up inside.
    let shared = env.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let sh = |args: &[&str]| {
        let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(st.success(), "{args:?}");
    };
    let shared_s = shared.display().to_string();
    sh(&["mount", "-t", "tmpfs", "crius-test-shared", &shared_s]);
    sh(&["mount", "--make-shared", &shared_s]);
    std::fs::create_dir_all(shared.join("later")).unwrap();
    let mut slave = sleeper("slave", &image);
    slave.mounts = vec![Mount {
        container_path: "/mnt/host".into(),
        host_path: shared_s.clone(),
        propagation: MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    let slave = run(&env, &mut rt, &pod_id, &pod_config, slave).await;
    let later = shared.join("later").display().to_string();
    sh(&["mount", "-t", "tmpfs", "crius-test-later", &later]);
    std::fs::write(shared.join("later/hello"), "from the host").unwrap();
    let (code, out, err) = exec(
        &mut rt,
        &slave,
        &["/bin/busybox", "cat", "/mnt/host/later/hello"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "from the host"), "{err}");
    let (_, out, _) = exec(
        &mut rt,
        &slave,
        &["/bin/busybox", "cat", "/proc/self/mountinfo"],
    )
    .await;
    assert!(
        out.lines()
            .any(|l| l.contains(" /mnt/host ") && l.contains("master:")),
        "{out}"
    );
    // Recursive read-only (where the handler reports it): a submount of
    // the bound tree is read-only too, unlike with a plain `ro` bind.
    let rro = default_handler_features(&mut rt)
        .await
        .is_some_and(|f| f.recursive_read_only_mounts);
    let ro_mount = |path: &str, recursive: bool| Mount {
        container_path: path.into(),
        host_path: shared_s.clone(),
        readonly: true,
        recursive_read_only: recursive,
        ..Default::default()
    };
    let mut ro = sleeper("readonly", &image);
    ro.mounts = vec![ro_mount("/mnt/ro", false)];
    if rro {
        ro.mounts.push(ro_mount("/mnt/rro", true));
    }
    let ro = run(&env, &mut rt, &pod_id, &pod_config, ro).await;
    let touch = |p: &'static str| ["/bin/busybox", "touch", p];
    let (code, _, _) = exec(&mut rt, &ro, &touch("/mnt/ro/top")).await;
    assert_ne!(code, 0, "a read-only bind was writable");
    let (code, _, err) = exec(&mut rt, &ro, &touch("/mnt/ro/later/plain")).await;
    assert_eq!(code, 0, "a plain ro bind keeps submounts writable: {err}");
    if rro {
        let (code, _, _) = exec(&mut rt, &ro, &touch("/mnt/rro/later/recursive")).await;
        assert_ne!(code, 0, "a submount of an rro bind was writable");
        assert!(!shared.join("later/recursive").exists());
    } else {
        let mut c = sleeper("rro", &image);
        c.mounts = vec![ro_mount("/mnt/rro", true)];
        let err = create(&mut rt, &pod_id, &pod_config, c).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }

    // A missing host path is made as a directory.
    let made = env.dir.join("made/by/crius");
    let mut mk = sleeper("mkdir", &image);
    mk.mounts = vec![Mount {
        container_path: "/mnt/made".into(),
        host_path: made.display().to_string(),
        ..Default::default()
    }];
    let mk = run(&env, &mut rt, &pod_id, &pod_config, mk).await;
    assert!(made.is_dir());
    let (code, _, err) = exec(&mut rt, &mk, &["/bin/busybox", "touch", "/mnt/made/x"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(made.join("x").exists());

    // Bad requests: InvalidArgument naming the problem, and nothing left
    // behind (no record, no name, no host directory, no mounts).
    let containers_before = list_containers(&mut rt).await.len();
    let mounts_before = mounts_below(&env.dir.join("root")).len();
    let unmade = env.dir.join("unmade");
    let mut bidirectional_private = sleeper("bad", &image);
    bidirectional_private.mounts = vec![Mount {
        container_path: "/mnt/x".into(),
        host_path: unmade.join("deep").display().to_string(),
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let mut slave_private = sleeper("bad", &image);
    slave_private.mounts = vec![Mount {
        container_path: "/mnt/x".into(),
        host_path: env.dir.join("registry").display().to_string(),
        propagation: MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    let mut escaping_log = sleeper("bad", &image);
    escaping_log.log_path = "../../etc/x.log".into();
    let mut unknown_user = sleeper("bad", &image);
    security(&mut unknown_user).run_as_username = "nobody-here".into();
    let mut bad_cap = sleeper("bad", &image);
    security(&mut bad_cap).capabilities = Some(Capability {
        add_capabilities: vec!["NOT_A_CAP".into()],
        ..Default::default()
    });
    let mut no_name = sleeper("", &image);
    no_name.log_path = "x.log".into();
    // Used to come back as Internal.
    let bad_reference = sleeper("bad", "UPPER/Case:%tag");
    for (what, c) in [
        ("bidirectional on a private mount", bidirectional_private),
        ("rslave on a private mount", slave_private),
        ("log path escaping", escaping_log),
        ("unknown user", unknown_user),
        ("unknown capability", bad_cap),
        ("empty name", no_name),
        ("invalid image reference", bad_reference),
    ] {
        let err = create(&mut rt, &pod_id, &pod_config, c)
            .await
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
    }
    assert!(!unmade.exists(), "a refused create left its host directory");
    assert_eq!(list_containers(&mut rt).await.len(), containers_before);
    assert_eq!(mounts_below(&env.dir.join("root")).len(), mounts_before);
    // The name "bad" was released by every failure.
    let good = run(&env, &mut rt, &pod_id, &pod_config, sleeper("bad", &image)).await;
    rt.remove_container(RemoveContainerRequest { container_id: good })
        .await
        .unwrap();

    teardown(&env, &mut rt, &pod_id, uid).await;
    for m in [later, shared_s] {
        let _ = Command::new("umount").arg(&m).status();
    }
}
