//! Whole-model checks: the gradient of a tiny random transformer (both architectures, odd sizes) against
//! central finite differences in f64, the straight-through gradient of the ternary model against the
//! full-precision gradient at the quantized weights, recomputation, memory accounting, typed errors.

mod engine_support;

use engine_support::*;
use tern_format::{Architecture, ModelConfig, RopeScaling, RopeStyle};
use tern_quantizer::engine::{
    estimate_memory, tiny_config, Batch, CpuBackend, EngineConfig, EngineError, Float, NonFiniteSource, Objective,
    ParamKind, ParamLayout, Parameters, QuantConfig, Recompute, SplitMix64, Transformer, IGNORE_INDEX,
};

type B64 = CpuBackend<f64>;
type B32 = CpuBackend<f32>;

/// hidden 48, 6 query heads and 3 KV heads of dim 8, FFN 40, vocab 37, two layers.
fn odd_config(arch: Architecture, tied: bool, style: RopeStyle, scaling: RopeScaling) -> ModelConfig {
    let mut cfg = tiny_config(arch, 48, 2, 6, 3, 8, 40, 37, tied);
    cfg.rope_style = style;
    cfg.rope_scaling = scaling;
    cfg
}

fn engine_config(
    model: ModelConfig,
    batch: usize,
    seq: usize,
    quant: QuantConfig,
    recompute: Recompute,
) -> EngineConfig {
    EngineConfig {
        model,
        batch_size: batch,
        seq_len: seq,
        quant,
        recompute,
    }
}

/// Random parameters with std 0.3 matrices and norm gains 1 ± 0.2, so every path carries signal.
fn random_host_params<T: Float>(layout: &ParamLayout, seed: u64) -> Vec<Vec<T>> {
    let mut rng = SplitMix64::new(seed);
    layout
        .specs
        .iter()
        .map(|s| {
            (0..s.numel())
                .map(|_| {
                    let v = match s.kind {
                        ParamKind::Norm => 1.0 + 0.2 * rng.normal(),
                        _ => 0.3 * rng.normal(),
                    };
                    T::from_f64(v)
                })
                .collect()
        })
        .collect()
}

struct Data {
    tokens: Vec<u32>,
    targets: Vec<u32>,
    teacher: Vec<f64>,
}

fn random_data(cfg: &EngineConfig, seed: u64, ignore_some: bool) -> Data {
    let mut rng = SplitMix64::new(seed);
    let n = cfg.tokens();
    let vocab = cfg.model.vocab_size as u64;
    let tokens = (0..n).map(|_| rng.below(vocab) as u32).collect();
    let targets = (0..n)
        .map(|i| {
            if ignore_some && i % 4 == 1 {
                IGNORE_INDEX
            } else {
                rng.below(vocab) as u32
            }
        })
        .collect();
    let teacher = randn(&mut rng, n * vocab as usize, 2.0);
    Data {
        tokens,
        targets,
        teacher,
    }
}

fn mixed_objective() -> Objective {
    Objective {
        ce_weight: 0.6,
        kl_weight: 0.4,
        temperature: 1.7,
    }
}

/// Loss and gradients of the f64 model at `host` parameters.
fn loss_and_grads(
    be: &B64,
    model: &mut Transformer<B64>,
    host: &[Vec<f64>],
    data: &Data,
    teacher: &Vec<f64>,
    objective: &Objective,
) -> (f64, Vec<Vec<f64>>) {
    let params = Parameters::from_host(be, model.layout(), host).unwrap();
    let mut grads = Parameters::zeros(be, model.layout()).unwrap();
    let batch = Batch {
        tokens: &data.tokens,
        targets: &data.targets,
        teacher_logits: Some(teacher),
    };
    let report = model.forward_train(be, &params, &batch, objective, 1.0).unwrap();
    model.backward(be, &params, &mut grads).unwrap();
    (report.loss, grads.to_host(be).unwrap())
}

fn eval_loss(be: &B64, model: &mut Transformer<B64>, host: &[Vec<f64>], data: &Data, objective: &Objective) -> f64 {
    let params = Parameters::from_host(be, model.layout(), host).unwrap();
    let batch = Batch {
        tokens: &data.tokens,
        targets: &data.targets,
        teacher_logits: Some(&data.teacher),
    };
    model.forward_eval(be, &params, &batch, objective).unwrap().loss
}

