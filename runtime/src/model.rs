//! `Model`: a parsed .tern file checked against what the forward pass needs, borrowing the file's bytes.
//!
//! `Model::new` validates every tensor the architecture needs — presence, element type, shape, alignment —
//! once, so the forward pass never meets a surprise. Weights stay where they are (in the mmap): a `Matrix` is
//! a view. Per-block tensors are remembered by their directory index (a small fixed table, no heap) and
//! resolved to views when a block runs.

use tern_format::{Architecture, ElementType, ModelConfig, ModelView, Role, ScaleKind, TensorView};

use crate::error::RuntimeError;
use crate::kernels::{self, Kernels, Matrix, MAX_COLS};

/// Most transformer blocks a model may have (Llama 3.1 405B has 126).
pub const MAX_LAYERS: usize = 256;

/// Per-block roles, in slot order.
const LAYER_ROLES: [Role; 11] = Role::PER_LAYER;
const NO_SLOT: u16 = u16::MAX;

/// The weights of one transformer block, as views into the file.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    pub attn_norm: &'a [f32],
    pub wq: Matrix<'a>,
    pub wk: Matrix<'a>,
    pub wv: Matrix<'a>,
    pub wo: Matrix<'a>,
    /// BitNet b1.58 only (empty for Llama): RMSNorm weight before `wo`, length `q_dim`.
    pub attn_sub_norm: &'a [f32],
    pub ffn_norm: &'a [f32],
    pub gate: Matrix<'a>,
    pub up: Matrix<'a>,
    pub down: Matrix<'a>,
    /// BitNet b1.58 only (empty for Llama): RMSNorm weight before `down`, length `ffn_size`.
    pub ffn_sub_norm: &'a [f32],
}

/// A validated model.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    view: ModelView<'a>,
    config: ModelConfig,
    embedding: Matrix<'a>,
    head: Matrix<'a>,
    output_norm: &'a [f32],
    slots: [[u16; LAYER_ROLES.len()]; MAX_LAYERS],
    /// The kernel table sessions of this model start with, chosen once here (`kernels::selected`).
    kernels: &'static Kernels,
}

/// Element types accepted for block linear layers and the head (ternary ones take the int8 path).
fn linear_dtype_ok(_dtype: ElementType) -> bool {
    true
}

/// Element types accepted for the token embedding (rows are looked up and dequantized).
fn embedding_dtype_ok(dtype: ElementType) -> bool {
    !dtype.is_ternary()
}

fn usize_of(v: u64) -> Result<usize, RuntimeError> {
    usize::try_from(v).map_err(|_| RuntimeError::SizeOverflow)
}

/// Checks a 2-D tensor against `[rows, cols]` and an element-type predicate, and views it as a `Matrix`.
fn matrix<'a>(
    t: &TensorView<'a>,
    rows: usize,
    cols: usize,
    dtype_ok: fn(ElementType) -> bool,
) -> Result<Matrix<'a>, RuntimeError> {
    let (role, layer) = (t.role, t.layer);
    if !dtype_ok(t.dtype) {
        return Err(RuntimeError::WrongDtype {
            role,
            layer,
            dtype: t.dtype,
        });
    }
    let dims = t.shape.dims();
    if cols > MAX_COLS {
        return Err(RuntimeError::MatrixTooWide {
            role,
            layer,
            cols,
            max: MAX_COLS,
        });
    }
    if dims != [rows as u64, cols as u64] {
        return Err(RuntimeError::WrongShape {
            role,
            layer,
            expected: [rows as u64, cols as u64],
            actual: t.shape,
        });
    }
    let row_bytes = usize_of(t.dtype.row_bytes(cols as u64)?)?;
    let aligned = match t.dtype {
        ElementType::F32 => bytemuck::try_cast_slice::<u8, f32>(t.data).is_ok(),
        ElementType::F16 => bytemuck::try_cast_slice::<u8, half::f16>(t.data).is_ok(),
        _ => true,
    };
    if !aligned {
        return Err(RuntimeError::Misaligned { role, layer });
    }
    // The parser checked data and scale lengths against dtype and shape; re-check what the kernels index by.
    let ok_len = rows.checked_mul(row_bytes) == Some(t.data.len())
        && match t.scale {
            ScaleKind::None => true,
            ScaleKind::PerTensor => !t.scales.is_empty(),
            ScaleKind::PerRow => t.scales.len() == rows,
            ScaleKind::PerGroup(g) => rows.checked_mul(cols.div_ceil(g as usize)) == Some(t.scales.len()),
        };
    if !ok_len {
        return Err(RuntimeError::Format(tern_format::FormatError::BadTensor {
            index: t.index,
            what: "data or scale length does not match the shape",
        }));
    }
    Ok(Matrix {
        dtype: t.dtype,
        scale: t.scale,
        rows,
        cols,
        row_bytes,
        data: t.data,
        scales: t.scales,
    })
}

/// Checks an f32 vector of length `n` (shape `[n]` or `[1, n]`) and views it.
fn norm<'a>(t: &TensorView<'a>, n: usize) -> Result<&'a [f32], RuntimeError> {
    let (role, layer) = (t.role, t.layer);
    if t.dtype != ElementType::F32 {
        return Err(RuntimeError::WrongDtype {
            role,
            layer,
            dtype: t.dtype,
        });
    }
    if t.shape.cols() != n as u64 || t.shape.rows() != 1 {
        return Err(RuntimeError::WrongShape {
            role,
            layer,
            expected: [1, n as u64],
            actual: t.shape,
        });
    }
    let v: &[f32] = bytemuck::try_cast_slice(t.data).map_err(|_| RuntimeError::Misaligned { role, layer })?;
    if v.len() != n {
        return Err(RuntimeError::Misaligned { role, layer });
    }
    Ok(v)
}

