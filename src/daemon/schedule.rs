//! When jobs run: the daemon's clock, the jobs a plan has, when each is due
//! (catch-up once, never a burst), and how long to wait before a retry.
//! Pure functions of their inputs, so the scheduler's tests run on tokio's
//! paused clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Exit;
use crate::plan::{Plan, Schedule};

/// The wall clock the scheduler reads. `System` in production; `Tokio`
/// anchors a wall-clock instant to tokio's clock so that a test on a paused
/// runtime moves both together.
#[derive(Debug, Clone)]
pub enum Clock {
    System,
    Tokio {
        wall: DateTime<Utc>,
        instant: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock reading `wall` now and advancing with tokio's (possibly paused) time.
    pub fn tokio_at(wall: DateTime<Utc>) -> Clock {
        Clock::Tokio {
            wall,
            instant: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => crate::clock::now(),
            Clock::Tokio { wall, instant } => {
                *wall
                    + chrono::Duration::from_std(instant.elapsed())
                        .unwrap_or(chrono::Duration::zero())
            }
        }
    }

    /// The tokio instant at which the wall clock reads `at` (now when past).
    pub fn instant_of(&self, at: DateTime<Utc>) -> tokio::time::Instant {
        let wait = (at - self.now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + wait
    }
}

/// What the daemon runs for a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Verify,
    Prune,
    /// The lock keeper (`ops::locks`), for plans that lock their objects.
    #[serde(rename = "keep-locks")]
    KeepLocks,
    /// A restore drill (`ops::drill`), for plans with a `drill` section.
    Drill,
}

impl JobKind {
    /// In the order a plan's due jobs are started: a backup before the
    /// verify and prune that read its repository, the lock keeper after the
    /// prune that decides what is kept, the drill last.
    pub const ALL: [JobKind; 5] = [
        JobKind::Backup,
        JobKind::Verify,
        JobKind::Prune,
        JobKind::KeepLocks,
        JobKind::Drill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Verify => "verify",
            JobKind::Prune => "prune",
            JobKind::KeepLocks => "keep-locks",
            JobKind::Drill => "drill",
        }
    }

    /// The job's schedule; `None`: the plan has no such job (a drill
    /// without a `drill` section runs only by hand; a plan with
    /// `lock.mode: none` has no locks to keep).
    pub fn schedule(self, plan: &Plan) -> Option<&Schedule> {
        match self {
            JobKind::Backup => Some(&plan.schedule),
            JobKind::Verify => Some(&plan.verify_schedule),
            JobKind::Prune => Some(&plan.prune_schedule),
            JobKind::KeepLocks => plan
                .lock_for(crate::plan::Tier::Last, crate::clock::now())
                .map(|_| &plan.keep_locks_schedule),
            JobKind::Drill => plan.drill.as_ref().map(|d| &d.schedule),
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a job is next due. `last` is when it last started (from the state
/// file); with no `last`, `anchor` (when the daemon first saw the plan)
/// stands in, and with neither the job is due at once. A schedule that fired
/// any number of times since `last` gives one time in the past: the job runs
/// once and, as its new `last` is then `now`, is not due again until the
/// schedule's next time after that: a missed run is caught up once, never in
/// a burst.
pub fn next_due(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    anchor: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match last.or(anchor) {
        None => Some(DateTime::<Utc>::MIN_UTC),
        Some(from) => schedule.next_runs(from, 1).first().copied(),
    }
}

/// Retries of transient failures: exponential backoff with full jitter
/// (a uniform wait in `0..=min(max, base * 2^attempt)`), so that daemons
/// sharing a store that went away do not come back in step.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the wait after failed attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait after failed attempt `attempt`, given a uniform random
    /// `unit` in `[0, 1]`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniform random number in `[0, 1]` for jitter.
pub fn jitter_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a failure of this class may go away by itself (the store was
/// unreachable, a lock was held, the source was down), so that the job is
/// retried; never for bad input (a plan, a corrupt repository, a failed
/// verification).
pub fn is_transient(exit: Exit) -> bool {
    matches!(exit, Exit::Repository | Exit::Busy | Exit::Source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_job_is_due_once_however_many_runs_were_missed() {
        let hourly = Schedule::parse("0 * * * *", Tz::UTC).unwrap();
        let last = at("2026-03-02T08:00:00Z");
        // Down from 08:30 to 13:10: five runs missed, one due time in the past.
        let due = next_due(&hourly, Some(last), None).unwrap();
        assert_eq!(due, at("2026-03-02T09:00:00Z"));
        let now = at("2026-03-02T13:10:00Z");
        assert!(due <= now);
        // Run now: the next due time is the next schedule time after now.
        assert_eq!(
            next_due(&hourly, Some(now), None),
            Some(at("2026-03-02T14:00:00Z"))
        );
        // Never run: due at once; never run but anchored: the next time after the anchor.
        assert!(next_due(&hourly, None, None).unwrap() <= now);
        assert_eq!(
            next_due(&hourly, None, Some(now)),
            Some(at("2026-03-02T14:00:00Z"))
        );
    }

    #[test]
    fn backoff_is_exponential_with_full_jitter_and_a_cap() {
        let p = RetryPolicy {
            attempts: 8,
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        let ceilings: Vec<u64> = (0..7).map(|a| p.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 1.0), Duration::from_secs(16));
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(8));
        assert_eq!(p.ceiling(200), Duration::from_secs(60));
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..=1.0).contains(&u), "{u}");
            assert!(p.backoff(4, u) <= Duration::from_secs(32));
        }
    }

    #[test]
    fn only_unavailability_is_retried() {
        assert!(is_transient(Exit::Repository));
        assert!(is_transient(Exit::Busy));
        for bad in [
            Exit::Plan,
            Exit::Verify,
            Exit::Usage,
            Exit::Failure,
            Exit::Target,
        ] {
            assert!(!is_transient(bad), "{bad:?}");
        }
    }
}
