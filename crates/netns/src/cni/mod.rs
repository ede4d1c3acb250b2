//! CNI (Container Network Interface) support.
//!
//! [`CniNetwork`] is what the daemon uses: it loads the pod network the way
//! kubelet does (first valid file of the conf dir), and runs ADD, DEL and
//! CHECK of the whole plugin list for a pod, as libcni's `*NetworkList`
//! functions do: each plugin gets the list's `name` and `cniVersion`, a
//! `runtimeConfig` limited to the capabilities it declares, and the previous
//! plugin's result as `prevResult`; DEL runs in reverse order with the
//! cached ADD result. All calls block (run them on a blocking thread).
//!
//! Plugins are found in the bin dirs given to [`CniNetwork::load`]; tests
//! point those at directories of fake plugins.

pub mod cache;
pub mod config;
pub mod exec;
pub mod loopback;
pub mod result;

pub use cache::{CacheEntry, CacheError, ResultCache};
pub use config::{
    check_plugins, find_plugin, load_default_network, ConfigError, NetworkConfigList, PluginConfig,
};
pub use exec::{CniCommand, ExecError, Invocation};
pub use result::{CniResult, PodIps, ResultError};

use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default limit for one plugin call.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The interface name kubelet-style runtimes give the pod's interface.
pub const DEFAULT_IFNAME: &str = "eth0";

/// Errors of the CNI caller.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The network configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pod's parameters cannot be passed to CNI.
    #[error("invalid CNI arguments: {0}")]
    InvalidArgument(String),
    /// A plugin could not be found.
    #[error("CNI plugin {plugin:?} of network {network:?} not found in {dirs}")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// The network.
        network: String,
        /// The bin dirs, joined by ':'.
        dirs: String,
    },
    /// A plugin call failed.
    #[error("network {network:?}: {source}")]
    Exec {
        /// The network.
        network: String,
        /// The failure.
        source: Box<ExecError>,
    },
    /// A plugin printed an unusable result.
    #[error("network {network:?}: CNI plugin {plugin} returned an unusable result: {source}")]
    Result {
        /// The network.
        network: String,
        /// The plugin type.
        plugin: String,
        /// The failure.
        source: ResultError,
    },
    /// The result cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// CHECK is not possible for this network or pod.
    #[error("network {network:?}: cannot CHECK: {reason}")]
    CheckUnavailable {
        /// The network.
        network: String,
        /// Why.
        reason: String,
    },
}

/// One port to publish on the host (`runtimeConfig.portMappings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (lower case).
    pub protocol: String,
    /// Host address to bind; empty for all.
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Traffic shaping (`runtimeConfig.bandwidth`), rates in bits per second and
/// bursts in bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate.
    pub ingress_rate: u64,
    /// Ingress burst.
    pub ingress_burst: u64,
    /// Egress rate.
    pub egress_rate: u64,
    /// Egress burst.
    pub egress_burst: u64,
}

/// One IPAM range (`runtimeConfig.ipRanges`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    /// Subnet in CIDR form.
    pub subnet: String,
    /// First address to hand out.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub range_start: String,
    /// Last address to hand out.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub range_end: String,
    /// Gateway.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// DNS settings offered to plugins (`runtimeConfig.dns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolver options.
    pub options: Vec<String>,
}

/// A pod's attachment to the network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodNetwork {
    /// The sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub container_id: String,
    /// The pod's network namespace file.
    pub netns_path: PathBuf,
    /// The interface name in the pod, normally [`DEFAULT_IFNAME`].
    pub ifname: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Host ports.
    pub port_mappings: Vec<PortMapping>,
    /// Traffic shaping, if requested.
    pub bandwidth: Option<Bandwidth>,
    /// IPAM range sets (`runtimeConfig.ipRanges`: one set per address
    /// family, each a list of ranges), if offered.
    pub ip_ranges: Vec<Vec<IpRange>>,
    /// DNS, if offered.
    pub dns: Option<DnsConfig>,
}

