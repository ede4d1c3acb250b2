//! Shims in systemd scopes of their own (the systemd cgroup driver).
//!
//! criusd runs as `crius.service` with `KillMode=process` and
//! `Delegate=yes`: stopping or restarting the service kills criusd alone,
//! never the per-pod shims it launched, which keep their pods running and
//! are adopted again at start-up. Left where they are born, though, every
//! shim stays in crius.service's cgroup: systemd charges their CPU and
//! memory to criusd (`systemctl status crius` lists every shim, and a
//! `MemoryMax=` on the service would count them), and a later
//! `KillMode=control-group` or an OOM kill of the service's cgroup would
//! take all pods with it. CRI-O puts its per-container monitors (conmon)
//! into a cgroup of their own for the same reasons (`conmon_cgroup`).
//!
//! So with `cgroup_driver = "systemd"` on a host whose init is systemd,
//! criusd asks systemd, right after it has launched a pod's shim, to put
//! the shim's pid into a transient scope unit of its own,
//! `crius-shim-<pod id>.scope`, in the slice `shim_slice`
//! (`system.slice` by default): `StartTransientUnit` on
//! `org.freedesktop.systemd1.Manager`, with `PIDs=[pid]`, `Slice=`,
//! `Delegate=true` (the shim's subtree is its own, as a container monitor's
//! is), `CollectMode=inactive-or-failed` (the unit goes away with the shim,
//! even when it exits non-zero) and a `Description=` naming the pod. A
//! scope ends when its last process does: nothing has to remove it.
//!
//! D-Bus is spoken with zbus, peer to peer on systemd's private socket
//! `/run/systemd/private` (what `systemctl` uses as root; no dbus-daemon
//! needed), falling back to the system bus; `systemd_address` overrides
//! both (tests point it at a fake manager). The connection is made on first
//! use and kept; a transport error drops it so that the next shim connects
//! again.
//!
//! The move is best effort and off the pod's critical path: it runs as a
//! task of its own while RunPodSandbox goes on, bounded by
//! [`CALL_TIMEOUT`]. When systemd is unreachable, slow or refuses, criusd
//! logs a warning naming the pod and the error, and the shim stays in
//! criusd's cgroup; RunPodSandbox never fails for it. Shims adopted after
//! a criusd restart are not moved again (they were moved when launched).
//! With the cgroupfs driver nothing of this runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use zbus::zvariant::{OwnedObjectPath, Value};

/// systemd's private socket: peer-to-peer D-Bus to the manager, root only.
pub const PRIVATE_ADDRESS: &str = "unix:path=/run/systemd/private";
/// How long moving one shim may take, connecting included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The prefix of the shims' scope units.
pub const UNIT_PREFIX: &str = "crius-shim-";
/// The longest unit name systemd accepts.
const UNIT_NAME_MAX: usize = 255;

const DESTINATION: &str = "org.freedesktop.systemd1";
const OBJECT_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// Errors of moving a shim into a scope.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// The unit name cannot be formed from the pod id.
    #[error("no scope unit name for pod id {0:?}")]
    UnitName(String),
    /// No connection to systemd.
    #[error("cannot connect to systemd at {address}: {message}")]
    Connect {
        /// Where (a D-Bus address, or "the system bus").
        address: String,
        /// Why.
        message: String,
    },
    /// systemd answered with an error.
    #[error("systemd refused StartTransientUnit: {name}: {message}")]
    Refused {
        /// The D-Bus error name.
        name: String,
        /// systemd's message.
        message: String,
    },
    /// The call failed on the way (connection lost).
    #[error("StartTransientUnit failed: {0}")]
    Transport(String),
    /// systemd's answer is not a job path.
    #[error("StartTransientUnit: unexpected reply: {0}")]
    BadReply(String),
    /// No answer in time.
    #[error("systemd did not answer within {0:?}")]
    Timeout(Duration),
}

/// Whether a byte may stand as it is in a unit name (else it is escaped
/// as `\xNN`, as `systemd-escape` does).
fn unit_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-')
}

