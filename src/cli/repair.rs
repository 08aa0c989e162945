//! `holdfast repair index`

use super::render::{human_bytes, json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::progress::ProgressMode;

pub async fn index(
    plan: &PlanArg,
    dry_run: bool,
    json: bool,
    progress: ProgressMode,
) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::repair::repair_index(&plan, dry_run, progress).await?;
    if json {
        print_json(&report)?;
    } else {
        for u in &report.unreadable {
            outln!("not indexed: {}: {}", u.object, u.detail)?;
        }
        let verb = if dry_run { "would write" } else { "wrote" };
        for k in &report.index_objects {
            outln!("{verb} {k}")?;
        }
        outln!(
            "repository {}: {} of {} pack(s) indexed ({} read), {} chunk(s){}; {} index object(s) {verb}{}{}",
            report.repository,
            report.packs_indexed,
            report.packs_listed,
            human_bytes(report.bytes_read),
            report.chunks_indexed,
            if report.chunks_skipped > 0 {
                format!(", {} blob(s) failing their check left out", report.chunks_skipped)
            } else {
                String::new()
            },
            report.index_objects.len(),
            if report.index_objects_existing > 0 {
                format!(" ({} already present)", report.index_objects_existing)
            } else {
                String::new()
            },
            if report.unreadable.is_empty() {
                String::new()
            } else {
                format!("; {} pack(s) could not be indexed", report.unreadable.len())
            }
        )?;
    }
    // Packs that could not be read are damage `verify` must be run for.
    Ok(if report.unreadable.is_empty() {
        Exit::Ok
    } else {
        Exit::Verify
    })
}
