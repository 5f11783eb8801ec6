//! Training data for quantization-aware training: text files → the model's own tokenizer → one token stream
//! → packed sequences of `seq_len + 1` tokens → a train / held-out split → a deterministic, seeded order.
//!
//! * Documents: a text file is split into documents at blank lines (the layout `scripts/extract_text.py` writes:
//!   one article per block). The model's EOS token is placed after every document, so files and articles never
//!   run into each other without a boundary the model has seen in pre-training.
//! * Packing: the stream is cut into non-overlapping windows of `seq_len + 1` tokens; a window gives `seq_len`
//!   inputs and their `seq_len` next-token targets. The tail shorter than a window is dropped. Every packed token
//!   belongs to exactly one window, so one epoch sees every token once.
//! * Split: the last `held_out_fraction` of the windows (rounded up, at least one) is held out. The split is on
//!   window boundaries, so no token is in both sets; holding out the *end* of the stream (rather than random
//!   windows) keeps held-out text from articles the training windows do not cover.
//! * Order: per epoch a Fisher–Yates permutation of the training windows drawn from [`SplitMix64`] seeded by
//!   `(seed, epoch)`. The window consumed by the `i`-th draw of the run is a pure function of `(seed, i)`, so a
//!   resumed run only needs the count of windows consumed to continue bit-for-bit.
//! * Cache: tokenizing megabytes of text takes seconds to minutes; the token stream is cached on disk under a key
//!   hashed from the tokenizer and the files' bytes, and validated by a CRC on reading (a bad cache is rebuilt).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::engine::{SplitMix64, IGNORE_INDEX};

/// Fraction of the packed windows held out for evaluation unless told otherwise.
pub const DEFAULT_HELD_OUT_FRACTION: f64 = 0.05;

const TOKEN_CACHE_MAGIC: [u8; 8] = *b"TERNTOKS";
const TOKEN_CACHE_VERSION: u32 = 1;
/// magic + version + reserved + key + count.
const TOKEN_CACHE_HEADER: usize = 8 + 4 + 4 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{context} {path}")]
    Io {
        path: PathBuf,
        context: &'static str,
        source: std::io::Error,
    },
    #[error("{path} is not UTF-8 text (invalid byte at offset {offset}); convert it first, e.g. with iconv")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("the model carries no tokenizer, so text data cannot be tokenized (use --data teacher)")]
    NoTokenizer,
    #[error("the model's tokenizer.json does not load: {0}")]
    Tokenizer(String),
    #[error("tokenizing {path}: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("token id {token} is outside the model's vocabulary of {vocab} tokens")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error(
        "not enough data: {tokens} tokens make {windows} windows of seq_len + 1 = {window} tokens; \
         at least {needed} are needed (one to train on, one held out)"
    )]
    TooLittleData {
        tokens: usize,
        windows: usize,
        window: usize,
        needed: usize,
    },
    #[error("held-out fraction {0} is not in [0, 1)")]
    BadFraction(f64),
    #[error("sequence length must be positive")]
    ZeroSeqLen,
}

fn io_err<'a>(path: &'a Path, context: &'static str) -> impl FnOnce(std::io::Error) -> DataError + 'a {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        context,
        source,
    }
}

// ---- hashing ----------------------------------------------------------------------------------------------------

/// FNV-1a, 64 bit: a fixed, dependency-free hash for cache keys and fingerprints (not for security).
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn tokens(&mut self, tokens: &[u32]) -> &mut Self {
        // Hash the length too, so concatenations of different splits differ.
        self.u64(tokens.len() as u64);
        for t in tokens {
            self.bytes(&t.to_le_bytes());
        }
        self
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

// ---- tokenization -------------------------------------------------------------------------------------------------

/// The model's Hugging Face tokenizer.
pub fn load_tokenizer(tokenizer_json: &[u8]) -> Result<tokenizers::Tokenizer, DataError> {
    if tokenizer_json.is_empty() {
        return Err(DataError::NoTokenizer);
    }
    tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| DataError::Tokenizer(e.to_string()))
}

/// Documents of a text file: blocks separated by one or more blank lines, trimmed, empty ones skipped.
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let blank = line.trim().is_empty();
        if blank {
            if let Some(s) = start.take() {
                docs.push(&text[s..end]);
            }
        } else {
            if start.is_none() {
                start = Some(offset);
            }
            end = offset + line.trim_end().len();
        }
        offset += line.len();
    }
    if let Some(s) = start {
        docs.push(&text[s..end]);
    }
    docs
}

