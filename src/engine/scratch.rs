//! A database server holdfast started from a restore: the copy `restore
//! --start` brings up, and (for drills) a scratch instance that runs the
//! plan's checks and is stopped again. Every engine that can start its
//! restored copy returns one of these.
//!
//! Lifetime rules, so nothing is left running by accident: a started server
//! is stopped when its handle is dropped (a failed or cancelled restore or
//! drill), unless [`ScratchServer::keep`] hands it over to the user; every
//! wait on it has a deadline.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

/// How long a started server may take to finish recovery before the wait
/// gives up (`HOLDFAST_RECOVERY_TIMEOUT_SECONDS` overrides it): replaying a
/// day of WAL on a slow disk takes hours, never this long.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(24 * 3600);

pub fn recovery_deadline() -> Duration {
    std::env::var("HOLDFAST_RECOVERY_TIMEOUT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(RECOVERY_DEADLINE)
}

/// Where a started server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// A host name, an IP address, or a Unix socket directory.
    pub host: String,
    pub port: u16,
}

#[async_trait]
pub trait ScratchServer: Send + Sync {
    fn address(&self) -> &Address;

    /// The server's log file.
    fn log(&self) -> &PathBuf;

    /// Runs one query and returns its rows, fields separated by `|`.
    async fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, String>;

    /// Stops the server and waits (with a deadline) until it is down.
    async fn stop(self: Box<Self>) -> Result<(), String>;

    /// Leaves the server running when the handle is dropped: the restore's
    /// user takes it over.
    fn keep(self: Box<Self>);
}
