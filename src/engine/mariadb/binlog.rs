//! MariaDB's binary logs as holdfast sees them: which file names are
//! binlogs (`<base>.NNNNNN`; the `.index` file is never archived), a
//! bounded, panic-free reader of their event headers (times, GTIDs, the end
//! of the last complete event, the Rotate event's next file), and the
//! reading side of their archive in the repository: objects
//! `binlog/<plan>/<file>.part-<start, 16 hex>` (bytes `[start, end)` of a
//! file, at most [`MAX_PART`] or one larger event) and, once the server has
//! rotated past a file, `binlog/<plan>/<file>`: its record ([`BinlogRecord`],
//! JSON listing the parts that tile it, with their and the file's SHA-256).
//! All are in the engine-neutral log-archive object format
//! (`repository::log_archive`), so sealing, foreign-object alternatives and
//! idempotence are the same as for PostgreSQL's WAL. A file is read back
//! into the caller's writer one part at a time, never whole in memory.
//!
//! Everything read back from the repository is hostile: each object is
//! size-capped and authenticated by the log archive before it is decoded
//! here (a record under [`MAX_RECORD`], before it is parsed), every field of
//! a record is checked before an offset from it is used, the event reader
//! never trusts a length further than the bytes it holds, and parts must
//! tile a file exactly from offset 0 (a gap, an overlap or a part that is
//! not what the record lists is refused, naming the object at fault).

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::Hash256;

use crate::plan::PlanName;
use crate::repository::log_archive::{self, LogError, LogRetention};
use crate::repository::{Crypto, ManifestHead, SourceRecord};
use crate::store::Store;

/// `\xfebin`, the first four bytes of every binlog (format v4).
pub const MAGIC: &[u8; 4] = b"\xfebin";
/// The v4 event header: timestamp u32, type u8, server_id u32, event_size
/// u32, log_pos u32, flags u16 (all little-endian).
pub const HEADER: usize = 19;
/// No event is larger than `max_allowed_packet` can be (1 GiB).
pub const MAX_EVENT: u32 = 1 << 30;
/// No binlog is accepted above 4 GiB (`max_binlog_size` is at most 1 GiB,
/// plus the last transaction, which may overshoot it).
pub const MAX_FILE: u64 = 4 << 30;

const ROTATE_EVENT: u8 = 4;
const GTID_EVENT: u8 = 162;

#[derive(Debug, thiserror::Error)]
pub enum BinlogError {
    #[error("`{name}` is not a binlog file name (`<base>.NNNNNN`: letters, digits, `_` or `-`, a dot, six or more digits)")]
    BadName { name: String },
    #[error("{what} is not a binlog: {why}")]
    Corrupt { what: String, why: String },
    #[error("binlog {file} of plan {plan} is not in the archive (neither a record nor parts)")]
    NotArchived { plan: PlanName, file: String },
    #[error("binlog {file}: {why}")]
    BadParts { file: String, why: String },
    #[error("{key} is not a sound binlog record: {why}")]
    BadRecord { key: String, why: String },
    #[error("{key} holds a whole binlog's raw bytes (the complete object of an older holdfast), not the record of its parts this version reads; it is refused, not guessed at")]
    OldStyle { key: String },
    #[error("unable to write binlog bytes read from {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl crate::error::HasExit for BinlogError {
    fn exit(&self) -> crate::error::Exit {
        match self {
            BinlogError::Log(e) => e.exit(),
            BinlogError::Store(e) => e.exit(),
            _ => crate::error::Exit::Failure,
        }
    }
}

/// A binlog file name: `<base>.<seq>` with at least six digits (MariaDB
/// pads to six and goes on counting past 999999).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinlogName {
    pub base: String,
    pub seq: u32,
    digits: usize,
}

impl BinlogName {
    pub fn parse(name: &str) -> Result<BinlogName, BinlogError> {
        let bad = || BinlogError::BadName {
            name: name.chars().take(200).collect(),
        };
        let (base, digits) = name.rsplit_once('.').ok_or_else(bad)?;
        let base_ok = !base.is_empty()
            && base.len() <= 64
            && base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let digits_ok =
            (6..=10).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        if !base_ok || !digits_ok {
            return Err(bad());
        }
        let seq: u32 = digits.parse().map_err(|_| bad())?;
        // Only MariaDB's own spelling: six digits, or exactly as many as the
        // number needs past 999999 (no `binlog.0000001`).
        let name = BinlogName {
            base: base.to_string(),
            seq,
            digits: digits.len(),
        };
        if name.canonical_digits() != digits.len() {
            return Err(bad());
        }
        Ok(name)
    }

    fn canonical_digits(&self) -> usize {
        self.seq.to_string().len().max(6)
    }

    /// The file `n` steps later in the sequence (`None` past u32).
    pub fn advance(&self, n: u32) -> Option<BinlogName> {
        let seq = self.seq.checked_add(n)?;
        let mut next = BinlogName {
            base: self.base.clone(),
            seq,
            digits: 0,
        };
        next.digits = next.canonical_digits();
        Some(next)
    }

    pub fn next(&self) -> Option<BinlogName> {
        self.advance(1)
    }

    /// The names strictly between `self` and `later` (same base), at most
    /// `max` of them: the files a gap is missing.
    pub fn between(&self, later: &BinlogName, max: usize) -> Vec<BinlogName> {
        if self.base != later.base || later.seq <= self.seq {
            return Vec::new();
        }
        (1..later.seq - self.seq)
            .take(max)
            .filter_map(|n| self.advance(n))
            .collect()
    }
}

impl std::fmt::Display for BinlogName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:0width$}", self.base, self.seq, width = self.digits)
    }
}

/// A MariaDB GTID, `domain-server-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl std::str::FromStr for Gtid {
    type Err = String;
    fn from_str(s: &str) -> Result<Gtid, String> {
        let bad = || format!("`{s}` is not a MariaDB GTID (domain-server-seq, e.g. 0-1-42)");
        let mut it = s.trim().splitn(3, '-');
        let (Some(d), Some(sv), Some(q)) = (it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        Ok(Gtid {
            domain: d.parse().map_err(|_| bad())?,
            server: sv.parse().map_err(|_| bad())?,
            seq: q.parse().map_err(|_| bad())?,
        })
    }
}

/// What the event headers of (a prefix of) one binlog say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Complete events read.
    pub events: u64,
    /// Timestamps (Unix seconds) of the first and last complete events
    /// that carry one (the server's artificial events carry 0).
    pub first_time: Option<u32>,
    pub last_time: Option<u32>,
    pub first_gtid: Option<Gtid>,
    pub last_gtid: Option<Gtid>,
    pub gtid_count: u64,
    /// The offset just past the last complete event (4 for a file holding
    /// only the magic): a growing file may end mid-event.
    pub end: u64,
    /// The next file a Rotate event names.
    pub rotate_to: Option<String>,
}

