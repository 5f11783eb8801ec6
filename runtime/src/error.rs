//! Typed runtime errors. Every rejection of a model, an option or an input is one of these, never a panic.

use core::fmt;

use tern_format::{ElementType, FormatError, Role, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The file itself is malformed (see `tern_format::FormatError`).
    Format(FormatError),
    /// The file names an architecture this runtime does not implement.
    UnsupportedArchitecture(u32),
    /// A tensor the architecture needs is absent.
    MissingTensor { role: Role, layer: Option<u32> },
    /// A tensor is stored in an element type the runtime cannot use for its role.
    WrongDtype {
        role: Role,
        layer: Option<u32>,
        dtype: ElementType,
    },
    /// A tensor's shape disagrees with the configuration (`expected` is `[rows, cols]`; norms are `[1, n]`).
    WrongShape {
        role: Role,
        layer: Option<u32>,
        expected: [u64; 2],
        actual: Shape,
    },
    /// A tensor's bytes are not aligned for in-place use as its element type.
    Misaligned { role: Role, layer: Option<u32> },
    /// A matrix has more columns than `kernels::MAX_COLS` (its exact integer sums could overflow i32).
    MatrixTooWide {
        role: Role,
        layer: Option<u32>,
        cols: usize,
        max: usize,
    },
    /// More blocks than `model::MAX_LAYERS`.
    TooManyLayers { layers: u32, max: usize },
    /// The caller's arena is smaller than `required_arena_bytes` says.
    ArenaTooSmall { needed: usize, got: usize },
    /// Session options are inconsistent (zero context or batch, context past the model's, …).
    BadOptions(&'static str),
    /// A forward pass or prefill was given no tokens.
    EmptyInput,
    /// The tokens do not fit in the remaining context: `pos` already used, `requested` more, `max` in all.
    ContextFull { pos: usize, requested: usize, max: usize },
    /// One forward pass got more tokens than the session's `max_batch`.
    BatchTooLarge { len: usize, max: usize },
    /// A token id is outside the vocabulary.
    UnknownToken { token: u32, vocab: u32 },
    /// Logits were asked for (sampling, reading) before any forward pass produced them.
    NoLogits,
    /// Buffer sizes overflow `usize` on this target.
    SizeOverflow,
    /// An `OwnedModel`'s bytes no longer parse to the model it validated (a mapped file rewritten in place).
    ModelChanged,
    /// An `OwnedSession`'s arena storage now starts at another address (the carving depends on it).
    ArenaMoved,
    /// The `TERN_KERNELS` environment variable names a kernel table this CPU cannot run (or none at all).
    KernelsUnavailable,
}

impl From<FormatError> for RuntimeError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::UnknownArchitecture(code) => Self::UnsupportedArchitecture(code),
            other => Self::Format(other),
        }
    }
}

fn layer_suffix(f: &mut fmt::Formatter<'_>, layer: Option<u32>) -> fmt::Result {
    match layer {
        Some(l) => write!(f, " of block {l}"),
        None => Ok(()),
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RuntimeError::*;
        match self {
            Format(e) => write!(f, "{e}"),
            UnsupportedArchitecture(code) => write!(
                f,
                "unsupported architecture code {code} (this runtime implements llama and bitnet-b1.58)"
            ),
            MissingTensor { role, layer } => {
                write!(f, "missing tensor {}", role.gguf_name())?;
                layer_suffix(f, *layer)
            }
            WrongDtype { role, layer, dtype } => {
                write!(f, "tensor {}", role.gguf_name())?;
                layer_suffix(f, *layer)?;
                write!(f, " is stored as {}, which the runtime cannot use there", dtype.name())
            }
            WrongShape {
                role,
                layer,
                expected,
                actual,
            } => {
                write!(f, "tensor {}", role.gguf_name())?;
                layer_suffix(f, *layer)?;
                write!(
                    f,
                    " has shape {:?}, the config implies [{}, {}]",
                    actual.dims(),
                    expected[0],
                    expected[1]
                )
            }
            Misaligned { role, layer } => {
                write!(f, "tensor {}", role.gguf_name())?;
                layer_suffix(f, *layer)?;
                write!(f, " is not aligned for in-place use")
            }
            MatrixTooWide { role, layer, cols, max } => {
                write!(f, "tensor {}", role.gguf_name())?;
                layer_suffix(f, *layer)?;
                write!(f, " has {cols} columns; the kernels support at most {max}")
            }
            TooManyLayers { layers, max } => write!(f, "model has {layers} blocks; this build supports {max}"),
            ArenaTooSmall { needed, got } => write!(f, "arena too small: need {needed} bytes, got {got}"),
            BadOptions(what) => write!(f, "bad session options: {what}"),
            EmptyInput => write!(f, "empty input: at least one token is needed"),
            ContextFull { pos, requested, max } => write!(
                f,
                "context full: {pos} positions used + {requested} new tokens exceed the context of {max}"
            ),
            BatchTooLarge { len, max } => write!(f, "batch of {len} tokens exceeds max_batch {max}"),
            UnknownToken { token, vocab } => write!(f, "token id {token} is outside the vocabulary of {vocab}"),
            NoLogits => write!(f, "no logits yet: run a forward pass first"),
            SizeOverflow => write!(f, "buffer sizes overflow this target's address space"),
            ModelChanged => write!(f, "the model's bytes changed since they were validated"),
            ArenaMoved => write!(f, "the session's arena moved since the session was created"),
            KernelsUnavailable => write!(
                f,
                "TERN_KERNELS names a kernel table this CPU cannot run (`tern bench --kernels all` lists them)"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RuntimeError {}
