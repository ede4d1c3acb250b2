//! RunPodSandbox, StopPodSandbox and RemovePodSandbox.
//!
//! RunPodSandbox reserves the name, records the sandbox, prepares the pause
//! container's root filesystem and bundle, launches the pod's shim (which
//! creates the netns and /dev/shm), runs CNI ADD in that netns, writes the
//! pod's files and starts the pause container. Every step that succeeded is
//! undone, in reverse, when a later one fails.

use super::files;
use super::network::pod_network;
use crate::daemon::Daemon;
use crate::domain::{exits, now_nanos};
use crate::errors::CriError;
use crate::errors::{internal, spec_status};
use crate::errors::{invalid_field, store_status};
use crate::shimclient::{self, Shim};
use crius_netns::cni::{CniNetwork, PodNetwork};
use crius_spec::sandbox::{host_namespaces, HostNamespaces};
use crius_store::{Record, SandboxMetadata, SandboxRecord, SandboxState, SandboxStatus};
use k8s_cri::v1::{PodSandboxConfig, RunPodSandboxRequest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

fn cni(daemon: &Daemon) -> Result<CniNetwork, CriError> {
    daemon
        .cni_network()
        .map_err(|e| CriError::failed_precondition(format!("pod network is not ready: {e}")))
}

/// Records one CNI call (`add` or `del`) in the metrics.
fn observe_cni(daemon: &Daemon, op: &str, took: Duration, failed: bool) {
    let m = &daemon.metrics;
    m.cni_duration
        .with_label_values(&[op])
        .observe(took.as_secs_f64());
    if failed {
        m.cni_failures.with_label_values(&[op]).inc();
    }
}

async fn cni_add(
    daemon: &Daemon,
    network: CniNetwork,
    pod: PodNetwork,
) -> Result<(String, Vec<String>), CriError> {
    let span = tracing::debug_span!("cni", op = "add", sandbox = %pod.container_id);
    let net = daemon.net.clone();
    crate::telemetry::blocking(span, move || {
        let result = net
            .cni_add(&network, &pod)
            .map_err(|e| internal("CNI ADD", e))?;
        let ips = result
            .pod_ips(crius_netns::cni::DEFAULT_IFNAME)
            .ok_or_else(|| CriError::internal("CNI ADD returned no IP address for the pod"))?;
        Ok((
            ips.primary.to_string(),
            ips.additional.iter().map(|ip| ip.to_string()).collect(),
        ))
    })
    .await
    .map_err(|e| internal("CNI ADD", e))?
}

async fn cni_del(daemon: &Daemon, network: CniNetwork, pod: PodNetwork) -> Result<(), CriError> {
    let span = tracing::debug_span!("cni", op = "del", sandbox = %pod.container_id);
    let net = daemon.net.clone();
    crate::telemetry::blocking(span, move || {
        net.cni_del(&network, &pod)
            .map_err(|e| internal("CNI DEL", e))
    })
    .await
    .map_err(|e| internal("CNI DEL", e))?
}

async fn write_file(path: PathBuf, text: String) -> Result<(), CriError> {
    tokio::task::spawn_blocking(move || {
        // Bind-mounted into containers that may run as any user: 0644, like
        // containerd's. Run-time state: no fsync.
        crius_store::persist::write_volatile(&path, text.as_bytes(), 0o644)
            .map_err(|e| internal(&format!("cannot write {}", path.display()), e))
    })
    .await
    .map_err(|e| internal("write", e))?
}

/// How long each phase of a start-up took (shown in verbose status and in
/// the phase histograms).
pub struct Timeline {
    last: std::time::Instant,
    /// The phases so far.
    pub phases: Vec<crius_store::Phase>,
}

impl Timeline {
    /// Starts the clock.
    pub fn start() -> Self {
        Timeline {
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Time since the last mark.
    pub fn since_last(&self) -> Duration {
        self.last.elapsed()
    }

    /// Records the phase `name` as having taken `took` (for a phase that
    /// ran concurrently with the next one) and moves the clock on by as
    /// much, so that the next `mark` gets the rest.
    pub fn mark_took(&mut self, name: &str, took: Duration) {
        let took = took.min(self.last.elapsed());
        self.phases.push(crius_store::Phase {
            name: name.to_string(),
            nanos: u64::try_from(took.as_nanos().max(1)).unwrap_or(u64::MAX),
        });
        self.last += took;
    }

    /// Ends the phase `name` now.
    pub fn mark(&mut self, name: &str) {
        let now = std::time::Instant::now();
        let nanos = now.duration_since(self.last).as_nanos().max(1);
        self.phases.push(crius_store::Phase {
            name: name.to_string(),
            nanos: u64::try_from(nanos).unwrap_or(u64::MAX),
        });
        self.last = now;
    }
}

/// What a RunPodSandbox has done so far, for rollback.
#[derive(Default)]
struct Done {
    handler: String,
    name: Option<String>,
    record: bool,
    rootfs: bool,
    dirs: Vec<PathBuf>,
    shim: Option<Shim>,
    /// The shim launch was attempted (it may have forked the shim and then
    /// failed).
    launched: bool,
    network: Option<(CniNetwork, PodNetwork)>,
    /// The netns criusd made for the shim.
    netns: Option<PathBuf>,
}

impl Done {
    async fn undo(self, daemon: &Daemon, id: &str) {
        if let Some((network, pod)) = self.network {
            if let Err(e) = cni_del(daemon, network, pod).await {
                tracing::warn!(sandbox = id, error = %e.message(), "rollback: CNI DEL failed");
            }
        }
        if let Some(shim) = self.shim {
            if let Err(e) = shim.shutdown_sandbox(id).await {
                if e.is_not_found() {
                    // The shim never got the pod (CreateSandbox failed): it
                    // would idle forever. Stop it, as StopPodSandbox does.
                    if let Err(e) = shim.shutdown_now().await {
                        tracing::debug!(sandbox = id, error = %e, "rollback: shim shutdown");
                    }
                } else {
                    tracing::warn!(sandbox = id, error = %e, "rollback: shim shutdown failed");
                }
                // The shim could not clean up after itself (it may be
                // gone): do what it would have done, before the record that
                // would let Stop/Remove find these goes away.
                if let Err(e) = clean_after_dead_shim(daemon, id, &self.handler).await {
                    tracing::warn!(sandbox = id, error = %e.message(), "rollback: cleanup after the shim failed");
                }
            }
            daemon.shims.lock().await.remove(id);
        } else if self.launched {
            // The launch failed (its `start` process may have been killed)
            // after forking the shim, which may be up by now with its pod
            // directory: shut it down and clean up after it.
            for _ in 0..10 {
                let address = super::shim_address(daemon, id);
                if let Ok(shim) = daemon.shim_host.connect(&address).await {
                    if let Err(e) = shim.shutdown_now().await {
                        tracing::debug!(sandbox = id, error = %e, "rollback: shim shutdown");
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Err(e) = clean_after_dead_shim(daemon, id, &self.handler).await {
                tracing::warn!(sandbox = id, error = %e.message(), "rollback: cleanup after the shim launch failed");
            }
        }
        // Whether or not a shim took the netns over (and removed it).
        if let Some(n) = self.netns {
            if let Err(e) = daemon.net.remove_netns(&n) {
                tracing::warn!(sandbox = id, error = %e, "rollback: cannot remove the netns");
            }
        }
        if self.rootfs {
            if let Err(e) = daemon.images.remove_rootfs(id).await {
                tracing::warn!(sandbox = id, error = %e, "rollback: rootfs removal failed");
            }
        }
        for d in self.dirs.iter().rev() {
            if let Err(e) = crius_image::tree::remove_tree(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(sandbox = id, dir = %d.display(), error = %e, "rollback: cannot remove");
                }
            }
        }
        if self.record {
            if let Err(e) = daemon.store.remove_sandbox(id) {
                tracing::warn!(sandbox = id, error = %e, "rollback: record removal failed");
            }
        } else if let Some(name) = self.name {
            daemon.store.release_name(&name);
        }
    }
}

/// RunPodSandbox; returns the new sandbox id.
pub async fn run(daemon: &Arc<Daemon>, req: RunPodSandboxRequest) -> Result<String, CriError> {
    let handler_name =
        super::validate_run(req.config.as_ref(), &req.runtime_handler, &daemon.config())?;
    let config = req.config.unwrap_or_default();
    crius_spec::sandbox::validate(&config, &daemon.host).map_err(spec_status)?;
    crate::domain::userns::check_pod(daemon, &config, &handler_name).await?;
    let id = crius_store::generate_id();
    let meta = config.metadata.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "run_pod_sandbox",
        sandbox = %id,
        pod = %meta.name,
        namespace = %meta.namespace
    );
    crate::telemetry::record_ids(&id, "");
    // Held until the pod is ready or rolled back: a StopPodSandbox or
    // RemovePodSandbox that finds the record meanwhile waits for the
    // creation to finish instead of tearing it down half-way.
    let _lock = daemon.locks.lock(&id).await;
    let mut done = Done::default();
    match run_steps(daemon, &id, &handler_name, &config, &mut done)
        .instrument(span)
        .await
    {
        Ok(()) => Ok(id),
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e.message(), "RunPodSandbox failed; rolling back");
            done.undo(daemon, &id).await;
            Err(e)
        }
    }
}

async fn run_steps(
    daemon: &Arc<Daemon>,
    id: &str,
    handler_name: &str,
    config: &PodSandboxConfig,
    done: &mut Done,
) -> Result<(), CriError> {
    let mut timeline = Timeline::start();
    let name = super::sandbox_name(config);
    daemon.store.reserve_name(&name, id).map_err(store_status)?;
    done.name = Some(name.clone());
    done.handler = handler_name.to_string();
    let meta = config.metadata.clone().unwrap_or_default();
    let hn: HostNamespaces = host_namespaces(config);

    // The record comes first, so that a crash from here on leaves something
    // to clean up at the next start.
    let record: SandboxRecord = Record::new(
        SandboxMetadata {
            id: id.to_string(),
            name,
            namespace: meta.namespace.clone(),
            pod_name: meta.name.clone(),
            uid: meta.uid.clone(),
            attempt: meta.attempt,
            runtime_handler: handler_name.to_string(),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            created_at: now_nanos(),
            config: serde_json::to_value(config).map_err(|e| internal("config", e))?,
        },
        SandboxStatus::default(),
    );
    crate::domain::store_blocking(daemon, move |s| s.add_sandbox(record))
        .instrument(tracing::debug_span!(
            "store",
            op = "add_sandbox",
            sandbox = id
        ))
        .await?;
    done.record = true;
    timeline.mark("name_reservation");

    // The pause image, when the pod needs a pause.
    let (infra, holder) = infra_and_holder(&daemon.config(), config);
    let root_dir = daemon.paths.sandbox_root(id);
    let state_dir = daemon.paths.sandbox_state(id);
    let bundle = daemon.paths.sandbox_bundle(id);
    let shim_dir = daemon.shim_pod_dir(id);
    // The pause joins the shim's netns (made below and handed over, or for
    // a pod with its own user namespace made by the shim with it): the
    // spec is complete here, the shim runs it as it is.
    let facts = crius_spec::SandboxFacts {
        id: id.to_string(),
        netns_path: (!hn.network).then(|| shim_dir.netns().display().to_string()),
        shm_path: (!hn.ipc).then(|| shim_dir.shm().display().to_string()),
        ..Default::default()
    };
    let load = |p: &str| std::fs::read_to_string(p).map_err(|e| e.to_string());
    for d in [&root_dir, &state_dir] {
        done.dirs.push(d.clone());
    }
    // Private: <state>/sandboxes/<id>/bundle and <root>/sandboxes/<id>
    // (the pod files in it are 0644 for the containers' users, reached
    // through bind mounts only). <state>/sandboxes: see SHARED_PARENT_MODE;
    // a user namespace pod's own directories become 0711.
    crius_store::private::dir_with_mode(
        &daemon.paths.sandboxes_state(),
        crate::domain::userns::SHARED_PARENT_MODE,
    )
    .map_err(|e| internal("bundle", e))?;
    for d in [&state_dir, &bundle] {
        crius_store::private::dir(d).map_err(|e| internal("bundle", e))?;
    }
    for d in [&daemon.paths.sandboxes_root(), &root_dir] {
        crius_store::private::dir(d).map_err(|e| internal("sandbox dir", e))?;
    }
    let host = daemon.host_for(handler_name);
    let (mounts, userns) = if infra {
        // The runtime moves the pause into its cgroups when the shim runs
        // it: the kernel's wait for that starts now.
        daemon.cgroup_primer.prime();
        let pause = PauseBundle {
            id,
            config,
            facts: &facts,
            host: &host,
            state_dir: &state_dir,
            bundle: &bundle,
            load: &load,
        };
        pause.prepare(daemon, done, &mut timeline).await?
    } else {
        // Checked as for a pod with a pause (security profiles, resources),
        // although nothing runs with this spec.
        let nothing = crius_spec::ImageConfig {
            cmd: vec!["/pause".into()],
            ..Default::default()
        };
        tracing::debug_span!("spec", sandbox = id)
            .in_scope(|| crius_spec::sandbox::sandbox_spec(config, &nothing, &facts, &host, &load))
            .map_err(spec_status)?;
        (Vec::new(), None)
    };

    let (runtime, runtime_root) = runtime_binary_and_root(daemon, handler_name);
    timeline.mark(if infra {
        "pause_spec_and_rootfs"
    } else {
        "pod_spec_check"
    });

    // The pod's netns is made here and handed to the shim, which owns it
    // from CreateSandbox on (it removes it at shutdown, as one it made): CNI
    // ADD starts at once, beside the shim's start-up, instead of after it.
    // A pod with its own user namespace gets its netns (owned by that
    // namespace) from the shim's CreateSandbox: CNI ADD waits for that.
    let own_netns = (!hn.network && userns.is_none()).then(|| shim_dir.netns());
    if let Some(p) = own_netns.clone() {
        done.netns = Some(p.clone());
        let net = daemon.net.clone();
        tokio::task::spawn_blocking(move || net.create_netns(&p))
            .await
            .map_err(|e| internal("netns", e))?
            .map_err(|e| internal("cannot create the pod's network namespace", e))?;
    }
    timeline.mark("netns");
    let userns_netns = userns.as_ref().map(|_| shim_dir.netns());
    let netns = own_netns.clone().or(userns_netns);
    let (netns_made, netns_ready) = match &userns {
        Some(_) => {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let network = match (&netns, hn.network) {
        (Some(ns), false) => Some((
            cni(daemon)?,
            pod_network(id, ns, config, &daemon.pod_cidr()),
        )),
        (None, false) => return Err(CriError::internal("the pod has no network namespace")),
        (_, true) => None,
    };
    let cni_started = std::time::Instant::now();
    let add = async {
        let Some((network, pod)) = network.clone() else {
            return Ok(None);
        };
        if let Some(rx) = netns_ready {
            rx.await.map_err(|_| {
                CriError::internal("the shim made no network namespace for the pod")
            })?;
        }
        let r = cni_add(daemon, network, pod).await;
        let took = cni_started.elapsed();
        observe_cni(daemon, "add", took, r.is_err());
        r.map(|ips| Some((ips, took)))
    };
    let no_infra = (!infra).then(|| shimclient::NoInfra {
        pid_holder: holder,
        hostname: config.hostname.clone(),
        sysctls: config
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default(),
    });
    let pod_shim = PodShim {
        id,
        runtime: &runtime,
        runtime_root: &runtime_root,
        bundle: &bundle,
        mounts: &mounts,
        netns: netns.as_deref(),
        owned_netns: own_netns.is_some(),
        hn,
        no_infra: no_infra.as_ref(),
        infra,
        userns: userns.as_ref(),
    };
    let mut shim_side = ShimSide::default();
    // The pod network and the shim's part (spawn, CreateSandbox, the pause
    // or the start of a pod without one), at the same time: neither needs
    // the other. Whatever fails, both are undone by the rollback: the shim
    // shutdown kills a started pause, and a CNI ADD that was tried gets its
    // DEL.
    let (added, shimmed) = tokio::join!(add, pod_shim.run(daemon, &mut shim_side, netns_made));
    // Even a failed ADD gets a DEL: plugins may have half-attached.
    done.network = network;
    done.launched = shim_side.launched;
    done.shim = shim_side.shim.clone();
    let added = added?;
    let (address, pid, ipc_ns, uts_ns) = shimmed?;
    // The two ran side by side. The timeline keeps adding up to the wall
    // time: the side that finished first shows its own durations, the
    // other what it took beyond that. The phase histograms get every
    // phase's own duration.
    let cni_took = added.as_ref().map(|(_, t)| *t).unwrap_or(Duration::ZERO);
    let shim_took: Duration = shim_side.phases.iter().map(|(_, d)| *d).sum();
    if cni_took <= shim_took {
        timeline.mark_took("cni_add", cni_took);
        if let Some(((last, _), rest)) = shim_side.phases.split_last() {
            for (name, d) in rest {
                timeline.mark_took(name, *d);
            }
            timeline.mark(last);
        }
    } else {
        for (name, d) in &shim_side.phases {
            timeline.mark_took(name, *d);
        }
        timeline.mark("cni_add");
    }
    let mut own = shim_side.phases.clone();
    own.push(("cni_add", cni_took));
    let netns = netns.map(|p| p.display().to_string());
    run_pod(
        daemon,
        id,
        config,
        timeline,
        RunFacts {
            hn,
            root_dir,
            netns,
            ipc_ns,
            uts_ns,
            address,
            pid,
            added: added.map(|(ips, _)| ips),
            own,
        },
    )
    .await
}

/// What the shim side of RunPodSandbox got to, for the rollback, and how
/// long its phases took.
#[derive(Default)]
struct ShimSide {
    launched: bool,
    shim: Option<Shim>,
    phases: Vec<(&'static str, Duration)>,
}

/// The shim's part of a pod start.
struct PodShim<'a> {
    id: &'a str,
    runtime: &'a str,
    runtime_root: &'a Path,
    bundle: &'a Path,
    mounts: &'a [shimclient::TaskMount],
    netns: Option<&'a Path>,
    owned_netns: bool,
    hn: HostNamespaces,
    no_infra: Option<&'a shimclient::NoInfra>,
    infra: bool,
    /// The mappings of the pod's own user namespace, which the shim makes
    /// with the netns.
    userns: Option<&'a crius_shim_api::idmap::IdMaps>,
}

impl PodShim<'_> {
    /// Spawns the shim, has it create the sandbox and start it (the pause,
    /// or nothing for a pod without one); returns its address, the pause
    /// pid (0 without one) and the pinned IPC/UTS namespaces. The client
    /// is left in `side` (and the daemon's table).
    async fn run(
        &self,
        daemon: &Arc<Daemon>,
        side: &mut ShimSide,
        netns_made: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(String, u32, Option<String>, Option<String>), CriError> {
        let id = self.id;
        let mut clock = std::time::Instant::now();
        let mut lap = |side: &mut ShimSide, name: &'static str| {
            let now = std::time::Instant::now();
            side.phases.push((name, now - clock));
            clock = now;
        };
        let launcher = daemon.launcher().map_err(CriError::from)?;
        side.launched = true;
        let launched = launcher
            .start(id, self.bundle, self.runtime, self.runtime_root)
            .await
            .map_err(CriError::from)?;
        // Into a systemd scope of its own (systemd driver only), in a task
        // of its own: never waited for, never failing the pod.
        if let Some(pid) = launched.pid {
            daemon
                .shim_scopes
                .place(id, pid, &daemon.config().shim_slice);
        }
        let address = launched.address;
        let shim = daemon
            .shim_host
            .connect(&address)
            .await
            .map_err(CriError::from)?;
        side.shim = Some(shim.clone());
        daemon
            .shims
            .lock()
            .await
            .insert(id.to_string(), shim.clone());
        lap(side, "shim_spawn");
        daemon
            .metrics
            .shim_spawn_duration
            .observe(side.phases[0].1.as_secs_f64());
        let mut create = containerd_shim_protos::sandbox_api::CreateSandboxRequest::new();
        create.sandbox_id = id.to_string();
        create.bundle_path = self.bundle.display().to_string();
        create.rootfs = crate::shimclient::proto_task_mounts(self.mounts);
        if let (Some(ns), None) = (self.netns, self.userns) {
            create.netns_path = ns.display().to_string();
        }
        let shm_size = daemon
            .config()
            .shm_size_bytes()
            .map_err(|e| internal("shm_size", e))?;
        create.annotations = shimclient::PodOptions {
            host_network: self.hn.network,
            host_ipc: self.hn.ipc,
            shm_size,
            no_infra: self.no_infra.cloned(),
            netns_owned: self.owned_netns,
            userns: self.userns.cloned(),
        }
        .encode();
        shim.create_sandbox(create).await.map_err(CriError::from)?;
        if let Some(tx) = netns_made {
            // The pod's netns is there: CNI ADD may go.
            let _ = tx.send(());
        }
        let status = shim.sandbox_status(id).await.map_err(CriError::from)?;
        let info = |k: &str| status.info.get(k).cloned().filter(|s| !s.is_empty());
        let (ipc_ns, uts_ns) = (info("ipc"), info("uts"));
        lap(side, "sandbox_create");
        let pid = shim.start_sandbox(id).await.map_err(CriError::from)?;
        lap(
            side,
            if self.infra {
                "pause_create_and_start"
            } else {
                "pod_start"
            },
        );
        Ok((address, pid, ipc_ns, uts_ns))
    }
}

/// What the pause container's bundle is made from.
struct PauseBundle<'a> {
    id: &'a str,
    config: &'a PodSandboxConfig,
    facts: &'a crius_spec::SandboxFacts,
    host: &'a crius_spec::HostFacts,
    state_dir: &'a Path,
    bundle: &'a Path,
    load: &'a (dyn Fn(&str) -> Result<String, String> + Sync),
}

impl PauseBundle<'_> {
    /// The pause container's root filesystem and bundle (in the existing
    /// bundle directory); returns the rootfs mounts the shim makes and the
    /// mappings of a pod with its own user namespace (which the shim makes,
    /// with a netns owned by it).
    async fn prepare(
        &self,
        daemon: &Arc<Daemon>,
        done: &mut Done,
        timeline: &mut Timeline,
    ) -> Result<
        (
            Vec<shimclient::TaskMount>,
            Option<crius_shim_api::idmap::IdMaps>,
        ),
        CriError,
    > {
        let PauseBundle {
            id,
            config,
            facts,
            host,
            state_dir,
            bundle,
            load,
        } = *self;
        let pause_ref = daemon.config().pause_image.clone();
        let resolved = tracing::debug_span!("image", op = "resolve", image = %pause_ref)
            .in_scope(|| daemon.images.resolve(&pause_ref));
        let image = match resolved.map_err(|e| internal("pause image", e))? {
            Some(i) => i,
            None => crate::image::pull(daemon, &pause_ref, None)
                .await
                .map_err(|e| {
                    CriError::failed_precondition(format!(
                        "cannot pull the pause image {pause_ref}: {e}"
                    ))
                })?,
        };
        timeline.mark("image");
        let image_config = daemon
            .images
            .image_config(&image.metadata.id)
            .map_err(|e| internal("pause image config", e))?;

        // A mount point (the overlay's root covers its mode).
        crius_store::private::dir(&bundle.join("rootfs")).map_err(|e| internal("bundle", e))?;
        let mounts = daemon
            .images
            .prepare_rootfs(&image.metadata.id, id)
            .instrument(tracing::debug_span!(
                "image",
                op = "prepare_rootfs",
                sandbox = id
            ))
            .await
            .map_err(|e| internal("pause rootfs", e))?;
        done.rootfs = true;
        // The pause needs neither setuid files nor device nodes.
        let mounts = crate::domain::harden_rootfs(mounts, true, true);

        let spec_image = image_config.spec_config();
        let spec = tracing::debug_span!("spec", sandbox = id)
            .in_scope(|| crius_spec::sandbox::sandbox_spec(config, &spec_image, facts, host, load))
            .map_err(spec_status)?;
        // A pod with its own user namespace: idmapped pause rootfs made here.
        let userns_pin = daemon.shim_pod_dir(id).userns();
        let userns =
            crate::domain::userns::pause(config, spec, mounts, state_dir, bundle, &userns_pin)
                .await?;
        let spec_json = serde_json::to_vec_pretty(&userns.spec).map_err(|e| internal("spec", e))?;
        crius_store::persist::write_volatile(&bundle.join("config.json"), &spec_json, 0o600)
            .map_err(|e| internal("config.json", e))?;
        Ok((userns.mounts, userns.userns))
    }
}

/// What holds a pod's namespaces: (a pause container, the shim's
/// PID-namespace holder); neither: the shim's pins alone. A pod needs an
/// infra process for a shared PID namespace or a user namespace of its
/// own; the holder serves the first only, when the configuration allows.
fn infra_and_holder(cfg: &crate::config::Config, config: &PodSandboxConfig) -> (bool, bool) {
    let needs = crius_spec::sandbox::needs_infra(config);
    let holder = cfg.drop_infra_container
        && cfg.pid_holder
        && needs
        && matches!(crius_spec::userns::pod_mappings(config), Ok(None));
    ((!cfg.drop_infra_container || needs) && !holder, holder)
}

/// What RunPodSandbox knows once the network and the shim are done.
struct RunFacts {
    hn: HostNamespaces,
    root_dir: PathBuf,
    netns: Option<String>,
    ipc_ns: Option<String>,
    uts_ns: Option<String>,
    address: String,
    pid: u32,
    added: Option<(String, Vec<String>)>,
    /// Every phase's own duration, for the histograms.
    own: Vec<(&'static str, Duration)>,
}

/// The rest of RunPodSandbox: the pod files and the READY record.
async fn run_pod(
    daemon: &Arc<Daemon>,
    id: &str,
    config: &PodSandboxConfig,
    mut timeline: Timeline,
    facts: RunFacts,
) -> Result<(), CriError> {
    let RunFacts {
        hn,
        root_dir,
        netns,
        ipc_ns,
        uts_ns,
        address,
        pid,
        added,
        own,
    } = facts;
    let (ip, additional_ips) = match added {
        Some((ip, more)) => (Some(ip), more),
        None => (None, Vec::new()),
    };

    // Pod files (they need the pod's IPs; the pause does not use them).
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = files::resolv_conf(config.dns_config.as_ref(), &host_resolv)
        .map_err(|m| invalid_field("config.dns_config", m))?;
    let hostname = if hn.network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    let mut pod_ips: Vec<String> = ip.iter().cloned().collect();
    pod_ips.extend(additional_ips.iter().cloned());
    // The three at once, each on a blocking thread of its own.
    tokio::try_join!(
        write_file(root_dir.join("resolv.conf"), resolv),
        write_file(root_dir.join("hostname"), files::hostname_file(&hostname)),
        write_file(
            root_dir.join("hosts"),
            files::hosts_file(&hostname, &pod_ips),
        ),
    )?;
    timeline.mark("pod_files");
    let phases = timeline.phases;
    let mut observed = phases.clone();
    for p in observed.iter_mut() {
        if let Some((_, took)) = own.iter().find(|(n, _)| *n == p.name) {
            p.nanos = u64::try_from(took.as_nanos().max(1)).unwrap_or(u64::MAX);
        }
    }
    daemon.metrics.observe_phases(true, &observed);
    let store = daemon.store.clone();
    let sid = id.to_string();
    let span = tracing::debug_span!("store", op = "update_sandbox_status", sandbox = id);
    crate::telemetry::blocking(span, move || {
        store.update_sandbox_status(&sid, |s| {
            s.state = SandboxState::Ready;
            // A pod without a pause has no pid.
            s.pid = (pid != 0).then_some(pid);
            s.netns_path = netns;
            s.ipc_path = ipc_ns;
            s.uts_path = uts_ns;
            s.ip = ip;
            s.additional_ips = additional_ips;
            s.shim_address = Some(address);
            s.timeline = phases;
        })
    })
    .await
    .map_err(|e| internal("store", e))?
    .map_err(store_status)?;
    tracing::info!(sandbox = %id, pid, "pod sandbox ready");
    Ok(())
}

/// How long StopPodSandbox lets a container react to its stop signal: none,
/// as in containerd, since kubelet gives each container its grace period in
/// StopContainer before it stops the pod (a grace here only delays pods
/// whose PID 1 ignores SIGTERM).
const CONTAINER_STOP_GRACE: Duration = Duration::ZERO;

/// How often CNI DEL is tried before StopPodSandbox gives up.
const CNI_DEL_ATTEMPTS: u32 = 3;

async fn cni_del_retried(
    daemon: &Daemon,
    id: &str,
    netns: &Path,
    config: &PodSandboxConfig,
) -> Result<(), CriError> {
    let mut last = None;
    for attempt in 0..CNI_DEL_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        let network = match cni(daemon) {
            Ok(n) => n,
            Err(e) => {
                // Without a network config there is nothing to call DEL on.
                tracing::warn!(sandbox = %id, error = %e.message(), "no CNI config for DEL");
                return Ok(());
            }
        };
        if attempt == 0 && daemon.config().cni.teardown_netns_first && !network.del_needs_netns() {
            // DEL then runs with an empty CNI_NETNS, as for a namespace that
            // is already gone, and nobody waits for the pod's interfaces to
            // be unregistered: the kernel does it when the last process of
            // the pod has left the namespace.
            let path = netns.to_path_buf();
            let net = daemon.net.clone();
            match tokio::task::spawn_blocking(move || net.remove_netns(&path)).await {
                Ok(Ok(())) => tracing::debug!(sandbox = %id, "netns removed before CNI DEL"),
                Ok(Err(e)) => {
                    tracing::warn!(sandbox = %id, error = %e, "cannot remove the netns before CNI DEL")
                }
                Err(e) => tracing::warn!(sandbox = %id, error = %e, "netns removal task failed"),
            }
        }
        let started = std::time::Instant::now();
        let r = cni_del(
            daemon,
            network,
            pod_network(id, netns, config, &daemon.pod_cidr()),
        )
        .await;
        observe_cni(daemon, "del", started.elapsed(), r.is_err());
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(sandbox = %id, attempt, error = %e.message(), "CNI DEL failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| CriError::internal("CNI DEL failed")))
}

/// The runtime binary of a handler (the default one for "") and the
/// `--root` the shim is launched with (the shim adds the namespace).
fn runtime_binary_and_root(daemon: &Daemon, handler: &str) -> (String, PathBuf) {
    let h = daemon.handler(handler).1.unwrap_or_default();
    let root = if h.root.is_empty() {
        daemon.config().state.join("runc")
    } else {
        PathBuf::from(&h.root)
    };
    (h.path, root)
}

/// Has the shim binary's `delete` action clean up after the dead shim of
/// task `id` (bundle `bundle`) of a pod with runtime handler `handler`: the
/// runtime's delete, the rootfs unmount and, for `pod`, the pod's private
/// directory. No process runs when nothing is left.
pub(crate) async fn shim_delete(
    daemon: &Daemon,
    handler: &str,
    id: &str,
    bundle: &Path,
    pod: bool,
) -> Result<(), CriError> {
    let (runtime, root) = runtime_binary_and_root(daemon, handler);
    daemon
        .launcher()?
        .delete(id, bundle, &runtime, &root, pod)
        .await
        .map_err(|e| internal("cleanup after the shim", e))
}

/// Removes what a pod's shim owns (its containers, netns, pinned IPC and
/// UTS namespaces, /dev/shm, the rootfs mounts) when the shim could not do
/// it itself because it is gone: the shim binary's `delete` action does it,
/// for each container of the pod, then for the pod (which also deletes
/// the pod's containers no record names, and the pause).
async fn clean_after_dead_shim(daemon: &Daemon, id: &str, handler: &str) -> Result<(), CriError> {
    for c in daemon.store.list_sandbox_containers(id) {
        let cid = c.metadata.id;
        let bundle = daemon.paths.container_bundle(&cid);
        shim_delete(daemon, handler, &cid, &bundle, false).await?;
    }
    let bundle = daemon.paths.sandbox_bundle(id);
    shim_delete(daemon, handler, id, &bundle, true).await
}

/// StopPodSandbox: tears the network down (CNI DEL), then has the shim kill
/// every process of the pod, unmount its /dev/shm, remove its netns and
/// exit. Idempotent, and works when the shim already died.
pub async fn stop(daemon: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    stop_inner(daemon, id)
        .instrument(tracing::info_span!("stop_pod_sandbox", sandbox = %id))
        .await
}

async fn stop_inner(daemon: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    // Stopping a pod that does not exist succeeds (CRI: Stop is idempotent).
    let Some(record) = crate::domain::present(daemon.store.get_sandbox(id))? else {
        return Ok(());
    };
    let id = record.metadata.id.clone();
    let _lock = daemon.locks.lock(&id).await;
    let Some(record) = crate::domain::present(daemon.store.get_sandbox(&id))? else {
        return Ok(());
    };
    let config = super::view::stored_config(&record);
    let hn = host_namespaces(&config);
    // The pod's containers first, all at once, so that their exits are
    // recorded; what is left is killed with the pod below. A container in
    // the pod's shared PID namespace needs no SIGKILL of every process
    // (a runtime invocation): the pod's PID 1 (pause or holder), killed
    // first then, takes the whole namespace with it.
    let pod_pid1 = record.status.pid.is_some_and(|p| p > 0);
    let running: Vec<(String, bool)> = daemon
        .store
        .list_sandbox_containers(&id)
        .into_iter()
        .filter(|c| c.status.state == crius_store::ContainerState::Running)
        .map(|c| {
            let shared = crius_spec::container::in_pod_pid_namespace(
                &crate::domain::container::view::stored_config(&c),
                &config,
                pod_pid1,
            );
            (c.metadata.id, !shared)
        })
        .collect();
    let shim = match daemon.shim(&id).await {
        Some(s) => Some(s),
        // No address recorded: criusd died while the shim was starting,
        // which may have come up since at the address it derives.
        None => daemon
            .shim_host
            .connect(&super::shim_address(daemon, &id))
            .await
            .ok(),
    };
    // The containers and the pause are killed while CNI DEL runs: the
    // plugins at most need the netns, which the shim keeps until its
    // shutdown below (unless DEL does without it, see cni_del_retried).
    // In a pod whose containers share its PID namespace, the pod's PID 1
    // (pause or holder) goes first: the kernel then kills every process of
    // that namespace at once, the containers' inits and whatever they
    // started (which would otherwise keep a container's output open, and
    // its exit unreported, until the PID 1 died).
    let pid1_first = running.iter().any(|(_, every_process)| !every_process);
    let stop_pod = || async {
        if let Some(shim) = &shim {
            if let Err(e) = shim.stop_sandbox(&id, Duration::ZERO).await {
                // The shutdown below kills what is left (or cleans up after
                // a dead shim).
                tracing::debug!(sandbox = %id, error = %e, "stopping the pod's process failed");
            }
        }
    };
    let kill = async {
        if pid1_first {
            stop_pod().await;
        }
        let stops = running.iter().map(|(cid, every_process)| {
            crate::domain::container::lifecycle::stop_reaching(
                daemon,
                cid,
                CONTAINER_STOP_GRACE,
                *every_process,
            )
        });
        for ((cid, _), r) in running
            .iter()
            .zip(futures_util::future::join_all(stops).await)
        {
            if let Err(e) = r {
                tracing::warn!(sandbox = %id, container = %cid, error = %e.message(), "stopping container failed");
            }
        }
        crate::nri::events::stop_pod_sandbox(daemon, &record).await;
        if !pid1_first {
            stop_pod().await;
        }
    };
    let del = async {
        match (&record.status.netns_path, hn.network) {
            (Some(ns), false) => cni_del_retried(daemon, &id, Path::new(ns), &config).await,
            _ => Ok(()),
        }
    };
    let ((), deleted) = tokio::join!(kill, del);
    deleted?;
    let shut_down = match &shim {
        Some(shim) => match shim.shutdown_sandbox(&id).await {
            Ok(()) => true,
            Err(e) if e.is_not_found() => {
                // A shim that never got the pod: it would idle forever.
                tracing::info!(sandbox = %id, "the shim does not know the pod; shutting it down");
                if let Err(e) = shim.shutdown_now().await {
                    tracing::warn!(sandbox = %id, error = %e, "cannot shut the idle shim down");
                }
                false
            }
            Err(e) if e.is_unreachable() => {
                tracing::info!(sandbox = %id, error = %e, "shim already gone");
                false
            }
            Err(e) => return Err(CriError::from(&e)),
        },
        None => false,
    };
    daemon.shims.lock().await.remove(&id);
    if !shut_down {
        clean_after_dead_shim(daemon, &id, &record.metadata.runtime_handler).await?;
    }
    exits::pod_containers(daemon, &id, &exits::pod_stopped()).await;
    exits::pod_not_ready(daemon, &id).await
}

/// Whether a pod's shim directory holds more than the shim's log: after a
/// clean StopPodSandbox only `shim.log` is left (until the shim, on its way
/// out, removes the directory); a netns, shm or anything else means the pod
/// was not torn down (its shim died).
fn shim_left_things(dir: &shimclient::PodDir) -> bool {
    match std::fs::read_dir(dir.path()) {
        Ok(entries) => entries
            .flatten()
            .any(|e| e.file_name() != std::ffi::OsStr::new(shimclient::PodDir::LOG)),
        Err(_) => false,
    }
}

/// RemovePodSandbox: stops the pod (if that has not happened) and removes
/// its root filesystem, directories and record. Removing an unknown sandbox
/// succeeds.
pub async fn remove(daemon: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    remove_inner(daemon, id)
        .instrument(tracing::info_span!("remove_pod_sandbox", sandbox = %id))
        .await
}

async fn remove_inner(daemon: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    let Some(record) = crate::domain::present(daemon.store.get_sandbox(id))? else {
        return Ok(());
    };
    let id = record.metadata.id.clone();
    // A RunPodSandbox still creating the pod holds its lock: wait for it,
    // then go by what it left.
    drop(daemon.locks.lock(&id).await);
    let Some(record) = crate::domain::present(daemon.store.get_sandbox(&id))? else {
        return Ok(());
    };
    if record.status.state == SandboxState::Ready || shim_left_things(&daemon.shim_pod_dir(&id)) {
        stop(daemon, &id).await?;
    }
    for c in daemon.store.list_sandbox_containers(&id) {
        crate::domain::container::lifecycle::remove(daemon, &c.metadata.id).await?;
    }
    let _lock = daemon.locks.lock(&id).await;
    if daemon.store.get_sandbox(&id).is_err() {
        return Ok(());
    }
    daemon
        .images
        .remove_rootfs(&id)
        .await
        .map_err(|e| internal("rootfs", e))?;
    for d in [
        daemon.paths.sandbox_state(&id),
        daemon.paths.sandbox_root(&id),
        daemon.shim_pod_dir(&id).path().to_path_buf(),
    ] {
        // Any depth, few descriptors, and never into a mount left inside.
        match crius_image::tree::remove_tree(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(&format!("cannot remove {}", d.display()), e)),
        }
    }
    crate::domain::store_blocking(daemon, move |s| s.remove_sandbox(&id)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shimclient::ShimApi;
    use crate::testing::{id_of, run_request, Scripted, TestDaemon};
    use ttrpc::Code;

    /// The journal after the failing call, without the CNI ADD that ran
    /// beside the shim's steps: what the rollback did, in order.
    fn after(journal: &[String], failed: &str) -> Vec<String> {
        let at = journal
            .iter()
            .position(|e| e == failed)
            .unwrap_or_else(|| panic!("no {failed:?} in {journal:?}"));
        journal[at + 1..]
            .iter()
            .filter(|e| !e.starts_with("CniAdd "))
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn run_pod_sandbox_failing_at_each_step_rolls_back_in_reverse() {
        // (step scripted to fail, how, the last step done before the
        // rollback, what the rollback does; `ID` stands for the sandbox id).
        let tries = |id: &'static str| std::iter::repeat_n(id, 10).collect::<Vec<_>>();
        let cases: Vec<(&'static str, Scripted, &str, Vec<&str>)> = vec![
            // The netns is removed whether or not its creation got far.
            (
                "NetnsCreate",
                Scripted::Fail(Code::INTERNAL),
                "NetnsCreate ID",
                vec!["NetnsRemove ID"],
            ),
            // A launch that failed may have forked the shim: it is looked
            // for at its address, then cleaned up after by `delete`.
            (
                "Launch",
                Scripted::Fail(Code::INTERNAL),
                "Launch ID",
                [
                    vec!["CniDel ID"],
                    tries("Connect "),
                    vec!["ShimDeletePod ID", "NetnsRemove ID"],
                ]
                .concat(),
            ),
            (
                "Connect",
                Scripted::Unreachable,
                "Connect ID",
                [
                    vec!["CniDel ID"],
                    tries("Connect ID"),
                    vec!["ShimDeletePod ID", "NetnsRemove ID"],
                ]
                .concat(),
            ),
            // A shim that never got the pod cannot shut it down: `delete`
            // cleans up after it.
            (
                "CreateSandbox",
                Scripted::Fail(Code::INTERNAL),
                "CreateSandbox ID",
                vec![
                    "CniDel ID",
                    "ShutdownSandbox ID",
                    "Shutdown ID",
                    "ShimDeletePod ID",
                    "NetnsRemove ID",
                ],
            ),
            (
                "SandboxStatus",
                Scripted::Fail(Code::INTERNAL),
                "SandboxStatus ID",
                vec!["CniDel ID", "ShutdownSandbox ID", "NetnsRemove ID"],
            ),
            (
                "StartSandbox",
                Scripted::Fail(Code::INTERNAL),
                "StartSandbox ID",
                vec!["CniDel ID", "ShutdownSandbox ID", "NetnsRemove ID"],
            ),
            // CNI ADD runs beside the shim's steps, which all finish.
            (
                "CniAdd",
                Scripted::Fail(Code::INTERNAL),
                "StartSandbox ID",
                vec!["CniDel ID", "ShutdownSandbox ID", "NetnsRemove ID"],
            ),
        ];
        for (step, how, last, undo) in cases {
            let t = TestDaemon::start();
            let d = &t.daemon;
            t.fakes.script(step, how);
            let req = run_request("web");
            let name = super::super::sandbox_name(req.config.as_ref().unwrap());
            let err = run(d, req.clone()).await.expect_err(step);
            let journal = t.fakes.journal();
            let id = id_of(&t.fakes, "NetnsCreate");
            let want: Vec<String> = undo.iter().map(|e| e.replace("ID", &id)).collect();
            let got = after(&journal, &last.replace("ID", &id));
            assert_eq!(got, want, "{step}: {}; journal {journal:?}", err.message());
            // Nothing is left: record, name, netns, attachment, connection,
            // directories, rootfs.
            assert!(d.store.list_sandboxes().is_empty(), "{step}");
            assert_eq!(d.store.name_holder(&name), None, "{step}");
            assert!(t.fakes.netns_held().is_empty(), "{step}");
            assert!(t.fakes.attached().is_empty(), "{step}");
            assert!(d.shims.lock().await.is_empty(), "{step}");
            if let Some(shim) = t.fakes.shim_of(&id) {
                assert!(!shim.has_sandbox(), "{step}: the shim still holds the pod");
            }
            for dir in [
                d.paths.sandbox_root(&id),
                d.paths.sandbox_state(&id),
                d.config().root.join("images/containers").join(&id),
            ] {
                assert!(!dir.exists(), "{step}: {} is left", dir.display());
            }
            // The name can be used again.
            t.fakes.unscript(step);
            let id2 = run(d, req)
                .await
                .unwrap_or_else(|e| panic!("{step}: {}", e.message()));
            let record = d.store.get_sandbox(&id2).unwrap();
            assert_eq!(record.status.state, SandboxState::Ready, "{step}");
            assert_eq!(d.store.name_holder(&name), Some(id2.clone()), "{step}");
            assert!(t.fakes.shim_of(&id2).unwrap().has_sandbox(), "{step}");
        }
    }

    #[tokio::test]
    async fn a_ready_pod_has_its_shim_network_and_files() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        let id = run(d, run_request("web")).await.unwrap();
        let record = d.store.get_sandbox(&id).unwrap();
        assert_eq!(record.status.state, SandboxState::Ready);
        assert!(record
            .status
            .ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.88.0.")));
        let shim = t.fakes.shim_of(&id).unwrap();
        assert_eq!(record.status.shim_address.as_deref(), Some(shim.address()));
        assert_eq!(
            t.fakes.calls(&[
                "Launch",
                "Connect",
                "CreateSandbox",
                "SandboxStatus",
                "StartSandbox"
            ]),
            [
                "Launch",
                "Connect",
                "CreateSandbox",
                "SandboxStatus",
                "StartSandbox"
            ]
            .map(|m| format!("{m} {id}"))
        );
        assert_eq!(t.fakes.attached(), std::slice::from_ref(&id));
        assert_eq!(t.fakes.netns_held(), [d.shim_pod_dir(&id).netns()]);
        for f in ["hosts", "hostname", "resolv.conf"] {
            assert!(d.paths.sandbox_root(&id).join(f).is_file(), "{f}");
        }
    }

    #[tokio::test]
    async fn stop_and_remove_are_idempotent() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        // Unknown ids.
        for id in ["", "nope", "0123456789abcdef"] {
            stop(d, id).await.unwrap();
            remove(d, id).await.unwrap();
        }
        let id = run(d, run_request("web")).await.unwrap();
        // Stopped twice, removed twice (and stopped after removal).
        stop(d, &id).await.unwrap();
        stop(d, &id).await.unwrap();
        assert_eq!(
            d.store.get_sandbox(&id).unwrap().status.state,
            SandboxState::NotReady
        );
        // The shim was shut down once (CNI DEL, idempotent, is repeated).
        assert_eq!(
            t.fakes.calls(&["ShutdownSandbox"]),
            [format!("ShutdownSandbox {id}")]
        );
        assert!(!t.fakes.shim_of(&id).unwrap().alive());
        remove(d, &id).await.unwrap();
        remove(d, &id).await.unwrap();
        stop(d, &id).await.unwrap();
        assert!(d.store.get_sandbox(&id).is_err());
        assert!(t.fakes.netns_held().is_empty());
        assert!(t.fakes.attached().is_empty());
        for dir in [d.paths.sandbox_root(&id), d.paths.sandbox_state(&id)] {
            assert!(!dir.exists(), "{}", dir.display());
        }
        // The name is free again.
        run(d, run_request("web")).await.unwrap();
    }

    #[tokio::test]
    async fn stop_of_a_pod_whose_shim_died_has_delete_clean_up() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        let id = run(d, run_request("web")).await.unwrap();
        t.fakes.shim_of(&id).unwrap().die();
        d.shims.lock().await.clear();
        t.fakes.clear_journal();
        stop(d, &id).await.unwrap();
        assert_eq!(
            t.fakes
                .calls(&["CniDel", "ShimDeletePod", "ShutdownSandbox"]),
            [format!("CniDel {id}"), format!("ShimDeletePod {id}")]
        );
        assert_eq!(
            d.store.get_sandbox(&id).unwrap().status.state,
            SandboxState::NotReady
        );
        remove(d, &id).await.unwrap();
        assert!(d.store.get_sandbox(&id).is_err());
    }

    #[test]
    fn infra_and_holder_by_configuration_and_pod() {
        use crius_spec::testutil::pod_with_namespaces as pod;
        use k8s_cri::v1::{IdMapping, NamespaceMode, NamespaceOption, UserNamespace};
        let pid = |m: NamespaceMode| {
            pod(Some(NamespaceOption {
                pid: m as i32,
                ..Default::default()
            }))
        };
        let map = vec![IdMapping {
            host_id: 100_000,
            container_id: 0,
            length: 65_536,
        }];
        let userns = pod(Some(NamespaceOption {
            pid: NamespaceMode::Pod as i32,
            userns_options: Some(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: map.clone(),
                gids: map,
            }),
            ..Default::default()
        }));
        let none = pod(None);
        let shared = pid(NamespaceMode::Pod);
        let own = pid(NamespaceMode::Container);
        let node = pid(NamespaceMode::Node);
        // (drop_infra_container, pid_holder, pod, (pause, holder)).
        let cases: Vec<(bool, bool, &PodSandboxConfig, (bool, bool))> = vec![
            // The defaults: a shared PID namespace gets the holder, a user
            // namespace the pause, the rest neither.
            (true, true, &none, (false, true)),
            (true, true, &shared, (false, true)),
            (true, true, &own, (false, false)),
            (true, true, &node, (false, false)),
            (true, true, &userns, (true, false)),
            // pid_holder = false: the pause for a shared PID namespace.
            (true, false, &none, (true, false)),
            (true, false, &shared, (true, false)),
            (true, false, &own, (false, false)),
            (true, false, &userns, (true, false)),
            // drop_infra_container = false: a pause for every pod.
            (false, true, &none, (true, false)),
            (false, true, &own, (true, false)),
            (false, true, &userns, (true, false)),
            (false, false, &shared, (true, false)),
        ];
        for (i, (drop_infra, holder, config, want)) in cases.into_iter().enumerate() {
            let cfg = crate::config::Config {
                drop_infra_container: drop_infra,
                pid_holder: holder,
                ..Default::default()
            };
            assert_eq!(infra_and_holder(&cfg, config), want, "case {i}");
        }
        let defaults = crate::config::Config::default();
        assert!(defaults.drop_infra_container && defaults.pid_holder);
    }
}
