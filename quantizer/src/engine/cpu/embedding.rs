//! CPU kernels of the token embedding (the layer: [`crate::engine::layers::embedding`]).

use rayon::prelude::*;

use crate::engine::error::EngineResult;
use crate::engine::layers::embedding::check_tokens;
use crate::engine::scalar::Float;
use crate::engine::shapes::{rows_of, same_len};

/// Columns handled per task in the backward scatter. Parallelising over columns (not tokens) keeps every
/// gradient element's additions in token order: deterministic, and free of write races on repeated tokens.
const COLS_PER_TASK: usize = 64;

/// Tokens must already be checked against the table's row count.
pub(crate) fn forward_cpu<T: Float>(out: &mut [T], table: &[T], tokens: &[u32], dim: usize) {
    out.par_chunks_mut(dim).zip(tokens.par_iter()).for_each(|(row, &t)| {
        let start = t as usize * dim;
        row.copy_from_slice(&table[start..start + dim]);
    });
}

/// Checks its own lengths and tokens: the raw row writes below are in bounds only if they hold.
pub(crate) fn backward_cpu<T: Float>(dtable: &mut [T], dout: &[T], tokens: &[u32], dim: usize) -> EngineResult<()> {
    let vocab = rows_of("embedding_backward", "dtable", dtable.len(), dim)?;
    same_len("embedding_backward", "dout", dout.len(), tokens.len() * dim)?;
    check_tokens(tokens, vocab)?;
    let tasks = dim.div_ceil(COLS_PER_TASK);
    // Each task owns a column band of every table row; rows are far apart, so hand out raw row pointers.
    let base = SendPtr(dtable.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|task| {
        let c0 = task * COLS_PER_TASK;
        let c1 = (c0 + COLS_PER_TASK).min(dim);
        for (r, &t) in tokens.iter().enumerate() {
            let src = &dout[r * dim + c0..r * dim + c1];
            // SAFETY: `t < vocab` was checked above and `dtable` has `vocab·dim` elements, so the band
            // `[t·dim + c0, t·dim + c1)` is in bounds; different tasks touch disjoint column bands.
            let dst = unsafe { std::slice::from_raw_parts_mut(base.get().add(t as usize * dim + c0), c1 - c0) };
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
    });
    Ok(())
}

/// A raw pointer that may cross threads; users guarantee disjoint access.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
// SAFETY: only used where every thread writes a disjoint region (documented at each use).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// Accessor, so closures capture the whole `Send` wrapper rather than the raw field.
    #[inline(always)]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}
