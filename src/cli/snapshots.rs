//! `holdfast snapshots`

use super::render::{human_bytes, json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::ops::snapshots::SnapshotRow;

pub async fn run(plan: &PlanArg, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::snapshots::snapshots(&plan).await?;
    // List what can be read; name what cannot, and fail at the end.
    for row in &report.rows {
        if let SnapshotRow::Unreadable { error, .. } = row {
            eprintln!("error: {error}");
        }
    }
    for r in &report.rejected {
        eprintln!("warning: ignoring {r} (not a snapshot holdfast wrote: run `holdfast verify`)");
    }
    if json {
        print_json(&report.rows)?;
    } else if report.rows.is_empty() {
        outln!(
            "plan {} has no snapshots in {}",
            plan.name,
            report.repository
        )?;
    } else {
        outln!(
            "{:<9} {:<20} {:<7} {:>7} {:>10} {:>10}  {:<8} LOCKED UNTIL",
            "ID",
            "TIME (UTC)",
            "SOURCE",
            "FILES",
            "SIZE",
            "NEW",
            "TIER"
        )?;
        for row in &report.rows {
            match row {
                SnapshotRow::Readable {
                    short_id,
                    time,
                    source,
                    files,
                    total_bytes,
                    new_bytes,
                    tier,
                    retain_until,
                    ..
                } => outln!(
                    "{:<9} {:<20} {:<7} {:>7} {:>10} {:>10}  {:<8} {}",
                    short_id,
                    time.format("%Y-%m-%d %H:%M:%S"),
                    source,
                    files,
                    human_bytes(*total_bytes),
                    human_bytes(*new_bytes),
                    tier.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    retain_until
                        .map(|t| t.format("%Y-%m-%d").to_string())
                        .unwrap_or_else(|| "-".into()),
                )?,
                SnapshotRow::Unreadable { short_id, time, .. } => outln!(
                    "{:<9} {:<20} {:<7} {:>7} {:>10} {:>10}  {:<8} UNREADABLE: run verify",
                    short_id,
                    time.format("%Y-%m-%d %H:%M:%S"),
                    "",
                    "",
                    human_bytes(0),
                    human_bytes(0),
                    "-",
                )?,
            }
        }
    }
    if let (Some(windows), false) = (&report.windows, json) {
        if windows.is_empty() {
            outln!("restorable window: none (no base backup has all of its WAL archived)")?;
        }
        for w in windows {
            let bases = w
                .base_backups
                .iter()
                .zip(&w.base_backups_at)
                .map(|(id, at)| format!("{id} (consistent at {})", at.to_rfc3339()))
                .collect::<Vec<_>>()
                .join(", ");
            outln!(
                "restorable window: {w}\n  through segment {}, from base backup(s) {bases}\n  newest archived transaction: {}",
                w.through_segment,
                match (w.newest_transaction, &w.times_unreadable) {
                    (Some(t), _) => t.to_rfc3339(),
                    (None, Some(_)) => "unknown".into(),
                    (None, None) => "none since the base backup began".into(),
                },
            )?;
        }
        for p in &report.pending {
            outln!("not yet restorable: {p}")?;
        }
    }
    Ok(if report.unreadable == 0 {
        Exit::Ok
    } else {
        Exit::Verify
    })
}
