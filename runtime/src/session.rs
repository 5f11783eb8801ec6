//! `Session`: the forward pass over one sequence, with every buffer (activations, int8 rows, RoPE tables,
//! attention scores, KV cache, logits, sampling scratch) carved from the caller's arena. Nothing on the
//! inference path allocates.
//!
//! Prefill runs the prompt in batches of up to `max_batch` tokens: every matrix is read once per batch and each
//! weight row is applied to all of the batch's tokens while it is in cache.
//!
//! Positions past the context are refused with `RuntimeError::ContextFull` before anything is computed (the
//! session is unchanged); the caller decides what to do (stop, or `reset` and start over).

use half::f16;
use tern_format::{Architecture, ModelConfig};

use crate::arena::{plan, Carver, KvCache, SessionOptions};
use crate::error::RuntimeError;
use crate::kernels::{self, quantize_rows, ActFormat, ActQuant, Activations, Kernels, Matrix, QuantizedActs, CHUNK};
use crate::model::Model;
use crate::ops::{self, KvElem};
use crate::parallel::{par_columns, par_rows_fused, ColTask, RowsTask, Split, MAX_FUSED, MIN_WORK_PER_THREAD};
use crate::pool::Pool;
use crate::sampling::Sampler;

/// Which positions of a forward pass get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (an intermediate prefill batch).
    None,
    /// The last token only (generation).
    Last,
    /// Every token of the batch (perplexity).
    All,
}

struct Buffers<'s> {
    x: &'s mut [f32],
    xb: &'s mut [f32],
    q: &'s mut [f32],
    att: &'s mut [f32],
    k: &'s mut [f32],
    v: &'s mut [f32],
    proj: &'s mut [f32],
    gate: &'s mut [f32],
    up: &'s mut [f32],
    xq: &'s mut [i8],
    chunk_sums: &'s mut [i32],
    quant: &'s mut [ActQuant],
    inv_freq: &'s mut [f64],
    rope: &'s mut [f32],
    scores: &'s mut [f32],
    kv: KvCache<'s>,
    logits: &'s mut [f32],
    scratch: &'s mut [f32],
    history: &'s mut [u32],
    sample_logits: &'s mut [f32],
    sample_ids: &'s mut [u32],
}

/// One sequence's inference state.
pub struct Session<'s> {
    model: &'s Model<'s>,
    kernels: &'static Kernels,
    opts: SessionOptions,
    /// Worker threads, created with the session (`opts.threads − 1` of them).
    pool: Pool,
    /// Least multiply-adds per task before a loop is split.
    min_work: usize,
    /// Most tasks any loop of the last forward pass was split into.
    max_tasks: usize,
    q_stride: usize,
    pos: usize,
    n_logits: usize,
    b: Buffers<'s>,
}

/// Dimensions used throughout the forward pass.
#[derive(Clone, Copy)]
struct Dims {
    hidden: usize,
    q_dim: usize,
    kv_dim: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
}

impl Dims {
    fn of(c: &ModelConfig) -> Self {
        Self {
            hidden: c.hidden_size as usize,
            q_dim: c.q_dim(),
            kv_dim: c.kv_dim(),
            ffn: c.ffn_size as usize,
            heads: c.n_heads as usize,
            kv_heads: c.n_kv_heads as usize,
            head_dim: c.head_dim as usize,
            eps: c.norm_eps,
        }
    }
}

impl<'s> Session<'s> {
    /// Carves a session out of `arena` (at least `opts.arena_bytes(model.config())` bytes).
    pub fn new(model: &'s Model<'s>, arena: &'s mut [u8], opts: SessionOptions) -> Result<Self, RuntimeError> {
        Self::with_pool(model, arena, opts, None)
    }

