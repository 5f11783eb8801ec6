//! Quantization-aware training (STE, BitNet b1.58) of a [`SourceModel`] with the engine, and export of the
//! result through the PTQ path.
//!
//! * Model: the engine's [`ParamLayout`] uses GGUF tensor names, so the source tensors map onto it by name
//!   ([`layout_tensors_from_source`]); the trained latent weights map back the same way
//!   ([`trained_source_model`]).
//! * Step: `grad_accum` micro-batches of `batch · seq_len` tokens; each micro-batch's loss is scaled by
//!   `1/grad_accum` so the gradients average; then one AdamW step (global-norm clipping, warmup + cosine or WSD).
//!   With distillation the teacher (the same model, unquantized, frozen) computes its logits for each
//!   micro-batch on the fly.
//! * Safety: a NaN/Inf loss or gradient norm stops the run with [`TrainError::NonFinite`] before the optimizer
//!   touches the weights, and no checkpoint is written after it, so the last checkpoint on disk is the last good
//!   state.
//! * Resume: the weights, AdamW moments and step come from the checkpoint; the data order is a function of the
//!   seed and the number of windows drawn; the engine's kernels are deterministic. So a resumed run continues
//!   bit-for-bit (tested by killing a real `tern quantize`).
//! * Evaluation: held-out cross-entropy of the hard-quantized model (the same forward pass as training, which
//!   computes with the ternarized weights), at step 0 (= absmean PTQ), every `eval_every` steps and at the end.
//! * Export: the latent weights are ternarized by [`crate::ptq::ptq_model`] exactly as `tern convert` does;
//!   [`check_export_matches_engine`] verifies element by element that its codes and scales are the ones the
//!   engine's fake quantization trained with.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    checkpoint_path, latest_checkpoint, list_checkpoints, prune_checkpoints, remove_stale_temp_files, state_json,
    Checkpoint, CheckpointError, CheckpointState, CheckpointTensor,
};
use crate::data::{check_vocab, held_out_batches, train_batch, DataError, DataOrder, Fnv64, HostBatch, PackedData};
use crate::engine::{
    AdamW, AdamWConfig, Backend, Batch, DecayShape, EngineConfig, EngineError, LinearPrecision, LrSchedule,
    NonFiniteSource, Objective, ParamKind, ParamLayout, Parameters, QuantConfig, Recompute, ScaleGroups, SoftState,
    Transformer, WeightQuantizer,
};
use crate::import::source::SourceModel;
use crate::metrics::{
    last_cpu_seconds, process_cpu_seconds, read_metrics, truncate_after, MetricsError, MetricsRecord, MetricsWriter,
    METRICS_FILE,
};
use crate::ptq::{ternarize_absmean, ConvertError, ScaleGranularity};
use crate::qat::hestia::{HestiaOptions, TemperatureControl};

/// Learning-rate schedule after the linear warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Cosine from the peak to `min_lr` over the remaining steps.
    Cosine,
    /// Warmup-stable-decay: constant, then a cosine decay over the last `decay_steps`.
    Wsd,
}

/// Everything that determines a training run. Serialized into every checkpoint; `--resume` refuses a run whose
/// weight-affecting fields differ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: u64,
    pub seq_len: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub min_lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    /// WSD only: length of the final decay.
    pub decay_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clipping threshold.
    pub max_grad_norm: Option<f64>,
    /// int8 per-token activations in the forward (W1.58/A8, what the runtime computes); off: W1.58/A16.
    pub act_quant: bool,
    /// The weight quantizer: `ste` (BitNet b1.58) or `soft` (Hestia; needs [`TrainConfig::hestia`]).
    #[serde(default = "default_quantizer")]
    pub quantizer: WeightQuantizer,
    /// Which weights share an absmean scale (the export uses the same granularity).
    #[serde(default = "default_scale_groups")]
    pub scale_groups: ScaleGroups,
    /// Hestia's schedule and Hessian-scale settings (soft quantizer only).
    #[serde(default)]
    pub hestia: Option<HestiaOptions>,
    /// Mixed precision: linear weights kept at an integer precision (by name); the rest are ternary.
    #[serde(default)]
    pub precisions: Vec<(String, LinearPrecision)>,
    /// The matrix-product kernel the backend uses (`CpuBackend::matmul_kernel_name`): recorded so that a resume
    /// with another kernel, which could not continue bit for bit, is refused.
    #[serde(default)]
    pub matmul: String,
    pub ce_weight: f64,
    /// Weight of the KL divergence to the full-precision teacher (0: no teacher).
    pub kl_weight: f64,
    pub temperature: f64,
    /// Seed of the data order.
    pub seed: u64,
    /// Recompute every layer's activations in the backward pass (less memory, ~1/3 more compute).
    pub recompute: bool,
    // ---- fields that do not affect the weights (may change between resumes) ----
    /// Evaluate every this many steps (0: only at the start and the end).
    pub eval_every: u64,
    /// Held-out windows per evaluation (at most).
    pub eval_windows: usize,
    /// Checkpoint every this many steps (0: never; the final step is always checkpointed otherwise).
    pub checkpoint_every: u64,
    /// Checkpoint files kept (the newest).
    pub keep_checkpoints: usize,
    /// Also evaluate the full-precision model at step 0 (the reference the ternary model is measured against).
    pub eval_full_precision: bool,
}

