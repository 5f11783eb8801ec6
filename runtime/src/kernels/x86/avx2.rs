//! The AVX2 table (with FMA and F16C).
//!
//! Int8-activation matrices: each 64-weight block is decoded once into two vectors of 32 unsigned codes in
//! the activations' order and applied to every token of the tile with `vpmaddubsw` (u8 × i8 → i16 pairs,
//! never saturating here: |c·q| ≤ 3·128) and `vpmaddwd` against ones (→ i32), exact. Int8 weights are
//! signed on both sides, so they are widened to i16 and multiplied with `vpmaddwd` (exact for every value,
//! −128 included). Float kernels use FMA; f16 is converted by F16C's `vcvtph2ps`.

use core::arch::x86_64::*;

use half::f16;

use super::super::tiles::{self, IntSpans};
use super::super::{scalar, ActFormat, ActQuant, Activations, Kernels, MatKernels, Matrix, BLOCK, CHUNK};
use super::avx512::PREFETCH;
use super::{guarded, multipliers, shuffle_indices};

/// Rows × tokens of the prefill tile (16 registers: 6 accumulators, 2 code vectors per row, activations).
const GEMM_ROWS: usize = 2;
const GEMM_TOKENS: usize = 3;
/// Rows per matrix-vector step (independent accumulator chains).
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

pub(in crate::kernels) static TABLE: Kernels = KERNELS;

/// The table's value, for tables that reuse some of its kernels.
pub(super) const KERNELS: Kernels = Kernels {
    name: "avx2",
    quantize_i8,
    ternary2: int_kernels!(Ternary2),
    ternary3: int_kernels!(Ternary3),
    int8: int_kernels!(Int8),
    int4: int_kernels!(Int4),
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
    // SAFETY: this table is handed out only on CPUs with AVX2, FMA and F16C (x86::available).
    unsafe { quantize_i8_avx2(x, q, chunk_sums) }
}

/// `max |x|`, NaNs ignored (`vmaxps` returns its second operand when the first is NaN).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn absmax(x: &[f32]) -> f32 {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_setzero_ps();
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds 8 floats.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        m = _mm256_max_ps(_mm256_and_ps(v, abs), m);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    scalar::absmax(tail).max(scalar::absmax(&lanes))
}

/// Sum of the eight i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// 32 floats of `x` at `p` times `s`, rounded to nearest-even (the default MXCSR mode, as `round_half_even`),
/// NaN products as 0, saturated to i8 — `scalar::quantize_chunk` for a whole chunk.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn quantize_32(p: *const f32, s: __m256) -> __m256i {
    // (No closures here: they would not inherit this function's target features.)
    // SAFETY: the caller guarantees 32 readable floats at `p`.
    let (v0, v1, v2, v3) = unsafe {
        (
            _mm256_mul_ps(_mm256_loadu_ps(p), s),
            _mm256_mul_ps(_mm256_loadu_ps(p.add(8)), s),
            _mm256_mul_ps(_mm256_loadu_ps(p.add(16)), s),
            _mm256_mul_ps(_mm256_loadu_ps(p.add(24)), s),
        )
    };
    let i0 = _mm256_cvtps_epi32(_mm256_and_ps(v0, _mm256_cmp_ps::<_CMP_ORD_Q>(v0, v0)));
    let i1 = _mm256_cvtps_epi32(_mm256_and_ps(v1, _mm256_cmp_ps::<_CMP_ORD_Q>(v1, v1)));
    let i2 = _mm256_cvtps_epi32(_mm256_and_ps(v2, _mm256_cmp_ps::<_CMP_ORD_Q>(v2, v2)));
    let i3 = _mm256_cvtps_epi32(_mm256_and_ps(v3, _mm256_cmp_ps::<_CMP_ORD_Q>(v3, v3)));
    let a = _mm256_packs_epi32(i0, i1);
    let b = _mm256_packs_epi32(i2, i3);
    // The packs work per 128-bit lane: put the four 8-value groups back in order.
    _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_i8_avx2(x: &[f32], q: &mut [i8], chunk_sums: &mut [i32]) -> ActQuant {
    // SAFETY: same features as this function.
    let s = scalar::act_scale(unsafe { absmax(x) });
    let vs = _mm256_set1_ps(s);
    let ones = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let mut sum = 0i32;
    for (c, (qc, cs)) in q.chunks_mut(CHUNK).zip(chunk_sums.iter_mut()).enumerate() {
        let xs = x.get(c * CHUNK..).unwrap_or(&[]);
        *cs = if xs.len() >= CHUNK && qc.len() == CHUNK {
            // SAFETY: 32 floats at `xs`, 32 bytes at `qc`.
            let v = unsafe { quantize_32(xs.as_ptr(), vs) };
            unsafe { _mm256_storeu_si256(qc.as_mut_ptr().cast(), v) };
            hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones, v), ones16))
        } else {
            scalar::quantize_chunk(xs, s, qc)
        };
        sum = sum.wrapping_add(*cs);
    }
    ActQuant { d: 1.0 / s, sum }
}

