//! The in-memory model description that both readers produce and the rest of the quantizer consumes.
//!
//! Conventions, whatever the source format:
//! - tensor names are GGUF's (`token_embd.weight`, `blk.N.attn_q.weight`, `output_norm.weight`, …);
//! - shapes are row-major, outermost first: a matrix is `[rows (outputs), cols (inputs)]` with columns contiguous,
//!   a norm vector is `[n]`;
//! - Q/K rows are in GGUF's interleaved RoPE order (`config.rope_style == RopeStyle::Interleaved`): the Hugging
//!   Face reader permutes them (see [`crate::import::hf::permute_rotate_half_to_interleaved`]);
//! - values are f32 (dequantized or widened exactly from the stored type).

use std::path::{Path, PathBuf};

use tern_format::{Architecture, ModelConfig, Role};

use crate::error::ImportError;

/// Metadata key holding the path the model was loaded from.
pub const META_SOURCE_PATH: &str = "source.path";
/// Metadata key holding the source format (`gguf` or `safetensors`).
pub const META_SOURCE_FORMAT: &str = "source.format";

/// A full-precision model read from a GGUF file or a Hugging Face directory.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceModel {
    pub config: ModelConfig,
    /// A Hugging Face `tokenizer.json` (verbatim from a Hugging Face directory; synthesized for GGUF input).
    /// Encode with `add_special_tokens = false` and prepend BOS exactly when `config.add_bos` says so: a
    /// verbatim Llama-3 tokenizer.json may carry a BOS template of its own, the synthesized one never does.
    pub tokenizer_json: Vec<u8>,
    pub chat_template: Option<String>,
    /// Provenance and descriptive keys: `source.path`, `source.format`, `general.name`, …
    pub metadata: Vec<(String, String)>,
    pub tensors: Vec<SourceTensor>,
}

/// One tensor, as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceTensor {
    /// GGUF name: `token_embd.weight`, `blk.N.attn_q.weight`, `output_norm.weight`, …
    pub name: String,
    pub role: Role,
    pub layer: Option<u32>,
    /// `[rows (out), cols (in)]` for matrices, `[n]` for vectors; the last dimension is contiguous.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl SourceTensor {
    /// Number of rows (product of all but the last dimension; 1 for a vector).
    pub fn rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }
    /// Length of a row (the last dimension).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(0)
    }
    /// Row `r`, or `None` past the end.
    pub fn row(&self, r: usize) -> Option<&[f32]> {
        let cols = self.cols();
        self.data
            .get(r.checked_mul(cols)?..r.checked_add(1)?.checked_mul(cols)?)
    }
}

/// The GGUF name of the tensor with `role` in `layer` (`blk.{layer}.{role}.weight` for per-block roles).
pub fn gguf_tensor_name(role: Role, layer: Option<u32>) -> String {
    match layer {
        Some(l) => format!("blk.{l}.{}.weight", role.gguf_name()),
        None => format!("{}.weight", role.gguf_name()),
    }
}

/// Role and layer of a GGUF tensor name, or `None` when the name is not one of the roles `tern_format` knows.
pub fn parse_gguf_tensor_name(name: &str) -> Option<(Role, Option<u32>)> {
    let stem = name.strip_suffix(".weight")?;
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (layer, suffix) = rest.split_once('.')?;
        // Reject "+1", "01" and the like: only canonical decimal layer numbers map back to the same name.
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || (layer.len() > 1 && layer.starts_with('0'))
        {
            return None;
        }
        let layer: u32 = layer.parse().ok()?;
        let role = Role::PER_LAYER.into_iter().find(|r| r.gguf_name() == suffix)?;
        return Some((role, Some(layer)));
    }
    Role::GLOBAL
        .into_iter()
        .find(|r| r.gguf_name() == stem)
        .map(|r| (r, None))
}

/// Shape the config implies for a tensor of `role`, or `None` for roles the architecture does not have.
pub fn expected_shape(config: &ModelConfig, role: Role) -> Option<Vec<usize>> {
    let hidden = config.hidden_size as usize;
    let ffn = config.ffn_size as usize;
    let vocab = config.vocab_size as usize;
    let bitnet = config.arch == Architecture::BitNetB158;
    Some(match role {
        Role::TokenEmbedding | Role::Output => vec![vocab, hidden],
        Role::OutputNorm | Role::AttnNorm | Role::FfnNorm => vec![hidden],
        Role::AttnQ => vec![config.q_dim(), hidden],
        Role::AttnK | Role::AttnV => vec![config.kv_dim(), hidden],
        Role::AttnOutput => vec![hidden, config.q_dim()],
        Role::FfnGate | Role::FfnUp => vec![ffn, hidden],
        Role::FfnDown => vec![hidden, ffn],
        // BitNet's sub-norms normalise the inputs of the attention output and down projections.
        Role::AttnSubNorm if bitnet => vec![config.q_dim()],
        Role::FfnSubNorm if bitnet => vec![ffn],
        Role::AttnSubNorm | Role::FfnSubNorm | Role::Other => return None,
    })
}

