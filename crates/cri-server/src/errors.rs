//! Mapping of internal errors onto gRPC statuses.

use crius_store::StoreError;
use tonic::Status;

/// The status of an RPC that a later version of crius implements.
pub fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by crius yet"))
}

/// `InvalidArgument` naming the offending request field.
pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// Maps a store error onto the matching gRPC code.
pub fn store_status(err: StoreError) -> Status {
    let msg = err.to_string();
    match err {
        StoreError::NotFound { .. } => Status::not_found(msg),
        StoreError::AlreadyExists { .. } | StoreError::NameReserved { .. } => {
            Status::already_exists(msg)
        }
        StoreError::AmbiguousId { .. } => Status::invalid_argument(msg),
        // criusd makes every id itself, so an invalid one can only come from
        // a caller looking something up: nothing has that id.
        StoreError::InvalidId(_) => Status::not_found(msg),
        _ => Status::internal(msg),
    }
}

/// `Internal` with what was being done.
pub fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// Maps a spec error: a bad request is `InvalidArgument`, what the host
/// lacks `FailedPrecondition`, the rest `Internal`.
pub fn spec_status(e: crius_spec::SpecError) -> Status {
    match e {
        crius_spec::SpecError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        crius_spec::SpecError::FailedPrecondition { .. } => {
            Status::failed_precondition(e.to_string())
        }
        crius_spec::SpecError::Internal(_) => Status::internal(e.to_string()),
    }
}
