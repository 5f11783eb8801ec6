//! CUDA backend: f32 buffers on one device, cuBLAS for the matrix products (TF32 tensor cores by default, FP32
//! selectable), and CUDA C kernels for everything else (`kernels/*.cu`, compiled at run time with NVRTC for the
//! device's architecture; see [`compile`]). Master weights, gradients and AdamW moments are all f32.
//!
//! Before any cudarc call, [`CudaBackend::new`] runs [`probe()`]: on a machine without the driver, NVRTC, cuBLAS
//! or a device it returns [`CudaError::Unavailable`] (cudarc itself would panic). Every kernel runs on one
//! stream, in order; the host synchronises only to download (losses, the gradient norm, checkpoints).
//!
//! Determinism: every reduction has a fixed shape for a given problem size (block partials, then partials in
//! order), the embedding backward sums each table row's tokens in token order, and the attention backward sums a
//! KV head's query heads in order — no floating-point atomics, so a resumed run repeats itself bit for bit on the
//! same GPU. Results are not bit-identical to the CPU backend's (other summation orders, `expf`, TF32); the
//! parity tests (`tests/engine_backends.rs`) state the tolerances.
//!
//! Attention is flash-style: the forward saves one log-sum-exp per score row instead of the probability matrix
//! ([`Backend::attention_saved_len`]), and the backward recomputes the probabilities tile by tile.

pub mod compile;
pub mod probe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

pub use compile::CompileFailure;
pub use probe::{probe, probe_nvrtc, CudaProbe, CudaUnavailable};

use super::backend::{
    AdamWParams, AttentionDims, Backend, GatedActivation, GemmSpec, LossGrad, RopeDims, RopeDirection, WriteMode,
    IGNORE_INDEX,
};
use super::error::{ensure, EngineError, EngineResult};
use super::layers::embedding::check_tokens;
use super::quant::{LinearPrecision, SoftState, QUANT_EPS};
use super::shapes::{check_attention_dims, check_groups, check_rope, rows_of, same_len};

/// Threads per block of the row kernels and reductions (`BLOCK` in `kernels/common.cuh`).
const BLOCK: u32 = 256;
/// Most blocks a grid-stride elementwise kernel or a reduction's first pass launches.
const MAX_BLOCKS: u64 = 4096;
/// Weights per block of a scale-group reduction (the CPU's `REDUCE_CHUNK`).
const GROUP_CHUNK: usize = 1 << 14;
/// Rows per partial sum of the RMSNorm weight gradient.
const NORM_ROWS_PER_CHUNK: usize = 64;
/// Largest head dimension the attention kernels are built for.
pub const MAX_HEAD_DIM: usize = 256;

/// Why the CUDA backend could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    // Not a `#[source]`: the message already holds the reason, which error chains would print twice.
    #[error("CUDA is not available: {0}")]
    Unavailable(CudaUnavailable),
    #[error(transparent)]
    Compile(#[from] CompileFailure),
    #[error("CUDA {op} failed: {detail}")]
    Call { op: &'static str, detail: String },
}

impl From<CudaUnavailable> for CudaError {
    fn from(e: CudaUnavailable) -> Self {
        Self::Unavailable(e)
    }
}

impl From<CudaError> for EngineError {
    fn from(e: CudaError) -> Self {
        EngineError::Backend(e.to_string())
    }
}

/// Matrix-product precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmPrecision {
    /// TF32 tensor cores (10-bit mantissa products, f32 accumulation): what training uses.
    #[default]
    Tf32,
    /// Plain FP32 (the parity tests' tight tolerances).
    Fp32,
}

/// What the backend runs on.
#[derive(Clone, Debug)]
pub struct CudaDeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    /// The architecture the kernels were compiled for (`sm_90`, or a `compute_XY` PTX fallback).
    pub kernel_arch: String,
    pub total_memory: usize,
    pub multiprocessors: i32,
    pub nvrtc_version: Option<(i32, i32)>,
    pub probe: CudaProbe,
}

/// A device buffer of f32. Zero-length buffers hold one element (the driver allocates no empty ranges).
pub struct CudaBuf {
    data: CudaSlice<f32>,
    len: usize,
}

/// Token ids on the device, with what the embedding backward needs: the rows grouped by id (stable) and where
/// each id's rows start. A host copy is kept for the vocabulary checks, which the CPU backend also does on the
/// host, so a bad id is the same typed error on both.
pub struct CudaIds {
    host: Vec<u32>,
    ids: CudaSlice<u32>,
    order: CudaSlice<u32>,
    seg_start: CudaSlice<u32>,
    seg_id: CudaSlice<u32>,
    segments: usize,
}

/// Kernel argument (the device kernels take raw device pointers and scalars).
enum Arg {
    Ptr(u64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
}

macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// The functions of the main module.
        struct Kernels {
            $($name: CudaFunction,)*
        }
        impl Kernels {
            fn load(module: &Arc<CudaModule>) -> Result<Self, CudaError> {
                Ok(Self {
                    $($name: module.load_function(stringify!($name)).map_err(call("load_function"))?,)*
                })
            }
        }
    };
}

kernels!(
    fill_f32,
    axpy_f32,
    adamw_f32,
    sum_squares_partial,
    dot_partial,
    sum_partials,
    sum_slots,
    rmsnorm_fwd,
    rmsnorm_bwd_dx,
    rmsnorm_bwd_dw_partial,
    rmsnorm_bwd_dw_final,
    rope_f32,
    gated_fwd,
    gated_bwd,
    embedding_fwd,
    embedding_bwd,
    group_partial,
    group_finish,
    quant_hard,
    quant_soft,
    quant_soft_bwd,
    fake_quant_int8_rows,
    cross_entropy_fwd,
    kl_div_fwd,
    mse_fwd,
);

/// The attention kernels of one head dimension.
struct AttentionKernels {
    fwd: CudaFunction,
    delta: CudaFunction,
    dq: CudaFunction,
    dkdv: CudaFunction,
    tile: u32,
    threads: u32,
}

/// Threads per row and rows per tile of the attention kernels (`LANES`, `TILE` in `kernels/attention.cu`).
fn attention_shape(head_dim: usize) -> (u32, u32) {
    let lanes = match head_dim {
        0..=32 => 1,
        33..=64 => 2,
        65..=128 => 4,
        _ => 8,
    };
    let tile = match head_dim {
        0..=64 => 64,
        65..=128 => 32,
        _ => 16,
    };
    (lanes, tile)
}

/// Device scratch reused across calls (the stream orders its uses).
struct Scratch {
    f64s: CudaSlice<f64>,
    f32s: CudaSlice<f32>,
}

fn call<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> CudaError {
    move |e| CudaError::Call {
        op,
        detail: e.to_string(),
    }
}

fn engine<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> EngineError {
    move |e| EngineError::Backend(format!("CUDA {op} failed: {e}"))
}

fn blocks_for(n: u64) -> u32 {
    n.div_ceil(BLOCK as u64).clamp(1, MAX_BLOCKS) as u32
}

