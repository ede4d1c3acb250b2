//! cgroup paths and resource limits.

use crate::error::{invalid, SpecError};
use k8s_cri::v1::LinuxContainerResources;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources};

/// How cgroups are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupDriver {
    /// Plain directories: `/kubepods/pod<uid>/<id>`.
    #[default]
    Cgroupfs,
    /// systemd slices: `kubepods-pod<uid>.slice:crius:<id>`.
    Systemd,
}

/// The scope prefix of crius containers under systemd.
pub const SYSTEMD_SCOPE_PREFIX: &str = "crius";

/// Checks a pod's cgroup parent against the driver: systemd needs a `.slice`
/// name, cgroupfs an absolute or relative path that is not a slice.
pub fn validate_parent(parent: &str, driver: CgroupDriver, field: &str) -> Result<(), SpecError> {
    if parent.is_empty() {
        return Ok(());
    }
    if parent.contains('\0') || parent.split('/').any(|c| c == "..") {
        return Err(invalid(
            field,
            format!("{parent:?} is not a valid cgroup path"),
        ));
    }
    match driver {
        CgroupDriver::Systemd => {
            let name = parent.rsplit('/').next().unwrap_or(parent);
            if !name.ends_with(".slice") || name.len() <= ".slice".len() {
                return Err(invalid(
                    field,
                    format!(
                        "{parent:?}: the systemd cgroup driver needs a parent ending in .slice"
                    ),
                ));
            }
        }
        CgroupDriver::Cgroupfs => {
            if parent.ends_with(".slice") {
                return Err(invalid(
                    field,
                    format!("{parent:?} is a systemd slice but the cgroup driver is cgroupfs"),
                ));
            }
        }
    }
    Ok(())
}

/// The OCI `cgroupsPath` of a container (or pause container) with `id`
/// under the pod's cgroup `parent`.
pub fn cgroups_path(parent: &str, id: &str, driver: CgroupDriver) -> String {
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = if parent.is_empty() { "/crius" } else { parent };
            format!("{}/{}", parent.trim_end_matches('/'), id)
        }
        CgroupDriver::Systemd => {
            let slice = parent
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("system.slice");
            format!("{slice}:{SYSTEMD_SCOPE_PREFIX}:{id}")
        }
    }
}

/// The directory of a cgroup below a hierarchy's root, for reading its
/// files: a cgroupfs path as it is (made absolute), a systemd driver path
/// (`slice:prefix:name`, as [`cgroups_path`] makes it) or a bare slice name
/// (a pod's parent under the systemd driver) expanded the way systemd lays
/// units out (`a-b.slice` lives in `/a.slice/a-b.slice`; a container's
/// scope is `<prefix>-<name>.scope` in its slice). `None` when a systemd
/// name is malformed.
pub fn cgroup_dir(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split(':').collect();
    if !path.starts_with('/') && parts.len() == 3 {
        let slice = if parts[0].is_empty() {
            "system.slice"
        } else {
            parts[0]
        };
        let (prefix, name) = (parts[1], parts[2]);
        if name.is_empty() {
            return None;
        }
        let unit = if name.ends_with(".slice") {
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        let dir = expand_slice(slice)?;
        return Some(format!("{}/{unit}", dir.trim_end_matches('/')));
    }
    if path.ends_with(".slice") && !path.contains('/') {
        return expand_slice(path);
    }
    if path.starts_with('/') {
        Some(path.to_string())
    } else {
        Some(format!("/{path}"))
    }
}

/// A slice's directory: `-.slice` is the root, `a-b-c.slice` is
/// `/a.slice/a-b.slice/a-b-c.slice`. `None` for what systemd refuses (no
/// `.slice` suffix, a `/`, an empty dash-separated part).
fn expand_slice(slice: &str) -> Option<String> {
    let base = slice.strip_suffix(".slice")?;
    if slice.contains('/') {
        return None;
    }
    if base == "-" {
        return Some("/".to_string());
    }
    if base.is_empty() || base.split('-').any(str::is_empty) {
        return None;
    }
    let mut dir = String::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        prefix.push_str(part);
        dir.push('/');
        dir.push_str(&prefix);
        dir.push_str(".slice");
        prefix.push('-');
    }
    Some(dir)
}

/// What the host's cgroups can do, as far as resources are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupFeatures {
    /// Memory+swap accounting (`memory.memsw.*` on v1, `memory.swap.max` on v2).
    pub swap: bool,
    /// A hugetlb controller that runc can use.
    pub hugetlb: bool,
    /// The runtime uses the unified hierarchy (cgroup v2 only; on a hybrid
    /// host runc uses v1): containers get a cgroup namespace of their own.
    pub unified: bool,
}

