//! `holdfast daemon`: runs every plan's jobs on their schedules, serves
//! `/healthz`, `/metrics` and `/status`, reloads plans on SIGHUP or when the
//! plan files change, and drains on SIGTERM (`docs/daemon.md`).
//!
//! Files: `schedule` (clock, due times, backoff), `jobs` (the `ops` call
//! behind each job, off the async workers), `state` (last runs across
//! restarts), `metrics` (the Prometheus families), `http` (the endpoints).
//! This file is the scheduler: one loop owning the plans, starting due jobs
//! (one per plan at a time, at most `concurrency` at once), recording their
//! outcome and shutting down within the grace period.

pub mod http;
pub mod jobs;
pub mod metrics;
pub mod schedule;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::jobs::{JobOutput, Runner};
use self::metrics::Metrics;
use self::schedule::{is_transient, jitter_unit, next_due, Clock, JobKind, RetryPolicy};
use self::state::{JobRecord, State, StateFile};
use crate::error::{Error, Exit};
use crate::plan::{load_paths, Plan};

/// How often plan files are checked for changes, and the longest the loop sleeps.
pub const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Config {
    /// Plan files and folders of plans (`*.yaml`, `*.yml`).
    pub plans: Vec<PathBuf>,
    pub concurrency: usize,
    /// Run every due or never-run job once, then return.
    pub once: bool,
    /// After a shutdown request, how long running jobs may take to finish.
    pub grace: Duration,
    pub retry: RetryPolicy,
    /// Where the state file lives; `None`: nothing persisted (tests).
    pub state_dir: Option<PathBuf>,
}

/// What the loop is told from outside: signals, in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Reload,
    Shutdown,
}

/// What the HTTP endpoints read.
pub struct Shared {
    pub metrics: Metrics,
    pub status: Mutex<serde_json::Value>,
    /// When the scheduler loop last went round.
    pub heartbeat: Mutex<Instant>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            metrics: Metrics::default(),
            status: Mutex::new(json!({"plans": []})),
            heartbeat: Mutex::new(Instant::now()),
        }
    }
}

/// How a run of the loop ended.
#[derive(Debug, Default)]
pub struct Summary {
    pub jobs_run: usize,
    pub failures: Vec<(String, JobKind, Exit)>,
    pub cancelled: usize,
}

/// The last outcome of a job, as `/status` shows it.
#[derive(Debug, Clone)]
struct LastRun {
    record: JobRecord,
    summary: Option<String>,
}

struct Entry {
    file: PathBuf,
    /// The last version that validated; keeps running while the file is broken.
    plan: Option<Plan>,
    /// Why the file as it is now does not validate.
    error: Option<String>,
    running: Option<JobKind>,
    /// The file is gone: no new jobs; forgotten once its job ends.
    removed: bool,
    last: BTreeMap<JobKind, LastRun>,
    inventory: Option<jobs::Inventory>,
}

