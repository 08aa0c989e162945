//! Tier and lock arithmetic: which retention tier a snapshot belongs to, how
//! long each tier's lock lasts, and how long a lock the retention needs given
//! the gaps between scheduled runs.

use chrono::{DateTime, Utc};

use super::cron;
use super::model::{Plan, RetentionSpec, Tier};
use crate::store::Retention;

/// Days added to each tier's lock beyond what its rule needs, for late runs
/// and clock skew.
pub const LOCK_MARGIN_DAYS: u32 = 1;

impl Plan {
    /// The tier of a snapshot taken at `at`, given when the plan's earlier
    /// snapshots were taken: the longest-period rule for which it is the
    /// first snapshot of its period.
    pub fn tier_of(&self, at: DateTime<Utc>, earlier: &[DateTime<Utc>]) -> Tier {
        let tz = self.schedule.timezone();
        for tier in Tier::PERIODIC {
            if self.retention.keep(tier).is_none() {
                continue;
            }
            let period = tier.period(at, tz);
            if !earlier
                .iter()
                .any(|e| *e < at && tier.period(*e, tz) == period)
            {
                return tier;
            }
        }
        Tier::Last
    }

    /// The plan's longest lock: `lock.duration`, or `lock.days`.
    pub fn lock_length(&self) -> chrono::Duration {
        match self.lock.duration {
            Some(d) => chrono::Duration::from_std(d.0).unwrap_or(chrono::Duration::MAX),
            None => chrono::Duration::days(i64::from(self.lock.days)),
        }
    }

    /// Days a snapshot of `tier` stays locked, rounded up (see [`Plan::lock_length_for`]).
    pub fn lock_days_for(&self, tier: Tier) -> u32 {
        let secs = self.lock_length_for(tier).num_seconds();
        u32::try_from((secs + 86_399) / 86_400).unwrap_or(u32::MAX)
    }

    /// How long a snapshot of `tier` stays locked: as long as any rule that
    /// can keep it keeps snapshots (`keep_last` and every rule of a shorter
    /// period keep it too), plus a day of margin, and never more than the
    /// plan's lock length, which validation checked covers the longest rule.
    pub fn lock_length_for(&self, tier: Tier) -> chrono::Duration {
        let mut rules = RetentionSpec::default();
        for t in [
            Tier::Last,
            Tier::Hourly,
            Tier::Daily,
            Tier::Weekly,
            Tier::Monthly,
        ] {
            if t <= tier || t == Tier::Last {
                match t {
                    Tier::Last => rules.keep_last = self.retention.keep_last,
                    Tier::Hourly => rules.keep_hourly = self.retention.keep_hourly,
                    Tier::Daily => rules.keep_daily = self.retention.keep_daily,
                    Tier::Weekly => rules.keep_weekly = self.retention.keep_weekly,
                    Tier::Monthly => rules.keep_monthly = self.retention.keep_monthly,
                }
            }
        }
        let gaps = self
            .schedule
            .wall_clock_gaps(cron::reference_instant(), 400);
        let (needed, _) = needed_lock_seconds(&rules, &gaps);
        let wanted =
            chrono::Duration::seconds(needed) + chrono::Duration::days(i64::from(LOCK_MARGIN_DAYS));
        wanted
            .min(self.lock_length())
            .max(chrono::Duration::seconds(1))
    }

    /// The lock for objects a snapshot of `tier` writes or reuses, taken at
    /// `now`; `None` when the plan says `lock.mode: none`.
    pub fn lock_for(&self, tier: Tier, now: DateTime<Utc>) -> Option<Retention> {
        Some(Retention {
            mode: self.lock.mode.store_mode()?,
            until: now + self.lock_length_for(tier),
        })
    }

    /// How many days the lock must cover so every snapshot the retention
    /// keeps stays locked, and the rule that needs the most.
    pub fn lock_needed_days(&self) -> (u32, String) {
        let gaps = self
            .schedule
            .wall_clock_gaps(cron::reference_instant(), 400);
        needed_lock_days(&self.retention, &gaps)
    }
}

/// Days the lock must cover for `retention`, given the wall-clock gaps
/// between consecutive backups.
///
/// `keep_last` N keeps a snapshot until N newer ones exist: for the span of N
/// consecutive gaps after it. A rule keeping one snapshot per period for N
/// periods keeps, like restic, the newest snapshot of each of the last N
/// periods *that have a snapshot*, so each step is at least one period and at
/// least one gap. We take the longest such span over the gaps given (a year
/// or more of runs) and round up to whole days.
pub(super) fn needed_lock_days(
    retention: &RetentionSpec,
    gaps: &[chrono::Duration],
) -> (u32, String) {
    let (secs, why) = needed_lock_seconds(retention, gaps);
    let day = 86_400i64;
    (
        u32::try_from((secs + day - 1) / day).unwrap_or(u32::MAX),
        why,
    )
}

