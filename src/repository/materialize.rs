//! Putting a snapshot's entries back on disk: into an empty target only
//! (unless forced), through a temporary path renamed into place after every
//! check passed, so a failed restore never leaves a target that looks
//! complete. Engine-neutral: an engine says whether the snapshot is one
//! stream (a file path) or a tree, and which check its copy must pass.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::confine::{self, Confined};
use super::manifest::ListParts;
use super::read::{ReadError, ReadSink};
use super::source::{EntryKind, SourceError};
use super::{Manifest, ManifestEntry, RepoError, Repository};
use crate::error::{Exit, HasExit};
use crate::ids::{PackId, SnapshotId};
use crate::plan::PlanName;
use crate::progress::{Progress, ProgressMode};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Also run this check on the restored copy before it is put in place
    /// (the engine's own, e.g. SQLite's `PRAGMA integrity_check`).
    pub check_with: Option<CheckFn>,
    /// `latest` or a snapshot id prefix.
    pub snapshot: String,
    /// A file path for single-stream sources (sqlite), a directory otherwise.
    pub to: PathBuf,
    /// Replace a non-empty target.
    pub force: bool,
    /// The snapshot is one stream restored to a file path (a database
    /// image), whatever its entries look like.
    pub single_stream: bool,
    /// Restore setuid/setgid bits as recorded (`--keep-setid-bits`); they
    /// are dropped otherwise.
    pub keep_setid_bits: bool,
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub plan: String,
    pub snapshot: SnapshotId,
    pub snapshot_time: DateTime<Utc>,
    pub source: String,
    pub target: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub duration_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("restore target {path} is not empty; {hint}")]
    TargetNotEmpty { path: PathBuf, hint: &'static str },
    #[error("unable to prepare restore target {path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restore of snapshot {snapshot} failed, nothing was written to {target}: {source}")]
    Read {
        snapshot: String,
        target: PathBuf,
        #[source]
        source: Box<ReadError>,
    },
    #[error("snapshot manifest {manifest} cannot be restored, nothing was written to {target}: entry `{path}` is refused: {why}")]
    UnsafeEntry {
        manifest: String,
        path: String,
        why: String,
        target: PathBuf,
    },
    #[error("restored database failed its check, nothing was written to {target}: {source}")]
    Check {
        target: PathBuf,
        #[source]
        source: SourceError,
    },
}

/// The hint for a non-empty target where `--force` is accepted.
pub const FORCE_HINT: &str = "choose an empty or new path, or pass --force to replace it";

impl HasExit for MaterializeError {
    fn exit(&self) -> Exit {
        match self {
            MaterializeError::TargetNotEmpty { .. } | MaterializeError::Target { .. } => {
                Exit::Target
            }
            MaterializeError::Read { source, .. } => match &**source {
                ReadError::Sink { .. } => Exit::Target,
                ReadError::Lists(r) => r.exit(),
                _ => Exit::Verify,
            },
            MaterializeError::Check { .. } | MaterializeError::UnsafeEntry { .. } => Exit::Verify,
            MaterializeError::Repo(r) => r.exit(),
        }
    }
}

/// True when a snapshot is one stream restored to a file path (e.g. sqlite).
pub fn is_single_file(manifest: &Manifest) -> bool {
    manifest.entries.len() == 1 && manifest.entries[0].kind == EntryKind::File
}