impl Entry {
    /// The `plan` label: the plan's name, or the file's stem if it never validated.
    fn label(&self) -> String {
        match &self.plan {
            Some(p) => p.name.to_string(),
            None => self
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

type Done = (
    PathBuf,
    JobKind,
    DateTime<Utc>,
    u32,
    Result<JobOutput, Error>,
);

pub struct Scheduler<R: Runner> {
    config: Config,
    clock: Clock,
    runner: Arc<R>,
    shared: Arc<Shared>,
    semaphore: Arc<Semaphore>,
    state: State,
    state_file: Option<StateFile>,
    entries: BTreeMap<PathBuf, Entry>,
    tasks: JoinSet<Done>,
    stop_tx: watch::Sender<bool>,
    cancel_tx: watch::Sender<bool>,
    fingerprint: Vec<(PathBuf, Option<SystemTime>, u64)>,
    /// `--once`: the jobs still to run, per plan file, in order.
    once_queue: Option<BTreeMap<PathBuf, Vec<JobKind>>>,
    summary: Summary,
}

impl<R: Runner> Scheduler<R> {
    pub fn new(
        config: Config,
        clock: Clock,
        runner: R,
        shared: Arc<Shared>,
    ) -> Result<Self, Error> {
        let state_file = config
            .state_dir
            .as_deref()
            .map(StateFile::in_dir)
            .transpose()?;
        let state = match &state_file {
            Some(f) => f.load()?,
            None => State::default(),
        };
        Ok(Scheduler {
            semaphore: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            clock,
            runner: Arc::new(runner),
            shared,
            state,
            state_file,
            entries: BTreeMap::new(),
            tasks: JoinSet::new(),
            stop_tx: watch::channel(false).0,
            cancel_tx: watch::channel(false).0,
            fingerprint: Vec::new(),
            once_queue: None,
            summary: Summary::default(),
        })
    }

    /// Runs until told to shut down (or, with `once`, until every due job
    /// has run once). Reload and shutdown requests arrive on `control`.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) -> Result<Summary, Error> {
        self.fingerprint = fingerprint(&self.config.plans).await;
        self.reload().await;
        if self.config.once {
            self.once_queue = Some(self.due_once());
        }
        let mut control_open = true;
        let mut stopping: Option<Instant> = None;
        loop {
            *self.shared.heartbeat.lock().unwrap() = Instant::now();
            if stopping.is_none() {
                self.start_due_jobs();
            }
            self.publish_status();
            let once_done = self
                .once_queue
                .as_ref()
                .is_some_and(|q| q.values().all(Vec::is_empty));
            if self.tasks.is_empty() && (stopping.is_some() || once_done) {
                break;
            }
            let wake = match (stopping, self.next_wake()) {
                // Until the jobs are cancelled, wake at the grace deadline,
                // at once when it has passed (a grace of 0s): never a whole
                // POLL later, while a job goes on writing.
                (Some(deadline), _) if !*self.cancel_tx.borrow() => {
                    deadline.min(Instant::now() + POLL)
                }
                (Some(_), _) => Instant::now() + POLL,
                (None, Some(at)) => self.clock.instant_of(at).min(Instant::now() + POLL),
                (None, None) => Instant::now() + POLL,
            };
            tokio::select! {
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(done) => self.finish(done).await,
                    Err(e) => tracing::error!("a job task failed: {e}"),
                },
                c = control.recv(), if control_open => match c {
                    Some(Control::Reload) => {
                        tracing::info!("reloading plans (SIGHUP)");
                        self.reload().await;
                    }
                    Some(Control::Shutdown) if stopping.is_none() => {
                        tracing::info!(
                            running = self.tasks.len(),
                            "shutting down: no new jobs; running jobs have {}s to finish",
                            self.config.grace.as_secs()
                        );
                        stopping = Some(Instant::now() + self.config.grace);
                        let _ = self.stop_tx.send(true);
                    }
                    Some(Control::Shutdown) => {}
                    None => control_open = false,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if let Some(deadline) = stopping {
                        if Instant::now() >= deadline && !*self.cancel_tx.borrow() {
                            tracing::warn!(running = self.tasks.len(), "grace period over: cancelling running jobs");
                            let _ = self.cancel_tx.send(true);
                        }
                    } else if !self.config.once {
                        let now = fingerprint(&self.config.plans).await;
                        if now != self.fingerprint {
                            self.fingerprint = now;
                            tracing::info!("plan files changed: reloading");
                            self.reload().await;
                        }
                    }
                }
            }
        }
        Ok(self.summary)
    }

    /// Reads every plan again. A plan that fails validation is reported and
    /// its previous version keeps running; new files start, removed ones stop.
    async fn reload(&mut self) {
        let paths = self.config.plans.clone();
        let results = tokio::task::spawn_blocking(move || load_paths(&paths))
            .await
            .unwrap_or_default();
        let now = self.clock.now();
        let mut seen = BTreeSet::new();
        for (file, result) in results {
            seen.insert(file.clone());
            let entry = self.entries.entry(file.clone()).or_insert_with(|| Entry {
                file: file.clone(),
                plan: None,
                error: None,
                running: None,
                removed: false,
                last: BTreeMap::new(),
                inventory: None,
            });
            entry.removed = false;
            match result {
                Ok(plan) => {
                    let old = entry.label();
                    if entry.plan.as_ref().is_some_and(|p| p.name != plan.name)
                        || entry.plan.is_none()
                    {
                        self.shared.metrics.forget(&old);
                    }
                    let name = plan.name.to_string();
                    tracing::info!(plan = %name, file = %file.display(), "plan loaded");
                    let st = self.state.plans.entry(name.clone()).or_default();
                    st.since.get_or_insert(now);
                    // The last runs the state file remembers, for /status.
                    for (job, rec) in &st.jobs {
                        entry.last.entry(*job).or_insert_with(|| LastRun {
                            record: rec.clone(),
                            summary: None,
                        });
                    }
                    entry.plan = Some(plan);
                    entry.error = None;
                    self.shared
                        .metrics
                        .set(&self.shared.metrics.plan_valid, &name, 1.0);
                }
                Err(e) => {
                    let label = entry.label();
                    tracing::error!(
                        plan = %label,
                        file = %file.display(),
                        "plan invalid, {}: {e}",
                        if entry.plan.is_some() { "its previous version keeps running" } else { "not scheduled" }
                    );
                    entry.error = Some(e.to_string());
                    self.shared
                        .metrics
                        .set(&self.shared.metrics.plan_valid, &label, 0.0);
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .entries
            .keys()
            .filter(|f| !seen.contains(*f))
            .cloned()
            .collect();
        for file in gone {
            let entry = self.entries.get_mut(&file).expect("listed");
            tracing::info!(plan = %entry.label(), file = %file.display(), "plan removed: no new jobs");
            if entry.running.is_some() {
                entry.removed = true;
            } else {
                let label = entry.label();
                self.entries.remove(&file);
                self.shared.metrics.forget(&label);
            }
        }
        self.save_state().await;
    }

    /// `--once`: per plan, every job never run or overdue, in `JobKind::ALL` order.
    fn due_once(&self) -> BTreeMap<PathBuf, Vec<JobKind>> {
        let now = self.clock.now();
        self.entries
            .iter()
            .filter_map(|(file, e)| {
                let plan = e.plan.as_ref()?;
                let st = self.state.plans.get(plan.name.as_str());
                let jobs = JobKind::ALL
                    .into_iter()
                    .filter(|job| {
                        let last = st.and_then(|s| s.jobs.get(job)).map(|r| r.started_at);
                        job.schedule(plan)
                            .and_then(|s| next_due(s, last, None))
                            .is_some_and(|t| t <= now)
                    })
                    .collect();
                Some((file.clone(), jobs))
            })
            .collect()
    }

    /// When the job is next due in daemon mode: backups at once when never
    /// run (a new plan gets its first snapshot now), verify and prune counted
    /// from when the plan was first seen.
    fn due_at(&self, plan: &Plan, job: JobKind) -> Option<DateTime<Utc>> {
        let st = self.state.plans.get(plan.name.as_str());
        let last = st.and_then(|s| s.jobs.get(&job)).map(|r| r.started_at);
        let anchor = match job {
            JobKind::Backup => None,
            _ => st.and_then(|s| s.since),
        };
        next_due(job.schedule(plan)?, last, anchor)
    }

    fn next_wake(&self) -> Option<DateTime<Utc>> {
        if self.once_queue.is_some() {
            return None;
        }
        self.entries
            .values()
            .filter(|e| e.running.is_none() && !e.removed)
            .filter_map(|e| e.plan.as_ref())
            .flat_map(|p| JobKind::ALL.map(|j| self.due_at(p, j)))
            .flatten()
            .min()
    }

    fn start_due_jobs(&mut self) {
        let now = self.clock.now();
        let files: Vec<PathBuf> = self.entries.keys().cloned().collect();
        for file in files {
            let entry = &self.entries[&file];
            if entry.running.is_some() || entry.removed {
                continue;
            }
            let Some(plan) = entry.plan.clone() else {
                continue;
            };
            let job = match &mut self.once_queue {
                Some(q) => match q.get_mut(&file) {
                    Some(jobs) if !jobs.is_empty() => Some(jobs.remove(0)),
                    _ => None,
                },
                // The longest overdue first (ties in `JobKind::ALL` order), so
                // a backup slower than its schedule cannot starve verify and prune.
                None => JobKind::ALL
                    .into_iter()
                    .filter_map(|j| self.due_at(&plan, j).filter(|t| *t <= now).map(|t| (t, j)))
                    .min()
                    .map(|(_, j)| j),
            };
            if let Some(job) = job {
                self.start(file, plan, job, now);
            }
        }
    }

    fn start(&mut self, file: PathBuf, plan: Plan, job: JobKind, now: DateTime<Utc>) {
        let name = plan.name.to_string();
        tracing::info!(plan = %name, job = %job, "starting {job}");
        self.entries.get_mut(&file).expect("known").running = Some(job);
        self.shared.metrics.running(&name, job.as_str(), true);
        let runner = self.runner.clone();
        let semaphore = self.semaphore.clone();
        let mut stop = self.stop_tx.subscribe();
        let cancel = self.cancel_tx.subscribe();
        let retry = self.config.retry;
        self.tasks.spawn(async move {
            let mut attempt = 0;
            loop {
                let permit = tokio::select! {
                    p = semaphore.clone().acquire_owned() => p.expect("never closed"),
                    _ = stop.wait_for(|s| *s) => {
                        return (file, job, now, attempt, Err(jobs::cancelled(&plan, job)));
                    }
                };
                attempt += 1;
                let result = runner.run(plan.clone(), job, cancel.clone()).await;
                drop(permit);
                match result {
                    Err(e)
                        if is_transient(e.exit) && attempt < retry.attempts && !*stop.borrow() =>
                    {
                        let wait = retry.backoff(attempt - 1, jitter_unit());
                        tracing::warn!(
                            plan = %plan.name, job = %job, attempt,
                            "{job} failed, retrying in {:.1}s: {e}", wait.as_secs_f64()
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.wait_for(|s| *s) => return (file, job, now, attempt, Err(e)),
                        }
                    }
                    other => return (file, job, now, attempt, other),
                }
            }
        });
    }

    async fn finish(&mut self, (file, job, started_at, attempts, result): Done) {
        let finished_at = self.clock.now();
        let Some(entry) = self.entries.get_mut(&file) else {
            return;
        };
        entry.running = None;
        let Some(plan) = entry.plan.as_ref() else {
            return;
        };
        let name = plan.name.to_string();
        let m = &self.shared.metrics;
        m.running(&name, job.as_str(), false);
        let ts = finished_at.timestamp() as f64;
        // A drill that ran exports its figures whether it passed or not; a
        // failed one is then the job's error (exit 11, never retried).
        let mut result = result;
        if let Ok(out) = &result {
            if let Some(d) = &out.drill {
                m.set(&m.drill_last, &name, ts);
                m.set(
                    &m.drill_last_success,
                    &name,
                    if d.passed { 1.0 } else { 0.0 },
                );
                m.set(&m.drill_rto, &name, d.rto_seconds);
                if let Some(rpo) = d.rpo_seconds {
                    m.set(&m.drill_rpo, &name, rpo);
                }
                m.set(&m.drill_checks_passed, &name, d.checks_passed as f64);
                m.set(&m.drill_checks_failed, &name, d.checks_failed as f64);
                if !d.passed {
                    result = Err(Error::new(
                        Exit::DrillFailed,
                        anyhow::anyhow!("{}", out.summary),
                    ));
                }
            }
        }
        let cancelled = *self.cancel_tx.borrow() && result.is_err();
        if cancelled || (attempts == 0 && result.is_err()) {
            // Not recorded: the job counts as not run, and catches up at the next start.
            tracing::warn!(plan = %name, job = %job, "{job} cancelled at shutdown");
            self.summary.cancelled += 1;
        } else {
            self.summary.jobs_run += 1;
            let record = JobRecord {
                started_at,
                finished_at,
                ok: result.is_ok(),
                error: result.as_ref().err().map(|e| e.to_string()),
                attempts,
            };
            match &result {
                Ok(out) => {
                    tracing::info!(plan = %name, job = %job, "{job} done: {}", out.summary);
                    match job {
                        JobKind::Backup => {
                            m.set(&m.backup_last_success, &name, ts);
                            if let Some(b) = &out.backup {
                                m.set(&m.backup_duration, &name, b.duration_seconds);
                                m.set(&m.backup_bytes_read, &name, b.bytes_read as f64);
                                m.set(&m.backup_bytes_stored, &name, b.bytes_stored as f64);
                                m.set(&m.backup_bytes_new, &name, b.bytes_new as f64);
                                m.lock_extensions
                                    .get_or_create(&metrics::PlanLabel { plan: name.clone() })
                                    .inc_by(b.locks_extended);
                            }
                        }
                        JobKind::Verify => {
                            m.set(&m.verify_last_success, &name, 1.0);
                            m.set(&m.verify_last, &name, ts);
                        }
                        JobKind::Prune => m.set(&m.prune_last, &name, ts),
                        JobKind::Drill => {}
                    }
                    if let Some(inv) = &out.inventory {
                        m.set(&m.snapshots, &name, inv.snapshots as f64);
                        if let Some(t) = inv.restorable_from {
                            m.set(&m.restorable_oldest, &name, t.timestamp() as f64);
                        }
                        if let Some(t) = inv.restorable_to {
                            m.set(&m.restorable_newest, &name, t.timestamp() as f64);
                        }
                        entry.inventory = Some(inv.clone());
                    }
                }
                Err(e) => {
                    tracing::error!(plan = %name, job = %job, attempts, "{job} failed: {e}");
                    self.summary.failures.push((name.clone(), job, e.exit));
                    match job {
                        JobKind::Backup => m.set(&m.backup_last_failure, &name, ts),
                        JobKind::Verify => {
                            m.set(&m.verify_last_success, &name, 0.0);
                            m.set(&m.verify_last, &name, ts);
                        }
                        JobKind::Prune | JobKind::Drill => {}
                    }
                }
            }
            entry.last.insert(
                job,
                LastRun {
                    record: record.clone(),
                    summary: result.as_ref().ok().map(|o| o.summary.clone()),
                },
            );
            self.state
                .plans
                .entry(name.clone())
                .or_default()
                .jobs
                .insert(job, record);
            self.save_state().await;
        }
        let entry = self.entries.get_mut(&file).expect("known");
        if entry.removed {
            let label = entry.label();
            self.entries.remove(&file);
            self.shared.metrics.forget(&label);
        }
    }

    async fn save_state(&self) {
        let Some(file) = self.state_file.clone() else {
            return;
        };
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || file.save(&state)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{e}"),
            Err(e) => tracing::error!("saving the state file failed: {e}"),
        }
    }

    fn publish_status(&self) {
        let now = self.clock.now();
        let plans: Vec<serde_json::Value> = self
            .entries
            .values()
            .map(|e| {
                let next: serde_json::Map<String, serde_json::Value> = match &e.plan {
                    Some(p) => JobKind::ALL
                        .iter()
                        .map(|j| {
                            let at = self.due_at(p, *j).map(|t| t.max(now));
                            (j.as_str().to_string(), json!(at))
                        })
                        .collect(),
                    None => Default::default(),
                };
                let last: serde_json::Map<String, serde_json::Value> = e
                    .last
                    .iter()
                    .map(|(j, l)| {
                        let r = &l.record;
                        (
                            j.as_str().to_string(),
                            json!({
                                "started_at": r.started_at,
                                "finished_at": r.finished_at,
                                "outcome": if r.ok { "ok" } else { "failed" },
                                "error": r.error,
                                "summary": l.summary,
                                "attempts": r.attempts,
                                "duration_seconds": (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0,
                            }),
                        )
                    })
                    .collect();
                let inv = e.inventory.as_ref();
                json!({
                    "plan": e.label(),
                    "file": e.file,
                    "valid": e.error.is_none(),
                    "error": e.error,
                    "running": e.running,
                    "next_runs": next,
                    "last_runs": last,
                    "last_backup": inv.and_then(|i| i.last_backup.as_ref()).map(|b| json!({
                        "snapshot": b.snapshot,
                        "time": b.time,
                        "age_seconds": (now - b.time).num_seconds(),
                    })),
                    "snapshots": inv.map(|i| i.snapshots),
                    "restorable": inv.filter(|i| i.restorable_from.is_some()).map(|i| json!({
                        "from": i.restorable_from,
                        "to": i.restorable_to,
                    })),
                })
            })
            .collect();
        *self.shared.status.lock().unwrap() = json!({
            "now": now,
            "stopping": *self.stop_tx.borrow(),
            "plans": plans,
        });
    }
}

/// What the plan paths look like now: each plan file's mtime and size.
async fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let paths = paths.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut stat = |p: PathBuf| {
            let meta = std::fs::metadata(&p).ok();
            out.push((
                p,
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map(|m| m.len()).unwrap_or(0),
            ));
        };
        for path in paths {
            if path.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                    })
                    .collect();
                files.sort();
                files.into_iter().for_each(&mut stat);
            } else {
                stat(path);
            }
        }
        out
    })
    .await
    .unwrap_or_default()
}

/// The daemon: the scheduler with the real jobs, the HTTP endpoints on
/// `listener`, SIGHUP for reload and SIGTERM/SIGINT for shutdown.
pub async fn run(config: Config, listener: tokio::net::TcpListener) -> Result<Summary, Error> {
    let shared = Arc::new(Shared::default());
    let scheduler = Scheduler::new(
        config.clone(),
        Clock::System,
        jobs::OpsRunner {
            state_dir: config.state_dir.clone(),
        },
        shared.clone(),
    )?;
    let (tx, rx) = mpsc::channel(8);
    let signals = tokio::spawn(forward_signals(tx));
    let (http_stop, http_stopped) = watch::channel(false);
    let server = tokio::spawn(http::serve(listener, shared.clone(), http_stopped));
    let result = scheduler.run(rx).await;
    signals.abort();
    let _ = http_stop.send(true);
    let _ = server.await;
    result
}

async fn forward_signals(tx: mpsc::Sender<Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("unable to install signal handlers");
        return;
    };
    loop {
        let c = tokio::select! {
            _ = hup.recv() => Control::Reload,
            _ = term.recv() => Control::Shutdown,
            _ = int.recv() => Control::Shutdown,
        };
        if tx.send(c).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
