//! The WAL archive: PostgreSQL's `archive_command` (`holdfast wal-push`) and
//! `restore_command` (`holdfast wal-fetch`).
//!
//! Each file PostgreSQL archives (WAL segments, `.history` and `.backup`
//! files, `.partial` segments) is one write-once object
//! `wal/<plan>/<file name>`: a 48-byte header (`HFWAL001`, the raw length as
//! u64 little-endian, the raw SHA-256) and the file as one zstd frame. WAL
//! file names carry the timeline, so the listing of `wal/<plan>/` is the
//! archive in order.
//!
//! The rules PostgreSQL needs from these commands:
//! * push is idempotent: the same name with the same content succeeds again
//!   (PostgreSQL re-archives after a crash), and the same name with other
//!   content fails loudly, never overwriting;
//! * push fails (non-zero) on any error, so PostgreSQL keeps the segment and
//!   retries: nothing is dropped;
//! * fetch distinguishes "not in the archive" (PostgreSQL then ends recovery
//!   or switches to streaming) from every other failure, which must stop
//!   recovery instead of ending it early at the wrong point.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;

use crate::ids::Hash256;
use crate::plan::PlanName;
use crate::store::{PutOptions, Retention, Store, StoreError};

const MAGIC: &[u8; 8] = b"HFWAL001";
const HEADER: usize = 8 + 8 + 32;
/// WAL compresses well and arrives every few seconds on a busy server: a fast
/// level keeps `archive_command` from falling behind.
const LEVEL: i32 = 1;
/// The largest WAL file accepted (wal_segment_size is at most 1 GiB).
const MAX_RAW: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("`{name}` is not a PostgreSQL WAL, history, backup or partial file name")]
    BadName { name: String },
    #[error("unable to read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} is already archived with different content (archived SHA-256 {archived}, this file {pushed}); refusing to overwrite it. Two clusters may be archiving into one plan")]
    Conflict {
        key: String,
        archived: Hash256,
        pushed: Hash256,
    },
    #[error("{key} is not in the archive")]
    NotFound { key: String },
    #[error("{key} is corrupt: {why}")]
    Corrupt { key: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
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

fn encode(raw: &[u8]) -> (Hash256, Vec<u8>) {
    let sha = Hash256::digest(raw);
    let mut out = Vec::with_capacity(HEADER + raw.len() / 3);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha.0);
    let compressed = zstd::bulk::compress(raw, LEVEL).expect("zstd compresses in memory");
    out.extend_from_slice(&compressed);
    (sha, out)
}

/// The raw SHA-256 an archived object claims, from its header alone.
fn header_sha(key: &str, object: &[u8]) -> Result<(u64, Hash256), WalError> {
    let corrupt = |why: &str| WalError::Corrupt {
        key: key.to_string(),
        why: why.to_string(),
    };
    if object.len() < HEADER || &object[..8] != MAGIC {
        return Err(corrupt("no holdfast WAL header"));
    }
    let len = u64::from_le_bytes(object[8..16].try_into().expect("8 bytes"));
    if len > MAX_RAW {
        return Err(corrupt("its header claims more than 1 GiB"));
    }
    let sha = Hash256(object[16..48].try_into().expect("32 bytes"));
    Ok((len, sha))
}

/// Decodes an archived object and checks it against its header's SHA-256.
pub fn decode(key: &str, object: &[u8]) -> Result<Vec<u8>, WalError> {
    let (len, sha) = header_sha(key, object)?;
    let raw =
        zstd::bulk::decompress(&object[HEADER..], len as usize).map_err(|e| WalError::Corrupt {
            key: key.to_string(),
            why: format!("cannot decompress: {e}"),
        })?;
    if raw.len() as u64 != len {
        return Err(WalError::Corrupt {
            key: key.to_string(),
            why: format!("{} bytes decompressed, its header says {len}", raw.len()),
        });
    }
    let got = Hash256::digest(&raw);
    if got != sha {
        return Err(WalError::Corrupt {
            key: key.to_string(),
            why: format!("SHA-256 of the content is {got}, its header says {sha}"),
        });
    }
    Ok(raw)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub key: String,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub sha256: Hash256,
    /// The same file was already archived (a retry after a crash).
    pub already_archived: bool,
}

/// Archives the WAL file at `path`.
pub async fn push(
    store: &dyn Store,
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
    let raw = tokio::fs::read(path)
        .await
        .map_err(|source| WalError::Read {
            path: path.display().to_string(),
            source,
        })?;
    let (sha, object) = tokio::task::spawn_blocking(move || encode(&raw))
        .await
        .expect("WAL encoder panicked");
    let bytes = u64::from_le_bytes(object[8..16].try_into().expect("8 bytes"));
    let key = format!("{}{name}", wal_prefix(plan));
    let stored_bytes = object.len() as u64;
    let opts = PutOptions {
        sha256: Hash256::digest(&object),
        retention,
    };
    let already_archived = match store.put(&key, Bytes::from(object), &opts).await {
        Ok(()) => false,
        Err(StoreError::AlreadyExists { .. }) => {
            let existing = store.get(&key).await?;
            let (_, archived) = header_sha(&key, &existing)?;
            if archived != sha {
                return Err(WalError::Conflict {
                    key,
                    archived,
                    pushed: sha,
                });
            }
            true
        }
        Err(e) => return Err(e.into()),
    };
    Ok(PushReport {
        key,
        bytes,
        stored_bytes,
        sha256: sha,
        already_archived,
    })
}

/// Restores archived file `name` to `dest`, checked against its SHA-256,
/// written to a temporary name beside it and renamed into place.
pub async fn fetch(
    store: &dyn Store,
    plan: &PlanName,
    name: &str,
    dest: &Path,
) -> Result<u64, WalError> {
    check_name(name)?;
    let key = format!("{}{name}", wal_prefix(plan));
    let object = match store.get(&key).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return Err(WalError::NotFound { key }),
        Err(e) => return Err(e.into()),
    };
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let raw = decode(&key, &object)?;
        let tmp = dest.with_extension("holdfast-tmp");
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut f = std::fs::File::create(tmp)?;
            f.write_all(&raw)?;
            f.sync_all()?;
            std::fs::rename(tmp, &dest)
        };
        write(&tmp).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            WalError::Write {
                path: dest.display().to_string(),
                source,
            }
        })?;
        Ok(raw.len() as u64)
    })
    .await
    .expect("WAL writer panicked")
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

    #[test]
    fn objects_round_trip_and_damage_is_named() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (sha, object) = encode(&raw);
        assert_eq!(Hash256::digest(&raw), sha);
        assert_eq!(decode("wal/p/x", &object).unwrap(), raw);
        let mut bad = object.clone();
        let last = bad.len() - 10;
        bad[last] ^= 1;
        let err = decode("wal/p/x", &bad).unwrap_err().to_string();
        assert!(err.contains("wal/p/x is corrupt"), "{err}");
        assert!(decode("wal/p/x", &object[..20]).is_err());
    }
}
