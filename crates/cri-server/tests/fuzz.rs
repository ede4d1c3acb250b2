//! Randomized robustness tests (stable Rust has no cargo-fuzz here):
//! corrupted record files for the store's loader, and a few thousand random
//! or malformed CRI requests against a live criusd. Seeded; `FUZZ_SEED`
//! replays a run, `FUZZ_CASES` scales it.

mod common;

use common::registry::is_root;
use common::rng::Rng;
use crius_store::{Record, SandboxMetadata, SandboxStatus, Store};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

/// Inputs from the kit's generator.
impl Rng {
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A string from a palette of troublesome pieces.
    fn string(&mut self) -> String {
        const PIECES: &[&str] = &[
            "",
            "a",
            "web",
            "../",
            "/",
            "..",
            "\0",
            "\n",
            " ",
            "é",
            "k8s_POD",
            "_",
            "-",
            ".",
            "%s",
            "{}",
            "\u{202e}",
            "0123456789abcdef",
            "/etc/passwd",
            "*",
            "unix:///",
        ];
        let n = self.below(4);
        let mut s = String::new();
        for _ in 0..n {
            if self.below(5) == 0 {
                s.push_str(&"x".repeat(self.below(400)));
            } else {
                s.push_str(PIECES[self.below(PIECES.len())]);
            }
        }
        s
    }
}

fn seed() -> u64 {
    let s = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("fuzz seed {s} (FUZZ_SEED={s} replays)");
    s | 1
}

fn cases(default: usize) -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sandbox_record(id: &str, name: &str) -> crius_store::SandboxRecord {
    Record::new(
        SandboxMetadata {
            id: id.into(),
            name: name.into(),
            namespace: "ns".into(),
            pod_name: "p".into(),
            uid: "u".into(),
            ..Default::default()
        },
        SandboxStatus::default(),
    )
}

/// A mutation of `valid`: truncated, bit-flipped, spliced or random.
fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    match rng.below(5) {
        0 => rng.bytes(512),
        1 => valid[..rng.below(valid.len())].to_vec(),
        2 => {
            let mut v = valid.to_vec();
            for _ in 0..=rng.below(8) {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            v
        }
        3 => {
            let mut v = valid.to_vec();
            let at = rng.below(v.len());
            let junk = rng.bytes(32);
            v.splice(at..at, junk);
            v
        }
        _ => {
            // Valid JSON of the wrong shape.
            let shapes: [&[u8]; 5] = [b"null", b"[]", b"{}", b"{\"metadata\":7}", b"\"x\""];
            shapes[rng.below(shapes.len())].to_vec()
        }
    }
}

/// Random and corrupted record files never make the loader panic or fail;
/// what loads is consistent, the rest is set aside, and nothing is written
/// outside the store.
#[test]
fn store_loader_survives_corrupted_records() {
    let mut rng = Rng(seed());
    let outer = tempfile::tempdir().unwrap();
    let sentinel = outer.path().join("sentinel");
    std::fs::write(&sentinel, b"untouched").unwrap();
    for case in 0..cases(200) {
        let root = outer.path().join(format!("store{case}"));
        let valid_id = crius_store::generate_id();
        {
            let (store, _) = Store::open(&root).unwrap();
            store
                .add_sandbox(sandbox_record(&valid_id, "k8s_POD_ok"))
                .unwrap();
        }
        let dir = root.join("sandboxes");
        let valid = std::fs::read(dir.join(format!("{valid_id}.json"))).unwrap();
        for i in 0..=rng.below(4) {
            let kind = ["sandboxes", "containers", "images", "state"][rng.below(4)];
            let name = match rng.below(4) {
                0 => format!("{}.json", crius_store::generate_id()),
                1 => format!("{valid_id}.json"),
                2 => format!("junk{i}"),
                _ => format!("{}.json", "f".repeat(64)),
            };
            std::fs::write(root.join(kind).join(name), mutate(&mut rng, &valid)).unwrap();
        }
        let (store, report) =
            Store::open(&root).unwrap_or_else(|e| panic!("case {case}: open failed: {e}"));
        for s in store.list_sandboxes() {
            let again = store.get_sandbox(&s.metadata.id).unwrap();
            assert_eq!(again.metadata.id, s.metadata.id);
        }
        for (path, _) in &report.quarantined {
            assert!(path.starts_with(&root), "case {case}: {}", path.display());
        }
        drop(store);
        std::fs::remove_dir_all(&root).unwrap();
    }
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched");
}