impl Scan {
    pub fn first_at(&self) -> Option<DateTime<Utc>> {
        self.first_time.and_then(unix)
    }
    pub fn last_at(&self) -> Option<DateTime<Utc>> {
        self.last_time.and_then(unix)
    }
}

fn unix(t: u32) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t as i64, 0).single()
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a whole binlog (or its beginning): the magic, then events.
/// `what` names the bytes in errors (a spool file, an archive object).
pub fn scan(what: &str, data: &[u8]) -> Result<Scan, BinlogError> {
    if data.len() < MAGIC.len() {
        if MAGIC.starts_with(data) {
            return Ok(Scan::default());
        }
        return Err(BinlogError::Corrupt {
            what: what.into(),
            why: "it does not start with the binlog magic \\xfebin".into(),
        });
    }
    if &data[..4] != MAGIC {
        return Err(BinlogError::Corrupt {
            what: what.into(),
            why: "it does not start with the binlog magic \\xfebin".into(),
        });
    }
    let mut scan = Scan {
        end: 4,
        ..Scan::default()
    };
    scan_more(what, &mut scan, &data[4..], 4)?;
    Ok(scan)
}

/// Reads events from `data`, which starts at file offset `offset`, an event
/// boundary (a scan's `end`), into `scan`; stops at the first incomplete
/// event. A header that cannot be an event's is an error naming `what` and
/// the offset.
pub fn scan_more(what: &str, scan: &mut Scan, data: &[u8], offset: u64) -> Result<(), BinlogError> {
    let mut at = 0usize;
    while data.len() - at >= HEADER {
        let h = &data[at..at + HEADER];
        let time = u32_at(h, 0).unwrap_or(0);
        let kind = h[4];
        let server = u32_at(h, 5).unwrap_or(0);
        let size = u32_at(h, 9).unwrap_or(0);
        if (size as usize) < HEADER || size > MAX_EVENT {
            return Err(BinlogError::Corrupt {
                what: what.into(),
                why: format!(
                    "the event at offset {} claims {size} bytes (an event is 19 bytes to 1 GiB)",
                    offset + at as u64
                ),
            });
        }
        let size = size as usize;
        if data.len() - at < size {
            break;
        }
        let body = &data[at + HEADER..at + size];
        scan.events += 1;
        if time != 0 {
            scan.first_time.get_or_insert(time);
            scan.last_time = Some(time);
        }
        match kind {
            GTID_EVENT => {
                if let (Some(seq), Some(domain)) = (u64_at(body, 0), u32_at(body, 8)) {
                    let g = Gtid {
                        domain,
                        server,
                        seq,
                    };
                    scan.first_gtid.get_or_insert(g);
                    scan.last_gtid = Some(g);
                    scan.gtid_count += 1;
                }
            }
            ROTATE_EVENT => {
                // Position u64, then the name, then (with binlog_checksum)
                // a 4-byte CRC: the name is whichever reading is valid.
                if let Some(name) = body.get(8..) {
                    let candidates = [name, &name[..name.len().saturating_sub(4)]];
                    scan.rotate_to = candidates
                        .iter()
                        .filter_map(|n| std::str::from_utf8(n).ok())
                        .find(|n| BinlogName::parse(n).is_ok())
                        .map(str::to_owned);
                }
            }
            _ => {}
        }
        at += size;
        scan.end = offset + at as u64;
    }
    Ok(())
}

/// `binlog/<plan>/`
pub fn binlog_prefix(plan: &PlanName) -> String {
    format!("binlog/{plan}/")
}

/// The object of a completed binlog: its record.
pub fn complete_key(plan: &PlanName, file: &BinlogName) -> String {
    format!("{}{file}", binlog_prefix(plan))
}

/// The object of bytes `[start, …)` of a binlog.
pub fn part_key(plan: &PlanName, file: &BinlogName, start: u64) -> String {
    format!("{}{file}{PART_MARK}{start:016x}", binlog_prefix(plan))
}

const PART_MARK: &str = ".part-";

/// What an archive key (relative to the prefix, an alternative's tag
/// removed) names: a file's record, or a part of it from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    Complete(BinlogName),
    Part(BinlogName, u64),
}

impl ObjectName {
    pub fn parse(name: &str) -> Option<ObjectName> {
        let name = log_archive::split_alternative(name)
            .map(|(c, _)| c)
            .unwrap_or(name);
        match name.split_once(PART_MARK) {
            Some((file, start)) => {
                let ok = start.len() == 16
                    && start
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                let start = u64::from_str_radix(start, 16).ok().filter(|_| ok)?;
                Some(ObjectName::Part(BinlogName::parse(file).ok()?, start))
            }
            None => Some(ObjectName::Complete(BinlogName::parse(name).ok()?)),
        }
    }

    pub fn file(&self) -> &BinlogName {
        match self {
            ObjectName::Complete(f) | ObjectName::Part(f, _) => f,
        }
    }
}

/// The archive's keys for one plan, grouped by file: whether a record (or
/// an alternative) is listed, and the part start offsets listed.
/// From the listing alone: nothing is read or trusted yet.
#[derive(Debug, Default, Clone)]
pub struct Listed {
    pub complete: bool,
    pub parts: Vec<u64>,
}

pub async fn list(
    store: &dyn Store,
    plan: &PlanName,
) -> Result<BTreeMap<BinlogName, Listed>, BinlogError> {
    let prefix = binlog_prefix(plan);
    let mut files: BTreeMap<BinlogName, Listed> = BTreeMap::new();
    for info in store.list(&prefix).await? {
        let name = &info.key[prefix.len()..];
        match ObjectName::parse(name) {
            Some(ObjectName::Complete(f)) => files.entry(f).or_default().complete = true,
            Some(ObjectName::Part(f, start)) => {
                let e = files.entry(f).or_default();
                if !e.parts.contains(&start) {
                    e.parts.push(start);
                }
            }
            None => {
                tracing::warn!(object = %info.key, "{} is not a binlog archive object name; ignored", info.key)
            }
        }
    }
    for l in files.values_mut() {
        l.parts.sort_unstable();
    }
    Ok(files)
}

/// The most raw binlog bytes a part holds: a part ends at the last
/// complete event inside this window, or, when one event alone is larger,
/// exactly at that event's end (at most [`MAX_EVENT`]). The archiver holds
/// one part in memory at a time, and so does every reader.
pub const MAX_PART: u64 = 64 << 20;

