//! What a drill measured and found ([`DrillReport`]), how it is recorded —
//! write-once in the repository under `drills/<plan>/<time>-<id>.json`
//! (`docs/repository-format.md`) and as JSON and Markdown in a local reports
//! folder — and how records are read back. Records come from the repository,
//! so they are hostile: size-capped before parsing, and a record that cannot
//! be read is named, never trusted.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::PlanName;

pub const RECORD_FORMAT: &str = "holdfast-drill";
pub const RECORD_VERSION: u32 = 1;
/// A drill record is a few KiB; anything larger is refused unread.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;
pub const DRILLS_PREFIX: &str = "drills/";

/// The prefix of a plan's drill records.
pub fn drills_prefix(plan: &PlanName) -> String {
    format!("{DRILLS_PREFIX}{plan}/")
}

/// `drills/<plan>/<started_at>-<id>.json`.
pub fn record_key(plan: &PlanName, started_at: DateTime<Utc>, id: &str) -> String {
    format!(
        "{}{}-{id}.json",
        drills_prefix(plan),
        started_at.format(crate::repository::SNAPSHOT_TIME_FORMAT)
    )
}

/// What a drill aimed at, and how it was chosen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetReport {
    /// `latest`, `rewind` (the plan's `drill.rewind` before the drill
    /// started), `at` (`--at`) or `random` (`drill.target: random`,
    /// `--random`).
    pub kind: String,
    /// The instant the drill aimed at: its start for `latest`; for `random`
    /// the instant drawn, or the drawn snapshot's time.
    pub at: DateTime<Utc>,
    /// `random`: the seed it was drawn with (`--random --seed N` draws the
    /// same point again while the windows are the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// `random`: what it was drawn from (the restorable windows, or which
    /// of how many snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drawn_from: Option<String>,
}

impl std::fmt::Display for TargetReport {
    /// `2026-03-02T09:12:05+00:00 (random, seed 42, from …)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.at.to_rfc3339(), self.kind)?;
        if let Some(seed) = self.seed {
            write!(f, ", seed {seed}")?;
        }
        if let Some(from) = &self.drawn_from {
            write!(f, ", drawn from {from}")?;
        }
        f.write_str(")")
    }
}

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Phase {
    /// `fetch_restore`, `wal_check`, `wal_replay_start`, `checks`, `stop`.
    pub name: String,
    pub seconds: f64,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    /// The plan's check name (`checks[N]` when unnamed), or a built-in's:
    /// `integrity_check`, `sha256`, `pg_amcheck`.
    pub name: String,
    /// `sql`, `file` or `builtin`.
    pub kind: String,
    pub passed: bool,
    /// What was found (the value read, the error), or why it was skipped.
    pub detail: String,
}

/// A drill's report: the daemon's metrics and `holdfast drills` read these
/// fields; the repository keeps one per drill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub format: String,
    pub version: u32,
    /// 16 hex digits, random.
    pub id: String,
    pub plan: PlanName,
    /// The plan's source kind (`sqlite`, `files`, `postgres`).
    pub source: String,
    pub host: Option<String>,
    pub passed: bool,
    /// Why it failed, first cause first; empty when it passed.
    pub failures: Vec<String>,
    pub target: TargetReport,
    /// The snapshot (or PostgreSQL base backup) restored, when one was chosen.
    pub snapshot: Option<String>,
    /// The time of the data restored: the snapshot's start (SQLite, files),
    /// or for PostgreSQL the target time clamped to the newest archived
    /// transaction.
    pub restored_point: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Start to the end of the checks (the scratch copy's teardown is not
    /// counted): how long rebuilding and proving the data took.
    pub rto_seconds: f64,
    /// `target.at` minus `restored_point`: how much data a restore to the
    /// target would lose.
    pub rpo_seconds: Option<f64>,
    /// From the start until the first restored byte was on disk.
    pub time_to_first_byte_seconds: Option<f64>,
    pub max_duration_seconds: f64,
    /// The drill ran past `max_duration` (it was stopped there).
    pub over_time: bool,
    pub phases: Vec<Phase>,
    pub checks: Vec<CheckResult>,
    pub checks_passed: u32,
    pub checks_failed: u32,
    /// Restored files whose SHA-256 matched the manifest (all of them, or
    /// the restore fails).
    pub files_verified: u64,
    pub bytes_restored: u64,
    /// The scratch folder (removed when the drill ended).
    pub scratch: PathBuf,
    pub notes: Vec<String>,
    /// Where the report was recorded in the repository, or why it was not.
    #[serde(default)]
    pub record_key: Option<String>,
}

