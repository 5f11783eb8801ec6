//! Owning forms of `Model` and `Session`, for callers that cannot keep a borrow alive: the C API, a model
//! handle stored in a struct, a session kept next to the model it runs.
//!
//! `Model<'a>` borrows the file's bytes and `Session<'s>` borrows both the model and the arena, which is what
//! the forward pass wants (plain slices, no indirection) but means an owner cannot hold both the bytes and the
//! views into them without referring to itself. These types hold only what they own:
//!
//! - `OwnedModel<S>` owns its byte storage `S` (a `MappedFile`, `AlignedBytes`, `Vec<u8>`, `&'static [u8]` in
//!   flash, …) and where the parsed file's parts lie in it (`tern_format::ViewLayout`, offsets only). It
//!   validates the bytes once, fully, when it is made; `model()` then hands out a borrowed `Model<'_>`,
//!   rebuilding the view from the layout (no parsing, no checksums) and re-running `Model::new`'s tensor checks
//!   (O(tensors), no allocation).
//! - `OwnedSession<M, A>` owns its arena `A` (a `Vec<u8>`, a `Box<[u8]>`, a `&mut [u8]`, a caller's buffer),
//!   holds its model through `M` (a reference, an `Arc`, anything that derefs to an `OwnedModel`), and keeps
//!   the one piece of session state that is not in the arena: the position and the number of logit rows. Each
//!   call carves a `Session` out of the arena again (the layout is a pure function of the config, the options
//!   and the arena's address, so the KV cache, history and logits are where the previous call left them) and
//!   restores that state.
//!
//! What this costs per call: `Model::new`'s checks of every tensor entry plus carving ~20 regions — ~30 µs
//! for SmolLM2-135M's 272 tensors, next to a forward pass that reads all 57 MB of weights (tens of ms with
//! the scalar kernels). Inside one call (`with`, or a whole generation loop) nothing is repeated.

use core::ops::{Deref, DerefMut};

use tern_format::{ModelConfig, ModelView, ParseOptions, ViewLayout};

use crate::arena::SessionOptions;
use crate::error::RuntimeError;
use crate::kernels::{self, Kernels};
use crate::model::Model;
use crate::pool::Pool;
use crate::sampling::Sampler;
use crate::session::{Cursor, Session};

/// A validated model that owns its bytes. `S` is the storage: anything that derefs to the file's bytes.
#[derive(Debug)]
pub struct OwnedModel<S> {
    bytes: S,
    layout: ViewLayout,
    config: ModelConfig,
}

impl<S: Deref<Target = [u8]>> OwnedModel<S> {
    /// Parses and validates `bytes` (with `opts`, e.g. whether to check every tensor's CRC32) and checks every
    /// tensor the forward pass needs. The bytes must start on a 64-byte boundary, as a mapped file does.
    pub fn new(bytes: S, opts: ParseOptions) -> Result<Self, RuntimeError> {
        let (layout, config) = {
            let view = ModelView::parse_with(&bytes, opts)?;
            (view.layout(), *Model::new(view)?.config())
        };
        Ok(Self { bytes, layout, config })
    }

    /// The model as the forward pass uses it, borrowing the storage. Fails (`ModelChanged`) only if the bytes
    /// changed since `new` validated them (a mapped file rewritten in place, a storage type whose bytes move).
    pub fn model(&self) -> Result<Model<'_>, RuntimeError> {
        ModelView::from_layout(&self.bytes, &self.layout)
            .map_err(|_| RuntimeError::ModelChanged)
            .and_then(|view| Model::new(view).map_err(|_| RuntimeError::ModelChanged))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn into_bytes(self) -> S {
        self.bytes
    }

    /// Arena bytes a session with `opts` needs for this model.
    pub fn arena_bytes(&self, opts: &SessionOptions) -> Result<usize, RuntimeError> {
        opts.arena_bytes(&self.config)
    }
}

/// A session that owns its arena `A` and holds its model through `M`.
pub struct OwnedSession<M, A> {
    model: M,
    arena: A,
    /// Where the arena started when the session was made: the carving depends on the address's alignment.
    arena_addr: usize,
    opts: SessionOptions,
    kernels: &'static Kernels,
    cursor: Cursor,
    /// The worker threads, made once and lent to each call's session (`None` only until the first call, or
    /// after a call panicked).
    pool: Option<Pool>,
}

