//! Embeds the model named by TERN_FIRMWARE_MODEL (examples/cortex-m/run.sh makes one with
//! `cargo run -p tern-runtime --example firmware_model -- write`) and sizes the static arena for it with the
//! runtime's own formula, so the firmware reserves exactly what the session needs.

use std::path::PathBuf;

include!("src/params.rs");

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=src/params.rs");
    println!("cargo:rerun-if-env-changed=TERN_FIRMWARE_MODEL");

    let Some(model) = std::env::var_os("TERN_FIRMWARE_MODEL") else {
        panic!("set TERN_FIRMWARE_MODEL to the .tern file to embed (examples/cortex-m/run.sh does)");
    };
    println!("cargo:rerun-if-changed={}", model.to_string_lossy());
    let bytes = std::fs::read(&model).unwrap_or_else(|e| panic!("{}: {e}", model.to_string_lossy()));
    let aligned = tern_format::AlignedBytes::from_slice(&bytes);
    let view = tern_format::ModelView::parse(&aligned).unwrap_or_else(|e| panic!("not a valid model: {e}"));
    let arena = tern_runtime::SessionOptions::new(CONTEXT, BATCH)
        .arena_bytes(view.config())
        .unwrap_or_else(|e| panic!("arena size: {e}"));
    std::fs::write(out.join("model.tern"), &bytes).expect("copy the model");
    std::fs::write(
        out.join("arena.rs"),
        format!("pub const ARENA_BYTES: usize = {arena};\n"),
    )
    .expect("arena.rs");
}
