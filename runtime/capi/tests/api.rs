//! The C API through its exported functions, checked against the runtime's borrowed `Model` / `Session` on
//! the same model: identical logits, tokens and generator states; no allocation after session creation;
//! one model shared by sessions on several threads; busy and freed-model detection.
//!
//! Misuse from C itself (NULLs, bad buffers, ...) is tests/misuse.c, built and run by scripts/test-capi.sh.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::ffi::{c_char, c_void, CStr};
use std::ptr::{null, null_mut};

use common::counting::{counted, counted_everywhere, Counting, ONE_AT_A_TIME};
use common::{build, tokens, Spec};
use tern::generate::*;
use tern::model::*;
use tern::sampling::*;
use tern::session::*;
use tern::status::*;
use tern::tokenize::*;
use tern_format::{AlignedBytes, Architecture, ModelView};
use tern_runtime::{Model, Rng, Sampler, SamplingParams, Session, SessionOptions};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn spec() -> Spec {
    let mut s = Spec::small(Architecture::Llama);
    s.layers = 2;
    s.context = 40;
    s
}

fn last_error() -> String {
    // SAFETY: tern_last_error_message returns a NUL-terminated string valid until the next failing call.
    unsafe { CStr::from_ptr(tern_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// Panics with the last error message unless `status` is `TERN_OK`.
fn ok(status: tern_status) {
    assert_eq!(status, TERN_OK, "{}", last_error());
}

fn open(bytes: &AlignedBytes) -> *mut tern_model {
    let mut m = null_mut();
    // SAFETY: `bytes` outlives every use of the model in these tests (each test frees its model first).
    ok(unsafe { tern_model_open_buffer(bytes.as_ptr().cast(), bytes.len(), 0, &mut m) });
    m
}

fn options(ctx: u32, batch: u32) -> tern_session_options {
    tern_session_options {
        max_context: ctx,
        max_batch: batch,
        kv_precision: TERN_KV_F16,
        threads: 1,
    }
}

fn new_session(m: *const tern_model, o: &tern_session_options) -> *mut tern_session {
    let mut s = null_mut();
    // SAFETY: live model, valid options and out pointer.
    ok(unsafe { tern_session_new(m, o, &mut s) });
    s
}

fn logits(s: *mut tern_session, vocab: usize) -> Vec<f32> {
    let mut out = vec![0f32; vocab];
    // SAFETY: live session, buffer of `vocab` floats.
    ok(unsafe { tern_session_get_logits(s, out.as_mut_ptr(), out.len()) });
    out
}

fn feed(s: *mut tern_session, t: &[u32]) -> tern_status {
    // SAFETY: live session (or one whose model was freed: that is what some tests check), valid slice.
    unsafe { tern_session_feed(s, t.as_ptr(), t.len()) }
}

/// Generation parameters without text.
fn ids_only(max_tokens: u32, stop_at_eos: u32) -> tern_generate_params {
    tern_generate_params {
        max_tokens,
        stop_at_eos,
        decode_text: 0,
    }
}

unsafe extern "C" fn collect(user: *mut c_void, token: u32, text: *const c_char, len: usize) -> i32 {
    assert!(text.is_null() && len == 0, "no text without decode_text");
    // SAFETY: `user` is the `Vec<u32>` the test passed.
    let v = unsafe { &mut *user.cast::<Vec<u32>>() };
    v.push(token);
    0
}

#[test]
fn c_api_matches_the_runtime() {
    // Every test holds it: one test counts allocations process-wide.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sp = spec();
    let bytes = build(&sp, 3);
    let vocab = sp.vocab as usize;
    let prompt = tokens(9, sp.vocab, 1);

    // The reference: the borrowed API directly.
    let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();
    let opts = SessionOptions::new(40, 4);
    let mut arena = vec![0u8; opts.arena_bytes(model.config()).unwrap()];
    let mut rs = Session::new(&model, &mut arena, opts).unwrap();
    let want_prefill = rs.prefill(&prompt).unwrap().to_vec();
    let mut sampler = Sampler::new(SamplingParams::default());
    let mut want_gen = Vec::new();
    for _ in 0..8 {
        let t = rs.sample(&mut sampler).unwrap();
        want_gen.push(t);
        rs.decode(t).unwrap();
    }
    let want_after = rs.last_logits().unwrap().to_vec();
    rs.truncate(prompt.len() + 3);
    let want_truncated = rs.decode(want_gen[0]).unwrap().to_vec();

    let m = open(&bytes);
    let mut cfg = tern_model_config::default();
    // SAFETY: live model, valid out pointer.
    ok(unsafe { tern_model_get_config(m, &mut cfg) });
    assert_eq!(
        (cfg.vocab_size, cfg.n_layers, cfg.hidden_size),
        (sp.vocab, sp.layers, sp.hidden)
    );
    assert_eq!(
        (cfg.architecture, cfg.context_length, cfg.bos_token),
        (TERN_ARCH_LLAMA, 40, 1)
    );
    let o = options(40, 4);
    let mut size = 0usize;
    // SAFETY: live model, valid pointers.
    ok(unsafe { tern_model_arena_size(m, &o, &mut size) });
    assert_eq!(size, opts.arena_bytes(model.config()).unwrap());

    // A caller arena (deliberately misaligned by 1: tern realigns) and a tern-allocated one.
    let mut buf = vec![0u8; size + 1];
    let mut caller = null_mut();
    // SAFETY: `buf` outlives the session (freed below).
    ok(unsafe { tern_session_new_in_arena(m, &o, buf.as_mut_ptr().add(1).cast(), size, &mut caller) });
    let own = new_session(m, &o);
    for s in [caller, own] {
        ok(feed(s, &prompt));
        assert_eq!(logits(s, vocab), want_prefill);
    }

    // Token by token with tern_session_sample, on the caller-arena session.
    let mut cs = tern_sampler {
        params: tern_sampling_params_default(),
        rng_state: 0,
    };
    let params = tern_sampling_params_default();
    // SAFETY: valid pointers.
    ok(unsafe { tern_sampler_init(&mut cs, &params) });
    let mut got = Vec::new();
    for _ in 0..8 {
        let mut t = 0u32;
        // SAFETY: live session, initialised sampler, valid out pointer.
        ok(unsafe { tern_session_sample(caller, &mut cs, &mut t) });
        got.push(t);
        ok(feed(caller, &[t]));
    }
    assert_eq!(got, want_gen);
    assert_eq!(
        cs.rng_state,
        sampler.rng().state(),
        "generator state advanced identically"
    );
    assert_eq!(logits(caller, vocab), want_after);

    // The same through tern_session_generate, on the tern-allocated session.
    let mut cs2 = tern_sampler {
        params,
        rng_state: Rng::new(params.seed).state(),
    };
    let gp = ids_only(8, 0);
    let mut ids: Vec<u32> = Vec::new();
    let mut result = tern_generate_result::default();
    // SAFETY: live session; `collect` gets the Vec as user data.
    ok(unsafe {
        tern_session_generate(
            own,
            null(),
            0,
            &gp,
            &mut cs2,
            Some(collect),
            (&raw mut ids).cast(),
            &mut result,
        )
    });
    assert_eq!(ids, want_gen);
    assert_eq!((result.n_tokens, result.stop_reason), (8, TERN_STOP_MAX_TOKENS));
    assert_eq!(cs2, cs);
    assert_eq!(logits(own, vocab), want_after, "every generated token was fed");

    // Truncate, position, reset.
    let mut pos = 0usize;
    // SAFETY: live handles and valid pointers.
    ok(unsafe { tern_session_position(own, &mut pos) });
    assert_eq!(pos, prompt.len() + 8);
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    ok(unsafe { tern_session_truncate(own, prompt.len() + 3) });
    ok(feed(own, &want_gen[..1]));
    assert_eq!(logits(own, vocab), want_truncated);
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    ok(unsafe { tern_session_reset(own) });
    ok(unsafe { tern_session_position(own, &mut pos) });
    assert_eq!(pos, 0);
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    ok(unsafe { tern_session_set_threads(own, 2) });
    ok(feed(own, &prompt));
    assert_eq!(logits(own, vocab), want_prefill, "two threads, same logits");

    // Generation stops at the context's end with every reported token fed.
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    ok(unsafe { tern_session_reset(caller) });
    let mut ids: Vec<u32> = Vec::new();
    let long = tern_generate_params { max_tokens: 1000, ..gp };
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    ok(unsafe {
        tern_session_generate(
            caller,
            prompt.as_ptr(),
            prompt.len(),
            &long,
            &mut cs,
            Some(collect),
            (&raw mut ids).cast(),
            &mut result,
        )
    });
    assert_eq!(
        (result.n_tokens as usize, result.stop_reason),
        (40 - prompt.len(), TERN_STOP_CONTEXT_FULL)
    );
    assert_eq!(ids.len(), 40 - prompt.len());
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    ok(unsafe { tern_session_position(caller, &mut pos) });
    assert_eq!(pos, 40);

    // SAFETY: handles this test made and has not freed, pointers to live locals.
    unsafe {
        tern_session_free(caller);
        tern_session_free(own);
        tern_model_free(m);
    }
}

#[test]
fn inference_calls_allocate_nothing_after_session_creation() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for threads in [1, 2] {
        inference_allocations(threads);
    }
}

fn inference_allocations(threads: u32) {
    let sp = spec();
    let bytes = build(&sp, 4);
    let m = open(&bytes);
    let o = tern_session_options {
        threads,
        ..options(40, 4)
    };
    let mut size = 0usize;
    // SAFETY: live handles and valid pointers.
    ok(unsafe { tern_model_arena_size(m, &o, &mut size) });
    let mut arena = vec![0u8; size];
    let mut s = null_mut();
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    ok(unsafe { tern_session_new_in_arena(m, &o, arena.as_mut_ptr().cast(), size, &mut s) });
    let prompt = tokens(7, sp.vocab, 2);
    let mut out = vec![0f32; sp.vocab as usize];
    let mut sampler = tern_sampler {
        params: tern_sampling_params_default(),
        rng_state: 5,
    };
    let gp = ids_only(6, 1);
    let mut ids: Vec<u32> = Vec::with_capacity(64);
    let ids_ptr: *mut c_void = (&raw mut ids).cast();
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    // Worker threads allocate on their own threads: count process-wide when there are some.
    let count = if threads == 1 { counted } else { counted_everywhere };
    let (statuses, n) = count(|| unsafe {
        let mut t = 0u32;
        let mut pos = 0usize;
        let mut result = tern_generate_result::default();
        [
            tern_session_feed(s, prompt.as_ptr(), prompt.len()),
            tern_session_get_logits(s, out.as_mut_ptr(), out.len()),
            tern_session_sample(s, &mut sampler, &mut t),
            tern_session_feed(s, &t, 1),
            tern_session_generate(s, null(), 0, &gp, &mut sampler, Some(collect), ids_ptr, &mut result),
            tern_session_truncate(s, 3),
            tern_session_position(s, &mut pos),
            tern_session_generate(
                s,
                prompt.as_ptr(),
                2,
                &gp,
                &mut sampler,
                Some(collect),
                ids_ptr,
                &mut result,
            ),
            tern_session_reset(s),
        ]
    });
    for st in statuses {
        ok(st);
    }
    assert_eq!(n, 0, "{threads} threads: {n} heap allocations after session creation");
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    unsafe {
        tern_session_free(s);
        tern_model_free(m);
    }
}

/// Feeds a prompt and five more tokens in a new session of `m`; the last logits.
fn feed_some(m: *const tern_model, vocab: u32, seed: u64) -> Vec<f32> {
    let s = new_session(m, &options(40, 4));
    ok(feed(s, &tokens(12, vocab, seed)));
    let mut last = Vec::new();
    for t in 0..5u32 {
        ok(feed(s, &[t + 3]));
        last = logits(s, vocab as usize);
    }
    // SAFETY: our own live session.
    unsafe { tern_session_free(s) };
    last
}

#[test]
fn one_model_shared_by_sessions_on_many_threads() {
    // Every test holds it: one test counts allocations process-wide.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sp = spec();
    let bytes = build(&sp, 6);
    let m = open(&bytes);
    let sequential: Vec<Vec<f32>> = (0..4).map(|seed| feed_some(m, sp.vocab, seed)).collect();
    struct Shared(*mut tern_model);
    // SAFETY: the header's contract: a model may be used from any number of threads at once.
    unsafe impl Sync for Shared {}
    let shared = Shared(m);
    let parallel: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u64)
            .map(|seed| {
                let shared = &shared;
                scope.spawn(move || feed_some(shared.0, sp.vocab, seed))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(parallel, sequential);
    // SAFETY: no session or thread uses it any more.
    unsafe { tern_model_free(m) };
}

struct Reentry {
    session: *mut tern_session,
    status: tern_status,
}

unsafe extern "C" fn reenter(user: *mut c_void, token: u32, _text: *const c_char, _len: usize) -> i32 {
    // SAFETY: `user` is the test's `Reentry`.
    let r = unsafe { &mut *user.cast::<Reentry>() };
    // SAFETY: a live session, in use by the generate call that invoked us.
    r.status = unsafe { tern_session_feed(r.session, &token, 1) };
    1
}

#[test]
fn reentry_is_busy_and_a_freed_model_is_detected() {
    // Every test holds it: one test counts allocations process-wide.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sp = spec();
    let bytes = build(&sp, 8);
    let m = open(&bytes);
    let s = new_session(m, &options(40, 4));
    ok(feed(s, &[1, 2, 3]));
    let mut r = Reentry {
        session: s,
        status: TERN_OK,
    };
    let mut sampler = tern_sampler {
        params: tern_sampling_params_greedy(),
        rng_state: 0,
    };
    let gp = ids_only(4, 0);
    let mut result = tern_generate_result::default();
    // SAFETY: live handles and valid pointers; `reenter` gets `r`.
    ok(unsafe {
        tern_session_generate(
            s,
            null(),
            0,
            &gp,
            &mut sampler,
            Some(reenter),
            (&raw mut r).cast(),
            &mut result,
        )
    });
    assert_eq!(r.status, TERN_ERR_BUSY);
    assert_eq!((result.n_tokens, result.stop_reason), (1, TERN_STOP_CALLBACK));

    // Free the model first: the session refuses everything but tern_session_free.
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    unsafe { tern_model_free(m) };
    assert_eq!(feed(s, &[1]), TERN_ERR_MODEL_FREED);
    assert!(
        last_error().starts_with("tern_session_feed: the session's model was freed"),
        "{}",
        last_error()
    );
    let mut pos = 0usize;
    let mut t = 0u32;
    let mut out = vec![0f32; sp.vocab as usize];
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    assert_eq!(unsafe { tern_session_position(s, &mut pos) }, TERN_ERR_MODEL_FREED);
    assert_eq!(
        // SAFETY: handles this test made and has not freed, pointers to live locals.
        unsafe { tern_session_sample(s, &mut sampler, &mut t) },
        TERN_ERR_MODEL_FREED
    );
    assert_eq!(
        // SAFETY: handles this test made and has not freed, pointers to live locals.
        unsafe { tern_session_get_logits(s, out.as_mut_ptr(), out.len()) },
        TERN_ERR_MODEL_FREED
    );
    assert_eq!(
        // SAFETY: handles this test made and has not freed, pointers to live locals.
        unsafe { tern_session_generate(s, null(), 0, &gp, &mut sampler, None, null_mut(), null_mut()) },
        TERN_ERR_MODEL_FREED
    );
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    assert_eq!(unsafe { tern_session_reset(s) }, TERN_ERR_MODEL_FREED);
    unsafe { tern_session_free(s) };
}

#[test]
fn files_and_models_without_tokenizers() {
    // Every test holds it: one test counts allocations process-wide.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sp = spec();
    let bytes = build(&sp, 9);
    let dir = std::env::temp_dir().join(format!("tern-capi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.tern");
    std::fs::write(&path, &bytes[..]).unwrap();
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut m = null_mut();
    // SAFETY: valid strings and out pointers.
    ok(unsafe { tern_model_open(cpath.as_ptr(), TERN_OPEN_VERIFY_CHECKSUMS, &mut m) });
    let mut ids = [0u32; 8];
    let mut n = 0usize;
    assert_eq!(
        // SAFETY: handles this test made and has not freed, pointers to live locals.
        unsafe { tern_tokenize(m, c"hi".as_ptr(), 2, 0, ids.as_mut_ptr(), ids.len(), &mut n) },
        TERN_ERR_NO_TOKENIZER
    );
    let mut stop = false;
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    ok(unsafe { tern_model_is_stop_token(m, 2, &mut stop) });
    assert!(stop, "EOS (2) is a stop token without a tokenizer too");
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    unsafe { tern_model_free(m) };

    let missing = std::ffi::CString::new(dir.join("missing.tern").to_str().unwrap()).unwrap();
    // SAFETY: handles this test made and has not freed, pointers to live locals.
    assert_eq!(unsafe { tern_model_open(missing.as_ptr(), 0, &mut m) }, TERN_ERR_IO);
    assert!(m.is_null());
    assert!(last_error().contains("missing.tern"), "{}", last_error());
    std::fs::remove_dir_all(&dir).unwrap();
}
