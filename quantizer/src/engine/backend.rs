//! The device interface of the engine: tensor storage plus the kernels the layers are made of.
//!
//! Modelled on llm.c: instead of a general tensor library, a backend provides exactly the fused kernels one
//! transformer training step needs (GEMM, RMSNorm, RoPE, attention, gated activations, fake quantization,
//! losses, AdamW), each a forward/backward pair where the layer needs one. Buffers are flat, row-major and
//! opaque (`Vec<T>` on the CPU, a device allocation on CUDA); shapes travel as explicit arguments and each
//! backend validates them against the buffer lengths, so a shape bug surfaces as [`EngineError::Shape`] instead
//! of memory corruption. Every operation returns a `Result` because device backends can fail at any call.
//!
//! Conventions shared by all kernels:
//! * matrices are row-major; activations are `[rows = batch·seq, cols]`, token `r` of sequence `r / seq_len`
//!   sits at position `r % seq_len`;
//! * linear weights are `[out_features, in_features]` and `y = x·Wᵀ` (the importer's convention);
//! * "backward" kernels write or accumulate input gradients as their [`WriteMode`] says and always *accumulate*
//!   parameter gradients (so gradient accumulation over micro-batches is free);
//! * reductions are deterministic: results do not depend on thread count or scheduling, which resuming a run
//!   bit-for-bit relies on.
//!
//! [`EngineError::Shape`]: super::EngineError::Shape

use tern_format::RopeStyle;

use super::error::EngineResult;
use super::quant::{LinearPrecision, SoftState};
use super::scalar::Float;

/// Target id that contributes neither loss nor gradient (padding, document boundaries).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Whether a kernel overwrites its output or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    Overwrite,
    Accumulate,
}

/// `out[m, n] (+)= op(a)[m, k] · op(b)[k, n]`, where `op(a) = aᵀ` if `a_transposed` (then `a` is stored
/// `[k, m]`) and likewise for `b` (stored `[n, k]` when transposed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_transposed: bool,
    pub b_transposed: bool,
    pub mode: WriteMode,
}

/// The gate nonlinearity of a gated MLP: `out = act(gate) ⊙ up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatedActivation {
    /// `silu(g) = g·σ(g)` (Llama's SwiGLU).
    Silu,
    /// `relu(g)²` (BitNet b1.58's gated squared ReLU).
    ReluSquared,
}

/// Rotate (forward) or rotate back (inverse = transpose, which is RoPE's backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeDirection {
    Forward,
    Inverse,
}

/// Layout of a RoPE application: rows of `n_heads · head_dim`, positions `row % seq_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    pub seq_len: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub style: RopeStyle,
}

/// Shapes of grouped-query causal self-attention. `q`/`out` are `[batch·seq, n_heads·head_dim]`,
/// `k`/`v` are `[batch·seq, n_kv_heads·head_dim]`, query head `h` reads KV head `h / (n_heads / n_kv_heads)`,
/// and the CPU's saved probabilities are `[batch, n_heads, seq, seq]` (zero above the diagonal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub seq_len: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    pub fn rows(&self) -> usize {
        self.batch * self.seq_len
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Elements of the saved attention probabilities (and of the backward scratch).
    pub fn probs_len(&self) -> usize {
        self.batch * self.n_heads * self.seq_len * self.seq_len
    }
}

/// Gradient output of a loss kernel: `dlogits (+)= scale · ∂(Σ_rows loss_row)/∂logits`.
pub struct LossGrad<'a, Buf> {
    pub dlogits: &'a mut Buf,
    pub scale: f64,
    pub mode: WriteMode,
}

/// One AdamW update (PyTorch semantics, decoupled weight decay):
/// `g = grad·grad_scale; p -= lr·wd·p; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
/// p -= lr · (m / bias_correction1) / (sqrt(v / bias_correction2) + eps)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// `1 - β1^t` for step `t` (1-based).
    pub bias_correction1: f64,
    /// `1 - β2^t`.
    pub bias_correction2: f64,
    /// Multiplies the gradient first: the global-norm clipping factor.
    pub grad_scale: f64,
}

/// Storage and kernels for one device. See the module documentation for the conventions.
pub trait Backend: Send + Sync {
    /// Element type of every buffer (the CUDA backend will be `f32`; the CPU backend is also built for `f64`
    /// to run the gradient checks).
    type Elem: Float;
    /// A flat device buffer.
    type Buf: Send + Sync;
    /// Token ids or targets on the device (`Vec<u32>` on the CPU): uploaded once per forward pass by the model,
    /// read by the embedding and cross-entropy kernels.
    type Ids: Send + Sync;

