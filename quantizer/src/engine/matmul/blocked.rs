//! The blocked GEMM driver the SIMD kernels share ([`super::amx`] in bf16, [`super::avx512`] in f32).
//!
//! A kernel ([`PanelKernel`]) packs the left operand as panels of `ROWS` rows and the right one as panels of
//! `COLS` columns, each a run of blocks of `STEP` values of `k`, and multiplies a group of up to 2×2 panels
//! over a run of steps. The driver packs the smaller operand whole up front (in parallel) and cuts the output
//! into tasks of up to `BLOCK_PANELS` panels of the larger operand (and up to `MAX_TASK_FIXED_PANELS` of the
//! other), one rayon task each; a task packs its own panels of the larger operand chunk by chunk of `k` (at
//! most `MAX_CHUNK_STEPS` steps), so each chunk is packed once and stays in L2 while it is used, and runs
//! every group of its outputs over the chunk, `BLOCK_PANELS`² panels at a time, the pair of panels of the
//! smaller operand in the outer loop (in L1) and the chunk in the inner one.
//!
//! Between chunks the sums go through an f32 scratch exactly, so every output is one f32 accumulation over
//! all of `k` in increasing order, and finally `dst = (accumulate ? dst : 0) + scale · sum`. The chunks
//! depend on `k` alone and no task splits `k`, so results do not depend on the number of threads or on how
//! the tasks are cut.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;
use std::thread::LocalKey;

use rayon::prelude::*;

use crate::engine::cpu::embedding::SendPtr;

/// Strided f32 source: element `(i, j)` at `ptr[i·rs + j·cs]`, with `rows × cols` of it readable.
#[derive(Clone, Copy)]
pub(super) struct Source {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
    pub rows: usize,
    pub cols: usize,
}

/// Where a finished panel goes: its first element in `dst` and how much of it lies inside the matrix.
#[derive(Clone, Copy)]
pub(super) struct Target {
    pub ptr: *mut f32,
    pub rows: usize,
    pub cols: usize,
}

/// The target of a panel a group does not have.
const NO_TARGET: Target = Target {
    ptr: std::ptr::null_mut(),
    rows: 0,
    cols: 0,
};

/// How finished panels are written: `dst = (accumulate ? dst : 0) + scale · sum` with strides `rs`, `cs`;
/// `direct` when that is a plain overwrite of a row-major destination (`scale = 1`, `cs = 1`).
#[derive(Clone, Copy)]
pub(super) struct Finish {
    pub rs: isize,
    pub cs: isize,
    pub accumulate: bool,
    pub scale: f32,
    pub direct: bool,
}

/// What a group does with its sums: keep them for the next chunk, or write them out.
pub(super) enum Results<Acc> {
    /// Slot `2·di + dj` of the four at this pointer takes panel `(di, dj)`'s sums.
    Partial(*mut Acc),
    /// Panel `(di, dj)` is written to `targets[2·di + dj]`.
    Final { targets: [Target; 4], finish: Finish },
}

