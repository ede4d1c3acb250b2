//! Generates the ttrpc bindings of the NRI protocol
//! (proto/nri/v1alpha1/api.proto, vendored from containerd/nri).

use std::path::PathBuf;

fn main() {
    let proto_dir = PathBuf::from("../../proto");
    let input = proto_dir.join("nri/v1alpha1/api.proto");
    println!("cargo:rerun-if-changed={}", input.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("nri");
    std::fs::create_dir_all(&out).expect("create out dir");
    ttrpc_codegen::Codegen::new()
        .inputs([&input])
        .include(&proto_dir)
        .rust_protobuf()
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generate NRI protos");
    // include! cannot take inner attributes or inner doc comments.
    for entry in std::fs::read_dir(&out).expect("read out dir") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("write generated file");
    }
}
