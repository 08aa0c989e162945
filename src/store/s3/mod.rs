//! The S3 backend: objects in a bucket under a prefix, each write-once and
//! under S3 Object Lock retention, through the official `aws-sdk-s3`.
//!
//! * Create-only puts send `If-None-Match: *` (also on the multipart
//!   completion); the server answers 412 instead of overwriting. Multipart
//!   uploads also HEAD first, since not every server checks the condition on
//!   completion (SeaweedFS 4.48 lets concurrent completions through). Keys
//!   are content hashes, so that race can only write the same bytes again,
//!   and reads take a key's original version anyway.
//! * Every put carries `x-amz-checksum-sha256`, so the server verifies the
//!   bytes on arrival (AWS requires a checksum with Object Lock). Multipart
//!   parts each carry their own; the composite the server keeps is not the
//!   object's hash, which holdfast keeps in the key.
//! * Large objects go up as parallel multipart uploads and come down as
//!   parallel ranged GETs.
//! * The SDK retries throttling, timeouts and 5xx with exponential backoff and
//!   jitter (standard mode); what reaches the caller is final.
//! * Deleting removes every version of a key by version id: a plain DELETE on a
//!   versioned bucket only hides the object behind a delete marker.
//! * Reads go to each key's **original** (oldest) version. holdfast never
//!   overwrites a key, so any later version, and any delete marker, is
//!   somebody else's doing: an insider who overwrites or "deletes" every key
//!   with the backup credentials changes nothing holdfast reads, and the
//!   locked originals restore. Listings come from the version listing for the
//!   same reason. (Lock objects under `locks/` are the one mutable thing and
//!   are read at their latest version.)
//!
//! The files below split the backend by concern: the store contract here,
//! and beside it what a plan configures (`config`), how failures read
//! (`error`), how bytes move (`transfer`), which versions are read and
//! deleted (`versions`), Object Lock conversions (`retention`), the
//! repository lock (`lease`) and the bucket set-up that `repo init` and
//! `doctor` use (`bucket`).

mod bucket;
mod config;
mod error;
mod lease;
mod retention;
mod transfer;
mod versions;

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};

pub use self::bucket::BucketState;
pub use self::config::{S3Config, SecretSource, StaticCredentials, DEFAULT_PART_SIZE};
pub use self::error::{failure, Failure};
pub use self::lease::{ConditionProbe, CLOCK_ALLOWANCE, DEFAULT_LEASE, LEASE_VAR};
use self::retention::{aws_time, retention_of};
use self::versions::Original;
use super::{
    check_key, Capabilities, LockGuard, LockKind, LockMode, ObjectInfo, PutOptions, Retention,
    Store, StoreError,
};

/// An S3 client for one bucket, shared by the store and the `repo`/`doctor`
/// commands, which need bucket-level calls the [`Store`] trait does not carry.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    config: Arc<S3Config>,
    url: String,
    /// Each key's original version and size, as listed or written.
    originals: Arc<std::sync::Mutex<std::collections::HashMap<String, Original>>>,
    /// How long a lock object holds unrefreshed (`lease`).
    lease: std::time::Duration,
}

impl S3Store {
    /// Builds the client; no request is made until the first call.
    pub async fn open(config: S3Config) -> Result<Self, StoreError> {
        let client = config::build_client(&config).await?;
        let url = config.url();
        Ok(S3Store {
            client,
            config: Arc::new(config),
            url,
            originals: Default::default(),
            lease: lease::lease_from_env(),
        })
    }

