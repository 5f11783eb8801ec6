//! AMX-BF16 GEMM: bf16 tiles packed from f32 ([`super::pack`]), `TDPBF16PS` accumulating 16×16 f32 tiles.
//!
//! Blocking: both operands are packed whole (A as 16-row panels, B as 16-column panels, each a run of 1 KiB
//! tiles along `k`), then the output is cut into blocks of [`BLOCK_PANELS`]² tiles, one rayon task each. A task
//! walks `k` in chunks of at most [`MAX_CHUNK_STEPS`] tile steps and, per chunk, every 2×2 group of output
//! tiles: the micro-kernel keeps the four accumulators and two A and two B tiles in the eight tile registers
//! (`tmm0..3` accumulators, `tmm4/5` A, `tmm6/7` B), so each loaded tile feeds two products. Between chunks the
//! accumulators go through an f32 scratch exactly (tile stores and loads do not round), so every output is one
//! f32 accumulation over all of `k` in increasing order, then `dst = (accumulate ? dst : 0) + scale · acc`.
//! No task splits `k`, so the result does not depend on the number of threads.
//!
//! Tile instructions are emitted with `asm!` (their intrinsics are unstable); the compiler never uses the tile
//! registers, so their contents persist between the asm blocks of one thread, which [`TileSession`] brackets.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::pack::{self, Source, Tile, TILE_K, TILE_ROWS};
use crate::engine::layers::embedding::SendPtr;

/// Output tiles per block side: a task computes up to 8×8 tiles (128×128 outputs).
const BLOCK_PANELS: usize = 8;
/// Tile steps of `k` (32 each) per chunk: two B tiles per step stay in L1 across a block's rows of tiles.
const MAX_CHUNK_STEPS: usize = 16;
/// Bytes per tile row (the stride of every tile load and store).
const TILE_STRIDE: usize = 64;

/// Whether the AMX path can run: AVX-512F/BW/BF16 (the packers), AMX-TILE and AMX-BF16 (CPUID leaf 7), a tile
/// palette with 8 tiles of 16 × 64 bytes (leaf 0x1D), and the kernel's permission to use tile data, requested
/// once per process.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(probe)
}

fn probe() -> bool {
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16"))
    {
        return false;
    }
    // CPUID exists on every x86-64 CPU; leaves above the maximum are not queried.
    let (leaf7, palette) = {
        if __cpuid(0).eax < 0x1d {
            return false;
        }
        (__cpuid_count(7, 0), __cpuid_count(0x1d, 1))
    };
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    let bytes_per_row = palette.ebx & 0xffff;
    let max_names = palette.ebx >> 16;
    let max_rows = palette.ecx & 0xffff;
    amx_bf16
        && amx_tile
        && bytes_per_row >= TILE_STRIDE as u32
        && max_names >= 8
        && max_rows >= TILE_ROWS as u32
        && request_tile_permission()
}

/// Linux keeps the 8 KiB of tile state out of a thread's context until the process asks for it.
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, feature) takes two integers and touches no user memory.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// The `LDTILECFG` operand: palette 1, tiles 0–7 of 16 rows × 64 bytes (every tile used must be configured).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

