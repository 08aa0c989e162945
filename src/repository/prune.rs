//! `holdfast prune`: apply a plan's retention policy to its snapshots and
//! delete what no kept snapshot needs, once (and only once) its lock allows.
//!
//! Safety rests on three rules:
//! * A snapshot is removed only when the policy no longer keeps it **and** its
//!   own lock has ended; a pack only when no remaining snapshot of any plan
//!   needs it **and** its lock has ended. The store refuses anything earlier;
//!   a refusal is reported, not retried.
//! * A backup extends the lock of every pack it reuses before it writes its
//!   manifest, so a pack a running backup has just reused is locked again
//!   and cannot be deleted under it. (Without locks, prune deletes only packs
//!   that a completed backup indexed, never unindexed ones that may belong to
//!   a backup still running.)
//! * Before deleting anything, prune writes a record (`prunes/<time>-<id>`)
//!   naming the snapshots and packs it removes. Index loading leaves those
//!   packs out, so no later backup deduplicates against a deleted pack, and
//!   `verify` accepts a hash-chain link to a pruned snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{
    decode_json_zst, pack_key, Manifest, ManifestHead, RepoError, Repository, SnapshotRef,
    FORMAT_VERSION,
};
use crate::ids::{Hash256, PackId, SnapshotId};
use crate::plan::{PlanName, RetentionSpec, Tier};
use crate::store::{LockGuard, LockKind, PutOptions, Retention, StoreError};

/// The object written before a prune deletes anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRecord {
    pub format: String,
    pub version: u32,
    pub plan: PlanName,
    pub at: DateTime<Utc>,
    pub snapshots: Vec<SnapshotId>,
    pub packs: Vec<PackId>,
}

pub const PRUNES_PREFIX: &str = "prunes/";

