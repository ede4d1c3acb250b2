//! The `config` entry of a verbose `Status` (`crictl info`), in the shape
//! containerd gives it, so that tools written against containerd read
//! crius's answer too: kubeadm reads `sandboxImage` and warns when it
//! differs from its own pause image; dashboards read `cni.confDir`,
//! `containerd.runtimes`, `enableCDI`.
//!
//! The keys both runtimes have are renamed to containerd's JSON names
//! (camelCase; the few containerd writes in snake_case stay so); crius's
//! own keys keep the names of crius's configuration file.

use serde_json::{Map, Value};

/// Top-level and nested keys renamed to containerd's names: (crius path,
/// containerd path), dotted.
const MOVES: &[(&str, &str)] = &[
    ("root", "rootDir"),
    ("state", "stateDir"),
    ("pause_image", "sandboxImage"),
    ("default_runtime", "containerd.defaultRuntimeName"),
    ("cni.conf_dir", "cni.confDir"),
    ("cni.bin_dirs", "cni.binDirs"),
    ("registry.config_path", "registry.configPath"),
    (
        "registry.max_concurrent_downloads",
        "maxConcurrentDownloads",
    ),
    ("cdi.enable", "enableCDI"),
    ("cdi.spec_dirs", "cdiSpecDirs"),
    ("stream.tls_cert_file", "tlsCertFile"),
    ("stream.tls_key_file", "tlsKeyFile"),
];

/// Keys of one runtime handler renamed to those of containerd's runtime
/// table (containerd spells the annotation lists with a capital).
const HANDLER_MOVES: &[(&str, &str)] = &[
    ("path", "runtimePath"),
    ("root", "runtimeRoot"),
    ("pod_annotations", "PodAnnotations"),
    ("container_annotations", "ContainerAnnotations"),
];

/// Takes the value at a dotted path out of `v`; an emptied parent object is
/// removed too.
fn take(v: &mut Map<String, Value>, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => v.remove(path),
        Some((head, rest)) => {
            let child = v.get_mut(head)?.as_object_mut()?;
            let out = take(child, rest);
            if child.is_empty() {
                v.remove(head);
            }
            out
        }
    }
}

/// Puts `value` at a dotted path of `v`, making the objects on the way.
fn put(v: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            v.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let child = v
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(m) = child {
                put(m, rest, value);
            }
        }
    }
}

fn rename(v: &mut Map<String, Value>, moves: &[(&str, &str)]) {
    for (from, to) in moves {
        if let Some(value) = take(v, from) {
            put(v, to, value);
        }
    }
}

/// The configuration (as crius serialises it) in containerd's shape.
pub fn containerd_shape(config: Value) -> Value {
    let Value::Object(mut top) = config else {
        return config;
    };
    // The handler table goes under `containerd.runtimes`, each handler's
    // keys renamed (handler names may hold dots, so not through MOVES).
    if let Some(Value::Object(handlers)) = top.remove("runtimes") {
        let renamed: Map<String, Value> = handlers
            .into_iter()
            .map(|(name, h)| match h {
                Value::Object(mut h) => {
                    rename(&mut h, HANDLER_MOVES);
                    (name, Value::Object(h))
                }
                other => (name, other),
            })
            .collect();
        put(&mut top, "containerd.runtimes", Value::Object(renamed));
    }
    rename(&mut top, MOVES);
    // containerd 2.x still reports its first plugin directory alone.
    if let Some(Value::Array(dirs)) = top.get("cni").and_then(|c| c.get("binDirs")) {
        if let Some(first) = dirs.first().cloned() {
            put(&mut top, "cni.binDir", first);
        }
    }
    Value::Object(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_keys_take_containerd_names_and_the_rest_stay() {
        // (crius's config, containerd's shape)
        let cases = [
            (
                json!({
                    "root": "/var/lib/crius", "state": "/run/crius", "socket": "/run/crius/crius.sock",
                    "pause_image": "registry.k8s.io/pause:3.10", "default_runtime": "runc",
                    "runtimes": {
                        "runc": {"path": "runc"},
                        "kata.v2": {"path": "kata", "root": "/run/kata", "pod_annotations": ["io.katacontainers.*"], "privileged_without_host_devices": true}
                    },
                    "cni": {"conf_dir": "/etc/cni/net.d", "bin_dirs": ["/opt/cni/bin", "/usr/lib/cni"], "builtin_loopback": true},
                    "registry": {"config_path": "/etc/crius/certs.d", "pull_progress_timeout": "5m"},
                    "cdi": {"enable": true, "spec_dirs": ["/etc/cdi"]},
                    "stream": {"address": "127.0.0.1:0", "tls_cert_file": "", "tls_key_file": ""},
                    "shm_size": "64Mi"
                }),
                json!({
                    "rootDir": "/var/lib/crius", "stateDir": "/run/crius", "socket": "/run/crius/crius.sock",
                    "sandboxImage": "registry.k8s.io/pause:3.10",
                    "containerd": {
                        "defaultRuntimeName": "runc",
                        "runtimes": {
                            "runc": {"runtimePath": "runc"},
                            "kata.v2": {"runtimePath": "kata", "runtimeRoot": "/run/kata", "PodAnnotations": ["io.katacontainers.*"], "privileged_without_host_devices": true}
                        }
                    },
                    "cni": {"confDir": "/etc/cni/net.d", "binDirs": ["/opt/cni/bin", "/usr/lib/cni"], "binDir": "/opt/cni/bin", "builtin_loopback": true},
                    "registry": {"configPath": "/etc/crius/certs.d", "pull_progress_timeout": "5m"},
                    "enableCDI": true, "cdiSpecDirs": ["/etc/cdi"],
                    "stream": {"address": "127.0.0.1:0"}, "tlsCertFile": "", "tlsKeyFile": "",
                    "shm_size": "64Mi"
                }),
            ),
            // Tables that end up empty go; missing keys are no error.
            (
                json!({"cdi": {"enable": false}, "cni": {"bin_dirs": []}}),
                json!({"enableCDI": false, "cni": {"binDirs": []}}),
            ),
            (json!("not an object"), json!("not an object")),
        ];
        for (i, (crius, want)) in cases.into_iter().enumerate() {
            assert_eq!(containerd_shape(crius), want, "case {i}");
        }
    }
}
