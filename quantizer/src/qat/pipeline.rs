//! The quantization pipeline as one type a recipe configures: data (text files or teacher-generated text, tokenized
//! and packed, cached) → Hessian traces (Hestia) → stages (block-wise, end to end; each resumable) → export
//! (`.tern`, written atomically) → `summary.json`. The CLI parses arguments into a [`Recipe`] and calls
//! [`run_recipe`]; tests and other front ends do the same.
//!
//! Run directory: `cache/` (token caches), `teacher-data/`, `traces.csv`, and one directory per stage
//! (`stage-1-blockwise/`, `stage-2-e2e/`; a recipe of one stage uses the run directory itself), each with its own
//! checkpoints and `metrics.jsonl`. On `--resume`, finished stages are skipped (their final weights come from their
//! last checkpoint), the interrupted stage resumes from its newest valid checkpoint, and traces are read back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{latest_checkpoint, list_checkpoints};
use crate::data::{document_separator, tokenize_files, PackedData};
use crate::engine::{Backend, LinearPrecision, ParamLayout, ScaleGroups, WeightQuantizer};
use crate::hessian::mixed::{
    frontier, random_assignment, select, tensor_choices, ternary_bytes, totals, Assignment, Budget, TensorChoices,
};
use crate::hessian::{
    calibration_batches, compute_traces, temperature_scales, HessianError, TemperatureScaleOptions, TraceConfig,
    TraceTable,
};
use crate::import::source::SourceModel;
use crate::ptq::{ptq_model, ptq_model_mixed, PtqOptions, ScaleGranularity};
use crate::qat::blockwise::{train_blockwise, BlockwiseConfig, BlockwiseEvent};
use crate::qat::hestia::HestiaOptions;
use crate::teacher::{generate_teacher_data, TeacherDataOptions};
use crate::train::{
    check_export_matches_engine, train_from, trained_source_model, DebugOptions, EvalReport, ExportCheck, SoftHardGap,
    StageStart, TrainConfig, TrainError, TrainEvent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Absmean post-training ternarization only.
    Ptq,
    /// Straight-through estimator (BitNet b1.58).
    Ste,
    /// Hestia: Hessian-guided soft relaxation.
    Hestia,
}

impl Method {
    pub fn quantizer(self) -> WeightQuantizer {
        match self {
            Self::Ptq | Self::Ste => WeightQuantizer::Ste,
            Self::Hestia => WeightQuantizer::Soft,
        }
    }
}

/// Where the training text comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSpec {
    /// UTF-8 text files (documents separated by blank lines).
    pub files: Vec<PathBuf>,
    /// Generate the training text with the full-precision model instead (LLM-QAT); `tokens` 0 = what the stages
    /// consume plus the held-out share.
    pub teacher: Option<TeacherDataOptions>,
    /// Evaluate on this text instead of holding out the end of the training data.
    pub eval_file: Option<PathBuf>,
    pub held_out: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    Blockwise(BlockwiseConfig),
    EndToEnd(TrainConfig),
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Blockwise(_) => "blockwise",
            Self::EndToEnd(_) => "e2e",
        }
    }
}

/// Where Hestia's traces come from.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceSource {
    /// No traces: every temperature scale is 1 (Hestia with α = 0, or STE).
    None,
    /// A CSV written by `tern hessian`.
    File(PathBuf),
    /// Estimate them on the training data before the first stage.
    Compute(TraceConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub method: Method,
    pub data: DataSpec,
    pub seq_len: usize,
    pub stages: Vec<Stage>,
    pub traces: TraceSource,
    /// Hestia's scale settings (α, κ, per-parameter) for turning traces into temperature scales.
    pub hestia: HestiaOptions,
    pub export: PtqOptions,
    /// Extra `training.*` metadata for the exported file.
    pub metadata: Vec<(String, String)>,
    /// Hessian-aware mixed precision: keep the most sensitive linear weights at int4/int8 within a size budget.
    pub mixed: Option<MixedSpec>,
}

