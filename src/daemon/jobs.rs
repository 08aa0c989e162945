//! What a job does: the `ops` use case behind each [`JobKind`], run off the
//! async workers, and cancellable. The scheduler only knows the [`Runner`]
//! trait, so its tests drive it with a runner of their own on a paused clock.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use super::schedule::JobKind;
use crate::error::{Error, Exit};
use crate::ops::snapshots::SnapshotRow;
use crate::plan::Plan;
use crate::progress::ProgressMode;

pub type JobFuture = Pin<Box<dyn Future<Output = Result<JobOutput, Error>> + Send>>;

/// Runs one job of one plan. `cancel` turns `true` when the grace period
/// after SIGTERM is over: the job must then stop, leaving nothing half-done
/// visible, and return [`cancelled`].
pub trait Runner: Send + Sync + 'static {
    fn run(&self, plan: Plan, job: JobKind, cancel: watch::Receiver<bool>) -> JobFuture;
}

/// What a finished job reports, for metrics and `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobOutput {
    /// One line for logs and `/status`.
    pub summary: String,
    pub backup: Option<BackupFigures>,
    /// The repository's snapshots after a backup or prune.
    pub inventory: Option<Inventory>,
    /// A drill's figures, passed or failed: the scheduler turns a failed
    /// drill into the job's error after exporting them.
    pub drill: Option<DrillFigures>,
    /// What the lock keeper found and did.
    pub locks: Option<LockFigures>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LockFigures {
    /// Locks lengthened by this run.
    pub objects_extended: u64,
    pub objects_checked: usize,
    /// The earliest lock end among the objects kept snapshots need, after
    /// this run; `None` when nothing is kept.
    pub locked_until: Option<DateTime<Utc>>,
    /// The object whose lock ends first.
    pub weakest: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillFigures {
    pub passed: bool,
    pub rto_seconds: f64,
    pub rpo_seconds: Option<f64>,
    pub checks_passed: u32,
    pub checks_failed: u32,
    /// Why it failed (the report's failures), empty when it passed.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupFigures {
    pub snapshot: String,
    pub duration_seconds: f64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub bytes_new: u64,
    pub locks_extended: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub snapshots: usize,
    pub last_backup: Option<LastBackup>,
    /// How far restores reach: the log archive's windows, else the oldest
    /// and newest snapshot.
    pub restorable_from: Option<DateTime<Utc>>,
    pub restorable_to: Option<DateTime<Utc>>,
    /// Objects under the plan's snapshots that are not believed: unreadable,
    /// or failing the checks of `repository::trust` (forged, replayed,
    /// future-dated, off the hash chain).
    pub rejected: Vec<crate::repository::Rejected>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastBackup {
    pub snapshot: String,
    pub time: DateTime<Utc>,
}

/// The error a cancelled job ends with.
pub fn cancelled(plan: &Plan, job: JobKind) -> Error {
    Error::new(
        Exit::Failure,
        anyhow::anyhow!(
            "{job} of plan {} was cancelled at shutdown; nothing it wrote is visible",
            plan.name
        ),
    )
}

/// The runner the daemon uses: each job on a blocking-pool thread of its
/// own (engines read files and run SQLite synchronously; none of that may
/// stall the HTTP endpoints or the scheduler), driven there by the runtime
/// with `block_on`, and dropped when `cancel` fires: a backup writes its
/// manifest last, so a dropped backup leaves no snapshot, only unreferenced
/// packs the next prune removes.
pub struct OpsRunner {
    /// Where drills write their local reports: the daemon's state folder's
    /// `drills/`, writable wherever the daemon runs (its user's home may
    /// not be: systemd's DynamicUser, a read-only container). `None`: the
    /// drill's default.
    pub reports: Option<std::path::PathBuf>,
    /// The daemon's state folder: sampled verifies keep their cursor there.
    pub state_dir: Option<PathBuf>,
}

impl Runner for OpsRunner {
    fn run(&self, plan: Plan, job: JobKind, mut cancel: watch::Receiver<bool>) -> JobFuture {
        let handle = tokio::runtime::Handle::current();
        let reports = self.reports.clone();
        let state_dir = self.state_dir.clone();
        Box::pin(async move {
            let name = plan.name.clone();
            let joined = tokio::task::spawn_blocking(move || {
                handle.block_on(async move {
                    tokio::select! {
                        r = run_op(&plan, job, reports, state_dir.as_deref()) => r,
                        _ = cancel.wait_for(|c| *c) => Err(cancelled(&plan, job)),
                    }
                })
            })
            .await;
            joined.unwrap_or_else(|e| {
                Err(Error::new(
                    Exit::Failure,
                    anyhow::anyhow!("{job} of plan {name} panicked: {e}"),
                ))
            })
        })
    }
}

async fn run_op(
    plan: &Plan,
    job: JobKind,
    reports: Option<std::path::PathBuf>,
    state_dir: Option<&Path>,
) -> Result<JobOutput, Error> {
    match job {
        JobKind::Drill => {
            let req = crate::ops::drill::DrillRequest {
                target: crate::ops::drill::DrillTarget::Plan,
                reports,
            };
            let r = crate::ops::drill::drill(plan, &req, ProgressMode::Quiet).await?;
            Ok(JobOutput {
                summary: format!(
                    "drill {} {}: RTO {:.1}s, checks {} passed, {} failed{}",
                    r.id,
                    if r.passed { "passed" } else { "FAILED" },
                    r.rto_seconds,
                    r.checks_passed,
                    r.checks_failed,
                    if r.failures.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", r.failures.join("; "))
                    }
                ),
                drill: Some(DrillFigures {
                    passed: r.passed,
                    rto_seconds: r.rto_seconds,
                    rpo_seconds: r.rpo_seconds,
                    checks_passed: r.checks_passed,
                    checks_failed: r.checks_failed,
                    failures: r.failures.clone(),
                }),
                ..JobOutput::default()
            })
        }
        JobKind::Backup => {
            let r = crate::ops::backup::backup(plan, ProgressMode::Quiet).await?;
            let inventory = inventory(plan).await.ok();
            Ok(JobOutput {
                summary: format!(
                    "snapshot {} saved: {} bytes read, {} new, {} stored in {:.1}s",
                    r.snapshot.short(),
                    r.bytes_read,
                    r.stats.new_bytes,
                    r.stats.stored_bytes,
                    r.duration_seconds
                ),
                backup: Some(BackupFigures {
                    snapshot: r.snapshot.to_string(),
                    duration_seconds: r.duration_seconds,
                    bytes_read: r.bytes_read,
                    bytes_stored: r.stats.stored_bytes,
                    bytes_new: r.stats.new_bytes,
                    locks_extended: r.locks_extended,
                }),
                inventory,
                ..JobOutput::default()
            })
        }
        JobKind::Verify => {
            let req = crate::ops::verify::VerifyRequest {
                snapshot: None,
                sample: plan.verify_sample,
                depth: plan.verify_depth,
                state_dir,
                progress: ProgressMode::Quiet,
            };
            let r = crate::ops::verify::verify(plan, &req).await?;
            let packs = match &r.sample {
                None => format!("{} packs", r.packs_checked),
                Some(s) => format!(
                    "sample of {} of {} packs ({})",
                    s.packs_read, s.packs_total, s.percent
                ),
            };
            if !r.ok() {
                let first = r
                    .problems
                    .first()
                    .map(|p| format!("{}: {}", p.object, p.detail))
                    .unwrap_or_default();
                return Err(Error::new(
                    Exit::Verify,
                    anyhow::anyhow!(
                        "verify of plan {} found {} problem(s), the first: {first}",
                        plan.name,
                        r.problems.len()
                    ),
                ));
            }
            let chunks = match r.depth {
                crate::plan::VerifyDepth::Chunks => "verified",
                crate::plan::VerifyDepth::Stored => "placed (stored bytes checked)",
            };
            Ok(JobOutput {
                summary: format!(
                    "{} snapshots, {packs}, {} chunks {chunks}; no problems",
                    r.snapshots_checked, r.chunks_checked
                ),
                ..JobOutput::default()
            })
        }
        JobKind::KeepLocks => {
            let opts = crate::ops::locks::KeepLocksOptions::new(crate::clock::now(), false);
            let r = crate::ops::locks::keep_locks(plan, &opts).await?;
            let locked_until = r.weakest.as_ref().map(|(_, t)| *t);
            Ok(JobOutput {
                summary: format!(
                    "{} kept snapshots: {} of {} objects' locks lengthened ({} WAL files){}",
                    r.snapshots_kept,
                    r.objects_extended,
                    r.objects_checked,
                    r.log_files_extended,
                    match &r.weakest {
                        Some((key, t)) => format!("; the earliest lock ends {t} ({key})"),
                        None => String::new(),
                    }
                ),
                locks: Some(LockFigures {
                    objects_extended: r.objects_extended,
                    objects_checked: r.objects_checked,
                    locked_until,
                    weakest: r.weakest.map(|(k, _)| k),
                }),
                ..JobOutput::default()
            })
        }
        JobKind::Prune => {
            let r = crate::ops::prune::prune(plan, false).await?;
            let inventory = inventory(plan).await.ok();
            Ok(JobOutput {
                summary: format!(
                    "{} snapshots kept, {} removed, {} held by their lock; {} packs removed",
                    r.kept.len(),
                    r.removed.len(),
                    r.held_by_lock.len(),
                    r.packs_removed
                ),
                inventory,
                ..JobOutput::default()
            })
        }
    }
}

/// The plan's snapshots and restorable window, as `holdfast snapshots` sees them.
pub async fn inventory(plan: &Plan) -> Result<Inventory, Error> {
    let report = crate::ops::snapshots::snapshots(plan).await?;
    let mut times: Vec<(DateTime<Utc>, String)> = report
        .rows
        .iter()
        .filter_map(|r| match r {
            SnapshotRow::Readable { time, short_id, .. } => Some((*time, short_id.clone())),
            SnapshotRow::Unreadable { .. } => None,
        })
        .collect();
    times.sort();
    let (from, to) = match &report.windows {
        Some(w) if !w.is_empty() => (w.iter().map(|w| w.from).min(), w.iter().map(|w| w.to).max()),
        _ => (times.first().map(|t| t.0), times.last().map(|t| t.0)),
    };
    let mut rejected = report.rejected.clone();
    for row in &report.rows {
        if let SnapshotRow::Unreadable { key, error, .. } = row {
            rejected.push(crate::repository::Rejected {
                object: key.clone(),
                kind: crate::repository::RejectKind::Unreadable,
                detail: error.clone(),
            });
        }
    }
    rejected.sort_by(|a, b| a.object.cmp(&b.object));
    Ok(Inventory {
        snapshots: times.len(),
        rejected,
        last_backup: times.last().map(|(time, id)| LastBackup {
            snapshot: id.clone(),
            time: *time,
        }),
        restorable_from: from,
        restorable_to: to,
    })
}
