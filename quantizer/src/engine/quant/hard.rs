//! BitNet b1.58's absmean ternary quantizer, per scale group (the CPU kernels: `engine/cpu/quant.rs`):
//! `a = max(mean|W|, 1e-5)`, `Ŵ = clamp(round(W/a), −1, 1)·a`, round half to even (like `torch.round` and the PTQ
//! export, which divides the same way, so training and the exported file agree code for code).
//!
//! Its backward is the straight-through identity, so there is no backward kernel.

use rayon::prelude::*;

use crate::engine::scalar::Float;

/// Elements per task of the deterministic `mean|W|` reduction. A group of at most this many elements is summed
/// sequentially, exactly as the PTQ export sums it.
pub(crate) const REDUCE_CHUNK: usize = 1 << 14;

/// `mean|w|` with a fixed chunking (deterministic for any thread count), accumulated in f64.
pub(crate) fn mean_abs<T: Float>(w: &[T]) -> f64 {
    if w.is_empty() {
        return 0.0;
    }
    let partials: Vec<f64> = if w.len() <= REDUCE_CHUNK {
        vec![w.iter().map(|v| v.abs().to_f64()).sum::<f64>()]
    } else {
        w.par_chunks(REDUCE_CHUNK)
            .map(|c| c.iter().map(|v| v.abs().to_f64()).sum::<f64>())
            .collect()
    };
    partials.iter().sum::<f64>() / w.len() as f64
}

/// The absmean scale `a` BitNet b1.58 uses for a group of weights.
pub fn ternary_scale<T: Float>(w: &[T]) -> f64 {
    tern_format::numerics::absmean_scale(mean_abs(w))
}

/// Clamp that lets NaN through (like `torch.clamp`): `f32::max`/`min` would turn a NaN into a bound and hide a
/// diverging run from the non-finite checks.
#[inline(always)]
pub(crate) fn clamp<T: Float>(x: T, lo: T, hi: T) -> T {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

/// The ternary code of `w` under scale `a`, as a float in {−1, 0, 1}.
#[inline(always)]
pub(crate) fn ternary_code<T: Float>(w: T, a: T) -> T {
    // Divide (not multiply by 1/a): the export (`ptq::ternarize_absmean`) divides, and w·(1/a) can land exactly on
    // a tie that w/a misses, flipping a code between training and the exported file.
    clamp((w / a).round_even(), -T::ONE, T::ONE)
}
