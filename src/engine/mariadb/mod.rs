//! MariaDB (and MySQL): online physical backups (`mariadb-backup
//! --stream=xbstream`, parsed as it streams), logical dumps, continuous
//! binlog archiving, and restore.
//!
//! * `client` — running MariaDB's programs against one server;
//! * `xbstream` — reading `mariadb-backup`'s stream file by file;
//! * `backup` — the `Source`: physical backup and dumps into the repository;
//! * `meta` — what a snapshot's manifest records (typed);
//! * `restore` — a snapshot into a prepared data directory, optionally started;
//! * `dump` — a logical dump into a database of a running server;
//! * `binlog` — binlog names and events, the archive layout, reading it back;
//! * `archive` — the archiver streaming binlogs from the server into the archive;
//! * `pitr` — restoring to a point in time: a backup, then binlogs replayed.

pub mod archive;
pub mod backup;
pub mod binlog;
pub mod client;
pub mod dump;
pub mod meta;
pub mod pitr;
pub mod restore;
pub mod xbstream;

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Engine, Reach, RestoreError, RestorePoint, RestoreReport, RestoreRequest, SourceKind};
use crate::error::{Exit, HasExit};
use crate::plan::{DbConnection, DbMode, Plan};
use crate::repository::log_archive::LogRetention;
use crate::repository::materialize::MaterializeError;
use crate::repository::source::{Source, SourceError};
use crate::repository::{RepoError, Repository};

pub use backup::MariaSource;
pub use client::MariaClient;

/// A MariaDB restore that could not be done; each says why and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MariaError {
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("restore target {path} is not empty; a MariaDB restore goes into an empty or new data directory (move the old one aside first)")]
    TargetNotEmpty { path: PathBuf },
    #[error("unable to put the restored data directory in place at {path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {snapshot} of plan {plan} holds no physical backup (a logical-only plan's dumps restore with `holdfast restore --dump DATABASE --into mysql://…`)")]
    NotPhysical { snapshot: String, plan: String },
    #[error("a MariaDB restore goes into an empty or new data directory; --force is not accepted")]
    Force,
    #[error("plan {plan} takes logical dumps only: restore one with `holdfast restore --dump DATABASE --into mysql://…` (point-in-time restore needs physical backups)")]
    LogicalOnly { plan: String },
    #[error("{0}")]
    BadTarget(String),
    /// The target cannot be reached from what the repository holds.
    #[error("cannot restore to {target}: {why}. Restorable window: {window}")]
    OutsideWindow {
        target: String,
        why: String,
        window: String,
    },
    /// A binlog the restore needs is missing or damaged; nothing was restored.
    #[error("binlog {file} {problem}")]
    Binlog { file: String, problem: String },
    #[error(transparent)]
    Archive(#[from] binlog::BinlogError),
    #[error("{program}: {detail}")]
    Program { program: String, detail: String },
    #[error("snapshot {snapshot} of plan {plan} has no logical dump of database {database} (it has: {have})")]
    NoDump {
        snapshot: String,
        plan: String,
        database: String,
        have: String,
    },
    #[error("--into must be a mysql:// (or mariadb://) URL naming the database to restore into, e.g. mysql://root@127.0.0.1:3306/{database}_restored; got {into}")]
    IntoNotUrl { into: String, database: String },
    #[error("--into {into} names no database")]
    IntoNoDatabase { into: String },
    #[error("--into {into} carries a password, which any user of this host could read on holdfast's command line; drop it from the URL and set MYSQL_PWD in holdfast's environment")]
    IntoPassword { into: String },
    #[error("database {database} already has tables; restore into a new or empty database")]
    HasTables { database: String },
    #[error("loading the dump into database {database} failed ({status}): {stderr}")]
    Load {
        database: String,
        status: String,
        stderr: String,
    },
    #[error("the restored server did not start: {why}; its log is {log}, ending:\n{tail}\nThe data directory is restored and prepared; start it by hand to see more")]
    Start {
        why: String,
        log: PathBuf,
        tail: String,
    },
}