/// Fields of [`TrainConfig`] that may differ when resuming: they change logging, not the weights.
const RESUME_FREE_FIELDS: [&str; 6] = [
    "eval_every",
    "eval_windows",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_full_precision",
    "recompute",
];

fn default_quantizer() -> WeightQuantizer {
    WeightQuantizer::Ste
}

fn default_scale_groups() -> ScaleGroups {
    ScaleGroups::PerTensor
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            seq_len: 256,
            batch_size: 4,
            grad_accum: 1,
            lr: 1e-3,
            min_lr: 0.0,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 10,
            decay_steps: 0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
            act_quant: true,
            quantizer: WeightQuantizer::Ste,
            scale_groups: ScaleGroups::PerTensor,
            hestia: None,
            precisions: Vec::new(),
            matmul: String::new(),
            ce_weight: 1.0,
            kl_weight: 0.0,
            temperature: 1.0,
            seed: 0,
            recompute: false,
            eval_every: 50,
            eval_windows: 64,
            checkpoint_every: 50,
            keep_checkpoints: 2,
            eval_full_precision: true,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.steps == 0 {
            return bad("--steps must be positive".into());
        }
        if self.seq_len == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("sequence length, batch size and gradient accumulation must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr >= 0.0 && self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return bad(format!(
                "learning rates must be finite and non-negative (lr {}, min lr {})",
                self.lr, self.min_lr
            ));
        }
        if self.warmup_steps > self.steps {
            return bad(format!("--warmup {} exceeds --steps {}", self.warmup_steps, self.steps));
        }
        if self.schedule == ScheduleKind::Wsd && self.warmup_steps + self.decay_steps > self.steps {
            return bad(format!(
                "warmup {} + decay {} exceed --steps {}",
                self.warmup_steps, self.decay_steps, self.steps
            ));
        }
        let w_ok = |w: f64| w.is_finite() && w >= 0.0;
        if !w_ok(self.ce_weight) || !w_ok(self.kl_weight) || self.ce_weight + self.kl_weight == 0.0 {
            return bad(format!(
                "loss weights must be non-negative and not both zero (CE {}, KL {})",
                self.ce_weight, self.kl_weight
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "distillation temperature must be positive, got {}",
                self.temperature
            ));
        }
        match (self.quantizer, &self.hestia) {
            (WeightQuantizer::Soft, None) => return bad("the soft (Hestia) quantizer needs Hestia options".into()),
            (WeightQuantizer::Soft, Some(h)) => h.validate().map_err(TrainError::Config)?,
            (WeightQuantizer::None, _) => return bad("training needs a weight quantizer (STE or soft)".into()),
            _ => {}
        }
        self.adamw().validate()?;
        Ok(())
    }

    pub fn lr_schedule(&self) -> LrSchedule {
        match self.schedule {
            ScheduleKind::Cosine => LrSchedule::WarmupCosine {
                peak_lr: self.lr,
                min_lr: self.min_lr,
                warmup_steps: self.warmup_steps,
                total_steps: self.steps,
            },
            ScheduleKind::Wsd => LrSchedule::WarmupStableDecay {
                peak_lr: self.lr,
                min_lr: self.min_lr,
                warmup_steps: self.warmup_steps,
                decay_steps: self.decay_steps,
                total_steps: self.steps,
                shape: DecayShape::Cosine,
            },
        }
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            schedule: self.lr_schedule(),
        }
    }

    pub fn objective(&self) -> Objective {
        Objective {
            ce_weight: self.ce_weight,
            kl_weight: self.kl_weight,
            temperature: self.temperature,
        }
    }

    pub fn quant(&self) -> QuantConfig {
        QuantConfig {
            weights: self.quantizer,
            scale_groups: self.scale_groups,
            int8_activations: self.act_quant,
        }
    }

    /// Training windows drawn per optimizer step.
    pub fn windows_per_step(&self) -> u64 {
        (self.batch_size * self.grad_accum) as u64
    }

    pub fn tokens_per_step(&self) -> u64 {
        self.windows_per_step() * self.seq_len as u64
    }

    fn to_json(&self) -> Result<serde_json::Value, CheckpointError> {
        state_json(self, "the run's config")
    }

    /// Weight-affecting fields whose values differ from a checkpoint's config, as `name: checkpoint → now`.
    pub fn resume_differences(&self, stored: &serde_json::Value) -> Vec<String> {
        let now = match self.to_json() {
            Ok(now) => now,
            Err(e) => return vec![e.to_string()],
        };
        let (Some(now), Some(stored)) = (now.as_object(), stored.as_object()) else {
            return vec!["the checkpoint's config is not an object".into()];
        };
        let mut keys: Vec<&String> = now.keys().chain(stored.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !RESUME_FREE_FIELDS.contains(&k.as_str()))
            .filter_map(|k| {
                let (a, b) = (stored.get(k), now.get(k));
                (a != b).then(|| {
                    let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
                    format!("{k}: {} → {}", show(a), show(b))
                })
            })
            .collect()
    }
}

