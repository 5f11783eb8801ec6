//! Zero heap allocations during prefill, decode, sampling and full-logit passes, counted by a global
//! allocator: on the test's own thread (the single-threaded path, `threads = 1`, as the `no_std` core runs),
//! and on every thread of the process (`threads = 3`: the session's worker pool, created with the session,
//! must not allocate per loop either). The tests of this file take one lock, so that nothing else in the
//! process allocates while the process-wide count is on.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use common::{build, tokens, Dense, Spec};
use tern_format::{Architecture, ModelView, ScaleKind, TernaryLayout};
use tern_runtime::{Logits, Model, Sampler, SamplingParams, Session, SessionOptions};

struct Counting;

// Both per thread: the test harness runs tests on parallel threads, and one test's allocations must not land
// in another's count.
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}
/// Process-wide counting (every thread), for the multi-threaded test.
static COUNTING_ALL: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS_ALL: AtomicUsize = AtomicUsize::new(0);
/// Held by every test here: the process-wide count must see this file's test only.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
    if COUNTING_ALL.load(Ordering::Relaxed) {
        ALLOCATIONS_ALL.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged; counting
// touches only `const`-initialised thread-local `Cell`s (which never allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCATIONS.with(Cell::get) - before)
}

/// `f`'s allocations on every thread of the process.
fn counted_everywhere<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATIONS_ALL.load(Ordering::SeqCst);
    COUNTING_ALL.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING_ALL.store(false, Ordering::SeqCst);
    (r, ALLOCATIONS_ALL.load(Ordering::SeqCst) - before)
}

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