/// [`needed_lock_days`] to the second.
pub(super) fn needed_lock_seconds(
    retention: &RetentionSpec,
    gaps: &[chrono::Duration],
) -> (i64, String) {
    let day = 86_400i64;
    let gaps: Vec<i64> = gaps.iter().map(|g| g.num_seconds()).collect();
    let mut best = (0i64, String::new());
    for (rule, n) in retention.rules() {
        let Some(n) = n else { continue };
        let period = match rule {
            "keep_last" => 0,
            "keep_hourly" => 3600,
            "keep_daily" => day,
            "keep_weekly" => 7 * day,
            _ => 31 * day,
        };
        let secs = longest_span(&gaps, n as usize, period);
        if secs > best.0 {
            best = (secs, format!("{rule}: {n}"));
        }
    }
    best
}

/// The longest sum of `n` consecutive steps, each `max(period, gap)`.
fn longest_span(gaps: &[i64], n: usize, period: i64) -> i64 {
    let steps: Vec<i64> = gaps.iter().map(|g| (*g).max(period)).collect();
    let Some(&longest) = steps.iter().max() else {
        return n as i64 * period;
    };
    if n >= steps.len() {
        return steps.iter().sum::<i64>() + (n - steps.len()) as i64 * longest;
    }
    let mut sum: i64 = steps[..n].iter().sum();
    let mut best = sum;
    for i in n..steps.len() {
        sum += steps[i] - steps[i - n];
        best = best.max(sum);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{parse, MINIMAL};
    use crate::store::LockMode;

    #[test]
    fn each_snapshot_is_locked_as_long_as_its_tier_keeps_it() {
        let plan = parse(MINIMAL).unwrap();
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let first = t("2026-11-26T00:00:00Z");
        // The first snapshot of a day is the daily one: kept 7 days, locked 7.
        assert_eq!(plan.tier_of(first, &[]), Tier::Daily);
        let r = plan.lock_for(Tier::Daily, first).unwrap();
        assert_eq!(
            (r.mode, r.until - first),
            (LockMode::Compliance, chrono::Duration::days(7))
        );
        // Later ones that day are kept by keep_last 24 only: a day, plus margin.
        let later = t("2026-11-26T05:00:00Z");
        assert_eq!(plan.tier_of(later, &[first]), Tier::Last);
        assert_eq!(plan.lock_days_for(Tier::Last), 1 + LOCK_MARGIN_DAYS);
        assert_eq!(
            plan.tier_of(t("2026-11-27T00:00:00Z"), &[first, later]),
            Tier::Daily
        );

        let yearly = MINIMAL
            .replace("days: 7", "days: 400")
            .replace("keep_daily: 7", "keep_daily: 7, keep_monthly: 12");
        let plan = parse(&yearly).unwrap();
        assert_eq!(plan.tier_of(first, &[]), Tier::Monthly);
        assert_eq!(
            plan.tier_of(t("2026-11-27T00:00:00Z"), &[first]),
            Tier::Daily
        );
        let monthly = plan.lock_days_for(Tier::Monthly);
        assert!((372..=400).contains(&monthly), "{monthly}");
        assert_eq!(plan.lock_days_for(Tier::Daily), 7 + LOCK_MARGIN_DAYS);
        assert_eq!(plan.lock_days_for(Tier::Last), 1 + LOCK_MARGIN_DAYS);

        let unlocked = MINIMAL.replace("{mode: compliance, days: 7}", "{mode: none}");
        let plan = parse(&unlocked).unwrap();
        assert_eq!(plan.lock_for(Tier::Daily, first), None);
        assert!(plan.summary(first).contains("lock NONE"));
        assert!(plan.warnings().iter().any(|w| w.contains("NOT immutable")));
    }

    #[test]
    fn lock_horizon_counts_gaps_longer_than_the_period() {
        let hours = |h: &[i64]| {
            h.iter()
                .map(|h| chrono::Duration::hours(*h))
                .collect::<Vec<_>>()
        };
        let r = |last, daily, weekly, monthly| RetentionSpec {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            ..Default::default()
        };
        let hourly = hours(&[1; 500]);
        assert_eq!(
            needed_lock_days(&r(Some(24), None, None, None), &hourly).0,
            1
        );
        assert_eq!(
            needed_lock_days(&r(Some(25), None, None, None), &hourly).0,
            2
        );
        assert_eq!(
            needed_lock_days(&r(None, Some(7), Some(4), None), &hourly).0,
            28
        );
        assert_eq!(
            needed_lock_days(&r(None, None, None, Some(12)), &hours(&[24; 400])),
            (372, "keep_monthly: 12".into())
        );
        // Weekly backups: 7 "daily" snapshots span 7 weeks.
        assert_eq!(
            needed_lock_days(&r(None, Some(7), None, None), &hours(&[168; 60])).0,
            49
        );
        // Weekdays only: the worst window of 6 gaps holds both weekends.
        let weekdays = hours(&[24, 24, 24, 24, 72].repeat(60));
        assert_eq!(
            needed_lock_days(&r(Some(6), None, None, None), &weekdays).0,
            10
        );
    }
}
