//! AMX-BF16 GEMM: bf16 tiles packed from f32 ([`super::pack`]), `TDPBF16PS` accumulating 16×16 f32 tiles.
//!
//! Blocking: the smaller operand is packed whole up front (A as 16-row panels, B as 16-column panels, each a
//! run of 1 KiB tiles along `k`); the output is cut into tasks of up to [`BLOCK_PANELS`] panels of the larger
//! operand (and up to [`MAX_TASK_FIXED_PANELS`] of the other), one rayon task each, and each task packs its own
//! panels of the larger operand chunk by chunk of `k` (at most [`MAX_CHUNK_STEPS`] tile steps), so that chunk
//! is packed once and stays in L2 while it is used. Per chunk the task runs every 2×2 group of output tiles,
//! 128×128 outputs at a time: the micro-kernel keeps the four accumulators and two A and two B tiles in the
//! eight tile registers (`tmm0..3` accumulators, `tmm4/5` A, `tmm6/7` B), so each loaded tile feeds two
//! products. Between chunks the accumulators go through an f32 scratch exactly (tile stores and loads do not
//! round), so every output is one f32 accumulation over all of `k` in increasing order, then
//! `dst = (accumulate ? dst : 0) + scale · acc` (whole tiles stored straight from the registers when that is
//! a plain overwrite). Chunks depend on `k` only and no task splits `k`, so the result does not depend on the
//! number of threads or on how the tasks are cut.
//!
//! Tile instructions are emitted with `asm!` (their intrinsics are unstable); the compiler never uses the tile
//! registers, so their contents persist between the asm blocks of one thread, which [`TileSession`] brackets.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;
use std::thread::LocalKey;

use rayon::prelude::*;

use super::pack::{self, Source, Tile, TILE_K, TILE_ROWS};
use crate::engine::layers::embedding::SendPtr;

/// Panels of the streamed operand per task at most, and of either operand per block of outputs (128×128).
const BLOCK_PANELS: usize = 8;
/// Tile steps of `k` (32 each) per chunk: a pair of panels of one chunk (32 KiB) stays in L1 over a block.
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

/// Emits one micro-kernel: accumulators loaded from `acc` (when not null) or zeroed, then `steps` steps of the
/// body; the results stay in the accumulator registers for [`store_result`]. `acc` holds four consecutive tiles
/// `(r0, c0), (r0, c1), (r1, c0), (r1, c1)` (registers `tmm0..3`); a variant with one row or one column of
/// tiles uses only its own.
macro_rules! micro_kernel {
    ($(#[$doc:meta])* $name:ident, load: [$($load:literal),*], zero: [$($zero:literal),*],
     body: [$($body:literal),*]) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// A [`TileSession`] is active on this thread; `steps ≥ 1`; `a0`, `a1`, `b0`, `b1` point to `steps`
        /// consecutive tiles each (those the variant reads); `acc` is null or points to four accumulator tiles
        /// holding the variant's partial sums.
        #[inline]
        unsafe fn $name(a0: *const Tile, a1: *const Tile, b0: *const Tile, b1: *const Tile, steps: usize,
                        acc: *const AccTile) {
            // SAFETY: the caller's contract; every tile access is a 16 × 64-byte block with stride 64.
            unsafe {
                asm!(
                    "test {acc}, {acc}",
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
                    a0 = inout(reg) a0 => _,
                    a1 = inout(reg) a1 => _,
                    b0 = inout(reg) b0 => _,
                    b1 = inout(reg) b1 => _,
                    steps = inout(reg) steps => _,
                    acc = in(reg) acc,
                    stride = in(reg) TILE_STRIDE,
                    options(nostack, readonly),
                );
            }
        }
    };
}

micro_kernel!(
    /// Two row panels × two column panels.
    kernel_2x2,
    load: [
        "tileloadd tmm0, [{acc} + {stride}]",
        "tileloadd tmm1, [{acc} + {stride} + 1024]",
        "tileloadd tmm2, [{acc} + {stride} + 2048]",
        "tileloadd tmm3, [{acc} + {stride} + 3072]"
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
    ]
);

micro_kernel!(
    /// Two row panels × one column panel (tiles 0 and 2).
    kernel_2x1,
    load: ["tileloadd tmm0, [{acc} + {stride}]", "tileloadd tmm2, [{acc} + {stride} + 2048]"],
    zero: ["tilezero tmm0", "tilezero tmm2"],
    body: [
        "tileloadd tmm4, [{a0} + {stride}]",
        "tileloadd tmm6, [{b0} + {stride}]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm5, [{a1} + {stride}]",
        "tdpbf16ps tmm2, tmm5, tmm6"
    ]
);

