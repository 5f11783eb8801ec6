//! Data-free training text (LLM-QAT): the full-precision model writes its own training data.
//!
//! As in LLM-QAT, each sample starts from a uniformly random token, takes the next `greedy_prefix` tokens greedily
//! (so the start settles into a plausible context) and samples the rest from `softmax(logits / temperature)`,
//! until EOS or `sample_len` tokens. Samples are generated `batch` at a time with the engine's full-precision
//! forward pass. The engine has no KV cache, so each new token re-runs the prefix; to bound that cost the prefix is
//! run at the smallest power-of-two length (≥ 16) that holds it. Slow on a CPU, but simple and exact.
//!
//! Output is cached per chunk of `batch` samples as token files (`teacher-KEY-CCCCC.bin`, the format of the text
//! token cache), keyed by the model, the options and the chunk index, so an interrupted generation resumes and a
//! resumed training run sees the same data. Generation is deterministic: chunk `c` uses a generator seeded from
//! `(seed, c)`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::data::{decode_token_cache, document_separator, encode_token_cache, Fnv64};
use crate::engine::{
    CpuBackend, EngineConfig, ParamLayout, Parameters, QuantConfig, Recompute, SplitMix64, Transformer,
};
use crate::model::SourceModel;
use crate::train::{layout_tensors_from_source, model_fingerprint, TrainError};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TeacherDataOptions {
    /// Generate chunks until the stream holds at least this many tokens.
    pub tokens: usize,
    /// Maximum tokens per sample (the start token included).
    pub sample_len: usize,
    /// Samples generated together (one forward pass per position).
    pub batch: usize,
    pub temperature: f64,
    /// Tokens after the random start chosen greedily.
    pub greedy_prefix: usize,
    pub seed: u64,
}

impl Default for TeacherDataOptions {
    fn default() -> Self {
        Self {
            tokens: 1 << 16,
            sample_len: 257,
            batch: 8,
            temperature: 1.0,
            greedy_prefix: 3,
            seed: 0,
        }
    }
}

/// Shortest forward length the engine runs a prefix of `len` tokens at.
fn bucket_len(len: usize, max: usize) -> usize {
    len.max(16).next_power_of_two().min(max)
}

/// Index of the largest logit (the first on ties).
fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &z) in logits.iter().enumerate() {
        if z > logits[best] {
            best = i;
        }
    }
    best
}

