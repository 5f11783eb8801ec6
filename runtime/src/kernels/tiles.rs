//! The matrix-vector and tile drivers shared by the SIMD tables for int8-activation matrices (ternary 2-bit
//! and base-3, int8, int4).
//!
//! A table supplies one primitive per element type (`IntSpans::sums`): the exact i32 sums `Σ code·q` of an
//! `R × T` tile (R weight rows, T tokens) over one scale span, decoding each piece of weights once and
//! applying it to every token of the tile. The driver here validates the shapes, walks rows and tokens in tiles,
//! walks the scale spans and applies the same f32 epilogue as the scalar reference (`epilogue_*`), so every
//! table gives the scalar table's bits. Anything it cannot prove in bounds goes to the scalar code instead.
#![allow(unsafe_code)] // calls the tables' `IntSpans::sums` under the contract checked here

use core::ops::Range;

use tern_format::{ElementType, ScaleKind};

use super::{round_up, scalar, Activations, Matrix, QRow, QuantizedActs, CHUNK};

/// The f32 epilogue of an output with one scale (per tensor or per row): `v` is the exact span sum minus the
/// codes' offset, `s` the weight scale, `d` the activation's dequantization factor.
#[inline(always)]
pub(crate) fn epilogue_single(v: i32, s: f32, d: f32) -> f32 {
    v as f32 * (s * d)
}

/// One group's contribution to an output with per-group scales (accumulated in group order from 0.0, then
/// multiplied by `d`).
#[inline(always)]
pub(crate) fn epilogue_group(acc: f32, v: i32, s: f32) -> f32 {
    acc + v as f32 * s
}

/// What the codes' offset contributes to a span sum, per unit of `Σ q` over the span: ternary codes are
/// `w + 1`, int4 nibbles `w + 8`, int8 values are the weights.
#[inline(always)]
pub(crate) fn offset_per_qsum(dtype: ElementType) -> i32 {
    match dtype {
        ElementType::Ternary2 | ElementType::Ternary3 => 1,
        ElementType::Int4 => 8,
        _ => 0,
    }
}

/// A table's exact integer kernel for one int8-activation element type.
pub(crate) trait IntSpans {
    /// `out[i][j] = Σ_{c ∈ start..end} code(row i, c) · q_j[c]` (wrapping i32) for rows starting at byte
    /// offsets `rows[i]` of `data`.
    ///
    /// # Safety
    /// The CPU supports the table's instructions; `start` and `end` are multiples of `CHUNK` with
    /// `end ≤ round_up(cols, BLOCK)`; every `rows[i] + row_bytes(cols) ≤ data.len()`; every `q[j]` holds at
    /// least `round_up(cols, BLOCK)` values, zero past `cols`. Implementations may read weight bytes past a
    /// row's end (they meet zero activations) but never past `data`.
    unsafe fn sums<const R: usize, const T: usize>(
        data: &[u8],
        rows: &[usize; R],
        q: &[&[i8]; T],
        cols: usize,
        start: usize,
        end: usize,
    ) -> [[i32; T]; R];
}

/// Whether the driver may hand this matrix and these activations to a table's `sums` (and use each token's
/// total `Σ q` as the sum over the matrix's padded row: the activations are exactly `cols` wide).
fn checked(w: &Matrix<'_>, x: &Activations<'_>, qa: &QuantizedActs<'_>) -> bool {
    let row_bytes = w
        .dtype
        .row_bytes(w.cols as u64)
        .ok()
        .and_then(|b| usize::try_from(b).ok());
    row_bytes == Some(w.row_bytes)
        && x.cols == w.cols
        && w.rows.checked_mul(w.row_bytes).is_some_and(|n| n <= w.data.len())
        && qa.stride >= w.padded_cols()
        && qa.stride % CHUNK == 0
        && matches!(
            w.dtype,
            ElementType::Ternary2 | ElementType::Ternary3 | ElementType::Int8 | ElementType::Int4
        )
}

/// `Σ q` over `start..end` of one token (from its chunk sums).
#[inline]
fn qsum(q: &QRow<'_>, start: usize, end: usize) -> i32 {
    q.chunk_sums
        .get(start / CHUNK..end / CHUNK)
        .unwrap_or(&[])
        .iter()
        .fold(0i32, |a, &b| a.wrapping_add(b))
}

