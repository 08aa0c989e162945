//! `holdfast plan check`: validate plan files (or folders of them) and
//! summarise each.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::plan::{Plan, PlanError};

pub struct Checked {
    pub file: PathBuf,
    pub result: Result<Plan, PlanError>,
}

pub fn check(paths: &[PathBuf]) -> Vec<Checked> {
    crate::plan::load_paths(paths)
        .into_iter()
        .map(|(file, result)| Checked { file, result })
        .collect()
}

/// The time summaries count next runs from.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}
