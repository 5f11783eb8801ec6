//! Hugging Face model directory → [`SourceModel`]: `config.json`, `tokenizer.json` (kept verbatim),
//! `tokenizer_config.json` / `chat_template.jinja` (chat template), and one or many `*.safetensors` shards
//! (F32/F16/BF16) read through the `safetensors` crate over memory mappings.
//!
//! Tensor names are mapped to GGUF's, and the rows of `q_proj`/`k_proj` are permuted from Hugging Face's
//! rotate-half RoPE convention to GGUF's interleaved one (see [`permute_rotate_half_to_interleaved`]), so every
//! imported model has `RopeStyle::Interleaved`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use tern_format::{Architecture, ModelConfig, Role, RopeScaling, RopeStyle, NO_TOKEN};

use crate::error::ImportError;
use crate::import::source::{gguf_tensor_name, SourceModel, SourceTensor, META_SOURCE_FORMAT, META_SOURCE_PATH};
use crate::import::tokenizer::{SpecialTokens, VocabTokenizer};

/// `architectures` values this importer reads.
pub const SUPPORTED_HF_ARCHS: &str = "LlamaForCausalLM, BitNetForCausalLM";

/// Permutes the rows of a Q or K projection from Hugging Face's RoPE convention to GGUF's.
///
/// Hugging Face's `apply_rotary_pos_emb` rotates, within each head of `head_dim = d` rows, the pairs
/// `(x[j], x[j + d/2])` by angle `pos·θ_j` ("rotate half"). llama.cpp's GGUF converter (`permute` in
/// convert_hf_to_gguf.py) reorders each head's rows so that the same pairs become adjacent, `(x[2j], x[2j+1])`
/// ("interleaved"):
///
/// ```text
/// new row  h·d + 2j     = old row  h·d + j
/// new row  h·d + 2j + 1 = old row  h·d + j + d/2        for j in 0..d/2
/// ```
///
/// Because the permutation maps each rotated pair onto a rotated pair with the same frequency, interleaved RoPE on
/// the permuted projection yields the permuted rotate-half result, and q·k (which sums over all dimensions of a
/// head) is unchanged. `data` is row-major `[n_heads·head_dim, cols]`.
pub fn permute_rotate_half_to_interleaved(data: &[f32], n_heads: usize, cols: usize) -> Option<Vec<f32>> {
    let rows = data.len().checked_div(cols)?;
    if n_heads == 0 || rows % n_heads != 0 || rows * cols != data.len() {
        return None;
    }
    let head_dim = rows / n_heads;
    if head_dim % 2 != 0 {
        return None;
    }
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for (t, src_row) in [(0, h * head_dim + j), (1, h * head_dim + j + half)] {
                let dst_row = h * head_dim + 2 * j + t;
                out[dst_row * cols..(dst_row + 1) * cols].copy_from_slice(&data[src_row * cols..(src_row + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// The inverse of [`permute_rotate_half_to_interleaved`] (GGUF → Hugging Face order).
pub fn permute_interleaved_to_rotate_half(data: &[f32], n_heads: usize, cols: usize) -> Option<Vec<f32>> {
    let rows = data.len().checked_div(cols)?;
    if n_heads == 0 || rows % n_heads != 0 || rows * cols != data.len() || (rows / n_heads) % 2 != 0 {
        return None;
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for (t, dst_row) in [(0, h * head_dim + j), (1, h * head_dim + j + half)] {
                let src_row = h * head_dim + 2 * j + t;
                out[dst_row * cols..(dst_row + 1) * cols].copy_from_slice(&data[src_row * cols..(src_row + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// Role and layer of a Hugging Face Llama/BitNet tensor name; `Ok(None)` for buffers that carry no weights
/// (`rotary_emb.inv_freq`), `Err(())` for names that are not part of the architecture.
#[allow(clippy::result_unit_err)]
pub fn hf_tensor_role(name: &str) -> Result<Option<(Role, Option<u32>)>, ()> {
    match name {
        "model.embed_tokens.weight" => return Ok(Some((Role::TokenEmbedding, None))),
        "lm_head.weight" => return Ok(Some((Role::Output, None))),
        "model.norm.weight" => return Ok(Some((Role::OutputNorm, None))),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.").ok_or(())?;
    let (layer, suffix) = rest.split_once('.').ok_or(())?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || (layer.len() > 1 && layer.starts_with('0')) {
        return Err(());
    }
    let layer: u32 = layer.parse().map_err(|_| ())?;
    let role = match suffix {
        "input_layernorm.weight" => Role::AttnNorm,
        "self_attn.q_proj.weight" => Role::AttnQ,
        "self_attn.k_proj.weight" => Role::AttnK,
        "self_attn.v_proj.weight" => Role::AttnV,
        "self_attn.o_proj.weight" => Role::AttnOutput,
        "self_attn.attn_sub_norm.weight" => Role::AttnSubNorm,
        "post_attention_layernorm.weight" => Role::FfnNorm,
        "mlp.gate_proj.weight" => Role::FfnGate,
        "mlp.up_proj.weight" => Role::FfnUp,
        "mlp.down_proj.weight" => Role::FfnDown,
        "mlp.ffn_sub_norm.weight" => Role::FfnSubNorm,
        "self_attn.rotary_emb.inv_freq" => return Ok(None),
        _ => return Err(()),
    };
    Ok(Some((role, Some(layer))))
}

// ---------------------------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------------------------

/// Typed access to a JSON config object, with errors naming the file and key.
struct JsonConfig<'a> {
    path: &'a Path,
    obj: &'a serde_json::Map<String, Value>,
}

impl<'a> JsonConfig<'a> {
    fn bad(&self, key: &str, problem: String) -> ImportError {
        ImportError::BadKey {
            path: self.path.to_path_buf(),
            key: key.into(),
            problem,
        }
    }
    fn missing(&self, key: &str) -> ImportError {
        ImportError::MissingKey {
            path: self.path.to_path_buf(),
            key: key.into(),
        }
    }
    /// The value, treating JSON `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn u32_opt(&self, key: &str) -> Result<Option<u32>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let n = v
            .as_u64()
            .ok_or_else(|| self.bad(key, format!("expected a non-negative integer, found {v}")))?;
        u32::try_from(n)
            .map(Some)
            .map_err(|_| self.bad(key, format!("{n} does not fit in 32 bits")))
    }
    fn u32(&self, key: &str) -> Result<u32, ImportError> {
        self.u32_opt(key)?.ok_or_else(|| self.missing(key))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let f = v
            .as_f64()
            .ok_or_else(|| self.bad(key, format!("expected a number, found {v}")))?;
        if !f.is_finite() {
            return Err(self.bad(key, format!("{f} is not finite")));
        }
        Ok(Some(f))
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| self.bad(key, format!("expected true or false, found {v}")))
    }
    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_str()
            .map(Some)
            .ok_or_else(|| self.bad(key, format!("expected a string, found {v}")))
    }
    /// A token id given as an integer or a list of integers (Llama 3.x lists several EOS ids: the first is kept).
    fn token_opt(&self, key: &str) -> Result<Option<u32>, ImportError> {
        match self.get(key) {
            Some(Value::Array(items)) => match items.first() {
                None => Ok(None),
                Some(first) => first
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| self.bad(key, format!("expected token ids, found {first}"))),
            },
            _ => self.u32_opt(key),
        }
    }
}

fn read_json(path: &Path) -> Result<Value, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        context: "reading",
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ImportError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a Hugging Face `config.json` (already read as JSON). `add_bos` is decided by the caller.
pub fn config_from_hf_json(path: &Path, json: &Value, add_bos: bool) -> Result<(ModelConfig, bool), ImportError> {
    let obj = json.as_object().ok_or_else(|| ImportError::Corrupt {
        path: path.to_path_buf(),
        what: "config.json is not a JSON object".into(),
    })?;
    let c = JsonConfig { path, obj };
    let unsupported = |what: String| ImportError::Unsupported {
        path: path.to_path_buf(),
        what,
    };

    let arch_names: Vec<&str> = match c.get("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(other) => return Err(c.bad("architectures", format!("expected a list of names, found {other}"))),
        None => Vec::new(),
    };
    let model_type = c.str_opt("model_type")?;
    let arch = if arch_names.contains(&"LlamaForCausalLM") {
        Architecture::Llama
    } else if arch_names.contains(&"BitNetForCausalLM") {
        Architecture::BitNetB158
    } else if arch_names.is_empty() && model_type == Some("llama") {
        Architecture::Llama
    } else if arch_names.is_empty() && model_type == Some("bitnet") {
        Architecture::BitNetB158
    } else {
        let shown = if arch_names.is_empty() {
            model_type.unwrap_or("(none given)").to_string()
        } else {
            arch_names.join(", ")
        };
        return Err(ImportError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: shown,
            supported: SUPPORTED_HF_ARCHS,
        });
    };

    // The MLP nonlinearity is implied by the architecture; refuse checkpoints that say otherwise.
    let expected_act = match arch {
        Architecture::Llama => "silu",
        Architecture::BitNetB158 => "relu2",
    };
    if let Some(act) = c.str_opt("hidden_act")? {
        if act != expected_act {
            return Err(unsupported(format!(
                "hidden_act '{act}' ({} uses '{expected_act}')",
                arch.name()
            )));
        }
    }
    for key in ["attention_bias", "mlp_bias"] {
        if c.bool_opt(key)? == Some(true) {
            return Err(unsupported(format!(
                "{key} = true (biases are not part of the model description)"
            )));
        }
    }

    let hidden_size = c.u32("hidden_size")?;
    let n_heads = c.u32("num_attention_heads")?;
    let n_kv_heads = c.u32_opt("num_key_value_heads")?.unwrap_or(n_heads);
    let head_dim = match c.u32_opt("head_dim")? {
        Some(d) => d,
        None => {
            if n_heads == 0 || hidden_size % n_heads != 0 {
                return Err(c.bad(
                    "num_attention_heads",
                    format!("{n_heads} heads do not divide hidden_size {hidden_size} and head_dim is not given"),
                ));
            }
            hidden_size / n_heads
        }
    };
    let rope_scaling = match c.get("rope_scaling") {
        None => RopeScaling::None,
        Some(Value::Object(rs)) => {
            let rs = JsonConfig { path, obj: rs };
            // Older configs say "type", newer ones "rope_type".
            let kind = rs.str_opt("rope_type")?.or(rs.str_opt("type")?).unwrap_or("default");
            match kind {
                "default" => RopeScaling::None,
                "llama3" => {
                    let num = |k: &str| -> Result<f32, ImportError> {
                        rs.f64_opt(k)?
                            .map(|v| v as f32)
                            .ok_or_else(|| c.bad(&format!("rope_scaling.{k}"), "missing".into()))
                    };
                    RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_context: rs
                            .u32_opt("original_max_position_embeddings")?
                            .ok_or_else(|| c.bad("rope_scaling.original_max_position_embeddings", "missing".into()))?,
                    }
                }
                other => return Err(unsupported(format!("rope_scaling type '{other}'"))),
            }
        }
        Some(other) => return Err(c.bad("rope_scaling", format!("expected an object or null, found {other}"))),
    };
    let tied = c.bool_opt("tie_word_embeddings")?;
    let config = ModelConfig {
        arch,
        hidden_size,
        n_layers: c.u32("num_hidden_layers")?,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_size: c.u32("intermediate_size")?,
        vocab_size: c.u32("vocab_size")?,
        // transformers' LlamaConfig defaults.
        context_length: c.u32_opt("max_position_embeddings")?.unwrap_or(2048),
        rope_theta: c.f64_opt("rope_theta")?.unwrap_or(10_000.0) as f32,
        rope_scaling,
        rope_style: RopeStyle::Interleaved,
        norm_eps: c.f64_opt("rms_norm_eps")?.unwrap_or(1e-6) as f32,
        tied_embeddings: tied.unwrap_or(false),
        bos_token: c.token_opt("bos_token_id")?.unwrap_or(NO_TOKEN),
        eos_token: c.token_opt("eos_token_id")?.unwrap_or(NO_TOKEN),
        pad_token: c.token_opt("pad_token_id")?.unwrap_or(NO_TOKEN),
        add_bos,
    };
    Ok((config, tied.is_some()))
}

/// Whether a `tokenizer.json` post-processor inserts a special token before the text (Llama-style BOS).
fn post_processor_adds_bos(tokenizer: &Value) -> bool {
    fn walk(p: &Value) -> bool {
        match p.get("type").and_then(Value::as_str) {
            Some("TemplateProcessing") => p
                .get("single")
                .and_then(Value::as_array)
                .and_then(|s| s.first())
                .is_some_and(|first| first.get("SpecialToken").is_some()),
            Some("Sequence") => p
                .get("processors")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(walk)),
            _ => false,
        }
    }
    tokenizer.get("post_processor").is_some_and(walk)
}

/// `chat_template` from tokenizer_config.json: a string, or a list of `{name, template}` (the `default` one, else
/// the first).
fn chat_template_from(tokenizer_config: &Value) -> Option<String> {
    match tokenizer_config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let named = |n: &str| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(n))
                    .and_then(|i| i.get("template")?.as_str())
            };
            named("default")
                .or_else(|| items.first()?.get("template")?.as_str())
                .map(str::to_string)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------------------------

fn map_file(path: &Path) -> Result<memmap2::Mmap, ImportError> {
    let io = |context, source| ImportError::Io {
        path: path.to_path_buf(),
        context,
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| io("opening", e))?;
    // SAFETY: read-only private mapping; as with any mmap reader we assume the file is not modified while mapped.
    // Every access below is bounds-checked against the mapping's length.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("memory-mapping", e))
}

/// Checks a safetensors header's declared offsets against the file length before handing the bytes to the
/// `safetensors` crate, whose own checks add offsets without overflow protection.
fn precheck_safetensors(path: &Path, bytes: &[u8]) -> Result<(), ImportError> {
    let bad = |problem: String| ImportError::Safetensors {
        path: path.to_path_buf(),
        problem,
    };
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad(format!("file of {} bytes is too short for a header", bytes.len())))?;
    let header_len = u64::from_le_bytes(len_bytes);
    let data_len = (bytes.len() as u64 - 8).checked_sub(header_len).ok_or_else(|| {
        bad(format!(
            "header length {header_len} exceeds the file ({} bytes)",
            bytes.len()
        ))
    })?;
    let header = bytes
        .get(8..8 + header_len as usize)
        .ok_or_else(|| bad("header outside the file".into()))?;
    let json: Value = serde_json::from_slice(header).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("tensor '{name}' has no data_offsets")))?;
        for o in offsets {
            if o.as_u64().is_none_or(|o| o > data_len) {
                return Err(bad(format!(
                    "tensor '{name}': data offset {o} outside the {data_len}-byte data section"
                )));
            }
        }
    }
    Ok(())
}

