//! `holdfast repair index`: rebuild the index from the packs alone.
//!
//! Every pack carries a trailer listing its blobs (chunk id, offset, length),
//! so an index object that is lost, damaged or untrustworthy can be replaced
//! without any other source. Repair reads each pack whole, checks it against
//! its name (SHA-256), reads its trailer (opened with the repository's key in
//! an encrypted repository: a trailer that fails authentication leaves its
//! pack out), checks every blob against its chunk id (opened under it), and
//! writes new index objects naming what passed, sealed deterministically so a
//! second run writes the same objects. It only ever adds
//! objects (create-only, with the plan's longest lock): old index objects stay
//! as they are, and readers then see the repaired locations among each
//! chunk's candidates (see [`super::Index::candidates`]).

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::index::{IndexFile, IndexedChunk, IndexedPack};
use super::pack::{decode_bundle, pack_id, parse_trailer, BundleCache, ShareBudget, MAX_CHUNK_LEN};
use super::{index_key, RepoError, Repository, MAX_CHUNKS_PER_INDEX, PACKS_PER_INDEX};
use crate::ids::{Hash256, IndexId, PackId};
use crate::progress::{Progress, ProgressMode};
use crate::store::{LockKind, PutOptions, Retention, StoreError};

/// Packs are read this many at a time.
const PARALLEL_PACKS: usize = 4;

#[derive(Debug, Clone)]
pub struct RepairOptions {
    /// Read and check everything, write nothing.
    pub dry_run: bool,
    /// The lock of each new index object (the plan's longest).
    pub retention: Option<Retention>,
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    pub repository: String,
    pub dry_run: bool,
    /// Packs in the listing of `packs/` (pruned ones left out).
    pub packs_listed: usize,
    /// Packs whose trailer read and whose name matched their bytes.
    pub packs_indexed: usize,
    /// Chunks named by the new index objects.
    pub chunks_indexed: u64,
    /// Blobs left out because they failed their chunk's check.
    pub chunks_skipped: u64,
    pub bytes_read: u64,
    /// The index objects written (or, with `--dry-run`, that would be).
    pub index_objects: Vec<String>,
    /// Index objects that already existed with the same bytes.
    pub index_objects_existing: usize,
    /// Packs that could not be indexed, and why.
    pub unreadable: Vec<UnreadablePack>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnreadablePack {
    pub object: String,
    pub detail: String,
}

/// The most a pack may be: a full pack, one more chunk and its trailer.
fn pack_cap(repo: &Repository) -> u64 {
    let target = repo.config().pack_target_size;
    target
        .saturating_mul(2)
        .saturating_add(2 * MAX_CHUNK_LEN as u64)
}

/// Rebuilds the index from the packs' trailers (see the module comment).
pub async fn repair_index(
    repo: &Repository,
    opts: &RepairOptions,
) -> Result<RepairReport, RepoError> {
    // Shared like a backup's: a prune, which deletes packs, cannot run meanwhile.
    let lock = if opts.dry_run {
        None
    } else {
        Some(
            repo.store()
                .try_lock(super::REPOSITORY_LOCK, LockKind::Shared)
                .await?,
        )
    };
    let result = repair_locked(repo, opts).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    result
}

async fn repair_locked(repo: &Repository, opts: &RepairOptions) -> Result<RepairReport, RepoError> {
    let pruned = repo.pruned_packs().await?;
    let mut listed = Vec::new();
    for info in repo.store().list("packs/").await? {
        let name = info.key.rsplit('/').next().unwrap_or_default();
        match name.parse::<Hash256>() {
            Ok(h) if !pruned.contains(&PackId(h)) => listed.push((info.key, PackId(h), info.size)),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(object = %info.key, "ignoring an object with an unexpected name under packs/")
            }
        }
    }
    tracing::info!(repository = %repo.url(), packs = listed.len(), dry_run = opts.dry_run, "repair index started");
    let total: u64 = listed.iter().map(|(_, _, s)| *s).sum();
    let bar = Arc::new(Progress::new("repair", Some(total), opts.progress));
    let cap = pack_cap(repo);

