//! The kernel interface: every hot loop of the forward pass goes through one `Kernels` table, chosen once per
//! model (`Model::new` calls `selected()`), in the manner of ggml's `type_traits`.
//!
//! Per element type a table gives (`MatKernels`):
//! - `act`: the activation format the type's kernels read (ggml's `vec_dot_type`). Ternary, int8 and int4
//!   matrices read int8 rows (`quantize_i8`: per-token absmax, as BitNet b1.58 trains); f16 and f32 matrices
//!   read the f32 rows.
//! - `gemv`: the matrix-vector product for one token (decode);
//! - `gemm`: the matrix-matrix tile for a batch of tokens (prefill), which loads each piece of weights once and
//!   applies it to every token of the tile.
//!
//! Both apply the matrix's scales themselves, per tensor, row or group, so the only indirect call is one per
//! product. The results are defined by the scalar table (`scalar.rs`, plain Rust, the `_generic` reference):
//! for the int8-activation types each output is an exact integer sum per scale span followed by a fixed
//! sequence of f32 operations (see `scalar::int_row`), so every table must give the same bits; for f16/f32
//! matrices and the attention loops (float sums) tables agree to f32 rounding.
//!
//! Tables: `scalar` everywhere; `avx2` (AVX2 + FMA + F16C) and `avx512` (AVX-512 F/BW/VL + VNNI) on x86-64;
//! `neon` and `neon-dotprod` on aarch64. Under `std` the CPU is probed at run time (`available()`), without it
//! the tables the build's `target_feature`s allow are used. `TERN_KERNELS=name` forces one.
//!
//! Shapes handled here are validated by `Model::new`; a kernel given inconsistent slices computes over what
//! exists (or writes NaN for a missing row) instead of panicking.

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod scalar;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd;
mod tiles;
#[cfg(target_arch = "x86_64")]
mod x86;

use core::fmt;
use core::ops::Range;

use half::f16;
use tern_format::{ElementType, ScaleKind};

/// Weights per chunk of precomputed activation sums; every scale-group boundary is a multiple of it.
pub const CHUNK: usize = 32;
/// Weights per ternary block (both layouts).
pub const BLOCK: usize = 64;
/// Widest input (columns) a matrix may have: keeps every exact integer sum inside i32 (|c·q| ≤ 254 for
/// ternary codes, |w·q| ≤ 128·127 for int8) — far above any hidden or FFN size in use (Llama 405B: 53248).
pub const MAX_COLS: usize = 1 << 17;

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

    /// The scales of row `r` (one for per-tensor and per-row, `⌈cols/G⌉` for per-group; empty if missing).
    #[inline]
    pub fn row_scales(&self, r: usize) -> &'a [f32] {
        let range = match self.scale {
            ScaleKind::None => 0..0,
            ScaleKind::PerTensor => 0..1,
            ScaleKind::PerRow => r..r + 1,
            ScaleKind::PerGroup(g) => {
                let ng = self.cols.div_ceil(g as usize);
                r * ng..(r + 1) * ng
            }
        };
        self.scales.get(range).unwrap_or(&[])
    }

    /// Width of one scale span in weights: the group size, or `padded_cols` for one scale per row.
    #[inline]
    pub fn span(&self) -> usize {
        match self.scale {
            ScaleKind::PerGroup(g) => g as usize,
            _ => self.padded_cols(),
        }
    }

    /// Columns rounded up to whole blocks: the length of the (zero-padded) int8 activation row a kernel may read.
    #[inline]
    pub fn padded_cols(&self) -> usize {
        round_up(self.cols, BLOCK)
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

/// One token's int8 row.
#[derive(Clone, Copy, Debug)]
pub struct QRow<'a> {
    /// `stride` values, zero past the real columns.
    pub q: &'a [i8],
    pub chunk_sums: &'a [i32],
    pub quant: ActQuant,
}

