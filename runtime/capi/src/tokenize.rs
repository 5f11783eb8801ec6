//! Text to token ids and back, with the tokenizer embedded in the model (Hugging Face `tokenizer.json`).
//! The tokenizer allocates; the inference calls do not.

use std::ffi::c_char;

use crate::args;
use crate::model::{model_ref, tern_model};
use crate::session::check_capacity;
use crate::status::{guard, tern_status, Error, TERN_ERR_TOKENIZER, TERN_ERR_TOKEN_OUT_OF_RANGE};

/// Tokenize as a prompt: BOS first when the model's config says prompts start with it.
pub const TERN_TOKENIZE_PROMPT: u32 = 1;

/// Converts `text_len` bytes of UTF-8 `text` to token ids (special-token texts such as `<|im_start|>` map to
/// their ids). Writes the count to `*out_count` and, when it fits in `capacity`, the ids to `out_tokens`;
/// otherwise returns `TERN_ERR_BUFFER_TOO_SMALL` with the count needed (call with capacity 0 to size a
/// buffer). `flags` is 0 or `TERN_TOKENIZE_PROMPT`.
///
/// # Safety
/// `model` is a live handle; `text` points to `text_len` bytes; `out_tokens` is valid for `capacity` writes;
/// `out_count` points to writable storage for a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn tern_tokenize(
    model: *const tern_model,
    text: *const c_char,
    text_len: usize,
    flags: u32,
    out_tokens: *mut u32,
    capacity: usize,
    out_count: *mut usize,
) -> tern_status {
    guard("tern_tokenize", || {
        // SAFETY: contract above.
        unsafe { args::write(out_count, 0, "out_count") }?;
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let text = unsafe { args::utf8(text, text_len, "text") }?;
        if flags & !TERN_TOKENIZE_PROMPT != 0 {
            return Err(Error::invalid(format!("unknown flags {flags:#x}")));
        }
        let tok = m.shared.tokenizer()?;
        let ids = if flags & TERN_TOKENIZE_PROMPT != 0 {
            tok.encode_prompt(text)
        } else {
            tok.encode(text)
        }
        .map_err(|e| Error::new(TERN_ERR_TOKENIZER, e.to_string()))?;
        // SAFETY: contract above.
        unsafe { args::write(out_count, ids.len(), "out_count") }?;
        check_capacity(ids.len(), capacity, "the token ids")?;
        // SAFETY: contract above.
        let out = unsafe { args::slice_mut(out_tokens, capacity, "out_tokens") }?;
        out[..ids.len()].copy_from_slice(&ids);
        Ok(())
    })
}

/// Checks ids against the vocabulary (the tokenizer would skip unknown ones silently).
pub(crate) fn check_ids(ids: &[u32], vocab: u32) -> Result<(), Error> {
    match ids.iter().find(|&&t| t >= vocab) {
        Some(t) => Err(Error::new(
            TERN_ERR_TOKEN_OUT_OF_RANGE,
            format!("token id {t} is outside the vocabulary of {vocab}"),
        )),
        None => Ok(()),
    }
}

/// Converts `n_tokens` ids to UTF-8 text (special tokens are left out). Writes the text's length in bytes
/// to `*out_len` and, when `capacity` > that length, the text plus a terminating NUL to `out_text`;
/// otherwise returns `TERN_ERR_BUFFER_TOO_SMALL` with the length needed (the buffer needs `*out_len + 1`).
///
/// # Safety
/// `model` is a live handle; `tokens` points to `n_tokens` ids; `out_text` is valid for `capacity` writes;
/// `out_len` points to writable storage for a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn tern_detokenize(
    model: *const tern_model,
    tokens: *const u32,
    n_tokens: usize,
    out_text: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
) -> tern_status {
    guard("tern_detokenize", || {
        // SAFETY: contract above.
        unsafe { args::write(out_len, 0, "out_len") }?;
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let ids = unsafe { args::slice(tokens, n_tokens, "tokens") }?;
        check_ids(ids, m.shared.owned.config().vocab_size)?;
        let text = m
            .shared
            .tokenizer()?
            .decode(ids, true)
            .map_err(|e| Error::new(TERN_ERR_TOKENIZER, e.to_string()))?;
        // SAFETY: contract above.
        unsafe { args::write(out_len, text.len(), "out_len") }?;
        check_capacity(text.len() + 1, capacity, "the text and its NUL")?;
        // SAFETY: contract above.
        let out = unsafe { args::slice_mut(out_text.cast::<u8>(), capacity, "out_text") }?;
        out[..text.len()].copy_from_slice(text.as_bytes());
        out[text.len()] = 0;
        Ok(())
    })
}
