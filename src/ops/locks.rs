//! The lock keeper (`holdfast keep-locks`, and the daemon's job of the same
//! name): keeps every snapshot the retention policy still keeps locked, with
//! everything it needs, for as long as a snapshot of its tier taken now would
//! be locked.
//!
//! Why: a snapshot's lock is set when it is written, long enough for the
//! policy to move past it *while backups keep running*. When backups stop,
//! the policy keeps the last snapshots indefinitely (`keep_daily: 7` keeps
//! the newest seven days that have a snapshot), but their locks still run
//! out, and from then on they are as deletable as any unlocked object.
//!
//! Which snapshots are kept is decided by the prune policy's own
//! [`keep_set`]; which objects each needs is what `verify` checks for lock
//! coverage (its manifest, the config, its packs and the index objects
//! naming them) plus, for engines with a log archive, the archived logs
//! prune would still keep for them (PostgreSQL's WAL). Locks are only ever
//! lengthened, through the same routine a backup uses for reused packs.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::engine::engine_for;
use crate::error::{Error, Exit};
use crate::ids::PackId;
use crate::plan::{Plan, Tier};
use crate::repository::prune::keep_set;
use crate::repository::{locks::extend_all, pack_key, ManifestHead, RepoError, SnapshotRef};
use crate::repository::{CONFIG_KEY, REPOSITORY_LOCK};
use crate::store::{LockKind, Retention, StoreError};

/// What to do, and when "now" is.
#[derive(Debug, Clone, Copy)]
pub struct KeepLocksOptions {
    pub now: DateTime<Utc>,
    /// Report what would be extended; change nothing.
    pub dry_run: bool,
    /// A lock that already reaches this close to its target is left alone,
    /// so a keeper running every hour lengthens each lock about once a day
    /// instead of every run. Capped at half the target's length.
    pub slack: Duration,
}

impl KeepLocksOptions {
    pub fn new(now: DateTime<Utc>, dry_run: bool) -> Self {
        KeepLocksOptions {
            now,
            dry_run,
            slack: Duration::days(1),
        }
    }
}

