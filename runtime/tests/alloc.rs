//! Zero heap allocations during prefill, decode, sampling and full-logit passes, counted by a global
//! allocator: on the test's own thread (the single-threaded path, `threads = 1`, as the `no_std` core runs),
//! and on every thread of the process (`threads = 3`: the session's worker pool, created with the session,
//! must not allocate per loop either). The tests of this file take one lock, so that nothing else in the
//! process allocates while the process-wide count is on.

mod common;

use common::counting::{counted, counted_everywhere, Counting, ONE_AT_A_TIME};
use common::{build, tokens, Dense, Spec};
use tern_format::{Architecture, ModelView, ParseOptions, ScaleKind, TernaryLayout};
use tern_runtime::{Logits, Model, OwnedModel, OwnedSession, Sampler, SamplingParams, Session, SessionOptions};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn counters_see_allocations() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (v, n) = counted(|| vec![1u8; 100]);
    assert_eq!(v.len(), 100);
    assert!(n >= 1);
    let (v, n) = counted_everywhere(|| std::thread::spawn(|| vec![2u8; 100]).join().unwrap());
    assert_eq!(v.len(), 100);
    assert!(n >= 1);
}

#[test]
fn inference_path_allocates_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for threads in [1, 3] {
        inference_allocations(threads);
    }
}

fn inference_allocations(threads: usize) {
    for arch in [Architecture::Llama, Architecture::BitNetB158] {
        let mut spec = Spec::small(arch);
        spec.scales = vec![ScaleKind::PerGroup(32), ScaleKind::PerTensor];
        spec.layouts = vec![TernaryLayout::Base3, TernaryLayout::TwoBit];
        spec.head = Some(Dense::Int4(32));
        let bytes = build(&spec, 11);
        let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();
        let opts = SessionOptions::new(64, 8).with_threads(threads);
        let mut arena = vec![0u8; opts.arena_bytes(model.config()).unwrap()];
        let mut s = Session::new(&model, &mut arena, opts).unwrap();
        s.set_min_work_per_thread(0);
        let prompt = tokens(21, spec.vocab, 3);
        let mut greedy = Sampler::new(SamplingParams::greedy());
        let mut sampler = Sampler::new(SamplingParams {
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        });
        let mut no_top_k = Sampler::new(SamplingParams {
            top_k: 0,
            ..SamplingParams::default()
        });

        let count = if threads == 1 { counted } else { counted_everywhere };
        let (result, n) = count(&mut || -> Result<u32, tern_runtime::RuntimeError> {
            s.prefill(&prompt)?;
            let mut tok = s.sample(&mut greedy)?;
            for i in 0..12 {
                s.decode(tok)?;
                tok = match i % 3 {
                    0 => s.sample(&mut greedy)?,
                    1 => s.sample(&mut sampler)?,
                    _ => s.sample(&mut no_top_k)?,
                };
            }
            s.forward(&prompt[..8], Logits::All)?;
            s.reset();
            s.prefill(&prompt[..5])?;
            Ok(tok)
        });
        result.unwrap();
        assert_eq!(s.max_tasks_last_pass(), threads, "{arch:?}: the loops were not split");
        assert_eq!(
            n, 0,
            "{arch:?}, {threads} threads: {n} heap allocations on the inference path"
        );
    }
}

#[test]
fn owned_session_calls_allocate_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // `OwnedSession` re-parses the directory and re-carves the arena on every call: none of that allocates.
    let spec = Spec::small(Architecture::Llama);
    let model = OwnedModel::new(build(&spec, 4), ParseOptions::default()).unwrap();
    let opts = SessionOptions::new(64, 8);
    let arena = vec![0u8; model.arena_bytes(&opts).unwrap()];
    let mut s = OwnedSession::new(&model, arena, opts).unwrap();
    let prompt = tokens(13, spec.vocab, 5);
    let mut sampler = Sampler::new(SamplingParams::default());
    let mut logits = vec![0f32; spec.vocab as usize];
    let (result, n) = counted(|| -> Result<u32, tern_runtime::RuntimeError> {
        s.prefill(&prompt)?;
        let mut tok = s.sample(&mut sampler)?;
        for _ in 0..6 {
            s.decode(tok)?;
            s.copy_last_logits(&mut logits)?;
            tok = s.sample(&mut sampler)?;
        }
        s.truncate(3);
        s.decode(tok)?;
        Ok(tok)
    });
    result.unwrap();
    assert_eq!(n, 0, "{n} heap allocations through OwnedSession");
}
