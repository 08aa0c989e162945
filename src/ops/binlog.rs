//! MariaDB binlog archiving as a use case: `holdfast binlog-archive` runs it
//! in the foreground, the daemon as a long-lived task per plan. Both go
//! through [`archive`]; what the archive holds is [`archived`].

use std::path::PathBuf;

use chrono::Utc;
use tokio::sync::watch;

use crate::engine::mariadb::archive::{self, Options, Status};
use crate::engine::mariadb::binlog;
use crate::error::{Context, Error};
use crate::plan::{Plan, Tier};

/// The archiver's folder for `plan` under a state dir.
pub fn state_dir_for(state: &std::path::Path, plan: &Plan) -> PathBuf {
    state.join("binlog").join(plan.name.to_string())
}

/// Runs the plan's binlog archiver until `stop` turns true. A plan that is
/// not MariaDB with `archive: true` is refused (exit 2) naming the plan.
pub async fn archive(
    plan: &Plan,
    state_dir: PathBuf,
    status: &watch::Sender<Status>,
    stop: watch::Receiver<bool>,
) -> Result<Status, Error> {
    archive::check_archiving(plan)?;
    let context = || format!("unable to archive binlogs of plan {}", plan.name);
    // Like a first backup, the first archived binlog creates the repository.
    let repo = super::open_or_init_repo(plan, Utc::now())
        .await
        .with_context(context)?;
    let opts = Options {
        state_dir,
        flush: archive::flush_interval(),
        retention: plan.lock_for(Tier::Monthly, Utc::now()),
    };
    archive::run(plan, &repo, &opts, status, stop).await
}

/// The plan's archived binlogs, each read back and scanned, and the holes
/// in their sequence.
pub async fn archived(plan: &Plan) -> Result<binlog::Archived, Error> {
    archive::check_archiving(plan)?;
    let repo = super::open_repo(plan).await?;
    Ok(binlog::archived(repo.store().as_ref(), repo.crypto(), &plan.name).await?)
}
