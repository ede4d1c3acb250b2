//! A fake systemd manager for the tests of the shims' scopes: serves
//! `org.freedesktop.systemd1.Manager.StartTransientUnit` with zbus, peer
//! to peer on a unix socket (as systemd's private socket), and records
//! every call. criusd reaches it through `systemd_address`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

/// A property value as the fake decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prop {
    Str(String),
    Bool(bool),
    U32s(Vec<u32>),
    /// Anything else: its D-Bus signature.
    Other(String),
}

impl Prop {
    fn decode(v: &Value) -> Prop {
        match v {
            Value::Str(s) => Prop::Str(s.to_string()),
            Value::Bool(b) => Prop::Bool(*b),
            Value::Array(a) if a.element_signature().to_string() == "u" => Prop::U32s(
                a.iter()
                    .map(|v| match v {
                        Value::U32(n) => *n,
                        _ => unreachable!("an au holds u32s"),
                    })
                    .collect(),
            ),
            other => Prop::Other(other.value_signature().to_string()),
        }
    }
}

/// One StartTransientUnit call as the fake received it.
#[derive(Debug, Clone)]
pub struct TransientUnit {
    pub name: String,
    pub mode: String,
    pub properties: BTreeMap<String, Prop>,
    pub aux_units: usize,
}

struct Manager {
    calls: Arc<Mutex<Vec<TransientUnit>>>,
    refuse: bool,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn start_transient_unit(
        &self,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedValue)>,
        aux: Vec<(String, Vec<(String, OwnedValue)>)>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(TransientUnit {
                name,
                mode,
                properties: properties
                    .iter()
                    .map(|(k, v)| (k.clone(), Prop::decode(v)))
                    .collect(),
                aux_units: aux.len(),
            });
            calls.len()
        };
        if self.refuse {
            return Err(zbus::fdo::Error::AccessDenied(
                "the fake systemd refuses every unit".into(),
            ));
        }
        Ok(OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{n}")).unwrap())
    }
}

/// The fake manager, on a runtime of its own; stops when dropped.
pub struct FakeSystemd {
    pub socket: PathBuf,
    calls: Arc<Mutex<Vec<TransientUnit>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeSystemd {
    /// Serves on `<dir>/systemd-private`; with `refuse` every call gets a
    /// D-Bus error (`org.freedesktop.DBus.Error.AccessDenied`).
    pub fn start(dir: &Path, refuse: bool) -> FakeSystemd {
        let socket = dir.join("systemd-private");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake systemd runtime");
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&socket).expect("bind fake systemd")
        };
        let served = calls.clone();
        runtime.spawn(async move {
            // The connections live as long as the fake.
            let mut connections = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                let manager = Manager {
                    calls: served.clone(),
                    refuse,
                };
                let built = async {
                    zbus::connection::Builder::unix_stream(stream)
                        .server(zbus::Guid::generate())?
                        .p2p()
                        .serve_at("/org/freedesktop/systemd1", manager)?
                        .build()
                        .await
                };
                match built.await {
                    Ok(c) => connections.push(c),
                    Err(e) => eprintln!("fake systemd: connection failed: {e}"),
                }
            }
        });
        FakeSystemd {
            socket,
            calls,
            runtime: Some(runtime),
        }
    }

    /// The D-Bus address criusd is given (`systemd_address`).
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<TransientUnit> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (bounded) until a call for unit `name` arrived.
    pub fn wait_for(&self, name: &str, within: Duration) -> Option<TransientUnit> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.calls().into_iter().find(|c| c.name == name) {
                return Some(c);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeSystemd {
    /// Stops serving and closes every connection (its tasks are gone when
    /// this returns) and removes the socket, as a systemd that re-executes.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Not on the test's runtime, where blocking is not allowed.
            let _ = std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(5))).join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
