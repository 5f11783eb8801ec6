//! `tern convert INPUT -o OUT.tern`: import a checkpoint and ternarize it (absmean PTQ).

use std::path::PathBuf;

use anyhow::Context;
use tern_format::TernaryLayout;
use tern_quantizer::ptq::{FullPrecision, HeadFormat, PtqOptions, ScaleGranularity};

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or a Hugging Face model directory (config.json, tokenizer.json, *.safetensors).
    pub input: PathBuf,
    /// Output .tern file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Scale granularity of the ternary weights: per-tensor, per-row or group:G (G a multiple of 32).
    #[arg(long, default_value = "per-tensor", value_parser = parse_scale)]
    pub scale: ScaleGranularity,
    /// Ternary packing: 2bit (fast kernels) or base3 (1.625 bits/weight).
    #[arg(long, default_value = "2bit", value_parser = parse_layout)]
    pub layout: TernaryLayout,
    /// Storage of the embedding and output head: int8 (per row), int4[:G] (per group, default G 32) or f16.
    #[arg(long, default_value = "int8", value_parser = parse_head)]
    pub head: HeadFormat,
    /// Do not quantize: store every matrix as f16 or f32 (the full-precision reference the runtime can run,
    /// e.g. for `tern perplexity --reference`).
    #[arg(long, value_name = "f16|f32", value_parser = parse_keep)]
    pub keep: Option<FullPrecision>,
}

pub fn parse_keep(s: &str) -> Result<FullPrecision, String> {
    match s {
        "f16" => Ok(FullPrecision::F16),
        "f32" => Ok(FullPrecision::F32),
        _ => Err(format!("expected f16 or f32, got {s:?}")),
    }
}

pub fn parse_scale(s: &str) -> Result<ScaleGranularity, String> {
    match s {
        "per-tensor" => Ok(ScaleGranularity::PerTensor),
        "per-row" => Ok(ScaleGranularity::PerRow),
        _ => match s.strip_prefix("group:").map(str::parse::<u32>) {
            Some(Ok(g)) if g > 0 && g % 32 == 0 => Ok(ScaleGranularity::Group(g)),
            _ => Err(format!(
                "expected per-tensor, per-row or group:G with G a positive multiple of 32, got {s:?}"
            )),
        },
    }
}

pub fn parse_layout(s: &str) -> Result<TernaryLayout, String> {
    match s {
        "2bit" => Ok(TernaryLayout::TwoBit),
        "base3" => Ok(TernaryLayout::Base3),
        _ => Err(format!("expected 2bit or base3, got {s:?}")),
    }
}

pub fn parse_head(s: &str) -> Result<HeadFormat, String> {
    match s {
        "int8" => Ok(HeadFormat::Int8),
        "f16" => Ok(HeadFormat::F16),
        "int4" => Ok(HeadFormat::Int4(32)),
        _ => match s.strip_prefix("int4:").map(str::parse::<u32>) {
            Some(Ok(g)) if g > 0 && g % 32 == 0 => Ok(HeadFormat::Int4(g)),
            _ => Err(format!(
                "expected int8, f16, int4 or int4:G (G a multiple of 32), got {s:?}"
            )),
        },
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = PtqOptions {
        scale: args.scale,
        layout: args.layout,
        head: args.head,
    };
    let loading = || format!("loading {}", args.input.display());
    let writer = match args.keep {
        Some(element) => {
            let src = tern_quantizer::import::source::load(&args.input).with_context(loading)?;
            tern_quantizer::ptq::full_precision_model(&src, element)?
        }
        None => {
            // One source tensor at a time (per thread), straight from the mapped file.
            let src = tern_quantizer::import::source::StreamingSource::open(&args.input).with_context(loading)?;
            let bar = crate::progress::bar(src.header().tensors.len() as u64, "ternarizing");
            let w = tern_quantizer::ptq::ptq_model_streaming(&src, &opts, &mut |done, _, name| {
                bar.set_position(done as u64);
                bar.set_message(name.to_string());
            })?;
            bar.finish_and_clear();
            w
        }
    };
    let written = writer
        .write_file(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    drop(writer);
    // Read the file back as any user of it will: every offset, length and checksum validated.
    let file = tern_format::MappedFile::open(&args.output)?;
    let tensors = tern_format::ModelView::parse(&file)?.tensor_count();
    eprintln!("wrote {} ({written} bytes, {tensors} tensors)", args.output.display());
    Ok(())
}
