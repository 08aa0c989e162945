//! The binlog archiver: streams a MariaDB server's binlogs as a replica
//! would (`mariadb-binlog --read-from-remote-server --raw --stop-never`)
//! into a spool folder under the state dir (0700), and from there into the
//! repository (`binlog/<plan>/`, see [`super::binlog`]): the growing file
//! as parts each flush interval, up to its last complete event, so the RPO
//! is the interval, not the time to the next rotation; a completed file as
//! the parts not stored yet, then a small record listing all its parts.
//! Each byte is uploaded once, and memory is bounded by one part
//! ([`binlog::MAX_PART`], or one larger event): the spool is read in
//! windows of that size, never a file whole.
//!
//! What it owns:
//! * where to start: the first binlog the server still has that is not
//!   complete in the repository (the oldest on the server when nothing is
//!   archived), resuming a growing file after the parts already stored;
//! * purged binlogs: when a file it needs is gone from the server, it names
//!   the missing files, records the gap in its [`Status`] (the daemon's
//!   metric and alert) and goes on from the oldest file available;
//! * restarts: `mariadb-binlog` exiting (server restart, network) is
//!   restarted with backoff; every wait has a deadline;
//! * stopping: on the stop signal it stops `mariadb-binlog`, pushes what is
//!   complete, and returns. Each object is one create-only put: a part is
//!   either fully stored or not at all, and a retried push of the same
//!   bytes is idempotent; parts an earlier run stored are reused once they
//!   are checked against the spool, not pushed again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::binlog::{self, BinlogName, BinlogRecord, PartRecord, Scan};
use super::MariaClient;
use crate::error::{Error, Exit};
use crate::ids::Hash256;
use crate::plan::{Plan, PlanName, SourceSpec};
use crate::repository::{log_archive, Repository};
use crate::store::Retention;

/// The default flush interval of the growing binlog.
pub const DEFAULT_FLUSH: Duration = Duration::from_secs(10);
/// The longest wait between restarts of `mariadb-binlog`.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A query to the server (`SHOW BINARY LOGS`) must answer within this.
const QUERY_DEADLINE: Duration = Duration::from_secs(30);
/// `mariadb-binlog` must exit within this once asked to stop.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How many missing file names a gap lists (the rest are counted).
const MAX_NAMED: usize = 100;

/// The flush interval: `HOLDFAST_BINLOG_FLUSH_SECS` (hidden, for tests),
/// else 10 s.
pub fn flush_interval() -> Duration {
    std::env::var("HOLDFAST_BINLOG_FLUSH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.1 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_FLUSH)
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The archiver's own folder: the spool (`spool/`) and the cache of
    /// files verified complete in the repository (`complete`).
    pub state_dir: PathBuf,
    pub flush: Duration,
    /// The lock each object gets (the plan's longest tier).
    pub retention: Option<Retention>,
}

/// What the archiver has done and knows, for `--json`, `/status` and the
/// daemon's metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The file being streamed and how far it is archived.
    pub file: Option<String>,
    pub archived_offset: u64,
    /// The newest event time archived (RPO reference).
    pub newest_event: Option<DateTime<Utc>>,
    pub last_gtid: Option<String>,
    /// Completed files and parts pushed by this run.
    pub completed: u64,
    pub parts: u64,
    pub bytes: u64,
    /// Binlogs known missing from the archive: purged on the server before
    /// they were archived, or a hole in the archived sequence.
    pub gap: Vec<String>,
    /// Times `mariadb-binlog` was restarted.
    pub restarts: u64,
    pub last_error: Option<String>,
}

fn fail(plan: &PlanName, what: impl std::fmt::Display) -> Error {
    Error::new(
        Exit::Failure,
        anyhow::anyhow!("binlog archiving for plan {plan}: {what}"),
    )
}

/// The connection of a plan that archives binlogs; exit 2 naming the plan
/// for any other.
pub fn check_archiving(plan: &Plan) -> Result<MariaClient, Error> {
    match &plan.source {
        SourceSpec::Mariadb {
            connection,
            archive: true,
            ..
        } => Ok(MariaClient::new(connection.clone())),
        // Exit 2 (usage): the command does not apply to this plan.
        other => Err(Error::new(
            Exit::Usage,
            anyhow::anyhow!(
                "{}: plan {} does not archive binlogs: binlog-archive needs `source: {{type: mariadb, mode: physical}}` with `archive: true`; this plan's source is {}",
                plan.file.display(),
                plan.name,
                other
            ),
        )),
    }
}

