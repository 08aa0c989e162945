//! Is PostgreSQL archiving? The judgement a base backup (and, next, the
//! daemon's archive-stalled alert) makes of the server's archiver.
//!
//! It judges progress, not failure counts: when `archive_command` cannot be
//! run at all (exit 126/127, "command not found"), PostgreSQL ends its
//! archiver process instead of counting a failure, so `pg_stat_archiver`
//! shows `failed_count = 0` for ever while nothing is archived. What counts
//! is whether the segment someone waits for gets archived, and whether
//! `last_archived_wal` moves at all.
//!
//! [`judge`] is pure (plain values in, a [`Verdict`] out) so every case is
//! unit-tested; [`observe`] reads the server; [`watch`] is the loop a base
//! backup runs beside `pg_basebackup`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::client::{PgClient, PgSession};
use crate::repository::source::SourceError;

/// How often [`watch`] looks (one `psql` each time).
pub const POLL: Duration = Duration::from_secs(2);
/// How often a waiting backup warns.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What `pg_stat_archiver` and `pg_stat_activity` say at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
    /// The last attempt failed, after the last success.
    pub failing: bool,
    /// The archiver process's pid; `None` when none runs. Only known when
    /// [`Observation::archiver_visible`].
    pub archiver_pid: Option<u32>,
    /// This role may see the archiver's row in `pg_stat_activity`
    /// (superuser or `pg_read_all_stats`).
    pub archiver_visible: bool,
    /// How many times the archiver process was seen to be replaced while
    /// watching (filled in by [`watch`]): PostgreSQL restarts it after each
    /// "command not found".
    pub archiver_restarts: u32,
}

/// Why a segment is not archived yet, as far as the server shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No archiver process runs, or it keeps being replaced: PostgreSQL ends
    /// it when `archive_command` exits 126/127 or dies on a signal.
    ArchiverDies,
    /// `archive_command` runs and fails (counted in `failed_count`).
    CommandFails,
    /// No failure is counted and the archiver runs (or cannot be seen): the
    /// command hangs, is not found (counted nowhere), or the archiver is far
    /// behind.
    NoFailureCounted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The segment is archived (`last_archived_wal` is at or past it).
    Archived,
    /// Not archived yet, and the archiver made progress within the stall time.
    Waiting(Reason),
    /// Nothing archived for the whole stall time while the segment waits.
    Stalled(Reason),
}

/// `(timeline, log, segment)` of a WAL file name (a segment, `.partial` or
/// `.backup`), which orders them as PostgreSQL archives them; `None` for a
/// timeline history file or anything else.
pub fn position(name: &str) -> Option<(u32, u32, u32)> {
    let seg = name.get(..24)?;
    if !seg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let part = |r: std::ops::Range<usize>| u32::from_str_radix(&seg[r], 16).ok();
    Some((part(0..8)?, part(8..16)?, part(16..24)?))
}

/// Whether `last_archived` is `segment` or a later file. Within one
/// segment the archiver goes in name order: the segment, then its backup
/// history files (`<segment>.<offset>.backup`).
pub fn reached(last_archived: Option<&str>, segment: &str) -> bool {
    match (last_archived.and_then(position), position(segment)) {
        (Some(last), Some(wanted)) => {
            last > wanted || (last == wanted && last_archived.is_some_and(|l| l >= segment))
        }
        _ => false,
    }
}

/// The verdict on `waited_for` given what the server shows and how long the
/// archiver has made no progress (`since_progress`: since the wait began or
/// `last_archived_wal` last moved, whichever is later).
pub fn judge(
    obs: &Observation,
    waited_for: &str,
    since_progress: Duration,
    stall: Duration,
) -> Verdict {
    if reached(obs.last_archived_wal.as_deref(), waited_for) {
        return Verdict::Archived;
    }
    let reason =
        if (obs.archiver_visible && obs.archiver_pid.is_none()) || obs.archiver_restarts > 0 {
            Reason::ArchiverDies
        } else if obs.failing {
            Reason::CommandFails
        } else {
            Reason::NoFailureCounted
        };
    if since_progress >= stall {
        Verdict::Stalled(reason)
    } else {
        Verdict::Waiting(reason)
    }
}

impl Reason {
    /// What the server shows, and what most likely causes it.
    pub fn explain(&self) -> &'static str {
        match self {
            Reason::ArchiverDies => "PostgreSQL's archiver process is not running or keeps being restarted: it ends it when archive_command cannot be run at all (exit 127: command not found; 126: not executable), and counts no failure for it",
            Reason::CommandFails => "archive_command runs and fails",
            Reason::NoFailureCounted => "archive_command has counted no failure: it was not found (exit 127 counts none), or it hangs (the repository unreachable?)",
        }
    }
}

