//! What a PostgreSQL snapshot's manifest records about the server and the
//! backup (`source.metadata`), as one typed struct. It serialises to the
//! keys manifests have always carried (`docs/repository-format.md`), so
//! existing repositories read unchanged; every field a manifest may lack is
//! optional, and a manifest whose fields have the wrong type is read as "not
//! a base backup" rather than trusted.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::wal::{Lsn, Segment, DEFAULT_SEGMENT_SIZE};
use crate::engine::SourceKind;
use crate::repository::source::SourceMetadata;
use crate::repository::{ManifestHead, SnapshotRef, SourceRecord};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgSnapshotMeta {
    pub server_version_num: u64,
    pub server_version: String,
    pub system_identifier: String,
    pub archive_mode: String,
    pub in_recovery: bool,
    pub wal_segment_size: u64,
    /// `physical` or `logical`, as the plan said.
    #[serde(default)]
    pub mode: String,
    /// The server, as the plan names it (never a password).
    #[serde(default)]
    pub server: String,
    /// The cluster's own data directory and port (`SHOW data_directory`,
    /// readable by superusers and `pg_read_all_settings` members; absent
    /// otherwise): a restore into that directory rebuilds the cluster, any
    /// other is a scratch copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// From `backup_label`: where the backup's WAL starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_wal_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// From `backup_manifest`'s WAL-Ranges: where the backup is consistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeline: Option<u64>,
    /// How the base backup read the cluster: `local` (the data directory,
    /// on the database host) or `stream` (`pg_basebackup`). Absent in
    /// snapshots taken before both existed (all `stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_backup: Option<String>,
    /// The server's clock right after the backup ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_at: Option<String>,
    #[serde(default)]
    pub logical_dumps: Vec<String>,
}

impl PgSnapshotMeta {
    /// The metadata of a PostgreSQL snapshot; `None` for other kinds and for
    /// metadata that does not have this shape.
    pub fn of(source: &SourceRecord) -> Option<PgSnapshotMeta> {
        if source.kind != SourceKind::Postgres.as_str() {
            return None;
        }
        serde_json::from_value(serde_json::Value::Object(source.metadata.clone())).ok()
    }

    pub fn to_metadata(&self) -> SourceMetadata {
        match serde_json::to_value(self).expect("metadata serialises") {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a struct serialises to an object"),
        }
    }

    /// The segment holding the backup's first WAL record.
    pub fn start_segment(&self) -> Option<Segment> {
        let lsn: Lsn = self.start_lsn.as_deref()?.parse().ok()?;
        Some(Segment::of(self.timeline?, lsn, self.segment_size()))
    }

    pub fn segment_size(&self) -> u64 {
        if self.wal_segment_size == 0 {
            DEFAULT_SEGMENT_SIZE
        } else {
            self.wal_segment_size
        }
    }
}

/// A base backup as its manifest describes it.
#[derive(Debug, Clone)]
pub struct BaseBackup {
    pub snapshot: SnapshotRef,
    pub timeline: u32,
    pub start: Lsn,
    pub stop: Lsn,
    /// The server's clock just after the backup ended.
    pub consistent_at: DateTime<Utc>,
    pub server_version_num: u64,
    pub segment_size: u64,
    /// The cluster's own data directory, if the backup could read it.
    pub data_directory: Option<std::path::PathBuf>,
}

impl BaseBackup {
    pub fn from_head(snapshot: &SnapshotRef, m: &ManifestHead) -> Option<BaseBackup> {
        let meta = PgSnapshotMeta::of(&m.source)?;
        Some(BaseBackup {
            snapshot: snapshot.clone(),
            timeline: meta.timeline?,
            start: meta.start_lsn.as_deref()?.parse().ok()?,
            stop: meta.stop_lsn.as_deref()?.parse().ok()?,
            consistent_at: meta
                .consistent_at
                .as_deref()
                .and_then(|t| t.parse().ok())
                .unwrap_or(m.finished_at),
            server_version_num: meta.server_version_num,
            segment_size: meta.segment_size(),
            data_directory: meta.data_directory.map(Into::into),
        })
    }

    pub fn major(&self) -> u64 {
        self.server_version_num / 10000
    }

    pub fn start_segment(&self) -> Segment {
        Segment::of(self.timeline, self.start, self.segment_size)
    }

    pub fn stop_segment(&self) -> Segment {
        // The stop location is the first byte after the backup's last record.
        Segment::of(
            self.timeline,
            Lsn(self.stop.0.saturating_sub(1)),
            self.segment_size,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_keeps_the_keys_and_types_manifests_have_always_had() {
        let old = serde_json::json!({
            "server_version_num": 150019,
            "server_version": "15.19",
            "system_identifier": "7442",
            "archive_mode": "on",
            "in_recovery": false,
            "wal_segment_size": 16777216,
            "mode": "physical",
            "server": "127.0.0.1:5432",
            "start_lsn": "0/2000028",
            "start_wal_file": "000000010000000000000002",
            "timeline": 1,
            "start_time": "2026-11-26 09:00:00 UTC",
            "stop_lsn": "0/2000100",
            "stop_timeline": 1,
            "consistent_at": "2026-11-26T09:00:01.000000Z",
            "logical_dumps": ["app"],
        });
        let meta: PgSnapshotMeta = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(
            serde_json::Value::Object(meta.to_metadata()),
            old,
            "a round trip changes no key"
        );
        assert_eq!(meta.start_segment().unwrap().number, 2);
        // A logical-only snapshot has no backup_label facts, and writes none.
        let logical = PgSnapshotMeta {
            mode: "logical".into(),
            ..Default::default()
        };
        assert!(!logical.to_metadata().contains_key("start_lsn"));
    }
}
