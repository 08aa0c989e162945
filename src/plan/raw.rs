//! The plan file's schema as serde reads it: `Raw*` structs that refuse
//! unknown fields, before any check that needs more than one field. The
//! `source` map is kept as a YAML value and read by its `type` later
//! (`validate`), so errors inside it keep their field path.

use std::path::PathBuf;

use serde::Deserialize;

use super::model::{BaseBackupMethod, CompressionSpec, DbMode, LockSpec, PgSslMode, RetentionSpec};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub(super) name: String,
    /// Read as a value, then by `type`, so errors inside keep their field path.
    pub(super) source: serde_yaml::Value,
    pub(super) repository: RawRepository,
    pub(super) schedule: RawSchedule,
    pub(super) lock: LockSpec,
    pub(super) retention: Option<RetentionSpec>,
    pub(super) compression: Option<CompressionSpec>,
    pub(super) drill: Option<RawDrill>,
    pub(super) rpo_limit: Option<String>,
    pub(super) verify: Option<RawVerify>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    /// `all` or a percentage (`10%`); read as a value so a bare number gets
    /// a message saying to add the `%`, not serde's "expected a string".
    pub(super) sample: Option<serde_yaml::Value>,
    /// `chunks` (the default) or `stored`.
    pub(super) depth: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRepository {
    pub(super) url: String,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) path_style: Option<bool>,
    pub(super) access_key_id: Option<String>,
    pub(super) secret_access_key: Option<String>,
    pub(super) secret_access_key_file: Option<PathBuf>,
    /// The repository key's passphrase, as `${VAR}`.
    pub(super) key: Option<String>,
    pub(super) key_file: Option<PathBuf>,
    /// Only `none`.
    pub(super) encryption: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub(super) backup: String,
    pub(super) timezone: Option<String>,
    pub(super) drill: Option<String>,
    pub(super) verify: Option<String>,
    pub(super) prune: Option<String>,
    pub(super) keep_locks: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSqlite {
    pub(super) path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiles {
    pub(super) path: PathBuf,
    #[serde(default)]
    pub(super) exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) user: Option<String>,
    pub(super) dbname: Option<String>,
    pub(super) dsn: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) sslmode: Option<PgSslMode>,
    pub(super) mode: Option<DbMode>,
    pub(super) archive: Option<bool>,
    #[serde(default)]
    pub(super) logical_dumps: Vec<String>,
    pub(super) base_backup: Option<BaseBackupMethod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMariadb {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) socket: Option<PathBuf>,
    pub(super) user: Option<String>,
    pub(super) database: Option<String>,
    pub(super) dsn: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) mode: Option<DbMode>,
    pub(super) archive: Option<bool>,
    #[serde(default)]
    pub(super) logical_dumps: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrill {
    pub(super) max_duration: Option<String>,
    pub(super) target: Option<RawDrillTarget>,
    pub(super) rewind: Option<String>,
    pub(super) scratch_dir: Option<PathBuf>,
    pub(super) port: Option<u16>,
    pub(super) server_bin: Option<PathBuf>,
    #[serde(default)]
    pub(super) checks: Vec<RawCheck>,
}

/// `drill.target`; `rewind` takes its duration from `drill.rewind`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawDrillTarget {
    Latest,
    Rewind,
    Random,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) name: Option<String>,
    pub(super) sql: Option<String>,
    pub(super) file: Option<PathBuf>,
    pub(super) expect: Option<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    pub(super) equals: Option<serde_yaml::Value>,
    pub(super) at_least: Option<i64>,
    pub(super) at_most: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let Err(e) = serde_yaml::from_str::<RawPostgres>("host: db\ndbnmae: app\n") else {
            panic!("a misspelt field was accepted");
        };
        assert!(e.to_string().contains("unknown field `dbnmae`"), "{e}");
        assert!(serde_yaml::from_str::<RawPostgres>("host: db\ndbname: app\n").is_ok());
    }
}
