//! The scratch folder a drill restores into: created under `drill.scratch_dir`
//! (or the system temp folder) as `holdfast-drill-<plan>-<pid>`, removed when
//! its guard is dropped (success, failure, cancellation), and — for a drill
//! that was killed and never dropped it — found and removed by the next drill
//! of the same plan once the pid in its name is gone.

use std::path::{Path, PathBuf};

use crate::plan::{Plan, PlanName};

/// The folder drills of `plan` create their scratch folders in.
pub fn scratch_base(plan: &Plan) -> PathBuf {
    plan.drill
        .as_ref()
        .and_then(|d| d.scratch_dir.clone())
        .unwrap_or_else(std::env::temp_dir)
}

fn prefix(plan: &PlanName) -> String {
    format!("holdfast-drill-{plan}-")
}

/// A scratch folder, removed (with everything in it) when dropped.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<base>/holdfast-drill-<plan>-<pid>` (empty; a leftover of
    /// this same pid is emptied first).
    pub fn create(base: &Path, plan: &PlanName) -> std::io::Result<ScratchDir> {
        std::fs::create_dir_all(base)?;
        let path = base.join(format!("{}{}", prefix(plan), std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        stop_server_in(&self.path);
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "unable to remove drill scratch folder");
            }
        }
    }
}

/// Whether a process with this pid exists (on Linux, `/proc/<pid>`).
fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// A PostgreSQL server a killed drill left running on a data directory in
/// `dir`: stopped (`pg_ctl stop -m immediate`, it is a throwaway copy)
/// before its folder is removed.
fn stop_server_in(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let data = e.path();
        if data.join("postmaster.pid").exists() {
            let bin = std::fs::read_to_string(data.join("PG_VERSION"))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .and_then(crate::engine::postgres::client::pg_bin_for);
            let pg_ctl = crate::engine::postgres::client::pg_program(bin.as_deref(), "pg_ctl");
            let _ = std::process::Command::new(pg_ctl)
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Removes the scratch folders of earlier drills of `plan` under `base`
/// whose process is gone (killed before it could clean up). Returns what
/// was removed, for the report's notes.
pub fn remove_leftovers(base: &Path, plan: &PlanName) -> Vec<String> {
    let mut notes = Vec::new();
    let Ok(entries) = std::fs::read_dir(base) else {
        return notes;
    };
    let prefix = prefix(plan);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let path = e.path();
        stop_server_in(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => notes.push(format!(
                "removed {} left by drill process {pid}, which is gone",
                path.display()
            )),
            Err(err) => notes.push(format!(
                "unable to remove {} left by drill process {pid}: {err}",
                path.display()
            )),
        }
    }
    notes
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_drills_go_and_live_ones_stay() {
        let base = tempfile::tempdir().unwrap();
        let plan = PlanName::new("app").unwrap();
        // pid 1 is always alive; a pid above pid_max never is.
        let alive = base.path().join("holdfast-drill-app-1");
        let dead = base.path().join("holdfast-drill-app-4294967294");
        let other = base.path().join("holdfast-drill-other-4294967294");
        for d in [&alive, &dead, &other] {
            std::fs::create_dir_all(d.join("x")).unwrap();
        }
        let notes = remove_leftovers(base.path(), &plan);
        assert!(alive.exists() && other.exists());
        assert!(!dead.exists());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("4294967294"), "{notes:?}");
    }

    #[test]
    fn the_scratch_folder_is_removed_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let plan = PlanName::new("app").unwrap();
        let dir = ScratchDir::create(base.path(), &plan).unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("f"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
