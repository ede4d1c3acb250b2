//! CNI results (spec versions 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0) parsed
//! into one type, and the choice of the pod IPs.
//!
//! The 0.3.x/0.4.0 and 1.x results share one shape: a list of interfaces, a
//! list of IP configurations each naming its interface by index, routes and
//! DNS. The older versions also give each IP a `version` ("4"/"6") that must
//! match the address.

use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Result versions this module understands.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Errors met while parsing a CNI result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResultError {
    /// The result is not JSON of the expected shape.
    #[error("invalid CNI result: {0}")]
    Invalid(String),
    /// The result declares no version or one this module does not know.
    #[error("unsupported CNI result version {0:?} (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
    UnsupportedVersion(String),
    /// An address or prefix is malformed.
    #[error("invalid address {value:?} in {field}")]
    Address {
        /// The JSON field, e.g. `ips[0].address`.
        field: String,
        /// The offending text.
        value: String,
    },
    /// An IP names an interface index that does not exist.
    #[error("ips[{ip}] refers to interface {index} but the result has {count} interface(s)")]
    InterfaceIndex {
        /// The IP entry.
        ip: usize,
        /// The index it names.
        index: usize,
        /// How many interfaces the result lists.
        count: usize,
    },
    /// A 0.3.x/0.4.0 IP whose `version` does not match its address.
    #[error("ips[{ip}] has version {version:?} but address {address}")]
    VersionMismatch {
        /// The IP entry.
        ip: usize,
        /// The declared version.
        version: String,
        /// The address.
        address: IpNet,
    },
}

/// An address with its prefix length, e.g. `10.1.2.3/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl IpNet {
    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpNet {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = s.split_once('/').ok_or(())?;
        let addr: IpAddr = addr.parse().map_err(|_| ())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        let prefix_len: u8 = prefix.parse().map_err(|_| ())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(());
        }
        Ok(IpNet { addr, prefix_len })
    }
}

/// An interface created or configured by the plugins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, when known.
    pub mac: String,
    /// The netns path for interfaces inside the sandbox, empty on the host.
    pub sandbox: String,
}

/// One assigned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address and prefix.
    pub address: IpNet,
    /// Gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop, if any.
    pub gw: Option<IpAddr>,
}

/// DNS settings returned by the plugins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    /// Name servers.
    pub nameservers: Vec<String>,
    /// Local domain.
    pub domain: String,
    /// Search domains.
    pub search: Vec<String>,
    /// resolver options.
    pub options: Vec<String>,
}

/// A parsed CNI result, whatever its version.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// The version the result was written in.
    pub cni_version: String,
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Dns,
    /// The JSON exactly as the plugin returned it (used as `prevResult`).
    pub raw: Value,
}

/// The IPs of a pod: the primary one (IPv4 first, as kubelet expects) and the
/// others in result order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIps {
    /// The pod IP.
    pub primary: IpAddr,
    /// Further IPs (e.g. the IPv6 address of a dual-stack pod).
    pub additional: Vec<IpAddr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResult {
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    ips: Vec<RawIp>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    dns: RawDns,
}

#[derive(Deserialize)]
struct RawInterface {
    #[serde(default)]
    name: String,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    sandbox: String,
}

#[derive(Deserialize)]
struct RawIp {
    version: Option<String>,
    address: String,
    gateway: Option<String>,
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    gw: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    search: Vec<String>,
    #[serde(default)]
    options: Vec<String>,
}

fn parse_net(field: String, value: &str) -> Result<IpNet, ResultError> {
    value.parse().map_err(|()| ResultError::Address {
        field,
        value: value.to_string(),
    })
}

fn parse_addr(field: String, value: &Option<String>) -> Result<Option<IpAddr>, ResultError> {
    match value.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ResultError::Address {
            field,
            value: v.to_string(),
        }),
    }
}

