//! The block-wise stage (EfficientQAT's Block-AP, BitDistiller's idea): each transformer block is trained alone,
//! in order, to reproduce the full-precision block's output from the activations entering it, with the mean
//! squared error as the loss. Embeddings and the head never run, so a step costs about `1/L` of a whole-model step
//! (less: no 49k-wide head) and each block sees many more tokens per CPU hour than end-to-end training gives it.
//!
//! * Targets: the full-precision model's residual stream after block `l`, computed once for a pool of training
//!   windows (and a few held-out ones) and stored in f16 on disk ([`super::activations`]).
//! * Inputs ([`BlockInputs`]): the full-precision stream entering block `l` (every block learns independently), or
//!   the output of the already-trained, hard-quantized blocks `0..l` (each block learns to correct the error its
//!   predecessors left: what the deployed model computes). The latter is recomputed after each block and stored
//!   too.
//! * Each block gets its own AdamW state, learning-rate schedule (warmup + cosine) and — under Hestia — its own
//!   pressure ramp and anneal, so it leaves the stage fully hardened.
//! * Checkpoints (version 2) hold all the model's latent weights and the current block's AdamW moments; the state
//!   records the block and the step within it, so a run killed in block 17 resumes in block 17, bit for bit.
//! * Evaluation per block: the held-out MSE of the hard-quantized block before its training (= PTQ of that block)
//!   and after, on the same inputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    checkpoint_path, latest_checkpoint, list_checkpoints, prune_checkpoints, remove_stale_temp_files, state_json,
    Checkpoint, CheckpointError, CheckpointState, CheckpointTensor,
};
use crate::data::{DataOrder, Fnv64, HostBatch, PackedData};
use crate::engine::{
    AdamW, AdamWConfig, Backend, BlockModel, EngineConfig, EngineError, LinearPrecision, LrSchedule, ParamLayout,
    Parameters, QuantConfig, Recompute, ScaleGroups, SoftState, Transformer, WeightQuantizer,
};
use crate::import::source::SourceModel;
use crate::metrics::{
    last_cpu_seconds, process_cpu_seconds, truncate_after, MetricsRecord, MetricsWriter, METRICS_FILE,
};
use crate::qat::activations::{ActivationFile, ActivationShape, ActivationWriter};
use crate::qat::hestia::{HestiaOptions, TemperatureControl};
use crate::train::{layout_tensors_from_source, model_fingerprint, DebugOptions, TrainError};

/// AdamW's `m` and `v` of one block's tensors (host copies).
type Moments = (Vec<Vec<f32>>, Vec<Vec<f32>>);
/// The block's tensors (global ids) with their `m` and `v`, for a mid-block checkpoint.
type BlockMoments<'a> = (&'a [crate::engine::ParamId], &'a [Vec<f32>], &'a [Vec<f32>]);

/// Where a block's inputs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockInputs {
    /// The full-precision model's activations entering the block.
    FullPrecision,
    /// The output of the already-trained, hard-quantized earlier blocks.
    Quantized,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockwiseConfig {
    pub steps_per_block: u64,
    /// Windows per step.
    pub batch_size: usize,
    /// Training windows whose activations are stored (the pool steps draw from, epoch by epoch).
    pub windows: usize,
    /// Held-out windows for the per-block evaluation.
    pub eval_windows: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    pub inputs: BlockInputs,
    /// Normalise each token's squared error by its target's squared norm.
    pub normalize: bool,
    pub act_quant: bool,
    pub quantizer: WeightQuantizer,
    pub scale_groups: ScaleGroups,
    pub hestia: Option<HestiaOptions>,
    /// Mixed precision: linear weights kept at an integer precision (by name).
    #[serde(default)]
    pub precisions: Vec<(String, LinearPrecision)>,
    /// The backend's matrix-product kernel (a resume with another one is refused).
    #[serde(default)]
    pub matmul: String,
    pub seed: u64,
    // ---- do not affect the weights ----
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
}