fn to_u32(op: &'static str, what: &'static str, v: usize) -> EngineResult<u32> {
    u32::try_from(v).map_err(|_| EngineError::Shape {
        op,
        detail: format!("{what} = {v} exceeds the CUDA kernels' 32-bit range"),
    })
}

fn loss_mode(grad: &Option<LossGrad<'_, CudaBuf>>) -> u32 {
    match grad {
        None => 0,
        Some(g) if g.mode == WriteMode::Overwrite => 1,
        Some(_) => 2,
    }
}

pub struct CudaBackend {
    // Field order is drop order: the handles and functions go before the context.
    blas: CudaBlas,
    kernels: Kernels,
    attention: Mutex<HashMap<usize, Arc<AttentionKernels>>>,
    scratch: Mutex<Scratch>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    info: CudaDeviceInfo,
    gemm: GemmPrecision,
}

impl CudaBackend {
    /// Device 0 with TF32 matrix products.
    pub fn new() -> Result<Self, CudaError> {
        Self::with_precision(0, GemmPrecision::default())
    }

    /// Device `ordinal`, matrix products in `gemm`. Fails with a typed error (never a panic) when CUDA is not
    /// usable here.
    pub fn with_precision(ordinal: usize, gemm: GemmPrecision) -> Result<Self, CudaError> {
        let found = probe()?;
        if ordinal as i32 >= found.device_count {
            return Err(CudaUnavailable::NoDevice.into());
        }
        // cudarc panics on a library or symbol it cannot find; the probe has checked those, and this turns any
        // panic left into an error instead of an abort of the whole run.
        match std::panic::catch_unwind(|| Self::start(ordinal, gemm, found)) {
            Ok(r) => r,
            Err(panic) => Err(CudaError::Call {
                op: "initialisation",
                detail: panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "cudarc panicked".into()),
            }),
        }
    }

    fn start(ordinal: usize, gemm: GemmPrecision, found: CudaProbe) -> Result<Self, CudaError> {
        let ctx = CudaContext::new(ordinal).map_err(call("context creation"))?;
        // SAFETY: called before any buffer exists; the backend uses a single stream, which orders every use.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let compute_capability = ctx.compute_capability().map_err(call("compute capability"))?;
        let (major, minor) = compute_capability;
        let (image, kernel_arch) =
            compile::compile_for_device(&compile::main_module_source(), "tern_kernels.cu", major, minor)?;
        let module = load_image(&ctx, image)?;
        let kernels = Kernels::load(&module)?;
        let blas = CudaBlas::new(stream.clone()).map_err(call("cuBLAS handle"))?;
        let mode = match gemm {
            GemmPrecision::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
            GemmPrecision::Fp32 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        };
        // SAFETY: a live handle.
        unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) }
            .result()
            .map_err(call("cublasSetMathMode"))?;
        let info = CudaDeviceInfo {
            name: ctx.name().map_err(call("device name"))?,
            compute_capability,
            kernel_arch,
            total_memory: ctx.total_mem().map_err(call("device memory"))?,
            multiprocessors: ctx
                .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(call("device attribute"))?,
            nvrtc_version: compile::nvrtc_version(),
            probe: found,
        };
        let scratch = Scratch {
            f64s: stream.alloc_zeros::<f64>(1 << 16).map_err(call("scratch allocation"))?,
            f32s: stream.alloc_zeros::<f32>(1 << 16).map_err(call("scratch allocation"))?,
        };
        Ok(Self {
            blas,
            kernels,
            attention: Mutex::new(HashMap::new()),
            scratch: Mutex::new(scratch),
            stream,
            ctx,
            info,
            gemm,
        })
    }

    pub fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }

    pub fn gemm_precision(&self) -> GemmPrecision {
        self.gemm
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        // Event tracking is off: the guard records nothing.
        s.device_ptr(&self.stream).0
    }

    fn p(&self, b: &CudaBuf) -> Arg {
        Arg::Ptr(self.ptr(&b.data))
    }

    /// Launches `f` on the backend's stream.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and type, and every pointer must address
    /// a live device allocation large enough for what the kernel reads and writes with these arguments.
    unsafe fn launch(
        &self,
        op: &'static str,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> EngineResult<()> {
        let mut builder = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(v) | Arg::U64(v) => builder.arg(v),
                Arg::U32(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
                Arg::F64(v) => builder.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: forwarded to the caller.
        unsafe { builder.launch(cfg) }.map_err(engine(op))?;
        Ok(())
    }

    /// Grows the scratch to at least `f64s` / `f32s` elements and runs `body` with it.
    fn with_scratch<R>(
        &self,
        f64s: usize,
        f32s: usize,
        body: impl FnOnce(&Scratch) -> EngineResult<R>,
    ) -> EngineResult<R> {
        let mut s = self
            .scratch
            .lock()
            .map_err(|_| EngineError::Backend("CUDA scratch lock poisoned".into()))?;
        if s.f64s.len() < f64s {
            s.f64s = self
                .stream
                .alloc_zeros::<f64>(f64s.next_power_of_two())
                .map_err(engine("alloc"))?;
        }
        if s.f32s.len() < f32s {
            s.f32s = self
                .stream
                .alloc_zeros::<f32>(f32s.next_power_of_two())
                .map_err(engine("alloc"))?;
        }
        body(&s)
    }

    fn slice_alloc<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> EngineResult<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(len.max(1)).map_err(engine("alloc"))
    }

    fn upload_slice<T: DeviceRepr + ValidAsZeroBits + Copy>(&self, data: &[T]) -> EngineResult<CudaSlice<T>> {
        let mut s = self.slice_alloc::<T>(data.len())?;
        if !data.is_empty() {
            self.stream
                .memcpy_htod(data, &mut s.slice_mut(0..data.len()))
                .map_err(engine("upload"))?;
        }
        Ok(s)
    }

    fn download_f64(&self, s: &CudaSlice<f64>, len: usize) -> EngineResult<Vec<f64>> {
        let mut host = vec![0.0f64; len];
        self.stream
            .memcpy_dtoh(&s.slice(0..len), &mut host)
            .map_err(engine("download"))?;
        self.stream.synchronize().map_err(engine("synchronize"))?;
        Ok(host)
    }

    fn attention_kernels(&self, head_dim: usize) -> EngineResult<Arc<AttentionKernels>> {
        ensure(head_dim <= MAX_HEAD_DIM, "attention", || {
            format!("head dim {head_dim} exceeds the CUDA kernels' {MAX_HEAD_DIM}")
        })?;
        let mut cache = self
            .attention
            .lock()
            .map_err(|_| EngineError::Backend("CUDA attention cache lock poisoned".into()))?;
        if let Some(k) = cache.get(&head_dim) {
            return Ok(k.clone());
        }
        let (major, minor) = self.info.compute_capability;
        let name = format!("tern_attention_d{head_dim}.cu");
        let (image, _) = compile::compile_for_device(&compile::attention_module_source(head_dim), &name, major, minor)
            .map_err(|e| EngineError::Backend(e.to_string()))?;
        let module = load_image(&self.ctx, image)?;
        let load = |n: &str| module.load_function(n).map_err(engine("load_function"));
        let (lanes, tile) = attention_shape(head_dim);
        let k = Arc::new(AttentionKernels {
            fwd: load("attn_fwd")?,
            delta: load("attn_bwd_delta")?,
            dq: load("attn_bwd_dq")?,
            dkdv: load("attn_bwd_dkdv")?,
            tile,
            threads: tile * lanes,
        });
        cache.insert(head_dim, k.clone());
        Ok(k)
    }

    /// Per scale group of `w` (`group_len` divides its length): `mean|w|` (mode 0) into `means`, or the soft
    /// quantizer's scale term `Σ g·(σ − z·σ')/n` (mode 1, `means` given) into `out`; `partial` is scratch.
    #[allow(clippy::too_many_arguments)]
    fn group_reduce(
        &self,
        s: &Scratch,
        w: &CudaBuf,
        g: Option<&CudaBuf>,
        group_len: usize,
        temperature: f32,
        mode: u32,
        means_at: usize,
        out_at: usize,
    ) -> EngineResult<()> {
        ensure(group_len > 0 && w.len % group_len == 0, "weight quantizer", || {
            format!("{} weights are not whole scale groups of {group_len}", w.len)
        })?;
        if let Some(g) = g {
            ensure(g.len == w.len, "weight quantizer", || {
                format!("gradient has {} elements, weights {}", g.len, w.len)
            })?;
        }
        let groups = w.len / group_len;
        let chunks = group_len.div_ceil(GROUP_CHUNK);
        // The kernels write through raw device pointers into the scratch: check here that the three regions
        // fit it and that the partials end before `means` and `out` start.
        let scratch_len = s.f64s.len();
        ensure(
            groups * chunks <= means_at.min(out_at)
                && means_at + groups <= scratch_len
                && out_at + groups <= scratch_len,
            "weight quantizer",
            || {
                format!(
                    "scratch of {scratch_len} f64 does not hold {} partials, means at {means_at} and out at {out_at} \
                     ({groups} groups)",
                    groups * chunks
                )
            },
        )?;
        ensure(chunks <= 65_535, "weight quantizer", || {
            format!(
                "a scale group of {group_len} weights exceeds the CUDA kernels' {} per group",
                65_535 * GROUP_CHUNK
            )
        })?;
        let base = self.ptr(&s.f64s);
        let partial = base; // [groups·chunks] at the start of the f64 scratch
        let means = base + (means_at * 8) as u64;
        let out = base + (out_at * 8) as u64;
        let g_ptr = g.map_or(Arg::Ptr(0), |g| self.p(g));
        // SAFETY: group_partial(w, g, mean, group_len, chunk_len, chunks_per_group, temperature, mode, partial):
        // w (and g in mode 1) hold groups·group_len elements, mean holds `groups` f64 (read in mode 1), partial
        // groups·chunks f64; the scratch holds partial, means and out (checked above).
        unsafe {
            self.launch(
                "group_partial",
                &self.kernels.group_partial,
                // Groups on x (up to 2^31), chunks on y (at most 65535: groups of up to 2^30 weights).
                (
                    to_u32("group_partial", "groups", groups)?,
                    to_u32("group_partial", "chunks", chunks)?,
                    1,
                ),
                BLOCK,
                &[
                    self.p(w),
                    g_ptr,
                    Arg::Ptr(means),
                    Arg::U64(group_len as u64),
                    Arg::U64(GROUP_CHUNK as u64),
                    Arg::U32(chunks as u32),
                    Arg::F32(temperature),
                    Arg::U32(mode),
                    Arg::Ptr(partial),
                ],
            )?;
            // group_finish(partial, chunks_per_group, groups, group_len, out)
            self.launch(
                "group_finish",
                &self.kernels.group_finish,
                (groups.div_ceil(BLOCK as usize) as u32, 1, 1),
                BLOCK,
                &[
                    Arg::Ptr(partial),
                    Arg::U32(chunks as u32),
                    Arg::U32(groups as u32),
                    Arg::U64(group_len as u64),
                    Arg::Ptr(if mode == 0 { means } else { out }),
                ],
            )
        }
    }

    /// Scratch layout of the quantizer kernels: `[partial: groups·chunks | means: groups | term: groups]` f64.
    fn quant_scratch_len(w: usize, group_len: usize) -> (usize, usize, usize) {
        let groups = w / group_len;
        let partial = groups * group_len.div_ceil(GROUP_CHUNK);
        (partial, partial + groups, partial + 3 * groups)
    }

    /// First pass of Σx² or Σa·b into `slots[slot]` (f64 scratch after `partial_len` partials).
    fn reduce_into_slot(&self, s: &Scratch, a: &CudaBuf, b: Option<&CudaBuf>, slot: usize) -> EngineResult<()> {
        if let Some(b) = b {
            ensure(b.len == a.len, "dot", || {
                format!("operands of {} and {} elements", a.len, b.len)
            })?;
        }
        // The kernels write 1024 partials and then slot `slot` after them through raw device pointers.
        ensure(s.f64s.len() > 1024 + slot, "reduction", || {
            format!(
                "scratch of {} f64 has no slot {slot} after the 1024 partials",
                s.f64s.len()
            )
        })?;
        let n = a.len as u64;
        let blocks = blocks_for(n).min(1024);
        let partial = self.ptr(&s.f64s);
        let slots = partial + 1024 * 8;
        // SAFETY: sum_squares_partial(x, n, partial) / dot_partial(a, b, n, partial) read n elements and write
        // `blocks` ≤ 1024 partials; sum_partials(partial, count, out, slot) writes slots[slot], inside the scratch
        // (checked above to hold 1024 partials and the slot).
        unsafe {
            match b {
                None => self.launch(
                    "sum_squares",
                    &self.kernels.sum_squares_partial,
                    (blocks, 1, 1),
                    BLOCK,
                    &[self.p(a), Arg::U64(n), Arg::Ptr(partial)],
                )?,
                Some(b) => self.launch(
                    "dot",
                    &self.kernels.dot_partial,
                    (blocks, 1, 1),
                    BLOCK,
                    &[self.p(a), self.p(b), Arg::U64(n), Arg::Ptr(partial)],
                )?,
            }
            self.launch(
                "sum_partials",
                &self.kernels.sum_partials,
                (1, 1, 1),
                BLOCK,
                &[
                    Arg::Ptr(partial),
                    Arg::U32(blocks),
                    Arg::Ptr(slots),
                    Arg::U32(slot as u32),
                ],
            )
        }
    }
}

