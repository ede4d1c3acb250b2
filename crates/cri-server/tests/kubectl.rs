//! crius driven by the real `kubectl` (client-go's wire behaviour) through
//! a fake Kubernetes API server (`common::kube`) that, like kubelet, turns
//! the exec/attach/portforward subresource requests into CRI calls on
//! criusd and proxies the upgraded connection to the returned URL.
//!
//! What each test exercises in client-go (k8s.io/client-go, as vendored by
//! kubectl 1.32):
//! - `kubectl exec -i` over WebSocket: tools/remotecommand/websocket.go
//!   (`v5.channel.k8s.io`, stdin close signal `[255, 0]`, status on channel
//!   3) chosen by tools/remotecommand/fallback.go, which would fall back to
//!   SPDY on an upgrade failure (the tests check it did not);
//! - `kubectl exec -i` over SPDY (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`):
//!   tools/remotecommand/spdy.go and v4.go (`v4.channel.k8s.io`, half-close
//!   of the stdin stream, JSON status with the exit code on the error
//!   stream) on util/httpstream/spdy (roundtripper.go upgrade, connection.go
//!   streams over moby/spdystream);
//! - exit codes: the `NonZeroExitCode` status decoded into
//!   `exec.CodeExitError` by remotecommand (errorDecoderV4), which kubectl
//!   turns into its exit status ("command terminated with exit code N");
//! - `kubectl attach` (with and without `-i`): the same remotecommand
//!   executors against the attach subresource;
//! - `kubectl cp` both ways: kubectl/pkg/cmd/cp (`test -d` to probe the
//!   destination, then `tar xmf -` with the archive on stdin, or `tar cf -`
//!   with it on stdout) over the same executors;
//! - `kubectl exec -it` on a pseudo-terminal: kubectl/pkg/util/term (raw
//!   mode, the size sent at the start and on `SIGWINCH`) and the
//!   executors' TTY mode (resize stream, or WebSocket channel 4; no
//!   stderr);
//! - `kubectl attach -i` to a container with `stdin_once` (what
//!   `kubectl run -i --rm` creates): closing kubectl's stdin ends the
//!   container's;
//! - `kubectl port-forward` with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`:
//!   tools/portforward/portforward.go (`portforward.k8s.io`, an error and a
//!   data stream per local connection with `port` and `requestID` headers;
//!   it half-closes the error stream, and a connection ends only once the
//!   server ends both streams) on util/httpstream/spdy.

mod common;

use common::kube::*;
use common::pod::*;
use common::registry::{
    busybox_entries, image_with_config, is_root, layer, sha256, Compression, Entry,
};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// How kubectl speaks exec/attach: the environment that selects it, the
/// `Upgrade` header it sends and the subprotocol criusd should pick.
#[derive(Clone, Copy)]
struct Transport {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
    upgrade: &'static str,
    protocol: &'static str,
}

/// WebSocket, the default of kubectl 1.32 (remotecommand/websocket.go).
const WS: Transport = Transport {
    name: "websocket",
    env: &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true")],
    upgrade: "websocket",
    protocol: "v5.channel.k8s.io",
};
/// SPDY (remotecommand/spdy.go).
const SPDY: Transport = Transport {
    name: "spdy",
    env: &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
    upgrade: "SPDY/3.1",
    protocol: "v4.channel.k8s.io",
};
/// kubectl port-forward over SPDY (`portforward.k8s.io`) directly: the
/// WebSocket variant tunnels SPDY and needs the API server to translate.
const PF_SPDY: &[(&str, &str)] = &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")];

/// A container running `sh -c script`; kubelet always sets a log path,
/// `log` false leaves it empty.
fn container(name: &str, image: &str, script: &str, stdin: bool, log: bool) -> ContainerConfig {
    ContainerConfig {
        stdin,
        log_path: if log {
            format!("{name}.log")
        } else {
            String::new()
        },
        ..common::pod::container(name, image, &["/bin/sh", "-c", script])
    }
}

