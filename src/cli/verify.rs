//! `holdfast verify`

use std::path::PathBuf;

use super::render::{human_bytes, json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::ops::verify::VerifyRequest;
use crate::plan::{VerifyDepth, VerifySample};
use crate::progress::ProgressMode;

pub struct VerifyArgs<'a> {
    pub snapshot: Option<&'a str>,
    /// `--sample`, overriding the plan's `verify.sample`.
    pub sample: Option<VerifySample>,
    /// `--depth`, overriding the plan's `verify.depth`.
    pub depth: Option<VerifyDepth>,
    pub state: Option<PathBuf>,
    pub json: bool,
}

/// `--depth`'s parser: clap prints the message and exits 2.
pub fn parse_depth(text: &str) -> Result<VerifyDepth, String> {
    VerifyDepth::parse(text)
}

/// `--sample`'s parser: clap prints the message and exits 2.
pub fn parse_sample(text: &str) -> Result<VerifySample, String> {
    VerifySample::parse(text)
}

pub async fn run(
    plan: &PlanArg,
    args: VerifyArgs<'_>,
    progress: ProgressMode,
) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let sample = args.sample.unwrap_or(plan.verify_sample);
    // Only a sampled verify keeps anything: where its rotation stopped.
    let state_dir = match (sample, args.state) {
        (VerifySample::All, _) => None,
        (_, Some(dir)) => Some(dir),
        (_, None) => match super::daemon::default_state_dir() {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!("{e}; the sample starts at a random pack and its end is not kept");
                None
            }
        },
    };
    let req = VerifyRequest {
        snapshot: args.snapshot,
        sample,
        depth: args.depth.unwrap_or(plan.verify_depth),
        state_dir: state_dir.as_deref(),
        progress,
    };
    let report = crate::ops::verify::verify(&plan, &req).await?;
    if args.json {
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
        let packs = match &report.sample {
            None => format!("{} packs", report.packs_checked),
            Some(s) => format!(
                "a {} sample: {} of {} packs read (the others' presence checked)",
                s.percent, s.packs_read, s.packs_total
            ),
        };
        outln!(
            "verified {} snapshot(s) of plan {}: {packs}, {} chunks{}, {}{} read; {}",
            report.snapshots_checked,
            report.plan,
            report.chunks_checked,
            match report.depth {
                VerifyDepth::Chunks => "",
                VerifyDepth::Stored => " placed (stored bytes checked, chunks not decoded)",
            },
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