impl Default for BlockwiseConfig {
    fn default() -> Self {
        Self {
            steps_per_block: 100,
            batch_size: 4,
            windows: 256,
            eval_windows: 8,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 5,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            inputs: BlockInputs::Quantized,
            normalize: true,
            act_quant: true,
            quantizer: WeightQuantizer::Ste,
            scale_groups: ScaleGroups::PerTensor,
            hestia: None,
            precisions: Vec::new(),
            matmul: String::new(),
            seed: 0,
            checkpoint_every: 50,
            keep_checkpoints: 2,
        }
    }
}

const RESUME_FREE_FIELDS: [&str; 2] = ["checkpoint_every", "keep_checkpoints"];

impl BlockwiseConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.steps_per_block == 0 || self.batch_size == 0 || self.windows == 0 {
            return bad("block-wise steps, batch and windows must be positive".into());
        }
        if self.warmup_steps > self.steps_per_block {
            return bad(format!(
                "block-wise warmup {} exceeds the steps per block {}",
                self.warmup_steps, self.steps_per_block
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0 && self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return bad(format!("block-wise learning rates {} / {}", self.lr, self.min_lr));
        }
        match (self.quantizer, &self.hestia) {
            (WeightQuantizer::Soft, None) => return bad("the soft quantizer needs Hestia options".into()),
            (WeightQuantizer::Soft, Some(h)) => h.validate().map_err(TrainError::Config)?,
            (WeightQuantizer::None, _) => return bad("block-wise training needs a weight quantizer".into()),
            _ => {}
        }
        self.adamw().validate()?;
        Ok(())
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            ..AdamWConfig::new(LrSchedule::WarmupCosine {
                peak_lr: self.lr,
                min_lr: self.min_lr,
                warmup_steps: self.warmup_steps,
                total_steps: self.steps_per_block,
            })
        }
    }

    pub fn quant(&self) -> QuantConfig {
        QuantConfig {
            weights: self.quantizer,
            scale_groups: self.scale_groups,
            int8_activations: self.act_quant,
        }
    }

    fn to_json(&self) -> Result<serde_json::Value, CheckpointError> {
        state_json(self, "the stage's config")
    }

    fn resume_differences(&self, stored: &serde_json::Value) -> Vec<String> {
        let now = match self.to_json() {
            Ok(now) => now,
            Err(e) => return vec![e.to_string()],
        };
        let (Some(now), Some(stored)) = (now.as_object(), stored.as_object()) else {
            return vec!["the checkpoint's config is not an object".into()];
        };
        now.iter()
            .filter(|(k, _)| !RESUME_FREE_FIELDS.contains(&k.as_str()))
            .filter(|(k, v)| stored.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: {} → {v}",
                    stored.get(k).map_or("(absent)".into(), |s| s.to_string())
                )
            })
            .collect()
    }
}

/// Progress reports of the stage.
pub enum BlockwiseEvent<'a> {
    /// Teacher activations: `done` of `total` windows (training pool + held-out) through the full model.
    Activations {
        done: usize,
        total: usize,
        cached: bool,
    },
    BlockStarted {
        layer: usize,
        layers: usize,
        first_step: u64,
    },
    Step(&'a MetricsRecord),
    BlockDone(&'a BlockReport),
    Checkpoint {
        path: &'a Path,
    },
    /// Resuming: a checkpoint newer than the one resumed from did not read (`reason`), and was passed over.
    SkippedCheckpoint {
        path: &'a Path,
        reason: &'a str,
    },
}

/// Held-out MSE of one block, hard-quantized, before and after its training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockReport {
    pub layer: usize,
    pub loss_before: f64,
    pub loss_after: f64,
    pub seconds: f64,
}

/// A [`BlockReport`] as the checkpoint stores it: floats as their bits, so a non-finite loss (a diverged
/// block) reads back as itself instead of failing to parse.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct StoredReport {
    layer: usize,
    #[serde(with = "crate::checkpoint::f64_bits")]
    loss_before: f64,
    #[serde(with = "crate::checkpoint::f64_bits")]
    loss_after: f64,
    #[serde(with = "crate::checkpoint::f64_bits")]
    seconds: f64,
}

impl From<BlockReport> for StoredReport {
    fn from(r: BlockReport) -> Self {
        Self {
            layer: r.layer,
            loss_before: r.loss_before,
            loss_after: r.loss_after,
            seconds: r.seconds,
        }
    }
}

