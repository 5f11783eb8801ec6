//! `tern`: convert full-precision LLMs to ternary (1.58-bit) models and run them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => commands::inspect::run(a),
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