/// The scope unit of a pod's shim: `crius-shim-<pod id>.scope`, the id
/// escaped where systemd would not take it.
pub fn unit_name(pod_id: &str) -> Result<String, ScopeError> {
    if pod_id.is_empty() {
        return Err(ScopeError::UnitName(pod_id.to_string()));
    }
    let mut name = String::from(UNIT_PREFIX);
    for b in pod_id.bytes() {
        if unit_name_char(b) {
            name.push(b as char);
        } else {
            name.push_str(&format!("\\x{b:02x}"));
        }
    }
    name.push_str(".scope");
    if name.len() > UNIT_NAME_MAX {
        return Err(ScopeError::UnitName(pod_id.to_string()));
    }
    Ok(name)
}

/// Checks a `shim_slice` value: empty (off) or the name of a slice unit.
pub fn validate_slice(slice: &str) -> Result<(), String> {
    if slice.is_empty() {
        return Ok(());
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!(
            "{slice:?} is not a slice unit name (it must end in .slice)"
        ));
    };
    if stem.is_empty() {
        return Err(format!("{slice:?} has no name before .slice"));
    }
    if slice.len() > UNIT_NAME_MAX {
        return Err(format!(
            "{slice:?} is longer than a unit name can be ({UNIT_NAME_MAX} bytes)"
        ));
    }
    if let Some(c) = slice
        .chars()
        .find(|&c| !((c.is_ascii() && unit_name_char(c as u8)) || c == '\\'))
    {
        return Err(format!("{slice:?}: {c:?} cannot be part of a unit name"));
    }
    Ok(())
}

/// The properties of a shim's scope: the pid, the slice, delegation,
/// garbage collection and a description naming the pod.
pub fn properties(pod_id: &str, pid: u32, slice: &str) -> Vec<(&'static str, Value<'static>)> {
    vec![
        (
            "Description",
            Value::from(format!("crius shim of pod {pod_id}")),
        ),
        ("Slice", Value::from(slice.to_string())),
        ("PIDs", Value::from(vec![pid])),
        ("Delegate", Value::from(true)),
        ("CollectMode", Value::from("inactive-or-failed")),
    ]
}

/// Whether systemd is the init system (what `sd_booted()` checks).
pub fn systemd_booted(run: &Path) -> bool {
    run.join("systemd/system").is_dir()
}

/// Where to reach systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The private socket, else the system bus.
    Default,
    /// One D-Bus address, peer to peer.
    Address(String),
}

/// Moves newly launched shims into scopes of their own (see the module
/// doc); does nothing when off.
pub struct ShimScopes {
    target: Option<Target>,
    timeout: Duration,
    /// The kept connection and its generation (counting connections made).
    connection: tokio::sync::Mutex<(u64, Option<zbus::Connection>)>,
}

impl ShimScopes {
    /// Off: shims stay where criusd launches them.
    pub fn off() -> Self {
        ShimScopes {
            target: None,
            timeout: CALL_TIMEOUT,
            connection: tokio::sync::Mutex::new((0, None)),
        }
    }

