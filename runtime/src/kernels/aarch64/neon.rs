//! The NEON tables: `neon` (base AArch64) and `neon-dotprod` (with `sdot`).
//!
//! Int8-activation matrices: each 64-weight block is decoded once into four vectors of 16 codes in the
//! activations' order (2-bit: shifts and a mask; base-3: a table lookup of each position's byte, a wrapping
//! byte multiply by its power of 3 and two compares for `(b·3) >> 8`; int4: masks and a zip) and applied to
//! every token of the tile. With the dot-product extension: `sdot` (four i8 products summed into each i32
//! lane; codes ≤ 15 and int8 weights are both valid signed bytes), exact. Without it: `smull` to i16 (one
//! product of two i8 always fits) and `sadalp` into i32, exact too.
//!
//! `sdot` and the f16 → f32 conversion (`fcvtl`) are written as inline assembly: their intrinsics are not
//! stable in Rust yet (`vdotq_s32`, `vcvt_f32_f16`), the instructions are.

use core::arch::aarch64::*;
use core::arch::asm;

use half::f16;

use super::super::tiles::{self, IntSpans};
use super::super::{scalar, simd, ActFormat, ActQuant, Activations, Kernels, MatKernels, Matrix, BLOCK, CHUNK};

/// Rows × tokens of the prefill tile (8 accumulators, 8 activation vectors and 4 code vectors of 32).
const GEMM_ROWS: usize = 4;
const GEMM_TOKENS: usize = 2;
const GEMV_ROWS: usize = 4;

macro_rules! int_kernels {
    ($spans:ty) => {
        MatKernels {
            act: ActFormat::Int8,
            gemv: tiles::gemv::<$spans, GEMV_ROWS>,
            gemm: tiles::gemm::<$spans, GEMM_ROWS, GEMM_TOKENS>,
        }
    };
}

const FLOAT_KERNELS: MatKernels = MatKernels {
    act: ActFormat::F32,
    gemv: gemv_float,
    gemm: gemm_float,
};

pub(in crate::kernels) static TABLE: Kernels = TABLE_VALUE;

pub(in crate::kernels) static DOTPROD_TABLE: Kernels = Kernels {
    name: "neon-dotprod",
    ternary2: int_kernels!(Spans<Ternary2, Sdot>),
    ternary3: int_kernels!(Spans<Ternary3, Sdot>),
    int8: int_kernels!(Spans<Int8, Sdot>),
    int4: int_kernels!(Spans<Int4, Sdot>),
    ..TABLE_VALUE
};

/// The `neon` table's value, which the dot-product table starts from.
const TABLE_VALUE: Kernels = Kernels {
    name: "neon",
    quantize_i8,
    ternary2: int_kernels!(Spans<Ternary2, Widen>),
    ternary3: int_kernels!(Spans<Ternary3, Widen>),
    int8: int_kernels!(Spans<Int8, Widen>),
    int4: int_kernels!(Spans<Int4, Widen>),
    f16: FLOAT_KERNELS,
    f32: FLOAT_KERNELS,
    dot_f16,
    dot_f32,
    axpy_f16,
    axpy_f32,
};

// ----------------------------------------------------------------------------------------------------------
// Activation quantization.

fn quantize_i8(x: &[f32], q: &mut [i8], chunk_sums: &mut [i32]) -> ActQuant {
    // SAFETY: the NEON tables are handed out only on CPUs with NEON (aarch64::available).
    unsafe { quantize_i8_neon(x, q, chunk_sums) }
}

/// `max |x|`, NaNs ignored (`fmaxnm`, like `f32::max`).
#[target_feature(enable = "neon")]
unsafe fn absmax(x: &[f32]) -> f32 {
    let mut m = vdupq_n_f32(0.0);
    let chunks = x.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds 4 floats.
        m = vmaxnmq_f32(m, vabsq_f32(unsafe { vld1q_f32(c.as_ptr()) }));
    }
    scalar::absmax(tail).max(vmaxnmvq_f32(m))
}

