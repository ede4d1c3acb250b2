//! Publishing task events to the caller's events service
//! (`containerd.services.events.ttrpc.v1.Events/Forward`).
//!
//! Events are queued and sent by one thread, in the order they were queued,
//! so the task service never blocks on a slow or absent subscriber. A failed
//! send is retried a few times (reconnecting) before the event is dropped.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageField, MessageFull};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::EventsClient;

const RETRIES: u32 = 5;

/// A timestamp message for `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// An event to publish.
pub enum Event {
    /// /tasks/create
    Create(ev::TaskCreate),
    /// /tasks/start
    Start(ev::TaskStart),
    /// /tasks/exit
    Exit(ev::TaskExit),
    /// /tasks/delete
    Delete(ev::TaskDelete),
    /// /tasks/oom
    Oom(ev::TaskOOM),
    /// /tasks/exec-added
    ExecAdded(ev::TaskExecAdded),
    /// /tasks/exec-started
    ExecStarted(ev::TaskExecStarted),
    /// /tasks/paused
    Paused(ev::TaskPaused),
    /// /tasks/resumed
    Resumed(ev::TaskResumed),
}

fn any_of<M: MessageFull>(m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = M::descriptor().full_name().to_string();
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

impl Event {
    /// The containerd topic.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => "/tasks/create",
            Event::Start(_) => "/tasks/start",
            Event::Exit(_) => "/tasks/exit",
            Event::Delete(_) => "/tasks/delete",
            Event::Oom(_) => "/tasks/oom",
            Event::ExecAdded(_) => "/tasks/exec-added",
            Event::ExecStarted(_) => "/tasks/exec-started",
            Event::Paused(_) => "/tasks/paused",
            Event::Resumed(_) => "/tasks/resumed",
        }
    }

    /// The payload as an Any.
    pub fn to_any(&self) -> Any {
        match self {
            Event::Create(m) => any_of(m),
            Event::Start(m) => any_of(m),
            Event::Exit(m) => any_of(m),
            Event::Delete(m) => any_of(m),
            Event::Oom(m) => any_of(m),
            Event::ExecAdded(m) => any_of(m),
            Event::ExecStarted(m) => any_of(m),
            Event::Paused(m) => any_of(m),
            Event::Resumed(m) => any_of(m),
        }
    }
}

/// The publisher: a queue drained by one thread.
#[derive(Clone)]
pub struct Publisher {
    tx: Option<Sender<(SystemTime, Event)>>,
}

impl Publisher {
    /// A publisher to the ttrpc events service at `address` (a unix socket
    /// path or `unix://` address). An empty address discards events.
    pub fn start(address: &str, namespace: &str) -> Publisher {
        if address.is_empty() {
            return Publisher { tx: None };
        }
        let (tx, rx) = channel();
        let addr = if address.starts_with("unix://") {
            address.to_string()
        } else {
            format!("unix://{address}")
        };
        let ns = namespace.to_string();
        let spawned = std::thread::Builder::new()
            .name("publisher".into())
            .stack_size(256 * 1024)
            .spawn(move || run(rx, addr, ns));
        match spawned {
            Ok(_) => Publisher { tx: Some(tx) },
            Err(e) => {
                tracing::warn!("cannot start event publisher: {e}");
                Publisher { tx: None }
            }
        }
    }

    /// Queues an event (never blocks).
    pub fn publish(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((SystemTime::now(), e));
        }
    }
}

fn run(rx: Receiver<(SystemTime, Event)>, addr: String, ns: String) {
    let mut client: Option<EventsClient> = None;
    while let Ok((t, e)) = rx.recv() {
        let mut env = Envelope::new();
        env.timestamp = MessageField::some(timestamp(t));
        env.namespace = ns.clone();
        env.topic = e.topic().to_string();
        env.event = MessageField::some(e.to_any());
        let mut req = ForwardRequest::new();
        req.envelope = MessageField::some(env);
        let mut sent = false;
        for attempt in 0..RETRIES {
            if client.is_none() {
                match containerd_shim_protos::ttrpc::Client::connect(&addr) {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(err) => {
                        tracing::debug!("connect {addr}: {err}");
                    }
                }
            }
            if let Some(c) = &client {
                let mut ctx = containerd_shim_protos::ttrpc::context::with_timeout(
                    Duration::from_secs(5).as_nanos() as i64,
                );
                ctx.add("containerd-namespace-ttrpc".to_string(), ns.clone());
                match c.forward(ctx, &req) {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(err) => {
                        tracing::debug!("forward {}: {err}", req.envelope.topic);
                        client = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100 << attempt));
        }
        if !sent {
            tracing::warn!("dropped event {} after {RETRIES} attempts", e.topic());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_types() {
        let cases = [
            (
                Event::Create(ev::TaskCreate::new()),
                "/tasks/create",
                "containerd.events.TaskCreate",
            ),
            (
                Event::Exit(ev::TaskExit::new()),
                "/tasks/exit",
                "containerd.events.TaskExit",
            ),
            (
                Event::ExecStarted(ev::TaskExecStarted::new()),
                "/tasks/exec-started",
                "containerd.events.TaskExecStarted",
            ),
            (
                Event::Oom(ev::TaskOOM::new()),
                "/tasks/oom",
                "containerd.events.TaskOOM",
            ),
        ];
        for (e, topic, url) in cases {
            assert_eq!(e.topic(), topic);
            assert_eq!(e.to_any().type_url, url);
        }
    }
}
