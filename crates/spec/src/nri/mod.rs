//! Adjustments NRI plugins ask for when a container is created, applied to
//! its spec, and NRI's conflict rule between the plugins asking.
//!
//! [`NriAdjustment`] is NRI's `ContainerAdjustment` in plain types (criusd
//! converts the protocol's messages; enum values come as their names, which
//! are the OCI spec's). [`apply_adjustment`] applies one plugin's adjustment
//! to the spec, the plugins in their order, with an [`Owners`] shared by
//! them: two plugins setting the same thing is a [`AdjustError::Conflict`]
//! naming both (see [`owners`] for the rule).
//!
//! As in NRI: a key, mount destination, device path, namespace type, sysctl
//! or net device written with a leading `-` removes what the container has
//! under that name; otherwise the entry is set, replacing one of the same
//! name in place or being appended. Hooks and cgroup device rules are
//! appended. `args` whose first element is empty replace the command even
//! when another plugin set it. CDI device names are checked and claimed
//! here and resolved by the caller once every plugin has answered.
//!
//! What the OCI spec (as the oci-spec crate has it) cannot represent is
//! refused, naming the plugin and the field, rather than dropped.

pub mod owners;
#[cfg(test)]
mod tests;

pub use owners::Owners;

use oci_spec::runtime::Spec;
use serde_json::{json, Map, Value};

/// The most entries of one list (or map) of an adjustment: the answer of a
/// plugin is untrusted input.
pub const MAX_ENTRIES: usize = 1024;

/// The most rules, syscall names and argument filters of a seccomp policy
/// together (a runtime's default profile names about 400 syscalls).
pub const MAX_SECCOMP_ENTRIES: usize = 4096;

/// Why an adjustment was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdjustError {
    /// Two plugins adjusted the same thing.
    #[error("NRI plugins {plugin:?} and {other:?} both tried to set {field}")]
    Conflict {
        /// What both set (`env "FOO"`, `linux.resources.memory.limit`, ...).
        field: String,
        /// The plugin whose adjustment was refused.
        plugin: String,
        /// The plugin that set (or removed) it first.
        other: String,
    },
    /// The adjustment is malformed, or asks for what crius cannot do.
    #[error("NRI plugin {plugin:?}: {field}: {message}")]
    Refused {
        /// The plugin.
        plugin: String,
        /// The adjustment's field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A mount a plugin adds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriMount {
    /// Where in the container (`-<path>` removes the mount there).
    pub destination: String,
    /// Mount type (`bind`, `tmpfs`, ...).
    pub kind: String,
    /// Mount source.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// An OCI hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriHook {
    /// Absolute path of the program.
    pub path: String,
    /// Its arguments (the first is its name).
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<String>,
    /// Seconds it may run.
    pub timeout: Option<i64>,
}

/// Hooks to append, by the point of the container's life they run at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriHooks {
    pub prestart: Vec<NriHook>,
    pub create_runtime: Vec<NriHook>,
    pub create_container: Vec<NriHook>,
    pub start_container: Vec<NriHook>,
    pub poststart: Vec<NriHook>,
    pub poststop: Vec<NriHook>,
}

/// A POSIX resource limit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriRlimit {
    /// `RLIMIT_NOFILE`, ...
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

/// A device node to create in the container (allowed in its device cgroup).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriDevice {
    /// Path in the container (`-<path>` removes the device there).
    pub path: String,
    /// `c`, `b`, `u` or `p`.
    pub kind: String,
    pub major: i64,
    pub minor: i64,
    pub file_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A device cgroup rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriDeviceRule {
    pub allow: bool,
    /// `a`, `b` or `c` (empty: all).
    pub kind: String,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    /// A subset of `rwm`.
    pub access: String,
}

/// Memory resources; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriMemory {
    pub limit: Option<i64>,
    pub reservation: Option<i64>,
    pub swap: Option<i64>,
    pub kernel: Option<i64>,
    pub kernel_tcp: Option<i64>,
    pub swappiness: Option<u64>,
    pub disable_oom_killer: Option<bool>,
    pub use_hierarchy: Option<bool>,
}

/// CPU resources; `None` (or an empty string) leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriCpu {
    pub shares: Option<u64>,
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub realtime_runtime: Option<i64>,
    pub realtime_period: Option<u64>,
    pub cpus: String,
    pub mems: String,
}

/// Linux resources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriResources {
    pub memory: NriMemory,
    pub cpu: NriCpu,
    /// (page size such as `2MB`, limit in bytes)
    pub hugepage_limits: Vec<(String, u64)>,
    /// A block I/O class (empty: no block I/O settings).
    pub blockio_class: Option<String>,
    /// An RDT class, the container's CLOS (empty: no RDT settings).
    pub rdt_class: Option<String>,
    /// cgroup v2 files and values.
    pub unified: Vec<(String, String)>,
    /// Device cgroup rules to append.
    pub devices: Vec<NriDeviceRule>,
    pub pids: Option<i64>,
}

