//! Every layer's backward against central finite differences in f64 (llm.c-style gradient checks), forward
//! passes against naive reference loops, and the straight-through layers against the STE definition.
//!
//! Each test builds a scalar loss `L = Σ out ⊙ R` with a random `R`, so `∂L/∂out = R` feeds the backward pass
//! and the finite differences of `L` give the reference gradient. Tolerances: see `engine_support`.

mod engine_support;

use engine_support::*;
use tern_format::{RopeScaling, RopeStyle};
use tern_quantizer::engine::layers::attention::{AttentionActivations, AttentionScratch, SelfAttention};
use tern_quantizer::engine::layers::linear::Linear;
use tern_quantizer::engine::layers::mlp::{GatedMlp, MlpActivations, MlpScratch};
use tern_quantizer::engine::layers::rmsnorm::RmsNorm;
use tern_quantizer::engine::layers::rope::{inverse_frequencies, rope_table};
use tern_quantizer::engine::quant::hard::ternary_scale;
use tern_quantizer::engine::{
    AttentionDims, Backend, CpuBackend, EngineError, GatedActivation, LossGrad, ParamId, QuantScratch, RopeDims,
    RopeDirection, SplitMix64, Weights, WriteMode, IGNORE_INDEX,
};

type B64 = CpuBackend<f64>;

fn backend() -> B64 {
    CpuBackend::new()
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let be = backend();
    let mut rng = SplitMix64::new(1);
    let (rows, cols, eps) = (5, 7, 1e-5);
    let x = randn(&mut rng, rows * cols, 1.0);
    let mut w: Vec<f64> = (0..cols).map(|_| 1.0 + 0.3 * rng.normal()).collect();
    let r = randn(&mut rng, rows * cols, 1.0);
    let forward = |x: &[f64], w: &[f64]| {
        let (mut out, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows]);
        be.rmsnorm_forward(&mut out, &mut rstd, &x.to_vec(), &w.to_vec(), eps)
            .unwrap();
        (out, rstd)
    };
    let (out, rstd) = forward(&x, &w);
    // Independent forward: y = x / sqrt(mean(x²) + eps) · w.
    for i in 0..rows {
        let row = &x[i * cols..(i + 1) * cols];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / cols as f64;
        for j in 0..cols {
            let want = row[j] / (ms + eps).sqrt() * w[j];
            assert!((out[i * cols + j] - want).abs() < 1e-13);
        }
    }
    // dx in accumulate mode on top of ones: result must be 1 + gradient.
    let mut dx = vec![1.0; rows * cols];
    let mut dw = vec![0.0; cols];
    be.rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd, WriteMode::Accumulate)
        .unwrap();
    let dx: Vec<f64> = dx.iter().map(|v| v - 1.0).collect();
    let w_fixed = w.clone();
    fd_check("rmsnorm dx", &mut x.clone(), &dx, 0..rows * cols, |x| {
        dot(&forward(x, &w_fixed).0, &r)
    });
    fd_check("rmsnorm dw", &mut w, &dw, 0..cols, |w| dot(&forward(&x, w).0, &r));
}

#[test]
fn embedding_backward_matches_finite_differences_with_repeated_tokens() {
    let be = backend();
    let mut rng = SplitMix64::new(2);
    let (vocab, dim) = (9, 70); // dim > 64 spans two column tasks of the scatter
    let tokens = vec![3u32, 0, 3, 8, 3, 1];
    let mut table = randn(&mut rng, vocab * dim, 1.0);
    let r = randn(&mut rng, tokens.len() * dim, 1.0);
    let forward = |table: &[f64]| {
        let mut out = vec![0.0; tokens.len() * dim];
        be.embedding_forward(&mut out, &table.to_vec(), &tokens, dim).unwrap();
        out
    };
    let out = forward(&table);
    assert_eq!(&out[dim..2 * dim], &table[0..dim]);
    let mut dtable = vec![0.0; vocab * dim];
    be.embedding_backward(&mut dtable, &r, &tokens, dim).unwrap();
    fd_check("embedding dtable", &mut table, &dtable, 0..vocab * dim, |t| {
        dot(&forward(t), &r)
    });
    // Input-derived token ids are rejected with a typed error.
    let mut out = vec![0.0; dim];
    let err = be.embedding_forward(&mut out, &dtable, &vec![9], dim).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::TokenOutOfRange {
                token: 9,
                position: 0,
                vocab: 9
            }
        ),
        "{err}"
    );
}

