//! GFLOP/s of the training engine's CPU GEMM on the matrix products of a SmolLM2-sized layer.
//!
//! `cargo run --release -p tern-quantizer --example gemm_gflops`
//!
//! Shapes are those of one 512-token micro-batch through the 576→1536 MLP projection: the forward product
//! `x·Wᵀ`, the input gradient `dy·W` and the weight gradient `dyᵀ·x`, plus the square 576×576 attention
//! projection. Each runs through `Backend::matmul` (what the engine calls) on 1 and 2 rayon threads and is
//! compared with the machine's peak: cores × 2 FMA pipes × 8 f32 lanes (256-bit) × 2 flops × clock. Zen 4
//! executes AVX-512 as two 256-bit halves, so the peak is the same whether or not AVX-512 is exposed.
//!
//! With `--step`, it also times one training step of a randomly initialised SmolLM2-135M-shaped model
//! (W1.58/A8, batch 1 × 512 tokens) and reports tokens/s and how the time splits between forward, backward and
//! AdamW, and the share the GEMMs would take at the measured GFLOP/s.

use std::time::Instant;

use tern_format::Architecture;
use tern_quantizer::engine::{
    tiny_config, AdamW, AdamWConfig, Backend, Batch, CpuBackend, EngineConfig, GemmSpec, LrSchedule, Objective,
    Parameters, QuantConfig, Recompute, SplitMix64, Transformer, WriteMode,
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

/// Best-of-three GFLOP/s by wall clock, and GFLOP per CPU-second of the same runs (the kernel's speed while it
/// actually runs, which other processes on a shared machine do not depress).
fn measure(backend: &CpuBackend<f32>, spec: GemmSpec) -> (f64, f64) {
    let (a_len, b_len) = (spec.m * spec.k, spec.k * spec.n);
    let a: Vec<f32> = (0..a_len).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01).collect();
    let b: Vec<f32> = (0..b_len).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.01).collect();
    let mut out = vec![0.0f32; spec.m * spec.n];
    let flops = 2.0 * (spec.m * spec.n * spec.k) as f64;
    let run = |out: &mut Vec<f32>, reps: usize| {
        let (t, cpu) = (Instant::now(), process_cpu_seconds());
        for _ in 0..reps {
            backend.matmul(out, &a, &b, spec).expect("shapes are consistent");
        }
        (t.elapsed().as_secs_f64(), process_cpu_seconds() - cpu)
    };
    let once = run(&mut out, 3).0 / 3.0;
    let reps = ((1.0 / once) as usize).max(3);
    let runs: Vec<(f64, f64)> = (0..3).map(|_| run(&mut out, reps)).collect();
    let work = flops * reps as f64 / 1e9;
    let wall = runs.iter().map(|r| work / r.0).fold(0.0, f64::max);
    let per_cpu = runs.iter().map(|r| work / r.1.max(1e-9)).fold(0.0, f64::max);
    (wall, per_cpu)
}

/// Times forward, backward and the optimizer for a SmolLM2-135M-shaped model; returns tokens/s.
fn train_step_throughput() -> f64 {
    let backend = CpuBackend::<f32>::new();
    let mut model_cfg = tiny_config(Architecture::Llama, 576, 30, 9, 3, 64, 1536, 49152, true);
    model_cfg.rope_theta = 100000.0;
    let cfg = EngineConfig {
        model: model_cfg,
        batch_size: 1,
        seq_len: 512,
        quant: QuantConfig::W158_A8,
        recompute: Recompute::None,
    };
    let mut model = Transformer::new(&backend, cfg.clone()).expect("model");
    let layout = model.layout().clone();
    let mut params = Parameters::init_random(&backend, &layout, 1, 0.02).expect("params");
    let mut grads = Parameters::zeros(&backend, &layout).expect("grads");
    let mut opt = AdamW::new(&backend, &layout, AdamWConfig::new(LrSchedule::Constant { lr: 1e-4 })).expect("adamw");
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
    for iteration in 0..3 {
        let t0 = Instant::now();
        model
            .forward_train(&backend, &params, &batch, &objective, 1.0)
            .expect("forward");
        let t1 = Instant::now();
        grads.zero(&backend).expect("zero");
        model.backward(&backend, &params, &mut grads).expect("backward");
        let t2 = Instant::now();
        opt.step(&backend, &mut params, &grads).expect("step");
        let t3 = Instant::now();
        let total = (t3 - t0).as_secs_f64();
        println!(
            "step {iteration}: forward {:.2} s, backward {:.2} s, AdamW {:.2} s, total {total:.2} s = {:.0} tokens/s",
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
        "GEMM work {:.0} GFLOP per step: {:.0} GFLOP/s effective",
        (projections + attention) / 1e9,
        (projections + attention) / best / 1e9
    );
    cfg.tokens() as f64 / best
}

fn main() {
    if std::env::args().any(|a| a == "--step") {
        let tps = train_step_throughput();
        println!("training throughput: {tps:.0} tokens/s (best step)");
        return;
    }
    let backend = CpuBackend::<f32>::new();
    let gemm = |m, n, k, a_transposed, b_transposed| GemmSpec {
        m,
        n,
        k,
        a_transposed,
        b_transposed,
        mode: WriteMode::Overwrite,
    };
    let shapes = [
        ("forward  x·Wᵀ  512×576 → 1536", gemm(512, 1536, 576, false, true)),
        ("backward dy·W  512×1536 → 576", gemm(512, 576, 1536, false, false)),
        ("backward dyᵀ·x 1536×512 · 512×576", gemm(1536, 576, 512, true, false)),
        ("forward  x·Wᵀ  512×576 → 576", gemm(512, 576, 576, false, true)),
    ];
    let mhz = cpu_mhz().unwrap_or(0.0);
    let peak_per_core = 2.0 * 8.0 * 2.0 * mhz / 1000.0;
    println!("clock {mhz:.0} MHz (from /proc/cpuinfo): peak {peak_per_core:.1} GFLOP/s per core");
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        let peak = peak_per_core * threads as f64;
        for (name, spec) in shapes {
            let (wall, per_cpu) = pool.install(|| measure(&backend, spec));
            println!(
                "{threads} thread(s)  {name:<36} {wall:6.1} GFLOP/s ({:3.0}% of {peak:.0} peak)   {per_cpu:5.1} GFLOP per \
                 CPU-second ({:3.0}% of a core's peak)",
                100.0 * wall / peak,
                100.0 * per_cpu / peak_per_core
            );
        }
    }
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
}
