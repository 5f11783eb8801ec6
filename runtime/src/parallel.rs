//! Splitting the forward pass's data-parallel loops across the session's threads (`pool.rs`).
//!
//! Work is split by output columns (matrix rows, attention heads): each task computes every token of the
//! batch for its own columns, with exactly the operations a single thread would use — every kernel computes
//! each output independently of which other outputs share its call — so results are bit-identical for any
//! thread count. Split points are multiples of `align` columns (a kernel tile's height).
//!
//! A task writes its columns into a contiguous region: directly into the output when the batch has one
//! token, else into the session's thread scratch, which is then copied into the `[token][column]` output.
//! When the scratch cannot hold the batch for all columns (the vocabulary-wide head with `Logits::All`), the
//! columns are processed in slices that fit, each still applying every weight row to the whole batch.

use core::ops::Range;

use crate::pool::Pool;

/// Most tasks one loop is split into.
pub const MAX_THREADS: usize = 64;

/// Least work (multiply-adds) worth a thread of its own by default: ~1 µs of the AVX-512 kernels, several
/// times the pool's barrier. `Session::set_min_work_per_thread` changes it (tests lower it so that their
/// small models split across every thread).
pub const MIN_WORK_PER_THREAD: usize = 1 << 16;

/// One task: the tokens and columns (`units`) it computes, its output region (`[token][unit][unit_w]`, local
/// to the task) and its share of a per-unit scratch buffer.
pub(crate) struct ColTask<'b> {
    pub tokens: Range<usize>,
    pub units: Range<usize>,
    pub out: &'b mut [f32],
    pub extra: &'b mut [f32],
}

/// How a loop may be split.
#[derive(Clone, Copy)]
pub(crate) struct Split<'p> {
    pub pool: &'p Pool,
    pub min_work: usize,
}

/// Takes the next `len` elements (or what is left) off the front of `rest`.
fn take<'b>(rest: &mut &'b mut [f32], len: usize) -> &'b mut [f32] {
    let all = core::mem::take(rest);
    let len = len.min(all.len());
    let (head, tail) = all.split_at_mut(len);
    *rest = tail;
    head
}

/// The columns of task `i` of `n` over `units`, boundaries rounded to multiples of `align`.
fn share(units: &Range<usize>, i: usize, n: usize, align: usize) -> Range<usize> {
    let len = units.len();
    let cut = |k: usize| {
        if k >= n {
            len
        } else {
            (len * k / n).div_ceil(align) * align
        }
        .min(len)
    };
    units.start + cut(i)..units.start + cut(i + 1)
}