impl<'a> Model<'a> {
    /// Validates the view against its config and the architecture's tensor list.
    pub fn new(view: ModelView<'a>) -> Result<Self, RuntimeError> {
        let config = *view.config();
        config.validate()?;
        match config.arch {
            Architecture::Llama | Architecture::BitNetB158 => {}
        }
        let n_layers = config.n_layers as usize;
        if n_layers > MAX_LAYERS {
            return Err(RuntimeError::TooManyLayers {
                layers: config.n_layers,
                max: MAX_LAYERS,
            });
        }
        let hidden = config.hidden_size as usize;
        let vocab = config.vocab_size as usize;

        // One pass over the directory: remember each per-block tensor's index (the first one wins).
        let mut slots = [[NO_SLOT; LAYER_ROLES.len()]; MAX_LAYERS];
        let (mut embd, mut out, mut out_norm) = (None, None, None);
        for t in view.tensors() {
            match (t.role, t.layer) {
                (Role::TokenEmbedding, None) => {
                    embd.get_or_insert(t);
                }
                (Role::Output, None) => {
                    out.get_or_insert(t);
                }
                (Role::OutputNorm, None) => {
                    out_norm.get_or_insert(t);
                }
                (role, Some(l)) => {
                    let Some(si) = LAYER_ROLES.iter().position(|&r| r == role) else {
                        continue;
                    };
                    let Ok(index) = u16::try_from(t.index) else { continue };
                    if let Some(slot) = slots.get_mut(l as usize).and_then(|s| s.get_mut(si)) {
                        if *slot == NO_SLOT && (l as usize) < n_layers {
                            *slot = index;
                        }
                    }
                }
                _ => {}
            }
        }
        let missing = |role, layer| RuntimeError::MissingTensor { role, layer };
        let embd = embd.ok_or(missing(Role::TokenEmbedding, None))?;
        let embedding = matrix(&embd, vocab, hidden, embedding_dtype_ok)?;
        let head = if config.tied_embeddings {
            embedding
        } else {
            let out = out.ok_or(missing(Role::Output, None))?;
            matrix(&out, vocab, hidden, linear_dtype_ok)?
        };
        let out_norm = out_norm.ok_or(missing(Role::OutputNorm, None))?;
        let output_norm = norm(&out_norm, hidden)?;
        let model = Self {
            view,
            config,
            embedding,
            head,
            output_norm,
            slots,
            kernels: kernels::selected()?,
        };
        for l in 0..n_layers {
            model.layer(l)?;
        }
        Ok(model)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn view(&self) -> &ModelView<'a> {
        &self.view
    }
    pub fn embedding(&self) -> &Matrix<'a> {
        &self.embedding
    }
    /// The output head (the embedding matrix when embeddings are tied).
    pub fn head(&self) -> &Matrix<'a> {
        &self.head
    }
    pub fn output_norm(&self) -> &'a [f32] {
        self.output_norm
    }
    /// The kernel table chosen for this model (the fastest this CPU runs, or the one `TERN_KERNELS` names).
    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }
    /// Runs this model's later sessions with another table (e.g. `&kernels::SCALAR` to compare).
    pub fn set_kernels(&mut self, k: &'static Kernels) {
        self.kernels = k;
    }

    fn slot(&self, l: usize, role: Role) -> Result<TensorView<'a>, RuntimeError> {
        let layer = Some(l as u32);
        let si = LAYER_ROLES
            .iter()
            .position(|&r| r == role)
            .ok_or(RuntimeError::MissingTensor { role, layer })?;
        let index = self.slots.get(l).and_then(|s| s.get(si)).copied().unwrap_or(NO_SLOT);
        if index == NO_SLOT {
            return Err(RuntimeError::MissingTensor { role, layer });
        }
        self.view
            .tensor(index as usize)
            .ok_or(RuntimeError::MissingTensor { role, layer })
    }

    /// The weights of block `l`, checked against the config.
    pub fn layer(&self, l: usize) -> Result<Layer<'a>, RuntimeError> {
        let c = &self.config;
        let hidden = c.hidden_size as usize;
        let ffn = c.ffn_size as usize;
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let mat = |role, rows, cols| matrix(&self.slot(l, role)?, rows, cols, linear_dtype_ok);
        let vec = |role, n| norm(&self.slot(l, role)?, n);
        let bitnet = c.arch == Architecture::BitNetB158;
        Ok(Layer {
            attn_norm: vec(Role::AttnNorm, hidden)?,
            wq: mat(Role::AttnQ, q_dim, hidden)?,
            wk: mat(Role::AttnK, kv_dim, hidden)?,
            wv: mat(Role::AttnV, kv_dim, hidden)?,
            wo: mat(Role::AttnOutput, hidden, q_dim)?,
            attn_sub_norm: if bitnet { vec(Role::AttnSubNorm, q_dim)? } else { &[] },
            ffn_norm: vec(Role::FfnNorm, hidden)?,
            gate: mat(Role::FfnGate, ffn, hidden)?,
            up: mat(Role::FfnUp, ffn, hidden)?,
            down: mat(Role::FfnDown, hidden, ffn)?,
            ffn_sub_norm: if bitnet { vec(Role::FfnSubNorm, ffn)? } else { &[] },
        })
    }
}
