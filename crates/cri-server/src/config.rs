//! criusd configuration: one TOML file, every key optional.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crius/config.toml";

/// The longest path a unix socket can have (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Errors of loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and shows the line.
        message: String,
    },
    /// A key has a value that parses but is not acceptable.
    #[error("invalid value for config key `{key}`: {message}")]
    Value {
        /// The dotted key name.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn value_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        message: message.into(),
    }
}

/// How container cgroups are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Plain cgroupfs directories.
    #[default]
    Cgroupfs,
    /// systemd slices and scopes.
    Systemd,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One OCI runtime handler (`[runtimes.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    /// The OCI runtime binary, a path or a name looked up in PATH.
    pub path: String,
    /// The runtime's state directory (`--root`); the runtime's default when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root: String,
    /// Glob patterns (Go's `path.Match`: `*` does not cross a `/`) of pod
    /// annotations passed into the OCI spec of the pod's sandbox and of its
    /// containers, for hooks and VM runtimes keyed on them (containerd's
    /// `pod_annotations`). None by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod_annotations: Vec<String>,
    /// Glob patterns of container annotations passed into the container's
    /// OCI spec (containerd's `container_annotations`). None by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_annotations: Vec<String>,
    /// A privileged container on this handler gets none of the host's
    /// devices and no blanket access to devices in its device cgroup (only
    /// the devices it asks for), as VM-based handlers need; as containerd's
    /// runtime option of the same name.
    pub privileged_without_host_devices: bool,
}

impl Default for RuntimeHandler {
    fn default() -> Self {
        RuntimeHandler {
            path: "runc".into(),
            root: String::new(),
            pod_annotations: Vec::new(),
            container_annotations: Vec::new(),
            privileged_without_host_devices: false,
        }
    }
}

/// `[cdi]`: Container Device Interface devices (`CDI_devices` of a
/// container and its `cdi.k8s.io/*` annotations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdiConfig {
    /// Resolve the CDI devices containers ask for and inject them into their
    /// specs (containerd's `enable_cdi`). Off: a container that asks for CDI
    /// devices in `CDI_devices` is refused, the annotations are ignored.
    pub enable: bool,
    /// Directories of CDI spec files (`*.json`, `*.yaml`), read when a
    /// container asks for CDI devices; a device defined in a later directory
    /// wins over one of the same name in an earlier one (containerd's
    /// `cdi_spec_dirs`).
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            enable: true,
            spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
        }
    }
}

/// `[nri]`: the Node Resource Interface, through which NRI plugins (as
/// written for containerd 2.x and CRI-O) adjust containers as they are
/// created. Changes take effect on restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NriConfig {
    /// Listen for NRI plugins on `socket_path` (on by default, as in
    /// containerd 2.x: with no plugin connected it has no effect).
    pub enable: bool,
    /// The unix socket NRI plugins connect to (its directory is made 0700,
    /// the socket 0600).
    pub socket_path: PathBuf,
    /// How long a plugin that connected has to register.
    pub plugin_registration_timeout: String,
    /// How long a plugin has to answer a call; a plugin that does not is
    /// dropped, and the container operation goes on without it.
    pub plugin_request_timeout: String,
    /// Directory of pre-started plugins: at start-up criusd runs each
    /// executable named `NN-name` in it (NN: two digits, the plugin's
    /// index) with a connection of its own, as containerd does; the plugin
    /// is killed when it is dropped and when criusd stops. A missing
    /// directory has none.
    pub plugin_path: PathBuf,
    /// Directory of the pre-started plugins' configurations: plugin
    /// `NN-name` is given the text of `NN-name.conf`, else `name.conf`, in
    /// its Configure (at most 1 MiB). Plugins that connect to the socket
    /// get none.
    pub plugin_config_path: PathBuf,
    /// Do not listen on `socket_path`: only pre-started plugins run.
    pub disable_connections: bool,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: true,
            socket_path: "/var/run/nri/nri.sock".into(),
            plugin_registration_timeout: "5s".into(),
            plugin_request_timeout: "2s".into(),
            plugin_path: "/opt/nri/plugins".into(),
            plugin_config_path: "/etc/nri/conf.d".into(),
            disable_connections: false,
        }
    }
}

/// `[cni]`: where the pod network is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory of CNI network configuration files.
    pub conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Do the `loopback` plugin in-process (set `lo` up in the pod's netns,
    /// pass the previous result through) instead of running its binary,
    /// which saves a process start on every pod's ADD and DEL. Off: the
    /// binary runs like any other plugin.
    pub builtin_loopback: bool,
    /// StopPodSandbox removes the pod's netns before CNI DEL when no plugin
    /// of the network needs it for DEL (see `crius_netns::cni::del_needs_netns`):
    /// the kernel then deletes the pod's interfaces in the background instead
    /// of DEL waiting for it. Off: DEL always runs inside the netns.
    pub teardown_netns_first: bool,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            builtin_loopback: true,
            teardown_netns_first: true,
        }
    }
}

/// `[registry]`: registry hosts configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Directory laid out as containerd's `certs.d`: `<config_path>/<host>/hosts.toml`.
    pub config_path: PathBuf,
    /// A pull that receives no data from the registry for this long fails
    /// (containerd's `image_pull_progress_timeout`): a duration such as
    /// `5m`, or `0` to wait forever.
    pub pull_progress_timeout: DurationOrZero,
    /// Layers one pull downloads at the same time (containerd's
    /// `max_concurrent_downloads`), 1 to 64.
    pub max_concurrent_downloads: i64,
    /// Node credentials for pulls whose request carries none, the pause
    /// image's included (CRI-O's `global_auth_file`): a file in the
    /// `~/.docker/config.json` / containers-auth.json format,
    /// `{"auths": {"host": {"auth": "<base64 user:pass>"}}}`, read at each
    /// pull (at most 1 MiB). Empty: none.
    pub auth_file: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: "/etc/crius/certs.d".into(),
            pull_progress_timeout: DurationOrZero::Text("5m".into()),
            max_concurrent_downloads: crius_image::DEFAULT_MAX_CONCURRENT_DOWNLOADS as i64,
            auth_file: String::new(),
        }
    }
}

/// The range of `registry.max_concurrent_downloads`.
const CONCURRENT_DOWNLOADS: std::ops::RangeInclusive<i64> = 1..=64;

/// `[images]`: local images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Images reported as pinned (kubelet's image garbage collection keeps
    /// them) besides the pause image, which always is: references
    /// (`busybox:1.36`, normalized) or patterns where `*` matches any run
    /// of characters and `?` one, against the full names of an image's tags
    /// and digests (`registry.k8s.io/*`, `*@sha256:...`).
    pub pinned: Vec<String>,
}

/// A duration key that may also be `0` (off), given as a string (`"5m"`,
/// `"0"`) or as the integer 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationOrZero {
    /// An integer: only 0 is accepted (a bare number of another value
    /// would hide its unit).
    Int(i64),
    /// A duration with a unit, or `"0"`.
    Text(String),
}

impl DurationOrZero {
    /// The duration, `None` for zero (off).
    pub fn parse(&self) -> Result<Option<Duration>, String> {
        match self {
            DurationOrZero::Int(0) => Ok(None),
            DurationOrZero::Int(n) => Err(format!(
                "{n} needs a unit (such as \"{n}s\"), or is 0 to turn it off"
            )),
            DurationOrZero::Text(t) if t.trim() == "0" => Ok(None),
            DurationOrZero::Text(t) => parse_duration(t).map(Some),
        }
    }
}

/// `[stream]`: the streaming server for exec, attach and port-forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Listen address; port 0 picks a free port at start-up.
    pub address: String,
    /// TLS certificate chain (PEM); TLS is on when this and the key are set.
    pub tls_cert_file: String,
    /// TLS private key (PEM).
    pub tls_key_file: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            address: "127.0.0.1:0".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address of `/metrics` (e.g. `127.0.0.1:9190`); empty turns metrics serving off.
    pub address: String,
}

/// `[tracing]`: export of the daemon's spans over OpenTelemetry OTLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/gRPC collector endpoint, plain `http://` (e.g. `http://127.0.0.1:4317`); empty turns export off.
    pub otlp_endpoint: String,
    /// Fraction of traces exported, from 0.0 to 1.0 (a sampled parent keeps its children).
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute of the exported spans.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: String::new(),
            sampling_ratio: 1.0,
            service_name: "criusd".into(),
        }
    }
}

impl TracingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.otlp_endpoint.is_empty() {
            // Plain gRPC only (to a collector or agent on the node): no
            // TLS client is built into criusd for this.
            let rest = self.otlp_endpoint.strip_prefix("http://").ok_or_else(|| {
                value_err(
                    "tracing.otlp_endpoint",
                    format!(
                        "{:?} must start with http:// (TLS is not supported)",
                        self.otlp_endpoint
                    ),
                )
            })?;
            let authority = rest.split('/').next().unwrap_or("");
            if authority.is_empty() || authority.contains(char::is_whitespace) {
                return Err(value_err(
                    "tracing.otlp_endpoint",
                    format!("{:?} has no host", self.otlp_endpoint),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(value_err(
                "tracing.sampling_ratio",
                format!("{} is not between 0.0 and 1.0", self.sampling_ratio),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(value_err("tracing.service_name", "must not be empty"));
        }
        Ok(())
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent state directory.
    pub root: PathBuf,
    /// Runtime state directory (sockets, netns mounts, bundles).
    pub state: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    /// trace, debug, info, warn or error (or a tracing filter directive).
    pub log_level: String,
    /// text or json.
    pub log_format: LogFormat,
    /// cgroupfs or systemd.
    pub cgroup_driver: CgroupDriver,
    /// With the systemd cgroup driver on a host whose init is systemd, each
    /// pod's shim goes into a transient scope unit of its own,
    /// `crius-shim-<pod id>.scope`, in this slice (as CRI-O's
    /// `conmon_cgroup` does for conmon) instead of staying in criusd's
    /// cgroup (crius.service's); empty keeps every shim in criusd's cgroup.
    /// A failed move only logs a warning. A change applies to shims
    /// launched afterwards.
    pub shim_slice: String,
    /// Advanced: the D-Bus address (such as `unix:path=/run/systemd/private`)
    /// at which criusd asks systemd's manager, peer to peer, for the shims'
    /// scopes; setting it also says that systemd runs here. Empty:
    /// systemd's private socket `/run/systemd/private`, else the system
    /// bus, when /run/systemd/system exists. A change needs a restart.
    pub systemd_address: String,
    /// The image of every pod's infra (pause) container.
    pub pause_image: String,
    /// Run no infra (pause) container for a pod that does not need one (its
    /// containers do not share a PID namespace and it has no user
    /// namespace): the pod's shim holds its namespaces instead, as CRI-O's
    /// `drop_infra_ctr` does.
    pub drop_infra_container: bool,
    /// With `drop_infra_container`: a pod whose containers share a PID
    /// namespace (and that has no user namespace) gets a PID-namespace
    /// holder process from its shim instead of a pause container (the pod
    /// then has no pause process, image or bundle). On by default; `false`
    /// brings the pause back for such pods.
    pub pid_holder: bool,
    /// The handler used when a pod names none.
    pub default_runtime: String,
    /// Size of each pod's /dev/shm tmpfs (a Kubernetes quantity such as 64Mi).
    pub shm_size: String,
    /// The shim binary; empty finds `containerd-shim-crius-v2` next to criusd or in PATH.
    pub shim_path: String,
    /// How long a pod or container whose RunPodSandbox/CreateContainer
    /// finished after its caller gave up is kept for a retry with the same
    /// name before it is removed (`300s`, `5m`, `1h`, `500ms`).
    pub handback_expiry: String,
    /// Devices handed to a container (its CRI devices and, privileged, the
    /// host's) are owned by its security context's `run_as_user` and
    /// `run_as_group` (0 when unset) instead of keeping the host's owner, so
    /// a non-root container can open them (containerd's
    /// `device_ownership_from_security_context`).
    pub device_ownership_from_security_context: bool,
    /// Runtime handlers by name.
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// Pod network configuration.
    pub cni: CniConfig,
    /// Registry hosts configuration.
    pub registry: RegistryConfig,
    /// Local images.
    pub images: ImagesConfig,
    /// Streaming server.
    pub stream: StreamConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// OpenTelemetry span export.
    pub tracing: TracingConfig,
    /// CDI devices.
    pub cdi: CdiConfig,
    /// NRI plugins.
    pub nri: NriConfig,
}

impl Default for Config {
    fn default() -> Self {
        let mut runtimes = BTreeMap::new();
        runtimes.insert("runc".to_string(), RuntimeHandler::default());
        Config {
            root: "/var/lib/crius".into(),
            state: "/run/crius".into(),
            socket: "/run/crius/crius.sock".into(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            shim_slice: "system.slice".into(),
            systemd_address: String::new(),
            pause_image: "registry.k8s.io/pause:3.10".into(),
            drop_infra_container: true,
            pid_holder: true,
            default_runtime: "runc".into(),
            shm_size: "64Mi".into(),
            shim_path: String::new(),
            handback_expiry: "5m".into(),
            device_ownership_from_security_context: false,
            runtimes,
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            images: ImagesConfig::default(),
            stream: StreamConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
            cdi: CdiConfig::default(),
            nri: NriConfig::default(),
        }
    }
}

const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl Config {
    /// Parses a configuration from TOML text; `path` is only used in messages.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        // A file that adds handlers keeps the built-in runc one, as it would
        // in containerd's merged configuration.
        config.runtimes.entry("runc".to_string()).or_default();
        Ok(config)
    }

    /// Loads the configuration: the file, then the drop-ins of
    /// `<its directory>/config.d/*.toml` in lexical order. A missing file at
    /// the default location means all defaults; a missing file that the
    /// operator named is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        Ok(Self::load_layered(path, explicit)?.0)
    }

    /// Like [`Config::load`], with the file that set each dotted key.
    pub fn load_layered(path: &Path, explicit: bool) -> Result<(Self, Origins), ConfigError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let mut files = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(text) => files.push((path.to_path_buf(), text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let dir = drop_in_dir(path);
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut names: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                names.sort();
                for p in names {
                    let text = read(&p)?;
                    files.push((p, text));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ConfigError::Read { path: dir, source }),
        }
        let layers: Vec<(&Path, &str)> = files
            .iter()
            .map(|(p, t)| (p.as_path(), t.as_str()))
            .collect();
        Self::merge_layers(&layers)
    }

    /// Merges TOML layers, later keys overriding earlier ones, tables key by
    /// key. Each layer alone must be valid (an unknown key names its file).
    pub fn merge_layers(layers: &[(&Path, &str)]) -> Result<(Self, Origins), ConfigError> {
        let mut merged = toml::Table::new();
        let mut origins = Origins::new();
        for (path, text) in layers {
            Self::from_toml(path, text)?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.to_path_buf(),
                        message: e.to_string().trim_end().to_string(),
                    })?;
            merge_table(&mut merged, table, "", path, &mut origins);
        }
        let last = layers
            .last()
            .map(|(p, _)| p.to_path_buf())
            .unwrap_or_default();
        let mut config: Config =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: last,
                    message: e.to_string().trim_end().to_string(),
                })?;
        config.runtimes.entry("runc".to_string()).or_default();
        Ok((config, origins))
    }

    /// Checks the values that parse but may still be wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("socket", &self.socket),
            ("cni.conf_dir", &self.cni.conf_dir),
        ] {
            if !p.is_absolute() {
                return Err(value_err(
                    key,
                    format!("{:?} is not an absolute path", p.display().to_string()),
                ));
            }
        }
        for (i, d) in self.cni.bin_dirs.iter().enumerate() {
            if !d.is_absolute() {
                return Err(value_err(
                    format!("cni.bin_dirs[{i}]"),
                    format!("{:?} is not an absolute path", d.display().to_string()),
                ));
            }
        }
        // A unix socket's path holds at most 107 bytes: the daemon's own, and
        // the pod shims' `<state>/s/<64 hex digits>` (the shims' layout).
        let max_state = crate::shimclient::Layout::max_state_len(MAX_SOCKET_PATH);
        if self.state.as_os_str().len() > max_state {
            return Err(value_err(
                "state",
                format!(
                    "{:?} is too long: the pod shims' sockets (<state>/s/<64 hex digits>) \
                     need it to be at most {max_state} bytes",
                    self.state.display().to_string(),
                ),
            ));
        }
        if self.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(value_err(
                "socket",
                format!(
                    "{:?} is longer than a unix socket path can be ({MAX_SOCKET_PATH} bytes)",
                    self.socket.display().to_string()
                ),
            ));
        }
        if !self.log_level.contains('=') && !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(value_err(
                "log_level",
                format!(
                    "{:?} is not one of {}",
                    self.log_level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        crate::shimscope::validate_slice(&self.shim_slice)
            .map_err(|m| value_err("shim_slice", m))?;
        if !self.systemd_address.is_empty() {
            self.systemd_address.parse::<zbus::Address>().map_err(|e| {
                value_err(
                    "systemd_address",
                    format!("{:?}: {e}", self.systemd_address),
                )
            })?;
        }
        if self.pause_image.trim().is_empty() {
            return Err(value_err("pause_image", "must not be empty"));
        }
        parse_size(&self.shm_size).map_err(|m| value_err("shm_size", m))?;
        parse_duration(&self.handback_expiry).map_err(|m| value_err("handback_expiry", m))?;
        self.pull_progress_timeout()?;
        if !CONCURRENT_DOWNLOADS.contains(&self.registry.max_concurrent_downloads) {
            return Err(value_err(
                "registry.max_concurrent_downloads",
                format!(
                    "{} is not between {} and {}",
                    self.registry.max_concurrent_downloads,
                    CONCURRENT_DOWNLOADS.start(),
                    CONCURRENT_DOWNLOADS.end()
                ),
            ));
        }
        if !self.registry.auth_file.is_empty() && !Path::new(&self.registry.auth_file).is_absolute()
        {
            return Err(value_err(
                "registry.auth_file",
                format!("{:?} is not an absolute path", self.registry.auth_file),
            ));
        }
        self.pinned_images()?;
        for (name, handler) in &self.runtimes {
            if name.is_empty() {
                return Err(value_err("runtimes", "a handler name must not be empty"));
            }
            if handler.path.trim().is_empty() {
                return Err(value_err(
                    format!("runtimes.{name}.path"),
                    "must not be empty",
                ));
            }
            for (key, patterns) in [
                ("pod_annotations", &handler.pod_annotations),
                ("container_annotations", &handler.container_annotations),
            ] {
                for (i, p) in patterns.iter().enumerate() {
                    crius_spec::annotations::valid_pattern(p)
                        .map_err(|m| value_err(format!("runtimes.{name}.{key}[{i}]"), m))?;
                }
            }
        }
        if !self.runtimes.contains_key(&self.default_runtime) {
            let known: Vec<&str> = self.runtimes.keys().map(String::as_str).collect();
            return Err(value_err(
                "default_runtime",
                format!(
                    "{:?} has no [runtimes.{}] table (known handlers: {})",
                    self.default_runtime,
                    self.default_runtime,
                    known.join(", ")
                ),
            ));
        }
        if !self.metrics.address.is_empty() {
            self.metrics.address.parse::<SocketAddr>().map_err(|e| {
                value_err(
                    "metrics.address",
                    format!("{:?}: {e}", self.metrics.address),
                )
            })?;
        }
        if self.stream.tls_cert_file.is_empty() != self.stream.tls_key_file.is_empty() {
            return Err(value_err(
                "stream.tls_cert_file",
                "tls_cert_file and tls_key_file must be set together",
            ));
        }
        self.stream
            .address
            .parse::<SocketAddr>()
            .map_err(|e| value_err("stream.address", format!("{:?}: {e}", self.stream.address)))?;
        self.tracing.validate()?;
        for (key, path) in [
            ("nri.socket_path", &self.nri.socket_path),
            ("nri.plugin_path", &self.nri.plugin_path),
            ("nri.plugin_config_path", &self.nri.plugin_config_path),
        ] {
            if !path.is_absolute() {
                return Err(value_err(
                    key,
                    format!("{:?} is not an absolute path", path.display().to_string()),
                ));
            }
        }
        self.nri_timeouts()?;
        for (i, d) in self.cdi.spec_dirs.iter().enumerate() {
            if !d.is_absolute() {
                return Err(value_err(
                    format!("cdi.spec_dirs[{i}]"),
                    format!("{:?} is not an absolute path", d.display().to_string()),
                ));
            }
        }
        Ok(())
    }

    /// The NRI registration and request timeouts (validated by
    /// [`Config::validate`]); neither may be zero.
    pub fn nri_timeouts(&self) -> Result<(Duration, Duration), ConfigError> {
        let one = |key: &str, v: &str| {
            parse_duration(v)
                .and_then(|d| {
                    if d.is_zero() {
                        Err("must not be zero".to_string())
                    } else {
                        Ok(d)
                    }
                })
                .map_err(|m| value_err(key, m))
        };
        Ok((
            one(
                "nri.plugin_registration_timeout",
                &self.nri.plugin_registration_timeout,
            )?,
            one(
                "nri.plugin_request_timeout",
                &self.nri.plugin_request_timeout,
            )?,
        ))
    }

    /// The shm size in bytes (validated by [`Config::validate`]).
    pub fn shm_size_bytes(&self) -> Result<u64, ConfigError> {
        parse_size(&self.shm_size).map_err(|m| value_err("shm_size", m))
    }

    /// The hand-back expiry (validated by [`Config::validate`]).
    pub fn handback_expiry(&self) -> Result<Duration, ConfigError> {
        parse_duration(&self.handback_expiry).map_err(|m| value_err("handback_expiry", m))
    }

    /// The pull progress timeout; `None` when turned off (validated by
    /// [`Config::validate`]).
    pub fn pull_progress_timeout(&self) -> Result<Option<Duration>, ConfigError> {
        self.registry
            .pull_progress_timeout
            .parse()
            .map_err(|m| value_err("registry.pull_progress_timeout", m))
    }

    /// The compiled `[images] pinned` patterns (validated by
    /// [`Config::validate`]).
    pub fn pinned_images(&self) -> Result<crius_image::pinning::Pinned, ConfigError> {
        crius_image::pinning::Pinned::new(&self.images.pinned)
            .map_err(|(i, m)| value_err(format!("images.pinned[{i}]"), m))
    }

    /// The image manager's settings from `[registry]` and `[images]`
    /// (validated by [`Config::validate`]; defaults where a value is bad).
    pub fn image_options(&self) -> crius_image::ImageOptions {
        crius_image::ImageOptions {
            pull_progress_timeout: self
                .pull_progress_timeout()
                .unwrap_or(Some(crius_image::DEFAULT_PULL_PROGRESS_TIMEOUT)),
            max_concurrent_downloads: usize::try_from(self.registry.max_concurrent_downloads)
                .ok()
                .filter(|n| CONCURRENT_DOWNLOADS.contains(&(*n as i64)))
                .unwrap_or(crius_image::DEFAULT_MAX_CONCURRENT_DOWNLOADS),
            auth_file: (!self.registry.auth_file.is_empty())
                .then(|| PathBuf::from(&self.registry.auth_file)),
            pinned: self.pinned_images().unwrap_or_default(),
        }
    }

    /// The dotted keys whose values differ between `self` and `other`
    /// (tables compared key by key; a key present on one side only counts).
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        fn walk(
            prefix: &str,
            a: Option<&toml::Value>,
            b: Option<&toml::Value>,
            out: &mut Vec<String>,
        ) {
            match (a, b) {
                (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                    let keys: std::collections::BTreeSet<&String> =
                        x.keys().chain(y.keys()).collect();
                    for k in keys {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, x.get(k), y.get(k), out);
                    }
                }
                (a, b) if a != b => out.push(prefix.to_string()),
                _ => {}
            }
        }
        let a = toml::Value::try_from(self).ok();
        let b = toml::Value::try_from(other).ok();
        let mut out = Vec::new();
        walk("", a.as_ref(), b.as_ref(), &mut out);
        out
    }

    /// The configuration as TOML, as `criusd config default` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// The file that set each dotted key.
pub type Origins = BTreeMap<String, PathBuf>;

/// The drop-in directory of a configuration file: `config.d` beside it.
pub fn drop_in_dir(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).join("config.d")
}

fn merge_table(
    dst: &mut toml::Table,
    src: toml::Table,
    prefix: &str,
    file: &Path,
    origins: &mut Origins,
) {
    for (k, v) in src {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => {
                let entry = dst
                    .entry(k)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if !entry.is_table() {
                    *entry = toml::Value::Table(toml::Table::new());
                }
                if let toml::Value::Table(d) = entry {
                    merge_table(d, t, &key, file, origins);
                }
            }
            v => {
                dst.insert(k, v);
                origins.insert(key, file.to_path_buf());
            }
        }
    }
}

/// The dotted keys of `config` with their values as TOML, in order.
pub fn flat_keys(config: &Config) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            v => out.push((prefix.to_string(), v.to_string())),
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = toml::Value::try_from(config) {
        walk("", &v, &mut out);
    }
    out
}

/// Parses a Kubernetes-style quantity of bytes: a plain integer or one with a
/// binary (Ki, Mi, Gi, Ti) or decimal (k, M, G, T) suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size such as 64Mi"));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?} (use Ki, Mi, Gi, Ti, k, M, G or T)"
            ))
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("{s:?} must be larger than zero"));
    }
    Ok(bytes)
}

/// Parses a duration: an integer with a unit `ms`, `s`, `m` or `h` (a bare
/// integer is seconds). It must be larger than zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!("{s:?} is not a duration such as 5m or 30s"));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?} (use ms, s, m or h)"
            ))
        }
    }
    .ok_or_else(|| format!("{s:?} is too large"))?;
    if d.is_zero() {
        return Err(format!("{s:?} must be larger than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {

    #[test]
    fn drop_ins_merge_key_by_key() {
        let a = Path::new("/etc/crius/config.toml");
        let b = Path::new("/etc/crius/config.d/10-a.toml");
        let c = Path::new("/etc/crius/config.d/20-b.toml");
        // (layers, key, expected value, expected origin)
        type Case<'a> = (Vec<(&'a Path, &'a str)>, &'a str, &'a str, Option<&'a Path>);
        let cases: Vec<Case> = vec![
            (
                vec![(a, "log_level = \"warn\"\n")],
                "log_level",
                "\"warn\"",
                Some(a),
            ),
            (
                vec![
                    (a, "log_level = \"warn\"\n"),
                    (b, "log_level = \"debug\"\n"),
                ],
                "log_level",
                "\"debug\"",
                Some(b),
            ),
            // Tables merge key by key: a's bin_dirs stay, b's conf_dir wins.
            (
                vec![
                    (a, "[cni]\nconf_dir = \"/a\"\nbin_dirs = [\"/x\"]\n"),
                    (b, "[cni]\nconf_dir = \"/b\"\n"),
                ],
                "cni.bin_dirs",
                "[\"/x\"]",
                Some(a),
            ),
            (
                vec![
                    (a, "[cni]\nconf_dir = \"/a\"\n"),
                    (b, "[cni]\nconf_dir = \"/b\"\n"),
                    (c, "shm_size = \"1Gi\"\n"),
                ],
                "cni.conf_dir",
                "\"/b\"",
                Some(b),
            ),
            // A drop-in adds a handler beside the file's.
            (
                vec![
                    (a, "[runtimes.kata]\npath = \"kata\"\n"),
                    (b, "[runtimes.crun]\npath = \"crun\"\n"),
                ],
                "runtimes.kata.path",
                "\"kata\"",
                Some(a),
            ),
            (vec![(a, "")], "handback_expiry", "\"5m\"", None),
        ];
        for (layers, key, value, origin) in cases {
            let (config, origins) = Config::merge_layers(&layers).unwrap();
            let flat = flat_keys(&config);
            let got = flat.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            assert_eq!(got, Some(value), "{key} in {layers:?}");
            assert_eq!(
                origins.get(key).map(PathBuf::as_path),
                origin,
                "{key} in {layers:?}"
            );
            assert!(config.runtimes.contains_key("runc"));
        }
    }

    #[test]
    fn unknown_key_in_a_drop_in_names_file_and_key() {
        let a = Path::new("/etc/crius/config.toml");
        let b = Path::new("/etc/crius/config.d/10-a.toml");
        let err = Config::merge_layers(&[(a, ""), (b, "[cni]\nconfdir = \"/x\"\n")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10-a.toml") && err.contains("confdir"),
            "{err}"
        );
    }

    #[test]
    fn drop_ins_are_read_in_lexical_order() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        std::fs::write(&main, "log_level = \"warn\"\n").unwrap();
        std::fs::create_dir(tmp.path().join("config.d")).unwrap();
        std::fs::write(
            tmp.path().join("config.d/20-b.toml"),
            "log_level = \"error\"\n",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("config.d/10-a.toml"),
            "log_level = \"debug\"\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("config.d/30-c.conf"), "not toml").unwrap();
        let (config, origins) = Config::load_layered(&main, true).unwrap();
        assert_eq!(config.log_level, "error");
        assert_eq!(origins["log_level"], tmp.path().join("config.d/20-b.toml"));
    }
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::from_toml(Path::new("test.toml"), text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn default_round_trips_through_toml() {
        let text = Config::default().to_toml();
        assert_eq!(parse(&text).unwrap(), Config::default());
        for key in [
            "root",
            "state",
            "socket",
            "log_level",
            "log_format",
            "cgroup_driver",
            "pause_image",
            "default_runtime",
            "shm_size",
            "handback_expiry",
            "[runtimes.runc]",
            "[cni]",
            "conf_dir",
            "bin_dirs",
            "[registry]",
            "config_path",
            "max_concurrent_downloads = 3",
            "auth_file",
            "[images]",
            "pinned",
            "[stream]",
            "address",
            "[tracing]",
            "otlp_endpoint",
            "sampling_ratio",
            "service_name",
            "device_ownership_from_security_context",
            "privileged_without_host_devices",
            "[cdi]",
            "spec_dirs",
            "[nri]",
            "socket_path = \"/var/run/nri/nri.sock\"",
            "plugin_request_timeout = \"2s\"",
            "plugin_path = \"/opt/nri/plugins\"",
            "plugin_config_path = \"/etc/nri/conf.d\"",
            "disable_connections = false",
            "shim_slice = \"system.slice\"",
            "systemd_address",
        ] {
            assert!(text.contains(key), "default config lacks {key}:\n{text}");
        }
    }

    #[test]
    fn keys_are_read() {
        let c = parse(
            r#"
root = "/tmp/r"
state = "/tmp/s"
socket = "/tmp/s/c.sock"
log_level = "debug"
log_format = "json"
cgroup_driver = "systemd"
shim_slice = "crius-shims.slice"
systemd_address = "unix:path=/run/systemd/private"
pause_image = "localhost:5000/pause:1"
default_runtime = "crun"
shm_size = "128Mi"
handback_expiry = "90s"
[runtimes.crun]
path = "crun"
[cni]
conf_dir = "/tmp/net.d"
bin_dirs = ["/tmp/bin"]
[registry]
config_path = "/tmp/certs.d"
pull_progress_timeout = "30s"
max_concurrent_downloads = 8
auth_file = "/etc/crius/auth.json"
[images]
pinned = ["busybox:1.36", "registry.k8s.io/*"]
[stream]
address = "127.0.0.1:10010"
[tracing]
otlp_endpoint = "http://127.0.0.1:4317"
sampling_ratio = 0.25
service_name = "node-7"
"#,
        )
        .unwrap();
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(c.shim_slice, "crius-shims.slice");
        assert_eq!(c.systemd_address, "unix:path=/run/systemd/private");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.runtimes["crun"].path, "crun");
        assert_eq!(c.runtimes["runc"].path, "runc", "built-in handler kept");
        assert_eq!(c.shm_size_bytes().unwrap(), 128 << 20);
        assert_eq!(c.handback_expiry().unwrap(), Duration::from_secs(90));
        assert_eq!(
            c.pull_progress_timeout().unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(c.cni.bin_dirs, vec![PathBuf::from("/tmp/bin")]);
        let o = c.image_options();
        assert_eq!(o.max_concurrent_downloads, 8);
        assert_eq!(o.auth_file, Some(PathBuf::from("/etc/crius/auth.json")));
        assert!(o
            .pinned
            .matches(&["docker.io/library/busybox:1.36".to_string()]));
        assert!(o
            .pinned
            .matches(&["registry.k8s.io/coredns/coredns:v1".to_string()]));
        assert!(!o
            .pinned
            .matches(&["docker.io/library/busybox:1.37".to_string()]));
        let d = Config::default().image_options();
        assert_eq!(
            (d.max_concurrent_downloads, d.auth_file),
            (3, None),
            "containerd's default, no node credentials"
        );
        assert_eq!(c.stream.address, "127.0.0.1:10010");
        assert_eq!(c.tracing.otlp_endpoint, "http://127.0.0.1:4317");
        assert_eq!(c.tracing.sampling_ratio, 0.25);
        assert_eq!(c.tracing.service_name, "node-7");
        assert_eq!(
            Config::default().tracing.otlp_endpoint,
            "",
            "export is off by default"
        );
    }

    #[test]
    fn device_keys() {
        let d = Config::default();
        assert!(d.cdi.enable, "CDI is on by default, as in containerd 2.x");
        assert_eq!(
            d.cdi.spec_dirs,
            vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
        );
        assert!(!d.device_ownership_from_security_context);
        assert!(!d.runtimes["runc"].privileged_without_host_devices);
        let c = parse(
            r#"
device_ownership_from_security_context = true
[cdi]
enable = false
spec_dirs = ["/tmp/cdi"]
[runtimes.kata]
path = "kata-runtime"
privileged_without_host_devices = true
"#,
        )
        .unwrap();
        assert!(!c.cdi.enable);
        assert_eq!(c.cdi.spec_dirs, vec![PathBuf::from("/tmp/cdi")]);
        assert!(c.device_ownership_from_security_context);
        assert!(c.runtimes["kata"].privileged_without_host_devices);
        assert!(!c.runtimes["runc"].privileged_without_host_devices);
        // An empty list is allowed: no spec files, every CDI device unresolvable.
        assert!(parse("[cdi]\nspec_dirs = []")
            .unwrap()
            .cdi
            .spec_dirs
            .is_empty());
    }

    #[test]
    fn nri_keys() {
        // containerd's defaults.
        let d = Config::default().nri;
        assert!(d.enable);
        assert_eq!(d.socket_path, PathBuf::from("/var/run/nri/nri.sock"));
        assert_eq!(d.plugin_path, PathBuf::from("/opt/nri/plugins"));
        assert_eq!(d.plugin_config_path, PathBuf::from("/etc/nri/conf.d"));
        assert!(!d.disable_connections);
        assert_eq!(
            Config::default().nri_timeouts().unwrap(),
            (Duration::from_secs(5), Duration::from_secs(2))
        );
        let c = parse(
            r#"
[nri]
socket_path = "/tmp/nri.sock"
plugin_path = "/tmp/plugins"
plugin_config_path = "/tmp/conf.d"
disable_connections = true
plugin_registration_timeout = "1s"
plugin_request_timeout = "500ms"
"#,
        )
        .unwrap();
        assert_eq!(c.nri.plugin_path, PathBuf::from("/tmp/plugins"));
        assert_eq!(c.nri.plugin_config_path, PathBuf::from("/tmp/conf.d"));
        assert!(c.nri.disable_connections);
        assert_eq!(
            c.nri_timeouts().unwrap(),
            (Duration::from_secs(1), Duration::from_millis(500))
        );
    }

    #[test]
    fn pull_progress_timeout_values() {
        // (file text, the timeout)
        let cases: Vec<(&str, Option<Duration>)> = vec![
            ("", Some(Duration::from_secs(300))),
            (
                "pull_progress_timeout = \"5m\"",
                Some(Duration::from_secs(300)),
            ),
            (
                "pull_progress_timeout = \"1500ms\"",
                Some(Duration::from_millis(1500)),
            ),
            (
                "pull_progress_timeout = \"2h\"",
                Some(Duration::from_secs(7200)),
            ),
            ("pull_progress_timeout = \"0\"", None),
            ("pull_progress_timeout = 0", None),
        ];
        for (text, want) in cases {
            let c = parse(&format!("[registry]\n{text}\n")).unwrap();
            assert_eq!(c.pull_progress_timeout().unwrap(), want, "{text}");
        }
        assert_eq!(
            Config::default().pull_progress_timeout().unwrap(),
            Some(crius_image::DEFAULT_PULL_PROGRESS_TIMEOUT)
        );
    }

    #[test]
    fn errors_name_the_key() {
        // (file text, text that the error must contain)
        let cases = [
            ("bogus = 1", "bogus"),
            ("[cni]\nconfdir = \"/x\"", "confdir"),
            ("[runtimes.crun]\npath = \"crun\"\nbinary = \"x\"", "binary"),
            ("cgroup_driver = \"cgroupv3\"", "cgroup_driver"),
            ("log_format = \"xml\"", "log_format"),
            ("root = 5", "root"),
            ("root = \"relative\"", "`root`"),
            ("log_level = \"loud\"", "`log_level`"),
            ("shm_size = \"64Qi\"", "`shm_size`"),
            ("shm_size = \"\"", "`shm_size`"),
            ("handback_expiry = \"soon\"", "`handback_expiry`"),
            ("handback_expiry = \"0s\"", "`handback_expiry`"),
            ("handback_expiry = 300", "handback_expiry"),
            (
                "[registry]\npull_progress_timeout = \"soon\"",
                "`registry.pull_progress_timeout`",
            ),
            (
                "[registry]\npull_progress_timeout = 300",
                "`registry.pull_progress_timeout`",
            ),
            (
                "[registry]\npull_progress_timeout = -1",
                "`registry.pull_progress_timeout`",
            ),
            (
                "[registry]\npull_progress_timeout = true",
                "pull_progress_timeout",
            ),
            (
                "[registry]\nmax_concurrent_downloads = 0",
                "`registry.max_concurrent_downloads`",
            ),
            (
                "[registry]\nmax_concurrent_downloads = 65",
                "`registry.max_concurrent_downloads`",
            ),
            (
                "[registry]\nmax_concurrent_downloads = \"4\"",
                "max_concurrent_downloads",
            ),
            (
                "[registry]\nauth_file = \"auth.json\"",
                "`registry.auth_file`",
            ),
            ("[registry]\nglobal_auth_file = \"/a\"", "global_auth_file"),
            ("[images]\npinned = [\"ok:1\", \"\"]", "`images.pinned[1]`"),
            ("[images]\npinned = [\"Bad/Name\"]", "`images.pinned[0]`"),
            ("[images]\npinned = \"busybox\"", "pinned"),
            ("[images]\npin = []", "pin"),
            ("default_runtime = \"kata\"", "`default_runtime`"),
            ("[runtimes.crun]\npath = \"\"", "`runtimes.crun.path`"),
            (
                "[runtimes.kata]\npath = \"kata\"\npod_annotations = [\"io.kata.*\", \"[a-\"]",
                "`runtimes.kata.pod_annotations[1]`",
            ),
            (
                "[runtimes.kata]\npath = \"kata\"\ncontainer_annotations = [\"a/**b\"]",
                "`runtimes.kata.container_annotations[0]`",
            ),
            ("[stream]\naddress = \"nowhere\"", "`stream.address`"),
            ("[cni]\nbin_dirs = [\"bin\"]", "`cni.bin_dirs[0]`"),
            ("[metrics]\naddress = \"localhost\"", "`metrics.address`"),
            ("root = \"/a\"\nroot = \"/b\"", "root"),
            (
                "[tracing]\notlp_endpoint = \"127.0.0.1:4317\"",
                "`tracing.otlp_endpoint`",
            ),
            (
                "[tracing]\notlp_endpoint = \"http://\"",
                "`tracing.otlp_endpoint`",
            ),
            (
                "[tracing]\notlp_endpoint = \"https://collector:4317\"",
                "TLS is not supported",
            ),
            (
                "[tracing]\nsampling_ratio = 1.5",
                "`tracing.sampling_ratio`",
            ),
            (
                "[tracing]\nsampling_ratio = -0.1",
                "`tracing.sampling_ratio`",
            ),
            ("[tracing]\nservice_name = \" \"", "`tracing.service_name`"),
            ("[tracing]\nendpoint = \"x\"", "endpoint"),
            ("[cdi]\nspec_dirs = [\"cdi\"]", "`cdi.spec_dirs[0]`"),
            ("[cdi]\nenable = \"yes\"", "enable"),
            ("[nri]\nsocket_path = \"nri.sock\"", "`nri.socket_path`"),
            ("[nri]\nplugin_request_timeout = \"0s\"", "`nri.plugin_request_timeout`"),
            ("[nri]\nplugin_registration_timeout = \"soon\"", "`nri.plugin_registration_timeout`"),
            ("[nri]\nplugin_path = \"plugins\"", "`nri.plugin_path`"),
            ("[nri]\nplugin_config_path = \"\"", "`nri.plugin_config_path`"),
            ("[nri]\ndisable_connections = \"yes\"", "disable_connections"),
            ("[nri]\nplugin_dir = \"/x\"", "plugin_dir"),
            ("[cdi]\nspec_dir = [\"/x\"]", "spec_dir"),
            ("device_ownership_from_security_context = 1", "device_ownership_from_security_context"),
            ("shim_slice = \"crius\"", "`shim_slice`"),
            ("shim_slice = \"a b.slice\"", "`shim_slice`"),
            ("systemd_address = \"/run/systemd/private\"", "`systemd_address`"),
            ("systemd_address = \"nope:x=y\"", "`systemd_address`"),
            (
                "[runtimes.kata]\npath = \"kata\"\nprivileged_without_host_devices = \"no\"",
                "privileged_without_host_devices",
            ),
            (
                "state = \"/tmp/a-state-directory-that-is-41-bytes-x\"",
                "at most 40 bytes",
            ),
            (
                "socket = \"/run/a/very/long/path/to/the/socket/of/the/daemon/that/goes/on/and/on/and/on/for/more/than/107/bytes/crius.sock\"",
                "`socket`",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(
                err.contains(want),
                "{text:?}: error {err:?} should name {want}"
            );
        }
    }

    #[test]
    fn sizes() {
        let cases: [(&str, Result<u64, &str>); 10] = [
            ("64Mi", Ok(64 << 20)),
            ("1Gi", Ok(1 << 30)),
            ("100", Ok(100)),
            ("5k", Ok(5000)),
            ("2M", Ok(2_000_000)),
            (" 8Ki ", Ok(8192)),
            ("0", Err("larger than zero")),
            ("Mi", Err("not a size")),
            ("1.5Gi", Err("unknown unit")),
            ("99999999999999999999Ti", Err("too large")),
        ];
        for (s, want) in cases {
            match (parse_size(s), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{s}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{s}: {e}"),
                (got, want) => panic!("{s}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn durations() {
        let cases: [(&str, Result<Duration, &str>); 10] = [
            ("5m", Ok(Duration::from_secs(300))),
            ("300", Ok(Duration::from_secs(300))),
            ("30s", Ok(Duration::from_secs(30))),
            (" 250ms ", Ok(Duration::from_millis(250))),
            ("2h", Ok(Duration::from_secs(7200))),
            ("0ms", Err("larger than zero")),
            ("s", Err("not a duration")),
            ("-1s", Err("not a duration")),
            ("1.5s", Err("unknown unit")),
            ("99999999999999999999h", Err("too large")),
        ];
        for (s, want) in cases {
            match (parse_duration(s), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{s}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{s}: {e}"),
                (got, want) => panic!("{s}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(
            Config::default().handback_expiry().unwrap(),
            crate::domain::handback::DEFAULT_EXPIRY
        );
    }

    #[test]
    fn missing_default_file_means_defaults_but_named_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert_eq!(Config::load(&missing, false).unwrap(), Config::default());
        assert!(matches!(
            Config::load(&missing, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
