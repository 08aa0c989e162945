//! Reading snapshot content back: chunks fetched with ranged reads and decoded
//! in parallel, handed over in stream order, and each file checked against
//! its recorded size (and, for a manifest version 2 file, its whole-file
//! SHA-256, on a thread of its own) before it is declared complete.
//!
//! Each chunk is proven on its own. In an encrypted repository every blob is
//! opened under its chunk id as associated data (a blob that was altered, or
//! moved from another chunk, fails its tag and is named), and the manifest
//! listing the chunks is authenticated too. Under `encryption: none` each
//! chunk of a file without a whole-file hash (manifest version 3) is hashed
//! against its id by the decode workers. A version 2 file there is checked
//! by its whole-file hash instead: when it does not match, the file's
//! chunks are read again with every chunk hash checked, to name the pack at
//! fault. `verify` checks every chunk against its id always, and a version
//! 2 file's whole hash too.
//!
//! A chunk the index objects disagree about (several candidate locations,
//! see [`Index::candidates`]) is always checked against its id, and when its
//! blob fails, each other candidate is read in turn until one passes; each
//! bad location is logged with the index object that gave it. Index objects
//! seen to give a bad location are tried last from then on.
//!
//! A file entry of a version 6 manifest says where its chunks are (`at`):
//! those places are read without the index, which is loaded only when one
//! of them fails its check (then the index's other places for the chunk
//! are tried, as for a disputed chunk) or an entry has none.

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};

use super::hasher::StreamHasher;
use super::index::{ChunkLocation, SourceId};
use super::manifest::{ManifestEntry, FROM_MANIFEST};
use super::pack::{decode_blob_checked, BlobError, BundleCache, ShareBudget};
use super::source::EntryKind;
use super::{pack_key, Index};
use crate::ids::{ChunkId, Hash256, PackId};
use crate::store::{Store, StoreError};

