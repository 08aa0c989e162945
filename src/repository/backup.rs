//! Taking a snapshot: stream a source through the chunker, compress and pack
//! new chunks, upload packs and index objects, and write the manifest last.
//!
//! Threads: the source runs on one blocking thread and cuts chunks (hashing the
//! whole stream as it goes); a pool of workers hashes and compresses chunks in
//! parallel; results are taken back in order, so manifests list chunks in
//! stream order; two uploader threads put finished packs. Every queue is
//! bounded, so memory stays flat whatever the source's size.
//!
//! Deduplication trusts a chunk's location only when it has been seen to
//! hold: a chunk every index object places in one spot is known-stored (the
//! spot verify checks); a chunk whose index objects disagree (see
//! [`Index::candidates`]) is read back from each candidate, checked against
//! its id, until one passes, and stored again when none does. A planted index
//! object can then neither make a backup skip a chunk nor link one to garbage.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use crossbeam_channel::{bounded, Receiver, Sender};
use fastcdc::v2020::FastCDC;
use serde::Serialize;

use super::index::{ChunkLocation, IndexFile, IndexedPack, SourceId};
use super::manifest::{ManifestEntry, Placement, SnapshotStats, SourceRecord};
use super::pack::{
    encode_bundle, encode_chunk, pack_id, Blob, BlobEntry, EncodedBundle, PackBuilder,
    BUNDLE_HEADER_LEN, BUNDLE_MEMBER_LEN, BUNDLE_MEMBER_MAX, BUNDLE_TARGET, MAX_BUNDLE_CHUNKS,
};
use super::placing::{FilePlaces, NewChunk, Placing, RecentChunks};
use super::source::{
    Chunking, EntryKind, EntryMeta, EntrySink, Pages, SinkError, Source, SourceError,
};
use super::spill::{ChunkSpill, Span, SpilledLists};
use super::{
    index_key, pack_key, ChunkerConfig, Index, Manifest, RepoError, Repository, PACKS_PER_INDEX,
};
use crate::ids::{ChunkId, Hash256, IndexId, PackId, SnapshotId};
use crate::plan::{PlanName, Tier};
use crate::progress::{Progress, ProgressMode};
use crate::store::{LockGuard, LockKind, PutOptions, Retention, Store, StoreError};

