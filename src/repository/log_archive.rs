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
//!   content fails loudly, never overwriting;
//! * push fails on any error, so the server keeps the file and retries:
//!   nothing is dropped;
//! * fetch distinguishes "not in the archive" from every other failure.

use std::io::{Read, Write};
use std::path::Path;

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
pub const MAX_OBJECT: u64 =
    HEADER as u64 + MAX_RAW + MAX_RAW / 128 + (1 << 20) + super::crypto::SEAL_OVERHEAD as u64;

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

/// The raw SHA-256 an archived object claims, from its header alone.
fn header_sha(key: &str, object: &[u8]) -> Result<(u64, Hash256), LogError> {
    let corrupt = |why: &str| LogError::Corrupt {
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

/// Decodes an archived object, after checking its authenticity, and checks
/// it against its header's SHA-256.
pub fn decode(key: &str, object: &[u8], crypto: &super::Crypto) -> Result<Vec<u8>, LogError> {
    let object = open(key, object, crypto)?;
    let object = &object[..];
    let (len, sha) = header_sha(key, object)?;
    // Memory follows what the frame really holds, not what the header
    // claims: a damaged length must not reserve a gigabyte up front. One
    // byte more than the header says is read, to notice a longer file.
    let mut raw = Vec::with_capacity(len.min(16 << 20) as usize);
    zstd::stream::read::Decoder::new(&object[HEADER..])
        .and_then(|d| d.take(len + 1).read_to_end(&mut raw))
        .map_err(|e| LogError::Corrupt {
            key: key.to_string(),
            why: format!("cannot decompress: {e}"),
        })?;
    if raw.len() as u64 != len {
        return Err(LogError::Corrupt {
            key: key.to_string(),
            why: format!("{} bytes decompressed, its header says {len}", raw.len()),
        });
    }
    let got = Hash256::digest(&raw);
    if got != sha {
        return Err(LogError::Corrupt {
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
    let (sha, object) = tokio::task::spawn_blocking(move || encode(&raw))
        .await
        .expect("log encoder panicked");
    let bytes = u64::from_le_bytes(object[8..16].try_into().expect("8 bytes"));
    let object = crypto.seal(&key, object);
    let stored_bytes = object.len() as u64;
    let opts = PutOptions {
        sha256: Hash256::digest(&object),
        retention,
    };
    let already_archived = match store.put(&key, Bytes::from(object), &opts).await {
        Ok(()) => false,
        Err(StoreError::AlreadyExists { .. }) => {
            let existing = store.get_at_most(&key, MAX_OBJECT).await?;
            let existing = open(&key, &existing, crypto)?;
            let (_, archived) = header_sha(&key, &existing)?;
            if archived != sha {
                return Err(LogError::Conflict {
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

/// Fetches object `key` and checks it against its SHA-256.
pub async fn get(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: &str,
) -> Result<Vec<u8>, LogError> {
    let object = match store.get_at_most(key, MAX_OBJECT).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => {
            return Err(LogError::NotFound {
                key: key.to_string(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let k = key.to_string();
    let crypto = crypto.clone();
    tokio::task::spawn_blocking(move || decode(&k, &object, &crypto))
        .await
        .expect("log decoder panicked")
}

/// Restores object `key` to `dest`, checked against its SHA-256, written to
/// a temporary name beside it and renamed into place.
pub async fn fetch(
    store: &dyn Store,
    crypto: &super::Crypto,
    key: String,
    dest: &Path,
) -> Result<u64, LogError> {
    let object = match store.get_at_most(&key, MAX_OBJECT).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return Err(LogError::NotFound { key }),
        Err(e) => return Err(e.into()),
    };
    let dest = dest.to_path_buf();
    let crypto = crypto.clone();
    tokio::task::spawn_blocking(move || {
        let raw = decode(&key, &object, &crypto)?;
        let tmp = dest.with_extension("holdfast-tmp");
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut f = std::fs::File::create(tmp)?;
            f.write_all(&raw)?;
            f.sync_all()?;
            std::fs::rename(tmp, &dest)
        };
        write(&tmp).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            LogError::Write {
                path: dest.display().to_string(),
                source,
            }
        })?;
        Ok(raw.len() as u64)
    })
    .await
    .expect("log writer panicked")
}

/// The engine's rule for which archived log files a prune may remove, given
/// the snapshots that remain.
pub trait LogRetention: Send + Sync {
    /// The archive's key prefix for this plan (`wal/<plan>/`).
    fn prefix(&self) -> String;
    /// Whether archived file `name` can no longer be used by any restore
    /// from `remaining` (manifests of the plan's kept snapshots). Must
    /// answer false for everything when `remaining` holds no snapshot the
    /// archive belongs to.
    fn expired(&self, remaining: &[&super::Manifest], name: &str) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
