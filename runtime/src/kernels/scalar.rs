//! Scalar (`_generic`) reference kernels. No intrinsics and no `unsafe`: the definition every SIMD kernel is
//! tested against. Float sums use eight interleaved partial sums (lane `j` takes the elements `i ≡ j mod 8` of
//! the whole 8-element chunks, lanes are added in order, then the tail), which lets the compiler vectorise
//! them and gives SIMD versions a fixed order to reproduce.
//!
//! Int8-activation matrices (ternary, int8, int4) are defined by `int_row`: per scale span an exact i32 sum,
//! then a fixed sequence of f32 operations. Every table reproduces those bits.

use core::ops::Range;

use half::f16;
use tern_format::blocks::{round_half_even, BlockTernary2, BlockTernary3};
use tern_format::{ElementType, ScaleKind};

use super::tiles::{epilogue_group, epilogue_single, float_gemm};
use super::{round_up, ActQuant, Activations, Matrix, QRow, BLOCK, CHUNK};

/// Smallest absmax used for activation scaling (BitNet b1.58: `127 / max(|x|, 1e-5)`).
pub const ACT_EPS: f32 = tern_format::numerics::QUANT_EPS_F32;

/// Per-token int8 activation quantization (see `Kernels::quantize_i8`).
pub fn quantize_i8(x: &[f32], q: &mut [i8], chunk_sums: &mut [i32]) -> ActQuant {
    let s = act_scale(absmax(x));
    let mut sum = 0i32;
    for (c, (qc, cs)) in q.chunks_mut(CHUNK).zip(chunk_sums.iter_mut()).enumerate() {
        *cs = quantize_chunk(x.get(c * CHUNK..).unwrap_or(&[]), s, qc);
        sum = sum.wrapping_add(*cs);
    }
    ActQuant { d: 1.0 / s, sum }
}

/// `max |x|` (NaNs ignored, as `f32::max` does).
pub fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The activation scale `s = 127 / max(absmax, 1e-5)`.
#[inline]
pub fn act_scale(absmax: f32) -> f32 {
    tern_format::numerics::int8_act_scale(absmax)
}

/// Quantizes one chunk: `q[i] = clamp(round_half_even(x[i]·s), −128, 127)` (0 for a NaN product), and 0
/// past `x.len()`; returns `Σ q`.
pub fn quantize_chunk(x: &[f32], s: f32, q: &mut [i8]) -> i32 {
    // The zero part apart: written as one loop with `x.get(i)`, the compiler vectorises it with masked loads,
    // which past the end of `x` can cost a microcode assist each.
    let (head, tail) = q.split_at_mut(x.len().min(q.len()));
    let mut sum = 0i32;
    for (qi, &v) in head.iter_mut().zip(x) {
        // Ties to even, as the training engine (and PyTorch BitNet code) rounds.
        *qi = round_half_even(v * s).clamp(-128.0, 127.0) as i8;
        sum += i32::from(*qi);
    }
    tail.fill(0);
    sum
}

/// `Σ c·x` over 2-bit codes. Weight `i` of a block is in byte `i % 16` at bit `2·(i / 16)`, so the 32-weight
/// half `h` of a block is bytes 0..16 at shifts `4h` (weights `32h..32h+16`) and `4h + 2` (the next 16).
///
/// Products `c·x` lie in [−256, 254], so the 64 of a block (or 32 of a half) sum exactly in 16-bit lanes:
/// 16 lanes of i16, widened to i32 once per block — the shape LLVM turns into 16-bit vector multiplies.
pub fn dot_ternary2(blocks: &[BlockTernary2], start: usize, x: &[i8]) -> i32 {
    let mut acc = 0i32;
    let mut pos = start;
    let mut rest = x;
    while rest.len() >= CHUNK {
        let Some(b) = blocks.get(pos / BLOCK) else { break };
        let mut lanes = [0i16; 16];
        let step = if pos % BLOCK == 0 && rest.len() >= BLOCK {
            let (x0, r) = rest.split_at(16);
            let (x1, r) = r.split_at(16);
            let (x2, r) = r.split_at(16);
            let x3 = &r[..16];
            for (m, l) in lanes.iter_mut().enumerate() {
                let q = b.qs[m];
                *l += i16::from(q & 3) * i16::from(x0[m])
                    + i16::from((q >> 2) & 3) * i16::from(x1[m])
                    + i16::from((q >> 4) & 3) * i16::from(x2[m])
                    + i16::from(q >> 6) * i16::from(x3[m]);
            }
            BLOCK
        } else {
            let shift = if pos % BLOCK == 0 { 0 } else { 4 };
            let (lo, hi) = rest[..CHUNK].split_at(16);
            mul_add_codes(&mut lanes, &b.qs, shift, lo);
            mul_add_codes(&mut lanes, &b.qs, shift + 2, hi);
            CHUNK
        };
        acc = acc.wrapping_add(lanes.iter().map(|&v| i32::from(v)).sum::<i32>());
        pos += step;
        rest = &rest[step..];
    }
    acc
}

