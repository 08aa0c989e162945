//! The log archive: write-once objects holding a database's own log files
//! (PostgreSQL's WAL segments and timeline histories today), one object per
//! file under a per-plan prefix (`wal/<plan>/` for PostgreSQL). The engine
//! decides which names are valid and what they mean; this module owns only
//! the object format and the push/fetch rules every engine's archiving needs.
//!
//! Object format: a 48-byte header (`HFWAL001`, the raw length as u64
//! little-endian, the raw SHA-256) and the file as one zstd frame.
//!
//! The rules a database's archiver needs from push and fetch:
//! * push is idempotent: the same name with the same content succeeds again
//!   (a server re-archives after a crash), and the same name with other
//!   archived content fails loudly, never overwriting;
//! * push fails on any error, so the server keeps the file and retries:
//!   nothing is dropped;
//! * an object holdfast could not have written (a *foreign* object, see
//!   [`classify`]) never stops archiving: anyone with write access to the
//!   bucket can add a key, and a push that failed forever on it would fill
//!   the server's disk. The file goes under an alternative name instead
//!   ([`alternative_key`]), and push warns loudly naming both;
//! * fetch reads the canonical name, and when it is missing or foreign the
//!   alternatives; foreign objects are skipped with a warning naming them;
//! * fetch distinguishes "not in the archive" from every other failure.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Exit, HasExit};
use crate::ids::Hash256;
use crate::store::{PutOptions, Retention, Store, StoreError};

const MAGIC: &[u8; 8] = b"HFWAL001";
const HEADER: usize = 8 + 8 + 32;
/// Logs compress well and arrive every few seconds on a busy server: a fast
/// level keeps the archiver from falling behind.
const LEVEL: i32 = 1;
/// The largest log file accepted (PostgreSQL's wal_segment_size is at most 1 GiB).
const MAX_RAW: u64 = 1 << 30;
/// The largest archived object read back: the header and the most zstd can
/// expand `MAX_RAW` incompressible bytes to (its compress bound is under
/// 1/128 extra plus a frame header), so nothing larger is ever downloaded.
/// (Plus the sealing overhead in an encrypted repository.)
pub const MAX_OBJECT: u64 = object_cap(MAX_RAW);

/// The largest stored object that can hold at most `max_raw` bytes (see
/// [`MAX_OBJECT`]): what a reader of smaller objects (a binlog record)
/// downloads at most.
pub const fn object_cap(max_raw: u64) -> u64 {
    HEADER as u64 + max_raw + max_raw / 128 + (1 << 20) + super::crypto::SEAL_OVERHEAD as u64
}

/// `n` bytes as the size caps are written (`1 GiB`, `16 MiB`).
fn size_text(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n => format!("{n} bytes"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
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
    #[error("{key} is corrupt or foreign (not written by holdfast), and no alternative name holds it: {foreign}")]
    OnlyForeign { key: String, foreign: String },
    #[error("{key} has alternatives with different archived content ({keys}); refusing to guess which one PostgreSQL wrote. Two clusters may be archiving into one plan")]
    Ambiguous { key: String, keys: String },
    #[error("unable to archive {key}: it and its {tried} alternative names all hold foreign objects ({foreign}); someone with write access to the bucket is planting keys")]
    NoFreeName {
        key: String,
        tried: usize,
        foreign: String,
    },
    #[error("{key} is corrupt: {why}")]
    Corrupt { key: String, why: String },
    #[error(
        "{key} is not authentic: {why}; it was not written by a holder of this repository's key"
    )]
    Unauthenticated {
        key: String,
        why: super::crypto::OpenError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HasExit for LogError {
    fn exit(&self) -> Exit {
        match self {
            LogError::Store(e) => e.exit(),
            LogError::Unauthenticated { .. } => Exit::Verify,
            _ => Exit::Failure,
        }
    }
}

pub(crate) fn encode(raw: &[u8]) -> (Hash256, Vec<u8>) {
    let sha = Hash256::digest(raw);
    let mut out = Vec::with_capacity(HEADER + raw.len() / 3);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha.0);
    let compressed = zstd::bulk::compress(raw, LEVEL).expect("zstd compresses in memory");
    out.extend_from_slice(&compressed);
    (sha, out)
}

/// The raw SHA-256 an archived object claims, from its header alone; a
/// length over `max_raw` is refused before anything is decompressed.
fn header_sha(key: &str, object: &[u8], max_raw: u64) -> Result<(u64, Hash256), LogError> {
    let corrupt = |why: &str| LogError::Corrupt {
        key: key.to_string(),
        why: why.to_string(),
    };
    if object.len() < HEADER || &object[..8] != MAGIC {
        return Err(corrupt("no holdfast WAL header"));
    }
    let len = u64::from_le_bytes(object[8..16].try_into().expect("8 bytes"));
    if len > max_raw {
        return Err(corrupt(&format!(
            "its header claims {len} bytes, more than such an object holds ({})",
            size_text(max_raw)
        )));
    }
    let sha = Hash256(object[16..48].try_into().expect("32 bytes"));
    Ok((len, sha))
}

/// Opens a sealed archived object (sealed under its own key).
fn open<'a>(
    key: &str,
    object: &'a [u8],
    crypto: &super::Crypto,
) -> Result<std::borrow::Cow<'a, [u8]>, LogError> {
    crypto
        .open(key, object)
        .map_err(|why| LogError::Unauthenticated {
            key: key.to_string(),
            why,
        })
}

/// What lies between a canonical key and an alternative's tag.
pub const ALT_MARK: &str = ".alt-";
/// How many alternative names push tries after the canonical one: enough for
/// a planted key or two, few enough that a push always ends quickly.
pub const MAX_ALTERNATIVES: usize = 4;

