//! RMSNorm: `y = x · rstd · w`, `rstd = 1/sqrt(mean(x²) + eps)`, per row.
//!
//! Backward (per row, `r = rstd`, `C` columns):
//! `dx_j = r · (w_j·dy_j − x_j · r²/C · Σ_i dy_i·w_i·x_i)`, `dw_i += Σ_rows dy_i·x_i·r`.

use super::{ParamId, Weights};
use crate::engine::backend::{Backend, WriteMode};
use crate::engine::error::EngineResult;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsNorm {
    pub weight: ParamId,
    pub dim: usize,
    pub eps: f64,
}

impl RmsNorm {
    /// `out = norm(x)`; saves `rstd` (one element per row) for the backward pass.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        x: &B::Buf,
        out: &mut B::Buf,
        rstd: &mut B::Buf,
    ) -> EngineResult<()> {
        backend.rmsnorm_forward(out, rstd, x, weights.latent(self.weight), self.eps)
    }

    /// `dx (+)= ∂/∂x`, `grads[weight] += ∂/∂w`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        grads: &mut [B::Buf],
        x: &B::Buf,
        rstd: &B::Buf,
        dout: &B::Buf,
        dx: &mut B::Buf,
        dx_mode: WriteMode,
    ) -> EngineResult<()> {
        let w = weights.latent(self.weight);
        backend.rmsnorm_backward(dx, &mut grads[self.weight.0], dout, x, w, rstd, dx_mode)
    }
}
