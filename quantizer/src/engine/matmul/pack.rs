//! Packing f32 operands into the bf16 tiles `TDPBF16PS` reads, rounding on the way ([`super::bf16`]).
//!
//! A tile is 16 rows of 64 bytes (32 bf16). For the left operand a panel of 16 rows is stored as one tile per
//! 32-wide step of `k`: row `r`, element `e` holds `A[r, 32s + e]`. For the right operand a panel of 16 columns
//! is stored in AMX's "VNNI" pair layout: row `p`, elements `2c + e` hold `B[32s + 2p + e, c]`. Rows, columns and
//! `k` beyond the matrix are zero, so ragged shapes cost only the padding's multiplications.
//!
//! The scalar functions are the definition; the AVX-512 ones handle the contiguous layouts (row-major and
//! transposed views) and must give the same bits (tested below on random and special values).

use std::arch::x86_64::*;

use super::bf16::bf16_bits;
use super::blocked::{lanes, Source};

/// Rows per tile, and f32 outputs per tile row.
pub(super) const TILE_ROWS: usize = 16;
/// bf16 elements per tile row: one step of `k`.
pub(super) const TILE_K: usize = 32;

/// One 1 KiB AMX tile of bf16 values (16 rows of 32), cache-line aligned so each row is one line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Tile(pub [u16; TILE_ROWS * TILE_K]);

impl Tile {
    pub(super) const ZERO: Tile = Tile([0; TILE_ROWS * TILE_K]);
}

impl Source {
    /// bf16 bits of element `(i, j)`, zero outside the matrix.
    ///
    /// # Safety
    /// `ptr`, `rs`, `cs`, `rows` and `cols` must describe readable memory.
    #[inline(always)]
    unsafe fn bits(&self, i: usize, j: usize) -> u16 {
        if i < self.rows && j < self.cols {
            // SAFETY: `(i, j)` is inside the view, which the caller guarantees readable.
            bf16_bits(unsafe { *self.ptr.offset(i as isize * self.rs + j as isize * self.cs) })
        } else {
            0
        }
    }
}

/// Left-operand panel, scalar definition: `tiles[s]` gets rows `[0, 16)` × `k` in `[32s, 32s + 32)` of `a`
/// (`a.rows ≤ 16` rows of `a.cols = k`).
///
/// # Safety
/// `a` must describe readable memory.
pub(super) unsafe fn pack_a_scalar(tiles: &mut [Tile], a: Source) {
    for (s, tile) in tiles.iter_mut().enumerate() {
        for r in 0..TILE_ROWS {
            for e in 0..TILE_K {
                // SAFETY: forwarded.
                tile.0[r * TILE_K + e] = unsafe { a.bits(r, s * TILE_K + e) };
            }
        }
    }
}

/// Right-operand panel, scalar definition: `tiles[s]` gets `k` in `[32s, 32s + 32)` × columns `[0, 16)` of `b`
/// (`b.rows = k`, `b.cols ≤ 16`) in the pair layout.
///
/// # Safety
/// `b` must describe readable memory.
pub(super) unsafe fn pack_b_scalar(tiles: &mut [Tile], b: Source) {
    for (s, tile) in tiles.iter_mut().enumerate() {
        for p in 0..TILE_ROWS {
            for c in 0..TILE_ROWS {
                for e in 0..2 {
                    // SAFETY: forwarded.
                    tile.0[p * TILE_K + 2 * c + e] = unsafe { b.bits(s * TILE_K + 2 * p + e, c) };
                }
            }
        }
    }
}

/// 32 contiguous f32 (the first `valid` of them read, the rest zero) as one tile row of bf16.
///
/// # Safety
/// `src[0..valid]` readable (for `valid ≤ 32`); AVX-512F/BF16 available.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn row_of_32(src: *const f32, valid: usize) -> __m512i {
    let lo = _mm512_maskz_loadu_ps(lanes(valid), src);
    let hi = _mm512_maskz_loadu_ps(lanes(valid.saturating_sub(16)), src.wrapping_add(16));
    // The low half of the result comes from the second operand.
    _mm512_castps_si512(std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(hi, lo)))
}

