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
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use super::{absolute, materialize, Materialize, RestoreError};
use crate::ids::SnapshotId;
use crate::plan::PlanName;
use crate::progress::ProgressMode;
use crate::repository::wal::{
    self, parse_history, timeline_for, Lsn, Segment, TimelineStep, WalError, DEFAULT_SEGMENT_SIZE,
};
use crate::repository::{Manifest, ManifestEntry, Repository, SnapshotRef};
use crate::source::postgres::{pg_bin_for, pg_program, PGDATA_PREFIX};
use crate::store::Store;

/// Where verified segments wait for `wal-fetch --spool`, inside the data
/// directory's `pg_wal` (never part of a base backup).
pub const SPOOL_DIR: &str = "pg_wal/holdfast-spool";

/// How many segments are fetched ahead of the one being checked (each up to
/// 16 MiB decoded in memory while in flight).
const FETCH_AHEAD: usize = 4;

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
    /// Write `archive_mode = off`: for scratch copies (drills, inspecting
    /// a table beside production), which must not archive a new timeline
    /// into the plan that later restores would follow.
    pub no_archive: bool,
    pub progress: ProgressMode,
}

/// A base backup as its manifest describes it.
#[derive(Debug, Clone)]
pub struct BaseBackup {
    pub snapshot: SnapshotRef,
    pub timeline: u32,
    pub start: Lsn,
    pub stop: Lsn,
    /// The server's clock just after the backup ended.
    pub consistent_at: DateTime<Utc>,
    pub server_version_num: u64,
    pub segment_size: u64,
}

impl BaseBackup {
    fn from_manifest(snapshot: &SnapshotRef, m: &Manifest) -> Option<BaseBackup> {
        if m.source.kind != "postgres" {
            return None;
        }
        let md = &m.source.metadata;
        let lsn = |k: &str| md.get(k)?.as_str()?.parse::<Lsn>().ok();
        Some(BaseBackup {
            snapshot: snapshot.clone(),
            timeline: md.get("timeline")?.as_u64()? as u32,
            start: lsn("start_lsn")?,
            stop: lsn("stop_lsn")?,
            consistent_at: md
                .get("consistent_at")
                .and_then(|v| v.as_str())
                .and_then(|t| t.parse().ok())
                .unwrap_or(m.finished_at),
            server_version_num: md
                .get("server_version_num")
                .and_then(|v| v.as_u64())
                .unwrap_or_default(),
            segment_size: md
                .get("wal_segment_size")
                .and_then(|v| v.as_u64())
                .unwrap_or(DEFAULT_SEGMENT_SIZE),
        })
    }

    fn major(&self) -> u64 {
        self.server_version_num / 10000
    }

    fn start_segment(&self) -> Segment {
        Segment::of(self.timeline, self.start, self.segment_size)
    }

    fn stop_segment(&self) -> Segment {
        // The stop location is the first byte after the backup's last record.
        Segment::of(
            self.timeline,
            Lsn(self.stop.0.saturating_sub(1)),
            self.segment_size,
        )
    }
}

/// What the archive holds for a plan: file names under `wal/<plan>/`, and
/// timeline histories as they are read.
pub struct WalArchive {
    store: Arc<dyn Store>,
    plan: PlanName,
    names: BTreeSet<String>,
    histories: HashMap<u32, Vec<TimelineStep>>,
}

impl WalArchive {
    pub async fn list(repo: &Repository, plan: &PlanName) -> Result<WalArchive, RestoreError> {
        let prefix = wal::wal_prefix(plan);
        let names = repo
            .store()
            .list(&prefix)
            .await
            .map_err(|e| RestoreError::Repo(e.into()))?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        Ok(WalArchive {
            store: repo.store().clone(),
            plan: plan.clone(),
            names,
            histories: HashMap::new(),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    async fn history(&mut self, timeline: u32) -> Result<Vec<TimelineStep>, RestoreError> {
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
                RestoreError::Postgres(format!(
                    "timeline history {}{name} is unreadable: {why}",
                    wal::wal_prefix(&self.plan)
                ))
            })?
        };
        self.histories.insert(timeline, steps.clone());
        Ok(steps)
    }

    async fn fetch(&self, name: &str) -> Result<Vec<u8>, RestoreError> {
        fetch_checked(self.store.as_ref(), &self.plan, name).await
    }

