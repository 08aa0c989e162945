//! `holdfast restore`: flags → one restore request for the plan's engine.

use std::path::PathBuf;

use clap::Args;

use super::render::{human_bytes, json as print_json, outln};
use super::PlanArg;
use crate::engine::postgres::pitr::{CopyRole, PitrReport};
use crate::engine::when::parse_time;
use crate::engine::{DumpRequest, RestorePoint, RestoreReport, RestoreRequest};
use crate::error::{Error, Exit};
use crate::plan::Plan;
use crate::progress::ProgressMode;

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// Snapshot id (any unique prefix) or `latest` (the default). For
    /// PostgreSQL: the base backup to start from (default: the newest
    /// that can reach the target); alone, restore to its end, replaying
    /// no WAL archived after it (--latest gives the newest state).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// PostgreSQL: the state as of this instant: replays WAL up to it,
    /// excluding later transactions. RFC 3339 (2026-02-23T18:55:59Z), what
    /// psql and server logs print (2026-02-23 18:55:59.123+00, +05:30,
    /// -0800, UTC), or a bare time read in the plan's timezone (a note says
    /// which offset; a time the clocks skip or repeat is refused).
    /// MariaDB: replays the binlog events stamped before this time's second.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["lsn", "latest", "position", "gtid"])]
    pub at: Option<String>,
    /// PostgreSQL: replay WAL up to this location (e.g. 0/3000148).
    #[arg(long, conflicts_with_all = ["latest", "position", "gtid"])]
    pub lsn: Option<String>,
    /// MariaDB: replay binlogs up to (not including) this position, as
    /// FILE:POS (e.g. binlog.000042:1337; `mariadb-binlog` shows positions).
    #[arg(long, value_name = "FILE:POS", conflicts_with_all = ["latest", "gtid"])]
    pub position: Option<String>,
    /// MariaDB: replay binlogs up to and including this GTID (domain-server-seq).
    #[arg(long, value_name = "GTID", conflicts_with = "latest")]
    pub gtid: Option<String>,
    /// PostgreSQL: replay all archived WAL. MariaDB: all archived binlogs.
    #[arg(long)]
    pub latest: bool,
    /// PostgreSQL: start the restored server, wait until it has reached
    /// the target and promoted, and report the recovery.
    #[arg(long)]
    pub start: bool,
    /// PostgreSQL: the port the restored server listens on.
    #[arg(long)]
    pub port: Option<u16>,
    /// PostgreSQL: this copy replaces the cluster (a rebuild on a new host or
    /// path): it keeps archiving into the plan. Without --archive or
    /// --no-archive, a restore into the cluster's own data directory (as its
    /// base backup recorded it) is a rebuild that archives, and any other
    /// path is a scratch copy with `archive_mode = off`.
    #[arg(long, conflicts_with = "no_archive")]
    pub archive: bool,
    /// PostgreSQL: a scratch copy beside the cluster, whatever the path:
    /// `archive_mode = off`, so it never archives its own timeline into the
    /// plan (later restores would follow it).
    #[arg(long)]
    pub no_archive: bool,
    /// PostgreSQL and MariaDB: restore this database's logical dump
    /// (`pg_restore`, `mariadb`) instead of the cluster; needs --into.
    #[arg(long, value_name = "DATABASE", requires = "into", conflicts_with_all = ["at", "lsn", "position", "gtid", "latest", "start", "port", "to"])]
    pub dump: Option<String>,
    /// With --dump: the database to restore into, as a URL
    /// (postgres://user@host:port/name, mysql://user@host:port/name);
    /// created if missing, refused if it has tables. The password comes
    /// from PGPASSWORD / MYSQL_PWD, never the URL.
    #[arg(long, value_name = "URL")]
    pub into: Option<String>,
    /// Where to restore: a file path for sqlite, a directory for files,
    /// an empty or new data directory for PostgreSQL.
    #[arg(long, required_unless_present = "dump")]
    pub to: Option<PathBuf>,
    /// Replace a non-empty target (the old one is removed only after the new one is in place).
    #[arg(long)]
    pub force: bool,
    /// Also run the database's own consistency check (SQLite: PRAGMA
    /// integrity_check) before putting the copy in place. Bytes are always
    /// verified against the snapshot's SHA-256.
    #[arg(long)]
    pub check: bool,
    /// Files and SQLite: restore setuid and setgid bits as the snapshot
    /// records them. Without it they are dropped (with a warning naming the
    /// entries): anyone able to add a snapshot to the repository could
    /// otherwise plant a setuid binary. The sticky bit is always kept.
    #[arg(long)]
    pub keep_setid_bits: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RestoreArgs, progress: ProgressMode) -> Result<Exit, Error> {
    let plan = args.plan.load()?;
    if let (Some(database), Some(into)) = (&args.dump, &args.into) {
        let req = DumpRequest {
            snapshot: args.snapshot.clone().unwrap_or_else(|| "latest".into()),
            database: database.clone(),
            into: into.clone(),
            progress,
        };
        let report = crate::ops::restore::restore_dump(&plan, &req).await?;
        return render(&report, &plan, args.json);
    }
    let Some(to) = args.to.clone() else {
        return Err(Error::usage("say where to restore with --to"));
    };
    let point = point(&args, &plan)?;
    let base = match point {
        Some(RestorePoint::Snapshot(_)) | None => None,
        _ => args.snapshot.clone(),
    };
    let req = RestoreRequest {
        point,
        base,
        to,
        plan_file: plan.file.clone(),
        force: args.force,
        check: args.check,
        start: args.start,
        port: args.port,
        archive: match (args.archive, args.no_archive) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        keep_setid_bits: args.keep_setid_bits,
        progress,
    };
    let report = crate::ops::restore::restore(&plan, &req).await?;
    render(&report, &plan, args.json)
}

