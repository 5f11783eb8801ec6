//! Quantization-aware training beyond the end-to-end loop of [`crate::train`]: Hestia's temperature control,
//! the block-wise stage and its activation store, and the pipeline that runs a recipe of stages.

pub mod activations;
pub mod blockwise;
pub mod hestia;
pub mod pipeline;
