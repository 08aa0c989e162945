//! Read every object of a plan's snapshots back and recompute every
//! checksum; for engines with a log archive, every archived log file too.

use crate::engine::engine_for;
use crate::error::Error;
use crate::plan::Plan;
use crate::progress::ProgressMode;
use crate::repository::verify::{verify as verify_repo, VerifyReport};

pub async fn verify(
    plan: &Plan,
    snapshot: Option<&str>,
    progress: ProgressMode,
) -> Result<VerifyReport, Error> {
    // A plan whose engine this build lacks has no archive to read, but its
    // snapshots still verify.
    let logs = engine_for(plan)
        .ok()
        .and_then(|e| e.log_retention(plan))
        .map(|l| l.prefix());
    let repo = super::open_repo(plan).await?;
    Ok(verify_repo(&repo, &plan.name, snapshot, logs.as_deref(), progress).await?)
}
