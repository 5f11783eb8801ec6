//! Block layouts of the quantized element types and their scalar pack/unpack: the reference that every
//! optimised kernel (runtime SIMD, GGUF export) is tested against.
//!
//! Both ternary layouts store codes `c = w + 1 ∈ {0, 1, 2}` so that a kernel can compute
//! `Σ w·x = Σ c·x − Σ x` with unsigned×signed byte multiplies (see FORMAT.md §6).
//! A row of `cols` weights is stored as `ceil(cols / 64)` blocks; weights past `cols` are code 1 (zero).

use bytemuck::{Pod, Zeroable};

/// Weights per ternary block (both layouts).
pub const TERNARY_BLOCK_WEIGHTS: usize = 64;

/// 64 ternary weights, 2 bits each. Weight `i` lives in byte `i % 16` at bit offset `2 * (i / 16)`, so one
/// shift-and-mask of the 16 bytes yields 16 consecutive weights (a whole SIMD lane of codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockTernary2 {
    pub qs: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<BlockTernary2>() == 16);
const _: () = assert!(core::mem::align_of::<BlockTernary2>() == 1);

/// 64 ternary weights in base 3, 5 trits per byte (1.625 bits/weight). Weight `i` is trit `i / 13` (most
/// significant first) of byte `i % 13`; the 65th slot (byte 12, trit 4) is padding holding code 1.
/// Each byte stores `ceil(v · 256 / 243)` for `v = Σ_k c_k 3^(4−k)`, which lets trit `k` be read with a
/// wrapping byte multiply by `3^k` followed by `(b · 3) >> 8` (no division; the same trick as ggml's TQ1_0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockTernary3 {
    pub qs: [u8; 13],
}
const _: () = assert!(core::mem::size_of::<BlockTernary3>() == 13);
const _: () = assert!(core::mem::align_of::<BlockTernary3>() == 1);

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// A value outside {-1, 0, 1} was given to a ternary packer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotTernary {
    pub index: usize,
    pub value: i8,
}

fn code_of(w: i8, index: usize) -> Result<u8, NotTernary> {
    match w {
        -1..=1 => Ok((w + 1) as u8),
        _ => Err(NotTernary { index, value: w }),
    }
}

/// Packs one row of ternary weights into `ceil(row.len() / 64)` 2-bit blocks.
///
/// `out.len()` must equal `row.len().div_ceil(64)`; returns an error for values outside {-1, 0, 1}.
pub fn pack_ternary2_row(row: &[i8], out: &mut [BlockTernary2]) -> Result<(), NotTernary> {
    assert_eq!(
        out.len(),
        row.len().div_ceil(TERNARY_BLOCK_WEIGHTS),
        "output block count"
    );
    for (b, block) in out.iter_mut().enumerate() {
        // Code 1 (weight 0) everywhere, then overwrite the slots that hold real weights.
        block.qs = [0b0101_0101; 16];
        for i in 0..TERNARY_BLOCK_WEIGHTS {
            let idx = b * TERNARY_BLOCK_WEIGHTS + i;
            let Some(&w) = row.get(idx) else { break };
            let c = code_of(w, idx)?;
            let shift = 2 * (i / 16);
            let byte = &mut block.qs[i % 16];
            *byte = (*byte & !(0b11 << shift)) | (c << shift);
        }
    }
    Ok(())
}

/// Code (0, 1 or 2; 3 is never written) of weight `i` (0..64) of a 2-bit block.
#[inline]
pub fn ternary2_code(block: &BlockTernary2, i: usize) -> u8 {
    (block.qs[i % 16] >> (2 * (i / 16))) & 0b11
}

/// Unpacks `out.len()` weights from 2-bit blocks. A code of 3 (never written by the packer) decodes as +2,
/// the value a `c − 1` kernel computes, so scalar and SIMD paths agree even on corrupt data.
pub fn unpack_ternary2_row(blocks: &[BlockTernary2], out: &mut [i8]) {
    for (idx, w) in out.iter_mut().enumerate() {
        let block = &blocks[idx / TERNARY_BLOCK_WEIGHTS];
        *w = ternary2_code(block, idx % TERNARY_BLOCK_WEIGHTS) as i8 - 1;
    }
}