/// Roles every block of the architecture must have.
pub fn per_layer_roles(arch: Architecture) -> &'static [Role] {
    const LLAMA: &[Role] = &[
        Role::AttnNorm,
        Role::AttnQ,
        Role::AttnK,
        Role::AttnV,
        Role::AttnOutput,
        Role::FfnNorm,
        Role::FfnGate,
        Role::FfnUp,
        Role::FfnDown,
    ];
    const BITNET: &[Role] = &[
        Role::AttnNorm,
        Role::AttnQ,
        Role::AttnK,
        Role::AttnV,
        Role::AttnSubNorm,
        Role::AttnOutput,
        Role::FfnNorm,
        Role::FfnGate,
        Role::FfnUp,
        Role::FfnSubNorm,
        Role::FfnDown,
    ];
    match arch {
        Architecture::Llama => LLAMA,
        Architecture::BitNetB158 => BITNET,
    }
}

impl SourceModel {
    /// The tensor with `role` in `layer` (`None` for global tensors).
    pub fn tensor(&self, role: Role, layer: Option<u32>) -> Option<&SourceTensor> {
        self.tensors.iter().find(|t| t.role == role && t.layer == layer)
    }
    pub fn tensor_by_name(&self, name: &str) -> Option<&SourceTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// The output head: `output.weight`, or the token embedding when the embeddings are tied.
    pub fn output_head(&self) -> Option<&SourceTensor> {
        if self.config.tied_embeddings {
            self.tensor(Role::TokenEmbedding, None)
        } else {
            self.tensor(Role::Output, None)
        }
    }
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// Where the model came from (for error messages).
    pub fn source_path(&self) -> PathBuf {
        PathBuf::from(self.metadata_value(META_SOURCE_PATH).unwrap_or("(in-memory model)"))
    }
    /// Total number of weights.
    pub fn n_params(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }

    /// Checks that the config is consistent, every tensor the architecture needs exists exactly once with the
    /// shape the config implies and a matching amount of data, and no other tensor is present.
    pub fn validate(&self) -> Result<(), ImportError> {
        self.validate_layout()?;
        self.tensors.iter().try_for_each(|t| self.check_data(t))
    }

    /// That tensor `t` holds as many values as its shape says.
    pub fn check_data(&self, t: &SourceTensor) -> Result<(), ImportError> {
        let elements = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elements != Some(t.data.len()) {
            return Err(ImportError::BadTensor {
                path: self.source_path(),
                tensor: t.name.clone(),
                problem: format!("{} values for shape {:?}", t.data.len(), t.shape),
            });
        }
        Ok(())
    }

    /// [`SourceModel::validate`] without looking at tensor values: for a header whose tensors are read later.
    pub fn validate_layout(&self) -> Result<(), ImportError> {
        let path = self.source_path();
        self.config.validate().map_err(|source| ImportError::InvalidConfig {
            path: path.clone(),
            source,
        })?;
        let mut seen = std::collections::HashSet::new();
        for t in &self.tensors {
            let expected_name = gguf_tensor_name(t.role, t.layer);
            let unexpected = |why: String| ImportError::UnexpectedTensor {
                path: path.clone(),
                tensor: t.name.clone(),
                why,
            };
            if t.name != expected_name {
                return Err(unexpected(format!(
                    "role {:?} in layer {:?} is named {expected_name}",
                    t.role, t.layer
                )));
            }
            if !seen.insert((t.role, t.layer)) {
                return Err(ImportError::DuplicateTensor {
                    path: path.clone(),
                    tensor: t.name.clone(),
                });
            }
            if t.role.is_per_layer() != t.layer.is_some() {
                return Err(unexpected(
                    "layer index present exactly when the role is per-block".into(),
                ));
            }
            if let Some(l) = t.layer {
                if l >= self.config.n_layers {
                    return Err(unexpected(format!(
                        "layer {l} but the model has {} layers",
                        self.config.n_layers
                    )));
                }
            }
            if t.role == Role::Output && self.config.tied_embeddings {
                return Err(unexpected(
                    "the embeddings are tied, so there is no separate output head".into(),
                ));
            }
            let expected = expected_shape(&self.config, t.role)
                .ok_or_else(|| unexpected(format!("{} has no {:?} tensor", self.config.arch.name(), t.role)))?;
            if t.shape != expected {
                return Err(ImportError::ShapeMismatch {
                    path: path.clone(),
                    tensor: t.name.clone(),
                    expected,
                    actual: t.shape.clone(),
                });
            }
        }
        let mut required: Vec<(Role, Option<u32>)> = vec![(Role::TokenEmbedding, None), (Role::OutputNorm, None)];
        if !self.config.tied_embeddings {
            required.push((Role::Output, None));
        }
        for l in 0..self.config.n_layers {
            required.extend(per_layer_roles(self.config.arch).iter().map(|&r| (r, Some(l))));
        }
        for (role, layer) in required {
            if !seen.contains(&(role, layer)) {
                return Err(ImportError::MissingTensor {
                    path: path.clone(),
                    tensor: gguf_tensor_name(role, layer),
                });
            }
        }
        Ok(())
    }
}

