//! The runtime on the real SmolLM2-135M-Instruct (assets/, from scripts/fetch-assets.sh; skipped with a note
//! when absent).
//!
//! With its weights kept in f16 (no ternarization, so no activation quantization either) the runtime is an
//! ordinary f16 Llama: greedy decoding of "The capital of France is" must give " Paris", as the
//! full-precision model does (REFERENCE.md). That checks, on a real checkpoint, what random models cannot:
//! the RoPE pairing, GQA layout, tied head, tokenizer and BOS policy end to end.

use std::path::{Path, PathBuf};

use tern_format::{AlignedBytes, ModelView, ModelWriter, Shape, TensorData};
use tern_runtime::tokenizer::Tokenizer;
use tern_runtime::{Model, Sampler, SamplingParams, Session, SessionOptions};

fn gguf() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is missing (run scripts/fetch-assets.sh)", p.display());
        None
    }
}

/// SmolLM2 with every matrix stored as f16 (norms f32).
fn f16_model(path: &Path) -> Vec<u8> {
    let src = tern_quantizer::model::load(path).unwrap();
    let mut w = ModelWriter::new(src.config);
    w.tokenizer_json(src.tokenizer_json.clone());
    if let Some(t) = &src.chat_template {
        w.chat_template(t);
    }
    for t in &src.tensors {
        let dims: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let shape = Shape::new(&dims).unwrap();
        let td = if dims.len() == 1 {
            TensorData::f32(&t.name, t.role, t.layer, shape, &t.data)
        } else {
            TensorData::f16(&t.name, t.role, t.layer, shape, &t.data)
        };
        w.add_tensor(td).unwrap();
    }
    w.to_bytes().unwrap()
}

#[test]
fn f16_smollm2_says_paris() {
    let Some(path) = gguf() else { return };
    let bytes = AlignedBytes::from_slice(&f16_model(&path));
    let view = ModelView::parse(&bytes).unwrap();
    let tok = Tokenizer::from_model(&view).unwrap();
    let model = Model::new(view).unwrap();
    let opts = SessionOptions::new(64, 16).with_threads(2);
    let mut arena = vec![0u8; opts.arena_bytes(model.config()).unwrap()];
    let mut s = Session::new(&model, &mut arena, opts).unwrap();
    let prompt = tok.encode_prompt("The capital of France is").unwrap();
    s.prefill(&prompt).unwrap();
    let mut greedy = Sampler::new(SamplingParams::greedy());
    let mut out = Vec::new();
    for _ in 0..3 {
        let t = s.sample(&mut greedy).unwrap();
        out.push(t);
        s.decode(t).unwrap();
    }
    let text = tok.decode(&out, true).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
}

/// Writes the f16 model to target/tmp/smollm2-f16.tern for manual runs (`tern perplexity` on it reproduces
/// the full-precision perplexity): `cargo test --release --test runtime_smollm2 -- --ignored`.
#[test]
#[ignore]
fn write_f16_smollm2() {
    let Some(path) = gguf() else { return };
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smollm2-f16.tern");
    std::fs::write(&out, f16_model(&path)).unwrap();
    eprintln!("wrote {}", out.display());
}
