//! The weight quantizers: Hestia's soft relaxation against its softmax definition and f64 finite differences
//! (through the scale), its T → 0 limit against the hard quantizer, grouped scales against a direct f64
//! computation, the T0 solver against a brute-force grid, the schedules, and a whole soft-quantized model's
//! gradient against finite differences.

mod engine_support;

use engine_support::*;
use tern_format::Architecture;
use tern_quantizer::engine::quant::schedule::{
    base_temperature, soft_quantization_error, AnnealShape, HestiaSchedule, TemperatureStyle,
};
use tern_quantizer::engine::quant::soft::{soft_code, soft_code_by_softmax};
use tern_quantizer::engine::{
    tiny_config, Backend, Batch, CpuBackend, EngineConfig, Objective, ParamKind, Parameters, QuantConfig, Recompute,
    ScaleGroups, SoftState, SplitMix64, Transformer, WeightQuantizer,
};

type B64 = CpuBackend<f64>;

const TEMPERATURES: [f64; 7] = [0.02, 0.1, 0.2, 0.351, 1.0, 2.0, 10.0];

fn z_grid() -> Vec<f64> {
    (-400..=400).map(|i| i as f64 * 0.0075 + 0.0013).collect()
}

#[test]
fn closed_form_equals_the_softmax_definition() {
    let mut worst: f64 = 0.0;
    for &t in &TEMPERATURES {
        for z in z_grid() {
            let (s, _) = soft_code(z, t);
            let reference = soft_code_by_softmax(z, t);
            let err = (s - reference).abs();
            assert!(err <= 1e-14, "T {t}, z {z}: closed form {s} vs softmax {reference}");
            worst = worst.max(err);
        }
    }
    eprintln!("closed form vs softmax: max |Δ| = {worst:e}");
    // The form the issue states, sinh(2z/T) / (cosh(2z/T) + ½·e^(1/T)), where it does not overflow.
    for z in [-1.3f64, -0.4, 0.0, 0.2, 0.7] {
        let t = 0.5f64;
        let direct = (2.0 * z / t).sinh() / ((2.0 * z / t).cosh() + 0.5 * (1.0 / t).exp());
        assert!((soft_code(z, t).0 - direct).abs() < 1e-14);
    }
}

#[test]
fn derivative_matches_finite_differences_of_the_definition() {
    for &t in &TEMPERATURES {
        for z in z_grid() {
            let h = 1e-6 * t.min(1.0);
            let numeric = (soft_code_by_softmax(z + h, t) - soft_code_by_softmax(z - h, t)) / (2.0 * h);
            let (_, analytic) = soft_code(z, t);
            let err = (analytic - numeric).abs();
            assert!(
                err <= 1e-6 * (1.0 + numeric.abs()),
                "T {t}, z {z}: dσ/dz {analytic} vs finite difference {numeric}"
            );
        }
    }
}

#[test]
fn small_temperatures_are_finite_and_tend_to_the_hard_quantizer() {
    for t in [1e-3, 1e-6, 1e-12, 1e-30, 1e-300, f64::MIN_POSITIVE] {
        for z in z_grid() {
            let (s, ds) = soft_code(z, t);
            assert!(s.is_finite() && ds.is_finite(), "T {t}, z {z}: {s}, {ds}");
            let hard = z.round_ties_even().clamp(-1.0, 1.0);
            if ((z.abs() - 0.5).abs() > 0.02 && t <= 1e-3) || (z.abs() - 0.5).abs() > 1e-9 && t <= 1e-12 {
                assert!((s - hard).abs() < 1e-12, "T {t}, z {z}: {s} vs hard {hard}");
            }
        }
    }
    // f32 too (what training computes in).
    for t in [1e-3f32, 1e-6, 1e-20, 1e-38] {
        for i in -300..=300 {
            let z = i as f32 * 0.01 + 0.003;
            let (s, ds) = soft_code(z, t);
            assert!(s.is_finite() && ds.is_finite(), "f32 T {t}, z {z}: {s}, {ds}");
        }
    }
}

/// `Ŵ` written out independently in f64: scale per group, softmax definition, lerp.
fn reference_forward(w: &[f64], group_len: usize, t: f64, pressure: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(w.len());
    for g in w.chunks(group_len) {
        let a = (g.iter().map(|x| x.abs()).sum::<f64>() / g.len() as f64).max(1e-5);
        for &x in g {
            let code = if t == 0.0 {
                (x / a).round_ties_even().clamp(-1.0, 1.0)
            } else {
                soft_code_by_softmax(x / a, t)
            };
            out.push((1.0 - pressure) * x + pressure * code * a);
        }
    }
    out
}

const GROUPINGS: [(ScaleGroups, usize); 3] = [
    (ScaleGroups::PerTensor, 7 * 24),
    (ScaleGroups::PerRow, 24),
    (ScaleGroups::Group(8), 8),
];

