//! `tern_model`: a validated model, memory-mapped from a path or over a caller's buffer, shared by any
//! number of sessions on any threads.
//!
//! The handle holds an `Arc` of the model; each session holds another. `tern_model_free` marks the shared
//! model as freed and drops the handle's reference: a session made from it then refuses every call with
//! `TERN_ERR_MODEL_FREED` and never touches the model's bytes again (the caller may release a buffer
//! passed to `tern_model_open_buffer` as soon as `tern_model_free` returns). A mapped file is unmapped when
//! the last session is freed.

use std::ffi::c_void;
use std::ops::Deref;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tern_format::{MappedFile, ModelConfig, ParseOptions, NO_TOKEN};
use tern_runtime::tokenizer::Tokenizer;
use tern_runtime::{KvPrecision, OwnedModel, SessionOptions};

use crate::args;
use crate::status::{guard, tern_status, Error, TERN_ERR_IO, TERN_ERR_NO_TOKENIZER, TERN_ERR_TOKENIZER};

/// Check every tensor's CRC32 when opening (reads the whole file once: ~0.1 s per GB).
pub const TERN_OPEN_VERIFY_CHECKSUMS: u32 = 1;

/// Llama (the `architecture` field of `tern_model_config`).
pub const TERN_ARCH_LLAMA: u32 = 1;
/// BitNet b1.58.
pub const TERN_ARCH_BITNET_B158: u32 = 2;

/// "No such token" (e.g. a model without a BOS token).
pub const TERN_NO_TOKEN: u32 = u32::MAX;
const _: () = assert!(TERN_NO_TOKEN == NO_TOKEN);

/// KV cache in f16 (the default: half the memory of f32).
pub const TERN_KV_F16: u32 = 0;
/// KV cache in f32.
pub const TERN_KV_F32: u32 = 1;

/// Default tokens per forward pass when `tern_session_options.max_batch` is 0.
pub const TERN_DEFAULT_MAX_BATCH: u32 = 64;

/// An opened model. Opaque; free with `tern_model_free`.
#[allow(non_camel_case_types)]
pub struct tern_model {
    pub(crate) shared: Arc<SharedModel>,
}

/// The model's dimensions and special tokens.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct tern_model_config {
    /// `TERN_ARCH_LLAMA` or `TERN_ARCH_BITNET_B158`.
    pub architecture: u32,
    pub hidden_size: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub ffn_size: u32,
    /// Token ids are `0 .. vocab_size - 1`.
    pub vocab_size: u32,
    /// Most positions a session of this model can hold.
    pub context_length: u32,
    /// `TERN_NO_TOKEN` when the model has none.
    pub bos_token: u32,
    /// `TERN_NO_TOKEN` when the model has none.
    pub eos_token: u32,
    /// Whether prompts start with BOS (`TERN_TOKENIZE_PROMPT` adds it).
    pub add_bos: bool,
    /// The output head is the token embedding.
    pub tied_embeddings: bool,
    pub rope_theta: f32,
    pub norm_eps: f32,
}

/// What a session is sized for. Zero-initialise for the defaults; NULL means all defaults too.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tern_session_options {
    /// Positions the KV cache holds; 0 = the model's context length.
    pub max_context: u32,
    /// Tokens per forward pass (prompts run in batches of this many); 0 = `TERN_DEFAULT_MAX_BATCH` (at
    /// most `max_context`).
    pub max_batch: u32,
    /// `TERN_KV_F16` (0) or `TERN_KV_F32`.
    pub kv_precision: u32,
    /// Worker threads per session; 0 = 1. Can be changed later with `tern_session_set_threads`.
    pub threads: u32,
}

/// Bytes the model lives in: a read-only map of its file, or a caller's buffer.
pub(crate) enum ModelBytes {
    Mapped(MappedFile),
    Foreign(ForeignBytes),
}

/// A caller's read-only buffer.
pub(crate) struct ForeignBytes {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the bytes are only ever read, and the caller guarantees they stay valid and unchanged until
// `tern_model_free` (after which no session reads them, see `SharedModel::freed`); reading them from any
// thread is then sound.
unsafe impl Send for ForeignBytes {}
// SAFETY: as above: shared, read-only access.
unsafe impl Sync for ForeignBytes {}

impl Deref for ModelBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            // SAFETY: `ptr` is non-NULL and was valid for `len` reads when the model was opened; the caller
            // keeps it so until `tern_model_free`, and sessions check `freed` before they read.
            // SAFETY: the contract above.
            Self::Foreign(f) => unsafe { std::slice::from_raw_parts(f.ptr.as_ptr(), f.len) },
        }
    }
}

/// The model as every handle and session shares it.
pub(crate) struct SharedModel {
    pub owned: OwnedModel<ModelBytes>,
    /// The embedded tokenizer, or why there is none (`TERN_ERR_NO_TOKENIZER` / `TERN_ERR_TOKENIZER`).
    pub tokenizer: Result<Tokenizer, Error>,
    /// Tokens that end generation: EOS and the end-of-turn tokens the vocabulary has.
    pub stop_tokens: Vec<u32>,
    /// Set by `tern_model_free`; sessions check it before every call.
    pub freed: AtomicBool,
}

