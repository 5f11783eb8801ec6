//! tern-capi: the C API of tern-runtime, built as `libtern.a` and `libtern.so`; the header is
//! `include/tern.h`, generated from this crate by cbindgen (tests/header.rs checks it is current).
//!
//! This crate only translates: handles, status codes and C structs on one side, the runtime's `OwnedModel`
//! and `OwnedSession` on the other. Every exported function:
//!
//! - checks its pointer arguments for NULL (`TERN_ERR_NULL_POINTER`) and alignment, and its values;
//! - returns a `tern_status` and records a message for `tern_last_error_message` (thread-local);
//! - runs its body under `catch_unwind`: a panic (a bug in tern) becomes `TERN_ERR_INTERNAL` and never
//!   unwinds into C. Built with `panic = "abort"` instead, a panic aborts the process. Callbacks from C must
//!   not unwind either (a C++ exception thrown through tern aborts).
//!
//! Threads: a model is immutable once opened and may be used by any number of threads and sessions at once;
//! a session is used by one thread at a time (a concurrent call gets `TERN_ERR_BUSY`).
#![deny(unsafe_op_in_unsafe_fn)]

// Declared in the order tern.h presents them (cbindgen follows it; the blank lines keep rustfmt from sorting).
pub mod status;

pub mod model;

pub mod session;

pub mod sampling;

pub mod generate;

pub mod tokenize;

mod args;

use std::ffi::c_char;

/// The library version ("MAJOR.MINOR.PATCH"), a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn tern_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
