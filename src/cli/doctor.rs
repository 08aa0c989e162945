//! `holdfast doctor`

use super::render::{json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::ops::doctor::{Status, Verdict};

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
                Status::Unknown => "UNKNOWN",
                Status::Fail => "FAIL",
            };
            outln!("{mark} {}: {}", c.name, c.detail)?;
            if let Some(e) = &c.error {
                outln!("     error: {e}")?;
            }
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
            match report.verdict {
                Verdict::Pass => "PASS",
                Verdict::Unknown => "UNKNOWN",
                Verdict::Fail => "FAIL",
            },
            report.repository,
            report.plan,
            match report.verdict {
                Verdict::Pass => "is immutable: a locked object could be neither deleted nor have its lock shortened (refused with the lock's own error, read back unchanged)",
                Verdict::Unknown => "could NOT be proven immutable: an attempt failed with an error that says nothing about the lock; see the UNKNOWN lines and their errors",
                Verdict::Fail => "is NOT proven immutable; see the FAIL lines above",
            }
        )?;
    }
    Ok(match report.verdict {
        Verdict::Pass => Exit::Ok,
        Verdict::Unknown => Exit::ImmutabilityUnknown,
        Verdict::Fail => Exit::NotImmutable,
    })
}