impl PruneRecord {
    /// Decodes a prune record after checking its authenticity (sealed under
    /// its key without the trailing hash, `prunes/<time>-`).
    pub fn decode(key: &str, bytes: &[u8], crypto: &super::Crypto) -> Result<Self, RepoError> {
        let ad = super::crypto::content_addressed_ad(key);
        let plain = super::open_sealed(crypto, super::PRUNE_RECORD_CAP, key, ad, bytes)?;
        let r: PruneRecord = decode_json_zst(super::PRUNE_RECORD_CAP, key, &plain)?;
        if r.format != "holdfast-prune" {
            return Err(RepoError::Corrupt {
                what: "prune record",
                key: key.to_string(),
                why: "not a holdfast prune record".into(),
            });
        }
        Ok(r)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotVerdict {
    pub snapshot: String,
    pub started_at: DateTime<Utc>,
    pub tier: Option<Tier>,
    pub retain_until: Option<DateTime<Utc>>,
    /// Why it stays (`keep_last`, `keep_daily`, `locked until …`), or why it goes.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub object: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub plan: String,
    pub repository: String,
    pub dry_run: bool,
    pub kept: Vec<SnapshotVerdict>,
    /// Out of policy but still locked: removed by a later prune.
    pub held_by_lock: Vec<SnapshotVerdict>,
    pub removed: Vec<SnapshotVerdict>,
    pub packs_removed: usize,
    pub bytes_removed: u64,
    pub index_objects_removed: usize,
    /// Entries objects (manifest version 4 on): the removed snapshots', and
    /// those of backups killed before their manifest, once their lock ended.
    pub entries_objects_removed: usize,
    pub other_objects_removed: usize,
    /// Archived PostgreSQL WAL files older than every remaining base backup.
    pub wal_files_removed: usize,
    pub wal_bytes_removed: u64,
    /// Deletes the store refused (a lock still holding): reported, not retried.
    pub refused: Vec<Refusal>,
}

/// Which of a plan's snapshots the policy keeps, and by which rule.
///
/// `keep_last N` keeps the newest N. `keep_<period> N` keeps, for each of the
/// newest N periods that have one, the first snapshot of that period whose
/// tier is at least that rule's (the one taken for it, and locked for it).
pub fn keep_set(
    snapshots: &[(SnapshotId, DateTime<Utc>, Option<Tier>)],
    retention: &RetentionSpec,
    tz: Tz,
) -> HashMap<SnapshotId, String> {
    let mut sorted: Vec<_> = snapshots.to_vec();
    sorted.sort_by_key(|(id, at, _)| (*at, *id));
    let mut keep: HashMap<SnapshotId, String> = HashMap::new();
    if let Some(n) = retention.keep_last {
        for (id, _, _) in sorted.iter().rev().take(n as usize) {
            keep.entry(*id).or_insert_with(|| "keep_last".into());
        }
    }
    for tier in Tier::PERIODIC {
        let Some(n) = retention.keep(tier) else {
            continue;
        };
        // First eligible snapshot of each period, oldest first.
        let mut firsts: BTreeMap<(i32, u32, u32), SnapshotId> = BTreeMap::new();
        for (id, at, t) in &sorted {
            // Manifests from before tiers were recorded count by time alone.
            if t.is_some_and(|t| t < tier) {
                continue;
            }
            firsts.entry(tier.period(*at, tz)).or_insert(*id);
        }
        for id in firsts.values().rev().take(n as usize) {
            keep.entry(*id).or_insert_with(|| format!("keep_{tier}"));
        }
    }
    keep
}

pub struct PruneOptions<'a> {
    /// The plan's log archive and which of its files a restore can still
    /// use (PostgreSQL's WAL), if the plan's engine has one.
    pub logs: Option<&'a dyn super::log_archive::LogRetention>,
    pub retention: RetentionSpec,
    pub timezone: Tz,
    pub dry_run: bool,
    /// Lock for the prune record itself.
    pub record_lock: Option<Retention>,
    pub now: DateTime<Utc>,
}

/// Applies the policy to `plan`'s snapshots and removes what it can.
pub async fn prune(
    repo: &Repository,
    plan: &PlanName,
    opts: &PruneOptions<'_>,
) -> Result<PruneReport, RepoError> {
    let lock = repo
        .store()
        .try_lock(&format!("backup-{plan}"), LockKind::Exclusive)
        .await?;
    // Packs are shared by every plan's snapshots: no backup of any plan may
    // reuse one while this prune decides it is dead and deletes it.
    let repository = match repo
        .store()
        .try_lock(super::REPOSITORY_LOCK, LockKind::Exclusive)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            lock.release().await;
            return Err(e.into());
        }
    };
    let result = prune_locked(repo, plan, opts, &[lock.as_ref(), repository.as_ref()]).await;
    repository.release().await;
    lock.release().await;
    result
}