/// Reads are coalesced into runs of adjacent blobs of up to this many stored
/// bytes, and this many bytes once decoded (which bounds memory in flight).
const MAX_RUN: u64 = 4 * 1024 * 1024;
const MAX_RUN_RAW: u64 = 4 * 1024 * 1024;
/// A run's chunks come without a copy as views into their decoded bundles,
/// which they keep alive: up to this many bytes of bundles per run.
const MAX_RUN_SHARED: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A chunk-list object (manifest version 7) read while restoring.
    #[error(transparent)]
    Lists(Box<super::RepoError>),
    #[error(
        "chunk {chunk} of {path} is in no index of the repository; the snapshot cannot be restored"
    )]
    MissingChunk { chunk: ChunkId, path: String },
    #[error("unable to read {path}: {source}")]
    Fetch {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("pack {key} is corrupt: chunk {chunk} of {path}: {why}")]
    Blob {
        key: String,
        chunk: ChunkId,
        path: String,
        why: Box<BlobError>,
    },
    #[error("{path} does not match its snapshot: SHA-256 of the rebuilt file is {got}, the manifest says {expected}")]
    StreamHash {
        path: String,
        got: Hash256,
        expected: Hash256,
    },
    #[error("{path} does not match its snapshot: its chunks hold {got} bytes, the manifest says {expected}")]
    Size {
        path: String,
        got: u64,
        expected: u64,
    },
    #[error("chunk {chunk} of {path} passes its check at none of its {count} candidate locations: {tried}; the snapshot cannot be restored (`holdfast repair index` rebuilds the index from the packs)")]
    NoGoodLocation {
        chunk: ChunkId,
        path: String,
        count: usize,
        tried: String,
    },
    #[error("chunk {chunk} of {path}: the chunk index, needed to find it, cannot be read: {why}")]
    NoIndex {
        chunk: ChunkId,
        path: String,
        why: String,
    },
    #[error("{path}: {source}")]
    Sink {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Receives file contents in order.
pub trait ReadSink {
    fn start(&mut self, entry: &ManifestEntry) -> std::io::Result<()>;
    fn data(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// A run of a file's chunks, in order: by default a [`ReadSink::data`]
    /// each; a sink writing to a file takes them in one call.
    fn data_run(&mut self, chunks: &[Bytes]) -> std::io::Result<()> {
        for c in chunks {
            self.data(c)?;
        }
        Ok(())
    }
    /// Called only after the file's whole-content hash matched.
    fn end(&mut self, entry: &ManifestEntry) -> std::io::Result<()>;
}

struct Run {
    path: Arc<str>,
    /// Every chunk checked against its id (else only disputed ones).
    check: bool,
    pack: PackId,
    offset: u64,
    len: u64,
    blobs: Vec<ChunkLocation>,
    reply: Sender<Result<Vec<Bytes>, ReadError>>,
}

enum Item {
    Start(usize),
    Run(Receiver<Result<Vec<Bytes>, ReadError>>),
    End(usize),
    Failed(ReadError),
}

type IndexLoader = Box<dyn FnOnce() -> Result<Index, String> + Send>;

/// The chunk index a reader finds chunks through: loaded up front, or only
/// once a chunk needs it (a version 6 manifest places its own chunks).
pub struct LazyIndex {
    cell: std::sync::OnceLock<Result<Arc<Index>, String>>,
    load: std::sync::Mutex<Option<IndexLoader>>,
}

impl LazyIndex {
    pub fn loaded(index: Arc<Index>) -> Self {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(Ok(index));
        LazyIndex {
            cell,
            load: Default::default(),
        }
    }

    /// Loaded by `load` on first use (on the reader's own threads, never an
    /// async worker).
    pub fn on_demand(load: impl FnOnce() -> Result<Index, String> + Send + 'static) -> Self {
        LazyIndex {
            cell: Default::default(),
            load: std::sync::Mutex::new(Some(Box::new(load))),
        }
    }

    /// The index, loading it if it was not; why not if it cannot be read.
    pub fn get(&self) -> Result<&Index, &str> {
        self.cell
            .get_or_init(|| {
                let load = self.load.lock().expect("index loader lock").take();
                match load {
                    Some(load) => {
                        tracing::info!("reading the chunk index: a chunk the snapshot places is not where it says, or a file has no places");
                        load().map(Arc::new)
                    }
                    None => Err("no index to load".into()),
                }
            })
            .as_ref()
            .map(|i| &**i)
            .map_err(|e| e.as_str())
    }

    /// The index if it is loaded already.
    fn peek(&self) -> Option<&Index> {
        self.cell.get().and_then(|r| r.as_ref().ok()).map(|i| &**i)
    }

    /// Whether `loc`'s chunk has other places to try when `loc` fails:
    /// one the snapshot's manifest gave, or one the index disputes.
    fn fallible(&self, loc: &ChunkLocation) -> bool {
        loc.source == FROM_MANIFEST || self.peek().is_some_and(|i| i.is_disputed(&loc.blob.id))
    }

    /// Who gave `loc`: an index object, or the snapshot's manifest.
    fn named(&self, loc: &ChunkLocation) -> String {
        match self.peek() {
            _ if loc.source == FROM_MANIFEST => "the snapshot's manifest".to_string(),
            Some(i) => i.source(loc.source).to_string(),
            None => "an index object".to_string(),
        }
    }
}

/// Pack sizes, for reading whole windows: from the index when it is
/// loaded, else asked of the store once per pack.
#[derive(Default)]
struct PackSizes(std::sync::Mutex<std::collections::HashMap<PackId, Option<u64>>>);

impl PackSizes {
    fn size(
        &self,
        store: &dyn Store,
        runtime: &tokio::runtime::Handle,
        index: &LazyIndex,
        pack: &PackId,
    ) -> Option<u64> {
        if let Some(size) = index.peek().and_then(|i| i.packs().get(pack)) {
            return Some(*size);
        }
        if let Some(known) = self.0.lock().expect("pack sizes lock").get(pack) {
            return *known;
        }
        let size = runtime
            .block_on(store.head(&pack_key(pack)))
            .ok()
            .map(|i| i.size);
        self.0.lock().expect("pack sizes lock").insert(*pack, size);
        size
    }
}

/// A pool of fetch-and-decode threads bound to one store and index.
pub struct ChunkReader {
    store: Arc<dyn Store>,
    crypto: super::Crypto,
    index: Arc<LazyIndex>,
    /// The manifest's packs, which its entries' places number.
    packs: Arc<[PackId]>,
    sizes: Arc<PackSizes>,
    runtime: tokio::runtime::Handle,
    threads: usize,
    check_chunks: bool,
    /// Hashes whole files even where each chunk's tag already proves it
    /// (verify: the recorded file hash must agree with the chunks).
    hash_files: bool,
    /// Remote stores read whole aligned windows of a pack, shared between
    /// runs: many small files then cost one request, not one each.
    windows: Option<Arc<WindowCache>>,
    suspects: Arc<Suspects>,
    /// Decoded bundles, shared by the threads: the chunks of one bundle
    /// (pages of one file, or several small files) cost one decompression.
    bundles: Arc<BundleCache>,
}

/// Index objects seen to give a location whose blob failed its check, and
/// the (index object, pack) pairs already warned about.
#[derive(Default)]
struct Suspects {
    sources: std::sync::RwLock<std::collections::HashSet<SourceId>>,
    warned: std::sync::Mutex<std::collections::HashSet<(SourceId, PackId)>>,
}

impl Suspects {
    fn is_suspect(&self, s: SourceId) -> bool {
        self.sources.read().expect("suspects lock").contains(&s)
    }

    fn bad(&self, index: &LazyIndex, loc: &ChunkLocation, path: &str, why: &str) {
        self.sources
            .write()
            .expect("suspects lock")
            .insert(loc.source);
        if self
            .warned
            .lock()
            .expect("suspects lock")
            .insert((loc.source, loc.pack))
        {
            let object = index.named(loc);
            let by = if loc.source == FROM_MANIFEST {
                object.clone()
            } else {
                format!("index object {object}")
            };
            tracing::warn!(
                object = %object,
                pack = %pack_key(&loc.pack),
                "{by} gives chunk {} of {path} a location in pack {} (offset {}) that fails its check ({why}); trying the chunk's other locations (further bad locations it gives in this pack are not logged; run `holdfast verify`)",
                loc.blob.id,
                pack_key(&loc.pack),
                loc.blob.offset,
            );
        }
    }

    /// The candidate to plan a read from: the first one from an index
    /// object not yet seen to be wrong.
    fn pick(&self, index: &Index, chunk: &ChunkId) -> Option<ChunkLocation> {
        let mut all = index.candidates(chunk);
        let first = all.next()?;
        if !self.is_suspect(first.source) {
            return Some(first);
        }
        Some(
            index
                .candidates(chunk)
                .find(|l| !self.is_suspect(l.source))
                .unwrap_or(first),
        )
    }
}

type WindowSlot = Arc<std::sync::OnceLock<Option<bytes::Bytes>>>;
type WindowKey = (PackId, u64);

/// Pack windows read from a remote store, kept until `capacity` newer ones
/// have been read. Concurrent readers of one window wait for one request.
struct WindowCache {
    size: u64,
    capacity: usize,
    slots: std::sync::Mutex<WindowSlots>,
}

#[derive(Default)]
struct WindowSlots {
    map: std::collections::HashMap<WindowKey, WindowSlot>,
    order: std::collections::VecDeque<WindowKey>,
}

impl WindowCache {
    /// Window `w` of `pack` (`pack_size` bytes long), read once; `None` if the
    /// read failed (the caller then reads directly, for a precise error).
    fn window(
        &self,
        store: &dyn Store,
        runtime: &tokio::runtime::Handle,
        pack: PackId,
        pack_size: u64,
        w: u64,
    ) -> Option<bytes::Bytes> {
        let slot = {
            let mut guard = self.slots.lock().expect("window cache lock");
            let WindowSlots { map, order } = &mut *guard;
            if let Some(slot) = map.get(&(pack, w)) {
                slot.clone()
            } else {
                let slot = WindowSlot::default();
                map.insert((pack, w), slot.clone());
                order.push_back((pack, w));
                while order.len() > self.capacity {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
                slot
            }
        };
        slot.get_or_init(|| {
            let start = w * self.size;
            let len = self.size.min(pack_size.saturating_sub(start));
            runtime
                .block_on(store.get_range(&pack_key(&pack), start, len))
                .ok()
        })
        .clone()
    }
}

impl ChunkReader {
    pub fn new(
        store: Arc<dyn Store>,
        crypto: super::Crypto,
        index: LazyIndex,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        // Local reads are CPU-bound (decode); remote ones wait on round trips.
        let remote = store.capabilities().parallel_reads;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
            .max(remote);
        let windows = (remote > 0).then(|| {
            Arc::new(WindowCache {
                size: MAX_RUN,
                capacity: threads + 2,
                slots: Default::default(),
            })
        });
        ChunkReader {
            store,
            crypto,
            index: Arc::new(index),
            packs: Arc::from(Vec::new()),
            sizes: Default::default(),
            runtime,
            threads,
            check_chunks: false,
            hash_files: false,
            windows,
            suspects: Default::default(),
            bundles: Arc::new(BundleCache::new(2 * threads + 2)),
        }
    }

    /// Reads the places of entries of a version 6 manifest naming `packs`.
    pub fn placing_by(mut self, packs: &[PackId]) -> Self {
        self.packs = Arc::from(packs);
        self
    }

    /// For `lanes` reads at once, each with its share of the decode
    /// threads (at least one).
    pub fn for_lanes(mut self, lanes: usize) -> Self {
        self.threads = (self.threads / lanes.max(1)).max(1);
        self
    }

    /// Also checks every chunk against its id as it is decoded.
    pub fn checking_chunks(mut self) -> Self {
        self.check_chunks = true;
        self
    }

    /// Also checks every file's whole hash, in an encrypted repository too
    /// (where a restore trusts each chunk's tag), without checking each chunk
    /// against its id unless the file's hash disagrees: for a caller that
    /// checked the chunks already.
    pub fn hashing_files(mut self) -> Self {
        self.hash_files = true;
        self
    }

    /// Reads every file entry of `entries`, in order, into `sink`; when a file
    /// does not match its hash, names the chunk and pack at fault if it can.
    pub fn read_files(
        &self,
        entries: &[ManifestEntry],
        sink: &mut dyn ReadSink,
    ) -> Result<(), ReadError> {
        match self.read_files_once(entries, sink, self.check_chunks) {
            Err(ReadError::StreamHash {
                path,
                got,
                expected,
            }) if !self.check_chunks => {
                let entry: Vec<ManifestEntry> =
                    entries.iter().filter(|e| e.path == path).cloned().collect();
                self.read_files_once(&entry, &mut Discard, true)?;
                Err(ReadError::StreamHash {
                    path,
                    got,
                    expected,
                })
            }
            other => other,
        }
    }

    /// Reads every file entry of `entries`, in order, into `sink`. Blocking:
    /// call from a blocking thread.
    fn read_files_once(
        &self,
        entries: &[ManifestEntry],
        sink: &mut dyn ReadSink,
        check_chunks: bool,
    ) -> Result<(), ReadError> {
        let (job_tx, job_rx) = bounded::<Run>(self.threads);
        // Decoded runs waiting for their turn are the reader's memory: keep
        // them to a couple per thread.
        let (item_tx, item_rx) = bounded::<Item>(self.threads + 2);
        std::thread::scope(|scope| {
            for _ in 0..self.threads {
                let rx = job_rx.clone();
                let store = self.store.clone();
                let runtime = self.runtime.clone();
                let windows = self.windows.clone();
                let index = self.index.clone();
                let sizes = self.sizes.clone();
                let crypto = self.crypto.clone();
                let suspects = self.suspects.clone();
                let bundles = self.bundles.clone();
                scope.spawn(move || {
                    for run in rx {
                        let result = fetch_run(
                            &*store,
                            &crypto,
                            &runtime,
                            &run,
                            &index,
                            &suspects,
                            windows.as_deref().map(|w| (w, &*sizes)),
                            &bundles,
                        );
                        let _ = run.reply.send(result);
                    }
                });
            }
            drop(job_rx);
            let index = &*self.index;
            let packs = &*self.packs;
            let suspects = &*self.suspects;
            // A file without a whole-file hash (manifest version 3) is
            // proven chunk by chunk: in an encrypted repository by each
            // blob's tag, otherwise by hashing each chunk against its id.
            let unhashed_check = check_chunks || !self.crypto.is_encrypted();
            scope.spawn(move || {
                plan_runs(
                    entries,
                    (index, packs),
                    suspects,
                    (check_chunks, unhashed_check),
                    &job_tx,
                    &item_tx,
                )
            });
            // Taking the receiver by value drops it on an early error, which
            // stops the planner and, through it, the workers.
            let file_hash = check_chunks || self.hash_files || !self.crypto.is_encrypted();
            consume(entries, item_rx, sink, file_hash)
        })
    }
}

/// Walks the entries and queues runs of adjacent blobs, in order. `check`:
/// whether to check every chunk against its id, for a file with a
/// whole-file hash and for one without.
fn plan_runs(
    entries: &[ManifestEntry],
    (index, packs): (&LazyIndex, &[PackId]),
    suspects: &Suspects,
    (hashed_check, unhashed_check): (bool, bool),
    jobs: &Sender<Run>,
    items: &Sender<Item>,
) {
    for (i, entry) in entries.iter().enumerate() {
        if entry.kind != EntryKind::File {
            continue;
        }
        if items.send(Item::Start(i)).is_err() {
            return;
        }
        let path: Arc<str> = entry.path.as_str().into();
        let check = if entry.sha256.is_some() {
            hashed_check
        } else {
            unhashed_check
        };
        let mut run: Option<(PackId, u64, u64, Vec<ChunkLocation>)> = None;
        let mut run_raw = 0u64;
        let flush = |run: &mut Option<(PackId, u64, u64, Vec<ChunkLocation>)>| -> bool {
            let Some((pack, offset, len, blobs)) = run.take() else {
                return true;
            };
            let (tx, rx) = bounded(1);
            if items.send(Item::Run(rx)).is_err() {
                return false;
            }
            jobs.send(Run {
                path: path.clone(),
                check,
                pack,
                offset,
                len,
                blobs,
                reply: tx,
            })
            .is_ok()
        };
        // The entry's own places (manifest version 6), else the index's.
        let placed = entry.placed(packs);
        let indexed = match (&placed, entry.chunks.first()) {
            (None, Some(first)) => match index.get() {
                Ok(index) => Some(index),
                Err(why) => {
                    let _ = items.send(Item::Failed(ReadError::NoIndex {
                        chunk: *first,
                        path: entry.path.clone(),
                        why: why.to_string(),
                    }));
                    return;
                }
            },
            _ => None,
        };
        let mut placed = placed.into_iter().flatten();
        for chunk in &entry.chunks {
            let found = match indexed {
                Some(index) => suspects.pick(index, chunk),
                None => placed.next(),
            };
            let Some(loc) = found else {
                flush(&mut run);
                let _ = items.send(Item::Failed(ReadError::MissingChunk {
                    chunk: *chunk,
                    path: entry.path.clone(),
                }));
                return;
            };
            let b = loc.blob;
            // The next chunk of the bundle the run ends with: no more bytes.
            let same_blob = matches!(&run, Some((pack, _, _, blobs))
                if *pack == loc.pack
                    && blobs.last().is_some_and(|l| l.blob.offset == b.offset && l.blob.length == b.length)
                    && run_raw + b.raw_length as u64 <= MAX_RUN_RAW);
            let extends = matches!(&run, Some((pack, offset, len, _))
                if *pack == loc.pack
                    && offset + len == b.offset
                    && len + b.length as u64 <= MAX_RUN
                    && run_raw + b.raw_length as u64 <= MAX_RUN_RAW);
            if same_blob {
                let r = run.as_mut().expect("matched Some");
                r.3.push(loc);
                run_raw += b.raw_length as u64;
            } else if extends {
                let r = run.as_mut().expect("matched Some");
                r.2 += b.length as u64;
                r.3.push(loc);
                run_raw += b.raw_length as u64;
            } else {
                if !flush(&mut run) {
                    return;
                }
                run = Some((loc.pack, b.offset, b.length as u64, vec![loc]));
                run_raw = b.raw_length as u64;
            }
        }
        if !flush(&mut run) || items.send(Item::End(i)).is_err() {
            return;
        }
    }
}

/// The run's bytes from cached windows, if every window it spans was read.
fn from_windows(
    store: &dyn Store,
    runtime: &tokio::runtime::Handle,
    run: &Run,
    (windows, sizes): (&WindowCache, &PackSizes),
    index: &LazyIndex,
) -> Option<bytes::Bytes> {
    let pack_size = sizes.size(store, runtime, index, &run.pack)?;
    let end = run.offset + run.len;
    if end > pack_size || run.len == 0 {
        return None;
    }
    let (first, last) = (run.offset / windows.size, (end - 1) / windows.size);
    if first == last {
        let w = windows.window(store, runtime, run.pack, pack_size, first)?;
        let start = (run.offset - first * windows.size) as usize;
        return w
            .get(start..start + run.len as usize)
            .map(|b| w.slice_ref(b));
    }
    let mut out = Vec::with_capacity(run.len as usize);
    for i in first..=last {
        let w = windows.window(store, runtime, run.pack, pack_size, i)?;
        let base = i * windows.size;
        let from = run.offset.max(base) - base;
        let to = end.min(base + w.len() as u64) - base;
        out.extend_from_slice(w.get(from as usize..to as usize)?);
    }
    (out.len() as u64 == run.len).then(|| bytes::Bytes::from(out))
}

#[allow(clippy::too_many_arguments)]
fn fetch_run(
    store: &dyn Store,
    crypto: &super::Crypto,
    runtime: &tokio::runtime::Handle,
    run: &Run,
    index: &LazyIndex,
    suspects: &Suspects,
    windows: Option<(&WindowCache, &PackSizes)>,
    bundles: &BundleCache,
) -> Result<Vec<Bytes>, ReadError> {
    let key = pack_key(&run.pack);
    let cached = windows.and_then(|w| from_windows(store, runtime, run, w, index));
    let bytes = match cached {
        Some(b) => b,
        None => match runtime.block_on(store.get_range(&key, run.offset, run.len)) {
            Ok(b) => b,
            Err(source) => {
                // Unreadable here; chunks known elsewhere are read there.
                let err = ReadError::Fetch {
                    path: run.path.to_string(),
                    source,
                };
                if run.blobs.iter().all(|l| index.fallible(l)) {
                    let why = err.to_string();
                    return run
                        .blobs
                        .iter()
                        .map(|l| {
                            suspects.bad(index, l, &run.path, &why);
                            fallback(store, crypto, runtime, index, suspects, &run.path, l, &why)
                                .map(Bytes::from)
                        })
                        .collect();
                }
                return Err(err);
            }
        },
    };
    let mut share = ShareBudget::new(MAX_RUN_SHARED);
    run.blobs
        .iter()
        .map(|loc| {
            let b = &loc.blob;
            // The run and its blobs come from the index, whose entries were
            // checked against their pack's size; still, a blob that is not
            // inside the bytes read is a named error, never a panic.
            let start = b.offset.checked_sub(run.offset).map(|s| s as usize);
            let data = start.and_then(|s| bytes.get(s..s.checked_add(b.length as usize)?));
            let disputed = index.peek().is_some_and(|i| i.is_disputed(&b.id));
            let decoded = match data {
                Some(data) => bundles.decode(
                    &loc.pack,
                    b,
                    data,
                    run.check || disputed,
                    crypto,
                    &mut share,
                ),
                None => Err(BlobError::Length {
                    got: bytes.len(),
                    expected: (b.offset.saturating_sub(run.offset) + b.length as u64) as usize,
                }),
            };
            match decoded {
                Ok(raw) => Ok(raw),
                Err(why) if disputed || loc.source == FROM_MANIFEST => {
                    let why = why.to_string();
                    suspects.bad(index, loc, &run.path, &why);
                    fallback(
                        store, crypto, runtime, index, suspects, &run.path, loc, &why,
                    )
                    .map(Bytes::from)
                }
                Err(why) => Err(ReadError::Blob {
                    key: key.clone(),
                    chunk: b.id,
                    path: run.path.to_string(),
                    why: Box::new(why),
                }),
            }
        })
        .collect()
}

/// Reads `failed`'s chunk from each of its other candidate locations in
/// turn, each checked against the chunk id, until one passes.
#[allow(clippy::too_many_arguments)]
fn fallback(
    store: &dyn Store,
    crypto: &super::Crypto,
    runtime: &tokio::runtime::Handle,
    lazy: &LazyIndex,
    suspects: &Suspects,
    path: &str,
    failed: &ChunkLocation,
    why: &str,
) -> Result<Vec<u8>, ReadError> {
    let chunk = failed.blob.id;
    let mut tried = vec![describe(lazy, failed, why)];
    let index = match lazy.get() {
        Ok(index) => index,
        Err(e) => {
            return Err(ReadError::NoGoodLocation {
                chunk,
                path: path.to_string(),
                count: 1,
                tried: format!(
                    "{}; the chunk index, which may know others, cannot be read: {e}",
                    tried[0]
                ),
            })
        }
    };
    // Candidates from index objects not yet seen wrong first.
    let mut others: Vec<ChunkLocation> = index
        .candidates(&chunk)
        .filter(|l| !l.same_place(failed))
        .collect();
    others.sort_by_key(|l| suspects.is_suspect(l.source));
    for loc in &others {
        match read_one(store, crypto, runtime, loc) {
            Ok(raw) => return Ok(raw),
            Err(why) => {
                suspects.bad(lazy, loc, path, &why);
                tried.push(describe(lazy, loc, &why));
            }
        }
    }
    Err(ReadError::NoGoodLocation {
        chunk,
        path: path.to_string(),
        count: tried.len(),
        tried: tried.join("; "),
    })
}

fn describe(index: &LazyIndex, loc: &ChunkLocation, why: &str) -> String {
    format!(
        "{} at offset {} (from {}): {why}",
        pack_key(&loc.pack),
        loc.blob.offset,
        index.named(loc)
    )
}

/// Reads one blob on its own, opens it (in an encrypted repository, under its
/// chunk id as associated data) and checks it against its chunk id.
pub(crate) fn read_one(
    store: &dyn Store,
    crypto: &super::Crypto,
    runtime: &tokio::runtime::Handle,
    loc: &ChunkLocation,
) -> Result<Vec<u8>, String> {
    let b = &loc.blob;
    let bytes = runtime
        .block_on(store.get_range(&pack_key(&loc.pack), b.offset, b.length as u64))
        .map_err(|e| e.to_string())?;
    if bytes.len() != b.length as usize {
        return Err(format!(
            "read {} bytes, the location says {}",
            bytes.len(),
            b.length
        ));
    }
    decode_blob_checked(b, &bytes, true, crypto).map_err(|e| e.to_string())
}

/// Hands the decoded runs to `sink` in order; with `file_hash`, checks each
/// file against its manifest SHA-256 before the sink's `end`.
fn consume(
    entries: &[ManifestEntry],
    items: Receiver<Item>,
    sink: &mut dyn ReadSink,
    file_hash: bool,
) -> Result<(), ReadError> {
    // A thread only where some file has a whole-file hash to compare.
    let any = entries.iter().any(|e| e.sha256.is_some());
    let hasher = (file_hash && any).then(|| StreamHasher::<Vec<Bytes>>::start(2));
    consume_items(entries, items, sink, hasher.as_ref())
}

fn consume_items(
    entries: &[ManifestEntry],
    items: Receiver<Item>,
    sink: &mut dyn ReadSink,
    hasher: Option<&StreamHasher<Vec<Bytes>>>,
) -> Result<(), ReadError> {
    let sink_err = |path: &str, source| ReadError::Sink {
        path: path.to_string(),
        source,
    };
    let mut current = "";
    // Only a file with a whole-file hash (manifest version 2) is hashed.
    let mut hashing = None;
    let mut size = 0u64;
    for item in items {
        match item {
            Item::Start(i) => {
                current = &entries[i].path;
                hashing = hasher.filter(|_| entries[i].sha256.is_some());
                size = 0;
                sink.start(&entries[i]).map_err(|e| sink_err(current, e))?;
            }
            Item::Run(rx) => {
                let chunks = Arc::new(rx.recv().expect("run planner keeps its promise")?);
                size += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
                if let Some(hasher) = hashing {
                    hasher
                        .feed(chunks.clone())
                        .expect("hasher runs while reading");
                }
                sink.data_run(&chunks).map_err(|e| sink_err(current, e))?;
            }
            Item::End(i) => {
                let entry = &entries[i];
                if let Some(hasher) = hashing.take() {
                    // Always finished, so the next file starts a new hash.
                    let got = hasher.finish().expect("hasher runs while reading");
                    if entry.sha256.is_some_and(|expected| got != expected) {
                        return Err(ReadError::StreamHash {
                            path: entry.path.clone(),
                            got,
                            expected: entry.sha256.expect("checked"),
                        });
                    }
                }
                // Each chunk proved itself; the recorded size is checked
                // too, so a chunk list cut short does not pass.
                if entry.size.is_some_and(|expected| size != expected) {
                    return Err(ReadError::Size {
                        path: entry.path.clone(),
                        got: size,
                        expected: entry.size.expect("checked"),
                    });
                }
                sink.end(entry).map_err(|e| sink_err(&entry.path, e))?;
            }
            Item::Failed(e) => return Err(e),
        }
    }
    Ok(())
}

/// A sink that keeps nothing, for reads done only to check hashes.
pub struct Discard;

impl ReadSink for Discard {
    fn start(&mut self, _: &ManifestEntry) -> std::io::Result<()> {
        Ok(())
    }
    fn data(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn end(&mut self, _: &ManifestEntry) -> std::io::Result<()> {
        Ok(())
    }
}
