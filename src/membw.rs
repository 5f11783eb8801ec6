//! A plain memory-read bandwidth probe: `threads` threads each sum their share of a buffer much larger than
//! the last-level cache. It is the roofline a memory-bound decoder is measured against, so it is taken in the
//! same run, with the same thread count, as the numbers it is compared with.

use std::time::Instant;

/// Result of one probe.
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    pub threads: usize,
    /// Bytes read per pass.
    pub bytes: usize,
    /// Median over the passes, in GB/s (10^9 bytes per second).
    pub median_gbps: f64,
    /// Fastest pass, in GB/s.
    pub best_gbps: f64,
}

/// Sum of the words with eight independent accumulators (the compiler vectorises it; one core then issues
/// loads as fast as its memory system accepts them).
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    tail.iter().chain(acc.iter()).fold(0u64, |s, &w| s.wrapping_add(w))
}

/// A buffer of `bytes` (rounded down to whole words), every page written so that reads hit memory.
pub struct Probe {
    words: Vec<u64>,
}

impl Probe {
    pub fn new(bytes: usize) -> Self {
        let n = (bytes / 8).max(8);
        Self {
            words: (0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect(),
        }
    }

    /// Reads the whole buffer once on the calling thread (returns the sum, so that it is not optimised away).
    pub fn read_once(&self) -> u64 {
        sum_words(&self.words)
    }

    /// Bytes read by `read_once`.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Reads the whole buffer `passes` times with `threads` threads (each its own contiguous share).
    pub fn measure(&self, threads: usize, passes: usize) -> Bandwidth {
        let threads = threads.max(1);
        let per = self.words.len() / threads;
        let bytes = per * threads * 8;
        let mut rates = Vec::with_capacity(passes.max(1));
        for _ in 0..passes.max(1) {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .words
                    .chunks_exact(per.max(1))
                    .take(threads)
                    .map(|part| s.spawn(move || std::hint::black_box(sum_words(part))))
                    .collect();
                for h in handles {
                    // A panic in a summing thread is impossible (no indexing); keep the probe panic-free anyway.
                    let _ = h.join();
                }
            });
            rates.push(bytes as f64 / t0.elapsed().as_secs_f64().max(1e-9) / 1e9);
        }
        rates.sort_by(f64::total_cmp);
        Bandwidth {
            threads,
            bytes,
            median_gbps: rates[rates.len() / 2],
            best_gbps: rates[rates.len() - 1],
        }
    }
}

/// Probe size for DRAM bandwidth: past any last-level cache seen on the machines tern targets (this one reports a
/// 480 MiB L3, shared with other guests), so the probe measures DRAM.
pub const DRAM_PROBE_BYTES: usize = 1 << 30;
