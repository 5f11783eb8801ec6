//! CPU backend: `Vec<T>` buffers, rayon for the elementwise/row kernels, [`super::matmul`] for matrix products
//! (the `gemm` crate in f32 by default; the AVX-512F f32 or AMX-BF16 kernels with
//! [`CpuBackend::with_matmul_precision`]). Every CPU kernel lives in this folder, one file per kernel family,
//! generic over `f32`/`f64` so the gradient checks run the same code in double precision; the layers
//! (`engine/layers/`) only describe the math and call the [`Backend`].
//!
//! Why `gemm` rather than `matrixmultiply`: measured on this machine (2 Zen 4 cores at 2.445 GHz, AVX2/FMA
//! exposed, so a core's f32 peak is 2 FMA pipes × 8 lanes × 2 flops × 2.445 GHz = 78 GFLOP/s) on the
//! 512×576×1536-class products of SmolLM2, both reach 62–72 GFLOP/s on one thread; on two threads `gemm` reached
//! 97–123 GFLOP/s (up to 79% of the 157 GFLOP/s two-core peak) while `matrixmultiply`'s own thread pool, which
//! also competes with rayon's, fell behind it. `gemm` also parallelises through rayon — the pool the rest of the
//! engine uses — and takes arbitrary strides, which the attention kernel needs for per-head views.
//! `examples/gemm_gflops.rs` measures the engine's own `matmul` (wall clock and per CPU-second, since the
//! machine is shared).

mod attention;
mod cross_entropy;
pub(crate) mod embedding;
mod kl_div;
mod mlp;
pub mod mse;
mod quant;
mod rmsnorm;
mod rope;

use std::marker::PhantomData;

use rayon::prelude::*;

use super::backend::{
    AdamWParams, AttentionDims, Backend, GatedActivation, GemmSpec, LossGrad, RopeDims, RopeDirection, WriteMode,
};
use super::error::{ensure, EngineResult};
use super::matmul::{gemm_strided_with, MatmulPrecision};
use super::quant::{LinearPrecision, SoftState};
use super::scalar::Float;
use super::shapes::{check_groups, check_rope, rows_of, same_len};

/// Elements per task of the deterministic sum of squares and of the AdamW update.
const CHUNK: usize = 1 << 14;

/// The CPU backend, in `f32` for training or `f64` for gradient checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend<T: Float> {
    matmul: MatmulPrecision,
    _elem: PhantomData<T>,
}

impl<T: Float> CpuBackend<T> {
    /// f32 matrix products (the `gemm` crate).
    pub fn new() -> Self {
        Self::default()
    }

    /// The same backend with its [`Backend::matmul`] products in `precision` (see [`MatmulPrecision`]).
    pub fn with_matmul_precision(self, precision: MatmulPrecision) -> Self {
        Self {
            matmul: precision,
            ..self
        }
    }

    pub fn matmul_precision(&self) -> MatmulPrecision {
        self.matmul
    }

    /// The kernel [`Backend::matmul`] runs, for logs (e.g. whether bf16 found AMX).
    pub fn matmul_kernel_name(&self) -> &'static str {
        super::matmul::kernel_name::<T>(self.matmul)
    }
}

/// `Σ a_i·b_i` in f64 with eight independent accumulators (lane `j` takes elements `j, j + 8, …`), added in a fixed
/// order at the end: deterministic, and the compiler vectorises it (one f64 chain was 8% of a training step).
fn lane_sum<T: Float>(a: &[T], b: &[T]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..LANES {
            acc[j] += x[j].to_f64() * y[j].to_f64();
        }
    }
    let mut tail = 0.0;
    for (x, y) in ar.iter().zip(br) {
        tail += x.to_f64() * y.to_f64();
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

fn loss_grad<'a, T: Float>(
    op: &'static str,
    grad: Option<LossGrad<'a, Vec<T>>>,
    want: usize,
) -> EngineResult<Option<(&'a mut [T], f64, WriteMode)>> {
    match grad {
        None => Ok(None),
        Some(g) => {
            same_len(op, "dlogits", g.dlogits.len(), want)?;
            Ok(Some((g.dlogits.as_mut_slice(), g.scale, g.mode)))
        }
    }
}

impl<T: Float> Backend for CpuBackend<T> {
    type Elem = T;
    type Buf = Vec<T>;
    type Ids = Vec<u32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn alloc(&self, len: usize) -> EngineResult<Vec<T>> {
        Ok(vec![T::ZERO; len])
    }

