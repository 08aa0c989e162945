//! The daemon's watch over PostgreSQL's WAL archiving, for plans that
//! archive (`archive: true`): every `--archive-poll` it reads
//! `pg_stat_archiver` and the segments waiting in `pg_wal/archive_status`
//! (or, for a role that may not list them, the server's WAL position), and,
//! when a new segment has been archived, the plan's restorable window
//! from the repository, whose end is the newest archived transaction.
//!
//! From that the scheduler exports (and alerts on):
//! * `holdfast_archive_lag_seconds`: how long the oldest segment waiting to
//!   be archived has waited; 0 when none waits.
//! * `holdfast_archive_stalled`: 1 when a segment waits and the archiver has
//!   made no progress for `--archive-stall`, judged as a backup's own wait
//!   for its WAL is ([`archiver::judge`]), with the same explanation.
//! * `holdfast_rpo_seconds`: now minus the newest restorable point, the data
//!   a restore right now would lose.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::postgres::archiver::{self, Observation, Verdict};
use crate::engine::postgres::PgClient;
use crate::plan::{Plan, SourceSpec};

/// How often the archive is looked at, unless `--archive-poll` says.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);
/// How long a waiting segment may see no progress before archiving counts
/// as stalled, unless `--archive-stall` says.
pub const DEFAULT_STALL: Duration = Duration::from_secs(300);
/// The restorable window is read again at least this often even when no new
/// segment was archived (the repository may have changed under us: prune).
pub const WINDOW_REFRESH: Duration = Duration::from_secs(600);
/// A look that has not answered in this long is reported as failing.
pub const LOOK_DEADLINE: Duration = Duration::from_secs(60);

/// The connection the watch uses: the plan's own, for plans that archive.
pub fn client_for(plan: &Plan) -> Option<PgClient> {
    match &plan.source {
        SourceSpec::Postgres {
            connection,
            sslmode,
            archive: true,
            ..
        } => Some(PgClient::new(connection.clone(), *sslmode)),
        _ => None,
    }
}

/// Segments `.ready` in `pg_wal/archive_status`: completed, not yet archived.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Waiting {
    pub count: u64,
    /// The oldest waiting segment and how long it has waited.
    pub oldest: Option<String>,
    pub oldest_age_seconds: f64,
}

/// One look at the server and, when asked, the repository.
#[derive(Debug, Clone, Default)]
pub struct Look {
    pub at: DateTime<Utc>,
    pub observation: Option<Observation>,
    /// `None` when the role may not list `pg_wal/archive_status`
    /// (superuser or `pg_monitor` may).
    pub waiting: Option<Waiting>,
    /// Without `waiting`: the segment being written now and the segment
    /// size, which any role may read, to tell whether a completed segment
    /// waits after the last archived one.
    pub current: Option<Current>,
    /// Why the server could not be read.
    pub error: Option<String>,
    /// The newest restorable point, when the window was read this time.
    pub newest_point: Option<Option<DateTime<Utc>>>,
    /// Why the window could not be read.
    pub window_error: Option<String>,
}

/// Looks at the server and, with `read_window`, at the repository's window.
/// Blocking parts (`psql`) run off the async workers.
pub async fn look(plan: &Plan, read_window: bool) -> Look {
    let mut look = Look {
        at: crate::clock::now(),
        ..Look::default()
    };
    let Some(client) = client_for(plan) else {
        return look;
    };
    let server = tokio::task::spawn_blocking(move || {
        let obs = archiver::observe(&client)?;
        let waiting = waiting(&client).ok();
        let current = match waiting {
            Some(_) => None,
            None => current(&client).ok().flatten(),
        };
        Ok::<_, crate::repository::source::SourceError>((obs, waiting, current))
    })
    .await;
    match server {
        Ok(Ok((obs, waiting, current))) => {
            look.observation = Some(obs);
            look.waiting = waiting;
            look.current = current;
        }
        Ok(Err(e)) => look.error = Some(e.to_string()),
        Err(e) => look.error = Some(format!("the archive watch panicked: {e}")),
    }
    if read_window {
        match newest_point(plan).await {
            Ok(t) => look.newest_point = Some(t),
            Err(e) => look.window_error = Some(e),
        }
    }
    look
}

