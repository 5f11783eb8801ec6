//! Typed parse and write errors. Every rejection of a malformed file is one of these, never a panic.

use core::fmt;

use crate::layout::MAX_TENSORS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The first 8 bytes are not the .tern magic.
    BadMagic,
    UnsupportedVersion(u32),
    /// The file ends before a structure it declares.
    Truncated,
    /// The header's recorded file size differs from the byte count given.
    FileSizeMismatch {
        recorded: u64,
        actual: u64,
    },
    /// The bytes do not start at an address aligned for in-place f32 views (use mmap or `AlignedBytes`).
    Misaligned,
    /// This host is big-endian; tensors are little-endian and used in place.
    BigEndianHost,
    BadHeader(&'static str),
    HeaderChecksum,
    SectionOutOfBounds {
        kind: u32,
    },
    SectionOverlap {
        kind: u32,
    },
    DuplicateSection {
        kind: u32,
    },
    MissingSection {
        kind: u32,
    },
    SectionChecksum {
        kind: u32,
    },
    BadConfig(&'static str),
    UnknownArchitecture(u32),
    BadMetadata(&'static str),
    BadTokenizer(&'static str),
    /// Tensor directory entry `index` is malformed; the string says how.
    BadTensor {
        index: u32,
        what: &'static str,
    },
    TensorChecksum {
        index: u32,
    },
    DuplicateTensorName {
        index: u32,
    },
    TooManyTensors(u64),
    UnknownElementType(u32),
    UnknownScaleKind(u32),
    UnknownRole(u32),
    BadGroupSize(u32),
    BadShape,
    /// Element type and scale granularity do not go together (e.g. f32 with scales, int8 without per-row).
    ScaleMismatch,
    SizeOverflow,
    /// Writer: a count, length or offset does not fit the 32-bit field the format stores it in.
    FieldOverflow(&'static str),
    /// Writer: a tensor's layer is `NO_LAYER`, the sentinel that the parser reads as "no layer".
    ReservedLayer,
    /// Writer: a tensor's data or scale buffer length disagrees with its shape.
    LengthMismatch {
        expected: u64,
        actual: u64,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FormatError::*;
        match self {
            BadMagic => write!(f, "not a .tern model file (bad magic bytes)"),
            UnsupportedVersion(v) => write!(f, "unsupported .tern format version {v} (this build reads 1)"),
            Truncated => write!(f, "file is truncated"),
            FileSizeMismatch { recorded, actual } => write!(
                f,
                "file size mismatch: header records {recorded} bytes, file has {actual} (truncated or appended to)"
            ),
            Misaligned => write!(f, "model bytes are not 64-byte aligned in memory"),
            BigEndianHost => write!(f, "big-endian hosts are not supported"),
            BadHeader(w) => write!(f, "bad header: {w}"),
            HeaderChecksum => write!(f, "header checksum mismatch (file corrupt)"),
            SectionOutOfBounds { kind } => write!(f, "section {} lies outside the file", section_name(*kind)),
            SectionOverlap { kind } => write!(f, "section {} overlaps another section", section_name(*kind)),
            DuplicateSection { kind } => write!(f, "section {} appears twice", section_name(*kind)),
            MissingSection { kind } => write!(f, "required section {} is missing", section_name(*kind)),
            SectionChecksum { kind } => write!(f, "section {} checksum mismatch (file corrupt)", section_name(*kind)),
            BadConfig(w) => write!(f, "bad config: {w}"),
            UnknownArchitecture(a) => write!(f, "unsupported architecture code {a}"),
            BadMetadata(w) => write!(f, "bad metadata: {w}"),
            BadTokenizer(w) => write!(f, "bad tokenizer section: {w}"),
            BadTensor { index, what } => write!(f, "tensor #{index}: {what}"),
            TensorChecksum { index } => write!(f, "tensor #{index}: checksum mismatch (file corrupt)"),
            DuplicateTensorName { index } => write!(f, "tensor #{index}: name used twice"),
            TooManyTensors(n) => write!(f, "{n} tensors in the directory (limit {MAX_TENSORS})"),
            UnknownElementType(t) => write!(f, "unknown element type code {t}"),
            UnknownScaleKind(k) => write!(f, "unknown scale kind code {k}"),
            UnknownRole(r) => write!(f, "unknown tensor role code {r}"),
            BadGroupSize(g) => write!(f, "group size {g} is not a positive multiple of 32"),
            BadShape => write!(f, "shape must have 1 to 4 non-zero dimensions"),
            ScaleMismatch => write!(f, "element type does not accept this scale granularity"),
            SizeOverflow => write!(f, "tensor size overflows 64 bits"),
            FieldOverflow(what) => write!(f, "{what} does not fit its 32-bit field in the file"),
            ReservedLayer => write!(f, "layer index u32::MAX is reserved for \"no layer\""),
            LengthMismatch { expected, actual } => {
                write!(
                    f,
                    "buffer length {actual} does not match the {expected} the shape implies"
                )
            }
        }
    }
}

/// Human name of a section kind code.
pub fn section_name(kind: u32) -> &'static str {
    match kind {
        1 => "CONFIG",
        2 => "METADATA",
        3 => "TOKENIZER",
        4 => "CHAT_TEMPLATE",
        5 => "TENSORS",
        6 => "STRINGS",
        _ => "(unknown)",
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FormatError {}
