//! Generates the goemotions.v1 and Open Inference Protocol (`inference`) gRPC code and one file
//! descriptor set for server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("goemotions_descriptor.bin"))
        .compile_protos(
            &[
                "goemotions/v1/predictor.proto",
                "goemotions/v1/trainer.proto",
                "inference/grpc_predict_v2.proto",
            ],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=goemotions");
    println!("cargo:rerun-if-changed=inference");
    Ok(())
}
