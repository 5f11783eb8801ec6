//! GGUF (versions 2 and 3) reader over a memory mapping.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the metadata
//! key/value pairs, the tensor infos (name, dims with `dims[0]` the contiguous one, ggml type, offset relative to
//! the data section), padding to `general.alignment` (default 32), then the tensor data.
//!
//! Every count, length and offset read from the file is checked against the bytes that remain before anything is
//! allocated or sliced, so a corrupt or hostile file yields an [`ImportError`] (naming the file, the tensor or key,
//! and the problem), never a panic or an attempt to allocate what the file merely claims.
//!
//! Dequantization to f32 follows ggml's reference code; where ggml's C and the `gguf` Python package's numpy code
//! agree on the order of f32 operations (they do for every type here), this code uses the same order, so results
//! are bit-identical to both (tests compare against the Python package's output).

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use half::f16;

use crate::error::ImportError;

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (GGUF writers produce at most 2; the bound keeps recursion shallow
/// on hostile input).
const MAX_ARRAY_DEPTH: u32 = 8;

// ---------------------------------------------------------------------------------------------------------------
// ggml element types: the one table of ids, names, block sizes and byte sizes.
// ---------------------------------------------------------------------------------------------------------------

/// ggml tensor element types, by their on-disk ids (ggml.h `enum ggml_type`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    /// llama.cpp's 64-weight ternary-capable 2-bit type (id 42).
    Q2_0,
}

/// Dequantizes whole blocks: `src.len()` is a multiple of the type's block bytes and `dst.len()` is the matching
/// number of elements (the caller guarantees both).
type DequantFn = fn(src: &[u8], dst: &mut [f32]);

/// One row of the type table.
struct TypeTraits {
    ty: GgmlType,
    id: u32,
    name: &'static str,
    /// Elements per block.
    block: u32,
    /// Bytes per block.
    bytes: u32,
    dequant: Option<DequantFn>,
}

const QK_K: usize = 256;

/// ids, names and sizes as in ggml.c `type_traits` and gguf-py `GGML_QUANT_SIZES` (gguf 0.19.0).
static TYPE_TABLE: &[TypeTraits] = &[
    tt(GgmlType::F32, 0, "f32", 1, 4, Some(deq_f32)),
    tt(GgmlType::F16, 1, "f16", 1, 2, Some(deq_f16)),
    tt(GgmlType::Q4_0, 2, "q4_0", 32, 18, Some(deq_q4_0)),
    tt(GgmlType::Q4_1, 3, "q4_1", 32, 20, Some(deq_q4_1)),
    tt(GgmlType::Q5_0, 6, "q5_0", 32, 22, Some(deq_q5_0)),
    tt(GgmlType::Q5_1, 7, "q5_1", 32, 24, Some(deq_q5_1)),
    tt(GgmlType::Q8_0, 8, "q8_0", 32, 34, Some(deq_q8_0)),
    tt(GgmlType::Q8_1, 9, "q8_1", 32, 40, None),
    tt(GgmlType::Q2_K, 10, "q2_K", 256, 84, Some(deq_q2_k)),
    tt(GgmlType::Q3_K, 11, "q3_K", 256, 110, Some(deq_q3_k)),
    tt(GgmlType::Q4_K, 12, "q4_K", 256, 144, Some(deq_q4_k)),
    tt(GgmlType::Q5_K, 13, "q5_K", 256, 176, Some(deq_q5_k)),
    tt(GgmlType::Q6_K, 14, "q6_K", 256, 210, Some(deq_q6_k)),
    tt(GgmlType::Q8_K, 15, "q8_K", 256, 292, Some(deq_q8_k)),
    tt(GgmlType::IQ2_XXS, 16, "iq2_xxs", 256, 66, None),
    tt(GgmlType::IQ2_XS, 17, "iq2_xs", 256, 74, None),
    tt(GgmlType::IQ3_XXS, 18, "iq3_xxs", 256, 98, None),
    tt(GgmlType::IQ1_S, 19, "iq1_s", 256, 50, None),
    tt(GgmlType::IQ4_NL, 20, "iq4_nl", 32, 18, None),
    tt(GgmlType::IQ3_S, 21, "iq3_s", 256, 110, None),
    tt(GgmlType::IQ2_S, 22, "iq2_s", 256, 82, None),
    tt(GgmlType::IQ4_XS, 23, "iq4_xs", 256, 136, None),
    tt(GgmlType::I8, 24, "i8", 1, 1, None),
    tt(GgmlType::I16, 25, "i16", 1, 2, None),
    tt(GgmlType::I32, 26, "i32", 1, 4, None),
    tt(GgmlType::I64, 27, "i64", 1, 8, None),
    tt(GgmlType::F64, 28, "f64", 1, 8, None),
    tt(GgmlType::IQ1_M, 29, "iq1_m", 256, 56, None),
    tt(GgmlType::BF16, 30, "bf16", 1, 2, Some(deq_bf16)),
    tt(GgmlType::TQ1_0, 34, "tq1_0", 256, 54, Some(deq_tq1_0)),
    tt(GgmlType::TQ2_0, 35, "tq2_0", 256, 66, Some(deq_tq2_0)),
    tt(GgmlType::MXFP4, 39, "mxfp4", 32, 17, None),
    tt(GgmlType::NVFP4, 40, "nvfp4", 64, 36, None),
    tt(GgmlType::Q1_0, 41, "q1_0", 128, 18, None),
    tt(GgmlType::Q2_0, 42, "q2_0", 64, 18, Some(deq_q2_0)),
];

