//! Asynchronous WAL archiving: `wal-push --async` (PostgreSQL's
//! `archive_command`) answers from what a pusher running ahead of the
//! server's archiver has already stored, and `wal-push-ahead` is that
//! pusher. pgBackRest's `archive-async` works the same way; the records
//! they share are described in [`crate::engine::postgres::spool`].
//!
//! What PostgreSQL is promised does not change: `archive_command` succeeds
//! only for a file whose exact content (size and SHA-256, checked against
//! the file it was given) the store has confirmed, and fails, with the
//! reason, otherwise, so the server keeps the file and retries.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio::task::JoinSet;

use super::wal::{check_archiving, unable_to_archive};
use crate::engine::postgres::spool::{self, Pushed, Spool};
use crate::engine::postgres::wal;
use crate::error::{Context, Error, Exit};
use crate::ids::Hash256;
use crate::plan::{Plan, Tier};

/// An I/O failure on the spool or the WAL folder, saying what was at hand.
fn local(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| {
        Error::new(
            Exit::Failure,
            anyhow::Error::new(e).context(what.to_string()),
        )
    }
}

/// How long `wal-push --async` waits for its file, unless `--timeout` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The pusher stores this many files at once, unless `--workers` says.
pub const DEFAULT_WORKERS: usize = 2;
/// The pusher exits after this long with nothing waiting.
const IDLE_EXIT: Duration = Duration::from_secs(2);
/// One file's push gets this long before it is recorded as failed.
const PUSH_DEADLINE: Duration = Duration::from_secs(600);
/// How often `wal-push --async` looks for its record.
const POLL: Duration = Duration::from_millis(5);
/// At most this many files are taken from one listing of `archive_status`.
const BATCH: usize = 64;

#[derive(Debug, Clone)]
pub struct AsyncOptions {
    /// The spool root; the plan's folder is `<spool>/<plan>`.
    pub spool: PathBuf,
    pub workers: usize,
    pub timeout: Duration,
}

/// Who stored the file `wal-push --async` answered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushedBy {
    /// The pusher, ahead of the server's request.
    Pusher,
    /// This command itself: no pusher could be started.
    ThisCommand,
}

#[derive(Debug, Clone, Serialize)]
pub struct AsyncPushReport {
    pub file: String,
    pub object: String,
    pub bytes: u64,
    pub sha256: Hash256,
    pub pushed_by: PushedBy,
    /// How long this command waited for the file to be stored.
    pub waited_seconds: f64,
}

/// What one run of the pusher did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AheadReport {
    /// `false` when another pusher held the plan's spool: this one did
    /// nothing.
    pub ran: bool,
    pub pushed: u64,
    pub bytes: u64,
    pub failed: u64,
}

/// `wal-push --async`: the answer for the WAL file at `path`, from the
/// pusher's record, starting the pusher when none runs.
pub async fn push_async(
    plan: &Plan,
    path: &Path,
    opts: &AsyncOptions,
) -> Result<AsyncPushReport, Error> {
    let context = || unable_to_archive(plan, path);
    check_archiving(plan).with_context(context)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    wal::check_name(&name).with_context(context)?;
    let here = std::env::current_dir()
        .map_err(local("the working directory"))
        .with_context(context)?;
    let file = here.join(path);
    let wal_dir = file
        .parent()
        .expect("a joined file name has a parent")
        .to_path_buf();
    let job = Job {
        name: name.clone(),
        file: file.clone(),
        wal_dir,
        spool_root: here.join(&opts.spool),
        plan_file: here.join(&plan.file),
        plan: plan.name.clone(),
        workers: opts.workers,
        timeout: opts.timeout,
    };
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || job.wait())
        .await
        .expect("the wait for the pusher panicked")
        .with_context(context)?;
    let waited_seconds = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Stored(p) => Ok(AsyncPushReport {
            file: name,
            object: p.object,
            bytes: p.size,
            sha256: p.sha256,
            pushed_by: PushedBy::Pusher,
            waited_seconds,
        }),
        Outcome::Failed(why) => Err(Error::new(
            Exit::Failure,
            anyhow::anyhow!("the pusher could not store it: {why}"),
        )
        .context(context())),
        Outcome::TimedOut(log) => Err(Error::new(
            Exit::Failure,
            anyhow::anyhow!(
                "not stored within {} (the pusher is still at it; its log is {})",
                humantime::format_duration(opts.timeout),
                log.display()
            ),
        )
        .context(context())),
        Outcome::NoPusher(why) => {
            tracing::warn!(file = %name, "no pusher could be started ({why}); storing {name} from this command");
            let report = super::wal::push(plan, &file).await?;
            Ok(AsyncPushReport {
                file: name,
                object: report.key,
                bytes: report.bytes,
                sha256: report.sha256,
                pushed_by: PushedBy::ThisCommand,
                waited_seconds: started.elapsed().as_secs_f64(),
            })
        }
    }
}

