//! Machine set-up: Debian packages and a default CNI network.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Debian packages that the build needs (k8s-cri generates code with protoc).
const BUILD_PACKAGES: &[&str] = &["protobuf-compiler"];

/// Debian packages that criusd and the integration tests need.
const RUNTIME_PACKAGES: &[&str] = &[
    "runc",
    "containernetworking-plugins",
    "iproute2",
    "iptables",
    "docker-registry",
    "skopeo",
    "umoci",
    "busybox-static",
    // apparmor_parser: criusd loads its default profile with it on hosts
    // with AppArmor; here the unit tests check the profile's syntax.
    "apparmor",
    // Tests and benchmarks: a real containerd to run the shim under and to
    // compare with, htpasswd and openssl for the registry auth tests.
    "containerd",
    "apache2-utils",
    "openssl",
];

/// Where the default conflist goes and what it is called.
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
const CNI_CONF_FILE: &str = "10-crius.conflist";

/// The default pod network: a bridge on a subnet reserved for crius, no
/// masquerading (pod traffic is not NATed off the node), host ports through
/// portmap, and the loopback interface.
pub const DEFAULT_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "crius",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "crius0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.99.0.0/16" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "loopback" }
  ]
}
"#;

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed"))
        .unwrap_or(false)
}

/// Whether this process runs as root (uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        })
        .unwrap_or(false)
}

fn install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root (or apt-get install them)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    crate::run_cmd(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    crate::run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn has_cni_config(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                let p = e.path();
                p.is_file()
                    && matches!(
                        p.extension().and_then(|x| x.to_str()),
                        Some("conf" | "conflist" | "json")
                    )
            })
        })
        .unwrap_or(false)
}

fn write_cni_config() -> Result<()> {
    let dir = Path::new(CNI_CONF_DIR);
    if has_cni_config(dir) {
        return Ok(());
    }
    if !is_root() {
        bail!("{CNI_CONF_DIR} has no network config: run `cargo xtask setup` as root");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {CNI_CONF_DIR}"))?;
    let path = dir.join(CNI_CONF_FILE);
    let tmp = dir.join(format!(".{CNI_CONF_FILE}.tmp"));
    std::fs::write(&tmp, DEFAULT_CONFLIST)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("xtask: wrote the default pod network {}", path.display());
    Ok(())
}

/// Only what building needs.
pub fn ensure_build_tools() -> Result<()> {
    install(BUILD_PACKAGES)
}

/// Everything, installing only what is missing (cheap when all is present).
pub fn ensure() -> Result<()> {
    let mut all: Vec<&str> = BUILD_PACKAGES.to_vec();
    all.extend_from_slice(RUNTIME_PACKAGES);
    install(&all)?;
    write_cni_config()
}

/// `cargo xtask setup`.
pub fn setup() -> Result<()> {
    ensure()?;
    eprintln!("xtask: setup complete");
    Ok(())
}
