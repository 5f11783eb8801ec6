//! The non-matrix operations of the forward pass: RMSNorm, RoPE (with Llama-3 frequency scaling), softmax,
//! the gated activations, embedding lookup and grouped-query attention over the KV cache.

use half::f16;
use tern_format::numerics;
use tern_format::{ElementType, ModelConfig, RopeStyle, ScaleKind};

use crate::kernels::{Kernels, Matrix};

/// `out = x / sqrt(mean(x²) + eps) · w` (the sum of squares in f64).
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let inv = rms_scale(x, eps);
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
}

/// In-place `rmsnorm`.
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let inv = rms_scale(x, eps);
    for (xi, &wi) in x.iter_mut().zip(w) {
        *xi = *xi * inv * wi;
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let n = x.len().max(1) as f64;
    (1.0 / libm::sqrt(ss / n + f64::from(eps))) as f32
}

/// RoPE inverse frequencies `θ^(−2i/d)` for `i < d/2`, with Llama-3 scaling applied (computed in f64; the
/// formula is `tern_format::numerics::rope_inv_freq`, shared with the training engine and the GGUF exporter).
pub fn rope_inv_freq(config: &ModelConfig, out: &mut [f64]) {
    let d = config.head_dim as usize;
    let theta = f64::from(config.rope_theta);
    for (i, f) in out.iter_mut().enumerate() {
        *f = numerics::rope_inv_freq(i, d, theta, config.rope_scaling);
    }
}

/// `out[..d/2] = cos(pos·f_i)`, `out[d/2..] = sin(pos·f_i)` (angles in f64).
pub fn rope_cos_sin(inv_freq: &[f64], pos: usize, out: &mut [f32]) {
    let half = inv_freq.len();
    let (cos, sin) = out.split_at_mut(half.min(out.len()));
    for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
        let a = pos as f64 * f;
        *c = libm::cos(a) as f32;
        *s = libm::sin(a) as f32;
    }
}

/// Rotates every head of `x` (`[heads][head_dim]`) by the angles in `cs` (from `rope_cos_sin`).
pub fn apply_rope(style: RopeStyle, head_dim: usize, x: &mut [f32], cs: &[f32]) {
    let half = head_dim / 2;
    if half == 0 {
        return;
    }
    let (cos, sin) = cs.split_at(half.min(cs.len()));
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Interleaved => {
                for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c - b * s;
                    pair[1] = a * s + b * c;
                }
            }
            RopeStyle::Half => {
                let (lo, hi) = head.split_at_mut(half);
                for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                    let (x0, x1) = (*a, *b);
                    *a = x0 * c - x1 * s;
                    *b = x0 * s + x1 * c;
                }
            }
        }
    }
}

/// `e^x` to within 2 ulp (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial for `e^r`, times `2^n`),
/// in plain arithmetic that the compiler vectorises — `libm::expf` is a call per element, and SmolLM2's
/// SwiGLU alone needs 46k of them per token. Inputs are clamped to [−87.3, 88.3] (results stay normal and
/// finite: `e^−87.3` stands in for anything smaller, which no softmax or SiLU can tell apart); NaN gives NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // ln 2 split so that `n·LN2_HI` is exact for |n| ≤ 128.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = tern_format::blocks::round_half_even(x * LOG2E);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // 2^n for n in −126..=127, built from its exponent bits (n is an integer-valued float).
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Llama's SwiGLU: `gate = silu(gate) · up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// BitNet b1.58's gated squared ReLU: `gate = relu(gate)² · up`.
pub fn relu2_glu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let r = g.max(0.0);
        *g = r * r * u;
    }
}