const fn tt(
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block: u32,
    bytes: u32,
    dequant: Option<DequantFn>,
) -> TypeTraits {
    TypeTraits {
        ty,
        id,
        name,
        block,
        bytes,
        dequant,
    }
}

impl GgmlType {
    fn traits(self) -> &'static TypeTraits {
        // Every variant has exactly one row (checked by a unit test); the fallback is never taken.
        TYPE_TABLE.iter().find(|t| t.ty == self).unwrap_or(&TYPE_TABLE[0])
    }
    /// The type with on-disk id `id`, if this table knows it.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPE_TABLE.iter().find(|t| t.id == id).map(|t| t.ty)
    }
    pub fn id(self) -> u32 {
        self.traits().id
    }
    /// ggml's name for the type (`q4_K`, `bf16`, …).
    pub fn name(self) -> &'static str {
        self.traits().name
    }
    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> u64 {
        u64::from(self.traits().block)
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        u64::from(self.traits().bytes)
    }
    /// Whether [`GgufFile::dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        self.traits().dequant.is_some()
    }
    /// Bytes of a row of `cols` elements, or `None` when `cols` is not a whole number of blocks or overflows.
    pub fn row_bytes(self, cols: u64) -> Option<u64> {
        if cols % self.block_size() != 0 {
            return None;
        }
        (cols / self.block_size()).checked_mul(self.block_bytes())
    }
    /// All types in the table.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPE_TABLE.iter().map(|t| t.ty)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Dequantization kernels (scalar; one ggml block at a time). Indices into a block are constants below the block's
// byte size, and blocks come from `chunks_exact`, so no index can be out of bounds whatever the file contains.
// ---------------------------------------------------------------------------------------------------------------

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn deq_f32(src: &[u8], dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

fn deq_f16(src: &[u8], dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *d = f16_at(s, 0);
    }
}

fn deq_bf16(src: &[u8], dst: &mut [f32]) {
    // bf16 is the top half of an f32: widening is exact.
    for (s, d) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *d = f32::from_bits(u32::from(u16::from_le_bytes([s[0], s[1]])) << 16);
    }
}

/// Q4_0: f16 d, 16 bytes of nibbles; element k in the low nibble of byte k, element k+16 in its high nibble;
/// value (q − 8)·d.
fn deq_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for k in 0..16 {
            let q = b[2 + k];
            y[k] = d * ((q & 0x0F) as i32 - 8) as f32;
            y[k + 16] = d * ((q >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles (as Q4_0); value q·d + m.
fn deq_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        for k in 0..16 {
            let q = b[4 + k];
            y[k] = d * (q & 0x0F) as f32 + m;
            y[k + 16] = d * (q >> 4) as f32 + m;
        }
    }
}

/// Q5_0: f16 d, u32 of fifth bits (bit j for element j), nibbles as Q4_0; value (q − 16)·d.
fn deq_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for (j, out) in y.iter_mut().enumerate() {
            let ql = (b[6 + j % 16] >> (4 * (j / 16))) & 0x0F;
            let h = ((qh >> j) & 1) as u8;
            *out = d * ((ql | (h << 4)) as i32 - 16) as f32;
        }
    }
}

/// Q5_1: f16 d, f16 m, u32 of fifth bits, nibbles; value q·d + m.
fn deq_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for (j, out) in y.iter_mut().enumerate() {
            let ql = (b[8 + j % 16] >> (4 * (j / 16))) & 0x0F;
            let h = ((qh >> j) & 1) as u8;
            *out = d * (ql | (h << 4)) as f32 + m;
        }
    }
}