/// The process' I/O priority.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriIoPriority {
    /// `IOPRIO_CLASS_RT`, `_BE`, `_IDLE`, or `_NONE` (no I/O priority).
    pub class: String,
    pub priority: i32,
}

/// A seccomp argument filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriSeccompArg {
    pub index: u32,
    pub value: u64,
    pub value_two: u64,
    /// `SCMP_CMP_EQ`, ...
    pub op: String,
}

/// A seccomp rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriSyscall {
    pub names: Vec<String>,
    /// `SCMP_ACT_ERRNO`, ...
    pub action: String,
    pub errno_ret: Option<u32>,
    pub args: Vec<NriSeccompArg>,
}

/// A seccomp policy, replacing the container's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriSeccomp {
    pub default_action: String,
    pub default_errno: Option<u32>,
    pub architectures: Vec<String>,
    pub flags: Vec<String>,
    pub listener_path: String,
    pub listener_metadata: String,
    pub syscalls: Vec<NriSyscall>,
}

/// The process' scheduling.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriScheduler {
    /// `SCHED_OTHER`, ..., or `SCHED_NONE` (no scheduler settings).
    pub policy: String,
    pub nice: i32,
    pub priority: i32,
    /// `SCHED_FLAG_*`.
    pub flags: Vec<String>,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
}

/// Intel RDT settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriRdt {
    pub clos_id: Option<String>,
    pub schemata: Option<Vec<String>>,
    pub enable_monitoring: Option<bool>,
    /// Remove the RDT settings first.
    pub remove: bool,
}

/// NUMA memory policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriMemoryPolicy {
    /// `MPOL_BIND`, ...
    pub mode: String,
    pub nodes: String,
    /// `MPOL_F_*`.
    pub flags: Vec<String>,
}

/// One plugin's adjustment, in the order the plugin gave its entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriAdjustment {
    /// Environment variables (`-KEY` removes `KEY`).
    pub env: Vec<(String, String)>,
    /// Annotations (`-key` removes `key`).
    pub annotations: Vec<(String, String)>,
    /// Mounts.
    pub mounts: Vec<NriMount>,
    /// Hooks to append.
    pub hooks: NriHooks,
    /// The command (first element empty: replace even another plugin's).
    pub args: Vec<String>,
    /// Resource limits (set by type).
    pub rlimits: Vec<NriRlimit>,
    /// CDI devices (qualified names), resolved by the caller.
    pub cdi_devices: Vec<String>,
    /// Device nodes.
    pub devices: Vec<NriDevice>,
    /// Linux resources.
    pub resources: NriResources,
    /// The cgroups path (empty: unchanged).
    pub cgroups_path: String,
    pub oom_score_adj: Option<i64>,
    pub io_priority: Option<NriIoPriority>,
    pub seccomp_policy: Option<NriSeccomp>,
    /// (type, path); `-type` removes the namespace.
    pub namespaces: Vec<(String, String)>,
    /// `-key` removes.
    pub sysctl: Vec<(String, String)>,
    /// (host device, name in the container); `-host` removes.
    pub net_devices: Vec<(String, String)>,
    pub scheduler: Option<NriScheduler>,
    pub rdt: Option<NriRdt>,
    pub memory_policy: Option<NriMemoryPolicy>,
}

/// The plugin being applied and the owners so far.
struct Cx<'a> {
    plugin: &'a str,
    owners: &'a mut Owners,
}

impl Cx<'_> {
    fn refuse(&self, field: &str, message: impl Into<String>) -> AdjustError {
        AdjustError::Refused {
            plugin: self.plugin.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }
    fn claim(&mut self, field: &str) -> Result<(), AdjustError> {
        self.owners.claim(field, self.plugin)
    }
    fn clear(&mut self, field: &str) {
        self.owners.clear(field, self.plugin)
    }
}

/// The object at `path` below `v`, made (replacing a null or non-object).
fn at<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for k in path {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .expect("an object")
            .entry(k.to_string())
            .or_insert(Value::Null);
    }
    if !cur.is_object() {
        *cur = json!({});
    }
    cur.as_object_mut().expect("an object")
}

/// The array `key` of the object at `path`, made.
fn list<'a>(v: &'a mut Value, path: &[&str], key: &str) -> &'a mut Vec<Value> {
    let e = at(v, path).entry(key.to_string()).or_insert(json!([]));
    if !e.is_array() {
        *e = json!([]);
    }
    e.as_array_mut().expect("an array")
}

