//! Element types and scale granularities, and the byte sizes they imply.
//!
//! A tensor of shape `[.., rows, cols]` is stored row-major; `cols` (the input dimension of a linear layer,
//! ggml's `ne0`) is contiguous. All size arithmetic is checked: a file claiming absurd shapes yields
//! `FormatError::SizeOverflow`, never a wrapped length.

use crate::blocks::{BlockTernary2, BlockTernary3, TERNARY_BLOCK_WEIGHTS};
use crate::error::FormatError;

/// On-disk element type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ElementType {
    F32 = 0,
    F16 = 1,
    /// Ternary weights, 2 bits each, blocks of 64 weights in 16 bytes (see `blocks`). Needs a scale.
    Ternary2 = 2,
    /// Ternary weights, base 3: 5 trits per byte, blocks of 64 weights in 13 bytes. Needs a scale.
    Ternary3 = 3,
    /// int8 with one f32 scale per row (`ScaleKind::PerRow`).
    Int8 = 4,
    /// int4 (two per byte, low nibble first, stored as q + 8) with one f32 scale per group of G.
    Int4 = 5,
}

impl ElementType {
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Ternary2,
            3 => Self::Ternary3,
            4 => Self::Int8,
            5 => Self::Int4,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Ternary2 => "ternary-2bit",
            Self::Ternary3 => "ternary-base3",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        }
    }
    pub fn is_ternary(self) -> bool {
        matches!(self, Self::Ternary2 | Self::Ternary3)
    }

    /// Bytes of one stored row of `cols` elements (rows are padded as the type requires).
    pub fn row_bytes(self, cols: u64) -> Result<u64, FormatError> {
        let blocks = cols.div_ceil(TERNARY_BLOCK_WEIGHTS as u64);
        let v = match self {
            Self::F32 => cols.checked_mul(4),
            Self::F16 => cols.checked_mul(2),
            Self::Ternary2 => blocks.checked_mul(core::mem::size_of::<BlockTernary2>() as u64),
            Self::Ternary3 => blocks.checked_mul(core::mem::size_of::<BlockTernary3>() as u64),
            Self::Int8 => Some(cols),
            Self::Int4 => Some(cols.div_ceil(2)),
        };
        v.ok_or(FormatError::SizeOverflow)
    }

    /// Which scale granularities this type accepts.
    pub fn accepts(self, scale: ScaleKind) -> bool {
        match self {
            Self::F32 | Self::F16 => scale == ScaleKind::None,
            Self::Ternary2 | Self::Ternary3 => !matches!(scale, ScaleKind::None),
            Self::Int8 => scale == ScaleKind::PerRow,
            Self::Int4 => matches!(scale, ScaleKind::PerGroup(_)),
        }
    }
}

/// How many f32 scales a quantized tensor carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleKind {
    /// Unscaled (f32, f16).
    None,
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per output row.
    PerRow,
    /// One scale per group of G consecutive weights within a row; G is a positive multiple of 32.
    PerGroup(u32),
}

impl ScaleKind {
    /// On-disk `(kind, group)`; only the writer (feature `alloc`) encodes.
    #[cfg(feature = "alloc")]
    pub(crate) fn code(self) -> (u32, u32) {
        match self {
            Self::None => (0, 0),
            Self::PerTensor => (1, 0),
            Self::PerRow => (2, 0),
            Self::PerGroup(g) => (3, g),
        }
    }
    pub(crate) fn from_code(kind: u32, group: u32) -> Result<Self, FormatError> {
        match (kind, group) {
            (0, 0) => Ok(Self::None),
            (1, 0) => Ok(Self::PerTensor),
            (2, 0) => Ok(Self::PerRow),
            (3, g) if g > 0 && g % 32 == 0 => Ok(Self::PerGroup(g)),
            (3, _) => Err(FormatError::BadGroupSize(group)),
            _ => Err(FormatError::UnknownScaleKind(kind)),
        }
    }

    /// Number of scales for a tensor of `rows` x `cols`.
    pub fn count(self, rows: u64, cols: u64) -> Result<u64, FormatError> {
        match self {
            Self::None => Ok(0),
            Self::PerTensor => Ok(1),
            Self::PerRow => Ok(rows),
            Self::PerGroup(g) => rows
                .checked_mul(cols.div_ceil(g as u64))
                .ok_or(FormatError::SizeOverflow),
        }
    }
}

/// Shape of a tensor: up to 4 dimensions, innermost (contiguous) last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [u64; 4],
    ndim: u8,
}

pub const MAX_DIMS: usize = 4;

impl Shape {
    /// Fails on zero dimensions, more than 4 dimensions or a zero-sized dimension.
    pub fn new(dims: &[u64]) -> Result<Self, FormatError> {
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(FormatError::BadShape);
        }
        let mut d = [0u64; 4];
        d[..dims.len()].copy_from_slice(dims);
        let s = Self {
            dims: d,
            ndim: dims.len() as u8,
        };
        s.numel()?;
        Ok(s)
    }
    pub fn dims(&self) -> &[u64] {
        &self.dims[..self.ndim as usize]
    }
    /// Innermost dimension (elements per row).
    pub fn cols(&self) -> u64 {
        self.dims[self.ndim as usize - 1]
    }
    /// Product of all but the innermost dimension.
    pub fn rows(&self) -> u64 {
        // Cannot overflow: `new` checked the full product.
        self.dims[..self.ndim as usize - 1].iter().product()
    }
    pub fn numel(&self) -> Result<u64, FormatError> {
        self.dims()
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or(FormatError::SizeOverflow)
    }
}

/// Byte lengths of the data and scale regions of a tensor with this type, granularity and shape.
pub fn tensor_bytes(dtype: ElementType, scale: ScaleKind, shape: &Shape) -> Result<(u64, u64), FormatError> {
    if !dtype.accepts(scale) {
        return Err(FormatError::ScaleMismatch);
    }
    let data = dtype
        .row_bytes(shape.cols())?
        .checked_mul(shape.rows())
        .ok_or(FormatError::SizeOverflow)?;
    let scales = scale
        .count(shape.rows(), shape.cols())?
        .checked_mul(4)
        .ok_or(FormatError::SizeOverflow)?;
    Ok((data, scales))
}
