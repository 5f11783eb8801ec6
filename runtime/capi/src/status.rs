//! Status codes, the thread-local last error message, and the guard every exported function runs its body in
//! (null checks, error mapping, and catching panics so that none unwinds into C).

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tern_format::FormatError;
use tern_runtime::load::LoadError;
use tern_runtime::RuntimeError;

/// What every fallible function returns: `TERN_OK` (0) or one of the `TERN_ERR_*` codes.
#[allow(non_camel_case_types)]
pub type tern_status = i32;

/// Success.
pub const TERN_OK: tern_status = 0;
/// A required pointer argument was NULL.
pub const TERN_ERR_NULL_POINTER: tern_status = 1;
/// An argument is out of its range (options, sizes, flags, text that is not UTF-8, ...).
pub const TERN_ERR_INVALID_ARGUMENT: tern_status = 2;
/// The model file could not be opened or mapped.
pub const TERN_ERR_IO: tern_status = 3;
/// The bytes are not a valid .tern model: wrong magic, truncated, corrupt, checksum mismatch, tensors that
/// do not match the config.
pub const TERN_ERR_INVALID_MODEL: tern_status = 4;
/// A valid file this build cannot run (format version, architecture, number of blocks, big-endian host).
pub const TERN_ERR_UNSUPPORTED: tern_status = 5;
/// The model buffer is not aligned for in-place use (it must start on a 4-byte boundary; 64 is best).
pub const TERN_ERR_MISALIGNED: tern_status = 6;
/// The arena is smaller than `tern_model_arena_size` says.
pub const TERN_ERR_ARENA_TOO_SMALL: tern_status = 7;
/// A token id is not below the vocabulary size.
pub const TERN_ERR_TOKEN_OUT_OF_RANGE: tern_status = 8;
/// The tokens do not fit in the session's remaining context (nothing was run).
pub const TERN_ERR_CONTEXT_FULL: tern_status = 9;
/// Logits or sampling were asked for before any token was fed.
pub const TERN_ERR_NO_LOGITS: tern_status = 10;
/// An output buffer is too small; the required size is reported through the size output.
pub const TERN_ERR_BUFFER_TOO_SMALL: tern_status = 11;
/// The model file embeds no tokenizer.
pub const TERN_ERR_NO_TOKENIZER: tern_status = 12;
/// The tokenizer failed to encode or decode.
pub const TERN_ERR_TOKENIZER: tern_status = 13;
/// The session's model was freed with `tern_model_free`; only `tern_session_free` is allowed now.
pub const TERN_ERR_MODEL_FREED: tern_status = 14;
/// The session is in use by another call (another thread, or a generation callback re-entering it).
pub const TERN_ERR_BUSY: tern_status = 15;
/// A bug in tern: a panic was caught at the boundary. The handle stays memory-safe; reset or free it.
pub const TERN_ERR_INTERNAL: tern_status = 16;

/// A failure on its way to C: the code and the message `tern_last_error_message` will return.
#[derive(Debug)]
pub(crate) struct Error {
    pub status: tern_status,
    pub message: String,
}

