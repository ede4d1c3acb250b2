//! The in-process `loopback` plugin next to Debian's binary: the same ADD
//! result (alone and chained after another plugin), `lo` up after ADD and
//! down after DEL, CHECK passing only while it is up, DEL idempotent and
//! fine once the namespace is gone. Needs root (network namespaces);
//! skipped otherwise. The namespaces and temporary dirs are removed by
//! guards, also when an assertion fails.

use crius_netns::cni::{CniNetwork, NetworkConfigList, PodNetwork};
use crius_netns::netns;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGIN_DIR: &str = "/usr/lib/cni";

/// Removes the namespace at the path when dropped.
struct Ns(PathBuf);

impl Drop for Ns {
    fn drop(&mut self) {
        if let Err(e) = netns::remove(&self.0) {
            eprintln!("cleanup: removing {}: {e}", self.0.display());
        }
    }
}

fn lo_state(ns: &Path) -> String {
    let out = netns::run_in(ns, || {
        Command::new("ip")
            .args(["-o", "link", "show", "lo"])
            .output()
            .unwrap()
    })
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let flags = text.split(['<', '>']).nth(1).unwrap_or("").to_string();
    if flags.split(',').any(|f| f == "UP") {
        "up".into()
    } else {
        "down".into()
    }
}

fn network(dir: &Path, bins: &[PathBuf], plugins: Value, builtin: bool) -> CniNetwork {
    let list = json!({"cniVersion": "1.0.0", "name": "lo-test", "plugins": plugins});
    let parsed =
        NetworkConfigList::parse(Path::new("10-lo.conflist"), list.to_string().as_bytes()).unwrap();
    let cache = dir.join(if builtin {
        "cache-builtin"
    } else {
        "cache-exec"
    });
    CniNetwork::new(parsed, bins, &cache).with_builtin_loopback(builtin)
}

/// Sets `lo` down in the namespace at `path` with `ip`.
fn lo_down(path: &Path) {
    netns::run_in(path, || {
        assert!(Command::new("ip")
            .args(["link", "set", "lo", "down"])
            .status()
            .unwrap()
            .success())
    })
    .unwrap();
}

/// ADD, CHECK, DEL, CHECK, DEL, namespace removal, DEL through one network;
/// returns the ADD result.
fn exercise(dir: &Path, bins: &[PathBuf], plugins: Value, builtin: bool) -> Value {
    let path = dir.join(format!(
        "ns-{builtin}-{}",
        plugins.as_array().unwrap().len()
    ));
    let ns = Ns(netns::create(&path).unwrap().path().to_path_buf());
    let what = format!("builtin={builtin} plugins={plugins}");
    assert_eq!(lo_state(&ns.0), "up", "{what}: a new namespace has lo up");
    // Down again, to see the plugin bring it up.
    lo_down(&ns.0);
    assert_eq!(lo_state(&ns.0), "down", "{what}: lo set down");
    let net = network(dir, bins, plugins, builtin);
    let pod = PodNetwork::new("lotest", &ns.0, "default", "web", "uid-1");

    let result = net.add(&pod).unwrap_or_else(|e| panic!("{what}: ADD: {e}"));
    assert_eq!(lo_state(&ns.0), "up", "{what}: after ADD");
    net.check(&pod)
        .unwrap_or_else(|e| panic!("{what}: CHECK: {e}"));

    // CHECK notices lo going down behind its back.
    lo_down(&ns.0);
    let err = net.check(&pod).unwrap_err().to_string();
    assert!(
        err.contains("CNI plugin loopback CHECK failed"),
        "{what}: {err}"
    );
    net.add(&pod).unwrap();
    assert_eq!(lo_state(&ns.0), "up", "{what}: after a second ADD");

    net.del(&pod).unwrap_or_else(|e| panic!("{what}: DEL: {e}"));
    assert_eq!(lo_state(&ns.0), "down", "{what}: after DEL");
    net.del(&pod)
        .unwrap_or_else(|e| panic!("{what}: second DEL: {e}"));
    drop(ns);
    net.del(&pod)
        .unwrap_or_else(|e| panic!("{what}: DEL without the namespace: {e}"));
    let mut r = result.raw;
    // The namespace path differs between the two runs.
    if let Some(ifs) = r["interfaces"].as_array_mut() {
        for i in ifs {
            if i.get("sandbox").is_some() {
                i["sandbox"] = "<netns>".into();
            }
        }
    }
    r
}

#[test]
fn builtin_loopback_matches_the_plugin() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping builtin_loopback_matches_the_plugin: needs root");
        return;
    }
    if !Path::new(PLUGIN_DIR).join("loopback").exists() {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "containernetworking-plugins"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "apt-get install containernetworking-plugins failed");
    }
    let dir = tempfile::tempdir().unwrap();
    // A first plugin whose result loopback must pass through unchanged.
    let fake = dir.path().join("bin");
    std::fs::create_dir_all(&fake).unwrap();
    let first = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/somewhere"}],
        "ips": [{"address": "10.1.2.3/24", "interface": 0, "gateway": "10.1.2.1"}],
        "dns": {"nameservers": ["10.1.2.1"]}
    });
    let script = fake.join("crius-first");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && echo '{first}'\nexit 0\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bins = vec![fake, PathBuf::from(PLUGIN_DIR)];

    let alone = json!([{"type": "loopback"}]);
    let chained = json!([{"type": "crius-first"}, {"type": "loopback"}]);
    for plugins in [alone, chained] {
        let exec = exercise(dir.path(), &bins, plugins.clone(), false);
        let builtin = exercise(dir.path(), &bins, plugins.clone(), true);
        assert_eq!(builtin, exec, "ADD results differ for {plugins}");
        if plugins.as_array().unwrap().len() == 2 {
            let mut expected = first.clone();
            expected["interfaces"][0]["sandbox"] = "<netns>".into();
            assert_eq!(
                builtin, expected,
                "chained loopback passes the result through"
            );
        } else {
            assert!(
                builtin["ips"]
                    .as_array()
                    .unwrap()
                    .contains(&json!({"interface": 0, "address": "127.0.0.1/8"})),
                "{builtin}"
            );
        }
    }
}
