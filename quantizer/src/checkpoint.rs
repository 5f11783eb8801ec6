//! Training checkpoints: latent f32 weights, AdamW moments, the step, the data position and the run's
//! configuration, in one checksummed file written atomically (temp file + fsync + rename), so a crash or a
//! SIGKILL at any moment leaves either the previous checkpoint or the new one, never a torn file.
//!
//! # File layout (version 2, little-endian)
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `TERNCKPT` |
//! | 4 | format version (`2`; version 1 is still read) |
//! | 4 | length `J` of the state JSON |
//! | J | [`CheckpointState`] as JSON (step, data position, fingerprints, the run's config, stage state) |
//! | 4 | tensor count `N` |
//! | per tensor | name length (u32), UTF-8 name, element count `n` (u64), flags (u8, bit 0: AdamW moments follow; version 2 only), `n` f32 weights, then if flagged `n` f32 AdamW `m` and `n` f32 `v` |
//! | 4 | CRC-32 (IEEE) of every byte before it |
//!
//! Version 1 has no flags byte and always stores the moments. Version 2 lets a block-wise stage store all the
//! model's weights but the moments of the block being trained only.
//!
//! Files are named `checkpoint-SSSSSSSS.tck` by step; the newest *valid* one is the resume point (a damaged
//! newer file is skipped and reported, not fatal).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const CHECKPOINT_MAGIC: [u8; 8] = *b"TERNCKPT";
pub const CHECKPOINT_VERSION: u32 = 2;
/// Bit 0 of a version-2 tensor's flags: AdamW moments follow the weights.
const HAS_MOMENTS: u8 = 1;
const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".tck";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{context} {path}")]
    Io {
        path: PathBuf,
        context: &'static str,
        source: std::io::Error,
    },
    #[error("{path} is not a tern checkpoint (bad magic bytes)")]
    BadMagic { path: PathBuf },
    #[error("{path} is a version-{version} checkpoint; this build reads version {CHECKPOINT_VERSION}")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path} is corrupt: stored CRC-32 {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { path: PathBuf, stored: u32, computed: u32 },
    #[error("{path} is truncated or malformed: {what}")]
    Malformed { path: PathBuf, what: String },
    #[error("{path}: bad state record: {message}")]
    BadState { path: PathBuf, message: String },
    #[error("{path} does not fit this model: {detail}")]
    LayoutMismatch { path: PathBuf, detail: String },
    #[error("no checkpoint to resume from in {dir}")]
    NoCheckpoint { dir: PathBuf },
    #[error("no valid checkpoint in {dir}: {}", .skipped.join("; "))]
    NoValidCheckpoint { dir: PathBuf, skipped: Vec<String> },
    #[error("cannot write a checkpoint: {0}")]
    Unwritable(String),
}

/// Everything besides the tensors that a bit-for-bit resume needs, plus what validates that the resumed run
/// is the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Training windows drawn so far (the data order is a function of the seed and this count).
    pub draws: u64,
    /// The data-order seed (also inside `config`; kept here so the file alone says how to continue).
    pub seed: u64,
    /// Training tokens consumed.
    pub tokens_trained: u64,
    /// Wall-clock seconds spent training before this checkpoint (all sessions).
    pub elapsed_s: f64,
    /// [`crate::data::PackedData::fingerprint`] of the data.
    pub data_fingerprint: u64,
    /// Fingerprint of the source model the run started from.
    pub model_fingerprint: u64,
    /// The run's [`crate::train::TrainConfig`] (or the stage's own config).
    pub config: serde_json::Value,
    /// Stage-specific state (e.g. the block a block-wise stage is in, the Hessian traces a Hestia run uses).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// Serialises a run's configuration or a stage's state for [`CheckpointState`]. A failure is an error, never
/// an empty record that a resume would misread as "nothing stored".
pub fn state_json<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<serde_json::Value, CheckpointError> {
    serde_json::to_value(value).map_err(|e| CheckpointError::Unwritable(format!("{what}: {e}")))
}

