//! Which alert conditions hold for a plan, from what the scheduler knows:
//! a pure function, so every rule is unit-tested without a clock or a
//! network. [`crate::alert::Alerter`] then decides what to send (first
//! time, repeat, resolved).
//!
//! | condition | fires while |
//! |---|---|
//! | `backup_failed` | the plan's last backup job failed |
//! | `verify_failed` | the last verify found a problem or could not run |
//! | `drill_failed` | the last drill failed (a check, `max_duration`, a restore error) |
//! | `rpo_exceeded` | the plan sets `rpo_limit` and now minus the newest restorable point is over it |
//! | `archive_stalled` | a WAL segment waits and the archiver made no progress for `--archive-stall` |
//! | `lock_coverage_short` | the earliest lock end among kept snapshots is under [`LOCK_COVERAGE_MIN`] away |

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::archive::ArchiveState;
use super::schedule::JobKind;
use super::state::JobRecord;
use crate::alert::{AlertKind, Condition};

/// Lock coverage under this alerts, as the shipped Prometheus rule does.
pub const LOCK_COVERAGE_MIN: Duration = Duration::from_secs(6 * 3600);

/// What the conditions are judged on.
pub struct Inputs<'a> {
    pub plan: &'a str,
    pub rpo_limit: Option<Duration>,
    pub last: BTreeMap<JobKind, &'a JobRecord>,
    pub newest_point: Option<DateTime<Utc>>,
    pub archive: Option<&'a ArchiveState>,
    /// MariaDB plans that archive binlogs: the files known missing.
    pub binlog_gap: Option<&'a [String]>,
    pub locked_until: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

fn secs(d: chrono::Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.num_seconds().max(0) as u64)).to_string()
}

