//! Per-tensor Hessian traces of the full-precision model (Hestia's temperature scales, HAWQ-V2's sensitivities).
//!
//! `χ_i = tr(H_ii)`, the trace of the diagonal block of the loss Hessian for linear weight `i`, estimated from
//! Hessian-vector products ([`hvp`]) by Hutchinson or Hutch++ ([`estimators`]) over a few calibration batches of
//! the training data. [`temperature`] turns traces into temperature scales.

pub mod estimators;
pub mod hvp;
pub mod mixed;
pub mod temperature;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::HostBatch;
use crate::engine::{Backend, EngineError, Float, ParamKind, ParamLayout, SplitMix64};
use crate::import::source::SourceModel;
use crate::train::{layout_tensors_from_source, TrainError};

pub use temperature::{temperature_scales, TemperatureScaleOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceMethod {
    Hutchinson { probes: usize },
    HutchPlusPlus { sketch: usize, queries: usize },
}

impl TraceMethod {
    /// Hutch++ with Hestia's defaults (10 sketch, 20 query vectors).
    pub const HESTIA_DEFAULT: Self = Self::HutchPlusPlus {
        sketch: 10,
        queries: 20,
    };
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceConfig {
    pub method: TraceMethod,
    /// Calibration batches (each one sequence of `seq_len` tokens; Hestia: 5 × 512).
    pub batches: usize,
    pub seq_len: usize,
    pub seed: u64,
    /// Central-difference step relative to each tensor's norm.
    pub rel_eps: f64,
    /// Probe only the linear tensors whose name contains this (all of them when `None`).
    #[serde(default)]
    pub only: Option<String>,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            method: TraceMethod::HESTIA_DEFAULT,
            batches: 5,
            seq_len: 512,
            seed: 0,
            rel_eps: 1e-3,
            only: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HessianError {
    #[error("the model has no ternary (linear) layers whose Hessian traces could be estimated")]
    NoTernaryLayers,
    #[error(
        "the calibration text is too short: {available} sequences of {seq_len} tokens, {needed} needed \
         (give more text, fewer --batches or a shorter --seq-len)"
    )]
    CalibrationTooShort {
        available: usize,
        needed: usize,
        seq_len: usize,
    },
    #[error("invalid trace settings: {0}")]
    Config(String),
    #[error("the trace estimate of {tensor} is not finite ({value}); nothing was written")]
    NonFinite { tensor: String, value: f64 },
    #[error("no trace above zero: cannot take logarithms for temperature scales")]
    NoPositiveTrace,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("{path}: {what}")]
    Csv { path: PathBuf, what: String },
    #[error("{context} {path}")]
    Io {
        path: PathBuf,
        context: &'static str,
        source: std::io::Error,
    },
}

/// One row of the trace table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// GGUF-style tensor name (`blk.3.attn_q.weight`).
    pub name: String,
    pub layer: Option<usize>,
    pub params: usize,
    /// `tr(H_ii)` estimate.
    pub trace: f64,
}

