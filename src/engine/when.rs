//! Reading a restore time (`--at`) the way on-call has it at hand: pasted
//! from psql (`2026-12-01 23:50:36.123456+00`), from a server log
//! (`2026-12-01 23:50:36.123 UTC`), from an incident chat in RFC 3339, or as
//! a bare wall-clock time in the plan's timezone. A bare time that the
//! timezone skips (clocks going forward) or repeats (going back) is refused
//! with both candidates named rather than guessed: restoring to the wrong
//! hour is worse than asking.

use chrono::{
    DateTime, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc,
};
use chrono_tz::Tz;

/// What a time on the command line came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTime {
    pub at: DateTime<Utc>,
    /// Set when holdfast assumed something the text did not say (the
    /// timezone of a bare time), for the CLI to print.
    pub note: Option<String>,
}

/// The forms accepted, for every error.
const EXAMPLES: &str = "write it as 2026-02-23T18:55:59Z, as psql prints it (2026-02-23 18:55:59.123456+00, +05:30, -0800, UTC), or as a bare 2026-02-23 18:55:59 in the plan's timezone";

#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    #[error("{text:?} is not a time: {why}; {EXAMPLES}")]
    NotATime { text: String, why: String },
    #[error("{text:?} does not exist in {tz} (the clocks skip it); say which you mean: {earlier} or {later}")]
    Gap {
        text: String,
        tz: Tz,
        earlier: String,
        later: String,
    },
    #[error("{text:?} happens twice in {tz} (the clocks go back over it); say which you mean: {first} or {second}")]
    Ambiguous {
        text: String,
        tz: Tz,
        first: String,
        second: String,
    },
}

impl crate::error::HasExit for TimeError {
    fn exit(&self) -> crate::error::Exit {
        crate::error::Exit::Usage
    }
}

