//! `tern export-gguf`: writes a `.tern` model as a GGUF file that upstream llama.cpp loads, so both runtimes
//! can be measured on the same ternary weights.
//!
//! Ternary tensors become TQ2_0 or TQ1_0 (256-weight blocks) where rows are multiples of 256, and Q2_0
//! (64-weight blocks) otherwise. The ternary values are represented exactly; the only rounding is of the
//! scales, which GGUF stores as one f16 per block: a per-tensor or per-row scale `s` becomes `f16(s)` in every
//! block of its unit (relative error ≤ 2⁻¹¹, more for `|s| < 6.1e-5` where f16 is subnormal), and a per-group
//! scale needs G to be a multiple of the block size. int8 rows become Q8_0 (the same int8 values, the row
//! scale as every block's f16 `d`), int4 groups become Q4_0, f16 and f32 stay as they are.

use std::collections::BTreeMap;

use crate::import::gguf_file::GgmlType;
use half::f16;
use tern_format::blocks::{
    int4_value, ternary2_code, ternary3_code, BlockTernary2, BlockTernary3, TERNARY_BLOCK_WEIGHTS,
};
use tern_format::numerics;
use tern_format::{Architecture, ElementType, ModelView, RopeScaling, RopeStyle, ScaleKind, TensorView};

