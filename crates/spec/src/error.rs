//! Errors of spec generation.

/// Why a spec could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The request asks for something invalid; `field` names the CRI field.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The CRI request field, dotted (e.g. `config.linux.security_context.run_as_username`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request is valid but the host cannot serve it as it is (e.g. a
    /// security profile it needs is not loaded).
    #[error("{field}: {message}")]
    FailedPrecondition {
        /// The CRI request field concerned.
        field: String,
        /// What the host lacks.
        message: String,
    },
    /// The inputs are consistent but the spec cannot be produced.
    #[error("cannot build OCI spec: {0}")]
    Internal(String),
}

/// Shorthand for an invalid-argument error.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::InvalidArgument {
        field: field.into(),
        message: message.into(),
    }
}
