//! Hessian traces: the finite-difference Hessian-vector products and both estimators against the exact traces
//! of tiny f64 models (formed element by element from finite differences of the analytic gradient), errors
//! against the number of probes, f32 against f64, and typed errors.

use tern_format::Architecture;
use tern_quantizer::data::{HostBatch, PackedData};
use tern_quantizer::engine::{
    tiny_config, Batch, CpuBackend, EngineConfig, Objective, ParamKind, ParamLayout, Parameters, QuantConfig,
    Recompute, SplitMix64, Transformer,
};
use tern_quantizer::hessian::{
    calibration_batches, compute_traces, temperature_scales, HessianError, TemperatureScaleOptions, TraceConfig,
    TraceEntry, TraceMethod, TraceTable,
};
use tern_quantizer::tiny::random_source_model;
use tern_quantizer::train::layout_tensors_from_source;
use tern_quantizer::SourceModel;

type B64 = CpuBackend<f64>;

const SEQ: usize = 6;

fn tiny_model(seed: u64) -> SourceModel {
    // hidden 12, 2 layers, 2 heads of 6 with 1 KV head, FFN 16: 2 × 792 linear weights.
    let cfg = tiny_config(Architecture::Llama, 12, 2, 2, 1, 6, 16, 19, true);
    random_source_model(cfg, seed, 0.4, 0.5)
}

fn batches(seed: u64, n: usize) -> Vec<HostBatch> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let w: Vec<u32> = (0..=SEQ).map(|_| rng.below(19) as u32).collect();
            let mut b = HostBatch::default();
            b.push_window(&w);
            b
        })
        .collect()
}

/// Exact `tr(H_ii)` of every linear tensor: Σ_j ∂g_j/∂W_j by central differences of the analytic f64 gradient
/// (step 1e-5: error ~1e-10 per element).
fn exact_traces(src: &SourceModel, batches: &[HostBatch]) -> Vec<(String, f64)> {
    let be = B64::new();
    let cfg = EngineConfig {
        model: src.config,
        batch_size: 1,
        seq_len: SEQ,
        quant: QuantConfig::FULL_PRECISION,
        recompute: Recompute::None,
    };
    let mut model = Transformer::new(&be, cfg).unwrap();
    let layout: ParamLayout = model.layout().clone();
    let host: Vec<Vec<f64>> = layout_tensors_from_source(&layout, src)
        .unwrap()
        .into_iter()
        .map(|t| t.into_iter().map(f64::from).collect())
        .collect();
    let mut grad_at = |host: &[Vec<f64>], t: usize, j: usize| -> f64 {
        let params = Parameters::from_host(&be, &layout, host).unwrap();
        let mut total = 0.0;
        for b in batches {
            let mut grads = Parameters::zeros(&be, &layout).unwrap();
            let batch = Batch {
                tokens: &b.tokens,
                targets: &b.targets,
                teacher_logits: None,
            };
            model
                .forward_train(&be, &params, &batch, &Objective::cross_entropy(), 1.0)
                .unwrap();
            model.backward(&be, &params, &mut grads).unwrap();
            total += grads.tensors[t][j];
        }
        total / batches.len() as f64
    };
    let h = 1e-5;
    let mut out = Vec::new();
    let mut host = host;
    for (t, spec) in layout.specs.iter().enumerate() {
        if spec.kind != ParamKind::Linear {
            continue;
        }
        let mut trace = 0.0;
        for j in 0..spec.numel() {
            let orig = host[t][j];
            host[t][j] = orig + h;
            let plus = grad_at(&host, t, j);
            host[t][j] = orig - h;
            let minus = grad_at(&host, t, j);
            host[t][j] = orig;
            trace += (plus - minus) / (2.0 * h);
        }
        out.push((spec.name.clone(), trace));
    }
    out
}

/// Σ_i |est_i − exact_i| / Σ_i |exact_i|.
fn aggregate_error(table: &TraceTable, exact: &[(String, f64)]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (name, x) in exact {
        let est = table.trace_of(name).unwrap();
        num += (est - x).abs();
        den += x.abs();
    }
    num / den
}