micro_kernel!(
    /// One row panel × two column panels (tiles 0 and 1).
    kernel_1x2,
    load: ["tileloadd tmm0, [{acc} + {stride}]", "tileloadd tmm1, [{acc} + {stride} + 1024]"],
    zero: ["tilezero tmm0", "tilezero tmm1"],
    body: [
        "tileloadd tmm4, [{a0} + {stride}]",
        "tileloadd tmm6, [{b0} + {stride}]",
        "tileloadd tmm7, [{b1} + {stride}]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7"
    ]
);

micro_kernel!(
    /// One row panel × one column panel (tile 0).
    kernel_1x1,
    load: ["tileloadd tmm0, [{acc} + {stride}]"],
    zero: ["tilezero tmm0"],
    body: [
        "tileloadd tmm4, [{a0} + {stride}]",
        "tileloadd tmm6, [{b0} + {stride}]",
        "tdpbf16ps tmm0, tmm4, tmm6"
    ]
);

/// Stores accumulator register `tmm{index}` (0..=3) as 16 rows of 16 f32, `stride` bytes apart, at `dst`.
///
/// # Safety
/// A [`TileSession`] is active on this thread and a micro-kernel of this thread left its result in the
/// register (nothing on this thread runs tile instructions in between, and the compiler never does); the
/// 16 rows of 64 bytes are writable and no other thread accesses them.
#[inline]
unsafe fn store_result(index: usize, dst: *mut f32, stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        match index {
            0 => asm!("tilestored [{p} + {s}], tmm0", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            1 => asm!("tilestored [{p} + {s}], tmm1", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            2 => asm!("tilestored [{p} + {s}], tmm2", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            _ => asm!("tilestored [{p} + {s}], tmm3", p = in(reg) dst, s = in(reg) stride, options(nostack)),
        }
    }
}

/// The operand packed whole by the calls made on this thread.
#[derive(Default)]
struct CallBuffers {
    fixed: Vec<Tile>,
}

/// A task's packed chunk of the streamed operand, and its partial sums.
#[derive(Default)]
struct TaskBuffers {
    streamed: Vec<Tile>,
    partial: Vec<AccTile>,
}

/// Per-thread buffers kept between calls so that large GEMMs do not fault in fresh pages every time.
trait Reusable: Default + 'static {
    fn elements(&self) -> usize;
}

impl Reusable for CallBuffers {
    fn elements(&self) -> usize {
        self.fixed.len()
    }
}

impl Reusable for TaskBuffers {
    fn elements(&self) -> usize {
        self.streamed.len() + self.partial.len()
    }
}

thread_local! {
    static CALL_BUFFERS: RefCell<CallBuffers> = RefCell::new(CallBuffers::default());
    static TASK_BUFFERS: RefCell<TaskBuffers> = RefCell::new(TaskBuffers::default());
}

/// Runs `f` with this thread's buffers, taken out of the thread-local (not borrowed) so that a nested use on
/// this thread, e.g. from a rayon job stolen while this one waits, gets buffers of its own; the larger set is
/// kept afterwards.
fn with_buffers<B: Reusable, R>(key: &'static LocalKey<RefCell<B>>, f: impl FnOnce(&mut B) -> R) -> R {
    let mut buffers = key.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let result = f(&mut buffers);
    key.with(|b| {
        let mut kept = b.borrow_mut();
        if kept.elements() < buffers.elements() {
            *kept = buffers;
        }
    });
    result
}

/// `buf[..len]`, growing `buf` (never shrinking it) as needed.
fn prefix<T: Copy>(buf: &mut Vec<T>, len: usize, fill: T) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, fill);
    }
    &mut buf[..len]
}

/// `dst` tile `(rows × cols ≤ 16 × 16)` = `(accumulate ? dst : 0) + scale · acc`; `acc` may be transposed in
/// place (its contents are scratch afterwards).
///
/// # Safety
/// The `rows × cols` elements of `dst` (strides `rs`, `cs`) are writable and no other thread accesses them;
/// AVX-512F available.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn write_tile(
    acc: &mut AccTile,
    mut rows: usize,
    mut cols: usize,
    dst: *mut f32,
    mut rs: isize,
    mut cs: isize,
    accumulate: bool,
    scale: f32,
) {
    if cs != 1 && rs == 1 {
        // A column-major destination: transpose the tile and write its rows as the destination's columns.
        pack::transpose_16x16(acc.0.as_mut_ptr().cast());
        std::mem::swap(&mut rows, &mut cols);
        std::mem::swap(&mut rs, &mut cs);
    }
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
    let problem = Problem {
        m,
        n,
        k,
        dst: SendPtr(dst),
        dst_rs,
        dst_cs,
        lhs: SendPtr(lhs.cast_mut()),
        lhs_rs,
        lhs_cs,
        rhs: SendPtr(rhs.cast_mut()),
        rhs_rs,
        rhs_cs,
    };
    // SAFETY: forwarded.
    unsafe { problem.run(accumulate, scale, parallel) };
}