/// The `attempt`-th (0-based) alternative name for a file whose canonical
/// object `key` is foreign: `<key>.alt-<first 16 hex of the file's SHA-256>`,
/// then `…-2`, `…-3`, …. Deterministic, so a retried push finds its own
/// earlier object; bound to the content, so [`classify`] refuses bytes
/// copied there from another file.
pub fn alternative_key(key: &str, sha: &Hash256, attempt: usize) -> String {
    let tag = &sha.to_hex()[..16];
    match attempt {
        0 => format!("{key}{ALT_MARK}{tag}"),
        n => format!("{key}{ALT_MARK}{tag}-{}", n + 1),
    }
}

/// The canonical key and the content tag (16 hex) of an alternative name;
/// `None` for any other key.
pub fn split_alternative(key: &str) -> Option<(&str, &str)> {
    let (canonical, rest) = key.rsplit_once(ALT_MARK)?;
    let tag = match rest.split_once('-') {
        Some((tag, n)) => {
            let n: usize = n.parse().ok()?;
            if !(2..=MAX_ALTERNATIVES).contains(&n) || n.to_string() != rest[tag.len() + 1..] {
                return None;
            }
            tag
        }
        None => rest,
    };
    (tag.len() == 16 && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some((canonical, tag))
}

/// What an object at a log archive key is.
#[derive(Debug)]
pub enum Found {
    /// A log file holdfast archived, checked against its SHA-256.
    Archived { raw: Vec<u8>, sha: Hash256 },
    /// Bytes holdfast could not have written there.
    Foreign { why: String },
}

/// The one place deciding whether `object`, read at `key`, was written by
/// holdfast: in an encrypted repository it must open under its own name
/// (an object failing authentication is foreign: whoever wrote it does not
/// hold the key); it must decode (magic, length, zstd, SHA-256, size cap)
/// and, at an alternative name, hold the content its name's tag says.
/// Anything else is foreign.
pub fn classify(key: &str, object: &[u8], crypto: &super::Crypto) -> Found {
    classify_within(key, object, crypto, MAX_RAW)
}

/// [`classify`] for objects that hold at most `max_raw` bytes (a smaller
/// cap than a log file's, e.g. a binlog record's): a larger one is foreign.
pub fn classify_within(key: &str, object: &[u8], crypto: &super::Crypto, max_raw: u64) -> Found {
    classify_into(key, object, crypto, max_raw, true)
}

/// [`classify`] for a caller that only needs the verdict (verify): the
/// content is decompressed and hashed through a small buffer and not kept
/// (`raw` is empty), so a 16 MiB segment costs no 16 MiB allocation.
pub fn classify_checking(key: &str, object: &[u8], crypto: &super::Crypto) -> Found {
    classify_into(key, object, crypto, MAX_RAW, false)
}

/// [`classify_checking`] at verify depth `stored`. In an encrypted
/// repository the object's seal, which authenticates every stored byte
/// under the object's own key, and its header are checked, and an
/// alternative name's tag against the header's SHA-256; the content is not
/// decompressed. Under `encryption: none` nothing but the content's hash
/// proves the stored bytes, so the object is decoded as by
/// [`classify_checking`].
pub fn classify_stored(key: &str, object: &[u8], crypto: &super::Crypto) -> Found {
    if !crypto.is_encrypted() {
        return classify_checking(key, object, crypto);
    }
    let foreign = |e| Found::Foreign {
        why: foreign_why(e),
    };
    let opened = match open(key, object, crypto) {
        Ok(o) => o,
        Err(e) => return foreign(e),
    };
    match header_sha(key, &opened, MAX_RAW) {
        Ok((_, sha)) => named_content(key, sha),
        Err(e) => foreign(e),
    }
}

/// Why an object that did not decode is foreign, for [`Found::Foreign`].
fn foreign_why(e: LogError) -> String {
    match e {
        LogError::Corrupt { why, .. } => why,
        LogError::Unauthenticated { why, .. } => format!("not authentic: {why}"),
        other => other.to_string(),
    }
}

/// An object whose content is `sha`: archived, unless `key` is an
/// alternative name whose tag is another content's.
fn named_content(key: &str, sha: Hash256) -> Found {
    if let Some((_, tag)) = split_alternative(key) {
        if !sha.to_hex().starts_with(tag) {
            return Found::Foreign {
                why: format!("its name says content {tag}…, it holds {}", sha.short()),
            };
        }
    }
    Found::Archived {
        raw: Vec::new(),
        sha,
    }
}

fn classify_into(
    key: &str,
    object: &[u8],
    crypto: &super::Crypto,
    max_raw: u64,
    keep: bool,
) -> Found {
    let mut raw = Vec::new();
    let found = if keep {
        classify_to(key, object, crypto, max_raw, &mut raw)
    } else {
        classify_to(key, object, crypto, max_raw, &mut Discarding)
    };
    match found.expect("memory takes every byte") {
        Found::Archived { sha, .. } => Found::Archived { raw, sha },
        foreign => foreign,
    }
}

/// [`classify`], writing the content into `out` as it is decoded (the
/// returned `raw` is empty). Only a failure to write into `out` is an
/// error: it says nothing about the object. After a foreign verdict `out`
/// may hold part of the object's content.
fn classify_to(
    key: &str,
    object: &[u8],
    crypto: &super::Crypto,
    max_raw: u64,
    out: &mut dyn Content,
) -> Result<Found, LogError> {
    match decode_into(key, object, crypto, max_raw, out) {
        Ok(sha) => Ok(named_content(key, sha)),
        Err(e @ LogError::Write { .. }) => Err(e),
        Err(e) => Ok(Found::Foreign {
            why: foreign_why(e),
        }),
    }
}

/// What a read of an archived object keeps of its content.
#[derive(Debug, Clone)]
enum Keep {
    /// All of it, in memory ([`Found::Archived`]'s `raw`).
    Bytes,
    /// Nothing: it is only checked.
    Nothing,
    /// All of it, written into this file as it is decoded (created, or
    /// emptied first, with these permission bits before the umask), so
    /// memory never holds the whole file.
    File(PathBuf, u32),
}

/// Reads and classifies the object at `key`, keeping what `keep` says of
/// its content; `None` when there is none. Nothing larger than
/// [`object_cap`]`(max_raw)` is downloaded: such an object is foreign.
async fn read_keeping(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: &str,
    max_raw: u64,
    keep: Keep,
) -> Result<Option<Found>, LogError> {
    let object = match store.get_at_most(key, object_cap(max_raw)).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e @ StoreError::TooLarge { .. }) => {
            return Ok(Some(Found::Foreign { why: e.to_string() }))
        }
        Err(e) => return Err(e.into()),
    };
    let k = key.to_string();
    let crypto = crypto.clone();
    tokio::task::spawn_blocking(move || match keep {
        Keep::Bytes => Ok(classify_into(&k, &object, &crypto, max_raw, true)),
        Keep::Nothing => Ok(classify_into(&k, &object, &crypto, max_raw, false)),
        Keep::File(path, mode) => {
            let mut out = FileContent::create(path, mode)?;
            classify_to(&k, &object, &crypto, max_raw, &mut out)
        }
    })
    .await
    .expect("log decoder panicked")
    .map(Some)
}

