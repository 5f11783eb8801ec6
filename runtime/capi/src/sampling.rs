//! Sampling parameters and `tern_sampler`, a plain struct the caller owns (no handle, no allocation): the
//! parameters plus the random generator's state, which every `tern_session_sample` advances.

use tern_runtime::{Rng, Sampler, SamplingParams};

use crate::args;
use crate::session::lock;
use crate::status::{guard, tern_status, Error};

/// How the next token is chosen: repetition penalty, then top-k, top-p, min-p, temperature, draw (llama.cpp's
/// order). `tern_sampling_params_default` gives llama.cpp's defaults.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct tern_sampling_params {
    /// <= 0: greedy (the most likely token after the repetition penalty).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: u32,
    /// Keep the most likely tokens up to this cumulative probability (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = none).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this (1 = off; must be > 0).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: u32,
    /// Seed of the random generator (`tern_sampler_init`).
    pub seed: u64,
}

/// Parameters and generator state. Initialise with `tern_sampler_init`; copy it to fork a sequence.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct tern_sampler {
    pub params: tern_sampling_params,
    /// SplitMix64 state: the same state and logits give the same token on every platform.
    pub rng_state: u64,
}

impl From<SamplingParams> for tern_sampling_params {
    fn from(p: SamplingParams) -> Self {
        Self {
            temperature: p.temperature,
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: u32::try_from(p.repeat_last_n).unwrap_or(u32::MAX),
            seed: p.seed,
        }
    }
}

/// The runtime's parameters, after checking the floats (NaN or an infinite value would make every
/// probability NaN).
pub(crate) fn params_of(p: &tern_sampling_params) -> Result<SamplingParams, Error> {
    let finite = [p.temperature, p.top_p, p.min_p, p.repeat_penalty];
    if finite.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid("sampling parameters must be finite numbers"));
    }
    if p.repeat_penalty <= 0.0 {
        return Err(Error::invalid("repeat_penalty must be > 0 (1 = off)"));
    }
    Ok(SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: p.repeat_last_n as usize,
        seed: p.seed,
    })
}

/// Runs `f` with the runtime sampler `s` describes, then stores the advanced generator state back.
pub(crate) fn with_sampler<R>(s: &mut tern_sampler, f: impl FnOnce(&mut Sampler) -> R) -> Result<R, Error> {
    let params = params_of(&s.params)?;
    let mut sampler = Sampler::with_rng(params, Rng::new(s.rng_state));
    let r = f(&mut sampler);
    s.rng_state = sampler.rng().state();
    Ok(r)
}

/// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repetition penalty (64
/// tokens), seed 0x5EED.
#[no_mangle]
pub extern "C" fn tern_sampling_params_default() -> tern_sampling_params {
    SamplingParams::default().into()
}

/// Greedy decoding: always the most likely token.
#[no_mangle]
pub extern "C" fn tern_sampling_params_greedy() -> tern_sampling_params {
    SamplingParams::greedy().into()
}

/// Sets `*sampler` to `*params` with the generator seeded from `params->seed`.
///
/// # Safety
/// `sampler` points to writable storage for a `tern_sampler`; `params` points to parameters.
#[no_mangle]
pub unsafe extern "C" fn tern_sampler_init(
    sampler: *mut tern_sampler,
    params: *const tern_sampling_params,
) -> tern_status {
    guard("tern_sampler_init", || {
        // SAFETY: contract above.
        let p = *unsafe { args::input(params, "params") }?;
        params_of(&p)?;
        let s = tern_sampler {
            params: p,
            rng_state: Rng::new(p.seed).state(),
        };
        // SAFETY: contract above.
        unsafe { args::write(sampler, s, "sampler") }
    })
}

/// Chooses the next token from the session's current logits with `sampler` (advancing its generator) and
/// writes it to `*out_token`. Does not feed it: call `tern_session_feed` with it to continue.
///
/// # Safety
/// `session` is a live handle; `sampler` points to an initialised `tern_sampler`; `out_token` points to
/// writable storage for a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn tern_session_sample(
    session: *mut crate::session::tern_session,
    sampler: *mut tern_sampler,
    out_token: *mut u32,
) -> tern_status {
    guard("tern_session_sample", || {
        // SAFETY: contract above.
        let mut s = unsafe { lock(session) }?;
        // SAFETY: contract above; the sampler is read and written back by value.
        let mut state = *unsafe { args::input(sampler.cast_const(), "sampler") }?;
        let token = with_sampler(&mut state, |sm| s.sample(sm))??;
        // SAFETY: contract above.
        unsafe { args::write(sampler, state, "sampler") }?;
        // SAFETY: contract above.
        unsafe { args::write(out_token, token, "out_token") }
    })
}