/// The whole story for a person: what waits, what the server last did, why
/// that is most likely, and what to do.
pub fn describe(obs: &Observation, waited_for: &str, reason: &Reason, waited: Duration) -> String {
    let last = match (&obs.last_archived_wal, &obs.last_archived_time) {
        (Some(w), Some(t)) => format!("{w} at {t}"),
        (Some(w), None) => w.clone(),
        _ => "never".into(),
    };
    let failures = match (&obs.last_failed_wal, &obs.last_failed_time) {
        (Some(w), Some(t)) => format!("failed_count {}, last failure {w} at {t}", obs.failed_count),
        _ => format!("failed_count {}", obs.failed_count),
    };
    let process = if !obs.archiver_visible {
        "archiver process: not visible to this role (needs pg_read_all_stats)".to_string()
    } else {
        match (obs.archiver_pid, obs.archiver_restarts) {
            (None, 0) => "archiver process: not running".to_string(),
            (None, n) => format!("archiver process: not running (restarted {n} times meanwhile)"),
            (Some(pid), 0) => format!("archiver process: running (pid {pid})"),
            (Some(pid), n) => {
                format!("archiver process: running (pid {pid}, restarted {n} times meanwhile)")
            }
        }
    };
    format!(
        "PostgreSQL has not archived WAL segment {waited_for} in {}s; last archived: {last}; {failures}; {process}. {}. Likely causes: archive_command not found (PostgreSQL runs it without your PATH: give an absolute path such as /usr/local/bin/holdfast), permissions (the server's OS user must run holdfast and read the plan and its key files), the repository unreachable. The server log has archive_command's error (`archive command failed`, or `archiver process … exited`); docs/runbook.md section 9 has a check",
        waited.as_secs(),
        reason.explain(),
    )
}

/// What [`observe`] asks.
const OBSERVE_SQL: &str =
    "SELECT coalesce(last_archived_wal, ''), coalesce(last_archived_time::text, ''), \
     failed_count, coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, ''), \
     coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false), \
     coalesce((SELECT min(pid)::text FROM pg_stat_activity WHERE backend_type = 'archiver'), ''), \
     pg_has_role('pg_read_all_stats', 'USAGE') \
     FROM pg_stat_archiver";

/// Reads `pg_stat_archiver` and the archiver process.
pub fn observe(client: &PgClient) -> Result<Observation, SourceError> {
    parse_observation(client.query(OBSERVE_SQL)?)
}

/// [`observe`] on a held session (no process started per look).
fn observe_in(session: &mut PgSession) -> Result<Observation, SourceError> {
    parse_observation(session.ask(OBSERVE_SQL, SESSION_ANSWER)?)
}

/// How long a look at the archiver on a held session may take.
const SESSION_ANSWER: Duration = Duration::from_secs(60);

/// Waits until `segment` is archived, looking on `session` (first after
/// 10 ms, then less often, at most every 500 ms): a base backup that stopped
/// without the server's own wait, which looks only once a second. Warns
/// every [`WARN_EVERY`]; fails, saying why ([`describe`]), once nothing has
/// been archived for `stall`.
pub fn wait_archived(
    session: &mut PgSession,
    segment: &str,
    stall: Duration,
) -> Result<(), SourceError> {
    let since = Instant::now();
    let mut tracker = Tracker::new();
    let mut pause = Duration::from_millis(10);
    loop {
        let mut obs = observe_in(session)?;
        tracker.see(&mut obs);
        match judge(&obs, segment, tracker.progress_at.elapsed(), stall) {
            Verdict::Archived => return Ok(()),
            Verdict::Waiting(reason) => tracker.warn(segment, since, &reason),
            Verdict::Stalled(reason) => {
                return Err(SourceError::Database {
                    what: "base backup".into(),
                    detail: format!(
                        "the base backup waited for its WAL and was abandoned: {}",
                        describe(&obs, segment, &reason, since.elapsed())
                    ),
                })
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 3 / 2).min(Duration::from_millis(500));
    }
}

/// What the archiver did while a backup watches it: when
/// `last_archived_wal` last moved, and how often its process was replaced.
struct Tracker {
    last_archived: Option<String>,
    progress_at: Instant,
    last_pid: Option<u32>,
    restarts: u32,
    last_warn: Instant,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            last_archived: None,
            progress_at: Instant::now(),
            last_pid: None,
            restarts: 0,
            last_warn: Instant::now(),
        }
    }

    /// Takes in one observation and fills in its `archiver_restarts`.
    fn see(&mut self, obs: &mut Observation) {
        if obs.last_archived_wal != self.last_archived {
            self.last_archived = obs.last_archived_wal.clone();
            self.progress_at = Instant::now();
        }
        if let Some(pid) = obs.archiver_pid {
            if self.last_pid.is_some_and(|p| p != pid) {
                self.restarts += 1;
            }
            self.last_pid = Some(pid);
        }
        obs.archiver_restarts = self.restarts;
    }

    /// Warns, at most every [`WARN_EVERY`], that the backup still waits.
    fn warn(&mut self, segment: &str, since: Instant, reason: &Reason) {
        if self.last_warn.elapsed() >= WARN_EVERY {
            self.last_warn = Instant::now();
            tracing::warn!(
                wal = %segment,
                waited_s = since.elapsed().as_secs(),
                "the base backup waits for PostgreSQL to archive WAL segment {segment}: {}",
                reason.explain()
            );
        }
    }
}

