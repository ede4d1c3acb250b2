//! Adjustments NRI plugins ask for when a container is created, applied to
//! its spec: environment, annotations and mounts.
//!
//! A key (or mount destination) written with a leading `-` removes what
//! the container has under that name, as in NRI; otherwise the entry is set,
//! replacing one of the same name in place or being appended.

use oci_spec::runtime::{MountBuilder, Spec};

use crate::SpecError;

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

/// One plugin's adjustment, in the order the plugin gave its entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NriAdjustment {
    /// Environment variables (`-KEY` removes `KEY`).
    pub env: Vec<(String, String)>,
    /// Annotations (`-key` removes `key`).
    pub annotations: Vec<(String, String)>,
    /// Mounts.
    pub mounts: Vec<NriMount>,
}

/// A plugin's malformed answer is no fault of the CRI client: internal.
fn invalid(what: &str, why: String) -> SpecError {
    SpecError::Internal(format!("NRI adjustment {what}: {why}"))
}

/// Applies `adj` to `spec`; a malformed entry is refused and nothing of the
/// adjustment is applied.
pub fn apply_adjustment(spec: &Spec, adj: &NriAdjustment) -> Result<Spec, SpecError> {
    let mut spec = spec.clone();
    if !adj.env.is_empty() {
        let mut process = spec.process().clone().unwrap_or_default();
        let mut env = process.env().clone().unwrap_or_default();
        for (key, value) in &adj.env {
            let (remove, name) = match key.strip_prefix('-') {
                Some(k) => (true, k),
                None => (false, key.as_str()),
            };
            if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0')
            {
                return Err(invalid("env", format!("bad variable {key:?}")));
            }
            let at = env
                .iter()
                .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == name);
            match (remove, at) {
                (true, Some(i)) => {
                    env.remove(i);
                }
                (true, None) => {}
                (false, Some(i)) => env[i] = format!("{name}={value}"),
                (false, None) => env.push(format!("{name}={value}")),
            }
        }
        process.set_env(Some(env));
        spec.set_process(Some(process));
    }
    if !adj.annotations.is_empty() {
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        for (key, value) in &adj.annotations {
            match key.strip_prefix('-') {
                Some("") => return Err(invalid("annotations", "empty key".into())),
                Some(k) => {
                    annotations.remove(k);
                }
                None if key.is_empty() => return Err(invalid("annotations", "empty key".into())),
                None => {
                    annotations.insert(key.clone(), value.clone());
                }
            }
        }
        spec.set_annotations(Some(annotations));
    }
    if !adj.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &adj.mounts {
            let (remove, dest) = match m.destination.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, m.destination.as_str()),
            };
            if !dest.starts_with('/') || dest.contains('\0') {
                return Err(invalid(
                    "mounts",
                    format!("destination {:?} is not absolute", m.destination),
                ));
            }
            let at = mounts
                .iter()
                .position(|x| x.destination().as_os_str() == dest);
            if remove {
                if let Some(i) = at {
                    mounts.remove(i);
                }
                continue;
            }
            let mut b = MountBuilder::default().destination(dest);
            if !m.kind.is_empty() {
                b = b.typ(m.kind.clone());
            }
            if !m.source.is_empty() {
                b = b.source(m.source.clone());
            }
            if !m.options.is_empty() {
                b = b.options(m.options.clone());
            }
            let mount = b.build().map_err(|e| invalid("mounts", e.to_string()))?;
            match at {
                Some(i) => mounts[i] = mount,
                None => mounts.push(mount),
            }
        }
        spec.set_mounts(Some(mounts));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Mount, ProcessBuilder, SpecBuilder};

    fn spec() -> Spec {
        let mut annotations = std::collections::HashMap::new();
        annotations.insert("keep".to_string(), "1".to_string());
        annotations.insert("gone".to_string(), "2".to_string());
        SpecBuilder::default()
            .process(
                ProcessBuilder::default()
                    .env(vec!["PATH=/bin".to_string(), "OLD=1".to_string()])
                    .build()
                    .unwrap(),
            )
            .annotations(annotations)
            .mounts(vec![
                MountBuilder::default()
                    .destination("/proc")
                    .typ("proc")
                    .source("proc")
                    .build()
                    .unwrap(),
                MountBuilder::default()
                    .destination("/data")
                    .typ("bind")
                    .source("/a")
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env() {
        let cases: &[(&[(&str, &str)], &[&str])] = &[
            (&[], &["PATH=/bin", "OLD=1"]),
            (&[("NEW", "x")], &["PATH=/bin", "OLD=1", "NEW=x"]),
            (&[("OLD", "2")], &["PATH=/bin", "OLD=2"]),
            (&[("-OLD", "")], &["PATH=/bin"]),
            (&[("-MISSING", "")], &["PATH=/bin", "OLD=1"]),
            (
                &[("A", ""), ("-A", ""), ("B", "b=c")],
                &["PATH=/bin", "OLD=1", "B=b=c"],
            ),
        ];
        for (env, want) in cases {
            let adj = NriAdjustment {
                env: kv(env),
                ..Default::default()
            };
            let got = apply_adjustment(&spec(), &adj).unwrap();
            let got = got.process().as_ref().unwrap().env().clone().unwrap();
            assert_eq!(got, *want, "{env:?}");
        }
        for bad in ["", "A=B", "-", "X\0"] {
            let adj = NriAdjustment {
                env: kv(&[(bad, "v")]),
                ..Default::default()
            };
            assert!(apply_adjustment(&spec(), &adj).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn annotations() {
        let cases: &[(&[(&str, &str)], &[(&str, &str)])] = &[
            (
                &[("new", "v")],
                &[("gone", "2"), ("keep", "1"), ("new", "v")],
            ),
            (&[("keep", "9")], &[("gone", "2"), ("keep", "9")]),
            (&[("-gone", "")], &[("keep", "1")]),
            (&[("-none", "")], &[("gone", "2"), ("keep", "1")]),
        ];
        for (ann, want) in cases {
            let adj = NriAdjustment {
                annotations: kv(ann),
                ..Default::default()
            };
            let got = apply_adjustment(&spec(), &adj).unwrap();
            let mut got: Vec<_> = got.annotations().clone().unwrap().into_iter().collect();
            got.sort();
            assert_eq!(got, kv(want), "{ann:?}");
        }
        for bad in ["", "-"] {
            let adj = NriAdjustment {
                annotations: kv(&[(bad, "v")]),
                ..Default::default()
            };
            assert!(apply_adjustment(&spec(), &adj).is_err(), "{bad:?}");
        }
    }

    fn m(dest: &str, kind: &str, source: &str, options: &[&str]) -> NriMount {
        NriMount {
            destination: dest.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn show(mounts: &[Mount]) -> Vec<String> {
        mounts
            .iter()
            .map(|x| {
                format!(
                    "{} {} {} {}",
                    x.destination().display(),
                    x.typ().clone().unwrap_or_default(),
                    x.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                    x.options().clone().unwrap_or_default().join(",")
                )
            })
            .collect()
    }

    #[test]
    fn mounts() {
        let cases: &[(Vec<NriMount>, &[&str])] = &[
            (
                vec![m("/extra", "tmpfs", "tmpfs", &["nosuid", "size=1m"])],
                &[
                    "/proc proc proc ",
                    "/data bind /a ",
                    "/extra tmpfs tmpfs nosuid,size=1m",
                ],
            ),
            (
                vec![m("/data", "bind", "/b", &["rbind", "ro"])],
                &["/proc proc proc ", "/data bind /b rbind,ro"],
            ),
            (vec![m("-/data", "", "", &[])], &["/proc proc proc "]),
            (
                vec![m("-/nothing", "", "", &[])],
                &["/proc proc proc ", "/data bind /a "],
            ),
        ];
        for (mounts, want) in cases {
            let adj = NriAdjustment {
                mounts: mounts.clone(),
                ..Default::default()
            };
            let got = apply_adjustment(&spec(), &adj).unwrap();
            assert_eq!(show(&got.mounts().clone().unwrap()), *want, "{mounts:?}");
        }
        for bad in ["relative", "", "-rel", "/a\0b"] {
            let adj = NriAdjustment {
                mounts: vec![m(bad, "bind", "/x", &[])],
                ..Default::default()
            };
            assert!(apply_adjustment(&spec(), &adj).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_adjustment_changes_nothing() {
        let s = spec();
        assert_eq!(apply_adjustment(&s, &NriAdjustment::default()).unwrap(), s);
    }
}
