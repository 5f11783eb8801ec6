//! Zero heap allocations during prefill, decode, sampling and full-logit passes, counted by a global
//! allocator that counts the calls made on the test's own thread while counting is switched on.
//!
//! Threads: this checks the single-threaded path (`threads = 1`, the `no_std` core). With `threads > 1`
//! the only allocations are the standard library's own bookkeeping for spawning scoped threads.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

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

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
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

#[test]
fn counter_sees_allocations() {
    let (v, n) = counted(|| vec![1u8; 100]);
    assert_eq!(v.len(), 100);
    assert!(n >= 1);
}

#[test]
fn inference_path_allocates_nothing() {
    for arch in [Architecture::Llama, Architecture::BitNetB158] {
        let mut spec = Spec::small(arch);
        spec.scales = vec![ScaleKind::PerGroup(32), ScaleKind::PerTensor];
        spec.layouts = vec![TernaryLayout::Base3, TernaryLayout::TwoBit];
        spec.head = Some(Dense::Int4(32));
        let bytes = build(&spec, 11);
        let model = Model::new(ModelView::parse(&bytes).unwrap()).unwrap();
        let opts = SessionOptions::new(64, 8);
        let mut arena = vec![0u8; opts.arena_bytes(model.config()).unwrap()];
        let mut s = Session::new(&model, &mut arena, opts).unwrap();
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

        let (result, n) = counted(|| -> Result<u32, tern_runtime::RuntimeError> {
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
        assert_eq!(n, 0, "{arch:?}: {n} heap allocations on the inference path");
    }
}
