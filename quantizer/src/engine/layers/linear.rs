//! Linear layer `y = x̂·Ŵᵀ` and the output head.
//!
//! The layer computes with the *effective* weight `Ŵ` that the model's weight quantizer made from the latent `W`
//! (see [`crate::engine::quant`]: none, STE, or Hestia's soft relaxation) and, optionally, with per-token int8
//! activations `x̂ = clamp(round(x·a), −128, 127)/a`, `a = 127/max(max|x|, 1e-5)`, whose backward is the
//! straight-through identity (BitNet's `x + (x̂ − x).detach()`). So the backward is `dx = dy·Ŵ` and
//! `∂L/∂Ŵ += dyᵀ·x̂`, accumulated into the weight's gradient buffer; the weight quantizer's own backward then maps
//! `∂L/∂Ŵ` to `∂L/∂W` once per step.
//!
//! `round` is round-half-to-even, like `torch.round`.

use super::{ParamId, Weights};
use crate::engine::backend::{Backend, GemmSpec, WriteMode};
use crate::engine::error::{EngineError, EngineResult};

/// A bias-free linear layer whose weight is `[out_features, in_features]`.
///
/// Whether the *weight* is fake-quantized is decided by the model, which hands in the effective weight through
/// [`Weights::effective`]; the layer itself decides about activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub weight: ParamId,
    pub in_features: usize,
    pub out_features: usize,
    pub quantize_activations: bool,
}

impl Linear {
    fn rows<B: Backend>(&self, backend: &B, x: &B::Buf) -> usize {
        backend.buf_len(x) / self.in_features.max(1)
    }

    /// The matrix the GEMM reads: `x̂` (written into `xq`) under activation quantization, else `x`.
    fn quantized_input<'a, B: Backend>(
        &self,
        backend: &B,
        x: &'a B::Buf,
        xq: Option<&'a mut B::Buf>,
    ) -> EngineResult<&'a B::Buf> {
        if !self.quantize_activations {
            return Ok(x);
        }
        let xq = xq.ok_or_else(|| {
            EngineError::Config("activation quantization needs a scratch buffer for the quantized input".into())
        })?;
        backend.fake_quantize_int8_rows(xq, x, self.in_features)?;
        Ok(xq)
    }

    /// `out (+)= x̂ · Ŵᵀ`. `xq` (`rows · in_features`) is required when activations are quantized.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        x: &B::Buf,
        out: &mut B::Buf,
        mode: WriteMode,
        xq: Option<&mut B::Buf>,
    ) -> EngineResult<()> {
        let input = self.quantized_input(backend, x, xq)?;
        self.forward_from(backend, weights, input, out, mode)
    }

    /// `out (+)= input · Ŵᵀ` with `input` already quantized (or not quantized) as this layer wants it.
    fn forward_from<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        input: &B::Buf,
        out: &mut B::Buf,
        mode: WriteMode,
    ) -> EngineResult<()> {
        let rows = self.rows(backend, input);
        let spec = GemmSpec {
            m: rows,
            n: self.out_features,
            k: self.in_features,
            a_transposed: false,
            b_transposed: true,
            mode,
        };
        backend.matmul(out, input, weights.effective(self.weight), spec)
    }

    /// `dx (+)= dy·Ŵ`, `grads[weight] += dyᵀ·x̂` (= `∂L/∂Ŵ`; `x̂` is recomputed from `x`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        grads: &mut [B::Buf],
        x: &B::Buf,
        dout: &B::Buf,
        dx: &mut B::Buf,
        dx_mode: WriteMode,
        xq: Option<&mut B::Buf>,
    ) -> EngineResult<()> {
        self.input_gradient(backend, weights, dout, dx, dx_mode)?;
        let input = self.quantized_input(backend, x, xq)?;
        self.weight_gradient(backend, grads, input, dout)
    }

    /// `dx (+)= dy·Ŵ`.
    fn input_gradient<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        dout: &B::Buf,
        dx: &mut B::Buf,
        dx_mode: WriteMode,
    ) -> EngineResult<()> {
        let rows = backend.buf_len(dout) / self.out_features.max(1);
        let dx_spec = GemmSpec {
            m: rows,
            n: self.in_features,
            k: self.out_features,
            a_transposed: false,
            b_transposed: false,
            mode: dx_mode,
        };
        backend.matmul(dx, dout, weights.effective(self.weight), dx_spec)
    }

    /// `grads[weight] += dyᵀ·input` (`input` = `x̂`).
    fn weight_gradient<B: Backend>(
        &self,
        backend: &B,
        grads: &mut [B::Buf],
        input: &B::Buf,
        dout: &B::Buf,
    ) -> EngineResult<()> {
        let rows = self.rows(backend, input);
        let dw_spec = GemmSpec {
            m: self.out_features,
            n: self.in_features,
            k: rows,
            a_transposed: true,
            b_transposed: false,
            mode: WriteMode::Accumulate,
        };
        backend.matmul(&mut grads[self.weight.0], dout, input, dw_spec)
    }
}

