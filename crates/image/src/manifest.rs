//! OCI and Docker manifest types, and platform selection from an index.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Largest manifest or index accepted (CRI-O's limit since CVE-2020-1702):
/// a descriptor declaring more is refused before anything is fetched, and
/// a body read by tag stops there.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest image config accepted; a config descriptor declaring more is
/// refused before the blob is fetched (the config is read whole and kept
/// in the image's record).
pub const MAX_CONFIG_SIZE: u64 = 4 << 20;

/// Every manifest type crius understands, for the `Accept` header.
pub const ACCEPTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Errors of decoding manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON of the expected shape.
    #[error("invalid {what}: {source}")]
    Decode {
        /// What was decoded.
        what: &'static str,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A media type crius does not handle.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// A layer media type crius does not handle.
    #[error("unsupported layer media type {0:?}")]
    UnsupportedLayer(String),
    /// No entry of the index fits this machine.
    #[error("no image in the index matches platform {0}")]
    NoMatchingPlatform(String),
    /// A descriptor is malformed.
    #[error("invalid descriptor: {0}")]
    InvalidDescriptor(String),
    /// A manifest, index or config descriptor declares more than allowed.
    #[error("{what} {digest} declares {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// `image config`, `image manifest` or `image index`.
        what: &'static str,
        /// The descriptor's digest.
        digest: String,
        /// The size it declares.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// A platform an image runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture in Go's naming (`amd64`, `arm64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// CPU variant (`v7`, `v8`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform of this machine.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", "v8"),
            "arm" => ("arm", "v7"),
            "x86" => ("386", ""),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            "riscv64" => ("riscv64", ""),
            other => (other, ""),
        };
        Platform {
            architecture: architecture.into(),
            os: std::env::consts::OS.into(),
            variant: variant.into(),
        }
    }

    /// Variants of the host's architecture that it can run, best first.
    fn compatible_variants(&self) -> Vec<&'static str> {
        match (self.architecture.as_str(), self.variant.as_str()) {
            ("arm64", _) => vec!["v8", ""],
            ("arm", "v8") => vec!["v8", "v7", "v6", "v5", ""],
            ("arm", "v7") | ("arm", "") => vec!["v7", "v6", "v5", ""],
            ("arm", "v6") => vec!["v6", "v5", ""],
            ("amd64", _) => vec!["", "v1"],
            _ => vec![""],
        }
    }

    /// How well `candidate` fits this (host) platform: `None` when it cannot
    /// run here, smaller is better.
    pub fn rank(&self, candidate: &Platform) -> Option<usize> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        if candidate.variant == self.variant {
            return Some(0);
        }
        self.compatible_variants()
            .iter()
            .position(|v| *v == candidate.variant)
            .map(|p| p + 1)
    }
}

/// A content descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform, in index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

impl Descriptor {
    /// Refuses a descriptor of `what` declaring more than `limit` bytes.
    pub fn check_size(&self, what: &'static str, limit: u64) -> Result<(), ManifestError> {
        if self.size > limit {
            return Err(ManifestError::TooLarge {
                what,
                digest: self.digest.clone(),
                size: self.size,
                limit,
            });
        }
        Ok(())
    }

    /// Refuses a manifest or index descriptor (by its media type) over
    /// [`MAX_MANIFEST_SIZE`].
    pub fn check_manifest_size(&self) -> Result<(), ManifestError> {
        let what = match self.media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => "image index",
            _ => "image manifest",
        };
        self.check_size(what, MAX_MANIFEST_SIZE)
    }

    /// Checks the digest is a well-formed sha256 digest.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if crate::reference::is_digest(&self.digest) {
            Ok(())
        } else {
            Err(ManifestError::InvalidDescriptor(format!(
                "digest {:?} is not sha256:<64 hex digits>",
                self.digest
            )))
        }
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    #[serde(default)]
    pub schema_version: u32,
    /// Media type, if the manifest states it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The image config.
    pub config: Descriptor,
    /// Layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An index / manifest list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    #[serde(default)]
    pub schema_version: u32,
    /// Media type, if the index states it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
}

/// A decoded manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform manifest.
    Image(ImageManifest),
    /// A multi-platform index.
    Index(ImageIndex),
}

fn decode<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    body: &[u8],
) -> Result<T, ManifestError> {
    serde_json::from_slice(body).map_err(|source| ManifestError::Decode { what, source })
}