fn waiting(client: &PgClient) -> Result<Waiting, crate::repository::source::SourceError> {
    let rows = client.query(
        "SELECT count(*), coalesce(min(name), ''), \
         coalesce(extract(epoch FROM now() - min(modification)), 0) \
         FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
    )?;
    Ok(parse_waiting(&rows))
}

/// `count | oldest name | now − its mtime`. The server gives file times in
/// whole seconds (`st_mtime`), so a segment ready at 10:00:00.9 shows
/// 10:00:00: its wait is counted from the end of that second, never longer
/// than it really is (a stall is not judged early).
fn parse_waiting(rows: &[Vec<String>]) -> Waiting {
    match rows.first().filter(|r| r.len() == 3) {
        Some(r) => Waiting {
            count: r[0].parse().unwrap_or_default(),
            oldest: (!r[1].is_empty()).then(|| r[1].trim_end_matches(".ready").to_string()),
            oldest_age_seconds: (r[2].parse::<f64>().unwrap_or_default() - 1.0).max(0.0),
        },
        None => Waiting::default(),
    }
}

/// The segment the server writes now, and the segment size.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub segment: String,
    pub segment_size: u64,
}

/// Readable by any role (unlike `pg_wal/archive_status`); `None` on a
/// standby, which has no current write position. The insert position, not
/// the write position: right after a segment switch the write position is
/// the new segment's first byte, which `pg_walfile_name` names as the
/// previous segment (the one just completed), until more WAL is written.
fn current(client: &PgClient) -> Result<Option<Current>, crate::repository::source::SourceError> {
    let rows = client.query(
        "SELECT CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_walfile_name(pg_current_wal_insert_lsn()) END, \
         (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')",
    )?;
    Ok(rows
        .first()
        .filter(|r| r.len() == 2 && !r[0].is_empty())
        .and_then(|r| {
            Some(Current {
                segment: r[0].clone(),
                segment_size: r[1].parse().ok()?,
            })
        }))
}

/// The completed segment after `last_archived` when the server writes past
/// it: waiting to be archived, as far as a role that cannot list
/// `pg_wal/archive_status` can tell. `None` across a timeline change or
/// when a name is not a segment's.
fn next_waiting(last_archived: Option<&str>, current: &Current) -> Option<String> {
    // A `.backup` or `.partial` file sorts among the segments in an order of
    // its own: what follows it is not known.
    let last = last_archived.filter(|l| l.len() == 24)?;
    let (tli, log, seg) = archiver::position(last)?;
    let per_log = u32::try_from((1u64 << 32) / current.segment_size.max(1)).ok()?;
    let next = if seg + 1 >= per_log {
        (tli, log.checked_add(1)?, 0)
    } else {
        (tli, log, seg + 1)
    };
    let now = archiver::position(&current.segment)?;
    (now.0 == tli && now > next).then(|| format!("{:08X}{:08X}{:08X}", next.0, next.1, next.2))
}

async fn newest_point(plan: &Plan) -> Result<Option<DateTime<Utc>>, String> {
    let repo = crate::ops::open_repo(plan)
        .await
        .map_err(|e| e.to_string())?;
    let reach = crate::engine::postgres::pitr::restorable_windows(&repo, &plan.name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(reach.windows.iter().map(|w| w.to).max())
}

/// What the scheduler keeps between looks, and shows on `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveState {
    pub checked_at: Option<DateTime<Utc>>,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub waiting: Option<Waiting>,
    /// The oldest waiting segment's wait; 0 when none waits.
    pub lag_seconds: Option<f64>,
    pub stalled: bool,
    /// Why, when stalled: what the server shows and the likely causes.
    pub stalled_because: Option<String>,
    /// The newest point a restore reaches (the newest archived transaction
    /// or base backup), as last read from the repository.
    pub newest_point: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// When `last_archived_wal` last moved (or the watch began).
    #[serde(skip)]
    progress_at: Option<DateTime<Utc>>,
    /// The oldest waiting segment and the look that first saw it waiting:
    /// its wait, when the server cannot say (no `pg_monitor`).
    #[serde(skip)]
    waiting_since: Option<(String, DateTime<Utc>)>,
    /// The `last_archived_wal` the window was last read at, and when.
    #[serde(skip)]
    window_at: Option<(Option<String>, DateTime<Utc>)>,
}

