//! Generates the fake gRPC replica's services (KServe v2 and gRPC health)
//! with tonic; `protoc` comes from Debian's protobuf-compiler, which
//! `cargo xtask` installs when missing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_client(true)
        .compile_protos(&["proto/inference.proto", "proto/health.proto"], &["proto"])?;
    Ok(())
}
