//! The bench pod network, shared by both runtimes: a CNI conflist with a
//! bridge of its own on a free 10.215.x.0/24, no masquerading, and a
//! FORWARD rule that drops pod traffic leaving by any other interface.
//! Everything is undone on drop (modelled on the tests' `common/net.rs`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    match Command::new(cmd).args(args).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

pub struct Network {
    pub conf_dir: PathBuf,
    name: String,
    bridge: String,
    forward_rule: Vec<String>,
    ip_forward: Option<String>,
}

impl Network {
    pub fn new(dir: &Path) -> Result<Network> {
        if !Path::new("/usr/lib/cni/bridge").exists() {
            bail!("/usr/lib/cni/bridge missing (apt-get install containernetworking-plugins)");
        }
        let (_, routes) = run("ip", &["-4", "route", "show"]);
        let x = (1..250u32)
            .map(|i| (std::process::id() + i) % 250 + 1)
            .find(|x| !routes.contains(&format!("10.215.{x}.")))
            .context("no free 10.215.x.0/24")?;
        let subnet = format!("10.215.{x}.0/24");
        let bridge = format!("crb{}", std::process::id() % 1_000_000);
        let name = format!("crius-bench-{}", std::process::id());
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&conf_dir)?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}
                },
                {"type": "loopback"}
            ]
        });
        std::fs::write(conf_dir.join("10-bench.conflist"), conflist.to_string())?;
        let ip_forward = std::fs::read_to_string(IP_FORWARD).ok();
        let forward_rule: Vec<String> =
            ["FORWARD", "-s", &subnet, "!", "-o", &bridge, "-j", "DROP"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let mut args = vec!["-I"];
        args.extend(forward_rule.iter().map(String::as_str));
        let (ok, out) = run("iptables", &args);
        if !ok {
            bail!("iptables -I FORWARD: {out}");
        }
        Ok(Network {
            conf_dir,
            name,
            bridge,
            forward_rule,
            ip_forward,
        })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.bridge]);
        let mut args = vec!["-D"];
        args.extend(self.forward_rule.iter().map(String::as_str));
        let (ok, out) = run("iptables", &args);
        if !ok {
            eprintln!("bench: cleanup: removing the FORWARD rule failed: {out}");
        }
        if let Some(v) = &self.ip_forward {
            let _ = std::fs::write(IP_FORWARD, v.as_bytes());
        }
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.name));
    }
}
