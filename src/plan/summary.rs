//! What `plan check` shows for a plan: the one-line [`Plan::summary`], the
//! [`PlanSummary`] behind `--json`, and [`Plan::warnings`] about things this
//! machine lacks.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::cron::Schedule;
use super::model::{
    CompressionSpec, DrillPoint, LockSetting, LockSpec, Password, Plan, RetentionSpec, SourceSpec,
    VerifyDepth, VerifySample,
};

/// What `holdfast plan check --json` prints for one plan. Secrets are `***`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub name: String,
    pub file: PathBuf,
    pub source: SourceSpec,
    pub repository: String,
    pub schedule: ScheduleSummary,
    pub lock: LockSpec,
    /// Days the retention policy needs the lock to cover, and the rule needing most.
    pub lock_needed_days: u32,
    pub lock_needed_by: String,
    pub retention: RetentionSpec,
    pub compression: CompressionSpec,
    pub drill: Option<DrillSummary>,
    pub verify: VerifySummary,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifySummary {
    /// `all`, or the share of packs each verify reads (`10%`).
    pub sample: VerifySample,
    /// `chunks` or `stored`: how far each pack read is checked.
    pub depth: VerifyDepth,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleSummary {
    pub expression: String,
    pub timezone: String,
    pub next: Vec<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillSummary {
    pub schedule: ScheduleSummary,
    pub max_duration: String,
    /// `latest`, `rewind` or `random` (`drill.target`).
    pub target: &'static str,
    pub rewind: Option<String>,
    pub checks: Vec<String>,
}

impl ScheduleSummary {
    fn new(schedule: &Schedule, now: DateTime<Utc>, n: usize) -> ScheduleSummary {
        ScheduleSummary {
            expression: schedule.expression().to_string(),
            timezone: schedule.timezone().name().to_string(),
            next: schedule.next_runs(now, n),
        }
    }
}

impl Plan {
    /// One line for `plan check`, e.g.
    /// `quickstart: sqlite /abs/app.db -> file:///abs/repo, backup "0 * * * *" UTC, next 2026-11-26T05:00:00Z, 06:00:00Z, 07:00:00Z; lock compliance 14d; keep last 24, daily 7`.
    pub fn summary(&self, now: DateTime<Utc>) -> String {
        let mut line = format!(
            "{}: {} -> {}, backup \"{}\" {}, next {}; lock {} {}; {}",
            self.name,
            self.source,
            self.repository.url(),
            self.schedule.expression(),
            self.schedule.timezone().name(),
            format_runs(&self.schedule.next_runs(now, 3)),
            self.lock.mode,
            match self.lock.duration {
                Some(d) => humantime::format_duration(d.0).to_string(),
                None => format!("{}d", self.lock.days),
            },
            self.retention,
        );
        if self.lock.mode == LockSetting::None {
            line = line.replace(&format!("lock none {}d", self.lock.days), "lock NONE");
        }
        if let VerifySample::Share(p) = self.verify_sample {
            line.push_str(&format!("; verify reads {p} of packs"));
        }
        if self.verify_depth == VerifyDepth::Stored {
            line.push_str("; verify checks stored bytes only");
        }
        if let Some(drill) = &self.drill {
            line.push_str(&format!(
                "; drill \"{}\", next {}",
                drill.schedule.expression(),
                format_runs(&drill.schedule.next_runs(now, 1))
            ));
        }
        line
    }

    /// [`PlanSummary`] as JSON, for `--json`.
    pub fn summary_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        let (lock_needed_days, lock_needed_by) = self.lock_needed_days();
        let summary = PlanSummary {
            name: self.name.to_string(),
            file: self.file.clone(),
            source: self.source.clone(),
            repository: self.repository.url(),
            schedule: ScheduleSummary::new(&self.schedule, now, 3),
            lock: self.lock,
            lock_needed_days,
            lock_needed_by,
            retention: self.retention,
            compression: self.compression,
            drill: self.drill.as_ref().map(|d| DrillSummary {
                schedule: ScheduleSummary::new(&d.schedule, now, 1),
                max_duration: humantime::format_duration(d.max_duration).to_string(),
                target: d.target.name(),
                rewind: match d.target {
                    DrillPoint::Rewind(r) => Some(humantime::format_duration(r).to_string()),
                    _ => None,
                },
                checks: d.checks.iter().map(|c| c.name.clone()).collect(),
            }),
            verify: VerifySummary {
                sample: self.verify_sample,
                depth: self.verify_depth,
            },
            summary: self.summary(now),
        };
        serde_json::to_value(summary).expect("plan summary serialises")
    }

    /// Things that are not load errors but will fail a backup or drill on
    /// this machine: missing source paths and secret files. Reads the
    /// filesystem; `plan check` prints these as warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut exists = |field: &str, path: &Path, what: &str| {
            if !path.exists() {
                out.push(format!(
                    "{}: {field}: {} does not exist (yet); {what}",
                    self.file.display(),
                    path.display()
                ));
            }
        };
        match &self.source {
            SourceSpec::Sqlite { path } | SourceSpec::Files { path, .. } => {
                exists("source.path", path, "backups fail until it does")
            }
            SourceSpec::Postgres { connection, .. } | SourceSpec::Mariadb { connection, .. } => {
                if let Some(Password::File(p)) = &connection.password {
                    exists(
                        "source.password_file",
                        p,
                        "backups cannot connect until it does",
                    );
                }
                if let Some(socket) = &connection.socket {
                    exists(
                        "source.socket",
                        socket,
                        "the server is not running or listens elsewhere",
                    );
                }
            }
        }
        if let Some(dir) = self.drill.as_ref().and_then(|d| d.scratch_dir.as_ref()) {
            exists("drill.scratch_dir", dir, "drills create it");
        }
        if self.lock.mode == LockSetting::None {
            out.push(format!(
                "{}: lock.mode: none: snapshots are NOT immutable; anyone holding the repository's credentials can delete every backup",
                self.file.display()
            ));
        }
        match &self.key {
            super::KeySpec::Unencrypted => out.push(format!(
                "{}: repository.encryption: none: the repository is NOT encrypted or authenticated; anyone with write access to it can forge snapshots that restore as real, and anyone with read access reads the data",
                self.file.display()
            )),
            super::KeySpec::File { path, .. } if !path.exists() => out.push(format!(
                "{}: the key file {} does not exist; `holdfast repo init` (or the first backup) creates it for a new repository",
                self.file.display(),
                path.display()
            )),
            _ => {}
        }
        out
    }
}

