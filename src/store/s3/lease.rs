//! Named locks: objects under `locks/`, the one thing holdfast overwrites.
//! An exclusive holder's object `locks/<name>` is created with
//! `If-None-Match` so one holder wins; each shared holder creates its own
//! `locks/<name>.shared.<host>-<pid>-<nonce>`. Each side writes its own object
//! first and then looks for the other kind's live objects, backing off if it
//! finds one: with S3's read-after-write listing, of two that race at least
//! one sees the other. Leases are refreshed in the background so a live
//! holder's never runs out, and taken over only when the holder is
//! certainly gone.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::transfer::b64;
use super::S3Store;
use crate::store::{check_key, LockGuard, LockKind, PutOptions, Store, StoreError};

/// How long a repository lock object holds without being refreshed.
const LOCK_LEASE: Duration = Duration::from_secs(15 * 60);

impl S3Store {
    /// Takes the lock `name` as `kind`, or says who holds it.
    pub(super) async fn acquire_lock(
        &self,
        name: &str,
        kind: LockKind,
    ) -> Result<Box<dyn LockGuard>, StoreError> {
        let exclusive_key = format!("locks/{name}");
        check_key(&exclusive_key)?;
        let shared_prefix = format!("{exclusive_key}.shared.");
        let key = match kind {
            LockKind::Exclusive => exclusive_key.clone(),
            LockKind::Shared => {
                let mut nonce = [0u8; 4];
                getrandom::fill(&mut nonce).map_err(|e| StoreError::Io {
                    op: "make a lock name",
                    store: self.url.clone(),
                    key: exclusive_key.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                format!(
                    "{shared_prefix}{}-{}-{}",
                    crate::hostname()
                        .unwrap_or_else(|| "unknown".into())
                        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
                    std::process::id(),
                    hex::encode(nonce)
                )
            }
        };
        let acquired = Utc::now();
        let record = LockRecord::new(acquired);
        let body = Bytes::from(serde_json::to_vec(&record).expect("lock record serialises"));
        let opts = PutOptions {
            sha256: crate::ids::Hash256(Sha256::digest(&body).into()),
            retention: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.put_single(&key, body.clone(), &opts).await {
                Ok(()) => break,
                Err(StoreError::AlreadyExists { .. }) if attempt < 3 => {
                    let held = self.get(&key).await.ok();
                    let holder: Option<LockRecord> =
                        held.as_ref().and_then(|b| serde_json::from_slice(b).ok());
                    match holder {
                        Some(h) if !h.is_stale() => {
                            return Err(StoreError::Busy {
                                what: format!("lock `{name}` in {}", self.url),
                                holder: format!(
                                    "pid {} on {} since {}, lease until {}",
                                    h.pid, h.host, h.acquired, h.expires
                                ),
                                location: format!("{}/{key}", self.url),
                            });
                        }
                        _ => {
                            tracing::warn!(object = %key, "taking over a stale repository lock");
                            for (v, _) in self.versions(&key).await? {
                                self.delete_version(&key, &v).await?;
                            }
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        // Our object is written: now the other kind must not be held.
        let conflict = match kind {
            LockKind::Exclusive => self.live_holder(&shared_prefix, false).await?,
            LockKind::Shared => self.live_holder(&exclusive_key, true).await?,
        };
        if let Some((held, h)) = conflict {
            for (v, _) in self.versions(&key).await.unwrap_or_default() {
                let _ = self.delete_version(&key, &v).await;
            }
            return Err(StoreError::Busy {
                what: format!("lock `{name}` in {}", self.url),
                holder: format!(
                    "pid {} on {} since {}, lease until{}",
                    h.pid,
                    h.host,
                    h.acquired,
                    if kind == LockKind::Exclusive {
                        format!(" {} (shared)", h.expires)
                    } else {
                        format!(" {}", h.expires)
                    }
                ),
                location: format!("{}/{held}", self.url),
            });
        }
        let (store, k) = (self.clone(), key.clone());
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_LEASE / 3).await;
                let record = LockRecord::new(acquired);
                let body =
                    Bytes::from(serde_json::to_vec(&record).expect("lock record serialises"));
                if let Err(e) = store.put_mutable(&k, body).await {
                    tracing::warn!(object = %k, error = %e, "unable to refresh the repository lock");
                }
            }
        });
        Ok(Box::new(S3Lock {
            store: self.clone(),
            key,
            refresher,
            released: false,
        }))
    }

    /// The first live lock object whose key starts with `prefix` (or is
    /// `prefix`, when `exact`), and its record; stale ones are removed on the way.
    async fn live_holder(
        &self,
        prefix: &str,
        exact: bool,
    ) -> Result<Option<(String, LockRecord)>, StoreError> {
        // `list` leaves `locks/` out (lock objects are not repository
        // content): read the versions listing directly.
        let mut keys = std::collections::BTreeSet::new();
        for v in self
            .list_versions(&self.full_key(prefix), "list locks", prefix)
            .await?
        {
            if !v.delete_marker {
                keys.insert(self.store_key(&v.key).to_string());
            }
        }
        for key in keys {
            if exact && key != prefix {
                continue;
            }
            let record = match self.get(&key).await {
                Ok(b) => serde_json::from_slice::<LockRecord>(&b).ok(),
                // Released between the listing and the read.
                Err(e) if e.is_not_found() => continue,
                // Unreadable for now: count it as held rather than remove
                // another holder's lock.
                Err(e) => return Err(e),
            };
            match record {
                Some(r) if !r.is_stale() => return Ok(Some((key, r))),
                _ => {
                    tracing::warn!(object = %key, "removing a stale repository lock");
                    for (v, _) in self.versions(&key).await.unwrap_or_default() {
                        let _ = self.delete_version(&key, &v).await;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Overwrites `key` unconditionally and without retention: only for the
    /// lock objects under `locks/`, which are the one mutable thing.
    async fn put_mutable(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .checksum_sha256(b64(&Sha256::digest(&data)))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        Ok(())
    }
}

/// The lock object's contents.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LockRecord {
    host: String,
    pid: u32,
    acquired: DateTime<Utc>,
    expires: DateTime<Utc>,
}

impl LockRecord {
    fn new(acquired: DateTime<Utc>) -> Self {
        LockRecord {
            host: crate::hostname().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            acquired,
            expires: Utc::now() + chrono::Duration::from_std(LOCK_LEASE).expect("lease fits"),
        }
    }

    /// Whether the holder is certainly gone: its lease ran out, or it was a
    /// process on this host that no longer exists.
    fn is_stale(&self) -> bool {
        if self.expires < Utc::now() {
            return true;
        }
        let here = crate::hostname().unwrap_or_default();
        self.host == here && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

struct S3Lock {
    store: S3Store,
    key: String,
    refresher: tokio::task::JoinHandle<()>,
    released: bool,
}

#[async_trait]
impl LockGuard for S3Lock {
    async fn release(mut self: Box<Self>) {
        self.refresher.abort();
        self.released = true;
        if let Ok(versions) = self.store.versions(&self.key).await {
            for (v, _) in versions {
                let _ = self.store.delete_version(&self.key, &v).await;
            }
        }
    }
}

impl Drop for S3Lock {
    fn drop(&mut self) {
        self.refresher.abort();
        if !self.released {
            // Best effort: a lock left behind goes stale when its lease ends,
            // or at once for a later process on this host.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (store, key) = (self.store.clone(), self.key.clone());
                handle.spawn(async move {
                    let _ = store
                        .client
                        .delete_object()
                        .bucket(&store.config.bucket)
                        .key(store.full_key(&key))
                        .send()
                        .await;
                });
            }
        }
    }
}