/// Shard files: the ones `model.safetensors.index.json` lists, else every `*.safetensors` in the directory.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let index = dir.join("model.safetensors.index.json");
    let mut shards: Vec<PathBuf> = if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ImportError::MissingKey {
                path: index.clone(),
                key: "weight_map".into(),
            })?;
        let mut files = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| ImportError::BadKey {
                path: index.clone(),
                key: format!("weight_map.{tensor}"),
                problem: "expected a file name".into(),
            })?;
            // Shards live next to the index; refuse names that would escape the directory.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(ImportError::BadKey {
                    path: index.clone(),
                    key: format!("weight_map.{tensor}"),
                    problem: format!("shard name '{file}' is not a plain file name"),
                });
            }
            files.push(dir.join(file));
        }
        files
    } else {
        let entries = std::fs::read_dir(dir).map_err(|source| ImportError::Io {
            path: dir.to_path_buf(),
            context: "listing the directory",
            source,
        })?;
        let mut files = Vec::new();
        for e in entries {
            let e = e.map_err(|source| ImportError::Io {
                path: dir.to_path_buf(),
                context: "listing the directory",
                source,
            })?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "safetensors") && p.is_file() {
                files.push(p);
            }
        }
        files
    };
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(ImportError::Safetensors {
            path: dir.to_path_buf(),
            problem: "no *.safetensors files in the directory".into(),
        });
    }
    Ok(shards)
}