fn random_pod(rng: &mut Rng) -> Option<PodSandboxConfig> {
    if rng.below(8) == 0 {
        return None;
    }
    // A third are plausible, so that they get past validation into the
    // creation (which fails at the pause image and must roll back).
    let plausible = rng.below(3) == 0;
    let part = |rng: &mut Rng| {
        if plausible {
            format!("fz{}", rng.below(5))
        } else {
            rng.string()
        }
    };
    Some(PodSandboxConfig {
        metadata: (plausible || rng.below(6) != 0).then(|| PodSandboxMetadata {
            name: part(rng),
            namespace: part(rng),
            uid: part(rng),
            attempt: rng.next() as u32,
        }),
        hostname: if plausible {
            String::new()
        } else {
            rng.string()
        },
        log_directory: if plausible {
            String::new()
        } else {
            rng.string()
        },
        port_mappings: (0..rng.below(3))
            .map(|_| PortMapping {
                protocol: rng.next() as i32,
                container_port: rng.next() as i32,
                host_port: rng.next() as i32,
                host_ip: rng.string(),
            })
            .collect(),
        labels: (0..rng.below(3))
            .map(|_| (rng.string(), rng.string()))
            .collect(),
        linux: (!plausible && rng.below(2) == 0).then(|| LinuxPodSandboxConfig {
            cgroup_parent: rng.string(),
            sysctls: (0..rng.below(3))
                .map(|_| (rng.string(), rng.string()))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn random_container(rng: &mut Rng) -> Option<ContainerConfig> {
    if rng.below(8) == 0 {
        return None;
    }
    Some(ContainerConfig {
        metadata: (rng.below(6) != 0).then(|| ContainerMetadata {
            name: rng.string(),
            attempt: rng.next() as u32,
        }),
        image: (rng.below(4) != 0).then(|| ImageSpec {
            image: rng.string(),
            ..Default::default()
        }),
        command: (0..rng.below(3)).map(|_| rng.string()).collect(),
        working_dir: rng.string(),
        log_path: rng.string(),
        mounts: (0..rng.below(2))
            .map(|_| Mount {
                container_path: rng.string(),
                host_path: rng.string(),
                ..Default::default()
            })
            .collect(),
        devices: (0..rng.below(2))
            .map(|_| Device {
                container_path: rng.string(),
                host_path: rng.string(),
                permissions: rng.string(),
            })
            .collect(),
        ..Default::default()
    })
}

/// Codes a well-behaved runtime gives to nonsense. `Unknown` (what a
/// panicking handler turns into) and transport failures are not among them.
fn sensible(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Ok | InvalidArgument
            | NotFound
            | AlreadyExists
            | FailedPrecondition
            | Unimplemented
            | Internal
            | Unavailable
            | DeadlineExceeded
            | OutOfRange
    )
}

async fn one_call(rt: &mut RuntimeServiceClient<Channel>, rng: &mut Rng) -> (String, tonic::Code) {
    let id = match rng.below(3) {
        0 => crius_store::generate_id(),
        1 => String::new(),
        _ => rng.string(),
    };
    macro_rules! call {
        ($name:literal, $e:expr) => {
            (
                $name.to_string(),
                $e.await
                    .map(|_| ())
                    .err()
                    .map_or(tonic::Code::Ok, |e| e.code()),
            )
        };
    }
    match rng.below(14) {
        0 => call!(
            "RunPodSandbox",
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: random_pod(rng),
                runtime_handler: if rng.below(2) == 0 {
                    String::new()
                } else {
                    rng.string()
                },
            })
        ),
        1 => call!(
            "CreateContainer",
            rt.create_container(CreateContainerRequest {
                pod_sandbox_id: id,
                config: random_container(rng),
                sandbox_config: random_pod(rng),
            })
        ),
        2 => call!(
            "StopPodSandbox",
            rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
        ),
        3 => call!(
            "RemovePodSandbox",
            rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        ),
        4 => call!(
            "PodSandboxStatus",
            rt.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true
            })
        ),
        5 => call!(
            "StartContainer",
            rt.start_container(StartContainerRequest { container_id: id })
        ),
        6 => call!(
            "StopContainer",
            rt.stop_container(StopContainerRequest {
                container_id: id,
                timeout: rng.next() as i64
            })
        ),
        7 => call!(
            "RemoveContainer",
            rt.remove_container(RemoveContainerRequest { container_id: id })
        ),
        8 => call!(
            "ContainerStatus",
            rt.container_status(ContainerStatusRequest {
                container_id: id,
                verbose: true
            })
        ),
        9 => call!(
            "ExecSync",
            rt.exec_sync(ExecSyncRequest {
                container_id: id,
                cmd: (0..rng.below(3)).map(|_| rng.string()).collect(),
                timeout: rng.next() as i64,
            })
        ),
        10 => call!(
            "ListContainers",
            rt.list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    id,
                    pod_sandbox_id: rng.string(),
                    label_selector: (0..rng.below(3))
                        .map(|_| (rng.string(), rng.string()))
                        .collect(),
                    state: (rng.below(2) == 0).then(|| ContainerStateValue {
                        state: rng.next() as i32
                    }),
                }),
            })
        ),
        11 => call!(
            "ContainerStats",
            rt.container_stats(ContainerStatsRequest { container_id: id })
        ),
        12 => call!(
            "Exec",
            rt.exec(ExecRequest {
                container_id: id,
                cmd: (0..rng.below(3)).map(|_| rng.string()).collect(),
                tty: rng.below(2) == 0,
                stdin: rng.below(2) == 0,
                stdout: rng.below(2) == 0,
                stderr: rng.below(2) == 0,
            })
        ),
        _ => call!(
            "UpdateRuntimeConfig",
            rt.update_runtime_config(UpdateRuntimeConfigRequest {
                runtime_config: Some(RuntimeConfig {
                    network_config: Some(NetworkConfig {
                        pod_cidr: rng.string()
                    }),
                }),
            })
        ),
    }
}