/// What mixed precision the recipe asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixedSpec {
    pub budget: Budget,
    /// Group size of the int4 option.
    pub int4_group: u32,
    /// Control experiment: a random assignment of the same budget (this seed) instead of the trace-guided one.
    pub random_seed: Option<u64>,
}

pub enum PipelineEvent<'a> {
    Log(String),
    TeacherData {
        done: usize,
        total: usize,
    },
    Traces {
        done: usize,
        total: usize,
    },
    TracesReady(&'a TraceTable, &'a [f64]),
    /// Mixed precision: the chosen assignment (integer tensors by name), its bytes, the all-ternary bytes, and
    /// the Pareto frontier (bytes, total sensitivity) of the linear weights.
    MixedPrecision {
        precisions: &'a [(String, LinearPrecision)],
        bytes: u64,
        ternary_bytes: u64,
        frontier: &'a [(u64, f64)],
    },
    StageStarted {
        index: usize,
        count: usize,
        name: &'static str,
        dir: &'a Path,
        skipped: bool,
    },
    Train(TrainEvent<'a>),
    Blockwise(BlockwiseEvent<'a>),
}

#[derive(Clone, Debug)]
pub struct PipelineOutcome {
    pub output_bytes: usize,
    pub export_check: ExportCheck,
    /// Held-out evaluation after the last end-to-end stage (block-wise stages report per-block MSE only).
    pub final_eval: Option<EvalReport>,
    pub initial_eval: Option<EvalReport>,
    pub soft_hard_gap: Option<SoftHardGap>,
    pub summary: serde_json::Value,
}

fn io_err<'a>(path: &'a Path, context: &'static str) -> impl FnOnce(std::io::Error) -> TrainError + 'a {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        context,
        source,
    }
}

fn hessian_err(e: HessianError) -> TrainError {
    match e {
        HessianError::Train(t) => t,
        HessianError::Engine(e) => TrainError::Engine(e),
        other => TrainError::Config(other.to_string()),
    }
}

