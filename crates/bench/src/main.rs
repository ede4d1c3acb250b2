//! `crius-bench`: crius next to Debian's containerd 1.6 and the raw runc
//! floor, on one machine in one run. Run by `cargo xtask bench` (as root).
//!
//! Each runtime gets fresh directories, the same local registry (pause and
//! busybox images built from busybox-static) and the same CNI conflist.
//! Prints one table and writes a JSON file.

mod cri;
mod floor;
mod net;
mod registry;
mod scale;

use anyhow::{bail, Context, Result};
use cri::{Cri, Daemon};
use floor::Floor;
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: crius-bench --criusd PATH [--out FILE] [--pods N] [--concurrency N] [--execs N] [--only crius,crius-nri-off,containerd,runc] [--seccomp unconfined|runtime-default] [--share-pid] [--pause] [--dir BASE]
       crius-bench --scale --criusd PATH [--out FILE] [--pods N] [--calls N] [--idle-secs N] [--poll-secs N] [--only crius,containerd] ...

--scale: node scale (cargo xtask bench scale): the node brought to 50, 100
and 200 running pods (--pods caps the levels), at each level the list,
stats and status calls timed (--calls each), the runtime's CPU idle
(--idle-secs) and under kubelet-like polling (--poll-secs), its memory;
then teardown and a check that nothing is left.

--seccomp: the seccomp profile every pod and container asks for. The default,
unconfined, is what kubelet sends when the SeccompDefault setting is off
(its default); runtime-default is what it sends with it on.
--share-pid: pods as kubelet sends them with shareProcessNamespace (one PID
namespace per pod, held by the pause container in containerd and the floor,
by the shim's PID-namespace holder in crius) instead of a PID namespace per
container (which crius runs without a pause).
--pause: criusd with `pid_holder = false` (PID-sharing pods get a pause
container, as before the holder became the default).
--dir: where the run's directory (roots, states, bundles, logs of every
runtime) is made; default /tmp.";

struct Options {
    criusd: PathBuf,
    out: PathBuf,
    pods: usize,
    concurrency: usize,
    execs: usize,
    only: Vec<String>,
    /// `SecurityProfile.ProfileType` sent for pods and containers.
    seccomp: i32,
    /// Pods share one PID namespace (`shareProcessNamespace`).
    share_pid: bool,
    /// criusd with `pid_holder = false` (`--pause`).
    pause: bool,
    /// Parent of the run's directory.
    base: PathBuf,
    /// Node-scale mode (`scale.rs`).
    scale: bool,
    /// Scale: numbers of running pods measured.
    levels: Vec<usize>,
    /// Scale: calls timed per kind and level.
    calls: usize,
    /// Scale: seconds of idle CPU measurement.
    idle_secs: u64,
    /// Scale: seconds of kubelet-like polling.
    poll_secs: u64,
}

fn options() -> Result<Options> {
    let mut o = Options {
        criusd: PathBuf::from("target/release/criusd"),
        out: PathBuf::from("target/bench/results.json"),
        pods: 50,
        concurrency: 10,
        execs: 100,
        only: vec!["crius".into(), "containerd".into(), "runc".into()],
        seccomp: k8s_cri::v1::security_profile::ProfileType::Unconfined as i32,
        share_pid: false,
        pause: false,
        base: PathBuf::from("/tmp"),
        scale: false,
        levels: Vec::new(),
        calls: 20,
        idle_secs: 10,
        poll_secs: 30,
    };
    let mut pods_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--criusd" => o.criusd = value()?.into(),
            "--out" => o.out = value()?.into(),
            "--pods" => {
                o.pods = value()?.parse()?;
                pods_given = true;
            }
            "--scale" => o.scale = true,
            "--calls" => o.calls = value()?.parse()?,
            "--idle-secs" => o.idle_secs = value()?.parse()?,
            "--poll-secs" => o.poll_secs = value()?.parse()?,
            "--concurrency" => o.concurrency = value()?.parse()?,
            "--execs" => o.execs = value()?.parse()?,
            "--only" => o.only = value()?.split(',').map(String::from).collect(),
            "--seccomp" => {
                use k8s_cri::v1::security_profile::ProfileType;
                o.seccomp = match value()?.as_str() {
                    "unconfined" => ProfileType::Unconfined as i32,
                    "runtime-default" => ProfileType::RuntimeDefault as i32,
                    other => bail!("--seccomp {other:?}: unconfined or runtime-default"),
                }
            }
            "--share-pid" => o.share_pid = true,
            "--pause" => o.pause = true,
            "--dir" => o.base = value()?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if o.scale {
        o.levels = scale::levels(if pods_given { o.pods } else { 200 });
        o.only.retain(|r| r != "runc" && r != "crius-nri-off");
        if o.calls == 0 || o.idle_secs == 0 || o.poll_secs == 0 {
            bail!("--calls, --idle-secs and --poll-secs must be at least 1");
        }
    }
    if o.pods < 10 || o.concurrency == 0 || o.execs == 0 {
        bail!("--pods must be at least 10, --concurrency and --execs at least 1");
    }
    Ok(o)
}

