//! Backup plans: the YAML an SRE team declares, parsed strictly and validated
//! into a [`Plan`] the rest of holdfast trusts.
//!
//! Owns the plan schema (documented field by field in `docs/plans.md`), path
//! resolution against the plan's folder, `${VAR}` secrets, cron schedules and
//! the rule that the object lock outlives everything the retention keeps.
//! Parsing is two steps: serde into `Raw*` structs (`deny_unknown_fields`,
//! field paths from `serde_path_to_error`), then checks that need more than
//! one field. Every error names file, line:column and field path.
//!
//! Files: `raw` is the schema serde reads, `validate` turns it into the
//! `model` types (and reads plan files), `retention` does the tier and lock
//! arithmetic, `summary` is what `plan check` prints; `cron`, `error` and
//! `secret` are schedules, error reporting and `${VAR}` expansion.

mod cron;
mod error;
#[cfg(test)]
mod fixtures;
mod model;
mod raw;
mod retention;
mod secret;
mod summary;
mod validate;

pub use self::cron::{CronError, Schedule};
pub use self::error::{Diagnostic, PlanError};
pub use self::model::{
    BaseBackupMethod, CheckKind, CompressionSpec, DbConnection, DbMode, DrillCheck, DrillPoint,
    DrillSpec, Expectation, KeySpec, LockDuration, LockSetting, LockSpec, Password, Percent,
    PgSslMode, Plan, PlanName, RetentionSpec, SourceKind, SourceSpec, Tier, VerifyDepth,
    VerifySample, DEFAULT_COMPRESSION_LEVEL,
};
pub use self::retention::LOCK_MARGIN_DAYS;
pub use self::secret::Secret;
pub use self::summary::{DrillSummary, PlanSummary, ScheduleSummary, VerifySummary};
pub use self::validate::{
    load_paths, DEFAULT_DRILL_MAX_DURATION, DEFAULT_DRILL_SCHEDULE, DEFAULT_KEEP_LOCKS_SCHEDULE,
    DEFAULT_PRUNE_SCHEDULE, DEFAULT_VERIFY_SCHEDULE,
};
