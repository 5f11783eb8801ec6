//! `tern quantize` and `tern plot` through the real binary: a run killed with SIGKILL and resumed ends with the
//! same weights and the same .tern bytes as an uninterrupted run; a NaN stops the run with a clear message and
//! an intact checkpoint; `--method ptq` is `tern convert`; `--device cuda` without a usable GPU
//! fails at once with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tern_quantizer::checkpoint::{checkpoint_path, list_checkpoints, Checkpoint};
use tern_quantizer::engine::SplitMix64;
use tern_quantizer::metrics::{read_metrics, METRICS_FILE};

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-cli-quantize-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic English-like text (documents of eight sentences).
fn write_text(path: &Path) {
    const WORDS: [&str; 12] = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "red", "house",
    ];
    let mut rng = SplitMix64::new(17);
    let mut out = String::new();
    for s in 0..300 {
        let n = 4 + rng.below(5) as usize;
        let words: Vec<&str> = (0..n).map(|_| WORDS[rng.below(12) as usize]).collect();
        out.push_str(&words.join(" "));
        out.push_str(".\n");
        if s % 8 == 7 {
            out.push('\n');
        }
    }
    std::fs::write(path, out).unwrap();
}

fn train_args(data: &Path, out: &Path, run_dir: &Path) -> Vec<String> {
    [
        "quantize",
        "--tiny-random",
        "1",
        "--data",
        data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--checkpoint-dir",
        run_dir.to_str().unwrap(),
        "--steps",
        "14",
        "--seq-len",
        "32",
        "--batch",
        "4",
        "--grad-accum",
        "2",
        "--lr",
        "3e-3",
        "--warmup",
        "2",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "3",
        "--eval-every",
        "5",
        "--eval-sequences",
        "8",
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ok(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn newest_step(dir: &Path) -> Option<u64> {
    list_checkpoints(dir).ok()?.last().map(|c| c.0)
}

#[test]
fn sigkilled_run_resumes_to_bit_identical_weights() {
    let dir = temp_dir("kill");
    let text = dir.join("train.txt");
    write_text(&text);

    // Uninterrupted reference run.
    let (out_a, run_a) = (dir.join("a.tern"), dir.join("run-a"));
    ok(
        tern().args(train_args(&text, &out_a, &run_a)).output().unwrap(),
        "reference run",
    );

    // The same run, slowed down, killed with SIGKILL once a few checkpoints exist.
    let (out_b, run_b) = (dir.join("b.tern"), dir.join("run-b"));
    let mut child = tern()
        .args(train_args(&text, &out_b, &run_b))
        .args(["--debug-sleep-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !matches!(newest_step(&run_b), Some(s) if s >= 4) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    let killed_at = newest_step(&run_b).unwrap();
    assert!(killed_at < 14, "killed after the last step");
    assert!(!out_b.exists());

    // Resume (without the delay: it is not part of the run's identity).
    let resumed = ok(
        tern()
            .args(train_args(&text, &out_b, &run_b))
            .arg("--resume")
            .output()
            .unwrap(),
        "resumed run",
    );
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("resuming from"), "{stderr}");

    // Same final weights and AdamW state, same exported file.
    let a = Checkpoint::read(&checkpoint_path(&run_a, 14)).unwrap();
    let b = Checkpoint::read(&checkpoint_path(&run_b, 14)).unwrap();
    assert_eq!(a.state.draws, b.state.draws);
    let bits = |c: &Checkpoint| -> Vec<Vec<u32>> {
        c.tensors
            .iter()
            .flat_map(|t| [&t.weights, &t.m, &t.v])
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    assert!(bits(&a) == bits(&b), "weights or moments differ after SIGKILL + resume");
    assert_eq!(
        std::fs::read(&out_a).unwrap(),
        std::fs::read(&out_b).unwrap(),
        "exported .tern differs"
    );

    // metrics.jsonl holds every step once, with the uninterrupted run's losses.
    let ma = read_metrics(&run_a.join(METRICS_FILE)).unwrap();
    let mb = read_metrics(&run_b.join(METRICS_FILE)).unwrap();
    assert_eq!(
        mb.iter().map(|r| r.step).collect::<Vec<_>>(),
        (0..=14).collect::<Vec<_>>()
    );
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (x.loss, x.lr, x.grad_norm, x.eval_ppl),
            (y.loss, y.lr, y.grad_norm, y.eval_ppl),
            "step {}",
            x.step
        );
    }

    // tern plot draws both curves.
    ok(tern().arg("plot").arg(&run_a).output().unwrap(), "tern plot");
    for name in ["loss.svg", "lr.svg"] {
        let svg = std::fs::read_to_string(run_a.join(name)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nan_stops_with_a_clear_message_and_an_intact_checkpoint() {
    let dir = temp_dir("nan");
    let text = dir.join("train.txt");
    write_text(&text);
    let (out, run) = (dir.join("nan.tern"), dir.join("run"));
    let output = tern()
        .args(train_args(&text, &out, &run))
        .args(["--debug-nan-at-step", "3"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("training stopped at step 3: non-finite gradient norm (NaN)"),
        "{stderr}"
    );
    let good = checkpoint_path(&run, 2);
    assert!(
        stderr.contains("last good checkpoint") && stderr.contains(&good.display().to_string()),
        "{stderr}"
    );
    assert_eq!(newest_step(&run), Some(2));
    assert_eq!(Checkpoint::read(&good).unwrap().state.step, 2);
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ptq_method_equals_tern_convert_and_cuda_is_refused() {
    let dir = temp_dir("ptq");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("quantizer/tests/fixtures/tiny-llama.gguf");
    let (a, b) = (dir.join("quantize.tern"), dir.join("convert.tern"));
    ok(
        tern()
            .arg("quantize")
            .arg(&fixture)
            .args(["--method", "ptq", "-o"])
            .arg(&a)
            .output()
            .unwrap(),
        "quantize --method ptq",
    );
    ok(
        tern().arg("convert").arg(&fixture).arg("-o").arg(&b).output().unwrap(),
        "convert",
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // Where CUDA is missing, `--device cuda` fails at once with the reason, before reading the (here missing)
    // data file: the error is about CUDA, not about x.txt.
    let started = Instant::now();
    let output = tern()
        .arg("quantize")
        .arg(&fixture)
        .args(["--device", "cuda", "--data", "x.txt", "-o"])
        .arg(dir.join("c.tern"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.starts_with("CUDA: ") {
        println!(
            "skipped: a CUDA device is present ({})",
            stderr.lines().next().unwrap_or("")
        );
    } else {
        assert!(!output.status.success());
        assert!(stderr.contains("--device cuda") && stderr.contains("CUDA"), "{stderr}");
        assert!(!stderr.contains("x.txt"), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        assert!(!dir.join("c.tern.run").exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
