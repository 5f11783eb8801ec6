//! AVX-512 BF16 kernel for the blocked driver ([`super::blocked`]): the AMX kernel's bf16 tiles
//! ([`super::pack`]), multiplied with `VDPBF16PS` on the vector unit, for CPUs that have AVX512_BF16 but no
//! AMX (AMD Zen 4 and later, Intel Cooper Lake).
//!
//! Panels are 16 rows (left) and 16 columns (right), one 1 KiB tile per 32 values of `k`, exactly as for AMX:
//! row `r` of a left tile holds `A[r, 32s..32s + 32]`, row `p` of a right tile holds the pairs
//! `(B[32s + 2p, c], B[32s + 2p + 1, c])` for the 16 columns `c`. That pair layout is what `VDPBF16PS` wants:
//! one instruction adds `A[r, 2p]·B[2p, c] + A[r, 2p + 1]·B[2p + 1, c]` to 16 f32 lanes, with the pair of A
//! broadcast as one 32-bit element. The micro-kernel takes 8 rows of a left panel against both right panels
//! (16 accumulators, 2 vector loads of B and 8 broadcasts feeding 16 products of 32 multiply-adds per pair of
//! `k`), twice the multiply-adds per instruction of the f32 kernel ([`super::avx512`]).
//!
//! Every output is one accumulation over `k` in increasing order (pairs of `k` per instruction, through the
//! f32 partial sums between chunks exactly), so results do not depend on threads or blocking. They are not the
//! AMX kernel's bits: the two units order and round the pair sums differently.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;
use std::thread::LocalKey;

use super::blocked::{self, PanelKernel, Results, Source, TaskBuffers};
use super::pack::{self, Tile, TILE_K, TILE_ROWS};

/// Rows of the micro-kernel (half a left panel).
const KERNEL_ROWS: usize = 8;

/// Whether the CPU has what the kernel and the bf16 packers use: AVX-512F, BW and BF16 (probed once).
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// The 16×16 f32 sums of one pair of panels, row-major.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Sums([f32; TILE_ROWS * TILE_ROWS]);

/// Rows `[8h, 8h + 8)` of left panel `a` times the first `COLS_PANELS` (1 or 2) right panels `b` over `steps`
/// tiles, starting from `reload[j]` (8 rows of a 16-wide sums block, for right panel `j`) or zero when it is
/// null, and storing the sums at `out[j]` in the same layout.
///
/// # Safety
/// AVX-512F/BF16 available; `a` and the used `b[j]` start `steps` consecutive tiles; the used `reload[j]` are
/// null or readable and the used `out[j]` writable for 8 rows of 16 f32 (64-byte aligned).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_8x16n<const COL_PANELS: usize>(
    a: *const Tile,
    half: usize,
    b: [*const Tile; 2],
    steps: usize,
    reload: [*const f32; 2],
    out: [*mut f32; 2],
) {
    let mut acc = [[_mm512_setzero_ps(); COL_PANELS]; KERNEL_ROWS];
    for j in 0..COL_PANELS {
        if !reload[j].is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                row[j] = _mm512_load_ps(reload[j].add(r * TILE_ROWS));
            }
        }
    }
    for s in 0..steps {
        let at = (*a.add(s)).0.as_ptr().add(half * KERNEL_ROWS * TILE_K);
        let mut bt = [std::ptr::null::<u16>(); COL_PANELS];
        for j in 0..COL_PANELS {
            bt[j] = (*b[j].add(s)).0.as_ptr();
        }
        for p in 0..TILE_ROWS {
            let mut bv = [_mm512_setzero_si512(); COL_PANELS];
            for j in 0..COL_PANELS {
                bv[j] = _mm512_load_si512(bt[j].add(p * TILE_K).cast());
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // The pair (A[r, 2p], A[r, 2p + 1]) as one 32-bit lane, broadcast.
                let pair = at.add(r * TILE_K + 2 * p).cast::<i32>().read_unaligned();
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                for j in 0..COL_PANELS {
                    let b: __m512bh = std::mem::transmute(bv[j]);
                    row[j] = _mm512_dpbf16_ps(row[j], av, b);
                }
            }
        }
    }
    for j in 0..COL_PANELS {
        for (r, row) in acc.iter().enumerate() {
            _mm512_store_ps(out[j].add(r * TILE_ROWS), row[j]);
        }
    }
}