/// Runs a [`Linear`] whose weight is parameter 0, with `quantized` as the effective weight if given.
fn linear_forward(be: &B64, layer: &Linear, x: &[f64], w: &[f64], quantized: Option<&[f64]>) -> Vec<f64> {
    let latent = vec![w.to_vec()];
    let q = [quantized.map(|q| q.to_vec())];
    let weights = Weights::<B64>::new(&latent, &q);
    let rows = x.len() / layer.in_features;
    let mut out = vec![0.0; rows * layer.out_features];
    let mut xq = vec![0.0; x.len()];
    layer
        .forward(be, &weights, &x.to_vec(), &mut out, WriteMode::Overwrite, Some(&mut xq))
        .unwrap();
    out
}

fn linear_backward(
    be: &B64,
    layer: &Linear,
    x: &[f64],
    w: &[f64],
    quantized: Option<&[f64]>,
    dout: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let latent = vec![w.to_vec()];
    let q = [quantized.map(|q| q.to_vec())];
    let weights = Weights::<B64>::new(&latent, &q);
    let mut grads = vec![vec![0.0; w.len()]];
    let mut dx = vec![0.0; x.len()];
    let mut xq = vec![0.0; x.len()];
    layer
        .backward(
            be,
            &weights,
            &mut grads,
            &x.to_vec(),
            &dout.to_vec(),
            &mut dx,
            WriteMode::Overwrite,
            Some(&mut xq),
        )
        .unwrap();
    (dx, grads.remove(0))
}

#[test]
fn linear_backward_matches_finite_differences() {
    let be = backend();
    let mut rng = SplitMix64::new(3);
    let layer = Linear {
        weight: ParamId(0),
        in_features: 6,
        out_features: 5,
        quantize_activations: false,
    };
    let rows = 4;
    let x = randn(&mut rng, rows * 6, 1.0);
    let mut w = randn(&mut rng, 5 * 6, 0.5);
    let r = randn(&mut rng, rows * 5, 1.0);
    let out = linear_forward(&be, &layer, &x, &w, None);
    assert_close("y = x·Wᵀ", &out, &matmul(&x, &transpose(&w, 5, 6), rows, 6, 5), 1e-13);
    let (dx, dw) = linear_backward(&be, &layer, &x, &w, None, &r);
    let w0 = w.clone();
    fd_check("linear dx", &mut x.clone(), &dx, 0..x.len(), |x| {
        dot(&linear_forward(&be, &layer, x, &w0, None), &r)
    });
    fd_check("linear dW", &mut w, &dw, 0..30, |w| {
        dot(&linear_forward(&be, &layer, &x, w, None), &r)
    });
}

/// Reference BitNet quantizers written out independently of the engine's kernels.
fn ref_ternary(w: &[f64]) -> Vec<f64> {
    let s = (w.iter().map(|v| v.abs()).sum::<f64>() / w.len() as f64).max(1e-5);
    w.iter()
        .map(|v| (v / s).round_ties_even().clamp(-1.0, 1.0) * s)
        .collect()
}

