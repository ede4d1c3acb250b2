//! The shim binary's `delete` action (what containerd and criusd run after
//! a dead shim) on a fake runtime: root-free, nothing is mounted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use crius_shim_api::launch::{delete_command, DeleteTarget};
use crius_shim_api::paths::Layout;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-crius-v2");
const NS: &str = "k8s.io";

/// A temp dir with a fake runtime that logs its arguments and, like runc,
/// removes `<root>/<id>` on `delete --force`; it fails for `stuck`, and
/// says a container whose state holds a `gone` file does not exist.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("fake-runc");
        std::fs::write(
            &runtime,
            format!(
                "#!/bin/sh\necho \"$*\" >> {log}\nroot=$2; id=$5\n\
                 [ \"$id\" = stuck ] && {{ echo 'cannot kill: device busy' >&2; exit 1; }}\n\
                 [ -f \"$root/$id/gone\" ] && {{ echo \"container $id does not exist\" >&2; exit 1; }}\n\
                 rm -rf \"$root/$id\"\n",
                log = dir.path().join("calls").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fixture { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    fn layout(&self) -> Layout {
        Layout::under(&self.dir.path().join("state"))
    }

    /// Runtime state of container `id` labelled with pod `pod`.
    fn runtime_state(&self, id: &str, pod: &str) {
        let d = self.root().join(NS).join(id);
        std::fs::create_dir_all(&d).unwrap();
        let state = serde_json::json!({ "id": id, "config": { "labels": [
            format!("io.kubernetes.cri.sandbox-id={pod}"), "bundle=/b"
        ] } });
        std::fs::write(d.join("state.json"), state.to_string()).unwrap();
    }

    fn bundle(&self, id: &str) -> PathBuf {
        let b = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        b
    }

    /// The runtime calls made so far, one line each.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(&self.root().display().to_string(), "ROOT"))
            .collect()
    }

    /// Runs `delete` for `id`; the DeleteResponse or the shim's stderr.
    fn delete(&self, id: &str, bundle: &Path) -> Result<DeleteResponse, String> {
        let runtime = self.dir.path().join("fake-runc");
        let target = DeleteTarget {
            namespace: NS,
            address: "/run/x.sock",
            id,
            bundle,
            runtime: runtime.to_str().unwrap(),
            runtime_root: &self.root(),
        };
        let mut cmd = delete_command(Path::new(SHIM), &target, &self.layout());
        let out = cmd.output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(DeleteResponse::parse_from_bytes(&out.stdout).unwrap())
    }
}

#[test]
fn deletes_a_container_and_ignores_what_is_unknown() {
    let f = Fixture::new();
    f.runtime_state("c1", "pod1");
    let r = f.delete("c1", &f.bundle("c1")).unwrap();
    assert_eq!(r.exit_status, 137);
    assert_eq!(f.calls(), ["--root ROOT/k8s.io delete --force c1"]);
    assert!(!f.root().join(NS).join("c1").exists());
    // Again, and an id the runtime never knew: nothing to do, no runtime
    // process.
    f.delete("c1", &f.bundle("c1")).unwrap();
    f.delete("c9", &f.bundle("c9")).unwrap();
    assert_eq!(f.calls().len(), 1);
    // A bundle that is not there at all.
    f.delete("c9", &f.dir.path().join("nowhere")).unwrap();
    assert_eq!(f.calls().len(), 1);
}

#[test]
fn deletes_a_pod_its_containers_and_its_directory() {
    let f = Fixture::new();
    // The pause, a container no caller knows of any more, one of another
    // pod.
    f.runtime_state("pod1", "pod1");
    f.runtime_state("orphan", "pod1");
    f.runtime_state("other", "pod2");
    let pod = f.layout().pod_dir(NS, "pod1");
    std::fs::create_dir_all(pod.path()).unwrap();
    for p in [pod.log(), pod.ipc(), pod.uts(), pod.netns()] {
        std::fs::write(p, "").unwrap();
    }
    std::fs::create_dir_all(pod.shm()).unwrap();
    f.delete("pod1", &f.bundle("pod1")).unwrap();
    // The containers first, the pause last.
    assert_eq!(
        f.calls(),
        [
            "--root ROOT/k8s.io delete --force orphan",
            "--root ROOT/k8s.io delete --force pod1"
        ]
    );
    assert!(!pod.path().exists(), "the pod directory is left");
    assert!(f.root().join(NS).join("other").exists());
}

#[test]
fn a_pause_bundle_is_a_pod_without_a_directory() {
    let f = Fixture::new();
    f.runtime_state("pod3", "pod3");
    f.runtime_state("c3", "pod3");
    let bundle = f.bundle("pod3");
    let config = serde_json::json!({ "annotations": {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "pod3"
    } });
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    f.delete("pod3", &bundle).unwrap();
    assert_eq!(
        f.calls(),
        [
            "--root ROOT/k8s.io delete --force c3",
            "--root ROOT/k8s.io delete --force pod3"
        ]
    );
}

#[test]
fn a_runtime_failure_fails_the_delete() {
    let f = Fixture::new();
    f.runtime_state("stuck", "pod1");
    let e = f.delete("stuck", &f.bundle("stuck")).unwrap_err();
    assert!(e.contains("device busy"), "{e}");
    // A runtime that says the container does not exist is not a failure
    // (its state was still there when the shim looked).
    f.runtime_state("racy", "pod1");
    std::fs::write(f.root().join(NS).join("racy").join("gone"), "").unwrap();
    f.delete("racy", &f.bundle("racy")).unwrap();
    assert_eq!(f.calls().len(), 2);
}
