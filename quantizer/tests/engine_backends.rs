//! One suite for every backend: each op's outputs and gradients, a whole model's gradient and a few training
//! steps of an f32 backend against the CPU backend in f64 (itself checked against finite differences in
//! `engine_layers.rs` / `engine_model.rs`), on random inputs, with every overwritten output poisoned with NaN
//! beforehand so that an element a kernel forgets to write fails the comparison.
//!
//! Backends: `CpuBackend<f32>` always (the backend parity on the CPU); `CudaBackend` in FP32 and TF32 where a
//! GPU is usable (elsewhere the CUDA tests print `skipped: <reason>` and pass); and, without a device, the CUDA
//! kernels are compiled with NVRTC for sm_90 where NVRTC is installed, so they cannot rot.
//!
//! Tolerances: relative L2 error `‖x − ref‖/‖ref‖` per output. f32 elementwise and row arithmetic lands near
//! 1e-7; [`Tol::FP32`] allows 2e-5 (sums of a few hundred terms, `exp`, attention's softmax). TF32 products
//! carry 10-bit mantissas (≈3e-4 per product, METHOD.md), so [`Tol::TF32`] allows 5e-3 on GEMM outputs and
//! 2e-2 on a whole model's gradients. Quantizer codes may differ only at rounding ties (`|w/a|` within 1e-4 of
//! ½, where an f32 and an f64 scale disagree); such elements are counted and must stay below 0.5%.

mod engine_support;

use engine_support::randn;
use tern_format::{Architecture, RopeStyle};
use tern_quantizer::engine::{
    tiny_config, AdamW, AdamWConfig, AttentionDims, Backend, Batch, CpuBackend, EngineConfig, GatedActivation,
    GemmSpec, LossGrad, LrSchedule, Objective, ParamKind, ParamLayout, Parameters, QuantConfig, Recompute, RopeDims,
    RopeDirection, ScaleGroups, SoftState, SplitMix64, Transformer, WeightQuantizer, WriteMode, IGNORE_INDEX,
};

type R = CpuBackend<f64>;

#[derive(Clone, Copy, Debug)]
struct Tol {
    /// Elementwise and row kernels, reductions, attention.
    ops: f64,
    /// Matrix products.
    gemm: f64,
    /// A whole model's gradients and losses after a few steps.
    model: f64,
}

impl Tol {
    const FP32: Tol = Tol {
        ops: 2e-5,
        gemm: 2e-5,
        model: 1e-4,
    };
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    const TF32: Tol = Tol {
        ops: 2e-5,
        gemm: 5e-3,
        model: 2e-2,
    };
}

/// An f32 backend under test and the f64 reference.
struct Pair<'a, B: Backend<Elem = f32>> {
    b: &'a B,
    r: R,
    tol: Tol,
    label: &'static str,
}

fn rel_err(x: &[f32], want: &[f64]) -> f64 {
    assert_eq!(x.len(), want.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in x.iter().zip(want) {
        let d = a as f64 - b;
        num += d * d;
        den += b * b;
    }
    if !num.is_finite() {
        return f64::INFINITY;
    }
    (num / den.max(1e-300)).sqrt()
}

/// f64 values exactly representable in f32, so both backends see the same input.
fn rand32(rng: &mut SplitMix64, n: usize, std: f64) -> Vec<f64> {
    randn(rng, n, std).into_iter().map(|v| v as f32 as f64).collect()
}

fn to32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

impl<B: Backend<Elem = f32>> Pair<'_, B> {
    fn up(&self, x: &[f64]) -> B::Buf {
        self.b.upload(&to32(x)).unwrap()
    }

    /// A buffer of `n` NaNs: whatever the kernel does not write stays NaN.
    fn poisoned(&self, n: usize) -> B::Buf {
        let mut buf = self.b.alloc(n).unwrap();
        self.b.fill(&mut buf, f32::NAN).unwrap();
        buf
    }

    fn down(&self, buf: &B::Buf) -> Vec<f32> {
        self.b.download(buf).unwrap()
    }

    fn check(&self, what: &str, got: &B::Buf, want: &[f64], tol: f64) {
        let got = self.down(got);
        let e = rel_err(&got, want);
        assert!(e <= tol, "{}: {what}: relative error {e:.3e} > {tol:.1e}", self.label);
    }

    fn check_host(&self, what: &str, got: f64, want: f64, tol: f64) {
        let e = (got - want).abs() / want.abs().max(1e-30);
        assert!(
            e <= tol,
            "{}: {what}: {got} vs {want} (relative {e:.3e} > {tol:.1e})",
            self.label
        );
    }
}

