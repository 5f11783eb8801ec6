//! The CPU backend's SIMD matrix products, bf16 on AMX and on AVX512_BF16, f32 on AVX-512F: against an f64 GEMM
//! of the inputs as the kernel sees them (rounded to bf16 for the bf16 kernels) on ragged sizes, every transpose, strided per-head views,
//! accumulation and scaling; bit-identical results on 1, 2 and 3 rayon threads; a whole training step against
//! the `gemm` crate's f32. A kernel the CPU lacks is skipped with a message (the backend falls back to the
//! `gemm` crate there, which `kernel_name` reports).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_format::Architecture;
use tern_quantizer::engine::matmul::{self, bf16::round_to_bf16, MatMut, MatRef, MatmulPrecision};
use tern_quantizer::engine::{
    tiny_config, AdamW, AdamWConfig, Backend, Batch, CpuBackend, EngineConfig, GemmSpec, LrSchedule, Objective,
    Parameters, QuantConfig, Recompute, SplitMix64, Transformer, WriteMode,
};

const BF16: MatmulPrecision = MatmulPrecision::Bf16;

/// A SIMD kernel under test: its precision, what it does to inputs, and whether this machine runs it.
#[derive(Clone, Copy)]
struct Kernel {
    precision: MatmulPrecision,
    name: &'static str,
    round: fn(f32) -> f32,
    /// Whether the kernel rounds its inputs to bf16.
    bf16: bool,
    available: fn() -> bool,
}

const KERNELS: [Kernel; 3] = [
    Kernel {
        precision: MatmulPrecision::Bf16,
        name: "AMX-BF16",
        round: round_to_bf16,
        bf16: true,
        available: matmul::amx_bf16_available,
    },
    Kernel {
        precision: MatmulPrecision::Bf16Avx512,
        name: "AVX512_BF16",
        round: round_to_bf16,
        bf16: true,
        available: matmul::avx512_bf16_available,
    },
    Kernel {
        precision: MatmulPrecision::F32Avx512,
        name: "AVX-512F",
        round: |x| x,
        bf16: false,
        available: matmul::avx512_f32_available,
    },
];

/// The kernels this machine has; prints which are skipped.
fn kernels(test: &str) -> Vec<Kernel> {
    KERNELS
        .into_iter()
        .filter(|k| {
            let ok = (k.available)();
            if !ok {
                eprintln!("{test}: {} skipped, this CPU/OS does not have it", k.name);
            }
            ok
        })
        .collect()
}

fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

/// A strided operand: `rows × cols` at `offset + i·rs + j·cs` of `data`.
#[derive(Clone, Copy)]
struct View {
    rows: usize,
    cols: usize,
    offset: usize,
    rs: isize,
    cs: isize,
}

impl View {
    /// Row-major (`transposed = false`) or column-major storage of a `rows × cols` matrix, with no padding.
    fn dense(rows: usize, cols: usize, transposed: bool) -> Self {
        let (rs, cs) = if transposed {
            (1, rows as isize)
        } else {
            (cols as isize, 1)
        };
        View {
            rows,
            cols,
            offset: 0,
            rs,
            cs,
        }
    }

    fn index(&self, i: usize, j: usize) -> usize {
        (self.offset as isize + i as isize * self.rs + j as isize * self.cs) as usize
    }

    /// Elements a buffer needs to hold the view.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            self.offset
        } else {
            self.index(self.rows - 1, self.cols - 1) + 1
        }
    }

    fn of<'a>(&self, data: &'a [f32]) -> MatRef<'a, f32> {
        MatRef {
            data: &data[self.offset..],
            rows: self.rows,
            cols: self.cols,
            row_stride: self.rs,
            col_stride: self.cs,
        }
    }

    fn of_mut<'a>(&self, data: &'a mut [f32]) -> MatMut<'a, f32> {
        MatMut {
            data: &mut data[self.offset..],
            rows: self.rows,
            cols: self.cols,
            row_stride: self.rs,
            col_stride: self.cs,
        }
    }
}

