//! The kernel interface: every hot loop of the forward pass goes through one `Kernels` table of function
//! pointers, chosen once at session creation (ggml's `type_traits` approach).
//!
//! `scalar` holds the `_generic` reference implementations: plain Rust, no intrinsics, written to be read and
//! to be matched. SIMD implementations (AVX2, AVX-512, NEON) add their own tables next to it and are picked by
//! `best()` at run time; they must give bit-identical results for the integer kernels (`quantize_i8`,
//! `dot_ternary2`, `dot_ternary3` — the sums are exact) and agree to float rounding for the float ones.
//!
//! Ternary layers use the integer path: the input row is quantized once per token to int8 (absmax, as BitNet
//! b1.58 does at training time), each output is an exact integer dot product `Σ w·q = Σ c·q − Σ q` (codes
//! `c = w + 1` as stored, `Σ q` precomputed per 32-weight chunk), and one float multiply by the weight scale
//! times the activation scale. Embedding and head matrices (int8, int4, f16, f32) use float dot products
//! against the f32 activations.
//!
//! Shapes handled by the drivers here are validated by `Model::new`; a kernel given inconsistent slices
//! computes over the common prefix (or writes NaN for a missing row) instead of panicking.

pub mod scalar;

use core::ops::Range;

use half::f16;
use tern_format::blocks::{BlockTernary2, BlockTernary3};
use tern_format::{ElementType, ScaleKind};

/// Weights per chunk of precomputed activation sums; every ternary group boundary is a multiple of it.
pub const CHUNK: usize = 32;
/// Weights per ternary block (both layouts).
pub const BLOCK: usize = 64;

/// `n` rounded up to a multiple of `m` (`m > 0`).
#[inline]
pub const fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// A weight matrix `[rows, cols]` viewed in place (`y = W·x`, `cols` is the input dimension).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub dtype: ElementType,
    pub scale: ScaleKind,
    pub rows: usize,
    pub cols: usize,
    /// Bytes of one stored row.
    pub row_bytes: usize,
    pub data: &'a [u8],
    pub scales: &'a [f32],
}

impl<'a> Matrix<'a> {
    /// Stored bytes of row `r`, if it exists.
    #[inline]
    pub fn row(&self, r: usize) -> Option<&'a [u8]> {
        let start = r.checked_mul(self.row_bytes)?;
        self.data.get(start..start.checked_add(self.row_bytes)?)
    }
}

/// Result of quantizing one activation row: dequantization factor `d = 1/s` and `Σ q`.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct ActQuant {
    pub d: f32,
    pub sum: i32,
}

/// A batch of int8-quantized activation rows (one per token).
#[derive(Clone, Copy, Debug)]
pub struct QuantizedActs<'a> {
    /// `[token][stride]`, each row zero-padded past the real columns.
    pub q: &'a [i8],
    /// Row stride of `q`: a multiple of `BLOCK`, at least the padded column count.
    pub stride: usize,
    /// `[token][stride / CHUNK]`: `Σ q` over each 32-element chunk.
    pub chunk_sums: &'a [i32],
    /// Per token: dequantization factor and total `Σ q`.
    pub quant: &'a [ActQuant],
}

/// Input of a matrix product: f32 rows, plus their int8 form when the matrix is ternary.
#[derive(Clone, Copy, Debug)]
pub struct Activations<'a> {
    /// `[token][cols]`.
    pub x: &'a [f32],
    pub cols: usize,
    pub quantized: Option<QuantizedActs<'a>>,
}

/// `out[t − tokens.start][r − rows.start] = (W·x_t)[r]` for `t` in `tokens`, `r` in `rows`.
pub type MatMulFn =
    fn(k: &Kernels, w: &Matrix<'_>, x: &Activations<'_>, tokens: Range<usize>, rows: Range<usize>, out: &mut [f32]);