#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// zstd level for new chunks.
    pub compression_level: i32,
    /// Lock applied to every object written, and extended onto reused packs.
    pub retention: Option<Retention>,
    /// The retention tier the snapshot is taken for; recorded in its manifest.
    pub tier: Tier,
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub plan: String,
    pub snapshot: SnapshotId,
    pub key: String,
    pub repository: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    #[serde(flatten)]
    pub stats: SnapshotStats,
    pub packs_written: u64,
    pub packs_reused: u64,
    /// Bytes read from the source: files whose stamp (size, mtime, ctime,
    /// inode) is unchanged since the last snapshot are not read again.
    pub bytes_read: u64,
    /// Pages read but not hashed: their LSN showed no change since the
    /// previous snapshot, which gave their chunk (see `source::Pages`).
    pub pages_unchanged_by_lsn: u64,
    pub retain_until: Option<DateTime<Utc>>,
    pub tier: Tier,
    /// Reused objects whose lock had to be extended for this snapshot.
    pub locks_extended: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("another backup of plan {plan} is running: {source}")]
    Busy {
        plan: String,
        #[source]
        source: StoreError,
    },
    #[error("a prune is running in the repository: {source}")]
    Pruning {
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl crate::error::HasExit for BackupError {
    fn exit(&self) -> crate::error::Exit {
        use crate::error::Exit;
        match self {
            BackupError::Busy { .. }
            | BackupError::Pruning { .. }
            | BackupError::Store(StoreError::LeaseLost { .. })
            | BackupError::Repo(RepoError::Store(StoreError::LeaseLost { .. })) => Exit::Busy,
            BackupError::Source(_) => Exit::Source,
            BackupError::Repo(_) | BackupError::Store(_) => Exit::Repository,
        }
    }
}

/// Failures on the writing side, handed back through the source.
#[derive(Debug, thiserror::Error)]
enum WriterError {
    #[error("unable to read {path} from the source: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a backup worker thread stopped unexpectedly")]
    WorkerGone,
    #[error("more than 4,294,967,295 new chunks of one kind in one backup; split the plan")]
    TooManyChunks,
    #[error(
        "unable to keep this backup's chunk lists in a temporary file in {dir} (TMPDIR): {source}"
    )]
    Spill {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<WriterError> for SinkError {
    fn from(e: WriterError) -> Self {
        SinkError(Box::new(e))
    }
}

/// Takes one snapshot of `source` for `plan`.
pub async fn backup(
    repo: &Repository,
    plan: &PlanName,
    source: Box<dyn Source>,
    opts: &BackupOptions,
) -> Result<BackupReport, BackupError> {
    let lock = repo
        .store()
        .try_lock(&format!("backup-{plan}"), LockKind::Exclusive)
        .await
        .map_err(|source| match source {
            StoreError::Busy { .. } => BackupError::Busy {
                plan: plan.to_string(),
                source,
            },
            other => BackupError::Store(other),
        })?;
    // Backups of every plan share the repository; a prune, which deletes
    // packs any of them may be reusing, holds it alone.
    let shared = match repo
        .store()
        .try_lock(super::REPOSITORY_LOCK, LockKind::Shared)
        .await
    {
        Ok(l) => l,
        Err(source) => {
            lock.release().await;
            return Err(match source {
                StoreError::Busy { .. } => BackupError::Pruning { source },
                other => BackupError::Store(other),
            });
        }
    };
    let result = backup_locked(repo, plan, source, opts, &[lock.as_ref(), shared.as_ref()]).await;
    shared.release().await;
    lock.release().await;
    result
}

async fn backup_locked(
    repo: &Repository,
    plan: &PlanName,
    mut source: Box<dyn Source>,
    opts: &BackupOptions,
    held: &[&dyn LockGuard],
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let started_at = crate::clock::now();
    let last = repo.list_snapshots(plan).await?.last().cloned();
    let previous = last.as_ref().map(|s| s.id);
    let index = Arc::new(repo.load_index().await?);
    // Files whose stamp is unchanged since the last snapshot are not read again.
    let mut unchanged: HashMap<String, Prev> = HashMap::new();
    // Files of pages whose unchanged pages need not be hashed again.
    let mut paged: HashMap<String, Prev> = HashMap::new();
    // A version 7 snapshot's chunk lists, read a part at a time as the
    // files they are for come up (in the same order: sources walk sorted).
    let mut prev_lists = None;
    let mut prev_packs = None;
    // Packs the previous snapshot needed are locked at least until its own
    // retain-until (its backup made sure): no need to look at them again
    // unless this snapshot needs a longer lock.
    let mut covered: HashSet<PackId> = HashSet::new();
    if let Some(last) = &last {
        match repo.load_manifest_tree(last).await {
            Ok(m) => {
                let covers = match (m.retention, opts.retention) {
                    (Some(prev), Some(now)) => prev.until >= now.until,
                    _ => false,
                };
                if covers {
                    // From manifest version 5 it names them; before, they
                    // are found from its chunks.
                    match &m.packs {
                        Some(packs) => covered.extend(packs.iter().copied()),
                        None => {
                            for c in m.entries.iter().flat_map(|e| &e.chunks) {
                                if let Some(loc) = index.agreed(c) {
                                    covered.insert(loc.pack);
                                }
                            }
                        }
                    }
                }
                source.previous(&m.source);
                prev_packs = m.packs.clone();
                prev_lists = m.list_parts(&last.key).map(|parts| PrevLists {
                    repo: repo.clone(),
                    runtime: tokio::runtime::Handle::current(),
                    parts,
                    next_part: 0,
                    base: 0,
                    lists: Vec::new(),
                    failed: false,
                });
                let files = m.entries.into_iter().filter(|e| e.kind == EntryKind::File);
                for (file, entry) in (0u64..).zip(files) {
                    let prev = Prev { entry, file };
                    // Whether each chunk is where the index agrees it is
                    // is known once its list is read (`Writer::reuse_unchanged`).
                    if prev.entry.stamp.is_some() {
                        unchanged.insert(prev.entry.path.clone(), prev);
                    } else if prev.entry.file_id.is_some() {
                        paged.insert(prev.entry.path.clone(), prev);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(plan = %plan, snapshot = %last.id, "previous snapshot unreadable, reading every file: {e}")
            }
        }
    }
    tracing::info!(plan = %plan, repository = %repo.url(), chunks_known = index.len(), source = %source.kind(), "backup started");

    // A database source estimates with a query: not on a runtime worker.
    let (mut source, estimate) = tokio::task::spawn_blocking(move || {
        let estimate = source.estimate_bytes();
        (source, estimate)
    })
    .await
    .expect("size estimate panicked");
    let progress = Arc::new(Progress::new("backup", estimate, opts.progress));
    let mut writer = Writer::start(
        repo.store().clone(),
        repo.crypto().clone(),
        index.clone(),
        unchanged,
        source.chunking(),
        repo.config().chunker,
        repo.config().pack_target_size as usize,
        opts.compression_level,
        opts.retention,
        repo.recent_generation(),
        repo.spill_after(),
        progress.clone(),
        tokio::runtime::Handle::current(),
    );
    writer.paged = paged;
    writer.prev_lists = prev_lists;
    writer.prev_packs = prev_packs;
    let kind = source.kind();
    let (writer, metadata) = tokio::task::spawn_blocking(move || {
        let result = source.snapshot(&mut writer);
        (writer, result)
    })
    .await
    .expect("backup thread panicked");
    let metadata = match metadata {
        Ok(m) => m,
        Err(e) => {
            writer.abort();
            return Err(e.into());
        }
    };
    let written = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .expect("backup thread panicked")?;
    progress.finish();

    // Every object this snapshot needs stays locked at least as long as it:
    // the packs it reuses, the index objects naming them, the config.
    let mut locks_extended = 0u64;
    if let Some(retention) = opts.retention {
        // Key objects too: deleting them would destroy the backups as surely
        // as deleting the data.
        let mut keys: Vec<String> = vec![super::CONFIG_KEY.to_string()];
        keys.extend(super::keys::live_key_objects(repo.store().as_ref(), repo.crypto()).await?);
        for (pack, sources) in &written.reused_packs {
            if covered.contains(pack) {
                continue;
            }
            keys.push(pack_key(pack));
            for s in sources {
                if *s == super::manifest::FROM_MANIFEST {
                    // Placed by the previous snapshot: every index object
                    // naming the pack (one names each of its chunks).
                    keys.extend(index.described_by_all(pack).map(str::to_string));
                } else {
                    keys.push(index.source(*s).to_string());
                }
            }
        }
        keys.sort();
        keys.dedup();
        let keys = keys.into_iter().map(|k| (k, retention)).collect();
        locks_extended = super::locks::extend_all(repo.store(), keys).await?;
    }

    // Every pack a chunk of this snapshot is in: those it wrote, and where
    // it found the chunks it reused (each checked or agreed on by every
    // index object naming it).
    let mut packs: Vec<PackId> = written.reused_packs.keys().copied().collect();
    packs.extend(written.packs_written.iter().copied());
    packs.sort();
    packs.dedup();
    // Each file's chunk places, numbered by `packs` (manifest version 6).
    let mut entries = written.entries;
    for ((e, places), span) in entries
        .iter_mut()
        .zip(&written.places)
        .zip(&written.lists.spans)
    {
        if e.kind == EntryKind::File {
            e.at = written
                .placing
                .resolve(places, &written.pack_ids, &packs)
                .filter(|at| at.iter().map(|p| p.count as u64).sum::<u64>() == span.count);
        }
    }
    drop(written.places);
    let finished_at = crate::clock::now();
    let manifest = Manifest {
        format: "holdfast-snapshot".into(),
        version: super::manifest::MANIFEST_VERSION,
        plan: plan.clone(),
        previous,
        holdfast_version: env!("CARGO_PKG_VERSION").into(),
        hostname: crate::hostname(),
        source: SourceRecord {
            kind: kind.as_str().into(),
            metadata,
        },
        started_at,
        finished_at,
        retention: opts.retention,
        tier: Some(opts.tier),
        stats: written.stats,
        entries_object: None,
        chunk_lists: None,
        packs: Some(packs),
        entries,
    };
    // The entries object, then the commit point: the manifest, only while
    // both locks still certainly hold (an S3 lease is refreshed then, and a
    // takeover is caught there at the latest). A backup killed between the
    // two leaves an entries object no manifest names: prune removes it once
    // its lock has ended.
    let (key, id) = repo
        .put_manifest_with(manifest, Some(written.lists), opts.retention, || async {
            for guard in held {
                guard.confirm().await?;
            }
            Ok(())
        })
        .await?;
    tracing::info!(plan = %plan, snapshot = %id, object = %key, total_bytes = written.stats.total_bytes, new_bytes = written.stats.new_bytes, "backup finished");
    Ok(BackupReport {
        plan: plan.to_string(),
        snapshot: id,
        key,
        repository: repo.url(),
        started_at,
        finished_at,
        duration_seconds: started.elapsed().as_secs_f64(),
        stats: written.stats,
        packs_written: written.packs_written.len() as u64,
        packs_reused: written.reused_packs.len() as u64,
        bytes_read: written.bytes_read,
        pages_unchanged_by_lsn: written.pages_unchanged,
        retain_until: opts.retention.map(|r| r.until),
        tier: opts.tier,
        locks_extended,
    })
}

/// A file entry of the previous snapshot, and its number among the
/// snapshot's file entries (which chunk list is its own).
struct Prev {
    entry: ManifestEntry,
    file: u64,
}

/// The previous snapshot's chunk lists (manifest version 7), read a part
/// at a time as the writer asks for them, in file order: one part in
/// memory, not every page's id. A file asked for before the part in hand
/// (a source walking in another order) starts the reading over. A part
/// that cannot be read stops the reuse: the rest is read from the source,
/// as when the previous snapshot is unreadable.
struct PrevLists {
    repo: Repository,
    runtime: tokio::runtime::Handle,
    parts: super::manifest::ListParts,
    next_part: usize,
    /// The number of the first file `lists` is for.
    base: u64,
    lists: Vec<super::manifest::ChunkList>,
    failed: bool,
}

impl PrevLists {
    /// Fills `entry`, file `file`'s, with its chunk ids and places, checked
    /// as every reader checks them ([`ListParts::fill`]; each file's are
    /// taken once). `false` when they cannot be read or fail the checks.
    ///
    /// [`ListParts::fill`]: super::manifest::ListParts::fill
    fn take(&mut self, file: u64, entry: &mut ManifestEntry) -> bool {
        if self.failed {
            return false;
        }
        if file < self.base {
            self.next_part = 0;
            self.base = 0;
            self.lists.clear();
        }
        while file >= self.base + self.lists.len() as u64 {
            let part = self.next_part;
            if part >= self.parts.parts.len() {
                return false;
            }
            let first = self.base + self.lists.len() as u64;
            // On the writer's thread, off the runtime's workers.
            match self
                .runtime
                .block_on(self.repo.read_list_part(&self.parts, part, first))
            {
                Ok(lists) => {
                    self.base = first;
                    self.lists = lists;
                    self.next_part += 1;
                }
                Err(e) => {
                    tracing::warn!(manifest = %self.parts.manifest, "previous snapshot's chunk lists unreadable, reading the rest of the files: {e}");
                    self.failed = true;
                    return false;
                }
            }
        }
        let list = std::mem::take(&mut self.lists[(file - self.base) as usize]);
        // The part in hand is the last one read.
        match self.parts.fill(self.next_part - 1, entry, list) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %entry.path, "previous snapshot's chunk list for this file refused, reading it again: {e}");
                false
            }
        }
    }
}

