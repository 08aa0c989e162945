//! `holdfast drill` and the daemon's scheduled drill: restore a plan's data
//! into a scratch target holdfast creates and always destroys, run the
//! plan's checks and the built-ins on it, measure every phase (the total is
//! the RTO, the restored data's age at the target the RPO), and record the
//! report write-once in the repository and as JSON and Markdown locally.
//! `holdfast drills` reads the records back ([`history`]) with the RTO trend.
//!
//! A drill that ran and found a problem (a restore that failed, a check that
//! did not hold, a run past `max_duration`) is a report with `passed: false`,
//! recorded like any other; only what stops a drill from running at all (a
//! bad request, an unreachable repository, no snapshot, too little scratch
//! space) is an [`Error`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::drill::checks;
use crate::drill::report::{
    self, default_reports_dir, drills_prefix, record_key, CheckResult, DrillReport, Phase,
    TargetReport, MAX_RECORD_BYTES,
};
use crate::drill::scratch::{self, ScratchDir};
use crate::drill::target::{fresh_seed, instant_in, snapshot_index};
use crate::engine::postgres::pitr::{restore_pitr_server, PgTarget, PitrOptions};
use crate::engine::scratch::ScratchServer;
use crate::engine::{engine_for, RestoreReport, RestoreRequest};
use crate::error::{Error, Exit};
use crate::ids::Hash256;
use crate::plan::{
    DbMode, DrillCheck, DrillPoint, Plan, SourceSpec, Tier, DEFAULT_DRILL_MAX_DURATION,
};
use crate::progress::ProgressMode;
use crate::repository::Repository;
use crate::store::PutOptions;

/// Which point a drill restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillTarget {
    /// What the plan says (`drill.target`): `drill.rewind` before now, a
    /// random point, else the newest point.
    Plan,
    /// The newest restorable point (`--latest`).
    Latest,
    /// This instant (`--at`).
    At(DateTime<Utc>),
    /// A random point inside the restorable windows, or a random snapshot
    /// (`--random`); drawn from this seed (`--seed`), else a fresh one.
    Random { seed: Option<u64> },
}

#[derive(Debug, Clone)]
pub struct DrillRequest {
    pub target: DrillTarget,
    /// The local reports folder; `None`: [`default_reports_dir`].
    pub reports: Option<PathBuf>,
}

/// One recorded drill as `holdfast drills` lists it: the report, or why
/// the record could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct DrillRecord {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<DrillReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RTO against earlier passed drills (for passed drills).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trend: Option<Trend>,
}

/// A passed drill's RTO against the passed drills before it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trend {
    /// Seconds more (positive) or less than the previous passed drill.
    pub vs_previous_seconds: f64,
    pub vs_previous_percent: f64,
    /// Seconds more or less than the median of all earlier passed drills.
    pub vs_median_seconds: f64,
    pub vs_median_percent: f64,
    /// How many earlier passed drills the median is over.
    pub earlier: usize,
}

fn pct(delta: f64, base: f64) -> f64 {
    if base > 0.0 {
        delta / base * 100.0
    } else {
        0.0
    }
}

