//! `tern quantize INPUT -o OUT.tern --method ptq|ste|hestia [--recipe e2e|blockwise|blockwise+e2e] ...`: parses
//! the arguments into a [`Recipe`] and runs it through the quantizer's pipeline, showing progress.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tern_format::TernaryLayout;
use tern_quantizer::data::DEFAULT_HELD_OUT_FRACTION;
use tern_quantizer::engine::matmul::MatmulPrecision;
use tern_quantizer::engine::quant::schedule::{AnnealShape, TemperatureStyle};
use tern_quantizer::engine::{Backend, CpuBackend, LinearPrecision, ScaleGroups};
use tern_quantizer::hessian::mixed::Budget;
use tern_quantizer::hessian::{TraceConfig, TraceMethod};
use tern_quantizer::ptq::{HeadFormat, PtqOptions, ScaleGranularity};
use tern_quantizer::qat::blockwise::{BlockInputs, BlockwiseConfig, BlockwiseEvent};
use tern_quantizer::qat::hestia::HestiaOptions;
use tern_quantizer::qat::pipeline::{
    run_recipe, DataSpec, Method, MixedSpec, PipelineEvent, Recipe, Stage, TraceSource,
};
use tern_quantizer::teacher::TeacherDataOptions;
use tern_quantizer::train::{DebugOptions, ScheduleKind, TrainConfig, TrainEvent};
use tern_quantizer::SourceModel;

use crate::commands::convert::{parse_head, parse_layout, parse_scale};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// Absmean post-training ternarization (what `tern convert` does).
    Ptq,
    /// Straight-through-estimator QAT (BitNet b1.58), then absmean export.
    Ste,
    /// Hestia: Hessian-guided differentiable ternary QAT (soft relaxation, annealed to hard), then absmean export.
    Hestia,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RecipeArg {
    /// The whole model end to end (cross-entropy and/or distillation from the teacher's logits).
    E2e,
    /// Each block alone against the full-precision block's output (MSE).
    Blockwise,
    /// Block-wise first, then end to end.
    #[value(name = "blockwise+e2e")]
    BlockwiseE2e,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    /// bf16 where the CPU multiplies bf16 (AMX, else AVX512_BF16), else AVX-512F f32, else the gemm crate's f32.
    Auto,
    /// bf16 inputs, f32 sums: AMX where available, else AVX512_BF16.
    Bf16,
    /// bf16 on the AVX512_BF16 vector kernel even where AMX exists.
    #[value(name = "bf16-avx512")]
    Bf16Avx512,
    #[value(name = "f32-avx512")]
    F32Avx512,
    F32,
}

