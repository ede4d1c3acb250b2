//! The one error type of criusd's domain code, and the one place it becomes
//! a gRPC status.
//!
//! Everything below the tonic services (the pod and container logic, the
//! image service's helpers, recovery, hand-back, the shim client and the
//! streaming checks) returns [`CriError`]. The store, spec, image, shim and
//! streaming errors convert into it with `From` (so `?` picks the right
//! kind), and [`CriError`] converts into [`tonic::Status`] only in
//! `impl From<CriError> for Status` below, which the services call at their
//! boundary. [`CriError::code`] is that mapping, and the table test at the
//! end of this file checks it for every kind of domain error.

use crius_image::{ErrorKind as ImageErrorKind, ImageError};
use crius_spec::SpecError;
use crius_store::StoreError;
use tonic::Status;

/// What went wrong in a CRI call, by the kind of answer the caller gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriError {
    /// The request is wrong; `field` names the request field (empty when
    /// the message itself says which).
    #[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    InvalidArgument { field: String, message: String },
    /// The object the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An object of that name or id exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object or the host is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The call ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Something the call depends on (a shim, a registry) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A limit on concurrent work is reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A concurrent call changed the object first.
    #[error("{0}")]
    Aborted(String),
    /// The registry refused the credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Content does not match its digest.
    #[error("{0}")]
    DataLoss(String),
    /// crius does not implement the call.
    #[error("{0}")]
    Unimplemented(String),
    /// A fault of criusd or the host.
    #[error("{0}")]
    Internal(String),
    /// A failure the runtimes crius answers like give no code to: two NRI
    /// plugins adjusting the same thing of a container being created
    /// (containerd and CRI-O pass NRI's plain error up, which gRPC reports
    /// as Unknown; the kubelet retries the creation as after any failure).
    #[error("{0}")]
    Unknown(String),
}

/// The result of domain code.
pub type CriResult<T> = Result<T, CriError>;

impl CriError {
    /// `InvalidArgument` naming the offending request field.
    pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> Self {
        CriError::InvalidArgument {
            field: field.to_string(),
            message: message.to_string(),
        }
    }
    /// `InvalidArgument` whose message names the field itself.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        CriError::InvalidArgument {
            field: String::new(),
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        CriError::NotFound(message.into())
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        CriError::AlreadyExists(message.into())
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        CriError::FailedPrecondition(message.into())
    }
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        CriError::DeadlineExceeded(message.into())
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        CriError::Unavailable(message.into())
    }
    pub fn aborted(message: impl Into<String>) -> Self {
        CriError::Aborted(message.into())
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        CriError::Unimplemented(message.into())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        CriError::Internal(message.into())
    }

    /// The gRPC code of this error: the one mapping of crius's errors onto
    /// gRPC codes.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            CriError::InvalidArgument { .. } => Code::InvalidArgument,
            CriError::NotFound(_) => Code::NotFound,
            CriError::AlreadyExists(_) => Code::AlreadyExists,
            CriError::FailedPrecondition(_) => Code::FailedPrecondition,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::Unavailable(_) => Code::Unavailable,
            CriError::ResourceExhausted(_) => Code::ResourceExhausted,
            CriError::Aborted(_) => Code::Aborted,
            CriError::Unauthenticated(_) => Code::Unauthenticated,
            CriError::DataLoss(_) => Code::DataLoss,
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::Internal(_) => Code::Internal,
            CriError::Unknown(_) => Code::Unknown,
        }
    }

    /// The message the caller gets (the field first, for InvalidArgument).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Whether this is NotFound.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::NotFound(_))
    }
}