/// f64 reference: the expected `dst` and, per element, `|scale|·Σ|a·b| + |dst₀|` (the accumulated magnitude
/// rounding errors scale with).
#[allow(clippy::too_many_arguments)]
fn reference(
    dst: &[f32],
    dv: View,
    accumulate: bool,
    lhs: &[f32],
    lv: View,
    rhs: &[f32],
    rv: View,
    scale: f32,
    round: fn(f32) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let (m, n, k) = (dv.rows, dv.cols, lv.cols);
    let mut want = vec![0.0; m * n];
    let mut magnitude = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut abs) = (0.0f64, 0.0f64);
            for p in 0..k {
                let prod = round(lhs[lv.index(i, p)]) as f64 * round(rhs[rv.index(p, j)]) as f64;
                sum += prod;
                abs += prod.abs();
            }
            let old = if accumulate { dst[dv.index(i, j)] as f64 } else { 0.0 };
            want[i * n + j] = old + scale as f64 * sum;
            magnitude[i * n + j] = old.abs() + (scale as f64).abs() * abs;
        }
    }
    (want, magnitude)
}

/// Worst error of `dst` against the reference, in units of f32 epsilon times the accumulated magnitude.
#[allow(clippy::too_many_arguments)]
fn error_in_ulps(dst: &[f32], dv: View, want: &[f64], magnitude: &[f64]) -> f64 {
    let mut worst = 0.0f64;
    for i in 0..dv.rows {
        for j in 0..dv.cols {
            let e = i * dv.cols + j;
            let err = (dst[dv.index(i, j)] as f64 - want[e]).abs();
            worst = worst.max(err / (f32::EPSILON as f64 * magnitude[e].max(f32::MIN_POSITIVE as f64)));
        }
    }
    worst
}

/// Runs one GEMM case on `kernel` and checks it: within `ULPS` of the reference on the inputs as the kernel
/// sees them, and elements outside the destination view untouched.
#[allow(clippy::too_many_arguments)]
fn check_case(
    kernel: Kernel,
    label: &str,
    dv: View,
    accumulate: bool,
    lv: View,
    rv: View,
    scale: f32,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let label = format!("{}: {label}", kernel.name);
    const ULPS: f64 = 4.0;
    let lhs = random(lv.extent(), rng);
    let rhs = random(rv.extent(), rng);
    let before = random(dv.extent(), rng);
    let mut dst = before.clone();
    let (want, magnitude) = reference(&before, dv, accumulate, &lhs, lv, &rhs, rv, scale, kernel.round);
    matmul::gemm(
        kernel.precision,
        dv.of_mut(&mut dst),
        accumulate,
        lv.of(&lhs),
        rv.of(&rhs),
        scale,
        true,
    )
    .unwrap();
    let ulps = error_in_ulps(&dst, dv, &want, &magnitude);
    assert!(
        ulps <= ULPS,
        "{label}: error {ulps:.2} ulps of the accumulated magnitude"
    );
    let mut inside = vec![false; dst.len()];
    for i in 0..dv.rows {
        for j in 0..dv.cols {
            inside[dv.index(i, j)] = true;
        }
    }
    for (e, (&d, &b)) in dst.iter().zip(&before).enumerate() {
        assert!(
            inside[e] || d.to_bits() == b.to_bits(),
            "{label}: element {e} outside dst was written"
        );
    }
    ulps
}

#[test]
fn simd_gemm_matches_f64_reference_on_ragged_sizes_and_all_transposes() {
    for kernel in kernels("simd_gemm_matches_f64_reference_on_ragged_sizes_and_all_transposes") {
        ragged_sizes_and_all_transposes(kernel);
    }
}

fn ragged_sizes_and_all_transposes(kernel: Kernel) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let sizes = [1usize, 3, 15, 16, 17, 31, 33, 64, 100];
    let mut worst = 0.0f64;
    let mut case = 0usize;
    for &m in &sizes {
        for &n in &sizes {
            for &k in &sizes {
                // Every transpose pair, accumulate/overwrite and scale = 1 or not, cycled over the sizes.
                let (ta, tb) = (case % 2 == 1, (case / 2) % 2 == 1);
                let accumulate = (case / 4) % 2 == 1;
                let scale = if (case / 8) % 2 == 1 { -0.37 } else { 1.0 };
                case += 1;
                let label = format!("{m}×{n}×{k} ta={ta} tb={tb} acc={accumulate} scale={scale}");
                let ulps = check_case(
                    kernel,
                    &label,
                    View::dense(m, n, false),
                    accumulate,
                    View::dense(m, k, ta),
                    View::dense(k, n, tb),
                    scale,
                    &mut rng,
                );
                worst = worst.max(ulps);
            }
        }
    }
    // One dimension 577 (several k chunks, many tiles, a ragged last tile) with all four transposes.
    // And 1100×1200: more than 64 row panels, split over several tasks.
    for (m, n, k) in [
        (577, 33, 17),
        (31, 577, 64),
        (17, 100, 577),
        (100, 64, 577),
        (1100, 1200, 40),
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let label = format!("{m}×{n}×{k} ta={ta} tb={tb}");
            let ulps = check_case(
                kernel,
                &label,
                View::dense(m, n, false),
                true,
                View::dense(m, k, ta),
                View::dense(k, n, tb),
                0.5,
                &mut rng,
            );
            worst = worst.max(ulps);
        }
    }
    eprintln!(
        "{}: worst error {worst:.3} ulps of the accumulated magnitude",
        kernel.name
    );
}