impl<'a> QuantizedActs<'a> {
    /// Token `t`'s row, if present.
    #[inline]
    pub fn row(&self, t: usize) -> Option<QRow<'a>> {
        let nc = self.stride / CHUNK;
        Some(QRow {
            q: self.q.get(t * self.stride..(t + 1) * self.stride)?,
            chunk_sums: self.chunk_sums.get(t * nc..(t + 1) * nc)?,
            quant: *self.quant.get(t)?,
        })
    }
}

/// Input of a matrix product: f32 rows, plus their int8 form when a matrix reads int8.
#[derive(Clone, Copy, Debug)]
pub struct Activations<'a> {
    /// `[token][cols]`.
    pub x: &'a [f32],
    pub cols: usize,
    pub quantized: Option<QuantizedActs<'a>>,
}

impl<'a> Activations<'a> {
    /// Token `t`'s f32 row, if present.
    #[inline]
    pub fn f32_row(&self, t: usize) -> Option<&'a [f32]> {
        self.x.get(t * self.cols..(t + 1) * self.cols)
    }
    /// Token `t`'s int8 row, if quantized.
    #[inline]
    pub fn int8_row(&self, t: usize) -> Option<QRow<'a>> {
        self.quantized?.row(t)
    }
}

/// The activation format a matrix kernel reads (ggml's `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    /// The f32 rows as they are.
    F32,
    /// Per-token int8 rows with chunk sums (`Kernels::quantize_i8`).
    Int8,
}

/// `out[r − rows.start] = (W·x_t)[r]` for one token `t`.
pub type GemvFn = fn(w: &Matrix<'_>, x: &Activations<'_>, t: usize, rows: Range<usize>, out: &mut [f32]);
/// `out[(t − tokens.start)·rows.len() + r − rows.start] = (W·x_t)[r]`.
pub type GemmFn = fn(w: &Matrix<'_>, x: &Activations<'_>, tokens: Range<usize>, rows: Range<usize>, out: &mut [f32]);

/// One element type's kernels in a table.
#[derive(Clone, Copy)]
pub struct MatKernels {
    pub act: ActFormat,
    pub gemv: GemvFn,
    pub gemm: GemmFn,
}

/// Quantizes one row to int8 with `s = 127 / max(|x|, 1e-5)`, `q = clamp(round_half_even(x·s), −128, 127)`.
/// `q.len()` is a multiple of `CHUNK` and at least `x.len()`; entries past `x.len()` are set to 0.
/// `chunk_sums[i] = Σ q[32i..32i+32]` for `i < q.len() / 32`.
pub type QuantizeFn = fn(x: &[f32], q: &mut [i8], chunk_sums: &mut [i32]) -> ActQuant;

/// The table of kernels a model runs with.
pub struct Kernels {
    pub name: &'static str,
    pub quantize_i8: QuantizeFn,
    pub ternary2: MatKernels,
    pub ternary3: MatKernels,
    pub int8: MatKernels,
    pub int4: MatKernels,
    pub f16: MatKernels,
    pub f32: MatKernels,
    /// Attention: `Σ k[i]·q[i]` over a cached key, and `y += a·v` over a cached value.
    pub dot_f16: fn(w: &[f16], x: &[f32]) -> f32,
    pub dot_f32: fn(w: &[f32], x: &[f32]) -> f32,
    pub axpy_f16: fn(a: f32, x: &[f16], y: &mut [f32]),
    pub axpy_f32: fn(a: f32, x: &[f32], y: &mut [f32]),
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kernels({})", self.name)
    }
}

impl Kernels {
    /// The kernels of matrices stored as `dtype`.
    #[inline]
    pub fn for_type(&self, dtype: ElementType) -> &MatKernels {
        match dtype {
            ElementType::Ternary2 => &self.ternary2,
            ElementType::Ternary3 => &self.ternary3,
            ElementType::Int8 => &self.int8,
            ElementType::Int4 => &self.int4,
            ElementType::F16 => &self.f16,
            ElementType::F32 => &self.f32,
        }
    }

