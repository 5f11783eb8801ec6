//! Synthesizes a Hugging Face `tokenizer.json` from a GGUF file's `tokenizer.ggml.*` metadata, so that every
//! imported model carries a tokenizer the `tokenizers` crate can load.
//!
//! Supported: byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizers `smollm`, `gpt-2` and
//! `llama-bpe`. The result never inserts BOS/EOS itself (no template post-processor): whether to prepend BOS is
//! `ModelConfig::add_bos`, so callers encode with `add_special_tokens = false` and prepend BOS when it says so.

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

/// The Llama-3 pre-tokenizer regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`; Meta's tokenizer.json `Split`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// Hugging Face pre-tokenizer equivalent to llama.cpp's pre-tokenizer type `pre`.
pub fn pre_tokenizer_for(pre: &str) -> Option<Value> {
    Some(match pre {
        // SmolLM/SmolLM2: digits split one by one, then GPT-2's byte-level regex.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "gpt-2" | "gpt2" => byte_level(true),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
        _ => return None,
    })
}

/// Splits a GGUF merge "a b" the way llama.cpp does: at the first space after the first byte (so a merge whose
/// left part is itself a space-like symbol still splits correctly).
fn split_merge(m: &str) -> Option<(&str, &str)> {
    let pos = m.bytes().skip(1).position(|b| b == b' ')? + 1;
    let (a, b) = (m.get(..pos)?, m.get(pos + 1..)?);
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

/// Builds `tokenizer.json` bytes from the GGUF tokenizer metadata.
pub fn tokenizer_json_from_gguf(g: &GgufFile) -> Result<Vec<u8>, ImportError> {
    let err = |problem: String| ImportError::Tokenizer {
        path: g.path().to_path_buf(),
        problem,
    };
    let model = g.require_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model '{model}' is not supported (only byte-level BPE, 'gpt2')"
        )));
    }
    let pre = g.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre_tokenizer = pre_tokenizer_for(pre).ok_or_else(|| {
        err(format!(
            "pre-tokenizer '{pre}' is not supported (supported: smollm, gpt-2, llama-bpe)"
        ))
    })?;
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
    let merges = g.get_str_array("tokenizer.ggml.merges")?.unwrap_or_default();

    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, &tok) in tokens.iter().enumerate() {
        if let Some(prev) = ids.insert(tok, id) {
            return Err(err(format!("token {tok:?} appears twice (ids {prev} and {id})")));
        }
        vocab.insert(tok.to_string(), json!(id));
        let ty = types
            .as_ref()
            .and_then(|t| t.get(id))
            .copied()
            .unwrap_or(token_type::NORMAL);
        match ty {
            // Control tokens (<|im_start|>, …) and user-defined ones are matched whole in the input, before the
            // pre-tokenizer, as Hugging Face's added tokens are; only control tokens are "special" (skipped when
            // decoding with skip_special_tokens).
            token_type::CONTROL | token_type::USER_DEFINED => added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == token_type::CONTROL,
            })),
            token_type::NORMAL | token_type::UNKNOWN | token_type::UNUSED | token_type::BYTE => {}
            other => return Err(err(format!("token {id} has unknown token type {other}"))),
        }
    }

    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, &m) in merges.iter().enumerate() {
        let (a, b) = split_merge(m).ok_or_else(|| err(format!("merge #{i} {m:?} is not two space-separated parts")))?;
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

    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
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
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merge_pairs,
        },
    });
    serde_json::to_vec(&doc).map_err(|e| err(format!("serialising tokenizer.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
