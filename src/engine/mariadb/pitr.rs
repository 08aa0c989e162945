//! Point-in-time restore of a MariaDB plan: the newest physical backup
//! consistent before the target, then the archived binlogs from the
//! backup's binlog position replayed into a server started on the restored
//! data directory (`mariadb-binlog … | mariadb`), stopping at the target.
//!
//! Before anything is written: every binlog from the backup's file to the
//! target is read back from the archive (hash and authentication checked)
//! and its event headers scanned, into a 0700 spool beside the target; the
//! first missing or damaged one is named and nothing is restored. A target
//! outside the restorable window is refused with the window in the message.
//!
//! Binlog event times have one-second resolution: `--at T` replays the
//! events stamped before T's second (`--stop-datetime` = T rounded down),
//! so nothing after T is ever applied; `--position FILE:POS` and `--gtid`
//! stop exactly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::binlog::{self, BinlogName};
use super::client::{bin_dir, program_path};
use super::meta::MariaSnapshotMeta;
use super::restore::{self as base_restore, MariaRestoreOptions, StartedServer};
use super::MariaError;
use crate::engine::scratch::ScratchServer;
use crate::engine::{Reach, Window};
use crate::ids::SnapshotId;
use crate::plan::PlanName;
use crate::progress::ProgressMode;
use crate::repository::{Repository, SnapshotRef};

/// How long replaying the binlogs may take (`HOLDFAST_MARIADB_REPLAY_SECS`).
const REPLAY_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// Binlog files read for one restore, at most.
const MAX_FILES: usize = 100_000;

/// Where a point-in-time restore stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MariaTarget {
    /// Everything archived.
    Latest,
    /// Events stamped before this instant's second.
    Time(DateTime<Utc>),
    /// Up to (not including) this byte position of this binlog.
    Position(BinlogName, u64),
    /// Up to and including this GTID.
    Gtid(binlog::Gtid),
}

impl std::fmt::Display for MariaTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MariaTarget::Latest => f.write_str("the newest archived event"),
            MariaTarget::Time(t) => write!(f, "{}", t.to_rfc3339()),
            MariaTarget::Position(file, pos) => write!(f, "{file}:{pos}"),
            MariaTarget::Gtid(g) => write!(f, "GTID {g}"),
        }
    }
}

impl MariaTarget {
    /// `FILE:POS` as `--position` gives it.
    pub fn position(text: &str) -> Result<MariaTarget, String> {
        let (file, pos) = text.rsplit_once(':').ok_or_else(|| {
            format!("--position {text:?}: write FILE:POS, e.g. binlog.000042:1337")
        })?;
        let file = BinlogName::parse(file).map_err(|e| format!("--position: {e}"))?;
        let pos = pos
            .parse()
            .map_err(|_| format!("--position {text:?}: the position is not a number"))?;
        Ok(MariaTarget::Position(file, pos))
    }
}

#[derive(Debug, Clone)]
pub struct PitrOptions {
    pub target: MariaTarget,
    /// A snapshot to start from; `None`: the newest one before the target.
    pub snapshot: Option<String>,
    pub to: PathBuf,
    pub start: bool,
    pub port: Option<u16>,
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Serialize)]
pub struct MariaPitrReport {
    pub plan: String,
    pub target: String,
    pub data_directory: PathBuf,
    pub base_backup: SnapshotId,
    pub base_backup_time: DateTime<Utc>,
    pub base_backup_consistent_at: Option<DateTime<Utc>>,
    /// Where replay began: the backup's binlog position.
    pub replay_from: String,
    /// The binlogs replayed (from the archive, each checked), in order.
    pub binlogs: Vec<String>,
    /// The newest event time among the replayed binlogs' events before the
    /// stop (at second resolution), where known.
    pub reached: Option<DateTime<Utc>>,
    pub files: u64,
    pub bytes: u64,
    /// Seconds per phase: `binlog_check`, `fetch_restore`, `prepare`,
    /// `start`, `replay`, and `stop` unless the server was left running.
    pub phases: Vec<(String, f64)>,
    pub duration_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<StartedServer>,
}