impl SharedModel {
    pub fn is_freed(&self) -> bool {
        self.freed.load(Ordering::Acquire)
    }
    pub fn tokenizer(&self) -> Result<&Tokenizer, Error> {
        self.tokenizer
            .as_ref()
            .map_err(|e| Error::new(e.status, e.message.clone()))
    }
}

/// How a session holds its model (derefs to the `OwnedModel` the runtime's `OwnedSession` wants).
pub(crate) struct ModelRef(pub Arc<SharedModel>);

impl Deref for ModelRef {
    type Target = OwnedModel<ModelBytes>;
    fn deref(&self) -> &Self::Target {
        &self.0.owned
    }
}

const fn assert_send_sync<T: Send + Sync>() {}
const _: () = assert_send_sync::<SharedModel>();

fn open(bytes: ModelBytes, flags: u32) -> Result<tern_model, Error> {
    if flags & !TERN_OPEN_VERIFY_CHECKSUMS != 0 {
        return Err(Error::invalid(format!("unknown flags {flags:#x}")));
    }
    let opts = ParseOptions {
        verify_tensor_checksums: flags & TERN_OPEN_VERIFY_CHECKSUMS != 0,
    };
    let owned = OwnedModel::new(bytes, opts)?;
    let config = *owned.config();
    let tokenizer = {
        let model = owned.model()?;
        match model.view().tokenizer() {
            None => Err(Error::new(TERN_ERR_NO_TOKENIZER, "the model file embeds no tokenizer")),
            Some(_) => Tokenizer::from_model(model.view()).map_err(|e| Error::new(TERN_ERR_TOKENIZER, e.to_string())),
        }
    };
    let stop_tokens = match &tokenizer {
        Ok(t) => t.stop_tokens().to_vec(),
        Err(_) => [config.eos_token].into_iter().filter(|&t| t != NO_TOKEN).collect(),
    };
    Ok(tern_model {
        shared: Arc::new(SharedModel {
            owned,
            tokenizer,
            stop_tokens,
            freed: AtomicBool::new(false),
        }),
    })
}

fn path_of(path: &std::ffi::CStr) -> Result<PathBuf, Error> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        path.to_str()
            .map(PathBuf::from)
            .map_err(|_| Error::invalid("path is not UTF-8"))
    }
}

/// Opens the model file at `path` (a NUL-terminated path) by memory-mapping it; nothing is copied. `flags`
/// is 0 or `TERN_OPEN_VERIFY_CHECKSUMS`. On success `*out_model` is the new handle; on failure it is NULL.
///
/// # Safety
/// `path` is a NUL-terminated string; `out_model` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn tern_model_open(
    path: *const std::ffi::c_char,
    flags: u32,
    out_model: *mut *mut tern_model,
) -> tern_status {
    guard("tern_model_open", || {
        // SAFETY: the contract above.
        unsafe { args::write(out_model, std::ptr::null_mut(), "out_model") }?;
        // SAFETY: the contract above.
        let path = path_of(unsafe { args::c_str(path, "path") }?)?;
        let file = MappedFile::open(&path).map_err(|e| Error::new(TERN_ERR_IO, e.to_string()))?;
        let handle = Box::into_raw(Box::new(open(ModelBytes::Mapped(file), flags)?));
        // SAFETY: the contract above.
        unsafe { args::write(out_model, handle, "out_model") }
    })
}

/// Opens a model held in memory: `data` points to the `size` bytes of a .tern file (in flash, in a
/// caller's allocation, ...), starting on a 4-byte boundary (64 is best). Nothing is copied: the bytes must
/// stay valid and unchanged until `tern_model_free` returns. `flags` as for `tern_model_open`.
///
/// # Safety
/// `data` is valid for reads of `size` bytes until `tern_model_free`; `out_model` as for `tern_model_open`.
#[no_mangle]
pub unsafe extern "C" fn tern_model_open_buffer(
    data: *const c_void,
    size: usize,
    flags: u32,
    out_model: *mut *mut tern_model,
) -> tern_status {
    guard("tern_model_open_buffer", || {
        // SAFETY: the contract above.
        unsafe { args::write(out_model, std::ptr::null_mut(), "out_model") }?;
        let ptr = NonNull::new(data.cast_mut().cast::<u8>()).ok_or_else(|| Error::null("data"))?;
        args::check_len::<u8>(size, "size")?;
        let bytes = ModelBytes::Foreign(ForeignBytes { ptr, len: size });
        let handle = Box::into_raw(Box::new(open(bytes, flags)?));
        // SAFETY: the contract above.
        unsafe { args::write(out_model, handle, "out_model") }
    })
}

