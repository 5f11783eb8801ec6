//! The model that ships in `models/` (README's main job runs it): it loads, generates, and keeps the perplexity
//! recorded in `models/smollm2-135m-ternary.json` (measured by `scripts/experiments/evaluate.sh`'s `tern
//! perplexity` when the model was made) on the first chunk of `assets/lee.txt`, text no training run saw.
//!
//! Tolerance: 2% of the recorded perplexity. The integer kernels of every table are exact and the f32 epilogue is
//! fixed, so tables differ only in the float attention and normalisation paths (FMA contraction, F16C vs
//! software f16 conversion); measured on the shipped model: AVX-512 and AVX2 identical (289.94), scalar 0.5% higher
//! (291.37).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

fn record() -> serde_json::Value {
    let path = root().join("models/smollm2-135m-ternary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn model() -> PathBuf {
    let path = root().join("models/smollm2-135m-ternary.tern");
    assert!(path.is_file(), "the shipped model {} is missing", path.display());
    path
}

fn perplexity(model: &Path, text: &Path, chunks: u64, kernels: Option<&str>) -> f64 {
    let mut cmd = tern();
    cmd.args(["perplexity", "-m"]).arg(model).arg("-f").arg(text).args([
        "--ctx",
        "512",
        "--chunks",
        &chunks.to_string(),
        "-t",
        "2",
    ]);
    if let Some(k) = kernels {
        cmd.env("TERN_KERNELS", k);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Final estimate: PPL = "))
        .unwrap_or_else(|| panic!("no estimate in {stdout}"));
    line["Final estimate: PPL = ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn shipped_model_keeps_its_recorded_perplexity() {
    let rec = record();
    let check = &rec["check"];
    let chunks = check["chunks"].as_u64().unwrap();
    let recorded = check["ppl"].as_f64().unwrap();
    let text = root().join(check["text"].as_str().unwrap());
    let ppl = perplexity(&model(), &text, chunks, None);
    let rel = (ppl - recorded).abs() / recorded;
    assert!(
        rel <= 0.02,
        "perplexity {ppl} vs recorded {recorded} ({:.3}% off)",
        rel * 100.0
    );
}

#[test]
fn shipped_model_generates() {
    let out = tern()
        .args(["run", "-m"])
        .arg(model())
        .args(["-p", "The capital of France is", "-n", "12", "--temp", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let continuation = stdout
        .trim_start()
        .strip_prefix("The capital of France is")
        .unwrap_or(&stdout);
    assert!(
        continuation.split_whitespace().count() >= 3,
        "too little text generated: {stdout:?} ({stderr})"
    );
}