/// Loads a model: a `.gguf` file, or a Hugging Face directory containing `config.json` (and `tokenizer.json` and
/// `*.safetensors`). The result is validated.
pub fn load(path: impl AsRef<Path>) -> Result<SourceModel, ImportError> {
    let model = match open_input(path.as_ref())? {
        Input::HfDir(dir) => crate::import::hf::load_hf_dir(&dir)?,
        Input::Gguf(gguf) => crate::import::gguf::source_model_from_gguf(&gguf)?,
    };
    model.validate()?;
    Ok(model)
}

/// A model opened to be read one tensor at a time ([`StreamingSource::tensor`]): its validated description
/// (a [`SourceModel`] whose tensors have empty `data`) and where the values come from. Peak memory is then a
/// few tensors in f32, not the whole model: GGUF tensors are dequantized from the mapping on request and their
/// pages released. Hugging Face directories are read whole at open (their dtype conversion and RoPE
/// permutation run in the loader), so for them only the callers' side streams.
pub struct StreamingSource {
    header: SourceModel,
    values: Values,
}

enum Values {
    Gguf(crate::import::gguf_file::GgufFile),
    Loaded(SourceModel),
}

impl StreamingSource {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ImportError> {
        let (header, values) = match open_input(path.as_ref())? {
            Input::HfDir(dir) => {
                let model = crate::import::hf::load_hf_dir(&dir)?;
                model.validate()?;
                let header = SourceModel {
                    tensors: model.tensors.iter().map(SourceTensor::clone_header).collect(),
                    ..model.clone_header()
                };
                (header, Values::Loaded(model))
            }
            Input::Gguf(gguf) => {
                let header = crate::import::gguf::source_header_from_gguf(&gguf)?;
                header.validate_layout()?;
                (header, Values::Gguf(gguf))
            }
        };
        Ok(StreamingSource { header, values })
    }

    /// The model's description; its tensors' `data` are empty.
    pub fn header(&self) -> &SourceModel {
        &self.header
    }

    /// Header tensor `t` with its values (checked against its shape).
    pub fn tensor(&self, t: &SourceTensor) -> Result<std::borrow::Cow<'_, SourceTensor>, ImportError> {
        let full = match &self.values {
            Values::Gguf(g) => std::borrow::Cow::Owned(crate::import::gguf::read_gguf_tensor(g, t)?),
            Values::Loaded(m) => {
                std::borrow::Cow::Borrowed(m.tensor_by_name(&t.name).ok_or_else(|| ImportError::MissingTensor {
                    path: m.source_path(),
                    tensor: t.name.clone(),
                })?)
            }
        };
        self.header.check_data(&full)?;
        Ok(full)
    }
}

impl SourceTensor {
    /// A copy without the values.
    fn clone_header(&self) -> SourceTensor {
        SourceTensor {
            name: self.name.clone(),
            role: self.role,
            layer: self.layer,
            shape: self.shape.clone(),
            data: Vec::new(),
        }
    }
}

impl SourceModel {
    /// A copy without any tensor.
    fn clone_header(&self) -> SourceModel {
        SourceModel {
            config: self.config,
            tokenizer_json: self.tokenizer_json.clone(),
            chat_template: self.chat_template.clone(),
            metadata: self.metadata.clone(),
            tensors: Vec::new(),
        }
    }
}

/// What kind of input a path is.
enum Input {
    HfDir(PathBuf),
    Gguf(crate::import::gguf_file::GgufFile),
}

fn open_input(path: &Path) -> Result<Input, ImportError> {
    Ok(if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(ImportError::UnrecognizedInput {
                path: path.to_path_buf(),
            });
        }
        Input::HfDir(path.to_path_buf())
    } else if path.is_file() {
        Input::Gguf(crate::import::gguf_file::GgufFile::open(path)?)
    } else if !path.exists() {
        return Err(ImportError::Io {
            path: path.to_path_buf(),
            context: "opening",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    } else {
        return Err(ImportError::UnrecognizedInput {
            path: path.to_path_buf(),
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_round_trip() {
        for (name, role, layer) in [
            ("token_embd.weight", Role::TokenEmbedding, None),
            ("output.weight", Role::Output, None),
            ("output_norm.weight", Role::OutputNorm, None),
            ("blk.0.attn_q.weight", Role::AttnQ, Some(0)),
            ("blk.29.ffn_down.weight", Role::FfnDown, Some(29)),
            ("blk.3.attn_sub_norm.weight", Role::AttnSubNorm, Some(3)),
        ] {
            assert_eq!(parse_gguf_tensor_name(name), Some((role, layer)), "{name}");
            assert_eq!(gguf_tensor_name(role, layer), name);
        }
        for bad in [
            "blk.01.attn_q.weight",
            "blk.x.attn_q.weight",
            "blk..attn_q.weight",
            "rope_freqs.weight",
            "output",
        ] {
            assert_eq!(parse_gguf_tensor_name(bad), None, "{bad}");
        }
    }
}
