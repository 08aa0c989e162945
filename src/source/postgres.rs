//! The `postgres` source: an online physical base backup of a whole cluster,
//! and/or logical dumps of chosen databases.
//!
//! The base backup is `pg_basebackup -D - -F tar -X none`: the server streams
//! its data directory as one tar archive on stdout, and we hand each member to
//! the sink as it arrives (no local copy; one member's header in memory). The
//! WAL the backup needs is not in the tar: with `-X none` the server does not
//! end the backup until that WAL has been archived, which is `holdfast
//! wal-push` writing it into the same repository. So when `pg_basebackup`
//! returns, the backup is restorable from the repository alone.
//!
//! That wait is also the one way a base backup hangs: if `archive_command`
//! fails, the server waits forever. A watchdog polls `pg_stat_archiver`
//! meanwhile and ends the backup with the failing segment named once the
//! archiver has failed without progress for [`ARCHIVE_STALL`].
//!
//! Logical dumps are `pg_dump -Fc -Z0` (uncompressed, so the repository can
//! deduplicate and compress them) streamed the same way.
//!
//! Layout in the snapshot: the data directory under `pgdata/`, dumps as
//! `dumps/<database>.pgdump`. Passwords reach the client programs through
//! `PGPASSWORD` in their environment only: never an argument, a manifest or
//! a log line.

use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Chunking, EntryMeta, EntrySink, Source, SourceError, SourceMetadata};
use crate::plan::{DbConnection, DbMode, Password, PgSslMode};

/// How long the archiver may keep failing, with no segment archived, while a
/// base backup waits for its WAL before the backup is abandoned
/// (`HOLDFAST_ARCHIVE_STALL_SECONDS` overrides it).
pub const ARCHIVE_STALL: Duration = Duration::from_secs(60);

/// PostgreSQL pages are 8 KiB: chunking on page boundaries stores a changed
/// page, not the file around it, in the next backup (block-level incremental).
pub const PG_CHUNK: u32 = 8192;

/// Where a cluster's files go in a snapshot.
pub const PGDATA_PREFIX: &str = "pgdata";
/// Where logical dumps go in a snapshot.
pub const DUMPS_PREFIX: &str = "dumps";

/// How to run PostgreSQL's client programs against one server.
#[derive(Debug, Clone)]
pub struct PgClient {
    conn: DbConnection,
    sslmode: PgSslMode,
    /// The folder holding `pg_basebackup`, `psql`, … (`HOLDFAST_PG_BIN`), or
    /// `None` for `$PATH`.
    bin_dir: Option<PathBuf>,
}

impl PgClient {
    pub fn new(conn: DbConnection, sslmode: PgSslMode) -> Self {
        PgClient {
            conn,
            sslmode,
            bin_dir: pg_bin_dir(),
        }
    }

    /// A client command with the connection in its environment (never in its
    /// arguments, where `ps` would show a password).
    pub fn command(&self, program: &str, database: Option<&str>) -> Result<Command, SourceError> {
        let mut cmd = Command::new(pg_program(self.bin_dir.as_deref(), program));
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGSERVICE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGAPPNAME", "holdfast");
        let c = &self.conn;
        if let Some(dsn) = &c.dsn {
            // As libpq environment variables, never as an argument: the URL
            // may carry a password.
            let mut vars = url_env(dsn.expose())?;
            if let Some(db) = database {
                vars.retain(|(k, _)| *k != "PGDATABASE");
                vars.push(("PGDATABASE", db.to_string()));
            }
            if !vars.iter().any(|(k, _)| *k == "PGSSLMODE") {
                cmd.env("PGSSLMODE", sslmode_str(self.sslmode));
            }
            for (var, value) in vars {
                cmd.env(var, value);
            }
        } else {
            cmd.env("PGSSLMODE", sslmode_str(self.sslmode));
            if let Some(h) = &c.host {
                cmd.env("PGHOST", h);
            }
            cmd.env("PGPORT", c.port.to_string());
            if let Some(u) = &c.user {
                cmd.env("PGUSER", u);
            }
            if let Some(db) = database.or(c.database.as_deref()) {
                cmd.env("PGDATABASE", db);
            }
        }
        cmd.env("PGCONNECT_TIMEOUT", "10");
        match &c.password {
            Some(Password::Value(s)) => {
                cmd.env("PGPASSWORD", s.expose());
            }
            Some(Password::File(p)) => {
                let text = std::fs::read_to_string(p).map_err(|e| SourceError::io(p, e))?;
                cmd.env("PGPASSWORD", text.trim_end_matches(['\n', '\r']));
            }
            None => {}
        }
        Ok(cmd)
    }

