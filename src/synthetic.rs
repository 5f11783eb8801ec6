//! Random ternary models of named shapes, for speed work without a download (`tern bench --synthetic`, the
//! criterion benches). The weights are random but every byte is a valid encoding, so the kernels do exactly
//! the work a real model of that shape costs.

use anyhow::{bail, Context};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tern_format::{
    Architecture, ElementType, ModelConfig, ModelWriter, Role, RopeScaling, RopeStyle, ScaleKind, Shape, TensorData,
    TernaryLayout, NO_TOKEN,
};
use tern_quantizer::ptq::{HeadFormat, ScaleGranularity};

/// The dimensions of a named model shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelShape {
    pub name: &'static str,
    pub hidden: u32,
    pub layers: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub ffn: u32,
    pub vocab: u32,
    pub context: u32,
    pub rope_theta: f32,
}

/// SmolLM2-135M and BitNet b1.58 2B4T (with SmolLM2's vocabulary by default, as in the llama.cpp comparison).
pub const SHAPES: [ModelShape; 2] = [
    ModelShape {
        name: "smollm2-135m",
        hidden: 576,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        ffn: 1536,
        vocab: 49152,
        context: 8192,
        rope_theta: 100_000.0,
    },
    ModelShape {
        name: "bitnet-2b",
        hidden: 2560,
        layers: 30,
        heads: 20,
        kv_heads: 5,
        ffn: 6912,
        vocab: 49152,
        context: 4096,
        rope_theta: 500_000.0,
    },
];

pub fn shape(name: &str) -> anyhow::Result<ModelShape> {
    match SHAPES.iter().find(|s| s.name == name) {
        Some(s) => Ok(*s),
        None => {
            let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
            bail!("unknown synthetic shape {name:?} (known: {})", names.join(", "))
        }
    }
}

/// How the synthetic model is stored (the `tern convert` choices).
#[derive(Clone, Copy, Debug)]
pub struct Storage {
    pub arch: Architecture,
    pub layout: TernaryLayout,
    pub scale: ScaleGranularity,
    /// Embedding, tied to the output head (as in both SmolLM2 and BitNet b1.58 2B4T).
    pub head: HeadFormat,
    pub seed: u64,
}

impl ModelShape {
    pub fn config(&self, arch: Architecture) -> ModelConfig {
        ModelConfig {
            arch,
            hidden_size: self.hidden,
            n_layers: self.layers,
            n_heads: self.heads,
            n_kv_heads: self.kv_heads,
            head_dim: self.hidden / self.heads,
            ffn_size: self.ffn,
            vocab_size: self.vocab,
            context_length: self.context,
            rope_theta: self.rope_theta,
            rope_scaling: RopeScaling::None,
            rope_style: RopeStyle::Interleaved,
            norm_eps: 1e-5,
            tied_embeddings: true,
            bos_token: 1,
            eos_token: 2,
            pad_token: NO_TOKEN,
            add_bos: false,
        }
    }
}

/// A deterministic random stream per (tensor, row): the model is the same whatever the thread count.
fn row_rng(seed: u64, tensor: usize, row: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ ((tensor as u64) << 40) ^ row as u64)
}

/// `rows × cols` ternary weights, packed, with scales of the given granularity (around 1/√cols).
fn ternary(
    name: &str,
    role: Role,
    layer: u32,
    rows: usize,
    cols: usize,
    storage: &Storage,
    tensor: usize,
) -> anyhow::Result<TensorData> {
    let mut weights = vec![0i8; rows * cols];
    weights.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let mut rng = row_rng(storage.seed, tensor, r);
        let mut bytes = vec![0u8; cols];
        rng.fill_bytes(&mut bytes);
        for (w, b) in row.iter_mut().zip(bytes) {
            *w = (b % 3) as i8 - 1;
        }
    });
    let kind = storage.scale.kind();
    let n = kind.count(rows as u64, cols as u64)? as usize;
    let base = 1.0 / (cols as f32).sqrt();
    let scales = (0..n).map(|i| base * (0.75 + (i % 7) as f32 / 14.0)).collect();
    let shape = Shape::new(&[rows as u64, cols as u64])?;
    TensorData::ternary(name, role, Some(layer), shape, storage.layout, &weights, kind, scales)
        .map_err(|e| anyhow::anyhow!("{name}: weight {} is not ternary", e.index))
}

