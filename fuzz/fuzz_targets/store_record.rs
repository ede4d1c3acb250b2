//! Store record loading: an arbitrary record file (torn, corrupted,
//! forged) must load or be quarantined, never panic, and the loader must
//! account for it exactly once.

#![no_main]

use crius_store::persist::{decode, load_dir};
use crius_store::{ContainerRecord, ImageRecord, RecordKind, SandboxRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<SandboxRecord>(RecordKind::Sandbox.as_str(), data);
    let _ = decode::<ContainerRecord>(RecordKind::Container.as_str(), data);
    let _ = decode::<ImageRecord>(RecordKind::Image.as_str(), data);

    // The same bytes as a file in a store directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let records = dir.path().join(RecordKind::Sandbox.dir_name());
    std::fs::create_dir_all(&records).expect("mkdir");
    std::fs::write(records.join("0123.json"), data).expect("write");
    let (items, report) =
        load_dir::<SandboxRecord>(&records, RecordKind::Sandbox.as_str()).expect("load_dir");
    assert_eq!(items.len(), report.loaded);
    assert_eq!(
        report.loaded + report.quarantined.len(),
        1,
        "a record file is either loaded or quarantined"
    );
});
