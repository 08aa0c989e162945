//! The validated plan: [`Plan`] and the types it is made of, with their
//! `Display` (used in `plan check` summaries) and `Serialize` (secrets as
//! `***`). Nothing here reads files or checks more than one field; that is
//! `validate`'s job. `LockSpec`, `RetentionSpec`, `CompressionSpec`,
//! `DbMode`, `PgSslMode` and `LockDuration` are also read by serde as they are.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::cron::Schedule;
use super::secret::Secret;
use crate::store::{LockMode, StoreConfig};

pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// A validated plan. Paths in it are absolute; secrets are resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file it was read from, as given to [`Plan::load`].
    pub file: PathBuf,
    pub name: PlanName,
    pub source: SourceSpec,
    pub repository: StoreConfig,
    /// When backups run.
    pub schedule: Schedule,
    pub lock: LockSpec,
    pub retention: RetentionSpec,
    pub compression: CompressionSpec,
    /// Restore drills; `None` when the plan has no `drill` section.
    pub drill: Option<DrillSpec>,
    /// When the daemon verifies the repository (`schedule.verify`).
    pub verify_schedule: Schedule,
    /// When the daemon applies retention (`schedule.prune`).
    pub prune_schedule: Schedule,
    /// When the daemon's lock keeper runs (`schedule.keep_locks`).
    pub keep_locks_schedule: Schedule,
    /// Data older than this at the newest restorable point is an alert
    /// (`rpo_limit`); `None`: no limit.
    pub rpo_limit: Option<Duration>,
}

/// A plan's name: `[a-z0-9][a-z0-9_-]{0,62}`, used in object keys and lock-file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlanName(String);