fn ref_int8_rows(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let a = 127.0 / row.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-5);
            row.iter()
                .map(move |v| (v * a).round_ties_even().clamp(-128.0, 127.0) / a)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn fake_quantizers_match_hand_computed_values() {
    let be = backend();
    // mean|W| = 1.025; W/s = [0.488, −1.463, 0.098, 1.951] → [0, −1, 0, 1] after round and clamp.
    let w = vec![0.5, -1.5, 0.1, 2.0];
    let mut q = vec![0.0; 4];
    be.quantize_ternary_hard(&mut q, &w, w.len()).unwrap();
    assert_eq!(q, vec![0.0, -1.025, 0.0, 1.025]);
    assert_eq!(ternary_scale(&w), 1.025);
    // absmax 1 → a = 127: [127, −63.5 → −64 (half to even), 31.75 → 32, 0].
    let x = vec![1.0, -0.5, 0.25, 0.0];
    let mut xq = vec![0.0; 4];
    be.fake_quantize_int8_rows(&mut xq, &x, 4).unwrap();
    assert_eq!(xq, vec![1.0, -64.0 / 127.0, 32.0 / 127.0, 0.0]);
    // An all-zero tensor uses the 1e-5 floor instead of dividing by zero.
    let mut z = vec![1.0; 3];
    be.quantize_ternary_hard(&mut z, &vec![0.0; 3], 3).unwrap();
    assert_eq!(z, vec![0.0; 3]);
}

#[test]
fn ste_linear_backward_is_the_straight_through_definition() {
    let be = backend();
    let mut rng = SplitMix64::new(4);
    let (rows, inf, outf) = (5, 12, 7);
    let layer = Linear {
        weight: ParamId(0),
        in_features: inf,
        out_features: outf,
        quantize_activations: true,
    };
    let x = randn(&mut rng, rows * inf, 1.0);
    let w = randn(&mut rng, outf * inf, 0.4);
    let dy = randn(&mut rng, rows * outf, 1.0);
    let mut w_q = vec![0.0; w.len()];
    be.quantize_ternary_hard(&mut w_q, &w, w.len()).unwrap();
    let (w_ref, x_ref) = (ref_ternary(&w), ref_int8_rows(&x, inf));
    assert_close("ternary weights", &w_q, &w_ref, 1e-15);
    let s = ternary_scale(&w);
    assert!(w_q.iter().all(|&v| v == 0.0 || (v.abs() - s).abs() < 1e-15));
    let y = linear_forward(&be, &layer, &x, &w, Some(&w_q));
    assert_close(
        "forward x̂·Ŵᵀ",
        &y,
        &matmul(&x_ref, &transpose(&w_ref, outf, inf), rows, inf, outf),
        1e-12,
    );
    // STE: dx = dy·Ŵ (quantizers' Jacobians taken as identity), dW = dyᵀ·x̂.
    let (dx, dw) = linear_backward(&be, &layer, &x, &w, Some(&w_q), &dy);
    assert_close("STE dx", &dx, &matmul(&dy, &w_ref, rows, outf, inf), 1e-12);
    assert_close(
        "STE dW",
        &dw,
        &matmul(&transpose(&dy, rows, outf), &x_ref, outf, rows, inf),
        1e-12,
    );
}

#[test]
fn llama3_rope_frequencies_follow_the_three_regimes() {
    let scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context: 8192,
    };
    let theta = 500000.0f64;
    let f = inverse_frequencies(8, theta, scaling);
    let raw: Vec<f64> = (0..4).map(|i| theta.powf(-(2.0 * i as f64) / 8.0)).collect();
    // Wavelengths 2π/f: 6.3 and 167 (< 8192/4: kept), 4443 (between: interpolated), 118 000 (> 8192: /8).
    assert_eq!(f[0], raw[0]);
    assert_eq!(f[1], raw[1]);
    let smooth = (8192.0 / (2.0 * std::f64::consts::PI / raw[2]) - 1.0) / 3.0;
    assert!((f[2] - raw[2] * ((1.0 - smooth) / 8.0 + smooth)).abs() < 1e-18);
    assert!(f[2] < raw[2] && f[2] > raw[2] / 8.0);
    assert!((f[3] - raw[3] / 8.0).abs() < 1e-20);
}

