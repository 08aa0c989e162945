//! holdfast: checksummed, compressed, deduplicated, immutable snapshots of
//! databases and files, and restores you have rehearsed.
//!
//! Layers, each knowing only those below it (`docs/architecture.md`):
//! `cli` → `ops` (use cases the CLI and the daemon share) → `engine/<database>`
//! → `repository` (the format) → `store` (where bytes live); `plan` is the
//! validated YAML every layer may read, `error` the exit-code table.
//!
//! A plan is parsed strictly, then validated; its retention decides each
//! snapshot's tier and how long the snapshot is locked:
//!
//! ```
//! use chrono::{DateTime, Duration, Utc};
//! use holdfast::plan::{Plan, Tier};
//!
//! let text = "name: app
//! source: {type: sqlite, path: /srv/app.db}
//! repository: {url: file:///backups/app}
//! schedule: {backup: '0 * * * *'}
//! lock: {mode: compliance, days: 8}
//! retention: {keep_last: 24, keep_daily: 7}
//! ";
//! let plan = Plan::parse(text, std::path::Path::new("/etc/holdfast/app.yaml"), &|_| None)?;
//!
//! // The first snapshot of a day is kept by keep_daily; the next hour's only by keep_last.
//! let morning: DateTime<Utc> = "2026-03-02T08:00:00Z".parse()?;
//! assert_eq!(plan.tier_of(morning, &[]), Tier::Daily);
//! let later = morning + Duration::hours(1);
//! assert_eq!(plan.tier_of(later, &[morning]), Tier::Last);
//!
//! // A daily snapshot stays locked longer than one kept only by keep_last.
//! let daily = plan.lock_for(Tier::Daily, morning).unwrap().until;
//! let last = plan.lock_for(Tier::Last, later).unwrap().until;
//! assert!(daily - morning > last - later);
//!
//! // Unknown fields are refused, naming the field and the file.
//! let err = Plan::parse(&format!("{text}bogus: 1\n"), std::path::Path::new("app.yaml"), &|_| None)
//!     .unwrap_err()
//!     .to_string();
//! assert!(err.contains("bogus") && err.contains("app.yaml"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod alert;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod drill;
pub mod engine;
pub mod error;
pub mod ids;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod repository;
pub mod secret;
pub mod store;

/// This machine's host name, for manifests and lock holders.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
