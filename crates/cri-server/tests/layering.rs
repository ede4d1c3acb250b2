//! The module layering of criusd, checked on its source: the tonic services
//! (`service.rs`) call the RPC layer (`rpc/`), which calls the domain
//! (`domain/`, `image/`, `nri/`, `recover.rs`, `streaming/`, the shim
//! client, the path layout);
//! nothing points back up, and only the service layer, the error mapping
//! (`errors.rs`) and the server plumbing know of tonic. Test modules (from
//! the first top-level `#[cfg(test)]` on) are not checked. criusd reaches
//! its shims through crius-shim-api only, never through the shim binary's
//! crate. criusd runs no lifecycle command of the OCI runtime (the shim
//! does, and cleans up after a dead shim in its `delete` action), and
//! mounts only where [`MOUNT_EXCEPTIONS`] says.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The non-test code of a file, without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let body = match text.find("\n#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text,
    };
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The layer of a source file (relative to `src/`), lowest number lowest.
fn layer(rel: &str) -> Option<(u8, &'static str)> {
    if rel == "service.rs" {
        Some((3, "service"))
    } else if rel.starts_with("rpc/") {
        Some((2, "rpc"))
    } else if rel.starts_with("domain/")
        || rel.starts_with("image/")
        || rel.starts_with("nri/")
        || rel == "nri.rs"
        || rel == "paths.rs"
        || rel.starts_with("streaming/")
        || rel == "recover.rs"
        || rel == "shimclient.rs"
        || rel == "daemon.rs"
        || rel == "health.rs"
        || rel == "host.rs"
        || rel == "apparmor.rs"
    {
        Some((1, "domain"))
    } else {
        None
    }
}

/// Whether `word` occurs in `code` as a whole identifier (`tonic::`, not
/// `monotonic`).
fn mentions_word(code: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(word).any(|(i, _)| {
        !code[..i].chars().next_back().is_some_and(ident)
            && !code[i + word.len()..].chars().next().is_some_and(ident)
    })
}

#[test]
fn mentions_word_is_a_whole_identifier() {
    // (code, mentions tonic)
    for (code, want) in [
        ("use tonic::Status;", true),
        ("fn f() -> tonic::Status", true),
        ("let t = monotonic_ns();", false),
        ("tonic_prost", false),
        ("x.tonic", true),
    ] {
        assert_eq!(mentions_word(code, "tonic"), want, "{code}");
    }
}

#[test]
fn nothing_points_back_up_and_tonic_stays_at_the_top() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut offences = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        let Some((level, name)) = layer(&rel) else {
            continue;
        };
        checked += 1;
        let code = code(f);
        for (upper, path) in [(3, "crate::service"), (2, "crate::rpc")] {
            if level < upper && code.contains(path) {
                offences.push(format!("{rel} ({name}) uses {path}"));
            }
        }
        if level < 3 && mentions_word(&code, "tonic") {
            offences.push(format!("{rel} ({name}) uses tonic below the service layer"));
        }
    }
    assert!(
        checked > 40,
        "only {checked} files checked: layer() is stale"
    );
    assert!(
        offences.is_empty(),
        "layering broken:\n{}",
        offences.join("\n")
    );
}

#[test]
fn every_cri_method_has_its_rpc_file() {
    let service = std::fs::read_to_string(src().join("service.rs")).unwrap();
    let methods: Vec<&str> = service
        .lines()
        .filter_map(|l| l.trim().strip_prefix("async fn "))
        .filter_map(|l| l.split('(').next())
        .collect();
    assert_eq!(methods.len(), 34, "{methods:?}");
    let flat: String = service.chars().filter(|c| !c.is_whitespace()).collect();
    for m in &methods {
        // Each method body is one call into rpc::<file>::<method>.
        let call = format!("::{m}(&self");
        let alt = format!("::{m}(r.into_inner()");
        assert!(
            flat.contains(&call) || flat.contains(&alt),
            "{m} does not hand its request to its rpc file"
        );
    }
    let rpc_files = std::fs::read_dir(src().join("rpc")).unwrap().count() - 1;
    assert_eq!(rpc_files, methods.len(), "one file per RPC");
}

#[test]
fn criusd_uses_the_shim_api_not_the_shim_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    // The dependency names, `name = ...` or `name.workspace = ...`.
    let deps: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.split(['=', '.', ' ']).next())
        .collect();
    assert!(deps.contains(&"crius-shim-api"), "{deps:?}");
    assert!(
        !deps.contains(&"crius-shim"),
        "criusd depends on crius-shim"
    );
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let offences: Vec<String> = files
        .iter()
        .filter(|f| mentions_word(&code(f), "crius_shim"))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(offences.is_empty(), "crius_shim used in {offences:?}");
}

/// The lifecycle commands of an OCI runtime, which only the shim runs.
const RUNTIME_LIFECYCLE: [&str; 4] = ["create", "start", "kill", "delete"];

