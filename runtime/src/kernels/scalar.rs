//! Scalar (`_generic`) reference kernels. No intrinsics and no `unsafe`: the definition every SIMD kernel is
//! tested against. Float sums use eight interleaved partial sums (lane `j` takes the elements `i ≡ j mod 8` of
//! the whole 8-element chunks, lanes are added in order, then the tail), which lets the compiler vectorise
//! them and gives SIMD versions a fixed order to reproduce.

use half::f16;
use tern_format::blocks::{round_half_even, BlockTernary2, BlockTernary3};

use super::{ActQuant, BLOCK, CHUNK};

/// Smallest absmax used for activation scaling (BitNet b1.58: `127 / max(|x|, 1e-5)`).
pub const ACT_EPS: f32 = 1e-5;

/// Per-token int8 activation quantization (see `Kernels::quantize_i8`).
pub fn quantize_i8(x: &[f32], q: &mut [i8], chunk_sums: &mut [i32]) -> ActQuant {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s = 127.0 / amax.max(ACT_EPS);
    for (i, qi) in q.iter_mut().enumerate() {
        *qi = match x.get(i) {
            // Ties to even, as the training engine (and PyTorch BitNet code) rounds.
            Some(&v) => round_half_even(v * s).clamp(-128.0, 127.0) as i8,
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
        acc += lanes.iter().map(|&v| i32::from(v)).sum::<i32>();
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
        acc += lanes.iter().map(|&v| i32::from(v)).sum::<i32>();
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

pub fn dot_int8(w: &[i8], x: &[f32]) -> f32 {
    dot8(w, x, f32::from)
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
        *yi += a * f16_to_f32(xi);
    }
}
