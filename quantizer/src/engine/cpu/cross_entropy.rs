//! Softmax cross-entropy on logits, fused with its gradient (as llm.c's classifier):
//! `loss_r = logsumexp(z_r) − z_r[target_r]`, `∂loss_r/∂z_r = softmax(z_r) − onehot(target_r)`.
//! Rows whose target is [`IGNORE_INDEX`](crate::engine::IGNORE_INDEX) contribute neither loss nor gradient.

use rayon::prelude::*;

use crate::engine::backend::{WriteMode, IGNORE_INDEX};
use crate::engine::scalar::Float;

/// `(max, logsumexp)` of a row; the sum of exponentials is accumulated in f64 so that a 50k-entry vocabulary
/// does not lose precision in f32.
pub(crate) fn log_sum_exp<T: Float>(z: &[T], inv_temperature: f64) -> f64 {
    let max = z
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x.to_f64() * inv_temperature));
    let sum: f64 = z.iter().map(|&x| (x.to_f64() * inv_temperature - max).exp()).sum();
    max + sum.ln()
}

pub(crate) fn cross_entropy_cpu<T: Float>(
    losses: &mut [T],
    grad: Option<(&mut [T], f64, WriteMode)>,
    logits: &[T],
    targets: &[u32],
    vocab: usize,
) {
    let row_loss = |z: &[T], target: u32| -> (f64, f64) {
        let lse = log_sum_exp(z, 1.0);
        (lse, lse - z[target as usize].to_f64())
    };
    match grad {
        None => {
            losses
                .par_iter_mut()
                .zip(logits.par_chunks(vocab))
                .zip(targets.par_iter())
                .for_each(|((l, z), &t)| {
                    *l = if t == IGNORE_INDEX {
                        T::ZERO
                    } else {
                        T::from_f64(row_loss(z, t).1)
                    };
                });
        }
        Some((dlogits, scale, mode)) => {
            losses
                .par_iter_mut()
                .zip(dlogits.par_chunks_mut(vocab))
                .zip(logits.par_chunks(vocab))
                .zip(targets.par_iter())
                .for_each(|(((l, dz), z), &t)| {
                    if t == IGNORE_INDEX {
                        *l = T::ZERO;
                        if mode == WriteMode::Overwrite {
                            dz.iter_mut().for_each(|d| *d = T::ZERO);
                        }
                        return;
                    }
                    if mode == WriteMode::Overwrite {
                        // One exponential per logit instead of two: stash exp(z − max) in the output row, then
                        // normalise it in place (exp is most of this kernel's cost at a 50k vocabulary).
                        let max = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x.to_f64()));
                        let mut sum = 0.0;
                        for (d, &x) in dz.iter_mut().zip(z) {
                            let e = (x.to_f64() - max).exp();
                            sum += e;
                            *d = T::from_f64(e);
                        }
                        *l = T::from_f64(max + sum.ln() - z[t as usize].to_f64());
                        let k = scale / sum;
                        dz.iter_mut().for_each(|d| *d = T::from_f64(d.to_f64() * k));
                        dz[t as usize] -= T::from_f64(scale);
                        return;
                    }
                    let (lse, loss) = row_loss(z, t);
                    *l = T::from_f64(loss);
                    for (j, (d, &x)) in dz.iter_mut().zip(z).enumerate() {
                        let p = (x.to_f64() - lse).exp();
                        let g = T::from_f64(scale * (p - if j == t as usize { 1.0 } else { 0.0 }));
                        match mode {
                            WriteMode::Overwrite => *d = g,
                            WriteMode::Accumulate => *d += g,
                        }
                    }
                });
        }
    }
}
