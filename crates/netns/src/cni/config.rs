//! Discovery and parsing of CNI network configuration files.
//!
//! The rules follow libcni as kubelet, containerd and CRI-O use it: files with
//! the extensions `.conf`, `.conflist` and `.json` are considered in lexical
//! order of their names; a `.conflist` holds a named list of plugins, the other
//! two hold a single plugin configuration which is wrapped into a one-element
//! list. The first file that parses into a valid list is the pod network.

use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// File name extensions that hold CNI network configuration.
pub const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Errors met while looking for or validating the CNI network configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration directory could not be read.
    #[error("cannot read CNI config directory {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No usable network configuration was found.
    #[error("no network config found in {dir}{}", skipped_suffix(.skipped))]
    NoConfig {
        /// The directory searched.
        dir: PathBuf,
        /// Files that were present but unusable, with the reason.
        skipped: Vec<(PathBuf, String)>,
    },
    /// A single file is not a valid network configuration.
    #[error("invalid CNI config {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Some plugins named by the network are not installed.
    #[error(
        "CNI network {network:?} needs plugin(s) {} not found in {}",
        missing.join(", "),
        display_dirs(bin_dirs)
    )]
    MissingPlugins {
        /// The network name.
        network: String,
        /// The plugin types that have no executable.
        missing: Vec<String>,
        /// The directories searched.
        bin_dirs: Vec<PathBuf>,
    },
}

fn skipped_suffix(skipped: &[(PathBuf, String)]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = skipped
        .iter()
        .map(|(p, r)| format!("{}: {}", p.display(), r))
        .collect();
    format!(" (skipped {})", parts.join("; "))
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    let parts: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// One plugin entry of a network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The plugin's `type`, which is also the name of its executable.
    pub plugin_type: String,
    /// The full JSON object of this plugin, as written in the file.
    pub raw: Value,
}

/// A parsed network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The file the list came from.
    pub path: PathBuf,
    /// The network name.
    pub name: String,
    /// The CNI spec version the file declares.
    pub cni_version: String,
    /// Whether the list disables the CHECK verb.
    pub disable_check: bool,
    /// The plugins, in execution order for ADD.
    pub plugins: Vec<PluginConfig>,
}

impl fmt::Display for NetworkConfigList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types: Vec<&str> = self
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        write!(
            f,
            "{} ({}, cniVersion {}, plugins {})",
            self.name,
            self.path.display(),
            self.cni_version,
            types.join(",")
        )
    }
}

impl NetworkConfigList {
    /// Parses the bytes of a configuration file. A `.conflist` must hold a
    /// list; any other extension holds a single plugin configuration.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("top level is not a JSON object".into()))?;
        let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist");
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => return Err(invalid("missing network name".into())),
            Some(_) => return Err(invalid("\"name\" is not a string".into())),
        };
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None => String::new(),
            Some(_) => return Err(invalid("\"cniVersion\" is not a string".into())),
        };
        let disable_check = obj
            .get("disableCheck")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let plugins = if is_list {
            let list = match obj.get("plugins") {
                Some(Value::Array(a)) => a,
                Some(_) => return Err(invalid("\"plugins\" is not an array".into())),
                None => return Err(invalid("missing \"plugins\" list".into())),
            };
            if list.is_empty() {
                return Err(invalid("\"plugins\" list is empty".into()));
            }
            list.iter()
                .enumerate()
                .map(|(i, p)| plugin_from(p).map_err(|r| invalid(format!("plugins[{i}]: {r}"))))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![plugin_from(&value).map_err(invalid)?]
        };
        Ok(NetworkConfigList {
            path: path.to_path_buf(),
            name,
            cni_version,
            disable_check,
            plugins,
        })
    }

    /// Reads and parses one configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &bytes)
    }
}

fn plugin_from(value: &Value) -> Result<PluginConfig, String> {
    let obj = value.as_object().ok_or("plugin entry is not an object")?;
    match obj.get("type") {
        Some(Value::String(t)) if is_valid_plugin_type(t) => Ok(PluginConfig {
            plugin_type: t.clone(),
            raw: value.clone(),
        }),
        Some(Value::String(t)) => Err(format!("invalid plugin type {t:?}")),
        Some(_) => Err("\"type\" is not a string".into()),
        None => Err("missing plugin \"type\"".into()),
    }
}