static TILE_CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The tile configuration of the current thread, loaded on creation and released on drop (returning the tile
/// state to its initial, unsaved condition).
struct TileSession;

impl TileSession {
    /// # Safety
    /// [`available`] must have returned true.
    unsafe fn start() -> Self {
        // SAFETY: AMX is enabled for this process (caller); the operand is a valid palette-1 configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &TILE_CONFIG, options(nostack, readonly, preserves_flags)) };
        TileSession
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: a session exists only after a successful `ldtilecfg` on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// A 16×16 f32 accumulator tile in memory.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct AccTile([f32; TILE_ROWS * TILE_ROWS]);

/// Emits one micro-kernel: accumulators loaded from `c` (when `load`) or zeroed, `steps` steps of the body,
/// accumulators stored to `c`. `c` holds four consecutive tiles `(r0, c0), (r0, c1), (r1, c0), (r1, c1)`; a
/// variant with one row or one column of tiles leaves the others untouched.
macro_rules! micro_kernel {
    ($(#[$doc:meta])* $name:ident, load: [$($load:literal),*], zero: [$($zero:literal),*],
     body: [$($body:literal),*], store: [$($store:literal),*]) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// A [`TileSession`] is active on this thread; `steps ≥ 1`; `a0`, `a1`, `b0`, `b1` point to `steps`
        /// consecutive tiles each (those the variant reads); `c` to four writable accumulator tiles.
        #[inline]
        unsafe fn $name(a0: *const Tile, a1: *const Tile, b0: *const Tile, b1: *const Tile, steps: usize,
                        c: *mut AccTile, load: bool) {
            // SAFETY: the caller's contract; every tile access is a 16 × 64-byte block with stride 64.
            unsafe {
                asm!(
                    "test {load}, {load}",
                    "jz 2f",
                    $($load,)*
                    "jmp 3f",
                    "2:",
                    $($zero,)*
                    "3:",
                    $($body,)*
                    "add {a0}, 1024",
                    "add {a1}, 1024",
                    "add {b0}, 1024",
                    "add {b1}, 1024",
                    "dec {steps}",
                    "jnz 3b",
                    $($store,)*
                    a0 = inout(reg) a0 => _,
                    a1 = inout(reg) a1 => _,
                    b0 = inout(reg) b0 => _,
                    b1 = inout(reg) b1 => _,
                    steps = inout(reg) steps => _,
                    c = in(reg) c,
                    load = in(reg_byte) load as u8,
                    stride = in(reg) TILE_STRIDE,
                    options(nostack),
                );
            }
        }
    };
}

micro_kernel!(
    /// Two row panels × two column panels.
    kernel_2x2,
    load: [
        "tileloadd tmm0, [{c} + {stride}]",
        "tileloadd tmm1, [{c} + {stride} + 1024]",
        "tileloadd tmm2, [{c} + {stride} + 2048]",
        "tileloadd tmm3, [{c} + {stride} + 3072]"
    ],
    zero: ["tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3"],
    body: [
        "tileloadd tmm4, [{a0} + {stride}]",
        "tileloadd tmm6, [{b0} + {stride}]",
        "tileloadd tmm7, [{b1} + {stride}]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm5, [{a1} + {stride}]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7"
    ],
    store: [
        "tilestored [{c} + {stride}], tmm0",
        "tilestored [{c} + {stride} + 1024], tmm1",
        "tilestored [{c} + {stride} + 2048], tmm2",
        "tilestored [{c} + {stride} + 3072], tmm3"
    ]
);

micro_kernel!(
    /// Two row panels × one column panel (tiles 0 and 2).
    kernel_2x1,
    load: ["tileloadd tmm0, [{c} + {stride}]", "tileloadd tmm2, [{c} + {stride} + 2048]"],
    zero: ["tilezero tmm0", "tilezero tmm2"],
    body: [
        "tileloadd tmm4, [{a0} + {stride}]",
        "tileloadd tmm6, [{b0} + {stride}]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm5, [{a1} + {stride}]",
        "tdpbf16ps tmm2, tmm5, tmm6"
    ],
    store: ["tilestored [{c} + {stride}], tmm0", "tilestored [{c} + {stride} + 2048], tmm2"]
);

micro_kernel!(
    /// One row panel × two column panels (tiles 0 and 1).
    kernel_1x2,
    load: ["tileloadd tmm0, [{c} + {stride}]", "tileloadd tmm1, [{c} + {stride} + 1024]"],
    zero: ["tilezero tmm0", "tilezero tmm1"],
    body: [
        "tileloadd tmm4, [{a0} + {stride}]",
        "tileloadd tmm6, [{b0} + {stride}]",
        "tileloadd tmm7, [{b1} + {stride}]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7"
    ],
    store: ["tilestored [{c} + {stride}], tmm0", "tilestored [{c} + {stride} + 1024], tmm1"]
);

micro_kernel!(
    /// One row panel × one column panel (tile 0).
    kernel_1x1,
    load: ["tileloadd tmm0, [{c} + {stride}]"],
    zero: ["tilezero tmm0"],
    body: [
        "tileloadd tmm4, [{a0} + {stride}]",
        "tileloadd tmm6, [{b0} + {stride}]",
        "tdpbf16ps tmm0, tmm4, tmm6"
    ],
    store: ["tilestored [{c} + {stride}], tmm0"]
);

/// The packed operands of the calls on this thread, kept between calls so that large GEMMs do not fault in
/// fresh pages every time.
#[derive(Default)]
struct PackBuffers {
    a: Vec<Tile>,
    b: Vec<Tile>,
}

thread_local! {
    static PACK_BUFFERS: RefCell<PackBuffers> = RefCell::new(PackBuffers::default());
}

/// `dst` tile `(rows × cols ≤ 16 × 16)` = `(accumulate ? dst : 0) + scale · acc`.
///
/// # Safety
/// The `rows × cols` elements of `dst` (strides `rs`, `cs`) are writable and no other thread accesses them;
/// AVX-512F available.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn write_tile(
    acc: &AccTile,
    rows: usize,
    cols: usize,
    dst: *mut f32,
    rs: isize,
    cs: isize,
    accumulate: bool,
    scale: f32,
) {
    if cs == 1 {
        let mask: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            ((1u32 << cols) - 1) as __mmask16
        };
        let factor = _mm512_set1_ps(scale);
        for r in 0..rows {
            let d = dst.offset(r as isize * rs);
            let mut v = _mm512_load_ps(acc.0.as_ptr().add(r * TILE_ROWS));
            if scale != 1.0 {
                v = _mm512_mul_ps(v, factor);
            }
            if accumulate {
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), v);
            }
            _mm512_mask_storeu_ps(d, mask, v);
        }
    } else {
        for r in 0..rows {
            for c in 0..cols {
                let d = dst.offset(r as isize * rs + c as isize * cs);
                let mut v = acc.0[r * TILE_ROWS + c];
                if scale != 1.0 {
                    v *= scale;
                }
                if accumulate {
                    v += *d;
                }
                *d = v;
            }
        }
    }
}

