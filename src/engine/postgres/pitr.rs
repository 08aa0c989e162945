//! Point-in-time restore of a PostgreSQL cluster: a base backup from the
//! repository, then the archived WAL replayed by PostgreSQL itself up to a
//! target (a time, an LSN, the end of the archive, or just consistency).
//!
//! Order of work, so nothing is written before the restore is known to work:
//! 1. Pick the newest base backup that is consistent before the target.
//! 2. Walk the WAL it needs, segment by segment along the target timeline's
//!    history: each one must be in the archive and match its SHA-256 (the
//!    first missing or corrupt one is named). For a time target the walk
//!    also reads the commit times in each segment (`pg_waldump`) and ends at
//!    the first segment with a commit after the target: if there is none,
//!    the target is past the newest archived transaction and is refused with
//!    the restorable window. Verified segments are kept in a spool that
//!    `wal-fetch --spool` hands to PostgreSQL, so recovery does not fetch
//!    them again.
//! 3. Restore the base backup into the empty data directory (parallel reads,
//!    checked, renamed into place), write `recovery.signal` and the recovery
//!    settings into `postgresql.auto.conf`.
//! 4. With `--start`: start the server, wait until it has replayed to the
//!    target and promoted, and report what it did.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::ids::PackId;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::backup::PGDATA_PREFIX;
use super::meta::BaseBackup;
use super::recovery::{prepare_recovery, start_and_recover, PgServer};
use super::wal::{self, parse_history, timeline_for, Lsn, Segment, TimelineStep};
use super::waldump::Waldump;
use super::PgError;
use crate::engine::point::{Pending, Reach, Window};
use crate::engine::scratch::{recovery_deadline, ScratchServer};
use crate::ids::SnapshotId;
use crate::plan::PlanName;
use crate::progress::ProgressMode;
use crate::repository::log_archive::{self, LogError};
use crate::repository::materialize::{
    absolute, check_target, stage, Materialize, MaterializeError, Streamed,
};
use crate::repository::{Manifest, Repository};
use crate::store::Store;

/// Where verified segments wait for `wal-fetch --spool`, inside the data
/// directory's `pg_wal` (never part of a base backup).
pub const SPOOL_DIR: &str = "pg_wal/holdfast-spool";

/// How many segments are fetched ahead of the one being checked (each up to
/// 16 MiB decoded in memory while in flight).
const FETCH_AHEAD: usize = 4;

/// What a restored cluster is for, which decides whether it may archive into
/// the plan. A scratch copy that archived would write its own timeline into
/// production's archive, and every later restore would follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyRole {
    /// It replaces the cluster: it archives into the plan as the cluster did.
    Rebuild,
    /// A copy beside the cluster (a table to fetch, a drill): `archive_mode
    /// = off`, kept outside the block the runbook says to delete.
    Scratch,
}

impl CopyRole {
    /// `--archive` / `--no-archive` decide; without either, a restore into
    /// the cluster's own data directory (as the base backup recorded it) is
    /// a rebuild and anything else a scratch copy. Returns why, for the report.
    pub fn decide(archive: Option<bool>, base: &BaseBackup, target: &Path) -> (CopyRole, String) {
        match (archive, &base.data_directory) {
            (Some(true), _) => (
                CopyRole::Rebuild,
                "--archive: this copy replaces the cluster".into(),
            ),
            (Some(false), _) => (CopyRole::Scratch, "--no-archive".into()),
            (None, Some(own)) if same_dir(own, target) => (
                CopyRole::Rebuild,
                format!("restored into the cluster's own data directory {}", own.display()),
            ),
            (None, Some(own)) => (
                CopyRole::Scratch,
                format!(
                    "restored to {}, not the cluster's data directory {}; pass --archive if this copy replaces the cluster",
                    target.display(),
                    own.display()
                ),
            ),
            (None, None) => (
                CopyRole::Scratch,
                "the base backup does not record the cluster's data directory (its role could not read it); pass --archive if this copy replaces the cluster".into(),
            ),
        }
    }
}

