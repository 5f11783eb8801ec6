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

pub(super) use super::simd::{guarded, multipliers, shuffle_indices};
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
