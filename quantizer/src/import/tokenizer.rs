//! Synthesizes a Hugging Face `tokenizer.json` from a GGUF file's `tokenizer.ggml.*` metadata, so that every
//! imported model carries a tokenizer the `tokenizers` crate can load. Only the metadata is read: a
//! vocabulary-only GGUF (no tensors) is enough.
//!
//! Supported kinds (`tokenizer.ggml.model`):
//! - `llama`: SentencePiece BPE with byte fallback (Llama 1/2, Mistral, Phi-3, …), written as Hugging Face's
//!   converters write Llama-2's `tokenizer.json`: a BPE model whose merges are derived from the vocabulary and
//!   the piece scores (every split of a piece into two pieces, ordered by the merged piece's score),
//!   `byte_fallback` to the `<0xNN>` tokens, the normalizer Prepend("▁") (when `add_space_prefix`) then
//!   Replace(" " → "▁"), and the decoder Replace/ByteFallback/Fuse/Strip.
//! - `gpt2`: byte-level BPE with the merges stored in the file, and the pre-tokenizer `tokenizer.ggml.pre`
//!   names (see [`BYTE_LEVEL_PRE`]); the regexes follow llama.cpp's pre-tokenizer types, written the way the
//!   models' own `tokenizer.json` files write them where one exists.
//!
//! Anything else is [`ImportError::UnsupportedTokenizer`]. The result never inserts BOS/EOS itself (no template
//! post-processor): whether to prepend BOS is `add_bos` ([`gguf_special_tokens`], `ModelConfig::add_bos`), so
//! callers encode with `add_special_tokens = false` and prepend BOS when it says so.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::error::ImportError;
use crate::import::gguf_file::GgufFile;

/// llama.cpp token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i128 = 1;
    pub const UNKNOWN: i128 = 2;
    pub const CONTROL: i128 = 3;
    pub const USER_DEFINED: i128 = 4;
    pub const UNUSED: i128 = 5;
    pub const BYTE: i128 = 6;
}

/// The `tokenizer.ggml.model` values this module reads.
pub const SUPPORTED_MODELS: &str = "llama (SentencePiece BPE), gpt2 (byte-level BPE)";
/// The `tokenizer.ggml.pre` values this module reads for `gpt2` vocabularies.
pub const SUPPORTED_PRE: &str = "default, gpt-2, phi-2, mpt, olmo, smollm, starcoder, refact, command-r, \
                                 llama-bpe, llama3, llama-v3, falcon3, qwen2, deepseek-r1-qwen, stablelm2, falcon, \
                                 deepseek-coder";

/// The Llama-3 pre-tokenizer regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`; Meta's tokenizer.json `Split`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`; Qwen2's tokenizer.json).
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How one `tokenizer.ggml.pre` value is expressed in `tokenizer.json`.
pub struct BytePre {
    pub names: &'static [&'static str],
    pub pre_tokenizer: fn() -> Value,
    /// Normalizer of the model family's own tokenizer.json (Qwen2: NFC).
    pub normalizer: fn() -> Value,
    /// Hugging Face BPE `ignore_merges` (llama.cpp sets it for the Llama-3 type): a pre-token that is itself in
    /// the vocabulary is taken whole.
    pub ignore_merges: bool,
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// Regex splits applied in turn (as llama.cpp applies a type's list of regexes), then byte-level mapping.
fn splits_then_bytes(patterns: &[&str]) -> Value {
    let mut seq: Vec<Value> = patterns.iter().map(|p| split(p)).collect();
    seq.push(byte_level(false));
    json!({"type": "Sequence", "pretokenizers": seq})
}

fn no_normalizer() -> Value {
    Value::Null
}

