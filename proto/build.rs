//! Compiles the protocol definitions in `proto/` with a vendored `protoc`, so building needs no
//! system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;
    let files = [
        "proto/tfplugin6.proto",
        "proto/grpc_controller.proto",
        "proto/grpc_stdio.proto",
        "proto/grpc_broker.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs this provider does not implement answer Unimplemented, as the protocol expects.
        .generate_default_stubs(true)
        .compile_protos(
            &files.map(std::path::PathBuf::from),
            &[std::path::PathBuf::from("proto"), include],
        )?;
    Ok(())
}