/// How far to restore, from `--at`, `--lsn`, `--latest` or `--snapshot`.
fn point(args: &RestoreArgs, plan: &Plan) -> Result<Option<RestorePoint>, Error> {
    if let Some(at) = &args.at {
        let parsed = parse_time(at, plan.schedule.timezone())
            .map_err(|e| Error::usage(format!("--at {e}")))?;
        if let Some(note) = &parsed.note {
            eprintln!("note: --at {note}");
        }
        return Ok(Some(RestorePoint::Time(parsed.at)));
    }
    if let Some(lsn) = &args.lsn {
        return Ok(Some(RestorePoint::Position(lsn.clone())));
    }
    if let Some(position) = &args.position {
        return Ok(Some(RestorePoint::Position(position.clone())));
    }
    if let Some(gtid) = &args.gtid {
        return Ok(Some(RestorePoint::Gtid(gtid.clone())));
    }
    if args.latest {
        return Ok(Some(RestorePoint::Latest));
    }
    Ok(args.snapshot.clone().map(RestorePoint::Snapshot))
}

fn render(report: &RestoreReport, plan: &Plan, json: bool) -> Result<Exit, Error> {
    if json {
        print_json(report)?;
        return Ok(Exit::Ok);
    }
    match report {
        RestoreReport::Snapshot(r) => outln!(
            "restored snapshot {} ({} of {}) of plan {} to {}: {} files, {} in {:.1}s",
            r.snapshot.short(),
            r.source,
            r.snapshot_time.to_rfc3339(),
            r.plan,
            r.target.display(),
            r.files,
            human_bytes(r.bytes),
            r.duration_seconds
        )?,
        RestoreReport::PointInTime(r) => print_pitr(r, plan)?,
        RestoreReport::MariadbPointInTime(r) => {
            outln!(
                "restored plan {} to {} into {}\n  base backup {} (taken {}), binlogs replayed from {}: {}\n  {} files, {} in {:.1}s; reached {}",
                r.plan,
                r.target,
                r.data_directory.display(),
                r.base_backup.short(),
                r.base_backup_time.to_rfc3339(),
                r.replay_from,
                r.binlogs.join(", "),
                r.files,
                human_bytes(r.bytes),
                r.duration_seconds,
                r.reached.map_or("-".into(), |t| t.to_rfc3339()),
            )?;
            if let Some(s) = &r.server {
                outln!(
                    "  started: mariadbd on 127.0.0.1:{} (socket {}), log {}",
                    s.port,
                    s.socket.display(),
                    s.log.display()
                )?;
            }
        }
        RestoreReport::Mariadb(r) => {
            outln!(
                "restored snapshot {} (taken {}) of plan {} into {}: {} files, {} in {:.1}s; binlog position {} {}{}",
                r.snapshot.short(),
                r.snapshot_time.to_rfc3339(),
                r.plan,
                r.data_directory.display(),
                r.files,
                human_bytes(r.bytes),
                r.duration_seconds,
                r.binlog_file.as_deref().unwrap_or("-"),
                r.binlog_position.map(|p| p.to_string()).unwrap_or_default(),
                r.gtid.as_deref().map(|g| format!(" (GTID {g})")).unwrap_or_default(),
            )?;
            if let Some(s) = &r.server {
                outln!(
                    "  started: mariadbd on 127.0.0.1:{} (socket {}, pid {}), log {}",
                    s.port,
                    s.socket.display(),
                    s.pid.map(|p| p.to_string()).unwrap_or_default(),
                    s.log.display()
                )?;
            }
        }
        RestoreReport::Dump(r) => outln!(
            "restored the dump of database {} from snapshot {} ({}) of plan {} into {}: {} in {:.1}s",
            r.database,
            r.snapshot.short(),
            r.snapshot_time.to_rfc3339(),
            r.plan,
            r.into,
            human_bytes(r.bytes),
            r.duration_seconds
        )?,
    }
    Ok(Exit::Ok)
}

