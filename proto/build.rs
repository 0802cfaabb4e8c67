//! Generates the tonic/prost code for `ringkv.v1` and the file descriptor set
//! that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ringkv_descriptor.bin"))
        .compile_protos(&["proto/ringkv/v1/ringkv.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
