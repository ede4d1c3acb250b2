//! CNI result parsing: arbitrary plugin output (any result version) must
//! parse or fail with an error, never panic; so must picking the pod IPs
//! from it and reading the same bytes as a network configuration.

#![no_main]

use crius_netns::cni::config::NetworkConfigList;
use crius_netns::CniResult;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(result) = CniResult::parse(data) {
        let _ = result.pod_ips("eth0");
        let _ = result.pod_ips("");
    }
    let _ = NetworkConfigList::parse(Path::new("/etc/cni/net.d/10-fuzz.conflist"), data);
});