/// One physical backup of the plan, as a restore starts from it.
#[derive(Debug, Clone)]
pub struct Base {
    pub snapshot: SnapshotRef,
    pub started_at: DateTime<Utc>,
    pub consistent_at: DateTime<Utc>,
    pub file: BinlogName,
    pub position: u64,
    pub gtid: Option<String>,
}

/// The plan's physical backups that record where their binlog replay
/// starts, oldest first.
pub async fn bases(repo: &Repository, plan: &PlanName) -> Result<Vec<Base>, MariaError> {
    let mut out = Vec::new();
    // The listing has read each manifest's head (an unreadable one is
    // logged as rejected): the entries are not needed to choose a base.
    let listed = repo.snapshots(plan).await?;
    listed.warn(plan);
    for a in listed.accepted {
        let (s, m) = (a.snap, a.head);
        let Some(meta) = MariaSnapshotMeta::of(&m.source).filter(MariaSnapshotMeta::is_physical)
        else {
            continue;
        };
        let (Some(file), Some(position), Some(at)) = (
            meta.binlog_file
                .as_deref()
                .and_then(|f| BinlogName::parse(f).ok()),
            meta.binlog_position,
            meta.consistent_at,
        ) else {
            continue;
        };
        out.push(Base {
            snapshot: s,
            started_at: m.started_at,
            consistent_at: at,
            file,
            position,
            gtid: meta.gtid,
        });
    }
    out.sort_by_key(|b| b.consistent_at);
    Ok(out)
}

/// The archived binlogs from `from` on, in sequence, up to the first one
/// missing (`None` when the sequence runs to the end of the archive).
fn run_from(
    listed: &std::collections::BTreeMap<BinlogName, binlog::Listed>,
    from: &BinlogName,
) -> (Vec<BinlogName>, Option<BinlogName>) {
    let newest = listed.keys().filter(|n| n.base == from.base).max().cloned();
    let mut files = Vec::new();
    let mut next = Some(from.clone());
    while let Some(n) = next {
        if files.len() >= MAX_FILES {
            break;
        }
        if listed.contains_key(&n) {
            next = n.next();
            files.push(n);
        } else if newest.as_ref().is_some_and(|m| *m > n) || files.is_empty() {
            return (files, Some(n));
        } else {
            break;
        }
    }
    (files, None)
}

/// How far a plan's restores reach: from each backup's consistent point to
/// the newest event archived in unbroken sequence after its binlog position.
pub async fn windows(repo: &Repository, plan: &PlanName) -> Result<Reach, MariaError> {
    let bases = bases(repo, plan).await?;
    let archived = binlog::archived(repo.store().as_ref(), repo.crypto(), plan)
        .await
        .map_err(MariaError::from)?;
    let listed = binlog::list(repo.store().as_ref(), plan)
        .await
        .map_err(MariaError::from)?;
    let newest_of = |files: &[BinlogName]| {
        files
            .iter()
            .filter_map(|f| {
                archived
                    .files
                    .iter()
                    .find(|a| a.file == f.to_string() && a.problem.is_none())
                    .and_then(|a| a.last_event)
            })
            .max()
    };
    let mut reach = Reach::default();
    for b in &bases {
        let (files, gap) = run_from(&listed, &b.file);
        if files.is_empty() {
            reach.pending.push(crate::engine::Pending {
                base_backup: b.snapshot.id.short(),
                consistent_at: b.consistent_at,
                waits_for_segment: b.file.to_string(),
            });
            continue;
        }
        let newest = newest_of(&files);
        let to = newest.map_or(b.consistent_at, |n| n.max(b.consistent_at));
        match reach
            .windows
            .iter_mut()
            .find(|w| w.through_segment == files.last().unwrap().to_string())
        {
            Some(w) => {
                w.base_backups.push(b.snapshot.id.short());
                w.base_backups_at.push(b.consistent_at);
                w.to = w.to.max(to);
            }
            None => reach.windows.push(Window {
                from: b.consistent_at,
                to,
                base_backups: vec![b.snapshot.id.short()],
                base_backups_at: vec![b.consistent_at],
                newest_transaction: newest,
                times_unreadable: None,
                through_segment: files.last().unwrap().to_string(),
                ends_at_gap: gap.map(|g| g.to_string()),
            }),
        }
    }
    Ok(reach)
}

