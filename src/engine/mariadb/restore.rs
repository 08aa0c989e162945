//! Restoring a MariaDB physical backup: the snapshot's files are written
//! (every chunk checked) into a temporary folder beside the target,
//! `mariadb-backup --prepare` makes them a consistent data directory, and
//! only then is it renamed into place; with `--start` a `mariadbd` is
//! started on it (its own port and socket, no binlog, so a copy never
//! writes into the plan's archive) and left running.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::backup::DATADIR_PREFIX;
use super::client::{bin_dir, program_path};
use super::meta::MariaSnapshotMeta;
use super::MariaError;
use crate::engine::process;
use crate::engine::scratch::{Address, ScratchServer};
use crate::ids::SnapshotId;
use crate::plan::PlanName;
use crate::progress::ProgressMode;
use crate::repository::materialize::{absolute, check_target, materialize, Materialize};
use crate::repository::Repository;

/// How long `mariadb-backup --prepare` may take (it replays the redo log
/// copied during the backup; `HOLDFAST_MARIADB_PREPARE_SECS` overrides).
const PREPARE_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// How long a started server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(180);
/// How long a started server may take to shut down.
const STOP_DEADLINE: Duration = Duration::from_secs(120);
/// How long one query on a started server may take.
const QUERY_DEADLINE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct MariaRestoreOptions {
    /// `latest` or a snapshot id prefix.
    pub snapshot: String,
    pub to: PathBuf,
    pub start: bool,
    pub port: Option<u16>,
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Serialize)]
pub struct MariaRestoreReport {
    pub plan: String,
    pub snapshot: SnapshotId,
    pub snapshot_time: DateTime<Utc>,
    pub data_directory: PathBuf,
    pub server_version: String,
    /// Where the restored data stands in the source's binlog.
    pub binlog_file: Option<String>,
    pub binlog_position: Option<u64>,
    pub gtid: Option<String>,
    pub consistent_at: Option<DateTime<Utc>>,
    pub files: u64,
    pub bytes: u64,
    /// Seconds per phase: `fetch_restore`, `prepare`, `start`.
    pub phases: Vec<(String, f64)>,
    pub duration_seconds: f64,
    /// The started server, with `--start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<StartedServer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StartedServer {
    pub port: u16,
    pub socket: PathBuf,
    pub pid: Option<u32>,
    pub log: PathBuf,
}

pub(super) fn deadline_from_env(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

fn tail_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

pub async fn restore(
    repo: &Repository,
    plan: &PlanName,
    opts: &MariaRestoreOptions,
) -> Result<MariaRestoreReport, MariaError> {
    let started = Instant::now();
    let snap = repo.find_snapshot(plan, &opts.snapshot).await?;
    let mut manifest = repo.load_manifest(&snap).await?;
    let meta = MariaSnapshotMeta::of(&manifest.source)
        .filter(MariaSnapshotMeta::is_physical)
        .ok_or_else(|| MariaError::NotPhysical {
            snapshot: snap.id.short(),
            plan: plan.to_string(),
        })?;
    let target = absolute(&opts.to);
    let t = target.clone();
    tokio::task::spawn_blocking(move || check_target(&t, false, false))
        .await
        .expect("target check panicked")
        .map_err(|_| MariaError::TargetNotEmpty {
            path: target.clone(),
        })?;
    let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "datadir".into());
    let staging = parent.join(format!(".{name}.holdfast-prepare-{}", std::process::id()));
    let mut phases = Vec::new();

    // 1. Every file of the backup, every chunk checked.
    let t0 = Instant::now();
    let (entries, total) = manifest.take_entries_under(DATADIR_PREFIX);
    let files = materialize(
        repo,
        &snap.id,
        entries,
        total,
        &Materialize {
            target: &staging,
            packs: manifest.packs.as_deref().unwrap_or_default(),
            lists: None,
            manifest: &snap.key,
            single: false,
            force: true,
            keep_setid: false,
            progress: opts.progress,
            check: None,
            cancel: None,
        },
    )
    .await?;
    phases.push(("fetch_restore".to_string(), t0.elapsed().as_secs_f64()));

    // 2. Prepared into a consistent data directory, then into place.
    let t0 = Instant::now();
    let prepared = prepare(&staging).await;
    if let Err(e) = prepared {
        let s = staging.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&s)).await;
        return Err(e);
    }
    let (s, t) = (staging.clone(), target.clone());
    tokio::task::spawn_blocking(move || {
        // An empty target folder makes way; a non-empty one was refused.
        let _ = std::fs::remove_dir(&t);
        std::fs::rename(&s, &t)?;
        std::fs::File::open(t.parent().unwrap_or(Path::new("/")))?.sync_all()
    })
    .await
    .expect("rename panicked")
    .map_err(|source| MariaError::Target {
        path: target.clone(),
        source,
    })?;
    phases.push(("prepare".to_string(), t0.elapsed().as_secs_f64()));

    // 3. Started, if asked.
    let server = if opts.start {
        let t0 = Instant::now();
        let s = start(&target, opts.port).await?;
        phases.push(("start".to_string(), t0.elapsed().as_secs_f64()));
        let started = s.started();
        // The restore's user takes it over.
        Box::new(s).keep();
        Some(started)
    } else {
        None
    };
    tracing::info!(plan = %plan, snapshot = %snap.id, target = %target.display(), "restore finished");
    Ok(MariaRestoreReport {
        plan: plan.to_string(),
        snapshot: snap.id,
        snapshot_time: manifest.started_at,
        data_directory: target,
        server_version: meta.server_version,
        binlog_file: meta.binlog_file,
        binlog_position: meta.binlog_position,
        gtid: meta.gtid,
        consistent_at: meta.consistent_at,
        files,
        bytes: total,
        phases,
        duration_seconds: started.elapsed().as_secs_f64(),
        server,
    })
}