fn check_model_gradient(model_cfg: ModelConfig, seed: u64) {
    let be = B64::new();
    let cfg = engine_config(
        model_cfg,
        2,
        5,
        QuantConfig::FULL_PRECISION,
        Recompute::Layers(vec![true, false]),
    );
    let mut model = Transformer::new(&be, cfg.clone()).unwrap();
    let layout = model.layout().clone();
    let mut host = random_host_params::<f64>(&layout, seed);
    let data = random_data(&cfg, seed + 1, true);
    let objective = mixed_objective();
    let (loss, grads) = loss_and_grads(&be, &mut model, &host, &data, &data.teacher, &objective);
    assert!(loss.is_finite() && loss > 0.0);
    let mut rng = SplitMix64::new(seed + 2);
    let mut worst: f64 = 0.0;
    for (t, spec) in layout.specs.iter().enumerate() {
        // All of every norm gain; a random sample of each matrix (plus its first and last element).
        let indices = match spec.kind {
            ParamKind::Norm => (0..spec.numel()).collect(),
            _ => sample_indices(&mut rng, spec.numel(), 12),
        };
        let mut tensor = host[t].clone();
        let err = fd_check(&spec.name, &mut tensor, &grads[t], indices, |v| {
            let saved = std::mem::replace(&mut host[t], v.to_vec());
            let l = eval_loss(&be, &mut model, &host, &data, &objective);
            host[t] = saved;
            l
        });
        worst = worst.max(err);
    }
    eprintln!("{:?}: worst |analytic − finite difference| = {worst:e}", cfg.model.arch);
}

#[test]
fn llama_model_gradient_matches_finite_differences() {
    let scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context: 64,
    };
    check_model_gradient(
        odd_config(Architecture::Llama, true, RopeStyle::Interleaved, scaling),
        100,
    );
}

#[test]
fn bitnet_model_gradient_matches_finite_differences() {
    check_model_gradient(
        odd_config(Architecture::BitNetB158, false, RopeStyle::Half, RopeScaling::None),
        200,
    );
}

/// Ternary fake quantization written out independently of the engine (absmean, round half to even).
fn ref_ternary(w: &[f64]) -> Vec<f64> {
    let s = (w.iter().map(|v| v.abs()).sum::<f64>() / w.len() as f64).max(1e-5);
    w.iter()
        .map(|v| (v / s).round_ties_even().clamp(-1.0, 1.0) * s)
        .collect()
}

#[test]
fn ste_model_gradient_equals_full_precision_gradient_at_quantized_weights() {
    // With W1.58/A16, the STE forward is the full-precision network evaluated at Ŵ, and its backward hands
    // ∂L/∂Ŵ to the latent W unchanged: so loss and all gradients must equal those of a full-precision model
    // whose linear weights are replaced by Ŵ (and that model's gradient is itself checked by finite
    // differences above).
    let be = B64::new();
    for (arch, seed) in [(Architecture::Llama, 300), (Architecture::BitNetB158, 310)] {
        let model_cfg = odd_config(
            arch,
            arch == Architecture::Llama,
            RopeStyle::Interleaved,
            RopeScaling::None,
        );
        let ste_cfg = engine_config(model_cfg, 2, 5, QuantConfig::W158_A16, Recompute::None);
        let fp_cfg = engine_config(model_cfg, 2, 5, QuantConfig::FULL_PRECISION, Recompute::None);
        let mut ste = Transformer::new(&be, ste_cfg.clone()).unwrap();
        let mut fp = Transformer::new(&be, fp_cfg).unwrap();
        let layout = ste.layout().clone();
        let latent = random_host_params::<f64>(&layout, seed);
        let at_quantized: Vec<Vec<f64>> = layout
            .specs
            .iter()
            .zip(&latent)
            .map(|(s, w)| {
                if s.kind == ParamKind::Linear {
                    ref_ternary(w)
                } else {
                    w.clone()
                }
            })
            .collect();
        let data = random_data(&ste_cfg, seed + 1, false);
        let objective = mixed_objective();
        let (loss_ste, grads_ste) = loss_and_grads(&be, &mut ste, &latent, &data, &data.teacher, &objective);
        let (loss_fp, grads_fp) = loss_and_grads(&be, &mut fp, &at_quantized, &data, &data.teacher, &objective);
        assert!((loss_ste - loss_fp).abs() < 1e-12, "{loss_ste} vs {loss_fp}");
        for (spec, (g, h)) in layout.specs.iter().zip(grads_ste.iter().zip(&grads_fp)) {
            assert_close(&spec.name, g, h, 1e-10);
        }
        // And the quantization did change the network: the latent model's loss differs.
        let mut fp_latent = Transformer::new(
            &be,
            engine_config(model_cfg, 2, 5, QuantConfig::FULL_PRECISION, Recompute::None),
        )
        .unwrap();
        assert!((eval_loss(&be, &mut fp_latent, &latent, &data, &objective) - loss_ste).abs() > 1e-3);
    }
}

