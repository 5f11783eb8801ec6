//! `tern_session_generate`: feed a prompt, then sample, report and feed one token at a time until a limit,
//! a stop token, the callback or the context says stop. The whole loop runs inside one call, so the model
//! is parsed and the arena carved once per generation, not per token.

use std::ffi::{c_char, c_void};

use tern_runtime::tokenizer::StreamDecoder;
use tern_runtime::Session;

use crate::args;
use crate::model::TERN_NO_TOKEN;
use crate::sampling::{tern_sampler, with_sampler};
use crate::session::{lock, tern_session};
use crate::status::{guard, tern_status, Error, TERN_ERR_TOKENIZER};

/// Called once per generated token with its id and, when `decode_text` is set, the text it completes
/// (UTF-8, NUL-terminated, `text_len` bytes without the NUL; may be empty while a multi-byte character is
/// incomplete; NULL when `decode_text` is 0). `text` is valid only during the call. Return 0 to continue,
/// anything else to stop after this token. The callback must not unwind (no C++ exception or longjmp out of
/// it); it may call tern functions on other sessions and on the model, but not on this session (that gets
/// `TERN_ERR_BUSY`).
#[allow(non_camel_case_types)]
pub type tern_token_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, token: u32, text: *const c_char, text_len: usize) -> i32>;

/// Generation stopped after `max_tokens` tokens.
pub const TERN_STOP_MAX_TOKENS: u32 = 0;
/// The sampler chose a stop token (EOS or end of turn; it is not reported or fed).
pub const TERN_STOP_EOS: u32 = 1;
/// The callback returned non-zero.
pub const TERN_STOP_CALLBACK: u32 = 2;
/// The session's context is full.
pub const TERN_STOP_CONTEXT_FULL: u32 = 3;

/// What `tern_session_generate` does.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tern_generate_params {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Non-zero: stop when the sampler picks one of the model's stop tokens (`tern_model_is_stop_token`).
    pub stop_at_eos: u32,
    /// Non-zero: pass each token's text to the callback (uses the tokenizer, which allocates); 0: ids only,
    /// and nothing is allocated.
    pub decode_text: u32,
}

/// What `tern_session_generate` did.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tern_generate_result {
    /// Tokens reported to the callback (and fed to the session).
    pub n_tokens: u32,
    /// `TERN_STOP_*`.
    pub stop_reason: u32,
}

struct Callback {
    f: tern_token_callback,
    user_data: *mut c_void,
    /// The text piece, NUL-terminated, reused across tokens.
    text: Vec<u8>,
}

impl Callback {
    /// Calls the callback; `true` when it asks to stop.
    fn call(&mut self, token: u32, piece: Option<&str>) -> bool {
        let Some(f) = self.f else { return false };
        let (ptr, len) = match piece {
            Some(p) => {
                self.text.clear();
                self.text.extend_from_slice(p.as_bytes());
                self.text.push(0);
                (self.text.as_ptr().cast::<c_char>(), p.len())
            }
            None => (std::ptr::null(), 0),
        };
        // SAFETY: a function pointer the caller passed for this purpose, called with its own user data and a
        // NUL-terminated buffer that outlives the call.
        unsafe { f(self.user_data, token, ptr, len) != 0 }
    }
}