/// Tokenizes the documents of `text` (see [`split_documents`]) without special tokens, each followed by `eos`
/// when the model has one. Documents are encoded in parallel; the result does not depend on the thread count.
pub fn tokenize_text(
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    eos: Option<u32>,
    source: &Path,
) -> Result<Vec<u32>, DataError> {
    let docs = split_documents(text);
    let encoded: Vec<Vec<u32>> = docs
        .par_iter()
        .map(|doc| {
            tokenizer
                .encode(*doc, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| DataError::Encode {
                    path: source.to_path_buf(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(encoded.iter().map(|d| d.len() + 1).sum());
    for doc in encoded {
        out.extend_from_slice(&doc);
        out.extend(eos);
    }
    Ok(out)
}

/// The EOS id the data pipeline places between documents, if the model defines one.
pub fn document_separator(config: &tern_format::ModelConfig) -> Option<u32> {
    (config.eos_token != tern_format::NO_TOKEN && config.eos_token < config.vocab_size).then_some(config.eos_token)
}

/// Checks every id against the vocabulary (the engine would reject the batch later, with less context).
pub fn check_vocab(tokens: &[u32], vocab: usize) -> Result<(), DataError> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(&token) => Err(DataError::TokenOutOfRange { token, vocab }),
        None => Ok(()),
    }
}

/// What [`tokenize_files`] did, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizeReport {
    pub tokens: usize,
    pub from_cache: bool,
    pub cache_path: Option<PathBuf>,
}

/// Tokenizes `files` in order into one stream (each file's documents followed by EOS), using the on-disk cache
/// in `cache_dir` when given. The cache key covers the tokenizer, the separator and every file's bytes.
pub fn tokenize_files(
    tokenizer_json: &[u8],
    eos: Option<u32>,
    files: &[PathBuf],
    cache_dir: Option<&Path>,
) -> Result<(Vec<u32>, TokenizeReport), DataError> {
    let mut contents = Vec::with_capacity(files.len());
    let mut key = Fnv64::new();
    key.bytes(b"tern-token-cache-v1")
        .u64(tokenizer_json.len() as u64)
        .bytes(tokenizer_json)
        .u64(eos.map_or(u64::MAX, u64::from));
    for path in files {
        let bytes = std::fs::read(path).map_err(io_err(path, "reading"))?;
        key.u64(bytes.len() as u64).bytes(&bytes);
        contents.push(bytes);
    }
    let key = key.finish();
    let cache_path = cache_dir.map(|d| d.join(format!("tokens-{key:016x}.bin")));
    if let Some(path) = &cache_path {
        if let Some(tokens) = read_token_cache(path, key) {
            return Ok((
                tokens.clone(),
                TokenizeReport {
                    tokens: tokens.len(),
                    from_cache: true,
                    cache_path,
                },
            ));
        }
    }
    let tokenizer = load_tokenizer(tokenizer_json)?;
    let mut stream = Vec::new();
    for (path, bytes) in files.iter().zip(&contents) {
        let text = std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
            path: path.clone(),
            offset: e.valid_up_to(),
        })?;
        stream.extend(tokenize_text(&tokenizer, text, eos, path)?);
    }
    if let (Some(path), Some(dir)) = (&cache_path, cache_dir) {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "creating"))?;
        tern_format::write_atomic(path, &encode_token_cache(key, &stream)).map_err(io_err(path, "writing"))?;
    }
    Ok((
        stream.clone(),
        TokenizeReport {
            tokens: stream.len(),
            from_cache: false,
            cache_path,
        },
    ))
}

