//! The pure parts of a container's devices beyond building their spec
//! entries (see [`crate::container`]): the owner the devices get from the
//! security context, and which CDI (Container Device Interface) devices a
//! container asks for.
//!
//! The host I/O (walking a device directory, reading CDI spec files and
//! applying their edits) is the caller's.

use crate::container::DeviceNode;
use crate::error::{invalid, SpecError};
use k8s_cri::v1::ContainerConfig;

/// Annotations whose values name CDI devices (comma-separated), the way
/// device plugins asked for them before `CDI_devices` existed.
pub const CDI_ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The most CDI devices one container may ask for (request and annotations
/// together, duplicates counted once): the names come from the pod spec,
/// which is untrusted input.
pub const MAX_CDI_DEVICES: usize = 256;

/// A CDI device a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiRequest {
    /// The fully qualified device name, `vendor/class=name`.
    pub name: String,
    /// The request field that named it first (for error messages).
    pub field: String,
}

/// The CDI devices the container asks for: those of `cdi_devices` in
/// order, then those of the `cdi.k8s.io/*` annotations (by key), each
/// once. A name that is not fully qualified is refused, naming its field.
pub fn cdi_requests(config: &ContainerConfig) -> Result<Vec<CdiRequest>, SpecError> {
    let mut out: Vec<CdiRequest> = Vec::new();
    let mut add = |name: &str, field: String| -> Result<(), SpecError> {
        check_qualified_name(name).map_err(|m| invalid(&field, format!("{name:?}: {m}")))?;
        if out.iter().any(|r| r.name == name) {
            return Ok(());
        }
        if out.len() == MAX_CDI_DEVICES {
            return Err(invalid(
                field,
                format!("more than {MAX_CDI_DEVICES} CDI devices requested"),
            ));
        }
        out.push(CdiRequest {
            name: name.to_string(),
            field,
        });
        Ok(())
    };
    for (i, d) in config.cdi_devices.iter().enumerate() {
        add(&d.name, format!("config.cdi_devices[{i}].name"))?;
    }
    let mut keys: Vec<&String> = config
        .annotations
        .keys()
        .filter(|k| k.starts_with(CDI_ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for key in keys {
        for name in config.annotations[key].split(',') {
            add(name, format!("config.annotations[{key:?}]"))?;
        }
    }
    Ok(out)
}

/// Checks a CDI device name: `vendor/class=name`, where vendor and class
/// start with a letter, end with a letter or digit and hold letters,
/// digits, `-`, `_` and `.`; the name starts and ends with a letter or
/// digit and may also hold `:` (the CDI specification's syntax).
pub fn check_qualified_name(device: &str) -> Result<(), String> {
    let (kind, name) = device
        .split_once('=')
        .ok_or("not a qualified CDI device name (vendor/class=name)")?;
    let (vendor, class) = kind
        .split_once('/')
        .ok_or("not a qualified CDI device name (vendor/class=name): no vendor")?;
    let part = |what: &str, s: &str, first: fn(char) -> bool, extra: &str| {
        let ok = s.chars().next().is_some_and(first)
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(c));
        if ok {
            Ok(())
        } else {
            Err(format!("invalid CDI {what} {s:?}"))
        }
    };
    part("vendor", vendor, |c| c.is_ascii_alphabetic(), "")?;
    part("class", class, |c| c.is_ascii_alphabetic(), "")?;
    part("device name", name, |c| c.is_ascii_alphanumeric(), ":")
}

/// The owner that devices get with `device_ownership_from_security_context`:
/// the security context's `run_as_user` and `run_as_group`, each 0 when
/// unset, as containerd has it (the image's user does not count).
pub fn owner_from_security_context(config: &ContainerConfig) -> Result<(u32, u32), SpecError> {
    const SC: &str = "config.linux.security_context";
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let id = |v: Option<i64>, field: &str| {
        u32::try_from(v.unwrap_or(0))
            .map_err(|_| invalid(format!("{SC}.{field}"), "is not a valid id"))
    };
    Ok((
        id(
            sc.and_then(|s| s.run_as_user.map(|v| v.value)),
            "run_as_user",
        )?,
        id(
            sc.and_then(|s| s.run_as_group.map(|v| v.value)),
            "run_as_group",
        )?,
    ))
}

/// Gives every device the owner `(uid, gid)`.
pub fn set_owner(devices: &mut [DeviceNode], (uid, gid): (u32, u32)) {
    for d in devices {
        d.uid = uid;
        d.gid = gid;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{CdiDevice, Int64Value, LinuxContainerConfig, LinuxContainerSecurityContext};

    fn config(devices: &[&str], annotations: &[(&str, &str)]) -> ContainerConfig {
        ContainerConfig {
            cdi_devices: devices
                .iter()
                .map(|n| CdiDevice {
                    name: n.to_string(),
                })
                .collect(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cdi_requests_from_field_and_annotations() {
        // (cdi_devices, annotations, the names asked for, in order)
        let cases: Vec<(&[&str], &[(&str, &str)], &[&str])> = vec![
            (&[], &[], &[]),
            (&[], &[("other/x", "vendor.com/gpu=0")], &[]),
            (
                &["vendor.com/gpu=0", "vendor.com/gpu=1"],
                &[],
                &["vendor.com/gpu=0", "vendor.com/gpu=1"],
            ),
            (
                &["vendor.com/gpu=0"],
                &[
                    ("cdi.k8s.io/b", "example.com/nic=eth1"),
                    ("cdi.k8s.io/a", "vendor.com/gpu=0,vendor.com/gpu=all"),
                ],
                &[
                    "vendor.com/gpu=0",
                    "vendor.com/gpu=all",
                    "example.com/nic=eth1",
                ],
            ),
            (
                &["nvidia.com/gpu=GPU-8d3c:MIG-1"],
                &[],
                &["nvidia.com/gpu=GPU-8d3c:MIG-1"],
            ),
        ];
        for (devices, annotations, want) in cases {
            let got: Vec<String> = cdi_requests(&config(devices, annotations))
                .unwrap()
                .into_iter()
                .map(|r| r.name)
                .collect();
            assert_eq!(got, want, "{devices:?} {annotations:?}");
        }
    }

    #[test]
    fn cdi_requests_refuse_bad_names_naming_the_field() {
        // (cdi_devices, annotations, the field the error names)
        let cases: Vec<(&[&str], &[(&str, &str)], &str)> = vec![
            (&[""], &[], "config.cdi_devices[0].name"),
            (&["ok.com/a=b", "gpu0"], &[], "config.cdi_devices[1].name"),
            (&["vendor.com=gpu0"], &[], "config.cdi_devices[0].name"),
            (&["/dev/null"], &[], "config.cdi_devices[0].name"),
            (&["vendor.com/gpu="], &[], "config.cdi_devices[0].name"),
            (&["1vendor.com/gpu=0"], &[], "config.cdi_devices[0].name"),
            (&["vendor.com/gpu-=0"], &[], "config.cdi_devices[0].name"),
            (&["vendor.com/gpu=0/1"], &[], "config.cdi_devices[0].name"),
            (&["vendor.com/a/b=0"], &[], "config.cdi_devices[0].name"),
            (
                &[],
                &[("cdi.k8s.io/x", "vendor.com/gpu=0, vendor.com/gpu=1")],
                "config.annotations[\"cdi.k8s.io/x\"]",
            ),
        ];
        for (devices, annotations, field) in cases {
            let e = cdi_requests(&config(devices, annotations)).unwrap_err();
            assert!(
                matches!(&e, SpecError::InvalidArgument { field: f, .. } if f == field),
                "{devices:?} {annotations:?}: {e}"
            );
        }
    }

    #[test]
    fn cdi_requests_are_bounded() {
        let names: Vec<String> = (0..=MAX_CDI_DEVICES)
            .map(|i| format!("vendor.com/gpu={i}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            cdi_requests(&config(&refs[..MAX_CDI_DEVICES], &[]))
                .unwrap()
                .len(),
            MAX_CDI_DEVICES
        );
        let e = cdi_requests(&config(&refs, &[])).unwrap_err().to_string();
        assert!(
            e.contains(&format!("cdi_devices[{MAX_CDI_DEVICES}]")),
            "{e}"
        );
        // Duplicates count once.
        let same = vec!["vendor.com/gpu=0"; MAX_CDI_DEVICES + 10];
        assert_eq!(cdi_requests(&config(&same, &[])).unwrap().len(), 1);
    }

    #[test]
    fn owner_from_the_security_context() {
        // (run_as_user, run_as_group, owner)
        let cases: Vec<(Option<i64>, Option<i64>, Result<(u32, u32), &str>)> = vec![
            (None, None, Ok((0, 0))),
            (Some(1000), None, Ok((1000, 0))),
            (None, Some(2000), Ok((0, 2000))),
            (Some(1000), Some(2000), Ok((1000, 2000))),
            (Some(-1), None, Err("run_as_user")),
            (Some(1), Some(1 << 32), Err("run_as_group")),
        ];
        for (user, group, want) in cases {
            let c = ContainerConfig {
                linux: Some(LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        run_as_user: user.map(|value| Int64Value { value }),
                        run_as_group: group.map(|value| Int64Value { value }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let got = owner_from_security_context(&c).map_err(|e| e.to_string());
            match want {
                Ok(o) => assert_eq!(got, Ok(o), "{user:?} {group:?}"),
                Err(field) => assert!(got.unwrap_err().contains(field), "{user:?} {group:?}"),
            }
        }
        assert_eq!(
            owner_from_security_context(&ContainerConfig::default()).unwrap(),
            (0, 0)
        );
    }

    #[test]
    fn set_owner_changes_every_device() {
        let node = |path: &str| DeviceNode {
            path: path.into(),
            kind: 'c',
            major: 1,
            minor: 3,
            file_mode: 0o600,
            uid: 0,
            gid: 5,
            permissions: "rwm".into(),
        };
        let mut devices = vec![node("/dev/a"), node("/dev/b")];
        set_owner(&mut devices, (1000, 2000));
        assert!(devices.iter().all(|d| (d.uid, d.gid) == (1000, 2000)));
        assert_eq!(devices[1].path, "/dev/b");
    }
}