/// The GEMM of [`super::gemm_strided_with`] on AMX (`m, n, k ≥ 1`).
///
/// # Safety
/// The contract of [`super::gemm_strided_with`], and [`available`] has returned true.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    scale: f32,
    parallel: bool,
) {
    let steps = k.div_ceil(TILE_K);
    let (row_panels, col_panels) = (m.div_ceil(TILE_ROWS), n.div_ceil(TILE_ROWS));
    // Taken out of the thread-local (not borrowed) so that a nested call on this thread, e.g. from a rayon
    // task stolen while this one waits, gets buffers of its own.
    let mut buffers = PACK_BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    for (buf, len) in [
        (&mut buffers.a, row_panels * steps),
        (&mut buffers.b, col_panels * steps),
    ] {
        if buf.len() < len {
            buf.resize(len, Tile::ZERO);
        }
    }
    let a_tiles = &mut buffers.a[..row_panels * steps];
    let b_tiles = &mut buffers.b[..col_panels * steps];
    let (lhs, rhs) = (SendPtr(lhs.cast_mut()), SendPtr(rhs.cast_mut()));
    let pack_a = |(p, tiles): (usize, &mut [Tile])| {
        let r0 = p * TILE_ROWS;
        let source = Source {
            // SAFETY: row `r0 < m` of the caller's view.
            ptr: unsafe { lhs.get().offset(r0 as isize * lhs_rs) },
            rs: lhs_rs,
            cs: lhs_cs,
            rows: (m - r0).min(TILE_ROWS),
            cols: k,
        };
        // SAFETY: the source is the caller's readable view restricted to this panel; AVX-512 is available.
        unsafe { pack::pack_a(tiles, source) };
    };
    let pack_b = |(q, tiles): (usize, &mut [Tile])| {
        let c0 = q * TILE_ROWS;
        let source = Source {
            // SAFETY: column `c0 < n` of the caller's view.
            ptr: unsafe { rhs.get().offset(c0 as isize * rhs_cs) },
            rs: rhs_rs,
            cs: rhs_cs,
            rows: k,
            cols: (n - c0).min(TILE_ROWS),
        };
        // SAFETY: as for A.
        unsafe { pack::pack_b(tiles, source) };
    };
    if parallel {
        a_tiles.par_chunks_mut(steps).enumerate().for_each(pack_a);
        b_tiles.par_chunks_mut(steps).enumerate().for_each(pack_b);
    } else {
        a_tiles.chunks_mut(steps).enumerate().for_each(pack_a);
        b_tiles.chunks_mut(steps).enumerate().for_each(pack_b);
    }

    let (a_tiles, b_tiles) = (&*a_tiles, &*b_tiles);
    let (row_blocks, col_blocks) = (row_panels.div_ceil(BLOCK_PANELS), col_panels.div_ceil(BLOCK_PANELS));
    let dst = SendPtr(dst);
    let block = |index: usize| {
        let (rb, cb) = (index / col_blocks, index % col_blocks);
        let (p0, q0) = (rb * BLOCK_PANELS, cb * BLOCK_PANELS);
        let (panels_m, panels_n) = ((row_panels - p0).min(BLOCK_PANELS), (col_panels - q0).min(BLOCK_PANELS));
        // Accumulators grouped by 2×2 tile group: group (gi, gj) holds tiles (2gi + di, 2gj + dj) at 2di + dj.
        let mut acc = MaybeUninit::<[AccTile; BLOCK_PANELS * BLOCK_PANELS]>::uninit();
        let acc_tile = |pi: usize, qj: usize| ((pi / 2) * (BLOCK_PANELS / 2) + qj / 2) * 4 + (pi % 2) * 2 + qj % 2;
        let acc_ptr = acc.as_mut_ptr().cast::<AccTile>();
        let chunks = steps.div_ceil(MAX_CHUNK_STEPS);
        let chunk_steps = steps.div_ceil(chunks);
        // SAFETY: `available()` held before this call was dispatched here.
        let session = unsafe { TileSession::start() };
        for chunk in 0..chunks {
            let s0 = chunk * chunk_steps;
            let len = chunk_steps.min(steps - s0);
            for qj in (0..panels_n).step_by(2) {
                let two_cols = qj + 1 < panels_n;
                let b0 = &b_tiles[(q0 + qj) * steps + s0] as *const Tile;
                let b1 = if two_cols {
                    &b_tiles[(q0 + qj + 1) * steps + s0] as *const Tile
                } else {
                    b0
                };
                for pi in (0..panels_m).step_by(2) {
                    let two_rows = pi + 1 < panels_m;
                    let a0 = &a_tiles[(p0 + pi) * steps + s0] as *const Tile;
                    let a1 = if two_rows {
                        &a_tiles[(p0 + pi + 1) * steps + s0] as *const Tile
                    } else {
                        a0
                    };
                    // SAFETY: the group's four accumulator slots lie inside `acc`.
                    let c = unsafe { acc_ptr.add(acc_tile(pi, qj)) };
                    let load = chunk > 0;
                    // SAFETY: the session is active; each operand pointer starts `len ≥ 1` tiles of its panel's
                    // run of `steps` (s0 + len ≤ steps); the variant reads only the tiles that exist, and only
                    // reloads accumulators it stored in the previous chunk.
                    unsafe {
                        match (two_rows, two_cols) {
                            (true, true) => kernel_2x2(a0, a1, b0, b1, len, c, load),
                            (true, false) => kernel_2x1(a0, a1, b0, b1, len, c, load),
                            (false, true) => kernel_1x2(a0, a1, b0, b1, len, c, load),
                            (false, false) => kernel_1x1(a0, a1, b0, b1, len, c, load),
                        }
                    }
                }
            }
        }
        drop(session);
        for pi in 0..panels_m {
            for qj in 0..panels_n {
                let (r0, c0) = ((p0 + pi) * TILE_ROWS, (q0 + qj) * TILE_ROWS);
                // SAFETY: every tile of the block was stored by the kernels above; `dst`'s tile lies in the
                // caller's view and belongs to this task alone (blocks partition the output); AVX-512F is
                // available.
                unsafe {
                    write_tile(
                        &*acc_ptr.add(acc_tile(pi, qj)),
                        (m - r0).min(TILE_ROWS),
                        (n - c0).min(TILE_ROWS),
                        dst.get().offset(r0 as isize * dst_rs + c0 as isize * dst_cs),
                        dst_rs,
                        dst_cs,
                        accumulate,
                        scale,
                    );
                }
            }
        }
    };
    if parallel {
        (0..row_blocks * col_blocks).into_par_iter().for_each(block);
    } else {
        (0..row_blocks * col_blocks).for_each(block);
    }
    PACK_BUFFERS.with(|b| {
        let mut kept = b.borrow_mut();
        if kept.a.len() + kept.b.len() < buffers.a.len() + buffers.b.len() {
            *kept = buffers;
        }
    });
}