/// Test hooks, not part of a run's identity.
#[derive(Clone, Debug, Default)]
pub struct DebugOptions {
    /// Writes a NaN into a gradient before the optimizer update of this (1-based) step.
    pub nan_gradient_at_step: Option<u64>,
    /// Sleeps after every step (lets a test kill the process mid-run).
    pub sleep_per_step: Option<Duration>,
    /// Stops with [`TrainError::Interrupted`] after the first checkpoint at or beyond this (global) step, as a
    /// kill would (tests of in-process resumption).
    pub stop_after_step: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("exporting the trained model")]
    Convert(#[from] ConvertError),
    #[error("{context} {path}")]
    Io {
        path: PathBuf,
        context: &'static str,
        source: std::io::Error,
    },
    #[error("the engine cannot train this model: tensor {tensor}: {detail}")]
    ModelMismatch { tensor: String, detail: String },
    #[error("training stopped at step {step}: non-finite {what} ({value}); {}", describe_last_checkpoint(.last_checkpoint))]
    NonFinite {
        /// The 1-based optimizer step that failed.
        step: u64,
        what: NonFiniteSource,
        value: f64,
        /// The newest checkpoint written before the failure (step, path), which is intact.
        last_checkpoint: Option<(u64, PathBuf)>,
    },
    #[error(
        "cannot resume from {path}: the run's settings differ ({}); resume with the original settings or start \
         a new run in another directory", .differences.join("; ")
    )]
    ResumeMismatch { path: PathBuf, differences: Vec<String> },
    #[error("cannot resume from {path}: it was trained on {what} than the one given now")]
    ResumeInputMismatch { path: PathBuf, what: &'static str },
    #[error("stopped after the checkpoint of step {step} (debug option)")]
    Interrupted { step: u64 },
    #[error("{dir} already holds a run (checkpoints or metrics.jsonl): pass --resume to continue it, or choose another directory")]
    RunDirInUse { dir: PathBuf },
}

fn describe_last_checkpoint(last: &Option<(u64, PathBuf)>) -> String {
    match last {
        Some((step, path)) => format!(
            "the last good checkpoint is {} (step {step}) and was left intact; lower --lr or check the data, then \
             --resume",
            path.display()
        ),
        None => "no checkpoint had been written yet; lower --lr or check the data".into(),
    }
}

// ---- model mapping -------------------------------------------------------------------------------------------

/// The source tensors in the engine's parameter order (by GGUF name), checking that every engine parameter
/// exists with the right element count and that the engine uses every source tensor.
pub fn layout_tensors_from_source(layout: &ParamLayout, src: &SourceModel) -> Result<Vec<Vec<f32>>, TrainError> {
    for t in &src.tensors {
        if layout.find(&t.name).is_none() {
            return Err(TrainError::ModelMismatch {
                tensor: t.name.clone(),
                detail: "the engine's model has no such parameter".into(),
            });
        }
    }
    layout
        .specs
        .iter()
        .map(|spec| {
            let t = src
                .tensor_by_name(&spec.name)
                .ok_or_else(|| TrainError::ModelMismatch {
                    tensor: spec.name.clone(),
                    detail: "missing from the source model".into(),
                })?;
            if t.data.len() != spec.numel() || t.cols() != spec.shape[1] {
                return Err(TrainError::ModelMismatch {
                    tensor: spec.name.clone(),
                    detail: format!("source shape {:?}, engine shape {:?}", t.shape, spec.shape),
                });
            }
            Ok(t.data.clone())
        })
        .collect()
}

/// `src` with its tensors replaced by `latent` (in layout order): the trained model, ready for PTQ export.
pub fn trained_source_model(
    src: &SourceModel,
    layout: &ParamLayout,
    latent: &[Vec<f32>],
) -> Result<SourceModel, TrainError> {
    let mut out = src.clone();
    for t in &mut out.tensors {
        let id = layout.find(&t.name).ok_or_else(|| TrainError::ModelMismatch {
            tensor: t.name.clone(),
            detail: "the engine's model has no such parameter".into(),
        })?;
        let data = latent.get(id.0).ok_or_else(|| TrainError::ModelMismatch {
            tensor: t.name.clone(),
            detail: "no trained tensor for it".into(),
        })?;
        if data.len() != t.data.len() {
            return Err(TrainError::ModelMismatch {
                tensor: t.name.clone(),
                detail: format!("{} trained values for {} source values", data.len(), t.data.len()),
            });
        }
        t.data.clone_from(data);
    }
    Ok(out)
}

/// Identifies a source model exactly: config, names, shapes and a CRC of all values.
pub fn model_fingerprint(src: &SourceModel) -> u64 {
    let mut h = Fnv64::new();
    h.bytes(format!("{:?}", src.config).as_bytes());
    let mut crc = crc32fast::Hasher::new();
    for t in &src.tensors {
        h.bytes(t.name.as_bytes());
        for d in &t.shape {
            h.u64(*d as u64);
        }
        crc.update(bytemuck::cast_slice(&t.data));
    }
    h.u64(crc.finalize() as u64).finish()
}