    /// `new` with worker threads made earlier (`OwnedSession` keeps them across the sessions it carves, so a
    /// call neither spawns threads nor allocates); a pool of another thread count is replaced.
    pub(crate) fn with_pool(
        model: &'s Model<'s>,
        arena: &'s mut [u8],
        opts: SessionOptions,
        pool: Option<Pool>,
    ) -> Result<Self, RuntimeError> {
        let p = plan(model.config(), &opts)?;
        let needed = p.total();
        if arena.len() < needed {
            return Err(RuntimeError::ArenaTooSmall {
                needed,
                got: arena.len(),
            });
        }
        let mut c = Carver::new(arena);
        let bt = p.batch;
        let kv_len = p
            .layers
            .checked_mul(p.context)
            .and_then(|v| v.checked_mul(p.kv_dim))
            .ok_or(RuntimeError::SizeOverflow)?;
        let b = Buffers {
            x: c.take(bt * p.hidden)?,
            xb: c.take(bt * p.hidden)?,
            q: c.take(bt * p.q_dim)?,
            att: c.take(bt * p.q_dim)?,
            k: c.take(bt * p.kv_dim)?,
            v: c.take(bt * p.kv_dim)?,
            proj: c.take(bt * p.hidden)?,
            gate: c.take(bt * p.ffn)?,
            up: c.take(bt * p.ffn)?,
            xq: c.take(bt * p.q_stride)?,
            chunk_sums: c.take(bt * (p.q_stride / CHUNK))?,
            quant: c.take(bt)?,
            inv_freq: c.take(p.head_dim / 2)?,
            rope: c.take(bt * p.head_dim)?,
            scores: c.take(p.heads * p.context)?,
            kv: match p.kv {
                crate::arena::KvPrecision::F16 => KvCache::F16 {
                    k: c.take::<f16>(kv_len)?,
                    v: c.take::<f16>(kv_len)?,
                },
                crate::arena::KvPrecision::F32 => KvCache::F32 {
                    k: c.take::<f32>(kv_len)?,
                    v: c.take::<f32>(kv_len)?,
                },
            },
            logits: c.take(bt * p.vocab)?,
            scratch: c.take(bt * p.wide)?,
            history: c.take(p.context)?,
            sample_logits: c.take(p.vocab)?,
            sample_ids: c.take(p.vocab)?,
        };
        ops::rope_inv_freq(model.config(), b.inv_freq);
        Ok(Self {
            model,
            kernels: model.kernels(),
            opts,
            pool: match pool {
                Some(pool) if pool.threads() == opts.threads.max(1) => pool,
                _ => Pool::new(opts.threads),
            },
            min_work: MIN_WORK_PER_THREAD,
            max_tasks: 0,
            q_stride: p.q_stride,
            pos: 0,
            n_logits: 0,
            b,
        })
    }