impl From<StoredReport> for BlockReport {
    fn from(r: StoredReport) -> Self {
        Self {
            layer: r.layer,
            loss_before: r.loss_before,
            loss_after: r.loss_after,
            seconds: r.seconds,
        }
    }
}

pub struct BlockwiseOutcome {
    pub layout: ParamLayout,
    /// All latent weights in layout order (untouched outside the blocks).
    pub latent: Vec<Vec<f32>>,
    pub reports: Vec<BlockReport>,
    pub tokens_per_s: Option<f64>,
    pub resumed_from: Option<PathBuf>,
}

fn io_err<'a>(path: &'a Path, context: &'static str) -> impl FnOnce(std::io::Error) -> TrainError + 'a {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        context,
        source,
    }
}

fn act_err(e: crate::qat::activations::ActivationError) -> TrainError {
    TrainError::Config(e.to_string())
}

/// The windows of the stage: the first `windows` draws of the seeded training order, and the first held-out ones.
struct Pool {
    train: Vec<usize>,
    held_out: Vec<usize>,
}

impl Pool {
    fn new(data: &PackedData, config: &BlockwiseConfig) -> Self {
        let n = config.windows.min(data.train_windows());
        let mut order = DataOrder::new(config.seed, data.train_windows());
        Self {
            train: (0..n as u64).map(|d| order.window_of(d)).collect(),
            held_out: (0..config.eval_windows.min(data.held_out_windows())).collect(),
        }
    }
}