impl PodNetwork {
    /// A pod attachment on [`DEFAULT_IFNAME`] without extra capabilities.
    pub fn new(
        container_id: &str,
        netns_path: &Path,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Self {
        PodNetwork {
            container_id: container_id.to_string(),
            netns_path: netns_path.to_path_buf(),
            ifname: DEFAULT_IFNAME.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            ..Default::default()
        }
    }

    /// The `CNI_ARGS` pairs kubelet-style runtimes pass.
    pub fn cni_args(&self) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), self.namespace.clone()),
            ("K8S_POD_NAME".into(), self.name.clone()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".into(),
                self.container_id.clone(),
            ),
            ("K8S_POD_UID".into(), self.uid.clone()),
        ]
    }

    /// The capability arguments this pod offers, by capability name.
    pub fn capability_args(&self) -> Map<String, Value> {
        let mut caps = Map::new();
        caps.insert("portMappings".into(), to_value(&self.port_mappings));
        if let Some(b) = &self.bandwidth {
            caps.insert("bandwidth".into(), to_value(b));
        }
        if !self.ip_ranges.is_empty() {
            caps.insert("ipRanges".into(), to_value(&self.ip_ranges));
        }
        if let Some(d) = &self.dns {
            caps.insert("dns".into(), to_value(d));
        }
        caps
    }

    fn validate(&self, need_netns: bool) -> Result<(), CniError> {
        let bad = |m: String| Err(CniError::InvalidArgument(m));
        let id = &self.container_id;
        let id_ok = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !id_ok {
            return bad(format!(
                "container id {id:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
            ));
        }
        let ifname = &self.ifname;
        if ifname.is_empty()
            || ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
        {
            return bad(format!("invalid interface name {ifname:?}"));
        }
        for (k, v) in self.cni_args() {
            if v.contains(';') || v.contains('\0') {
                return bad(format!("{k} value {v:?} contains ';'"));
            }
        }
        if need_netns && !self.netns_path.is_absolute() {
            return bad(format!(
                "network namespace path {:?} must be absolute",
                self.netns_path
            ));
        }
        Ok(())
    }
}

