//! GGUF file → [`SourceModel`]: hyper-parameters from the `{arch}.*` keys, tensors dequantized to f32 (already in
//! GGUF's interleaved RoPE row order), tokenizer synthesized as `tokenizer.json`.

use rayon::prelude::*;
use tern_format::{Architecture, ModelConfig, RopeScaling, RopeStyle, NO_TOKEN};

use crate::error::ImportError;
use crate::import::gguf_file::{GgufFile, MetaValue};
use crate::import::source::{parse_gguf_tensor_name, SourceModel, SourceTensor, META_SOURCE_FORMAT, META_SOURCE_PATH};
use crate::import::tokenizer::{gguf_special_tokens, tokenizer_json_from_gguf};

/// Architectures (`general.architecture`) this importer reads from GGUF.
pub const SUPPORTED_GGUF_ARCHS: &str = "llama";

/// RoPE base when `{arch}.rope.freq_base` is absent (llama.cpp's default).
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// Reads the model hyper-parameters from GGUF metadata. `vocab_size` comes from the token-embedding rows (the
/// tensor the vocabulary indexes), cross-checked against the tokenizer and `{arch}.vocab_size`.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, ImportError> {
    let path = || g.path().to_path_buf();
    let arch_name = g.require_str("general.architecture")?;
    let arch = match arch_name {
        "llama" => Architecture::Llama,
        other => {
            return Err(ImportError::UnsupportedArchitecture {
                path: path(),
                arch: other.into(),
                supported: SUPPORTED_GGUF_ARCHS,
            })
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let bad = |k: String, problem: String| ImportError::BadKey {
        path: path(),
        key: k,
        problem,
    };
    let unsupported = |what: String| ImportError::Unsupported { path: path(), what };

    let hidden_size = g.require_u32(&key("embedding_length"))?;
    let n_layers = g.require_u32(&key("block_count"))?;
    let n_heads = g.require_u32(&key("attention.head_count"))?;
    let n_kv_heads = g.get_u32(&key("attention.head_count_kv"))?.unwrap_or(n_heads);
    let head_dim = match g.get_u32(&key("attention.key_length"))? {
        Some(d) => d,
        None => {
            if n_heads == 0 || hidden_size % n_heads != 0 {
                return Err(bad(
                    key("attention.head_count"),
                    format!("{n_heads} heads do not divide the hidden size {hidden_size}"),
                ));
            }
            hidden_size / n_heads
        }
    };
    if let Some(v) = g.get_u32(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(unsupported(format!(
                "value head size {v} differs from key head size {head_dim}"
            )));
        }
    }
    if let Some(r) = g.get_u32(&key("rope.dimension_count"))? {
        if r != head_dim {
            return Err(unsupported(format!(
                "partial rotary embedding ({r} of {head_dim} head dimensions)"
            )));
        }
    }
    if let Some(kind) = g.get_str(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(unsupported(format!("RoPE scaling type '{kind}'")));
        }
    }
    if g.tensor_info("rope_freqs.weight").is_some() {
        return Err(unsupported(
            "per-dimension RoPE frequency factors (rope_freqs.weight, Llama-3.1 scaling in GGUF form)".into(),
        ));
    }
    let ffn_size = g.require_u32(&key("feed_forward_length"))?;
    let context_length = g.require_u32(&key("context_length"))?;
    let rope_theta = g.get_f64(&key("rope.freq_base"))?.unwrap_or(DEFAULT_ROPE_THETA) as f32;
    let norm_eps = g.require_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;

    let embd = g
        .tensor_info("token_embd.weight")
        .ok_or_else(|| ImportError::MissingTensor {
            path: path(),
            tensor: "token_embd.weight".into(),
        })?;
    let vocab_size = u32::try_from(embd.rows()).map_err(|_| ImportError::BadTensor {
        path: path(),
        tensor: embd.name.clone(),
        problem: format!("{} rows is not a plausible vocabulary", embd.rows()),
    })?;
    if let Some(v) = g.get_u32(&key("vocab_size"))? {
        if v != vocab_size {
            return Err(bad(
                key("vocab_size"),
                format!("{v}, but token_embd.weight has {vocab_size} rows"),
            ));
        }
    }
    if let Some(tokens) = g.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
        if tokens.len() as u64 > u64::from(vocab_size) {
            return Err(bad(
                "tokenizer.ggml.tokens".into(),
                format!(
                    "{} tokens, but token_embd.weight has only {vocab_size} rows",
                    tokens.len()
                ),
            ));
        }
    }
    let token = |k: &str| -> Result<u32, ImportError> { Ok(g.get_u32(k)?.unwrap_or(NO_TOKEN)) };
    // BOS/EOS and whether to add BOS, with llama.cpp's defaults for the vocabulary kind.
    let special = gguf_special_tokens(g)?;

    Ok(ModelConfig {
        arch,
        hidden_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_size,
        vocab_size,
        context_length,
        rope_theta,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Interleaved,
        norm_eps,
        tied_embeddings: g.tensor_info("output.weight").is_none(),
        bos_token: special.bos.unwrap_or(NO_TOKEN),
        eos_token: special.eos.unwrap_or(NO_TOKEN),
        pad_token: token("tokenizer.ggml.padding_token_id")?,
        add_bos: special.add_bos,
    })
}