    /// On with the systemd driver when systemd runs this host (or
    /// `address` names its manager explicitly); off otherwise. Logs the
    /// decision.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let address = config.systemd_address.trim();
        if config.cgroup_driver != crate::config::CgroupDriver::Systemd {
            return Self::off();
        }
        let target = if !address.is_empty() {
            Target::Address(address.to_string())
        } else if systemd_booted(Path::new("/run")) {
            Target::Default
        } else {
            tracing::info!(
                "systemd cgroup driver, but systemd is not the init system \
                 (no /run/systemd/system): shims stay in criusd's cgroup"
            );
            return Self::off();
        };
        tracing::info!(
            address = if address.is_empty() { PRIVATE_ADDRESS } else { address },
            slice = %config.shim_slice,
            "shims go into systemd scopes of their own"
        );
        ShimScopes {
            target: Some(target),
            ..Self::off()
        }
    }

    /// On, talking to `address` only, with a deadline of `timeout`.
    pub fn with_address(address: &str, timeout: Duration) -> Self {
        ShimScopes {
            target: Some(Target::Address(address.to_string())),
            timeout,
            connection: tokio::sync::Mutex::new((0, None)),
        }
    }

    /// Whether shims are moved at all.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Moves the shim `pid` of pod `pod_id` into its scope in `slice`, in
    /// a task of its own; a failure is logged as a warning. Nothing when
    /// off or `slice` is empty.
    pub fn place(self: &Arc<Self>, pod_id: &str, pid: u32, slice: &str) {
        if !self.enabled() || slice.is_empty() {
            return;
        }
        let this = self.clone();
        let (pod, slice) = (pod_id.to_string(), slice.to_string());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match this.move_shim(&pod, pid, &slice).await {
                Ok(unit) => tracing::debug!(
                    pod = %pod,
                    pid,
                    unit = %unit,
                    slice = %slice,
                    took_us = started.elapsed().as_micros() as u64,
                    "shim moved into its own scope"
                ),
                Err(e) => tracing::warn!(
                    pod = %pod,
                    pid,
                    error = %e,
                    "cannot move the pod's shim into a systemd scope; it stays in criusd's cgroup"
                ),
            }
        });
    }

    /// Moves the shim now; returns the scope unit's name. Bounded by the
    /// timeout, connecting included.
    pub async fn move_shim(
        &self,
        pod_id: &str,
        pid: u32,
        slice: &str,
    ) -> Result<String, ScopeError> {
        let unit = unit_name(pod_id)?;
        let properties = properties(pod_id, pid, slice);
        tokio::time::timeout(self.timeout, self.start_transient_unit(&unit, &properties))
            .await
            .map_err(|_| ScopeError::Timeout(self.timeout))??;
        Ok(unit)
    }

    /// `StartTransientUnit(unit, "fail", properties, [])`; returns the job.
    /// A kept connection that turns out dead (systemd re-executed, say) is
    /// replaced and the call made once more.
    async fn start_transient_unit(
        &self,
        unit: &str,
        properties: &[(&'static str, Value<'static>)],
    ) -> Result<OwnedObjectPath, ScopeError> {
        let (kept, generation, connection) = self.connection().await?;
        match call(&connection, unit, properties).await {
            Err(ScopeError::Transport(e)) => {
                self.forget(generation).await;
                if !kept {
                    return Err(ScopeError::Transport(e));
                }
                tracing::debug!(error = %e, "connection to systemd lost; connecting again");
                let (_, generation, connection) = self.connection().await?;
                let r = call(&connection, unit, properties).await;
                if matches!(r, Err(ScopeError::Transport(_))) {
                    self.forget(generation).await;
                }
                r
            }
            r => r,
        }
    }

    /// Drops the kept connection if it still is the one of `generation`
    /// (not one another task made meanwhile).
    async fn forget(&self, generation: u64) {
        let mut slot = self.connection.lock().await;
        if slot.0 == generation {
            slot.1 = None;
        }
    }

    /// The kept connection (`true`), or a new one, with its generation.
    async fn connection(&self) -> Result<(bool, u64, zbus::Connection), ScopeError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.1.as_ref() {
            return Ok((true, slot.0, c.clone()));
        }
        let c = match &self.target {
            None => {
                return Err(ScopeError::Connect {
                    address: String::new(),
                    message: "off".into(),
                })
            }
            Some(Target::Address(a)) => p2p(a).await?,
            Some(Target::Default) => match p2p(PRIVATE_ADDRESS).await {
                Ok(c) => c,
                Err(private) => {
                    tracing::debug!(error = %private, "trying the system bus");
                    zbus::Connection::system()
                        .await
                        .map_err(|e| ScopeError::Connect {
                            address: format!("{PRIVATE_ADDRESS} or the system bus"),
                            message: e.to_string(),
                        })?
                }
            },
        };
        slot.0 += 1;
        slot.1 = Some(c.clone());
        Ok((false, slot.0, c))
    }
}

/// One StartTransientUnit call on `connection`.
async fn call(
    connection: &zbus::Connection,
    unit: &str,
    properties: &[(&'static str, Value<'static>)],
) -> Result<OwnedObjectPath, ScopeError> {
    let aux: &[(&str, Vec<(&str, Value)>)] = &[];
    let reply = connection
        .call_method(
            Some(DESTINATION),
            OBJECT_PATH,
            Some(MANAGER),
            "StartTransientUnit",
            &(unit, "fail", properties, aux),
        )
        .await;
    match reply {
        Ok(m) => m
            .body()
            .deserialize::<OwnedObjectPath>()
            .map_err(|e| ScopeError::BadReply(e.to_string())),
        Err(zbus::Error::MethodError(name, message, _)) => Err(ScopeError::Refused {
            name: name.to_string(),
            message: message.unwrap_or_default(),
        }),
        Err(e) => Err(ScopeError::Transport(e.to_string())),
    }
}

