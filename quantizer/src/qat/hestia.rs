//! Hestia's temperature control during training: the schedule ([`HestiaSchedule`]) and each tensor's Hessian
//! temperature scale, applied to a model's soft quantizers before every step.
//!
//! Where tern follows or departs from Hestia's public code (see `../shared/notes/REFERENCE.md`):
//! * the relaxation, `T0`, the pressure ramp (ρ = 0.2) and the scale formula `exp(−α·sigmoid(κ·z))` follow it;
//! * the default temperature style is [`TemperatureStyle::Hessian`] (the scale acts through the anneal), not the
//!   reference configs' `cosine` quirk, which is available as [`TemperatureStyle::Reference`];
//! * α defaults to 0.4, the best value of the reference's ablation (its configs use 0.5).

use serde::{Deserialize, Serialize};

use crate::engine::quant::schedule::{base_temperature, AnnealShape, HestiaSchedule, TemperatureStyle};
use crate::engine::{EngineResult, ParamId, SoftState};

/// User-facing Hestia settings (serialised into checkpoints as part of the run's config).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HestiaOptions {
    /// Fraction of the steps over which the pressure ramps (ρ).
    pub rho: f64,
    pub anneal: AnnealShape,
    pub style: TemperatureStyle,
    /// Strength of the Hessian term (α; 0 disables it: every scale is 1).
    pub alpha: f64,
    /// Sharpness of the sigmoid (κ).
    pub kappa: f64,
    /// Normalise each trace by the tensor's parameter count before the log (HAWQ-V2's average trace).
    pub per_parameter: bool,
}

impl Default for HestiaOptions {
    fn default() -> Self {
        Self {
            rho: 0.2,
            anneal: AnnealShape::Cosine,
            style: TemperatureStyle::Hessian,
            alpha: 0.4,
            kappa: 1.0,
            per_parameter: false,
        }
    }
}

impl HestiaOptions {
    pub fn validate(&self) -> Result<(), String> {
        let ok = (0.0..=1.0).contains(&self.rho) && self.alpha.is_finite() && self.kappa.is_finite();
        if ok {
            Ok(())
        } else {
            Err(format!(
                "Hestia needs rho in [0, 1] and finite alpha and kappa, got {self:?}"
            ))
        }
    }
}

/// Applies the schedule to the soft quantizers of a model, tensor by tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TemperatureControl {
    pub schedule: HestiaSchedule,
    /// `(tensor, Hessian temperature scale)` for every soft-quantized tensor.
    pub scales: Vec<(ParamId, f64)>,
}

impl TemperatureControl {
    /// `T0` is solved for here (it is the same for every run, a fraction of a millisecond).
    pub fn new(options: &HestiaOptions, total_steps: u64, scales: Vec<(ParamId, f64)>) -> EngineResult<Self> {
        let schedule = HestiaSchedule {
            total_steps,
            rho: options.rho,
            base_temperature: base_temperature(),
            anneal: options.anneal,
            style: options.style,
        };
        schedule.validate()?;
        Ok(Self { schedule, scales })
    }

    /// The state of every tensor at 0-based step `step`.
    pub fn states(&self, step: u64) -> impl Iterator<Item = (ParamId, SoftState)> + '_ {
        self.scales
            .iter()
            .map(move |&(id, scale)| (id, self.schedule.state(step, scale)))
    }

    /// Sets every tensor's state for `step` through `set`.
    pub fn apply(&self, step: u64, mut set: impl FnMut(ParamId, SoftState) -> EngineResult<()>) -> EngineResult<()> {
        for (id, state) in self.states(step) {
            set(id, state)?;
        }
        Ok(())
    }
}
