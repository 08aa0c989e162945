//! Command line: parses arguments, sets up logging and progress, calls into the
//! library, prints results (`--json` for scripts) and maps failures to the
//! stable exit codes in `docs/exit-codes.md`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plan::{DbMode, Plan, SourceSpec, Tier};
use crate::progress::ProgressMode;
use crate::repository::backup::{backup, BackupError, BackupOptions};
use crate::repository::verify::verify;
use crate::repository::{RepoError, Repository};
use crate::restore::postgres::{restore_pitr, PgTarget, PitrOptions, PitrReport};
use crate::restore::{restore, RestoreError, RestoreOptions};
use crate::source::{
    files::FilesSource, postgres::PostgresSource, sqlite::SqliteSource, Source, SourceError,
};
use crate::store::{self, StoreError};

#[derive(Debug, Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Checksummed, deduplicated, immutable backups and rehearsed restores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Only warnings and errors on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// No progress bar (log lines still report progress).
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take a snapshot of a plan's source now.
    Backup {
        #[command(flatten)]
        plan: PlanArg,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List a plan's snapshots.
    Snapshots {
        #[command(flatten)]
        plan: PlanArg,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into an empty or new path; for PostgreSQL, rebuild
    /// the cluster as it was at a point in time (`--at`, `--lsn`, `--latest`).
    Restore {
        #[command(flatten)]
        plan: PlanArg,
        /// Snapshot id (any unique prefix) or `latest` (the default). For
        /// PostgreSQL: the base backup to start from (default: the newest
        /// that can reach the target); alone, restore to its end.
        #[arg(long)]
        snapshot: Option<String>,
        /// PostgreSQL: the state as of this instant (RFC 3339, e.g.
        /// 2026-02-23T18:55:59Z): replays WAL up to it, excluding later
        /// transactions.
        #[arg(long, value_name = "TIME", conflicts_with_all = ["lsn", "latest"])]
        at: Option<String>,
        /// PostgreSQL: replay WAL up to this location (e.g. 0/3000148).
        #[arg(long, conflicts_with = "latest")]
        lsn: Option<String>,
        /// PostgreSQL: replay all archived WAL.
        #[arg(long)]
        latest: bool,
        /// PostgreSQL: start the restored server, wait until it has reached
        /// the target and promoted, and report the recovery.
        #[arg(long)]
        start: bool,
        /// PostgreSQL: the port the restored server listens on.
        #[arg(long)]
        port: Option<u16>,
        /// PostgreSQL: turn archiving off in the restored copy. Use it for a
        /// scratch copy beside production: started with archiving on, a copy
        /// archives its new timeline into the plan, and later restores follow it.
        #[arg(long)]
        no_archive: bool,
        /// PostgreSQL: restore this database's logical dump (`pg_restore`)
        /// instead of the cluster; needs --into.
        #[arg(long, value_name = "DATABASE", requires = "into", conflicts_with_all = ["at", "lsn", "latest", "start", "port", "to"])]
        dump: Option<String>,
        /// With --dump: the database to restore into, as a URL
        /// (postgres://user@host:port/name); created if missing, refused if
        /// it has tables. Any PostgreSQL version pg_restore can write to.
        #[arg(long, value_name = "URL")]
        into: Option<String>,
        /// Where to restore: a file path for sqlite, a directory for files,
        /// an empty or new data directory for PostgreSQL.
        #[arg(long, required_unless_present = "dump")]
        to: Option<PathBuf>,
        /// Replace a non-empty target (the old one is removed only after the new one is in place).
        #[arg(long)]
        force: bool,
        /// Also run the database's own consistency check (SQLite: PRAGMA
        /// integrity_check) before putting the copy in place. Bytes are always
        /// verified against the snapshot's SHA-256.
        #[arg(long)]
        check: bool,
        #[arg(long)]
        json: bool,
    },
    /// Read every object of a plan's snapshots and recompute every checksum.
    Verify {
        #[command(flatten)]
        plan: PlanArg,
        /// Verify one snapshot (id prefix or `latest`) instead of all.
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Apply the plan's retention policy: remove expired snapshots, and the
    /// objects no kept snapshot needs, once their locks have ended.
    Prune {
        #[command(flatten)]
        plan: PlanArg,
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Create or check a plan's repository (on S3: the bucket, with
    /// versioning and Object Lock).
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Prove the repository is immutable from the outside, with the plan's
    /// own credentials: write a locked canary and try to delete it and to
    /// shorten its lock (both must be refused); report dangerous permissions
    /// and print least-privilege IAM policies.
    Doctor {
        #[command(flatten)]
        plan: PlanArg,
        #[arg(long)]
        json: bool,
    },
    /// Archive one WAL file into the plan's repository: PostgreSQL's
    /// `archive_command = 'holdfast wal-push --plan FILE %p'`. Idempotent for
    /// a file already archived with the same content; fails (so PostgreSQL
    /// keeps the file and retries) on anything else.
    WalPush {
        #[command(flatten)]
        plan: PlanArg,
        /// The WAL file (`%p`).
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Restore one archived WAL file, checked against its SHA-256:
    /// PostgreSQL's `restore_command = 'holdfast wal-fetch --plan FILE %f %p'`.
    /// Exit 1: not in the archive (recovery ends there); 126: anything else
    /// (recovery stops rather than end at the wrong point).
    WalFetch {
        #[command(flatten)]
        plan: PlanArg,
        /// A folder of segments already fetched and verified by `holdfast
        /// restore`: a file found there is moved into place instead of fetched.
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// The archived file's name (`%f`).
        name: String,
        /// Where to write it (`%p`).
        dest: PathBuf,
    },
    /// Work with plan files.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
    /// Validate plan files or folders of plans; print a summary of each.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// Create the repository (and bucket) if missing; check it otherwise.
    Init {
        #[command(flatten)]
        plan: PlanArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct PlanArg {
    /// The plan file (YAML).
    #[arg(long, value_name = "FILE")]
    plan: PathBuf,
}

/// Stable exit codes; see `docs/exit-codes.md`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const PLAN: u8 = 3;
    pub const REPOSITORY: u8 = 4;
    pub const VERIFY: u8 = 5;
    pub const BUSY: u8 = 6;
    pub const SOURCE: u8 = 7;
    pub const TARGET: u8 = 8;
    pub const NOT_IMMUTABLE: u8 = 9;
    /// `wal-fetch` only: any failure but "not in the archive". PostgreSQL
    /// treats exit codes above 125 as fatal and stops recovery, where any
    /// other non-zero code would make it end recovery and promote early.
    pub const WAL_FETCH_FATAL: u8 = 126;
}

/// An error with the exit code it maps to.
#[derive(Debug)]
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        Failure {
            code: classify(&error),
            error,
        }
    }
}

fn classify(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<crate::plan::PlanError>().is_some() {
            return exit::PLAN;
        }
        if let Some(e) = cause.downcast_ref::<BackupError>() {
            return match e {
                BackupError::Busy { .. } => exit::BUSY,
                BackupError::Source(_) => exit::SOURCE,
                _ => exit::REPOSITORY,
            };
        }
        if let Some(e) = cause.downcast_ref::<RestoreError>() {
            return match e {
                RestoreError::TargetNotEmpty { .. } | RestoreError::Target { .. } => exit::TARGET,
                RestoreError::Read { source, .. } => match **source {
                    crate::repository::read::ReadError::Sink { .. } => exit::TARGET,
                    _ => exit::VERIFY,
                },
                RestoreError::Check { .. } | RestoreError::WalSegment { .. } => exit::VERIFY,
                RestoreError::Repo(r) => repo_code(r),
                RestoreError::OutsideWindow { .. } => exit::USAGE,
                RestoreError::Postgres(_) | RestoreError::Recovery { .. } => exit::FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<RepoError>() {
            return repo_code(e);
        }
        if let Some(e) = cause.downcast_ref::<crate::doctor::InitError>() {
            return match e {
                crate::doctor::InitError::Repo(r) => repo_code(r),
                _ => exit::REPOSITORY,
            };
        }
        if cause.downcast_ref::<StoreError>().is_some() {
            return exit::REPOSITORY;
        }
        if cause.downcast_ref::<SourceError>().is_some() {
            return exit::SOURCE;
        }
    }
    exit::FAILURE
}

fn repo_code(e: &RepoError) -> u8 {
    match e {
        RepoError::Corrupt { .. } => exit::VERIFY,
        RepoError::NoSuchSnapshot { .. } | RepoError::AmbiguousSnapshot { .. } => exit::USAGE,
        _ => exit::REPOSITORY,
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_tracing(cli.log_format, cli.quiet);
    let progress = if cli.quiet {
        ProgressMode::Quiet
    } else if cli.no_progress || matches!(cli.log_format, LogFormat::Json) {
        ProgressMode::Log
    } else {
        ProgressMode::Auto
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("holdfast-io")
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(run(cli.command, progress)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn init_tracing(format: LogFormat, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("HOLDFAST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},aws=warn,hyper=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn run(command: Command, progress: ProgressMode) -> Result<u8, Failure> {
    match command {
        Command::Plan {
            command: PlanCommand::Check { paths, json },
        } => plan_check(&paths, json),
        Command::Backup { plan, json } => {
            let plan = load_plan(&plan.plan)?;
            let source = open_source(&plan.source)?;
            let store: Arc<dyn store::Store> = store::open(&plan.repository).await?.into();
            let now = Utc::now();
            let repo = Repository::open_or_init(store, plan.lock_for(Tier::Monthly, now), now)
                .await
                .with_context(|| format!("unable to open the repository of plan {}", plan.name))?;
            let earlier: Vec<_> = repo
                .list_snapshots(&plan.name)
                .await
                .with_context(|| format!("unable to list the snapshots of plan {}", plan.name))?
                .iter()
                .map(|s| s.started_at)
                .collect();
            let tier = plan.tier_of(now, &earlier);
            let opts = BackupOptions {
                compression_level: plan.compression.level,
                retention: plan.lock_for(tier, now),
                tier,
                progress,
            };
            let report = backup(&repo, &plan.name, source, &opts)
                .await
                .with_context(|| {
                    format!(
                        "backup of plan {} failed; no snapshot was recorded",
                        plan.name
                    )
                })?;
            if json {
                print_json(&report);
            } else {
                let s = &report.stats;
                println!(
                    "snapshot {} of plan {} saved to {}\n  {} files, {} read, {} new ({} stored), {:.1}s; locked until {}\n  restore with: holdfast restore --plan {} --snapshot {} --to PATH",
                    report.snapshot.short(),
                    report.plan,
                    report.repository,
                    s.files,
                    human_bytes(s.total_bytes),
                    human_bytes(s.new_bytes),
                    human_bytes(s.stored_bytes),
                    report.duration_seconds,
                    report.retain_until.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into()),
                    plan.file.display(),
                    report.snapshot.short(),
                );
            }
            Ok(exit::OK)
        }
        Command::Snapshots { plan, json } => {
            let plan = load_plan(&plan.plan)?;
            let repo = open_repo(&plan).await?;
            let snaps = repo.list_snapshots(&plan.name).await?;
            let mut rows = Vec::new();
            let mut unreadable = 0;
            for s in &snaps {
                let m = match repo.load_manifest(s).await {
                    Ok(m) => m,
                    Err(e) => {
                        // List what can be read; name what cannot, and fail at the end.
                        unreadable += 1;
                        eprintln!("error: {e}");
                        rows.push(serde_json::json!({
                            "id": s.id,
                            "short_id": s.id.short(),
                            "time": s.started_at,
                            "key": s.key,
                            "error": e.to_string(),
                        }));
                        continue;
                    }
                };
                rows.push(serde_json::json!({
                    "id": s.id,
                    "short_id": s.id.short(),
                    "time": m.started_at,
                    "finished_at": m.finished_at,
                    "source": m.source.kind,
                    "files": m.stats.files,
                    "total_bytes": m.stats.total_bytes,
                    "new_bytes": m.stats.new_bytes,
                    "stored_bytes": m.stats.stored_bytes,
                    "previous": m.previous,
                    "retain_until": m.retention.map(|r| r.until),
                    "tier": m.tier,
                    "key": s.key,
                }));
            }
            // PostgreSQL: how far back and forward a restore can reach.
            let windows = if let SourceSpec::Postgres {
                mode: DbMode::Physical,
                ..
            } = &plan.source
            {
                Some(crate::restore::postgres::restorable_windows(&repo, &plan.name).await?)
            } else {
                None
            };
            if let Some(windows) = &windows {
                for r in rows.iter_mut() {
                    let short = r["short_id"].as_str().unwrap_or_default().to_string();
                    if let Some(w) = windows.iter().find(|w| w.base_backups.contains(&short)) {
                        r["restorable"] = serde_json::to_value(w).expect("windows serialise");
                    }
                }
            }
            if json {
                print_json(&rows);
            } else if rows.is_empty() {
                println!("plan {} has no snapshots in {}", plan.name, repo.url());
            } else {
                println!(
                    "{:<9} {:<20} {:<7} {:>7} {:>10} {:>10}  {:<8} LOCKED UNTIL",
                    "ID", "TIME (UTC)", "SOURCE", "FILES", "SIZE", "NEW", "TIER"
                );
                for r in &rows {
                    println!(
                        "{:<9} {:<20} {:<7} {:>7} {:>10} {:>10}  {:<8} {}",
                        r["short_id"].as_str().unwrap_or_default(),
                        r["time"]
                            .as_str()
                            .unwrap_or_default()
                            .get(..19)
                            .unwrap_or_default()
                            .replace('T', " "),
                        r["source"].as_str().unwrap_or_default(),
                        r["files"]
                            .as_u64()
                            .map(|n| n.to_string())
                            .unwrap_or_default(),
                        human_bytes(r["total_bytes"].as_u64().unwrap_or_default()),
                        human_bytes(r["new_bytes"].as_u64().unwrap_or_default()),
                        r["tier"].as_str().unwrap_or("-"),
                        r["retain_until"]
                            .as_str()
                            .and_then(|t| t.get(..10))
                            .unwrap_or(if r.get("error").is_some() {
                                "UNREADABLE: run verify"
                            } else {
                                "-"
                            }),
                    );
                }
            }
            if let (Some(windows), false) = (&windows, json) {
                if windows.is_empty() {
                    println!(
                        "restorable window: none (no base backup has all of its WAL archived)"
                    );
                }
                for w in windows {
                    println!(
                        "restorable window: {w}\n  through segment {}, from base backup(s) {}",
                        w.through_segment,
                        w.base_backups.join(", ")
                    );
                }
            }
            Ok(if unreadable == 0 {
                exit::OK
            } else {
                exit::VERIFY
            })
        }
        Command::Restore {
            plan,
            snapshot,
            at,
            lsn,
            latest,
            start,
            port,
            no_archive,
            dump,
            into,
            to,
            force,
            check,
            json,
        } => {
            let plan = load_plan(&plan.plan)?;
            if let (Some(db), Some(into)) = (&dump, &into) {
                if !matches!(plan.source, SourceSpec::Postgres { .. }) {
                    return Err(usage(&format!(
                        "--dump is for PostgreSQL plans; plan {} backs up {}",
                        plan.name,
                        plan.source.kind()
                    )));
                }
                let repo = open_repo(&plan).await?;
                let report = crate::restore::postgres::restore_dump(
                    &repo,
                    &plan.name,
                    snapshot.as_deref().unwrap_or("latest"),
                    db,
                    into,
                    progress,
                )
                .await?;
                if json {
                    print_json(&report);
                } else {
                    println!(
                        "restored the dump of database {} from snapshot {} ({}) of plan {} into {}: {} in {:.1}s",
                        report.database,
                        report.snapshot.short(),
                        report.snapshot_time.to_rfc3339(),
                        report.plan,
                        report.into,
                        human_bytes(report.bytes),
                        report.duration_seconds
                    );
                }
                return Ok(exit::OK);
            }
            let Some(to) = to else {
                return Err(usage("say where to restore with --to"));
            };
            if let SourceSpec::Postgres {
                mode: DbMode::Logical,
                ..
            } = &plan.source
            {
                return Err(usage(&format!(
                    "plan {} takes logical dumps only: restore one with --dump DATABASE --into URL",
                    plan.name
                )));
            }
            if let SourceSpec::Postgres {
                mode: DbMode::Physical,
                ..
            } = &plan.source
            {
                let target = pg_target(at.as_deref(), lsn.as_deref(), latest, snapshot.is_some())?;
                if force {
                    return Err(usage("a PostgreSQL restore goes into an empty or new data directory; --force is not accepted"));
                }
                let repo = open_repo(&plan).await?;
                let opts = PitrOptions {
                    target,
                    snapshot,
                    to,
                    plan_file: plan.file.clone(),
                    start,
                    port,
                    no_archive,
                    progress,
                };
                let report = restore_pitr(&repo, &plan.name, &opts).await?;
                if json {
                    print_json(&report);
                } else {
                    print_pitr(&report, &plan);
                }
                return Ok(exit::OK);
            }
            if at.is_some() || lsn.is_some() || latest || start || port.is_some() || no_archive {
                return Err(usage(&format!(
                    "--at, --lsn, --latest, --start, --port and --no-archive are for PostgreSQL plans; plan {} backs up {}",
                    plan.name,
                    plan.source.kind()
                )));
            }
            let repo = open_repo(&plan).await?;
            let opts = RestoreOptions {
                snapshot: snapshot.unwrap_or_else(|| "latest".into()),
                to,
                force,
                check,
                progress,
            };
            let report = restore(&repo, &plan.name, &opts).await?;
            if json {
                print_json(&report);
            } else {
                println!(
                    "restored snapshot {} ({} of {}) of plan {} to {}: {} files, {} in {:.1}s",
                    report.snapshot.short(),
                    report.source,
                    report.snapshot_time.to_rfc3339(),
                    report.plan,
                    report.target.display(),
                    report.files,
                    human_bytes(report.bytes),
                    report.duration_seconds
                );
            }
            Ok(exit::OK)
        }
        Command::Verify {
            plan,
            snapshot,
            json,
        } => {
            let plan = load_plan(&plan.plan)?;
            let repo = open_repo(&plan).await?;
            let report = verify(&repo, &plan.name, snapshot.as_deref(), progress).await?;
            if json {
                print_json(&report);
            } else {
                for p in &report.problems {
                    println!(
                        "{:?}: {}: {} (breaks snapshot{} {})",
                        p.kind,
                        p.object,
                        p.detail,
                        if p.snapshots.len() == 1 { "" } else { "s" },
                        p.snapshots.join(", ")
                    );
                }
                println!(
                    "verified {} snapshot(s) of plan {}: {} packs, {} chunks, {}{} read; {}",
                    report.snapshots_checked,
                    report.plan,
                    report.packs_checked,
                    report.chunks_checked,
                    if report.wal_files_checked > 0 {
                        format!("{} archived WAL files, ", report.wal_files_checked)
                    } else {
                        String::new()
                    },
                    human_bytes(report.bytes_read),
                    if report.ok() {
                        "no problems".to_string()
                    } else {
                        format!("{} problem(s)", report.problems.len())
                    }
                );
            }
            Ok(if report.ok() { exit::OK } else { exit::VERIFY })
        }
        Command::Prune {
            plan,
            dry_run,
            json,
        } => {
            let plan = load_plan(&plan.plan)?;
            let repo = open_repo(&plan).await?;
            let now = Utc::now();
            let opts = crate::repository::prune::PruneOptions {
                retention: plan.retention,
                timezone: plan.schedule.timezone(),
                dry_run,
                record_lock: plan.lock_for(Tier::Monthly, now),
                now,
            };
            let report = crate::repository::prune::prune(&repo, &plan.name, &opts)
                .await
                .map_err(|e| match e {
                    RepoError::Store(s @ StoreError::Busy { .. }) => Failure {
                        code: exit::BUSY,
                        error: anyhow::Error::new(s)
                            .context(format!("a backup of plan {} is running", plan.name)),
                    },
                    e => e.into(),
                })?;
            if json {
                print_json(&report);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                for v in &report.removed {
                    println!(
                        "{verb} snapshot {} of {} ({})",
                        v.snapshot,
                        v.started_at.format("%Y-%m-%d %H:%M:%SZ"),
                        v.reason
                    );
                }
                for v in &report.held_by_lock {
                    println!(
                        "keep snapshot {} of {}: {}",
                        v.snapshot,
                        v.started_at.format("%Y-%m-%d %H:%M:%SZ"),
                        v.reason
                    );
                }
                for r in &report.refused {
                    println!("refused: {}: {}", r.object, r.detail);
                }
                println!(
                    "plan {}: {} snapshot(s) kept by policy, {} held by their lock, {} {verb}; {} pack(s), {} {verb}{}{}",
                    report.plan,
                    report.kept.len(),
                    report.held_by_lock.len(),
                    report.removed.len(),
                    report.packs_removed,
                    human_bytes(report.bytes_removed),
                    if report.wal_files_removed > 0 {
                        format!(
                            "; {} WAL file(s) older than every remaining base backup, {} {verb}",
                            report.wal_files_removed,
                            human_bytes(report.wal_bytes_removed)
                        )
                    } else {
                        String::new()
                    },
                    if report.refused.is_empty() {
                        String::new()
                    } else {
                        format!("; {} delete(s) refused by a lock", report.refused.len())
                    }
                );
            }
            Ok(exit::OK)
        }
        Command::Repo {
            command: RepoCommand::Init { plan, json },
        } => {
            let plan = load_plan(&plan.plan)?;
            let report = crate::doctor::repo_init(&plan).await?;
            if json {
                print_json(&report);
            } else {
                if let Some(b) = &report.bucket {
                    println!(
                        "bucket {}: {}versioning {}, Object Lock {}",
                        report.repository,
                        if report.bucket_created {
                            "created; "
                        } else {
                            ""
                        },
                        b.versioning.as_deref().unwrap_or("off"),
                        if b.object_lock {
                            "enabled"
                        } else {
                            "NOT enabled"
                        }
                    );
                }
                println!(
                    "repository {}: {}",
                    report.repository,
                    if report.repository_created {
                        "created"
                    } else {
                        "already initialised"
                    }
                );
            }
            if plan.lock.mode == crate::plan::LockSetting::None {
                eprintln!("WARNING: plan {} has lock.mode none: its backups are NOT immutable; anyone holding the repository's credentials can delete all of them", plan.name);
            }
            Ok(exit::OK)
        }
        Command::WalPush { plan, path, json } => {
            let plan = load_plan(&plan.plan)?;
            wal_plan(&plan)?;
            let context = || {
                format!(
                    "unable to archive {} for plan {}; PostgreSQL keeps it and retries",
                    path.display(),
                    plan.name
                )
            };
            let store: Arc<dyn store::Store> = store::open(&plan.repository)
                .await
                .with_context(context)?
                .into();
            // Each file stays locked as long as the longest-kept base backup
            // may need it.
            let report = crate::repository::wal::push(
                store.as_ref(),
                &plan.name,
                &path,
                plan.lock_for(Tier::Monthly, Utc::now()),
            )
            .await
            .with_context(context)?;
            if json {
                print_json(&report);
            }
            tracing::info!(plan = %plan.name, object = %report.key, bytes = report.bytes, stored_bytes = report.stored_bytes, already_archived = report.already_archived, "WAL archived");
            Ok(exit::OK)
        }
        Command::WalFetch {
            plan,
            spool,
            name,
            dest,
        } => {
            let fatal = |e: anyhow::Error| Failure {
                code: exit::WAL_FETCH_FATAL,
                error: e,
            };
            if let Some(spool) = spool {
                crate::repository::wal::check_name(&name).map_err(|e| fatal(e.into()))?;
                let spooled = spool.join(&name);
                if spooled.exists() {
                    std::fs::rename(&spooled, &dest)
                        .or_else(|_| std::fs::copy(&spooled, &dest).map(|_| ()))
                        .with_context(|| {
                            format!("unable to move {} to {}", spooled.display(), dest.display())
                        })
                        .map_err(fatal)?;
                    tracing::info!(file = %name, "WAL restored from the restore's spool");
                    return Ok(exit::OK);
                }
            }
            let plan = Plan::load(&plan.plan).map_err(|e| fatal(e.into()))?;
            wal_plan(&plan).map_err(|f| fatal(f.error))?;
            let store: Arc<dyn store::Store> = store::open(&plan.repository)
                .await
                .map_err(|e| fatal(e.into()))?
                .into();
            match crate::repository::wal::fetch(store.as_ref(), &plan.name, &name, &dest).await {
                Ok(bytes) => {
                    tracing::info!(plan = %plan.name, file = %name, bytes, "WAL restored");
                    Ok(exit::OK)
                }
                Err(e @ crate::repository::wal::WalError::NotFound { .. }) => Err(Failure {
                    code: exit::FAILURE,
                    error: anyhow::Error::new(e),
                }),
                Err(e) => Err(fatal(anyhow::Error::new(e).context(format!(
                    "unable to restore {name} for plan {}; stopping recovery rather than ending it early",
                    plan.name
                )))),
            }
        }
        Command::Doctor { plan, json } => {
            let plan = load_plan(&plan.plan)?;
            let report = crate::doctor::doctor(&plan).await?;
            if json {
                print_json(&report);
            } else {
                for c in &report.checks {
                    let mark = match c.status {
                        crate::doctor::Status::Pass => "ok  ",
                        crate::doctor::Status::Warn => "WARN",
                        crate::doctor::Status::Fail => "FAIL",
                    };
                    println!("{mark} {}: {}", c.name, c.detail);
                }
                if let (Some(w), Some(p)) = (&report.writer_policy, &report.prune_policy) {
                    println!("\nLeast-privilege IAM policy for the backup writer (no delete except its own lock objects):");
                    println!(
                        "{}",
                        serde_json::to_string_pretty(w).expect("policy serialises")
                    );
                    println!("\nIAM policy for prune (adds deleting object versions; locks still refuse early deletes):");
                    println!(
                        "{}",
                        serde_json::to_string_pretty(p).expect("policy serialises")
                    );
                }
                println!(
                    "\n{}: repository {} of plan {} {}",
                    if report.ok() { "PASS" } else { "FAIL" },
                    report.repository,
                    report.plan,
                    if report.ok() {
                        "is immutable: a locked object could be neither deleted nor have its lock shortened"
                    } else {
                        "is NOT proven immutable; see the FAIL lines above"
                    }
                );
            }
            Ok(if report.ok() {
                exit::OK
            } else {
                exit::NOT_IMMUTABLE
            })
        }
    }
}

fn usage(msg: &str) -> Failure {
    Failure {
        code: exit::USAGE,
        error: anyhow::anyhow!("{msg}"),
    }
}

/// The recovery target of a PostgreSQL restore from its flags.
fn pg_target(
    at: Option<&str>,
    lsn: Option<&str>,
    latest: bool,
    snapshot: bool,
) -> Result<PgTarget, Failure> {
    if let Some(at) = at {
        let t = DateTime::parse_from_rfc3339(at.trim())
            .map_err(|e| {
                usage(&format!(
                    "--at {at:?} is not a time: {e}; write it in RFC 3339 with a zone, e.g. 2026-02-23T18:55:59Z"
                ))
            })?
            .with_timezone(&Utc);
        return Ok(PgTarget::Time(t));
    }
    if let Some(lsn) = lsn {
        return Ok(PgTarget::Lsn(
            lsn.parse()
                .map_err(|e: String| usage(&format!("--lsn: {e}")))?,
        ));
    }
    if latest {
        return Ok(PgTarget::Latest);
    }
    if snapshot {
        return Ok(PgTarget::Immediate);
    }
    Err(usage(
        "say how far to restore a PostgreSQL plan: --at TIME, --lsn LSN, --latest (all archived WAL), or --snapshot ID (that base backup, to its end)",
    ))
}

fn print_pitr(r: &PitrReport, plan: &Plan) {
    println!(
        "restored plan {} to {} into {}\n  base backup {} (taken {}, consistent at {}), timeline path {:?}\n  {} files, {}; WAL checked: {} segment(s) {} .. {}",
        r.plan,
        r.target,
        r.data_directory.display(),
        r.base_backup.short(),
        r.base_backup_time.to_rfc3339(),
        r.base_backup_consistent_at.to_rfc3339(),
        r.timeline_path,
        r.files,
        human_bytes(r.bytes),
        r.segments_checked,
        r.first_segment,
        r.last_segment,
    );
    match (r.port, r.segments_replayed) {
        (Some(port), Some(n)) => println!(
            "  server running on port {port}, promoted; {n} segment(s) replayed from the archive; {}\n  server log: {}",
            r.reached.as_deref().unwrap_or("no transaction replayed"),
            r.server_log.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        ),
        _ => println!(
            "  start it with: pg_ctl -D {} start   (it replays WAL through `holdfast wal-fetch --plan {}` and promotes at the target)",
            r.data_directory.display(),
            plan.file.display()
        ),
    }
    let p = &r.phases;
    println!(
        "  time: WAL check {:.1}s, base restore {:.1}s{}, total {:.1}s",
        p.check_wal_seconds,
        p.restore_base_seconds,
        p.recovery_seconds
            .map(|s| format!(", recovery {s:.1}s"))
            .unwrap_or_default(),
        p.total_seconds
    );
}

fn load_plan(path: &Path) -> Result<Plan, Failure> {
    Ok(Plan::load(path)?)
}

/// WAL commands need a physical PostgreSQL plan that archives.
fn wal_plan(plan: &Plan) -> Result<(), Failure> {
    match &plan.source {
        SourceSpec::Postgres { archive: true, .. } => Ok(()),
        other => Err(Failure {
            code: exit::PLAN,
            error: anyhow::anyhow!(
                "{}: plan {} does not archive WAL: wal-push and wal-fetch need `source: {{type: postgres, mode: physical}}` with `archive: true` (the default); this plan's source is {}",
                plan.file.display(),
                plan.name,
                other.kind()
            ),
        }),
    }
}

/// Pretty JSON on stdout, for `--json`.
fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialise")
    );
}

async fn open_repo(plan: &Plan) -> Result<Repository, Failure> {
    let store: Arc<dyn store::Store> = store::open(&plan.repository).await?.into();
    Ok(Repository::open(store).await?)
}

fn open_source(spec: &SourceSpec) -> Result<Box<dyn Source>, Failure> {
    Ok(match spec {
        SourceSpec::Sqlite { path } => Box::new(SqliteSource::new(path.clone())?),
        SourceSpec::Files { path, exclude } => {
            Box::new(FilesSource::new(path.clone(), exclude.clone())?)
        }
        SourceSpec::Postgres {
            connection,
            sslmode,
            mode,
            archive,
            logical_dumps,
        } => Box::new(PostgresSource::new(
            connection.clone(),
            *sslmode,
            *mode,
            *archive,
            logical_dumps.clone(),
        )),
        other @ SourceSpec::Mariadb { .. } => {
            return Err(SourceError::Unsupported(format!(
                "{} sources are not supported by this build yet; it backs up sqlite, files and postgres sources",
                other.kind()
            ))
            .into())
        }
    })
}

fn plan_check(paths: &[PathBuf], json: bool) -> Result<u8, Failure> {
    let now = Utc::now();
    let results = crate::plan::load_paths(paths);
    let mut failed = 0;
    let mut out = Vec::new();
    for (path, result) in &results {
        match result {
            Ok(plan) => {
                if json {
                    out.push(serde_json::json!({"file": path, "ok": true, "plan": plan.summary_json(now)}));
                } else {
                    println!("ok    {}", plan.summary(now));
                }
                for w in plan.warnings() {
                    eprintln!("warning: {w}");
                }
            }
            Err(e) => {
                failed += 1;
                if json {
                    out.push(
                        serde_json::json!({"file": path, "ok": false, "error": e.to_string()}),
                    );
                } else {
                    println!("error {e}");
                }
            }
        }
    }
    if json {
        print_json(&out);
    } else {
        println!("{} plan(s) checked, {} with errors", results.len(), failed);
    }
    Ok(if failed == 0 { exit::OK } else { exit::PLAN })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
