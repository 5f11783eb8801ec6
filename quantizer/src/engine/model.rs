//! The full transformer (Llama or BitNet b1.58) assembled from the layers, with its parameters, activation
//! storage, optional per-layer activation recomputation, and the training step.
//!
//! # Activation memory
//!
//! With `N = batch·seq` tokens, hidden `C`, query width `Dq = H·d`, KV width `Dkv = H_kv·d`, FFN `F`, vocabulary
//! `V`, `L` layers, and `β = 1` for BitNet (its sub-norms) else `0`, the engine holds, in elements:
//!
//! * layer inputs (the residual stream, always kept): `(L + 1)·N·C`;
//! * per layer whose activations are kept, `A = N·(3C + 2Dq + 2Dkv + 3F + 2) + B·H·T² + β·N·(Dq + F + 2)`
//!   (norm outputs, Q/K/V, attention output, mid residual, gate/up/product, rstd's, attention probabilities);
//!   layers that recompute share one such set, so `slots = L_kept + [any layer recomputes]` sets in total;
//! * head: `N·(C + 1)` final norm + `N·V` logits + `2N` per-row losses;
//! * int8 activation scratch (when activations are quantized): `N·Σ distinct {C, Dq, F}`;
//! * backward only: `N·V` logit gradients + `2N·C` + `N·(2Dq + 2Dkv) + B·H·T² + β·N·Dq` attention
//!   + `3N·F + β·N·F` MLP;
//! * the RoPE table: `T·d`.
//!
//! Parameters `P` add `4P` (weights, gradients, AdamW `m` and `v`) plus the fake-quantized copies of the linear
//! weights. For SmolLM2-135M (134.5M parameters: 2.0 GiB for weights, gradients and moments, 0.4 GiB ternary
//! copies) training W1.58/A8 at `T = 512` in f32: `B = 8` without recomputation needs 10.1 GiB in all (5.7 GiB of
//! it the 30 layers' kept activations, 0.8 GiB the logits), 4.6 GiB with every layer recomputed; `B = 16`
//! recomputed needs 6.8 GiB. See [`MemoryEstimate`] and the `engine_model` tests, which check this formula
//! against the buffers actually allocated and print these figures.

use tern_format::{Architecture, ModelConfig, RopeStyle};

use super::backend::{AttentionDims, Backend, GatedActivation, LossGrad, RopeDims, WriteMode, IGNORE_INDEX};
use super::error::{EngineError, EngineResult, NonFiniteSource};
use super::layers::attention::SelfAttention;
use super::layers::block::{BlockActivations, BlockScratch, TransformerBlock};
use super::layers::embedding::{check_tokens, Embedding};
use super::layers::linear::{Linear, OutputHead};
use super::layers::mlp::GatedMlp;
use super::layers::rmsnorm::RmsNorm;
use super::layers::rope::rope_table;
use super::layers::{quant_scratch_elements, ParamId, QuantScratch};
use super::optim::{AdamW, OptimStepReport};
use super::quant::state::QuantizedWeights;
use super::quant::{LinearPrecision, ScaleGroups, SoftState, WeightQuantizer};
use super::rng::SplitMix64;
use super::scalar::Float;

// ---- parameters -------------------------------------------------------------------------------------------

/// What a parameter tensor is, which decides quantization and weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Token embedding `[vocab, hidden]` (also the head when tied). Full precision.
    Embedding,
    /// RMSNorm weight `[1, dim]`. Full precision, no weight decay.
    Norm,
    /// Linear weight `[out, in]` of attention or MLP: ternary under QAT.
    Linear,
    /// Untied output head `[vocab, hidden]`. Full precision.
    Head,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// GGUF-style name (`blk.3.attn_q.weight`).
    pub name: String,
    /// `[rows, cols]`, row-major; linear weights are `[out, in]`.
    pub shape: [usize; 2],
    pub kind: ParamKind,
    pub layer: Option<usize>,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape[0] * self.shape[1]
    }
    /// AdamW decays matrices, not norm gains.
    pub fn decays(&self) -> bool {
        self.kind != ParamKind::Norm
    }
}

/// Parameter ids of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerParamIds {
    pub attn_norm: ParamId,
    pub q: ParamId,
    pub k: ParamId,
    pub v: ParamId,
    pub o: ParamId,
    pub attn_sub_norm: Option<ParamId>,
    pub ffn_norm: ParamId,
    pub gate: ParamId,
    pub up: ParamId,
    pub down: ParamId,
    pub ffn_sub_norm: Option<ParamId>,
}

