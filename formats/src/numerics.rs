//! Scalar numerics that the quantizer, its training engine, the GGUF exporter and the runtime must compute
//! alike: one definition of each, so that they cannot drift apart.

use crate::config::RopeScaling;

/// RoPE inverse frequency of rotation pair `i` of a `head_dim`-wide head: `θ^(−2i/d)`, rescaled by `scaling`.
/// In f64, so that every user rounds the same value into its own table.
pub fn rope_inv_freq(i: usize, head_dim: usize, theta: f64, scaling: RopeScaling) -> f64 {
    rope_scaled(1.0 / libm::pow(theta, 2.0 * i as f64 / head_dim as f64), scaling)
}

/// `inv_freq` rescaled by `scaling` (unchanged for `RopeScaling::None`).
pub fn rope_scaled(inv_freq: f64, scaling: RopeScaling) -> f64 {
    match scaling {
        RopeScaling::None => inv_freq,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => llama3_scale(
            inv_freq,
            f64::from(factor),
            f64::from(low_freq_factor),
            f64::from(high_freq_factor),
            f64::from(original_context),
        ),
    }
}

/// Llama 3.1's piecewise scaling of one inverse frequency (Hugging Face's `_compute_llama3_parameters`):
/// wavelengths above `original_context / low` are slowed by `factor`, those below `original_context / high`
/// kept, the band between interpolated linearly in `original_context / wavelength`.
pub fn llama3_scale(inv_freq: f64, factor: f64, low: f64, high: f64, original_context: f64) -> f64 {
    let low_wavelen = original_context / low;
    let high_wavelen = original_context / high;
    let wavelen = 2.0 * core::f64::consts::PI / inv_freq;
    if wavelen < high_wavelen {
        inv_freq
    } else if wavelen > low_wavelen {
        inv_freq / factor
    } else {
        let smooth = (original_context / wavelen - low) / (high - low);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

/// Floor of the absmean weight scale and of the absmax activation range (BitNet b1.58's `clamp_(min=1e-5)`):
/// an all-zero group or row gets this scale instead of a division by zero.
pub const QUANT_EPS: f64 = 1e-5;
/// [`QUANT_EPS`] for f32 code: the same number, rounded once.
pub const QUANT_EPS_F32: f32 = QUANT_EPS as f32;
const _: () = assert!(QUANT_EPS_F32 == 1e-5f32);

/// Largest int8 activation code: activations are scaled so that the row's absmax maps to it.
pub const INT8_ACT_MAX: f32 = 127.0;

/// BitNet b1.58's absmean ternary scale of a group of weights whose mean `|w|` is `mean_abs` (computed by the
/// caller in f64, in its own summation order).
#[inline]
pub fn absmean_scale(mean_abs: f64) -> f64 {
    mean_abs.max(QUANT_EPS)
}

/// The ternary code of weight `w` under absmean scale `scale`: `clamp(round_half_even(w / scale), −1, 1)`.
/// Divides (not multiplies by `1/scale`): `w·(1/scale)` can land exactly on a tie that `w/scale` misses.
#[inline]
pub fn ternary_code(w: f32, scale: f32) -> i8 {
    crate::blocks::round_half_even(w / scale).clamp(-1.0, 1.0) as i8
}

/// The per-token int8 activation scale `s = 127 / max(absmax, 1e-5)`; codes are `clamp(round_half_even(x·s),
/// −128, 127)`.
#[inline]
pub fn int8_act_scale(absmax: f32) -> f32 {
    INT8_ACT_MAX / absmax.max(QUANT_EPS_F32)
}
