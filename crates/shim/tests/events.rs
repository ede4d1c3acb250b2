//! The event publisher: order, and reconnection when the events service
//! goes away and comes back (criusd restarting). Needs no root.

mod common;

use std::time::Duration;

use common::*;
use containerd_shim_protos::events::task as ev;
use crius_shim::events::{Event, Publisher};

fn exit_event(id: &str, status: u32) -> Event {
    let mut m = ev::TaskExit::new();
    m.container_id = id.into();
    m.exit_status = status;
    Event::Exit(m)
}

#[test]
fn events_in_order_and_after_a_restart_of_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("events.sock");
    let (sink, server) = events_server(&sock);
    let p = Publisher::start(&sock.to_string_lossy(), "ns1");
    for i in 0..20 {
        p.publish(exit_event("c1", i));
    }
    assert!(sink.wait_until(Duration::from_secs(20), |v| v.len() == 20));
    let statuses: Vec<u32> = sink
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|(t, url, v)| {
            assert_eq!(t, "/tasks/exit");
            assert_eq!(url, "containerd.events.TaskExit");
            <ev::TaskExit as containerd_shim_protos::protobuf::Message>::parse_from_bytes(v)
                .unwrap()
                .exit_status
        })
        .collect();
    assert_eq!(statuses, (0..20).collect::<Vec<_>>());

    // The service goes away and comes back at the same address.
    server.shutdown();
    let _ = std::fs::remove_file(&sock);
    let (sink2, _server2) = events_server(&sock);
    p.publish(exit_event("c2", 7));
    assert!(
        sink2.wait_until(Duration::from_secs(20), |v| v.len() == 1),
        "event not delivered after the service restarted"
    );
    assert_eq!(sink2.topics_for("c2"), ["/tasks/exit"]);
}
