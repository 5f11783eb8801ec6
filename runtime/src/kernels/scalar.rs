//! Scalar (`_generic`) reference kernels. No intrinsics and no `unsafe`: the definition every SIMD kernel is
//! tested against. Float sums use eight interleaved partial sums (lane `j` takes the elements `i ≡ j mod 8` of
//! the whole 8-element chunks, lanes are added in order, then the tail), which lets the compiler vectorise
//! them and gives SIMD versions a fixed order to reproduce.

use half::f16;
use tern_format::blocks::{round_half_away, BlockTernary2, BlockTernary3};

use super::{ActQuant, BLOCK, CHUNK};

/// Smallest absmax used for activation scaling (BitNet b1.58: `127 / max(|x|, 1e-5)`).
pub const ACT_EPS: f32 = 1e-5;

/// Per-token int8 activation quantization (see `Kernels::quantize_i8`).
pub fn quantize_i8(x: &[f32], q: &mut [i8], chunk_sums: &mut [i32]) -> ActQuant {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s = 127.0 / amax.max(ACT_EPS);
    for (i, qi) in q.iter_mut().enumerate() {
        *qi = match x.get(i) {
            Some(&v) => round_half_away(v * s).clamp(-128.0, 127.0) as i8,
            None => 0,
        };
    }
    let mut sum = 0i32;
    for (cs, chunk) in chunk_sums.iter_mut().zip(q.chunks(CHUNK)) {
        *cs = chunk.iter().map(|&v| i32::from(v)).sum();
        sum += *cs;
    }
    ActQuant { d: 1.0 / s, sum }
}

/// `Σ c·x` over 2-bit codes. Weight `i` of a block is in byte `i % 16` at bit `2·(i / 16)`, so the 32-weight
/// half `h` of a block is bytes 0..16 at shifts `4h` (weights `32h..32h+16`) and `4h + 2` (the next 16).
pub fn dot_ternary2(blocks: &[BlockTernary2], start: usize, x: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (half, xs) in (start / CHUNK..).zip(x.chunks_exact(CHUNK)) {
        let Some(b) = blocks.get(half / 2) else { break };
        let shift = 4 * (half % 2);
        let (lo, hi) = xs.split_at(16);
        let mut part = 0i32;
        for ((&byte, &a), &b2) in b.qs.iter().zip(lo).zip(hi) {
            let c0 = i32::from((byte >> shift) & 3);
            let c1 = i32::from((byte >> (shift + 2)) & 3);
            part += c0 * i32::from(a) + c1 * i32::from(b2);
        }
        acc += part;
    }
    acc
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

/// `Σ c·x` over base-3 codes.
pub fn dot_ternary3(blocks: &[BlockTernary3], start: usize, x: &[i8]) -> i32 {
    let mut acc = 0i32;
    let mut codes = [0u8; BLOCK];
    let mut decoded = usize::MAX;
    let mut pos = start;
    for xs in x.chunks_exact(CHUNK) {
        let b = pos / BLOCK;
        if b != decoded {
            let Some(block) = blocks.get(b) else { break };
            decode_ternary3(block, &mut codes);
            decoded = b;
        }
        let off = pos % BLOCK;
        let cs = codes.get(off..off + CHUNK).unwrap_or(&[]);
        let mut part = 0i32;
        for (&c, &a) in cs.iter().zip(xs) {
            part += i32::from(c) * i32::from(a);
        }
        acc += part;
        pos += CHUNK;
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

pub fn dot_int8(w: &[i8], x: &[f32]) -> f32 {
    dot8(w, x, f32::from)
}

pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    dot8(w, x, |v| v)
}

pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    dot8(w, x, f16::to_f32)
}

/// int4 row segment: element `i` is nibble `i % 2` (low first) of byte `i / 2`, value `nibble − 8`.
pub fn dot_int4(w: &[u8], x: &[f32]) -> f32 {
    let mut lo = 0.0f32;
    let mut hi = 0.0f32;
    let pairs = x.chunks_exact(2);
    let tail = pairs.remainder();
    for (&b, p) in w.iter().zip(pairs) {
        lo += f32::from((b & 0x0F) as i8 - 8) * p[0];
        hi += f32::from((b >> 4) as i8 - 8) * p[1];
    }
    let mut acc = lo + hi;
    if let (Some(&xt), Some(&b)) = (tail.first(), w.get(x.len() / 2)) {
        acc += f32::from((b & 0x0F) as i8 - 8) * xt;
    }
    acc
}

pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

pub fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi.to_f32();
    }
}
