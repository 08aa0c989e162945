//! The `mariadb` source: an online physical backup of a whole server with
//! `mariadb-backup --backup --stream=xbstream`, and/or logical dumps.
//!
//! The stream is parsed as it arrives ([`super::xbstream`]) and each file
//! goes to the repository's writer under `mariadb/` (no local copy; one
//! chunk header in memory): an unchanged table file dedups against the
//! previous backup chunk by chunk. `mariadb-backup` runs on the database
//! host (it reads the data directory itself, and takes the server's
//! `BACKUP STAGE` locks through the connection); the snapshot is the
//! *unprepared* backup, which restore prepares (`mariadb-backup --prepare`).
//! What the manifest records: [`super::meta::MariaSnapshotMeta`].
//!
//! Logical dumps are `mariadb-dump --single-transaction --routines --events
//! --triggers DB` into `dumps/<database>.sql` (no `CREATE DATABASE` or `USE`
//! in them: `restore --dump` chooses the database).

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use super::client::{spawn_error, MariaClient};
use super::meta::MariaSnapshotMeta;
use super::xbstream::XbReader;
use crate::engine::SourceKind;
use crate::plan::{DbConnection, DbMode};
use crate::repository::source::{
    Chunking, EntryMeta, EntrySink, Source, SourceError, SourceMetadata,
};

/// Where a server's files go in a snapshot.
pub const DATADIR_PREFIX: &str = "mariadb";
/// Where logical dumps go in a snapshot.
pub const DUMPS_PREFIX: &str = "dumps";
/// InnoDB's default page size: chunks on page boundaries store a changed
/// page, not the file around it, in the next backup.
pub const MARIADB_CHUNK: u32 = 16 * 1024;
/// Files of the backup's own that are read whole for their facts.
const SMALL_FILE_CAP: u64 = 64 * 1024;

pub struct MariaSource {
    client: MariaClient,
    mode: DbMode,
    archive: bool,
    logical_dumps: Vec<String>,
}

impl MariaSource {
    pub fn new(
        conn: DbConnection,
        mode: DbMode,
        archive: bool,
        logical_dumps: Vec<String>,
    ) -> Self {
        MariaSource {
            client: MariaClient::new(conn),
            mode,
            archive,
            logical_dumps,
        }
    }

