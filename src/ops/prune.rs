//! Apply a plan's retention policy now.

use crate::engine::engine_for;
use crate::error::{Error, Exit};
use crate::plan::{Plan, Tier};
use crate::repository::prune::{prune as prune_repo, PruneOptions, PruneReport};
use crate::repository::RepoError;
use crate::store::StoreError;

pub async fn prune(plan: &Plan, dry_run: bool) -> Result<PruneReport, Error> {
    let logs = engine_for(plan).ok().and_then(|e| e.log_retention(plan));
    let repo = super::open_repo(plan).await?;
    let now = crate::clock::now();
    let opts = PruneOptions {
        logs: logs.as_deref(),
        retention: plan.retention,
        timezone: plan.schedule.timezone(),
        dry_run,
        record_lock: plan.lock_for(Tier::Monthly, now),
        now,
    };
    prune_repo(&repo, &plan.name, &opts)
        .await
        .map_err(|e| match e {
            RepoError::Store(s @ StoreError::Busy { .. }) => Error::new(
                Exit::Busy,
                anyhow::Error::new(s).context(format!("a backup of plan {} is running", plan.name)),
            ),
            e => e.into(),
        })
}
