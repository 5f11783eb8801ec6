//! `tern quantize INPUT -o OUT.tern --method ptq|ste ...`: ternarize a model by PTQ, or train it ternary with
//! STE quantization-aware training on text (or on text the model generates itself) and export the result.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tern_format::TernaryLayout;
use tern_quantizer::data::{document_separator, tokenize_files, PackedData, DEFAULT_HELD_OUT_FRACTION};
use tern_quantizer::engine::CpuBackend;
use tern_quantizer::ptq::{HeadFormat, PtqOptions, ScaleGranularity};
use tern_quantizer::teacher::{generate_teacher_data, TeacherDataOptions};
use tern_quantizer::train::{
    check_export_matches_engine, initial_eval_from_metrics, train, trained_source_model, DebugOptions, ScheduleKind,
    TrainConfig, TrainEvent,
};
use tern_quantizer::SourceModel;

use crate::commands::convert::{parse_head, parse_layout, parse_scale};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Absmean post-training ternarization (what `tern convert` does).
    Ptq,
    /// Straight-through-estimator quantization-aware training (BitNet b1.58), then absmean export.
    Ste,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// Linear warmup, then cosine to --min-lr.
    Cosine,
    /// Warmup, constant, then a cosine decay over the last --decay-steps (default a fifth of the run).
    Wsd,
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
    pub method: Method,
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
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
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
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Run directory: checkpoints, metrics.jsonl, plots, token caches (default: OUT with `.run` appended).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Checkpoint files kept (newest).
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Continue the run in --checkpoint-dir from its newest checkpoint (bit-for-bit).
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
    /// Seed of the data order (and of teacher sampling).
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
    /// Export: scale granularity (STE trains per-tensor scales, so it exports per-tensor).
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