/// Q8_0: f16 d, 32 signed bytes; value q·d.
fn deq_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (k, out) in y.iter_mut().enumerate() {
            *out = (b[2 + k] as i8) as f32 * d;
        }
    }
}

/// Q2_K: 16 bytes of (scale | min << 4) per 16 elements, 64 bytes of 2-bit codes, f16 d, f16 dmin. Element
/// j = 128c + 32s + k has code bits 2s..2s+2 of byte 32c + k; value (d·scale)·q − dmin·min.
fn deq_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(84).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 80);
        let dmin = f16_at(b, 82);
        for (j, out) in y.iter_mut().enumerate() {
            let (c, s, k) = (j / 128, (j % 128) / 32, j % 32);
            let q = (b[16 + c * 32 + k] >> (2 * s)) & 3;
            let sc = b[j / 16];
            let dl = d * (sc & 0x0F) as f32;
            let ml = dmin * (sc >> 4) as f32;
            *out = dl * q as f32 - ml;
        }
    }
}

/// Q3_K: 32 bytes of high-bit masks, 64 bytes of 2-bit codes, 12 bytes of 6-bit scales, f16 d. Element
/// j = 128c + 32s + k: low bits 2s.. of byte 32c + k, high bit (j / 32) of hmask[k] (a clear bit subtracts 4);
/// value (d·(scale − 32))·q.
fn deq_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 108);
        let sc = &b[96..108];
        let mut scales = [0f32; 16];
        for (i, s) in scales.iter_mut().enumerate() {
            let low = (sc[i % 8] >> (4 * (i / 8))) & 0x0F;
            let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 0x03;
            *s = ((low | (high << 4)) as i8 - 32) as f32;
        }
        for (j, out) in y.iter_mut().enumerate() {
            let (c, s, k) = (j / 128, (j % 128) / 32, j % 32);
            let ql = ((b[32 + c * 32 + k] >> (2 * s)) & 3) as i8;
            let hbit = (b[k] >> (j / 32)) & 1;
            let q = ql - (((hbit ^ 1) << 2) as i8);
            let dl = d * scales[j / 16];
            *out = dl * q as f32;
        }
    }
}

/// Unpacks the eight 6-bit (scale, min) pairs of Q4_K/Q5_K from their 12 bytes (ggml `get_scale_min_k4`).
fn k4_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for i in 0..4 {
        sc[i] = s[i] & 0x3F;
        mn[i] = s[4 + i] & 0x3F;
        sc[4 + i] = (s[8 + i] & 0x0F) | ((s[i] >> 6) << 4);
        mn[4 + i] = (s[8 + i] >> 4) | ((s[4 + i] >> 6) << 4);
    }
    (sc, mn)
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles. Sub-block t = 2c + h (32 elements)
/// takes nibble h of bytes 32c..32c+32; value (d·scale)·q − dmin·min.
fn deq_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let (sc, mn) = k4_scales_mins(&b[4..16]);
        for (j, out) in y.iter_mut().enumerate() {
            let (t, k) = (j / 32, j % 32);
            let q = (b[16 + (t / 2) * 32 + k] >> (4 * (t % 2))) & 0x0F;
            let dl = d * sc[t] as f32;
            let ml = dmin * mn[t] as f32;
            *out = dl * q as f32 - ml;
        }
    }
}

/// Q5_K: as Q4_K plus 32 bytes of fifth bits (bit t of byte k for element 32t + k).
fn deq_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let (sc, mn) = k4_scales_mins(&b[4..16]);
        for (j, out) in y.iter_mut().enumerate() {
            let (t, k) = (j / 32, j % 32);
            let ql = (b[48 + (t / 2) * 32 + k] >> (4 * (t % 2))) & 0x0F;
            let qh = (b[16 + k] >> t) & 1;
            let q = ql | (qh << 4);
            let dl = d * sc[t] as f32;
            let ml = dmin * mn[t] as f32;
            *out = dl * q as f32 - ml;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed scales, f16 d. Element
/// j = 128c + 64h + m: low nibble h of ql[64c + m]; high bits 2s.. of qh[32c + k] where j = 128c + 32s + k;
/// value (d·scale[j / 16])·(q − 32).
fn deq_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        for (j, out) in y.iter_mut().enumerate() {
            let c = j / 128;
            let (h, m) = ((j % 128) / 64, j % 64);
            let (s, k) = ((j % 128) / 32, j % 32);
            let ql = (b[c * 64 + m] >> (4 * h)) & 0x0F;
            let qh = (b[128 + c * 32 + k] >> (2 * s)) & 0x03;
            let q = (ql | (qh << 4)) as i8 - 32;
            let dl = d * (b[192 + j / 16] as i8) as f32;
            *out = dl * q as f32;
        }
    }
}

