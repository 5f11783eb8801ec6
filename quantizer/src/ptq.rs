//! Post-training ternarization (BitNet b1.58 absmean) and assembly of a `.tern` model from a `SourceModel`.
//!
//! Linear layers: `scale = mean|W|` over the scale unit (tensor, row or group), `W_t = clamp(round(W/scale),
//! −1, 1)`. Embeddings and the output head: int8 per row, int4 per group or f16. Norms stay f32.

use tern_format::numerics;
use tern_format::{ModelWriter, Role, ScaleKind, Shape, TensorData, TernaryLayout};

use crate::engine::LinearPrecision;
use std::borrow::Cow;

use crate::import::source::{SourceModel, SourceTensor, StreamingSource};

/// Smallest scale used, so an all-zero unit does not divide by zero (BitNet clamps mean|W| the same way).
pub const MIN_SCALE: f32 = tern_format::numerics::QUANT_EPS_F32;

/// What a scale covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleGranularity {
    PerTensor,
    PerRow,
    /// Groups of G consecutive weights within a row (G a positive multiple of 32).
    Group(u32),
}

impl ScaleGranularity {
    pub fn kind(self) -> ScaleKind {
        match self {
            Self::PerTensor => ScaleKind::PerTensor,
            Self::PerRow => ScaleKind::PerRow,
            Self::Group(g) => ScaleKind::PerGroup(g),
        }
    }
}

/// Storage of the token embedding and the output head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadFormat {
    Int8,
    /// int4 in groups of G (a positive multiple of 32).
    Int4(u32),
    F16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtqOptions {
    pub scale: ScaleGranularity,
    pub layout: TernaryLayout,
    pub head: HeadFormat,
}