// ----------------------------------------------------------------------------------------------------------
// Int8-activation matrices.

/// How one element type's 64-element blocks are decoded and multiplied.
trait Block {
    /// Bytes of one stored block.
    const BYTES: usize;
    /// Bytes a decode reads from the block's start.
    const READ: usize;
    /// The block's 64 codes as two vectors (elements 0..32, 32..64).
    ///
    /// # Safety
    /// AVX2 is available and `READ` bytes are readable at `p`.
    unsafe fn decode(p: *const u8) -> [__m256i; 2];
    /// `acc + Σ code·x` over 32 elements (in i32 lanes).
    ///
    /// # Safety
    /// AVX2 is available.
    unsafe fn dot(acc: __m256i, codes: __m256i, x: __m256i) -> __m256i;
}

/// Unsigned codes times signed activations: `vpmaddubsw`, then pairs of i16 to i32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_u8_i8(acc: __m256i, codes: __m256i, x: __m256i) -> __m256i {
    _mm256_add_epi32(
        acc,
        _mm256_madd_epi16(_mm256_maddubs_epi16(codes, x), _mm256_set1_epi16(1)),
    )
}

struct Ternary2;
impl Block for Ternary2 {
    const BYTES: usize = 16;
    const READ: usize = 16;
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn decode(p: *const u8) -> [__m256i; 2] {
        // Weight i is in byte i % 16 at bit 2·(i / 16): the 16 bytes in both lanes, shifted by 0 and 2 (weights
        // 0..32), 4 and 6 (32..64). Shifting 32-bit lanes is fine: each byte is masked to its own 2 bits.
        // SAFETY: 16 readable bytes at `p`.
        let b = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(p.cast()) });
        let m = _mm256_set1_epi8(3);
        [
            _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), m),
            _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), m),
        ]
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot(acc: __m256i, codes: __m256i, x: __m256i) -> __m256i {
        dot_u8_i8(acc, codes, x)
    }
}

const T3_IDX_LO: [u8; 32] = shuffle_indices::<32>(0);
const T3_IDX_HI: [u8; 32] = shuffle_indices::<32>(32);
const T3_MUL: [[u16; 16]; 4] = [
    multipliers::<16>(0, false),
    multipliers::<16>(0, true),
    multipliers::<16>(32, false),
    multipliers::<16>(32, true),
];

/// 32 base-3 codes from a block broadcast to both lanes: shuffle each position's byte in, multiply by its
/// power of 3 (16-bit multiplies on the even and the odd bytes), then `(b·3) >> 8` by two compares.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ternary3_half(block: __m256i, idx: &[u8; 32], mul_even: &[u16; 16], mul_odd: &[u16; 16]) -> __m256i {
    // SAFETY: the constant arrays hold 32 bytes each.
    let (idx, me, mo) = unsafe {
        (
            _mm256_loadu_si256(idx.as_ptr().cast()),
            _mm256_loadu_si256(mul_even.as_ptr().cast()),
            _mm256_loadu_si256(mul_odd.as_ptr().cast()),
        )
    };
    let b = _mm256_shuffle_epi8(block, idx);
    let even = _mm256_mullo_epi16(b, me); // low byte: (b_even · 3^k) mod 256
    let odd = _mm256_mullo_epi16(_mm256_and_si256(b, _mm256_set1_epi16(-256)), mo); // high byte likewise
    let m = _mm256_blendv_epi8(even, odd, _mm256_set1_epi16(-256));
    // (m·3) >> 8 is 0, 1 or 2 as m is below 86, below 171 or not. Unsigned `m ≥ t` as `max(m, t) == m`; each
    // compare gives −1 or 0, so 0 − ge86 − ge171 counts them. (A high multiply by the constant 3 is lowered by
    // LLVM into widening and narrowing, several times slower.)
    let ge86 = _mm256_cmpeq_epi8(_mm256_max_epu8(m, _mm256_set1_epi8(86)), m);
    let ge171 = _mm256_cmpeq_epi8(_mm256_max_epu8(m, _mm256_set1_epi8(171u8 as i8)), m);
    _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ge86), ge171)
}

