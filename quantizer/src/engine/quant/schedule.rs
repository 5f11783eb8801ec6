//! Hestia's schedules: the base temperature `T0`, the pressure ramp and the temperature anneal.
//!
//! * `T0 = argmin_{T ∈ [0.1, 2]} E[(σ_T(z) − z)²]` for `z ~ N(0, π/2)` (so `E|z| = 1`, the absmean-normalised
//!   weight of a Gaussian tensor): the temperature at which the soft quantizer disturbs the weights least at the
//!   start. Computed by [`base_temperature`] (≈ 0.351), never hard-coded.
//! * Pressure `λ(s) = min(1, s / (ρ·S))` over the first `ρ·S` of `S` steps (`s` is the 0-based step).
//! * Temperature: `T0·c_i` (`c_i` the tensor's Hessian scale) while the pressure ramps, then annealed to 0 over
//!   the remaining steps with progress `p = (s − ρS)/((1 − ρ)S)`: cosine `½(1 + cos πp)` or linear `1 − p` times
//!   the starting temperature. The reference code's default `cosine` style starts the anneal from the *unscaled*
//!   `T0` (the Hessian scale only acts during the pressure phase, and the temperature jumps at the boundary):
//!   [`TemperatureStyle::Reference`]. [`TemperatureStyle::Hessian`] starts it from `T0·c_i`, so the scale acts for
//!   the whole run and the temperature is continuous; it is tern's default because the Hessian term is the point
//!   of the method and a jump at 20% of training serves no purpose.

use serde::{Deserialize, Serialize};

use super::soft::soft_code;
use super::SoftState;
use crate::engine::error::{EngineError, EngineResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnealShape {
    Cosine,
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TemperatureStyle {
    /// The Hessian scale applies only while the pressure ramps; the anneal starts from `T0` (Hestia's code).
    Reference,
    /// The anneal starts from `T0·c_i`.
    Hessian,
}

/// `E[(σ_T(z) − z)²]` for `z ~ N(0, π/2)`, by composite Simpson integration over `[0, 12·sd]` (the integrand is
/// even) with 4,000 intervals: the integrand is smooth for `T ≥ 0.1`, and the result is accurate to ~1e-12.
pub fn soft_quantization_error(temperature: f64) -> f64 {
    let sd = (std::f64::consts::PI / 2.0).sqrt();
    let upper = 12.0 * sd;
    let n = 4000;
    let h = upper / n as f64;
    let f = |z: f64| {
        let (s, _) = soft_code(z, temperature);
        let density = (-(z * z) / (2.0 * sd * sd)).exp() / (sd * (2.0 * std::f64::consts::PI).sqrt());
        (s - z) * (s - z) * density
    };
    let mut sum = f(0.0) + f(upper);
    for i in 1..n {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += w * f(i as f64 * h);
    }
    2.0 * sum * h / 3.0
}

/// Hestia's `T0`: the minimiser of [`soft_quantization_error`] over `[0.1, 2]`, by a coarse scan (step 0.01, which
/// brackets the global minimum) refined by golden-section search to 1e-10.
pub fn base_temperature() -> f64 {
    let (lo, hi) = (0.1f64, 2.0f64);
    let steps = 190;
    let mut best = (lo, soft_quantization_error(lo));
    for i in 1..=steps {
        let t = lo + (hi - lo) * i as f64 / steps as f64;
        let e = soft_quantization_error(t);
        if e < best.1 {
            best = (t, e);
        }
    }
    let step = (hi - lo) / steps as f64;
    let (mut a, mut b) = ((best.0 - step).max(lo), (best.0 + step).min(hi));
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - phi * (b - a);
    let mut d = a + phi * (b - a);
    let (mut fc, mut fd) = (soft_quantization_error(c), soft_quantization_error(d));
    while b - a > 1e-10 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - phi * (b - a);
            fc = soft_quantization_error(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + phi * (b - a);
            fd = soft_quantization_error(d);
        }
    }
    (a + b) / 2.0
}

/// Pressure ramp and temperature anneal of a Hestia run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HestiaSchedule {
    /// Optimizer steps of the run (`S`).
    pub total_steps: u64,
    /// Fraction of the run over which the pressure ramps and the temperature is held (`ρ`, default 0.2).
    pub rho: f64,
    /// Base temperature (`T0`, from [`base_temperature`]).
    pub base_temperature: f64,
    pub anneal: AnnealShape,
    pub style: TemperatureStyle,
}

impl HestiaSchedule {
    pub fn validate(&self) -> EngineResult<()> {
        if self.total_steps == 0
            || !(0.0..=1.0).contains(&self.rho)
            || !(self.base_temperature.is_finite() && self.base_temperature > 0.0)
        {
            return Err(EngineError::Config(format!(
                "Hestia schedule needs steps > 0, rho in [0, 1] and T0 > 0, got {self:?}"
            )));
        }
        Ok(())
    }

    /// Steps of the pressure phase (`ρ·S`, as a real number).
    fn pressure_steps(&self) -> f64 {
        self.rho * self.total_steps as f64
    }

    /// Pressure at 0-based step `step`.
    pub fn pressure(&self, step: u64) -> f64 {
        let ramp = self.pressure_steps();
        if ramp <= 0.0 {
            1.0
        } else {
            (step as f64 / ramp).min(1.0)
        }
    }

    /// Soft-quantizer state of a tensor with Hessian scale `scale` at 0-based step `step`.
    pub fn state(&self, step: u64, scale: f64) -> SoftState {
        let ramp = self.pressure_steps();
        let s = step as f64;
        let held = self.base_temperature * scale;
        let temperature = if s < ramp {
            held
        } else {
            let start = match self.style {
                TemperatureStyle::Reference => self.base_temperature,
                TemperatureStyle::Hessian => held,
            };
            let span = self.total_steps as f64 - ramp;
            let p = if span <= 0.0 {
                1.0
            } else {
                ((s - ramp) / span).clamp(0.0, 1.0)
            };
            let shape = match self.anneal {
                AnnealShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
                AnnealShape::Linear => 1.0 - p,
            };
            (start * shape).max(0.0)
        };
        SoftState {
            temperature,
            pressure: self.pressure(step),
        }
    }
}
