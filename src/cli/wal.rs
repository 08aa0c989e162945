//! `holdfast wal-push` and `holdfast wal-fetch`: PostgreSQL's
//! `archive_command` and `restore_command`. For wal-fetch every failure but
//! "not in the archive" exits 126, so PostgreSQL stops recovery instead of
//! ending it early.

use std::path::Path;

use super::render::json as print_json;
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::ops::wal::Fetched;
use crate::plan::Plan;

/// The plan `archive_command` names. Runbook section 9 tells on-call to
/// look for `unable to archive` in the server log: every failure, the
/// plan's own included, starts with it.
fn load_for_push(plan: &PlanArg, path: &Path) -> Result<Plan, Error> {
    plan.load().map_err(|e| {
        e.context(format!(
            "unable to archive {}; PostgreSQL keeps it and retries",
            path.display()
        ))
    })
}

pub async fn push(plan: &PlanArg, path: &Path, json: bool) -> Result<Exit, Error> {
    let plan = load_for_push(plan, path)?;
    let report = crate::ops::wal::push(&plan, path).await?;
    if json {
        print_json(&report)?;
    }
    tracing::info!(plan = %plan.name, object = %report.key, bytes = report.bytes, stored_bytes = report.stored_bytes, already_archived = report.already_archived, "WAL archived");
    Ok(Exit::Ok)
}

/// `wal-push --async`: the same failures, the same first words.
pub async fn push_async(
    plan: &PlanArg,
    path: &Path,
    opts: &crate::ops::wal_async::AsyncOptions,
    json: bool,
) -> Result<Exit, Error> {
    let plan = load_for_push(plan, path)?;
    let report = crate::ops::wal_async::push_async(&plan, path, opts).await?;
    if json {
        print_json(&report)?;
    }
    tracing::debug!(plan = %plan.name, object = %report.object, bytes = report.bytes, pushed_by = ?report.pushed_by, waited_seconds = report.waited_seconds, "WAL archived");
    Ok(Exit::Ok)
}

/// `wal-push-ahead`, the pusher `wal-push --async` starts.
pub async fn push_ahead(
    plan: &PlanArg,
    wal_dir: &Path,
    opts: &crate::ops::wal_async::AsyncOptions,
) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::wal_async::push_ahead(&plan, wal_dir, opts).await?;
    if report.ran {
        tracing::info!(plan = %plan.name, pushed = report.pushed, bytes = report.bytes, failed = report.failed, "pusher done: nothing has waited for 2 s");
    }
    Ok(Exit::Ok)
}

pub async fn fetch(
    plan: &PlanArg,
    spool: Option<&Path>,
    name: &str,
    dest: &Path,
) -> Result<Exit, Error> {
    let fatal = |e: Error| Error {
        exit: Exit::WalFetchFatal,
        error: e.error,
    };
    // Debug builds only: lets the tests prove a panic stops recovery.
    #[cfg(debug_assertions)]
    if std::env::var_os("HOLDFAST_FAULT").is_some_and(|v| v == "panic-in-wal-fetch") {
        tokio::task::spawn_blocking(|| panic!("fault injected by HOLDFAST_FAULT"))
            .await
            .expect("the injected panic propagates");
    }
    if let Some(spool) = spool {
        if crate::ops::wal::fetch_spooled(spool, name, dest)
            .await
            .map_err(fatal)?
        {
            tracing::info!(file = %name, "WAL restored from the restore's spool");
            return Ok(Exit::Ok);
        }
    }
    let plan = Plan::load(&plan.plan).map_err(|e| fatal(e.into()))?;
    match crate::ops::wal::fetch(&plan, name, dest, spool.is_some())
        .await
        .map_err(fatal)?
    {
        Fetched::Restored { bytes, object } => {
            tracing::info!(plan = %plan.name, file = %name, object = %object, bytes, "WAL restored");
            Ok(Exit::Ok)
        }
        Fetched::NotFound(e) => Err(Error::new(Exit::Failure, e)),
    }
}