enum Job {
    /// Hash a chunk, look it up, and compress it alone if it is new and
    /// too large for a bundle.
    Chunk {
        data: Arc<Vec<u8>>,
        reply: Sender<Done>,
    },
    /// Compress new small chunks together.
    Bundle {
        members: Vec<(ChunkId, Arc<Vec<u8>>)>,
        reply: Sender<EncodedBundle>,
    },
}

struct Done {
    id: ChunkId,
    raw_length: u64,
    /// A new chunk compressed alone; `None` when it is already stored (at
    /// `stored_at`) or goes into a bundle (`data`).
    blob: Option<Blob>,
    stored_at: Option<ChunkLocation>,
    /// A new chunk small enough for a bundle.
    data: Option<Arc<Vec<u8>>>,
}

/// Chunks whose index objects disagree: each is read back from its
/// candidates (checked against its id) once per backup, and the first
/// location that passes is where it is known to be stored.
#[derive(Default)]
struct Disputed {
    checked: Mutex<crate::ids::ChunkMap<Option<ChunkLocation>>>,
    warned: Mutex<HashSet<(SourceId, PackId)>>,
}

impl Disputed {
    fn check(
        &self,
        store: &dyn Store,
        crypto: &super::Crypto,
        runtime: &tokio::runtime::Handle,
        index: &Index,
        id: &ChunkId,
    ) -> Option<ChunkLocation> {
        if let Some(known) = self.checked.lock().expect("disputed lock").get(id) {
            return *known;
        }
        let mut good = None;
        for loc in index.candidates(id) {
            match super::read::read_one(store, crypto, runtime, &loc) {
                Ok(_) => {
                    good = Some(loc);
                    break;
                }
                Err(why) => {
                    let first = self
                        .warned
                        .lock()
                        .expect("disputed lock")
                        .insert((loc.source, loc.pack));
                    if first {
                        tracing::warn!(
                            object = %index.source(loc.source),
                            pack = %pack_key(&loc.pack),
                            "index object {} places chunk {id} in pack {} at offset {}, which does not hold it ({why}); not deduplicating against it (further such locations from this index object in this pack are not logged; run `holdfast verify`)",
                            index.source(loc.source),
                            pack_key(&loc.pack),
                            loc.blob.offset
                        )
                    }
                }
            }
        }
        self.checked
            .lock()
            .expect("disputed lock")
            .insert(*id, good);
        good
    }
}

/// State shared with uploader threads.
struct Shared {
    store: Arc<dyn Store>,
    crypto: super::Crypto,
    retention: Option<Retention>,
    runtime: tokio::runtime::Handle,
    /// Uploaded packs not yet named by an index object.
    unindexed: Mutex<Vec<IndexedPack>>,
    failure: Mutex<Option<StoreError>>,
    /// The packs this backup uploaded.
    packs_written: Mutex<Vec<PackId>>,
    /// The same, by their order among this backup's packs ([`Placing`]).
    pack_ids: Mutex<HashMap<u32, PackId>>,
}

impl Shared {
    fn fail(&self, e: StoreError) {
        let mut f = self.failure.lock().expect("failure lock");
        if f.is_none() {
            *f = Some(e);
        }
    }

    fn take_failure(&self) -> Option<StoreError> {
        self.failure.lock().expect("failure lock").take()
    }

    fn has_failed(&self) -> bool {
        self.failure.lock().expect("failure lock").is_some()
    }