/// A GEMM `dst[m, n] (+)= scale · lhs[m, k] · rhs[k, n]` with raw strided operands.
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    dst: SendPtr<f32>,
    dst_rs: isize,
    dst_cs: isize,
    lhs: SendPtr<f32>,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: SendPtr<f32>,
    rhs_rs: isize,
    rhs_cs: isize,
}

/// Panels (of 16) at most per task along the operand packed up front; larger problems split it over tasks.
const MAX_TASK_FIXED_PANELS: usize = 64;

/// How a task covers its tiles: the larger operand is packed by each task, chunk by chunk of `k`, for its own
/// panels only (while the chunk is hot in L2); the smaller one is packed whole before the tasks start.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Streamed {
    Lhs,
    Rhs,
}

impl Problem {
    /// Packs row panel `p` of `lhs` for `tiles.len()` steps of `k` from `k0`.
    ///
    /// # Safety
    /// As [`gemm`]; `p` is a row panel of the problem, `k0 < k`.
    unsafe fn pack_lhs(&self, tiles: &mut [Tile], p: usize, k0: usize) {
        let r0 = p * TILE_ROWS;
        let source = Source {
            // SAFETY: element (r0, k0) is inside the caller's view.
            ptr: unsafe {
                self.lhs
                    .get()
                    .offset(r0 as isize * self.lhs_rs + k0 as isize * self.lhs_cs)
            },
            rs: self.lhs_rs,
            cs: self.lhs_cs,
            rows: (self.m - r0).min(TILE_ROWS),
            cols: (self.k - k0).min(tiles.len() * TILE_K),
        };
        // SAFETY: the caller's readable view restricted to this panel and chunk; AVX-512 is available.
        unsafe { pack::pack_a(tiles, source) };
    }

    /// Packs column panel `q` of `rhs` for `tiles.len()` steps of `k` from `k0`.
    ///
    /// # Safety
    /// As [`gemm`]; `q` is a column panel of the problem, `k0 < k`.
    unsafe fn pack_rhs(&self, tiles: &mut [Tile], q: usize, k0: usize) {
        let c0 = q * TILE_ROWS;
        let source = Source {
            // SAFETY: element (k0, c0) is inside the caller's view.
            ptr: unsafe {
                self.rhs
                    .get()
                    .offset(k0 as isize * self.rhs_rs + c0 as isize * self.rhs_cs)
            },
            rs: self.rhs_rs,
            cs: self.rhs_cs,
            rows: (self.k - k0).min(tiles.len() * TILE_K),
            cols: (self.n - c0).min(TILE_ROWS),
        };
        // SAFETY: as for the left operand.
        unsafe { pack::pack_b(tiles, source) };
    }