impl Manifest {
    /// Decodes a manifest, using the media type of the response (or of the
    /// body when the response has none useful).
    pub fn parse(content_type: &str, body: &[u8]) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            media_type: String,
            #[serde(default)]
            manifests: Option<serde_json::Value>,
            #[serde(default)]
            schema_version: u32,
        }
        let probe: Probe = decode("manifest", body)?;
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let media = if !probe.media_type.is_empty() {
            probe.media_type.as_str()
        } else if ACCEPTED.contains(&ct) {
            ct
        } else if probe.manifests.is_some() {
            OCI_INDEX
        } else {
            OCI_MANIFEST
        };
        if probe.schema_version == 1 {
            return Err(ManifestError::UnsupportedMediaType(
                "Docker schema 1 manifest".into(),
            ));
        }
        let m = match media {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let m: ImageManifest = decode("image manifest", body)?;
                m.config.validate()?;
                for l in &m.layers {
                    l.validate()?;
                    LayerCompression::from_media_type(&l.media_type)?;
                }
                Manifest::Image(m)
            }
            OCI_INDEX | DOCKER_LIST => {
                let i: ImageIndex = decode("image index", body)?;
                for d in &i.manifests {
                    d.validate()?;
                }
                Manifest::Index(i)
            }
            other => return Err(ManifestError::UnsupportedMediaType(other.to_string())),
        };
        Ok(m)
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl LayerCompression {
    /// The compression of a layer media type.
    pub fn from_media_type(media_type: &str) -> Result<LayerCompression, ManifestError> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Ok(LayerCompression::None)
            }
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Ok(LayerCompression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(LayerCompression::Zstd)
            }
            other => Err(ManifestError::UnsupportedLayer(other.to_string())),
        }
    }
}

/// Picks the manifest for `host` from an index: the best-ranked entry that
/// can run here (attestations and entries without a platform never match).
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    host: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .filter_map(|d| {
            d.platform
                .as_ref()
                .and_then(|p| host.rank(p))
                .map(|r| (r, d))
        })
        .min_by_key(|(r, _)| *r)
        .map(|(_, d)| d)
        .ok_or_else(|| ManifestError::NoMatchingPlatform(host.to_string()))
}

/// The parts of the image config that crius uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Runtime configuration.
    #[serde(default)]
    pub config: RuntimeConfig,
    /// The layer diff ids.
    #[serde(default)]
    pub rootfs: RootFs,
    /// Architecture the image was built for.
    #[serde(default)]
    pub architecture: String,
    /// Operating system the image was built for.
    #[serde(default)]
    pub os: String,
}

impl ImageConfig {
    /// The parts of the runtime configuration that shape a container's
    /// spec (user, env, entrypoint, cmd, working dir, volume paths).
    pub fn spec_config(&self) -> crius_spec::ImageConfig {
        let rc = &self.config;
        crius_spec::ImageConfig {
            user: rc.user.clone(),
            env: rc.env.clone(),
            entrypoint: rc.entrypoint.clone(),
            cmd: rc.cmd.clone(),
            working_dir: rc.working_dir.clone(),
            volumes: rc.volumes.keys().cloned().collect(),
        }
    }
}

/// The `rootfs` section of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Digests of the uncompressed layers, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The `config` section of an image config: how containers run by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `NAME=value` entries.
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    /// Entrypoint.
    #[serde(default, deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    /// Default arguments.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// Volume mount points (keys of the JSON object).
    #[serde(default, deserialize_with = "null_as_default")]
    pub volumes: std::collections::BTreeMap<String, serde_json::Value>,
    /// Signal that stops the container (`SIGTERM`, `15`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Labels.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Parses an image config blob.
