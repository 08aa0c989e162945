//! MariaDB (and MySQL): online physical backups (`mariadb-backup
//! --stream=xbstream`, parsed as it streams), continuous binlog archiving,
//! and restore to a snapshot or a point in time.
//!
//! * `client` — running MariaDB's programs against one server.

pub mod client;

pub use client::MariaClient;
pub mod archive;
pub mod binlog;