#[target_feature(enable = "neon")]
unsafe fn quantize_i8_neon(x: &[f32], q: &mut [i8], chunk_sums: &mut [i32]) -> ActQuant {
    // SAFETY: same features as this function.
    let s = scalar::act_scale(unsafe { absmax(x) });
    let mut sum = 0i32;
    for (c, (qc, cs)) in q.chunks_mut(CHUNK).zip(chunk_sums.iter_mut()).enumerate() {
        let xs = x.get(c * CHUNK..).unwrap_or(&[]);
        *cs = if xs.len() >= CHUNK && qc.len() == CHUNK {
            let mut total = 0i32;
            for h in 0..2 {
                // `fcvtns` rounds to nearest, ties to even (as `round_half_even`), gives 0 for NaN and
                // saturates; the narrowing moves saturate to i8: exactly `scalar::quantize_chunk`.
                // SAFETY: 32 floats at `xs`, 32 bytes at `qc`.
                unsafe {
                    let p = xs.as_ptr().add(16 * h);
                    let i0 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p), s));
                    let i1 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p.add(4)), s));
                    let i2 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p.add(8)), s));
                    let i3 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p.add(12)), s));
                    let a = vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1));
                    let b = vcombine_s16(vqmovn_s32(i2), vqmovn_s32(i3));
                    let v = vcombine_s8(vqmovn_s16(a), vqmovn_s16(b));
                    vst1q_s8(qc.as_mut_ptr().add(16 * h), v);
                    total += i32::from(vaddlvq_s8(v));
                }
            }
            total
        } else {
            scalar::quantize_chunk(xs, s, qc)
        };
        sum = sum.wrapping_add(*cs);
    }
    ActQuant { d: 1.0 / s, sum }
}

// ----------------------------------------------------------------------------------------------------------
// Int8-activation matrices.

/// How one element type's 64-element blocks are decoded.
trait Block {
    /// Bytes of one stored block.
    const BYTES: usize;
    /// Bytes a decode reads from the block's start.
    const READ: usize;
    /// The block's 64 codes as four vectors of 16 (elements 0..16, …, 48..64), as signed bytes (codes are
    /// at most 15, int8 weights are signed).
    ///
    /// # Safety
    /// NEON is available and `READ` bytes are readable at `p`.
    unsafe fn decode(p: *const u8) -> [int8x16_t; 4];
}

/// How 16 codes meet 16 activations.
trait Dot {
    /// Needs (and is compiled with) the dot-product extension.
    const DOTPROD: bool;
    /// `acc + Σ c·x` in i32 lanes.
    ///
    /// # Safety
    /// The instructions of the implementation are available.
    unsafe fn dot(acc: int32x4_t, c: int8x16_t, x: int8x16_t) -> int32x4_t;
}

/// With the dot-product extension.
struct Sdot;
impl Dot for Sdot {
    const DOTPROD: bool = true;
    #[target_feature(enable = "neon,dotprod")]
    #[inline]
    unsafe fn dot(mut acc: int32x4_t, c: int8x16_t, x: int8x16_t) -> int32x4_t {
        // SAFETY: `sdot` reads and writes only these registers; the caller guarantees the extension.
        unsafe {
            asm!(
                "sdot {acc:v}.4s, {c:v}.16b, {x:v}.16b",
                acc = inout(vreg) acc,
                c = in(vreg) c,
                x = in(vreg) x,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
        acc
    }
}

/// Base NEON: products widened to i16 (`smull`), pairs added into i32 (`sadalp`).
struct Widen;
impl Dot for Widen {
    const DOTPROD: bool = false;
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn dot(acc: int32x4_t, c: int8x16_t, x: int8x16_t) -> int32x4_t {
        let lo = vmull_s8(vget_low_s8(c), vget_low_s8(x));
        let hi = vmull_high_s8(c, x);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

struct Ternary2;
impl Block for Ternary2 {
    const BYTES: usize = 16;
    const READ: usize = 16;
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn decode(p: *const u8) -> [int8x16_t; 4] {
        // Weight i is in byte i % 16 at bit 2·(i / 16).
        // SAFETY: 16 readable bytes at `p`.
        let b = unsafe { vld1q_u8(p) };
        let m = vdupq_n_u8(3);
        [
            vreinterpretq_s8_u8(vandq_u8(b, m)),
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(b), m)),
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(b), m)),
            vreinterpretq_s8_u8(vshrq_n_u8::<6>(b)),
        ]
    }
}

