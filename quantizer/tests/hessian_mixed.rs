//! Mixed precision: each tensor's sensitivity Ω_i(b) = (tr(H_i)/n_i)·‖Q_b(W_i) − W_i‖² against a direct f64
//! computation with independently written quantizers, and sizes against the bytes the format really writes.

use tern_format::{Architecture, ModelView};
use tern_quantizer::engine::{tiny_config, LinearPrecision};
use tern_quantizer::hessian::mixed::{select, tensor_choices, ternary_bytes, ALIGN};
use tern_quantizer::hessian::{TraceEntry, TraceTable};
use tern_quantizer::ptq::{ptq_model, ptq_model_mixed, PtqOptions, ScaleGranularity};
use tern_quantizer::tiny::random_source_model;

fn ref_ternary(w: &[f64]) -> Vec<f64> {
    let s = (w.iter().map(|v| v.abs()).sum::<f64>() / w.len() as f64).max(1e-5);
    w.iter()
        .map(|v| (v / s).round_ties_even().clamp(-1.0, 1.0) * s)
        .collect()
}

fn ref_int(row: &[f64], qmax: f64, qmin: f64) -> Vec<f64> {
    let amax = row.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return vec![0.0; row.len()];
    }
    let s = amax / qmax;
    // Half away from zero, as the format's encoders round.
    row.iter().map(|v| (v / s).round().clamp(qmin, qmax) * s).collect()
}

#[test]
fn sensitivities_and_sizes_match_direct_computations() {
    let cfg = tiny_config(Architecture::Llama, 64, 2, 4, 2, 16, 96, 300, true);
    let src = random_source_model(cfg, 4, 0.3, 0.5);
    let entries: Vec<TraceEntry> = src
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 2 && t.name.starts_with("blk."))
        .enumerate()
        .map(|(i, t)| TraceEntry {
            name: t.name.clone(),
            layer: t.layer.map(|l| l as usize),
            params: t.data.len(),
            trace: 10.0 * (i + 1) as f64,
        })
        .collect();
    let table = TraceTable {
        entries,
        config: None,
        gradient_evaluations: 0,
    };
    let opts = PtqOptions::default();
    let choices = tensor_choices(&src, &table, &opts, 32).unwrap();
    assert_eq!(choices.len(), 14);
    for c in &choices {
        let t = src.tensor_by_name(&c.name).unwrap();
        let w: Vec<f64> = t.data.iter().map(|&x| f64::from(x)).collect();
        let cols = t.shape[1];
        let mean_trace = table.trace_of(&c.name).unwrap() / w.len() as f64;
        for cand in &c.candidates {
            let q: Vec<f64> = match cand.precision {
                LinearPrecision::Ternary => ref_ternary(&w),
                LinearPrecision::Int8 => w.chunks(cols).flat_map(|r| ref_int(r, 127.0, -127.0)).collect(),
                LinearPrecision::Int4 { group } => {
                    w.chunks(group as usize).flat_map(|g| ref_int(g, 7.0, -8.0)).collect()
                }
            };
            let omega = mean_trace * q.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            assert!(
                (cand.sensitivity - omega).abs() <= 1e-4 * omega,
                "{} {:?}: {} vs {omega}",
                c.name,
                cand.precision,
                cand.sensitivity
            );
            assert_eq!(cand.bytes % ALIGN, 0);
        }
        // More bits, less error.
        assert!(c
            .candidates
            .windows(2)
            .all(|p| p[1].sensitivity < p[0].sensitivity && p[1].bytes > p[0].bytes));
    }
    // Sizes: the file with a chosen assignment is exactly the all-ternary file plus the assignment's extra bytes.
    let ternary_file = ptq_model(&src, &opts, &mut |_, _, _| {}).unwrap().to_bytes().unwrap();
    let base = ternary_bytes(&choices);
    let assignment = select(&choices, base + 40 * ALIGN * 16).unwrap();
    let precisions = assignment.precisions(&choices);
    assert!(!precisions.is_empty());
    let mixed_file = ptq_model_mixed(&src, &opts, &precisions, &mut |_, _, _| {})
        .unwrap()
        .to_bytes()
        .unwrap();
    // (The metadata key naming the mix adds a few bytes, padded to the format's alignment.)
    let mixed_bytes = tern_format::AlignedBytes::from_slice(&mixed_file);
    let view = ModelView::parse(&mixed_bytes).unwrap();
    let data_bytes = |v: &ModelView<'_>| -> u64 {
        (0..v.tensor_count())
            .filter_map(|i| v.tensor(i))
            .filter(|t| t.name.starts_with("blk.") && t.shape.dims().len() == 2)
            .map(|t| t.data.len().div_ceil(64) as u64 * 64 + (t.scales.len() * 4).div_ceil(64) as u64 * 64)
            .sum()
    };
    assert_eq!(data_bytes(&view), assignment.bytes);
    let ternary_bytes_aligned = tern_format::AlignedBytes::from_slice(&ternary_file);
    let tview = ModelView::parse(&ternary_bytes_aligned).unwrap();
    assert_eq!(data_bytes(&tview), base);
    let _ = ScaleGranularity::PerTensor;
}