    fn server_facts(&self) -> Result<(MariaSnapshotMeta, bool), SourceError> {
        let rows = self.client.query(
            "SELECT VERSION(), @@server_id, @@datadir, @@log_bin, IFNULL(@@log_bin_basename, '')",
        )?;
        let row = rows
            .first()
            .filter(|r| r.len() == 5)
            .ok_or_else(|| SourceError::Database {
                what: "mariadb".into(),
                detail: format!("unexpected answer to the server query: {rows:?}"),
            })?;
        let basename = std::path::Path::new(&row[4])
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty());
        Ok((
            MariaSnapshotMeta {
                mode: self.mode.to_string(),
                server: self.client.describe(),
                server_version: row[0].clone(),
                server_id: row[1].parse().unwrap_or_default(),
                datadir: Some(row[2].clone()),
                binlog_basename: basename,
                ..Default::default()
            },
            row[3] == "1",
        ))
    }

    fn physical(
        &self,
        sink: &mut dyn EntrySink,
        meta: &mut MariaSnapshotMeta,
    ) -> Result<(), SourceError> {
        let work = tempfile::Builder::new()
            .prefix("holdfast-mariadb-backup-")
            .tempdir()
            .map_err(|e| SourceError::io(&std::env::temp_dir(), e))?;
        let mut cmd = self.client.command("mariadb-backup")?;
        cmd.args([
            "--backup",
            "--stream=xbstream",
            "--parallel=1",
            &format!("--target-dir={}", work.path().display()),
            &format!("--tmpdir={}", work.path().display()),
        ]);
        if let Some(d) = &meta.datadir {
            cmd.arg(format!("--datadir={d}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = "mariadb-backup";
        let mut child = cmd.spawn().map_err(|e| spawn_error(what, &cmd, e))?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let log_in = log.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::debug!(target: "holdfast::mariadb_backup", "{line}");
                let mut l = log_in.lock().unwrap();
                l.push(line);
                // Keep the tail only: a long backup logs a line per file.
                if l.len() > 200 {
                    l.drain(..100);
                }
            }
        });
        let stdout = child.stdout.take().expect("piped");
        let _ = rustix::pipe::fcntl_setpipe_size(&stdout, 1 << 20);
        let spool = work.path().join("spool");
        std::fs::create_dir(&spool).map_err(|e| SourceError::io(&spool, e))?;
        let streamed = stream_files(
            BufReader::with_capacity(1 << 20, stdout),
            &spool,
            sink,
            meta,
        );
        if streamed.is_err() {
            // Nothing more is read: stop it rather than let it block on a
            // full pipe.
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| spawn_error(what, &cmd, e))?;
        let _ = stderr_thread.join();
        let tail = tail(&log.lock().unwrap());
        if !status.success() && streamed.is_ok() {
            return Err(SourceError::Database {
                what: what.into(),
                detail: format!("{status}: {tail}"),
            });
        }
        streamed.map_err(|e| match e {
            SourceError::Database { what, detail } if !status.success() => SourceError::Database {
                what,
                detail: format!("{detail}; mariadb-backup {status}: {tail}"),
            },
            other => other,
        })?;
        if meta.binlog_file.is_none() && self.archive {
            return Err(SourceError::Database {
                what: what.into(),
                detail: format!(
                    "the backup stream held no xtrabackup_binlog_info, so where binlog replay would start is unknown: {tail}"
                ),
            });
        }
        // The server's clock once the backup is over: every commit the
        // backup holds happened before it.
        let now = self.client.value("SELECT UTC_TIMESTAMP(6)")?;
        meta.consistent_at = chrono::NaiveDateTime::parse_from_str(&now, "%Y-%m-%d %H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc());
        Ok(())
    }

    fn dump(&self, db: &str, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        let mut cmd = self.client.command("mariadb-dump")?;
        cmd.args([
            "--single-transaction",
            "--routines",
            "--events",
            "--triggers",
            "--hex-blob",
            // The database as an argument, not `--databases`: the dump then
            // holds no `CREATE DATABASE`/`USE`, so `restore --dump` loads it
            // into whichever database it is given.
            "--",
            db,
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("mariadb-dump of database {db}");
        let mut child = cmd.spawn().map_err(|e| spawn_error(&what, &cmd, e))?;
        let stderr = child.stderr.take().expect("piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr)
                .take(64 * 1024)
                .read_to_string(&mut s);
            s
        });
        let mut stdout = child.stdout.take().expect("piped");
        let meta = EntryMeta {
            path: format!("{DUMPS_PREFIX}/{db}.sql"),
            mode: 0o600,
            mtime_ns: Some(now_ns()),
            stamp: None,
        };
        let streamed = sink.file(&meta, &mut stdout);
        drop(stdout);
        if streamed.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| spawn_error(&what, &cmd, e))?;
        let err = err_thread.join().unwrap_or_default();
        if !status.success() {
            return Err(SourceError::Database {
                what,
                detail: format!("{status}: {}", err.trim()),
            });
        }
        streamed?;
        Ok(())
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

fn tail(log: &[String]) -> String {
    log[log.len().saturating_sub(6)..].join("; ")
}

/// A stream path as a snapshot path under `mariadb/`, or why not.
fn member_path(path: &str) -> Result<String, SourceError> {
    let rel = path.trim_start_matches("./");
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return Err(SourceError::Database {
            what: "mariadb-backup".into(),
            detail: format!("the backup stream names a file {path:?}, which is not a relative path inside the data directory"),
        });
    }
    Ok(rel.to_string())
}

/// Hands each file of the stream to the sink under `mariadb/` (and each
/// folder before its first file), reading the backup's facts on the way.
fn stream_files(
    stdout: impl Read,
    spool: &std::path::Path,
    sink: &mut dyn EntrySink,
    meta: &mut MariaSnapshotMeta,
) -> Result<(), SourceError> {
    let xb_err = |e: std::io::Error| SourceError::Database {
        what: "mariadb-backup".into(),
        detail: format!("unreadable backup stream: {e}"),
    };
    let dir_meta = |path: String| EntryMeta {
        path,
        mode: 0o700,
        mtime_ns: Some(now_ns()),
        stamp: None,
    };
    sink.dir(&dir_meta(DATADIR_PREFIX.into()))?;
    let mut dirs = std::collections::HashSet::new();
    let mut files = std::collections::HashSet::new();
    let mut reader = XbReader::new(stdout, spool);
    let mut saw_checkpoints = false;
    while let Some((path, mut file)) = reader.next_file().map_err(xb_err)? {
        let rel = member_path(&path)?;
        if !files.insert(rel.clone()) {
            return Err(SourceError::Database {
                what: "mariadb-backup".into(),
                detail: format!("the backup stream holds {rel} twice"),
            });
        }
        let mut parent = String::new();
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if dirs.insert(parent.clone()) {
                sink.dir(&dir_meta(format!("{DATADIR_PREFIX}/{parent}")))?;
            }
        }
        let m = EntryMeta {
            path: format!("{DATADIR_PREFIX}/{rel}"),
            mode: 0o640,
            mtime_ns: Some(now_ns()),
            stamp: None,
        };
        match rel.as_str() {
            "xtrabackup_binlog_info"
            | "mariadb_backup_binlog_info"
            | "xtrabackup_checkpoints"
            | "mariadb_backup_checkpoints" => {
                let mut bytes = Vec::new();
                (&mut file)
                    .take(SMALL_FILE_CAP)
                    .read_to_end(&mut bytes)
                    .map_err(xb_err)?;
                let mut rest = Vec::new();
                file.read_to_end(&mut rest).map_err(xb_err)?;
                if !rest.is_empty() {
                    return Err(SourceError::Database {
                        what: "mariadb-backup".into(),
                        detail: format!("{rel} is over {SMALL_FILE_CAP} bytes"),
                    });
                }
                let text = String::from_utf8_lossy(&bytes);
                if rel.ends_with("binlog_info") {
                    meta.read_binlog_info(&text);
                } else {
                    meta.read_checkpoints(&text);
                    saw_checkpoints = true;
                }
                sink.file(&m, &mut bytes.as_slice())?;
            }
            _ => {
                sink.file(&m, &mut file)?;
                // The writer reads to the end; make sure of it, so the next
                // file starts at its own header.
                let mut rest = [0u8; 1];
                if file.read(&mut rest).map_err(xb_err)? != 0 {
                    return Err(SourceError::Database {
                        what: "mariadb-backup".into(),
                        detail: format!("{rel} was not read to its end"),
                    });
                }
            }
        }
    }
    tracing::debug!(
        spooled_bytes = reader.spooled_bytes(),
        "backup stream read (interleaved files and the redo log set aside locally)"
    );
    if !saw_checkpoints {
        return Err(SourceError::Database {
            what: "mariadb-backup".into(),
            detail: "the backup stream ended without xtrabackup_checkpoints (cut off?)".into(),
        });
    }
    Ok(())
}

