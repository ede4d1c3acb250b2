//! The `start` and `delete` actions of the shim binary.

use std::io::{self, IsTerminal, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use crius_shim_api::args::Args;
use crius_shim_api::launch::{server_command, StartInput, RUNTIME_ENV, RUNTIME_ROOT_ENV};
use crius_shim_api::paths::{socket_dir, socket_path, Layout, PodDir};

use crate::task::{RuntimeRecord, GROUP_ANNOTATION, RUNTIME_FILE, SANDBOX_ID_ANNOTATION};

/// Errors of the start and delete actions.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Local I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bundle's config.json is malformed.
    #[error("bundle config: {0}")]
    Config(String),
    /// `delete` could not remove everything a dead shim left.
    #[error("cleanup: {0}")]
    Cleanup(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// The group a task belongs to: the sandbox id or containerd's group
/// annotation from the bundle's config.json, else the task id itself.
pub fn grouping(id: &str, config_json: Option<&[u8]>) -> Result<String, StartError> {
    let Some(text) = config_json else {
        return Ok(id.to_string());
    };
    let v: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| StartError::Config(e.to_string()))?;
    let ann = v.get("annotations");
    for key in [SANDBOX_ID_ANNOTATION, GROUP_ANNOTATION] {
        if let Some(g) = ann.and_then(|a| a.get(key)).and_then(|g| g.as_str()) {
            if crate::task::valid_id(g) {
                return Ok(g.to_string());
            }
        }
    }
    Ok(id.to_string())
}

fn bundle_dir(args: &Args) -> Result<PathBuf, StartError> {
    match &args.bundle {
        Some(b) => Ok(PathBuf::from(b)),
        None => std::env::current_dir().map_err(io_err("current directory")),
    }
}

fn runc_options(any: &Any, out: &mut StartInput) {
    if !any.type_url.ends_with("containerd.runc.v1.Options") {
        return;
    }
    if let Ok(o) = RuncOptions::parse_from_bytes(&any.value) {
        out.runtime = Some(o.binary_name).filter(|b| !b.is_empty());
        out.runtime_root = Some(o.root).filter(|r| !r.is_empty());
    }
}

/// Interprets `start`'s stdin: containerd 2.3+ writes BootstrapParams
/// (protobuf) naming this shim's id and namespace; older containerds write
/// the runtime options as an Any, or nothing.
pub fn parse_start_input(input: &[u8], id: &str, namespace: &str) -> StartInput {
    let mut out = StartInput::default();
    if input.is_empty() {
        return out;
    }
    if let Ok(p) = BootstrapParams::parse_from_bytes(input) {
        if p.instance_id == id && p.namespace == namespace {
            out.bootstrap = true;
            out.ttrpc_address = Some(p.containerd_ttrpc_address.clone()).filter(|a| !a.is_empty());
            out.socket_dir = p
                .socket_dir
                .clone()
                .filter(|d| !d.is_empty())
                .map(PathBuf::from);
            for ext in &p.extensions {
                if let Some(any) = ext.value.as_ref() {
                    runc_options(any, &mut out);
                }
            }
            return out;
        }
    }
    if let Ok(any) = Any::parse_from_bytes(input) {
        runc_options(&any, &mut out);
    }
    out
}

/// What `start` prints for `addr`.
pub fn start_output(addr: &str, input: &StartInput) -> Result<Vec<u8>, StartError> {
    if !input.bootstrap {
        return Ok(addr.as_bytes().to_vec());
    }
    let mut r = BootstrapResult::new();
    r.version = containerd_shim_protos::TASK_API_VERSION;
    r.address = addr.to_string();
    r.protocol = "ttrpc".into();
    r.write_to_bytes()
        .map_err(|e| StartError::Config(format!("encode BootstrapResult: {e}")))
}

fn read_stdin() -> Vec<u8> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Vec::new();
    }
    let mut input = Vec::new();
    let _ = stdin.lock().take(10 << 20).read_to_end(&mut input);
    input
}

