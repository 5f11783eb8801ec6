//! Hestia's soft ternary quantizer: the closed form and its derivative (the CPU kernels: `engine/cpu/quant.rs`).
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
