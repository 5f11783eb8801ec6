//! Data-free training text (LLM-QAT): the full-precision model writes its own training data.
//!
//! As in LLM-QAT, each sample starts from a uniformly random token, takes the next `greedy_prefix` tokens greedily
//! (so the start settles into a plausible context) and samples the rest from `softmax(logits / temperature)`,
//! until EOS or `sample_len` tokens. Generation runs on tern's own inference runtime with a KV cache (one token per
//! step, O(T) per sample) over the full-precision model stored as f16 matrices (the f32 norms and an f32 KV cache
//! keep the rest exact); the engine's training forward would have to re-run the whole prefix for every token.
//!
//! Output is cached per chunk of `batch` samples as token files (`teacher-KEY-CCCCC.bin`, the format of the text
//! token cache), keyed by the model, the options and the chunk index, so an interrupted generation resumes and a
//! resumed training run sees the same data. Generation is deterministic: chunk `c` uses a generator seeded from
//! `(seed, c)`.

use std::path::{Path, PathBuf};

use crate::data::{decode_token_cache, document_separator, encode_token_cache, Fnv64};
use crate::engine::SplitMix64;
use crate::import::source::SourceModel;
use crate::train::{model_fingerprint, TrainError};

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
    key.bytes(b"tern-teacher-data-v2-runtime-kv")
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
                    generator = Some(Generator::new(src)?);
                }
                let g = generator
                    .as_mut()
                    .ok_or_else(|| TrainError::Config("generator missing".into()))?;
                let mut rng = SplitMix64::new(Fnv64::new().u64(opts.seed).u64(chunk).finish());
                let t = g.generate_chunk(opts, vocab, eos, &mut rng)?;
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

/// The full-precision model as an in-memory `.tern` (f16 matrices, f32 norms) run by tern's runtime.
struct Generator {
    bytes: tern_format::AlignedBytes,
    threads: usize,
}

impl Generator {
    fn new(src: &SourceModel) -> Result<Self, TrainError> {
        let writer = crate::ptq::full_precision_model(src, crate::ptq::FullPrecision::F16)?;
        let bytes = writer.to_bytes().map_err(crate::ptq::ConvertError::from)?;
        Ok(Self {
            bytes: tern_format::AlignedBytes::from_slice(&bytes),
            threads: rayon::current_num_threads().clamp(1, tern_runtime::MAX_THREADS),
        })
    }

    fn generate_chunk(
        &mut self,
        opts: &TeacherDataOptions,
        vocab: u64,
        eos: Option<u32>,
        rng: &mut SplitMix64,
    ) -> Result<Vec<u32>, TrainError> {
        let runtime = |e: tern_runtime::RuntimeError| TrainError::Config(format!("teacher generation: {e}"));
        let view = tern_format::ModelView::parse(&self.bytes)
            .map_err(|e| TrainError::Config(format!("teacher model: {e}")))?;
        let model = tern_runtime::Model::new(view).map_err(runtime)?;
        let session_opts = tern_runtime::SessionOptions::new(opts.sample_len, 1)
            .with_kv(tern_runtime::KvPrecision::F32)
            .with_threads(self.threads);
        let mut arena = vec![0u8; session_opts.arena_bytes(model.config()).map_err(runtime)?];
        let mut session = tern_runtime::Session::new(&model, &mut arena, session_opts).map_err(runtime)?;
        let mut out = Vec::new();
        for _ in 0..opts.batch {
            let first = loop {
                let t = rng.below(vocab) as u32;
                if Some(t) != eos {
                    break t;
                }
            };
            session.reset();
            let mut row = vec![first];
            let mut logits = session.prefill(&[first]).map_err(runtime)?.to_vec();
            while row.len() < opts.sample_len {
                let next = if row.len() <= opts.greedy_prefix {
                    argmax(&logits)
                } else {
                    sample(&logits, opts.temperature, rng)
                } as u32;
                row.push(next);
                if Some(next) == eos || row.len() == opts.sample_len {
                    break;
                }
                logits = session.decode(next).map_err(runtime)?.to_vec();
            }
            let ended = eos.is_some() && row.last().copied() == eos;
            out.extend_from_slice(&row);
            if !ended {
                out.extend(eos);
            }
        }
        Ok(out)
    }
}