/// Every condition's state for one plan (firing or not), in
/// [`AlertKind::ALL`] order.
pub fn conditions(i: &Inputs) -> Vec<Condition> {
    let plan = i.plan;
    let mut out = Vec::new();
    let mut push = |kind: AlertKind, firing: bool, summary: String, details: String| {
        out.push(Condition {
            plan: plan.to_string(),
            kind,
            firing,
            summary,
            details,
        })
    };
    for kind in AlertKind::ALL {
        match kind {
            AlertKind::BackupFailed | AlertKind::VerifyFailed | AlertKind::DrillFailed => {
                let job = match kind {
                    AlertKind::BackupFailed => JobKind::Backup,
                    AlertKind::VerifyFailed => JobKind::Verify,
                    _ => JobKind::Drill,
                };
                let rec = i.last.get(&job);
                let failed = rec.is_some_and(|r| !r.ok);
                let (summary, details) = match rec {
                    Some(r) if !r.ok => (
                        format!("{job} of plan {plan} failed"),
                        format!(
                            "{} (started {}, {} attempt(s))",
                            r.error.as_deref().unwrap_or("no error recorded"),
                            r.started_at,
                            r.attempts
                        ),
                    ),
                    Some(r) => (
                        format!("{job} of plan {plan} succeeded again"),
                        format!("the {job} started {} succeeded", r.started_at),
                    ),
                    None => (format!("{job} of plan {plan}"), String::new()),
                };
                push(kind, failed, summary, details);
            }
            AlertKind::RpoExceeded => {
                let (firing, summary, details) = match (i.rpo_limit, i.newest_point) {
                    (Some(limit), Some(newest)) => {
                        let rpo = i.now - newest;
                        let over = rpo.to_std().unwrap_or_default() > limit;
                        (
                            over,
                            if over {
                                format!(
                                    "plan {plan}: a restore now would lose {} of data, over its rpo_limit of {}",
                                    secs(rpo),
                                    humantime::format_duration(limit)
                                )
                            } else {
                                format!("plan {plan}: RPO back within its rpo_limit")
                            },
                            format!(
                                "the newest restorable point is {newest} ({} ago); rpo_limit {}",
                                secs(rpo),
                                humantime::format_duration(limit)
                            ),
                        )
                    }
                    _ => (false, format!("plan {plan}: RPO"), String::new()),
                };
                push(kind, firing, summary, details);
            }
            AlertKind::ArchiveStalled => {
                let a = i.archive.filter(|a| a.stalled);
                push(
                    kind,
                    a.is_some(),
                    match a {
                        Some(_) => format!("plan {plan}: WAL archiving has stalled"),
                        None => format!("plan {plan}: WAL archiving is making progress"),
                    },
                    a.and_then(|a| a.stalled_because.clone())
                        .unwrap_or_default(),
                );
            }
            AlertKind::BinlogGap => {
                let gap = i.binlog_gap.filter(|g| !g.is_empty());
                push(
                    kind,
                    gap.is_some(),
                    match gap {
                        Some(_) => format!("plan {plan}: binlogs are missing from the archive"),
                        None => format!("plan {plan}: no binlog is missing from the archive"),
                    },
                    gap.map(|g| format!(
                        "{} never archived (purged on the server first, or missing from the repository): point-in-time restores cannot cross the gap; take a new backup",
                        g.join(", ")
                    ))
                    .unwrap_or_default(),
                );
            }
            AlertKind::LockCoverageShort => {
                let (firing, summary, details) = match i.locked_until {
                    Some(until) => {
                        let left = until - i.now;
                        let short = left.to_std().unwrap_or_default() < LOCK_COVERAGE_MIN;
                        (
                            short,
                            if short {
                                format!(
                                    "plan {plan}: kept snapshots become deletable in {} (locks end {until})",
                                    secs(left)
                                )
                            } else {
                                format!("plan {plan}: kept snapshots are locked long enough again")
                            },
                            format!(
                                "the earliest lock among the snapshots retention keeps ends {until}; the lock keeper (schedule.keep_locks) lengthens them: is it failing?"
                            ),
                        )
                    }
                    None => (false, format!("plan {plan}: lock coverage"), String::new()),
                };
                push(kind, firing, summary, details);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn record(ok: bool) -> JobRecord {
        JobRecord {
            started_at: at("2026-12-03T10:00:00Z"),
            finished_at: at("2026-12-03T10:00:05Z"),
            ok,
            error: (!ok).then(|| "repository unreachable: connection refused".into()),
            attempts: 5,
        }
    }

    fn firing(cs: &[Condition]) -> Vec<AlertKind> {
        cs.iter().filter(|c| c.firing).map(|c| c.kind).collect()
    }

    fn inputs<'a>(last: BTreeMap<JobKind, &'a JobRecord>) -> Inputs<'a> {
        Inputs {
            plan: "app",
            rpo_limit: None,
            last,
            newest_point: None,
            archive: None,
            binlog_gap: None,
            locked_until: None,
            now: at("2026-12-03T12:00:00Z"),
        }
    }

    #[test]
    fn a_failed_job_fires_its_condition_with_the_error_and_a_later_success_clears_it() {
        let bad = record(false);
        let good = record(true);
        let cs = conditions(&inputs(BTreeMap::from([
            (JobKind::Backup, &bad),
            (JobKind::Verify, &good),
            (JobKind::Drill, &bad),
        ])));
        assert_eq!(
            firing(&cs),
            [AlertKind::BackupFailed, AlertKind::DrillFailed]
        );
        let backup = cs
            .iter()
            .find(|c| c.kind == AlertKind::BackupFailed)
            .unwrap();
        assert_eq!(backup.summary, "backup of plan app failed");
        assert!(
            backup.details.contains("connection refused") && backup.details.contains("5 attempt")
        );
        let cs = conditions(&inputs(BTreeMap::from([(JobKind::Backup, &good)])));
        assert!(firing(&cs).is_empty());
        assert_eq!(
            cs.len(),
            AlertKind::ALL.len(),
            "every condition is reported, firing or not"
        );
    }

    #[test]
    fn rpo_fires_only_over_the_plans_limit() {
        let mut i = inputs(BTreeMap::new());
        i.newest_point = Some(at("2026-12-03T11:40:00Z"));
        assert!(
            firing(&conditions(&i)).is_empty(),
            "no rpo_limit: never fires"
        );
        i.rpo_limit = Some(Duration::from_secs(30 * 60));
        assert!(firing(&conditions(&i)).is_empty(), "20m is within 30m");
        i.rpo_limit = Some(Duration::from_secs(15 * 60));
        let cs = conditions(&i);
        assert_eq!(firing(&cs), [AlertKind::RpoExceeded]);
        let c = cs.iter().find(|c| c.firing).unwrap();
        assert!(
            c.summary.contains("20m") && c.summary.contains("15m"),
            "{}",
            c.summary
        );
    }

    #[test]
    fn lock_coverage_under_six_hours_fires() {
        let mut i = inputs(BTreeMap::new());
        i.locked_until = Some(at("2026-12-10T12:00:00Z"));
        assert!(firing(&conditions(&i)).is_empty());
        i.locked_until = Some(at("2026-12-03T17:00:00Z"));
        let cs = conditions(&i);
        assert_eq!(firing(&cs), [AlertKind::LockCoverageShort]);
        assert!(cs.iter().any(|c| c.firing && c.summary.contains("5h")));
    }

    #[test]
    fn a_stalled_archive_fires_with_the_watchs_explanation() {
        let mut a = ArchiveState::default();
        a.stalled = true;
        a.stalled_because = Some("PostgreSQL has not archived WAL segment X".into());
        let mut i = inputs(BTreeMap::new());
        i.archive = Some(&a);
        let cs = conditions(&i);
        assert_eq!(firing(&cs), [AlertKind::ArchiveStalled]);
        assert!(cs.iter().any(|c| c.details.contains("WAL segment X")));
        a.stalled = false;
        let mut i = inputs(BTreeMap::new());
        i.archive = Some(&a);
        assert!(firing(&conditions(&i)).is_empty());
    }
}
