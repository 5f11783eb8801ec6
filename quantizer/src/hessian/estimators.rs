//! Trace estimators of the diagonal Hessian blocks `tr(H_ii)` of every probed tensor at once, from products of
//! the whole Hessian with global probe vectors (one product serves every tensor).
//!
//! * Hutchinson: `tr(H_ii) ≈ mean over Rademacher v of v_iᵀ(H·v)_i`. Unbiased: `E[v_iᵀ H_ij v_j] = 0` for `j ≠ i`
//!   because the blocks of `v` are independent.
//! * Hutch++ (Meyer, Musco, Musco, Woodruff 2021), per tensor: a sketch `Y_i = (H·S)_i` from `k` Rademacher
//!   columns, `Q_i = orth(Y_i)`, then `tr(H_ii) = tr(Q_iᵀ H_ii Q_i) + tr((I − Q_iQ_iᵀ) H_ii (I − Q_iQ_iᵀ))`, the first
//!   from `k` more products and the second by Hutchinson with `m` query vectors projected per tensor. Global
//!   products of the stacked `Q_i` columns would mix in cross-blocks `Q_iᵀ H_ij Q_j`, which are not zero-mean; each
//!   tensor's column is therefore multiplied by an independent random sign `s_i`, and `s_i·Q_iᵀ(H·u)_i` with
//!   `u = [s_j Q_j]` has expectation `Q_iᵀ H_ii Q_i` exactly. Cost: `2k + m` products per batch (default 10, 20).

use crate::data::HostBatch;
use crate::engine::{Backend, EngineResult, Float, SplitMix64};

use super::hvp::HvpOracle;

fn rademacher<T: Float>(rng: &mut SplitMix64, n: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    let mut bits = 0u64;
    for i in 0..n {
        if i % 64 == 0 {
            bits = rng.next_u64();
        }
        out.push(if bits >> (i % 64) & 1 == 1 { T::ONE } else { -T::ONE });
    }
    out
}

fn dot<T: Float>(a: &[T], b: &[T]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x.to_f64() * y.to_f64()).sum()
}

/// Orthonormal columns spanning `cols` (modified Gram–Schmidt, applied twice for stability); columns that are
/// (numerically) in the span of the earlier ones are dropped.
pub(crate) fn orthonormalize<T: Float>(cols: Vec<Vec<T>>) -> Vec<Vec<T>> {
    let mut q: Vec<Vec<T>> = Vec::with_capacity(cols.len());
    for mut c in cols {
        let original = dot(&c, &c).sqrt();
        for _ in 0..2 {
            for qj in &q {
                let r = T::from_f64(dot(qj, &c));
                for (x, &y) in c.iter_mut().zip(qj) {
                    *x -= r * y;
                }
            }
        }
        let norm = dot(&c, &c).sqrt();
        if norm > 1e-10 * original.max(f64::MIN_POSITIVE) && norm > 0.0 {
            let inv = T::from_f64(1.0 / norm);
            c.iter_mut().for_each(|x| *x *= inv);
            q.push(c);
        }
    }
    q
}

/// Per-tensor probe vectors → device buffers.
fn upload<B: Backend>(backend: &B, v: &[Vec<B::Elem>]) -> EngineResult<Vec<B::Buf>> {
    v.iter().map(|x| backend.upload(x)).collect()
}

fn download<B: Backend>(backend: &B, v: &[B::Buf]) -> EngineResult<Vec<Vec<B::Elem>>> {
    v.iter().map(|x| backend.download(x)).collect()
}

/// Number of Hessian-vector products an estimate over `batches` batches makes.
pub fn products(method: super::TraceMethod, batches: usize) -> usize {
    batches
        * match method {
            super::TraceMethod::Hutchinson { probes } => probes,
            super::TraceMethod::HutchPlusPlus { sketch, queries } => 2 * sketch + queries,
        }
}

