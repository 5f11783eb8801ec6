//! End to end through the real binary: a tiny model quantized from a tiny text with every method and recipe (PTQ,
//! STE, STE with Hessian-aware mixed precision, Hestia end to end, Hestia block-wise then end to end), then run by
//! the runtime. The runtime's logits on each
//! exported `.tern` must match the quantizer's own hard-quantized forward on the trained latent weights (read from
//! the run's last checkpoint), and `tern run` must generate from it.
//!
//! Tolerance: the exports use an f16 head here, so the two differ by int8-activation rounding, f16 head rounding
//! and summation order only: the 99th percentile of |Δlogit| ≤ 0.5% of the logits' standard deviation, the
//! maximum (a rare rounding-boundary flip) ≤ 3%, and the same greedy token everywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use tern_format::{AlignedBytes, ModelView};
use tern_quantizer::checkpoint::latest_checkpoint;
use tern_quantizer::engine::SplitMix64;
use tern_quantizer::engine::{
    Backend, CpuBackend, EngineConfig, LinearPrecision, ParamLayout, Parameters, QuantConfig, Recompute, Transformer,
};
use tern_quantizer::tiny::tiny_random_model;
use tern_runtime::{session::Logits, KvPrecision, Model, Session, SessionOptions};

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_text(path: &Path) {
    const WORDS: [&str; 14] = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "red", "house", "big", "tree",
    ];
    let mut rng = SplitMix64::new(23);
    let mut out = String::new();
    for s in 0..400 {
        let n = 4 + rng.below(6) as usize;
        let words: Vec<&str> = (0..n).map(|_| WORDS[rng.below(14) as usize]).collect();
        out.push_str(&words.join(" "));
        out.push_str(".\n");
        if s % 8 == 7 {
            out.push('\n');
        }
    }
    std::fs::write(path, out).unwrap();
}

fn quantize(dir: &Path, text: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (out, run) = (dir.join(format!("{name}.tern")), dir.join(format!("{name}.run")));
    let mut args: Vec<String> = [
        "quantize",
        "--tiny-random",
        "3",
        "--data",
        text.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--checkpoint-dir",
        run.to_str().unwrap(),
        "--seq-len",
        "32",
        "--batch",
        "4",
        "--steps",
        "12",
        "--lr",
        "3e-3",
        "--warmup",
        "1",
        "--eval-every",
        "6",
        "--eval-sequences",
        "4",
        "--checkpoint-every",
        "6",
        "--head",
        "f16",
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = tern().args(&args).output().unwrap();
    assert!(
        o.status.success(),
        "{name}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    (out, run)
}

/// The latent weights a run ended with: the newest checkpoint of its last stage.
fn final_latent(run: &Path) -> Vec<Vec<f32>> {
    let stage_dirs: Vec<PathBuf> = {
        let mut d: Vec<PathBuf> = std::fs::read_dir(run)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("stage-")))
            .collect();
        d.sort();
        d
    };
    let dir = stage_dirs.last().cloned().unwrap_or_else(|| run.to_path_buf());
    latest_checkpoint(&dir)
        .unwrap()
        .checkpoint
        .tensors
        .into_iter()
        .map(|t| t.weights)
        .collect()
}

