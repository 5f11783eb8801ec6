//! `tern export-gguf MODEL.tern -o OUT.gguf`: the same ternary weights as a GGUF for llama.cpp.

use std::path::PathBuf;

use anyhow::Context;
use tern_format::{MappedFile, ModelView};
use tern_quantizer::gguf_export::{export_gguf, TernaryGgufType};

#[derive(clap::Args)]
pub struct Args {
    /// Input .tern model.
    pub model: PathBuf,
    /// Output GGUF file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Ternary GGUF type for rows that are multiples of 256 (others use Q2_0): tq2_0 or tq1_0.
    #[arg(long, default_value = "tq2_0", value_parser = parse_type)]
    pub r#type: TernaryGgufType,
}

fn parse_type(s: &str) -> Result<TernaryGgufType, String> {
    match s {
        "tq2_0" => Ok(TernaryGgufType::Tq2_0),
        "tq1_0" => Ok(TernaryGgufType::Tq1_0),
        _ => Err(format!("expected tq2_0 or tq1_0, got {s:?}")),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = MappedFile::open(&args.model)?;
    let view = ModelView::parse(&file).with_context(|| format!("{}", args.model.display()))?;
    let bytes = export_gguf(&view, args.r#type)?;
    tern_format::write_atomic(&args.output, &bytes).with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("wrote {} ({} bytes)", args.output.display(), bytes.len());
    Ok(())
}
