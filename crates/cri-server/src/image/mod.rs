//! The CRI `ImageService`: a thin translation onto [`crius_image::ImageManager`].

use crate::daemon::Daemon;
use crate::errors::invalid_field;
use crius_image::{Auth, ErrorKind, ImageError, ImageManager};
use crius_store::ImageRecord;
use k8s_cri::v1;
use k8s_cri::v1::image_service_server::ImageService;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Pulls an image and records the pull in the metrics (used by PullImage
/// and by RunPodSandbox for the pause image).
#[tracing::instrument(level = "debug", name = "image", skip_all, fields(op = "pull", image = reference))]
pub async fn pull(
    daemon: &Daemon,
    reference: &str,
    auth: Option<Auth>,
) -> Result<crius_store::ImageRecord, crius_image::ImageError> {
    let started = std::time::Instant::now();
    let pulled = daemon.images.pull(reference, auth).await;
    let metrics = &daemon.metrics;
    metrics
        .image_pull_duration
        .observe(started.elapsed().as_secs_f64());
    let result = if pulled.is_ok() { "ok" } else { "error" };
    metrics.image_pulls.with_label_values(&[result]).inc();
    if let Ok(rec) = &pulled {
        metrics.image_pull_bytes.inc_by(rec.metadata.size);
    }
    pulled
}

/// The `ImageService` implementation.
#[derive(Clone)]
pub struct ImageSvc {
    daemon: Arc<Daemon>,
}

impl ImageSvc {
    /// A service over the shared daemon state.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        ImageSvc { daemon }
    }

    fn images(&self) -> &ImageManager {
        &self.daemon.images
    }
}

/// Maps an image error onto a gRPC status; `field` names the request field
/// that carried the reference.
pub fn image_status(err: ImageError, field: &str) -> Status {
    let msg = err.to_string();
    match err.kind() {
        ErrorKind::InvalidArgument => invalid_field(field, msg),
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::Unauthenticated => Status::unauthenticated(msg),
        ErrorKind::DataLoss => Status::data_loss(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        ErrorKind::DeadlineExceeded => Status::deadline_exceeded(msg),
        ErrorKind::Internal => Status::internal(msg),
    }
}

/// The uid or user name of an image config `User` (`uid`, `name`,
/// `uid:gid`, `name:group`), as containerd reports them.
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let first = user.split(':').next().unwrap_or("");
    if first.is_empty() {
        return (None, String::new());
    }
    match first.parse::<i64>() {
        Ok(uid) if uid >= 0 => (Some(uid), String::new()),
        _ => (None, first.to_string()),
    }
}

fn image_user(rec: &ImageRecord) -> String {
    rec.metadata
        .config
        .get("config")
        .and_then(|c| c.get("User"))
        .and_then(|u| u.as_str())
        .unwrap_or("")
        .to_string()
}

/// The CRI view of an image record.
pub fn to_cri(rec: &ImageRecord, pinned: bool) -> v1::Image {
    let (uid, username) = user_of(&image_user(rec));
    v1::Image {
        id: rec.metadata.id.clone(),
        repo_tags: rec.metadata.repo_tags.clone(),
        repo_digests: rec.metadata.repo_digests.clone(),
        size: rec.metadata.size,
        uid: uid.map(|value| v1::Int64Value { value }),
        username,
        spec: Some(v1::ImageSpec {
            image: rec.metadata.id.clone(),
            ..Default::default()
        }),
        pinned,
    }
}

fn spec_image(spec: Option<&v1::ImageSpec>, field: &str) -> Result<String, Status> {
    let image = spec.map(|s| s.image.trim()).unwrap_or("");
    if image.is_empty() {
        return Err(invalid_field(field, "must not be empty"));
    }
    Ok(image.to_string())
}