impl ArchiveState {
    /// Whether the next look should read the repository's window too: a new
    /// segment was archived since, or [`WINDOW_REFRESH`] has passed.
    pub fn wants_window(&self, now: DateTime<Utc>) -> bool {
        match &self.window_at {
            None => true,
            Some((wal, at)) => {
                *wal != self.last_archived_wal
                    || (now - *at).to_std().unwrap_or_default() >= WINDOW_REFRESH
            }
        }
    }

    /// Takes in one look.
    pub fn update(&mut self, look: Look, stall: Duration) {
        self.checked_at = Some(look.at);
        self.error = look.error.or(look.window_error);
        if let Some(t) = look.newest_point {
            // The window read this time belongs to what was archived before
            // the look began.
            self.window_at = Some((
                look.observation
                    .as_ref()
                    .and_then(|o| o.last_archived_wal.clone())
                    .or(self.last_archived_wal.clone()),
                look.at,
            ));
            if t.is_some() {
                self.newest_point = t;
            }
        }
        let Some(obs) = look.observation else {
            return;
        };
        if obs.last_archived_wal != self.last_archived_wal || self.progress_at.is_none() {
            self.progress_at = Some(look.at);
        }
        self.last_archived_wal = obs.last_archived_wal.clone();
        self.last_archived_time = obs.last_archived_time.clone();
        self.failed_count = obs.failed_count;
        self.last_failed_wal = obs.last_failed_wal.clone();
        self.waiting = look.waiting.clone();
        let since_progress = (look.at - self.progress_at.unwrap_or(look.at))
            .to_std()
            .unwrap_or_default();
        let (oldest, lag) = match &look.waiting {
            Some(w) => (w.oldest.clone(), Some(w.oldest_age_seconds.max(0.0))),
            // Without the status folder: the segment after the last archived
            // one once the server writes past it (an archive_command that is
            // not found counts no failure), else a failing archiver's failed
            // segment.
            None => (
                look.current
                    .as_ref()
                    .and_then(|c| next_waiting(obs.last_archived_wal.as_deref(), c))
                    .or_else(|| obs.failing.then(|| obs.last_failed_wal.clone()).flatten()),
                None,
            ),
        };
        self.lag_seconds = lag;
        self.waiting_since = match (oldest.as_ref(), self.waiting_since.take()) {
            (Some(seg), Some((was, since))) if *seg == was => Some((was, since)),
            (Some(seg), _) => Some((seg.clone(), look.at)),
            (None, _) => None,
        };
        // A segment waits: judged like a backup's wait for its own WAL, the
        // stall counted from the later of the last progress and the wait's
        // start (a segment that became ready a second ago is not stalled,
        // however long the server was quiet before): the server's file time
        // where the role may read it, else the first look that saw it wait.
        let verdict = oldest.as_deref().map(|seg| {
            let waited = match (lag, &self.waiting_since) {
                (Some(lag), _) => Duration::from_secs_f64(lag.min(1e9)),
                (None, Some((_, since))) => (look.at - *since).to_std().unwrap_or_default(),
                (None, None) => Duration::ZERO,
            };
            archiver::judge(&obs, seg, since_progress.min(waited), stall)
        });
        match (verdict, oldest) {
            (Some(Verdict::Stalled(reason)), Some(seg)) => {
                self.stalled = true;
                self.stalled_because =
                    Some(archiver::describe(&obs, &seg, &reason, since_progress));
            }
            _ => {
                self.stalled = false;
                self.stalled_because = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn obs(last: &str, failing: bool) -> Observation {
        Observation {
            last_archived_wal: Some(last.into()),
            last_archived_time: Some("2026-12-03 10:00:00+00".into()),
            failed_count: u64::from(failing),
            last_failed_wal: failing.then(|| "000000010000000000000008".into()),
            failing,
            archiver_pid: Some(42),
            archiver_visible: true,
            ..Observation::default()
        }
    }

    fn look(t: &str, last: &str, failing: bool, waiting: Option<(u64, &str, f64)>) -> Look {
        Look {
            at: at(t),
            observation: Some(obs(last, failing)),
            waiting: waiting.map(|(count, oldest, age)| Waiting {
                count,
                oldest: Some(oldest.into()),
                oldest_age_seconds: age,
            }),
            ..Look::default()
        }
    }

    const STALL: Duration = Duration::from_secs(300);

    #[test]
    fn the_waiting_segments_age_counts_from_the_end_of_the_whole_second_the_server_gives() {
        let row =
            |c: &str, n: &str, age: &str| vec![vec![c.to_string(), n.to_string(), age.to_string()]];
        // psql's answer: modification 10:00:00 (really 10:00:00.9), now 10:00:06.25.
        let w = parse_waiting(&row("2", "000000010000000000000008.ready", "6.250000"));
        assert_eq!(w.count, 2);
        assert_eq!(w.oldest.as_deref(), Some("000000010000000000000008"));
        assert_eq!(w.oldest_age_seconds, 5.25);
        // Ready within the second: no wait yet, never a negative one.
        let w = parse_waiting(&row("1", "000000010000000000000008.ready", "0.400000"));
        assert_eq!(w.oldest_age_seconds, 0.0);
        // Nothing waits.
        assert_eq!(parse_waiting(&row("0", "", "0")), Waiting::default());
        assert_eq!(parse_waiting(&[]), Waiting::default());
    }

    #[test]
    fn without_the_status_folder_the_segment_after_the_last_archived_waits_once_the_server_writes_past_it(
    ) {
        let at = |segment: &str| Current {
            segment: segment.into(),
            segment_size: 16 << 20,
        };
        let last = Some("000000010000000000000007");
        // Writing the next segment: nothing completed waits.
        assert_eq!(next_waiting(last, &at("000000010000000000000008")), None);
        assert_eq!(
            next_waiting(last, &at("000000010000000000000009")).as_deref(),
            Some("000000010000000000000008")
        );
        // 256 segments of 16 MB to a log file: FF is followed by the next log's 00.
        assert_eq!(
            next_waiting(
                Some("0000000100000000000000FF"),
                &at("000000010000000100000001")
            )
            .as_deref(),
            Some("000000010000000100000000")
        );
        // 1 GB segments: four to a log file.
        let big = Current {
            segment: "000000010000000100000001".into(),
            segment_size: 1 << 30,
        };
        assert_eq!(
            next_waiting(Some("000000010000000000000003"), &big).as_deref(),
            Some("000000010000000100000000")
        );
        // Not told: a new timeline, a backup history file, nothing archived.
        assert_eq!(next_waiting(last, &at("000000020000000000000009")), None);
        assert_eq!(
            next_waiting(
                Some("000000010000000000000007.00000028.backup"),
                &at("000000010000000000000009")
            ),
            None
        );
        assert_eq!(next_waiting(None, &at("000000010000000000000009")), None);
    }

    #[test]
    fn a_role_without_the_status_folder_sees_a_stall_counted_from_when_the_segment_was_first_seen_waiting(
    ) {
        // exit 127: no failure counted, the archiver not running.
        let quiet = |t: &str, current: &str| Look {
            at: at(t),
            observation: Some(Observation {
                failing: false,
                failed_count: 0,
                last_failed_wal: None,
                archiver_pid: None,
                ..obs("000000010000000000000007", false)
            }),
            waiting: None,
            current: Some(Current {
                segment: current.into(),
                segment_size: 16 << 20,
            }),
            ..Look::default()
        };
        let mut s = ArchiveState::default();
        s.update(
            quiet("2026-12-03T09:00:00Z", "000000010000000000000008"),
            STALL,
        );
        assert!(!s.stalled);
        // An hour with no writes, then a segment completes: it has not
        // waited an hour.
        s.update(
            quiet("2026-12-03T10:00:00Z", "000000010000000000000009"),
            STALL,
        );
        assert!(!s.stalled, "{:?}", s.stalled_because);
        assert_eq!(s.lag_seconds, None, "unknown without the status folder");
        s.update(
            quiet("2026-12-03T10:04:59Z", "000000010000000000000009"),
            STALL,
        );
        assert!(!s.stalled);
        s.update(
            quiet("2026-12-03T10:05:00Z", "00000001000000000000000A"),
            STALL,
        );
        assert!(s.stalled);
        let why = s.stalled_because.clone().unwrap();
        assert!(
            why.contains("000000010000000000000008") && why.contains("exit 127"),
            "{why}"
        );
        // Archived at last: progress clears it.
        let mut l = quiet("2026-12-03T10:05:30Z", "00000001000000000000000A");
        l.observation.as_mut().unwrap().last_archived_wal = Some("000000010000000000000009".into());
        s.update(l, STALL);
        assert!(!s.stalled);
    }

    #[test]
    fn nothing_waiting_is_no_lag_and_no_stall() {
        let mut s = ArchiveState::default();
        s.update(
            look(
                "2026-12-03T10:00:00Z",
                "000000010000000000000007",
                false,
                Some((0, "", 0.0)),
            ),
            STALL,
        );
        s.waiting.as_mut().unwrap().oldest = None;
        assert!(!s.stalled);
        assert_eq!(
            s.last_archived_wal.as_deref(),
            Some("000000010000000000000007")
        );
    }

    #[test]
    fn a_segment_waiting_with_no_progress_for_the_stall_time_is_stalled_and_explained() {
        let mut s = ArchiveState::default();
        let seg = "000000010000000000000008";
        s.update(
            look(
                "2026-12-03T10:00:00Z",
                "000000010000000000000007",
                true,
                Some((1, seg, 10.0)),
            ),
            STALL,
        );
        assert!(!s.stalled, "waiting 10 s is not stalled");
        s.update(
            look(
                "2026-12-03T10:04:00Z",
                "000000010000000000000007",
                true,
                Some((1, seg, 250.0)),
            ),
            STALL,
        );
        assert!(!s.stalled);
        s.update(
            look(
                "2026-12-03T10:06:00Z",
                "000000010000000000000007",
                true,
                Some((2, seg, 370.0)),
            ),
            STALL,
        );
        assert!(s.stalled);
        assert_eq!(s.lag_seconds, Some(370.0));
        let why = s.stalled_because.clone().unwrap();
        assert!(
            why.contains(seg) && why.contains("archive_command runs and fails"),
            "{why}"
        );
        // Progress clears it.
        s.update(
            look(
                "2026-12-03T10:07:00Z",
                "000000010000000000000009",
                false,
                Some((0, "", 0.0)),
            ),
            STALL,
        );
        s.waiting = None;
        assert!(!s.stalled);
    }

    #[test]
    fn the_window_is_read_again_when_a_new_segment_is_archived_or_after_the_refresh_time() {
        let mut s = ArchiveState::default();
        let t0 = at("2026-12-03T10:00:00Z");
        assert!(s.wants_window(t0));
        let mut l = look(
            "2026-12-03T10:00:00Z",
            "000000010000000000000007",
            false,
            None,
        );
        l.newest_point = Some(Some(at("2026-12-03T09:59:58Z")));
        s.update(l, STALL);
        assert_eq!(s.newest_point, Some(at("2026-12-03T09:59:58Z")));
        assert!(!s.wants_window(t0 + chrono::Duration::seconds(30)));
        s.update(
            look(
                "2026-12-03T10:00:30Z",
                "000000010000000000000008",
                false,
                None,
            ),
            STALL,
        );
        assert!(s.wants_window(t0 + chrono::Duration::seconds(30)));
        let mut l = look(
            "2026-12-03T10:01:00Z",
            "000000010000000000000008",
            false,
            None,
        );
        l.newest_point = Some(Some(at("2026-12-03T10:00:40Z")));
        s.update(l, STALL);
        assert!(!s.wants_window(at("2026-12-03T10:05:00Z")));
        assert!(s.wants_window(at("2026-12-03T10:11:00Z")));
    }
}