/// Trains every block of `src` (starting from `init`, an earlier stage's latent weights, when given) against the
/// full-precision activations of `src`, in `run_dir`.
#[allow(clippy::too_many_arguments)]
pub fn train_blockwise<B: Backend<Elem = f32>>(
    backend: &B,
    src: &SourceModel,
    data: &PackedData,
    config: &BlockwiseConfig,
    init: Option<&[Vec<f32>]>,
    temperature_scales: Option<&[(String, f64)]>,
    run_dir: &Path,
    resume: bool,
    debug: &DebugOptions,
    observer: &mut dyn FnMut(BlockwiseEvent<'_>),
) -> Result<BlockwiseOutcome, TrainError> {
    config.validate()?;
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir, "creating"))?;
    let m = src.config;
    let (layers, width, seq) = (m.n_layers as usize, m.hidden_size as usize, data.seq_len());
    let layout = ParamLayout::new(&m);
    let source_host = layout_tensors_from_source(&layout, src)?;
    let model_fp = model_fingerprint(src);
    let data_fp = data.fingerprint();
    let pool = Pool::new(data, config);
    if pool.train.len() < config.batch_size {
        return Err(TrainError::Config(format!(
            "block-wise training needs at least {} training windows of {seq} tokens; the data has {}",
            config.batch_size,
            pool.train.len()
        )));
    }
    let metrics_path = run_dir.join(METRICS_FILE);

    // ---- resume ----
    let mut latent = match init {
        Some(w) => w.to_vec(),
        None => source_host.clone(),
    };
    let (mut layer0, mut step0) = (0usize, 0u64);
    let mut moments: Option<Moments> = None;
    let mut resumed_from = None;
    let mut reports: Vec<BlockReport> = Vec::new();
    let mut elapsed_before = 0.0;
    if resume {
        remove_stale_temp_files(run_dir);
        let latest = latest_checkpoint(run_dir)?;
        for (path, reason) in &latest.skipped {
            observer(BlockwiseEvent::SkippedCheckpoint { path, reason });
        }
        let (path, ckpt) = (latest.path, latest.checkpoint);
        let differences = config.resume_differences(&ckpt.state.config);
        if !differences.is_empty() {
            return Err(TrainError::ResumeMismatch { path, differences });
        }
        if ckpt.state.model_fingerprint != model_fp || ckpt.state.data_fingerprint != data_fp {
            return Err(TrainError::ResumeInputMismatch {
                path,
                what: "another source model or other data",
            });
        }
        let expected: Vec<(String, usize)> = layout.specs.iter().map(|s| (s.name.clone(), s.numel())).collect();
        ckpt.check_layout(&expected, &path)?;
        let state = &ckpt.state;
        layer0 = state.extra_field::<usize>("layer", &path)?.unwrap_or(0);
        step0 = state.extra_field::<u64>("step_in_block", &path)?.unwrap_or(0);
        reports = state
            .extra_field::<Vec<StoredReport>>("reports", &path)?
            .unwrap_or_default()
            .into_iter()
            .map(BlockReport::from)
            .collect();
        elapsed_before = ckpt.state.elapsed_s;
        let (mut ms, mut vs) = (Vec::new(), Vec::new());
        latent = Vec::with_capacity(ckpt.tensors.len());
        for t in ckpt.tensors {
            if t.has_moments() && !t.m.is_empty() {
                ms.push(t.m);
                vs.push(t.v);
            }
            latent.push(t.weights);
        }
        if !ms.is_empty() {
            moments = Some((ms, vs));
        }
        truncate_after(&metrics_path, ckpt.state.step)?;
        resumed_from = Some(path);
    } else if !list_checkpoints(run_dir)?.is_empty() || metrics_path.exists() {
        return Err(TrainError::RunDirInUse {
            dir: run_dir.to_path_buf(),
        });
    }
    let mut metrics = MetricsWriter::open_append(&metrics_path)?;

    // ---- teacher activations (full precision) ----
    let acts_dir = run_dir.join("activations");
    std::fs::create_dir_all(&acts_dir).map_err(io_err(&acts_dir, "creating"))?;
    let base_key = Fnv64::new()
        .bytes(b"tern-blockwise-acts-v1")
        .u64(model_fp)
        .u64(data_fp)
        .u64(config.seed)
        .u64(pool.train.len() as u64)
        .u64(pool.held_out.len() as u64)
        .finish();
    let shape = |key: u64, windows: usize| ActivationShape {
        key,
        windows,
        rows: seq,
        width,
    };
    let state_key = |split: u64, l: usize| Fnv64::new().u64(base_key).u64(split).u64(l as u64).finish();
    let state_path = |split: &str, l: usize| acts_dir.join(format!("{split}-state-{l:02}.f16"));
    let mut fp_files = Vec::with_capacity(2);
    for (split_id, split, windows) in [(0u64, "train", &pool.train), (1, "held-out", &pool.held_out)] {
        let mut files: Vec<Option<ActivationFile>> = Vec::with_capacity(layers + 1);
        for l in 0..=layers {
            files.push(
                ActivationFile::open(&state_path(split, l), shape(state_key(split_id, l), windows.len()))
                    .map_err(act_err)?,
            );
        }
        if files.iter().all(Option::is_some) {
            observer(BlockwiseEvent::Activations {
                done: windows.len(),
                total: windows.len(),
                cached: true,
            });
        } else {
            write_teacher_states(
                backend,
                &m,
                &source_host,
                data,
                split_id == 1,
                windows,
                &mut |l| (state_path(split, l), shape(state_key(split_id, l), windows.len())),
                &mut |done| {
                    observer(BlockwiseEvent::Activations {
                        done,
                        total: windows.len(),
                        cached: false,
                    })
                },
            )?;
            files.clear();
            for l in 0..=layers {
                files.push(
                    ActivationFile::open(&state_path(split, l), shape(state_key(split_id, l), windows.len()))
                        .map_err(act_err)?,
                );
            }
        }
        let files: Vec<ActivationFile> = files
            .into_iter()
            .map(|f| f.ok_or_else(|| TrainError::Config("a teacher activation file vanished".into())))
            .collect::<Result<_, _>>()?;
        fp_files.push(files);
    }
    let (train_fp, held_fp) = {
        let mut it = fp_files.into_iter();
        (it.next().unwrap_or_default(), it.next().unwrap_or_default())
    };

    // ---- the blocks ----
    let engine_config = EngineConfig {
        model: m,
        batch_size: config.batch_size,
        seq_len: seq,
        quant: config.quant(),
        recompute: Recompute::None,
    };
    let eval_config = EngineConfig {
        batch_size: 1,
        ..engine_config.clone()
    };
    let session_start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let cpu_before = last_cpu_seconds(&metrics_path);
    let cpu_now = || cpu_start.zip(process_cpu_seconds()).map(|(a, b)| cpu_before + b - a);
    let (mut session_tokens, mut session_train_s) = (0u64, 0.0f64);
    let mut host_x = Vec::new();
    let mut host_t = Vec::new();
    for layer in layer0..layers {
        let block_start = Instant::now();
        let mut block = BlockModel::new(backend, engine_config.clone(), layer)?;
        let mut eval_block = BlockModel::new(backend, eval_config.clone(), layer)?;
        let blayout = block.layout().clone();
        set_block_precisions(&blayout, &config.precisions, &mut block)?;
        set_block_precisions(&blayout, &config.precisions, &mut eval_block)?;
        let bparam_layout = blayout.param_layout();
        let host_block: Vec<Vec<f32>> = blayout.global_ids.iter().map(|g| latent[g.0].clone()).collect();
        let mut params = Parameters::from_host(backend, &bparam_layout, &host_block)?;
        let mut grads = Parameters::zeros(backend, &bparam_layout)?;
        let mut optimizer = AdamW::new(backend, &bparam_layout, config.adamw())?;
        let first = if layer == layer0 { step0 } else { 0 };
        if let (true, Some((ms, vs))) = (layer == layer0 && first > 0, moments.take()) {
            optimizer.restore(
                Parameters::from_host(backend, &bparam_layout, &ms)?,
                Parameters::from_host(backend, &bparam_layout, &vs)?,
                first,
            )?;
        }
        let control = match (config.quantizer, &config.hestia) {
            (WeightQuantizer::Soft, Some(h)) => {
                let scales = block
                    .soft_params()
                    .into_iter()
                    .map(|id| {
                        let name = &blayout.specs[id.0].name;
                        let c = temperature_scales
                            .and_then(|s| s.iter().find(|(n, _)| n == name))
                            .map_or(1.0, |(_, c)| *c);
                        (id, c)
                    })
                    .collect();
                Some(TemperatureControl::new(h, config.steps_per_block, scales)?)
            }
            _ => None,
        };
        // Inputs of this block: full-precision states, or the quantized chain (recomputed per block).
        let (train_in, held_in) = match config.inputs {
            BlockInputs::FullPrecision => (None, None),
            BlockInputs::Quantized => {
                let chain = |split: &str, split_id: u64, fp: &[ActivationFile], windows: usize| {
                    let path_of = |l: usize| acts_dir.join(format!("{split}-qinput-{l:02}.f16"));
                    let shape_of = |l: usize| shape(chain_key(base_key, split_id, l, &latent, &layout), windows);
                    quantized_inputs(backend, &m, config, &latent, layer, &path_of, &shape_of, fp)
                };
                (
                    Some(chain("train", 0, &train_fp, pool.train.len())?),
                    Some(chain("held-out", 1, &held_fp, pool.held_out.len())?),
                )
            }
        };
        let train_inputs = train_in.as_ref().unwrap_or(&train_fp[layer]);
        let held_inputs = held_in.as_ref().unwrap_or(&held_fp[layer]);
        let eval = |eval_block: &mut BlockModel<B>,
                    params: &Parameters<B>,
                    host_x: &mut Vec<f32>,
                    host_t: &mut Vec<f32>|
         -> Result<f64, TrainError> {
            eval_block.set_all_soft_states(SoftState::HARD)?;
            let mut total = 0.0;
            for w in 0..pool.held_out.len() {
                host_x.clear();
                host_t.clear();
                held_inputs.append_window(w, host_x);
                held_fp[layer + 1].append_window(w, host_t);
                total += eval_block
                    .forward_eval(backend, params, host_x, host_t, config.normalize)?
                    .loss;
            }
            Ok(total / pool.held_out.len().max(1) as f64)
        };
        let loss_before = if first == 0 {
            eval(&mut eval_block, &params, &mut host_x, &mut host_t)?
        } else {
            reports
                .iter()
                .find(|r| r.layer == layer)
                .map_or(f64::NAN, |r| r.loss_before)
        };
        observer(BlockwiseEvent::BlockStarted {
            layer,
            layers,
            first_step: first,
        });
        let mut order = DataOrder::new(config.seed ^ (layer as u64).wrapping_mul(0x9E37_79B9), pool.train.len());
        let tokens_per_step = (config.batch_size * seq) as u64;
        for step in first..config.steps_per_block {
            let t0 = Instant::now();
            if let Some(c) = &control {
                c.apply(step, |id, s| block.set_soft_state(id, s))?;
            }
            host_x.clear();
            host_t.clear();
            for b in 0..config.batch_size as u64 {
                let p = order.window_of(step * config.batch_size as u64 + b);
                train_inputs.append_window(p, &mut host_x);
                train_fp[layer + 1].append_window(p, &mut host_t);
            }
            grads.zero(backend)?;
            let global_step = layer as u64 * config.steps_per_block + step + 1;
            let loss = block
                .forward_train(backend, &params, &host_x, &host_t, config.normalize, 1.0)
                .map_err(|e| non_finite(e, global_step))?;
            block.backward(backend, &params, &mut grads)?;
            block.finish_gradients(backend, &params, &mut grads)?;
            let opt = optimizer
                .step(backend, &mut params, &grads)
                .map_err(|e| non_finite(e, global_step))?;
            let dt = t0.elapsed().as_secs_f64();
            session_tokens += tokens_per_step;
            session_train_s += dt;
            let done = step + 1;
            let record = MetricsRecord {
                step: global_step,
                loss: Some(loss.loss),
                lr: Some(opt.lr),
                grad_norm: Some(opt.grad_norm),
                tokens_per_s: Some(tokens_per_step as f64 / dt.max(1e-9)),
                tokens: Some(global_step * tokens_per_step),
                elapsed_s: Some(elapsed_before + session_start.elapsed().as_secs_f64()),
                cpu_s: cpu_now(),
                layer: Some(layer),
                pressure: control.as_ref().map(|c| c.schedule.pressure(step)),
                ..Default::default()
            };
            metrics.append(&record)?;
            observer(BlockwiseEvent::Step(&record));
            let last = done == config.steps_per_block;
            if !last && config.checkpoint_every > 0 && done % config.checkpoint_every == 0 {
                // Mid-block: this block's weights and moments.
                let current = params.to_host(backend)?;
                for (k, g) in blayout.global_ids.iter().enumerate() {
                    latent[g.0].clone_from(&current[k]);
                }
                let (mv, vv) = optimizer.moments();
                let (mh, vh) = (mv.to_host(backend)?, vv.to_host(backend)?);
                let mut reps = reports.clone();
                reps.retain(|r| r.layer != layer);
                reps.push(BlockReport {
                    layer,
                    loss_before,
                    loss_after: f64::NAN,
                    seconds: 0.0,
                });
                let path = write_block_checkpoint(
                    &layout,
                    &latent,
                    Some((&blayout.global_ids, &mh, &vh)),
                    (layer, done, global_step),
                    &reps,
                    config,
                    (model_fp, data_fp),
                    elapsed_before + session_start.elapsed().as_secs_f64(),
                    run_dir,
                )?;
                observer(BlockwiseEvent::Checkpoint { path: &path });
                if debug.stop_after_step.is_some_and(|s| global_step >= s) {
                    return Err(TrainError::Interrupted { step: global_step });
                }
            }
        }
        let trained = params.to_host(backend)?;
        for (k, g) in blayout.global_ids.iter().enumerate() {
            latent[g.0].clone_from(&trained[k]);
        }
        let loss_after = eval(&mut eval_block, &params, &mut host_x, &mut host_t)?;
        let report = BlockReport {
            layer,
            loss_before,
            loss_after,
            seconds: block_start.elapsed().as_secs_f64(),
        };
        reports.retain(|r| r.layer != layer);
        reports.push(report);
        observer(BlockwiseEvent::BlockDone(&report));
        // Block boundary: all weights, no moments (the next block starts fresh).
        let global_step = (layer as u64 + 1) * config.steps_per_block;
        let path = write_block_checkpoint(
            &layout,
            &latent,
            None,
            (layer + 1, 0, global_step),
            &reports,
            config,
            (model_fp, data_fp),
            elapsed_before + session_start.elapsed().as_secs_f64(),
            run_dir,
        )?;
        observer(BlockwiseEvent::Checkpoint { path: &path });
        if debug.stop_after_step.is_some_and(|s| global_step >= s) {
            return Err(TrainError::Interrupted { step: global_step });
        }
    }
    Ok(BlockwiseOutcome {
        layout,
        latent,
        reports,
        tokens_per_s: (session_train_s > 0.0).then(|| session_tokens as f64 / session_train_s),
        resumed_from,
    })
}

