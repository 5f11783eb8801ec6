//! Shape checks of the backend kernels, shared by every backend: each takes the buffer lengths of one
//! operation and returns [`EngineError::Shape`](super::EngineError::Shape) unless they fit, so a shape bug is
//! the same typed error on the CPU and on a device (where it would otherwise be memory corruption).

use super::backend::{AttentionDims, RopeDims};
use super::error::{ensure, EngineResult};

pub(crate) fn same_len(op: &'static str, what: &'static str, got: usize, want: usize) -> EngineResult<()> {
    ensure(got == want, op, || {
        format!("{what} has {got} elements, expected {want}")
    })
}

pub(crate) fn rows_of(op: &'static str, what: &'static str, len: usize, cols: usize) -> EngineResult<usize> {
    ensure(cols > 0 && len % cols == 0, op, || {
        format!("{what} has {len} elements, not a multiple of {cols}")
    })?;
    Ok(len / cols)
}

pub(crate) fn check_groups(op: &'static str, out: usize, w: usize, group_len: usize) -> EngineResult<()> {
    same_len(op, "out", out, w)?;
    ensure(group_len > 0 && w % group_len == 0, op, || {
        format!("{w} weights are not whole scale groups of {group_len}")
    })
}

pub(crate) fn check_attention_dims(d: &AttentionDims) -> EngineResult<()> {
    ensure(
        d.head_dim > 0 && d.n_kv_heads > 0 && d.n_heads % d.n_kv_heads == 0 && d.seq_len > 0,
        "attention",
        || {
            format!(
                "{} heads, {} KV heads, head dim {}, seq {}",
                d.n_heads, d.n_kv_heads, d.head_dim, d.seq_len
            )
        },
    )
}

/// `x` is whole rows of `n_heads·head_dim` and whole sequences; the table is `[seq_len, head_dim]`.
pub(crate) fn check_rope(x: usize, table: usize, dims: &RopeDims) -> EngineResult<()> {
    ensure(dims.head_dim % 2 == 0 && dims.seq_len > 0, "rope", || {
        format!(
            "head dim {} must be even and seq len {} positive",
            dims.head_dim, dims.seq_len
        )
    })?;
    let rows = rows_of("rope", "x", x, dims.n_heads * dims.head_dim)?;
    ensure(rows % dims.seq_len == 0, "rope", || {
        format!("{rows} rows are not whole sequences of {}", dims.seq_len)
    })?;
    same_len("rope", "table", table, dims.seq_len * dims.head_dim)
}