/// One kept snapshot and the lock it ends up with.
#[derive(Debug, Clone, Serialize)]
pub struct KeptSnapshot {
    pub snapshot: String,
    pub started_at: DateTime<Utc>,
    pub tier: Option<Tier>,
    /// The policy rule that keeps it (`keep_last`, `keep_daily`, …).
    pub kept_by: String,
    /// The lock its objects should reach: now plus its tier's lock length.
    pub target: DateTime<Utc>,
    /// The earliest lock end among the objects it needs, after this run
    /// (before it, under `--dry-run`).
    pub locked_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeepLocksReport {
    pub plan: String,
    pub repository: String,
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub snapshots_kept: usize,
    /// Objects the kept snapshots need (manifests, config, packs, index
    /// objects, archived logs), each counted once.
    pub objects_checked: usize,
    /// Locks lengthened (or, under `--dry-run`, that would be).
    pub objects_extended: u64,
    /// Of those, archived log files (PostgreSQL WAL).
    pub log_files_extended: u64,
    /// Objects already locked long enough.
    pub objects_current: usize,
    /// Seconds from now until the earliest lock end among the objects kept
    /// snapshots need: the `holdfast_lock_coverage_seconds` gauge. `None`
    /// when nothing is kept or the plan does not lock (`lock.mode: none`).
    pub lock_coverage_seconds: Option<i64>,
    /// The object whose lock ends first, and when.
    pub weakest: Option<(String, DateTime<Utc>)>,
    pub snapshots: Vec<KeptSnapshot>,
}

/// One object's lock as it is now, and what it needs to become.
struct Need {
    target: Retention,
    current: Option<Retention>,
    log: bool,
}

/// Extends the locks of everything `plan`'s kept snapshots need.
pub async fn keep_locks(plan: &Plan, opts: &KeepLocksOptions) -> Result<KeepLocksReport, Error> {
    let repo = super::open_repo(plan).await?;
    let mut report = KeepLocksReport {
        plan: plan.name.to_string(),
        repository: repo.url(),
        dry_run: opts.dry_run,
        now: opts.now,
        snapshots_kept: 0,
        objects_checked: 0,
        objects_extended: 0,
        log_files_extended: 0,
        objects_current: 0,
        lock_coverage_seconds: None,
        weakest: None,
        snapshots: Vec::new(),
    };
    // `lock.mode: none`: there is no lock to keep.
    if plan.lock_for(Tier::Last, opts.now).is_none() {
        return Ok(report);
    }
    // Shared with backups (which only add and lengthen), exclusive of prune
    // (which deletes): a pack cannot disappear between its check and its
    // extension.
    let guard = repo
        .store()
        .try_lock(REPOSITORY_LOCK, LockKind::Shared)
        .await
        .map_err(|e| match e {
            s @ StoreError::Busy { .. } => Error::new(
                Exit::Busy,
                anyhow::Error::new(s).context(format!(
                    "a prune is running in the repository of plan {}",
                    plan.name
                )),
            ),
            e => e.into(),
        })?;
    let result = keep_locked(plan, &repo, opts, &mut report).await;
    guard.release().await;
    result.map(|()| report)
}

async fn keep_locked(
    plan: &Plan,
    repo: &crate::repository::Repository,
    opts: &KeepLocksOptions,
    report: &mut KeepLocksReport,
) -> Result<(), Error> {
    let store = repo.store();
    // The policy needs only the heads the listing read; each kept
    // snapshot's entries are read once, below, one manifest at a time.
    let listed = repo.snapshots(&plan.name).await?;
    listed.warn(&plan.name);
    let all: Vec<_> = listed
        .accepted
        .iter()
        .map(|a| (a.snap.id, a.head.started_at, a.head.tier))
        .collect();
    let keep = keep_set(&all, &plan.retention, plan.schedule.timezone());
    // From manifest version 5 a manifest names its packs, and which index
    // objects describe each is all that is read of the index. An older
    // kept manifest's packs are found from its chunks: the index whole.
    let kept_heads = || {
        listed
            .accepted
            .iter()
            .filter(|a| keep.contains_key(&a.snap.id))
    };
    let index = match kept_heads().any(|a| a.head.packs.is_none()) {
        true => Some(repo.load_index_strict().await?),
        false => None,
    };
    let index_objects = match kept_heads().any(|a| a.head.packs.is_some()) {
        true => repo.index_object_packs_strict().await?,
        false => Vec::new(),
    };
    let described = crate::repository::describing(&index_objects);

    let target_for = |tier: Tier| -> Option<Retention> { plan.lock_for(tier, opts.now) };
    let mut needs: BTreeMap<String, Need> = BTreeMap::new();
    let mut need = |key: String, target: Retention, log: bool| {
        let n = needs.entry(key).or_insert(Need {
            target,
            current: None,
            log,
        });
        if target.until > n.target.until {
            n.target = target;
        }
    };
    // Each kept snapshot, with the packs it needs.
    let mut kept: Vec<(
        &SnapshotRef,
        &ManifestHead,
        String,
        Retention,
        HashSet<PackId>,
    )> = Vec::new();
    let mut maybe_absent: std::collections::HashSet<String> = Default::default();
    let mut longest: Option<Retention> = None;
    // Key objects decrypt everything: each one not removed stays locked as
    // long as the config (a removed one is left to expire).
    let key_objects =
        crate::repository::keys::live_key_objects(store.as_ref(), repo.crypto()).await?;
    for a in &listed.accepted {
        let (snap, head) = (&a.snap, &a.head);
        let Some(rule) = keep.get(&snap.id) else {
            continue;
        };
        let Some(target) = target_for(head.tier.unwrap_or(Tier::Last)) else {
            continue;
        };
        let mut packs: HashSet<PackId> = HashSet::new();
        if longest.is_none_or(|l| l.until < target.until) {
            longest = Some(target);
        }
        need(snap.key.clone(), target, false);
        for key in head.entries_keys() {
            need(key.to_string(), target, false);
        }
        need(CONFIG_KEY.to_string(), target, false);
        for k in &key_objects {
            need(k.clone(), target, false);
        }
        if let Some(named) = &head.packs {
            for pack in named {
                // Every index object describing it: a restore finds its
                // chunks through them.
                let Some(sources) = described.get(pack) else {
                    return Err(RepoError::Corrupt {
                        what: "snapshot",
                        key: snap.key.clone(),
                        why: format!(
                            "pack {pack}, which it names, is in no index object; run `holdfast verify`"
                        ),
                    }
                    .into());
                };
                packs.insert(*pack);
                need(pack_key(pack), target, false);
                for source in sources {
                    need(source.to_string(), target, false);
                }
            }
            kept.push((snap, head, rule.clone(), target, packs));
            continue;
        }
        // A kept snapshot whose manifest cannot be read: refuse to guess.
        let m = repo.load_manifest(snap).await?;
        let index = index.as_ref().expect("read when a head names no packs");
        for e in &m.entries {
            for c in &e.chunks {
                if !index.contains(c) {
                    return Err(RepoError::Corrupt {
                        what: "snapshot",
                        key: snap.key.clone(),
                        why: format!(
                            "chunk {c} of {} is in no index object; run `holdfast verify`",
                            e.path
                        ),
                    }
                    .into());
                }
                // Every candidate location, and the index object naming it:
                // a restore may need any of them. Where index objects
                // disagree, a candidate's pack may not exist at all.
                for loc in index.candidates(c) {
                    if index.is_disputed(c) {
                        maybe_absent.insert(pack_key(&loc.pack));
                    }
                    if packs.insert(loc.pack) {
                        need(pack_key(&loc.pack), target, false);
                    }
                    need(index.source(loc.source).to_string(), target, false);
                }
            }
        }
        kept.push((snap, head, rule.clone(), target, packs));
    }

    // Archived logs the kept snapshots can still replay, kept as long as the
    // longest-kept of them (prune's own rule decides which are still needed).
    if let (Some(logs), Some(longest)) = (
        engine_for(plan).ok().and_then(|e| e.log_retention(plan)),
        longest,
    ) {
        let kept_manifests: Vec<&ManifestHead> = kept.iter().map(|(_, m, ..)| *m).collect();
        let expired = logs.expiry(&kept_manifests);
        for info in store.list(&logs.prefix()).await? {
            let name = info.key.rsplit('/').next().unwrap_or_default();
            if !expired(name) {
                need(info.key.clone(), longest, true);
            }
        }
    }

    // Current locks, read from the store (not from manifests, which record
    // only the lock a snapshot was written with).
    let mut heads = tokio::task::JoinSet::new();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for key in needs.keys().cloned() {
        let (store, limit) = (store.clone(), limit.clone());
        heads.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            let info = store.head(&key).await;
            (key, info)
        });
    }
    while let Some(done) = heads.join_next().await {
        let (key, info) = done.expect("lock check panicked");
        if matches!(&info, Err(e) if e.is_not_found()) && maybe_absent.contains(&key) {
            tracing::warn!(object = %key, "a pack some index object names for a chunk is not in the repository (`holdfast verify` names the index object)");
            needs.remove(&key);
            continue;
        }
        let info = info.map_err(|e| {
            Error::from(e).context(format!(
                "unable to read the lock of {key}, which a kept snapshot of plan {} needs",
                plan.name
            ))
        })?;
        needs.get_mut(&key).expect("asked for it").current = info.retention;
    }

    let mut extend: Vec<(String, Retention)> = Vec::new();
    let mut ends: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for (key, n) in &needs {
        let slack = opts.slack.min((n.target.until - opts.now) / 2);
        let enough = n.current.is_some_and(|c| c.until >= n.target.until - slack);
        if enough {
            report.objects_current += 1;
            ends.insert(key.clone(), n.current.expect("checked").until);
        } else {
            report.objects_extended += 1;
            report.log_files_extended += u64::from(n.log);
            extend.push((key.clone(), n.target));
            let after = if opts.dry_run {
                n.current.map(|c| c.until).unwrap_or(opts.now)
            } else {
                n.target.until
            };
            ends.insert(key.clone(), after);
        }
    }
    report.objects_checked = needs.len();
    if !opts.dry_run && !extend.is_empty() {
        let n = extend.len();
        report.objects_extended = extend_all(store, extend).await.map_err(|e| {
            Error::from(e).context(format!(
                "unable to extend the locks of {n} object(s) kept snapshots of plan {} need",
                plan.name
            ))
        })?;
        tracing::info!(plan = %plan.name, objects = n, "locks extended");
    }

    // Per snapshot: the earliest lock end among the objects it needs.
    for (snap, m, rule, target, packs) in &kept {
        let mut earliest = ends.get(&snap.key).copied();
        let mut consider = |key: &str| {
            if let Some(t) = ends.get(key) {
                earliest = Some(earliest.map_or(*t, |e| e.min(*t)));
            }
        };
        consider(CONFIG_KEY);
        for key in m.entries_keys() {
            consider(key);
        }
        for pack in packs {
            consider(&pack_key(pack));
        }
        report.snapshots.push(KeptSnapshot {
            snapshot: snap.id.short(),
            started_at: m.started_at,
            tier: m.tier,
            kept_by: rule.clone(),
            target: target.until,
            locked_until: earliest,
        });
    }
    report.snapshots.sort_by_key(|s| s.started_at);
    report.snapshots_kept = report.snapshots.len();
    if let Some((key, until)) = ends.iter().min_by_key(|(k, t)| (**t, (*k).clone())) {
        report.lock_coverage_seconds = Some((*until - opts.now).num_seconds());
        report.weakest = Some((key.clone(), *until));
    }
    Ok(())
}
