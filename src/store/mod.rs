//! Where bytes live: one small object-store trait and its backends.
//!
//! The store knows nothing of plans, sources or the repository format; it moves
//! opaque, named, write-once objects and keeps each object's retention.
//!
//! # Contract every backend honours (checked by `tests/store_conformance.rs`)
//! * `put` is **create-only**: writing a key that exists fails with
//!   [`StoreError::AlreadyExists`] and leaves the stored object untouched. A put
//!   is atomic: readers see the whole object or nothing, even if the writer is
//!   killed half way.
//! * Every put carries the SHA-256 of its bytes; a backend that can verify it on
//!   arrival (S3's `x-amz-checksum-sha256`) does.
//! * "Not found" is always [`StoreError::NotFound`] naming the key, never an
//!   empty object or a generic I/O error.
//! * `delete` of an object whose retention has not ended fails with
//!   [`StoreError::Retained`]; retention can be extended, never shortened.
//! * `list` returns every key under a prefix, sorted, each with its size.
//! * `get_at_most` refuses an object over the caller's cap with
//!   [`StoreError::TooLarge`] from its stored size, before reading it; no
//!   read allocates from a size the server claims beyond what arrives, and
//!   ranges whose offset and length overflow are [`StoreError::Truncated`].
//! * Retries: what a backend returns is final. The local store has nothing
//!   worth retrying; the S3 store retries throttling, timeouts and 5xx inside
//!   the AWS SDK (standard mode, backoff with jitter). [`StoreError::is_transient`]
//!   tells callers (the daemon's schedule) whether a later run may succeed.

pub mod local;
pub mod s3;

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::Hash256;

/// How an object's retention is enforced. Mirrors S3 Object Lock modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Nobody, not even the account root, can delete or shorten before the date.
    Compliance,
    /// Holders of a bypass permission can; everybody else cannot.
    Governance,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Compliance => "compliance",
            LockMode::Governance => "governance",
        })
    }
}

/// An object's write-once retention: it may not be deleted or overwritten before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub mode: LockMode,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct PutOptions {
    /// SHA-256 of the bytes being put.
    pub sha256: Hash256,
    pub retention: Option<Retention>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub retention: Option<Retention>,
    /// When the storage service created the object (on S3 the original
    /// version's `LastModified`, by the server's clock), from a listing;
    /// `None` where the store cannot vouch for it (the local store: anyone
    /// who can write the directory can set a file's times). Readers check a
    /// snapshot's claimed start time against it.
    pub created: Option<DateTime<Utc>>,
}

/// What a backend can promise; plan validation refuses what it cannot honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Retention is enforced by the storage service itself, so it holds even
    /// against someone with the store's credentials or the machine's root.
    pub server_enforced_lock: bool,
    /// Create-only puts are atomic on the server side (no check-then-write race).
    pub atomic_create: bool,
    pub versioning: bool,
    /// Requests worth keeping in flight at once when reading: each one waits
    /// on a network round trip, so more than there are cores. 0: one per core.
    pub parallel_reads: usize,
}

/// Where a store lives, as the plan's `repository` section describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Local { root: PathBuf },
    S3(s3::S3Config),
}

