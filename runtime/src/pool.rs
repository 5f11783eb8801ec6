//! A persistent pool of worker threads, one per session (`std` only; without it, work runs on the caller).
//!
//! Created once with the session (`Session::new`, `Session::set_threads`), never per token or per matrix. A
//! parallel loop hands every thread a fixed share of the items (item `i` to thread `i mod threads`, the
//! caller being thread 0), so which thread computes what never depends on timing, and results are the same
//! bits for any thread count as long as each item's work does not depend on the split (see `parallel.rs`).
//!
//! The barrier is cheap: a loop is published by bumping an epoch counter, workers spin on it (then park after
//! `SPIN` of idleness), and the caller spins until every worker has acknowledged. No allocation, no system
//! call while the workers are spinning — which they are throughout a decode — so even SmolLM2's small
//! matrices are worth splitting.
//!
//! The one `unsafe` here: a loop's closure and items are borrowed for the duration of `for_each_mut`, which
//! does not return until every worker has finished with them.
#![allow(unsafe_code)]

#[cfg(feature = "std")]
mod imp {
    use std::cell::UnsafeCell;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// How long an idle worker spins before it parks (a decode step's gaps between loops are microseconds).
    const SPIN: Duration = Duration::from_millis(2);
    /// When a spinning worker (or the caller at the barrier) starts yielding its core between checks.
    const YIELD_AFTER: Duration = Duration::from_micros(50);

    /// A published loop: `call(ctx, i)` runs item `i`.
    #[derive(Clone, Copy)]
    struct Job {
        ctx: *const (),
        call: unsafe fn(*const (), usize),
        items: usize,
    }

    struct Shared {
        epoch: AtomicU64,
        job: UnsafeCell<Job>,
        /// Workers that have not yet acknowledged the current epoch.
        pending: AtomicUsize,
        panicked: AtomicBool,
        stop: AtomicBool,
        sleepers: AtomicUsize,
        /// Workers that have started (their start-up, which may allocate, is over).
        ready: AtomicUsize,
        lock: Mutex<()>,
        wake: Condvar,
        threads: usize,
    }

    // SAFETY: `job` is written only by the pool's owner while no worker reads it (every worker has
    // acknowledged the previous epoch, `pending == 0`) and read by workers only between observing a new epoch
    // and acknowledging it; the pointers it holds are used only inside that window (see `for_each_mut`).
    unsafe impl Sync for Shared {}
    // SAFETY: as above; the raw pointers in `job` are only dereferenced under that protocol.
    unsafe impl Send for Shared {}

    /// The session's worker threads (`threads − 1` of them; the caller is the first thread). Not `Sync`:
    /// one loop at a time, from the thread that owns it (loops are not re-entrant either).
    pub struct Pool {
        shared: Arc<Shared>,
        workers: Vec<JoinHandle<()>>,
        _one_caller: core::marker::PhantomData<core::cell::Cell<()>>,
    }

    impl Pool {
        /// A pool for `threads` threads in all (the caller included); 0 and 1 mean no workers.
        pub fn new(threads: usize) -> Self {
            let threads = threads.max(1);
            let shared = Arc::new(Shared {
                epoch: AtomicU64::new(0),
                job: UnsafeCell::new(Job {
                    ctx: core::ptr::null(),
                    call: noop,
                    items: 0,
                }),
                pending: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                sleepers: AtomicUsize::new(0),
                ready: AtomicUsize::new(0),
                lock: Mutex::new(()),
                wake: Condvar::new(),
                threads,
            });
            let mut workers = Vec::with_capacity(threads - 1);
            for index in 1..threads {
                let s = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name(format!("tern-worker-{index}"))
                    .spawn(move || worker(&s, index));
                match spawned {
                    Ok(h) => workers.push(h),
                    // Fewer threads than asked (the OS refused): the loops still cover every item, as the
                    // shares are recomputed from the workers that exist.
                    Err(_) => break,
                }
            }
            // Wait for the workers' start-up, so that none of it (thread-local set-up may allocate) happens
            // later, during inference.
            while shared.ready.load(Ordering::Acquire) < workers.len() {
                std::thread::yield_now();
            }
            if workers.len() + 1 != threads {
                // Rebuild the shared state for the thread count we really have.
                let n = workers.len() + 1;
                shared.stop.store(true, Ordering::SeqCst);
                Self::shutdown(&shared, &mut workers);
                return Self::new(n);
            }
            Self {
                shared,
                workers,
                _one_caller: core::marker::PhantomData,
            }
        }

        /// Threads taking part in a loop, the caller included.
        pub fn threads(&self) -> usize {
            self.shared.threads
        }