/// Two rows of 16 contiguous f32 (lanes `[0, valid)`; a missing row is zero) as one row of bf16 pairs
/// `(first[c], second[c])`.
///
/// # Safety
/// `first[0..valid]` readable when given, likewise `second`; AVX-512F/BW/BF16 available.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn pair_row(first: Option<*const f32>, second: Option<*const f32>, valid: usize) -> __m512i {
    let mask = lanes(valid);
    let x = match first {
        Some(p) => _mm512_maskz_loadu_ps(mask, p),
        None => _mm512_setzero_ps(),
    };
    let y = match second {
        Some(p) => _mm512_maskz_loadu_ps(mask, p),
        None => _mm512_setzero_ps(),
    };
    let halves = _mm512_castps_si512(std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(y, x)));
    // Lane 2c takes x[c] (u16 lane c), lane 2c + 1 takes y[c] (u16 lane 16 + c).
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    _mm512_permutexvar_epi16(interleave, halves)
}

/// Transposes a tile viewed as a 16×16 matrix of u32 (bf16 pairs), in place.
///
/// # Safety
/// AVX-512F available.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_pairs(tile: &mut Tile) {
    transpose_16x16(tile.0.as_mut_ptr().cast());
}

/// Transposes the 16×16 matrix of 32-bit elements (bf16 pairs or f32) at `block`, in place.
///
/// # Safety
/// `block` is 64-byte aligned and points to 1 KiB of writable memory; AVX-512F available.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn transpose_16x16(block: *mut u8) {
    let p = block.cast::<__m512i>();
    let mut r = [_mm512_setzero_si512(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_load_si512(p.add(i));
    }
    transpose_registers(&mut r);
    for (i, v) in r.iter().enumerate() {
        _mm512_store_si512(p.add(i), *v);
    }
}

/// Transposes 16 vectors of 16 32-bit elements as a 16×16 matrix.
///
/// # Safety
/// AVX-512F available.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn transpose_registers(r: &mut [__m512i; 16]) {
    // 2×2 blocks of 32-bit elements, then of 64-bit pairs, then of 128-bit lanes (twice).
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        let b = 4 * i;
        r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
        r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
        r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
        r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
    }
    for h in 0..2 {
        let b = 8 * h;
        for i in 0..4 {
            t[b + i] = _mm512_shuffle_i32x4::<0x88>(r[b + i], r[b + 4 + i]);
            t[b + 4 + i] = _mm512_shuffle_i32x4::<0xdd>(r[b + i], r[b + 4 + i]);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_i32x4::<0x88>(t[i], t[8 + i]);
        r[8 + i] = _mm512_shuffle_i32x4::<0xdd>(t[i], t[8 + i]);
    }
}

/// Stores one tile row.
///
/// # Safety
/// `row < 16`; AVX-512F available.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_row(tile: &mut Tile, row: usize, v: __m512i) {
    _mm512_store_si512(tile.0.as_mut_ptr().add(row * TILE_K).cast(), v);
}

/// Packs the rows `[0, 16)` of `src` along contiguous columns (`cs == 1`) the left-operand way.
///
/// # Safety
/// `src` readable with `cs == 1`; AVX-512F/BF16 available.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_rows_contiguous(tiles: &mut [Tile], src: Source) {
    for (s, tile) in tiles.iter_mut().enumerate() {
        let k0 = s * TILE_K;
        let valid = src.cols.saturating_sub(k0).min(TILE_K);
        for r in 0..TILE_ROWS {
            let v = if r < src.rows {
                row_of_32(src.ptr.offset(r as isize * src.rs).add(k0), valid)
            } else {
                _mm512_setzero_si512()
            };
            store_row(tile, r, v);
        }
    }
}

/// Packs the rows `[0, 16)` of `src` with contiguous rows (`rs == 1`: each column is 16 contiguous f32), the
/// left-operand way: pairs of columns interleaved, then transposed.
///
/// # Safety
/// `src` readable with `rs == 1`; AVX-512F/BW/BF16 available.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_columns_contiguous(tiles: &mut [Tile], src: Source) {
    let column = |j: usize| (j < src.cols).then(|| src.ptr.offset(j as isize * src.cs));
    for (s, tile) in tiles.iter_mut().enumerate() {
        for p in 0..TILE_ROWS {
            let j = s * TILE_K + 2 * p;
            store_row(tile, p, pair_row(column(j), column(j + 1), src.rows));
        }
        transpose_pairs(tile);
    }
}

/// Left-operand panel (see [`pack_a_scalar`]), AVX-512 where a dimension is contiguous.
///
/// # Safety
/// `a` must describe readable memory with `a.rows ≤ 16`; AVX-512F/BW/BF16 available.
pub(super) unsafe fn pack_a(tiles: &mut [Tile], a: Source) {
    // SAFETY: forwarded; each branch's layout condition is checked right there.
    unsafe {
        if a.cs == 1 {
            pack_rows_contiguous(tiles, a);
        } else if a.rs == 1 {
            pack_columns_contiguous(tiles, a);
        } else {
            pack_a_scalar(tiles, a);
        }
    }
}

