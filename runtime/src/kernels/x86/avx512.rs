//! The AVX-512 table (F, BW, VL and VNNI).
//!
//! Int8-activation matrices: each 64-weight block is decoded once into one vector of 64 codes in the
//! activations' order and applied to every token of the tile by one `vpdpbusd` (u8 × i8, four products summed
//! into each i32 lane, exact and never saturating). Int8 weights are signed, and `vpdpbusd` wants one
//! unsigned side, so the activations are offset to `q + 128` (a bit flip) and `128·Σw` (from a second
//! `vpdpbusd` against ones, once per row) is taken off again — exact for every value.
//!
//! Activation quantization, the float kernels and the attention loops come from the AVX2 table: 512-bit
//! registers do not shorten them enough to matter.

use core::arch::x86_64::*;

use super::super::tiles::{self, IntSpans};
use super::super::{ActFormat, Kernels, MatKernels, BLOCK};
use super::{avx2, guarded, multipliers, shuffle_indices};

/// Rows × tokens of the prefill tile (16 accumulators, 4 code vectors, of 32 registers).
const GEMM_ROWS: usize = 4;
const GEMM_TOKENS: usize = 4;
/// How far ahead of the weights being read the tile kernels prefetch (measured on a 2560×6912 2-bit matrix
/// streamed from DRAM: 7.0 GB/s on one thread without, 9.6 GB/s with 512 B to 2 KB).
pub(super) const PREFETCH: usize = 1024;
/// Rows per matrix-vector step (independent accumulator chains sharing each activation load).
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

pub(in crate::kernels) static TABLE: Kernels = Kernels {
    name: "avx512",
    ternary2: int_kernels!(Ternary2),
    ternary3: int_kernels!(Ternary3),
    int8: int_kernels!(Int8),
    int4: int_kernels!(Int4),
    ..avx2::KERNELS
};

/// How one element type's 64-element blocks are decoded.
trait Block {
    /// Bytes of one stored block.
    const BYTES: usize;
    /// Bytes a decode reads from the block's start.
    const READ: usize;
    /// Signed weights (int8): multiplied with the activations offset by 128, corrected by `128·Σw`.
    const SIGNED: bool = false;
    /// The block's 64 codes, in element order.
    ///
    /// # Safety
    /// AVX-512 BW is available and `READ` bytes are readable at `p`.
    unsafe fn decode(p: *const u8) -> __m512i;
}

struct Ternary2;
impl Block for Ternary2 {
    const BYTES: usize = 16;
    const READ: usize = 16;
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn decode(p: *const u8) -> __m512i {
        // Weight i is in byte i % 16 at bit 2·(i / 16): the 16 bytes in all four lanes, lane k shifted by 2k.
        // SAFETY: 16 readable bytes at `p`.
        let b = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(p.cast()) });
        let shifts = _mm512_set_epi64(
            0x0006_0006_0006_0006,
            0x0006_0006_0006_0006,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0x0002_0002_0002_0002,
            0x0002_0002_0002_0002,
            0,
            0,
        );
        _mm512_and_si512(_mm512_srlv_epi16(b, shifts), _mm512_set1_epi8(3))
    }
}

const T3_IDX: [u8; 64] = shuffle_indices::<64>(0);
const T3_MUL_EVEN: [u16; 32] = multipliers::<32>(0, false);
const T3_MUL_ODD: [u16; 32] = multipliers::<32>(0, true);

struct Ternary3;
impl Block for Ternary3 {
    const BYTES: usize = 13;
    const READ: usize = 16;
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn decode(p: *const u8) -> __m512i {
        // The block in all four lanes; position p takes byte p % 13 (an in-lane shuffle), is multiplied by
        // 3^(p / 13) (16-bit multiplies on the even and the odd bytes) and becomes `(b·3) >> 8`.
        // SAFETY: 16 readable bytes at `p` (the caller guards the tensor's last block); constants hold 64 bytes.
        let (b, idx, me, mo) = unsafe {
            (
                _mm512_broadcast_i32x4(_mm_loadu_si128(p.cast())),
                _mm512_loadu_si512(T3_IDX.as_ptr().cast()),
                _mm512_loadu_si512(T3_MUL_EVEN.as_ptr().cast()),
                _mm512_loadu_si512(T3_MUL_ODD.as_ptr().cast()),
            )
        };
        let b = _mm512_shuffle_epi8(b, idx);
        let even = _mm512_mullo_epi16(b, me);
        let odd = _mm512_mullo_epi16(_mm512_and_si512(b, _mm512_set1_epi16(-256)), mo);
        // Even bytes from `even`, odd ones from `odd`: m = (b · 3^k) mod 256 in every byte.
        let m = _mm512_mask_blend_epi8(0xAAAA_AAAA_AAAA_AAAA, even, odd);
        // (m·3) >> 8 is 0, 1 or 2 as m is below 86, below 171 or not: two compares (a high multiply by the
        // constant 3 is lowered by LLVM into widening and narrowing, several times slower).
        let ones = _mm512_set1_epi8(1);
        let c = _mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(m, _mm512_set1_epi8(86)), ones);
        _mm512_mask_add_epi8(c, _mm512_cmpge_epu8_mask(m, _mm512_set1_epi8(171u8 as i8)), c, ones)
    }
}

