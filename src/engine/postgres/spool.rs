//! The spool of asynchronous WAL archiving (`wal-push --async`): what the
//! pusher running ahead of PostgreSQL's archiver (`wal-push-ahead`) tells
//! the `archive_command` that asks for a segment later.
//!
//! PostgreSQL runs `archive_command` for one file at a time, so a busy
//! server's archiving is as fast as one push. With `--async`, the first
//! `archive_command` that finds no pusher running starts one, detached. The
//! pusher reads `pg_wal/archive_status/*.ready` (completed files the server
//! has not archived yet), pushes them in order, several at once, into the
//! repository, and records each stored file here. `archive_command` then
//! answers from the record, after checking it against the file.
//!
//! One folder per plan and server, `<spool>/<plan>/<server>/` (`<server>`:
//! 16 hex digits of the SHA-256 of the path of the server's `pg_wal`):
//! * `<file>.ok` — JSON `{"size", "sha256", "object"}`: the file's content
//!   is durably stored as `object`. Written (beside, then renamed) only
//!   after the store confirmed the write. `archive_command` trusts it only
//!   when the file it was given has that size and SHA-256, and removes it
//!   once it has answered.
//! * `<file>.error` — why the pusher could not store the file. The pusher
//!   does not try that file again until `archive_command` has reported the
//!   error to the server and removed it.
//! * `pusher.lock` — held (`flock`) by the running pusher.
//! * `pusher.error` — why the pusher could not start (plan, key, store).
//! * `pusher.log` — the pusher's log (started afresh past 10 MiB).
//!
//! Everything read here is checked: a record over 4 KiB, or one that does
//! not parse, is no record; a record for other content is stale.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::wal::check_name;
use crate::ids::Hash256;
use crate::plan::PlanName;

/// A record or error file larger than this is not one holdfast wrote.
const RECORD_CAP: u64 = 4096;
/// The pusher's log is started afresh when it is larger than this.
const LOG_CAP: u64 = 10 << 20;

/// What the pusher stored for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pushed {
    pub size: u64,
    pub sha256: Hash256,
    pub object: String,
}