#[test]
fn rope_matches_direct_rotation_and_backward_is_its_transpose() {
    let be = backend();
    let mut rng = SplitMix64::new(5);
    let (batch, seq, heads, hd) = (2, 5, 3, 8);
    let scaling = RopeScaling::Llama3 {
        factor: 4.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context: 16,
    };
    let table = rope_table(seq, hd, 100.0, scaling);
    let freqs = inverse_frequencies(hd, 100.0, scaling);
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        let dims = RopeDims {
            seq_len: seq,
            n_heads: heads,
            head_dim: hd,
            style,
        };
        let mut x = randn(&mut rng, batch * seq * heads * hd, 1.0);
        let rotate = |x: &[f64], dir| {
            let mut y = x.to_vec();
            be.rope(&mut y, &table, dims, dir).unwrap();
            y
        };
        let y = rotate(&x, RopeDirection::Forward);
        for row in 0..batch * seq {
            let pos = (row % seq) as f64;
            for h in 0..heads {
                let base = (row * heads + h) * hd;
                for (i, f) in freqs.iter().enumerate() {
                    let (a, b) = match style {
                        RopeStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
                        RopeStyle::Half => (base + i, base + i + hd / 2),
                    };
                    let (s, c) = (pos * f).sin_cos();
                    assert!((y[a] - (x[a] * c - x[b] * s)).abs() < 1e-14);
                    assert!((y[b] - (x[a] * s + x[b] * c)).abs() < 1e-14);
                }
            }
        }
        assert_close("inverse(forward(x))", &rotate(&y, RopeDirection::Inverse), &x, 1e-14);
        let r = randn(&mut rng, x.len(), 1.0);
        let dx = rotate(&r, RopeDirection::Inverse);
        fd_check("rope dx", &mut x, &dx, 0..batch * seq * heads * hd, |x| {
            dot(&rotate(x, RopeDirection::Forward), &r)
        });
    }
}

/// Naive causal GQA attention, straight from the definition.
fn ref_attention(q: &[f64], k: &[f64], v: &[f64], d: AttentionDims) -> Vec<f64> {
    let (t, hd) = (d.seq_len, d.head_dim);
    let group = d.n_heads / d.n_kv_heads;
    let mut out = vec![0.0; d.rows() * d.q_dim()];
    for b in 0..d.batch {
        for h in 0..d.n_heads {
            let g = h / group;
            for i in 0..t {
                let qi = &q[(b * t + i) * d.q_dim() + h * hd..][..hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| dot(qi, &k[(b * t + j) * d.kv_dim() + g * hd..][..hd]) / (hd as f64).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let p = (s - max).exp() / z;
                    for c in 0..hd {
                        out[(b * t + i) * d.q_dim() + h * hd + c] += p * v[(b * t + j) * d.kv_dim() + g * hd + c];
                    }
                }
            }
        }
    }
    out
}

fn check_attention_core(dims: AttentionDims, seed: u64, samples: usize) {
    let be = backend();
    let mut rng = SplitMix64::new(seed);
    let (qn, kvn) = (dims.rows() * dims.q_dim(), dims.rows() * dims.kv_dim());
    let mut q = randn(&mut rng, qn, 1.0);
    let mut k = randn(&mut rng, kvn, 1.0);
    let mut v = randn(&mut rng, kvn, 1.0);
    let r = randn(&mut rng, qn, 1.0);
    let forward = |q: &[f64], k: &[f64], v: &[f64]| {
        let (mut out, mut probs) = (vec![0.0; qn], vec![0.0; dims.probs_len()]);
        be.attention_forward(&mut out, &mut probs, &q.to_vec(), &k.to_vec(), &v.to_vec(), dims)
            .unwrap();
        (out, probs)
    };
    let (out, probs) = forward(&q, &k, &v);
    assert_close("attention forward", &out, &ref_attention(&q, &k, &v, dims), 1e-12);
    let (mut dq, mut dk, mut dv) = (vec![7.0; qn], vec![7.0; kvn], vec![7.0; kvn]); // overwritten, not added to
    let mut scratch = vec![0.0; dims.probs_len()];
    be.attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &mut scratch,
        &r,
        &out,
        &q,
        &k,
        &v,
        &probs,
        dims,
    )
    .unwrap();
    let (q0, k0, v0) = (q.clone(), k.clone(), v.clone());
    let qi = sample_indices(&mut rng, qn, samples);
    let ki = sample_indices(&mut rng, kvn, samples);
    fd_check("attention dq", &mut q, &dq, qi, |q| dot(&forward(q, &k0, &v0).0, &r));
    fd_check("attention dk", &mut k, &dk, ki.clone(), |k| {
        dot(&forward(&q0, k, &v0).0, &r)
    });
    fd_check("attention dv", &mut v, &dv, ki, |v| dot(&forward(&q0, &k0, v).0, &r));
}