    /// The ancestry of the newest timeline that follows from `base`, as
    /// PostgreSQL's `recovery_target_timeline = 'latest'` finds it: the
    /// highest consecutive `N.history` after the backup's own timeline.
    async fn target_ancestry(
        &mut self,
        base: &BaseBackup,
    ) -> Result<Vec<TimelineStep>, RestoreError> {
        let mut newest = base.timeline;
        while self.has(&format!("{:08X}.history", newest + 1)) {
            newest += 1;
        }
        let ancestry = self.history(newest).await?;
        // The backup must lie on that history, before its timeline was left.
        let pos = ancestry.iter().position(|s| s.timeline == base.timeline);
        let left_at = pos.and_then(|i| ancestry.get(i + 1)).map(|s| s.begins);
        match (pos, left_at) {
            (None, _) => Err(RestoreError::Postgres(format!(
                "timeline {newest} (the newest in the archive) does not descend from timeline {} of base backup {}; restore with --snapshot of a backup taken on timeline {newest}",
                base.timeline,
                base.snapshot.id.short()
            ))),
            (Some(_), Some(left)) if left < base.stop => Err(RestoreError::Postgres(format!(
                "base backup {} (timeline {}, ends at {}) was taken after timeline {} branched off at {left}; it cannot be replayed onto the newest timeline",
                base.snapshot.id.short(),
                base.timeline,
                base.stop,
                base.timeline
            ))),
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

    /// The newest segment number present on `ancestry` at or after `from`.
    fn newest_on(&self, ancestry: &[TimelineStep], from: u64, size: u64) -> Option<u64> {
        self.names
            .iter()
            .filter_map(|n| Segment::parse(n, size))
            .filter(|s| s.number >= from && timeline_for(ancestry, s.number, size) == s.timeline)
            .map(|s| s.number)
            .max()
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

/// Fetches one archived file and checks it against its SHA-256.
async fn fetch_checked(
    store: &dyn Store,
    plan: &PlanName,
    name: &str,
) -> Result<Vec<u8>, RestoreError> {
    let key = format!("{}{name}", wal::wal_prefix(plan));
    let object = match store.get(&key).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return Err(missing(&key, "it is listed but cannot be read")),
        Err(e) => return Err(RestoreError::Repo(e.into())),
    };
    let k = key.clone();
    tokio::task::spawn_blocking(move || wal::decode(&k, &object))
        .await
        .expect("WAL decoder panicked")
        .map_err(|e| match e {
            WalError::Corrupt { key, why } => RestoreError::WalSegment {
                key,
                problem: format!("is corrupt ({why})"),
            },
            other => RestoreError::Postgres(other.to_string()),
        })
}

fn missing(key: &str, why: &str) -> RestoreError {
    RestoreError::WalSegment {
        key: key.to_string(),
        problem: format!("is missing from the archive ({why})"),
    }
}

/// A stretch of time a restore can reach.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// The earliest target: the oldest usable base backup's consistent point.
    pub from: DateTime<Utc>,
    /// The newest archived transaction (commit or abort) reachable from it,
    /// if the archived WAL could be read.
    pub to: Option<DateTime<Utc>>,
    /// The base backups that start this window, oldest first.
    pub base_backups: Vec<String>,
    /// The last archived segment of the window.
    pub through_segment: String,
    /// Set when the window ends because a segment is missing.
    pub ends_at_gap: Option<String>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} to {}",
            self.from.to_rfc3339(),
            self.to
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| format!("the end of segment {}", self.through_segment))
        )?;
        if let Some(gap) = &self.ends_at_gap {
            write!(f, " (segment {gap} is missing)")?;
        }
        Ok(())
    }
}

