//! Distillation loss: KL divergence from the teacher's to the student's temperature-softened distribution,
//! scaled by `T²` (Hinton et al.) so that its gradient magnitude does not shrink as `T` grows:
//! `loss_r = T² · Σ_j p_j (log p_j − log q_j)`, `p = softmax(teacher/T)`, `q = softmax(student/T)`,
//! `∂loss_r/∂student_j = T · (q_j − p_j)`.

use rayon::prelude::*;

use super::cross_entropy::log_sum_exp;
use crate::engine::backend::WriteMode;
use crate::engine::scalar::Float;

pub(crate) fn kl_divergence_cpu<T: Float>(
    losses: &mut [T],
    grad: Option<(&mut [T], f64, WriteMode)>,
    logits: &[T],
    teacher: &[T],
    vocab: usize,
    temperature: f64,
) {
    let inv_t = 1.0 / temperature;
    // Per row: the loss, and (when asked) `q − p` written through `emit`.
    let row = |z: &[T], zt: &[T], mut emit: Option<&mut dyn FnMut(usize, f64)>| -> f64 {
        let lse_s = log_sum_exp(z, inv_t);
        let lse_t = log_sum_exp(zt, inv_t);
        let mut kl = 0.0;
        for (j, (&s, &t)) in z.iter().zip(zt).enumerate() {
            let log_p = t.to_f64() * inv_t - lse_t;
            let log_q = s.to_f64() * inv_t - lse_s;
            let p = log_p.exp();
            kl += p * (log_p - log_q);
            if let Some(emit) = emit.as_mut() {
                emit(j, log_q.exp() - p);
            }
        }
        temperature * temperature * kl
    };
    match grad {
        None => {
            losses
                .par_iter_mut()
                .zip(logits.par_chunks(vocab))
                .zip(teacher.par_chunks(vocab))
                .for_each(|((l, z), zt)| *l = T::from_f64(row(z, zt, None)));
        }
        Some((dlogits, scale, mode)) => {
            let g_scale = scale * temperature;
            losses
                .par_iter_mut()
                .zip(dlogits.par_chunks_mut(vocab))
                .zip(logits.par_chunks(vocab).zip(teacher.par_chunks(vocab)))
                .for_each(|((l, dz), (z, zt))| {
                    let mut emit = |j: usize, q_minus_p: f64| {
                        let g = T::from_f64(g_scale * q_minus_p);
                        match mode {
                            WriteMode::Overwrite => dz[j] = g,
                            WriteMode::Accumulate => dz[j] += g,
                        }
                    };
                    *l = T::from_f64(row(z, zt, Some(&mut emit)));
                });
        }
    }
}
