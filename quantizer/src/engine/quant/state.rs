//! The quantization state of a set of parameters: which tensors are quantized, their scale groups, the soft
//! quantizer's per-tensor state, and the effective weights `Ŵ` — shared by the whole [`Transformer`] and the
//! block-wise [`BlockModel`].
//!
//! [`Transformer`]: crate::engine::Transformer
//! [`BlockModel`]: crate::engine::BlockModel

use super::{LinearPrecision, SoftState, WeightQuantizer};
use crate::engine::backend::Backend;
use crate::engine::error::{EngineError, EngineResult};
use crate::engine::layers::{ParamId, Weights};
use crate::engine::model::{ParamKind, ParamSpec, Parameters, QuantConfig};

pub struct QuantizedWeights<B: Backend> {
    kind: WeightQuantizer,
    names: Vec<String>,
    /// Effective copies of the quantized tensors, indexed like the parameters (`None`: used as is).
    quantized: Vec<Option<B::Buf>>,
    /// Scale-group length of each quantized tensor (0 elsewhere).
    group_lens: Vec<usize>,
    /// Soft-quantizer state of each tensor ([`SoftState::HARD`] where it does not apply).
    soft_states: Vec<SoftState>,
    /// Stored precision of each quantized tensor (ternary unless mixed precision says otherwise).
    precisions: Vec<LinearPrecision>,
    /// Row length of each tensor (the integer quantizers work row by row).
    cols: Vec<usize>,
}

impl<B: Backend> QuantizedWeights<B> {
    /// Linear weights are quantized under `quant`; everything else is used as is.
    pub fn new(backend: &B, specs: &[ParamSpec], quant: &QuantConfig) -> EngineResult<Self> {
        let mut quantized = Vec::with_capacity(specs.len());
        let mut group_lens = Vec::with_capacity(specs.len());
        for s in specs {
            if quant.ternary_weights() && s.kind == ParamKind::Linear {
                group_lens.push(quant.scale_groups.group_len(s.shape[0], s.shape[1])?);
                quantized.push(Some(backend.alloc(s.numel())?));
            } else {
                group_lens.push(0);
                quantized.push(None);
            }
        }
        Ok(Self {
            kind: quant.weights,
            names: specs.iter().map(|s| s.name.clone()).collect(),
            quantized,
            group_lens,
            soft_states: vec![SoftState::HARD; specs.len()],
            precisions: vec![LinearPrecision::Ternary; specs.len()],
            cols: specs.iter().map(|s| s.shape[1]).collect(),
        })
    }

    /// Keeps a quantized tensor at another precision (mixed precision): its effective weight is then the
    /// format's int8/int4 encoding, with a straight-through gradient, whatever the model's ternary quantizer.
    pub fn set_precision(&mut self, id: ParamId, precision: LinearPrecision) -> EngineResult<()> {
        if self.group_len(id).is_none() {
            return Err(EngineError::Config(format!(
                "{} is not a quantized linear weight",
                self.names.get(id.0).map_or("?", |s| s.as_str())
            )));
        }
        if let LinearPrecision::Int4 { group } = precision {
            if group == 0 || self.cols[id.0] % group as usize != 0 {
                return Err(EngineError::Config(format!(
                    "int4 group {group} does not divide the rows of {} ({} columns)",
                    self.names[id.0], self.cols[id.0]
                )));
            }
        }
        self.precisions[id.0] = precision;
        Ok(())
    }

    pub fn precision(&self, id: ParamId) -> LinearPrecision {
        self.precisions.get(id.0).copied().unwrap_or(LinearPrecision::Ternary)
    }

    /// The tensors the soft quantizer applies to (quantized, ternary, under [`WeightQuantizer::Soft`]).
    pub fn soft_params(&self) -> Vec<ParamId> {
        if self.kind != WeightQuantizer::Soft {
            return Vec::new();
        }
        self.quantized_params()
            .into_iter()
            .filter(|id| self.precisions[id.0] == LinearPrecision::Ternary)
            .collect()
    }