/// Converts a parsed GGUF file into a [`SourceModel`] (not yet validated: [`crate::import::source::load`] does that).
pub fn source_model_from_gguf(g: &GgufFile) -> Result<SourceModel, ImportError> {
    let mut model = source_header_from_gguf(g)?;
    let tensors = model
        .tensors
        .par_iter()
        .map(|t| read_gguf_tensor(g, t))
        .collect::<Result<Vec<_>, ImportError>>()?;
    model.tensors = tensors;
    Ok(model)
}

/// Tensor `t` of the header [`source_header_from_gguf`] made, with its data dequantized to f32; its pages of
/// the mapping are released afterwards ([`GgufFile::release`]).
pub fn read_gguf_tensor(g: &GgufFile, t: &SourceTensor) -> Result<SourceTensor, ImportError> {
    let info = g.tensor_info(&t.name).ok_or_else(|| ImportError::MissingTensor {
        path: g.path().to_path_buf(),
        tensor: t.name.clone(),
    })?;
    let data = g.dequantize(info)?;
    g.release(info);
    Ok(SourceTensor { data, ..t.clone() })
}

/// Everything [`source_model_from_gguf`] reads except the tensor values: each tensor's `data` is empty (what a
/// reader going through the model tensor by tensor needs first; [`read_gguf_tensor`] fills one in).
pub fn source_header_from_gguf(g: &GgufFile) -> Result<SourceModel, ImportError> {
    let config = config_from_gguf(g)?;
    let tokenizer_json = tokenizer_json_from_gguf(g)?;
    let chat_template = g.get_str("tokenizer.chat_template")?.map(str::to_string);

    let mut tensors = Vec::with_capacity(g.tensors().len());
    for info in g.tensors() {
        let (role, layer) = parse_gguf_tensor_name(&info.name).ok_or_else(|| ImportError::UnexpectedTensor {
            path: g.path().to_path_buf(),
            tensor: info.name.clone(),
            why: "not a tensor of a Llama-family model".into(),
        })?;
        tensors.push(SourceTensor {
            name: info.name.clone(),
            role,
            layer,
            shape: info.shape(),
            data: Vec::new(),
        });
    }

    let mut metadata = vec![
        (META_SOURCE_PATH.to_string(), g.path().display().to_string()),
        (META_SOURCE_FORMAT.to_string(), "gguf".to_string()),
        ("gguf.version".to_string(), g.version().to_string()),
    ];
    for (k, v) in g.metadata() {
        let keep = k.starts_with("general.") || k == "tokenizer.ggml.model" || k == "tokenizer.ggml.pre";
        if keep && !matches!(v, MetaValue::Array(..)) {
            metadata.push((k.clone(), v.display_short()));
        }
    }
    let mut type_counts: Vec<(&str, usize)> = Vec::new();
    for t in g.tensors() {
        match type_counts.iter_mut().find(|(n, _)| *n == t.ggml_type.name()) {
            Some((_, c)) => *c += 1,
            None => type_counts.push((t.ggml_type.name(), 1)),
        }
    }
    let summary: Vec<String> = type_counts.iter().map(|(n, c)| format!("{n}:{c}")).collect();
    metadata.push(("source.tensor_types".to_string(), summary.join(",")));

    Ok(SourceModel {
        config,
        tokenizer_json,
        chat_template,
        metadata,
        tensors,
    })
}
