//! Container stdio through the shim: CRI log files (format, rotation with
//! ReopenLog), a TTY exec with ResizePty, stdin from a FIFO with CloseIO.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use containerd_shim_protos::api;
use containerd_shim_protos::ttrpc;
use crius_shim_api::proto::shim as pb;
use crius_shim_api::proto::shim_ttrpc::ShimClient;

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Calls crius.shim.v1.Shim/ReopenLog.
fn reopen_log(shim: &Shim, id: &str) -> ttrpc::Result<()> {
    let mut req = pb::ReopenLogRequest::new();
    req.id = id.into();
    ShimClient::new(shim.raw.clone())
        .reopen_log(ctx(), &req)
        .map(|_| ())
}

/// Reads attach frames into `out` (stdout, stderr) until `want` is in the
/// output of its stream or the connection ends. stdout and stderr are copied
/// by different threads, so only the order within a stream is fixed.
fn read_frames(conn: &mut UnixStream, out: &mut (String, String), want: Option<(u8, &str)>) {
    loop {
        if let Some((s, w)) = want {
            let have = if s == 1 { &out.0 } else { &out.1 };
            if have.contains(w) {
                return;
            }
        }
        let mut hdr = [0u8; 5];
        if conn.read_exact(&mut hdr).is_err() {
            return;
        }
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        let mut data = vec![0u8; len];
        conn.read_exact(&mut data).unwrap();
        let text = String::from_utf8_lossy(&data);
        match hdr[0] {
            1 => out.0.push_str(&text),
            2 => out.1.push_str(&text),
            other => panic!("bad stream {other}"),
        }
    }
}