async fn prune_locked(
    repo: &Repository,
    plan: &PlanName,
    opts: &PruneOptions<'_>,
    held: &[&dyn LockGuard],
) -> Result<PruneReport, RepoError> {
    let store = repo.store();
    // Before each delete: the locks must still certainly hold, or a backup
    // that took the repository over could be reusing what goes next.
    let still_held = || -> Result<(), RepoError> {
        for guard in held {
            guard.check()?;
        }
        Ok(())
    };
    // Everything must be readable before anything is deleted.
    repo.prune_records().await?;
    let pruned = repo.pruned_packs().await?;
    // Which index objects describe each pack (every one readable: its hash,
    // seal and version; its chunks' places are checked by every reader that
    // uses them): a pack no index object describes may be a running
    // backup's.
    let index_objects = repo.index_object_packs_strict().await?;
    let described = super::describing(&index_objects);
    let mut accepted: Vec<(SnapshotRef, ManifestHead)> = Vec::new();
    // Listed twice: once whole, then plan by plan ([`Repository::snapshots`]). Some servers' paged
    // listings skip keys when one plan's name is a prefix of another's
    // (SeaweedFS 4.48: `snapshots/home/` beside `snapshots/home-docs/`).
    let mut keys: BTreeSet<String> = BTreeSet::new();
    let mut plans: BTreeSet<String> = BTreeSet::new();
    for info in store.list("snapshots/").await? {
        if let Some(plan) = info.key.split('/').nth(1) {
            plans.insert(plan.to_string());
        }
        keys.insert(info.key);
    }
    plans.insert(plan.to_string());
    // Each plan's believed snapshots. Rejected manifests (forged, replayed,
    // future-dated) are not snapshots: they take no place in the keep set
    // and prune never deletes them (they are evidence; `verify` names
    // them). Those that read keep their packs, though: deleting data on the
    // word of a check is the one mistake prune must not make.
    let mut rejected_packs: HashSet<PackId> = HashSet::new();
    // Entries objects some manifest names other than a removed snapshot's
    // (those of rejected manifests included: prune never deletes evidence).
    let mut named_entries: HashSet<String> = HashSet::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut evidence: Vec<SnapshotRef> = Vec::new();
    for p in &plans {
        let Ok(p) = PlanName::new(p) else {
            continue;
        };
        let listed = repo.snapshots(&p).await?;
        for r in &listed.rejected {
            seen.insert(r.object.clone());
            if &p == plan {
                r.warn(plan);
            }
            // An unreadable manifest could need any pack: refuse to guess.
            if r.kind == super::RejectKind::Unreadable {
                return Err(RepoError::Corrupt {
                    what: "snapshot manifest",
                    key: r.object.clone(),
                    why: r.detail.clone(),
                });
            }
            evidence.extend(SnapshotRef::from_key(&r.object));
        }
        for a in listed.accepted {
            seen.insert(a.snap.key.clone());
            accepted.push((a.snap, a.head));
        }
    }
    // Keys under a plan name that is not a valid plan name: nobody's
    // snapshot, but their packs are kept all the same.
    evidence.extend(
        keys.iter()
            .filter(|k| !seen.contains(*k))
            .filter_map(|k| SnapshotRef::from_key(k)),
    );
    // Every plan's manifests (packs are shared across plans by dedup), each
    // kept as its head and the packs it needs. From manifest version 5 the
    // head names them; an older manifest's are found from its chunks in the
    // index, which is then read whole (one manifest's entries in memory at a
    // time, however many snapshots the plans keep).
    let chunk_index = if accepted.iter().any(|(_, h)| h.packs.is_none()) || !evidence.is_empty() {
        Some(repo.load_index_strict_split().await?)
    } else {
        None
    };
    let packs_of = |m: &Manifest| match (&m.packs, &chunk_index) {
        (Some(packs), _) => packs.iter().copied().collect(),
        (None, Some((index, fallback))) => needed_packs(m, index, fallback),
        (None, None) => unreachable!("the index is read when a manifest names no packs"),
    };
    let mut all: Vec<(SnapshotRef, ManifestHead, HashSet<PackId>)> = Vec::new();
    for (snap, head) in accepted {
        let packs = match &head.packs {
            Some(packs) => packs.iter().copied().collect(),
            None => packs_of(&repo.load_manifest(&snap).await?),
        };
        all.push((snap, head, packs));
    }
    for snap in &evidence {
        keep_evidence(
            repo,
            snap,
            &packs_of,
            &mut rejected_packs,
            &mut named_entries,
        )
        .await;
    }
    let mine: Vec<(SnapshotId, DateTime<Utc>, Option<Tier>)> = all
        .iter()
        .filter(|(_, m, _)| &m.plan == plan)
        .map(|(s, m, _)| (s.id, m.started_at, m.tier))
        .collect();
    let keep = keep_set(&mine, &opts.retention, opts.timezone);

    let mut report = PruneReport {
        plan: plan.to_string(),
        repository: repo.url(),
        dry_run: opts.dry_run,
        kept: Vec::new(),
        held_by_lock: Vec::new(),
        removed: Vec::new(),
        packs_removed: 0,
        bytes_removed: 0,
        index_objects_removed: 0,
        entries_objects_removed: 0,
        other_objects_removed: 0,
        wal_files_removed: 0,
        wal_bytes_removed: 0,
        refused: Vec::new(),
    };
    let mut removing: Vec<(SnapshotRef, Vec<String>)> = Vec::new();
    let mut remaining: Vec<(&ManifestHead, &HashSet<PackId>)> = Vec::new();
    for (snap, m, packs) in &all {
        if &m.plan != plan {
            remaining.push((m, packs));
            continue;
        }
        let mut locked_until = m.retention.map(|r| r.until).filter(|u| *u > opts.now);
        if locked_until.is_none() && !keep.contains_key(&snap.id) {
            // The lock keeper may have lengthened the manifest's lock past
            // what it records: the store's word decides. Deleting it anyway
            // would be refused, after the prune record had already named it
            // (and its packs) as gone.
            locked_until = store
                .head(&snap.key)
                .await?
                .retention
                .map(|r| r.until)
                .filter(|u| *u > opts.now);
        }
        let verdict = |reason: String| SnapshotVerdict {
            snapshot: snap.id.short(),
            started_at: m.started_at,
            tier: m.tier,
            retain_until: m.retention.map(|r| r.until),
            reason,
        };
        if let Some(rule) = keep.get(&snap.id) {
            report.kept.push(verdict(rule.clone()));
            remaining.push((m, packs));
        } else if let Some(until) = locked_until {
            report
                .held_by_lock
                .push(verdict(format!("out of policy; locked until {until}")));
            remaining.push((m, packs));
        } else {
            report
                .removed
                .push(verdict("out of policy, lock ended".into()));
            removing.push((snap.clone(), m.entries_keys().map(str::to_string).collect()));
        }
    }

    // Packs: everything listed that no remaining snapshot needs (nor a
    // rejected manifest that reads: see above).
    let mut live: HashSet<PackId> = rejected_packs;
    for (m, packs) in &remaining {
        live.extend(packs.iter().copied());
        named_entries.extend(m.entries_keys().map(str::to_string));
    }
    // A removed snapshot's entries object goes with it, unless another
    // manifest names it too.
    for (_, entries) in removing.iter_mut() {
        entries.retain(|e| !named_entries.contains(e));
    }
    // Entries objects to delete: each removed snapshot's own, after its
    // manifest; and any no manifest names (a backup killed between its
    // entries and its manifest) whose lock has ended. Without a lock, as
    // with unindexed packs, nothing says no backup is still writing it.
    let mut dead_entries: Vec<String> = Vec::new();
    for info in store.list(super::manifest::ENTRIES_PREFIX).await? {
        if named_entries.contains(&info.key) || removing.iter().any(|(_, e)| e.contains(&info.key))
        {
            continue;
        }
        let ended = store
            .head(&info.key)
            .await?
            .retention
            .is_some_and(|r| r.until <= opts.now);
        if ended {
            dead_entries.push(info.key);
        }
    }
    let mut dead: BTreeMap<PackId, u64> = BTreeMap::new();
    for info in store.list("packs/").await? {
        let Some(id) = info
            .key
            .rsplit('/')
            .next()
            .and_then(|h| h.parse::<Hash256>().ok())
        else {
            continue;
        };
        let id = PackId(id);
        if live.contains(&id) {
            continue;
        }
        // Unindexed packs may belong to a backup still running; only their
        // lock (which such a backup just set) says when they are old enough.
        let indexed = described.contains_key(&id) && !pruned.contains(&id);
        if !indexed && store.head(&info.key).await?.retention.is_none() {
            continue;
        }
        dead.insert(id, info.size);
    }

    // Archived logs no remaining snapshot of this plan can replay (for
    // PostgreSQL: WAL before the oldest remaining base backup's first
    // segment). Without a remaining base backup, none is touched.
    let plan_remaining: Vec<&ManifestHead> = remaining
        .iter()
        .map(|(m, _)| *m)
        .filter(|m| &m.plan == plan)
        .collect();
    let mut expired_logs = Vec::new();
    if let Some(logs) = opts.logs {
        let expired = logs.expiry(&plan_remaining);
        for info in store.list(&logs.prefix()).await? {
            let name = info.key.rsplit('/').next().unwrap_or_default();
            if expired(name) {
                expired_logs.push(info);
            }
        }
    }
    if opts.dry_run {
        report.packs_removed = dead.len();
        report.bytes_removed = dead.values().sum();
        report.wal_files_removed = expired_logs.len();
        report.wal_bytes_removed = expired_logs.iter().map(|i| i.size).sum();
        report.entries_objects_removed =
            dead_entries.len() + removing.iter().map(|(_, e)| e.len()).sum::<usize>();
        return Ok(report);
    }
    if removing.is_empty() && dead.is_empty() && expired_logs.is_empty() && dead_entries.is_empty()
    {
        return Ok(report);
    }

    let record = PruneRecord {
        format: "holdfast-prune".into(),
        version: FORMAT_VERSION,
        plan: plan.clone(),
        at: opts.now,
        snapshots: removing.iter().map(|(s, _)| s.id).collect(),
        packs: dead.keys().copied().collect(),
    };
    let bytes = super::encode_json_zst_within(
        super::PRUNE_RECORD_CAP,
        &format!("the new prune record of plan {plan}"),
        &record,
    )?;
    let ad = format!("{PRUNES_PREFIX}{}-", opts.now.format("%Y%m%dT%H%M%S%.3fZ"));
    let bytes = repo.crypto().seal(&ad, bytes);
    let sha = Hash256::digest(&bytes);
    let key = format!("{ad}{}", sha.to_hex());
    // The first commit point: refresh the leases now.
    for guard in held {
        guard.confirm().await?;
    }
    store
        .put(
            &key,
            Bytes::from(bytes),
            &PutOptions {
                sha256: sha,
                retention: opts.record_lock,
            },
        )
        .await?;

    let mut refuse = |object: &str, e: StoreError| -> Result<(), RepoError> {
        match e {
            StoreError::NotFound { .. } => Ok(()),
            e @ (StoreError::Retained { .. } | StoreError::Denied { .. }) => {
                report.refused.push(Refusal {
                    object: object.to_string(),
                    detail: e.to_string(),
                });
                Ok(())
            }
            e => Err(e.into()),
        }
    };
    let mut entries_removed = 0;
    for (snap, entries) in &removing {
        still_held()?;
        match store.delete(&snap.key).await {
            // Gone now, or already (an earlier prune stopped here): its
            // entries go after it.
            Ok(()) | Err(StoreError::NotFound { .. }) => dead_entries.extend(entries.clone()),
            Err(e) => refuse(&snap.key, e)?,
        }
    }
    for key in &dead_entries {
        still_held()?;
        match store.delete(key).await {
            Ok(()) => entries_removed += 1,
            Err(e) => refuse(key, e)?,
        }
    }
    let mut gone: BTreeSet<PackId> = BTreeSet::new();
    let mut packs_removed = 0;
    let mut bytes_removed = 0;
    for (pack, size) in &dead {
        let key = pack_key(pack);
        still_held()?;
        match store.delete(&key).await {
            Ok(()) => {
                gone.insert(*pack);
                packs_removed += 1;
                bytes_removed += size;
            }
            Err(e) => refuse(&key, e)?,
        }
    }
    // Index objects all of whose packs are gone (now or by earlier prunes,
    // this one's record included), as read above: prune holds the
    // repository alone, so no backup has written one since.
    let pruned = repo.pruned_packs().await?;
    let mut index_removed = 0;
    for (key, packs) in &index_objects {
        if packs
            .iter()
            .all(|p| gone.contains(p) || (pruned.contains(p) && !live.contains(p)))
        {
            still_held()?;
            match store.delete(key).await {
                Ok(()) => index_removed += 1,
                Err(e) => refuse(key, e)?,
            }
        }
    }
    // Expired `doctor` canaries.
    let mut other = 0;
    for info in store.list("doctor/").await? {
        still_held()?;
        match store.delete(&info.key).await {
            Ok(()) => other += 1,
            Err(StoreError::Retained { .. }) => {}
            Err(e) => refuse(&info.key, e)?,
        }
    }
    // Archived logs no remaining snapshot can replay.
    for info in &expired_logs {
        still_held()?;
        match store.delete(&info.key).await {
            Ok(()) => {
                report.wal_files_removed += 1;
                report.wal_bytes_removed += info.size;
            }
            Err(e) => refuse(&info.key, e)?,
        }
    }
    report.packs_removed = packs_removed;
    report.bytes_removed = bytes_removed;
    report.index_objects_removed = index_removed;
    report.entries_objects_removed = entries_removed;
    report.other_objects_removed = other;
    Ok(report)
}