/// The table of kernels one session uses.
pub struct Kernels {
    pub name: &'static str,
    /// Quantizes one row to int8 with `s = 127 / max(|x|, 1e-5)`, `q = clamp(round_half_even(x·s), −128, 127)`.
    /// `q.len()` is a multiple of `CHUNK` and at least `x.len()`; entries past `x.len()` are set to 0.
    /// `chunk_sums[i] = Σ q[32i..32i+32]` for `i < q.len() / 32`.
    pub quantize_i8: fn(x: &[f32], q: &mut [i8], chunk_sums: &mut [i32]) -> ActQuant,
    /// `Σ_i c(start + i)·x[i]` over 2-bit codes, `start` and `x.len()` multiples of `CHUNK`.
    pub dot_ternary2: fn(blocks: &[BlockTernary2], start: usize, x: &[i8]) -> i32,
    /// `Σ_i c(start + i)·x[i]` over base-3 codes, `start` and `x.len()` multiples of `CHUNK`.
    pub dot_ternary3: fn(blocks: &[BlockTernary3], start: usize, x: &[i8]) -> i32,
    /// `Σ w[i]·x[i]`, int8 weights (the per-row scale is applied by the caller).
    pub dot_int8: fn(w: &[i8], x: &[f32]) -> f32,
    /// `Σ (nibble(i) − 8)·x[i]` over `x.len()` int4 values, low nibble first (scale applied by the caller).
    pub dot_int4: fn(w: &[u8], x: &[f32]) -> f32,
    pub dot_f16: fn(w: &[f16], x: &[f32]) -> f32,
    pub dot_f32: fn(w: &[f32], x: &[f32]) -> f32,
    /// `y += a·x` (attention values).
    pub axpy_f16: fn(a: f32, x: &[f16], y: &mut [f32]),
    pub axpy_f32: fn(a: f32, x: &[f32], y: &mut [f32]),
    /// `out[t − tokens.start][r − rows.start] = (W·x_t)[r]`: the matrix product driver. A SIMD table may keep
    /// `matmul_generic` (built on the dot kernels above) or replace it with a tiled kernel.
    pub matmul: MatMulFn,
}

/// The scalar reference table.
pub static SCALAR: Kernels = Kernels {
    name: "scalar",
    quantize_i8: scalar::quantize_i8,
    dot_ternary2: scalar::dot_ternary2,
    dot_ternary3: scalar::dot_ternary3,
    dot_int8: scalar::dot_int8,
    dot_int4: scalar::dot_int4,
    dot_f16: scalar::dot_f16,
    dot_f32: scalar::dot_f32,
    axpy_f16: scalar::axpy_f16,
    axpy_f32: scalar::axpy_f32,
    matmul: matmul_generic,
};

/// Every table this CPU can run, the scalar reference first and the fastest last.
pub fn available() -> &'static [&'static Kernels] {
    static TABLES: [&Kernels; 1] = [&SCALAR];
    &TABLES
}

/// The fastest table this CPU supports (run-time dispatch point for the SIMD implementations).
pub fn best() -> &'static Kernels {
    available().last().copied().unwrap_or(&SCALAR)
}

/// Environment variable that forces a kernel table by name (read once per process, under `std`).
pub const KERNELS_ENV: &str = "TERN_KERNELS";

/// The table models use: the one `TERN_KERNELS` names (under `std`), else `best()`. Errors when the variable
/// names a table this CPU cannot run, rather than silently running another.
pub fn selected() -> Result<&'static Kernels, crate::RuntimeError> {
    #[cfg(feature = "std")]
    if let Ok(name) = std::env::var(KERNELS_ENV) {
        return by_name(name.trim()).ok_or(crate::RuntimeError::KernelsUnavailable);
    }
    Ok(best())
}

/// The available table called `name`, if this CPU can run it.
pub fn by_name(name: &str) -> Option<&'static Kernels> {
    available().iter().copied().find(|k| k.name == name)
}

/// Whether `matmul` needs the int8 form of its input for this element type.
pub fn needs_quantized(dtype: ElementType) -> bool {
    dtype.is_ternary()
}

/// Quantizes `n` rows of `x` (`[token][cols]`) into the int8 buffers (`q`: `[token][stride]`, `chunk_sums`:
/// `[token][stride / CHUNK]`, `quant`: `[token]`).
pub fn quantize_rows(
    k: &Kernels,
    x: &[f32],
    cols: usize,
    n: usize,
    stride: usize,
    q: &mut [i8],
    chunk_sums: &mut [i32],
    quant: &mut [ActQuant],
) {
    if cols == 0 || stride == 0 {
        return;
    }
    let rows = x
        .chunks_exact(cols)
        .zip(q.chunks_exact_mut(stride))
        .zip(chunk_sums.chunks_exact_mut(stride / CHUNK))
        .zip(quant.iter_mut())
        .take(n);
    for (((xr, qr), cs), out) in rows {
        *out = (k.quantize_i8)(xr, qr, cs);
    }
}

/// Reference matrix-product driver: for each row of `W` in `rows`, for each token in `tokens`, one dot product
/// (rows outer, so a weight row is reused from cache by every token of the batch).
pub fn matmul_generic(
    k: &Kernels,
    w: &Matrix<'_>,
    x: &Activations<'_>,
    tokens: Range<usize>,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let width = rows.len();
    for (ri, r) in rows.enumerate() {
        let Some(row) = w.row(r) else {
            for t in 0..tokens.len() {
                if let Some(o) = out.get_mut(t * width + ri) {
                    *o = f32::NAN;
                }
            }
            continue;
        };
        for (ti, t) in tokens.clone().enumerate() {
            let y = row_dot(k, w, r, row, x, t);
            if let Some(o) = out.get_mut(ti * width + ri) {
                *o = y;
            }
        }
    }
}