/// `start`: finds the live shim of the task's group or spawns a new serving
/// shim; returns what to print (the address, or a BootstrapResult).
pub fn start(args: &Args) -> Result<Vec<u8>, StartError> {
    let input = parse_start_input(&read_stdin(), &args.id, &args.namespace);
    let bundle = bundle_dir(args)?;
    let cfg = std::fs::read(bundle.join("config.json")).ok();
    let group = grouping(&args.id, cfg.as_deref())?;
    let dir = input.socket_dir.clone().unwrap_or_else(socket_dir);
    // Private: only the shim's callers (root) use its sockets.
    crius_store::private::dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let path = socket_path(&dir, &args.address, &args.namespace, &group);
    let addr = format!("unix://{}", path.display());
    for _ in 0..2 {
        if UnixStream::connect(&path).is_ok() {
            return start_output(&addr, &input);
        }
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            // Another start won the race: use its shim.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(io_err(format!("bind {}", path.display()))(e)),
        };
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io_err(format!("chmod {}", path.display())))?;
        spawn_server(args, &group, &listener, &dir, &input)?;
        return start_output(&addr, &input);
    }
    start_output(&addr, &input)
}

fn spawn_server(
    args: &Args,
    group: &str,
    listener: &UnixListener,
    dir: &Path,
    input: &StartInput,
) -> Result<(), StartError> {
    let exe = std::env::current_exe().map_err(io_err("current executable"))?;
    let mut cmd = server_command(&exe, args, group, listener.as_raw_fd(), dir, input);
    let child = cmd.spawn().map_err(io_err("spawn serving shim"))?;
    // The serving shim is re-parented once we exit; do not wait for it.
    drop(child);
    Ok(())
}

/// Annotation naming the kind of a CRI container (`sandbox` for a pause).
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Whether a bundle's config.json says it is a pod's pause container.
fn is_pause(config_json: Option<&[u8]>) -> bool {
    config_json
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(t).ok())
        .and_then(|v| {
            v.get("annotations")?
                .get(CONTAINER_TYPE_ANNOTATION)?
                .as_str()
                .map(|t| t == "sandbox")
        })
        .unwrap_or(false)
}

/// The ids of the runtime's containers under `root` (the runtime's root
/// with the namespace) that belong to pod `sandbox_id`. runc and crun keep
/// the spec's annotations as `key=value` labels in each container's
/// `state.json`, so the sandbox-id annotation also finds containers that
/// no caller knows of any more (one whose `create` finished after its
/// CreateContainer had rolled back because the shim died under it).
pub fn runtime_containers_of(root: &Path, sandbox_id: &str) -> Vec<String> {
    let wanted = format!("{SANDBOX_ID_ANNOTATION}={sandbox_id}");
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            let text = std::fs::read(e.path().join("state.json")).ok()?;
            let state: serde_json::Value = serde_json::from_slice(&text).ok()?;
            let labels = state.get("config")?.get("labels")?.as_array()?;
            labels
                .iter()
                .any(|l| l.as_str() == Some(wanted.as_str()))
                .then_some(id)
        })
        .collect();
    ids.sort();
    ids
}

/// `<runtime> --root <root> delete --force <id>`: kills what is left of a
/// container whose shim is gone (its processes were re-parented and keep
/// running) and removes its runtime state and cgroup. An unknown id is not
/// an error; with no state directory of the id under the root there is
/// nothing to delete and no process is spawned.
pub fn force_delete(rec: &RuntimeRecord, id: &str) -> Result<(), String> {
    if !crate::task::valid_id(id) || !rec.root.join(id).exists() {
        return Ok(());
    }
    let out = Command::new(&rec.binary)
        .arg("--root")
        .arg(&rec.root)
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("run {}: {e}", rec.binary))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stderr.contains("not exist") {
        return Err(format!(
            "{} delete --force {id}: {}",
            rec.binary,
            stderr.trim()
        ));
    }
    Ok(())
}