/// What a manifest prune does not treat as a snapshot (rejected, or under no
/// valid plan name) keeps: the packs its chunks may be in (those it names,
/// from version 5), and its entries object. A manifest or entries object
/// that cannot be read keeps nothing it could not name.
async fn keep_evidence(
    repo: &Repository,
    snap: &SnapshotRef,
    packs_of: &impl Fn(&Manifest) -> HashSet<PackId>,
    packs: &mut HashSet<PackId>,
    entries: &mut HashSet<String>,
) {
    match repo.load_manifest(snap).await {
        Ok(m) => {
            packs.extend(packs_of(&m));
            entries.extend(m.entries_keys().map(str::to_string));
        }
        // Its entries object may be what failed: the head still names it,
        // and from version 5 its packs.
        Err(_) => {
            if let Ok(head) = repo.load_manifest_head(snap).await {
                entries.extend(head.entries_keys().map(str::to_string));
                packs.extend(head.packs.into_iter().flatten());
            }
        }
    }
}

/// The packs `m`'s chunks may be in: every candidate location (which one
/// holds a chunk is not known without reading it, so none may go). A chunk
/// found only in a pack some prune record names keeps that pack: a real
/// prune never names a pack a remaining snapshot needs, so such a record is
/// forged (or stale) about it, and must not get real data deleted.
fn needed_packs(m: &Manifest, index: &super::Index, fallback: &super::Index) -> HashSet<PackId> {
    let mut packs = HashSet::new();
    for c in m.entries.iter().flat_map(|e| &e.chunks) {
        let mut indexed = false;
        for loc in index.candidates(c) {
            packs.insert(loc.pack);
            indexed = true;
        }
        if !indexed {
            if let Some(loc) = fallback.get(c) {
                packs.insert(loc.pack);
            }
        }
    }
    packs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn id(n: u8) -> SnapshotId {
        SnapshotId(Hash256([n; 32]))
    }

    #[test]
    fn keeps_the_newest_and_the_first_of_each_period() {
        // Hourly backups over three days; the first of each day is `daily`.
        let mut snaps = Vec::new();
        let mut n = 0u8;
        for day in 1..=3 {
            for hour in 0..4 {
                let tier = if hour == 0 { Tier::Daily } else { Tier::Last };
                snaps.push((
                    id(n),
                    t(&format!("2026-11-0{day}T0{hour}:00:00Z")),
                    Some(tier),
                ));
                n += 1;
            }
        }
        let policy = RetentionSpec {
            keep_last: Some(3),
            keep_daily: Some(2),
            ..Default::default()
        };
        let keep = keep_set(&snaps, &policy, Tz::UTC);
        let mut kept: Vec<u8> = keep.keys().map(|k| k.0 .0[0]).collect();
        kept.sort();
        // Newest three (9, 10, 11) and the daily of days 2 and 3 (4, 8).
        assert_eq!(kept, vec![4, 8, 9, 10, 11]);
        assert_eq!(keep[&id(4)], "keep_daily");
        assert_eq!(keep[&id(11)], "keep_last");
    }
}