/// A few thousand random requests: every answer carries a sensible code,
/// criusd stays up and logs no panic, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_get_sensible_answers() {
    if !is_root() {
        eprintln!("skipping: a live criusd creating pods needs root");
        return;
    }
    let mut rng = Rng(seed());
    let tmp = tempfile::Builder::new()
        .prefix("crius-fuzz")
        .tempdir_in("/tmp")
        .unwrap();
    let _leftovers = common::pod::Leftovers(tmp.path().to_path_buf());
    // A pause image that cannot be pulled (nothing listens there): valid
    // pods fail fast and must roll back completely.
    // (With pause containers: the shim's PID-namespace holder needs no
    // image, and pods sharing a PID namespace would start.)
    let daemon = common::Daemon::start(
        tmp.path(),
        &format!(
            "{}pause_image = \"127.0.0.1:9/pause:none\"\n",
            common::WITH_PAUSE
        ),
    );
    let mut rt = daemon.runtime().await;
    let mut codes: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for case in 0..cases(2000) {
        let (method, code) = one_call(&mut rt, &mut rng).await;
        assert!(
            sensible(code),
            "case {case}: {method} answered {code:?}\n{}",
            daemon.log_text()
        );
        *codes.entry((method, format!("{code:?}"))).or_default() += 1;
    }
    eprintln!("{codes:#?}");
    // Still serving, no panic logged, nothing created.
    rt.version(VersionRequest::default())
        .await
        .expect("criusd still answers");
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "a handler panicked:\n{log}");
    let pods = common::pod::list_pods(&mut rt).await;
    assert!(pods.is_empty(), "{pods:?}");
    assert!(common::pod::mounts_below(tmp.path()).is_empty());
    let shims: Vec<String> = common::pod::processes_mentioning(&tmp.path().display().to_string())
        .into_iter()
        .filter(|p| p.contains("containerd-shim-crius-v2"))
        .collect();
    assert!(shims.is_empty(), "{shims:?}");
    let records = tmp.path().join("root/store/sandboxes");
    assert!(std::fs::read_dir(&records).map(|d| d.count()).unwrap_or(0) == 0);
}
