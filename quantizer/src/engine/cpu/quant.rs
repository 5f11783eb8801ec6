//! CPU kernels of the weight quantizers and of int8 activation fake quantization (the formulas:
//! [`crate::engine::quant::hard`], [`crate::engine::quant::soft`]).

use rayon::prelude::*;

use crate::engine::quant::hard::{clamp, ternary_code, ternary_scale, REDUCE_CHUNK};
use crate::engine::quant::soft::soft_code;
use crate::engine::quant::QUANT_EPS;
use crate::engine::scalar::Float;
use tern_format::numerics::INT8_ACT_MAX;

/// `out = clamp(round(w/a), −1, 1)·a` per run of `group_len` elements (`group_len` divides `w.len()`).
pub(crate) fn quantize_ternary_hard_cpu<T: Float>(out: &mut [T], w: &[T], group_len: usize) {
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
        // `numerics::int8_act_scale` in T (f64 in the f64 engine): the same formula and constants.
        let scale = T::from_f64(f64::from(INT8_ACT_MAX)) / absmax.max(T::from_f64(QUANT_EPS));
        for (o, &x) in o.iter_mut().zip(x) {
            *o = clamp((x * scale).round_even(), lo, hi) / scale;
        }
    });
}

/// `Ŵ` for every run of `group_len` weights (`group_len` divides `w.len()`).
pub(crate) fn soft_forward_cpu<T: Float>(out: &mut [T], w: &[T], group_len: usize, temperature: f64, pressure: f64) {
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
pub(crate) fn soft_backward_cpu<T: Float>(grad: &mut [T], w: &[T], group_len: usize, temperature: f64, pressure: f64) {
    if temperature == 0.0 {
        // Straight-through: the identity, whatever the pressure.
        return;
    }
    let (t, p) = (T::from_f64(temperature), T::from_f64(pressure));
    let group = |g: &mut [T], w: &[T], parallel: bool| {
        let mean = crate::engine::quant::hard::mean_abs(w);
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