/// Frees a model handle (NULL is ignored). Sessions made from it stay valid to free, but every other call
/// on them now fails with `TERN_ERR_MODEL_FREED`. Must not run while another thread is inside a call on
/// this model or one of its sessions.
///
/// # Safety
/// `model` is NULL or a handle from `tern_model_open*` not freed before.
#[no_mangle]
pub unsafe extern "C" fn tern_model_free(model: *mut tern_model) {
    if model.is_null() {
        return;
    }
    // SAFETY: a live handle made by `Box::into_raw` in `tern_model_open*`, freed only here.
    let handle = unsafe { Box::from_raw(model) };
    handle.shared.freed.store(true, Ordering::Release);
    // Dropping cannot unwind into C: nothing in the model's drop glue panics.
    drop(handle);
}

/// `*model` as a reference.
///
/// # Safety
/// `model` is NULL or a live handle.
pub(crate) unsafe fn model_ref<'a>(model: *const tern_model) -> Result<&'a tern_model, Error> {
    // SAFETY: forwarded contract.
    unsafe { args::input(model, "model") }
}

fn config_of(c: &ModelConfig) -> tern_model_config {
    tern_model_config {
        architecture: c.arch as u32,
        hidden_size: c.hidden_size,
        n_layers: c.n_layers,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        ffn_size: c.ffn_size,
        vocab_size: c.vocab_size,
        context_length: c.context_length,
        bos_token: c.bos_token,
        eos_token: c.eos_token,
        add_bos: c.add_bos,
        tied_embeddings: c.tied_embeddings,
        rope_theta: c.rope_theta,
        norm_eps: c.norm_eps,
    }
}

/// Writes the model's config to `*out_config`.
///
/// # Safety
/// `model` is a live handle; `out_config` points to writable storage for a `tern_model_config`.
#[no_mangle]
pub unsafe extern "C" fn tern_model_get_config(
    model: *const tern_model,
    out_config: *mut tern_model_config,
) -> tern_status {
    guard("tern_model_get_config", || {
        // SAFETY: the contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: the contract above.
        unsafe { args::write(out_config, config_of(m.shared.owned.config()), "out_config") }
    })
}

/// The runtime's options for C `options` (NULL: all defaults) on a model with `config`.
pub(crate) fn session_options(
    options: Option<&tern_session_options>,
    config: &ModelConfig,
) -> Result<SessionOptions, Error> {
    let o = options.copied().unwrap_or_default();
    let max_context = match o.max_context {
        0 => config.context_length,
        n => n,
    } as usize;
    let max_batch = match o.max_batch {
        0 => (TERN_DEFAULT_MAX_BATCH as usize).min(max_context.max(1)),
        n => n as usize,
    };
    let kv = match o.kv_precision {
        TERN_KV_F16 => KvPrecision::F16,
        TERN_KV_F32 => KvPrecision::F32,
        other => {
            return Err(Error::invalid(format!(
                "kv_precision {other} is neither TERN_KV_F16 nor TERN_KV_F32"
            )))
        }
    };
    let threads = o.threads.max(1) as usize;
    let opts = SessionOptions::new(max_context, max_batch)
        .with_kv(kv)
        .with_threads(threads);
    // Checks the sizes against the model (context length, overflow) with the runtime's own messages.
    opts.arena_bytes(config)?;
    Ok(opts)
}

/// Writes to `*out_bytes` the arena size a session with `options` (NULL: defaults) needs for this model:
/// what `tern_session_new_in_arena` must be given. It grows with `max_context` (the KV cache) and
/// `max_batch` (activations and logits).
///
/// # Safety
/// `model` is a live handle; `options` is NULL or points to a `tern_session_options`; `out_bytes` points to
/// writable storage for a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn tern_model_arena_size(
    model: *const tern_model,
    options: *const tern_session_options,
    out_bytes: *mut usize,
) -> tern_status {
    guard("tern_model_arena_size", || {
        // SAFETY: the contract above (`options` may be NULL).
        let m = unsafe { model_ref(model) }?;
        // SAFETY: the contract above.
        let options = unsafe { options.as_ref() };
        let opts = session_options(options, m.shared.owned.config())?;
        let bytes = m.shared.owned.arena_bytes(&opts)?;
        // SAFETY: the contract above.
        unsafe { args::write(out_bytes, bytes, "out_bytes") }
    })
}

/// Whether `token` ends generation for this model (EOS, or an end-of-turn token such as `<|im_end|>`).
///
/// # Safety
/// `model` is a live handle; `out_is_stop` points to writable storage for a `bool`.
#[no_mangle]
pub unsafe extern "C" fn tern_model_is_stop_token(
    model: *const tern_model,
    token: u32,
    out_is_stop: *mut bool,
) -> tern_status {
    guard("tern_model_is_stop_token", || {
        // SAFETY: the contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: the contract above.
        unsafe { args::write(out_is_stop, m.shared.stop_tokens.contains(&token), "out_is_stop") }
    })
}