    /// Puts a content-addressed object; an existing object of the same name
    /// and size is the same object (written by an earlier, killed backup).
    fn put_content(&self, key: &str, bytes: Vec<u8>, sha256: Hash256) -> Result<(), StoreError> {
        let size = bytes.len() as u64;
        let opts = PutOptions {
            sha256,
            retention: self.retention,
        };
        self.runtime.block_on(async {
            match self.store.put(key, Bytes::from(bytes), &opts).await {
                Err(StoreError::AlreadyExists { .. }) => {
                    let info = self.store.head(key).await?;
                    if info.size != size {
                        return Err(StoreError::Io {
                            op: "reuse",
                            store: self.store.url(),
                            key: key.to_string(),
                            source: std::io::Error::other(format!(
                                "an object of this name exists with {} bytes, expected {size}; run `holdfast verify`",
                                info.size
                            )),
                        });
                    }
                    if let Some(r) = self.retention {
                        if info.retention.is_none_or(|cur| cur.until < r.until) {
                            self.store.extend_retention(key, &r).await?;
                        }
                    }
                    Ok(())
                }
                other => other,
            }
        })
    }

    fn upload_pack(
        &self,
        seq: u32,
        bytes: Vec<u8>,
        blobs: Vec<BlobEntry>,
    ) -> Result<(), StoreError> {
        let id = pack_id(&bytes);
        let size = bytes.len() as u64;
        self.put_content(&pack_key(&id), bytes, id.0)?;
        self.packs_written.lock().expect("packs lock").push(id);
        self.pack_ids.lock().expect("packs lock").insert(seq, id);
        let batch = {
            let mut unindexed = self.unindexed.lock().expect("index lock");
            unindexed.push(IndexedPack {
                id,
                size,
                chunks: blobs.into_iter().map(Into::into).collect(),
            });
            let chunks: usize = unindexed.iter().map(|p| p.chunks.len()).sum();
            if unindexed.len() >= PACKS_PER_INDEX || chunks >= super::MAX_CHUNKS_PER_INDEX {
                std::mem::take(&mut *unindexed)
            } else {
                Vec::new()
            }
        };
        self.write_index(batch)
    }

    fn write_index(&self, packs: Vec<IndexedPack>) -> Result<(), StoreError> {
        if packs.is_empty() {
            return Ok(());
        }
        let bytes = IndexFile::new(packs).encode(&self.crypto);
        let id = IndexId(Hash256::digest(&bytes));
        self.put_content(&index_key(&id), bytes, id.0)
    }
}

struct Written {
    /// Without their chunk lists: those are in `lists`.
    entries: Vec<ManifestEntry>,
    lists: SpilledLists,
    /// Where each entry's chunks are (empty for those that are no file).
    places: Vec<FilePlaces>,
    placing: Placing,
    pack_ids: HashMap<u32, PackId>,
    stats: SnapshotStats,
    reused_packs: HashMap<PackId, HashSet<SourceId>>,
    packs_written: Vec<PackId>,
    bytes_read: u64,
    pages_unchanged: u64,
}

/// A chunk in the writer's queue: one a worker is hashing, or one already
/// stored (a page unchanged by its LSN, a chunk of a file reused whole),
/// ready without a worker or a channel of its own.
enum Queued {
    Hashing(Receiver<Done>),
    Known(Done),
}

/// A finished pack for an uploader: its order among this backup's packs,
/// its bytes, and its chunks' places.
type Upload = (u32, Vec<u8>, Vec<BlobEntry>);

/// The previous snapshot's chunks of a file of pages, each with where the
/// index agrees it is.
type PrevPages = Vec<(ChunkId, Option<ChunkLocation>)>;

/// Where each of a previous snapshot's chunks of one file may be reused
/// from (see [`Writer::prev_places`]).
type PrevPlaces = Vec<Option<ChunkLocation>>;

/// What a pack being built is given at once: its target (from the
/// repository's config, so capped here) and room for the blob that crosses
/// it and the trailer. A bigger blob grows the buffer as usual.
fn pack_capacity(target: usize) -> usize {
    target.min(64 << 20) + (1 << 20)
}