fn windows_text(windows: &[Window]) -> String {
    if windows.is_empty() {
        return "none (no base backup has all of its WAL archived)".into();
    }
    windows
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The plan's base backups, oldest first.
pub async fn base_backups(
    repo: &Repository,
    plan: &PlanName,
) -> Result<Vec<BaseBackup>, RestoreError> {
    let mut out = Vec::new();
    for s in repo.list_snapshots(plan).await? {
        match repo.load_manifest(&s).await {
            Ok(m) => {
                if let Some(b) = BaseBackup::from_manifest(&s, &m) {
                    out.push(b);
                }
            }
            Err(e) => {
                tracing::warn!(snapshot = %s.key, error = %e, "skipping an unreadable snapshot")
            }
        }
    }
    out.sort_by_key(|b| b.consistent_at);
    Ok(out)
}

/// The restorable windows of a plan: for each base backup whose own WAL is
/// all archived, the stretch from its consistent point to the newest
/// transaction reachable through unbroken WAL. Backups reaching the same
/// segment share a window.
pub async fn restorable_windows(
    repo: &Repository,
    plan: &PlanName,
) -> Result<Vec<Window>, RestoreError> {
    let bases = base_backups(repo, plan).await?;
    let mut archive = WalArchive::list(repo, plan).await?;
    windows_of(&bases, &mut archive).await
}

async fn windows_of(
    bases: &[BaseBackup],
    archive: &mut WalArchive,
) -> Result<Vec<Window>, RestoreError> {
    // (end segment name) -> window
    let mut by_end: BTreeMap<String, (Window, BaseBackup, Vec<TimelineStep>, u64)> =
        BTreeMap::new();
    for b in bases {
        let Ok(ancestry) = archive.target_ancestry(b).await else {
            continue;
        };
        let size = b.segment_size;
        let start = b.start_segment().number;
        if archive
            .first_missing(&ancestry, start, b.stop_segment().number, size)
            .is_some()
        {
            continue;
        }
        let newest = archive.newest_on(&ancestry, start, size).unwrap_or(start);
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
            .and_modify(|(w, _, _, _)| w.base_backups.push(b.snapshot.id.short()))
            .or_insert((
                Window {
                    from: b.consistent_at,
                    to: None,
                    base_backups: vec![b.snapshot.id.short()],
                    through_segment: through,
                    ends_at_gap: gap,
                },
                b.clone(),
                ancestry,
                end,
            ));
    }
    let mut out = Vec::new();
    for (_, (mut w, base, ancestry, end)) in by_end {
        w.to = newest_transaction(archive, &base, &ancestry, end).await;
        out.push(w);
    }
    out.sort_by_key(|w| w.from);
    Ok(out)
}

/// The time of the newest commit or abort in the segments up to `end`
/// (reading back at most a few segments), by `pg_waldump`.
async fn newest_transaction(
    archive: &WalArchive,
    base: &BaseBackup,
    ancestry: &[TimelineStep],
    end: u64,
) -> Option<DateTime<Utc>> {
    let size = base.segment_size;
    let waldump = Waldump::find(base.major())?;
    let dir = tempfile::tempdir().ok()?;
    // Keep the temporary folder until the end of the function.
    let first = base.start_segment().number;
    for n in (first..=end).rev().take(8) {
        let name = archive.segment_name(ancestry, n, size);
        let raw = archive.fetch(&name).await.ok()?;
        let path = dir.path().join(&name);
        std::fs::write(&path, raw).ok()?;
        let times = waldump.transaction_times(&path).ok()?;
        if let Some(t) = times.last() {
            return Some(*t);
        }
    }
    None
}

/// `pg_waldump` of the backup's major version, which reads that version's WAL.
struct Waldump {
    program: PathBuf,
}

impl Waldump {
    fn find(major: u64) -> Option<Waldump> {
        let program = pg_program(pg_bin_for(major).as_deref(), "pg_waldump");
        Command::new(&program)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| Waldump { program })
    }

    /// Commit and abort times in one segment file, in WAL order.
    fn transaction_times(&self, segment: &Path) -> std::io::Result<Vec<DateTime<Utc>>> {
        let out = Command::new(&self.program)
            .arg(segment)
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .output()?;
        // It exits 1 at the end of a segment whose next one is not beside
        // it; what it printed up to there is what we read.
        Ok(parse_transaction_times(&String::from_utf8_lossy(
            &out.stdout,
        )))
    }
}