/// The pre-tokenizers of byte-level (`gpt2`) vocabularies, by llama.cpp's `tokenizer.ggml.pre` names.
pub const BYTE_LEVEL_PRE: &[BytePre] = &[
    // GPT-2, Phi-2 (CodeGen), MPT/GPT-NeoX, OLMo: GPT-2's regex.
    BytePre {
        names: &["gpt-2", "gpt2", "phi-2", "mpt", "olmo"],
        pre_tokenizer: || byte_level(true),
        normalizer: no_normalizer,
        ignore_merges: false,
    },
    // SmolLM, StarCoder, Refact, Command-R: digits split one by one, then GPT-2's regex.
    BytePre {
        names: &["smollm", "starcoder", "refact", "command-r"],
        pre_tokenizer: || {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]})
        },
        normalizer: no_normalizer,
        ignore_merges: false,
    },
    BytePre {
        names: &["llama-bpe", "llama3", "llama-v3", "falcon3"],
        pre_tokenizer: || splits_then_bytes(&[LLAMA3_PATTERN]),
        normalizer: no_normalizer,
        ignore_merges: true,
    },
    BytePre {
        names: &["qwen2", "deepseek-r1-qwen"],
        pre_tokenizer: || splits_then_bytes(&[QWEN2_PATTERN]),
        normalizer: || json!({"type": "NFC"}),
        ignore_merges: false,
    },
    BytePre {
        names: &["stablelm2"],
        pre_tokenizer: || splits_then_bytes(&[QWEN2_PATTERN]),
        normalizer: no_normalizer,
        ignore_merges: false,
    },
    // DeepSeek Coder: newlines, letter runs and punctuation runs (each after an optional space), CJK runs, single
    // digits.
    BytePre {
        names: &["deepseek-coder"],
        pre_tokenizer: || splits_then_bytes(&[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"]),
        normalizer: no_normalizer,
        ignore_merges: false,
    },
    // llama.cpp's own default for byte-level vocabularies without a known pre-tokenizer.
    BytePre {
        names: &["default"],
        pre_tokenizer: || {
            splits_then_bytes(&[
                r"[\p{P}\$\+<=>\^~\|]+",
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ])
        },
        normalizer: no_normalizer,
        ignore_merges: false,
    },
    BytePre {
        names: &["falcon"],
        pre_tokenizer: || {
            splits_then_bytes(&[
                r"[\p{P}\$\+<=>\^~\|`]+",
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                r"[0-9][0-9][0-9]",
            ])
        },
        normalizer: no_normalizer,
        ignore_merges: false,
    },
];

/// The [`BytePre`] of llama.cpp's pre-tokenizer type name `pre`.
pub fn byte_level_pre(pre: &str) -> Option<&'static BytePre> {
    BYTE_LEVEL_PRE.iter().find(|p| p.names.contains(&pre))
}

/// Hugging Face pre-tokenizer equivalent to llama.cpp's pre-tokenizer type `pre` (byte-level vocabularies).
pub fn pre_tokenizer_for(pre: &str) -> Option<Value> {
    byte_level_pre(pre).map(|p| (p.pre_tokenizer)())
}

/// The two GGUF tokenizer kinds this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// `llama`: SentencePiece BPE with byte fallback.
    SentencePiece,
    /// `gpt2`: byte-level BPE.
    ByteLevelBpe,
}

/// The kind named by `tokenizer.ggml.model`, or [`ImportError::UnsupportedTokenizer`] naming it.
pub fn vocab_kind(g: &GgufFile) -> Result<VocabKind, ImportError> {
    match g.require_str("tokenizer.ggml.model")? {
        "llama" => Ok(VocabKind::SentencePiece),
        "gpt2" => Ok(VocabKind::ByteLevelBpe),
        other => Err(ImportError::UnsupportedTokenizer {
            path: g.path().to_path_buf(),
            key: "tokenizer.ggml.model",
            value: other.into(),
            supported: SUPPORTED_MODELS,
        }),
    }
}

/// BOS, EOS and whether prompts start with BOS, as llama.cpp reads them: the `tokenizer.ggml.*` keys, else the
/// kind's defaults (SentencePiece: BOS 1, EOS 2, add BOS; byte-level: no default ids, add BOS only for the
/// Llama-3 pre-tokenizer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

/// Never fails on an unknown or missing `tokenizer.ggml.model` (that is [`vocab_kind`]'s error to give): only
/// SentencePiece has default ids.
pub fn gguf_special_tokens(g: &GgufFile) -> Result<SpecialTokens, ImportError> {
    let pre = g.get_str("tokenizer.ggml.pre")?;
    let (bos, eos, add_bos) = match g.get_str("tokenizer.ggml.model")? {
        Some("llama") => (Some(1), Some(2), true),
        _ => (
            None,
            None,
            matches!(pre, Some("llama-bpe" | "llama3" | "llama-v3" | "falcon3")),
        ),
    };
    Ok(SpecialTokens {
        bos: g.get_u32("tokenizer.ggml.bos_token_id")?.or(bos),
        eos: g.get_u32("tokenizer.ggml.eos_token_id")?.or(eos),
        add_bos: g.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos),
    })
}

/// A tokenizer read from a vocabulary alone: `tokenizer.json` bytes, the special tokens and the chat template.
#[derive(Clone, Debug)]
pub struct VocabTokenizer {
    pub json: Vec<u8>,
    pub special: SpecialTokens,
    pub chat_template: Option<String>,
}