/// One plan's spool folder.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// `<root>/<plan>/<server>/`, created (0700) when missing. `<server>`
    /// is the first 16 hex digits of the SHA-256 of the `pg_wal` folder's
    /// path, so two servers archiving into one plan (a cluster and its
    /// rebuild) each have their own records and pusher.
    pub fn open(root: &Path, plan: &PlanName, wal_dir: &Path) -> io::Result<Spool> {
        use std::os::unix::ffi::OsStrExt;
        let server = Hash256::digest(wal_dir.as_os_str().as_bytes()).to_hex();
        let dir = root.join(plan.as_str()).join(&server[..16]);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ok_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ok"))
    }

    fn error_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.error"))
    }

    pub fn pusher_error_path(&self) -> PathBuf {
        self.dir.join("pusher.error")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pusher.log")
    }

    /// Records that `name` is stored. Written beside and renamed, so a
    /// reader never sees half a record.
    pub fn write_ok(&self, name: &str, pushed: &Pushed) -> io::Result<()> {
        let json = serde_json::to_vec(pushed).expect("a record serialises");
        write_replacing(&self.ok_path(name), &json)
    }

    /// The record for `name`: `None` when there is none, `Some(Err(why))`
    /// when there is one holdfast did not write.
    pub fn read_ok(&self, name: &str) -> io::Result<Option<Result<Pushed, String>>> {
        let Some(bytes) = read_capped(&self.ok_path(name))? else {
            return Ok(None);
        };
        Ok(Some(match bytes {
            Err(why) => Err(why),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        }))
    }

    pub fn remove_ok(&self, name: &str) -> io::Result<()> {
        remove_if_present(&self.ok_path(name))
    }

    pub fn has_ok(&self, name: &str) -> bool {
        self.ok_path(name).exists()
    }

    pub fn write_error(&self, name: &str, why: &str) -> io::Result<()> {
        write_replacing(&self.error_path(name), why.as_bytes())
    }

    pub fn has_error(&self, name: &str) -> bool {
        self.error_path(name).exists()
    }

    /// Reads and removes `name`'s error, so the pusher tries it again.
    pub fn take_error(&self, name: &str) -> io::Result<Option<String>> {
        take_text(&self.error_path(name))
    }

    pub fn write_pusher_error(&self, why: &str) -> io::Result<()> {
        write_replacing(&self.pusher_error_path(), why.as_bytes())
    }

    /// Reads and removes the pusher's start-up error.
    pub fn take_pusher_error(&self) -> io::Result<Option<String>> {
        take_text(&self.pusher_error_path())
    }

    /// The pusher's lock, taken: `None` when another process holds it.
    /// Released when the file is dropped (or the process ends).
    pub fn try_lock_pusher(&self) -> io::Result<Option<File>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("pusher.lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Whether a pusher holds the lock now.
    pub fn pusher_running(&self) -> io::Result<bool> {
        Ok(self.try_lock_pusher()?.is_none())
    }

    /// The pusher's log, appended to (started afresh past 10 MiB).
    pub fn open_log(&self) -> io::Result<File> {
        let path = self.log_path();
        if fs::metadata(&path).is_ok_and(|m| m.len() > LOG_CAP) {
            remove_if_present(&path)?;
        }
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Removes records of files the server has finished with (neither
    /// `.ready` in `wal_dir/archive_status` nor the file itself there any
    /// more), and their errors: a server that archived a file by another
    /// route, or a spool left from a data directory that is gone. Also the
    /// half-written `*.tmp-<pid>` files of processes no longer running (a
    /// pusher killed between writing a record and renaming it).
    pub fn sweep(&self, wal_dir: &Path) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some((_, pid)) = file_name.rsplit_once(".tmp-") {
                let gone = pid.parse::<u32>().is_ok_and(|pid| {
                    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                });
                if gone {
                    remove_if_present(&entry.path())?;
                    removed += 1;
                }
                continue;
            }
            let Some(name) = file_name
                .strip_suffix(".ok")
                .or_else(|| file_name.strip_suffix(".error"))
            else {
                continue;
            };
            if check_name(name).is_err() {
                continue;
            }
            let ready = wal_dir.join("archive_status").join(format!("{name}.ready"));
            if !ready.exists() && !wal_dir.join(name).exists() {
                remove_if_present(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Files waiting to be archived: `wal_dir/archive_status/<file>.ready` for
/// valid WAL file names, in the order PostgreSQL's archiver takes them
/// (timeline histories first, then by name, which is WAL order).
pub fn ready(wal_dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(wal_dir.join("archive_status"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".ready")?.to_string();
            check_name(&name).is_ok().then_some(name)
        })
        .collect();
    names.sort_by(|a, b| {
        (!a.ends_with(".history"), a.as_str()).cmp(&(!b.ends_with(".history"), b.as_str()))
    });
    Ok(names)
}

/// Whether `wal_dir/archive_status/<name>.ready` exists.
pub fn is_ready(wal_dir: &Path, name: &str) -> bool {
    wal_dir
        .join("archive_status")
        .join(format!("{name}.ready"))
        .exists()
}

/// Whether the file at `path` is the content `pushed` records: its size,
/// then its SHA-256 (read in 1 MiB pieces).
pub fn matches(path: &Path, pushed: &Pushed) -> io::Result<bool> {
    let mut file = File::open(path)?;
    if file.metadata()?.len() != pushed.size {
        return Ok(false);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(total == pushed.size && Hash256(hasher.finalize().into()) == pushed.sha256)
}

fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp-{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(&tmp, path)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The file's bytes when it exists: `Err(why)` inside when it is over
/// [`RECORD_CAP`].
fn read_capped(path: &Path) -> io::Result<Option<Result<Vec<u8>, String>>> {
    let file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    let mut bytes = Vec::new();
    file.take(RECORD_CAP + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > RECORD_CAP {
        return Ok(Some(Err(format!(
            "{} is over {RECORD_CAP} bytes",
            path.display()
        ))));
    }
    Ok(Some(Ok(bytes)))
}

fn take_text(path: &Path) -> io::Result<Option<String>> {
    let Some(bytes) = read_capped(path)? else {
        return Ok(None);
    };
    remove_if_present(path)?;
    Ok(Some(match bytes {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(why) => why,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> PlanName {
        PlanName::new("pg").unwrap()
    }

    #[test]
    fn ready_files_come_in_the_archiver_s_order_histories_first_and_others_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("archive_status");
        fs::create_dir(&status).unwrap();
        for f in [
            "000000020000000000000003.ready",
            "000000010000000000000002.ready",
            "00000002.history.ready",
            "000000010000000000000001.done",
            "000000010000000000000004.partial.ready",
            "not-wal.ready",
            "000000010000000000000005",
        ] {
            fs::write(status.join(f), b"").unwrap();
        }
        assert_eq!(
            ready(dir.path()).unwrap(),
            [
                "00000002.history",
                "000000010000000000000002",
                "000000010000000000000004.partial",
                "000000020000000000000003",
            ]
        );
        assert!(is_ready(dir.path(), "000000010000000000000002"));
        assert!(!is_ready(dir.path(), "000000010000000000000001"));
    }

    #[test]
    fn a_record_is_trusted_only_for_the_content_it_names_and_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), &plan(), Path::new("/data/pg_wal")).unwrap();
        let seg = dir.path().join("000000010000000000000001");
        fs::write(&seg, b"segment bytes").unwrap();
        let pushed = Pushed {
            size: 13,
            sha256: Hash256::digest(b"segment bytes"),
            object: "wal/pg/000000010000000000000001".into(),
        };
        assert_eq!(spool.read_ok("000000010000000000000001").unwrap(), None);
        spool.write_ok("000000010000000000000001", &pushed).unwrap();
        let read = spool.read_ok("000000010000000000000001").unwrap();
        assert_eq!(read, Some(Ok(pushed.clone())));
        assert!(matches(&seg, &pushed).unwrap());
        // Same size, other bytes; other size.
        fs::write(&seg, b"segment bytez").unwrap();
        assert!(!matches(&seg, &pushed).unwrap());
        fs::write(&seg, b"segment").unwrap();
        assert!(!matches(&seg, &pushed).unwrap());
        // A record holdfast did not write.
        let ok = spool.dir().join("000000010000000000000001.ok");
        fs::write(&ok, b"{\"size\": 1}").unwrap();
        assert!(matches!(
            spool.read_ok("000000010000000000000001").unwrap(),
            Some(Err(_))
        ));
        fs::write(&ok, vec![b' '; 5000]).unwrap();
        let Some(Err(why)) = spool.read_ok("000000010000000000000001").unwrap() else {
            panic!("an oversized record was read");
        };
        assert!(why.contains("over 4096 bytes"), "{why}");
    }

    #[test]
    fn an_error_is_read_once_and_the_lock_is_held_by_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), &plan(), Path::new("/data/pg_wal")).unwrap();
        spool
            .write_error("000000010000000000000001", "store refused")
            .unwrap();
        assert!(spool.has_error("000000010000000000000001"));
        assert_eq!(
            spool.take_error("000000010000000000000001").unwrap(),
            Some("store refused".into())
        );
        assert_eq!(spool.take_error("000000010000000000000001").unwrap(), None);
        let held = spool.try_lock_pusher().unwrap().expect("free");
        assert!(spool.pusher_running().unwrap());
        drop(held);
        assert!(!spool.pusher_running().unwrap());
    }

    #[test]
    fn a_sweep_removes_records_of_files_the_server_is_done_with() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("pg_wal");
        fs::create_dir_all(wal.join("archive_status")).unwrap();
        let spool = Spool::open(&dir.path().join("spool"), &plan(), &wal).unwrap();
        let pushed = Pushed {
            size: 1,
            sha256: Hash256::digest(b"x"),
            object: "o".into(),
        };
        // Waiting: kept. Gone: removed, with its error.
        fs::write(wal.join("000000010000000000000002"), b"x").unwrap();
        fs::write(
            wal.join("archive_status/000000010000000000000002.ready"),
            b"",
        )
        .unwrap();
        spool.write_ok("000000010000000000000002", &pushed).unwrap();
        spool.write_ok("000000010000000000000001", &pushed).unwrap();
        spool.write_error("000000010000000000000001", "x").unwrap();
        // Half-written records: a dead process's goes, a live one's stays.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let tmp = |pid: u32| {
            spool
                .dir()
                .join(format!("000000010000000000000003.ok.tmp-{pid}"))
        };
        fs::write(tmp(dead), b"{").unwrap();
        fs::write(tmp(std::process::id()), b"{").unwrap();
        assert_eq!(spool.sweep(&wal).unwrap(), 3);
        assert!(spool.has_ok("000000010000000000000002"));
        assert!(!spool.has_ok("000000010000000000000001"));
        assert!(!spool.has_error("000000010000000000000001"));
        assert!(!tmp(dead).exists());
        assert!(tmp(std::process::id()).exists());
    }
}
