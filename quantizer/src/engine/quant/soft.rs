//! Hestia's soft ternary quantizer: the closed form, its derivative, and the CPU kernels.
//!
//! Per scale group with `a = max(mean|W|, 1e-5)` (not detached) and `z = W/a`, the soft code is the expectation of
//! the grid point under `p_k = softmax_k(−(z − c_k)²/T)`, `c ∈ {−1, 0, 1}`. Multiplying numerator and denominator by
//! `e^{(z²+1)/T}` gives the closed form
//!
//! `σ_T(z) = (e^{2z/T} − e^{−2z/T}) / (e^{2z/T} + e^{1/T} + e^{−2z/T}) = sinh(2z/T) / (cosh(2z/T) + ½·e^{1/T})`,
//!
//! an odd function. With `x = |z|`, `e₁ = e^{−4x/T}` and `b = (1 − 2x)/T` it is evaluated as
//! `σ = (1 − e₁)/(1 + e₁ + e^b)` when `b ≤ 0` and `σ = e^{−b}(1 − e₁)/(e^{−b}(1 + e₁) + 1)` when `b > 0`: every
//! exponent is ≤ 0, so nothing overflows for any `T > 0`, and as `T → 0` it tends to `sign(z)` for `x > ½` and to
//! `0` for `x < ½` — the hard quantizer `clamp(round(z), −1, 1)` (at the tie `x = ½` it tends to ½). The same
//! rewriting gives `dσ/dz = (2/T)·(1 + c·cosh u)/(cosh u + c)²` (`u = 2z/T`, `c = ½e^{1/T}`) as
//! `(2/T)·(4e₁ + e^b(1 + e₁))/(1 + e₁ + e^b)²`, or with `e^{−b}` factored out when `b > 0`.
//!
//! The effective weight is `Ŵ = (1 − λ)·W + λ·a·σ_T(W/a)`. Its gradient, with `G = ∂L/∂Ŵ` and `n` weights in the
//! group (`∂a/∂W_j = sign(W_j)/n` unless the `1e-5` floor is active):
//!
//! `∂L/∂W_j = (1 − λ)·G_j + λ·(G_j·σ'(z_j) + sign(W_j)/n · Σ_i G_i·(σ(z_i) − z_i·σ'(z_i)))`.
//!
//! At `T = 0` the quantizer is the hard one with the straight-through gradient `∂L/∂W = G`.

use rayon::prelude::*;

use super::hard::{ternary_code, ternary_scale, REDUCE_CHUNK};
use super::QUANT_EPS;
use crate::engine::scalar::Float;

/// `(σ_T(z), dσ_T/dz)` for `T > 0`, overflow-free (see the module documentation).
#[inline(always)]
pub fn soft_code<T: Float>(z: T, temperature: T) -> (T, T) {
    let x = z.abs();
    let inv_t = T::ONE / temperature;
    let two = T::from_f64(2.0);
    let four = T::from_f64(4.0);
    let e1 = (-(four * x) * inv_t).exp();
    let b = (T::ONE - two * x) * inv_t;
    let (sigma, dsigma_du) = if b <= T::ZERO {
        let eb = b.exp();
        let den = T::ONE + e1 + eb;
        ((T::ONE - e1) / den, (four * e1 + eb * (T::ONE + e1)) / (den * den))
    } else {
        let nb = (-b).exp();
        let den = nb * (T::ONE + e1) + T::ONE;
        (
            nb * (T::ONE - e1) / den,
            (four * e1 * nb * nb + nb * (T::ONE + e1)) / (den * den),
        )
    };
    let signed = if z < T::ZERO { -sigma } else { sigma };
    (signed, two * inv_t * dsigma_du)
}

/// `σ_T(z)` in f64 by the softmax definition (log-sum-exp), for tests and the `T0` solver's cross-check.
pub fn soft_code_by_softmax(z: f64, temperature: f64) -> f64 {
    let logits = [-1.0f64, 0.0, 1.0].map(|c| -(z - c) * (z - c) / temperature);
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
    let w = logits.map(|l| (l - max).exp());
    (w[2] - w[0]) / (w[0] + w[1] + w[2])
}