fn write_model(src: &SourceModel, opts: &PtqOptions, output: &Path) -> anyhow::Result<usize> {
    let bar = crate::progress::bar(src.tensors.len() as u64, "ternarizing");
    let writer = tern_quantizer::ptq::ptq_model(src, opts, &mut |done, _, name| {
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    })?;
    bar.finish_and_clear();
    let bytes = writer.to_bytes()?;
    tern_format::write_atomic(output, &bytes).with_context(|| format!("writing {}", output.display()))?;
    Ok(bytes.len())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.device == Device::Cuda {
        bail!("CUDA backend not built yet: use --device cpu");
    }
    if let Some(k) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(k)
            .build_global()
            .context("configuring the thread pool")?;
    }
    let opts = PtqOptions {
        scale: args.scale,
        layout: args.layout,
        head: args.head,
    };
    let src = load_source(&args)?;
    if args.method == Method::Ptq {
        let bytes = write_model(&src, &opts, &args.output)?;
        eprintln!("wrote {} ({bytes} bytes, absmean PTQ)", args.output.display());
        return Ok(());
    }
    if args.scale != ScaleGranularity::PerTensor {
        bail!("--method ste trains per-tensor absmean scales (as BitNet b1.58), so it exports --scale per-tensor");
    }
    let run_dir = args.checkpoint_dir.clone().unwrap_or_else(|| {
        let mut s = args.output.clone().into_os_string();
        s.push(".run");
        PathBuf::from(s)
    });
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;

    let (ce_weight, kl_weight, temperature) = match args.distill {
        Some(t) => {
            if !(0.0..=1.0).contains(&args.distill_weight) {
                bail!("--distill-weight must be in [0, 1], got {}", args.distill_weight);
            }
            (1.0 - args.distill_weight, args.distill_weight, t)
        }
        None => (1.0, 0.0, 1.0),
    };
    let config = TrainConfig {
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
    config.validate()?;
    let backend = CpuBackend::<f32>::new();

    // ---- data ----
    if args.data.is_empty() {
        bail!("--method ste needs training data: --data FILE (repeatable) or --data teacher");
    }
    let eos = document_separator(&src.config);
    let stream = if args.data.iter().any(|d| d == "teacher") {
        if args.data.len() > 1 {
            bail!("--data teacher cannot be combined with text files");
        }
        let consumed = config.steps as usize * config.windows_per_step() as usize * (config.seq_len + 1);
        let tokens = args
            .teacher_tokens
            .unwrap_or((consumed as f64 / (1.0 - args.held_out.clamp(0.0, 0.9))).ceil() as usize);
        let topts = TeacherDataOptions {
            tokens,
            sample_len: config.seq_len + 1,
            batch: args.teacher_batch,
            temperature: args.teacher_temperature,
            seed: args.seed,
            ..TeacherDataOptions::default()
        };
        let bar = crate::progress::bar(tokens as u64, "teacher data");
        let stream = generate_teacher_data(&backend, &src, &topts, &run_dir.join("teacher-data"), &mut |d, _| {
            bar.set_position(d as u64)
        })?;
        bar.finish_and_clear();
        eprintln!(
            "teacher data: {} tokens (cached in {})",
            stream.len(),
            run_dir.join("teacher-data").display()
        );
        stream
    } else {
        let files: Vec<PathBuf> = args.data.iter().map(PathBuf::from).collect();
        let (stream, report) = tokenize_files(&src.tokenizer_json, eos, &files, Some(&run_dir.join("cache")))?;
        eprintln!(
            "training text: {} tokens from {} file(s){}",
            report.tokens,
            files.len(),
            if report.from_cache { " (token cache)" } else { "" }
        );
        stream
    };
    let data = match &args.eval_data {
        Some(path) => {
            let (eval_stream, _) = tokenize_files(
                &src.tokenizer_json,
                eos,
                std::slice::from_ref(path),
                Some(&run_dir.join("cache")),
            )?;
            PackedData::from_streams(&stream, &eval_stream, config.seq_len)?
        }
        None => PackedData::split(&stream, config.seq_len, args.held_out)?,
    };
    eprintln!(
        "{} training and {} held-out sequences of {} tokens ({} tokens dropped at the ends); {} tokens per step",
        data.train_windows(),
        data.held_out_windows(),
        config.seq_len,
        data.dropped_tokens(),
        config.tokens_per_step()
    );

    // ---- train ----
    let debug = DebugOptions {
        nan_gradient_at_step: args.debug_nan_at_step,
        sleep_per_step: args.debug_sleep_ms.map(Duration::from_millis),
    };
    let interactive = std::io::stderr().is_terminal();
    let bar = crate::progress::bar(config.steps, "training");
    let mut tokens_per_s_ema: Option<f64> = None;
    let log = |line: String| {
        if interactive {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let log_every = (config.steps / 20).max(1);
    let outcome = train(
        &backend,
        &src,
        &data,
        &config,
        &run_dir,
        args.resume,
        &debug,
        &mut |event| match event {
            TrainEvent::Started {
                first_step,
                resumed_from,
                ..
            } => {
                bar.set_position(first_step);
                bar.reset_eta();
                if let Some(p) = resumed_from {
                    log(format!("resuming from {} (step {first_step})", p.display()));
                }
            }
            TrainEvent::InitialEval(r) => log(format!(
                "step 0: held-out perplexity {:.2} ternarized (PTQ){}",
                r.eval_ppl.unwrap_or(f64::NAN),
                r.fp_eval_ppl
                    .map(|p| format!(", {p:.2} full precision"))
                    .unwrap_or_default()
            )),
            TrainEvent::Step(r) => {
                if let Some(t) = r.tokens_per_s {
                    tokens_per_s_ema = Some(tokens_per_s_ema.map_or(t, |e| 0.9 * e + 0.1 * t));
                }
                bar.set_position(r.step);
                bar.set_message(format!(
                    "loss {:.4} | {:.0} tok/s",
                    r.loss.unwrap_or(f64::NAN),
                    tokens_per_s_ema.unwrap_or(0.0)
                ));
                if let Some(p) = r.eval_ppl {
                    log(format!("step {}: held-out perplexity {p:.2}", r.step));
                } else if !interactive && r.step % log_every == 0 {
                    log(format!(
                        "step {}/{}: loss {:.4}, lr {:.3e}, grad norm {:.3}, {:.0} tok/s",
                        r.step,
                        config.steps,
                        r.loss.unwrap_or(f64::NAN),
                        r.lr.unwrap_or(f64::NAN),
                        r.grad_norm.unwrap_or(f64::NAN),
                        r.tokens_per_s.unwrap_or(f64::NAN)
                    ));
                }
            }
            TrainEvent::Checkpoint { .. } => {}
            TrainEvent::SoftHardGap(_) => {}
        },
    );
    bar.finish_and_clear();
    let outcome = outcome?;

    // ---- export ----
    let check = check_export_matches_engine(&backend, &outcome.layout, &outcome.latent)?;
    if check.code_mismatches > 0 || check.scale_mismatches > 0 {
        eprintln!(
            "warning: the export's ternarization differs from training's fake quantization in {} of {} weights \
             and {} of {} scales",
            check.code_mismatches, check.weights, check.scale_mismatches, check.tensors
        );
    }
    let mut trained = trained_source_model(&src, &outcome.layout, &outcome.latent)?;
    let objective = if kl_weight == 0.0 {
        "ce".to_string()
    } else {
        format!("ce:{ce_weight},kl:{kl_weight}@T{temperature}")
    };
    for (k, v) in [
        ("training.method", "ste".to_string()),
        ("training.steps", config.steps.to_string()),
        ("training.tokens", (config.steps * config.tokens_per_step()).to_string()),
        (
            "training.activations",
            if config.act_quant { "int8" } else { "f16" }.to_string(),
        ),
        ("training.objective", objective),
        ("training.held_out_ppl", format!("{:.4}", outcome.final_eval.ppl)),
    ] {
        trained.metadata.push((k.to_string(), v));
    }
    let bytes = write_model(&trained, &opts, &args.output)?;
    let initial = outcome
        .initial_eval
        .map(|e| e.ppl)
        .or_else(|| initial_eval_from_metrics(&run_dir).and_then(|r| r.eval_ppl));
    let summary = serde_json::json!({
        "output": args.output.display().to_string(),
        "steps": config.steps,
        "seq_len": config.seq_len,
        "batch": config.batch_size,
        "grad_accum": config.grad_accum,
        "held_out_ppl_ptq": initial,
        "held_out_ppl_fp": initial_eval_from_metrics(&run_dir).and_then(|r| r.fp_eval_ppl),
        "held_out_ppl_final": outcome.final_eval.ppl,
        "held_out_tokens": outcome.final_eval.tokens,
        "train_tokens_per_s": outcome.tokens_per_s,
        "export_code_mismatches": check.code_mismatches,
        "export_scale_mismatches": check.scale_mismatches,
    });
    tern_format::write_atomic(run_dir.join("summary.json"), format!("{summary:#}\n").as_bytes())
        .with_context(|| format!("writing {}", run_dir.join("summary.json").display()))?;
    if let Err(e) = crate::commands::plot::plot_run(&run_dir) {
        eprintln!("warning: plotting {}: {e:#}", run_dir.display());
    }
    eprintln!(
        "held-out perplexity: {} at step 0 (PTQ) → {:.2} after {} steps; {}",
        initial.map_or("?".into(), |p| format!("{p:.2}")),
        outcome.final_eval.ppl,
        config.steps,
        outcome
            .tokens_per_s
            .map_or("no steps run".into(), |t| format!("{t:.0} training tokens/s"))
    );
    eprintln!(
        "wrote {} ({bytes} bytes); run directory {}",
        args.output.display(),
        run_dir.display()
    );
    Ok(())
}
