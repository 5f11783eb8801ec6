//! Memory-mapping a model file (feature `std`).

use std::fs::File;
use std::path::{Path, PathBuf};

/// A read-only memory map of a file. Its bytes start page-aligned, as `ModelView` wants.
pub struct MappedFile {
    map: memmap2::Mmap,
    path: PathBuf,
}

/// Opening or mapping failed.
#[derive(Debug)]
pub struct MapError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

// The source is part of `Display`, so it is not also returned by `source()` (error chains would repeat it).
impl std::error::Error for MapError {}

impl MappedFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MapError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| MapError {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(err)?;
        // SAFETY: the map is read-only and private to this process. Another process truncating or rewriting
        // the file while it is mapped could change or invalidate the bytes under us; like every mmap-based
        // model loader (llama.cpp, llama2.c) we accept that, and the tools write model files atomically
        // (temp file + rename), so a file is never modified in place by tern itself.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(err)?;
        Ok(Self { map, path })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, then rename, so a crash
/// leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the contents written by `fill` (through a buffer) instead of taken from one slice.
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let path = path.as_ref();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        fill(&mut f)?;
        let f = f.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Why [`crate::ModelWriter::write_file`] failed: the model does not serialise, or the file could not be written.
#[derive(Debug)]
pub enum WriteError {
    Format(crate::FormatError),
    Io(std::io::Error),
}

impl From<crate::FormatError> for WriteError {
    fn from(e: crate::FormatError) -> Self {
        WriteError::Format(e)
    }
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl core::fmt::Display for WriteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WriteError::Format(e) => write!(f, "{e}"),
            WriteError::Io(e) => write!(f, "writing the model file: {e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Format(e) => Some(e),
            WriteError::Io(e) => Some(e),
        }
    }
}