/// Draws from `softmax(logits / temperature)` in f64.
fn sample(logits: &[f32], temperature: f64, rng: &mut SplitMix64) -> usize {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z)) as f64;
    let weights: Vec<f64> = logits.iter().map(|&z| ((z as f64 - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.uniform() * total;
    for (i, w) in weights.iter().enumerate() {
        u -= w;
        if u < 0.0 {
            return i;
        }
    }
    argmax(logits)
}

/// Generates (or reads from `cache_dir`) the teacher's token stream; `progress(tokens_so_far, target)` after
/// each chunk. Samples are separated by EOS when the model has one.
pub fn generate_teacher_data(
    backend: &CpuBackend<f32>,
    src: &SourceModel,
    opts: &TeacherDataOptions,
    cache_dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<u32>, TrainError> {
    if opts.sample_len < 2 || opts.batch == 0 || !(opts.temperature.is_finite() && opts.temperature > 0.0) {
        return Err(TrainError::Config(format!(
            "teacher data needs samples of at least 2 tokens, a positive batch and temperature ({opts:?})"
        )));
    }
    std::fs::create_dir_all(cache_dir).map_err(|source| TrainError::Io {
        path: cache_dir.to_path_buf(),
        context: "creating",
        source,
    })?;
    let eos = document_separator(&src.config);
    let vocab = src.config.vocab_size as u64;
    let mut key = Fnv64::new();
    key.bytes(b"tern-teacher-data-v1")
        .u64(model_fingerprint(src))
        .u64(opts.sample_len as u64)
        .u64(opts.batch as u64)
        .u64(opts.temperature.to_bits())
        .u64(opts.greedy_prefix as u64)
        .u64(opts.seed);
    let key = key.finish();

    let mut generator: Option<Generator> = None;
    let mut stream = Vec::new();
    let mut chunk = 0u64;
    while stream.len() < opts.tokens {
        let chunk_key = Fnv64::new().u64(key).u64(chunk).finish();
        let path: PathBuf = cache_dir.join(format!("teacher-{key:016x}-{chunk:05}.bin"));
        let cached = std::fs::read(&path)
            .ok()
            .and_then(|b| decode_token_cache(&b, chunk_key));
        let tokens = match cached {
            Some(t) => t,
            None => {
                if generator.is_none() {
                    generator = Some(Generator::new(backend, src, opts.batch)?);
                }
                let g = generator
                    .as_mut()
                    .ok_or_else(|| TrainError::Config("generator missing".into()))?;
                let mut rng = SplitMix64::new(Fnv64::new().u64(opts.seed).u64(chunk).finish());
                let t = g.generate_chunk(backend, opts, vocab, eos, &mut rng)?;
                tern_format::write_atomic(&path, &encode_token_cache(chunk_key, &t)).map_err(|source| {
                    TrainError::Io {
                        path: path.clone(),
                        context: "writing",
                        source,
                    }
                })?;
                t
            }
        };
        stream.extend_from_slice(&tokens);
        chunk += 1;
        progress(stream.len().min(opts.tokens), opts.tokens);
    }
    Ok(stream)
}

/// The full-precision model at several forward lengths.
struct Generator {
    layout: ParamLayout,
    params: Parameters<CpuBackend<f32>>,
    model_config: tern_format::ModelConfig,
    batch: usize,
    models: HashMap<usize, Transformer<CpuBackend<f32>>>,
}

impl Generator {
    fn new(backend: &CpuBackend<f32>, src: &SourceModel, batch: usize) -> Result<Self, TrainError> {
        let layout = ParamLayout::new(&src.config);
        let host = layout_tensors_from_source(&layout, src)?;
        let params = Parameters::from_host(backend, &layout, &host)?;
        Ok(Self {
            layout,
            params,
            model_config: src.config,
            batch,
            models: HashMap::new(),
        })
    }

    fn model(
        &mut self,
        backend: &CpuBackend<f32>,
        seq_len: usize,
    ) -> Result<&mut Transformer<CpuBackend<f32>>, TrainError> {
        if !self.models.contains_key(&seq_len) {
            let cfg = EngineConfig {
                model: self.model_config,
                batch_size: self.batch,
                seq_len,
                quant: QuantConfig::FULL_PRECISION,
                recompute: Recompute::All,
            };
            let m = Transformer::new(backend, cfg)?;
            debug_assert_eq!(m.layout(), &self.layout);
            self.models.insert(seq_len, m);
        }
        self.models
            .get_mut(&seq_len)
            .ok_or_else(|| TrainError::Config("generator model missing".into()))
    }

    fn generate_chunk(
        &mut self,
        backend: &CpuBackend<f32>,
        opts: &TeacherDataOptions,
        vocab: u64,
        eos: Option<u32>,
        rng: &mut SplitMix64,
    ) -> Result<Vec<u32>, TrainError> {
        let b = self.batch;
        let v = vocab as usize;
        let mut rows: Vec<Vec<u32>> = (0..b)
            .map(|_| loop {
                let t = rng.below(vocab) as u32;
                if Some(t) != eos {
                    break vec![t];
                }
            })
            .collect();
        let mut finished = vec![false; b];
        for len in 1..opts.sample_len {
            if finished.iter().all(|&f| f) {
                break;
            }
            let l = bucket_len(len, opts.sample_len);
            let mut tokens = vec![0u32; b * l];
            for (r, row) in rows.iter().enumerate() {
                let n = row.len().min(l);
                tokens[r * l..r * l + n].copy_from_slice(&row[..n]);
            }
            // Causal attention: position len-1 sees only the row's real tokens, whatever pads follow.
            self.model(backend, l)?;
            let Self { models, params, .. } = self;
            let model = models
                .get_mut(&l)
                .ok_or_else(|| TrainError::Config("generator model missing".into()))?;
            model.forward_logits(backend, params, &tokens)?;
            let logits = model.logits();
            for r in 0..b {
                if finished[r] {
                    continue;
                }
                let at = r * l + len - 1;
                let z = &logits[at * v..(at + 1) * v];
                let next = if len <= opts.greedy_prefix {
                    argmax(z)
                } else {
                    sample(z, opts.temperature, rng)
                } as u32;
                rows[r].push(next);
                if Some(next) == eos {
                    finished[r] = true;
                }
            }
        }
        let mut out = Vec::new();
        for row in rows {
            let ended = row.last().copied() == eos && eos.is_some();
            out.extend_from_slice(&row);
            if !ended {
                out.extend(eos);
            }
        }
        Ok(out)
    }
}