/// A replica server id of its own per plan, so two plans on one server do
/// not disconnect each other (the server keeps one dump per replica id).
fn replica_id(plan: &PlanName) -> u32 {
    let h = crate::ids::Hash256::digest(plan.to_string().as_bytes());
    0x7000_0000 + (u32::from_le_bytes(h.0[..4].try_into().expect("4 bytes")) % 0x0fff_ffff)
}

/// Runs the archiver until `stop` turns true. Returns the final status.
pub async fn run(
    plan: &Plan,
    repo: &Repository,
    opts: &Options,
    status: &watch::Sender<Status>,
    mut stop: watch::Receiver<bool>,
) -> Result<Status, Error> {
    let client = check_archiving(plan)?;
    prepare_dir(&opts.state_dir)
        .await
        .map_err(|e| fail(&plan.name, e))?;
    let mut a = Archiver {
        plan: plan.name.clone(),
        client,
        repo,
        opts,
        status,
        complete_cache: read_cache(&opts.state_dir).await,
        growing: None,
        last_flush: Instant::now(),
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        match a.session(&mut stop).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(plan = %plan.name, "binlog archiving: {e:#}; restarting in {}s", backoff.as_secs());
                status.send_modify(|s| s.last_error = Some(format!("{e:#}")));
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        status.send_modify(|s| s.restarts += 1);
    }
    Ok(status.borrow().clone())
}

async fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let spool = dir.join("spool");
    tokio::fs::create_dir_all(&spool).await?;
    for d in [dir, &spool] {
        tokio::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).await?;
    }
    Ok(())
}

async fn read_cache(dir: &Path) -> BTreeSet<String> {
    tokio::fs::read_to_string(dir.join("complete"))
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| BinlogName::parse(l).is_ok())
        .map(str::to_owned)
        .collect()
}

/// The growing file: its name, how far the repository holds it, and the
/// parts this run stored of it (its record lists them without reading
/// them back).
struct Growing {
    name: BinlogName,
    archived_end: u64,
    parts: Vec<PartRecord>,
}

struct Archiver<'a> {
    plan: PlanName,
    client: MariaClient,
    repo: &'a Repository,
    opts: &'a Options,
    status: &'a watch::Sender<Status>,
    /// Files verified complete in the repository (by this archiver's own
    /// push or a read back), so a restart does not download them again.
    complete_cache: BTreeSet<String>,
    growing: Option<Growing>,
    last_flush: Instant,
}

enum Ended {
    Stopped,
    Exited(String),
}

