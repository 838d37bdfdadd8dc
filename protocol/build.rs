//! Generates the Rust types of `agent.proto` with the pure-Rust parser, so
//! the build needs no `protoc`.

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/mu2/agent/v1/agent.proto")
        .cargo_out_dir("proto")
        .run_from_script();
}
