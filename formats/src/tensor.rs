//! Tensor directory entries: what each tensor is and where its bytes are.

use crate::dtype::{ElementType, ScaleKind, Shape};
use crate::error::FormatError;
use crate::layout::{NO_LAYER, TENSOR_ENTRY_BYTES};
use crate::le::Reader;

/// What a tensor does in the network. Codes are on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Role {
    Other = 0,
    TokenEmbedding = 1,
    Output = 2,
    OutputNorm = 3,
    AttnNorm = 10,
    AttnQ = 11,
    AttnK = 12,
    AttnV = 13,
    AttnOutput = 14,
    /// BitNet b1.58: RMSNorm before the attention output projection.
    AttnSubNorm = 15,
    FfnNorm = 20,
    FfnGate = 21,
    FfnUp = 22,
    FfnDown = 23,
    /// BitNet b1.58: RMSNorm before the down projection.
    FfnSubNorm = 24,
}

impl Role {
    /// Roles of the tensors inside a block, in forward order (sub-norms only exist in BitNet b1.58).
    pub const PER_LAYER: [Role; 11] = [
        Role::AttnNorm,
        Role::AttnQ,
        Role::AttnK,
        Role::AttnV,
        Role::AttnOutput,
        Role::AttnSubNorm,
        Role::FfnNorm,
        Role::FfnGate,
        Role::FfnUp,
        Role::FfnDown,
        Role::FfnSubNorm,
    ];
    /// Roles of the tensors outside the blocks.
    pub const GLOBAL: [Role; 3] = [Role::TokenEmbedding, Role::Output, Role::OutputNorm];

    pub fn from_code(code: u32) -> Option<Self> {
        use Role::*;
        Some(match code {
            0 => Other,
            1 => TokenEmbedding,
            2 => Output,
            3 => OutputNorm,
            10 => AttnNorm,
            11 => AttnQ,
            12 => AttnK,
            13 => AttnV,
            14 => AttnOutput,
            15 => AttnSubNorm,
            20 => FfnNorm,
            21 => FfnGate,
            22 => FfnUp,
            23 => FfnDown,
            24 => FfnSubNorm,
            _ => return None,
        })
    }
    /// Conventional (GGUF-compatible) tensor name suffix.
    pub fn gguf_name(self) -> &'static str {
        use Role::*;
        match self {
            Other => "other",
            TokenEmbedding => "token_embd",
            Output => "output",
            OutputNorm => "output_norm",
            AttnNorm => "attn_norm",
            AttnQ => "attn_q",
            AttnK => "attn_k",
            AttnV => "attn_v",
            AttnOutput => "attn_output",
            AttnSubNorm => "attn_sub_norm",
            FfnNorm => "ffn_norm",
            FfnGate => "ffn_gate",
            FfnUp => "ffn_up",
            FfnDown => "ffn_down",
            FfnSubNorm => "ffn_sub_norm",
        }
    }
    /// Whether tensors of this role belong to a block (have a layer index).
    pub fn is_per_layer(self) -> bool {
        !matches!(
            self,
            Role::Other | Role::TokenEmbedding | Role::Output | Role::OutputNorm
        )
    }
}

/// A tensor's directory entry, decoded and validated, with borrowed views of its bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub index: u32,
    pub name: &'a str,
    pub role: Role,
    pub layer: Option<u32>,
    pub dtype: ElementType,
    pub scale: ScaleKind,
    pub shape: Shape,
    /// Packed elements, row-major, `dtype.row_bytes(cols)` per row.
    pub data: &'a [u8],
    /// f32 scales (empty for unscaled types); per-group scales are row-major `[rows][ceil(cols / G)]`.
    pub scales: &'a [f32],
    pub(crate) data_offset: u64,
    pub(crate) crc32: u32,
}

impl<'a> TensorView<'a> {
    /// Byte offset of the data region in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    pub fn checksum(&self) -> u32 {
        self.crc32
    }
    /// Stored bytes (data + scales).
    pub fn stored_bytes(&self) -> u64 {
        self.data.len() as u64 + 4 * self.scales.len() as u64
    }
    /// Bytes of one packed row.
    pub fn row_bytes(&self) -> usize {
        // Validated at parse time, so this cannot fail for a view obtained from `ModelView`.
        self.dtype.row_bytes(self.shape.cols()).unwrap_or(0) as usize
    }
}

/// Raw fields of a directory entry before the bytes are resolved.
pub(crate) struct RawEntry {
    pub name_offset: u32,
    pub name_len: u32,
    pub role: Role,
    pub layer: Option<u32>,
    pub dtype: ElementType,
    pub shape: Shape,
    pub scale: ScaleKind,
    pub data_offset: u64,
    pub data_len: u64,
    pub scales_offset: u64,
    pub scales_len: u64,
    pub crc32: u32,
}

impl RawEntry {
    pub(crate) fn decode(bytes: &[u8], index: u32) -> Result<Self, FormatError> {
        let bad = |what| FormatError::BadTensor { index, what };
        if bytes.len() != TENSOR_ENTRY_BYTES {
            return Err(bad("directory entry has the wrong size"));
        }
        let mut r = Reader::new(bytes);
        let name_offset = r.u32()?;
        let name_len = r.u32()?;
        let role_code = r.u32()?;
        let role = Role::from_code(role_code).ok_or(FormatError::UnknownRole(role_code))?;
        let layer = match r.u32()? {
            NO_LAYER => None,
            l => Some(l),
        };
        let dtype_code = r.u32()?;
        let dtype = ElementType::from_code(dtype_code).ok_or(FormatError::UnknownElementType(dtype_code))?;
        let ndim = r.u32()?;
        let mut dims = [0u64; 4];
        for d in &mut dims {
            *d = r.u64()?;
        }
        if !(1..=4).contains(&ndim) {
            return Err(bad("number of dimensions must be 1 to 4"));
        }
        if dims[ndim as usize..].iter().any(|&d| d != 0) {
            return Err(bad("unused dimensions must be zero"));
        }
        let shape = Shape::new(&dims[..ndim as usize]).map_err(|_| bad("shape has a zero dimension or overflows"))?;
        let scale_kind = r.u32()?;
        let group = r.u32()?;
        let scale = ScaleKind::from_code(scale_kind, group)?;
        let data_offset = r.u64()?;
        let data_len = r.u64()?;
        let scales_offset = r.u64()?;
        let scales_len = r.u64()?;
        let crc32 = r.u32()?;
        let reserved_a = r.u32()?;
        let reserved_b = r.u64()?;
        if reserved_a != 0 || reserved_b != 0 {
            return Err(bad("reserved fields must be zero"));
        }
        if role.is_per_layer() != layer.is_some() {
            return Err(bad("layer index present exactly when the role is per-block"));
        }
        Ok(Self {
            name_offset,
            name_len,
            role,
            layer,
            dtype,
            shape,
            scale,
            data_offset,
            data_len,
            scales_offset,
            scales_len,
            crc32,
        })
    }
}