impl TraceEntry {
    pub fn per_parameter(&self) -> f64 {
        self.trace / self.params.max(1) as f64
    }
    /// `attn_q`, `ffn_down`, … (the name between the layer and `.weight`).
    pub fn kind(&self) -> &str {
        let rest = self.name.strip_prefix("blk.").unwrap_or(&self.name);
        let rest = rest.split_once('.').map_or(rest, |(_, r)| r);
        rest.strip_suffix(".weight").unwrap_or(rest)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceTable {
    pub entries: Vec<TraceEntry>,
    pub config: Option<TraceConfig>,
    /// Gradient evaluations the estimate took.
    pub gradient_evaluations: usize,
}

impl TraceTable {
    pub fn trace_of(&self, name: &str) -> Option<f64> {
        self.entries.iter().find(|e| e.name == name).map(|e| e.trace)
    }

    /// CSV with a header: `name,layer,kind,params,trace,trace_per_param,temperature_scale`.
    pub fn to_csv(&self, scales: &[f64]) -> String {
        let mut s = String::from("name,layer,kind,params,trace,trace_per_param,temperature_scale\n");
        for (i, e) in self.entries.iter().enumerate() {
            s.push_str(&format!(
                "{},{},{},{},{:e},{:e},{}\n",
                e.name,
                e.layer.map_or(String::new(), |l| l.to_string()),
                e.kind(),
                e.params,
                e.trace,
                e.per_parameter(),
                scales.get(i).map_or(String::new(), |c| format!("{c:.6}"))
            ));
        }
        s
    }

    /// Reads a table written by [`TraceTable::to_csv`] (`tern hessian`), checking every field.
    pub fn from_csv(text: &str, path: &Path) -> Result<Self, HessianError> {
        let bad = |what: String| HessianError::Csv {
            path: path.to_path_buf(),
            what,
        };
        let mut lines = text.lines();
        let header = lines.next().ok_or_else(|| bad("empty file".into()))?;
        if !header.starts_with("name,layer,kind,params,trace") {
            return Err(bad(format!("unexpected header {header:?}")));
        }
        let mut entries = Vec::new();
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 5 {
                return Err(bad(format!("line {}: {} fields", i + 2, f.len())));
            }
            let layer = if f[1].is_empty() {
                None
            } else {
                Some(
                    f[1].parse()
                        .map_err(|_| bad(format!("line {}: layer {:?}", i + 2, f[1])))?,
                )
            };
            let params = f[3]
                .parse()
                .map_err(|_| bad(format!("line {}: params {:?}", i + 2, f[3])))?;
            let trace: f64 = f[4]
                .parse()
                .map_err(|_| bad(format!("line {}: trace {:?}", i + 2, f[4])))?;
            if !trace.is_finite() {
                return Err(HessianError::NonFinite {
                    tensor: f[0].to_string(),
                    value: trace,
                });
            }
            entries.push(TraceEntry {
                name: f[0].to_string(),
                layer,
                params,
                trace,
            });
        }
        if entries.is_empty() {
            return Err(HessianError::NoTernaryLayers);
        }
        Ok(Self {
            entries,
            config: None,
            gradient_evaluations: 0,
        })
    }

    pub fn read_csv(path: &Path) -> Result<Self, HessianError> {
        let text = std::fs::read_to_string(path).map_err(|source| HessianError::Io {
            path: path.to_path_buf(),
            context: "reading",
            source,
        })?;
        Self::from_csv(&text, path)
    }
}

/// Estimates the trace of every linear weight's Hessian block of the full-precision `src` on `batches`
/// (each `config.seq_len` tokens). `progress(products_done, products_total)` after each Hessian-vector product.
pub fn compute_traces<B: Backend>(
    backend: &B,
    src: &SourceModel,
    batches: &[HostBatch],
    config: &TraceConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<TraceTable, HessianError> {
    if batches.is_empty() {
        return Err(HessianError::Config("no calibration batches".into()));
    }
    if !(config.rel_eps.is_finite() && config.rel_eps > 0.0) {
        return Err(HessianError::Config(format!(
            "rel_eps {} must be positive",
            config.rel_eps
        )));
    }
    match config.method {
        TraceMethod::Hutchinson { probes: 0 } => return Err(HessianError::Config("--probes must be positive".into())),
        TraceMethod::HutchPlusPlus { sketch: 0, .. } | TraceMethod::HutchPlusPlus { queries: 0, .. } => {
            return Err(HessianError::Config(
                "Hutch++ needs a positive sketch and query count".into(),
            ))
        }
        _ => {}
    }
    let layout = ParamLayout::new(&src.config);
    let ids: Vec<_> = (0..layout.len())
        .map(crate::engine::ParamId)
        .filter(|&id| layout.spec(id).kind == ParamKind::Linear)
        .filter(|&id| {
            config
                .only
                .as_ref()
                .is_none_or(|f| layout.spec(id).name.contains(f.as_str()))
        })
        .collect();
    if ids.is_empty() {
        return Err(HessianError::NoTernaryLayers);
    }
    let host_f32 = layout_tensors_from_source(&layout, src)?;
    let host: Vec<Vec<B::Elem>> = host_f32
        .into_iter()
        .map(|t| t.into_iter().map(B::Elem::from_f32).collect())
        .collect();
    let mut oracle = hvp::HvpOracle::new(backend, &src.config, config.seq_len, &host, ids.clone())?;
    drop(host);
    oracle.rel_eps = config.rel_eps;
    let total = estimators::products(config.method, batches.len());
    let mut rng = SplitMix64::new(config.seed ^ 0x4845_5353_4941_4E21);
    let mut report = |done: usize| progress(done, total);
    let traces = match config.method {
        TraceMethod::Hutchinson { probes } => {
            estimators::hutchinson(&mut oracle, batches, probes, &mut rng, &mut report)
        }
        TraceMethod::HutchPlusPlus { sketch, queries } => {
            estimators::hutch_plus_plus(&mut oracle, batches, sketch, queries, &mut rng, &mut report)
        }
    }
    .map_err(|e| match e {
        EngineError::NonFinite { value, .. } => HessianError::NonFinite {
            tensor: "the loss on the calibration data".into(),
            value,
        },
        other => HessianError::Engine(other),
    })?;
    let mut entries = Vec::with_capacity(ids.len());
    for (&id, trace) in ids.iter().zip(traces) {
        let spec = layout.spec(id);
        if !trace.is_finite() {
            return Err(HessianError::NonFinite {
                tensor: spec.name.clone(),
                value: trace,
            });
        }
        entries.push(TraceEntry {
            name: spec.name.clone(),
            layer: spec.layer,
            params: spec.numel(),
            trace,
        });
    }
    Ok(TraceTable {
        entries,
        config: Some(config.clone()),
        gradient_evaluations: oracle.gradient_evaluations,
    })
}

/// The calibration batches: the first `batches` windows of the seeded training order (Hestia draws them from
/// the training set), each one sequence of the data's `seq_len` tokens.
pub fn calibration_batches(
    data: &crate::data::PackedData,
    batches: usize,
    seed: u64,
) -> Result<Vec<HostBatch>, HessianError> {
    if batches == 0 {
        return Err(HessianError::Config("--batches must be positive".into()));
    }
    if data.train_windows() < batches {
        return Err(HessianError::CalibrationTooShort {
            available: data.train_windows(),
            needed: batches,
            seq_len: data.seq_len(),
        });
    }
    let mut order = crate::data::DataOrder::new(seed, data.train_windows());
    Ok((0..batches as u64)
        .map(|d| {
            let mut b = HostBatch::default();
            b.push_window(data.train_window(order.window_of(d)));
            b
        })
        .collect())
}