impl Default for PtqOptions {
    fn default() -> Self {
        Self {
            scale: ScaleGranularity::PerTensor,
            layout: TernaryLayout::TwoBit,
            head: HeadFormat::Int8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("tensor {name}: {what}")]
    Tensor { name: String, what: String },
    #[error("group size {0} is not a positive multiple of 32")]
    BadGroup(u32),
    #[error("model: {0}")]
    Format(#[from] tern_format::FormatError),
    #[error(transparent)]
    Import(#[from] crate::ImportError),
}

/// Absmean ternarization of a `rows x cols` matrix. Returns the ternary values and the scales (1, `rows`, or
/// `rows * ceil(cols / G)` of them, row-major).
pub fn ternarize_absmean(w: &[f32], rows: usize, cols: usize, granularity: ScaleGranularity) -> (Vec<i8>, Vec<f32>) {
    debug_assert_eq!(w.len(), rows * cols);
    let mean_abs = |xs: &mut dyn Iterator<Item = &f32>, n: usize| -> f32 {
        let s: f64 = xs.map(|&x| x.abs() as f64).sum();
        // Flooring in f64 and then rounding gives the f32 floor: rounding is monotone and the floor is exact.
        numerics::absmean_scale(s / n.max(1) as f64) as f32
    };
    let mut q = vec![0i8; w.len()];
    // Ties to even, as the training engine's fake quantizer (and PyTorch's BitNet code) round.
    let quant = numerics::ternary_code;
    let scales = match granularity {
        ScaleGranularity::PerTensor => {
            let s = mean_abs(&mut w.iter(), w.len());
            for (o, &x) in q.iter_mut().zip(w) {
                *o = quant(x, s);
            }
            vec![s]
        }
        ScaleGranularity::PerRow => {
            let mut scales = Vec::with_capacity(rows);
            for (row, out) in w.chunks(cols).zip(q.chunks_mut(cols)) {
                let s = mean_abs(&mut row.iter(), cols);
                for (o, &x) in out.iter_mut().zip(row) {
                    *o = quant(x, s);
                }
                scales.push(s);
            }
            scales
        }
        ScaleGranularity::Group(g) => {
            let g = g as usize;
            let mut scales = Vec::with_capacity(rows * cols.div_ceil(g));
            for (row, out) in w.chunks(cols).zip(q.chunks_mut(cols)) {
                for (grp, og) in row.chunks(g).zip(out.chunks_mut(g)) {
                    let s = mean_abs(&mut grp.iter(), grp.len());
                    for (o, &x) in og.iter_mut().zip(grp) {
                        *o = quant(x, s);
                    }
                    scales.push(s);
                }
            }
            scales
        }
    };
    (q, scales)
}

/// Roles whose weights are ternarized (every linear layer inside the blocks).
pub fn is_ternary_role(role: Role) -> bool {
    matches!(
        role,
        Role::AttnQ | Role::AttnK | Role::AttnV | Role::AttnOutput | Role::FfnGate | Role::FfnUp | Role::FfnDown
    )
}

fn shape_of(t: &SourceTensor) -> Result<Shape, ConvertError> {
    let dims: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    Shape::new(&dims).map_err(|e| ConvertError::Tensor {
        name: t.name.clone(),
        what: e.to_string(),
    })
}

/// Converts one source tensor to its stored form under `opts`.
pub fn convert_tensor(t: &SourceTensor, opts: &PtqOptions) -> Result<TensorData, ConvertError> {
    convert_tensor_at(t, opts, None)
}

/// [`convert_tensor`], with a linear weight stored at an integer `precision` instead of ternary when given
/// (mixed precision).
pub fn convert_tensor_at(
    t: &SourceTensor,
    opts: &PtqOptions,
    precision: Option<LinearPrecision>,
) -> Result<TensorData, ConvertError> {
    let shape = shape_of(t)?;
    let err = |what: String| ConvertError::Tensor {
        name: t.name.clone(),
        what,
    };
    if shape.numel().ok() != Some(t.data.len() as u64) {
        return Err(err(format!("{} values for shape {:?}", t.data.len(), t.shape)));
    }
    if let Some(bad) = t.data.iter().position(|x| !x.is_finite()) {
        return Err(err(format!("non-finite value at element {bad}")));
    }
    let (rows, cols) = (shape.rows() as usize, shape.cols() as usize);
    let integer = precision.filter(|p| *p != LinearPrecision::Ternary && is_ternary_role(t.role));
    Ok(if let Some(p) = integer {
        match p {
            LinearPrecision::Int4 { group } => {
                if group == 0 || cols % group as usize != 0 {
                    return Err(err(format!("int4 group {group} does not divide {cols} columns")));
                }
                TensorData::int4_groups(&t.name, t.role, t.layer, shape, group, &t.data)
            }
            _ => TensorData::int8_rows(&t.name, t.role, t.layer, shape, &t.data),
        }
    } else if is_ternary_role(t.role) {
        if let ScaleGranularity::Group(g) = opts.scale {
            if g == 0 || g % 32 != 0 {
                return Err(ConvertError::BadGroup(g));
            }
        }
        let (q, scales) = ternarize_absmean(&t.data, rows, cols, opts.scale);
        TensorData::ternary(
            &t.name,
            t.role,
            t.layer,
            shape,
            opts.layout,
            &q,
            opts.scale.kind(),
            scales,
        )
        .map_err(|e| err(format!("internal: value {} is not ternary", e.value)))?
    } else if matches!(t.role, Role::TokenEmbedding | Role::Output) {
        match opts.head {
            HeadFormat::Int8 => TensorData::int8_rows(&t.name, t.role, t.layer, shape, &t.data),
            HeadFormat::Int4(g) => {
                if g == 0 || g % 32 != 0 {
                    return Err(ConvertError::BadGroup(g));
                }
                TensorData::int4_groups(&t.name, t.role, t.layer, shape, g, &t.data)
            }
            HeadFormat::F16 => TensorData::f16(&t.name, t.role, t.layer, shape, &t.data),
        }
    } else {
        TensorData::f32(&t.name, t.role, t.layer, shape, &t.data)
    })
}

/// Builds the `.tern` model: config, tokenizer, chat template, metadata and every tensor converted under
/// `opts`. `progress(done, total, name)` is called after each tensor.
pub fn ptq_model(
    src: &SourceModel,
    opts: &PtqOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ModelWriter, ConvertError> {
    ptq_model_mixed(src, opts, &[], progress)
}

/// [`ptq_model`] with some linear weights stored at integer precisions (by name): Hessian-aware mixed precision.
pub fn ptq_model_mixed(
    src: &SourceModel,
    opts: &PtqOptions,
    precisions: &[(String, LinearPrecision)],
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ModelWriter, ConvertError> {
    // The header is the model itself: each tensor is its own values.
    let find = |t: &SourceTensor| -> Result<Cow<'_, SourceTensor>, ConvertError> {
        src.tensor_by_name(&t.name)
            .map(Cow::Borrowed)
            .ok_or_else(|| ConvertError::Tensor {
                name: t.name.clone(),
                what: "not in the model".into(),
            })
    };
    ptq_tensors(src, &find, opts, precisions, progress)
}

/// [`ptq_model`] reading one source tensor at a time: peak memory is the output plus a few source tensors in
/// f32 (one per rayon thread), not the whole model.
pub fn ptq_model_streaming(
    src: &StreamingSource,
    opts: &PtqOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ModelWriter, ConvertError> {
    let read = |t: &SourceTensor| -> Result<Cow<'_, SourceTensor>, ConvertError> { Ok(src.tensor(t)?) };
    ptq_tensors(src.header(), &read, opts, &[], progress)
}

/// The `.tern` model of `header` (config, tokenizer, metadata) with each of its tensors, as `values` returns it,
/// converted under `opts`, in forward order. Tensors are converted in parallel a window of one per thread at a
/// time, so at most that many source tensors are alive at once.
fn ptq_tensors<'s>(
    header: &SourceModel,
    values: &(dyn Fn(&SourceTensor) -> Result<Cow<'s, SourceTensor>, ConvertError> + Sync),
    opts: &PtqOptions,
    precisions: &[(String, LinearPrecision)],
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ModelWriter, ConvertError> {
    let src = header;
    let mut w = ModelWriter::new(src.config);
    for (k, v) in &src.metadata {
        w.metadata(k, v);
    }
    w.metadata("quantization.method", "ptq-absmean");
    w.metadata("quantization.scale", &scale_label(opts.scale));
    w.metadata(
        "quantization.layout",
        match opts.layout {
            TernaryLayout::TwoBit => "2bit",
            TernaryLayout::Base3 => "base3",
        },
    );
    w.metadata("quantization.head", &head_label(opts.head));
    w.metadata("tern.version", env!("CARGO_PKG_VERSION"));
    if !src.tokenizer_json.is_empty() {
        w.tokenizer_json(src.tokenizer_json.clone());
    }
    if let Some(t) = &src.chat_template {
        w.chat_template(t);
    }
    if !precisions.is_empty() {
        w.metadata("quantization.mixed", &format!("{} integer tensors", precisions.len()));
    }
    let total = src.tensors.len();
    // Store tensors in the order a forward pass reads them, so inference streams through the file.
    let mut ordered: Vec<&SourceTensor> = src.tensors.iter().collect();
    ordered.sort_by_key(|t| forward_order(t.role, t.layer));
    use rayon::prelude::*;
    let precision_of = |name: &str| precisions.iter().find(|(n, _)| n == name).map(|(_, p)| *p);
    let mut done = 0;
    for window in ordered.chunks(rayon::current_num_threads().max(1)) {
        let converted: Vec<Result<TensorData, ConvertError>> = window
            .par_iter()
            .map(|t| convert_tensor_at(values(t)?.as_ref(), opts, precision_of(&t.name)))
            .collect();
        for t in converted {
            let t = t?;
            done += 1;
            progress(done, total, &t.name);
            w.add_tensor(t)?;
        }
    }
    Ok(w)
}

/// Sort key placing tensors in forward-pass order: embedding, blocks in order (norm, Q, K, V, sub-norm, output,
/// norm, gate, up, sub-norm, down), final norm, head.
pub fn forward_order(role: Role, layer: Option<u32>) -> (u32, u32, u32) {
    let within = match role {
        Role::AttnNorm => 0,
        Role::AttnQ => 1,
        Role::AttnK => 2,
        Role::AttnV => 3,
        Role::AttnSubNorm => 4,
        Role::AttnOutput => 5,
        Role::FfnNorm => 6,
        Role::FfnGate => 7,
        Role::FfnUp => 8,
        Role::FfnSubNorm => 9,
        Role::FfnDown => 10,
        Role::TokenEmbedding => return (0, 0, 0),
        Role::OutputNorm => return (2, 0, 0),
        Role::Output => return (2, 0, 1),
        Role::Other => return (3, 0, 0),
    };
    (1, layer.unwrap_or(0), within)
}

pub fn scale_label(s: ScaleGranularity) -> String {
    match s {
        ScaleGranularity::PerTensor => "per-tensor".into(),
        ScaleGranularity::PerRow => "per-row".into(),
        ScaleGranularity::Group(g) => format!("group:{g}"),
    }
}

pub fn head_label(h: HeadFormat) -> String {
    match h {
        HeadFormat::Int8 => "int8".into(),
        HeadFormat::Int4(g) => format!("int4:{g}"),
        HeadFormat::F16 => "f16".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 reference of absmean ternarization, written independently of the code above.
    fn reference(w: &[f32], unit: usize) -> (Vec<i8>, Vec<f64>) {
        let mut q = Vec::new();
        let mut s = Vec::new();
        for chunk in w.chunks(unit) {
            let m = (chunk.iter().map(|x| x.abs() as f64).sum::<f64>() / chunk.len() as f64).max(1e-5);
            s.push(m);
            q.extend(chunk.iter().map(|&x| {
                let r = x as f64 / m;
                // Ties (|r| = 0.5 exactly) round to even, i.e. to 0.
                if r > 0.5 {
                    1
                } else if r < -0.5 {
                    -1
                } else {
                    0
                }
            }));
        }
        (q, s)
    }

    #[test]
    fn absmean_matches_f64_reference() {
        let (rows, cols) = (7, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i % 5) as f32)
            .collect();
        for (g, unit) in [
            (ScaleGranularity::PerTensor, rows * cols),
            (ScaleGranularity::PerRow, cols),
            (ScaleGranularity::Group(32), 32),
        ] {
            let (q, s) = ternarize_absmean(&w, rows, cols, g);
            let (rq, rs) = reference(&w, unit);
            assert_eq!(s.len(), rs.len());
            for (a, b) in s.iter().zip(&rs) {
                assert!((*a as f64 - b).abs() <= 1e-6 * b, "{a} vs {b}");
            }
            // Values exactly on a rounding boundary could differ between f32 and f64 division; none are here.
            assert_eq!(q, rq, "{g:?}");
        }
    }

    #[test]
    fn zero_tensor_gets_min_scale_and_zero_weights() {
        let (q, s) = ternarize_absmean(&[0.0; 64], 1, 64, ScaleGranularity::PerRow);
        assert_eq!(s, vec![MIN_SCALE]);
        assert!(q.iter().all(|&v| v == 0));
    }
}

/// Element type of the matrices of an unquantized `.tern` ([`full_precision_model`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullPrecision {
    F16,
    F32,
}

/// `src` as a `.tern` without quantization: matrices in f16 or f32, vectors (norms) in f32 — the teacher the
/// runtime can run (teacher-data generation, reference perplexities).
pub fn full_precision_model(src: &SourceModel, element: FullPrecision) -> Result<ModelWriter, ConvertError> {
    let mut w = ModelWriter::new(src.config);
    w.tokenizer_json(src.tokenizer_json.clone());
    if let Some(t) = &src.chat_template {
        w.chat_template(t);
    }
    for (k, v) in &src.metadata {
        w.metadata(k, v);
    }
    for t in &src.tensors {
        let shape = shape_of(t)?;
        let data = if t.shape.len() == 1 || element == FullPrecision::F32 {
            TensorData::f32(&t.name, t.role, t.layer, shape, &t.data)
        } else {
            TensorData::f16(&t.name, t.role, t.layer, shape, &t.data)
        };
        w.add_tensor(data)?;
    }
    Ok(w)
}
