//! AdamW with learning-rate schedules and global-norm gradient clipping.
//!
//! The parameters are the f32 master weights (the latent weights of QAT); a reduced-precision backend would
//! keep f32 copies here and cast for compute. Moments `m`, `v` are kept in the backend's element type.
//! Gradient accumulation happens upstream: backward passes accumulate and
//! [`Transformer::train_step`](super::Transformer::train_step) scales each micro-batch's loss by
//! `1/micro_batches`.

use super::backend::{AdamWParams, Backend};
use super::error::{EngineError, EngineResult, NonFiniteSource};
use super::model::{ParamLayout, Parameters};

/// How the learning rate falls in the decay phase of [`LrSchedule::WarmupStableDecay`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecayShape {
    Linear,
    Cosine,
    /// `1 − sqrt(progress)` (MiniCPM's WSD variant).
    OneMinusSqrt,
}

/// Learning rate as a function of the 0-based step. Warmup is linear: step `s < warmup` gets
/// `peak·(s + 1)/warmup`, so the first step already moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    Constant {
        lr: f64,
    },
    /// Linear warmup, then cosine from `peak_lr` to `min_lr` at `total_steps` (and `min_lr` after).
    WarmupCosine {
        peak_lr: f64,
        min_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
    },
    /// Warmup-stable-decay: linear warmup, `peak_lr` until `total_steps − decay_steps`, then decay to `min_lr`.
    WarmupStableDecay {
        peak_lr: f64,
        min_lr: f64,
        warmup_steps: u64,
        decay_steps: u64,
        total_steps: u64,
        shape: DecayShape,
    },
}

impl LrSchedule {
    pub fn lr_at(&self, step: u64) -> f64 {
        let warm = |peak: f64, warmup: u64| peak * (step + 1) as f64 / warmup as f64;
        let progress = |start: u64, len: u64| ((step.saturating_sub(start)) as f64 / len.max(1) as f64).min(1.0);
        let cosine = |peak: f64, min: f64, p: f64| min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        match *self {
            Self::Constant { lr } => lr,
            Self::WarmupCosine {
                peak_lr,
                min_lr,
                warmup_steps,
                total_steps,
            } => {
                if step < warmup_steps {
                    warm(peak_lr, warmup_steps)
                } else {
                    cosine(
                        peak_lr,
                        min_lr,
                        progress(warmup_steps, total_steps.saturating_sub(warmup_steps)),
                    )
                }
            }
            Self::WarmupStableDecay {
                peak_lr,
                min_lr,
                warmup_steps,
                decay_steps,
                total_steps,
                shape,
            } => {
                let decay_start = total_steps.saturating_sub(decay_steps);
                if step < warmup_steps {
                    warm(peak_lr, warmup_steps)
                } else if step < decay_start {
                    peak_lr
                } else {
                    let p = progress(decay_start, decay_steps);
                    match shape {
                        DecayShape::Linear => peak_lr - (peak_lr - min_lr) * p,
                        DecayShape::Cosine => cosine(peak_lr, min_lr, p),
                        DecayShape::OneMinusSqrt => min_lr + (peak_lr - min_lr) * (1.0 - p.sqrt()),
                    }
                }
            }
        }
    }

    pub fn validate(&self) -> EngineResult<()> {
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        let ok = match *self {
            Self::Constant { lr } => finite_nonneg(lr),
            Self::WarmupCosine {
                peak_lr,
                min_lr,
                total_steps,
                warmup_steps,
            } => finite_nonneg(peak_lr) && finite_nonneg(min_lr) && warmup_steps <= total_steps,
            Self::WarmupStableDecay {
                peak_lr,
                min_lr,
                warmup_steps,
                decay_steps,
                total_steps,
                ..
            } => {
                finite_nonneg(peak_lr)
                    && finite_nonneg(min_lr)
                    && warmup_steps.saturating_add(decay_steps) <= total_steps
            }
        };
        if ok {
            Ok(())
        } else {
            Err(EngineError::Config(format!(
                "inconsistent learning-rate schedule {self:?}"
            )))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not norm gains).
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    pub schedule: LrSchedule,
}

impl AdamWConfig {
    /// Hestia's / BitNet's usual settings: betas (0.9, 0.95), eps 1e-8, weight decay 0.01, clip 1.0.
    pub fn new(schedule: LrSchedule) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            schedule,
        }
    }

    pub fn validate(&self) -> EngineResult<()> {
        let unit = |b: f64| (0.0..1.0).contains(&b);
        let ok = unit(self.beta1)
            && unit(self.beta2)
            && self.eps.is_finite()
            && self.eps > 0.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0
            && match self.max_grad_norm {
                Some(c) => c.is_finite() && c > 0.0,
                None => true,
            };
        if !ok {
            return Err(EngineError::Config(format!("invalid AdamW settings {self:?}")));
        }
        self.schedule.validate()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimStepReport {
    /// The 0-based index of the step just taken.
    pub step: u64,
    pub lr: f64,
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Factor the gradients were multiplied by (1 when not clipped).
    pub clip_scale: f64,
}

pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    m: Parameters<B>,
    v: Parameters<B>,
    decays: Vec<bool>,
    /// Steps completed.
    steps: u64,
}