    pub fn model(&self) -> &'s Model<'s> {
        self.model
    }
    pub fn options(&self) -> &SessionOptions {
        &self.opts
    }
    /// Positions filled so far (the next token's position).
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Positions still free in the KV cache.
    pub fn remaining(&self) -> usize {
        self.opts.max_context - self.pos
    }
    /// Tokens processed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.b.history[..self.pos]
    }
    /// Forgets the sequence (the KV cache is overwritten as new tokens arrive).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.n_logits = 0;
    }
    /// Drops positions from `pos` on (e.g. to re-run a diverging suffix); no-op if `pos ≥ self.pos()`.
    pub fn truncate(&mut self, pos: usize) {
        if pos < self.pos {
            self.pos = pos;
            self.n_logits = 0;
        }
    }
    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }
    /// Uses another kernel table (e.g. `&kernels::SCALAR` to compare against a SIMD one).
    pub fn set_kernels(&mut self, k: &'static Kernels) {
        self.kernels = k;
    }
    /// Changes the thread count (≥ 1) for later passes (the worker threads are replaced here, not per pass).
    pub fn set_threads(&mut self, threads: usize) -> Result<(), RuntimeError> {
        if threads == 0 {
            return Err(RuntimeError::BadOptions("threads must be at least 1"));
        }
        if threads != self.pool.threads() {
            self.pool = Pool::new(threads);
        }
        self.opts.threads = threads;
        Ok(())
    }
    /// The worker threads back (see `with_pool`).
    pub(crate) fn into_pool(self) -> Pool {
        self.pool
    }
    /// Threads the session's loops really run on (fewer than asked if the OS refused some; 1 without `std`).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
    /// Least multiply-adds a loop must give each thread before it is split (default
    /// `parallel::MIN_WORK_PER_THREAD`; 0 splits every loop as far as its columns allow).
    pub fn set_min_work_per_thread(&mut self, work: usize) {
        self.min_work = work;
    }
    /// Most tasks any loop of the last forward pass ran as (1 = nothing was split).
    pub fn max_tasks_last_pass(&self) -> usize {
        self.max_tasks
    }
    /// Tasks that the session's worker threads (not the calling thread) have run since the threads were
    /// created: with more than one thread, evidence that loops really ran in parallel.
    pub fn worker_tasks(&self) -> usize {
        self.pool.worker_items()
    }

    /// Logits of the last forward pass: `rows()` rows of `vocab` values (one row for `Logits::Last`).
    pub fn logits(&self) -> &[f32] {
        let v = self.model.config().vocab_size as usize;
        &self.b.logits[..self.n_logits * v]
    }
    /// Row `i` of the last pass's logits.
    pub fn logits_row(&self, i: usize) -> Option<&[f32]> {
        let v = self.model.config().vocab_size as usize;
        if i < self.n_logits {
            self.b.logits.get(i * v..(i + 1) * v)
        } else {
            None
        }
    }
    /// The logits the next token would be sampled from.
    pub fn last_logits(&self) -> Result<&[f32], RuntimeError> {
        match self.n_logits {
            0 => Err(RuntimeError::NoLogits),
            n => self.logits_row(n - 1).ok_or(RuntimeError::NoLogits),
        }
    }

    fn check(&self, tokens: &[u32]) -> Result<(), RuntimeError> {
        if tokens.is_empty() {
            return Err(RuntimeError::EmptyInput);
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(RuntimeError::UnknownToken { token, vocab });
        }
        if tokens.len() > self.opts.max_context - self.pos {
            return Err(RuntimeError::ContextFull {
                pos: self.pos,
                requested: tokens.len(),
                max: self.opts.max_context,
            });
        }
        Ok(())
    }

    /// Runs the prompt in batches of `max_batch` and returns the last token's logits. The whole prompt is
    /// checked (non-empty, known ids, fits the context) before anything runs.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], RuntimeError> {
        self.check(tokens)?;
        let nb = tokens.len().div_ceil(self.opts.max_batch);
        for (i, batch) in tokens.chunks(self.opts.max_batch).enumerate() {
            let which = if i + 1 == nb { Logits::Last } else { Logits::None };
            self.forward(batch, which)?;
        }
        self.last_logits()
    }

    /// One generation step: feeds `token`, returns the logits for the next one.
    pub fn decode(&mut self, token: u32) -> Result<&[f32], RuntimeError> {
        self.forward(&[token], Logits::Last)?;
        self.last_logits()
    }

    /// Samples the next token from the last logits (repetition penalty over this session's tokens).
    pub fn sample(&mut self, sampler: &mut Sampler) -> Result<u32, RuntimeError> {
        if self.n_logits == 0 {
            return Err(RuntimeError::NoLogits);
        }
        let v = self.model.config().vocab_size as usize;
        let row = self.n_logits - 1;
        let b = &mut self.b;
        let logits = b.logits.get(row * v..(row + 1) * v).ok_or(RuntimeError::NoLogits)?;
        let history = &b.history[..self.pos];
        Ok(sampler.sample(logits, history, b.sample_logits, b.sample_ids))
    }

    /// One pass over the weights for up to `max_batch` tokens at positions `pos()..pos() + tokens.len()`.
    pub fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<(), RuntimeError> {
        self.check(tokens)?;
        if tokens.len() > self.opts.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                len: tokens.len(),
                max: self.opts.max_batch,
            });
        }
        self.n_logits = 0;
        let n = tokens.len();
        let model = self.model;
        let cfg = model.config();
        let d = Dims::of(cfg);
        let k = self.kernels;
        let split = Split {
            pool: &self.pool,
            min_work: self.min_work,
        };
        let mut max_tasks = 1;
        let pos = self.pos;
        let ctx = self.opts.max_context;
        let q_stride = self.q_stride;
        let bitnet = cfg.arch == Architecture::BitNetB158;
        let b = &mut self.b;

        for (&tok, x) in tokens.iter().zip(b.x.chunks_exact_mut(d.hidden)) {
            ops::embed(model.embedding(), tok as usize, x);
        }
        for (t, cs) in b.rope.chunks_exact_mut(d.head_dim).take(n).enumerate() {
            ops::rope_cos_sin(b.inv_freq, pos + t, cs);
        }

        let mut mm = MatMul {
            k,
            split,
            max_tasks: 1,
            q_stride,
            xq: &mut *b.xq,
            chunk_sums: &mut *b.chunk_sums,
            quant: &mut *b.quant,
            scratch: &mut *b.scratch,
        };
        for l in 0..cfg.n_layers as usize {
            let w = model.layer(l)?;

            // Attention.
            norm_rows(b.x, b.xb, w.attn_norm, d.hidden, n, d.eps);
            mm.run(
                &mut [(&w.wq, &mut *b.q), (&w.wk, &mut *b.k), (&w.wv, &mut *b.v)],
                b.xb,
                d.hidden,
                n,
            );
            for t in 0..n {
                let cs = &b.rope[t * d.head_dim..(t + 1) * d.head_dim];
                ops::apply_rope(cfg.rope_style, d.head_dim, &mut b.q[t * d.q_dim..(t + 1) * d.q_dim], cs);
                ops::apply_rope(
                    cfg.rope_style,
                    d.head_dim,
                    &mut b.k[t * d.kv_dim..(t + 1) * d.kv_dim],
                    cs,
                );
            }
            let layer_kv = l * ctx * d.kv_dim..(l + 1) * ctx * d.kv_dim;
            let at = Attn {
                k,
                split,
                d,
                pos,
                n,
                ctx,
            };
            max_tasks = max_tasks.max(match &mut b.kv {
                KvCache::F16 { k: kc, v: vc } => at.run(
                    &mut kc[layer_kv.clone()],
                    &mut vc[layer_kv],
                    b.k,
                    b.v,
                    b.q,
                    b.att,
                    b.scores,
                    &mut *mm.scratch,
                ),
                KvCache::F32 { k: kc, v: vc } => at.run(
                    &mut kc[layer_kv.clone()],
                    &mut vc[layer_kv],
                    b.k,
                    b.v,
                    b.q,
                    b.att,
                    b.scores,
                    &mut *mm.scratch,
                ),
            });
            if bitnet {
                for row in b.att.chunks_exact_mut(d.q_dim).take(n) {
                    ops::rmsnorm_inplace(row, w.attn_sub_norm, d.eps);
                }
            }
            mm.run(&mut [(&w.wo, &mut *b.proj)], b.att, d.q_dim, n);
            add_rows(b.x, b.proj, d.hidden * n);

            // Feed-forward.
            norm_rows(b.x, b.xb, w.ffn_norm, d.hidden, n, d.eps);
            mm.run(&mut [(&w.gate, &mut *b.gate), (&w.up, &mut *b.up)], b.xb, d.hidden, n);
            let m = d.ffn * n;
            if bitnet {
                ops::relu2_glu(&mut b.gate[..m], &b.up[..m]);
                for row in b.gate.chunks_exact_mut(d.ffn).take(n) {
                    ops::rmsnorm_inplace(row, w.ffn_sub_norm, d.eps);
                }
            } else {
                ops::swiglu(&mut b.gate[..m], &b.up[..m]);
            }
            mm.run(&mut [(&w.down, &mut *b.proj)], b.gate, d.ffn, n);
            add_rows(b.x, b.proj, d.hidden * n);
        }

        // Output head.
        let (first, rows) = match which {
            Logits::None => (n, 0),
            Logits::Last => (n - 1, 1),
            Logits::All => (0, n),
        };
        if rows > 0 {
            let src = &b.x[first * d.hidden..(first + rows) * d.hidden];
            norm_rows(src, b.xb, model.output_norm(), d.hidden, rows, d.eps);
            mm.run(&mut [(model.head(), &mut *b.logits)], b.xb, d.hidden, rows);
        }
        b.history[pos..pos + n].copy_from_slice(tokens);
        self.max_tasks = max_tasks.max(mm.max_tasks);
        self.pos += n;
        self.n_logits = rows;
        Ok(())
    }
}

