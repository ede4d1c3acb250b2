//! The ADD result cache, kept like libcni does under
//! `<cache dir>/results/<network>-<container id>-<ifname>`, so that DEL and
//! CHECK get the ADD result as `prevResult` even after a daemon restart.
//! Entries are written atomically (temporary file, rename), without fsync,
//! as libcni does: a crashed daemon leaves the old or the new entry, and the
//! plugins' own state (host-local's leases) is not fsynced either.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The `kind` of entries this module writes (libcni's format name).
pub const CACHE_KIND: &str = "cniCacheV1";

/// Errors of the result cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing the entry failed.
    #[error("CNI result cache {path}: {source}")]
    Io {
        /// The entry or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The entry exists but cannot be understood.
    #[error("CNI result cache {path} is corrupt: {reason}")]
    Corrupt {
        /// The entry.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One cached ADD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub if_name: String,
    /// The network name.
    pub network_name: String,
    /// `CNI_ARGS` pairs.
    #[serde(default)]
    pub cni_args: Vec<(String, String)>,
    /// The runtime capability arguments that were offered.
    #[serde(default)]
    pub capability_args: Value,
    /// The final ADD result.
    pub result: Value,
}

/// The cache directory of one network (`<cache dir>/results`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// A cache rooted at `cache_dir` (entries live in its `results`
    /// subdirectory, created on first write).
    pub fn new(cache_dir: &Path) -> Self {
        ResultCache {
            dir: cache_dir.join("results"),
        }
    }

    /// The entry path for a network attachment.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Stores an entry atomically.
    pub fn store(&self, entry: &CacheEntry) -> Result<(), CacheError> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        // Private: results hold the pods' addresses and plugin state.
        crius_store::private::dir(&self.dir).map_err(io_err(&self.dir))?;
        let bytes = serde_json::to_vec(entry).map_err(|e| CacheError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = self.dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let written = (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            fs::rename(&tmp, &path)
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::Io { path, source });
        }
        Ok(())
    }

    /// Loads an entry; `Ok(None)` when there is none.
    pub fn load(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>, CacheError> {
        let path = self.path(network, container_id, ifname);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let entry: CacheEntry =
            serde_json::from_slice(&bytes).map_err(|e| CacheError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if entry.kind != CACHE_KIND {
            return Err(CacheError::Corrupt {
                path,
                reason: format!("unknown kind {:?}", entry.kind),
            });
        }
        Ok(Some(entry))
    }

    /// Removes an entry; a missing entry is fine.
    pub fn remove(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), CacheError> {
        let path = self.path(network, container_id, ifname);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(result: Value) -> CacheEntry {
        CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: "c1".into(),
            if_name: "eth0".into(),
            network_name: "net".into(),
            cni_args: vec![("K8S_POD_NAME".into(), "p".into())],
            capability_args: serde_json::json!({"portMappings": []}),
            result,
        }
    }

    #[test]
    fn store_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        assert_eq!(cache.load("net", "c1", "eth0").unwrap(), None);
        let e = entry(serde_json::json!({"cniVersion": "1.0.0"}));
        cache.store(&e).unwrap();
        assert_eq!(
            cache.path("net", "c1", "eth0"),
            dir.path().join("results/net-c1-eth0")
        );
        assert_eq!(cache.load("net", "c1", "eth0").unwrap(), Some(e.clone()));
        // Overwrite in place; no temporary file is left.
        let e2 = entry(serde_json::json!({"cniVersion": "0.4.0"}));
        cache.store(&e2).unwrap();
        assert_eq!(cache.load("net", "c1", "eth0").unwrap(), Some(e2));
        let names: Vec<_> = fs::read_dir(dir.path().join("results"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["net-c1-eth0"]);
        cache.remove("net", "c1", "eth0").unwrap();
        cache.remove("net", "c1", "eth0").unwrap();
        assert_eq!(cache.load("net", "c1", "eth0").unwrap(), None);
    }

    #[test]
    fn corrupt_entries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        fs::create_dir_all(dir.path().join("results")).unwrap();
        fs::write(cache.path("net", "c1", "eth0"), "{").unwrap();
        assert!(matches!(
            cache.load("net", "c1", "eth0"),
            Err(CacheError::Corrupt { .. })
        ));
        let mut e = entry(Value::Null);
        e.kind = "other".into();
        fs::write(
            cache.path("net", "c1", "eth0"),
            serde_json::to_vec(&e).unwrap(),
        )
        .unwrap();
        let err = cache.load("net", "c1", "eth0").unwrap_err();
        assert!(err.to_string().contains("unknown kind"), "{err}");
    }
}
