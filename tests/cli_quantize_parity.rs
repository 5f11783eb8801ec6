//! Parity: after STE training, the runtime's logits on the exported .tern equal the engine's hard-quantized
//! (W1.58/A8) forward pass on the trained latent weights.
//!
//! The two differ only in rounding: the runtime computes integer dot products of int8 activations and ternary
//! codes and rescales, the engine multiplies the dequantized values in f32; the exported embedding and head are
//! f16 (here) where the engine keeps f32; the KV cache is f32 here. Tolerance: the largest logit difference is at
//! most 1% of the logits' standard deviation, and the greedy token agrees at every position.

use std::path::Path;

use tern_format::{AlignedBytes, ModelView, TernaryLayout};
use tern_quantizer::data::{load_tokenizer, tokenize_text, PackedData};
use tern_quantizer::engine::{Backend, CpuBackend, EngineConfig, Parameters, QuantConfig, Recompute, Transformer};
use tern_quantizer::ptq::{ptq_model, HeadFormat, PtqOptions, ScaleGranularity};
use tern_quantizer::tiny::{tiny_random_model, TINY_EOS};
use tern_quantizer::train::{train, trained_source_model, DebugOptions, TrainConfig};
use tern_runtime::{session::Logits, KvPrecision, Model, Session, SessionOptions};

#[test]
fn runtime_logits_on_the_export_match_the_engine_hard_quantized_forward() {
    let src = tiny_random_model(3);
    let tok = load_tokenizer(&src.tokenizer_json).unwrap();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    let stream = tokenize_text(&tok, &text, Some(TINY_EOS), Path::new("text")).unwrap();
    let data = PackedData::split(&stream, 32, 0.1).unwrap();
    let dir = std::env::temp_dir().join(format!("tern-parity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = TrainConfig {
        steps: 8,
        seq_len: 32,
        batch_size: 4,
        lr: 3e-3,
        warmup_steps: 1,
        checkpoint_every: 0,
        eval_every: 0,
        eval_windows: 4,
        ..TrainConfig::default()
    };
    let backend = CpuBackend::<f32>::new();
    let out = train(
        &backend,
        &src,
        &data,
        &config,
        &dir,
        false,
        &DebugOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // Export exactly as `tern quantize` does (with an f16 head, the closest to the engine's f32 one).
    let trained = trained_source_model(&src, &out.layout, &out.latent).unwrap();
    let opts = PtqOptions {
        scale: ScaleGranularity::PerTensor,
        layout: TernaryLayout::TwoBit,
        head: HeadFormat::F16,
    };
    let bytes = AlignedBytes::from_slice(
        &ptq_model(&trained, &opts, &mut |_, _, _| {})
            .unwrap()
            .to_bytes()
            .unwrap(),
    );
    let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();

    let tokens: Vec<u32> = "the lazy fox"
        .bytes()
        .map(u32::from)
        .chain("jumps over".bytes().map(u32::from))
        .collect();
    let n = tokens.len();
    let sopts = SessionOptions::new(64, 64).with_kv(KvPrecision::F32);
    let mut arena = vec![0u8; sopts.arena_bytes(model.config()).unwrap()];
    let mut session = Session::new(&model, &mut arena, sopts).unwrap();
    session.forward(&tokens, Logits::All).unwrap();
    let vocab = src.config.vocab_size as usize;
    let runtime: Vec<f32> = (0..n).flat_map(|i| session.logits_row(i).unwrap().to_vec()).collect();

    let mut engine_model = Transformer::new(
        &backend,
        EngineConfig {
            model: src.config,
            batch_size: 1,
            seq_len: n,
            quant: QuantConfig::W158_A8,
            recompute: Recompute::None,
        },
    )
    .unwrap();
    let params = Parameters::from_host(&backend, &out.layout, &out.latent).unwrap();
    let engine = backend
        .download(engine_model.forward_logits(&backend, &params, &tokens).unwrap())
        .unwrap();
    assert_eq!(engine.len(), n * vocab);
    assert_eq!(runtime.len(), n * vocab);

    let mean = engine.iter().map(|&x| x as f64).sum::<f64>() / engine.len() as f64;
    let std = (engine.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / engine.len() as f64).sqrt();
    let max_diff = engine
        .iter()
        .zip(&runtime)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    eprintln!(
        "logit std {std:.4}, max |engine − runtime| {max_diff:.5} ({:.3}% of std)",
        100.0 * max_diff / std
    );
    assert!(std > 0.1, "degenerate logits (std {std})");
    assert!(max_diff <= 0.01 * std, "max difference {max_diff} vs logit std {std}");
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    };
    for i in 0..n {
        assert_eq!(
            argmax(&engine[i * vocab..(i + 1) * vocab]),
            argmax(&runtime[i * vocab..(i + 1) * vocab]),
            "greedy token at position {i}"
        );
    }
}
