//! holdfast: checksummed, compressed, deduplicated, immutable snapshots of
//! databases and files, and restores you have rehearsed.
//!
//! Layers, each knowing only those below it (`docs/architecture.md`):
//! `cli` → `ops` (use cases the CLI and the daemon share) → `engine/<database>`
//! → `repository` (the format) → `store` (where bytes live); `plan` is the
//! validated YAML every layer may read, `error` the exit-code table.

pub mod cli;
pub mod clock;
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