    fn buf_len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn upload(&self, data: &[T]) -> EngineResult<Vec<T>> {
        Ok(data.to_vec())
    }

    fn download(&self, buf: &Vec<T>) -> EngineResult<Vec<T>> {
        Ok(buf.clone())
    }

    fn write(&self, dst: &mut Vec<T>, data: &[T]) -> EngineResult<()> {
        same_len("write", "destination", dst.len(), data.len())?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn copy(&self, dst: &mut Vec<T>, src: &Vec<T>) -> EngineResult<()> {
        same_len("copy", "destination", dst.len(), src.len())?;
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(())
    }

    fn upload_ids(&self, ids: &[u32]) -> EngineResult<Vec<u32>> {
        Ok(ids.to_vec())
    }

    fn write_ids(&self, dst: &mut Vec<u32>, ids: &[u32]) -> EngineResult<()> {
        dst.clear();
        dst.extend_from_slice(ids);
        Ok(())
    }

    fn ids_len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }

    fn fill(&self, buf: &mut Vec<T>, value: T) -> EngineResult<()> {
        buf.par_chunks_mut(CHUNK).for_each(|c| c.fill(value));
        Ok(())
    }

    fn sum_squares(&self, buf: &Vec<T>) -> EngineResult<f64> {
        let partials: Vec<f64> = buf.par_chunks(CHUNK).map(|c| lane_sum(c, c)).collect();
        Ok(partials.iter().sum())
    }

