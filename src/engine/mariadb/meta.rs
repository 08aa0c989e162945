//! What a MariaDB snapshot's manifest records about the server and the
//! backup (`source.metadata`), as one typed struct: the server's version,
//! where in the binlog the backup is consistent (file, position, GTID), and
//! the server's clock when it ended. Manifests that lack a field or give it
//! the wrong type are read as "not a physical backup", never trusted.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::SourceKind;
use crate::repository::source::SourceMetadata;
use crate::repository::SourceRecord;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MariaSnapshotMeta {
    /// `physical` or `logical`, as the plan said.
    pub mode: String,
    /// The server, as the plan names it (never a password).
    pub server: String,
    /// `SELECT VERSION()`, e.g. `10.11.19-MariaDB-0+deb12u1-log`.
    pub server_version: String,
    /// The server's `@@server_id`.
    #[serde(default)]
    pub server_id: u64,
    /// The server's data directory, as it reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadir: Option<String>,
    /// `@@log_bin_basename`'s file name (`binlog` for `binlog.000003`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog_basename: Option<String>,
    /// Where the backup is consistent, from `mariadb-backup`'s
    /// `xtrabackup_binlog_info`: replaying binlogs from here on the restored
    /// data directory brings it forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog_position: Option<u64>,
    /// The GTID position at that point (`domain-server-seq`, comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// InnoDB's checkpoint LSN range (`xtrabackup_checkpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub innodb_to_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub innodb_last_lsn: Option<u64>,
    /// The server's UTC clock right after the backup ended: every commit the
    /// backup holds happened before it, so a point-in-time restore can
    /// target any time from here on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub logical_dumps: Vec<String>,
}

impl MariaSnapshotMeta {
    /// The metadata of a MariaDB snapshot; `None` for other kinds and for
    /// metadata of another shape.
    pub fn of(source: &SourceRecord) -> Option<MariaSnapshotMeta> {
        if source.kind != SourceKind::Mariadb.as_str() {
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

    /// A physical backup with a data directory in it.
    pub fn is_physical(&self) -> bool {
        self.mode == "physical"
    }

    /// `binlog.000001\t1125613\t0-1-4` (`xtrabackup_binlog_info`; the GTID
    /// field is absent on servers without GTIDs).
    pub fn read_binlog_info(&mut self, text: &str) {
        let mut fields = text.trim().split('\t');
        if let Some(file) = fields.next().filter(|f| !f.is_empty()) {
            self.binlog_file = Some(file.to_string());
        }
        self.binlog_position = fields.next().and_then(|p| p.trim().parse().ok());
        self.gtid = fields
            .next()
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string);
    }

    /// `to_lsn = 44404` / `last_lsn = 2159590` (`xtrabackup_checkpoints`).
    pub fn read_checkpoints(&mut self, text: &str) {
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k.trim() {
                "to_lsn" => self.innodb_to_lsn = v.trim().parse().ok(),
                "last_lsn" => self.innodb_last_lsn = v.trim().parse().ok(),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_info_and_checkpoints_are_read() {
        let mut m = MariaSnapshotMeta::default();
        m.read_binlog_info("binlog.000001\t1125613\t0-1-4\n");
        assert_eq!(m.binlog_file.as_deref(), Some("binlog.000001"));
        assert_eq!(m.binlog_position, Some(1125613));
        assert_eq!(m.gtid.as_deref(), Some("0-1-4"));
        m.read_binlog_info("binlog.000002\t4\n");
        assert_eq!(m.gtid, None);
        m.read_checkpoints(
            "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 44404\nlast_lsn = 2159590\n",
        );
        assert_eq!(
            (m.innodb_to_lsn, m.innodb_last_lsn),
            (Some(44404), Some(2159590))
        );
    }
}
