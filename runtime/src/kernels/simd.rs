//! What the SIMD tables of every architecture share: the guarded block read and the base-3 decoding tables.
#![allow(unsafe_code)]

/// A pointer to `need` readable bytes at `data[off..]`: in place when they lie inside `data`, else a copy of
/// what there is into `buf` (zero past the end). Kernels read whole vectors; only the last block of a tensor
/// can reach past its end, and what lies past a row's end meets zero activations.
///
/// # Safety
/// `need ≤ 64`.
#[inline(always)]
pub(in crate::kernels) unsafe fn guarded(data: &[u8], off: usize, need: usize, buf: &mut [u8; 64]) -> *const u8 {
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
pub(in crate::kernels) const BYTE_OF: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut p = 0;
    while p < 64 {
        t[p] = (p % 13) as u8;
        p += 1;
    }
    t
};
pub(in crate::kernels) const MUL_OF: [u8; 64] = {
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
pub(in crate::kernels) const fn shuffle_indices<const N: usize>(base: usize) -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    while i < N {
        t[i] = BYTE_OF[base + i];
        i += 1;
    }
    t
}

/// The multipliers of positions `base..base + N` as 16-bit lanes: even positions (`odd == false`) or odd ones.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the NEON tables multiply bytes directly
pub(in crate::kernels) const fn multipliers<const N: usize>(base: usize, odd: bool) -> [u16; N] {
    let mut t = [0u16; N];
    let mut i = 0;
    while i < N {
        t[i] = MUL_OF[base + 2 * i + odd as usize] as u16;
        i += 1;
    }
    t
}
