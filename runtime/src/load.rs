//! Loading a model from a path (feature `std`): the file is memory-mapped, never read into the heap, and the
//! model's tensors are views into the map.

use std::fmt;
use std::path::Path;

use tern_format::{MapError, MappedFile, ModelView, ParseOptions};

use crate::error::RuntimeError;
use crate::model::Model;

/// Opening, mapping or validating a model file failed.
#[derive(Debug)]
pub enum LoadError {
    Map(MapError),
    Model(RuntimeError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Map(e) => write!(f, "{e}"),
            Self::Model(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<MapError> for LoadError {
    fn from(e: MapError) -> Self {
        Self::Map(e)
    }
}

impl From<RuntimeError> for LoadError {
    fn from(e: RuntimeError) -> Self {
        Self::Model(e)
    }
}

/// Memory-maps a model file (the bytes stay in the page cache; nothing is copied).
pub fn map(path: impl AsRef<Path>) -> Result<MappedFile, LoadError> {
    Ok(MappedFile::open(path)?)
}

/// Parses and validates a mapped file. `verify_checksums` reads every tensor once to check its CRC32.
pub fn model(file: &MappedFile, verify_checksums: bool) -> Result<Model<'_>, LoadError> {
    let view = ModelView::parse_with(
        file,
        ParseOptions {
            verify_tensor_checksums: verify_checksums,
        },
    )
    .map_err(RuntimeError::from)?;
    Ok(Model::new(view)?)
}