/// The parameter tensors of a model, in a fixed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    pub embedding: ParamId,
    pub layers: Vec<LayerParamIds>,
    pub final_norm: ParamId,
    /// The output head: equal to `embedding` when embeddings are tied.
    pub head: ParamId,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        let (c, v, f) = (cfg.hidden_size as usize, cfg.vocab_size as usize, cfg.ffn_size as usize);
        let (dq, dkv) = (cfg.q_dim(), cfg.kv_dim());
        let bitnet = cfg.arch == Architecture::BitNetB158;
        let mut specs = Vec::new();
        let mut add = |name: String, shape: [usize; 2], kind: ParamKind, layer: Option<usize>| {
            specs.push(ParamSpec {
                name,
                shape,
                kind,
                layer,
            });
            ParamId(specs.len() - 1)
        };
        let embedding = add("token_embd.weight".into(), [v, c], ParamKind::Embedding, None);
        let mut layers = Vec::new();
        for l in 0..cfg.n_layers as usize {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            let attn_norm = add(n("attn_norm"), [1, c], ParamKind::Norm, Some(l));
            let q = add(n("attn_q"), [dq, c], ParamKind::Linear, Some(l));
            let k = add(n("attn_k"), [dkv, c], ParamKind::Linear, Some(l));
            let v_ = add(n("attn_v"), [dkv, c], ParamKind::Linear, Some(l));
            let attn_sub_norm = bitnet.then(|| add(n("attn_sub_norm"), [1, dq], ParamKind::Norm, Some(l)));
            let o = add(n("attn_output"), [c, dq], ParamKind::Linear, Some(l));
            let ffn_norm = add(n("ffn_norm"), [1, c], ParamKind::Norm, Some(l));
            let gate = add(n("ffn_gate"), [f, c], ParamKind::Linear, Some(l));
            let up = add(n("ffn_up"), [f, c], ParamKind::Linear, Some(l));
            let ffn_sub_norm = bitnet.then(|| add(n("ffn_sub_norm"), [1, f], ParamKind::Norm, Some(l)));
            let down = add(n("ffn_down"), [c, f], ParamKind::Linear, Some(l));
            layers.push(LayerParamIds {
                attn_norm,
                q,
                k,
                v: v_,
                o,
                attn_sub_norm,
                ffn_norm,
                gate,
                up,
                down,
                ffn_sub_norm,
            });
        }
        let final_norm = add("output_norm.weight".into(), [1, c], ParamKind::Norm, None);
        let head = if cfg.tied_embeddings {
            embedding
        } else {
            add("output.weight".into(), [v, c], ParamKind::Head, None)
        };
        Self {
            specs,
            embedding,
            layers,
            final_norm,
            head,
        }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
    pub fn spec(&self, id: ParamId) -> &ParamSpec {
        &self.specs[id.0]
    }
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.specs.iter().position(|s| s.name == name).map(ParamId)
    }
    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }
    /// Scalars in linear (ternary-trained) weights.
    pub fn linear_numel(&self) -> usize {
        self.specs
            .iter()
            .filter(|s| s.kind == ParamKind::Linear)
            .map(ParamSpec::numel)
            .sum()
    }
}

/// One buffer per [`ParamSpec`], in layout order. Used for weights, gradients and optimizer moments alike.
pub struct Parameters<B: Backend> {
    pub tensors: Vec<B::Buf>,
}

impl<B: Backend> Parameters<B> {
    pub fn zeros(backend: &B, layout: &ParamLayout) -> EngineResult<Self> {
        let tensors = layout
            .specs
            .iter()
            .map(|s| backend.alloc(s.numel()))
            .collect::<EngineResult<_>>()?;
        Ok(Self { tensors })
    }

    /// Gaussian `N(0, std²)` matrices, unit norm gains, from a seed (deterministic across runs and machines).
    pub fn init_random(backend: &B, layout: &ParamLayout, seed: u64, std: f64) -> EngineResult<Self> {
        let mut rng = SplitMix64::new(seed);
        let host: Vec<Vec<B::Elem>> = layout
            .specs
            .iter()
            .map(|s| match s.kind {
                ParamKind::Norm => vec![B::Elem::ONE; s.numel()],
                _ => (0..s.numel()).map(|_| B::Elem::from_f64(rng.normal() * std)).collect(),
            })
            .collect();
        Self::from_host(backend, layout, &host)
    }

    /// Uploads host tensors, checking their count and sizes against the layout.
    pub fn from_host(backend: &B, layout: &ParamLayout, host: &[Vec<B::Elem>]) -> EngineResult<Self> {
        if host.len() != layout.len() {
            return Err(EngineError::Shape {
                op: "Parameters::from_host",
                detail: format!("{} tensors given, the layout has {}", host.len(), layout.len()),
            });
        }
        let mut tensors = Vec::with_capacity(host.len());
        for (spec, data) in layout.specs.iter().zip(host) {
            if data.len() != spec.numel() {
                return Err(EngineError::Shape {
                    op: "Parameters::from_host",
                    detail: format!("{} has {} elements, expected {}", spec.name, data.len(), spec.numel()),
                });
            }
            tensors.push(backend.upload(data)?);
        }
        Ok(Self { tensors })
    }

    pub fn to_host(&self, backend: &B) -> EngineResult<Vec<Vec<B::Elem>>> {
        self.tensors.iter().map(|t| backend.download(t)).collect()
    }

    /// Sets every element to zero (gradients before accumulation).
    pub fn zero(&mut self, backend: &B) -> EngineResult<()> {
        self.tensors.iter_mut().try_for_each(|t| backend.fill(t, B::Elem::ZERO))
    }

    pub fn get(&self, id: ParamId) -> &B::Buf {
        &self.tensors[id.0]
    }
    pub fn get_mut(&mut self, id: ParamId) -> &mut B::Buf {
        &mut self.tensors[id.0]
    }
}