/// Q8_K: f32 d, 256 signed bytes, 16 i16 block sums (not needed to dequantize); value d·q.
fn deq_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(292).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (k, out) in y.iter_mut().enumerate() {
            *out = d * (b[4 + k] as i8) as f32;
        }
    }
}

/// TQ1_0: 48 bytes of 5 trits each, 4 bytes of 4 trits each, f16 d. A byte holds its trits as a base-3 fraction
/// scaled by 256/243; trit n of byte x is `((x·3ⁿ mod 256)·3) >> 8`. Elements: 0..160 from bytes 0..32
/// (element 32n + k = trit n of byte k), 160..240 from bytes 32..48 (16n + k), 240..256 from the 4 bytes
/// (4n + k); value (trit − 1)·d.
fn deq_tq1_0(src: &[u8], dst: &mut [f32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    for (b, y) in src.chunks_exact(54).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 52);
        let trit = |x: u8, n: usize| -> f32 {
            let v = x.wrapping_mul(POW3[n]);
            (((u16::from(v) * 3) >> 8) as i8 - 1) as f32
        };
        for n in 0..5 {
            for k in 0..32 {
                y[32 * n + k] = d * trit(b[k], n);
            }
            for k in 0..16 {
                y[160 + 16 * n + k] = d * trit(b[32 + k], n);
            }
        }
        for n in 0..4 {
            for k in 0..4 {
                y[240 + 4 * n + k] = d * trit(b[48 + k], n);
            }
        }
    }
}

/// TQ2_0: 64 bytes of 2-bit codes, f16 d. Element j = 128c + 32s + k has bits 2s.. of byte 32c + k; value
/// (code − 1)·d.
fn deq_tq2_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(66).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 64);
        for (j, out) in y.iter_mut().enumerate() {
            let (c, s, k) = (j / 128, (j % 128) / 32, j % 32);
            let q = ((b[c * 32 + k] >> (2 * s)) & 3) as i8 - 1;
            *out = d * q as f32;
        }
    }
}