fn storage_and_reductions<B: Backend<Elem = f32>>(p: &Pair<'_, B>) {
    let mut rng = SplitMix64::new(1);
    for n in [0usize, 1, 37, 4099, 70_001] {
        let x = rand32(&mut rng, n, 1.0);
        let y = rand32(&mut rng, n, 1.0);
        let (bx, mut by) = (p.up(&x), p.up(&y));
        assert_eq!(p.down(&bx), to32(&x), "{}: upload/download", p.label);
        let mut copy = p.poisoned(n);
        p.b.copy(&mut copy, &bx).unwrap();
        assert_eq!(p.down(&copy), to32(&x), "{}: copy", p.label);
        let ss: f64 = x.iter().map(|v| v * v).sum();
        p.check_host("sum_squares", p.b.sum_squares(&bx).unwrap(), ss, 1e-12);
        let d: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        if n > 0 {
            p.check_host("dot", p.b.dot(&bx, &by).unwrap(), d, 1e-10);
        }
        p.b.axpy(&mut by, -0.75, &bx).unwrap();
        let want: Vec<f64> = y.iter().zip(&x).map(|(y, x)| y - 0.75 * x).collect();
        p.check("axpy", &by, &want, 1e-7);
        let mut f = p.poisoned(n);
        p.b.fill(&mut f, 2.5).unwrap();
        assert!(p.down(&f).iter().all(|&v| v == 2.5));
    }
    // The global-norm reduction over many tensors, empty ones included.
    let tensors: Vec<Vec<f64>> = [5usize, 0, 1000, 3, 65_537]
        .iter()
        .map(|&n| rand32(&mut rng, n, 2.0))
        .collect();
    let bufs: Vec<B::Buf> = tensors.iter().map(|t| p.up(t)).collect();
    let refs: Vec<&B::Buf> = bufs.iter().collect();
    let want: f64 = tensors.iter().flatten().map(|v| v * v).sum();
    p.check_host("sum_squares_all", p.b.sum_squares_all(&refs).unwrap(), want, 1e-12);
    let ids = [5u32, 0, IGNORE_INDEX, 5, 2];
    let mut dev = p.b.upload_ids(&ids).unwrap();
    assert_eq!(p.b.ids_len(&dev), 5);
    p.b.write_ids(&mut dev, &ids[..2]).unwrap();
    assert_eq!(p.b.ids_len(&dev), 2);
}

fn matmuls<B: Backend<Elem = f32>>(p: &Pair<'_, B>) {
    let mut rng = SplitMix64::new(2);
    for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (33, 65, 129), (128, 96, 64), (5, 3, 0)] {
        for a_t in [false, true] {
            for b_t in [false, true] {
                for mode in [WriteMode::Overwrite, WriteMode::Accumulate] {
                    let a = rand32(&mut rng, m * k, 1.0);
                    let b = rand32(&mut rng, k * n, 1.0);
                    let c0 = rand32(&mut rng, m * n, 1.0);
                    let spec = GemmSpec {
                        m,
                        n,
                        k,
                        a_transposed: a_t,
                        b_transposed: b_t,
                        mode,
                    };
                    let mut want = c0.clone();
                    p.r.matmul(&mut want, &a, &b, spec).unwrap();
                    let mut out = match mode {
                        WriteMode::Overwrite => p.poisoned(m * n),
                        WriteMode::Accumulate => p.up(&c0),
                    };
                    p.b.matmul(&mut out, &p.up(&a), &p.up(&b), spec).unwrap();
                    p.check(&format!("matmul {spec:?}"), &out, &want, p.tol.gemm);
                }
            }
        }
    }
}

/// Quantizer outputs: equal within `tol`, except elements whose `|w/a|` is within 1e-4 of ½ (a tie the f32 and
/// f64 scales round differently), which must stay rare.
fn check_quantized(label: &str, what: &str, got: &[f32], want: &[f64], w: &[f64], group_len: usize, tol: f64) {
    let mut ties = 0;
    for (g, ((got, want), w)) in got
        .chunks(group_len)
        .zip(want.chunks(group_len))
        .zip(w.chunks(group_len))
        .enumerate()
    {
        let a = (w.iter().map(|v| v.abs()).sum::<f64>() / w.len() as f64).max(1e-5);
        for i in 0..got.len() {
            let d = (got[i] as f64 - want[i]).abs();
            if d <= tol * (1.0 + want[i].abs()) {
                continue;
            }
            let z = (w[i] / a).abs();
            assert!(
                (z - 0.5).abs() < 1e-4 && got[i].is_finite(),
                "{label}: {what}: group {g} element {i}: {} vs {} (w/a = {z})",
                got[i],
                want[i]
            );
            ties += 1;
        }
    }
    assert!(ties * 200 <= got.len().max(1), "{label}: {what}: {ties} tie flips");
}