impl DrillReport {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a drill report serialises");
        v.push(b'\n');
        v
    }

    /// Reads a record from the repository: size-capped, parsed strictly
    /// enough to be used, errors naming the key.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<DrillReport, String> {
        if bytes.len() as u64 > MAX_RECORD_BYTES {
            return Err(format!(
                "drill record {key} is {} bytes, over the {MAX_RECORD_BYTES}-byte limit; not read",
                bytes.len()
            ));
        }
        let r: DrillReport = serde_json::from_slice(bytes)
            .map_err(|e| format!("drill record {key} is not a drill report: {e}"))?;
        if r.format != RECORD_FORMAT {
            return Err(format!(
                "drill record {key} has format {:?}, not {RECORD_FORMAT:?}",
                r.format
            ));
        }
        if r.version != RECORD_VERSION {
            return Err(format!(
                "drill record {key} has version {}; this holdfast reads version {RECORD_VERSION}",
                r.version
            ));
        }
        if !r.rto_seconds.is_finite() || r.rto_seconds < 0.0 {
            return Err(format!(
                "drill record {key} has an impossible rto_seconds {}",
                r.rto_seconds
            ));
        }
        Ok(r)
    }

    /// The report as Markdown, for people and tickets.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let outcome = if self.passed { "PASSED" } else { "FAILED" };
        m.push_str(&format!(
            "# Restore drill {} of plan {}: {outcome}\n\n",
            self.id, self.plan
        ));
        m.push_str("| | |\n|---|---|\n");
        let row = |m: &mut String, k: &str, v: String| m.push_str(&format!("| {k} | {v} |\n"));
        row(&mut m, "source", self.source.clone());
        row(&mut m, "host", self.host.clone().unwrap_or_default());
        row(&mut m, "started", self.started_at.to_rfc3339());
        row(&mut m, "finished", self.finished_at.to_rfc3339());
        row(&mut m, "target", self.target.to_string());
        row(
            &mut m,
            "snapshot",
            self.snapshot.clone().unwrap_or_default(),
        );
        row(
            &mut m,
            "restored point",
            self.restored_point
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        );
        row(
            &mut m,
            "RTO",
            format!(
                "{:.1} s (max_duration {:.0} s{})",
                self.rto_seconds,
                self.max_duration_seconds,
                if self.over_time { ", OVER TIME" } else { "" }
            ),
        );
        row(
            &mut m,
            "RPO",
            self.rpo_seconds
                .map(|r| format!("{r:.1} s"))
                .unwrap_or_else(|| "unknown".into()),
        );
        row(
            &mut m,
            "time to first byte",
            self.time_to_first_byte_seconds
                .map(|r| format!("{r:.2} s"))
                .unwrap_or_default(),
        );
        row(&mut m, "bytes restored", self.bytes_restored.to_string());
        row(
            &mut m,
            "files verified (SHA-256)",
            self.files_verified.to_string(),
        );
        m.push_str("\n## Phases\n\n| phase | seconds |\n|---|---:|\n");
        for p in &self.phases {
            m.push_str(&format!("| {} | {:.2} |\n", p.name, p.seconds));
        }
        m.push_str(&format!(
            "\n## Checks ({} passed, {} failed)\n\n| check | kind | result | detail |\n|---|---|---|---|\n",
            self.checks_passed, self.checks_failed
        ));
        for c in &self.checks {
            m.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                c.name,
                c.kind,
                if c.passed { "pass" } else { "FAIL" },
                c.detail.replace('|', "\\|").replace('\n', " ")
            ));
        }
        if !self.failures.is_empty() {
            m.push_str("\n## Failures\n\n");
            for f in &self.failures {
                m.push_str(&format!("- {f}\n"));
            }
        }
        if !self.notes.is_empty() {
            m.push_str("\n## Notes\n\n");
            for n in &self.notes {
                m.push_str(&format!("- {n}\n"));
            }
        }
        m
    }
}

/// The local reports folder when `--reports` is not given:
/// `/var/lib/holdfast/drills` for root, else `$XDG_STATE_HOME/holdfast/drills`
/// (`~/.local/state/holdfast/drills` when unset).
pub fn default_reports_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/holdfast/drills");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("holdfast/drills")
}