/// Q2_0 (ggml-quants.c `dequantize_row_q2_0`): f16 d, then 16 bytes; weight j in byte j/4 at bit 2·(j mod 4),
/// value (code − 1)·d.
fn deq_q2_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(64)) {
        let d = f16_at(b, 0);
        for (j, out) in y.iter_mut().enumerate() {
            let q = ((b[2 + j / 4] >> (2 * (j % 4))) & 3) as i8 - 1;
            *out = d * q as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Metadata values.
// ---------------------------------------------------------------------------------------------------------------

/// GGUF metadata value type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl MetaType {
    pub fn from_code(code: u32) -> Option<Self> {
        use MetaType::*;
        Some(match code {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
    /// Fewest bytes one value of this type occupies (a string or array header is a u64 length or a u32 type plus
    /// a u64 count); used to bound counts before allocating.
    fn min_bytes(self) -> u64 {
        use MetaType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type (kept so that empty arrays still say what they hold) and elements.
    Array(MetaType, Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn meta_type(&self) -> MetaType {
        match self {
            MetaValue::U8(_) => MetaType::U8,
            MetaValue::I8(_) => MetaType::I8,
            MetaValue::U16(_) => MetaType::U16,
            MetaValue::I16(_) => MetaType::I16,
            MetaValue::U32(_) => MetaType::U32,
            MetaValue::I32(_) => MetaType::I32,
            MetaValue::F32(_) => MetaType::F32,
            MetaValue::Bool(_) => MetaType::Bool,
            MetaValue::String(_) => MetaType::String,
            MetaValue::Array(..) => MetaType::Array,
            MetaValue::U64(_) => MetaType::U64,
            MetaValue::I64(_) => MetaType::I64,
            MetaValue::F64(_) => MetaType::F64,
        }
    }
    /// Any integer type as i128 (so that every GGUF integer fits), `None` for other types.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }
    /// f32 or f64 (or an integer, converted), `None` for other types.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_integer().map(|i| i as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(_, items) => Some(items),
            _ => None,
        }
    }
    /// A short human rendering (arrays summarised), for metadata listings.
    pub fn display_short(&self) -> String {
        match self {
            MetaValue::String(s) if s.chars().count() > 200 => {
                let head: String = s.chars().take(200).collect();
                format!("{head}…")
            }
            MetaValue::String(s) => s.clone(),
            MetaValue::Array(t, items) => format!("[{:?}; {}]", t, items.len()),
            MetaValue::U8(v) => v.to_string(),
            MetaValue::I8(v) => v.to_string(),
            MetaValue::U16(v) => v.to_string(),
            MetaValue::I16(v) => v.to_string(),
            MetaValue::U32(v) => v.to_string(),
            MetaValue::I32(v) => v.to_string(),
            MetaValue::U64(v) => v.to_string(),
            MetaValue::I64(v) => v.to_string(),
            MetaValue::F32(v) => v.to_string(),
            MetaValue::F64(v) => v.to_string(),
            MetaValue::Bool(v) => v.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor infos and the file.
// ---------------------------------------------------------------------------------------------------------------

/// A tensor's entry, validated: its bytes lie inside the file and match its type and dims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (column) dimension, `dims[1]` the rows, …
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section (a multiple of the alignment).
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// Elements per row (`dims[0]`).
    pub fn cols(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Number of rows: the product of all dims but the first (validated not to overflow).
    pub fn rows(&self) -> u64 {
        // Saturating only matters for infos built by hand: parsed ones were checked not to overflow.
        self.dims
            .iter()
            .skip(1)
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
    /// Row-major shape, outermost first (the reverse of `dims`): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked to fit in usize when the file was parsed.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// The bytes of a GGUF file: memory-mapped from disk, or owned (tests, in-memory inputs).
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the mapping until dequantized.
pub struct GgufFile {
    path: PathBuf,
    bytes: Storage,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_start: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .finish()
    }
}

/// Reads little-endian values off a byte slice, turning every overrun into a typed error.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos.min(self.bytes.len())) as u64
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], ImportError> {
        let truncated = || ImportError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos as u64,
            needed: n,
            file_len: self.bytes.len() as u64,
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ImportError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, ImportError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, ImportError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, ImportError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ImportError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn corrupt(&self, what: String) -> ImportError {
        ImportError::Corrupt {
            path: self.path.to_path_buf(),
            what,
        }
    }
    /// A GGUF string: u64 length then UTF-8 bytes.
    fn string(&mut self, what: &str) -> Result<String, ImportError> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt(format!("{what} at byte {at} is not valid UTF-8")))
    }
    /// Checks that `count` items of at least `min_bytes` each can fit in what remains, so that a corrupt count
    /// fails here instead of driving a huge allocation or a long loop.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<usize, ImportError> {
        let fits = count
            .checked_mul(min_bytes)
            .is_some_and(|need| need <= self.remaining());
        if !fits {
            return Err(self.corrupt(format!(
                "{what} count {count} cannot fit in the {} bytes that remain",
                self.remaining()
            )));
        }
        usize::try_from(count).map_err(|_| self.corrupt(format!("{what} count {count} overflows")))
    }

    fn value(&mut self, ty: MetaType, key: &str, depth: u32) -> Result<MetaValue, ImportError> {
        Ok(match ty {
            MetaType::U8 => MetaValue::U8(self.u8(key)?),
            MetaType::I8 => MetaValue::I8(self.u8(key)? as i8),
            MetaType::U16 => MetaValue::U16(self.u16(key)?),
            MetaType::I16 => MetaValue::I16(self.u16(key)? as i16),
            MetaType::U32 => MetaValue::U32(self.u32(key)?),
            MetaType::I32 => MetaValue::I32(self.u32(key)? as i32),
            MetaType::F32 => MetaValue::F32(f32::from_bits(self.u32(key)?)),
            MetaType::U64 => MetaValue::U64(self.u64(key)?),
            MetaType::I64 => MetaValue::I64(self.u64(key)? as i64),
            MetaType::F64 => MetaValue::F64(f64::from_bits(self.u64(key)?)),
            MetaType::Bool => match self.u8(key)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.corrupt(format!("metadata '{key}': bool byte {b} is neither 0 nor 1"))),
            },
            MetaType::String => MetaValue::String(self.string(key)?),
            MetaType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(format!("metadata '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let code = self.u32(key)?;
                let elem = MetaType::from_code(code)
                    .ok_or_else(|| self.corrupt(format!("metadata '{key}': unknown array element type {code}")))?;
                let count = self.u64(key)?;
                let n = self.check_count(count, elem.min_bytes(), &format!("metadata '{key}' array"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(elem, items)
            }
        })
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ImportError> {
        let path = path.as_ref();
        let io = |context, source| ImportError::Io {
            path: path.to_path_buf(),
            context,
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| io("opening", e))?;
        // SAFETY: the mapping is read-only and private to this process. Like every mmap-based reader we assume
        // nobody truncates or rewrites the file while it is mapped; all parsing bounds-checks against the length
        // the mapping had when it was created.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("memory-mapping", e))?;
        Self::parse(path.to_path_buf(), Storage::Mapped(map))
    }

    /// Parses GGUF bytes held in memory; `path` only labels errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, ImportError> {
        Self::parse(path.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Storage) -> Result<Self, ImportError> {
        let (version, metadata, tensors, alignment, data_start) = {
            let mut c = Cursor {
                bytes: &bytes,
                pos: 0,
                path: &path,
            };
            let magic = c.take(4, "magic").map_err(|_| ImportError::NotGguf {
                path: path.clone(),
                magic: bytes.iter().take(4).copied().collect(),
            })?;
            if magic != GGUF_MAGIC {
                return Err(ImportError::NotGguf {
                    path: path.clone(),
                    magic: magic.to_vec(),
                });
            }
            let version = c.u32("version")?;
            if !(2..=3).contains(&version) {
                return Err(ImportError::UnsupportedGgufVersion {
                    path: path.clone(),
                    version,
                });
            }
            let n_tensors = c.u64("tensor count")?;
            let n_kv = c.u64("metadata count")?;

            // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
            let n_kv = c.check_count(n_kv, 13, "metadata")?;
            let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv);
            let mut seen = std::collections::HashSet::with_capacity(n_kv);
            for _ in 0..n_kv {
                let key = c.string("metadata key")?;
                let code = c.u32("metadata value type")?;
                let ty = MetaType::from_code(code)
                    .ok_or_else(|| c.corrupt(format!("metadata '{key}': unknown value type {code}")))?;
                let value = c.value(ty, &key, 0)?;
                if !seen.insert(key.clone()) {
                    return Err(c.corrupt(format!("metadata key '{key}' appears twice")));
                }
                metadata.push((key, value));
            }

            let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
                None => DEFAULT_ALIGNMENT,
                Some((_, v)) => {
                    let a = v.as_integer().unwrap_or(0);
                    if a <= 0 || a > (1 << 30) || (a & (a - 1)) != 0 {
                        return Err(ImportError::BadKey {
                            path: path.clone(),
                            key: ALIGNMENT_KEY.into(),
                            problem: format!("alignment {} is not a power of two up to 2^30", v.display_short()),
                        });
                    }
                    a as u64
                }
            };

            // A tensor info takes at least 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
            let n_tensors = c.check_count(n_tensors, 32, "tensor")?;
            let mut raw = Vec::with_capacity(n_tensors);
            let mut names = std::collections::HashSet::with_capacity(n_tensors);
            for _ in 0..n_tensors {
                let name = c.string("tensor name")?;
                let bad = |problem: String| ImportError::BadTensor {
                    path: path.clone(),
                    tensor: name.clone(),
                    problem,
                };
                let n_dims = c.u32("tensor dimension count")?;
                if n_dims == 0 || n_dims as usize > MAX_DIMS {
                    return Err(bad(format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
                }
                let mut dims = Vec::with_capacity(n_dims as usize);
                for _ in 0..n_dims {
                    dims.push(c.u64("tensor dimension")?);
                }
                let type_id = c.u32("tensor type")?;
                let offset = c.u64("tensor offset")?;
                if !names.insert(name.clone()) {
                    return Err(ImportError::DuplicateTensor {
                        path: path.clone(),
                        tensor: name,
                    });
                }
                let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| ImportError::UnsupportedTensorType {
                    path: path.clone(),
                    tensor: name.clone(),
                    dtype: format!("ggml type id {type_id} (unknown to this reader)"),
                })?;
                if dims.iter().any(|&d| d == 0 || usize::try_from(d).is_err()) {
                    return Err(bad(format!(
                        "dimensions {dims:?} include zero or exceed the address space"
                    )));
                }
                let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
                let rows = dims.iter().skip(1).try_fold(1u64, |acc, &d| acc.checked_mul(d));
                let row_bytes = ggml_type.row_bytes(dims[0]);
                let n_bytes = match (n_elements, rows, row_bytes) {
                    (Some(_), Some(r), Some(rb)) => r.checked_mul(rb),
                    _ => None,
                };
                let Some(n_bytes) = n_bytes.filter(|&b| usize::try_from(b).is_ok()) else {
                    return Err(bad(if row_bytes.is_none() && dims[0] % ggml_type.block_size() != 0 {
                        format!(
                            "row length {} is not a multiple of the {} block size {}",
                            dims[0],
                            ggml_type,
                            ggml_type.block_size()
                        )
                    } else {
                        format!("dimensions {dims:?} overflow")
                    }));
                };
                if offset % alignment != 0 {
                    return Err(bad(format!(
                        "data offset {offset} is not a multiple of the alignment {alignment}"
                    )));
                }
                raw.push(GgufTensorInfo {
                    name,
                    dims,
                    ggml_type,
                    offset,
                    n_bytes,
                });
            }

            let header_end = c.pos as u64;
            let data_start = header_end
                .checked_next_multiple_of(alignment)
                .ok_or_else(|| c.corrupt("data section start overflows".into()))?;
            let file_len = bytes.len() as u64;
            if data_start > file_len && !raw.is_empty() {
                return Err(ImportError::Truncated {
                    path: path.clone(),
                    what: "padding before the tensor data".into(),
                    offset: header_end,
                    needed: data_start - header_end,
                    file_len,
                });
            }
            for t in &raw {
                let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes));
                if end.is_none_or(|e| e > file_len) {
                    return Err(ImportError::Truncated {
                        path: path.clone(),
                        what: format!("data of tensor '{}'", t.name),
                        offset: data_start.saturating_add(t.offset),
                        needed: t.n_bytes,
                        file_len,
                    });
                }
            }
            (version, metadata, raw, alignment, data_start)
        };
        Ok(Self {
            path,
            bytes,
            version,
            metadata,
            tensors,
            alignment,
            data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// Data alignment (from `general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// File offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }
    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The stored (possibly quantized) bytes of a tensor, exactly as in the file.
    pub fn tensor_bytes(&self, t: &GgufTensorInfo) -> Result<&[u8], ImportError> {
        let range = self.byte_range(t, 0, t.n_bytes)?;
        self.bytes.get(range).ok_or_else(|| self.out_of_bounds(t))
    }

    fn out_of_bounds(&self, t: &GgufTensorInfo) -> ImportError {
        ImportError::BadTensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            problem: "data lies outside the file (tensor info not from this file?)".into(),
        }
    }

    fn byte_range(&self, t: &GgufTensorInfo, rel_start: u64, len: u64) -> Result<std::ops::Range<usize>, ImportError> {
        let start = self
            .data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(rel_start));
        let end = start.and_then(|s| s.checked_add(len));
        match (
            start.and_then(|s| usize::try_from(s).ok()),
            end.and_then(|e| usize::try_from(e).ok()),
        ) {
            (Some(s), Some(e)) if e <= self.bytes.len() => Ok(s..e),
            _ => Err(self.out_of_bounds(t)),
        }
    }

    fn dequant_fn(&self, t: &GgufTensorInfo) -> Result<DequantFn, ImportError> {
        t.ggml_type
            .traits()
            .dequant
            .ok_or_else(|| ImportError::UnsupportedTensorType {
                path: self.path.clone(),
                tensor: t.name.clone(),
                dtype: format!("{} (no dequantization implemented)", t.ggml_type),
            })
    }

    /// Drops the pages of tensor `t` from this process's resident memory (the kernel reads them from the file
    /// again if they are touched), so a reader going through the model tensor by tensor keeps about one
    /// tensor's pages resident, not the whole file. Owned bytes stay as they are; a failed hint is ignored.
    pub fn release(&self, t: &GgufTensorInfo) {
        #[cfg(unix)]
        if let (Storage::Mapped(map), Ok(range)) = (&self.bytes, self.byte_range(t, 0, t.n_bytes)) {
            // SAFETY: MADV_DONTNEED on a read-only private file mapping this process never writes: the pages
            // are dropped and refilled from the file on the next access with the same bytes (mapping the file
            // already assumes nobody modifies it meanwhile), so no live reference into the mapping sees a change.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len()) };
        }
        #[cfg(not(unix))]
        let _ = t;
    }

    /// The whole tensor as f32, row-major (`shape()` order).
    pub fn dequantize(&self, t: &GgufTensorInfo) -> Result<Vec<f32>, ImportError> {
        self.dequantize_rows(t, 0, t.rows())
    }

    /// Rows `first..first + count` (rows are `dims[0]` elements long) as f32.
    pub fn dequantize_rows(&self, t: &GgufTensorInfo, first: u64, count: u64) -> Result<Vec<f32>, ImportError> {
        let deq = self.dequant_fn(t)?;
        let bad_rows = || ImportError::BadTensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            problem: format!("rows {first}..{first}+{count} requested, tensor has {}", t.rows()),
        };
        if first.checked_add(count).is_none_or(|end| end > t.rows()) {
            return Err(bad_rows());
        }
        let row_bytes = t.ggml_type.row_bytes(t.cols()).ok_or_else(bad_rows)?;
        let range = self.byte_range(
            t,
            first.checked_mul(row_bytes).ok_or_else(bad_rows)?,
            count.checked_mul(row_bytes).ok_or_else(bad_rows)?,
        )?;
        let src = self.bytes.get(range).ok_or_else(|| self.out_of_bounds(t))?;
        let n = count
            .checked_mul(t.cols())
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(bad_rows)?;
        let mut out = vec![0f32; n];
        // Both lengths are whole blocks: the row length is a multiple of the block size (checked at parse).
        deq(src, &mut out);
        Ok(out)
    }

    // ---- typed metadata getters: errors name the key ----

    fn bad_key(&self, key: &str, problem: String) -> ImportError {
        ImportError::BadKey {
            path: self.path.clone(),
            key: key.into(),
            problem,
        }
    }
    fn missing(&self, key: &str) -> ImportError {
        ImportError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        }
    }

    /// An integer key that must fit in u32 (any GGUF integer type is accepted: writers differ).
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let i = v
            .as_integer()
            .ok_or_else(|| self.bad_key(key, format!("expected an integer, found {:?}", v.meta_type())))?;
        u32::try_from(i)
            .map(Some)
            .map_err(|_| self.bad_key(key, format!("{i} does not fit in 32 unsigned bits")))
    }
    pub fn require_u32(&self, key: &str) -> Result<u32, ImportError> {
        self.get_u32(key)?.ok_or_else(|| self.missing(key))
    }
    /// A float key (f32, f64 or integer), required to be finite.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let f = v
            .as_f64()
            .ok_or_else(|| self.bad_key(key, format!("expected a number, found {:?}", v.meta_type())))?;
        if !f.is_finite() {
            return Err(self.bad_key(key, format!("{f} is not finite")));
        }
        Ok(Some(f))
    }
    pub fn require_f64(&self, key: &str) -> Result<f64, ImportError> {
        self.get_f64(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_str()
            .map(Some)
            .ok_or_else(|| self.bad_key(key, format!("expected a string, found {:?}", v.meta_type())))
    }
    pub fn require_str(&self, key: &str) -> Result<&str, ImportError> {
        self.get_str(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| self.bad_key(key, format!("expected a bool, found {:?}", v.meta_type())))
    }
    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let items = v
            .as_array()
            .ok_or_else(|| self.bad_key(key, format!("expected an array, found {:?}", v.meta_type())))?;
        items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| self.bad_key(key, "expected an array of strings".into()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    /// An array of integers (any integer element type).
    pub fn get_int_array(&self, key: &str) -> Result<Option<Vec<i128>>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let items = v
            .as_array()
            .ok_or_else(|| self.bad_key(key, format!("expected an array, found {:?}", v.meta_type())))?;
        items
            .iter()
            .map(|i| {
                i.as_integer()
                    .ok_or_else(|| self.bad_key(key, "expected an array of integers".into()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    /// An array of numbers (f32, f64 or integers) as f64.
    pub fn get_f64_array(&self, key: &str) -> Result<Option<Vec<f64>>, ImportError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let items = v
            .as_array()
            .ok_or_else(|| self.bad_key(key, format!("expected an array, found {:?}", v.meta_type())))?;
        items
            .iter()
            .map(|i| {
                i.as_f64()
                    .ok_or_else(|| self.bad_key(key, "expected an array of numbers".into()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_table_is_consistent() {
        let mut ids = std::collections::HashSet::new();
        for t in TYPE_TABLE {
            assert!(ids.insert(t.id), "duplicate id {}", t.id);
            assert_eq!(GgmlType::from_id(t.id), Some(t.ty));
            assert!(std::ptr::eq(t.ty.traits(), t), "{} has two rows", t.name);
            assert!(t.block > 0 && t.bytes > 0);
        }
    }

    #[test]
    fn q8_k_dequantizes_as_d_times_q() {
        // No Python reference implements Q8_K (it is ggml's activation type), so check the formula by hand.
        let mut block = vec![0u8; 292];
        block[..4].copy_from_slice(&0.5f32.to_le_bytes());
        for k in 0..256 {
            block[4 + k] = (k as i32 - 128) as i8 as u8;
        }
        let mut out = vec![0f32; 256];
        deq_q8_k(&block, &mut out);
        for (k, v) in out.iter().enumerate() {
            assert_eq!(*v, 0.5 * (k as f32 - 128.0));
        }
    }
}
