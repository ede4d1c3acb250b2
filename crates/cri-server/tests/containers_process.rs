//! What a container's process and namespaces get from the pod, the node and
//! the runtime handler: `HOSTNAME` on the host network, the masked and
//! read-only /proc paths as kubelet sends them (`procMount`), and the
//! handler's annotation allow-lists in the OCI specs.

mod common;

use common::pod::*;
use common::registry::is_root;
use k8s_cri::v1::{NamespaceMode, NamespaceOption};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The annotations of an OCI bundle's config.json that are not crius's own.
fn passed_annotations(bundle: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(bundle.join("config.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
    let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    spec["annotations"]
        .as_object()
        .map(|a| {
            a.iter()
                .filter(|(k, _)| !k.starts_with("io.kubernetes.cri."))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The mount points of /proc below /proc itself that the container sees.
async fn proc_mounts(rt: &mut Rt, id: &str) -> Vec<String> {
    let (code, out, err) = exec(rt, id, &["/bin/busybox", "cat", "/proc/self/mountinfo"]).await;
    assert_eq!(code, 0, "{err}");
    let mut points: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with("/proc/"))
        .map(String::from)
        .collect();
    points.sort();
    points
}

#[tokio::test(flavor = "multi_thread")]
async fn hostname_proc_paths_and_annotation_allow_lists() {
    if !is_root() {
        eprintln!("containers_process: skipped (needs root)");
        return;
    }
    // With a pause container: the allow-lists are checked in its spec too.
    let env = Env::start_with(
        "crius-ctr-proc",
        &format!(
            "{}[runtimes.runc]\npath = \"runc\"\npod_annotations = [\"pod.example.com/*\"]\ncontainer_annotations = [\"ctr.example.com/*\"]\n",
            common::WITH_PAUSE
        ),
    );
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let sleeper = |name: &str| container(name, &image, &["/bin/busybox", "sleep", "4242"]);

    // A host-network pod that names no hostname, as kubelet sends one.
    let uid = "uid-ctr-proc";
    let mut pod_config = pod("proc", uid);
    pod_config.hostname = String::new();
    pod_config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..Default::default()
    });
    pod_config.annotations = map(&[
        ("pod.example.com/tier", "gold"),
        ("pod.example.com/nested/key", "no: * stops at a /"),
        ("unlisted", "x"),
    ]);
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;

    // HOSTNAME is the node's, as containerd sets it.
    let node = nix::unistd::gethostname().unwrap();
    let node = node.to_string_lossy();
    let plain = run(&env, &mut rt, &pod_id, &pod_config, sleeper("plain")).await;
    let (_, env_out, _) = exec(&mut rt, &plain, &["/bin/busybox", "env"]).await;
    let hostname: Vec<&str> = env_out
        .lines()
        .filter_map(|l| l.strip_prefix("HOSTNAME="))
        .collect();
    assert_eq!(hostname, [&*node], "HOSTNAME of a host-network container");

    // No security context at all: crius's masked and read-only paths.
    let defaults = proc_mounts(&mut rt, &plain).await;
    // (Paths this kernel lacks, e.g. /proc/kcore, runc skips.)
    for p in ["/proc/keys", "/proc/timer_list", "/proc/sys", "/proc/bus"] {
        assert!(
            defaults.iter().any(|m| m == p),
            "{p} not covered: {defaults:?}"
        );
    }
    // procMount: Unmasked: kubelet sends both lists empty; nothing is covered.
    let mut unmasked = sleeper("unmasked");
    security(&mut unmasked);
    let unmasked = run(&env, &mut rt, &pod_id, &pod_config, unmasked).await;
    let none = proc_mounts(&mut rt, &unmasked).await;
    assert!(none.is_empty(), "{none:?}");
    // procMount: Default: the lists kubelet sends, exactly.
    let mut listed = sleeper("listed");
    listed.annotations = map(&[("ctr.example.com/gpu", "1"), ("pod.example.com/tier", "c")]);
    let sc = security(&mut listed);
    sc.masked_paths = vec!["/proc/keys".into()];
    sc.readonly_paths = vec!["/proc/sys".into()];
    let listed = run(&env, &mut rt, &pod_id, &pod_config, listed).await;
    let got = proc_mounts(&mut rt, &listed).await;
    assert_eq!(got, ["/proc/keys", "/proc/sys"]);
    let (code, _, _) = exec(
        &mut rt,
        &listed,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo 1 > /proc/sys/vm/drop_caches",
        ],
    )
    .await;
    assert_ne!(code, 0, "/proc/sys is read-only");

    // The handler's allow-lists: matching pod annotations reach the pause's
    // spec and every container's; matching container annotations the
    // container's only (pod patterns do not apply to them).
    let state = env.dir.join("state");
    assert_eq!(
        passed_annotations(&state.join("sandboxes").join(&pod_id).join("bundle")),
        map(&[("pod.example.com/tier", "gold")])
    );
    let bundle = |id: &str| state.join("containers").join(id).join("bundle");
    assert_eq!(
        passed_annotations(&bundle(&plain)),
        map(&[("pod.example.com/tier", "gold")])
    );
    assert_eq!(
        passed_annotations(&bundle(&listed)),
        map(&[
            ("pod.example.com/tier", "gold"),
            ("ctr.example.com/gpu", "1")
        ])
    );

    teardown(&env, &mut rt, &pod_id, uid).await;
}