fn warn_foreign(key: &str, why: &str, action: &str) {
    tracing::warn!(
        object = %key,
        "FOREIGN OBJECT in the log archive: {key} was not written by holdfast ({why}); {action}. Someone with write access to the bucket added it: see docs/runbook.md, \"A foreign object in the WAL archive\""
    );
}

/// Decodes an archived object, after checking its authenticity, and checks
/// it against its header's SHA-256.
pub fn decode(key: &str, object: &[u8], crypto: &super::Crypto) -> Result<Vec<u8>, LogError> {
    decode_within(key, object, crypto, MAX_RAW).map(|(raw, _)| raw)
}

/// [`decode`] for objects that hold at most `max_raw` bytes; also returns
/// the content's SHA-256 (computed once, and equal to the header's).
fn decode_within(
    key: &str,
    object: &[u8],
    crypto: &super::Crypto,
    max_raw: u64,
) -> Result<(Vec<u8>, Hash256), LogError> {
    let mut raw = Vec::new();
    let sha = decode_into(key, object, crypto, max_raw, &mut raw)?;
    Ok((raw, sha))
}

/// Where [`decode_into`] puts the content.
trait Content: std::io::Write {
    /// The header says the content is `len` bytes (not yet checked).
    fn expect(&mut self, len: u64);
    /// What a failure to write is reported against.
    fn name(&self) -> String {
        "memory".to_string()
    }
}

/// Content written into a file.
struct FileContent {
    file: std::fs::File,
    path: PathBuf,
}

