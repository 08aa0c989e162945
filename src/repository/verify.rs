//! `holdfast verify`: read every object a plan's snapshots need, recompute
//! every SHA-256, and name each missing or corrupt object and the snapshots it
//! breaks. At depth `stored` ([`VerifyDepth`]) the packs' and WAL objects'
//! stored bytes are proven (by name, by seal) and no chunk is decoded. A
//! sampled verify reads every manifest and index object but only a share of
//! the packs, a stretch of the ring of pack ids that the next run continues
//! ([`choose_sample`]); the other packs are only checked to exist.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::manifest::ManifestEntry;
use super::pack::{parse_trailer, BundleCache, Encoding, ShareBudget};
use super::read::{ChunkReader, Discard, LazyIndex};
use super::source::EntryKind;
use super::{pack_key, Repository, SnapshotRef};
use crate::ids::{Hash256, PackId, SnapshotId};
use crate::plan::{Percent, PlanName, VerifyDepth};
use crate::progress::{Progress, ProgressMode};

/// One thing wrong, with what it breaks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The object at fault (`packs/3f/3f2a…`, `snapshots/plan/…`).
    pub object: String,
    pub kind: ProblemKind,
    pub detail: String,
    /// Short ids of the snapshots this problem makes unrestorable.
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Missing,
    Corrupt,
    ChainBroken,
    RetentionTooShort,
    /// Not believed: a manifest whose name, plan, time, creation or chain
    /// does not hold up, or a prune record naming packs in use (see
    /// `repository::trust`).
    Rejected,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub plan: String,
    pub repository: String,
    /// `chunks`: every chunk read was decoded and checked against its id;
    /// `stored`: packs were checked against their names, chunks placed but
    /// not decoded (see [`VerifyDepth`]).
    pub depth: VerifyDepth,
    pub snapshots_checked: usize,
    pub packs_checked: usize,
    /// Chunks found in their place in a pack read (at depth `chunks`, each
    /// also decoded and checked against its id).
    pub chunks_checked: usize,
    pub bytes_read: u64,
    /// Objects whose lock was checked against the snapshots needing them.
    pub objects_lock_checked: usize,
    /// Archived WAL files read back and checked (whole-plan verify only).
    pub wal_files_checked: usize,
    /// A sampled verify: how many packs it read of how many; `None` when
    /// every pack was read.
    pub sample: Option<SampleReport>,
    pub problems: Vec<Problem>,
}