/// The same directory, also when one path goes through a symbolic link.
fn same_dir(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| {
        std::fs::canonicalize(p).ok().or_else(|| {
            let parent = std::fs::canonicalize(p.parent()?).ok()?;
            Some(parent.join(p.file_name()?))
        })
    };
    a == b || matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTarget {
    /// `recovery_target_time`: the state as of this instant.
    Time(DateTime<Utc>),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
    /// Replay every archived segment, then promote.
    Latest,
    /// Stop as soon as the base backup is consistent.
    Immediate,
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgTarget::Time(t) => write!(f, "time {}", t.to_rfc3339()),
            PgTarget::Lsn(l) => write!(f, "LSN {l}"),
            PgTarget::Latest => f.write_str("the end of the archived WAL"),
            PgTarget::Immediate => f.write_str("the end of the base backup"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PitrOptions {
    pub target: PgTarget,
    /// Use this base backup (id prefix) instead of choosing one.
    pub snapshot: Option<String>,
    pub to: PathBuf,
    /// The plan file, for the `restore_command` written into the restore.
    pub plan_file: PathBuf,
    pub start: bool,
    pub port: Option<u16>,
    /// `--archive` (Some(true)) or `--no-archive` (Some(false)); `None`:
    /// decided by where the copy goes (see [`CopyRole::decide`]).
    pub archive: Option<bool>,
    pub progress: ProgressMode,
}

/// What the archive holds for a plan: file names under `wal/<plan>/` (a
/// file archived under an alternative name counts under its own name), and
/// what has been learnt by reading: timeline histories, files found sound,
/// names holding only foreign objects.
pub struct WalArchive {
    store: Arc<dyn Store>,
    crypto: crate::repository::Crypto,
    plan: PlanName,
    names: BTreeSet<String>,
    histories: HashMap<u32, Vec<TimelineStep>>,
    sound: BTreeSet<String>,
    foreign: BTreeSet<String>,
}

impl WalArchive {
    pub async fn list(repo: &Repository, plan: &PlanName) -> Result<WalArchive, PgError> {
        let prefix = wal::wal_prefix(plan);
        let names = repo
            .store()
            .list(&prefix)
            .await
            .map_err(|e| PgError::Repo(e.into()))?
            .into_iter()
            .filter_map(|o| {
                let key = log_archive::split_alternative(&o.key).map_or(o.key.as_str(), |(c, _)| c);
                key.strip_prefix(&prefix).map(str::to_owned)
            })
            .collect();
        Ok(WalArchive {
            store: repo.store().clone(),
            crypto: repo.crypto().clone(),
            plan: plan.clone(),
            names,
            histories: HashMap::new(),
            sound: BTreeSet::new(),
            foreign: BTreeSet::new(),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains(name) && !self.foreign.contains(name)
    }

    /// Reads `name` once to learn whether anything sound is at its names:
    /// `Ok(false)` (and remembered) when only foreign objects are.
    async fn sound(&mut self, name: &str) -> Result<bool, PgError> {
        if self.sound.contains(name) {
            return Ok(true);
        }
        if !self.has(name) {
            return Ok(false);
        }
        let key = format!("{}{name}", wal::wal_prefix(&self.plan));
        match log_archive::resolve(self.store.as_ref(), &self.crypto, &key).await {
            Ok(_) => {
                self.sound.insert(name.to_string());
                Ok(true)
            }
            Err(LogError::OnlyForeign { .. } | LogError::NotFound { .. }) => {
                self.foreign.insert(name.to_string());
                Ok(false)
            }
            Err(e) => Err(fetch_error(e)),
        }
    }

    async fn history(&mut self, timeline: u32) -> Result<Vec<TimelineStep>, PgError> {
        if let Some(h) = self.histories.get(&timeline) {
            return Ok(h.clone());
        }
        let name = format!("{timeline:08X}.history");
        let steps = if timeline == 1 {
            vec![TimelineStep {
                timeline: 1,
                begins: Lsn(0),
            }]
        } else {
            let text = self.fetch(&name).await?;
            parse_history(timeline, &String::from_utf8_lossy(&text)).map_err(|why| {
                PgError::History {
                    key: format!("{}{name}", wal::wal_prefix(&self.plan)),
                    why,
                }
            })?
        };
        self.histories.insert(timeline, steps.clone());
        Ok(steps)
    }

    async fn fetch(&self, name: &str) -> Result<Vec<u8>, PgError> {
        fetch_checked(self.store.as_ref(), &self.crypto, &self.plan, name).await
    }

    /// The ancestry of the newest timeline that follows from `base`, much
    /// as PostgreSQL's `recovery_target_timeline = 'latest'` finds it (the
    /// highest consecutive `N.history` after the backup's own timeline), but
    /// skipping, with a warning, a history holdfast did not archive (foreign,
    /// or not a history) and one of a timeline on which no WAL segment was
    /// ever archived: anyone with write access to the bucket can add
    /// `N.history`, and one that was followed would block or cut short every
    /// restore. The restore pins the timeline chosen here
    /// (`recovery_target_timeline`), so PostgreSQL follows the same one.
    async fn target_ancestry(&mut self, base: &BaseBackup) -> Result<Vec<TimelineStep>, PgError> {
        let mut newest = base.timeline;
        while self.names.contains(&format!("{:08X}.history", newest + 1)) {
            newest += 1;
        }
        while newest > base.timeline {
            let name = format!("{newest:08X}.history");
            let key = format!("{}{name}", wal::wal_prefix(&self.plan));
            let skip = if !self.segments_on(newest) {
                Some("no WAL segment of that timeline is archived".to_string())
            } else {
                match self.history(newest).await {
                    Ok(_) => None,
                    Err(PgError::History { why, .. }) => Some(why),
                    Err(PgError::WalSegment { problem, .. }) => Some(format!("it {problem}")),
                    Err(e) => return Err(e),
                }
            };
            let Some(why) = skip else { break };
            tracing::warn!(object = %key, "timeline history {key} is not followed ({why}); restoring along timeline {}. If nobody promoted a server to timeline {newest}, someone with write access to the bucket added it: see docs/runbook.md, \"A foreign object in the WAL archive\"", newest - 1);
            newest -= 1;
        }
        let ancestry = self.history(newest).await?;
        // The backup must lie on that history, before its timeline was left.
        let pos = ancestry.iter().position(|s| s.timeline == base.timeline);
        let left_at = pos.and_then(|i| ancestry.get(i + 1)).map(|s| s.begins);
        match (pos, left_at) {
            (None, _) => Err(PgError::NotDescendant {
                newest,
                timeline: base.timeline,
                backup: base.snapshot.id.short(),
            }),
            (Some(_), Some(left)) if left < base.stop => Err(PgError::BranchedBefore {
                backup: base.snapshot.id.short(),
                timeline: base.timeline,
                stop: base.stop,
                left,
            }),
            _ => Ok(ancestry),
        }
    }

    fn segment_name(&self, ancestry: &[TimelineStep], number: u64, size: u64) -> String {
        Segment {
            timeline: timeline_for(ancestry, number, size),
            number,
        }
        .name(size)
    }

    /// Whether any WAL segment (or `.partial`) of `timeline` is listed.
    fn segments_on(&self, timeline: u32) -> bool {
        let tl = format!("{timeline:08X}");
        self.names
            .range(tl.clone()..)
            .take_while(|n| n.starts_with(&tl))
            .any(|n| n.len() == 24 || n.ends_with(".partial"))
    }

    /// The newest segment number present on `ancestry` at or after `from`,
    /// read to be sure: a foreign object planted at the name of a segment
    /// not yet archived is not the end of the archive.
    async fn newest_on(
        &mut self,
        ancestry: &[TimelineStep],
        from: u64,
        size: u64,
    ) -> Result<Option<u64>, PgError> {
        loop {
            let newest = self
                .names
                .iter()
                .filter(|n| !self.foreign.contains(*n))
                .filter_map(|n| Segment::parse(n, size))
                .filter(|s| {
                    s.number >= from && timeline_for(ancestry, s.number, size) == s.timeline
                })
                .max_by_key(|s| s.number);
            let Some(seg) = newest else { return Ok(None) };
            if self.sound(&seg.name(size)).await? {
                return Ok(Some(seg.number));
            }
        }
    }

    /// The first segment missing between `from` and `to` (inclusive).
    fn first_missing(
        &self,
        ancestry: &[TimelineStep],
        from: u64,
        to: u64,
        size: u64,
    ) -> Option<String> {
        (from..=to)
            .map(|n| self.segment_name(ancestry, n, size))
            .find(|name| !self.has(name))
    }
}

/// Fetches one archived file (under its name or an alternative one) and
/// checks it against its SHA-256.
async fn fetch_checked(
    store: &dyn Store,
    crypto: &crate::repository::Crypto,
    plan: &PlanName,
    name: &str,
) -> Result<Vec<u8>, PgError> {
    let key = format!("{}{name}", wal::wal_prefix(plan));
    log_archive::get(store, crypto, &key)
        .await
        .map_err(fetch_error)
}

fn fetch_error(e: LogError) -> PgError {
    match e {
        LogError::NotFound { key } => missing(&key, "it is listed but cannot be read"),
        LogError::Store(e) => PgError::Repo(e.into()),
        LogError::Corrupt { key, why } => PgError::WalSegment {
            key,
            problem: format!("is corrupt ({why})"),
        },
        LogError::Unauthenticated { key, why } => PgError::WalSegment {
            key,
            problem: format!("is not authentic ({why})"),
        },
        LogError::OnlyForeign { key, foreign } => PgError::WalSegment {
            key,
            problem: format!(
                "is corrupt or foreign, and no alternative name holds it sound: {foreign}"
            ),
        },
        other => PgError::Log(other),
    }
}

fn missing(key: &str, why: &str) -> PgError {
    PgError::WalSegment {
        key: key.to_string(),
        problem: format!("is missing from the archive ({why})"),
    }
}

/// The plan's base backups, oldest first.
pub async fn base_backups(repo: &Repository, plan: &PlanName) -> Result<Vec<BaseBackup>, PgError> {
    // The listing has read each manifest's head (an unreadable one is
    // logged as rejected): the entries are not needed to choose a base.
    let listed = repo.snapshots(plan).await?;
    listed.warn(plan);
    let mut out: Vec<BaseBackup> = listed
        .accepted
        .iter()
        .filter_map(|a| BaseBackup::from_head(&a.snap, &a.head))
        .collect();
    out.sort_by_key(|b| b.consistent_at);
    Ok(out)
}

/// How far a plan's restores reach: for each base backup whose own WAL is
/// all archived, the stretch from its consistent point to the newest
/// transaction reachable through unbroken WAL, or to the newest base
/// backup's consistent point if that is later (a backup taken while nothing
/// was written is newer than any archived transaction, and restorable).
/// Backups reaching the same segment share a window; backups still waiting
/// for their WAL are listed as pending, with the segment they wait for.
pub async fn restorable_windows(repo: &Repository, plan: &PlanName) -> Result<Reach, PgError> {
    let bases = base_backups(repo, plan).await?;
    let mut archive = WalArchive::list(repo, plan).await?;
    windows_of(&bases, &mut archive).await
}

async fn windows_of(bases: &[BaseBackup], archive: &mut WalArchive) -> Result<Reach, PgError> {
    // (end segment name) -> window
    let mut by_end: BTreeMap<String, (Window, BaseBackup, Vec<TimelineStep>, u64)> =
        BTreeMap::new();
    let mut pending = Vec::new();
    for b in bases {
        let Ok(ancestry) = archive.target_ancestry(b).await else {
            continue;
        };
        let size = b.segment_size;
        let start = b.start_segment().number;
        if let Some(missing) =
            archive.first_missing(&ancestry, start, b.stop_segment().number, size)
        {
            pending.push(Pending {
                base_backup: b.snapshot.id.short(),
                consistent_at: b.consistent_at,
                waits_for_segment: missing,
            });
            continue;
        }
        let newest = archive
            .newest_on(&ancestry, start, size)
            .await?
            .unwrap_or(start);
        let gap = archive.first_missing(&ancestry, start, newest, size);
        let end = match &gap {
            Some(g) => Segment::parse(g, size)
                .map(|s| s.number - 1)
                .unwrap_or(start),
            None => newest,
        };
        let through = archive.segment_name(&ancestry, end, size);
        by_end
            .entry(through.clone())
            .and_modify(|(w, _, _, _)| {
                w.base_backups.push(b.snapshot.id.short());
                w.base_backups_at.push(b.consistent_at);
            })
            .or_insert((
                Window {
                    from: b.consistent_at,
                    to: b.consistent_at,
                    base_backups: vec![b.snapshot.id.short()],
                    base_backups_at: vec![b.consistent_at],
                    newest_transaction: None,
                    times_unreadable: None,
                    through_segment: through,
                    ends_at_gap: gap,
                },
                b.clone(),
                ancestry,
                end,
            ));
    }
    let mut windows = Vec::new();
    for (_, (mut w, base, ancestry, end)) in by_end {
        match newest_transaction(archive, &base, &ancestry, end).await {
            Ok(t) => w.newest_transaction = t,
            Err(why) => w.times_unreadable = Some(why),
        }
        // The window ends at whichever is later: the newest archived
        // transaction, or the newest base backup in it.
        w.to = w
            .base_backups_at
            .iter()
            .copied()
            .chain(w.newest_transaction)
            .max()
            .unwrap_or(w.from);
        windows.push(w);
    }
    windows.sort_by_key(|w| w.from);
    Ok(Reach { windows, pending })
}

/// The time of the newest commit or abort in the segments up to `end`
/// (reading back at most a few segments, none before the base backup's
/// start), by `pg_waldump`: `Ok(None)` when they hold none, `Err` saying why
/// they could not be read.
async fn newest_transaction(
    archive: &WalArchive,
    base: &BaseBackup,
    ancestry: &[TimelineStep],
    end: u64,
) -> Result<Option<DateTime<Utc>>, String> {
    let size = base.segment_size;
    let waldump = Waldump::find(base.major())
        .await
        .ok_or_else(|| format!("no pg_waldump of PostgreSQL {}", base.major()))?;
    let dir = tokio::task::spawn_blocking(tempfile::tempdir)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("no temporary folder: {e}"))?;
    // Keep the temporary folder until the end of the function.
    let first = base.start_segment().number;
    for n in (first..=end).rev().take(8) {
        let name = archive.segment_name(ancestry, n, size);
        let raw = archive.fetch(&name).await.map_err(|e| e.to_string())?;
        let path = dir.path().join(&name);
        tokio::fs::write(&path, raw)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let times = waldump
            .transaction_times(&path)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(t) = times.last() {
            return Ok(Some(*t));
        }
    }
    Ok(None)
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseTimes {
    pub check_wal_seconds: f64,
    pub restore_base_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_seconds: Option<f64>,
    pub total_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PitrReport {
    pub plan: String,
    pub target: String,
    pub base_backup: SnapshotId,
    pub base_backup_time: DateTime<Utc>,
    pub base_backup_consistent_at: DateTime<Utc>,
    pub timeline_path: Vec<u32>,
    /// False when the restore stops at the end of the base backup
    /// (`--snapshot` alone), whatever WAL was archived after it.
    pub replays_wal_after_base_backup: bool,
    /// What the restore did that the request alone does not say.
    pub notes: Vec<String>,
    /// `rebuild` (it replaces the cluster and archives into the plan) or
    /// `scratch` (`archive_mode = off`).
    pub role: CopyRole,
    /// Whether the restored server archives into the plan once started.
    pub archiving: bool,
    /// Why it is a rebuild or a scratch copy.
    pub role_reason: String,
    pub data_directory: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// Segments checked (present and matching their SHA-256) before restoring.
    pub segments_checked: u64,
    pub first_segment: String,
    pub last_segment: String,
    /// Segments PostgreSQL restored from the archive during recovery (`--start`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments_replayed: Option<u64>,
    /// The last transaction replayed (`--start`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached: Option<String>,
    /// Where the started server listens (`--start`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_log: Option<PathBuf>,
    pub phases: PhaseTimes,
}

/// Restores a cluster to `opts.target`; see the module documentation.
pub async fn restore_pitr(
    repo: &Repository,
    plan: &PlanName,
    opts: &PitrOptions,
) -> Result<PitrReport, PgError> {
    let (report, server) = restore_pitr_server(repo, plan, opts).await?;
    if let Some(server) = server {
        // The restore's user takes the running server over.
        Box::new(server).keep();
    }
    Ok(report)
}

/// [`restore_pitr`], handing back the started server (`opts.start`) instead
/// of leaving it running: a drill queries it and stops it, and dropping the
/// handle stops it on any failure.
pub async fn restore_pitr_server(
    repo: &Repository,
    plan: &PlanName,
    opts: &PitrOptions,
) -> Result<(PitrReport, Option<PgServer>), PgError> {
    let started = Instant::now();
    let target_dir = absolute(&opts.to);
    // A data directory written as root belongs to root: PostgreSQL refuses
    // to start on it, and to run as root. Refuse before writing anything.
    if rustix::process::geteuid().is_root() {
        return Err(PgError::RunAsRoot);
    }
    let check_dir = target_dir.clone();
    tokio::task::spawn_blocking(move || check_target(&check_dir, false, false))
        .await
        .expect("target check panicked")
        .map_err(|e| match e {
            MaterializeError::TargetNotEmpty { path, .. } => PgError::TargetNotEmpty { path },
            e => e.into(),
        })?;
    let bases = base_backups(repo, plan).await?;
    if bases.is_empty() {
        return Err(PgError::NoBaseBackup {
            plan: plan.to_string(),
            repository: repo.url(),
            plan_file: opts.plan_file.display().to_string(),
        });
    }
    let mut archive = WalArchive::list(repo, plan).await?;
    let mut base = choose_base(&bases, &mut archive, opts).await?;
    let mut ancestry = archive.target_ancestry(&base).await?;
    let mut manifest = base_manifest(repo, &base, opts.start).await?;
    tracing::info!(plan = %plan, base_backup = %base.snapshot.id, target = %opts.target, "point-in-time restore started");

    // 1 and 2. The WAL is checked while the base backup is restored beside
    // the target (a temporary directory); the restore is put in place only
    // once the WAL passed, and a failed check stops and removes it.
    let spool = target_dir.with_file_name(format!(
        ".{}.holdfast-wal-{}",
        target_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    fresh_spool(&spool).await?;
    // Removed on any failure; on success it has been moved into the data directory.
    let _spool_guard = RemoveOnDrop(spool.clone());
    // What the restore actually does, where that differs from what was asked.
    let mut opts = opts.clone();
    let mut notes = Vec::new();
    let cancel = Arc::new(AtomicBool::new(false));
    let mut restore_started = Instant::now();
    let lists = streamed_under(&manifest, &base);
    let (entries, mut total) = manifest.take_entries_under(PGDATA_PREFIX);
    let (checked, staged) = {
        let wal = async {
            let r = check_wal(&mut archive, &bases, &base, &ancestry, opts.target, &spool).await;
            if !matches!(r, Ok(Ok(_))) {
                cancel.store(true, Ordering::Relaxed);
            }
            (r, started.elapsed().as_secs_f64())
        };
        let how = base_restore(
            &target_dir,
            &base,
            (manifest.packs.as_deref().unwrap_or_default(), lists),
            opts.progress,
            Some(cancel.clone()),
        );
        let restore = stage(repo, &base.snapshot.id, entries, total, &how);
        tokio::join!(wal, restore)
    };
    let ((checked, mut check_wal_seconds), staged) = (checked, staged);
    let (checked, staged) = match checked {
        Err(e) => {
            if let Ok(s) = staged {
                s.discard().await;
            }
            return Err(e);
        }
        Ok(Ok(checked)) => (checked, staged?),
        Ok(Err(past)) => {
            if let Ok(s) = staged {
                s.discard().await;
            }
            // A time after every archived transaction, but not after every
            // base backup: the first backup consistent at or after it holds
            // the state as of that time (nothing archived committed between).
            let later = match (opts.target, &opts.snapshot) {
                (PgTarget::Time(t), None) => bases.iter().find(|b| b.consistent_at >= t),
                _ => None,
            };
            let (PgTarget::Time(t), Some(later)) = (opts.target, later) else {
                return Err(past.refusal(opts.target, &bases, &mut archive).await?);
            };
            notes.push(format!(
                "{} is later than the newest archived transaction{}; base backup {} is consistent at {}, with no archived transaction in between, so it was restored to its end (recovery_target = immediate)",
                t.to_rfc3339(),
                past.newest_seen
                    .map(|n| format!(" ({})", n.to_rfc3339()))
                    .unwrap_or_default(),
                later.snapshot.id.short(),
                later.consistent_at.to_rfc3339()
            ));
            base = later.clone();
            ancestry = archive.target_ancestry(&base).await?;
            manifest = base_manifest(repo, &base, opts.start).await?;
            opts.target = PgTarget::Immediate;
            // The spool holds the earlier backup's segments: start it afresh.
            fresh_spool(&spool).await?;
            let checked =
                match check_wal(&mut archive, &bases, &base, &ancestry, opts.target, &spool).await?
                {
                    Ok(checked) => checked,
                    Err(past) => {
                        return Err(past.refusal(opts.target, &bases, &mut archive).await?)
                    }
                };
            check_wal_seconds = started.elapsed().as_secs_f64();
            restore_started = Instant::now();
            let lists = streamed_under(&manifest, &base);
            let (entries, bytes) = manifest.take_entries_under(PGDATA_PREFIX);
            total = bytes;
            let how = base_restore(
                &target_dir,
                &base,
                (manifest.packs.as_deref().unwrap_or_default(), lists),
                opts.progress,
                None,
            );
            (
                checked,
                stage(repo, &base.snapshot.id, entries, total, &how).await?,
            )
        }
    };
    if opts.target == PgTarget::Immediate && notes.is_empty() {
        // `--snapshot X` alone: say what was not replayed.
        let size = base.segment_size;
        let stop = base.stop_segment().number;
        let newest = match archive
            .newest_on(&ancestry, base.start_segment().number, size)
            .await
        {
            Ok(newest) => newest.unwrap_or(stop),
            Err(e) => {
                // Removed now, not by a thread the exit may cut short.
                staged.discard().await;
                return Err(e);
            }
        };
        let after = if newest > stop {
            format!(
                "the {} WAL segment(s) archived after it (through {}) were not replayed",
                newest - stop,
                archive.segment_name(&ancestry, newest, size)
            )
        } else {
            "WAL archived after it would not be replayed".to_string()
        };
        notes.push(format!(
            "restored to the end of base backup {} (consistent at {}); {after}; use --latest for the newest state, or --at TIME",
            base.snapshot.id.short(),
            base.consistent_at.to_rfc3339()
        ));
    }
    let opts = &opts;
    let files = staged.place().await?;
    let (role, role_reason) = CopyRole::decide(opts.archive, &base, &target_dir);
    let timeline = ancestry.last().map_or(base.timeline, |s| s.timeline);
    let (dir, spool_in, opts_in, base_in, why) = (
        target_dir.clone(),
        spool.clone(),
        opts.clone(),
        base.clone(),
        role_reason.clone(),
    );
    tokio::task::spawn_blocking(move || {
        prepare_recovery(&dir, &spool_in, &opts_in, &base_in, timeline, (role, &why))
    })
    .await
    .expect("recovery set-up panicked")
    .map_err(|source| MaterializeError::Target {
        path: target_dir.clone(),
        source,
    })?;
    let restore_base_seconds = restore_started.elapsed().as_secs_f64();
    let mut report = PitrReport {
        plan: plan.to_string(),
        target: opts.target.to_string(),
        base_backup: base.snapshot.id,
        base_backup_time: base.snapshot.started_at,
        base_backup_consistent_at: base.consistent_at,
        timeline_path: ancestry
            .iter()
            .filter(|s| s.timeline >= base.timeline)
            .map(|s| s.timeline)
            .collect(),
        replays_wal_after_base_backup: opts.target != PgTarget::Immediate,
        notes,
        data_directory: target_dir.clone(),
        role,
        archiving: role == CopyRole::Rebuild,
        role_reason,
        files,
        bytes: total,
        segments_checked: checked.count,
        first_segment: checked.first,
        last_segment: checked.last,
        segments_replayed: None,
        reached: None,
        port: None,
        server_log: None,
        phases: PhaseTimes {
            check_wal_seconds,
            restore_base_seconds,
            recovery_seconds: None,
            total_seconds: 0.0,
        },
    };

    // 3. Recovery.
    let mut server = None;
    if opts.start {
        let recovery_started = Instant::now();
        let outcome = start_and_recover(&target_dir, opts.port, &base, recovery_deadline()).await?;
        report.segments_replayed = Some(outcome.segments_replayed);
        report.reached = outcome.reached;
        report.port = Some(outcome.server.address().port);
        report.server_log = Some(outcome.server.log().clone());
        report.phases.recovery_seconds = Some(recovery_started.elapsed().as_secs_f64());
        server = Some(outcome.server);
        let _ = tokio::fs::remove_dir_all(target_dir.join(SPOOL_DIR)).await;
    }
    report.phases.total_seconds = started.elapsed().as_secs_f64();
    tracing::info!(plan = %plan, base_backup = %base.snapshot.id, "point-in-time restore finished");
    Ok((report, server))
}

/// How a base backup's files are restored: beside `target`, without
/// setuid/setgid bits (a data directory has no use for them); `packs` and
/// (manifest version 7) the chunk lists to read while writing.
fn base_restore<'a>(
    target: &'a Path,
    base: &'a BaseBackup,
    (packs, lists): (&'a [PackId], Option<Streamed>),
    progress: ProgressMode,
    cancel: Option<Arc<AtomicBool>>,
) -> Materialize<'a> {
    Materialize {
        target,
        packs,
        lists,
        manifest: &base.snapshot.key,
        single: false,
        force: false,
        keep_setid: false,
        progress,
        check: None,
        cancel,
    }
}

/// The chunk lists of the data directory's files in a version 7 base
/// backup's manifest (read while they are written); `None` before.
fn streamed_under(manifest: &Manifest, base: &BaseBackup) -> Option<Streamed> {
    Some(Streamed {
        numbers: manifest.file_numbers_under(PGDATA_PREFIX),
        parts: manifest.list_parts(&base.snapshot.key)?,
    })
}

/// The base backup's manifest, its chunk lists left in the repository
/// from version 7 ([`streamed_under`]); with `--start`, it must carry the
/// server's configuration.
async fn base_manifest(
    repo: &Repository,
    base: &BaseBackup,
    start: bool,
) -> Result<Manifest, PgError> {
    let manifest = repo.load_manifest_tree(&base.snapshot).await?;
    if start
        && !manifest
            .entries
            .iter()
            .any(|e| e.path == format!("{PGDATA_PREFIX}/postgresql.conf"))
    {
        return Err(PgError::NoConfig {
            backup: base.snapshot.id.short(),
        });
    }
    Ok(manifest)
}

/// Removes a scratch folder when dropped (if it is still there).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn choose_base(
    bases: &[BaseBackup],
    archive: &mut WalArchive,
    opts: &PitrOptions,
) -> Result<BaseBackup, PgError> {
    if let Some(sel) = &opts.snapshot {
        let sel_lc = sel.to_ascii_lowercase();
        let found: Vec<_> = bases
            .iter()
            .filter(|b| sel == "latest" || b.snapshot.id.to_hex().starts_with(&sel_lc))
            .collect();
        let b = match (sel.as_str(), found.as_slice()) {
            ("latest", [.., last]) => *last,
            (_, [one]) => *one,
            (_, []) => {
                return Err(PgError::NoSuchBaseBackup {
                    selector: sel.clone(),
                })
            }
            (_, many) => {
                return Err(PgError::AmbiguousBaseBackup {
                    selector: sel.clone(),
                    count: many.len(),
                })
            }
        };
        if let PgTarget::Time(t) = opts.target {
            if t < b.consistent_at {
                return Err(PgError::BackupTooLate {
                    backup: b.snapshot.id.short(),
                    consistent_at: b.consistent_at.to_rfc3339(),
                    target: t.to_rfc3339(),
                });
            }
        }
        return Ok(b.clone());
    }
    let pick = match opts.target {
        PgTarget::Time(t) => bases.iter().rev().find(|b| b.consistent_at <= t),
        PgTarget::Lsn(l) => bases.iter().rev().find(|b| b.stop <= l),
        PgTarget::Latest | PgTarget::Immediate => bases.last(),
    };
    match pick {
        Some(b) => Ok(b.clone()),
        None => {
            let reach = windows_of(bases, archive).await?;
            Err(PgError::OutsideWindow {
                target: opts.target.to_string(),
                why: "it is earlier than the oldest base backup's consistent point".into(),
                windows: reach.to_string(),
            })
        }
    }
}

/// A segment being fetched and verified in the background.
type FetchTask = tokio::task::JoinHandle<Result<(), PgError>>;

struct Checked {
    count: u64,
    first: String,
    last: String,
}

/// Fetches, verifies and spools the segments from the base backup's start
/// to the target; see the module documentation. A time target later than
/// every archived transaction is returned as [`PastArchive`], for the caller
/// to refuse or to serve from a later base backup.
async fn check_wal(
    archive: &mut WalArchive,
    bases: &[BaseBackup],
    base: &BaseBackup,
    ancestry: &[TimelineStep],
    target: PgTarget,
    spool: &Path,
) -> Result<Result<Checked, PastArchive>, PgError> {
    let size = base.segment_size;
    let first = base.start_segment().number;
    let stop = base.stop_segment().number;
    let newest = archive
        .newest_on(ancestry, first, size)
        .await?
        .unwrap_or(first);
    let prefix = wal::wal_prefix(&archive.plan);
    // The last segment that must be there, where it is known in advance.
    let must_reach = match target {
        PgTarget::Immediate => stop,
        PgTarget::Latest => newest.max(stop),
        PgTarget::Lsn(l) => {
            let n = l.0 / size;
            if n > newest {
                let reach = windows_of(bases, archive).await?;
                return Err(PgError::OutsideWindow {
                    target: target.to_string(),
                    why: format!(
                        "it is past the end of the newest archived segment {} ({})",
                        archive.segment_name(ancestry, newest, size),
                        Segment {
                            timeline: 0,
                            number: newest
                        }
                        .end(size)
                    ),
                    windows: reach.to_string(),
                });
            }
            n.max(stop)
        }
        PgTarget::Time(_) => stop,
    };
    if let Some(name) = archive.first_missing(ancestry, first, must_reach, size) {
        return Err(missing(
            &format!("{prefix}{name}"),
            &format!(
                "base backup {} needs every segment from {} to {}",
                base.snapshot.id.short(),
                archive.segment_name(ancestry, first, size),
                archive.segment_name(ancestry, must_reach, size)
            ),
        ));
    }
    let waldump =
        match target {
            PgTarget::Time(_) => Some(Waldump::find(base.major()).await.ok_or(
                PgError::NoWaldump {
                    major: base.major(),
                },
            )?),
            _ => None,
        };
    // History files the restored server will ask for come along too.
    for step in ancestry.iter().filter(|s| s.timeline > 1) {
        let name = format!("{:08X}.history", step.timeline);
        spool_checked(
            archive.store.as_ref(),
            &archive.crypto,
            &archive.plan,
            &name,
            spool,
        )
        .await?;
    }
    let mut pending: VecDeque<(u64, String, FetchTask)> = VecDeque::new();
    let mut next = first;
    let mut count = 0;
    let mut last = archive.segment_name(ancestry, first, size);
    let mut newest_seen: Option<DateTime<Utc>> = None;
    loop {
        while pending.len() < FETCH_AHEAD && next <= newest {
            let name = archive.segment_name(ancestry, next, size);
            if !archive.has(&name) {
                break;
            }
            let (store, plan, n) = (archive.store.clone(), archive.plan.clone(), name.clone());
            let crypto = archive.crypto.clone();
            let spool = spool.to_path_buf();
            // Each task decodes its segment straight into the spool, so
            // memory holds only the compressed objects being read.
            pending.push_back((
                next,
                name,
                tokio::spawn(async move {
                    spool_checked(store.as_ref(), &crypto, &plan, &n, &spool).await
                }),
            ));
            next += 1;
        }
        let Some((number, name, task)) = pending.pop_front() else {
            break;
        };
        if let Err(e) = task.await.expect("WAL fetch task panicked") {
            settle(&mut pending).await;
            return Err(e);
        }
        count += 1;
        last = name.clone();
        if number >= must_reach {
            let reached = match (target, &waldump) {
                (PgTarget::Time(t), Some(w)) => {
                    let times = match w.transaction_times(&spool.join(&name)).await {
                        Ok(times) => times,
                        Err(e) => {
                            settle(&mut pending).await;
                            return Err(e);
                        }
                    };
                    if let Some(newest_here) = times.last() {
                        newest_seen = Some(*newest_here);
                    }
                    times.iter().any(|x| *x > t)
                }
                _ => true,
            };
            if reached {
                for (_, _, task) in pending.drain(..) {
                    task.abort();
                }
                return Ok(Ok(Checked {
                    count,
                    first: archive.segment_name(ancestry, first, size),
                    last,
                }));
            }
        }
    }
    // Ran out of archive before the target.
    let after = archive.segment_name(ancestry, next, size);
    if next <= newest {
        return Err(missing(
            &format!("{prefix}{after}"),
            &format!(
                "the restore to {target} needs it: later segments are archived, so the WAL has a gap there"
            ),
        ));
    }
    Ok(Err(PastArchive { newest_seen, last }))
}

/// Waits for the fetches still in flight before a failed check returns: each
/// writes into the spool from a blocking thread that aborting would not
/// stop, and the spool is removed as the error goes up.
async fn settle(pending: &mut VecDeque<(u64, String, FetchTask)>) {
    for (_, _, task) in pending.drain(..) {
        let _ = task.await;
    }
}

/// A time target later than every transaction in the archived WAL.
struct PastArchive {
    newest_seen: Option<DateTime<Utc>>,
    /// The last archived segment.
    last: String,
}

impl PastArchive {
    async fn refusal(
        self,
        target: PgTarget,
        bases: &[BaseBackup],
        archive: &mut WalArchive,
    ) -> Result<PgError, PgError> {
        let reach = windows_of(bases, archive).await?;
        Ok(PgError::OutsideWindow {
            target: target.to_string(),
            why: format!(
                "it is later than the newest archived transaction{} (archived WAL ends with segment {}); if the server has written since, run `SELECT pg_switch_wal()` on it, wait for archiving, and retry",
                self.newest_seen
                    .map(|t| format!(" ({})", t.to_rfc3339()))
                    .unwrap_or_default(),
                self.last
            ),
            windows: reach.to_string(),
        })
    }
}

/// An empty spool directory, 0700 whatever the umask: the segments in it
/// are the database's history, readable by its owner only.
async fn fresh_spool(spool: &Path) -> Result<(), PgError> {
    let dir = spool.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let spool = dir;
        let _ = std::fs::remove_dir_all(&spool);
        if let Some(parent) = spool.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&spool)?;
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700))
    })
    .await
    .expect("spool set-up panicked")
    .map_err(|source| {
        MaterializeError::Target {
            path: spool.to_path_buf(),
            source,
        }
        .into()
    })
}

/// Fetches one archived file (under its name or an alternative one) into
/// the spool, checked against its SHA-256 as it is decoded there: readable
/// by its owner only, and under its name only once it checked out.
async fn spool_checked(
    store: &dyn Store,
    crypto: &crate::repository::Crypto,
    plan: &PlanName,
    name: &str,
    spool: &Path,
) -> Result<(), PgError> {
    let key = format!("{}{name}", wal::wal_prefix(plan));
    log_archive::fetch_to(store, crypto, &key, &spool.join(name), 0o600, false)
        .await
        .map(|_| ())
        .map_err(fetch_error)
}