#[test]
fn attention_gqa_matches_naive_forward_and_finite_differences() {
    let dims = AttentionDims {
        batch: 2,
        seq_len: 5,
        n_heads: 6,
        n_kv_heads: 3,
        head_dim: 8,
    };
    check_attention_core(dims, 6, usize::MAX);
}

#[test]
fn attention_longer_than_the_causal_tile_matches_finite_differences() {
    // 70 positions cross the 64-row tiling of the causal GEMMs.
    let dims = AttentionDims {
        batch: 1,
        seq_len: 70,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
    };
    check_attention_core(dims, 7, 60);
}

#[test]
fn gated_activations_match_finite_differences() {
    let be = backend();
    let mut rng = SplitMix64::new(8);
    let n = 40;
    for act in [GatedActivation::Silu, GatedActivation::ReluSquared] {
        let gate = randn(&mut rng, n, 1.5);
        let mut up = randn(&mut rng, n, 1.0);
        let r = randn(&mut rng, n, 1.0);
        let forward = |g: &[f64], u: &[f64]| {
            let mut out = vec![0.0; n];
            be.gated_forward(&mut out, &g.to_vec(), &u.to_vec(), act).unwrap();
            out
        };
        let out = forward(&gate, &up);
        for i in 0..n {
            let a = match act {
                GatedActivation::Silu => gate[i] / (1.0 + (-gate[i]).exp()),
                GatedActivation::ReluSquared => gate[i].max(0.0).powi(2),
            };
            assert!((out[i] - a * up[i]).abs() < 1e-14);
        }
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        be.gated_backward(&mut dg, &mut du, &r, &gate, &up, act).unwrap();
        let up0 = up.clone();
        fd_check("gated dgate", &mut gate.clone(), &dg, 0..n, |g| {
            dot(&forward(g, &up0), &r)
        });
        fd_check("gated dup", &mut up, &du, 0..n, |u| dot(&forward(&gate, u), &r));
    }
}