fn quantizers<B: Backend<Elem = f32>>(p: &Pair<'_, B>) {
    let mut rng = SplitMix64::new(3);
    let (rows, cols) = (24, 40);
    let n = rows * cols;
    for group_len in [n, cols, 8] {
        let w = rand32(&mut rng, n, 0.05);
        let bw = p.up(&w);
        let mut want = vec![0.0; n];
        p.r.quantize_ternary_hard(&mut want, &w, group_len).unwrap();
        let mut out = p.poisoned(n);
        p.b.quantize_ternary_hard(&mut out, &bw, group_len).unwrap();
        check_quantized(p.label, "hard", &p.down(&out), &want, &w, group_len, 1e-6);
        for (t, lambda) in [
            (0.0, 1.0),
            (0.0, 0.3),
            (0.35, 0.0),
            (0.35, 0.5),
            (0.35, 1.0),
            (0.05, 1.0),
            (2.0, 0.7),
        ] {
            let state = SoftState {
                temperature: t,
                pressure: lambda,
            };
            let mut want = vec![0.0; n];
            p.r.quantize_ternary_soft(&mut want, &w, group_len, state).unwrap();
            let mut out = p.poisoned(n);
            p.b.quantize_ternary_soft(&mut out, &bw, group_len, state).unwrap();
            let what = format!("soft T={t} λ={lambda} groups of {group_len}");
            check_quantized(p.label, &what, &p.down(&out), &want, &w, group_len, 1e-5);
            let g = rand32(&mut rng, n, 1.0);
            let mut want_g = g.clone();
            p.r.quantize_ternary_soft_backward(&mut want_g, &w, group_len, state)
                .unwrap();
            let mut got_g = p.up(&g);
            p.b.quantize_ternary_soft_backward(&mut got_g, &bw, group_len, state)
                .unwrap();
            // Sharp soft codes (small T) amplify the f32 rounding of z = w/a through σ'.
            let tol = if t > 0.0 && t < 0.1 { 1e-3 } else { 1e-4 };
            p.check(&format!("{what} backward"), &got_g, &want_g, tol);
        }
    }
    // The scale floor: an all-zero group has no gradient through the scale.
    let zeros = vec![0.0; 16];
    let g = rand32(&mut rng, 16, 1.0);
    let state = SoftState {
        temperature: 0.3,
        pressure: 1.0,
    };
    let mut want = g.clone();
    p.r.quantize_ternary_soft_backward(&mut want, &zeros, 16, state)
        .unwrap();
    let mut got = p.up(&g);
    p.b.quantize_ternary_soft_backward(&mut got, &p.up(&zeros), 16, state)
        .unwrap();
    p.check("soft backward, floored scale", &got, &want, 1e-5);
    // int8 activations, per row (a row of zeros included).
    for cols in [1usize, 7, 576] {
        let mut x = rand32(&mut rng, 5 * cols, 3.0);
        x[..cols].iter_mut().for_each(|v| *v = 0.0);
        let mut want = vec![0.0; x.len()];
        p.r.fake_quantize_int8_rows(&mut want, &x, cols).unwrap();
        let mut out = p.poisoned(x.len());
        p.b.fake_quantize_int8_rows(&mut out, &p.up(&x), cols).unwrap();
        let got = p.down(&out);
        let mut flips = 0;
        for (row, (g, w)) in got.chunks(cols).zip(want.chunks(cols)).enumerate() {
            let xr = &x[row * cols..(row + 1) * cols];
            let s = 127.0 / xr.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-5);
            for i in 0..cols {
                if (g[i] as f64 - w[i]).abs() > 1e-5 * (1.0 + w[i].abs()) {
                    let frac = (xr[i] * s).abs().fract();
                    assert!(
                        (frac - 0.5).abs() < 1e-3,
                        "{}: int8 row {row} col {i}: {} vs {}",
                        p.label,
                        g[i],
                        w[i]
                    );
                    flips += 1;
                }
            }
        }
        assert!(flips * 200 <= got.len(), "{}: int8: {flips} tie flips", p.label);
    }
}