/// Serialises plain data (which cannot fail for these types).
fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Builds the configuration one plugin of `list` gets on stdin: its own
/// object plus the list's `name` and `cniVersion`, `prevResult` when given,
/// and `runtimeConfig` holding the offered capability arguments that the
/// plugin declares in `capabilities`.
pub fn plugin_config(
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Value {
    let mut conf = match &plugin.raw {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    match prev_result {
        Some(prev) => {
            conf.insert("prevResult".into(), prev.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    let mut runtime = Map::new();
    if let Some(Value::Object(caps)) = plugin.raw.get("capabilities") {
        for (cap, supported) in caps {
            if supported.as_bool() != Some(true) {
                continue;
            }
            if let Some(arg) = capability_args.get(cap) {
                runtime.insert(cap.clone(), arg.clone());
            }
        }
    }
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    Value::Object(conf)
}

/// Whether a spec version passes `prevResult` on DEL and supports CHECK
/// (0.4.0 and later).
/// Whether DEL of a network needs the pod's network namespace. Only the
/// reference plugins whose DEL undoes nothing inside the namespace are known
/// not to: what they undo lives outside it (IPAM leases of host-local and
/// static, the host-side rules of portmap and firewall, bandwidth's ifb
/// device), the interfaces they made inside go with the namespace, and they
/// treat an empty `CNI_NETNS` as a namespace already gone. bridge and ptp
/// qualify only without `ipMasq` (their masquerade teardown reads the
/// addresses off the interface in the namespace). Any other plugin or IPAM
/// type (dhcp, tuning, host-device, third-party plugins) needs it.
pub fn del_needs_netns(list: &NetworkConfigList) -> bool {
    list.plugins.iter().any(|p| plugin_del_needs_netns(&p.raw))
}

fn plugin_del_needs_netns(raw: &Value) -> bool {
    let ipam_outside = match raw.get("ipam").and_then(|i| i.get("type")) {
        None => true,
        Some(t) => matches!(t.as_str(), Some("host-local") | Some("static")),
    };
    let masquerades = raw.get("ipMasq").and_then(Value::as_bool).unwrap_or(false);
    match raw.get("type").and_then(Value::as_str).unwrap_or("") {
        "bridge" | "ptp" => masquerades || !ipam_outside,
        "macvlan" | "ipvlan" | "vlan" => !ipam_outside,
        "loopback" | "portmap" | "bandwidth" | "firewall" => false,
        _ => true,
    }
}

fn at_least_040(version: &str) -> bool {
    version_at_least(version, (0, 4))
}

/// Whether a spec version has STATUS and GC (1.1.0 and later).
pub fn at_least_110(version: &str) -> bool {
    version_at_least(version, (1, 1))
}

fn version_at_least(version: &str, (want_major, want_minor): (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (want_major, want_minor)
}

/// The key of GC's list of attachments to keep (spec 1.1.0).
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// The pod network: a loaded configuration list and where to find plugins
/// and cached results.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    list: NetworkConfigList,
    bin_dirs: Vec<PathBuf>,
    cache: ResultCache,
    timeout: Duration,
    builtin_loopback: bool,
}

impl CniNetwork {
    /// Loads the default network of `conf_dir` and checks that its plugins
    /// are installed in `bin_dirs` (all but `loopback` when
    /// `builtin_loopback`, see [`Self::with_builtin_loopback`]). ADD results
    /// are cached under `cache_dir` (libcni uses `/var/lib/cni`).
    pub fn load(
        conf_dir: &Path,
        bin_dirs: &[PathBuf],
        cache_dir: &Path,
        builtin_loopback: bool,
    ) -> Result<Self, CniError> {
        let list = load_default_network(conf_dir)?;
        check_plugins(&list, bin_dirs, builtin_loopback)?;
        tracing::info!(network = %list, "loaded CNI network");
        Ok(Self::new(list, bin_dirs, cache_dir).with_builtin_loopback(builtin_loopback))
    }

    /// A network from an already parsed list (plugins are looked up at call
    /// time).
    pub fn new(list: NetworkConfigList, bin_dirs: &[PathBuf], cache_dir: &Path) -> Self {
        CniNetwork {
            list,
            bin_dirs: bin_dirs.to_vec(),
            cache: ResultCache::new(cache_dir),
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            builtin_loopback: false,
        }
    }

    /// Does plugins of type `loopback` in-process instead of running the
    /// binary (see [`loopback`]): same effect and output, one process
    /// start less per ADD and per DEL.
    pub fn with_builtin_loopback(mut self, on: bool) -> Self {
        self.builtin_loopback = on;
        self
    }

    /// Sets the limit of each plugin call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The configuration list.
    pub fn config(&self) -> &NetworkConfigList {
        &self.list
    }

    /// The network name.
    pub fn name(&self) -> &str {
        &self.list.name
    }

    fn invocation(&self, pod: &PodNetwork, netns: String) -> Invocation {
        Invocation {
            container_id: pod.container_id.clone(),
            netns,
            ifname: pod.ifname.clone(),
            args: pod.cni_args(),
            bin_dirs: self.bin_dirs.clone(),
        }
    }

    fn plugin_path(&self, plugin: &PluginConfig) -> Result<PathBuf, CniError> {
        find_plugin(&self.bin_dirs, &plugin.plugin_type).ok_or_else(|| {
            let dirs: Vec<String> = self
                .bin_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            CniError::PluginNotFound {
                plugin: plugin.plugin_type.clone(),
                network: self.list.name.clone(),
                dirs: dirs.join(":"),
            }
        })
    }

    fn run(
        &self,
        plugin: &PluginConfig,
        command: CniCommand,
        inv: &Invocation,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
    ) -> Result<Vec<u8>, CniError> {
        let conf = plugin_config(&self.list, plugin, prev, caps);
        self.run_conf(plugin, command, inv, &conf)
    }

    /// Runs one plugin with the configuration it gets on stdin.
    fn run_conf(
        &self,
        plugin: &PluginConfig,
        command: CniCommand,
        inv: &Invocation,
        conf: &Value,
    ) -> Result<Vec<u8>, CniError> {
        let exec_error = |source| CniError::Exec {
            network: self.list.name.clone(),
            source: Box::new(source),
        };
        if self.builtin_loopback && loopback::handles(plugin, &self.list.cni_version) {
            let prev = conf.get("prevResult");
            return loopback::run(command, &self.list.cni_version, &inv.netns, prev)
                .map_err(exec_error);
        }
        let path = self.plugin_path(plugin)?;
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        exec::exec_plugin(
            &plugin.plugin_type,
            &path,
            command,
            inv,
            &stdin,
            self.timeout,
        )
        .map_err(exec_error)
    }

    /// Attaches the pod: ADD of every plugin in order, each getting the
    /// previous result; the final result is cached and returned. When a
    /// step fails, the plugins already run are deleted again (in reverse)
    /// and the error is returned.
    pub fn add(&self, pod: &PodNetwork) -> Result<CniResult, CniError> {
        pod.validate(true)?;
        let inv = self.invocation(pod, pod.netns_path.display().to_string());
        let caps = pod.capability_args();
        let mut prev: Option<CniResult> = None;
        for (i, plugin) in self.list.plugins.iter().enumerate() {
            let step = self
                .run(
                    plugin,
                    CniCommand::Add,
                    &inv,
                    prev.as_ref().map(|r| &r.raw),
                    &caps,
                )
                .and_then(|out| {
                    CniResult::parse(&out).map_err(|source| CniError::Result {
                        network: self.list.name.clone(),
                        plugin: plugin.plugin_type.clone(),
                        source,
                    })
                });
            match step {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    tracing::warn!(network = %self.list.name, container = %pod.container_id, error = %e, "CNI ADD failed, deleting");
                    self.rollback(pod, &inv, i, prev.as_ref(), &caps);
                    return Err(e);
                }
            }
        }
        let Some(result) = prev else {
            // A parsed list always has at least one plugin.
            return Err(CniError::InvalidArgument(format!(
                "network {:?} has no plugins",
                self.list.name
            )));
        };
        let entry = CacheEntry {
            kind: cache::CACHE_KIND.into(),
            container_id: pod.container_id.clone(),
            if_name: pod.ifname.clone(),
            network_name: self.list.name.clone(),
            cni_args: inv.args.clone(),
            capability_args: Value::Object(caps.clone()),
            result: result.raw.clone(),
        };
        if let Err(e) = self.cache.store(&entry) {
            let last = self.list.plugins.len() - 1;
            self.rollback(pod, &inv, last, Some(&result), &caps);
            return Err(e.into());
        }
        tracing::info!(network = %self.list.name, container = %pod.container_id, ips = ?result.pod_ips(&pod.ifname), "CNI ADD done");
        Ok(result)
    }

    /// DEL of plugins `0..=last` in reverse order, best effort.
    fn rollback(
        &self,
        pod: &PodNetwork,
        inv: &Invocation,
        last: usize,
        prev: Option<&CniResult>,
        caps: &Map<String, Value>,
    ) {
        let prev = prev
            .filter(|_| at_least_040(&self.list.cni_version))
            .map(|r| &r.raw);
        for plugin in self.list.plugins[..=last].iter().rev() {
            if let Err(e) = self.run(plugin, CniCommand::Del, inv, prev, caps) {
                tracing::warn!(network = %self.list.name, container = %pod.container_id, error = %e, "CNI DEL during rollback failed");
            }
        }
    }

    /// Whether DEL of this network needs the pod's network namespace (see
    /// [`del_needs_netns`]).
    pub fn del_needs_netns(&self) -> bool {
        del_needs_netns(&self.list)
    }

    /// Detaches the pod: DEL of every plugin in reverse order with the
    /// cached ADD result as `prevResult`, then drops the cache entry.
    /// Idempotent: a missing cache entry or namespace is fine (plugins get
    /// an empty `CNI_NETNS` when the namespace is gone).
    pub fn del(&self, pod: &PodNetwork) -> Result<(), CniError> {
        pod.validate(false)?;
        let netns = if crate::netns::is_netns(&pod.netns_path) {
            pod.netns_path.display().to_string()
        } else {
            tracing::debug!(netns = %pod.netns_path.display(), "netns gone, CNI DEL without it");
            String::new()
        };
        let inv = self.invocation(pod, netns);
        let cached = match self
            .cache
            .load(&self.list.name, &pod.container_id, &pod.ifname)
        {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable CNI cache entry for DEL");
                None
            }
        };
        let prev = cached
            .as_ref()
            .filter(|_| at_least_040(&self.list.cni_version))
            .map(|e| &e.result);
        let caps = pod.capability_args();
        for plugin in self.list.plugins.iter().rev() {
            self.run(plugin, CniCommand::Del, &inv, prev, &caps)?;
        }
        self.cache
            .remove(&self.list.name, &pod.container_id, &pod.ifname)?;
        tracing::info!(network = %self.list.name, container = %pod.container_id, "CNI DEL done");
        Ok(())
    }

    /// Verifies the attachment: CHECK of every plugin in order with the
    /// cached ADD result. Needs spec 0.4.0 or later, CHECK not disabled, and
    /// a cached result.
    pub fn check(&self, pod: &PodNetwork) -> Result<(), CniError> {
        pod.validate(true)?;
        let unavailable = |reason: String| CniError::CheckUnavailable {
            network: self.list.name.clone(),
            reason,
        };
        if !at_least_040(&self.list.cni_version) {
            return Err(unavailable(format!(
                "cniVersion {:?} has no CHECK",
                self.list.cni_version
            )));
        }
        if self.list.disable_check {
            return Err(unavailable("disableCheck is set".into()));
        }
        let entry = self
            .cache
            .load(&self.list.name, &pod.container_id, &pod.ifname)?
            .ok_or_else(|| unavailable(format!("no cached result for {}", pod.container_id)))?;
        let inv = self.invocation(pod, pod.netns_path.display().to_string());
        let caps = pod.capability_args();
        for plugin in &self.list.plugins {
            self.run(plugin, CniCommand::Check, &inv, Some(&entry.result), &caps)?;
        }
        Ok(())
    }

    /// Whether the network is ready to attach pods: STATUS of every plugin
    /// in order (spec 1.1.0; an older network is taken as ready, there is
    /// nothing to ask).
    pub fn status(&self) -> Result<(), CniError> {
        if !at_least_110(&self.list.cni_version) {
            return Ok(());
        }
        let inv = Invocation {
            bin_dirs: self.bin_dirs.clone(),
            ..Default::default()
        };
        for plugin in &self.list.plugins {
            self.run(plugin, CniCommand::Status, &inv, None, &Map::new())?;
        }
        Ok(())
    }

    /// Garbage collection (spec 1.1.0; nothing for an older network): every
    /// plugin is told the attachments (container id, interface) that are
    /// still valid and frees what belongs to any other, e.g. IPAM leases of
    /// pods lost in a crash. All plugins are asked; the first error is
    /// returned.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<(), CniError> {
        if !at_least_110(&self.list.cni_version) {
            return Ok(());
        }
        let attachments: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
            .collect();
        let inv = Invocation {
            bin_dirs: self.bin_dirs.clone(),
            ..Default::default()
        };
        let mut first_error = None;
        for plugin in &self.list.plugins {
            let mut conf = plugin_config(&self.list, plugin, None, &Map::new());
            conf[VALID_ATTACHMENTS] = Value::Array(attachments.clone());
            if let Err(e) = self.run_conf(plugin, CniCommand::Gc, &inv, &conf) {
                tracing::warn!(network = %self.list.name, plugin = %plugin.plugin_type, error = %e, "CNI GC failed");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The cached ADD result of a pod, if any.
    pub fn cached_result(&self, pod: &PodNetwork) -> Result<Option<CniResult>, CniError> {
        let Some(entry) = self
            .cache
            .load(&self.list.name, &pod.container_id, &pod.ifname)?
        else {
            return Ok(None);
        };
        CniResult::from_value(entry.result)
            .map(Some)
            .map_err(|source| CniError::Result {
                network: self.list.name.clone(),
                plugin: "cache".into(),
                source,
            })
    }

    /// The spec versions a plugin supports (its VERSION answer).
    pub fn plugin_versions(&self, plugin_type: &str) -> Result<Vec<String>, CniError> {
        let plugin = PluginConfig {
            plugin_type: plugin_type.to_string(),
            raw: Value::Object(Map::new()),
        };
        let inv = Invocation {
            bin_dirs: self.bin_dirs.clone(),
            ..Default::default()
        };
        let out = self.run(&plugin, CniCommand::Version, &inv, None, &Map::new())?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| CniError::Result {
            network: self.list.name.clone(),
            plugin: plugin_type.to_string(),
            source: ResultError::Invalid(e.to_string()),
        })?;
        Ok(v.get("supportedVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests;
