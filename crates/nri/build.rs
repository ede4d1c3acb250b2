//! Generates the ttrpc bindings of the NRI protocol
//! (proto/nri/v1alpha1/api.proto, vendored from containerd/nri), through
//! the workspace's shared code generation set-up (crius-protogen).

fn main() {
    crius_protogen::generate(
        std::path::Path::new("../../proto"),
        "nri/v1alpha1/api.proto",
        "nri",
        crius_protogen::Customize {
            async_all: true,
            ..Default::default()
        },
    );
}
