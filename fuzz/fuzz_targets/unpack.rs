//! Layer unpack of arbitrary bytes (a tar, or a gzip/zstd-compressed tar,
//! recognised by magic number as for a pulled layer): it may fail, but it
//! must never panic and never write outside the target directory. The
//! target sits two levels below a scratch directory holding a file of its
//! own; after the unpack everything but the target must be as it was.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Everything under `dir` except `skip`: path to (mode, size, mtime, content
/// of regular files).
fn snapshot(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, (u32, u64, i64, Vec<u8>)>) {
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
    std::fs::File::create(&blob)
        .and_then(|mut f| f.write_all(data))
        .expect("blob");
    if let Ok(reader) = std::fs::File::open(&blob).and_then(crius_image::unpack::decompress) {
        let _ = crius_image::unpack::unpack(reader, &target);
    }

    let mut after = BTreeMap::new();
    snapshot(base, &target, &mut after);
    after.remove(&blob);
    assert_eq!(
        before, after,
        "the unpack changed something outside its target"
    );
});