/// One `R × T` tile: rows `r0..r0 + R`, the given tokens; writes `out[j·width + i]`.
#[inline]
fn tile<S: IntSpans, const R: usize, const T: usize>(
    w: &Matrix<'_>,
    qs: &[QRow<'_>; T],
    r0: usize,
    out: &mut [f32],
    out_at: impl Fn(usize, usize) -> usize,
) {
    let mut rows = [0usize; R];
    let mut q: [&[i8]; T] = [&[]; T];
    for (i, r) in rows.iter_mut().enumerate() {
        *r = (r0 + i) * w.row_bytes;
    }
    for (qj, row) in q.iter_mut().zip(qs) {
        *qj = row.q;
    }
    let off = offset_per_qsum(w.dtype);
    let padded = w.padded_cols();
    let mut set = |i: usize, j: usize, v: f32| {
        if let Some(o) = out.get_mut(out_at(i, j)) {
            *o = v;
        }
    };
    match w.scale {
        ScaleKind::PerGroup(g) => {
            let g = g as usize;
            let mut acc = [[0.0f32; T]; R];
            let ng = w.cols.div_ceil(g.max(1));
            for gi in 0..ng {
                let start = gi * g;
                let end = round_up((start + g).min(w.cols), CHUNK);
                // SAFETY: `checked` holds (rows in `data`, activation rows of `stride ≥ padded` values,
                // zero-padded by `quantize_i8`), the span is CHUNK-aligned and ends by `padded`, and the table
                // was only handed out after its instructions were detected.
                let sums = unsafe { S::sums::<R, T>(w.data, &rows, &q, w.cols, start, end) };
                let mut o = [0i32; T];
                for (oj, qj) in o.iter_mut().zip(qs) {
                    *oj = qsum(qj, start, end).wrapping_mul(off);
                }
                for (i, (acc_i, sums_i)) in acc.iter_mut().zip(&sums).enumerate() {
                    let Some(&s) = w.scales.get((r0 + i) * ng + gi) else {
                        continue;
                    };
                    for ((a, &v), &oj) in acc_i.iter_mut().zip(sums_i).zip(&o) {
                        *a = epilogue_group(*a, v.wrapping_sub(oj), s);
                    }
                }
            }
            for (i, acc_i) in acc.iter().enumerate() {
                for (j, &a) in acc_i.iter().enumerate() {
                    set(i, j, a * qs[j].quant.d);
                }
            }
        }
        ScaleKind::PerTensor | ScaleKind::PerRow => {
            // SAFETY: as above, with the whole padded row as the span.
            let sums = unsafe { S::sums::<R, T>(w.data, &rows, &q, w.cols, 0, padded) };
            // `Σ q` over the padded row is the token's total (the row is zero past `cols`).
            let mut o = [0i32; T];
            for (oj, qj) in o.iter_mut().zip(qs) {
                *oj = qj.quant.sum.wrapping_mul(off);
            }
            let per_row = w.scale == ScaleKind::PerRow;
            for (i, sums_i) in sums.iter().enumerate() {
                let s = w
                    .scales
                    .get(if per_row { r0 + i } else { 0 })
                    .copied()
                    .unwrap_or(f32::NAN);
                for (j, (&v, &oj)) in sums_i.iter().zip(&o).enumerate() {
                    set(i, j, epilogue_single(v.wrapping_sub(oj), s, qs[j].quant.d));
                }
            }
        }
        ScaleKind::None => {
            for i in 0..R {
                for j in 0..T {
                    set(i, j, f32::NAN);
                }
            }
        }
    }
}

/// Runs rows `r0..r0 + R` for every token of `tokens` in tiles of up to `T` tokens.
#[allow(clippy::too_many_arguments)]
fn row_tiles<S: IntSpans, const R: usize, const T: usize>(
    w: &Matrix<'_>,
    qa: &QuantizedActs<'_>,
    r0: usize,
    tokens: Range<usize>,
    out: &mut [f32],
    rows_start: usize,
    width: usize,
) {
    let mut t = tokens.start;
    while t < tokens.end {
        let m = (tokens.end - t).min(T).min(6);
        let base = t - tokens.start;
        let ri = r0 - rows_start;
        let at = move |i: usize, j: usize| (base + j) * width + ri + i;
        macro_rules! go {
            ($n:literal) => {{
                let qs: [Option<QRow<'_>>; $n] = core::array::from_fn(|j| qa.row(t + j));
                if qs.iter().all(Option::is_some) {
                    let qs: [QRow<'_>; $n] = core::array::from_fn(|j| qs[j].unwrap_or(EMPTY_ROW));
                    tile::<S, R, $n>(w, &qs, r0, out, at);
                } else {
                    for j in 0..$n {
                        for i in 0..R {
                            if let Some(o) = out.get_mut(at(i, j)) {
                                *o = f32::NAN;
                            }
                        }
                    }
                }
            }};
        }
        match m {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            _ => go!(6),
        }
        t += m;
    }
}

const EMPTY_ROW: QRow<'static> = QRow {
    q: &[],
    chunk_sums: &[],
    quant: super::ActQuant { d: f32::NAN, sum: 0 },
};

/// The tile entry: `out[(t − tokens.start)·rows.len() + r − rows.start] = (W·x_t)[r]`, rows in tiles of `R`
/// (then single rows), tokens in tiles of up to `T ≤ 6`.
pub(crate) fn gemm<S: IntSpans, const R: usize, const T: usize>(
    w: &Matrix<'_>,
    x: &Activations<'_>,
    tokens: Range<usize>,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let Some(qa) = x.quantized.filter(|qa| checked(w, x, qa) && rows.end <= w.rows) else {
        return scalar::gemm(w, x, tokens, rows, out);
    };
    let width = rows.len();
    let mut r = rows.start;
    while r + R <= rows.end {
        row_tiles::<S, R, T>(w, &qa, r, tokens.clone(), out, rows.start, width);
        r += R;
    }
    while r < rows.end {
        row_tiles::<S, 1, T>(w, &qa, r, tokens.clone(), out, rows.start, width);
        r += 1;
    }
}

/// The matrix-vector entry: one token, rows in tiles of `R`.
pub(crate) fn gemv<S: IntSpans, const R: usize>(
    w: &Matrix<'_>,
    x: &Activations<'_>,
    t: usize,
    rows: Range<usize>,
    out: &mut [f32],
) {
    gemm::<S, R, 1>(w, x, t..t + 1, rows, out)
}

/// Row `r` of an f16 or f32 matrix times token `t`'s f32 row, with a table's float dot products.
#[inline]
fn float_value(
    w: &Matrix<'_>,
    x: &Activations<'_>,
    t: usize,
    r: usize,
    dot_f16: fn(&[half::f16], &[f32]) -> f32,
    dot_f32: fn(&[f32], &[f32]) -> f32,
) -> f32 {
    let (Some(row), Some(xr)) = (w.row(r), x.f32_row(t)) else {
        return f32::NAN;
    };
    match w.dtype {
        ElementType::F16 => bytemuck::try_cast_slice(row).map_or(f32::NAN, |wr| dot_f16(wr, xr)),
        ElementType::F32 => bytemuck::try_cast_slice(row).map_or(f32::NAN, |wr| dot_f32(wr, xr)),
        _ => f32::NAN,
    }
}

/// The tile entry for f16/f32 matrices: rows outer, tokens inner, one float dot per output.
pub(crate) fn float_gemm(
    w: &Matrix<'_>,
    x: &Activations<'_>,
    tokens: Range<usize>,
    rows: Range<usize>,
    out: &mut [f32],
    dot_f16: fn(&[half::f16], &[f32]) -> f32,
    dot_f32: fn(&[f32], &[f32]) -> f32,
) {
    let width = rows.len();
    for (ri, r) in rows.enumerate() {
        for (ti, t) in tokens.clone().enumerate() {
            if let Some(o) = out.get_mut(ti * width + ri) {
                *o = float_value(w, x, t, r, dot_f16, dot_f32);
            }
        }
    }
}
