//! A persistent pool of worker threads, one per session (`std` only; without it, work runs on the caller).
//!
//! Created once with the session (`Session::new`, `Session::set_threads`), never per token or per matrix. A
//! parallel loop's items are fixed ranges of outputs (`parallel.rs`), so results are the same bits whichever
//! thread runs an item and for any thread count. Item `i` is thread `i mod threads`'s, but one that its
//! worker has not come for shortly after the caller finished its own is run by the caller: a worker that the
//! OS has descheduled (a busy machine) or that is parked does not hold the loop up.
//!
//! The barrier is cheap: a loop is published by storing one word (epoch, item count), workers spin on it
//! (then park after `SPIN` of idleness) and claim their items with one atomic each, and the caller spins
//! until every item is done. No allocation, no system call while the workers are spinning — which they are
//! throughout a decode — so even SmolLM2's small matrices are worth splitting.
//!
//! The one `unsafe` here: a loop's closure and items are borrowed for the duration of `for_each_mut`, which
//! does not return until every claimed item has finished; a thread reads the loop's context only after
//! claiming one of its items.
#![allow(unsafe_code)]

#[cfg(feature = "std")]
mod imp {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use crate::parallel::MAX_THREADS;

    /// How long an idle worker spins before it parks (a decode step's gaps between loops are microseconds).
    const SPIN: Duration = Duration::from_millis(2);
    /// When a spinning worker (or the caller at the barrier) starts yielding its core between checks.
    const YIELD_AFTER: Duration = Duration::from_micros(50);
    /// How long the caller, done with its own items, waits for a worker to claim its item before running it
    /// itself (a worker that slow is parked or descheduled; a running one claims within a microsecond).
    const STEAL_AFTER: Duration = Duration::from_micros(20);

    /// The published loop as one word, `epoch << 16 | items`, so that a worker reads a consistent pair.
    fn pack(epoch: u64, items: usize) -> u64 {
        epoch << 16 | items as u64
    }
    fn unpack(w: u64) -> (u64, usize) {
        (w >> 16, (w & 0xFFFF) as usize)
    }

    type Call = unsafe fn(*const (), usize);

    struct Shared {
        job: AtomicU64,
        /// Per item: the epoch of the loop that last claimed it (`fetch_max`: an item is claimed once per loop,
        /// and a stale claimant of an older loop can neither claim nor unclaim it).
        claims: [AtomicU64; MAX_THREADS],
        /// The loop's context and item function, read only by a thread that has claimed one of its items
        /// (so, while the loop is unfinished and they are its own).
        ctx: AtomicPtr<()>,
        call: AtomicUsize,
        /// Items of the current loop finished.
        done: AtomicUsize,
        /// Items run by worker threads (not the caller) since the pool started.
        worker_items: AtomicUsize,
        panicked: AtomicBool,
        stop: AtomicBool,
        sleepers: AtomicUsize,
        /// Workers that have started (their start-up, which may allocate, is over).
        ready: AtomicUsize,
        lock: Mutex<()>,
        wake: Condvar,
        threads: usize,
    }

    /// The session's worker threads (`threads − 1` of them; the caller is thread 0). Not `Sync`: one loop at
    /// a time, from the thread that owns it (loops are not re-entrant either).
    pub struct Pool {
        shared: Arc<Shared>,
        workers: Vec<JoinHandle<()>>,
        epoch: core::cell::Cell<u64>,
        _one_caller: core::marker::PhantomData<core::cell::Cell<()>>,
    }

    impl Pool {
        /// A pool for `threads` threads in all (the caller included); 0 and 1 mean no workers.
        pub fn new(threads: usize) -> Self {
            let threads = threads.clamp(1, MAX_THREADS);
            let shared = Arc::new(Shared {
                job: AtomicU64::new(0),
                claims: [const { AtomicU64::new(0) }; MAX_THREADS],
                ctx: AtomicPtr::new(core::ptr::null_mut()),
                call: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                worker_items: AtomicUsize::new(0),
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
                    Err(_) => break,
                }
            }
            // Wait for the workers' start-up, so that none of it (thread-local set-up may allocate) happens
            // later, during inference.
            while shared.ready.load(Ordering::Acquire) < workers.len() {
                std::thread::yield_now();
            }
            if workers.len() + 1 != threads {
                // The OS refused a thread: start over with as many as it gave.
                let n = workers.len() + 1;
                Self::shutdown(&shared, &mut workers);
                return Self::new(n);
            }
            Self {
                shared,
                workers,
                epoch: core::cell::Cell::new(0),
                _one_caller: core::marker::PhantomData,
            }
        }

        /// Threads taking part in a loop, the caller included.
        pub fn threads(&self) -> usize {
            self.shared.threads
        }

        /// Items the worker threads (not the caller) have run so far: evidence that loops ran in parallel.
        pub fn worker_items(&self) -> usize {
            self.shared.worker_items.load(Ordering::Relaxed)
        }

