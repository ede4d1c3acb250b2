//! What a container takes from images besides its own root filesystem:
//! image volumes (CRI mounts whose source is an image, KEP-4639) and the
//! name of the image it was created from, as the user asked for it.
//!
//! The caller mounts each image volume read-only on the host and hands its
//! mount point back through [`with_image_sources`]; from there on an image
//! volume is an ordinary read-only bind mount for [`crate::mounts`].

use crate::error::{invalid, SpecError};
use k8s_cri::v1::Mount as CriMount;

/// One image volume a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMountRequest {
    /// Index of the mount in `config.mounts`.
    pub index: usize,
    /// The image reference (kubelet sends the image id it pulled).
    pub image: String,
    /// Path inside the container.
    pub container_path: String,
}

/// The most image volumes one container may have (each is a mount on
/// the host): bounds what one request can make the daemon do.
pub const MAX_IMAGE_VOLUMES: usize = 64;

/// The image volumes among the CRI mounts, checked as containerd checks
/// them: the host path must be empty (the image is the source) and the
/// mount read-only (image volumes are read-only by definition); at most
/// [`MAX_IMAGE_VOLUMES`] of them.
///
/// The whole image is mounted: k8s-cri 0.11's `Mount` has `image` (field 9)
/// but not `image_sub_path` (field 10 of later CRI versions), so a subPath
/// cannot reach us; when the crate gains the field, it is to be checked here
/// (relative, no `..`) and resolved inside the mounted image by the caller.
pub fn image_mount_requests(mounts: &[CriMount]) -> Result<Vec<ImageMountRequest>, SpecError> {
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let Some(image) = &m.image else { continue };
        let field = format!("config.mounts[{i}]");
        let reference = image.image.trim();
        if reference.is_empty() {
            return Err(invalid(format!("{field}.image.image"), "must not be empty"));
        }
        if !m.host_path.is_empty() {
            return Err(invalid(
                format!("{field}.host_path"),
                "must be empty for an image volume (the image is the source)",
            ));
        }
        if !m.readonly {
            return Err(invalid(
                format!("{field}.readonly"),
                "must be set for an image volume: image volumes are read-only",
            ));
        }
        if out.len() == MAX_IMAGE_VOLUMES {
            return Err(invalid(
                "config.mounts",
                format!("more than {MAX_IMAGE_VOLUMES} image volumes"),
            ));
        }
        out.push(ImageMountRequest {
            index: i,
            image: reference.to_string(),
            container_path: m.container_path.clone(),
        });
    }
    Ok(out)
}

/// The CRI mounts with each image volume's host mount point (`sources`:
/// mount index and host path) as its host path, and without its image, so
/// that the rest of spec generation treats it as a read-only bind mount.
pub fn with_image_sources(mounts: &[CriMount], sources: &[(usize, String)]) -> Vec<CriMount> {
    let mut out = mounts.to_vec();
    for (i, path) in sources {
        if let Some(m) = out.get_mut(*i) {
            m.host_path = path.clone();
            m.image = None;
        }
    }
    out
}

/// `spec` with `nosuid` and `nodev` on the bind mounts whose source is
/// one of `sources` (the host mount points of the image volumes, which
/// have both flags). runc remounts a read-only bind with exactly the flags
/// the options name: without these it would widen the container's view
/// beyond the host's, and in a pod with its own user namespace, where
/// the flags are locked, the remount would fail.
pub fn keep_image_mount_flags(
    mut spec: oci_spec::runtime::Spec,
    sources: &[String],
) -> oci_spec::runtime::Spec {
    if sources.is_empty() {
        return spec;
    }
    if let Some(mut mounts) = spec.mounts().clone() {
        for m in mounts.iter_mut() {
            let ours = m
                .source()
                .as_ref()
                .is_some_and(|s| sources.iter().any(|x| s.as_os_str() == x.as_str()));
            if !ours {
                continue;
            }
            let mut options = m.options().clone().unwrap_or_default();
            for flag in ["nosuid", "nodev"] {
                if !options.iter().any(|o| o == flag) {
                    options.push(flag.to_string());
                }
            }
            m.set_options(Some(options));
        }
        spec.set_mounts(Some(mounts));
    }
    spec
}