/// A packing format and a micro-kernel over it.
pub(super) trait PanelKernel: Sized + 'static {
    /// Rows of a left-operand panel.
    const ROWS: usize;
    /// Columns of a right-operand panel.
    const COLS: usize;
    /// Values of `k` per packed block.
    const STEP: usize;
    const MAX_CHUNK_STEPS: usize;
    const BLOCK_PANELS: usize;
    const MAX_TASK_FIXED_PANELS: usize;
    /// One panel × one step, packed.
    type Block: Copy + Send + Sync + 'static;
    /// The `ROWS × COLS` f32 sums of one pair of panels.
    type Acc: Copy + Send + 'static;
    const ZERO_BLOCK: Self::Block;
    const ZERO_ACC: Self::Acc;
    /// Per-thread state a task holds while it runs groups (AMX's tile configuration).
    type Session;

    /// # Safety
    /// The kernel's CPU features are available.
    unsafe fn start() -> Self::Session;

    /// Packs rows `[0, ROWS)` of `src` (`src.rows ≤ ROWS`, `src.cols` values of `k`) into `blocks`, zero padded.
    ///
    /// # Safety
    /// `src` describes readable memory; the kernel's CPU features are available.
    unsafe fn pack_lhs(blocks: &mut [Self::Block], src: Source);

    /// Packs columns `[0, COLS)` of `src` (`src.rows` values of `k`, `src.cols ≤ COLS`) into `blocks`, zero
    /// padded.
    ///
    /// # Safety
    /// As [`PanelKernel::pack_lhs`].
    unsafe fn pack_rhs(blocks: &mut [Self::Block], src: Source);

    /// Multiplies left panels `a[0]` (and `a[1]` if `two_rows`) by right panels `b[0]` (and `b[1]` if
    /// `two_cols`) over `steps` blocks, starting from the sums at `reload` (four slots as in
    /// [`Results::Partial`]) or from zero when it is null, and disposes of the sums as `results` says.
    ///
    /// # Safety
    /// A session of this thread is active; `steps ≥ 1`; each used panel pointer starts `steps` consecutive
    /// blocks; `reload` is null or holds the used panels' sums; `results` points to writable slots, or to
    /// targets inside the caller's destination that no other thread accesses.
    #[allow(clippy::too_many_arguments)]
    unsafe fn group(
        a: [*const Self::Block; 2],
        b: [*const Self::Block; 2],
        two_rows: bool,
        two_cols: bool,
        steps: usize,
        reload: *const Self::Acc,
        results: &Results<Self::Acc>,
    );

    /// This kernel's per-thread buffers for the operand packed whole, and for a task's chunk and sums.
    fn call_buffers() -> &'static LocalKey<RefCell<Vec<Self::Block>>>;
    fn task_buffers() -> &'static LocalKey<RefCell<TaskBuffers<Self>>>;
}

/// A task's packed chunk of the streamed operand, and its partial sums.
pub(super) struct TaskBuffers<K: PanelKernel> {
    streamed: Vec<K::Block>,
    partial: Vec<K::Acc>,
}

impl<K: PanelKernel> Default for TaskBuffers<K> {
    fn default() -> Self {
        Self {
            streamed: Vec::new(),
            partial: Vec::new(),
        }
    }
}

/// Per-thread buffers, kept between calls so that large GEMMs do not fault in fresh pages every time.
trait Reusable: Default + 'static {
    fn elements(&self) -> usize;
}

impl<T: 'static> Reusable for Vec<T> {
    fn elements(&self) -> usize {
        self.len()
    }
}