/// `lanes[m] += ((qs[m] >> shift) & 3) · x[m]` for 16 lanes.
#[inline(always)]
fn mul_add_codes(lanes: &mut [i16; 16], qs: &[u8; 16], shift: u32, x: &[i8]) {
    for ((l, &q), &v) in lanes.iter_mut().zip(qs).zip(x) {
        *l += i16::from((q >> shift) & 3) * i16::from(v);
    }
}

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// Codes of all 64 weights of a base-3 block: weight `i` is trit `i / 13` (most significant first) of byte
/// `i % 13`, read as `((b·3^k mod 256)·3) >> 8`.
#[inline]
pub fn decode_ternary3(block: &BlockTernary3, codes: &mut [u8; BLOCK]) {
    for (k, &p) in POW3.iter().enumerate() {
        for (j, &b) in block.qs.iter().enumerate() {
            if let Some(c) = codes.get_mut(13 * k + j) {
                *c = ((u16::from(b.wrapping_mul(p)) * 3) >> 8) as u8;
            }
        }
    }
}

/// `Σ c·x` over base-3 codes (a block's codes decoded once, then summed in 16-bit lanes as above).
pub fn dot_ternary3(blocks: &[BlockTernary3], start: usize, x: &[i8]) -> i32 {
    let mut acc = 0i32;
    let mut codes = [0u8; BLOCK];
    let mut pos = start;
    let mut rest = x;
    while rest.len() >= CHUNK {
        let Some(block) = blocks.get(pos / BLOCK) else { break };
        decode_ternary3(block, &mut codes);
        let off = pos % BLOCK;
        let n = (BLOCK - off).min(rest.len() / CHUNK * CHUNK);
        let mut lanes = [0i16; 16];
        for (cs, xs) in codes[off..off + n].chunks_exact(16).zip(rest[..n].chunks_exact(16)) {
            for ((l, &c), &v) in lanes.iter_mut().zip(cs).zip(xs) {
                *l += i16::from(c) * i16::from(v);
            }
        }
        acc = acc.wrapping_add(lanes.iter().map(|&v| i32::from(v)).sum::<i32>());
        pos += n;
        rest = &rest[n..];
    }
    acc
}

/// Eight-lane float dot product of `w` (converted by `f`) with `x` over their common length.
#[inline(always)]
fn dot8<T: Copy>(w: &[T], x: &[f32], f: impl Fn(T) -> f32) -> f32 {
    let n = w.len().min(x.len());
    let (w, x) = (&w[..n], &x[..n]);
    let mut lanes = [0.0f32; 8];
    let wc = w.chunks_exact(8);
    let xc = x.chunks_exact(8);
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for j in 0..8 {
            lanes[j] += f(a[j]) * b[j];
        }
    }
    let mut acc = 0.0f32;
    for l in lanes {
        acc += l;
    }
    for (&a, &b) in wt.iter().zip(xt) {
        acc += f(a) * b;
    }
    acc
}

pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    dot8(w, x, |v| v)
}

pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    dot8(w, x, f16_to_f32)
}

/// Exact f16 → f32 conversion in plain arithmetic (normals, subnormals, ±0, ±inf, NaN) that the compiler
/// vectorises: the exponent/mantissa bits shifted into f32 position and multiplied by 2^112 rebias the
/// exponent (subnormals included, as the product is exact); anything at or above 2^16 was inf/NaN and gets
/// an all-ones exponent. (A call-free stand-in for a hardware conversion; ~3x faster than `half`'s here.)
#[inline(always)]
pub fn f16_to_f32(h: f16) -> f32 {
    let h = u32::from(h.to_bits());
    let sign = (h & 0x8000) << 16;
    let f = f32::from_bits((h & 0x7FFF) << 13) * f32::from_bits((254 - 15) << 23);
    let bits = if f >= 65536.0 {
        f.to_bits() | (255 << 23)
    } else {
        f.to_bits()
    };
    f32::from_bits(bits | sign)
}

pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

pub fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * f16_to_f32(xi);
    }
}

/// `Σ w[i]·q[i]` over int8 weights (wrapping i32, which `MAX_COLS` keeps from ever wrapping).
pub fn dot_i8(w: &[i8], q: &[i8]) -> i32 {
    w.iter()
        .zip(q)
        .fold(0i32, |acc, (&a, &b)| acc.wrapping_add(i32::from(a) * i32::from(b)))
}