/// `Ŵ` for every run of `group_len` weights (`group_len` divides `w.len()`).
pub(crate) fn forward_cpu<T: Float>(out: &mut [T], w: &[T], group_len: usize, temperature: f64, pressure: f64) {
    let (t, p) = (T::from_f64(temperature), T::from_f64(pressure));
    if group_len >= REDUCE_CHUNK {
        for (o, w) in out.chunks_mut(group_len).zip(w.chunks(group_len)) {
            // Split the elementwise work; the scale is the group's, computed once.
            let a = ternary_scale(w);
            o.par_chunks_mut(REDUCE_CHUNK)
                .zip(w.par_chunks(REDUCE_CHUNK))
                .for_each(|(o, w)| forward_with_scale(o, w, T::from_f64(a), t, p));
        }
    } else {
        out.par_chunks_mut(group_len)
            .zip(w.par_chunks(group_len))
            .for_each(|(o, w)| forward_with_scale(o, w, T::from_f64(ternary_scale(w)), t, p));
    }
}

/// `out = (1 − λ)·w + λ·a·σ_T(w/a)` for weights of a group with scale `a` (`T = 0`: the hard code).
fn forward_with_scale<T: Float>(out: &mut [T], w: &[T], a: T, temperature: T, pressure: T) {
    let keep = T::ONE - pressure;
    if temperature == T::ZERO {
        for (o, &w) in out.iter_mut().zip(w) {
            *o = keep * w + pressure * (ternary_code(w, a) * a);
        }
    } else {
        for (o, &w) in out.iter_mut().zip(w) {
            let (s, _) = soft_code(w / a, temperature);
            *o = keep * w + pressure * (s * a);
        }
    }
}

/// `Σ_i G_i·(σ(z_i) − z_i·σ'(z_i))` over a slice, in f64.
fn scale_term<T: Float>(g: &[T], w: &[T], a: T, temperature: T) -> f64 {
    g.iter()
        .zip(w)
        .map(|(&g, &w)| {
            let z = w / a;
            let (s, ds) = soft_code(z, temperature);
            (g * (s - z * ds)).to_f64()
        })
        .sum()
}

/// The elementwise part of the backward: `G_j ← (1 − λ)·G_j + λ·(G_j·σ'(z_j) + sign(W_j)·r)`, `r = R/n`.
fn apply_backward<T: Float>(g: &mut [T], w: &[T], a: T, temperature: T, pressure: T, r: T) {
    let keep = T::ONE - pressure;
    for (g, &w) in g.iter_mut().zip(w) {
        let (_, ds) = soft_code(w / a, temperature);
        let sign = if w > T::ZERO {
            T::ONE
        } else if w < T::ZERO {
            -T::ONE
        } else {
            T::ZERO
        };
        *g = keep * *g + pressure * (*g * ds + sign * r);
    }
}

/// In place: `grad` holds `∂L/∂Ŵ` on entry and `∂L/∂W` on exit (see the module documentation).
pub(crate) fn backward_cpu<T: Float>(grad: &mut [T], w: &[T], group_len: usize, temperature: f64, pressure: f64) {
    if temperature == 0.0 {
        // Straight-through: the identity, whatever the pressure.
        return;
    }
    let (t, p) = (T::from_f64(temperature), T::from_f64(pressure));
    let group = |g: &mut [T], w: &[T], parallel: bool| {
        let mean = super::hard::mean_abs(w);
        let a = T::from_f64(mean.max(QUANT_EPS));
        // The floor makes `a` constant: no gradient through it.
        let scale_flows = mean > QUANT_EPS;
        let r = if scale_flows {
            let sum: f64 = if parallel {
                let partials: Vec<f64> = g
                    .par_chunks(REDUCE_CHUNK)
                    .zip(w.par_chunks(REDUCE_CHUNK))
                    .map(|(g, w)| scale_term(g, w, a, t))
                    .collect();
                partials.iter().sum()
            } else {
                scale_term(g, w, a, t)
            };
            T::from_f64(sum / w.len() as f64)
        } else {
            T::ZERO
        };
        if parallel {
            g.par_chunks_mut(REDUCE_CHUNK)
                .zip(w.par_chunks(REDUCE_CHUNK))
                .for_each(|(g, w)| apply_backward(g, w, a, t, p, r));
        } else {
            apply_backward(g, w, a, t, p, r);
        }
    };
    if group_len >= REDUCE_CHUNK {
        for (g, w) in grad.chunks_mut(group_len).zip(w.chunks(group_len)) {
            group(g, w, true);
        }
    } else {
        grad.par_chunks_mut(group_len)
            .zip(w.par_chunks(group_len))
            .for_each(|(g, w)| group(g, w, false));
    }
}