/// Hutchinson's estimate of every probed tensor's trace, averaged over `batches`.
pub fn hutchinson<B: Backend>(
    oracle: &mut HvpOracle<'_, B>,
    batches: &[HostBatch],
    probes: usize,
    rng: &mut SplitMix64,
    progress: &mut dyn FnMut(usize),
) -> EngineResult<Vec<f64>> {
    let backend_sizes = sizes(oracle);
    let mut sums = vec![0.0f64; backend_sizes.len()];
    let mut done = 0;
    for batch in batches {
        oracle.set_batch(batch);
        for _ in 0..probes {
            let v: Vec<Vec<B::Elem>> = backend_sizes.iter().map(|&n| rademacher(rng, n)).collect();
            let hv = product(oracle, &v)?;
            for (i, (vi, hi)) in v.iter().zip(&hv).enumerate() {
                sums[i] += dot(vi, hi);
            }
            done += 1;
            progress(done);
        }
    }
    let count = (batches.len() * probes).max(1) as f64;
    Ok(sums.into_iter().map(|s| s / count).collect())
}

/// Hutch++ estimate of every probed tensor's trace, averaged over `batches`.
pub fn hutch_plus_plus<B: Backend>(
    oracle: &mut HvpOracle<'_, B>,
    batches: &[HostBatch],
    sketch: usize,
    queries: usize,
    rng: &mut SplitMix64,
    progress: &mut dyn FnMut(usize),
) -> EngineResult<Vec<f64>> {
    let n = sizes(oracle);
    let t = n.len();
    let mut totals = vec![0.0f64; t];
    let mut done = 0;
    for batch in batches {
        oracle.set_batch(batch);
        // Sketch: Y = H·S, column by column; per tensor the k columns of Y_i.
        let mut y: Vec<Vec<Vec<B::Elem>>> = vec![Vec::with_capacity(sketch); t];
        for _ in 0..sketch {
            let s: Vec<Vec<B::Elem>> = n.iter().map(|&len| rademacher(rng, len)).collect();
            for (i, col) in product(oracle, &s)?.into_iter().enumerate() {
                y[i].push(col);
            }
            done += 1;
            progress(done);
        }
        let q: Vec<Vec<Vec<B::Elem>>> = y.into_iter().map(orthonormalize).collect();
        // tr(Q_iᵀ H_ii Q_i) with independent signs per tensor.
        let mut low_rank = vec![0.0f64; t];
        for j in 0..sketch {
            let signs: Vec<f64> = (0..t)
                .map(|_| if rng.next_u64() & 1 == 1 { 1.0 } else { -1.0 })
                .collect();
            let u: Vec<Vec<B::Elem>> = (0..t)
                .map(|i| match q[i].get(j) {
                    Some(col) => col.iter().map(|&x| x * B::Elem::from_f64(signs[i])).collect(),
                    None => vec![B::Elem::ZERO; n[i]],
                })
                .collect();
            let hu = product(oracle, &u)?;
            for i in 0..t {
                if let Some(col) = q[i].get(j) {
                    low_rank[i] += signs[i] * dot(col, &hu[i]);
                }
            }
            done += 1;
            progress(done);
        }
        // Residual: Hutchinson on (I − QQᵀ)·g.
        let mut residual = vec![0.0f64; t];
        for _ in 0..queries {
            let g: Vec<Vec<B::Elem>> = (0..t)
                .map(|i| {
                    let mut gi: Vec<B::Elem> = rademacher(rng, n[i]);
                    for qc in &q[i] {
                        let r = B::Elem::from_f64(dot(qc, &gi));
                        for (x, &y) in gi.iter_mut().zip(qc) {
                            *x -= r * y;
                        }
                    }
                    gi
                })
                .collect();
            let hg = product(oracle, &g)?;
            for i in 0..t {
                residual[i] += dot(&g[i], &hg[i]) / queries.max(1) as f64;
            }
            done += 1;
            progress(done);
        }
        for i in 0..t {
            totals[i] += low_rank[i] + residual[i];
        }
    }
    Ok(totals.into_iter().map(|s| s / batches.len().max(1) as f64).collect())
}

fn sizes<B: Backend>(oracle: &HvpOracle<'_, B>) -> Vec<usize> {
    oracle.sizes()
}

fn product<B: Backend>(oracle: &mut HvpOracle<'_, B>, v: &[Vec<B::Elem>]) -> EngineResult<Vec<Vec<B::Elem>>> {
    let backend = oracle.backend();
    let dev = upload(backend, v)?;
    let hv = oracle.hvp(&dev)?;
    download(backend, &hv)
}