    /// Runs one query with `psql` and returns its unaligned rows, fields
    /// split on `|`.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, SourceError> {
        self.query_in(None, sql)
    }

    /// [`PgClient::query`] in `database` instead of the connection's own.
    pub fn query_in(
        &self,
        database: Option<&str>,
        sql: &str,
    ) -> Result<Vec<Vec<String>>, SourceError> {
        let mut cmd = self.command("psql", database)?;
        cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-F", "|", "-c", sql]);
        let out = run(cmd, "psql")?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect())
    }

    pub fn describe(&self) -> String {
        self.conn.to_string()
    }
}

fn sslmode_str(m: PgSslMode) -> &'static str {
    match m {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// `HOLDFAST_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` (Debian's
/// layout, where the client programs on `$PATH` are wrappers), else `$PATH`.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HOLDFAST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// The programs of PostgreSQL `major` (Debian's `/usr/lib/postgresql/<major>/bin`),
/// which read that version's WAL and data directories; else [`pg_bin_dir`].
pub fn pg_bin_for(major: u64) -> Option<PathBuf> {
    let versioned = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if versioned.join("pg_ctl").exists() {
        Some(versioned)
    } else {
        pg_bin_dir()
    }
}

pub fn pg_program(bin_dir: Option<&std::path::Path>, program: &str) -> PathBuf {
    match bin_dir {
        Some(d) => d.join(program),
        None => PathBuf::from(program),
    }
}

/// Runs a client program to its end, returning stdout, or its stderr as the error.
fn run(mut cmd: Command, what: &str) -> Result<Vec<u8>, SourceError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(what, &cmd, e))?;
    if !out.status.success() {
        return Err(SourceError::Database {
            what: what.to_string(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

fn spawn_error(what: &str, cmd: &Command, e: io::Error) -> SourceError {
    SourceError::Database {
        what: what.to_string(),
        detail: format!(
            "cannot run {}: {e} (install PostgreSQL's client programs, or set HOLDFAST_PG_BIN to their folder)",
            cmd.get_program().to_string_lossy()
        ),
    }
}

/// A `postgres://user:password@host:port/dbname?param=value` URL as libpq
/// environment variables.
pub fn url_env(url: &str) -> Result<Vec<(&'static str, String)>, SourceError> {
    let bad = |why: &str| SourceError::Database {
        what: "connection URL".into(),
        detail: format!("{why} (write postgres://user:password@host:port/dbname?sslmode=…)"),
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("it does not start with postgres://"))?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, db) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut env = Vec::new();
    if let Some(u) = userinfo {
        let (user, password) = match u.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (u, None),
        };
        if !user.is_empty() {
            env.push(("PGUSER", percent_decode(user)));
        }
        if let Some(p) = password {
            env.push(("PGPASSWORD", percent_decode(p)));
        }
    }
    if hostport.contains(',') {
        return Err(bad("several hosts in one URL are not supported"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in the host"))?;
        (h.to_string(), after.strip_prefix(':').map(str::to_string))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (hostport.to_string(), None),
        }
    };
    if !host.is_empty() {
        env.push(("PGHOST", percent_decode(&host)));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        if p.parse::<u16>().is_err() {
            return Err(bad(&format!("port `{p}` is not a number")));
        }
        env.push(("PGPORT", p));
    }
    if !db.is_empty() {
        env.push(("PGDATABASE", percent_decode(db)));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let var = match k {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            "application_name" => "PGAPPNAME",
            "connect_timeout" => "PGCONNECT_TIMEOUT",
            "options" => "PGOPTIONS",
            "target_session_attrs" => "PGTARGETSESSIONATTRS",
            "host" => "PGHOST",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "dbname" => "PGDATABASE",
            other => {
                return Err(bad(&format!(
                    "parameter `{other}` is not supported; use sslmode, sslrootcert, sslcert, sslkey, application_name, connect_timeout, options, target_session_attrs, host, port, user or dbname"
                )))
            }
        };
        env.push((var, percent_decode(v)));
    }
    Ok(env)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub struct PostgresSource {
    client: PgClient,
    mode: DbMode,
    /// The plan archives WAL: the server must too, or the base backup would
    /// not be restorable.
    archive: bool,
    logical_dumps: Vec<String>,
    stall: Duration,
}

impl PostgresSource {
    pub fn new(
        conn: DbConnection,
        sslmode: PgSslMode,
        mode: DbMode,
        archive: bool,
        logical_dumps: Vec<String>,
    ) -> Self {
        PostgresSource {
            client: PgClient::new(conn, sslmode),
            mode,
            archive,
            logical_dumps,
            stall: std::env::var("HOLDFAST_ARCHIVE_STALL_SECONDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(ARCHIVE_STALL),
        }
    }

    fn server_facts(&self) -> Result<SourceMetadata, SourceError> {
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
        let mut m = SourceMetadata::new();
        m.insert(
            "server_version_num".into(),
            json!(row[0].parse::<u64>().unwrap_or_default()),
        );
        m.insert("server_version".into(), json!(row[1]));
        m.insert("system_identifier".into(), json!(row[2]));
        m.insert("archive_mode".into(), json!(row[3]));
        m.insert("in_recovery".into(), json!(row[4] == "t"));
        m.insert(
            "wal_segment_size".into(),
            json!(row[5].parse::<u64>().unwrap_or(16 * 1024 * 1024)),
        );
        Ok(m)
    }

    fn base_backup(
        &self,
        sink: &mut dyn EntrySink,
        meta: &mut SourceMetadata,
    ) -> Result<(), SourceError> {
        let mut cmd = self.client.command("pg_basebackup", None)?;
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
            std::thread::spawn(move || archive_watchdog(&client, &child, &done, &stalled, stall))
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
        if !meta.contains_key("stop_lsn") {
            return Err(SourceError::Database {
                what: "pg_basebackup".into(),
                detail: format!(
                    "its backup_manifest did not give the backup's end point (WAL-Ranges): {}",
                    tail(&log)
                ),
            });
        }
        // The server's clock when the backup was over: every commit the
        // backup needs replayed to be consistent happened before it, so a
        // point-in-time restore can target any time from here on.
        let now = self.client.query(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )?;
        if let Some(t) = now.first().and_then(|r| r.first()) {
            meta.insert("consistent_at".into(), json!(t));
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

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

fn tail(log: &[String]) -> String {
    let start = log.len().saturating_sub(6);
    log[start..].join("; ")
}

/// Ends a base backup that waits on an archiver that keeps failing.
fn archive_watchdog(
    client: &PgClient,
    child: &Mutex<Child>,
    done: &AtomicBool,
    stalled: &Mutex<Option<String>>,
    stall: Duration,
) {
    // One psql per poll, beside the backup: every 2 s is plenty against a
    // 60 s stall.
    let poll = (stall / 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
    let mut failing_since: Option<(Instant, String)> = None;
    let mut last_warn = Instant::now();
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(poll);
        if done.load(Ordering::SeqCst) {
            return;
        }
        // failing: the last attempt failed, after the last success.
        let rows = client.query(
            "SELECT coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, ''), \
             coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
             FROM pg_stat_archiver",
        );
        let Ok(rows) = rows else { continue };
        let Some(row) = rows.first().filter(|r| r.len() == 3) else {
            continue;
        };
        if row[2] != "t" {
            failing_since = None;
            continue;
        }
        let (since, _) = failing_since.get_or_insert_with(|| (Instant::now(), row[0].clone()));
        if last_warn.elapsed() > Duration::from_secs(10) {
            last_warn = Instant::now();
            tracing::warn!(
                wal = %row[0],
                at = %row[1],
                "PostgreSQL is failing to archive WAL; the base backup waits for it (see the server log for archive_command's error)"
            );
        }
        if since.elapsed() >= stall {
            *stalled.lock().unwrap() = Some(format!(
                "PostgreSQL could not archive WAL segment {} (last failure at {}) for {}s while the base backup waited for it; the backup was abandoned. Fix archive_command (the server log has its error; `holdfast wal-push` says \"unable to archive\"), then back up again",
                row[0],
                row[1],
                stall.as_secs()
            ));
            let _ = child.lock().unwrap().kill();
            return;
        }
    }
}

/// Hands each tar member to the sink under `pgdata/`, and reads the backup
/// facts out of `backup_label` on the way.
fn stream_tar(
    stdout: impl Read,
    sink: &mut dyn EntrySink,
    meta: &mut SourceMetadata,
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
    Ok(())
}

/// `"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]`:
/// the last range's end is where the backup becomes consistent.
fn parse_backup_manifest(bytes: &[u8], meta: &mut SourceMetadata) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    if let Some(last) = v["WAL-Ranges"].as_array().and_then(|r| r.last()) {
        if let Some(end) = last["End-LSN"].as_str() {
            meta.insert("stop_lsn".into(), json!(end));
        }
        if let Some(tli) = last["Timeline"].as_u64() {
            meta.insert("stop_timeline".into(), json!(tli));
        }
    }
}

/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)`, `START
/// TIMELINE: 1`, `START TIME: …`, `LABEL: …`.
fn parse_backup_label(text: &str, meta: &mut SourceMetadata) {
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        match key {
            "START WAL LOCATION" => {
                let mut parts = value.split_whitespace();
                if let Some(lsn) = parts.next() {
                    meta.insert("start_lsn".into(), json!(lsn));
                }
                if let (Some("(file"), Some(file)) = (parts.next(), parts.next()) {
                    meta.insert("start_wal_file".into(), json!(file.trim_end_matches(')')));
                }
            }
            "START TIMELINE" => {
                if let Ok(t) = value.trim().parse::<u32>() {
                    meta.insert("timeline".into(), json!(t));
                }
            }
            "START TIME" => {
                meta.insert("start_time".into(), json!(value.trim()));
            }
            _ => {}
        }
    }
}

impl Source for PostgresSource {
    fn kind(&self) -> &'static str {
        "postgres"
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

    fn snapshot(&mut self, sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError> {
        let mut meta = self.server_facts()?;
        meta.insert("mode".into(), json!(self.mode.to_string()));
        meta.insert("server".into(), json!(self.client.describe()));
        if self.mode == DbMode::Physical {
            if meta["in_recovery"] == json!(true) {
                return Err(SourceError::Database {
                    what: "base backup".into(),
                    detail: format!(
                        "{} is a standby; back up the primary (backups from standbys are not supported yet)",
                        self.client.describe()
                    ),
                });
            }
            if self.archive && !matches!(meta["archive_mode"].as_str(), Some("on" | "always")) {
                return Err(SourceError::Database {
                    what: "base backup".into(),
                    detail: format!(
                        "archive_mode is {} on {}, so the WAL this backup needs would never reach the repository; set archive_mode = on and archive_command = 'holdfast wal-push --plan PLAN_FILE %p' (restart needed), or say `archive: false` in the plan",
                        meta["archive_mode"],
                        self.client.describe()
                    ),
                });
            }
            self.base_backup(sink, &mut meta)?;
        }
        for db in &self.logical_dumps {
            self.dump(db, sink)?;
        }
        meta.insert("logical_dumps".into(), json!(self.logical_dumps));
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dsn_is_pointed_at_another_database_keeping_its_options() {
        let client = |url: &str| {
            PgClient::new(
                DbConnection {
                    host: None,
                    port: 5432,
                    socket: None,
                    user: None,
                    database: None,
                    dsn: Some(crate::secret::Secret::new(url)),
                    password: None,
                },
                PgSslMode::Prefer,
            )
        };
        let env = |url: &str, db: &str| -> std::collections::HashMap<String, String> {
            client(url)
                .command("psql", Some(db))
                .unwrap()
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
                .collect()
        };
        let e = env("postgres://u:p@h:5433/app?sslmode=require", "other db");
        assert_eq!(e["PGDATABASE"], "other db");
        assert_eq!(e["PGSSLMODE"], "require");
        assert_eq!((e["PGHOST"].as_str(), e["PGPORT"].as_str()), ("h", "5433"));
        assert_eq!(env("postgresql://h", "x")["PGDATABASE"], "x");
        let e = env("postgres://h?application_name=a", "x");
        assert_eq!(
            (e["PGDATABASE"].as_str(), e["PGAPPNAME"].as_str()),
            ("x", "a")
        );
    }

    #[test]
    fn a_url_becomes_libpq_environment_variables() {
        let env = url_env("postgres://app%40x:p%2Fw@[::1]:5433/my%20db?sslmode=require").unwrap();
        assert_eq!(
            env,
            vec![
                ("PGUSER", "app@x".to_string()),
                ("PGPASSWORD", "p/w".to_string()),
                ("PGHOST", "::1".to_string()),
                ("PGPORT", "5433".to_string()),
                ("PGDATABASE", "my db".to_string()),
                ("PGSSLMODE", "require".to_string()),
            ]
        );
        assert_eq!(
            url_env("postgresql://db.internal/app").unwrap(),
            vec![
                ("PGHOST", "db.internal".to_string()),
                ("PGDATABASE", "app".to_string())
            ]
        );
        assert!(url_env("postgres://h:xx/db").is_err());
        assert!(url_env("postgres://h/db?weird=1")
            .unwrap_err()
            .to_string()
            .contains("weird"));
    }

    #[test]
    fn the_backup_label_gives_start_lsn_segment_and_timeline() {
        let mut m = SourceMetadata::new();
        parse_backup_label(
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-26 09:00:00 UTC\nLABEL: holdfast\nSTART TIMELINE: 1\n",
            &mut m,
        );
        assert_eq!(m["start_lsn"], json!("0/2000028"));
        assert_eq!(m["start_wal_file"], json!("000000010000000000000002"));
        assert_eq!(m["timeline"], json!(1));
    }
}