fn row_ops<B: Backend<Elem = f32>>(p: &Pair<'_, B>) {
    let mut rng = SplitMix64::new(4);
    // Embedding with repeated tokens; the backward accumulates onto a non-zero table gradient.
    let (vocab, dim) = (11, 300);
    let tokens = vec![3u32, 0, 3, 10, 3, 1, 0, 7];
    let table = rand32(&mut rng, vocab * dim, 1.0);
    let mut want = vec![0.0; tokens.len() * dim];
    p.r.embedding_forward(&mut want, &table, &tokens, dim).unwrap();
    let ids = p.b.upload_ids(&tokens).unwrap();
    let mut out = p.poisoned(tokens.len() * dim);
    p.b.embedding_forward(&mut out, &p.up(&table), &ids, dim).unwrap();
    p.check("embedding forward", &out, &want, 0.0);
    let dout = rand32(&mut rng, tokens.len() * dim, 1.0);
    let dt0 = rand32(&mut rng, vocab * dim, 1.0);
    let mut want = dt0.clone();
    p.r.embedding_backward(&mut want, &dout, &tokens, dim).unwrap();
    let mut got = p.up(&dt0);
    p.b.embedding_backward(&mut got, &p.up(&dout), &ids, dim).unwrap();
    p.check("embedding backward", &got, &want, 1e-7);
    let bad = p.b.upload_ids(&[vocab as u32]).unwrap();
    assert!(p
        .b
        .embedding_forward(&mut p.poisoned(dim), &p.up(&table), &bad, dim)
        .is_err());

    // RMSNorm (rows > 64 so the weight gradient has several row chunks).
    for (rows, cols) in [(3usize, 5usize), (130, 576)] {
        let x = rand32(&mut rng, rows * cols, 1.0);
        let w = randn(&mut rng, cols, 0.2)
            .into_iter()
            .map(|v| ((1.0 + v) as f32) as f64)
            .collect::<Vec<_>>();
        let (mut want, mut want_r) = (vec![0.0; rows * cols], vec![0.0; rows]);
        p.r.rmsnorm_forward(&mut want, &mut want_r, &x, &w, 1e-5).unwrap();
        let (mut out, mut rstd) = (p.poisoned(rows * cols), p.poisoned(rows));
        let (bx, bw) = (p.up(&x), p.up(&w));
        p.b.rmsnorm_forward(&mut out, &mut rstd, &bx, &bw, 1e-5).unwrap();
        p.check("rmsnorm forward", &out, &want, p.tol.ops);
        p.check("rmsnorm rstd", &rstd, &want_r, p.tol.ops);
        let dy = rand32(&mut rng, rows * cols, 1.0);
        let dw0 = rand32(&mut rng, cols, 1.0);
        for mode in [WriteMode::Overwrite, WriteMode::Accumulate] {
            let dx0 = rand32(&mut rng, rows * cols, 1.0);
            let (mut want_dx, mut want_dw) = (dx0.clone(), dw0.clone());
            p.r.rmsnorm_backward(&mut want_dx, &mut want_dw, &dy, &x, &w, &want_r, mode)
                .unwrap();
            let mut dx = match mode {
                WriteMode::Overwrite => p.poisoned(rows * cols),
                WriteMode::Accumulate => p.up(&dx0),
            };
            let mut dw = p.up(&dw0);
            p.b.rmsnorm_backward(&mut dx, &mut dw, &p.up(&dy), &bx, &bw, &rstd, mode)
                .unwrap();
            p.check(&format!("rmsnorm dx {mode:?}"), &dx, &want_dx, p.tol.ops);
            p.check("rmsnorm dweight", &dw, &want_dw, p.tol.ops);
        }
    }

    // RoPE, both pair layouts, forward and inverse.
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        let dims = RopeDims {
            seq_len: 9,
            n_heads: 3,
            head_dim: 8,
            style,
        };
        let table = tern_quantizer::engine::layers::rope::rope_table(9, 8, 10000.0, tern_format::RopeScaling::None);
        let table32: Vec<f64> = table.iter().map(|&v| v as f32 as f64).collect();
        let x = rand32(&mut rng, 2 * 9 * 24, 1.0);
        for dir in [RopeDirection::Forward, RopeDirection::Inverse] {
            let mut want = x.clone();
            p.r.rope(&mut want, &table32, dims, dir).unwrap();
            let mut got = p.up(&x);
            p.b.rope(&mut got, &p.up(&table32), dims, dir).unwrap();
            p.check(&format!("rope {style:?} {dir:?}"), &got, &want, 1e-6);
        }
    }

    // Gated activations.
    for act in [GatedActivation::Silu, GatedActivation::ReluSquared] {
        let n = 5000;
        let (g, u, dy) = (
            rand32(&mut rng, n, 2.0),
            rand32(&mut rng, n, 1.0),
            rand32(&mut rng, n, 1.0),
        );
        let mut want = vec![0.0; n];
        p.r.gated_forward(&mut want, &g, &u, act).unwrap();
        let mut out = p.poisoned(n);
        let (bg, bu) = (p.up(&g), p.up(&u));
        p.b.gated_forward(&mut out, &bg, &bu, act).unwrap();
        p.check(&format!("gated {act:?}"), &out, &want, 1e-6);
        let (mut wg, mut wu) = (vec![0.0; n], vec![0.0; n]);
        p.r.gated_backward(&mut wg, &mut wu, &dy, &g, &u, act).unwrap();
        let (mut dg, mut du) = (p.poisoned(n), p.poisoned(n));
        p.b.gated_backward(&mut dg, &mut du, &p.up(&dy), &bg, &bu, act).unwrap();
        p.check(&format!("gated {act:?} dgate"), &dg, &wg, 1e-6);
        p.check(&format!("gated {act:?} dup"), &du, &wu, 1e-6);
    }

    // AdamW.
    let n = 3001;
    let (w, g) = (rand32(&mut rng, n, 1.0), rand32(&mut rng, n, 1.0));
    let (m0, v0) = (
        rand32(&mut rng, n, 0.1),
        rand32(&mut rng, n, 0.1).iter().map(|x| x.abs()).collect::<Vec<_>>(),
    );
    let hp = tern_quantizer::engine::AdamWParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.01,
        bias_correction1: 1.0 - 0.9f64.powi(3),
        bias_correction2: 1.0 - 0.95f64.powi(3),
        grad_scale: 0.5,
    };
    let (mut rw, mut rm, mut rv) = (w.clone(), m0.clone(), v0.clone());
    p.r.adamw_update(&mut rw, &g, &mut rm, &mut rv, &hp).unwrap();
    let (mut bw, mut bm, mut bv) = (p.up(&w), p.up(&m0), p.up(&v0));
    p.b.adamw_update(&mut bw, &p.up(&g), &mut bm, &mut bv, &hp).unwrap();
    p.check("adamw param", &bw, &rw, 1e-7);
    p.check("adamw m", &bm, &rm, 1e-6);
    p.check("adamw v", &bv, &rv, 1e-6);
}

