//! One transformer block trained on its own (block-wise distillation, EfficientQAT's Block-AP stage): the block
//! maps the activations entering it to its output, and the loss is the mean squared error against the
//! full-precision block's output ([`Backend::mse_loss`]). Embeddings and the head are never run.
//!
//! The block's parameters are a [`Parameters`] of their own, in the order of [`BlockLayout::specs`] (the
//! layer's tensors in the whole model's order), so AdamW, the quantizers and checkpoints work on them unchanged.

use super::backend::{Backend, LossGrad, WriteMode};
use super::error::{EngineError, EngineResult, NonFiniteSource};
use super::layers::block::{BlockActivations, BlockScratch, TransformerBlock};
use super::layers::rope::rope_table;
use super::layers::{ParamId, QuantScratch};
use super::model::{block_plan, EngineConfig, LayerParamIds, ParamLayout, ParamSpec, Parameters};
use super::quant::state::QuantizedWeights;
use super::quant::{LinearPrecision, SoftState};
use super::scalar::Float;

/// The parameters of layer `layer` of a model, with ids local to the block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    pub layer: usize,
    /// Specs in the whole model's order (names `blk.{layer}.*`).
    pub specs: Vec<ParamSpec>,
    /// Local ids (indices into `specs`).
    pub ids: LayerParamIds,
    /// Id of each local tensor in the whole model's [`ParamLayout`].
    pub global_ids: Vec<ParamId>,
}

impl BlockLayout {
    pub fn new(layout: &ParamLayout, layer: usize) -> EngineResult<Self> {
        let global = *layout.layers.get(layer).ok_or_else(|| {
            EngineError::Config(format!("layer {layer} does not exist ({} layers)", layout.layers.len()))
        })?;
        let mut global_ids: Vec<ParamId> = [
            Some(global.attn_norm),
            Some(global.q),
            Some(global.k),
            Some(global.v),
            global.attn_sub_norm,
            Some(global.o),
            Some(global.ffn_norm),
            Some(global.gate),
            Some(global.up),
            global.ffn_sub_norm,
            Some(global.down),
        ]
        .into_iter()
        .flatten()
        .collect();
        global_ids.sort();
        let local = |id: ParamId| ParamId(global_ids.iter().position(|&g| g == id).unwrap_or(usize::MAX));
        let ids = LayerParamIds {
            attn_norm: local(global.attn_norm),
            q: local(global.q),
            k: local(global.k),
            v: local(global.v),
            o: local(global.o),
            attn_sub_norm: global.attn_sub_norm.map(local),
            ffn_norm: local(global.ffn_norm),
            gate: local(global.gate),
            up: local(global.up),
            down: local(global.down),
            ffn_sub_norm: global.ffn_sub_norm.map(local),
        };
        let specs = global_ids.iter().map(|&g| layout.spec(g).clone()).collect();
        Ok(Self {
            layer,
            specs,
            ids,
            global_ids,
        })
    }

    /// A [`ParamLayout`]-like view for the optimizer: the block's tensors only.
    pub fn param_layout(&self) -> ParamLayout {
        ParamLayout {
            specs: self.specs.clone(),
            embedding: ParamId(usize::MAX),
            layers: vec![self.ids],
            final_norm: ParamId(usize::MAX),
            head: ParamId(usize::MAX),
        }
    }
}

/// Loss of one block-wise forward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockLoss {
    /// Mean over tokens of the per-token squared error (normalised or per element, as configured).
    pub loss: f64,
}

pub struct BlockModel<B: Backend> {
    config: EngineConfig,
    layout: BlockLayout,
    block: TransformerBlock,
    rope_table: B::Buf,
    x_in: B::Buf,
    target: B::Buf,
    out: B::Buf,
    acts: BlockActivations<B>,
    scratch: Option<BlockScratch<B>>,
    d_out: B::Buf,
    losses: B::Buf,
    quant_scratch: QuantScratch<B>,
    quantized: QuantizedWeights<B>,
    /// Whether the last forward computed a gradient that `backward` may consume.
    pending: bool,
}

impl<B: Backend> BlockModel<B> {
    /// Block `layer` of `config.model`, for `config.batch_size × config.seq_len` tokens at a time.
    pub fn new(backend: &B, config: EngineConfig, layer: usize) -> EngineResult<Self> {
        config.validate()?;
        let layout = BlockLayout::new(&ParamLayout::new(&config.model), layer)?;
        let block = block_plan(&config, &layout.ids);
        let m = &config.model;
        let (n, c) = (config.tokens(), m.hidden_size as usize);
        let table: Vec<B::Elem> = rope_table(config.seq_len, m.head_dim as usize, m.rope_theta as f64, m.rope_scaling)
            .into_iter()
            .map(B::Elem::from_f64)
            .collect();
        let widths = [c, m.q_dim(), m.ffn_size as usize];
        Ok(Self {
            rope_table: backend.upload(&table)?,
            x_in: backend.alloc(n * c)?,
            target: backend.alloc(n * c)?,
            out: backend.alloc(n * c)?,
            acts: BlockActivations::new(backend, &block)?,
            scratch: None,
            d_out: backend.alloc(n * c)?,
            losses: backend.alloc(n)?,
            quant_scratch: if config.quant.int8_activations {
                QuantScratch::new(backend, n, &widths)?
            } else {
                QuantScratch::none()
            },
            quantized: QuantizedWeights::new(backend, &layout.specs, &config.quant)?,
            pending: false,
            block,
            layout,
            config,
        })
    }

