//! GFLOP/s of the training engine's CPU GEMM on the matrix products of a SmolLM2-sized layer, in both matmul
//! precisions (f32: the `gemm` crate; bf16: AMX where available).
//!
//! `cargo run --release -p tern-quantizer --example gemm_gflops -- [--step] [--precision f32|f32-avx512|bf16] [--only NAME]`
//! (`--only` keeps the shapes whose name contains NAME, e.g. `head` or `1536`; `--threads T` runs on T threads
//! only, instead of 1 and 2; `--steps N` times N training steps instead of 3).
//!
//! Shapes are those of one 512-token micro-batch through the 576→1536 MLP projection: the forward product
//! `x·Wᵀ`, the input gradient `dy·W` and the weight gradient `dyᵀ·x`, the square 576×576 attention projection
//! and the three products of the 49152-word head. Each runs through `Backend::matmul` (what the engine calls)
//! on 1 and 2 rayon threads, the two precisions alternated shape by shape (the machine is shared), and is
//! compared with the machine's peak at the /proc/cpuinfo clock: f32 FMA at cores × 2 pipes × lanes × 2 flops ×
//! clock with 8 lanes for AVX2 (what `gemm` uses on stable Rust) and 16 for AVX-512, and AMX-BF16 at 1024
//! flops per cycle per core (one 16×16×32 `TDPBF16PS` per 16 cycles, Sapphire Rapids class).
//!
//! With `--step`, it instead times training steps of a randomly initialised SmolLM2-135M-shaped model
//! (W1.58/A8, batch 1 × 512 tokens) per precision on 1 and 2 threads, and reports tokens/s and how the time
//! splits between forward, backward and AdamW, and the GEMMs' effective GFLOP/s.

use std::time::Instant;

use tern_format::Architecture;
use tern_quantizer::engine::matmul::{self, MatMut, MatRef};
use tern_quantizer::engine::{
    tiny_config, AdamW, AdamWConfig, Backend, Batch, CpuBackend, EngineConfig, GemmSpec, LrSchedule, MatmulPrecision,
    Objective, Parameters, QuantConfig, Recompute, SplitMix64, Transformer, WriteMode,
};

fn cpu_mhz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// CPU time (user + system, all threads) this process has used, from `/proc/self/stat` (clock ticks of 1/100 s).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A product to time: a dense `Backend::matmul`, or one per-head product of the attention kernels, which call
/// the strided GEMM on views of Q, K, V and the probabilities, on one thread (the heads run in parallel).
#[derive(Clone, Copy)]
enum Shape {
    Dense(GemmSpec),
    /// `scores[64, 512] = Q_h[64 rows, 64] · K_gᵀ` (rows of Q 576 apart, of K 192).
    AttentionScores,
    /// `out_h[64, 64] = P[64, 512] · V_g` (rows of V 192 apart, of out 576).
    AttentionValues,
}

fn test_values(len: usize, salt: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * (5 + 2 * salt) % 13) as f32 - 6.0) * 0.01)
        .collect()
}

/// GFLOP/s of one product: (best of three ~1 s runs by wall clock, GFLOP per CPU-second of the same runs,
/// fastest single call). On a shared machine the second is the kernel's speed while it actually runs, and the
/// third the speed when no other process got in the way.
fn measure(backend: &CpuBackend<f32>, shape: Shape) -> (f64, f64, f64) {
    let (t, hd, qd, kvd) = (512usize, 64usize, 576usize, 192usize);
    let (m, n, k) = match shape {
        Shape::Dense(spec) => (spec.m, spec.n, spec.k),
        Shape::AttentionScores => (64, t, hd),
        Shape::AttentionValues => (64, hd, t),
    };
    let (a, b) = match shape {
        Shape::Dense(_) => (test_values(m * k, 0), test_values(k * n, 1)),
        Shape::AttentionScores => (test_values(t * qd, 0), test_values(t * kvd, 1)),
        Shape::AttentionValues => (test_values(64 * t, 0), test_values(t * kvd, 1)),
    };
    let mut out = vec![
        0.0f32;
        if matches!(shape, Shape::AttentionValues) {
            64 * qd
        } else {
            m * n
        }
    ];
    let precision = backend.matmul_precision();
    let call = |out: &mut Vec<f32>| match shape {
        Shape::Dense(spec) => backend.matmul(out, &a, &b, spec).expect("shapes are consistent"),
        Shape::AttentionScores => {
            let q = MatRef {
                data: &a,
                rows: 64,
                cols: hd,
                row_stride: qd as isize,
                col_stride: 1,
            };
            let k_t = MatRef {
                data: &b,
                rows: hd,
                cols: t,
                row_stride: 1,
                col_stride: kvd as isize,
            };
            let dst = MatMut {
                data: out,
                rows: 64,
                cols: t,
                row_stride: t as isize,
                col_stride: 1,
            };
            matmul::gemm(precision, dst, false, q, k_t, 0.125, false).expect("views fit")
        }
        Shape::AttentionValues => {
            let p = MatRef {
                data: &a,
                rows: 64,
                cols: t,
                row_stride: t as isize,
                col_stride: 1,
            };
            let v = MatRef {
                data: &b,
                rows: t,
                cols: hd,
                row_stride: kvd as isize,
                col_stride: 1,
            };
            let dst = MatMut {
                data: out,
                rows: 64,
                cols: hd,
                row_stride: qd as isize,
                col_stride: 1,
            };
            matmul::gemm(precision, dst, false, p, v, 1.0, false).expect("views fit")
        }
    };
    let flops = 2.0 * (m * n * k) as f64;
    let mut fastest = f64::INFINITY;
    let mut run = |out: &mut Vec<f32>, reps: usize| {
        let (t, cpu) = (Instant::now(), process_cpu_seconds());
        for _ in 0..reps {
            let start = Instant::now();
            call(out);
            fastest = fastest.min(start.elapsed().as_secs_f64());
        }
        (t.elapsed().as_secs_f64(), process_cpu_seconds() - cpu)
    };
    let once = run(&mut out, 3).0 / 3.0;
    let reps = ((1.0 / once) as usize).max(3);
    let runs: Vec<(f64, f64)> = (0..3).map(|_| run(&mut out, reps)).collect();
    let work = flops * reps as f64 / 1e9;
    let wall = runs.iter().map(|r| work / r.0).fold(0.0, f64::max);
    let per_cpu = runs.iter().map(|r| work / r.1.max(1e-9)).fold(0.0, f64::max);
    (wall, per_cpu, flops / 1e9 / fastest)
}