/// One tensor found in a shard, before conversion.
struct FoundTensor {
    shard: usize,
    hf_name: String,
    role: Role,
    layer: Option<u32>,
}

fn to_f32(path: &Path, name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>, ImportError> {
    use safetensors::Dtype;
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        // bf16 is the top half of an f32: widening is exact.
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        other => {
            return Err(ImportError::UnsupportedTensorType {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{other:?} (only F32, F16 and BF16 are read)"),
            })
        }
    })
}

/// What a Hugging Face directory says about its tokenizer: `tokenizer.json` (verbatim), whether prompts start
/// with BOS (`tokenizer_config.json`'s `add_bos_token`, else whether the post-processor inserts a token before
/// the text) and the chat template (`chat_template.jinja`, else `tokenizer_config.json`).
struct TokenizerFiles {
    tokenizer_json: Vec<u8>,
    add_bos: bool,
    chat_template: Option<String>,
}

fn read_tokenizer_files(dir: &Path) -> Result<TokenizerFiles, ImportError> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(ImportError::Tokenizer {
            path: tokenizer_path,
            problem: "tokenizer.json is missing".into(),
        });
    }
    let tokenizer_json = std::fs::read(&tokenizer_path).map_err(|source| ImportError::Io {
        path: tokenizer_path.clone(),
        context: "reading",
        source,
    })?;
    let tokenizer_value: Value = serde_json::from_slice(&tokenizer_json).map_err(|source| ImportError::Json {
        path: tokenizer_path.clone(),
        source,
    })?;

    let tok_config_path = dir.join("tokenizer_config.json");
    let tok_config = if tok_config_path.is_file() {
        Some(read_json(&tok_config_path)?)
    } else {
        None
    };
    let add_bos = match tok_config.as_ref().and_then(|t| t.get("add_bos_token")) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Null) | None => post_processor_adds_bos(&tokenizer_value),
        Some(other) => {
            return Err(ImportError::BadKey {
                path: tok_config_path,
                key: "add_bos_token".into(),
                problem: format!("expected true or false, found {other}"),
            })
        }
    };
    let jinja = dir.join("chat_template.jinja");
    let chat_template = if jinja.is_file() {
        Some(std::fs::read_to_string(&jinja).map_err(|source| ImportError::Io {
            path: jinja,
            context: "reading",
            source,
        })?)
    } else {
        tok_config.as_ref().and_then(chat_template_from)
    };

    Ok(TokenizerFiles {
        tokenizer_json,
        add_bos,
        chat_template,
    })
}