impl<K: PanelKernel> Reusable for TaskBuffers<K> {
    fn elements(&self) -> usize {
        self.streamed.len() + self.partial.len()
    }
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

/// Lanes `[0, valid)` of a 16-lane mask (`valid` saturates at 16).
#[inline(always)]
pub(super) fn lanes(valid: usize) -> __mmask16 {
    if valid >= 16 {
        0xffff
    } else {
        ((1u32 << valid) - 1) as __mmask16
    }
}

/// Writes the `target.rows × target.cols` corner of the row-major `rows × cols` f32 block `sums` (which it may
/// overwrite: a 16×16 block is transposed in place for a column-major destination).
///
/// # Safety
/// `sums` holds `rows × cols` f32 (64-byte aligned when 16×16); the target's elements are writable and no
/// other thread accesses them; AVX-512F available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn write_block(sums: *mut f32, rows: usize, cols: usize, target: Target, finish: Finish) {
    let Finish {
        mut rs,
        mut cs,
        accumulate,
        scale,
        ..
    } = finish;
    let (mut valid_rows, mut valid_cols, mut stride) = (target.rows, target.cols, cols);
    if cs != 1 && rs == 1 && rows == 16 && cols == 16 {
        // A column-major destination: transpose the block and write its rows as the destination's columns.
        super::pack::transpose_16x16(sums.cast());
        std::mem::swap(&mut valid_rows, &mut valid_cols);
        std::mem::swap(&mut rs, &mut cs);
        stride = rows;
    }
    if cs == 1 {
        let factor = _mm512_set1_ps(scale);
        for r in 0..valid_rows {
            for c0 in (0..valid_cols).step_by(16) {
                let mask = lanes(valid_cols - c0);
                let d = target.ptr.offset(r as isize * rs).add(c0);
                let mut v = _mm512_loadu_ps(sums.add(r * stride + c0));
                if scale != 1.0 {
                    v = _mm512_mul_ps(v, factor);
                }
                if accumulate {
                    v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), v);
                }
                _mm512_mask_storeu_ps(d, mask, v);
            }
        }
    } else {
        for r in 0..valid_rows {
            for c in 0..valid_cols {
                let d = target.ptr.offset(r as isize * rs + c as isize * cs);
                let mut v = *sums.add(r * stride + c);
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

/// A GEMM `dst[m, n] (+)= scale · lhs[m, k] · rhs[k, n]` with raw strided operands.
pub(super) struct Problem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dst: SendPtr<f32>,
    pub dst_rs: isize,
    pub dst_cs: isize,
    pub lhs: SendPtr<f32>,
    pub lhs_rs: isize,
    pub lhs_cs: isize,
    pub rhs: SendPtr<f32>,
    pub rhs_rs: isize,
    pub rhs_cs: isize,
}

/// Which operand the tasks pack chunk by chunk (the larger one); the other is packed whole up front.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Streamed {
    Lhs,
    Rhs,
}

impl Problem {
    /// Packs row panel `p` of `lhs` for `blocks.len()` steps of `k` from `k0`.
    ///
    /// # Safety
    /// The contract of [`super::gemm_strided_with`]; `p` is a row panel of the problem, `k0 < k`; the
    /// kernel's CPU features are available.
    unsafe fn pack_lhs<K: PanelKernel>(&self, blocks: &mut [K::Block], p: usize, k0: usize) {
        let r0 = p * K::ROWS;
        let source = Source {
            // SAFETY: element (r0, k0) is inside the caller's view.
            ptr: unsafe {
                self.lhs
                    .get()
                    .offset(r0 as isize * self.lhs_rs + k0 as isize * self.lhs_cs)
            },
            rs: self.lhs_rs,
            cs: self.lhs_cs,
            rows: (self.m - r0).min(K::ROWS),
            cols: (self.k - k0).min(blocks.len() * K::STEP),
        };
        // SAFETY: the caller's readable view restricted to this panel and chunk.
        unsafe { K::pack_lhs(blocks, source) };
    }

    /// Packs column panel `q` of `rhs` for `blocks.len()` steps of `k` from `k0`.
    ///
    /// # Safety
    /// As [`Problem::pack_lhs`] for a column panel.
    unsafe fn pack_rhs<K: PanelKernel>(&self, blocks: &mut [K::Block], q: usize, k0: usize) {
        let c0 = q * K::COLS;
        let source = Source {
            // SAFETY: element (k0, c0) is inside the caller's view.
            ptr: unsafe {
                self.rhs
                    .get()
                    .offset(k0 as isize * self.rhs_rs + c0 as isize * self.rhs_cs)
            },
            rs: self.rhs_rs,
            cs: self.rhs_cs,
            rows: (self.k - k0).min(blocks.len() * K::STEP),
            cols: (self.n - c0).min(K::COLS),
        };
        // SAFETY: as for the left operand.
        unsafe { K::pack_rhs(blocks, source) };
    }

    /// Runs the GEMM with kernel `K` (`m, n, k ≥ 1`).
    ///
    /// # Safety
    /// The contract of [`super::gemm_strided_with`], with the operands described by `self`; the kernel's CPU
    /// features (and permissions) are available.
    pub(super) unsafe fn run<K: PanelKernel>(&self, accumulate: bool, scale: f32, parallel: bool) {
        let Problem { m, n, k, .. } = *self;
        let steps = k.div_ceil(K::STEP);
        let (row_panels, col_panels) = (m.div_ceil(K::ROWS), n.div_ceil(K::COLS));
        // Chunks of `k` depend on `k` alone, so the order of every sum is fixed whatever the task split.
        let chunks = steps.div_ceil(K::MAX_CHUNK_STEPS);
        let chunk_steps = steps.div_ceil(chunks);
        let streamed = if n >= m { Streamed::Rhs } else { Streamed::Lhs };
        let (streamed_panels, fixed_panels) = match streamed {
            Streamed::Rhs => (col_panels, row_panels),
            Streamed::Lhs => (row_panels, col_panels),
        };
        // Enough tasks to balance the threads, each as wide as possible (up to BLOCK_PANELS streamed panels).
        let threads = if parallel { rayon::current_num_threads() } else { 1 };
        let task_streamed = streamed_panels
            .div_ceil(4 * threads)
            .clamp(2, K::BLOCK_PANELS)
            .next_multiple_of(2);
        let task_fixed = K::MAX_TASK_FIXED_PANELS.min(fixed_panels);
        let streamed_tasks = streamed_panels.div_ceil(task_streamed);
        let tasks = fixed_panels.div_ceil(task_fixed) * streamed_tasks;
        with_buffers(K::call_buffers(), |buffers| {
            let fixed = prefix(buffers, fixed_panels * steps, K::ZERO_BLOCK);
            let pack_fixed = |(panel, blocks): (usize, &mut [K::Block])| {
                // SAFETY: `panel` is a panel of the fixed operand; k0 = 0 < k.
                unsafe {
                    match streamed {
                        Streamed::Rhs => self.pack_lhs::<K>(blocks, panel, 0),
                        Streamed::Lhs => self.pack_rhs::<K>(blocks, panel, 0),
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
                let (f0, s0) = (ft * task_fixed, st * task_streamed);
                let fixed_range = f0..f0 + task_fixed.min(fixed_panels - f0);
                let streamed_range = s0..s0 + task_streamed.min(streamed_panels - s0);
                let (rows, cols) = match streamed {
                    Streamed::Rhs => (fixed_range, streamed_range),
                    Streamed::Lhs => (streamed_range, fixed_range),
                };
                // SAFETY: the tasks' panels partition the output; forwarded contract.
                with_buffers(K::task_buffers(), |own| unsafe {
                    self.task::<K>(own, fixed, streamed, steps, chunk_steps, rows, cols, accumulate, scale)
                });
            };
            if parallel {
                (0..tasks).into_par_iter().for_each(task);
            } else {
                (0..tasks).for_each(task);
            }
        });
    }

    /// Computes the output panels `rows × cols` (panel ranges): per chunk of `k`, packs the task's panels of
    /// the streamed operand, then runs every group of panels over that chunk.
    ///
    /// # Safety
    /// As [`Problem::run`]; `fixed` holds the other operand packed whole (`steps` blocks per panel); no other
    /// task writes these output panels.
    #[allow(clippy::too_many_arguments)]
    unsafe fn task<K: PanelKernel>(
        &self,
        buffers: &mut TaskBuffers<K>,
        fixed: &[K::Block],
        streamed: Streamed,
        steps: usize,
        chunk_steps: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        accumulate: bool,
        scale: f32,
    ) {
        let (p0, q0) = (rows.start, cols.start);
        let (rows, cols) = (rows.len(), cols.len());
        let chunks = steps.div_ceil(chunk_steps);
        let own_panels = if streamed == Streamed::Rhs { cols } else { rows };
        let chunk_blocks = prefix(&mut buffers.streamed, own_panels * chunk_steps, K::ZERO_BLOCK);
        // Partial sums between chunks by group of 2×2 panels: group (gi, gj) holds panels (2gi + di, 2gj + dj)
        // at 2di + dj.
        let col_groups = cols.div_ceil(2);
        let group_of = |pi: usize, qj: usize| ((pi / 2) * col_groups + qj / 2) * 4;
        let partial_len = if chunks > 1 {
            rows.div_ceil(2) * col_groups * 4
        } else {
            0
        };
        let partial = prefix(&mut buffers.partial, partial_len, K::ZERO_ACC).as_mut_ptr();
        let finish = Finish {
            rs: self.dst_rs,
            cs: self.dst_cs,
            accumulate,
            scale,
            direct: !accumulate && scale == 1.0 && self.dst_cs == 1 && self.dst_rs > 0,
        };
        let target = |pi: usize, qj: usize| {
            let (r0, c0) = (pi * K::ROWS, qj * K::COLS);
            Target {
                // SAFETY: `(r0, c0)` is inside the caller's view.
                ptr: unsafe {
                    self.dst
                        .get()
                        .offset(r0 as isize * self.dst_rs + c0 as isize * self.dst_cs)
                },
                rows: (self.m - r0).min(K::ROWS),
                cols: (self.n - c0).min(K::COLS),
            }
        };
        // SAFETY: the caller guarantees the kernel's features.
        let session = unsafe { K::start() };
        for chunk in 0..chunks {
            let s0 = chunk * chunk_steps;
            let len = chunk_steps.min(steps - s0);
            for (i, blocks) in chunk_blocks.chunks_mut(chunk_steps).enumerate() {
                // SAFETY: panel `q0 + i` (or `p0 + i`) belongs to the problem; s0·STEP < k.
                unsafe {
                    match streamed {
                        Streamed::Rhs => self.pack_rhs::<K>(&mut blocks[..len], q0 + i, s0 * K::STEP),
                        Streamed::Lhs => self.pack_lhs::<K>(&mut blocks[..len], p0 + i, s0 * K::STEP),
                    }
                }
            }
            let chunk_blocks = &*chunk_blocks;
            // Block pointers for step s0 of row panel pi / column panel qj of the task.
            let a_at = |pi: usize| -> *const K::Block {
                match streamed {
                    Streamed::Rhs => &fixed[(p0 + pi) * steps + s0],
                    Streamed::Lhs => &chunk_blocks[pi * chunk_steps],
                }
            };
            let b_at = |qj: usize| -> *const K::Block {
                match streamed {
                    Streamed::Rhs => &chunk_blocks[qj * chunk_steps],
                    Streamed::Lhs => &fixed[(q0 + qj) * steps + s0],
                }
            };
            // Pairs of the fixed operand's panels in the outer loop (in L1 over the inner loop), the chunk of
            // the streamed operand in the inner one (in L2), BLOCK_PANELS fixed panels at a time so that each
            // block of outputs is finished before the next starts.
            let (outer, inner) = match streamed {
                Streamed::Rhs => (rows, cols),
                Streamed::Lhs => (cols, rows),
            };
            let pairs = (0..outer).step_by(K::BLOCK_PANELS).flat_map(|block| {
                let end = (block + K::BLOCK_PANELS).min(outer);
                (0..inner)
                    .step_by(2)
                    .flat_map(move |i| (block..end).step_by(2).map(move |o| (o, i)))
            });
            for (o, i) in pairs {
                let (pi, qj) = if streamed == Streamed::Rhs { (o, i) } else { (i, o) };
                let (two_rows, two_cols) = (pi + 1 < rows, qj + 1 < cols);
                let a = [a_at(pi), if two_rows { a_at(pi + 1) } else { a_at(pi) }];
                let b = [b_at(qj), if two_cols { b_at(qj + 1) } else { b_at(qj) }];
                // SAFETY: when chunks > 1 the group's four slots lie inside `partial` (never used otherwise).
                let group = unsafe { partial.add(group_of(pi, qj)) };
                let reload = if chunk > 0 {
                    group.cast_const()
                } else {
                    std::ptr::null()
                };
                let results = if chunk + 1 < chunks {
                    Results::Partial(group)
                } else {
                    let (r, c) = (p0 + pi, q0 + qj);
                    // Only the group's own panels: the neighbour of a ragged group may be another task's.
                    let own = |di: usize, dj: usize| {
                        if (di == 0 || two_rows) && (dj == 0 || two_cols) {
                            target(r + di, c + dj)
                        } else {
                            NO_TARGET
                        }
                    };
                    Results::Final {
                        targets: [own(0, 0), own(0, 1), own(1, 0), own(1, 1)],
                        finish,
                    }
                };
                // SAFETY: the session is active; each used pointer starts `len ≥ 1` consecutive blocks (of a
                // fixed panel's run of `steps`, s0 + len ≤ steps, or of the chunk buffer); `reload` holds the
                // sums this group stored after the previous chunk; the partial slots are this task's own and
                // the targets inside the caller's view and this task's panels.
                unsafe { K::group(a, b, two_rows, two_cols, len, reload, &results) };
            }
        }
        drop(session);
    }
}
