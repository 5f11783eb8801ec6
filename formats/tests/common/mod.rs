//! Shared builders for the format tests.
#![allow(dead_code)]

use tern_format::{
    Architecture, ModelConfig, ModelWriter, Role, RopeScaling, RopeStyle, ScaleKind, Shape, TensorData, TernaryLayout,
    NO_TOKEN,
};

pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: Architecture::Llama,
        hidden_size: 64,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 32,
        ffn_size: 96,
        vocab_size: 16,
        context_length: 128,
        rope_theta: 10000.0,
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

/// A small but complete model: every element type, tokenizer, chat template, metadata.
pub fn tiny_writer() -> ModelWriter {
    let cfg = tiny_config();
    let mut w = ModelWriter::new(cfg);
    w.metadata("general.source", "unit test")
        .metadata("quantization.method", "hand-built");
    w.tokenizer_json(br#"{"version":"1.0","model":{"type":"BPE"}}"#.to_vec());
    w.chat_template("{% for m in messages %}{{ m.content }}{% endfor %}");
    let emb: Vec<f32> = (0..16 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    w.add_tensor(TensorData::int8_rows(
        "token_embd.weight",
        Role::TokenEmbedding,
        None,
        Shape::new(&[16, 64]).unwrap(),
        &emb,
    ))
    .unwrap();
    let norm: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 / 64.0).collect();
    w.add_tensor(TensorData::f32(
        "blk.0.attn_norm.weight",
        Role::AttnNorm,
        Some(0),
        Shape::new(&[64]).unwrap(),
        &norm,
    ))
    .unwrap();
    w.add_tensor(TensorData::f16(
        "output_norm.weight",
        Role::OutputNorm,
        None,
        Shape::new(&[64]).unwrap(),
        &norm,
    ))
    .unwrap();
    let q: Vec<i8> = (0..64 * 64).map(|i| ((i * 7 + i / 5) % 3) as i8 - 1).collect();
    w.add_tensor(
        TensorData::ternary(
            "blk.0.attn_q.weight",
            Role::AttnQ,
            Some(0),
            Shape::new(&[64, 64]).unwrap(),
            TernaryLayout::TwoBit,
            &q,
            ScaleKind::PerTensor,
            vec![0.25],
        )
        .unwrap(),
    )
    .unwrap();
    let k: Vec<i8> = (0..32 * 64).map(|i| ((i * 5 + 1) % 3) as i8 - 1).collect();
    w.add_tensor(
        TensorData::ternary(
            "blk.0.attn_k.weight",
            Role::AttnK,
            Some(0),
            Shape::new(&[32, 64]).unwrap(),
            TernaryLayout::Base3,
            &k,
            ScaleKind::PerRow,
            (0..32).map(|r| 0.1 + r as f32 * 0.01).collect(),
        )
        .unwrap(),
    )
    .unwrap();
    let up: Vec<f32> = (0..96 * 64).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
    w.add_tensor(TensorData::int4_groups(
        "blk.0.ffn_up.weight",
        Role::FfnUp,
        Some(0),
        Shape::new(&[96, 64]).unwrap(),
        32,
        &up,
    ))
    .unwrap();
    w
}

pub fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Recomputes section CRCs and the header CRC where the table is still readable.
pub fn reseal(b: &mut [u8]) {
    if b.len() < 64 {
        return;
    }
    let n = (u32::from_le_bytes(b[24..28].try_into().unwrap()) as usize).min(64);
    if b.len() < 64 + 24 * n {
        return;
    }
    for i in 0..n {
        let e = 64 + 24 * i;
        let (off, len) = (u64_at(b, e + 8), u64_at(b, e + 16));
        if let Some(end) = off.checked_add(len) {
            if end <= b.len() as u64 {
                let crc = crc32fast::hash(&b[off as usize..end as usize]);
                b[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    let crc = crc32fast::hash(&[&b[..40], &b[64..64 + 24 * n]].concat());
    b[40..44].copy_from_slice(&crc.to_le_bytes());
}

/// Byte offset of the section of `kind` (read from the section table, as FORMAT.md §3 lays it out).
pub fn section_offset(b: &[u8], kind: u32) -> usize {
    let n = u32_at(b, 24) as usize;
    (0..n)
        .map(|i| 64 + 24 * i)
        .find(|&e| u32_at(b, e) == kind)
        .map(|e| u64_at(b, e + 8) as usize)
        .expect("section present")
}