impl Archiver<'_> {
    fn spool(&self) -> PathBuf {
        self.opts.state_dir.join("spool")
    }

    async fn remember_complete(&mut self, name: &BinlogName) {
        if self.complete_cache.insert(name.to_string()) {
            while self.complete_cache.len() > 10_000 {
                let first = self.complete_cache.iter().next().cloned();
                if let Some(f) = first {
                    self.complete_cache.remove(&f);
                }
            }
            let text: String = self
                .complete_cache
                .iter()
                .map(|n| format!("{n}\n"))
                .collect();
            let path = self.opts.state_dir.join("complete");
            let tmp = path.with_extension("tmp");
            if tokio::fs::write(&tmp, text).await.is_ok() {
                let _ = tokio::fs::rename(&tmp, &path).await;
            }
        }
    }

    /// One run of `mariadb-binlog`: `Ok(true)` when stopped on request,
    /// `Ok(false)` when it exited (to be restarted).
    async fn session(&mut self, stop: &mut watch::Receiver<bool>) -> Result<bool, Error> {
        let plan = self.plan.clone();
        let server = self.server_logs().await?;
        let Some(oldest) = server.first().cloned() else {
            return Err(fail(
                &plan,
                "the server lists no binary logs (SHOW BINARY LOGS is empty): is log_bin on?",
            ));
        };
        let store = self.repo.store();
        let listed = binlog::list(store.as_ref(), &plan)
            .await
            .map_err(|e| fail(&plan, e))?;

        // Holes in the archived sequence stay known until pruned away.
        let mut gap: Vec<String> = binlog::holes(&listed);

        // Where to start: the first file the server has that is not
        // complete in the repository.
        let mut start = None;
        for name in &server {
            let complete = match listed.get(name) {
                Some(l) if l.complete => {
                    self.complete_cache.contains(&name.to_string())
                        || self.verify_complete(name).await?
                }
                _ => false,
            };
            if !complete {
                start = Some(name.clone());
                break;
            }
        }
        let start = start.unwrap_or_else(|| server.last().cloned().expect("not empty"));

        // Purged before archiving: the files after the newest complete one
        // archived (same base) that the server no longer has.
        let newest_complete = listed
            .iter()
            .filter(|(n, l)| l.complete && n.base == oldest.base)
            .map(|(n, _)| n.clone())
            .next_back();
        let newest_any = listed.keys().rfind(|n| n.base == oldest.base).cloned();
        if let Some(last) = newest_complete.or(newest_any) {
            let needed_from = if listed.get(&last).is_some_and(|l| l.complete) {
                last.next()
            } else {
                Some(last.clone())
            };
            if let Some(needed) = needed_from {
                if needed < oldest {
                    let mut missing = vec![needed.to_string()];
                    missing.extend(
                        needed
                            .between(&oldest, MAX_NAMED)
                            .iter()
                            .map(|n| n.to_string()),
                    );
                    tracing::error!(
                        plan = %plan,
                        "BINLOG GAP: {} {} purged on the server before holdfast archived {}; point-in-time restore cannot cross it. Archiving goes on from {oldest}, the oldest binlog the server has. Take a new backup to start a restorable window after the gap",
                        missing.join(", "),
                        if missing.len() == 1 { "was" } else { "were" },
                        if missing.len() == 1 { "it" } else { "them" },
                    );
                    for m in missing {
                        if !gap.contains(&m) {
                            gap.push(m);
                        }
                    }
                }
            }
        }
        gap.sort();
        self.status.send_modify(|s| {
            s.gap = gap;
            s.file = Some(start.to_string());
        });

        // A fresh spool: what a previous run left is streamed again.
        let spool = self.spool();
        clear_spool(&spool).await.map_err(|e| {
            fail(
                &plan,
                format!("unable to clear the spool {}: {e}", spool.display()),
            )
        })?;
        self.growing = None;

        let mut cmd = self
            .client
            .command("mariadb-binlog")
            .map_err(|e| fail(&plan, e))?;
        cmd.args([
            "--read-from-remote-server".to_string(),
            "--raw".to_string(),
            "--stop-never".to_string(),
            format!("--stop-never-slave-server-id={}", replica_id(&plan)),
            format!("--result-file={}/", spool.display()),
            start.to_string(),
        ]);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            fail(
                &plan,
                format!("cannot run mariadb-binlog: {e} (install the Debian package mariadb-client, or set HOLDFAST_MARIADB_BIN)"),
            )
        })?;
        tracing::info!(plan = %plan, file = %start, "binlog archiving: streaming from {start}");
        let mut stderr = child.stderr.take().expect("piped");
        let err_text = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 8192 {
                    buf.drain(..buf.len() - 8192);
                }
            }
            String::from_utf8_lossy(&buf).trim().to_string()
        });

        let tick = (self.opts.flush / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let ended = loop {
            tokio::select! {
                r = child.wait() => {
                    let code = r.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    let said = tokio::time::timeout(Duration::from_secs(5), err_text).await
                        .ok().and_then(|r| r.ok()).unwrap_or_default();
                    break Ended::Exited(format!("mariadb-binlog exited ({code}): {said}"));
                }
                _ = stop.changed() => break Ended::Stopped,
                _ = tokio::time::sleep(tick) => {}
            }
            self.push_spool(false).await?;
        };
        if let Ended::Stopped = ended {
            let _ = child.start_kill();
            if tokio::time::timeout(STOP_DEADLINE, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(plan = %plan, "mariadb-binlog did not exit within {}s of SIGKILL", STOP_DEADLINE.as_secs());
            }
        }
        // What is complete is pushed whatever ended the stream.
        self.push_spool(true).await?;
        match ended {
            Ended::Stopped => Ok(true),
            Ended::Exited(why) => Err(fail(&plan, why)),
        }
    }

    /// `SHOW BINARY LOGS`: the server's binlogs, oldest first.
    async fn server_logs(&self) -> Result<Vec<BinlogName>, Error> {
        let client = self.client.clone();
        let q = tokio::task::spawn_blocking(move || client.query("SHOW BINARY LOGS"));
        let rows = match tokio::time::timeout(QUERY_DEADLINE, q).await {
            Err(_) => {
                return Err(fail(
                    &self.plan,
                    format!(
                        "SHOW BINARY LOGS did not answer within {}s",
                        QUERY_DEADLINE.as_secs()
                    ),
                ))
            }
            Ok(r) => r
                .expect("query task panicked")
                .map_err(|e| fail(&self.plan, e))?,
        };
        let mut names = Vec::new();
        for row in rows {
            let name = row.first().map(String::as_str).unwrap_or_default();
            names.push(
                BinlogName::parse(name).map_err(|e| {
                    fail(&self.plan, format!("SHOW BINARY LOGS on the server: {e}"))
                })?,
            );
        }
        names.sort();
        Ok(names)
    }

    /// Whether `name` has a sound record in the repository (a foreign
    /// object planted at its key is not one).
    async fn verify_complete(&mut self, name: &BinlogName) -> Result<bool, Error> {
        let store = self.repo.store();
        match binlog::read_record(store.as_ref(), self.repo.crypto(), &self.plan, name).await {
            Ok(Some(_)) => {
                self.remember_complete(name).await;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(binlog::BinlogError::Log(log_archive::LogError::Store(e)))
            | Err(binlog::BinlogError::Store(e)) => Err(fail(&self.plan, e)),
            Err(e) => {
                tracing::warn!(plan = %self.plan, file = %name, "{e}");
                Ok(false)
            }
        }
    }

    /// How far the repository holds `name` as parts (0 when it holds none).
    async fn archived_end(&self, name: &BinlogName) -> Result<u64, Error> {
        let store = self.repo.store();
        let listed = binlog::list(store.as_ref(), &self.plan)
            .await
            .map_err(|e| fail(&self.plan, e))?;
        let Some(last) = listed.get(name).and_then(|l| l.parts.last().copied()) else {
            return Ok(0);
        };
        let key = binlog::part_key(&self.plan, name, last);
        match log_archive::resolve(store.as_ref(), self.repo.crypto(), &key).await {
            Ok(r) => Ok(last + r.raw.len() as u64),
            Err(log_archive::LogError::Store(e)) => Err(fail(&self.plan, e)),
            // Only foreign objects at the last part's names: store the
            // bytes from its start again (under an alternative name).
            Err(e) => {
                tracing::warn!(plan = %self.plan, object = %key, "{e}; storing {name} from offset {last} again");
                Ok(last)
            }
        }
    }

    /// Pushes completed spool files and, at the flush interval (or
    /// `last`), the growing file's new complete events as parts.
    async fn push_spool(&mut self, last: bool) -> Result<(), Error> {
        let mut files = spooled(&self.spool()).await.map_err(|e| {
            fail(
                &self.plan,
                format!("unable to list the spool {}: {e}", self.spool().display()),
            )
        })?;
        let Some(newest) = files.pop() else {
            return Ok(());
        };
        for done in files {
            self.push_complete(&done).await?;
        }
        if self.growing.as_ref().map(|g| &g.name) != Some(&newest) {
            let archived_end = self.archived_end(&newest).await?;
            self.growing = Some(Growing {
                name: newest.clone(),
                archived_end,
                parts: Vec::new(),
            });
            self.status.send_modify(|s| {
                s.file = Some(newest.to_string());
                s.archived_offset = archived_end;
            });
        }
        if last || self.last_flush.elapsed() >= self.opts.flush {
            self.last_flush = Instant::now();
            self.push_part(&newest).await?;
        }
        Ok(())
    }

    /// A file the server has rotated past: whatever its parts do not hold
    /// yet is pushed as capped parts (parts from earlier runs are reused
    /// once checked against the spool), then its record. The file is read
    /// from the spool one part at a time, never whole.
    async fn push_complete(&mut self, name: &BinlogName) -> Result<(), Error> {
        let path = self.spool().join(name.to_string());
        let shown = path.display().to_string();
        let io = {
            let (plan, shown) = (self.plan.clone(), shown.clone());
            move |e: std::io::Error| fail(&plan, format!("unable to read {shown}: {e}"))
        };
        let len = tokio::fs::metadata(&path).await.map_err(&io)?.len();
        if len > binlog::MAX_FILE {
            return Err(fail(
                &self.plan,
                format!("{shown} is {len} bytes, over the 4 GiB a binlog may be"),
            ));
        }
        let store = self.repo.store();
        let listed: BTreeSet<u64> = binlog::list(store.as_ref(), &self.plan)
            .await
            .map_err(|e| fail(&self.plan, e))?
            .remove(name)
            .map(|l| l.parts.into_iter().collect())
            .unwrap_or_default();
        // The parts this run pushed while the file grew: known sound.
        let known: Vec<PartRecord> = match self.growing.take() {
            Some(g) if &g.name == name => g.parts,
            other => {
                self.growing = other;
                Vec::new()
            }
        };
        let max = binlog::max_part();
        let mut parts: Vec<PartRecord> = Vec::new();
        let mut cutter = Cutter::new(path.clone(), true);
        let mut at = 0u64;
        while at < len {
            if parts.len() >= binlog::MAX_PARTS {
                return Err(fail(
                    &self.plan,
                    format!(
                        "binlog {name} needs more than {} parts; its record cannot list them",
                        binlog::MAX_PARTS
                    ),
                ));
            }
            if let Some(p) = known.iter().find(|p| p.start == at && at + p.length <= len) {
                parts.push(*p);
                at += p.length;
                continue;
            }
            if listed.contains(&at) {
                if let Some(p) = self.reuse_part(name, &path, at, len).await? {
                    parts.push(p);
                    at += p.length;
                    continue;
                }
            }
            // Up to the next stored part, so it can be reused.
            let limit = listed
                .range(at + 1..)
                .next()
                .copied()
                .unwrap_or(len)
                .min(len);
            let window = max.min(limit - at);
            let Some((data, end)) = cutter
                .next(at, len, window)
                .await
                .map_err(|e| fail(&self.plan, e))?
            else {
                break;
            };
            parts.push(self.push_one(name, &shown, at, data, end).await?);
            at = end;
        }
        let sha = hash_range(&path, 0, len).await.map_err(io)?;
        let record = BinlogRecord::new(name, len, sha, parts);
        record.check(name).map_err(|why| {
            fail(
                &self.plan,
                format!("the record of {name} would be unsound: {why}"),
            )
        })?;
        let json = serde_json::to_vec(&record).expect("a record serialises");
        let key = binlog::complete_key(&self.plan, name);
        let report = log_archive::push_bytes(
            store.as_ref(),
            self.repo.crypto(),
            key,
            json,
            &format!("the record of {shown}"),
            self.opts.retention,
        )
        .await
        .map_err(|e| fail(&self.plan, e))?;
        tracing::info!(plan = %self.plan, object = %report.key, bytes = len, parts = record.parts.len(), "binlog {name} archived complete");
        self.remember_complete(name).await;
        tokio::fs::remove_file(&path).await.map_err(|e| {
            fail(
                &self.plan,
                format!("unable to remove {}: {e}", path.display()),
            )
        })?;
        let scan = cutter.scan;
        if let Some(e) = cutter.damaged {
            tracing::warn!(plan = %self.plan, file = %name, "{e}; archived as the server sent it");
        } else if scan.end != len && scan.end != 0 {
            tracing::warn!(plan = %self.plan, file = %name, "{name} ends mid-event at {len} (last complete event ends at {}); archived as the server sent it", scan.end);
        }
        self.status.send_modify(|s| {
            s.completed += 1;
            note_scan(s, &scan);
        });
        Ok(())
    }

    /// The part of `name` stored at `start` by an earlier run, if it reads
    /// back and holds exactly the spool file's bytes there; `None` when only
    /// foreign objects are at its names (it is pushed again, under an
    /// alternative name). Other bytes there are an error: two servers may
    /// be archiving into one plan.
    async fn reuse_part(
        &self,
        name: &BinlogName,
        path: &Path,
        start: u64,
        len: u64,
    ) -> Result<Option<PartRecord>, Error> {
        let key = binlog::part_key(&self.plan, name, start);
        let store = self.repo.store();
        let r = match log_archive::resolve(store.as_ref(), self.repo.crypto(), &key).await {
            Ok(r) => r,
            Err(
                e @ (log_archive::LogError::NotFound { .. }
                | log_archive::LogError::OnlyForeign { .. }),
            ) => {
                tracing::warn!(plan = %self.plan, object = %key, "{e}; storing {name} from offset {start} again");
                return Ok(None);
            }
            Err(e) => return Err(fail(&self.plan, e)),
        };
        let length = r.raw.len() as u64;
        drop(r.raw);
        let ours = match start.checked_add(length).filter(|end| *end <= len) {
            Some(_) => Some(hash_range(path, start, length).await.map_err(|e| {
                fail(
                    &self.plan,
                    format!("unable to read {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        if ours != Some(r.sha) {
            return Err(fail(
                &self.plan,
                format!(
                    "{} holds {length} bytes from offset {start} that are not the server's binlog {name} there (the file is {len} bytes); refusing to archive around it. Two servers may be archiving into one plan",
                    r.key
                ),
            ));
        }
        Ok(Some(PartRecord {
            start,
            length,
            sha256: r.sha,
        }))
    }

    /// Pushes bytes `[start, end)` of `name` as one part.
    async fn push_one(
        &mut self,
        name: &BinlogName,
        shown: &str,
        start: u64,
        data: Vec<u8>,
        end: u64,
    ) -> Result<PartRecord, Error> {
        let key = binlog::part_key(&self.plan, name, start);
        let store = self.repo.store();
        let report = log_archive::push_bytes(
            store.as_ref(),
            self.repo.crypto(),
            key,
            data,
            &format!("{shown} [{start}, {end})"),
            self.opts.retention,
        )
        .await
        .map_err(|e| fail(&self.plan, e))?;
        tracing::info!(plan = %self.plan, object = %report.key, bytes = report.bytes, "binlog {name} archived up to {end}");
        self.status.send_modify(|s| {
            s.parts += 1;
            if !report.already_archived {
                s.bytes += report.bytes;
            }
            s.archived_offset = end;
            s.file = Some(name.to_string());
        });
        Ok(PartRecord {
            start,
            length: report.bytes,
            sha256: report.sha256,
        })
    }

    /// The growing file's complete events after what is archived, as parts
    /// of at most [`binlog::max_part`] each.
    async fn push_part(&mut self, name: &BinlogName) -> Result<(), Error> {
        let Some(mut from) = self.growing.as_ref().map(|g| g.archived_end) else {
            return Ok(());
        };
        let path = self.spool().join(name.to_string());
        let shown = path.display().to_string();
        let len = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fail(&self.plan, format!("unable to read {shown}: {e}"))),
        };
        let max = binlog::max_part();
        let mut cutter = Cutter::new(path.clone(), false);
        while from < len.min(binlog::MAX_FILE) {
            let next = cutter
                .next(from, len, max)
                .await
                .map_err(|e| fail(&self.plan, e))?;
            let Some((data, end)) = next else { break };
            let part = self.push_one(name, &shown, from, data, end).await?;
            if let Some(g) = self.growing.as_mut().filter(|g| &g.name == name) {
                g.archived_end = end;
                g.parts.push(part);
            }
            from = end;
            let scan = cutter.scan.clone();
            self.status.send_modify(|s| note_scan(s, &scan));
        }
        self.rotate_if_many_parts(name).await;
        Ok(())
    }

    /// A binlog's record lists at most `MAX_PARTS` parts. A lightly loaded
    /// server can keep one file open for weeks, a part every flush interval;
    /// well before the limit, ask the server to rotate (`FLUSH BINARY LOGS`,
    /// which the backup user's RELOAD privilege allows), so the file
    /// completes with a record that can list its parts. When the server
    /// refuses, the archiver warns, and fails on that file only at the limit.
    async fn rotate_if_many_parts(&mut self, name: &BinlogName) {
        let count = match self.growing.as_ref().filter(|g| &g.name == name) {
            Some(g) => g.parts.len(),
            None => return,
        };
        let at = rotate_at_parts();
        if count < at || count % ROTATE_RETRY_EVERY != at % ROTATE_RETRY_EVERY {
            return;
        }
        let client = self.client.clone();
        let q = tokio::task::spawn_blocking(move || client.query("FLUSH BINARY LOGS"));
        let done = match tokio::time::timeout(QUERY_DEADLINE, q).await {
            Err(_) => Err(format!("no answer within {}s", QUERY_DEADLINE.as_secs())),
            Ok(r) => r.expect("query task panicked").map_err(|e| e.to_string()),
        };
        match done {
            Ok(_) => {
                tracing::info!(plan = %self.plan, file = %name, parts = count, "binlog {name} has {count} parts; asked the server to rotate (FLUSH BINARY LOGS) so its record can list them all")
            }
            Err(e) => {
                tracing::warn!(plan = %self.plan, file = %name, parts = count, "binlog {name} has {count} parts (a record lists at most {}); FLUSH BINARY LOGS failed: {e}; grant the archiving user RELOAD, or lower max_binlog_size", binlog::MAX_PARTS)
            }
        }
    }
}

/// Parts of one growing binlog after which the archiver asks the server to
/// rotate (nine tenths of `binlog::MAX_PARTS`), and how often it asks again
/// while the server has not.
const ROTATE_AT_PARTS: usize = binlog::MAX_PARTS / 10 * 9;
const ROTATE_RETRY_EVERY: usize = 100;

/// [`ROTATE_AT_PARTS`], or `HOLDFAST_BINLOG_ROTATE_PARTS` (hidden, for
/// tests: a handful of parts instead of 90,000).
fn rotate_at_parts() -> usize {
    std::env::var("HOLDFAST_BINLOG_ROTATE_PARTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (2..=ROTATE_AT_PARTS).contains(n))
        .unwrap_or(ROTATE_AT_PARTS)
}

/// Cuts a spool file into parts: windows of at most the part size, each
/// ending at the last complete event inside it, or at the end of an event
/// larger than the window.
struct Cutter {
    path: PathBuf,
    /// The server has rotated past the file: its last bytes are stored as
    /// they are, and event damage only stops cutting at events.
    complete: bool,
    /// The events scanned so far.
    scan: Scan,
    /// Why events could not be read (a completed file only): from there on
    /// the file is cut in plain windows.
    damaged: Option<String>,
}

impl Cutter {
    fn new(path: PathBuf, complete: bool) -> Cutter {
        Cutter {
            path,
            complete,
            scan: Scan::default(),
            damaged: None,
        }
    }

    /// The next part from `from` (an event boundary) of a file `len` bytes
    /// long, in a window of `window` bytes: its bytes and end; `None` when
    /// a growing file holds no complete event there yet.
    async fn next(
        &mut self,
        from: u64,
        len: u64,
        window: u64,
    ) -> Result<Option<(Vec<u8>, u64)>, String> {
        let shown = self.path.display().to_string();
        let io = |e: std::io::Error| format!("unable to read {shown}: {e}");
        let want = window.min(len.saturating_sub(from));
        if want == 0 {
            return Ok(None);
        }
        let data = read_range(&self.path, from, want).await.map_err(io)?;
        if self.damaged.is_some() {
            let end = from + data.len() as u64;
            return Ok(Some((data, end)));
        }
        let (what, s) = (shown.clone(), self.scan.clone());
        let (scanned, data) = tokio::task::spawn_blocking(move || {
            let r = if from == 0 {
                binlog::scan(&what, &data)
            } else {
                let mut s = Scan { end: from, ..s };
                binlog::scan_more(&what, &mut s, &data, from).map(|_| s)
            };
            (r, data)
        })
        .await
        .expect("binlog scan panicked");
        let mut data = data;
        match scanned {
            Ok(s) if s.end > from => {
                data.truncate((s.end - from) as usize);
                self.scan = s;
                let end = self.scan.end;
                return Ok(Some((data, end)));
            }
            Ok(_) => {}
            Err(e) if self.complete => {
                self.damaged = Some(e.to_string());
                let end = from + data.len() as u64;
                return Ok(Some((data, end)));
            }
            Err(e) => return Err(e.to_string()),
        }
        // No complete event in the window: one larger than it (the part is
        // exactly that event), or one the server has not finished sending.
        let head = match data.len() >= binlog::HEADER {
            true => data[..binlog::HEADER].to_vec(),
            false if from >= 4 && from + binlog::HEADER as u64 <= len => {
                read_range(&self.path, from, binlog::HEADER as u64)
                    .await
                    .map_err(io)?
            }
            false => Vec::new(),
        };
        let size = (from >= 4 && head.len() == binlog::HEADER)
            .then(|| u32::from_le_bytes(head[9..13].try_into().expect("4 bytes")) as u64)
            .filter(|s| (binlog::HEADER as u64..=binlog::MAX_EVENT as u64).contains(s));
        match size {
            Some(size) if size > data.len() as u64 && from + size <= len => {
                let rest = read_range(
                    &self.path,
                    from + data.len() as u64,
                    size - data.len() as u64,
                )
                .await
                .map_err(io)?;
                data.extend_from_slice(&rest);
                let (what, s) = (shown.clone(), self.scan.clone());
                let (scanned, data) = tokio::task::spawn_blocking(move || {
                    let mut s = Scan { end: from, ..s };
                    let r = binlog::scan_more(&what, &mut s, &data, from).map(|_| s);
                    (r, data)
                })
                .await
                .expect("binlog scan panicked");
                let s = scanned.map_err(|e| e.to_string())?;
                if s.end != from + size {
                    return Err(format!(
                        "{shown}: the event at offset {from} does not end at {}",
                        from + size
                    ));
                }
                self.scan = s;
                Ok(Some((data, from + size)))
            }
            // A growing file: the event is not all there yet.
            Some(_) if !self.complete => Ok(None),
            None if !self.complete && head.len() < binlog::HEADER => Ok(None),
            None if !self.complete => Err(format!(
                "{shown}: the event at offset {from} claims a size outside 19 bytes to 1 GiB"
            )),
            // The rest of a completed file that is no event: stored as the
            // server sent it, in plain windows.
            _ => {
                self.damaged = Some(format!(
                    "{shown} holds no complete event from offset {from} on"
                ));
                let end = from + data.len() as u64;
                Ok(Some((data, end)))
            }
        }
    }
}

/// The SHA-256 of bytes `[start, start + len)` of `path`, read in 1 MiB
/// blocks on a blocking thread.
async fn hash_range(path: &Path, start: u64, len: u64) -> std::io::Result<Hash256> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek};
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        f.seek(std::io::SeekFrom::Start(start))?;
        let mut f = f.take(len);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            got += n as u64;
        }
        if got != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{got} bytes from offset {start}, {len} expected"),
            ));
        }
        Ok(Hash256(h.finalize().into()))
    })
    .await
    .expect("hashing panicked")
}

