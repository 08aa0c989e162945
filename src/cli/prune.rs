//! `holdfast prune`

use super::render::{human_bytes, json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};

pub async fn run(plan: &PlanArg, dry_run: bool, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::prune::prune(&plan, dry_run).await?;
    if json {
        print_json(&report)?;
        return Ok(Exit::Ok);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for v in &report.removed {
        outln!(
            "{verb} snapshot {} of {} ({})",
            v.snapshot,
            v.started_at.format("%Y-%m-%d %H:%M:%SZ"),
            v.reason
        )?;
    }
    for v in &report.held_by_lock {
        outln!(
            "keep snapshot {} of {}: {}",
            v.snapshot,
            v.started_at.format("%Y-%m-%d %H:%M:%SZ"),
            v.reason
        )?;
    }
    for r in &report.refused {
        outln!("refused: {}: {}", r.object, r.detail)?;
    }
    outln!(
        "plan {}: {} snapshot(s) kept by policy, {} held by their lock, {} {verb}; {} pack(s), {} {verb}{}{}",
        report.plan,
        report.kept.len(),
        report.held_by_lock.len(),
        report.removed.len(),
        report.packs_removed,
        human_bytes(report.bytes_removed),
        if report.wal_files_removed > 0 {
            format!(
                "; {} WAL file(s) older than every remaining base backup, {} {verb}",
                report.wal_files_removed,
                human_bytes(report.wal_bytes_removed)
            )
        } else {
            String::new()
        },
        if report.refused.is_empty() {
            String::new()
        } else {
            format!("; {} delete(s) refused by a lock", report.refused.len())
        }
    )?;
    Ok(Exit::Ok)
}