/// The statements of `code` that run a runtime lifecycle command: a
/// process built (`Command`, `.arg(`, `.args(`) with one of
/// [`RUNTIME_LIFECYCLE`] as a literal argument. The `--version` and
/// `features` probes pass.
fn runtime_commands(code: &str) -> Vec<String> {
    code.split(';')
        .filter(|st| st.contains("Command") || st.contains(".arg(") || st.contains(".args("))
        .filter(|st| {
            RUNTIME_LIFECYCLE
                .iter()
                .any(|c| st.contains(&format!("\"{c}\"")))
        })
        .map(|st| {
            // Its end, where the command is (a statement may start far up).
            let words: Vec<&str> = st.split_whitespace().collect();
            words[words.len().saturating_sub(12)..].join(" ")
        })
        .collect()
}

#[test]
fn runtime_commands_table() {
    // (code, offending statements)
    let cases: [(&str, usize); 9] = [
        (
            "let out = Command::new(runtime).args([\"delete\", \"--force\", id]).output();",
            1,
        ),
        (
            "tokio::process::Command::new(rt)\n    .arg(\"--root\")\n    .arg(root)\n    .arg(\"kill\")\n    .arg(id);",
            1,
        ),
        ("cmd.args([\"--root\", r, \"create\", \"--bundle\", b]);", 1),
        ("c.arg(\"start\"); c.arg(id);", 1),
        ("let mut cmd = tokio::process::Command::new(&binary); cmd.arg(\"--version\");", 0),
        ("Command::new(&binary).arg(\"features\").output();", 0),
        ("let event = \"delete\"; metrics.inc(event);", 0),
        ("shim.delete_task(&id, \"\").await;", 0),
        ("launcher.delete(id, &bundle, &runtime, &root, false).await;", 0),
    ];
    for (code, want) in cases {
        assert_eq!(runtime_commands(code).len(), want, "{code}");
    }
}

/// Functions that mount or unmount (the system calls and the wrapper of
/// crius-store criusd uses): counted where called, `name(`.
const MOUNT_FUNCTIONS: [&str; 5] = ["mount", "umount", "umount2", "mount_overlay", "fsmount"];
/// Mount system calls made through `libc::syscall`: counted where named.
const MOUNT_SYSCALLS: [&str; 4] = [
    "SYS_open_tree",
    "SYS_mount_setattr",
    "SYS_move_mount",
    "SYS_fsmount",
];

/// How many mount calls `code` makes: [`MOUNT_FUNCTIONS`] called (as whole
/// identifiers) or [`MOUNT_SYSCALLS`] named.
fn mount_calls(code: &str) -> usize {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let count = |word: &str, then: &dyn Fn(&str) -> bool| {
        code.match_indices(word)
            .filter(|(i, _)| {
                !code[..*i].chars().next_back().is_some_and(ident) && then(&code[i + word.len()..])
            })
            .count()
    };
    let called = |rest: &str| rest.starts_with('(');
    let named = |rest: &str| !rest.chars().next().is_some_and(ident);
    MOUNT_FUNCTIONS
        .iter()
        .map(|w| count(w, &called))
        .sum::<usize>()
        + MOUNT_SYSCALLS
            .iter()
            .map(|w| count(w, &named))
            .sum::<usize>()
}

#[test]
fn mount_calls_table() {
    // (code, calls)
    let cases: [(&str, usize); 9] = [
        (
            "nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)",
            1,
        ),
        (
            "nix::mount::mount(Some(src), at, None::<&str>, flags, None::<&str>)",
            1,
        ),
        ("libc::syscall(libc::SYS_move_mount, fd, empty)", 1),
        ("crius_store::overlay::mount_overlay(&src, t, f, &data)", 1),
        ("unmount_below(&dir); remount_ro(x);", 0),
        ("let flags = nix::mount::MsFlags::MS_BIND;", 0),
        ("daemon.images.remove_rootfs(&id)", 0),
        ("libc::umount(p); nix::mount::umount2(q, f);", 2),
        ("const PROFILE: &str = \"  umount,\\n  deny mount,\";", 0),
    ];
    for (code, want) in cases {
        assert_eq!(mount_calls(code), want, "{code}");
    }
}

/// The places criusd still mounts, as (file, number of mount calls): none
/// since issue #16 (the shim makes the idmapped mounts, the pod's user
/// namespace pins and the image mounts). The numbers must match: this
/// list stays empty; a new mount belongs in the shim.
const MOUNT_EXCEPTIONS: &[(&str, usize)] = &[];

#[test]
fn criusd_runs_no_runtime_lifecycle_command_and_mounts_only_where_listed() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut offences = Vec::new();
    let mut mounts = std::collections::BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        let code = code(f);
        for st in runtime_commands(&code) {
            offences.push(format!("{rel} runs an OCI runtime lifecycle command: {st}"));
        }
        let n = mount_calls(&code);
        if n > 0 {
            mounts.insert(rel, n);
        }
    }
    let listed: std::collections::BTreeMap<String, usize> = MOUNT_EXCEPTIONS
        .iter()
        .map(|(f, n)| (f.to_string(), *n))
        .collect();
    if mounts != listed {
        offences.push(format!(
            "mount calls in criusd {mounts:?}, listed as exceptions {listed:?}: \
             move new ones to the shim; lower the list when one goes"
        ));
    }
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}
