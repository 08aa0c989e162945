//! Backup plans: the YAML an SRE team declares, parsed strictly and validated
//! into a [`Plan`] the rest of holdfast trusts.
//!
//! Owns the plan schema (documented field by field in `docs/plans.md`), path
//! resolution against the plan's folder, `${VAR}` secrets, cron schedules and
//! the rule that the object lock outlives everything the retention keeps.
//! Parsing is two steps: serde into `Raw*` structs (`deny_unknown_fields`,
//! field paths from `serde_path_to_error`), then checks that need more than
//! one field. Every error names file, line:column and field path.

mod cron;
mod error;
mod secret;

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use self::error::{locate, Diagnostic as D, FieldPath, Seg};
use crate::store::s3::{S3Config, SecretSource, StaticCredentials};
use crate::store::{LockMode, Retention, StoreConfig};

pub use self::cron::{CronError, Schedule};
pub use self::error::{Diagnostic, PlanError};
pub use self::secret::Secret;

/// Runs a restore drill monthly unless `schedule.drill` says otherwise.
pub const DEFAULT_DRILL_SCHEDULE: &str = "@monthly";
/// A drill that has not finished by then is failed and torn down.
pub const DEFAULT_DRILL_MAX_DURATION: Duration = Duration::from_secs(2 * 3600);
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// Days added to each tier's lock beyond what its rule needs, for late runs
/// and clock skew.
pub const LOCK_MARGIN_DAYS: u32 = 1;

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
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Sqlite { .. } => "sqlite",
            SourceSpec::Files { .. } => "files",
            SourceSpec::Postgres { .. } => "postgres",
            SourceSpec::Mariadb { .. } => "mariadb",
        }
    }

    fn is_database(&self) -> bool {
        !matches!(self, SourceSpec::Files { .. })
    }

    fn is_server(&self) -> bool {
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
                    f.write_str(if self.kind() == "postgres" {
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

    fn rules(&self) -> [(&'static str, Option<u32>); 5] {
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
    /// Restore the state this long before the drill starts (exercises WAL /
    /// binlog replay); `None`: the newest state.
    pub rewind: Option<Duration>,
    /// Where restores go; `None`: the system temp folder.
    pub scratch_dir: Option<PathBuf>,
    /// PostgreSQL / MariaDB: port for the throwaway server; `None`: any free port.
    pub port: Option<u16>,
    /// PostgreSQL / MariaDB: folder with the server binaries; `None`: search `PATH`.
    pub server_bin: Option<PathBuf>,
    pub checks: Vec<DrillCheck>,
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

/// What `holdfast plan check --json` prints for one plan. Secrets are `***`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub name: String,
    pub file: PathBuf,
    pub source: SourceSpec,
    pub repository: String,
    pub schedule: ScheduleSummary,
    pub lock: LockSpec,
    /// Days the retention policy needs the lock to cover, and the rule needing most.
    pub lock_needed_days: u32,
    pub lock_needed_by: String,
    pub retention: RetentionSpec,
    pub compression: CompressionSpec,
    pub drill: Option<DrillSummary>,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleSummary {
    pub expression: String,
    pub timezone: String,
    pub next: Vec<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillSummary {
    pub schedule: ScheduleSummary,
    pub max_duration: String,
    pub rewind: Option<String>,
    pub checks: Vec<String>,
}

impl ScheduleSummary {
    fn new(schedule: &Schedule, now: DateTime<Utc>, n: usize) -> ScheduleSummary {
        ScheduleSummary {
            expression: schedule.expression().to_string(),
            timezone: schedule.timezone().name().to_string(),
            next: schedule.next_runs(now, n),
        }
    }
}

/// Reads plans from files and folders. A folder stands for its `*.yaml` and
/// `*.yml` files (sorted, not recursive); one with none is an error entry.
/// A plan whose name an earlier one already uses is an error entry too: the
/// two would share object keys and locks.
pub fn load_paths(paths: &[PathBuf]) -> Vec<(PathBuf, Result<Plan, PlanError>)> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push((path.clone(), Plan::load(path)));
            continue;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(source) => {
                out.push((
                    path.clone(),
                    Err(PlanError::Read {
                        file: path.clone(),
                        source,
                    }),
                ));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            out.push((path.clone(), Err(PlanError::NoPlans { dir: path.clone() })));
        }
        for file in files {
            let plan = Plan::load(&file);
            out.push((file, plan));
        }
    }
    let mut seen: HashMap<PlanName, PathBuf> = HashMap::new();
    for (file, result) in &mut out {
        if let Ok(plan) = result {
            if let Some(first) = seen.get(&plan.name) {
                *result = Err(PlanError::DuplicateName {
                    file: file.clone(),
                    name: plan.name.to_string(),
                    first: first.clone(),
                });
            } else {
                seen.insert(plan.name.clone(), file.clone());
            }
        }
    }
    out
}

impl Plan {
    /// Reads and validates one plan file, taking `${VAR}` values from the process environment.
    pub fn load(file: &Path) -> Result<Plan, PlanError> {
        Plan::load_with_env(file, &|name| std::env::var(name).ok())
    }

    /// [`Plan::load`] with an injected environment, for tests.
    pub fn load_with_env(
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(file).map_err(|source| PlanError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Plan::parse(&text, file, env)
    }

    /// Parses plan text as if read from `file` (which anchors relative paths
    /// and names errors). Does not touch the filesystem.
    pub fn parse(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, PlanError> {
        let folder = file.parent().unwrap_or(Path::new(""));
        let base = std::path::absolute(if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        })
        .unwrap_or_else(|_| folder.to_path_buf());
        let ctx = Ctx {
            file,
            text,
            base: normalize(&base),
            env,
        };
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawPlan = serde_path_to_error::deserialize(de)
            .map_err(|e| ctx.serde_error(&FieldPath::default(), e))?;
        ctx.build(raw)
    }

    /// The tier of a snapshot taken at `at`, given when the plan's earlier
    /// snapshots were taken: the longest-period rule for which it is the
    /// first snapshot of its period.
    pub fn tier_of(&self, at: DateTime<Utc>, earlier: &[DateTime<Utc>]) -> Tier {
        let tz = self.schedule.timezone();
        for tier in Tier::PERIODIC {
            if self.retention.keep(tier).is_none() {
                continue;
            }
            let period = tier.period(at, tz);
            if !earlier
                .iter()
                .any(|e| *e < at && tier.period(*e, tz) == period)
            {
                return tier;
            }
        }
        Tier::Last
    }

    /// The plan's longest lock: `lock.duration`, or `lock.days`.
    pub fn lock_length(&self) -> chrono::Duration {
        match self.lock.duration {
            Some(d) => chrono::Duration::from_std(d.0).unwrap_or(chrono::Duration::MAX),
            None => chrono::Duration::days(i64::from(self.lock.days)),
        }
    }

    /// Days a snapshot of `tier` stays locked, rounded up (see [`Plan::lock_length_for`]).
    pub fn lock_days_for(&self, tier: Tier) -> u32 {
        let secs = self.lock_length_for(tier).num_seconds();
        u32::try_from((secs + 86_399) / 86_400).unwrap_or(u32::MAX)
    }

    /// How long a snapshot of `tier` stays locked: as long as any rule that
    /// can keep it keeps snapshots (`keep_last` and every rule of a shorter
    /// period keep it too), plus a day of margin, and never more than the
    /// plan's lock length, which validation checked covers the longest rule.
    pub fn lock_length_for(&self, tier: Tier) -> chrono::Duration {
        let mut rules = RetentionSpec::default();
        for t in [
            Tier::Last,
            Tier::Hourly,
            Tier::Daily,
            Tier::Weekly,
            Tier::Monthly,
        ] {
            if t <= tier || t == Tier::Last {
                match t {
                    Tier::Last => rules.keep_last = self.retention.keep_last,
                    Tier::Hourly => rules.keep_hourly = self.retention.keep_hourly,
                    Tier::Daily => rules.keep_daily = self.retention.keep_daily,
                    Tier::Weekly => rules.keep_weekly = self.retention.keep_weekly,
                    Tier::Monthly => rules.keep_monthly = self.retention.keep_monthly,
                }
            }
        }
        let gaps = self
            .schedule
            .wall_clock_gaps(cron::reference_instant(), 400);
        let (needed, _) = needed_lock_seconds(&rules, &gaps);
        let wanted =
            chrono::Duration::seconds(needed) + chrono::Duration::days(i64::from(LOCK_MARGIN_DAYS));
        wanted
            .min(self.lock_length())
            .max(chrono::Duration::seconds(1))
    }

    /// The lock for objects a snapshot of `tier` writes or reuses, taken at
    /// `now`; `None` when the plan says `lock.mode: none`.
    pub fn lock_for(&self, tier: Tier, now: DateTime<Utc>) -> Option<Retention> {
        Some(Retention {
            mode: self.lock.mode.store_mode()?,
            until: now + self.lock_length_for(tier),
        })
    }

    /// How many days the lock must cover so every snapshot the retention
    /// keeps stays locked, and the rule that needs the most.
    pub fn lock_needed_days(&self) -> (u32, String) {
        let gaps = self
            .schedule
            .wall_clock_gaps(cron::reference_instant(), 400);
        needed_lock_days(&self.retention, &gaps)
    }

    /// One line for `plan check`, e.g.
    /// `quickstart: sqlite /abs/app.db -> file:///abs/repo, backup "0 * * * *" UTC, next 2026-11-26T05:00:00Z, 06:00:00Z, 07:00:00Z; lock compliance 14d; keep last 24, daily 7`.
    pub fn summary(&self, now: DateTime<Utc>) -> String {
        let mut line = format!(
            "{}: {} -> {}, backup \"{}\" {}, next {}; lock {} {}; {}",
            self.name,
            self.source,
            self.repository.url(),
            self.schedule.expression(),
            self.schedule.timezone().name(),
            format_runs(&self.schedule.next_runs(now, 3)),
            self.lock.mode,
            match self.lock.duration {
                Some(d) => humantime::format_duration(d.0).to_string(),
                None => format!("{}d", self.lock.days),
            },
            self.retention,
        );
        if self.lock.mode == LockSetting::None {
            line = line.replace(&format!("lock none {}d", self.lock.days), "lock NONE");
        }
        if let Some(drill) = &self.drill {
            line.push_str(&format!(
                "; drill \"{}\", next {}",
                drill.schedule.expression(),
                format_runs(&drill.schedule.next_runs(now, 1))
            ));
        }
        line
    }

    /// [`PlanSummary`] as JSON, for `--json`.
    pub fn summary_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        let (lock_needed_days, lock_needed_by) = self.lock_needed_days();
        let summary = PlanSummary {
            name: self.name.to_string(),
            file: self.file.clone(),
            source: self.source.clone(),
            repository: self.repository.url(),
            schedule: ScheduleSummary::new(&self.schedule, now, 3),
            lock: self.lock,
            lock_needed_days,
            lock_needed_by,
            retention: self.retention,
            compression: self.compression,
            drill: self.drill.as_ref().map(|d| DrillSummary {
                schedule: ScheduleSummary::new(&d.schedule, now, 1),
                max_duration: humantime::format_duration(d.max_duration).to_string(),
                rewind: d.rewind.map(|r| humantime::format_duration(r).to_string()),
                checks: d.checks.iter().map(|c| c.name.clone()).collect(),
            }),
            summary: self.summary(now),
        };
        serde_json::to_value(summary).expect("plan summary serialises")
    }

    /// Things that are not load errors but will fail a backup or drill on
    /// this machine: missing source paths and secret files. Reads the
    /// filesystem; `plan check` prints these as warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut exists = |field: &str, path: &Path, what: &str| {
            if !path.exists() {
                out.push(format!(
                    "{}: {field}: {} does not exist (yet); {what}",
                    self.file.display(),
                    path.display()
                ));
            }
        };
        match &self.source {
            SourceSpec::Sqlite { path } | SourceSpec::Files { path, .. } => {
                exists("source.path", path, "backups fail until it does")
            }
            SourceSpec::Postgres { connection, .. } | SourceSpec::Mariadb { connection, .. } => {
                if let Some(Password::File(p)) = &connection.password {
                    exists(
                        "source.password_file",
                        p,
                        "backups cannot connect until it does",
                    );
                }
                if let Some(socket) = &connection.socket {
                    exists(
                        "source.socket",
                        socket,
                        "the server is not running or listens elsewhere",
                    );
                }
            }
        }
        if let Some(dir) = self.drill.as_ref().and_then(|d| d.scratch_dir.as_ref()) {
            exists("drill.scratch_dir", dir, "drills create it");
        }
        if self.lock.mode == LockSetting::None {
            out.push(format!(
                "{}: lock.mode: none: snapshots are NOT immutable; anyone holding the repository's credentials can delete every backup",
                self.file.display()
            ));
        }
        out
    }
}

fn format_runs(runs: &[DateTime<Utc>]) -> String {
    let mut parts = Vec::new();
    let mut previous: Option<DateTime<Utc>> = None;
    for run in runs {
        let same_day = previous.is_some_and(|p| p.date_naive() == run.date_naive());
        parts.push(if same_day {
            run.format("%H:%M:%SZ").to_string()
        } else {
            run.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        });
        previous = Some(*run);
    }
    if parts.is_empty() {
        "never".into()
    } else {
        parts.join(", ")
    }
}

/// Days the lock must cover for `retention`, given the wall-clock gaps
/// between consecutive backups.
///
/// `keep_last` N keeps a snapshot until N newer ones exist: for the span of N
/// consecutive gaps after it. A rule keeping one snapshot per period for N
/// periods keeps, like restic, the newest snapshot of each of the last N
/// periods *that have a snapshot*, so each step is at least one period and at
/// least one gap. We take the longest such span over the gaps given (a year
/// or more of runs) and round up to whole days.
fn needed_lock_days(retention: &RetentionSpec, gaps: &[chrono::Duration]) -> (u32, String) {
    let (secs, why) = needed_lock_seconds(retention, gaps);
    let day = 86_400i64;
    (
        u32::try_from((secs + day - 1) / day).unwrap_or(u32::MAX),
        why,
    )
}

/// [`needed_lock_days`] to the second.
fn needed_lock_seconds(retention: &RetentionSpec, gaps: &[chrono::Duration]) -> (i64, String) {
    let day = 86_400i64;
    let gaps: Vec<i64> = gaps.iter().map(|g| g.num_seconds()).collect();
    let mut best = (0i64, String::new());
    for (rule, n) in retention.rules() {
        let Some(n) = n else { continue };
        let period = match rule {
            "keep_last" => 0,
            "keep_hourly" => 3600,
            "keep_daily" => day,
            "keep_weekly" => 7 * day,
            _ => 31 * day,
        };
        let secs = longest_span(&gaps, n as usize, period);
        if secs > best.0 {
            best = (secs, format!("{rule}: {n}"));
        }
    }
    best
}

/// The longest sum of `n` consecutive steps, each `max(period, gap)`.
fn longest_span(gaps: &[i64], n: usize, period: i64) -> i64 {
    let steps: Vec<i64> = gaps.iter().map(|g| (*g).max(period)).collect();
    let Some(&longest) = steps.iter().max() else {
        return n as i64 * period;
    };
    if n >= steps.len() {
        return steps.iter().sum::<i64>() + (n - steps.len()) as i64 * longest;
    }
    let mut sum: i64 = steps[..n].iter().sum();
    let mut best = sum;
    for i in n..steps.len() {
        sum += steps[i] - steps[i - n];
        best = best.max(sum);
    }
    best
}

/// Removes `.` and resolves `..` lexically, so summaries show `/srv/x/app.db`
/// rather than `/srv/x/plans/../app.db`. Symlinks are not followed.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

// ---- raw schema: what serde reads ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: String,
    /// Read as a value, then by `type`, so errors inside keep their field path.
    source: serde_yaml::Value,
    repository: RawRepository,
    schedule: RawSchedule,
    lock: LockSpec,
    retention: Option<RetentionSpec>,
    compression: Option<CompressionSpec>,
    drill: Option<RawDrill>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    url: String,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    backup: String,
    timezone: Option<String>,
    drill: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSqlite {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    path: PathBuf,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    dbname: Option<String>,
    dsn: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    sslmode: Option<PgSslMode>,
    mode: Option<DbMode>,
    archive: Option<bool>,
    #[serde(default)]
    logical_dumps: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMariadb {
    host: Option<String>,
    port: Option<u16>,
    socket: Option<PathBuf>,
    user: Option<String>,
    database: Option<String>,
    dsn: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    mode: Option<DbMode>,
    archive: Option<bool>,
    #[serde(default)]
    logical_dumps: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    max_duration: Option<String>,
    rewind: Option<String>,
    scratch_dir: Option<PathBuf>,
    port: Option<u16>,
    server_bin: Option<PathBuf>,
    #[serde(default)]
    checks: Vec<RawCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Option<String>,
    sql: Option<String>,
    file: Option<PathBuf>,
    expect: Option<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    equals: Option<serde_yaml::Value>,
    at_least: Option<i64>,
    at_most: Option<i64>,
}

/// Connection fields common to PostgreSQL and MariaDB, after serde.
struct RawConnection {
    host: Option<String>,
    port: Option<u16>,
    socket: Option<PathBuf>,
    user: Option<String>,
    database: Option<String>,
    database_field: &'static str,
    dsn: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
}

// ---- validation ----

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    /// The plan's folder, absolute.
    base: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
}

type Res<T> = Result<T, PlanError>;

impl Ctx<'_> {
    fn invalid_at(&self, path: &FieldPath, message: String, hint: Option<String>) -> PlanError {
        let (line, column) = locate(self.text, path).unzip();
        PlanError::Invalid(Box::new(D {
            file: self.file.to_path_buf(),
            line,
            column,
            field: path.to_string(),
            message,
            hint,
        }))
    }

    fn invalid(&self, field: &str, message: impl Into<String>) -> PlanError {
        self.invalid_at(&FieldPath::parse(field), message.into(), None)
    }

    fn invalid_hint(
        &self,
        field: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> PlanError {
        self.invalid_at(&FieldPath::parse(field), message.into(), Some(hint.into()))
    }

    fn serde_error(
        &self,
        prefix: &FieldPath,
        e: serde_path_to_error::Error<serde_yaml::Error>,
    ) -> PlanError {
        let mut path = prefix.join(&FieldPath::from(e.path()));
        let inner = e.into_inner();
        let mut position = inner.location().map(|l| (l.line(), l.column()));
        let mut message = inner.to_string();
        if let Some((line, column)) = position {
            if let Some(m) = message.strip_suffix(&format!(" at line {line} column {column}")) {
                message = m.to_string();
            }
        }
        // serde_yaml prefixes its own path (`schedule.backup: …`); we print ours.
        if let Some((p, m)) = message.split_once(": ") {
            if !p.contains(' ') && !p.contains('`') {
                message = m.to_string();
            }
        }
        let quoted = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|r| r.split('`').next())
                .map(str::to_string)
        };
        let mut hint = None;
        if let Some(name) = quoted("unknown field `") {
            if path.0.last() != Some(&Seg::Key(name.clone())) {
                path = path.key(&name);
            }
            position = locate(self.text, &path).or(position);
            hint = Some("check the spelling against docs/plans.md; unknown fields are refused so typos cannot pass silently".into());
        } else if let Some(name) = quoted("missing field `") {
            position = position.or_else(|| locate(self.text, &path));
            path = path.key(&name);
        } else if position.is_none() {
            position = locate(self.text, &path);
        }
        let (line, column) = position.unzip();
        PlanError::Invalid(Box::new(D {
            file: self.file.to_path_buf(),
            line,
            column,
            field: path.to_string(),
            message,
            hint,
        }))
    }

    fn parse_value<T: DeserializeOwned>(&self, prefix: &str, value: serde_yaml::Value) -> Res<T> {
        serde_path_to_error::deserialize(value)
            .map_err(|e| self.serde_error(&FieldPath::parse(prefix), e))
    }

    /// Absolute, normalised; relative paths are relative to the plan's folder.
    fn resolve(&self, path: &Path) -> PathBuf {
        normalize(&self.base.join(path))
    }

    fn path(&self, field: &str, path: &Path) -> Res<PathBuf> {
        if path.as_os_str().is_empty() {
            return Err(self.invalid(field, "is empty"));
        }
        if path.starts_with("~") {
            return Err(self.invalid_hint(
                field,
                format!("`{}` starts with ~, which is not expanded", path.display()),
                "write the absolute path, or one relative to the plan's folder",
            ));
        }
        Ok(self.resolve(path))
    }

    /// Expands `${VAR}`. With `reference_required`, a value without any
    /// reference is refused: it would be a secret written in clear.
    fn secret(&self, field: &str, raw: &str, reference_required: bool) -> Res<Secret> {
        use secret::ExpandError;
        let (value, references) = secret::expand(raw, self.env).map_err(|e| match e {
            ExpandError::Missing(var) => self.invalid_hint(
                field,
                format!("environment variable {var} is not set"),
                format!("export {var} in the environment holdfast runs in, or use the matching *_file field"),
            ),
            ExpandError::Empty(var) => self.invalid(field, format!("environment variable {var} is empty")),
            ExpandError::Malformed(m) => self.invalid(field, m),
        })?;
        if reference_required && references == 0 {
            return Err(self.invalid_hint(
                field,
                "is written in clear in the plan",
                "plans live in git: write `${ENV_VAR}` and set the variable, or use the matching *_file field",
            ));
        }
        Ok(Secret::new(value))
    }

    fn duration(&self, field: &str, raw: &str) -> Res<Duration> {
        let d = humantime::parse_duration(raw.trim()).map_err(|e| {
            self.invalid_hint(
                field,
                format!("`{raw}` is not a duration: {e}"),
                "write a number and a unit, e.g. 90s, 15m, 2h, 35d",
            )
        })?;
        if d.is_zero() {
            return Err(self.invalid(field, "must be longer than zero"));
        }
        Ok(d)
    }

    fn schedule(&self, field: &str, expression: &str, tz: Tz) -> Res<Schedule> {
        Schedule::parse(expression, tz).map_err(|e| {
            self.invalid_at(
                &FieldPath::parse(field),
                format!("\"{expression}\" is not a valid cron expression: {}", e.message),
                e.hint.or_else(|| {
                    Some("5 fields: minute hour day-of-month month day-of-week (0 or 7 = Sunday, 1 = Monday), or @hourly/@daily/@weekly/@monthly".into())
                }),
            )
        })
    }

    fn build(&self, raw: RawPlan) -> Res<Plan> {
        let name = PlanName::new(&raw.name).map_err(|m| self.invalid("name", m))?;
        let source = self.source(raw.source)?;
        let repository = self.repository(raw.repository)?;

        let tz = match &raw.schedule.timezone {
            None => Tz::UTC,
            Some(tz) => tz.parse::<Tz>().map_err(|_| {
                self.invalid_hint(
                    "schedule.timezone",
                    format!("`{tz}` is not a known IANA timezone"),
                    "use a name such as UTC, Europe/Berlin or America/New_York",
                )
            })?,
        };
        let schedule = self.schedule("schedule.backup", &raw.schedule.backup, tz)?;

        if raw.lock.duration.is_some() && raw.lock.days != 0 {
            return Err(self.invalid(
                "lock.duration",
                "cannot be combined with lock.days; use one",
            ));
        }
        if raw.lock.days == 0 && raw.lock.duration.is_none() && raw.lock.mode != LockSetting::None {
            return Err(self.invalid_hint(
                "lock.days",
                "must be at least 1",
                "the lock is what makes snapshots immutable; it must cover the retention",
            ));
        }
        let retention = raw.retention.unwrap_or_default();
        for (rule, n) in retention.rules() {
            if n == Some(0) {
                return Err(self.invalid_hint(
                    &format!("retention.{rule}"),
                    "0 keeps nothing",
                    "leave the rule out instead",
                ));
            }
        }
        if retention.rules().iter().all(|(_, n)| n.is_none()) {
            return Err(self.invalid_hint(
                "retention",
                "keeps nothing: set at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly",
                "e.g. `retention: {keep_last: 24, keep_daily: 7}`",
            ));
        }
        let gaps = schedule.wall_clock_gaps(cron::reference_instant(), 400);
        let (needed, why) = needed_lock_days(&retention, &gaps);
        if let (Some(d), true) = (raw.lock.duration, raw.lock.mode != LockSetting::None) {
            let (secs, why) = needed_lock_seconds(&retention, &gaps);
            if (d.0.as_secs() as i64) < secs {
                let need = humantime::format_duration(Duration::from_secs(secs as u64));
                return Err(self.invalid_hint(
                    "lock.duration",
                    format!(
                        "{} is shorter than the retention needs: retention.{why} keeps snapshots for up to {need}",
                        humantime::format_duration(d.0)
                    ),
                    format!("raise lock.duration to {need}, or keep fewer snapshots"),
                ));
            }
        } else if raw.lock.days < needed && raw.lock.mode != LockSetting::None {
            return Err(self.invalid_hint(
                "lock.days",
                format!(
                    "{} days is shorter than the retention needs: retention.{why} keeps snapshots for up to {needed} days, so lock.days must be at least {needed}",
                    raw.lock.days
                ),
                format!("raise lock.days to {needed}, or keep fewer snapshots"),
            ));
        }

        let compression = raw.compression.unwrap_or_default();
        if !(1..=22).contains(&compression.level) {
            return Err(self.invalid_hint(
                "compression.level",
                format!("{} is out of range 1..=22", compression.level),
                "zstd levels: 1 fastest, 3 default, 19 and up slow and memory-hungry",
            ));
        }

        let drill = match raw.drill {
            Some(d) => {
                let expression = raw
                    .schedule
                    .drill
                    .as_deref()
                    .unwrap_or(DEFAULT_DRILL_SCHEDULE);
                let schedule = self.schedule("schedule.drill", expression, tz)?;
                Some(self.drill(d, schedule, &source)?)
            }
            None if raw.schedule.drill.is_some() => {
                return Err(self.invalid_hint(
                    "schedule.drill",
                    "is set but the plan has no `drill` section",
                    "add `drill: {}` to run drills with the defaults",
                ))
            }
            None => None,
        };

        Ok(Plan {
            file: self.file.to_path_buf(),
            name,
            source,
            repository,
            schedule,
            lock: raw.lock,
            retention,
            compression,
            drill,
        })
    }

    fn source(&self, value: serde_yaml::Value) -> Res<SourceSpec> {
        let serde_yaml::Value::Mapping(mut map) = value else {
            return Err(self.invalid_hint(
                "source",
                "must be a map with a `type`",
                "e.g. `source: {type: sqlite, path: app.db}`",
            ));
        };
        let kinds = "sqlite, files, postgres, mariadb";
        let kind = match map.remove("type") {
            Some(serde_yaml::Value::String(kind)) => kind,
            Some(_) => return Err(self.invalid("source.type", format!("must be one of {kinds}"))),
            None => return Err(self.invalid("source.type", format!("is missing; one of {kinds}"))),
        };
        let rest = serde_yaml::Value::Mapping(map);
        match kind.as_str() {
            "sqlite" => {
                let raw: RawSqlite = self.parse_value("source", rest)?;
                Ok(SourceSpec::Sqlite {
                    path: self.path("source.path", &raw.path)?,
                })
            }
            "files" => {
                let raw: RawFiles = self.parse_value("source", rest)?;
                for (i, glob) in raw.exclude.iter().enumerate() {
                    globset::Glob::new(glob).map_err(|e| {
                        self.invalid(
                            &format!("source.exclude[{i}]"),
                            format!("`{glob}` is not a valid glob: {}", e.kind()),
                        )
                    })?;
                }
                Ok(SourceSpec::Files {
                    path: self.path("source.path", &raw.path)?,
                    exclude: raw.exclude,
                })
            }
            "postgres" => {
                let raw: RawPostgres = self.parse_value("source", rest)?;
                let connection = self.connection(
                    RawConnection {
                        host: raw.host,
                        port: raw.port,
                        socket: None,
                        user: raw.user,
                        database: raw.dbname,
                        database_field: "dbname",
                        dsn: raw.dsn,
                        password: raw.password,
                        password_file: raw.password_file,
                    },
                    5432,
                    &["postgres://", "postgresql://"],
                )?;
                let (mode, archive, logical_dumps) =
                    self.db_mode(raw.mode, raw.archive, raw.logical_dumps, "WAL")?;
                Ok(SourceSpec::Postgres {
                    connection,
                    sslmode: raw.sslmode.unwrap_or(PgSslMode::Prefer),
                    mode,
                    archive,
                    logical_dumps,
                })
            }
            "mariadb" => {
                let raw: RawMariadb = self.parse_value("source", rest)?;
                let connection = self.connection(
                    RawConnection {
                        host: raw.host,
                        port: raw.port,
                        socket: raw.socket,
                        user: raw.user,
                        database: raw.database,
                        database_field: "database",
                        dsn: raw.dsn,
                        password: raw.password,
                        password_file: raw.password_file,
                    },
                    3306,
                    &["mariadb://", "mysql://"],
                )?;
                let (mode, archive, logical_dumps) =
                    self.db_mode(raw.mode, raw.archive, raw.logical_dumps, "binlog")?;
                Ok(SourceSpec::Mariadb {
                    connection,
                    mode,
                    archive,
                    logical_dumps,
                })
            }
            other => Err(self.invalid(
                "source.type",
                format!("`{other}` is not a source type; one of {kinds}"),
            )),
        }
    }

    fn connection(
        &self,
        raw: RawConnection,
        default_port: u16,
        schemes: &[&str],
    ) -> Res<DbConnection> {
        if raw.password.is_some() && raw.password_file.is_some() {
            return Err(self.invalid(
                "source.password_file",
                "cannot be combined with source.password; use one",
            ));
        }
        let password = match (raw.password, raw.password_file) {
            (Some(p), _) => Some(Password::Value(self.secret("source.password", &p, true)?)),
            (None, Some(f)) => Some(Password::File(self.path("source.password_file", &f)?)),
            (None, None) => None,
        };
        if raw.host.as_deref() == Some("") {
            return Err(self.invalid("source.host", "is empty"));
        }
        if raw.host.is_some() && raw.socket.is_some() {
            return Err(self.invalid(
                "source.socket",
                "cannot be combined with source.host; use one",
            ));
        }
        let socket = raw
            .socket
            .map(|s| self.path("source.socket", &s))
            .transpose()?;
        let dsn = match raw.dsn {
            None => None,
            Some(dsn) => {
                let separate = [
                    ("host", raw.host.is_some()),
                    ("port", raw.port.is_some()),
                    ("socket", socket.is_some()),
                    ("user", raw.user.is_some()),
                    (raw.database_field, raw.database.is_some()),
                ];
                if let Some((field, _)) = separate.iter().find(|(_, set)| *set) {
                    return Err(self.invalid_hint(
                        &format!("source.{field}"),
                        "cannot be combined with source.dsn",
                        "put everything in the dsn, or drop the dsn and use the separate fields",
                    ));
                }
                if !dsn.starts_with("${") && !schemes.iter().any(|s| dsn.starts_with(s)) {
                    return Err(self.invalid(
                        "source.dsn",
                        format!("must start with {}", schemes.join(" or ")),
                    ));
                }
                // A password in the userinfo must come from the environment.
                let userinfo = dsn
                    .split_once("://")
                    .and_then(|(_, rest)| rest.rsplit_once('@'))
                    .map(|(userinfo, _)| userinfo);
                if let Some((_, pw)) = userinfo.and_then(|u| u.split_once(':')) {
                    if !(pw.starts_with("${") && pw.ends_with('}')) {
                        return Err(self.invalid_hint(
                            "source.dsn",
                            "carries a password written in clear",
                            "write the password as ${ENV_VAR} inside the dsn, or use password_file",
                        ));
                    }
                }
                Some(self.secret("source.dsn", &dsn, false)?)
            }
        };
        Ok(DbConnection {
            host: raw.host,
            port: raw.port.unwrap_or(default_port),
            socket,
            user: raw.user,
            database: raw.database,
            dsn,
            password,
        })
    }

    fn db_mode(
        &self,
        mode: Option<DbMode>,
        archive: Option<bool>,
        logical_dumps: Vec<String>,
        log: &str,
    ) -> Res<(DbMode, bool, Vec<String>)> {
        let mode = mode.unwrap_or(DbMode::Physical);
        for (i, db) in logical_dumps.iter().enumerate() {
            if db.trim().is_empty() {
                return Err(self.invalid(&format!("source.logical_dumps[{i}]"), "is empty"));
            }
            if logical_dumps[..i].contains(db) {
                return Err(self.invalid(
                    &format!("source.logical_dumps[{i}]"),
                    format!("`{db}` is listed twice"),
                ));
            }
        }
        let archive = match (mode, archive) {
            (DbMode::Logical, Some(true)) => {
                return Err(self.invalid_hint(
                    "source.archive",
                    format!("{log} archiving needs mode: physical"),
                    "point-in-time restore replays the log over a physical base backup",
                ))
            }
            (DbMode::Logical, _) => false,
            (DbMode::Physical, archive) => archive.unwrap_or(true),
        };
        if mode == DbMode::Logical && logical_dumps.is_empty() {
            return Err(self.invalid_hint(
                "source.logical_dumps",
                "mode: logical needs at least one database to dump",
                "e.g. `logical_dumps: [app]`",
            ));
        }
        Ok((mode, archive, logical_dumps))
    }

    fn repository(&self, raw: RawRepository) -> Res<StoreConfig> {
        let url = raw.url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            return self.s3(rest, &raw);
        }
        let s3_only = [
            ("endpoint", raw.endpoint.is_some()),
            ("region", raw.region.is_some()),
            ("path_style", raw.path_style.is_some()),
            ("access_key_id", raw.access_key_id.is_some()),
            ("secret_access_key", raw.secret_access_key.is_some()),
            (
                "secret_access_key_file",
                raw.secret_access_key_file.is_some(),
            ),
        ];
        if let Some((field, _)) = s3_only.iter().find(|(_, set)| *set) {
            return Err(self.invalid(
                &format!("repository.{field}"),
                "only applies to s3:// repositories",
            ));
        }
        let path = if let Some(rest) = url.strip_prefix("file://") {
            if rest.starts_with('/')
                || rest == "."
                || rest.starts_with("./")
                || rest == ".."
                || rest.starts_with("../")
            {
                rest
            } else {
                return Err(self.invalid_hint(
                    "repository.url",
                    format!("`{url}` names a host; file URLs must be file:///absolute/path or file://./relative/path"),
                    "relative paths are relative to the plan's folder",
                ));
            }
        } else if let Some((scheme, _)) = url.split_once("://") {
            return Err(self.invalid_hint(
                "repository.url",
                format!("`{scheme}://` repositories are not supported"),
                "use file:///path, a plain path, or s3://bucket/prefix",
            ));
        } else {
            url
        };
        Ok(StoreConfig::Local {
            root: self.path("repository.url", Path::new(path))?,
        })
    }

    fn s3(&self, rest: &str, raw: &RawRepository) -> Res<StoreConfig> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(self.invalid_hint(
                "repository.url",
                format!("`{bucket}` is not a valid S3 bucket name"),
                "3 to 63 of a-z, 0-9, - and ., starting and ending with a letter or digit",
            ));
        }
        if let Some(endpoint) = &raw.endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
                || endpoint.ends_with("://")
            {
                return Err(self.invalid(
                    "repository.endpoint",
                    format!("`{endpoint}` must be an http:// or https:// URL"),
                ));
            }
        }
        if raw.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(self.invalid("repository.region", "is empty"));
        }
        let access_key_id = match &raw.access_key_id {
            Some(id) => Some(
                self.secret("repository.access_key_id", id, false)?
                    .expose()
                    .to_string(),
            ),
            None => None,
        };
        let secret = match (&raw.secret_access_key, &raw.secret_access_key_file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "repository.secret_access_key_file",
                    "cannot be combined with secret_access_key; use one",
                ))
            }
            (Some(key), None) => Some(SecretSource::Value(self.secret(
                "repository.secret_access_key",
                key,
                true,
            )?)),
            (None, Some(file)) => Some(SecretSource::File(
                self.path("repository.secret_access_key_file", file)?,
            )),
            (None, None) => None,
        };
        let has_secret = raw.secret_access_key.is_some() || raw.secret_access_key_file.is_some();
        if raw.access_key_id.is_some() != has_secret {
            return Err(self.invalid(
                if has_secret { "repository.secret_access_key" } else { "repository.access_key_id" },
                "access_key_id and a secret access key go together; set both or neither (neither: the default AWS credential chain)",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            if let Err(e) = crate::store::check_key(prefix) {
                return Err(self.invalid(
                    "repository.url",
                    format!("the key prefix `{prefix}` is not valid: {e}"),
                ));
            }
        }
        let credentials =
            access_key_id
                .zip(secret)
                .map(|(access_key_id, secret)| StaticCredentials {
                    access_key_id,
                    secret,
                });
        let mut config = S3Config::new(bucket, prefix);
        config.endpoint = raw.endpoint.clone();
        config.region = raw.region.clone();
        // Self-hosted servers (SeaweedFS, MinIO, Ceph) rarely have wildcard DNS.
        config.path_style = raw.path_style.unwrap_or(raw.endpoint.is_some());
        config.credentials = credentials;
        Ok(StoreConfig::S3(config))
    }

    fn drill(&self, raw: RawDrill, schedule: Schedule, source: &SourceSpec) -> Res<DrillSpec> {
        let max_duration = match &raw.max_duration {
            Some(d) => self.duration("drill.max_duration", d)?,
            None => DEFAULT_DRILL_MAX_DURATION,
        };
        let rewind = raw
            .rewind
            .as_deref()
            .map(|r| self.duration("drill.rewind", r))
            .transpose()?;
        if !source.is_server() {
            for (field, set) in [
                ("port", raw.port.is_some()),
                ("server_bin", raw.server_bin.is_some()),
            ] {
                if set {
                    return Err(self.invalid(
                        &format!("drill.{field}"),
                        format!(
                            "only applies to postgres and mariadb sources, not {}",
                            source.kind()
                        ),
                    ));
                }
            }
        }
        let scratch_dir = raw
            .scratch_dir
            .map(|d| self.path("drill.scratch_dir", &d))
            .transpose()?;
        let server_bin = raw
            .server_bin
            .map(|d| self.path("drill.server_bin", &d))
            .transpose()?;
        let mut checks = Vec::new();
        for (i, c) in raw.checks.into_iter().enumerate() {
            let at = format!("drill.checks[{i}]");
            let name = c.name.unwrap_or_else(|| format!("checks[{i}]"));
            let kind = match (c.sql, c.file) {
                (Some(_), Some(_)) => {
                    return Err(self.invalid(
                        &format!("{at}.file"),
                        "a check has either sql or file, not both",
                    ))
                }
                (None, None) => return Err(self.invalid_hint(
                    &at,
                    "needs `sql` (database sources) or `file` (files sources)",
                    "e.g. `- sql: \"SELECT count(*) FROM orders\"` with `expect: {at_least: 1}`",
                )),
                (Some(query), None) => {
                    if !source.is_database() {
                        return Err(self.invalid(
                            &format!("{at}.sql"),
                            "sql checks need a database source; use `file` for files sources",
                        ));
                    }
                    if query.trim().is_empty() {
                        return Err(self.invalid(&format!("{at}.sql"), "is empty"));
                    }
                    let expect = match c.expect {
                        Some(e) => self.expectation(&at, e)?,
                        None => Expectation::default(),
                    };
                    CheckKind::Sql { query, expect }
                }
                (None, Some(path)) => {
                    if source.is_database() {
                        return Err(self.invalid(
                            &format!("{at}.file"),
                            format!(
                                "file checks need a files source, not {}; use `sql`",
                                source.kind()
                            ),
                        ));
                    }
                    if c.expect.is_some() {
                        return Err(
                            self.invalid(&format!("{at}.expect"), "only applies to sql checks")
                        );
                    }
                    let escapes = path
                        .components()
                        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
                    if escapes || path.as_os_str().is_empty() {
                        return Err(self.invalid(
                            &format!("{at}.file"),
                            format!(
                                "`{}` must be a path inside the restored tree (relative, no ..)",
                                path.display()
                            ),
                        ));
                    }
                    CheckKind::File { path }
                }
            };
            checks.push(DrillCheck { name, kind });
        }
        Ok(DrillSpec {
            schedule,
            max_duration,
            rewind,
            scratch_dir,
            port: raw.port,
            server_bin,
            checks,
        })
    }

    fn expectation(&self, at: &str, raw: RawExpect) -> Res<Expectation> {
        let field = format!("{at}.expect");
        let equals = match raw.equals {
            None => None,
            Some(serde_yaml::Value::String(s)) => Some(s),
            Some(serde_yaml::Value::Number(n)) => Some(n.to_string()),
            Some(serde_yaml::Value::Bool(b)) => Some(b.to_string()),
            Some(_) => {
                return Err(self.invalid(
                    &format!("{field}.equals"),
                    "must be a string, number or boolean",
                ))
            }
        };
        if equals.is_some() && (raw.at_least.is_some() || raw.at_most.is_some()) {
            return Err(self.invalid(
                &format!("{field}.equals"),
                "cannot be combined with at_least / at_most",
            ));
        }
        if let (Some(lo), Some(hi)) = (raw.at_least, raw.at_most) {
            if lo > hi {
                return Err(self.invalid(
                    &format!("{field}.at_most"),
                    format!("{hi} is below at_least {lo}; nothing can pass"),
                ));
            }
        }
        if equals.is_none() && raw.at_least.is_none() && raw.at_most.is_none() {
            return Err(self.invalid_hint(
                &field,
                "is empty",
                "set equals, at_least or at_most, or leave expect out",
            ));
        }
        Ok(Expectation {
            equals,
            at_least: raw.at_least,
            at_most: raw.at_most,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = "name: app\nsource: {type: sqlite, path: app.db}\nrepository: {url: ../repo}\nschedule: {backup: '0 * * * *'}\nlock: {mode: compliance, days: 7}\nretention: {keep_last: 24, keep_daily: 7}\n";

    fn parse(text: &str) -> Result<Plan, PlanError> {
        Plan::parse(text, Path::new("/srv/plans/app.yaml"), &no_env)
    }

    #[test]
    fn relative_paths_resolve_against_the_plan_folder() {
        let plan = parse(MINIMAL).unwrap();
        assert_eq!(
            plan.source,
            SourceSpec::Sqlite {
                path: "/srv/plans/app.db".into()
            }
        );
        assert_eq!(
            plan.repository,
            StoreConfig::Local {
                root: "/srv/repo".into()
            }
        );
        assert_eq!(plan.compression.level, 3);
    }

    #[test]
    fn summary_is_one_line_with_the_next_runs() {
        let plan = parse(MINIMAL).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-26T04:10:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            plan.summary(now),
            "app: sqlite /srv/plans/app.db -> file:///srv/repo, backup \"0 * * * *\" UTC, next 2026-11-26T05:00:00Z, 06:00:00Z, 07:00:00Z; lock compliance 7d; keep last 24, daily 7"
        );
        let json = plan.summary_json(now);
        assert_eq!(json["schedule"]["next"][0], "2026-11-26T05:00:00Z");
        assert_eq!(json["lock_needed_days"], 7);
    }

    #[test]
    fn each_snapshot_is_locked_as_long_as_its_tier_keeps_it() {
        let plan = parse(MINIMAL).unwrap();
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let first = t("2026-11-26T00:00:00Z");
        // The first snapshot of a day is the daily one: kept 7 days, locked 7.
        assert_eq!(plan.tier_of(first, &[]), Tier::Daily);
        let r = plan.lock_for(Tier::Daily, first).unwrap();
        assert_eq!(
            (r.mode, r.until - first),
            (LockMode::Compliance, chrono::Duration::days(7))
        );
        // Later ones that day are kept by keep_last 24 only: a day, plus margin.
        let later = t("2026-11-26T05:00:00Z");
        assert_eq!(plan.tier_of(later, &[first]), Tier::Last);
        assert_eq!(plan.lock_days_for(Tier::Last), 1 + LOCK_MARGIN_DAYS);
        assert_eq!(
            plan.tier_of(t("2026-11-27T00:00:00Z"), &[first, later]),
            Tier::Daily
        );

        let yearly = MINIMAL
            .replace("days: 7", "days: 400")
            .replace("keep_daily: 7", "keep_daily: 7, keep_monthly: 12");
        let plan = parse(&yearly).unwrap();
        assert_eq!(plan.tier_of(first, &[]), Tier::Monthly);
        assert_eq!(
            plan.tier_of(t("2026-11-27T00:00:00Z"), &[first]),
            Tier::Daily
        );
        let monthly = plan.lock_days_for(Tier::Monthly);
        assert!((372..=400).contains(&monthly), "{monthly}");
        assert_eq!(plan.lock_days_for(Tier::Daily), 7 + LOCK_MARGIN_DAYS);
        assert_eq!(plan.lock_days_for(Tier::Last), 1 + LOCK_MARGIN_DAYS);

        let unlocked = MINIMAL.replace("{mode: compliance, days: 7}", "{mode: none}");
        let plan = parse(&unlocked).unwrap();
        assert_eq!(plan.lock_for(Tier::Daily, first), None);
        assert!(plan.summary(first).contains("lock NONE"));
        assert!(plan.warnings().iter().any(|w| w.contains("NOT immutable")));
    }

    #[test]
    fn lock_horizon_counts_gaps_longer_than_the_period() {
        let hours = |h: &[i64]| {
            h.iter()
                .map(|h| chrono::Duration::hours(*h))
                .collect::<Vec<_>>()
        };
        let r = |last, daily, weekly, monthly| RetentionSpec {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            ..Default::default()
        };
        let hourly = hours(&[1; 500]);
        assert_eq!(
            needed_lock_days(&r(Some(24), None, None, None), &hourly).0,
            1
        );
        assert_eq!(
            needed_lock_days(&r(Some(25), None, None, None), &hourly).0,
            2
        );
        assert_eq!(
            needed_lock_days(&r(None, Some(7), Some(4), None), &hourly).0,
            28
        );
        assert_eq!(
            needed_lock_days(&r(None, None, None, Some(12)), &hours(&[24; 400])),
            (372, "keep_monthly: 12".into())
        );
        // Weekly backups: 7 "daily" snapshots span 7 weeks.
        assert_eq!(
            needed_lock_days(&r(None, Some(7), None, None), &hours(&[168; 60])).0,
            49
        );
        // Weekdays only: the worst window of 6 gaps holds both weekends.
        let weekdays = hours(&[24, 24, 24, 24, 72].repeat(60));
        assert_eq!(
            needed_lock_days(&r(Some(6), None, None, None), &weekdays).0,
            10
        );
    }

    #[test]
    fn secrets_never_reach_json() {
        let text = "name: pg\nsource: {type: postgres, host: db, password: '${PW}'}\nrepository: {url: /r}\nschedule: {backup: '@daily'}\nlock: {mode: governance, days: 7}\nretention: {keep_daily: 7}\n";
        let env = |n: &str| (n == "PW").then(|| "hunter2".to_string());
        let plan = Plan::parse(text, Path::new("/p/pg.yaml"), &env).unwrap();
        let json = plan.summary_json(Utc::now()).to_string();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(!format!("{plan:?}").contains("hunter2"));
        match &plan.source {
            SourceSpec::Postgres { connection, .. } => match &connection.password {
                Some(Password::Value(s)) => assert_eq!(s.expose(), "hunter2"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plan_names_are_checked() {
        assert!(PlanName::new("orders-db_2").is_ok());
        for bad in ["", "Orders", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(PlanName::new(bad).is_err(), "{bad:?}");
        }
    }
}
