//! `holdfast daemon`: runs every plan's jobs on their schedules, serves
//! `/healthz`, `/metrics` and `/status`, reloads plans on SIGHUP or when the
//! plan files change, and drains on SIGTERM (`docs/daemon.md`).
//!
//! Files: `schedule` (clock, due times, backoff), `jobs` (the `ops` call
//! behind each job, off the async workers), `state` (last runs across
//! restarts), `metrics` (the Prometheus families), `http` (the endpoints),
//! `archive` (the watch over PostgreSQL's WAL archiving), `alerts` (the
//! conditions raised to [`crate::alert::Alerter`]), `page` (the HTML status
//! page `/`, rendered from `/status`).
//! This file is the scheduler: one loop owning the plans, starting due jobs
//! (one per plan at a time, at most `concurrency` at once), recording their
//! outcome and shutting down within the grace period.

pub mod alerts;
pub mod archive;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod page;
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

use self::archive::{ArchiveState, Look};
use self::jobs::{JobOutput, Runner};
use self::metrics::Metrics;
use self::schedule::{is_transient, jitter_unit, next_due, Clock, JobKind, RetryPolicy};
use self::state::{JobRecord, State, StateFile};
use crate::alert::{AlertConfig, AlertKind, Alerter};
use crate::error::{Error, Exit};
use crate::plan::{load_paths, Plan};

/// How often plan files are checked for changes, and the longest the loop sleeps.
pub const POLL: Duration = Duration::from_secs(2);

/// How many of a plan's last drills `/status` (and the page's RTO chart) show.
pub const DRILLS_SHOWN: usize = 30;

/// The longest a load of a plan's drill history may take.
const DRILLS_LOAD_DEADLINE: Duration = Duration::from_secs(60);

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
    /// Where alerts go (`--alert-webhook`, `--alert-command`) and how often
    /// they repeat (`--alert-repeat`).
    pub alerts: AlertConfig,
    /// The status page's address, linked from alerts (`generatorURL`).
    pub status_url: Option<String>,
    /// How often PostgreSQL's archiving is looked at (`--archive-poll`).
    pub archive_poll: Duration,
    /// How long a waiting WAL segment may see no progress before archiving
    /// counts as stalled (`--archive-stall`).
    pub archive_stall: Duration,
    /// Run every plan's drill once at start, after its first backup,
    /// whatever its schedule (`--drill-on-start`; the quickstart).
    pub drill_on_start: bool,
}

impl Config {
    /// The defaults for everything but the plans.
    pub fn new(plans: Vec<PathBuf>) -> Config {
        Config {
            plans,
            concurrency: 2,
            once: false,
            grace: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            state_dir: None,
            alerts: AlertConfig::default(),
            status_url: None,
            archive_poll: archive::DEFAULT_POLL,
            archive_stall: archive::DEFAULT_STALL,
            drill_on_start: false,
        }
    }
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
    /// Held for writing while the scheduler records a finished job or
    /// refreshes its gauges *and* publishes the status that goes with
    /// them; `/metrics`, `/status` and the page read under it. So a scrape
    /// never sees a metric ahead of the status it belongs with (the status
    /// used to follow a turn of the loop, and a state-file save, later).
    pub publishing: std::sync::RwLock<()>,
    /// When the scheduler loop last went round.
    pub heartbeat: Mutex<Instant>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            metrics: Metrics::default(),
            status: Mutex::new(json!({"plans": []})),
            publishing: std::sync::RwLock::new(()),
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
    /// What the last lock keeper run found.
    locks: Option<jobs::LockFigures>,
    /// PostgreSQL plans that archive: the archive watch's findings.
    archive: Option<ArchiveState>,
    /// When the next look at the archive is due; when the running one began.
    archive_next: Instant,
    archive_looking: Option<Instant>,
    /// MariaDB plans with `archive: true`: the binlog archiver task.
    binlog: Option<BinlogTask>,
    /// The conditions firing for this plan: kind, since, summary.
    alerts: Vec<(AlertKind, DateTime<Utc>, String)>,
    /// The plan's last recorded drills, newest last, written by the loads
    /// [`load_drills`] runs off the loop.
    drills: Arc<Mutex<Drills>>,
}

