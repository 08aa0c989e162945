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
}

/// A stretch of time a restore can reach.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// The earliest target: the oldest usable base backup's consistent point.
    pub from: DateTime<Utc>,
    /// The newest archived transaction (commit or abort) reachable from it,
    /// if the archived log could be read.
    pub to: Option<DateTime<Utc>>,
    /// The base backups that start this window, oldest first.
    pub base_backups: Vec<String>,
    /// The last archived log file (segment) of the window.
    pub through_segment: String,
    /// Set when the window ends because a log file is missing.
    pub ends_at_gap: Option<String>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} to {}",
            self.from.to_rfc3339(),
            self.to
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| format!("the end of segment {}", self.through_segment))
        )?;
        if let Some(gap) = &self.ends_at_gap {
            write!(f, " (segment {gap} is missing)")?;
        }
        Ok(())
    }
}

/// The windows as one line, for errors that offer them.
pub fn windows_text(windows: &[Window]) -> String {
    if windows.is_empty() {
        return "none (no base backup has all of its WAL archived)".into();
    }
    windows
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}