impl FileContent {
    /// Creates `path`, or empties it, with permission bits `mode`; never
    /// through a symlink at `path`.
    fn create(path: PathBuf, mode: u32) -> Result<Self, LogError> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
        {
            Ok(file) => Ok(FileContent { file, path }),
            Err(source) => Err(LogError::Write {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

impl std::io::Write for FileContent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Content for FileContent {
    fn expect(&mut self, _: u64) {}
    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

impl Content for Vec<u8> {
    fn expect(&mut self, len: u64) {
        // Memory follows what the frame really holds, not what the header
        // claims: a damaged length must not reserve a gigabyte up front.
        self.reserve(len.min(16 << 20) as usize);
    }
}

/// Content that is only checked, not kept.
struct Discarding;

impl std::io::Write for Discarding {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Content for Discarding {
    fn expect(&mut self, _: u64) {}
}

/// Opens and decompresses an archived object into `out`, checking its
/// length and SHA-256 against its header as the bytes pass (one byte more
/// than the header says is read, to notice a longer file); returns the
/// SHA-256. On an error `out` may hold part of the content.
fn decode_into(
    key: &str,
    object: &[u8],
    crypto: &super::Crypto,
    max_raw: u64,
    out: &mut dyn Content,
) -> Result<Hash256, LogError> {
    use sha2::Digest;
    let object = open(key, object, crypto)?;
    let object = &object[..];
    let (len, sha) = header_sha(key, object, max_raw)?;
    out.expect(len);
    let corrupt = |why: String| LogError::Corrupt {
        key: key.to_string(),
        why,
    };
    let mut decoder = zstd::stream::read::Decoder::new(&object[HEADER..])
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?
        .take(len + 1);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(format!("cannot decompress: {e}"))),
        };
        total += n as u64;
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|source| LogError::Write {
            path: out.name(),
            source,
        })?;
    }
    if total != len {
        return Err(corrupt(format!(
            "{total} bytes decompressed, its header says {len}"
        )));
    }
    let got = Hash256(hasher.finalize().into());
    if got != sha {
        return Err(corrupt(format!(
            "SHA-256 of the content is {got}, its header says {sha}"
        )));
    }
    Ok(got)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub key: String,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub sha256: Hash256,
    /// The same file was already archived (a retry after a crash).
    pub already_archived: bool,
    /// Foreign objects met at the file's names before `key` (empty unless
    /// `key` is an alternative name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<String>,
}

/// Archives the log file at `path` as object `key`.
pub async fn push(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: String,
    path: &Path,
    retention: Option<Retention>,
) -> Result<PushReport, LogError> {
    let raw = tokio::fs::read(path)
        .await
        .map_err(|source| LogError::Read {
            path: path.display().to_string(),
            source,
        })?;
    push_bytes(
        store,
        crypto,
        key,
        raw,
        &path.display().to_string(),
        retention,
    )
    .await
}

/// [`push`] for bytes already in memory (a slice of a growing log file);
/// `what` names them in warnings.
pub async fn push_bytes(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: String,
    raw: Vec<u8>,
    what: &str,
    retention: Option<Retention>,
) -> Result<PushReport, LogError> {
    let (sha, object) = tokio::task::spawn_blocking(move || encode(&raw))
        .await
        .expect("log encoder panicked");
    let bytes = u64::from_le_bytes(object[8..16].try_into().expect("8 bytes"));
    let mut foreign = Vec::new();
    for attempt in 0..=MAX_ALTERNATIVES {
        let at = match attempt {
            0 => key.clone(),
            n => alternative_key(&key, &sha, n - 1),
        };
        // Each name seals its own copy: the name is the associated data.
        let (sealed, sealed_sha) = {
            let (crypto, at, object) = (crypto.clone(), at.clone(), object.clone());
            tokio::task::spawn_blocking(move || {
                let sealed = crypto.seal(&at, object);
                let sha = Hash256::digest(&sealed);
                (sealed, sha)
            })
            .await
            .expect("log sealer panicked")
        };
        let stored_bytes = sealed.len() as u64;
        let opts = PutOptions {
            sha256: sealed_sha,
            retention,
        };
        let already_archived = match store.put(&at, Bytes::from(sealed), &opts).await {
            Ok(()) => false,
            Err(StoreError::AlreadyExists { .. }) => {
                match read_keeping(store, crypto, &at, MAX_RAW, Keep::Nothing).await? {
                    Some(Found::Archived { sha: archived, .. }) if archived == sha => true,
                    Some(Found::Archived { sha: archived, .. }) => {
                        // Only the canonical name can honestly hold other
                        // content: an alternative's name binds its content.
                        return Err(LogError::Conflict {
                            key: at,
                            archived,
                            pushed: sha,
                        });
                    }
                    Some(Found::Foreign { why }) => {
                        warn_foreign(
                            &at,
                            &why,
                            &format!(
                                "left as it is; {} goes under the alternative name {} instead",
                                what,
                                alternative_key(&key, &sha, attempt)
                            ),
                        );
                        foreign.push(format!("{at} ({why})"));
                        continue;
                    }
                    // Removed between the put and the read: nothing is
                    // there now, so the next name is as good as this one.
                    None => continue,
                }
            }
            Err(e) => return Err(e.into()),
        };
        if attempt > 0 {
            tracing::warn!(object = %at, "{what} archived under the alternative name {at}, because {key} holds a foreign object; wal-fetch and restores read it there");
        }
        return Ok(PushReport {
            key: at,
            bytes,
            stored_bytes,
            sha256: sha,
            already_archived,
            foreign,
        });
    }
    Err(LogError::NoFreeName {
        key,
        tried: MAX_ALTERNATIVES,
        foreign: foreign.join("; "),
    })
}

/// A log file read back, and from which object.
#[derive(Debug)]
pub struct Resolved {
    /// The object it was read from: `key` itself or an alternative.
    pub key: String,
    pub raw: Vec<u8>,
    /// The SHA-256 of `raw` (checked against the object's header).
    pub sha: Hash256,
    /// Foreign objects skipped on the way (already warned about).
    pub foreign: Vec<String>,
}

/// Reads archived file `key`: the canonical object, or when it is missing
/// or foreign, its alternatives (listed as `<key>.alt-`). Foreign objects
/// are skipped with a warning naming them. [`LogError::NotFound`] when
/// nothing is at any of its names, [`LogError::OnlyForeign`] when only
/// foreign objects are, [`LogError::Ambiguous`] when alternatives hold
/// different archived content.
pub async fn resolve(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: &str,
) -> Result<Resolved, LogError> {
    resolve_within(store, crypto, key, MAX_RAW).await
}

/// [`resolve`] for objects that hold at most `max_raw` bytes (a binlog
/// record): an object over the cap is foreign, refused before it is
/// decompressed, and never downloaded past [`object_cap`]`(max_raw)`.
pub async fn resolve_within(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: &str,
    max_raw: u64,
) -> Result<Resolved, LogError> {
    resolve_keeping(store, crypto, key, max_raw, Keep::Bytes).await
}

/// [`resolve_within`], keeping the content as `keep` says: with
/// [`Keep::File`], the file holds the content of the object resolved to
/// (and `raw` is empty); after an error it may hold anything.
async fn resolve_keeping(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: &str,
    max_raw: u64,
    keep: Keep,
) -> Result<Resolved, LogError> {
    let mut foreign = Vec::new();
    match read_keeping(store, crypto, key, max_raw, keep.clone()).await? {
        Some(Found::Archived { raw, sha }) => {
            return Ok(Resolved {
                key: key.to_string(),
                raw,
                sha,
                foreign,
            })
        }
        Some(Found::Foreign { why }) => {
            warn_foreign(key, &why, "ignored; reading its alternative names");
            foreign.push(format!("{key} ({why})"));
        }
        None => {}
    }
    let mut found: Option<(String, Vec<u8>, Hash256)> = None;
    let mut others = Vec::new();
    for info in store.list(&format!("{key}{ALT_MARK}")).await? {
        if split_alternative(&info.key).map(|(c, _)| c) != Some(key) {
            continue;
        }
        // Once one alternative is found, the others are only checked:
        // their content matters only as a hash to compare with it.
        let keeping = match found {
            None => keep.clone(),
            Some(_) => Keep::Nothing,
        };
        match read_keeping(store, crypto, &info.key, max_raw, keeping).await? {
            Some(Found::Archived { raw, sha }) => match &found {
                Some((_, _, first)) if *first == sha => {}
                Some(_) => others.push(info.key),
                None => found = Some((info.key, raw, sha)),
            },
            Some(Found::Foreign { why }) => {
                warn_foreign(&info.key, &why, "ignored");
                foreign.push(format!("{} ({why})", info.key));
            }
            None => {}
        }
    }
    match found {
        Some((first, _, _)) if !others.is_empty() => Err(LogError::Ambiguous {
            key: key.to_string(),
            keys: std::iter::once(first)
                .chain(others)
                .collect::<Vec<_>>()
                .join(", "),
        }),
        Some((at, raw, sha)) => Ok(Resolved {
            key: at,
            raw,
            sha,
            foreign,
        }),
        None if foreign.is_empty() => Err(LogError::NotFound {
            key: key.to_string(),
        }),
        None => Err(LogError::OnlyForeign {
            key: key.to_string(),
            foreign: foreign.join("; "),
        }),
    }
}

/// Fetches archived file `key` (see [`resolve`]), checked against its SHA-256.
pub async fn get(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: &str,
) -> Result<Vec<u8>, LogError> {
    Ok(resolve(store, crypto, key).await?.raw)
}

/// Restores archived file `key` (see [`resolve`]) to `dest`, checked
/// against its SHA-256, written to a temporary name beside it, synced, and
/// renamed into place. Returns the bytes written and the object read.
pub async fn fetch(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: String,
    dest: &Path,
) -> Result<(u64, String), LogError> {
    fetch_to(store, crypto, &key, dest, 0o666, true).await
}

/// Restores archived file `key` (see [`resolve`]) to `dest`: decoded
/// straight into a temporary file beside it (`<dest>.holdfast-tmp`,
/// created with permission bits `mode` before the umask) and checked
/// against its SHA-256 as it is written, so memory holds the compressed
/// object and a small buffer, never the whole file; synced when `sync`;
/// renamed into place only once it checked out. On an error nothing is
/// left at either name. Returns the bytes written and the object read.
pub async fn fetch_to(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: &str,
    dest: &Path,
    mode: u32,
    sync: bool,
) -> Result<(u64, String), LogError> {
    let tmp = dest.with_extension("holdfast-tmp");
    let resolved =
        resolve_keeping(store, crypto, key, MAX_RAW, Keep::File(tmp.clone(), mode)).await;
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let at = match resolved {
            Ok(r) => r.key,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let place = || -> std::io::Result<u64> {
            let f = std::fs::File::open(&tmp)?;
            if sync {
                f.sync_all()?;
            }
            let len = f.metadata()?.len();
            std::fs::rename(&tmp, &dest)?;
            Ok(len)
        };
        match place() {
            Ok(len) => Ok((len, at)),
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                Err(LogError::Write {
                    path: dest.display().to_string(),
                    source,
                })
            }
        }
    })
    .await
    .expect("log writer panicked")
}