// ---------------------------------------------------------------- statistics

/// Latencies in milliseconds plus failures of one shape.
#[derive(Default)]
struct Samples {
    ms: Vec<f64>,
    failures: usize,
    first_error: Option<String>,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.ms.extend(other.ms);
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> Option<f64> {
        if self.ms.is_empty() {
            return None;
        }
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1])
    }

    /// As [`Samples::json`] without the samples.
    fn json_summary(&self) -> serde_json::Value {
        json!({
            "n": self.ms.len(),
            "p50_ms": self.pct(50.0),
            "p95_ms": self.pct(95.0),
            "max_ms": self.pct(100.0),
            "failures": self.failures,
            "first_error": self.first_error,
        })
    }

    fn json(&self) -> serde_json::Value {
        let mut v = self.json_summary();
        v["samples_ms"] = json!(self
            .ms
            .iter()
            .map(|m| (m * 10.0).round() / 10.0)
            .collect::<Vec<_>>());
        v
    }
}

/// Runs `op(i)` for i in `range` with `concurrency` workers; times each call.
/// Returns the samples and the values of the successful calls.
async fn shape<T, F, Fut>(
    range: std::ops::Range<usize>,
    concurrency: usize,
    op: F,
) -> (Samples, Vec<T>)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    let next = Arc::new(AtomicUsize::new(range.start));
    let out = Arc::new(Mutex::new((Samples::default(), Vec::new())));
    let op = Arc::new(op);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, out, op, end) = (next.clone(), out.clone(), op.clone(), range.end);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= end {
                    break;
                }
                let t0 = Instant::now();
                let r = op(i).await;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                let mut g = out.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(v) => {
                        g.0.ms.push(ms);
                        g.1.push(v);
                    }
                    Err(e) => {
                        g.0.failures += 1;
                        if g.0.first_error.is_none() {
                            g.0.first_error = Some(format!("{e:#}"));
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut g = out.lock().unwrap_or_else(|p| p.into_inner());
    (std::mem::take(&mut g.0), std::mem::take(&mut g.1))
}

// ---------------------------------------------------------------- memory

fn status_kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    status_kib(pid, "status", "VmRSS:") as f64 / 1024.0
}

fn pss_mib(pid: u32) -> f64 {
    status_kib(pid, "smaps_rollup", "Pss:") as f64 / 1024.0
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the process's command line or environment mentions `needle`.
fn mentions(pid: u32, needle: &str) -> bool {
    ["cmdline", "environ"].iter().any(|f| {
        let bytes = std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).contains(needle)
    })
}

/// The shim processes of the runtime living under `dir`.
fn shims(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("containerd-shim"))
                && mentions(*p, &needle)
        })
        .collect()
}

