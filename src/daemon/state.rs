//! The daemon's memory across restarts: per plan, when it first saw the plan
//! and when each job last started and how it ended. One small JSON file,
//! written to a temporary name, synced and renamed over the old one, so that
//! a crash leaves either the old or the new file, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::schedule::JobKind;
use crate::error::{Error, Exit};

pub const STATE_FILE: &str = "daemon-state.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub plans: BTreeMap<String, PlanState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlanState {
    /// When this daemon first scheduled the plan: verify and prune count
    /// from here, so a new plan is not verified and pruned at once.
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub jobs: BTreeMap<JobKind, JobRecord>,
}

/// A job's last finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    pub error: Option<String>,
    pub attempts: u32,
}

/// The state file in a folder.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn in_dir(dir: &Path) -> Result<StateFile, Error> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::new(
                Exit::Usage,
                anyhow::anyhow!("unable to create the state folder {}: {e}", dir.display()),
            )
        })?;
        Ok(StateFile {
            path: dir.join(STATE_FILE),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; none yet is an empty state. An unreadable file is
    /// an error naming it: starting from nothing would rerun every job.
    pub fn load(&self) -> Result<State, Error> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    format: FORMAT,
                    ..State::default()
                })
            }
            Err(e) => {
                return Err(Error::new(
                    Exit::Failure,
                    anyhow::anyhow!("unable to read the state file {}: {e}", self.path.display()),
                ))
            }
        };
        let state: State = serde_json::from_slice(&text).map_err(|e| {
            Error::new(
                Exit::Failure,
                anyhow::anyhow!(
                    "the state file {} is not valid: {e}; move it away to start afresh (every job then counts as never run)",
                    self.path.display()
                ),
            )
        })?;
        Ok(state)
    }

    /// Writes atomically: temporary file, fsync, rename, fsync of the folder.
    pub fn save(&self, state: &State) -> Result<(), Error> {
        let fail = |what: &str, e: std::io::Error| {
            Error::new(
                Exit::Failure,
                anyhow::anyhow!(
                    "unable to {what} the state file {}: {e}",
                    self.path.display()
                ),
            )
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut body = serde_json::to_vec_pretty(state).expect("state serializes");
        body.push(b'\n');
        let mut f = std::fs::File::create(&tmp).map_err(|e| fail("write", e))?;
        f.write_all(&body).map_err(|e| fail("write", e))?;
        f.sync_all().map_err(|e| fail("sync", e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| fail("replace", e))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_torn_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path()).unwrap();
        assert!(file.load().unwrap().plans.is_empty());
        let mut state = file.load().unwrap();
        let t: DateTime<Utc> = "2026-03-02T08:00:00Z".parse().unwrap();
        state.plans.entry("app".into()).or_default().jobs.insert(
            JobKind::Backup,
            JobRecord {
                started_at: t,
                finished_at: t,
                ok: true,
                error: None,
                attempts: 1,
            },
        );
        file.save(&state).unwrap();
        let back = file.load().unwrap();
        assert_eq!(back.plans["app"].jobs[&JobKind::Backup].started_at, t);
        std::fs::write(file.path(), "{\"format\": 1, \"plans\": {").unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains(STATE_FILE), "{err}");
    }
}
