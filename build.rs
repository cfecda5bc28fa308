//! Generates the gRPC code for `proto/wss/v1/*.proto` with `protox` (pure Rust, so no `protoc`
//! is needed) and `tonic-prost-build`, and writes the encoded descriptor set that server
//! reflection serves, so that `grpcurl` works without proto files.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut protos: Vec<PathBuf> =
        fs::read_dir(proto_dir.join("wss/v1"))?.map(|entry| entry.map(|e| e.path())).collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    protos.sort();

    println!("cargo:rerun-if-changed=proto/wss/v1");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let fds = protox::compile(&protos, [&proto_dir])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("wss_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