const T3_IDX: [[u8; 16]; 4] = [
    simd::shuffle_indices::<16>(0),
    simd::shuffle_indices::<16>(16),
    simd::shuffle_indices::<16>(32),
    simd::shuffle_indices::<16>(48),
];
const T3_MUL: [[u8; 16]; 4] = {
    let mut t = [[0u8; 16]; 4];
    let mut p = 0;
    while p < 64 {
        t[p / 16][p % 16] = simd::MUL_OF[p];
        p += 1;
    }
    t
};

struct Ternary3;
impl Block for Ternary3 {
    const BYTES: usize = 13;
    const READ: usize = 16;
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn decode(p: *const u8) -> [int8x16_t; 4] {
        // SAFETY: 16 readable bytes at `p` (the caller guards the tensor's last block); constants hold 16.
        let b = unsafe { vld1q_u8(p) };
        let mut out = [vdupq_n_s8(0); 4];
        for k in 0..4 {
            // SAFETY: the constant arrays hold 16 bytes each.
            let (idx, mul) = unsafe { (vld1q_u8(T3_IDX[k].as_ptr()), vld1q_u8(T3_MUL[k].as_ptr())) };
            // Position p: byte p % 13 times 3^(p / 13) (wrapping), then (m·3) >> 8 = [m ≥ 86] + [m ≥ 171].
            let m = vmulq_u8(vqtbl1q_u8(b, idx), mul);
            let ge1 = vcgeq_u8(m, vdupq_n_u8(86));
            let ge2 = vcgeq_u8(m, vdupq_n_u8(171));
            // Each compare is 0 or −1 (all ones): 0 − ge1 − ge2 counts them.
            out[k] = vreinterpretq_s8_u8(vsubq_u8(vsubq_u8(vdupq_n_u8(0), ge1), ge2));
        }
        out
    }
}

struct Int8;
impl Block for Int8 {
    const BYTES: usize = 64;
    const READ: usize = 64;
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn decode(p: *const u8) -> [int8x16_t; 4] {
        let p = p as *const i8;
        // SAFETY: 64 readable bytes at `p`.
        unsafe {
            [
                vld1q_s8(p),
                vld1q_s8(p.add(16)),
                vld1q_s8(p.add(32)),
                vld1q_s8(p.add(48)),
            ]
        }
    }
}

struct Int4;
impl Block for Int4 {
    const BYTES: usize = 32;
    const READ: usize = 32;
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn decode(p: *const u8) -> [int8x16_t; 4] {
        // 16 bytes of nibble pairs are 32 elements: low nibbles are the even ones, high the odd; zip them.
        // SAFETY: 32 readable bytes at `p`.
        let (a, b) = unsafe { (vld1q_u8(p), vld1q_u8(p.add(16))) };
        let m = vdupq_n_u8(0x0F);
        let (alo, ahi) = (vandq_u8(a, m), vshrq_n_u8::<4>(a));
        let (blo, bhi) = (vandq_u8(b, m), vshrq_n_u8::<4>(b));
        [
            vreinterpretq_s8_u8(vzip1q_u8(alo, ahi)),
            vreinterpretq_s8_u8(vzip2q_u8(alo, ahi)),
            vreinterpretq_s8_u8(vzip1q_u8(blo, bhi)),
            vreinterpretq_s8_u8(vzip2q_u8(blo, bhi)),
        ]
    }
}