/// Row `row` of an embedding matrix, dequantized to f32. Returns false (and writes NaN) for a row or type
/// the matrix does not have.
pub fn embed(m: &Matrix<'_>, row: usize, out: &mut [f32]) -> bool {
    let Some(bytes) = m.row(row) else {
        out.fill(f32::NAN);
        return false;
    };
    match m.dtype {
        ElementType::Int8 => {
            let s = m.scales.get(row).copied().unwrap_or(f32::NAN);
            let q: &[i8] = bytemuck::cast_slice(bytes);
            for (o, &v) in out.iter_mut().zip(q) {
                *o = f32::from(v) * s;
            }
        }
        ElementType::Int4 => {
            let ScaleKind::PerGroup(g) = m.scale else {
                out.fill(f32::NAN);
                return false;
            };
            let g = g as usize;
            let ng = m.cols.div_ceil(g);
            let scales = m.scales.get(row * ng..(row + 1) * ng).unwrap_or(&[]);
            for (i, o) in out.iter_mut().enumerate().take(m.cols) {
                let b = bytes.get(i / 2).copied().unwrap_or(0x88);
                let nib = if i % 2 == 0 { b & 0x0F } else { b >> 4 };
                let s = scales.get(i / g).copied().unwrap_or(f32::NAN);
                *o = f32::from(nib as i8 - 8) * s;
            }
        }
        ElementType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(v) => {
                for (o, &h) in out.iter_mut().zip(v) {
                    *o = h.to_f32();
                }
            }
            Err(_) => out.fill(f32::NAN),
        },
        ElementType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(v) => {
                for (o, &h) in out.iter_mut().zip(v) {
                    *o = h;
                }
            }
            Err(_) => out.fill(f32::NAN),
        },
        ElementType::Ternary2 | ElementType::Ternary3 => {
            out.fill(f32::NAN);
            return false;
        }
    }
    true
}

/// An element type the KV cache can be stored in.
pub trait KvElem: bytemuck::Pod + Send + Sync {
    fn from_f32(v: f32) -> Self;
    fn dot(k: &Kernels, a: &[Self], x: &[f32]) -> f32;
    fn axpy(k: &Kernels, a: f32, v: &[Self], y: &mut [f32]);
}

impl KvElem for f32 {
    #[inline]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline]
    fn dot(k: &Kernels, a: &[Self], x: &[f32]) -> f32 {
        (k.dot_f32)(a, x)
    }
    #[inline]
    fn axpy(k: &Kernels, a: f32, v: &[Self], y: &mut [f32]) {
        (k.axpy_f32)(a, v, y)
    }
}

impl KvElem for f16 {
    #[inline]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    #[inline]
    fn dot(k: &Kernels, a: &[Self], x: &[f32]) -> f32 {
        (k.dot_f16)(a, x)
    }
    #[inline]
    fn axpy(k: &Kernels, a: f32, v: &[Self], y: &mut [f32]) {
        (k.axpy_f16)(a, v, y)
    }
}

/// One query head attending over positions `0..n_pos` of one layer's cache.
///
/// `k_cache`/`v_cache` are `[position][kv_dim]`; this head's key/value slice starts at `offset`.
/// `scores` needs `n_pos` entries; `out` (`head_dim`) receives `Σ softmax(q·k_s / √d)_s · v_s`.
#[allow(clippy::too_many_arguments)]
pub fn attention_head<T: KvElem>(
    k: &Kernels,
    q: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    kv_dim: usize,
    offset: usize,
    n_pos: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let scores = match scores.get_mut(..n_pos) {
        Some(s) => s,
        None => {
            out.fill(f32::NAN);
            return;
        }
    };
    for (s, key) in scores.iter_mut().zip(k_cache.chunks_exact(kv_dim)) {
        let kh = key.get(offset..offset + hd).unwrap_or(&[]);
        *s = T::dot(k, kh, q) * scale;
    }
    softmax(scores);
    out.fill(0.0);
    for (&p, val) in scores.iter().zip(v_cache.chunks_exact(kv_dim)) {
        let vh = val.get(offset..offset + hd).unwrap_or(&[]);
        T::axpy(k, p, vh, out);
    }
}