/// The CPU backend the arguments ask for.
pub fn cpu_backend(p: PrecisionArg) -> CpuBackend<f32> {
    use tern_quantizer::engine::matmul::{amx_bf16_available, avx512_bf16_available, avx512_f32_available};
    let precision = match p {
        PrecisionArg::Auto if amx_bf16_available() || avx512_bf16_available() => MatmulPrecision::Bf16,
        PrecisionArg::Auto if avx512_f32_available() => MatmulPrecision::F32Avx512,
        PrecisionArg::Auto | PrecisionArg::F32 => MatmulPrecision::F32,
        PrecisionArg::Bf16 => MatmulPrecision::Bf16,
        PrecisionArg::Bf16Avx512 => MatmulPrecision::Bf16Avx512,
        PrecisionArg::F32Avx512 => MatmulPrecision::F32Avx512,
    };
    CpuBackend::<f32>::new().with_matmul_precision(precision)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// Linear warmup, then cosine to --min-lr.
    Cosine,
    /// Warmup, constant, then a cosine decay over the last --decay-steps (default a fifth of the run).
    Wsd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputsArg {
    /// The full-precision model's activations entering each block.
    Fp,
    /// The output of the already-trained, hard-quantized earlier blocks.
    Quantized,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AnnealArg {
    Cosine,
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TempStyleArg {
    /// Hestia's reference code: the Hessian scale acts only while the pressure ramps.
    Reference,
    /// The Hessian scale acts through the whole anneal (default).
    Hessian,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceMethodArg {
    Hutchinson,
    Hutchpp,
}

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or a Hugging Face model directory.
    #[arg(required_unless_present = "tiny_random")]
    pub input: Option<PathBuf>,
    /// Output .tern file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "ste")]
    pub method: MethodArg,
    #[arg(long, value_enum, default_value = "e2e")]
    pub recipe: RecipeArg,
    /// Training text files (UTF-8; documents separated by blank lines), or `teacher` for text the
    /// full-precision model generates itself (LLM-QAT). Repeat for several files.
    #[arg(long = "data", value_name = "FILE|teacher")]
    pub data: Vec<String>,
    /// Evaluate on this text instead of holding out the end of the training data.
    #[arg(long, value_name = "FILE")]
    pub eval_data: Option<PathBuf>,
    /// Fraction of the packed training data held out for evaluation.
    #[arg(long, default_value_t = DEFAULT_HELD_OUT_FRACTION)]
    pub held_out: f64,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,

    // ---- end-to-end stage ----
    /// End-to-end optimizer steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: Schedule,
    /// Linear warmup steps (default: 10, or a tenth of a shorter run).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// WSD: steps of the final decay (default: a fifth of --steps).
    #[arg(long)]
    pub decay_steps: Option<u64>,
    /// AdamW decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Global gradient-norm clipping (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Keep activations in 16-bit precision during training (W1.58/A16, as Hestia); default: int8 per token,
    /// which is what the runtime computes.
    #[arg(long)]
    pub no_act_quant: bool,
    /// Distil from the full-precision model (KL on logits at temperature T).
    #[arg(long, value_name = "T")]
    pub distill: Option<f64>,
    /// With --distill: loss = (1 − W)·CE + W·KL.
    #[arg(long, value_name = "W", default_value_t = 1.0, requires = "distill")]
    pub distill_weight: f64,

    // ---- block-wise stage ----
    /// Block-wise: optimizer steps per block.
    #[arg(long, default_value_t = 100)]
    pub block_steps: u64,
    /// Block-wise: sequences per step.
    #[arg(long, default_value_t = 4)]
    pub block_batch: usize,
    /// Block-wise: training sequences whose teacher activations are stored (the pool each block draws from).
    #[arg(long, default_value_t = 256)]
    pub block_windows: usize,
    /// Block-wise: held-out sequences for each block's evaluation.
    #[arg(long, default_value_t = 8)]
    pub block_eval_sequences: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub block_lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub block_min_lr: f64,
    #[arg(long, default_value_t = 5)]
    pub block_warmup: u64,
    #[arg(long, value_enum, default_value = "quantized")]
    pub block_inputs: InputsArg,
    /// Block-wise: plain per-element MSE instead of the error relative to each token's target norm.
    #[arg(long)]
    pub block_plain_mse: bool,

    // ---- Hestia ----
    /// Hessian term strength (0: no traces, every temperature scale 1).
    #[arg(long, default_value_t = 0.4)]
    pub alpha: f64,
    #[arg(long, default_value_t = 1.0)]
    pub kappa: f64,
    /// Fraction of the steps over which the pressure ramps (and the temperature is held).
    #[arg(long, default_value_t = 0.2)]
    pub rho: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    pub anneal: AnnealArg,
    #[arg(long, value_enum, default_value = "hessian")]
    pub temp_style: TempStyleArg,
    /// Normalise traces by parameter count before the log (HAWQ-V2's average trace).
    #[arg(long)]
    pub per_parameter_traces: bool,
    /// Use the traces of this CSV (`tern hessian`) instead of estimating them.
    #[arg(long, value_name = "FILE.csv")]
    pub traces: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "hutchinson")]
    pub trace_method: TraceMethodArg,
    /// Hutchinson probes per calibration batch.
    #[arg(long, default_value_t = 40)]
    pub probes: usize,
    /// Hutch++ sketch and query vectors per batch.
    #[arg(long, default_value_t = 10)]
    pub sketch: usize,
    #[arg(long, default_value_t = 20)]
    pub queries: usize,
    /// Calibration sequences (of --seq-len tokens) for the traces.
    #[arg(long, default_value_t = 5)]
    pub trace_batches: usize,

    // ---- Hessian-aware mixed precision ----
    /// Keep the most sensitive linear weights at int4/int8 within this file size: +5% (of the all-ternary file),
    /// 60MB, 57000000 (bytes) or 2.5bpw (over the linear weights). Needs Hessian traces.
    #[arg(long, value_parser = Budget::parse)]
    pub budget: Option<Budget>,
    /// Group size of the int4 option of --budget.
    #[arg(long, default_value_t = 32)]
    pub int4_group: u32,
    /// Control experiment for --budget: a random assignment of the same size (from this seed).
    #[arg(long, value_name = "SEED", requires = "budget")]
    pub random_assignment: Option<u64>,

    // ---- operation ----
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Matrix products: auto (bf16 on AMX where the CPU has it, else f32 on AVX-512, else f32), bf16 (bf16
    /// inputs, f32 accumulation; f32 without AMX), f32-avx512, or f32 (the gemm crate; the reference).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PrecisionArg,
    /// Run directory: checkpoints, metrics.jsonl, plots, caches (default: OUT with `.run` appended).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Checkpoint files kept (newest).
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Continue the run in --checkpoint-dir (finished stages are skipped; the running one resumes bit for bit).
    #[arg(long)]
    pub resume: bool,
    /// Held-out evaluation every K steps (also at the start and the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    /// Held-out sequences per evaluation (at most).
    #[arg(long, default_value_t = 64)]
    pub eval_sequences: usize,
    /// Recompute activations in the backward pass (less memory, more time).
    #[arg(long)]
    pub recompute: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the data order (and of teacher sampling and trace probes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// --data teacher: tokens to generate (default: what the run consumes, plus the held-out share).
    #[arg(long)]
    pub teacher_tokens: Option<usize>,
    /// --data teacher: sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub teacher_temperature: f64,
    /// --data teacher: samples generated together.
    #[arg(long, default_value_t = 8)]
    pub teacher_batch: usize,
    /// Scale granularity of the ternary weights (trained and exported alike).
    #[arg(long, default_value = "per-tensor", value_parser = parse_scale)]
    pub scale: ScaleGranularity,
    #[arg(long, default_value = "2bit", value_parser = parse_layout)]
    pub layout: TernaryLayout,
    #[arg(long, default_value = "int8", value_parser = parse_head)]
    pub head: HeadFormat,
    /// Testing: a tiny random Llama with a byte tokenizer, from this seed, instead of INPUT.
    #[arg(long, hide = true, value_name = "SEED")]
    pub tiny_random: Option<u64>,
    /// Testing: poison a gradient with NaN at this (1-based) step.
    #[arg(long, hide = true)]
    pub debug_nan_at_step: Option<u64>,
    /// Testing: sleep this long after every step.
    #[arg(long, hide = true)]
    pub debug_sleep_ms: Option<u64>,
}

fn load_source(args: &Args) -> anyhow::Result<SourceModel> {
    if let Some(seed) = args.tiny_random {
        return Ok(tern_quantizer::tiny::tiny_random_model(seed));
    }
    let input = args.input.as_ref().context("INPUT is required")?;
    tern_quantizer::load(input).with_context(|| format!("loading {}", input.display()))
}

fn scale_groups(s: ScaleGranularity) -> ScaleGroups {
    match s {
        ScaleGranularity::PerTensor => ScaleGroups::PerTensor,
        ScaleGranularity::PerRow => ScaleGroups::PerRow,
        ScaleGranularity::Group(g) => ScaleGroups::Group(g as usize),
    }
}

/// The recipe the arguments describe.
pub fn recipe(args: &Args) -> anyhow::Result<Recipe> {
    let method = match args.method {
        MethodArg::Ptq => Method::Ptq,
        MethodArg::Ste => Method::Ste,
        MethodArg::Hestia => Method::Hestia,
    };
    let hestia = HestiaOptions {
        rho: args.rho,
        anneal: match args.anneal {
            AnnealArg::Cosine => AnnealShape::Cosine,
            AnnealArg::Linear => AnnealShape::Linear,
        },
        style: match args.temp_style {
            TempStyleArg::Reference => TemperatureStyle::Reference,
            TempStyleArg::Hessian => TemperatureStyle::Hessian,
        },
        alpha: args.alpha,
        kappa: args.kappa,
        per_parameter: args.per_parameter_traces,
    };
    let (ce_weight, kl_weight, temperature) = match args.distill {
        Some(t) => {
            if !(0.0..=1.0).contains(&args.distill_weight) {
                bail!("--distill-weight must be in [0, 1], got {}", args.distill_weight);
            }
            (1.0 - args.distill_weight, args.distill_weight, t)
        }
        None => (1.0, 0.0, 1.0),
    };
    let groups = scale_groups(args.scale);
    let quantizer = method.quantizer();
    let hestia_opt = (method == Method::Hestia).then_some(hestia);
    let e2e = TrainConfig {
        steps: args.steps,
        seq_len: args.seq_len,
        batch_size: args.batch,
        grad_accum: args.grad_accum,
        lr: args.lr,
        min_lr: args.min_lr,
        schedule: match args.schedule {
            Schedule::Cosine => ScheduleKind::Cosine,
            Schedule::Wsd => ScheduleKind::Wsd,
        },
        warmup_steps: args.warmup.unwrap_or((args.steps / 10).min(10)),
        decay_steps: match args.schedule {
            Schedule::Wsd => args.decay_steps.unwrap_or(args.steps / 5),
            Schedule::Cosine => 0,
        },
        weight_decay: args.weight_decay,
        max_grad_norm: (args.clip > 0.0).then_some(args.clip),
        act_quant: !args.no_act_quant,
        quantizer,
        scale_groups: groups,
        hestia: hestia_opt,
        ce_weight,
        kl_weight,
        temperature,
        seed: args.seed,
        recompute: args.recompute,
        eval_every: args.eval_every,
        eval_windows: args.eval_sequences,
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: args.keep_checkpoints,
        ..TrainConfig::default()
    };
    let blockwise = BlockwiseConfig {
        steps_per_block: args.block_steps,
        batch_size: args.block_batch,
        windows: args.block_windows,
        eval_windows: args.block_eval_sequences,
        lr: args.block_lr,
        min_lr: args.block_min_lr,
        warmup_steps: args.block_warmup.min(args.block_steps),
        weight_decay: args.weight_decay,
        max_grad_norm: (args.clip > 0.0).then_some(args.clip),
        inputs: match args.block_inputs {
            InputsArg::Fp => BlockInputs::FullPrecision,
            InputsArg::Quantized => BlockInputs::Quantized,
        },
        normalize: !args.block_plain_mse,
        act_quant: !args.no_act_quant,
        quantizer,
        scale_groups: groups,
        hestia: hestia_opt,
        precisions: Vec::new(),
        matmul: String::new(),
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: args.keep_checkpoints,
    };
    let stages = match (method, args.recipe) {
        (Method::Ptq, _) => Vec::new(),
        (_, RecipeArg::E2e) => vec![Stage::EndToEnd(e2e)],
        (_, RecipeArg::Blockwise) => vec![Stage::Blockwise(blockwise)],
        (_, RecipeArg::BlockwiseE2e) => vec![Stage::Blockwise(blockwise), Stage::EndToEnd(e2e)],
    };
    let teacher = args.data.iter().any(|d| d == "teacher");
    if teacher && args.data.len() > 1 {
        bail!("--data teacher cannot be combined with text files");
    }
    if method != Method::Ptq && args.data.is_empty() {
        bail!(
            "--method {:?} needs training data: --data FILE (repeatable) or --data teacher",
            args.method
        );
    }
    let needs_traces = (method == Method::Hestia && args.alpha != 0.0) || args.budget.is_some();
    let traces = match (&args.traces, needs_traces) {
        (_, false) => TraceSource::None,
        (Some(p), true) => TraceSource::File(p.clone()),
        (None, true) => TraceSource::Compute(TraceConfig {
            method: match args.trace_method {
                TraceMethodArg::Hutchinson => TraceMethod::Hutchinson { probes: args.probes },
                TraceMethodArg::Hutchpp => TraceMethod::HutchPlusPlus {
                    sketch: args.sketch,
                    queries: args.queries,
                },
            },
            batches: args.trace_batches,
            seq_len: args.seq_len,
            seed: args.seed,
            ..TraceConfig::default()
        }),
    };
    Ok(Recipe {
        method,
        data: DataSpec {
            files: if teacher {
                Vec::new()
            } else {
                args.data.iter().map(PathBuf::from).collect()
            },
            teacher: teacher.then(|| TeacherDataOptions {
                tokens: args.teacher_tokens.unwrap_or(0),
                sample_len: args.seq_len + 1,
                batch: args.teacher_batch,
                temperature: args.teacher_temperature,
                seed: args.seed,
                ..TeacherDataOptions::default()
            }),
            eval_file: args.eval_data.clone(),
            held_out: args.held_out,
        },
        seq_len: args.seq_len,
        stages,
        traces,
        hestia,
        export: PtqOptions {
            scale: args.scale,
            layout: args.layout,
            head: args.head,
        },
        metadata: Vec::new(),
        mixed: args.budget.map(|budget| MixedSpec {
            budget,
            int4_group: args.int4_group,
            random_seed: args.random_assignment,
        }),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // The device comes first: without a usable GPU, `--device cuda` fails before anything is loaded or computed.
    match args.device {
        Device::Cpu => {
            let backend = cpu_backend(args.precision);
            let kernel = backend.matmul_kernel_name().to_string();
            run_on(&backend, kernel, args)
        }
        Device::Cuda => {
            let (backend, info) = cuda_backend_with_info()?;
            let kernel = format!("CUDA {}", info["gemm"].as_str().unwrap_or("?"));
            run_on(&backend, kernel, args)
        }
    }
}

/// The CUDA backend (TF32 matrix products), with what it runs on logged and as JSON.
#[cfg(feature = "cuda")]
pub fn cuda_backend_with_info() -> anyhow::Result<(tern_quantizer::engine::CudaBackend, serde_json::Value)> {
    let backend = tern_quantizer::engine::CudaBackend::new().context("--device cuda")?;
    let i = backend.info();
    let nvrtc = i.nvrtc_version.map_or("?".into(), |(a, b)| format!("{a}.{b}"));
    eprintln!(
        "CUDA: {} (compute capability {}.{}, {} multiprocessors, {:.1} GiB), kernels built for {} with NVRTC {nvrtc}, \
         {:?} matrix products",
        i.name,
        i.compute_capability.0,
        i.compute_capability.1,
        i.multiprocessors,
        i.total_memory as f64 / (1u64 << 30) as f64,
        i.kernel_arch,
        backend.gemm_precision()
    );
    let info = serde_json::json!({
        "name": i.name,
        "compute_capability": format!("{}.{}", i.compute_capability.0, i.compute_capability.1),
        "multiprocessors": i.multiprocessors,
        "memory_bytes": i.total_memory,
        "kernel_arch": i.kernel_arch,
        "nvrtc": nvrtc,
        "driver_version": i.probe.driver_version,
        "gemm": format!("{:?}", backend.gemm_precision()),
    });
    Ok((backend, info))
}

#[cfg(not(feature = "cuda"))]
pub fn cuda_backend_with_info() -> anyhow::Result<(CpuBackend<f32>, serde_json::Value)> {
    bail!("--device cuda: this tern was built without CUDA support (cargo feature `cuda`)")
}

/// Runs the recipe on `backend`, whose matrix-product kernel `kernel` is recorded in the stage configs (a resume
/// on another kernel is refused: its rounding differs).
fn run_on<B: Backend<Elem = f32>>(backend: &B, kernel: String, args: Args) -> anyhow::Result<()> {
    crate::commands::configure_rayon_threads(args.threads)?;
    let mut recipe = recipe(&args)?;
    for stage in &mut recipe.stages {
        match stage {
            Stage::EndToEnd(t) => t.matmul = kernel.clone(),
            Stage::Blockwise(b) => b.matmul = kernel.clone(),
        }
    }
    eprintln!("matrix products: {kernel}");
    let src = load_source(&args)?;
    let run_dir = args.checkpoint_dir.clone().unwrap_or_else(|| {
        let mut s = args.output.clone().into_os_string();
        s.push(".run");
        PathBuf::from(s)
    });
    let debug = DebugOptions {
        nan_gradient_at_step: args.debug_nan_at_step,
        sleep_per_step: args.debug_sleep_ms.map(Duration::from_millis),
        stop_after_step: None,
    };
    let interactive = std::io::stderr().is_terminal();
    let mut ui = Ui::new(interactive);
    ui.run_dir = Some(run_dir.clone());
    let outcome = run_recipe(
        backend,
        &src,
        &recipe,
        &args.output,
        &run_dir,
        args.resume,
        &debug,
        &mut |e| ui.event(e),
    );
    ui.finish();
    let outcome = outcome?;
    let check = outcome.export_check;
    if check.code_mismatches > 0 || check.scale_mismatches > 0 {
        eprintln!(
            "warning: the export's ternarization differs from training's quantizer in {} of {} weights and {} \
             scales",
            check.code_mismatches, check.weights, check.scale_mismatches
        );
    }
    if recipe.method != Method::Ptq {
        for (i, stage) in recipe.stages.iter().enumerate() {
            let dir = if recipe.stages.len() == 1 {
                run_dir.clone()
            } else {
                run_dir.join(format!("stage-{}-{}", i + 1, stage.name()))
            };
            if let Err(e) = crate::commands::plot::plot_run(&dir) {
                eprintln!("warning: plotting {}: {e:#}", dir.display());
            }
        }
        if let Some(g) = outcome.soft_hard_gap {
            eprintln!(
                "soft vs hard forward after the last step: loss {:.4} vs {:.4}, max |Δlogit| {:.4}",
                g.soft_loss, g.hard_loss, g.max_abs_logit_diff
            );
            if g.is_large() {
                eprintln!(
                    "WARNING: the soft and the hard (exported) model differ substantially: the anneal did not \
                     harden the weights; train longer or lower --rho"
                );
            }
        }
        if let Some(f) = outcome.final_eval {
            eprintln!(
                "held-out perplexity: {} at the start → {:.2} at the end",
                outcome.initial_eval.map_or("?".into(), |e| format!("{:.2}", e.ppl)),
                f.ppl
            );
        }
    }
    eprintln!(
        "wrote {} ({} bytes, {:?}); run directory {}",
        args.output.display(),
        outcome.output_bytes,
        recipe.method,
        run_dir.display()
    );
    Ok(())
}

/// Progress bars and log lines for the pipeline's events.
struct Ui {
    interactive: bool,
    run_dir: Option<PathBuf>,
    bar: Option<indicatif::ProgressBar>,
    tokens_per_s_ema: Option<f64>,
    total_steps: u64,
}

impl Ui {
    fn new(interactive: bool) -> Self {
        Self {
            interactive,
            run_dir: None,
            bar: None,
            tokens_per_s_ema: None,
            total_steps: 0,
        }
    }

    fn log(&self, line: String) {
        match (&self.bar, self.interactive) {
            (Some(b), true) => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn skipped_checkpoint(&self, path: &std::path::Path, reason: &str) {
        self.log(format!(
            "warning: passing over the damaged checkpoint {}: {reason}",
            path.display()
        ));
    }

    fn new_bar(&mut self, len: u64, what: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.bar = Some(crate::progress::bar(len, what));
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn event(&mut self, e: PipelineEvent<'_>) {
        match e {
            PipelineEvent::Log(l) => self.log(l),
            PipelineEvent::TeacherData { done, total } => {
                if self.bar.is_none() {
                    self.new_bar(total as u64, "teacher data");
                }
                if let Some(b) = &self.bar {
                    b.set_position(done as u64);
                }
            }
            PipelineEvent::Traces { done, total } => {
                if done == 1 || self.bar.is_none() {
                    self.new_bar(total as u64, "Hessian traces (HVPs)");
                }
                if let Some(b) = &self.bar {
                    b.set_position(done as u64);
                }
            }
            PipelineEvent::TracesReady(table, scales) => {
                self.finish();
                let mut rows: Vec<(&str, f64, f64)> = table
                    .entries
                    .iter()
                    .zip(scales)
                    .map(|(e, &c)| (e.name.as_str(), e.trace, c))
                    .collect();
                rows.sort_by(|a, b| b.1.total_cmp(&a.1));
                let show = |r: &(&str, f64, f64)| format!("{} {:.3e} (scale {:.3})", r.0, r.1, r.2);
                self.log(format!(
                    "Hessian traces of {} tensors; largest: {}; smallest: {}",
                    rows.len(),
                    rows.iter().take(3).map(show).collect::<Vec<_>>().join(", "),
                    rows.iter().rev().take(3).map(show).collect::<Vec<_>>().join(", ")
                ));
            }
            PipelineEvent::StageStarted {
                index,
                count,
                name,
                dir,
                skipped,
            } => {
                self.finish();
                self.log(format!(
                    "stage {}/{count}: {name} in {}{}",
                    index + 1,
                    dir.display(),
                    if skipped { " (finished earlier, skipped)" } else { "" }
                ));
            }
            PipelineEvent::MixedPrecision {
                precisions,
                bytes,
                ternary_bytes,
                frontier,
            } => {
                self.finish();
                let int8 = precisions
                    .iter()
                    .filter(|(_, p)| matches!(p, LinearPrecision::Int8))
                    .count();
                self.log(format!(
                    "mixed precision: {} tensors above ternary ({int8} int8, {} int4); file {bytes} bytes vs \
                     {ternary_bytes} all-ternary (+{:.1}%)",
                    precisions.len(),
                    precisions.len() - int8,
                    100.0 * (bytes as f64 / ternary_bytes.max(1) as f64 - 1.0)
                ));
                for (name, p) in precisions.iter() {
                    self.log(format!("  {name}: {p:?}"));
                }
                if let Some(dir) = &self.run_dir {
                    let path = dir.join("frontier.svg");
                    // The frontier is over the linear weights; shift it by the rest of the file.
                    let rest = ternary_bytes.saturating_sub(frontier.first().map_or(0, |f| f.0));
                    let file: Vec<(u64, f64)> = frontier.iter().map(|&(b, s)| (b + rest, s)).collect();
                    if let Err(e) = crate::commands::plot::frontier_chart(&path, &file, bytes) {
                        self.log(format!("warning: drawing {}: {e:#}", path.display()));
                    }
                }
            }
            PipelineEvent::Train(t) => self.train_event(t),
            PipelineEvent::Blockwise(b) => self.block_event(b),
        }
    }

    fn train_event(&mut self, e: TrainEvent<'_>) {
        match e {
            TrainEvent::Started {
                first_step,
                total_steps,
                resumed_from,
                ..
            } => {
                self.total_steps = total_steps;
                self.new_bar(total_steps, "training");
                if let Some(b) = &self.bar {
                    b.set_position(first_step);
                    b.reset_eta();
                }
                if let Some(p) = resumed_from {
                    self.log(format!("resuming from {} (step {first_step})", p.display()));
                }
            }
            TrainEvent::InitialEval(r) => self.log(format!(
                "step 0: held-out perplexity {:.2} ternarized{}",
                r.eval_ppl.unwrap_or(f64::NAN),
                r.fp_eval_ppl
                    .map(|p| format!(", {p:.2} full precision"))
                    .unwrap_or_default()
            )),
            TrainEvent::Step(r) => {
                if let Some(t) = r.tokens_per_s {
                    self.tokens_per_s_ema = Some(self.tokens_per_s_ema.map_or(t, |e| 0.9 * e + 0.1 * t));
                }
                if let Some(b) = &self.bar {
                    b.set_position(r.step);
                    b.set_message(format!(
                        "loss {:.4} | {:.0} tok/s",
                        r.loss.unwrap_or(f64::NAN),
                        self.tokens_per_s_ema.unwrap_or(0.0)
                    ));
                }
                let log_every = (self.total_steps / 20).max(1);
                if let Some(p) = r.eval_ppl {
                    self.log(format!("step {}: held-out perplexity {p:.2}", r.step));
                } else if !self.interactive && r.step % log_every == 0 {
                    self.log(format!(
                        "step {}/{}: loss {:.4}, lr {:.3e}, grad norm {:.3}, {:.0} tok/s{}",
                        r.step,
                        self.total_steps,
                        r.loss.unwrap_or(f64::NAN),
                        r.lr.unwrap_or(f64::NAN),
                        r.grad_norm.unwrap_or(f64::NAN),
                        r.tokens_per_s.unwrap_or(f64::NAN),
                        r.pressure.map(|p| format!(", pressure {p:.2}")).unwrap_or_default()
                    ));
                }
            }
            TrainEvent::SkippedCheckpoint { path, reason } => self.skipped_checkpoint(path, reason),
            TrainEvent::Checkpoint { .. } | TrainEvent::SoftHardGap(_) => {}
        }
    }

    fn block_event(&mut self, e: BlockwiseEvent<'_>) {
        match e {
            BlockwiseEvent::Activations { done, total, cached } => {
                if cached {
                    self.log(format!("teacher activations: {total} sequences (cached)"));
                    return;
                }
                if done == 1 || self.bar.is_none() {
                    self.new_bar(total as u64, "teacher activations");
                }
                if let Some(b) = &self.bar {
                    b.set_position(done as u64);
                }
            }
            BlockwiseEvent::BlockStarted {
                layer,
                layers,
                first_step,
            } => {
                self.new_bar(0, &format!("block {}/{layers}", layer + 1));
                if first_step > 0 {
                    self.log(format!("resuming block {layer} at its step {first_step}"));
                }
            }
            BlockwiseEvent::Step(r) => {
                if let Some(b) = &self.bar {
                    b.inc(1);
                    b.set_message(format!(
                        "MSE {:.4e} | {:.0} tok/s",
                        r.loss.unwrap_or(f64::NAN),
                        r.tokens_per_s.unwrap_or(0.0)
                    ));
                }
            }
            BlockwiseEvent::BlockDone(rep) => self.log(format!(
                "block {}: held-out MSE {:.4e} (PTQ) → {:.4e} in {:.0} s",
                rep.layer, rep.loss_before, rep.loss_after, rep.seconds
            )),
            BlockwiseEvent::SkippedCheckpoint { path, reason } => self.skipped_checkpoint(path, reason),
            BlockwiseEvent::Checkpoint { .. } => {}
        }
    }
}