/// Removes `key` from the object at `path`, if there is one.
fn remove(v: &mut Value, path: &[&str], key: &str) {
    let mut cur = v;
    for k in path {
        match cur.get_mut(*k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(key);
    }
}

/// `name` if the OCI type `T` has a value of that name and writes it back
/// the same (the oci-spec crate spells a few of the spec's names its own
/// way; those cannot be represented and are refused).
fn oci_name<T>(cx: &Cx, field: &str, name: &str) -> Result<Value, AdjustError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let parsed: T = serde_json::from_value(json!(name))
        .map_err(|_| cx.refuse(field, format!("{name:?} is not a value the OCI spec knows")))?;
    if serde_json::to_value(&parsed).ok() != Some(json!(name)) {
        return Err(cx.refuse(
            field,
            format!("{name:?} cannot be represented in crius' OCI spec"),
        ));
    }
    Ok(json!(name))
}

/// `name` without its removal marker, and whether it had one.
fn marked(name: &str) -> (bool, &str) {
    match name.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, name),
    }
}

fn plain(s: &str) -> bool {
    !s.contains('\0')
}

/// Refuses lists longer than [`MAX_ENTRIES`].
fn check_sizes(cx: &Cx, adj: &NriAdjustment) -> Result<(), AdjustError> {
    let h = &adj.hooks;
    let seccomp = adj.seccomp_policy.as_ref();
    let sizes = [
        ("env", adj.env.len()),
        ("annotations", adj.annotations.len()),
        ("mounts", adj.mounts.len()),
        (
            "hooks",
            h.prestart.len()
                + h.create_runtime.len()
                + h.create_container.len()
                + h.start_container.len()
                + h.poststart.len()
                + h.poststop.len(),
        ),
        ("args", adj.args.len()),
        ("rlimits", adj.rlimits.len()),
        ("CDI_devices", adj.cdi_devices.len()),
        ("linux.devices", adj.devices.len()),
        (
            "linux.resources.hugepage_limits",
            adj.resources.hugepage_limits.len(),
        ),
        ("linux.resources.unified", adj.resources.unified.len()),
        ("linux.resources.devices", adj.resources.devices.len()),
        ("linux.namespaces", adj.namespaces.len()),
        ("linux.sysctl", adj.sysctl.len()),
        ("linux.net_devices", adj.net_devices.len()),
        (
            "linux.seccomp_policy.syscalls",
            seccomp.map_or(0, |s| {
                s.syscalls.len()
                    + s.syscalls
                        .iter()
                        .map(|c| c.names.len() + c.args.len())
                        .sum::<usize>()
            }),
        ),
        (
            "linux.rdt.schemata",
            adj.rdt
                .as_ref()
                .and_then(|r| r.schemata.as_ref())
                .map_or(0, Vec::len),
        ),
    ];
    for (field, n) in sizes {
        let max = if field == "linux.seccomp_policy.syscalls" {
            MAX_SECCOMP_ENTRIES
        } else {
            MAX_ENTRIES
        };
        if n > max {
            return Err(cx.refuse(field, format!("{n} entries, more than the {max} allowed")));
        }
    }
    Ok(())
}

/// Applies `plugin`'s adjustment `adj` to `spec`, claiming what it sets in
/// `owners` (shared by the plugins adjusting one container). A conflict
/// with another plugin, a malformed entry or one crius cannot represent is
/// refused, and the caller fails the creation.
pub fn apply_adjustment(
    spec: &Spec,
    plugin: &str,
    adj: &NriAdjustment,
    owners: &mut Owners,
) -> Result<Spec, AdjustError> {
    let mut cx = Cx { plugin, owners };
    check_sizes(&cx, adj)?;
    let mut s = serde_json::to_value(spec).map_err(|e| cx.refuse("spec", e.to_string()))?;
    annotations(&mut cx, &mut s, &adj.annotations)?;
    mounts(&mut cx, &mut s, &adj.mounts)?;
    env(&mut cx, &mut s, &adj.env)?;
    args(&mut cx, &mut s, &adj.args)?;
    hooks(&mut cx, &mut s, &adj.hooks)?;
    devices(&mut cx, &mut s, &adj.devices)?;
    resources(&mut cx, &mut s, &adj.resources)?;
    linux(&mut cx, &mut s, adj)?;
    rlimits(&mut cx, &mut s, &adj.rlimits)?;
    for name in &adj.cdi_devices {
        crate::devices::check_qualified_name(name).map_err(|e| cx.refuse("CDI_devices", e))?;
        cx.claim(&format!("CDI device {name:?}"))?;
    }
    serde_json::from_value(s).map_err(|e| {
        cx.refuse(
            "spec",
            format!("the adjusted spec is not a valid OCI spec: {e}"),
        )
    })
}