pub async fn restore_pitr(
    repo: &Repository,
    plan: &PlanName,
    opts: &PitrOptions,
) -> Result<MariaPitrReport, MariaError> {
    let started = Instant::now();
    let mut phases = Vec::new();
    let bases = bases(repo, plan).await?;
    let reach = || {
        let text = bases
            .first()
            .map(|b| format!("from {}", b.consistent_at.to_rfc3339()))
            .unwrap_or_else(|| "none (no physical backup records its binlog position)".into());
        text
    };
    // 1. The base backup.
    let base = match &opts.snapshot {
        Some(sel) => {
            let snap = repo.find_snapshot(plan, sel).await?;
            bases
                .iter()
                .find(|b| b.snapshot.id == snap.id)
                .cloned()
                .ok_or_else(|| MariaError::NotPhysical {
                    snapshot: snap.id.short(),
                    plan: plan.to_string(),
                })?
        }
        None => {
            let fits = |b: &&Base| match &opts.target {
                MariaTarget::Latest => true,
                MariaTarget::Time(t) => b.consistent_at <= *t,
                MariaTarget::Position(f, p) => {
                    f.base == b.file.base && (b.file.seq, b.position) <= (f.seq, *p)
                }
                MariaTarget::Gtid(g) => b
                    .gtid
                    .as_deref()
                    .map(|have| gtid_before(have, g))
                    .unwrap_or(false),
            };
            bases
                .iter()
                .rev()
                .find(fits)
                .cloned()
                .ok_or_else(|| MariaError::OutsideWindow {
                    target: opts.target.to_string(),
                    why: "no physical backup is consistent before it".into(),
                    window: reach(),
                })?
        }
    };
    if let MariaTarget::Time(t) = &opts.target {
        if *t < base.consistent_at {
            return Err(MariaError::OutsideWindow {
                target: opts.target.to_string(),
                why: format!(
                    "backup {} is consistent only from {}",
                    base.snapshot.id.short(),
                    base.consistent_at.to_rfc3339()
                ),
                window: reach(),
            });
        }
    }

    // 2. Every binlog it needs, read back and checked, before anything is written.
    let t0 = Instant::now();
    let listed = binlog::list(repo.store().as_ref(), plan).await?;
    let (run, gap) = run_from(&listed, &base.file);
    if let (MariaTarget::Latest, Some(g)) = (&opts.target, &gap) {
        // "Everything archived" cannot jump a hole: what follows it is
        // unreachable, and stopping short silently would lose it.
        return Err(MariaError::Binlog {
            file: g.to_string(),
            problem: format!(
                "is missing from the archive, and later binlogs are there: --latest cannot reach past it; nothing was restored. Restore to a point before it with --at or --position (the archive is unbroken from {} up to it)",
                base.file
            ),
        });
    }
    if run.is_empty() {
        return Err(MariaError::Binlog {
            file: base.file.to_string(),
            problem:
                "is not in the archive (it holds the backup's own position); nothing was restored"
                    .into(),
        });
    }
    let target = crate::repository::materialize::absolute(&opts.to);
    let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "datadir".into());
    let spool = parent.join(format!(".{name}.holdfast-binlogs-{}", std::process::id()));
    let _spool_guard = SpoolGuard(spool.clone());
    {
        let s = spool.clone();
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&s);
            std::fs::create_dir_all(&s)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o700))
        })
        .await
        .expect("spool set-up panicked")
        .map_err(|source| MariaError::Target {
            path: spool.clone(),
            source,
        })?;
    }
    let mut needed = Vec::new();
    let mut newest_event: Option<DateTime<Utc>> = None;
    let mut reached_target = matches!(opts.target, MariaTarget::Latest);
    for (i, file) in run.iter().enumerate() {
        let later_archived = i + 1 < run.len();
        // Straight into a 0700 spool file, one part in memory at a time.
        let path = spool.join(file.to_string());
        let out = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || std::fs::File::create(&p))
                .await
                .expect("spool file creation panicked")
                .map_err(|source| MariaError::Target {
                    path: path.clone(),
                    source,
                })?
        };
        let (read, out) = binlog::read_binlog(
            repo.store().as_ref(),
            repo.crypto(),
            plan,
            &file.to_string(),
            out,
        )
        .await
        .map_err(|e| MariaError::Binlog {
            file: file.to_string(),
            problem: format!("cannot be read back: {e}; nothing was restored"),
        })?;
        let from_parts = !read.complete;
        let scanned = read.scan;
        // Only the complete events: a growing file's parts end at one.
        let end = scanned.end.min(read.length);
        tokio::task::spawn_blocking(move || out.set_len(end))
            .await
            .expect("spool file truncation panicked")
            .map_err(|source| MariaError::Target {
                path: path.clone(),
                source,
            })?;
        // Parts stand in for a file only up to what was flushed: one a later
        // file follows must end with its rotation, or its tail is lost.
        if from_parts && later_archived && scanned.rotate_to.is_none() {
            return Err(MariaError::Binlog {
                file: file.to_string(),
                problem: "is held only as parts that end before its rotation (its record is missing or foreign), though later binlogs are archived; nothing was restored".into(),
            });
        }
        newest_event = newest_event.max(scanned.last_at());
        needed.push((file.clone(), path));
        let reaches = match &opts.target {
            MariaTarget::Time(t) => scanned.last_at().is_some_and(|l| l >= *t),
            MariaTarget::Position(f, _) => f == file,
            MariaTarget::Gtid(g) => scanned
                .last_gtid
                .is_some_and(|l| l.domain == g.domain && l.seq >= g.seq),
            MariaTarget::Latest => false,
        };
        if reaches {
            reached_target = true;
            break;
        }
    }
    if !reached_target {
        // The target lies past what the archive holds in unbroken sequence.
        let why = match &gap {
            Some(g) => format!("binlog {g} is missing from the archive"),
            None => format!(
                "the archive ends at {} (newest event {})",
                run.last().unwrap(),
                newest_event.map_or("unknown".into(), |t| t.to_rfc3339())
            ),
        };
        let window = format!(
            "{} to {}",
            base.consistent_at.to_rfc3339(),
            newest_event.unwrap_or(base.consistent_at).to_rfc3339()
        );
        return Err(MariaError::OutsideWindow {
            target: opts.target.to_string(),
            why,
            window,
        });
    }
    phases.push(("binlog_check".to_string(), t0.elapsed().as_secs_f64()));

    // 3. The base backup, prepared, started without a binlog of its own.
    let restored = base_restore::restore(
        repo,
        plan,
        &MariaRestoreOptions {
            snapshot: base.snapshot.id.to_string(),
            to: target.clone(),
            start: false,
            port: None,
            progress: opts.progress,
        },
    )
    .await?;
    phases.extend(restored.phases.iter().cloned());
    let t0 = Instant::now();
    let server = base_restore::start(&target, opts.port).await?;
    phases.push(("start".to_string(), t0.elapsed().as_secs_f64()));

    // 4. Replay.
    let t0 = Instant::now();
    replay(&server, &base, &needed, &opts.target).await?;
    phases.push(("replay".to_string(), t0.elapsed().as_secs_f64()));
    let reached = match &opts.target {
        MariaTarget::Time(t) => newest_event.map(|n| n.min(*t)),
        _ => newest_event,
    };
    let kept = if opts.start {
        let s = server.started();
        Box::new(server).keep();
        Some(s)
    } else {
        let t0 = Instant::now();
        Box::new(server)
            .stop()
            .await
            .map_err(|why| MariaError::Program {
                program: "mariadbd".into(),
                detail: format!("stopping the restored server: {why}"),
            })?;
        phases.push(("stop".to_string(), t0.elapsed().as_secs_f64()));
        None
    };
    Ok(MariaPitrReport {
        plan: plan.to_string(),
        target: opts.target.to_string(),
        data_directory: target,
        base_backup: base.snapshot.id,
        base_backup_time: base.started_at,
        base_backup_consistent_at: Some(base.consistent_at),
        replay_from: format!("{}:{}", base.file, base.position),
        binlogs: needed.iter().map(|(f, _)| f.to_string()).collect(),
        reached,
        files: restored.files,
        bytes: restored.bytes,
        phases,
        duration_seconds: started.elapsed().as_secs_f64(),
        server: kept,
    })
}

