//! AMX-BF16 kernel for the blocked driver ([`super::blocked`]): bf16 tiles packed from f32
//! ([`super::pack`]), `TDPBF16PS` accumulating 16×16 f32 tiles.
//!
//! Panels are 16 rows (left) and 16 columns (right), one 1 KiB tile per 32 values of `k`. A group of 2×2 output
//! tiles keeps its four accumulators and two A and two B tiles in the eight tile registers (`tmm0..3`
//! accumulators, `tmm4/5` A, `tmm6/7` B), so each loaded tile feeds two products; finished tiles go straight
//! from the registers to the destination when that is a plain overwrite, else through a staging tile.
//!
//! Tile instructions are emitted with `asm!` (their intrinsics are unstable); the compiler never uses the tile
//! registers, so their contents persist between the asm blocks of one thread, which [`TileSession`] brackets.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;
use std::thread::LocalKey;

use super::blocked::{self, PanelKernel, Results, Source, TaskBuffers};
use super::pack::{self, Tile, TILE_K, TILE_ROWS};

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
pub(super) struct TileSession;

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
pub(super) struct AccTile([f32; TILE_ROWS * TILE_ROWS]);

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

/// The AMX-BF16 kernel.
pub(super) struct Amx;

thread_local! {
    static CALL_BUFFERS: RefCell<Vec<Tile>> = const { RefCell::new(Vec::new()) };
    static TASK_BUFFERS: RefCell<TaskBuffers<Amx>> = RefCell::new(TaskBuffers::default());
}

impl PanelKernel for Amx {
    const ROWS: usize = TILE_ROWS;
    const COLS: usize = TILE_ROWS;
    const STEP: usize = TILE_K;
    /// 512 values of `k`: a pair of panels of one chunk (32 KiB) stays in L1 over a block.
    const MAX_CHUNK_STEPS: usize = 16;
    /// Blocks of 128×128 outputs.
    const BLOCK_PANELS: usize = 8;
    const MAX_TASK_FIXED_PANELS: usize = 64;
    type Block = Tile;
    type Acc = AccTile;
    const ZERO_BLOCK: Tile = Tile::ZERO;
    const ZERO_ACC: AccTile = AccTile([0.0; TILE_ROWS * TILE_ROWS]);
    type Session = TileSession;

    unsafe fn start() -> TileSession {
        // SAFETY: forwarded (the dispatcher checked `available()`).
        unsafe { TileSession::start() }
    }

    unsafe fn pack_lhs(blocks: &mut [Tile], src: Source) {
        // SAFETY: forwarded.
        unsafe { pack::pack_a(blocks, src) }
    }

    unsafe fn pack_rhs(blocks: &mut [Tile], src: Source) {
        // SAFETY: forwarded.
        unsafe { pack::pack_b(blocks, src) }
    }

    unsafe fn group(
        a: [*const Tile; 2],
        b: [*const Tile; 2],
        two_rows: bool,
        two_cols: bool,
        steps: usize,
        reload: *const AccTile,
        results: &Results<AccTile>,
    ) {
        // SAFETY: the caller's contract: the session is active, the pointers start `steps` tiles, `reload` is
        // null or holds this group's sums; the variant touches only the tiles that exist.
        unsafe {
            match (two_rows, two_cols) {
                (true, true) => kernel_2x2(a[0], a[1], b[0], b[1], steps, reload),
                (true, false) => kernel_2x1(a[0], a[1], b[0], b[1], steps, reload),
                (false, true) => kernel_1x2(a[0], a[1], b[0], b[1], steps, reload),
                (false, false) => kernel_1x1(a[0], a[1], b[0], b[1], steps, reload),
            }
        }
        let mut staging = Self::ZERO_ACC;
        for di in 0..1 + two_rows as usize {
            for dj in 0..1 + two_cols as usize {
                let index = 2 * di + dj;
                match results {
                    // SAFETY: the kernel just left this tile's sums in register `index`; the slot is writable
                    // (caller).
                    Results::Partial(slots) => unsafe { store_result(index, slots.add(index).cast(), TILE_STRIDE) },
                    Results::Final { targets, finish } => {
                        let target = targets[index];
                        if finish.direct && target.rows == TILE_ROWS && target.cols == TILE_ROWS {
                            // SAFETY: a whole 16×16 tile of a row-major destination (row stride `rs > 0`)
                            // that only this thread writes; overwriting with scale 1 is a plain store.
                            unsafe { store_result(index, target.ptr, finish.rs as usize * 4) };
                        } else {
                            // SAFETY: the staging tile is this call's own; then the target as above; AVX-512F
                            // is available wherever AMX is (checked by `available`).
                            unsafe {
                                store_result(index, staging.0.as_mut_ptr(), TILE_STRIDE);
                                blocked::write_block(staging.0.as_mut_ptr(), TILE_ROWS, TILE_ROWS, target, *finish);
                            }
                        }
                    }
                }
            }
        }
    }

    fn call_buffers() -> &'static LocalKey<RefCell<Vec<Tile>>> {
        &CALL_BUFFERS
    }

    fn task_buffers() -> &'static LocalKey<RefCell<TaskBuffers<Amx>>> {
        &TASK_BUFFERS
    }
}