/// The tokenizer of a GGUF file, from its metadata only (tensors are never read).
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<VocabTokenizer, ImportError> {
    Ok(VocabTokenizer {
        json: tokenizer_json_from_gguf(g)?,
        special: gguf_special_tokens(g)?,
        chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_string),
    })
}

/// Splits a GGUF merge "a b" the way llama.cpp does: at the first space after the first byte (so a merge whose
/// left part is itself a space-like symbol still splits correctly).
fn split_merge(m: &str) -> Option<(&str, &str)> {
    let pos = m.bytes().skip(1).position(|b| b == b' ')? + 1;
    let (a, b) = (m.get(..pos)?, m.get(pos + 1..)?);
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

/// SentencePiece merges as Hugging Face's `SentencePieceExtractor` derives them: for every piece, each split into
/// two pieces of the vocabulary (by character), ordered by the merged piece's score (highest first; ties in
/// vocabulary order), then by the ids of the left and right parts. Only normal and user-defined pieces take part
/// (control, unknown, unused and byte tokens are never the result or a part of a merge).
fn sentencepiece_merges<'a>(tokens: &[&'a str], scores: &[f64], mergeable: &[bool]) -> Vec<(&'a str, &'a str)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| mergeable.get(*i).copied().unwrap_or(false))
        .map(|(i, &t)| (t, i))
        .collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (id, &tok) in tokens.iter().enumerate() {
        if !mergeable.get(id).copied().unwrap_or(false) {
            continue;
        }
        for (pos, _) in tok.char_indices().skip(1) {
            let (Some(l), Some(r)) = (tok.get(..pos), tok.get(pos..)) else {
                continue;
            };
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, li, ri));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    merges
        .into_iter()
        .filter_map(|(_, _, l, r)| Some((*tokens.get(l)?, *tokens.get(r)?)))
        .collect()
}

