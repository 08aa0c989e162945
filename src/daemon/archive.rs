//! The daemon's watch over PostgreSQL's WAL archiving, for plans that
//! archive (`archive: true`): every `--archive-poll` it reads
//! `pg_stat_archiver` and the segments waiting in `pg_wal/archive_status`,
//! and, when a new segment has been archived, the plan's restorable window
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
        Ok::<_, crate::repository::source::SourceError>((obs, waiting))
    })
    .await;
    match server {
        Ok(Ok((obs, waiting))) => {
            look.observation = Some(obs);
            look.waiting = waiting;
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
    let row = rows.first().filter(|r| r.len() == 3);
    Ok(match row {
        Some(r) => Waiting {
            count: r[0].parse().unwrap_or_default(),
            oldest: (!r[1].is_empty()).then(|| r[1].trim_end_matches(".ready").to_string()),
            oldest_age_seconds: r[2].parse().unwrap_or_default(),
        },
        None => Waiting::default(),
    })
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
            // Without the status folder: a failing archiver with nothing
            // archived since is waiting on its failed segment.
            None => (
                obs.failing.then(|| obs.last_failed_wal.clone()).flatten(),
                None,
            ),
        };
        self.lag_seconds = lag;
        // A segment waits: judged like a backup's wait for its own WAL, the
        // stall counted from the later of the last progress and the wait's
        // start (a segment that became ready a second ago is not stalled).
        let verdict = oldest.as_deref().map(|seg| {
            let waited = Duration::from_secs_f64(lag.unwrap_or(f64::MAX).min(1e9));
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