/// Removes what a pod's shim keeps in the pod's private directory (netns,
/// IPC/UTS pins, /dev/shm, its log) and the directory itself. Appends what
/// failed to `errors`; the directory stays then.
fn clean_pod_dir(dir: &PodDir, errors: &mut Vec<String>) {
    let before = errors.len();
    // The PID-namespace holder (and so every process of the pod's PID
    // namespace) first.
    if let Err(e) = crate::holder::kill_recorded(dir.path()) {
        errors.push(format!("pid holder: {e}"));
    }
    if let Err(e) = crius_netns::netns::remove(&dir.netns()) {
        errors.push(format!("remove netns: {e}"));
    }
    // After the netns, which belongs to it.
    for pin in [dir.userns(), dir.ipc(), dir.uts()] {
        if let Err(e) = crius_netns::podns::unpin(&pin) {
            errors.push(format!("unpin {}: {e}", pin.display()));
        }
    }
    if let Err(e) = crate::mount::unmount_all(&dir.shm()) {
        errors.push(e.to_string());
    }
    if errors.len() == before {
        // Nothing is mounted below any more.
        match std::fs::remove_dir_all(dir.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("remove {}: {e}", dir.path().display())),
        }
    }
}

/// `delete`: cleans up after the dead shim of a task, as containerd asks
/// with `-id ID -bundle BUNDLE delete`. Force-deletes the task with the
/// runtime recorded at create (else the one of the environment) and
/// unmounts the bundle's rootfs and the task's other mounts below the
/// bundle. For a pod (the id has a private directory
/// in the state root, or the bundle is a pause's), first the pod's other
/// containers the runtime still has, and after it the pod's private
/// directory. Returns the serialized DeleteResponse; fails (after doing
/// everything it can) when something could not be removed.
pub fn delete(args: &Args) -> Result<Vec<u8>, StartError> {
    let bundle = bundle_dir(args)?;
    let rec: Option<RuntimeRecord> = std::fs::read(bundle.join(RUNTIME_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let rec = rec.unwrap_or_else(|| RuntimeRecord {
        binary: std::env::var(RUNTIME_ENV).unwrap_or_else(|_| "runc".into()),
        root: std::env::var(RUNTIME_ROOT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(crate::serve::DEFAULT_RUNTIME_ROOT))
            .join(&args.namespace),
    });
    let mut errors = Vec::new();
    let mut pod = None;
    if crate::task::valid_id(&args.id) && crate::task::valid_id(&args.namespace) {
        let dir = Layout::from_env().pod_dir(&args.namespace, &args.id);
        let cfg = std::fs::read(bundle.join("config.json")).ok();
        if dir.path().is_dir() || is_pause(cfg.as_deref()) {
            // The containers before the pause, whose namespaces they join.
            for c in runtime_containers_of(&rec.root, &args.id) {
                if c != args.id {
                    errors.extend(force_delete(&rec, &c).err());
                }
            }
            pod = Some(dir);
        }
        errors.extend(force_delete(&rec, &args.id).err());
    }
    if let Err(e) = crate::mount::unmount_task(&bundle) {
        errors.push(e.to_string());
    }
    if let Some(dir) = &pod {
        clean_pod_dir(dir, &mut errors);
    }
    if !errors.is_empty() {
        return Err(StartError::Cleanup(errors.join("; ")));
    }
    let mut r = DeleteResponse::new();
    r.exit_status = 128 + 9;
    r.exited_at = MessageField::some(crate::events::timestamp(std::time::SystemTime::now()));
    r.write_to_bytes()
        .map_err(|e| StartError::Config(format!("encode DeleteResponse: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_table() {
        let cases: [(Option<&str>, &str); 5] = [
            (None, "c1"),
            (Some("{}"), "c1"),
            (
                Some(r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#),
                "pod1",
            ),
            (
                Some(r#"{"annotations":{"io.containerd.runc.v2.group":"g"}}"#),
                "g",
            ),
            (
                Some(r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"../x"}}"#),
                "c1",
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(
                grouping("c1", cfg.map(str::as_bytes)).unwrap(),
                want,
                "{cfg:?}"
            );
        }
        assert!(grouping("c1", Some(b"not json")).is_err());
    }

    #[test]
    fn finds_the_runtime_containers_of_a_pod() {
        let d = tempfile::tempdir().unwrap();
        let state = |id: &str, labels: serde_json::Value| {
            std::fs::create_dir_all(d.path().join(id)).unwrap();
            let text = serde_json::json!({ "id": id, "config": { "labels": labels } });
            std::fs::write(d.path().join(id).join("state.json"), text.to_string()).unwrap();
        };
        let label = |pod: &str| format!("io.kubernetes.cri.sandbox-id={pod}");
        state("c1", serde_json::json!([label("pod-a"), "bundle=/x"]));
        state("c2", serde_json::json!(["bundle=/y", label("pod-a")]));
        state("c3", serde_json::json!([label("pod-b")]));
        state("c4", serde_json::json!([label("pod-a-longer")]));
        state("c5", serde_json::json!("not a list"));
        std::fs::create_dir_all(d.path().join("c6")).unwrap();
        std::fs::write(d.path().join("c6/state.json"), "{torn").unwrap();
        std::fs::create_dir_all(d.path().join("c7")).unwrap();
        std::fs::write(d.path().join("stray-file"), "x").unwrap();
        let cases = [
            ("pod-a", vec!["c1", "c2"]),
            ("pod-b", vec!["c3"]),
            ("pod-c", vec![]),
        ];
        for (pod, want) in cases {
            assert_eq!(runtime_containers_of(d.path(), pod), want, "{pod}");
        }
        assert!(runtime_containers_of(&d.path().join("missing"), "pod-a").is_empty());
    }

    #[test]
    fn is_pause_table() {
        let cases: [(Option<&str>, bool); 5] = [
            (None, false),
            (Some("not json"), false),
            (Some("{}"), false),
            (
                Some(r#"{"annotations":{"io.kubernetes.cri.container-type":"container"}}"#),
                false,
            ),
            (
                Some(r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox"}}"#),
                true,
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(is_pause(cfg.map(str::as_bytes)), want, "{cfg:?}");
        }
    }

    #[test]
    fn start_input_table() {
        let mut bp = BootstrapParams::new();
        bp.instance_id = "c1".into();
        bp.namespace = "k8s.io".into();
        bp.containerd_ttrpc_address = "/run/containerd/containerd.sock.ttrpc".into();
        bp.socket_dir = Some("/run/containerd/s".into());
        let mut opts = RuncOptions::new();
        opts.binary_name = "/usr/bin/crun".into();
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = opts.write_to_bytes().unwrap();
        let mut ext = containerd_shim_protos::bootstrap_api::Extension::new();
        ext.value = MessageField::some(any.clone());
        bp.extensions.push(ext);
        let boot = bp.write_to_bytes().unwrap();
        let mut other = bp.clone();
        other.instance_id = "c2".into();
        let other = other.write_to_bytes().unwrap();
        let legacy = any.write_to_bytes().unwrap();

        let cases: [(&[u8], StartInput); 4] = [
            (b"", StartInput::default()),
            (
                &boot,
                StartInput {
                    bootstrap: true,
                    ttrpc_address: Some("/run/containerd/containerd.sock.ttrpc".into()),
                    socket_dir: Some("/run/containerd/s".into()),
                    runtime: Some("/usr/bin/crun".into()),
                    runtime_root: None,
                },
            ),
            (&other, StartInput::default()),
            (
                &legacy,
                StartInput {
                    runtime: Some("/usr/bin/crun".into()),
                    ..StartInput::default()
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_start_input(input, "c1", "k8s.io"), want, "{input:?}");
        }
        let plain = start_output("unix:///s/x", &StartInput::default()).unwrap();
        assert_eq!(plain, b"unix:///s/x");
        let out = start_output("unix:///s/x", &parse_start_input(&boot, "c1", "k8s.io")).unwrap();
        let r = BootstrapResult::parse_from_bytes(&out).unwrap();
        assert_eq!(
            (r.address.as_str(), r.protocol.as_str()),
            ("unix:///s/x", "ttrpc")
        );
        assert_eq!(r.version, containerd_shim_protos::TASK_API_VERSION);
    }
}