/// `Σ nibble(i)·q[i]` over the stored int4 nibbles (0..=15, element `i` in byte `i / 2`, low nibble first) of
/// elements `start..start + q.len()`; the caller subtracts `8·Σq` for the values `nibble − 8`.
pub fn dot_u4(w: &[u8], start: usize, q: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (i, &v) in q.iter().enumerate() {
        let e = start + i;
        let Some(&b) = w.get(e / 2) else { break };
        let nib = if e % 2 == 0 { b & 0x0F } else { b >> 4 };
        acc = acc.wrapping_add(i32::from(nib) * i32::from(v));
    }
    acc
}

/// Exact `Σ code·q` over weights `start..end` of one row (`start`, `end` multiples of `CHUNK`; `q` is the
/// whole zero-padded activation row) and the part of it the codes' offset contributes: `(Σ c·q, Σ q)` for
/// ternary codes `c = w + 1`, `(Σ w·q, 0)` for int8, `(Σ n·q, 8·Σ q)` for int4 nibbles `n = w + 8`.
pub fn span_sums(dtype: ElementType, row: &[u8], cols: usize, start: usize, end: usize, q: QRow<'_>) -> (i32, i32) {
    let Some(xs) = q.q.get(start..end) else {
        return (0, 0);
    };
    let qsum = || {
        q.chunk_sums
            .get(start / CHUNK..end / CHUNK)
            .unwrap_or(&[])
            .iter()
            .fold(0i32, |a, &b| a.wrapping_add(b))
    };
    match dtype {
        ElementType::Ternary2 => match bytemuck::try_cast_slice::<u8, BlockTernary2>(row) {
            Ok(b) => (dot_ternary2(b, start, xs), qsum()),
            Err(_) => (0, 0),
        },
        ElementType::Ternary3 => match bytemuck::try_cast_slice::<u8, BlockTernary3>(row) {
            Ok(b) => (dot_ternary3(b, start, xs), qsum()),
            Err(_) => (0, 0),
        },
        ElementType::Int8 => {
            let w: &[i8] = bytemuck::cast_slice(row.get(start.min(cols)..end.min(cols)).unwrap_or(&[]));
            (dot_i8(w, xs), 0)
        }
        ElementType::Int4 => {
            let n = end.min(cols).saturating_sub(start);
            (dot_u4(row, start, &xs[..n]), qsum().wrapping_mul(8))
        }
        ElementType::F16 | ElementType::F32 => (0, 0),
    }
}

/// Output `r` of an int8-activation matrix for one quantized token: the definition every table reproduces.
///
/// One scale per tensor or row: `(Σ − offset) as f32 · (s · d)`. Per group (spans of G weights):
/// `acc = 0; acc += (Σ_g − offset_g) as f32 · s_g` in group order, then `acc · d`.
pub fn int_row(w: &Matrix<'_>, r: usize, q: QRow<'_>) -> f32 {
    let Some(row) = w.row(r) else { return f32::NAN };
    let scales = w.row_scales(r);
    let padded = w.padded_cols();
    match w.scale {
        ScaleKind::PerGroup(g) => {
            let g = g as usize;
            let mut acc = 0.0f32;
            for (gi, &s) in scales.iter().enumerate() {
                let start = gi * g;
                let end = round_up((start + g).min(w.cols), CHUNK);
                let (dot, off) = span_sums(w.dtype, row, w.cols, start, end, q);
                acc = epilogue_group(acc, dot.wrapping_sub(off), s);
            }
            acc * q.quant.d
        }
        ScaleKind::PerTensor | ScaleKind::PerRow => {
            let Some(&s) = scales.first() else { return f32::NAN };
            let (dot, off) = span_sums(w.dtype, row, w.cols, 0, padded, q);
            epilogue_single(dot.wrapping_sub(off), s, q.quant.d)
        }
        ScaleKind::None => f32::NAN,
    }
}

/// Output `r` of `W·x_t` for an int8-activation matrix.
fn int_value(w: &Matrix<'_>, x: &Activations<'_>, t: usize, r: usize) -> f32 {
    match x.int8_row(t) {
        Some(q) => int_row(w, r, q),
        None => f32::NAN,
    }
}

/// Matrix-vector reference.
pub fn gemv(w: &Matrix<'_>, x: &Activations<'_>, t: usize, rows: Range<usize>, out: &mut [f32]) {
    gemm(w, x, t..t + 1, rows, out)
}

/// Matrix-matrix reference: rows outer, tokens inner (a row is reused from cache by every token).
pub fn gemm(w: &Matrix<'_>, x: &Activations<'_>, tokens: Range<usize>, rows: Range<usize>, out: &mut [f32]) {
    if matches!(w.dtype, ElementType::F16 | ElementType::F32) {
        return float_gemm(w, x, tokens, rows, out, dot_f16, dot_f32);
    }
    let width = rows.len();
    for (ri, r) in rows.enumerate() {
        for (ti, t) in tokens.clone().enumerate() {
            if let Some(o) = out.get_mut(ti * width + ri) {
                *o = int_value(w, x, t, r);
            }
        }
    }
}