fn annotations(
    cx: &mut Cx,
    s: &mut Value,
    entries: &[(String, String)],
) -> Result<(), AdjustError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut out = at(s, &["annotations"]).clone();
    for (key, value) in entries {
        let (removal, name) = marked(key);
        if name.is_empty() {
            return Err(cx.refuse("annotations", "empty key"));
        }
        let field = format!("annotation {name:?}");
        if removal {
            cx.clear(&field);
            out.remove(name);
        } else {
            cx.claim(&field)?;
            out.insert(name.to_string(), json!(value));
        }
    }
    *at(s, &["annotations"]) = out;
    Ok(())
}

fn env(cx: &mut Cx, s: &mut Value, vars: &[(String, String)]) -> Result<(), AdjustError> {
    for (key, value) in vars {
        let (removal, name) = marked(key);
        if name.is_empty() || name.contains('=') || !plain(name) || !plain(value) {
            return Err(cx.refuse("env", format!("bad variable {key:?}")));
        }
        let field = format!("env {name:?}");
        if removal {
            cx.clear(&field);
        } else {
            cx.claim(&field)?;
        }
        let env = list(s, &["process"], "env");
        let at = env.iter().position(|e| {
            e.as_str()
                .map(|e| e.split_once('=').map_or(e, |(k, _)| k) == name)
                .unwrap_or(false)
        });
        match (removal, at) {
            (true, Some(i)) => {
                env.remove(i);
            }
            (true, None) => {}
            (false, Some(i)) => env[i] = json!(format!("{name}={value}")),
            (false, None) => env.push(json!(format!("{name}={value}"))),
        }
    }
    Ok(())
}

fn mounts(cx: &mut Cx, s: &mut Value, adj: &[NriMount]) -> Result<(), AdjustError> {
    if adj.is_empty() {
        return Ok(());
    }
    let mut added = false;
    for m in adj {
        let (removal, dest) = marked(&m.destination);
        if !dest.starts_with('/') || !plain(dest) {
            return Err(cx.refuse(
                "mounts",
                format!("destination {:?} is not absolute", m.destination),
            ));
        }
        if !plain(&m.source) || !plain(&m.kind) || !m.options.iter().all(|o| plain(o)) {
            return Err(cx.refuse("mounts", format!("mount at {dest:?}: a NUL byte")));
        }
        let field = format!("mount {dest:?}");
        let mounts = list(s, &[], "mounts");
        mounts.retain(|x| x["destination"].as_str() != Some(dest));
        if removal {
            cx.clear(&field);
            continue;
        }
        cx.claim(&field)?;
        let mut mount = json!({ "destination": dest });
        if !m.kind.is_empty() {
            mount["type"] = json!(m.kind);
        }
        if !m.source.is_empty() {
            mount["source"] = json!(m.source);
        }
        if !m.options.is_empty() {
            mount["options"] = json!(m.options);
        }
        list(s, &[], "mounts").push(mount);
        added = true;
    }
    if added {
        // Parents before what is mounted below them (a stable sort keeps
        // the order of mounts as deep as each other).
        list(s, &[], "mounts").sort_by_key(|m| {
            m["destination"]
                .as_str()
                .map_or(0, |d| d.split('/').filter(|p| !p.is_empty()).count())
        });
    }
    Ok(())
}

fn args(cx: &mut Cx, s: &mut Value, args: &[String]) -> Result<(), AdjustError> {
    if args.is_empty() {
        return Ok(());
    }
    let args = match args.split_first() {
        Some((first, rest)) if first.is_empty() => {
            cx.clear("args");
            rest
        }
        _ => args,
    };
    cx.claim("args")?;
    if !args.iter().all(|a| plain(a)) {
        return Err(cx.refuse("args", "a NUL byte"));
    }
    if !args.is_empty() {
        at(s, &["process"]).insert("args".into(), json!(args));
    }
    Ok(())
}

fn hooks(cx: &mut Cx, s: &mut Value, hooks: &NriHooks) -> Result<(), AdjustError> {
    let kinds: [(&str, &[NriHook]); 6] = [
        ("prestart", &hooks.prestart),
        ("createRuntime", &hooks.create_runtime),
        ("createContainer", &hooks.create_container),
        ("startContainer", &hooks.start_container),
        ("poststart", &hooks.poststart),
        ("poststop", &hooks.poststop),
    ];
    for (kind, list_) in kinds {
        for h in list_ {
            let field = format!("hooks.{kind}");
            if !h.path.starts_with('/') || !plain(&h.path) {
                return Err(cx.refuse(&field, format!("path {:?} is not absolute", h.path)));
            }
            if !h.args.iter().chain(&h.env).all(|a| plain(a)) {
                return Err(cx.refuse(&field, "a NUL byte"));
            }
            let mut hook = json!({ "path": h.path });
            if !h.args.is_empty() {
                hook["args"] = json!(h.args);
            }
            if !h.env.is_empty() {
                hook["env"] = json!(h.env);
            }
            if let Some(t) = h.timeout {
                if t <= 0 {
                    return Err(cx.refuse(&field, format!("timeout {t} is not positive")));
                }
                hook["timeout"] = json!(t);
            }
            list(s, &["hooks"], kind).push(hook);
        }
    }
    Ok(())
}

