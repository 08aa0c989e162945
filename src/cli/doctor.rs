//! `holdfast doctor`

use super::render::{json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::ops::doctor::Status;

pub async fn run(plan: &PlanArg, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::doctor::doctor(&plan).await?;
    if json {
        print_json(&report)?;
    } else {
        for c in &report.checks {
            let mark = match c.status {
                Status::Pass => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            outln!("{mark} {}: {}", c.name, c.detail)?;
        }
        if let (Some(w), Some(p)) = (&report.writer_policy, &report.prune_policy) {
            outln!("\nLeast-privilege IAM policy for the backup writer (no delete except its own lock objects):")?;
            outln!(
                "{}",
                serde_json::to_string_pretty(w).expect("policy serialises")
            )?;
            outln!("\nIAM policy for prune (adds deleting object versions; locks still refuse early deletes):")?;
            outln!(
                "{}",
                serde_json::to_string_pretty(p).expect("policy serialises")
            )?;
        }
        outln!(
            "\n{}: repository {} of plan {} {}",
            if report.ok() { "PASS" } else { "FAIL" },
            report.repository,
            report.plan,
            if report.ok() {
                "is immutable: a locked object could be neither deleted nor have its lock shortened"
            } else {
                "is NOT proven immutable; see the FAIL lines above"
            }
        )?;
    }
    Ok(if report.ok() {
        Exit::Ok
    } else {
        Exit::NotImmutable
    })
}
