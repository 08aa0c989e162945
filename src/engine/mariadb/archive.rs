//! The binlog archiver: streams a MariaDB server's binlogs as a replica
//! would (`mariadb-binlog --read-from-remote-server --raw --stop-never`)
//! into a spool folder under the state dir (0700), and from there into the
//! repository (`binlog/<plan>/`, see [`super::binlog`]): every completed
//! file whole, and the growing one as parts each flush interval, up to its
//! last complete event, so the RPO is the interval, not the time to the
//! next rotation.
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
//!   bytes is idempotent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::binlog::{self, BinlogName, Scan};
use super::MariaClient;
use crate::error::{Error, Exit};
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

/// The growing file: its name and how far the repository holds it.
struct Growing {
    name: BinlogName,
    archived_end: u64,
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

    /// Whether the complete object of `name` reads back sound (a foreign
    /// object planted at its key is not "complete").
    async fn verify_complete(&mut self, name: &BinlogName) -> Result<bool, Error> {
        let key = binlog::complete_key(&self.plan, name);
        let store = self.repo.store();
        match log_archive::resolve(store.as_ref(), self.repo.crypto(), &key).await {
            Ok(_) => {
                self.remember_complete(name).await;
                Ok(true)
            }
            Err(log_archive::LogError::Store(e)) => Err(fail(&self.plan, e)),
            Err(_) => Ok(false),
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

    /// Pushes completed spool files whole and, at the flush interval (or
    /// `last`), the growing file's new complete events as a part.
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

    async fn push_complete(&mut self, name: &BinlogName) -> Result<(), Error> {
        let path = self.spool().join(name.to_string());
        let raw = tokio::fs::read(&path).await.map_err(|e| {
            fail(
                &self.plan,
                format!("unable to read {}: {e}", path.display()),
            )
        })?;
        let (what, bytes) = (path.display().to_string(), raw.clone());
        let scanned = tokio::task::spawn_blocking(move || binlog::scan(&what, &bytes))
            .await
            .expect("binlog scan panicked");
        let scan = match scanned {
            Ok(s) => {
                if s.end != raw.len() as u64 {
                    tracing::warn!(plan = %self.plan, file = %name, "{name} ends mid-event at {} (last complete event ends at {}); archived as the server sent it", raw.len(), s.end);
                }
                Some(s)
            }
            Err(e) => {
                tracing::warn!(plan = %self.plan, file = %name, "{e}; archived as the server sent it");
                None
            }
        };
        let key = binlog::complete_key(&self.plan, name);
        let len = raw.len() as u64;
        let store = self.repo.store();
        let report = log_archive::push_bytes(
            store.as_ref(),
            self.repo.crypto(),
            key,
            raw,
            &path.display().to_string(),
            self.opts.retention,
        )
        .await
        .map_err(|e| fail(&self.plan, e))?;
        tracing::info!(plan = %self.plan, object = %report.key, bytes = len, "binlog {name} archived complete");
        self.remember_complete(name).await;
        tokio::fs::remove_file(&path).await.map_err(|e| {
            fail(
                &self.plan,
                format!("unable to remove {}: {e}", path.display()),
            )
        })?;
        if self.growing.as_ref().map(|g| &g.name) == Some(name) {
            self.growing = None;
        }
        self.status.send_modify(|s| {
            s.completed += 1;
            s.bytes += len;
            if let Some(scan) = &scan {
                note_scan(s, scan);
            }
        });
        Ok(())
    }

    async fn push_part(&mut self, name: &BinlogName) -> Result<(), Error> {
        let Some(from) = self.growing.as_ref().map(|g| g.archived_end) else {
            return Ok(());
        };
        let path = self.spool().join(name.to_string());
        let data = read_from(&path, from).await.map_err(|e| {
            fail(
                &self.plan,
                format!("unable to read {}: {e}", path.display()),
            )
        })?;
        let Some(data) = data else { return Ok(()) };
        let what = path.display().to_string();
        let (scan, data) = tokio::task::spawn_blocking(move || {
            let r = if from == 0 {
                binlog::scan(&what, &data)
            } else {
                let mut s = Scan {
                    end: from,
                    ..Scan::default()
                };
                binlog::scan_more(&what, &mut s, &data, from).map(|_| s)
            };
            (r, data)
        })
        .await
        .expect("binlog scan panicked");
        let scan = scan.map_err(|e| fail(&self.plan, e))?;
        if scan.end <= from {
            return Ok(());
        }
        let part = data[..(scan.end - from) as usize].to_vec();
        let key = binlog::part_key(&self.plan, name, from);
        let store = self.repo.store();
        let report = log_archive::push_bytes(
            store.as_ref(),
            self.repo.crypto(),
            key,
            part,
            &format!("{} [{from}, {})", path.display(), scan.end),
            self.opts.retention,
        )
        .await
        .map_err(|e| fail(&self.plan, e))?;
        tracing::info!(plan = %self.plan, object = %report.key, bytes = report.bytes, "binlog {name} archived up to {}", scan.end);
        if let Some(g) = self.growing.as_mut() {
            g.archived_end = scan.end;
        }
        self.status.send_modify(|s| {
            s.parts += 1;
            s.bytes += scan.end - from;
            s.archived_offset = scan.end;
            s.file = Some(name.to_string());
            note_scan(s, &scan);
        });
        Ok(())
    }
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

/// The bytes of `path` from `from` on (capped at the largest binlog);
/// `None` when the file is not that long yet.
async fn read_from(path: &Path, from: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata().await?.len();
    if len <= from {
        return Ok(None);
    }
    f.seek(std::io::SeekFrom::Start(from)).await?;
    let mut buf = Vec::new();
    f.take((len - from).min(binlog::MAX_FILE))
        .read_to_end(&mut buf)
        .await?;
    Ok(Some(buf))
}