/// The mixed-precision overrides that name tensors of this block.
fn set_block_precisions<B: Backend>(
    layout: &crate::engine::BlockLayout,
    precisions: &[(String, LinearPrecision)],
    block: &mut BlockModel<B>,
) -> Result<(), TrainError> {
    for (name, p) in precisions {
        if let Some(k) = layout.specs.iter().position(|s| &s.name == name) {
            block.set_precision(crate::engine::ParamId(k), *p)?;
        }
    }
    Ok(())
}

fn non_finite(e: EngineError, step: u64) -> TrainError {
    match e {
        EngineError::NonFinite { source_kind, value, .. } => TrainError::NonFinite {
            step,
            what: source_kind,
            value,
            last_checkpoint: None,
        },
        other => TrainError::Engine(other),
    }
}

/// Key of the quantized-chain input of `layer`: the base key and the latent weights of every earlier block.
fn chain_key(base: u64, split: u64, layer: usize, latent: &[Vec<f32>], layout: &ParamLayout) -> u64 {
    let mut h = Fnv64::new();
    h.u64(base).u64(0x0051_5541_4E54 ^ split).u64(layer as u64);
    let mut crc = crc32fast::Hasher::new();
    for l in 0..layer {
        if let Ok(b) = crate::engine::BlockLayout::new(layout, l) {
            for g in &b.global_ids {
                crc.update(bytemuck::cast_slice(&latent[g.0]));
            }
        }
    }
    h.u64(crc.finalize() as u64).finish()
}

