//! The `loopback` plugin done in-process.
//!
//! The reference `loopback` plugin does one thing: it sets `lo` up in the
//! pod's namespace on ADD (down on DEL, and CHECK verifies it is up), and
//! passes the previous result through unchanged when it is chained after
//! another plugin (or reports `lo` and its addresses when it runs first).
//! Running its binary costs a Go process start, 5-8 ms on a small VM, on
//! every ADD and DEL of every pod. With [`super::CniNetwork::with_builtin_loopback`]
//! a plugin of type `loopback` is done here instead, with the same effects
//! and output. Networks older than spec 0.3.0 (a different result format)
//! still run the binary.

use super::config::PluginConfig;
use super::exec::{CniCommand, ExecError};
use crate::netns::{self, NetnsError};
use serde_json::{json, Value};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The plugin type done in-process.
pub const TYPE: &str = "loopback";

/// The loopback interface; the plugin ignores `CNI_IFNAME`.
const LO: &str = "lo";

/// Whether `plugin` of a network of spec `cni_version` is done in-process.
pub(crate) fn handles(plugin: &PluginConfig, cni_version: &str) -> bool {
    plugin.plugin_type == TYPE && current_result_format(cni_version)
}

/// Spec versions whose results have `interfaces` and `ips` (0.3.0 on).
fn current_result_format(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => major > 0 || minor >= 3,
        _ => false,
    }
}

/// One address of `lo`, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoAddr {
    pub ip: IpAddr,
    pub prefix: u32,
}

/// The result of an ADD that has no previous result: `lo` in the pod's
/// namespace and its addresses, in the format of `cni_version`.
pub(crate) fn first_result(cni_version: &str, netns: &str, addrs: &[LoAddr]) -> Value {
    let versioned = !cni_version.starts_with("1.");
    let ips: Vec<Value> = addrs
        .iter()
        .map(|a| {
            let mut ip = json!({"interface": 0, "address": format!("{}/{}", a.ip, a.prefix)});
            if versioned {
                ip["version"] = if a.ip.is_ipv4() { "4" } else { "6" }.into();
            }
            ip
        })
        .collect();
    json!({
        "cniVersion": cni_version,
        "interfaces": [{"name": LO, "mac": "00:00:00:00:00:00", "sandbox": netns}],
        "ips": ips,
        "dns": {}
    })
}

fn failure(command: CniCommand, msg: String) -> ExecError {
    ExecError::Plugin {
        plugin: TYPE.into(),
        command,
        code: None,
        msg,
        details: String::new(),
        output: String::new(),
    }
}

/// Runs one verb of the plugin; returns what the binary would print.
pub(crate) fn run(
    command: CniCommand,
    cni_version: &str,
    netns: &str,
    prev: Option<&Value>,
) -> Result<Vec<u8>, ExecError> {
    let fail = |e: String| failure(command, e);
    match command {
        CniCommand::Add => {
            let addrs = netns::run_in(Path::new(netns), || -> io::Result<Vec<LoAddr>> {
                set_lo_up(true)?;
                lo_addresses()
            })
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(format!("setting {LO} up in {netns}: {e}")))?;
            let out = match prev {
                Some(prev) => prev.clone(),
                None => first_result(cni_version, netns, &addrs),
            };
            Ok(serde_json::to_vec(&out).unwrap_or_default())
        }
        CniCommand::Del => {
            if netns.is_empty() {
                return Ok(Vec::new());
            }
            match netns::run_in(Path::new(netns), || set_lo_up(false)) {
                // Like the plugin: a namespace that is gone is not an error.
                Err(NetnsError::NotNetns { .. }) => Ok(Vec::new()),
                Err(e) => Err(fail(e.to_string())),
                Ok(Err(e)) => Err(fail(format!("setting {LO} down in {netns}: {e}"))),
                Ok(Ok(())) => Ok(Vec::new()),
            }
        }
        CniCommand::Check => {
            let up = netns::run_in(Path::new(netns), lo_is_up)
                .map_err(|e| fail(e.to_string()))?
                .map_err(|e| fail(format!("reading {LO} in {netns}: {e}")))?;
            if up {
                Ok(Vec::new())
            } else {
                Err(fail(format!("{LO} is down in {netns}")))
            }
        }
        // Nothing outside the namespace to collect; always ready.
        CniCommand::Status | CniCommand::Gc => Ok(Vec::new()),
        CniCommand::Version => Ok(serde_json::to_vec(&json!({
            "cniVersion": "1.0.0",
            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
        }))
        .unwrap_or_default()),
    }
}

