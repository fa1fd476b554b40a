//! The chat protocol's Rust types, generated from the server's schema (the
//! one file both sides are built from); protox parses it, so no system
//! protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = "../chat/proto/courier/chat/v1/chat.proto";
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([schema], ["../chat/proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
