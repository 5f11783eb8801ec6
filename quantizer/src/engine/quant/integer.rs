//! The integer weight quantizers of mixed precision (CPU kernels): int8 per row and int4 per group, computed by the
//! `.tern` format's own encoders (`tern_format::blocks::quantize_int8_row` / `quantize_int4_row`) and decoded
//! back, so the training forward computes with exactly the values the exported file will hold. Backward: the
//! straight-through identity.

use rayon::prelude::*;
use tern_format::blocks::{int4_value, quantize_int4_row, quantize_int8_row};

use super::LinearPrecision;
use crate::engine::scalar::Float;

/// `out = dequantize(quantize(w))` row by row (`cols` per row) at `precision` (an integer one).
pub(crate) fn quantize_cpu<T: Float>(out: &mut [T], w: &[T], cols: usize, precision: LinearPrecision) {
    out.par_chunks_mut(cols).zip(w.par_chunks(cols)).for_each(|(o, w)| {
        let row: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
        match precision {
            LinearPrecision::Int8 => {
                let mut q = vec![0i8; cols];
                let s = quantize_int8_row(&row, &mut q);
                for (o, &q) in o.iter_mut().zip(&q) {
                    *o = T::from_f32(f32::from(q) * s);
                }
            }
            LinearPrecision::Int4 { group } => {
                let g = group as usize;
                let mut bytes = vec![0u8; cols.div_ceil(2)];
                let mut scales = vec![0f32; cols.div_ceil(g)];
                quantize_int4_row(&row, g, &mut bytes, &mut scales);
                for (i, o) in o.iter_mut().enumerate() {
                    *o = T::from_f32(f32::from(int4_value(&bytes, i)) * scales[i / g]);
                }
            }
            LinearPrecision::Ternary => o.copy_from_slice(w),
        }
    });
}