/// A plugin type names an executable in a bin dir; it must be a plain file name.
fn is_valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && t != "." && t != ".." && !t.contains('/') && !t.contains('\0')
}

/// Lists the configuration files of `dir` in the order libcni considers them.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Finds the pod network: the first file of `dir`, in lexical order, that
/// parses into a valid network configuration list. Invalid files are skipped
/// with a warning and named in the error when nothing valid is found.
pub fn load_default_network(dir: &Path) -> Result<NetworkConfigList, ConfigError> {
    let mut skipped = Vec::new();
    for path in config_files(dir)? {
        match NetworkConfigList::from_file(&path) {
            Ok(list) => return Ok(list),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping CNI config");
                let reason = match e {
                    ConfigError::Invalid { reason, .. } => reason,
                    other => other.to_string(),
                };
                skipped.push((path, reason));
            }
        }
    }
    Err(ConfigError::NoConfig {
        dir: dir.to_path_buf(),
        skipped,
    })
}

/// Finds the executable for a plugin type in the bin dirs, first match wins.
pub fn find_plugin(bin_dirs: &[PathBuf], plugin_type: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if !is_valid_plugin_type(plugin_type) {
        return None;
    }
    bin_dirs.iter().map(|d| d.join(plugin_type)).find(|p| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Checks that every plugin of the network has an executable in the bin dirs
/// (but `loopback` when `builtin_loopback` and the caller does it in-process).
pub fn check_plugins(
    list: &NetworkConfigList,
    bin_dirs: &[PathBuf],
    builtin_loopback: bool,
) -> Result<(), ConfigError> {
    let mut missing: Vec<String> = Vec::new();
    for p in &list.plugins {
        if builtin_loopback && super::loopback::handles(p, &list.cni_version) {
            continue;
        }
        if find_plugin(bin_dirs, &p.plugin_type).is_none() && !missing.contains(&p.plugin_type) {
            missing.push(p.plugin_type.clone());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::MissingPlugins {
            network: list.name.clone(),
            missing,
            bin_dirs: bin_dirs.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"crius","plugins":[{"type":"bridge","bridge":"cr0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    const SINGLE: &str = r#"{"cniVersion":"0.4.0","name":"single","type":"bridge"}"#;

    #[test]
    fn parse_table() {
        struct Case {
            file: &'static str,
            body: &'static str,
            want: Result<(&'static str, Vec<&'static str>), &'static str>,
        }
        let cases = vec![
            Case {
                file: "10-a.conflist",
                body: LIST,
                want: Ok(("crius", vec!["bridge", "portmap"])),
            },
            Case {
                file: "10-a.conf",
                body: SINGLE,
                want: Ok(("single", vec!["bridge"])),
            },
            Case {
                file: "10-a.json",
                body: SINGLE,
                want: Ok(("single", vec!["bridge"])),
            },
            Case {
                file: "10-a.conflist",
                body: SINGLE,
                want: Err("missing \"plugins\" list"),
            },
            Case {
                file: "10-a.conflist",
                body: r#"{"name":"x","plugins":[]}"#,
                want: Err("list is empty"),
            },
            Case {
                file: "10-a.conflist",
                body: r#"{"name":"x","plugins":[{"bridge":"a"}]}"#,
                want: Err("plugins[0]: missing plugin \"type\""),
            },
            Case {
                file: "10-a.conflist",
                body: r#"{"name":"x","plugins":[{"type":"../../bin/sh"}]}"#,
                want: Err("invalid plugin type"),
            },
            Case {
                file: "10-a.conflist",
                body: r#"{"plugins":[{"type":"a"}]}"#,
                want: Err("missing network name"),
            },
            Case {
                file: "10-a.conf",
                body: r#"{"name":"x"}"#,
                want: Err("missing plugin \"type\""),
            },
            Case {
                file: "10-a.conf",
                body: "not json",
                want: Err("not valid JSON"),
            },
            Case {
                file: "10-a.conf",
                body: "[1]",
                want: Err("not a JSON object"),
            },
            Case {
                file: "10-a.conf",
                body: r#"{"name":"x","cniVersion":1,"type":"a"}"#,
                want: Err("\"cniVersion\" is not a string"),
            },
        ];
        for c in cases {
            let got = NetworkConfigList::parse(Path::new(c.file), c.body.as_bytes());
            match (got, c.want) {
                (Ok(list), Ok((name, types))) => {
                    assert_eq!(list.name, name, "{}", c.body);
                    let got_types: Vec<&str> = list
                        .plugins
                        .iter()
                        .map(|p| p.plugin_type.as_str())
                        .collect();
                    assert_eq!(got_types, types, "{}", c.body);
                }
                (Err(e), Err(want)) => {
                    assert!(e.to_string().contains(want), "{e} should contain {want}")
                }
                (got, want) => panic!("{} {}: got {got:?}, want {want:?}", c.file, c.body),
            }
        }
    }

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn first_valid_file_in_lexical_order_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "20-second.conflist", LIST);
        write(dir.path(), "05-broken.conflist", "{");
        write(dir.path(), "99-single.conf", SINGLE);
        write(dir.path(), "00-ignored.txt", SINGLE);
        let got = load_default_network(dir.path()).unwrap();
        assert_eq!(got.name, "crius");
        assert_eq!(got.path, dir.path().join("20-second.conflist"));
    }

    #[test]
    fn empty_or_missing_dir_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_default_network(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::NoConfig { .. }));
        assert!(err.to_string().contains("no network config found"), "{err}");

        write(dir.path(), "10-broken.conf", "{}");
        let err = load_default_network(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("10-broken.conf") && err.contains("missing network name"),
            "{err}"
        );

        let err = load_default_network(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, ConfigError::ReadDir { .. }), "{err}");
    }

    #[test]
    fn plugins_are_found_only_when_executable() {
        let bins = tempfile::tempdir().unwrap();
        let bin_a = bins.path().join("a");
        let bin_b = bins.path().join("b");
        std::fs::create_dir_all(&bin_a).unwrap();
        std::fs::create_dir_all(&bin_b).unwrap();
        write(&bin_a, "bridge", "#!/bin/sh\n");
        std::fs::set_permissions(bin_a.join("bridge"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        write(&bin_b, "portmap", "not executable");
        let dirs = vec![bin_a.clone(), bin_b.clone()];
        assert_eq!(find_plugin(&dirs, "bridge"), Some(bin_a.join("bridge")));
        assert_eq!(find_plugin(&dirs, "portmap"), None);
        assert_eq!(find_plugin(&dirs, "../a/bridge"), None);

        let list = NetworkConfigList::parse(Path::new("x.conflist"), LIST.as_bytes()).unwrap();
        let err = check_plugins(&list, &dirs, false).unwrap_err().to_string();
        assert!(err.contains("portmap") && !err.contains("bridge,"), "{err}");
        std::fs::set_permissions(
            bin_b.join("portmap"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        check_plugins(&list, &dirs, false).unwrap();

        // loopback needs its binary only when it is not done in-process,
        // and always with a spec older than 0.3.0.
        let with_lo = |version: &str| {
            let text = format!(
                r#"{{"cniVersion":"{version}","name":"l","plugins":[{{"type":"bridge"}},{{"type":"loopback"}}]}}"#
            );
            NetworkConfigList::parse(Path::new("l.conflist"), text.as_bytes()).unwrap()
        };
        let table = [
            ("1.0.0", true, true),
            ("1.0.0", false, false),
            ("0.3.1", true, true),
            ("0.2.0", true, false),
        ];
        for (version, builtin, ok) in table {
            let r = check_plugins(&with_lo(version), &dirs, builtin);
            assert_eq!(r.is_ok(), ok, "{version} builtin={builtin}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("loopback"), "{e}");
            }
        }
    }
}