impl PlanName {
    pub fn new(name: &str) -> Result<PlanName, String> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if first_ok && rest_ok && name.len() <= 63 {
            Ok(PlanName(name.to_string()))
        } else {
            Err(format!(
                "`{name}` is not a valid plan name: use 1 to 63 of a-z, 0-9, _ and -, starting with a letter or digit"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PlanName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        PlanName::new(&s)
    }
}

impl From<PlanName> for String {
    fn from(n: PlanName) -> String {
        n.0
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of source a plan can name, as written in plans and manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Sqlite,
    Files,
    Postgres,
    Mariadb,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [
        SourceKind::Sqlite,
        SourceKind::Files,
        SourceKind::Postgres,
        SourceKind::Mariadb,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::Files => "files",
            SourceKind::Postgres => "postgres",
            SourceKind::Mariadb => "mariadb",
        }
    }

    /// The kind a manifest records, if it is one this build knows.
    pub fn parse(s: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is backed up. Serialises with secrets as `***`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceSpec {
    /// A SQLite database file, copied with SQLite's online backup API.
    Sqlite { path: PathBuf },
    /// A directory tree (or one file).
    Files {
        path: PathBuf,
        /// Globs matched against paths relative to `path`; validated.
        exclude: Vec<String>,
    },
    /// A PostgreSQL cluster.
    Postgres {
        connection: DbConnection,
        sslmode: PgSslMode,
        mode: DbMode,
        /// Continuous WAL archiving, for point-in-time restore.
        archive: bool,
        /// Databases also dumped logically at each backup.
        logical_dumps: Vec<String>,
    },
    /// A MariaDB (or MySQL) server.
    Mariadb {
        connection: DbConnection,
        mode: DbMode,
        /// Continuous binlog archiving, for point-in-time restore.
        archive: bool,
        logical_dumps: Vec<String>,
    },
}

impl SourceSpec {
    /// `sqlite`, `files`, `postgres`, `mariadb`, as written in plans.
    pub fn kind(&self) -> SourceKind {
        match self {
            SourceSpec::Sqlite { .. } => SourceKind::Sqlite,
            SourceSpec::Files { .. } => SourceKind::Files,
            SourceSpec::Postgres { .. } => SourceKind::Postgres,
            SourceSpec::Mariadb { .. } => SourceKind::Mariadb,
        }
    }

    pub(super) fn is_database(&self) -> bool {
        !matches!(self, SourceSpec::Files { .. })
    }

    pub(super) fn is_server(&self) -> bool {
        matches!(
            self,
            SourceSpec::Postgres { .. } | SourceSpec::Mariadb { .. }
        )
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Sqlite { path } => write!(f, "sqlite {}", path.display()),
            SourceSpec::Files { path, exclude } if exclude.is_empty() => {
                write!(f, "files {}", path.display())
            }
            SourceSpec::Files { path, exclude } => {
                write!(
                    f,
                    "files {} (excluding {})",
                    path.display(),
                    exclude.join(", ")
                )
            }
            SourceSpec::Postgres {
                connection,
                mode,
                archive,
                ..
            }
            | SourceSpec::Mariadb {
                connection,
                mode,
                archive,
                ..
            } => {
                write!(f, "{} {connection} ({mode}", self.kind())?;
                if *archive {
                    f.write_str(if self.kind() == SourceKind::Postgres {
                        " + WAL archive"
                    } else {
                        " + binlog archive"
                    })?;
                }
                f.write_str(")")
            }
        }
    }
}

/// How to reach a database server. Either `dsn`, or the separate fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbConnection {
    /// Host name, IP, or (PostgreSQL) a socket directory; `None`: the client's default.
    pub host: Option<String>,
    pub port: u16,
    /// MariaDB only: a Unix socket file.
    pub socket: Option<PathBuf>,
    pub user: Option<String>,
    /// `dbname` (PostgreSQL) or `database` (MariaDB).
    pub database: Option<String>,
    /// A full connection URL; may carry a password from `${VAR}`, so secret.
    pub dsn: Option<Secret>,
    pub password: Option<Password>,
}

impl fmt::Display for DbConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dsn.is_some() {
            return f.write_str("dsn ***");
        }
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match (&self.socket, &self.host) {
            (Some(socket), _) => write!(f, "{}", socket.display())?,
            (None, Some(host)) => write!(f, "{host}:{}", self.port)?,
            (None, None) => write!(f, "localhost:{}", self.port)?,
        }
        if let Some(db) = &self.database {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Password {
    /// From a `${VAR}` reference.
    Value(Secret),
    /// Read when the backup connects, so it can be rotated without editing the plan.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbMode {
    /// Base backup of the data files (pg_basebackup / mariadb-backup); allows `archive`.
    Physical,
    /// SQL dumps of `logical_dumps` only; no point-in-time restore.
    Logical,
}

impl fmt::Display for DbMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DbMode::Physical => "physical",
            DbMode::Logical => "logical",
        })
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgSslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSpec {
    pub mode: LockSetting,
    /// The longest lock: what the retention's longest-kept tier needs, or
    /// more. Shorter tiers get shorter locks (see [`Plan::lock_days_for`]).
    /// Unused with `mode: none`.
    #[serde(default)]
    pub days: u32,
    /// Instead of `days`: a lock of any length (`90s`, `36h`), for short-lived
    /// repositories and tests of expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<LockDuration>,
}

/// `lock.duration`, written as a humantime duration (`90s`, `12h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockDuration(pub Duration);

impl Serialize for LockDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for LockDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let parsed = humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. 90s, 36h, 30d"
            ))
        })?;
        if parsed.is_zero() {
            return Err(serde::de::Error::custom("must be longer than zero"));
        }
        Ok(LockDuration(parsed))
    }
}

/// `lock.mode`: an S3 Object Lock mode, or `none` for a repository without
/// locks (said explicitly, and warned about, because then a holder of the
/// credentials can delete every backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockSetting {
    Compliance,
    Governance,
    None,
}

impl LockSetting {
    pub fn store_mode(self) -> Option<LockMode> {
        match self {
            LockSetting::Compliance => Some(LockMode::Compliance),
            LockSetting::Governance => Some(LockMode::Governance),
            LockSetting::None => None,
        }
    }
}

impl fmt::Display for LockSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.store_mode() {
            Some(m) => m.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// Which retention rule a snapshot was taken for, decided when it is taken:
/// the first snapshot of a calendar month (in the plan's timezone) is a
/// `monthly` one, the first of a week `weekly`, and so on, counting only the
/// rules the plan has. Its lock lasts as long as that tier keeps snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl Tier {
    pub const PERIODIC: [Tier; 4] = [Tier::Monthly, Tier::Weekly, Tier::Daily, Tier::Hourly];