/// serde `with` module for an f64 in the state JSON, stored as its IEEE-754 bits (a JSON integer): JSON has no
/// NaN or infinity (serde_json writes them as `null`, which does not read back as a number), and serde_json's
/// default float parser is not guaranteed to give back the same bits. Reads plain JSON numbers too (files
/// written before values were stored as bits).
pub mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(x.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        // serde_json always writes a finite f64 with a fraction or exponent, so an old value never reads as
        // an integer and is never mistaken for a bit pattern.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Bits(u64),
            Number(f64),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Bits(b) => f64::from_bits(b),
            Stored::Number(x) => x,
        })
    }
}

impl CheckpointState {
    /// Entry `key` of the stage state, decoded: `None` when absent, an error when present but unreadable (a
    /// resume must not silently restart what the file says it had reached).
    pub fn extra_field<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        path: &Path,
    ) -> Result<Option<T>, CheckpointError> {
        self.extra
            .get(key)
            .map(|v| T::deserialize(v))
            .transpose()
            .map_err(|e| CheckpointError::BadState {
                path: path.to_path_buf(),
                message: format!("{key}: {e}"),
            })
    }
}

/// One parameter tensor with its AdamW moments (`m` and `v` empty when the checkpoint does not store them).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointTensor {
    pub name: String,
    pub weights: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl CheckpointTensor {
    pub fn has_moments(&self) -> bool {
        !self.m.is_empty() || self.weights.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub state: CheckpointState,
    pub tensors: Vec<CheckpointTensor>,
}

fn push_f32s(out: &mut Vec<u8>, xs: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(xs));
    } else {
        out.extend(xs.iter().flat_map(|x| x.to_le_bytes()));
    }
}