fn load_image(ctx: &Arc<CudaContext>, image: compile::Image) -> Result<Arc<CudaModule>, CudaError> {
    let ptx = match image {
        compile::Image::Cubin(bytes) => Ptx::from_binary(bytes),
        compile::Image::Ptx(text) => Ptx::from_src(text),
    };
    ctx.load_module(ptx).map_err(call("module load"))
}

impl CudaIds {
    fn new(backend: &CudaBackend, ids: &[u32]) -> EngineResult<Self> {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        // Stable: rows of one id stay in token order (the CPU's order of additions).
        order.sort_by_key(|&r| ids[r as usize]);
        let (mut seg_start, mut seg_id) = (Vec::new(), Vec::new());
        for (k, &r) in order.iter().enumerate() {
            let id = ids[r as usize];
            if seg_id.last() != Some(&id) {
                seg_start.push(k as u32);
                seg_id.push(id);
            }
        }
        seg_start.push(ids.len() as u32);
        Ok(Self {
            host: ids.to_vec(),
            ids: backend.upload_slice(ids)?,
            order: backend.upload_slice(&order)?,
            seg_start: backend.upload_slice(&seg_start)?,
            seg_id: backend.upload_slice(&seg_id)?,
            segments: seg_id.len(),
        })
    }
}