// ---- configuration ------------------------------------------------------------------------------------------

/// Which quantizers the forward pass applies to the attention and MLP linear layers. Embeddings, norms and the
/// head always stay full precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantConfig {
    /// How linear weights are quantized (none, STE, Hestia's soft relaxation); see [`crate::engine::quant`].
    pub weights: WeightQuantizer,
    /// Which weights share an absmean scale.
    pub scale_groups: ScaleGroups,
    /// Per-token absmax int8 activations (straight-through).
    pub int8_activations: bool,
}

impl QuantConfig {
    /// No quantization: the teacher, PTQ references, gradient checks, Hessian traces.
    pub const FULL_PRECISION: Self = Self {
        weights: WeightQuantizer::None,
        scale_groups: ScaleGroups::PerTensor,
        int8_activations: false,
    };
    /// BitNet b1.58 W1.58/A8 with the straight-through estimator: what the runtime computes.
    pub const W158_A8: Self = Self {
        weights: WeightQuantizer::Ste,
        scale_groups: ScaleGroups::PerTensor,
        int8_activations: true,
    };
    /// W1.58/A16 (STE).
    pub const W158_A16: Self = Self {
        weights: WeightQuantizer::Ste,
        scale_groups: ScaleGroups::PerTensor,
        int8_activations: false,
    };

    /// Whether linear weights are ternary (STE or soft).
    pub fn ternary_weights(&self) -> bool {
        self.weights != WeightQuantizer::None
    }
}

/// Which layers drop their activations after the forward pass and recompute them during the backward pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recompute {
    None,
    All,
    /// One flag per layer (`true` = recompute).
    Layers(Vec<bool>),
}

impl Recompute {
    pub fn layer(&self, l: usize) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::Layers(flags) => flags.get(l).copied().unwrap_or(false),
        }
    }
}

/// Everything that fixes the engine's buffer sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub model: ModelConfig,
    pub batch_size: usize,
    pub seq_len: usize,
    pub quant: QuantConfig,
    pub recompute: Recompute,
}

impl EngineConfig {
    pub fn validate(&self) -> EngineResult<()> {
        self.model.validate().map_err(|e| EngineError::Config(e.to_string()))?;
        if self.batch_size == 0 || self.seq_len == 0 {
            return Err(EngineError::Config(
                "batch size and sequence length must be positive".into(),
            ));
        }
        let layout = ParamLayout::new(&self.model);
        for spec in layout.specs.iter().filter(|s| s.kind == ParamKind::Linear) {
            self.quant.scale_groups.group_len(spec.shape[0], spec.shape[1])?;
        }
        if let Recompute::Layers(flags) = &self.recompute {
            if flags.len() != self.model.n_layers as usize {
                return Err(EngineError::Config(format!(
                    "{} recompute flags for {} layers",
                    flags.len(),
                    self.model.n_layers
                )));
            }
        }
        Ok(())
    }

    pub fn tokens(&self) -> usize {
        self.batch_size * self.seq_len
    }

    fn attention_dims(&self) -> AttentionDims {
        let m = &self.model;
        AttentionDims {
            batch: self.batch_size,
            seq_len: self.seq_len,
            n_heads: m.n_heads as usize,
            n_kv_heads: m.n_kv_heads as usize,
            head_dim: m.head_dim as usize,
        }
    }

    /// Distinct input widths of the linear layers (for the int8 scratch).
    fn linear_input_widths(&self) -> Vec<usize> {
        let m = &self.model;
        vec![m.hidden_size as usize, m.q_dim(), m.ffn_size as usize]
    }
}

// ---- memory accounting ---------------------------------------------------------------------------------------

/// Element counts by category (multiply by [`Float::BYTES`] for bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights; gradients and each AdamW moment have the same count.
    pub parameters: usize,
    /// Fake-quantized copies of linear weights (ternary QAT only).
    pub quantized_weights: usize,
    /// Residual stream, kept layer activations, head, int8 scratch, RoPE table.
    pub activations: usize,
    /// Buffers that exist only for the backward pass (logit gradients, per-layer gradient scratch).
    pub backward: usize,
}

impl MemoryEstimate {
    /// Training footprint in elements: weights, gradients, two AdamW moments, and the rest.
    pub fn training_elements(&self) -> usize {
        4 * self.parameters + self.quantized_weights + self.activations + self.backward
    }
    pub fn training_bytes(&self, elem_bytes: usize) -> usize {
        self.training_elements() * elem_bytes
    }
}

