//! Linux capabilities of the container process.

use crate::error::{invalid, SpecError};

/// Every capability the kernel defines (up to CAP_CHECKPOINT_RESTORE).
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The default set of a container, as containerd and Docker grant it.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Normalises a CRI capability name (`net_admin`, `NET_ADMIN`, `CAP_NET_ADMIN`).
pub fn normalize(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Some(upper);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL_CAPABILITIES.contains(&full.as_str()).then_some(full)
}

/// The capabilities of the runtime itself, decoded from the `CapEff` hex
/// mask of /proc/self/status (the caller reads the file).
pub fn from_cap_eff(mask_hex: &str) -> Vec<String> {
    let mask = u64::from_str_radix(mask_hex.trim(), 16).unwrap_or(0);
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// Computes the container's capability set.
///
/// Privileged containers, and `add: ["ALL"]`, get every capability the
/// runtime holds (`available`); `drop: ["ALL"]` starts from nothing. Named
/// additions must exist and be held by the runtime.
pub fn compute(
    add: &[String],
    drop: &[String],
    privileged: bool,
    available: &[String],
    field: &str,
) -> Result<Vec<String>, SpecError> {
    let norm = |list: &[String], which: &str| -> Result<Vec<String>, SpecError> {
        list.iter()
            .map(|c| {
                normalize(c).ok_or_else(|| {
                    invalid(
                        format!("{field}.{which}"),
                        format!("unknown capability {c:?}"),
                    )
                })
            })
            .collect()
    };
    let add = norm(add, "add_capabilities")?;
    let drop = norm(drop, "drop_capabilities")?;
    if privileged {
        return Ok(available.to_vec());
    }
    let mut caps: Vec<String> = if add.iter().any(|c| c == "ALL") {
        available.to_vec()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter(|c| available.iter().any(|a| a == *c))
            .map(|c| c.to_string())
            .collect()
    };
    if drop.iter().any(|c| c == "ALL") {
        caps.clear();
    }
    for c in add.iter().filter(|c| *c != "ALL") {
        if !available.contains(c) {
            return Err(invalid(
                format!("{field}.add_capabilities"),
                format!("{c} is not held by the container runtime, so it cannot be granted"),
            ));
        }
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    caps.retain(|c| !drop.contains(c));
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn cap_eff_decoding() {
        // This VM: everything but CAP_SYS_RESOURCE (bit 24).
        let caps = from_cap_eff("000001fffeffffff");
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&"CAP_SYS_RESOURCE".to_string()));
        assert!(caps.contains(&"CAP_CHECKPOINT_RESTORE".to_string()));
        assert!(from_cap_eff("zz").is_empty());
    }

    #[test]
    fn compute_table() {
        let available = from_cap_eff("000001fffeffffff");
        let f = "config.linux.security_context.capabilities";
        let defaults: Vec<String> = v(&DEFAULT_CAPABILITIES);
        let with = |extra: &[&str]| {
            let mut d = defaults.clone();
            d.extend(v(extra));
            d
        };
        let without = |gone: &[&str]| {
            defaults
                .iter()
                .filter(|c| !gone.contains(&c.as_str()))
                .cloned()
                .collect::<Vec<_>>()
        };
        // (add, drop, privileged, want or error substring)
        let cases: Vec<(&[&str], &[&str], bool, Result<Vec<String>, &str>)> = vec![
            (&[], &[], false, Ok(defaults.clone())),
            (&["NET_ADMIN"], &[], false, Ok(with(&["CAP_NET_ADMIN"]))),
            (
                &["cap_sys_ptrace"],
                &["KILL"],
                false,
                Ok({
                    let mut w = without(&["CAP_KILL"]);
                    w.push("CAP_SYS_PTRACE".into());
                    w
                }),
            ),
            (&[], &["ALL"], false, Ok(vec![])),
            (
                &["NET_BIND_SERVICE"],
                &["ALL"],
                false,
                Ok(v(&["CAP_NET_BIND_SERVICE"])),
            ),
            (&["ALL"], &[], false, Ok(available.clone())),
            (
                &["ALL"],
                &["SYS_ADMIN"],
                false,
                Ok(available
                    .iter()
                    .filter(|c| *c != "CAP_SYS_ADMIN")
                    .cloned()
                    .collect()),
            ),
            (&[], &[], true, Ok(available.clone())),
            (
                &["SYS_RESOURCE"],
                &[],
                false,
                Err("not held by the container runtime"),
            ),
            (&["BOGUS"], &[], false, Err("add_capabilities")),
            (&[], &["BOGUS"], false, Err("drop_capabilities")),
        ];
        for (add, drop, privileged, want) in cases {
            let got = compute(&v(add), &v(drop), privileged, &available, f);
            match want {
                Ok(w) => assert_eq!(got.unwrap(), w, "add {add:?} drop {drop:?}"),
                Err(s) => assert!(
                    got.unwrap_err().to_string().contains(s),
                    "add {add:?} drop {drop:?}"
                ),
            }
        }
    }
}
