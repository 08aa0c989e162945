//! PostgreSQL's `archive_command` and `restore_command`: archive one WAL
//! file into the plan's repository, and fetch one back for recovery.

use std::path::Path;

use chrono::Utc;

use crate::engine::postgres::wal::{self, WalError};
use crate::error::{Context, Error, Exit};
use crate::plan::{Plan, SourceSpec, Tier};
use crate::repository::log_archive::{LogError, PushReport};

/// WAL commands need a physical PostgreSQL plan that archives.
pub fn check_archiving(plan: &Plan) -> Result<(), Error> {
    match &plan.source {
        SourceSpec::Postgres { archive: true, .. } => Ok(()),
        other => Err(Error::new(
            Exit::Plan,
            anyhow::anyhow!(
                "{}: plan {} does not archive WAL: wal-push and wal-fetch need `source: {{type: postgres, mode: physical}}` with `archive: true` (the default); this plan's source is {}",
                plan.file.display(),
                plan.name,
                other.kind()
            ),
        )),
    }
}

/// What every failure of `archive_command` starts with (runbook section 9
/// tells on-call to look for `unable to archive` in the server log).
pub fn unable_to_archive(plan: &Plan, path: &Path) -> String {
    format!(
        "unable to archive {} for plan {}; PostgreSQL keeps it and retries",
        path.display(),
        plan.name
    )
}

/// Archives the WAL file at `path`. Each file stays locked as long as the
/// longest-kept base backup may need it.
pub async fn push(plan: &Plan, path: &Path) -> Result<PushReport, Error> {
    let context = || unable_to_archive(plan, path);
    check_archiving(plan).with_context(context)?;
    // Like a first backup, the first archived segment creates the repository.
    let repo = super::open_or_init_repo(plan, Utc::now())
        .await
        .with_context(context)?;
    wal::push(
        repo.store().as_ref(),
        repo.crypto(),
        &plan.name,
        path,
        plan.lock_for(Tier::Monthly, Utc::now()),
    )
    .await
    .with_context(context)
}

/// How a fetch ended, for PostgreSQL: found, or not in the archive (exit 1,
/// recovery ends there; also when only foreign objects are at its names, so
/// a planted `N.history` does not stop the timeline search); anything else
/// is an error that must stop recovery.
pub enum Fetched {
    /// `object` is the archive object read: the file's own name or an
    /// alternative.
    Restored {
        bytes: u64,
        object: String,
    },
    NotFound(WalError),
}

/// Restores archived file `name` to `dest`.
///
/// A name at which only corrupt or foreign objects lie is "not in the
/// archive" for a timeline history (PostgreSQL asks for `N.history` files to
/// choose its timeline: a planted one must not stop it), and for anything
/// when `checked` (a `holdfast restore` that already verified every segment
/// its target needs, so PostgreSQL asks past them only at the archive's
/// end, where a planted future segment must not stop it). Otherwise, a
/// segment PostgreSQL needs is damaged: recovery stops rather than ending
/// early at the wrong point.
pub async fn fetch(plan: &Plan, name: &str, dest: &Path, checked: bool) -> Result<Fetched, Error> {
    check_archiving(plan)?;
    let repo = super::open_repo(plan).await?;
    let absent_if_foreign = checked || name.ends_with(".history");
    match wal::fetch(repo.store().as_ref(), repo.crypto(), &plan.name, name, dest).await {
        Ok((bytes, object)) => Ok(Fetched::Restored { bytes, object }),
        Err(e @ WalError::Log(LogError::NotFound { .. })) => Ok(Fetched::NotFound(e)),
        Err(e @ WalError::Log(LogError::OnlyForeign { .. })) if absent_if_foreign => {
            Ok(Fetched::NotFound(e))
        }
        Err(e) => Err(Error::from(e).context(format!(
            "unable to restore {name} for plan {}; stopping recovery rather than ending it early",
            plan.name
        ))),
    }
}

/// `wal-fetch --spool`: a segment `holdfast restore` already fetched and
/// checked is moved into place instead of fetched again. `Ok(false)` when
/// the spool does not have it.
pub async fn fetch_spooled(spool: &Path, name: &str, dest: &Path) -> Result<bool, Error> {
    wal::check_name(name)?;
    let spooled = spool.join(name);
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if !spooled.exists() {
            return Ok(false);
        }
        std::fs::rename(&spooled, &dest)
            .or_else(|_| std::fs::copy(&spooled, &dest).map(|_| ()))
            .map(|_| true)
            .map_err(|e| {
                Error::new(
                    Exit::Failure,
                    anyhow::Error::new(e).context(format!(
                        "unable to move {} to {}",
                        spooled.display(),
                        dest.display()
                    )),
                )
            })
    })
    .await
    .expect("spool move panicked")
}