fn devices(cx: &mut Cx, s: &mut Value, devices: &[NriDevice]) -> Result<(), AdjustError> {
    for d in devices {
        let (removal, path) = marked(&d.path);
        if !path.starts_with('/') || !plain(path) {
            return Err(cx.refuse(
                "linux.devices",
                format!("path {:?} is not absolute", d.path),
            ));
        }
        let field = format!("device {path:?}");
        list(s, &["linux"], "devices").retain(|x| x["path"].as_str() != Some(path));
        if removal {
            cx.clear(&field);
            continue;
        }
        cx.claim(&field)?;
        if !matches!(d.kind.as_str(), "c" | "b" | "u" | "p") {
            return Err(cx.refuse(
                "linux.devices",
                format!("device {path:?}: type {:?} is not c, b, u or p", d.kind),
            ));
        }
        let mut dev = json!({ "path": path, "type": d.kind, "major": d.major, "minor": d.minor });
        if let Some(m) = d.file_mode {
            dev["fileMode"] = json!(m & 0o7777);
        }
        if let Some(u) = d.uid {
            dev["uid"] = json!(u);
        }
        if let Some(g) = d.gid {
            dev["gid"] = json!(g);
        }
        list(s, &["linux"], "devices").push(dev);
        // Allowed in the device cgroup, as NRI does: read and write, and
        // mknod for block devices.
        if d.kind != "p" {
            let access = if d.kind == "b" { "rwm" } else { "rw" };
            let kind = if d.kind == "u" { "c" } else { d.kind.as_str() };
            list(s, &["linux", "resources"], "devices").push(json!({
                "allow": true, "type": kind, "major": d.major, "minor": d.minor, "access": access,
            }));
        }
    }
    Ok(())
}