fn norm_rows(x: &[f32], out: &mut [f32], w: &[f32], dim: usize, n: usize, eps: f32) {
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)).take(n) {
        ops::rmsnorm(xr, w, eps, or);
    }
}

fn add_rows(x: &mut [f32], y: &[f32], len: usize) {
    for (a, &b) in x.iter_mut().zip(y).take(len) {
        *a += b;
    }
}

/// Matrix products sharing one input: quantizes it once if any matrix is ternary, then splits each product's
/// rows across threads.
struct MatMul<'m> {
    k: &'static Kernels,
    split: Split<'m>,
    max_tasks: usize,
    q_stride: usize,
    xq: &'m mut [i8],
    chunk_sums: &'m mut [i32],
    quant: &'m mut [ActQuant],
    scratch: &'m mut [f32],
}

impl MatMul<'_> {
    fn run(&mut self, jobs: &mut [(&Matrix<'_>, &mut [f32])], x: &[f32], cols: usize, n: usize) {
        let quantize = jobs.iter().any(|(w, _)| self.k.act_format(w.dtype) == ActFormat::Int8);
        if quantize {
            quantize_rows(self.k, x, cols, n, self.q_stride, self.xq, self.chunk_sums, self.quant);
        }
        let acts = Activations {
            x: x.get(..n * cols).unwrap_or(&[]),
            cols,
            quantized: quantize.then_some(QuantizedActs {
                q: self.xq,
                stride: self.q_stride,
                chunk_sums: self.chunk_sums,
                quant: self.quant,
            }),
        };
        let k = self.k;
        if n == 1 && jobs.len() > 1 && jobs.len() <= MAX_FUSED {
            // Decode: one loop (one barrier) for all the matrices, straight into their outputs.
            let mut mats: [Option<&Matrix<'_>>; MAX_FUSED] = [None; MAX_FUSED];
            let mut rows = [0usize; MAX_FUSED];
            let mut work = 0usize;
            for (m, (w, _)) in jobs.iter().enumerate() {
                mats[m] = Some(*w);
                rows[m] = w.rows;
                work += w.rows * w.cols;
            }
            let nj = jobs.len();
            let mut outs: [&mut [f32]; MAX_FUSED] = [&mut [], &mut [], &mut []];
            for (o, (w, out)) in outs.iter_mut().zip(jobs.iter_mut()) {
                let len = w.rows.min(out.len());
                *o = &mut out[..len];
            }
            let used = par_rows_fused(
                self.split,
                &rows[..nj],
                &mut outs[..nj],
                SPLIT_ROWS,
                work,
                &|task: &mut RowsTask<'_>| {
                    for (part, w) in task.parts.iter_mut().zip(&mats) {
                        if let (Some((r, out)), Some(w)) = (part, w) {
                            kernels::matmul(k, w, &acts, 0..1, r.clone(), out);
                        }
                    }
                },
            );
            self.max_tasks = self.max_tasks.max(used);
            return;
        }
        for (w, out) in jobs.iter_mut() {
            let w: &Matrix<'_> = w;
            let used = par_columns(
                self.split,
                n,
                0..w.rows,
                1,
                SPLIT_ROWS,
                out,
                w.rows,
                self.scratch,
                &mut [],
                0,
                n * w.rows * w.cols,
                &|task: &mut ColTask<'_>| {
                    kernels::matmul(k, w, &acts, task.tokens.clone(), task.units.clone(), task.out)
                },
            );
            self.max_tasks = self.max_tasks.max(used);
        }
    }
}

