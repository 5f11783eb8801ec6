//! x86-64 tables: `avx2` (AVX2 + FMA + F16C: Haswell, Zen 1 and later) and `avx512` (AVX-512 F/BW/VL +
//! VNNI: Ice Lake, Sapphire Rapids, Zen 4 and later).
//!
//! Every kernel here is an `unsafe` `#[target_feature]` function behind a safe wrapper that only the table
//! holds; the tables are handed out (`available`) only after the CPU is found to have their instructions —
//! by run-time detection under `std`, by the build's `target_feature`s without it. That is the one invariant
//! each wrapper's `SAFETY` comment relies on.
#![allow(unsafe_code)]

pub(super) mod avx2;
pub(super) mod avx512;

use super::{Kernels, SCALAR};

/// The tables built for x86-64, in the order `available` lists them.
pub(super) const NAMES: &[&str] = &["scalar", "avx2", "avx512"];

fn has_avx2() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))
    }
}

fn has_avx512() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vnni"
        ))
    }
}

/// The tables this CPU runs, scalar first and fastest last. The AVX-512 table reuses AVX2 kernels where
/// 512-bit registers gain nothing, so it needs both feature sets.
pub(super) fn available() -> &'static [&'static Kernels] {
    static ALL: [&Kernels; 3] = [&SCALAR, &avx2::TABLE, &avx512::TABLE];
    match (has_avx2(), has_avx512()) {
        (true, true) => &ALL,
        (true, false) => &ALL[..2],
        _ => &ALL[..1],
    }
}

/// A pointer to `need` readable bytes at `data[off..]`: in place when they lie inside `data`, else a copy of
/// what there is into `buf` (zero past the end). Kernels read whole vectors; only the last block of a tensor
/// can reach past its end, and what lies past a row's end meets zero activations.
///
/// # Safety
/// `need ≤ 64`.
#[inline(always)]
pub(super) unsafe fn guarded(data: &[u8], off: usize, need: usize, buf: &mut [u8; 64]) -> *const u8 {
    if off.checked_add(need).is_some_and(|e| e <= data.len()) {
        // SAFETY: `off + need ≤ data.len()`.
        unsafe { data.as_ptr().add(off) }
    } else {
        *buf = [0; 64];
        let have = data.get(off..).unwrap_or(&[]);
        let n = have.len().min(64);
        buf[..n].copy_from_slice(&have[..n]);
        buf.as_ptr()
    }
}

/// Codes of the base-3 layout for SIMD decoding: position `p` of a block (its weight `p`) is trit `p / 13` of
/// byte `p % 13`. `BYTE_OF[p]` picks the byte (a shuffle), `MUL_OF[p] = 3^(p/13)` the wrapping multiplier after
/// which `(b·3) >> 8` is the trit (FORMAT.md §7). Positions 64.. do not exist; the tables stop at 64.
pub(super) const BYTE_OF: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut p = 0;
    while p < 64 {
        t[p] = (p % 13) as u8;
        p += 1;
    }
    t
};
pub(super) const MUL_OF: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut p = 0;
    while p < 64 {
        t[p] = [1u8, 3, 9, 27, 81][p / 13];
        p += 1;
    }
    t
};

/// `BYTE_OF` as in-lane shuffle indices for positions `base..base + 16·lanes`: each 128-bit lane holds a
/// copy of the block's 16 first bytes, so the index is the byte itself.
pub(super) const fn shuffle_indices<const N: usize>(base: usize) -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    while i < N {
        t[i] = BYTE_OF[base + i];
        i += 1;
    }
    t
}

/// The multipliers of positions `base..base + N` as 16-bit lanes: even positions (`odd == false`) or odd ones.
pub(super) const fn multipliers<const N: usize>(base: usize, odd: bool) -> [u16; N] {
    let mut t = [0u16; N];
    let mut i = 0;
    while i < N {
        t[i] = MUL_OF[base + 2 * i + odd as usize] as u16;
        i += 1;
    }
    t
}
