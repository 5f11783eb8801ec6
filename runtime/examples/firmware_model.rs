//! The host side of examples/cortex-m: writes the tiny ternary model the firmware embeds (made by the
//! runtime's test helpers), and runs the same greedy generation on the host for the check that compares.
//!
//! ```text
//! cargo run -p tern-runtime --example firmware_model -- write OUT.tern
//! cargo run -p tern-runtime --example firmware_model -- greedy MODEL.tern CONTEXT BATCH N_GENERATE ID ID ...
//! ```
//!
//! `greedy` prints `generated: ID ID ...`, the line the firmware prints for the same model and prompt. It
//! uses the scalar kernels, which are what the Cortex-M4 runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;

use common::{build, Dense, Spec};
use tern_format::{AlignedBytes, Architecture, ModelView, ScaleKind, TernaryLayout};
use tern_runtime::{kernels, Model, Sampler, SamplingParams, Session, SessionOptions};

/// A few hundred KB: 4 blocks of hidden 128 (4 heads of 32 over 2 KV heads), FFN 352, vocabulary 512; both
/// ternary layouts and per-row and per-group scales, an f16 embedding and an int8 head.
fn firmware_spec() -> Spec {
    let mut s = Spec::small(Architecture::Llama);
    s.hidden = 128;
    s.layers = 4;
    s.heads = 4;
    s.kv_heads = 2;
    s.ffn = 352;
    s.vocab = 512;
    s.context = 64;
    s.layouts = vec![TernaryLayout::TwoBit, TernaryLayout::Base3];
    s.scales = vec![ScaleKind::PerRow, ScaleKind::PerGroup(64)];
    s.embedding = Dense::F16;
    s.head = Some(Dense::Int8);
    s
}

fn greedy(model_path: &str, context: usize, batch: usize, n: usize, prompt: &[u32]) -> Result<Vec<u32>, String> {
    let bytes = AlignedBytes::from_slice(&std::fs::read(model_path).map_err(|e| format!("{model_path}: {e}"))?);
    let model = Model::new(ModelView::parse(&bytes).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let opts = SessionOptions::new(context, batch);
    let mut arena = vec![0u8; opts.arena_bytes(model.config()).map_err(|e| e.to_string())?];
    let mut s = Session::new(&model, &mut arena, opts).map_err(|e| e.to_string())?;
    s.set_kernels(&kernels::SCALAR);
    let mut sampler = Sampler::new(SamplingParams::greedy());
    s.prefill(prompt).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for i in 0..n {
        let t = s.sample(&mut sampler).map_err(|e| e.to_string())?;
        out.push(t);
        if i + 1 < n {
            s.decode(t).map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

fn run(args: &[String]) -> Result<(), String> {
    let num = |s: &String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
    match args {
        [cmd, out] if cmd == "write" => {
            let bytes = build(&firmware_spec(), 2024);
            std::fs::write(out, &bytes[..]).map_err(|e| format!("{out}: {e}"))?;
            println!("wrote {out} ({} bytes)", bytes.len());
            Ok(())
        }
        [cmd, model, context, batch, n, prompt @ ..] if cmd == "greedy" && !prompt.is_empty() => {
            let prompt = prompt
                .iter()
                .map(|p| p.parse::<u32>().map_err(|e| format!("{p}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let ids = greedy(model, num(context)?, num(batch)?, num(n)?, &prompt)?;
            let text: Vec<String> = ids.iter().map(u32::to_string).collect();
            println!("generated: {}", text.join(" "));
            Ok(())
        }
        _ => Err("usage: firmware_model write OUT.tern | greedy MODEL.tern CONTEXT BATCH N_GENERATE ID...".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firmware_model: {e}");
            ExitCode::FAILURE
        }
    }
}