    let mut report = RepairReport {
        repository: repo.url(),
        dry_run: opts.dry_run,
        packs_listed: listed.len(),
        packs_indexed: 0,
        chunks_indexed: 0,
        chunks_skipped: 0,
        bytes_read: 0,
        index_objects: Vec::new(),
        index_objects_existing: 0,
        unreadable: Vec::new(),
    };
    // Every pack's entry first, then written in pack id order: the same
    // packs always give the same index objects, so a second run (or one
    // after an interrupted run) finds them present instead of adding more.
    let mut indexed: Vec<IndexedPack> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut queue = listed.into_iter();
    loop {
        while tasks.len() < PARALLEL_PACKS {
            let Some((key, id, _)) = queue.next() else {
                break;
            };
            let store = repo.store().clone();
            let crypto = repo.crypto().clone();
            let bar = bar.clone();
            tasks.spawn(async move {
                let bytes = store.get_at_most(&key, cap).await;
                let outcome = match bytes {
                    Ok(bytes) => {
                        bar.inc(bytes.len() as u64);
                        let len = bytes.len() as u64;
                        tokio::task::spawn_blocking(move || read_pack(&id, &bytes, &crypto))
                            .await
                            .expect("pack check panicked")
                            .map(|(pack, skipped)| (pack, skipped, len))
                    }
                    Err(e) => Err(format!("cannot be read: {e}")),
                };
                (key, outcome)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (key, outcome) = done.expect("pack task panicked");
        match outcome {
            Ok((pack, skipped, len)) => {
                report.bytes_read += len;
                report.packs_indexed += 1;
                report.chunks_indexed += pack.chunks.len() as u64;
                report.chunks_skipped += skipped;
                indexed.push(pack);
            }
            Err(detail) => {
                tracing::warn!(object = %key, "pack left out of the repaired index: {detail}");
                report.unreadable.push(UnreadablePack {
                    object: key,
                    detail,
                });
            }
        }
    }
    bar.finish();
    indexed.sort_by_key(|a| a.id);
    let mut batch: Vec<IndexedPack> = Vec::new();
    let mut batch_chunks = 0usize;
    for pack in indexed {
        if batch.len() >= PACKS_PER_INDEX
            || (!batch.is_empty() && batch_chunks + pack.chunks.len() > MAX_CHUNKS_PER_INDEX)
        {
            write_batch(repo, opts, std::mem::take(&mut batch), &mut report).await?;
            batch_chunks = 0;
        }
        batch_chunks += pack.chunks.len();
        batch.push(pack);
    }
    write_batch(repo, opts, batch, &mut report).await?;
    report.unreadable.sort_by(|a, b| a.object.cmp(&b.object));
    tracing::info!(
        repository = %repo.url(),
        packs_indexed = report.packs_indexed,
        chunks_indexed = report.chunks_indexed,
        unreadable = report.unreadable.len(),
        index_objects = report.index_objects.len(),
        dry_run = opts.dry_run,
        "repair index finished"
    );
    Ok(report)
}

/// Checks one pack whole: its name, its trailer, every blob. Returns the
/// pack's index entry (blobs that pass) and how many blobs failed.
fn read_pack(
    id: &PackId,
    bytes: &[u8],
    crypto: &super::Crypto,
) -> Result<(IndexedPack, u64), String> {
    let got = pack_id(bytes);
    if got != *id {
        return Err(format!(
            "its SHA-256 is {}, its name says {id} ({} bytes): not the pack its name claims",
            got.0,
            bytes.len()
        ));
    }
    let entries =
        parse_trailer(bytes, crypto).map_err(|why| format!("trailer unreadable: {why}"))?;
    let mut chunks = Vec::with_capacity(entries.len());
    let mut skipped = 0u64;
    // Trailer order keeps a bundle's entries together: one decompression each.
    let bundles = BundleCache::new(1);
    for e in entries {
        // parse_trailer checked the blob lies inside the pack; still no panic.
        let end = e.offset.saturating_add(e.length as u64);
        let Some(data) = bytes.get(e.offset as usize..end.min(bytes.len() as u64) as usize) else {
            skipped += 1;
            continue;
        };
        if data.len() != e.length as usize {
            skipped += 1;
            continue;
        }
        if e.is_whole_bundle() {
            // Pack formats 3 and 4: the bundle's header lists its chunks
            // (by length, and in format 3 by id too); each id is its hash.
            let Ok(bundle) = decode_bundle(data, crypto) else {
                skipped += 1;
                continue;
            };
            for (named, at, raw) in bundle.chunks() {
                let chunk = crypto.chunk_id(raw);
                if named.is_some_and(|named| named != chunk) {
                    skipped += 1;
                    continue;
                }
                chunks.push(IndexedChunk {
                    id: chunk,
                    raw_length: raw.len() as u32,
                    bundle_offset: named.is_none().then_some(at),
                    ..IndexedChunk::from(e)
                });
            }
            continue;
        }
        if bundles
            .decode(id, &e, data, true, crypto, &mut ShareBudget::unbounded())
            .is_err()
        {
            skipped += 1;
            continue;
        }
        chunks.push(IndexedChunk::from(e));
    }
    if skipped > 0 {
        tracing::warn!(pack = %id, skipped, "blobs that fail their chunk's check are left out of the repaired index");
    }
    Ok((
        IndexedPack {
            id: *id,
            size: bytes.len() as u64,
            chunks,
        },
        skipped,
    ))
}

async fn write_batch(
    repo: &Repository,
    opts: &RepairOptions,
    packs: Vec<IndexedPack>,
    report: &mut RepairReport,
) -> Result<(), RepoError> {
    if packs.is_empty() {
        return Ok(());
    }
    let bytes = IndexFile::new(packs).encode_deterministic(repo.crypto());
    let id = IndexId(Hash256::digest(&bytes));
    let key = index_key(&id);
    if !opts.dry_run {
        let put = PutOptions {
            sha256: id.0,
            retention: opts.retention,
        };
        match repo.store().put(&key, Bytes::from(bytes), &put).await {
            Ok(()) => tracing::info!(object = %key, "wrote a repaired index object"),
            // Named by its content: the same index object, already there.
            Err(StoreError::AlreadyExists { .. }) => report.index_objects_existing += 1,
            Err(e) => return Err(e.into()),
        }
    }
    report.index_objects.push(key);
    Ok(())
}
