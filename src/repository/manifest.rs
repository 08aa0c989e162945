//! Snapshot manifests: what a snapshot holds and how to put it back together.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::source::{EntryKind, FileId, FileStamp, SourceMetadata};
use super::{decode_json_zst, encode_json_zst, RepoError};
use crate::ids::{ChunkId, Hash256, SnapshotId};
use crate::plan::{PlanName, Tier};
use crate::store::Retention;

/// The manifest version this build writes. Version 3 (2026-12-05): a file
/// entry carries no whole-file `sha256`; its bytes are proven chunk by
/// chunk (each chunk against its id, or its blob's tag) and by its `size`.
pub const MANIFEST_VERSION: u32 = 3;

/// The manifest versions this build reads: 2 (each file with its
/// whole-file SHA-256) and 3.
pub const MANIFEST_VERSIONS_READ: [u32; 2] = [2, 3];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub plan: PlanName,
    pub previous: Option<SnapshotId>,
    pub holdfast_version: String,
    pub hostname: Option<String>,
    pub source: SourceRecord,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The snapshot's own lock: every object it needs is locked at least
    /// this long ("lock coverage", checked by `verify`).
    pub retention: Option<Retention>,
    /// The retention tier it was taken for (format 1, since holdfast 0.1 with S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    pub stats: SnapshotStats,
    pub entries: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub metadata: SourceMetadata,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Uncompressed bytes of all files.
    pub total_bytes: u64,
    /// Uncompressed bytes of chunks this snapshot added to the repository.
    pub new_bytes: u64,
    /// Stored (compressed) bytes of blobs this snapshot added.
    pub stored_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Hash256>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Size, mtime, ctime and inode of a regular file, so the next backup can
    /// reuse its chunks without reading it when none changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<FileStamp>,
    /// Inode and birth time of a file of pages (a PostgreSQL relation's
    /// main fork read from the data directory), whatever its age: the next
    /// backup takes a page's chunk from this entry only if the file is
    /// still this one (see `source::Pages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<FileId>,
}

impl Manifest {
    /// The entries under folder `prefix` (`pgdata`, `mariadb`), re-rooted at
    /// `.`, and the bytes they hold: a database engine's data directory
    /// inside a snapshot that may also hold dumps.
    pub fn entries_under(&self, prefix: &str) -> (Vec<ManifestEntry>, u64) {
        let inside = format!("{prefix}/");
        let mut total = 0;
        let entries = self
            .entries
            .iter()
            .filter_map(|e| {
                let path = if e.path == prefix {
                    ".".to_string()
                } else {
                    e.path.strip_prefix(&inside)?.to_string()
                };
                total += e.size.unwrap_or_default();
                Some(ManifestEntry { path, ..e.clone() })
            })
            .collect();
        (entries, total)
    }

    /// Everything but the entries.
    pub fn head(&self) -> ManifestHead {
        ManifestHead {
            format: self.format.clone(),
            version: self.version,
            plan: self.plan.clone(),
            previous: self.previous,
            started_at: self.started_at,
            finished_at: self.finished_at,
            retention: self.retention,
            tier: self.tier,
            source: self.source.clone(),
            stats: self.stats,
        }
    }

    /// The associated data the manifest is sealed under: its key without the
    /// id, `snapshots/<plan>/<time>-`, so it binds the plan and start time.
    pub fn sealing_ad(&self) -> String {
        format!(
            "snapshots/{}/{}-",
            self.plan,
            self.started_at.format(super::SNAPSHOT_TIME_FORMAT)
        )
    }

    /// The stored bytes (zstd JSON, sealed in an encrypted repository) and
    /// the id they give.
    pub fn encode(&self, crypto: &super::Crypto) -> (SnapshotId, Vec<u8>) {
        let bytes = crypto.seal(&self.sealing_ad(), encode_json_zst(self));
        (SnapshotId(Hash256::digest(&bytes)), bytes)
    }

    /// [`Manifest::encode`] for a manifest about to be written, refusing one
    /// over [`super::MANIFEST_CAP`] (`what` names it in the error).
    pub fn encode_within_cap(
        &self,
        what: &str,
        crypto: &super::Crypto,
    ) -> Result<(SnapshotId, Vec<u8>), RepoError> {
        let bytes = super::encode_json_zst_within(super::MANIFEST_CAP, what, self)?;
        let bytes = crypto.seal(&self.sealing_ad(), bytes);
        Ok((SnapshotId(Hash256::digest(&bytes)), bytes))
    }