/// The generation loop. Invariant: every token reported to the callback has been fed to the session when
/// this returns (so the session holds prompt + reply), except on an error.
fn run(
    s: &mut Session<'_>,
    params: &tern_generate_params,
    sampler: &mut tern_sampler,
    stop_tokens: &[u32],
    mut decoder: Option<StreamDecoder<'_>>,
    cb: &mut Callback,
) -> Result<tern_generate_result, Error> {
    let mut result = tern_generate_result::default();
    loop {
        if result.n_tokens >= params.max_tokens {
            result.stop_reason = TERN_STOP_MAX_TOKENS;
            break;
        }
        if s.remaining() == 0 {
            result.stop_reason = TERN_STOP_CONTEXT_FULL;
            break;
        }
        let token = with_sampler(sampler, |sm| s.sample(sm))??;
        if params.stop_at_eos != 0 && stop_tokens.contains(&token) {
            result.stop_reason = TERN_STOP_EOS;
            break;
        }
        let piece = match decoder.as_mut() {
            Some(d) => Some(
                d.push(token)
                    .map_err(|e| Error::new(TERN_ERR_TOKENIZER, e.to_string()))?,
            ),
            None => None,
        };
        let stop = cb.call(token, piece.as_deref());
        result.n_tokens += 1;
        s.decode(token)?;
        if stop {
            result.stop_reason = TERN_STOP_CALLBACK;
            break;
        }
    }
    if let Some(d) = decoder.as_mut() {
        // Text held back at the very end (an incomplete UTF-8 sequence), delivered lossily.
        let rest = d.finish().map_err(|e| Error::new(TERN_ERR_TOKENIZER, e.to_string()))?;
        if !rest.is_empty() {
            cb.call(TERN_NO_TOKEN, Some(&rest));
        }
    }
    Ok(result)
}

/// Feeds `n_prompt` tokens of `prompt` (may be 0: continue from the current logits), then generates up to
/// `params->max_tokens` tokens with `sampler`, calling `callback` (may be NULL) for each; each generated
/// token is fed before the next is sampled, so afterwards the session holds prompt + generated tokens.
/// Generation stops early at a stop token (if `stop_at_eos`), when the callback returns non-zero, or when
/// the context is full; `*out_result` (may be NULL) tells how many tokens and why. With `decode_text`, a
/// last callback with token `TERN_NO_TOKEN` may deliver text held back at the end. A prompt that does not
/// fit the context fails with `TERN_ERR_CONTEXT_FULL` before anything runs.
///
/// # Safety
/// `session` is a live handle; `prompt` points to `n_prompt` ids; `params` points to parameters; `sampler`
/// to an initialised `tern_sampler`; `callback`, if not NULL, is safe to call with `user_data`;
/// `out_result` is NULL or points to writable storage for a `tern_generate_result`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tern_session_generate(
    session: *mut tern_session,
    prompt: *const u32,
    n_prompt: usize,
    params: *const tern_generate_params,
    sampler: *mut tern_sampler,
    callback: tern_token_callback,
    user_data: *mut c_void,
    out_result: *mut tern_generate_result,
) -> tern_status {
    guard("tern_session_generate", || {
        // SAFETY: contract above.
        let mut s = unsafe { lock(session) }?;
        // SAFETY: contract above.
        let prompt = unsafe { args::slice(prompt, n_prompt, "prompt") }?;
        // SAFETY: contract above.
        let params = *unsafe { args::input(params, "params") }?;
        // SAFETY: contract above; read and written back by value.
        let mut state = *unsafe { args::input(sampler.cast_const(), "sampler") }?;
        let shared = std::sync::Arc::clone(&s.model().0);
        let tokenizer = match params.decode_text {
            0 => None,
            _ => Some(shared.tokenizer()?),
        };
        let mut cb = Callback {
            f: callback,
            user_data,
            text: Vec::new(),
        };
        let outcome = s.with(|sess| {
            if !prompt.is_empty() {
                sess.prefill(prompt)?;
            }
            let decoder = tokenizer.map(|t| t.stream(sess.tokens()));
            Ok(run(sess, &params, &mut state, &shared.stop_tokens, decoder, &mut cb))
        });
        // The generator advanced for every token drawn, even if a later step failed.
        // SAFETY: contract above.
        unsafe { args::write(sampler, state, "sampler") }?;
        let result = outcome??;
        if !out_result.is_null() {
            // SAFETY: contract above.
            unsafe { args::write(out_result, result, "out_result") }?;
        }
        Ok(())
    })
}