impl Default for CgroupFeatures {
    fn default() -> Self {
        CgroupFeatures {
            swap: true,
            hugetlb: true,
            unified: false,
        }
    }
}

/// Translates CRI resources into the OCI `linux.resources` (without
/// devices, which the caller adds). Zero values mean "not set", as in the
/// CRI; a controller with nothing set is left out.
pub fn resources(
    r: &LinuxContainerResources,
    features: CgroupFeatures,
    field: &str,
) -> Result<LinuxResources, SpecError> {
    let mut cpu = LinuxCpu::default();
    if r.cpu_shares != 0 {
        let shares = u64::try_from(r.cpu_shares)
            .map_err(|_| invalid(format!("{field}.cpu_shares"), "must not be negative"))?;
        cpu.set_shares(Some(shares));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period != 0 {
        let period = u64::try_from(r.cpu_period)
            .map_err(|_| invalid(format!("{field}.cpu_period"), "must not be negative"))?;
        cpu.set_period(Some(period));
    }
    if !r.cpuset_cpus.is_empty() {
        validate_cpuset(&r.cpuset_cpus).map_err(|m| invalid(format!("{field}.cpuset_cpus"), m))?;
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        validate_cpuset(&r.cpuset_mems).map_err(|m| invalid(format!("{field}.cpuset_mems"), m))?;
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes != 0 {
        if r.memory_limit_in_bytes < 0 {
            return Err(invalid(
                format!("{field}.memory_limit_in_bytes"),
                "must not be negative",
            ));
        }
        memory.set_limit(Some(r.memory_limit_in_bytes));
        if features.swap {
            let swap = if r.memory_swap_limit_in_bytes != 0 {
                r.memory_swap_limit_in_bytes
            } else {
                r.memory_limit_in_bytes
            };
            if swap > 0 && swap < r.memory_limit_in_bytes {
                return Err(invalid(
                    format!("{field}.memory_swap_limit_in_bytes"),
                    "must not be lower than memory_limit_in_bytes",
                ));
            }
            memory.set_swap(Some(swap));
        }
    }
    let mut out = LinuxResources::default();
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }
    if features.hugetlb && !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let limit = i64::try_from(h.limit).map_err(|_| {
                    invalid(
                        format!("{field}.hugepage_limits[{i}].limit"),
                        format!("{} is out of range", h.limit),
                    )
                })?;
                let mut l = LinuxHugepageLimit::default();
                l.set_page_size(h.page_size.clone());
                l.set_limit(limit);
                Ok(l)
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
        out.set_hugepage_limits(Some(limits));
    }
    if !r.unified.is_empty() {
        for key in r.unified.keys() {
            if key.contains('/') || key.starts_with('.') || key.is_empty() {
                return Err(invalid(
                    format!("{field}.unified"),
                    format!("{key:?} is not a cgroup file name"),
                ));
            }
        }
        out.set_unified(Some(r.unified.clone().into_iter().collect()));
    }
    Ok(out)
}

