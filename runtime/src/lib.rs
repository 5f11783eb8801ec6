//! tern-runtime: allocation-free inference of ternary (1.58-bit) Llama and BitNet b1.58 models.
//!
//! The core is `no_std` and allocates nothing: `Model::new` validates a parsed `.tern` file (borrowing its
//! bytes), `required_arena_bytes` sizes one buffer, and `Session::new` carves activations, scratch and the KV
//! cache out of it. Ternary layers run on int8 activations with exact integer dot products (`kernels`).
//!
//! With the `std` feature: memory-mapped loading (`load`), threads (`SessionOptions::threads`), the embedded
//! Hugging Face tokenizer with streaming-safe decoding and chat templates (`tokenizer`).
//!
//! `OwnedModel` and `OwnedSession` (`owned`) own their bytes and arena instead of borrowing them, for
//! callers that keep models and sessions in handles (the C API in runtime/capi).
//!
//! Design notes, the arena formula and the KV-cache precision decision: runtime/README.md.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

pub mod arena;
pub mod error;
pub mod kernels;
#[cfg(feature = "std")]
pub mod load;
pub mod model;
pub mod ops;
pub mod owned;
pub mod parallel;
mod pool;
pub mod sampling;
pub mod session;
#[cfg(feature = "std")]
pub mod tokenizer;

pub use arena::{required_arena_bytes, KvPrecision, SessionOptions};
pub use error::RuntimeError;
pub use kernels::Kernels;
pub use model::{Layer, Model, MAX_LAYERS};
pub use owned::{OwnedModel, OwnedSession};
pub use parallel::MAX_THREADS;
pub use sampling::{Rng, Sampler, SamplingParams};
pub use session::{Logits, Session};