/// Which 256-block ternary type to prefer where rows allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TernaryGgufType {
    Tq2_0,
    Tq1_0,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("tensor {name}: {what}")]
    Tensor { name: String, what: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

fn terr(t: &TensorView<'_>, what: impl Into<String>) -> ExportError {
    ExportError::Tensor {
        name: t.name.to_string(),
        what: what.into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// GGUF serialisation

enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

struct GgufBuilder {
    kv: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

const ALIGNMENT: usize = 32;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufBuilder {
    fn kv(&mut self, k: &str, v: Value) {
        self.kv.push((k.to_string(), v));
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            match v {
                Value::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::Bool(x) => {
                    out.extend_from_slice(&7u32.to_le_bytes());
                    out.push(u8::from(*x));
                }
                Value::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Value::StrArray(a) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    for s in a {
                        put_str(&mut out, s);
                    }
                }
                Value::I32Array(a) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    for x in a {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0usize;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        out.resize(out.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        let base = out.len();
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(base + (out.len() - base).div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------
// Block encoders (ggml layouts; see ../shared/notes/REFERENCE.md and ggml-common.h)

/// One ternary row: codes 0..=2 (w + 1) and the scale that applies to each weight.
fn ternary_row(t: &TensorView<'_>, r: usize) -> Result<(Vec<u8>, Vec<f32>), ExportError> {
    let cols = t.shape.cols() as usize;
    let row_bytes = t.row_bytes();
    let row = t
        .data
        .get(r * row_bytes..(r + 1) * row_bytes)
        .ok_or_else(|| terr(t, "row out of range"))?;
    let codes: Vec<u8> = match t.dtype {
        ElementType::Ternary2 => {
            let blocks: &[BlockTernary2] = bytemuck::cast_slice(row);
            (0..cols)
                .map(|i| ternary2_code(&blocks[i / TERNARY_BLOCK_WEIGHTS], i % TERNARY_BLOCK_WEIGHTS))
                .collect()
        }
        ElementType::Ternary3 => {
            let blocks: &[BlockTernary3] = bytemuck::cast_slice(row);
            (0..cols)
                .map(|i| ternary3_code(&blocks[i / TERNARY_BLOCK_WEIGHTS], i % TERNARY_BLOCK_WEIGHTS))
                .collect()
        }
        _ => return Err(terr(t, "not ternary")),
    };
    if codes.contains(&3) {
        return Err(terr(t, "corrupt ternary code 3"));
    }
    let scale_of = |i: usize| -> f32 {
        match t.scale {
            ScaleKind::PerTensor => t.scales[0],
            ScaleKind::PerRow => t.scales[r],
            ScaleKind::PerGroup(g) => t.scales[r * cols.div_ceil(g as usize) + i / g as usize],
            ScaleKind::None => 0.0,
        }
    };
    Ok((codes, (0..cols).map(scale_of).collect()))
}

/// The one f16 scale of a block, or an error if the weights of the block have different scales.
fn block_scale(t: &TensorView<'_>, scales: &[f32]) -> Result<[u8; 2], ExportError> {
    let s = scales[0];
    if scales.iter().any(|&x| x != s) {
        return Err(terr(
            t,
            "scale groups are smaller than the GGUF block; use a group size that is a multiple of it",
        ));
    }
    Ok(f16::from_f32(s).to_le_bytes())
}

fn encode_tq2_0(t: &TensorView<'_>, codes: &[u8], scales: &[f32], out: &mut Vec<u8>) -> Result<(), ExportError> {
    for (c, s) in codes.chunks(256).zip(scales.chunks(256)) {
        // Two 32-byte halves of 128 weights; byte m holds weights m, m+32, m+64, m+96 at bits 0, 2, 4, 6.
        for half in 0..2 {
            for m in 0..32 {
                let mut b = 0u8;
                for k in 0..4 {
                    b |= c[half * 128 + k * 32 + m] << (2 * k);
                }
                out.push(b);
            }
        }
        out.extend_from_slice(&block_scale(t, s)?);
    }
    Ok(())
}

fn base3_byte(trits: impl Iterator<Item = u8>) -> u8 {
    let v: u16 = trits.fold(0u16, |acc, c| acc * 3 + c as u16);
    ((v * 256).div_ceil(243)) as u8
}

fn encode_tq1_0(t: &TensorView<'_>, codes: &[u8], scales: &[f32], out: &mut Vec<u8>) -> Result<(), ExportError> {
    for (c, s) in codes.chunks(256).zip(scales.chunks(256)) {
        // 32 bytes: byte m holds weights m + 32k (k = 0..5, most significant first), weights 0..160.
        for m in 0..32 {
            out.push(base3_byte((0..5).map(|k| c[32 * k + m])));
        }
        // 16 bytes: byte m holds weights 160 + m + 16k.
        for m in 0..16 {
            out.push(base3_byte((0..5).map(|k| c[160 + 16 * k + m])));
        }
        // 4 bytes: byte m holds weights 240 + m + 4k (k = 0..4) and a fifth, zero trit.
        for m in 0..4 {
            out.push(base3_byte((0..4).map(|k| c[240 + 4 * k + m]).chain(std::iter::once(0))));
        }
        out.extend_from_slice(&block_scale(t, s)?);
    }
    Ok(())
}

fn encode_q2_0(t: &TensorView<'_>, codes: &[u8], scales: &[f32], out: &mut Vec<u8>) -> Result<(), ExportError> {
    for (c, s) in codes.chunks(64).zip(scales.chunks(64)) {
        out.extend_from_slice(&block_scale(t, s)?);
        // Weight j in byte j / 4 at bit offset 2 (j mod 4).
        for j4 in 0..16 {
            out.push((0..4).fold(0u8, |b, k| b | (c[4 * j4 + k] << (2 * k))));
        }
    }
    Ok(())
}

fn ternary_tensor(t: &TensorView<'_>, prefer: TernaryGgufType) -> Result<(GgmlType, Vec<u8>), ExportError> {
    let (rows, cols) = (t.shape.rows() as usize, t.shape.cols() as usize);
    let ty = if cols % 256 == 0 {
        match prefer {
            TernaryGgufType::Tq2_0 => GgmlType::TQ2_0,
            TernaryGgufType::Tq1_0 => GgmlType::TQ1_0,
        }
    } else if cols % 64 == 0 {
        GgmlType::Q2_0
    } else {
        return Err(terr(
            t,
            format!("{cols} columns: GGUF ternary types need a multiple of 64"),
        ));
    };
    let mut out = Vec::new();
    for r in 0..rows {
        let (codes, scales) = ternary_row(t, r)?;
        match ty {
            GgmlType::TQ2_0 => encode_tq2_0(t, &codes, &scales, &mut out)?,
            GgmlType::TQ1_0 => encode_tq1_0(t, &codes, &scales, &mut out)?,
            _ => encode_q2_0(t, &codes, &scales, &mut out)?,
        }
    }
    Ok((ty, out))
}

fn int8_tensor(t: &TensorView<'_>) -> Result<(GgmlType, Vec<u8>), ExportError> {
    let cols = t.shape.cols() as usize;
    if cols % 32 != 0 {
        return Err(terr(t, "Q8_0 needs rows that are multiples of 32"));
    }
    let mut out = Vec::with_capacity(t.data.len() / 32 * 34);
    for (r, row) in t.data.chunks(cols).enumerate() {
        let d = f16::from_f32(t.scales[r]).to_le_bytes();
        for block in row.chunks(32) {
            out.extend_from_slice(&d);
            out.extend_from_slice(block);
        }
    }
    Ok((GgmlType::Q8_0, out))
}

fn int4_tensor(t: &TensorView<'_>) -> Result<(GgmlType, Vec<u8>), ExportError> {
    let cols = t.shape.cols() as usize;
    let ScaleKind::PerGroup(g) = t.scale else {
        return Err(terr(t, "int4 without group scales"));
    };
    if cols % 32 != 0 || g % 32 != 0 {
        return Err(terr(t, "Q4_0 needs rows and groups that are multiples of 32"));
    }
    let groups = cols.div_ceil(g as usize);
    let row_bytes = cols.div_ceil(2);
    let mut out = Vec::new();
    for (r, row) in t.data.chunks(row_bytes).enumerate() {
        for b in 0..cols / 32 {
            out.extend_from_slice(&f16::from_f32(t.scales[r * groups + b * 32 / g as usize]).to_le_bytes());
            // Q4_0: byte j holds weight j (low nibble) and j + 16 (high nibble), both as q + 8.
            for j in 0..16 {
                let lo = (int4_value(row, b * 32 + j) + 8) as u8;
                let hi = (int4_value(row, b * 32 + j + 16) + 8) as u8;
                out.push(lo | (hi << 4));
            }
        }
    }
    Ok((GgmlType::Q4_0, out))
}

// ---------------------------------------------------------------------------------------------------------
// Tokenizer: tokenizer.json (byte-level BPE) → GGUF arrays

struct GgufVocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

fn vocab_from_tokenizer_json(json: &[u8], vocab_size: usize) -> Result<GgufVocab, ExportError> {
    let terr = |m: &str| ExportError::Tokenizer(m.to_string());
    let j: serde_json::Value = serde_json::from_slice(json).map_err(|e| ExportError::Tokenizer(e.to_string()))?;
    if j["model"]["type"].as_str() != Some("BPE") {
        return Err(terr("only BPE tokenizers can be exported to GGUF"));
    }
    let vocab = j["model"]["vocab"]
        .as_object()
        .ok_or_else(|| terr("model.vocab missing"))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size]; // 1 = normal
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| terr("vocab id is not an integer"))? as usize;
        if id < vocab_size {
            tokens[id] = Some(tok.clone());
        }
    }
    for a in j["added_tokens"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(terr("added token without id or content"));
        };
        if (id as usize) < vocab_size {
            tokens[id as usize] = Some(content.to_string());
            types[id as usize] = if a["special"].as_bool().unwrap_or(false) { 3 } else { 4 };
            // control / user
        }
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5; // unused
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges = j["model"]["merges"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            _ => Err(terr("merge is neither \"a b\" nor [a, b]")),
        })
        .collect::<Result<_, _>>()?;
    Ok(GgufVocab { tokens, types, merges })
}

/// Llama-3 RoPE scaling as llama.cpp expects it: a `rope_freqs.weight` tensor of per-frequency divisors
/// (llama.cpp rotates by `θ^(−2i/d) / rope_freqs[i]`), from the one scaling formula in `tern_format::numerics`.
fn llama3_rope_factors(head_dim: usize, theta: f32, s: RopeScaling) -> Option<Vec<f32>> {
    if s == RopeScaling::None {
        return None;
    }
    let theta = f64::from(theta);
    Some(
        (0..head_dim / 2)
            .map(|i| {
                let unscaled = numerics::rope_inv_freq(i, head_dim, theta, RopeScaling::None);
                (unscaled / numerics::rope_scaled(unscaled, s)) as f32
            })
            .collect(),
    )
}

/// Builds the GGUF bytes for a `.tern` model.
pub fn export_gguf(view: &ModelView<'_>, prefer: TernaryGgufType) -> Result<Vec<u8>, ExportError> {
    let c = view.config();
    if c.arch != Architecture::Llama {
        return Err(ExportError::Unsupported(format!(
            "GGUF export of {} models is not supported yet",
            c.arch.name()
        )));
    }
    if c.rope_style != RopeStyle::Interleaved {
        return Err(ExportError::Unsupported(
            "GGUF export needs interleaved RoPE pairs (GGUF's convention)".into(),
        ));
    }
    let mut g = GgufBuilder {
        kv: Vec::new(),
        tensors: Vec::new(),
    };
    let meta: BTreeMap<&str, &str> = view.metadata().filter_map(Result::ok).collect();
    g.kv("general.architecture", Value::Str("llama".into()));
    g.kv(
        "general.name",
        Value::Str(meta.get("general.name").copied().unwrap_or("tern export").to_string()),
    );
    g.kv("general.alignment", Value::U32(ALIGNMENT as u32));
    g.kv("llama.context_length", Value::U32(c.context_length));
    g.kv("llama.embedding_length", Value::U32(c.hidden_size));
    g.kv("llama.block_count", Value::U32(c.n_layers));
    g.kv("llama.feed_forward_length", Value::U32(c.ffn_size));
    g.kv("llama.rope.dimension_count", Value::U32(c.head_dim));
    g.kv("llama.attention.head_count", Value::U32(c.n_heads));
    g.kv("llama.attention.head_count_kv", Value::U32(c.n_kv_heads));
    g.kv("llama.attention.key_length", Value::U32(c.head_dim));
    g.kv("llama.attention.value_length", Value::U32(c.head_dim));
    g.kv("llama.attention.layer_norm_rms_epsilon", Value::F32(c.norm_eps));
    g.kv("llama.rope.freq_base", Value::F32(c.rope_theta));
    g.kv("llama.vocab_size", Value::U32(c.vocab_size));
    if let Some(tok) = view.tokenizer() {
        let v = vocab_from_tokenizer_json(tok.bytes, c.vocab_size as usize)?;
        g.kv("tokenizer.ggml.model", Value::Str("gpt2".into()));
        g.kv(
            "tokenizer.ggml.pre",
            Value::Str(meta.get("tokenizer.ggml.pre").copied().unwrap_or("default").to_string()),
        );
        g.kv("tokenizer.ggml.tokens", Value::StrArray(v.tokens));
        g.kv("tokenizer.ggml.token_type", Value::I32Array(v.types));
        g.kv("tokenizer.ggml.merges", Value::StrArray(v.merges));
    }
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", c.bos_token),
        ("tokenizer.ggml.eos_token_id", c.eos_token),
        ("tokenizer.ggml.padding_token_id", c.pad_token),
    ] {
        if id != tern_format::NO_TOKEN {
            g.kv(key, Value::U32(id));
        }
    }
    g.kv("tokenizer.ggml.add_bos_token", Value::Bool(c.add_bos));
    if let Some(t) = view.chat_template() {
        g.kv("tokenizer.chat_template", Value::Str(t.to_string()));
    }
    if let Some(f) = llama3_rope_factors(c.head_dim as usize, c.rope_theta, c.rope_scaling) {
        let n = f.len() as u64;
        g.tensors.push((
            "rope_freqs.weight".into(),
            vec![n],
            GgmlType::F32,
            bytemuck::cast_slice(&f).to_vec(),
        ));
    }
    for t in view.tensors() {
        let (ty, data) = match t.dtype {
            ElementType::Ternary2 | ElementType::Ternary3 => ternary_tensor(&t, prefer)?,
            ElementType::Int8 => int8_tensor(&t)?,
            ElementType::Int4 => int4_tensor(&t)?,
            ElementType::F16 => (GgmlType::F16, t.data.to_vec()),
            ElementType::F32 => (GgmlType::F32, t.data.to_vec()),
        };
        // GGUF lists dimensions innermost first.
        let dims: Vec<u64> = t.shape.dims().iter().rev().copied().collect();
        g.tensors.push((t.name.to_string(), dims, ty, data));
    }
    Ok(g.to_bytes())
}
