//! The session arena: every buffer a session uses, carved from one caller-provided byte slice.
//!
//! `plan` lists the regions for a config and options; `required_arena_bytes` is their total, and
//! `Session::new` carves the same list out of the caller's slice, so the two can never disagree. Each region
//! starts on a 64-byte boundary (found by offset from the slice's address; the casts are bytemuck's checked
//! ones), so one extra 64 bytes absorb any misalignment of the caller's slice.
//!
//! With `B = max_batch`, `C = max_context`, `H = hidden`, `Q = q_dim`, `K = kv_dim`, `F = ffn`, `V = vocab`,
//! `L = layers`, `nh = heads`, `hd = head dim`, `W = max(H, Q, F)`, `P = round_up(W, 64)`, `e` = bytes per KV
//! element (2 for f16, 4 for f32), and every term rounded up to 64 bytes:
//!
//! ```text
//! f32 activations   4·B·(2H + 2Q + 2K + H + 2F)      x, xb, q, att, k, v, proj, gate, up
//! int8 activations  B·P + 4·B·P/32 + 8·B           quantized rows, chunk sums, (d, Σq)
//! RoPE              8·hd/2 + 4·B·hd                  inverse frequencies (f64), cos/sin per batch position
//! attention scores  4·nh·C
//! KV cache          2·L·C·K·e
//! logits            4·B·V
//! thread scratch    4·B·W                            per-thread output columns before they are scattered
//! token history     4·C
//! sampling          8·V                              candidate logits and ids
//! + 64                                               alignment slack
//! ```

use half::f16;
use tern_format::ModelConfig;

use crate::error::RuntimeError;
use crate::kernels::{round_up, ActQuant, BLOCK, CHUNK};

/// Element type of the KV cache.
///
/// Default f16, chosen for memory: the KV cache is the buffer that grows with the context, and f16 halves it
/// (SmolLM2 at 8192 positions: 189 MB instead of 377 MB). Measured on SmolLM2 with f16 weights over 512
/// tokens, the f16 cache moves the logits by at most 1.6e-3 of their largest value, never changes the top
/// token and changes the mean NLL by 1e-4. Its cost today is speed with the scalar kernels: converting in
/// software makes decoding at ~1000 positions ~25% slower than f32 (attention is compute-bound there);
/// hardware conversion in the SIMD kernels removes that. Numbers and method: runtime/README.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvPrecision {
    #[default]
    F16,
    /// Twice the memory; faster than f16 with the scalar kernels.
    F32,
}

impl KvPrecision {
    pub fn bytes(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

/// What a session is sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// Positions the KV cache holds (≤ the model's context length).
    pub max_context: usize,
    /// Tokens per forward pass (prefill runs in batches of this many).
    pub max_batch: usize,
    pub kv: KvPrecision,
    /// Worker threads for matrix products and attention (1 = the calling thread only; without the `std`
    /// feature work always runs on the calling thread).
    pub threads: usize,
}

impl SessionOptions {
    pub fn new(max_context: usize, max_batch: usize) -> Self {
        Self {
            max_context,
            max_batch,
            kv: KvPrecision::default(),
            threads: 1,
        }
    }
    pub fn with_kv(mut self, kv: KvPrecision) -> Self {
        self.kv = kv;
        self
    }
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Arena bytes a session with these options needs for a model with this config.
    pub fn arena_bytes(&self, config: &ModelConfig) -> Result<usize, RuntimeError> {
        Ok(plan(config, self)?.total())
    }
}

/// Arena bytes for a session of `max_context` positions and `max_batch` tokens per pass (default KV
/// precision). Errors on zero sizes, a context longer than the model's, or sizes that overflow `usize`.
pub fn required_arena_bytes(config: &ModelConfig, max_context: usize, max_batch: usize) -> Result<usize, RuntimeError> {
    SessionOptions::new(max_context, max_batch).arena_bytes(config)
}

/// Element counts of every region, in carving order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub batch: usize,
    pub context: usize,
    pub hidden: usize,
    pub q_dim: usize,
    pub kv_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Row stride of the int8 activation buffer.
    pub q_stride: usize,
    /// Largest output width of a block matrix or attention (thread scratch columns).
    pub wide: usize,
    pub kv: KvPrecision,
}

const ALIGN: usize = 64;

fn mul(a: usize, b: usize) -> Result<usize, RuntimeError> {
    a.checked_mul(b).ok_or(RuntimeError::SizeOverflow)
}

