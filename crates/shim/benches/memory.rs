//! Memory of the shim (not a test): RSS and PSS of an idle shim, and of a pod
//! with 1 and with 10 busybox containers (each writing a CRI log).
//! Run as root: `cargo bench -p crius-shim --bench memory`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;

fn rollup(pid: u32) -> (u64, u64) {
    let text = read(std::path::Path::new(&format!("/proc/{pid}/smaps_rollup")));
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn report(what: &str, pid: u32) {
    let (rss, pss) = rollup(pid);
    let threads = read(std::path::Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default();
    println!("{what:<28} RSS {rss:>6} kB   PSS {pss:>6} kB   threads {threads}");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !root_or_skip("memory benchmark") {
        return;
    }
    prerequisites();
    let shim = Shim::start("membench", None);
    std::thread::sleep(std::time::Duration::from_millis(300));
    report("idle shim", shim.pid);
    let mut ids = Vec::new();
    for n in [1usize, 10] {
        while ids.len() < n {
            let id = format!("mem{}-{}", std::process::id(), ids.len());
            let b = bundle(shim.path(), &id, &spec(&id, &["sleep", "100000"], false));
            let log = format!("crilog://{}/logs/{id}/0.log", shim.path().display());
            shim.create(&id, &b, &log, &log, false);
            shim.start_task(&id, "").unwrap();
            ids.push(id);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        report(&format!("pod with {n} container(s)"), shim.pid);
    }
    for id in &ids {
        let _ = shim.kill(id, "", 9, true);
        shim.wait(id, "");
        let _ = shim.delete(id, "");
    }
    shim.shutdown();
}