/// `mariadb-backup --prepare` on a restored backup.
async fn prepare(dir: &Path) -> Result<(), MariaError> {
    let mut cmd =
        tokio::process::Command::new(program_path(bin_dir().as_deref(), "mariadb-backup"));
    cmd.args([
        "--no-defaults".to_string(),
        "--prepare".to_string(),
        format!("--target-dir={}", dir.display()),
    ]);
    let deadline = deadline_from_env("HOLDFAST_MARIADB_PREPARE_SECS", PREPARE_DEADLINE);
    let out = process::output(cmd, deadline)
        .await
        .map_err(|e| MariaError::Program {
            program: "mariadb-backup --prepare".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(MariaError::Program {
            program: "mariadb-backup --prepare".into(),
            detail: format!(
                "{}: {}",
                out.status,
                tail_of(&String::from_utf8_lossy(&out.stderr))
            ),
        });
    }
    Ok(())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A `mariadbd` holdfast started on a restored data directory: stopped when
/// dropped (a failed or cancelled restore or drill) unless kept.
pub struct MariaServer {
    address: Address,
    socket: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl MariaServer {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn started(&self) -> StartedServer {
        StartedServer {
            port: self.address.port,
            socket: self.socket.clone(),
            pid: self.child.as_ref().map(|c| c.id()),
            log: self.log.clone(),
        }
    }

    fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| rustix::process::Pid::from_raw(c.id() as i32))
        {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }
}

#[async_trait]
impl ScratchServer for MariaServer {
    fn address(&self) -> &Address {
        &self.address
    }

    fn log(&self) -> &PathBuf {
        &self.log
    }

    async fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let mut cmd = tokio::process::Command::new(program_path(bin_dir().as_deref(), "mariadb"));
        cmd.args([
            "--no-defaults".to_string(),
            format!("--socket={}", self.socket.display()),
            "--user=root".into(),
            "--batch".into(),
            "--raw".into(),
            "--skip-column-names".into(),
            "--connect-timeout=5".into(),
            "-e".into(),
            sql.to_string(),
        ]);
        let out = process::output(cmd, QUERY_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect())
    }

    async fn stop(mut self: Box<Self>) -> Result<(), String> {
        self.signal(rustix::process::Signal::TERM);
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "mariadbd did not stop within {}s and was killed",
                        STOP_DEADLINE.as_secs()
                    ));
                }
            }
        }
    }

    fn keep(mut self: Box<Self>) {
        // Not waited on: it runs on after holdfast exits.
        self.child.take();
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        // A failed or cancelled restore or drill: stop what it started.
        // Drop cannot wait long; SIGTERM lets mariadbd shut down cleanly.
        self.signal(rustix::process::Signal::TERM);
    }
}

/// Starts `mariadbd` on a restored data directory, detached (it can outlive
/// holdfast), with no binlog and its own socket, and waits until it answers.
pub async fn start(datadir: &Path, port: Option<u16>) -> Result<MariaServer, MariaError> {
    let port = match port {
        Some(p) => p,
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|source| MariaError::Target {
                path: datadir.to_path_buf(),
                source,
            })?,
    };
    let socket = datadir.join("mariadbd.sock");
    let log = datadir.join("mariadbd.err");
    let pid_file = datadir.join("mariadbd.pid");
    let mut cmd = std::process::Command::new(program_path(bin_dir().as_deref(), "mariadbd"));
    cmd.args([
        "--no-defaults".to_string(),
        format!("--datadir={}", datadir.display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".into(),
        format!("--socket={}", socket.display()),
        format!("--pid-file={}", pid_file.display()),
        format!("--log-error={}", log.display()),
        // A restored copy applies no replication of its own until told to.
        "--skip-slave-start".into(),
    ]);
    if is_root() {
        // The files were written by root; mariadbd refuses root unless told.
        cmd.arg("--user=root");
    }
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    let child = cmd.spawn().map_err(|e| MariaError::Program {
        program: "mariadbd".into(),
        detail: format!("cannot run it: {e} (install mariadb-server, or set HOLDFAST_MARIADB_BIN)"),
    })?;
    let mut server = MariaServer {
        address: Address {
            host: "127.0.0.1".into(),
            port,
        },
        socket: socket.clone(),
        log: log.clone(),
        child: Some(child),
    };
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let mut ping =
            tokio::process::Command::new(program_path(bin_dir().as_deref(), "mariadb-admin"));
        ping.args([
            "--no-defaults".to_string(),
            format!("--socket={}", socket.display()),
            "--connect-timeout=2".into(),
            "ping".into(),
        ]);
        // `ping` answers 0 once the server is up, even when access is denied.
        if let Ok(out) = process::output(ping, Duration::from_secs(10)).await {
            if out.status.success() {
                return Ok(server);
            }
        }
        let alive = matches!(server.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        if !alive || Instant::now() > deadline {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(MariaError::Start {
                why: if alive {
                    format!("it did not answer within {}s", START_DEADLINE.as_secs())
                } else {
                    "it exited".into()
                },
                log: log.clone(),
                tail: tail_of(&log_text),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
