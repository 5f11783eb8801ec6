//! AVX-512F f32 kernel for the blocked driver ([`super::blocked`]).
//!
//! Panels are 32 rows (left) and 32 columns (right), packed `k`-major in blocks of 16 values of `k`: a block
//! holds, for each `k`, the panel's 32 values (one row of A's panel is one lane). The micro-kernel multiplies 8
//! rows by 32 columns: 16 accumulators (8 rows × 2 vectors), per `k` two vector loads of B and eight broadcasts
//! of A feeding 16 FMAs, and a group of 2×2 panels is 16 such calls. Every output is one fused multiply-add
//! chain over `k` in increasing order (through the f32 partial sums between chunks, exactly), so the result
//! does not depend on threads or blocking; it does differ in the last bits from the `gemm` crate's.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;
use std::thread::LocalKey;

use super::blocked::{self, lanes, PanelKernel, Results, Source, Target, TaskBuffers};
use super::pack::transpose_registers;

/// Rows (left) or columns (right) of a panel.
const PANEL: usize = 32;
/// Values of `k` per block.
const STEP: usize = 16;
/// Rows of the micro-kernel.
const KERNEL_ROWS: usize = 8;

/// Whether the CPU has AVX-512F (probed once).
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// One panel × one step: `values[kk·32 + i]` is element `i` of the panel at `k = 16s + kk`.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Block([f32; PANEL * STEP]);

/// The 32×32 sums of a pair of panels, row-major.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Sums([f32; PANEL * PANEL]);

/// Packs `v` (`v.rows ≤ 32` panel elements, `v.cols` values of `k`) `k`-major, scalar definition.
///
/// # Safety
/// `v` describes readable memory.
unsafe fn pack_scalar(blocks: &mut [Block], v: Source) {
    for (s, block) in blocks.iter_mut().enumerate() {
        for kk in 0..STEP {
            for i in 0..PANEL {
                let j = s * STEP + kk;
                block.0[kk * PANEL + i] = if i < v.rows && j < v.cols {
                    // SAFETY: `(i, j)` is inside the view.
                    unsafe { *v.ptr.offset(i as isize * v.rs + j as isize * v.cs) }
                } else {
                    0.0
                };
            }
        }
    }
}

/// [`pack_scalar`] with vector loads where the panel (`rs == 1`) or `k` (`cs == 1`) is contiguous.
///
/// # Safety
/// `v` describes readable memory; AVX-512F available.
#[target_feature(enable = "avx512f")]
unsafe fn pack(blocks: &mut [Block], v: Source) {
    if v.rs == 1 {
        // For each k the panel's values are contiguous: copy them.
        for (s, block) in blocks.iter_mut().enumerate() {
            for kk in 0..STEP {
                let j = s * STEP + kk;
                let dst = block.0.as_mut_ptr().add(kk * PANEL);
                for h in 0..2 {
                    let v = if j < v.cols {
                        let src = v.ptr.offset(j as isize * v.cs).add(16 * h);
                        _mm512_maskz_loadu_ps(lanes(v.rows.saturating_sub(16 * h)), src)
                    } else {
                        _mm512_setzero_ps()
                    };
                    _mm512_store_ps(dst.add(16 * h), v);
                }
            }
        }
    } else if v.cs == 1 {
        // Each panel element's run of k is contiguous: load 16 of them × 16 k and transpose.
        for (s, block) in blocks.iter_mut().enumerate() {
            let j0 = s * STEP;
            let mask = lanes(v.cols.saturating_sub(j0));
            for h in 0..2 {
                let mut r = [_mm512_setzero_si512(); 16];
                for (i, reg) in r.iter_mut().enumerate() {
                    let e = 16 * h + i;
                    if e < v.rows {
                        let src = v.ptr.offset(e as isize * v.rs).add(j0);
                        *reg = _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, src));
                    }
                }
                transpose_registers(&mut r);
                for (kk, reg) in r.iter().enumerate() {
                    _mm512_store_si512(block.0.as_mut_ptr().add(kk * PANEL + 16 * h).cast(), *reg);
                }
            }
        }
    } else {
        pack_scalar(blocks, v);
    }
}

/// The right operand's panel is the left-operand layout of its transpose.
fn transposed(src: Source) -> Source {
    Source {
        ptr: src.ptr,
        rs: src.cs,
        cs: src.rs,
        rows: src.cols,
        cols: src.rows,
    }
}

