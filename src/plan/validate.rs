//! Turns plan text into a [`Plan`]: serde into the `raw` schema, then the
//! checks that need more than one field, each failure a [`PlanError`] naming
//! file, line:column and field path. Also reads plan files and folders
//! ([`Plan::load`], [`load_paths`]) and resolves relative paths against the
//! plan's folder.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::de::DeserializeOwned;

use super::cron::{self, Schedule};
use super::error::{locate, Diagnostic as D, FieldPath, PlanError, Seg};
use super::model::{
    CheckKind, DbConnection, DbMode, DrillCheck, DrillPoint, DrillSpec, Expectation, KeySpec,
    LockSetting, Password, PgSslMode, Plan, PlanName, SourceSpec, VerifyDepth, VerifySample,
};
use super::raw::{
    RawDrill, RawDrillTarget, RawExpect, RawFiles, RawMariadb, RawPlan, RawPostgres, RawRepository,
    RawSqlite, RawVerify,
};
use super::retention::{needed_lock_days, needed_lock_seconds};
use super::secret::{self, Secret};
use crate::store::s3::{S3Config, SecretSource, StaticCredentials};
use crate::store::StoreConfig;

/// Runs a restore drill monthly unless `schedule.drill` says otherwise.
pub const DEFAULT_DRILL_SCHEDULE: &str = "@monthly";
/// The daemon reads every object back weekly unless `schedule.verify` says otherwise.
pub const DEFAULT_VERIFY_SCHEDULE: &str = "@weekly";
/// The daemon applies retention daily unless `schedule.prune` says otherwise.
pub const DEFAULT_PRUNE_SCHEDULE: &str = "@daily";
/// When the daemon's lock keeper runs, unless `schedule.keep_locks` says.
pub const DEFAULT_KEEP_LOCKS_SCHEDULE: &str = "@daily";
/// A drill that has not finished by then is failed and torn down.
pub const DEFAULT_DRILL_MAX_DURATION: Duration = Duration::from_secs(2 * 3600);

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
        let key = self.key(&raw.repository)?;
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

        let (verify_sample, verify_depth) = match raw.verify {
            Some(v) => {
                let depth = match &v.depth {
                    None => VerifyDepth::Chunks,
                    Some(text) => VerifyDepth::parse(text).map_err(|m| {
                        self.invalid_hint("verify.depth", m, "`chunks` (the default) or `stored`")
                    })?,
                };
                (self.verify_sample(v)?, depth)
            }
            None => (VerifySample::All, VerifyDepth::Chunks),
        };

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

        let verify_schedule = self.schedule(
            "schedule.verify",
            raw.schedule
                .verify
                .as_deref()
                .unwrap_or(DEFAULT_VERIFY_SCHEDULE),
            tz,
        )?;
        let prune_schedule = self.schedule(
            "schedule.prune",
            raw.schedule
                .prune
                .as_deref()
                .unwrap_or(DEFAULT_PRUNE_SCHEDULE),
            tz,
        )?;
        let keep_locks_schedule = self.schedule(
            "schedule.keep_locks",
            raw.schedule
                .keep_locks
                .as_deref()
                .unwrap_or(DEFAULT_KEEP_LOCKS_SCHEDULE),
            tz,
        )?;
        let rpo_limit = raw
            .rpo_limit
            .as_deref()
            .map(|d| self.duration("rpo_limit", d))
            .transpose()?;

        Ok(Plan {
            file: self.file.to_path_buf(),
            name,
            source,
            repository,
            key,
            schedule,
            lock: raw.lock,
            verify_sample,
            verify_depth,
            retention,
            compression,
            drill,
            verify_schedule,
            prune_schedule,
            keep_locks_schedule,
            rpo_limit,
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
        let kinds = "sqlite, files, postgres, mariadb (or mysql)";
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
                if mode == DbMode::Logical && raw.base_backup.is_some() {
                    return Err(self.invalid_hint(
                        "source.base_backup",
                        "applies to mode: physical only (a logical plan takes no base backup)",
                        "remove it, or say `mode: physical`",
                    ));
                }
                Ok(SourceSpec::Postgres {
                    connection,
                    sslmode: raw.sslmode.unwrap_or(PgSslMode::Prefer),
                    mode,
                    archive,
                    logical_dumps,
                    base_backup: raw.base_backup.unwrap_or_default(),
                })
            }
            // MySQL servers are backed up the same way (`mysql` is an alias).
            "mariadb" | "mysql" => {
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
                let password = userinfo.and_then(|u| u.split_once(':')).map(|(_, pw)| pw);
                if let Some(pw) = password {
                    if !(pw.starts_with("${") && pw.ends_with('}')) {
                        return Err(self.invalid_hint(
                            "source.dsn",
                            "carries a password written in clear",
                            "write the password as ${ENV_VAR} inside the dsn, or use password_file",
                        ));
                    }
                }
                match password {
                    // The variable's value is percent-encoded into the URL:
                    // a raw `/`, `?` or `@` in it would otherwise move part
                    // of the password into the host, port or database name,
                    // where errors and logs show it.
                    Some(pw) => {
                        let start = dsn.find("://").unwrap_or(0)
                            + 3
                            + userinfo.map_or(0, |u| u.len() - pw.len());
                        let (head, tail) = (&dsn[..start], &dsn[start + pw.len()..]);
                        let head = self.secret("source.dsn", head, false)?;
                        let pw = self.secret("source.dsn", pw, false)?;
                        let tail = self.secret("source.dsn", tail, false)?;
                        Some(Secret::new(format!(
                            "{}{}{}",
                            head.expose(),
                            crate::secret::percent_encode(pw.expose()),
                            tail.expose()
                        )))
                    }
                    None => Some(self.secret("source.dsn", &dsn, false)?),
                }
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

    /// `repository.key`, `key_file` or `encryption: none` (exactly one), or
    /// `HOLDFAST_KEY_FILE` / `HOLDFAST_KEY` from the environment when the
    /// plan says nothing.
    fn key(&self, raw: &RawRepository) -> Res<KeySpec> {
        let given = [
            ("key", raw.key.is_some()),
            ("key_file", raw.key_file.is_some()),
            ("encryption", raw.encryption.is_some()),
        ];
        let set: Vec<&str> = given.iter().filter(|(_, s)| *s).map(|(f, _)| *f).collect();
        if set.len() > 1 {
            return Err(self.invalid_hint(
                &format!("repository.{}", set[1]),
                format!("cannot be combined with repository.{}; use one", set[0]),
                "key: ${VAR} (a passphrase from the environment), key_file: PATH, or encryption: none",
            ));
        }
        if let Some(e) = &raw.encryption {
            if e.trim() != "none" {
                return Err(self.invalid_hint(
                    "repository.encryption",
                    format!("`{e}` is not a setting: the only one is `none`"),
                    "leave it out for an encrypted repository (the default), with key or key_file",
                ));
            }
            return Ok(KeySpec::Unencrypted);
        }
        if let Some(k) = &raw.key {
            return Ok(KeySpec::Passphrase {
                secret: self.secret("repository.key", k, true)?,
                from: "repository.key".into(),
            });
        }
        if let Some(f) = &raw.key_file {
            return Ok(KeySpec::File {
                path: self.path("repository.key_file", f)?,
                from: "repository.key_file".into(),
            });
        }
        if let Some(f) = (self.env)("HOLDFAST_KEY_FILE").filter(|f| !f.is_empty()) {
            return Ok(KeySpec::File {
                path: PathBuf::from(f),
                from: "HOLDFAST_KEY_FILE".into(),
            });
        }
        if let Some(k) = (self.env)("HOLDFAST_KEY").filter(|k| !k.is_empty()) {
            return Ok(KeySpec::Passphrase {
                secret: Secret::new(k),
                from: "HOLDFAST_KEY".into(),
            });
        }
        Ok(KeySpec::Unset)
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
        // Without `target`, `rewind` alone says what it always said.
        let target = match (raw.target, rewind) {
            (None | Some(RawDrillTarget::Rewind), Some(r)) => DrillPoint::Rewind(r),
            (None | Some(RawDrillTarget::Latest), None) => DrillPoint::Latest,
            (Some(RawDrillTarget::Random), None) => DrillPoint::Random,
            (Some(RawDrillTarget::Rewind), None) => {
                return Err(self.invalid_hint(
                    "drill.target",
                    "is rewind but drill.rewind is not set",
                    "add e.g. `rewind: 1h` (restore the state from an hour before the drill)",
                ))
            }
            (Some(t @ (RawDrillTarget::Latest | RawDrillTarget::Random)), Some(_)) => {
                let name = if t == RawDrillTarget::Latest {
                    "latest"
                } else {
                    "random"
                };
                return Err(self.invalid_hint(
                    "drill.rewind",
                    format!("only applies to `target: rewind`, and drill.target is {name}"),
                    "remove one of the two",
                ));
            }
        };
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
            target,
            scratch_dir,
            port: raw.port,
            server_bin,
            checks,
        })
    }

    fn verify_sample(&self, raw: RawVerify) -> Res<VerifySample> {
        const HINT: &str = "`all` (the default) or a percentage of the packs, e.g. `sample: 10%`";
        match raw.sample {
            None | Some(serde_yaml::Value::Null) => Ok(VerifySample::All),
            Some(serde_yaml::Value::String(text)) => {
                VerifySample::parse(&text).map_err(|m| self.invalid_hint("verify.sample", m, HINT))
            }
            Some(serde_yaml::Value::Number(n)) => Err(self.invalid_hint(
                "verify.sample",
                format!("{n} has no % sign"),
                format!("write `sample: {n}%` for {n} per cent of the packs, or `sample: all`"),
            )),
            Some(_) => {
                Err(self.invalid_hint("verify.sample", "must be `all` or a percentage", HINT))
            }
        }
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
    use crate::plan::fixtures::{parse, MINIMAL};

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
    fn daemon_schedules_default_and_errors_name_the_field() {
        let plan = parse(MINIMAL).unwrap();
        assert_eq!(plan.verify_schedule.expression(), DEFAULT_VERIFY_SCHEDULE);
        assert_eq!(plan.prune_schedule.expression(), DEFAULT_PRUNE_SCHEDULE);
        assert_eq!(plan.rpo_limit, None);

        let text = MINIMAL.replace(
            "schedule: {backup: '0 * * * *'}",
            "schedule: {backup: '0 * * * *', verify: '*/2 * * * * *', prune: '@hourly'}\nrpo_limit: 15m",
        );
        let plan = parse(&text).unwrap();
        assert_eq!(plan.verify_schedule.expression(), "*/2 * * * * *");
        assert_eq!(plan.prune_schedule.expression(), "@hourly");
        assert_eq!(plan.rpo_limit, Some(Duration::from_secs(900)));

        for (field, bad) in [
            ("schedule.verify", "verify: '61 * * * *'"),
            ("schedule.prune", "prune: 'often'"),
        ] {
            let text = MINIMAL.replace(
                "backup: '0 * * * *'",
                &format!("backup: '0 * * * *', {bad}"),
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("app.yaml"), "{err}");
        }
        let err = parse(&format!("{MINIMAL}rpo_limit: soon\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rpo_limit"), "{err}");
    }

    #[test]
    fn verify_depth_defaults_to_chunks_and_a_wrong_one_is_named() {
        assert_eq!(parse(MINIMAL).unwrap().verify_depth, VerifyDepth::Chunks);
        for (text, depth) in [
            ("verify: {depth: chunks}", VerifyDepth::Chunks),
            ("verify: {depth: stored}", VerifyDepth::Stored),
            ("verify: {sample: 10%, depth: stored}", VerifyDepth::Stored),
            ("verify: {sample: 10%}", VerifyDepth::Chunks),
        ] {
            let plan = parse(&format!("{MINIMAL}{text}\n")).unwrap();
            assert_eq!(plan.verify_depth, depth, "{text}");
        }
        let err = parse(&format!("{MINIMAL}verify: {{depth: packs}}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("app.yaml:7:")
                && err.contains("verify.depth")
                && err.contains("`packs` is not a verify depth")
                && err.contains("`stored`"),
            "{err}"
        );
    }

    #[test]
    fn verify_sample_defaults_to_all_and_errors_name_file_and_field() {
        assert_eq!(parse(MINIMAL).unwrap().verify_sample, VerifySample::All);
        for (text, shown) in [
            ("verify: {sample: 10%}", "10%"),
            ("verify: {sample: '2.5%'}", "2.5%"),
            ("verify: {sample: all}", "all"),
            ("verify: {}", "all"),
            ("verify:\n  sample: 100%", "100%"),
        ] {
            let plan = parse(&format!("{MINIMAL}{text}\n")).unwrap();
            assert_eq!(plan.verify_sample.to_string(), shown, "{text}");
        }
        for (text, says) in [
            ("verify: {sample: 10}", "10 has no % sign"),
            ("verify: {sample: 0%}", "more than 0%"),
            ("verify: {sample: 101%}", "more than 100%"),
            ("verify: {sample: some}", "neither `all` nor a percentage"),
            ("verify: {sample: [10%]}", "must be `all` or a percentage"),
            ("verify: {samples: 10%}", "unknown field `samples`"),
        ] {
            let err = parse(&format!("{MINIMAL}{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("app.yaml:7:") && err.contains("verify.sample") && err.contains(says),
                "{text}: {err}"
            );
        }
    }
}
