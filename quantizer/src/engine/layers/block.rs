//! One transformer layer (pre-norm, two residual branches):
//! `x_mid = x + attention(attn_norm(x))`, `x_out = x_mid + mlp(ffn_norm(x_mid))`.

use super::attention::{AttentionActivations, AttentionScratch, SelfAttention};
use super::mlp::{GatedMlp, MlpActivations, MlpScratch};
use super::rmsnorm::RmsNorm;
use super::{QuantScratch, Weights};
use crate::engine::backend::{Backend, WriteMode};
use crate::engine::error::EngineResult;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformerBlock {
    pub attn_norm: RmsNorm,
    pub attention: SelfAttention,
    pub ffn_norm: RmsNorm,
    pub mlp: GatedMlp,
}

/// Everything a layer's backward pass reads, except the layer input (kept by the model in its residual list).
pub struct BlockActivations<B: Backend> {
    pub attn_norm_out: B::Buf,
    pub attn_norm_rstd: B::Buf,
    pub attention: AttentionActivations<B>,
    /// Residual stream between the two branches.
    pub x_mid: B::Buf,
    pub ffn_norm_out: B::Buf,
    pub ffn_norm_rstd: B::Buf,
    pub mlp: MlpActivations<B>,
}

impl<B: Backend> BlockActivations<B> {
    pub fn new(backend: &B, block: &TransformerBlock) -> EngineResult<Self> {
        let rows = block.mlp.rows;
        let hidden = block.attn_norm.dim;
        Ok(Self {
            attn_norm_out: backend.alloc(rows * hidden)?,
            attn_norm_rstd: backend.alloc(rows)?,
            attention: AttentionActivations::new(backend, &block.attention)?,
            x_mid: backend.alloc(rows * hidden)?,
            ffn_norm_out: backend.alloc(rows * hidden)?,
            ffn_norm_rstd: backend.alloc(rows)?,
            mlp: MlpActivations::new(backend, &block.mlp)?,
        })
    }
}

/// Backward-only buffers, shared by all layers.
pub struct BlockScratch<B: Backend> {
    /// Gradient w.r.t. a norm's output (the branch input).
    pub d_norm_out: B::Buf,
    pub attention: AttentionScratch<B>,
    pub mlp: MlpScratch<B>,
}

impl<B: Backend> BlockScratch<B> {
    pub fn new(backend: &B, block: &TransformerBlock) -> EngineResult<Self> {
        Ok(Self {
            d_norm_out: backend.alloc(block.mlp.rows * block.attn_norm.dim)?,
            attention: AttentionScratch::new(backend, &block.attention)?,
            mlp: MlpScratch::new(backend, &block.mlp)?,
        })
    }
}

impl TransformerBlock {
    /// Elements of [`BlockActivations`], for memory accounting.
    pub fn activation_elements(&self) -> usize {
        self.mlp.rows * (3 * self.attn_norm.dim + 2)
            + self.attention.activation_elements()
            + self.mlp.activation_elements()
    }

    /// Elements of [`BlockScratch`].
    pub fn scratch_elements(&self) -> usize {
        self.mlp.rows * self.attn_norm.dim + self.attention.scratch_elements() + self.mlp.scratch_elements()
    }

    /// Computes `x_out` from `x_in`, saving activations in `acts`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        rope_table: &B::Buf,
        x_in: &B::Buf,
        acts: &mut BlockActivations<B>,
        x_out: &mut B::Buf,
        quant: &mut QuantScratch<B>,
    ) -> EngineResult<()> {
        self.attn_norm.forward(
            backend,
            weights,
            x_in,
            &mut acts.attn_norm_out,
            &mut acts.attn_norm_rstd,
        )?;
        backend.copy(&mut acts.x_mid, x_in)?;
        self.attention.forward(
            backend,
            weights,
            &acts.attn_norm_out,
            rope_table,
            &mut acts.attention,
            &mut acts.x_mid,
            quant,
        )?;
        self.ffn_norm.forward(
            backend,
            weights,
            &acts.x_mid,
            &mut acts.ffn_norm_out,
            &mut acts.ffn_norm_rstd,
        )?;
        backend.copy(x_out, &acts.x_mid)?;
        self.mlp
            .forward(backend, weights, &acts.ffn_norm_out, &mut acts.mlp, x_out, quant)
    }

    /// On entry `d_residual` holds `∂L/∂x_out`; on exit `∂L/∂x_in`. Parameter gradients accumulate.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        grads: &mut [B::Buf],
        rope_table: &B::Buf,
        x_in: &B::Buf,
        acts: &BlockActivations<B>,
        d_residual: &mut B::Buf,
        scratch: &mut BlockScratch<B>,
        quant: &mut QuantScratch<B>,
    ) -> EngineResult<()> {
        self.mlp.backward(
            backend,
            weights,
            grads,
            &acts.ffn_norm_out,
            &acts.mlp,
            d_residual,
            &mut scratch.d_norm_out,
            &mut scratch.mlp,
            quant,
        )?;
        self.ffn_norm.backward(
            backend,
            weights,
            grads,
            &acts.x_mid,
            &acts.ffn_norm_rstd,
            &scratch.d_norm_out,
            d_residual,
            WriteMode::Accumulate,
        )?;
        self.attention.backward(
            backend,
            weights,
            grads,
            &acts.attn_norm_out,
            rope_table,
            &acts.attention,
            d_residual,
            &mut scratch.d_norm_out,
            &mut scratch.attention,
            quant,
        )?;
        self.attn_norm.backward(
            backend,
            weights,
            grads,
            x_in,
            &acts.attn_norm_rstd,
            &scratch.d_norm_out,
            d_residual,
            WriteMode::Accumulate,
        )
    }
}