fn attention<B: Backend<Elem = f32>>(p: &Pair<'_, B>) {
    let mut rng = SplitMix64::new(5);
    // Sequences longer than one 64-row tile, GQA, a head dimension needing padding lanes (6), and SmolLM2's 64.
    for &(batch, seq, heads, kv, hd) in &[
        (2usize, 5usize, 2usize, 1usize, 6usize),
        (2, 70, 4, 2, 8),
        (1, 130, 3, 1, 64),
    ] {
        let dims = AttentionDims {
            batch,
            seq_len: seq,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: hd,
        };
        let (qn, kvn) = (dims.rows() * dims.q_dim(), dims.rows() * dims.kv_dim());
        let (q, k, v) = (
            rand32(&mut rng, qn, 1.0),
            rand32(&mut rng, kvn, 1.0),
            rand32(&mut rng, kvn, 1.0),
        );
        let dout = rand32(&mut rng, qn, 1.0);
        let (mut want, mut probs) = (vec![0.0; qn], vec![0.0; p.r.attention_saved_len(&dims)]);
        p.r.attention_forward(&mut want, &mut probs, &q, &k, &v, dims).unwrap();
        let (mut wdq, mut wdk, mut wdv) = (vec![0.0; qn], vec![0.0; kvn], vec![0.0; kvn]);
        let mut scratch = vec![0.0; p.r.attention_scratch_len(&dims)];
        p.r.attention_backward(
            &mut wdq,
            &mut wdk,
            &mut wdv,
            &mut scratch,
            &dout,
            &want,
            &q,
            &k,
            &v,
            &probs,
            dims,
        )
        .unwrap();
        let (bq, bk, bv) = (p.up(&q), p.up(&k), p.up(&v));
        let mut out = p.poisoned(qn);
        let mut saved = p.poisoned(p.b.attention_saved_len(&dims));
        p.b.attention_forward(&mut out, &mut saved, &bq, &bk, &bv, dims)
            .unwrap();
        let what = format!("attention {dims:?}");
        p.check(&format!("{what} forward"), &out, &want, p.tol.ops);
        let (mut dq, mut dk, mut dv) = (p.poisoned(qn), p.poisoned(kvn), p.poisoned(kvn));
        let mut scratch = p.poisoned(p.b.attention_scratch_len(&dims));
        p.b.attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &mut scratch,
            &p.up(&dout),
            &out,
            &bq,
            &bk,
            &bv,
            &saved,
            dims,
        )
        .unwrap();
        p.check(&format!("{what} dq"), &dq, &wdq, p.tol.ops);
        p.check(&format!("{what} dk"), &dk, &wdk, p.tol.ops);
        p.check(&format!("{what} dv"), &dv, &wdv, p.tol.ops);
    }
}

