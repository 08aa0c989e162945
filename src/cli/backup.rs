//! `holdfast backup`

use super::render::{human_bytes, json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::progress::ProgressMode;

pub async fn run(plan: &PlanArg, json: bool, progress: ProgressMode) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::backup::backup(&plan, progress).await?;
    if json {
        print_json(&report)?;
    } else {
        let s = &report.stats;
        outln!(
            "snapshot {} of plan {} saved to {}\n  {} files, {} read, {} new ({} stored), {:.1}s; locked until {}\n  restore with: holdfast restore --plan {} --snapshot {} --to PATH",
            report.snapshot.short(),
            report.plan,
            report.repository,
            s.files,
            human_bytes(s.total_bytes),
            human_bytes(s.new_bytes),
            human_bytes(s.stored_bytes),
            report.duration_seconds,
            report
                .retain_until
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "never".into()),
            plan.file.display(),
            report.snapshot.short(),
        )?;
    }
    Ok(Exit::Ok)
}