fn resources(cx: &mut Cx, s: &mut Value, r: &NriResources) -> Result<(), AdjustError> {
    const MEM: &str = "linux.resources.memory";
    let m = &r.memory;
    // A new memory limit without a swap limit moves the swap limit along
    // (as NRI does), when the spec has one (crius sets none on a host
    // without swap accounting, where runc could not write it).
    let has_swap = !s["linux"]["resources"]["memory"]["swap"].is_null();
    let ints = [
        ("limit", m.limit),
        ("reservation", m.reservation),
        ("swap", m.swap.or(m.limit.filter(|_| has_swap))),
        ("kernel", m.kernel),
        ("kernelTCP", m.kernel_tcp),
    ];
    for (name, v) in ints {
        let Some(v) = v else { continue };
        // (the swap limit is claimed only when the plugin set it)
        if name != "swap" || m.swap.is_some() {
            cx.claim(&format!("{MEM}.{name}"))?;
        }
        if v < -1 {
            return Err(cx.refuse(&format!("{MEM}.{name}"), format!("{v} is below -1")));
        }
        at(s, &["linux", "resources", "memory"]).insert(name.into(), json!(v));
    }
    if let Some(v) = m.swappiness {
        cx.claim(&format!("{MEM}.swappiness"))?;
        if v > 100 {
            return Err(cx.refuse(&format!("{MEM}.swappiness"), format!("{v} is above 100")));
        }
        at(s, &["linux", "resources", "memory"]).insert("swappiness".into(), json!(v));
    }
    for (name, v) in [
        ("disableOOMKiller", m.disable_oom_killer),
        ("useHierarchy", m.use_hierarchy),
    ] {
        if let Some(v) = v {
            cx.claim(&format!("{MEM}.{name}"))?;
            at(s, &["linux", "resources", "memory"]).insert(name.into(), json!(v));
        }
    }

    const CPU: &str = "linux.resources.cpu";
    let c = &r.cpu;
    let cpu: [(&str, Option<Value>); 7] = [
        ("shares", c.shares.map(|v| json!(v))),
        ("quota", c.quota.map(|v| json!(v))),
        ("period", c.period.map(|v| json!(v))),
        ("realtimeRuntime", c.realtime_runtime.map(|v| json!(v))),
        ("realtimePeriod", c.realtime_period.map(|v| json!(v))),
        ("cpus", (!c.cpus.is_empty()).then(|| json!(c.cpus))),
        ("mems", (!c.mems.is_empty()).then(|| json!(c.mems))),
    ];
    for (name, v) in cpu {
        let Some(v) = v else { continue };
        let field = format!("{CPU}.{name}");
        cx.claim(&field)?;
        if let Some(set) = v.as_str() {
            if !set
                .chars()
                .all(|ch| ch.is_ascii_digit() || ch == ',' || ch == '-')
            {
                return Err(cx.refuse(&field, format!("{set:?} is not a list of numbers")));
            }
        }
        at(s, &["linux", "resources", "cpu"]).insert(name.into(), v);
    }

    for (size, limit) in &r.hugepage_limits {
        if size.is_empty() || !size.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            return Err(cx.refuse(
                "linux.resources.hugepage_limits",
                format!("page size {size:?}"),
            ));
        }
        cx.claim(&format!("hugepage limit {size:?}"))?;
        let l = list(s, &["linux", "resources"], "hugepageLimits");
        l.retain(|x| x["pageSize"].as_str() != Some(size));
        l.push(json!({ "pageSize": size, "limit": limit }));
    }

    for (key, value) in &r.unified {
        if key.is_empty() || key.contains('/') || key.starts_with('.') || !plain(value) {
            return Err(cx.refuse(
                "linux.resources.unified",
                format!("bad cgroup file {key:?}"),
            ));
        }
        cx.claim(&format!("unified {key:?}"))?;
        at(s, &["linux", "resources", "unified"]).insert(key.clone(), json!(value));
    }

    for d in &r.devices {
        let kind = if d.kind.is_empty() {
            "a"
        } else {
            d.kind.as_str()
        };
        if !matches!(kind, "a" | "b" | "c")
            || d.access.is_empty()
            || !d.access.chars().all(|ch| "rwm".contains(ch))
        {
            return Err(cx.refuse(
                "linux.resources.devices",
                format!("rule type {:?} access {:?}", d.kind, d.access),
            ));
        }
        let mut rule = json!({ "allow": d.allow, "type": kind, "access": d.access });
        if let Some(v) = d.major {
            rule["major"] = json!(v);
        }
        if let Some(v) = d.minor {
            rule["minor"] = json!(v);
        }
        list(s, &["linux", "resources"], "devices").push(rule);
    }

    if let Some(limit) = r.pids {
        cx.claim("linux.resources.pids.limit")?;
        at(s, &["linux", "resources", "pids"]).insert("limit".into(), json!(limit));
    }

    if let Some(class) = &r.blockio_class {
        cx.claim("linux.resources.blockio_class")?;
        if !class.is_empty() {
            return Err(cx.refuse(
                "linux.resources.blockio_class",
                format!("class {class:?}: crius has no block I/O class configuration"),
            ));
        }
        remove(s, &["linux", "resources"], "blockIO");
    }
    if let Some(class) = &r.rdt_class {
        cx.claim("linux.resources.rdt_class")?;
        if class.is_empty() {
            remove(s, &["linux"], "intelRdt");
        } else {
            check_clos(cx, "linux.resources.rdt_class", class)?;
            at(s, &["linux", "intelRdt"]).insert("closID".into(), json!(class));
        }
    }
    Ok(())
}

/// An RDT class of service is a resctrl directory name.
fn check_clos(cx: &Cx, field: &str, clos: &str) -> Result<(), AdjustError> {
    if clos.is_empty()
        || clos.len() > 255
        || clos.contains('/')
        || clos == "."
        || clos == ".."
        || !plain(clos)
    {
        return Err(cx.refuse(field, format!("{clos:?} is not a class name")));
    }
    Ok(())
}

