//! Grouped-query causal self-attention.
//!
//! Per sequence `b` and query head `h` (KV head `g = h / (H/H_kv)`), with `scale = 1/sqrt(d)`:
//! forward `S = scale·Q_h·K_gᵀ`, `P = softmax(S)` over positions `s ≤ t`, `O_h = P·V_g`;
//! backward `dV_g += Pᵀ·dO_h`, `dP = dO_h·V_gᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
//! `dQ_h = scale·dS·K_g`, `dK_g += scale·dSᵀ·Q_h` — the KV gradients sum over the heads of a group.
//!
//! [`SelfAttention`] is the whole sub-block: Q/K/V projections, RoPE, the attention core, BitNet's optional
//! sub-norm and the output projection, which adds into the residual stream.

use rayon::prelude::*;

use super::embedding::SendPtr;
use super::linear::{backward_shared, forward_shared, Linear};
use super::rmsnorm::RmsNorm;
use super::{QuantScratch, Weights};
use crate::engine::backend::{AttentionDims, Backend, RopeDims, RopeDirection, WriteMode};
use crate::engine::error::EngineResult;
use crate::engine::matmul::{gemm_strided_with, MatmulPrecision};
use crate::engine::scalar::Float;

/// Rows of the score matrix computed per GEMM: causal masking lets row tile `[r0, r1)` stop at column `r1`,
/// which skips about half of the work.
const CAUSAL_TILE: usize = 64;

/// The attention sub-block of a transformer layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelfAttention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// BitNet b1.58 normalises the attention output before the output projection.
    pub sub_norm: Option<RmsNorm>,
    pub dims: AttentionDims,
    pub rope: RopeDims,
}

/// What the forward pass saves for the backward pass.
pub struct AttentionActivations<B: Backend> {
    /// Queries and keys after RoPE, values.
    pub q: B::Buf,
    pub k: B::Buf,
    pub v: B::Buf,
    pub probs: B::Buf,
    /// Attention output before the sub-norm.
    pub attn: B::Buf,
    /// Sub-norm output and its `rstd` (empty without a sub-norm).
    pub sub_out: B::Buf,
    pub sub_rstd: B::Buf,
}

impl<B: Backend> AttentionActivations<B> {
    pub fn new(backend: &B, block: &SelfAttention) -> EngineResult<Self> {
        let d = block.dims;
        let rows = d.rows();
        let sub = block.sub_norm.is_some();
        Ok(Self {
            q: backend.alloc(rows * d.q_dim())?,
            k: backend.alloc(rows * d.kv_dim())?,
            v: backend.alloc(rows * d.kv_dim())?,
            probs: backend.alloc(d.probs_len())?,
            attn: backend.alloc(rows * d.q_dim())?,
            sub_out: backend.alloc(if sub { rows * d.q_dim() } else { 0 })?,
            sub_rstd: backend.alloc(if sub { rows } else { 0 })?,
        })
    }
}

/// Gradient buffers the backward pass needs only while it runs (shared by all layers).
pub struct AttentionScratch<B: Backend> {
    pub dq: B::Buf,
    pub dk: B::Buf,
    pub dv: B::Buf,
    pub d_attn: B::Buf,
    /// Gradient w.r.t. the sub-norm output (empty without a sub-norm).
    pub d_sub: B::Buf,
    pub d_scores: B::Buf,
}

impl<B: Backend> AttentionScratch<B> {
    pub fn new(backend: &B, block: &SelfAttention) -> EngineResult<Self> {
        let d = block.dims;
        let rows = d.rows();
        Ok(Self {
            dq: backend.alloc(rows * d.q_dim())?,
            dk: backend.alloc(rows * d.kv_dim())?,
            dv: backend.alloc(rows * d.kv_dim())?,
            d_attn: backend.alloc(rows * d.q_dim())?,
            d_sub: backend.alloc(if block.sub_norm.is_some() { rows * d.q_dim() } else { 0 })?,
            d_scores: backend.alloc(d.probs_len())?,
        })
    }
}