/// The module-level formula, evaluated.
pub fn estimate_memory(cfg: &EngineConfig) -> EngineResult<MemoryEstimate> {
    cfg.validate()?;
    let plan = Plan::new(cfg);
    let layout = ParamLayout::new(&cfg.model);
    let m = &cfg.model;
    let (n, c, v, l) = (
        cfg.tokens(),
        m.hidden_size as usize,
        m.vocab_size as usize,
        m.n_layers as usize,
    );
    let quant_scratch = if cfg.quant.int8_activations {
        quant_scratch_elements(n, &cfg.linear_input_widths())
    } else {
        0
    };
    let activations = (l + 1) * n * c
        + plan.slots * plan.blocks.first().map_or(0, TransformerBlock::activation_elements)
        + n * (c + 1)
        + n * v
        + 2 * n
        + quant_scratch
        + cfg.seq_len * m.head_dim as usize;
    let backward = n * v + n * c + plan.blocks.first().map_or(0, TransformerBlock::scratch_elements);
    Ok(MemoryEstimate {
        parameters: layout.numel(),
        quantized_weights: if cfg.quant.ternary_weights() {
            layout.linear_numel()
        } else {
            0
        },
        activations,
        backward,
    })
}

// ---- the model ---------------------------------------------------------------------------------------------

/// The layer objects and activation-slot assignment derived from a config.
struct Plan {
    embedding: Embedding,
    blocks: Vec<TransformerBlock>,
    final_norm: RmsNorm,
    head: OutputHead,
    /// Index into the activation slots for each layer.
    slot_of_layer: Vec<usize>,
    slots: usize,
}

impl Plan {
    fn new(cfg: &EngineConfig) -> Self {
        let layout = ParamLayout::new(&cfg.model);
        let m = &cfg.model;
        let (c, eps) = (m.hidden_size as usize, m.norm_eps as f64);
        let norm = |weight: ParamId, dim: usize| RmsNorm { weight, dim, eps };
        let blocks = layout.layers.iter().map(|ids| block_plan(cfg, ids)).collect();
        let n_layers = m.n_layers as usize;
        let mut slot_of_layer = Vec::with_capacity(n_layers);
        let mut kept = 0;
        for l in 0..n_layers {
            if !cfg.recompute.layer(l) {
                slot_of_layer.push(kept);
                kept += 1;
            } else {
                slot_of_layer.push(usize::MAX);
            }
        }
        let any_recompute = kept < n_layers;
        // Recomputing layers share the slot after the kept ones.
        for s in slot_of_layer.iter_mut().filter(|s| **s == usize::MAX) {
            *s = kept;
        }
        Self {
            embedding: Embedding {
                table: layout.embedding,
                vocab: m.vocab_size as usize,
                dim: c,
            },
            blocks,
            final_norm: norm(layout.final_norm, c),
            head: OutputHead {
                weight: layout.head,
                hidden: c,
                vocab: m.vocab_size as usize,
            },
            slot_of_layer,
            slots: kept + usize::from(any_recompute),
        }
    }
}

/// The layer objects of one transformer block whose parameters have the ids `ids`.
pub(crate) fn block_plan(cfg: &EngineConfig, ids: &LayerParamIds) -> TransformerBlock {
    let m = &cfg.model;
    let (c, dq, f) = (m.hidden_size as usize, m.q_dim(), m.ffn_size as usize);
    let (dkv, eps, rows) = (m.kv_dim(), m.norm_eps as f64, cfg.tokens());
    let act_q = cfg.quant.int8_activations;
    let linear = |weight: ParamId, in_features: usize, out_features: usize| Linear {
        weight,
        in_features,
        out_features,
        quantize_activations: act_q,
    };
    let norm = |weight: ParamId, dim: usize| RmsNorm { weight, dim, eps };
    let rope = RopeDims {
        seq_len: cfg.seq_len,
        n_heads: m.n_heads as usize,
        head_dim: m.head_dim as usize,
        style: m.rope_style,
    };
    let activation = match m.arch {
        Architecture::Llama => GatedActivation::Silu,
        Architecture::BitNetB158 => GatedActivation::ReluSquared,
    };
    TransformerBlock {
        attn_norm: norm(ids.attn_norm, c),
        attention: SelfAttention {
            q: linear(ids.q, c, dq),
            k: linear(ids.k, c, dkv),
            v: linear(ids.v, c, dkv),
            o: linear(ids.o, dq, c),
            sub_norm: ids.attn_sub_norm.map(|id| norm(id, dq)),
            dims: cfg.attention_dims(),
            rope,
        },
        ffn_norm: norm(ids.ffn_norm, c),
        mlp: GatedMlp {
            gate: linear(ids.gate, c, f),
            up: linear(ids.up, c, f),
            down: linear(ids.down, f, c),
            sub_norm: ids.ffn_sub_norm.map(|id| norm(id, f)),
            activation,
            rows,
        },
    }
}

/// Loss weights: `loss = ce_weight·CE + kl_weight·KL_T`, each a mean over tokens (CE over non-ignored targets).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Objective {
    pub ce_weight: f64,
    pub kl_weight: f64,
    /// Distillation temperature `T` (KL on `softmax(z/T)`, scaled by `T²`).
    pub temperature: f64,
}

impl Objective {
    pub fn cross_entropy() -> Self {
        Self {
            ce_weight: 1.0,
            kl_weight: 0.0,
            temperature: 1.0,
        }
    }
    pub fn distillation(temperature: f64) -> Self {
        Self {
            ce_weight: 0.0,
            kl_weight: 1.0,
            temperature,
        }
    }
}

