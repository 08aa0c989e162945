//! What the backup pipeline reads: every engine's source walks what it
//! protects and hands each entry to a sink (the repository writer) in a
//! stable order. The interface lives with the repository, which consumes it,
//! so dependencies point one way (engines → repository); sources know
//! nothing of stores, packs or S3.

use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What an entry is. Streams (a database image, a dump) are `File` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

/// Metadata of one entry as the source saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Relative, `/`-separated path; `.` is the source's root directory.
    pub path: String,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Modification time in nanoseconds since the Unix epoch, if known.
    pub mtime_ns: Option<i64>,
    /// Set only where an unchanged stamp proves unchanged content (regular
    /// files); the writer then reuses the previous snapshot's chunks without
    /// reading the file. Never set for database images, whose file metadata
    /// does not change with their content (e.g. SQLite in WAL mode).
    pub stamp: Option<FileStamp>,
}

/// What identifies an unchanged regular file without reading it, as restic
/// does: the same size, modification time, change time and inode. The change
/// time cannot be set by users, so a rewrite that restores the mtime still
/// shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
}

/// Which file a path is: its inode and birth time (`statx`). The same
/// path with another identity is another file, however old its pages
/// look (a relation file copied in by `CREATE DATABASE … STRATEGY
/// FILE_COPY` under a reused OID keeps its template's page LSNs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub inode: u64,
    pub birth_ns: i64,
}

/// A file of 8 KiB pages, each carrying in its first 8 bytes the LSN of
/// its last WAL-logged change (a PostgreSQL relation's main fork), for
/// [`EntrySink::paged_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pages {
    pub id: FileId,
    /// The previous snapshot's start (its checkpoint's redo point), when
    /// that snapshot is comparable (same cluster, same timeline): a page
    /// whose LSN is not 0 and below it has had no WAL-logged change since
    /// that snapshot began reading, so, in the same file, its chunk there
    /// stands for it (docs/repository-format.md, *Pages unchanged by LSN*).
    pub unchanged_below: Option<u64>,
}

/// How a source's streams are best cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Content-defined (FastCDC): survives insertions that shift data.
    ContentDefined,
    /// Fixed-size chunks, for page-structured images (databases) whose pages
    /// never shift: dedups as well and costs no rolling hash.
    Fixed { size: u32 },
}

/// A sink failure, passed back through the source untouched.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SinkError(pub Box<dyn std::error::Error + Send + Sync>);

/// Receives a source's entries, in order.
pub trait EntrySink {
    fn dir(&mut self, meta: &EntryMeta) -> Result<(), SinkError>;
    fn symlink(&mut self, meta: &EntryMeta, target: &str) -> Result<(), SinkError>;
    /// Consumes `content` to its end.
    fn file(&mut self, meta: &EntryMeta, content: &mut dyn Read) -> Result<(), SinkError>;
    /// [`EntrySink::file`] for a file of pages (see [`Pages`]); a sink that
    /// has no use for it reads it as any file.
    fn paged_file(
        &mut self,
        meta: &EntryMeta,
        pages: &Pages,
        content: &mut dyn Read,
    ) -> Result<(), SinkError> {
        let _ = pages;
        self.file(meta, content)
    }
}

/// Facts about the source recorded in the snapshot manifest (never secrets).
pub type SourceMetadata = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source path {path} does not exist")]
    Missing { path: PathBuf },
    #[error("unable to read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SQLite database {path}: {message}")]
    Sqlite { path: PathBuf, message: String },
    /// A database client program or query failed; `what` names it.
    #[error("{what}: {detail}")]
    Database { what: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
    /// Manifests and restore paths are strings; we refuse rather than skip.
    #[error("cannot back up {path}: its name is not valid UTF-8 (rename it, or exclude it)")]
    NonUtf8Path { path: PathBuf },
    #[error("invalid exclude pattern {pattern:?}: {message}")]
    InvalidExclude { pattern: String, message: String },
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl SourceError {
    /// An I/O failure on `path`: [`SourceError::Missing`] when it is not
    /// there, [`SourceError::Io`] otherwise.
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            SourceError::Missing {
                path: path.to_owned(),
            }
        } else {
            SourceError::Io {
                path: path.to_owned(),
                source: e,
            }
        }
    }
}

pub trait Source: Send {
    /// What it backs up, as written in plans and manifests.
    fn kind(&self) -> crate::plan::SourceKind;
    /// A rough size in bytes for progress, if cheap to know.
    fn estimate_bytes(&self) -> Option<u64>;
    /// How this source's streams should be chunked.
    fn chunking(&self) -> Chunking {
        Chunking::ContentDefined
    }
    /// Told, before [`Source::snapshot`], what the plan's previous snapshot
    /// recorded about its source (when there is one and it is readable).
    fn previous(&mut self, record: &super::manifest::SourceRecord) {
        let _ = record;
    }
    /// Takes one consistent snapshot, handing every entry to `sink`.
    fn snapshot(&mut self, sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError>;
}
