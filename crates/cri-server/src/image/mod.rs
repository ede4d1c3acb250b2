//! Image helpers of the RPC layer: pulls with metrics, CRI image records.

use crate::daemon::Daemon;
use crate::errors::{invalid_field, CriError};
use crius_image::Auth;
use crius_store::ImageRecord;
use k8s_cri::v1;

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

pub fn spec_image(spec: Option<&v1::ImageSpec>, field: &str) -> Result<String, CriError> {
    let image = spec.map(|s| s.image.trim()).unwrap_or("");
    if image.is_empty() {
        return Err(invalid_field(field, "must not be empty"));
    }
    Ok(image.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::image_error;
    use crius_image::ImageError;

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
        let s = image_error(bad, "image.image");
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with("image.image: "), "{}", s.message());
        let nf = ImageError::NotFound("x".into());
        assert_eq!(image_error(nf, "f").code(), tonic::Code::NotFound);
        let stalled = ImageError::Stalled {
            what: "blob sha256:x".into(),
            timeout: std::time::Duration::from_secs(300),
        };
        let s = image_error(stalled, "image.image");
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert!(
            s.message().contains("pull_progress_timeout"),
            "{}",
            s.message()
        );
    }
}