/// One micro-batch: `batch_size · seq_len` tokens and next-token targets, and the teacher's logits
/// (`[tokens, vocab]`, on the same backend) when the objective distils.
pub struct Batch<'a, B: Backend> {
    pub tokens: &'a [u32],
    pub targets: &'a [u32],
    pub teacher_logits: Option<&'a B::Buf>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossReport {
    /// `ce_weight·CE + kl_weight·KL`.
    pub loss: f64,
    pub cross_entropy: Option<f64>,
    pub kl: Option<f64>,
    /// Targets that were not [`IGNORE_INDEX`].
    pub target_tokens: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Mean loss over the micro-batches.
    pub loss: f64,
    pub optimizer: OptimStepReport,
}

/// Buffers that only training needs, allocated on the first training pass (a teacher never holds them).
struct GradState<B: Backend> {
    dlogits: B::Buf,
    d_residual: B::Buf,
    scratch: BlockScratch<B>,
}

pub struct Transformer<B: Backend> {
    config: EngineConfig,
    layout: ParamLayout,
    plan: Plan,
    rope_table: B::Buf,
    /// `residual[l]` is the input of layer `l`; `residual[L]` feeds the final norm.
    residual: Vec<B::Buf>,
    slots: Vec<BlockActivations<B>>,
    final_norm_out: B::Buf,
    final_rstd: B::Buf,
    logits: B::Buf,
    ce_losses: B::Buf,
    kl_losses: B::Buf,
    /// The linear weights' quantizers and effective copies.
    quantized: QuantizedWeights<B>,
    quant_scratch: QuantScratch<B>,
    grad: Option<GradState<B>>,
    /// Token ids and targets of the last forward pass, on the device (uploaded once per pass).
    token_ids: B::Ids,
    target_ids: B::Ids,
    /// Whether the last forward was a training forward that `backward` may consume (with `token_ids`).
    pending_backward: bool,
}