#[test]
fn recomputation_gives_bit_identical_losses_and_gradients() {
    let be = B32::new();
    let model_cfg = tiny_config(Architecture::BitNetB158, 32, 3, 4, 2, 8, 24, 29, true);
    let mut results = Vec::new();
    for recompute in [
        Recompute::None,
        Recompute::All,
        Recompute::Layers(vec![false, true, false]),
    ] {
        let cfg = engine_config(model_cfg, 2, 9, QuantConfig::W158_A8, recompute);
        let mut model = Transformer::new(&be, cfg.clone()).unwrap();
        let params = Parameters::from_host(&be, model.layout(), &random_host_params::<f32>(model.layout(), 7)).unwrap();
        let mut grads = Parameters::zeros(&be, model.layout()).unwrap();
        let data = random_data(&cfg, 8, true);
        let batch = Batch {
            tokens: &data.tokens,
            targets: &data.targets,
            teacher_logits: None,
        };
        let report = model
            .forward_train(&be, &params, &batch, &Objective::cross_entropy(), 1.0)
            .unwrap();
        model.backward(&be, &params, &mut grads).unwrap();
        results.push((report.loss, grads.to_host(&be).unwrap()));
    }
    for r in &results[1..] {
        assert_eq!(r.0.to_bits(), results[0].0.to_bits());
        assert!(r.1 == results[0].1, "gradients differ under recomputation");
    }
}

#[test]
fn memory_estimate_matches_allocated_buffers() {
    let be = B32::new();
    for (arch, quant, recompute) in [
        (Architecture::Llama, QuantConfig::FULL_PRECISION, Recompute::None),
        (Architecture::Llama, QuantConfig::W158_A8, Recompute::All),
        (
            Architecture::BitNetB158,
            QuantConfig::W158_A16,
            Recompute::Layers(vec![true, false]),
        ),
        (Architecture::BitNetB158, QuantConfig::W158_A8, Recompute::None),
    ] {
        let cfg = engine_config(
            odd_config(arch, false, RopeStyle::Interleaved, RopeScaling::None),
            2,
            7,
            quant,
            recompute,
        );
        let mut model = Transformer::new(&be, cfg.clone()).unwrap();
        let params = Parameters::init_random(&be, model.layout(), 1, 0.02).unwrap();
        let mut grads = Parameters::zeros(&be, model.layout()).unwrap();
        let data = random_data(&cfg, 2, false);
        let batch = Batch {
            tokens: &data.tokens,
            targets: &data.targets,
            teacher_logits: None,
        };
        model
            .forward_train(&be, &params, &batch, &Objective::cross_entropy(), 1.0)
            .unwrap();
        model.backward(&be, &params, &mut grads).unwrap();
        let estimate = estimate_memory(&cfg).unwrap();
        assert_eq!(model.allocated(&be), estimate, "{cfg:?}");
        let param_elems: usize = params.tensors.iter().map(|t| t.len()).sum();
        assert_eq!(estimate.parameters, param_elems);
    }
}

fn smollm2_config() -> ModelConfig {
    let mut cfg = tiny_config(Architecture::Llama, 576, 30, 9, 3, 64, 1536, 49152, true);
    cfg.rope_theta = 100000.0;
    cfg.context_length = 8192;
    cfg
}