/// The sink a source writes into.
struct Writer {
    index: Arc<Index>,
    /// The previous snapshot's file entries, by path, that may be reused.
    unchanged: HashMap<String, Prev>,
    /// The previous snapshot's entries of files of pages (with a
    /// [`ManifestEntry::file_id`]) not in `unchanged`, by path.
    paged: HashMap<String, Prev>,
    /// Their chunk lists, when the previous snapshot keeps them apart.
    prev_lists: Option<PrevLists>,
    /// The packs the previous snapshot's places are numbered by (manifest
    /// version 5 on).
    prev_packs: Option<Vec<PackId>>,
    pages_unchanged: u64,
    chunking: Chunking,
    chunker: ChunkerConfig,
    pack_target: usize,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Results not yet taken, in stream order, with the entry they belong to.
    pending: VecDeque<(usize, Queued)>,
    window: usize,
    /// Bundles being compressed at most (about 128 KiB each, and their
    /// chunks).
    bundles_in_flight: usize,
    /// The new chunks met lately, by their order among those of their kind
    /// (bounded: see [`RecentChunks`]).
    new_chunks: RecentChunks,
    /// New chunks of each kind so far: stored alone, bundled.
    new_alone: u32,
    new_bundled: u32,
    placing: Placing,
    /// Where each entry's chunks are, beside `entries`.
    places: Vec<FilePlaces>,
    /// The chunk ids of every file, in order, and where each entry's are
    /// among them (beside `entries`): off the heap past the first few
    /// hundred thousand (see [`ChunkSpill`]).
    spill: ChunkSpill,
    spans: Vec<Span>,
    reused_packs: HashMap<PackId, HashSet<SourceId>>,
    /// New small chunks waiting to be compressed together, and their bytes.
    bundle: Vec<(ChunkId, Arc<Vec<u8>>)>,
    bundle_raw: usize,
    /// Bundles being compressed, oldest first.
    bundles: VecDeque<Receiver<EncodedBundle>>,
    pack: PackBuilder,
    uploads: Option<Sender<Upload>>,
    uploaders: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    entries: Vec<ManifestEntry>,
    stats: SnapshotStats,
    /// Bytes read from the source; files reused by their stamp add nothing.
    bytes_read: u64,
    progress: Arc<Progress>,
    buf: Vec<u8>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    fn start(
        store: Arc<dyn Store>,
        crypto: super::Crypto,
        index: Arc<Index>,
        unchanged: HashMap<String, Prev>,
        chunking: Chunking,
        chunker: ChunkerConfig,
        pack_target: usize,
        level: i32,
        retention: Option<Retention>,
        recent_generation: usize,
        spill_after: usize,
        progress: Arc<Progress>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        // Chunks in flight: a few per worker for content-defined chunks
        // (about 1 MiB each); for small fixed chunks (pages) enough to hold
        // 8 MiB, so the source keeps streaming while the workers compress a
        // bundle instead of waiting on each page's turn.
        let window = match chunking {
            Chunking::Fixed { size } => (threads * 3 + 2).max((8 << 20) / size.max(1) as usize),
            Chunking::ContentDefined => threads * 3 + 2,
        };
        let (jobs_tx, jobs_rx) = bounded::<Job>(window);
        let disputed = Arc::new(Disputed::default());
        let workers = (0..threads)
            .map(|i| {
                let rx = jobs_rx.clone();
                let index = index.clone();
                let crypto = crypto.clone();
                let store = store.clone();
                let runtime = runtime.clone();
                let disputed = disputed.clone();
                std::thread::Builder::new()
                    .name(format!("hf-chunk-{i}"))
                    .spawn(move || {
                        for job in rx {
                            let (data, reply) = match job {
                                Job::Chunk { data, reply } => (data, reply),
                                Job::Bundle { members, reply } => {
                                    let members: Vec<(ChunkId, &[u8])> =
                                        members.iter().map(|(id, d)| (*id, &d[..])).collect();
                                    let _ = reply.send(encode_bundle(&members, level, &crypto));
                                    continue;
                                }
                            };
                            let id = crypto.chunk_id(&data[..]);
                            let stored_at = match index.agreed(&id) {
                                Some(loc) => Some(loc),
                                None if index.is_disputed(&id) => {
                                    disputed.check(&*store, &crypto, &runtime, &index, &id)
                                }
                                None => None,
                            };
                            let bundled = data.len() <= BUNDLE_MEMBER_MAX;
                            let blob = (stored_at.is_none() && !bundled)
                                .then(|| encode_chunk(id, &data, level, &crypto));
                            let _ = reply.send(Done {
                                id,
                                raw_length: data.len() as u64,
                                blob,
                                stored_at,
                                data: (stored_at.is_none() && bundled).then_some(data),
                            });
                        }
                    })
                    .expect("spawn chunk worker")
            })
            .collect();
        let shared = Arc::new(Shared {
            store,
            crypto: crypto.clone(),
            retention,
            runtime,
            unindexed: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            packs_written: Default::default(),
            pack_ids: Default::default(),
        });
        let (up_tx, up_rx) = bounded::<Upload>(1);
        // Each uploader holds one pack (16 MiB); remote stores get a few more
        // so round trips overlap.
        let uploader_count = 2.max(shared.store.capabilities().parallel_reads / 4);
        let uploaders = (0..uploader_count)
            .map(|i| {
                let rx = up_rx.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("hf-upload-{i}"))
                    .spawn(move || {
                        for (seq, bytes, blobs) in rx {
                            if shared.has_failed() {
                                continue;
                            }
                            if let Err(e) = shared.upload_pack(seq, bytes, blobs) {
                                shared.fail(e);
                            }
                        }
                    })
                    .expect("spawn uploader")
            })
            .collect();

