//! Generates the gRPC code from proto/ with the protoc shipped in the
//! `protoc-bin-vendored` crate, so a fresh machine needs no system package.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .protoc_arg("--experimental_allow_proto3_optional")
        // bytes fields as bytes::Bytes: chunks move without copies.
        .bytes(".")
        .file_descriptor_set_path(out.join("dfcache_descriptor.bin"))
        .compile_protos(
            &[
                PathBuf::from("proto/common.proto"),
                PathBuf::from("proto/dfdaemon.proto"),
            ],
            &[PathBuf::from("proto"), well_known.clone()],
        )?;
    // The CSI services kubelet calls on `dfcache csi`. Compiled apart:
    // the descriptor set above is dragonfly-api's, compared field by field
    // with the published crates (tests/wire_compat.rs).
    tonic_prost_build::configure().compile_protos(
        &[PathBuf::from("proto/csi.proto")],
        &[PathBuf::from("proto"), well_known],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
