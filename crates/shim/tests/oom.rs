//! An OOM kill is detected and published as /tasks/oom.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn oom_kill_is_reported() {
    if !root_or_skip("oom") {
        return;
    }
    prerequisites();
    let events = tempfile::tempdir().unwrap();
    let ev_sock = events.path().join("events.sock");
    let (sink, _server) = events_server(&ev_sock);
    let shim = Shim::start("oom", Some(&ev_sock));
    let id = format!("oom{}", std::process::id());
    let mut s = spec(&id, &["sh", "-c", "x=a; while :; do x=$x$x; done"], false);
    let limit = 32 * 1024 * 1024;
    s["linux"]["resources"]["memory"] = serde_json::json!({"limit": limit, "swap": limit});
    let b = bundle(shim.path(), &id, &s);
    shim.create(&id, &b, "", "", false);
    shim.start_task(&id, "").unwrap();
    assert_eq!(shim.wait(&id, ""), 137);
    assert!(
        sink.wait_until(Duration::from_secs(20), |v| v.iter().any(
            |(t, url, val)| {
                t == "/tasks/oom" && event_container(url, val).as_deref() == Some(id.as_str())
            }
        )),
        "no /tasks/oom event: {:?}\nshim log:\n{}",
        sink.topics_for(&id),
        read(
            &shim
                .path()
                .join("state")
                .join(&shim.namespace)
                .join("oom/shim.log")
        )
    );
    shim.delete(&id, "").unwrap();
    let topics = sink.topics_for(&id);
    assert_eq!(
        topics.iter().filter(|t| *t == "/tasks/exit").count(),
        1,
        "{topics:?}"
    );
}