/// Right-operand panel (see [`pack_b_scalar`]), AVX-512 where a dimension is contiguous.
///
/// # Safety
/// `b` must describe readable memory with `b.cols ≤ 16`; AVX-512F/BW/BF16 available.
pub(super) unsafe fn pack_b(tiles: &mut [Tile], b: Source) {
    // The pair layout of B is the transpose (as u32 pairs) of the left-operand layout of Bᵀ, so the contiguous
    // cases reuse the left-operand packers with the roles of the strides swapped.
    let transposed = Source {
        ptr: b.ptr,
        rs: b.cs,
        cs: b.rs,
        rows: b.cols,
        cols: b.rows,
    };
    // SAFETY: forwarded; each branch's layout condition is checked right there.
    unsafe {
        if b.rs == 1 {
            pack_rows_contiguous(tiles, transposed);
            for tile in tiles.iter_mut() {
                transpose_pairs(tile);
            }
        } else if b.cs == 1 {
            pack_pairs_of_rows(tiles, b);
        } else {
            pack_b_scalar(tiles, b);
        }
    }
}

/// Right-operand panel with contiguous rows of `b` (`cs == 1`): each tile row interleaves two rows of `b`.
///
/// # Safety
/// `b` readable with `cs == 1`; AVX-512F/BW/BF16 available.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_pairs_of_rows(tiles: &mut [Tile], b: Source) {
    let row = |i: usize| (i < b.rows).then(|| b.ptr.offset(i as isize * b.rs));
    for (s, tile) in tiles.iter_mut().enumerate() {
        for p in 0..TILE_ROWS {
            let i = s * TILE_K + 2 * p;
            store_row(tile, p, pair_row(row(i), row(i + 1), b.cols));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simd_available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }

    /// Random f32 with a sprinkling of ties, denormals, infinities and NaNs.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let bits = state as u32;
                match state >> 60 {
                    0 => f32::from_bits(bits & 0x807f_ffff),            // denormal or zero
                    1 => f32::from_bits((bits & 0xffff_0000) | 0x8000), // exact tie
                    2 => f32::from_bits(bits | 0x7f80_0000),            // infinity or NaN
                    _ => ((bits >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 8.0,
                }
            })
            .collect()
    }

    #[test]
    fn simd_packers_match_scalar_definition() {
        if !simd_available() {
            eprintln!("skipped: AVX-512F/BW/BF16 not available");
            return;
        }
        for &(rows, cols) in &[(1, 1), (3, 17), (16, 32), (15, 33), (16, 64), (7, 100), (16, 577)] {
            let data = values(rows * cols, (rows * 1000 + cols) as u64);
            let steps = cols.div_ceil(TILE_K);
            for transposed in [false, true] {
                // The same logical rows × cols matrix stored row-major or column-major.
                let (rs, cs) = if transposed {
                    (1, rows as isize)
                } else {
                    (cols as isize, 1)
                };
                let stored: Vec<f32> = if transposed {
                    (0..rows * cols).map(|x| data[(x % rows) * cols + x / rows]).collect()
                } else {
                    data.clone()
                };
                let a = Source {
                    ptr: stored.as_ptr(),
                    rs,
                    cs,
                    rows,
                    cols,
                };
                let (mut want, mut got) = (vec![Tile::ZERO; steps], vec![Tile([0xdead; 512]); steps]);
                // SAFETY: the view covers `stored` exactly; features checked above.
                unsafe {
                    pack_a_scalar(&mut want, a);
                    pack_a(&mut got, a);
                }
                assert!(
                    want.iter().zip(&got).all(|(w, g)| w.0 == g.0),
                    "A {rows}×{cols} t={transposed}"
                );

                // As the right operand: `cols` = k rows of `rows` ≤ 16 columns, i.e. the transposed view.
                let b = Source {
                    ptr: stored.as_ptr(),
                    rs: cs,
                    cs: rs,
                    rows: cols,
                    cols: rows,
                };
                let (mut want, mut got) = (vec![Tile::ZERO; steps], vec![Tile([0xdead; 512]); steps]);
                // SAFETY: as above.
                unsafe {
                    pack_b_scalar(&mut want, b);
                    pack_b(&mut got, b);
                }
                assert!(
                    want.iter().zip(&got).all(|(w, g)| w.0 == g.0),
                    "B {cols}×{rows} t={transposed}"
                );
            }
        }
    }
}
