//! The training engine: llm.c-style forward/backward passes of a Llama / BitNet b1.58 transformer with
//! quantization-aware training (absmean ternary weights, optional int8 activations, straight-through
//! gradients), AdamW, and a backend interface that a CUDA implementation can fill in.
//!
//! * [`backend`]: the [`Backend`] trait (storage + kernels); [`cpu`]: [`CpuBackend`] (rayon + [`matmul`]: `gemm`
//!   crate f32, AVX-512 f32 or AMX-BF16); `cuda` (feature `cuda`): `CudaBackend` (cuBLAS + NVRTC-compiled kernels,
//!   loaded at run time).
//! * [`layers`]: one forward/backward pair per layer.
//! * [`model`]: [`Transformer`], [`Parameters`], [`ParamLayout`], activation recomputation, memory accounting.
//! * [`optim`]: [`AdamW`], learning-rate schedules, clipping.
//!
//! Every backward is checked against central finite differences in f64 (`tests/engine_*.rs`).

pub mod backend;
pub mod block_model;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod layers;
pub mod matmul;
pub mod model;
pub mod optim;
pub mod quant;
pub mod rng;
pub mod scalar;
pub(crate) mod shapes;

pub use backend::{
    AdamWParams, AttentionDims, Backend, GatedActivation, GemmSpec, LossGrad, RopeDims, RopeDirection, WriteMode,
    IGNORE_INDEX,
};
pub use block_model::{BlockLayout, BlockLoss, BlockModel};
pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaError, CudaUnavailable, GemmPrecision};
pub use error::{EngineError, EngineResult, NonFiniteSource};
pub use layers::{ParamId, QuantScratch, Weights};
pub use matmul::MatmulPrecision;
pub use model::{
    estimate_memory, tiny_config, Batch, EngineConfig, LayerParamIds, LossReport, MemoryEstimate, Objective, ParamKind,
    ParamLayout, ParamSpec, Parameters, QuantConfig, Recompute, StepReport, Transformer,
};
pub use optim::{global_grad_norm, AdamW, AdamWConfig, DecayShape, LrSchedule, OptimStepReport};
pub use quant::{LinearPrecision, ScaleGroups, SoftState, WeightQuantizer};
pub use rng::SplitMix64;
pub use scalar::Float;