        Writer {
            index,
            unchanged,
            paged: HashMap::new(),
            prev_lists: None,
            prev_packs: None,
            pages_unchanged: 0,
            chunking,
            chunker,
            pack_target,
            jobs: Some(jobs_tx),
            workers,
            pending: VecDeque::new(),
            window,
            bundles_in_flight: threads * 4,
            new_chunks: RecentChunks::new(recent_generation),
            new_alone: 0,
            new_bundled: 0,
            placing: Placing::default(),
            places: Vec::new(),
            spill: ChunkSpill::new(spill_after),
            spans: Vec::new(),
            reused_packs: HashMap::new(),
            bundle: Vec::new(),
            bundle_raw: 0,
            bundles: VecDeque::new(),
            pack: PackBuilder::with_capacity(pack_capacity(pack_target)),
            uploads: Some(up_tx),
            uploaders,
            shared,
            entries: Vec::new(),
            stats: SnapshotStats::default(),
            bytes_read: 0,
            progress,
            buf: vec![0u8; 2 * chunker.max_size as usize],
        }
    }

    fn check_failed(&self) -> Result<(), WriterError> {
        match self.shared.take_failure() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn submit(&mut self, entry: usize, data: Vec<u8>) -> Result<(), WriterError> {
        while self.pending.len() >= self.window {
            self.take_one()?;
        }
        let (tx, rx) = bounded(1);
        self.progress.inc(data.len() as u64);
        let data = Arc::new(data);
        self.jobs
            .as_ref()
            .expect("jobs open while writing")
            .send(Job::Chunk { data, reply: tx })
            .map_err(|_| WriterError::WorkerGone)?;
        self.pending.push_back((entry, Queued::Hashing(rx)));
        Ok(())
    }

    /// A page already stored, known by its LSN without hashing its bytes.
    fn submit_known(
        &mut self,
        entry: usize,
        id: ChunkId,
        len: usize,
        at: ChunkLocation,
    ) -> Result<(), WriterError> {
        self.progress.inc(len as u64);
        self.pages_unchanged += 1;
        self.queue_stored(entry, id, at)
    }

    /// A chunk already stored at `at`: queued in stream order, as if a
    /// worker had found it, so its id goes to the spill in its turn.
    fn queue_stored(
        &mut self,
        entry: usize,
        id: ChunkId,
        at: ChunkLocation,
    ) -> Result<(), WriterError> {
        while self.pending.len() >= self.window {
            self.take_one()?;
        }
        let done = Done {
            id,
            raw_length: u64::from(at.blob.raw_length),
            blob: None,
            stored_at: Some(at),
            data: None,
        };
        self.pending.push_back((entry, Queued::Known(done)));
        Ok(())
    }

    fn take_one(&mut self) -> Result<(), WriterError> {
        let Some((entry, queued)) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = match queued {
            Queued::Hashing(rx) => rx.recv().map_err(|_| WriterError::WorkerGone)?,
            Queued::Known(done) => done,
        };
        self.spill
            .push(&mut self.spans[entry], done.id)
            .map_err(|source| WriterError::Spill {
                dir: std::env::temp_dir().display().to_string(),
                source,
            })?;
        self.stats.chunks += 1;
        if let Some(loc) = done.stored_at {
            self.places[entry].stored(loc.pack, &loc.blob);
            self.reused_packs
                .entry(loc.pack)
                .or_default()
                .insert(loc.source);
        } else {
            // One lookup of the id per chunk says whether it is new (or
            // new but met earlier in this backup).
            let new = if done.blob.is_some() {
                NewChunk::Alone(self.new_alone)
            } else {
                NewChunk::Bundled(self.new_bundled)
            };
            let seen = self.new_chunks.seen_or_remember(done.id, new);
            self.places[entry].new_chunk(seen.unwrap_or(new));
            if seen.is_some() {
                return self.take_bundles(false);
            }
            let counter = match new {
                NewChunk::Alone(_) => &mut self.new_alone,
                NewChunk::Bundled(_) => &mut self.new_bundled,
            };
            *counter = counter.checked_add(1).ok_or(WriterError::TooManyChunks)?;
            self.stats.new_chunks += 1;
            self.stats.new_bytes += done.raw_length;
            match (done.blob, done.data) {
                (Some(blob), _) => {
                    self.stats.stored_bytes += blob.data.len() as u64;
                    self.pack.add(blob);
                    if self.pack.len() >= self.pack_target {
                        self.flush_pack()?;
                    }
                }
                (None, Some(data)) => {
                    let with_it = BUNDLE_HEADER_LEN
                        + (self.bundle.len() + 1) * BUNDLE_MEMBER_LEN
                        + self.bundle_raw
                        + data.len();
                    if with_it > BUNDLE_TARGET {
                        self.close_bundle()?;
                    }
                    self.bundle_raw += data.len();
                    self.bundle.push((done.id, data));
                    if self.bundle.len() >= MAX_BUNDLE_CHUNKS {
                        self.close_bundle()?;
                    }
                }
                (None, None) => unreachable!("workers return new chunks encoded or bundled"),
            }
        }
        self.take_bundles(false)
    }

    /// Hands the waiting small chunks to a worker to compress as one bundle.
    fn close_bundle(&mut self) -> Result<(), WriterError> {
        if self.bundle.is_empty() {
            return Ok(());
        }
        let members = std::mem::take(&mut self.bundle);
        self.bundle_raw = 0;
        let (tx, rx) = bounded(1);
        self.jobs
            .as_ref()
            .expect("jobs open while writing")
            .send(Job::Bundle { members, reply: tx })
            .map_err(|_| WriterError::WorkerGone)?;
        self.bundles.push_back(rx);
        Ok(())
    }

    /// Packs compressed bundles: those ready, and with `all` (or when too
    /// many are in flight, which bounds memory) waits for them.
    fn take_bundles(&mut self, all: bool) -> Result<(), WriterError> {
        while let Some(rx) = self.bundles.front() {
            let wait = all || self.bundles.len() > self.bundles_in_flight;
            let bundle = if wait {
                rx.recv().map_err(|_| WriterError::WorkerGone)?
            } else {
                match rx.try_recv() {
                    Ok(b) => b,
                    Err(crossbeam_channel::TryRecvError::Empty) => return Ok(()),
                    Err(_) => return Err(WriterError::WorkerGone),
                }
            };
            self.bundles.pop_front();
            self.stats.stored_bytes += bundle.data.len() as u64;
            self.pack.add_bundle(bundle);
            if self.pack.len() >= self.pack_target {
                self.flush_pack()?;
            }
        }
        Ok(())
    }

    fn flush_pack(&mut self) -> Result<(), WriterError> {
        if self.pack.is_empty() {
            return Ok(());
        }
        self.check_failed()?;
        let next = PackBuilder::with_capacity(pack_capacity(self.pack_target));
        let (bytes, blobs) = std::mem::replace(&mut self.pack, next).finish(&self.shared.crypto);
        let seq = self.placing.pack_finished(&blobs);
        self.uploads
            .as_ref()
            .expect("uploads open while writing")
            .send((seq, bytes, blobs))
            .map_err(|_| WriterError::WorkerGone)
    }

    /// Waits for every chunk and upload, then writes the last index object.
    fn finish(mut self) -> Result<Written, BackupError> {
        let result = (|| {
            while !self.pending.is_empty() {
                self.take_one()?;
            }
            self.close_bundle()?;
            self.take_bundles(true)?;
            self.flush_pack()?;
            Ok::<(), WriterError>(())
        })();
        self.stop_threads();
        if let Some(e) = self.shared.take_failure() {
            return Err(e.into());
        }
        result.map_err(|e| match e {
            WriterError::Store(s) => BackupError::Store(s),
            other => BackupError::Source(SourceError::Sink(other.into())),
        })?;
        let rest = std::mem::take(&mut *self.shared.unindexed.lock().expect("index lock"));
        self.shared.write_index(rest)?;
        Ok(Written {
            entries: std::mem::take(&mut self.entries),
            lists: SpilledLists {
                spill: std::mem::replace(&mut self.spill, ChunkSpill::new(1)),
                spans: std::mem::take(&mut self.spans),
            },
            places: std::mem::take(&mut self.places),
            placing: std::mem::take(&mut self.placing),
            pack_ids: std::mem::take(&mut *self.shared.pack_ids.lock().expect("packs lock")),
            stats: self.stats,
            reused_packs: std::mem::take(&mut self.reused_packs),
            bytes_read: self.bytes_read,
            pages_unchanged: self.pages_unchanged,
            packs_written: std::mem::take(
                &mut *self.shared.packs_written.lock().expect("packs lock"),
            ),
        })
    }

    /// Stops after a source failure; what was uploaded stays unreferenced.
    fn abort(mut self) {
        self.pending.clear();
        self.bundle.clear();
        self.bundles.clear();
        self.pack = PackBuilder::new();
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.uploads = None;
        for u in self.uploaders.drain(..) {
            let _ = u.join();
        }
    }

    fn push_entry(&mut self, meta: &EntryMeta, kind: EntryKind) -> usize {
        self.entries.push(ManifestEntry {
            path: meta.path.clone(),
            kind,
            mode: meta.mode,
            mtime_ns: meta.mtime_ns,
            size: None,
            sha256: None,
            chunks: Vec::new(),
            target: None,
            stamp: meta.stamp,
            file_id: None,
            at: None,
        });
        self.places.push(FilePlaces::default());
        self.spans.push(Span::default());
        self.entries.len() - 1
    }

    /// The chunk ids of a previous snapshot's file: in its entry, or read
    /// from its chunk lists; `None` when those cannot be read. With them,
    /// where that snapshot placed each ([`Writer::prev_places`]).
    fn prev_chunks(&mut self, prev: &mut Prev) -> Option<(Vec<ChunkId>, PrevPlaces)> {
        if let Some(lists) = &mut self.prev_lists {
            if prev.entry.chunks.is_empty() && !lists.take(prev.file, &mut prev.entry) {
                return None;
            }
        }
        let (chunks, at) = (std::mem::take(&mut prev.entry.chunks), prev.entry.at.take());
        let places = self.prev_places(&chunks, at.as_deref());
        Some((chunks, places))
    }

    /// Where each of a previous snapshot's `chunks` is stored, for reuse:
    /// the place that snapshot gave it (`at`, manifest version 6 on), where
    /// no index object disputes the chunk and an index object describes
    /// the pack (so no prune record names it); `None` for any other chunk.
    /// No lookup in the index per chunk, which at a few hundred million
    /// chunks is a read of the index's table on disk each. The places were
    /// checked against the chunks and packs as the entry or its list was
    /// read. Without places (an older manifest), where the index agrees
    /// each chunk is.
    fn prev_places(&self, chunks: &[ChunkId], at: Option<&[Placement]>) -> PrevPlaces {
        let placed = at
            .zip(self.prev_packs.as_deref())
            .and_then(|(at, packs)| super::manifest::placements(chunks, at, packs));
        let Some(placed) = placed else {
            return self.index.agreed_all(chunks);
        };
        let mut pack_known: Option<(PackId, bool)> = None;
        placed
            .map(|loc| {
                let known = match pack_known {
                    Some((p, known)) if p == loc.pack => known,
                    _ => {
                        let known = self.index.packs().contains_key(&loc.pack);
                        pack_known = Some((loc.pack, known));
                        known
                    }
                };
                (known && !self.index.is_disputed(&loc.blob.id)).then_some(loc)
            })
            .collect()
    }

    /// Reuses the previous snapshot's entry for a file whose stamp is
    /// unchanged and whose every chunk is where the index agrees it is.
    /// Its chunks go through the queue like any other's, in their turn.
    fn reuse_unchanged(&mut self, meta: &EntryMeta) -> Result<bool, WriterError> {
        let Some(stamp) = meta.stamp else {
            return Ok(false);
        };
        let Some(mut prev) = self.unchanged.remove(&meta.path) else {
            return Ok(false);
        };
        if prev.entry.stamp != Some(stamp) {
            // Changed: its pages may still be compared by LSN.
            if prev.entry.file_id.is_some() {
                self.paged.insert(prev.entry.path.clone(), prev);
            }
            return Ok(false);
        }
        let Some((chunks, places)) = self.prev_chunks(&mut prev) else {
            return Ok(false);
        };
        let at: Option<Vec<ChunkLocation>> = places.into_iter().collect();
        let Some(at) = at else {
            // A chunk in dispute, or in no index: read again, its pages
            // compared by LSN where it has them.
            if prev.entry.file_id.is_some() {
                prev.entry.chunks = chunks;
                self.paged.insert(prev.entry.path.clone(), prev);
            }
            return Ok(false);
        };
        let size = prev.entry.size.unwrap_or_default();
        self.stats.files += 1;
        self.stats.total_bytes += size;
        self.progress.inc(size);
        // Placed anew: the previous entry's places are numbered by its own
        // manifest's packs.
        self.entries.push(ManifestEntry {
            mode: meta.mode,
            mtime_ns: meta.mtime_ns,
            at: None,
            chunks: Vec::new(),
            ..prev.entry
        });
        self.places.push(FilePlaces::default());
        self.spans.push(Span::default());
        let entry = self.entries.len() - 1;
        for (c, loc) in chunks.into_iter().zip(at) {
            self.queue_stored(entry, c, loc)?;
        }
        Ok(true)
    }

    /// Writes a file; with `pages`, a file of pages (see [`Pages`]): where
    /// it is cut into pages it is recorded with its identity, and each page
    /// whose LSN shows no change since the previous snapshot began takes
    /// its chunk from that snapshot's entry for the same file, unhashed.
    fn write_file(
        &mut self,
        meta: &EntryMeta,
        pages: Option<&Pages>,
        content: &mut dyn Read,
    ) -> Result<(), WriterError> {
        self.check_failed()?;
        let pages = pages.filter(|_| self.chunking == Chunking::Fixed { size: PAGE as u32 });
        if self.reuse_unchanged(meta)? {
            if let Some(pages) = pages {
                self.entries.last_mut().expect("just reused").file_id = Some(pages.id);
            }
            return Ok(());
        }
        let entry = self.push_entry(meta, EntryKind::File);
        if let Chunking::Fixed { size } = self.chunking {
            let prev = pages.and_then(|pages| {
                self.entries[entry].file_id = Some(pages.id);
                self.previous_pages(&meta.path, pages)
            });
            return self.write_fixed(meta, entry, size as usize, content, prev);
        }
        let (min, avg, max) = (
            self.chunker.min_size,
            self.chunker.avg_size,
            self.chunker.max_size,
        );
        let mut buf = std::mem::take(&mut self.buf);
        let mut size = 0u64;
        let mut len = 0usize;
        let mut eof = false;
        let result = (|| loop {
            while !eof && len < buf.len() {
                match content.read(&mut buf[len..]) {
                    Ok(0) => eof = true,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(WriterError::Read {
                            path: meta.path.clone(),
                            source,
                        })
                    }
                }
            }
            if len == 0 {
                return Ok(());
            }
            let cdc = FastCDC::new(&buf[..len], min, avg, max);
            let mut pos = 0;
            while pos < len {
                let remaining = len - pos;
                // Short of a maximum chunk, a cut point may still move: read more.
                if !eof && remaining < max as usize {
                    break;
                }
                let end = cdc.cut(pos, remaining).1;
                let chunk = buf[pos..end].to_vec();
                size += chunk.len() as u64;
                self.submit(entry, chunk)?;
                pos = end;
            }
            buf.copy_within(pos..len, 0);
            len -= pos;
            if eof && len == 0 {
                return Ok(());
            }
        })();
        self.buf = buf;
        self.end_file(entry, size, result)
    }

    /// The previous snapshot's chunks of the file of pages at `path`, with
    /// the LSN below which a page counts as unchanged: only when that
    /// snapshot is comparable (`pages.unchanged_below`), held the same file
    /// (same [`FileId`]), and recorded it one chunk per page.
    fn previous_pages(&mut self, path: &str, pages: &Pages) -> Option<(u64, PrevPages)> {
        let below = pages.unchanged_below?;
        // Under `paged`, or still under `unchanged` when the file has no
        // stamp this time (see `reuse_unchanged`).
        let mut prev = self
            .paged
            .remove(path)
            .or_else(|| self.unchanged.remove(path))?;
        if prev.entry.file_id != Some(pages.id) {
            return None;
        }
        let (chunks, at) = self.prev_chunks(&mut prev)?;
        let same = prev.entry.size == Some(chunks.len() as u64 * PAGE as u64);
        if !same {
            return None;
        }
        Some((below, chunks.into_iter().zip(at).collect()))
    }

    /// Fixed-size chunks are read straight into their own buffers: no copy.
    /// With `prev` (an LSN and the previous snapshot's chunks of the same
    /// file of pages), a page unchanged by that LSN takes its chunk from
    /// there ([`unchanged_page`]).
    fn write_fixed(
        &mut self,
        meta: &EntryMeta,
        entry: usize,
        n: usize,
        content: &mut dyn Read,
        prev: Option<(u64, PrevPages)>,
    ) -> Result<(), WriterError> {
        let mut size = 0u64;
        let mut nth = 0usize;
        let result = (|| loop {
            let mut chunk = Vec::with_capacity(n);
            let mut limited = (&mut *content).take(n as u64);
            match limited.read_to_end(&mut chunk) {
                Ok(_) => {}
                Err(source) => {
                    return Err(WriterError::Read {
                        path: meta.path.clone(),
                        source,
                    })
                }
            }
            if chunk.is_empty() {
                return Ok(());
            }
            let last = chunk.len() < n;
            size += chunk.len() as u64;
            let known = prev.as_ref().and_then(|(below, chunks)| {
                let (id, at) = chunks.get(nth)?;
                unchanged_page(&chunk, *below)?;
                // Only where the index agrees on its place: a chunk in
                // dispute is hashed and looked up as any other.
                Some((*id, (*at)?))
            });
            nth += 1;
            match known {
                Some((id, at)) => self.submit_known(entry, id, chunk.len(), at)?,
                None => self.submit(entry, chunk)?,
            }
            if last {
                return Ok(());
            }
        })();
        self.end_file(entry, size, result)
    }

    /// Completes the file's entry. No whole-file hash (manifest version 3):
    /// its chunk ids, each checked on restore, and its size prove the file.
    fn end_file(
        &mut self,
        entry: usize,
        size: u64,
        result: Result<(), WriterError>,
    ) -> Result<(), WriterError> {
        self.bytes_read += size;
        result?;
        let e = &mut self.entries[entry];
        e.size = Some(size);
        self.stats.files += 1;
        self.stats.total_bytes += size;
        Ok(())
    }
}