/// Each passed drill's RTO trend against the passed drills before it.
pub fn trends(records: &mut [DrillRecord]) {
    let mut earlier: Vec<f64> = Vec::new();
    for r in records.iter_mut() {
        let Some(rep) = r.report.as_ref().filter(|rep| rep.passed) else {
            continue;
        };
        if let Some(prev) = earlier.last().copied() {
            let mut sorted = earlier.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let n = sorted.len();
            let median = if n % 2 == 1 {
                sorted[n / 2]
            } else {
                (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            };
            r.trend = Some(Trend {
                vs_previous_seconds: rep.rto_seconds - prev,
                vs_previous_percent: pct(rep.rto_seconds - prev, prev),
                vs_median_seconds: rep.rto_seconds - median,
                vs_median_percent: pct(rep.rto_seconds - median, median),
                earlier: n,
            });
        }
        earlier.push(rep.rto_seconds);
    }
}

/// [`history`], or none when the plan's repository does not exist yet (the
/// daemon's first minutes: its first backup creates the repository, and
/// the key file with it): a repository that does not exist holds no drill,
/// and that is not an error to log. `holdfast drills` uses [`history`],
/// which names a repository that is not there.
pub async fn history_so_far(plan: &Plan) -> Result<Vec<DrillRecord>, Error> {
    let store = super::open_store(plan).await?;
    if !Repository::exists(store.as_ref()).await? {
        return Ok(Vec::new());
    }
    let key = super::repo_key(plan, false).await?;
    history_in(&Repository::open(store, &key).await?, plan).await
}

/// The plan's recorded drills, oldest first, each with its trend. A record
/// that cannot be read is listed with the reason, naming its key.
pub async fn history(plan: &Plan) -> Result<Vec<DrillRecord>, Error> {
    history_in(&super::open_repo(plan).await?, plan).await
}

/// [`history`], read from the plan's repository already opened.
async fn history_in(repo: &Repository, plan: &Plan) -> Result<Vec<DrillRecord>, Error> {
    let store = repo.store();
    let objects = store.list(&drills_prefix(&plan.name)).await?;
    let sealed_max = MAX_RECORD_BYTES + repo.crypto().overhead() as u64;
    let mut records = Vec::new();
    for info in objects {
        let read = if info.size > sealed_max {
            Err(format!(
                "drill record {} is {} bytes, over the {MAX_RECORD_BYTES}-byte limit; not read",
                info.key, info.size
            ))
        } else {
            match store.get_at_most(&info.key, sealed_max).await {
                Ok(bytes) => match repo.crypto().open(&info.key, &bytes) {
                    Ok(plain) => DrillReport::decode(&info.key, &plain),
                    Err(why) => Err(format!("drill record {} is not authentic: {why}", info.key)),
                },
                Err(e) => Err(format!("unable to read drill record {}: {e}", info.key)),
            }
        };
        let (report, error) = match read {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        records.push(DrillRecord {
            key: info.key,
            report,
            error,
            trend: None,
        });
    }
    trends(&mut records);
    Ok(records)
}

/// What the engine-specific part of a drill produced.
#[derive(Default)]
struct Outcome {
    snapshot: Option<String>,
    restored_point: Option<DateTime<Utc>>,
    phases: Vec<Phase>,
    checks: Vec<CheckResult>,
    files_verified: u64,
    bytes_restored: u64,
    notes: Vec<String>,
    failures: Vec<String>,
    /// When the restore ended: the time to first byte when polling missed it.
    restored: Option<Instant>,
    /// When the checks ended: the RTO stops here, before the teardown.
    done: Option<Instant>,
    /// A started scratch server, stopped after the RTO is taken.
    server: Option<Box<dyn ScratchServer>>,
}

fn phase(name: &str, since: Instant) -> Phase {
    Phase {
        name: name.into(),
        seconds: since.elapsed().as_secs_f64(),
    }
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS gives random bytes");
    hex::encode(b)
}

/// Runs one drill of `plan`; see the module documentation.
pub async fn drill(
    plan: &Plan,
    req: &DrillRequest,
    progress: ProgressMode,
) -> Result<DrillReport, Error> {
    let started = Instant::now();
    let started_at = crate::clock::now();
    let spec = plan.drill.as_ref();
    let max_duration = spec
        .map(|d| d.max_duration)
        .unwrap_or(DEFAULT_DRILL_MAX_DURATION);
    let checks: Vec<DrillCheck> = spec.map(|d| d.checks.clone()).unwrap_or_default();
    let mut notes = Vec::new();
    if spec.is_none() {
        notes.push(format!(
            "plan {} has no drill section: built-in checks only, max_duration {}s",
            plan.name,
            max_duration.as_secs()
        ));
    }
    // A random target's instant is drawn once the windows are known.
    let (kind, at, seed) = match req.target {
        DrillTarget::Latest => ("latest", started_at, None),
        DrillTarget::At(t) => ("at", t, None),
        DrillTarget::Random { seed } => {
            ("random", started_at, Some(seed.unwrap_or_else(fresh_seed)))
        }
        DrillTarget::Plan => match spec.map(|d| d.target) {
            Some(DrillPoint::Rewind(r)) => (
                "rewind",
                started_at - chrono::Duration::from_std(r).unwrap_or(chrono::Duration::zero()),
                None,
            ),
            Some(DrillPoint::Random) => ("random", started_at, Some(fresh_seed())),
            Some(DrillPoint::Latest) | None => ("latest", started_at, None),
        },
    };
    let mut target = TargetReport {
        kind: kind.into(),
        at,
        seed,
        drawn_from: None,
    };
    let id = random_id();
    let repo = super::open_repo(plan).await?;
    let base = scratch::scratch_base(plan);
    std::fs::create_dir_all(&base).map_err(|e| {
        Error::new(
            Exit::Target,
            anyhow::anyhow!("unable to create drill.scratch_dir {}: {e}", base.display()),
        )
    })?;
    let (b, name) = (base.clone(), plan.name.clone());
    notes.extend(
        tokio::task::spawn_blocking(move || scratch::remove_leftovers(&b, &name))
            .await
            .expect("leftover removal panicked"),
    );

    // The point and how much room it needs, before anything is written.
    let pick = pick_snapshot(&repo, plan, &mut target, &mut notes).await?;
    let free = scratch::free_bytes(&base).map_err(|e| {
        Error::new(
            Exit::Target,
            anyhow::anyhow!("unable to read free space of {}: {e}", base.display()),
        )
    })?;
    if free < pick.needs_bytes {
        return Err(Error::new(
            Exit::Target,
            anyhow::anyhow!(
                "not enough scratch space for a drill of plan {}: {} has {} free, snapshot {} needs {} (set drill.scratch_dir to a filesystem with room)",
                plan.name,
                base.display(),
                human(free),
                pick.snapshot_short,
                human(pick.needs_bytes)
            ),
        ));
    }
    let dir = ScratchDir::create(&base, &plan.name).map_err(|e| {
        Error::new(
            Exit::Target,
            anyhow::anyhow!(
                "unable to create a scratch folder in {}: {e}",
                base.display()
            ),
        )
    })?;
    tracing::info!(plan = %plan.name, drill = %id, scratch = %dir.path().display(), target = %target.at, "drill started");

    let first_byte = watch_first_byte(dir.path().to_path_buf(), started);
    let work = run_engine(&repo, plan, &pick, &target, dir.path(), &checks, progress);
    let (mut outcome, over_time) = match tokio::time::timeout(max_duration, work).await {
        Ok(Ok(o)) => (o, false),
        Ok(Err(e)) if e.exit == Exit::Usage => return Err(e),
        Ok(Err(e)) => (
            Outcome {
                failures: vec![e.to_string()],
                ..Outcome::default()
            },
            false,
        ),
        Err(_) => (
            Outcome {
                failures: vec![format!(
                    "the drill ran past max_duration ({}) and was stopped; its scratch copy was torn down",
                    humantime::format_duration(max_duration)
                )],
                ..Outcome::default()
            },
            true,
        ),
    };
    let rto = outcome
        .done
        .map(|d| d.duration_since(started))
        .unwrap_or_else(|| started.elapsed());
    // Polling every 50 ms misses a faster restore: then its end is the bound.
    let ttfb = first_byte.lock().ok().and_then(|g| *g).or_else(|| {
        outcome
            .restored
            .map(|r| r.duration_since(started).as_secs_f64())
    });
    if let Some(server) = outcome.server.take() {
        let stopping = Instant::now();
        if let Err(e) = server.stop().await {
            outcome
                .notes
                .push(format!("stopping the scratch server failed: {e}"));
        }
        outcome.phases.push(phase("stop", stopping));
    }
    let scratch_path = dir.path().to_path_buf();
    // Removing a restored data directory takes a while: off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
    let mut failures = outcome.failures;
    let over_time = over_time || rto > max_duration;
    if over_time && failures.is_empty() {
        failures.push(format!(
            "the drill took {:.3}s, over max_duration {} (the data was right, the restore too slow)",
            rto.as_secs_f64(),
            humantime::format_duration(max_duration)
        ));
    }
    for c in outcome.checks.iter().filter(|c| !c.passed) {
        failures.push(format!("check {} failed: {}", c.name, c.detail));
    }
    let checks_passed = outcome.checks.iter().filter(|c| c.passed).count() as u32;
    let checks_failed = outcome.checks.len() as u32 - checks_passed;
    notes.extend(outcome.notes);
    let rpo = outcome
        .restored_point
        .map(|p| (target.at - p).num_milliseconds().max(0) as f64 / 1000.0);
    let mut report = DrillReport {
        format: report::RECORD_FORMAT.into(),
        version: report::RECORD_VERSION,
        id: id.clone(),
        plan: plan.name.clone(),
        source: plan.source.kind().to_string(),
        host: crate::hostname(),
        passed: failures.is_empty(),
        failures,
        target,
        snapshot: outcome.snapshot,
        restored_point: outcome.restored_point,
        started_at,
        finished_at: crate::clock::now(),
        rto_seconds: rto.as_secs_f64(),
        rpo_seconds: rpo,
        time_to_first_byte_seconds: ttfb,
        max_duration_seconds: max_duration.as_secs_f64(),
        over_time,
        phases: outcome.phases,
        checks: outcome.checks,
        checks_passed,
        checks_failed,
        files_verified: outcome.files_verified,
        bytes_restored: outcome.bytes_restored,
        scratch: scratch_path,
        notes,
        record_key: None,
    };
    record(&repo, plan, &mut report).await;
    let reports = req.reports.clone().unwrap_or_else(default_reports_dir);
    match report::write_local(&reports, &report) {
        Ok(path) => {
            tracing::info!(plan = %plan.name, drill = %id, report = %path.display(), "drill report written")
        }
        Err(e) => {
            let msg = format!(
                "unable to write the drill report into {}: {e} (--reports DIR)",
                reports.display()
            );
            tracing::warn!(plan = %plan.name, drill = %id, "{msg}");
            report.notes.push(msg);
        }
    }
    tracing::info!(plan = %plan.name, drill = %id, passed = report.passed, rto_seconds = report.rto_seconds, "drill finished");
    Ok(report)
}

/// Puts the report write-once under `drills/<plan>/`, locked like a monthly
/// snapshot's objects (the plan's `lock`), so the history cannot be erased.
/// A drill that cannot be recorded fails: its evidence would be lost.
async fn record(repo: &Repository, plan: &Plan, report: &mut DrillReport) {
    let key = record_key(&plan.name, report.started_at, &report.id);
    report.record_key = Some(key.clone());
    let bytes = repo.crypto().seal(&key, report.encode());
    let opts = PutOptions {
        sha256: Hash256::digest(&bytes),
        retention: plan.lock_for(Tier::Monthly, crate::clock::now()),
    };
    if let Err(e) = repo.store().put(&key, Bytes::from(bytes), &opts).await {
        report.record_key = None;
        report.passed = false;
        report.failures.push(format!(
            "unable to record the drill as {key} in {}: {e}",
            repo.url()
        ));
    }
}

/// What a drill restores, decided before anything is written.
struct Pick {
    /// SQLite / files: the snapshot's full id. PostgreSQL: unused (the
    /// restore chooses the base backup for the target).
    snapshot_id: String,
    snapshot_short: String,
    snapshot_time: DateTime<Utc>,
    needs_bytes: u64,
    /// PostgreSQL: the newest restorable transaction (or backup end).
    window_end: Option<DateTime<Utc>>,
}

async fn pick_snapshot(
    repo: &Repository,
    plan: &Plan,
    target: &mut TargetReport,
    notes: &mut Vec<String>,
) -> Result<Pick, Error> {
    let snaps = repo.list_snapshots(&plan.name).await?;
    let none = || {
        Error::new(
            Exit::DrillFailed,
            anyhow::anyhow!(
                "plan {} has no snapshot in {} to drill; take a backup first",
                plan.name,
                repo.url()
            ),
        )
    };
    if snaps.is_empty() {
        return Err(none());
    }
    let mut window_end = None;
    if matches!(plan.source, SourceSpec::Postgres { .. }) {
        let engine = engine_for(plan)?;
        let reach = engine.windows(repo, plan).await?.unwrap_or_default();
        let (Some(first), Some(last)) = (reach.windows.first(), reach.windows.last()) else {
            return Err(Error::new(
                Exit::DrillFailed,
                anyhow::anyhow!(
                    "plan {} has nothing restorable to drill: {reach}",
                    plan.name
                ),
            ));
        };
        let (from, to) = (first.from, last.to);
        if let Some(seed) = target.seed {
            let spans: Vec<_> = reach.windows.iter().map(|w| (w.from, w.to)).collect();
            let windows: Vec<String> = reach.windows.iter().map(|w| w.to_string()).collect();
            target.at = instant_in(&spans, seed).ok_or_else(|| {
                Error::new(
                    Exit::DrillFailed,
                    anyhow::anyhow!(
                        "plan {}'s restorable windows cannot be drawn from (one ends before it starts): {reach}",
                        plan.name
                    ),
                )
            })?;
            target.drawn_from = Some(format!(
                "the restorable window{} {}",
                if windows.len() == 1 { "" } else { "s" },
                windows.join("; ")
            ));
        }
        if target.at > to {
            if target.kind == "rewind" {
                notes.push(format!(
                    "rewind target {} is after the newest restorable point; drilling {} instead",
                    target.at.to_rfc3339(),
                    to.to_rfc3339()
                ));
            }
        } else if target.at < from {
            if target.kind == "at" {
                return Err(Error::usage(format!(
                    "--at {} is before plan {}'s restorable window; Restorable window: {reach}",
                    target.at.to_rfc3339(),
                    plan.name
                )));
            }
            notes.push(format!(
                "rewind target {} is before the oldest restorable point; clamped to {}",
                target.at.to_rfc3339(),
                from.to_rfc3339()
            ));
            target.at = from;
        }
        window_end = Some(to);
    }
    // SQLite and files restore to snapshot points only: a random drill
    // draws one of the snapshots.
    let drawn = match target.seed {
        Some(seed) if window_end.is_none() => {
            let i = snapshot_index(snaps.len(), seed).expect("there are snapshots");
            target.at = snaps[i].started_at;
            target.drawn_from = Some(format!(
                "snapshot {} of {}, oldest first",
                i + 1,
                snaps.len()
            ));
            Some(snaps[i].clone())
        }
        _ => None,
    };
    // The newest snapshot at or before the target.
    let chosen = drawn.or_else(|| {
        snaps
            .iter()
            .rev()
            .find(|s| s.started_at <= target.at)
            .cloned()
    });
    let chosen = match chosen {
        Some(c) => c,
        None if target.kind == "at" => {
            return Err(Error::usage(format!(
                "--at {}: plan {}'s oldest snapshot is from {}",
                target.at.to_rfc3339(),
                plan.name,
                snaps[0].started_at.to_rfc3339()
            )))
        }
        None => {
            let oldest = snaps[0].clone();
            notes.push(format!(
                "rewind target {} is before the oldest snapshot; clamped to it ({})",
                target.at.to_rfc3339(),
                oldest.started_at.to_rfc3339()
            ));
            target.at = oldest.started_at;
            oldest
        }
    };
    let manifest = repo.load_manifest(&chosen).await?;
    Ok(Pick {
        snapshot_id: chosen.id.to_hex(),
        snapshot_short: chosen.id.short(),
        snapshot_time: chosen.started_at,
        needs_bytes: manifest.stats.total_bytes,
        window_end,
    })
}

/// Restore and checks, per engine; errors are the drill's failure.
async fn run_engine(
    repo: &Repository,
    plan: &Plan,
    pick: &Pick,
    target: &TargetReport,
    scratch: &Path,
    checks: &[DrillCheck],
    progress: ProgressMode,
) -> Result<Outcome, Error> {
    let mut out = Outcome::default();
    match &plan.source {
        SourceSpec::Sqlite { .. } | SourceSpec::Files { .. } => {
            let sqlite = matches!(plan.source, SourceSpec::Sqlite { .. });
            let to = scratch.join(if sqlite { "restored.db" } else { "tree" });
            let engine = engine_for(plan)?;
            let restoring = Instant::now();
            let req = RestoreRequest {
                point: Some(crate::engine::RestorePoint::Snapshot(
                    pick.snapshot_id.clone(),
                )),
                base: None,
                to: to.clone(),
                plan_file: plan.file.clone(),
                force: false,
                check: false,
                start: false,
                port: None,
                archive: None,
                keep_setid_bits: false,
                progress,
            };
            out.snapshot = Some(pick.snapshot_short.clone());
            out.restored_point = Some(pick.snapshot_time);
            let restored = engine.restore(repo, plan, &req).await?;
            out.phases.push(phase("fetch_restore", restoring));
            out.restored = Some(Instant::now());
            if let RestoreReport::Snapshot(r) = &restored {
                out.files_verified = r.files;
                out.bytes_restored = r.bytes;
            }
            out.checks.push(CheckResult {
                name: "sha256".into(),
                kind: "builtin".into(),
                passed: true,
                detail: format!(
                    "{} restored file(s) matched their snapshot (every chunk, and each file's size)",
                    out.files_verified
                ),
            });
            let checking = Instant::now();
            let checks = checks.to_vec();
            let slot = checks::InterruptSlot::default();
            let _interrupt = checks::InterruptOnDrop(slot.clone());
            let found = tokio::task::spawn_blocking(move || {
                if sqlite {
                    checks::sqlite_checks(&to, &checks, &slot)
                } else {
                    checks::file_checks(&to, &checks)
                }
            })
            .await
            .expect("drill checks panicked");
            out.checks.extend(found);
            out.phases.push(phase("checks", checking));
            out.done = Some(Instant::now());
        }
        SourceSpec::Postgres {
            mode, connection, ..
        } => {
            if *mode == DbMode::Logical {
                return Err(Error::usage(format!(
                    "plan {} is mode: logical; drills restore physical base backups (restore a dump with `holdfast restore --dump DB --into URL`)",
                    plan.name
                )));
            }
            let spec = plan.drill.as_ref();
            let port = match spec.and_then(|d| d.port) {
                Some(p) => p,
                None => std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .map_err(|e| {
                        Error::new(
                            Exit::Failure,
                            anyhow::anyhow!("unable to find a free port: {e}"),
                        )
                    })?,
            };
            let pg_target = match (target.kind.as_str(), pick.window_end) {
                ("latest", _) => PgTarget::Latest,
                // A rewind past the newest restorable point drills that
                // point, as its note says: recovery to the time itself would
                // find no later transaction to stop at, and be refused.
                ("rewind", Some(end)) if target.at >= end => PgTarget::Latest,
                _ => PgTarget::Time(target.at),
            };
            out.restored_point = match (pg_target, pick.window_end) {
                (PgTarget::Time(t), Some(end)) => Some(t.min(end)),
                (_, end) => end,
            };
            let opts = PitrOptions {
                target: pg_target,
                snapshot: None,
                to: scratch.join("pgdata"),
                plan_file: plan.file.clone(),
                start: true,
                port: Some(port),
                archive: Some(false),
                progress,
            };
            let (report, server) = restore_pitr_server(repo, &plan.name, &opts).await?;
            out.restored = Some(Instant::now());
            out.snapshot = Some(report.base_backup.short());
            out.files_verified = report.files;
            out.bytes_restored = report.bytes;
            out.notes.extend(report.notes.iter().cloned());
            out.phases.push(Phase {
                name: "wal_check".into(),
                seconds: report.phases.check_wal_seconds,
            });
            out.phases.push(Phase {
                name: "fetch_restore".into(),
                seconds: report.phases.restore_base_seconds,
            });
            out.phases.push(Phase {
                name: "start_wal_replay".into(),
                seconds: report.phases.recovery_seconds.unwrap_or(0.0),
            });
            if let Some(reached) = &report.reached {
                out.notes.push(format!(
                    "recovery replayed {} segment(s): {reached}",
                    report.segments_replayed.unwrap_or(0)
                ));
            }
            let Some(server) = server else {
                return Err(Error::new(
                    Exit::Failure,
                    anyhow::anyhow!("the scratch server was not started"),
                ));
            };
            let server: Box<dyn ScratchServer> = Box::new(server);
            out.checks.push(CheckResult {
                name: "sha256".into(),
                kind: "builtin".into(),
                passed: true,
                detail: format!(
                    "{} restored file(s) matched their snapshot (every chunk, and each file's size), {} WAL segment(s) their SHA-256",
                    report.files, report.segments_checked
                ),
            });
            let checking = Instant::now();
            let bin = spec.and_then(|d| d.server_bin.clone()).or_else(|| {
                std::fs::read_to_string(scratch.join("pgdata/PG_VERSION"))
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .and_then(crate::engine::postgres::client::pg_bin_for)
            });
            let database = connection.database.clone().unwrap_or_else(|| {
                if connection.dsn.is_some() {
                    out.notes.push(
                        "the plan connects with a dsn: SQL checks ran in database postgres".into(),
                    );
                }
                "postgres".into()
            });
            out.checks.extend(
                checks::postgres_checks(bin.as_deref(), server.address(), &database, checks).await,
            );
            match checks::pg_amcheck(bin.as_deref(), server.address()).await {
                Some(c) => out.checks.push(c),
                None => out
                    .notes
                    .push("pg_amcheck is not installed: its built-in check was skipped".into()),
            }
            out.phases.push(phase("checks", checking));
            out.done = Some(Instant::now());
            out.server = Some(server);
        }
        SourceSpec::Mariadb {
            mode, connection, ..
        } => {
            if *mode == DbMode::Logical {
                return Err(Error::usage(format!(
                    "plan {} is mode: logical; drills restore physical backups",
                    plan.name
                )));
            }
            let spec = plan.drill.as_ref();
            let to = scratch.join("mariadb");
            let opts = crate::engine::mariadb::restore::MariaRestoreOptions {
                snapshot: pick.snapshot_id.clone(),
                to: to.clone(),
                start: false,
                port: None,
                progress,
            };
            let report = crate::engine::mariadb::restore::restore(repo, &plan.name, &opts)
                .await
                .map_err(crate::engine::RestoreError::from)?;
            for (name, seconds) in &report.phases {
                out.phases.push(Phase {
                    name: name.clone(),
                    seconds: *seconds,
                });
            }
            let starting = Instant::now();
            let server = crate::engine::mariadb::restore::start(&to, spec.and_then(|d| d.port))
                .await
                .map_err(crate::engine::RestoreError::from)?;
            out.phases.push(phase("start", starting));
            out.restored = Some(Instant::now());
            out.snapshot = Some(pick.snapshot_short.clone());
            out.restored_point = Some(report.consistent_at.unwrap_or(pick.snapshot_time));
            out.files_verified = report.files;
            out.bytes_restored = report.bytes;
            out.checks.push(CheckResult {
                name: "sha256".into(),
                kind: "builtin".into(),
                passed: true,
                detail: format!(
                    "{} restored file(s) matched their snapshot (every chunk, and each file's size)",
                    report.files
                ),
            });
            let checking = Instant::now();
            let server: Box<dyn ScratchServer> = Box::new(server);
            let database = crate::engine::mariadb::MariaClient::new(connection.clone()).database();
            out.checks
                .extend(checks::mariadb_checks(server.as_ref(), database.as_deref(), checks).await);
            out.checks
                .push(checks::mariadb_check_tables(server.as_ref()).await);
            out.phases.push(phase("checks", checking));
            out.done = Some(Instant::now());
            out.server = Some(server);
        }
    }
    Ok(out)
}

/// Polls the scratch folder until a restored byte is there; the seconds
/// from `started` to then.
fn watch_first_byte(
    dir: PathBuf,
    started: Instant,
) -> std::sync::Arc<std::sync::Mutex<Option<f64>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let out = seen.clone();
    tokio::spawn(async move {
        loop {
            let d = dir.clone();
            let found = tokio::task::spawn_blocking(move || {
                walkdir::WalkDir::new(&d)
                    .into_iter()
                    .flatten()
                    .any(|e| e.file_type().is_file() && e.metadata().is_ok_and(|m| m.len() > 0))
            })
            .await
            .unwrap_or(false);
            if found {
                if let Ok(mut g) = seen.lock() {
                    *g = Some(started.elapsed().as_secs_f64());
                }
                return;
            }
            if !dir.exists() && started.elapsed() > Duration::from_secs(1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    out
}

fn human(n: u64) -> String {
    format!("{n} bytes ({:.1} MiB)", n as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[tokio::test]
    async fn before_the_first_backup_a_plan_has_no_drills_so_far_and_after_it_a_missing_key_is_an_error(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("repo.key");
        let text = format!(
            "name: app\nsource: {{type: sqlite, path: {}}}\nrepository: {{url: {}, key_file: {}}}\nschedule: {{backup: '0 * * * *'}}\nlock: {{mode: compliance, days: 7}}\nretention: {{keep_last: 24}}\n",
            dir.path().join("app.db").display(),
            dir.path().join("repo").display(),
            key.display()
        );
        let plan = Plan::parse(&text, &dir.path().join("app.yaml"), &no_env).unwrap();
        // No repository and no key file yet: nothing to show, no error.
        assert!(history_so_far(&plan).await.unwrap().is_empty());
        // `holdfast drills` still names what is missing.
        let err = history(&plan).await.unwrap_err().to_string();
        assert!(err.contains("repo.key"), "{err}");
        // Created (as the first backup does): still no drill.
        super::super::open_or_init_repo(&plan, Utc::now())
            .await
            .unwrap();
        assert!(history_so_far(&plan).await.unwrap().is_empty());
        // A repository that exists without its key is an error again.
        std::fs::remove_file(&key).unwrap();
        let err = history_so_far(&plan).await.unwrap_err().to_string();
        assert!(err.contains("repo.key"), "{err}");
    }
}
