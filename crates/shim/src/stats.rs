//! Container metrics read from the init process's cgroups (v1 and v2), as
//! containerd's `io.containerd.cgroups.v1.Metrics` /
//! `io.containerd.cgroups.v2.Metrics`.

use std::io;
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{MessageField, MessageFull};

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup membership of a process: `(controllers, path)` per line of
/// `/proc/PID/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            Some((
                ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

/// The directory of `pid`'s cgroup for v1 controller `ctrl`.
pub fn v1_dir(pid: i32, ctrl: &str) -> io::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for (ctrls, path) in parse_proc_cgroup(&text) {
        if ctrls.iter().any(|c| c == ctrl) {
            for mount in [
                ctrl.to_string(),
                format!("cpu,{ctrl}"),
                format!("{ctrl},cpu"),
            ] {
                let d = Path::new(CGROUP_ROOT).join(mount);
                if d.is_dir() {
                    return Ok(d.join(path.trim_start_matches('/')));
                }
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no {ctrl} cgroup for pid {pid}"),
    ))
}

/// The unified (v2) cgroup directory of `pid`, when the memory controller
/// lives there (a pure v2 host).
pub fn v2_dir(pid: i32) -> io::Result<Option<PathBuf>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let entries = parse_proc_cgroup(&text);
    if entries.iter().any(|(c, _)| !c.is_empty()) {
        return Ok(None);
    }
    Ok(entries
        .into_iter()
        .find(|(c, _)| c.is_empty())
        .map(|(_, p)| Path::new(CGROUP_ROOT).join(p.trim_start_matches('/'))))
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| {
            let s = s.trim();
            if s == "max" {
                Some(u64::MAX)
            } else {
                s.parse().ok()
            }
        })
        .unwrap_or(0)
}