fn parse_observation(rows: Vec<Vec<String>>) -> Result<Observation, SourceError> {
    let row = rows
        .first()
        .filter(|r| r.len() == 8)
        .ok_or_else(|| SourceError::Database {
            what: "psql".into(),
            detail: format!("unexpected answer from pg_stat_archiver: {rows:?}"),
        })?;
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    Ok(Observation {
        last_archived_wal: some(&row[0]),
        last_archived_time: some(&row[1]),
        failed_count: row[2].parse().unwrap_or_default(),
        last_failed_wal: some(&row[3]),
        last_failed_time: some(&row[4]),
        failing: row[5] == "t",
        archiver_pid: row[6].parse().ok(),
        archiver_visible: row[7] == "t",
        archiver_restarts: 0,
    })
}

/// The `application_name` a base backup's `pg_basebackup` connects with, so
/// its session can be found in `pg_stat_activity`.
pub fn backup_application_name() -> String {
    format!("holdfast backup {}", std::process::id())
}

/// The base backup's session, if it is waiting for WAL archiving: its
/// walsender pid, and the segment it waits for (the backup's stop segment).
struct BackupWait {
    pid: u32,
    segment: String,
}

/// `Some` once the session `app` is in the phase "waiting for WAL
/// archiving". The segment comes from the backup history file (`STOP WAL
/// LOCATION … (file …)`) where this role may read it, else from the
/// server's WAL position: the server switched segment right after the
/// backup's end record, so the segment before the current position is the
/// stop segment unless other writes moved on meanwhile.
fn backup_wait(client: &PgClient, app: &str) -> Result<Option<BackupWait>, SourceError> {
    let app = app.replace('\'', "''");
    let rows = client.query(&format!(
        "SELECT p.pid, pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_progress_basebackup p \
         JOIN pg_stat_activity s ON s.pid = p.pid \
         WHERE s.application_name = '{app}' AND p.phase LIKE 'waiting for wal archiving%'"
    ))?;
    let Some(row) = rows.first().filter(|r| r.len() == 2) else {
        return Ok(None);
    };
    let Ok(pid) = row[0].parse() else {
        return Ok(None);
    };
    let from_history = client
        .query(
            "SELECT substring(pg_read_file('pg_wal/' || name) FROM 'STOP WAL LOCATION: \\S+ \\(file ([0-9A-F]{24})\\)') \
             FROM pg_ls_waldir() WHERE name LIKE '%.backup' ORDER BY modification DESC, name DESC LIMIT 1",
        )
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .and_then(|r| r.into_iter().next())
        .filter(|s| position(s).is_some());
    Ok(Some(BackupWait {
        pid,
        segment: from_history.unwrap_or_else(|| row[1].clone()),
    }))
}

