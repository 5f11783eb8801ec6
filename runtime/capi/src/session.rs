//! `tern_session`: one sequence's state (KV cache, activations, logits) in one arena, either the caller's
//! (`tern_session_new_in_arena`: tern allocates nothing after the handle) or one tern allocates.
//!
//! The handle wraps the runtime's `OwnedSession` in a mutex that is only ever `try_lock`ed: a session is used
//! by one thread at a time, and a second concurrent call (or a generation callback calling back into its own
//! session) gets `TERN_ERR_BUSY` instead of a data race or a deadlock.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::c_void;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, TryLockError};

use tern_runtime::OwnedSession;

use crate::args;
use crate::model::{model_ref, session_options, tern_session_options, ModelRef};
use crate::status::{guard, tern_status, Error, TERN_ERR_BUFFER_TOO_SMALL, TERN_ERR_BUSY, TERN_ERR_MODEL_FREED};

/// A session. Opaque; free with `tern_session_free`.
#[allow(non_camel_case_types)]
pub struct tern_session {
    inner: Mutex<OwnedSession<ModelRef, Arena>>,
}

/// A session's arena: a caller's buffer or a zeroed allocation of tern's.
pub(crate) enum Arena {
    Foreign { ptr: NonNull<u8>, len: usize },
    Heap { ptr: NonNull<u8>, layout: Layout },
}

// SAFETY: the arena is owned by its one session (the caller hands a foreign buffer over until
// `tern_session_free`), and the session is used by one thread at a time (the mutex).
unsafe impl Send for Arena {}

impl Arena {
    /// `len` zeroed bytes, 64-byte aligned, from the system allocator (zeroed pages are mapped lazily, so an
    /// unused KV cache costs no memory); an error instead of an abort when the allocation fails.
    fn heap(len: usize) -> Result<Self, Error> {
        let layout = Layout::from_size_align(len.max(1), 64)
            .map_err(|_| Error::invalid(format!("an arena of {len} bytes is too large")))?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr =
            NonNull::new(ptr).ok_or_else(|| Error::invalid(format!("could not allocate an arena of {len} bytes")))?;
        Ok(Self::Heap { ptr, layout })
    }
}

impl Deref for Arena {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match *self {
            // SAFETY: the caller's buffer is valid for `len` bytes until `tern_session_free`.
            Self::Foreign { ptr, len } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) },
            // SAFETY: our allocation of `layout.size()` initialised (zeroed) bytes, freed only in `drop`.
            Self::Heap { ptr, layout } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), layout.size()) },
        }
    }
}

impl DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut [u8] {
        match *self {
            // SAFETY: as in `deref`; `&mut self` makes this the only access (the caller does not touch the
            // buffer while the session lives).
            Self::Foreign { ptr, len } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) },
            // SAFETY: as in `deref`, and ours alone.
            Self::Heap { ptr, layout } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), layout.size()) },
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Self::Heap { ptr, layout } = *self {
            // SAFETY: allocated in `heap` with this layout, freed once.
            unsafe { dealloc(ptr.as_ptr(), layout) };
        }
    }
}

pub(crate) type Session = OwnedSession<ModelRef, Arena>;

/// Locks a session for one call and checks that its model is still alive.
///
/// # Safety
/// `session` is NULL or a live handle.
pub(crate) unsafe fn lock<'a>(session: *const tern_session) -> Result<MutexGuard<'a, Session>, Error> {
    // SAFETY: forwarded contract.
    let handle = unsafe { args::input(session, "session") }?;
    let guard = match handle.inner.try_lock() {
        Ok(g) => g,
        // A panic during an earlier call was caught and reported; the session is still memory-safe.
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            return Err(Error::new(
                TERN_ERR_BUSY,
                "the session is in use by another call (a session is used by one thread at a time)",
            ))
        }
    };
    if guard.model().0.is_freed() {
        return Err(Error::new(
            TERN_ERR_MODEL_FREED,
            "the session's model was freed; only tern_session_free is allowed",
        ));
    }
    Ok(guard)
}

unsafe fn create(
    model: *const crate::model::tern_model,
    options: *const tern_session_options,
    arena: Option<(*mut c_void, usize)>,
    out_session: *mut *mut tern_session,
) -> Result<(), Error> {
    // SAFETY: `out_session` is valid for a pointer write (the exported functions' contract).
    unsafe { args::write(out_session, std::ptr::null_mut(), "out_session") }?;
    // SAFETY: `model` is NULL or live.
    let m = unsafe { model_ref(model) }?;
    // SAFETY: `options` is NULL or points to options.
    let options = unsafe { options.as_ref() };
    let opts = session_options(options, m.shared.owned.config())?;
    let needed = m.shared.owned.arena_bytes(&opts)?;
    let arena = match arena {
        None => Arena::heap(needed)?,
        Some((ptr, len)) => {
            args::check_len::<u8>(len, "arena_size")?;
            Arena::Foreign {
                ptr: NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::null("arena"))?,
                len,
            }
        }
    };
    let session = OwnedSession::new(ModelRef(m.shared.clone()), arena, opts)?;
    let handle = Box::into_raw(Box::new(tern_session {
        inner: Mutex::new(session),
    }));
    // SAFETY: as the first write.
    unsafe { args::write(out_session, handle, "out_session") }
}

/// Creates a session whose arena tern allocates (`tern_model_arena_size` bytes, zeroed lazily by the OS).
/// `options` may be NULL (defaults). On failure `*out_session` is NULL.
///
/// # Safety
/// `model` is a live model handle; `options` is NULL or points to options; `out_session` points to
/// writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn tern_session_new(
    model: *const crate::model::tern_model,
    options: *const tern_session_options,
    out_session: *mut *mut tern_session,
) -> tern_status {
    // SAFETY: contract above.
    guard("tern_session_new", || unsafe {
        create(model, options, None, out_session)
    })
}

