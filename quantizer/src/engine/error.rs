//! Typed errors of the training engine.

use std::fmt;

/// Where a non-finite value was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonFiniteSource {
    /// The loss of a forward pass.
    Loss,
    /// The global gradient norm (some gradient element is NaN or infinite).
    GradientNorm,
}

impl fmt::Display for NonFiniteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loss => "loss",
            Self::GradientNorm => "gradient norm",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A buffer's length does not fit the shape an operation was asked to compute.
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// A model or training configuration the engine cannot run.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// A token id in the input is not below the vocabulary size.
    #[error("token id {token} at position {position} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { token: u32, position: usize, vocab: usize },
    /// NaN or infinity in the loss or the gradients: training must stop (parameters were left untouched).
    #[error("non-finite {source_kind} ({value}){}", step.map(|s| format!(" at optimizer step {s}")).unwrap_or_default())]
    NonFinite {
        source_kind: NonFiniteSource,
        value: f64,
        /// The optimizer step (0-based) being computed, where known.
        step: Option<u64>,
    },
    /// `backward` was called without a preceding training forward pass.
    #[error("backward called without a preceding forward pass that computed a training loss")]
    NoForwardState,
    /// A device backend failed (allocation, kernel launch, transfer).
    #[error("backend error: {0}")]
    Backend(String),
}

impl EngineError {
    /// Attaches the optimizer step to a [`EngineError::NonFinite`] that lacks one; other errors pass through.
    pub fn at_step(self, at: u64) -> Self {
        match self {
            Self::NonFinite {
                source_kind,
                value,
                step: None,
            } => Self::NonFinite {
                source_kind,
                value,
                step: Some(at),
            },
            other => other,
        }
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// Returns a shape error unless `ok`.
#[inline]
pub(crate) fn ensure(ok: bool, op: &'static str, detail: impl FnOnce() -> String) -> EngineResult<()> {
    if ok {
        Ok(())
    } else {
        Err(EngineError::Shape { op, detail: detail() })
    }
}