struct Int8;
impl Block for Int8 {
    const BYTES: usize = 64;
    const READ: usize = 64;
    const SIGNED: bool = true;
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn decode(p: *const u8) -> __m512i {
        // SAFETY: 64 readable bytes at `p`.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
}

struct Int4;
impl Block for Int4 {
    const BYTES: usize = 32;
    const READ: usize = 32;
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn decode(p: *const u8) -> __m512i {
        // 32 bytes of nibble pairs to 64 bytes in element order: zero-extend to 16 bits, keep the low nibble
        // in the low byte and move the high nibble to the high byte.
        // SAFETY: 32 readable bytes at `p`.
        let w = _mm512_cvtepu8_epi16(unsafe { _mm256_loadu_si256(p.cast()) });
        _mm512_or_si512(
            _mm512_and_si512(w, _mm512_set1_epi16(0x000F)),
            _mm512_and_si512(_mm512_slli_epi16::<4>(w), _mm512_set1_epi16(0x0F00)),
        )
    }
}

/// The tile kernel for one block type: for each block of the span, each row's codes are decoded once and
/// applied to every token; a span starting or ending mid-block (32-aligned) masks the other half off.
///
/// The blocks are walked in three parts so that the hot loop has no conditions: a masked head (a span starting
/// mid-block), the whole blocks (read in place, except near the end of `data` where a copy guards the
/// over-read), and a masked tail. Index loops over const-sized arrays, no closures (they would not inherit the
/// target features): the accumulators stay in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn span_sums<B: Block, const R: usize, const T: usize>(
    data: &[u8],
    rows: &[usize; R],
    q: &[&[i8]; T],
    start: usize,
    end: usize,
) -> [[i32; T]; R] {
    let mut acc = [[_mm512_setzero_si512(); T]; R];
    let mut wsum = [_mm512_setzero_si512(); R];
    let ones = _mm512_set1_epi8(1);
    let flip = _mm512_set1_epi8(-128);
    let mut buf = [0u8; 64];

    // One block: decode each row's codes (masked to `keep`), apply them to every token.
    macro_rules! step {
        ($b:expr, $keep:expr, $ptr:expr) => {{
            let b = $b;
            let mut x = [_mm512_setzero_si512(); T];
            for j in 0..T {
                // SAFETY: `q[j]` holds at least `round_up(cols, 64) ≥ 64·(b + 1)` values (IntSpans contract).
                x[j] = unsafe { _mm512_loadu_si512(q[j].as_ptr().add(b * BLOCK).cast()) };
            }
            for i in 0..R {
                let p: *const u8 = $ptr(i, b);
                // SAFETY: `READ` bytes are readable at `p` (see each caller).
                let mut c = unsafe { B::decode(p) };
                let keep: u64 = $keep;
                if keep != !0 {
                    c = _mm512_maskz_mov_epi8(keep, c);
                }
                if B::SIGNED {
                    wsum[i] = _mm512_dpbusd_epi32(wsum[i], ones, c);
                    for j in 0..T {
                        acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], _mm512_xor_si512(x[j], flip), c);
                    }
                } else {
                    for j in 0..T {
                        acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], c, x[j]);
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
    // Elements `lo..hi` of block `b` as a byte mask.
    let mask = |b: usize, lo: usize, hi: usize| {
        let (lo, hi) = (lo.max(b * BLOCK) - b * BLOCK, hi.min((b + 1) * BLOCK) - b * BLOCK);
        (!0u64 >> (64 - (hi - lo))) << lo
    };
    if head == tail {
        step!(head, mask(head, start, end), &mut copied);
    } else {
        let mut b = head;
        if start % BLOCK != 0 {
            step!(head, mask(head, start, end), &mut copied);
            b += 1;
        }
        let whole_end = if end % BLOCK != 0 { tail } else { tail + 1 };
        let fast_end = whole_end.min(in_place).max(b);
        while b < fast_end {
            // Once per cache line of each row: ask for the line PREFETCH bytes ahead (the hardware prefetcher
            // alone keeps too few lines in flight for R interleaved rows).
            if (rows[0] + b * B::BYTES) % 64 < B::BYTES {
                for &row in rows.iter() {
                    // A prefetch is only a hint: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(row + b * B::BYTES + PREFETCH).cast());
                }
            }
            step!(b, !0u64, direct);
            b += 1;
        }
        while b < whole_end {
            step!(b, !0u64, &mut copied);
            b += 1;
        }
        if end % BLOCK != 0 {
            step!(tail, mask(tail, start, end), &mut copied);
        }
    }

    let mut out = [[0i32; T]; R];
    for i in 0..R {
        let w = if B::SIGNED { _mm512_reduce_add_epi32(wsum[i]) } else { 0 };
        for j in 0..T {
            out[i][j] = _mm512_reduce_add_epi32(acc[i][j]).wrapping_sub(w.wrapping_mul(128));
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
                // SAFETY: the IntSpans contract (AVX-512 detected, everything in bounds) is the callee's.
                unsafe { span_sums::<$t, R, T>(data, rows, q, start, end) }
            }
        }
    };
}
spans!(Ternary2);
spans!(Ternary3);
spans!(Int8);
spans!(Int4);
