//! On-disk f16 activation files for block-wise distillation: one file per residual-stream position (the input
//! of layer `l`), holding `windows × seq_len × hidden` values in f16, checksummed and keyed like the token cache.
//!
//! # File layout (little-endian)
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `TERNACTS` |
//! | 4 | version (1) |
//! | 4 | hidden width `C` |
//! | 8 | key (what produced the file: model, data, seed, position; a stale file never matches) |
//! | 8 | windows `W` |
//! | 4 | rows per window (`seq_len`) |
//! | 4 | CRC-32 of the payload |
//! | 24 | zero padding (payload starts at byte 64) |
//! | `W·seq·C·2` | the values, window after window, row-major |
//!
//! Files are written to a temporary name and renamed when complete, read through an mmap and verified against
//! their CRC once when opened. Memory: a reader holds nothing but the mapping (the OS pages it in and out), so
//! block-wise training needs RAM for one batch of inputs and targets only; disk use is
//! `(layers + 1) × windows × seq_len × hidden × 2` bytes for full-precision inputs, plus one more position for
//! quantized inputs (SmolLM2, 512 windows of 512 tokens: 31 × 302 MB = 9.4 GB).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;

pub const MAGIC: [u8; 8] = *b"TERNACTS";
const VERSION: u32 = 1;
const HEADER: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("{context} {path}")]
    Io {
        path: PathBuf,
        context: &'static str,
        source: std::io::Error,
    },
    #[error("{path} is not a usable activation file: {what}")]
    Invalid { path: PathBuf, what: String },
}

fn io<'a>(path: &'a Path, context: &'static str) -> impl FnOnce(std::io::Error) -> ActivationError + 'a {
    move |source| ActivationError::Io {
        path: path.to_path_buf(),
        context,
        source,
    }
}

/// What a file must hold to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationShape {
    pub key: u64,
    pub windows: usize,
    pub rows: usize,
    pub width: usize,
}

impl ActivationShape {
    fn window_values(&self) -> usize {
        self.rows * self.width
    }
    fn payload_bytes(&self) -> usize {
        self.windows * self.window_values() * 2
    }
}

/// Streams windows into a new file; [`ActivationWriter::finish`] seals and renames it.
pub struct ActivationWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: std::fs::File,
    shape: ActivationShape,
    written: usize,
    crc: crc32fast::Hasher,
    buf: Vec<u8>,
}

impl ActivationWriter {
    pub fn create(path: &Path, shape: ActivationShape) -> Result<Self, ActivationError> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp, "creating"))?;
        file.write_all(&[0u8; HEADER]).map_err(io(&tmp, "writing"))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file,
            shape,
            written: 0,
            crc: crc32fast::Hasher::new(),
            buf: Vec::new(),
        })
    }

    /// Appends one window (`rows × width` values).
    pub fn push(&mut self, values: &[f32]) -> Result<(), ActivationError> {
        if values.len() != self.shape.window_values() || self.written >= self.shape.windows {
            return Err(ActivationError::Invalid {
                path: self.path.clone(),
                what: format!(
                    "window {} of {} values (expected {} windows of {})",
                    self.written,
                    values.len(),
                    self.shape.windows,
                    self.shape.window_values()
                ),
            });
        }
        self.buf.clear();
        self.buf
            .extend(values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()));
        self.crc.update(&self.buf);
        self.file.write_all(&self.buf).map_err(io(&self.tmp, "writing"))?;
        self.written += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<(), ActivationError> {
        if self.written != self.shape.windows {
            return Err(ActivationError::Invalid {
                path: self.path.clone(),
                what: format!("{} of {} windows written", self.written, self.shape.windows),
            });
        }
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(self.shape.width as u32).to_le_bytes());
        header.extend_from_slice(&self.shape.key.to_le_bytes());
        header.extend_from_slice(&(self.shape.windows as u64).to_le_bytes());
        header.extend_from_slice(&(self.shape.rows as u32).to_le_bytes());
        header.extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
        header.resize(HEADER, 0);
        self.file.seek(SeekFrom::Start(0)).map_err(io(&self.tmp, "seeking"))?;
        self.file.write_all(&header).map_err(io(&self.tmp, "writing"))?;
        self.file.sync_all().map_err(io(&self.tmp, "syncing"))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path, "renaming into"))
    }
}

