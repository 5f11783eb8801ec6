//! Gated MLP: `down(sub_norm?(act(x·W_gateᵀ) ⊙ x·W_upᵀ))`.
//!
//! Activations: SwiGLU `silu(g)·u` (Llama) with `silu'(g) = σ(g)·(1 + g·(1 − σ(g)))`, and BitNet's gated
//! squared ReLU `relu(g)²·u` with derivative `2·relu(g)`. BitNet also normalises the product before the down
//! projection (its `ffn_sub_norm`).

use super::linear::{backward_shared, forward_shared, Linear};
use super::rmsnorm::RmsNorm;
use super::{QuantScratch, Weights};
use crate::engine::backend::{Backend, GatedActivation, WriteMode};
use crate::engine::error::EngineResult;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GatedMlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub sub_norm: Option<RmsNorm>,
    pub activation: GatedActivation,
    /// Tokens per pass (`batch · seq_len`).
    pub rows: usize,
}

/// Saved by the forward pass.
pub struct MlpActivations<B: Backend> {
    pub gate: B::Buf,
    pub up: B::Buf,
    /// `act(gate) ⊙ up`.
    pub hidden: B::Buf,
    /// Sub-norm output and `rstd` (empty without a sub-norm).
    pub sub_out: B::Buf,
    pub sub_rstd: B::Buf,
}

impl<B: Backend> MlpActivations<B> {
    pub fn new(backend: &B, block: &GatedMlp) -> EngineResult<Self> {
        let (rows, ffn) = (block.rows, block.gate.out_features);
        let sub = block.sub_norm.is_some();
        Ok(Self {
            gate: backend.alloc(rows * ffn)?,
            up: backend.alloc(rows * ffn)?,
            hidden: backend.alloc(rows * ffn)?,
            sub_out: backend.alloc(if sub { rows * ffn } else { 0 })?,
            sub_rstd: backend.alloc(if sub { rows } else { 0 })?,
        })
    }
}

/// Backward-only gradient buffers, shared by all layers.
pub struct MlpScratch<B: Backend> {
    pub d_hidden: B::Buf,
    /// Gradient w.r.t. the sub-norm output (empty without a sub-norm).
    pub d_sub: B::Buf,
    pub d_gate: B::Buf,
    pub d_up: B::Buf,
}

impl<B: Backend> MlpScratch<B> {
    pub fn new(backend: &B, block: &GatedMlp) -> EngineResult<Self> {
        let n = block.rows * block.gate.out_features;
        Ok(Self {
            d_hidden: backend.alloc(n)?,
            d_sub: backend.alloc(if block.sub_norm.is_some() { n } else { 0 })?,
            d_gate: backend.alloc(n)?,
            d_up: backend.alloc(n)?,
        })
    }
}

impl GatedMlp {
    /// Elements of [`MlpActivations`], for memory accounting.
    pub fn activation_elements(&self) -> usize {
        let (rows, ffn) = (self.rows, self.gate.out_features);
        3 * rows * ffn + if self.sub_norm.is_some() { rows * (ffn + 1) } else { 0 }
    }

    /// Elements of [`MlpScratch`].
    pub fn scratch_elements(&self) -> usize {
        let n = self.rows * self.gate.out_features;
        3 * n + if self.sub_norm.is_some() { n } else { 0 }
    }

    /// `residual += down(sub_norm?(act(gate(x)) ⊙ up(x)))`; `x` is the normed input.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        x: &B::Buf,
        acts: &mut MlpActivations<B>,
        residual: &mut B::Buf,
        quant: &mut QuantScratch<B>,
    ) -> EngineResult<()> {
        let width = self.gate.in_features;
        forward_shared(
            backend,
            weights,
            x,
            [&self.gate, &self.up],
            [&mut acts.gate, &mut acts.up],
            quant.for_width(width),
        )?;
        backend.gated_forward(&mut acts.hidden, &acts.gate, &acts.up, self.activation)?;
        let down_in = match &self.sub_norm {
            Some(norm) => {
                norm.forward(backend, weights, &acts.hidden, &mut acts.sub_out, &mut acts.sub_rstd)?;
                &acts.sub_out
            }
            None => &acts.hidden,
        };
        let q = quant.for_width(self.down.in_features);
        self.down
            .forward(backend, weights, down_in, residual, WriteMode::Accumulate, q)
    }

    /// Overwrites `dx` with the gradient w.r.t. the normed input, given the residual-stream gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        grads: &mut [B::Buf],
        x: &B::Buf,
        acts: &MlpActivations<B>,
        d_residual: &B::Buf,
        dx: &mut B::Buf,
        scratch: &mut MlpScratch<B>,
        quant: &mut QuantScratch<B>,
    ) -> EngineResult<()> {
        let down_width = self.down.in_features;
        match &self.sub_norm {
            Some(norm) => {
                let q = quant.for_width(down_width);
                let down = &self.down;
                down.backward(
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
                    &acts.hidden,
                    &acts.sub_rstd,
                    &scratch.d_sub,
                    &mut scratch.d_hidden,
                    WriteMode::Overwrite,
                )?;
            }
            None => {
                let q = quant.for_width(down_width);
                let down = &self.down;
                down.backward(
                    backend,
                    weights,
                    grads,
                    &acts.hidden,
                    d_residual,
                    &mut scratch.d_hidden,
                    WriteMode::Overwrite,
                    q,
                )?;
            }
        }
        backend.gated_backward(
            &mut scratch.d_gate,
            &mut scratch.d_up,
            &scratch.d_hidden,
            &acts.gate,
            &acts.up,
            self.activation,
        )?;
        let width = self.gate.in_features;
        backward_shared(
            backend,
            weights,
            grads,
            x,
            [&self.gate, &self.up],
            [&scratch.d_gate, &scratch.d_up],
            dx,
            quant.for_width(width),
        )
    }
}
