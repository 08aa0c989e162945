//! Cron schedules as crontab and Kubernetes CronJob users write them,
//! translated for the `cron` crate, which differs from crontab in two ways we
//! must hide: it numbers days of the week 1-7 from Sunday (crontab: 0-7, 0 and
//! 7 both Sunday, 1 Monday), and it ANDs a restricted day-of-month with a
//! restricted day-of-week where crontab ORs them.
//!
//! We therefore parse every field ourselves (which also gives messages like
//! "minute 61 out of range 0-59"), hand the crate explicit lists with days of
//! the week as names, and split an OR of day fields into two crate schedules
//! whose runs we merge.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A validated cron schedule in a timezone. Never reads the clock: every
/// query takes the instant to start from.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    timezone: Tz,
    /// One schedule, or two whose union is the crontab meaning (day-of-month OR day-of-week).
    crons: Vec<cron::Schedule>,
}

/// Why an expression was refused, with a hint when one helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError {
    pub message: String,
    pub hint: Option<String>,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// Value of the first name (`jan` = 1, `sun` = 0).
    names_from: u32,
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_from: 0,
};
const DAY_OF_MONTH: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
    names_from: 0,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    names_from: 1,
};
/// crontab: 0-7, 0 and 7 both Sunday.
const DAY_OF_WEEK: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    names_from: 0,
};
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed field: the values it allows, and whether it was written as `*`/`?`
/// (crontab ORs the day fields only when both are restricted).
struct Parsed {
    values: BTreeSet<u32>,
    star: bool,
}

fn parse_value(text: &str, field: &Field) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        if n < field.min || n > field.max {
            return Err(format!(
                "{} {n} out of range {}-{}",
                field.name, field.min, field.max
            ));
        }
        return Ok(n);
    }
    let lower = text.to_ascii_lowercase();
    match field.names.iter().position(|n| *n == lower) {
        Some(i) => Ok(field.names_from + i as u32),
        None if field.names.is_empty() => Err(format!("{} `{text}` is not a number", field.name)),
        None => Err(format!(
            "{} `{text}` is neither a number nor one of {}",
            field.name,
            field.names.join(", ")
        )),
    }
}

fn parse_field(text: &str, field: &Field) -> Result<Parsed, String> {
    let star = text.starts_with('*') || text.starts_with('?');
    let mut values = BTreeSet::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!(
                "{} field `{text}` has an empty list item",
                field.name
            ));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("{} step `{step}` must be a positive number", field.name)
                })?;
                (range, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, field)?, parse_value(b, field)?);
            if a > b {
                return Err(format!(
                    "{} range {range} runs backwards; write it as two items, e.g. {range_fix}",
                    field.name,
                    range_fix = format_args!("{a}-{},{}-{b}", field.max, field.min)
                ));
            }
            (a, b)
        } else {
            let a = parse_value(range, field)?;
            // `5/15` means from 5 to the end in steps of 15, as in Vixie cron.
            (a, if item.contains('/') { field.max } else { a })
        };
        values.extend((lo..=hi).step_by(step as usize));
    }
    Ok(Parsed { values, star })
}