/// Times forward, backward and the optimizer for a SmolLM2-135M-shaped model; returns tokens/s.
fn train_step_throughput(backend: &CpuBackend<f32>, steps: usize) -> f64 {
    let mut model_cfg = tiny_config(Architecture::Llama, 576, 30, 9, 3, 64, 1536, 49152, true);
    model_cfg.rope_theta = 100000.0;
    let cfg = EngineConfig {
        model: model_cfg,
        batch_size: 1,
        seq_len: 512,
        quant: QuantConfig::W158_A8,
        recompute: Recompute::None,
    };
    let mut model = Transformer::new(backend, cfg.clone()).expect("model");
    let layout = model.layout().clone();
    let mut params = Parameters::init_random(backend, &layout, 1, 0.02).expect("params");
    let mut grads = Parameters::zeros(backend, &layout).expect("grads");
    let mut opt = AdamW::new(backend, &layout, AdamWConfig::new(LrSchedule::Constant { lr: 1e-4 })).expect("adamw");
    let mut rng = SplitMix64::new(2);
    let tokens: Vec<u32> = (0..cfg.tokens()).map(|_| rng.below(49152) as u32).collect();
    let targets: Vec<u32> = (0..cfg.tokens()).map(|_| rng.below(49152) as u32).collect();
    let batch = Batch {
        tokens: &tokens,
        targets: &targets,
        teacher_logits: None,
    };
    let objective = Objective::cross_entropy();
    let mut best = f64::INFINITY;
    for iteration in 0..steps {
        let cpu0 = process_cpu_seconds();
        let t0 = Instant::now();
        model
            .forward_train(backend, &params, &batch, &objective, 1.0)
            .expect("forward");
        let t1 = Instant::now();
        grads.zero(backend).expect("zero");
        model.backward(backend, &params, &mut grads).expect("backward");
        let t2 = Instant::now();
        opt.step(backend, &mut params, &grads).expect("step");
        let t3 = Instant::now();
        let total = (t3 - t0).as_secs_f64();
        // CPU time of the whole process (rayon's idle workers spin a little, so on several threads it is an upper
        // bound); on a shared machine the wall clock also counts time other processes took.
        let cpu = process_cpu_seconds() - cpu0;
        println!(
            "  step {iteration}: forward {:.2} s, backward {:.2} s, AdamW {:.2} s, total {total:.2} s = {:.0} tokens/s \
             (CPU {cpu:.2} s)",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            cfg.tokens() as f64 / total
        );
        best = best.min(total);
    }
    // Dense GEMM work per step: 6 flops per parameter-token for the projections and the head, plus the causal
    // attention products (QKᵀ and PV, forward 2·T²·d per head halved by causality, backward twice that).
    let n = cfg.tokens() as f64;
    let projections = 6.0 * n * layout.numel() as f64;
    let attention = 30.0 * 9.0 * 3.0 * 2.0 * 512.0 * 512.0 * 64.0;
    println!(
        "  GEMM work {:.0} GFLOP per step: {:.0} GFLOP/s effective",
        (projections + attention) / 1e9,
        (projections + attention) / best / 1e9
    );
    cfg.tokens() as f64 / best
}

fn precisions() -> Vec<MatmulPrecision> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == "--precision")
        .and_then(|i| args.get(i + 1))
    {
        Some(p) if p == "f32" => vec![MatmulPrecision::F32],
        Some(p) if p == "f32-avx512" => vec![MatmulPrecision::F32Avx512],
        Some(p) if p == "bf16" => vec![MatmulPrecision::Bf16],
        Some(p) if p == "bf16-avx512" => vec![MatmulPrecision::Bf16Avx512],
        _ => vec![
            MatmulPrecision::F32,
            MatmulPrecision::F32Avx512,
            MatmulPrecision::Bf16,
            MatmulPrecision::Bf16Avx512,
        ],
    }
}