pub async fn restore(
    repo: &Repository,
    plan: &PlanName,
    opts: &RestoreOptions,
) -> Result<RestoreReport, MaterializeError> {
    let started = Instant::now();
    let snap = repo.find_snapshot(plan, &opts.snapshot).await?;
    // From version 7, the tree only: the chunk lists are read a part at a
    // time while the files are written.
    let mut manifest = repo.load_manifest_tree(&snap).await?;
    let target = absolute(&opts.to);
    let single = opts.single_stream || is_single_file(&manifest);
    tracing::info!(plan = %plan, snapshot = %snap.id, target = %target.display(), "restore started");
    let total = manifest.stats.total_bytes;
    let lists = manifest.list_parts(&snap.key).map(|parts| Streamed {
        numbers: (0..parts.files as u32).collect(),
        parts,
    });
    let files = materialize(
        repo,
        &snap.id,
        // Moved, not copied: before version 7, a chunk id per page is the
        // largest thing a restore holds.
        std::mem::take(&mut manifest.entries),
        total,
        &Materialize {
            target: &target,
            packs: manifest.packs.as_deref().unwrap_or_default(),
            lists,
            manifest: &snap.key,
            single,
            force: opts.force,
            keep_setid: opts.keep_setid_bits,
            progress: opts.progress,
            check: opts.check_with,
            cancel: None,
        },
    )
    .await?;
    tracing::info!(plan = %plan, snapshot = %snap.id, target = %target.display(), "restore finished");
    Ok(RestoreReport {
        plan: plan.to_string(),
        snapshot: snap.id,
        snapshot_time: manifest.started_at,
        source: manifest.source.kind.clone(),
        target,
        files,
        bytes: total,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The chunk lists of a restore's file entries, still in the repository
/// (manifest version 7).
#[derive(Debug, Clone)]
pub struct Streamed {
    pub parts: ListParts,
    /// For each file entry restored, in order, its number among the
    /// manifest's file entries (ascending): which list is its own.
    pub numbers: Vec<u32>,
}

/// A check of the restored copy before it is put in place.
pub type CheckFn = fn(&Path) -> Result<(), SourceError>;

pub struct Materialize<'a> {
    pub target: &'a Path,
    /// The manifest's packs, which its entries' chunk places number
    /// (manifest version 6; empty before).
    pub packs: &'a [PackId],
    /// Manifest version 7: the file entries came without their chunks,
    /// which are read from the chunk-list objects while the files are
    /// written, a part at a time.
    pub lists: Option<Streamed>,
    /// The manifest's key, named when one of its entries is refused.
    pub manifest: &'a str,
    /// One stream restored to a file path.
    pub single: bool,
    pub force: bool,
    /// Restore setuid/setgid bits as recorded.
    pub keep_setid: bool,
    pub progress: ProgressMode,
    pub check: Option<CheckFn>,
    /// Set by someone else to stop the restore early (it then fails and
    /// removes what it wrote): a point-in-time restore stops its base
    /// backup's restore when the WAL check running beside it fails.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// A restore written, checked and flushed beside its target, not yet in
/// place ([`stage`]): [`Staged::place`] renames it into place,
/// [`Staged::discard`] removes it. Dropped otherwise, it is removed on a
/// thread of its own.
pub struct Staged {
    temp: Option<PathBuf>,
    target: PathBuf,
    parent: PathBuf,
    force: bool,
    files: u64,
}

impl Staged {
    /// Renames it into place and flushes the rename; returns the file count.
    pub async fn place(mut self) -> Result<u64, MaterializeError> {
        let temp = self.temp.take().expect("placed once");
        let (t, parent, force) = (self.target.clone(), self.parent.clone(), self.force);
        tokio::task::spawn_blocking(move || {
            swap_into_place(&temp, &t, force)
                .and_then(|_| File::open(&parent).and_then(|d| d.sync_all()))
                .map_err(|source| {
                    let _ = remove_any(&temp);
                    MaterializeError::Target { path: t, source }
                })
        })
        .await
        .expect("swap into place panicked")?;
        Ok(self.files)
    }

    /// Removes it, leaving the target as it was.
    pub async fn discard(mut self) {
        if let Some(temp) = self.temp.take() {
            remove_in_background(&temp).await;
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            // Not on an async worker: a tree can take seconds to remove.
            let _ = std::thread::Builder::new()
                .name("holdfast-discard".into())
                .spawn(move || remove_any(&temp));
        }
    }
}

/// Writes `entries` into a temporary path beside the target (their chunk
/// lists read from `how.lists` as it goes, when given), checks every byte
/// against the snapshot, flushes it, and renames it into place; on any
/// failure removes it and leaves the target as it was. Returns the file count.
pub async fn materialize(
    repo: &Repository,
    snapshot: &SnapshotId,
    entries: Vec<ManifestEntry>,
    total: u64,
    how: &Materialize<'_>,
) -> Result<u64, MaterializeError> {
    stage(repo, snapshot, entries, total, how)
        .await?
        .place()
        .await
}

/// [`materialize`] up to the rename: the restore written, checked and
/// flushed beside its target, for the caller to place or discard.
pub async fn stage(
    repo: &Repository,
    snapshot: &SnapshotId,
    mut entries: Vec<ManifestEntry>,
    total: u64,
    how: &Materialize<'_>,
) -> Result<Staged, MaterializeError> {
    let target = how.target.to_path_buf();
    let single = how.single;
    let force = how.force;
    let keep_setid = how.keep_setid;
    // Every path is checked before anything is written: a hostile manifest
    // is refused whole, by name.
    if !single {
        if let Err((path, why)) = confine::check_tree(&entries) {
            return Err(MaterializeError::UnsafeEntry {
                manifest: how.manifest.to_string(),
                path,
                why,
                target,
            });
        }
    }
    let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let temp = parent.join(format!(".{name}.holdfast-restore-{}", std::process::id()));
    // File system work runs on blocking threads, never on a runtime worker.
    let (t, p, tmp) = (target.clone(), parent.clone(), temp.clone());
    tokio::task::spawn_blocking(move || {
        check_target(&t, single, force)?;
        fs::create_dir_all(&p).map_err(|source| MaterializeError::Target {
            path: p.clone(),
            source,
        })?;
        let _ = remove_any(&tmp);
        Ok::<_, MaterializeError>(())
    })
    .await
    .expect("target preparation panicked")?;
    // Only this snapshot's chunks: in a repository many snapshots and plans
    // share, the whole index is many times what one restore needs; and
    // none, for a manifest that places its chunks (version 6).
    let reader = repo.reader_for(how.packs, &entries).await?;
    let progress = Arc::new(Progress::new("restore", Some(total), how.progress));
    let temp_in = temp.clone();
    let cancel = how.cancel.clone();
    let lists = how.lists.clone();
    let (repo_in, runtime) = (repo.clone(), tokio::runtime::Handle::current());
    let result = tokio::task::spawn_blocking(move || {
        let sink_err = |source| ReadError::Sink {
            path: ".".into(),
            source,
        };
        // A tree's files are dealt to lanes, each written by a thread of its
        // own: the kernel's share of writing (copying into the page cache,
        // allocating blocks) then runs on every core, not on one writer.
        // Each lane takes its files in batches, in the entries' order: all
        // at once when the entries came whole; a batch per chunk-list
        // object read (manifest version 7), so a restore holds a few
        // objects' lists, not the snapshot's. `entries` keeps the rest, for
        // the directories and symlinks.
        let lane_of = deal_files(&entries, if single { 1 } else { write_lanes() });
        let lanes = lane_of.iter().max().map_or(1, |l| l + 1);
        // Streamed, the feeder reads the next object only while few chunks
        // are dealt and not yet written (LISTS_IN_FLIGHT_PER_LANE), so a
        // lane's queue never holds the snapshot's lists.
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..lanes).map(|_| crossbeam_channel::unbounded()).unzip();
        let in_flight = InFlight::new(lanes);
        let feed = match lists {
            Some(streamed) => Some((streamed, senders)),
            None => {
                let mut batches: Vec<Vec<ManifestEntry>> = vec![Vec::new(); lanes];
                let files = entries.iter_mut().filter(|e| e.kind == EntryKind::File);
                for (file, &lane) in files.zip(&lane_of) {
                    let chunks = std::mem::take(&mut file.chunks);
                    let at = file.at.take();
                    batches[lane].push(ManifestEntry {
                        chunks,
                        at,
                        ..file.clone()
                    });
                }
                // Sent, and the senders dropped: each lane ends after its one
                // batch. Counted as dealt like a fed batch, so each lane's
                // count of chunks not yet written is exact on either path.
                for (lane, (tx, batch)) in senders.into_iter().zip(batches).enumerate() {
                    in_flight.dealt(lane, chunks_of(&batch));
                    tx.send(batch).expect("an empty channel takes one batch");
                }
                None
            }
        };
        let reader = reader.for_lanes(lanes);
        let lane_failed = Arc::new(AtomicBool::new(false));
        // Lanes write files (and flush them in the background); the tree's
        // own writer makes directories and symlinks and writes no file.
        let new_sink = |dir: Option<Confined>, writes_files: bool| TreeWriter {
            root: temp_in.clone(),
            dir,
            single,
            keep_setid,
            setid_dropped: Vec::new(),
            out: None,
            progress: progress.clone(),
            files: 0,
            unsynced: 0,
            syncer: writes_files.then(Syncer::start),
            cancel: cancel.clone(),
            sibling_failed: Some(lane_failed.clone()),
        };
        let mut sink = new_sink(None, false);
        let r = if single {
            Ok(())
        } else {
            sink.prepare_tree(&entries).map_err(sink_err)
        }
        .and_then(|_| {
            std::thread::scope(|scope| {
                let feeding = feed.map(|(streamed, senders)| {
                    let files: Vec<&ManifestEntry> = entries
                        .iter()
                        .filter(|e| e.kind == EntryKind::File)
                        .collect();
                    let (repo, runtime, lane_of) = (&repo_in, &runtime, &lane_of);
                    let (lane_failed, in_flight) = (&lane_failed, &in_flight);
                    scope.spawn(move || {
                        let fed = Feed {
                            repo,
                            runtime,
                            streamed: &streamed,
                            files: &files,
                            lane_of,
                            stop: lane_failed,
                            in_flight,
                        }
                        .run(senders)
                        .map_err(|e| ReadError::Lists(Box::new(e)));
                        // The first to fail says why (see the lanes).
                        if fed.is_err() && lane_failed.swap(true, Ordering::SeqCst) {
                            return Err(None);
                        }
                        fed.map_err(Some)
                    })
                });
                let running: Vec<_> = receivers
                    .into_iter()
                    .enumerate()
                    .map(|(lane, batches)| {
                        let lane_sink = if single {
                            Ok(new_sink(None, true))
                        } else {
                            Confined::open(&temp_in).map(|d| new_sink(Some(d), true))
                        };
                        let (reader, lane_failed) = (&reader, &lane_failed);
                        let in_flight = &in_flight;
                        scope.spawn(move || {
                            let r = lane_sink.map_err(sink_err).and_then(|mut lane_sink| {
                                for batch in batches {
                                    reader.read_files(&batch, &mut lane_sink)?;
                                    in_flight.done(lane, chunks_of(&batch));
                                }
                                Ok((lane_sink.files, lane_sink.setid_dropped))
                            });
                            // The first lane to fail says why; the others
                            // stopped because it did.
                            if r.is_err() && lane_failed.swap(true, Ordering::SeqCst) {
                                return Err(None);
                            }
                            r.map_err(Some)
                        })
                    })
                    .collect();
                let mut files = 0;
                let mut first_err = None;
                for lane in running {
                    match lane.join().expect("restore lane panicked") {
                        Ok((n, dropped)) => {
                            files += n;
                            sink.setid_dropped.extend(dropped);
                        }
                        Err(Some(e)) => first_err = Some(e),
                        Err(None) => {}
                    }
                }
                if let Some(Err(Some(e))) =
                    feeding.map(|f| f.join().expect("chunk-list feed panicked"))
                {
                    first_err = Some(e);
                }
                // In one order whatever lane finished first.
                sink.setid_dropped.sort();
                match first_err {
                    Some(e) => Err(e),
                    None => Ok(files),
                }
            })
        })
        .and_then(|files| {
            if single {
                Ok(files)
            } else {
                sink.finish_tree(&entries)
                    .and_then(|_| sync_filesystem(&sink.root))
                    .map_err(sink_err)
                    .map(|_| files)
            }
        });
        progress.finish();
        sink.report_setid_dropped();
        r
    })
    .await
    .expect("restore thread panicked");
    let files = match result {
        Ok(n) => n,
        Err(source) => {
            remove_in_background(&temp).await;
            return Err(MaterializeError::Read {
                snapshot: snapshot.short(),
                target,
                source: Box::new(source),
            });
        }
    };
    if let Some(check) = how.check {
        let db = temp.clone();
        let checked = tokio::task::spawn_blocking(move || check(&db))
            .await
            .expect("restore check panicked");
        if let Err(source) = checked {
            remove_in_background(&temp).await;
            return Err(MaterializeError::Check { target, source });
        }
    }
    Ok(Staged {
        temp: Some(temp),
        target,
        parent,
        force,
        files,
    })
}

/// Removes a failed restore's temporary path on a blocking thread.
async fn remove_in_background(temp: &Path) {
    let temp = temp.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || remove_any(&temp)).await;
}

pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

pub fn check_target(target: &Path, single: bool, force: bool) -> Result<(), MaterializeError> {
    let meta = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(MaterializeError::Target {
                path: target.to_path_buf(),
                source,
            })
        }
    };
    let empty = !single
        && meta.is_dir()
        && fs::read_dir(target)
            .map_err(|source| MaterializeError::Target {
                path: target.to_path_buf(),
                source,
            })?
            .next()
            .is_none();
    if empty || force {
        Ok(())
    } else {
        Err(MaterializeError::TargetNotEmpty {
            path: target.to_path_buf(),
            hint: FORCE_HINT,
        })
    }
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) => Err(e),
    }
}