/// The `linux` part: cgroups path, OOM score, I/O priority, seccomp,
/// namespaces, sysctls, net devices, scheduler, RDT, memory policy.
fn linux(cx: &mut Cx, s: &mut Value, adj: &NriAdjustment) -> Result<(), AdjustError> {
    if !adj.cgroups_path.is_empty() {
        cx.claim("linux.cgroups_path")?;
        if s["linux"]["cgroupsPath"].as_str() != Some(adj.cgroups_path.as_str()) {
            return Err(cx.refuse(
                "linux.cgroups_path",
                format!(
                    "{:?}: crius places the container in its pod's cgroup itself \
                     (its stats, OOM detection and updates use that path)",
                    adj.cgroups_path
                ),
            ));
        }
    }
    if let Some(score) = adj.oom_score_adj {
        cx.claim("linux.oom_score_adj")?;
        if !(-1000..=1000).contains(&score) {
            return Err(cx.refuse(
                "linux.oom_score_adj",
                format!("{score} is not in -1000..=1000"),
            ));
        }
        at(s, &["process"]).insert("oomScoreAdj".into(), json!(score));
    }
    if let Some(p) = &adj.io_priority {
        const F: &str = "linux.io_priority";
        cx.claim(F)?;
        if p.class == "IOPRIO_CLASS_NONE" {
            remove(s, &["process"], "ioPriority");
        } else {
            let class = oci_name::<oci_spec::runtime::IOPriorityClass>(cx, F, &p.class)?;
            if !(0..=7).contains(&p.priority) {
                return Err(cx.refuse(F, format!("priority {} is not in 0..=7", p.priority)));
            }
            at(s, &["process"]).insert(
                "ioPriority".into(),
                json!({ "class": class, "priority": p.priority }),
            );
        }
    }
    if let Some(p) = &adj.seccomp_policy {
        cx.claim("linux.seccomp_policy")?;
        let policy = seccomp(cx, p)?;
        at(s, &["linux"]).insert("seccomp".into(), policy);
    }
    for (kind, path) in &adj.namespaces {
        const F: &str = "linux.namespaces";
        let (removal, kind) = marked(kind);
        oci_name::<oci_spec::runtime::LinuxNamespaceType>(cx, F, kind)?;
        if !path.is_empty() && (!path.starts_with('/') || !plain(path)) {
            return Err(cx.refuse(F, format!("{kind} path {path:?} is not absolute")));
        }
        cx.claim(&format!("namespace {kind:?}"))?;
        let l = list(s, &["linux"], "namespaces");
        let at_ = l.iter().position(|n| n["type"].as_str() == Some(kind));
        let mut ns = json!({ "type": kind });
        if !path.is_empty() {
            ns["path"] = json!(path);
        }
        match (removal, at_) {
            (true, Some(i)) => {
                l.remove(i);
            }
            (true, None) => {}
            (false, Some(i)) => l[i] = ns,
            (false, None) => l.push(ns),
        }
    }
    for (key, value) in &adj.sysctl {
        let (removal, name) = marked(key);
        if name.is_empty() || !plain(name) || !plain(value) {
            return Err(cx.refuse("linux.sysctl", format!("bad sysctl {key:?}")));
        }
        let field = format!("sysctl {name:?}");
        if removal {
            cx.clear(&field);
            at(s, &["linux", "sysctl"]).remove(name);
        } else {
            cx.claim(&field)?;
            at(s, &["linux", "sysctl"]).insert(name.into(), json!(value));
        }
    }
    for (host, name) in &adj.net_devices {
        let (removal, host) = marked(host);
        if host.is_empty() || host.contains('/') || !plain(host) || !plain(name) {
            return Err(cx.refuse("linux.net_devices", format!("bad device name {host:?}")));
        }
        let field = format!("net device {host:?}");
        if removal {
            cx.clear(&field);
            at(s, &["linux", "netDevices"]).remove(host);
        } else {
            cx.claim(&field)?;
            let dev = if name.is_empty() {
                json!({})
            } else {
                json!({ "name": name })
            };
            at(s, &["linux", "netDevices"]).insert(host.into(), dev);
        }
    }
    if let Some(sch) = &adj.scheduler {
        const F: &str = "linux.scheduler";
        cx.claim(F)?;
        if sch.policy == "SCHED_NONE" {
            remove(s, &["process"], "scheduler");
        } else {
            let policy = oci_name::<oci_spec::runtime::LinuxSchedulerPolicy>(cx, F, &sch.policy)?;
            let flags = sch
                .flags
                .iter()
                .map(|f| oci_name::<oci_spec::runtime::LinuxSchedulerFlag>(cx, F, f))
                .collect::<Result<Vec<_>, _>>()?;
            let mut v = json!({ "policy": policy, "nice": sch.nice, "priority": sch.priority });
            if !flags.is_empty() {
                v["flags"] = json!(flags);
            }
            for (name, x) in [
                ("runtime", sch.runtime),
                ("deadline", sch.deadline),
                ("period", sch.period),
            ] {
                if x != 0 {
                    v[name] = json!(x);
                }
            }
            at(s, &["process"]).insert("scheduler".into(), v);
        }
    }
    if let Some(rdt) = &adj.rdt {
        const F: &str = "linux.rdt";
        if rdt.remove {
            for f in ["closID", "schemata", "enableMonitoring"] {
                cx.clear(&format!("{F}.{f}"));
            }
            remove(s, &["linux"], "intelRdt");
        }
        if let Some(clos) = &rdt.clos_id {
            cx.claim(&format!("{F}.closID"))?;
            check_clos(cx, F, clos)?;
            at(s, &["linux", "intelRdt"]).insert("closID".into(), json!(clos));
        }
        if let Some(schemata) = &rdt.schemata {
            cx.claim(&format!("{F}.schemata"))?;
            if !schemata.iter().all(|l| plain(l) && !l.contains('\n')) {
                return Err(cx.refuse(F, "a schemata line holds a newline or NUL byte"));
            }
            at(s, &["linux", "intelRdt"]).insert("schemata".into(), json!(schemata));
        }
        if let Some(on) = rdt.enable_monitoring {
            cx.claim(&format!("{F}.enableMonitoring"))?;
            at(s, &["linux", "intelRdt"]).insert("enableMonitoring".into(), json!(on));
        }
    }
    if let Some(mp) = &adj.memory_policy {
        const F: &str = "linux.memory_policy";
        cx.claim(F)?;
        let mode = oci_name::<oci_spec::runtime::MemoryPolicyModeType>(cx, F, &mp.mode)?;
        let flags = mp
            .flags
            .iter()
            .map(|f| oci_name::<oci_spec::runtime::MemoryPolicyFlagType>(cx, F, f))
            .collect::<Result<Vec<_>, _>>()?;
        if !mp
            .nodes
            .chars()
            .all(|ch| ch.is_ascii_digit() || ch == ',' || ch == '-')
        {
            return Err(cx.refuse(F, format!("nodes {:?} is not a list of numbers", mp.nodes)));
        }
        let mut v = json!({ "mode": mode });
        if !mp.nodes.is_empty() {
            v["nodes"] = json!(mp.nodes);
        }
        if !flags.is_empty() {
            v["flags"] = json!(flags);
        }
        at(s, &["linux"]).insert("memoryPolicy".into(), v);
    }
    Ok(())
}