pub fn parse_config(body: &[u8]) -> Result<ImageConfig, ManifestError> {
    let c: ImageConfig = decode("image config", body)?;
    for d in &c.rootfs.diff_ids {
        if !crate::reference::is_digest(d) {
            return Err(ManifestError::InvalidDescriptor(format!(
                "diff id {d:?} is not sha256:<64 hex digits>"
            )));
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn entry(c: char, arch: &str, variant: &str, media: &str) -> Descriptor {
        Descriptor {
            media_type: media.into(),
            digest: digest(c),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: if arch == "unknown" {
                    "unknown"
                } else {
                    "linux"
                }
                .into(),
                variant: variant.into(),
            }),
            annotations: HashMap::new(),
        }
    }

    fn host(arch: &str, variant: &str) -> Platform {
        Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.into(),
        }
    }

    #[test]
    fn platform_selection() {
        let index = ImageIndex {
            schema_version: 2,
            media_type: OCI_INDEX.into(),
            manifests: vec![
                entry('1', "unknown", "", OCI_MANIFEST),
                entry('2', "arm", "v6", OCI_MANIFEST),
                entry('3', "arm", "v7", OCI_MANIFEST),
                entry('4', "arm64", "v8", OCI_MANIFEST),
                entry('5', "amd64", "", OCI_MANIFEST),
                entry('6', "s390x", "", OCI_MANIFEST),
            ],
        };
        // (host, expected entry; None when nothing matches)
        let cases = [
            (host("amd64", ""), Some('5')),
            (host("arm64", "v8"), Some('4')),
            (host("arm64", ""), Some('4')),
            (host("arm", "v7"), Some('3')),
            (host("arm", "v8"), Some('3')),
            (host("arm", "v6"), Some('2')),
            (host("arm", "v5"), None),
            (host("riscv64", ""), None),
        ];
        for (h, want) in cases {
            let got = select_platform(&index, &h).ok().map(|d| d.digest.clone());
            assert_eq!(got, want.map(digest), "{h}");
        }
        // An arm64 entry without variant is taken when there is no v8 entry.
        let index = ImageIndex {
            manifests: vec![
                entry('a', "arm64", "", DOCKER_MANIFEST),
                entry('b', "amd64", "v3", OCI_MANIFEST),
            ],
            ..Default::default()
        };
        assert_eq!(
            select_platform(&index, &host("arm64", "v8"))
                .unwrap()
                .digest,
            digest('a')
        );
        // amd64 hosts do not take an entry built for a newer micro-architecture.
        assert!(select_platform(&index, &host("amd64", "")).is_err());
        // The host of these tests is one the index can serve.
        assert!(Platform::host().rank(&Platform::host()) == Some(0));
    }

    #[test]
    fn manifest_kinds() {
        let cfg = digest('c');
        let layer = digest('d');
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{cfg}","size":3}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{layer}","size":5}}]}}"#
        );
        // No mediaType in the body: the Content-Type decides, else the shape.
        for ct in [OCI_MANIFEST, DOCKER_MANIFEST, "application/json", ""] {
            match Manifest::parse(ct, image.as_bytes()).unwrap() {
                Manifest::Image(m) => assert_eq!(m.layers[0].digest, layer),
                other => panic!("{ct}: {other:?}"),
            }
        }
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{cfg}","size":3,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        assert!(matches!(
            Manifest::parse("", list.as_bytes()).unwrap(),
            Manifest::Index(_)
        ));
        let bad = [
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, "schema 1"),
            (r#"{"mediaType":"text/plain"}"#, "unsupported"),
            ("not json", "invalid"),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:abc","size":1},"layers":[]}"#,
                "digest",
            ),
        ];
        for (body, want) in bad {
            let err = Manifest::parse("", body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        let weird_layer = image.replace("tar+zstd", "tar+lz4");
        assert!(matches!(
            Manifest::parse("", weird_layer.as_bytes()),
            Err(ManifestError::UnsupportedLayer(_))
        ));
    }

    #[test]
    fn config_fields() {
        let body = br#"{"architecture":"amd64","os":"linux","config":{"User":"1000:1000","Env":["A=1"],
            "Entrypoint":null,"Cmd":["sh"],"WorkingDir":"/w","Volumes":{"/data":{}},"StopSignal":"SIGINT"},
            "rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
        let c = parse_config(body).unwrap();
        assert_eq!(c.config.user, "1000:1000");
        assert_eq!(c.config.env, vec!["A=1"]);
        assert!(c.config.entrypoint.is_empty());
        assert_eq!(c.config.cmd, vec!["sh"]);
        assert_eq!(c.config.working_dir, "/w");
        assert!(c.config.volumes.contains_key("/data"));
        assert_eq!(
            c.spec_config(),
            crius_spec::ImageConfig {
                user: "1000:1000".into(),
                env: vec!["A=1".into()],
                entrypoint: Vec::new(),
                cmd: vec!["sh".into()],
                working_dir: "/w".into(),
                volumes: vec!["/data".into()],
            }
        );
        assert_eq!(c.config.stop_signal, "SIGINT");
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert!(parse_config(br#"{"rootfs":{"diff_ids":["md5:1"]}}"#).is_err());
        assert_eq!(parse_config(b"{}").unwrap(), ImageConfig::default());
    }
}
