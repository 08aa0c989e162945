//! PostgreSQL: online physical base backups (`pg_basebackup`), continuous
//! WAL archiving (`wal-push` / `wal-fetch` as `archive_command` /
//! `restore_command`), point-in-time restore, and logical dumps.
//!
//! * `client` — running the client programs against one server;
//! * `archiver` — is the server archiving? (the base backup's watchdog);
//! * `backup` — the `Source`: base backup and dumps into the repository;
//! * `meta` — what a snapshot's manifest records (typed);
//! * `wal` — WAL names, LSNs, segments, timelines; push/fetch; prune's rule;
//! * `pitr` — choosing a base backup, checking the WAL, restorable windows;
//! * `recovery` — recovery settings, and starting the restored server;
//! * `spool` — asynchronous archiving's records (`wal-push --async`);
//! * `waldump` — commit times read with `pg_waldump`;
//! * `dump` — restoring a logical dump with `pg_restore`.

pub mod archiver;
pub mod backup;
pub mod client;
pub mod datadir;
pub mod dump;
pub mod meta;
pub mod pitr;
pub mod recovery;
pub mod spool;
pub mod wal;
pub mod waldump;

use std::path::PathBuf;

use async_trait::async_trait;

use super::{
    DumpRequest, Engine, Reach, RestoreError, RestorePoint, RestoreReport, RestoreRequest,
    SourceKind,
};
use crate::error::{Exit, HasExit};
use crate::plan::{DbConnection, DbMode, PgSslMode, Plan};
use crate::repository::log_archive::{LogError, LogRetention};
use crate::repository::materialize::MaterializeError;
use crate::repository::source::{Source, SourceError};
use crate::repository::{RepoError, Repository};

pub use backup::PostgresSource;
pub use client::PgClient;
use pitr::{PgTarget, PitrOptions};
use wal::Lsn;

