//! The `files` source: a directory tree with modes, mtimes and symlinks.

use std::path::PathBuf;

use super::{EntrySink, Source, SourceError, SourceMetadata};

pub struct FilesSource {
    pub root: PathBuf,
    pub exclude: Vec<String>,
}

impl FilesSource {
    pub fn new(root: PathBuf, exclude: Vec<String>) -> Result<Self, SourceError> {
        Ok(FilesSource { root, exclude })
    }
}

impl Source for FilesSource {
    fn kind(&self) -> &'static str {
        "files"
    }
    fn estimate_bytes(&self) -> Option<u64> {
        None
    }
    fn snapshot(&mut self, _sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError> {
        Err(SourceError::Unsupported(
            "files source: not yet written".into(),
        ))
    }
}
