//! CPU kernels of causal grouped-query attention (the math: [`crate::engine::layers::attention`]): per (sequence,
//! head) score blocks through strided GEMMs, tiled so that causal masking skips the upper triangle; the backward
//! runs one task per (sequence, KV head) so the group's query heads add into dK/dV in order.

use rayon::prelude::*;

use super::embedding::SendPtr;
use crate::engine::backend::AttentionDims;
use crate::engine::error::EngineResult;
use crate::engine::matmul::{gemm_strided_with, MatmulPrecision};
use crate::engine::scalar::Float;
use crate::engine::shapes::{check_attention_dims, same_len};

/// Rows of the score matrix computed per GEMM: causal masking lets row tile `[r0, r1)` stop at column `r1`,
/// which skips about half of the work.
const CAUSAL_TILE: usize = 64;

/// Checks its own dimensions and lengths: the strided GEMMs below address whole buffers through raw pointers
/// and are in bounds only if these hold.
pub(crate) fn forward_cpu<T: Float>(
    out: &mut [T],
    probs: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    d: AttentionDims,
    precision: MatmulPrecision,
) -> EngineResult<()> {
    check_attention_dims(&d)?;
    same_len("attention_forward", "q", q.len(), d.rows() * d.q_dim())?;
    same_len("attention_forward", "out", out.len(), d.rows() * d.q_dim())?;
    same_len("attention_forward", "k", k.len(), d.rows() * d.kv_dim())?;
    same_len("attention_forward", "v", v.len(), d.rows() * d.kv_dim())?;
    same_len("attention_forward", "probs", probs.len(), d.probs_len())?;
    let (t, nh, hd) = (d.seq_len, d.n_heads, d.head_dim);
    let group = nh / d.n_kv_heads;
    let (qd, kvd) = (d.q_dim(), d.kv_dim());
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    let out_ptr = SendPtr(out.as_mut_ptr());
    probs.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
        let (b, h) = (bh / nh, bh % nh);
        let g = h / group;
        let q0 = &q[b * t * qd + h * hd..];
        let k0 = &k[b * t * kvd + g * hd..];
        let v0 = &v[b * t * kvd + g * hd..];
        for r0 in (0..t).step_by(CAUSAL_TILE) {
            let r1 = (r0 + CAUSAL_TILE).min(t);
            // SAFETY: rows r0..r1 / columns 0..r1 of this head's [t, t] score block; Q rows r0..r1 and K rows
            // 0..r1 lie inside the slices (strides qd/kvd, head offset + hd ≤ row width).
            unsafe {
                gemm_strided_with(
                    precision,
                    r1 - r0,
                    r1,
                    hd,
                    p[r0 * t..].as_mut_ptr(),
                    t as isize,
                    1,
                    false,
                    q0[r0 * qd..].as_ptr(),
                    qd as isize,
                    1,
                    k0.as_ptr(),
                    1,
                    kvd as isize,
                    scale,
                    false,
                );
            }
        }
        for (i, row) in p.chunks_mut(t).enumerate() {
            let (live, masked) = row.split_at_mut(i + 1);
            let max = live.iter().fold(live[0], |m, &x| m.max(x));
            let mut sum = T::ZERO;
            for x in live.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = T::ONE / sum;
            live.iter_mut().for_each(|x| *x *= inv);
            masked.iter_mut().for_each(|x| *x = T::ZERO);
        }
        for r0 in (0..t).step_by(CAUSAL_TILE) {
            let r1 = (r0 + CAUSAL_TILE).min(t);
            // SAFETY: output rows r0..r1 of head h in sequence b: columns h·hd..(h+1)·hd of rows
            // (b·t + r)·qd — disjoint from every other (b, h) task; V rows 0..r1 are in bounds.
            unsafe {
                gemm_strided_with(
                    precision,
                    r1 - r0,
                    hd,
                    r1,
                    out_ptr.get().add((b * t + r0) * qd + h * hd),
                    qd as isize,
                    1,
                    false,
                    p[r0 * t..].as_ptr(),
                    t as isize,
                    1,
                    v0.as_ptr(),
                    kvd as isize,
                    1,
                    T::ONE,
                    false,
                );
            }
        }
    });
    Ok(())
}

