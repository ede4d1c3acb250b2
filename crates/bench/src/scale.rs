//! `crius-bench --scale` (`cargo xtask bench scale`): the node-scale costs
//! of a runtime that kubelet polls. crius and containerd 1.6 get the same
//! pod shape (the one of the main benchmark); the node is brought to each
//! level of running pods in turn, and at each level the listing, stats and
//! status calls are timed, the runtime's CPU is measured idle and under
//! kubelet-like polling, and its memory is read. Then every pod is torn
//! down and what is left is counted.

use super::{memory, pids, shape, shims, Options, Samples};
use crate::cri::{bounded, Cri, Daemon};
use anyhow::Result;
use k8s_cri::v1::{
    ImageFsInfoRequest, ListContainerStatsRequest, ListContainersRequest, ListPodSandboxRequest,
    ListPodSandboxStatsRequest, PodSandboxStatusRequest, StatusRequest,
};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// The node sizes measured, capped by `--pods`.
pub const LEVELS: [usize; 3] = [50, 100, 200];

/// The levels to measure: [`LEVELS`] up to `cap`, or `cap` alone when it
/// is below all of them.
pub fn levels(cap: usize) -> Vec<usize> {
    let l: Vec<usize> = LEVELS.iter().copied().filter(|&n| n <= cap).collect();
    if l.is_empty() {
        vec![cap]
    } else {
        l
    }
}

/// Clock ticks (user + system, own and of reaped children) of a process.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state is field 3, so utime (14) .. cstime (17) are at 11..15 here.
    (11..15).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// The runtime's processes: the daemon and the shims of its pods.
fn runtime_pids(daemon: u32, dir: &Path) -> Vec<u32> {
    let mut p = shims(dir);
    p.push(daemon);
    p
}

/// CPU ticks of `pids` now, by pid.
fn snapshot(pids: &[u32]) -> Vec<(u32, u64)> {
    pids.iter()
        .filter_map(|&p| ticks(p).map(|t| (p, t)))
        .collect()
}