/// The part size the archiver cuts at: `HOLDFAST_BINLOG_MAX_PART` (hidden,
/// for tests that need several parts from a small binlog; 4 KiB to
/// [`MAX_PART`]), else [`MAX_PART`]. Readers accept any tiling, so this is
/// the writer's choice alone.
pub fn max_part() -> u64 {
    std::env::var("HOLDFAST_BINLOG_MAX_PART")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| (4096..=MAX_PART).contains(n))
        .unwrap_or(MAX_PART)
}

/// The format tag of a completed binlog's record.
pub const RECORD_FORMAT: &str = "holdfast-binlog-record";
pub const RECORD_VERSION: u32 = 1;
/// The largest record read back, checked before it is decompressed or
/// parsed. A part costs about 110 bytes of JSON, so this holds
/// [`MAX_PARTS`] with room to spare.
pub const MAX_RECORD: u64 = 16 << 20;
/// The most parts one binlog may have: at a 10 s flush interval a binlog
/// the server keeps writing a trickle into for 11 days. The archiver stops
/// with an error naming the file before it would write more.
pub const MAX_PARTS: usize = 100_000;

/// The complete object of a binlog: which parts hold it, so a completed
/// file is stored once (as the parts it was archived in while it grew, and
/// the rest as capped parts) and read back checked part by part and whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinlogRecord {
    pub format: String,
    pub version: u32,
    pub file: String,
    pub length: u64,
    pub sha256: Hash256,
    /// `[start, start + length)`, in order, tiling `[0, length)` exactly.
    pub parts: Vec<PartRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartRecord {
    pub start: u64,
    pub length: u64,
    pub sha256: Hash256,
}

impl BinlogRecord {
    pub fn new(file: &BinlogName, length: u64, sha256: Hash256, parts: Vec<PartRecord>) -> Self {
        BinlogRecord {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            file: file.to_string(),
            length,
            sha256,
            parts,
        }
    }

    /// Decodes the record read at `key` for `file`: size-capped before
    /// parsing, then every field checked (format, file, length cap, part
    /// count, tiling), so no offset from it is used unchecked.
    pub fn parse(key: &str, file: &BinlogName, raw: &[u8]) -> Result<BinlogRecord, BinlogError> {
        let bad = |why: String| BinlogError::BadRecord {
            key: key.to_string(),
            why,
        };
        if raw.starts_with(MAGIC) {
            return Err(BinlogError::OldStyle {
                key: key.to_string(),
            });
        }
        if raw.len() as u64 > MAX_RECORD {
            return Err(bad(format!(
                "it is {} bytes, more than a record holds (16 MiB)",
                raw.len()
            )));
        }
        let record: BinlogRecord = serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
        record.check(file).map_err(bad)?;
        Ok(record)
    }

    /// What a record of `file` must be; the reason when it is not.
    pub fn check(&self, file: &BinlogName) -> Result<(), String> {
        if self.format != RECORD_FORMAT || self.version != RECORD_VERSION {
            return Err(format!(
                "format {:?} version {}, not {RECORD_FORMAT:?} version {RECORD_VERSION}",
                self.format, self.version
            ));
        }
        if self.file != file.to_string() {
            return Err(format!(
                "it is the record of {:?}, not of {file}",
                self.file
            ));
        }
        if self.length > MAX_FILE {
            return Err(format!("it claims {} bytes, over 4 GiB", self.length));
        }
        if self.parts.len() > MAX_PARTS {
            return Err(format!(
                "it lists {} parts, more than {MAX_PARTS}",
                self.parts.len()
            ));
        }
        let mut at = 0u64;
        for p in &self.parts {
            if p.start != at {
                return Err(format!(
                    "its part at offset {} does not start where the parts before it end ({at})",
                    p.start
                ));
            }
            if p.length == 0 || p.length > MAX_EVENT as u64 {
                return Err(format!(
                    "its part at offset {} claims {} bytes (a part is 1 byte to 1 GiB)",
                    p.start, p.length
                ));
            }
            at = at.saturating_add(p.length);
            if at > self.length {
                return Err(format!(
                    "its part at offset {} ends at {at}, past the file's length {}",
                    p.start, self.length
                ));
            }
        }
        if at != self.length {
            return Err(format!(
                "its parts end at {at}, the file's length is {}",
                self.length
            ));
        }
        Ok(())
    }
}

