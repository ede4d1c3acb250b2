//! Facts about the host that shape container specs, read once at start-up.

use crate::config::{CgroupDriver, Config};
use crius_spec::{caps, CgroupFeatures, HostFacts};
use std::path::Path;

/// Bit of CAP_SYS_RESOURCE in the capability masks.
const CAP_SYS_RESOURCE_BIT: u32 = 24;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The `CapEff` mask of /proc/self/status.
pub fn cap_eff(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
}

/// Gathers the host facts for the configured cgroup driver.
pub fn gather(config: &Config) -> HostFacts {
    let status = read("/proc/self/status").unwrap_or_default();
    let mask = cap_eff(&status).unwrap_or("0").to_string();
    let capabilities = caps::from_cap_eff(&mask);
    let can_lower = u64::from_str_radix(&mask, 16)
        .map(|m| m & (1 << CAP_SYS_RESOURCE_BIT) != 0)
        .unwrap_or(false);
    let oom_score_adj = read("/proc/self/oom_score_adj")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let unified_only = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cgroup_features = if unified_only {
        CgroupFeatures {
            swap: Path::new("/sys/fs/cgroup/memory.swap.max").exists()
                || read("/sys/fs/cgroup/cgroup.subtree_control")
                    .is_some_and(|s| s.contains("memory")),
            hugetlb: read("/sys/fs/cgroup/cgroup.controllers")
                .is_some_and(|s| s.contains("hugetlb")),
        }
    } else {
        CgroupFeatures {
            swap: Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            hugetlb: Path::new("/sys/fs/cgroup/hugetlb").exists(),
        }
    };
    let apparmor = read("/sys/module/apparmor/parameters/enabled").is_some_and(|s| s.trim() == "Y");
    let selinux = read("/sys/fs/selinux/enforce").is_some();
    let nofile_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1_048_576);
    HostFacts {
        capabilities,
        oom_score_adj,
        can_lower_oom_score_adj: can_lower,
        cgroup_driver: match config.cgroup_driver {
            CgroupDriver::Cgroupfs => crius_spec::CgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => crius_spec::CgroupDriver::Systemd,
        },
        cgroup_features,
        apparmor,
        selinux,
        rro_mounts: false,
        nofile_hard,
        passthrough_annotations: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_line() {
        let status = "Name:\tcriusd\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(cap_eff(status), Some("000001fffeffffff"));
        assert_eq!(cap_eff("Name: x\n"), None);
    }

    #[test]
    fn gathered_facts_match_this_process() {
        let facts = gather(&Config::default());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let mask = u64::from_str_radix(cap_eff(&status).unwrap(), 16).unwrap();
        assert_eq!(facts.capabilities.len() as u32, mask.count_ones().min(41));
        assert_eq!(facts.can_lower_oom_score_adj, mask & (1 << 24) != 0);
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(facts.oom_score_adj, own);
        assert!(facts.nofile_hard > 0);
        assert_eq!(facts.cgroup_driver, crius_spec::CgroupDriver::Cgroupfs);
    }
}
