//! Choosing the next token from the logits: greedy, or temperature sampling restricted by top-k, top-p and
//! min-p, after a repetition penalty; a seeded generator makes runs reproducible. The scratch buffers (one
//! f32 and one u32 per vocabulary entry) come from the session arena, so sampling does not allocate.
//!
//! Order, as llama.cpp's default chain: repetition penalty → top-k → top-p → min-p → temperature → draw.
//! Top-p and min-p use probabilities at temperature 1; the temperature then reshapes the survivors.

/// Sampling parameters. `Default` matches llama.cpp's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// ≤ 0 means greedy (argmax after the repetition penalty).
    pub temperature: f32,
    /// Keep the `k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = none).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5EED,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// A small, fast, seedable generator (SplitMix64): reproducible across platforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }
    /// The generator's state: `Rng::new(r.state())` continues exactly where `r` is.
    pub fn state(&self) -> u64 {
        self.state
    }
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Parameters plus generator state.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

/// Index of the largest value (the first on ties); 0 for an empty or all-NaN slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// Applies the repetition penalty in place to each distinct token among the last `last_n` of `history`.
pub fn apply_repeat_penalty(logits: &mut [f32], history: &[u32], penalty: f32, last_n: usize) {
    if penalty == 1.0 || last_n == 0 {
        return;
    }
    let recent = &history[history.len().saturating_sub(last_n)..];
    for (i, &tok) in recent.iter().enumerate() {
        if recent[..i].contains(&tok) {
            continue;
        }
        if let Some(l) = logits.get_mut(tok as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: Rng::new(params.seed),
        }
    }
    /// A sampler that continues from a saved generator state (`Sampler::rng`).
    pub fn with_rng(params: SamplingParams, rng: Rng) -> Self {
        Self { params, rng }
    }
    pub fn rng(&self) -> Rng {
        self.rng
    }

    /// Picks a token. `scratch` and `ids` need one entry per logit (the session passes arena buffers).
    pub fn sample(&mut self, logits: &[f32], history: &[u32], scratch: &mut [f32], ids: &mut [u32]) -> u32 {
        let p = self.params;
        let v = logits.len().min(scratch.len()).min(ids.len());
        if v == 0 {
            return 0;
        }
        let (lg, ids) = (&mut scratch[..v], &mut ids[..v]);
        lg.copy_from_slice(&logits[..v]);
        apply_repeat_penalty(lg, history, p.repeat_penalty, p.repeat_last_n);
        if p.temperature.is_nan() || p.temperature <= 0.0 {
            return argmax(lg) as u32;
        }
        let max = lg.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        if !max.is_finite() {
            return argmax(lg) as u32;
        }
        let prob = |x: f32| libm::exp(f64::from(x - max));
        let by_logit = |a: &u32, b: &u32| {
            let la = lg.get(*a as usize).copied().unwrap_or(f32::NEG_INFINITY);
            let lb = lg.get(*b as usize).copied().unwrap_or(f32::NEG_INFINITY);
            lb.total_cmp(&la).then(a.cmp(b))
        };
        // min-p keeps every token with p ≥ min_p·p_max, i.e. logit ≥ max + ln(min_p).
        let floor = if p.min_p > 0.0 && p.min_p <= 1.0 {
            max + libm::logf(p.min_p)
        } else {
            f32::NEG_INFINITY
        };

        // Candidates and the normaliser top-p uses (llama.cpp: over the top-k survivors).
        let (n, total) = if p.top_k > 0 && p.top_k < v {
            for (i, id) in ids.iter_mut().enumerate() {
                *id = i as u32;
            }
            ids.select_nth_unstable_by(p.top_k - 1, by_logit);
            let total: f64 = ids[..p.top_k].iter().map(|&id| prob(lg[id as usize])).sum();
            (p.top_k, total)
        } else {
            // No top-k: normalise over everything, but sort only what min-p will keep anyway (min-p comes
            // after top-p and only shortens the sorted prefix, so dropping its tail first changes nothing).
            let total: f64 = lg.iter().map(|&x| prob(x)).sum();
            let mut n = 0;
            for (i, &x) in lg.iter().enumerate() {
                if x >= floor {
                    if let Some(slot) = ids.get_mut(n) {
                        *slot = i as u32;
                        n += 1;
                    }
                }
            }
            (n.max(1), total)
        };
        let cands = &mut ids[..n];
        cands.sort_unstable_by(by_logit);

        // Top-p, then min-p: each keeps a prefix of the sorted candidates (at least one).
        let mut keep = cands.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0f64;
            for (i, &id) in cands.iter().enumerate() {
                cum += prob(lg[id as usize]) / total;
                if cum >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        let keep = cands[..keep].iter().take_while(|&&id| lg[id as usize] >= floor).count();
        let cands = &cands[..keep.max(1)];

        // Temperature, then draw.
        let t = f64::from(p.temperature);
        let weight = |id: u32| libm::exp(f64::from(lg[id as usize] - max) / t);
        let sum: f64 = cands.iter().map(|&id| weight(id)).sum();
        let r = f64::from(self.rng.next_f32()) * sum;
        let mut acc = 0.0f64;
        for &id in cands {
            acc += weight(id);
            if r < acc {
                return id;
            }
        }
        cands.last().copied().unwrap_or(0)
    }
}