fn list(values: &BTreeSet<u32>, field: &Field) -> String {
    if values.len() as u32 == field.max - field.min + 1 {
        return "*".into();
    }
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn expand_shorthand(expression: &str) -> Result<&str, CronError> {
    Ok(match expression {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        other if other.starts_with('@') => {
            return Err(CronError {
                message: format!("unknown shorthand `{other}`"),
                hint: Some("use @hourly, @daily, @weekly, @monthly or @yearly".into()),
            })
        }
        other => other,
    })
}

impl Schedule {
    /// Parses a 5-field crontab expression (`min hour dom mon dow`), a 6-field
    /// one with leading seconds, or an `@hourly`-style shorthand.
    pub fn parse(expression: &str, timezone: Tz) -> Result<Schedule, CronError> {
        let bad = |message: String| CronError {
            message,
            hint: None,
        };
        let expanded = expand_shorthand(expression.trim())?;
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(CronError {
                    message: format!("has {n} fields, expected 5 (minute hour day-of-month month day-of-week) or 6 (with leading seconds)"),
                    hint: Some("e.g. \"0 3 * * *\" for 03:00 every day, or @hourly".into()),
                })
            }
        };
        let second = parse_field(second, &SECOND).map_err(bad)?;
        let minute = parse_field(rest[0], &MINUTE).map_err(bad)?;
        let hour = parse_field(rest[1], &HOUR).map_err(bad)?;
        let dom = parse_field(rest[2], &DAY_OF_MONTH).map_err(bad)?;
        let month = parse_field(rest[3], &MONTH).map_err(bad)?;
        let mut dow = parse_field(rest[4], &DAY_OF_WEEK).map_err(bad)?;
        if dow.values.remove(&7) {
            dow.values.insert(0);
        }
        let dow_list = if dow.values.len() == 7 {
            "*".to_string()
        } else {
            let names: Vec<&str> = dow
                .values
                .iter()
                .map(|d| WEEKDAY_NAMES[*d as usize])
                .collect();
            names.join(",")
        };
        let head = format!(
            "{} {} {}",
            list(&second.values, &SECOND),
            list(&minute.values, &MINUTE),
            list(&hour.values, &HOUR)
        );
        let month_list = list(&month.values, &MONTH);
        let dom_list = list(&dom.values, &DAY_OF_MONTH);
        let texts = if !dom.star && !dow.star {
            // crontab: both restricted means either matches.
            vec![
                format!("{head} {dom_list} {month_list} *"),
                format!("{head} * {month_list} {dow_list}"),
            ]
        } else {
            vec![format!("{head} {dom_list} {month_list} {dow_list}")]
        };
        let mut crons = Vec::new();
        for text in texts {
            let parsed = cron::Schedule::from_str(&text)
                .map_err(|e| bad(format!("is not a valid cron expression: {e}")))?;
            crons.push(parsed);
        }
        let schedule = Schedule {
            expression: expression.trim().to_string(),
            timezone,
            crons,
        };
        if schedule.next_runs(reference_instant(), 1).is_empty() {
            return Err(CronError {
                message: "never fires (no date matches its day-of-month and month)".into(),
                hint: Some(
                    "e.g. February has no 30th or 31st; check the day-of-month and month fields"
                        .into(),
                ),
            });
        }
        Ok(schedule)
    }

    /// The expression as written in the plan.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The next `n` runs strictly after `after`, in UTC.
    pub fn next_runs(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        let mut runs: Vec<DateTime<Utc>> = self
            .crons
            .iter()
            .flat_map(|c| c.after(&local).take(n).map(|t| t.with_timezone(&Utc)))
            .collect();
        runs.sort();
        runs.dedup();
        runs.truncate(n);
        runs
    }

    /// The runs [`Schedule::longest_gap`] and [`Schedule::wall_clock_gaps`]
    /// look at, in UTC: every run after `from` up to and including the
    /// first at least a year on and the `min_runs`-th, capped at 10 000.
    /// Each cron stops there rather than at the cap: every plan load asks
    /// (every `wal-push` and `wal-fetch`), and 10 000 runs of a daily
    /// backup (27 years of them) took a plan load from 6 to 16 ms of CPU.
    fn runs_for_gaps(&self, from: DateTime<Utc>, min_runs: usize) -> Vec<DateTime<Utc>> {
        const CAP: usize = 10_000;
        let cap = CAP.max(min_runs);
        let local = from.with_timezone(&self.timezone);
        let year_end = from + chrono::Duration::days(366);
        let mut runs = Vec::new();
        for c in &self.crons {
            for (count, t) in c.after(&local).take(cap).enumerate() {
                let t = t.with_timezone(&Utc);
                runs.push(t);
                if count + 1 >= min_runs && t >= year_end {
                    break;
                }
            }
        }
        runs.sort();
        runs.dedup();
        runs.truncate(cap);
        runs
    }

    /// The longest gap between consecutive runs, over at least `min_runs` runs
    /// and at least a year (so DST changes and short months are seen) from
    /// `from`, capped at 10 000 runs.
    pub fn longest_gap(&self, from: DateTime<Utc>, min_runs: usize) -> chrono::Duration {
        let runs = self.runs_for_gaps(from, min_runs);
        let year_end = from + chrono::Duration::days(366);
        let mut longest = chrono::Duration::zero();
        for (i, pair) in runs.windows(2).enumerate() {
            longest = longest.max(pair[1] - pair[0]);
            if i + 2 >= min_runs && pair[1] >= year_end {
                break;
            }
        }
        longest
    }
    /// Wall-clock gaps between consecutive runs (in the schedule's timezone,
    /// so a daylight-saving change does not stretch a daily gap to 25 hours),
    /// over at least `min_runs` runs and at least a year from `from`, capped
    /// at 10 000 runs.
    pub fn wall_clock_gaps(&self, from: DateTime<Utc>, min_runs: usize) -> Vec<chrono::Duration> {
        let runs = self.runs_for_gaps(from, min_runs);
        let year_end = from + chrono::Duration::days(366);
        let mut gaps = Vec::new();
        for (i, pair) in runs.windows(2).enumerate() {
            let a = pair[0].with_timezone(&self.timezone).naive_local();
            let b = pair[1].with_timezone(&self.timezone).naive_local();
            gaps.push((b - a).max(chrono::Duration::zero()));
            if i + 2 >= min_runs && pair[1] >= year_end {
                break;
            }
        }
        gaps
    }
}