        /// Runs `f` on every item and returns when all are done; a panic in an item is re-raised here.
        ///
        /// Item `i` is thread `i mod threads()`'s (the caller is thread 0); a worker that has not claimed its
        /// item `STEAL_AFTER` after the caller ran out of its own (it is parked, or the OS has descheduled
        /// it) loses it to the caller. Which thread runs an item must not matter to its result — here an
        /// item is a fixed range of outputs.
        pub fn for_each_mut<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
            let n = items.len();
            if self.workers.is_empty() || n <= 1 || n > MAX_THREADS {
                items.iter_mut().for_each(f);
                return;
            }
            struct Ctx<'a, T> {
                items: *mut T,
                f: &'a (dyn Fn(&mut T) + Sync),
            }
            /// # Safety
            /// `ctx` points to a live `Ctx<T>` and `i` is an item this thread has claimed.
            unsafe fn call<T>(ctx: *const (), i: usize) {
                // SAFETY: per the function's contract.
                let ctx = unsafe { &*(ctx as *const Ctx<'_, T>) };
                // SAFETY: `i < items.len()`, claimed by exactly one thread for this loop.
                (ctx.f)(unsafe { &mut *ctx.items.add(i) });
            }
            let ctx = Ctx {
                items: items.as_mut_ptr(),
                f,
            };
            let s = &*self.shared;
            let epoch = self.epoch.get() + 1;
            self.epoch.set(epoch);
            // Publish: context first, then the job word (SeqCst, a release) that makes the items claimable.
            // The previous loop's items are all done, so no thread reads `ctx`/`call` now.
            s.done.store(0, Ordering::Relaxed);
            s.ctx.store(&ctx as *const Ctx<'_, T> as *mut (), Ordering::Relaxed);
            s.call.store(call::<T> as Call as usize, Ordering::Relaxed);
            s.job.store(pack(epoch, n), Ordering::SeqCst);
            if s.sleepers.load(Ordering::SeqCst) > 0 {
                let _g = s.lock.lock();
                s.wake.notify_all();
            }
            let mut panicked = run_items(s, epoch, (0..n).step_by(s.threads), false);
            // The barrier: every item has finished (so no thread still uses `ctx`). Items whose worker has not
            // come for them are run here.
            let t0 = Instant::now();
            let mut spins = 0u32;
            let mut stolen = false;
            while s.done.load(Ordering::Acquire) < n {
                spins = spins.wrapping_add(1);
                if spins % 64 != 0 {
                    core::hint::spin_loop();
                    continue;
                }
                let waited = t0.elapsed();
                if !stolen && waited > STEAL_AFTER {
                    panicked |= run_items(s, epoch, 0..n, false);
                    stolen = true;
                } else if waited > YIELD_AFTER {
                    std::thread::yield_now();
                }
            }
            if s.panicked.swap(false, Ordering::SeqCst) || panicked {
                panic!("a task of a parallel loop panicked");
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

    /// Claims and runs those of `indices` still unclaimed in loop `epoch`. Returns whether one panicked.
    fn run_items(s: &Shared, epoch: u64, indices: impl Iterator<Item = usize>, worker: bool) -> bool {
        let mut panicked = false;
        for i in indices {
            let Some(claim) = s.claims.get(i) else { break };
            if claim.fetch_max(epoch, Ordering::AcqRel) >= epoch {
                continue; // someone else's already (or a newer loop's: we are stale)
            }
            // Item `i` of loop `epoch` is ours, so the loop is unfinished and `ctx`/`call` are its own until
            // we count the item done.
            let ctx = s.ctx.load(Ordering::Acquire) as *const ();
            // SAFETY: `call` holds a `Call` stored for this loop before its job word was published.
            let call: Call = unsafe { core::mem::transmute::<usize, Call>(s.call.load(Ordering::Acquire)) };
            // SAFETY: `ctx` is live and item `i` is claimed by this thread alone (above).
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { call(ctx, i) }));
            panicked |= r.is_err();
            if worker {
                s.worker_items.fetch_add(1, Ordering::Relaxed);
            }
            s.done.fetch_add(1, Ordering::Release);
        }
        panicked
    }

    fn worker(s: &Shared, index: usize) {
        // Everything the loop below uses once, before the owner is told we are ready.
        let _ = catch_unwind(|| Instant::now().elapsed());
        s.ready.fetch_add(1, Ordering::Release);
        let mut seen = 0u64;
        loop {
            // Wait for a new loop: spin, then park.
            let t0 = Instant::now();
            let mut spins = 0u32;
            let (epoch, items) = loop {
                let (e, n) = unpack(s.job.load(Ordering::Acquire));
                if e != seen {
                    break (e, n);
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
                while unpack(s.job.load(Ordering::SeqCst)).0 == seen && !s.stop.load(Ordering::SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(g);
            };
            seen = epoch;
            if run_items(s, epoch, (index..items).step_by(s.threads), true) {
                s.panicked.store(true, Ordering::SeqCst);
            }
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
        pub fn worker_items(&self) -> usize {
            0
        }
        pub fn for_each_mut<T: Send>(&self, items: &mut [T], f: &(dyn Fn(&mut T) + Sync)) {
            items.iter_mut().for_each(f);
        }
    }
}

pub use imp::Pool;

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::Pool;

    #[test]
    fn workers_take_items_and_every_item_runs_once() {
        let pool = Pool::new(3);
        let mut items = [0u32; 6];
        for round in 1..=50u32 {
            pool.for_each_mut(&mut items, &|v: &mut u32| {
                std::thread::sleep(std::time::Duration::from_micros(200));
                *v += 1;
            });
            assert!(items.iter().all(|&v| v == round));
        }
        assert!(pool.worker_items() > 0, "no worker ever ran an item");
    }
}