/// Reads `text` as an instant; a time without a zone is read in `tz` (the
/// plan's `schedule.timezone`) and the note says which offset was assumed.
pub fn parse_time(text: &str, tz: Tz) -> Result<ParsedTime, TimeError> {
    let bad = |why: &str| TimeError::NotATime {
        text: text.to_string(),
        why: why.to_string(),
    };
    let s = text.trim();
    let (date, rest) = s
        .split_at_checked(10)
        .ok_or_else(|| bad("it needs a date and a time, YYYY-MM-DD HH:MM:SS"))?;
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map_err(|e| bad(&format!("the date is not YYYY-MM-DD ({e})")))?;
    let rest = rest
        .strip_prefix(['T', 't'])
        .or_else(|| rest.strip_prefix(' ').map(str::trim_start))
        .ok_or_else(|| {
            bad("the date must be followed by `T` or a space and a time, e.g. 2026-02-23 18:55:59")
        })?;
    let time_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_len);
    let time = parse_clock(time).ok_or_else(|| {
        bad(&format!(
            "{time:?} is not a time of day (HH:MM, HH:MM:SS or HH:MM:SS.ffffff)"
        ))
    })?;
    let local = date.and_time(time);
    let zone = zone.trim();
    if zone.is_empty() {
        let at = resolve(text, local, tz)?;
        let offset = tz.offset_from_utc_datetime(&at.naive_utc()).fix();
        return Ok(ParsedTime {
            at,
            note: Some(format!(
                "{text:?} has no zone: read in the plan's timezone {tz} (schedule.timezone) as {offset}, i.e. {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )),
        });
    }
    if let Some(offset) = parse_offset(zone) {
        let offset = offset.ok_or_else(|| {
            bad(&format!(
                "the offset {zone:?} is not +HH, +HHMM or +HH:MM (at most 15 hours)"
            ))
        })?;
        let at = offset
            .from_local_datetime(&local)
            .single()
            .ok_or_else(|| bad("the time is out of range"))?;
        return Ok(ParsedTime {
            at: at.with_timezone(&Utc),
            note: None,
        });
    }
    let named: Tz = zone.parse().map_err(|_| {
        bad(&format!(
            "{zone:?} is not a zone (Z, UTC, GMT, an offset such as +05:30, or an IANA name such as Europe/Berlin)"
        ))
    })?;
    Ok(ParsedTime {
        at: resolve(text, local, named)?,
        note: None,
    })
}

/// `HH:MM`, `HH:MM:SS`, `HH:MM:SS.f…` (up to nanoseconds).
fn parse_clock(s: &str) -> Option<NaiveTime> {
    let (hms, frac) = match s.split_once('.') {
        Some((hms, frac))
            if !frac.is_empty() && frac.len() <= 9 && frac.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (hms, Some(frac))
        }
        Some(_) => return None,
        None => (s, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    if !(2..=3).contains(&parts.len()) || (parts.len() == 2 && frac.is_some()) {
        return None;
    }
    let field = |p: &str| {
        (p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    let h = field(parts[0])?;
    let m = field(parts[1])?;
    let sec = parts.get(2).map_or(Some(0), |p| field(p))?;
    let nanos = frac.map_or(0, |f| {
        f.parse::<u32>().unwrap_or(0) * 10u32.pow(9 - f.len() as u32)
    });
    NaiveTime::from_hms_nano_opt(h, m, sec, nanos)
}

/// `Z`, `UTC`, `GMT` and numeric offsets. `None`: not an offset at all;
/// `Some(None)`: looks like one but is malformed.
fn parse_offset(zone: &str) -> Option<Option<FixedOffset>> {
    if ["z", "utc", "gmt"]
        .iter()
        .any(|z| zone.eq_ignore_ascii_case(z))
    {
        return Some(FixedOffset::east_opt(0));
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = &zone[1..];
    if !digits.bytes().all(|b| b.is_ascii_digit() || b == b':') {
        return Some(None);
    }
    let (h, m) = match (digits.len(), digits.split_once(':')) {
        (2, None) => (digits, "00"),
        (4, None) => digits.split_at(2),
        (5, Some((h, m))) if h.len() == 2 => (h, m),
        _ => return Some(None),
    };
    let (Ok(h), Ok(m)) = (h.parse::<i32>(), m.parse::<i32>()) else {
        return Some(None);
    };
    if h > 15 || m > 59 {
        return Some(None);
    }
    Some(FixedOffset::east_opt(sign * (h * 3600 + m * 60)))
}

/// A wall-clock time in `tz`, refused where the zone skips or repeats it.
fn resolve(text: &str, local: NaiveDateTime, tz: Tz) -> Result<DateTime<Utc>, TimeError> {
    let show = |t: DateTime<Tz>| {
        format!(
            "{} ({})",
            t.fixed_offset()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
            t.with_timezone(&Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    };
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Err(TimeError::Ambiguous {
            text: text.to_string(),
            tz,
            first: show(a),
            second: show(b),
        }),
        LocalResult::None => {
            // The offsets in force on either side of the jump: the same
            // wall-clock reading under each names the two instants meant.
            let day = chrono::Duration::days(2);
            let before = tz.offset_from_utc_datetime(&(local - day)).fix();
            let after = tz.offset_from_utc_datetime(&(local + day)).fix();
            let under = |o: FixedOffset| {
                format!(
                    "{}{o} ({})",
                    local.format("%Y-%m-%dT%H:%M:%S%.f"),
                    (local - o)
                        .and_utc()
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                )
            };
            Err(TimeError::Gap {
                text: text.to_string(),
                tz,
                earlier: under(before),
                later: under(after),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn at(text: &str) -> ParsedTime {
        parse_time(text, chrono_tz::Europe::Berlin)
            .unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
    }

    #[test]
    fn what_psql_and_server_logs_print_is_read_with_its_zone() {
        let cases = [
            ("2026-12-01 23:50:36+00", "2026-12-01T23:50:36Z"),
            (
                "2026-12-01 23:50:36.123456+00",
                "2026-12-01T23:50:36.123456Z",
            ),
            ("2026-12-01 23:50:36.5+00:00", "2026-12-01T23:50:36.5Z"),
            ("2026-12-01T23:50:36Z", "2026-12-01T23:50:36Z"),
            ("2026-12-01t23:50:36z", "2026-12-01T23:50:36Z"),
            ("  2026-12-01 23:50:36 UTC ", "2026-12-01T23:50:36Z"),
            ("2026-12-01 23:50:36.123 GMT", "2026-12-01T23:50:36.123Z"),
            (
                "2026-12-01 23:50:36.123456789Z",
                "2026-12-01T23:50:36.123456789Z",
            ),
            ("2026-12-01 23:50:36+05", "2026-12-01T18:50:36Z"),
            ("2026-12-01 23:50:36+05:30", "2026-12-01T18:20:36Z"),
            ("2026-12-01 23:50:36-0800", "2026-12-02T07:50:36Z"),
            ("2026-12-01 23:50-08", "2026-12-02T07:50:00Z"),
            (
                "2026-12-01 23:50:36 America/New_York",
                "2026-12-02T04:50:36Z",
            ),
        ];
        for (text, want) in cases {
            let p = at(text);
            assert_eq!(p.at, utc(want), "{text:?}");
            assert_eq!(p.note, None, "{text:?} carries its zone: no note");
        }
    }

    #[test]
    fn a_bare_time_is_read_in_the_plans_timezone_and_the_note_names_the_offset() {
        let winter = at("2026-12-01 23:50:36");
        assert_eq!(winter.at, utc("2026-12-01T22:50:36Z"));
        let note = winter.note.unwrap();
        assert!(
            note.contains("Europe/Berlin")
                && note.contains("+01:00")
                && note.contains("2026-12-01T22:50:36Z"),
            "{note}"
        );
        let summer = at("2026-07-01T12:00:00.25");
        assert_eq!(summer.at, utc("2026-07-01T10:00:00.25Z"));
        assert!(summer.note.unwrap().contains("+02:00"));
        let in_utc = parse_time("2026-07-01 12:00", chrono_tz::UTC).unwrap();
        assert_eq!(in_utc.at, utc("2026-07-01T12:00:00Z"));
        assert!(in_utc.note.unwrap().contains("UTC"));
    }

    #[test]
    fn a_local_time_the_clocks_skip_or_repeat_is_refused_naming_both_candidates() {
        let tz = chrono_tz::Europe::Berlin;
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let gap = parse_time("2026-03-29 02:30:00", tz)
            .unwrap_err()
            .to_string();
        assert!(
            gap.contains("does not exist in Europe/Berlin")
                && gap.contains("2026-03-29T02:30:00+01:00 (2026-03-29T01:30:00Z)")
                && gap.contains("2026-03-29T02:30:00+02:00 (2026-03-29T00:30:00Z)"),
            "{gap}"
        );
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET.
        let twice = parse_time("2026-10-25 02:30", tz).unwrap_err().to_string();
        assert!(
            twice.contains("happens twice in Europe/Berlin")
                && twice.contains("2026-10-25T02:30:00+02:00 (2026-10-25T00:30:00Z)")
                && twice.contains("2026-10-25T02:30:00+01:00 (2026-10-25T01:30:00Z)"),
            "{twice}"
        );
        // The same wall-clock time with its offset is not ambiguous.
        assert_eq!(
            parse_time("2026-10-25 02:30+01", tz).unwrap().at,
            utc("2026-10-25T01:30:00Z")
        );
    }

    #[test]
    fn what_is_not_a_time_is_refused_with_the_forms_that_are() {
        for (text, why) in [
            ("yesterday", "needs a date and a time"),
            ("2026-12-01", "followed by `T` or a space"),
            ("2026-13-01 10:00:00Z", "the date is not YYYY-MM-DD"),
            ("2026-12-01_10:00:00Z", "followed by `T` or a space"),
            ("2026-12-01 25:00:00Z", "is not a time of day"),
            ("2026-12-01 10:00:00.Z", "is not a time of day"),
            ("2026-12-01 10:00:00+5", "the offset \"+5\""),
            ("2026-12-01 10:00:00+16:00", "the offset"),
            ("2026-12-01 10:00:00+-5", "the offset"),
            ("2026-12-01 10:00:00 CEST", "\"CEST\" is not a zone"),
        ] {
            let e = parse_time(text, chrono_tz::UTC)
                .expect_err(text)
                .to_string();
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(
                e.contains("2026-02-23 18:55:59.123456+00"),
                "{text:?}: the error keeps the example: {e}"
            );
        }
    }
}
