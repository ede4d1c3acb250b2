//! Generates the ttrpc bindings of crius's own shim service
//! (proto/crius/shim/v1/shim.proto): the synchronous server and client
//! (the shim serves with them) and the asynchronous client (criusd's).

fn main() {
    let proto = std::path::Path::new("../../proto");
    let input = "crius/shim/v1/shim.proto";
    crius_protogen::generate(proto, input, "crius", Default::default());
    crius_protogen::generate(
        proto,
        input,
        "crius-async",
        crius_protogen::Customize {
            async_client: true,
            ..Default::default()
        },
    );
}