#[test]
fn attach_fans_out_output_and_feeds_stdin() {
    if !root_or_skip("attach") {
        return;
    }
    prerequisites();
    let shim = Shim::start("attach", None);
    let id = format!("att{}", std::process::id());
    let script = "echo ready; read x; echo got-$x; echo to-err >&2; read y; echo second-$y";
    let b = bundle(shim.path(), &id, &spec(&id, &["sh", "-c", script], false));
    let log = shim.path().join("logs/0.log");
    let uri = format!("crilog://{}", log.display());
    shim.ids.lock().unwrap().push(id.clone());
    let mut req = api::CreateTaskRequest::new();
    req.id = id.clone();
    req.bundle = b.to_string_lossy().into_owned();
    req.stdin = "attach-once".into();
    req.stdout = uri.clone();
    req.stderr = uri;
    shim.client.create(ctx(), &req).unwrap();

    let sock = shim.path().join("attach.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut areq = pb::AttachRequest::new();
    areq.id = id.clone();
    areq.socket = sock.to_string_lossy().into_owned();
    areq.stdin = true;
    let client = ShimClient::new(shim.raw.clone());
    client.attach(ctx(), &areq).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    shim.start_task(&id, "").unwrap();

    let mut got = (String::new(), String::new());
    read_frames(&mut conn, &mut got, Some((1, "ready\n")));
    assert_eq!(got.0, "ready\n");
    conn.write_all(b"hello\n").unwrap();
    read_frames(&mut conn, &mut got, Some((1, "got-hello\n")));
    read_frames(&mut conn, &mut got, Some((2, "to-err\n")));
    assert_eq!(got.0, "ready\ngot-hello\n");
    assert_eq!(got.1, "to-err\n");
    // stdin-once: detaching the writer closes stdin, `read y` gets EOF; the
    // connection ends once the process exited and its output drained.
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    read_frames(&mut conn, &mut got, None);
    assert_eq!(got.0, "ready\ngot-hello\nsecond-\n", "log: {}", read(&log));
    assert_eq!(shim.wait(&id, ""), 0);
    // The log file got the same output.
    let text = read(&log);
    for want in [
        " stdout F ready",
        " stdout F got-hello",
        " stderr F to-err",
        " stdout F second-",
    ] {
        assert!(text.contains(want), "{want} missing in {text}");
    }
    // Attaching to an exited process, or to output not copied by the shim,
    // is refused.
    assert!(client.attach(ctx(), &areq).is_err());
    shim.delete(&id, "").unwrap();
    let id2 = format!("att2{}", std::process::id());
    let b2 = bundle(shim.path(), &id2, &spec(&id2, &["sleep", "100000"], false));
    shim.create(&id2, &b2, "", "", false);
    areq.id = id2.clone();
    assert!(client.attach(ctx(), &areq).is_err());
    shim.kill(&id2, "", 9, false).unwrap();
    shim.wait(&id2, "");
    shim.delete(&id2, "").unwrap();
}

fn check_record(line: &str) -> (String, String, String) {
    // <RFC3339Nano> <stream> <P|F> <content>
    let mut it = line.splitn(4, ' ');
    let ts = it.next().unwrap().to_string();
    let stream = it.next().unwrap().to_string();
    let tag = it.next().unwrap().to_string();
    let content = it.next().unwrap_or("").to_string();
    assert!(
        ts.ends_with('Z') && ts.contains('T') && ts.len() == 30,
        "timestamp {ts:?}"
    );
    assert!(stream == "stdout" || stream == "stderr", "{line}");
    assert!(tag == "P" || tag == "F", "{line}");
    (stream, tag, content)
}

#[test]
fn cri_log_format_and_rotation() {
    if !root_or_skip("cri log") {
        return;
    }
    prerequisites();
    let shim = Shim::start("logs", None);
    let id = format!("log{}", std::process::id());
    // 20000 'a's: one partial record of 16 KiB and the rest full.
    let script = "echo out1; echo err1 >&2; i=0; s=''; while [ $i -lt 2000 ]; do s=${s}aaaaaaaaaa; i=$((i+1)); done; echo $s; \
                  n=0; while :; do echo tick$n; n=$((n+1)); sleep 0.1; done";
    let b = bundle(shim.path(), &id, &spec(&id, &["sh", "-c", script], false));
    let log = shim.path().join("logs/c/0.log");
    let uri = format!("crilog://{}", log.display());
    shim.create(&id, &b, &uri, &uri, false);
    shim.start_task(&id, "").unwrap();
    assert!(
        eventually(Duration::from_secs(20), || read(&log)
            .contains(" F tick1\n")),
        "{}",
        read(&log)
    );
    let text = read(&log);
    let recs: Vec<_> = text.lines().map(check_record).collect();
    assert!(
        recs.contains(&("stdout".into(), "F".into(), "out1".into())),
        "{text}"
    );
    assert!(
        recs.contains(&("stderr".into(), "F".into(), "err1".into())),
        "{text}"
    );
    let p = recs
        .iter()
        .position(|r| r.1 == "P")
        .expect("a partial record");
    assert_eq!(recs[p].2.len(), 16 * 1024);
    assert_eq!(
        recs[p + 1],
        ("stdout".into(), "F".into(), "a".repeat(20000 - 16 * 1024))
    );

    // kubelet rotates: rename, then ReopenLog; new lines go to a new file.
    let rotated = shim.path().join("logs/c/0.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    reopen_log(&shim, &id).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || read(&log).contains(" F tick")),
        "no lines after reopen"
    );
    for l in read(&log).lines() {
        check_record(l);
    }
    // ReopenLog of an unknown container is NotFound.
    assert!(reopen_log(&shim, "nope").is_err());

    shim.kill(&id, "", 9, false).unwrap();
    assert_eq!(shim.wait(&id, ""), 137);
    shim.delete(&id, "").unwrap();
}

#[test]
fn tty_exec_resize_and_stdin() {
    if !root_or_skip("tty exec") {
        return;
    }
    prerequisites();
    let shim = Shim::start("tty", None);
    let id = format!("tty{}", std::process::id());
    let b = bundle(shim.path(), &id, &spec(&id, &["sleep", "100000"], false));
    shim.create(&id, &b, "", "", false);
    shim.start_task(&id, "").unwrap();

    // TTY exec: waits for a line on stdin, then reports its terminal size.
    let fifo = shim.path().join("stdin.fifo");
    mkfifo(&fifo);
    let out = shim.path().join("tty.txt");
    shim.exec(
        &id,
        "t1",
        &["sh", "-c", "tty; read x; stty size; echo got-$x"],
        true,
        &fifo.to_string_lossy(),
        &format!("file://{}", out.display()),
    );
    shim.start_task(&id, "t1").unwrap();
    let mut rq = api::ResizePtyRequest::new();
    rq.id = id.clone();
    rq.exec_id = "t1".into();
    rq.width = 123;
    rq.height = 45;
    shim.client.resize_pty(ctx(), &rq).unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(b"go\n").unwrap();
    drop(w);
    assert_eq!(shim.wait(&id, "t1"), 0);
    let text = read(&out);
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("45 123"), "{text:?}");
    assert!(text.contains("got-go"), "{text:?}");
    shim.delete(&id, "t1").unwrap();

    // Resize of a process without a terminal is refused.
    rq.exec_id = String::new();
    assert!(shim.client.resize_pty(ctx(), &rq).is_err());

    // Pipes: cat copies stdin until CloseIO closes it.
    let fifo2 = shim.path().join("stdin2.fifo");
    mkfifo(&fifo2);
    let out2 = shim.path().join("cat.txt");
    shim.exec(
        &id,
        "c1",
        &["cat"],
        false,
        &fifo2.to_string_lossy(),
        &format!("file://{}", out2.display()),
    );
    shim.start_task(&id, "c1").unwrap();
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo2)
        .unwrap();
    w.write_all(b"through-stdin\n").unwrap();
    assert!(eventually(Duration::from_secs(20), || read(&out2)
        .contains("through-stdin")));
    let mut cr = api::CloseIORequest::new();
    cr.id = id.clone();
    cr.exec_id = "c1".into();
    cr.stdin = true;
    shim.client.close_io(ctx(), &cr).unwrap();
    assert_eq!(shim.wait(&id, "c1"), 0);
    drop(w);
    shim.delete(&id, "c1").unwrap();

    shim.kill(&id, "", 9, true).unwrap();
    assert_eq!(shim.wait(&id, ""), 137);
    shim.delete(&id, "").unwrap();
}
