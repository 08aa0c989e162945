//! `holdfast keep-locks`

use super::render::{json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::ops::locks::{keep_locks, KeepLocksOptions};

pub async fn run(plan: &PlanArg, dry_run: bool, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let opts = KeepLocksOptions::new(crate::clock::now(), dry_run);
    let report = keep_locks(&plan, &opts).await?;
    if json {
        print_json(&report)?;
        return Ok(Exit::Ok);
    }
    let verb = if dry_run { "would extend" } else { "extended" };
    for s in &report.snapshots {
        outln!(
            "snapshot {} of {} ({}): locked until {}, target {}",
            s.snapshot,
            s.started_at.format("%Y-%m-%d %H:%M:%SZ"),
            s.kept_by,
            s.locked_until
                .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
                .unwrap_or_else(|| "never".into()),
            s.target.format("%Y-%m-%d %H:%M:%SZ"),
        )?;
    }
    let coverage = match (&report.lock_coverage_seconds, &report.weakest) {
        (Some(secs), Some((key, until))) => {
            let span =
                humantime::format_duration(std::time::Duration::from_secs(secs.unsigned_abs()));
            let until = until.format("%Y-%m-%d %H:%M:%SZ");
            if *secs > 0 {
                format!("; lock coverage {span} (until {until}, {key})")
            } else {
                format!("; NO lock coverage: the lock of {key} ended {span} ago ({until})")
            }
        }
        _ => "; nothing locked to keep".into(),
    };
    outln!(
        "plan {}: {} snapshot(s) kept, {} object(s) they need, {verb} {} lock(s) ({} archived log file(s)), {} already long enough{coverage}",
        report.plan,
        report.snapshots_kept,
        report.objects_checked,
        report.objects_extended,
        report.log_files_extended,
        report.objects_current,
    )?;
    Ok(Exit::Ok)
}