/// Renames the finished temp path onto the target, moving an old target aside
/// first and deleting it only once the new one is in place.
fn swap_into_place(temp: &Path, target: &Path, force: bool) -> std::io::Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::rename(temp, target),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() && !force => {
            // Checked empty before the restore began.
            fs::remove_dir(target)?;
            fs::rename(temp, target)
        }
        Ok(_) => {
            let aside = target.with_file_name(format!(
                ".{}.holdfast-old-{}",
                target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ));
            fs::rename(target, &aside)?;
            if let Err(e) = fs::rename(temp, target) {
                let _ = fs::rename(&aside, target);
                return Err(e);
            }
            remove_any(&aside)
        }
    }
}

struct TreeWriter {
    root: PathBuf,
    /// The tree's temporary root, held open: every entry is created beneath
    /// it without following a symlink (`None` for a single stream).
    dir: Option<Confined>,
    single: bool,
    keep_setid: bool,
    /// Entries whose setuid/setgid bits were not restored.
    setid_dropped: Vec<String>,
    out: Option<File>,
    progress: Arc<Progress>,
    files: u64,
    /// Bytes written to the current file since its last background flush.
    unsynced: u64,
    syncer: Option<Syncer>,
    /// [`Materialize::cancel`].
    cancel: Option<Arc<AtomicBool>>,
    /// Set when another lane of the same restore failed.
    sibling_failed: Option<Arc<AtomicBool>>,
}

