//! Read a plan's snapshots back and recompute every checksum; for engines
//! with a log archive, every archived log file too. Every pack, or a
//! rotating share of them (`verify.sample`, `--sample`): the rotation's
//! cursor is kept per plan in the state folder, so that successive runs, by
//! hand or by the daemon, read successive stretches of the repository.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::engine_for;
use crate::error::Error;
use crate::ids::{Hash256, PackId};
use crate::plan::{Plan, VerifyDepth, VerifySample};
use crate::progress::ProgressMode;
use crate::repository::verify::{verify_sampled, SampleRequest, VerifyReport};

/// Where, in the state folder, the rotation cursors live: one file per plan.
pub const CURSOR_DIR: &str = "verify-cursors";

pub struct VerifyRequest<'a> {
    /// One snapshot (id prefix or `latest`) instead of all.
    pub snapshot: Option<&'a str>,
    pub sample: VerifySample,
    /// How far each pack read is checked (`--depth`, else `verify.depth`).
    pub depth: VerifyDepth,
    /// The state folder holding the cursors of sampled verifies; `None`:
    /// start at a random pack and keep nothing.
    pub state_dir: Option<&'a Path>,
    pub progress: ProgressMode,
}

pub async fn verify(plan: &Plan, req: &VerifyRequest<'_>) -> Result<VerifyReport, Error> {
    // A plan whose engine this build lacks has no archive to read, but its
    // snapshots still verify.
    let logs = engine_for(plan)
        .ok()
        .and_then(|e| e.log_retention(plan))
        .map(|l| l.prefix());
    let repo = super::open_repo(plan).await?;
    let cursor_file = req
        .state_dir
        .map(|d| d.join(CURSOR_DIR).join(format!("{}.json", plan.name)));
    let sample = match req.sample.share() {
        None => None,
        Some(share) => {
            let saved = match cursor_file.clone() {
                Some(f) => tokio::task::spawn_blocking(move || load_cursor(&f))
                    .await
                    .expect("cursor read panicked"),
                None => None,
            };
            Some(SampleRequest {
                share,
                after: saved.unwrap_or_else(random_pack_id),
            })
        }
    };
    let report = verify_sampled(
        &repo,
        &plan.name,
        req.snapshot,
        logs.as_deref(),
        sample,
        req.depth,
        req.progress,
    )
    .await?;
    if let (Some(file), Some(s)) = (cursor_file, &report.sample) {
        if let Some(cursor) = s.cursor {
            let record = CursorRecord {
                plan: plan.name.to_string(),
                repository: repo.url(),
                cursor,
                saved_at: crate::clock::now(),
            };
            let saved = tokio::task::spawn_blocking(move || save_cursor(&file, &record))
                .await
                .expect("cursor write panicked");
            if let Err(e) = saved {
                // The verify itself is sound; only the rotation restarts
                // at a random pack next time.
                tracing::warn!(plan = %plan.name, "{e}");
            }
        }
    }
    Ok(report)
}

/// Where the last sampled verify of a plan stopped.
#[derive(Debug, Serialize, Deserialize)]
struct CursorRecord {
    plan: String,
    repository: String,
    /// The last pack read; the next run starts after it.
    cursor: PackId,
    saved_at: DateTime<Utc>,
}

/// The saved cursor; none (no file yet, or an unreadable one, which is
/// logged) starts the rotation at a random pack.
fn load_cursor(file: &Path) -> Option<PackId> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                "unable to read the verify cursor {}: {e}; the sample starts at a random pack",
                file.display()
            );
            return None;
        }
    };
    match serde_json::from_slice::<CursorRecord>(&bytes) {
        Ok(r) => Some(r.cursor),
        Err(e) => {
            tracing::warn!(
                "the verify cursor {} is not valid ({e}); the sample starts at a random pack",
                file.display()
            );
            None
        }
    }
}

/// Written to a temporary file and renamed, so a crash leaves the old
/// cursor or the new one.
fn save_cursor(file: &Path, record: &CursorRecord) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "unable to save the verify cursor {}: {e}; the next sampled verify starts at a random pack",
            file.display()
        )
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp: PathBuf = file.with_extension("json.tmp");
    let mut body = serde_json::to_vec_pretty(record).expect("cursor serialises");
    body.push(b'\n');
    std::fs::write(&tmp, body).map_err(fail)?;
    std::fs::rename(&tmp, file).map_err(fail)
}

/// A random point on the ring of pack ids, where a rotation without a
/// saved cursor starts: a verify whose state is never kept (a throwaway
/// container) then reads random stretches, never the same one.
fn random_pack_id() -> PackId {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS has a random source");
    PackId(Hash256(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_round_trips_and_a_bad_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CURSOR_DIR).join("app.json");
        assert_eq!(load_cursor(&file), None);
        let cursor = PackId(Hash256::digest(b"pack"));
        let record = CursorRecord {
            plan: "app".into(),
            repository: "file:///r".into(),
            cursor,
            saved_at: Utc::now(),
        };
        save_cursor(&file, &record).unwrap();
        assert_eq!(load_cursor(&file), Some(cursor));
        std::fs::write(&file, "{\"cursor\": ").unwrap();
        assert_eq!(load_cursor(&file), None);
        assert_ne!(random_pack_id(), random_pack_id());
    }
}