fn print_pitr(r: &PitrReport, plan: &Plan) -> Result<(), Error> {
    outln!(
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
    )?;
    for note in &r.notes {
        outln!("  note: {note}")?;
    }
    match r.role {
        CopyRole::Rebuild => outln!(
            "  REBUILD of the cluster ({}): once started it archives into plan {} as the cluster did",
            r.role_reason,
            r.plan
        )?,
        CopyRole::Scratch => outln!(
            "  SCRATCH COPY ({}): archive_mode = off, so it never archives into plan {}",
            r.role_reason,
            r.plan
        )?,
    }
    match (r.port, r.segments_replayed) {
        (Some(port), Some(n)) => {
            let log = r
                .server_log
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            outln!(
                "  server running on port {port}, promoted; {n} segment(s) replayed from the archive; {}\n  server log: {log}",
                r.reached.as_deref().unwrap_or("no transaction replayed"),
            )?;
            if r.role == CopyRole::Rebuild {
                outln!(
                    "  next: restart it under its service manager (it logs to {log} until then): pg_ctl -D {dir} stop, then e.g. systemctl start postgresql / pg_ctlcluster 15 main start; then take a base backup: holdfast backup --plan {plan}",
                    dir = r.data_directory.display(),
                    plan = plan.file.display()
                )?;
            } else {
                outln!(
                    "  stop it when done: pg_ctl -D {} stop",
                    r.data_directory.display()
                )?;
            }
        }
        _ => outln!(
            "  start it with: pg_ctl -D {} start   (it replays WAL through `holdfast wal-fetch --plan {}` and promotes at the target; {})",
            r.data_directory.display(),
            plan.file.display(),
            if r.archiving {
                "then it archives into the plan"
            } else {
                "it does not archive"
            }
        )?,
    }
    let p = &r.phases;
    outln!(
        "  time: WAL check {:.1}s, base restore {:.1}s{}, total {:.1}s",
        p.check_wal_seconds,
        p.restore_base_seconds,
        p.recovery_seconds
            .map(|s| format!(", recovery {s:.1}s"))
            .unwrap_or_default(),
        p.total_seconds
    )
}
