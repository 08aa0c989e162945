//! Take one snapshot of a plan's source now: the plan's engine gives the
//! source, the plan's history gives the retention tier, and the tier gives
//! the lock.

use crate::engine::engine_for;
use crate::error::{Context, Error};
use crate::plan::Plan;
use crate::progress::ProgressMode;
use crate::repository::backup::{backup as write_snapshot, BackupOptions, BackupReport};

pub async fn backup(plan: &Plan, progress: ProgressMode) -> Result<BackupReport, Error> {
    let engine = engine_for(plan)?;
    let source = engine.open_source()?;
    let store = super::open_store(plan).await?;
    let now = crate::clock::now();
    let repo = super::open_or_init_repo_in(plan, store, now)
        .await
        .with_context(|| format!("unable to open the repository of plan {}", plan.name))?;
    // Believed snapshots only: keys forged at the start of each coming day,
    // week or month must not make this backup the second of its period
    // (and so give it the short `last` lock). Rejected ones are logged by
    // the backup itself, which lists them again.
    let earlier: Vec<_> = repo
        .snapshots(&plan.name)
        .await
        .with_context(|| format!("unable to list the snapshots of plan {}", plan.name))?
        .accepted
        .iter()
        .map(|s| s.snap.started_at)
        .collect();
    let tier = plan.tier_of(now, &earlier);
    let opts = BackupOptions {
        compression_level: plan.compression.level,
        retention: plan.lock_for(tier, now),
        tier,
        progress,
    };
    write_snapshot(&repo, &plan.name, source, &opts)
        .await
        .with_context(|| {
            format!(
                "backup of plan {} failed; no snapshot was recorded",
                plan.name
            )
        })
}
