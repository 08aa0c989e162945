//! What restoring a logical dump into a running server takes, whatever the
//! engine: the report, the checking pass that reads the whole dump before
//! the server is touched, and the sink that feeds the checked bytes to the
//! engine's loader program (`pg_restore`, `mariadb`) on its stdin.
//!
//! A dump is a program the loader runs: a damaged or forged chunk could
//! carry any statement. So the whole dump is read and checked first (every
//! chunk against its id, the file against its SHA-256) with the target not
//! even connected to; then it is read again, every chunk checked again
//! before its bytes reach the loader, whose stdin is closed (letting it
//! finish) only after the whole file matched. Reading twice costs a second
//! download; spooling to local disk instead would need room for the whole
//! dump on the restoring host.

use std::io::Write;
use std::process::{Child, ChildStdin, ExitStatus};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ids::SnapshotId;
use crate::progress::Progress;
use crate::repository::read::{ChunkReader, ReadError, ReadSink};
use crate::repository::{Manifest, ManifestEntry, RepoError, Repository};

/// What `holdfast restore --dump` did.
#[derive(Debug, Clone, Serialize)]
pub struct DumpRestoreReport {
    pub plan: String,
    pub snapshot: SnapshotId,
    pub snapshot_time: DateTime<Utc>,
    pub database: String,
    /// The database restored into (where it is, without any password).
    pub into: String,
    pub bytes: u64,
    pub duration_seconds: f64,
}

/// The entry `<prefix>/<database><ext>` of a snapshot's manifest, or the
/// databases it does have dumps of (`none` when it has none).
pub fn find_dump(
    manifest: &Manifest,
    prefix: &str,
    database: &str,
    ext: &str,
) -> Result<ManifestEntry, String> {
    let path = format!("{prefix}/{database}{ext}");
    if let Some(entry) = manifest.entries.iter().find(|e| e.path == path) {
        return Ok(entry.clone());
    }
    let have: Vec<&str> = manifest
        .entries
        .iter()
        .filter_map(|e| e.path.strip_prefix(&format!("{prefix}/")))
        .filter_map(|p| p.strip_suffix(ext))
        .collect();
    Err(if have.is_empty() {
        "none".to_string()
    } else {
        have.join(", ")
    })
}

/// A reader of `manifest`'s files that checks every chunk against its id
/// and every file against its SHA-256 (a dump is run, not just stored).
pub async fn checking_reader(
    repo: &Repository,
    manifest: &Manifest,
) -> Result<ChunkReader, RepoError> {
    let packs = manifest.packs.as_deref().unwrap_or_default();
    Ok(repo
        .reader_for(packs, &manifest.entries)
        .await?
        .checking_chunks())
}

/// Reads the whole dump `entry` through `reader` (which must check chunks),
/// counting progress, and keeps nothing.
pub fn check_whole(
    reader: &ChunkReader,
    entry: &ManifestEntry,
    progress: &Progress,
) -> Result<(), ReadError> {
    struct Count<'a>(&'a Progress);
    impl ReadSink for Count<'_> {
        fn start(&mut self, _: &ManifestEntry) -> std::io::Result<()> {
            Ok(())
        }
        fn data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.0.inc(bytes.len() as u64);
            Ok(())
        }
        fn end(&mut self, _: &ManifestEntry) -> std::io::Result<()> {
            Ok(())
        }
    }
    reader.read_files(std::slice::from_ref(entry), &mut Count(progress))
}

/// Feeds the dump to a loader's stdin; closes it at the file's end, which
/// the reader reaches only after the whole file matched its hash.
pub struct LoaderPipe {
    pub stdin: Option<ChildStdin>,
    pub progress: Progress,
}

impl ReadSink for LoaderPipe {
    fn start(&mut self, _: &ManifestEntry) -> std::io::Result<()> {
        Ok(())
    }
    fn data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.progress.inc(bytes.len() as u64);
        self.stdin
            .as_mut()
            .expect("open until end")
            .write_all(bytes)
    }
    fn end(&mut self, _: &ManifestEntry) -> std::io::Result<()> {
        self.stdin = None;
        Ok(())
    }
}

/// Streams `entry` into `child` (a loader reading its stdin) and waits for
/// it, at most `deadline` after its input ended. When the read fails, or
/// stops before the end, the loader is killed before it sees an end of
/// input. Returns the read's outcome and the loader's exit status.
pub fn feed(
    reader: &ChunkReader,
    entry: &ManifestEntry,
    child: &mut Child,
    progress: Progress,
    deadline: Duration,
) -> (Result<(), ReadError>, std::io::Result<ExitStatus>) {
    let mut sink = LoaderPipe {
        stdin: child.stdin.take(),
        progress,
    };
    let read = reader.read_files(std::slice::from_ref(entry), &mut sink);
    sink.progress.finish();
    if read.is_err() || sink.stdin.is_some() {
        // Dropping the sink would close stdin, which a loader takes as the
        // end of a complete dump: kill it first.
        let _ = child.kill();
    }
    drop(sink);
    let until = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    (read, child.wait())
}
