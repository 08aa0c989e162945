//! PostgreSQL's WAL as holdfast sees it: which file names the server
//! archives, locations (LSNs), segments, timelines and their histories, and
//! `wal-push` / `wal-fetch` (`archive_command` / `restore_command`) over the
//! repository's log archive (`repository::log_archive`, objects
//! `wal/<plan>/<file name>`). WAL file names carry the timeline, so the
//! listing of `wal/<plan>/` is the archive in order.
//!
//! The rules PostgreSQL needs from these commands:
//! * push is idempotent for the same content and refuses other archived
//!   content under the same name (the log archive guarantees both);
//! * push fails (non-zero) on any error, so PostgreSQL keeps the segment and
//!   retries: nothing is dropped;
//! * push never fails because someone planted an object at a file's name:
//!   the file goes under an alternative name (`<file>.alt-<sha>`, see
//!   `log_archive::alternative_key`) and fetch reads it there;
//! * fetch distinguishes "not in the archive" (PostgreSQL then ends recovery
//!   or switches to streaming) from every other failure, which must stop
//!   recovery instead of ending it early at the wrong point. A name holding
//!   only foreign objects is "not in the archive": PostgreSQL asks for
//!   `N.history` files to choose its timeline, and a planted one must read
//!   as absent, not stop every restore.

use std::path::Path;

use crate::plan::PlanName;
use crate::repository::log_archive::{self, LogError, LogRetention, PushReport};
use crate::repository::ManifestHead;
use crate::store::{Retention, Store};

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("`{name}` is not a PostgreSQL WAL, history, backup or partial file name")]
    BadName { name: String },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// `wal/<plan>/`
pub fn wal_prefix(plan: &PlanName) -> String {
    format!("wal/{plan}/")
}

/// Checks `name` is a file PostgreSQL archives: `TTTTTTTTXXXXXXXXYYYYYYYY`
/// (optionally `.partial`), `TTTTTTTT.history`, or a `.backup` label.
pub fn check_name(name: &str) -> Result<(), WalError> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(name, 24)
        || name.strip_suffix(".partial").is_some_and(|s| hex(s, 24))
        || name.strip_suffix(".history").is_some_and(|s| hex(s, 8))
        || name
            .strip_suffix(".backup")
            .and_then(|s| s.split_once('.'))
            .is_some_and(|(seg, off)| hex(seg, 24) && hex(off, 8));
    if ok {
        Ok(())
    } else {
        Err(WalError::BadName {
            name: name.to_string(),
        })
    }
}

/// Archives the WAL file at `path` (`archive_command`).
pub async fn push(
    store: &dyn Store,
    crypto: &crate::repository::Crypto,
    plan: &PlanName,
    path: &Path,
    retention: Option<Retention>,
) -> Result<PushReport, WalError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    check_name(&name)?;
    let key = format!("{}{name}", wal_prefix(plan));
    Ok(log_archive::push(store, crypto, key, path, retention).await?)
}

/// [`push`] for a file's bytes already read, named `name`; `what` names
/// them in warnings. `wal-push-ahead` reads a file itself, to know it was
/// still waiting to be archived (so not yet recycled) when it was read.
pub async fn push_bytes(
    store: &dyn Store,
    crypto: &crate::repository::Crypto,
    plan: &PlanName,
    name: &str,
    raw: Vec<u8>,
    what: &str,
    retention: Option<Retention>,
) -> Result<PushReport, WalError> {
    check_name(name)?;
    let key = format!("{}{name}", wal_prefix(plan));
    Ok(log_archive::push_bytes(store, crypto, key, raw, what, retention).await?)
}

/// Restores archived file `name` to `dest` (`restore_command`), checked
/// against its SHA-256, written beside it and renamed into place. Returns
/// the bytes written and the object they came from.
pub async fn fetch(
    store: &dyn Store,
    crypto: &crate::repository::Crypto,
    plan: &PlanName,
    name: &str,
    dest: &Path,
) -> Result<(u64, String), WalError> {
    check_name(name)?;
    let key = format!("{}{name}", wal_prefix(plan));
    Ok(log_archive::fetch(store, crypto, key, dest).await?)
}

/// A WAL location (`X/Y` as PostgreSQL prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a WAL location (write it as PostgreSQL does, e.g. 0/3000148)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// PostgreSQL's default (and holdfast's assumed) WAL segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// One WAL segment: its timeline and number (LSN / segment size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub number: u64,
}

impl Segment {
    pub fn of(timeline: u32, lsn: Lsn, segment_size: u64) -> Segment {
        Segment {
            timeline,
            number: lsn.0 / segment_size,
        }
    }