impl EntrySink for Writer {
    fn dir(&mut self, meta: &EntryMeta) -> Result<(), SinkError> {
        self.push_entry(meta, EntryKind::Dir);
        self.stats.dirs += 1;
        Ok(())
    }

    fn symlink(&mut self, meta: &EntryMeta, target: &str) -> Result<(), SinkError> {
        let i = self.push_entry(meta, EntryKind::Symlink);
        self.entries[i].target = Some(target.to_string());
        self.stats.symlinks += 1;
        Ok(())
    }

    fn file(&mut self, meta: &EntryMeta, content: &mut dyn Read) -> Result<(), SinkError> {
        self.write_file(meta, None, content).map_err(Into::into)
    }

    fn paged_file(
        &mut self,
        meta: &EntryMeta,
        pages: &Pages,
        content: &mut dyn Read,
    ) -> Result<(), SinkError> {
        self.write_file(meta, Some(pages), content)
            .map_err(Into::into)
    }
}

/// The size of a page of a file of pages (PostgreSQL's block size).
const PAGE: usize = 8192;

/// `Some` when `page` (8 KiB) shows no WAL-logged change at or after LSN
/// `below`: its header's LSN is not 0 and is below it, and the header is a
/// sane PostgreSQL page header (a page that is not one, or is all zeros, or
/// was torn so that its header is garbage, is hashed as any other).
fn unchanged_page(page: &[u8], below: u64) -> Option<()> {
    // The server wrote the page on this host, in its byte order.
    let u16_at = |at: usize| u16::from_ne_bytes([page[at], page[at + 1]]);
    let u32_at = |at: usize| u32::from_ne_bytes(page[at..at + 4].try_into().expect("4 bytes"));
    if page.len() != PAGE {
        return None;
    }
    // pd_lsn: xlogid (the high half), then xrecoff.
    let lsn = (u64::from(u32_at(0)) << 32) | u64::from(u32_at(4));
    // pd_lower, pd_upper, pd_special, pd_pagesize_version.
    let (lower, upper, special) = (u16_at(12), u16_at(14), u16_at(16));
    let size_version = u16_at(18);
    let sane = size_version == PAGE as u16 | 4
        && lower >= 24
        && lower <= upper
        && upper <= special
        && special as usize <= PAGE;
    (lsn != 0 && lsn < below && sane).then_some(())
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8 KiB page with PostgreSQL's header: LSN, pd_lower/upper/special.
    fn page(lsn: u64, lower: u16, upper: u16, special: u16) -> Vec<u8> {
        let mut p = vec![0u8; PAGE];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_ne_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_ne_bytes());
        p[12..14].copy_from_slice(&lower.to_ne_bytes());
        p[14..16].copy_from_slice(&upper.to_ne_bytes());
        p[16..18].copy_from_slice(&special.to_ne_bytes());
        p[18..20].copy_from_slice(&(PAGE as u16 | 4).to_ne_bytes());
        p[100] = 0xAB;
        p
    }

    #[test]
    fn only_a_sane_page_with_an_lsn_below_the_mark_counts_as_unchanged() {
        let below = 0x1_0000_2000;
        assert!(unchanged_page(&page(0x1_0000_1FFF, 40, 8000, 8192), below).is_some());
        assert!(unchanged_page(&page(0x0_0000_0028, 24, 8192, 8192), below).is_some());
        // Changed at or after the mark.
        assert!(unchanged_page(&page(below, 40, 8000, 8192), below).is_none());
        assert!(unchanged_page(&page(below + 1, 40, 8000, 8192), below).is_none());
        // Never WAL-logged (a new or unlogged page), or all zeros.
        assert!(unchanged_page(&page(0, 40, 8000, 8192), below).is_none());
        assert!(unchanged_page(&vec![0u8; PAGE], below).is_none());
        // Not a page header: bounds out of order or past the page.
        assert!(unchanged_page(&page(0x28, 8000, 40, 8192), below).is_none());
        assert!(unchanged_page(&page(0x28, 20, 8000, 8192), below).is_none());
        assert!(unchanged_page(&page(0x28, 40, 8000, 9000), below).is_none());
        let mut other_size = page(0x28, 40, 8000, 8192);
        other_size[18..20].copy_from_slice(&(4096u16 | 4).to_ne_bytes());
        assert!(unchanged_page(&other_size, below).is_none());
        // A short last piece is never a page.
        assert!(unchanged_page(&page(0x28, 40, 8000, 8192)[..4096], below).is_none());
    }
}