#[test]
fn simd_gemm_on_strided_views() {
    for kernel in kernels("simd_gemm_on_strided_views") {
        strided_views(kernel);
    }
}

fn strided_views(kernel: Kernel) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // Attention's per-head views: scores[t, t] = Q_h[t, hd] · K_hᵀ with Q rows of q_dim and K rows of kv_dim,
    // head h at column offset h·hd; then out_h[t, hd] (rows of q_dim) = P[t, t] · V_h.
    let (t, hd, qd, kvd) = (70usize, 64usize, 9 * 64, 3 * 64);
    for h in [0usize, 4, 8] {
        let kv = h / 3;
        let q = View {
            rows: t,
            cols: hd,
            offset: h * hd,
            rs: qd as isize,
            cs: 1,
        };
        let k_t = View {
            rows: hd,
            cols: t,
            offset: kv * hd,
            rs: 1,
            cs: kvd as isize,
        };
        let v = View {
            rows: t,
            cols: hd,
            offset: kv * hd,
            rs: kvd as isize,
            cs: 1,
        };
        let scores = View::dense(t, t, false);
        let out = View {
            rows: t,
            cols: hd,
            offset: h * hd,
            rs: qd as isize,
            cs: 1,
        };
        check_case(kernel, "Q·Kᵀ", scores, false, q, k_t, 0.125, &mut rng);
        check_case(kernel, "P·V", out, false, scores, v, 1.0, &mut rng);
        // dV_g += Pᵀ·dO_h: a transposed view of P.
        check_case(kernel, "Pᵀ·dO", v, true, View::dense(t, t, true), q, 1.0, &mut rng);
    }
    // Neither dimension contiguous (the packers' scalar path) and a column-strided destination (scalar
    // write-back).
    let lhs = View {
        rows: 37,
        cols: 45,
        offset: 0,
        rs: 2 * 45,
        cs: 2,
    };
    let rhs = View {
        rows: 45,
        cols: 29,
        offset: 5,
        rs: 3 * 29,
        cs: 3,
    };
    let dst = View {
        rows: 37,
        cols: 29,
        offset: 1,
        rs: 1,
        cs: 2 * 37,
    };
    check_case(kernel, "general strides", dst, true, lhs, rhs, 2.0, &mut rng);
}

#[test]
fn bf16_gemm_rounds_its_inputs_and_is_not_the_f32_product() {
    for kernel in kernels("bf16_gemm_rounds_its_inputs_and_is_not_the_f32_product") {
        if kernel.bf16 {
            bf16_rounds_its_inputs(kernel);
        }
    }
}

fn bf16_rounds_its_inputs(kernel: Kernel) {
    // Against the unrounded inputs the error is bf16-sized (~2⁻⁹ relative), far above the tolerance the bf16
    // reference meets: the kernel really computes on rounded inputs.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, n, k) = (48, 40, 200);
    let (lv, rv, dv) = (
        View::dense(m, k, false),
        View::dense(k, n, true),
        View::dense(m, n, false),
    );
    let (lhs, rhs) = (random(lv.extent(), &mut rng), random(rv.extent(), &mut rng));
    let mut dst = vec![0.0f32; m * n];
    matmul::gemm(
        kernel.precision,
        dv.of_mut(&mut dst),
        false,
        lv.of(&lhs),
        rv.of(&rhs),
        1.0,
        false,
    )
    .unwrap();
    let (exact, magnitude) = reference(&dst, dv, false, &lhs, lv, &rhs, rv, 1.0, |x| x);
    let ulps = error_in_ulps(&dst, dv, &exact, &magnitude);
    assert!(
        ulps > 1000.0,
        "{}: only {ulps:.1} ulps from the f32-input product",
        kernel.name
    );
}

