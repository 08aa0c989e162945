//! Backup plans: the YAML an SRE team declares, parsed strictly and validated
//! into a [`Plan`] the rest of holdfast trusts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{LockMode, StoreConfig};

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file it was read from.
    pub file: PathBuf,
    pub name: PlanName,
    pub source: SourceSpec,
    pub repository: StoreConfig,
    pub lock: LockSpec,
    pub retention: RetentionSpec,
    pub compression: CompressionSpec,
}

/// A plan's name: `[a-z0-9][a-z0-9_-]*`, used in object keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlanName(String);

impl PlanName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PlanName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceSpec {
    Sqlite {
        path: PathBuf,
    },
    Files {
        path: PathBuf,
        #[serde(default)]
        exclude: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSpec {
    pub mode: LockMode,
    pub days: u32,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSpec {
    pub level: i32,
}

impl Default for CompressionSpec {
    fn default() -> Self {
        CompressionSpec { level: 3 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

impl Plan {
    /// Reads and validates one plan file.
    pub fn load(file: &Path) -> Result<Plan, PlanError> {
        let invalid = |message: String| PlanError::Invalid {
            file: file.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| invalid(e.to_string()))?;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            name: String,
            source: SourceSpec,
            #[allow(dead_code)]
            schedule: Option<serde_yaml::Value>,
            repository: RawRepo,
            lock: LockSpec,
            #[serde(default)]
            retention: RetentionSpec,
            #[serde(default)]
            compression: CompressionSpec,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawRepo {
            url: String,
        }
        let raw: Raw = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let source = match raw.source {
            SourceSpec::Sqlite { path } => SourceSpec::Sqlite {
                path: resolve(&path),
            },
            SourceSpec::Files { path, exclude } => SourceSpec::Files {
                path: resolve(&path),
                exclude,
            },
        };
        let root = raw
            .repository
            .url
            .strip_prefix("file://")
            .ok_or_else(|| invalid("repository.url: only file:// is supported".into()))?;
        Ok(Plan {
            file: file.to_path_buf(),
            name: PlanName(raw.name),
            source,
            repository: StoreConfig::Local {
                root: resolve(Path::new(root)),
            },
            lock: raw.lock,
            retention: raw.retention,
            compression: raw.compression,
        })
    }
}

/// Expands folders to their plan files and loads each.
pub fn load_paths(paths: &[PathBuf]) -> Vec<(PathBuf, Result<Plan, PlanError>)> {
    paths.iter().map(|p| (p.clone(), Plan::load(p))).collect()
}

impl Plan {
    pub fn retention_lock(&self, now: chrono::DateTime<chrono::Utc>) -> crate::store::Retention {
        crate::store::Retention {
            mode: self.lock.mode,
            until: now + chrono::Duration::days(self.lock.days as i64),
        }
    }

    pub fn summary(&self, _now: chrono::DateTime<chrono::Utc>) -> String {
        format!("{}: {:?}", self.name, self.source)
    }

    pub fn summary_json(&self, _now: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
        serde_json::json!({"name": self.name})
    }
}