impl<B: Backend> Transformer<B> {
    pub fn new(backend: &B, config: EngineConfig) -> EngineResult<Self> {
        config.validate()?;
        let layout = ParamLayout::new(&config.model);
        let plan = Plan::new(&config);
        let m = &config.model;
        let (n, c, v) = (config.tokens(), m.hidden_size as usize, m.vocab_size as usize);
        let table: Vec<B::Elem> = rope_table(config.seq_len, m.head_dim as usize, m.rope_theta as f64, m.rope_scaling)
            .into_iter()
            .map(B::Elem::from_f64)
            .collect();
        let rope_table = backend.upload(&table)?;
        let residual = (0..=m.n_layers)
            .map(|_| backend.alloc(n * c))
            .collect::<EngineResult<_>>()?;
        let slots = (0..plan.slots)
            .map(|_| BlockActivations::new(backend, &plan.blocks[0]))
            .collect::<EngineResult<_>>()?;
        let quantized = QuantizedWeights::new(backend, &layout.specs, &config.quant)?;
        let quant_scratch = if config.quant.int8_activations {
            QuantScratch::new(backend, n, &config.linear_input_widths())?
        } else {
            QuantScratch::none()
        };
        Ok(Self {
            rope_table,
            residual,
            slots,
            final_norm_out: backend.alloc(n * c)?,
            final_rstd: backend.alloc(n)?,
            logits: backend.alloc(n * v)?,
            ce_losses: backend.alloc(n)?,
            kl_losses: backend.alloc(n)?,
            quantized,
            quant_scratch,
            grad: None,
            token_ids: backend.upload_ids(&[])?,
            target_ids: backend.upload_ids(&[])?,
            pending_backward: false,
            config,
            layout,
            plan,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    /// Logits `[tokens, vocab]` of the last forward pass.
    pub fn logits(&self) -> &B::Buf {
        &self.logits
    }
    /// The residual stream of the last forward pass: `l = 0` is the embedding output (layer 0's input), `l` the
    /// input of layer `l`, `l = n_layers` the last layer's output. `None` beyond that.
    pub fn residual_stream(&self, l: usize) -> Option<&B::Buf> {
        self.residual.get(l)
    }

    /// The weights the last forward pass computed with (fake-quantized where QAT applies), for export and parity.
    pub fn effective_weight<'a>(&'a self, params: &'a Parameters<B>, id: ParamId) -> &'a B::Buf {
        self.quantized.weights(&params.tensors).effective(id)
    }

    /// The linear weights the model quantizes, in layout order (empty without QAT).
    pub fn quantized_params(&self) -> Vec<ParamId> {
        self.quantized.quantized_params()
    }

    /// Length of the scale groups of a quantized weight (`None` for tensors that are not quantized).
    pub fn group_len(&self, id: ParamId) -> Option<usize> {
        self.quantized.group_len(id)
    }

    /// Keeps a linear weight at an integer precision (mixed precision; see [`QuantizedWeights::set_precision`]).
    pub fn set_precision(&mut self, id: ParamId, precision: LinearPrecision) -> EngineResult<()> {
        self.quantized.set_precision(id, precision)
    }

    /// The weights the soft (Hestia) quantizer applies to: the ternary ones under [`WeightQuantizer::Soft`].
    pub fn soft_params(&self) -> Vec<ParamId> {
        self.quantized.soft_params()
    }

    /// The soft quantizer's state of every parameter (meaningful for quantized linear weights under
    /// [`WeightQuantizer::Soft`]; [`SoftState::HARD`] elsewhere).
    pub fn soft_states(&self) -> &[SoftState] {
        self.quantized.soft_states()
    }

    /// Sets the soft quantizer's temperature and pressure of one weight, for the following passes.
    pub fn set_soft_state(&mut self, id: ParamId, state: SoftState) -> EngineResult<()> {
        self.quantized.set_soft_state(id, state)
    }

    /// Sets every soft quantizer to `state` (e.g. [`SoftState::HARD`] to evaluate the model as it will be
    /// exported). A no-op for other quantizers.
    pub fn set_all_soft_states(&mut self, state: SoftState) -> EngineResult<()> {
        self.quantized.set_all_soft_states(state)
    }

    /// Maps the accumulated `∂L/∂Ŵ` of every quantized linear weight to `∂L/∂W` in place, through the weight
    /// quantizer's backward. Call once after the last [`Transformer::backward`] of a step, before the optimizer
    /// ([`Transformer::train_step`] does): the quantizer's Jacobian is the same for all micro-batches of a step,
    /// so mapping the sum equals summing the mapped gradients. The identity for STE (and without QAT).
    pub fn finish_gradients(&self, backend: &B, params: &Parameters<B>, grads: &mut Parameters<B>) -> EngineResult<()> {
        self.quantized.finish_gradients(backend, params, grads)
    }

    /// Elements actually allocated, by the categories of [`estimate_memory`].
    pub fn allocated(&self, backend: &B) -> MemoryEstimate {
        let len = |b: &B::Buf| backend.buf_len(b);
        let slot_elems = |s: &BlockActivations<B>| {
            let a = &s.attention;
            let m = &s.mlp;
            [
                &s.attn_norm_out,
                &s.attn_norm_rstd,
                &a.q,
                &a.k,
                &a.v,
                &a.probs,
                &a.attn,
                &a.sub_out,
                &a.sub_rstd,
                &s.x_mid,
                &s.ffn_norm_out,
                &s.ffn_norm_rstd,
                &m.gate,
                &m.up,
                &m.hidden,
                &m.sub_out,
                &m.sub_rstd,
            ]
            .iter()
            .map(|b| len(b))
            .sum::<usize>()
        };
        let scratch_elems = |g: &GradState<B>| {
            let (s, a, m) = (&g.scratch, &g.scratch.attention, &g.scratch.mlp);
            [
                &g.dlogits,
                &g.d_residual,
                &s.d_norm_out,
                &a.dq,
                &a.dk,
                &a.dv,
                &a.d_attn,
                &a.d_sub,
                &a.d_scores,
                &m.d_hidden,
                &m.d_sub,
                &m.d_gate,
                &m.d_up,
            ]
            .iter()
            .map(|b| len(b))
            .sum::<usize>()
        };
        MemoryEstimate {
            parameters: self.layout.numel(),
            quantized_weights: self.quantized.allocated_elements(backend),
            activations: self.residual.iter().map(len).sum::<usize>()
                + self.slots.iter().map(slot_elems).sum::<usize>()
                + len(&self.final_norm_out)
                + len(&self.final_rstd)
                + len(&self.logits)
                + len(&self.ce_losses)
                + len(&self.kl_losses)
                + self.quant_scratch.allocated_elements(backend)
                + len(&self.rope_table),
            backward: self.grad.as_ref().map(scratch_elems).unwrap_or(0),
        }
    }

    fn check_batch(&self, tokens: &[u32]) -> EngineResult<()> {
        let n = self.config.tokens();
        if tokens.len() != n {
            return Err(EngineError::Shape {
                op: "Transformer::forward",
                detail: format!(
                    "{} tokens given, the engine was built for batch {} × seq {} = {n}",
                    tokens.len(),
                    self.config.batch_size,
                    self.config.seq_len
                ),
            });
        }
        check_tokens(tokens, self.config.model.vocab_size as usize)
    }

    /// Forward pass to logits (no loss); activations are kept as for training.
    pub fn forward_logits(&mut self, backend: &B, params: &Parameters<B>, tokens: &[u32]) -> EngineResult<&B::Buf> {
        self.pending_backward = false;
        self.run_forward(backend, params, tokens)?;
        Ok(&self.logits)
    }

    /// Loss without gradients.
    pub fn forward_eval(
        &mut self,
        backend: &B,
        params: &Parameters<B>,
        batch: &Batch<'_, B>,
        objective: &Objective,
    ) -> EngineResult<LossReport> {
        self.pending_backward = false;
        self.run_forward(backend, params, batch.tokens)?;
        self.compute_loss(backend, batch, objective, None)
    }

    /// Forward pass that also computes `∂(loss_scale·loss)/∂logits`, ready for [`Transformer::backward`].
    /// `loss_scale` is `1/micro_batches` under gradient accumulation. Fails with
    /// [`EngineError::NonFinite`] if the loss is NaN or infinite.
    pub fn forward_train(
        &mut self,
        backend: &B,
        params: &Parameters<B>,
        batch: &Batch<'_, B>,
        objective: &Objective,
        loss_scale: f64,
    ) -> EngineResult<LossReport> {
        self.pending_backward = false;
        if self.grad.is_none() {
            let m = &self.config.model;
            let n = self.config.tokens();
            self.grad = Some(GradState {
                dlogits: backend.alloc(n * m.vocab_size as usize)?,
                d_residual: backend.alloc(n * m.hidden_size as usize)?,
                scratch: BlockScratch::new(backend, &self.plan.blocks[0])?,
            });
        }
        self.run_forward(backend, params, batch.tokens)?;
        let report = self.compute_loss(backend, batch, objective, Some(loss_scale))?;
        if !report.loss.is_finite() {
            return Err(EngineError::NonFinite {
                source_kind: NonFiniteSource::Loss,
                value: report.loss,
                step: None,
            });
        }
        self.pending_backward = true;
        Ok(report)
    }

    /// Forward through the blocks only (no final norm, no head): the residual stream for
    /// [`Transformer::residual_stream`], e.g. the block-wise stage's teacher activations.
    pub fn forward_residual(&mut self, backend: &B, params: &Parameters<B>, tokens: &[u32]) -> EngineResult<()> {
        self.pending_backward = false;
        self.run_blocks(backend, params, tokens)
    }

    fn run_forward(&mut self, backend: &B, params: &Parameters<B>, tokens: &[u32]) -> EngineResult<()> {
        self.run_blocks(backend, params, tokens)?;
        let weights = self.quantized.weights(&params.tensors);
        let last = self.residual.len() - 1;
        self.plan.final_norm.forward(
            backend,
            &weights,
            &self.residual[last],
            &mut self.final_norm_out,
            &mut self.final_rstd,
        )?;
        self.plan
            .head
            .forward(backend, &weights, &self.final_norm_out, &mut self.logits)
    }

    fn run_blocks(&mut self, backend: &B, params: &Parameters<B>, tokens: &[u32]) -> EngineResult<()> {
        self.check_batch(tokens)?;
        if params.tensors.len() != self.layout.len() {
            return Err(EngineError::Shape {
                op: "Transformer::forward",
                detail: format!(
                    "{} parameter tensors, the layout has {}",
                    params.tensors.len(),
                    self.layout.len()
                ),
            });
        }
        self.quantized.quantize(backend, params)?;
        backend.write_ids(&mut self.token_ids, tokens)?;
        let Self {
            plan,
            rope_table,
            residual,
            slots,
            quantized,
            quant_scratch,
            token_ids,
            ..
        } = self;
        let weights = quantized.weights(&params.tensors);
        plan.embedding.forward(backend, &weights, token_ids, &mut residual[0])?;
        for (l, block) in plan.blocks.iter().enumerate() {
            let (done, rest) = residual.split_at_mut(l + 1);
            let acts = &mut slots[plan.slot_of_layer[l]];
            block.forward(
                backend,
                &weights,
                rope_table,
                &done[l],
                acts,
                &mut rest[0],
                quant_scratch,
            )?;
        }
        Ok(())
    }

    fn compute_loss(
        &mut self,
        backend: &B,
        batch: &Batch<'_, B>,
        objective: &Objective,
        loss_scale: Option<f64>,
    ) -> EngineResult<LossReport> {
        let n = self.config.tokens();
        let vocab = self.config.model.vocab_size as usize;
        let mut dlogits = match (loss_scale, self.grad.as_mut()) {
            (Some(scale), Some(g)) => Some((scale, &mut g.dlogits)),
            _ => None,
        };
        let mut mode = WriteMode::Overwrite;
        let mut report = LossReport {
            loss: 0.0,
            cross_entropy: None,
            kl: None,
            target_tokens: 0,
        };
        if objective.ce_weight != 0.0 {
            if batch.targets.len() != n {
                return Err(EngineError::Shape {
                    op: "cross entropy",
                    detail: format!("{} targets for {n} tokens", batch.targets.len()),
                });
            }
            let valid = batch.targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
            let grad = dlogits.as_mut().map(|(scale, buf)| LossGrad {
                dlogits: &mut **buf,
                scale: *scale * objective.ce_weight / valid.max(1) as f64,
                mode,
            });
            backend.write_ids(&mut self.target_ids, batch.targets)?;
            backend.cross_entropy(&mut self.ce_losses, grad, &self.logits, &self.target_ids, vocab)?;
            mode = WriteMode::Accumulate;
            let sum: f64 = backend.download(&self.ce_losses)?.iter().map(|x| x.to_f64()).sum();
            let ce = sum / valid.max(1) as f64;
            report.cross_entropy = Some(ce);
            report.loss += objective.ce_weight * ce;
            report.target_tokens = valid;
        }
        if objective.kl_weight != 0.0 {
            let teacher = batch.teacher_logits.ok_or_else(|| {
                EngineError::Config("the objective distils but the batch has no teacher logits".into())
            })?;
            let grad = dlogits.as_mut().map(|(scale, buf)| LossGrad {
                dlogits: &mut **buf,
                scale: *scale * objective.kl_weight / n as f64,
                mode,
            });
            backend.kl_divergence(
                &mut self.kl_losses,
                grad,
                &self.logits,
                teacher,
                vocab,
                objective.temperature,
            )?;
            mode = WriteMode::Accumulate;
            let sum: f64 = backend.download(&self.kl_losses)?.iter().map(|x| x.to_f64()).sum();
            let kl = sum / n as f64;
            report.kl = Some(kl);
            report.loss += objective.kl_weight * kl;
        }
        if mode == WriteMode::Overwrite {
            return Err(EngineError::Config(
                "the objective has neither a cross-entropy nor a KL weight".into(),
            ));
        }
        Ok(report)
    }

    /// Backpropagates the last [`Transformer::forward_train`], *accumulating* into `grads` (zero them first,
    /// or let [`Transformer::train_step`] do it). Quantized linear weights receive `∂L/∂Ŵ`: call
    /// [`Transformer::finish_gradients`] once after the step's last backward.
    pub fn backward(&mut self, backend: &B, params: &Parameters<B>, grads: &mut Parameters<B>) -> EngineResult<()> {
        if !std::mem::replace(&mut self.pending_backward, false) {
            return Err(EngineError::NoForwardState);
        }
        if grads.tensors.len() != self.layout.len() {
            return Err(EngineError::Shape {
                op: "Transformer::backward",
                detail: format!(
                    "{} gradient tensors, the layout has {}",
                    grads.tensors.len(),
                    self.layout.len()
                ),
            });
        }
        let Self {
            config,
            plan,
            rope_table,
            residual,
            slots,
            quantized,
            quant_scratch,
            final_norm_out,
            final_rstd,
            grad,
            token_ids,
            ..
        } = self;
        let g = grad.as_mut().ok_or(EngineError::NoForwardState)?;
        let weights = quantized.weights(&params.tensors);
        let grads = &mut grads.tensors;
        plan.head.backward(
            backend,
            &weights,
            grads,
            final_norm_out,
            &g.dlogits,
            &mut g.scratch.d_norm_out,
        )?;
        let last = residual.len() - 1;
        plan.final_norm.backward(
            backend,
            &weights,
            grads,
            &residual[last],
            final_rstd,
            &g.scratch.d_norm_out,
            &mut g.d_residual,
            WriteMode::Overwrite,
        )?;
        for (l, block) in plan.blocks.iter().enumerate().rev() {
            let (done, rest) = residual.split_at_mut(l + 1);
            let acts = &mut slots[plan.slot_of_layer[l]];
            if config.recompute.layer(l) {
                // Same inputs, deterministic kernels: bit-identical activations (and `residual[l + 1]`, which
                // is rewritten with the value it already holds).
                block.forward(
                    backend,
                    &weights,
                    rope_table,
                    &done[l],
                    acts,
                    &mut rest[0],
                    quant_scratch,
                )?;
            }
            block.backward(
                backend,
                &weights,
                grads,
                rope_table,
                &done[l],
                acts,
                &mut g.d_residual,
                &mut g.scratch,
                quant_scratch,
            )?;
        }
        plan.embedding.backward(backend, grads, token_ids, &g.d_residual)
    }

    /// One optimizer step over `micro_batches` (gradient accumulation: gradients are averaged, so the update
    /// equals one step on their union when all hold the same number of targets).
    pub fn train_step(
        &mut self,
        backend: &B,
        params: &mut Parameters<B>,
        grads: &mut Parameters<B>,
        optimizer: &mut AdamW<B>,
        micro_batches: &[Batch<'_, B>],
        objective: &Objective,
    ) -> EngineResult<StepReport> {
        if micro_batches.is_empty() {
            return Err(EngineError::Config(
                "a training step needs at least one micro-batch".into(),
            ));
        }
        grads.zero(backend)?;
        let scale = 1.0 / micro_batches.len() as f64;
        let mut loss = 0.0;
        for batch in micro_batches {
            let report = self
                .forward_train(backend, params, batch, objective, scale)
                .map_err(|e| e.at_step(optimizer.step_count()))?;
            loss += report.loss * scale;
            self.backward(backend, params, grads)?;
        }
        self.finish_gradients(backend, params, grads)?;
        let optimizer = optimizer.step(backend, params, grads)?;
        Ok(StepReport { loss, optimizer })
    }
}

/// Helper for tests and tools: a small Llama/BitNet config (context 4096, RoPE θ 10000, interleaved).
#[allow(clippy::too_many_arguments)]
pub fn tiny_config(
    arch: Architecture,
    hidden: u32,
    n_layers: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    ffn: u32,
    vocab: u32,
    tied: bool,
) -> ModelConfig {
    ModelConfig {
        arch,
        hidden_size: hidden,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_size: ffn,
        vocab_size: vocab,
        context_length: 4096,
        rope_theta: 10000.0,
        rope_scaling: tern_format::RopeScaling::None,
        rope_style: RopeStyle::Interleaved,
        norm_eps: 1e-5,
        tied_embeddings: tied,
        bos_token: tern_format::NO_TOKEN,
        eos_token: tern_format::NO_TOKEN,
        pad_token: tern_format::NO_TOKEN,
        add_bos: false,
    }
}
