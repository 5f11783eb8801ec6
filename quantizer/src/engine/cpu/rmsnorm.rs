//! CPU kernels of RMSNorm (the math: [`crate::engine::layers::rmsnorm`]).

use rayon::prelude::*;

use crate::engine::backend::WriteMode;
use crate::engine::scalar::Float;

/// Rows handled per task when reducing the weight gradient: fixed, so the summation order (and the result) does
/// not depend on the thread count.
const ROWS_PER_TASK: usize = 32;

pub(crate) fn forward_cpu<T: Float>(out: &mut [T], rstd: &mut [T], x: &[T], w: &[T], eps: f64) {
    let cols = w.len();
    let eps = T::from_f64(eps);
    let inv_cols = T::from_f64(1.0 / cols as f64);
    out.par_chunks_mut(cols)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(cols))
        .for_each(|((y, r), x)| {
            let ms = x.iter().map(|&v| v * v).sum::<T>() * inv_cols;
            let rs = T::ONE / (ms + eps).sqrt();
            *r = rs;
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * rs * w;
            }
        });
}

pub(crate) fn backward_cpu<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    dout: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    dx_mode: WriteMode,
) {
    let cols = w.len();
    let inv_cols = T::from_f64(1.0 / cols as f64);
    let task = ROWS_PER_TASK * cols;
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(task)
        .zip(dout.par_chunks(task))
        .zip(x.par_chunks(task))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .map(|(((dx, dy), x), rstd)| {
            let mut dw_part = vec![T::ZERO; cols];
            for (((dx, dy), x), &r) in dx.chunks_mut(cols).zip(dy.chunks(cols)).zip(x.chunks(cols)).zip(rstd) {
                let dot: T = dy.iter().zip(w).zip(x).map(|((&dy, &w), &x)| dy * w * x).sum();
                let coef = dot * r * r * inv_cols;
                for j in 0..cols {
                    let g = r * (w[j] * dy[j] - x[j] * coef);
                    match dx_mode {
                        WriteMode::Overwrite => dx[j] = g,
                        WriteMode::Accumulate => dx[j] += g,
                    }
                    dw_part[j] += dy[j] * x[j] * r;
                }
            }
            dw_part
        })
        .collect();
    for part in partials {
        for (d, p) in dw.iter_mut().zip(part) {
            *d += p;
        }
    }
}
