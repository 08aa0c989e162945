//! MariaDB (and MySQL): online physical backups (`mariadb-backup
//! --stream=xbstream`, parsed as it streams), logical dumps, continuous
//! binlog archiving, and restore.
//!
//! * `client` — running MariaDB's programs against one server;
//! * `xbstream` — reading `mariadb-backup`'s stream file by file;
//! * `backup` — the `Source`: physical backup and dumps into the repository;
//! * `meta` — what a snapshot's manifest records (typed);
//! * `restore` — a snapshot into a prepared data directory, optionally started.

pub mod backup;
pub mod client;
pub mod meta;
pub mod restore;
pub mod xbstream;

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Engine, RestoreError, RestorePoint, RestoreReport, RestoreRequest, SourceKind};
use crate::error::{Exit, HasExit};
use crate::plan::{DbConnection, DbMode, Plan};
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
    #[error("snapshot {snapshot} of plan {plan} holds no physical backup (a logical-only plan's dumps restore with `mariadb < dump`)")]
    NotPhysical { snapshot: String, plan: String },
    #[error("a MariaDB restore goes into an empty or new data directory; --force is not accepted")]
    Force,
    #[error("{flags} (point-in-time restore of MariaDB plans, replaying archived binlogs) is not available in this build yet; restore a snapshot with --snapshot ID or latest")]
    PointInTimeNotYet { flags: &'static str },
    #[error("{program}: {detail}")]
    Program { program: String, detail: String },
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
            MariaError::Force | MariaError::PointInTimeNotYet { .. } => Exit::Usage,
            MariaError::NotPhysical { .. }
            | MariaError::Program { .. }
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
        let snapshot = match &req.point {
            None => "latest".to_string(),
            Some(RestorePoint::Snapshot(s)) if req.base.is_none() => s.clone(),
            Some(_) => {
                return Err(MariaError::PointInTimeNotYet {
                    flags: "--at, --position, --latest",
                }
                .into())
            }
        };
        let opts = restore::MariaRestoreOptions {
            snapshot,
            to: req.to.clone(),
            start: req.start,
            port: req.port,
            progress: req.progress,
        };
        let report = restore::restore(repo, &plan.name, &opts).await?;
        Ok(RestoreReport::Mariadb(Box::new(report)))
    }
}