/// Output `r` of `W·x_t`, given row `r`'s bytes.
#[inline]
fn row_dot(k: &Kernels, w: &Matrix<'_>, r: usize, row: &[u8], x: &Activations<'_>, t: usize) -> f32 {
    let cols = w.cols;
    match w.dtype {
        ElementType::Ternary2 | ElementType::Ternary3 => {
            let Some(qa) = x.quantized else { return f32::NAN };
            let stride = qa.stride;
            let nchunks = stride / CHUNK;
            let (Some(q), Some(cs), Some(aq)) = (
                qa.q.get(t * stride..(t + 1) * stride),
                qa.chunk_sums.get(t * nchunks..(t + 1) * nchunks),
                qa.quant.get(t),
            ) else {
                return f32::NAN;
            };
            ternary_row_dot(k, w, r, row, q, cs, *aq)
        }
        ElementType::Int8 => {
            let Some(xr) = x.x.get(t * cols..(t + 1) * cols) else {
                return f32::NAN;
            };
            let s = w.scales.get(r).copied().unwrap_or(f32::NAN);
            (k.dot_int8)(bytemuck::cast_slice(row), xr) * s
        }
        ElementType::Int4 => {
            let Some(xr) = x.x.get(t * cols..(t + 1) * cols) else {
                return f32::NAN;
            };
            let ScaleKind::PerGroup(g) = w.scale else {
                return f32::NAN;
            };
            let g = g as usize;
            let ng = cols.div_ceil(g);
            let scales = w.scales.get(r * ng..(r + 1) * ng).unwrap_or(&[]);
            let mut acc = 0.0f32;
            for ((xs, ws), &s) in xr.chunks(g).zip(row.chunks(g / 2)).zip(scales) {
                acc += (k.dot_int4)(ws, xs) * s;
            }
            acc
        }
        ElementType::F16 => {
            let Some(xr) = x.x.get(t * cols..(t + 1) * cols) else {
                return f32::NAN;
            };
            match bytemuck::try_cast_slice::<u8, f16>(row) {
                Ok(wr) => (k.dot_f16)(wr, xr),
                Err(_) => f32::NAN,
            }
        }
        ElementType::F32 => {
            let Some(xr) = x.x.get(t * cols..(t + 1) * cols) else {
                return f32::NAN;
            };
            match bytemuck::try_cast_slice::<u8, f32>(row) {
                Ok(wr) => (k.dot_f32)(wr, xr),
                Err(_) => f32::NAN,
            }
        }
    }
}

/// Ternary row times one quantized activation row: `(Σ c·q − Σ q)` per scale group, times the weight scale,
/// times the activation's `d`.
#[inline]
fn ternary_row_dot(k: &Kernels, w: &Matrix<'_>, r: usize, row: &[u8], q: &[i8], cs: &[i32], aq: ActQuant) -> f32 {
    let padded = round_up(w.cols, BLOCK);
    let Some(q) = q.get(..padded) else { return f32::NAN };
    let blocks = match w.dtype {
        ElementType::Ternary2 => bytemuck::try_cast_slice(row).map(TernaryRow::Two),
        _ => bytemuck::try_cast_slice(row).map(TernaryRow::Three),
    };
    let Ok(blocks) = blocks else { return f32::NAN };
    let dot = |start: usize, xs: &[i8]| -> i32 {
        match blocks {
            TernaryRow::Two(b) => (k.dot_ternary2)(b, start, xs),
            TernaryRow::Three(b) => (k.dot_ternary3)(b, start, xs),
        }
    };
    match w.scale {
        ScaleKind::PerTensor | ScaleKind::PerRow => {
            let s = match w.scale {
                ScaleKind::PerTensor => w.scales.first(),
                _ => w.scales.get(r),
            };
            let s = s.copied().unwrap_or(f32::NAN);
            let acc = dot(0, q) - aq.sum;
            acc as f32 * (s * aq.d)
        }
        ScaleKind::PerGroup(g) => {
            let g = g as usize;
            let ng = w.cols.div_ceil(g);
            let scales = w.scales.get(r * ng..(r + 1) * ng).unwrap_or(&[]);
            let mut acc = 0.0f32;
            for (gi, &s) in scales.iter().enumerate() {
                let start = gi * g;
                let end = round_up((start + g).min(w.cols), CHUNK);
                let (Some(xs), Some(sums)) = (q.get(start..end), cs.get(start / CHUNK..end / CHUNK)) else {
                    return f32::NAN;
                };
                let sum: i32 = sums.iter().sum();
                acc += (dot(start, xs) - sum) as f32 * s;
            }
            acc * aq.d
        }
        ScaleKind::None => f32::NAN,
    }
}

#[derive(Clone, Copy)]
enum TernaryRow<'a> {
    Two(&'a [BlockTernary2]),
    Three(&'a [BlockTernary3]),
}