        /// Runs `f` on every item, item `i` on thread `i mod threads()` (the caller is thread 0), and returns
        /// when all are done. A panic in a worker's item is re-raised here.
        pub fn for_each_mut<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
            let n = items.len();
            if self.workers.is_empty() || n <= 1 {
                items.iter_mut().for_each(f);
                return;
            }
            struct Ctx<'a, T> {
                items: *mut T,
                f: &'a (dyn Fn(&mut T) + Sync),
            }
            /// # Safety
            /// `ctx` points to a live `Ctx<T>` and `i` is an item index no other thread is running.
            unsafe fn call<T>(ctx: *const (), i: usize) {
                // SAFETY: per the function's contract.
                let ctx = unsafe { &*(ctx as *const Ctx<'_, T>) };
                // SAFETY: `i < items.len()`, and item `i` belongs to exactly one thread (`i mod threads`).
                (ctx.f)(unsafe { &mut *ctx.items.add(i) });
            }
            let ctx = Ctx {
                items: items.as_mut_ptr(),
                f,
            };
            let s = &*self.shared;
            // SAFETY: every worker acknowledged the previous epoch (`pending == 0` when the last call
            // returned), so none is reading `job`.
            unsafe {
                *s.job.get() = Job {
                    ctx: &ctx as *const Ctx<'_, T> as *const (),
                    call: call::<T>,
                    items: n,
                }
            };
            s.pending.store(self.workers.len(), Ordering::SeqCst);
            s.epoch.fetch_add(1, Ordering::SeqCst);
            if s.sleepers.load(Ordering::SeqCst) > 0 {
                let _g = s.lock.lock();
                s.wake.notify_all();
            }
            let run_own = catch_unwind(AssertUnwindSafe(|| {
                let mut i = 0;
                while i < n {
                    // SAFETY: `ctx` lives until this function returns; item `i` is thread 0's.
                    unsafe { call::<T>(&ctx as *const Ctx<'_, T> as *const (), i) };
                    i += s.threads;
                }
            }));
            // The barrier: wait until every worker is done with `ctx` — also when our own share panicked.
            let t0 = Instant::now();
            let mut spins = 0u32;
            while s.pending.load(Ordering::Acquire) != 0 {
                spins = spins.wrapping_add(1);
                if spins % 256 == 0 && t0.elapsed() > YIELD_AFTER {
                    std::thread::yield_now();
                } else {
                    core::hint::spin_loop();
                }
            }
            if let Err(p) = run_own {
                std::panic::resume_unwind(p);
            }
            if s.panicked.swap(false, Ordering::SeqCst) {
                panic!("a worker thread panicked");
            }
        }

        fn shutdown(shared: &Shared, workers: &mut Vec<JoinHandle<()>>) {
            shared.stop.store(true, Ordering::SeqCst);
            {
                let _g = shared.lock.lock();
                shared.wake.notify_all();
            }
            for h in workers.drain(..) {
                let _ = h.join();
            }
        }
    }

    impl Drop for Pool {
        fn drop(&mut self) {
            Self::shutdown(&self.shared, &mut self.workers);
        }
    }

    impl core::fmt::Debug for Pool {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "Pool({} threads)", self.threads())
        }
    }

    /// # Safety
    /// Never called with a live context (the initial job has no items).
    unsafe fn noop(_: *const (), _: usize) {}

    fn worker(s: &Shared, index: usize) {
        // Everything the loop below uses once, before the owner is told we are ready.
        let _ = catch_unwind(|| Instant::now().elapsed());
        s.ready.fetch_add(1, Ordering::Release);
        let mut seen = 0u64;
        loop {
            // Wait for a new epoch: spin, then park.
            let t0 = Instant::now();
            let mut spins = 0u32;
            loop {
                let e = s.epoch.load(Ordering::Acquire);
                if e != seen {
                    seen = e;
                    break;
                }
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                spins = spins.wrapping_add(1);
                if spins % 256 != 0 {
                    core::hint::spin_loop();
                    continue;
                }
                let idle = t0.elapsed();
                if idle < SPIN {
                    // Past the first tens of microseconds, let other runnable threads have the core between
                    // checks (more threads than cores, or a busy machine).
                    if idle > YIELD_AFTER {
                        std::thread::yield_now();
                    }
                    continue;
                }
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(g);
            }
            // SAFETY: the owner wrote `job` before publishing this epoch and will not touch it (nor free
            // what it points to) until we acknowledge below.
            let job = unsafe { *s.job.get() };
            let r = catch_unwind(AssertUnwindSafe(|| {
                let mut i = index;
                while i < job.items {
                    // SAFETY: `job.ctx` is live until we acknowledge; item `i` is this thread's alone.
                    unsafe { (job.call)(job.ctx, i) };
                    i += s.threads;
                }
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
            s.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(not(feature = "std"))]
mod imp {
    /// Without `std` there are no threads: every loop runs on the caller.
    #[derive(Debug)]
    pub struct Pool;

    impl Pool {
        pub fn new(_threads: usize) -> Self {
            Self
        }
        pub fn threads(&self) -> usize {
            1
        }
        pub fn for_each_mut<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
            items.iter_mut().for_each(f);
        }
    }
}

pub use imp::Pool;