struct Ternary3;
impl Block for Ternary3 {
    const BYTES: usize = 13;
    const READ: usize = 16;
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn decode(p: *const u8) -> [__m256i; 2] {
        // SAFETY: 16 readable bytes at `p` (the caller guards the tensor's last block).
        let b = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(p.cast()) });
        [
            ternary3_half(b, &T3_IDX_LO, &T3_MUL[0], &T3_MUL[1]),
            ternary3_half(b, &T3_IDX_HI, &T3_MUL[2], &T3_MUL[3]),
        ]
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot(acc: __m256i, codes: __m256i, x: __m256i) -> __m256i {
        dot_u8_i8(acc, codes, x)
    }
}

struct Int8;
impl Block for Int8 {
    const BYTES: usize = 64;
    const READ: usize = 64;
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn decode(p: *const u8) -> [__m256i; 2] {
        // SAFETY: 64 readable bytes at `p`.
        unsafe { [_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(32).cast())] }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        let (w0, w1) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
        let (x0, x1) = (_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x));
        let a = _mm256_madd_epi16(_mm256_cvtepi8_epi16(w0), _mm256_cvtepi8_epi16(x0));
        let b = _mm256_madd_epi16(_mm256_cvtepi8_epi16(w1), _mm256_cvtepi8_epi16(x1));
        _mm256_add_epi32(acc, _mm256_add_epi32(a, b))
    }
}

/// 16 bytes of int4 pairs to 32 nibbles in element order (low nibble first).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn nibbles_32(b: __m128i) -> __m256i {
    let w = _mm256_cvtepu8_epi16(b);
    _mm256_or_si256(
        _mm256_and_si256(w, _mm256_set1_epi16(0x000F)),
        _mm256_and_si256(_mm256_slli_epi16::<4>(w), _mm256_set1_epi16(0x0F00)),
    )
}

struct Int4;
impl Block for Int4 {
    const BYTES: usize = 32;
    const READ: usize = 32;
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn decode(p: *const u8) -> [__m256i; 2] {
        // SAFETY: 32 readable bytes at `p`.
        unsafe {
            [
                nibbles_32(_mm_loadu_si128(p.cast())),
                nibbles_32(_mm_loadu_si128(p.add(16).cast())),
            ]
        }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot(acc: __m256i, codes: __m256i, x: __m256i) -> __m256i {
        dot_u8_i8(acc, codes, x)
    }
}

/// The tile kernel for one block type: for each block of the span, each row's codes are decoded once and
/// applied to every token; a span starting or ending mid-block (32-aligned) skips the other half.
///
/// The blocks are walked in three parts so that the hot loop has no conditions: a half-block head, the whole
/// blocks (read in place, except near the end of `data` where a copy guards the over-read), a half-block
/// tail. Index loops over const-sized arrays, no closures around intrinsics (they would not inherit the
/// target features): the accumulators stay in registers.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn span_sums<B: Block, const R: usize, const T: usize>(
    data: &[u8],
    rows: &[usize; R],
    q: &[&[i8]; T],
    start: usize,
    end: usize,
) -> [[i32; T]; R] {
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let mut buf = [0u8; 64];

    // One block: decode each row's codes, apply the halves that are on to every token.
    macro_rules! step {
        ($b:expr, $lo_on:expr, $hi_on:expr, $ptr:expr) => {{
            let b = $b;
            for i in 0..R {
                let p: *const u8 = $ptr(i, b);
                // SAFETY: `READ` bytes are readable at `p` (see each caller).
                let [c0, c1] = unsafe { B::decode(p) };
                for j in 0..T {
                    // SAFETY: `q[j]` holds at least `round_up(cols, 64) ≥ 64·(b + 1)` values (IntSpans
                    // contract).
                    let xp = unsafe { q[j].as_ptr().add(b * BLOCK) };
                    if $lo_on {
                        acc[i][j] = unsafe { B::dot(acc[i][j], c0, _mm256_loadu_si256(xp.cast())) };
                    }
                    if $hi_on {
                        acc[i][j] = unsafe { B::dot(acc[i][j], c1, _mm256_loadu_si256(xp.add(32).cast())) };
                    }
                }
            }
        }};
    }

    let base = data.as_ptr();
    // Blocks whose reads stay inside `data` for every row of the tile (the last row is the furthest).
    let in_place = match data.len().checked_sub(rows[R - 1] + B::READ) {
        Some(room) => room / B::BYTES + 1,
        None => 0,
    };
    // SAFETY (in place): `rows[i] + b·BYTES + READ ≤ rows[R−1] + b·BYTES + READ ≤ data.len()` for `b < in_place`.
    let direct = |i: usize, b: usize| unsafe { base.add(rows[i] + b * B::BYTES) };
    let mut copied = |i: usize, b: usize| {
        // SAFETY: `READ ≤ 64`.
        unsafe { guarded(data, rows[i] + b * B::BYTES, B::READ, &mut buf) }
    };
    if start >= end {
        return [[0; T]; R];
    }
    let (head, tail) = (start / BLOCK, (end - 1) / BLOCK);
    if head == tail {
        // `start`, `end` are multiples of 32: the span is the block's low half, high half or all of it.
        let (lo, hi) = (start % BLOCK == 0, end - head * BLOCK > BLOCK / 2);
        step!(head, lo, hi, &mut copied);
    } else {
        let mut b = head;
        if start % BLOCK != 0 {
            step!(head, false, true, &mut copied);
            b += 1;
        }
        let whole_end = if end % BLOCK != 0 { tail } else { tail + 1 };
        let fast_end = whole_end.min(in_place).max(b);
        while b < fast_end {
            // Once per cache line of each row, the line `PREFETCH` bytes ahead (see the AVX-512 table).
            if (rows[0] + b * B::BYTES) % 64 < B::BYTES {
                for &row in rows.iter() {
                    // A prefetch is only a hint: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(row + b * B::BYTES + PREFETCH).cast());
                }
            }
            step!(b, true, true, direct);
            b += 1;
        }
        while b < whole_end {
            step!(b, true, true, &mut copied);
            b += 1;
        }
        if end % BLOCK != 0 {
            step!(tail, true, false, &mut copied);
        }
    }

    let mut out = [[0i32; T]; R];
    for i in 0..R {
        for j in 0..T {
            out[i][j] = hsum_i32(acc[i][j]);
        }
    }
    out
}