#[test]
fn soft_forward_matches_the_reference_for_every_grouping() {
    let be = B64::new();
    let mut rng = SplitMix64::new(5);
    let (rows, cols) = (7, 24);
    let w = randn(&mut rng, rows * cols, 0.4);
    for (groups, expected_len) in GROUPINGS {
        let group_len = groups.group_len(rows, cols).unwrap();
        assert_eq!(group_len, expected_len);
        for &(t, p) in &[(0.351, 1.0), (0.1, 0.3), (2.0, 0.0), (0.0, 1.0), (0.0, 0.5)] {
            let mut out = vec![0.0; w.len()];
            let state = SoftState {
                temperature: t,
                pressure: p,
            };
            be.quantize_ternary_soft(&mut out, &w, group_len, state).unwrap();
            assert_close(
                &format!("{groups:?} T {t} λ {p}"),
                &out,
                &reference_forward(&w, group_len, t, p),
                1e-14,
            );
        }
        // T = 0 at full pressure is exactly the hard (STE) quantizer.
        let (mut soft, mut hard) = (vec![0.0; w.len()], vec![0.0; w.len()]);
        be.quantize_ternary_soft(&mut soft, &w, group_len, SoftState::HARD)
            .unwrap();
        be.quantize_ternary_hard(&mut hard, &w, group_len).unwrap();
        assert_eq!(soft, hard);
    }
}

#[test]
fn soft_backward_matches_finite_differences_through_the_scale() {
    let be = B64::new();
    let mut rng = SplitMix64::new(11);
    let (rows, cols) = (5, 16);
    let w0 = randn(&mut rng, rows * cols, 0.5);
    // L = Σ c_j Ŵ_j for random c: ∂L/∂Ŵ = c.
    let c = randn(&mut rng, rows * cols, 1.0);
    for (groups, _) in [
        (ScaleGroups::PerTensor, 0),
        (ScaleGroups::PerRow, 0),
        (ScaleGroups::Group(4), 0),
    ] {
        let group_len = groups.group_len(rows, cols).unwrap();
        for &(t, p) in &[(0.351, 1.0), (0.1, 0.6), (1.5, 0.25), (0.05, 1.0)] {
            let state = SoftState {
                temperature: t,
                pressure: p,
            };
            let loss = |w: &[f64]| {
                let mut out = vec![0.0; w.len()];
                be.quantize_ternary_soft(&mut out, &w.to_vec(), group_len, state)
                    .unwrap();
                dot(&out, &c)
            };
            let mut grad = c.clone();
            be.quantize_ternary_soft_backward(&mut grad, &w0, group_len, state)
                .unwrap();
            let mut w = w0.clone();
            // Sharp quantizers (small T over groups of 4) have large third derivatives: a small step keeps the
            // truncation error (~h²·f‴) below the tolerance; rounding (~1e-16·|L|/h) is still ~1e-9.
            fd_check_with_step(
                &format!("{groups:?} T {t} λ {p}"),
                &mut w,
                &grad,
                0..rows * cols,
                1e-7,
                loss,
            );
            // The scale term matters: without it the gradient would differ.
            let detached: Vec<f64> = {
                let mut out = Vec::new();
                for (gw, gc) in w0.chunks(group_len).zip(c.chunks(group_len)) {
                    let a = gw.iter().map(|x| x.abs()).sum::<f64>() / gw.len() as f64;
                    for (&x, &ci) in gw.iter().zip(gc) {
                        let (_, ds) = soft_code(x / a, t);
                        out.push((1.0 - p) * ci + p * ci * ds);
                    }
                }
                out
            };
            let diff = grad
                .iter()
                .zip(&detached)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff > 1e-4, "{groups:?} T {t}: the scale gradient is missing ({diff})");
        }
    }
    // At T = 0 the backward is the straight-through identity.
    let mut grad = c.clone();
    be.quantize_ternary_soft_backward(&mut grad, &w0, 16, SoftState::HARD)
        .unwrap();
    assert_eq!(grad, c);
}

