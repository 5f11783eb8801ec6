//! A tiny random Llama with a byte-level tokenizer, for tests and demonstrations of the training pipeline
//! (`tern quantize --tiny-random`): every part of the real path runs, in milliseconds per step.

use serde_json::{json, Map, Value};
use tern_format::{Architecture, ModelConfig};

use crate::engine::{tiny_config, ParamKind, ParamLayout, SplitMix64};
use crate::import::source::{
    expected_shape, parse_gguf_tensor_name, SourceModel, SourceTensor, META_SOURCE_FORMAT, META_SOURCE_PATH,
};

/// 256 byte tokens plus EOS.
pub const TINY_VOCAB: u32 = 257;
pub const TINY_EOS: u32 = 256;

/// GPT-2's byte → printable-character map (the alphabet of byte-level BPE).
fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return char::from(b);
    }
    // Non-printable bytes map to 256, 257, … in byte order.
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// A byte-level BPE `tokenizer.json` without merges: token `b` is byte `b`, token 256 is `<|endoftext|>`.
pub fn byte_tokenizer_json() -> Vec<u8> {
    let mut vocab = Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_to_char(b).to_string(), json!(b));
    }
    vocab.insert("<|endoftext|>".into(), json!(TINY_EOS));
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": TINY_EOS, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": Value::Object(vocab), "merges": []},
    });
    serde_json::to_vec(&tok).unwrap_or_default()
}

/// A 2-layer Llama (hidden 64, 4 heads of 16, 2 KV heads, FFN 128, vocabulary 257, tied embeddings) with
/// N(0, 0.02²) matrices (0.05 for the embedding: near-uniform untrained logits, loss ≈ ln 257) and unit norms.
pub fn tiny_random_model(seed: u64) -> SourceModel {
    let mut config = tiny_config(Architecture::Llama, 64, 2, 4, 2, 16, 128, TINY_VOCAB, true);
    config.eos_token = TINY_EOS;
    random_source_model(config, seed, 0.02, 0.05)
}

/// A model of any shape with N(0, `matrix_std`²) linear weights, N(0, `embed_std`²) embeddings/head, unit norms
/// and the byte tokenizer (the vocabulary must hold its 257 tokens for text to tokenize).
pub fn random_source_model(config: ModelConfig, seed: u64, matrix_std: f64, embed_std: f64) -> SourceModel {
    let layout = ParamLayout::new(&config);
    let mut rng = SplitMix64::new(seed);
    let tensors = layout
        .specs
        .iter()
        .filter_map(|spec| {
            let (role, layer) = parse_gguf_tensor_name(&spec.name)?;
            let std = match spec.kind {
                ParamKind::Embedding | ParamKind::Head => embed_std,
                _ => matrix_std,
            };
            let data: Vec<f32> = match spec.kind {
                ParamKind::Norm => vec![1.0; spec.numel()],
                _ => (0..spec.numel()).map(|_| (rng.normal() * std) as f32).collect(),
            };
            let shape = expected_shape(&config, role)?;
            Some(SourceTensor {
                name: spec.name.clone(),
                role,
                layer,
                shape,
                data,
            })
        })
        .collect();
    SourceModel {
        config,
        tokenizer_json: byte_tokenizer_json(),
        chat_template: None,
        metadata: vec![
            (META_SOURCE_PATH.into(), format!("tiny-random:{seed}")),
            (META_SOURCE_FORMAT.into(), "tiny-random".into()),
            ("general.name".into(), "tiny-random".into()),
        ],
        tensors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_model_validates_and_tokenizes_bytes() {
        let m = tiny_random_model(1);
        m.validate().unwrap();
        let tok = crate::data::load_tokenizer(&m.tokenizer_json).unwrap();
        let text = "Hé\n x";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}
