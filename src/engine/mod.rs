//! Database engines: everything one kind of source knows — how to back it
//! up, how to archive and replay its log, how to restore it (to a snapshot
//! or to a point in time), and how to start a scratch copy. One folder per
//! engine; the rest of holdfast reaches an engine only through [`Engine`],
//! and the one `match` on a plan's source kind is [`engine_for`].
//!
//! Engines sit above the repository (they hand entries to its writer and
//! read snapshots back through it) and know nothing of where bytes live.
//!
//! Adding a database: a new folder `engine/<name>/` implementing [`Engine`]
//! (its `Source` for backups, its restore, and where it has one its log
//! archive's retention and restorable windows), a variant in [`SourceKind`],
//! and one arm in [`engine_for`].

pub mod dump;
pub mod files;
pub mod mariadb;
pub mod point;
pub mod postgres;
pub mod process;
pub mod scratch;
pub mod sqlite;
pub mod when;

use std::path::PathBuf;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::{Exit, HasExit};
use crate::plan::{Plan, PlanName, SourceSpec};
use crate::progress::ProgressMode;
use crate::repository::log_archive::LogRetention;
use crate::repository::materialize::{MaterializeError, RestoreReport as SnapshotRestoreReport};
use crate::repository::source::{Source, SourceError};
use crate::repository::{RepoError, Repository};

pub use crate::plan::SourceKind;
pub use point::{Pending, Reach, RestorePoint, Window};

/// What `holdfast restore` asks of an engine. Which fields apply depends on
/// the engine; one that does not is refused with [`RestoreError::NotFor`].
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// How far to restore: `--at`, `--lsn`, `--latest`, or `--snapshot`
    /// alone; `None` when the command line said none of them (each engine
    /// has its own default, or refuses).
    pub point: Option<RestorePoint>,
    /// With a point in time: the snapshot to start from (`--snapshot` beside
    /// `--at`/`--lsn`/`--latest`); `None` lets the engine choose.
    pub base: Option<String>,
    pub to: PathBuf,
    /// The plan file, for commands the restored server runs (`restore_command`).
    pub plan_file: PathBuf,
    pub force: bool,
    pub check: bool,
    /// Start the restored server and wait until it is usable.
    pub start: bool,
    pub port: Option<u16>,
    /// `--archive` (Some(true): the copy replaces the source and writes into
    /// the plan as it did) or `--no-archive` (Some(false): a scratch copy
    /// that must not); `None` lets the engine decide from where it goes.
    pub archive: Option<bool>,
    /// `--keep-setid-bits`: restore setuid/setgid bits as recorded (files
    /// and sqlite; dropped otherwise, and always for PostgreSQL).
    pub keep_setid_bits: bool,
    pub progress: ProgressMode,
}

/// What a restore did, per engine; serialises as the engine's own report.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RestoreReport {
    Snapshot(SnapshotRestoreReport),
    PointInTime(Box<postgres::pitr::PitrReport>),
    Dump(dump::DumpRestoreReport),
    Mariadb(Box<mariadb::restore::MariaRestoreReport>),
    MariadbPointInTime(Box<mariadb::pitr::MariaPitrReport>),
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    #[error(transparent)]
    Mariadb(#[from] mariadb::MariaError),
    #[error("{what} {applies}; plan {plan} backs up {kind}")]
    NotFor {
        what: &'static str,
        applies: &'static str,
        plan: PlanName,
        kind: SourceKind,
    },
    #[error("{0}")]
    Usage(&'static str),
}

impl HasExit for RestoreError {
    fn exit(&self) -> Exit {
        match self {
            RestoreError::Materialize(e) => e.exit(),
            RestoreError::Repo(e) => e.exit(),
            RestoreError::Postgres(e) => e.exit(),
            RestoreError::Mariadb(e) => e.exit(),
            RestoreError::NotFor { .. } | RestoreError::Usage(_) => Exit::Usage,
        }
    }
}

/// What a database kind must provide.
#[async_trait]
pub trait Engine: Send + Sync {
    fn kind(&self) -> SourceKind;

    /// A source that takes one consistent snapshot (run on a blocking thread).
    fn open_source(&self) -> Result<Box<dyn Source>, SourceError>;

    /// Restores a snapshot, or the database as of a point in time.
    async fn restore(
        &self,
        repo: &Repository,
        plan: &Plan,
        req: &RestoreRequest,
    ) -> Result<RestoreReport, RestoreError>;

    /// Restores one logical dump into a running server (`--dump DB --into URL`).
    async fn restore_dump(
        &self,
        _repo: &Repository,
        plan: &Plan,
        _req: &DumpRequest,
    ) -> Result<RestoreReport, RestoreError> {
        Err(RestoreError::NotFor {
            what: "--dump",
            applies: "is for PostgreSQL and MariaDB plans",
            plan: plan.name.clone(),
            kind: self.kind(),
        })
    }

    /// How far back and forward a restore can reach, for engines that
    /// archive a log (`None`: snapshots only).
    async fn windows(
        &self,
        _repo: &Repository,
        _plan: &Plan,
    ) -> Result<Option<Reach>, RestoreError> {
        Ok(None)
    }

    /// The log archive `verify` reads back and `prune` expires, if any.
    fn log_retention(&self, _plan: &Plan) -> Option<Box<dyn LogRetention>> {
        None
    }
}

/// `--dump DB --into URL`.
#[derive(Debug, Clone)]
pub struct DumpRequest {
    /// `latest` or a snapshot id prefix.
    pub snapshot: String,
    pub database: String,
    pub into: String,
    pub progress: ProgressMode,
}

/// The engine for a plan's source: the one place a source kind is matched.
pub fn engine_for(plan: &Plan) -> Result<Box<dyn Engine>, SourceError> {
    Ok(match &plan.source {
        SourceSpec::Sqlite { path } => Box::new(sqlite::SqliteEngine { path: path.clone() }),
        SourceSpec::Files { path, exclude } => Box::new(files::FilesEngine {
            path: path.clone(),
            exclude: exclude.clone(),
        }),
        SourceSpec::Postgres {
            connection,
            sslmode,
            mode,
            archive,
            logical_dumps,
            base_backup,
        } => Box::new(postgres::PostgresEngine {
            connection: connection.clone(),
            sslmode: *sslmode,
            mode: *mode,
            archive: *archive,
            logical_dumps: logical_dumps.clone(),
            base_backup: *base_backup,
        }),
        SourceSpec::Mariadb {
            connection,
            mode,
            archive,
            logical_dumps,
        } => Box::new(mariadb::MariadbEngine {
            connection: connection.clone(),
            mode: *mode,
            archive: *archive,
            logical_dumps: logical_dumps.clone(),
        }),
    })
}

/// The snapshot selector of a restore that can only restore whole
/// snapshots; refuses the point-in-time flags.
pub(crate) fn snapshot_only(
    plan: &Plan,
    kind: SourceKind,
    req: &RestoreRequest,
) -> Result<String, RestoreError> {
    let pitr_flags =
        !matches!(req.point, None | Some(RestorePoint::Snapshot(_))) || req.base.is_some();
    if pitr_flags || req.start || req.port.is_some() || req.archive.is_some() {
        return Err(RestoreError::NotFor {
            what: "--at, --lsn, --latest, --start, --port, --archive and --no-archive",
            applies: "are for PostgreSQL plans",
            plan: plan.name.clone(),
            kind,
        });
    }
    match &req.point {
        Some(RestorePoint::Snapshot(s)) => Ok(s.clone()),
        _ => Ok("latest".into()),
    }
}
