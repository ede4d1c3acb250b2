//! A pod network for tests: a CNI conflist with a bridge of its own on a
//! free 10.214.x.0/24, no masquerading, and a FORWARD rule that keeps pod
//! traffic on the bridge. Everything is undone on drop.

use crius_testkit::{
    free_subnet_from, nat_chains, nat_rules, remove_network_chains, remove_new_cni_chains, run,
    ForwardRule, IP_FORWARD,
};
use std::path::{Path, PathBuf};

/// Networks of this process that are up, and `ip_forward` as it was before
/// the first of them: tests run in parallel, so only the last one to go may
/// put the value back (the bridge plugin turns forwarding on).
static FORWARD: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

fn forward_acquire() -> Option<String> {
    let mut f = FORWARD.lock().unwrap_or_else(|p| p.into_inner());
    if f.0 == 0 {
        f.1 = std::fs::read_to_string(IP_FORWARD).ok();
    }
    f.0 += 1;
    f.1.clone()
}

fn forward_release() {
    let mut f = FORWARD.lock().unwrap_or_else(|p| p.into_inner());
    f.0 = f.0.saturating_sub(1);
    if f.0 == 0 {
        if let Some(v) = f.1.take() {
            let _ = std::fs::write(IP_FORWARD, v.as_bytes());
        }
    }
}

/// The test network; `conf_dir` goes into criusd's `[cni] conf_dir`.
pub struct TestNetwork {
    pub conf_dir: PathBuf,
    pub name: String,
    pub bridge: String,
    pub subnet: String,
    pub prefix: String,
    forward_rule: ForwardRule,
    ip_forward: Option<String>,
    nat_chains_before: Vec<String>,
}

impl TestNetwork {
    /// Writes the conflist under `dir/net.d` and installs the FORWARD rule.
    pub fn new(dir: &Path) -> TestNetwork {
        TestNetwork::with_loopback(dir, true)
    }

    /// Like [`TestNetwork::new`]; with `loopback` false the conflist names
    /// no `loopback` plugin (as set-ups that keep it in a file of its own,
    /// or leave it out because the runtime brings `lo` up itself).
    pub fn with_loopback(dir: &Path, loopback: bool) -> TestNetwork {
        super::registry::ensure_binary("iptables", "iptables");
        super::registry::ensure_binary("ip", "iproute2");
        if !Path::new("/usr/lib/cni/bridge").exists() {
            super::registry::ensure_binary("/usr/lib/cni/bridge", "containernetworking-plugins");
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Skips subnets that a route or a NAT rule uses: a portmap rule
        // another run left on the subnet would count as this test's.
        let subnet =
            free_subnet_from("10.214", std::process::id() + n * 17).expect("a free 10.214.x.0/24");
        let prefix = subnet.strip_suffix("0/24").unwrap_or(&subnet).to_string();
        let bridge = format!("crp{}x{n}", std::process::id() % 100_000);
        let name = format!("crius-test-{}-{n}", std::process::id());
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let mut plugins = vec![
            serde_json::json!({
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}
            }),
            serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ];
        if loopback {
            plugins.push(serde_json::json!({"type": "loopback"}));
        }
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
        std::fs::write(conf_dir.join("10-test.conflist"), conflist.to_string()).unwrap();
        let ip_forward = forward_acquire();
        let nat_chains_before = nat_chains();
        let forward_rule = ForwardRule::insert(&subnet, &bridge).unwrap_or_else(|e| panic!("{e}"));
        TestNetwork {
            conf_dir,
            name,
            bridge,
            subnet,
            prefix,
            forward_rule,
            ip_forward,
            nat_chains_before,
        }
    }

    /// NAT rules that mention a pod IP of this network (portmap's DNAT).
    pub fn nat_rules_for_subnet(&self) -> Vec<String> {
        nat_rules()
            .lines()
            .filter(|l| l.contains(&self.prefix))
            .map(String::from)
            .collect()
    }

    /// The veth interfaces still attached to the bridge once every removed
    /// pod namespace is gone: a pod's veth goes with its namespace, which
    /// the kernel tears down in the background (criusd removes the netns
    /// before CNI DEL), so this waits up to 10 s for the list to empty.
    pub fn bridge_ports_left(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, out) = run("ip", &["-o", "link", "show", "master", &self.bridge]);
            let ports: Vec<String> = out
                .lines()
                .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
                .collect();
            if ports.is_empty() || std::time::Instant::now() > deadline {
                return ports;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.bridge]);
        // This network's pod chains that CNI DEL did not remove (a failed
        // test's), whatever other networks use; then portmap's shared
        // chains if they are new and nobody uses them any more.
        remove_network_chains(&self.name);
        remove_new_cni_chains(&self.nat_chains_before);
        if let Err(e) = self.forward_rule.remove() {
            eprintln!("cleanup: removing the FORWARD rule failed: {e}");
        }
        if self.ip_forward.take().is_some() {
            forward_release();
        }
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.name));
    }
}