fn losses<B: Backend<Elem = f32>>(p: &Pair<'_, B>) {
    let mut rng = SplitMix64::new(6);
    let (rows, vocab) = (6usize, 1000usize);
    let logits = rand32(&mut rng, rows * vocab, 3.0);
    let teacher = rand32(&mut rng, rows * vocab, 3.0);
    let targets = vec![3u32, IGNORE_INDEX, 999, 0, 500, 7];
    let ids = p.b.upload_ids(&targets).unwrap();
    let (bz, bt) = (p.up(&logits), p.up(&teacher));
    let scale = 0.37;
    for mode in [None, Some(WriteMode::Overwrite), Some(WriteMode::Accumulate)] {
        let d0 = rand32(&mut rng, rows * vocab, 1.0);
        // Cross-entropy.
        let (mut wl, mut wd) = (vec![0.0; rows], d0.clone());
        let grad = mode.map(|mode| LossGrad {
            dlogits: &mut wd,
            scale,
            mode,
        });
        p.r.cross_entropy(&mut wl, grad, &logits, &targets, vocab).unwrap();
        let mut l = p.poisoned(rows);
        let mut d = match mode {
            Some(WriteMode::Accumulate) => p.up(&d0),
            _ => p.poisoned(rows * vocab),
        };
        let grad = mode.map(|mode| LossGrad {
            dlogits: &mut d,
            scale,
            mode,
        });
        p.b.cross_entropy(&mut l, grad, &bz, &ids, vocab).unwrap();
        p.check(&format!("cross-entropy loss {mode:?}"), &l, &wl, 1e-6);
        if mode.is_some() {
            p.check(&format!("cross-entropy grad {mode:?}"), &d, &wd, 1e-6);
        }
        // KL at two temperatures.
        for temp in [1.0, 2.5] {
            let (mut wl, mut wd) = (vec![0.0; rows], d0.clone());
            let grad = mode.map(|mode| LossGrad {
                dlogits: &mut wd,
                scale,
                mode,
            });
            p.r.kl_divergence(&mut wl, grad, &logits, &teacher, vocab, temp)
                .unwrap();
            let mut l = p.poisoned(rows);
            let mut d = match mode {
                Some(WriteMode::Accumulate) => p.up(&d0),
                _ => p.poisoned(rows * vocab),
            };
            let grad = mode.map(|mode| LossGrad {
                dlogits: &mut d,
                scale,
                mode,
            });
            p.b.kl_divergence(&mut l, grad, &bz, &bt, vocab, temp).unwrap();
            p.check(&format!("KL loss T={temp} {mode:?}"), &l, &wl, 1e-5);
            if mode.is_some() {
                p.check(&format!("KL grad T={temp} {mode:?}"), &d, &wd, 1e-5);
            }
        }
        // MSE, per element and normalised per token.
        let cols = vocab;
        for normalize in [false, true] {
            let (mut wl, mut wd) = (vec![0.0; rows], d0.clone());
            let grad = mode.map(|mode| LossGrad {
                dlogits: &mut wd,
                scale,
                mode,
            });
            p.r.mse_loss(&mut wl, grad, &logits, &teacher, cols, normalize).unwrap();
            let mut l = p.poisoned(rows);
            let mut d = match mode {
                Some(WriteMode::Accumulate) => p.up(&d0),
                _ => p.poisoned(rows * vocab),
            };
            let grad = mode.map(|mode| LossGrad {
                dlogits: &mut d,
                scale,
                mode,
            });
            p.b.mse_loss(&mut l, grad, &bz, &bt, cols, normalize).unwrap();
            p.check(&format!("MSE loss normalize={normalize} {mode:?}"), &l, &wl, 1e-6);
            if mode.is_some() {
                p.check(&format!("MSE grad normalize={normalize} {mode:?}"), &d, &wd, 1e-6);
            }
        }
    }
}

/// Norm gains 1 ± 0.2, matrices N(0, 0.3²), exactly representable in f32.
fn random_params(layout: &ParamLayout, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = SplitMix64::new(seed);
    layout
        .specs
        .iter()
        .map(|s| {
            (0..s.numel())
                .map(|_| {
                    let v = match s.kind {
                        ParamKind::Norm => 1.0 + 0.2 * rng.normal(),
                        _ => 0.3 * rng.normal(),
                    };
                    v as f32 as f64
                })
                .collect()
        })
        .collect()
}

fn engine_config(arch: Architecture, quant: QuantConfig, batch: usize, seq: usize) -> EngineConfig {
    // hidden 48, 4 query heads and 2 KV heads of dim 12, FFN 40, vocab 37, two layers.
    EngineConfig {
        model: tiny_config(arch, 48, 2, 4, 2, 12, 40, 37, false),
        batch_size: batch,
        seq_len: seq,
        quant,
        recompute: Recompute::None,
    }
}

