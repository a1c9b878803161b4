//! Compiles brindle's `.proto` files with protoc and writes the file descriptor set for reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/brindle/common/v1/common.proto",
    "proto/brindle/ipam/v1/ipam.proto",
    "proto/brindle/route/v1/route.proto",
    "proto/brindle/policy/v1/policy.proto",
    "proto/brindle/agent/v1/cni.proto",
    "proto/brindle/identity/v1/identity.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Snapshots are encoded once and shared by every subscriber: `Bytes` clones share them.
        .bytes(".brindle.common.v1.EncodedSnapshot.data")
        // Small encode buffers: memory per streaming subscriber stays small.
        .codec_path("crate::codec::SmallBufferCodec")
        .file_descriptor_set_path(out_dir.join("brindle_descriptor.bin"))
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