/// The full-precision residual stream of `windows` (training or held-out) through the whole model, one file per
/// position.
#[allow(clippy::too_many_arguments)]
fn write_teacher_states<B: Backend<Elem = f32>>(
    backend: &B,
    m: &tern_format::ModelConfig,
    source_host: &[Vec<f32>],
    data: &PackedData,
    held_out: bool,
    windows: &[usize],
    target: &mut dyn FnMut(usize) -> (PathBuf, ActivationShape),
    progress: &mut dyn FnMut(usize),
) -> Result<(), TrainError> {
    let seq = data.seq_len();
    let config = EngineConfig {
        model: *m,
        batch_size: 1,
        seq_len: seq,
        quant: QuantConfig::FULL_PRECISION,
        recompute: Recompute::All,
    };
    let mut teacher = Transformer::new(backend, config)?;
    let layout = teacher.layout().clone();
    let params = Parameters::from_host(backend, &layout, source_host)?;
    let mut writers = (0..=m.n_layers as usize)
        .map(|l| {
            let (path, shape) = target(l);
            ActivationWriter::create(&path, shape).map_err(act_err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut batch = HostBatch::default();
    for (i, &w) in windows.iter().enumerate() {
        batch.clear();
        batch.push_window(if held_out {
            data.held_out_window(w)
        } else {
            data.train_window(w)
        });
        teacher.forward_residual(backend, &params, &batch.tokens)?;
        for (l, writer) in writers.iter_mut().enumerate() {
            let state = teacher
                .residual_stream(l)
                .ok_or_else(|| TrainError::Config(format!("no residual stream at {l}")))?;
            writer.push(&backend.download(state)?).map_err(act_err)?;
        }
        progress(i + 1);
    }
    for w in writers {
        w.finish().map_err(act_err)?;
    }
    Ok(())
}

/// The inputs of block `layer` under [`BlockInputs::Quantized`]: the FP embedding output (`fp[0]`) through the
/// hard-quantized blocks `0..layer`, built incrementally as block `layer − 1` applied to the inputs of
/// `layer − 1` (built the same way if missing). Reused from disk when the key — which covers the weights of blocks
/// `0..layer` — matches.
#[allow(clippy::too_many_arguments)]
fn quantized_inputs<B: Backend<Elem = f32>>(
    backend: &B,
    m: &tern_format::ModelConfig,
    config: &BlockwiseConfig,
    latent: &[Vec<f32>],
    layer: usize,
    path_of: &dyn Fn(usize) -> PathBuf,
    shape_of: &dyn Fn(usize) -> ActivationShape,
    fp: &[ActivationFile],
) -> Result<ActivationFile, TrainError> {
    let (path, shape) = (path_of(layer), shape_of(layer));
    if let Some(f) = ActivationFile::open(&path, shape).map_err(act_err)? {
        return Ok(f);
    }
    let mut writer = ActivationWriter::create(&path, shape).map_err(act_err)?;
    let mut x = Vec::new();
    if layer == 0 {
        // The embedding output is the same for both modes.
        for i in 0..shape.windows {
            x.clear();
            fp[0].append_window(i, &mut x);
            writer.push(&x).map_err(act_err)?;
        }
    } else {
        let previous = quantized_inputs(backend, m, config, latent, layer - 1, path_of, shape_of, fp)?;
        let cfg = EngineConfig {
            model: *m,
            batch_size: 1,
            seq_len: shape.rows,
            quant: QuantConfig {
                // The deployed (hard) quantizer, whatever the training quantizer.
                weights: WeightQuantizer::Ste,
                ..config.quant()
            },
            recompute: Recompute::None,
        };
        let mut block = BlockModel::new(backend, cfg, layer - 1)?;
        let bl = block.layout().clone();
        set_block_precisions(&bl, &config.precisions, &mut block)?;
        let host: Vec<Vec<f32>> = block.layout().global_ids.iter().map(|g| latent[g.0].clone()).collect();
        let params = Parameters::from_host(backend, &block.layout().param_layout(), &host)?;
        for i in 0..shape.windows {
            x.clear();
            previous.append_window(i, &mut x);
            let out = block.forward(backend, &params, &x)?;
            writer.push(&backend.download(out)?).map_err(act_err)?;
        }
        // Two positions back is never needed again (bounded disk use).
        if layer >= 2 {
            let _ = std::fs::remove_file(path_of(layer - 2));
        }
    }
    writer.finish().map_err(act_err)?;
    ActivationFile::open(&path, shape)
        .map_err(act_err)?
        .ok_or_else(|| TrainError::Config("the quantized input file vanished".into()))
}

#[allow(clippy::too_many_arguments)]
fn write_block_checkpoint(
    layout: &ParamLayout,
    latent: &[Vec<f32>],
    moments: Option<BlockMoments<'_>>,
    (layer, step_in_block, global_step): (usize, u64, u64),
    reports: &[BlockReport],
    config: &BlockwiseConfig,
    (model_fp, data_fp): (u64, u64),
    elapsed_s: f64,
    run_dir: &Path,
) -> Result<PathBuf, TrainError> {
    let tensors = layout
        .specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let (m, v) = match moments {
                Some((ids, ms, vs)) => match ids.iter().position(|g| g.0 == i) {
                    Some(k) => (ms[k].clone(), vs[k].clone()),
                    None => (Vec::new(), Vec::new()),
                },
                None => (Vec::new(), Vec::new()),
            };
            CheckpointTensor {
                name: spec.name.clone(),
                weights: latent[i].clone(),
                m,
                v,
            }
        })
        .collect();
    let reports: Vec<&BlockReport> = reports
        .iter()
        .filter(|r| r.loss_after.is_finite() || r.layer == layer)
        .collect();
    let state = CheckpointState {
        step: global_step,
        draws: 0,
        seed: config.seed,
        tokens_trained: global_step * (config.batch_size as u64),
        elapsed_s,
        data_fingerprint: data_fp,
        model_fingerprint: model_fp,
        config: config.to_json()?,
        extra: serde_json::json!({
            "layer": layer,
            "step_in_block": step_in_block,
            "reports": state_json(&reports.iter().map(|r| StoredReport {
                loss_after: if r.loss_after.is_finite() { r.loss_after } else { -1.0 },
                ..StoredReport::from(**r)
            }).collect::<Vec<_>>(), "the block reports")?,
        }),
    };
    let path = checkpoint_path(run_dir, global_step);
    Checkpoint { state, tensors }.write(&path)?;
    prune_checkpoints(run_dir, config.keep_checkpoints)?;
    Ok(path)
}