impl SelfAttention {
    /// Elements of [`AttentionActivations`], for memory accounting.
    pub fn activation_elements(&self) -> usize {
        let d = self.dims;
        let sub = if self.sub_norm.is_some() {
            d.rows() * (d.q_dim() + 1)
        } else {
            0
        };
        d.rows() * (2 * d.q_dim() + 2 * d.kv_dim()) + d.probs_len() + sub
    }

    /// Elements of [`AttentionScratch`].
    pub fn scratch_elements(&self) -> usize {
        let d = self.dims;
        let sub = if self.sub_norm.is_some() {
            d.rows() * d.q_dim()
        } else {
            0
        };
        d.rows() * (2 * d.q_dim() + 2 * d.kv_dim()) + d.probs_len() + sub
    }

    /// `residual += o_proj(sub_norm?(attention(rope(x·Wqᵀ), rope(x·Wkᵀ), x·Wvᵀ)))`; `x` is the normed input.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        x: &B::Buf,
        rope_table: &B::Buf,
        acts: &mut AttentionActivations<B>,
        residual: &mut B::Buf,
        quant: &mut QuantScratch<B>,
    ) -> EngineResult<()> {
        let width = self.q.in_features;
        forward_shared(
            backend,
            weights,
            x,
            [&self.q, &self.k, &self.v],
            [&mut acts.q, &mut acts.k, &mut acts.v],
            quant.for_width(width),
        )?;
        backend.rope(&mut acts.q, rope_table, self.rope, RopeDirection::Forward)?;
        let kv_rope = RopeDims {
            n_heads: self.dims.n_kv_heads,
            ..self.rope
        };
        backend.rope(&mut acts.k, rope_table, kv_rope, RopeDirection::Forward)?;
        backend.attention_forward(&mut acts.attn, &mut acts.probs, &acts.q, &acts.k, &acts.v, self.dims)?;
        let o_in = match &self.sub_norm {
            Some(norm) => {
                norm.forward(backend, weights, &acts.attn, &mut acts.sub_out, &mut acts.sub_rstd)?;
                &acts.sub_out
            }
            None => &acts.attn,
        };
        self.o.forward(
            backend,
            weights,
            o_in,
            residual,
            WriteMode::Accumulate,
            quant.for_width(self.o.in_features),
        )
    }

    /// Given `d_residual` (the gradient flowing into the output projection's sum), overwrites `dx` with the
    /// gradient w.r.t. the normed input and accumulates parameter gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        grads: &mut [B::Buf],
        x: &B::Buf,
        rope_table: &B::Buf,
        acts: &AttentionActivations<B>,
        d_residual: &B::Buf,
        dx: &mut B::Buf,
        scratch: &mut AttentionScratch<B>,
        quant: &mut QuantScratch<B>,
    ) -> EngineResult<()> {
        let o_width = self.o.in_features;
        match &self.sub_norm {
            Some(norm) => {
                let q = quant.for_width(o_width);
                self.o.backward(
                    backend,
                    weights,
                    grads,
                    &acts.sub_out,
                    d_residual,
                    &mut scratch.d_sub,
                    WriteMode::Overwrite,
                    q,
                )?;
                norm.backward(
                    backend,
                    weights,
                    grads,
                    &acts.attn,
                    &acts.sub_rstd,
                    &scratch.d_sub,
                    &mut scratch.d_attn,
                    WriteMode::Overwrite,
                )?;
            }
            None => {
                let q = quant.for_width(o_width);
                self.o.backward(
                    backend,
                    weights,
                    grads,
                    &acts.attn,
                    d_residual,
                    &mut scratch.d_attn,
                    WriteMode::Overwrite,
                    q,
                )?;
            }
        }
        backend.attention_backward(
            &mut scratch.dq,
            &mut scratch.dk,
            &mut scratch.dv,
            &mut scratch.d_scores,
            &scratch.d_attn,
            &acts.q,
            &acts.k,
            &acts.v,
            &acts.probs,
            self.dims,
        )?;
        backend.rope(&mut scratch.dq, rope_table, self.rope, RopeDirection::Inverse)?;
        let kv_rope = RopeDims {
            n_heads: self.dims.n_kv_heads,
            ..self.rope
        };
        backend.rope(&mut scratch.dk, rope_table, kv_rope, RopeDirection::Inverse)?;
        let width = self.q.in_features;
        backward_shared(
            backend,
            weights,
            grads,
            x,
            [&self.q, &self.k, &self.v],
            [&scratch.dq, &scratch.dk, &scratch.dv],
            dx,
            quant.for_width(width),
        )
    }
}

