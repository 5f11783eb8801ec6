//! The layers of a Llama / BitNet b1.58 transformer, one forward/backward pair each (llm.c style).
//!
//! Each file describes a layer's math as a type that sequences [`Backend`] calls (what the model uses, on any
//! backend); the kernels themselves are the backends' (`engine/cpu/`, `engine/cuda/`). The losses are backend
//! kernels only (`Backend::cross_entropy`, `kl_divergence`, `mse_loss`).
//! Forward passes save what the backward pass needs in `*Activations` structs; backward passes accumulate
//! parameter gradients into the gradient tensor of the same [`ParamId`].

pub mod attention;
pub mod block;
pub mod embedding;
pub mod linear;
pub mod mlp;
pub mod rmsnorm;
pub mod rope;

use crate::engine::backend::Backend;
use crate::engine::error::EngineResult;

/// Index of a parameter tensor in [`Parameters`](crate::engine::Parameters) (and of its gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// Read access to the parameters during a pass: the latent tensors, plus the fake-quantized copies of the linear
/// weights when the model trains them ternary.
pub struct Weights<'a, B: Backend> {
    latent: &'a [B::Buf],
    quantized: &'a [Option<B::Buf>],
}

impl<'a, B: Backend> Weights<'a, B> {
    /// `quantized[i]`, where present, replaces `latent[i]` in [`Weights::effective`]; it may be shorter than
    /// `latent` (missing entries mean "not quantized").
    pub fn new(latent: &'a [B::Buf], quantized: &'a [Option<B::Buf>]) -> Self {
        Self { latent, quantized }
    }

    /// The full-precision tensor (norm weights, embeddings, the head, and the STE's gradient target).
    pub fn latent(&self, id: ParamId) -> &'a B::Buf {
        &self.latent[id.0]
    }

    /// The tensor the forward computes with: the fake-quantized copy if there is one.
    pub fn effective(&self, id: ParamId) -> &'a B::Buf {
        match self.quantized.get(id.0) {
            Some(Some(q)) => q,
            _ => &self.latent[id.0],
        }
    }

    pub fn latent_all(&self) -> &'a [B::Buf] {
        self.latent
    }
}

/// Scratch buffers for int8-quantized linear inputs, one per input width (`rows · width` elements each).
pub struct QuantScratch<B: Backend> {
    buffers: Vec<(usize, B::Buf)>,
}

impl<B: Backend> QuantScratch<B> {
    /// No scratch: for layers whose activations are not quantized.
    pub fn none() -> Self {
        Self { buffers: Vec::new() }
    }

    pub fn new(backend: &B, rows: usize, widths: &[usize]) -> EngineResult<Self> {
        let mut unique: Vec<usize> = widths.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let buffers = unique
            .into_iter()
            .map(|w| Ok((w, backend.alloc(rows * w)?)))
            .collect::<EngineResult<Vec<_>>>()?;
        Ok(Self { buffers })
    }

    /// The buffer for inputs of `width` columns, if one was allocated.
    pub fn for_width(&mut self, width: usize) -> Option<&mut B::Buf> {
        self.buffers.iter_mut().find(|(w, _)| *w == width).map(|(_, b)| b)
    }

    /// Elements actually held.
    pub fn allocated_elements(&self, backend: &B) -> usize {
        self.buffers.iter().map(|(_, b)| backend.buf_len(b)).sum()
    }
}

/// Elements [`QuantScratch::new`] allocates for `rows` and these input widths, for memory accounting.
pub fn quant_scratch_elements(rows: usize, widths: &[usize]) -> usize {
    let mut unique: Vec<usize> = widths.to_vec();
    unique.sort_unstable();
    unique.dedup();
    unique.iter().map(|w| rows * w).sum()
}
