#[cfg(feature = "cuda")]
#[test]
fn cuda_kernels_compile_with_nvrtc() {
    use tern_quantizer::engine::cuda::{compile_all_kernels, probe_nvrtc};
    if let Err(e) = probe_nvrtc() {
        println!("skipped: {e}");
        return;
    }
    for arch in ["sm_90", "sm_80"] {
        let sizes = compile_all_kernels(arch, &[4, 6, 8, 32, 64, 80, 128, 256]).unwrap_or_else(|e| panic!("{e}"));
        println!("{arch}: {sizes:?}");
    }
}