fn memory(daemon: u32, dir: &Path, pods: usize) -> serde_json::Value {
    let shim_pids = shims(dir);
    let n = shim_pids.len().max(1) as f64;
    // Folds from 0.0 (f64's Sum starts at -0.0).
    let shim_rss = shim_pids.iter().fold(0.0, |a, p| a + rss_mib(*p));
    let shim_pss = shim_pids.iter().fold(0.0, |a, p| a + pss_mib(*p));
    let daemon_pss = pss_mib(daemon);
    json!({
        "pods": pods,
        "daemon_rss_mib": rss_mib(daemon),
        "daemon_pss_mib": daemon_pss,
        "shims": shim_pids.len(),
        "shim_rss_mib_mean": shim_rss / n,
        "shim_pss_mib_mean": shim_pss / n,
        "runtime_pss_mib_per_pod": if pods > 0 { (daemon_pss + shim_pss) / pods as f64 } else { 0.0 },
    })
}

// ---------------------------------------------------------------- cleanup

/// Undoes what a run may leave behind, even on failure: processes started
/// from the bench directory, mounts below it, new `cni-*` netns, the bench
/// cgroups, then the directory itself.
struct Cleanup {
    dir: PathBuf,
    netns_before: Vec<String>,
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_below(dir: &Path) {
    let me = std::process::id();
    let needle = dir.display().to_string();
    for _ in 0..50 {
        let left: Vec<u32> = pids()
            .into_iter()
            .filter(|p| *p != me && mentions(*p, &needle))
            .collect();
        if left.is_empty() {
            return;
        }
        for p in left {
            // SAFETY: kill(2) on a process the bench started (its command
            // line or environment names the bench directory).
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unmount_below(dir: &Path) {
    let d = dir.display().to_string();
    let mut targets: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&d))
        .map(String::from)
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Ok(c) = std::ffi::CString::new(t) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Mounts a tmpfs (mode 0700) on `path`, made if missing: a runtime's
/// state directory, which is on tmpfs (`/run`) on a node. This VM's root
/// filesystem, which holds /tmp and /run here, is ext4 without a journal,
/// where every new inode is first looked for past every inode deleted in
/// the last minute (five with the inode table dirty): the many small files
/// of runtime state made each new one slower over a run (a third of
/// criusd's CPU in the pod starts went there, in `recently_deleted`).
/// Unmounted by [`unmount_below`].
pub fn tmpfs(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(path)?;
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let (fs, data) = (c"tmpfs", c"mode=0700");
    // SAFETY: valid NUL-terminated strings; no pointers are kept.
    let r = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("tmpfs on {}", path.display()));
    }
    Ok(())
}

/// Removes `path` and its sub-cgroups, deepest first.
fn remove_cgroup(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(path);
}

fn remove_bench_cgroups() {
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            remove_cgroup(&e.path().join("crius-bench"));
        }
    }
    remove_cgroup(Path::new("/sys/fs/cgroup/unified/crius-bench"));
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_below(&self.dir);
        unmount_below(&self.dir);
        for name in netns_names() {
            if name.starts_with("cni-") && !self.netns_before.contains(&name) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &name])
                    .status();
            }
        }
        remove_bench_cgroups();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("bench: cleanup: {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------- runs

/// Per-CRI-call latency statistics.
fn steps_json(
    steps: std::collections::BTreeMap<&'static str, Vec<f64>>,
) -> serde_json::Map<String, serde_json::Value> {
    steps
        .into_iter()
        .map(|(k, ms)| {
            let s = Samples {
                ms,
                ..Default::default()
            };
            (k.to_string(), s.json())
        })
        .collect()
}

/// The whole measurement on one CRI runtime.
async fn bench_cri(
    name: &str,
    daemon: &Daemon,
    dir: &Path,
    reg: &str,
    o: &Options,
    metrics: Option<&str>,
) -> Result<serde_json::Value> {
    let logs = dir.join("logs");
    let cri = Cri::new(&daemon.socket, reg, &logs, name, o.seccomp, o.share_pid).await?;
    eprintln!("bench: {name}: pulling the images");
    cri.pull().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = memory(daemon.pid(), dir, 0);

    let start = |cri: &Cri, prefix: &'static str| {
        let cri = cri.clone();
        move |i: usize| {
            let cri = cri.clone();
            async move { cri.start_pod(&format!("{prefix}{i}")).await }
        }
    };
    let teardown = |cri: &Cri, pods: Vec<(String, String)>| {
        let cri = cri.clone();
        async move {
            for (p, _) in pods {
                if let Err(e) = cri.remove_pod(&p).await {
                    eprintln!("bench: teardown of {p}: {e:#}");
                }
            }
        }
    };

    eprintln!("bench: {name}: {} pods started one by one", o.pods);
    cri.take_steps();
    let phases_before = metrics.map(cri::scrape_phases);
    let (mut start_seq, mut pods) = shape(0..10, 1, start(&cri, "s")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem10 = memory(daemon.pid(), dir, pods.len());
    let (rest, more) = shape(10..o.pods, 1, start(&cri, "s")).await;
    start_seq.merge(rest);
    pods.extend(more);
    let start_steps = steps_json(cri.take_steps());
    let start_phases = phase_means(phases_before, metrics.map(cri::scrape_phases));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem50 = memory(daemon.pid(), dir, pods.len());

    eprintln!("bench: {name}: {} ExecSync", o.execs);
    let exec = match pods.first() {
        Some((_, ctr)) => {
            let (cri2, ctr) = (cri.clone(), ctr.clone());
            shape(0..o.execs, 1, move |_| {
                let (cri, ctr) = (cri2.clone(), ctr.clone());
                async move { cri.exec(&ctr).await }
            })
            .await
            .0
        }
        None => Samples::default(),
    };
    teardown(&cri, pods).await;

    eprintln!(
        "bench: {name}: {} pods started {} at a time",
        o.pods, o.concurrency
    );
    let (start_conc, pods) = shape(0..o.pods, o.concurrency, start(&cri, "c")).await;
    teardown(&cri, pods).await;

    let lifecycle = |prefix: &'static str| {
        let cri = cri.clone();
        move |i: usize| {
            let cri = cri.clone();
            async move {
                let (pod, _) = cri.start_pod(&format!("{prefix}{i}")).await?;
                cri.remove_pod(&pod).await
            }
        }
    };
    eprintln!("bench: {name}: {} lifecycles one by one", o.pods);
    cri.take_steps();
    let before = metrics.map(cri::scrape_phases);
    let cpu0 = cpu_busy_ms();
    let (life_seq, _) = shape(0..o.pods, 1, lifecycle("l")).await;
    let cpu_seq = cpu_per(cpu0, o.pods);
    let phases = phase_means(before, metrics.map(cri::scrape_phases));
    let steps = steps_json(cri.take_steps());
    eprintln!(
        "bench: {name}: {} lifecycles {} at a time",
        o.pods, o.concurrency
    );
    let cpu0 = cpu_busy_ms();
    let (life_conc, _) = shape(0..o.pods, o.concurrency, lifecycle("m")).await;
    let cpu_conc = cpu_per(cpu0, o.pods);
    let conc_steps = steps_json(cri.take_steps());

    Ok(json!({
        "start_sequential": start_seq.json(),
        "start_concurrent": start_conc.json(),
        "lifecycle_sequential": life_seq.json(),
        "lifecycle_concurrent": life_conc.json(),
        "exec_sync": exec.json(),
        "start_sequential_steps": start_steps,
        "start_sequential_phases": start_phases,
        "lifecycle_sequential_steps": steps,
        "lifecycle_concurrent_steps": conc_steps,
        "lifecycle_sequential_phases": phases,
        "cpu_ms_per_lifecycle_sequential": cpu_seq,
        "cpu_ms_per_lifecycle_concurrent": cpu_conc,
        "memory_idle": idle,
        "memory_10": mem10,
        "memory_50": mem50,
    }))
}

