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

use oci_spec::runtime::{
    Arch, Hook, Hooks, IOPriorityClass, Linux, LinuxCpu, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxHugepageLimit, LinuxIOPriorityBuilder, LinuxIntelRdt, LinuxMemory,
    LinuxMemoryPolicy, LinuxNamespaceType, LinuxNetDevice, LinuxPids, LinuxResources,
    LinuxSchedulerFlag, LinuxSchedulerPolicy, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
    MemoryPolicyFlagType, MemoryPolicyModeType, Mount, PosixRlimitBuilder, PosixRlimitType,
    Process, Scheduler, Spec,
};
use std::path::{Path, PathBuf};

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

/// The spec's process, made when it has none.
fn process(s: &mut Spec) -> &mut Process {
    s.process_mut().get_or_insert_with(crate::oci::process)
}

/// The spec's `linux`, made when it has none.
fn linux_of(s: &mut Spec) -> &mut Linux {
    s.linux_mut().get_or_insert_with(crate::oci::linux)
}

/// The spec's `linux.resources`, made when it has none.
fn res(s: &mut Spec) -> &mut LinuxResources {
    linux_of(s)
        .resources_mut()
        .get_or_insert_with(Default::default)
}

/// Changes the spec's memory limits (made when it has none).
fn with_memory(s: &mut Spec, f: impl FnOnce(&mut LinuxMemory)) {
    let r = res(s);
    let mut m = r.memory().unwrap_or_default();
    f(&mut m);
    r.set_memory(Some(m));
}

/// Changes the spec's CPU limits (made when it has none).
fn with_cpu(s: &mut Spec, f: impl FnOnce(&mut LinuxCpu)) {
    let r = res(s);
    let mut c = r.cpu().clone().unwrap_or_default();
    f(&mut c);
    r.set_cpu(Some(c));
}

/// Changes the spec's Intel RDT settings (made when it has none).
fn with_rdt(s: &mut Spec, f: impl FnOnce(&mut LinuxIntelRdt)) {
    let l = linux_of(s);
    let mut r = l.intel_rdt().clone().unwrap_or_default();
    f(&mut r);
    l.set_intel_rdt(Some(r));
}

/// The OCI value named `name` if the type `T` has one of that name and
/// writes it back the same (the oci-spec crate spells a few of the spec's
/// names its own way; those cannot be represented and are refused).
fn oci_name<T>(cx: &Cx, field: &str, name: &str) -> Result<T, AdjustError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let parsed: T = crate::oci::from_name(name, field)
        .map_err(|_| cx.refuse(field, format!("{name:?} is not a value the OCI spec knows")))?;
    if serde_json::to_value(&parsed)
        .ok()
        .as_ref()
        .and_then(|v| v.as_str())
        != Some(name)
    {
        return Err(cx.refuse(
            field,
            format!("{name:?} cannot be represented in crius' OCI spec"),
        ));
    }
    Ok(parsed)
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
    let mut s = spec.clone();
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
    Ok(s)
}

fn annotations(cx: &mut Cx, s: &mut Spec, entries: &[(String, String)]) -> Result<(), AdjustError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut out = s.annotations().clone().unwrap_or_default();
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
            out.insert(name.to_string(), value.clone());
        }
    }
    s.set_annotations(Some(out));
    Ok(())
}

fn env(cx: &mut Cx, s: &mut Spec, vars: &[(String, String)]) -> Result<(), AdjustError> {
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
        let env = process(s).env_mut().get_or_insert_with(Vec::new);
        let at = env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == name);
        match (removal, at) {
            (true, Some(i)) => {
                env.remove(i);
            }
            (true, None) => {}
            (false, Some(i)) => env[i] = format!("{name}={value}"),
            (false, None) => env.push(format!("{name}={value}")),
        }
    }
    Ok(())
}

fn mounts(cx: &mut Cx, s: &mut Spec, adj: &[NriMount]) -> Result<(), AdjustError> {
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
        let mounts = s.mounts_mut().get_or_insert_with(Vec::new);
        mounts.retain(|x| x.destination() != Path::new(dest));
        if removal {
            cx.clear(&field);
            continue;
        }
        cx.claim(&field)?;
        let mut mount = Mount::default();
        mount.set_destination(PathBuf::from(dest));
        mount.set_typ((!m.kind.is_empty()).then(|| m.kind.clone()));
        mount.set_source((!m.source.is_empty()).then(|| PathBuf::from(&m.source)));
        mount.set_options((!m.options.is_empty()).then(|| m.options.clone()));
        s.mounts_mut().get_or_insert_with(Vec::new).push(mount);
        added = true;
    }
    if added {
        // Parents before what is mounted below them (a stable sort keeps
        // the order of mounts as deep as each other).
        if let Some(mounts) = s.mounts_mut() {
            mounts.sort_by_key(|m| {
                m.destination()
                    .to_str()
                    .map_or(0, |d| d.split('/').filter(|p| !p.is_empty()).count())
            });
        }
    }
    Ok(())
}