pub(crate) fn forward_cpu<T: Float>(
    out: &mut [T],
    probs: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    d: AttentionDims,
    precision: MatmulPrecision,
) {
    let (t, nh, hd) = (d.seq_len, d.n_heads, d.head_dim);
    let group = nh / d.n_kv_heads;
    let (qd, kvd) = (d.q_dim(), d.kv_dim());
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    let out_ptr = SendPtr(out.as_mut_ptr());
    probs.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
        let (b, h) = (bh / nh, bh % nh);
        let g = h / group;
        let q0 = &q[b * t * qd + h * hd..];
        let k0 = &k[b * t * kvd + g * hd..];
        let v0 = &v[b * t * kvd + g * hd..];
        for r0 in (0..t).step_by(CAUSAL_TILE) {
            let r1 = (r0 + CAUSAL_TILE).min(t);
            // SAFETY: rows r0..r1 / columns 0..r1 of this head's [t, t] score block; Q rows r0..r1 and K rows
            // 0..r1 lie inside the slices (strides qd/kvd, head offset + hd ≤ row width).
            unsafe {
                gemm_strided_with(
                    precision,
                    r1 - r0,
                    r1,
                    hd,
                    p[r0 * t..].as_mut_ptr(),
                    t as isize,
                    1,
                    false,
                    q0[r0 * qd..].as_ptr(),
                    qd as isize,
                    1,
                    k0.as_ptr(),
                    1,
                    kvd as isize,
                    scale,
                    false,
                );
            }
        }
        for (i, row) in p.chunks_mut(t).enumerate() {
            let (live, masked) = row.split_at_mut(i + 1);
            let max = live.iter().fold(live[0], |m, &x| m.max(x));
            let mut sum = T::ZERO;
            for x in live.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = T::ONE / sum;
            live.iter_mut().for_each(|x| *x *= inv);
            masked.iter_mut().for_each(|x| *x = T::ZERO);
        }
        for r0 in (0..t).step_by(CAUSAL_TILE) {
            let r1 = (r0 + CAUSAL_TILE).min(t);
            // SAFETY: output rows r0..r1 of head h in sequence b: columns h·hd..(h+1)·hd of rows
            // (b·t + r)·qd — disjoint from every other (b, h) task; V rows 0..r1 are in bounds.
            unsafe {
                gemm_strided_with(
                    precision,
                    r1 - r0,
                    hd,
                    r1,
                    out_ptr.get().add((b * t + r0) * qd + h * hd),
                    qd as isize,
                    1,
                    false,
                    p[r0 * t..].as_ptr(),
                    t as isize,
                    1,
                    v0.as_ptr(),
                    kvd as isize,
                    1,
                    T::ONE,
                    false,
                );
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_cpu<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    scratch: &mut [T],
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    d: AttentionDims,
    precision: MatmulPrecision,
) {
    let (t, nh, nkv, hd) = (d.seq_len, d.n_heads, d.n_kv_heads, d.head_dim);
    let group = nh / nkv;
    let (qd, kvd) = (d.q_dim(), d.kv_dim());
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    let scratch_ptr = SendPtr(scratch.as_mut_ptr());
    // One task per (sequence, KV head): the group's query heads all add into the same dK/dV rows, so they run
    // one after another inside the task.
    (0..d.batch * nkv).into_par_iter().for_each(|bg| {
        let (b, g) = (bg / nkv, bg % nkv);
        let kv_off = b * t * kvd + g * hd;
        let (k0, v0) = (&k[kv_off..], &v[kv_off..]);
        for i in 0..group {
            let h = g * group + i;
            let q_off = b * t * qd + h * hd;
            let (q0, do0) = (&q[q_off..], &dout[q_off..]);
            let p = &probs[(b * nh + h) * t * t..(b * nh + h + 1) * t * t];
            let accumulate_kv = i > 0;
            // SAFETY: this task exclusively owns the [t, t] scratch block of (b, h), the dQ columns of head h
            // and the dK/dV columns of KV head g in sequence b; all index ranges stay inside the buffers.
            unsafe {
                let ds = std::slice::from_raw_parts_mut(scratch_ptr.get().add((b * nh + h) * t * t), t * t);
                // dV_g (+)= Pᵀ·dO_h, tiled over key rows s0..s1: only query rows t' ≥ s0 contribute.
                for s0 in (0..t).step_by(CAUSAL_TILE) {
                    let s1 = (s0 + CAUSAL_TILE).min(t);
                    gemm_strided_with(
                        precision,
                        s1 - s0,
                        hd,
                        t - s0,
                        dv_ptr.get().add(kv_off + s0 * kvd),
                        kvd as isize,
                        1,
                        accumulate_kv,
                        p[s0 * t + s0..].as_ptr(),
                        1,
                        t as isize,
                        do0[s0 * qd..].as_ptr(),
                        qd as isize,
                        1,
                        T::ONE,
                        false,
                    );
                }
                // dP = dO_h·V_gᵀ on the causal part.
                for r0 in (0..t).step_by(CAUSAL_TILE) {
                    let r1 = (r0 + CAUSAL_TILE).min(t);
                    gemm_strided_with(
                        precision,
                        r1 - r0,
                        r1,
                        hd,
                        ds[r0 * t..].as_mut_ptr(),
                        t as isize,
                        1,
                        false,
                        do0[r0 * qd..].as_ptr(),
                        qd as isize,
                        1,
                        v0.as_ptr(),
                        1,
                        kvd as isize,
                        T::ONE,
                        false,
                    );
                }
                // dS = P ⊙ (dP − Σ P⊙dP), zero above the diagonal.
                for (row, (ds_row, p_row)) in ds.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                    let live = row + 1;
                    let dot: T = ds_row[..live].iter().zip(&p_row[..live]).map(|(&a, &b)| a * b).sum();
                    for (x, &pv) in ds_row[..live].iter_mut().zip(&p_row[..live]) {
                        *x = pv * (*x - dot);
                    }
                    ds_row[live..].iter_mut().for_each(|x| *x = T::ZERO);
                }
                // dQ_h = scale·dS·K_g (causal: row tile r reads keys 0..r1).
                for r0 in (0..t).step_by(CAUSAL_TILE) {
                    let r1 = (r0 + CAUSAL_TILE).min(t);
                    gemm_strided_with(
                        precision,
                        r1 - r0,
                        hd,
                        r1,
                        dq_ptr.get().add(q_off + r0 * qd),
                        qd as isize,
                        1,
                        false,
                        ds[r0 * t..].as_ptr(),
                        t as isize,
                        1,
                        k0.as_ptr(),
                        kvd as isize,
                        1,
                        scale,
                        false,
                    );
                }
                // dK_g (+)= scale·dSᵀ·Q_h.
                for s0 in (0..t).step_by(CAUSAL_TILE) {
                    let s1 = (s0 + CAUSAL_TILE).min(t);
                    gemm_strided_with(
                        precision,
                        s1 - s0,
                        hd,
                        t - s0,
                        dk_ptr.get().add(kv_off + s0 * kvd),
                        kvd as isize,
                        1,
                        accumulate_kv,
                        ds[s0 * t + s0..].as_ptr(),
                        1,
                        t as isize,
                        q0[s0 * qd..].as_ptr(),
                        qd as isize,
                        1,
                        scale,
                        false,
                    );
                }
            }
        }
    });
}
