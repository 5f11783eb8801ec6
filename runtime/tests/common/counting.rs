//! A global allocator that counts allocations while counting is on, for the "no heap allocation on the
//! inference path" tests: per thread (`counted`) and process-wide (`counted_everywhere`, for multi-threaded
//! sessions, whose workers allocate on their own threads). A test file installs it with
//! `#[global_allocator] static GLOBAL: Counting = Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct Counting;

// Both per thread: the test harness runs tests on parallel threads, and one test's allocations must not land
// in another's count.
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}
/// Process-wide counting (every thread), for the multi-threaded tests.
static COUNTING_ALL: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS_ALL: AtomicUsize = AtomicUsize::new(0);
/// Held by every test of a file that counts process-wide: that count must see one test only.
#[allow(dead_code)] // not every test file counts process-wide
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
    if COUNTING_ALL.load(Ordering::Relaxed) {
        ALLOCATIONS_ALL.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged; counting
// touches only an atomic and `const`-initialised thread-local `Cell`s (which never allocate).
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

/// Runs `f` and returns its result with the number of allocations it made on this thread.
pub fn counted<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCATIONS.with(Cell::get) - before)
}

/// Runs `f` and returns its result with the number of allocations made on every thread of the process while
/// it ran (callers hold `ONE_AT_A_TIME`).
#[allow(dead_code)] // not every test file counts process-wide
pub fn counted_everywhere<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATIONS_ALL.load(Ordering::SeqCst);
    COUNTING_ALL.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING_ALL.store(false, Ordering::SeqCst);
    (r, ALLOCATIONS_ALL.load(Ordering::SeqCst) - before)
}