impl TreeWriter {
    /// Fails once [`Materialize::cancel`] is set, or another lane failed.
    fn go_on(&self) -> std::io::Result<()> {
        let stops = [
            (&self.cancel, "a check running beside it failed"),
            (&self.sibling_failed, "writing another file failed"),
        ];
        for (flag, why) in stops {
            if flag.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    format!("restore stopped: {why}"),
                ));
            }
        }
        Ok(())
    }
}

/// Starts writeback of a file being restored while the restore goes on, so
/// the final fsync of a large file does not wait for all of it at once.
struct Syncer {
    tx: Option<std::sync::mpsc::SyncSender<File>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const SYNC_EVERY: u64 = 64 * 1024 * 1024;

impl Syncer {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<File>(64);
        let thread = std::thread::Builder::new()
            .name("hf-restore-sync".into())
            .spawn(move || {
                for f in rx {
                    // Errors surface at the writer's own final fsync.
                    let _ = f.sync_data();
                }
            })
            .expect("spawn syncer");
        Syncer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues a flush of `f`; skipped when the queue is full (a later nudge
    /// or the final flush covers it).
    fn nudge(&self, f: &File) {
        if let (Some(tx), Ok(clone)) = (&self.tx, f.try_clone()) {
            let _ = tx.try_send(clone);
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TreeWriter {
    fn dir(&self) -> &Confined {
        self.dir
            .as_ref()
            .expect("the tree is prepared before it is written")
    }

    /// The mode `entry` gets once its content is checked; notes dropped bits.
    fn mode_of(&mut self, entry: &ManifestEntry) -> u32 {
        if !self.keep_setid && confine::has_setid(entry.mode) {
            self.setid_dropped.push(entry.path.clone());
        }
        confine::restored_mode(entry.mode, self.keep_setid)
    }

    fn report_setid_dropped(&self) {
        if let Some(first) = self.setid_dropped.first() {
            tracing::warn!(
                entries = self.setid_dropped.len(),
                first = %first,
                "setuid/setgid bits of {} entr{} (first: {first}) were not restored; pass --keep-setid-bits to restore them",
                self.setid_dropped.len(),
                if self.setid_dropped.len() == 1 { "y" } else { "ies" }
            );
        }
    }

    /// Directories and symlinks first; files are written as their data comes.
    /// Directories start 0700 and get their recorded mode in `finish_tree`.
    fn prepare_tree(&mut self, entries: &[ManifestEntry]) -> std::io::Result<()> {
        let dir = Confined::create(&self.root)?;
        for e in entries {
            match e.kind {
                EntryKind::Dir => dir.create_dir(&e.path)?,
                EntryKind::Symlink => {
                    let target = e.target.as_deref().unwrap_or_default();
                    dir.symlink(&e.path, target, e.mtime_ns)?;
                }
                EntryKind::File => {}
            }
        }
        self.dir = Some(dir);
        Ok(())
    }

    /// Directory modes and times last, deepest first, so writing into a
    /// directory does not disturb its restored mtime.
    fn finish_tree(&mut self, entries: &[ManifestEntry]) -> std::io::Result<()> {
        for e in entries.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
            let mode = self.mode_of(e);
            self.dir().set_dir_meta(&e.path, mode, e.mtime_ns)?;
        }
        Ok(())
    }
}

/// How many lanes write a tree's files at once: one per core, at most 4.
fn write_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Deals the file entries of `entries` to at most `lanes` lanes, the
/// largest first to the lane with the fewest bytes so far: the lane of each
/// file entry, in order (each lane then takes its files in the entries'
/// order, so a directory's files stay together).
fn deal_files(entries: &[ManifestEntry], lanes: usize) -> Vec<usize> {
    let sizes: Vec<u64> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.size.unwrap_or(0).max(1))
        .collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut load = vec![0u64; lanes.max(1)];
    let mut lane_of = vec![0usize; sizes.len()];
    for i in order {
        let lightest = (0..load.len()).min_by_key(|&l| load[l]).unwrap_or(0);
        lane_of[i] = lightest;
        load[lightest] += sizes[i];
    }
    lane_of
}

/// How many chunks of a version 7 restore's lists may be dealt to lanes
/// and not yet written, per lane, before the next chunk-list object is
/// read: a 1 GiB PostgreSQL segment's pages. While a lane has nothing to
/// write, up to four times as many, so a lane whose next files come after
/// another lane's in the entries never waits for that lane to finish.
const LISTS_IN_FLIGHT_PER_LANE: u64 = 1 << 17;

/// The chunks dealt to each lane and not yet written.
struct InFlight {
    lanes: std::sync::Mutex<Vec<u64>>,
    written: std::sync::Condvar,
}

impl InFlight {
    fn new(lanes: usize) -> Self {
        InFlight {
            lanes: std::sync::Mutex::new(vec![0; lanes]),
            written: Default::default(),
        }
    }

    fn dealt(&self, lane: usize, n: u64) {
        self.lanes.lock().expect("in-flight lock")[lane] += n;
    }

    fn done(&self, lane: usize, n: u64) {
        let mut lanes = self.lanes.lock().expect("in-flight lock");
        lanes[lane] = lanes[lane].saturating_sub(n);
        self.written.notify_all();
    }

    /// Waits until the next chunk-list object may be read (see
    /// [`LISTS_IN_FLIGHT_PER_LANE`]); false if `stop` was set meanwhile
    /// (a lane failed: it will not write what it holds).
    fn wait_for_room(&self, stop: &AtomicBool) -> bool {
        let mut lanes = self.lanes.lock().expect("in-flight lock");
        let soft = LISTS_IN_FLIGHT_PER_LANE * lanes.len() as u64;
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let total: u64 = lanes.iter().sum();
            let idle = lanes.contains(&0);
            if total < soft || (idle && total < 4 * soft) {
                return true;
            }
            let timeout = std::time::Duration::from_millis(100);
            lanes = self
                .written
                .wait_timeout(lanes, timeout)
                .expect("in-flight lock")
                .0;
        }
    }
}

fn chunks_of(batch: &[ManifestEntry]) -> u64 {
    batch.iter().map(|e| e.chunks.len() as u64).sum()
}

/// Reads a version 7 restore's chunk lists a part at a time, and sends
/// each lane its files of the part, completed with their chunks.
struct Feed<'a> {
    repo: &'a Repository,
    runtime: &'a tokio::runtime::Handle,
    streamed: &'a Streamed,
    /// The restore's file entries, without chunks, in order.
    files: &'a [&'a ManifestEntry],
    lane_of: &'a [usize],
    /// Set when a lane failed: stop reading.
    stop: &'a AtomicBool,
    in_flight: &'a InFlight,
}