async fn bench_runc(dir: &Path, layer: &[u8], o: &Options) -> Result<serde_json::Value> {
    let floor = Arc::new(Floor::new(dir, layer, o.pods)?);
    let start = |floor: &Arc<Floor>| {
        let floor = floor.clone();
        move |i: usize| {
            let floor = floor.clone();
            async move { tokio::task::spawn_blocking(move || floor.start_pod(i)).await? }
        }
    };
    let teardown = |floor: &Arc<Floor>, pods: Vec<floor::FloorPod>| {
        for p in pods {
            if let Err(e) = floor.remove_pod(&p) {
                eprintln!("bench: runc teardown: {e:#}");
            }
        }
    };
    let lifecycle = |floor: &Arc<Floor>| {
        let floor = floor.clone();
        move |i: usize| {
            let floor = floor.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let p = floor.start_pod(i)?;
                    floor.remove_pod(&p)
                })
                .await?
            }
        }
    };
    eprintln!("bench: runc: floor");
    let (start_seq, pods) = shape(0..o.pods, 1, start(&floor)).await;
    teardown(&floor, pods);
    let (start_conc, pods) = shape(0..o.pods, o.concurrency, start(&floor)).await;
    teardown(&floor, pods);
    let cpu0 = cpu_busy_ms();
    let (life_seq, _) = shape(0..o.pods, 1, lifecycle(&floor)).await;
    let cpu_seq = cpu_per(cpu0, o.pods);
    let cpu0 = cpu_busy_ms();
    let (life_conc, _) = shape(0..o.pods, o.concurrency, lifecycle(&floor)).await;
    let cpu_conc = cpu_per(cpu0, o.pods);
    Ok(json!({
        "start_sequential": start_seq.json(),
        "start_concurrent": start_conc.json(),
        "lifecycle_sequential": life_seq.json(),
        "lifecycle_concurrent": life_conc.json(),
        "cpu_ms_per_lifecycle_sequential": cpu_seq,
        "cpu_ms_per_lifecycle_concurrent": cpu_conc,
    }))
}

