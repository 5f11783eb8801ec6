//! tern-quantizer: import Llama-family checkpoints (GGUF, Hugging Face safetensors) and ternarize them.

pub mod checkpoint;
pub mod data;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod gguf_export;
pub mod gguf_import;
pub mod hessian;
pub mod hf;
pub mod metrics;
pub mod model;
pub mod ptq;
pub mod qat;
pub mod teacher;
pub mod tiny;
pub mod tokenizer_json;
pub mod train;

pub use error::ImportError;
pub use model::{load, SourceModel, SourceTensor};
