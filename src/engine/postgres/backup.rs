//! The `postgres` source: an online physical base backup of a whole cluster,
//! and/or logical dumps of chosen databases.
//!
//! On the database host the base backup reads the data directory itself
//! (`datadir`, `PostgresSource::local_backup`). Elsewhere, and with
//! `base_backup: stream`, it is `pg_basebackup -D - -F tar -X none`: the server streams
//! its data directory as one tar archive on stdout, and we hand each member to
//! the sink as it arrives (no local copy; one member's header in memory). The
//! WAL the backup needs is not in the tar: with `-X none` the server does not
//! end the backup until that WAL has been archived, which is `holdfast
//! wal-push` writing it into the same repository. So when `pg_basebackup`
//! returns, the backup is restorable from the repository alone.
//!
//! That wait is also the one way a base backup hangs: if `archive_command`
//! fails, or cannot even be run (exit 127, which PostgreSQL counts nowhere),
//! the server waits forever. A watchdog (`archiver::watch`) judges the
//! archiver's progress meanwhile and ends the backup, naming the segment it
//! waits for, once nothing has been archived for [`ARCHIVE_STALL`].
//!
//! Logical dumps are `pg_dump -Fc -Z0` (uncompressed, so the repository can
//! deduplicate and compress them) streamed the same way.
//!
//! Layout in the snapshot: the data directory under `pgdata/`, dumps as
//! `dumps/<database>.pgdump`. Passwords reach the client programs through
//! `PGPASSWORD` in their environment only: never an argument, a manifest or
//! a log line.