/// Fixed instant validation measures schedules from, so a plan that loads
/// today loads tomorrow. A leap year, so `29 2` schedules fire.
pub(crate) fn reference_instant() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
        .expect("constant is RFC 3339")
        .with_timezone(&Utc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Weekday};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn weekdays(expr: &str) -> Vec<Weekday> {
        let s = Schedule::parse(expr, Tz::UTC).unwrap();
        s.next_runs(at("2026-01-01T00:00:00Z"), 7)
            .iter()
            .map(|t| t.weekday())
            .collect()
    }

    #[test]
    fn crontab_day_one_is_monday_not_sunday() {
        let s = Schedule::parse("0 3 * * 1", Tz::UTC).unwrap();
        // 2026-01-01 is a Thursday; the next Monday is the 5th.
        let runs = s.next_runs(at("2026-01-01T00:00:00Z"), 2);
        assert_eq!(
            runs,
            vec![at("2026-01-05T03:00:00Z"), at("2026-01-12T03:00:00Z")]
        );
    }

    #[test]
    fn sunday_is_both_zero_and_seven() {
        assert!(weekdays("0 3 * * 0").iter().all(|d| *d == Weekday::Sun));
        assert!(weekdays("0 3 * * 7").iter().all(|d| *d == Weekday::Sun));
        assert!(weekdays("0 3 * * SUN").iter().all(|d| *d == Weekday::Sun));
    }

    #[test]
    fn weekday_ranges_lists_steps_and_names_translate() {
        let mut five = weekdays("0 3 * * 1-5");
        five.sort_by_key(|d| d.num_days_from_monday());
        five.dedup();
        assert_eq!(
            five,
            vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri
            ]
        );
        let mut list = weekdays("0 3 * * 6,0");
        list.sort_by_key(|d| d.num_days_from_monday());
        list.dedup();
        assert_eq!(list, vec![Weekday::Sat, Weekday::Sun]);
        let mut step = weekdays("0 3 * * */2"); // 0,2,4,6 = Sun, Tue, Thu, Sat
        step.sort_by_key(|d| d.num_days_from_monday());
        step.dedup();
        assert_eq!(
            step,
            vec![Weekday::Tue, Weekday::Thu, Weekday::Sat, Weekday::Sun]
        );
        let mut names = weekdays("0 3 * * mon-wed");
        names.sort_by_key(|d| d.num_days_from_monday());
        names.dedup();
        assert_eq!(names, vec![Weekday::Mon, Weekday::Tue, Weekday::Wed]);
    }

    #[test]
    fn restricted_day_of_month_and_week_fire_on_either_as_in_crontab() {
        // 1st of the month OR any Monday.
        let s = Schedule::parse("0 0 1 * 1", Tz::UTC).unwrap();
        let runs = s.next_runs(at("2026-01-01T00:00:00Z"), 3);
        assert_eq!(
            runs,
            vec![
                at("2026-01-05T00:00:00Z"),
                at("2026-01-12T00:00:00Z"),
                at("2026-01-19T00:00:00Z")
            ]
        );
        let feb = s.next_runs(at("2026-01-27T00:00:00Z"), 2);
        assert_eq!(
            feb,
            vec![at("2026-02-01T00:00:00Z"), at("2026-02-02T00:00:00Z")]
        );
    }

    #[test]
    fn six_fields_carry_seconds_and_shorthands_expand() {
        let s = Schedule::parse("30 15 * * * *", Tz::UTC).unwrap();
        let run = s.next_runs(at("2026-01-01T00:00:00Z"), 1)[0];
        assert_eq!((run.minute(), run.second()), (15, 30));
        let hourly = Schedule::parse("@hourly", Tz::UTC).unwrap();
        assert_eq!(
            hourly.next_runs(at("2026-01-01T00:10:00Z"), 2),
            vec![at("2026-01-01T01:00:00Z"), at("2026-01-01T02:00:00Z")]
        );
        let monthly = Schedule::parse("@monthly", Tz::UTC).unwrap();
        assert_eq!(
            monthly.next_runs(at("2026-01-15T00:00:00Z"), 1),
            vec![at("2026-02-01T00:00:00Z")]
        );
    }

    #[test]
    fn runs_follow_the_timezone() {
        let s = Schedule::parse("0 3 * * *", chrono_tz::Europe::Berlin).unwrap();
        // Winter: UTC+1; summer: UTC+2.
        assert_eq!(
            s.next_runs(at("2026-01-10T00:00:00Z"), 1),
            vec![at("2026-01-10T02:00:00Z")]
        );
        assert_eq!(
            s.next_runs(at("2026-07-10T00:00:00Z"), 1),
            vec![at("2026-07-10T01:00:00Z")]
        );
    }

    #[test]
    fn out_of_range_and_malformed_fields_are_named() {
        let err = |e: &str| Schedule::parse(e, Tz::UTC).unwrap_err().message;
        assert_eq!(err("61 * * * *"), "minute 61 out of range 0-59");
        assert_eq!(err("0 24 * * *"), "hour 24 out of range 0-23");
        assert_eq!(err("0 0 0 * *"), "day of month 0 out of range 1-31");
        assert_eq!(err("0 0 * 13 *"), "month 13 out of range 1-12");
        assert_eq!(err("0 0 * * 8"), "day of week 8 out of range 0-7");
        assert!(err("0 0 * * funday").contains("sun, mon"));
        assert!(err("* * *").contains("has 3 fields"));
        assert!(err("*/0 * * * *").contains("step"));
        assert!(err("@fortnightly").contains("unknown shorthand"));
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused() {
        let e = Schedule::parse("0 0 31 2 *", Tz::UTC).unwrap_err();
        assert!(e.message.contains("never fires"), "{e:?}");
        assert!(
            Schedule::parse("0 0 29 2 *", Tz::UTC).is_ok(),
            "leap days do fire"
        );
    }

    #[test]
    fn gaps_from_the_runs_each_cron_needs_equal_those_from_ten_thousand_runs() {
        // What `runs_for_gaps` replaced: 10 000 runs of every cron, merged.
        fn old_wall_clock_gaps(
            s: &Schedule,
            from: DateTime<Utc>,
            min_runs: usize,
        ) -> Vec<chrono::Duration> {
            let runs = s.next_runs(from, 10_000.max(min_runs));
            let year_end = from + chrono::Duration::days(366);
            let mut gaps = Vec::new();
            for (i, pair) in runs.windows(2).enumerate() {
                let a = pair[0].with_timezone(&s.timezone).naive_local();
                let b = pair[1].with_timezone(&s.timezone).naive_local();
                gaps.push((b - a).max(chrono::Duration::zero()));
                if i + 2 >= min_runs && pair[1] >= year_end {
                    break;
                }
            }
            gaps
        }
        for (expr, tz) in [
            ("0 1 * * *", Tz::UTC),
            ("@hourly", Tz::UTC),
            ("*/5 * * * *", Tz::UTC),
            ("30 2 * * *", Tz::Europe__Berlin),
            ("0 0 29 2 *", Tz::UTC),
            ("0 0 31 * *", Tz::America__New_York),
            ("0 3 * * 1-5", Tz::UTC),
            ("0 9,17 1,15 * *", Tz::Asia__Tokyo),
        ] {
            let s = Schedule::parse(expr, tz).unwrap();
            for min_runs in [1, 3, 400] {
                assert_eq!(
                    s.wall_clock_gaps(reference_instant(), min_runs),
                    old_wall_clock_gaps(&s, reference_instant(), min_runs),
                    "{expr} in {tz}, at least {min_runs} runs"
                );
            }
        }
    }

    #[test]
    fn longest_gap_sees_short_months_and_leap_years() {
        let hourly = Schedule::parse("@hourly", Tz::UTC).unwrap();
        assert_eq!(
            hourly.longest_gap(reference_instant(), 400),
            chrono::Duration::hours(1)
        );
        let leap = Schedule::parse("0 0 29 2 *", Tz::UTC).unwrap();
        assert_eq!(
            leap.longest_gap(reference_instant(), 3).num_days(),
            365 * 4 + 1
        );
        let monthly = Schedule::parse("0 0 31 * *", Tz::UTC).unwrap();
        // Months with a 31st: Jul 31 → Aug 31 is 31 days, but Aug 31 → Oct 31 is 61.
        assert_eq!(monthly.longest_gap(reference_instant(), 400).num_days(), 61);
    }
}
