//! What a pod offers its CNI plugins (`runtimeConfig`, for the plugins
//! that declare the capability): host ports, traffic shaping from the
//! pod's bandwidth annotations, its DNS settings, and IPAM ranges from the
//! pod CIDR kubelet pushed with UpdateRuntimeConfig.

use crius_netns::cni::{Bandwidth, DnsConfig, IpRange, PodNetwork, PortMapping};
use k8s_cri::v1::{PodSandboxConfig, Protocol};
use std::path::Path;

/// Pod annotation: ingress rate limit, a Kubernetes quantity of bits/s.
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
/// Pod annotation: egress rate limit.
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// Limits outside these bounds are refused, as kubelet's and containerd's
/// bandwidth helpers do (1 kbit/s to 1 Pbit/s).
const MIN_RATE: u64 = 1_000;
const MAX_RATE: u64 = 1_000_000_000_000_000;

/// Parses a Kubernetes resource quantity (`100M`, `1.5Gi`, `2e6`, `500k`)
/// into an integer, rounded up as `resource.Quantity.Value()` does.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a quantity");
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        // A decimal exponent: 2e6, 1E3.
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| bad())?;
            10f64.powi(e)
        }
        _ => return Err(bad()),
    };
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scaled = (value * multiplier).ceil();
    if !scaled.is_finite() || scaled > u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(scaled as u64)
}

/// The pod's traffic shaping from its bandwidth annotations (none without
/// them); a malformed or unreasonable value is an error naming the
/// annotation. Bursts are left to the plugin's maximum, as containerd.
pub fn bandwidth(config: &PodSandboxConfig) -> Result<Option<Bandwidth>, (String, String)> {
    let rate = |key: &str| -> Result<Option<u64>, (String, String)> {
        let Some(text) = config.annotations.get(key) else {
            return Ok(None);
        };
        let field = format!("config.annotations[{key:?}]");
        let v = parse_quantity(text).map_err(|m| (field.clone(), m))?;
        if v < MIN_RATE {
            return Err((field, format!("{text:?} is below 1k (bits per second)")));
        }
        if v > MAX_RATE {
            return Err((field, format!("{text:?} is above 1P (bits per second)")));
        }
        Ok(Some(v))
    };
    let ingress = rate(INGRESS_BANDWIDTH)?;
    let egress = rate(EGRESS_BANDWIDTH)?;
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    let burst = |r: Option<u64>| if r.is_some() { u32::MAX as u64 } else { 0 };
    Ok(Some(Bandwidth {
        ingress_rate: ingress.unwrap_or(0),
        ingress_burst: burst(ingress),
        egress_rate: egress.unwrap_or(0),
        egress_burst: burst(egress),
    }))
}

/// One IPAM range set per CIDR of the node's pod CIDR(s) (comma separated,
/// as kubelet sends them; dual-stack nodes have two).
pub fn ip_ranges(pod_cidr: &str) -> Vec<Vec<IpRange>> {
    pod_cidr
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|subnet| {
            vec![IpRange {
                subnet: subnet.to_string(),
                range_start: String::new(),
                range_end: String::new(),
                gateway: String::new(),
            }]
        })
        .collect()
}

