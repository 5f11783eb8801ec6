//! Weight quantizers: how a linear layer's latent weight `W` becomes the effective weight `Ŵ` the forward pass
//! computes with, and how the gradient `∂L/∂Ŵ` the backward pass produces becomes `∂L/∂W`.
//!
//! Three kinds, chosen per model ([`WeightQuantizer`]) and applied to every linear layer inside the blocks
//! (embeddings, norms and the head stay full precision):
//!
//! * [`WeightQuantizer::None`]: `Ŵ = W` (the teacher, gradient checks, Hessian traces).
//! * [`WeightQuantizer::Ste`]: BitNet b1.58's absmean ternary `Ŵ = clamp(round(W/a), −1, 1)·a`,
//!   `a = max(mean|W|, 1e-5)` over each scale group, with the straight-through estimator: `∂L/∂W = ∂L/∂Ŵ`
//!   (PyTorch's `W + (Ŵ − W).detach()`, so nothing flows through `a`). See [`hard`].
//! * [`WeightQuantizer::Soft`]: Hestia's differentiable relaxation `Ŵ = (1 − λ)·W + λ·a·σ_T(W/a)`, with the
//!   gradient flowing through `σ_T` *and* the scale `a`; per-tensor temperature `T` and pressure `λ` are state that
//!   the training loop sets every step ([`SoftState`], from [`schedule`]). At `T = 0` it is the STE quantizer.
//!   See [`soft`].
//!
//! Every kind has the same two backend kernels on every device: a forward (`W → Ŵ`) and a backward
//! (`∂L/∂Ŵ → ∂L/∂W`, in place on the gradient buffer). The linear layers accumulate `∂L/∂Ŵ` into the parameter's
//! gradient over all micro-batches; because the quantizer's Jacobian is fixed within a step, one in-place backward
//! per step ([`Transformer::finish_gradients`](crate::engine::Transformer::finish_gradients)) gives the exact
//! `∂L/∂W` of the summed loss.

pub mod hard;
pub mod integer;
pub mod schedule;
pub mod soft;
pub mod state;

use serde::{Deserialize, Serialize};

use super::error::{EngineError, EngineResult};

/// Lower bound of the absmean weight scale and the absmax activation range (BitNet's `clamp_(min=1e-5)`).
pub use tern_format::numerics::QUANT_EPS;

/// Which quantizer the model's linear layers train with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightQuantizer {
    None,
    Ste,
    Soft,
}

/// The stored precision of one linear weight. Ternary follows the model's [`WeightQuantizer`]; the integer
/// precisions (Hessian-aware mixed precision keeps sensitive tensors there) train with their own
/// straight-through fake quantizer, exactly the `.tern` format's int8-per-row and int4-per-group encoders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinearPrecision {
    Ternary,
    /// Symmetric int4 with one absmax scale per `G` weights of a row.
    Int4 {
        group: u32,
    },
    /// Symmetric int8 with one absmax scale per row.
    Int8,
}

/// Which weights share one absmean scale `a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleGroups {
    /// One scale per tensor (BitNet b1.58).
    PerTensor,
    /// One scale per output row.
    PerRow,
    /// One scale per run of `G` consecutive weights of a row (`G` divides the row length).
    Group(usize),
}

impl ScaleGroups {
    /// Length of one contiguous scale group in a row-major `[rows, cols]` tensor.
    pub fn group_len(self, rows: usize, cols: usize) -> EngineResult<usize> {
        match self {
            Self::PerTensor => Ok(rows * cols),
            Self::PerRow => Ok(cols),
            Self::Group(g) if g > 0 && cols % g == 0 => Ok(g),
            Self::Group(g) => Err(EngineError::Config(format!(
                "scale group size {g} does not divide the row length {cols}"
            ))),
        }
    }
}

/// The soft quantizer's state for one tensor at one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftState {
    /// `T ≥ 0`; `0` is the hard quantizer with a straight-through gradient.
    pub temperature: f64,
    /// `λ ∈ [0, 1]`: `0` computes with the latent weights, `1` with the soft-quantized ones.
    pub pressure: f64,
}

impl SoftState {
    /// Fully hardened: the STE quantizer.
    pub const HARD: Self = Self {
        temperature: 0.0,
        pressure: 1.0,
    };

    pub fn validate(&self) -> EngineResult<()> {
        if self.temperature.is_finite() && self.temperature >= 0.0 && (0.0..=1.0).contains(&self.pressure) {
            Ok(())
        } else {
            Err(EngineError::Config(format!(
                "soft quantizer state needs a finite T >= 0 and pressure in [0, 1], got {self:?}"
            )))
        }
    }
}
