//! The one wall clock that backup times, tier assignment, locks and prune
//! read. Rules that depend on the date (the first snapshot of a week or a
//! month, a lock that has ended) are tested by injecting the time instead of
//! waiting for it: debug builds honour `HOLDFAST_NOW` (RFC 3339); release
//! builds never read it, so a stray variable cannot move production time.

use chrono::{DateTime, Utc};

/// The variable debug builds read the current time from.
pub const NOW_VAR: &str = "HOLDFAST_NOW";

/// The current time: `HOLDFAST_NOW` in debug builds when set, else the
/// system clock.
///
/// # Panics
/// In debug builds only, when `HOLDFAST_NOW` is set but is not RFC 3339: a
/// test that means to inject a time must not silently run on the real one.
pub fn now() -> DateTime<Utc> {
    #[cfg(debug_assertions)]
    if let Some(at) = injected() {
        return at;
    }
    Utc::now()
}

/// Whether the time is injected (debug builds with `HOLDFAST_NOW` set):
/// checks against a clock the process does not own (an S3 server's
/// creation times) cannot hold then. Always false in release builds.
pub fn is_injected() -> bool {
    #[cfg(debug_assertions)]
    if std::env::var_os(NOW_VAR).is_some() {
        return true;
    }
    false
}

#[cfg(debug_assertions)]
fn injected() -> Option<DateTime<Utc>> {
    let raw = std::env::var(NOW_VAR).ok()?;
    match DateTime::parse_from_rfc3339(raw.trim()) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => panic!("{NOW_VAR}={raw:?} is not an RFC 3339 time: {e}"),
    }
}