fn tokens_and_targets(n: usize, vocab: u32, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = SplitMix64::new(seed);
    let tokens: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    let mut targets: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    targets[n / 3] = IGNORE_INDEX;
    (tokens, targets)
}

/// One model's loss and gradients (after the quantizer's backward) on backend `be`.
fn model_gradient<B: Backend>(
    be: &B,
    cfg: &EngineConfig,
    host: &[Vec<f64>],
    soft: Option<SoftState>,
) -> (f64, Vec<Vec<f64>>) {
    let mut model = Transformer::new(be, cfg.clone()).unwrap();
    if let Some(s) = soft {
        model.set_all_soft_states(s).unwrap();
    }
    let layout = model.layout().clone();
    let host_t: Vec<Vec<B::Elem>> = host
        .iter()
        .map(|t| t.iter().map(|&v| B::Elem::from_f64(v)).collect())
        .collect();
    let params = Parameters::from_host(be, &layout, &host_t).unwrap();
    let mut grads = Parameters::zeros(be, &layout).unwrap();
    let (tokens, targets) = tokens_and_targets(cfg.tokens(), cfg.model.vocab_size, 11);
    let batch = Batch {
        tokens: &tokens,
        targets: &targets,
        teacher_logits: None,
    };
    let loss = model
        .forward_train(be, &params, &batch, &Objective::cross_entropy(), 1.0)
        .unwrap()
        .loss;
    model.backward(be, &params, &mut grads).unwrap();
    model.finish_gradients(be, &params, &mut grads).unwrap();
    let g = grads
        .to_host(be)
        .unwrap()
        .into_iter()
        .map(|t| t.into_iter().map(|v| v.to_f64()).collect())
        .collect();
    (loss, g)
}

use tern_quantizer::engine::Float;

fn whole_model_gradient<B: Backend<Elem = f32>>(p: &Pair<'_, B>) {
    let soft = QuantConfig {
        weights: WeightQuantizer::Soft,
        scale_groups: ScaleGroups::PerRow,
        int8_activations: false,
    };
    let cases = [
        (Architecture::Llama, QuantConfig::FULL_PRECISION, None),
        (
            Architecture::BitNetB158,
            soft,
            Some(SoftState {
                temperature: 0.35,
                pressure: 0.6,
            }),
        ),
    ];
    for (arch, quant, state) in cases {
        let cfg = engine_config(arch, quant, 2, 70);
        let layout = ParamLayout::new(&cfg.model);
        let host = random_params(&layout, 21);
        let (want_loss, want) = model_gradient(&p.r, &cfg, &host, state);
        let (loss, got) = model_gradient(p.b, &cfg, &host, state);
        p.check_host(&format!("{arch:?} loss"), loss, want_loss, p.tol.model);
        for (spec, (g, w)) in layout.specs.iter().zip(got.iter().zip(&want)) {
            let g32: Vec<f32> = g.iter().map(|&v| v as f32).collect();
            let e = rel_err(&g32, w);
            assert!(
                e <= p.tol.model,
                "{}: {arch:?} {quant:?}: gradient of {}: relative error {e:.3e}",
                p.label,
                spec.name
            );
        }
    }
}

/// Losses of a few AdamW steps of the ternary (STE, int8 activations) model.
fn train_losses<B: Backend>(be: &B, cfg: &EngineConfig, host: &[Vec<f64>], steps: usize) -> Vec<f64> {
    let mut model = Transformer::new(be, cfg.clone()).unwrap();
    let layout = model.layout().clone();
    let host_t: Vec<Vec<B::Elem>> = host
        .iter()
        .map(|t| t.iter().map(|&v| B::Elem::from_f64(v)).collect())
        .collect();
    let mut params = Parameters::from_host(be, &layout, &host_t).unwrap();
    let mut grads = Parameters::zeros(be, &layout).unwrap();
    let mut opt = AdamW::new(be, &layout, AdamWConfig::new(LrSchedule::Constant { lr: 3e-3 })).unwrap();
    (0..steps)
        .map(|s| {
            let (tokens, targets) = tokens_and_targets(cfg.tokens(), cfg.model.vocab_size, 100 + s as u64);
            let batch = Batch {
                tokens: &tokens,
                targets: &targets,
                teacher_logits: None,
            };
            model
                .train_step(
                    be,
                    &mut params,
                    &mut grads,
                    &mut opt,
                    &[batch],
                    &Objective::cross_entropy(),
                )
                .unwrap()
                .loss
        })
        .collect()
}