/// The AVX-512 BF16 kernel.
pub(super) struct Avx512Bf16;

thread_local! {
    static CALL_BUFFERS: RefCell<Vec<Tile>> = const { RefCell::new(Vec::new()) };
    static TASK_BUFFERS: RefCell<TaskBuffers<Avx512Bf16>> = RefCell::new(TaskBuffers::default());
}

impl PanelKernel for Avx512Bf16 {
    const ROWS: usize = TILE_ROWS;
    const COLS: usize = TILE_ROWS;
    const STEP: usize = TILE_K;
    /// 256 values of `k`: a pair of right panels of one chunk (16 KiB) and the left pair stay in L1.
    const MAX_CHUNK_STEPS: usize = 8;
    /// Blocks of 128×128 outputs.
    const BLOCK_PANELS: usize = 8;
    const MAX_TASK_FIXED_PANELS: usize = 64;
    type Block = Tile;
    type Acc = Sums;
    const ZERO_BLOCK: Tile = Tile::ZERO;
    const ZERO_ACC: Sums = Sums([0.0; TILE_ROWS * TILE_ROWS]);
    type Session = ();

    unsafe fn start() {}

    unsafe fn pack_lhs(blocks: &mut [Tile], src: Source) {
        // SAFETY: forwarded (`available` checked what the packers use).
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
        reload: *const Sums,
        results: &Results<Sums>,
    ) {
        let mut staging = [Self::ZERO_ACC; 4];
        let slots: *mut Sums = match results {
            Results::Partial(slots) => *slots,
            Results::Final { .. } => staging.as_mut_ptr(),
        };
        for (di, &a) in a.iter().enumerate().take(1 + two_rows as usize) {
            for half in 0..TILE_ROWS / KERNEL_ROWS {
                let row = half * KERNEL_ROWS * TILE_ROWS;
                // SAFETY (pointer arithmetic): slot `2·di + dj` lies among the group's four (caller), and
                // `row` plus 8 rows of 16 inside one slot.
                let from = |dj: usize| {
                    if reload.is_null() {
                        std::ptr::null()
                    } else {
                        unsafe { (*reload.add(2 * di + dj)).0.as_ptr().add(row) }
                    }
                };
                let to = |dj: usize| unsafe { (*slots.add(2 * di + dj)).0.as_mut_ptr().add(row) };
                // SAFETY: the caller's contract for the panels and slots (the staging slots are this call's);
                // AVX-512F/BF16 available (the dispatcher checked `available`).
                unsafe {
                    if two_cols {
                        kernel_8x16n::<2>(a, half, b, steps, [from(0), from(1)], [to(0), to(1)]);
                    } else {
                        kernel_8x16n::<1>(
                            a,
                            half,
                            b,
                            steps,
                            [from(0), std::ptr::null()],
                            [to(0), std::ptr::null_mut()],
                        );
                    }
                }
            }
        }
        if let Results::Final { targets, finish } = results {
            for di in 0..1 + two_rows as usize {
                for dj in 0..1 + two_cols as usize {
                    let index = 2 * di + dj;
                    // SAFETY: the staging slot holds this panel's 16×16 sums; the target lies in the caller's
                    // destination, which no other thread accesses; AVX-512F available.
                    unsafe {
                        blocked::write_block(
                            staging[index].0.as_mut_ptr(),
                            TILE_ROWS,
                            TILE_ROWS,
                            targets[index],
                            *finish,
                        )
                    };
                }
            }
        }
    }

    fn call_buffers() -> &'static LocalKey<RefCell<Vec<Tile>>> {
        &CALL_BUFFERS
    }

    fn task_buffers() -> &'static LocalKey<RefCell<TaskBuffers<Avx512Bf16>>> {
        &TASK_BUFFERS
    }
}