impl Drop for ActivationWriter {
    fn drop(&mut self) {
        // An unfinished file is useless: never leave it behind (after `finish` the temp name no longer exists).
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// A validated activation file, mapped.
pub struct ActivationFile {
    map: Mmap,
    shape: ActivationShape,
}

impl ActivationFile {
    /// Opens `path` if it exists and holds exactly `shape` with an intact payload; `Ok(None)` if it is missing or
    /// stale (other key or shape), an error if it is damaged.
    pub fn open(path: &Path, shape: ActivationShape) -> Result<Option<Self>, ActivationError> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path, "opening")(e)),
        };
        // SAFETY: the file is private to the run directory and only ever replaced by rename (never modified in
        // place), so the mapped bytes do not change while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(io(path, "mapping"))?;
        let invalid = |what: String| ActivationError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        if map.len() < HEADER || map[..8] != MAGIC {
            return Err(invalid("bad magic or truncated header".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([map[o], map[o + 1], map[o + 2], map[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&map[o..o + 8]);
            u64::from_le_bytes(b)
        };
        if u32_at(8) != VERSION {
            return Err(invalid(format!("version {} (this build reads {VERSION})", u32_at(8))));
        }
        let stored = ActivationShape {
            width: u32_at(12) as usize,
            key: u64_at(16),
            windows: usize::try_from(u64_at(24)).map_err(|_| invalid("window count overflows".into()))?,
            rows: u32_at(32) as usize,
        };
        if stored != shape {
            return Ok(None);
        }
        let want = HEADER
            .checked_add(shape.payload_bytes())
            .ok_or_else(|| invalid("size overflows".into()))?;
        if map.len() != want {
            return Err(invalid(format!("{} bytes, expected {want}", map.len())));
        }
        let crc = crc32fast::hash(&map[HEADER..]);
        if crc != u32_at(36) {
            return Err(invalid(format!(
                "payload CRC {crc:#010x}, header says {:#010x}",
                u32_at(36)
            )));
        }
        Ok(Some(Self { map, shape }))
    }

    pub fn shape(&self) -> ActivationShape {
        self.shape
    }

    /// Window `w` as f32, appended to `out`.
    pub fn append_window(&self, w: usize, out: &mut Vec<f32>) {
        let n = self.shape.window_values();
        if w >= self.shape.windows {
            return;
        }
        let start = HEADER + w * n * 2;
        out.extend(
            self.map[start..start + n * 2]
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("tern-acts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state-00.f16");
        let shape = ActivationShape {
            key: 42,
            windows: 3,
            rows: 2,
            width: 5,
        };
        let mut w = ActivationWriter::create(&path, shape).unwrap();
        let data: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..10).map(|j| (i * 10 + j) as f32 * 0.25).collect())
            .collect();
        for d in &data {
            w.push(d).unwrap();
        }
        assert!(w.push(&data[0]).is_err(), "one window too many");
        w.finish().unwrap();
        let f = ActivationFile::open(&path, shape).unwrap().unwrap();
        let mut out = Vec::new();
        f.append_window(1, &mut out);
        assert_eq!(out, data[1]);
        // Another key or shape: stale, not an error.
        assert!(ActivationFile::open(&path, ActivationShape { key: 43, ..shape })
            .unwrap()
            .is_none());
        assert!(ActivationFile::open(&dir.join("missing"), shape).unwrap().is_none());
        // A flipped payload bit: a typed error.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(ActivationFile::open(&path, shape).is_err());
        // An unfinished writer leaves nothing behind.
        let other = dir.join("state-01.f16");
        let mut w = ActivationWriter::create(&other, shape).unwrap();
        w.push(&data[0]).unwrap();
        assert!(w.finish().is_err());
        assert!(!other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