    /// The activation format `dtype`'s kernels read.
    #[inline]
    pub fn act_format(&self, dtype: ElementType) -> ActFormat {
        self.for_type(dtype).act
    }
}

/// `out[t − tokens.start][r − rows.start] = (W·x_t)[r]`: the matrix-vector kernel for one token, the tile for
/// more.
pub fn matmul(
    k: &Kernels,
    w: &Matrix<'_>,
    x: &Activations<'_>,
    tokens: Range<usize>,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let mk = k.for_type(w.dtype);
    if tokens.len() == 1 {
        (mk.gemv)(w, x, tokens.start, rows, out)
    } else {
        (mk.gemm)(w, x, tokens, rows, out)
    }
}

const SCALAR_INT8: MatKernels = MatKernels {
    act: ActFormat::Int8,
    gemv: scalar::gemv,
    gemm: scalar::gemm,
};
const SCALAR_F32: MatKernels = MatKernels {
    act: ActFormat::F32,
    gemv: scalar::gemv,
    gemm: scalar::gemm,
};

/// The scalar reference table.
pub static SCALAR: Kernels = Kernels {
    name: "scalar",
    quantize_i8: scalar::quantize_i8,
    ternary2: SCALAR_INT8,
    ternary3: SCALAR_INT8,
    int8: SCALAR_INT8,
    int4: SCALAR_INT8,
    f16: SCALAR_F32,
    f32: SCALAR_F32,
    dot_f16: scalar::dot_f16,
    dot_f32: scalar::dot_f32,
    axpy_f16: scalar::axpy_f16,
    axpy_f32: scalar::axpy_f32,
};

/// Names of every table built for this target, whether or not this CPU can run it.
#[cfg(target_arch = "x86_64")]
pub const TABLE_NAMES: &[&str] = x86::NAMES;
#[cfg(target_arch = "aarch64")]
pub const TABLE_NAMES: &[&str] = aarch64::NAMES;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const TABLE_NAMES: &[&str] = &["scalar"];

/// Every table this CPU can run, the scalar reference first and the fastest last.
pub fn available() -> &'static [&'static Kernels] {
    #[cfg(target_arch = "x86_64")]
    {
        x86::available()
    }
    #[cfg(target_arch = "aarch64")]
    {
        aarch64::available()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        static TABLES: [&Kernels; 1] = [&SCALAR];
        &TABLES
    }
}

/// The fastest table this CPU supports.
pub fn best() -> &'static Kernels {
    available().last().copied().unwrap_or(&SCALAR)
}

/// Environment variable that forces a kernel table by name (under `std`).
pub const KERNELS_ENV: &str = "TERN_KERNELS";

/// The table models use: the one `TERN_KERNELS` names (under `std`), else `best()`. Errors when the variable
/// names a table this CPU cannot run, rather than silently running another; set but empty counts as unset
/// (`TERN_KERNELS= cmd`, a shell's way to clear it for one command).
pub fn selected() -> Result<&'static Kernels, crate::RuntimeError> {
    #[cfg(feature = "std")]
    if let Ok(name) = std::env::var(KERNELS_ENV) {
        if !name.trim().is_empty() {
            return by_name(name.trim()).ok_or(crate::RuntimeError::KernelsUnavailable);
        }
    }
    Ok(best())
}

/// The available table called `name`, if this CPU can run it.
pub fn by_name(name: &str) -> Option<&'static Kernels> {
    available().iter().copied().find(|k| k.name == name)
}

/// Quantizes `n` rows of `x` (`[token][cols]`) into the int8 buffers (`q`: `[token][stride]`, `chunk_sums`:
/// `[token][stride / CHUNK]`, `quant`: `[token]`).
#[allow(clippy::too_many_arguments)]
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