#[test]
fn f32_soft_kernels_agree_with_f64() {
    let be64 = B64::new();
    let be32 = CpuBackend::<f32>::new();
    let mut rng = SplitMix64::new(21);
    let n = 40_000; // more than one reduction chunk
    let w = randn(&mut rng, n, 0.05);
    let g = randn(&mut rng, n, 1.0);
    let state = SoftState {
        temperature: 0.2,
        pressure: 0.8,
    };
    let (w32, g32): (Vec<f32>, Vec<f32>) = (
        w.iter().map(|&x| x as f32).collect(),
        g.iter().map(|&x| x as f32).collect(),
    );
    let (mut o64, mut o32) = (vec![0.0; n], vec![0.0f32; n]);
    be64.quantize_ternary_soft(&mut o64, &w, n, state).unwrap();
    be32.quantize_ternary_soft(&mut o32, &w32, n, state).unwrap();
    let o32: Vec<f64> = o32.iter().map(|&x| x as f64).collect();
    // Measured 8.0e-9 (forward) and 3.8e-7 (backward) relative to 1 + |f64 value|; bounds at about 10x.
    assert_close("f32 forward", &o32, &o64, 1e-7);
    let (mut d64, mut d32) = (g.clone(), g32.clone());
    be64.quantize_ternary_soft_backward(&mut d64, &w, n, state).unwrap();
    be32.quantize_ternary_soft_backward(&mut d32, &w32, n, state).unwrap();
    let d32: Vec<f64> = d32.iter().map(|&x| x as f64).collect();
    assert_close("f32 backward", &d32, &d64, 4e-6);
}

#[test]
fn base_temperature_is_the_grid_minimum() {
    let t0 = base_temperature();
    // Brute force over [0.1, 2] in steps of 1e-4.
    let (mut best_t, mut best_e) = (0.1, f64::INFINITY);
    for i in 0..=19_000 {
        let t = 0.1 + i as f64 * 1e-4;
        let e = soft_quantization_error(t);
        if e < best_e {
            (best_t, best_e) = (t, e);
        }
    }
    assert!((t0 - best_t).abs() <= 1e-4, "solver {t0} vs grid {best_t}");
    assert!(soft_quantization_error(t0) <= best_e + 1e-12);
    // The value Hestia's code reports (REFERENCE.md: ≈ 0.351).
    assert!((t0 - 0.351).abs() < 0.002, "T0 = {t0}");
    // The quadrature itself, against a Monte-Carlo estimate with a fixed seed (10⁶ samples: ~1e-3 relative).
    let mut rng = SplitMix64::new(3);
    let sd = (std::f64::consts::PI / 2.0).sqrt();
    let m = 1_000_000;
    let mc: f64 = (0..m)
        .map(|_| {
            let z = rng.normal() * sd;
            let (s, _) = soft_code(z, t0);
            (s - z) * (s - z)
        })
        .sum::<f64>()
        / m as f64;
    let quad = soft_quantization_error(t0);
    assert!((mc - quad).abs() < 5e-3 * quad, "Monte Carlo {mc} vs quadrature {quad}");
    eprintln!("T0 = {t0:.6}, E[(σ−z)²] = {quad:.6}");
}

#[test]
fn schedules_ramp_hold_and_anneal() {
    let t0 = 0.35;
    let sched = |anneal, style| HestiaSchedule {
        total_steps: 100,
        rho: 0.2,
        base_temperature: t0,
        anneal,
        style,
    };
    let hessian = sched(AnnealShape::Cosine, TemperatureStyle::Hessian);
    let reference = sched(AnnealShape::Cosine, TemperatureStyle::Reference);
    let linear = sched(AnnealShape::Linear, TemperatureStyle::Hessian);
    let c = 0.7;
    // Pressure ramps linearly over the first 20 steps.
    assert_eq!(hessian.state(0, c).pressure, 0.0);
    assert!((hessian.state(10, c).pressure - 0.5).abs() < 1e-15);
    assert_eq!(hessian.state(20, c).pressure, 1.0);
    assert_eq!(hessian.state(99, c).pressure, 1.0);
    // Held at T0·c while it ramps, in both styles.
    for s in [0, 7, 19] {
        assert!((hessian.state(s, c).temperature - t0 * c).abs() < 1e-15);
        assert!((reference.state(s, c).temperature - t0 * c).abs() < 1e-15);
    }
    // The anneal starts from T0·c (hessian) or from the unscaled T0 (reference: the jump).
    assert!((hessian.state(20, c).temperature - t0 * c).abs() < 1e-15);
    assert!((reference.state(20, c).temperature - t0).abs() < 1e-15);
    // Halfway through the anneal: cosine gives half, linear gives half.
    assert!((hessian.state(60, c).temperature - 0.5 * t0 * c).abs() < 1e-12);
    assert!((linear.state(60, c).temperature - 0.5 * t0 * c).abs() < 1e-12);
    // Quarter: cosine ½(1 + cos(π/4)), linear ¾.
    let cq = 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos());
    assert!((hessian.state(40, c).temperature - cq * t0 * c).abs() < 1e-12);
    assert!((linear.state(40, c).temperature - 0.75 * t0 * c).abs() < 1e-12);
    // Monotone non-increasing after the ramp, ending near zero.
    let mut last = f64::INFINITY;
    for s in 20..100 {
        let t = hessian.state(s, c).temperature;
        assert!(t <= last && t >= 0.0);
        last = t;
    }
    assert!(last < 0.01 * t0);
}

