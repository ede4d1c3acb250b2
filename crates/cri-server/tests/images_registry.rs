//! Registry configuration as node operators use it (issue 19): the `ns=`
//! parameter on mirror requests, client certificates (mTLS) from hosts.toml
//! and from Docker-style certs.d files, node credentials from
//! `registry.auth_file`, and `[images] pinned`. Real docker-registry
//! processes on 127.0.0.1, the real criusd over its socket.

mod common;

use common::images::{list, pull, remove, status};
use common::pod::{container, exec, pod, run, run_pod, teardown, Env, LogDir};
use common::registry::{
    busybox_entries, image, is_root, layer, make_pki, Compression, Entry, Registry,
};
use common::Daemon;
use k8s_cri::v1::AuthConfig;
use std::path::{Path, PathBuf};
use tonic::Code;

fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "pause_image = \"registry.k8s.io/pause:3.10\"\n[registry]\nconfig_path = \"{d}/certs.d\"\n{extra}\n[cni]\nconf_dir = \"{d}/net.d\"\nbin_dirs = [\"{d}/cni-bin\"]\n",
        d = dir.display()
    )
}

/// The access-log lines of requests for `repo` after the first `from` bytes.
fn requests_for(reg: &Registry, from: usize, repo: &str) -> Vec<String> {
    let log = reg.access_log();
    log[from.min(log.len())..]
        .lines()
        .filter(|l| l.contains(&format!("/v2/{repo}/")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_ns_parameter_and_client_certificates() {
    if !is_root() {
        eprintln!("skipping mirror_ns_parameter_and_client_certificates: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = Registry::start(&dir.join("registry"), None);
    let img = image(
        vec![layer(&busybox_entries(), Compression::Gzip)],
        "amd64",
        "",
    );
    let (_, config) = reg.push_image("test/busybox", "v1", &img);
    let pki = make_pki(&dir.join("pki"));
    let tls = reg.serve_tls(&dir.join("tls"), &pki);

    // A mirror of a registry that does not exist.
    let mirror_dir = dir.join("certs.d/mirror.invalid");
    std::fs::create_dir_all(&mirror_dir).unwrap();
    std::fs::write(
        mirror_dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:1\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr
        ),
    )
    .unwrap();
    let daemon = Daemon::start(dir, &config_text(dir, ""));
    let mut c = daemon.images().await;

    // Through the mirror: manifests and blobs carry ns=<upstream>.
    let mirrored = "mirror.invalid/test/busybox:v1";
    let from = reg.access_log().len();
    assert_eq!(pull(&mut c, mirrored, None).await.unwrap(), config);
    let seen = requests_for(&reg, from, "test/busybox");
    assert!(
        seen.iter()
            .any(|l| l.contains("/manifests/v1?ns=mirror.invalid"))
            && seen.iter().any(|l| l.contains("/blobs/sha256:")),
        "{seen:#?}"
    );
    for l in &seen {
        assert!(
            l.contains("ns=mirror.invalid"),
            "a mirror request without ns=: {l}"
        );
    }
    remove(&mut c, mirrored).await;
    // Straight from the registry: no ns=.
    let from = reg.access_log().len();
    let direct = format!("{}/test/busybox:v1", reg.addr);
    assert_eq!(pull(&mut c, &direct, None).await.unwrap(), config);
    let seen = requests_for(&reg, from, "test/busybox");
    assert!(!seen.is_empty());
    for l in &seen {
        assert!(!l.contains("ns="), "a direct request with ns=: {l}");
    }
    remove(&mut c, &direct).await;

    // mTLS through hosts.toml, relative paths from the host's directory.
    let host_dir = dir.join("certs.d").join(&tls.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    for (from, to) in [
        (&pki.ca, "ca.pem"),
        (&pki.client_cert, "client.pem"),
        (&pki.client_key, "client.key"),
    ] {
        std::fs::copy(from, host_dir.join(to)).unwrap();
    }
    let both = [
        std::fs::read_to_string(&pki.client_cert).unwrap(),
        std::fs::read_to_string(&pki.client_key).unwrap(),
    ]
    .concat();
    std::fs::write(host_dir.join("both.pem"), both).unwrap();
    let secure = format!("{}/test/busybox:v1", tls.addr);
    let hosts = |client: &str| {
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"https://{}\"\nca = \"ca.pem\"\n{client}",
                tls.addr
            ),
        )
        .unwrap();
    };
    // The registry refuses a client without a certificate.
    hosts("");
    let err = pull(&mut c, &secure, None).await.unwrap_err();
    let refused = |e: &tonic::Status| {
        e.message().contains(&tls.addr) && e.message().to_lowercase().contains("certificate")
    };
    assert!(refused(&err), "{err:?}");
    // Every form of `client`, read at each pull (no restart).
    for client in [
        "client = [[\"client.pem\", \"client.key\"]]\n",
        "client = [\"client.pem\", \"client.key\"]\n",
        "client = \"both.pem\"\n",
    ] {
        hosts(client);
        assert_eq!(
            pull(&mut c, &secure, None)
                .await
                .unwrap_or_else(|e| panic!("{client}: {e:?}")),
            config
        );
        remove(&mut c, &secure).await;
    }
    // A client certificate file that holds no key is an error naming it.
    hosts("client = \"ca.pem\"\n");
    let err = pull(&mut c, &secure, None).await.unwrap_err();
    assert!(err.message().contains("ca.pem"), "{err:?}");

    // Docker-style certs.d: CA only is refused, the client pair accepted.
    std::fs::remove_dir_all(&host_dir).unwrap();
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(&pki.ca, host_dir.join("ca.crt")).unwrap();
    let err = pull(&mut c, &secure, None).await.unwrap_err();
    assert!(refused(&err), "{err:?}");
    std::fs::copy(&pki.client_cert, host_dir.join("client.cert")).unwrap();
    std::fs::copy(&pki.client_key, host_dir.join("client.key")).unwrap();
    assert_eq!(pull(&mut c, &secure, None).await.unwrap(), config);
    let img = status(&mut c, &secure).await.expect("pulled over mTLS");
    assert_eq!(img.repo_tags, vec![secure.clone()]);
    drop((daemon, tls, reg));
}

#[tokio::test(flavor = "multi_thread")]
async fn node_credentials_and_pinned_images() {
    if !is_root() {
        eprintln!("skipping node_credentials_and_pinned_images: needs root");
        return;
    }
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secure = Registry::start(&dir.join("secure"), Some(("alice", "s3cret-pw")));
    let variant = |marker: &'static str| {
        let mut entries = busybox_entries();
        entries.push(Entry::File(marker, marker.as_bytes().to_vec(), 0o644));
        image(vec![layer(&entries, Compression::Gzip)], "amd64", "")
    };
    let (_, v1) = secure.push_image("private/busybox", "v1", &variant("v1"));
    let (_, v2) = secure.push_image("private/busybox", "v2", &variant("v2"));
    let (v3_manifest, v3) = secure.push_image("private/busybox", "v3", &variant("v3"));
    let (_, pause) = secure.push_image("private/pause", "1", &variant("pause"));
    let auth_file = dir.join("auth.json");
    let extra = format!(
        "auth_file = \"{}\"\n[images]\npinned = [\"*/private/busy*:v1\", \"*@{v3_manifest}\"]",
        auth_file.display()
    );
    let text = config_text(dir, &extra).replace(
        "registry.k8s.io/pause:3.10",
        &format!("{}/private/pause:1", secure.addr),
    );
    let daemon = Daemon::start(dir, &text);
    let mut c = daemon.images().await;
    let name = |tag: &str| format!("{}/private/busybox:{tag}", secure.addr);
    let denied =
        |e: &tonic::Status| matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied);

    // No file yet: anonymous, refused.
    let err = pull(&mut c, &name("v1"), None).await.unwrap_err();
    assert!(denied(&err), "{err:?}");
    // A wrong password in the file: refused; the right one, read at the
    // next pull without a restart, in the Docker key form.
    let write = |json: String| std::fs::write(&auth_file, json).unwrap();
    write(format!(
        r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
        secure.addr,
        b64("alice:wrong-pw")
    ));
    let err = pull(&mut c, &name("v1"), None).await.unwrap_err();
    assert!(denied(&err), "{err:?}");
    // Credentials in the request win over the file's.
    let good = AuthConfig {
        username: "alice".into(),
        password: "s3cret-pw".into(),
        ..Default::default()
    };
    assert_eq!(pull(&mut c, &name("v1"), Some(good)).await.unwrap(), v1);
    write(format!(
        r#"{{"auths": {{"http://{}/v2/": {{"username": "alice", "password": "s3cret-pw"}}}}}}"#,
        secure.addr
    ));
    assert_eq!(pull(&mut c, &name("v2"), None).await.unwrap(), v2);
    let wrong = AuthConfig {
        username: "alice".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = pull(&mut c, &name("v3"), Some(wrong)).await.unwrap_err();
    assert!(denied(&err), "the request's credentials are used: {err:?}");
    // A repository-namespace key with base64 auth; the pause image too.
    write(format!(
        r#"{{"auths": {{"{}/private": {{"auth": "{}"}}}}}}"#,
        secure.addr,
        b64("alice:s3cret-pw")
    ));
    assert_eq!(pull(&mut c, &name("v3"), None).await.unwrap(), v3);
    let pause_ref = format!("{}/private/pause:1", secure.addr);
    assert_eq!(pull(&mut c, &pause_ref, None).await.unwrap(), pause);
    // A broken file fails the pull, naming the key, never the content.
    write(format!(
        r#"{{"auths": {{"{}": {{"auth": "s3cret-pw"}}}}"#,
        secure.addr
    ));
    let err = pull(&mut c, &name("v1"), None).await.unwrap_err();
    assert!(err.message().contains("registry.auth_file"), "{err:?}");
    assert!(!err.message().contains("s3cret"), "{err:?}");
    let log = daemon.log_text();
    for secret in ["s3cret-pw", &b64("alice:s3cret-pw")] {
        assert!(!log.contains(secret), "the daemon log shows a secret");
    }

    // Pinned: by tag glob (v1), by digest (v3), the pause image; not v2.
    let images = list(&mut c).await;
    let mut pinned: Vec<(String, bool)> = images.iter().map(|i| (i.id.clone(), i.pinned)).collect();
    pinned.sort();
    let mut want = vec![
        (v1.clone(), true),
        (v2.clone(), false),
        (v3, true),
        (pause, true),
    ];
    want.sort();
    assert_eq!(pinned, want);
    for (tag, want) in [("v1", true), ("v2", false)] {
        let img = status(&mut c, &name(tag)).await.expect("pulled");
        assert_eq!(img.pinned, want, "{tag}");
    }
    drop((daemon, secure));
}

/// RunPodSandbox pulls the pause image, and PullImage an image, from a
/// registry that wants credentials, with the node's only; the container
/// runs from the pulled image.
#[tokio::test(flavor = "multi_thread")]
async fn pause_and_images_use_node_credentials() {
    if !is_root() {
        eprintln!("skipping pause_and_images_use_node_credentials: needs root");
        return;
    }
    // The pause image is what this pulls at RunPodSandbox: the pod gets a
    // pause container, not the shim's PID-namespace holder.
    let env =
        Env::start_with_registry_auth("crius-reg-auth", "node", "n0de-pw", common::WITH_PAUSE);
    let mut images = env.daemon.images().await;
    let busybox = format!("{}/busybox:test", env.registry.addr);
    // The request's (wrong) credentials win over the node's.
    let wrong = AuthConfig {
        username: "node".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut images, &busybox, Some(wrong)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-reg-auth";
    let config = pod("reg-auth", uid);
    let _logs = LogDir(PathBuf::from(&config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &config).await;
    assert_eq!(env.pull_busybox().await, busybox);
    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &config,
        container("c", &busybox, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    let (code, out, err) = exec(&mut rt, &id, &["/bin/sh", "-c", "echo $FROM_IMAGE"]).await;
    assert_eq!((code, out.trim(), err.as_str()), (0, "1", ""));
    // The pause image is pinned, busybox is not.
    let listed = list(&mut images).await;
    let pinned = |tag: &str| {
        listed
            .iter()
            .find(|i| i.repo_tags.iter().any(|t| t.ends_with(tag)))
            .map(|i| i.pinned)
    };
    assert_eq!(pinned("/pause:test"), Some(true), "{listed:?}");
    assert_eq!(pinned("/busybox:test"), Some(false), "{listed:?}");
    assert!(!env.daemon.log_text().contains("n0de-pw"));
    teardown(&env, &mut rt, &pod_id, uid).await;
}
