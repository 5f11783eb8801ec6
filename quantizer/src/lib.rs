//! tern-quantizer: import Llama-family checkpoints (GGUF, Hugging Face safetensors) and ternarize them.

pub mod checkpoint;
pub mod data;
pub mod engine;
pub mod error;
pub mod gguf_export;
pub mod hessian;
pub mod import;
pub mod metrics;
pub mod ptq;
pub mod qat;
pub mod teacher;
pub mod tiny;
pub mod train;

pub use error::ImportError;
pub use import::source::{load, SourceModel, SourceTensor};