/// The tile kernel: for each block of the span, each row's codes are decoded once and applied to every token;
/// a span starting or ending mid-block (32-aligned) skips the other half. Three loops (half-block head,
/// whole blocks, half-block tail) keep the hot one free of conditions; index loops over const-sized arrays,
/// no closures around intrinsics, so the accumulators stay in registers. Compiled twice (below): with and
/// without the dot-product extension, so that `D::dot` inlines.
macro_rules! span_sums {
    ($name:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<B: Block, D: Dot, const R: usize, const T: usize>(
            data: &[u8],
            rows: &[usize; R],
            q: &[&[i8]; T],
            start: usize,
            end: usize,
        ) -> [[i32; T]; R] {
            let mut acc = [[vdupq_n_s32(0); T]; R];
            let mut buf = [0u8; 64];
            let base = data.as_ptr();
            let in_place = match data.len().checked_sub(rows[R - 1] + B::READ) {
                Some(room) => room / B::BYTES + 1,
                None => 0,
            };
            if start >= end {
                return [[0; T]; R];
            }
            // One block `b`: decode each row's codes, apply the halves that are on to every token. The
            // pointer is read in place when `in_place` says the whole tile's reads stay inside `data`.
            let mut step = |acc: &mut [[int32x4_t; T]; R], b: usize, lo_on: bool, hi_on: bool| {
                let mut x = [[vdupq_n_s8(0); 4]; T];
                for j in 0..T {
                    for k in 0..4 {
                        // SAFETY: `q[j]` holds at least `round_up(cols, 64) ≥ 64·(b + 1)` values (IntSpans
                        // contract).
                        x[j][k] = unsafe { vld1q_s8(q[j].as_ptr().add(b * BLOCK + 16 * k)) };
                    }
                }
                for i in 0..R {
                    let off = rows[i] + b * B::BYTES;
                    let p = if b < in_place {
                        // SAFETY: `off + READ ≤ rows[R−1] + b·BYTES + READ ≤ data.len()` for `b < in_place`.
                        unsafe { base.add(off) }
                    } else {
                        // SAFETY: `READ ≤ 64`.
                        unsafe { simd::guarded(data, off, B::READ, &mut buf) }
                    };
                    // SAFETY: `READ` bytes are readable at `p`; the table holding these kernels was handed out
                    // after detecting the features of `B` and `D`.
                    unsafe {
                        let c = B::decode(p);
                        for j in 0..T {
                            if lo_on {
                                acc[i][j] = D::dot(acc[i][j], c[0], x[j][0]);
                                acc[i][j] = D::dot(acc[i][j], c[1], x[j][1]);
                            }
                            if hi_on {
                                acc[i][j] = D::dot(acc[i][j], c[2], x[j][2]);
                                acc[i][j] = D::dot(acc[i][j], c[3], x[j][3]);
                            }
                        }
                    }
                }
            };
            let (head, tail) = (start / BLOCK, (end - 1) / BLOCK);
            if head == tail {
                let (lo, hi) = (start % BLOCK == 0, end - head * BLOCK > BLOCK / 2);
                step(&mut acc, head, lo, hi);
            } else {
                let mut b = head;
                if start % BLOCK != 0 {
                    step(&mut acc, head, false, true);
                    b += 1;
                }
                let whole_end = if end % BLOCK != 0 { tail } else { tail + 1 };
                while b < whole_end {
                    step(&mut acc, b, true, true);
                    b += 1;
                }
                if end % BLOCK != 0 {
                    step(&mut acc, tail, true, false);
                }
            }
            let mut out = [[0i32; T]; R];
            for i in 0..R {
                for j in 0..T {
                    out[i][j] = vaddvq_s32(acc[i][j]);
                }
            }
            out
        }
    };
}
span_sums!(span_sums_neon, "neon");
span_sums!(span_sums_dotprod, "neon,dotprod");

/// One element type with one way of multiplying, as a tile driver's primitive.
struct Spans<B, D>(core::marker::PhantomData<(B, D)>);

