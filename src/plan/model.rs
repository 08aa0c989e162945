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
    /// The repository's key (`repository.key`, `key_file`, `encryption`).
    pub key: KeySpec,
    /// When backups run.
    pub schedule: Schedule,
    pub lock: LockSpec,
    pub retention: RetentionSpec,
    pub compression: CompressionSpec,
    /// Restore drills; `None` when the plan has no `drill` section.
    pub drill: Option<DrillSpec>,
    /// How much of the repository a verify reads back (`verify.sample`).
    pub verify_sample: VerifySample,
    /// How deep a verify checks what it reads (`verify.depth`).
    pub verify_depth: VerifyDepth,
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

/// Where a plan's repository key comes from. The key itself never appears
/// in `Debug`, a summary or JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// `repository.encryption: none`: nothing sealed (and anyone with write
    /// access to the repository can forge snapshots).
    Unencrypted,
    /// A passphrase: `repository.key: ${VAR}`, or `HOLDFAST_KEY` when the
    /// plan says nothing. `from` names where it came from.
    Passphrase { secret: Secret, from: String },
    /// A key file (contents trimmed): `repository.key_file`, or
    /// `HOLDFAST_KEY_FILE` when the plan says nothing.
    File { path: PathBuf, from: String },
    /// Nothing gives a key: fine for reading the plan, an error for opening
    /// an encrypted repository.
    Unset,
}

impl KeySpec {
    /// What `plan check` shows: where the key is, never what it is.
    pub fn describe(&self) -> String {
        match self {
            KeySpec::Unencrypted => "none (encryption: none)".into(),
            KeySpec::Passphrase { from, .. } => format!("passphrase from {from}"),
            KeySpec::File { path, from } => format!("key file {} ({from})", path.display()),
            KeySpec::Unset => "not given".into(),
        }
    }
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
        /// How a physical base backup reads the cluster.
        base_backup: BaseBackupMethod,
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

/// `source.base_backup` of a PostgreSQL plan: how the base backup reads the
/// cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseBackupMethod {
    /// Read the data directory when it is on this host (the server's
    /// `data_directory`, holding the server's own system identifier), else
    /// stream with `pg_basebackup`.
    #[default]
    Auto,
    /// Always read the data directory; a backup that cannot fails, saying why.
    Local,
    /// Always stream with `pg_basebackup` (also from a remote server).
    Stream,
}

impl fmt::Display for BaseBackupMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BaseBackupMethod::Auto => "auto",
            BaseBackupMethod::Local => "local",
            BaseBackupMethod::Stream => "stream",
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

/// `verify.depth` (and `holdfast verify --depth`): how far a verify checks
/// each pack it reads (`docs/plans.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyDepth {
    /// Every chunk decoded (opened, decompressed) and checked against its
    /// id: proves each snapshot's content, not only that the stored bytes
    /// are unchanged.
    #[default]
    Chunks,
    /// Each pack's stored bytes checked against its name (SHA-256), its
    /// trailer against the index, every needed chunk's place in it; no
    /// chunk is decoded, except those whose index objects disagree. What
    /// pgBackRest's `verify` checks of a backup with its repository
    /// checksums: storage damage is found, a writer's mistake is not.
    Stored,
}

impl VerifyDepth {
    /// Reads `chunks` or `stored`; the error says what to write instead.
    pub fn parse(text: &str) -> Result<VerifyDepth, String> {
        match text.trim() {
            "chunks" => Ok(VerifyDepth::Chunks),
            "stored" => Ok(VerifyDepth::Stored),
            _ => Err(format!(
                "`{text}` is not a verify depth; write `chunks` (every chunk decoded and checked, the default) or `stored` (stored bytes against their names only)"
            )),
        }
    }
}

impl fmt::Display for VerifyDepth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerifyDepth::Chunks => "chunks",
            VerifyDepth::Stored => "stored",
        })
    }
}

/// `verify.sample` (and `holdfast verify --sample`): whether a verify reads
/// every pack back or a share of them, rotating so that repeated runs cover
/// every pack (`docs/plans.md`). Manifests and index objects are always read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifySample {
    #[default]
    All,
    Share(Percent),
}

/// A percentage `0 < p <= 100`, to two decimals, kept in hundredths of a
/// per cent so it compares and prints exactly (`10%`, `0.5%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(u32);

impl Percent {
    pub const HUNDRED: Percent = Percent(10_000);

    /// `hundredths` of a per cent: 1 (0.01%) to 10 000 (100%).
    pub fn from_hundredths(hundredths: u32) -> Option<Percent> {
        (1..=10_000)
            .contains(&hundredths)
            .then_some(Percent(hundredths))
    }

    pub fn hundredths(self) -> u32 {
        self.0
    }

    /// How many of `total` things this share is: rounded up, so a share of
    /// anything is at least one, and never more than `total`.
    pub fn of(self, total: usize) -> usize {
        let n = (total as u128 * self.0 as u128).div_ceil(10_000) as usize;
        n.clamp(total.min(1), total)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole}%"),
            n if n.is_multiple_of(10) => write!(f, "{whole}.{}%", n / 10),
            n => write!(f, "{whole}.{n:02}%"),
        }
    }
}