// ---- evaluation --------------------------------------------------------------------------------------------------

/// Held-out cross-entropy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalReport {
    /// Mean nats per target token.
    pub loss: f64,
    pub ppl: f64,
    pub tokens: usize,
}

/// Mean cross-entropy of `model` (with its quantization settings) over `batches`, weighted by target tokens.
pub fn evaluate<B: Backend>(
    backend: &B,
    model: &mut Transformer<B>,
    params: &Parameters<B>,
    batches: &[HostBatch],
) -> Result<EvalReport, TrainError> {
    let (mut nats, mut tokens) = (0.0f64, 0usize);
    for b in batches {
        let batch = Batch {
            tokens: &b.tokens,
            targets: &b.targets,
            teacher_logits: None,
        };
        let r = model.forward_eval(backend, params, &batch, &Objective::cross_entropy())?;
        nats += r.cross_entropy.unwrap_or(f64::NAN) * r.target_tokens as f64;
        tokens += r.target_tokens;
    }
    let loss = nats / tokens.max(1) as f64;
    Ok(EvalReport {
        loss,
        ppl: loss.exp(),
        tokens,
    })
}

// ---- the run -----------------------------------------------------------------------------------------------------

/// Progress reports for a front end (progress bar, logs).
pub enum TrainEvent<'a> {
    Started {
        first_step: u64,
        total_steps: u64,
        tokens_per_step: u64,
        resumed_from: Option<&'a Path>,
    },
    /// Before training: held-out perplexity of the ternarized start (PTQ) and of the full-precision model.
    InitialEval(&'a MetricsRecord),
    Step(&'a MetricsRecord),
    Checkpoint {
        step: u64,
        path: &'a Path,
    },
    /// Hestia: the soft-vs-hard gap after the last step.
    SoftHardGap(&'a SoftHardGap),
    /// Resuming: a checkpoint newer than the one resumed from did not read (`reason`), and was passed over.
    SkippedCheckpoint {
        path: &'a Path,
        reason: &'a str,
    },
}

/// Where a Hestia run's per-tensor temperature scales are in the checkpoint's stage state.
const TEMPERATURE_SCALES_KEY: &str = "temperature_scales";

/// One tensor's temperature scale as the checkpoint stores it: `[name, f64 bits]`, so a resume gets the exact
/// scale back (the scales set the soft quantizer's temperature, so they affect the weights).
#[derive(Serialize, Deserialize)]
struct TemperatureScale(String, #[serde(with = "crate::checkpoint::f64_bits")] f64);

pub struct TrainOutcome {
    pub layout: ParamLayout,
    /// Final latent weights in layout order.
    pub latent: Vec<Vec<f32>>,
    pub steps: u64,
    /// Held-out evaluation before training (absent when resuming: see metrics.jsonl).
    pub initial_eval: Option<EvalReport>,
    pub final_eval: EvalReport,
    /// Mean training tokens/s over the steps this session ran.
    pub tokens_per_s: Option<f64>,
    pub resumed_from: Option<PathBuf>,
    pub last_checkpoint: Option<PathBuf>,
    /// Hestia runs: soft vs hard forward after the last step.
    pub soft_hard_gap: Option<SoftHardGap>,
}

struct Teacher<B: Backend> {
    model: Transformer<B>,
    params: Parameters<B>,
}

fn io_err<'a>(path: &'a Path, context: &'static str) -> impl FnOnce(std::io::Error) -> TrainError + 'a {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        context,
        source,
    }
}

fn non_finite(e: EngineError, step: u64, last: &Option<(u64, PathBuf)>) -> TrainError {
    match e {
        EngineError::NonFinite { source_kind, value, .. } => TrainError::NonFinite {
            step,
            what: source_kind,
            value,
            last_checkpoint: last.clone(),
        },
        other => TrainError::Engine(other),
    }
}

fn write_checkpoint<B: Backend<Elem = f32>>(
    backend: &B,
    layout: &ParamLayout,
    params: &Parameters<B>,
    optimizer: &AdamW<B>,
    state: CheckpointState,
    run_dir: &Path,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let (m, v) = optimizer.moments();
    let tensors = layout
        .specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            Ok(CheckpointTensor {
                name: spec.name.clone(),
                weights: backend.download(&params.tensors[i])?,
                m: backend.download(&m.tensors[i])?,
                v: backend.download(&v.tensors[i])?,
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let path = checkpoint_path(run_dir, state.step);
    Checkpoint { state, tensors }.write(&path)?;
    prune_checkpoints(run_dir, keep)?;
    Ok(path)
}

/// Where an end-to-end stage starts besides the source model.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageStart<'a> {
    /// Latent weights (layout order) to start from instead of the source model's: an earlier stage's output.
    /// The teacher (distillation, the full-precision reference) is always the source model.
    pub init: Option<&'a [Vec<f32>]>,
    /// Hestia: the temperature scale of each tensor by name (missing names: 1). Stored in the checkpoints, so
    /// a resumed run uses the scales it started with.
    pub temperature_scales: Option<&'a [(String, f64)]>,
}

/// The gap between the soft and the hard (exported) forward at the end of a Hestia run, on the first held-out
/// batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftHardGap {
    pub soft_loss: f64,
    pub hard_loss: f64,
    pub max_abs_logit_diff: f64,
}

impl SoftHardGap {
    /// A gap this large means the anneal did not harden the weights: the exported model is not the one trained.
    /// Judged on the loss alone: with int8 activations one weight on a rounding boundary can flip an activation
    /// code and move a few logits far while the model is the same (SmolLM2, Hestia α = 0.4, 100 steps: max
    /// |Δlogit| 1.40 at a loss gap of 0.0017), so the maximum is reported but not a verdict.
    pub fn is_large(&self) -> bool {
        (self.hard_loss - self.soft_loss).abs() > 0.05
    }
}

/// Trains `src` on `data` with QAT (STE), writing checkpoints and `metrics.jsonl` into `run_dir`.
#[allow(clippy::too_many_arguments)]
pub fn train<B: Backend<Elem = f32>>(
    backend: &B,
    src: &SourceModel,
    data: &PackedData,
    config: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    debug: &DebugOptions,
    observer: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainOutcome, TrainError> {
    train_from(
        backend,
        src,
        data,
        config,
        run_dir,
        resume,
        &StageStart::default(),
        debug,
        observer,
    )
}

/// [`train`] with the quantizer of `config` (STE or Hestia's soft relaxation) from a given start.
#[allow(clippy::too_many_arguments)]
pub fn train_from<B: Backend<Elem = f32>>(
    backend: &B,
    src: &SourceModel,
    data: &PackedData,
    config: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    start: &StageStart<'_>,
    debug: &DebugOptions,
    observer: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainOutcome, TrainError> {
    config.validate()?;
    if data.seq_len() != config.seq_len {
        return Err(TrainError::Config(format!(
            "data packed for sequence length {}, training uses {}",
            data.seq_len(),
            config.seq_len
        )));
    }
    let vocab = src.config.vocab_size as usize;
    for w in 0..data.train_windows() {
        check_vocab(data.train_window(w), vocab)?;
    }
    for w in 0..data.held_out_windows() {
        check_vocab(data.held_out_window(w), vocab)?;
    }
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir, "creating"))?;
    let engine_config = EngineConfig {
        model: src.config,
        batch_size: config.batch_size,
        seq_len: config.seq_len,
        quant: config.quant(),
        recompute: if config.recompute {
            Recompute::All
        } else {
            Recompute::None
        },
    };
    let mut model = Transformer::new(backend, engine_config.clone())?;
    let layout = model.layout().clone();
    apply_precisions(&layout, &config.precisions, |id, p| model.set_precision(id, p))?;
    let source_host = layout_tensors_from_source(&layout, src)?;
    let model_fp = model_fingerprint(src);
    let data_fp = data.fingerprint();
    let metrics_path = run_dir.join(METRICS_FILE);
    let mut optimizer = AdamW::new(backend, &layout, config.adamw())?;

    // ---- start or resume ----
    let mut params;
    let (start_step, mut draws, mut tokens_trained, elapsed_before);
    let mut stored_scales: Option<Vec<(String, f64)>> = None;
    let mut resumed_from = None;
    let mut last_checkpoint: Option<(u64, PathBuf)> = None;
    if resume {
        remove_stale_temp_files(run_dir);
        let latest = latest_checkpoint(run_dir)?;
        for (path, reason) in &latest.skipped {
            observer(TrainEvent::SkippedCheckpoint { path, reason });
        }
        let (path, ckpt) = (latest.path, latest.checkpoint);
        let differences = config.resume_differences(&ckpt.state.config);
        if !differences.is_empty() {
            return Err(TrainError::ResumeMismatch { path, differences });
        }
        if ckpt.state.model_fingerprint != model_fp {
            return Err(TrainError::ResumeInputMismatch {
                path,
                what: "another source model",
            });
        }
        if ckpt.state.data_fingerprint != data_fp {
            return Err(TrainError::ResumeInputMismatch {
                path,
                what: "other data",
            });
        }
        let expected: Vec<(String, usize)> = layout.specs.iter().map(|s| (s.name.clone(), s.numel())).collect();
        ckpt.check_layout(&expected, &path)?;
        let Checkpoint { state, tensors } = ckpt;
        stored_scales = state
            .extra_field::<Vec<TemperatureScale>>(TEMPERATURE_SCALES_KEY, &path)?
            .map(|scales| scales.into_iter().map(|s| (s.0, s.1)).collect());
        let (mut w, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for t in tensors {
            w.push(t.weights);
            m.push(t.m);
            v.push(t.v);
        }
        params = Parameters::from_host(backend, &layout, &w)?;
        drop(w);
        optimizer.restore(
            Parameters::from_host(backend, &layout, &m)?,
            Parameters::from_host(backend, &layout, &v)?,
            state.step,
        )?;
        truncate_after(&metrics_path, state.step)?;
        start_step = state.step;
        draws = state.draws;
        tokens_trained = state.tokens_trained;
        elapsed_before = state.elapsed_s;
        last_checkpoint = Some((state.step, path.clone()));
        resumed_from = Some(path);
    } else {
        if !list_checkpoints(run_dir)?.is_empty() || metrics_path.exists() {
            return Err(TrainError::RunDirInUse {
                dir: run_dir.to_path_buf(),
            });
        }
        params = match start.init {
            Some(init) => Parameters::from_host(backend, &layout, init)?,
            None => Parameters::from_host(backend, &layout, &source_host)?,
        };
        (start_step, draws, tokens_trained, elapsed_before) = (0, 0, 0, 0.0);
    }
    // ---- Hestia: per-tensor temperature scales and the schedule ----
    let scales_by_name: Vec<(String, f64)> = match (&stored_scales, start.temperature_scales) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s.to_vec(),
        (None, None) => Vec::new(),
    };
    let control = match (config.quantizer, &config.hestia) {
        (WeightQuantizer::Soft, Some(h)) => {
            let scales = model
                .soft_params()
                .into_iter()
                .map(|id| {
                    let name = &layout.spec(id).name;
                    let c = scales_by_name.iter().find(|(n, _)| n == name).map_or(1.0, |(_, c)| *c);
                    (id, c)
                })
                .collect();
            let control = TemperatureControl::new(h, config.steps, scales)?;
            write_hestia_info(run_dir, &layout, &control)?;
            Some(control)
        }
        _ => None,
    };
    let checkpoint_extra = if control.is_some() {
        let stored: Vec<TemperatureScale> = scales_by_name
            .iter()
            .map(|(n, c)| TemperatureScale(n.clone(), *c))
            .collect();
        serde_json::json!({ TEMPERATURE_SCALES_KEY: state_json(&stored, "the temperature scales")? })
    } else {
        serde_json::Value::Null
    };
    let temperature_log_every = (config.steps / 400).max(1);
    let mut metrics = MetricsWriter::open_append(&metrics_path)?;
    let eval_batches = held_out_batches(data, config.batch_size, config.eval_windows);
    let distill = config.kl_weight != 0.0;
    let fresh = start_step == 0 && resumed_from.is_none();
    let mut teacher = if distill || (fresh && config.eval_full_precision) {
        let teacher_config = EngineConfig {
            quant: QuantConfig::FULL_PRECISION,
            // Forward only: one shared activation slot instead of one per layer.
            recompute: Recompute::All,
            ..engine_config.clone()
        };
        Some(Teacher {
            model: Transformer::new(backend, teacher_config)?,
            params: Parameters::from_host(backend, &layout, &source_host)?,
        })
    } else {
        None
    };
    drop(source_host);

    observer(TrainEvent::Started {
        first_step: start_step,
        total_steps: config.steps,
        tokens_per_step: config.tokens_per_step(),
        resumed_from: resumed_from.as_deref(),
    });
    let session_start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let cpu_before = last_cpu_seconds(&metrics_path);
    let cpu_now = || cpu_start.zip(process_cpu_seconds()).map(|(a, b)| cpu_before + b - a);
    let mut initial_eval = None;
    if fresh {
        model.set_all_soft_states(SoftState::HARD)?;
        let q = evaluate(backend, &mut model, &params, &eval_batches)?;
        let fp = match (&mut teacher, config.eval_full_precision) {
            (Some(t), true) => Some(evaluate(backend, &mut t.model, &t.params, &eval_batches)?),
            _ => None,
        };
        let record = MetricsRecord {
            step: 0,
            eval_loss: Some(q.loss),
            eval_ppl: Some(q.ppl),
            fp_eval_ppl: fp.map(|e| e.ppl),
            ..Default::default()
        };
        metrics.append(&record)?;
        observer(TrainEvent::InitialEval(&record));
        initial_eval = Some(q);
    }
    if !distill {
        teacher = None;
    }

    let mut grads = Parameters::zeros(backend, &layout)?;
    let mut order = DataOrder::new(config.seed, data.train_windows());
    let mut host = HostBatch::default();
    let objective = config.objective();
    let micro_scale = 1.0 / config.grad_accum as f64;
    let mut final_eval = None;
    let mut soft_hard = None;
    let (mut session_tokens, mut session_train_s) = (0u64, 0.0f64);
    for step in start_step..config.steps {
        let done = step + 1;
        let t0 = Instant::now();
        if let Some(c) = &control {
            c.apply(step, |id, state| model.set_soft_state(id, state))?;
        }
        grads.zero(backend)?;
        let (mut loss, mut ce, mut kl) = (0.0, None::<f64>, None::<f64>);
        for _ in 0..config.grad_accum {
            train_batch(data, &mut order, draws, config.batch_size, &mut host);
            draws += config.batch_size as u64;
            let teacher_logits = match &mut teacher {
                Some(t) => Some(t.model.forward_logits(backend, &t.params, &host.tokens)?),
                None => None,
            };
            let batch = Batch {
                tokens: &host.tokens,
                targets: &host.targets,
                teacher_logits,
            };
            let report = model
                .forward_train(backend, &params, &batch, &objective, micro_scale)
                .map_err(|e| non_finite(e, done, &last_checkpoint))?;
            loss += report.loss * micro_scale;
            if let Some(c) = report.cross_entropy {
                *ce.get_or_insert(0.0) += c * micro_scale;
            }
            if let Some(k) = report.kl {
                *kl.get_or_insert(0.0) += k * micro_scale;
            }
            model.backward(backend, &params, &mut grads)?;
        }
        model.finish_gradients(backend, &params, &mut grads)?;
        if debug.nan_gradient_at_step == Some(done) {
            if let Some(g) = grads.tensors.first_mut() {
                let mut host_g = backend.download(g)?;
                if let Some(x) = host_g.first_mut() {
                    *x = f32::NAN;
                }
                backend.write(g, &host_g)?;
            }
        }
        let opt = optimizer
            .step(backend, &mut params, &grads)
            .map_err(|e| non_finite(e, done, &last_checkpoint))?;
        backend.synchronize()?;
        let dt = t0.elapsed().as_secs_f64();
        tokens_trained += config.tokens_per_step();
        session_tokens += config.tokens_per_step();
        session_train_s += dt;
        let mut record = MetricsRecord {
            step: done,
            loss: Some(loss),
            ce,
            kl,
            lr: Some(opt.lr),
            grad_norm: Some(opt.grad_norm),
            tokens_per_s: Some(config.tokens_per_step() as f64 / dt.max(1e-9)),
            tokens: Some(tokens_trained),
            elapsed_s: None,
            ..Default::default()
        };
        if let Some(c) = &control {
            record.pressure = Some(c.schedule.pressure(step));
            if step % temperature_log_every == 0 || done == config.steps {
                record.temperatures = Some(c.states(step).map(|(_, s)| s.temperature).collect());
            }
        }
        let last = done == config.steps;
        if last && control.is_some() {
            let gap = soft_hard_gap(backend, &mut model, &params, &eval_batches)?;
            if let Some(g) = &gap {
                observer(TrainEvent::SoftHardGap(g));
            }
            soft_hard = gap;
        }
        if last || (config.eval_every > 0 && done % config.eval_every == 0) {
            // Evaluate what will be exported: the hard quantizer (the next step sets the soft states again).
            model.set_all_soft_states(SoftState::HARD)?;
            let e = evaluate(backend, &mut model, &params, &eval_batches)?;
            record.eval_loss = Some(e.loss);
            record.eval_ppl = Some(e.ppl);
            if last {
                final_eval = Some(e);
            }
        }
        let elapsed = elapsed_before + session_start.elapsed().as_secs_f64();
        record.elapsed_s = Some(elapsed);
        record.cpu_s = cpu_now();
        metrics.append(&record)?;
        observer(TrainEvent::Step(&record));
        if config.checkpoint_every > 0 && (last || done % config.checkpoint_every == 0) {
            let state = CheckpointState {
                step: done,
                draws,
                seed: config.seed,
                tokens_trained,
                elapsed_s: elapsed,
                data_fingerprint: data_fp,
                model_fingerprint: model_fp,
                config: config.to_json()?,
                extra: checkpoint_extra.clone(),
            };
            let path = write_checkpoint(
                backend,
                &layout,
                &params,
                &optimizer,
                state,
                run_dir,
                config.keep_checkpoints,
            )?;
            observer(TrainEvent::Checkpoint {
                step: done,
                path: &path,
            });
            last_checkpoint = Some((done, path));
        }
        if let Some(d) = debug.sleep_per_step {
            std::thread::sleep(d);
        }
    }
    let final_eval = match final_eval {
        Some(e) => e,
        None => {
            model.set_all_soft_states(SoftState::HARD)?;
            evaluate(backend, &mut model, &params, &eval_batches)?
        }
    };
    let latent = params.to_host(backend)?;
    Ok(TrainOutcome {
        layout,
        latent,
        steps: config.steps,
        initial_eval,
        final_eval,
        tokens_per_s: (session_train_s > 0.0).then(|| session_tokens as f64 / session_train_s),
        resumed_from,
        last_checkpoint: last_checkpoint.map(|(_, p)| p),
        soft_hard_gap: soft_hard,
    })
}

/// Sets each named tensor's precision through `set` (a typed error for a name the layout does not have).
pub fn apply_precisions(
    layout: &ParamLayout,
    precisions: &[(String, LinearPrecision)],
    mut set: impl FnMut(crate::engine::ParamId, LinearPrecision) -> Result<(), EngineError>,
) -> Result<(), TrainError> {
    for (name, p) in precisions {
        let id = layout.find(name).ok_or_else(|| TrainError::ModelMismatch {
            tensor: name.clone(),
            detail: "a precision was given for a tensor the model does not have".into(),
        })?;
        set(id, *p)?;
    }
    Ok(())
}

/// `RUN_DIR/hestia.json`: `T0`, the schedule, and each soft-quantized tensor's name and temperature scale, in the
/// order of the `temperatures` arrays of metrics.jsonl.
fn write_hestia_info(run_dir: &Path, layout: &ParamLayout, control: &TemperatureControl) -> Result<(), TrainError> {
    let tensors: Vec<serde_json::Value> = control
        .scales
        .iter()
        .map(|(id, c)| serde_json::json!({ "name": layout.spec(*id).name, "scale": c }))
        .collect();
    let info = serde_json::json!({
        "base_temperature": control.schedule.base_temperature,
        "schedule": control.schedule,
        "tensors": tensors,
    });
    let path = run_dir.join("hestia.json");
    tern_format::write_atomic(&path, format!("{info:#}\n").as_bytes()).map_err(io_err(&path, "writing"))
}

/// Loss and logits of the first held-out batch with the current (soft) states and with the hard quantizer.
fn soft_hard_gap<B: Backend<Elem = f32>>(
    backend: &B,
    model: &mut Transformer<B>,
    params: &Parameters<B>,
    batches: &[HostBatch],
) -> Result<Option<SoftHardGap>, TrainError> {
    let Some(b) = batches.first() else {
        return Ok(None);
    };
    let batch = Batch {
        tokens: &b.tokens,
        targets: &b.targets,
        teacher_logits: None,
    };
    let soft_loss = model
        .forward_eval(backend, params, &batch, &Objective::cross_entropy())?
        .loss;
    let soft_logits = backend.download(model.logits())?;
    let saved = model.soft_states().to_vec();
    model.set_all_soft_states(SoftState::HARD)?;
    let hard_loss = model
        .forward_eval(backend, params, &batch, &Objective::cross_entropy())?
        .loss;
    let hard_logits = backend.download(model.logits())?;
    for id in model.quantized_params() {
        model.set_soft_state(id, saved[id.0])?;
    }
    let max_abs_logit_diff = soft_logits
        .iter()
        .zip(&hard_logits)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    Ok(Some(SoftHardGap {
        soft_loss,
        hard_loss,
        max_abs_logit_diff,
    }))
}

/// The held-out perplexity before training recorded in a run's metrics (step 0), if any.
pub fn initial_eval_from_metrics(run_dir: &Path) -> Option<MetricsRecord> {
    read_metrics(&run_dir.join(METRICS_FILE))
        .ok()?
        .into_iter()
        .find(|r| r.step == 0 && r.eval_ppl.is_some())
}

// ---- export check ------------------------------------------------------------------------------------------------

/// How the PTQ export's ternarization compares with the engine's fake quantization.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportCheck {
    pub tensors: usize,
    pub weights: usize,
    /// Weights whose ternary code differs.
    pub code_mismatches: usize,
    /// Tensors whose scale differs in any bit.
    pub scale_mismatches: usize,
}

/// Runs the engine's fake quantizer and [`ternarize_absmean`] (per tensor, what `ptq_model` uses) on every linear
/// weight and compares codes and scales exactly: the exported model computes with what training computed with.
pub fn check_export_matches_engine<B: Backend<Elem = f32>>(
    backend: &B,
    layout: &ParamLayout,
    latent: &[Vec<f32>],
    groups: ScaleGroups,
    integer: &[(String, LinearPrecision)],
) -> Result<ExportCheck, TrainError> {
    let mut check = ExportCheck::default();
    for (spec, w) in layout.specs.iter().zip(latent) {
        // Integer tensors are written by the very encoder the engine's integer quantizer calls.
        if spec.kind != ParamKind::Linear || integer.iter().any(|(n, _)| n == &spec.name) {
            continue;
        }
        let group_len = groups.group_len(spec.shape[0], spec.shape[1])?;
        let input = backend.upload(w)?;
        let mut out = backend.alloc(w.len())?;
        backend.quantize_ternary_hard(&mut out, &input, group_len)?;
        let engine = backend.download(&out)?;
        let granularity = match groups {
            ScaleGroups::PerTensor => ScaleGranularity::PerTensor,
            ScaleGroups::PerRow => ScaleGranularity::PerRow,
            ScaleGroups::Group(g) => ScaleGranularity::Group(g as u32),
        };
        let (codes, scales) = ternarize_absmean(w, spec.shape[0], spec.shape[1], granularity);
        // The engine computes `code · s`, so a group's scale is the magnitude of any nonzero output in it.
        for (g, engine_group) in engine.chunks(group_len).enumerate() {
            let ptq_scale = scales.get(g).copied().unwrap_or(f32::NAN);
            if let Some(e) = engine_group.iter().find(|x| **x != 0.0) {
                if e.abs().to_bits() != ptq_scale.to_bits() {
                    check.scale_mismatches += 1;
                }
            }
        }
        check.code_mismatches += engine
            .iter()
            .zip(&codes)
            .filter(|(e, &c)| {
                let engine_code = if **e > 0.0 {
                    1
                } else if **e < 0.0 {
                    -1
                } else {
                    0
                };
                engine_code != c
            })
            .count();
        check.tensors += 1;
        check.weights += w.len();
    }
    Ok(check)
}
