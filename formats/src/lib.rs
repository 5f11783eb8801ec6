//! The packed 1.58-bit model file (`.tern`): specification in `FORMAT.md`.
//!
//! `ModelView` parses and validates a file's bytes without copying or allocating; tensors are returned as
//! views into those bytes, ready for the runtime's kernels. With the `alloc` feature, `ModelWriter` builds
//! files; `blocks` holds the scalar pack/unpack reference for every quantized element type.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
mod aligned;
pub mod blocks;
pub mod config;
pub mod dtype;
pub mod error;
pub mod layout;
mod le;
#[cfg(feature = "std")]
#[allow(unsafe_code)] // the mmap, and nothing else
mod mapped;
pub mod numerics;
pub mod tensor;
pub mod view;
#[cfg(feature = "alloc")]
pub mod writer;

#[cfg(feature = "alloc")]
pub use aligned::AlignedBytes;
pub use config::{Architecture, ModelConfig, RopeScaling, RopeStyle, NO_TOKEN};
pub use dtype::{ElementType, ScaleKind, Shape};
pub use error::FormatError;
#[cfg(feature = "std")]
pub use mapped::{write_atomic, write_atomic_with, MapError, MappedFile, WriteError};
pub use tensor::{Role, TensorView};
pub use view::{ModelView, ParseOptions, TokenizerData, ViewLayout};
#[cfg(feature = "alloc")]
pub use writer::{ModelWriter, TensorData, TernaryLayout};