#[test]
fn simd_gemm_is_bit_identical_on_1_2_and_3_threads() {
    for kernel in kernels("simd_gemm_is_bit_identical_on_1_2_and_3_threads") {
        bit_identical_on_1_2_and_3_threads(kernel);
    }
}

fn bit_identical_on_1_2_and_3_threads(kernel: Kernel) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // Large enough for several tasks and k chunks, ragged in every dimension; either operand the larger (it is
    // the one the tasks pack chunk by chunk), and more than 64 panels of the other (split over tasks too).
    for (m, n, k, ta, tb) in [
        (300, 577, 200, false, true),
        (129, 260, 1100, true, false),
        (577, 130, 700, false, false),
        (1100, 1200, 40, true, true),
    ] {
        let (lv, rv, dv) = (View::dense(m, k, ta), View::dense(k, n, tb), View::dense(m, n, false));
        let (lhs, rhs) = (random(lv.extent(), &mut rng), random(rv.extent(), &mut rng));
        let start = random(m * n, &mut rng);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut dst = start.clone();
                matmul::gemm(
                    kernel.precision,
                    dv.of_mut(&mut dst),
                    true,
                    lv.of(&lhs),
                    rv.of(&rhs),
                    0.75,
                    true,
                )
                .unwrap();
                dst.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
            })
        };
        let one = run(1);
        assert!(run(2) == one, "{}: {m}×{n}×{k}: 2 threads differ from 1", kernel.name);
        assert!(run(3) == one, "{}: {m}×{n}×{k}: 3 threads differ from 1", kernel.name);
    }
}

#[test]
fn backend_matmul_uses_the_chosen_precision() {
    let f32_backend = CpuBackend::<f32>::new();
    assert_eq!(f32_backend.matmul_precision(), MatmulPrecision::F32);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (m, n, k) = (33, 47, 70);
    for kernel in KERNELS {
        let backend = f32_backend.with_matmul_precision(kernel.precision);
        assert_eq!(backend.matmul_precision(), kernel.precision);
        eprintln!("{:?}: {}", kernel.precision, backend.matmul_kernel_name());
        // Where the kernel is missing the backend runs another bf16 kernel (`Bf16` without AMX) or the `gemm`
        // crate's f32, and says which.
        let bf16_inputs = backend.matmul_kernel_name().contains("bf16 inputs");
        assert_eq!(
            bf16_inputs,
            kernel.bf16 && (kernel.available)() || kernel.precision == BF16 && matmul::avx512_bf16_available()
        );
        let round = if bf16_inputs { round_to_bf16 } else { |x| x };
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (lv, rv, dv) = (View::dense(m, k, ta), View::dense(k, n, tb), View::dense(m, n, false));
            let (a, b) = (random(m * k, &mut rng), random(k * n, &mut rng));
            let spec = GemmSpec {
                m,
                n,
                k,
                a_transposed: ta,
                b_transposed: tb,
                mode: WriteMode::Overwrite,
            };
            let mut out = vec![0.0f32; m * n];
            f32_backend.matmul(&mut out, &a, &b, spec).unwrap();
            let (exact, magnitude) = reference(&out, dv, false, &a, lv, &b, rv, 1.0, |x| x);
            assert!(error_in_ulps(&out, dv, &exact, &magnitude) <= 4.0, "f32 path");
            backend.matmul(&mut out, &a, &b, spec).unwrap();
            let (want, magnitude) = reference(&out, dv, false, &a, lv, &b, rv, 1.0, round);
            assert!(error_in_ulps(&out, dv, &want, &magnitude) <= 4.0, "{}", kernel.name);
        }
    }
}