/// Millicores the processes of `before` used since then, over `wall`.
fn millicores(before: &[(u32, u64)], wall: Duration) -> f64 {
    let used: u64 = before
        .iter()
        .filter_map(|&(p, t0)| ticks(p).map(|t1| t1.saturating_sub(t0)))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    used as f64 / hz * 1000.0 / wall.as_secs_f64()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Times `n` sequential calls of `op(i)`.
async fn time<T, F, Fut>(n: usize, op: F) -> Samples
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut s = Samples::default();
    for i in 0..n {
        let t0 = Instant::now();
        match op(i).await {
            Ok(_) => s.ms.push(t0.elapsed().as_secs_f64() * 1000.0),
            Err(e) => {
                s.failures += 1;
                s.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    s
}

/// What kubelet asks of a runtime, on its periods: the PLEG relist
/// (ListPodSandbox and ListContainers) every second, Status every 5 s, and
/// the stats (ListPodSandboxStats, ListContainerStats, ImageFsInfo) every
/// 10 s. Returns the number of failed calls.
async fn kubelet_polling(cri: &Cri, secs: u64) -> usize {
    let (mut rt, mut img) = (cri.runtime(), cri.images());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    for i in 0..secs {
        tick.tick().await;
        let mut ok = bounded(
            "ListPodSandbox",
            rt.list_pod_sandbox(ListPodSandboxRequest::default()),
        )
        .await
        .is_ok();
        ok &= bounded(
            "ListContainers",
            rt.list_containers(ListContainersRequest::default()),
        )
        .await
        .is_ok();
        if i % 5 == 0 {
            ok &= bounded("Status", rt.status(StatusRequest { verbose: false }))
                .await
                .is_ok();
        }
        if i % 10 == 0 {
            ok &= bounded(
                "ListPodSandboxStats",
                rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()),
            )
            .await
            .is_ok();
            ok &= bounded(
                "ListContainerStats",
                rt.list_container_stats(ListContainerStatsRequest::default()),
            )
            .await
            .is_ok();
            ok &= bounded("ImageFsInfo", img.image_fs_info(ImageFsInfoRequest {}))
                .await
                .is_ok();
        }
        failures += usize::from(!ok);
    }
    // The last period runs to its end.
    tick.tick().await;
    failures
}

/// One level: the calls timed, CPU idle and polled, memory.
async fn measure(
    cri: &Cri,
    daemon: &Daemon,
    dir: &Path,
    pods: &[(String, String)],
    o: &Options,
) -> serde_json::Value {
    let rt = cri.runtime();
    let img = cri.images();
    let n = o.calls;
    let mut calls = serde_json::Map::new();
    macro_rules! timed {
        ($name:literal, $client:ident, $method:ident, $req:expr) => {{
            let c = $client.clone();
            let s = time(n, |_| {
                let mut c = c.clone();
                async move { bounded($name, c.$method($req)).await }
            })
            .await;
            calls.insert($name.to_string(), s.json_summary());
        }};
    }
    timed!(
        "ListPodSandbox",
        rt,
        list_pod_sandbox,
        ListPodSandboxRequest::default()
    );
    timed!(
        "ListContainers",
        rt,
        list_containers,
        ListContainersRequest::default()
    );
    timed!(
        "ListContainerStats",
        rt,
        list_container_stats,
        ListContainerStatsRequest::default()
    );
    timed!(
        "ListPodSandboxStats",
        rt,
        list_pod_sandbox_stats,
        ListPodSandboxStatsRequest::default()
    );
    timed!("ImageFsInfo", img, image_fs_info, ImageFsInfoRequest {});
    let s = time(n, |i| {
        let mut c = rt.clone();
        let id = pods[i % pods.len()].0.clone();
        async move {
            let req = PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            };
            bounded("PodSandboxStatus", c.pod_sandbox_status(req)).await
        }
    })
    .await;
    calls.insert("PodSandboxStatus verbose".into(), s.json_summary());

    let procs = runtime_pids(daemon.pid(), dir);
    let load_idle = loadavg();
    let t0 = Instant::now();
    let before = snapshot(&procs);
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    let idle = millicores(&before, t0.elapsed());

    let load_poll = loadavg();
    let t0 = Instant::now();
    let before = snapshot(&procs);
    let poll_failures = kubelet_polling(cri, o.poll_secs).await;
    let polled = millicores(&before, t0.elapsed());
    json!({
        "pods": pods.len(),
        "calls": calls,
        "cpu_idle_millicores": idle,
        "cpu_idle_secs": o.idle_secs,
        "loadavg_idle": load_idle,
        "cpu_polling_millicores": polled,
        "cpu_polling_secs": o.poll_secs,
        "polling_failures": poll_failures,
        "loadavg_polling": load_poll,
        "processes": procs.len(),
        "memory": memory(daemon.pid(), dir, pods.len()),
    })
}

/// Mounts whose target is below `dir`.
fn mounts_below(dir: &Path) -> usize {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&d))
        .count()
}

/// Cgroups of containers left below the pods' cgroup parents (the
/// parents themselves are kubelet's to remove, as here the bench's), in
/// any hierarchy.
fn cgroups_below(tag: &str) -> usize {
    fn count(p: &Path, depth: usize) -> usize {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| usize::from(depth >= 1) + count(&e.path(), depth + 1))
                    .sum()
            })
            .unwrap_or(0)
    }
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|e| count(&e.path().join("crius-bench").join(tag), 0))
                .sum()
        })
        .unwrap_or(0)
}

/// Processes (other than the daemon and this one) naming `dir`.
fn processes_below(dir: &Path, daemon: u32) -> usize {
    let needle = dir.display().to_string();
    let me = std::process::id();
    pids()
        .into_iter()
        .filter(|&p| p != me && p != daemon && super::mentions(p, &needle))
        .count()
}

