//! `tern`: convert full-precision LLMs to ternary (1.58-bit) models and run them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod progress;

#[derive(Parser)]
#[command(name = "tern", version, about = "Ternary (1.58-bit) LLM quantizer and runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a .tern model's header, hyper-parameters, tokenizer and tensor table.
    Inspect(commands::inspect::Args),
    /// Import a GGUF or Hugging Face checkpoint and ternarize it (absmean PTQ) into a .tern file.
    Convert(commands::convert::Args),
    /// Write a .tern model as GGUF (TQ2_0/TQ1_0/Q2_0) for llama.cpp.
    ExportGguf(commands::export_gguf::Args),
    /// Ternarize a model by PTQ, or train it ternary (STE or Hestia QAT; end to end or block-wise) and export it.
    Quantize(Box<commands::quantize::Args>),
    /// Per-tensor Hessian traces of the full-precision model (table, CSV, heatmap SVG).
    Hessian(commands::hessian::Args),
    /// Draw loss.svg and lr.svg from a training run's metrics.jsonl.
    Plot(commands::plot::Args),
    /// Generate text with a .tern model (streamed), or chat with it when no prompt is given.
    Run(commands::run::Args),
    /// Prompt and generation speed (llama-bench's tests), weight bytes per token and the memory roofline.
    Bench(Box<commands::bench::Args>),
    /// Token ids of a text (like llama-tokenize), from a .tern model, a GGUF vocabulary or a Hugging Face directory.
    Tokenize(commands::tokenize::Args),
    /// Perplexity of a .tern model on a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(commands::perplexity::Args),
    /// Time the training engine's optimizer steps on the CPU or CUDA backend (and dump the model and batch for
    /// the PyTorch comparison of scripts/torch_train_step.py).
    TrainBench(commands::train_bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::ExportGguf(a) => commands::export_gguf::run(a),
        Command::Quantize(a) => commands::quantize::run(*a),
        Command::Hessian(a) => commands::hessian::run(a),
        Command::Plot(a) => commands::plot::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Bench(a) => commands::bench::run(*a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Perplexity(a) => commands::perplexity::run(a),
        Command::TrainBench(a) => commands::train_bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: the whole cause chain joined.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