/// A peer-to-peer connection to `address`.
async fn p2p(address: &str) -> Result<zbus::Connection, ScopeError> {
    let err = |e: zbus::Error| ScopeError::Connect {
        address: address.to_string(),
        message: e.to_string(),
    };
    zbus::connection::Builder::address(address)
        .map_err(err)?
        .p2p()
        .build()
        .await
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        let hex = "0123456789abcdef".repeat(4);
        let long = "a".repeat(UNIT_NAME_MAX);
        // (pod id, expected name or None for an error)
        let cases: Vec<(&str, Option<String>)> = vec![
            (&hex, Some(format!("crius-shim-{hex}.scope"))),
            ("abc", Some("crius-shim-abc.scope".into())),
            ("a_b:c.d-e", Some("crius-shim-a_b:c.d-e.scope".into())),
            ("a/b", Some("crius-shim-a\\x2fb.scope".into())),
            ("a b\\", Some("crius-shim-a\\x20b\\x5c.scope".into())),
            ("é", Some("crius-shim-\\xc3\\xa9.scope".into())),
            ("", None),
            (&long, None),
        ];
        for (id, want) in cases {
            let got = unit_name(id).ok();
            assert_eq!(got, want, "{id:?}");
        }
    }

    #[test]
    fn slices() {
        // (value, valid)
        let cases = [
            ("", true),
            ("system.slice", true),
            ("crius-shims.slice", true),
            ("kube-pods.slice", true),
            ("-.slice", true),
            (".slice", false),
            ("system", false),
            ("system.scope", false),
            ("sys tem.slice", false),
            ("a/b.slice", false),
            ("é.slice", false),
        ];
        for (slice, valid) in cases {
            assert_eq!(validate_slice(slice).is_ok(), valid, "{slice:?}");
        }
        assert!(validate_slice(&format!("{}.slice", "a".repeat(UNIT_NAME_MAX))).is_err());
    }

    #[test]
    fn scope_properties() {
        // (pid, slice)
        let cases = [(4242u32, "system.slice"), (1, "crius-shims.slice")];
        for (pid, slice) in cases {
            let p = properties("pod1", pid, slice);
            let get = |k: &str| {
                p.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("no {k}"))
            };
            assert_eq!(p.len(), 5);
            assert_eq!(get("PIDs"), Value::from(vec![pid]));
            assert_eq!(get("PIDs").value_signature().to_string(), "au");
            assert_eq!(get("Slice"), Value::from(slice));
            assert_eq!(get("Delegate"), Value::from(true));
            assert_eq!(get("CollectMode"), Value::from("inactive-or-failed"));
            assert_eq!(get("Description"), Value::from("crius shim of pod pod1"));
        }
    }

    #[test]
    fn booted_only_with_run_systemd_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!systemd_booted(dir.path()));
        std::fs::create_dir_all(dir.path().join("systemd")).unwrap();
        assert!(!systemd_booted(dir.path()));
        std::fs::create_dir(dir.path().join("systemd/system")).unwrap();
        assert!(systemd_booted(dir.path()));
    }

    #[tokio::test]
    async fn off_does_nothing() {
        let s = Arc::new(ShimScopes::off());
        assert!(!s.enabled());
        // No task, no connection.
        s.place("pod", 1, "system.slice");
        assert!(s.connection.lock().await.1.is_none());
    }

    #[tokio::test]
    async fn a_stuck_or_missing_bus_fails_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts and never answers (not even the auth handshake).
        let stuck = dir.path().join("stuck.sock");
        let listener = tokio::net::UnixListener::bind(&stuck).unwrap();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                kept.push(s);
            }
        });
        let timeout = Duration::from_millis(300);
        let s = ShimScopes::with_address(&format!("unix:path={}", stuck.display()), timeout);
        let t = std::time::Instant::now();
        let e = s.move_shim("pod", 1, "system.slice").await.unwrap_err();
        assert!(matches!(e, ScopeError::Timeout(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        held.abort();

        let missing = dir.path().join("missing.sock");
        let s = ShimScopes::with_address(&format!("unix:path={}", missing.display()), timeout);
        let e = s.move_shim("pod", 1, "system.slice").await.unwrap_err();
        assert!(matches!(e, ScopeError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("missing.sock"), "{e}");
    }
}
