//! holdfast: checksummed, compressed, deduplicated, immutable snapshots of
//! databases and files, and restores you have rehearsed.
//!
//! Layers, each knowing only those below it:
//! `cli` → `restore` / backup in `repository` → `source`, `store`; `plan` ties a
//! YAML file to a source and a store.

pub mod cli;
pub mod ids;
pub mod plan;
pub mod progress;
pub mod repository;
pub mod restore;
pub mod source;
pub mod store;