impl HasExit for MariaError {
    fn exit(&self) -> Exit {
        match self {
            MariaError::Materialize(e) => e.exit(),
            MariaError::Repo(e) => e.exit(),
            MariaError::TargetNotEmpty { .. } | MariaError::Target { .. } => Exit::Target,
            MariaError::Force
            | MariaError::BadTarget(_)
            | MariaError::OutsideWindow { .. }
            | MariaError::IntoPassword { .. } => Exit::Usage,
            MariaError::Binlog { .. } => Exit::Verify,
            MariaError::Archive(e) => e.exit(),
            MariaError::LogicalOnly { .. }
            | MariaError::NotPhysical { .. }
            | MariaError::Program { .. }
            | MariaError::NoDump { .. }
            | MariaError::IntoNotUrl { .. }
            | MariaError::IntoNoDatabase { .. }
            | MariaError::HasTables { .. }
            | MariaError::Load { .. }
            | MariaError::Start { .. } => Exit::Failure,
        }
    }
}

/// A plan's MariaDB source, as the plan declares it.
pub struct MariadbEngine {
    pub connection: DbConnection,
    pub mode: DbMode,
    pub archive: bool,
    pub logical_dumps: Vec<String>,
}

#[async_trait]
impl Engine for MariadbEngine {
    fn kind(&self) -> SourceKind {
        SourceKind::Mariadb
    }

    fn open_source(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(MariaSource::new(
            self.connection.clone(),
            self.mode,
            self.archive,
            self.logical_dumps.clone(),
        )))
    }

    async fn restore(
        &self,
        repo: &Repository,
        plan: &Plan,
        req: &RestoreRequest,
    ) -> Result<RestoreReport, RestoreError> {
        if req.force {
            return Err(MariaError::Force.into());
        }
        if self.mode == DbMode::Logical {
            return Err(MariaError::LogicalOnly {
                plan: plan.name.to_string(),
            }
            .into());
        }
        let target = match &req.point {
            None => None,
            Some(RestorePoint::Snapshot(_)) if req.base.is_some() => None,
            Some(RestorePoint::Snapshot(s)) => {
                let opts = restore::MariaRestoreOptions {
                    snapshot: s.clone(),
                    to: req.to.clone(),
                    start: req.start,
                    port: req.port,
                    progress: req.progress,
                };
                let report = restore::restore(repo, &plan.name, &opts).await?;
                return Ok(RestoreReport::Mariadb(Box::new(report)));
            }
            Some(RestorePoint::Latest) => Some(pitr::MariaTarget::Latest),
            Some(RestorePoint::Time(t)) => Some(pitr::MariaTarget::Time(*t)),
            Some(RestorePoint::Position(p)) => {
                Some(pitr::MariaTarget::position(p).map_err(MariaError::BadTarget)?)
            }
            Some(RestorePoint::Gtid(g)) => Some(pitr::MariaTarget::Gtid(
                g.parse().map_err(MariaError::BadTarget)?,
            )),
        };
        let Some(target) = target else {
            let opts = restore::MariaRestoreOptions {
                snapshot: "latest".into(),
                to: req.to.clone(),
                start: req.start,
                port: req.port,
                progress: req.progress,
            };
            let report = restore::restore(repo, &plan.name, &opts).await?;
            return Ok(RestoreReport::Mariadb(Box::new(report)));
        };
        let opts = pitr::PitrOptions {
            target,
            snapshot: req.base.clone(),
            to: req.to.clone(),
            start: req.start,
            port: req.port,
            progress: req.progress,
        };
        let report = pitr::restore_pitr(repo, &plan.name, &opts).await?;
        Ok(RestoreReport::MariadbPointInTime(Box::new(report)))
    }

    async fn restore_dump(
        &self,
        repo: &Repository,
        plan: &Plan,
        req: &super::DumpRequest,
    ) -> Result<RestoreReport, RestoreError> {
        let report = dump::restore_dump(repo, &plan.name, req).await?;
        Ok(RestoreReport::Dump(report))
    }

    async fn windows(&self, repo: &Repository, plan: &Plan) -> Result<Option<Reach>, RestoreError> {
        if self.mode != DbMode::Physical || !self.archive {
            return Ok(None);
        }
        Ok(Some(pitr::windows(repo, &plan.name).await?))
    }

    fn log_retention(&self, plan: &Plan) -> Option<Box<dyn LogRetention>> {
        self.archive.then(|| binlog::retention(&plan.name))
    }
}