/// A PostgreSQL restore that could not be done; each kind says why and what
/// to do, and knows its exit class.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("restore target {path} is not empty; a PostgreSQL restore goes into an empty or new data directory (move the old one aside first)")]
    TargetNotEmpty { path: PathBuf },
    #[error(
        "a PostgreSQL restore goes into an empty or new data directory; --force is not accepted"
    )]
    Force,
    #[error("say how far to restore a PostgreSQL plan: --at TIME, --lsn LSN, --latest (all archived WAL), or --snapshot ID (that base backup, to its end)")]
    NoTarget,
    #[error("--lsn: {0}")]
    BadLsn(String),
    #[error("--gtid is for MariaDB plans; a PostgreSQL restore goes to --at TIME, --lsn LSN or --latest")]
    GtidNotPostgres,
    #[error("plan {plan} takes logical dumps only: restore one with --dump DATABASE --into URL")]
    LogicalOnly { plan: String },
    #[error("refusing to restore a PostgreSQL data directory as root: its files would belong to root, and PostgreSQL neither starts on them nor runs as root. Run the restore as the PostgreSQL OS user, e.g. `runuser -u postgres -- holdfast restore …` (that user must read the plan file and reach the repository; the target's parent must be writable by it: `mkdir -p DIR && chown postgres: DIR`)")]
    RunAsRoot,
    #[error("plan {plan} has no PostgreSQL base backup in {repository}; take one with `holdfast backup --plan {plan_file}`")]
    NoBaseBackup {
        plan: String,
        repository: String,
        plan_file: String,
    },
    #[error("no PostgreSQL base backup matches --snapshot {selector}")]
    NoSuchBaseBackup { selector: String },
    #[error("--snapshot {selector} matches {count} base backups; give more of the id")]
    AmbiguousBaseBackup { selector: String, count: usize },
    #[error(
        "base backup {backup} is consistent only from {consistent_at}; it cannot reach {target}"
    )]
    BackupTooLate {
        backup: String,
        consistent_at: String,
        target: String,
    },
    #[error("base backup {backup} has no postgresql.conf: the server keeps its configuration outside the data directory (Debian and Ubuntu: /etc/postgresql/<version>/<cluster>), so --start cannot start it. Restore without --start, then start it with its own configuration (e.g. pg_ctlcluster 15 main start when restoring into that cluster's data directory)")]
    NoConfig { backup: String },
    #[error("timeline history {key} is unreadable: {why}")]
    History { key: String, why: String },
    #[error("timeline {newest} (the newest in the archive) does not descend from timeline {timeline} of base backup {backup}; restore with --snapshot of a backup taken on timeline {newest}")]
    NotDescendant {
        newest: u32,
        timeline: u32,
        backup: String,
    },
    #[error("base backup {backup} (timeline {timeline}, ends at {stop}) was taken after timeline {timeline} branched off at {left}; it cannot be replayed onto the newest timeline")]
    BranchedBefore {
        backup: String,
        timeline: u32,
        stop: Lsn,
        left: Lsn,
    },
    #[error("a time target needs pg_waldump of PostgreSQL {major} to find the segment holding it; install PostgreSQL's server programs, or set HOLDFAST_PG_BIN")]
    NoWaldump { major: u64 },
    /// A program holdfast runs could not be run, or failed.
    #[error("{program}: {detail}")]
    Program { program: String, detail: String },
    /// A WAL file the restore needs is missing or damaged; nothing was restored.
    #[error("WAL segment {key} {problem}; nothing was restored")]
    WalSegment { key: String, problem: String },
    #[error("{0}")]
    Log(LogError),
    /// The target cannot be reached from what the repository holds.
    #[error("cannot restore to {target}: {why}. Restorable window: {windows}")]
    OutsideWindow {
        target: String,
        why: String,
        windows: String,
    },
    /// The restored server did not finish recovery.
    #[error("recovery failed: {why}; the server log is {log}, ending:\n{tail}\n{next}")]
    Recovery {
        why: String,
        log: PathBuf,
        tail: String,
        /// What to do with the data directory, which is restored and ready.
        next: String,
    },
    #[error("snapshot {snapshot} of plan {plan} has no logical dump of database {database} (it has: {have})")]
    NoDump {
        snapshot: String,
        plan: String,
        database: String,
        have: String,
    },
    #[error("--into must be a postgres:// URL naming the database to restore into, e.g. postgres://postgres@127.0.0.1:5432/{database}_restored; got {into:?}")]
    IntoNotUrl { into: String, database: String },
    #[error("--into {into:?} names no database")]
    IntoNoDatabase { into: String },
    #[error("--into {into:?} carries a password, which any user of this host could read on holdfast's command line; drop it from the URL and set PGPASSWORD in holdfast's environment, or put it in ~/.pgpass (or the file PGPASSFILE names, mode 0600)")]
    IntoPassword { into: String },
    #[error("database {database} already has tables; restore into a new or empty database")]
    HasTables { database: String },
    #[error("pg_restore into database {database} failed ({status}), its transaction was rolled back: {stderr}")]
    PgRestore {
        database: String,
        status: String,
        stderr: String,
    },
    /// A query or client program against a server failed.
    #[error(transparent)]
    Client(#[from] SourceError),
}

impl HasExit for PgError {
    fn exit(&self) -> Exit {
        match self {
            PgError::Materialize(e) => e.exit(),
            PgError::Repo(e) => e.exit(),
            PgError::TargetNotEmpty { .. } => Exit::Target,
            PgError::Force
            | PgError::NoTarget
            | PgError::BadLsn(_)
            | PgError::GtidNotPostgres
            | PgError::IntoPassword { .. }
            | PgError::LogicalOnly { .. }
            | PgError::NoSuchBaseBackup { .. }
            | PgError::AmbiguousBaseBackup { .. }
            | PgError::OutsideWindow { .. } => Exit::Usage,
            PgError::WalSegment { .. } => Exit::Verify,
            PgError::Log(e) => e.exit(),
            PgError::RunAsRoot
            | PgError::NoBaseBackup { .. }
            | PgError::BackupTooLate { .. }
            | PgError::NoConfig { .. }
            | PgError::History { .. }
            | PgError::NotDescendant { .. }
            | PgError::BranchedBefore { .. }
            | PgError::NoWaldump { .. }
            | PgError::Program { .. }
            | PgError::Recovery { .. }
            | PgError::NoDump { .. }
            | PgError::IntoNotUrl { .. }
            | PgError::IntoNoDatabase { .. }
            | PgError::HasTables { .. }
            | PgError::PgRestore { .. }
            | PgError::Client(_) => Exit::Failure,
        }
    }
}

