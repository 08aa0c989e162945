//! The scheduler on tokio's paused clock: a wall clock anchored to tokio's
//! time, real plan files and state file, and a runner that records when each
//! job ran instead of touching a repository (the process tests in
//! `tests/daemon.rs` run the real jobs).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[derive(Debug, Clone)]
struct Call {
    plan: String,
    job: JobKind,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    cancelled: bool,
}

/// Takes `duration` of tokio time per job; fails with the queued exit
/// classes first; stops when cancelled.
#[derive(Clone)]
struct Recorder {
    clock: Clock,
    duration: Duration,
    calls: Arc<Mutex<Vec<Call>>>,
    failures: Arc<Mutex<VecDeque<Exit>>>,
    running: Arc<AtomicUsize>,
    max_running: Arc<AtomicUsize>,
    /// Plans with a job running now, and whether one ever had two.
    busy: Arc<Mutex<(BTreeSet<String>, bool)>>,
}

impl Recorder {
    fn new(clock: &Clock, duration: Duration) -> Recorder {
        Recorder {
            clock: clock.clone(),
            duration,
            calls: Default::default(),
            failures: Default::default(),
            running: Default::default(),
            max_running: Default::default(),
            busy: Default::default(),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn starts(&self, plan: &str, job: JobKind) -> Vec<DateTime<Utc>> {
        self.calls()
            .iter()
            .filter(|c| c.plan == plan && c.job == job)
            .map(|c| c.start)
            .collect()
    }
}

impl Runner for Recorder {
    fn run(&self, plan: Plan, job: JobKind, mut cancel: watch::Receiver<bool>) -> jobs::JobFuture {
        let me = self.clone();
        Box::pin(async move {
            let start = me.clock.now();
            {
                let mut busy = me.busy.lock().unwrap();
                let twice = !busy.0.insert(plan.name.to_string());
                busy.1 |= twice;
            }
            let n = me.running.fetch_add(1, Ordering::SeqCst) + 1;
            me.max_running.fetch_max(n, Ordering::SeqCst);
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(me.duration) => false,
                _ = cancel.wait_for(|c| *c) => true,
            };
            me.running.fetch_sub(1, Ordering::SeqCst);
            me.busy.lock().unwrap().0.remove(plan.name.as_str());
            me.calls.lock().unwrap().push(Call {
                plan: plan.name.to_string(),
                job,
                start,
                end: me.clock.now(),
                cancelled,
            });
            if cancelled {
                return Err(jobs::cancelled(&plan, job));
            }
            match me.failures.lock().unwrap().pop_front() {
                Some(exit) => Err(Error::new(exit, anyhow::anyhow!("injected {exit:?}"))),
                None => Ok(JobOutput::default()),
            }
        })
    }
}

fn plan_text(name: &str, backup: &str) -> String {
    format!(
        "name: {name}\nsource: {{type: sqlite, path: {name}.db}}\nrepository: {{url: repo}}\nschedule: {{backup: '{backup}'}}\nlock: {{mode: none}}\nretention: {{keep_last: 3}}\n"
    )
}

fn write_plan(dir: &Path, name: &str, backup: &str) {
    std::fs::write(dir.join(format!("{name}.yaml")), plan_text(name, backup)).unwrap();
}

fn config(dir: &Path) -> Config {
    Config {
        concurrency: 4,
        state_dir: Some(dir.join("state")),
        ..Config::new(vec![dir.join("plans")])
    }
}

struct Running {
    handle: tokio::task::JoinHandle<Result<Summary, Error>>,
    control: mpsc::Sender<Control>,
    shared: Arc<Shared>,
}

fn start(config: Config, clock: &Clock, runner: &Recorder) -> Running {
    let shared = Arc::new(Shared::default());
    let scheduler = Scheduler::new(config, clock.clone(), runner.clone(), shared.clone()).unwrap();
    let (control, rx) = mpsc::channel(4);
    Running {
        handle: tokio::spawn(scheduler.run(rx)),
        control,
        shared,
    }
}

impl Running {
    async fn stop(self) -> Summary {
        self.control.send(Control::Shutdown).await.unwrap();
        self.handle.await.unwrap().unwrap()
    }
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plans")).unwrap();
    dir
}

#[tokio::test(start_paused = true)]
async fn backups_fire_on_their_cron_times_and_a_new_plan_backs_up_at_once() {
    let dir = setup();
    write_plan(&dir.path().join("plans"), "app", "*/5 * * * *");
    let clock = Clock::tokio_at(at("2026-03-02T08:00:30Z"));
    let runner = Recorder::new(&clock, Duration::from_secs(10));
    let daemon = start(config(dir.path()), &clock, &runner);
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let summary = daemon.stop().await;
    assert_eq!(
        runner.starts("app", JobKind::Backup),
        [
            "2026-03-02T08:00:30Z",
            "2026-03-02T08:05:00Z",
            "2026-03-02T08:10:00Z",
            "2026-03-02T08:15:00Z",
            "2026-03-02T08:20:00Z"
        ]
        .map(at)
    );
    // verify (@weekly) and prune (@daily) count from when the plan was first seen.
    assert!(runner.starts("app", JobKind::Verify).is_empty());
    assert!(runner.starts("app", JobKind::Prune).is_empty());
    assert_eq!(summary.jobs_run, 5);
    assert!(summary.failures.is_empty());
}

#[tokio::test(start_paused = true)]
async fn runs_missed_while_down_are_caught_up_once_not_in_a_burst() {
    let dir = setup();
    write_plan(&dir.path().join("plans"), "app", "0 * * * *");
    // The state a daemon left at 06:00; it was down until 13:10, seven runs missed.
    let file = StateFile::in_dir(&dir.path().join("state")).unwrap();
    let mut state = State::default();
    let six = at("2026-03-02T06:00:00Z");
    let st = state.plans.entry("app".into()).or_default();
    st.since = Some(at("2026-03-01T00:00:00Z"));
    st.jobs.insert(
        JobKind::Backup,
        JobRecord {
            started_at: six,
            finished_at: six,
            ok: true,
            error: None,
            attempts: 1,
        },
    );
    file.save(&state).unwrap();

    let clock = Clock::tokio_at(at("2026-03-02T13:10:00Z"));
    let runner = Recorder::new(&clock, Duration::from_secs(30));
    let daemon = start(config(dir.path()), &clock, &runner);
    tokio::time::sleep(Duration::from_secs(80 * 60)).await;
    daemon.stop().await;
    assert_eq!(
        runner.starts("app", JobKind::Backup),
        ["2026-03-02T13:10:30Z", "2026-03-02T14:00:00Z"].map(at)
    );
    // The daily prune missed at midnight was caught up once too; the longest
    // overdue job goes first.
    assert_eq!(
        runner.starts("app", JobKind::Prune),
        [at("2026-03-02T13:10:00Z")]
    );
    let saved = file.load().unwrap();
    assert_eq!(
        saved.plans["app"].jobs[&JobKind::Backup].started_at,
        at("2026-03-02T14:00:00Z")
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_jittered_backoff_bad_input_never() {
    let dir = setup();
    write_plan(&dir.path().join("plans"), "app", "0 * * * *");
    let clock = Clock::tokio_at(at("2026-03-02T08:00:00Z"));
    let runner = Recorder::new(&clock, Duration::from_secs(1));
    runner
        .failures
        .lock()
        .unwrap()
        .extend([Exit::Repository, Exit::Busy, Exit::Repository]);
    let mut cfg = config(dir.path());
    cfg.retry = RetryPolicy {
        attempts: 5,
        base: Duration::from_secs(10),
        max: Duration::from_secs(25),
    };
    let daemon = start(cfg, &clock, &runner);
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    let calls = runner.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    // Waits after attempts 1, 2, 3: at most 10 s, 20 s, 25 s (the cap).
    for (i, ceiling) in [10, 20, 25].into_iter().enumerate() {
        let gap = (calls[i + 1].start - calls[i].end).num_milliseconds();
        assert!((0..=ceiling * 1000).contains(&gap), "wait {i} was {gap} ms");
    }
    let st = daemon.shared.status.lock().unwrap().clone();
    assert_eq!(st["plans"][0]["last_runs"]["backup"]["attempts"], 4, "{st}");
    assert_eq!(st["plans"][0]["last_runs"]["backup"]["outcome"], "ok");

    // Bad input: one attempt, recorded as failed, the error kept.
    runner.failures.lock().unwrap().push_back(Exit::Plan);
    tokio::time::sleep(Duration::from_secs(60 * 60)).await;
    let summary = daemon.stop().await;
    assert_eq!(runner.calls().len(), 5);
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(summary.failures[0].2, Exit::Plan);
}

#[tokio::test(start_paused = true)]
async fn one_job_per_plan_and_at_most_concurrency_jobs_at_once() {
    let dir = setup();
    let plans = dir.path().join("plans");
    for name in ["a", "b", "c"] {
        write_plan(&plans, name, "* * * * *");
    }
    // Verify and prune are due every minute too, competing with the backup.
    for name in ["a", "b", "c"] {
        let p = plans.join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&p).unwrap().replace(
            "backup: '* * * * *'",
            "backup: '* * * * *', verify: '* * * * *', prune: '* * * * *'",
        );
        std::fs::write(p, text).unwrap();
    }
    let clock = Clock::tokio_at(at("2026-03-02T08:00:00Z"));
    // Each job takes 90 s: longer than the schedule's period.
    let runner = Recorder::new(&clock, Duration::from_secs(90));
    let mut cfg = config(dir.path());
    cfg.concurrency = 2;
    let daemon = start(cfg, &clock, &runner);
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    daemon.stop().await;
    let calls = runner.calls();
    assert!(calls.len() >= 20, "{}", calls.len());
    assert_eq!(runner.max_running.load(Ordering::SeqCst), 2);
    assert!(
        !runner.busy.lock().unwrap().1,
        "a plan ran two jobs at once"
    );
    for plan in ["a", "b", "c"] {
        let mut mine: Vec<&Call> = calls.iter().filter(|c| c.plan == plan).collect();
        mine.sort_by_key(|c| c.start);
        for w in mine.windows(2) {
            assert!(
                w[0].end <= w[1].start,
                "{plan}: {:?} overlaps {:?}",
                w[0],
                w[1]
            );
        }
        // Backup, verify and prune all get their turn (these plans have no
        // drill section, so no drill job).
        for job in NO_DRILL {
            assert!(mine.iter().any(|c| c.job == job), "{plan} never ran {job}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_grace_period_then_cancels_and_records_nothing() {
    let dir = setup();
    write_plan(&dir.path().join("plans"), "app", "0 * * * *");
    let clock = Clock::tokio_at(at("2026-03-02T08:00:00Z"));
    let runner = Recorder::new(&clock, Duration::from_secs(600));
    let mut cfg = config(dir.path());
    cfg.grace = Duration::from_secs(120);
    let daemon = start(cfg, &clock, &runner);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let asked = clock.now();
    let summary = daemon.stop().await;
    let calls = runner.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].cancelled);
    assert_eq!(calls[0].end - asked, chrono::Duration::seconds(120));
    assert_eq!(summary.cancelled, 1);
    assert_eq!(summary.jobs_run, 0);
    // Not recorded as run: the next start catches it up.
    let state = StateFile::in_dir(&dir.path().join("state"))
        .unwrap()
        .load()
        .unwrap();
    assert!(state.plans["app"].jobs.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_broken_plan_keeps_its_previous_version_running_and_removed_plans_stop() {
    let dir = setup();
    let plans = dir.path().join("plans");
    write_plan(&plans, "app", "*/10 * * * *");
    write_plan(&plans, "gone", "*/10 * * * *");
    let clock = Clock::tokio_at(at("2026-03-02T08:00:00Z"));
    let runner = Recorder::new(&clock, Duration::from_secs(5));
    let daemon = start(config(dir.path()), &clock, &runner);
    tokio::time::sleep(Duration::from_secs(60)).await;

    std::fs::write(
        plans.join("app.yaml"),
        plan_text("app", "*/10 * * * *").replace("keep_last: 3", "keep_lsat: 3"),
    )
    .unwrap();
    std::fs::remove_file(plans.join("gone.yaml")).unwrap();
    daemon.control.send(Control::Reload).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;

    let metrics = daemon.shared.metrics.encode();
    assert!(
        metrics.contains("holdfast_plan_valid{plan=\"app\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("plan=\"gone\""), "{metrics}");
    let status = daemon.shared.status.lock().unwrap().clone();
    let app = &status["plans"][0];
    assert_eq!(app["valid"], false);
    let error = app["error"].as_str().unwrap();
    assert!(
        error.contains("app.yaml") && error.contains("keep_lsat"),
        "{error}"
    );
    assert_eq!(status["plans"].as_array().unwrap().len(), 1, "{status}");
    daemon.stop().await;
    // app's previous version went on: 08:00, 08:10, 08:20, 08:30; gone ran once.
    assert_eq!(runner.starts("app", JobKind::Backup).len(), 4);
    assert_eq!(runner.starts("gone", JobKind::Backup).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn once_runs_every_never_run_job_then_returns() {
    let dir = setup();
    write_plan(&dir.path().join("plans"), "app", "0 * * * *");
    let clock = Clock::tokio_at(at("2026-03-02T08:30:00Z"));
    let runner = Recorder::new(&clock, Duration::from_secs(5));
    let mut cfg = config(dir.path());
    cfg.once = true;
    let daemon = start(cfg.clone(), &clock, &runner);
    let summary = daemon.handle.await.unwrap().unwrap();
    assert_eq!(summary.jobs_run, 3);
    let jobs: Vec<JobKind> = runner.calls().iter().map(|c| c.job).collect();
    assert_eq!(jobs, NO_DRILL);
    // Again at once: nothing is due.
    let daemon = start(cfg, &clock, &runner);
    assert_eq!(daemon.handle.await.unwrap().unwrap().jobs_run, 0);
}

/// The jobs of a plan without a `drill` section.
const NO_DRILL: [JobKind; 3] = [JobKind::Backup, JobKind::Verify, JobKind::Prune];
