//! Splitting the forward pass's data-parallel loops across threads.
//!
//! Work is split by output columns (matrix rows, attention heads): each task computes every token of the
//! batch for its own columns, with exactly the operations a single thread would use, so results are
//! bit-identical for any thread count. With the `std` feature, tasks after the first run on scoped threads
//! (`std::thread::scope`, no `unsafe`); without it they all run on the calling thread.
//!
//! A task writes its columns into a contiguous region: directly into the output when the batch has one
//! token, else into the session's thread scratch, which is then scattered into the `[token][column]` output.

use core::ops::Range;

/// Most tasks one loop is split into.
pub const MAX_THREADS: usize = 64;

/// Least work (multiply-adds) worth a thread of its own. Threads are spawned per loop, which costs tens of
/// microseconds (much more when the cores are busy with other processes), so small loops — most of a
/// single-token decode step — run on the calling thread: ~2^20 scalar multiply-adds take ~0.3 ms.
pub const MIN_WORK_PER_THREAD: usize = 1 << 20;

/// One task: the tokens and columns (`units`) it computes, its output region (`[token][unit][unit_w]`, local
/// to the task) and its share of a per-unit scratch buffer.
pub(crate) struct ColTask<'b> {
    pub tokens: Range<usize>,
    pub units: Range<usize>,
    pub out: &'b mut [f32],
    pub extra: &'b mut [f32],
}

/// Runs `f` on every task, the first on this thread and the others on scoped threads.
pub(crate) fn run<T: Send>(tasks: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
    #[cfg(feature = "std")]
    if let Some((first, rest)) = tasks.split_first_mut() {
        if !rest.is_empty() {
            std::thread::scope(|s| {
                for t in rest.iter_mut() {
                    s.spawn(move || f(t));
                }
                f(first);
            });
            return;
        }
    }
    for t in tasks.iter_mut() {
        f(t);
    }
}

/// Takes the next `len` elements (or what is left) off the front of `rest`.
fn take<'b>(rest: &mut &'b mut [f32], len: usize) -> &'b mut [f32] {
    let all = core::mem::take(rest);
    let len = len.min(all.len());
    let (head, tail) = all.split_at_mut(len);
    *rest = tail;
    head
}

/// Fills `out` (`[token][units·unit_w]`, `batch` tokens) by calling `f` on up to `threads` disjoint unit
/// ranges, fewer when `work` (the loop's multiply-adds) is too small to pay for them. `extra` holds
/// `extra_per_unit` scratch values per unit; each task gets those of its units.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_columns(
    threads: usize,
    batch: usize,
    units: usize,
    unit_w: usize,
    out: &mut [f32],
    scratch: &mut [f32],
    extra: &mut [f32],
    extra_per_unit: usize,
    work: usize,
    f: &(dyn Fn(&mut ColTask<'_>) + Sync),
) {
    let width = units * unit_w;
    let n = threads
        .clamp(1, MAX_THREADS)
        .min(units.max(1))
        .min((work / MIN_WORK_PER_THREAD).max(1));
    if n == 1 {
        let mut task = ColTask {
            tokens: 0..batch,
            units: 0..units,
            out,
            extra,
        };
        f(&mut task);
        return;
    }
    let range = |i: usize| units * i / n..units * (i + 1) / n;
    if batch == 1 || scratch.len() < batch * width {
        // Direct: one token at a time, each task's columns contiguous in that token's output row.
        for (t, row) in out.chunks_exact_mut(width).take(batch).enumerate() {
            let mut tasks: [Option<ColTask<'_>>; MAX_THREADS] = [const { None }; MAX_THREADS];
            let mut rest_out: &mut [f32] = row;
            let mut rest_extra: &mut [f32] = &mut *extra;
            for (i, slot) in tasks.iter_mut().take(n).enumerate() {
                let r = range(i);
                *slot = Some(ColTask {
                    out: take(&mut rest_out, r.len() * unit_w),
                    extra: take(&mut rest_extra, r.len() * extra_per_unit),
                    tokens: t..t + 1,
                    units: r,
                });
            }
            run(&mut tasks[..n], &|t: &mut Option<ColTask<'_>>| {
                if let Some(t) = t {
                    f(t)
                }
            });
        }
        return;
    }
    // Batched: each task writes `[token][its columns]` into its own scratch region, then scatter.
    let mut tasks: [Option<ColTask<'_>>; MAX_THREADS] = [const { None }; MAX_THREADS];
    let mut rest_scratch: &mut [f32] = scratch;
    let mut rest_extra: &mut [f32] = extra;
    for (i, slot) in tasks.iter_mut().take(n).enumerate() {
        let r = range(i);
        *slot = Some(ColTask {
            out: take(&mut rest_scratch, batch * r.len() * unit_w),
            extra: take(&mut rest_extra, r.len() * extra_per_unit),
            tokens: 0..batch,
            units: r,
        });
    }
    run(&mut tasks[..n], &|t: &mut Option<ColTask<'_>>| {
        if let Some(t) = t {
            f(t)
        }
    });
    for task in tasks.iter().flatten() {
        let w = task.units.len() * unit_w;
        let col = task.units.start * unit_w;
        if w == 0 {
            continue;
        }
        for (src, dst) in task.out.chunks_exact(w).zip(out.chunks_exact_mut(width)) {
            if let Some(d) = dst.get_mut(col..col + w) {
                d.copy_from_slice(src);
            }
        }
    }
}
