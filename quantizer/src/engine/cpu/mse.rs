//! Mean squared error between a block's output and its full-precision target (block-wise distillation), fused
//! with its gradient: per row `r`, `loss_r = Σ_c (y − t)² / d_r` with `d_r = cols`, or, normalised per token,
//! `d_r = max(Σ_c t², 1e-12)` (the relative error of that token); `∂loss_r/∂y = 2(y − t)/d_r`.

use rayon::prelude::*;

use crate::engine::backend::WriteMode;
use crate::engine::scalar::Float;

/// Floor of the per-token normaliser `Σ t²` (a zero target row would divide by zero).
pub const NORMALIZER_FLOOR: f64 = 1e-12;

pub(crate) fn mse_cpu<T: Float>(
    losses: &mut [T],
    grad: Option<(&mut [T], f64, WriteMode)>,
    out: &[T],
    target: &[T],
    cols: usize,
    normalize: bool,
) {
    let denominator = |t: &[T]| -> f64 {
        if normalize {
            t.iter()
                .map(|&x| x.to_f64() * x.to_f64())
                .sum::<f64>()
                .max(NORMALIZER_FLOOR)
        } else {
            cols as f64
        }
    };
    let row_loss = |y: &[T], t: &[T], d: f64| -> f64 {
        y.iter()
            .zip(t)
            .map(|(&a, &b)| {
                let e = a.to_f64() - b.to_f64();
                e * e
            })
            .sum::<f64>()
            / d
    };
    match grad {
        None => losses
            .par_iter_mut()
            .zip(out.par_chunks(cols).zip(target.par_chunks(cols)))
            .for_each(|(l, (y, t))| *l = T::from_f64(row_loss(y, t, denominator(t)))),
        Some((dout, scale, mode)) => losses
            .par_iter_mut()
            .zip(dout.par_chunks_mut(cols))
            .zip(out.par_chunks(cols).zip(target.par_chunks(cols)))
            .for_each(|((l, dy), (y, t))| {
                let d = denominator(t);
                *l = T::from_f64(row_loss(y, t, d));
                let k = T::from_f64(2.0 * scale / d);
                for ((g, &a), &b) in dy.iter_mut().zip(y).zip(t) {
                    let v = k * (a - b);
                    *g = match mode {
                        WriteMode::Overwrite => v,
                        WriteMode::Accumulate => *g + v,
                    };
                }
            }),
    }
}