/// Mean of each criusd-internal phase between two scrapes of `/metrics`.
fn phase_means(
    before: Option<Result<BTreeMap<String, (f64, f64)>>>,
    after: Option<Result<BTreeMap<String, (f64, f64)>>>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut phases = serde_json::Map::new();
    if let (Some(Ok(before)), Some(Ok(after))) = (before, after) {
        for (k, (sum, count)) in after {
            let (s0, c0) = before.get(&k).copied().unwrap_or((0.0, 0.0));
            if count > c0 {
                phases.insert(
                    k,
                    json!({"mean_ms": (sum - s0) / (count - c0) * 1000.0, "n": count - c0}),
                );
            }
        }
    }
    phases
}

/// CPU time the whole machine has spent busy (user, nice, system, irq,
/// softirq, steal of every CPU) since boot, from /proc/stat, in ms.
fn cpu_busy_ms() -> Option<f64> {
    let (busy, _) = cpu_ticks()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 * 1000.0 / hz as f64)
}

/// Busy and total clock ticks of every CPU since boot, from /proc/stat.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    let total = busy + [3, 4].iter().filter_map(|&i| v.get(i)).sum::<u64>();
    Some((busy, total))
}

/// Waits (at most 60 s) until the machine is quiet: two half-second
/// samples in a row with at least 90% of the CPU time idle, so that
/// whatever a previous runtime or run left to finish (the kernel destroys
/// network namespaces and cgroups in the background after a teardown)
/// does not run into the next runtime's first measurements. (In session
/// 13's runs the machine was always quiet already; the slowdown first
/// blamed on this came from the file system, see [`tmpfs`].) Returns how
/// long it waited.
async fn wait_quiet() -> Duration {
    let started = Instant::now();
    let mut quiet_samples = 0;
    let mut last = cpu_ticks();
    while quiet_samples < 2 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cpu_ticks();
        let quiet = match (last, now) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) * 10 <= t1 - t0,
            // No /proc/stat: nothing to wait for.
            _ => true,
        };
        quiet_samples = if quiet { quiet_samples + 1 } else { 0 };
        last = now;
    }
    started.elapsed()
}