#[test]
fn cross_entropy_matches_log_softmax_and_finite_differences() {
    let be = backend();
    let mut rng = SplitMix64::new(9);
    let (rows, vocab, scale) = (4, 11, 0.7);
    let targets = vec![3u32, IGNORE_INDEX, 10, 0];
    let mut logits = randn(&mut rng, rows * vocab, 2.0);
    let losses_of = |z: &[f64]| {
        let mut l = vec![0.0; rows];
        be.cross_entropy(&mut l, None, &z.to_vec(), &targets, vocab).unwrap();
        l
    };
    let l = losses_of(&logits);
    for (i, &t) in targets.iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let want = if t == IGNORE_INDEX {
            0.0
        } else {
            row.iter().map(|z| z.exp()).sum::<f64>().ln() - row[t as usize]
        };
        assert!((l[i] - want).abs() < 1e-13, "row {i}");
    }
    // Accumulate on top of ones; the ignored row must receive nothing.
    let mut dz = vec![1.0; rows * vocab];
    let mut l2 = vec![0.0; rows];
    let grad = LossGrad {
        dlogits: &mut dz,
        scale,
        mode: WriteMode::Accumulate,
    };
    be.cross_entropy(&mut l2, Some(grad), &logits, &targets, vocab).unwrap();
    assert_eq!(l, l2);
    let dz: Vec<f64> = dz.iter().map(|v| v - 1.0).collect();
    assert!(dz[vocab..2 * vocab].iter().all(|&v| v == 0.0));
    // The overwrite path (one exponential per logit) gives the same gradient and clears the ignored row.
    let mut dz_over = vec![5.0; rows * vocab];
    let grad = LossGrad {
        dlogits: &mut dz_over,
        scale,
        mode: WriteMode::Overwrite,
    };
    let mut l3 = vec![0.0; rows];
    be.cross_entropy(&mut l3, Some(grad), &logits, &targets, vocab).unwrap();
    assert_close("overwrite-mode dlogits", &dz_over, &dz, 1e-14);
    assert_close("overwrite-mode losses", &l3, &l, 1e-14);
    fd_check("cross-entropy dlogits", &mut logits, &dz, 0..rows * vocab, |z| {
        scale * losses_of(z).iter().sum::<f64>()
    });
    // A target outside the vocabulary is a shape error, not a panic.
    let bad = be.cross_entropy(&mut vec![0.0; 1], None, &vec![0.0; vocab], &vec![11], vocab);
    assert!(matches!(bad, Err(EngineError::Shape { .. })));
}