impl<S, M, A> OwnedSession<M, A>
where
    S: Deref<Target = [u8]>,
    M: Deref<Target = OwnedModel<S>>,
    A: DerefMut<Target = [u8]>,
{
    /// A session over `arena`, which must hold at least `model.arena_bytes(&opts)` bytes and must not move
    /// (heap buffers, borrowed slices and static buffers don't; the session checks on every call).
    pub fn new(model: M, arena: A, opts: SessionOptions) -> Result<Self, RuntimeError> {
        let mut s = Self {
            arena_addr: arena.as_ptr() as usize,
            model,
            arena,
            opts,
            kernels: kernels::best(),
            cursor: Cursor::default(),
            pool: None,
        };
        // Carve once now, so that a small arena or bad options fail here rather than at the first call.
        s.with(|_| Ok(()))?;
        Ok(s)
    }

    /// Runs `f` on the session carved out of the arena, with this session's position and logits.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Session<'_>) -> Result<R, RuntimeError>) -> Result<R, RuntimeError> {
        if self.arena.as_ptr() as usize != self.arena_addr {
            return Err(RuntimeError::ArenaMoved);
        }
        let model = self.model.model()?;
        let mut session = Session::with_pool(&model, &mut self.arena, self.opts, self.pool.take())?;
        session.set_kernels(self.kernels);
        session.restore(self.cursor);
        let result = f(&mut session);
        self.cursor = session.cursor();
        self.opts = *session.options();
        self.pool = Some(session.into_pool());
        result
    }

    /// Runs the prompt (see `Session::prefill`); the last token's logits are then available.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(), RuntimeError> {
        self.with(|s| s.prefill(tokens).map(|_| ()))
    }
    /// Feeds one token (see `Session::decode`).
    pub fn decode(&mut self, token: u32) -> Result<(), RuntimeError> {
        self.with(|s| s.decode(token).map(|_| ()))
    }
    /// Samples from the last logits (see `Session::sample`).
    pub fn sample(&mut self, sampler: &mut Sampler) -> Result<u32, RuntimeError> {
        self.with(|s| s.sample(sampler))
    }
    /// Copies the logits the next token would be sampled from into `out` (at least `vocab` long); returns
    /// how many were written.
    pub fn copy_last_logits(&mut self, out: &mut [f32]) -> Result<usize, RuntimeError> {
        self.with(|s| {
            let logits = s.last_logits()?;
            let dst = out.get_mut(..logits.len()).ok_or(RuntimeError::BadOptions(
                "the output buffer is shorter than the vocabulary",
            ))?;
            dst.copy_from_slice(logits);
            Ok(logits.len())
        })
    }

    /// Positions filled so far.
    pub fn pos(&self) -> usize {
        self.cursor.pos
    }
    /// Positions still free in the KV cache.
    pub fn remaining(&self) -> usize {
        self.opts.max_context - self.cursor.pos
    }
    /// Forgets the sequence (see `Session::reset`).
    pub fn reset(&mut self) {
        self.cursor = Cursor::default();
    }
    /// Drops positions from `pos` on (see `Session::truncate`).
    pub fn truncate(&mut self, pos: usize) {
        if pos < self.cursor.pos {
            self.cursor = Cursor { pos, n_logits: 0 };
        }
    }
    /// Changes the thread count (≥ 1) for later calls.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), RuntimeError> {
        if threads == 0 {
            return Err(RuntimeError::BadOptions("threads must be at least 1"));
        }
        self.opts.threads = threads;
        Ok(())
    }
    /// Uses another kernel table (see `Session::set_kernels`).
    pub fn set_kernels(&mut self, k: &'static Kernels) {
        self.kernels = k;
    }
    pub fn options(&self) -> &SessionOptions {
        &self.opts
    }
    pub fn model(&self) -> &M {
        &self.model
    }
    /// The model handle and the arena back.
    pub fn into_parts(self) -> (M, A) {
        (self.model, self.arena)
    }
}
