//! `ImageFsInfo`: the image filesystem's usage (a cached value).

use crate::daemon::Daemon;
use crate::errors::{image_error, CriResult};
use k8s_cri::v1;

/// Answers `ImageFsInfo`.
pub async fn image_fs_info(
    daemon: &Daemon,
    _req: v1::ImageFsInfoRequest,
) -> CriResult<v1::ImageFsInfoResponse> {
    let images = &daemon.images;
    let usage = images
        .fs_info()
        .await
        .map_err(|e| image_error(e, "image"))?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0);
    let fs = v1::FilesystemUsage {
        timestamp,
        fs_id: Some(v1::FilesystemIdentifier {
            mountpoint: images.image_dir().display().to_string(),
        }),
        used_bytes: Some(v1::UInt64Value {
            value: usage.used_bytes,
        }),
        inodes_used: Some(v1::UInt64Value {
            value: usage.inodes_used,
        }),
    };
    Ok(v1::ImageFsInfoResponse {
        image_filesystems: vec![fs],
        container_filesystems: Vec::new(),
    })
}