/// 8 rows × 32 columns over `steps` blocks: rows `[8o, 8o + 8)` of left panel `a`, all of right panel `b`;
/// starting from `reload` (8 rows of a 32-wide sums block) or zero; ending in `partial` (likewise) or in
/// `target` (its rows `[8o, …)`).
///
/// # Safety
/// AVX-512F available; `a` and `b` start `steps` blocks; `reload` is null or readable, `out` writable as
/// described by the caller ([`PanelKernel::group`]).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_8x32(
    a: *const Block,
    octet: usize,
    b: *const Block,
    steps: usize,
    reload: *const f32,
    partial: *mut f32,
    target: Option<(Target, blocked::Finish)>,
) {
    let mut lo = [_mm512_setzero_ps(); KERNEL_ROWS];
    let mut hi = [_mm512_setzero_ps(); KERNEL_ROWS];
    if !reload.is_null() {
        for r in 0..KERNEL_ROWS {
            lo[r] = _mm512_load_ps(reload.add(r * PANEL));
            hi[r] = _mm512_load_ps(reload.add(r * PANEL + 16));
        }
    }
    for s in 0..steps {
        let a = (*a.add(s)).0.as_ptr().add(octet * KERNEL_ROWS);
        let b = (*b.add(s)).0.as_ptr();
        for kk in 0..STEP {
            let b_lo = _mm512_load_ps(b.add(kk * PANEL));
            let b_hi = _mm512_load_ps(b.add(kk * PANEL + 16));
            for r in 0..KERNEL_ROWS {
                let x = _mm512_set1_ps(*a.add(kk * PANEL + r));
                lo[r] = _mm512_fmadd_ps(x, b_lo, lo[r]);
                hi[r] = _mm512_fmadd_ps(x, b_hi, hi[r]);
            }
        }
    }
    match target {
        None => {
            for r in 0..KERNEL_ROWS {
                _mm512_store_ps(partial.add(r * PANEL), lo[r]);
                _mm512_store_ps(partial.add(r * PANEL + 16), hi[r]);
            }
        }
        Some((target, finish)) if finish.cs == 1 => {
            let factor = _mm512_set1_ps(finish.scale);
            let rows = target.rows.saturating_sub(octet * KERNEL_ROWS).min(KERNEL_ROWS);
            let (mask_lo, mask_hi) = (lanes(target.cols), lanes(target.cols.saturating_sub(16)));
            // A constant trip count with a test inside keeps the accumulators in registers (a loop to `rows`
            // would index them at run time and so put them in memory).
            for r in 0..KERNEL_ROWS {
                if r < rows {
                    let d = target.ptr.offset((octet * KERNEL_ROWS + r) as isize * finish.rs);
                    finish_vector(lo[r], mask_lo, d, factor, finish);
                    finish_vector(hi[r], mask_hi, d.wrapping_add(16), factor, finish);
                }
            }
        }
        Some((target, finish)) => {
            let mut staging = Sums([0.0; PANEL * PANEL]);
            for r in 0..KERNEL_ROWS {
                _mm512_store_ps(staging.0.as_mut_ptr().add(r * PANEL), lo[r]);
                _mm512_store_ps(staging.0.as_mut_ptr().add(r * PANEL + 16), hi[r]);
            }
            let rows = target.rows.saturating_sub(octet * KERNEL_ROWS).min(KERNEL_ROWS);
            let octet_target = Target {
                ptr: target.ptr.wrapping_offset((octet * KERNEL_ROWS) as isize * finish.rs),
                rows,
                cols: target.cols,
            };
            blocked::write_block(staging.0.as_mut_ptr(), KERNEL_ROWS, PANEL, octet_target, finish);
        }
    }
}

/// `d[lanes] = (accumulate ? d : 0) + scale · v` on the lanes of `mask`.
///
/// # Safety
/// The masked lanes of `d` are writable; AVX-512F available.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish_vector(v: __m512, mask: __mmask16, d: *mut f32, factor: __m512, finish: blocked::Finish) {
    let mut v = v;
    if finish.scale != 1.0 {
        v = _mm512_mul_ps(v, factor);
    }
    if finish.accumulate {
        v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), v);
    }
    _mm512_mask_storeu_ps(d, mask, v);
}

/// The AVX-512F f32 kernel.
pub(super) struct Avx512;

thread_local! {
    static CALL_BUFFERS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
    static TASK_BUFFERS: RefCell<TaskBuffers<Avx512>> = RefCell::new(TaskBuffers::default());
}