impl Feed<'_> {
    /// Returns early, with nothing wrong, when a lane stopped taking its
    /// batches (it failed, and says why).
    fn run(
        self,
        lanes: Vec<crossbeam_channel::Sender<Vec<ManifestEntry>>>,
    ) -> Result<(), RepoError> {
        let parts = &self.streamed.parts;
        let mut wanted = self
            .streamed
            .numbers
            .iter()
            .zip(self.files.iter().zip(self.lane_of))
            .peekable();
        let mut first = 0u64;
        for part in 0..parts.parts.len() {
            if !self.in_flight.wait_for_room(self.stop) {
                return Ok(());
            }
            let lists = self
                .runtime
                .block_on(self.repo.read_list_part(parts, part, first))?;
            let mut batches: Vec<Vec<ManifestEntry>> = vec![Vec::new(); lanes.len()];
            let count = lists.len() as u64;
            for (n, list) in (first..).zip(lists) {
                let Some(&(_, (file, &lane))) =
                    wanted.next_if(|(w, _)| u64::from(**w) == n).as_ref()
                else {
                    continue;
                };
                let mut e = file.without_chunks();
                parts.fill(part, &mut e, list)?;
                batches[lane].push(e);
            }
            first += count;
            for (lane, (tx, batch)) in lanes.iter().zip(batches).enumerate() {
                if batch.is_empty() {
                    continue;
                }
                self.in_flight.dealt(lane, chunks_of(&batch));
                if tx.send(batch).is_err() {
                    return Ok(());
                }
            }
        }
        if first != parts.files {
            return Err(parts.miscounted(first));
        }
        Ok(())
    }
}