/// Builds `tokenizer.json` bytes from the GGUF tokenizer metadata.
pub fn tokenizer_json_from_gguf(g: &GgufFile) -> Result<Vec<u8>, ImportError> {
    let err = |problem: String| ImportError::Tokenizer {
        path: g.path().to_path_buf(),
        problem,
    };
    let kind = vocab_kind(g)?;
    let byte_pre = match kind {
        VocabKind::SentencePiece => None,
        VocabKind::ByteLevelBpe => {
            // llama.cpp treats a missing pre-tokenizer as 'default'.
            let pre = g.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
            Some(byte_level_pre(pre).ok_or_else(|| ImportError::UnsupportedTokenizer {
                path: g.path().to_path_buf(),
                key: "tokenizer.ggml.pre",
                value: pre.into(),
                supported: SUPPORTED_PRE,
            })?)
        }
    };
    let tokens = g
        .get_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| ImportError::MissingKey {
            path: g.path().to_path_buf(),
            key: "tokenizer.ggml.tokens".into(),
        })?;
    if tokens.is_empty() {
        return Err(err("the vocabulary is empty".into()));
    }
    let types = g.get_int_array("tokenizer.ggml.token_type")?;
    if let Some(t) = &types {
        if t.len() != tokens.len() {
            return Err(err(format!("{} token types for {} tokens", t.len(), tokens.len())));
        }
    }
    let type_of = |id: usize| {
        types
            .as_ref()
            .and_then(|t| t.get(id))
            .copied()
            .unwrap_or(token_type::NORMAL)
    };

    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    let mut unk_token: Option<&str> = None;
    for (id, &tok) in tokens.iter().enumerate() {
        if let Some(prev) = ids.insert(tok, id) {
            return Err(err(format!("token {tok:?} appears twice (ids {prev} and {id})")));
        }
        vocab.insert(tok.to_string(), json!(id));
        let ty = type_of(id);
        match ty {
            // Control tokens (<s>, <|im_start|>, …), the unknown token and user-defined ones are matched whole in
            // the input, before the pre-tokenizer, as Hugging Face's added tokens are (and as llama.cpp does when
            // it parses special tokens); all but the user-defined ones are "special" (skipped when decoding with
            // skip_special_tokens).
            token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN => {
                if ty == token_type::UNKNOWN && unk_token.is_none() {
                    unk_token = Some(tok);
                }
                added.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": ty != token_type::USER_DEFINED,
                }))
            }
            token_type::NORMAL | token_type::UNUSED | token_type::BYTE => {}
            other => return Err(err(format!("token {id} has unknown token type {other}"))),
        }
    }

    let doc = match byte_pre {
        None => {
            let scores = g
                .get_f64_array("tokenizer.ggml.scores")?
                .ok_or_else(|| ImportError::MissingKey {
                    path: g.path().to_path_buf(),
                    key: "tokenizer.ggml.scores".into(),
                })?;
            if scores.len() != tokens.len() {
                return Err(err(format!("{} scores for {} tokens", scores.len(), tokens.len())));
            }
            // Byte fallback needs all 256 byte tokens; llama.cpp requires them too.
            for b in 0..=255u8 {
                let name = format!("<0x{b:02X}>");
                match ids.get(name.as_str()) {
                    Some(&id) if type_of(id) == token_type::BYTE => {}
                    _ => return Err(err(format!("the byte token {name} is missing"))),
                }
            }
            if unk_token.is_none() {
                // llama.cpp's default unknown token for SentencePiece is id 0.
                let unk_id = g.get_u32("tokenizer.ggml.unknown_token_id")?.unwrap_or(0);
                unk_token = tokens.get(unk_id as usize).copied();
            }
            let mergeable: Vec<bool> = (0..tokens.len())
                .map(|id| matches!(type_of(id), token_type::NORMAL | token_type::USER_DEFINED))
                .collect();
            let merges: Vec<Value> = sentencepiece_merges(&tokens, &scores, &mergeable)
                .into_iter()
                .map(|(a, b)| json!([a, b]))
                .collect();
            let add_space_prefix = g.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let mut normalizers = Vec::new();
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_space_prefix {
                normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
            json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": {"type": "Sequence", "normalizers": normalizers},
                "pre_tokenizer": null,
                "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {
                    "type": "BPE",
                    "dropout": null,
                    "unk_token": unk_token,
                    "continuing_subword_prefix": null,
                    "end_of_word_suffix": null,
                    "fuse_unk": true,
                    "byte_fallback": true,
                    "ignore_merges": false,
                    "vocab": vocab,
                    "merges": merges,
                },
            })
        }
        Some(pre) => {
            let merges = g.get_str_array("tokenizer.ggml.merges")?.unwrap_or_default();
            let mut merge_pairs = Vec::with_capacity(merges.len());
            for (i, &m) in merges.iter().enumerate() {
                let (a, b) =
                    split_merge(m).ok_or_else(|| err(format!("merge #{i} {m:?} is not two space-separated parts")))?;
                // tokenizers rejects merges whose parts or result are not in the vocabulary; say so here, by merge.
                for part in [a, b] {
                    if !ids.contains_key(part) {
                        return Err(err(format!("merge #{i} {m:?}: {part:?} is not in the vocabulary")));
                    }
                }
                if !ids.contains_key(format!("{a}{b}").as_str()) {
                    return Err(err(format!(
                        "merge #{i} {m:?}: the merged token is not in the vocabulary"
                    )));
                }
                merge_pairs.push(json!([a, b]));
            }
            json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": (pre.normalizer)(),
                "pre_tokenizer": (pre.pre_tokenizer)(),
                "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {
                    "type": "BPE",
                    "dropout": null,
                    "unk_token": null,
                    "continuing_subword_prefix": null,
                    "end_of_word_suffix": null,
                    "fuse_unk": false,
                    "byte_fallback": false,
                    "ignore_merges": pre.ignore_merges,
                    "vocab": vocab,
                    "merges": merge_pairs,
                },
            })
        }
    };
    serde_json::to_vec(&doc).map_err(|e| err(format!("serialising tokenizer.json: {e}")))
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Hugging Face's extractor order: by the merged piece's score (highest first), then by the parts' ids; byte
    /// and control tokens take no part; splits are by character, not byte.
    #[test]
    fn sentencepiece_merges_follow_scores() {
        let tokens = ["<s>", "<0x41>", "a", "b", "é", "ab", "bé", "abé", "ab<s>"];
        let scores = [0.0, 0.0, -1.0, -2.0, -3.0, -5.0, -4.0, -6.0, -0.5];
        let mergeable = [false, false, true, true, true, true, true, true, true];
        assert_eq!(
            sentencepiece_merges(&tokens, &scores, &mergeable),
            vec![("b", "é"), ("a", "b"), ("a", "bé"), ("ab", "é")]
        );
    }

    #[test]
    fn merges_split_at_first_space_after_first_byte() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
        assert_eq!(split_merge("a b c"), Some(("a", "b c")));
        assert_eq!(split_merge("  x"), Some((" ", "x")));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge("a "), None);
        assert_eq!(split_merge(""), None);
    }
}
