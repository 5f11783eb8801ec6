//! Token embedding: `out[r, :] = table[token_r, :]`; backward scatters `dout` rows into the table gradient.

use super::{ParamId, Weights};
use crate::engine::backend::Backend;
use crate::engine::error::{EngineError, EngineResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedding {
    pub table: ParamId,
    pub vocab: usize,
    pub dim: usize,
}

impl Embedding {
    /// `tokens` were checked against the vocabulary when they were uploaded ([`check_tokens`]).
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        weights: &Weights<'_, B>,
        tokens: &B::Ids,
        out: &mut B::Buf,
    ) -> EngineResult<()> {
        backend.embedding_forward(out, weights.latent(self.table), tokens, self.dim)
    }

    pub fn backward<B: Backend>(
        &self,
        backend: &B,
        grads: &mut [B::Buf],
        tokens: &B::Ids,
        dout: &B::Buf,
    ) -> EngineResult<()> {
        backend.embedding_backward(&mut grads[self.table.0], dout, tokens, self.dim)
    }
}

/// Rejects token ids outside the vocabulary (input-derived data: a typed error, never a panic).
pub fn check_tokens(tokens: &[u32], vocab: usize) -> EngineResult<()> {
    match tokens.iter().position(|&t| t as usize >= vocab) {
        Some(position) => Err(EngineError::TokenOutOfRange {
            token: tokens[position],
            position,
            vocab,
        }),
        None => Ok(()),
    }
}
