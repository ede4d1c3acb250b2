//! The `Version` RPC.

use k8s_cri::v1::{VersionRequest, VersionResponse};

/// The runtime name reported to kubelet.
pub const RUNTIME_NAME: &str = "crius";
/// The CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The version of the kubelet runtime API (kubelet always sends and expects 0.1.0).
pub const KUBE_API_VERSION: &str = "0.1.0";

/// Answers `Version`.
pub fn version(_req: VersionRequest) -> VersionResponse {
    VersionResponse {
        version: KUBE_API_VERSION.to_string(),
        runtime_name: RUNTIME_NAME.to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: RUNTIME_API_VERSION.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let v = version(VersionRequest::default());
        assert_eq!(v.runtime_name, "crius");
        assert_eq!(v.runtime_api_version, "v1");
        assert_eq!(v.version, "0.1.0");
        assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    }
}