/// A datagram socket of the calling thread's network namespace, for the
/// interface ioctls.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lo_request() -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(LO.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// The flags of `lo` in the calling thread's namespace.
fn lo_flags(sock: &OwnedFd) -> io::Result<libc::c_short> {
    let mut req = lo_request();
    // SAFETY: SIOCGIFFLAGS fills ifr_flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS wrote the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

fn lo_is_up() -> io::Result<bool> {
    let sock = ioctl_socket()?;
    Ok(lo_flags(&sock)? & libc::IFF_UP as libc::c_short != 0)
}

/// Sets `lo` of the calling thread's namespace up or down.
pub(crate) fn set_lo_up(up: bool) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let flags = lo_flags(&sock)?;
    let want = if up {
        flags | libc::IFF_UP as libc::c_short
    } else {
        flags & !(libc::IFF_UP as libc::c_short)
    };
    if want == flags {
        return Ok(());
    }
    let mut req = lo_request();
    req.ifr_ifru.ifru_flags = want;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The addresses of `lo` in the calling thread's namespace.
fn lo_addresses() -> io::Result<Vec<LoAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if ifa.interface_name != LO {
            continue;
        }
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            out.push(LoAddr {
                ip: IpAddr::V4(a.ip()),
                prefix: m.ip().to_bits().count_ones(),
            });
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            out.push(LoAddr {
                ip: IpAddr::V6(a.ip()),
                prefix: m.ip().to_bits().count_ones(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(t: &str) -> PluginConfig {
        PluginConfig {
            plugin_type: t.into(),
            raw: json!({"type": t}),
        }
    }

    #[test]
    fn which_plugins_are_done_in_process() {
        let table = [
            ("loopback", "1.0.0", true),
            ("loopback", "0.4.0", true),
            ("loopback", "0.3.1", true),
            ("loopback", "0.3.0", true),
            ("loopback", "0.2.0", false),
            ("loopback", "0.1.0", false),
            ("loopback", "", false),
            ("loopback", "x.y", false),
            ("bridge", "1.0.0", false),
            ("loopback-x", "1.0.0", false),
        ];
        for (t, v, want) in table {
            assert_eq!(handles(&plugin(t), v), want, "{t} {v}");
        }
    }

    #[test]
    fn first_result_lists_lo_and_its_addresses() {
        let addrs = [
            LoAddr {
                ip: "127.0.0.1".parse().unwrap(),
                prefix: 8,
            },
            LoAddr {
                ip: "::1".parse().unwrap(),
                prefix: 128,
            },
        ];
        let table: [(&str, &[LoAddr], Value); 3] = [
            (
                "1.0.0",
                &addrs,
                json!([{"interface":0,"address":"127.0.0.1/8"},{"interface":0,"address":"::1/128"}]),
            ),
            (
                "0.4.0",
                &addrs,
                json!([{"interface":0,"address":"127.0.0.1/8","version":"4"},{"interface":0,"address":"::1/128","version":"6"}]),
            ),
            ("0.3.1", &[], json!([])),
        ];
        for (version, addrs, ips) in table {
            let r = first_result(version, "/run/netns/p", addrs);
            assert_eq!(r["cniVersion"], version);
            assert_eq!(
                r["interfaces"],
                json!([{"name":"lo","mac":"00:00:00:00:00:00","sandbox":"/run/netns/p"}])
            );
            assert_eq!(r["ips"], ips, "{version}");
            // What the caller parses it into.
            let parsed = super::super::CniResult::parse(&serde_json::to_vec(&r).unwrap())
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(parsed.raw, r);
        }
    }

    #[test]
    fn del_without_a_namespace_does_nothing() {
        assert!(run(CniCommand::Del, "1.0.0", "", None).unwrap().is_empty());
        // A path that is no namespace counts as gone.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("gone");
        std::fs::write(&plain, b"").unwrap();
        assert!(run(CniCommand::Del, "1.0.0", plain.to_str().unwrap(), None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn add_and_check_need_the_namespace() {
        for command in [CniCommand::Add, CniCommand::Check] {
            let err = run(command, "1.0.0", "/nonexistent/netns", None).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("CNI plugin loopback {command} failed")),
                "{msg}"
            );
            assert!(msg.contains("/nonexistent/netns"), "{msg}");
        }
    }
}