/// The scale measurement on one runtime.
pub async fn bench_scale(
    name: &str,
    daemon: &Daemon,
    dir: &Path,
    reg: &str,
    o: &Options,
) -> Result<serde_json::Value> {
    let logs = dir.join("logs");
    let cri = Cri::new(&daemon.socket, reg, &logs, name, o.seccomp, o.share_pid).await?;
    eprintln!("bench scale: {name}: pulling the images");
    cri.pull().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mounts_before = mounts_below(dir);
    let netns_before = super::netns_names().len();
    let empty = measure_empty(&cri, daemon, dir, o).await;

    let mut levels = Vec::new();
    let mut pods: Vec<(String, String)> = Vec::new();
    for &level in &o.levels {
        let from = pods.len();
        eprintln!(
            "bench scale: {name}: {from} -> {level} pods ({} at a time; load {})",
            o.concurrency,
            loadavg()
        );
        let t0 = Instant::now();
        let cri2 = cri.clone();
        let (starts, more) = shape(from..level, o.concurrency, move |i| {
            let cri = cri2.clone();
            async move { cri.start_pod(&format!("n{i}")).await }
        })
        .await;
        let up = t0.elapsed().as_secs_f64();
        pods.extend(more);
        if pods.is_empty() {
            anyhow::bail!("no pod started: {}", starts.first_error.unwrap_or_default());
        }
        // Let the start-up work (and its stats refreshes) settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        eprintln!("bench scale: {name}: measuring at {} pods", pods.len());
        let mut m = measure(&cri, daemon, dir, &pods, o).await;
        m["bring_up_s"] = json!(up);
        m["bring_up"] = starts.json_summary();
        levels.push(m);
    }

    eprintln!("bench scale: {name}: tearing {} pods down", pods.len());
    let n = pods.len();
    let t0 = Instant::now();
    let cri2 = cri.clone();
    let ids: std::sync::Arc<Vec<String>> =
        std::sync::Arc::new(pods.into_iter().map(|p| p.0).collect());
    let (removals, _) = shape(0..n, o.concurrency, move |i| {
        let (cri, ids) = (cri2.clone(), ids.clone());
        async move { cri.remove_pod(&ids[i]).await }
    })
    .await;
    let down = t0.elapsed().as_secs_f64();
    // Shims exit on their own after the last removal.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !shims(dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rt = cri.runtime();
    let listed_pods = bounded(
        "ListPodSandbox",
        rt.list_pod_sandbox(ListPodSandboxRequest::default()),
    )
    .await
    .map(|r| r.items.len())
    .ok();
    let listed_ctrs = bounded(
        "ListContainers",
        rt.list_containers(ListContainersRequest::default()),
    )
    .await
    .map(|r| r.containers.len())
    .ok();
    let left = json!({
        "pods_listed": listed_pods,
        "containers_listed": listed_ctrs,
        "shims": shims(dir).len(),
        "processes_naming_dir": processes_below(dir, daemon.pid()),
        "mounts": mounts_below(dir).saturating_sub(mounts_before),
        "cgroups": cgroups_below(name),
    });
    let clean = left
        .as_object()
        .is_some_and(|m| m.values().all(|v| v.as_u64() == Some(0)));
    // Machine-wide (other users of the machine add and remove theirs), so
    // reported but not part of `clean`.
    let netns_new = super::netns_names().len().saturating_sub(netns_before);
    Ok(json!({
        "empty": empty,
        "levels": levels,
        "teardown_s": down,
        "teardown": removals.json_summary(),
        "left_after_teardown": left,
        "clean": clean,
        "netns_new_in_run_netns_machine_wide": netns_new,
    }))
}

/// CPU idle with no pod (the floor of the daemon alone).
async fn measure_empty(cri: &Cri, daemon: &Daemon, dir: &Path, o: &Options) -> serde_json::Value {
    let _ = cri;
    let procs = runtime_pids(daemon.pid(), dir);
    let load = loadavg();
    let t0 = Instant::now();
    let before = snapshot(&procs);
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    json!({
        "cpu_idle_millicores": millicores(&before, t0.elapsed()),
        "loadavg": load,
        "memory": memory(daemon.pid(), dir, 0),
    })
}

fn cell(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(f) if f >= 100.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.1}"),
        None => "-".into(),
    }
}