/// Token file: magic, version, reserved, key, count, the ids (u32 LE), CRC-32 of everything before it.
pub fn encode_token_cache(key: u64, tokens: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TOKEN_CACHE_HEADER + 4 * tokens.len() + 4);
    out.extend_from_slice(&TOKEN_CACHE_MAGIC);
    out.extend_from_slice(&TOKEN_CACHE_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The ids of a token file whose header, key and checksum are right; `None` for anything else (missing,
/// truncated, stale or corrupt files are simply rebuilt).
pub fn decode_token_cache(bytes: &[u8], key: u64) -> Option<Vec<u32>> {
    let body_len = bytes.len().checked_sub(4)?;
    if body_len < TOKEN_CACHE_HEADER || bytes[..8] != TOKEN_CACHE_MAGIC {
        return None;
    }
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if u32_at(8)? != TOKEN_CACHE_VERSION || u64_at(16)? != key {
        return None;
    }
    let count = usize::try_from(u64_at(24)?).ok()?;
    if count.checked_mul(4)?.checked_add(TOKEN_CACHE_HEADER)? != body_len {
        return None;
    }
    if crc32fast::hash(&bytes[..body_len]) != u32_at(body_len)? {
        return None;
    }
    Some(
        bytes[TOKEN_CACHE_HEADER..body_len]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn read_token_cache(path: &Path, key: u64) -> Option<Vec<u32>> {
    decode_token_cache(&std::fs::read(path).ok()?, key)
}

// ---- packing and splitting -----------------------------------------------------------------------------------------

/// Windows of `seq_len + 1` tokens, split into training and held-out sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedData {
    seq_len: usize,
    /// `train_windows · (seq_len + 1)` tokens.
    train: Vec<u32>,
    /// `held_out_windows · (seq_len + 1)` tokens.
    held_out: Vec<u32>,
    /// Tokens of the stream(s) that fit no whole window.
    dropped_tokens: usize,
}

impl PackedData {
    /// Packs `stream` and holds out its last `held_out_fraction` of windows.
    pub fn split(stream: &[u32], seq_len: usize, held_out_fraction: f64) -> Result<Self, DataError> {
        if seq_len == 0 {
            return Err(DataError::ZeroSeqLen);
        }
        if !(0.0..1.0).contains(&held_out_fraction) {
            return Err(DataError::BadFraction(held_out_fraction));
        }
        let window = seq_len + 1;
        let windows = stream.len() / window;
        let held = if held_out_fraction > 0.0 {
            ((windows as f64 * held_out_fraction).ceil() as usize).max(1)
        } else {
            0
        };
        let needed = 1 + usize::from(held_out_fraction > 0.0);
        if windows < needed || held >= windows {
            return Err(DataError::TooLittleData {
                tokens: stream.len(),
                windows,
                window,
                needed: needed.max(held + 1),
            });
        }
        let train_end = (windows - held) * window;
        Ok(Self {
            seq_len,
            train: stream[..train_end].to_vec(),
            held_out: stream[train_end..windows * window].to_vec(),
            dropped_tokens: stream.len() - windows * window,
        })
    }

    /// Trains on all of `train_stream` and evaluates on all of `held_out_stream` (a separate evaluation text).
    pub fn from_streams(train_stream: &[u32], held_out_stream: &[u32], seq_len: usize) -> Result<Self, DataError> {
        if seq_len == 0 {
            return Err(DataError::ZeroSeqLen);
        }
        let window = seq_len + 1;
        let (tw, hw) = (train_stream.len() / window, held_out_stream.len() / window);
        if tw == 0 || hw == 0 {
            return Err(DataError::TooLittleData {
                tokens: if tw == 0 {
                    train_stream.len()
                } else {
                    held_out_stream.len()
                },
                windows: tw.min(hw),
                window,
                needed: 1,
            });
        }
        Ok(Self {
            seq_len,
            train: train_stream[..tw * window].to_vec(),
            held_out: held_out_stream[..hw * window].to_vec(),
            dropped_tokens: train_stream.len() - tw * window + held_out_stream.len() - hw * window,
        })
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }
    pub fn window(&self) -> usize {
        self.seq_len + 1
    }
    pub fn train_windows(&self) -> usize {
        self.train.len() / self.window()
    }
    pub fn held_out_windows(&self) -> usize {
        self.held_out.len() / self.window()
    }
    pub fn dropped_tokens(&self) -> usize {
        self.dropped_tokens
    }
    /// Training window `i` (`seq_len + 1` tokens).
    pub fn train_window(&self, i: usize) -> &[u32] {
        let w = self.window();
        &self.train[i * w..(i + 1) * w]
    }
    pub fn held_out_window(&self, i: usize) -> &[u32] {
        let w = self.window();
        &self.held_out[i * w..(i + 1) * w]
    }
    /// Identifies the data exactly (resuming on different data is refused).
    pub fn fingerprint(&self) -> u64 {
        Fnv64::new()
            .u64(self.seq_len as u64)
            .tokens(&self.train)
            .tokens(&self.held_out)
            .finish()
    }
}

// ---- order -------------------------------------------------------------------------------------------------------

/// The permutation of `n` training windows used in `epoch`: Fisher–Yates driven by SplitMix64 seeded from
/// `(seed, epoch)`.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<u32> {
    // Decorrelate the epochs' streams: SplitMix64 of a mixed seed, not consecutive seeds.
    let mixed = SplitMix64::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64();
    let mut rng = SplitMix64::new(mixed);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// Which training window the run's `i`-th draw uses: epoch `i / n`, position `i % n` of that epoch's permutation.
#[derive(Clone, Debug)]
pub struct DataOrder {
    seed: u64,
    n: usize,
    epoch: Option<u64>,
    perm: Vec<u32>,
}

impl DataOrder {
    pub fn new(seed: u64, train_windows: usize) -> Self {
        Self {
            seed,
            n: train_windows,
            epoch: None,
            perm: Vec::new(),
        }
    }

    /// The window of draw `draw` (0-based over the whole run).
    pub fn window_of(&mut self, draw: u64) -> usize {
        let n = self.n.max(1) as u64;
        let epoch = draw / n;
        if self.epoch != Some(epoch) {
            self.perm = epoch_permutation(self.seed, epoch, self.n);
            self.epoch = Some(epoch);
        }
        self.perm.get((draw % n) as usize).map_or(0, |&w| w as usize)
    }
}

/// One micro-batch on the host: `batch · seq_len` inputs and next-token targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostBatch {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
}

impl HostBatch {
    /// Appends a window: inputs `w[..L]`, targets `w[1..]`.
    pub fn push_window(&mut self, window: &[u32]) {
        let l = window.len().saturating_sub(1);
        self.tokens.extend_from_slice(&window[..l]);
        self.targets.extend_from_slice(&window[1..]);
    }

    /// Fills the rest of a batch with token 0 and ignored targets (the last, partial evaluation batch).
    pub fn pad_to(&mut self, tokens: usize) {
        self.tokens.resize(tokens, 0);
        self.targets.resize(tokens, IGNORE_INDEX);
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.targets.clear();
    }
}

/// The training micro-batch made of draws `first_draw .. first_draw + batch`.
pub fn train_batch(data: &PackedData, order: &mut DataOrder, first_draw: u64, batch: usize, out: &mut HostBatch) {
    out.clear();
    for b in 0..batch as u64 {
        let w = order.window_of(first_draw + b);
        out.push_window(data.train_window(w));
    }
}

/// Held-out batches in order, the last one padded with ignored targets; at most `max_windows` windows.
pub fn held_out_batches(data: &PackedData, batch: usize, max_windows: usize) -> Vec<HostBatch> {
    let windows = data.held_out_windows().min(max_windows.max(1));
    let per = batch.max(1);
    (0..windows)
        .step_by(per)
        .map(|start| {
            let mut b = HostBatch::default();
            for w in start..(start + per).min(windows) {
                b.push_window(data.held_out_window(w));
            }
            b.pad_to(per * data.seq_len());
            b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_blank_lines() {
        let text = "a b\nc\n\n\n  \nd e\n\nf\n";
        assert_eq!(split_documents(text), vec!["a b\nc", "d e", "f"]);
        assert!(split_documents("\n\n").is_empty());
        assert_eq!(split_documents("x"), vec!["x"]);
    }

    #[test]
    fn token_cache_round_trips_and_rejects_damage() {
        let tokens: Vec<u32> = (0..1000).map(|i| i * 7 % 501).collect();
        let bytes = encode_token_cache(42, &tokens);
        assert_eq!(decode_token_cache(&bytes, 42), Some(tokens));
        assert_eq!(decode_token_cache(&bytes, 43), None, "other key");
        let mut bad = bytes.clone();
        bad[100] ^= 1;
        assert_eq!(decode_token_cache(&bad, 42), None, "flipped bit");
        assert_eq!(decode_token_cache(&bytes[..bytes.len() - 1], 42), None, "truncated");
    }
}