fn label(precision: MatmulPrecision) -> &'static str {
    match precision {
        MatmulPrecision::F32 => "f32 gemm  ",
        MatmulPrecision::F32Avx512 => "f32 avx512",
        MatmulPrecision::Bf16 => "bf16      ",
        MatmulPrecision::Bf16Avx512 => "bf16 avx512",
    }
}

fn main() {
    let backends: Vec<CpuBackend<f32>> = precisions()
        .into_iter()
        .map(|p| CpuBackend::<f32>::new().with_matmul_precision(p))
        .collect();
    for b in &backends {
        println!("{}: {}", label(b.matmul_precision()), b.matmul_kernel_name());
    }
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let thread_counts: Vec<usize> = match value("--threads").and_then(|t| t.parse().ok()) {
        Some(t) => vec![t],
        None => vec![1, 2],
    };
    let pools: Vec<(usize, rayon::ThreadPool)> = thread_counts
        .into_iter()
        .map(|t| {
            (
                t,
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .expect("thread pool"),
            )
        })
        .collect();
    if std::env::args().any(|a| a == "--step") {
        for (threads, pool) in &pools {
            for backend in &backends {
                println!("{} on {threads} thread(s):", label(backend.matmul_precision()));
                let steps = value("--steps").and_then(|s| s.parse().ok()).unwrap_or(3);
                let tps = pool.install(|| train_step_throughput(backend, steps));
                println!("  training throughput: {tps:.0} tokens/s (best step)");
            }
        }
        println!(
            "load average: {}",
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
        return;
    }
    let gemm = |m, n, k, a_transposed, b_transposed| GemmSpec {
        m,
        n,
        k,
        a_transposed,
        b_transposed,
        mode: WriteMode::Overwrite,
    };
    let shapes = [
        (
            "forward  x·Wᵀ  512×576 → 1536",
            Shape::Dense(gemm(512, 1536, 576, false, true)),
        ),
        (
            "backward dy·W  512×1536 → 576",
            Shape::Dense(gemm(512, 576, 1536, false, false)),
        ),
        (
            "backward dyᵀ·x 1536×512 · 512×576",
            Shape::Dense(gemm(1536, 576, 512, true, false)),
        ),
        (
            "forward  x·Wᵀ  512×576 → 576",
            Shape::Dense(gemm(512, 576, 576, false, true)),
        ),
        (
            "head     x·Eᵀ  512×576 → 49152",
            Shape::Dense(gemm(512, 49152, 576, false, true)),
        ),
        (
            "head     dz·E  512×49152 → 576",
            Shape::Dense(gemm(512, 576, 49152, false, false)),
        ),
        (
            "head     dzᵀ·x 49152×512 · 512×576",
            Shape::Dense(gemm(49152, 576, 512, true, false)),
        ),
        ("attn     Q·Kᵀ  64×64 · 64×512 (1 thr)", Shape::AttentionScores),
        ("attn     P·V   64×512 · 512×64 (1 thr)", Shape::AttentionValues),
    ];
    let mhz = cpu_mhz().unwrap_or(0.0);
    let peak_avx2 = 2.0 * 8.0 * 2.0 * mhz / 1000.0;
    let peak_avx512 = 2.0 * peak_avx2;
    let peak_amx = 1024.0 * mhz / 1000.0;
    println!(
        "clock {mhz:.0} MHz (from /proc/cpuinfo): per-core peak f32 AVX2 {peak_avx2:.0}, f32 AVX-512 \
         {peak_avx512:.0}, AMX-BF16 {peak_amx:.0} GFLOP/s"
    );
    let only = value("--only");
    let shapes: Vec<_> = shapes
        .into_iter()
        .filter(|(name, _)| only.is_none_or(|o| name.contains(o.as_str())))
        .collect();
    for (threads, pool) in &pools {
        for &(name, shape) in &shapes {
            for backend in &backends {
                let (wall, per_cpu, best) = pool.install(|| measure(backend, shape));
                let (peak_core, peak_name) = match backend.matmul_precision() {
                    MatmulPrecision::Bf16 if matmul::amx_bf16_available() => (peak_amx, "AMX"),
                    MatmulPrecision::F32Avx512 if matmul::avx512_f32_available() => (peak_avx512, "AVX-512"),
                    _ => (peak_avx2, "AVX2"),
                };
                let single = matches!(shape, Shape::AttentionScores | Shape::AttentionValues);
                let peak = peak_core * if single { 1.0 } else { *threads as f64 };
                println!(
                    "{threads} thread(s) {} {name:<36} {wall:7.1} GFLOP/s ({:3.0}% of {peak:.0} {peak_name} peak) \
                     {per_cpu:7.1} per CPU-s, best call {best:7.1} ({:3.0}%)",
                    label(backend.matmul_precision()),
                    100.0 * wall / peak,
                    100.0 * best / peak,
                );
            }
        }
    }
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
}