/// What `wal-push --async` needs, owned, for its blocking wait.
struct Job {
    name: String,
    file: PathBuf,
    wal_dir: PathBuf,
    spool_root: PathBuf,
    plan_file: PathBuf,
    plan: crate::plan::PlanName,
    workers: usize,
    timeout: Duration,
}

enum Outcome {
    Stored(Pushed),
    Failed(String),
    TimedOut(PathBuf),
    NoPusher(String),
}

impl Job {
    fn wait(self) -> Result<Outcome, Error> {
        let spool = Spool::open(&self.spool_root, &self.plan, &self.wal_dir).map_err(local(
            format!("the spool folder {}", self.spool_root.display()),
        ))?;
        let io = |what: &str| format!("{what} in the spool folder {}", spool.dir().display());
        // Left from an earlier request: this one asks afresh. A removed
        // error is the pusher's cue to try the file again.
        if let Some(old) = spool
            .take_error(&self.name)
            .map_err(local(io("an error")))?
        {
            tracing::debug!(file = %self.name, "earlier attempt failed: {old}; trying again");
        }
        spool
            .take_pusher_error()
            .map_err(local(io("the pusher's error")))?;
        let deadline = Instant::now() + self.timeout;
        let mut child: Option<Child> = None;
        let mut started = 0;
        loop {
            match spool.read_ok(&self.name).map_err(local(io("a record")))? {
                Some(Ok(pushed)) => {
                    let same = spool::matches(&self.file, &pushed)
                        .map_err(local(format!("reading {}", self.file.display())))?;
                    spool.remove_ok(&self.name).map_err(local(io("a record")))?;
                    if same {
                        return Ok(Outcome::Stored(pushed));
                    }
                    // Another file by this name was stored (a spool shared
                    // with a data directory that is gone): this one is
                    // pushed now, and the store refuses it if the archive
                    // holds other content under its name.
                    tracing::warn!(file = %self.name, object = %pushed.object, "the spool's record is for other content than {}: not trusted; storing the file again", self.file.display());
                }
                Some(Err(why)) => {
                    tracing::warn!(file = %self.name, "the spool's record for {} is not one holdfast wrote ({why}): not trusted; storing the file again", self.name);
                    spool.remove_ok(&self.name).map_err(local(io("a record")))?;
                }
                None => {}
            }
            if let Some(why) = spool
                .take_error(&self.name)
                .map_err(local(io("an error")))?
            {
                return Ok(Outcome::Failed(why));
            }
            let ours = child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !ours
                && !spool
                    .pusher_running()
                    .map_err(local(io("the pusher's lock")))?
            {
                if let Some(why) = spool
                    .take_pusher_error()
                    .map_err(local(io("the pusher's error")))?
                {
                    return Ok(Outcome::Failed(why));
                }
                // Two pushers came and went without an answer for this
                // file (it was not `.ready`?): store it from here.
                if started == 2 {
                    return Ok(Outcome::NoPusher(format!(
                        "{} started pushers ended without storing it",
                        started
                    )));
                }
                match self.start_pusher(&spool) {
                    Ok(c) => child = Some(c),
                    Err(e) => return Ok(Outcome::NoPusher(e.to_string())),
                }
                started += 1;
            }
            if Instant::now() >= deadline {
                return Ok(Outcome::TimedOut(spool.log_path()));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts `holdfast wal-push-ahead` detached: its own process group (a
    /// signal to the archiver's group does not cut a push short), output to
    /// the spool's log, at the default level (`info`).
    fn start_pusher(&self, spool: &Spool) -> std::io::Result<Child> {
        use std::os::unix::process::CommandExt;
        let log = spool.open_log()?;
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .arg("wal-push-ahead")
            .arg("--plan")
            .arg(&self.plan_file)
            .arg("--spool")
            .arg(&self.spool_root)
            .arg("--workers")
            .arg(self.workers.to_string())
            .arg(&self.wal_dir)
            .current_dir(spool.dir())
            // Its own log at the default level, whatever quiet level the
            // archive_command asked for itself.
            .env_remove("HOLDFAST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
    }
}

/// `wal-push-ahead`: stores the files waiting in `wal_dir/archive_status`,
/// `workers` at once, recording each in the spool, until none has waited
/// for [`IDLE_EXIT`]. Does nothing when another pusher holds the spool.
pub async fn push_ahead(
    plan: &Plan,
    wal_dir: &Path,
    opts: &AsyncOptions,
) -> Result<AheadReport, Error> {
    let (root, name, dir) = (opts.spool.clone(), plan.name.clone(), wal_dir.to_path_buf());
    let spool = tokio::task::spawn_blocking(move || Spool::open(&root, &name, &dir))
        .await
        .expect("spool open panicked")
        .map_err(local(format!("the spool folder {}", opts.spool.display())))?;
    let Some(_lock) = spool.try_lock_pusher().map_err(local(format!(
        "the pusher's lock in {}",
        spool.dir().display()
    )))?
    else {
        return Ok(AheadReport::default());
    };
    let mut report = AheadReport {
        ran: true,
        ..AheadReport::default()
    };
    let opened = async {
        check_archiving(plan)?;
        super::open_or_init_repo(plan, Utc::now()).await
    }
    .await;
    let repo = match opened {
        Ok(r) => r,
        Err(e) => {
            // Written while the lock is held: whoever finds the lock free
            // finds this too.
            let why = format!("{e}");
            let _ = spool.write_pusher_error(&why);
            return Err(e);
        }
    };
    let swept = spool.sweep(wal_dir).unwrap_or_default();
    if swept > 0 {
        tracing::info!(
            records = swept,
            "removed records of files the server is done with"
        );
    }
    let mut idle_since: Option<Instant> = None;
    // Files this pusher stored and recorded that are still `.ready`: their
    // record may already have been answered and removed before the server
    // marked them done, and pushing them again would leave a record nobody
    // asks for. Kept only while they are `.ready`, so bounded by the backlog.
    let mut recorded: HashSet<String> = HashSet::new();
    loop {
        let (ready, waiting) = {
            let (dir, spool) = (wal_dir.to_path_buf(), spool.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<String>, Vec<String>)> {
                let ready = spool::ready(&dir)?;
                let waiting = ready
                    .iter()
                    .filter(|n| !spool.has_ok(n) && !spool.has_error(n))
                    .cloned()
                    .collect();
                Ok((ready, waiting))
            })
            .await
            .expect("listing panicked")
            .map_err(local(format!(
                "listing {}/archive_status",
                wal_dir.display()
            )))?
        };
        let ready: HashSet<String> = ready.into_iter().collect();
        recorded.retain(|n| ready.contains(n));
        let waiting: Vec<String> = waiting
            .into_iter()
            .filter(|n| !recorded.contains(n))
            .take(BATCH)
            .collect();
        if waiting.is_empty() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= IDLE_EXIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        idle_since = None;
        let retention = plan.lock_for(Tier::Monthly, Utc::now());
        let mut tasks = JoinSet::new();
        let mut queue = waiting.into_iter();
        loop {
            while tasks.len() < opts.workers.max(1) {
                let Some(name) = queue.next() else { break };
                let (store, crypto) = (repo.store().clone(), repo.crypto().clone());
                let (plan_name, dir, spool) =
                    (plan.name.clone(), wal_dir.to_path_buf(), spool.clone());
                tasks.spawn(async move {
                    let result = tokio::time::timeout(
                        PUSH_DEADLINE,
                        push_one(store.as_ref(), &crypto, &plan_name, &dir, &name, retention),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "not stored within {}",
                            humantime::format_duration(PUSH_DEADLINE)
                        ))
                    });
                    let record = {
                        let (name, result) = (name.clone(), result.clone());
                        tokio::task::spawn_blocking(move || match &result {
                            Ok(Some(p)) => spool.write_ok(&name, p),
                            Ok(None) => Ok(()),
                            Err(why) => spool.write_error(&name, why),
                        })
                        .await
                        .expect("record write panicked")
                    };
                    (name, result, record)
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let (name, result, record) = done.expect("a push task panicked");
            if matches!((&result, &record), (Ok(Some(_)), Ok(()))) {
                recorded.insert(name.clone());
            }
            match result {
                Ok(Some(p)) => {
                    report.pushed += 1;
                    report.bytes += p.size;
                    tracing::info!(file = %name, object = %p.object, bytes = p.size, "WAL archived ahead");
                }
                Ok(None) => {
                    tracing::debug!(file = %name, "no longer waiting: left to the server");
                }
                Err(why) => {
                    report.failed += 1;
                    tracing::error!(file = %name, "unable to archive {name}: {why}");
                }
            }
            if let Err(e) = record {
                // Without its record the file is pushed again (the store
                // finds it already archived) or by `archive_command` itself.
                tracing::error!(file = %name, "could not record it in {}: {e}", spool.dir().display());
            }
        }
    }
    Ok(report)
}

/// Reads and stores one file. `Ok(None)` when it was no longer waiting by
/// the time it had been read: the server may since have recycled it, so
/// the bytes read are not trusted and nothing is stored.
async fn push_one(
    store: &dyn crate::store::Store,
    crypto: &crate::repository::Crypto,
    plan: &crate::plan::PlanName,
    wal_dir: &Path,
    name: &str,
    retention: Option<crate::store::Retention>,
) -> Result<Option<Pushed>, String> {
    let path = wal_dir.join(name);
    let raw = match tokio::fs::read(&path).await {
        Ok(raw) => raw,
        Err(_) if !spool::is_ready(wal_dir, name) => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    if !spool::is_ready(wal_dir, name) {
        return Ok(None);
    }
    let size = raw.len() as u64;
    let what = path.display().to_string();
    let report = wal::push_bytes(store, crypto, plan, name, raw, &what, retention)
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
    Ok(Some(Pushed {
        size,
        sha256: report.sha256,
        object: report.key,
    }))
}
