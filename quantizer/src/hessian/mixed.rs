//! Hessian-aware mixed precision (HAWQ-V2): keep the most sensitive linear weights above ternary under a size
//! budget.
//!
//! Sensitivity of tensor `i` at precision `b`: `Ω_i(b) = (tr(H_i)/n_i) · ‖Q_b(W_i) − W_i‖²` (the average Hessian
//! trace times the quantization perturbation), for `b` ∈ {ternary (the export's absmean, with its scale
//! groups), int4 per group, int8 per row} — the element types the `.tern` format stores. Each tensor's size at
//! each precision is its exact footprint in the file (data and scales, each region padded to the format's 64-byte
//! alignment), so the selection controls the file size exactly.
//!
//! Selection: minimise `Σ Ω_i(b_i)` subject to `Σ size_i(b_i) ≤ budget`, a multiple-choice knapsack solved exactly
//! by dynamic programming over the bytes above the all-ternary size, in units of 64 bytes (every size is a
//! multiple of 64, so nothing is rounded). The same table gives the Pareto frontier of (size, total sensitivity).

use serde::{Deserialize, Serialize};
use tern_format::blocks::{int4_value, quantize_int4_row, quantize_int8_row};
use tern_format::TensorData;

use crate::engine::{LinearPrecision, SplitMix64};
use crate::import::source::SourceModel;
use crate::ptq::{convert_tensor_at, is_ternary_role, ternarize_absmean, PtqOptions, ScaleGranularity};

use super::{HessianError, TraceTable};

/// The format's alignment of every tensor region.
pub const ALIGN: u64 = 64;

/// One precision option for one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub precision: LinearPrecision,
    /// Bytes in the file (data + scales, each padded to 64).
    pub bytes: u64,
    /// `Ω_i(b)`.
    pub sensitivity: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorChoices {
    pub name: String,
    pub params: usize,
    /// `tr(H_i)/n_i`.
    pub mean_trace: f64,
    /// Ternary first.
    pub candidates: Vec<Candidate>,
}

/// A precision per tensor (index into its candidates) and the totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub choice: Vec<usize>,
    pub bytes: u64,
    pub sensitivity: f64,
}

impl Assignment {
    /// The integer (non-ternary) tensors, by name, for the trainer and the export.
    pub fn precisions(&self, choices: &[TensorChoices]) -> Vec<(String, LinearPrecision)> {
        choices
            .iter()
            .zip(&self.choice)
            .filter_map(|(t, &c)| {
                let p = t.candidates[c].precision;
                (p != LinearPrecision::Ternary).then(|| (t.name.clone(), p))
            })
            .collect()
    }
}

