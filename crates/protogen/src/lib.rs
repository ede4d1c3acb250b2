//! The ttrpc/protobuf code generation the build scripts of crius share
//! (crius-shim-api's `crius.shim.v1.Shim`, crius-nri's NRI API): one
//! `.proto` of the workspace's `proto/` directory in, rust-protobuf
//! messages and ttrpc services out, ready for `include!`.

use std::path::{Path, PathBuf};

pub use ttrpc_codegen::Customize;

/// Generates the bindings of `proto/<input>` (relative to the workspace's
/// `proto/` directory, `proto_dir`) into `$OUT_DIR/<out>` with the given
/// ttrpc customisation (sync or async clients and servers), and tells cargo
/// to run the build script again when the input changes. Returns the
/// output directory. Panics on failure (build scripts report that way).
pub fn generate(proto_dir: &Path, input: &str, out: &str, customize: Customize) -> PathBuf {
    let input = proto_dir.join(input);
    println!("cargo:rerun-if-changed={}", input.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join(out);
    std::fs::create_dir_all(&out).expect("create out dir");
    ttrpc_codegen::Codegen::new()
        .inputs([&input])
        .include(proto_dir)
        .rust_protobuf()
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .customize(customize)
        .out_dir(&out)
        .run()
        .unwrap_or_else(|e| panic!("generate {}: {e}", input.display()));
    strip_inner_attributes(&out);
    out
}

/// `include!` cannot take inner attributes or inner doc comments: drops
/// them from every generated file in `dir`.
fn strip_inner_attributes(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read out dir") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read generated file");
        std::fs::write(&path, without_inner_attributes(&text)).expect("write generated file");
    }
}

fn without_inner_attributes(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_attributes_go() {
        // (generated text, what include! gets)
        for (text, want) in [
            ("#![allow(unknown_lints)]\nuse x;", "use x;"),
            (
                "//! Generated file\n// kept\nfn f() {}",
                "// kept\nfn f() {}",
            ),
            ("#[derive(Clone)]\nstruct S;", "#[derive(Clone)]\nstruct S;"),
            ("    #![inner but indented]", "    #![inner but indented]"),
            ("", ""),
        ] {
            assert_eq!(without_inner_attributes(text), want, "{text:?}");
        }
    }
}