/// Flushes the filesystem holding `path` to stable storage.
fn sync_filesystem(path: &Path) -> std::io::Result<()> {
    let dir = File::open(path)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

fn ft(ns: i64) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

impl ReadSink for TreeWriter {
    /// Files are created 0600 and keep that until their content is checked.
    fn start(&mut self, entry: &ManifestEntry) -> std::io::Result<()> {
        self.go_on()?;
        let f = if self.single {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&self.root)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("unable to create {}: {e}", self.root.display()),
                    )
                })?
        } else {
            self.dir().create_file(&entry.path)?
        };
        self.out = Some(f);
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_chunks(std::slice::from_ref(&bytes))
    }

    fn data_run(&mut self, chunks: &[bytes::Bytes]) -> std::io::Result<()> {
        self.write_chunks(chunks)
    }

    fn end(&mut self, entry: &ManifestEntry) -> std::io::Result<()> {
        self.end_file(entry)
    }
}

impl TreeWriter {
    /// Writes a run of chunks with as few system calls as it takes (one
    /// `writev` of up to 1024 chunks at a time, not a `write` per 8 KiB
    /// page).
    fn write_chunks<B: AsRef<[u8]>>(&mut self, chunks: &[B]) -> std::io::Result<()> {
        self.go_on()?;
        let bytes: u64 = chunks.iter().map(|c| c.as_ref().len() as u64).sum();
        self.progress.inc(bytes);
        let out = self.out.as_mut().expect("data comes between start and end");
        write_all_vectored(out, chunks)?;
        self.unsynced += bytes;
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            if let Some(s) = &self.syncer {
                s.nudge(out);
            }
        }
        Ok(())
    }

    fn end_file(&mut self, entry: &ManifestEntry) -> std::io::Result<()> {
        let out = self.out.take().expect("end follows start");
        self.unsynced = 0;
        let file = out;
        // A single stream is synced now; a tree is synced once, whole, by
        // `syncfs` before it is renamed into place (one flush, not one per file).
        if self.single {
            file.sync_all()?;
        } else if let Some(s) = &self.syncer {
            // Start this file's writeback now, in the background.
            s.nudge(&file);
        }
        // Called only after the content matched its hash: now the file may
        // have its recorded mode.
        let mode = self.mode_of(entry);
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(ns) = entry.mtime_ns {
            filetime::set_file_handle_times(&file, Some(ft(ns)), Some(ft(ns)))?;
        }
        self.files += 1;
        Ok(())
    }
}

