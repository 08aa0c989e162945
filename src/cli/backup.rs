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
            "snapshot {} of plan {} saved to {}\n  {} files, {} read, {} new ({} stored), {:.1}s; locked until {}\n  restore with: holdfast restore --plan {} {}",
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
            restore_args(&plan.source, &report.snapshot.short()),
        )?;
    }
    Ok(Exit::Ok)
}

/// The restore command line that gets back what this backup protects: for a
/// PostgreSQL plan that archives WAL, the newest state (`--snapshot` alone
/// would stop at the end of this base backup).
fn restore_args(source: &crate::plan::SourceSpec, short: &str) -> String {
    match source {
        crate::plan::SourceSpec::Postgres {
            mode: crate::plan::DbMode::Physical,
            archive: true,
            ..
        } => {
            "--latest --to DATADIR (or --at TIME; --snapshot ".to_string()
                + short
                + " alone stops at the end of this base backup)"
        }
        _ => format!("--snapshot {short} --to PATH"),
    }
}