fn check_parity(tern_file: &Path, latent: &[Vec<f32>], integer: &[(String, LinearPrecision)]) {
    let src = tiny_random_model(3);
    let bytes = AlignedBytes::from_slice(&std::fs::read(tern_file).unwrap());
    let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();
    let tokens: Vec<u32> = "the big dog ran to the red house".bytes().map(u32::from).collect();
    let n = tokens.len();
    let sopts = SessionOptions::new(64, 64).with_kv(KvPrecision::F32);
    let mut arena = vec![0u8; sopts.arena_bytes(model.config()).unwrap()];
    let mut session = Session::new(&model, &mut arena, sopts).unwrap();
    session.forward(&tokens, Logits::All).unwrap();
    let vocab = src.config.vocab_size as usize;
    let runtime: Vec<f32> = (0..n).flat_map(|i| session.logits_row(i).unwrap().to_vec()).collect();

    let backend = CpuBackend::<f32>::new();
    let layout = ParamLayout::new(&src.config);
    let mut engine_model = Transformer::new(
        &backend,
        EngineConfig {
            model: src.config,
            batch_size: 1,
            seq_len: n,
            quant: QuantConfig::W158_A8,
            recompute: Recompute::None,
        },
    )
    .unwrap();
    for (name, p) in integer {
        engine_model.set_precision(layout.find(name).unwrap(), *p).unwrap();
    }
    let params = Parameters::from_host(&backend, &layout, latent).unwrap();
    let engine = backend
        .download(engine_model.forward_logits(&backend, &params, &tokens).unwrap())
        .unwrap();
    let mean = engine.iter().map(|&x| x as f64).sum::<f64>() / engine.len() as f64;
    let std = (engine.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / engine.len() as f64).sqrt();
    let max_diff = engine
        .iter()
        .zip(&runtime)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    let mut diffs: Vec<f64> = engine.iter().zip(&runtime).map(|(a, b)| (a - b).abs() as f64).collect();
    diffs.sort_by(f64::total_cmp);
    let p99 = diffs[diffs.len() * 99 / 100];
    eprintln!(
        "{}: logit std {std:.4}, max |engine − runtime| {max_diff:.5} ({:.2}% of std), p99 {p99:.5}",
        tern_file.display(),
        100.0 * max_diff / std
    );
    assert!(std > 0.05, "degenerate logits (std {std})");
    // An int8 activation that lands on the other side of a rounding boundary in one implementation moves a
    // whole row of logits by one quantization step: allowed as a rare event (the max), not as the norm (p99).
    assert!(p99 <= 0.005 * std, "p99 difference {p99} vs logit std {std}");
    assert!(max_diff <= 0.03 * std, "max difference {max_diff} vs logit std {std}");
    let argmax = |row: &[f32]| (0..row.len()).max_by(|&i, &j| row[i].total_cmp(&row[j])).unwrap();
    for i in 0..n {
        assert_eq!(
            argmax(&engine[i * vocab..(i + 1) * vocab]),
            argmax(&runtime[i * vocab..(i + 1) * vocab]),
            "{}: greedy token at {i}",
            tern_file.display()
        );
    }
    // And the CLI generates from it.
    let o = tern()
        .args([
            "run",
            "-m",
            tern_file.to_str().unwrap(),
            "-p",
            "the cat",
            "-n",
            "8",
            "--temp",
            "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!o.stdout.is_empty());
}

#[test]
fn every_method_exports_a_model_the_runtime_runs_as_trained() {
    let dir = temp_dir("methods");
    let text = dir.join("text.txt");
    write_text(&text);
    // PTQ: the source weights themselves, hard-quantized.
    let (ptq, _) = quantize(&dir, &text, "ptq", &["--method", "ptq"]);
    let src = tiny_random_model(3);
    let layout = ParamLayout::new(&src.config);
    let source = tern_quantizer::train::layout_tensors_from_source(&layout, &src).unwrap();
    check_parity(&ptq, &source, &[]);
    for (name, extra) in [
        ("ste", vec!["--method", "ste"]),
        (
            "hestia",
            vec!["--method", "hestia", "--trace-batches", "2", "--probes", "2"],
        ),
        (
            "ste-mixed-precision",
            vec![
                "--method",
                "ste",
                "--budget",
                "15%",
                "--trace-batches",
                "2",
                "--probes",
                "2",
            ],
        ),
        (
            "hestia-blockwise",
            vec![
                "--method",
                "hestia",
                "--alpha",
                "0",
                "--recipe",
                "blockwise+e2e",
                "--block-steps",
                "6",
                "--block-windows",
                "16",
                "--block-eval-sequences",
                "2",
            ],
        ),
    ] {
        let (out, run) = quantize(&dir, &text, name, &extra);
        let latent = final_latent(&run);
        assert_ne!(latent, source, "{name}: training changed nothing");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
        let integer: Vec<(String, LinearPrecision)> =
            serde_json::from_value(summary["integer_tensors"].clone()).unwrap();
        check_parity(&out, &latent, &integer);
        assert_eq!(summary["export_code_mismatches"], 0, "{name}");
        if name.contains("mixed") {
            let n = summary["integer_tensors"].as_array().map_or(0, Vec::len);
            assert!(n > 0, "{name}: no tensor kept above ternary");
            // Re-exporting the finished run in another layout keeps the assignment it trained with (the
            // budget, relative to the all-ternary file, would otherwise pick again for the smaller base-3 file).
            let mut again = extra.clone();
            again.extend(["--resume", "--layout", "base3"]);
            let (out, run) = quantize(&dir, &text, name, &again);
            let resummary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
            let reintegers: Vec<(String, LinearPrecision)> =
                serde_json::from_value(resummary["integer_tensors"].clone()).unwrap();
            assert_eq!(reintegers, integer, "{name}: base-3 re-export changed the assignment");
            check_parity(&out, &latent, &integer);
        }
        assert_eq!(summary["export_scale_mismatches"], 0, "{name}");
    }
    reference_comparison(&dir, &text, &dir.join("ste.tern"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn ppl_line(stdout: &str, prefix: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"))
        .to_string()
}

/// `tern perplexity --reference`: the reference's perplexity is the one it has on its own, a model agrees with
/// itself everywhere, and a ternary student agrees with its full-precision teacher somewhere in between.
fn reference_comparison(dir: &Path, text: &Path, student: &Path) {
    let src = tiny_random_model(3);
    let teacher = dir.join("teacher-f16.tern");
    let w = tern_quantizer::ptq::full_precision_model(&src, tern_quantizer::ptq::FullPrecision::F16).unwrap();
    std::fs::write(&teacher, w.to_bytes().unwrap()).unwrap();
    let ppl = |model: &Path, reference: Option<&Path>| {
        let mut args = vec![
            "perplexity".to_string(),
            "-m".into(),
            model.to_str().unwrap().into(),
            "-f".into(),
            text.to_str().unwrap().into(),
            "--ctx".into(),
            "64".into(),
            "--chunks".into(),
            "6".into(),
        ];
        if let Some(r) = reference {
            args.extend(["--reference".into(), r.to_str().unwrap().into()]);
        }
        let o = tern().args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let alone = ppl(&teacher, None);
    let compared = ppl(student, Some(&teacher));
    let teacher_ppl = ppl_line(&alone, "Final estimate: PPL = ");
    let reference = ppl_line(&compared, "Reference: PPL = ");
    let number = |l: &str, p: &str| l.trim_start_matches(p).split_whitespace().next().unwrap().to_string();
    assert_eq!(
        number(&reference, "Reference: PPL = "),
        number(&teacher_ppl, "Final estimate: PPL = "),
        "{reference} vs {teacher_ppl}"
    );
    let share = |l: &str| -> f64 {
        let pct = l.rsplit('(').next().unwrap().trim_end_matches("%)");
        pct.parse().unwrap()
    };
    let student_share = share(&reference);
    assert!(student_share > 0.0 && student_share < 100.0, "{reference}");
    let itself = ppl_line(&ppl(&teacher, Some(&teacher)), "Reference: PPL = ");
    assert_eq!(share(&itself), 100.0, "{itself}");
}
