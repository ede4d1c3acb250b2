//! Layer unpack of arbitrary bytes (a tar, or a gzip/zstd-compressed tar,
//! recognised by magic number as for a pulled layer): it may fail, but it
//! must never panic and never write outside the target directory. The
//! target sits two levels below a scratch directory holding a file of its
//! own; after the unpack everything but the target must be as it was.
//!
//! Input starting with `CRIUSLAYERS` is a stack of layers, bottom first,
//! each a little-endian u32 length and that many bytes (at most 64
//! layers): each is unpacked into a directory of its own below the target,
//! then its implied directories take their attributes from the layers
//! below it (`inherit_implied`), which must leave those layers untouched.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const LAYERS_MAGIC: &[u8] = b"CRIUSLAYERS";
const MAX_LAYERS: usize = 64;

type Tree = BTreeMap<PathBuf, (u32, u64, i64, Vec<u8>)>;

/// Everything under `dir` except `skip`: path to (mode, size, mtime, content
/// of regular files).
fn snapshot(dir: &Path, skip: &Path, out: &mut Tree) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let content = if m.file_type().is_file() {
            std::fs::read(&p).unwrap_or_default()
        } else {
            Vec::new()
        };
        out.insert(p.clone(), (m.mode(), m.size(), m.mtime(), content));
        if m.file_type().is_dir() {
            snapshot(&p, skip, out);
        }
    }
}

/// The layers of an input: the whole input, or the framed stack.
fn layers(data: &[u8]) -> Vec<&[u8]> {
    let Some(mut rest) = data.strip_prefix(LAYERS_MAGIC) else {
        return vec![data];
    };
    let mut out = Vec::new();
    while rest.len() >= 4 && out.len() < MAX_LAYERS {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("tempdir");
    let base = scratch.path();
    let target = base.join("a/b/target");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::fs::write(base.join("a/outside"), b"untouched").expect("write");
    std::fs::write(base.join("a/b/outside"), b"untouched").expect("write");
    let mut before = BTreeMap::new();
    snapshot(base, &target, &mut before);

    let blob = base.join("blob");
    let stack = layers(data);
    let single = stack.len() == 1 && !data.starts_with(LAYERS_MAGIC);
    let mut done: Vec<PathBuf> = Vec::new();
    for (i, layer) in stack.into_iter().enumerate() {
        let dir = if single {
            target.clone()
        } else {
            target.join(i.to_string())
        };
        std::fs::create_dir_all(&dir).expect("layer dir");
        std::fs::File::create(&blob)
            .and_then(|mut f| f.write_all(layer))
            .expect("blob");
        let Ok(reader) = std::fs::File::open(&blob).and_then(crius_image::unpack::decompress)
        else {
            done.push(dir);
            continue;
        };
        if let Ok(report) = crius_image::unpack::unpack(reader, &dir) {
            // The layers below, nearest first; they must not change.
            let lowers: Vec<PathBuf> = done.iter().rev().cloned().collect();
            let mut below = BTreeMap::new();
            snapshot(&target, &dir, &mut below);
            let _ = crius_image::unpack::inherit_implied(&dir, &report.implied, &lowers);
            let mut below_after = BTreeMap::new();
            snapshot(&target, &dir, &mut below_after);
            assert_eq!(
                below, below_after,
                "inheriting attributes changed a lower layer"
            );
        }
        done.push(dir);
    }

    let mut after = BTreeMap::new();
    snapshot(base, &target, &mut after);
    after.remove(&blob);
    assert_eq!(
        before, after,
        "the unpack changed something outside its target"
    );
});