/// Fills columns `units` (× `unit_w` values each) of `out` (`[token][out_stride]`, `batch` tokens) by calling
/// `f` on up to `pool.threads()` disjoint column ranges, fewer when `work` (the loop's multiply-adds) is too
/// small to pay for them. `extra` holds `extra_per_unit` scratch values per unit of `units`; each task gets
/// those of its own. Returns the number of tasks used.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_columns(
    split: Split<'_>,
    batch: usize,
    units: Range<usize>,
    unit_w: usize,
    align: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
    extra: &mut [f32],
    extra_per_unit: usize,
    work: usize,
    f: &(dyn Fn(&mut ColTask<'_>) + Sync),
) -> usize {
    let align = align.max(1);
    let n = split
        .pool
        .threads()
        .clamp(1, MAX_THREADS)
        .min(units.len().div_ceil(align).max(1))
        .min((work / split.min_work.max(1)).max(1));
    let col0 = units.start * unit_w;
    let width = units.len() * unit_w;
    if batch == 1 || n == 1 && out_stride == width {
        // Direct: one token at a time, each task's columns contiguous in that token's output row (with one
        // task and the whole row, every token at once).
        let tokens_at_once = if n == 1 && out_stride == width { batch } else { 1 };
        let mut t = 0;
        while t < batch {
            let Some(row) = out.get_mut(t * out_stride + col0..(t + tokens_at_once - 1) * out_stride + col0 + width)
            else {
                break;
            };
            let mut tasks: [Option<ColTask<'_>>; MAX_THREADS] = [const { None }; MAX_THREADS];
            let mut rest_out: &mut [f32] = row;
            let mut rest_extra: &mut [f32] = &mut *extra;
            for (i, slot) in tasks.iter_mut().take(n).enumerate() {
                let r = share(&units, i, n, align);
                *slot = Some(ColTask {
                    out: take(&mut rest_out, r.len() * unit_w * tokens_at_once),
                    extra: take(&mut rest_extra, r.len() * extra_per_unit),
                    tokens: t..t + tokens_at_once,
                    units: r,
                });
            }
            split
                .pool
                .for_each_mut(&mut tasks[..n], &|t: &mut Option<ColTask<'_>>| {
                    if let Some(t) = t {
                        f(t)
                    }
                });
            t += tokens_at_once;
        }
        return n;
    }
    // Batched: each task writes `[token][its columns]` into its own scratch region, then copy out. Columns
    // beyond what the scratch holds for the whole batch are done in further slices.
    let fit = scratch.len() / (batch * unit_w).max(1);
    let per_slice = if fit >= align { fit / align * align } else { fit.max(1) };
    let mut used = 1;
    let mut start = units.start;
    while start < units.end {
        let end = (start + per_slice).min(units.end);
        let slice = start..end;
        let mut tasks: [Option<ColTask<'_>>; MAX_THREADS] = [const { None }; MAX_THREADS];
        let mut rest_scratch: &mut [f32] = &mut *scratch;
        let mut rest_extra: &mut [f32] = &mut *extra;
        let m = n.min(slice.len().div_ceil(align).max(1));
        for (i, slot) in tasks.iter_mut().take(m).enumerate() {
            let r = share(&slice, i, m, align);
            *slot = Some(ColTask {
                out: take(&mut rest_scratch, batch * r.len() * unit_w),
                extra: take(&mut rest_extra, r.len() * extra_per_unit),
                tokens: 0..batch,
                units: r,
            });
        }
        split
            .pool
            .for_each_mut(&mut tasks[..m], &|t: &mut Option<ColTask<'_>>| {
                if let Some(t) = t {
                    f(t)
                }
            });
        used = used.max(m);
        for task in tasks.iter().flatten() {
            let w = task.units.len() * unit_w;
            let col = task.units.start * unit_w;
            if w == 0 {
                continue;
            }
            for (t, src) in task.out.chunks_exact(w).enumerate() {
                if let Some(d) = out.get_mut(t * out_stride + col..t * out_stride + col + w) {
                    d.copy_from_slice(src);
                }
            }
        }
        start = end;
    }
    used
}

/// Most matrices one fused decode loop computes (q, k, v).
pub(crate) const MAX_FUSED: usize = 3;

/// One task of a fused loop: for each matrix, the rows it computes and their outputs.
pub(crate) struct RowsTask<'b> {
    pub parts: [Option<(Range<usize>, &'b mut [f32])>; MAX_FUSED],
}

/// One token through several matrices that read the same input, in one parallel loop (one barrier instead of
/// one per matrix): task `i` computes share `i` of every matrix's rows, straight into `outs[m]`. `rows[m]` is
/// matrix `m`'s row count, `work` the loop's multiply-adds. Returns the number of tasks used.
pub(crate) fn par_rows_fused(
    split: Split<'_>,
    rows: &[usize],
    outs: &mut [&mut [f32]],
    align: usize,
    work: usize,
    f: &(dyn Fn(&mut RowsTask<'_>) + Sync),
) -> usize {
    let align = align.max(1);
    let widest = rows.iter().copied().max().unwrap_or(0);
    let n = split
        .pool
        .threads()
        .clamp(1, MAX_THREADS)
        .min(widest.div_ceil(align).max(1))
        .min((work / split.min_work.max(1)).max(1));
    let mut tasks: [RowsTask<'_>; MAX_THREADS] = [const {
        RowsTask {
            parts: [None, None, None],
        }
    }; MAX_THREADS];
    for (m, (out, &r)) in outs.iter_mut().zip(rows).enumerate().take(MAX_FUSED) {
        let mut rest: &mut [f32] = out;
        for (i, task) in tasks.iter_mut().take(n).enumerate() {
            let range = share(&(0..r), i, n, align);
            let o = take(&mut rest, range.len());
            task.parts[m] = Some((range, o));
        }
    }
    split.pool.for_each_mut(&mut tasks[..n], f);
    n
}