impl PanelKernel for Avx512 {
    const ROWS: usize = PANEL;
    const COLS: usize = PANEL;
    const STEP: usize = STEP;
    /// 128 values of `k`: a pair of panels of one chunk (32 KiB) stays in L1 over a block.
    const MAX_CHUNK_STEPS: usize = 8;
    /// Blocks of 256×256 outputs.
    const BLOCK_PANELS: usize = 8;
    const MAX_TASK_FIXED_PANELS: usize = 32;
    type Block = Block;
    type Acc = Sums;
    const ZERO_BLOCK: Block = Block([0.0; PANEL * STEP]);
    const ZERO_ACC: Sums = Sums([0.0; PANEL * PANEL]);
    type Session = ();

    unsafe fn start() {}

    unsafe fn pack_lhs(blocks: &mut [Block], src: Source) {
        // SAFETY: forwarded.
        unsafe { pack(blocks, src) }
    }

    unsafe fn pack_rhs(blocks: &mut [Block], src: Source) {
        // SAFETY: forwarded.
        unsafe { pack(blocks, transposed(src)) }
    }

    unsafe fn group(
        a: [*const Block; 2],
        b: [*const Block; 2],
        two_rows: bool,
        two_cols: bool,
        steps: usize,
        reload: *const Sums,
        results: &Results<Sums>,
    ) {
        for (di, &a) in a.iter().enumerate().take(1 + two_rows as usize) {
            for octet in 0..PANEL / KERNEL_ROWS {
                for (dj, &b) in b.iter().enumerate().take(1 + two_cols as usize) {
                    let index = 2 * di + dj;
                    let row = octet * KERNEL_ROWS * PANEL;
                    let from = if reload.is_null() {
                        std::ptr::null()
                    } else {
                        // SAFETY: inside the group's four slots (caller).
                        unsafe { (*reload.add(index)).0.as_ptr().add(row) }
                    };
                    let (partial, target) = match results {
                        // SAFETY: inside the group's four writable slots (caller).
                        Results::Partial(slots) => (unsafe { (*slots.add(index)).0.as_mut_ptr().add(row) }, None),
                        Results::Final { targets, finish } => (std::ptr::null_mut(), Some((targets[index], *finish))),
                    };
                    if target.is_some_and(|(t, _)| t.rows <= octet * KERNEL_ROWS) {
                        continue; // rows past the matrix: never written.
                    }
                    // SAFETY: the caller's contract for the panels, slots and targets; AVX-512F available.
                    unsafe { kernel_8x32(a, octet, b, steps, from, partial, target) };
                }
            }
        }
    }

    fn call_buffers() -> &'static LocalKey<RefCell<Vec<Block>>> {
        &CALL_BUFFERS
    }

    fn task_buffers() -> &'static LocalKey<RefCell<TaskBuffers<Avx512>>> {
        &TASK_BUFFERS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_packer_matches_scalar_definition() {
        if !available() {
            eprintln!("skipped: AVX-512F not available");
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for &(rows, cols) in &[(1usize, 1usize), (3, 17), (32, 16), (31, 33), (17, 64), (32, 100)] {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    f32::from_bits(state as u32)
                })
                .collect();
            let steps = cols.div_ceil(STEP);
            // Row-major (k contiguous), column-major (panel contiguous) and neither (every other element).
            let wide: Vec<f32> = data.iter().flat_map(|&x| [x, 0.0]).collect();
            for (label, buf, rs, cs) in [
                ("row-major", &data, cols as isize, 1isize),
                ("column-major", &data, 1, rows as isize),
                ("strided", &wide, 2 * cols as isize, 2),
            ] {
                let v = Source {
                    ptr: buf.as_ptr(),
                    rs,
                    cs,
                    rows,
                    cols,
                };
                let mut want = vec![Block([0.0; PANEL * STEP]); steps];
                let mut got = vec![Block([f32::NAN; PANEL * STEP]); steps];
                // SAFETY: each view lies inside its buffer; AVX-512F checked above.
                unsafe {
                    pack_scalar(&mut want, v);
                    pack(&mut got, v);
                }
                let bits = |b: &[Block]| b.iter().flat_map(|b| b.0.map(f32::to_bits)).collect::<Vec<u32>>();
                assert_eq!(bits(&want), bits(&got), "{label} {rows}×{cols}");
            }
        }
    }
}