/// A container that only sleeps (to exec in).
fn sleeper(name: &str, image: &str) -> ContainerConfig {
    container(name, image, "exec /bin/busybox sleep 100000", false, true)
}

fn host_network_options() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..Default::default()
    }
}

/// A criusd with a pod network, a fake API server and kubectl on it.
/// Fields drop in order: the API server (printing its log on a panic)
/// before the daemon.
struct Setup {
    api: FakeApiServer,
    kubectl: Kubectl,
    rt: RuntimeServiceClient<Channel>,
    image: String,
    /// `(sandbox id, uid)` of the pods to remove at the end.
    pods: Vec<(String, String)>,
    env: Env,
    /// Held until everything above is gone: the tests run one at a time
    /// (an environment's leftovers guard kills every process in the test
    /// cgroup tree, which the other tests' containers share).
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Setup {
    /// `None` (with a note) when not root or kubectl is missing.
    async fn start(prefix: &str, loopback: bool) -> Option<Setup> {
        if !is_root() {
            eprintln!("kubectl: skipped (needs root)");
            return None;
        }
        if kubectl_binary().is_none() {
            eprintln!("kubectl: skipped (no kubectl; set CRIUS_TEST_KUBECTL)");
            return None;
        }
        let serial = SERIAL.lock().await;
        let env = if loopback {
            Env::start(prefix)
        } else {
            Env::start_without_loopback(prefix)
        };
        let image = env.pull_busybox().await;
        let rt = env.daemon.runtime().await;
        let api = FakeApiServer::start(rt.clone()).await;
        let kubectl = Kubectl::new(&env.dir.join("kubectl"), &api).expect("kubectl");
        Some(Setup {
            api,
            kubectl,
            rt,
            image,
            pods: Vec::new(),
            env,
            _serial: serial,
        })
    }

    async fn run_pod(&mut self, config: &PodSandboxConfig) -> String {
        let id = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}"))
            .into_inner()
            .pod_sandbox_id;
        let uid = config.metadata.as_ref().unwrap().uid.clone();
        self.pods.push((id.clone(), uid));
        id
    }

