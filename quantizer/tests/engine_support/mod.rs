//! Shared helpers of the engine tests: central finite differences in f64 and naive reference math.
#![allow(dead_code)]

use tern_quantizer::engine::SplitMix64;

/// Step of the central differences. With f64 and losses of O(1–10), truncation (~h²·f''') and rounding
/// (~ε·|L|/h) errors are both ~1e-10, far below the tolerances below.
pub const FD_STEP: f64 = 1e-5;
/// Absolute and relative tolerance of an analytic gradient element against its finite difference: 1e-6
/// relative leaves four orders of margin over the FD error and is six orders below what a wrong formula gives.
pub const FD_ATOL: f64 = 1e-8;
pub const FD_RTOL: f64 = 1e-6;

pub fn randn(rng: &mut SplitMix64, n: usize, std: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * std).collect()
}

/// Checks `analytic[i]` against `(loss(x + h·e_i) − loss(x − h·e_i)) / 2h` for each `i` in `indices`.
/// Returns the largest absolute error seen. Panics with context on the first mismatch.
pub fn fd_check(
    what: &str,
    x: &mut [f64],
    analytic: &[f64],
    indices: impl IntoIterator<Item = usize>,
    loss: impl FnMut(&[f64]) -> f64,
) -> f64 {
    fd_check_with_step(what, x, analytic, indices, FD_STEP, loss)
}

/// [`fd_check`] with another step: functions with large third derivatives (sharp soft quantizers) need a smaller
/// one to keep the truncation error below the tolerance.
pub fn fd_check_with_step(
    what: &str,
    x: &mut [f64],
    analytic: &[f64],
    indices: impl IntoIterator<Item = usize>,
    step: f64,
    mut loss: impl FnMut(&[f64]) -> f64,
) -> f64 {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut worst: f64 = 0.0;
    let mut checked = 0;
    for i in indices {
        let orig = x[i];
        x[i] = orig + step;
        let plus = loss(x);
        x[i] = orig - step;
        let minus = loss(x);
        x[i] = orig;
        let numeric = (plus - minus) / (2.0 * step);
        let err = (analytic[i] - numeric).abs();
        assert!(
            err <= FD_ATOL + FD_RTOL * numeric.abs(),
            "{what}[{i}]: analytic {} vs finite difference {numeric} (error {err:e})",
            analytic[i]
        );
        worst = worst.max(err);
        checked += 1;
    }
    assert!(checked > 0, "{what}: no element checked");
    worst
}

/// Every index when small, else `count` distinct-ish random ones plus the first and last.
pub fn sample_indices(rng: &mut SplitMix64, len: usize, count: usize) -> Vec<usize> {
    if len <= count {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..count).map(|_| rng.below(len as u64) as usize).collect();
    v.push(0);
    v.push(len - 1);
    v.sort_unstable();
    v.dedup();
    v
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Naive `a[m, k] · b[k, n]`.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    c
}

pub fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}
