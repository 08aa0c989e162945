//! Use cases: what `holdfast backup`, `restore`, `snapshots`, `verify`,
//! `prune`, `repair index`, `wal-push`/`wal-fetch`, `repo init` and `doctor` do, as library
//! calls the CLI and the daemon share. Nothing here prints: each call takes a
//! validated plan and returns a report (or an [`Error`] with its exit class)
//! for the caller to render.

pub mod backup;
pub mod doctor;
pub mod drill;
pub mod locks;
pub mod plan_check;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod snapshots;
pub mod verify;
pub mod wal;

use std::sync::Arc;

use crate::error::Error;
use crate::plan::Plan;
use crate::repository::Repository;
use crate::store::{self, Store};

/// The store a plan names.
pub async fn open_store(plan: &Plan) -> Result<Arc<dyn Store>, Error> {
    Ok(store::open(&plan.repository).await?.into())
}

/// The plan's existing repository.
pub async fn open_repo(plan: &Plan) -> Result<Repository, Error> {
    let store = open_store(plan).await?;
    Ok(Repository::open(store).await?)
}