fn format_runs(runs: &[DateTime<Utc>]) -> String {
    let mut parts = Vec::new();
    let mut previous: Option<DateTime<Utc>> = None;
    for run in runs {
        let same_day = previous.is_some_and(|p| p.date_naive() == run.date_naive());
        parts.push(if same_day {
            run.format("%H:%M:%SZ").to_string()
        } else {
            run.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        });
        previous = Some(*run);
    }
    if parts.is_empty() {
        "never".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{parse, MINIMAL};

    #[test]
    fn summary_is_one_line_with_the_next_runs() {
        let plan = parse(MINIMAL).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-26T04:10:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            plan.summary(now),
            "app: sqlite /srv/plans/app.db -> file:///srv/repo, backup \"0 * * * *\" UTC, next 2026-11-26T05:00:00Z, 06:00:00Z, 07:00:00Z; lock compliance 7d; keep last 24, daily 7"
        );
        let json = plan.summary_json(now);
        assert_eq!(json["schedule"]["next"][0], "2026-11-26T05:00:00Z");
        assert_eq!(json["lock_needed_days"], 7);
        assert_eq!(json["verify"]["sample"], "all");

        let plan = parse(&format!("{MINIMAL}verify: {{sample: 10%}}\n")).unwrap();
        assert!(
            plan.summary(now)
                .ends_with("; keep last 24, daily 7; verify reads 10% of packs"),
            "{}",
            plan.summary(now)
        );
        assert_eq!(plan.summary_json(now)["verify"]["sample"], "10%");
        assert_eq!(plan.summary_json(now)["verify"]["depth"], "chunks");

        let plan = parse(&format!(
            "{MINIMAL}verify: {{sample: 10%, depth: stored}}\n"
        ))
        .unwrap();
        assert!(
            plan.summary(now)
                .ends_with("; verify reads 10% of packs; verify checks stored bytes only"),
            "{}",
            plan.summary(now)
        );
        assert_eq!(plan.summary_json(now)["verify"]["depth"], "stored");
    }

    #[test]
    fn secrets_never_reach_json() {
        let text = "name: pg\nsource: {type: postgres, host: db, password: '${PW}'}\nrepository: {url: /r}\nschedule: {backup: '@daily'}\nlock: {mode: governance, days: 7}\nretention: {keep_daily: 7}\n";
        let env = |n: &str| (n == "PW").then(|| "hunter2".to_string());
        let plan = Plan::parse(text, Path::new("/p/pg.yaml"), &env).unwrap();
        let json = plan.summary_json(Utc::now()).to_string();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(!format!("{plan:?}").contains("hunter2"));
        match &plan.source {
            SourceSpec::Postgres { connection, .. } => match &connection.password {
                Some(Password::Value(s)) => assert_eq!(s.expose(), "hunter2"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}