/// The one place a crius error becomes a gRPC status.
impl From<CriError> for Status {
    fn from(e: CriError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for CriError {
    fn from(err: StoreError) -> Self {
        let msg = err.to_string();
        match err {
            StoreError::NotFound { .. } => CriError::NotFound(msg),
            StoreError::AlreadyExists { .. } | StoreError::NameReserved { .. } => {
                CriError::AlreadyExists(msg)
            }
            StoreError::AmbiguousId { .. } => CriError::invalid_argument(msg),
            // criusd makes every id itself, so an invalid one can only come
            // from a caller looking something up: nothing has that id.
            StoreError::InvalidId(_) => CriError::NotFound(msg),
            _ => CriError::Internal(msg),
        }
    }
}

/// A bad request is `InvalidArgument`, what the host lacks
/// `FailedPrecondition`, the rest `Internal`.
impl From<SpecError> for CriError {
    fn from(e: SpecError) -> Self {
        let msg = e.to_string();
        match e {
            SpecError::InvalidArgument { .. } => CriError::invalid_argument(msg),
            SpecError::FailedPrecondition { .. } => CriError::FailedPrecondition(msg),
            SpecError::Internal(_) => CriError::Internal(msg),
        }
    }
}

/// Two NRI plugins adjusting the same thing: Unknown, as containerd and
/// CRI-O answer; a plugin's malformed or unsupported adjustment is no fault
/// of the CRI client: Internal. Both messages name the plugins and field.
impl From<crius_spec::nri::AdjustError> for CriError {
    fn from(e: crius_spec::nri::AdjustError) -> Self {
        let msg = e.to_string();
        match e {
            crius_spec::nri::AdjustError::Conflict { .. } => CriError::Unknown(msg),
            crius_spec::nri::AdjustError::Refused { .. } => CriError::Internal(msg),
        }
    }
}

impl From<crate::shimclient::ShimError> for CriError {
    fn from(e: crate::shimclient::ShimError) -> Self {
        CriError::from(&e)
    }
}

impl From<&crate::shimclient::ShimError> for CriError {
    fn from(e: &crate::shimclient::ShimError) -> Self {
        use crate::shimclient::ShimError;
        let msg = e.to_string();
        match e {
            ShimError::Rpc { code, .. } => match *code {
                ttrpc::Code::NOT_FOUND => CriError::NotFound(msg),
                ttrpc::Code::ALREADY_EXISTS => CriError::AlreadyExists(msg),
                ttrpc::Code::INVALID_ARGUMENT => CriError::invalid_argument(msg),
                ttrpc::Code::FAILED_PRECONDITION => CriError::FailedPrecondition(msg),
                ttrpc::Code::DEADLINE_EXCEEDED => CriError::DeadlineExceeded(msg),
                ttrpc::Code::UNIMPLEMENTED => CriError::Unimplemented(msg),
                _ => CriError::Internal(msg),
            },
            ShimError::Transport { .. } | ShimError::Connect { .. } => CriError::Unavailable(msg),
            ShimError::Launch(_) => CriError::Internal(msg),
        }
    }
}

impl From<crate::streaming::StreamingError> for CriError {
    fn from(e: crate::streaming::StreamingError) -> Self {
        use crate::streaming::StreamingError;
        let msg = e.to_string();
        match e {
            StreamingError::InvalidRequest(_) => CriError::invalid_argument(msg),
            StreamingError::TooMany(_) => CriError::ResourceExhausted(msg),
            StreamingError::Bind { .. } | StreamingError::Tls(_) => CriError::Unavailable(msg),
        }
    }
}

/// An image error; `field` names the request field that carried the
/// reference (an invalid reference is InvalidArgument naming it).
pub fn image_error(err: ImageError, field: &str) -> CriError {
    let msg = err.to_string();
    match err.kind() {
        ImageErrorKind::InvalidArgument => CriError::invalid_field(field, msg),
        ImageErrorKind::NotFound => CriError::NotFound(msg),
        ImageErrorKind::Unauthenticated => CriError::Unauthenticated(msg),
        ImageErrorKind::DataLoss => CriError::DataLoss(msg),
        ImageErrorKind::Unavailable => CriError::Unavailable(msg),
        ImageErrorKind::DeadlineExceeded => CriError::DeadlineExceeded(msg),
        ImageErrorKind::Internal => CriError::Internal(msg),
    }
}

/// The status of an RPC that a later version of crius implements.
pub fn not_yet(rpc: &str) -> CriError {
    CriError::unimplemented(format!("{rpc} is not implemented by crius yet"))
}

/// `InvalidArgument` naming the offending request field.
pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> CriError {
    CriError::invalid_field(field, message)
}

/// Maps a store error (kept for call sites that name the conversion).
pub fn store_status(err: StoreError) -> CriError {
    err.into()
}

/// `Internal` with what was being done.
pub fn internal(what: &str, e: impl std::fmt::Display) -> CriError {
    CriError::Internal(format!("{what}: {e}"))
}

/// Maps a spec error (kept for call sites that name the conversion).
pub fn spec_status(e: SpecError) -> CriError {
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_domain_error_maps_to_its_code() {
        let shim_rpc = |code| crate::shimclient::ShimError::Rpc {
            method: "Create",
            code,
            message: "m".into(),
        };
        let cases: Vec<(&str, CriError, Code)> = vec![
            (
                "store not found",
                StoreError::NotFound {
                    kind: crius_store::RecordKind::Container,
                    id: "x".into(),
                }
                .into(),
                Code::NotFound,
            ),
            (
                "store invalid id",
                StoreError::InvalidId("../..".into()).into(),
                Code::NotFound,
            ),
            (
                "spec invalid",
                SpecError::InvalidArgument {
                    field: "linux.resources".into(),
                    message: "bad".into(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                "spec precondition",
                SpecError::FailedPrecondition {
                    field: "linux.security_context.apparmor".into(),
                    message: "no apparmor_parser".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            // UpdateContainerResources used to answer InvalidArgument for
            // an internal spec error.
            (
                "spec internal",
                SpecError::Internal("serialize".into()).into(),
                Code::Internal,
            ),
            // CreateContainer used to answer Internal for a bad image
            // reference.
            (
                "bad image reference",
                image_error(
                    crius_image::ImageError::InvalidReference(
                        crius_image::Reference::parse("UPPER/Case:tag").unwrap_err(),
                    ),
                    "config.image.image",
                ),
                Code::InvalidArgument,
            ),
            (
                "image not found",
                image_error(crius_image::ImageError::NotFound("busybox".into()), "image"),
                Code::NotFound,
            ),
            (
                "shim not found",
                shim_rpc(ttrpc::Code::NOT_FOUND).into(),
                Code::NotFound,
            ),
            (
                "shim deadline",
                shim_rpc(ttrpc::Code::DEADLINE_EXCEEDED).into(),
                Code::DeadlineExceeded,
            ),
            (
                "shim internal",
                shim_rpc(ttrpc::Code::INTERNAL).into(),
                Code::Internal,
            ),
            (
                "shim gone",
                crate::shimclient::ShimError::Connect {
                    address: "/x".into(),
                    message: "refused".into(),
                }
                .into(),
                Code::Unavailable,
            ),
            (
                "streaming limit",
                crate::streaming::StreamingError::TooMany(crate::streaming::cache::CacheFull(8))
                    .into(),
                Code::ResourceExhausted,
            ),
            ("not yet", not_yet("Checkpoint"), Code::Unimplemented),
            (
                "NRI conflict",
                crius_spec::nri::AdjustError::Conflict {
                    field: "env \"X\"".into(),
                    plugin: "20-b".into(),
                    other: "10-a".into(),
                }
                .into(),
                Code::Unknown,
            ),
            (
                "NRI refused",
                crius_spec::nri::AdjustError::Refused {
                    plugin: "10-a".into(),
                    field: "linux.oom_score_adj".into(),
                    message: "2000 is not in -1000..=1000".into(),
                }
                .into(),
                Code::Internal,
            ),
        ];
        for (name, err, want) in cases {
            assert_eq!(err.code(), want, "{name}: {err}");
            let status = Status::from(err.clone());
            assert_eq!(status.code(), want, "{name}");
            assert_eq!(status.message(), err.to_string(), "{name}");
        }
    }

    #[test]
    fn invalid_argument_names_its_field() {
        let e = invalid_field("config.image.image", "must not be empty");
        assert_eq!(e.to_string(), "config.image.image: must not be empty");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            CriError::invalid_argument("x is bad").to_string(),
            "x is bad"
        );
    }
}
