//! aarch64 tables: `neon` (every AArch64 CPU: Cortex-A53/A72, …) and `neon-dotprod` (with the dot-product
//! extension's `sdot`: Cortex-A55/A76 and later, Apple M1, Graviton 2).
//!
//! Every kernel here is an `unsafe` `#[target_feature]` function behind a safe wrapper that only the table
//! holds; the tables are handed out (`available`) only after the CPU is found to have their instructions —
//! by run-time detection under `std`, by the build's `target_feature`s without it.
#![allow(unsafe_code)]

pub(super) mod neon;

use super::{Kernels, SCALAR};

/// The tables built for aarch64, in the order `available` lists them.
pub(super) const NAMES: &[&str] = &["scalar", "neon", "neon-dotprod"];

fn has_neon() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

fn has_dotprod() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "dotprod")
    }
}

/// The tables this CPU runs, scalar first and fastest last.
pub(super) fn available() -> &'static [&'static Kernels] {
    static ALL: [&Kernels; 3] = [&SCALAR, &neon::TABLE, &neon::DOTPROD_TABLE];
    match (has_neon(), has_dotprod()) {
        (true, true) => &ALL,
        (true, false) => &ALL[..2],
        _ => &ALL[..1],
    }
}
