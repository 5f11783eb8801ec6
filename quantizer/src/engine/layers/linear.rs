//! Linear layer `y = x·Ŵᵀ` with BitNet b1.58 fake quantization, and the output head.
//!
//! Quantization-aware training keeps full-precision *latent* weights `W` and computes with
//! `Ŵ = clamp(round(W/s), −1, 1)·s`, `s = max(mean|W|, 1e-5)` (per tensor), and optionally with per-token int8
//! activations `x̂ = clamp(round(x·a), −128, 127)/a`, `a = 127/max(max|x|, 1e-5)`. Rounding has zero gradient
//! almost everywhere, so BitNet uses the straight-through estimator (`W + (Ŵ − W).detach()` in PyTorch): the
//! backward treats both quantizers as the identity, i.e.
//! `dx = dy·Ŵ` and `dW = dyᵀ·x̂` — the gradient of the quantized computation, handed to the latent tensors.
//! No clipping mask: PyTorch's detach trick passes the gradient even where `clamp` saturates.
//!
//! `round` is round-half-to-even, like `torch.round`.

use rayon::prelude::*;

use super::{ParamId, Weights};
use crate::engine::backend::{Backend, GemmSpec, WriteMode};
use crate::engine::error::{EngineError, EngineResult};
use crate::engine::scalar::Float;

/// Lower bound of the absmean weight scale and the absmax activation range (BitNet's `clamp_(min=1e-5)`).
pub const QUANT_EPS: f64 = 1e-5;

/// Elements per task of the deterministic `mean|W|` reduction.
const REDUCE_CHUNK: usize = 1 << 14;

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
        let rows = self.rows(backend, x);
        let input = self.quantized_input(backend, x, xq)?;
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

    /// Straight-through backward: `dx (+)= dy·Ŵ`, `grads[weight] += dyᵀ·x̂` (`x̂` is recomputed from `x`).
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
        let rows = self.rows(backend, x);
        let dx_spec = GemmSpec {
            m: rows,
            n: self.in_features,
            k: self.out_features,
            a_transposed: false,
            b_transposed: false,
            mode: dx_mode,
        };
        backend.matmul(dx, dout, weights.effective(self.weight), dx_spec)?;
        let input = self.quantized_input(backend, x, xq)?;
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

/// Clamp that lets NaN through (like `torch.clamp`): `f32::max`/`min` would turn a NaN into a bound and hide a
/// diverging run from the non-finite checks.
#[inline(always)]
fn clamp<T: Float>(x: T, lo: T, hi: T) -> T {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

/// `mean|w|` with a fixed chunking (deterministic), accumulated in f64.
pub(crate) fn mean_abs_cpu<T: Float>(w: &[T]) -> f64 {
    if w.is_empty() {
        return 0.0;
    }
    let partials: Vec<f64> = w
        .par_chunks(REDUCE_CHUNK)
        .map(|c| c.iter().map(|v| v.abs().to_f64()).sum::<f64>())
        .collect();
    partials.iter().sum::<f64>() / w.len() as f64
}

/// The absmean scale BitNet b1.58 uses for a weight tensor.
pub fn ternary_scale<T: Float>(w: &[T]) -> f64 {
    mean_abs_cpu(w).max(QUANT_EPS)
}

pub(crate) fn fake_quantize_ternary_cpu<T: Float>(out: &mut [T], w: &[T]) {
    let scale = ternary_scale(w);
    let s = T::from_f64(scale);
    out.par_chunks_mut(REDUCE_CHUNK)
        .zip(w.par_chunks(REDUCE_CHUNK))
        .for_each(|(o, w)| {
            for (o, &w) in o.iter_mut().zip(w) {
                // Divide (not multiply by 1/s): the export (`ptq::ternarize_absmean`) divides, and w·(1/s) can land
                // exactly on a tie that w/s misses, flipping a code between training and the exported file.
                *o = clamp((w / s).round_even(), -T::ONE, T::ONE) * s;
            }
        });
}

pub(crate) fn fake_quantize_int8_rows_cpu<T: Float>(out: &mut [T], x: &[T], cols: usize) {
    let lo = T::from_f64(-128.0);
    let hi = T::from_f64(127.0);
    out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, x)| {
        let absmax = x.iter().fold(T::ZERO, |m, v| m.max(v.abs()));
        let scale = T::from_f64(127.0) / absmax.max(T::from_f64(QUANT_EPS));
        for (o, &x) in o.iter_mut().zip(x) {
            *o = clamp((x * scale).round_even(), lo, hi) / scale;
        }
    });
}