    /// # Safety
    /// As [`gemm`].
    unsafe fn run(&self, accumulate: bool, scale: f32, parallel: bool) {
        let Problem { m, n, k, .. } = *self;
        let steps = k.div_ceil(TILE_K);
        let (row_panels, col_panels) = (m.div_ceil(TILE_ROWS), n.div_ceil(TILE_ROWS));
        // Chunks of `k` depend on `k` alone, so the order of every sum is fixed whatever the task split.
        let chunks = steps.div_ceil(MAX_CHUNK_STEPS);
        let chunk_steps = steps.div_ceil(chunks);
        let streamed = if n >= m { Streamed::Rhs } else { Streamed::Lhs };
        let (streamed_panels, fixed_panels) = match streamed {
            Streamed::Rhs => (col_panels, row_panels),
            Streamed::Lhs => (row_panels, col_panels),
        };
        // Enough tasks to balance the threads, each as wide as possible (up to 8 streamed panels).
        let threads = if parallel { rayon::current_num_threads() } else { 1 };
        let task_streamed = streamed_panels
            .div_ceil(4 * threads)
            .clamp(2, BLOCK_PANELS)
            .next_multiple_of(2);
        let task_fixed = MAX_TASK_FIXED_PANELS.min(fixed_panels);
        let (streamed_tasks, fixed_tasks) = (
            streamed_panels.div_ceil(task_streamed),
            fixed_panels.div_ceil(task_fixed),
        );
        with_buffers(&CALL_BUFFERS, |buffers| {
            let fixed = prefix(&mut buffers.fixed, fixed_panels * steps, Tile::ZERO);
            let pack_fixed = |(panel, tiles): (usize, &mut [Tile])| {
                // SAFETY: `panel` is a panel of the fixed operand; k0 = 0 < k.
                unsafe {
                    match streamed {
                        Streamed::Rhs => self.pack_lhs(tiles, panel, 0),
                        Streamed::Lhs => self.pack_rhs(tiles, panel, 0),
                    }
                }
            };
            if parallel {
                fixed.par_chunks_mut(steps).enumerate().for_each(pack_fixed);
            } else {
                fixed.chunks_mut(steps).enumerate().for_each(pack_fixed);
            }
            let fixed = &*fixed;
            let task = |index: usize| {
                let (ft, st) = (index / streamed_tasks, index % streamed_tasks);
                let f0 = ft * task_fixed;
                let s0 = st * task_streamed;
                let fixed_range = f0..f0 + task_fixed.min(fixed_panels - f0);
                let streamed_range = s0..s0 + task_streamed.min(streamed_panels - s0);
                let (rows, cols) = match streamed {
                    Streamed::Rhs => (fixed_range, streamed_range),
                    Streamed::Lhs => (streamed_range, fixed_range),
                };
                // SAFETY: the tasks' tiles partition the output; forwarded contract.
                with_buffers(&TASK_BUFFERS, |own| unsafe {
                    self.task(own, fixed, streamed, steps, chunk_steps, rows, cols, accumulate, scale)
                });
            };
            if parallel {
                (0..fixed_tasks * streamed_tasks).into_par_iter().for_each(task);
            } else {
                (0..fixed_tasks * streamed_tasks).for_each(task);
            }
        });
    }