    async fn start_container(
        &mut self,
        pod_id: &str,
        pod_config: &PodSandboxConfig,
        c: ContainerConfig,
    ) -> String {
        let id = self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(c),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e:?}"))
            .into_inner()
            .container_id;
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e:?}"));
        id
    }

    /// Runs the pod of `config` with the one container `c` and registers
    /// it with the fake API server (`stdin`, `stdinOnce` and `tty` as in
    /// `c`; a host-network pod on 127.0.0.1); returns the container id.
    async fn start_pod(&mut self, config: &PodSandboxConfig, c: ContainerConfig) -> String {
        let pod_id = self.run_pod(config).await;
        let (name, stdin, stdin_once, tty) = (
            c.metadata.as_ref().unwrap().name.clone(),
            c.stdin,
            c.stdin_once,
            c.tty,
        );
        let image = c.image.as_ref().unwrap().image.clone();
        let id = self.start_container(&pod_id, config, c).await;
        let meta = config.metadata.as_ref().unwrap();
        let host_network = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == NamespaceMode::Node as i32);
        let mut fake = FakePod::new(&meta.name, &meta.uid, &pod_id);
        fake = if host_network {
            fake.ip("127.0.0.1").host_network()
        } else {
            let ip = self.pod_ip(&pod_id).await;
            fake.ip(&ip)
        };
        fake = fake.container(&name, &id, &image, stdin, tty);
        if stdin_once {
            fake = fake.stdin_once();
        }
        self.api.add_pod(fake);
        id
    }

    /// Pushes (to the environment's registry) and pulls a busybox image
    /// whose `PATH` also has the applets that kubectl runs by name in a
    /// container (`kubectl cp`: `test`, `tar`) linked to busybox; returns
    /// its name.
    async fn tools_image(&self) -> String {
        // `tail` for `kubectl cp --retries`; `sha256sum` for the checks.
        const LINKS: &[&str] = &["bin/tar", "bin/test", "bin/tail", "bin/sha256sum"];
        let links: Vec<Entry> = LINKS.iter().map(|l| Entry::Symlink(l, "busybox")).collect();
        let img = image_with_config(
            vec![
                layer(&busybox_entries(), Compression::Gzip),
                layer(&links, Compression::Gzip),
            ],
            serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}),
        );
        self.env.registry.push_image("busybox-tools", "test", &img);
        let name = format!("{}/busybox-tools:test", self.env.registry.addr);
        pull(&self.env, &name).await;
        name
    }

    async fn pod_ip(&mut self, pod_id: &str) -> String {
        self.rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    async fn container_state(&mut self, id: &str) -> (ContainerState, i32) {
        let s = self
            .rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        (s.state(), s.exit_code)
    }

    /// Stops and removes the pods; checks that nothing is left mounted.
    async fn finish(mut self) {
        for (id, uid) in std::mem::take(&mut self.pods) {
            self.rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .unwrap();
            self.rt
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .unwrap();
            assert!(cgroup_dirs(&uid).is_empty(), "cgroups of {uid} left");
            remove_cgroup_parents(&uid);
        }
        assert!(
            mounts_below(&self.env.dir).is_empty(),
            "mounts left: {:?}",
            mounts_below(&self.env.dir)
        );
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Without the colour codes and the gRPC transport's chatter.
            let log: String = self
                .env
                .daemon
                .log_text()
                .split('\x1b')
                .map(|part| match part.strip_prefix('[') {
                    Some(rest) => rest
                        .trim_start_matches(|c: char| c.is_ascii_digit() || c == ';')
                        .strip_prefix('m')
                        .unwrap_or(rest),
                    None => part,
                })
                .collect();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("h2::") && !l.contains("hyper") && !l.contains("tower::"))
                .collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("---- criusd log (last {} lines) ----", tail.len());
            for l in tail {
                eprintln!("{l}");
            }
            eprintln!("---- end of criusd log ----");
        }
        // Pods still listed (a failed test) go with the Env's cleanup.
    }
}

/// Whether a logged request is a streaming one of `sub`resource.
fn is_sub(l: &Logged, sub: &str) -> bool {
    l.path().ends_with(&format!("/{sub}"))
}

/// Checks that the requests of `sub` after the first `skip` ones are
/// exactly `n`, all upgraded the way of `t` (no fallback to another
/// transport).
fn assert_upgrades(api: &FakeApiServer, sub: &str, skip: usize, n: usize, t: Transport) {
    let reqs: Vec<Logged> = api
        .requests()
        .into_iter()
        .filter(|l| is_sub(l, sub))
        .skip(skip)
        .collect();
    assert_eq!(reqs.len(), n, "{sub} requests: {reqs:#?}");
    for l in reqs {
        assert!(
            l.header("upgrade")
                .is_some_and(|u| u.eq_ignore_ascii_case(t.upgrade)),
            "{l}"
        );
        assert!(l.outcome.contains(" 101 "), "{l}");
        assert!(
            l.outcome.contains(&format!("(protocol {:?})", t.protocol)),
            "{l}"
        );
    }
}