/// Gradient of a tiny model under the soft quantizer (per-row groups, some pressure) vs finite differences of
/// the loss with respect to the latent weights: checks the whole chain (linear layers accumulate ∂L/∂Ŵ,
/// `finish_gradients` maps it through the quantizer).
#[test]
fn soft_quantized_model_gradient_matches_finite_differences() {
    let be = B64::new();
    for (arch, groups, seed) in [
        (Architecture::Llama, ScaleGroups::PerTensor, 400),
        (Architecture::BitNetB158, ScaleGroups::PerRow, 410),
    ] {
        let model_cfg = tiny_config(arch, 24, 2, 4, 2, 6, 20, 19, arch == Architecture::Llama);
        let cfg = EngineConfig {
            model: model_cfg,
            batch_size: 2,
            seq_len: 4,
            quant: QuantConfig {
                weights: WeightQuantizer::Soft,
                scale_groups: groups,
                int8_activations: false,
            },
            recompute: Recompute::None,
        };
        let mut model = Transformer::new(&be, cfg.clone()).unwrap();
        let layout = model.layout().clone();
        let mut rng = SplitMix64::new(seed);
        for (i, id) in model.quantized_params().into_iter().enumerate() {
            let state = SoftState {
                temperature: 0.2 + 0.05 * i as f64,
                pressure: 0.75,
            };
            model.set_soft_state(id, state).unwrap();
        }
        let mut host: Vec<Vec<f64>> = layout
            .specs
            .iter()
            .map(|s| match s.kind {
                ParamKind::Norm => (0..s.numel()).map(|_| 1.0 + 0.2 * rng.normal()).collect(),
                _ => randn(&mut rng, s.numel(), 0.3),
            })
            .collect();
        let n = cfg.tokens();
        let tokens: Vec<u32> = (0..n).map(|_| rng.below(19) as u32).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.below(19) as u32).collect();
        let objective = Objective::cross_entropy();
        let loss_at = |model: &mut Transformer<B64>, host: &[Vec<f64>]| {
            let params = Parameters::from_host(&be, &layout, host).unwrap();
            let batch = Batch {
                tokens: &tokens,
                targets: &targets,
                teacher_logits: None,
            };
            model.forward_eval(&be, &params, &batch, &objective).unwrap().loss
        };
        let params = Parameters::from_host(&be, &layout, &host).unwrap();
        let mut grads = Parameters::zeros(&be, &layout).unwrap();
        let batch = Batch {
            tokens: &tokens,
            targets: &targets,
            teacher_logits: None,
        };
        model.forward_train(&be, &params, &batch, &objective, 1.0).unwrap();
        model.backward(&be, &params, &mut grads).unwrap();
        model.finish_gradients(&be, &params, &mut grads).unwrap();
        let grads = grads.to_host(&be).unwrap();
        let mut checked = 0;
        for (t, spec) in layout.specs.iter().enumerate() {
            if spec.kind != ParamKind::Linear {
                continue;
            }
            let indices = sample_indices(&mut rng, spec.numel(), 10);
            let mut tensor = host[t].clone();
            fd_check(&spec.name, &mut tensor, &grads[t], indices, |v| {
                let saved = std::mem::replace(&mut host[t], v.to_vec());
                let l = loss_at(&mut model, &host);
                host[t] = saved;
                l
            });
            checked += 1;
        }
        assert_eq!(checked, 14);
    }
}

#[test]
fn soft_state_errors_are_typed() {
    let be = B64::new();
    let cfg = EngineConfig {
        model: tiny_config(Architecture::Llama, 24, 1, 4, 2, 6, 20, 19, true),
        batch_size: 1,
        seq_len: 4,
        quant: QuantConfig::W158_A16,
        recompute: Recompute::None,
    };
    let mut ste = Transformer::new(&be, cfg.clone()).unwrap();
    let id = ste.quantized_params()[0];
    assert!(
        ste.set_soft_state(id, SoftState::HARD).is_err(),
        "STE model has no soft state"
    );
    let soft_cfg = EngineConfig {
        quant: QuantConfig {
            weights: WeightQuantizer::Soft,
            ..QuantConfig::W158_A16
        },
        ..cfg.clone()
    };
    let mut soft = Transformer::new(&be, soft_cfg).unwrap();
    let bad = SoftState {
        temperature: f64::NAN,
        pressure: 1.0,
    };
    assert!(soft.set_soft_state(id, bad).is_err());
    assert!(soft
        .set_soft_state(
            id,
            SoftState {
                temperature: 0.1,
                pressure: 1.5
            }
        )
        .is_err());
    // A group size that does not divide the rows is refused when the engine is built.
    let grouped = EngineConfig {
        quant: QuantConfig {
            scale_groups: ScaleGroups::Group(7),
            ..QuantConfig::W158_A16
        },
        ..cfg
    };
    assert!(Transformer::new(&be, grouped).is_err());
}