/// Matrix rows are split across threads in multiples of this (whole kernel tiles, whole cache lines of output).
const SPLIT_ROWS: usize = 16;

/// Attention for one layer: stores the batch's keys and values, then runs every (token, head) pair, heads
/// split across threads.
struct Attn<'p> {
    k: &'static Kernels,
    split: Split<'p>,
    d: Dims,
    pos: usize,
    n: usize,
    ctx: usize,
}

impl Attn<'_> {
    /// Returns the number of tasks the heads were split into.
    #[allow(clippy::too_many_arguments)]
    fn run<T: KvElem>(
        &self,
        kc: &mut [T],
        vc: &mut [T],
        knew: &[f32],
        vnew: &[f32],
        q: &[f32],
        att: &mut [f32],
        scores: &mut [f32],
        scratch: &mut [f32],
    ) -> usize {
        let d = self.d;
        let kvd = d.kv_dim;
        let cache_rows = kc.chunks_exact_mut(kvd).zip(vc.chunks_exact_mut(kvd)).skip(self.pos);
        for ((kd, vd), (ks, vs)) in cache_rows
            .zip(knew.chunks_exact(kvd).zip(vnew.chunks_exact(kvd)))
            .take(self.n)
        {
            for (c, &x) in kd.iter_mut().zip(ks) {
                *c = T::from_f32(x);
            }
            for (c, &x) in vd.iter_mut().zip(vs) {
                *c = T::from_f32(x);
            }
        }
        let (kc, vc) = (&*kc, &*vc);
        let group = d.heads / d.kv_heads.max(1);
        let (k, pos, hd, ctx) = (self.k, self.pos, d.head_dim, self.ctx);
        par_columns(
            self.split,
            self.n,
            0..d.heads,
            hd,
            1,
            att,
            d.heads * hd,
            scratch,
            scores,
            ctx,
            // Scores and weighted values: ~2·head_dim multiply-adds per (token, head, position).
            self.n * d.heads * (pos + self.n) * 2 * hd,
            &|task: &mut ColTask<'_>| {
                let w = task.units.len() * hd;
                for (ti, t) in task.tokens.clone().enumerate() {
                    let n_pos = pos + t + 1;
                    for (hi, h) in task.units.clone().enumerate() {
                        let (Some(qv), Some(sc), Some(out)) = (
                            q.get(t * d.q_dim + h * hd..t * d.q_dim + (h + 1) * hd),
                            task.extra.get_mut(hi * ctx..(hi + 1) * ctx),
                            task.out.get_mut(ti * w + hi * hd..ti * w + (hi + 1) * hd),
                        ) else {
                            continue;
                        };
                        ops::attention_head(k, qv, kc, vc, kvd, (h / group) * hd, n_pos, sc, out);
                    }
                }
            },
        )
    }
}

/// The part of a session's state that is not in its arena: the next position and how many logit rows the
/// last pass left. `OwnedSession` (owned.rs) carves its arena again for every call and restores this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub pos: usize,
    pub n_logits: usize,
}

impl Session<'_> {
    pub(crate) fn cursor(&self) -> Cursor {
        Cursor {
            pos: self.pos,
            n_logits: self.n_logits,
        }
    }
    /// Restores a cursor taken from a session carved from the same arena with the same options.
    pub(crate) fn restore(&mut self, c: Cursor) {
        self.pos = c.pos.min(self.opts.max_context);
        self.n_logits = c.n_logits.min(self.opts.max_batch);
    }
}
