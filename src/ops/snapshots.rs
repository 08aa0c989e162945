//! A plan's snapshots, and (for engines that archive a log) how far back
//! and forward a restore can reach.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::{engine_for, Pending, Window};
use crate::error::Error;
use crate::ids::SnapshotId;
use crate::plan::{Plan, Tier};
use crate::repository::{RejectKind, SnapshotRef};

/// One snapshot as `holdfast snapshots` lists it. Fields are in the order
/// `--json` has always printed them.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SnapshotRow {
    Readable {
        files: u64,
        finished_at: DateTime<Utc>,
        id: SnapshotId,
        key: String,
        new_bytes: u64,
        /// A base backup whose WAL is not all archived yet.
        #[serde(skip_serializing_if = "Option::is_none")]
        pending: Option<Pending>,
        previous: Option<SnapshotId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        restorable: Option<Box<Window>>,
        retain_until: Option<DateTime<Utc>>,
        short_id: String,
        source: String,
        stored_bytes: u64,
        tier: Option<Tier>,
        time: DateTime<Utc>,
        total_bytes: u64,
    },
    /// A manifest that could not be read: listed, named, and the command
    /// fails at the end.
    Unreadable {
        error: String,
        id: SnapshotId,
        key: String,
        short_id: String,
        time: DateTime<Utc>,
    },
}

impl SnapshotRow {
    pub fn short_id(&self) -> &str {
        match self {
            SnapshotRow::Readable { short_id, .. } | SnapshotRow::Unreadable { short_id, .. } => {
                short_id
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotsReport {
    pub repository: String,
    pub rows: Vec<SnapshotRow>,
    /// Restorable windows, for engines with a log archive.
    pub windows: Option<Vec<Window>>,
    /// Base backups that are restorable once their WAL is archived.
    pub pending: Vec<Pending>,
    /// Manifests that could not be read (each named in its row).
    pub unreadable: usize,
    /// Objects under the plan's snapshots that are not believed, for any
    /// other reason (named on stderr; `verify` fails on them).
    pub rejected: Vec<crate::repository::Rejected>,
}

pub async fn snapshots(plan: &Plan) -> Result<SnapshotsReport, Error> {
    let repo = super::open_repo(plan).await?;
    let listed = repo.snapshots(&plan.name).await?;
    let mut rows = Vec::new();
    let mut unreadable = 0;
    let mut rejected = Vec::new();
    for r in listed.rejected {
        match (r.kind, SnapshotRef::from_key(&r.object)) {
            (RejectKind::Unreadable, Some(s)) => {
                unreadable += 1;
                rows.push(SnapshotRow::Unreadable {
                    error: r.detail.clone(),
                    id: s.id,
                    key: s.key.clone(),
                    short_id: s.id.short(),
                    time: s.started_at,
                });
            }
            _ => rejected.push(r),
        }
    }
    // The listing read every head; the entries are not needed here.
    for a in &listed.accepted {
        let (s, m) = (&a.snap, &a.head);
        rows.push(SnapshotRow::Readable {
            files: m.stats.files,
            finished_at: m.finished_at,
            id: s.id,
            key: s.key.clone(),
            new_bytes: m.stats.new_bytes,
            pending: None,
            previous: m.previous,
            restorable: None,
            retain_until: m.retention.map(|r| r.until),
            short_id: s.id.short(),
            source: m.source.kind.clone(),
            stored_bytes: m.stats.stored_bytes,
            tier: m.tier,
            time: m.started_at,
            total_bytes: m.stats.total_bytes,
        });
    }
    rows.sort_by_key(|r| match r {
        SnapshotRow::Readable { key, .. } | SnapshotRow::Unreadable { key, .. } => key.clone(),
    });
    let reach = match engine_for(plan) {
        Ok(engine) => engine.windows(&repo, plan).await?,
        Err(_) => None,
    };
    if let Some(reach) = &reach {
        for row in rows.iter_mut() {
            let short = row.short_id().to_string();
            if let SnapshotRow::Readable {
                restorable,
                pending,
                ..
            } = row
            {
                *restorable = reach
                    .windows
                    .iter()
                    .find(|w| w.base_backups.contains(&short))
                    .map(|w| Box::new(w.clone()));
                *pending = reach
                    .pending
                    .iter()
                    .find(|p| p.base_backup == short)
                    .cloned();
            }
        }
    }
    let (windows, pending) = match reach {
        Some(r) => (Some(r.windows), r.pending),
        None => (None, Vec::new()),
    };
    Ok(SnapshotsReport {
        repository: repo.url(),
        rows,
        windows,
        pending,
        unreadable,
        rejected,
    })
}
