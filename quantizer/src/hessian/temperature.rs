//! Hestia's temperature scales from Hessian traces:
//! `z_i = (log χ_i − μ)/σ` over all tensors, `s_i = sigmoid(κ·z_i)`, `scale_i = exp(−α·s_i)`. A larger trace gives
//! a lower temperature (the tensor hardens earlier relative to its neighbours); with `α = 0` every scale is 1.
//!
//! Traces estimated from few probes can be small or even negative for low-curvature tensors (the loss Hessian is
//! indefinite): the logarithm is taken of `max(χ_i, floor)` with `floor = 1e-6·max_j χ_j`, which puts such tensors
//! at the bottom of the ranking instead of failing.

use super::{HessianError, TraceTable};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TemperatureScaleOptions {
    pub alpha: f64,
    pub kappa: f64,
    /// Divide each trace by the tensor's parameter count first (HAWQ-V2's average trace).
    pub per_parameter: bool,
}

/// Relative floor of the traces before the logarithm.
pub const TRACE_FLOOR: f64 = 1e-6;

/// One scale per entry of `table`, in its order.
pub fn temperature_scales(table: &TraceTable, opts: &TemperatureScaleOptions) -> Result<Vec<f64>, HessianError> {
    if table.entries.is_empty() {
        return Err(HessianError::NoTernaryLayers);
    }
    let values: Vec<f64> = table
        .entries
        .iter()
        .map(|e| if opts.per_parameter { e.per_parameter() } else { e.trace })
        .collect();
    if let Some((e, v)) = table.entries.iter().zip(&values).find(|(_, v)| !v.is_finite()) {
        return Err(HessianError::NonFinite {
            tensor: e.name.clone(),
            value: *v,
        });
    }
    if opts.alpha == 0.0 {
        return Ok(vec![1.0; values.len()]);
    }
    let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max <= 0.0 {
        return Err(HessianError::NoPositiveTrace);
    }
    let floor = TRACE_FLOOR * max;
    let logs: Vec<f64> = values.iter().map(|v| v.max(floor).ln()).collect();
    let n = logs.len() as f64;
    let mu = logs.iter().sum::<f64>() / n;
    let var = logs.iter().map(|l| (l - mu) * (l - mu)).sum::<f64>() / n;
    let sigma = var.sqrt();
    Ok(logs
        .iter()
        .map(|l| {
            let z = if sigma > 0.0 { (l - mu) / sigma } else { 0.0 };
            let s = 1.0 / (1.0 + (-opts.kappa * z).exp());
            (-opts.alpha * s).exp()
        })
        .collect())
}