fn args(cx: &mut Cx, s: &mut Spec, args: &[String]) -> Result<(), AdjustError> {
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
        process(s).set_args(Some(args.to_vec()));
    }
    Ok(())
}

/// The prestart hooks (deprecated by the OCI spec, still run by runc,
/// and part of NRI's adjustment).
#[allow(deprecated)]
fn prestart(h: &mut Hooks) -> &mut Option<Vec<Hook>> {
    h.prestart_mut()
}

fn hooks(cx: &mut Cx, s: &mut Spec, hooks: &NriHooks) -> Result<(), AdjustError> {
    type Slot = fn(&mut Hooks) -> &mut Option<Vec<Hook>>;
    let kinds: [(&str, &[NriHook], Slot); 6] = [
        ("prestart", &hooks.prestart, prestart),
        (
            "createRuntime",
            &hooks.create_runtime,
            Hooks::create_runtime_mut,
        ),
        (
            "createContainer",
            &hooks.create_container,
            Hooks::create_container_mut,
        ),
        (
            "startContainer",
            &hooks.start_container,
            Hooks::start_container_mut,
        ),
        ("poststart", &hooks.poststart, Hooks::poststart_mut),
        ("poststop", &hooks.poststop, Hooks::poststop_mut),
    ];
    for (kind, list_, slot) in kinds {
        for h in list_ {
            let field = format!("hooks.{kind}");
            if !h.path.starts_with('/') || !plain(&h.path) {
                return Err(cx.refuse(&field, format!("path {:?} is not absolute", h.path)));
            }
            if !h.args.iter().chain(&h.env).all(|a| plain(a)) {
                return Err(cx.refuse(&field, "a NUL byte"));
            }
            let mut hook = Hook::default();
            hook.set_path(PathBuf::from(&h.path));
            hook.set_args((!h.args.is_empty()).then(|| h.args.clone()));
            hook.set_env((!h.env.is_empty()).then(|| h.env.clone()));
            if let Some(t) = h.timeout {
                if t <= 0 {
                    return Err(cx.refuse(&field, format!("timeout {t} is not positive")));
                }
                hook.set_timeout(Some(t));
            }
            let all = s.hooks_mut().get_or_insert_with(Hooks::default);
            slot(all).get_or_insert_with(Vec::new).push(hook);
        }
    }
    Ok(())
}

fn devices(cx: &mut Cx, s: &mut Spec, devices: &[NriDevice]) -> Result<(), AdjustError> {
    for d in devices {
        let (removal, path) = marked(&d.path);
        if !path.starts_with('/') || !plain(path) {
            return Err(cx.refuse(
                "linux.devices",
                format!("path {:?} is not absolute", d.path),
            ));
        }
        let field = format!("device {path:?}");
        linux_of(s)
            .devices_mut()
            .get_or_insert_with(Vec::new)
            .retain(|x| x.path() != Path::new(path));
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
        let mut dev = LinuxDevice::default();
        dev.set_path(PathBuf::from(path));
        dev.set_typ(oci_name::<LinuxDeviceType>(cx, "linux.devices", &d.kind)?);
        dev.set_major(d.major);
        dev.set_minor(d.minor);
        dev.set_file_mode(d.file_mode.map(|m| m & 0o7777));
        dev.set_uid(d.uid);
        dev.set_gid(d.gid);
        linux_of(s)
            .devices_mut()
            .get_or_insert_with(Vec::new)
            .push(dev);
        // Allowed in the device cgroup, as NRI does: read and write, and
        // mknod for block devices.
        if d.kind != "p" {
            let access = if d.kind == "b" { "rwm" } else { "rw" };
            let kind = if d.kind == "u" { "c" } else { d.kind.as_str() };
            let mut rule = LinuxDeviceCgroup::default();
            rule.set_allow(true);
            rule.set_typ(Some(oci_name::<LinuxDeviceType>(
                cx,
                "linux.devices",
                kind,
            )?));
            rule.set_major(Some(d.major));
            rule.set_minor(Some(d.minor));
            rule.set_access(Some(access.to_string()));
            res(s).devices_mut().get_or_insert_with(Vec::new).push(rule);
        }
    }
    Ok(())
}