impl StoreConfig {
    pub fn url(&self) -> String {
        match self {
            StoreConfig::Local { root } => format!("file://{}", root.display()),
            StoreConfig::S3(c) => c.url(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} not found in {store}")]
    NotFound { store: String, key: String },
    #[error("object {key} already exists in {store}; objects are write-once")]
    AlreadyExists { store: String, key: String },
    #[error("object {key} in {store} is retained ({mode} lock) until {until}; it cannot be deleted or overwritten before then")]
    Retained {
        store: String,
        key: String,
        mode: LockMode,
        until: DateTime<Utc>,
    },
    #[error("refusing to shorten the retention of {key} in {store} from {current} to {requested}")]
    RetentionShortening {
        store: String,
        key: String,
        current: DateTime<Utc>,
        requested: DateTime<Utc>,
    },
    #[error("{what} is held by another process ({holder}); lock {location}")]
    Busy {
        what: String,
        holder: String,
        location: String,
    },
    /// A lease lock could not be kept: its object was changed by someone
    /// else (taken over after it looked stale, or removed), or it could not
    /// be refreshed before the safety margin of its lease. The work it
    /// protected stopped before its next commit point.
    #[error("lost lock `{lock}` in {store}: {detail}; stopped before committing anything more (the lock object is {location})")]
    LeaseLost {
        lock: String,
        store: String,
        location: String,
        detail: String,
    },
    #[error("bucket {bucket} of {store} does not exist or is not reachable with these credentials; create it with `holdfast repo init --plan FILE`")]
    NoBucket { store: String, bucket: String },
    #[error("{op} {key} in {store} was refused ({detail}); the credentials lack the permission, or an object lock forbids it")]
    Denied {
        op: &'static str,
        store: String,
        key: String,
        detail: String,
    },
    /// No credentials anywhere the AWS chain looks, and none in the plan.
    #[error("no S3 credentials for {store}: none in the plan, and the AWS chain found none ({detail}). Give them one of these ways: `access_key_id` with `secret_access_key: ${{VAR}}` or `secret_access_key_file` in the plan's repository section; AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment of the user running holdfast (an env file must be exported into that shell: `set -a; . FILE; set +a`, or EnvironmentFile= in a systemd unit; the server's archive_command sees only the server's environment); or AWS_PROFILE naming a profile in ~/.aws/credentials of that user (HOME={home})")]
    NoCredentials {
        store: String,
        detail: String,
        home: String,
    },
    #[error("object key `{key}` is not valid: {why}")]
    BadKey { key: String, why: &'static str },
    #[error("object {key} in {store} is shorter than expected: wanted bytes {offset}..{end}, it has {size}")]
    Truncated {
        store: String,
        key: String,
        offset: u64,
        end: u64,
        size: u64,
    },
    #[error("object {key} in {store} is {size} bytes, over the {max}-byte cap for what it should hold; not read")]
    TooLarge {
        store: String,
        key: String,
        size: u64,
        max: u64,
    },
    #[error("unable to {op} {key} in {store}: {source}")]
    Io {
        op: &'static str,
        store: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether retrying the same call may succeed (throttling, timeouts, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// How a named lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// With other shared holders (backups of different plans).
    Shared,
    /// Alone (a prune, or one backup of one plan).
    Exclusive,
}

/// Held while a process has use of a named lock. `release` gives it
/// back; dropping it releases it on a best-effort basis (a local lock at once,
/// an S3 lock when its lease ends or a later process on the host sees the
/// holder is gone).
///
/// A local `flock` is never lost while its file descriptor is open. An S3
/// lease can be: before each commit point (a manifest or prune record
/// written, an object deleted) the holder asks [`LockGuard::check`] (no
/// request) or [`LockGuard::confirm`] (refreshes the lease now) and stops
/// with [`StoreError::LeaseLost`] if the lock no longer certainly holds.
#[async_trait]
pub trait LockGuard: Send + Sync {
    /// `Ok` while the lock certainly holds for at least a safety margin;
    /// [`StoreError::LeaseLost`] once it may not. Makes no request.
    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Like [`LockGuard::check`], but refreshes the lease first, so that a
    /// commit point right after it has a whole lease of time; a takeover
    /// by someone else is detected here at the latest.
    async fn confirm(&self) -> Result<(), StoreError> {
        self.check()
    }
    async fn release(self: Box<Self>) {}
}

#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// `file:///…` or `s3://bucket/prefix`, for messages.
    fn url(&self) -> String;
    fn capabilities(&self) -> Capabilities;
    /// Create-only put; see the module contract.
    async fn put(&self, key: &str, data: Bytes, opts: &PutOptions) -> Result<(), StoreError>;
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// The whole object if it holds at most `max` bytes; otherwise
    /// [`StoreError::TooLarge`], decided from the stored size before the body
    /// is downloaded, and checked again against the bytes that arrive. For
    /// objects whose kind has a size cap (repository metadata), so a planted
    /// huge object costs a refusal naming it, not memory.
    async fn get_at_most(&self, key: &str, max: u64) -> Result<Bytes, StoreError>;
    /// Exactly `len` bytes from `offset`, or [`StoreError::Truncated`].
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError>;
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Moves retain-until later; refuses to move it earlier.
    async fn extend_retention(&self, key: &str, retention: &Retention) -> Result<(), StoreError>;
    /// Deletes an object whose retention has ended; refuses otherwise.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Takes the named lock without waiting, or fails with
    /// [`StoreError::Busy`] naming a holder. Any number of [`LockKind::Shared`]
    /// holders may hold one name at once; an [`LockKind::Exclusive`] holder
    /// excludes every other holder, shared or exclusive.
    async fn try_lock(&self, name: &str, kind: LockKind) -> Result<Box<dyn LockGuard>, StoreError>;
}

/// Opens the store a configuration names.
pub async fn open(config: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    match config {
        StoreConfig::Local { root } => Ok(Box::new(local::LocalStore::open(root.clone())?)),
        StoreConfig::S3(c) => Ok(Box::new(s3::S3Store::open(c.clone()).await?)),
    }
}

/// Rejects keys that could escape a store's namespace or mean different things
/// on different backends.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::BadKey {
            key: key.to_string(),
            why,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') || key.ends_with('/') {
        return bad("starts or ends with `/`");
    }
    if key
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("has an empty, `.` or `..` segment");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return bad("only ASCII letters, digits, `.`, `_`, `-` and `/` are allowed");
    }
    Ok(())
}
