//! `tern train-bench [MODEL] --device cpu|cuda`: times the training engine's optimizer steps on one model and batch
//! (a GGUF or Hugging Face model, or SmolLM2-135M's shape with seeded random weights), and with `--dump DIR`
//! writes the weights, the batch and the settings for `scripts/torch_train_step.py`, which times PyTorch on the
//! very same model and batch and compares the losses (`scripts/gpu-run.sh` runs both).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use tern_format::{Architecture, ModelConfig, RopeStyle};
use tern_quantizer::engine::{
    tiny_config, AdamW, AdamWConfig, Backend, Batch, EngineConfig, LrSchedule, Objective, ParamKind, ParamLayout,
    Parameters, QuantConfig, Recompute, SplitMix64, Transformer,
};

use crate::commands::quantize::{cpu_backend, Device, PrecisionArg};

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or Hugging Face model directory (default: SmolLM2-135M's configuration, random weights).
    pub input: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// CPU matrix products (as `tern quantize --precision`).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PrecisionArg,
    /// CPU threads (rayon; default: all).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Timed optimizer steps (after the warm-up ones).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed first steps (CUDA compiles its attention kernels and warms cuBLAS in the first).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Train W1.58/A8 with the straight-through estimator (what `tern quantize --method ste` runs) instead of
    /// full precision (what the PyTorch comparison runs).
    #[arg(long)]
    pub ternary: bool,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Seed of the random weights (without INPUT) and of the batch.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Recompute activations in the backward pass.
    #[arg(long)]
    pub recompute: bool,
    /// Write weights.safetensors, batch.safetensors and config.json here, before training.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Also write the result (JSON) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// SmolLM2-135M: hidden 576, 30 layers, 9 query and 3 KV heads of 64, FFN 1536, vocabulary 49152, tied.
fn smollm2_config() -> ModelConfig {
    let mut cfg = tiny_config(Architecture::Llama, 576, 30, 9, 3, 64, 1536, 49152, true);
    cfg.rope_theta = 100_000.0;
    cfg.context_length = 8192;
    cfg
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.device {
        Device::Cpu => {
            crate::commands::configure_rayon_threads(args.threads)?;
            let backend = cpu_backend(args.precision);
            let info =
                serde_json::json!({ "matmul": backend.matmul_kernel_name(), "threads": rayon::current_num_threads() });
            eprintln!(
                "CPU: {} matrix products, {} threads",
                backend.matmul_kernel_name(),
                rayon::current_num_threads()
            );
            run_on(&backend, &args, info)
        }
        Device::Cuda => {
            let (backend, info) = crate::commands::quantize::cuda_backend_with_info()?;
            run_on(&backend, &args, info)
        }
    }
}

fn run_on<B: Backend<Elem = f32>>(backend: &B, args: &Args, device_info: serde_json::Value) -> anyhow::Result<()> {
    let (model_cfg, host, source) = match &args.input {
        Some(path) => {
            let src = tern_quantizer::load(path).with_context(|| format!("loading {}", path.display()))?;
            let layout = ParamLayout::new(&src.config);
            let host = tern_quantizer::train::layout_tensors_from_source(&layout, &src)?;
            (src.config, host, path.display().to_string())
        }
        None => {
            let cfg = smollm2_config();
            let layout = ParamLayout::new(&cfg);
            (
                cfg,
                random_weights(&layout, args.seed),
                "SmolLM2-135M shape, random weights".to_string(),
            )
        }
    };
    let engine_cfg = EngineConfig {
        model: model_cfg,
        batch_size: args.batch,
        seq_len: args.seq_len,
        quant: if args.ternary {
            QuantConfig::W158_A8
        } else {
            QuantConfig::FULL_PRECISION
        },
        recompute: if args.recompute {
            Recompute::All
        } else {
            Recompute::None
        },
    };
    let n = engine_cfg.tokens();
    let vocab = model_cfg.vocab_size as u64;
    let mut rng = SplitMix64::new(args.seed ^ 0x5eed);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    let adamw = AdamWConfig::new(LrSchedule::Constant { lr: args.lr });
    let layout = ParamLayout::new(&model_cfg);
    if let Some(dir) = &args.dump {
        dump(dir, &layout, &host, &tokens, &targets, &engine_cfg, &adamw)?;
    }
    let mut model = Transformer::new(backend, engine_cfg.clone())?;
    let mut params = Parameters::from_host(backend, &layout, &host)?;
    drop(host);
    let mut grads = Parameters::zeros(backend, &layout)?;
    let mut optimizer = AdamW::new(backend, &layout, adamw)?;
    let batch = Batch {
        tokens: &tokens,
        targets: &targets,
        teacher_logits: None,
    };
    let (mut losses, mut step_s, mut grad_norms) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..args.warmup + args.steps {
        backend.synchronize()?;
        let t0 = Instant::now();
        let report = model.train_step(
            backend,
            &mut params,
            &mut grads,
            &mut optimizer,
            std::slice::from_ref(&batch),
            &Objective::cross_entropy(),
        )?;
        backend.synchronize()?;
        let dt = t0.elapsed().as_secs_f64();
        losses.push(report.loss);
        grad_norms.push(report.optimizer.grad_norm);
        if step >= args.warmup {
            step_s.push(dt);
        }
        eprintln!(
            "{} step {step}: loss {:.6}, grad norm {:.4}, {:.3} s{}",
            backend.name(),
            report.loss,
            report.optimizer.grad_norm,
            dt,
            if step < args.warmup { " (warm-up)" } else { "" }
        );
    }
    let mut sorted = step_s.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied();
    let result = serde_json::json!({
        "tool": "tern",
        "backend": backend.name(),
        "device": device_info,
        "model": source,
        "parameters": layout.numel(),
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens_per_step": n,
        "ternary": args.ternary,
        "recompute": args.recompute,
        "losses": losses,
        "grad_norms": grad_norms,
        "step_s": step_s,
        "median_step_s": median,
        "tokens_per_s": median.map(|s| n as f64 / s),
        "threads": rayon::current_num_threads(),
    });
    println!("{result}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{result:#}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Matrices N(0, 0.05²) (large enough that the logits spread and the loss is not just ln(vocab)), norm gains 1.
fn random_weights(layout: &ParamLayout, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SplitMix64::new(seed);
    layout
        .specs
        .iter()
        .map(|s| match s.kind {
            ParamKind::Norm => vec![1.0; s.numel()],
            _ => (0..s.numel()).map(|_| (rng.normal() * 0.05) as f32).collect(),
        })
        .collect()
}

fn dump(
    dir: &Path,
    layout: &ParamLayout,
    host: &[Vec<f32>],
    tokens: &[u32],
    targets: &[u32],
    cfg: &EngineConfig,
    adamw: &AdamWConfig,
) -> anyhow::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let weights: Vec<(String, Vec<u8>, Vec<usize>)> = layout
        .specs
        .iter()
        .zip(host)
        .map(|(s, t)| (s.name.clone(), bytemuck_f32(t), s.shape.to_vec()))
        .collect();
    let views = weights
        .iter()
        .map(|(name, bytes, shape)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let path = dir.join("weights.safetensors");
    safetensors::serialize_to_file(views, &None, &path).with_context(|| format!("writing {}", path.display()))?;
    let shape = vec![cfg.batch_size, cfg.seq_len];
    let ids = |v: &[u32]| v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect::<Vec<u8>>();
    let (tb, gb) = (ids(tokens), ids(targets));
    let views = vec![
        ("tokens".to_string(), TensorView::new(Dtype::I64, shape.clone(), &tb)?),
        ("targets".to_string(), TensorView::new(Dtype::I64, shape, &gb)?),
    ];
    let path = dir.join("batch.safetensors");
    safetensors::serialize_to_file(views, &None, &path).with_context(|| format!("writing {}", path.display()))?;
    let m = &cfg.model;
    let config = serde_json::json!({
        "hidden_size": m.hidden_size,
        "n_layers": m.n_layers,
        "n_heads": m.n_heads,
        "n_kv_heads": m.n_kv_heads,
        "head_dim": m.head_dim,
        "ffn_size": m.ffn_size,
        "vocab_size": m.vocab_size,
        "rope_theta": m.rope_theta,
        "rope_style": match m.rope_style { RopeStyle::Interleaved => "interleaved", RopeStyle::Half => "half" },
        "rope_scaling": format!("{:?}", m.rope_scaling),
        "norm_eps": m.norm_eps,
        "tied_embeddings": m.tied_embeddings,
        "arch": format!("{:?}", m.arch),
        "batch": cfg.batch_size,
        "seq_len": cfg.seq_len,
        "lr": match adamw.schedule { LrSchedule::Constant { lr } => lr, _ => f64::NAN },
        "beta1": adamw.beta1,
        "beta2": adamw.beta2,
        "eps": adamw.eps,
        "weight_decay": adamw.weight_decay,
        "max_grad_norm": adamw.max_grad_norm,
        "decay_norms": false,
    });
    let path = dir.join("config.json");
    std::fs::write(&path, format!("{config:#}\n")).with_context(|| format!("writing {}", path.display()))
}

fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