/// The CNI attachment of a pod. Bandwidth annotations were validated by
/// RunPodSandbox; one that no longer parses (an old record) is left out.
pub fn pod_network(
    id: &str,
    netns: &Path,
    config: &PodSandboxConfig,
    pod_cidr: &str,
) -> PodNetwork {
    let meta = config.metadata.clone().unwrap_or_default();
    let mut pod = PodNetwork::new(id, netns, &meta.namespace, &meta.name, &meta.uid);
    pod.port_mappings = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0 && p.container_port > 0)
        .filter_map(|p| {
            let protocol = match Protocol::try_from(p.protocol).ok()? {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            };
            Some(PortMapping {
                host_port: u16::try_from(p.host_port).ok()?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: protocol.to_string(),
                host_ip: p.host_ip.clone(),
            })
        })
        .collect();
    pod.bandwidth = bandwidth(config).ok().flatten();
    pod.dns = config.dns_config.as_ref().map(|d| DnsConfig {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    pod.ip_ranges = ip_ranges(pod_cidr);
    pod
}

/// The host side of a pod's network that RunPodSandbox and
/// StopPodSandbox drive: the pod's network namespace and the CNI plugins.
/// Blocking calls (callers run them off the async workers). Chosen when
/// the daemon is built ([`HostNet`] in criusd, a fake in unit tests).
pub trait PodNet: Send + Sync {
    /// Creates a network namespace pinned at `path`.
    fn create_netns(&self, path: &Path) -> Result<(), crius_netns::netns::NetnsError>;
    /// Unpins and removes the network namespace at `path`.
    fn remove_netns(&self, path: &Path) -> Result<(), crius_netns::netns::NetnsError>;
    /// CNI ADD of the pod to `network`.
    fn cni_add(
        &self,
        network: &crius_netns::cni::CniNetwork,
        pod: &PodNetwork,
    ) -> Result<crius_netns::cni::CniResult, crius_netns::cni::CniError>;
    /// CNI DEL of the pod from `network`.
    fn cni_del(
        &self,
        network: &crius_netns::cni::CniNetwork,
        pod: &PodNetwork,
    ) -> Result<(), crius_netns::cni::CniError>;
}

/// The host's namespaces and CNI plugins (crius-netns).
pub struct HostNet;

impl PodNet for HostNet {
    fn create_netns(&self, path: &Path) -> Result<(), crius_netns::netns::NetnsError> {
        crius_netns::netns::create(path).map(drop)
    }

    fn remove_netns(&self, path: &Path) -> Result<(), crius_netns::netns::NetnsError> {
        crius_netns::netns::remove(path)
    }

    fn cni_add(
        &self,
        network: &crius_netns::cni::CniNetwork,
        pod: &PodNetwork,
    ) -> Result<crius_netns::cni::CniResult, crius_netns::cni::CniError> {
        network.add(pod)
    }

    fn cni_del(
        &self,
        network: &crius_netns::cni::CniNetwork,
        pod: &PodNetwork,
    ) -> Result<(), crius_netns::cni::CniError> {
        network.del(pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::DnsConfig as CriDns;

    #[test]
    fn quantities() {
        let cases: &[(&str, Result<u64, ()>)] = &[
            ("1000", Ok(1000)),
            ("10M", Ok(10_000_000)),
            ("1.5M", Ok(1_500_000)),
            ("500k", Ok(500_000)),
            ("1Ki", Ok(1024)),
            ("2Mi", Ok(2 * 1024 * 1024)),
            ("1Gi", Ok(1 << 30)),
            ("1e6", Ok(1_000_000)),
            ("2E3", Ok(2_000)),
            ("1500m", Ok(2)),
            ("+5k", Ok(5_000)),
            ("", Err(())),
            ("M", Err(())),
            ("10 M", Err(())),
            ("10MB", Err(())),
            ("1.2.3", Err(())),
            ("-1M", Err(())),
            ("1e", Err(())),
            ("2E", Ok(2_000_000_000_000_000_000)),
            ("99999E", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity(text).map_err(|_| ()), *want, "{text:?}");
        }
    }

    #[test]
    fn bandwidth_from_annotations() {
        let pod = |pairs: &[(&str, &str)]| PodSandboxConfig {
            annotations: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let max = u32::MAX as u64;
        let both = Bandwidth {
            ingress_rate: 10_000_000,
            ingress_burst: max,
            egress_rate: 1_000_000,
            egress_burst: max,
        };
        let egress_only = Bandwidth {
            ingress_rate: 0,
            ingress_burst: 0,
            egress_rate: 5_000,
            egress_burst: max,
        };
        // (annotations, Ok(shaping) or Err(annotation named))
        let cases: Vec<(PodSandboxConfig, Result<Option<Bandwidth>, &str>)> = vec![
            (pod(&[]), Ok(None)),
            (pod(&[("other", "1M")]), Ok(None)),
            (
                pod(&[(INGRESS_BANDWIDTH, "10M"), (EGRESS_BANDWIDTH, "1M")]),
                Ok(Some(both)),
            ),
            (pod(&[(EGRESS_BANDWIDTH, "5k")]), Ok(Some(egress_only))),
            (pod(&[(INGRESS_BANDWIDTH, "fast")]), Err(INGRESS_BANDWIDTH)),
            (pod(&[(EGRESS_BANDWIDTH, "999")]), Err(EGRESS_BANDWIDTH)),
            (pod(&[(INGRESS_BANDWIDTH, "2P")]), Err(INGRESS_BANDWIDTH)),
        ];
        for (i, (config, want)) in cases.into_iter().enumerate() {
            match (bandwidth(&config), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "case {i}"),
                (Err((field, _)), Err(key)) => {
                    assert!(field.contains(key), "case {i}: {field}")
                }
                (got, want) => panic!("case {i}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn network_offers_dns_ranges_and_shaping() {
        let config = PodSandboxConfig {
            annotations: [(INGRESS_BANDWIDTH.to_string(), "1M".to_string())].into(),
            dns_config: Some(CriDns {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        // (pod CIDR as pushed, range sets offered)
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("10.244.1.0/24", &["10.244.1.0/24"]),
            (
                "10.244.1.0/24, fd00:10:244:1::/64",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
            ),
        ];
        for (cidr, want) in cases {
            let net = pod_network("id", Path::new("/n"), &config, cidr);
            let got: Vec<&str> = net
                .ip_ranges
                .iter()
                .map(|set| {
                    assert_eq!(set.len(), 1);
                    set[0].subnet.as_str()
                })
                .collect();
            assert_eq!(&got, want, "{cidr:?}");
            assert_eq!(
                net.bandwidth.as_ref().map(|b| b.ingress_rate),
                Some(1_000_000)
            );
            assert_eq!(
                net.dns.as_ref().map(|d| d.servers.clone()),
                Some(vec!["10.96.0.10".to_string()])
            );
        }
        let bare = pod_network("id", Path::new("/n"), &PodSandboxConfig::default(), "");
        assert!(bare.bandwidth.is_none() && bare.dns.is_none() && bare.ip_ranges.is_empty());
    }
}