/// Watches the archiver while the base backup of session `app` runs, until
/// `done`. Once the backup waits for its stop segment, warns every
/// [`WARN_EVERY`]; if nothing is archived for `stall` while it waits,
/// terminates the backup's session and returns why (the caller then ends
/// `pg_basebackup`).
pub fn watch(client: &PgClient, app: &str, done: &AtomicBool, stall: Duration) -> Option<String> {
    // One psql or two per poll, beside the backup; faster polls only for
    // the tests' short stall times.
    let poll = (stall / 4).clamp(Duration::from_millis(100), POLL);
    let mut wait: Option<(BackupWait, Instant)> = None;
    let mut tracker = Tracker::new();
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(poll);
        if done.load(Ordering::SeqCst) {
            return None;
        }
        let Ok(mut obs) = observe(client) else {
            continue;
        };
        tracker.see(&mut obs);
        if wait.is_none() {
            match backup_wait(client, app) {
                Ok(Some(w)) => {
                    // The stall clock starts when the wait does.
                    tracker.progress_at = Instant::now();
                    wait = Some((w, Instant::now()));
                }
                _ => continue,
            }
        }
        let Some((w, since)) = &wait else { continue };
        match judge(&obs, &w.segment, tracker.progress_at.elapsed(), stall) {
            Verdict::Archived => {}
            Verdict::Waiting(reason) => tracker.warn(&w.segment, *since, &reason),
            Verdict::Stalled(reason) => {
                // End the server's side of the backup too, rather than leave
                // its walsender waiting on the archiver.
                let _ = client.query(&format!("SELECT pg_terminate_backend({})", w.pid));
                return Some(format!(
                    "the base backup waited for its WAL and was abandoned: {}",
                    describe(&obs, &w.segment, &reason, since.elapsed())
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "000000010000000000000005";

    fn obs() -> Observation {
        Observation {
            last_archived_wal: Some("000000010000000000000004".into()),
            last_archived_time: Some("2026-12-03 05:00:00+00".into()),
            archiver_visible: true,
            archiver_pid: Some(42),
            ..Default::default()
        }
    }

    const STALL: Duration = Duration::from_secs(60);

    #[test]
    fn a_segment_at_or_behind_the_last_archived_file_is_archived() {
        let mut o = obs();
        o.last_archived_wal = Some(SEG.into());
        assert_eq!(judge(&o, SEG, STALL * 2, STALL), Verdict::Archived);
        // The backup history file is archived after its segment.
        o.last_archived_wal = Some("000000010000000000000005.00000028.backup".into());
        assert_eq!(judge(&o, SEG, STALL * 2, STALL), Verdict::Archived);
        // A later timeline is later, whatever its number.
        o.last_archived_wal = Some("000000020000000000000003".into());
        assert_eq!(judge(&o, SEG, STALL * 2, STALL), Verdict::Archived);
        // Log id 1 is after every segment of log id 0.
        o.last_archived_wal = Some("0000000100000000000000FF".into());
        assert!(reached(
            Some("000000010000000100000000"),
            "0000000100000000000000FF"
        ));
        assert!(!reached(
            Some("0000000100000000000000FF"),
            "000000010000000100000000"
        ));
        assert!(!reached(Some("00000002.history"), SEG));
        assert!(!reached(None, SEG));
        // A backup history file is reached once it, or anything after it,
        // is archived; its segment alone is not enough.
        let history = "000000010000000000000005.00000028.backup";
        assert!(!reached(Some(SEG), history));
        assert!(reached(Some(history), history));
        assert!(reached(Some("000000010000000000000006"), history));
    }

    #[test]
    fn an_archiver_that_is_not_running_is_named_before_the_stall_time_and_stalls_after_it() {
        // exit 127: no archiver process, no failure counted.
        let mut o = obs();
        o.archiver_pid = None;
        let short = Duration::from_secs(5);
        assert_eq!(
            judge(&o, SEG, short, STALL),
            Verdict::Waiting(Reason::ArchiverDies)
        );
        assert_eq!(
            judge(&o, SEG, STALL, STALL),
            Verdict::Stalled(Reason::ArchiverDies)
        );
        // …or one that keeps being replaced.
        let mut o = obs();
        o.archiver_restarts = 3;
        assert_eq!(
            judge(&o, SEG, STALL, STALL),
            Verdict::Stalled(Reason::ArchiverDies)
        );
        let said = describe(&o, SEG, &Reason::ArchiverDies, STALL);
        for needle in [
            SEG,
            "000000010000000000000004 at 2026-12-03 05:00:00+00",
            "failed_count 0",
            "restarted 3 times",
            "command not found",
            "/usr/local/bin/holdfast",
            "permissions",
            "server log",
        ] {
            assert!(said.contains(needle), "{needle} not in: {said}");
        }
    }

    #[test]
    fn counted_failures_and_silence_are_told_apart() {
        let mut o = obs();
        o.failing = true;
        o.failed_count = 7;
        o.last_failed_wal = Some(SEG.into());
        o.last_failed_time = Some("2026-12-03 05:01:00+00".into());
        assert_eq!(
            judge(&o, SEG, STALL, STALL),
            Verdict::Stalled(Reason::CommandFails)
        );
        assert!(describe(&o, SEG, &Reason::CommandFails, STALL).contains(
            "failed_count 7, last failure 000000010000000000000005 at 2026-12-03 05:01:00+00"
        ));
        // Nothing counted, archiver running: still stalled, on progress alone.
        let o = obs();
        assert_eq!(
            judge(&o, SEG, STALL, STALL),
            Verdict::Stalled(Reason::NoFailureCounted)
        );
        // A role that cannot see the archiver is not told it is missing.
        let mut o = obs();
        o.archiver_visible = false;
        o.archiver_pid = None;
        o.last_archived_wal = None;
        o.last_archived_time = None;
        assert_eq!(
            judge(&o, SEG, Duration::ZERO, STALL),
            Verdict::Waiting(Reason::NoFailureCounted)
        );
        let said = describe(&o, SEG, &Reason::NoFailureCounted, STALL);
        assert!(said.contains("last archived: never"), "{said}");
        assert!(said.contains("not visible to this role"), "{said}");
    }
}