impl Error {
    pub fn new(status: tern_status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn null(what: &str) -> Self {
        Self::new(TERN_ERR_NULL_POINTER, format!("{what} is NULL"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(TERN_ERR_INVALID_ARGUMENT, message)
    }
}

fn format_status(e: &FormatError) -> tern_status {
    match e {
        FormatError::UnsupportedVersion(_) | FormatError::BigEndianHost | FormatError::UnknownArchitecture(_) => {
            TERN_ERR_UNSUPPORTED
        }
        FormatError::Misaligned => TERN_ERR_MISALIGNED,
        _ => TERN_ERR_INVALID_MODEL,
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        use RuntimeError as R;
        let status = match &e {
            R::Format(f) => format_status(f),
            R::UnsupportedArchitecture(_) | R::TooManyLayers { .. } => TERN_ERR_UNSUPPORTED,
            R::MissingTensor { .. } | R::WrongDtype { .. } | R::WrongShape { .. } | R::ModelChanged => {
                TERN_ERR_INVALID_MODEL
            }
            R::Misaligned { .. } => TERN_ERR_MISALIGNED,
            R::ArenaTooSmall { .. } => TERN_ERR_ARENA_TOO_SMALL,
            R::BadOptions(_) | R::EmptyInput | R::BatchTooLarge { .. } | R::SizeOverflow => TERN_ERR_INVALID_ARGUMENT,
            R::ContextFull { .. } => TERN_ERR_CONTEXT_FULL,
            R::UnknownToken { .. } => TERN_ERR_TOKEN_OUT_OF_RANGE,
            R::NoLogits => TERN_ERR_NO_LOGITS,
            _ => TERN_ERR_INTERNAL,
        };
        Self::new(status, e.to_string())
    }
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Map(m) => Self::new(TERN_ERR_IO, m.to_string()),
            LoadError::Model(r) => r.into(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(function: &str, message: &str) {
    // Interior NULs (from a path, say) would cut the message short; show them instead.
    let text = format!("{function}: {message}").replace('\0', "\\0");
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs an exported function's body: maps its error to a status and records the message, and turns a panic
/// into `TERN_ERR_INTERNAL` instead of letting it unwind into the caller.
pub(crate) fn guard(function: &str, body: impl FnOnce() -> Result<(), Error>) -> tern_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => TERN_OK,
        Ok(Err(e)) => {
            set_last_error(function, &e.message);
            e.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(
                function,
                &format!("internal error (panic caught at the C boundary): {what}"),
            );
            TERN_ERR_INTERNAL
        }
    }
}

/// The message of the last failed call on this thread, as a NUL-terminated UTF-8 string ("" if none
/// failed yet). Successful calls leave it as it is. The pointer stays valid until the next failing call on
/// the same thread; copy the text to keep it.
#[no_mangle]
pub extern "C" fn tern_last_error_message() -> *const c_char {
    // Never panics: the thread-local is initialised without allocating and is not borrowed elsewhere now.
    LAST_ERROR
        .try_with(|e| e.try_borrow().map(|s| s.as_ptr()).unwrap_or(c"".as_ptr()))
        .unwrap_or(c"".as_ptr())
}

/// A short, static description of a status code ("unknown status" for codes tern does not define).
#[no_mangle]
pub extern "C" fn tern_status_string(status: tern_status) -> *const c_char {
    let s = match status {
        TERN_OK => c"ok",
        TERN_ERR_NULL_POINTER => c"null pointer argument",
        TERN_ERR_INVALID_ARGUMENT => c"invalid argument",
        TERN_ERR_IO => c"cannot open or map the file",
        TERN_ERR_INVALID_MODEL => c"not a valid tern model",
        TERN_ERR_UNSUPPORTED => c"unsupported model",
        TERN_ERR_MISALIGNED => c"model buffer misaligned",
        TERN_ERR_ARENA_TOO_SMALL => c"arena too small",
        TERN_ERR_TOKEN_OUT_OF_RANGE => c"token id out of range",
        TERN_ERR_CONTEXT_FULL => c"context full",
        TERN_ERR_NO_LOGITS => c"no logits yet",
        TERN_ERR_BUFFER_TOO_SMALL => c"output buffer too small",
        TERN_ERR_NO_TOKENIZER => c"the model has no tokenizer",
        TERN_ERR_TOKENIZER => c"tokenizer error",
        TERN_ERR_MODEL_FREED => c"the session's model was freed",
        TERN_ERR_BUSY => c"session in use by another call",
        TERN_ERR_INTERNAL => c"internal error",
        _ => c"unknown status",
    };
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: a NUL-terminated string owned by this thread's slot.
        unsafe { CStr::from_ptr(tern_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn panics_become_internal_errors_with_their_message() {
        let status = guard("tern_test", || panic!("boom {}", 42));
        assert_eq!(status, TERN_ERR_INTERNAL);
        assert_eq!(
            last(),
            "tern_test: internal error (panic caught at the C boundary): boom 42"
        );
        assert_eq!(guard("tern_test", || Ok(())), TERN_OK);
        assert!(last().ends_with("boom 42"), "success leaves the message alone");
        let status = guard("tern_test", || Err(Error::invalid("bad\0value")));
        assert_eq!(status, TERN_ERR_INVALID_ARGUMENT);
        assert_eq!(last(), "tern_test: bad\\0value");
    }

    #[test]
    fn every_code_has_a_description() {
        for code in TERN_OK..=TERN_ERR_INTERNAL {
            // SAFETY: static NUL-terminated strings.
            let s = unsafe { CStr::from_ptr(tern_status_string(code)) };
            assert_ne!(s.to_str().unwrap(), "unknown status", "code {code}");
        }
        // SAFETY: as above.
        assert_eq!(
            unsafe { CStr::from_ptr(tern_status_string(99)) }.to_str().unwrap(),
            "unknown status"
        );
    }
}