impl Recipe {
    /// Training windows the stages draw (for sizing teacher data).
    fn windows_consumed(&self) -> usize {
        self.stages
            .iter()
            .map(|s| match s {
                Stage::Blockwise(b) => b.windows + b.eval_windows,
                Stage::EndToEnd(t) => (t.steps * t.windows_per_step()) as usize + t.eval_windows,
            })
            .max()
            .unwrap_or(0)
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        if self.method != Method::Ptq && self.stages.is_empty() {
            return Err(TrainError::Config("a training method needs at least one stage".into()));
        }
        for s in &self.stages {
            match s {
                Stage::Blockwise(b) => b.validate()?,
                Stage::EndToEnd(t) => {
                    t.validate()?;
                    if t.seq_len != self.seq_len {
                        return Err(TrainError::Config(format!(
                            "stage sequence length {} differs from the recipe's {}",
                            t.seq_len, self.seq_len
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

fn granularity(groups: ScaleGroups) -> ScaleGranularity {
    match groups {
        ScaleGroups::PerTensor => ScaleGranularity::PerTensor,
        ScaleGroups::PerRow => ScaleGranularity::PerRow,
        ScaleGroups::Group(g) => ScaleGranularity::Group(g as u32),
    }
}

/// Tokenized, packed training data (text files or teacher-generated), cached in the run directory.
pub fn prepare_data(
    src: &SourceModel,
    recipe: &Recipe,
    run_dir: &Path,
    observer: &mut dyn FnMut(PipelineEvent<'_>),
) -> Result<PackedData, TrainError> {
    let eos = document_separator(&src.config);
    let stream = match &recipe.data.teacher {
        Some(t) => {
            let consumed = recipe.windows_consumed() * (recipe.seq_len + 1);
            let tokens = if t.tokens > 0 {
                t.tokens
            } else {
                (consumed as f64 / (1.0 - recipe.data.held_out.clamp(0.0, 0.9))).ceil() as usize
            };
            let opts = TeacherDataOptions {
                tokens,
                sample_len: recipe.seq_len + 1,
                ..*t
            };
            let stream = generate_teacher_data(src, &opts, &run_dir.join("teacher-data"), &mut |d, total| {
                observer(PipelineEvent::TeacherData { done: d, total })
            })?;
            observer(PipelineEvent::Log(format!("teacher data: {} tokens", stream.len())));
            stream
        }
        None => {
            if recipe.data.files.is_empty() {
                return Err(TrainError::Config(
                    "training needs data: text files or teacher-generated text".into(),
                ));
            }
            let (stream, report) = tokenize_files(
                &src.tokenizer_json,
                eos,
                &recipe.data.files,
                Some(&run_dir.join("cache")),
            )?;
            observer(PipelineEvent::Log(format!(
                "training text: {} tokens from {} file(s){}",
                report.tokens,
                recipe.data.files.len(),
                if report.from_cache { " (token cache)" } else { "" }
            )));
            stream
        }
    };
    let data = match &recipe.data.eval_file {
        Some(path) => {
            let (eval, _) = tokenize_files(
                &src.tokenizer_json,
                eos,
                std::slice::from_ref(path),
                Some(&run_dir.join("cache")),
            )?;
            PackedData::from_streams(&stream, &eval, recipe.seq_len)?
        }
        None => PackedData::split(&stream, recipe.seq_len, recipe.data.held_out)?,
    };
    observer(PipelineEvent::Log(format!(
        "{} training and {} held-out sequences of {} tokens ({} tokens dropped at the ends)",
        data.train_windows(),
        data.held_out_windows(),
        recipe.seq_len,
        data.dropped_tokens()
    )));
    Ok(data)
}

/// The recipe's Hessian traces: read from `--traces`, from `RUN_DIR/traces.csv` of an earlier session, or
/// computed on the training data (and then kept there). `None` when the recipe needs none.
fn recipe_traces<B: Backend<Elem = f32>>(
    backend: &B,
    src: &SourceModel,
    recipe: &Recipe,
    data: &PackedData,
    run_dir: &Path,
    observer: &mut dyn FnMut(PipelineEvent<'_>),
) -> Result<Option<TraceTable>, TrainError> {
    let cached = run_dir.join("traces.csv");
    Ok(Some(match &recipe.traces {
        TraceSource::None => return Ok(None),
        TraceSource::File(p) => TraceTable::read_csv(p).map_err(hessian_err)?,
        TraceSource::Compute(cfg) => {
            if cached.exists() {
                observer(PipelineEvent::Log(format!("Hessian traces from {}", cached.display())));
                TraceTable::read_csv(&cached).map_err(hessian_err)?
            } else {
                let batches = calibration_batches(data, cfg.batches, cfg.seed).map_err(hessian_err)?;
                let cfg = TraceConfig {
                    seq_len: data.seq_len(),
                    ..cfg.clone()
                };
                compute_traces(backend, src, &batches, &cfg, &mut |done, total| {
                    observer(PipelineEvent::Traces { done, total })
                })
                .map_err(hessian_err)?
            }
        }
    }))
}

/// Hestia's temperature scales from the traces (`None` for other methods or without traces); writes
/// `RUN_DIR/traces.csv` once.
fn temperature_scales_of(
    recipe: &Recipe,
    table: Option<&TraceTable>,
    run_dir: &Path,
    observer: &mut dyn FnMut(PipelineEvent<'_>),
) -> Result<Option<Vec<(String, f64)>>, TrainError> {
    let Some(table) = table else { return Ok(None) };
    let opts = TemperatureScaleOptions {
        alpha: if recipe.method == Method::Hestia {
            recipe.hestia.alpha
        } else {
            0.0
        },
        kappa: recipe.hestia.kappa,
        per_parameter: recipe.hestia.per_parameter,
    };
    let scales = temperature_scales(table, &opts).map_err(hessian_err)?;
    let cached = run_dir.join("traces.csv");
    if !cached.exists() {
        tern_format::write_atomic(&cached, table.to_csv(&scales).as_bytes()).map_err(io_err(&cached, "writing"))?;
    }
    observer(PipelineEvent::TracesReady(table, &scales));
    if recipe.method != Method::Hestia {
        return Ok(None);
    }
    Ok(Some(
        table
            .entries
            .iter()
            .map(|e| e.name.clone())
            .zip(scales.iter().copied())
            .collect(),
    ))
}

/// The mixed-precision assignment of the recipe (integer tensors by name), written to `RUN_DIR/mixed.json`.
fn mixed_precisions(
    src: &SourceModel,
    recipe: &Recipe,
    spec: &MixedSpec,
    table: &TraceTable,
    run_dir: &Path,
    observer: &mut dyn FnMut(PipelineEvent<'_>),
) -> Result<Vec<(String, LinearPrecision)>, TrainError> {
    let choices = tensor_choices(src, table, &recipe.export, spec.int4_group).map_err(hessian_err)?;
    let ternary_linear = ternary_bytes(&choices);
    // The rest of the file: the all-ternary file minus its linear weights.
    let file = ptq_model(src, &recipe.export, &mut |_, _, _| {})?
        .to_bytes()
        .map_err(crate::ptq::ConvertError::from)?
        .len() as u64;
    let rest = file.saturating_sub(ternary_linear);
    let params: usize = choices.iter().map(|c| c.params).sum();
    let budget = spec.budget.linear_bytes(ternary_linear, rest, params);
    let path = run_dir.join("mixed.json");
    // A run directory that already has an assignment trained with it: keep it. Choosing again could give
    // another set (the budget is relative to the all-ternary file, which depends on --layout and --head), and
    // latent weights trained as int4 would then be exported ternary.
    let assignment = match stored_assignment(&path, &choices)? {
        Some(stored) => stored,
        None => match spec.random_seed {
            Some(seed) => random_assignment(&choices, budget, seed),
            None => select(&choices, budget).map_err(hessian_err)?,
        },
    };
    let precisions = assignment.precisions(&choices);
    let max = choices
        .iter()
        .map(|t| t.candidates.iter().map(|c| c.bytes).max().unwrap_or(0))
        .sum::<u64>()
        .min(budget.max(ternary_linear) * 2);
    let front = frontier(&choices, max, 41);
    let json = serde_json::json!({
        "budget": format!("{:?}", spec.budget),
        "linear_budget_bytes": budget,
        "ternary_linear_bytes": ternary_linear,
        "rest_of_file_bytes": rest,
        "assignment_bytes": assignment.bytes,
        "assignment_sensitivity": assignment.sensitivity,
        "ternary_sensitivity": choices.iter().map(|c| c.candidates[0].sensitivity).sum::<f64>(),
        "random_seed": spec.random_seed,
        "precisions": precisions,
        "tensors": choices,
        "frontier": front,
    });
    tern_format::write_atomic(&path, format!("{json:#}\n").as_bytes()).map_err(io_err(&path, "writing"))?;
    observer(PipelineEvent::MixedPrecision {
        precisions: &precisions,
        bytes: assignment.bytes + rest,
        ternary_bytes: ternary_linear + rest,
        frontier: &front,
    });
    Ok(precisions)
}

/// The assignment recorded in `path` (a run's `mixed.json`), as indices into `choices` with this layout's sizes
/// and sensitivities, or `None` when there is no such file. A recorded tensor or precision `choices` does not
/// offer is an error: the run was made from another model or with another int4 group.
fn stored_assignment(path: &Path, choices: &[TensorChoices]) -> Result<Option<Assignment>, TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "reading")(e)),
    };
    let bad = |why: String| TrainError::Config(format!("{}: {why}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let stored: Vec<(String, LinearPrecision)> =
        serde_json::from_value(json.get("precisions").cloned().unwrap_or(serde_json::Value::Null))
            .map_err(|e| bad(format!("precisions: {e}")))?;
    let mut choice = vec![0usize; choices.len()];
    for (name, precision) in &stored {
        let (i, t) = choices
            .iter()
            .enumerate()
            .find(|(_, t)| &t.name == name)
            .ok_or_else(|| bad(format!("{name} is not a linear weight of this model")))?;
        choice[i] = t
            .candidates
            .iter()
            .position(|c| c.precision == *precision)
            .ok_or_else(|| bad(format!("{name}: {precision:?} is not one of its options here")))?;
    }
    let ternary = |t: &TensorChoices| {
        t.candidates
            .iter()
            .position(|c| c.precision == LinearPrecision::Ternary)
    };
    for (i, t) in choices.iter().enumerate() {
        if !stored.iter().any(|(n, _)| n == &t.name) {
            choice[i] = ternary(t).ok_or_else(|| bad(format!("{} has no ternary option", t.name)))?;
        }
    }
    Ok(Some(totals(choices, choice)))
}

/// Whether a stage's directory holds a finished run, and its final weights if so.
fn finished_stage(stage: &Stage, dir: &Path, layers: usize) -> Result<Option<Vec<Vec<f32>>>, TrainError> {
    if list_checkpoints(dir)?.is_empty() {
        return Ok(None);
    }
    let latest = latest_checkpoint(dir)?;
    let done = match stage {
        Stage::EndToEnd(t) => latest.checkpoint.state.step >= t.steps,
        Stage::Blockwise(_) => {
            latest.checkpoint.state.extra.get("layer").and_then(|v| v.as_u64()) == Some(layers as u64)
        }
    };
    Ok(done.then(|| latest.checkpoint.tensors.into_iter().map(|t| t.weights).collect()))
}

/// Runs `recipe` on `src`, writing the ternary model to `output` and everything else into `run_dir`.
#[allow(clippy::too_many_arguments)]
pub fn run_recipe<B: Backend<Elem = f32>>(
    backend: &B,
    src: &SourceModel,
    recipe: &Recipe,
    output: &Path,
    run_dir: &Path,
    resume: bool,
    debug: &DebugOptions,
    observer: &mut dyn FnMut(PipelineEvent<'_>),
) -> Result<PipelineOutcome, TrainError> {
    recipe.validate()?;
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir, "creating"))?;
    let layout = ParamLayout::new(&src.config);
    let mut trained: Option<Vec<Vec<f32>>> = None;
    let mut precisions: Vec<(String, LinearPrecision)> = Vec::new();
    let (mut final_eval, mut initial_eval, mut gap) = (None, None, None);
    let mut stage_summaries = Vec::new();
    if recipe.method != Method::Ptq {
        let data = prepare_data(src, recipe, run_dir, observer)?;
        let table = recipe_traces(backend, src, recipe, &data, run_dir, observer)?;
        let scales = temperature_scales_of(recipe, table.as_ref(), run_dir, observer)?;
        if let Some(spec) = &recipe.mixed {
            let table = table.as_ref().ok_or_else(|| {
                TrainError::Config(
                    "mixed precision needs Hessian traces (do not set --alpha 0 without --traces)".into(),
                )
            })?;
            precisions = mixed_precisions(src, recipe, spec, table, run_dir, observer)?;
        }
        let count = recipe.stages.len();
        for (i, stage) in recipe.stages.iter().enumerate() {
            let dir = if count == 1 {
                run_dir.to_path_buf()
            } else {
                run_dir.join(format!("stage-{}-{}", i + 1, stage.name()))
            };
            if resume {
                if let Some(w) = finished_stage(stage, &dir, src.config.n_layers as usize)? {
                    observer(PipelineEvent::StageStarted {
                        index: i,
                        count,
                        name: stage.name(),
                        dir: &dir,
                        skipped: true,
                    });
                    trained = Some(w);
                    continue;
                }
            }
            let resume_stage = resume && !list_checkpoints(&dir)?.is_empty();
            observer(PipelineEvent::StageStarted {
                index: i,
                count,
                name: stage.name(),
                dir: &dir,
                skipped: false,
            });
            match stage {
                Stage::Blockwise(cfg) => {
                    let cfg = &BlockwiseConfig {
                        precisions: precisions.clone(),
                        ..cfg.clone()
                    };
                    // After another stage it starts from that stage's weights; its targets stay the original
                    // full-precision model's.
                    let out = train_blockwise(
                        backend,
                        src,
                        &data,
                        cfg,
                        trained.as_deref(),
                        scales.as_deref(),
                        &dir,
                        resume_stage,
                        debug,
                        &mut |e| observer(PipelineEvent::Blockwise(e)),
                    )?;
                    stage_summaries.push(serde_json::json!({
                        "stage": "blockwise",
                        "blocks": out.reports,
                        "train_tokens_per_s": out.tokens_per_s,
                    }));
                    trained = Some(out.latent);
                }
                Stage::EndToEnd(cfg) => {
                    let cfg = &TrainConfig {
                        precisions: precisions.clone(),
                        ..cfg.clone()
                    };
                    let start = StageStart {
                        init: trained.as_deref(),
                        temperature_scales: scales.as_deref(),
                    };
                    let out = train_from(backend, src, &data, cfg, &dir, resume_stage, &start, debug, &mut |e| {
                        observer(PipelineEvent::Train(e))
                    })?;
                    stage_summaries.push(serde_json::json!({
                        "stage": "e2e",
                        "steps": cfg.steps,
                        "held_out_ppl_start": out.initial_eval.map(|e| e.ppl),
                        "held_out_ppl_final": out.final_eval.ppl,
                        "train_tokens_per_s": out.tokens_per_s,
                        "soft_hard_gap": out.soft_hard_gap.map(|g| serde_json::json!({
                            "soft_loss": g.soft_loss, "hard_loss": g.hard_loss,
                            "max_abs_logit_diff": g.max_abs_logit_diff})),
                    }));
                    if initial_eval.is_none() {
                        initial_eval = out.initial_eval;
                    }
                    final_eval = Some(out.final_eval);
                    gap = out.soft_hard_gap.or(gap);
                    trained = Some(out.latent);
                }
            }
        }
    }

    // ---- export ----
    let groups = recipe
        .stages
        .iter()
        .map(|s| match s {
            Stage::Blockwise(b) => b.scale_groups,
            Stage::EndToEnd(t) => t.scale_groups,
        })
        .next_back()
        .unwrap_or(ScaleGroups::PerTensor);
    let export_opts = PtqOptions {
        scale: if recipe.method == Method::Ptq {
            recipe.export.scale
        } else {
            granularity(groups)
        },
        ..recipe.export
    };
    let (mut model, check) = match &trained {
        Some(latent) => {
            let check = check_export_matches_engine(backend, &layout, latent, groups, &precisions)?;
            (trained_source_model(src, &layout, latent)?, check)
        }
        None => (src.clone(), ExportCheck::default()),
    };
    if recipe.method != Method::Ptq {
        // PTQ writes exactly what `tern convert` writes; trained models say how they were trained.
        model
            .metadata
            .push(("training.method".into(), format!("{:?}", recipe.method).to_lowercase()));
        model.metadata.push((
            "training.recipe".into(),
            recipe.stages.iter().map(Stage::name).collect::<Vec<_>>().join("+"),
        ));
    }
    if let Some(e) = &final_eval {
        model
            .metadata
            .push(("training.held_out_ppl".into(), format!("{:.4}", e.ppl)));
    }
    model.metadata.extend(recipe.metadata.iter().cloned());
    let writer = ptq_model_mixed(&model, &export_opts, &precisions, &mut |_, _, _| {})?;
    let bytes = writer.to_bytes().map_err(crate::ptq::ConvertError::from)?;
    tern_format::write_atomic(output, &bytes).map_err(io_err(output, "writing"))?;
    let summary = serde_json::json!({
        "output": output.display().to_string(),
        "method": recipe.method,
        "stages": stage_summaries,
        "held_out_ppl_start": initial_eval.map(|e| e.ppl),
        "held_out_ppl_final": final_eval.map(|e| e.ppl),
        "held_out_tokens": final_eval.map(|e| e.tokens),
        "export_code_mismatches": check.code_mismatches,
        "export_scale_mismatches": check.scale_mismatches,
        "output_bytes": bytes.len(),
        "integer_tensors": precisions,
    });
    let summary_path = run_dir.join("summary.json");
    tern_format::write_atomic(&summary_path, format!("{summary:#}\n").as_bytes())
        .map_err(io_err(&summary_path, "writing"))?;
    Ok(PipelineOutcome {
        output_bytes: bytes.len(),
        export_check: check,
        final_eval,
        initial_eval,
        soft_hard_gap: gap,
        summary,
    })
}