impl Source for MariaSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Mariadb
    }

    fn estimate_bytes(&self) -> Option<u64> {
        let sql = match self.mode {
            DbMode::Physical => {
                "SELECT SUM(data_length + index_length) FROM information_schema.tables".to_string()
            }
            DbMode::Logical => format!(
                "SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema IN ({})",
                self.logical_dumps
                    .iter()
                    .map(|d| format!("'{}'", d.replace('\\', "\\\\").replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        self.client
            .value(&sql)
            .ok()?
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    }

    fn chunking(&self) -> Chunking {
        Chunking::Fixed {
            size: MARIADB_CHUNK,
        }
    }

    fn snapshot(&mut self, sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError> {
        let (mut meta, log_bin) = self.server_facts()?;
        if self.mode == DbMode::Physical {
            if self.archive && !log_bin {
                return Err(SourceError::Database {
                    what: "physical backup".into(),
                    detail: format!(
                        "binary logging is off on {}, so no binlog would carry this backup forward to a point in time; set log_bin (and server_id) in the server's configuration (restart needed), or say `archive: false` in the plan",
                        self.client.describe()
                    ),
                });
            }
            if let Some(d) = &meta.datadir {
                if std::fs::read_dir(d).is_err() {
                    return Err(SourceError::Database {
                        what: "physical backup".into(),
                        detail: format!(
                            "the server's data directory {d} cannot be read here: mariadb-backup runs on the database host, as a user that can read the data directory (root or mysql)"
                        ),
                    });
                }
            }
            self.physical(sink, &mut meta)?;
        }
        for db in &self.logical_dumps {
            self.dump(db, sink)?;
        }
        meta.logical_dumps = self.logical_dumps.clone();
        Ok(meta.to_metadata())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths_stay_inside_the_data_directory() {
        assert_eq!(member_path("./app/t.ibd").unwrap(), "app/t.ibd");
        assert_eq!(member_path("ibdata1").unwrap(), "ibdata1");
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b"] {
            assert!(member_path(bad).is_err(), "{bad}");
        }
    }
}