/// `desc: COMMIT 2026-11-26 09:52:01.123456 UTC; …` (also `ABORT`, and
/// prepared-transaction variants).
fn parse_transaction_times(text: &str) -> Vec<DateTime<Utc>> {
    text.lines()
        .filter_map(|l| {
            let desc = l.split_once("desc: ")?.1;
            let rest = match ["COMMIT_PREPARED ", "ABORT_PREPARED "]
                .iter()
                .find_map(|p| desc.strip_prefix(p))
            {
                // The prepared variants print the prepared xid first: `12: <time>`.
                Some(r) => r.split_once(": ")?.1,
                None => ["COMMIT ", "ABORT "]
                    .iter()
                    .find_map(|p| desc.strip_prefix(p))?,
            };
            let stamp = rest.split(';').next()?.trim();
            let stamp = stamp.strip_suffix(" UTC")?;
            NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
        .collect()
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
) -> Result<PitrReport, RestoreError> {
    let started = Instant::now();
    let target_dir = absolute(&opts.to);
    super::check_target(&target_dir, false, false)?;
    if opts.start && rustix::process::geteuid().is_root() {
        return Err(RestoreError::Postgres(
            "PostgreSQL refuses to run as root: run `holdfast restore … --start` as the PostgreSQL OS user (e.g. `runuser -u postgres -- holdfast restore …`), or restore without --start, chown the data directory and start it yourself".into(),
        ));
    }
    let bases = base_backups(repo, plan).await?;
    if bases.is_empty() {
        return Err(RestoreError::Postgres(format!(
            "plan {plan} has no PostgreSQL base backup in {}; take one with `holdfast backup --plan {}`",
            repo.url(),
            opts.plan_file.display()
        )));
    }
    let mut archive = WalArchive::list(repo, plan).await?;
    let base = choose_base(&bases, &mut archive, opts).await?;
    let ancestry = archive.target_ancestry(&base).await?;
    let manifest = repo.load_manifest(&base.snapshot).await?;
    if opts.start
        && !manifest
            .entries
            .iter()
            .any(|e| e.path == format!("{PGDATA_PREFIX}/postgresql.conf"))
    {
        return Err(RestoreError::Postgres(format!(
            "base backup {} has no postgresql.conf: the server keeps its configuration outside the data directory (Debian and Ubuntu: /etc/postgresql/<version>/<cluster>), so --start cannot start it. Restore without --start, then start it with its own configuration (e.g. pg_ctlcluster 15 main start when restoring into that cluster's data directory)",
            base.snapshot.id.short()
        )));
    }
    tracing::info!(plan = %plan, base_backup = %base.snapshot.id, target = %opts.target, "point-in-time restore started");

    // 1. The WAL, checked before anything is written.
    let spool = target_dir.with_file_name(format!(
        ".{}.holdfast-wal-{}",
        target_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&spool);
    std::fs::create_dir_all(&spool).map_err(|source| RestoreError::Target {
        path: spool.clone(),
        source,
    })?;
    // Removed on any failure; on success it has been moved into the data directory.
    let _spool_guard = RemoveOnDrop(spool.clone());
    let checked = check_wal(&mut archive, &bases, &base, &ancestry, opts.target, &spool).await?;
    let check_wal_seconds = started.elapsed().as_secs_f64();

    // 2. The base backup.
    let restore_started = Instant::now();
    let (entries, total) = pgdata_entries(&manifest);
    let files = materialize(
        repo,
        &base.snapshot.id,
        entries,
        total,
        &Materialize {
            target: &target_dir,
            single: false,
            force: false,
            progress: opts.progress,
            check: None,
        },
    )
    .await?;
    prepare_recovery(&target_dir, &spool, opts, &base).map_err(|source| RestoreError::Target {
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
        data_directory: target_dir.clone(),
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
    if opts.start {
        let recovery_started = Instant::now();
        let outcome = start_and_recover(&target_dir, opts.port, &base).await?;
        report.segments_replayed = Some(outcome.segments_replayed);
        report.reached = outcome.reached;
        report.port = Some(outcome.port);
        report.server_log = Some(outcome.log);
        report.phases.recovery_seconds = Some(recovery_started.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(target_dir.join(SPOOL_DIR));
    }
    report.phases.total_seconds = started.elapsed().as_secs_f64();
    tracing::info!(plan = %plan, base_backup = %base.snapshot.id, "point-in-time restore finished");
    Ok(report)
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
) -> Result<BaseBackup, RestoreError> {
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
                return Err(RestoreError::Postgres(format!(
                    "no PostgreSQL base backup matches --snapshot {sel}"
                )))
            }
            (_, many) => {
                return Err(RestoreError::Postgres(format!(
                    "--snapshot {sel} matches {} base backups; give more of the id",
                    many.len()
                )))
            }
        };
        if let PgTarget::Time(t) = opts.target {
            if t < b.consistent_at {
                return Err(RestoreError::Postgres(format!(
                    "base backup {} is consistent only from {}; it cannot reach {}",
                    b.snapshot.id.short(),
                    b.consistent_at.to_rfc3339(),
                    t.to_rfc3339()
                )));
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
            let windows = windows_of(bases, archive).await?;
            Err(RestoreError::OutsideWindow {
                target: opts.target.to_string(),
                why: "it is earlier than the oldest base backup's consistent point".into(),
                windows: windows_text(&windows),
            })
        }
    }
}

/// A segment being fetched and verified in the background.
type FetchTask = tokio::task::JoinHandle<Result<(), RestoreError>>;

struct Checked {
    count: u64,
    first: String,
    last: String,
}

/// Fetches, verifies and spools the segments from the base backup's start
/// to the target; see the module documentation.
async fn check_wal(
    archive: &mut WalArchive,
    bases: &[BaseBackup],
    base: &BaseBackup,
    ancestry: &[TimelineStep],
    target: PgTarget,
    spool: &Path,
) -> Result<Checked, RestoreError> {
    let size = base.segment_size;
    let first = base.start_segment().number;
    let stop = base.stop_segment().number;
    let newest = archive.newest_on(ancestry, first, size).unwrap_or(first);
    let prefix = wal::wal_prefix(&archive.plan);
    // The last segment that must be there, where it is known in advance.
    let must_reach = match target {
        PgTarget::Immediate => stop,
        PgTarget::Latest => newest.max(stop),
        PgTarget::Lsn(l) => {
            let n = l.0 / size;
            if n > newest {
                let windows = windows_of(bases, archive).await?;
                return Err(RestoreError::OutsideWindow {
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
                    windows: windows_text(&windows),
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
    let waldump = match target {
        PgTarget::Time(_) => Some(Waldump::find(base.major()).ok_or_else(|| {
            RestoreError::Postgres(format!(
                "a time target needs pg_waldump of PostgreSQL {} to find the segment holding it; install PostgreSQL's server programs, or set HOLDFAST_PG_BIN",
                base.major()
            ))
        })?),
        _ => None,
    };
    // History files the restored server will ask for come along too.
    for step in ancestry.iter().filter(|s| s.timeline > 1) {
        let name = format!("{:08X}.history", step.timeline);
        let raw = archive.fetch(&name).await?;
        write_spool(spool, &name, &raw)?;
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
            let spool = spool.to_path_buf();
            // Each task writes its segment to the spool itself, so memory
            // holds only the segments being decoded, not a queue of them.
            pending.push_back((
                next,
                name,
                tokio::spawn(async move {
                    let raw = fetch_checked(store.as_ref(), &plan, &n).await?;
                    tokio::task::spawn_blocking(move || write_spool(&spool, &n, &raw))
                        .await
                        .expect("spool writer panicked")
                }),
            ));
            next += 1;
        }
        let Some((number, name, task)) = pending.pop_front() else {
            break;
        };
        task.await.expect("WAL fetch task panicked")?;
        count += 1;
        last = name.clone();
        if number >= must_reach {
            let reached = match (target, &waldump) {
                (PgTarget::Time(t), Some(w)) => {
                    let path = spool.join(&name);
                    let program = w.program.clone();
                    let times = tokio::task::spawn_blocking(move || {
                        Waldump { program }.transaction_times(&path)
                    })
                    .await
                    .expect("pg_waldump task panicked")
                    .map_err(|e| {
                        RestoreError::Postgres(format!("cannot run {}: {e}", w.program.display()))
                    })?;
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
                return Ok(Checked {
                    count,
                    first: archive.segment_name(ancestry, first, size),
                    last,
                });
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
    let windows = windows_of(bases, archive).await?;
    Err(RestoreError::OutsideWindow {
        target: target.to_string(),
        why: format!(
            "it is later than the newest archived transaction{} (archived WAL ends with segment {last})",
            newest_seen
                .map(|t| format!(" ({})", t.to_rfc3339()))
                .unwrap_or_default()
        ),
        windows: windows_text(&windows),
    })
}

fn write_spool(spool: &Path, name: &str, raw: &[u8]) -> Result<(), RestoreError> {
    let path = spool.join(name);
    std::fs::write(&path, raw).map_err(|source| RestoreError::Target { path, source })
}

/// The base backup's `pgdata/` entries, re-rooted at the data directory.
fn pgdata_entries(m: &Manifest) -> (Vec<ManifestEntry>, u64) {
    let prefix = format!("{PGDATA_PREFIX}/");
    let mut total = 0;
    let entries: Vec<ManifestEntry> = m
        .entries
        .iter()
        .filter_map(|e| {
            let path = if e.path == PGDATA_PREFIX {
                ".".to_string()
            } else {
                e.path.strip_prefix(&prefix)?.to_string()
            };
            total += e.size.unwrap_or_default();
            Some(ManifestEntry { path, ..e.clone() })
        })
        .collect();
    (entries, total)
}

/// `recovery.signal`, the recovery settings, the WAL spool, and the folders
/// a base backup leaves out.
fn prepare_recovery(
    dir: &Path,
    spool: &Path,
    opts: &PitrOptions,
    base: &BaseBackup,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for sub in ["pg_wal", "pg_wal/archive_status"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let spool_in = dir.join(SPOOL_DIR);
    std::fs::rename(spool, &spool_in)?;
    let exe = std::env::current_exe()?;
    let plan = absolute(&opts.plan_file);
    for p in [&exe, &plan, &spool_in] {
        if p.to_string_lossy().contains(['\'', '"']) {
            return Err(std::io::Error::other(format!(
                "{} contains a quote, which cannot go into restore_command",
                p.display()
            )));
        }
    }
    let mut conf = format!(
        "\n# Added by holdfast restore at {now}: point-in-time recovery to {target}\n# from base backup {id}. Remove these lines once the server has promoted.\nrestore_command = '\"{exe}\" wal-fetch --plan \"{plan}\" --spool \"{spool}\" %f %p'\nrecovery_target_timeline = 'latest'\nrecovery_target_action = 'promote'\n",
        now = Utc::now().to_rfc3339(),
        target = opts.target,
        id = base.snapshot.id,
        exe = exe.display(),
        plan = plan.display(),
        spool = spool_in.display(),
    );
    match opts.target {
        PgTarget::Time(t) => conf.push_str(&format!(
            "recovery_target_time = '{}'\n",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00")
        )),
        PgTarget::Lsn(l) => conf.push_str(&format!("recovery_target_lsn = '{l}'\n")),
        PgTarget::Immediate => conf.push_str("recovery_target = 'immediate'\n"),
        PgTarget::Latest => {}
    }
    if let Some(port) = opts.port {
        conf.push_str(&format!("port = {port}\n"));
    }
    if opts.no_archive {
        conf.push_str("# --no-archive: a scratch copy must not archive its own timeline into the plan.\narchive_mode = off\n");
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("postgresql.auto.conf"))?;
    f.write_all(conf.as_bytes())?;
    f.sync_all()?;
    let signal = std::fs::File::create(dir.join("recovery.signal"))?;
    signal.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

struct Recovered {
    segments_replayed: u64,
    reached: Option<String>,
    port: u16,
    log: PathBuf,
}

async fn start_and_recover(
    dir: &Path,
    port: Option<u16>,
    base: &BaseBackup,
) -> Result<Recovered, RestoreError> {
    let bin = pg_bin_for(base.major());
    let log = dir.with_file_name(format!(
        "{}-recovery.log",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let mut cmd = Command::new(pg_program(bin.as_deref(), "pg_ctl"));
    cmd.arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .args(["-W", "start"]);
    if let Some(p) = port {
        cmd.args(["-o", &format!("-p {p}")]);
    }
    let out = cmd.output().map_err(|e| {
        RestoreError::Postgres(format!("cannot run pg_ctl: {e} (set HOLDFAST_PG_BIN)"))
    })?;
    if !out.status.success() {
        return Err(RestoreError::Recovery {
            why: format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log: log.clone(),
            tail: log_tail(&log),
        });
    }
    let pg_ctl = pg_program(bin.as_deref(), "pg_ctl");
    let psql = pg_program(bin.as_deref(), "psql");
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let alive = Command::new(&pg_ctl)
            .arg("-D")
            .arg(dir)
            .arg("status")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !alive {
            return Err(RestoreError::Recovery {
                why: "the server stopped during recovery".into(),
                log: log.clone(),
                tail: log_tail(&log),
            });
        }
        let Some((port, host)) = postmaster_address(dir) else {
            continue;
        };
        let q = Command::new(&psql)
            .args([
                "-XAtq",
                "-h",
                &host,
                "-p",
                &port.to_string(),
                "-d",
                "postgres",
                "-c",
            ])
            .arg("SELECT pg_is_in_recovery()")
            .env("PGCONNECT_TIMEOUT", "2")
            .output();
        if let Ok(o) = q {
            if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "f" {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Ok(Recovered {
                    segments_replayed: replayed_segments(&text),
                    reached: reached_from_log(&text),
                    port,
                    log,
                });
            }
        }
    }
}

/// Port and a host to reach the server at, from `postmaster.pid`.
fn postmaster_address(dir: &Path) -> Option<(u16, String)> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let port = lines.get(3)?.trim().parse().ok()?;
    let socket = lines.get(4).map(|s| s.trim()).unwrap_or("");
    let listen = lines.get(5).map(|s| s.trim()).unwrap_or("");
    let host = if !socket.is_empty() {
        socket.to_string()
    } else if listen.is_empty() || listen == "*" {
        "127.0.0.1".to_string()
    } else {
        listen
            .split(',')
            .next()
            .unwrap_or("127.0.0.1")
            .trim()
            .to_string()
    };
    Some((port, host))
}

/// Distinct WAL segments the server restored from the archive
/// (`restored log file "…" from archive`; one may be read twice).
fn replayed_segments(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once("restored log file \"")?.1.split('"').next())
        .filter(|name| name.len() == 24)
        .collect::<BTreeSet<_>>()
        .len() as u64
}

fn reached_from_log(text: &str) -> Option<String> {
    let stopping = text.lines().rev().find_map(|l| {
        l.split_once("recovery stopping ")
            .map(|(_, r)| r.trim().to_string())
    });
    let last = text.lines().rev().find_map(|l| {
        l.split_once("last completed transaction was at log time ")
            .map(|(_, r)| r.trim().to_string())
    });
    match (last, stopping) {
        (Some(l), Some(s)) => Some(format!("last transaction replayed at {l}; stopped {s}")),
        (Some(l), None) => Some(format!("last transaction replayed at {l}")),
        (None, Some(s)) => Some(format!("stopped {s}")),
        (None, None) => None,
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[derive(Debug, Clone, Serialize)]
pub struct DumpRestoreReport {
    pub plan: String,
    pub snapshot: SnapshotId,
    pub snapshot_time: DateTime<Utc>,
    pub database: String,
    /// The database restored into (its connection URL without password).
    pub into: String,
    pub bytes: u64,
    pub duration_seconds: f64,
}

/// Restores the logical dump of `database` from a snapshot (`latest` or an
/// id prefix) into the database named by the URL `into`, created if missing
/// and refused if it already has tables. `pg_restore` runs as one
/// transaction fed from the repository as chunks are verified; if any byte
/// fails its check the transaction is rolled back, so nothing half-restored
/// stays behind.
pub async fn restore_dump(
    repo: &Repository,
    plan: &PlanName,
    selector: &str,
    database: &str,
    into: &str,
    progress: ProgressMode,
) -> Result<DumpRestoreReport, RestoreError> {
    use crate::plan::{DbConnection, PgSslMode};
    use crate::repository::read::{ChunkReader, ReadSink};
    use crate::secret::Secret;
    use crate::source::postgres::{PgClient, DUMPS_PREFIX};

    let started = Instant::now();
    let snap = repo.find_snapshot(plan, selector).await?;
    let manifest = repo.load_manifest(&snap).await?;
    let path = format!("{DUMPS_PREFIX}/{database}.pgdump");
    let Some(entry) = manifest.entries.iter().find(|e| e.path == path).cloned() else {
        let have: Vec<&str> = manifest
            .entries
            .iter()
            .filter_map(|e| e.path.strip_prefix(&format!("{DUMPS_PREFIX}/")))
            .filter_map(|p| p.strip_suffix(".pgdump"))
            .collect();
        return Err(RestoreError::Postgres(format!(
            "snapshot {} of plan {plan} has no logical dump of database {database} (it has: {})",
            snap.id.short(),
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            }
        )));
    };
    if !into.starts_with("postgres://") && !into.starts_with("postgresql://") {
        return Err(RestoreError::Postgres(format!(
            "--into must be a postgres:// URL naming the database to restore into, e.g. postgres://postgres@127.0.0.1:5432/{database}_restored; got {into:?}"
        )));
    }
    let client = |url: &str| {
        PgClient::new(
            DbConnection {
                host: None,
                port: 5432,
                socket: None,
                user: None,
                database: None,
                dsn: Some(Secret::new(url)),
                password: None,
            },
            PgSslMode::Prefer,
        )
    };
    let pg = |e: crate::source::SourceError| RestoreError::Postgres(e.to_string());
    let target = client(into);
    let url = crate::source::postgres::url_env(into).map_err(pg)?;
    let part = |k: &str| url.iter().find(|(v, _)| *v == k).map(|(_, x)| x.as_str());
    let target_db = part("PGDATABASE")
        .ok_or_else(|| RestoreError::Postgres(format!("--into {into:?} names no database")))?
        .to_string();
    // Where it went, without the password.
    let shown = format!(
        "{}@{}:{}/{target_db}",
        part("PGUSER").unwrap_or(""),
        part("PGHOST").unwrap_or("localhost"),
        part("PGPORT").unwrap_or("5432")
    );
    // Create it if missing (connected to the maintenance database), refuse it if it has tables.
    let admin = |sql: &str| target.query_in(Some("postgres"), sql);
    let exists = admin(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{}'",
        target_db.replace('\'', "''")
    ))
    .map_err(pg)?;
    if exists.is_empty() {
        admin(&format!(
            "CREATE DATABASE \"{}\"",
            target_db.replace('"', "\"\"")
        ))
        .map_err(pg)?;
    } else {
        let tables = target
            .query("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'")
            .map_err(pg)?;
        if tables.first().and_then(|r| r.first()).map(String::as_str) != Some("0") {
            return Err(RestoreError::Postgres(format!(
                "database {target_db} already has tables; restore into a new or empty database"
            )));
        }
    }
    let mut cmd = target.command("pg_restore", None).map_err(pg)?;
    cmd.args([
        "--single-transaction",
        "--exit-on-error",
        "--no-owner",
        "-d",
    ]);
    cmd.arg(into);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        RestoreError::Postgres(format!("cannot run pg_restore: {e} (set HOLDFAST_PG_BIN)"))
    })?;
    let stdin = child.stdin.take().expect("piped");

    struct Pipe {
        stdin: Option<std::process::ChildStdin>,
        progress: crate::progress::Progress,
    }
    impl ReadSink for Pipe {
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
            // Closing stdin lets pg_restore commit: only after the whole
            // dump matched its SHA-256.
            self.stdin = None;
            Ok(())
        }
    }
    let index = Arc::new(repo.load_index().await?);
    let reader = ChunkReader::new(
        repo.store().clone(),
        index,
        tokio::runtime::Handle::current(),
    );
    let total = entry.size.unwrap_or_default();
    let progress = crate::progress::Progress::new("restore", Some(total), progress);
    let read = tokio::task::spawn_blocking(move || {
        let mut sink = Pipe {
            stdin: Some(stdin),
            progress,
        };
        let r = reader.read_files(std::slice::from_ref(&entry), &mut sink);
        sink.progress.finish();
        (r, sink.stdin.is_some())
    })
    .await
    .expect("dump reader panicked");
    let (read, unfinished) = read;
    if read.is_err() || unfinished {
        // Kill before pg_restore sees a clean end of input: its transaction
        // is rolled back.
        let _ = child.kill();
    }
    let out = child
        .wait_with_output()
        .map_err(|e| RestoreError::Postgres(format!("pg_restore: {e}")))?;
    let failed = || {
        RestoreError::Postgres(format!(
            "pg_restore into database {target_db} failed ({}), its transaction was rolled back: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    };
    match read {
        // pg_restore gave up first (our write then failed on the closed
        // pipe): its own error is the one that says why.
        Err(crate::repository::read::ReadError::Sink { .. })
            if out.status.code().is_some_and(|c| c != 0) =>
        {
            return Err(failed())
        }
        Err(source) => {
            return Err(RestoreError::Read {
                snapshot: snap.id.short(),
                target: PathBuf::from(format!("database {target_db}")),
                source: Box::new(source),
            })
        }
        Ok(()) if !out.status.success() => return Err(failed()),
        Ok(()) => {}
    }
    Ok(DumpRestoreReport {
        plan: plan.to_string(),
        snapshot: snap.id,
        snapshot_time: manifest.started_at,
        database: database.to_string(),
        into: shown,
        bytes: total,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waldump_commit_and_abort_times_are_read() {
        let text = "rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/0301B7A0, prev 0/0301B768, desc: INSERT off 3 flags 0x00\n\
rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/0301B7D8, prev 0/0301B7A0, desc: COMMIT 2026-11-26 09:52:01.123456 UTC\n\
rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/0301B800, prev 0/0301B7D8, desc: ABORT 2026-11-26 09:52:02.5 UTC\n\
rmgr: Transaction len (rec/tot):    405/   405, tx:        737, lsn: 0/0301B828, prev 0/0301B800, desc: COMMIT 2026-11-26 09:52:03.000001 UTC; inval msgs: catcache 7\n";
        let times = parse_transaction_times(text);
        assert_eq!(times.len(), 3);
        assert_eq!(times[0].to_rfc3339(), "2026-11-26T09:52:01.123456+00:00");
        assert_eq!(times[2].to_rfc3339(), "2026-11-26T09:52:03.000001+00:00");
    }

    #[test]
    fn the_server_log_says_where_recovery_stopped() {
        let log = "LOG:  restored log file \"000000010000000000000003\" from archive\nLOG:  recovery stopping before commit of transaction 750, time 2026-11-26 09:52:04.1+00\nLOG:  last completed transaction was at log time 2026-11-26 09:52:03.000001+00\n";
        assert_eq!(replayed_segments(log), 1);
        let r = reached_from_log(log).unwrap();
        assert!(
            r.contains("09:52:03.000001") && r.contains("transaction 750"),
            "{r}"
        );
    }
}
