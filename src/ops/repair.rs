//! `holdfast repair index`: write new index objects from the packs' own
//! trailers (see `crate::repository::repair`).

use crate::error::{Context, Error};
use crate::plan::{Plan, Tier};
use crate::progress::ProgressMode;
use crate::repository::repair::{repair_index as rebuild, RepairOptions, RepairReport};

pub async fn repair_index(
    plan: &Plan,
    dry_run: bool,
    progress: ProgressMode,
) -> Result<RepairReport, Error> {
    let repo = super::open_repo(plan).await?;
    let opts = RepairOptions {
        dry_run,
        // As long as anything the plan keeps: a snapshot may need these.
        retention: plan.lock_for(Tier::Monthly, crate::clock::now()),
        progress,
    };
    rebuild(&repo, &opts)
        .await
        .with_context(|| format!("unable to repair the index of {}", repo.url()))
}