/// `kubectl exec -i` 25 times with two lines on stdin, an exit code, and
/// stdout/stderr apart.
async fn exec(prefix: &str, name: &str, t: Transport) {
    let Some(mut s) = Setup::start(prefix, true).await else {
        return;
    };
    let image = s.image.clone();
    let config = pod(name, &format!("uid-{name}"));
    s.start_pod(&config, sleeper("shell", &image)).await;

    let script = "n=0; while read l; do n=$((n+1)); done; echo count:$n";
    for i in 0..25 {
        let out = s
            .kubectl
            .run(
                &["exec", "-i", name, "-c", "shell", "--", "sh", "-c", script],
                b"alpha\nbeta\n",
                t.env,
            )
            .await;
        assert!(
            out.status.success() && out.stdout == "count:2\n",
            "{} run {i}: {out}",
            t.name
        );
    }
    assert_upgrades(&s.api, "exec", 0, 25, t);

    // The exit code reaches kubectl's exit status (no -c: the only
    // container is the default).
    let out = s
        .kubectl
        .run(&["exec", name, "--", "sh", "-c", "exit 3"], b"", t.env)
        .await;
    assert_eq!(out.code(), Some(3), "{}: {out}", t.name);
    assert!(
        out.stderr.contains("command terminated with exit code 3"),
        "{}: {out}",
        t.name
    );
    // stdout and stderr stay apart.
    let out = s
        .kubectl
        .run(
            &[
                "exec",
                name,
                "--",
                "sh",
                "-c",
                "echo to-out; echo to-err >&2",
            ],
            b"",
            t.env,
        )
        .await;
    assert!(out.status.success(), "{}: {out}", t.name);
    assert_eq!(out.stdout, "to-out\n", "{}: {out}", t.name);
    assert_eq!(out.stderr, "to-err\n", "{}: {out}", t.name);
    assert_upgrades(&s.api, "exec", 0, 27, t);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_over_websocket() {
    exec("crius-kexecws", "kexecws", WS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_over_spdy() {
    exec("crius-kexecspdy", "kexecspdy", SPDY).await;
}

/// `kubectl attach -i` to a container reading its stdin, twice: the piped
/// lines come back; detaching (stdin closed, kubectl killed) leaves the
/// container running, since it was not created with `stdin_once`, and a
/// second attach works as the first.
async fn attach_with_stdin(prefix: &str, name: &str, log: bool, t: Transport) {
    let Some(mut s) = Setup::start(prefix, true).await else {
        return;
    };
    let image = s.image.clone();
    let config = pod(name, &format!("uid-{name}"));
    let c = container(
        "echo",
        &image,
        "while read l; do echo got:$l; done",
        true,
        log,
    );
    let echo = s.start_pod(&config, c).await;

    for round in 1..=2 {
        let mut p = s
            .kubectl
            .spawn(&["attach", "-i", name, "-c", "echo"], t.env);
        p.write_stdin(format!("alpha-{round}\nbeta-{round}\n").as_bytes())
            .await;
        let (a, b) = (
            format!("got:alpha-{round}\n"),
            format!("got:beta-{round}\n"),
        );
        let ok = p
            .wait_for(Duration::from_secs(30), |out, _| {
                out.contains(&a) && out.contains(&b)
            })
            .await;
        let (stdout, stderr) = (p.stdout(), p.stderr());
        let running = p.running();
        p.kill().await;
        assert!(
            ok,
            "{} attach {round}: kubectl attach -i (log path: {log}) did not echo the lines (kubectl still running: {running})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            t.name
        );
        assert!(
            round == 1 || !stdout.contains("got:alpha-1\n"),
            "attach {round} replayed earlier output: {stdout:?}"
        );
        assert_upgrades(&s.api, "attach", 0, round, t);
        // Detaching does not close the container's stdin.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (state, code) = s.container_state(&echo).await;
        assert_eq!(
            state,
            ContainerState::ContainerRunning,
            "{}: the container stopped (exit code {code}) after kubectl attach {round} detached",
            t.name
        );
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_stdin_with_log_path_over_websocket() {
    attach_with_stdin("crius-kattachws", "kattachws", true, WS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_stdin_with_log_path_over_spdy() {
    attach_with_stdin("crius-kattachspdy", "kattachspdy", true, SPDY).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_stdin_without_log_path_over_websocket() {
    attach_with_stdin("crius-kattachnlws", "kattachnlws", false, WS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_stdin_without_log_path_over_spdy() {
    attach_with_stdin("crius-kattachnlspdy", "kattachnlspdy", false, SPDY).await;
}

/// Plain `kubectl attach` (no stdin) to a container printing a line every
/// 100 ms: consecutive lines reach kubectl.
async fn attach_output(prefix: &str, name: &str, t: Transport) {
    let Some(mut s) = Setup::start(prefix, true).await else {
        return;
    };
    let image = s.image.clone();
    let config = pod(name, &format!("uid-{name}"));
    let c = container(
        "ticker",
        &image,
        "i=0; while true; do i=$((i+1)); echo tick:$i; sleep 0.1; done",
        false,
        true,
    );
    s.start_pod(&config, c).await;
    let mut p = s.kubectl.spawn(&["attach", name, "-c", "ticker"], t.env);
    let ok = p
        .wait_for(Duration::from_secs(30), |out, _| {
            out.lines().filter(|l| l.starts_with("tick:")).count() >= 2
        })
        .await;
    let (stdout, stderr) = (p.stdout(), p.stderr());
    p.kill().await;
    assert!(
        ok,
        "{}: kubectl attach printed no two ticks\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        t.name
    );
    // Consecutive ticks: nothing was lost or repeated in between.
    let ticks: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("tick:"))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "{}: {stdout:?}",
        t.name
    );
    assert_upgrades(&s.api, "attach", 0, 1, t);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_output_over_websocket() {
    attach_output("crius-kattachoutws", "kattachoutws", WS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_output_over_spdy() {
    attach_output("crius-kattachoutspdy", "kattachoutspdy", SPDY).await;
}

/// Writes the tree `kubectl cp` copies under `dir`: `blob.bin`, a few
/// hundred KiB of bytes that are no text (every byte value, NULs, lone CRs,
/// runs and noise) and a small text file in a directory; returns the
/// files (paths relative to `dir`) and their bytes.
fn write_cp_tree(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let mut blob = Vec::new();
    let mut x: u32 = 0x2545_f491;
    for _ in 0..300 * 1024 + 17 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        blob.push((x >> 24) as u8);
    }
    for b in 0..=255u8 {
        blob.extend(std::iter::repeat_n(b, 300));
    }
    blob.extend_from_slice(b"\r\0\r\n\xff\xfe\x1b[0m");
    let files = vec![
        ("blob.bin", blob),
        (
            "docs/note.txt",
            b"a small text file\nin a directory\n".to_vec(),
        ),
    ];
    for (rel, data) in &files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    files
}

/// Checks that `dir` holds `files` byte for byte.
fn assert_same_files(what: &str, dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (rel, data) in files {
        let p = dir.join(rel);
        let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{what}: {}: {e}", p.display()));
        assert!(
            got == *data,
            "{what}: {} differs: {} bytes, {} expected, first difference at {:?}",
            p.display(),
            got.len(),
            data.len(),
            got.iter().zip(data.iter()).position(|(a, b)| a != b)
        );
    }
}

/// `kubectl cp` of a directory and of a file into a container and back
/// out (kubectl runs `test -d` and `tar` in the container over exec, with
/// the archive on stdin or stdout), the bytes compared at each end.
async fn cp(prefix: &str, name: &str, t: Transport) {
    let Some(mut s) = Setup::start(prefix, true).await else {
        return;
    };
    let image = s.tools_image().await;
    let config = pod(name, &format!("uid-{name}"));
    let id = s.start_pod(&config, sleeper("files", &image)).await;
    let src = s.env.dir.join("cp-src");
    let files = write_cp_tree(&src);
    let local = |p: &Path| p.display().to_string();
    let remote = |p: &str| format!("{name}:{p}");
    let cp = |from: String, to: String| {
        let k = &s.kubectl;
        async move {
            let out = k.run(&["cp", "-c", "files", &from, &to], b"", t.env).await;
            assert!(out.status.success(), "{}: {out}", t.name);
        }
    };

    // In: the directory under a new name, the big file on its own.
    cp(local(&src), remote("/tmp/up")).await;
    cp(local(&src.join("blob.bin")), remote("/tmp/single.bin")).await;
    let in_container = files
        .iter()
        .map(|(rel, data)| (format!("/tmp/up/{rel}"), data))
        .chain(std::iter::once((
            "/tmp/single.bin".to_string(),
            &files[0].1,
        )));
    for (path, data) in in_container {
        let (code, out, err) = common::pod::exec(&mut s.rt, &id, &["sha256sum", &path]).await;
        let want = sha256(data);
        assert!(
            code == 0 && out.split_whitespace().next() == want.strip_prefix("sha256:"),
            "{}: {path} in the container: sha256sum exit {code}: {out}{err} ({want} expected)",
            t.name
        );
    }

    // Out: the directory to a new local one, the file to a new name.
    let down = s.env.dir.join("cp-down");
    cp(remote("/tmp/up"), local(&down)).await;
    assert_same_files(t.name, &down, &files);
    let single = s.env.dir.join("cp-single.bin");
    cp(remote("/tmp/single.bin"), local(&single)).await;
    assert_same_files(t.name, &s.env.dir, &[("cp-single.bin", files[0].1.clone())]);

    // Every exec (the `test -d` probes and the `tar`s) went over `t`.
    let n = s.api.count(|l| is_sub(l, "exec"));
    assert!(n >= 4, "{}: {}", t.name, s.api.log_text());
    assert_upgrades(&s.api, "exec", 0, n, t);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_cp_over_websocket() {
    cp("crius-kcpws", "kcpws", WS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_cp_over_spdy() {
    cp("crius-kcpspdy", "kcpspdy", SPDY).await;
}

/// `kubectl exec -it ... sh` on a terminal of 37 x 123: the shell runs on
/// a terminal in the container, of the size of kubectl's, which follows
/// kubectl's when that changes (`SIGWINCH`, the resize stream); the exit
/// code of the typed `exit 5` becomes kubectl's.
async fn exec_tty(prefix: &str, name: &str, t: Transport) {
    let Some(mut s) = Setup::start(prefix, true).await else {
        return;
    };
    let image = s.image.clone();
    let config = pod(name, &format!("uid-{name}"));
    s.start_pod(&config, sleeper("shell", &image)).await;
    let mut p = s.kubectl.spawn_on_pty(
        &["exec", "-it", name, "-c", "shell", "--", "sh"],
        t.env,
        37,
        123,
    );
    let wait = Duration::from_secs(30);
    let fail = |p: &mut PtyKubectl, what: &str| -> String {
        let running = p.running();
        format!(
            "{}: {what} (kubectl still running: {running})\n--- terminal ---\n{:?}",
            t.name,
            p.output()
        )
    };
    // The prompt of an interactive shell.
    if !p.wait_for(wait, |o| o.contains("# ")).await {
        panic!("{}", fail(&mut p, "no shell prompt"));
    }
    // The size travels on the resize stream, the keys on stdin: ask
    // until it shows.
    let shows = |want: &'static [&'static str]| move |o: &str| want.iter().all(|w| o.contains(w));
    let size = shows(&["37 123", "/dev/pts/"]);
    if !p.type_until(b"stty size; tty\r", wait, size).await {
        panic!("{}", fail(&mut p, "no 37 x 123 terminal in the container"));
    }
    // A resize of kubectl's terminal reaches the container's.
    p.resize(50, 160);
    if !p.type_until(b"stty size\r", wait, shows(&["50 160"])).await {
        panic!("{}", fail(&mut p, "the resize to 50 x 160 did not show"));
    }
    p.type_in(b"exit 5\r").await;
    let Some(status) = p.wait(wait).await else {
        let msg = fail(&mut p, "kubectl did not exit after `exit 5`");
        p.kill().await;
        panic!("{msg}");
    };
    assert_eq!(status.code(), Some(5), "{}", fail(&mut p, "exit code"));
    assert!(
        p.output().contains("command terminated with exit code 5"),
        "{}",
        fail(&mut p, "no exit code message")
    );
    assert_upgrades(&s.api, "exec", 0, 1, t);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_tty_over_websocket() {
    exec_tty("crius-kexecttyws", "kexecttyws", WS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_tty_over_spdy() {
    exec_tty("crius-kexecttyspdy", "kexecttyspdy", SPDY).await;
}

/// `kubectl attach -i` to a container created with `stdin` and
/// `stdin_once` (as `kubectl run -i --rm` creates it): the lines typed
/// reach it; when kubectl's stdin ends, the container's does, the
/// container prints its last line (which kubectl still gets) and exits 0,
/// and kubectl exits 0.
async fn attach_stdin_once(prefix: &str, name: &str, t: Transport) {
    let Some(mut s) = Setup::start(prefix, true).await else {
        return;
    };
    let image = s.image.clone();
    let config = pod(name, &format!("uid-{name}"));
    let mut c = container(
        "once",
        &image,
        "while read l; do echo got:$l; done; echo stdin-closed",
        true,
        true,
    );
    c.stdin_once = true;
    let id = s.start_pod(&config, c).await;
    let mut p = s
        .kubectl
        .spawn(&["attach", "-i", name, "-c", "once"], t.env);
    p.write_stdin(b"alpha\nbeta\n").await;
    let ok = p
        .wait_for(Duration::from_secs(30), |out, _| {
            out.contains("got:alpha\n") && out.contains("got:beta\n")
        })
        .await;
    let context = |p: &mut KubectlProc| {
        let running = p.running();
        format!(
            "{}: kubectl still running: {running}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            t.name,
            p.stdout(),
            p.stderr()
        )
    };
    assert!(ok, "the lines did not come back\n{}", context(&mut p));
    p.close_stdin();
    let Some(status) = p.wait(Duration::from_secs(30)).await else {
        let msg = context(&mut p);
        p.kill().await;
        panic!("kubectl attach did not end after its stdin closed\n{msg}");
    };
    assert!(
        status.success() && p.stdout().ends_with("got:beta\nstdin-closed\n"),
        "kubectl attach: {status}\n{}",
        context(&mut p)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (state, code) = s.container_state(&id).await;
        if state == ContainerState::ContainerExited {
            assert_eq!(code, 0, "{}: exit code of the container", t.name);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the container is {state:?} 10 s after its stdin closed",
            t.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_upgrades(&s.api, "attach", 0, 1, t);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_stdin_once_over_websocket() {
    attach_stdin_once("crius-koncews", "koncews", WS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_stdin_once_over_spdy() {
    attach_stdin_once("crius-koncespdy", "koncespdy", SPDY).await;
}

/// One HTTP/1.0 GET of `/index.html` on 127.0.0.1:`port`; the whole
/// response (the server closes).
async fn http_get(port: u16) -> Result<String, String> {
    let fut = async {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        c.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .await
            .map_err(|e| format!("read: {e} after {:?}", String::from_utf8_lossy(&got)))?;
        Ok(String::from_utf8_lossy(&got).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| "no complete response within 30 s".to_string())?
}

/// Sequential and concurrent GETs through `kubectl port-forward`.
async fn check_port_forward(
    s: &mut Setup,
    pod_name: &str,
    remote: u16,
    content: &str,
    ready: &str,
) {
    let before = s.api.count(|l| is_sub(l, "portforward"));
    let mut pf = s.kubectl.port_forward(pod_name, remote, PF_SPDY).await;
    let port = pf.local_port;
    let context = |pf: &mut PortForward| {
        let running = pf.proc.running();
        format!(
            "server readiness: {ready}\nkubectl port-forward still running: {running}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            pf.proc.stdout(),
            pf.proc.stderr()
        )
    };
    for i in 0..5 {
        match http_get(port).await {
            Ok(page) if page.contains(content) && page.starts_with("HTTP/1.") => {}
            r => panic!("GET {i} through port-forward: {r:?}\n{}", context(&mut pf)),
        }
    }
    let gets: Vec<_> = (0..4).map(|_| tokio::spawn(http_get(port))).collect();
    for (i, g) in gets.into_iter().enumerate() {
        match g.await.unwrap() {
            Ok(page) if page.contains(content) => {}
            r => panic!("concurrent GET {i}: {r:?}\n{}", context(&mut pf)),
        }
    }
    assert!(pf.proc.running(), "{}", context(&mut pf));
    pf.proc.kill().await;
    let t = Transport {
        name: "port-forward over spdy",
        env: PF_SPDY,
        upgrade: "SPDY/3.1",
        protocol: "portforward.k8s.io",
    };
    assert_upgrades(&s.api, "portforward", before, 1, t);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_port_forward_to_loopback_of_pod_network() {
    // The conflist brings no `loopback` plugin: the runtime has to bring
    // `lo` up itself (kubelet/CRI-O/containerd do).
    let Some(mut s) = Setup::start("crius-kpf", false).await else {
        return;
    };
    let image = s.image.clone();
    let c = container(
        "web",
        &image,
        "mkdir -p /tmp/www && echo hello-kubectl-pf > /tmp/www/index.html && exec /bin/busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www",
        false,
        true,
    );
    let web = s.start_pod(&pod("kpf", "uid-kpf"), c).await;
    // Wait (bounded) for httpd, from inside the pod; a failure is only
    // noted: the port-forward check below says what kubectl sees.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = loop {
        let r =
            s.rt.exec_sync(ExecSyncRequest {
                container_id: web.clone(),
                cmd: [
                    "/bin/busybox",
                    "wget",
                    "-q",
                    "-O-",
                    "http://127.0.0.1:8080/index.html",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                timeout: 5,
            })
            .await;
        let text = match &r {
            Ok(r) => {
                let r = r.get_ref();
                if r.exit_code == 0
                    && String::from_utf8_lossy(&r.stdout).contains("hello-kubectl-pf")
                {
                    break "ready".to_string();
                }
                format!(
                    "wget in the pod: exit {} {}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stderr).trim()
                )
            }
            Err(e) => format!("ExecSync: {e:?}"),
        };
        if Instant::now() > deadline {
            let (state, code) = s.container_state(&web).await;
            let note = format!("NOT ready: {text}; container {state:?} (exit code {code})");
            eprintln!("kubectl_port_forward_to_loopback_of_pod_network: httpd {note}");
            break note;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    check_port_forward(&mut s, "kpf", 8080, "hello-kubectl-pf", &ready).await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_port_forward_to_host_network_pod() {
    let Some(mut s) = Setup::start("crius-kpfhost", true).await else {
        return;
    };
    let mut config = pod("kpfhost", "uid-kpfhost");
    config.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(host_network_options()),
        ..Default::default()
    });
    let image = s.image.clone();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = container(
        "web",
        &image,
        &format!("mkdir -p /tmp/www && echo hello-kubectl-hostnet > /tmp/www/index.html && exec /bin/busybox httpd -f -p 127.0.0.1:{port} -h /tmp/www"),
        false,
        true,
    );
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(host_network_options()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let web = s.start_pod(&config, c).await;
    // httpd shares the host's network: wait for it from here.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = loop {
        match http_get(port).await {
            Ok(p) if p.contains("hello-kubectl-hostnet") => break "ready".to_string(),
            r if Instant::now() > deadline => {
                let (state, code) = s.container_state(&web).await;
                let note = format!("NOT ready: {r:?}; container {state:?} (exit code {code})");
                eprintln!("kubectl_port_forward_to_host_network_pod: httpd {note}");
                break note;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    check_port_forward(&mut s, "kpfhost", port, "hello-kubectl-hostnet", &ready).await;
    s.finish().await;
}
