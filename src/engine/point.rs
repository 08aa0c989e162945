//! Where a restore goes, and how far a plan's archive lets it reach, in
//! terms every engine shares. An engine turns a [`RestorePoint`] into its
//! own target (PostgreSQL: `recovery_target_time`, `_lsn`, …) and reports
//! its restorable [`Window`]s for `holdfast snapshots`.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How far to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestorePoint {
    /// Everything archived: the newest state the repository can give.
    Latest,
    /// The state as of this instant (later transactions excluded).
    Time(DateTime<Utc>),
    /// A position in the engine's log, as the engine writes it (PostgreSQL:
    /// an LSN such as `0/3000148`).
    Position(String),
    /// One snapshot (`latest` or an id prefix), to its end.
    Snapshot(String),
    /// Up to and including this global transaction id (MariaDB:
    /// `domain-server-seq`).
    Gtid(String),
}

/// A stretch of time a restore can reach.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// The earliest target: the oldest usable base backup's consistent point.
    pub from: DateTime<Utc>,
    /// The latest target: the newest archived transaction or the newest
    /// base backup's consistent point, whichever is later. Never before
    /// `from`: a base backup is itself a restorable state even when no
    /// transaction was archived after it.
    pub to: DateTime<Utc>,
    /// The base backups that start this window, oldest first.
    pub base_backups: Vec<String>,
    /// Their consistent points, in the same order.
    pub base_backups_at: Vec<DateTime<Utc>>,
    /// The newest archived transaction (commit or abort) after the oldest
    /// base backup began, if there is one and the archived log could be
    /// read; it may be older than a base backup taken while nothing was
    /// written.
    pub newest_transaction: Option<DateTime<Utc>>,
    /// Why the archived log's transaction times could not be read (the
    /// window may then reach further than `to`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub times_unreadable: Option<String>,
    /// The last archived log file (segment) of the window.
    pub through_segment: String,
    /// Set when the window ends because a log file is missing.
    pub ends_at_gap: Option<String>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to {}", self.from.to_rfc3339(), self.to.to_rfc3339())?;
        if let Some(why) = &self.times_unreadable {
            write!(
                f,
                " or later (transaction times in the archived log could not be read: {why}; it reaches the end of segment {})",
                self.through_segment
            )?;
        }
        if let Some(gap) = &self.ends_at_gap {
            write!(f, " (segment {gap} is missing)")?;
        }
        Ok(())
    }
}

/// A base backup that cannot be restored yet: its own log is not all
/// archived (the archiver is behind or failing).
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub base_backup: String,
    pub consistent_at: DateTime<Utc>,
    /// The first of its log files not yet in the archive.
    pub waits_for_segment: String,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "base backup {} (consistent at {}) is restorable once segment {} is archived",
            self.base_backup,
            self.consistent_at.to_rfc3339(),
            self.waits_for_segment
        )
    }
}

/// How far a plan's restores reach: the windows, and the base backups that
/// will join one once their log is archived.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reach {
    pub windows: Vec<Window>,
    pub pending: Vec<Pending>,
}

impl std::fmt::Display for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.windows.is_empty() {
            f.write_str("none (no base backup has all of its WAL archived)")?;
        }
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{w}")?;
        }
        for p in &self.pending {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}