/// A number in JSON: `10` for 10%, `0.5` for 0.5%.
impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(100) {
            s.serialize_u32(self.0 / 100)
        } else {
            s.serialize_f64(f64::from(self.0) / 100.0)
        }
    }
}

impl VerifySample {
    /// Reads `all`, or a percentage with its `%` sign (`10%`, `0.5%`); the
    /// error says what is wrong and what to write instead.
    pub fn parse(text: &str) -> Result<VerifySample, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(VerifySample::All);
        }
        let Some(number) = t.strip_suffix('%').map(str::trim_end) else {
            return Err(format!(
                "`{text}` is neither `all` nor a percentage; write e.g. 10% (with the % sign) or all"
            ));
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !(frac.is_empty() || digits(frac)) || number.ends_with('.') {
            return Err(format!(
                "`{text}` is not a percentage; write a number from 0.01 to 100 followed by %, e.g. 10%"
            ));
        }
        if frac.len() > 2 {
            return Err(format!(
                "`{text}` has more than two decimals; write e.g. 0.25%"
            ));
        }
        let whole: u32 = match whole.parse() {
            Ok(w) if w <= 100 => w,
            _ => return Err(format!("`{text}` is more than 100%")),
        };
        let frac: u32 = format!("{frac:0<2}").parse().unwrap_or(0);
        let hundredths = whole * 100 + frac;
        if hundredths > 10_000 {
            return Err(format!("`{text}` is more than 100%"));
        }
        Percent::from_hundredths(hundredths)
            .map(VerifySample::Share)
            .ok_or_else(|| format!("`{text}` reads nothing; the share must be more than 0%"))
    }

    /// The share, or `None` for every pack.
    pub fn share(self) -> Option<Percent> {
        match self {
            VerifySample::All => None,
            VerifySample::Share(p) => Some(p),
        }
    }
}

impl fmt::Display for VerifySample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifySample::All => f.write_str("all"),
            VerifySample::Share(p) => p.fmt(f),
        }
    }
}

/// As written in plans: `all` or `10%`.
impl Serialize for VerifySample {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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
    fn verify_sample_reads_all_or_a_percentage_and_refuses_the_rest() {
        assert_eq!(VerifySample::parse("all"), Ok(VerifySample::All));
        for (text, hundredths, shown) in [
            ("10%", 1000, "10%"),
            (" 100% ", 10_000, "100%"),
            ("0.5%", 50, "0.5%"),
            ("12.25%", 1225, "12.25%"),
            ("0.01%", 1, "0.01%"),
            ("7 %", 700, "7%"),
        ] {
            let s = VerifySample::parse(text).unwrap();
            assert_eq!(
                s.share().map(Percent::hundredths),
                Some(hundredths),
                "{text}"
            );
            assert_eq!(s.to_string(), shown);
        }
        for (bad, says) in [
            ("10", "% sign"),
            ("0%", "more than 0%"),
            ("0.00%", "more than 0%"),
            ("100.01%", "more than 100%"),
            ("150%", "more than 100%"),
            ("-5%", "not a percentage"),
            ("1.234%", "two decimals"),
            ("ten%", "not a percentage"),
            ("5.%", "not a percentage"),
            ("%", "not a percentage"),
            ("99999999999999999999%", "more than 100%"),
            ("half", "neither"),
        ] {
            let e = VerifySample::parse(bad).unwrap_err();
            assert!(e.contains(says) && e.contains(bad.trim()), "{bad}: {e}");
        }
        assert_eq!(
            serde_json::to_string(&Percent::from_hundredths(1000)).unwrap(),
            "10"
        );
        assert_eq!(
            serde_json::to_string(&Percent::from_hundredths(50)).unwrap(),
            "0.5"
        );
    }

    #[test]
    fn a_share_rounds_up_to_at_least_one_and_never_past_the_total() {
        let p = |h| Percent::from_hundredths(h).unwrap();
        assert_eq!(p(1000).of(100), 10);
        assert_eq!(p(1000).of(101), 11, "rounded up");
        assert_eq!(p(2000).of(12), 3, "2.4 rounds up to 3");
        assert_eq!(p(1).of(5), 1, "at least one");
        assert_eq!(p(1).of(0), 0, "nothing of nothing");
        assert_eq!(Percent::HUNDRED.of(7), 7);
        assert_eq!(p(9999).of(100_000), 99_990);
        assert_eq!(p(5000).of(usize::MAX / 2), (usize::MAX / 2).div_ceil(2));
        assert!(Percent::from_hundredths(0).is_none());
        assert!(Percent::from_hundredths(10_001).is_none());
    }

    #[test]
    fn plan_names_are_checked() {
        assert!(PlanName::new("orders-db_2").is_ok());
        for bad in ["", "Orders", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(PlanName::new(bad).is_err(), "{bad:?}");
        }
    }
}