/// Asks for a sampled verify: read `share` of the packs, starting after
/// `after` on the ring of pack ids (the previous run's
/// [`SampleReport::cursor`], or a random id to start anywhere).
#[derive(Debug, Clone, Copy)]
pub struct SampleRequest {
    pub share: Percent,
    pub after: PackId,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleReport {
    pub percent: Percent,
    /// Packs read back whole and checked, chunk by chunk.
    pub packs_read: usize,
    /// Packs the verified snapshots need; those not read were checked to
    /// exist, with their size, in a listing of `packs/`.
    pub packs_total: usize,
    /// The last pack read: the next sampled verify starts after it. `None`
    /// when the snapshots need no pack.
    pub cursor: Option<PackId>,
}

/// Which packs a sampled verify reads: `share` of `packs` (sorted by id, no
/// duplicates; at least one when there are any), the ones that follow
/// `after` on the ring of pack ids, wrapping round, in that order.
///
/// The caller keeps the last one chosen and passes it as the next run's
/// `after`, so successive runs read successive stretches of the ring: with
/// the packs unchanged, every pack is read within ⌈100 / share⌉ runs. Packs
/// added since land anywhere on the ring (ids are SHA-256) and are reached
/// within one more turn; removed ones simply drop out.
pub fn choose_sample(packs: &[PackId], share: Percent, after: &PackId) -> Vec<PackId> {
    let n = share.of(packs.len());
    let start = packs.partition_point(|p| p <= after);
    packs.iter().cycle().skip(start).take(n).copied().collect()
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies `plan`'s snapshots (all, or the one `selector` names: an id
/// prefix or `latest`), reading every pack; with `log_prefix`, and when the
/// whole plan is verified, also every archived log file under it
/// (`wal/<plan>/` for PostgreSQL).
pub async fn verify(
    repo: &Repository,
    plan: &PlanName,
    selector: Option<&str>,
    log_prefix: Option<&str>,
    progress: ProgressMode,
) -> Result<VerifyReport, super::RepoError> {
    verify_sampled(
        repo,
        plan,
        selector,
        log_prefix,
        None,
        VerifyDepth::Chunks,
        progress,
    )
    .await
}

/// [`verify`], reading only the packs [`choose_sample`] picks when `sample`
/// is given. Manifests, index objects, lock coverage and archived log files
/// are checked as by a full verify; the packs not read are checked to exist
/// (and to have the size their index gives) in one listing of `packs/`.
/// `depth` says how far each pack read is checked ([`VerifyDepth`]).
pub async fn verify_sampled(
    repo: &Repository,
    plan: &PlanName,
    selector: Option<&str>,
    log_prefix: Option<&str>,
    sample: Option<SampleRequest>,
    depth: VerifyDepth,
    progress: ProgressMode,
) -> Result<VerifyReport, super::RepoError> {
    verify_holding(
        repo,
        plan,
        selector,
        log_prefix,
        sample,
        depth,
        progress,
        HELD_CHUNKS,
    )
    .await
}

/// [`verify_sampled`], keeping manifests between its passes only while
/// they hold at most `held_chunks` chunk ids together ([`HELD_CHUNKS`] in
/// [`verify_sampled`]); the others are read again for each pass. The report
/// is the same whatever `held_chunks` is (the tests run it with 0).
#[allow(clippy::too_many_arguments)]
pub async fn verify_holding(
    repo: &Repository,
    plan: &PlanName,
    selector: Option<&str>,
    log_prefix: Option<&str>,
    sample: Option<SampleRequest>,
    depth: VerifyDepth,
    progress: ProgressMode,
    held_chunks_max: usize,
) -> Result<VerifyReport, super::RepoError> {
    // Archived logs (PostgreSQL's WAL) are checked beside everything else
    // (only when the whole plan is verified): they need nothing the other
    // checks find, and the file pass below leaves a core idle while one
    // thread hashes each file. In a set, so an early error stops it.
    let mut logs = match (selector, log_prefix) {
        (None, Some(prefix)) => {
            let mut set = tokio::task::JoinSet::new();
            set.spawn(check_logs(
                repo.store().clone(),
                repo.crypto().clone(),
                prefix.to_string(),
                depth,
            ));
            Some(set)
        }
        _ => None,
    };
    let listed = repo.snapshots(plan).await?;
    let all = listed.refs();
    let selected: Vec<SnapshotRef> = match selector {
        Some(sel) => vec![repo.find_snapshot(plan, sel).await?],
        None => all.clone(),
    };
    // Chunks only in packs that prune records name are still found (and
    // the records named below): see `Repository::load_index_for_restore`.
    let (mut index, pruned_index, index_faults) = repo.load_index_split().await?;
    index.add_fallback(&pruned_index)?;
    let mut problems: Vec<Problem> = index_faults
        .into_iter()
        .map(|(key, e)| Problem {
            object: key,
            kind: fault_kind(&e),
            detail: e.to_string(),
            snapshots: Vec::new(),
        })
        .collect();
    // Everything under the plan's snapshots that is not believed (a verify
    // of one snapshot checks that snapshot only).
    for r in listed.rejected.iter().filter(|_| selector.is_none()) {
        let short = SnapshotRef::from_key(&r.object).map(|s| s.id.short());
        problems.push(Problem {
            object: r.object.clone(),
            kind: match r.kind {
                super::RejectKind::Unreadable => ProblemKind::Corrupt,
                _ => ProblemKind::Rejected,
            },
            detail: r.detail.clone(),
            snapshots: short.into_iter().collect(),
        });
    }
    let rejected_ids: BTreeSet<SnapshotId> = listed
        .rejected
        .iter()
        .filter_map(|r| SnapshotRef::from_key(&r.object).map(|s| s.id))
        .collect();

    // Manifests: each checked against its name; the chain against the
    // listing. Each is read here for the packs and chunks it needs, and
    // kept for the passes after the pack pass only where one of them reads
    // its entries (whole-file hashes, disputed chunks), and only while all
    // kept hold at most `held_chunks_max` chunks; the others are read
    // again there, one at a time, so memory does not grow with the number
    // of snapshots.
    let mut manifests: Vec<Held> = Vec::new();
    let mut held_chunks = 0usize;
    // Which packs each snapshot needs, and chunks in no index. The chunks
    // needed are marked in the index (`Index::mark_needed`).
    let mut users: BTreeMap<PackId, BTreeSet<String>> = BTreeMap::new();
    // The next snapshot's manifest and entries tree (its chunks too, before
    // version 7) are read and decoded while this one's chunks are gone
    // through: two at a time, at most.
    let load = |snap: &SnapshotRef| {
        let (repo, snap) = (repo.clone(), snap.clone());
        tokio::spawn(async move { repo.load_manifest_tree(&snap).await })
    };
    let mut next = selected.first().map(load);
    for (i, snap) in selected.iter().enumerate() {
        let loaded = next
            .take()
            .expect("each snapshot's load is started before its turn")
            .await
            .expect("manifest load panicked");
        next = selected.get(i + 1).map(load);
        let mut m = match loaded {
            Ok(m) => m,
            Err(e) => {
                problems.push(manifest_problem(snap, &e));
                continue;
            }
        };
        // Which packs this snapshot was already counted as a user of: the
        // pack changes seldom from one chunk to the next.
        let short = snap.id.short();
        let mut using: HashSet<PackId> = HashSet::new();
        let mut last_used: Option<PackId> = None;
        // What the passes after the pack pass need of this snapshot, found
        // here for every chunk that is not disputed: its one location is
        // the one a restore uses (see `Settled`). A disputed chunk's right
        // place only the pack pass tells: those chunks, and the files whose
        // size waits on them, are kept aside (`Open`).
        let mut settled_packs: BTreeSet<PackId> = BTreeSet::new();
        let mut last_settled_pack = None;
        let mut sources: BTreeSet<super::SourceId> = BTreeSet::new();
        let mut last_source = None;
        let mut wrong_sizes: Vec<(String, u64, u64)> = Vec::new();
        let mut open = Open::default();
        // A version 7 manifest's chunk lists are read a part at a time (the
        // next part while this one's entries are gone through), and each
        // part's chunks are dropped once gone through: what verify holds of
        // a snapshot is its tree and two parts, not a chunk id for each of
        // its pages (two snapshots' worth, up to 80 MB at 9.3 GB of pages).
        let parts = m.list_parts(&snap.key);
        let streamed = parts.is_some();
        let read_part = |parts: &super::manifest::ListParts, part: usize, first: u64| {
            let (repo, parts) = (repo.clone(), parts.clone());
            tokio::spawn(async move { repo.read_list_part(&parts, part, first).await })
        };
        let mut reading = parts
            .as_ref()
            .filter(|p| !p.parts.is_empty())
            .map(|p| read_part(p, 0, 0));
        let (mut part, mut first_file, mut done) = (0usize, 0u64, 0usize);
        let mut failed: Option<super::RepoError> = None;
        loop {
            let upto = match &parts {
                None => m.entries.len(),
                Some(parts) if part == parts.parts.len() => {
                    if first_file != parts.files {
                        failed = Some(parts.miscounted(first_file));
                        break;
                    }
                    m.entries.len()
                }
                Some(parts) => {
                    let lists = match reading
                        .take()
                        .expect("each part's read is started before its turn")
                        .await
                        .expect("chunk-list read panicked")
                    {
                        Ok(lists) => lists,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                    let next_first = first_file + lists.len() as u64;
                    if part + 1 < parts.parts.len() {
                        reading = Some(read_part(parts, part + 1, next_first));
                    }
                    let at = match parts.fill_files(part, lists, &mut m.entries, done, first_file) {
                        Ok(at) => at,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                    first_file = next_first;
                    part += 1;
                    at
                }
            };
            for e in &m.entries[done..upto] {
                let mut unindexed = Vec::new();
                // Version 5: chunks in no pack the manifest names. prune and
                // keep-locks go by those names, so such a chunk's pack could be
                // deleted or left to unlock under a snapshot that needs it.
                let mut unnamed = Vec::new();
                // The file's bytes as its chunks' first locations give them;
                // `None` once a chunk is in no index object.
                let mut sum = Some(0u64);
                // Version 6: where the manifest places each chunk, which must be
                // one of its places in the index (so the pack pass checks it).
                let mut placed = m.packs.as_deref().and_then(|p| e.placed(p));
                let mut misplaced = Vec::new();
                let mut file_disputed = Vec::new();
                // Each chunk's first location, looked up for the whole file at
                // once, and every indexed chunk marked as needed.
                let firsts = index.mark_needed_all(&e.chunks);
                for (c, first) in e.chunks.iter().zip(firsts) {
                    let here = placed.as_mut().and_then(Iterator::next);
                    let mut at_place = here.is_none();
                    let mut indexed = false;
                    let mut in_named = false;
                    let chunk_disputed = index.is_disputed(c);
                    // Every candidate location is checked: which one is right
                    // is known only once read.
                    for loc in first.into_iter().chain(index.more_candidates(c)) {
                        if !chunk_disputed {
                            if !indexed {
                                sum = sum.map(|n| n + u64::from(loc.blob.raw_length));
                            }
                            if last_source != Some(loc.source) {
                                last_source = Some(loc.source);
                                sources.insert(loc.source);
                            }
                            if last_settled_pack != Some(loc.pack) {
                                last_settled_pack = Some(loc.pack);
                                settled_packs.insert(loc.pack);
                            }
                        }
                        indexed = true;
                        if let Some(named) = &m.packs {
                            in_named = in_named || named.binary_search(&loc.pack).is_ok();
                        }
                        at_place = at_place || here.is_some_and(|h| h.same_place(&loc));
                        if last_used != Some(loc.pack) {
                            last_used = Some(loc.pack);
                            if using.insert(loc.pack) {
                                users.entry(loc.pack).or_default().insert(short.clone());
                            }
                        }
                    }
                    if !indexed {
                        unindexed.push(c);
                        sum = None;
                    } else if m.packs.is_some() && !in_named {
                        unnamed.push(c);
                    }
                    if let Some(here) = here.filter(|_| indexed && !at_place) {
                        misplaced.push(here);
                    }
                    if chunk_disputed {
                        file_disputed.push(*c);
                    }
                }
                if let Some(sum) = sum.filter(|_| e.kind == EntryKind::File && e.sha256.is_none()) {
                    let recorded = e.size.unwrap_or_default();
                    if !file_disputed.is_empty() {
                        open.held += file_disputed.len();
                        open.sizes
                            .push((e.path.clone(), sum, recorded, file_disputed.clone()));
                    } else if sum != recorded {
                        wrong_sizes.push((e.path.clone(), sum, recorded));
                    }
                }
                open.held += file_disputed.len();
                open.chunks.extend(file_disputed);
                if let Some(first) = unnamed.first() {
                    problems.push(Problem {
                        object: snap.key.clone(),
                        kind: ProblemKind::Corrupt,
                        detail: format!(
                            "{} chunk(s) of {} are in no pack the manifest names (first: chunk {first}, in {}); prune and keep-locks go by those names",
                            unnamed.len(),
                            e.path,
                            index
                                .candidates(first)
                                .map(|l| pack_key(&l.pack))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        snapshots: vec![snap.id.short()],
                    });
                }
                if let Some(first) = misplaced.first() {
                    problems.push(Problem {
                        object: snap.key.clone(),
                        kind: ProblemKind::Corrupt,
                        detail: format!(
                            "{} chunk(s) of {} are not where the manifest places them (first: chunk {}, placed in {} at offset {}, which no index object gives it); a restore finds them through the index",
                            misplaced.len(),
                            e.path,
                            first.blob.id,
                            pack_key(&first.pack),
                            first.blob.offset,
                        ),
                        snapshots: vec![snap.id.short()],
                    });
                }
                if let Some(first) = unindexed.first() {
                    problems.push(Problem {
                        object: format!("chunk {first}"),
                        kind: ProblemKind::Missing,
                        detail: format!(
                            "{} chunk(s) of {} are listed in no readable index object (first: {first})",
                            unindexed.len(),
                            e.path
                        ),
                        snapshots: vec![snap.id.short()],
                    });
                }
            }
            if streamed {
                for e in &mut m.entries[done..upto] {
                    e.chunks = Vec::new();
                    e.at = None;
                }
            }
            done = upto;
            if done == m.entries.len() && parts.as_ref().is_none_or(|p| part == p.parts.len()) {
                break;
            }
        }
        if let Some(e) = failed {
            if let Some(r) = reading {
                r.abort();
            }
            problems.push(manifest_problem(snap, &e));
            continue;
        }
        // Kept aside within the bound on what verify holds; past it, the
        // snapshot's entries are gone through again after the pack pass.
        open.chunks.sort_unstable();
        open.chunks.dedup();
        let open_fits = held_chunks + open.held <= held_chunks_max;
        if open_fits {
            held_chunks += open.held;
        }
        let settled = open_fits.then(|| Settled {
            wrong_sizes,
            packs: settled_packs,
            index_objects: sources
                .into_iter()
                .map(|s| index.source(s).to_string())
                .collect(),
            open: (!open.chunks.is_empty()).then_some(open),
        });
        let file_hashes = m.entries.iter().any(|e| e.sha256.is_some());
        // Held only for a pass that will read its entries again: the
        // whole-file hashes, or a snapshot with a disputed chunk.
        let wanted = (file_hashes && depth == VerifyDepth::Chunks) || settled.is_none();
        let chunks: usize = m.entries.iter().map(|e| e.chunks.len()).sum();
        // A manifest whose chunks were dropped as they were gone through
        // is read again there.
        let keep = wanted && !streamed && held_chunks + chunks <= held_chunks_max;
        held_chunks += if keep { chunks } else { 0 };
        manifests.push(Held {
            snap: snap.clone(),
            head: m.head(),
            file_hashes,
            settled,
            manifest: keep.then_some(m),
        });
    }
    let listed: BTreeSet<SnapshotId> = all.iter().map(|s| s.id).collect();
    let (records, record_faults) = repo.prune_records_checked().await?;
    problems.extend(record_faults.into_iter().map(|(key, e)| Problem {
        object: key,
        kind: fault_kind(&e),
        detail: e.to_string(),
        snapshots: Vec::new(),
    }));
    let pruned: BTreeSet<SnapshotId> = records
        .iter()
        .flat_map(|(_, r)| r.snapshots.iter().copied())
        .collect();
    for Held { snap, head: m, .. } in &manifests {
        let pos = all.iter().position(|s| s.id == snap.id);
        let expected_prev = pos.and_then(|p| p.checked_sub(1)).map(|p| all[p].id);
        if let Some(prev) = m.previous {
            if pruned.contains(&prev) {
                // Removed by `holdfast prune`, which recorded it.
            } else if rejected_ids.contains(&prev) && !listed.contains(&prev) {
                problems.push(Problem {
                    object: snap.key.clone(),
                    kind: ProblemKind::ChainBroken,
                    detail: format!(
                        "names previous snapshot {prev}, which is rejected (see its own problem)"
                    ),
                    snapshots: vec![snap.id.short()],
                });
            } else if !listed.contains(&prev) {
                problems.push(Problem {
                    object: snap.key.clone(),
                    kind: ProblemKind::ChainBroken,
                    detail: format!(
                        "names previous snapshot {prev}, which is not in the repository: a snapshot was removed or replaced outside holdfast"
                    ),
                    snapshots: vec![snap.id.short()],
                });
            } else if Some(prev) != expected_prev {
                problems.push(Problem {
                    object: snap.key.clone(),
                    kind: ProblemKind::ChainBroken,
                    detail: format!(
                        "names previous snapshot {}, but the snapshot listed before it is {}",
                        prev.short(),
                        expected_prev
                            .map(|p| p.short())
                            .unwrap_or_else(|| "none".into())
                    ),
                    snapshots: vec![snap.id.short()],
                });
            }
        }
    }

    // A prune record naming a pack that a believed snapshot still needs
    // (found only through the fallback above) is wrong about it: a real
    // prune never removes what a remaining snapshot needs.
    for (key, record) in &records {
        let live: Vec<&PackId> = record
            .packs
            .iter()
            .filter(|p| users.contains_key(p) && pruned_index.packs().contains_key(p))
            .collect();
        if let Some(first) = live.first() {
            let snaps: BTreeSet<String> = live
                .iter()
                .flat_map(|p| users[*p].iter().cloned())
                .collect();
            problems.push(Problem {
                object: key.clone(),
                kind: ProblemKind::Rejected,
                detail: format!(
                    "names {} pack(s) that snapshots of plan {plan} still need (first: {}); a prune never removes those, so the record is not believed for them and they stay in use",
                    live.len(),
                    pack_key(first)
                ),
                snapshots: snaps.into_iter().collect(),
            });
        }
    }

    let index = Arc::new(index);

    // The packs to read: all, or a stretch of the ring.
    let needed: Vec<PackId> = users.keys().copied().collect();
    let (to_read, sample_report): (BTreeSet<PackId>, _) = match sample {
        None => (needed.iter().copied().collect(), None),
        Some(req) => {
            let chosen = choose_sample(&needed, req.share, &req.after);
            let report = SampleReport {
                percent: req.share,
                packs_read: chosen.len(),
                packs_total: needed.len(),
                cursor: chosen.last().copied(),
            };
            (chosen.into_iter().collect(), Some(report))
        }
    };
    let mut bad_packs: BTreeSet<PackId> = BTreeSet::new();
    // Locations (of chunks the index objects disagree about) that do not
    // hold their chunk, reported against the index object that gave them.
    let mut bad_locations: Vec<BadLocation> = Vec::new();
    // (pack, chunk, offset) of the locations of disputed chunks that held
    // their chunk (where the index objects agree, that one place is used).
    let mut good_places: std::collections::HashSet<(PackId, crate::ids::ChunkId, u64)> =
        Default::default();

    // The packs left out are still checked to exist, by listing: a pack
    // that is gone breaks its snapshots whatever share is read.
    if to_read.len() < needed.len() {
        let listed: HashMap<String, u64> = repo
            .store()
            .list("packs/")
            .await?
            .into_iter()
            .map(|info| (info.key, info.size))
            .collect();
        for (pack, snaps) in users.iter().filter(|(p, _)| !to_read.contains(p)) {
            let key = pack_key(pack);
            let expected = index.packs()[pack];
            let fault = match listed.get(&key) {
                None => Some((
                    ProblemKind::Missing,
                    format!(
                        "not in the listing of {}/packs/ (its presence was checked; it was not in this run's sample)",
                        repo.url()
                    ),
                )),
                Some(&size) if size != expected => Some((
                    ProblemKind::Corrupt,
                    format!(
                        "is {size} bytes, its index says {expected} (its size was checked; it was not in this run's sample)"
                    ),
                )),
                Some(_) => None,
            };
            if let Some((kind, detail)) = fault {
                bad_packs.insert(*pack);
                problems.push(Problem {
                    object: key,
                    kind,
                    detail,
                    snapshots: snaps.iter().cloned().collect(),
                });
            }
        }
    }

    // Every pack to read, read whole: its hash, its trailer, every blob.
    let total: u64 = to_read.iter().map(|p| index.packs()[p]).sum();
    let bar = Progress::new("verify", Some(total), progress);
    let mut bytes_read = 0u64;
    let mut chunks_checked = 0usize;
    // Several packs at once, each read whole and checked on a blocking
    // thread: downloads overlap the checks and every core checks. Memory:
    // at most this many packs (each at most its index size) at a time.
    let readers = check_threads();
    // Each pack's needed chunks, a pack at a time, from the index's marks
    // (grouped on disk for a large repository: see `Index::needed_by_pack`),
    // read on a blocking thread a few packs ahead of the readers. A pack to
    // read that no group names (none should be) is read with none.
    let (groups_tx, mut groups) = tokio::sync::mpsc::channel(readers.max(1));
    let mut grouping = Some({
        let index = index.clone();
        tokio::task::spawn_blocking(move || {
            for group in index.needed_by_pack()? {
                let stop = group.is_err();
                if groups_tx.blocking_send(group).is_err() || stop {
                    break;
                }
            }
            Ok::<(), super::RepoError>(())
        })
    });
    let mut left: BTreeSet<PackId> = to_read.clone();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < readers {
            let (pack, needed) = match groups.recv().await {
                Some(group) => {
                    let (pack, needed) = group?;
                    if !left.remove(&pack) {
                        continue;
                    }
                    (pack, Arc::new(needed))
                }
                None => {
                    // Every group is in: unless grouping failed.
                    if let Some(grouping) = grouping.take() {
                        grouping.await.expect("grouping needed chunks panicked")?;
                    }
                    match left.pop_first() {
                        Some(pack) => (pack, Arc::new(Vec::new())),
                        None => break,
                    }
                }
            };
            let store = repo.store().clone();
            let crypto = repo.crypto().clone();
            let index = index.clone();
            // No more than the index says the pack holds: a bigger object
            // is not the pack the index describes, whatever the server
            // claims.
            let cap = index.packs()[&pack];
            tasks.spawn(async move {
                let got = match store.get_at_most(&pack_key(&pack), cap).await {
                    Err(e) => Err(e),
                    Ok(bytes) => {
                        let len = bytes.len() as u64;
                        let needed = needed.clone();
                        let check = tokio::task::spawn_blocking(move || {
                            check_pack(&pack, &bytes, &needed, &index, &crypto, depth)
                        })
                        .await
                        .expect("pack check panicked");
                        Ok((len, check))
                    }
                };
                (pack, needed, got)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (pack, needed, got) = done.expect("pack verify task panicked");
        let pack = &pack;
        let key = pack_key(pack);
        let snapshots: Vec<String> = users[pack].iter().cloned().collect();
        let (len, (detail, checked, bad, good)) = match got {
            Ok(r) => r,
            Err(e) => {
                bad_packs.insert(*pack);
                if needed.iter().all(|c| index.is_disputed(c)) {
                    // Only chunks known elsewhere too: the index objects
                    // naming this pack for them are what is wrong.
                    for c in needed.iter() {
                        for loc in index.candidates(c).filter(|l| l.pack == *pack) {
                            bad_locations.push(BadLocation {
                                loc,
                                why: format!("{key} cannot be read: {e}"),
                            });
                        }
                    }
                    continue;
                }
                problems.push(Problem {
                    object: key,
                    kind: if e.is_not_found() {
                        ProblemKind::Missing
                    } else {
                        ProblemKind::Corrupt
                    },
                    detail: e.to_string(),
                    snapshots,
                });
                continue;
            }
        };
        bytes_read += len;
        bar.inc(len);
        chunks_checked += checked;
        bad_locations.extend(bad);
        good_places.extend(good.into_iter().map(|(c, off)| (*pack, c, off)));
        if let Some(detail) = detail {
            bad_packs.insert(*pack);
            problems.push(Problem {
                object: key,
                kind: ProblemKind::Corrupt,
                detail,
                snapshots,
            });
        }
    }
    // Packs finish in any order: the report must not depend on it.
    bad_locations.sort_by_key(|b| (b.loc.pack, b.loc.blob.offset, b.loc.blob.id));
    bar.finish();

    // One problem per index object that gives bad locations; it breaks a
    // snapshot only if the chunk has no location that checked out.
    let mut by_source: BTreeMap<String, Vec<&BadLocation>> = BTreeMap::new();
    for b in &bad_locations {
        by_source
            .entry(index.source(b.loc.source).to_string())
            .or_default()
            .push(b);
    }
    for (object, bads) in by_source {
        let first = bads[0];
        let mut snapshots = BTreeSet::new();
        for b in &bads {
            let chunk = b.loc.blob.id;
            let good_elsewhere = index
                .candidates(&chunk)
                .any(|l| good_places.contains(&(l.pack, chunk, l.blob.offset)));
            if !good_elsewhere {
                snapshots.extend(users.get(&b.loc.pack).into_iter().flatten().cloned());
            }
        }
        problems.push(Problem {
            object,
            kind: ProblemKind::Corrupt,
            detail: format!(
                "gives {} chunk location(s) that do not hold their chunk, first: chunk {} in {} at offset {} ({}); other index objects place these chunks elsewhere, and restores and backups use a location only once it passes its check (a planted or damaged index object; `holdfast repair index` writes a correct index from the packs)",
                bads.len(),
                first.loc.blob.id,
                pack_key(&first.loc.pack),
                first.loc.blob.offset,
                first.why
            ),
            snapshots: snapshots.into_iter().collect(),
        });
    }

    // A file without a whole-file hash (manifest version 3) is proven by
    // its chunks, each checked above against its id, and by its size:
    // the chunks' lengths, where each was found good, must add up to it.
    let good_location = |c: &crate::ids::ChunkId| {
        index.candidates(c).find(|l| {
            !bad_packs.contains(&l.pack)
                && (!index.is_disputed(c) || good_places.contains(&(l.pack, *c, l.blob.offset)))
        })
    };
    let mut required: BTreeMap<String, (DateTime<Utc>, BTreeSet<String>)> = BTreeMap::new();
    for held in &manifests {
        let snap = &held.snap;
        // Found in the first pass, unless a chunk is disputed or lies in a
        // pack found bad: then its entries are gone through again, each
        // chunk at the location that checked out.
        let recomputed;
        let settled = match held
            .settled
            .as_ref()
            .filter(|s| s.packs.is_disjoint(&bad_packs))
        {
            Some(s) if s.open.is_none() => s,
            Some(s) => {
                recomputed = s.close(&index, &good_location, &good_places);
                &recomputed
            }
            None => {
                let Some(m) = held.entries(repo, &mut problems).await else {
                    continue;
                };
                recomputed = settle(m.as_ref(), &index, &good_location, &good_places);
                &recomputed
            }
        };
        if let Some((path, got, expected)) = settled.wrong_sizes.first() {
            let more = settled.wrong_sizes.len() - 1;
            problems.push(Problem {
                object: snap.key.clone(),
                kind: ProblemKind::Corrupt,
                detail: format!(
                    "{path} does not match its snapshot: its chunks hold {got} bytes, the manifest says {expected}{}",
                    if more > 0 { format!(" ({more} more file(s) like it)") } else { String::new() }
                ),
                snapshots: vec![snap.id.short()],
            });
        }

        // Lock coverage: every object a snapshot needs is locked at least
        // until the snapshot's own retain-until.
        let Some(r) = held.head.retention else {
            continue;
        };
        let mut need = |key: String| {
            let e = required.entry(key).or_insert((r.until, BTreeSet::new()));
            e.0 = e.0.max(r.until);
            e.1.insert(snap.id.short());
        };
        need(snap.key.clone());
        for key in held.head.entries_keys() {
            need(key.to_string());
        }
        need(super::CONFIG_KEY.to_string());
        for k in &settled.index_objects {
            need(k.clone());
        }
        for p in &settled.packs {
            need(pack_key(p));
        }
    }
    // Not needed past here: freed before the file pass's buffers fill.
    drop((good_places, users));

    // Whole-file hashes (manifest version 2; version 3 files have none and
    // were checked above) of the files whose chunks all lie in packs that
    // were read and checked out (in a sampled verify, few files of a large
    // database: its chunks span many packs). The pass above proved every
    // chunk against its id, so this one only checks that each file's
    // recorded hash agrees with its chunks (chunks are checked one by one
    // again only for a file that disagrees, to name the one at fault). A
    // file with the same hash and chunk list as one already checked (the
    // same file in the next snapshot) is not read twice.
    let reader = ChunkReader::new(
        repo.store().clone(),
        repo.crypto().clone(),
        LazyIndex::loaded(index.clone()),
        tokio::runtime::Handle::current(),
    );
    let reader = Arc::new(reader.hashing_files());
    let checked_out = |c: &crate::ids::ChunkId| {
        index
            .candidates(c)
            .any(|loc| to_read.contains(&loc.pack) && !bad_packs.contains(&loc.pack))
    };
    // (recorded hash, hash of the chunk list) of the files read and found
    // good, and of those found bad with what was wrong.
    type FileKey = (Option<Hash256>, Hash256);
    let file_key = |e: &ManifestEntry| -> FileKey {
        let mut ids = Vec::with_capacity(e.chunks.len() * 32);
        for c in &e.chunks {
            ids.extend_from_slice(&c.0 .0);
        }
        (e.sha256, Hash256::digest(&ids))
    };
    let mut files_good: std::collections::HashSet<FileKey> = Default::default();
    let mut files_bad: HashMap<FileKey, String> = HashMap::new();
    // Last use of the manifests: each one's entries are taken, not copied.
    // Only manifests with whole-file hashes (version 2) are read again, and
    // only at depth `chunks`: comparing a file's hash means decoding it.
    let hash_files = depth == VerifyDepth::Chunks;
    for held in manifests.iter_mut().filter(|h| h.file_hashes && hash_files) {
        let snap = held.snap.clone();
        let mut m = match held.manifest.take() {
            Some(m) => m,
            None => match held.entries(repo, &mut problems).await {
                Some(m) => m.into_owned(),
                None => continue,
            },
        };
        let mut known_bad: Option<String> = None;
        // In entry order (to find the one a failure names), and as a set.
        let mut keys = Vec::new();
        let mut keyed: std::collections::HashSet<FileKey> = Default::default();
        let entries: Vec<ManifestEntry> = std::mem::take(&mut m.entries)
            .into_iter()
            .filter(|e| {
                e.kind == EntryKind::File && e.sha256.is_some() && e.chunks.iter().all(checked_out)
            })
            .filter(|e| {
                let k = file_key(e);
                if let Some(why) = files_bad.get(&k) {
                    known_bad.get_or_insert_with(|| why.clone());
                    return false;
                }
                if files_good.contains(&k) || !keyed.insert(k) {
                    return false;
                }
                keys.push(k);
                true
            })
            .collect();
        let failed = if entries.is_empty() {
            known_bad
        } else {
            let reader = reader.clone();
            let paths: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
            let result =
                tokio::task::spawn_blocking(move || reader.read_files(&entries, &mut Discard))
                    .await
                    .expect("verify read panicked");
            match result {
                Ok(()) => {
                    files_good.extend(keys);
                    known_bad
                }
                Err(e) => {
                    // Files after the one at fault were not read: only the
                    // one named is known bad, the rest are read again where
                    // another snapshot holds them.
                    let detail = e.to_string();
                    if let super::read::ReadError::StreamHash { path, .. } = &e {
                        if let Some(i) = paths.iter().position(|p| p == path) {
                            files_bad.insert(keys[i], detail.clone());
                        }
                    }
                    Some(detail)
                }
            }
        };
        if let Some(detail) = failed {
            problems.push(Problem {
                object: snap.key.clone(),
                kind: ProblemKind::Corrupt,
                detail,
                snapshots: vec![snap.id.short()],
            });
        }
    }

    let mut lock_checks = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    for (key, (until, snaps)) in required {
        let (store, limit) = (repo.store().clone(), limit.clone());
        lock_checks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            let info = store.head(&key).await;
            (key, until, snaps, info)
        });
    }
    let mut objects_lock_checked = 0usize;
    while let Some(done) = lock_checks.join_next().await {
        let (key, until, snaps, info) = done.expect("lock check panicked");
        let snapshots: Vec<String> = snaps.into_iter().collect();
        objects_lock_checked += 1;
        match info {
            Ok(info) => {
                let short = info.retention.is_none_or(|r| r.until < until);
                if short {
                    problems.push(Problem {
                        object: key,
                        kind: ProblemKind::RetentionTooShort,
                        detail: match info.retention {
                            Some(r) => format!(
                                "locked ({}) until {}, but snapshot(s) needing it are kept until {until}",
                                r.mode, r.until
                            ),
                            None => format!(
                                "not locked at all, but snapshot(s) needing it are kept until {until}"
                            ),
                        },
                        snapshots,
                    });
                }
            }
            // Missing objects are reported above, with what they break.
            Err(e) if e.is_not_found() => {}
            Err(e) => problems.push(Problem {
                object: key,
                kind: ProblemKind::Missing,
                detail: e.to_string(),
                snapshots,
            }),
        }
    }

    // The archived logs' check, started at the beginning, ends here.
    let mut wal_files_checked = 0;
    if let Some(logs) = logs.as_mut() {
        let (checked, read, log_problems) = logs
            .join_next()
            .await
            .expect("the log check was started")
            .expect("log check panicked")?;
        wal_files_checked = checked;
        bytes_read += read;
        problems.extend(log_problems);
    }

    problems.sort_by(|a, b| (a.kind, &a.object).cmp(&(b.kind, &b.object)));
    problems.dedup();
    Ok(VerifyReport {
        wal_files_checked,
        objects_lock_checked,
        plan: plan.to_string(),
        repository: repo.url(),
        depth,
        snapshots_checked: selected.len(),
        packs_checked: to_read.len(),
        sample: sample_report,
        chunks_checked,
        bytes_read,
        problems,
    })
}

/// How many objects are read and checked at once: one per core, 2 to 8.
fn check_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// Every archived log file under `prefix` read back and checked against the
/// SHA-256 in its header, a few at a time: how many were checked, the
/// bytes read, and the problems found. At depth `stored`, in an encrypted
/// repository, each object's seal and header are checked and its content
/// is not decompressed (`log_archive::classify_stored`).
async fn check_logs(
    store: Arc<dyn crate::store::Store>,
    crypto: super::Crypto,
    prefix: String,
    depth: VerifyDepth,
) -> Result<(usize, u64, Vec<Problem>), super::RepoError> {
    let readers = check_threads();
    let mut problems = Vec::new();
    let mut bytes_read = 0u64;
    let mut wal_files_checked = 0;
    let listed = store.list(&prefix).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let mut listed = listed.into_iter();
    loop {
        // Each task holds a decompressed segment (16 MiB): a few per
        // core keep the cores busy without hundreds of MB resident.
        while tasks.len() < readers {
            let Some(info) = listed.next() else { break };
            let store = store.clone();
            let crypto = crypto.clone();
            tasks.spawn(async move {
                let got = store
                    .get_at_most(&info.key, super::log_archive::MAX_OBJECT)
                    .await;
                let checked = match got {
                    Ok(bytes) => {
                        let key = info.key.clone();
                        let len = bytes.len() as u64;
                        // Foreign objects (planted, or damaged) are named
                        // so: push and fetch step around them, but the
                        // operator must know someone writes to the bucket.
                        tokio::task::spawn_blocking(move || {
                            let found = match depth {
                                VerifyDepth::Chunks => {
                                    super::log_archive::classify_checking(&key, &bytes, &crypto)
                                }
                                VerifyDepth::Stored => {
                                    super::log_archive::classify_stored(&key, &bytes, &crypto)
                                }
                            };
                            match found {
                                super::log_archive::Found::Archived { .. } => Ok(len),
                                super::log_archive::Found::Foreign { why } => Err((
                                    ProblemKind::Corrupt,
                                    format!("{key} is corrupt or foreign ({why}): holdfast did not write it as it is; see docs/runbook.md, \"A foreign object in the WAL archive\""),
                                )),
                            }
                        })
                        .await
                        .expect("WAL check panicked")
                    }
                    Err(e) if e.is_not_found() => Err((ProblemKind::Missing, e.to_string())),
                    Err(e) => Err((ProblemKind::Corrupt, e.to_string())),
                };
                (info.key, checked)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (key, checked) = done.expect("WAL check task panicked");
        wal_files_checked += 1;
        match checked {
            Ok(len) => bytes_read += len,
            Err((kind, detail)) => problems.push(Problem {
                object: key,
                kind,
                detail,
                snapshots: Vec::new(),
            }),
        }
    }
    Ok((wal_files_checked, bytes_read, problems))
}

/// How an index object or prune record that did not decode is reported:
/// one that fails authentication is not believed (like a rejected
/// manifest), anything else is damaged.
fn fault_kind(e: &super::RepoError) -> ProblemKind {
    match e {
        super::RepoError::Unauthenticated { .. } => ProblemKind::Rejected,
        _ => ProblemKind::Corrupt,
    }
}

/// What [`check_pack`] found: the pack's own faults, how many chunks it
/// checked, the bad locations of disputed chunks, and the (chunk, offset)
/// locations of disputed chunks that held their chunk.
type PackCheck = (
    Option<String>,
    usize,
    Vec<BadLocation>,
    Vec<(crate::ids::ChunkId, u64)>,
);

/// A location an index object gives that does not hold its chunk.
#[derive(Debug)]
struct BadLocation {
    loc: super::ChunkLocation,
    why: String,
}

/// Checks a whole pack; returns what is wrong with it (if anything), how many
/// chunks were checked, and the locations of disputed chunks (several
/// candidate locations) that failed and that checked out in this pack.
///
/// At depth `stored` a chunk is not decoded unless its index objects
/// disagree about where it is (only decoding tells which place holds it):
/// the pack's bytes are proven by its name, and each chunk's place by the
/// trailer and the pack's length.
fn check_pack(
    pack: &PackId,
    bytes: &[u8],
    needed: &[crate::ids::ChunkId],
    index: &super::Index,
    crypto: &super::Crypto,
    depth: VerifyDepth,
) -> PackCheck {
    let got = Hash256::digest(bytes);
    let mut faults = Vec::new();
    let mut bad = Vec::new();
    let mut good = Vec::new();
    if got != pack.0 {
        faults.push(format!(
            "its SHA-256 is {got}, its name says {pack} ({} bytes)",
            bytes.len()
        ));
    }
    let mut checked = 0;
    match parse_trailer(bytes, crypto) {
        Err(why) => faults.push(format!("trailer unreadable: {why}")),
        Ok(blobs) => {
            // By chunk and offset: a pack may hold a chunk twice (a backup
            // that forgot it had stored it, see `placing::RecentChunks`).
            let by_place: HashMap<_, _, crate::ids::ChunkHasher> = blobs
                .iter()
                .filter(|b| !b.is_whole_bundle())
                .map(|b| ((b.id, b.offset), *b))
                .collect();
            // Where bundles lie: a bundled chunk's entry gives the bundle's
            // place, and the bundle's header (checked by decoding) says
            // whether it holds the chunk.
            let bundles_at: HashSet<(u64, u32)> = blobs
                .iter()
                .filter(|b| b.encoding == Encoding::Bundle)
                .map(|b| (b.offset, b.length))
                .collect();
            // In pack order, so each bundle is decompressed once. The
            // chunks' first locations are looked up at once (an index on
            // disk reads each block once for them); each place is kept as
            // (offset, which chunk, which candidate): 16 bytes, not a whole
            // location, for each of the pack's chunks.
            let firsts = index.get_all(needed);
            let candidate = |i: usize, nth: usize| match nth {
                0 => firsts[i],
                n => index.more_candidates(&needed[i]).nth(n - 1),
            };
            let mut places: Vec<(u64, u32, u32)> = Vec::new();
            for (i, c) in needed.iter().enumerate() {
                let all = firsts[i].into_iter().chain(index.more_candidates(c));
                for (nth, l) in all.enumerate().filter(|(_, l)| l.pack == *pack) {
                    places.push((l.blob.offset, i as u32, nth as u32));
                }
            }
            places.sort_unstable();
            let bundles = BundleCache::new(2);
            for (_, i, nth) in places {
                let chunk = &needed[i as usize];
                let loc = candidate(i as usize, nth as usize).expect("a candidate listed above");
                let disputed = index.is_disputed(chunk);
                let mut loc_faults = Vec::new();
                let listed = if loc.blob.encoding == Encoding::Bundle {
                    bundles_at.contains(&(loc.blob.offset, loc.blob.length))
                } else {
                    by_place.get(&(*chunk, loc.blob.offset)) == Some(&loc.blob)
                };
                if !listed {
                    loc_faults.push("the index and the pack trailer disagree".to_string());
                }
                let b = loc.blob;
                let end = b.offset.saturating_add(b.length as u64);
                match bytes.get(b.offset as usize..end.min(usize::MAX as u64) as usize) {
                    None => loc_faults.push("lies past the end of the pack".into()),
                    Some(_) if depth == VerifyDepth::Stored && !disputed => checked += 1,
                    Some(data) => {
                        checked += 1;
                        if let Err(why) = bundles.decode(
                            pack,
                            &b,
                            data,
                            true,
                            crypto,
                            &mut ShareBudget::unbounded(),
                        ) {
                            loc_faults.push(why.to_string());
                        }
                    }
                }
                if loc_faults.is_empty() {
                    // Only a disputed chunk's good places are asked for
                    // later; kept for every chunk they were a quarter of
                    // verify's memory at pgbench scale 200.
                    if disputed {
                        good.push((*chunk, loc.blob.offset));
                    }
                } else if disputed {
                    bad.push(BadLocation {
                        loc,
                        why: loc_faults.join(", "),
                    });
                } else {
                    faults.extend(
                        loc_faults
                            .into_iter()
                            .map(|f| format!("chunk {chunk}: {f}")),
                    );
                }
            }
        }
    }
    if got != pack.0 || !faults.is_empty() {
        // A pack that is not what its name says vouches for none of its chunks.
        good.clear();
        // Needed only for chunks other index objects place elsewhere: the
        // index objects naming this pack for them are what is wrong (a
        // pack-shaped object anyone could add), not a pack a snapshot lost.
        if needed.iter().all(|c| index.is_disputed(c)) {
            let why = faults.join("; ");
            for chunk in needed {
                for loc in index.candidates(chunk).filter(|l| l.pack == *pack) {
                    if !bad.iter().any(|b| b.loc.same_place(&loc)) {
                        bad.push(BadLocation {
                            loc,
                            why: format!("{}: {why}", pack_key(pack)),
                        });
                    }
                }
            }
            faults.clear();
        }
    }
    let detail = (!faults.is_empty()).then(|| {
        let n = faults.len();
        let mut shown: Vec<String> = faults.into_iter().take(5).collect();
        if n > 5 {
            shown.push(format!("and {} more", n - 5));
        }
        shown.join("; ")
    });
    (detail, checked, bad, good)
}

/// At most this many chunk ids of manifests (32 bytes each: 32 MiB) are
/// kept in memory between verify's passes; manifests beyond it are read
/// again for each pass that needs their entries.
pub const HELD_CHUNKS: usize = 1 << 20;

/// A snapshot verify read, with its manifest while it is held.
struct Held {
    snap: SnapshotRef,
    head: super::ManifestHead,
    /// Some file entry has a whole-file SHA-256 (manifest version 2).
    file_hashes: bool,
    /// What the size and lock-coverage checks need, found in the first
    /// pass; `None` when a chunk of the snapshot is disputed, whose right
    /// place only the pack pass tells.
    settled: Option<Settled>,
    manifest: Option<super::Manifest>,
}

/// A snapshot none of whose chunks is disputed: every chunk has one
/// location, the one a restore reads. Valid as long as none of `packs`
/// turns out bad (a bad pack's chunks have no good location, and those
/// files are reported with the pack, not by their size).
struct Settled {
    /// Files (without a whole-file hash) whose chunks do not add up to
    /// their recorded size: path, the chunks' bytes, the recorded size.
    wrong_sizes: Vec<(String, u64, u64)>,
    /// The packs its chunks are in.
    packs: BTreeSet<PackId>,
    /// The index objects that place them.
    index_objects: BTreeSet<String>,
    /// Its disputed chunks, if any, which the above leaves out until the
    /// pack pass says where each is ([`Settled::close`]).
    open: Option<Open>,
}

/// A snapshot's disputed chunks (two places or more), kept aside in the
/// first pass instead of the whole snapshot: a few where a backup stored
/// a chunk again, or two backups stored the same one.
#[derive(Default)]
struct Open {
    /// Files whose size waits on them: path, the bytes of their other
    /// chunks, the recorded size, and their disputed chunks.
    sizes: Vec<(String, u64, u64, Vec<crate::ids::ChunkId>)>,
    /// Every disputed chunk of the snapshot, sorted, once each.
    chunks: Vec<crate::ids::ChunkId>,
    /// Chunk ids held above, counted against verify's bound.
    held: usize,
}

impl Settled {
    /// With its disputed chunks settled after the pack pass, as
    /// [`settle`] does for a whole snapshot: a file's size with each
    /// disputed chunk at a good location (a file with a chunk that has
    /// none is reported with its pack), and for lock coverage the
    /// locations that checked out.
    fn close(
        &self,
        index: &super::Index,
        good_location: &dyn Fn(&crate::ids::ChunkId) -> Option<super::ChunkLocation>,
        good_places: &HashSet<(PackId, crate::ids::ChunkId, u64)>,
    ) -> Settled {
        let mut closed = Settled {
            wrong_sizes: self.wrong_sizes.clone(),
            packs: self.packs.clone(),
            index_objects: self.index_objects.clone(),
            open: None,
        };
        let Some(open) = &self.open else {
            return closed;
        };
        for (path, sum, recorded, disputed) in &open.sizes {
            let rest: Option<u64> = disputed
                .iter()
                .map(|c| good_location(c).map(|l| u64::from(l.blob.raw_length)))
                .sum();
            if let Some(got) = rest.map(|rest| sum + rest).filter(|got| got != recorded) {
                closed.wrong_sizes.push((path.clone(), got, *recorded));
            }
        }
        for c in &open.chunks {
            for l in index.candidates(c) {
                if good_places.contains(&(l.pack, *c, l.blob.offset)) {
                    closed.packs.insert(l.pack);
                    closed
                        .index_objects
                        .insert(index.source(l.source).to_string());
                }
            }
        }
        closed
    }
}

/// [`Settled`] for a snapshot with disputed chunks or chunks in bad packs,
/// after the pack pass: a file's size from the chunks' good locations (a
/// file with a chunk that has none is reported with its pack), and for
/// lock coverage the locations a restore would use: those that checked out
/// where the index objects disagree, the one they agree on otherwise.
fn settle(
    m: &super::Manifest,
    index: &super::Index,
    good_location: &dyn Fn(&crate::ids::ChunkId) -> Option<super::ChunkLocation>,
    good_places: &HashSet<(PackId, crate::ids::ChunkId, u64)>,
) -> Settled {
    let wrong_sizes = m
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.sha256.is_none())
        .filter_map(|e| {
            let mut sum = 0u64;
            for c in &e.chunks {
                sum += u64::from(good_location(c)?.blob.raw_length);
            }
            let recorded = e.size.unwrap_or_default();
            (sum != recorded).then(|| (e.path.clone(), sum, recorded))
        })
        .collect();
    let mut packs = BTreeSet::new();
    let mut index_objects = BTreeSet::new();
    for c in m.entries.iter().flat_map(|e| &e.chunks) {
        for l in index.candidates(c) {
            if index.is_disputed(c) && !good_places.contains(&(l.pack, *c, l.blob.offset)) {
                continue;
            }
            packs.insert(l.pack);
            index_objects.insert(index.source(l.source).to_string());
        }
    }
    Settled {
        wrong_sizes,
        packs,
        index_objects,
        open: None,
    }
}

impl Held {
    /// The manifest: held, or read again (a failure is a problem, named).
    async fn entries(
        &self,
        repo: &Repository,
        problems: &mut Vec<Problem>,
    ) -> Option<std::borrow::Cow<'_, super::Manifest>> {
        if let Some(m) = &self.manifest {
            return Some(std::borrow::Cow::Borrowed(m));
        }
        match repo.load_manifest(&self.snap).await {
            Ok(m) => Some(std::borrow::Cow::Owned(m)),
            Err(e) => {
                problems.push(manifest_problem(&self.snap, &e));
                None
            }
        }
    }
}

/// A manifest that could not be read, as a problem.
fn manifest_problem(snap: &SnapshotRef, e: &super::RepoError) -> Problem {
    // A fault of a manifest's entries or chunk-list object names that object.
    let object = match e {
        super::RepoError::MissingEntries { key, .. } => key.clone(),
        super::RepoError::Corrupt { what, key, .. }
        | super::RepoError::OverCap { what, key, .. }
        | super::RepoError::Unauthenticated { what, key, .. }
            if *what == super::ENTRIES_CAP.what || *what == super::LISTS_CAP.what =>
        {
            key.clone()
        }
        _ => snap.key.clone(),
    };
    Problem {
        object,
        kind: if matches!(e, super::RepoError::Store(s) if s.is_not_found())
            || matches!(e, super::RepoError::MissingEntries { .. })
        {
            ProblemKind::Missing
        } else {
            ProblemKind::Corrupt
        },
        detail: e.to_string(),
        snapshots: vec![snap.id.short()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packs(n: u8) -> Vec<PackId> {
        let mut v: Vec<PackId> = (0..n).map(|i| PackId(Hash256::digest(&[i]))).collect();
        v.sort();
        v
    }

    fn share(hundredths: u32) -> Percent {
        Percent::from_hundredths(hundredths).unwrap()
    }

    /// A snapshot's disputed chunk, kept aside in the first pass, is
    /// settled after the pack pass at the place that checked out: its
    /// size counts in its file's, and only the good place's pack and index
    /// object are asked to be locked.
    #[test]
    fn a_disputed_chunk_kept_aside_counts_where_it_checked_out() {
        use super::super::index::{IndexFile, IndexedChunk, IndexedPack};
        use super::super::pack::{BlobEntry, Encoding};
        use super::super::Index;
        use crate::ids::ChunkId;
        let chunk = ChunkId(Hash256::digest(b"a page stored twice"));
        let [good_pack, bad_pack] = [
            PackId(Hash256::digest(b"good")),
            PackId(Hash256::digest(b"bad")),
        ];
        let at = |pack: PackId, raw_length: u32| {
            IndexFile::new(vec![IndexedPack {
                id: pack,
                size: 4096,
                chunks: vec![IndexedChunk::from(BlobEntry {
                    id: chunk,
                    offset: 8,
                    length: 100,
                    raw_length,
                    encoding: Encoding::Zstd,
                    bundle_offset: None,
                })],
            }])
        };
        let mut index = Index::default();
        // The wrong place sorts first, and says another size.
        index.add_file("index/1-wrong", &at(bad_pack, 999));
        index.add_file("index/2-right", &at(good_pack, 8192));
        assert!(index.is_disputed(&chunk));
        let good_places: HashSet<_> = [(good_pack, chunk, 8)].into_iter().collect();
        let good_location = |c: &ChunkId| {
            index
                .candidates(c)
                .find(|l| good_places.contains(&(l.pack, *c, l.blob.offset)))
        };
        let open = |recorded: u64| Settled {
            wrong_sizes: Vec::new(),
            packs: BTreeSet::new(),
            index_objects: BTreeSet::new(),
            open: Some(Open {
                sizes: vec![("base/5/1259".into(), 8192, recorded, vec![chunk])],
                chunks: vec![chunk],
                held: 2,
            }),
        };
        let closed = open(16384).close(&index, &good_location, &good_places);
        assert!(closed.open.is_none());
        assert!(closed.wrong_sizes.is_empty(), "{:?}", closed.wrong_sizes);
        assert_eq!(closed.packs, [good_pack].into_iter().collect());
        assert_eq!(
            closed.index_objects,
            ["index/2-right".to_string()].into_iter().collect()
        );
        let closed = open(9000).close(&index, &good_location, &good_places);
        assert_eq!(
            closed.wrong_sizes,
            vec![("base/5/1259".to_string(), 16384, 9000)]
        );
        // No good place: the file is left to its pack's report.
        let none = HashSet::new();
        let closed = open(9000).close(&index, &|_: &ChunkId| None, &none);
        assert!(closed.wrong_sizes.is_empty() && closed.packs.is_empty());
    }

    /// A pack whose bytes are what its name says, holding a blob that does
    /// not hold its chunk (a writer's mistake, not storage damage): the
    /// `chunks` depth finds it by decoding, the `stored` depth, which
    /// decodes nothing, does not. A byte changed in storage is found at
    /// both, by the pack's name; so is a chunk placed past its pack's end.
    #[test]
    fn the_stored_depth_proves_the_stored_bytes_and_the_chunks_depth_each_chunk() {
        use super::super::index::{IndexedChunk, IndexedPack};
        use super::super::pack::{encode_chunk, pack_id, PackBuilder};
        use super::super::{Crypto, Index};
        use crate::ids::ChunkId;
        let none = Crypto::none();
        let good = b"a page of a table".repeat(400);
        let good_id = ChunkId(Hash256::digest(&good));
        // Another chunk's id on these bytes.
        let wrong_id = ChunkId(Hash256::digest(b"what the id says"));
        let mut pb = PackBuilder::new();
        pb.add(encode_chunk(good_id, &good, 3, &none));
        pb.add(encode_chunk(wrong_id, b"not what the id says", 3, &none));
        let (bytes, entries) = pb.finish(&none);
        let pack = pack_id(&bytes);
        let indexed = |entries: &[super::super::pack::BlobEntry]| IndexedPack {
            id: pack,
            size: bytes.len() as u64,
            chunks: entries.iter().map(|e| IndexedChunk::from(*e)).collect(),
        };
        let mut index = Index::default();
        index.add_pack(&indexed(&entries));
        let needed = [good_id, wrong_id];

        let (stored, placed, ..) =
            check_pack(&pack, &bytes, &needed, &index, &none, VerifyDepth::Stored);
        assert_eq!((stored, placed), (None, 2));
        let (decoded, ..) = check_pack(&pack, &bytes, &needed, &index, &none, VerifyDepth::Chunks);
        let decoded = decoded.expect("the chunks depth decodes the mistaken blob");
        assert!(decoded.contains(&format!("chunk {wrong_id}")), "{decoded}");

        let mut damaged = bytes.clone();
        let e = entries[0];
        damaged[e.offset as usize + e.length as usize / 2] ^= 0x10;
        let only_good = [good_id];
        for depth in [VerifyDepth::Stored, VerifyDepth::Chunks] {
            let (fault, ..) = check_pack(&pack, &damaged, &only_good, &index, &none, depth);
            let fault = fault.expect("a changed byte is found");
            assert!(fault.contains("its name says"), "{depth}: {fault}");
        }

        // The index places the good chunk past the pack's end.
        let mut past = entries.clone();
        past[0].offset = bytes.len() as u64;
        let mut index = Index::default();
        index.add_pack(&indexed(&past));
        let (fault, ..) = check_pack(
            &pack,
            &bytes,
            &only_good,
            &index,
            &none,
            VerifyDepth::Stored,
        );
        let fault = fault.expect("a place outside the pack is found");
        assert!(fault.contains("lies past the end of the pack"), "{fault}");
    }

    /// A version 6 manifest placing a chunk where no index object puts it
    /// (so no pack pass would ever read that place) is named; its restore
    /// still reads the chunk, from the index's place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_placed_where_no_index_object_puts_it_is_named_and_read_from_the_index() {
        use crate::engine::files::FilesSource;
        use crate::plan::Tier;
        use crate::repository::backup::{backup, BackupOptions};
        use crate::repository::materialize::{restore, RestoreOptions};
        use crate::store::local::LocalStore;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let big: Vec<u8> = (0..600_000u32)
            .flat_map(|i| (i / 7).to_le_bytes())
            .collect();
        std::fs::write(src.join("big.bin"), &big).unwrap();
        std::fs::write(src.join("small.txt"), b"small\n").unwrap();
        let store: Arc<dyn crate::store::Store> =
            Arc::new(LocalStore::open(tmp.path().join("repo")).unwrap());
        let repo = Repository::open_or_init(
            store,
            &crate::repository::RepoKey::Unencrypted,
            None,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
        let plan = PlanName::new("tree").unwrap();
        let opts = BackupOptions {
            compression_level: 3,
            retention: None,
            tier: Tier::Daily,
            progress: ProgressMode::Quiet,
        };
        let source = FilesSource::new(src.clone(), Vec::new()).unwrap();
        let first = backup(&repo, &plan, Box::new(source), &opts).await.unwrap();
        let snap = repo.find_snapshot(&plan, "latest").await.unwrap();
        let mut m = repo.load_manifest(&snap).await.unwrap();
        assert!(m
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .all(|e| e.at.is_some()));

        // The next snapshot, written by hand: big.bin's first place one
        // byte further into its pack.
        let e = m.entries.iter_mut().find(|e| e.path == "big.bin").unwrap();
        e.at.as_mut().unwrap()[0].offset += 1;
        m.previous = Some(first.snapshot);
        m.started_at += chrono::Duration::seconds(1);
        m.finished_at += chrono::Duration::seconds(1);
        m.entries_object = None;
        let (key, _) = repo
            .put_manifest(m, None, || async { Ok(()) })
            .await
            .unwrap();

        let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
            .await
            .unwrap();
        let named: Vec<&Problem> = report.problems.iter().filter(|p| p.object == key).collect();
        assert_eq!(named.len(), 1, "{:#?}", report.problems);
        assert!(
            named[0]
                .detail
                .contains("of big.bin are not where the manifest places them"),
            "{}",
            named[0].detail
        );
        assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);

        let to = tmp.path().join("restored");
        restore(
            &repo,
            &plan,
            &RestoreOptions {
                check_with: None,
                snapshot: "latest".into(),
                to: to.clone(),
                force: false,
                single_stream: false,
                keep_setid_bits: false,
                progress: ProgressMode::Quiet,
            },
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(to.join("big.bin")).unwrap(), big);
    }

    #[test]
    fn a_sample_is_the_share_rounded_up_and_at_least_one_pack() {
        let all = packs(12);
        let after = PackId(Hash256([0; 32]));
        assert_eq!(
            choose_sample(&all, share(2000), &after).len(),
            3,
            "20% of 12 is 2.4: 3"
        );
        assert_eq!(
            choose_sample(&all, share(1), &after).len(),
            1,
            "0.01% of 12: one"
        );
        assert_eq!(choose_sample(&all, Percent::HUNDRED, &after), all);
        assert!(choose_sample(&[], share(5000), &after).is_empty());
        let one = choose_sample(&all, share(1000), &all[4]);
        assert_eq!(
            one,
            vec![all[5], all[6]],
            "the packs right after the cursor"
        );
        let wrapped = choose_sample(&all, share(2500), &all[10]);
        assert_eq!(wrapped, vec![all[11], all[0], all[1]], "round the ring");
        // A cursor that is no pack (a random start, or a pruned pack) starts
        // at the next id above it.
        let between = PackId(Hash256::digest(b"not a pack"));
        let next = all.iter().find(|p| **p > between).unwrap_or(&all[0]);
        assert_eq!(choose_sample(&all, share(1), &between), vec![*next]);
    }

    #[test]
    fn successive_samples_cover_every_pack_within_a_turn_of_the_ring() {
        let all = packs(37);
        for hundredths in [1, 333, 1000, 2000, 2500, 5000, 9999] {
            let p = share(hundredths);
            let runs = 10_000usize.div_ceil(hundredths as usize);
            let mut after = PackId(Hash256::digest(b"random start"));
            let mut seen = BTreeSet::new();
            for _ in 0..runs {
                let chosen = choose_sample(&all, p, &after);
                assert_eq!(chosen.len(), p.of(all.len()));
                seen.extend(chosen.iter().copied());
                after = *chosen.last().unwrap();
            }
            assert_eq!(seen.len(), all.len(), "{p}: every pack within {runs} runs");
        }
    }

    #[test]
    fn packs_added_and_removed_between_runs_do_not_stop_the_rotation() {
        let original = packs(20);
        let mut all = original.clone();
        let (mut added, mut removed) = (Vec::new(), BTreeSet::new());
        let mut after = all[0];
        let mut seen = BTreeSet::new();
        for run in 0..15u8 {
            let chosen = choose_sample(&all, share(1000), &after);
            assert_eq!(chosen.len(), all.len().div_ceil(10));
            seen.extend(chosen.iter().copied());
            after = *chosen.last().unwrap();
            // A backup adds a pack between runs; now and then a prune
            // removes one (perhaps the cursor itself).
            let new = PackId(Hash256::digest(&[100, run]));
            all.push(new);
            all.sort();
            if run < 3 {
                added.push(new);
            }
            if run % 4 == 0 {
                removed.insert(all.remove(usize::from(run) * 7 % all.len()));
            }
        }
        for p in original.iter().chain(&added) {
            assert!(
                removed.contains(p) || seen.contains(p),
                "{p} was never read"
            );
        }
    }
}