    /// The same store with lock leases of `lease` (tests: a lease of
    /// seconds instead of minutes).
    #[doc(hidden)]
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        self.lease = lease;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The bucket key of a store key.
    pub fn full_key(&self, key: &str) -> String {
        if self.config.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.config.prefix)
        }
    }

    fn store_key<'a>(&self, full: &'a str) -> &'a str {
        if self.config.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.config.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            server_enforced_lock: true,
            atomic_create: true,
            versioning: true,
            parallel_reads: 8,
        }
    }

    async fn put(&self, key: &str, data: Bytes, opts: &PutOptions) -> Result<(), StoreError> {
        check_key(key)?;
        if data.len() > self.config.part_size {
            self.put_multipart(key, data, opts).await
        } else {
            self.put_single(key, data, opts).await
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let part = self.config.part_size as u64;
        if !key.starts_with("locks/") {
            let size = self.original(key).await?.size;
            if size <= part {
                return self.get_one(key, None).await.map(|(b, _)| b);
            }
            return self.get_span(key, 0, size).await;
        }
        let (first, total) = match self.get_one(key, Some((0, part))).await {
            Ok(v) => v,
            // An empty object has no byte 0 to range over.
            Err(StoreError::Io { source, .. })
                if source.to_string().contains("InvalidRange")
                    || source.to_string().contains("416") =>
            {
                return self.get_one(key, None).await.map(|(b, _)| b);
            }
            Err(e) => return Err(e),
        };
        if total <= part {
            return Ok(first);
        }
        let rest = self.get_span(key, part, total).await?;
        // `total` is the server's claim: reserve no more than arrived.
        let mut out = BytesMut::with_capacity(first.len() + rest.len());
        out.extend_from_slice(&first);
        out.extend_from_slice(&rest);
        Ok(out.freeze())
    }

    async fn get_at_most(&self, key: &str, max: u64) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let too_large = |size| StoreError::TooLarge {
            store: self.url.clone(),
            key: key.to_string(),
            size,
            max,
        };
        let size = self.original(key).await?.size;
        if size > max {
            return Err(too_large(size));
        }
        let got = if size <= self.config.part_size as u64 {
            self.get_one(key, None).await?.0
        } else {
            self.get_span(key, 0, size).await?
        };
        if got.len() as u64 > max {
            return Err(too_large(got.len() as u64));
        }
        Ok(got)
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        check_key(key)?;
        if len == 0 {
            let size = self.head(key).await?.size;
            if offset > size {
                return Err(StoreError::Truncated {
                    store: self.url.clone(),
                    key: key.to_string(),
                    offset,
                    end: offset,
                    size,
                });
            }
            return Ok(Bytes::new());
        }
        // An offset and length from a hostile index may not add up.
        let Some(end) = offset.checked_add(len) else {
            return Err(StoreError::Truncated {
                store: self.url.clone(),
                key: key.to_string(),
                offset,
                end: u64::MAX,
                size: self.head(key).await?.size,
            });
        };
        self.get_span(key, offset, end).await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        check_key(key)?;
        let version = self.read_version(key).await?;
        let out = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .set_version_id(version)
            .send()
            .await
            .map_err(|e| self.error("head", key, e))?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            retention: retention_of(
                out.object_lock_mode().map(|m| m.as_str()),
                out.object_lock_retain_until_date(),
            ),
            created: None,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full = self.full_key(prefix);
        let full = if prefix.is_empty() && !self.config.prefix.is_empty() {
            format!("{}/", self.config.prefix)
        } else {
            full
        };
        // Every key with a version that is not a delete marker, at its
        // original (oldest) version: listed newest first within each key.
        type Orig = (Option<String>, u64, Option<chrono::DateTime<chrono::Utc>>);
        let mut originals: std::collections::BTreeMap<String, Orig> =
            std::collections::BTreeMap::new();
        for v in self.list_versions(&full, "list", prefix).await? {
            if !v.delete_marker {
                originals.insert(
                    self.store_key(&v.key).to_string(),
                    (v.version, v.size, v.last_modified),
                );
            }
        }
        let mut out = Vec::with_capacity(originals.len());
        for (key, (version, size, created)) in originals {
            if key.starts_with("locks/") {
                continue;
            }
            self.remember(&key, version.as_deref(), size);
            out.push(ObjectInfo {
                key,
                size,
                retention: None,
                created,
            });
        }
        Ok(out)
    }

    async fn extend_retention(&self, key: &str, retention: &Retention) -> Result<(), StoreError> {
        check_key(key)?;
        let current = self.head(key).await?.retention;
        if let Some(cur) = current {
            if cur.until > retention.until {
                return Err(StoreError::RetentionShortening {
                    store: self.url.clone(),
                    key: key.to_string(),
                    current: cur.until,
                    requested: retention.until,
                });
            }
            if cur.until == retention.until {
                return Ok(());
            }
        }
        // COMPLIANCE stays COMPLIANCE: it is the stronger promise.
        let mode = match current {
            Some(Retention {
                mode: LockMode::Compliance,
                ..
            }) => LockMode::Compliance,
            _ => retention.mode,
        };
        let version = self.read_version(key).await?;
        self.client
            .put_object_retention()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .set_version_id(version)
            .retention(
                ObjectLockRetention::builder()
                    .mode(match mode {
                        LockMode::Compliance => ObjectLockRetentionMode::Compliance,
                        LockMode::Governance => ObjectLockRetentionMode::Governance,
                    })
                    .retain_until_date(aws_time(retention.until))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("extend retention of", key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.originals.lock().expect("originals lock").remove(key);
        let versions = self.versions(key).await?;
        if versions.iter().all(|(_, marker)| *marker) {
            return Err(StoreError::NotFound {
                store: self.url.clone(),
                key: key.to_string(),
            });
        }
        // Data versions first, so a refusal leaves the object readable.
        let mut ordered = versions;
        ordered.sort_by_key(|(_, marker)| *marker);
        for (version, _) in ordered {
            self.delete_version(key, &version).await?;
        }
        Ok(())
    }

    async fn try_lock(&self, name: &str, kind: LockKind) -> Result<Box<dyn LockGuard>, StoreError> {
        self.acquire_lock(name, kind).await
    }
}
