//! `holdfast verify`

use super::render::{human_bytes, json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::progress::ProgressMode;

pub async fn run(
    plan: &PlanArg,
    snapshot: Option<&str>,
    json: bool,
    progress: ProgressMode,
) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::verify::verify(&plan, snapshot, progress).await?;
    if json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            outln!(
                "{:?}: {}: {} (breaks snapshot{} {})",
                p.kind,
                p.object,
                p.detail,
                if p.snapshots.len() == 1 { "" } else { "s" },
                p.snapshots.join(", ")
            )?;
        }
        outln!(
            "verified {} snapshot(s) of plan {}: {} packs, {} chunks, {}{} read; {}",
            report.snapshots_checked,
            report.plan,
            report.packs_checked,
            report.chunks_checked,
            if report.wal_files_checked > 0 {
                format!("{} archived WAL files, ", report.wal_files_checked)
            } else {
                String::new()
            },
            human_bytes(report.bytes_read),
            if report.ok() {
                "no problems".to_string()
            } else {
                format!("{} problem(s)", report.problems.len())
            }
        )?;
    }
    Ok(if report.ok() { Exit::Ok } else { Exit::Verify })
}