/// Whether a backup at GTID position `have` (`d-s-n[,d-s-n…]`) comes before `target`.
fn gtid_before(have: &str, target: &binlog::Gtid) -> bool {
    have.split(',')
        .filter_map(|g| g.trim().parse::<binlog::Gtid>().ok())
        .find(|g| g.domain == target.domain)
        .is_none_or(|g| g.seq <= target.seq)
}

/// `mariadb-binlog` over the spooled files, piped into `mariadb` on the
/// restored server's socket; stops at the target.
async fn replay(
    server: &base_restore::MariaServer,
    base: &Base,
    files: &[(BinlogName, PathBuf)],
    target: &MariaTarget,
) -> Result<(), MariaError> {
    use std::process::Stdio;
    let mut dump =
        tokio::process::Command::new(program_path(bin_dir().as_deref(), "mariadb-binlog"));
    dump.arg("--no-defaults")
        // Event times are written and compared in UTC.
        .env("TZ", "UTC")
        .arg(format!("--start-position={}", base.position));
    match target {
        MariaTarget::Latest => {}
        MariaTarget::Time(t) => {
            dump.arg(format!("--stop-datetime={}", t.format("%Y-%m-%d %H:%M:%S")));
        }
        MariaTarget::Position(_, pos) => {
            dump.arg(format!("--stop-position={pos}"));
        }
        MariaTarget::Gtid(g) => {
            dump.arg(format!("--stop-position={g}"));
        }
    }
    for (_, path) in files {
        dump.arg(path);
    }
    dump.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut dumper = dump.spawn().map_err(|e| MariaError::Program {
        program: "mariadb-binlog".into(),
        detail: format!("cannot run it: {e} (install mariadb-client, or set HOLDFAST_MARIADB_BIN)"),
    })?;
    let stdout: Stdio =
        dumper
            .stdout
            .take()
            .expect("piped")
            .try_into()
            .map_err(|e: std::io::Error| MariaError::Program {
                program: "mariadb-binlog".into(),
                detail: e.to_string(),
            })?;
    let mut apply = tokio::process::Command::new(program_path(bin_dir().as_deref(), "mariadb"));
    apply
        .args([
            "--no-defaults".to_string(),
            format!("--socket={}", server.socket().display()),
            "--user=root".into(),
            "--binary-mode".into(),
        ])
        .stdin(stdout)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let applier = apply.spawn().map_err(|e| MariaError::Program {
        program: "mariadb".into(),
        detail: format!("cannot run it: {e} (install mariadb-client, or set HOLDFAST_MARIADB_BIN)"),
    })?;
    let deadline = base_restore::deadline_from_env("HOLDFAST_MARIADB_REPLAY_SECS", REPLAY_DEADLINE);
    let both = async {
        let a = applier.wait_with_output().await;
        let d = dumper.wait_with_output().await;
        (a, d)
    };
    let (a, d) = tokio::time::timeout(deadline, both)
        .await
        .map_err(|_| MariaError::Program {
            program: "binlog replay".into(),
            detail: format!("did not finish within {}s", deadline.as_secs()),
        })?;
    let d = d.map_err(|e| MariaError::Program {
        program: "mariadb-binlog".into(),
        detail: e.to_string(),
    })?;
    let a = a.map_err(|e| MariaError::Program {
        program: "mariadb".into(),
        detail: e.to_string(),
    })?;
    if !d.status.success() {
        return Err(MariaError::Program {
            program: "mariadb-binlog".into(),
            detail: format!(
                "{}: {}",
                d.status,
                String::from_utf8_lossy(&d.stderr).trim()
            ),
        });
    }
    if !a.status.success() {
        return Err(MariaError::Program {
            program: "mariadb (applying the binlogs)".into(),
            detail: format!(
                "{}: {}",
                a.status,
                String::from_utf8_lossy(&a.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Removes the binlog spool when the restore ends, however it ends.
struct SpoolGuard(PathBuf);

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