    /// Decodes a manifest, checking its bytes against the id in its name,
    /// then its authenticity (under its name without the id).
    pub fn decode(
        key: &str,
        id: &SnapshotId,
        bytes: &[u8],
        crypto: &super::Crypto,
    ) -> Result<Self, RepoError> {
        check_id(key, id, bytes)?;
        let ad = super::crypto::content_addressed_ad(key);
        let plain = super::open_sealed(crypto, super::MANIFEST_CAP, key, ad, bytes)?;
        let m: Manifest = decode_json_zst(super::MANIFEST_CAP, key, &plain)?;
        check_format(key, &m.format, m.version)?;
        Ok(m)
    }
}

/// A manifest's fields other than its entries: what the checks in
/// [`super::trust`], the listings, prune's policy and the choice of a base
/// backup need, decoded without holding the entries (a PostgreSQL
/// manifest's entries are a chunk id per 8 KiB page: 12 MB for a 3 GB
/// cluster, and a plan keeps dozens of snapshots).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ManifestHead {
    pub format: String,
    pub version: u32,
    pub plan: PlanName,
    pub previous: Option<SnapshotId>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub retention: Option<Retention>,
    #[serde(default)]
    pub tier: Option<Tier>,
    pub source: SourceRecord,
    pub stats: SnapshotStats,
}

impl ManifestHead {
    /// Decodes a manifest's head, with the checks of [`Manifest::decode`]
    /// (authenticity included).
    pub fn decode(
        key: &str,
        id: &SnapshotId,
        bytes: &[u8],
        crypto: &super::Crypto,
    ) -> Result<Self, RepoError> {
        check_id(key, id, bytes)?;
        let ad = super::crypto::content_addressed_ad(key);
        let plain = super::open_sealed(crypto, super::MANIFEST_CAP, key, ad, bytes)?;
        let m: ManifestHead = decode_json_zst(super::MANIFEST_CAP, key, &plain)?;
        check_format(key, &m.format, m.version)?;
        Ok(m)
    }

    #[cfg(test)]
    pub fn example() -> Self {
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        ManifestHead {
            format: "holdfast-snapshot".into(),
            version: MANIFEST_VERSION,
            plan: PlanName::new("p").unwrap(),
            previous: None,
            started_at: at,
            finished_at: at,
            retention: None,
            tier: None,
            source: SourceRecord {
                kind: "files".into(),
                metadata: Default::default(),
            },
            stats: SnapshotStats::default(),
        }
    }
}

fn check_id(key: &str, id: &SnapshotId, bytes: &[u8]) -> Result<(), RepoError> {
    let got = Hash256::digest(bytes);
    if got != id.0 {
        return Err(RepoError::Corrupt {
            what: "snapshot manifest",
            key: key.to_string(),
            why: format!(
                "its SHA-256 is {got}, its name says {} ({} bytes; truncated or altered)",
                id,
                bytes.len()
            ),
        });
    }
    Ok(())
}

fn check_format(key: &str, format: &str, version: u32) -> Result<(), RepoError> {
    if format != "holdfast-snapshot" || !MANIFEST_VERSIONS_READ.contains(&version) {
        return Err(RepoError::Corrupt {
            what: "snapshot manifest",
            key: key.to_string(),
            why: format!(
                "unknown format {format} version {version} (this holdfast reads holdfast-snapshot versions 2 and 3)"
            ),
        });
    }
    Ok(())
}

/// A snapshot as its object name describes it, before its manifest is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    pub key: String,
    pub id: SnapshotId,
    pub started_at: DateTime<Utc>,
}

impl SnapshotRef {
    /// Parses `snapshots/<plan>/<YYYYMMDDTHHMMSS.fffZ>-<id>`.
    pub fn from_key(key: &str) -> Option<Self> {
        let name = key.rsplit('/').next()?;
        let (time, id) = name.split_once('-')?;
        let started_at = chrono::NaiveDateTime::parse_from_str(time, super::SNAPSHOT_TIME_FORMAT)
            .ok()?
            .and_utc();
        Some(SnapshotRef {
            key: key.to_string(),
            id: id.parse().ok()?,
            started_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_2_and_3_are_read_and_others_refused_by_number() {
        assert_eq!(MANIFEST_VERSION, 3, "what a backup writes");
        for v in [2, 3] {
            check_format("snapshots/p/x", "holdfast-snapshot", v).unwrap();
        }
        for v in [1, 4] {
            let e = check_format("snapshots/p/x", "holdfast-snapshot", v).unwrap_err();
            let said = e.to_string();
            assert!(
                said.contains(&format!("version {v}")) && said.contains("snapshots/p/x"),
                "{said}"
            );
        }
        assert!(check_format("snapshots/p/x", "holdfast-index", 3).is_err());
    }
}