/// A bounds-checked reader over the file bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CheckpointError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| CheckpointError::Malformed {
                path: self.path.to_path_buf(),
                what: format!("{what} runs past the end of the data (offset {}, {n} bytes)", self.pos),
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, CheckpointError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, CheckpointError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>, CheckpointError> {
        let len = n.checked_mul(4).ok_or_else(|| CheckpointError::Malformed {
            path: self.path.to_path_buf(),
            what: format!("{what}: element count {n} overflows"),
        })?;
        Ok(self
            .take(len, what)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

impl Checkpoint {
    pub fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        let unwritable = |m: String| CheckpointError::Unwritable(m);
        // serde_json writes non-finite floats as null, which would not read back: refuse them here.
        if !self.state.elapsed_s.is_finite() {
            return Err(unwritable(format!(
                "elapsed time {} is not finite",
                self.state.elapsed_s
            )));
        }
        let json = serde_json::to_vec(&self.state).map_err(|e| unwritable(e.to_string()))?;
        let u32_len =
            |n: usize, what: &str| u32::try_from(n).map_err(|_| unwritable(format!("{what} {n} exceeds u32")));
        let tensor_bytes: usize = self
            .tensors
            .iter()
            .map(|t| 13 + t.name.len() + 12 * t.weights.len())
            .sum();
        let mut out = Vec::with_capacity(24 + json.len() + tensor_bytes);
        out.extend_from_slice(&CHECKPOINT_MAGIC);
        out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        out.extend_from_slice(&u32_len(json.len(), "state length")?.to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&u32_len(self.tensors.len(), "tensor count")?.to_le_bytes());
        for t in &self.tensors {
            let moments = !t.m.is_empty();
            if moments && (t.m.len() != t.weights.len() || t.v.len() != t.weights.len()) {
                return Err(unwritable(format!(
                    "tensor {}: {} weights but {} and {} moments",
                    t.name,
                    t.weights.len(),
                    t.m.len(),
                    t.v.len()
                )));
            }
            out.extend_from_slice(&u32_len(t.name.len(), "tensor name length")?.to_le_bytes());
            out.extend_from_slice(t.name.as_bytes());
            out.extend_from_slice(&(t.weights.len() as u64).to_le_bytes());
            out.push(if moments { HAS_MOMENTS } else { 0 });
            push_f32s(&mut out, &t.weights);
            if moments {
                push_f32s(&mut out, &t.m);
                push_f32s(&mut out, &t.v);
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parses and validates a checkpoint's bytes (`path` is for error messages).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        let malformed = |what: String| CheckpointError::Malformed {
            path: path.to_path_buf(),
            what,
        };
        if bytes.len() < 8 || bytes[..8] != CHECKPOINT_MAGIC {
            return Err(CheckpointError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        let mut r = Reader { bytes, pos: 8, path };
        let version = r.u32("version")?;
        if version != 1 && version != CHECKPOINT_VERSION {
            return Err(CheckpointError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        // Check the CRC before trusting any length field.
        let body = bytes
            .len()
            .checked_sub(4)
            .filter(|&b| b >= 16)
            .ok_or_else(|| malformed("no checksum".into()))?;
        let stored = u32::from_le_bytes([bytes[body], bytes[body + 1], bytes[body + 2], bytes[body + 3]]);
        let computed = crc32fast::hash(&bytes[..body]);
        if stored != computed {
            return Err(CheckpointError::ChecksumMismatch {
                path: path.to_path_buf(),
                stored,
                computed,
            });
        }
        let r = &mut Reader {
            bytes: &bytes[..body],
            pos: r.pos,
            path,
        };
        let json_len = r.u32("state length")? as usize;
        let state: CheckpointState =
            serde_json::from_slice(r.take(json_len, "state")?).map_err(|e| CheckpointError::BadState {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let count = r.u32("tensor count")? as usize;
        let mut tensors = Vec::with_capacity(count.min(1 << 16));
        for i in 0..count {
            let name_len = r.u32("tensor name length")? as usize;
            let name = std::str::from_utf8(r.take(name_len, "tensor name")?)
                .map_err(|_| malformed(format!("tensor {i}: name is not UTF-8")))?
                .to_string();
            let n = usize::try_from(r.u64("element count")?)
                .map_err(|_| malformed(format!("tensor {name}: element count too large")))?;
            let flags = if version >= 2 {
                r.take(1, "tensor flags")?[0]
            } else {
                HAS_MOMENTS
            };
            if flags & !HAS_MOMENTS != 0 {
                return Err(malformed(format!("tensor {name}: unknown flags {flags:#04x}")));
            }
            let weights = r.f32s(n, &name)?;
            let (m, v) = if flags & HAS_MOMENTS != 0 {
                (r.f32s(n, &name)?, r.f32s(n, &name)?)
            } else {
                (Vec::new(), Vec::new())
            };
            tensors.push(CheckpointTensor { name, weights, m, v });
        }
        if r.pos != body {
            return Err(malformed(format!(
                "{} unexpected bytes after the last tensor",
                body - r.pos
            )));
        }
        Ok(Self { state, tensors })
    }

    /// Writes atomically (temp file in the same directory, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        tern_format::write_atomic(path, &self.encode()?).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            context: "writing",
            source,
        })
    }

    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            context: "reading",
            source,
        })?;
        Self::decode(&bytes, path)
    }

    /// Checks that the tensors are exactly `expected` (name, element count), in order.
    pub fn check_layout(&self, expected: &[(String, usize)], path: &Path) -> Result<(), CheckpointError> {
        let mismatch = |detail: String| CheckpointError::LayoutMismatch {
            path: path.to_path_buf(),
            detail,
        };
        if self.tensors.len() != expected.len() {
            return Err(mismatch(format!(
                "{} tensors, the model has {}",
                self.tensors.len(),
                expected.len()
            )));
        }
        for (t, (name, n)) in self.tensors.iter().zip(expected) {
            if &t.name != name || t.weights.len() != *n {
                return Err(mismatch(format!(
                    "tensor {} with {} elements where the model has {name} with {n}",
                    t.name,
                    t.weights.len()
                )));
            }
        }
        Ok(())
    }
}

/// `DIR/checkpoint-SSSSSSSS.tck`.
pub fn checkpoint_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{step:08}{SUFFIX}"))
}

/// Checkpoint files in `dir` by ascending step (names only; contents are not read). A missing directory has none.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: dir.to_path_buf(),
                context: "listing",
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let step = name
            .strip_prefix(PREFIX)
            .and_then(|s| s.strip_suffix(SUFFIX))
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(step) = step {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest checkpoint in `dir` that reads and validates, with the newer files that did not (path and
/// reason) — a damaged newest file must not strand a run whose previous checkpoint is intact.
pub struct LatestCheckpoint {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    pub skipped: Vec<(PathBuf, String)>,
}

pub fn latest_checkpoint(dir: &Path) -> Result<LatestCheckpoint, CheckpointError> {
    let list = list_checkpoints(dir)?;
    if list.is_empty() {
        return Err(CheckpointError::NoCheckpoint { dir: dir.to_path_buf() });
    }
    let mut skipped = Vec::new();
    for (_, path) in list.iter().rev() {
        match Checkpoint::read(path) {
            Ok(checkpoint) => {
                return Ok(LatestCheckpoint {
                    path: path.clone(),
                    checkpoint,
                    skipped,
                })
            }
            Err(e) => skipped.push((path.clone(), e.to_string())),
        }
    }
    Err(CheckpointError::NoValidCheckpoint {
        dir: dir.to_path_buf(),
        skipped: skipped.into_iter().map(|(_, e)| e).collect(),
    })
}

/// Deletes all but the newest `keep` checkpoints (at least one is always kept), and temp files that a killed
/// writer left behind.
pub fn prune_checkpoints(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let list = list_checkpoints(dir)?;
    let keep = keep.max(1);
    for (_, path) in list.iter().take(list.len().saturating_sub(keep)) {
        std::fs::remove_file(path).map_err(|source| CheckpointError::Io {
            path: path.clone(),
            context: "removing",
            source,
        })?;
    }
    Ok(())
}

/// Removes `.checkpoint-*.tmp.*` files left by a writer that was killed between creating and renaming them.
pub fn remove_stale_temp_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with(".checkpoint-") && n.contains(".tmp."))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            state: CheckpointState {
                step: 7,
                draws: 56,
                seed: 3,
                tokens_trained: 1234,
                elapsed_s: 1.5,
                data_fingerprint: u64::MAX - 1,
                model_fingerprint: 99,
                config: serde_json::json!({"lr": 1e-3}),
                extra: serde_json::json!({"layer": 3}),
            },
            tensors: vec![
                CheckpointTensor {
                    name: "a".into(),
                    weights: vec![1.0, -2.5, f32::MIN_POSITIVE],
                    m: vec![0.1, 0.2, 0.3],
                    v: vec![0.0, 1e-30, 5.0],
                },
                CheckpointTensor {
                    name: "blk.0.attn_q.weight".into(),
                    weights: vec![-0.0],
                    m: vec![0.5],
                    v: vec![0.25],
                },
                CheckpointTensor {
                    name: "no moments".into(),
                    weights: vec![3.0, 4.0],
                    m: vec![],
                    v: vec![],
                },
            ],
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let c = sample();
        let bytes = c.encode().unwrap();
        let back = Checkpoint::decode(&bytes, Path::new("x")).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.tensors[1].weights[0].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn non_finite_state_and_inconsistent_moments_are_refused() {
        let mut c = sample();
        c.state.elapsed_s = f64::NAN;
        assert!(matches!(c.encode(), Err(CheckpointError::Unwritable(_))));
        let mut c = sample();
        c.tensors[0].v.pop();
        assert!(matches!(c.encode(), Err(CheckpointError::Unwritable(_))));
    }

    #[test]
    fn non_finite_floats_in_the_stage_state_round_trip_as_bits() {
        #[derive(Serialize, Deserialize)]
        struct Loss(#[serde(with = "f64_bits")] f64);
        // Non-finite values, a negative zero, a subnormal, and values whose shortest decimal is long.
        let values = [
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            5e-324,
            0.1 + 0.2,
            1.0 / 3.0,
            f64::from_bits(0x3fb9_9999_9999_999a),
        ];
        let mut c = sample();
        let stored: Vec<Loss> = values.iter().map(|&x| Loss(x)).collect();
        c.state.extra = serde_json::json!({ "losses": state_json(&stored, "losses").unwrap() });
        let back = Checkpoint::decode(&c.encode().unwrap(), Path::new("x")).unwrap();
        let read: Vec<Loss> = back.state.extra_field("losses", Path::new("x")).unwrap().unwrap();
        let bits = |xs: &mut dyn Iterator<Item = f64>| xs.map(f64::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(&mut read.iter().map(|l| l.0)), bits(&mut values.iter().copied()));
        // What plain JSON numbers would have done with the same state: NaN comes back as null, unreadable.
        let plain = serde_json::to_value(values).unwrap();
        assert!(plain[0].is_null());
        // Files written before the bits: plain numbers still read.
        c.state.extra = serde_json::json!({ "losses": [0.5, 2.0] });
        let read: Vec<Loss> = c.state.extra_field("losses", Path::new("x")).unwrap().unwrap();
        assert_eq!((read[0].0, read[1].0), (0.5, 2.0));
        // A present but unreadable entry is an error naming it, not "absent".
        c.state.extra = serde_json::json!({ "losses": [null] });
        match c.state.extra_field::<Vec<Loss>>("losses", Path::new("x")) {
            Err(CheckpointError::BadState { message, .. }) => assert!(message.starts_with("losses"), "{message}"),
            other => panic!("expected BadState, got {:?}", other.map(|o| o.map(|v| v.len()))),
        }
        assert!(c.state.extra_field::<u64>("absent", Path::new("x")).unwrap().is_none());
    }

    #[test]
    fn version_1_files_still_read() {
        // A version-1 file written by hand: no flags byte, moments always present.
        let c = sample();
        let json = serde_json::to_vec(&c.state).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&CHECKPOINT_MAGIC);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&1u32.to_le_bytes());
        let t = &c.tensors[0];
        out.extend_from_slice(&(t.name.len() as u32).to_le_bytes());
        out.extend_from_slice(t.name.as_bytes());
        out.extend_from_slice(&(t.weights.len() as u64).to_le_bytes());
        for xs in [&t.weights, &t.m, &t.v] {
            push_f32s(&mut out, xs);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let back = Checkpoint::decode(&out, Path::new("v1")).unwrap();
        assert_eq!(back.tensors, vec![t.clone()]);
    }

    #[test]
    fn resume_falls_back_to_the_newest_valid_checkpoint() {
        let dir = std::env::temp_dir().join(format!("tern-ckpt-fallback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = sample();
        c.write(&checkpoint_path(&dir, 7)).unwrap();
        c.state.step = 9;
        c.write(&checkpoint_path(&dir, 9)).unwrap();
        // Damage the newest.
        let newest = checkpoint_path(&dir, 9);
        let mut bytes = std::fs::read(&newest).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&newest, bytes).unwrap();
        let latest = latest_checkpoint(&dir).unwrap();
        assert_eq!(latest.checkpoint.state.step, 7);
        assert_eq!(latest.skipped.len(), 1);
        assert_eq!(latest.skipped[0].0, newest);
        // With both damaged: a typed error naming both problems.
        std::fs::write(checkpoint_path(&dir, 7), b"TERNCKPT").unwrap();
        assert!(matches!(
            latest_checkpoint(&dir),
            Err(CheckpointError::NoValidCheckpoint { skipped, .. }) if skipped.len() == 2
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_is_detected_with_typed_errors() {
        let bytes = sample().encode().unwrap();
        let p = Path::new("x");
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Checkpoint::decode(&bad, p).is_err(), "flip at {i} accepted");
        }
        assert!(matches!(
            Checkpoint::decode(&bytes[..bytes.len() - 3], p),
            Err(CheckpointError::ChecksumMismatch { .. })
        ));
        let mut v3 = bytes.clone();
        v3[8] = 3;
        assert!(matches!(
            Checkpoint::decode(&v3, p),
            Err(CheckpointError::UnsupportedVersion { version: 3, .. })
        ));
        assert!(matches!(
            Checkpoint::decode(b"NOTACKPT", p),
            Err(CheckpointError::BadMagic { .. })
        ));
    }
}
