//! The module layering of criusd, checked on its source: the tonic services
//! (`service.rs`) call the RPC layer (`rpc/`), which calls the domain
//! (`runtime/`, `image/`, `recover.rs`, `streaming/`, the shim client);
//! nothing points back up, and only the service layer, the error mapping
//! (`errors.rs`) and the server plumbing know of tonic. Test modules (from
//! the first top-level `#[cfg(test)]` on) are not checked. criusd reaches
//! its shims through crius-shim-api only, never through the shim binary's
//! crate.

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
    } else if rel.starts_with("runtime/")
        || rel.starts_with("image/")
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