/// The engine's rule for which archived log files a prune may remove, given
/// the snapshots that remain.
pub trait LogRetention: Send + Sync {
    /// The archive's key prefix for this plan (`wal/<plan>/`).
    fn prefix(&self) -> String;
    /// Which archived files (by name) can no longer be used by any restore
    /// from `remaining` (heads of the plan's kept snapshots), worked out
    /// once for a whole listing of the archive. Must answer false for
    /// everything when `remaining` holds no snapshot the archive belongs to.
    fn expiry(&self, remaining: &[&super::ManifestHead])
        -> Box<dyn Fn(&str) -> bool + Send + Sync>;

    /// Whether archived file `name` is expired ([`LogRetention::expiry`]).
    fn expired(&self, remaining: &[&super::ManifestHead], name: &str) -> bool {
        self.expiry(remaining)(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: crate::repository::Crypto = crate::repository::Crypto::none();

    #[test]
    fn objects_round_trip_and_damage_is_named() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let none = crate::repository::Crypto::none();
        let (sha, object) = encode(&raw);
        assert_eq!(Hash256::digest(&raw), sha);
        assert_eq!(decode("wal/p/x", &object, &none).unwrap(), raw);
        let mut bad = object.clone();
        let last = bad.len() - 10;
        bad[last] ^= 1;
        let err = decode("wal/p/x", &bad, &none).unwrap_err().to_string();
        assert!(err.contains("wal/p/x is corrupt"), "{err}");
        assert!(decode("wal/p/x", &object[..20], &none).is_err());
    }

    #[test]
    fn sealed_objects_open_under_their_own_key_only() {
        let c = crate::repository::Crypto::with_keys(crate::repository::crypto::DataKeys::derive(
            &crate::repository::crypto::MasterSecret::random(),
            "r",
        ));
        let (_, object) = encode(b"segment bytes");
        let sealed = c.seal("wal/p/000000010000000000000001", object);
        assert_eq!(
            decode("wal/p/000000010000000000000001", &sealed, &c).unwrap(),
            b"segment bytes"
        );
        let err = decode("wal/p/000000010000000000000002", &sealed, &c).unwrap_err();
        assert!(matches!(err, LogError::Unauthenticated { .. }), "{err}");
    }

    /// Verify's `stored` depth: in an encrypted repository the seal and the
    /// header are checked and the frame is not decompressed, so an object a
    /// key holder sealed with a frame that does not hold its header's
    /// content (a writer's mistake) passes, where the `chunks` depth finds
    /// it; anything not sealed under its own name, or without a sound
    /// header, is foreign at both depths. Under `encryption: none` both
    /// decode the content.
    #[test]
    fn the_stored_depth_checks_the_seal_and_header_without_decompressing() {
        let c = crate::repository::Crypto::with_keys(crate::repository::crypto::DataKeys::derive(
            &crate::repository::crypto::MasterSecret::random(),
            "r",
        ));
        let key = "wal/p/000000010000000000000001";
        let raw = b"a WAL segment".repeat(1000);
        let (sha, object) = encode(&raw);
        let sealed = c.seal(key, object.clone());
        for found in [
            classify_stored(key, &sealed, &c),
            classify_checking(key, &sealed, &c),
        ] {
            assert!(matches!(found, Found::Archived { sha: s, .. } if s == sha));
        }

        // A sound header, then a frame of other content, sealed by a key
        // holder: only decoding finds it.
        let (_, other) = encode(&b"other content".repeat(1000));
        let mut mistaken = object[..HEADER].to_vec();
        mistaken.extend_from_slice(&other[HEADER..]);
        let sealed_mistake = c.seal(key, mistaken.clone());
        assert!(matches!(
            classify_stored(key, &sealed_mistake, &c),
            Found::Archived { .. }
        ));
        let why = foreign(classify_checking(key, &sealed_mistake, &c));
        assert!(why.contains("SHA-256 of the content"), "{why}");

        // Sealed under another name, no header, a header claiming too much.
        let moved = foreign(classify_stored(
            "wal/p/000000010000000000000002",
            &sealed,
            &c,
        ));
        assert!(moved.contains("not authentic"), "{moved}");
        let headless = foreign(classify_stored(
            key,
            &c.seal(key, b"no header".to_vec()),
            &c,
        ));
        assert!(headless.contains("no holdfast WAL header"), "{headless}");
        let mut huge = object.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let huge = foreign(classify_stored(key, &c.seal(key, huge), &c));
        assert!(huge.contains("more than such an object holds"), "{huge}");
        // An alternative name whose tag is not the header's content.
        let alt = format!("{key}{ALT_MARK}0123456789abcdef");
        let tagged = foreign(classify_stored(&alt, &c.seal(&alt, object.clone()), &c));
        assert!(
            tagged.contains("its name says content 0123456789abcdef"),
            "{tagged}"
        );

        // Unencrypted, nothing but the content proves the stored bytes.
        let why = foreign(classify_stored(key, &mistaken, &NONE));
        assert!(why.contains("SHA-256 of the content"), "{why}");
        assert!(matches!(
            classify_stored(key, &object, &NONE),
            Found::Archived { sha: s, .. } if s == sha
        ));
    }

    fn foreign(found: Found) -> String {
        match found {
            Found::Foreign { why } => why,
            Found::Archived { .. } => panic!("classified as archived"),
        }
    }

    #[test]
    fn only_what_holdfast_could_have_written_is_archived_everything_else_is_foreign() {
        let raw = b"a WAL segment".repeat(1000);
        let (sha, object) = encode(&raw);
        match classify("wal/p/x", &object, &NONE) {
            Found::Archived { raw: got, sha: s } => assert!(got == raw && s == sha),
            Found::Foreign { why } => panic!("{why}"),
        }
        // Garbage, a bad magic, a truncated header or body, a huge length,
        // a SHA-256 that does not match, a frame that is not zstd.
        assert!(
            foreign(classify("wal/p/x", b"planted by an insider", &NONE))
                .contains("no holdfast WAL header")
        );
        let mut magic = object.clone();
        magic[0] = b'X';
        foreign(classify("wal/p/x", &magic, &NONE));
        foreign(classify("wal/p/x", &object[..object.len() - 3], &NONE));
        let mut huge = object.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(foreign(classify("wal/p/x", &huge, &NONE)).contains("1 GiB"));
        let mut sha_off = object.clone();
        sha_off[20] ^= 1;
        assert!(foreign(classify("wal/p/x", &sha_off, &NONE)).contains("SHA-256"));
        let mut not_zstd = object[..HEADER].to_vec();
        not_zstd.extend_from_slice(&raw);
        assert!(foreign(classify("wal/p/x", &not_zstd, &NONE)).contains("decompress"));
        // At an alternative name the content must be the one the name says:
        // a sound object copied there from another file is foreign.
        let alt = alternative_key("wal/p/x", &sha, 0);
        assert!(matches!(
            classify(&alt, &object, &NONE),
            Found::Archived { .. }
        ));
        let other = alternative_key("wal/p/x", &Hash256::digest(b"other"), 0);
        assert!(foreign(classify(&other, &object, &NONE)).contains("its name says"));
        // The check-only form verify uses gives the same verdict on each,
        // and a longer or shorter content than the header says is named.
        let check = |key: &str, object: &[u8]| classify_checking(key, object, &NONE);
        match check("wal/p/x", &object) {
            Found::Archived { raw, sha: s } => assert!(raw.is_empty() && s == sha),
            Found::Foreign { why } => panic!("{why}"),
        }
        for bad in [
            &magic[..],
            &object[..object.len() - 3],
            &huge,
            &sha_off,
            &not_zstd,
        ] {
            assert_eq!(
                foreign(check("wal/p/x", bad)),
                foreign(classify("wal/p/x", bad, &NONE))
            );
        }
        assert!(matches!(check(&other, &object), Found::Foreign { .. }));
        let mut short = object.clone();
        short[8..16].copy_from_slice(&(raw.len() as u64 - 1).to_le_bytes());
        assert!(foreign(check("wal/p/x", &short)).contains("header says"));
        let mut long = object.clone();
        long[8..16].copy_from_slice(&(raw.len() as u64 + 1).to_le_bytes());
        assert!(foreign(check("wal/p/x", &long)).contains("header says"));
    }

    #[test]
    fn alternative_names_are_deterministic_bounded_and_parse_back() {
        let sha = Hash256::digest(b"segment");
        let hex = &sha.to_hex()[..16];
        let key = "wal/p/000000010000000000000003";
        assert_eq!(alternative_key(key, &sha, 0), format!("{key}.alt-{hex}"));
        assert_eq!(alternative_key(key, &sha, 1), format!("{key}.alt-{hex}-2"));
        for attempt in 0..MAX_ALTERNATIVES {
            let alt = alternative_key(key, &sha, attempt);
            assert_eq!(split_alternative(&alt), Some((key, hex)), "{alt}");
        }
        for not_alt in [
            key.to_string(),
            format!("{key}.alt-"),
            format!("{key}.alt-{}", &hex[..15]),
            format!("{key}.alt-{}", hex.to_uppercase()),
            format!("{key}.alt-{hex}-1"),
            format!("{key}.alt-{hex}-02"),
            format!("{key}.alt-{hex}-{}", MAX_ALTERNATIVES + 1),
            format!("{key}.alt-ab-2"),
            format!("{key}.alt-{hex}-"),
        ] {
            assert_eq!(split_alternative(&not_alt), None, "{not_alt}");
        }
    }

    async fn archive_with_planted(
        planted: &[(&str, &[u8])],
    ) -> (tempfile::TempDir, crate::store::local::LocalStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::local::LocalStore::open(tmp.path().join("repo")).unwrap();
        for (key, bytes) in planted {
            let opts = PutOptions {
                sha256: Hash256::digest(bytes),
                retention: None,
            };
            store
                .put(key, Bytes::copy_from_slice(bytes), &opts)
                .await
                .unwrap();
        }
        (tmp, store)
    }

    #[tokio::test]
    async fn a_planted_key_sends_the_push_to_its_alternative_and_fetch_reads_it_there() {
        let key = "wal/p/000000010000000000000003";
        let raw = b"the real segment".repeat(100);
        let sha = Hash256::digest(&raw);
        let alt = alternative_key(key, &sha, 0);
        let (tmp, store) = archive_with_planted(&[(key, b"garbage")]).await;
        let file = tmp.path().join("000000010000000000000003");
        std::fs::write(&file, &raw).unwrap();

        let report = push(&store, &NONE, key.into(), &file, None).await.unwrap();
        assert_eq!(report.key, alt);
        assert!(!report.already_archived);
        assert!(report.foreign[0].starts_with(key), "{:?}", report.foreign);
        // A retry (PostgreSQL after a crash) is idempotent.
        let again = push(&store, &NONE, key.into(), &file, None).await.unwrap();
        assert!(again.already_archived && again.key == alt);

        let dest = tmp.path().join("fetched");
        let (bytes, from) = fetch(&store, &NONE, key.into(), &dest).await.unwrap();
        assert_eq!((bytes, from.as_str()), (raw.len() as u64, alt.as_str()));
        assert_eq!(std::fs::read(&dest).unwrap(), raw);
    }

    #[tokio::test]
    async fn a_planted_alternative_too_moves_the_push_on_and_the_tries_are_bounded() {
        let key = "wal/p/00000002.history";
        let raw = b"1\t0/3000000\tno recovery target specified\n".to_vec();
        let sha = Hash256::digest(&raw);
        let (alt0, alt1) = (alternative_key(key, &sha, 0), alternative_key(key, &sha, 1));
        let (tmp, store) =
            archive_with_planted(&[(key, b"garbage"), (alt0.as_str(), b"more garbage")]).await;
        let file = tmp.path().join("00000002.history");
        std::fs::write(&file, &raw).unwrap();
        let report = push(&store, &NONE, key.into(), &file, None).await.unwrap();
        assert_eq!(report.key, alt1);
        assert_eq!(report.foreign.len(), 2);
        assert_eq!(get(&store, &NONE, key).await.unwrap(), raw);

        // Every name taken: the push fails, naming the planted keys.
        let mut planted: Vec<(String, &[u8])> = vec![(key.to_string(), b"x")];
        for n in 0..MAX_ALTERNATIVES {
            planted.push((alternative_key(key, &sha, n), b"x"));
        }
        let refs: Vec<(&str, &[u8])> = planted.iter().map(|(k, b)| (k.as_str(), *b)).collect();
        let (tmp, store) = archive_with_planted(&refs).await;
        let file = tmp.path().join("00000002.history");
        std::fs::write(&file, &raw).unwrap();
        let err = push(&store, &NONE, key.into(), &file, None)
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::NoFreeName { .. }), "{err}");
        assert!(err.to_string().contains(&alt1), "{err}");
    }

    #[tokio::test]
    async fn other_archived_content_at_the_name_is_still_a_conflict() {
        let key = "wal/p/000000010000000000000003";
        let (_, theirs) = encode(b"another cluster's segment");
        let (tmp, store) = archive_with_planted(&[(key, &theirs)]).await;
        let file = tmp.path().join("seg");
        std::fs::write(&file, b"our segment").unwrap();
        let err = push(&store, &NONE, key.into(), &file, None)
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::Conflict { .. }), "{err}");
    }

    fn sealing() -> crate::repository::Crypto {
        crate::repository::Crypto::with_keys(crate::repository::crypto::DataKeys::derive(
            &crate::repository::crypto::MasterSecret::random(),
            "r",
        ))
    }

    #[test]
    fn with_encryption_an_object_failing_authentication_is_foreign() {
        let c = sealing();
        let key = "wal/p/000000010000000000000001";
        let (sha, object) = encode(b"segment bytes");
        // A sound unsealed object, one sealed under another name and one
        // sealed with another repository's key: none opens, all foreign.
        assert!(foreign(classify(key, &object, &c)).contains("not authentic"));
        let elsewhere = c.seal("wal/p/000000010000000000000002", object.clone());
        assert!(foreign(classify(key, &elsewhere, &c)).contains("not authentic"));
        let theirs = sealing().seal(key, object.clone());
        assert!(foreign(classify(key, &theirs, &c)).contains("not authentic"));
        let ours = c.seal(key, object);
        match classify(key, &ours, &c) {
            Found::Archived { raw, sha: s } => assert!(raw == b"segment bytes" && s == sha),
            Found::Foreign { why } => panic!("{why}"),
        }
    }

    #[tokio::test]
    async fn with_encryption_an_unauthentic_object_moves_the_push_on_and_a_sealed_other_file_conflicts(
    ) {
        let c = sealing();
        let key = "wal/p/000000010000000000000003";
        // A perfectly formed but unsealed object: written without the key.
        let (_, unsealed) = encode(b"planted segment");
        let (tmp, store) = archive_with_planted(&[(key, &unsealed)]).await;
        let raw = b"our segment".repeat(50);
        let file = tmp.path().join("seg");
        std::fs::write(&file, &raw).unwrap();
        let report = push(&store, &c, key.into(), &file, None).await.unwrap();
        let alt = alternative_key(key, &Hash256::digest(&raw), 0);
        assert_eq!(report.key, alt);
        assert!(
            report.foreign[0].contains("not authentic"),
            "{:?}",
            report.foreign
        );
        let again = push(&store, &c, key.into(), &file, None).await.unwrap();
        assert!(again.already_archived && again.key == alt);
        let dest = tmp.path().join("fetched");
        let (_, from) = fetch(&store, &c, key.into(), &dest).await.unwrap();
        assert_eq!(from, alt);
        assert_eq!(std::fs::read(&dest).unwrap(), raw);

        // Sealed by a key holder with other content: a real conflict.
        let key = "wal/p/000000010000000000000004";
        let (_, other) = encode(b"another cluster's segment");
        let sealed = c.seal(key, other);
        let (tmp, store) = archive_with_planted(&[(key, &sealed)]).await;
        let file = tmp.path().join("seg");
        std::fs::write(&file, b"our segment").unwrap();
        let err = push(&store, &c, key.into(), &file, None).await.unwrap_err();
        assert!(matches!(err, LogError::Conflict { .. }), "{err}");
    }

    #[tokio::test]
    async fn fetch_tells_missing_from_only_foreign_and_refuses_to_guess_between_alternatives() {
        let key = "wal/p/000000010000000000000004";
        let (tmp, store) = archive_with_planted(&[(key, b"garbage")]).await;
        let err = get(&store, &NONE, "wal/p/000000010000000000000005")
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::NotFound { .. }), "{err}");
        let err = get(&store, &NONE, key).await.unwrap_err();
        assert!(matches!(err, LogError::OnlyForeign { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("{key} is corrupt or foreign")),
            "{err}"
        );

        // Two alternatives with different sound content: two clusters.
        for content in [&b"one"[..], b"two"] {
            let (sha, object) = encode(content);
            let opts = PutOptions {
                sha256: Hash256::digest(&object),
                retention: None,
            };
            store
                .put(&alternative_key(key, &sha, 0), Bytes::from(object), &opts)
                .await
                .unwrap();
        }
        let err = get(&store, &NONE, key).await.unwrap_err();
        assert!(matches!(err, LogError::Ambiguous { .. }), "{err}");
        drop(tmp);
    }

    #[tokio::test]
    async fn fetch_to_decodes_into_the_file_and_leaves_nothing_behind_when_refused() {
        use std::os::unix::fs::PermissionsExt;
        let key = "wal/p/000000010000000000000007";
        // Several decode buffers' worth, so the file is written in pieces.
        let raw: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let sha = Hash256::digest(&raw);
        // At the canonical name, a well-formed object whose content does
        // not match its header: it is decoded into the file before its hash
        // fails, and must not stay there.
        let (_, mut lying) = encode(&raw[..600_000]);
        lying[20] ^= 1;
        let (_, sound) = encode(&raw);
        let alt = alternative_key(key, &sha, 0);
        let (tmp, store) = archive_with_planted(&[(key, &lying), (alt.as_str(), &sound)]).await;
        let dest = tmp.path().join("000000010000000000000007");
        let (bytes, from) = fetch_to(&store, &NONE, key, &dest, 0o600, false)
            .await
            .unwrap();
        assert_eq!((bytes, from.as_str()), (raw.len() as u64, alt.as_str()));
        assert!(std::fs::read(&dest).unwrap() == raw);
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let tmp_name = dest.with_extension("holdfast-tmp");
        assert!(!tmp_name.exists());

        // Only the lying object: refused, and neither name is left.
        let (tmp, store) = archive_with_planted(&[(key, &lying)]).await;
        let dest = tmp.path().join("000000010000000000000007");
        let err = fetch_to(&store, &NONE, key, &dest, 0o600, false)
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::OnlyForeign { .. }), "{err}");
        assert!(!dest.exists() && !dest.with_extension("holdfast-tmp").exists());

        // A symlink planted at the temporary name is not followed.
        let (tmp, store) = archive_with_planted(&[(key, &sound)]).await;
        let dest = tmp.path().join("000000010000000000000007");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::write(&elsewhere, b"untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dest.with_extension("holdfast-tmp")).unwrap();
        let err = fetch_to(&store, &NONE, key, &dest, 0o600, false)
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::Write { .. }), "{err}");
        assert!(err.to_string().contains("holdfast-tmp"), "{err}");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
        assert!(!dest.exists());
    }
}