#[test]
fn strided_gemm_rejects_views_outside_their_slices() {
    let data = vec![0.0f32; 12];
    let mut out = vec![0.0f32; 12];
    let ok = |rows, cols, rs, cs| MatRef {
        data: &data,
        rows,
        cols,
        row_stride: rs,
        col_stride: cs,
    };
    fn dst(out: &mut [f32], rs: isize, cs: isize) -> MatMut<'_, f32> {
        MatMut {
            data: out,
            rows: 3,
            cols: 4,
            row_stride: rs,
            col_stride: cs,
        }
    }
    for precision in [
        MatmulPrecision::F32,
        MatmulPrecision::F32Avx512,
        BF16,
        MatmulPrecision::Bf16Avx512,
    ] {
        let accepts = |out: &mut [f32], dst_rs: isize, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>| {
            matmul::gemm(precision, dst(out, dst_rs, 1), false, lhs, rhs, 1.0, false).is_ok()
        };
        assert!(accepts(&mut out, 4, ok(3, 3, 3, 1), ok(3, 4, 4, 1)));
        // lhs would read element 12; rhs has the wrong shape; dst rows overlap; a negative stride below 0.
        assert!(!accepts(&mut out, 4, ok(3, 3, 5, 1), ok(3, 4, 4, 1)));
        assert!(!accepts(&mut out, 4, ok(3, 3, 3, 1), ok(4, 3, 3, 1)));
        assert!(!accepts(&mut out, 3, ok(3, 3, 3, 1), ok(3, 4, 4, 1)));
        assert!(!accepts(&mut out, 4, ok(3, 3, -3, 1), ok(3, 4, 4, 1)));
    }
}

/// Loss of one forward pass and the loss after one AdamW step (a second forward), for a tiny model.
fn two_losses(backend: &CpuBackend<f32>) -> (f64, f64) {
    let model_cfg = tiny_config(Architecture::Llama, 64, 2, 4, 2, 16, 96, 300, false);
    let cfg = EngineConfig {
        model: model_cfg,
        batch_size: 2,
        seq_len: 40,
        quant: QuantConfig::W158_A8,
        recompute: Recompute::None,
    };
    let mut model = Transformer::new(backend, cfg.clone()).unwrap();
    let layout = model.layout().clone();
    let mut params = Parameters::init_random(backend, &layout, 7, 0.05).unwrap();
    let mut grads = Parameters::zeros(backend, &layout).unwrap();
    let mut opt = AdamW::new(backend, &layout, AdamWConfig::new(LrSchedule::Constant { lr: 3e-3 })).unwrap();
    let mut rng = SplitMix64::new(8);
    let tokens: Vec<u32> = (0..cfg.tokens()).map(|_| rng.below(300) as u32).collect();
    let targets: Vec<u32> = (0..cfg.tokens()).map(|_| rng.below(300) as u32).collect();
    let batch = Batch {
        tokens: &tokens,
        targets: &targets,
        teacher_logits: None,
    };
    let ce = Objective::cross_entropy();
    let first = model.forward_train(backend, &params, &batch, &ce, 1.0).unwrap().loss;
    grads.zero(backend).unwrap();
    model.backward(backend, &params, &mut grads).unwrap();
    opt.step(backend, &mut params, &grads).unwrap();
    let second = model.forward_train(backend, &params, &batch, &ce, 1.0).unwrap().loss;
    (first, second)
}

#[test]
fn simd_training_step_tracks_f32_and_is_deterministic() {
    let f32_backend = CpuBackend::<f32>::new();
    let (f32_first, f32_second) = two_losses(&f32_backend);
    for kernel in kernels("simd_training_step_tracks_f32_and_is_deterministic") {
        let backend = f32_backend.with_matmul_precision(kernel.precision);
        let (first, second) = two_losses(&backend);
        eprintln!(
            "{}: losses {first:.6} → {second:.6}, gemm crate f32 {f32_first:.6} → {f32_second:.6}",
            kernel.name
        );
        // bf16 inputs move the loss by ~1e-4 relative here; f32 on another summation order by ~1e-7.
        let tolerance = if kernel.bf16 { 1e-2 } else { 1e-5 };
        for (f, b) in [(f32_first, first), (f32_second, second)] {
            assert!(
                (f - b).abs() <= tolerance * f.abs(),
                "{}: loss {b} vs f32 {f}",
                kernel.name
            );
        }
        // The step moved the loss by much more than the gap, so the comparison above says something.
        assert!((f32_first - f32_second).abs() > 10.0 * (f32_second - second).abs());
        if kernel.bf16 {
            assert_ne!(
                f32_first.to_bits(),
                first.to_bits(),
                "bf16 products should change the bits"
            );
        }
        let again = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| two_losses(&backend));
        assert_eq!(
            (again.0.to_bits(), again.1.to_bits()),
            (first.to_bits(), second.to_bits()),
            "{}: another run on 3 threads",
            kernel.name
        );
    }
}