/// The embedding (and tied head) in the requested dense format, filled with random codes.
fn embedding(vocab: usize, hidden: usize, storage: &Storage) -> anyhow::Result<TensorData> {
    let shape = Shape::new(&[vocab as u64, hidden as u64])?;
    let (dtype, scale) = match storage.head {
        HeadFormat::Int8 => (ElementType::Int8, ScaleKind::PerRow),
        HeadFormat::Int4(g) => (ElementType::Int4, ScaleKind::PerGroup(g)),
        HeadFormat::F16 => (ElementType::F16, ScaleKind::None),
    };
    let row_bytes = dtype.row_bytes(hidden as u64)? as usize;
    let mut data = vec![0u8; vocab * row_bytes];
    data.par_chunks_mut(row_bytes).enumerate().for_each(|(r, row)| {
        let mut rng = row_rng(storage.seed, usize::MAX >> 24, r);
        rng.fill_bytes(row);
        if dtype == ElementType::F16 {
            // Values in ±[0.5, 1): sign and mantissa random, exponent fixed (no infinities or NaNs).
            for pair in row.chunks_exact_mut(2) {
                pair[1] = (pair[1] & 0x83) | 0x38;
            }
        } else if dtype == ElementType::Int8 {
            for b in row.iter_mut() {
                if *b == 0x80 {
                    *b = 0x81; // the writer's int8 quantizer never produces −128
                }
            }
        }
    });
    let n = scale.count(vocab as u64, hidden as u64)? as usize;
    let scales = (0..n).map(|i| 0.01 + (i % 13) as f32 * 1e-3).collect();
    Ok(TensorData {
        name: "token_embd.weight".into(),
        role: Role::TokenEmbedding,
        layer: None,
        dtype,
        scale,
        shape,
        data,
        scales,
    })
}

fn norm(name: &str, role: Role, layer: Option<u32>, n: usize) -> anyhow::Result<TensorData> {
    let v: Vec<f32> = (0..n).map(|i| 0.9 + (i % 11) as f32 * 0.02).collect();
    Ok(TensorData::f32(name, role, layer, Shape::new(&[n as u64])?, &v))
}

/// Every tensor of a random model of `shape`, in forward order, ready to serialise.
pub fn build(shape: &ModelShape, storage: &Storage) -> anyhow::Result<ModelWriter> {
    let c = shape.config(storage.arch);
    c.validate().context("synthetic shape")?;
    let (h, f, v) = (c.hidden_size as usize, c.ffn_size as usize, c.vocab_size as usize);
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let mut w = ModelWriter::new(c);
    w.metadata("general.name", &format!("synthetic {}", shape.name));
    w.metadata("general.source", "tern synthetic (random weights)");
    w.add_tensor(embedding(v, h, storage)?)?;
    let mut index = 0;
    for l in 0..c.n_layers {
        let name = |role: Role| format!("blk.{l}.{}.weight", role.gguf_name());
        let mut lin = |role: Role, rows: usize, cols: usize| {
            index += 1;
            ternary(&name(role), role, l, rows, cols, storage, index)
        };
        let q = lin(Role::AttnQ, qd, h)?;
        let k = lin(Role::AttnK, kvd, h)?;
        let vv = lin(Role::AttnV, kvd, h)?;
        let o = lin(Role::AttnOutput, h, qd)?;
        let gate = lin(Role::FfnGate, f, h)?;
        let up = lin(Role::FfnUp, f, h)?;
        let down = lin(Role::FfnDown, h, f)?;
        w.add_tensor(norm(&name(Role::AttnNorm), Role::AttnNorm, Some(l), h)?)?;
        for t in [q, k, vv, o] {
            w.add_tensor(t)?;
        }
        if c.arch == Architecture::BitNetB158 {
            w.add_tensor(norm(&name(Role::AttnSubNorm), Role::AttnSubNorm, Some(l), qd)?)?;
        }
        w.add_tensor(norm(&name(Role::FfnNorm), Role::FfnNorm, Some(l), h)?)?;
        for t in [gate, up, down] {
            w.add_tensor(t)?;
        }
        if c.arch == Architecture::BitNetB158 {
            w.add_tensor(norm(&name(Role::FfnSubNorm), Role::FfnSubNorm, Some(l), f)?)?;
        }
    }
    w.add_tensor(norm("output_norm.weight", Role::OutputNorm, None, h)?)?;
    Ok(w)
}
