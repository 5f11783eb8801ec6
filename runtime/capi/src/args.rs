//! Turning C arguments into Rust references. Every raw pointer an exported function receives goes through
//! one of these, which reject NULL with `TERN_ERR_NULL_POINTER`; what they cannot check (that a non-NULL
//! pointer is valid for the given length) is the caller's side of the contract documented in tern.h.

use std::ffi::{c_char, CStr};

use crate::status::Error;

/// `*p` for an input struct.
///
/// # Safety
/// `p` is NULL or points to a valid, initialised `T` that nothing writes to during the call.
pub(crate) unsafe fn input<'a, T>(p: *const T, what: &str) -> Result<&'a T, Error> {
    // SAFETY: non-NULL `p` is valid for reads of `T` per the caller's contract.
    unsafe { p.as_ref() }.ok_or_else(|| Error::null(what))
}

/// Stores `value` at `p` (an output argument), without reading what was there.
///
/// # Safety
/// `p` is NULL or points to memory valid for writes of `T` that nothing else accesses during the call.
pub(crate) unsafe fn write<T>(p: *mut T, value: T, what: &str) -> Result<(), Error> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    if !p.is_aligned() {
        return Err(Error::invalid(format!("{what} is not aligned for its type")));
    }
    // SAFETY: non-NULL, aligned, valid for writes per the caller's contract; `write` does not read or drop
    // the old contents (which may be uninitialised).
    unsafe { p.write(value) };
    Ok(())
}

/// Rejects element counts whose byte size a slice cannot have (more than `isize::MAX` bytes).
pub(crate) fn check_len<T>(len: usize, what: &str) -> Result<(), Error> {
    match len.checked_mul(std::mem::size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
        _ => Err(Error::invalid(format!(
            "{what}: {len} elements is more than memory can hold"
        ))),
    }
}

/// `len` elements at `p`; NULL is accepted when `len` is 0.
///
/// # Safety
/// When `len > 0`, `p` points to `len` initialised `T`s that nothing writes to during the call.
pub(crate) unsafe fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::null(what));
    }
    if !p.is_aligned() {
        return Err(Error::invalid(format!("{what} is not aligned for its element type")));
    }
    check_len::<T>(len, what)?;
    // SAFETY: non-NULL, aligned, at most isize::MAX bytes, and valid for `len` reads per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// `len` writable elements at `p`; NULL is accepted when `len` is 0.
///
/// # Safety
/// When `len > 0`, `p` points to memory valid for `len` writes of `T` that nothing else accesses during the
/// call (any bit pattern is a valid `T`).
pub(crate) unsafe fn slice_mut<'a, T>(p: *mut T, len: usize, what: &str) -> Result<&'a mut [T], Error> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(Error::null(what));
    }
    if !p.is_aligned() {
        return Err(Error::invalid(format!("{what} is not aligned for its element type")));
    }
    check_len::<T>(len, what)?;
    // SAFETY: non-NULL, aligned, at most isize::MAX bytes, and valid for `len` writes per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// A NUL-terminated string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that nothing writes to during the call.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a CStr, Error> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// `len` bytes of UTF-8 text at `p` (not NUL-terminated; NULL is accepted when `len` is 0).
///
/// # Safety
/// As `slice`.
pub(crate) unsafe fn utf8<'a>(p: *const c_char, len: usize, what: &str) -> Result<&'a str, Error> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { slice(p.cast::<u8>(), len, what) }?;
    std::str::from_utf8(bytes).map_err(|e| Error::invalid(format!("{what} is not UTF-8: {e}")))
}