use std::io::{self, BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::archiver;
use super::client::{spawn_error, PgClient};
use super::meta::PgSnapshotMeta;
use super::wal::{Lsn, Segment};
use crate::engine::SourceKind;
use crate::plan::{BaseBackupMethod, DbConnection, DbMode, PgSslMode};
use crate::repository::source::{
    Chunking, EntryMeta, EntrySink, Source, SourceError, SourceMetadata,
};

/// How long a base backup waits for its stop segment to be archived, with
/// nothing archived meanwhile, before it is abandoned
/// (`HOLDFAST_ARCHIVE_STALL_SECONDS` overrides it).
pub const ARCHIVE_STALL: Duration = Duration::from_secs(60);

/// PostgreSQL pages are 8 KiB: chunking on page boundaries stores a changed
/// page, not the file around it, in the next backup (block-level incremental).
pub const PG_CHUNK: u32 = 8192;

/// Where a cluster's files go in a snapshot.
pub const PGDATA_PREFIX: &str = "pgdata";
/// Where logical dumps go in a snapshot.
pub const DUMPS_PREFIX: &str = "dumps";
pub struct PostgresSource {
    client: PgClient,
    mode: DbMode,
    /// The plan archives WAL: the server must too, or the base backup would
    /// not be restorable.
    archive: bool,
    logical_dumps: Vec<String>,
    method: BaseBackupMethod,
    stall: Duration,
    /// What the plan's previous snapshot recorded, if it was of PostgreSQL.
    previous: Option<PgSnapshotMeta>,
}

/// How long a held backup session waits for one answer: `pg_backup_start`
/// runs a checkpoint first, which on a large, busy server can take minutes.
/// (`pg_backup_stop(false)` returns at once; the wait for the WAL after it
/// is judged by progress, see `archiver::wait_archived`.)
const SESSION_DEADLINE: Duration = Duration::from_secs(3600);

/// The server's clock as RFC 3339 UTC.
const NOW_SQL: &str =
    "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

impl PostgresSource {
    pub fn new(
        conn: DbConnection,
        sslmode: PgSslMode,
        mode: DbMode,
        archive: bool,
        logical_dumps: Vec<String>,
        method: BaseBackupMethod,
    ) -> Self {
        PostgresSource {
            client: PgClient::new(conn, sslmode),
            mode,
            archive,
            logical_dumps,
            method,
            stall: std::env::var("HOLDFAST_ARCHIVE_STALL_SECONDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(ARCHIVE_STALL),
            previous: None,
        }
    }

    /// The previous snapshot's start LSN, when its pages may stand for this
    /// backup's unchanged ones (see `source::Pages` and
    /// docs/repository-format.md, *Pages unchanged by LSN*): a completed
    /// base backup of the same cluster (system identifier), of a primary,
    /// on the timeline this backup starts on (`timeline`, from the
    /// checkpoint `pg_backup_start` just made), starting before `start`.
    /// After a failover or `pg_rewind` the timeline differs, and pages
    /// of the other timeline may carry lower LSNs: everything is read.
    fn unchanged_below(&self, meta: &PgSnapshotMeta, timeline: u32, start: Lsn) -> Option<u64> {
        let prev = self.previous.as_ref()?;
        let prev_start: Lsn = prev.start_lsn.as_deref()?.parse().ok()?;
        let comparable = prev.system_identifier == meta.system_identifier
            && !prev.system_identifier.is_empty()
            && !prev.in_recovery
            && prev.mode == DbMode::Physical.to_string()
            && prev.stop_lsn.is_some()
            && prev.timeline == Some(timeline)
            && prev_start.0 > 0
            && prev_start.0 < start.0;
        comparable.then_some(prev_start.0)
    }

    fn server_facts(&self) -> Result<PgSnapshotMeta, SourceError> {
        let rows = self.client.query(
            "SELECT current_setting('server_version_num'), current_setting('server_version'), \
             (SELECT system_identifier FROM pg_control_system()), current_setting('archive_mode'), \
             pg_is_in_recovery(), \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')",
        )?;
        let row = rows
            .first()
            .filter(|r| r.len() == 6)
            .ok_or_else(|| SourceError::Database {
                what: "psql".into(),
                detail: format!("unexpected answer to the server query: {rows:?}"),
            })?;
        // Where the cluster lives, if this role may see it (not secret, but
        // superuser-only without pg_read_all_settings).
        let place = self
            .client
            .query("SELECT current_setting('data_directory'), current_setting('port')")
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .filter(|r| r.len() == 2);
        Ok(PgSnapshotMeta {
            data_directory: place.as_ref().map(|r| r[0].clone()),
            port: place.as_ref().and_then(|r| r[1].parse().ok()),
            server_version_num: row[0].parse::<u64>().unwrap_or_default(),
            server_version: row[1].clone(),
            system_identifier: row[2].clone(),
            archive_mode: row[3].clone(),
            in_recovery: row[4] == "t",
            wal_segment_size: row[5].parse::<u64>().unwrap_or(16 * 1024 * 1024),
            ..Default::default()
        })
    }

    fn base_backup(
        &self,
        sink: &mut dyn EntrySink,
        meta: &mut PgSnapshotMeta,
    ) -> Result<(), SourceError> {
        let mut cmd = self.client.command("pg_basebackup", None)?;
        // Its own name, so the watchdog finds this backup's session.
        let app = archiver::backup_application_name();
        cmd.env("PGAPPNAME", &app);
        cmd.args([
            "-D", "-", "-F", "tar", "-X", "none", "-c", "fast", "-v", "-l", "holdfast",
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| spawn_error("pg_basebackup", &cmd, e))?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let log_in = log.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::debug!(target: "holdfast::pg_basebackup", "{line}");
                log_in.lock().unwrap().push(line);
            }
        });
        let child = Arc::new(Mutex::new(child));
        let done = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(Mutex::new(None::<String>));
        let watchdog = {
            let (client, child, done, stalled, stall) = (
                self.client.clone(),
                child.clone(),
                done.clone(),
                stalled.clone(),
                self.stall,
            );
            std::thread::spawn(move || {
                if let Some(why) = archiver::watch(&client, &app, &done, stall) {
                    *stalled.lock().unwrap() = Some(why);
                    let _ = child.lock().unwrap().kill();
                }
            })
        };
        let stdout = child.lock().unwrap().stdout.take().expect("piped");
        // A bigger pipe and a big read buffer: the tar members are read in
        // 8 KiB chunks, which would otherwise be a syscall and often a
        // context switch each.
        let _ = rustix::pipe::fcntl_setpipe_size(&stdout, 1 << 20);
        let streamed = stream_tar(BufReader::with_capacity(1 << 20, stdout), sink, meta);
        let status = loop {
            // Not `wait()` under the lock: the watchdog must be able to kill it.
            if let Some(s) = child.lock().unwrap().try_wait().ok().flatten() {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        done.store(true, Ordering::SeqCst);
        let _ = watchdog.join();
        let _ = stderr_thread.join();
        let log = log.lock().unwrap().clone();
        if let Some(why) = stalled.lock().unwrap().take() {
            return Err(SourceError::Database {
                what: "pg_basebackup".into(),
                detail: why,
            });
        }
        if !status.success() {
            return Err(SourceError::Database {
                what: "pg_basebackup".into(),
                detail: format!("{status}: {}", tail(&log)),
            });
        }
        streamed?;
        if meta.stop_lsn.is_none() {
            return Err(SourceError::Database {
                what: "pg_basebackup".into(),
                detail: format!(
                    "its backup_manifest did not give the backup's end point (WAL-Ranges): {}",
                    tail(&log)
                ),
            });
        }
        note_consistent_at(meta, self.client.query(NOW_SQL)?);
        Ok(())
    }

    /// The data directory, if the backup can read it here: it is this
    /// server's (`datadir::locate`) and this role may start and stop a
    /// backup (a superuser, or granted EXECUTE on the functions;
    /// `pg_basebackup` needs only REPLICATION).
    fn local_root(&self, meta: &PgSnapshotMeta) -> Result<std::path::PathBuf, String> {
        let root = super::datadir::locate(meta)?;
        let (start, stop) = if meta.server_version_num >= 150_000 {
            ("pg_backup_start(text, boolean)", "pg_backup_stop(boolean)")
        } else {
            (
                "pg_start_backup(text, boolean, boolean)",
                "pg_stop_backup(boolean, boolean)",
            )
        };
        let may = self
            .client
            .query(&format!(
                "SELECT has_function_privilege('{start}', 'EXECUTE') AND has_function_privilege('{stop}', 'EXECUTE')"
            ))
            .map_err(|e| e.to_string())?;
        if may.first().and_then(|r| r.first()).map(String::as_str) != Some("t") {
            return Err(format!(
                "{} may not run {start} and {stop} (a superuser may, or GRANT EXECUTE ON FUNCTION them to the role)",
                self.client.describe()
            ));
        }
        Ok(root)
    }

    /// The base backup read from the data directory at `root` (see
    /// `datadir`): started and stopped on one held session, so that the
    /// server aborts it if this process dies in between.
    fn local_backup(
        &self,
        root: &std::path::Path,
        sink: &mut dyn EntrySink,
        meta: &mut PgSnapshotMeta,
    ) -> Result<(), SourceError> {
        let app = archiver::backup_application_name();
        let mut session = self.client.session(&app)?;
        let modern = meta.server_version_num >= 150_000;
        let started = session.ask(
            if modern {
                "SELECT pg_backup_start('holdfast', true)"
            } else {
                "SELECT pg_start_backup('holdfast', true, false)"
            },
            SESSION_DEADLINE,
        )?;
        // The timeline of the checkpoint the start just made: the one the
        // backup starts on (checked against `backup_label` at the stop).
        let checkpoint = session.ask(
            "SELECT timeline_id FROM pg_control_checkpoint()",
            SESSION_DEADLINE,
        )?;
        let start: Option<Lsn> = started
            .first()
            .and_then(|r| r.first())
            .and_then(|l| l.parse().ok());
        let timeline: Option<u32> = checkpoint
            .first()
            .and_then(|r| r.first())
            .and_then(|t| t.parse().ok());
        let unchanged_below = match (start, timeline) {
            (Some(start), Some(timeline)) => self.unchanged_below(meta, timeline, start),
            _ => None,
        };
        let walked = super::datadir::walk(root, sink, unchanged_below)?;
        tracing::debug!(
            files = walked.files,
            stamped = walked.stamped,
            paged = walked.paged,
            unchanged_below = ?unchanged_below.map(|l| Lsn(l).to_string()),
            "data directory read"
        );
        // Stopped without the server's own wait for the WAL, which looks
        // only once a second: the wait below looks sooner, and ends the
        // backup, saying why, if archiving stalls.
        let rows = session.ask(
            &format!(
                "SELECT lsn, encode(convert_to(labelfile, 'UTF8'), 'hex'), \
                 encode(convert_to(coalesce(spcmapfile, ''), 'UTF8'), 'hex') FROM {}",
                if modern {
                    "pg_backup_stop(false)"
                } else {
                    "pg_stop_backup(false, false)"
                }
            ),
            SESSION_DEADLINE,
        )?;
        let bad = |why: &str| SourceError::Database {
            what: "pg_backup_stop".into(),
            detail: format!("{why}: {rows:?}"),
        };
        let row = rows
            .first()
            .filter(|r| r.len() == 3)
            .ok_or_else(|| bad("unexpected answer"))?;
        let decode = |hex_text: &str| {
            hex::decode(hex_text)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        };
        let label = decode(&row[1]).ok_or_else(|| bad("backup_label is not hex-encoded UTF-8"))?;
        let spcmap =
            decode(&row[2]).ok_or_else(|| bad("tablespace_map is not hex-encoded UTF-8"))?;
        parse_backup_label(&label, meta);
        if meta.start_lsn.is_none() || meta.timeline.is_none() {
            return Err(bad(
                "backup_label lacks START WAL LOCATION or START TIMELINE",
            ));
        }
        if unchanged_below.is_some() && meta.timeline != timeline {
            // Pages were compared by LSN on the timeline read at the start.
            return Err(bad(&format!(
                "the backup started on timeline {} by its checkpoint, but backup_label says {}; run the backup again",
                timeline.unwrap_or_default(),
                meta.timeline.unwrap_or_default()
            )));
        }
        let stop: Lsn = row[0]
            .parse()
            .map_err(|_| bad("the stop LSN is not an LSN"))?;
        meta.stop_lsn = Some(row[0].clone());
        // A primary does not change timeline during a backup.
        meta.stop_timeline = meta.timeline.map(u64::from);
        // The segment holding the backup's last WAL record (the stop LSN is
        // the byte after it), as the server's own wait computes it.
        let last = Segment::of(
            meta.timeline.unwrap_or(1),
            Lsn(stop.0.saturating_sub(1)),
            meta.segment_size(),
        )
        .name(meta.segment_size());
        if self.archive {
            archiver::wait_archived(&mut session, &last, self.stall)?;
            // And the backup history file the stop wrote, as the server's
            // own wait does (`<start segment>.<offset>.backup`; after the
            // stop segment when both are one segment).
            let start: Lsn = meta
                .start_lsn
                .as_deref()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| bad("backup_label's START WAL LOCATION is not an LSN"))?;
            let size = meta.segment_size();
            let history = format!(
                "{}.{:08X}.backup",
                Segment::of(meta.timeline.unwrap_or(1), start, size).name(size),
                start.0 % size
            );
            archiver::wait_archived(&mut session, &history, self.stall)?;
        }
        note_consistent_at(meta, session.ask(NOW_SQL, SESSION_DEADLINE)?);
        session.close(Duration::from_secs(10));
        let file = |name: &str| EntryMeta {
            path: format!("{PGDATA_PREFIX}/{name}"),
            mode: 0o600,
            mtime_ns: Some(now_ns()),
            stamp: None,
        };
        sink.file(&file("backup_label"), &mut label.as_bytes())?;
        if !spcmap.is_empty() {
            sink.file(&file("tablespace_map"), &mut spcmap.as_bytes())?;
        }
        Ok(())
    }

    fn dump(&self, db: &str, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        let mut cmd = self.client.command("pg_dump", Some(db))?;
        cmd.args(["-Fc", "-Z", "0"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("pg_dump of database {db}");
        let mut child = cmd.spawn().map_err(|e| spawn_error(&what, &cmd, e))?;
        let stderr = child.stderr.take().expect("piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        let mut stdout = child.stdout.take().expect("piped");
        let meta = EntryMeta {
            path: format!("{DUMPS_PREFIX}/{db}.pgdump"),
            mode: 0o600,
            mtime_ns: Some(now_ns()),
            stamp: None,
        };
        let streamed = sink.file(&meta, &mut stdout);
        drop(stdout);
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

/// The server's clock when the backup was over ([`NOW_SQL`]'s answer): every
/// commit the backup needs replayed to be consistent happened before it, so
/// a point-in-time restore can target any time from here on.
fn note_consistent_at(meta: &mut PgSnapshotMeta, now: Vec<Vec<String>>) {
    if let Some(t) = now.first().and_then(|r| r.first()) {
        meta.consistent_at = Some(t.clone());
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

fn tail(log: &[String]) -> String {
    let start = log.len().saturating_sub(6);
    log[start..].join("; ")
}

/// Hands each tar member to the sink under `pgdata/`, and reads the backup
/// facts out of `backup_label` on the way.
fn stream_tar(
    stdout: impl Read,
    sink: &mut dyn EntrySink,
    meta: &mut PgSnapshotMeta,
) -> Result<(), SourceError> {
    let tar_err = |e: io::Error| SourceError::Database {
        what: "pg_basebackup".into(),
        detail: format!("unreadable tar stream: {e}"),
    };
    let mut archive = tar::Archive::new(stdout);
    let mut saw_label = false;
    sink.dir(&EntryMeta {
        path: PGDATA_PREFIX.into(),
        mode: 0o700,
        mtime_ns: Some(now_ns()),
        stamp: None,
    })?;
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let header = entry.header();
        let raw_path = entry.path().map_err(tar_err)?;
        let Some(rel) = raw_path
            .to_str()
            .map(|p| p.trim_start_matches("./").trim_end_matches('/').to_string())
        else {
            return Err(SourceError::NonUtf8Path {
                path: raw_path.into_owned(),
            });
        };
        if rel.is_empty() || rel == "." {
            continue;
        }
        let m = EntryMeta {
            path: format!("{PGDATA_PREFIX}/{rel}"),
            mode: header.mode().unwrap_or(0o600) & 0o7777,
            mtime_ns: header.mtime().ok().map(|s| s as i64 * 1_000_000_000),
            stamp: None,
        };
        match header.entry_type() {
            tar::EntryType::Directory => sink.dir(&m)?,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(tar_err)?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                sink.symlink(&m, &target)?
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if rel == "backup_label" {
                    let mut label = Vec::new();
                    entry.read_to_end(&mut label).map_err(tar_err)?;
                    parse_backup_label(&String::from_utf8_lossy(&label), meta);
                    saw_label = true;
                    sink.file(&m, &mut label.as_slice())?;
                } else if rel == "backup_manifest" {
                    // The server's own list of the backup (for pg_verifybackup),
                    // sent last, after the backup stopped: it holds the end LSN.
                    let mut manifest = Vec::new();
                    entry.read_to_end(&mut manifest).map_err(tar_err)?;
                    parse_backup_manifest(&manifest, meta);
                    sink.file(&m, &mut manifest.as_slice())?;
                } else {
                    sink.file(&m, &mut entry)?;
                }
            }
            other => {
                return Err(SourceError::Database {
                    what: "pg_basebackup".into(),
                    detail: format!("unexpected tar member {rel} of type {other:?}"),
                })
            }
        }
    }
    if !saw_label {
        return Err(SourceError::Database {
            what: "pg_basebackup".into(),
            detail: "the tar stream ended without a backup_label (cut off?)".into(),
        });
    }
    // pg_basebackup pads the archive after its end marker and may still be
    // writing that padding: read to the end of the stream, or closing the
    // pipe early kills it with SIGPIPE and fails a complete backup (seen in
    // CI: "pg_basebackup: signal: 13 (SIGPIPE)").
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(tar_err)?;
    Ok(())
}

/// `"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]`:
/// the last range's end is where the backup becomes consistent.
fn parse_backup_manifest(bytes: &[u8], meta: &mut PgSnapshotMeta) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    if let Some(last) = v["WAL-Ranges"].as_array().and_then(|r| r.last()) {
        if let Some(end) = last["End-LSN"].as_str() {
            meta.stop_lsn = Some(end.to_string());
        }
        if let Some(tli) = last["Timeline"].as_u64() {
            meta.stop_timeline = Some(tli);
        }
    }
}

/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)`, `START
/// TIMELINE: 1`, `START TIME: …`, `LABEL: …`.
fn parse_backup_label(text: &str, meta: &mut PgSnapshotMeta) {
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        match key {
            "START WAL LOCATION" => {
                let mut parts = value.split_whitespace();
                if let Some(lsn) = parts.next() {
                    meta.start_lsn = Some(lsn.to_string());
                }
                if let (Some("(file"), Some(file)) = (parts.next(), parts.next()) {
                    meta.start_wal_file = Some(file.trim_end_matches(')').to_string());
                }
            }
            "START TIMELINE" => {
                if let Ok(t) = value.trim().parse::<u32>() {
                    meta.timeline = Some(t);
                }
            }
            "START TIME" => {
                meta.start_time = Some(value.trim().to_string());
            }
            _ => {}
        }
    }
}

impl Source for PostgresSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Postgres
    }

    fn estimate_bytes(&self) -> Option<u64> {
        let sql = match self.mode {
            DbMode::Physical => "SELECT sum(pg_database_size(oid)) FROM pg_database".to_string(),
            DbMode::Logical => format!(
                "SELECT sum(pg_database_size(datname)) FROM pg_database WHERE datname = ANY(ARRAY[{}])",
                self.logical_dumps
                    .iter()
                    .map(|d| format!("'{}'", d.replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        self.client.query(&sql).ok()?.first()?.first()?.parse().ok()
    }

    fn chunking(&self) -> Chunking {
        Chunking::Fixed { size: PG_CHUNK }
    }

    fn previous(&mut self, record: &crate::repository::manifest::SourceRecord) {
        self.previous = (record.kind == SourceKind::Postgres.as_str())
            .then(|| {
                serde_json::from_value(serde_json::Value::Object(record.metadata.clone())).ok()
            })
            .flatten();
    }

    fn snapshot(&mut self, sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError> {
        let mut meta = self.server_facts()?;
        meta.mode = self.mode.to_string();
        meta.server = self.client.describe();
        if self.mode == DbMode::Physical {
            if meta.in_recovery {
                return Err(SourceError::Database {
                    what: "base backup".into(),
                    detail: format!(
                        "{} is a standby; back up the primary (backups from standbys are not supported yet)",
                        self.client.describe()
                    ),
                });
            }
            if self.archive && !matches!(meta.archive_mode.as_str(), "on" | "always") {
                return Err(SourceError::Database {
                    what: "base backup".into(),
                    detail: format!(
                        "archive_mode is {:?} on {}, so the WAL this backup needs would never reach the repository; set archive_mode = on and archive_command = 'holdfast wal-push --plan PLAN_FILE %p' (restart needed), or say `archive: false` in the plan",
                        meta.archive_mode,
                        self.client.describe()
                    ),
                });
            }
            let local = match self.method {
                BaseBackupMethod::Stream => None,
                BaseBackupMethod::Auto => match self.local_root(&meta) {
                    Ok(root) => Some(root),
                    Err(why) => {
                        tracing::info!("streaming the base backup with pg_basebackup: {why}");
                        None
                    }
                },
                BaseBackupMethod::Local => {
                    Some(
                        self.local_root(&meta)
                            .map_err(|why| SourceError::Database {
                                what: "base backup (base_backup: local)".into(),
                                detail: format!("cannot read the data directory here: {why}"),
                            })?,
                    )
                }
            };
            match local {
                Some(root) => {
                    meta.base_backup = Some("local".into());
                    self.local_backup(&root, sink, &mut meta)?
                }
                None => {
                    meta.base_backup = Some("stream".into());
                    self.base_backup(sink, &mut meta)?
                }
            }
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
    fn the_backup_label_gives_start_lsn_segment_and_timeline() {
        let mut m = PgSnapshotMeta::default();
        parse_backup_label(
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-26 09:00:00 UTC\nLABEL: holdfast\nSTART TIMELINE: 1\n",
            &mut m,
        );
        assert_eq!(m.start_lsn.as_deref(), Some("0/2000028"));
        assert_eq!(
            m.start_wal_file.as_deref(),
            Some("000000010000000000000002")
        );
        assert_eq!(m.timeline, Some(1));
        let meta = m.to_metadata();
        assert_eq!(meta["start_lsn"], serde_json::json!("0/2000028"));
        assert_eq!(meta["timeline"], serde_json::json!(1));
    }
}