/// Packs one row of ternary weights into `ceil(row.len() / 64)` base-3 blocks.
pub fn pack_ternary3_row(row: &[i8], out: &mut [BlockTernary3]) -> Result<(), NotTernary> {
    assert_eq!(
        out.len(),
        row.len().div_ceil(TERNARY_BLOCK_WEIGHTS),
        "output block count"
    );
    for (b, block) in out.iter_mut().enumerate() {
        for j in 0..13 {
            let mut v: u32 = 0;
            for k in 0..5 {
                let i = 13 * k + j;
                let idx = b * TERNARY_BLOCK_WEIGHTS + i;
                let c = if i < TERNARY_BLOCK_WEIGHTS {
                    match row.get(idx) {
                        Some(&w) => code_of(w, idx)?,
                        None => 1,
                    }
                } else {
                    1
                };
                v = v * 3 + c as u32;
            }
            // v ≤ 242, so the result is ≤ 255.
            block.qs[j] = ((v * 256).div_ceil(243)) as u8;
        }
    }
    Ok(())
}

/// Code (0, 1 or 2) of weight `i` (0..64) of a base-3 block.
#[inline]
pub fn ternary3_code(block: &BlockTernary3, i: usize) -> u8 {
    let q = block.qs[i % 13].wrapping_mul(POW3[i / 13]);
    ((q as u16 * 3) >> 8) as u8
}

/// Unpacks `out.len()` weights from base-3 blocks.
pub fn unpack_ternary3_row(blocks: &[BlockTernary3], out: &mut [i8]) {
    for (idx, w) in out.iter_mut().enumerate() {
        let block = &blocks[idx / TERNARY_BLOCK_WEIGHTS];
        *w = ternary3_code(block, idx % TERNARY_BLOCK_WEIGHTS) as i8 - 1;
    }
}

/// Symmetric int8 quantization of one row (absmax / 127). Returns the scale; an all-zero row gets scale 0.
pub fn quantize_int8_row(row: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(row.len(), out.len());
    let amax = row.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    if amax == 0.0 || !amax.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let scale = amax / 127.0;
    let inv = 1.0 / scale;
    for (q, &x) in out.iter_mut().zip(row) {
        *q = round_half_away(x * inv).clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Symmetric int4 quantization of one row in groups of `group` (absmax / 7, values −8..=7 stored as q + 8,
/// low nibble first). `out.len() == row.len().div_ceil(2)`, `scales.len() == row.len().div_ceil(group)`.
pub fn quantize_int4_row(row: &[f32], group: usize, out: &mut [u8], scales: &mut [f32]) {
    assert_eq!(out.len(), row.len().div_ceil(2));
    assert_eq!(scales.len(), row.len().div_ceil(group));
    out.fill(0x88);
    for (g, chunk) in row.chunks(group).enumerate() {
        let amax = chunk.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        let scale = if amax.is_finite() && amax > 0.0 {
            amax / 7.0
        } else {
            0.0
        };
        scales[g] = scale;
        for (i, &x) in chunk.iter().enumerate() {
            let q = if scale == 0.0 {
                0
            } else {
                round_half_away(x / scale).clamp(-8.0, 7.0) as i8
            };
            let idx = g * group + i;
            let nib = (q + 8) as u8;
            let byte = &mut out[idx / 2];
            *byte = if idx % 2 == 0 {
                (*byte & 0xF0) | nib
            } else {
                (*byte & 0x0F) | (nib << 4)
            };
        }
    }
}

/// Signed value (−8..=7) of element `idx` of an int4 row.
#[inline]
pub fn int4_value(bytes: &[u8], idx: usize) -> i8 {
    let b = bytes[idx / 2];
    let nib = if idx % 2 == 0 { b & 0x0F } else { b >> 4 };
    nib as i8 - 8
}

/// Rounds to the nearest integer, ties to even (IEEE default, `torch.round`, `f32::round_ties_even`), without
/// `std`. BitNet b1.58 and the training engine round this way, so the runtime's activation quantization and the
/// PTQ weight quantization use it too: what trains is bit-for-bit what runs.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    // Adding and subtracting 2^23 rounds to an integer in the default round-to-nearest-even mode, exactly, for
    // |x| < 2^23; larger values are integers already, and NaN passes through.
    const MAGIC: f32 = 8_388_608.0;
    if x.abs() < MAGIC {
        let m = if x.is_sign_negative() { -MAGIC } else { MAGIC };
        (x + m) - m
    } else {
        x
    }
}

/// Rounds half away from zero without `std` (`f32::round` is not in `core`).
#[inline]
pub fn round_half_away(x: f32) -> f32 {
    let t = x as i64 as f32; // truncation toward zero; inputs here are small
    let frac = x - t;
    if frac >= 0.5 {
        t + 1.0
    } else if frac <= -0.5 {
        t - 1.0
    } else {
        t
    }
}