/// A plan's PostgreSQL source, as the plan declares it.
pub struct PostgresEngine {
    pub connection: DbConnection,
    pub sslmode: PgSslMode,
    pub mode: DbMode,
    pub archive: bool,
    pub logical_dumps: Vec<String>,
    pub base_backup: crate::plan::BaseBackupMethod,
}

impl PostgresEngine {
    /// The recovery target for a restore request.
    fn target(req: &RestoreRequest) -> Result<(PgTarget, Option<String>), PgError> {
        Ok(match &req.point {
            None => return Err(PgError::NoTarget),
            Some(RestorePoint::Time(t)) => (PgTarget::Time(*t), req.base.clone()),
            Some(RestorePoint::Position(p)) => (
                PgTarget::Lsn(p.parse().map_err(PgError::BadLsn)?),
                req.base.clone(),
            ),
            Some(RestorePoint::Latest) => (PgTarget::Latest, req.base.clone()),
            Some(RestorePoint::Snapshot(s)) => (PgTarget::Immediate, Some(s.clone())),
            Some(RestorePoint::Gtid(_)) => return Err(PgError::GtidNotPostgres),
        })
    }
}

#[async_trait]
impl Engine for PostgresEngine {
    fn kind(&self) -> SourceKind {
        SourceKind::Postgres
    }

    fn open_source(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(PostgresSource::new(
            self.connection.clone(),
            self.sslmode,
            self.mode,
            self.archive,
            self.logical_dumps.clone(),
            self.base_backup,
        )))
    }

    async fn restore(
        &self,
        repo: &Repository,
        plan: &Plan,
        req: &RestoreRequest,
    ) -> Result<RestoreReport, RestoreError> {
        if self.mode == DbMode::Logical {
            return Err(PgError::LogicalOnly {
                plan: plan.name.to_string(),
            }
            .into());
        }
        let (target, snapshot) = Self::target(req)?;
        if req.force {
            return Err(PgError::Force.into());
        }
        let opts = PitrOptions {
            target,
            snapshot,
            to: req.to.clone(),
            plan_file: req.plan_file.clone(),
            start: req.start,
            port: req.port,
            archive: req.archive,
            progress: req.progress,
        };
        let report = pitr::restore_pitr(repo, &plan.name, &opts).await?;
        Ok(RestoreReport::PointInTime(Box::new(report)))
    }

    async fn restore_dump(
        &self,
        repo: &Repository,
        plan: &Plan,
        req: &DumpRequest,
    ) -> Result<RestoreReport, RestoreError> {
        let report = dump::restore_dump(repo, &plan.name, req).await?;
        Ok(RestoreReport::Dump(report))
    }

    async fn windows(&self, repo: &Repository, plan: &Plan) -> Result<Option<Reach>, RestoreError> {
        if self.mode != DbMode::Physical {
            return Ok(None);
        }
        Ok(Some(pitr::restorable_windows(repo, &plan.name).await?))
    }

    fn log_retention(&self, plan: &Plan) -> Option<Box<dyn LogRetention>> {
        Some(Box::new(wal::WalRetention {
            plan: plan.name.clone(),
        }))
    }
}

impl HasExit for wal::WalError {
    fn exit(&self) -> Exit {
        match self {
            wal::WalError::BadName { .. } => Exit::Failure,
            wal::WalError::Log(e) => e.exit(),
        }
    }
}