    /// Short name for logs (`"cpu"`, `"cuda"`).
    fn name(&self) -> &'static str;

    // ---- storage ----------------------------------------------------------------------------------------
    /// A zero-filled buffer of `len` elements.
    fn alloc(&self, len: usize) -> EngineResult<Self::Buf>;
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    fn upload(&self, data: &[Self::Elem]) -> EngineResult<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> EngineResult<Vec<Self::Elem>>;
    /// Overwrites `dst` (same length) with host data.
    fn write(&self, dst: &mut Self::Buf, data: &[Self::Elem]) -> EngineResult<()>;
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) -> EngineResult<()>;
    /// Token ids (or targets, which may hold [`IGNORE_INDEX`]) to the device.
    fn upload_ids(&self, ids: &[u32]) -> EngineResult<Self::Ids>;
    /// Replaces the ids held by `dst` (any length).
    fn write_ids(&self, dst: &mut Self::Ids, ids: &[u32]) -> EngineResult<()>;
    fn ids_len(&self, ids: &Self::Ids) -> usize;
    fn fill(&self, buf: &mut Self::Buf, value: Self::Elem) -> EngineResult<()>;
    /// Waits for queued work (a no-op on the CPU); for timing.
    fn synchronize(&self) -> EngineResult<()> {
        Ok(())
    }

    // ---- reductions and GEMM ----------------------------------------------------------------------------
    /// `Σ x²` accumulated in f64; NaN/Inf propagate, so this doubles as the non-finite check.
    fn sum_squares(&self, buf: &Self::Buf) -> EngineResult<f64>;
    /// `Σ_i Σ x_i²` over several buffers: each buffer's [`Backend::sum_squares`], added in order starting from
    /// 0. A device backend overrides it to reduce everything on the device and synchronise once (the global
    /// gradient norm of a training step).
    fn sum_squares_all(&self, bufs: &[&Self::Buf]) -> EngineResult<f64> {
        let mut sum = 0.0;
        for b in bufs {
            sum += self.sum_squares(b)?;
        }
        Ok(sum)
    }
    /// `Σ a·b` accumulated in f64 (deterministic).
    fn dot(&self, a: &Self::Buf, b: &Self::Buf) -> EngineResult<f64>;
    /// `y += alpha·x`.
    fn axpy(&self, y: &mut Self::Buf, alpha: f64, x: &Self::Buf) -> EngineResult<()>;
    fn matmul(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, spec: GemmSpec) -> EngineResult<()>;

    // ---- quantization (see [`super::quant`]) ------------------------------------------------------------
    /// BitNet b1.58 absmean ternary per run of `group_len` weights: `a = max(mean|w|, 1e-5)`,
    /// `out = clamp(round(w/a), -1, 1)·a`. Its backward is the straight-through identity.
    fn quantize_ternary_hard(&self, out: &mut Self::Buf, w: &Self::Buf, group_len: usize) -> EngineResult<()>;
    /// Hestia's soft ternary per run of `group_len` weights: `out = (1 − λ)·w + λ·a·σ_T(w/a)`.
    fn quantize_ternary_soft(
        &self,
        out: &mut Self::Buf,
        w: &Self::Buf,
        group_len: usize,
        state: SoftState,
    ) -> EngineResult<()>;
    /// In place: `grad` holds `∂L/∂Ŵ` of [`Backend::quantize_ternary_soft`] on entry, `∂L/∂w` on exit (through the
    /// scale too).
    fn quantize_ternary_soft_backward(
        &self,
        grad: &mut Self::Buf,
        w: &Self::Buf,
        group_len: usize,
        state: SoftState,
    ) -> EngineResult<()>;
    /// An integer weight precision (int8 per row, int4 per group of a row), row by row over rows of `cols`:
    /// `out` = the values the `.tern` format stores (straight-through in the backward).
    fn quantize_weight_integer(
        &self,
        out: &mut Self::Buf,
        w: &Self::Buf,
        cols: usize,
        precision: LinearPrecision,
    ) -> EngineResult<()>;
    /// Per-row absmax int8: `s = 127 / max(max|x_row|, 1e-5)`, `out = clamp(round(x·s), -128, 127) / s`
    /// (straight-through in the backward).
    fn fake_quantize_int8_rows(&self, out: &mut Self::Buf, x: &Self::Buf, cols: usize) -> EngineResult<()>;

    // ---- layers ----------------------------------------------------------------------------------------------
    /// `out[r, :] = table[tokens[r], :]`; `table` is `[vocab, dim]`.
    fn embedding_forward(
        &self,
        out: &mut Self::Buf,
        table: &Self::Buf,
        tokens: &Self::Ids,
        dim: usize,
    ) -> EngineResult<()>;
    /// `dtable[tokens[r], :] += dout[r, :]`.
    fn embedding_backward(
        &self,
        dtable: &mut Self::Buf,
        dout: &Self::Buf,
        tokens: &Self::Ids,
        dim: usize,
    ) -> EngineResult<()>;
    /// `out = x · rstd · weight` per row, `rstd = 1/sqrt(mean(x²) + eps)` saved per row; `cols = len(weight)`.
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        eps: f64,
    ) -> EngineResult<()>;
    /// Writes/accumulates `dx` per `dx_mode`; accumulates `dweight`.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dweight: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        rstd: &Self::Buf,
        dx_mode: WriteMode,
    ) -> EngineResult<()>;
    /// Rotates `x` in place with the `[seq_len, head_dim/2, (cos, sin)]` table (see [`super::layers::rope`]).
    fn rope(&self, x: &mut Self::Buf, table: &Self::Buf, dims: RopeDims, direction: RopeDirection) -> EngineResult<()>;
    /// Elements of the `probs` buffer [`Backend::attention_forward`] saves for the backward: the probabilities
    /// ([`AttentionDims::probs_len`]) on the CPU, one log-sum-exp per score row on CUDA (flash attention).
    fn attention_saved_len(&self, dims: &AttentionDims) -> usize {
        dims.probs_len()
    }
    /// Elements of the `scratch` buffer of [`Backend::attention_backward`].
    fn attention_scratch_len(&self, dims: &AttentionDims) -> usize {
        dims.probs_len()
    }
    /// Causal softmax attention with scale `1/sqrt(head_dim)`; saves what the backward needs in `probs`
    /// ([`Backend::attention_saved_len`] elements).
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        probs: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        dims: AttentionDims,
    ) -> EngineResult<()>;
    /// Overwrites `dq`, `dk`, `dv`; `scratch` has [`Backend::attention_scratch_len`] elements; `out` is the
    /// forward's output.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        scratch: &mut Self::Buf,
        dout: &Self::Buf,
        out: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        probs: &Self::Buf,
        dims: AttentionDims,
    ) -> EngineResult<()>;
    /// `out = act(gate) ⊙ up`.
    fn gated_forward(
        &self,
        out: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        act: GatedActivation,
    ) -> EngineResult<()>;
    /// Overwrites `dgate` and `dup`.
    fn gated_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        act: GatedActivation,
    ) -> EngineResult<()>;
    /// Per-row `loss = logsumexp(z) - z[target]` (0 for [`IGNORE_INDEX`]); optional gradient.
    fn cross_entropy(
        &self,
        losses: &mut Self::Buf,
        grad: Option<LossGrad<'_, Self::Buf>>,
        logits: &Self::Buf,
        targets: &Self::Ids,
        vocab: usize,
    ) -> EngineResult<()>;
    /// Per-row `loss = T² · KL(softmax(teacher/T) ‖ softmax(logits/T))`; optional gradient w.r.t. `logits`.
    #[allow(clippy::too_many_arguments)]
    fn kl_divergence(
        &self,
        losses: &mut Self::Buf,
        grad: Option<LossGrad<'_, Self::Buf>>,
        logits: &Self::Buf,
        teacher_logits: &Self::Buf,
        vocab: usize,
        temperature: f64,
    ) -> EngineResult<()>;

    /// Per-row `loss = Σ_c (out − target)² / d` with `d = cols`, or `d = Σ_c target²` when `normalize`
    /// (block-wise distillation); optional gradient w.r.t. `out`.
    #[allow(clippy::too_many_arguments)]
    fn mse_loss(
        &self,
        losses: &mut Self::Buf,
        grad: Option<LossGrad<'_, Self::Buf>>,
        out: &Self::Buf,
        target: &Self::Buf,
        cols: usize,
        normalize: bool,
    ) -> EngineResult<()>;

    // ---- optimizer -------------------------------------------------------------------------------------------
    fn adamw_update(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: &AdamWParams,
    ) -> EngineResult<()>;
}