    pub fn kind(&self) -> WeightQuantizer {
        self.kind
    }

    /// The quantized tensors, in parameter order.
    pub fn quantized_params(&self) -> Vec<ParamId> {
        (0..self.quantized.len())
            .filter(|&i| self.quantized[i].is_some())
            .map(ParamId)
            .collect()
    }

    /// Scale-group length of a quantized tensor (`None` if it is not quantized).
    pub fn group_len(&self, id: ParamId) -> Option<usize> {
        self.quantized.get(id.0)?.as_ref().map(|_| self.group_lens[id.0])
    }

    pub fn soft_states(&self) -> &[SoftState] {
        &self.soft_states
    }

    pub fn set_soft_state(&mut self, id: ParamId, state: SoftState) -> EngineResult<()> {
        state.validate()?;
        if self.kind != WeightQuantizer::Soft
            || self.group_len(id).is_none()
            || self.precisions[id.0] != LinearPrecision::Ternary
        {
            return Err(EngineError::Config(format!(
                "{} has no soft quantizer (quantizer {:?})",
                self.names.get(id.0).map_or("?", |s| s.as_str()),
                self.kind
            )));
        }
        self.soft_states[id.0] = state;
        Ok(())
    }

    /// Every soft quantizer to `state` (a no-op for other quantizers).
    pub fn set_all_soft_states(&mut self, state: SoftState) -> EngineResult<()> {
        state.validate()?;
        for id in self.soft_params() {
            self.soft_states[id.0] = state;
        }
        Ok(())
    }

    /// Writes every effective weight `Ŵ` from the latent `params`.
    pub fn quantize(&mut self, backend: &B, params: &Parameters<B>) -> EngineResult<()> {
        if params.tensors.len() != self.quantized.len() {
            return Err(EngineError::Shape {
                op: "QuantizedWeights::quantize",
                detail: format!(
                    "{} tensors for {} parameters",
                    params.tensors.len(),
                    self.quantized.len()
                ),
            });
        }
        for (i, (q, w)) in self.quantized.iter_mut().zip(&params.tensors).enumerate() {
            if let Some(q) = q {
                if self.precisions[i] != LinearPrecision::Ternary {
                    backend.quantize_weight_integer(q, w, self.cols[i], self.precisions[i])?;
                    continue;
                }
                match self.kind {
                    WeightQuantizer::None => {}
                    WeightQuantizer::Ste => backend.quantize_ternary_hard(q, w, self.group_lens[i])?,
                    WeightQuantizer::Soft => {
                        backend.quantize_ternary_soft(q, w, self.group_lens[i], self.soft_states[i])?
                    }
                }
            }
        }
        Ok(())
    }

    /// Maps accumulated `∂L/∂Ŵ` to `∂L/∂W` in place (the identity except for the soft quantizer).
    pub fn finish_gradients(&self, backend: &B, params: &Parameters<B>, grads: &mut Parameters<B>) -> EngineResult<()> {
        if self.kind != WeightQuantizer::Soft {
            return Ok(());
        }
        for id in self.soft_params() {
            backend.quantize_ternary_soft_backward(
                &mut grads.tensors[id.0],
                &params.tensors[id.0],
                self.group_lens[id.0],
                self.soft_states[id.0],
            )?;
        }
        Ok(())
    }

    /// Read access for a pass: latent tensors with the effective copies in place of the quantized ones.
    pub fn weights<'a>(&'a self, latent: &'a [B::Buf]) -> Weights<'a, B> {
        Weights::new(latent, &self.quantized)
    }

    /// Elements held by the effective copies.
    pub fn allocated_elements(&self, backend: &B) -> usize {
        self.quantized.iter().flatten().map(|b| backend.buf_len(b)).sum()
    }
}