/// The name of the image a container was created from, as containerd
/// 2.x reports it (in the `io.kubernetes.cri.image-name` annotation and in
/// ContainerStatus.image): kubelet's `user_specified_image` (what the pod
/// spec says, e.g. `nginx:1.27`); else the tag the request named, when it
/// named one of the image's tags (`requested_tag`, normalised by the
/// caller); else the image's first repo tag, first repo digest, or its id.
pub fn display_image_name(
    user_specified: &str,
    requested_tag: Option<&str>,
    repo_tags: &[String],
    repo_digests: &[String],
    id: &str,
) -> String {
    let user_specified = user_specified.trim();
    if !user_specified.is_empty() {
        return user_specified.to_string();
    }
    requested_tag
        .or(repo_tags.first().map(String::as_str))
        .or(repo_digests.first().map(String::as_str))
        .unwrap_or(id)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::ImageSpec;

    fn mount(container: &str, host: &str, ro: bool, image: Option<&str>) -> CriMount {
        CriMount {
            container_path: container.into(),
            host_path: host.into(),
            readonly: ro,
            image: image.map(|i| ImageSpec {
                image: i.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn requests() {
        // (mounts, Ok(indexes and images) or Err(field))
        let cases: Vec<(Vec<CriMount>, Result<Vec<(usize, &str)>, &str>)> = vec![
            (vec![], Ok(vec![])),
            (vec![mount("/data", "/srv", false, None)], Ok(vec![])),
            (
                vec![
                    mount("/data", "/srv", false, None),
                    mount("/tools", "", true, Some("sha256:abc")),
                    mount("/more", "", true, Some(" reg/x:1 ")),
                ],
                Ok(vec![(1, "sha256:abc"), (2, "reg/x:1")]),
            ),
            (
                vec![mount("/tools", "/host", true, Some("sha256:abc"))],
                Err("config.mounts[0].host_path"),
            ),
            (
                vec![
                    mount("/a", "/srv", false, None),
                    mount("/tools", "", false, Some("sha256:abc")),
                ],
                Err("config.mounts[1].readonly"),
            ),
            (
                vec![mount("/tools", "", true, Some(" "))],
                Err("config.mounts[0].image.image"),
            ),
        ];
        let many = |n: usize| -> Vec<CriMount> {
            (0..n)
                .map(|i| mount(&format!("/v{i}"), "", true, Some("sha256:abc")))
                .collect()
        };
        let cases = cases.into_iter().chain([
            (
                many(MAX_IMAGE_VOLUMES),
                Ok((0..MAX_IMAGE_VOLUMES).map(|i| (i, "sha256:abc")).collect()),
            ),
            (many(MAX_IMAGE_VOLUMES + 1), Err("config.mounts")),
        ]);
        for (mounts, want) in cases {
            let got = image_mount_requests(&mounts);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    let pairs: Vec<(usize, &str)> =
                        got.iter().map(|r| (r.index, r.image.as_str())).collect();
                    assert_eq!(pairs, want);
                    for r in &got {
                        assert_eq!(r.container_path, mounts[r.index].container_path);
                    }
                }
                (Err(SpecError::InvalidArgument { field, .. }), Err(want)) => {
                    assert_eq!(field, want)
                }
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sources_become_read_only_binds() {
        let mounts = vec![
            mount("/data", "/srv", false, None),
            mount("/tools", "", true, Some("sha256:abc")),
        ];
        let got = with_image_sources(&mounts, &[(1, "/run/c/image-mounts/1".into())]);
        assert_eq!(got[0], mounts[0]);
        assert_eq!(got[1].host_path, "/run/c/image-mounts/1");
        assert_eq!(got[1].image, None);
        assert!(got[1].readonly);
        // What the mount builder makes of it: a read-only bind.
        let entries =
            crate::mounts::cri_mounts(&got, &Default::default(), false).expect("valid mounts");
        assert_eq!(entries[1].source, "/run/c/image-mounts/1");
        assert_eq!(entries[1].destination, "/tools");
        assert!(entries[1].options.contains(&"ro".to_string()));
        assert!(entries[1].options.contains(&"rbind".to_string()));
        // An index out of range changes nothing.
        assert_eq!(with_image_sources(&mounts, &[(7, "/x".into())]), mounts);
    }

    #[test]
    fn image_mounts_keep_their_flags() {
        use oci_spec::runtime::{MountBuilder, Spec};
        let mount = |src: &str, dest: &str, opts: &[&str]| {
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(src)
                .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
                .unwrap()
        };
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![
            mount("/host/data", "/data", &["rbind", "ro"]),
            mount("/s/image-mounts/1", "/tools", &["rbind", "rprivate", "ro"]),
            mount("/s/image-mounts/2", "/more", &["rbind", "ro", "nodev"]),
        ]));
        // (sources, options of each mount after)
        let cases: Vec<(Vec<String>, [&[&str]; 3])> = vec![
            (
                vec![],
                [
                    &["rbind", "ro"],
                    &["rbind", "rprivate", "ro"],
                    &["rbind", "ro", "nodev"],
                ],
            ),
            (
                vec!["/s/image-mounts/1".into(), "/s/image-mounts/2".into()],
                [
                    &["rbind", "ro"],
                    &["rbind", "rprivate", "ro", "nosuid", "nodev"],
                    &["rbind", "ro", "nodev", "nosuid"],
                ],
            ),
        ];
        for (sources, want) in cases {
            let got = keep_image_mount_flags(spec.clone(), &sources);
            let got: Vec<Vec<String>> = got
                .mounts()
                .clone()
                .unwrap()
                .iter()
                .map(|m| m.options().clone().unwrap())
                .collect();
            let want: Vec<Vec<String>> = want
                .iter()
                .map(|o| o.iter().map(|s| s.to_string()).collect())
                .collect();
            assert_eq!(got, want, "{sources:?}");
        }
    }

    #[test]
    fn display_names() {
        let tags = vec!["docker.io/library/nginx:1.27".to_string()];
        let digests = vec!["docker.io/library/nginx@sha256:d1".to_string()];
        let id = "sha256:c0";
        // (user_specified, requested tag, tags, digests, want)
        let cases: Vec<(&str, Option<&str>, &[String], &[String], &str)> = vec![
            ("nginx:1.27", None, &tags, &digests, "nginx:1.27"),
            (
                "nginx:1.27",
                Some("docker.io/library/nginx:latest"),
                &tags,
                &digests,
                "nginx:1.27",
            ),
            (
                "",
                Some("docker.io/library/nginx:latest"),
                &tags,
                &digests,
                "docker.io/library/nginx:latest",
            ),
            ("", None, &tags, &digests, "docker.io/library/nginx:1.27"),
            (
                " ",
                None,
                &[],
                &digests,
                "docker.io/library/nginx@sha256:d1",
            ),
            ("", None, &[], &[], "sha256:c0"),
        ];
        for (user, requested, tags, digests, want) in cases {
            assert_eq!(
                display_image_name(user, requested, tags, digests, id),
                want,
                "{user:?} {requested:?}"
            );
        }
    }
}