/// Forward of linear layers that read the same input (Q/K/V, gate/up), overwriting each output: under int8
/// activations the input is quantized once for all of them (the same `x̂` each would compute).
pub fn forward_shared<B: Backend, const N: usize>(
    backend: &B,
    weights: &Weights<'_, B>,
    x: &B::Buf,
    layers: [&Linear; N],
    outs: [&mut B::Buf; N],
    xq: Option<&mut B::Buf>,
) -> EngineResult<()> {
    let Some(first) = layers.first() else {
        return Ok(());
    };
    let input = first.quantized_input(backend, x, xq)?;
    for (layer, out) in layers.iter().zip(outs) {
        layer.forward_from(backend, weights, input, out, WriteMode::Overwrite)?;
    }
    Ok(())
}

/// Backward of [`forward_shared`]: `dx = Σ_i dy_i·Ŵ_i` (overwritten), `grads[W_i] += dy_iᵀ·x̂` with `x̂` quantized
/// once. Summation order as the layer-by-layer backward (first layer overwrites, the others add), so the result
/// is bit-identical to it.
#[allow(clippy::too_many_arguments)]
pub fn backward_shared<B: Backend, const N: usize>(
    backend: &B,
    weights: &Weights<'_, B>,
    grads: &mut [B::Buf],
    x: &B::Buf,
    layers: [&Linear; N],
    douts: [&B::Buf; N],
    dx: &mut B::Buf,
    xq: Option<&mut B::Buf>,
) -> EngineResult<()> {
    for (i, (layer, dout)) in layers.iter().zip(douts.iter()).enumerate() {
        let mode = if i == 0 {
            WriteMode::Overwrite
        } else {
            WriteMode::Accumulate
        };
        layer.input_gradient(backend, weights, dout, dx, mode)?;
    }
    let Some(first) = layers.first() else {
        return Ok(());
    };
    let input = first.quantized_input(backend, x, xq)?;
    for (layer, dout) in layers.iter().zip(douts) {
        layer.weight_gradient(backend, grads, input, dout)?;
    }
    Ok(())
}

/// Output head `logits = x · Wᵀ`, full precision (BitNet keeps it so). `W` is `[vocab, hidden]`: the token
/// embedding when tied, in which case both uses accumulate into the same gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputHead {
    pub weight: ParamId,
    pub hidden: usize,
    pub vocab: usize,
}

impl OutputHead {
    fn as_linear(&self) -> Linear {
        Linear {
            weight: self.weight,
            in_features: self.hidden,
            out_features: self.vocab,
            quantize_activations: false,
        }
    }

    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        x: &B::Buf,
        logits: &mut B::Buf,
    ) -> EngineResult<()> {
        // The latent (never quantized) weight, whatever the model's quantization settings.
        let latent_only = Weights::new(weights.latent_all(), &[]);
        self.as_linear()
            .forward(backend, &latent_only, x, logits, WriteMode::Overwrite, None)
    }

    /// `dx = dlogits·W` (overwritten), `grads[weight] += dlogitsᵀ·x`.
    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        grads: &mut [B::Buf],
        x: &B::Buf,
        dlogits: &B::Buf,
        dx: &mut B::Buf,
    ) -> EngineResult<()> {
        let latent_only = Weights::new(weights.latent_all(), &[]);
        self.as_linear()
            .backward(backend, &latent_only, grads, x, dlogits, dx, WriteMode::Overwrite, None)
    }
}
