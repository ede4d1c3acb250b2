//! The bench pod network, shared by both runtimes: a CNI conflist with a
//! bridge of its own on a free 10.215.x.0/24, no masquerading, and a
//! FORWARD rule that drops pod traffic leaving by any other interface.
//! Everything is undone on drop (modelled on the tests' `common/net.rs`).

use anyhow::{bail, Context, Result};
use crius_testkit::{free_subnet, BridgeHost};
use std::path::{Path, PathBuf};

pub struct Network {
    pub conf_dir: PathBuf,
    host: BridgeHost,
}

impl Network {
    pub fn new(dir: &Path) -> Result<Network> {
        if !Path::new("/usr/lib/cni/bridge").exists() {
            bail!("/usr/lib/cni/bridge missing (apt-get install containernetworking-plugins)");
        }
        let subnet = free_subnet("10.215").context("no free 10.215.x.0/24")?;
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
        let host = BridgeHost::setup(name, bridge, &subnet).map_err(anyhow::Error::msg)?;
        Ok(Network { conf_dir, host })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(e) = self.host.undo() {
            eprintln!("bench: cleanup: removing the FORWARD rule failed: {e}");
        }
    }
}