/// The OCI seccomp object of a policy.
fn seccomp(cx: &Cx, p: &NriSeccomp) -> Result<Value, AdjustError> {
    use oci_spec::runtime::{
        Arch, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
    };
    const F: &str = "linux.seccomp_policy";
    let mut v = json!({
        "defaultAction": oci_name::<LinuxSeccompAction>(cx, F, &p.default_action)?,
    });
    if let Some(e) = p.default_errno {
        v["defaultErrnoRet"] = json!(e);
    }
    if !p.architectures.is_empty() {
        let archs = p
            .architectures
            .iter()
            .map(|a| oci_name::<Arch>(cx, F, a))
            .collect::<Result<Vec<_>, _>>()?;
        v["architectures"] = json!(archs);
    }
    if !p.flags.is_empty() {
        let flags = p
            .flags
            .iter()
            .map(|f| oci_name::<LinuxSeccompFilterFlag>(cx, F, f))
            .collect::<Result<Vec<_>, _>>()?;
        v["flags"] = json!(flags);
    }
    if !p.listener_path.is_empty() {
        if !p.listener_path.starts_with('/') || !plain(&p.listener_path) {
            return Err(cx.refuse(F, "listener_path is not absolute"));
        }
        v["listenerPath"] = json!(p.listener_path);
    }
    if !p.listener_metadata.is_empty() {
        v["listenerMetadata"] = json!(p.listener_metadata);
    }
    let mut syscalls = Vec::new();
    for c in &p.syscalls {
        if c.names.is_empty() || !c.names.iter().all(|n| plain(n) && !n.is_empty()) {
            return Err(cx.refuse(F, "a syscall rule without names"));
        }
        let mut rule = json!({
            "names": c.names,
            "action": oci_name::<LinuxSeccompAction>(cx, F, &c.action)?,
        });
        if let Some(e) = c.errno_ret {
            rule["errnoRet"] = json!(e);
        }
        if !c.args.is_empty() {
            let args = c
                .args
                .iter()
                .map(|a| {
                    Ok(json!({
                        "index": a.index,
                        "value": a.value,
                        "valueTwo": a.value_two,
                        "op": oci_name::<LinuxSeccompOperator>(cx, F, &a.op)?,
                    }))
                })
                .collect::<Result<Vec<_>, AdjustError>>()?;
            rule["args"] = json!(args);
        }
        syscalls.push(rule);
    }
    if !syscalls.is_empty() {
        v["syscalls"] = json!(syscalls);
    }
    // Checked against the OCI type here, to name the field on a mistake.
    serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(v.clone())
        .map_err(|e| cx.refuse(F, e.to_string()))?;
    Ok(v)
}

fn rlimits(cx: &mut Cx, s: &mut Value, rlimits: &[NriRlimit]) -> Result<(), AdjustError> {
    for r in rlimits {
        const F: &str = "rlimits";
        oci_name::<oci_spec::runtime::PosixRlimitType>(cx, F, &r.kind)?;
        if r.soft > r.hard {
            return Err(cx.refuse(
                F,
                format!("{}: soft limit {} above hard {}", r.kind, r.soft, r.hard),
            ));
        }
        cx.claim(&format!("rlimit {:?}", r.kind))?;
        let l = list(s, &["process"], "rlimits");
        let limit = json!({ "type": r.kind, "hard": r.hard, "soft": r.soft });
        match l.iter().position(|x| x["type"].as_str() == Some(&r.kind)) {
            Some(i) => l[i] = limit,
            None => l.push(limit),
        }
    }
    Ok(())
}
