//! criusd's side of the per-pod shims. The client, the launcher, the pod
//! options and the socket and state layout are crius-shim-api's (shared
//! with the shim, `crates/shim/README.md` describes the protocol); here
//! they are gathered under one name for criusd, with the conversion of
//! criusd's own types into the shim API's.

pub use crius_shim_api::client::{
    ShimClient, ShimError, Stdio, ATTACH_TIMEOUT, CALL_TIMEOUT, CONNECT_TIMEOUT,
};
pub use crius_shim_api::launch::{find_binary, Launched, Launcher, SHIM_BINARY};
pub use crius_shim_api::options::{NoInfra, PodOptions};
pub use crius_shim_api::paths::{Layout, PodDir};
pub use crius_shim_api::NAMESPACE;

/// Root filesystem mounts in the shim API's form.
pub fn proto_mounts(
    mounts: &[crius_image::Mount],
) -> Vec<containerd_shim_protos::types::mount::Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut pm = containerd_shim_protos::types::mount::Mount::new();
            pm.type_ = m.kind.clone();
            pm.source = m.source.clone();
            pm.options = m.options.clone();
            pm
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_grpc_codes() {
        let rpc = |code| ShimError::Rpc {
            method: "X",
            code,
            message: "m".into(),
        };
        assert_eq!(
            crate::errors::CriError::from(rpc(ttrpc::Code::NOT_FOUND)).code(),
            tonic::Code::NotFound
        );
        assert!(rpc(ttrpc::Code::NOT_FOUND).is_not_found());
        assert_eq!(
            crate::errors::CriError::from(rpc(ttrpc::Code::INVALID_ARGUMENT)).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            crate::errors::CriError::from(rpc(ttrpc::Code::INTERNAL)).code(),
            tonic::Code::Internal
        );
        let gone = ShimError::Transport {
            method: "X",
            message: "closed".into(),
        };
        assert!(gone.is_unreachable());
        assert_eq!(
            crate::errors::CriError::from(&gone).code(),
            tonic::Code::Unavailable
        );
    }
}
