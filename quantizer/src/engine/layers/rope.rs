//! Rotary position embedding.
//!
//! Pair `i` of every head (`(x[2i], x[2i+1])` interleaved, `(x[i], x[i+d/2])` half) at position `p` is rotated
//! by the angle `p·f_i`, `f_i = θ^(−2i/d)`, optionally rescaled as Llama 3.1 does. A rotation is orthogonal, so
//! the backward is the inverse rotation of the gradient ([`RopeDirection::Inverse`](crate::engine::RopeDirection::Inverse)).

use tern_format::numerics::rope_scaled;
use tern_format::RopeScaling;

/// Inverse frequencies `f_i`, `i < head_dim/2`, including Llama-3 scaling (the scaling formula is
/// `tern_format::numerics::rope_scaled`, the runtime's too).
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: RopeScaling) -> Vec<f64> {
    let half = head_dim / 2;
    (0..half)
        .map(|i| rope_scaled(theta.powf(-(2.0 * i as f64) / head_dim as f64), scaling))
        .collect()
}

/// The `[seq_len, head_dim/2, (cos, sin)]` table the [`rope`](crate::engine::Backend::rope) kernel reads,
/// computed in f64.
pub fn rope_table(seq_len: usize, head_dim: usize, theta: f64, scaling: RopeScaling) -> Vec<f64> {
    let freqs = inverse_frequencies(head_dim, theta, scaling);
    let mut table = Vec::with_capacity(seq_len * head_dim);
    for pos in 0..seq_len {
        for &f in &freqs {
            let (s, c) = (pos as f64 * f).sin_cos();
            table.push(c);
            table.push(s);
        }
    }
    table
}
