//! CPU kernel of rotary position embedding (the math and the table: [`crate::engine::layers::rope`]).

use rayon::prelude::*;
use tern_format::RopeStyle;

use crate::engine::backend::{RopeDims, RopeDirection};
use crate::engine::scalar::Float;

/// Index of the two elements of pair `i` in a head of `head_dim`.
#[inline(always)]
fn pair(style: RopeStyle, i: usize, head_dim: usize) -> (usize, usize) {
    match style {
        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
        RopeStyle::Half => (i, i + head_dim / 2),
    }
}

pub(crate) fn rope_cpu<T: Float>(x: &mut [T], table: &[T], dims: RopeDims, direction: RopeDirection) {
    let width = dims.n_heads * dims.head_dim;
    let half = dims.head_dim / 2;
    x.par_chunks_mut(width).enumerate().for_each(|(row, xr)| {
        let pos = row % dims.seq_len;
        let angles = &table[pos * dims.head_dim..(pos + 1) * dims.head_dim];
        for head in xr.chunks_mut(dims.head_dim) {
            for i in 0..half {
                let (c, s) = (angles[2 * i], angles[2 * i + 1]);
                let s = match direction {
                    RopeDirection::Forward => s,
                    RopeDirection::Inverse => -s,
                };
                let (ia, ib) = pair(dims.style, i, dims.head_dim);
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * c - b * s;
                head[ib] = a * s + b * c;
            }
        }
    });
}
