//! Commit and abort times in archived WAL, read with `pg_waldump` of the
//! backup's major version: how a time target finds the segment holding it,
//! and how far a restorable window reaches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use tokio::process::Command;

use super::client::{pg_bin_for, pg_program};
use super::PgError;
use crate::engine::process;

/// One segment is at most 1 GiB; reading it never takes this long.
const WALDUMP_DEADLINE: Duration = Duration::from_secs(300);

/// `pg_waldump` of the backup's major version, which reads that version's WAL.
pub struct Waldump {
    pub program: PathBuf,
}

impl Waldump {
    pub async fn find(major: u64) -> Option<Waldump> {
        let program = pg_program(pg_bin_for(major).as_deref(), "pg_waldump");
        let mut cmd = Command::new(&program);
        cmd.arg("--version");
        process::output(cmd, Duration::from_secs(30))
            .await
            .ok()
            .filter(|o| o.status.success())
            .map(|_| Waldump { program })
    }

    /// Commit and abort times in one segment file, in WAL order.
    pub async fn transaction_times(&self, segment: &Path) -> Result<Vec<DateTime<Utc>>, PgError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg(segment).env("TZ", "UTC");
        let out = process::output(cmd, WALDUMP_DEADLINE)
            .await
            .map_err(|e| PgError::Program {
                program: "pg_waldump".into(),
                detail: e.to_string(),
            })?;
        // It exits 1 at the end of a segment whose next one is not beside
        // it; what it printed up to there is what we read.
        Ok(parse_transaction_times(&String::from_utf8_lossy(
            &out.stdout,
        )))
    }
}

/// `desc: COMMIT 2026-11-26 09:52:01.123456 UTC; …` (also `ABORT`, and
/// prepared-transaction variants).
fn parse_transaction_times(text: &str) -> Vec<DateTime<Utc>> {
    text.lines()
        .filter_map(|l| {
            let desc = l.split_once("desc: ")?.1;
            let rest = match ["COMMIT_PREPARED ", "ABORT_PREPARED "]
                .iter()
                .find_map(|p| desc.strip_prefix(p))
            {
                // The prepared variants print the prepared xid first: `12: <time>`.
                Some(r) => r.split_once(": ")?.1,
                None => ["COMMIT ", "ABORT "]
                    .iter()
                    .find_map(|p| desc.strip_prefix(p))?,
            };
            let stamp = rest.split(';').next()?.trim();
            let stamp = stamp.strip_suffix(" UTC")?;
            NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waldump_commit_and_abort_times_are_read() {
        let text = "rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/0301B7A0, prev 0/0301B768, desc: INSERT off 3 flags 0x00\n\
rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/0301B7D8, prev 0/0301B7A0, desc: COMMIT 2026-11-26 09:52:01.123456 UTC\n\
rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/0301B800, prev 0/0301B7D8, desc: ABORT 2026-11-26 09:52:02.5 UTC\n\
rmgr: Transaction len (rec/tot):    405/   405, tx:        737, lsn: 0/0301B828, prev 0/0301B800, desc: COMMIT 2026-11-26 09:52:03.000001 UTC; inval msgs: catcache 7\n";
        let times = parse_transaction_times(text);
        assert_eq!(times.len(), 3);
        assert_eq!(times[0].to_rfc3339(), "2026-11-26T09:52:01.123456+00:00");
        assert_eq!(times[2].to_rfc3339(), "2026-11-26T09:52:03.000001+00:00");
    }
}