/// The Markdown table of a scale run: one row per measure and level.
pub fn table(results: &serde_json::Value) -> String {
    let cols = ["crius", "containerd"];
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let levels = |c: &str| results[c]["levels"].as_array().cloned().unwrap_or_default();
    let n = cols.iter().map(|c| levels(c).len()).max().unwrap_or(0);
    rows.push((
        "idle CPU, no pods (millicores)".into(),
        cols.iter()
            .map(|c| cell(&results[c]["empty"]["cpu_idle_millicores"]))
            .collect(),
    ));
    for i in 0..n {
        let at = |c: &str| levels(c).get(i).cloned().unwrap_or_default();
        let pods = cols
            .iter()
            .find_map(|c| at(c)["pods"].as_u64())
            .unwrap_or(0);
        // One row: `a` (and ` / b` when given) of each runtime's level.
        let row = |label: String, a: &[&str], b: Option<&[&str]>| {
            let get = |l: &serde_json::Value, path: &[&str]| {
                path.iter().fold(l.clone(), |v, k| v[*k].clone())
            };
            let v = cols
                .iter()
                .map(|c| {
                    let l = at(c);
                    match b {
                        Some(b) => format!("{} / {}", cell(&get(&l, a)), cell(&get(&l, b))),
                        None => cell(&get(&l, a)),
                    }
                })
                .collect();
            (label, v)
        };
        for call in [
            "ListPodSandbox",
            "ListContainers",
            "ListContainerStats",
            "ListPodSandboxStats",
            "ImageFsInfo",
            "PodSandboxStatus verbose",
        ] {
            rows.push(row(
                format!("{pods} pods: {call} p50 / p95 (ms)"),
                &["calls", call, "p50_ms"],
                Some(&["calls", call, "p95_ms"]),
            ));
        }
        rows.push(row(
            format!("{pods} pods: runtime CPU idle (millicores)"),
            &["cpu_idle_millicores"],
            None,
        ));
        rows.push(row(
            format!("{pods} pods: runtime CPU, kubelet-like polling (millicores)"),
            &["cpu_polling_millicores"],
            None,
        ));
        rows.push(row(
            format!("{pods} pods: daemon RSS / PSS (MiB)"),
            &["memory", "daemon_rss_mib"],
            Some(&["memory", "daemon_pss_mib"]),
        ));
        rows.push(row(
            format!("{pods} pods: shim PSS per pod (MiB)"),
            &["memory", "shim_pss_mib_mean"],
            None,
        ));
        rows.push(row(
            format!("{pods} pods: bring-up from previous level (s)"),
            &["bring_up_s"],
            None,
        ));
    }
    rows.push((
        "teardown of all pods (s)".into(),
        cols.iter()
            .map(|c| cell(&results[c]["teardown_s"]))
            .collect(),
    ));
    rows.push((
        "nothing left after teardown".into(),
        cols.iter()
            .map(|c| match results[c]["clean"].as_bool() {
                Some(b) => b.to_string(),
                None => "-".into(),
            })
            .collect(),
    ));
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    let mut s = format!(
        "| {:w$} | {:>13} | {:>14} |\n",
        "", "crius", "containerd 1.6"
    );
    s.push_str(&format!(
        "|{}|{}|{}|\n",
        "-".repeat(w + 2),
        "-".repeat(15),
        "-".repeat(16)
    ));
    for (label, v) in rows {
        s.push_str(&format!("| {label:w$} | {:>13} | {:>14} |\n", v[0], v[1]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_capped() {
        for (cap, want) in [
            (200, vec![50, 100, 200]),
            (500, vec![50, 100, 200]),
            (150, vec![50, 100]),
            (100, vec![50, 100]),
            (50, vec![50]),
            (20, vec![20]),
        ] {
            assert_eq!(levels(cap), want, "cap {cap}");
        }
    }

    #[test]
    fn own_cpu_ticks_are_read() {
        // Burn some CPU, then our own ticks are positive.
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(ticks(std::process::id()).is_some_and(|t| t > 0));
        assert_eq!(ticks(u32::MAX), None);
    }
}
