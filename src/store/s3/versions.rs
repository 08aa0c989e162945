//! Which version of a key holdfast reads and deletes. holdfast never
//! overwrites a key, so reads pin each key's original (oldest) version and
//! listings come from the version listing; deleting removes every version by
//! id, since a plain DELETE on a versioned bucket only adds a delete marker.
//! The cache of originals lives here; puts feed it through `remember`.

use chrono::Utc;

use super::retention::retention_of;
use super::S3Store;
use crate::store::{Retention, StoreError};

/// How far the server's clock may trail ours when it judges a retention:
/// SigV4's own tolerance between a request's time and the server's.
pub(super) const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(15);

/// One entry of a version listing.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    /// The bucket key.
    pub(super) key: String,
    pub(super) version: Option<String>,
    pub(super) size: u64,
    pub(super) delete_marker: bool,
    /// The version's `LastModified` (when the server created it).
    pub(super) last_modified: Option<chrono::DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub(super) struct Original {
    /// `None` on a bucket that never had versioning.
    pub(super) version: Option<String>,
    pub(super) size: u64,
}

impl S3Store {
    pub(super) fn remember(&self, key: &str, version: Option<&str>, size: u64) {
        if key.starts_with("locks/") {
            return;
        }
        self.originals.lock().expect("originals lock").insert(
            key.to_string(),
            Original {
                version: version.filter(|v| *v != "null").map(str::to_string),
                size,
            },
        );
    }

    /// The original version of `key`: the oldest one that is not a delete
    /// marker. Later versions are reported, since holdfast never writes them.
    pub(super) async fn original(&self, key: &str) -> Result<Original, StoreError> {
        if let Some(o) = self.originals.lock().expect("originals lock").get(key) {
            return Ok(o.clone());
        }
        let full = self.full_key(key);
        let listed = self.list_versions(&full, "list versions of", key).await?;
        let exact = listed.iter().filter(|v| v.key == full);
        let found: Vec<(Option<String>, u64)> = exact
            .clone()
            .filter(|v| !v.delete_marker)
            .map(|v| (v.version.clone(), v.size))
            .collect();
        let markers = exact.filter(|v| v.delete_marker).count();
        // Versions are listed newest first.
        let Some((version, size)) = found.last().cloned() else {
            return Err(StoreError::NotFound {
                store: self.url.clone(),
                key: key.to_string(),
            });
        };
        if found.len() > 1 || markers > 0 {
            tracing::warn!(
                object = %key,
                versions = found.len(),
                delete_markers = markers,
                "object was overwritten or deleted outside holdfast; reading its original version"
            );
        }
        self.remember(key, version.as_deref(), size);
        Ok(Original {
            version: version.filter(|v| v != "null"),
            size,
        })
    }

    /// The version to read `key` at: its original, or the latest for locks.
    pub(super) async fn read_version(&self, key: &str) -> Result<Option<String>, StoreError> {
        if key.starts_with("locks/") {
            return Ok(None);
        }
        Ok(self.original(key).await?.version)
    }

    /// Every version and delete marker of exactly `key`.
    pub async fn versions(&self, key: &str) -> Result<Vec<(String, bool)>, StoreError> {
        let full = self.full_key(key);
        Ok(self
            .list_versions(&full, "list versions of", key)
            .await?
            .into_iter()
            .filter(|v| v.key == full)
            .map(|v| (v.version.unwrap_or_else(|| "null".into()), v.delete_marker))
            .collect())
    }

    /// Every version and delete marker under a bucket prefix, in listing
    /// order (by key, newest version first within a key).
    pub(super) async fn list_versions(
        &self,
        full_prefix: &str,
        op: &'static str,
        key: &str,
    ) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.config.bucket)
                .prefix(full_prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.error(op, key, e))?;
            let mut page_items: Vec<Listed> = Vec::new();
            for v in page.versions() {
                let Some(k) = v.key() else { continue };
                page_items.push(Listed {
                    key: k.to_string(),
                    version: v.version_id().map(str::to_string),
                    size: v.size().unwrap_or(0).max(0) as u64,
                    delete_marker: false,
                    last_modified: v
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
            for m in page.delete_markers() {
                let Some(k) = m.key() else { continue };
                page_items.push(Listed {
                    key: k.to_string(),
                    version: m.version_id().map(str::to_string),
                    size: 0,
                    delete_marker: true,
                    last_modified: None,
                });
            }
            // Versions and markers come in two lists; put them back in key
            // order, keeping each list's newest-first order within a key
            // (the sort is stable).
            page_items.sort_by(|a, b| a.key.cmp(&b.key));
            out.extend(page_items);
            if page.is_truncated() != Some(true) || page.next_key_marker().is_none() {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
        Ok(out)
    }

    /// Deletes one version; the lock's refusal (403 `AccessDenied`) comes back
    /// as `Retained` when the version's retention can be read and has not
    /// ended by the server's clock, `Denied` otherwise.
    ///
    /// "By the server's clock": a server a little behind ours (or one that
    /// compares at a coarser grain) still refuses for a moment after the
    /// retention ended by our clock. Such a refusal is the lock's, so it is
    /// `Retained` while the retention ended less than [`CLOCK_SKEW`] ago,
    /// the skew SigV4 itself tolerates between client and server.
    pub async fn delete_version(&self, key: &str, version: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .version_id(version)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = super::error::failure(&e);
                let refusal = f.is_lock_refusal();
                let err = self.failure_error("delete", key, f);
                // Only the lock's own refusal can mean "retained"; another
                // 403 (an expired token, a policy) stays `Denied`.
                if refusal {
                    if let Ok(Some(r)) = self.version_retention(key, version).await {
                        if r.until > Utc::now() - CLOCK_SKEW {
                            return Err(StoreError::Retained {
                                store: self.url.clone(),
                                key: key.to_string(),
                                mode: r.mode,
                                until: r.until,
                            });
                        }
                    }
                }
                Err(err)
            }
        }
    }

    /// The lock on one version of `key`, read from S3 (for `doctor`'s
    /// read-back after an attempt to change it).
    pub async fn version_retention(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<Retention>, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .version_id(version)
            .send()
            .await
            .map_err(|e| self.error("head", key, e))?;
        Ok(retention_of(
            out.object_lock_mode().map(|m| m.as_str()),
            out.object_lock_retain_until_date(),
        ))
    }
}