/// A runtime's results with how long the quiet-machine wait before its
/// part took (`quiet_wait_s`, see [`wait_quiet`]).
fn with_quiet_wait(mut results: serde_json::Value, waited: Duration) -> serde_json::Value {
    if let Some(m) = results.as_object_mut() {
        m.insert("quiet_wait_s".into(), json!(waited.as_secs_f64()));
    }
    results
}

/// Machine CPU per pod since `before` (see [`cpu_busy_ms`]).
fn cpu_per(before: Option<f64>, pods: usize) -> serde_json::Value {
    match (before, cpu_busy_ms()) {
        (Some(b), Some(a)) if pods > 0 => json!((a - b) / pods as f64),
        _ => serde_json::Value::Null,
    }
}

// ---------------------------------------------------------------- report

fn cell(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(f) if f >= 100.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.1}"),
        None => "-".into(),
    }
}

/// The runtimes of a run, in table order, with their column headings.
const COLUMNS: [(&str, &str); 4] = [
    ("crius", "crius"),
    ("crius-nri-off", "crius, NRI off"),
    ("containerd", "containerd 1.6"),
    ("runc", "runc floor"),
];

fn table(results: &serde_json::Value, o: &Options) -> String {
    // crius with NRI off only when it ran (`--only ...,crius-nri-off`).
    let (cols, heads): (Vec<&str>, Vec<&str>) = COLUMNS
        .iter()
        .filter(|(c, _)| *c != "crius-nri-off" || results.get(c).is_some())
        .copied()
        .unzip();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let lat = [
        (
            "start_sequential",
            format!("pod start, {} sequential", o.pods),
        ),
        (
            "start_concurrent",
            format!("pod start, {} at {}-way", o.pods, o.concurrency),
        ),
        (
            "lifecycle_sequential",
            format!("lifecycle, {} sequential", o.pods),
        ),
        (
            "lifecycle_concurrent",
            format!("lifecycle, {} at {}-way", o.pods, o.concurrency),
        ),
        ("exec_sync", format!("ExecSync x{}", o.execs)),
    ];
    for (key, label) in lat {
        for (p, name) in [("p50_ms", "p50"), ("p95_ms", "p95"), ("max_ms", "max")] {
            if key == "exec_sync" && p == "max_ms" {
                continue;
            }
            rows.push((
                format!("{label} {name} (ms)"),
                cols.iter().map(|c| cell(&results[c][key][p])).collect(),
            ));
        }
        rows.push((
            format!("{label} failures"),
            cols.iter()
                .map(|c| {
                    results[c][key]["failures"]
                        .as_u64()
                        .map_or("-".into(), |f| f.to_string())
                })
                .collect(),
        ));
    }
    for (key, label) in [
        ("cpu_ms_per_lifecycle_sequential", "sequential".to_string()),
        (
            "cpu_ms_per_lifecycle_concurrent",
            format!("{}-way", o.concurrency),
        ),
    ] {
        rows.push((
            format!("machine CPU per lifecycle, {label} (ms)"),
            cols.iter().map(|c| cell(&results[c][key])).collect(),
        ));
    }
    for step in [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ] {
        rows.push((
            format!("  {step} p50 in sequential lifecycles (ms)"),
            cols.iter()
                .map(|c| cell(&results[c]["lifecycle_sequential_steps"][step]["p50_ms"]))
                .collect(),
        ));
    }
    let all = format!("{} pods", o.pods);
    let mem = [
        (
            "memory_idle",
            "daemon_rss_mib",
            "daemon RSS idle (MiB)".to_string(),
        ),
        (
            "memory_10",
            "daemon_rss_mib",
            "daemon RSS, 10 pods (MiB)".into(),
        ),
        (
            "memory_50",
            "daemon_rss_mib",
            format!("daemon RSS, {all} (MiB)"),
        ),
        (
            "memory_50",
            "daemon_pss_mib",
            format!("daemon PSS, {all} (MiB)"),
        ),
        (
            "memory_50",
            "shim_rss_mib_mean",
            format!("shim RSS per pod, {all} (MiB)"),
        ),
        (
            "memory_50",
            "shim_pss_mib_mean",
            format!("shim PSS per pod, {all} (MiB)"),
        ),
        (
            "memory_50",
            "runtime_pss_mib_per_pod",
            format!("(daemon+shims PSS)/pod, {all} (MiB)"),
        ),
    ];
    for (k, f, label) in mem {
        rows.push((
            label,
            cols.iter().map(|c| cell(&results[c][k][f])).collect(),
        ));
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    let line = |label: &str, cells: &[&str]| {
        let mut l = format!("| {label:w$} |");
        for (c, h) in cells.iter().zip(&heads) {
            l.push_str(&format!(" {c:>0$} |", h.len().max(10)));
        }
        l.push('\n');
        l
    };
    let mut s = line("", &heads);
    s.push_str(&format!("|{}|", "-".repeat(w + 2)));
    for h in &heads {
        s.push_str(&format!("{}|", "-".repeat(h.len().max(10) + 2)));
    }
    s.push('\n');
    for (label, v) in rows {
        let cells: Vec<&str> = v.iter().map(String::as_str).collect();
        s.push_str(&line(&label, &cells));
    }
    s
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("crius-bench: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let o = options()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (it runs container runtimes)");
    }
    let criusd = std::fs::canonicalize(&o.criusd).with_context(|| {
        format!(
            "{} (build it with cargo build --release)",
            o.criusd.display()
        )
    })?;
    let dir = o.base.join(format!("crius-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup {
        dir: dir.clone(),
        netns_before: netns_names(),
    };
    let network = net::Network::new(&dir)?;
    let registry = registry::Registry::start(&dir.join("registry"))?;
    let layer = registry::busybox_layer()?;
    registry.push_image(
        "pause",
        "bench",
        &layer,
        json!({"Entrypoint": ["/bin/busybox", "sleep", "2147483647"], "User": "65535:65535", "WorkingDir": "/"}),
    )?;
    registry.push_image(
        "busybox",
        "bench",
        &layer,
        json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}),
    )?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("bench: load average before: {}", load_before.trim());
    let t0 = Instant::now();
    let mut results = serde_json::Map::new();
    // In the order asked for (`--only crius-nri-off,crius` runs NRI off first).
    let daemons = o
        .only
        .iter()
        .map(String::as_str)
        .filter(|n| ["crius", "crius-nri-off", "containerd"].contains(n));
    for name in daemons {
        // (Short: criusd's state directory must stay within 40 bytes.)
        let sub = dir.join(if name == "crius-nri-off" {
            "nonri"
        } else {
            name
        });
        let quiet_wait = wait_quiet().await;
        tmpfs(&sub.join("state"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let metrics = format!("127.0.0.1:{port}");
        let (daemon, metrics) = match name {
            "crius" | "crius-nri-off" => (
                Daemon::crius(
                    &sub,
                    &criusd,
                    &registry.addr,
                    &network.conf_dir,
                    &metrics,
                    name == "crius",
                    !o.pause,
                )?,
                Some(metrics.as_str()),
            ),
            _ => (
                Daemon::containerd(&sub, &registry.addr, &network.conf_dir)?,
                None,
            ),
        };
        let r = if o.scale {
            scale::bench_scale(name, &daemon, &sub, &registry.addr, &o).await
        } else {
            bench_cri(name, &daemon, &sub, &registry.addr, &o, metrics).await
        };
        let r = r.with_context(|| format!("{name}; daemon log:\n{}", daemon.log_tail()))?;
        drop(daemon);
        kill_below(&sub);
        unmount_below(&sub);
        results.insert(name.into(), with_quiet_wait(r, quiet_wait));
    }
    if o.only.iter().any(|x| x == "runc") {
        let quiet_wait = wait_quiet().await;
        let r = bench_runc(&dir.join("runc"), &layer, &o).await?;
        results.insert("runc".into(), with_quiet_wait(r, quiet_wait));
    }
    let results = serde_json::Value::Object(results);
    let text = if o.scale {
        scale::table(&results)
    } else {
        table(&results, &o)
    };
    println!("{text}");
    let report = json!({
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "loadavg_before": load_before.trim(),
            "loadavg_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        },
        "options": {
            "pods": o.pods,
            "concurrency": o.concurrency,
            "execs": o.execs,
            "seccomp": if o.seccomp == k8s_cri::v1::security_profile::ProfileType::Unconfined as i32 {
                "unconfined"
            } else {
                "runtime-default"
            },
            "share_pid": o.share_pid,
            "pid_holder": !o.pause,
            "scale": o.scale.then(|| json!({
                "levels": o.levels,
                "calls": o.calls,
                "idle_secs": o.idle_secs,
                "poll_secs": o.poll_secs,
            })),
        },
        "duration_s": t0.elapsed().as_secs_f64(),
        "results": results,
        "pull": "see `cargo xtask bench pull`",
        "mode": if o.scale { "scale" } else { "pods" },
    });
    if let Some(parent) = o.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&o.out, serde_json::to_vec_pretty(&report)?)?;
    eprintln!(
        "bench: wrote {} ({:.0} s)",
        o.out.display(),
        t0.elapsed().as_secs_f64()
    );
    drop(registry);
    drop(network);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Samples;

    fn options() -> super::Options {
        super::Options {
            criusd: "criusd".into(),
            out: "out.json".into(),
            pods: 5,
            concurrency: 2,
            execs: 3,
            only: Vec::new(),
            seccomp: 0,
            share_pid: false,
            pause: false,
            base: "/tmp".into(),
            scale: false,
            levels: Vec::new(),
            calls: 1,
            idle_secs: 1,
            poll_secs: 1,
        }
    }

    #[test]
    fn table_has_a_column_per_runtime_that_ran() {
        let (crius, containerd) = (serde_json::json!({}), serde_json::json!({}));
        // (results, headings expected, heading not expected)
        let cases = [
            (
                serde_json::json!({"crius": crius, "containerd": containerd}),
                vec!["crius", "containerd 1.6", "runc floor"],
                Some("NRI off"),
            ),
            (
                serde_json::json!({"crius": crius, "crius-nri-off": {}, "containerd": containerd}),
                vec!["crius", "crius, NRI off", "containerd 1.6", "runc floor"],
                None,
            ),
        ];
        for (results, heads, absent) in cases {
            let t = super::table(&results, &options());
            let lines: Vec<&str> = t.lines().collect();
            let mut at = 0;
            for h in &heads {
                let i = lines[0][at..]
                    .find(h)
                    .unwrap_or_else(|| panic!("{h} in {}", lines[0]));
                at += i + h.len();
            }
            if let Some(a) = absent {
                assert!(!lines[0].contains(a), "{}", lines[0]);
            }
            // Every row has one cell per runtime.
            for l in &lines {
                assert_eq!(l.matches('|').count(), heads.len() + 2, "{l}");
            }
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = Samples {
            ms: (1..=100).rev().map(f64::from).collect(),
            ..Default::default()
        };
        assert_eq!(s.pct(50.0), Some(50.0));
        assert_eq!(s.pct(95.0), Some(95.0));
        assert_eq!(s.pct(100.0), Some(100.0));
        let one = Samples {
            ms: vec![7.0],
            ..Default::default()
        };
        assert_eq!(one.pct(50.0), Some(7.0));
        assert_eq!(Samples::default().pct(50.0), None);
    }

    #[test]
    fn merging_keeps_the_first_error() {
        let mut a = Samples {
            ms: vec![1.0],
            failures: 1,
            first_error: Some("first".into()),
        };
        a.merge(Samples {
            ms: vec![2.0],
            failures: 2,
            first_error: Some("second".into()),
        });
        assert_eq!(a.ms, vec![1.0, 2.0]);
        assert_eq!(a.failures, 3);
        assert_eq!(a.first_error.as_deref(), Some("first"));
    }
}