#[test]
fn kl_divergence_matches_definition_and_finite_differences() {
    let be = backend();
    let mut rng = SplitMix64::new(10);
    let (rows, vocab, temp, scale) = (3, 13, 2.0, 1.3);
    let mut logits = randn(&mut rng, rows * vocab, 2.0);
    let teacher = randn(&mut rng, rows * vocab, 2.0);
    let losses_of = |z: &[f64], t: &[f64]| {
        let mut l = vec![0.0; rows];
        be.kl_divergence(&mut l, None, &z.to_vec(), &t.to_vec(), vocab, temp)
            .unwrap();
        l
    };
    let softmax = |z: &[f64]| {
        let e: Vec<f64> = z.iter().map(|v| (v / temp).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<_>>()
    };
    let l = losses_of(&logits, &teacher);
    for i in 0..rows {
        let p = softmax(&teacher[i * vocab..(i + 1) * vocab]);
        let q = softmax(&logits[i * vocab..(i + 1) * vocab]);
        let want: f64 = temp * temp * p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>();
        assert!((l[i] - want).abs() < 1e-13, "row {i}: {} vs {want}", l[i]);
    }
    assert!(losses_of(&teacher, &teacher).iter().all(|v| v.abs() < 1e-14));
    let mut dz = vec![0.0; rows * vocab];
    let grad = LossGrad {
        dlogits: &mut dz,
        scale,
        mode: WriteMode::Overwrite,
    };
    be.kl_divergence(&mut vec![0.0; rows], Some(grad), &logits, &teacher, vocab, temp)
        .unwrap();
    fd_check("KL dlogits", &mut logits, &dz, 0..rows * vocab, |z| {
        scale * losses_of(z, &teacher).iter().sum::<f64>()
    });
}

fn linear(id: usize, inf: usize, outf: usize) -> Linear {
    Linear {
        weight: ParamId(id),
        in_features: inf,
        out_features: outf,
        quantize_activations: false,
    }
}

/// Random parameters for `shapes`; norm gains (single-row shapes) near 1.
fn random_params(rng: &mut SplitMix64, shapes: &[[usize; 2]]) -> Vec<Vec<f64>> {
    shapes
        .iter()
        .map(|&[r, c]| {
            if r == 1 {
                (0..c).map(|_| 1.0 + 0.2 * rng.normal()).collect()
            } else {
                randn(rng, r * c, 1.0 / (c as f64).sqrt())
            }
        })
        .collect()
}

#[test]
fn attention_block_matches_finite_differences() {
    let be = backend();
    let (batch, seq, c, heads, kv, hd) = (2, 4, 12, 4, 2, 4);
    let dims = AttentionDims {
        batch,
        seq_len: seq,
        n_heads: heads,
        n_kv_heads: kv,
        head_dim: hd,
    };
    let rows = batch * seq;
    let table = rope_table(seq, hd, 10000.0, RopeScaling::None);
    for (seed, sub) in [(11, false), (12, true)] {
        let mut rng = SplitMix64::new(seed);
        let block = SelfAttention {
            q: linear(0, c, heads * hd),
            k: linear(1, c, kv * hd),
            v: linear(2, c, kv * hd),
            o: linear(3, heads * hd, c),
            sub_norm: sub.then_some(RmsNorm {
                weight: ParamId(4),
                dim: heads * hd,
                eps: 1e-5,
            }),
            dims,
            rope: RopeDims {
                seq_len: seq,
                n_heads: heads,
                head_dim: hd,
                style: RopeStyle::Interleaved,
            },
        };
        let mut shapes = vec![[heads * hd, c], [kv * hd, c], [kv * hd, c], [c, heads * hd]];
        if sub {
            shapes.push([1, heads * hd]);
        }
        let mut params = random_params(&mut rng, &shapes);
        let x = randn(&mut rng, rows * c, 1.0);
        let residual0 = randn(&mut rng, rows * c, 1.0);
        let r = randn(&mut rng, rows * c, 1.0);
        let run = |params: &[Vec<f64>], x: &[f64]| {
            let weights = Weights::<B64>::new(params, &[]);
            let mut acts = AttentionActivations::new(&be, &block).unwrap();
            let mut residual = residual0.clone();
            block
                .forward(
                    &be,
                    &weights,
                    &x.to_vec(),
                    &table,
                    &mut acts,
                    &mut residual,
                    &mut QuantScratch::none(),
                )
                .unwrap();
            (residual, acts)
        };
        let (_, acts) = run(&params, &x);
        let mut grads: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        let mut dx = vec![0.0; rows * c];
        let mut scratch = AttentionScratch::new(&be, &block).unwrap();
        let weights = Weights::<B64>::new(&params, &[]);
        block
            .backward(
                &be,
                &weights,
                &mut grads,
                &x,
                &table,
                &acts,
                &r,
                &mut dx,
                &mut scratch,
                &mut QuantScratch::none(),
            )
            .unwrap();
        let p0 = params.clone();
        fd_check("attention block dx", &mut x.clone(), &dx, 0..rows * c, |x| {
            dot(&run(&p0, x).0, &r)
        });
        for t in 0..params.len() {
            let len = params[t].len();
            let mut p = params.clone();
            let loss = |v: &[f64]| {
                p[t] = v.to_vec();
                dot(&run(&p, &x).0, &r)
            };
            fd_check(
                &format!("attention block param {t}"),
                &mut params[t],
                &grads[t],
                0..len,
                loss,
            );
        }
    }
}

#[test]
fn mlp_block_matches_finite_differences() {
    let be = backend();
    let (rows, c, f) = (6, 10, 14);
    for (seed, act, sub) in [
        (13, GatedActivation::Silu, false),
        (14, GatedActivation::ReluSquared, true),
    ] {
        let mut rng = SplitMix64::new(seed);
        let block = GatedMlp {
            gate: linear(0, c, f),
            up: linear(1, c, f),
            down: linear(2, f, c),
            sub_norm: sub.then_some(RmsNorm {
                weight: ParamId(3),
                dim: f,
                eps: 1e-5,
            }),
            activation: act,
            rows,
        };
        let mut shapes = vec![[f, c], [f, c], [c, f]];
        if sub {
            shapes.push([1, f]);
        }
        let mut params = random_params(&mut rng, &shapes);
        let x = randn(&mut rng, rows * c, 1.0);
        let residual0 = randn(&mut rng, rows * c, 1.0);
        let r = randn(&mut rng, rows * c, 1.0);
        let run = |params: &[Vec<f64>], x: &[f64]| {
            let weights = Weights::<B64>::new(params, &[]);
            let mut acts = MlpActivations::new(&be, &block).unwrap();
            let mut residual = residual0.clone();
            block
                .forward(
                    &be,
                    &weights,
                    &x.to_vec(),
                    &mut acts,
                    &mut residual,
                    &mut QuantScratch::none(),
                )
                .unwrap();
            (residual, acts)
        };
        let (_, acts) = run(&params, &x);
        let mut grads: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        let mut dx = vec![0.0; rows * c];
        let mut scratch = MlpScratch::new(&be, &block).unwrap();
        let weights = Weights::<B64>::new(&params, &[]);
        block
            .backward(
                &be,
                &weights,
                &mut grads,
                &x,
                &acts,
                &r,
                &mut dx,
                &mut scratch,
                &mut QuantScratch::none(),
            )
            .unwrap();
        let p0 = params.clone();
        fd_check("mlp block dx", &mut x.clone(), &dx, 0..rows * c, |x| {
            dot(&run(&p0, x).0, &r)
        });
        for t in 0..params.len() {
            let len = params[t].len();
            let mut p = params.clone();
            let loss = |v: &[f64]| {
                p[t] = v.to_vec();
                dot(&run(&p, &x).0, &r)
            };
            fd_check(&format!("mlp block param {t}"), &mut params[t], &grads[t], 0..len, loss);
        }
    }
}

#[test]
fn round_half_even_matches_the_standard_library() {
    use tern_quantizer::engine::Float;
    let mut rng = SplitMix64::new(15);
    let mut values: Vec<f64> = (-600..600).map(|k| k as f64 * 0.25).collect();
    values.extend((0..2000).map(|_| rng.normal() * 300.0));
    values.extend([
        4194304.5,
        8388607.5,
        8388608.0,
        8388609.0,
        1e9 + 0.5,
        4503599627370495.5,
        1e300,
        -1e300,
    ]);
    for v in values {
        let x32 = v as f32;
        let got32 = Float::round_even(x32);
        assert!(got32 == x32.round_ties_even(), "f32 {x32}: {got32}");
        let got64 = Float::round_even(v);
        assert!(got64 == v.round_ties_even(), "f64 {v}: {got64}");
    }
    assert!(Float::round_even(f32::NAN).is_nan() && Float::round_even(f64::NAN).is_nan());
    assert_eq!(Float::round_even(f32::INFINITY), f32::INFINITY);
    assert_eq!(Float::round_even(f64::NEG_INFINITY), f64::NEG_INFINITY);
}

#[test]
fn matmul_is_deterministic_across_runs_and_thread_counts() {
    // Resuming a run bit-for-bit needs kernels whose results do not depend on scheduling.
    use tern_quantizer::engine::GemmSpec;
    let be = CpuBackend::<f32>::new();
    let mut rng = SplitMix64::new(16);
    let (m, n, k) = (300, 200, 500);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    let spec = GemmSpec {
        m,
        n,
        k,
        a_transposed: false,
        b_transposed: true,
        mode: WriteMode::Overwrite,
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut out = vec![0.0f32; m * n];
            be.matmul(&mut out, &a, &b, spec).unwrap();
            out
        })
    };
    let reference = run(2);
    assert!(run(2) == reference);
    assert!(run(1) == reference, "GEMM result depends on the thread count");
    // And it is a matrix product: compare with an f64 reference.
    let want = matmul(
        &a.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        &transpose(&b.iter().map(|&x| x as f64).collect::<Vec<_>>(), n, k),
        m,
        k,
        n,
    );
    for (g, w) in reference.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-3, "{g} vs {w}");
    }
}