/// `write_all` for several buffers: `writev` until every byte is written.
fn write_all_vectored<B: AsRef<[u8]>>(out: &mut File, chunks: &[B]) -> std::io::Result<()> {
    /// Linux's IOV_MAX.
    const MAX_SLICES: usize = 1024;
    let mut slices: Vec<std::io::IoSlice<'_>> = chunks
        .iter()
        .map(|c| c.as_ref())
        .filter(|c| !c.is_empty())
        .map(std::io::IoSlice::new)
        .collect();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        let take = left.len().min(MAX_SLICES);
        match out.write_vectored(&left[..take]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::engine::files::FilesSource;
    use crate::ids::Hash256;
    use crate::plan::Tier;
    use crate::repository::backup::{backup, BackupOptions};
    use crate::repository::read::{ChunkReader, LazyIndex};
    use crate::store::local::LocalStore;

    /// Backs up the files of `src` into a new repository under `tmp` with
    /// `key`, and returns the snapshot's entries with the file `b`'s
    /// recorded SHA-256 made wrong, and a reader of the repository.
    async fn backed_up_with_b_misrecorded(
        tmp: &std::path::Path,
        src: std::path::PathBuf,
        key: crate::repository::RepoKey,
    ) -> (Vec<ManifestEntry>, ChunkReader) {
        let store: Arc<dyn crate::store::Store> =
            Arc::new(LocalStore::open(tmp.join("repo")).unwrap());
        let repo = Repository::open_or_init(store, &key, None, Utc::now())
            .await
            .unwrap();
        let plan: PlanName = serde_json::from_value(serde_json::json!("tree")).unwrap();
        let source = FilesSource::new(src, Vec::new()).unwrap();
        let opts = BackupOptions {
            compression_level: 3,
            retention: None,
            tier: Tier::Daily,
            progress: ProgressMode::Quiet,
        };
        backup(&repo, &plan, Box::new(source), &opts).await.unwrap();
        let snap = repo.find_snapshot(&plan, "latest").await.unwrap();
        let mut entries = repo.load_manifest(&snap).await.unwrap().entries;
        let b = entries.iter_mut().find(|e| e.path == "b").unwrap();
        b.sha256 = Some(Hash256::digest(b"not the content of b"));
        let reader = ChunkReader::new(
            repo.store().clone(),
            repo.crypto().clone(),
            LazyIndex::loaded(Arc::new(repo.load_index().await.unwrap())),
            tokio::runtime::Handle::current(),
        );
        (entries, reader)
    }

    /// The sink sees a file's bytes before its hash is known: until the
    /// hash matched, the file on disk must stay 0600, whatever its entry says.
    /// (A file with a whole-file hash, from a version 2 manifest, under
    /// `encryption: none`, where that hash is the restore's
    /// check; in an encrypted repository each blob's tag is, and a blob that
    /// fails it stops the restore before the file ends.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_gets_its_recorded_mode_only_after_its_content_matched() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        for name in ["a", "b"] {
            fs::write(src.join(name), format!("content of {name}")).unwrap();
            fs::set_permissions(src.join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let (entries, reader) =
            backed_up_with_b_misrecorded(tmp.path(), src, crate::repository::RepoKey::Unencrypted)
                .await;
        let out = tmp.path().join("out");
        let (err, modes) = tokio::task::spawn_blocking(move || {
            let mut sink = TreeWriter {
                root: out.clone(),
                dir: None,
                single: false,
                keep_setid: false,
                setid_dropped: Vec::new(),
                out: None,
                progress: Arc::new(Progress::new("restore", None, ProgressMode::Quiet)),
                files: 0,
                unsynced: 0,
                syncer: None,
                cancel: None,
                sibling_failed: None,
            };
            sink.prepare_tree(&entries).unwrap();
            let err = reader.read_files(&entries, &mut sink).unwrap_err();
            let mode = |n: &str| fs::metadata(out.join(n)).unwrap().permissions().mode() & 0o7777;
            (err, [mode("a"), mode("b")])
        })
        .await
        .unwrap();
        assert!(
            matches!(&err, ReadError::StreamHash { path, .. } if path == "b"),
            "{err}"
        );
        assert_eq!(modes, [0o755, 0o600], "a checked, b not");
    }

    /// In an encrypted repository the blobs' tags are the restore's check;
    /// the whole-file hash is still what `verify` (chunk checks on) compares,
    /// so a manifest whose file hash disagrees with its chunks (a writer's
    /// own bug: only a key holder can write a manifest) is found there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_an_encrypted_repository_verify_still_compares_whole_file_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("b"), "content of b").unwrap();
        let (entries, reader) = backed_up_with_b_misrecorded(
            tmp.path(),
            src,
            crate::repository::RepoKey::Passphrase(crate::secret::Secret::new("test")),
        )
        .await;
        let (restored, verified) = tokio::task::spawn_blocking(move || {
            let restored = reader.read_files(&entries, &mut crate::repository::read::Discard);
            let verified = reader
                .checking_chunks()
                .read_files(&entries, &mut crate::repository::read::Discard);
            (restored, verified)
        })
        .await
        .unwrap();
        restored.expect("every blob opened under its chunk id");
        assert!(
            matches!(&verified, Err(ReadError::StreamHash { path, .. }) if path == "b"),
            "{verified:?}"
        );
    }

    /// The feeder reads on while a lane has nothing to write (up to four
    /// times the room), waits while every lane has its share, goes on when
    /// one writes its batch, and gives up when a lane failed.
    #[test]
    fn the_feeder_waits_for_room_unless_a_lane_is_idle() {
        let soft = LISTS_IN_FLIGHT_PER_LANE * 2;
        let stop = AtomicBool::new(false);
        let room = InFlight::new(2);
        room.dealt(0, soft);
        assert!(room.wait_for_room(&stop), "lane 1 is idle");
        room.dealt(0, 3 * soft);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| room.wait_for_room(&stop));
            std::thread::sleep(std::time::Duration::from_millis(150));
            assert!(!waiting.is_finished(), "four times the room: it waits");
            room.done(0, 3 * soft + 1);
            assert!(waiting.join().unwrap(), "room again");
        });
        room.dealt(1, 1);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| room.wait_for_room(&stop));
            std::thread::sleep(std::time::Duration::from_millis(150));
            assert!(!waiting.is_finished(), "both lanes busy, over the room");
            stop.store(true, Ordering::SeqCst);
            assert!(!waiting.join().unwrap(), "a lane failed: stop");
        });
    }

    #[test]
    fn files_are_dealt_to_lanes_by_size_each_lane_in_entry_order() {
        let entry = |path: &str, kind: EntryKind, size: u64| ManifestEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime_ns: None,
            size: Some(size),
            sha256: None,
            chunks: Vec::new(),
            target: None,
            stamp: None,
            file_id: None,
            at: None,
        };
        let entries = vec![
            entry("d", EntryKind::Dir, 0),
            entry("d/big", EntryKind::File, 100),
            entry("d/a", EntryKind::File, 30),
            entry("d/b", EntryKind::File, 40),
            entry("d/c", EntryKind::File, 50),
            entry("d/empty", EntryKind::File, 0),
        ];
        // big (100), then c, b and a (50, 90, 120) to the other lane, then
        // the empty file (counted as 1 byte) back to the lighter.
        assert_eq!(deal_files(&entries, 2), [0, 1, 1, 1, 0]);
        // One lane takes every file; no more lanes than files.
        assert_eq!(deal_files(&entries, 1), [0; 5]);
        assert_eq!(deal_files(&entries, 8), [0, 3, 2, 1, 4]);
        assert!(deal_files(&entries[..1], 2).is_empty());
    }

    /// A tree's files are written in lanes: when one lane's file is corrupt,
    /// that is the error reported (not another lane's stop), and nothing is
    /// left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_file_in_one_lane_is_named_and_the_restore_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        // Incompressible, so each file's chunks fill most of its pack.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for name in ["a", "b", "c", "d"] {
            let bytes: Vec<u8> = (0..(3 << 20))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            fs::write(src.join(name), bytes).unwrap();
        }
        let store: Arc<dyn crate::store::Store> =
            Arc::new(LocalStore::open(tmp.path().join("repo")).unwrap());
        let repo = Repository::open_or_init(
            store,
            &crate::repository::RepoKey::Unencrypted,
            None,
            Utc::now(),
        )
        .await
        .unwrap();
        let plan: PlanName = serde_json::from_value(serde_json::json!("tree")).unwrap();
        let opts = BackupOptions {
            compression_level: 3,
            retention: None,
            tier: Tier::Daily,
            progress: ProgressMode::Quiet,
        };
        let source = FilesSource::new(src, Vec::new()).unwrap();
        backup(&repo, &plan, Box::new(source), &opts).await.unwrap();
        // One byte of the last pack written flipped.
        let mut packs: Vec<PathBuf> = walkdir::WalkDir::new(tmp.path().join("repo/objects/packs"))
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect();
        packs.sort_by_key(|p| fs::metadata(p).unwrap().modified().unwrap());
        let pack = packs.last().unwrap();
        fs::set_permissions(pack, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(pack).unwrap();
        let mid = bytes.len() / 3;
        bytes[mid] ^= 0xff;
        fs::write(pack, bytes).unwrap();
        let out = tmp.path().join("out");
        let err = restore(
            &repo,
            &plan,
            &RestoreOptions {
                check_with: None,
                snapshot: "latest".into(),
                to: out.clone(),
                force: false,
                single_stream: false,
                keep_setid_bits: false,
                progress: ProgressMode::Quiet,
            },
        )
        .await
        .unwrap_err();
        let MaterializeError::Read { source, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            !matches!(**source, ReadError::Sink { .. }),
            "the corrupt file is the error, not a lane's stop: {err}"
        );
        assert!(!out.exists());
        // Removed on a thread of its own: give it a moment.
        let temp_left = || {
            fs::read_dir(tmp.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("holdfast-restore"))
        };
        for _ in 0..100 {
            if !temp_left() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!temp_left(), "a temporary restore was left behind");
    }
}
