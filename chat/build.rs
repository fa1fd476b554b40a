//! Generates the chat protocol's Rust types from proto/ with prost; protox
//! parses the schema, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = "proto/courier/chat/v1/chat.proto";
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([schema], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
