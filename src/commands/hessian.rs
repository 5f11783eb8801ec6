//! `tern hessian MODEL --data FILE [--probes N --method hutchinson|hutchpp --batches B --seq-len L]`: per-tensor
//! Hessian traces of the full-precision model (what Hestia's temperatures and HAWQ-style sensitivities use):
//! prints the table, writes it as CSV and draws a heatmap (layer × tensor kind, log scale) as SVG.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use tern_quantizer::data::{document_separator, tokenize_files, PackedData};
use tern_quantizer::hessian::{
    calibration_batches, compute_traces, temperature_scales, TemperatureScaleOptions, TraceConfig, TraceMethod,
    TraceTable,
};

use crate::commands::quantize::TraceMethodArg;

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or a Hugging Face model directory (the full-precision model).
    #[arg(required_unless_present = "tiny_random")]
    pub model: Option<PathBuf>,
    /// Calibration text (UTF-8); the sequences are drawn from it as from training data.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "hutchinson")]
    pub method: TraceMethodArg,
    /// Hutchinson probes per batch.
    #[arg(long, default_value_t = 40)]
    pub probes: usize,
    /// Hutch++ sketch and query vectors per batch.
    #[arg(long, default_value_t = 10)]
    pub sketch: usize,
    #[arg(long, default_value_t = 20)]
    pub queries: usize,
    /// Calibration sequences.
    #[arg(long, default_value_t = 5)]
    pub batches: usize,
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Central-difference step of the Hessian-vector products, relative to each tensor's norm.
    #[arg(long, default_value_t = 1e-3)]
    pub rel_eps: f64,
    /// Temperature-scale column: Hestia's α and κ.
    #[arg(long, default_value_t = 0.4)]
    pub alpha: f64,
    #[arg(long, default_value_t = 1.0)]
    pub kappa: f64,
    #[arg(long)]
    pub per_parameter: bool,
    /// CSV output (default: traces.csv next to --out-svg, or in the current directory).
    #[arg(long, default_value = "traces.csv")]
    pub out: PathBuf,
    /// Heatmap output (SVG).
    #[arg(long, default_value = "traces.svg")]
    pub out_svg: PathBuf,
    /// Probe only tensors whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Matrix products (as `tern quantize --precision`).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: crate::commands::quantize::PrecisionArg,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Testing: a tiny random Llama instead of MODEL.
    #[arg(long, hide = true)]
    pub tiny_random: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::commands::configure_rayon_threads(args.threads)?;
    let src = match (&args.model, args.tiny_random) {
        (_, Some(seed)) => tern_quantizer::tiny::tiny_random_model(seed),
        (Some(p), None) => tern_quantizer::load(p).with_context(|| format!("loading {}", p.display()))?,
        (None, None) => anyhow::bail!("MODEL is required"),
    };
    let eos = document_separator(&src.config);
    let (stream, _) = tokenize_files(&src.tokenizer_json, eos, std::slice::from_ref(&args.data), None)?;
    if stream.is_empty() {
        anyhow::bail!("{} holds no text to calibrate on", args.data.display());
    }
    let data = PackedData::split(&stream, args.seq_len, 0.0)
        .with_context(|| format!("packing {} into sequences of {}", args.data.display(), args.seq_len))?;
    let batches = calibration_batches(&data, args.batches, args.seed)?;
    let config = TraceConfig {
        method: match args.method {
            TraceMethodArg::Hutchinson => TraceMethod::Hutchinson { probes: args.probes },
            TraceMethodArg::Hutchpp => TraceMethod::HutchPlusPlus {
                sketch: args.sketch,
                queries: args.queries,
            },
        },
        batches: args.batches,
        seq_len: args.seq_len,
        seed: args.seed,
        rel_eps: args.rel_eps,
        only: args.only.clone(),
    };
    let bar = crate::progress::bar(0, "Hessian-vector products");
    let started = std::time::Instant::now();
    let backend = crate::commands::quantize::cpu_backend(args.precision);
    eprintln!("matrix products: {}", backend.matmul_kernel_name());
    let table = compute_traces(&backend, &src, &batches, &config, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let scales = temperature_scales(
        &table,
        &TemperatureScaleOptions {
            alpha: args.alpha,
            kappa: args.kappa,
            per_parameter: args.per_parameter,
        },
    )?;
    // Table first, so nothing is written if printing fails.
    println!(
        "{:<28} {:>10} {:>14} {:>14} {:>8}",
        "tensor", "params", "trace", "trace/param", "T scale"
    );
    for (e, c) in table.entries.iter().zip(&scales) {
        println!(
            "{:<28} {:>10} {:>14.5e} {:>14.5e} {:>8.4}",
            e.name,
            e.params,
            e.trace,
            e.per_parameter(),
            c
        );
    }
    println!(
        "{} tensors, {} gradient evaluations in {:.1} s ({:?}, {} × {} tokens)",
        table.entries.len(),
        table.gradient_evaluations,
        started.elapsed().as_secs_f64(),
        config.method,
        args.batches,
        args.seq_len
    );
    tern_format::write_atomic(&args.out, table.to_csv(&scales).as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    heatmap(&table, &args.out_svg)?;
    eprintln!("wrote {} and {}", args.out.display(), args.out_svg.display());
    Ok(())
}

/// Layer × tensor kind, colour = log10 of the trace (traces ≤ 0 drawn grey).
pub fn heatmap(table: &TraceTable, path: &Path) -> anyhow::Result<()> {
    const KINDS: [&str; 7] = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let layers = table.entries.iter().filter_map(|e| e.layer).max().map_or(0, |l| l + 1);
    let logs: Vec<f64> = table
        .entries
        .iter()
        .filter(|e| e.trace > 0.0)
        .map(|e| e.trace.log10())
        .collect();
    let lo = logs.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (160 + 22 * layers.max(1) as u32, 330)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Hessian trace per tensor (log10, {lo:.1} … {hi:.1})"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(90)
        .build_cartesian_2d(0..layers.max(1), 0..KINDS.len())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("layer")
        .y_labels(KINDS.len())
        .y_label_formatter(&|k| KINDS.get(*k).map_or(String::new(), |s| s.to_string()))
        .draw()
        .map_err(|e| err(&e))?;
    let span = (hi - lo).max(1e-9);
    chart
        .draw_series(table.entries.iter().filter_map(|e| {
            let l = e.layer?;
            let k = KINDS.iter().position(|&k| k == e.kind())?;
            let color = if e.trace > 0.0 {
                let t = (e.trace.log10() - lo) / span;
                // Blue (low) → red (high).
                RGBColor((255.0 * t) as u8, 60, (255.0 * (1.0 - t)) as u8)
            } else {
                RGBColor(190, 190, 190)
            };
            Some(Rectangle::new([(l, k), (l + 1, k + 1)], color.filled()))
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