impl<B: Block, D: Dot> IntSpans for Spans<B, D> {
    unsafe fn sums<const R: usize, const T: usize>(
        data: &[u8],
        rows: &[usize; R],
        q: &[&[i8]; T],
        _cols: usize,
        start: usize,
        end: usize,
    ) -> [[i32; T]; R] {
        // SAFETY: the IntSpans contract (the table's features detected, everything in bounds) is the callee's.
        unsafe {
            if D::DOTPROD {
                span_sums_dotprod::<B, D, R, T>(data, rows, q, start, end)
            } else {
                span_sums_neon::<B, D, R, T>(data, rows, q, start, end)
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Float kernels.

fn gemv_float(w: &Matrix<'_>, x: &Activations<'_>, t: usize, rows: core::ops::Range<usize>, out: &mut [f32]) {
    tiles::float_gemm(w, x, t..t + 1, rows, out, dot_f16, dot_f32)
}

fn gemm_float(
    w: &Matrix<'_>,
    x: &Activations<'_>,
    tokens: core::ops::Range<usize>,
    rows: core::ops::Range<usize>,
    out: &mut [f32],
) {
    tiles::float_gemm(w, x, tokens, rows, out, dot_f16, dot_f32)
}

/// Four f16 at `p` as f32 (`fcvtl`, base AArch64).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load_f16(p: *const f16) -> float32x4_t {
    // SAFETY: the caller guarantees 4 readable values.
    let h = unsafe { vld1_u16(p as *const u16) };
    let r: float32x4_t;
    // SAFETY: `fcvtl` reads and writes only these registers.
    unsafe {
        asm!(
            "fcvtl {r:v}.4s, {h:v}.4h",
            r = out(vreg) r,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    r
}

fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    // SAFETY: the NEON tables are handed out only on CPUs with NEON.
    unsafe { dot_f32_neon(w, x) }
}

#[target_feature(enable = "neon")]
unsafe fn dot_f32_neon(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 ≤ n` for both slices.
        unsafe {
            a0 = vfmaq_f32(a0, vld1q_f32(w.as_ptr().add(i)), vld1q_f32(x.as_ptr().add(i)));
            a1 = vfmaq_f32(a1, vld1q_f32(w.as_ptr().add(i + 4)), vld1q_f32(x.as_ptr().add(i + 4)));
        }
        i += 8;
    }
    let mut acc = vaddvq_f32(vaddq_f32(a0, a1));
    for j in i..n {
        acc += w[j] * x[j];
    }
    acc
}

fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    // SAFETY: the NEON tables are handed out only on CPUs with NEON.
    unsafe { dot_f16_neon(w, x) }
}

#[target_feature(enable = "neon")]
unsafe fn dot_f16_neon(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 ≤ n` for both slices.
        unsafe {
            a0 = vfmaq_f32(a0, load_f16(w.as_ptr().add(i)), vld1q_f32(x.as_ptr().add(i)));
            a1 = vfmaq_f32(a1, load_f16(w.as_ptr().add(i + 4)), vld1q_f32(x.as_ptr().add(i + 4)));
        }
        i += 8;
    }
    let mut acc = vaddvq_f32(vaddq_f32(a0, a1));
    for j in i..n {
        acc += w[j].to_f32() * x[j];
    }
    acc
}

fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: the NEON tables are handed out only on CPUs with NEON.
    unsafe { axpy_f32_neon(a, x, y) }
}

#[target_feature(enable = "neon")]
unsafe fn axpy_f32_neon(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: `i + 4 ≤ n` for both slices.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            vst1q_f32(p, vfmaq_n_f32(vld1q_f32(p), vld1q_f32(x.as_ptr().add(i)), a));
        }
        i += 4;
    }
    for j in i..n {
        y[j] += a * x[j];
    }
}

fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    // SAFETY: the NEON tables are handed out only on CPUs with NEON.
    unsafe { axpy_f16_neon(a, x, y) }
}

#[target_feature(enable = "neon")]
unsafe fn axpy_f16_neon(a: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: `i + 4 ≤ n` for both slices.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            vst1q_f32(p, vfmaq_n_f32(vld1q_f32(p), load_f16(x.as_ptr().add(i)), a));
        }
        i += 4;
    }
    for j in i..n {
        y[j] += a * x[j].to_f32();
    }
}
