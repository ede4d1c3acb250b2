//! Spec generation from arbitrary CRI configs: the fuzz bytes are a
//! protobuf ContainerConfig, a protobuf PodSandboxConfig, the image's
//! /etc/passwd and /etc/group text (each prefixed with a little-endian u16
//! length) and the image config JSON (the rest). Building the pause and the
//! container spec must never panic, whatever the request says.

#![no_main]

use crius_spec::container::{container_spec, image_volumes, user_request, ContainerInput};
use crius_spec::{HostFacts, SandboxFacts};
use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::collections::HashMap;

/// The next length-prefixed part of `data`.
fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    if data.len() < 2 {
        return std::mem::take(data);
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let rest = &data[2..];
    let (part, tail) = rest.split_at(n.min(rest.len()));
    *data = tail;
    part
}

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let container = ContainerConfig::decode(take(&mut d)).unwrap_or_default();
    let sandbox = PodSandboxConfig::decode(take(&mut d)).unwrap_or_default();
    let passwd_text = String::from_utf8_lossy(take(&mut d)).into_owned();
    let group_text = String::from_utf8_lossy(take(&mut d)).into_owned();
    let image: crius_image::ImageConfig = serde_json::from_slice(d).unwrap_or_default();

    let spec_image = image.spec_config();
    let host = HostFacts::default();
    let load =
        |p: &str| -> Result<String, String> { Err(format!("{p}: no profiles while fuzzing")) };
    let id = "f".repeat(64);
    let facts = SandboxFacts {
        id: id.clone(),
        netns_path: Some("/run/crius/shim/k8s.io/f/netns".into()),
        shm_path: Some("/run/crius/shim/k8s.io/f/shm".into()),
        pid: Some(4242),
        hosts_path: Some("/var/lib/crius/sandboxes/f/hosts".into()),
        resolv_conf_path: Some("/var/lib/crius/sandboxes/f/resolv.conf".into()),
        hostname_path: Some("/var/lib/crius/sandboxes/f/hostname".into()),
        // The pause holds IPC and UTS (pid above).
        ipc_path: None,
        uts_path: None,
    };

    let _ = crius_spec::sandbox::validate(&sandbox, &host);
    if let Ok(spec) = crius_spec::sandbox::sandbox_spec(&sandbox, &spec_image, &facts, &host, &load)
    {
        let _ = serde_json::to_vec(&spec);
    }

    let passwd = crius_spec::user::parse_passwd(&passwd_text);
    let group = crius_spec::user::parse_group(&group_text);
    let Ok(user) =
        crius_spec::user::resolve(&user_request(&container, &spec_image), &passwd, &group)
    else {
        return;
    };
    let propagation = HashMap::new();
    let input = ContainerInput {
        id: &id,
        config: &container,
        sandbox_config: &sandbox,
        image: &spec_image,
        image_name: "registry.invalid/fuzz:latest",
        user: &user,
        sandbox: &facts,
        host: &host,
        host_propagation: &propagation,
        volume_dir: "/var/lib/crius/containers/f/volumes",
        devices: &[],
        target_pid: None,
        load_profile: &load,
    };
    let _ = image_volumes(&input);
    if let Ok(spec) = container_spec(&input) {
        let _ = serde_json::to_vec(&spec);
    }
});