#[test]
fn smollm2_training_memory_at_seq_512_fits_well_inside_24_gib() {
    const GIB: f64 = (1u64 << 30) as f64;
    let model = smollm2_config();
    let layout = ParamLayout::new(&model);
    assert!(
        (134_000_000..135_000_000).contains(&layout.numel()),
        "SmolLM2-135M has {} parameters",
        layout.numel()
    );
    for (batch, recompute, budget_gib) in [
        (8, Recompute::None, 16.0),
        (8, Recompute::All, 6.0),
        (16, Recompute::All, 8.0),
    ] {
        let cfg = engine_config(model, batch, 512, QuantConfig::W158_A8, recompute.clone());
        let m = estimate_memory(&cfg).unwrap();
        let total = m.training_bytes(4) as f64 / GIB;
        eprintln!(
            "SmolLM2-135M B={batch} T=512 recompute={recompute:?}: params {:.2} GiB ×4 (w, grad, m, v), ternary copies \
             {:.2} GiB, activations {:.2} GiB, backward {:.2} GiB, total {total:.2} GiB",
            m.parameters as f64 * 4.0 / GIB,
            m.quantized_weights as f64 * 4.0 / GIB,
            m.activations as f64 * 4.0 / GIB,
            m.backward as f64 * 4.0 / GIB,
        );
        assert!(total < budget_gib, "{total} GiB");
    }
}

#[test]
fn invalid_inputs_and_non_finite_losses_are_typed_errors() {
    let be = B32::new();
    let cfg = engine_config(
        tiny_config(Architecture::Llama, 16, 1, 2, 1, 8, 24, 11, true),
        1,
        4,
        QuantConfig::W158_A8,
        Recompute::None,
    );
    let mut model = Transformer::new(&be, cfg).unwrap();
    let mut params = Parameters::init_random(&be, model.layout(), 3, 0.02).unwrap();
    let mut grads = Parameters::zeros(&be, model.layout()).unwrap();
    let ce = Objective::cross_entropy();
    assert!(matches!(
        model.backward(&be, &params, &mut grads),
        Err(EngineError::NoForwardState)
    ));
    let batch = |tokens: &'static [u32]| Batch::<B32> {
        tokens,
        targets: &[1, 2, 3, 4],
        teacher_logits: None,
    };
    let err = model
        .forward_train(&be, &params, &batch(&[1, 2, 11, 3]), &ce, 1.0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::TokenOutOfRange {
                token: 11,
                position: 2,
                vocab: 11
            }
        ),
        "{err}"
    );
    let err = model
        .forward_train(&be, &params, &batch(&[1, 2, 3]), &ce, 1.0)
        .unwrap_err();
    assert!(matches!(err, EngineError::Shape { .. }), "{err}");
    let err = model
        .forward_train(&be, &params, &batch(&[1, 2, 3, 4]), &Objective::distillation(2.0), 1.0)
        .unwrap_err();
    assert!(matches!(err, EngineError::Config(_)), "{err}");
    // A NaN in a norm gain poisons the loss: training must stop with a typed error, and no backward state is left.
    let norm = model.layout().layers[0].attn_norm;
    params.get_mut(norm)[0] = f32::NAN;
    let err = model
        .forward_train(&be, &params, &batch(&[1, 2, 3, 4]), &ce, 1.0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::NonFinite {
                source_kind: NonFiniteSource::Loss,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        model.backward(&be, &params, &mut grads),
        Err(EngineError::NoForwardState)
    ));
    let bad = engine_config(
        tiny_config(Architecture::Llama, 16, 2, 2, 1, 8, 24, 11, true),
        1,
        4,
        QuantConfig::W158_A8,
        Recompute::Layers(vec![true]),
    );
    assert!(matches!(Transformer::new(&be, bad), Err(EngineError::Config(_))));
}

#[test]
fn model_gradients_do_not_depend_on_the_thread_count() {
    // Every reduction has a fixed order, so a run resumed with another thread count stays bit-identical.
    let be = B32::new();
    let model_cfg = tiny_config(Architecture::Llama, 64, 2, 4, 2, 16, 96, 300, false);
    let cfg = engine_config(model_cfg, 3, 70, QuantConfig::W158_A8, Recompute::None);
    let data = random_data(&cfg, 11, true);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut model = Transformer::new(&be, cfg.clone()).unwrap();
            let params =
                Parameters::from_host(&be, model.layout(), &random_host_params::<f32>(model.layout(), 12)).unwrap();
            let mut grads = Parameters::zeros(&be, model.layout()).unwrap();
            let batch = Batch {
                tokens: &data.tokens,
                targets: &data.targets,
                teacher_logits: None,
            };
            let loss = model
                .forward_train(&be, &params, &batch, &Objective::cross_entropy(), 1.0)
                .unwrap()
                .loss;
            model.backward(&be, &params, &mut grads).unwrap();
            (loss.to_bits(), grads.to_host(&be).unwrap())
        })
    };
    let two = run(2);
    assert!(run(1) == two);
    assert!(run(3) == two);
}
