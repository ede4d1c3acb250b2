//! Host helpers shared by the integration tests' kit
//! (crates/cri-server/tests/common), crates/netns/tests, crius-bench and
//! `cargo xtask conformance`: running a host tool, reading and cleaning
//! the iptables NAT table that the CNI bridge and portmap plugins change,
//! and a local image registry ([`registry`]).

use std::process::Command;

pub mod registry;

/// Runs a command; whether it succeeded, and its stdout followed by its
/// stderr (or why it could not start).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String) {
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

/// Stops a child process that has not been reaped: SIGTERM, then SIGKILL
/// when it has not exited within `grace`; reaps it either way.
pub fn terminate(child: &mut std::process::Child, grace: std::time::Duration) {
    // SAFETY: kill(2) on our own child, which is not reaped before the
    // wait below, so its pid is still ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The kernel's IPv4 forwarding switch (the bridge plugin turns it on).
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A `{prefix}.x.0/24` (prefix like "10.215") that no host route and no
/// NAT rule uses; x starts from the pid, so parallel runs pick different
/// ones. (A NAT rule of another run's pod on the subnet, e.g. one a failed
/// run left, would otherwise count as this run's leftover.)
pub fn free_subnet(prefix: &str) -> Option<String> {
    free_subnet_from(prefix, std::process::id())
}

/// Like [`free_subnet`], counting from `seed` (a process that sets up
/// several networks at once gives each its own).
pub fn free_subnet_from(prefix: &str, seed: u32) -> Option<String> {
    let (_, routes) = run("ip", &["-4", "route", "show", "table", "all"]);
    first_free_subnet(prefix, &[&routes, &nat_rules()], seed)
}

/// The first `{prefix}.x.0/24`, x counting up from `seed`, that none of
/// `in_use` (listings of routes, rules...) mentions.
fn first_free_subnet(prefix: &str, in_use: &[&str], seed: u32) -> Option<String> {
    (1..250u32)
        .map(|i| (seed.wrapping_add(i)) % 250 + 1)
        .find(|x| {
            let net = format!("{prefix}.{x}.");
            !in_use.iter().any(|listing| listing.contains(&net))
        })
        .map(|x| format!("{prefix}.{x}.0/24"))
}

/// An inserted FORWARD rule that drops traffic from a pod subnet leaving
/// by any interface but its bridge; `remove` takes it out again.
pub struct ForwardRule(Vec<String>);

impl ForwardRule {
    /// The rule's `iptables` arguments after `-I`/`-D`.
    fn args(subnet: &str, bridge: &str) -> Vec<String> {
        ["FORWARD", "-s", subnet, "!", "-o", bridge, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Inserts the rule; says why on failure.
    pub fn insert(subnet: &str, bridge: &str) -> Result<ForwardRule, String> {
        let rule = ForwardRule::args(subnet, bridge);
        ForwardRule::iptables("-I", &rule)?;
        Ok(ForwardRule(rule))
    }

    /// Deletes the rule; says why on failure.
    pub fn remove(&self) -> Result<(), String> {
        ForwardRule::iptables("-D", &self.0)
    }

    fn iptables(op: &str, rule: &[String]) -> Result<(), String> {
        let mut args = vec![op];
        args.extend(rule.iter().map(String::as_str));
        match run("iptables", &args) {
            (true, _) => Ok(()),
            (false, out) => Err(format!("iptables {args:?}: {out}")),
        }
    }
}

/// What a CNI bridge network of a test or tool changes on the host:
/// the bridge `bridge` the plugin creates, host-local's reservations of
/// network `name`, the FORWARD rule that keeps the subnet's traffic on the
/// bridge, and `ip_forward` (which the plugin turns on). [`BridgeHost::undo`]
/// puts it all back.
pub struct BridgeHost {
    pub name: String,
    pub bridge: String,
    forward_rule: ForwardRule,
    ip_forward: Option<String>,
}

impl BridgeHost {
    /// Notes `ip_forward` and inserts the FORWARD rule for `subnet`.
    pub fn setup(name: String, bridge: String, subnet: &str) -> Result<BridgeHost, String> {
        let ip_forward = std::fs::read_to_string(IP_FORWARD).ok();
        let forward_rule = ForwardRule::insert(subnet, &bridge)?;
        Ok(BridgeHost {
            name,
            bridge,
            forward_rule,
            ip_forward,
        })
    }

    /// Deletes the bridge and the FORWARD rule, restores `ip_forward` and
    /// removes the network's address reservations; everything is tried, the
    /// error says why the FORWARD rule could not be removed.
    pub fn undo(&self) -> Result<(), String> {
        let _ = run("ip", &["link", "del", &self.bridge]);
        let removed = self.forward_rule.remove();
        if let Some(v) = &self.ip_forward {
            let _ = std::fs::write(IP_FORWARD, v.as_bytes());
        }
        let _ =
            std::fs::remove_dir_all(std::path::Path::new("/var/lib/cni/networks").join(&self.name));
        removed
    }
}

/// The start of a containerd 1.6 `config.toml` for a containerd of its own
/// under `dir` (root, state, gRPC and ttrpc sockets there; no debug or
/// metrics listener; the plugins a test host lacks disabled), for a
/// caller to append its CRI plugin table to.
pub fn containerd_config_head(dir: &std::path::Path) -> String {
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
"#,
        d = dir.display()
    )
}

/// `iptables -t nat -S` (empty when iptables fails).
pub fn nat_rules() -> String {
    run("iptables", &["-t", "nat", "-S"]).1
}

/// The chains an `iptables -S` listing declares (`-N NAME`).
pub fn chains_of(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .map(String::from)
        .collect()
}

/// The chains of the NAT table.
pub fn nat_chains() -> Vec<String> {
    chains_of(&nat_rules())
}

/// Splits an `iptables -S` line into arguments, honouring double quotes
/// (portmap's comments contain spaces) and backslash escapes inside them.
pub fn split_rule(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Deletes the NAT rule an `iptables -S` line (`-A CHAIN ...`) shows;
/// says why on failure.
pub fn delete_nat_rule(line: &str) -> Result<(), String> {
    let args = split_rule(line.strip_prefix("-A ").unwrap_or(line));
    let mut cmd: Vec<&str> = vec!["-t", "nat", "-D"];
    cmd.extend(args.iter().map(String::as_str));
    match run("iptables", &cmd) {
        (true, _) => Ok(()),
        (false, out) => Err(format!("iptables -t nat -D {line}: {out}")),
    }
}

/// Removes a NAT chain: the rules that jump to it, then its own rules and
/// the chain itself (best effort).
pub fn remove_nat_chain(chain: &str) {
    let jump = format!("-j {chain}");
    for line in nat_rules().lines() {
        if line.starts_with("-A ") && line.ends_with(&jump) {
            if let Err(e) = delete_nat_rule(line) {
                eprintln!("cleanup: {e}");
            }
        }
    }
    let _ = run("iptables", &["-t", "nat", "-F", chain]);
    let _ = run("iptables", &["-t", "nat", "-X", chain]);
}

/// Whether a pod's portmap chain (`CNI-DN-*`) still hangs off portmap's
/// shared `CNI-HOSTPORT-DNAT` chain in an `iptables -S` listing.
pub fn portmap_in_use(rules: &str) -> bool {
    rules
        .lines()
        .any(|l| l.starts_with("-A CNI-HOSTPORT-DNAT") && l.contains("-j CNI-DN-"))
}

/// Removes the `CNI-*` NAT chains that are not in `before` (per-pod chains
/// go with CNI DEL; portmap's shared CNI-HOSTPORT-* ones stay behind),
/// unless another pod's portmap rule still uses them.
pub fn remove_new_cni_chains(before: &[String]) {
    if portmap_in_use(&nat_rules()) {
        return;
    }
    for chain in nat_chains()
        .into_iter()
        .filter(|c| !before.contains(c) && c.starts_with("CNI-"))
    {
        remove_nat_chain(&chain);
    }
}

/// The per-pod `CNI-*` chains of the CNI network `name` in an
/// `iptables -S` listing: those with a rule whose comment names the
/// network (portmap writes `dnat name: "NAME" id: "..."`), leaving out
/// portmap's shared `CNI-HOSTPORT-*` chains, which other networks use too.
pub fn network_chains(rules: &str, name: &str) -> Vec<String> {
    let quoted = format!("\\\"{name}\\\"");
    let mut chains: Vec<String> = Vec::new();
    for line in rules.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rule.split(' ').next().unwrap_or_default();
        if chain.starts_with("CNI-")
            && !chain.starts_with("CNI-HOSTPORT-")
            && line.contains(&quoted)
            && !chains.iter().any(|c| c == chain)
        {
            chains.push(chain.to_string());
        }
    }
    chains
}

/// Removes the per-pod NAT chains of the CNI network `name` (see
/// [`network_chains`]) that are still there: CNI DEL removes them when a
/// pod goes, so these are a failed test's. Other networks' chains, of
/// parallel tests or other runs, stay.
pub fn remove_network_chains(name: &str) {
    for chain in network_chains(&nat_rules(), name) {
        remove_nat_chain(&chain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_subnets_skip_routes_and_nat_rules() {
        let routes = "10.214.5.0/24 dev br0 proto kernel scope link src 10.214.5.1\n";
        let nat = "-A CNI-DN-1 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.214.6.2:8080\n";
        // (listings, seed, expected)
        let cases: &[(&[&str], u32, Option<&str>)] = &[
            (&[], 3, Some("10.214.5.0/24")),
            (&[routes], 3, Some("10.214.6.0/24")),
            (&[routes, nat], 3, Some("10.214.7.0/24")),
            // 10.214.15. is not 10.214.1.: the dot ends the octet.
            (&["10.214.15.0/24 dev x"], 249, Some("10.214.1.0/24")),
            (&[routes, nat], 249, Some("10.214.1.0/24")),
        ];
        for (listings, seed, want) in cases {
            assert_eq!(
                first_free_subnet("10.214", listings, *seed).as_deref(),
                *want,
                "{listings:?} {seed}"
            );
        }
        let all: String = (1..=250).map(|x| format!("10.214.{x}.0/24\n")).collect();
        assert_eq!(first_free_subnet("10.214", &[&all], 0), None);
    }

    #[test]
    fn chains_of_a_network() {
        let rules = r#"-N CNI-DN-aaa
-N CNI-DN-bbb
-N CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"net-1\" id: \"c1\"" -m multiport --dports 80 -j CNI-DN-aaa
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"net-10\" id: \"c2\"" -m multiport --dports 81 -j CNI-DN-bbb
-A CNI-DN-aaa -s 10.214.5.0/24 -p tcp -m tcp --dport 80 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-aaa -p tcp -m comment --comment "dnat name: \"net-1\" id: \"c1\"" -m tcp --dport 80 -j DNAT --to-destination 10.214.5.2:8080
-A CNI-DN-bbb -p tcp -m comment --comment "dnat name: \"net-10\" id: \"c2\"" -m tcp --dport 81 -j DNAT --to-destination 10.214.6.2:8080
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
"#;
        // (network, chains): "net-1" is not "net-10"; the shared
        // CNI-HOSTPORT-DNAT chain names both but is nobody's own.
        let cases: &[(&str, &[&str])] = &[
            ("net-1", &["CNI-DN-aaa"]),
            ("net-10", &["CNI-DN-bbb"]),
            ("net", &[]),
            ("other", &[]),
        ];
        for (name, want) in cases {
            assert_eq!(network_chains(rules, name), *want, "{name}");
        }
        assert_eq!(network_chains("", "net-1"), Vec::<String>::new());
    }

    #[test]
    fn split_rule_cases() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            (
                "CNI-HOSTPORT-DNAT -j CNI-DN-1",
                &["CNI-HOSTPORT-DNAT", "-j", "CNI-DN-1"],
            ),
            ("  a   b ", &["a", "b"]),
            (
                r#"CNI-DN-1 -m comment --comment "dnat name: \"net\" id: \"x\"" -j DNAT"#,
                &[
                    "CNI-DN-1",
                    "-m",
                    "comment",
                    "--comment",
                    r#"dnat name: "net" id: "x""#,
                    "-j",
                    "DNAT",
                ],
            ),
            (r#"X --comment """#, &["X", "--comment", ""]),
            (r#"X a\b"#, &["X", r#"a\b"#]),
        ];
        for (line, want) in cases {
            assert_eq!(split_rule(line), *want, "{line:?}");
        }
    }

    #[test]
    fn forward_rule_arguments() {
        assert_eq!(
            ForwardRule::args("10.215.3.0/24", "crb1"),
            [
                "FORWARD",
                "-s",
                "10.215.3.0/24",
                "!",
                "-o",
                "crb1",
                "-j",
                "DROP"
            ]
        );
    }

    #[test]
    fn terminate_asks_then_kills() {
        use std::time::{Duration, Instant};
        // Exits on SIGTERM: gone at once.
        let mut polite = Command::new("sleep").arg("100").spawn().unwrap();
        let t = Instant::now();
        terminate(&mut polite, Duration::from_secs(20));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(polite.try_wait().unwrap().is_some());
        // Ignores SIGTERM: killed once the grace is over.
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 1; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        terminate(&mut stubborn, Duration::from_millis(300));
        assert!(t.elapsed() >= Duration::from_millis(300));
        let status = stubborn.try_wait().unwrap().expect("reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn containerd_starts_on_the_config_head() {
        if !std::path::Path::new("/usr/bin/containerd").exists() {
            eprintln!("skipped: no containerd");
            return;
        }
        let dir = std::env::temp_dir().join(format!("crius-testkit-ctrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, containerd_config_head(&dir)).unwrap();
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .unwrap();
        let socket = dir.join("containerd.sock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() && child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "no socket");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let served = std::os::unix::net::UnixStream::connect(&socket).is_ok();
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(served, "containerd did not serve: {log}");
    }

    #[test]
    fn chains_and_portmap_use() {
        let rules = "-P PREROUTING ACCEPT\n-N CNI-HOSTPORT-DNAT\n-N CNI-DN-1\n\
                     -A CNI-HOSTPORT-DNAT -p tcp -j CNI-DN-1\n";
        assert_eq!(chains_of(rules), ["CNI-HOSTPORT-DNAT", "CNI-DN-1"]);
        assert!(portmap_in_use(rules));
        let cases = [
            ("", false),
            ("-N CNI-HOSTPORT-DNAT\n", false),
            ("-A CNI-HOSTPORT-DNAT -j CNI-DN-2\n", true),
            ("-A OUTPUT -j CNI-DN-2\n", false),
        ];
        for (rules, want) in cases {
            assert_eq!(portmap_in_use(rules), want, "{rules:?}");
        }
    }
}