    fn rule(self) -> &'static str {
        match self {
            Tier::Last => "keep_last",
            Tier::Hourly => "keep_hourly",
            Tier::Daily => "keep_daily",
            Tier::Weekly => "keep_weekly",
            Tier::Monthly => "keep_monthly",
        }
    }

    /// The calendar period `t` falls in, for this tier.
    pub fn period(self, t: DateTime<Utc>, tz: Tz) -> (i32, u32, u32) {
        use chrono::{Datelike, Timelike};
        let local = t.with_timezone(&tz);
        match self {
            Tier::Last => (0, 0, 0),
            Tier::Hourly => (local.year(), local.ordinal(), local.hour()),
            Tier::Daily => (local.year(), local.ordinal(), 0),
            Tier::Weekly => {
                let w = local.iso_week();
                (w.year(), w.week(), 0)
            }
            Tier::Monthly => (local.year(), local.month(), 0),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rule().trim_start_matches("keep_"))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

impl RetentionSpec {
    pub fn keep(&self, tier: Tier) -> Option<u32> {
        match tier {
            Tier::Last => self.keep_last,
            Tier::Hourly => self.keep_hourly,
            Tier::Daily => self.keep_daily,
            Tier::Weekly => self.keep_weekly,
            Tier::Monthly => self.keep_monthly,
        }
    }

    pub(super) fn rules(&self) -> [(&'static str, Option<u32>); 5] {
        [
            ("keep_last", self.keep_last),
            ("keep_hourly", self.keep_hourly),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
        ]
    }
}

impl fmt::Display for RetentionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("keep")?;
        let mut sep = " ";
        for (rule, n) in self.rules() {
            if let Some(n) = n {
                write!(f, "{sep}{} {n}", rule.trim_start_matches("keep_"))?;
                sep = ", ";
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSpec {
    /// zstd level, 1..=22.
    #[serde(default = "default_level")]
    pub level: i32,
}

fn default_level() -> i32 {
    DEFAULT_COMPRESSION_LEVEL
}

impl Default for CompressionSpec {
    fn default() -> Self {
        CompressionSpec {
            level: DEFAULT_COMPRESSION_LEVEL,
        }
    }
}

/// Restore drills: restore a snapshot into scratch space, run checks, tear down.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    pub schedule: Schedule,
    /// A drill running longer fails.
    pub max_duration: Duration,
    /// Which point it restores (`drill.target`, `drill.rewind`).
    pub target: DrillPoint,
    /// Where restores go; `None`: the system temp folder.
    pub scratch_dir: Option<PathBuf>,
    /// PostgreSQL / MariaDB: port for the throwaway server; `None`: any free port.
    pub port: Option<u16>,
    /// PostgreSQL / MariaDB: folder with the server binaries; `None`: search `PATH`.
    pub server_bin: Option<PathBuf>,
    pub checks: Vec<DrillCheck>,
}

/// Which point a plan's drills restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillPoint {
    /// The newest restorable point.
    Latest,
    /// The state this long before the drill starts (exercises WAL / binlog
    /// replay).
    Rewind(Duration),
    /// A random point inside the restorable window(s), or a random snapshot
    /// where restores reach snapshots only: old snapshots and long WAL
    /// chains get drilled too, not just the newest state.
    Random,
}

impl DrillPoint {
    /// As `drill.target` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            DrillPoint::Latest => "latest",
            DrillPoint::Rewind(_) => "rewind",
            DrillPoint::Random => "random",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillCheck {
    /// As written, or `checks[N]`.
    pub name: String,
    pub kind: CheckKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Run on the restored database; the first column of the first row is compared.
    Sql { query: String, expect: Expectation },
    /// Must exist in the restored tree; relative to the source path.
    File { path: PathBuf },
}

/// What a SQL check's first value must be. All empty: the query must succeed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    pub equals: Option<String>,
    pub at_least: Option<i64>,
    pub at_most: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_are_checked() {
        assert!(PlanName::new("orders-db_2").is_ok());
        for bad in ["", "Orders", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(PlanName::new(bad).is_err(), "{bad:?}");
        }
    }
}