impl CniResult {
    /// Parses a result from the bytes a plugin printed.
    pub fn parse(bytes: &[u8]) -> Result<CniResult, ResultError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ResultError::Invalid(e.to_string()))?;
        Self::from_value(value)
    }

    /// Parses a result from JSON.
    pub fn from_value(value: Value) -> Result<CniResult, ResultError> {
        if !value.is_object() {
            return Err(ResultError::Invalid("not a JSON object".into()));
        }
        let raw: RawResult =
            RawResult::deserialize(&value).map_err(|e| ResultError::Invalid(e.to_string()))?;
        let version = raw.cni_version.unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(ResultError::UnsupportedVersion(version));
        }
        let old_style = version.starts_with("0.");
        let interfaces: Vec<Interface> = raw
            .interfaces
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: i.mac,
                sandbox: i.sandbox,
            })
            .collect();
        let mut ips = Vec::with_capacity(raw.ips.len());
        for (n, ip) in raw.ips.into_iter().enumerate() {
            let address = parse_net(format!("ips[{n}].address"), &ip.address)?;
            let gateway = parse_addr(format!("ips[{n}].gateway"), &ip.gateway)?;
            if let Some(index) = ip.interface {
                if index >= interfaces.len() {
                    return Err(ResultError::InterfaceIndex {
                        ip: n,
                        index,
                        count: interfaces.len(),
                    });
                }
            }
            if let (true, Some(v)) = (old_style, ip.version.as_deref()) {
                let matches = match v {
                    "4" => address.addr.is_ipv4(),
                    "6" => address.addr.is_ipv6(),
                    _ => false,
                };
                if !matches {
                    return Err(ResultError::VersionMismatch {
                        ip: n,
                        version: v.to_string(),
                        address,
                    });
                }
            }
            ips.push(IpConfig {
                address,
                gateway,
                interface: ip.interface,
            });
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (n, r) in raw.routes.into_iter().enumerate() {
            routes.push(Route {
                dst: parse_net(format!("routes[{n}].dst"), &r.dst)?,
                gw: parse_addr(format!("routes[{n}].gw"), &r.gw)?,
            });
        }
        Ok(CniResult {
            cni_version: version,
            interfaces,
            ips,
            routes,
            dns: Dns {
                nameservers: raw.dns.nameservers,
                domain: raw.dns.domain,
                search: raw.dns.search,
                options: raw.dns.options,
            },
            raw: value,
        })
    }

    /// The pod IPs. IPs on the interface named `ifname` inside the sandbox
    /// are preferred; without such IPs, those on any sandbox interface, then
    /// all IPs. The first IPv4 address is the primary one. `None` when the
    /// result holds no IP at all.
    pub fn pod_ips(&self, ifname: &str) -> Option<PodIps> {
        let in_sandbox = |ip: &&IpConfig, name: Option<&str>| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|i| !i.sandbox.is_empty() && name.map_or(true, |n| i.name == n))
        };
        let mut chosen: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| in_sandbox(ip, Some(ifname)))
            .map(|ip| ip.address.addr)
            .collect();
        if chosen.is_empty() {
            chosen = self
                .ips
                .iter()
                .filter(|ip| in_sandbox(ip, None))
                .map(|ip| ip.address.addr)
                .collect();
        }
        if chosen.is_empty() {
            chosen = self.ips.iter().map(|ip| ip.address.addr).collect();
        }
        let primary_at = chosen.iter().position(IpAddr::is_ipv4).unwrap_or(0);
        if chosen.is_empty() {
            return None;
        }
        let primary = chosen.remove(primary_at);
        Some(PodIps {
            primary,
            additional: chosen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V040: &str = r#"{
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/x"}
        ],
        "ips": [
            {"version": "4", "address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.local"]}
    }"#;

    #[test]
    fn parse_table() {
        struct Case {
            name: &'static str,
            json: &'static str,
            want: Result<(&'static str, Vec<&'static str>, usize), ResultError>,
        }
        let cases = vec![
            Case {
                name: "0.4.0 bridge result",
                json: V040,
                want: Ok(("0.4.0", vec!["10.22.0.5/16"], 3)),
            },
            Case {
                name: "0.3.0",
                json: r#"{"cniVersion":"0.3.0","ips":[{"version":"6","address":"fd00::5/64"}]}"#,
                want: Ok(("0.3.0", vec!["fd00::5/64"], 0)),
            },
            Case {
                name: "0.3.1 without version field",
                json: r#"{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}"#,
                want: Ok(("0.3.1", vec!["10.0.0.2/24"], 1)),
            },
            Case {
                name: "1.0.0 dual stack",
                json: r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"fd00::2/64","interface":0},{"address":"10.0.0.2/24","gateway":"10.0.0.1","interface":0}],"routes":[{"dst":"::/0","gw":"fd00::1"}]}"#,
                want: Ok(("1.0.0", vec!["fd00::2/64", "10.0.0.2/24"], 1)),
            },
            Case {
                name: "1.1.0 minimal",
                json: r#"{"cniVersion":"1.1.0"}"#,
                want: Ok(("1.1.0", vec![], 0)),
            },
            Case {
                name: "0.2.0 unsupported",
                json: r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}"#,
                want: Err(ResultError::UnsupportedVersion("0.2.0".into())),
            },
            Case {
                name: "missing version",
                json: r#"{"ips":[]}"#,
                want: Err(ResultError::UnsupportedVersion("".into())),
            },
            Case {
                name: "bad address",
                json: r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/24"}]}"#,
                want: Err(ResultError::Address {
                    field: "ips[0].address".into(),
                    value: "10.0.0.300/24".into(),
                }),
            },
            Case {
                name: "address without prefix",
                json: r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.3"}]}"#,
                want: Err(ResultError::Address {
                    field: "ips[0].address".into(),
                    value: "10.0.0.3".into(),
                }),
            },
            Case {
                name: "prefix too long",
                json: r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.3/33"}]}"#,
                want: Err(ResultError::Address {
                    field: "ips[0].address".into(),
                    value: "10.0.0.3/33".into(),
                }),
            },
            Case {
                name: "bad gateway",
                json: r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.3/24","gateway":"gw"}]}"#,
                want: Err(ResultError::Address {
                    field: "ips[0].gateway".into(),
                    value: "gw".into(),
                }),
            },
            Case {
                name: "bad route",
                json: r#"{"cniVersion":"1.0.0","routes":[{"dst":"default"}]}"#,
                want: Err(ResultError::Address {
                    field: "routes[0].dst".into(),
                    value: "default".into(),
                }),
            },
            Case {
                name: "interface index out of range",
                json: r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.3/24","interface":1}]}"#,
                want: Err(ResultError::InterfaceIndex {
                    ip: 0,
                    index: 1,
                    count: 1,
                }),
            },
            Case {
                name: "version mismatch",
                json: r#"{"cniVersion":"0.4.0","ips":[{"version":"6","address":"10.0.0.3/24"}]}"#,
                want: Err(ResultError::VersionMismatch {
                    ip: 0,
                    version: "6".into(),
                    address: "10.0.0.3/24".parse().unwrap(),
                }),
            },
            Case {
                name: "not an object",
                json: r#"["1.0.0"]"#,
                want: Err(ResultError::Invalid("not a JSON object".into())),
            },
        ];
        for c in cases {
            let got = CniResult::parse(c.json.as_bytes());
            match (got, c.want) {
                (Ok(r), Ok((version, ips, ifaces))) => {
                    assert_eq!(r.cni_version, version, "{}", c.name);
                    let got_ips: Vec<String> =
                        r.ips.iter().map(|i| i.address.to_string()).collect();
                    assert_eq!(got_ips, ips, "{}", c.name);
                    assert_eq!(r.interfaces.len(), ifaces, "{}", c.name);
                    assert_eq!(
                        r.raw,
                        serde_json::from_str::<Value>(c.json).unwrap(),
                        "{}",
                        c.name
                    );
                }
                (Err(e), Err(want)) => assert_eq!(e, want, "{}", c.name),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.name),
            }
        }
        assert!(matches!(
            CniResult::parse(b"not json"),
            Err(ResultError::Invalid(_))
        ));
        assert!(matches!(
            CniResult::parse(br#"{"cniVersion":"1.0.0","ips":"x"}"#),
            Err(ResultError::Invalid(_))
        ));
    }

    #[test]
    fn details_of_a_040_result() {
        let r = CniResult::parse(V040.as_bytes()).unwrap();
        assert_eq!(r.interfaces[2].name, "eth0");
        assert_eq!(r.interfaces[2].sandbox, "/run/netns/x");
        assert_eq!(r.ips[0].gateway, Some("10.22.0.1".parse().unwrap()));
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.dns.nameservers, vec!["10.96.0.10"]);
        assert_eq!(r.dns.search, vec!["svc.local"]);
    }

    /// A result and the pod IPs expected from it (primary, additional).
    type IpCase = (&'static str, Option<(&'static str, Vec<&'static str>)>);

    #[test]
    fn pod_ip_selection_table() {
        let cases: &[IpCase] = &[
            (V040, Some(("10.22.0.5", vec![]))),
            (r#"{"cniVersion":"1.0.0"}"#, None),
            // IPv4 first even when listed second.
            (
                r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"fd00::2/64","interface":0},{"address":"10.0.0.2/24","interface":0}]}"#,
                Some(("10.0.0.2", vec!["fd00::2"])),
            ),
            // Only IPv6.
            (
                r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::2/64"},{"address":"fd00::3/64"}]}"#,
                Some(("fd00::2", vec!["fd00::3"])),
            ),
            // IPs on the host side or on other sandbox interfaces are not
            // the pod's when eth0 has some.
            (
                r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"net1","sandbox":"/x"},{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.9.0.1/24","interface":0},{"address":"10.8.0.2/24","interface":1},{"address":"10.0.0.2/24","interface":2}]}"#,
                Some(("10.0.0.2", vec![])),
            ),
            // No eth0: IPs of sandbox interfaces.
            (
                r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"net1","sandbox":"/x"}],"ips":[{"address":"10.9.0.1/24","interface":0},{"address":"10.8.0.2/24","interface":1}]}"#,
                Some(("10.8.0.2", vec![])),
            ),
            // Nothing says where the IPs live: all of them.
            (
                r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.0.2/24"},{"version":"4","address":"10.1.0.3/24"}]}"#,
                Some(("10.1.0.2", vec!["10.1.0.3"])),
            ),
        ];
        for (json, want) in cases {
            let r = CniResult::parse(json.as_bytes()).unwrap();
            let want = want.as_ref().map(|(p, a)| PodIps {
                primary: p.parse().unwrap(),
                additional: a.iter().map(|s| s.parse().unwrap()).collect(),
            });
            assert_eq!(r.pod_ips("eth0"), want, "{json}");
        }
    }

    #[test]
    fn ipnet_contains() {
        let net: IpNet = "10.213.7.0/24".parse().unwrap();
        assert!(net.contains("10.213.7.200".parse().unwrap()));
        assert!(!net.contains("10.213.8.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.1/".parse::<IpNet>().is_err());
        assert!("10.0.0.1/+1".parse::<IpNet>().is_err());
    }
}