/// Reads the record of `name`, if a sound one is there: `None` when there
/// is none or only foreign objects are (warned about by the log archive;
/// the parts may still hold the file, as for a growing one). A record
/// holdfast wrote that does not parse or check is an error naming it.
pub async fn read_record(
    store: &dyn Store,
    crypto: &Crypto,
    plan: &PlanName,
    name: &BinlogName,
) -> Result<Option<(String, BinlogRecord)>, BinlogError> {
    match fetch_record(store, crypto, plan, name).await {
        Ok(r) => Ok(Some(r)),
        Err(BinlogError::Log(LogError::NotFound { .. })) => Ok(None),
        Err(BinlogError::Log(e @ LogError::OnlyForeign { .. })) => {
            tracing::warn!(file = %name, "binlog {name}: {e}; its parts are read as those of a growing file");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The record of `name`, or why there is none ([`LogError::NotFound`],
/// [`LogError::OnlyForeign`]: an object over [`MAX_RECORD`] is foreign).
async fn fetch_record(
    store: &dyn Store,
    crypto: &Crypto,
    plan: &PlanName,
    name: &BinlogName,
) -> Result<(String, BinlogRecord), BinlogError> {
    let key = complete_key(plan, name);
    let r = log_archive::resolve_within(store, crypto, &key, MAX_RECORD).await?;
    let record = BinlogRecord::parse(&r.key, name, &r.raw)?;
    Ok((r.key, record))
}

/// Event headers scanned across parts, whatever their cuts: the bytes of
/// an event a part ends inside are kept until the next part completes it
/// (the archiver cuts at event ends, so normally nothing is kept).
pub struct Scanner {
    scan: Scan,
    /// Bytes from file offset `scan.end` on not yet scanned (an incomplete
    /// event, or less than the magic).
    pending: Vec<u8>,
    magic: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    /// A scanner at the start of a file (the magic first).
    pub fn new() -> Scanner {
        Scanner {
            scan: Scan::default(),
            pending: Vec::new(),
            magic: false,
        }
    }

    /// The next bytes of the file; `what` names them in errors.
    pub fn feed(&mut self, what: &str, data: &[u8]) -> Result<(), BinlogError> {
        let joined;
        let buf: &[u8] = if self.pending.is_empty() {
            data
        } else {
            self.pending.extend_from_slice(data);
            joined = std::mem::take(&mut self.pending);
            &joined
        };
        // File offset of buf[0].
        let start = self.scan.end;
        let mut skip = 0usize;
        if !self.magic {
            if buf.len() < MAGIC.len() {
                self.scan = scan(what, buf)?;
                self.pending = buf.to_vec();
                return Ok(());
            }
            self.scan = scan(what, &buf[..MAGIC.len()])?;
            self.magic = true;
            skip = MAGIC.len();
        }
        scan_more(what, &mut self.scan, &buf[skip..], start + skip as u64)?;
        let used = (self.scan.end - start) as usize;
        self.pending = buf[used..].to_vec();
        Ok(())
    }

    /// What the bytes fed so far say.
    pub fn scan(&self) -> &Scan {
        &self.scan
    }

    pub fn into_scan(self) -> Scan {
        self.scan
    }
}

/// One file read back from the archive (its bytes went to the caller's
/// writer).
#[derive(Debug)]
pub struct ReadBack {
    /// Bytes written.
    pub length: u64,
    /// Read by its record (else from parts alone, as a growing file).
    pub complete: bool,
    /// The objects read, in order (the record first).
    pub objects: Vec<String>,
    /// Its event headers, scanned as the parts went by.
    pub scan: Scan,
}

/// Reads archived binlog `file` of `plan` into `out`, one part in memory
/// at a time: by its record when there is a sound one (every part it lists
/// must be there with its length and SHA-256, and the whole file must hash
/// to the record's), else the contiguous parts from offset 0. A gap or an
/// overlap between parts, or any mismatch, is refused naming the object at
/// fault; what was written to `out` before is then not the file. `out` is
/// written from a blocking thread and handed back.
pub async fn read_binlog<W: Write + Send + 'static>(
    store: &dyn Store,
    crypto: &Crypto,
    plan: &PlanName,
    file: &str,
    out: W,
) -> Result<(ReadBack, W), BinlogError> {
    let name = BinlogName::parse(file)?;
    let listed = list(store, plan).await?.remove(&name).unwrap_or_default();
    read_listed(store, crypto, plan, &name, &listed, out).await
}

/// What flows through a read: the scanner, the whole-file hash and the
/// caller's writer, moved to a blocking thread for each part.
struct Sink<W> {
    scanner: Scanner,
    hasher: Sha256,
    out: W,
    length: u64,
}

impl<W: Write + Send + 'static> Sink<W> {
    /// Scans, hashes and writes one part read from object `key`.
    async fn part(mut self, key: String, raw: Vec<u8>) -> Result<Self, BinlogError> {
        tokio::task::spawn_blocking(move || {
            self.scanner.feed(&key, &raw)?;
            self.hasher.update(&raw);
            self.out
                .write_all(&raw)
                .map_err(|source| BinlogError::Write { what: key, source })?;
            self.length += raw.len() as u64;
            Ok(self)
        })
        .await
        .expect("binlog reader panicked")
    }
}

async fn read_listed<W: Write + Send + 'static>(
    store: &dyn Store,
    crypto: &Crypto,
    plan: &PlanName,
    name: &BinlogName,
    listed: &Listed,
    out: W,
) -> Result<(ReadBack, W), BinlogError> {
    let mut no_record = None;
    let record = match listed.complete {
        true => match fetch_record(store, crypto, plan, name).await {
            Ok(r) => Some(r),
            // Only foreign objects there: the parts may still hold it, as
            // those of a growing file.
            Err(BinlogError::Log(
                e @ (LogError::OnlyForeign { .. } | LogError::NotFound { .. }),
            )) => {
                no_record = Some(e);
                None
            }
            Err(e) => return Err(e),
        },
        false => None,
    };
    if record.is_none() && listed.parts.is_empty() {
        return Err(match no_record {
            Some(e) => e.into(),
            None => BinlogError::NotArchived {
                plan: plan.clone(),
                file: name.to_string(),
            },
        });
    }
    let bad = |why: String| BinlogError::BadParts {
        file: name.to_string(),
        why,
    };
    let mut sink = Sink {
        scanner: Scanner::new(),
        hasher: Sha256::new(),
        out,
        length: 0,
    };
    let mut objects = Vec::new();
    let complete = record.is_some();
    if let Some((record_key, record)) = record {
        objects.push(record_key.clone());
        for p in &record.parts {
            let key = part_key(plan, name, p.start);
            let r = match log_archive::resolve(store, crypto, &key).await {
                Ok(r) => r,
                Err(e @ (LogError::NotFound { .. } | LogError::OnlyForeign { .. })) => {
                    return Err(bad(format!(
                        "part {key}, which record {record_key} lists, cannot be read: {e}"
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            if r.raw.len() as u64 != p.length || r.sha != p.sha256 {
                return Err(bad(format!(
                    "part {} holds {} bytes with SHA-256 {}, but record {record_key} lists {} bytes with SHA-256 {}",
                    r.key,
                    r.raw.len(),
                    r.sha,
                    p.length,
                    p.sha256
                )));
            }
            objects.push(r.key.clone());
            sink = sink.part(r.key, r.raw).await?;
        }
        let got = Hash256(sink.hasher.clone().finalize().into());
        if got != record.sha256 {
            return Err(bad(format!(
                "its parts hash to SHA-256 {got}, but record {record_key} says {}",
                record.sha256
            )));
        }
    } else {
        if listed.parts.len() > MAX_PARTS {
            return Err(bad(format!(
                "{} parts are listed, more than {MAX_PARTS}",
                listed.parts.len()
            )));
        }
        for &start in &listed.parts {
            let key = part_key(plan, name, start);
            let have = sink.length;
            if start != have {
                let why = if start > have {
                    format!("part {key} starts at offset {start}, but the parts before it end at {have}: bytes [{have}, {start}) are missing")
                } else {
                    format!("part {key} starts at offset {start}, inside the bytes the parts before it hold (up to {have}): parts overlap")
                };
                return Err(bad(why));
            }
            let r = log_archive::resolve(store, crypto, &key).await?;
            if have + r.raw.len() as u64 > MAX_FILE {
                return Err(bad(format!("part {key} takes the file past 4 GiB")));
            }
            objects.push(r.key.clone());
            sink = sink.part(r.key, r.raw).await?;
        }
    }
    let Sink {
        scanner,
        out,
        length,
        ..
    } = sink;
    Ok((
        ReadBack {
            length,
            complete,
            objects,
            scan: scanner.into_scan(),
        },
        out,
    ))
}

/// One archived binlog, as [`archived`] reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedBinlog {
    pub file: String,
    /// Held by a sound record (else parts up to the last complete event).
    pub complete: bool,
    pub bytes: u64,
    pub first_event: Option<DateTime<Utc>>,
    pub last_event: Option<DateTime<Utc>>,
    pub first_gtid: Option<String>,
    pub last_gtid: Option<String>,
    /// Why the file cannot be read back whole, if it cannot (a bad part or
    /// record, a corrupt or only foreign object, a damaged event header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The archive of one plan's binlogs.
#[derive(Debug, Clone, Serialize)]
pub struct Archived {
    pub files: Vec<ArchivedBinlog>,
    /// The first file of each hole in the sequence ([`holes`]).
    pub gaps: Vec<String>,
}

impl Archived {
    /// The newest event time in the archive.
    pub fn newest_event(&self) -> Option<DateTime<Utc>> {
        self.files.iter().filter_map(|f| f.last_event).max()
    }
}

/// Lists the archived binlogs of `plan`, each read back and scanned part by
/// part (correctness first: every object is downloaded and checked, one
/// part in memory at a time), and the holes in the file sequence.
pub async fn archived(
    store: &dyn Store,
    crypto: &Crypto,
    plan: &PlanName,
) -> Result<Archived, BinlogError> {
    let listed = list(store, plan).await?;
    let mut files = Vec::new();
    let gaps = holes(&listed);
    for (name, l) in &listed {
        let mut entry = ArchivedBinlog {
            file: name.to_string(),
            complete: false,
            bytes: 0,
            first_event: None,
            last_event: None,
            first_gtid: None,
            last_gtid: None,
            problem: None,
        };
        match read_listed(store, crypto, plan, name, l, std::io::sink()).await {
            Ok((r, _)) => {
                entry.complete = r.complete;
                entry.bytes = r.length;
                let s = r.scan;
                entry.first_event = s.first_at();
                entry.last_event = s.last_at();
                entry.first_gtid = s.first_gtid.map(|g| g.to_string());
                entry.last_gtid = s.last_gtid.map(|g| g.to_string());
            }
            Err(e @ BinlogError::Store(_)) => return Err(e),
            Err(BinlogError::Log(LogError::Store(e))) => return Err(BinlogError::Store(e)),
            Err(e) => entry.problem = Some(e.to_string()),
        }
        files.push(entry);
    }
    Ok(Archived { files, gaps })
}

/// The first file of each hole in the archived sequence: files missing
/// between archived ones, and files held only as parts though a later file
/// is archived (their end was never archived). Per base name.
pub fn holes(listed: &BTreeMap<BinlogName, Listed>) -> Vec<String> {
    let mut bad: Vec<BinlogName> = Vec::new();
    let mut prev: Option<(&BinlogName, &Listed)> = None;
    for (name, l) in listed {
        if let Some((p, pl)) = prev.filter(|(p, _)| p.base == name.base) {
            if !pl.complete {
                bad.push(p.clone());
            }
            bad.extend(p.between(name, 1000));
        }
        prev = Some((name, l));
    }
    bad.iter()
        .enumerate()
        .filter(|(i, n)| *i == 0 || bad[i - 1].base != n.base || bad[i - 1].seq + 1 != n.seq)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// Prune's rule for archived binlogs: a file before the oldest kept
/// snapshot's starting binlog (`binlog_file` in its manifest's source
/// metadata) can no longer be replayed by any restore. Without a kept
/// snapshot that names one, nothing is expired. Files of another base name
/// (the server's `log_bin` changed) are kept: their order relative to the
/// snapshot's is unknown.
pub struct BinlogRetention {
    pub plan: PlanName,
}

/// The binlog a MariaDB snapshot's restore starts replaying from.
pub fn snapshot_binlog(source: &SourceRecord) -> Option<BinlogName> {
    if source.kind != crate::plan::SourceKind::Mariadb.as_str() {
        return None;
    }
    let file = source.metadata.get("binlog_file")?.as_str()?;
    BinlogName::parse(file).ok()
}

impl LogRetention for BinlogRetention {
    fn prefix(&self) -> String {
        binlog_prefix(&self.plan)
    }

    fn expiry(&self, remaining: &[&ManifestHead]) -> Box<dyn Fn(&str) -> bool + Send + Sync> {
        let Some(oldest) = remaining
            .iter()
            .filter_map(|m| snapshot_binlog(&m.source))
            .min()
        else {
            return Box::new(|_| false);
        };
        Box::new(move |name| match ObjectName::parse(name) {
            Some(o) => o.file().base == oldest.base && o.file().seq < oldest.seq,
            None => false,
        })
    }
}

/// The retention rule `MariadbEngine::log_retention` returns.
pub fn retention(plan: &PlanName) -> Box<dyn LogRetention> {
    Box::new(BinlogRetention { plan: plan.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An event: header then body.
    pub(crate) fn event(time: u32, kind: u8, server: u32, body: &[u8], pos: u32) -> Vec<u8> {
        let size = (HEADER + body.len()) as u32;
        let mut e = Vec::new();
        e.extend_from_slice(&time.to_le_bytes());
        e.push(kind);
        e.extend_from_slice(&server.to_le_bytes());
        e.extend_from_slice(&size.to_le_bytes());
        e.extend_from_slice(&(pos + size).to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(body);
        e
    }

    fn gtid_body(seq: u64, domain: u32) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&domain.to_le_bytes());
        b.push(0);
        b
    }

    pub(crate) fn sample() -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        let push = |f: &mut Vec<u8>, e: Vec<u8>| f.extend_from_slice(&e);
        let pos = |f: &Vec<u8>| f.len() as u32;
        let e = event(1_700_000_000, 15, 1, &[0u8; 80], pos(&f));
        push(&mut f, e);
        let e = event(1_700_000_001, GTID_EVENT, 1, &gtid_body(7, 0), pos(&f));
        push(&mut f, e);
        let e = event(1_700_000_002, 2, 1, b"INSERT ...", pos(&f));
        push(&mut f, e);
        let e = event(1_700_000_003, GTID_EVENT, 2, &gtid_body(8, 3), pos(&f));
        push(&mut f, e);
        let mut rot = 4u64.to_le_bytes().to_vec();
        rot.extend_from_slice(b"binlog.000004");
        rot.extend_from_slice(&[1, 2, 3, 4]); // the CRC32
        let e = event(1_700_000_004, ROTATE_EVENT, 1, &rot, pos(&f));
        push(&mut f, e);
        f
    }

    #[test]
    fn names_are_strict() {
        for ok in ["binlog.000001", "mysql-bin.123456", "b_1.1000000"] {
            let n = BinlogName::parse(ok).unwrap();
            assert_eq!(n.to_string(), ok);
        }
        let n = BinlogName::parse("binlog.999999").unwrap();
        assert_eq!(n.next().unwrap().to_string(), "binlog.1000000");
        assert_eq!(
            BinlogName::parse("binlog.000001")
                .unwrap()
                .between(&BinlogName::parse("binlog.000004").unwrap(), 10)
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["binlog.000002", "binlog.000003"]
        );
        for bad in [
            "binlog.index",
            "binlog.00001",
            "binlog.0000001",
            "../binlog.000001",
            "bin.log.000001",
            ".000001",
            "binlog.000001.part-0000000000000000",
            "binlog.99999999999",
            "",
        ] {
            assert!(BinlogName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_names_parse_back() {
        let plan = PlanName::new("p").unwrap();
        let f = BinlogName::parse("binlog.000003").unwrap();
        let k = part_key(&plan, &f, 0x1234);
        assert_eq!(k, "binlog/p/binlog.000003.part-0000000000001234");
        let rel = &k["binlog/p/".len()..];
        assert_eq!(
            ObjectName::parse(rel),
            Some(ObjectName::Part(f.clone(), 0x1234))
        );
        let alt = log_archive::alternative_key(rel, &crate::ids::Hash256::digest(b"x"), 1);
        assert_eq!(
            ObjectName::parse(&alt),
            Some(ObjectName::Part(f.clone(), 0x1234))
        );
        assert_eq!(
            ObjectName::parse("binlog.000003"),
            Some(ObjectName::Complete(f))
        );
        assert_eq!(ObjectName::parse("binlog.000003.part-12"), None);
        assert_eq!(ObjectName::parse("binlog.index"), None);
    }

    #[test]
    fn the_reader_finds_times_gtids_end_and_rotation() {
        let f = sample();
        let s = scan("f", &f).unwrap();
        assert_eq!(s.events, 5);
        assert_eq!(s.end, f.len() as u64);
        assert_eq!(s.first_time, Some(1_700_000_000));
        assert_eq!(s.last_time, Some(1_700_000_004));
        assert_eq!(s.first_gtid.unwrap().to_string(), "0-1-7");
        assert_eq!(s.last_gtid.unwrap().to_string(), "3-2-8");
        assert_eq!(s.rotate_to.as_deref(), Some("binlog.000004"));
        // A growing file cut mid-event ends at the last complete event.
        let cut = &f[..f.len() - 3];
        let s2 = scan("f", cut).unwrap();
        assert_eq!(s2.events, 4);
        assert_eq!(s2.rotate_to, None);
        assert!(s2.end < cut.len() as u64);
        // Continuing from an event boundary gives the same answer.
        let mut s3 = scan("f", &f[..s2.end as usize]).unwrap();
        assert_eq!(s3, s2);
        scan_more("f", &mut s3, &f[s2.end as usize..], s2.end).unwrap();
        assert_eq!(s3, s);
        // Only the magic, or less.
        assert_eq!(scan("f", MAGIC).unwrap().end, 4);
        assert_eq!(scan("f", b"\xfeb").unwrap().end, 0);
        let err = scan("spool/binlog.000001", b"GIF89a").unwrap_err();
        assert!(err.to_string().contains("spool/binlog.000001"), "{err}");
        // A size under the header's is damage, named with its offset.
        let mut bad = f.clone();
        bad[4 + 9..4 + 13].copy_from_slice(&3u32.to_le_bytes());
        let err = scan("x", &bad).unwrap_err().to_string();
        assert!(err.contains("offset 4"), "{err}");
    }

    #[test]
    fn holes_name_the_first_file_missing_or_incomplete() {
        let l = |complete: bool| Listed {
            complete,
            parts: if complete { vec![] } else { vec![0] },
        };
        let n = |s: &str| BinlogName::parse(s).unwrap();
        let mut m = BTreeMap::new();
        m.insert(n("binlog.000001"), l(true));
        m.insert(n("binlog.000002"), l(false));
        m.insert(n("binlog.000004"), l(true));
        m.insert(n("binlog.000005"), l(true));
        m.insert(n("binlog.000007"), l(false));
        m.insert(n("other.000001"), l(false));
        assert_eq!(holes(&m), ["binlog.000002", "binlog.000006"]);
        m.remove(&n("binlog.000002"));
        assert_eq!(holes(&m), ["binlog.000002", "binlog.000006"]);
        m.insert(n("binlog.000003"), l(true));
        m.insert(n("binlog.000002"), l(true));
        m.insert(n("binlog.000006"), l(true));
        assert!(holes(&m).is_empty());
    }

    async fn store_with(
        objects: &[(String, Vec<u8>)],
    ) -> (tempfile::TempDir, crate::store::local::LocalStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::local::LocalStore::open(tmp.path().join("repo")).unwrap();
        for (key, raw) in objects {
            log_archive::push_bytes(&store, &Crypto::none(), key.clone(), raw.clone(), key, None)
                .await
                .unwrap();
        }
        (tmp, store)
    }

    /// Binlog `file` of `plan` read back into memory (unencrypted store).
    async fn read(
        store: &dyn Store,
        plan: &PlanName,
        file: &str,
    ) -> Result<(ReadBack, Vec<u8>), BinlogError> {
        read_binlog(store, &Crypto::none(), plan, file, Vec::new()).await
    }

    #[tokio::test]
    async fn parts_must_tile_the_file_and_a_bad_one_is_named() {
        let plan = PlanName::new("p").unwrap();
        let f = BinlogName::parse("binlog.000002").unwrap();
        let file = sample();
        let (a, b) = file.split_at(40);
        let none = Crypto::none();

        // Contiguous parts read back as the file.
        let (_t, store) = store_with(&[
            (part_key(&plan, &f, 0), a.to_vec()),
            (part_key(&plan, &f, 40), b.to_vec()),
        ])
        .await;
        let r = read(&store, &plan, "binlog.000002").await.unwrap();
        assert!(!r.0.complete && r.1 == file);
        let listed = archived(&store, &none, &plan).await.unwrap();
        assert_eq!(listed.files[0].last_gtid.as_deref(), Some("3-2-8"));
        assert_eq!(listed.files[0].bytes, file.len() as u64);

        // A gap: the second part starts past the first one's end.
        let (_t, store) = store_with(&[
            (part_key(&plan, &f, 0), a.to_vec()),
            (part_key(&plan, &f, 41), b[1..].to_vec()),
        ])
        .await;
        let err = read(&store, &plan, "binlog.000002")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("binlog.000002.part-0000000000000029") && err.contains("missing"),
            "{err}"
        );
        let listed = archived(&store, &none, &plan).await.unwrap();
        assert!(listed.files[0].problem.is_some(), "{listed:?}");

        // An overlap, and no part at offset 0.
        let (_t, store) = store_with(&[
            (part_key(&plan, &f, 0), a.to_vec()),
            (part_key(&plan, &f, 30), file[30..].to_vec()),
        ])
        .await;
        let err = read(&store, &plan, "binlog.000002")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("part-000000000000001e") && err.contains("overlap"),
            "{err}"
        );
        let (_t, store) = store_with(&[(part_key(&plan, &f, 40), b.to_vec())]).await;
        let err = read(&store, &plan, "binlog.000002")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("starts at offset 40"), "{err}");

        // A foreign object at the complete key: the parts still give the
        // file; nothing at all: not archived, named.
        let (_t, store) = store_with(&[
            (part_key(&plan, &f, 0), a.to_vec()),
            (part_key(&plan, &f, 40), b.to_vec()),
        ])
        .await;
        let opts = crate::store::PutOptions {
            sha256: crate::ids::Hash256::digest(b"junk"),
            retention: None,
        };
        store
            .put(
                &complete_key(&plan, &f),
                bytes::Bytes::from_static(b"junk"),
                &opts,
            )
            .await
            .unwrap();
        let r = read(&store, &plan, "binlog.000002").await.unwrap();
        assert!(!r.0.complete && r.1 == file);
        let err = read(&store, &plan, "binlog.000009")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("binlog.000009 of plan p is not in the archive"),
            "{err}"
        );
        assert!(read(&store, &plan, "../x.000001").await.is_err());
    }

    /// A binlog of `n` transactions (a GTID event and a row event each).
    fn many_events(n: u64) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        for i in 0..n {
            let pos = f.len() as u32;
            f.extend_from_slice(&event(
                1_700_000_000 + i as u32,
                GTID_EVENT,
                1,
                &gtid_body(i + 1, 0),
                pos,
            ));
            let pos = f.len() as u32;
            let row = vec![(i % 251) as u8; 40 + (i as usize * 7) % 90];
            f.extend_from_slice(&event(1_700_000_000 + i as u32, 30, 1, &row, pos));
        }
        f
    }

    /// `file` stored as parts cut at `cuts` (offsets, from 0 to its
    /// length), and the record the archiver would write for them.
    fn parts_of(
        plan: &PlanName,
        name: &BinlogName,
        file: &[u8],
        cuts: &[usize],
    ) -> (Vec<(String, Vec<u8>)>, BinlogRecord) {
        let mut objects = Vec::new();
        let mut parts = Vec::new();
        for w in cuts.windows(2) {
            let bytes = file[w[0]..w[1]].to_vec();
            parts.push(PartRecord {
                start: w[0] as u64,
                length: bytes.len() as u64,
                sha256: Hash256::digest(&bytes),
            });
            objects.push((part_key(plan, name, w[0] as u64), bytes));
        }
        let record = BinlogRecord::new(name, file.len() as u64, Hash256::digest(file), parts);
        (objects, record)
    }

    /// A store holding `objects` and `record` (JSON, or any bytes) at the
    /// complete key of `name`.
    async fn store_completed(
        plan: &PlanName,
        name: &BinlogName,
        objects: &[(String, Vec<u8>)],
        record: Vec<u8>,
    ) -> (tempfile::TempDir, crate::store::local::LocalStore) {
        let mut all = objects.to_vec();
        all.push((complete_key(plan, name), record));
        store_with(&all).await
    }

    #[tokio::test]
    async fn a_completed_file_of_several_parts_reads_back_byte_for_byte_by_its_record() {
        let plan = PlanName::new("p").unwrap();
        let name = BinlogName::parse("binlog.000003").unwrap();
        let file = many_events(300);
        // Cuts anywhere, mid-event too: readers accept any tiling.
        let cuts = [0, 1000, 1001, 20_000, file.len()];
        let (objects, record) = parts_of(&plan, &name, &file, &cuts);
        record.check(&name).unwrap();
        let json = serde_json::to_vec(&record).unwrap();
        let (_t, store) = store_completed(&plan, &name, &objects, json).await;
        let (r, bytes) = read(&store, &plan, "binlog.000003").await.unwrap();
        assert!(r.complete);
        assert!(
            bytes == file,
            "{} bytes read, {} stored",
            bytes.len(),
            file.len()
        );
        assert_eq!(r.length, file.len() as u64);
        assert_eq!(r.objects.len(), 5, "{:?}", r.objects);
        assert_eq!(r.objects[0], complete_key(&plan, &name));
        assert_eq!(r.scan, scan("x", &file).unwrap());
        let a = archived(&store, &Crypto::none(), &plan).await.unwrap();
        assert!(a.files[0].complete && a.files[0].problem.is_none(), "{a:?}");
        assert_eq!(a.files[0].last_gtid.as_deref(), Some("0-1-300"));
        assert_eq!(a.files[0].bytes, file.len() as u64);
    }

    #[tokio::test]
    async fn a_record_that_disagrees_with_its_parts_is_refused_naming_the_object() {
        let plan = PlanName::new("p").unwrap();
        let name = BinlogName::parse("binlog.000003").unwrap();
        let file = many_events(100);
        let cuts = [0, 2000, 4000, file.len()];
        let (objects, record) = parts_of(&plan, &name, &file, &cuts);
        let second = part_key(&plan, &name, 2000);
        let rkey = complete_key(&plan, &name);

        type Change = Box<dyn Fn(&mut BinlogRecord)>;
        let cases: Vec<(&str, Change, String)> = vec![
            (
                "a part's SHA-256",
                Box::new(|r| r.parts[1].sha256 = Hash256::digest(b"other")),
                second.clone(),
            ),
            (
                "a part's length",
                Box::new(|r| {
                    r.parts[1].length += 1;
                    r.parts[2].start += 1;
                    r.parts[2].length -= 1;
                }),
                second.clone(),
            ),
            (
                "the tiling",
                Box::new(|r| r.parts[1].start += 1),
                format!("{rkey} is not a sound binlog record"),
            ),
            (
                "the file's length",
                Box::new(|r| r.length += 5),
                format!("{rkey} is not a sound binlog record"),
            ),
            (
                "the whole file's SHA-256",
                Box::new(|r| r.sha256 = Hash256::digest(b"other")),
                format!("record {rkey} says"),
            ),
            (
                "another file's record",
                Box::new(|r| r.file = "binlog.000004".into()),
                format!("{rkey} is not a sound binlog record"),
            ),
        ];
        for (what, change, named) in cases {
            let mut bad = record.clone();
            change(&mut bad);
            let json = serde_json::to_vec(&bad).unwrap();
            let (_t, store) = store_completed(&plan, &name, &objects, json).await;
            let err = read(&store, &plan, "binlog.000003")
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(&named), "{what}: {err}");
            let a = archived(&store, &Crypto::none(), &plan).await.unwrap();
            assert!(a.files[0].problem.is_some(), "{what}: {a:?}");
        }

        // A part the record lists is missing: named.
        let (_t, store) = store_completed(
            &plan,
            &name,
            &[objects[0].clone(), objects[2].clone()],
            serde_json::to_vec(&record).unwrap(),
        )
        .await;
        let err = read(&store, &plan, "binlog.000003")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&second) && err.contains("cannot be read"),
            "{err}"
        );

        // Unknown fields and garbage are refused too, naming the record.
        let mut extra = serde_json::to_value(&record).unwrap();
        extra["note"] = serde_json::json!("x");
        for raw in [serde_json::to_vec(&extra).unwrap(), b"{not json".to_vec()] {
            let (_t, store) = store_completed(&plan, &name, &objects, raw).await;
            let err = read(&store, &plan, "binlog.000003")
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{rkey} is not a sound")), "{err}");
        }
    }

    #[tokio::test]
    async fn an_oversized_record_is_refused_before_it_is_parsed() {
        let plan = PlanName::new("p").unwrap();
        let name = BinlogName::parse("binlog.000003").unwrap();
        let file = many_events(20);
        let (objects, record) = parts_of(&plan, &name, &file, &[0, 500, file.len()]);
        // A sound record padded past the cap: it is never decompressed.
        let mut json = serde_json::to_vec(&record).unwrap();
        json.resize(MAX_RECORD as usize + 1, b' ');
        let (_t, store) = store_completed(&plan, &name, &[], json.clone()).await;
        let err = read(&store, &plan, "binlog.000003")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&complete_key(&plan, &name))
                && err.contains("more than such an object holds (16 MiB)"),
            "{err}"
        );
        // With the parts there, they stand in as for a growing file (not
        // complete: a restore then needs them to end with the rotation).
        let (_t, store) = store_completed(&plan, &name, &objects, json).await;
        let (r, bytes) = read(&store, &plan, "binlog.000003").await.unwrap();
        assert!(!r.complete && bytes == file);
        // The parse cap itself, for a record that got past the object's.
        let err = BinlogRecord::parse("k", &name, &vec![b' '; MAX_RECORD as usize + 1])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("k is not a sound") && err.contains("16 MiB"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_old_style_whole_file_complete_object_is_refused_naming_it() {
        let plan = PlanName::new("p").unwrap();
        let name = BinlogName::parse("binlog.000003").unwrap();
        let file = many_events(20);
        let (objects, _) = parts_of(&plan, &name, &file, &[0, 500, file.len()]);
        let (_t, store) = store_completed(&plan, &name, &objects, file.clone()).await;
        let err = read(&store, &plan, "binlog.000003").await.unwrap_err();
        assert!(matches!(err, BinlogError::OldStyle { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains(&complete_key(&plan, &name)) && err.contains("older holdfast"),
            "{err}"
        );
        let a = archived(&store, &Crypto::none(), &plan).await.unwrap();
        assert!(
            a.files[0]
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("older holdfast")),
            "{a:?}"
        );
    }

    proptest! {
        #[test]
        fn the_scanner_gives_the_same_answer_whatever_the_cuts(
            cuts in proptest::collection::vec(0usize..6000, 0..12),
        ) {
            let file = many_events(40);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % file.len()).collect();
            cuts.push(0);
            cuts.push(file.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut s = Scanner::new();
            for w in cuts.windows(2) {
                s.feed("x", &file[w[0]..w[1]]).unwrap();
            }
            prop_assert_eq!(s.into_scan(), scan("x", &file).unwrap());
        }
    }

    #[test]
    fn gtids_parse() {
        let g: Gtid = "0-1-42".parse().unwrap();
        assert_eq!(g.to_string(), "0-1-42");
        assert!("0-1".parse::<Gtid>().is_err());
    }

    fn manifest_with(binlog_file: Option<&str>) -> ManifestHead {
        let mut m = ManifestHead::example();
        m.source.kind = "mariadb".into();
        if let Some(f) = binlog_file {
            m.source
                .metadata
                .insert("binlog_file".into(), serde_json::json!(f));
        }
        m
    }

    #[test]
    fn retention_keeps_every_binlog_from_the_oldest_kept_snapshot_on() {
        let r = retention(&PlanName::new("p").unwrap());
        assert_eq!(r.prefix(), "binlog/p/");
        let (a, b) = (
            manifest_with(Some("binlog.000005")),
            manifest_with(Some("binlog.000003")),
        );
        let kept = [&a, &b];
        assert!(r.expired(&kept, "binlog.000002"));
        assert!(r.expired(&kept, "binlog.000002.part-0000000000000000"));
        assert!(!r.expired(&kept, "binlog.000003"));
        // A file's record, its parts and their alternative names are one
        // unit: expired, and so kept and locked, together.
        assert!(r.expired(&kept, "binlog.000002.alt-0123456789abcdef"));
        assert!(r.expired(
            &kept,
            "binlog.000002.part-0000000000000100.alt-0123456789abcdef-2"
        ));
        assert!(!r.expired(&kept, "binlog.000003.alt-0123456789abcdef"));
        assert!(!r.expired(&kept, "binlog.000004.part-0000000000000100"));
        assert!(!r.expired(&kept, "other.000001"));
        assert!(!r.expired(&kept, "garbage"));
        // No snapshot naming a binlog: nothing expires.
        let none = manifest_with(None);
        assert!(!r.expired(&[&none], "binlog.000001"));
        assert!(!r.expired(&[], "binlog.000001"));
    }

    proptest! {
        #[test]
        fn mutated_binlogs_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
            cut in any::<usize>(),
            offset in 0u64..1_000_000,
        ) {
            let mut f = sample();
            for (at, b) in flips {
                let i = at % f.len();
                f[i] = b;
            }
            let f = &f[..cut % (f.len() + 1)];
            if let Ok(s) = scan("m", f) {
                prop_assert!(s.end <= f.len() as u64);
            }
            let mut s = Scan::default();
            let _ = scan_more("m", &mut s, f, offset);
            prop_assert!(s.end <= offset + f.len() as u64);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut f = MAGIC.to_vec();
            f.extend_from_slice(&data);
            let _ = scan("r", &f);
            let _ = scan("r", &data);
        }
    }
}