#[tonic::async_trait]
impl ImageService for ImageSvc {
    async fn list_images(
        &self,
        request: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        let req = request.into_inner();
        let wanted = req
            .filter
            .as_ref()
            .and_then(|f| f.image.as_ref())
            .map(|s| s.image.trim().to_string())
            .filter(|s| !s.is_empty());
        let records = match wanted {
            Some(r) => match self.images().resolve(&r) {
                Ok(found) => found.into_iter().collect(),
                // A filter that is not a valid reference matches nothing.
                Err(e) if e.kind() == ErrorKind::InvalidArgument => Vec::new(),
                Err(e) => return Err(image_status(e, "filter.image.image")),
            },
            None => self.images().list(),
        };
        let images = records
            .iter()
            .map(|r| to_cri(r, self.images().is_pinned(r)))
            .collect();
        Ok(Response::new(v1::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<v1::ImageStatusRequest>,
    ) -> Result<Response<v1::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let reference = spec_image(req.image.as_ref(), "image.image")?;
        let Some(rec) = self
            .images()
            .resolve(&reference)
            .map_err(|e| image_status(e, "image.image"))?
        else {
            return Ok(Response::new(v1::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let verbose = serde_json::json!({
                "imageSpec": rec.metadata.config,
                "chainID": rec.metadata.snapshots.last(),
                "snapshots": rec.metadata.snapshots,
                "content": rec.metadata.content,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(Response::new(v1::ImageStatusResponse {
            image: Some(to_cri(&rec, self.images().is_pinned(&rec))),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<v1::PullImageRequest>,
    ) -> Result<Response<v1::PullImageResponse>, Status> {
        let req = request.into_inner();
        let reference = spec_image(req.image.as_ref(), "image.image")?;
        let auth = match &req.auth {
            Some(a) => Auth::from_cri(
                &a.username,
                &a.password,
                &a.auth,
                &a.identity_token,
                &a.registry_token,
            )
            .map_err(|e| invalid_field("auth", e))?,
            None => None,
        };
        let rec = pull(&self.daemon, &reference, auth)
            .await
            .map_err(|e| image_status(e, "image.image"))?;
        Ok(Response::new(v1::PullImageResponse {
            image_ref: rec.metadata.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<v1::RemoveImageRequest>,
    ) -> Result<Response<v1::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let reference = spec_image(req.image.as_ref(), "image.image")?;
        self.images()
            .remove(&reference)
            .await
            .map_err(|e| image_status(e, "image.image"))?;
        Ok(Response::new(v1::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<v1::ImageFsInfoRequest>,
    ) -> Result<Response<v1::ImageFsInfoResponse>, Status> {
        let usage = self
            .images()
            .fs_info()
            .await
            .map_err(|e| image_status(e, "image"))?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
            .unwrap_or(0);
        let fs = v1::FilesystemUsage {
            timestamp,
            fs_id: Some(v1::FilesystemIdentifier {
                mountpoint: self.images().image_dir().display().to_string(),
            }),
            used_bytes: Some(v1::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(v1::UInt64Value {
                value: usage.inodes_used,
            }),
        };
        Ok(Response::new(v1::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let cases: [(&str, Option<i64>, &str); 7] = [
            ("", None, ""),
            ("0", Some(0), ""),
            ("1000", Some(1000), ""),
            ("1000:1000", Some(1000), ""),
            ("nobody", None, "nobody"),
            ("www-data:www-data", None, "www-data"),
            (":100", None, ""),
        ];
        for (user, uid, name) in cases {
            assert_eq!(user_of(user), (uid, name.to_string()), "{user:?}");
        }
    }

    #[test]
    fn status_codes() {
        use crius_image::Reference;
        let bad = ImageError::InvalidReference(Reference::parse("Bad").unwrap_err());
        let s = image_status(bad, "image.image");
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with("image.image: "), "{}", s.message());
        let nf = ImageError::NotFound("x".into());
        assert_eq!(image_status(nf, "f").code(), tonic::Code::NotFound);
        let stalled = ImageError::Stalled {
            what: "blob sha256:x".into(),
            timeout: std::time::Duration::from_secs(300),
        };
        let s = image_status(stalled, "image.image");
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert!(
            s.message().contains("pull_progress_timeout"),
            "{}",
            s.message()
        );
    }
}