    /// Computes the output tiles `rows × cols` (panel ranges): per chunk of `k`, packs the task's panels of
    /// the streamed operand, then runs every 2×2 group of tiles over that chunk.
    ///
    /// # Safety
    /// As [`gemm`]; `fixed` holds the other operand packed whole (`steps` tiles per panel); no other task
    /// writes these output tiles.
    #[allow(clippy::too_many_arguments)]
    unsafe fn task(
        &self,
        buffers: &mut TaskBuffers,
        fixed: &[Tile],
        streamed: Streamed,
        steps: usize,
        chunk_steps: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        accumulate: bool,
        scale: f32,
    ) {
        let (m, n) = (self.m, self.n);
        let (p0, q0) = (rows.start, cols.start);
        let (rows, cols) = (rows.len(), cols.len());
        let chunks = steps.div_ceil(chunk_steps);
        let own_panels = if streamed == Streamed::Rhs { cols } else { rows };
        let chunk_tiles = prefix(&mut buffers.streamed, own_panels * chunk_steps, Tile::ZERO);
        // Partial sums between chunks by 2×2 tile group: group (gi, gj) holds tiles (2gi + di, 2gj + dj) at
        // 2di + dj, the register order of the micro-kernels.
        let col_groups = cols.div_ceil(2);
        let group_of = |pi: usize, qj: usize| ((pi / 2) * col_groups + qj / 2) * 4;
        let partial_len = if chunks > 1 {
            rows.div_ceil(2) * col_groups * 4
        } else {
            0
        };
        let partial = prefix(&mut buffers.partial, partial_len, AccTile([0.0; TILE_ROWS * TILE_ROWS])).as_mut_ptr();
        let mut staging = AccTile([0.0; TILE_ROWS * TILE_ROWS]);
        // Overwriting with scale 1 needs no arithmetic: whole tiles go from the registers straight to `dst`.
        let direct = !accumulate && scale == 1.0 && self.dst_cs == 1 && self.dst_rs >= TILE_ROWS as isize;
        // SAFETY: `available()` held before this call was dispatched here.
        let session = unsafe { TileSession::start() };
        for chunk in 0..chunks {
            let s0 = chunk * chunk_steps;
            let len = chunk_steps.min(steps - s0);
            let last = chunk + 1 == chunks;
            for (i, tiles) in chunk_tiles.chunks_mut(chunk_steps).enumerate() {
                // SAFETY: panel `p0 + i` (or `q0 + i`) belongs to the problem; s0·32 < k.
                unsafe {
                    match streamed {
                        Streamed::Rhs => self.pack_rhs(&mut tiles[..len], q0 + i, s0 * TILE_K),
                        Streamed::Lhs => self.pack_lhs(&mut tiles[..len], p0 + i, s0 * TILE_K),
                    }
                }
            }
            let chunk_tiles = &*chunk_tiles;
            // Tile pointers for step s0 of row panel pi / column panel qj of the task.
            let a_at = |pi: usize| -> *const Tile {
                match streamed {
                    Streamed::Rhs => &fixed[(p0 + pi) * steps + s0],
                    Streamed::Lhs => &chunk_tiles[pi * chunk_steps],
                }
            };
            let b_at = |qj: usize| -> *const Tile {
                match streamed {
                    Streamed::Rhs => &chunk_tiles[qj * chunk_steps],
                    Streamed::Lhs => &fixed[(q0 + qj) * steps + s0],
                }
            };
            // The outer loop walks the fixed operand's pairs of panels (which stay in L1 over the inner loop),
            // the inner one this task's chunk of the streamed operand (which stays in L2 over the outer loop).
            let (outer, inner) = match streamed {
                Streamed::Rhs => (rows, cols),
                Streamed::Lhs => (cols, rows),
            };
            // The fixed operand is walked in blocks of 8 panels, so each 128×128 block of outputs is finished
            // before the next one starts.
            let pairs = (0..outer).step_by(BLOCK_PANELS).flat_map(|block| {
                let end = (block + BLOCK_PANELS).min(outer);
                (0..inner)
                    .step_by(2)
                    .flat_map(move |i| (block..end).step_by(2).map(move |o| (o, i)))
            });
            for (o, i) in pairs {
                {
                    let (pi, qj) = if streamed == Streamed::Rhs { (o, i) } else { (i, o) };
                    let (two_rows, two_cols) = (pi + 1 < rows, qj + 1 < cols);
                    let a0 = a_at(pi);
                    let a1 = if two_rows { a_at(pi + 1) } else { a0 };
                    let b0 = b_at(qj);
                    let b1 = if two_cols { b_at(qj + 1) } else { b0 };
                    // SAFETY: when chunks > 1 the group's four slots lie inside `partial` (never read otherwise).
                    let group = unsafe { partial.add(group_of(pi, qj)) };
                    let reload = if chunk > 0 {
                        group.cast_const()
                    } else {
                        std::ptr::null()
                    };
                    // SAFETY: the session is active; each operand pointer starts `len ≥ 1` consecutive tiles
                    // (of a fixed panel's run of `steps`, s0 + len ≤ steps, or of the chunk buffer); the variant
                    // reads only the tiles that exist, and reloads only sums it stored after the last chunk.
                    unsafe {
                        match (two_rows, two_cols) {
                            (true, true) => kernel_2x2(a0, a1, b0, b1, len, reload),
                            (true, false) => kernel_2x1(a0, a1, b0, b1, len, reload),
                            (false, true) => kernel_1x2(a0, a1, b0, b1, len, reload),
                            (false, false) => kernel_1x1(a0, a1, b0, b1, len, reload),
                        }
                    }
                    for di in 0..1 + two_rows as usize {
                        for dj in 0..1 + two_cols as usize {
                            let index = 2 * di + dj;
                            if !last {
                                // SAFETY: the kernel just left this tile's sums in register `index`; the slot
                                // is inside `partial`, which only this task uses.
                                unsafe { store_result(index, group.add(index).cast(), TILE_STRIDE) };
                                continue;
                            }
                            let (r0, c0) = ((p0 + pi + di) * TILE_ROWS, (q0 + qj + dj) * TILE_ROWS);
                            let (tile_rows, tile_cols) = ((m - r0).min(TILE_ROWS), (n - c0).min(TILE_ROWS));
                            // SAFETY: `(r0, c0)` is inside the caller's view.
                            let out = unsafe {
                                self.dst
                                    .get()
                                    .offset(r0 as isize * self.dst_rs + c0 as isize * self.dst_cs)
                            };
                            if direct && tile_rows == TILE_ROWS && tile_cols == TILE_ROWS {
                                // SAFETY: a whole 16×16 tile of `dst` with unit column stride and row stride
                                // `dst_rs > 0` elements, inside the caller's view and owned by this task;
                                // overwriting with scale 1 is a plain store.
                                unsafe { store_result(index, out, self.dst_rs as usize * 4) };
                            } else {
                                // SAFETY: as above for the staging tile (this task's own), then the tile's
                                // elements of `dst`; AVX-512F is available.
                                unsafe {
                                    store_result(index, staging.0.as_mut_ptr(), TILE_STRIDE);
                                    write_tile(
                                        &mut staging,
                                        tile_rows,
                                        tile_cols,
                                        out,
                                        self.dst_rs,
                                        self.dst_cs,
                                        accumulate,
                                        scale,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        drop(session);
    }
}