impl Backend for CudaBackend {
    type Elem = f32;
    type Buf = CudaBuf;
    type Ids = CudaIds;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, len: usize) -> EngineResult<CudaBuf> {
        Ok(CudaBuf {
            data: self.slice_alloc::<f32>(len)?,
            len,
        })
    }

    fn buf_len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn upload(&self, data: &[f32]) -> EngineResult<CudaBuf> {
        Ok(CudaBuf {
            data: self.upload_slice(data)?,
            len: data.len(),
        })
    }

    fn download(&self, buf: &CudaBuf) -> EngineResult<Vec<f32>> {
        let mut host = vec![0.0f32; buf.len];
        if buf.len > 0 {
            self.stream
                .memcpy_dtoh(&buf.data.slice(0..buf.len), &mut host)
                .map_err(engine("download"))?;
            self.stream.synchronize().map_err(engine("synchronize"))?;
        }
        Ok(host)
    }

    fn write(&self, dst: &mut CudaBuf, data: &[f32]) -> EngineResult<()> {
        same_len("write", "destination", dst.len, data.len())?;
        if !data.is_empty() {
            self.stream
                .memcpy_htod(data, &mut dst.data.slice_mut(0..data.len()))
                .map_err(engine("upload"))?;
        }
        Ok(())
    }

    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf) -> EngineResult<()> {
        same_len("copy", "destination", dst.len, src.len)?;
        if src.len > 0 {
            self.stream
                .memcpy_dtod(&src.data.slice(0..src.len), &mut dst.data.slice_mut(0..src.len))
                .map_err(engine("copy"))?;
        }
        Ok(())
    }

    fn upload_ids(&self, ids: &[u32]) -> EngineResult<CudaIds> {
        CudaIds::new(self, ids)
    }

    fn write_ids(&self, dst: &mut CudaIds, ids: &[u32]) -> EngineResult<()> {
        if dst.host != ids {
            *dst = CudaIds::new(self, ids)?;
        }
        Ok(())
    }

    fn ids_len(&self, ids: &CudaIds) -> usize {
        ids.host.len()
    }

    fn fill(&self, buf: &mut CudaBuf, value: f32) -> EngineResult<()> {
        let n = buf.len as u64;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: fill_f32(x, value, n) writes n elements of `buf`.
        unsafe {
            self.launch(
                "fill",
                &self.kernels.fill_f32,
                (blocks_for(n), 1, 1),
                BLOCK,
                &[self.p(buf), Arg::F32(value), Arg::U64(n)],
            )
        }
    }

    fn synchronize(&self) -> EngineResult<()> {
        self.stream.synchronize().map_err(engine("synchronize"))
    }

    fn sum_squares(&self, buf: &CudaBuf) -> EngineResult<f64> {
        self.sum_squares_all(&[buf])
    }

    fn sum_squares_all(&self, bufs: &[&CudaBuf]) -> EngineResult<f64> {
        let slots = bufs.len();
        self.with_scratch(1024 + slots + 1, 0, |s| {
            // An empty buffer's slot gets 0 (its partial-sum kernel runs no iteration).
            for (i, b) in bufs.iter().enumerate() {
                self.reduce_into_slot(s, b, None, i)?;
            }
            let slots_ptr = self.ptr(&s.f64s) + 1024 * 8;
            let out = slots_ptr + (slots * 8) as u64;
            // SAFETY: sum_slots(slots, count, out) reads `slots` f64 and writes one, inside the scratch.
            unsafe {
                self.launch(
                    "sum_slots",
                    &self.kernels.sum_slots,
                    (1, 1, 1),
                    32,
                    &[Arg::Ptr(slots_ptr), Arg::U32(slots as u32), Arg::Ptr(out)],
                )?;
            }
            Ok(self.download_f64(&s.f64s, 1024 + slots + 1)?[1024 + slots])
        })
    }

    fn dot(&self, a: &CudaBuf, b: &CudaBuf) -> EngineResult<f64> {
        same_len("dot", "b", b.len, a.len)?;
        if a.len == 0 {
            return Ok(0.0);
        }
        self.with_scratch(1024 + 1, 0, |s| {
            self.reduce_into_slot(s, a, Some(b), 0)?;
            Ok(self.download_f64(&s.f64s, 1025)?[1024])
        })
    }

    fn axpy(&self, y: &mut CudaBuf, alpha: f64, x: &CudaBuf) -> EngineResult<()> {
        same_len("axpy", "x", x.len, y.len)?;
        let n = y.len as u64;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: axpy_f32(y, x, alpha, n) on n elements of each.
        unsafe {
            self.launch(
                "axpy",
                &self.kernels.axpy_f32,
                (blocks_for(n), 1, 1),
                BLOCK,
                &[self.p(y), self.p(x), Arg::F32(alpha as f32), Arg::U64(n)],
            )
        }
    }

    fn matmul(&self, out: &mut CudaBuf, a: &CudaBuf, b: &CudaBuf, spec: GemmSpec) -> EngineResult<()> {
        let GemmSpec {
            m,
            n,
            k,
            a_transposed,
            b_transposed,
            mode,
        } = spec;
        same_len("matmul", "a", a.len, m * k)?;
        same_len("matmul", "b", b.len, k * n)?;
        same_len("matmul", "out", out.len, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let dim = |v: usize| {
            i32::try_from(v).map_err(|_| EngineError::Shape {
                op: "matmul",
                detail: format!("dimension {v} exceeds cuBLAS's 32-bit range"),
            })
        };
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands; a row-major matrix
        // read column-major is its transpose, so an untransposed operand is passed as is (OP_N).
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let (op_b, ldb) = if b_transposed {
            (CUBLAS_OP_T, k)
        } else {
            (CUBLAS_OP_N, n)
        };
        let (op_a, lda) = if a_transposed {
            (CUBLAS_OP_T, m)
        } else {
            (CUBLAS_OP_N, k)
        };
        let alpha = 1.0f32;
        let beta = if mode == WriteMode::Accumulate { 1.0f32 } else { 0.0f32 };
        // SAFETY: the lengths checked above cover every element cuBLAS addresses with these dimensions and
        // leading dimensions; alpha and beta are host scalars (the handle's default pointer mode).
        unsafe {
            blas::sgemm(
                *self.blas.handle(),
                op_b,
                op_a,
                dim(n)?,
                dim(m)?,
                dim(k)?,
                &alpha,
                self.ptr(&b.data) as *const f32,
                dim(ldb.max(1))?,
                self.ptr(&a.data) as *const f32,
                dim(lda.max(1))?,
                &beta,
                self.ptr(&out.data) as *mut f32,
                dim(n)?,
            )
        }
        .map_err(engine("cublasSgemm"))
    }

    fn quantize_ternary_hard(&self, out: &mut CudaBuf, w: &CudaBuf, group_len: usize) -> EngineResult<()> {
        check_groups("quantize_ternary_hard", out.len, w.len, group_len)?;
        if w.len == 0 {
            return Ok(());
        }
        let (means_at, _, len) = Self::quant_scratch_len(w.len, group_len);
        self.with_scratch(len, 0, |s| {
            self.group_reduce(s, w, None, group_len, 0.0, 0, means_at, means_at)?;
            let n = w.len as u64;
            let means = self.ptr(&s.f64s) + (means_at * 8) as u64;
            // SAFETY: quant_hard(out, w, mean, group_len, n): n elements of out/w, n/group_len means.
            unsafe {
                self.launch(
                    "quant_hard",
                    &self.kernels.quant_hard,
                    (blocks_for(n), 1, 1),
                    BLOCK,
                    &[
                        self.p(out),
                        self.p(w),
                        Arg::Ptr(means),
                        Arg::U64(group_len as u64),
                        Arg::U64(n),
                    ],
                )
            }
        })
    }

    fn quantize_ternary_soft(
        &self,
        out: &mut CudaBuf,
        w: &CudaBuf,
        group_len: usize,
        state: SoftState,
    ) -> EngineResult<()> {
        check_groups("quantize_ternary_soft", out.len, w.len, group_len)?;
        state.validate()?;
        if w.len == 0 {
            return Ok(());
        }
        let (means_at, _, len) = Self::quant_scratch_len(w.len, group_len);
        self.with_scratch(len, 0, |s| {
            self.group_reduce(s, w, None, group_len, 0.0, 0, means_at, means_at)?;
            let n = w.len as u64;
            let means = self.ptr(&s.f64s) + (means_at * 8) as u64;
            // SAFETY: quant_soft(out, w, mean, group_len, n, temperature, pressure), sizes as quant_hard.
            unsafe {
                self.launch(
                    "quant_soft",
                    &self.kernels.quant_soft,
                    (blocks_for(n), 1, 1),
                    BLOCK,
                    &[
                        self.p(out),
                        self.p(w),
                        Arg::Ptr(means),
                        Arg::U64(group_len as u64),
                        Arg::U64(n),
                        Arg::F32(state.temperature as f32),
                        Arg::F32(state.pressure as f32),
                    ],
                )
            }
        })
    }

    fn quantize_ternary_soft_backward(
        &self,
        grad: &mut CudaBuf,
        w: &CudaBuf,
        group_len: usize,
        state: SoftState,
    ) -> EngineResult<()> {
        check_groups("quantize_ternary_soft_backward", grad.len, w.len, group_len)?;
        state.validate()?;
        // T = 0: the straight-through identity, whatever the pressure (as on the CPU). f32 rounding of a tiny
        // positive T is never 0 on the device: the CPU also converts T to the element type before using it.
        if state.temperature == 0.0 || w.len == 0 {
            return Ok(());
        }
        let t = state.temperature as f32;
        let (means_at, term_at, len) = Self::quant_scratch_len(w.len, group_len);
        self.with_scratch(len, 0, |s| {
            self.group_reduce(s, w, None, group_len, t, 0, means_at, means_at)?;
            self.group_reduce(s, w, Some(grad), group_len, t, 1, means_at, term_at)?;
            let n = w.len as u64;
            let base = self.ptr(&s.f64s);
            // SAFETY: quant_soft_bwd(grad, w, mean, term, group_len, n, temperature, pressure): n elements,
            // n/group_len means and terms.
            unsafe {
                self.launch(
                    "quant_soft_bwd",
                    &self.kernels.quant_soft_bwd,
                    (blocks_for(n), 1, 1),
                    BLOCK,
                    &[
                        self.p(grad),
                        self.p(w),
                        Arg::Ptr(base + (means_at * 8) as u64),
                        Arg::Ptr(base + (term_at * 8) as u64),
                        Arg::U64(group_len as u64),
                        Arg::U64(n),
                        Arg::F32(t),
                        Arg::F32(state.pressure as f32),
                    ],
                )
            }
        })
    }

    fn quantize_weight_integer(
        &self,
        out: &mut CudaBuf,
        w: &CudaBuf,
        cols: usize,
        precision: LinearPrecision,
    ) -> EngineResult<()> {
        rows_of("quantize_weight_integer", "w", w.len, cols)?;
        same_len("quantize_weight_integer", "out", out.len, w.len)?;
        if let LinearPrecision::Int4 { group } = precision {
            ensure(group > 0, "quantize_weight_integer", || "int4 group 0".into())?;
        }
        // Through the host with the CPU encoder, so the stored values are the format's by construction: only the
        // few tensors a mixed-precision budget keeps at int4/int8 take this path, once per step (a device kernel
        // is the next step if a profile shows it).
        let host = self.download(w)?;
        let mut q = vec![0.0f32; host.len()];
        super::quant::integer::quantize_cpu(&mut q, &host, cols, precision);
        self.write(out, &q)
    }

    fn fake_quantize_int8_rows(&self, out: &mut CudaBuf, x: &CudaBuf, cols: usize) -> EngineResult<()> {
        let rows = rows_of("fake_quantize_int8_rows", "x", x.len, cols)?;
        same_len("fake_quantize_int8_rows", "out", out.len, x.len)?;
        if rows == 0 {
            return Ok(());
        }
        // SAFETY: fake_quant_int8_rows(out, x, cols), one block per row of `cols` elements.
        unsafe {
            self.launch(
                "fake_quantize_int8_rows",
                &self.kernels.fake_quant_int8_rows,
                (to_u32("fake_quantize_int8_rows", "rows", rows)?, 1, 1),
                BLOCK,
                &[
                    self.p(out),
                    self.p(x),
                    Arg::U32(to_u32("fake_quantize_int8_rows", "cols", cols)?),
                ],
            )
        }
    }

    fn embedding_forward(&self, out: &mut CudaBuf, table: &CudaBuf, tokens: &CudaIds, dim: usize) -> EngineResult<()> {
        let vocab = rows_of("embedding_forward", "table", table.len, dim)?;
        same_len("embedding_forward", "out", out.len, tokens.host.len() * dim)?;
        check_tokens(&tokens.host, vocab)?;
        let n = out.len as u64;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: embedding_fwd(out, table, ids, rows, dim, vocab): rows·dim outputs, ids < vocab checked.
        unsafe {
            self.launch(
                "embedding_forward",
                &self.kernels.embedding_fwd,
                (blocks_for(n), 1, 1),
                BLOCK,
                &[
                    self.p(out),
                    self.p(table),
                    Arg::Ptr(self.ptr(&tokens.ids)),
                    Arg::U32(to_u32("embedding_forward", "rows", tokens.host.len())?),
                    Arg::U32(to_u32("embedding_forward", "dim", dim)?),
                    Arg::U32(to_u32("embedding_forward", "vocab", vocab)?),
                ],
            )
        }
    }

    fn embedding_backward(
        &self,
        dtable: &mut CudaBuf,
        dout: &CudaBuf,
        tokens: &CudaIds,
        dim: usize,
    ) -> EngineResult<()> {
        let vocab = rows_of("embedding_backward", "dtable", dtable.len, dim)?;
        same_len("embedding_backward", "dout", dout.len, tokens.host.len() * dim)?;
        check_tokens(&tokens.host, vocab)?;
        if tokens.segments == 0 {
            return Ok(());
        }
        // SAFETY: embedding_bwd(dtable, dout, order, seg_start, seg_id, dim, vocab), grid (segments, column
        // bands): order has rows entries < rows, seg_start segments + 1, seg_id segments.
        unsafe {
            self.launch(
                "embedding_backward",
                &self.kernels.embedding_bwd,
                (
                    to_u32("embedding_backward", "segments", tokens.segments)?,
                    to_u32("embedding_backward", "dim", dim.div_ceil(BLOCK as usize))?,
                    1,
                ),
                BLOCK,
                &[
                    self.p(dtable),
                    self.p(dout),
                    Arg::Ptr(self.ptr(&tokens.order)),
                    Arg::Ptr(self.ptr(&tokens.seg_start)),
                    Arg::Ptr(self.ptr(&tokens.seg_id)),
                    Arg::U32(dim as u32),
                    Arg::U32(vocab as u32),
                ],
            )
        }
    }

    fn rmsnorm_forward(
        &self,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        weight: &CudaBuf,
        eps: f64,
    ) -> EngineResult<()> {
        let rows = rows_of("rmsnorm_forward", "x", x.len, weight.len)?;
        same_len("rmsnorm_forward", "out", out.len, x.len)?;
        same_len("rmsnorm_forward", "rstd", rstd.len, rows)?;
        if rows == 0 {
            return Ok(());
        }
        // SAFETY: rmsnorm_fwd(out, rstd, x, w, cols, eps), one block per row.
        unsafe {
            self.launch(
                "rmsnorm_forward",
                &self.kernels.rmsnorm_fwd,
                (to_u32("rmsnorm_forward", "rows", rows)?, 1, 1),
                BLOCK,
                &[
                    self.p(out),
                    self.p(rstd),
                    self.p(x),
                    self.p(weight),
                    Arg::U32(to_u32("rmsnorm_forward", "cols", weight.len)?),
                    Arg::F32(eps as f32),
                ],
            )
        }
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut CudaBuf,
        dweight: &mut CudaBuf,
        dout: &CudaBuf,
        x: &CudaBuf,
        weight: &CudaBuf,
        rstd: &CudaBuf,
        dx_mode: WriteMode,
    ) -> EngineResult<()> {
        let rows = rows_of("rmsnorm_backward", "x", x.len, weight.len)?;
        same_len("rmsnorm_backward", "dx", dx.len, x.len)?;
        same_len("rmsnorm_backward", "dout", dout.len, x.len)?;
        same_len("rmsnorm_backward", "dweight", dweight.len, weight.len)?;
        same_len("rmsnorm_backward", "rstd", rstd.len, rows)?;
        if rows == 0 {
            return Ok(());
        }
        let cols = to_u32("rmsnorm_backward", "cols", weight.len)?;
        let rows32 = to_u32("rmsnorm_backward", "rows", rows)?;
        let chunks = rows.div_ceil(NORM_ROWS_PER_CHUNK);
        self.with_scratch(0, chunks * weight.len, |s| {
            let partial = self.ptr(&s.f32s);
            let bands = weight.len.div_ceil(BLOCK as usize) as u32;
            // SAFETY: rmsnorm_bwd_dx(dx, dout, x, w, rstd, cols, accumulate): one block per row;
            // rmsnorm_bwd_dw_partial(partial, dout, x, rstd, rows, cols, rows_per_chunk): chunks·cols partials
            // in the f32 scratch; rmsnorm_bwd_dw_final(dw, partial, chunks, cols).
            unsafe {
                self.launch(
                    "rmsnorm_backward",
                    &self.kernels.rmsnorm_bwd_dx,
                    (rows32, 1, 1),
                    BLOCK,
                    &[
                        self.p(dx),
                        self.p(dout),
                        self.p(x),
                        self.p(weight),
                        self.p(rstd),
                        Arg::U32(cols),
                        Arg::U32(u32::from(dx_mode == WriteMode::Accumulate)),
                    ],
                )?;
                self.launch(
                    "rmsnorm_backward",
                    &self.kernels.rmsnorm_bwd_dw_partial,
                    (bands, chunks as u32, 1),
                    BLOCK,
                    &[
                        Arg::Ptr(partial),
                        self.p(dout),
                        self.p(x),
                        self.p(rstd),
                        Arg::U32(rows32),
                        Arg::U32(cols),
                        Arg::U32(NORM_ROWS_PER_CHUNK as u32),
                    ],
                )?;
                self.launch(
                    "rmsnorm_backward",
                    &self.kernels.rmsnorm_bwd_dw_final,
                    (bands, 1, 1),
                    BLOCK,
                    &[
                        self.p(dweight),
                        Arg::Ptr(partial),
                        Arg::U32(chunks as u32),
                        Arg::U32(cols),
                    ],
                )
            }
        })
    }

    fn rope(&self, x: &mut CudaBuf, table: &CudaBuf, dims: RopeDims, direction: RopeDirection) -> EngineResult<()> {
        check_rope(x.len, table.len, &dims)?;
        let rows = x.len / (dims.n_heads * dims.head_dim).max(1);
        let pairs = (x.len / 2) as u64;
        if pairs == 0 {
            return Ok(());
        }
        // SAFETY: rope_f32(x, table, rows, seq_len, n_heads, head_dim, half_style, inverse): rows·n_heads·head_dim
        // elements of x, seq_len·head_dim of the table (checked).
        unsafe {
            self.launch(
                "rope",
                &self.kernels.rope_f32,
                (blocks_for(pairs), 1, 1),
                BLOCK,
                &[
                    self.p(x),
                    self.p(table),
                    Arg::U32(to_u32("rope", "rows", rows)?),
                    Arg::U32(dims.seq_len as u32),
                    Arg::U32(dims.n_heads as u32),
                    Arg::U32(dims.head_dim as u32),
                    Arg::U32(u32::from(dims.style == tern_format::RopeStyle::Half)),
                    Arg::U32(u32::from(direction == RopeDirection::Inverse)),
                ],
            )
        }
    }

    fn attention_saved_len(&self, dims: &AttentionDims) -> usize {
        dims.batch * dims.n_heads * dims.seq_len
    }

    fn attention_scratch_len(&self, dims: &AttentionDims) -> usize {
        dims.batch * dims.n_heads * dims.seq_len
    }

    fn attention_forward(
        &self,
        out: &mut CudaBuf,
        probs: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        dims: AttentionDims,
    ) -> EngineResult<()> {
        check_attention_dims(&dims)?;
        same_len("attention_forward", "q", q.len, dims.rows() * dims.q_dim())?;
        same_len("attention_forward", "out", out.len, dims.rows() * dims.q_dim())?;
        same_len("attention_forward", "k", k.len, dims.rows() * dims.kv_dim())?;
        same_len("attention_forward", "v", v.len, dims.rows() * dims.kv_dim())?;
        same_len("attention_forward", "lse", probs.len, self.attention_saved_len(&dims))?;
        if dims.batch == 0 {
            return Ok(());
        }
        let kern = self.attention_kernels(dims.head_dim)?;
        let t = to_u32("attention_forward", "seq_len", dims.seq_len)?;
        let scale = (1.0 / (dims.head_dim as f64).sqrt()) as f32;
        // SAFETY: attn_fwd(out, lse, q, k, v, T, H, HKV, scale), grid (query tiles, heads, batch): the lengths
        // checked above are what the kernel addresses.
        unsafe {
            self.launch(
                "attention_forward",
                &kern.fwd,
                (t.div_ceil(kern.tile), dims.n_heads as u32, dims.batch as u32),
                kern.threads,
                &[
                    self.p(out),
                    self.p(probs),
                    self.p(q),
                    self.p(k),
                    self.p(v),
                    Arg::U32(t),
                    Arg::U32(dims.n_heads as u32),
                    Arg::U32(dims.n_kv_heads as u32),
                    Arg::F32(scale),
                ],
            )
        }
    }

    fn attention_backward(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        scratch: &mut CudaBuf,
        dout: &CudaBuf,
        out: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        probs: &CudaBuf,
        dims: AttentionDims,
    ) -> EngineResult<()> {
        check_attention_dims(&dims)?;
        let (qn, kvn) = (dims.rows() * dims.q_dim(), dims.rows() * dims.kv_dim());
        let saved = self.attention_saved_len(&dims);
        for (what, len, want) in [
            ("dq", dq.len, qn),
            ("dout", dout.len, qn),
            ("out", out.len, qn),
            ("q", q.len, qn),
            ("dk", dk.len, kvn),
            ("dv", dv.len, kvn),
            ("k", k.len, kvn),
            ("v", v.len, kvn),
            ("lse", probs.len, saved),
            ("scratch", scratch.len, saved),
        ] {
            same_len("attention_backward", what, len, want)?;
        }
        if dims.batch == 0 {
            return Ok(());
        }
        let kern = self.attention_kernels(dims.head_dim)?;
        let t = to_u32("attention_backward", "seq_len", dims.seq_len)?;
        let (b, h, hkv) = (dims.batch as u32, dims.n_heads as u32, dims.n_kv_heads as u32);
        let scale = (1.0 / (dims.head_dim as f64).sqrt()) as f32;
        let warps = (dims.batch * dims.seq_len * dims.n_heads) as u64;
        // SAFETY: attn_bwd_delta(delta, out, dout, B, T, H): one warp per (row, head), grid in whole warps,
        // B·H·T deltas in `scratch`; attn_bwd_dq(dq, dout, q, k, v, lse, delta, T, H, HKV, scale) and
        // attn_bwd_dkdv(dk, dv, dout, q, k, v, lse, delta, T, H, HKV, scale) address the lengths checked above.
        unsafe {
            self.launch(
                "attention_backward",
                &kern.delta,
                ((warps * 32).div_ceil(BLOCK as u64) as u32, 1, 1),
                BLOCK,
                &[
                    self.p(scratch),
                    self.p(out),
                    self.p(dout),
                    Arg::U32(b),
                    Arg::U32(t),
                    Arg::U32(h),
                ],
            )?;
            self.launch(
                "attention_backward",
                &kern.dq,
                (t.div_ceil(kern.tile), h, b),
                kern.threads,
                &[
                    self.p(dq),
                    self.p(dout),
                    self.p(q),
                    self.p(k),
                    self.p(v),
                    self.p(probs),
                    self.p(scratch),
                    Arg::U32(t),
                    Arg::U32(h),
                    Arg::U32(hkv),
                    Arg::F32(scale),
                ],
            )?;
            self.launch(
                "attention_backward",
                &kern.dkdv,
                (t.div_ceil(kern.tile), hkv, b),
                kern.threads,
                &[
                    self.p(dk),
                    self.p(dv),
                    self.p(dout),
                    self.p(q),
                    self.p(k),
                    self.p(v),
                    self.p(probs),
                    self.p(scratch),
                    Arg::U32(t),
                    Arg::U32(h),
                    Arg::U32(hkv),
                    Arg::F32(scale),
                ],
            )
        }
    }

    fn gated_forward(&self, out: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf, act: GatedActivation) -> EngineResult<()> {
        same_len("gated_forward", "up", up.len, gate.len)?;
        same_len("gated_forward", "out", out.len, gate.len)?;
        let n = gate.len as u64;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: gated_fwd(out, gate, up, act, n) on n elements of each.
        unsafe {
            self.launch(
                "gated_forward",
                &self.kernels.gated_fwd,
                (blocks_for(n), 1, 1),
                BLOCK,
                &[
                    self.p(out),
                    self.p(gate),
                    self.p(up),
                    Arg::U32(activation_code(act)),
                    Arg::U64(n),
                ],
            )
        }
    }

    fn gated_backward(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dout: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        act: GatedActivation,
    ) -> EngineResult<()> {
        for (what, len) in [
            ("up", up.len),
            ("dgate", dgate.len),
            ("dup", dup.len),
            ("dout", dout.len),
        ] {
            same_len("gated_backward", what, len, gate.len)?;
        }
        let n = gate.len as u64;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: gated_bwd(dgate, dup, dout, gate, up, act, n) on n elements of each.
        unsafe {
            self.launch(
                "gated_backward",
                &self.kernels.gated_bwd,
                (blocks_for(n), 1, 1),
                BLOCK,
                &[
                    self.p(dgate),
                    self.p(dup),
                    self.p(dout),
                    self.p(gate),
                    self.p(up),
                    Arg::U32(activation_code(act)),
                    Arg::U64(n),
                ],
            )
        }
    }

    fn cross_entropy(
        &self,
        losses: &mut CudaBuf,
        grad: Option<LossGrad<'_, CudaBuf>>,
        logits: &CudaBuf,
        targets: &CudaIds,
        vocab: usize,
    ) -> EngineResult<()> {
        let rows = rows_of("cross_entropy", "logits", logits.len, vocab)?;
        same_len("cross_entropy", "targets", targets.host.len(), rows)?;
        same_len("cross_entropy", "losses", losses.len, rows)?;
        let bad = targets
            .host
            .iter()
            .position(|&t| t != IGNORE_INDEX && t as usize >= vocab);
        ensure(bad.is_none(), "cross_entropy", || {
            format!("target at row {bad:?} is outside the vocabulary {vocab}")
        })?;
        if let Some(g) = &grad {
            same_len("cross_entropy", "dlogits", g.dlogits.len, logits.len)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let mode = loss_mode(&grad);
        let (dz, scale) = grad.map_or((Arg::Ptr(0), 0.0), |g| (self.p(g.dlogits), g.scale));
        // SAFETY: cross_entropy_fwd(losses, dlogits, logits, targets, vocab, scale, mode): one block per row of
        // `vocab` logits; dlogits (same length, checked) is only touched when mode != 0.
        unsafe {
            self.launch(
                "cross_entropy",
                &self.kernels.cross_entropy_fwd,
                (to_u32("cross_entropy", "rows", rows)?, 1, 1),
                BLOCK,
                &[
                    self.p(losses),
                    dz,
                    self.p(logits),
                    Arg::Ptr(self.ptr(&targets.ids)),
                    Arg::U32(to_u32("cross_entropy", "vocab", vocab)?),
                    Arg::F64(scale),
                    Arg::U32(mode),
                ],
            )
        }
    }

    fn kl_divergence(
        &self,
        losses: &mut CudaBuf,
        grad: Option<LossGrad<'_, CudaBuf>>,
        logits: &CudaBuf,
        teacher_logits: &CudaBuf,
        vocab: usize,
        temperature: f64,
    ) -> EngineResult<()> {
        let rows = rows_of("kl_divergence", "logits", logits.len, vocab)?;
        same_len("kl_divergence", "teacher_logits", teacher_logits.len, logits.len)?;
        same_len("kl_divergence", "losses", losses.len, rows)?;
        ensure(temperature.is_finite() && temperature > 0.0, "kl_divergence", || {
            format!("temperature {temperature} must be finite and positive")
        })?;
        if let Some(g) = &grad {
            same_len("kl_divergence", "dlogits", g.dlogits.len, logits.len)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let mode = loss_mode(&grad);
        let (dz, scale) = grad.map_or((Arg::Ptr(0), 0.0), |g| (self.p(g.dlogits), g.scale));
        // SAFETY: kl_div_fwd(losses, dlogits, logits, teacher, vocab, temperature, g_scale, mode): one block per
        // row; lengths checked above.
        unsafe {
            self.launch(
                "kl_divergence",
                &self.kernels.kl_div_fwd,
                (to_u32("kl_divergence", "rows", rows)?, 1, 1),
                BLOCK,
                &[
                    self.p(losses),
                    dz,
                    self.p(logits),
                    self.p(teacher_logits),
                    Arg::U32(to_u32("kl_divergence", "vocab", vocab)?),
                    Arg::F64(temperature),
                    Arg::F64(scale * temperature),
                    Arg::U32(mode),
                ],
            )
        }
    }

    fn mse_loss(
        &self,
        losses: &mut CudaBuf,
        grad: Option<LossGrad<'_, CudaBuf>>,
        out: &CudaBuf,
        target: &CudaBuf,
        cols: usize,
        normalize: bool,
    ) -> EngineResult<()> {
        let rows = rows_of("mse_loss", "out", out.len, cols)?;
        same_len("mse_loss", "target", target.len, out.len)?;
        same_len("mse_loss", "losses", losses.len, rows)?;
        if let Some(g) = &grad {
            same_len("mse_loss", "dout", g.dlogits.len, out.len)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let mode = loss_mode(&grad);
        let (dy, scale) = grad.map_or((Arg::Ptr(0), 0.0), |g| (self.p(g.dlogits), g.scale));
        // SAFETY: mse_fwd(losses, dout, out, target, cols, normalize, scale, mode): one block per row.
        unsafe {
            self.launch(
                "mse_loss",
                &self.kernels.mse_fwd,
                (to_u32("mse_loss", "rows", rows)?, 1, 1),
                BLOCK,
                &[
                    self.p(losses),
                    dy,
                    self.p(out),
                    self.p(target),
                    Arg::U32(to_u32("mse_loss", "cols", cols)?),
                    Arg::U32(u32::from(normalize)),
                    Arg::F64(scale),
                    Arg::U32(mode),
                ],
            )
        }
    }

    fn adamw_update(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        hp: &AdamWParams,
    ) -> EngineResult<()> {
        for (what, len) in [("grad", grad.len), ("m", m.len), ("v", v.len)] {
            same_len("adamw_update", what, len, param.len)?;
        }
        let n = param.len as u64;
        if n == 0 {
            return Ok(());
        }
        let c = |x: f64| Arg::F32(x as f32);
        // SAFETY: adamw_f32(p, grad, m, v, lr, b1, b2, eps, decay, inv_bc1, inv_bc2, g_scale, n) on n elements.
        unsafe {
            self.launch(
                "adamw_update",
                &self.kernels.adamw_f32,
                (blocks_for(n), 1, 1),
                BLOCK,
                &[
                    self.p(param),
                    self.p(grad),
                    self.p(m),
                    self.p(v),
                    c(hp.lr),
                    c(hp.beta1),
                    c(hp.beta2),
                    c(hp.eps),
                    c(1.0 - hp.lr * hp.weight_decay),
                    c(1.0 / hp.bias_correction1),
                    c(1.0 / hp.bias_correction2),
                    c(hp.grad_scale),
                    Arg::U64(n),
                ],
            )
        }
    }
}

fn activation_code(act: GatedActivation) -> u32 {
    match act {
        GatedActivation::Silu => 0,
        GatedActivation::ReluSquared => 1,
    }
}

/// Compiles every kernel with NVRTC for `arch` (e.g. `sm_90`) without a device: NVRTC alone is enough. For the
/// CPU-only test suite, which keeps the kernels compiling.
pub fn compile_all_kernels(arch: &str, head_dims: &[usize]) -> Result<Vec<(String, usize)>, CudaError> {
    probe_nvrtc()?;
    let mut sizes = Vec::new();
    let size = |image: &compile::Image| match image {
        compile::Image::Cubin(b) => b.len(),
        compile::Image::Ptx(t) => t.len(),
    };
    let image = compile::compile(&compile::main_module_source(), "tern_kernels.cu", arch)?;
    sizes.push(("tern_kernels.cu".to_string(), size(&image)));
    for &d in head_dims {
        let name = format!("tern_attention_d{d}.cu");
        let image = compile::compile(&compile::attention_module_source(d), &name, arch)?;
        sizes.push((name, size(&image)));
    }
    Ok(sizes)
}

/// `QUANT_EPS` is baked into `kernels/quant.cu`; this keeps the two from drifting apart.
const _: () = assert!(QUANT_EPS == 1e-5);
