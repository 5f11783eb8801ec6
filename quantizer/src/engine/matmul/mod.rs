//! The CPU backend's matrix products: `dst[m, n] = (accumulate ? dst : 0) + scale · lhs[m, k] · rhs[k, n]` on
//! strided operands, in one of three modes ([`MatmulPrecision`]).
//!
//! * `F32` (the default): the `gemm` crate (AVX2/FMA on stable Rust), exactly as the engine always ran.
//! * `F32Avx512`: f32 too, on this crate's AVX-512F kernel ([`avx512`]) where the CPU has it: about 1.4× the
//!   `gemm` crate on AVX-512 machines, but a different summation order, so not the same bits as `F32`.
//! * `Bf16`: inputs rounded to bfloat16 (round to nearest even) while they are packed, products accumulated in
//!   f32 by the AMX tile unit ([`amx`]): about 7× the `gemm` crate where AMX-BF16 exists; on CPUs with
//!   AVX512_BF16 but no AMX (AMD Zen 4), the same tiles multiplied by `VDPBF16PS` ([`avx512_bf16`]).
//! * `Bf16Avx512`: the `VDPBF16PS` kernel even where AMX exists (to test and compare it).
//!
//! A mode the CPU (or the element type: `f64` always) cannot run falls back to `F32`, and [`kernel_name`]
//! says so. Every path is deterministic: each output element is one fixed sequence of operations over the
//! whole `k` range whatever the number of rayon threads (work is split over output blocks, never over `k`).
//! The two SIMD kernels share one blocked driver ([`blocked`]).

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
pub mod bf16;
#[cfg(target_arch = "x86_64")]
mod blocked;
#[cfg(target_arch = "x86_64")]
mod pack;

use std::any::TypeId;

#[cfg(target_arch = "x86_64")]
use super::cpu::embedding::SendPtr;
use super::error::{ensure, EngineResult};
use super::scalar::Float;

/// Below this many multiply-adds a GEMM runs on the calling thread: rayon's fork/join would cost more.
const PARALLEL_GEMM_MIN_WORK: usize = 1 << 16;

/// The arithmetic of the CPU backend's matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulPrecision {
    /// f32 inputs and accumulation (the `gemm` crate): the engine's original results, bit for bit.
    #[default]
    F32,
    /// f32 inputs and accumulation on the AVX-512F kernel where available, else as `F32`.
    F32Avx512,
    /// bf16 inputs (rounded to nearest even), f32 accumulation: AMX where available, else AVX512_BF16, else as
    /// `F32`.
    Bf16,
    /// As `Bf16` on the AVX512_BF16 kernel (not AMX) where available, else as `F32`.
    Bf16Avx512,
}

/// Whether this CPU and OS run the AMX-BF16 kernel (CPUID and the kernel's permission, probed once).
pub fn amx_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has the AVX512_BF16 kernel's instructions (AVX-512F/BW/BF16).
pub fn avx512_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_bf16::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has the AVX-512F kernel's instructions.
pub fn avx512_f32_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The SIMD kernel `precision` selects for element type `T` on this machine, if any (else the `gemm` crate).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    GemmCrate,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Amx,
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

fn kernel_for<T: Float>(precision: MatmulPrecision) -> Kernel {
    let is_f32 = TypeId::of::<T>() == TypeId::of::<f32>();
    match precision {
        #[cfg(target_arch = "x86_64")]
        MatmulPrecision::F32Avx512 if is_f32 && avx512::available() => Kernel::Avx512,
        #[cfg(target_arch = "x86_64")]
        MatmulPrecision::Bf16 if is_f32 && amx::available() => Kernel::Amx,
        #[cfg(target_arch = "x86_64")]
        MatmulPrecision::Bf16 | MatmulPrecision::Bf16Avx512 if is_f32 && avx512_bf16::available() => Kernel::Avx512Bf16,
        _ => {
            let _ = is_f32;
            Kernel::GemmCrate
        }
    }
}

/// The kernel a matrix product of element type `T` runs in `precision`, for logs.
pub fn kernel_name<T: Float>(precision: MatmulPrecision) -> &'static str {
    let is_f32 = TypeId::of::<T>() == TypeId::of::<f32>();
    match (kernel_for::<T>(precision), precision) {
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx512, _) => "AVX-512F (f32)",
        #[cfg(target_arch = "x86_64")]
        (Kernel::Amx, _) => "AMX-BF16 (bf16 inputs, f32 accumulation)",
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx512Bf16, _) => "AVX512_BF16 (bf16 inputs, f32 accumulation)",
        (_, MatmulPrecision::F32) => "gemm crate (f32)",
        _ if !is_f32 => "gemm crate (f64; the SIMD kernels are f32 only)",
        (_, MatmulPrecision::F32Avx512) => "gemm crate (f32; AVX-512F requested but unavailable)",
        (_, MatmulPrecision::Bf16) => {
            "gemm crate (f32; bf16 requested but neither AMX-BF16 nor AVX512_BF16 is available)"
        }
        (_, MatmulPrecision::Bf16Avx512) => "gemm crate (f32; AVX512_BF16 requested but unavailable)",
    }
}

/// A read-only strided matrix view: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

/// A writable strided matrix view; distinct `(i, j)` must address distinct elements.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