fn resources(cx: &mut Cx, s: &mut Spec, r: &NriResources) -> Result<(), AdjustError> {
    const MEM: &str = "linux.resources.memory";
    let m = &r.memory;
    // A new memory limit without a swap limit moves the swap limit along
    // (as NRI does), when the spec has one (crius sets none on a host
    // without swap accounting, where runc could not write it).
    let has_swap = s
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .is_some_and(|m| m.swap().is_some());
    type SetI64 = for<'a> fn(&'a mut LinuxMemory, Option<i64>) -> &'a mut LinuxMemory;
    #[allow(deprecated)]
    let ints: [(&str, Option<i64>, SetI64); 5] = [
        ("limit", m.limit, LinuxMemory::set_limit),
        ("reservation", m.reservation, LinuxMemory::set_reservation),
        (
            "swap",
            m.swap.or(m.limit.filter(|_| has_swap)),
            LinuxMemory::set_swap,
        ),
        ("kernel", m.kernel, |m, v| m.set_kernel(v)),
        ("kernelTCP", m.kernel_tcp, LinuxMemory::set_kernel_tcp),
    ];
    for (name, v, set) in ints {
        let Some(v) = v else { continue };
        // (the swap limit is claimed only when the plugin set it)
        if name != "swap" || m.swap.is_some() {
            cx.claim(&format!("{MEM}.{name}"))?;
        }
        if v < -1 {
            return Err(cx.refuse(&format!("{MEM}.{name}"), format!("{v} is below -1")));
        }
        with_memory(s, |m| {
            set(m, Some(v));
        });
    }
    if let Some(v) = m.swappiness {
        cx.claim(&format!("{MEM}.swappiness"))?;
        if v > 100 {
            return Err(cx.refuse(&format!("{MEM}.swappiness"), format!("{v} is above 100")));
        }
        with_memory(s, |m| {
            m.set_swappiness(Some(v));
        });
    }
    type SetBool = for<'a> fn(&'a mut LinuxMemory, Option<bool>) -> &'a mut LinuxMemory;
    let bools: [(&str, Option<bool>, SetBool); 2] = [
        (
            "disableOOMKiller",
            m.disable_oom_killer,
            LinuxMemory::set_disable_oom_killer,
        ),
        (
            "useHierarchy",
            m.use_hierarchy,
            LinuxMemory::set_use_hierarchy,
        ),
    ];
    for (name, v, set) in bools {
        if let Some(v) = v {
            cx.claim(&format!("{MEM}.{name}"))?;
            with_memory(s, |m| {
                set(m, Some(v));
            });
        }
    }

    const CPU: &str = "linux.resources.cpu";
    let c = &r.cpu;
    enum CpuValue {
        U(
            u64,
            for<'a> fn(&'a mut LinuxCpu, Option<u64>) -> &'a mut LinuxCpu,
        ),
        I(
            i64,
            for<'a> fn(&'a mut LinuxCpu, Option<i64>) -> &'a mut LinuxCpu,
        ),
        Set(
            String,
            for<'a> fn(&'a mut LinuxCpu, Option<String>) -> &'a mut LinuxCpu,
        ),
    }
    let cpu: [(&str, Option<CpuValue>); 7] = [
        (
            "shares",
            c.shares.map(|v| CpuValue::U(v, LinuxCpu::set_shares)),
        ),
        (
            "quota",
            c.quota.map(|v| CpuValue::I(v, LinuxCpu::set_quota)),
        ),
        (
            "period",
            c.period.map(|v| CpuValue::U(v, LinuxCpu::set_period)),
        ),
        (
            "realtimeRuntime",
            c.realtime_runtime
                .map(|v| CpuValue::I(v, LinuxCpu::set_realtime_runtime)),
        ),
        (
            "realtimePeriod",
            c.realtime_period
                .map(|v| CpuValue::U(v, LinuxCpu::set_realtime_period)),
        ),
        (
            "cpus",
            (!c.cpus.is_empty()).then(|| CpuValue::Set(c.cpus.clone(), LinuxCpu::set_cpus)),
        ),
        (
            "mems",
            (!c.mems.is_empty()).then(|| CpuValue::Set(c.mems.clone(), LinuxCpu::set_mems)),
        ),
    ];
    for (name, v) in cpu {
        let Some(v) = v else { continue };
        let field = format!("{CPU}.{name}");
        cx.claim(&field)?;
        match v {
            CpuValue::U(v, set) => with_cpu(s, |c| {
                set(c, Some(v));
            }),
            CpuValue::I(v, set) => with_cpu(s, |c| {
                set(c, Some(v));
            }),
            CpuValue::Set(set_, set) => {
                if !set_
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ch == ',' || ch == '-')
                {
                    return Err(cx.refuse(&field, format!("{set_:?} is not a list of numbers")));
                }
                with_cpu(s, |c| {
                    set(c, Some(set_));
                });
            }
        }
    }

    for (size, limit) in &r.hugepage_limits {
        if size.is_empty() || !size.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            return Err(cx.refuse(
                "linux.resources.hugepage_limits",
                format!("page size {size:?}"),
            ));
        }
        cx.claim(&format!("hugepage limit {size:?}"))?;
        let limit = i64::try_from(*limit).map_err(|_| {
            cx.refuse(
                "linux.resources.hugepage_limits",
                format!("page size {size:?}: limit {limit} is out of range"),
            )
        })?;
        let l = res(s).hugepage_limits_mut().get_or_insert_with(Vec::new);
        l.retain(|x| x.page_size() != size);
        let mut h = LinuxHugepageLimit::default();
        h.set_page_size(size.clone());
        h.set_limit(limit);
        l.push(h);
    }

    for (key, value) in &r.unified {
        if key.is_empty() || key.contains('/') || key.starts_with('.') || !plain(value) {
            return Err(cx.refuse(
                "linux.resources.unified",
                format!("bad cgroup file {key:?}"),
            ));
        }
        cx.claim(&format!("unified {key:?}"))?;
        res(s)
            .unified_mut()
            .get_or_insert_with(Default::default)
            .insert(key.clone(), value.clone());
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
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(d.allow);
        rule.set_typ(Some(oci_name::<LinuxDeviceType>(
            cx,
            "linux.resources.devices",
            kind,
        )?));
        rule.set_major(d.major);
        rule.set_minor(d.minor);
        rule.set_access(Some(d.access.clone()));
        res(s).devices_mut().get_or_insert_with(Vec::new).push(rule);
    }

    if let Some(limit) = r.pids {
        cx.claim("linux.resources.pids.limit")?;
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        res(s).set_pids(Some(pids));
    }

    if let Some(class) = &r.blockio_class {
        cx.claim("linux.resources.blockio_class")?;
        if !class.is_empty() {
            return Err(cx.refuse(
                "linux.resources.blockio_class",
                format!("class {class:?}: crius has no block I/O class configuration"),
            ));
        }
        if let Some(r) = s
            .linux_mut()
            .as_mut()
            .and_then(|l| l.resources_mut().as_mut())
        {
            r.set_block_io(None);
        }
    }
    if let Some(class) = &r.rdt_class {
        cx.claim("linux.resources.rdt_class")?;
        if class.is_empty() {
            if let Some(l) = s.linux_mut() {
                l.set_intel_rdt(None);
            }
        } else {
            check_clos(cx, "linux.resources.rdt_class", class)?;
            with_rdt(s, |r| {
                r.set_clos_id(Some(class.clone()));
            });
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
fn linux(cx: &mut Cx, s: &mut Spec, adj: &NriAdjustment) -> Result<(), AdjustError> {
    if !adj.cgroups_path.is_empty() {
        cx.claim("linux.cgroups_path")?;
        let current = s
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .and_then(|p| p.to_str());
        if current != Some(adj.cgroups_path.as_str()) {
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
        let score = i32::try_from(score)
            .ok()
            .filter(|s| (-1000..=1000).contains(s))
            .ok_or_else(|| {
                cx.refuse(
                    "linux.oom_score_adj",
                    format!("{score} is not in -1000..=1000"),
                )
            })?;
        process(s).set_oom_score_adj(Some(score));
    }
    if let Some(p) = &adj.io_priority {
        const F: &str = "linux.io_priority";
        cx.claim(F)?;
        if p.class == "IOPRIO_CLASS_NONE" {
            if let Some(proc_) = s.process_mut() {
                proc_.set_io_priority(None);
            }
        } else {
            let class = oci_name::<IOPriorityClass>(cx, F, &p.class)?;
            if !(0..=7).contains(&p.priority) {
                return Err(cx.refuse(F, format!("priority {} is not in 0..=7", p.priority)));
            }
            let prio = LinuxIOPriorityBuilder::default()
                .class(class)
                .priority(i64::from(p.priority))
                .build()
                .map_err(|e| cx.refuse(F, e.to_string()))?;
            process(s).set_io_priority(Some(prio));
        }
    }
    if let Some(p) = &adj.seccomp_policy {
        cx.claim("linux.seccomp_policy")?;
        let policy = seccomp(cx, p)?;
        linux_of(s).set_seccomp(Some(policy));
    }
    for (kind, path) in &adj.namespaces {
        const F: &str = "linux.namespaces";
        let (removal, kind) = marked(kind);
        let typ = oci_name::<LinuxNamespaceType>(cx, F, kind)?;
        if !path.is_empty() && (!path.starts_with('/') || !plain(path)) {
            return Err(cx.refuse(F, format!("{kind} path {path:?} is not absolute")));
        }
        cx.claim(&format!("namespace {kind:?}"))?;
        let l = linux_of(s).namespaces_mut().get_or_insert_with(Vec::new);
        let at_ = l.iter().position(|n| n.typ() == typ);
        let ns = crate::oci::namespace(typ, (!path.is_empty()).then(|| path.clone()));
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
            linux_of(s)
                .sysctl_mut()
                .get_or_insert_with(Default::default)
                .remove(name);
        } else {
            cx.claim(&field)?;
            linux_of(s)
                .sysctl_mut()
                .get_or_insert_with(Default::default)
                .insert(name.into(), value.clone());
        }
    }
    for (host, name) in &adj.net_devices {
        let (removal, host) = marked(host);
        if host.is_empty() || host.contains('/') || !plain(host) || !plain(name) {
            return Err(cx.refuse("linux.net_devices", format!("bad device name {host:?}")));
        }
        let field = format!("net device {host:?}");
        let devices = linux_of(s)
            .net_devices_mut()
            .get_or_insert_with(Default::default);
        if removal {
            cx.clear(&field);
            devices.remove(host);
        } else {
            cx.claim(&field)?;
            let mut dev = LinuxNetDevice::default();
            dev.set_name((!name.is_empty()).then(|| name.clone()));
            devices.insert(host.into(), dev);
        }
    }
    if let Some(sch) = &adj.scheduler {
        const F: &str = "linux.scheduler";
        cx.claim(F)?;
        if sch.policy == "SCHED_NONE" {
            if let Some(proc_) = s.process_mut() {
                proc_.set_scheduler(None);
            }
        } else {
            let policy = oci_name::<LinuxSchedulerPolicy>(cx, F, &sch.policy)?;
            let flags = sch
                .flags
                .iter()
                .map(|f| oci_name::<LinuxSchedulerFlag>(cx, F, f))
                .collect::<Result<Vec<_>, _>>()?;
            let mut v = Scheduler::default();
            v.set_policy(policy);
            v.set_nice(Some(sch.nice));
            v.set_priority(Some(sch.priority));
            v.set_flags((!flags.is_empty()).then_some(flags));
            let nonzero = |x: u64| (x != 0).then_some(x);
            v.set_runtime(nonzero(sch.runtime));
            v.set_deadline(nonzero(sch.deadline));
            v.set_period(nonzero(sch.period));
            process(s).set_scheduler(Some(v));
        }
    }
    if let Some(rdt) = &adj.rdt {
        const F: &str = "linux.rdt";
        if rdt.remove {
            for f in ["closID", "schemata", "enableMonitoring"] {
                cx.clear(&format!("{F}.{f}"));
            }
            if let Some(l) = s.linux_mut() {
                l.set_intel_rdt(None);
            }
        }
        if let Some(clos) = &rdt.clos_id {
            cx.claim(&format!("{F}.closID"))?;
            check_clos(cx, F, clos)?;
            with_rdt(s, |r| {
                r.set_clos_id(Some(clos.clone()));
            });
        }
        if let Some(schemata) = &rdt.schemata {
            cx.claim(&format!("{F}.schemata"))?;
            if !schemata.iter().all(|l| plain(l) && !l.contains('\n')) {
                return Err(cx.refuse(F, "a schemata line holds a newline or NUL byte"));
            }
            with_rdt(s, |r| {
                r.set_schemata(Some(schemata.clone()));
            });
        }
        if let Some(on) = rdt.enable_monitoring {
            cx.claim(&format!("{F}.enableMonitoring"))?;
            with_rdt(s, |r| {
                r.set_enable_monitoring(Some(on));
            });
        }
    }
    if let Some(mp) = &adj.memory_policy {
        const F: &str = "linux.memory_policy";
        cx.claim(F)?;
        let mode = oci_name::<MemoryPolicyModeType>(cx, F, &mp.mode)?;
        let flags = mp
            .flags
            .iter()
            .map(|f| oci_name::<MemoryPolicyFlagType>(cx, F, f))
            .collect::<Result<Vec<_>, _>>()?;
        if !mp
            .nodes
            .chars()
            .all(|ch| ch.is_ascii_digit() || ch == ',' || ch == '-')
        {
            return Err(cx.refuse(F, format!("nodes {:?} is not a list of numbers", mp.nodes)));
        }
        let mut v = LinuxMemoryPolicy::default();
        v.set_mode(mode);
        v.set_nodes((!mp.nodes.is_empty()).then(|| mp.nodes.clone()));
        v.set_flags((!flags.is_empty()).then_some(flags));
        linux_of(s).set_memory_policy(Some(v));
    }
    Ok(())
}

/// The OCI seccomp object of a policy.
fn seccomp(cx: &Cx, p: &NriSeccomp) -> Result<LinuxSeccomp, AdjustError> {
    const F: &str = "linux.seccomp_policy";
    let mut v = LinuxSeccomp::default();
    v.set_default_action(oci_name::<LinuxSeccompAction>(cx, F, &p.default_action)?);
    v.set_default_errno_ret(p.default_errno);
    if !p.architectures.is_empty() {
        let archs = p
            .architectures
            .iter()
            .map(|a| oci_name::<Arch>(cx, F, a))
            .collect::<Result<Vec<_>, _>>()?;
        v.set_architectures(Some(archs));
    }
    if !p.flags.is_empty() {
        let flags = p
            .flags
            .iter()
            .map(|f| oci_name::<LinuxSeccompFilterFlag>(cx, F, f))
            .collect::<Result<Vec<_>, _>>()?;
        v.set_flags(Some(flags));
    }
    if !p.listener_path.is_empty() {
        if !p.listener_path.starts_with('/') || !plain(&p.listener_path) {
            return Err(cx.refuse(F, "listener_path is not absolute"));
        }
        v.set_listener_path(Some(PathBuf::from(&p.listener_path)));
    }
    if !p.listener_metadata.is_empty() {
        v.set_listener_metadata(Some(p.listener_metadata.clone()));
    }
    let mut syscalls = Vec::new();
    for c in &p.syscalls {
        if c.names.is_empty() || !c.names.iter().all(|n| plain(n) && !n.is_empty()) {
            return Err(cx.refuse(F, "a syscall rule without names"));
        }
        let mut rule = LinuxSyscall::default();
        rule.set_names(c.names.clone());
        rule.set_action(oci_name::<LinuxSeccompAction>(cx, F, &c.action)?);
        rule.set_errno_ret(c.errno_ret);
        if !c.args.is_empty() {
            let args = c
                .args
                .iter()
                .map(|a| {
                    LinuxSeccompArgBuilder::default()
                        .index(a.index as usize)
                        .value(a.value)
                        .value_two(a.value_two)
                        .op(oci_name::<LinuxSeccompOperator>(cx, F, &a.op)?)
                        .build()
                        .map_err(|e| cx.refuse(F, e.to_string()))
                })
                .collect::<Result<Vec<_>, AdjustError>>()?;
            rule.set_args(Some(args));
        }
        syscalls.push(rule);
    }
    if !syscalls.is_empty() {
        v.set_syscalls(Some(syscalls));
    }
    Ok(v)
}

fn rlimits(cx: &mut Cx, s: &mut Spec, rlimits: &[NriRlimit]) -> Result<(), AdjustError> {
    for r in rlimits {
        const F: &str = "rlimits";
        let typ = oci_name::<PosixRlimitType>(cx, F, &r.kind)?;
        if r.soft > r.hard {
            return Err(cx.refuse(
                F,
                format!("{}: soft limit {} above hard {}", r.kind, r.soft, r.hard),
            ));
        }
        cx.claim(&format!("rlimit {:?}", r.kind))?;
        let limit = PosixRlimitBuilder::default()
            .typ(typ)
            .hard(r.hard)
            .soft(r.soft)
            .build()
            .map_err(|e| cx.refuse(F, e.to_string()))?;
        let p = process(s);
        let mut l = p.rlimits().clone().unwrap_or_default();
        match l.iter().position(|x| x.typ() == typ) {
            Some(i) => l[i] = limit,
            None => l.push(limit),
        }
        p.set_rlimits(Some(l));
    }
    Ok(())
}
