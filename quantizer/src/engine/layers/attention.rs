//! Grouped-query causal self-attention.
//!
//! Per sequence `b` and query head `h` (KV head `g = h / (H/H_kv)`), with `scale = 1/sqrt(d)`:
//! forward `S = scale·Q_h·K_gᵀ`, `P = softmax(S)` over positions `s ≤ t`, `O_h = P·V_g`;
//! backward `dV_g += Pᵀ·dO_h`, `dP = dO_h·V_gᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
//! `dQ_h = scale·dS·K_g`, `dK_g += scale·dSᵀ·Q_h` — the KV gradients sum over the heads of a group.
//!
//! [`SelfAttention`] is the whole sub-block: Q/K/V projections, RoPE, the attention core, BitNet's optional
//! sub-norm and the output projection, which adds into the residual stream.

use super::linear::{backward_shared, forward_shared, Linear};
use super::rmsnorm::RmsNorm;
use super::{QuantScratch, Weights};
use crate::engine::backend::{AttentionDims, Backend, RopeDims, RopeDirection, WriteMode};
use crate::engine::error::EngineResult;

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
    /// What the backend's attention saves for its backward ([`Backend::attention_saved_len`]): the
    /// probabilities on the CPU, the log-sum-exp of each score row on CUDA.
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
            probs: backend.alloc(backend.attention_saved_len(&d))?,
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
            d_scores: backend.alloc(backend.attention_scratch_len(&d))?,
        })
    }
}

impl SelfAttention {
    /// Elements of [`AttentionActivations`], for memory accounting (with the CPU's saved probabilities: a
    /// flash-attention backend holds less).
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
            &acts.attn,
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