    /// `TTTTTTTTXXXXXXXXYYYYYYYY`.
    pub fn name(&self, segment_size: u64) -> String {
        let per_id = 0x1_0000_0000u64 / segment_size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_id,
            self.number % per_id
        )
    }

    pub fn parse(name: &str, segment_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let per_id = 0x1_0000_0000u64 / segment_size;
        let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
        let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
        let lo = u64::from_str_radix(&name[16..], 16).ok()?;
        Some(Segment {
            timeline,
            number: hi * per_id + lo,
        })
    }

    /// The (log id, segment) pair a WAL segment file name encodes: it orders
    /// positions across timelines whatever the segment size.
    pub fn position_of(name: &str) -> Option<(u32, u32)> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let hi = u32::from_str_radix(name.get(8..16)?, 16).ok()?;
        let lo = u32::from_str_radix(name.get(16..24)?, 16).ok()?;
        Some((hi, lo))
    }

    /// The first location after this segment.
    pub fn end(&self, segment_size: u64) -> Lsn {
        Lsn((self.number + 1) * segment_size)
    }
}

/// One step of a timeline's history: `timeline` was followed from its
/// parent's switch point `begins` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineStep {
    pub timeline: u32,
    pub begins: Lsn,
}

/// Parses `TTTTTTTT.history` of `timeline`: lines `parent<TAB>switchpoint<TAB>reason`.
/// Returns the ancestry, oldest first, ending with `timeline` itself.
pub fn parse_history(timeline: u32, text: &str) -> Result<Vec<TimelineStep>, String> {
    let mut steps = Vec::new();
    let mut begins = Lsn(0);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(parent), Some(switch)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "line {}: `{line}` is not `parent switchpoint reason`",
                i + 1
            ));
        };
        let parent: u32 = parent
            .parse()
            .map_err(|_| format!("line {}: `{parent}` is not a timeline", i + 1))?;
        let switch: Lsn = switch.parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        steps.push(TimelineStep {
            timeline: parent,
            begins,
        });
        begins = switch;
    }
    steps.push(TimelineStep { timeline, begins });
    Ok(steps)
}

/// The timeline a segment number is read from when following `ancestry`
/// (as PostgreSQL does: the newest timeline that had begun by that segment).
pub fn timeline_for(ancestry: &[TimelineStep], number: u64, segment_size: u64) -> u32 {
    ancestry
        .iter()
        .rev()
        .find(|s| s.begins.0 / segment_size <= number)
        .map(|s| s.timeline)
        .unwrap_or(ancestry[0].timeline)
}

/// Prune's rule for archived WAL: a file (segment, `.partial`, `.backup`)
/// wholly before the first segment of the oldest remaining base backup can
/// no longer be replayed by any restore. Timeline histories are kept: they
/// are tiny and every later timeline's history builds on them. Without a
/// remaining base backup nothing is expired.
pub struct WalRetention {
    pub plan: PlanName,
}

impl WalRetention {
    /// The position of the first segment the oldest remaining base backup needs.
    fn oldest_needed(remaining: &[&ManifestHead]) -> Option<(u32, u32)> {
        remaining
            .iter()
            .filter_map(|m| super::meta::PgSnapshotMeta::of(&m.source))
            .filter_map(|meta| Segment::position_of(meta.start_wal_file.as_deref()?))
            .min()
    }
}

impl LogRetention for WalRetention {
    fn prefix(&self) -> String {
        wal_prefix(&self.plan)
    }

    fn expiry(&self, remaining: &[&ManifestHead]) -> Box<dyn Fn(&str) -> bool + Send + Sync> {
        let Some(oldest) = Self::oldest_needed(remaining) else {
            return Box::new(|_| false);
        };
        Box::new(move |name| {
            if name.ends_with(".history") {
                return false;
            }
            // Positions compare across timelines: any timeline's file before
            // the oldest needed position is unreachable.
            let file = name.split('.').next().unwrap_or_default();
            Segment::position_of(file).is_some_and(|p| p < oldest)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_locations_and_timelines_follow_postgres() {
        let size = DEFAULT_SEGMENT_SIZE;
        let lsn: Lsn = "1/2000028".parse().unwrap();
        assert_eq!(lsn.to_string(), "1/2000028");
        let seg = Segment::of(3, lsn, size);
        assert_eq!(seg.name(size), "000000030000000100000002");
        assert_eq!(Segment::parse(&seg.name(size), size), Some(seg));
        assert_eq!(seg.end(size).to_string(), "1/3000000");
        let history = parse_history(
            3,
            "1\t0/50000A8\tno recovery target specified\n\n2\t0/9000000\tbefore 2026-11-26\n",
        )
        .unwrap();
        assert_eq!(
            history.iter().map(|s| s.timeline).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(timeline_for(&history, 4, size), 1);
        // The segment holding a switch point is read from the new timeline.
        assert_eq!(timeline_for(&history, 5, size), 2);
        assert_eq!(timeline_for(&history, 9, size), 3);
        assert!(parse_history(2, "x y z").is_err());
        assert!("3000148".parse::<Lsn>().is_err());
    }

    #[test]
    fn names_postgres_archives_are_accepted_and_others_refused() {
        for ok in [
            "000000010000000000000003",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000004.partial",
        ] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "x",
            "../etc/passwd",
            "00000001000000000000000",
            "000000010000000000000003.zst",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