/// Checks a cpuset list such as `0-3,7`.
pub fn validate_cpuset(s: &str) -> Result<(), String> {
    for part in s.split(',') {
        let ok = match part.split_once('-') {
            Some((a, b)) => {
                matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(x), Ok(y)) if x <= y)
            }
            None => part.parse::<u32>().is_ok(),
        };
        if !ok {
            return Err(format!("{s:?} is not a cpu list such as 0-3,7"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn cgroup_dirs_of_both_drivers() {
        // (path, directory below the hierarchy root)
        let cases = [
            ("/crius/c1", Some("/crius/c1")),
            ("kubepods/besteffort/pod1/c1", Some("/kubepods/besteffort/pod1/c1")),
            ("system.slice:crius:c1", Some("/system.slice/crius-c1.scope")),
            (":crius:c1", Some("/system.slice/crius-c1.scope")),
            (
                "kubepods-besteffort-pod1.slice:crius:c1",
                Some("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/crius-c1.scope"),
            ),
            ("-.slice:crius:c1", Some("/crius-c1.scope")),
            ("system.slice::c1", Some("/system.slice/c1.scope")),
            ("system.slice:crius:inner.slice", Some("/system.slice/inner.slice")),
            ("kubepods-burstable.slice", Some("/kubepods.slice/kubepods-burstable.slice")),
            ("system.slice:crius:", None),
            ("kube--pods.slice:crius:c1", None),
            ("system:crius:c1", None),
            ("-kubepods.slice", None),
        ];
        for (path, want) in cases {
            assert_eq!(cgroup_dir(path).as_deref(), want, "{path:?}");
        }
        // What cgroups_path makes under the systemd driver has a directory.
        let path = cgroups_path("kubepods-pod1.slice", "c1", CgroupDriver::Systemd);
        assert_eq!(
            cgroup_dir(&path).as_deref(),
            Some("/kubepods.slice/kubepods-pod1.slice/crius-c1.scope")
        );
    }

    use super::*;
    use k8s_cri::v1::HugepageLimit;
    use serde_json::json;

    #[test]
    fn parents() {
        let f = "config.linux.cgroup_parent";
        let cases = [
            ("", CgroupDriver::Cgroupfs, true),
            ("/kubepods/besteffort/pod1", CgroupDriver::Cgroupfs, true),
            ("kubepods.slice", CgroupDriver::Cgroupfs, false),
            (
                "kubepods-besteffort-pod1.slice",
                CgroupDriver::Systemd,
                true,
            ),
            ("/kubepods/pod1", CgroupDriver::Systemd, false),
            (".slice", CgroupDriver::Systemd, false),
            ("/kubepods/../etc", CgroupDriver::Cgroupfs, false),
        ];
        for (p, d, ok) in cases {
            let r = validate_parent(p, d, f);
            assert_eq!(r.is_ok(), ok, "{p} {d:?}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains(f));
            }
        }
        assert_eq!(
            cgroups_path("/kubepods/pod1/", "abc", CgroupDriver::Cgroupfs),
            "/kubepods/pod1/abc"
        );
        assert_eq!(
            cgroups_path("", "abc", CgroupDriver::Cgroupfs),
            "/crius/abc"
        );
        assert_eq!(
            cgroups_path("kubepods-pod1.slice", "abc", CgroupDriver::Systemd),
            "kubepods-pod1.slice:crius:abc"
        );
    }

    #[test]
    fn resources_table() {
        let f = "config.linux.resources";
        let full = LinuxContainerResources {
            cpu_period: 100000,
            cpu_quota: 50000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let json = |r: LinuxResources| serde_json::to_value(r).unwrap();
        let got = json(resources(&full, CgroupFeatures::default(), f).unwrap());
        assert_eq!(
            got["cpu"],
            json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"})
        );
        assert_eq!(got["memory"], json!({"limit": 64 << 20, "swap": 64 << 20}));
        assert_eq!(
            got["hugepageLimits"],
            json!([{"pageSize": "2MB", "limit": 4 << 20}])
        );
        assert_eq!(got["unified"], json!({"memory.high": "1000000"}));

        let no_features = CgroupFeatures {
            swap: false,
            hugetlb: false,
            unified: false,
        };
        let got = json(resources(&full, no_features, f).unwrap());
        assert_eq!(got["memory"], json!({"limit": 64 << 20}));
        assert!(got.get("hugepageLimits").is_none());

        assert_eq!(
            json(
                resources(
                    &LinuxContainerResources::default(),
                    CgroupFeatures::default(),
                    f
                )
                .unwrap()
            ),
            json!({})
        );

        let bad: Vec<(LinuxContainerResources, &str)> = vec![
            (
                LinuxContainerResources {
                    cpu_shares: -1,
                    ..Default::default()
                },
                "cpu_shares",
            ),
            (
                LinuxContainerResources {
                    memory_limit_in_bytes: -5,
                    ..Default::default()
                },
                "memory_limit_in_bytes",
            ),
            (
                LinuxContainerResources {
                    memory_limit_in_bytes: 100,
                    memory_swap_limit_in_bytes: 50,
                    ..Default::default()
                },
                "memory_swap_limit_in_bytes",
            ),
            (
                LinuxContainerResources {
                    cpuset_cpus: "3-1".into(),
                    ..Default::default()
                },
                "cpuset_cpus",
            ),
            (
                LinuxContainerResources {
                    hugepage_limits: vec![HugepageLimit {
                        page_size: "2MB".into(),
                        limit: u64::MAX,
                    }],
                    ..Default::default()
                },
                "hugepage_limits[0].limit",
            ),
            (
                LinuxContainerResources {
                    unified: [("../x".to_string(), "1".to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                },
                "unified",
            ),
        ];
        for (r, field) in bad {
            let e = resources(&r, CgroupFeatures::default(), f)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
