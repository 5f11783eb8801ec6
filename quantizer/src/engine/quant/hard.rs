//! BitNet b1.58's absmean ternary quantizer (CPU kernels), per scale group:
//! `a = max(mean|W|, 1e-5)`, `Ŵ = clamp(round(W/a), −1, 1)·a`, round half to even (like `torch.round` and the PTQ
//! export, which divides the same way, so training and the exported file agree code for code).
//!
//! Its backward is the straight-through identity, so there is no backward kernel.

use rayon::prelude::*;

use super::QUANT_EPS;
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
    mean_abs(w).max(QUANT_EPS)
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

/// `out = clamp(round(w/a), −1, 1)·a` per run of `group_len` elements (`group_len` divides `w.len()`).
pub(crate) fn quantize_cpu<T: Float>(out: &mut [T], w: &[T], group_len: usize) {
    let quantize_group = |o: &mut [T], w: &[T]| {
        let a = T::from_f64(ternary_scale(w));
        for (o, &w) in o.iter_mut().zip(w) {
            *o = ternary_code(w, a) * a;
        }
    };
    if group_len >= REDUCE_CHUNK {
        // Few large groups: parallelise inside each.
        for (o, w) in out.chunks_mut(group_len).zip(w.chunks(group_len)) {
            let a = T::from_f64(ternary_scale(w));
            o.par_chunks_mut(REDUCE_CHUNK)
                .zip(w.par_chunks(REDUCE_CHUNK))
                .for_each(|(o, w)| {
                    for (o, &w) in o.iter_mut().zip(w) {
                        *o = ternary_code(w, a) * a;
                    }
                });
        }
    } else {
        out.par_chunks_mut(group_len)
            .zip(w.par_chunks(group_len))
            .for_each(|(o, w)| quantize_group(o, w));
    }
}

/// Per-row absmax int8 activations: `s = 127 / max(max|x_row|, 1e-5)`, `out = clamp(round(x·s), −128, 127) / s`.
pub(crate) fn quantize_int8_rows_cpu<T: Float>(out: &mut [T], x: &[T], cols: usize) {
    let lo = T::from_f64(-128.0);
    let hi = T::from_f64(127.0);
    out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, x)| {
        let absmax = x.iter().fold(T::ZERO, |m, v| m.max(v.abs()));
        let scale = T::from_f64(127.0) / absmax.max(T::from_f64(QUANT_EPS));
        for (o, &x) in o.iter_mut().zip(x) {
            *o = clamp((x * scale).round_even(), lo, hi) / scale;
        }
    });
}