    fn dot(&self, a: &Vec<T>, b: &Vec<T>) -> EngineResult<f64> {
        same_len("dot", "b", b.len(), a.len())?;
        let partials: Vec<f64> = a
            .par_chunks(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .map(|(a, b)| lane_sum(a, b))
            .collect();
        Ok(partials.iter().sum())
    }

    fn axpy(&self, y: &mut Vec<T>, alpha: f64, x: &Vec<T>) -> EngineResult<()> {
        same_len("axpy", "x", x.len(), y.len())?;
        let a = T::from_f64(alpha);
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y += a * x;
            }
        });
        Ok(())
    }

    fn matmul(&self, out: &mut Vec<T>, a: &Vec<T>, b: &Vec<T>, spec: GemmSpec) -> EngineResult<()> {
        let GemmSpec {
            m,
            n,
            k,
            a_transposed,
            b_transposed,
            mode,
        } = spec;
        same_len("matmul", "a", a.len(), m * k)?;
        same_len("matmul", "b", b.len(), k * n)?;
        same_len("matmul", "out", out.len(), m * n)?;
        // Row-major a is [m, k] (strides k, 1) or, transposed, stored [k, m] (strides 1, m); likewise b.
        let (a_rs, a_cs) = if a_transposed { (1, m as isize) } else { (k as isize, 1) };
        let (b_rs, b_cs) = if b_transposed { (1, k as isize) } else { (n as isize, 1) };
        // SAFETY: lengths checked above cover every addressed element; `out` is a distinct &mut borrow.
        unsafe {
            gemm_strided_with(
                self.matmul,
                m,
                n,
                k,
                out.as_mut_ptr(),
                n as isize,
                1,
                mode == WriteMode::Accumulate,
                a.as_ptr(),
                a_rs,
                a_cs,
                b.as_ptr(),
                b_rs,
                b_cs,
                T::ONE,
                true,
            );
        }
        Ok(())
    }

    fn quantize_ternary_hard(&self, out: &mut Vec<T>, w: &Vec<T>, group_len: usize) -> EngineResult<()> {
        check_groups("quantize_ternary_hard", out.len(), w.len(), group_len)?;
        quant::quantize_ternary_hard_cpu(out, w, group_len);
        Ok(())
    }

    fn quantize_ternary_soft(
        &self,
        out: &mut Vec<T>,
        w: &Vec<T>,
        group_len: usize,
        state: SoftState,
    ) -> EngineResult<()> {
        check_groups("quantize_ternary_soft", out.len(), w.len(), group_len)?;
        state.validate()?;
        quant::soft_forward_cpu(out, w, group_len, state.temperature, state.pressure);
        Ok(())
    }

    fn quantize_ternary_soft_backward(
        &self,
        grad: &mut Vec<T>,
        w: &Vec<T>,
        group_len: usize,
        state: SoftState,
    ) -> EngineResult<()> {
        check_groups("quantize_ternary_soft_backward", grad.len(), w.len(), group_len)?;
        state.validate()?;
        quant::soft_backward_cpu(grad, w, group_len, state.temperature, state.pressure);
        Ok(())
    }

    fn quantize_weight_integer(
        &self,
        out: &mut Vec<T>,
        w: &Vec<T>,
        cols: usize,
        precision: LinearPrecision,
    ) -> EngineResult<()> {
        rows_of("quantize_weight_integer", "w", w.len(), cols)?;
        same_len("quantize_weight_integer", "out", out.len(), w.len())?;
        if let LinearPrecision::Int4 { group } = precision {
            ensure(group > 0, "quantize_weight_integer", || "int4 group 0".into())?;
        }
        super::quant::integer::quantize_cpu(out, w, cols, precision);
        Ok(())
    }

    fn fake_quantize_int8_rows(&self, out: &mut Vec<T>, x: &Vec<T>, cols: usize) -> EngineResult<()> {
        rows_of("fake_quantize_int8_rows", "x", x.len(), cols)?;
        same_len("fake_quantize_int8_rows", "out", out.len(), x.len())?;
        quant::quantize_int8_rows_cpu(out, x, cols);
        Ok(())
    }

    fn embedding_forward(&self, out: &mut Vec<T>, table: &Vec<T>, tokens: &Vec<u32>, dim: usize) -> EngineResult<()> {
        let vocab = rows_of("embedding_forward", "table", table.len(), dim)?;
        same_len("embedding_forward", "out", out.len(), tokens.len() * dim)?;
        super::layers::embedding::check_tokens(tokens, vocab)?;
        embedding::forward_cpu(out, table, tokens, dim);
        Ok(())
    }

    fn embedding_backward(
        &self,
        dtable: &mut Vec<T>,
        dout: &Vec<T>,
        tokens: &Vec<u32>,
        dim: usize,
    ) -> EngineResult<()> {
        embedding::backward_cpu(dtable, dout, tokens, dim)
    }

    fn rmsnorm_forward(
        &self,
        out: &mut Vec<T>,
        rstd: &mut Vec<T>,
        x: &Vec<T>,
        weight: &Vec<T>,
        eps: f64,
    ) -> EngineResult<()> {
        let rows = rows_of("rmsnorm_forward", "x", x.len(), weight.len())?;
        same_len("rmsnorm_forward", "out", out.len(), x.len())?;
        same_len("rmsnorm_forward", "rstd", rstd.len(), rows)?;
        rmsnorm::forward_cpu(out, rstd, x, weight, eps);
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<T>,
        dweight: &mut Vec<T>,
        dout: &Vec<T>,
        x: &Vec<T>,
        weight: &Vec<T>,
        rstd: &Vec<T>,
        dx_mode: WriteMode,
    ) -> EngineResult<()> {
        let rows = rows_of("rmsnorm_backward", "x", x.len(), weight.len())?;
        same_len("rmsnorm_backward", "dx", dx.len(), x.len())?;
        same_len("rmsnorm_backward", "dout", dout.len(), x.len())?;
        same_len("rmsnorm_backward", "dweight", dweight.len(), weight.len())?;
        same_len("rmsnorm_backward", "rstd", rstd.len(), rows)?;
        rmsnorm::backward_cpu(dx, dweight, dout, x, weight, rstd, dx_mode);
        Ok(())
    }

    fn rope(&self, x: &mut Vec<T>, table: &Vec<T>, dims: RopeDims, direction: RopeDirection) -> EngineResult<()> {
        check_rope(x.len(), table.len(), &dims)?;
        rope::rope_cpu(x, table, dims, direction);
        Ok(())
    }

    fn attention_forward(
        &self,
        out: &mut Vec<T>,
        probs: &mut Vec<T>,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        dims: AttentionDims,
    ) -> EngineResult<()> {
        attention::forward_cpu(out, probs, q, k, v, dims, self.matmul)
    }

    fn attention_backward(
        &self,
        dq: &mut Vec<T>,
        dk: &mut Vec<T>,
        dv: &mut Vec<T>,
        scratch: &mut Vec<T>,
        dout: &Vec<T>,
        _out: &Vec<T>,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        probs: &Vec<T>,
        dims: AttentionDims,
    ) -> EngineResult<()> {
        attention::backward_cpu(dq, dk, dv, scratch, dout, q, k, v, probs, dims, self.matmul)
    }

    fn gated_forward(&self, out: &mut Vec<T>, gate: &Vec<T>, up: &Vec<T>, act: GatedActivation) -> EngineResult<()> {
        same_len("gated_forward", "up", up.len(), gate.len())?;
        same_len("gated_forward", "out", out.len(), gate.len())?;
        mlp::gated_forward_cpu(out, gate, up, act);
        Ok(())
    }

    fn gated_backward(
        &self,
        dgate: &mut Vec<T>,
        dup: &mut Vec<T>,
        dout: &Vec<T>,
        gate: &Vec<T>,
        up: &Vec<T>,
        act: GatedActivation,
    ) -> EngineResult<()> {
        for (what, len) in [
            ("up", up.len()),
            ("dgate", dgate.len()),
            ("dup", dup.len()),
            ("dout", dout.len()),
        ] {
            same_len("gated_backward", what, len, gate.len())?;
        }
        mlp::gated_backward_cpu(dgate, dup, dout, gate, up, act);
        Ok(())
    }

    fn cross_entropy(
        &self,
        losses: &mut Vec<T>,
        grad: Option<LossGrad<'_, Vec<T>>>,
        logits: &Vec<T>,
        targets: &Vec<u32>,
        vocab: usize,
    ) -> EngineResult<()> {
        let rows = rows_of("cross_entropy", "logits", logits.len(), vocab)?;
        same_len("cross_entropy", "targets", targets.len(), rows)?;
        same_len("cross_entropy", "losses", losses.len(), rows)?;
        let bad = targets
            .iter()
            .position(|&t| t != super::backend::IGNORE_INDEX && t as usize >= vocab);
        ensure(bad.is_none(), "cross_entropy", || {
            format!("target at row {bad:?} is outside the vocabulary {vocab}")
        })?;
        let grad = loss_grad("cross_entropy", grad, logits.len())?;
        cross_entropy::cross_entropy_cpu(losses, grad, logits, targets, vocab);
        Ok(())
    }

    fn kl_divergence(
        &self,
        losses: &mut Vec<T>,
        grad: Option<LossGrad<'_, Vec<T>>>,
        logits: &Vec<T>,
        teacher_logits: &Vec<T>,
        vocab: usize,
        temperature: f64,
    ) -> EngineResult<()> {
        let rows = rows_of("kl_divergence", "logits", logits.len(), vocab)?;
        same_len("kl_divergence", "teacher_logits", teacher_logits.len(), logits.len())?;
        same_len("kl_divergence", "losses", losses.len(), rows)?;
        ensure(temperature.is_finite() && temperature > 0.0, "kl_divergence", || {
            format!("temperature {temperature} must be finite and positive")
        })?;
        let grad = loss_grad("kl_divergence", grad, logits.len())?;
        kl_div::kl_divergence_cpu(losses, grad, logits, teacher_logits, vocab, temperature);
        Ok(())
    }

    fn mse_loss(
        &self,
        losses: &mut Vec<T>,
        grad: Option<LossGrad<'_, Vec<T>>>,
        out: &Vec<T>,
        target: &Vec<T>,
        cols: usize,
        normalize: bool,
    ) -> EngineResult<()> {
        let rows = rows_of("mse_loss", "out", out.len(), cols)?;
        same_len("mse_loss", "target", target.len(), out.len())?;
        same_len("mse_loss", "losses", losses.len(), rows)?;
        let grad = loss_grad("mse_loss", grad, out.len())?;
        mse::mse_cpu(losses, grad, out, target, cols, normalize);
        Ok(())
    }

    fn adamw_update(
        &self,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        hp: &AdamWParams,
    ) -> EngineResult<()> {
        for (what, len) in [("grad", grad.len()), ("m", m.len()), ("v", v.len())] {
            same_len("adamw_update", what, len, param.len())?;
        }
        let c = |x: f64| T::from_f64(x);
        let (lr, b1, b2, eps) = (c(hp.lr), c(hp.beta1), c(hp.beta2), c(hp.eps));
        let decay = c(1.0 - hp.lr * hp.weight_decay);
        let (inv_bc1, inv_bc2) = (c(1.0 / hp.bias_correction1), c(1.0 / hp.bias_correction2));
        let g_scale = c(hp.grad_scale);
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    let g = g[i] * g_scale;
                    m[i] = b1 * m[i] + (T::ONE - b1) * g;
                    v[i] = b2 * v[i] + (T::ONE - b2) * g * g;
                    let m_hat = m[i] * inv_bc1;
                    let v_hat = v[i] * inv_bc2;
                    p[i] = p[i] * decay - lr * m_hat / (v_hat.sqrt() + eps);
                }
            });
        Ok(())
    }
}