/// Parses `key value` lines (memory.stat, cpu.stat, memory.events).
pub fn parse_kv(text: &str) -> Vec<(&str, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

fn kv(p: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    parse_kv(&text)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn to_any<M: MessageFull>(m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = M::descriptor().full_name().to_string();
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

/// Collects the metrics of `pid`'s cgroups.
pub fn collect(pid: i32) -> io::Result<Any> {
    if pid <= 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no init process"));
    }
    if let Some(dir) = v2_dir(pid)? {
        return Ok(to_any(&collect_v2(&dir)));
    }
    Ok(to_any(&collect_v1(pid)?))
}

fn collect_v1(pid: i32) -> io::Result<v1::Metrics> {
    let mut m = v1::Metrics::new();
    let mem = v1_dir(pid, "memory")?;
    let mut ms = v1::MemoryStat::new();
    for (k, v) in kv(&mem.join("memory.stat")) {
        match k.as_str() {
            "cache" => ms.cache = v,
            "rss" => ms.rss = v,
            "rss_huge" => ms.rss_huge = v,
            "mapped_file" => ms.mapped_file = v,
            "dirty" => ms.dirty = v,
            "writeback" => ms.writeback = v,
            "pgfault" => ms.pg_fault = v,
            "pgmajfault" => ms.pg_maj_fault = v,
            "inactive_anon" => ms.inactive_anon = v,
            "active_anon" => ms.active_anon = v,
            "inactive_file" => ms.inactive_file = v,
            "active_file" => ms.active_file = v,
            "unevictable" => ms.unevictable = v,
            "hierarchical_memory_limit" => ms.hierarchical_memory_limit = v,
            "total_cache" => ms.total_cache = v,
            "total_rss" => ms.total_rss = v,
            "total_inactive_file" => ms.total_inactive_file = v,
            "total_active_file" => ms.total_active_file = v,
            _ => {}
        }
    }
    let mut usage = v1::MemoryEntry::new();
    usage.usage = read_u64(&mem.join("memory.usage_in_bytes"));
    usage.limit = read_u64(&mem.join("memory.limit_in_bytes"));
    usage.max = read_u64(&mem.join("memory.max_usage_in_bytes"));
    usage.failcnt = read_u64(&mem.join("memory.failcnt"));
    ms.usage = MessageField::some(usage);
    m.memory = MessageField::some(ms);
    let mut oc = v1::MemoryOomControl::new();
    for (k, v) in kv(&mem.join("memory.oom_control")) {
        match k.as_str() {
            "oom_kill_disable" => oc.oom_kill_disable = v,
            "under_oom" => oc.under_oom = v,
            "oom_kill" => oc.oom_kill = v,
            _ => {}
        }
    }
    m.memory_oom_control = MessageField::some(oc);
    if let Ok(cpu) = v1_dir(pid, "cpuacct") {
        let mut u = v1::CPUUsage::new();
        u.total = read_u64(&cpu.join("cpuacct.usage"));
        u.user = read_u64(&cpu.join("cpuacct.usage_user"));
        u.kernel = read_u64(&cpu.join("cpuacct.usage_sys"));
        u.per_cpu = std::fs::read_to_string(cpu.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let mut c = v1::CPUStat::new();
        c.usage = MessageField::some(u);
        if let Ok(cd) = v1_dir(pid, "cpu") {
            let mut t = v1::Throttle::new();
            for (k, v) in kv(&cd.join("cpu.stat")) {
                match k.as_str() {
                    "nr_periods" => t.periods = v,
                    "nr_throttled" => t.throttled_periods = v,
                    "throttled_time" => t.throttled_time = v,
                    _ => {}
                }
            }
            c.throttling = MessageField::some(t);
        }
        m.cpu = MessageField::some(c);
    }
    if let Ok(p) = v1_dir(pid, "pids") {
        let mut ps = v1::PidsStat::new();
        ps.current = read_u64(&p.join("pids.current"));
        ps.limit = read_u64(&p.join("pids.max"));
        m.pids = MessageField::some(ps);
    }
    Ok(m)
}

fn collect_v2(dir: &Path) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let mut ps = v2::PidsStat::new();
    ps.current = read_u64(&dir.join("pids.current"));
    ps.limit = read_u64(&dir.join("pids.max"));
    m.pids = MessageField::some(ps);
    let mut c = v2::CPUStat::new();
    for (k, v) in kv(&dir.join("cpu.stat")) {
        match k.as_str() {
            "usage_usec" => c.usage_usec = v,
            "user_usec" => c.user_usec = v,
            "system_usec" => c.system_usec = v,
            "nr_periods" => c.nr_periods = v,
            "nr_throttled" => c.nr_throttled = v,
            "throttled_usec" => c.throttled_usec = v,
            _ => {}
        }
    }
    m.cpu = MessageField::some(c);
    let mut ms = v2::MemoryStat::new();
    for (k, v) in kv(&dir.join("memory.stat")) {
        match k.as_str() {
            "anon" => ms.anon = v,
            "file" => ms.file = v,
            "kernel_stack" => ms.kernel_stack = v,
            "slab" => ms.slab = v,
            "sock" => ms.sock = v,
            "shmem" => ms.shmem = v,
            "file_mapped" => ms.file_mapped = v,
            "file_dirty" => ms.file_dirty = v,
            "inactive_file" => ms.inactive_file = v,
            "active_file" => ms.active_file = v,
            "pgfault" => ms.pgfault = v,
            "pgmajfault" => ms.pgmajfault = v,
            _ => {}
        }
    }
    ms.usage = read_u64(&dir.join("memory.current"));
    ms.usage_limit = read_u64(&dir.join("memory.max"));
    ms.swap_usage = read_u64(&dir.join("memory.swap.current"));
    ms.swap_limit = read_u64(&dir.join("memory.swap.max"));
    m.memory = MessageField::some(ms);
    let mut ev = v2::MemoryEvents::new();
    for (k, v) in kv(&dir.join("memory.events")) {
        match k.as_str() {
            "low" => ev.low = v,
            "high" => ev.high = v,
            "max" => ev.max = v,
            "oom" => ev.oom = v,
            "oom_kill" => ev.oom_kill = v,
            _ => {}
        }
    }
    m.memory_events = MessageField::some(ev);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_table() {
        let text = "9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/u\n";
        let got = parse_proc_cgroup(text);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (vec!["name=systemd".to_string()], "/".to_string()));
        assert_eq!(got[1], (vec!["memory".to_string()], "/a/b".to_string()));
        assert_eq!(
            got[2],
            (
                vec!["cpu".to_string(), "cpuacct".to_string()],
                "/c".to_string()
            )
        );
        assert_eq!(got[3], (vec![], "/u".to_string()));
    }

    #[test]
    fn kv_table() {
        let cases: [(&str, Vec<(&str, u64)>); 3] = [
            ("", vec![]),
            (
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                vec![("oom_kill_disable", 0), ("under_oom", 0), ("oom_kill", 2)],
            ),
            ("low 0\nbad line\nmax x\n", vec![("low", 0)]),
        ];
        for (text, want) in cases {
            assert_eq!(parse_kv(text), want, "{text:?}");
        }
    }

    #[test]
    fn own_metrics() {
        // The test process has cgroups of its own: collecting must work.
        let a = collect(std::process::id() as i32).unwrap();
        assert!(
            a.type_url.starts_with("io.containerd.cgroups.v"),
            "{}",
            a.type_url
        );
        assert!(!a.value.is_empty());
    }
}