impl Plan {
    /// Bytes of each region (before alignment), in carving order.
    fn regions(&self) -> Result<[usize; 22], RuntimeError> {
        let b = self.batch;
        let f = |n: usize| mul(mul(b, n)?, 4);
        let kv_elems = mul(mul(mul(self.layers, self.context)?, self.kv_dim)?, self.kv.bytes())?;
        Ok([
            f(self.hidden)?,                           // x
            f(self.hidden)?,                           // xb
            f(self.q_dim)?,                            // q
            f(self.q_dim)?,                            // att
            f(self.kv_dim)?,                           // k
            f(self.kv_dim)?,                           // v
            f(self.hidden)?,                           // proj
            f(self.ffn)?,                              // gate
            f(self.ffn)?,                              // up
            mul(b, self.q_stride)?,                    // xq
            mul(mul(b, self.q_stride / CHUNK)?, 4)?,   // chunk sums
            mul(b, core::mem::size_of::<ActQuant>())?, // (d, Σq)
            mul(self.head_dim / 2, 8)?,                // inv_freq (f64)
            mul(mul(b, self.head_dim)?, 4)?,           // cos/sin
            mul(mul(self.heads, self.context)?, 4)?,   // scores
            kv_elems,                                  // K cache
            kv_elems,                                  // V cache
            f(self.vocab)?,                            // logits
            f(self.wide)?,                             // thread scratch
            mul(self.context, 4)?,                     // token history
            mul(self.vocab, 4)?,                       // sampling logits
            mul(self.vocab, 4)?,                       // sampling ids
        ])
    }

    pub fn total(&self) -> usize {
        // `plan` already checked that this sum fits.
        self.checked_total().unwrap_or(usize::MAX)
    }

    fn checked_total(&self) -> Result<usize, RuntimeError> {
        let mut total = ALIGN;
        for r in self.regions()? {
            let r = r.checked_add(ALIGN - 1).ok_or(RuntimeError::SizeOverflow)? / ALIGN * ALIGN;
            total = total.checked_add(r).ok_or(RuntimeError::SizeOverflow)?;
        }
        Ok(total)
    }
}

pub(crate) fn plan(config: &ModelConfig, opts: &SessionOptions) -> Result<Plan, RuntimeError> {
    config.validate()?;
    if opts.max_context == 0 || opts.max_batch == 0 {
        return Err(RuntimeError::BadOptions("max_context and max_batch must be at least 1"));
    }
    if opts.max_context > config.context_length as usize {
        return Err(RuntimeError::BadOptions(
            "max_context exceeds the model's context length",
        ));
    }
    if opts.threads == 0 {
        return Err(RuntimeError::BadOptions("threads must be at least 1"));
    }
    let hidden = config.hidden_size as usize;
    let q_dim = config.q_dim();
    let ffn = config.ffn_size as usize;
    let widest_input = hidden.max(q_dim).max(ffn);
    let p = Plan {
        batch: opts.max_batch,
        context: opts.max_context,
        hidden,
        q_dim,
        kv_dim: config.kv_dim(),
        ffn,
        vocab: config.vocab_size as usize,
        layers: config.n_layers as usize,
        heads: config.n_heads as usize,
        head_dim: config.head_dim as usize,
        q_stride: round_up(widest_input, BLOCK),
        wide: widest_input,
        kv: opts.kv,
    };
    p.checked_total()?;
    Ok(p)
}

/// Hands out aligned, typed, disjoint regions of one byte slice.
pub(crate) struct Carver<'s> {
    rest: &'s mut [u8],
}

impl<'s> Carver<'s> {
    pub fn new(bytes: &'s mut [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next region of `n` elements of `T`, starting 64-byte aligned. Not cleared: every buffer is written
    /// before it is read, and leaving the bytes alone lets the pages of a large, still unused KV cache stay
    /// untouched (a zeroed `Vec` is mapped lazily).
    pub fn take<T: bytemuck::Pod>(&mut self, n: usize) -> Result<&'s mut [T], RuntimeError> {
        let bytes = mul(n, core::mem::size_of::<T>())?;
        let rest = core::mem::take(&mut self.rest);
        let have = rest.len();
        let pad = (ALIGN - rest.as_ptr() as usize % ALIGN) % ALIGN;
        let padded = bytes.checked_add(ALIGN - 1).ok_or(RuntimeError::SizeOverflow)? / ALIGN * ALIGN;
        let end = pad.checked_add(padded).ok_or(RuntimeError::SizeOverflow)?;
        if end > have {
            return Err(RuntimeError::ArenaTooSmall { needed: end, got: have });
        }
        let (head, tail) = rest.split_at_mut(end);
        self.rest = tail;
        bytemuck::try_cast_slice_mut(&mut head[pad..pad + bytes]).map_err(|_| RuntimeError::SizeOverflow)
    }
}

/// The KV cache, in the precision the options chose.
pub(crate) enum KvCache<'s> {
    F16 { k: &'s mut [f16], v: &'s mut [f16] },
    F32 { k: &'s mut [f32], v: &'s mut [f32] },
}