#[test]
fn estimators_converge_to_the_exact_traces() {
    let src = tiny_model(1);
    let cal = batches(2, 2);
    let exact = exact_traces(&src, &cal);
    assert_eq!(exact.len(), 14);
    eprintln!("exact traces: {exact:?}");
    let be = B64::new();
    let run = |method, seed| {
        let cfg = TraceConfig {
            method,
            batches: cal.len(),
            seq_len: SEQ,
            seed,
            rel_eps: 1e-4,
            only: None,
        };
        compute_traces(&be, &src, &cal, &cfg, &mut |_, _| {}).unwrap()
    };
    let mut hutchinson = Vec::new();
    for probes in [16, 64, 256, 1024] {
        let e = aggregate_error(&run(TraceMethod::Hutchinson { probes }, 7), &exact);
        eprintln!("Hutchinson, {probes:5} probes per batch: aggregate relative error {e:.4}");
        hutchinson.push(e);
    }
    // Monte-Carlo error falls like 1/sqrt(probes): 64× the probes must cut it well below half.
    assert!(hutchinson[3] < 0.5 * hutchinson[0], "{hutchinson:?}");
    assert!(hutchinson[3] < 0.3, "{hutchinson:?}");
    // Hutch++ over all tensors at once: unbiased, but its low-rank part carries the cross-block curvature of the
    // other tensors without averaging it out, so at equal products it is noisier than Hutchinson here.
    for (sketch, queries) in [(4, 8), (16, 32), (64, 128)] {
        let e = aggregate_error(&run(TraceMethod::HutchPlusPlus { sketch, queries }, 7), &exact);
        eprintln!("Hutch++ (all tensors), sketch {sketch:3}, queries {queries:3}: aggregate relative error {e:.4}");
    }
    // One tensor probed alone has no cross-block terms: there Hutch++ is exact once the sketch spans the tensor
    // (attn_v of layer 0: 72 weights) and beats Hutchinson at equal cost below that.
    let single = |method| {
        let cfg = TraceConfig {
            method,
            batches: cal.len(),
            seq_len: SEQ,
            seed: 9,
            rel_eps: 1e-4,
            only: Some("blk.0.attn_v".into()),
        };
        let t = compute_traces(&be, &src, &cal, &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(t.entries.len(), 1);
        t.entries[0].trace
    };
    let want = exact.iter().find(|(n, _)| n == "blk.0.attn_v.weight").unwrap().1;
    let full_sketch = single(TraceMethod::HutchPlusPlus { sketch: 80, queries: 4 });
    eprintln!("attn_v alone: exact {want:.6}, Hutch++ with a full sketch {full_sketch:.6}");
    assert!(
        (full_sketch - want).abs() < 1e-3 * want.abs(),
        "{full_sketch} vs {want}"
    );
    let (mut hpp_err, mut hutch_err) = (0.0, 0.0);
    for seed in 0..8 {
        let cfg = |method| TraceConfig {
            method,
            batches: cal.len(),
            seq_len: SEQ,
            seed,
            rel_eps: 1e-4,
            only: Some("blk.0.attn_v".into()),
        };
        let est = |m| {
            compute_traces(&be, &src, &cal, &cfg(m), &mut |_, _| {})
                .unwrap()
                .entries[0]
                .trace
        };
        hpp_err += (est(TraceMethod::HutchPlusPlus { sketch: 8, queries: 8 }) - want).abs();
        hutch_err += (est(TraceMethod::Hutchinson { probes: 24 }) - want).abs();
    }
    eprintln!(
        "attn_v alone, 24 products, mean |error| over 8 seeds: Hutch++ {:.4}, Hutchinson {:.4}",
        hpp_err / 8.0,
        hutch_err / 8.0
    );
    assert!(hpp_err < hutch_err, "Hutch++ {hpp_err} vs Hutchinson {hutch_err}");
}

#[test]
fn hvp_step_size_and_f32_agree_with_f64() {
    let src = tiny_model(3);
    let cal = batches(4, 1);
    let cfg = |rel_eps| TraceConfig {
        method: TraceMethod::Hutchinson { probes: 8 },
        batches: 1,
        seq_len: SEQ,
        seed: 11,
        rel_eps,
        only: None,
    };
    let be = B64::new();
    let fine = compute_traces(&be, &src, &cal, &cfg(1e-5), &mut |_, _| {}).unwrap();
    let coarse = compute_traces(&be, &src, &cal, &cfg(1e-3), &mut |_, _| {}).unwrap();
    let f32_run = compute_traces(&CpuBackend::<f32>::new(), &src, &cal, &cfg(1e-3), &mut |_, _| {}).unwrap();
    // Σ|a − b| / Σ|b| over the tensors (single-probe-set estimates can sit near zero, so per-tensor ratios
    // would measure the estimate's size, not the product's accuracy).
    let rel = |a: &TraceTable, b: &TraceTable| {
        let num: f64 = a
            .entries
            .iter()
            .zip(&b.entries)
            .map(|(x, y)| (x.trace - y.trace).abs())
            .sum();
        num / b.entries.iter().map(|y| y.trace.abs()).sum::<f64>()
    };
    let (trunc, f32_err) = (rel(&coarse, &fine), rel(&f32_run, &fine));
    eprintln!("rel_eps 1e-3 vs 1e-5 (truncation): {trunc:.2e}; f32 at 1e-3 vs f64: {f32_err:.2e}");
    assert!(trunc < 1e-3, "{trunc}");
    assert!(f32_err < 2e-2, "{f32_err}");
}

#[test]
fn temperature_scales_follow_the_formula() {
    let entries: Vec<TraceEntry> = [4.0, 40.0, 400.0, -1.0]
        .iter()
        .enumerate()
        .map(|(i, &t)| TraceEntry {
            name: format!("blk.{i}.attn_q.weight"),
            layer: Some(i),
            params: 100 * (i + 1),
            trace: t,
        })
        .collect();
    let table = TraceTable {
        entries,
        config: None,
        gradient_evaluations: 0,
    };
    let opts = TemperatureScaleOptions {
        alpha: 0.4,
        kappa: 1.0,
        per_parameter: false,
    };
    let scales = temperature_scales(&table, &opts).unwrap();
    // Direct computation (the negative trace floored at 1e-6 × max).
    let logs: Vec<f64> = [4.0f64, 40.0, 400.0, 400e-6].iter().map(|x| x.ln()).collect();
    let mu = logs.iter().sum::<f64>() / 4.0;
    let sd = (logs.iter().map(|l| (l - mu).powi(2)).sum::<f64>() / 4.0).sqrt();
    for (s, l) in scales.iter().zip(&logs) {
        let want = (-0.4 / (1.0 + (-(l - mu) / sd).exp())).exp();
        assert!((s - want).abs() < 1e-14, "{s} vs {want}");
    }
    // Larger trace → lower temperature; all within [e^-α, 1].
    assert!(scales[2] < scales[1] && scales[1] < scales[0] && scales[0] < scales[3]);
    assert!(scales.iter().all(|&s| s > (-0.4f64).exp() && s < 1.0));
    // α = 0: all ones.
    let flat = temperature_scales(&table, &TemperatureScaleOptions { alpha: 0.0, ..opts }).unwrap();
    assert!(flat.iter().all(|&s| s == 1.0));
    // Per-parameter normalisation changes the ranking input.
    let pp = temperature_scales(
        &table,
        &TemperatureScaleOptions {
            per_parameter: true,
            ..opts
        },
    )
    .unwrap();
    assert_ne!(pp, scales);
    // CSV round trip.
    let csv = table.to_csv(&scales);
    let back = TraceTable::from_csv(&csv, std::path::Path::new("t.csv")).unwrap();
    assert_eq!(back.entries, table.entries);
}

#[test]
fn bad_inputs_give_typed_errors() {
    let be = B64::new();
    let src = tiny_model(5);
    // NaN weights → non-finite traces, nothing returned.
    let mut nan = src.clone();
    for t in &mut nan.tensors {
        if t.name.contains("ffn_up") {
            t.data[0] = f32::NAN;
        }
    }
    let cfg = TraceConfig {
        method: TraceMethod::Hutchinson { probes: 2 },
        batches: 1,
        seq_len: SEQ,
        seed: 0,
        rel_eps: 1e-3,
        only: None,
    };
    let cal = batches(1, 1);
    let err = compute_traces(&be, &nan, &cal, &cfg, &mut |_, _| {});
    assert!(matches!(err, Err(HessianError::NonFinite { .. })), "{:?}", err.err());
    // Zero probes, no batches.
    let zero = TraceConfig {
        method: TraceMethod::Hutchinson { probes: 0 },
        ..cfg.clone()
    };
    assert!(matches!(
        compute_traces(&be, &src, &cal, &zero, &mut |_, _| {}),
        Err(HessianError::Config(_))
    ));
    assert!(compute_traces(&be, &src, &[], &cfg, &mut |_, _| {}).is_err());
    // Calibration text too short for the batches asked for.
    let stream: Vec<u32> = (0..40).map(|i| i % 19).collect();
    let data = PackedData::split(&stream, SEQ, 0.1).unwrap();
    assert!(matches!(
        calibration_batches(&data, 50, 0),
        Err(HessianError::CalibrationTooShort { needed: 50, .. })
    ));
    assert_eq!(calibration_batches(&data, 2, 0).unwrap().len(), 2);
    // A trace table without positive traces cannot give temperature scales (alpha > 0).
    let table = TraceTable {
        entries: vec![TraceEntry {
            name: "blk.0.attn_q.weight".into(),
            layer: Some(0),
            params: 10,
            trace: -1.0,
        }],
        config: None,
        gradient_evaluations: 0,
    };
    let opts = TemperatureScaleOptions {
        alpha: 0.4,
        kappa: 1.0,
        per_parameter: false,
    };
    assert!(matches!(
        temperature_scales(&table, &opts),
        Err(HessianError::NoPositiveTrace)
    ));
    assert!(TraceTable::from_csv("name,layer\n", std::path::Path::new("x")).is_err());
}