    pub fn layout(&self) -> &BlockLayout {
        &self.layout
    }
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
    pub fn quantized_params(&self) -> Vec<ParamId> {
        self.quantized.quantized_params()
    }
    pub fn soft_params(&self) -> Vec<ParamId> {
        self.quantized.soft_params()
    }
    pub fn set_precision(&mut self, id: ParamId, precision: LinearPrecision) -> EngineResult<()> {
        self.quantized.set_precision(id, precision)
    }
    pub fn set_soft_state(&mut self, id: ParamId, state: SoftState) -> EngineResult<()> {
        self.quantized.set_soft_state(id, state)
    }
    pub fn set_all_soft_states(&mut self, state: SoftState) -> EngineResult<()> {
        self.quantized.set_all_soft_states(state)
    }
    pub fn soft_states(&self) -> &[SoftState] {
        self.quantized.soft_states()
    }
    /// The output of the last forward pass, `[tokens, hidden]`.
    pub fn output(&self) -> &B::Buf {
        &self.out
    }

    fn check(&self, params: &Parameters<B>, x_in: &[B::Elem]) -> EngineResult<()> {
        let want = self.config.tokens() * self.config.model.hidden_size as usize;
        if x_in.len() != want || params.tensors.len() != self.layout.specs.len() {
            return Err(EngineError::Shape {
                op: "BlockModel::forward",
                detail: format!(
                    "{} input values (expected {want}) and {} tensors (expected {})",
                    x_in.len(),
                    params.tensors.len(),
                    self.layout.specs.len()
                ),
            });
        }
        Ok(())
    }

    fn run_forward(&mut self, backend: &B, params: &Parameters<B>, x_in: &[B::Elem]) -> EngineResult<()> {
        self.check(params, x_in)?;
        backend.write(&mut self.x_in, x_in)?;
        self.quantized.quantize(backend, params)?;
        let weights = self.quantized.weights(&params.tensors);
        self.block.forward(
            backend,
            &weights,
            &self.rope_table,
            &self.x_in,
            &mut self.acts,
            &mut self.out,
            &mut self.quant_scratch,
        )
    }

    /// The block's output for `x_in` (host, `[tokens, hidden]`), with the current quantizer states.
    pub fn forward(&mut self, backend: &B, params: &Parameters<B>, x_in: &[B::Elem]) -> EngineResult<&B::Buf> {
        self.pending = false;
        self.run_forward(backend, params, x_in)?;
        Ok(&self.out)
    }

    /// Loss against `target` without gradients.
    pub fn forward_eval(
        &mut self,
        backend: &B,
        params: &Parameters<B>,
        x_in: &[B::Elem],
        target: &[B::Elem],
        normalize: bool,
    ) -> EngineResult<BlockLoss> {
        self.pending = false;
        self.run_forward(backend, params, x_in)?;
        self.loss(backend, target, normalize, None)
    }

    /// Forward pass plus `∂(loss_scale·loss)/∂out`, ready for [`BlockModel::backward`]. Fails with
    /// [`EngineError::NonFinite`] on a NaN/infinite loss.
    pub fn forward_train(
        &mut self,
        backend: &B,
        params: &Parameters<B>,
        x_in: &[B::Elem],
        target: &[B::Elem],
        normalize: bool,
        loss_scale: f64,
    ) -> EngineResult<BlockLoss> {
        self.pending = false;
        if self.scratch.is_none() {
            self.scratch = Some(BlockScratch::new(backend, &self.block)?);
        }
        self.run_forward(backend, params, x_in)?;
        let report = self.loss(backend, target, normalize, Some(loss_scale))?;
        if !report.loss.is_finite() {
            return Err(EngineError::NonFinite {
                source_kind: NonFiniteSource::Loss,
                value: report.loss,
                step: None,
            });
        }
        self.pending = true;
        Ok(report)
    }

    fn loss(
        &mut self,
        backend: &B,
        target: &[B::Elem],
        normalize: bool,
        loss_scale: Option<f64>,
    ) -> EngineResult<BlockLoss> {
        backend.write(&mut self.target, target)?;
        let n = self.config.tokens();
        let grad = loss_scale.map(|s| LossGrad {
            dlogits: &mut self.d_out,
            scale: s / n as f64,
            mode: WriteMode::Overwrite,
        });
        backend.mse_loss(
            &mut self.losses,
            grad,
            &self.out,
            &self.target,
            self.config.model.hidden_size as usize,
            normalize,
        )?;
        let sum: f64 = backend.download(&self.losses)?.iter().map(|x| x.to_f64()).sum();
        Ok(BlockLoss { loss: sum / n as f64 })
    }

    /// Backpropagates the last [`BlockModel::forward_train`], accumulating into `grads` (quantized weights get
    /// `∂L/∂Ŵ`: call [`BlockModel::finish_gradients`] once per step).
    pub fn backward(&mut self, backend: &B, params: &Parameters<B>, grads: &mut Parameters<B>) -> EngineResult<()> {
        if !std::mem::replace(&mut self.pending, false) {
            return Err(EngineError::NoForwardState);
        }
        let scratch = self.scratch.as_mut().ok_or(EngineError::NoForwardState)?;
        let weights = self.quantized.weights(&params.tensors);
        self.block.backward(
            backend,
            &weights,
            &mut grads.tensors,
            &self.rope_table,
            &self.x_in,
            &self.acts,
            &mut self.d_out,
            scratch,
            &mut self.quant_scratch,
        )
    }

    pub fn finish_gradients(&self, backend: &B, params: &Parameters<B>, grads: &mut Parameters<B>) -> EngineResult<()> {
        self.quantized.finish_gradients(backend, params, grads)
    }
}