/// The tokenizer of a Hugging Face directory without reading its weights: `tokenizer.json` as it is, BOS/EOS from
/// `config.json` when there is one (`bos_token_id`, `eos_token_id`; the first of a list).
pub fn tokenizer_from_hf_dir(dir: &Path) -> Result<VocabTokenizer, ImportError> {
    let files = read_tokenizer_files(dir)?;
    let config_path = dir.join("config.json");
    let (bos, eos) = if config_path.is_file() {
        let json = read_json(&config_path)?;
        let obj = json.as_object().ok_or_else(|| ImportError::Corrupt {
            path: config_path.clone(),
            what: "config.json is not a JSON object".into(),
        })?;
        let c = JsonConfig {
            path: &config_path,
            obj,
        };
        (c.token_opt("bos_token_id")?, c.token_opt("eos_token_id")?)
    } else {
        (None, None)
    };
    Ok(VocabTokenizer {
        json: files.tokenizer_json,
        special: SpecialTokens {
            bos,
            eos,
            add_bos: files.add_bos,
        },
        chat_template: files.chat_template,
    })
}

/// Loads a Hugging Face model directory (not yet validated: [`crate::import::source::load`] does that).
pub fn load_hf_dir(dir: &Path) -> Result<SourceModel, ImportError> {
    let config_path = dir.join("config.json");
    let config_json = read_json(&config_path)?;

    let TokenizerFiles {
        tokenizer_json,
        add_bos,
        chat_template,
    } = read_tokenizer_files(dir)?;

    let (mut config, tied_given) = config_from_hf_json(&config_path, &config_json, add_bos)?;

    // Map every shard and collect the tensors it holds.
    let shard_files = shard_paths(dir)?;
    let maps = shard_files.iter().map(|p| map_file(p)).collect::<Result<Vec<_>, _>>()?;
    let mut parsed = Vec::with_capacity(maps.len());
    for (p, m) in shard_files.iter().zip(&maps) {
        precheck_safetensors(p, m)?;
        let st = safetensors::SafeTensors::deserialize(m).map_err(|e| ImportError::Safetensors {
            path: p.clone(),
            problem: e.to_string(),
        })?;
        parsed.push(st);
    }
    let mut found: Vec<FoundTensor> = Vec::new();
    let mut has_lm_head = false;
    for (shard, st) in parsed.iter().enumerate() {
        for name in st.names() {
            match hf_tensor_role(name) {
                Ok(Some((role, layer))) => {
                    has_lm_head |= role == Role::Output;
                    if found.iter().any(|f| f.hf_name == *name) {
                        return Err(ImportError::DuplicateTensor {
                            path: shard_files[shard].clone(),
                            tensor: name.clone(),
                        });
                    }
                    found.push(FoundTensor {
                        shard,
                        hf_name: name.clone(),
                        role,
                        layer,
                    });
                }
                Ok(None) => {}
                Err(()) => {
                    return Err(ImportError::UnexpectedTensor {
                        path: shard_files[shard].clone(),
                        tensor: name.clone(),
                        why: format!("not a tensor of {}", config.arch.name()),
                    })
                }
            }
        }
    }
    // When config.json does not say, the embeddings are tied exactly when there is no separate head.
    if !tied_given {
        config.tied_embeddings = !has_lm_head;
    }
    let mut dropped = Vec::new();
    if config.tied_embeddings && has_lm_head {
        // Some tied checkpoints also store lm_head (a copy of the embedding): the model ignores it, so do we.
        found.retain(|f| f.role != Role::Output);
        dropped.push("lm_head.weight");
    }
    // Deterministic order: embedding, blocks (roles in on-disk code order), final norm, head.
    found.sort_by_key(|f| {
        let rank = match f.role {
            Role::TokenEmbedding => 0,
            Role::OutputNorm => 2,
            Role::Output => 3,
            _ => 1,
        };
        (rank, f.layer, f.role as u32)
    });

    let n_heads = config.n_heads as usize;
    let n_kv_heads = config.n_kv_heads as usize;
    let tensors = found
        .par_iter()
        .map(|f| {
            let path = &shard_files[f.shard];
            let st = &parsed[f.shard];
            let view = st.tensor(&f.hf_name).map_err(|e| ImportError::Safetensors {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            let shape = view.shape().to_vec();
            let mut data = to_f32(path, &f.hf_name, &view)?;
            let heads = match f.role {
                Role::AttnQ => Some(n_heads),
                Role::AttnK => Some(n_kv_heads),
                _ => None,
            };
            if let Some(heads) = heads {
                let cols = shape.last().copied().unwrap_or(0);
                data = permute_rotate_half_to_interleaved(&data, heads, cols).ok_or_else(|| {
                    ImportError::ShapeMismatch {
                        path: path.clone(),
                        tensor: f.hf_name.clone(),
                        expected: vec![heads * config.head_dim as usize, config.hidden_size as usize],
                        actual: shape.clone(),
                    }
                })?;
            }
            Ok(SourceTensor {
                name: gguf_tensor_name(f.role, f.layer),
                role: f.role,
                layer: f.layer,
                shape,
                data,
            })
        })
        .collect::<Result<Vec<_>, ImportError>>()?;

    let mut metadata = vec![
        (META_SOURCE_PATH.to_string(), dir.display().to_string()),
        (META_SOURCE_FORMAT.to_string(), "safetensors".to_string()),
        ("source.shards".to_string(), shard_files.len().to_string()),
    ];
    let obj = config_json.as_object();
    for key in ["_name_or_path", "model_type", "torch_dtype", "transformers_version"] {
        if let Some(v) = obj.and_then(|o| o.get(key)).and_then(Value::as_str) {
            metadata.push((format!("hf.{key}"), v.to_string()));
        }
    }
    if let Some(Value::Array(eos)) = obj.and_then(|o| o.get("eos_token_id")) {
        let ids: Vec<String> = eos.iter().map(|v| v.to_string()).collect();
        metadata.push(("hf.eos_token_ids".to_string(), ids.join(",")));
    }
    if !dropped.is_empty() {
        metadata.push(("source.ignored_tensors".to_string(), dropped.join(",")));
    }

    Ok(SourceModel {
        config,
        tokenizer_json,
        chat_template,
        metadata,
        tensors,
    })
}