/// One recorded drill, as `/status` lists it.
#[derive(Debug, Clone, serde::Serialize)]
struct DrillPoint {
    id: String,
    started_at: DateTime<Utc>,
    passed: bool,
    rto_seconds: f64,
    rpo_seconds: Option<f64>,
}

#[derive(Debug, Default)]
struct Drills {
    /// Loads started and the newest one applied: an older load finishing
    /// late never replaces a newer list.
    started: u64,
    applied: u64,
    list: Vec<DrillPoint>,
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
    alerter: Arc<Alerter>,
    /// Alert deliveries in flight.
    sends: JoinSet<()>,
    /// Looks at PostgreSQL archiving in flight.
    looks: JoinSet<(PathBuf, Look)>,
    /// `--drill-on-start`: the plans whose start-up drill has not begun.
    drill_now: BTreeSet<String>,
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
        let mut alerter = Alerter::new(config.alerts.clone());
        if let Some(url) = &config.status_url {
            alerter = alerter.with_generator_url(url.clone());
        }
        Ok(Scheduler {
            alerter: Arc::new(alerter),
            sends: JoinSet::new(),
            looks: JoinSet::new(),
            drill_now: BTreeSet::new(),
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
        if self.config.drill_on_start {
            self.drill_now = self
                .entries
                .values()
                .filter_map(|e| e.plan.as_ref())
                .filter(|p| p.drill.is_some())
                .map(|p| p.name.to_string())
                .collect();
        }
        if self.config.once {
            self.once_queue = Some(self.due_once());
        }
        let mut control_open = true;
        let mut stopping: Option<Instant> = None;
        loop {
            *self.shared.heartbeat.lock().unwrap() = Instant::now();
            if stopping.is_none() {
                self.start_due_jobs();
                self.start_archive_looks();
            }
            self.evaluate_alerts();
            self.publish();
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
                Some(look) = self.looks.join_next(), if !self.looks.is_empty() => match look {
                    Ok((file, look)) => self.took_look(&file, look),
                    Err(e) => tracing::error!("an archive watch task failed: {e}"),
                },
                Some(_) = self.sends.join_next(), if !self.sends.is_empty() => {},
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
        self.looks.abort_all();
        // The binlog archivers saw the stop signal: let them push what is
        // complete, within the grace period.
        let archivers: Vec<_> = self
            .entries
            .values_mut()
            .filter_map(|e| e.binlog.take())
            .map(|b| b.handle)
            .collect();
        if !archivers.is_empty() {
            let _ = self.stop_tx.send(true);
            let grace = self.config.grace.max(Duration::from_secs(10));
            let all = async {
                for h in archivers {
                    let _ = h.await;
                }
            };
            if tokio::time::timeout(grace, all).await.is_err() {
                tracing::warn!("binlog archivers still pushing at exit were abandoned");
            }
        }
        // Alerts decided on the way out (a --once run's failed backup) still go out.
        if !self.sends.is_empty() {
            let deadline = crate::alert::WEBHOOK_DEADLINE * (crate::alert::WEBHOOK_ATTEMPTS + 1);
            let sends = &mut self.sends;
            let drained = tokio::time::timeout(deadline, async {
                while sends.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!("alert deliveries still running at exit were abandoned");
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
                locks: None,
                archive: None,
                archive_next: Instant::now(),
                archive_looking: None,
                binlog: None,
                alerts: Vec::new(),
                drills: Default::default(),
            });
            entry.removed = false;
            match result {
                Ok(plan) => {
                    let old = entry.label();
                    let first = entry.plan.as_ref().is_none_or(|p| p.name != plan.name);
                    if first {
                        self.shared.metrics.forget(&old);
                        load_drills(entry, &plan, self.stop_tx.subscribe());
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
                    if let Some(gap) = backup_interval(&plan, now) {
                        self.shared
                            .metrics
                            .set(&self.shared.metrics.backup_interval, &name, gap);
                    }
                    if archive::client_for(&plan).is_none() {
                        entry.archive = None;
                    }
                    let archives_binlogs =
                        crate::engine::mariadb::archive::check_archiving(&plan).is_ok();
                    let changed = entry.plan.as_ref().is_none_or(|p| {
                        p.name != plan.name
                            || p.source != plan.source
                            || p.repository != plan.repository
                    });
                    if (changed || !archives_binlogs) && !*self.stop_tx.borrow() {
                        if let Some(t) = entry.binlog.take() {
                            t.stop();
                        }
                    }
                    if archives_binlogs && entry.binlog.is_none() && !*self.stop_tx.borrow() {
                        entry.binlog = Some(BinlogTask::start(
                            plan.clone(),
                            self.config.state_dir.clone(),
                            self.stop_tx.subscribe(),
                        ));
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
            if let Some(t) = entry.binlog.take() {
                t.stop();
            }
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
                        if *job == JobKind::Drill && self.drill_now.contains(plan.name.as_str()) {
                            return true;
                        }
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
        if job == JobKind::Drill && self.drill_now.contains(plan.name.as_str()) {
            return Some(DateTime::<Utc>::MIN_UTC);
        }
        let st = self.state.plans.get(plan.name.as_str());
        let last = st.and_then(|s| s.jobs.get(&job)).map(|r| r.started_at);
        let anchor = match job {
            // The lock keeper too: it is what tells how long the kept
            // snapshots stay locked.
            JobKind::Backup | JobKind::KeepLocks => None,
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
        if job == JobKind::Drill {
            self.drill_now.remove(&name);
        }
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

    async fn finish(&mut self, done: Done) {
        let file = done.0.clone();
        let record = {
            let shared = self.shared.clone();
            let _publishing = shared.publishing.write().unwrap_or_else(|e| e.into_inner());
            let record = self.record_finished(done);
            // Gauges derived from what the job changed (lock coverage,
            // restorable window) move with it.
            self.refresh_and_publish();
            record
        };
        if record {
            self.save_state().await;
        }
        let Some(entry) = self.entries.get_mut(&file) else {
            return;
        };
        if entry.removed {
            let label = entry.label();
            self.entries.remove(&file);
            self.shared.metrics.forget(&label);
        }
    }

    /// A finished job's outcome into the metrics, the plan's entry and the
    /// state; true when the state changed and must be saved.
    fn record_finished(&mut self, (file, job, started_at, attempts, result): Done) -> bool {
        let finished_at = self.clock.now();
        let Some(entry) = self.entries.get_mut(&file) else {
            return false;
        };
        entry.running = None;
        let Some(plan) = entry.plan.as_ref() else {
            return false;
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
        if job == JobKind::Drill {
            load_drills(entry, plan, self.stop_tx.subscribe());
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
                        JobKind::KeepLocks => {
                            if let Some(l) = &out.locks {
                                m.lock_extensions
                                    .get_or_create(&metrics::PlanLabel { plan: name.clone() })
                                    .inc_by(l.objects_extended);
                                entry.locks = Some(l.clone());
                            }
                        }
                        JobKind::Drill => {}
                    }
                    if let Some(inv) = &out.inventory {
                        m.set(&m.snapshots, &name, inv.snapshots as f64);
                        m.set(&m.rejected_objects, &name, inv.rejected.len() as f64);
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
                        JobKind::Prune | JobKind::KeepLocks | JobKind::Drill => {}
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
            return true;
        }
        false
    }

    /// Starts a look at the archiving of every PostgreSQL plan that
    /// archives and is due one (not in `--once` runs).
    fn start_archive_looks(&mut self) {
        if self.config.once {
            return;
        }
        let now = self.clock.now();
        for (file, e) in self.entries.iter_mut() {
            let Some(plan) = e.plan.clone().filter(|p| archive::client_for(p).is_some()) else {
                continue;
            };
            if e.removed {
                continue;
            }
            if let Some(began) = e.archive_looking {
                if began.elapsed() >= archive::LOOK_DEADLINE {
                    let st = e.archive.get_or_insert_with(ArchiveState::default);
                    st.error = Some(format!(
                        "pg_stat_archiver has not answered in {}s (the server or the repository hangs?)",
                        began.elapsed().as_secs()
                    ));
                }
                continue;
            }
            if Instant::now() < e.archive_next {
                continue;
            }
            let read_window = e.archive.as_ref().is_none_or(|a| a.wants_window(now));
            e.archive_looking = Some(Instant::now());
            let file = file.clone();
            self.looks.spawn(async move {
                let look = archive::look(&plan, read_window).await;
                (file, look)
            });
        }
    }

    fn took_look(&mut self, file: &PathBuf, look: Look) {
        let stall = self.config.archive_stall;
        let poll = self.config.archive_poll;
        let Some(e) = self.entries.get_mut(file) else {
            return;
        };
        e.archive_looking = None;
        e.archive_next = Instant::now() + poll;
        let label = e.label();
        let st = e.archive.get_or_insert_with(ArchiveState::default);
        let was_stalled = st.stalled;
        st.update(look, stall);
        if let Some(err) = &st.error {
            tracing::warn!(plan = %label, "archive watch: {err}");
        }
        if st.stalled && !was_stalled {
            tracing::error!(plan = %label, "WAL archiving stalled: {}", st.stalled_because.as_deref().unwrap_or_default());
        }
    }

    /// Decides every plan's alert conditions on the loop, in order, and
    /// sends what is due from tasks of their own.
    fn evaluate_alerts(&mut self) {
        let now = self.clock.now();
        let mut present = BTreeSet::new();
        let mut updates = Vec::new();
        for e in self.entries.values_mut() {
            let Some(plan) = e.plan.as_ref() else {
                continue;
            };
            if e.removed {
                continue;
            }
            present.insert(plan.name.to_string());
            let binlog_gap = e.binlog.as_ref().map(|b| b.gap());
            let input = alerts::Inputs {
                plan: plan.name.as_str(),
                rpo_limit: plan.rpo_limit,
                last: e.last.iter().map(|(j, l)| (*j, &l.record)).collect(),
                newest_point: newest_point(e),
                archive: e.archive.as_ref(),
                binlog_gap: binlog_gap.as_deref(),
                locked_until: e.locks.as_ref().and_then(|l| l.locked_until),
                now,
            };
            let conditions = alerts::conditions(&input);
            e.alerts.clear();
            for c in conditions {
                let (notice, since) = self.alerter.decide(&c.plan, c.kind, c.firing);
                if c.firing {
                    e.alerts.push((c.kind, since, c.summary.clone()));
                }
                updates.push((c, notice, since));
            }
        }
        // A plan gone from the folder (or renamed) clears its alerts.
        for (plan, kind, since) in self.alerter.firing() {
            if !present.contains(&plan) {
                let c = crate::alert::Condition {
                    summary: format!("plan {plan} is no longer loaded"),
                    details: "its plan file was removed or renamed".into(),
                    plan,
                    kind,
                    firing: false,
                };
                let (notice, _) = self.alerter.decide(&c.plan, c.kind, false);
                updates.push((c, notice, since));
            }
        }
        for (c, notice, since) in updates {
            if matches!(
                notice,
                crate::alert::Notice::Suppressed | crate::alert::Notice::Quiet
            ) {
                continue;
            }
            let alerter = self.alerter.clone();
            self.sends.spawn(async move {
                let delivery = alerter.notify(&c, notice, since).await;
                if !delivery.ok() {
                    tracing::error!(plan = %c.plan, alert = %c.kind, "alert not delivered: {delivery:?}");
                }
            });
        }
    }

    /// Refreshes the gauges and publishes the status under
    /// [`Shared::publishing`], so readers see both or neither.
    fn publish(&self) {
        let _publishing = self
            .shared
            .publishing
            .write()
            .unwrap_or_else(|e| e.into_inner());
        self.refresh_and_publish();
    }

    /// The gauges, then the status; the caller holds [`Shared::publishing`].
    fn refresh_and_publish(&self) {
        self.refresh_gauges();
        self.publish_status();
    }

    /// Gauges that move with time: RPO, lock coverage, archive lag.
    fn refresh_gauges(&self) {
        let now = self.clock.now();
        let m = &self.shared.metrics;
        for e in self.entries.values() {
            if e.plan.is_none() {
                continue;
            }
            let name = e.label();
            if let Some(t) = newest_point(e) {
                m.set(&m.rpo, &name, (now - t).num_milliseconds() as f64 / 1000.0);
                m.set(&m.restorable_newest, &name, t.timestamp() as f64);
            }
            if let Some(until) = e.locks.as_ref().and_then(|l| l.locked_until) {
                m.set(&m.lock_coverage, &name, (until - now).num_seconds() as f64);
            }
            if let Some(b) = &e.binlog {
                let st = b.status.borrow();
                if let Some(t) = st.newest_event {
                    m.set(&m.binlog_archived, &name, t.timestamp() as f64);
                }
                m.set(
                    &m.binlog_gap,
                    &name,
                    if st.gap.is_empty() { 0.0 } else { 1.0 },
                );
            }
            if let Some(a) = &e.archive {
                if a.checked_at.is_some() {
                    m.set(&m.archive_stalled, &name, if a.stalled { 1.0 } else { 0.0 });
                }
                if let Some(lag) = a.lag_seconds {
                    m.set(&m.archive_lag, &name, lag);
                }
            }
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
                    "rejected": inv.map(|i| &i.rejected),
                    "restorable": inv.filter(|i| i.restorable_from.is_some()).map(|i| json!({
                        "from": i.restorable_from,
                        "to": newest_point(e).or(i.restorable_to),
                    })),
                    "rpo_seconds": newest_point(e).map(|t| (now - t).num_seconds()),
                    "rpo_limit_seconds": e.plan.as_ref().and_then(|p| p.rpo_limit).map(|d| d.as_secs()),
                    "lock_coverage": e.locks.as_ref().map(|l| json!({
                        "until": l.locked_until,
                        "seconds": l.locked_until.map(|t| (t - now).num_seconds()),
                        "weakest": l.weakest,
                        "objects_checked": l.objects_checked,
                    })),
                    "archive": e.archive,
                    "binlog": e.binlog.as_ref().map(|b| b.status.borrow().clone()),
                    "alerts": e.alerts.iter().map(|(kind, since, summary)| json!({
                        "kind": kind,
                        "since": since,
                        "summary": summary,
                    })).collect::<Vec<_>>(),
                    "drills": e.drills.lock().unwrap().list,
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

/// The newest point a restore of the plan reaches now: the archive watch's
/// newest archived transaction, else the inventory's.
fn newest_point(e: &Entry) -> Option<DateTime<Utc>> {
    let from_archive = e.archive.as_ref().and_then(|a| a.newest_point);
    let from_binlog = e
        .binlog
        .as_ref()
        .and_then(|b| b.status.borrow().newest_event);
    let from_inventory = e.inventory.as_ref().and_then(|i| i.restorable_to);
    from_archive.max(from_binlog).max(from_inventory)
}

/// A MariaDB plan's binlog archiver, run as a long-lived task: restarted
/// (with backoff) when it fails, stopped on reload (a changed source or
/// repository) and shutdown, when it pushes what is complete.
struct BinlogTask {
    status: watch::Receiver<crate::engine::mariadb::archive::Status>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl BinlogTask {
    fn start(
        plan: Plan,
        state_dir: Option<PathBuf>,
        mut shutdown: watch::Receiver<bool>,
    ) -> BinlogTask {
        let (status_tx, status) = watch::channel(Default::default());
        let (stop, mut stop_rx) = watch::channel(false);
        let state = state_dir
            .unwrap_or_else(|| std::env::temp_dir().join("holdfast"))
            .join("binlog")
            .join(plan.name.to_string());
        // The archiver stops on either this task's stop or the daemon's.
        let (both_tx, both) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
            let _ = both_tx.send(true);
        });
        let handle = tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let r = crate::ops::binlog::archive(&plan, state.clone(), &status_tx, both.clone())
                    .await;
                if *both.borrow() {
                    break;
                }
                if let Err(e) = r {
                    tracing::error!(plan = %plan.name, "binlog archiver failed: {e}; restarting in {}s", backoff.as_secs());
                    status_tx.send_modify(|s| s.last_error = Some(e.to_string()));
                }
                let mut w = both.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = w.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        });
        BinlogTask {
            status,
            stop,
            handle,
        }
    }

    /// Asks the archiver to stop; it pushes what is complete on its own.
    fn stop(self) {
        let _ = self.stop.send(true);
    }

    fn gap(&self) -> Vec<String> {
        self.status.borrow().gap.clone()
    }
}

/// Seconds between the backup schedule's next two runs after `now`: the
/// `holdfast_backup_interval_seconds` the "backup too old" rule scales by.
fn backup_interval(plan: &Plan, now: DateTime<Utc>) -> Option<f64> {
    match plan.schedule.next_runs(now, 2).as_slice() {
        [a, b, ..] => Some((*b - *a).num_seconds() as f64),
        _ => None,
    }
}

/// Loads the plan's last [`DRILLS_SHOWN`] drills from its repository into
/// `entry.drills`, on a blocking-pool thread (a local repository reads files
/// synchronously), so the loop never waits for it. A failure is logged and
/// leaves the list as it was. Gives up at [`DRILLS_LOAD_DEADLINE`], on
/// shutdown, or when the scheduler is gone (`stop` closed).
fn load_drills(entry: &Entry, plan: &Plan, mut stop: watch::Receiver<bool>) {
    let slot = entry.drills.clone();
    let seq = {
        let mut d = slot.lock().unwrap();
        d.started += 1;
        d.started
    };
    let plan = plan.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            let loaded = tokio::select! {
                r = tokio::time::timeout(DRILLS_LOAD_DEADLINE, crate::ops::drill::history_so_far(&plan)) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            let records = match loaded {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => {
                    tracing::error!(plan = %plan.name, "unable to load the drill history for /status: {e}");
                    return;
                }
                Err(_) => {
                    tracing::error!(
                        plan = %plan.name,
                        "loading the drill history for /status took over {}s; gave up",
                        DRILLS_LOAD_DEADLINE.as_secs()
                    );
                    return;
                }
            };
            let mut list: Vec<DrillPoint> = records
                .into_iter()
                .filter_map(|r| r.report)
                .map(|r| DrillPoint {
                    id: r.id,
                    started_at: r.started_at,
                    passed: r.passed,
                    rto_seconds: r.rto_seconds,
                    rpo_seconds: r.rpo_seconds,
                })
                .collect();
            list.sort_by_key(|d| d.started_at);
            let mut d = slot.lock().unwrap();
            if seq > d.applied {
                d.applied = seq;
                d.list = list[list.len().saturating_sub(DRILLS_SHOWN)..].to_vec();
            }
        })
    });
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
            reports: config.state_dir.as_ref().map(|d| d.join("drills")),
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