/// Checks its own dimensions and lengths, as `forward_cpu` does.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_cpu<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    scratch: &mut [T],
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    d: AttentionDims,
    precision: MatmulPrecision,
) -> EngineResult<()> {
    check_attention_dims(&d)?;
    let (qn, kvn) = (d.rows() * d.q_dim(), d.rows() * d.kv_dim());
    for (what, len, want) in [
        ("dq", dq.len(), qn),
        ("dout", dout.len(), qn),
        ("q", q.len(), qn),
        ("dk", dk.len(), kvn),
        ("dv", dv.len(), kvn),
        ("k", k.len(), kvn),
        ("v", v.len(), kvn),
        ("probs", probs.len(), d.probs_len()),
        ("scratch", scratch.len(), d.probs_len()),
    ] {
        same_len("attention_backward", what, len, want)?;
    }
    let (t, nh, nkv, hd) = (d.seq_len, d.n_heads, d.n_kv_heads, d.head_dim);
    let group = nh / nkv;
    let (qd, kvd) = (d.q_dim(), d.kv_dim());
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    let scratch_ptr = SendPtr(scratch.as_mut_ptr());
    // One task per (sequence, KV head): the group's query heads all add into the same dK/dV rows, so they run
    // one after another inside the task.
    (0..d.batch * nkv).into_par_iter().for_each(|bg| {
        let (b, g) = (bg / nkv, bg % nkv);
        let kv_off = b * t * kvd + g * hd;
        let (k0, v0) = (&k[kv_off..], &v[kv_off..]);
        for i in 0..group {
            let h = g * group + i;
            let q_off = b * t * qd + h * hd;
            let (q0, do0) = (&q[q_off..], &dout[q_off..]);
            let p = &probs[(b * nh + h) * t * t..(b * nh + h + 1) * t * t];
            let accumulate_kv = i > 0;
            // SAFETY: this task exclusively owns the [t, t] scratch block of (b, h), the dQ columns of head h
            // and the dK/dV columns of KV head g in sequence b; all index ranges stay inside the buffers.
            unsafe {
                let ds = std::slice::from_raw_parts_mut(scratch_ptr.get().add((b * nh + h) * t * t), t * t);
                // dV_g (+)= Pᵀ·dO_h, tiled over key rows s0..s1: only query rows t' ≥ s0 contribute.
                for s0 in (0..t).step_by(CAUSAL_TILE) {
                    let s1 = (s0 + CAUSAL_TILE).min(t);
                    gemm_strided_with(
                        precision,
                        s1 - s0,
                        hd,
                        t - s0,
                        dv_ptr.get().add(kv_off + s0 * kvd),
                        kvd as isize,
                        1,
                        accumulate_kv,
                        p[s0 * t + s0..].as_ptr(),
                        1,
                        t as isize,
                        do0[s0 * qd..].as_ptr(),
                        qd as isize,
                        1,
                        T::ONE,
                        false,
                    );
                }
                // dP = dO_h·V_gᵀ on the causal part.
                for r0 in (0..t).step_by(CAUSAL_TILE) {
                    let r1 = (r0 + CAUSAL_TILE).min(t);
                    gemm_strided_with(
                        precision,
                        r1 - r0,
                        r1,
                        hd,
                        ds[r0 * t..].as_mut_ptr(),
                        t as isize,
                        1,
                        false,
                        do0[r0 * qd..].as_ptr(),
                        qd as isize,
                        1,
                        v0.as_ptr(),
                        1,
                        kvd as isize,
                        T::ONE,
                        false,
                    );
                }
                // dS = P ⊙ (dP − Σ P⊙dP), zero above the diagonal.
                for (row, (ds_row, p_row)) in ds.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                    let live = row + 1;
                    let dot: T = ds_row[..live].iter().zip(&p_row[..live]).map(|(&a, &b)| a * b).sum();
                    for (x, &pv) in ds_row[..live].iter_mut().zip(&p_row[..live]) {
                        *x = pv * (*x - dot);
                    }
                    ds_row[live..].iter_mut().for_each(|x| *x = T::ZERO);
                }
                // dQ_h = scale·dS·K_g (causal: row tile r reads keys 0..r1).
                for r0 in (0..t).step_by(CAUSAL_TILE) {
                    let r1 = (r0 + CAUSAL_TILE).min(t);
                    gemm_strided_with(
                        precision,
                        r1 - r0,
                        hd,
                        r1,
                        dq_ptr.get().add(q_off + r0 * qd),
                        qd as isize,
                        1,
                        false,
                        ds[r0 * t..].as_ptr(),
                        t as isize,
                        1,
                        k0.as_ptr(),
                        kvd as isize,
                        1,
                        scale,
                        false,
                    );
                }
                // dK_g (+)= scale·dSᵀ·Q_h.
                for s0 in (0..t).step_by(CAUSAL_TILE) {
                    let s1 = (s0 + CAUSAL_TILE).min(t);
                    gemm_strided_with(
                        precision,
                        s1 - s0,
                        hd,
                        t - s0,
                        dk_ptr.get().add(kv_off + s0 * kvd),
                        kvd as isize,
                        1,
                        accumulate_kv,
                        ds[s0 * t + s0..].as_ptr(),
                        1,
                        t as isize,
                        q0[s0 * qd..].as_ptr(),
                        qd as isize,
                        1,
                        scale,
                        false,
                    );
                }
            }
        }
    });
    Ok(())
}