/// Creates a session inside the caller's `arena` of `arena_size` bytes (any alignment; at least
/// `tern_model_arena_size` for these options). After this call tern allocates nothing for the session:
/// feeding, logits, sampling and generation without text run in the arena (with any thread count: the worker
/// threads start with the session and are replaced only by `tern_session_set_threads`). The arena must stay valid, and
/// untouched by the caller, until `tern_session_free`.
///
/// # Safety
/// `arena` is valid for reads and writes of `arena_size` bytes until `tern_session_free`; otherwise as
/// `tern_session_new`.
#[no_mangle]
pub unsafe extern "C" fn tern_session_new_in_arena(
    model: *const crate::model::tern_model,
    options: *const tern_session_options,
    arena: *mut c_void,
    arena_size: usize,
    out_session: *mut *mut tern_session,
) -> tern_status {
    // SAFETY: contract above.
    guard("tern_session_new_in_arena", || unsafe {
        create(model, options, Some((arena, arena_size)), out_session)
    })
}

/// Frees a session (NULL is ignored); a caller's arena may be reused once this returns. Allowed after the
/// session's model was freed.
///
/// # Safety
/// `session` is NULL or a live handle that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn tern_session_free(session: *mut tern_session) {
    if session.is_null() {
        return;
    }
    // SAFETY: a live handle made by `Box::into_raw` in `create`, freed only here.
    drop(unsafe { Box::from_raw(session) });
}

/// Feeds `n_tokens` tokens (the prompt, or tokens chosen by the caller) in batches of `max_batch`; the
/// logits of the last one are then available to `tern_session_get_logits` and `tern_session_sample`. The
/// whole input is checked first (every id below the vocabulary size, room in the context): on an error
/// nothing has run and the session is unchanged.
///
/// # Safety
/// `session` is a live handle; `tokens` points to `n_tokens` ids.
#[no_mangle]
pub unsafe extern "C" fn tern_session_feed(
    session: *mut tern_session,
    tokens: *const u32,
    n_tokens: usize,
) -> tern_status {
    guard("tern_session_feed", || {
        // SAFETY: contract above.
        let mut s = unsafe { lock(session) }?;
        // SAFETY: contract above.
        let tokens = unsafe { args::slice(tokens, n_tokens, "tokens") }?;
        Ok(s.prefill(tokens)?)
    })
}

/// Copies the logits the next token would be sampled from (one float per vocabulary entry) into `out`,
/// which holds `capacity` floats; `TERN_ERR_BUFFER_TOO_SMALL` when `capacity` < vocab_size.
///
/// # Safety
/// `session` is a live handle; `out` is valid for writes of `capacity` floats.
#[no_mangle]
pub unsafe extern "C" fn tern_session_get_logits(
    session: *mut tern_session,
    out: *mut f32,
    capacity: usize,
) -> tern_status {
    guard("tern_session_get_logits", || {
        // SAFETY: contract above.
        let mut s = unsafe { lock(session) }?;
        let vocab = s.model().config().vocab_size as usize;
        if capacity < vocab {
            return Err(Error::new(
                TERN_ERR_BUFFER_TOO_SMALL,
                format!("capacity {capacity} is smaller than the vocabulary ({vocab})"),
            ));
        }
        // SAFETY: contract above.
        let out = unsafe { args::slice_mut(out, capacity, "out") }?;
        s.copy_last_logits(out)?;
        Ok(())
    })
}

/// Writes the number of positions filled so far (the next token's position) to `*out_position`.
///
/// # Safety
/// `session` is a live handle; `out_position` points to writable storage for a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn tern_session_position(session: *const tern_session, out_position: *mut usize) -> tern_status {
    guard("tern_session_position", || {
        // SAFETY: contract above.
        let s = unsafe { lock(session) }?;
        // SAFETY: contract above.
        unsafe { args::write(out_position, s.pos(), "out_position") }
    })
}

/// Forgets the sequence: the next token goes to position 0.
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tern_session_reset(session: *mut tern_session) -> tern_status {
    guard("tern_session_reset", || {
        // SAFETY: contract above.
        unsafe { lock(session) }?.reset();
        Ok(())
    })
}

/// Drops every position from `position` on (keeps the first `position` tokens' KV cache), e.g. to regenerate
/// a reply or share a system prompt; no effect when `position` >= the current position. Logits are gone
/// until the next feed.
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tern_session_truncate(session: *mut tern_session, position: usize) -> tern_status {
    guard("tern_session_truncate", || {
        // SAFETY: contract above.
        unsafe { lock(session) }?.truncate(position);
        Ok(())
    })
}

/// Sets the number of threads (>= 1) later calls on this session use. Results are identical for any count.
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tern_session_set_threads(session: *mut tern_session, threads: u32) -> tern_status {
    guard("tern_session_set_threads", || {
        // SAFETY: contract above.
        Ok(unsafe { lock(session) }?.set_threads(threads as usize)?)
    })
}

/// Checks a caller's output capacity for `needed` elements.
pub(crate) fn check_capacity(needed: usize, capacity: usize, what: &str) -> Result<(), Error> {
    if capacity < needed {
        return Err(Error::new(
            TERN_ERR_BUFFER_TOO_SMALL,
            format!("{what} needs {needed} elements, capacity is {capacity}"),
        ));
    }
    Ok(())
}
