//! holdfast: checksummed, compressed, deduplicated, immutable snapshots of
//! databases and files, and restores you have rehearsed.
//!
//! Layers, each knowing only those below it:
//! `cli` → `restore` / backup in `repository` → `source`, `store`; `plan` ties a
//! YAML file to a source and a store.

pub mod cli;
pub mod doctor;
pub mod ids;
pub mod plan;
pub mod progress;
pub mod repository;
pub mod restore;
pub mod secret;
pub mod source;
pub mod store;

/// This machine's host name, for manifests and lock holders.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