macro_rules! spans {
    ($t:ty) => {
        impl IntSpans for $t {
            unsafe fn sums<const R: usize, const T: usize>(
                data: &[u8],
                rows: &[usize; R],
                q: &[&[i8]; T],
                _cols: usize,
                start: usize,
                end: usize,
            ) -> [[i32; T]; R] {
                // SAFETY: the IntSpans contract (AVX2 detected, everything in bounds) is the callee's.
                unsafe { span_sums::<$t, R, T>(data, rows, q, start, end) }
            }
        }
    };
}
spans!(Ternary2);
spans!(Ternary3);
spans!(Int8);
spans!(Int4);

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

/// Sum of the eight f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Eight f16 at `p` as f32 (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_f16(p: *const f16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable values.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
}

fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    // SAFETY: this table is handed out only on CPUs with AVX2, FMA and F16C.
    unsafe { dot_f32_avx2(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_avx2(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 ≤ n` for both slices.
        unsafe {
            a0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(w.as_ptr().add(i)),
                _mm256_loadu_ps(x.as_ptr().add(i)),
                a0,
            );
            a1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(w.as_ptr().add(i + 8)),
                _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                a1,
            );
        }
        i += 16;
    }
    let mut acc = hsum_ps(_mm256_add_ps(a0, a1));
    for j in i..n {
        acc += w[j] * x[j];
    }
    acc
}

fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    // SAFETY: this table is handed out only on CPUs with AVX2, FMA and F16C.
    unsafe { dot_f16_avx2(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 ≤ n` for both slices.
        unsafe {
            a0 = _mm256_fmadd_ps(load_f16(w.as_ptr().add(i)), _mm256_loadu_ps(x.as_ptr().add(i)), a0);
            a1 = _mm256_fmadd_ps(
                load_f16(w.as_ptr().add(i + 8)),
                _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                a1,
            );
        }
        i += 16;
    }
    let mut acc = hsum_ps(_mm256_add_ps(a0, a1));
    for j in i..n {
        acc += w[j].to_f32() * x[j];
    }
    acc
}

fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: this table is handed out only on CPUs with AVX2, FMA and F16C.
    unsafe { axpy_f32_avx2(a, x, y) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f32_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 ≤ n` for both slices.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                p,
                _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)),
            );
        }
        i += 8;
    }
    for j in i..n {
        y[j] += a * x[j];
    }
}

fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    // SAFETY: this table is handed out only on CPUs with AVX2, FMA and F16C.
    unsafe { axpy_f16_avx2(a, x, y) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_avx2(a: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 ≤ n` for both slices.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(va, load_f16(x.as_ptr().add(i)), _mm256_loadu_ps(p)));
        }
        i += 8;
    }
    for j in i..n {
        y[j] += a * x[j].to_f32();
    }
}