/// Writes `<dir>/<plan>-<time>-<id>.json` and `.md`; returns the JSON path.
pub fn write_local(dir: &Path, report: &DrillReport) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stem = format!(
        "{}-{}-{}",
        report.plan,
        report
            .started_at
            .format(crate::repository::SNAPSHOT_TIME_FORMAT),
        report.id
    );
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&json, report.encode())?;
    std::fs::write(dir.join(format!("{stem}.md")), report.markdown())?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DrillReport {
        let t: DateTime<Utc> = "2026-03-02T08:00:00Z".parse().unwrap();
        DrillReport {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            id: "0123456789abcdef".into(),
            plan: PlanName::new("app").unwrap(),
            source: "sqlite".into(),
            host: None,
            passed: true,
            failures: vec![],
            target: TargetReport {
                kind: "latest".into(),
                at: t,
                seed: None,
                drawn_from: None,
            },
            snapshot: None,
            restored_point: None,
            started_at: t,
            finished_at: t,
            rto_seconds: 1.0,
            rpo_seconds: None,
            time_to_first_byte_seconds: None,
            max_duration_seconds: 60.0,
            over_time: false,
            phases: vec![],
            checks: vec![],
            checks_passed: 0,
            checks_failed: 0,
            files_verified: 1,
            bytes_restored: 1,
            scratch: PathBuf::from("/tmp/x"),
            notes: vec![],
            record_key: None,
        }
    }

    #[test]
    fn records_round_trip_and_hostile_ones_are_named() {
        let r = report();
        let back = DrillReport::decode("k", &r.encode()).unwrap();
        assert_eq!(back.id, r.id);
        for (bytes, needle) in [
            (b"{".to_vec(), "not a drill report"),
            (
                vec![b' '; MAX_RECORD_BYTES as usize + 1],
                "over the 1048576-byte limit",
            ),
            (
                String::from_utf8(r.encode())
                    .unwrap()
                    .replace("holdfast-drill", "other")
                    .into_bytes(),
                "has format",
            ),
        ] {
            let e = DrillReport::decode("drills/app/x.json", &bytes).unwrap_err();
            assert!(e.contains("drills/app/x.json") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn a_random_target_records_its_seed_and_older_records_still_read() {
        let mut r = report();
        // Written before random targets existed: no seed, no drawn_from.
        let old = String::from_utf8(r.encode()).unwrap();
        assert!(
            !old.contains("seed") && !old.contains("drawn_from"),
            "{old}"
        );
        assert_eq!(
            DrillReport::decode("k", old.as_bytes()).unwrap().target,
            r.target
        );

        r.target = TargetReport {
            kind: "random".into(),
            at: r.started_at,
            seed: Some(42),
            drawn_from: Some("snapshot 1 of 3, oldest first".into()),
        };
        let back = DrillReport::decode("k", &r.encode()).unwrap();
        assert_eq!(back.target, r.target);
        assert!(
            r.markdown().contains(
                "| target | 2026-03-02T08:00:00+00:00 (random, seed 42, drawn from snapshot 1 of 3, oldest first) |"
            ),
            "{}",
            r.markdown()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, failure_persistence: None, ..Default::default() })]

        /// A real record with bytes flipped, cut, inserted, or a number set
        /// to a hostile value: a record or an error naming the key, never a
        /// panic.
        #[test]
        fn mutated_records_are_read_or_refused_by_name(
            kind in 0u8..4,
            at in proptest::prelude::any::<proptest::sample::Index>(),
            value in proptest::prelude::any::<u64>(),
            insert in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..16),
        ) {
            let bytes = report().encode();
            let at = at.index(bytes.len());
            let mut bad = bytes.clone();
            match kind {
                0 => bad[at] ^= (value as u8).max(1),
                1 => bad.truncate(at),
                2 => {
                    bad.splice(at..at, insert);
                }
                _ => {
                    // Every number in the record, set to a hostile one.
                    let text = String::from_utf8(bytes).unwrap();
                    let any = value.to_string();
                    let hostile = ["-1", "1e400", "99999999999999999999999", "NaN", any.as_str()][value as usize % 5];
                    bad = text
                        .replace("1.0", hostile)
                        .replace("60.0", hostile)
                        .replace(": 1,", &format!(": {hostile},"))
                        .into_bytes();
                }
            }
            let key = "drills/app/20260302T080000Z.json";
            match DrillReport::decode(key, &bad) {
                Ok(r) => proptest::prop_assert!(r.rto_seconds.is_finite() && r.rto_seconds >= 0.0),
                Err(e) => proptest::prop_assert!(e.contains(key), "{e}"),
            }
        }
    }
}
