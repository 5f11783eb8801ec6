//! The block-wise model: its forward equals the whole model's layer, its gradient (MSE against a target,
//! normalised or not, under every weight quantizer) matches f64 finite differences, and the MSE kernel equals
//! its definition.

mod engine_support;

use engine_support::*;
use tern_format::Architecture;
use tern_quantizer::engine::{
    tiny_config, Backend, BlockModel, CpuBackend, EngineConfig, LossGrad, ParamKind, Parameters, QuantConfig,
    Recompute, ScaleGroups, SoftState, SplitMix64, Transformer, WeightQuantizer, WriteMode,
};

type B64 = CpuBackend<f64>;

fn config(arch: Architecture, quant: QuantConfig) -> EngineConfig {
    EngineConfig {
        model: tiny_config(arch, 24, 3, 4, 2, 6, 20, 19, true),
        batch_size: 2,
        seq_len: 5,
        quant,
        recompute: Recompute::None,
    }
}

fn random_params(layout: &[tern_quantizer::engine::ParamSpec], rng: &mut SplitMix64) -> Vec<Vec<f64>> {
    layout
        .iter()
        .map(|s| match s.kind {
            ParamKind::Norm => (0..s.numel()).map(|_| 1.0 + 0.2 * rng.normal()).collect(),
            _ => randn(rng, s.numel(), 0.3),
        })
        .collect()
}

#[test]
fn block_forward_equals_the_whole_models_layer() {
    let be = B64::new();
    for arch in [Architecture::Llama, Architecture::BitNetB158] {
        let cfg = config(arch, QuantConfig::W158_A8);
        let mut whole = Transformer::new(&be, cfg.clone()).unwrap();
        let layout = whole.layout().clone();
        let mut rng = SplitMix64::new(3);
        let host = random_params(&layout.specs, &mut rng);
        let params = Parameters::from_host(&be, &layout, &host).unwrap();
        let tokens: Vec<u32> = (0..cfg.tokens()).map(|_| rng.below(19) as u32).collect();
        whole.forward_logits(&be, &params, &tokens).unwrap();
        for l in 0..3 {
            let mut block = BlockModel::new(&be, cfg.clone(), l).unwrap();
            let block_host: Vec<Vec<f64>> = block.layout().global_ids.iter().map(|g| host[g.0].clone()).collect();
            let bparams = Parameters::from_host(&be, &block.layout().param_layout(), &block_host).unwrap();
            let x_in = be.download(whole.residual_stream(l).unwrap()).unwrap();
            let out = be.download(block.forward(&be, &bparams, &x_in).unwrap()).unwrap();
            let want = be.download(whole.residual_stream(l + 1).unwrap()).unwrap();
            assert_eq!(out, want, "{arch:?} layer {l}");
        }
    }
}

#[test]
fn mse_kernel_matches_its_definition_and_finite_differences() {
    let be = B64::new();
    let mut rng = SplitMix64::new(9);
    let (rows, cols) = (3, 7);
    let y = randn(&mut rng, rows * cols, 1.0);
    let t = randn(&mut rng, rows * cols, 1.0);
    for normalize in [false, true] {
        let mut losses = vec![0.0; rows];
        let mut grad = vec![0.0; rows * cols];
        be.mse_loss(
            &mut losses,
            Some(LossGrad {
                dlogits: &mut grad,
                scale: 1.0,
                mode: WriteMode::Overwrite,
            }),
            &y,
            &t,
            cols,
            normalize,
        )
        .unwrap();
        for r in 0..rows {
            let (yr, tr) = (&y[r * cols..(r + 1) * cols], &t[r * cols..(r + 1) * cols]);
            let err: f64 = yr.iter().zip(tr).map(|(a, b)| (a - b) * (a - b)).sum();
            let d = if normalize {
                tr.iter().map(|x| x * x).sum()
            } else {
                cols as f64
            };
            assert!((losses[r] - err / d).abs() < 1e-14);
        }
        let total = |y: &[f64]| {
            let mut l = vec![0.0; rows];
            be.mse_loss(&mut l, None, &y.to_vec(), &t, cols, normalize).unwrap();
            l.iter().sum::<f64>()
        };
        let mut yy = y.clone();
        fd_check("mse", &mut yy, &grad, 0..rows * cols, total);
    }
}

#[test]
fn block_gradient_matches_finite_differences_for_every_quantizer() {
    let be = B64::new();
    let soft = QuantConfig {
        weights: WeightQuantizer::Soft,
        scale_groups: ScaleGroups::PerRow,
        int8_activations: false,
    };
    for (arch, quant, normalize, seed) in [
        (Architecture::Llama, QuantConfig::FULL_PRECISION, false, 1),
        (Architecture::BitNetB158, QuantConfig::FULL_PRECISION, true, 2),
        (Architecture::Llama, soft, true, 3),
        (Architecture::BitNetB158, soft, false, 4),
    ] {
        let cfg = config(arch, quant);
        let mut block = BlockModel::new(&be, cfg.clone(), 1).unwrap();
        let mut rng = SplitMix64::new(seed);
        for (i, id) in block.quantized_params().into_iter().enumerate() {
            block
                .set_soft_state(
                    id,
                    SoftState {
                        temperature: 0.25 + 0.03 * i as f64,
                        pressure: 0.8,
                    },
                )
                .unwrap();
        }
        let layout = block.layout().param_layout();
        let mut host = random_params(&layout.specs, &mut rng);
        let n = cfg.tokens() * 24;
        let x = randn(&mut rng, n, 1.0);
        let target = randn(&mut rng, n, 1.0);
        let params = Parameters::from_host(&be, &layout, &host).unwrap();
        let mut grads = Parameters::zeros(&be, &layout).unwrap();
        let loss = block.forward_train(&be, &params, &x, &target, normalize, 1.0).unwrap();
        assert!(loss.loss > 0.0);
        block.backward(&be, &params, &mut grads).unwrap();
        block.finish_gradients(&be, &params, &mut grads).unwrap();
        let grads = grads.to_host(&be).unwrap();
        for t in 0..layout.specs.len() {
            let idx = sample_indices(&mut rng, layout.specs[t].numel(), 8);
            let mut tensor = host[t].clone();
            fd_check(&layout.specs[t].name, &mut tensor, &grads[t], idx, |v| {
                let saved = std::mem::replace(&mut host[t], v.to_vec());
                let p = Parameters::from_host(&be, &layout, &host).unwrap();
                let l = block.forward_eval(&be, &p, &x, &target, normalize).unwrap().loss;
                host[t] = saved;
                l
            });
        }
        // backward needs a training forward first.
        let mut g = Parameters::zeros(&be, &layout).unwrap();
        assert!(block.backward(&be, &params, &mut g).is_err());
    }
}