fn note_scan(s: &mut Status, scan: &Scan) {
    if let Some(t) = scan.last_at() {
        if s.newest_event.is_none_or(|n| n < t) {
            s.newest_event = Some(t);
        }
    }
    if let Some(g) = scan.last_gtid {
        s.last_gtid = Some(g.to_string());
    }
}

/// The binlog files in the spool, oldest first (anything else is ignored).
async fn spooled(spool: &Path) -> std::io::Result<Vec<BinlogName>> {
    let mut out = Vec::new();
    let mut dir = tokio::fs::read_dir(spool).await?;
    while let Some(e) = dir.next_entry().await? {
        if let Some(name) = e.file_name().to_str() {
            if let Ok(n) = BinlogName::parse(name) {
                out.push(n);
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn clear_spool(spool: &Path) -> std::io::Result<()> {
    let mut dir = tokio::fs::read_dir(spool).await?;
    while let Some(e) = dir.next_entry().await? {
        if e.file_type().await?.is_file() {
            tokio::fs::remove_file(e.path()).await?;
        }
    }
    Ok(())
}

/// Bytes `[from, from + len)` of `path` (fewer at its end): one window of
/// a spool file, never the whole of it.
async fn read_range(path: &Path, from: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(std::io::SeekFrom::Start(from)).await?;
    let mut buf = Vec::with_capacity(len.min(binlog::MAX_PART) as usize);
    f.take(len).read_to_end(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binlog whose third event is larger than the part size.
    fn file_with_a_large_event(window: usize) -> (Vec<u8>, Vec<u64>) {
        let mut f = binlog::MAGIC.to_vec();
        let mut ends = Vec::new();
        for (i, size) in [60usize, 90, window * 3, 40, 70, 50, 80]
            .into_iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            let total = (binlog::HEADER + size) as u32;
            f.extend_from_slice(&1_700_000_000u32.to_le_bytes());
            f.push(if i == 2 { 30 } else { 2 });
            f.extend_from_slice(&1u32.to_le_bytes());
            f.extend_from_slice(&total.to_le_bytes());
            f.extend_from_slice(&(f.len() as u32 + total - 13).to_le_bytes());
            f.extend_from_slice(&0u16.to_le_bytes());
            f.extend(std::iter::repeat_n(i as u8, size));
            ends.push(f.len() as u64);
        }
        (f, ends)
    }

    /// Cuts `file` as the archiver does; the parts' (start, end).
    async fn cut(path: &Path, len: u64, window: u64, complete: bool) -> Vec<(u64, u64)> {
        let mut c = Cutter::new(path.to_path_buf(), complete);
        let mut at = 0;
        let mut parts = Vec::new();
        while let Some((data, end)) = c.next(at, len, window).await.unwrap() {
            assert_eq!(data.len() as u64, end - at);
            parts.push((at, end));
            at = end;
            if at == len {
                break;
            }
        }
        parts
    }

    #[tokio::test]
    async fn parts_are_capped_and_cut_at_event_ends_an_oversized_event_alone() {
        let window = 300usize;
        let (file, ends) = file_with_a_large_event(window);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("binlog.000001");
        std::fs::write(&path, &file).unwrap();
        let len = file.len() as u64;

        let parts = cut(&path, len, window as u64, false).await;
        assert_eq!(parts.first().unwrap().0, 0);
        assert_eq!(parts.last().unwrap().1, len);
        for w in parts.windows(2) {
            assert_eq!(w[0].1, w[1].0, "{parts:?}");
        }
        for &(start, end) in &parts {
            assert!(ends.contains(&end), "[{start}, {end}) ends mid-event");
            let one_event = ends.iter().filter(|e| **e > start && **e <= end).count() == 1;
            assert!(
                end - start <= window as u64 || one_event,
                "[{start}, {end}) is over the window and not one event"
            );
        }
        assert!(
            parts.iter().any(|(s, e)| e - s > window as u64),
            "the large event is one part: {parts:?}"
        );

        // Growing: a cut mid-event waits for the rest; the oversized event
        // waits until it is all there.
        let cut_at = ends[2] - 5;
        let parts = cut(&path, cut_at, window as u64, false).await;
        assert_eq!(parts.last().unwrap().1, ends[1], "{parts:?}");

        // Completed but ending mid-event (as the server may send it): the
        // rest is stored too, so the parts hold every byte.
        let parts = cut(&path, len - 7, window as u64, true).await;
        assert_eq!(parts.last().unwrap().1, len - 7, "{parts:?}");
    }
}
