//! The engine's full-precision forward on the real SmolLM2-135M matches an independent implementation:
//! `scripts/reference_logits.py` (numpy, float64, weights dequantized by gguf-py, tokens looked up in the GGUF
//! vocabulary) → `tests/fixtures/smollm2_reference_logits.json`.
//!
//! Run in f64, the engine must agree to 1e-12 (same math, different summation order; measured 1.0e-13 and
//! 1.2e-13 on two machines). Run in f32 (what training uses), the error is f32 rounding accumulated over 30
//! blocks and depends on the GEMM kernel the CPU gets: measured 2.1e-5 and 4.8e-5 on logits of magnitude ~20,
//! bounded at 1e-3 (20-50x margin, still far below any change of the argmax).

use std::path::PathBuf;

use serde_json::Value;
use tern_quantizer::engine::{
    CpuBackend, EngineConfig, Float, ParamLayout, Parameters, QuantConfig, Recompute, Transformer,
};

fn smol() -> tern_quantizer::SourceModel {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-assets.sh",
        path.display()
    );
    tern_quantizer::load(&path).unwrap()
}

fn reference() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference_logits.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Logits of every position, from the engine in precision `T`.
fn engine_logits<T: Float>(src: &tern_quantizer::SourceModel, tokens: &[u32]) -> Vec<f64> {
    let backend = CpuBackend::<T>::new();
    let layout = ParamLayout::new(&src.config);
    let host: Vec<Vec<T>> = layout
        .specs
        .iter()
        .map(|s| {
            let t = src
                .tensor_by_name(&s.name)
                .unwrap_or_else(|| panic!("{} missing", s.name));
            assert_eq!(t.data.len(), s.numel(), "{}", s.name);
            t.data.iter().map(|&x| T::from_f32(x)).collect()
        })
        .collect();
    let params = Parameters::from_host(&backend, &layout, &host).unwrap();
    let cfg = EngineConfig {
        model: src.config,
        batch_size: 1,
        seq_len: tokens.len(),
        quant: QuantConfig::FULL_PRECISION,
        recompute: Recompute::None,
    };
    let mut model = Transformer::new(&backend, cfg).unwrap();
    let logits = model.forward_logits(&backend, &params, tokens).unwrap();
    use tern_quantizer::engine::Backend;
    backend
        .download(logits)
        .unwrap()
        .into_iter()
        .map(Float::to_f64)
        .collect()
}

fn max_error(logits: &[f64], reference: &Value, vocab: usize) -> (f64, Vec<usize>) {
    let mut worst = 0f64;
    let mut argmax = Vec::new();
    for (p, pos) in reference["positions"].as_array().unwrap().iter().enumerate() {
        let row = &logits[p * vocab..(p + 1) * vocab];
        for (id, want) in pos["ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(pos["logits"].as_array().unwrap())
        {
            let (id, want) = (id.as_u64().unwrap() as usize, want.as_f64().unwrap());
            worst = worst.max((row[id] - want).abs());
        }
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        worst = worst.max((lse - pos["logsumexp"].as_f64().unwrap()).abs());
        argmax.push(
            row.iter()
                .enumerate()
                .fold(0, |b, (i, &x)| if x > row[b] { i } else { b }),
        );
    }
    (worst, argmax)
}

#[test]
fn full_precision_forward_matches_numpy_reference() {
    let src = smol();
    let reference = reference();
    let tokens: Vec<u32> = reference["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let vocab = src.config.vocab_size as usize;
    let top1: Vec<usize> = reference["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ids"][0].as_u64().unwrap() as usize)
        .collect();

    let (err64, argmax64) = max_error(&engine_logits::<f64>(&src, &tokens), &reference, vocab);
    eprintln!("f64 engine vs numpy f64: max |Δlogit| = {err64:.3e}");
    assert!(err64 < 1e-12, "f64 engine differs from the reference by {err64}");
    assert_eq!(argmax64, top1);

    let (err32, argmax32) = max_error(&engine_logits::<f32>(&src, &tokens), &reference, vocab);
    eprintln!("f32 engine vs numpy f64: max |Δlogit| = {err32:.3e}");
    assert!(err32 < 1e-3, "f32 engine differs from the reference by {err32}");
    assert_eq!(argmax32, top1);
    // The reference's greedy continuation starts with " Paris".
    assert_eq!(reference["greedy_pieces"][0].as_str(), Some("ĠParis"));
    assert_eq!(
        argmax32.last().copied(),
        Some(reference["greedy_tokens"][0].as_u64().unwrap() as usize)
    );
}