fn training_steps<B: Backend<Elem = f32>>(p: &Pair<'_, B>) {
    let cfg = engine_config(Architecture::Llama, QuantConfig::FULL_PRECISION, 2, 33);
    let host = random_params(&ParamLayout::new(&cfg.model), 31);
    let want = train_losses(&p.r, &cfg, &host, 4);
    let got = train_losses(p.b, &cfg, &host, 4);
    for (s, (g, w)) in got.iter().zip(&want).enumerate() {
        p.check_host(&format!("training step {s} loss"), *g, *w, p.tol.model);
    }
    assert!(want[3] < want[0], "the reference run does not learn: {want:?}");
    // STE with int8 activations: codes may flip at ties between f32 and f64, so only a loose match is meaningful.
    let cfg = engine_config(Architecture::BitNetB158, QuantConfig::W158_A8, 2, 33);
    let want = train_losses(&p.r, &cfg, &host_for(&cfg), 3);
    let got = train_losses(p.b, &cfg, &host_for(&cfg), 3);
    for (s, (g, w)) in got.iter().zip(&want).enumerate() {
        p.check_host(&format!("W1.58A8 step {s} loss"), *g, *w, 1e-2);
    }
}

fn host_for(cfg: &EngineConfig) -> Vec<Vec<f64>> {
    random_params(&ParamLayout::new(&cfg.model), 41)
}

fn full_suite<B: Backend<Elem = f32>>(b: &B, tol: Tol, label: &'static str) {
    let p = Pair {
        b,
        r: R::new(),
        tol,
        label,
    };
    storage_and_reductions(&p);
    matmuls(&p);
    quantizers(&p);
    row_ops(&p);
    attention(&p);
    losses(&p);
    whole_model_gradient(&p);
    training_steps(&p);
}

#[test]
fn cpu_f32_matches_cpu_f64() {
    full_suite(&CpuBackend::<f32>::new(), Tol::FP32, "cpu f32");
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use tern_quantizer::engine::cuda::{compile_all_kernels, probe_nvrtc, CudaBackend, GemmPrecision};

    fn device(precision: GemmPrecision) -> Option<CudaBackend> {
        match CudaBackend::with_precision(0, precision) {
            Ok(b) => {
                let i = b.info();
                println!(
                    "CUDA: {} (sm_{}{}), kernels for {}, NVRTC {:?}",
                    i.name, i.compute_capability.0, i.compute_capability.1, i.kernel_arch, i.nvrtc_version
                );
                Some(b)
            }
            Err(e) => {
                println!("skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn cuda_fp32_matches_cpu_f64() {
        if let Some(b) = device(GemmPrecision::Fp32) {
            full_suite(&b, Tol::FP32, "cuda fp32");
        }
    }

    #[test]
    fn cuda_tf32_matches_cpu_f64() {
        if let Some(b) = device(GemmPrecision::Tf32) {
            let p = Pair {
                b: &b,
                r: R::new(),
                tol: Tol::TF32,
                label: "cuda tf32",
            };
            matmuls(&p);
            whole_model_gradient(&p);
            training_steps(&p);
        }
    }

    /// The same inputs give bit-identical results run after run (no atomics, fixed reduction shapes): what
    /// resuming a run relies on.
    #[test]
    fn cuda_training_is_deterministic() {
        if let Some(b) = device(GemmPrecision::Tf32) {
            let cfg = engine_config(Architecture::Llama, QuantConfig::W158_A8, 2, 70);
            let host = host_for(&cfg);
            let a = train_losses(&b, &cfg, &host, 3);
            let c = train_losses(&b, &cfg, &host, 3);
            assert_eq!(a, c);
        }
    }

    /// Without a GPU, the kernels still compile (NVRTC alone, where installed: `.ci/run` installs it).
    #[test]
    fn cuda_kernels_compile_with_nvrtc() {
        if let Err(e) = probe_nvrtc() {
            println!("skipped: {e}");
            return;
        }
        // Every head-dimension class of the attention kernels (≤ 32 with padding lanes, 64, 128, 256) for the
        // H100/H200; the main module for an older architecture too.
        for (arch, dims) in [("sm_90", &[6usize, 64, 128, 256][..]), ("sm_80", &[][..])] {
            let sizes = compile_all_kernels(arch, dims).unwrap_or_else(|e| panic!("{e}"));
            println!("{arch}: {sizes:?}");
        }
    }

    /// The probe and the constructor fail with a typed error, never a panic, where CUDA is missing.
    #[test]
    fn cuda_unavailable_is_a_typed_error() {
        match CudaBackend::new() {
            Ok(_) => println!("a CUDA device is present: nothing to check"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("CUDA"), "{msg}");
                println!("CudaBackend::new() on this machine: {msg}");
            }
        }
    }
}