/// `sqrt(Σ g²)` over all gradient tensors, accumulated in f64 (one device synchronisation on a GPU).
pub fn global_grad_norm<B: Backend>(backend: &B, grads: &Parameters<B>) -> EngineResult<f64> {
    let all: Vec<&B::Buf> = grads.tensors.iter().collect();
    Ok(backend.sum_squares_all(&all)?.sqrt())
}

impl<B: Backend> AdamW<B> {
    pub fn new(backend: &B, layout: &ParamLayout, config: AdamWConfig) -> EngineResult<Self> {
        config.validate()?;
        Ok(Self {
            config,
            m: Parameters::zeros(backend, layout)?,
            v: Parameters::zeros(backend, layout)?,
            decays: layout.specs.iter().map(|s| s.decays()).collect(),
            steps: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }
    /// Steps completed so far (the 0-based index of the next step).
    pub fn step_count(&self) -> u64 {
        self.steps
    }
    /// First and second moments (for checkpoints).
    pub fn moments(&self) -> (&Parameters<B>, &Parameters<B>) {
        (&self.m, &self.v)
    }
    /// Restores a checkpointed state.
    pub fn restore(&mut self, m: Parameters<B>, v: Parameters<B>, steps: u64) -> EngineResult<()> {
        if m.tensors.len() != self.decays.len() || v.tensors.len() != self.decays.len() {
            return Err(EngineError::Shape {
                op: "AdamW::restore",
                detail: format!("moments for {} tensors expected", self.decays.len()),
            });
        }
        self.m = m;
        self.v = v;
        self.steps = steps;
        Ok(())
    }

    /// Clips and applies one update. A non-finite gradient norm returns [`EngineError::NonFinite`] and leaves
    /// parameters, moments and the step count untouched.
    pub fn step(
        &mut self,
        backend: &B,
        params: &mut Parameters<B>,
        grads: &Parameters<B>,
    ) -> EngineResult<OptimStepReport> {
        let n = self.decays.len();
        if params.tensors.len() != n || grads.tensors.len() != n {
            return Err(EngineError::Shape {
                op: "AdamW::step",
                detail: format!(
                    "{} parameters and {} gradients for {n} tensors",
                    params.tensors.len(),
                    grads.tensors.len()
                ),
            });
        }
        let step = self.steps;
        let grad_norm = global_grad_norm(backend, grads)?;
        if !grad_norm.is_finite() {
            return Err(EngineError::NonFinite {
                source_kind: NonFiniteSource::GradientNorm,
                value: grad_norm,
                step: Some(step),
            });
        }
        // PyTorch's clip_grad_norm_: coefficient max/(norm + 1e-6), capped at 1.
        let clip_scale = match self.config.max_grad_norm {
            Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        let lr = self.config.schedule.lr_at(step);
        let t = (step + 1) as i32;
        let c = &self.config;
        for i in 0..n {
            let hp = AdamWParams {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: if self.decays[i] { c.weight_decay } else { 0.0 },
                bias_correction1: 1.0 - c.beta1.powi(t),
                bias_correction2: 1.0 - c.beta2.powi(t),
                grad_scale: clip_scale,
            };
            backend.adamw_update(
                &mut params.tensors[i],
                &grads.tensors[i],
                &mut self.m.tensors[i],
                &mut self.v.tensors[i],
                &hp,
            )?;
        }
        self.steps += 1;
        Ok(OptimStepReport {
            step,
            lr,
            grad_norm,
            clip_scale,
        })
    }
}
