//! Model hyper-parameters: everything inference needs to interpret the tensors.
//!
//! Stored in the CONFIG section as a fixed little-endian record (see FORMAT.md §4). Decoding validates every
//! field that later code divides by or indexes with, so a `ModelConfig` obtained from a file is internally
//! consistent (heads divide hidden sizes, KV heads divide heads, …).

use crate::error::FormatError;
use crate::le::Reader;
#[cfg(feature = "alloc")]
use crate::le::Writer;

/// Network architecture. Numbers are the on-disk codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Architecture {
    /// Llama: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP.
    Llama = 1,
    /// BitNet b1.58: Llama plus sub-norms before the attention output and down projections, and a gated
    /// squared-ReLU MLP (`relu(x·W_gate)² ⊙ x·W_up`).
    BitNetB158 = 2,
}

impl Architecture {
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Llama),
            2 => Some(Self::BitNetB158),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::BitNetB158 => "bitnet-b1.58",
        }
    }
}

/// RoPE frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama-3.1 style piecewise scaling of the inverse frequencies.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: u32,
    },
}

/// Which pairs of a head's dimensions RoPE rotates together.
///
/// GGUF's llama converter permutes Q/K rows so that adjacent pairs `(x[2i], x[2i+1])` rotate ("interleaved");
/// Hugging Face checkpoints rotate the halves `(x[i], x[i + d/2])` ("half"). Importers normalise to one of
/// these and record which, so the runtime never guesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RopeStyle {
    Interleaved = 0,
    Half = 1,
}

/// Token id sentinel for "no such token".
pub const NO_TOKEN: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub hidden_size: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub ffn_size: u32,
    pub vocab_size: u32,
    pub context_length: u32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    pub norm_eps: f32,
    /// Output head shares the token-embedding tensor.
    pub tied_embeddings: bool,
    pub bos_token: u32,
    pub eos_token: u32,
    pub pad_token: u32,
    /// Prepend BOS when encoding a prompt.
    pub add_bos: bool,
}

/// Size in bytes of the encoded CONFIG record (version 1).
pub const CONFIG_RECORD_BYTES: usize = 96;

impl ModelConfig {
    /// Width of the query projection output (`n_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_heads as usize * self.head_dim as usize
    }
    /// Width of the key/value projection outputs (`n_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads as usize * self.head_dim as usize
    }

    /// Checks the invariants that inference relies on.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |what: &'static str| Err(FormatError::BadConfig(what));
        if self.hidden_size == 0 || self.n_layers == 0 || self.n_heads == 0 || self.n_kv_heads == 0 {
            return bad("hidden size, layers, heads and KV heads must be non-zero");
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad("head dim must be even and non-zero (RoPE rotates pairs)");
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad("heads must be a multiple of KV heads");
        }
        if self.ffn_size == 0 || self.vocab_size == 0 || self.context_length == 0 {
            return bad("FFN size, vocab and context length must be non-zero");
        }
        // Keep every product used for buffer sizes comfortably inside usize/u32 arithmetic.
        const LIMIT: u32 = 1 << 24;
        for v in [
            self.hidden_size,
            self.n_layers,
            self.n_heads,
            self.head_dim,
            self.ffn_size,
            self.vocab_size,
            self.context_length,
        ] {
            if v > LIMIT {
                return bad("a hyper-parameter exceeds 2^24");
            }
        }
        if (self.n_heads as u64 * self.head_dim as u64) > LIMIT as u64 {
            return bad("heads x head dim exceeds 2^24");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("RoPE theta must be finite and positive");
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return bad("RMSNorm eps must be finite and non-negative");
        }
        if let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } = self.rope_scaling
        {
            let ok = factor.is_finite()
                && factor > 0.0
                && low_freq_factor.is_finite()
                && high_freq_factor.is_finite()
                && high_freq_factor > low_freq_factor
                && low_freq_factor > 0.0
                && original_context > 0;
            if !ok {
                return bad("Llama-3 RoPE scaling parameters are inconsistent");
            }
        }
        for t in [self.bos_token, self.eos_token, self.pad_token] {
            if t != NO_TOKEN && t >= self.vocab_size {
                return bad("a special token id is outside the vocabulary");
            }
        }
        Ok(())
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < CONFIG_RECORD_BYTES {
            return Err(FormatError::BadConfig(
                "CONFIG section shorter than the version-1 record",
            ));
        }
        let mut r = Reader::new(bytes);
        let arch_code = r.u32()?;
        let arch = Architecture::from_code(arch_code).ok_or(FormatError::UnknownArchitecture(arch_code))?;
        let hidden_size = r.u32()?;
        let n_layers = r.u32()?;
        let n_heads = r.u32()?;
        let n_kv_heads = r.u32()?;
        let head_dim = r.u32()?;
        let ffn_size = r.u32()?;
        let vocab_size = r.u32()?;
        let context_length = r.u32()?;
        let rope_theta = r.f32()?;
        let scaling_kind = r.u32()?;
        let factor = r.f32()?;
        let low_freq_factor = r.f32()?;
        let high_freq_factor = r.f32()?;
        let original_context = r.u32()?;
        let rope_style = match r.u32()? {
            0 => RopeStyle::Interleaved,
            1 => RopeStyle::Half,
            _ => return Err(FormatError::BadConfig("unknown RoPE style")),
        };
        let norm_eps = r.f32()?;
        let flags = r.u32()?;
        let bos_token = r.u32()?;
        let eos_token = r.u32()?;
        let pad_token = r.u32()?;
        let rope_scaling = match scaling_kind {
            0 => RopeScaling::None,
            1 => RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            },
            _ => return Err(FormatError::BadConfig("unknown RoPE scaling kind")),
        };
        if flags & !0b11 != 0 {
            return Err(FormatError::BadConfig("unknown config flag bits"));
        }
        let cfg = ModelConfig {
            arch,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size,
            vocab_size,
            context_length,
            rope_theta,
            rope_scaling,
            rope_style,
            norm_eps,
            tied_embeddings: flags & 1 != 0,
            bos_token,
            eos_token,
            pad_token,
            add_bos: flags & 2 != 0,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        let (kind, f, lo, hi, orig) = match self.rope_scaling {
            RopeScaling::None => (0u32, 0.0f32, 0.0f32, 0.0f32, 0u32),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => (1, factor, low_freq_factor, high_freq_factor, original_context),
        };
        let start = w.len();
        w.u32(self.arch as u32);
        for v in [
            self.hidden_size,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.ffn_size,
            self.vocab_size,
            self.context_length,
        ] {
            w.u32(v);
        }
        w.f32(self.rope_theta);
        w.u32(kind);
        w.f32(f);
        w.f32(lo);
        w.f32(hi);
        w.u32(orig);
        w.u32(self.rope_style as u32);
        w.f32(self.norm_eps);
        w.u32(u32::from(self.tied_embeddings) | (u32::from(self.add_bos) << 1));
        w.u32(self.bos_token);
        w.u32(self.eos_token);
        w.u32(self.pad_token);
        // Reserved words up to the fixed record size: later versions append fields here.
        while w.len() - start < CONFIG_RECORD_BYTES {
            w.u32(0);
        }
    }
}
