//! Typed import errors. Every rejection of a malformed or unsupported input file is one of these, naming the
//! file, the tensor or key where there is one, and the problem; the readers never panic on file contents.

use std::path::PathBuf;

/// Why a model could not be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("{}: {context}: {source}", .path.display())]
    Io {
        path: PathBuf,
        /// What was being done ("opening", "memory-mapping", "listing the directory", …).
        context: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: neither a .gguf file nor a directory containing config.json", .path.display())]
    UnrecognizedInput { path: PathBuf },

    #[error("{}: not a GGUF file (first bytes {magic:02x?}, expected \"GGUF\")", .path.display())]
    NotGguf { path: PathBuf, magic: Vec<u8> },

    #[error("{}: unsupported GGUF version {version} (this reader handles versions 2 and 3)", .path.display())]
    UnsupportedGgufVersion { path: PathBuf, version: u32 },

    /// The file ends before a structure it declares.
    #[error("{}: truncated: {what} needs bytes {offset}..{offset}+{needed} but the file has {file_len} bytes", .path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },

    /// A structural field has an impossible value (count, length, offset, type code, alignment, …).
    #[error("{}: corrupt: {what}", .path.display())]
    Corrupt { path: PathBuf, what: String },

    /// A tensor's header or data is malformed (bad dims, offset outside the file, misaligned, …).
    #[error("{}: tensor '{tensor}': {problem}", .path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },

    #[error("{}: tensor '{tensor}': unsupported element type {dtype}", .path.display())]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{}: tensor '{tensor}' has shape {actual:?}, but the config implies {expected:?}", .path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("{}: required tensor '{tensor}' is missing", .path.display())]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{}: tensor '{tensor}' appears more than once", .path.display())]
    DuplicateTensor { path: PathBuf, tensor: String },

    /// A tensor whose name the importer does not recognise (dropping it silently could lose part of the model).
    #[error("{}: unexpected tensor '{tensor}' ({why})", .path.display())]
    UnexpectedTensor { path: PathBuf, tensor: String, why: String },

    #[error("{}: missing config key '{key}'", .path.display())]
    MissingKey { path: PathBuf, key: String },

    /// A config or metadata key is present but has the wrong type or an unusable value.
    #[error("{}: key '{key}': {problem}", .path.display())]
    BadKey {
        path: PathBuf,
        key: String,
        problem: String,
    },

    #[error("{}: unsupported architecture '{arch}' (supported: {supported})", .path.display())]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: &'static str,
    },

    /// The model uses a feature this importer does not implement (a RoPE scaling type, biases, …).
    #[error("{}: unsupported: {what}", .path.display())]
    Unsupported { path: PathBuf, what: String },

    #[error("{}: invalid JSON: {source}", .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: safetensors: {problem}", .path.display())]
    Safetensors { path: PathBuf, problem: String },

    #[error("{}: tokenizer: {problem}", .path.display())]
    Tokenizer { path: PathBuf, problem: String },

    /// A GGUF tokenizer kind (`tokenizer.ggml.model`) or pre-tokenizer (`tokenizer.ggml.pre`) that the importer
    /// cannot express as a Hugging Face `tokenizer.json`.
    #[error("{}: unsupported tokenizer: {key} = '{value}' (supported: {supported})", .path.display())]
    UnsupportedTokenizer {
        path: PathBuf,
        key: &'static str,
        value: String,
        supported: &'static str,
    },

    /// The hyper-parameters read from the file are inconsistent (checked by `ModelConfig::validate`).
    #[error("{}: invalid model config: {source}", .path.display())]
    InvalidConfig {
        path: PathBuf,
        #[source]
        source: tern_format::FormatError,
    },
}

impl ImportError {
    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        use ImportError::*;
        match self {
            Io { path, .. }
            | UnrecognizedInput { path }
            | NotGguf { path, .. }
            | UnsupportedGgufVersion { path, .. }
            | Truncated { path, .. }
            | Corrupt { path, .. }
            | BadTensor { path, .. }
            | UnsupportedTensorType { path, .. }
            | ShapeMismatch { path, .. }
            | MissingTensor { path, .. }
            | DuplicateTensor { path, .. }
            | UnexpectedTensor { path, .. }
            | MissingKey { path, .. }
            | BadKey { path, .. }
            | UnsupportedArchitecture { path, .. }
            | Unsupported { path, .. }
            | Json { path, .. }
            | Safetensors { path, .. }
            | Tokenizer { path, .. }
            | UnsupportedTokenizer { path, .. }
            | InvalidConfig { path, .. } => path,
        }
    }
}