/// Checks that every element of a `rows × cols` view with these strides lies in `len` elements.
fn check_view(what: &'static str, len: usize, rows: usize, cols: usize, rs: isize, cs: isize) -> EngineResult<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let span = |count: usize, stride: isize| -> Option<(i128, i128)> {
        let last = (count as i128 - 1).checked_mul(stride as i128)?;
        Some((last.min(0), last.max(0)))
    };
    let fits = match (span(rows, rs), span(cols, cs)) {
        (Some((r_lo, r_hi)), Some((c_lo, c_hi))) => r_lo + c_lo >= 0 && r_hi + c_hi < len as i128,
        _ => false,
    };
    ensure(fits, "gemm", || {
        format!("{what}: {rows}×{cols} view with strides ({rs}, {cs}) does not fit in {len} elements")
    })
}

/// Safe strided GEMM: `dst = (accumulate ? dst : 0) + scale · lhs · rhs` in `precision`; `parallel` lets it use
/// the rayon pool. Shapes must agree and every view must lie inside its slice; `dst`'s strides must address
/// distinct elements (checked: its rows, or its columns, are disjoint runs).
pub fn gemm<T: Float>(
    precision: MatmulPrecision,
    dst: MatMut<'_, T>,
    accumulate: bool,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    scale: T,
    parallel: bool,
) -> EngineResult<()> {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    ensure(lhs.rows == m && rhs.rows == k && rhs.cols == n, "gemm", || {
        format!(
            "dst {m}×{n} = lhs {}×{} · rhs {}×{}",
            lhs.rows, lhs.cols, rhs.rows, rhs.cols
        )
    })?;
    check_view("dst", dst.data.len(), m, n, dst.row_stride, dst.col_stride)?;
    check_view("lhs", lhs.data.len(), m, k, lhs.row_stride, lhs.col_stride)?;
    check_view("rhs", rhs.data.len(), k, n, rhs.row_stride, rhs.col_stride)?;
    // Distinct elements: rows (or columns) that each step forward and do not reach the next one.
    let disjoint = |outer: usize, inner: usize, outer_stride: usize, inner_stride: usize| {
        (inner == 1 || inner_stride > 0) && (outer == 1 || outer_stride > (inner - 1).saturating_mul(inner_stride))
    };
    let (rs, cs) = (dst.row_stride.unsigned_abs(), dst.col_stride.unsigned_abs());
    let distinct = m == 0 || n == 0 || disjoint(m, n, rs, cs) || disjoint(n, m, cs, rs);
    ensure(distinct, "gemm", || {
        format!(
            "dst strides ({}, {}) alias elements of a {m}×{n} view",
            dst.row_stride, dst.col_stride
        )
    })?;
    // SAFETY: every addressed element lies inside its slice (checked above), `dst` is an exclusive borrow and
    // so overlaps neither input, and its strides address distinct elements.
    unsafe {
        gemm_strided_with(
            precision,
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.row_stride,
            dst.col_stride,
            accumulate,
            lhs.data.as_ptr(),
            lhs.row_stride,
            lhs.col_stride,
            rhs.data.as_ptr(),
            rhs.row_stride,
            rhs.col_stride,
            scale,
            parallel,
        );
    }
    Ok(())
}

/// `dst[m, n] = (accumulate ? dst : 0) + scale · lhs[m, k] · rhs[k, n]` on strided operands (`*_rs` row
/// stride, `*_cs` column stride, in elements). `parallel` lets the GEMM split its work over the rayon pool.
///
/// # Safety
/// Every element addressed by the shapes and strides must lie inside a live allocation; `dst` must not overlap
/// `lhs` or `rhs`, distinct `(i, j)` must address distinct `dst` elements, and nothing else may access `dst`'s
/// elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided_with<T: Float>(
    precision: MatmulPrecision,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    lhs: *const T,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const T,
    rhs_rs: isize,
    rhs_cs: isize,
    scale: T,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: in bounds per the caller's contract.
                    unsafe { *dst.offset(i as isize * dst_rs + j as isize * dst_cs) = T::ZERO };
                }
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = parallel && threads > 1 && m * n * k >= PARALLEL_GEMM_MIN_WORK;
    #[cfg(target_arch = "x86_64")]
    {
        let problem = || blocked::Problem {
            m,
            n,
            k,
            dst: SendPtr(dst.cast::<f32>()),
            dst_rs,
            dst_cs,
            lhs: SendPtr(lhs.cast::<f32>().cast_mut()),
            lhs_rs,
            lhs_cs,
            rhs: SendPtr(rhs.cast::<f32>().cast_mut()),
            rhs_rs,
            rhs_cs,
        };
        // SAFETY (every kernel): `T` is `f32` (`kernel_for` picks them for f32 only), so the casts reinterpret
        // nothing; the caller's contract is forwarded; `kernel_for` checked the CPU features (and for AMX the
        // tile permission).
        match kernel_for::<T>(precision) {
            Kernel::Amx => {
                unsafe { problem().run::<amx::Amx>(accumulate, scale.to_f32(), parallel) };
                return;
            }
            Kernel::Avx512 => {
                unsafe { problem().run::<avx512::Avx512>(accumulate, scale.to_f32(), parallel) };
                return;
            }
            Kernel::Avx512Bf16 => {
                unsafe { problem().run::<avx512_bf16::Avx512Bf16>(accumulate, scale.to_f32(), parallel) };
                return;
            }
            Kernel::GemmCrate => {}
        }
    }
    let _ = precision;
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded caller contract. `gemm` computes dst = alpha·dst + beta·lhs·rhs (dst read only when
    // `read_dst`), with (column stride, row stride) argument order.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            T::ONE,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}