fn padded(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Bytes a converted tensor occupies in the file.
fn stored_bytes(t: &TensorData) -> u64 {
    padded(t.data.len() as u64) + padded(4 * t.scales.len() as u64)
}

/// The values a tensor holds after quantization at `precision` (the export's encoders, decoded).
fn dequantized(w: &[f32], rows: usize, cols: usize, precision: LinearPrecision, ternary: &PtqOptions) -> Vec<f32> {
    match precision {
        LinearPrecision::Ternary => {
            let (codes, scales) = ternarize_absmean(w, rows, cols, ternary.scale);
            let scale_of = |i: usize| match ternary.scale {
                ScaleGranularity::PerTensor => scales[0],
                ScaleGranularity::PerRow => scales[i / cols],
                ScaleGranularity::Group(g) => {
                    let per_row = cols.div_ceil(g as usize);
                    scales[(i / cols) * per_row + (i % cols) / g as usize]
                }
            };
            codes
                .iter()
                .enumerate()
                .map(|(i, &c)| f32::from(c) * scale_of(i))
                .collect()
        }
        LinearPrecision::Int8 => {
            let mut out = Vec::with_capacity(w.len());
            let mut q = vec![0i8; cols];
            for row in w.chunks(cols) {
                let s = quantize_int8_row(row, &mut q);
                out.extend(q.iter().map(|&v| f32::from(v) * s));
            }
            out
        }
        LinearPrecision::Int4 { group } => {
            let g = group as usize;
            let mut out = Vec::with_capacity(w.len());
            let (mut bytes, mut scales) = (vec![0u8; cols.div_ceil(2)], vec![0f32; cols.div_ceil(g)]);
            for row in w.chunks(cols) {
                quantize_int4_row(row, g, &mut bytes, &mut scales);
                out.extend((0..cols).map(|i| f32::from(int4_value(&bytes, i)) * scales[i / g]));
            }
            out
        }
    }
}

/// `‖Q_b(W) − W‖²` in f64.
fn perturbation(w: &[f32], rows: usize, cols: usize, precision: LinearPrecision, ternary: &PtqOptions) -> f64 {
    dequantized(w, rows, cols, precision, ternary)
        .iter()
        .zip(w)
        .map(|(a, b)| {
            let d = f64::from(*a) - f64::from(*b);
            d * d
        })
        .sum()
}

/// Every linear weight's candidates: size and `Ω` at ternary (as `ternary` exports it), int4 (`int4_group`) and
/// int8. Traces come from `traces` by name (a weight without a trace is an error).
pub fn tensor_choices(
    src: &SourceModel,
    traces: &TraceTable,
    ternary: &PtqOptions,
    int4_group: u32,
) -> Result<Vec<TensorChoices>, HessianError> {
    use rayon::prelude::*;
    let linear: Vec<_> = src.tensors.iter().filter(|t| is_ternary_role(t.role)).collect();
    if linear.is_empty() {
        return Err(HessianError::NoTernaryLayers);
    }
    linear
        .par_iter()
        .map(|t| {
            let trace = traces
                .trace_of(&t.name)
                .ok_or_else(|| HessianError::Config(format!("the trace table has no entry for {}", t.name)))?;
            let n = t.data.len();
            let mean_trace = trace / n.max(1) as f64;
            let (rows, cols) = (t.shape[0], t.shape.get(1).copied().unwrap_or(1));
            let mut precisions = vec![LinearPrecision::Ternary, LinearPrecision::Int8];
            if int4_group > 0 && cols % int4_group as usize == 0 {
                precisions.insert(1, LinearPrecision::Int4 { group: int4_group });
            }
            let candidates = precisions
                .into_iter()
                .map(|p| {
                    let stored = convert_tensor_at(t, ternary, Some(p))
                        .map_err(|e| HessianError::Config(format!("{}: {e}", t.name)))?;
                    Ok(Candidate {
                        precision: p,
                        bytes: stored_bytes(&stored),
                        sensitivity: mean_trace * perturbation(&t.data, rows, cols, p, ternary),
                    })
                })
                .collect::<Result<Vec<_>, HessianError>>()?;
            Ok(TensorChoices {
                name: t.name.clone(),
                params: n,
                mean_trace,
                candidates,
            })
        })
        .collect()
}

/// Bytes of the all-ternary assignment (every tensor's first candidate).
pub fn ternary_bytes(choices: &[TensorChoices]) -> u64 {
    choices.iter().map(|t| t.candidates[0].bytes).sum()
}

/// The exact minimum-sensitivity assignment within `budget` bytes (of the linear weights). The all-ternary
/// assignment is the smallest possible; a smaller budget is an error.
pub fn select(choices: &[TensorChoices], budget: u64) -> Result<Assignment, HessianError> {
    let base = ternary_bytes(choices);
    if budget < base {
        return Err(HessianError::Config(format!(
            "the budget ({budget} bytes of linear weights) is below the all-ternary size ({base} bytes)"
        )));
    }
    let units = ((budget - base) / ALIGN) as usize;
    let (table, choice) = knapsack(choices, units);
    let best = (0..=units).min_by(|&a, &b| table[a].total_cmp(&table[b])).unwrap_or(0);
    Ok(backtrack(choices, &choice, best, units))
}

/// Multiple-choice knapsack over `units` extra 64-byte units: `table[e]` the least total sensitivity using at most
/// `e` extra units, `choice[i][e]` the candidate of tensor `i` on that optimum.
fn knapsack(choices: &[TensorChoices], units: usize) -> (Vec<f64>, Vec<Vec<u8>>) {
    let mut table = vec![0.0f64; units + 1];
    // Before any tensor: zero sensitivity at every budget.
    let mut choice = Vec::with_capacity(choices.len());
    for t in choices {
        let base = t.candidates[0].bytes;
        let extra: Vec<usize> = t
            .candidates
            .iter()
            .map(|c| ((c.bytes - base.min(c.bytes)) / ALIGN) as usize)
            .collect();
        let mut next = vec![f64::INFINITY; units + 1];
        let mut pick = vec![0u8; units + 1];
        for e in 0..=units {
            for (j, c) in t.candidates.iter().enumerate() {
                if extra[j] <= e {
                    let v = table[e - extra[j]] + c.sensitivity;
                    if v < next[e] {
                        next[e] = v;
                        pick[e] = j as u8;
                    }
                }
            }
        }
        table = next;
        choice.push(pick);
    }
    (table, choice)
}

fn backtrack(choices: &[TensorChoices], choice: &[Vec<u8>], mut e: usize, _units: usize) -> Assignment {
    let mut picked = vec![0usize; choices.len()];
    for i in (0..choices.len()).rev() {
        let j = choice[i][e] as usize;
        picked[i] = j;
        let base = choices[i].candidates[0].bytes;
        e -= ((choices[i].candidates[j].bytes - base) / ALIGN) as usize;
    }
    totals(choices, picked)
}

/// The assignment picking candidate `choice[i]` for tensor `i`, with its total bytes and sensitivity.
pub fn totals(choices: &[TensorChoices], choice: Vec<usize>) -> Assignment {
    let bytes = choices.iter().zip(&choice).map(|(t, &c)| t.candidates[c].bytes).sum();
    let sensitivity = choices
        .iter()
        .zip(&choice)
        .map(|(t, &c)| t.candidates[c].sensitivity)
        .sum();
    Assignment {
        choice,
        bytes,
        sensitivity,
    }
}

/// The Pareto frontier of (bytes, least total sensitivity) from all-ternary up to `max_bytes`, at `points`
/// evenly spaced budgets (each point an exact optimum).
pub fn frontier(choices: &[TensorChoices], max_bytes: u64, points: usize) -> Vec<(u64, f64)> {
    let base = ternary_bytes(choices);
    let units = (max_bytes.saturating_sub(base) / ALIGN) as usize;
    let (table, _) = knapsack(choices, units);
    let mut running = f64::INFINITY;
    let best: Vec<f64> = table
        .iter()
        .map(|&v| {
            running = running.min(v);
            running
        })
        .collect();
    let points = points.max(2);
    (0..points)
        .map(|k| {
            let e = k * units / (points - 1);
            (base + e as u64 * ALIGN, best[e])
        })
        .collect()
}

/// A random assignment that fits the same budget (the control: extra bits without the traces). Tensors are
/// visited in a seeded random order and upgraded to a random higher precision while it fits.
pub fn random_assignment(choices: &[TensorChoices], budget: u64, seed: u64) -> Assignment {
    let mut rng = SplitMix64::new(seed);
    let mut choice = vec![0usize; choices.len()];
    let mut bytes = ternary_bytes(choices);
    let mut order: Vec<usize> = (0..choices.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    for i in order {
        let t = &choices[i];
        if t.candidates.len() < 2 {
            continue;
        }
        let j = 1 + rng.below(t.candidates.len() as u64 - 1) as usize;
        let add = t.candidates[j].bytes - t.candidates[0].bytes;
        if bytes + add <= budget {
            choice[i] = j;
            bytes += add;
        }
    }
    totals(choices, choice)
}

/// A file-size budget.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Budget {
    /// This much more than the all-ternary file (e.g. 0.05 = +5%).
    RelativeToTernary(f64),
    Bytes(u64),
    /// Bits per linear weight, over the linear weights (data and scales).
    BitsPerWeight(f64),
}

impl Budget {
    /// `5%`, `60MB`, `57000000`, `2.5bpw`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a budget like 5%, 60MB, 1.5GB, 57000000 or 2.5bpw, got {s:?}");
        let num = |t: &str| t.trim().parse::<f64>().map_err(|_| bad());
        if let Some(p) = s.strip_suffix('%') {
            return Ok(Self::RelativeToTernary(num(p)? / 100.0));
        }
        if let Some(b) = s.strip_suffix("bpw") {
            return Ok(Self::BitsPerWeight(num(b)?));
        }
        for (suffix, mult) in [("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1.0)] {
            if let Some(v) = s.strip_suffix(suffix) {
                return Ok(Self::Bytes((num(v)? * mult) as u64));
            }
        }
        Ok(Self::Bytes(num(s)? as u64))
    }

    /// The budget for the linear weights, given the all-ternary linear bytes, the rest of the file, and the
    /// number of linear weights.
    pub fn linear_bytes(&self, ternary_linear: u64, rest_of_file: u64, linear_params: usize) -> u64 {
        match *self {
            Self::RelativeToTernary(p) => {
                let file = ternary_linear + rest_of_file;
                ternary_linear + (p.max(0.0) * file as f64) as u64
            }
            Self::Bytes(b) => b.saturating_sub(rest_of_file),
            Self::BitsPerWeight(bpw) => (bpw * linear_params as f64 / 8.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_instance(seed: u64, n: usize) -> Vec<TensorChoices> {
        let mut rng = SplitMix64::new(seed);
        (0..n)
            .map(|i| {
                let base = ALIGN * (1 + rng.below(20));
                let s0 = rng.uniform_in(0.5, 10.0);
                TensorChoices {
                    name: format!("t{i}"),
                    params: 1,
                    mean_trace: 1.0,
                    candidates: vec![
                        Candidate {
                            precision: LinearPrecision::Ternary,
                            bytes: base,
                            sensitivity: s0,
                        },
                        Candidate {
                            precision: LinearPrecision::Int4 { group: 32 },
                            bytes: base + ALIGN * (1 + rng.below(6)),
                            sensitivity: s0 * rng.uniform_in(0.05, 0.6),
                        },
                        Candidate {
                            precision: LinearPrecision::Int8,
                            bytes: base + ALIGN * (4 + rng.below(10)),
                            sensitivity: s0 * rng.uniform_in(0.0, 0.05),
                        },
                    ],
                }
            })
            .collect()
    }

    #[test]
    fn selection_equals_brute_force() {
        for seed in 0..40 {
            let n = 2 + (seed % 6) as usize;
            let inst = random_instance(seed, n);
            let base = ternary_bytes(&inst);
            for extra in [0, 3, 7, 12, 25, 60] {
                let budget = base + extra * ALIGN;
                let got = select(&inst, budget).unwrap();
                // Brute force over 3^n assignments.
                let mut best = f64::INFINITY;
                for code in 0..3usize.pow(n as u32) {
                    let mut c = code;
                    let (mut bytes, mut sens) = (0, 0.0);
                    for t in &inst {
                        let k = &t.candidates[c % 3];
                        c /= 3;
                        bytes += k.bytes;
                        sens += k.sensitivity;
                    }
                    if bytes <= budget && sens < best {
                        best = sens;
                    }
                }
                assert!(got.bytes <= budget, "seed {seed}: over budget");
                assert!(
                    (got.sensitivity - best).abs() <= 1e-9 * best.max(1.0),
                    "seed {seed} extra {extra}: {} vs {best}",
                    got.sensitivity
                );
            }
            assert!(select(&inst, base - 1).is_err());
        }
    }

    #[test]
    fn frontier_is_monotone_and_random_fits() {
        let inst = random_instance(7, 12);
        let base = ternary_bytes(&inst);
        let f = frontier(&inst, base + 200 * ALIGN, 11);
        assert_eq!(f.len(), 11);
        assert!(f.windows(2).all(|w| w[0].0 < w[1].0 && w[1].1 <= w[0].1));
        let r = random_assignment(&inst, base + 50 * ALIGN, 3);
        assert!(r.bytes <= base + 50 * ALIGN);
        let best = select(&inst, base + 50 * ALIGN).unwrap();
        assert!(best.sensitivity <= r.sensitivity);
    }

    #[test]
    fn budgets_parse() {
        assert_eq!(Budget::parse("5%").unwrap(), Budget::RelativeToTernary(0.05));
        assert_eq!(Budget::parse("60MB").unwrap(), Budget::Bytes(60_000_000));
        assert_eq!(Budget::parse("2.5bpw").unwrap(), Budget::BitsPerWeight(2.5));
        assert_eq!(Budget::parse("1234").unwrap(), Budget::Bytes(1234));
        assert!(Budget::parse("lots").is_err());
        assert_eq!(Budget::RelativeToTernary(0.1).linear_bytes(1000, 1000, 10), 1200);
    }
}
