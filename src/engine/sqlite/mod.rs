//! The `sqlite` source: a consistent online snapshot of a live database.
//!
//! The snapshot is the database image as of one read transaction, taken while
//! other processes keep writing. We open the file read-only, start a read
//! transaction and force it to acquire its snapshot, then stream every page of
//! that snapshot out of the `sqlite_dbpage` virtual table straight into the
//! sink: no temporary copy on disk, one page in memory at a time.
//!
//! Why this is consistent in both journal modes:
//! - WAL: the read transaction pins an end mark in the WAL. `sqlite_dbpage`
//!   reads through the pager, so each page comes from the WAL if a frame at or
//!   before that mark holds it, else from the main file. Writers keep
//!   committing (into the WAL, past our mark); checkpoints cannot overwrite
//!   pages we may still need. The image we emit has WAL-mode bytes in its
//!   header but needs no `-wal` file: SQLite opens it standalone.
//! - Rollback journal (DELETE, TRUNCATE, PERSIST…): the read transaction holds
//!   a SHARED lock, so no writer can commit until we finish; writers wait on
//!   their busy timeout. Keep that in mind for very large databases.
//!
//! If the SQLite we run with lacks `sqlite_dbpage` (the crate builds it with
//! `-DSQLITE_ENABLE_DBPAGE_VTAB`, see `.cargo/config.toml`), we fall back to
//! the online backup API into a private temporary file that is streamed and
//! then removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use serde_json::json;

use async_trait::async_trait;

use crate::engine::{Engine, RestoreError, RestoreReport, RestoreRequest, SourceKind};
use crate::plan::Plan;
use crate::repository::materialize::{
    self, absolute, MaterializeError, RestoreOptions, FORCE_HINT,
};
use crate::repository::source::{
    Chunking, EntryMeta, EntrySink, Source, SourceError, SourceMetadata,
};
use crate::repository::Repository;

/// How long we wait for a lock held by a writer (rollback-journal mode, WAL
/// recovery) before giving up. Writers commit in milliseconds; a long wait
/// means something is wrong and the backup should say so, not hang.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every SQLite database file starts with these 16 bytes.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How the page image of the snapshot is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMethod {
    /// `sqlite_dbpage` when the linked SQLite has it, else the backup API.
    Auto,
    /// Only `sqlite_dbpage`; an error if it is missing.
    DbPage,
    /// Only the online backup API through a temporary file.
    BackupApi,
}

pub struct SqliteSource {
    path: PathBuf,
    /// The database's file name: the one entry this source emits.
    file_name: String,
    method: SnapshotMethod,
    busy_timeout: Duration,
    /// Where the backup-API fallback puts its temporary copy.
    temp_dir: PathBuf,
}

impl SqliteSource {
    /// Checks that `path` exists and looks like a SQLite database. The full
    /// check (SQLite opening it) happens at snapshot time.
    pub fn new(path: PathBuf) -> Result<Self, SourceError> {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| SourceError::Sqlite {
                path: path.clone(),
                message: "the path has no UTF-8 file name to record the database under".into(),
            })?;
        check_header(&path)?;
        Ok(SqliteSource {
            path,
            file_name,
            method: SnapshotMethod::Auto,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            temp_dir: std::env::temp_dir(),
        })
    }

    pub fn with_method(mut self, method: SnapshotMethod) -> Self {
        self.method = method;
        self
    }

    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Directory for the backup-API fallback's temporary copy (default
    /// [`std::env::temp_dir`]). It must have room for the whole database.
    pub fn with_temp_dir(mut self, dir: PathBuf) -> Self {
        self.temp_dir = dir;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, doing: &str) -> impl Fn(rusqlite::Error) -> SourceError + '_ {
        let doing = doing.to_owned();
        move |e| sqlite_error(&self.path, &doing, e)
    }

    fn open(&self) -> Result<Connection, SourceError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(self.err("unable to open"))?;
        conn.busy_timeout(self.busy_timeout)
            .map_err(self.err("unable to set the busy timeout"))?;
        Ok(conn)
    }

    /// Streams the snapshot held by `conn`'s open read transaction through
    /// `sqlite_dbpage`. `Ok(false)` means the virtual table does not exist.
    fn stream_dbpage(
        &self,
        conn: &Connection,
        facts: &Facts,
        meta: &EntryMeta,
        sink: &mut dyn EntrySink,
    ) -> Result<bool, SourceError> {
        // `sqlite_dbpage` only indexes `pgno = ?`; a `BETWEEN` batch would
        // rescan from page 1 every time. One ordered scan, stepped lazily as
        // the sink reads, keeps memory at one page and the cost linear.
        let mut stmt = match conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage('main') ORDER BY pgno")
        {
            Ok(stmt) => stmt,
            Err(e) if e.to_string().contains("no such table: sqlite_dbpage") => return Ok(false),
            Err(e) => return Err(sqlite_error(&self.path, "unable to read pages", e)),
        };
        let rows = stmt.query([]).map_err(self.err("unable to read pages"))?;
        let mut reader = PageReader {
            rows,
            page: Vec::with_capacity(facts.page_size as usize),
            pos: 0,
            next_pgno: 1,
            page_count: facts.page_count,
            page_size: facts.page_size as usize,
            error: None,
        };
        let sunk = sink.file(meta, &mut reader);
        if let Some(message) = reader.error.take() {
            return Err(SourceError::Sqlite {
                path: self.path.clone(),
                message,
            });
        }
        sunk?;
        if reader.next_pgno <= facts.page_count {
            return Err(SourceError::Sqlite {
                path: self.path.clone(),
                message: format!(
                    "the sink stopped reading after page {} of {}",
                    reader.next_pgno - 1,
                    facts.page_count
                ),
            });
        }
        Ok(true)
    }

    /// Copies the snapshot held by `conn`'s open read transaction with the
    /// online backup API into a private temporary file, streams it, removes it.
    fn stream_backup_api(
        &self,
        conn: &Connection,
        facts: &Facts,
        meta: &EntryMeta,
        sink: &mut dyn EntrySink,
    ) -> Result<(), SourceError> {
        let temp = TempCopy::create(&self.temp_dir)?;
        {
            let mut dst = Connection::open_with_flags(
                &temp.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| sqlite_error(&temp.path, "unable to open the temporary copy", e))?;
            // The copy is thrown away on any failure: no journal needed.
            dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
                .map_err(|e| sqlite_error(&temp.path, "unable to prepare the temporary copy", e))?;
            let backup =
                Backup::new(conn, &mut dst).map_err(self.err("unable to start a backup"))?;
            // All pages in one step: the step reuses our open read transaction,
            // so the copy is exactly our snapshot and is never restarted by
            // concurrent writes.
            let deadline = Instant::now() + self.busy_timeout;
            loop {
                match backup.step(-1).map_err(self.err("unable to copy pages"))? {
                    StepResult::Done => break,
                    StepResult::More => continue,
                    StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        return Err(SourceError::Sqlite {
                            path: self.path.clone(),
                            message: format!(
                                "the backup stayed locked out for {:?} (busy timeout)",
                                self.busy_timeout
                            ),
                        })
                    }
                }
            }
        }
        let mut file = File::open(&temp.path).map_err(|source| SourceError::Io {
            path: temp.path.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| SourceError::Io {
                path: temp.path.clone(),
                source,
            })?
            .len();
        if len != facts.image_len() {
            return Err(SourceError::Sqlite {
                path: self.path.clone(),
                message: format!(
                    "the backup copy holds {len} bytes, expected {} pages of {} bytes",
                    facts.page_count, facts.page_size
                ),
            });
        }
        let mut reader = ErrorKeepingReader {
            inner: &mut file,
            error: None,
        };
        let sunk = sink.file(meta, &mut reader);
        if let Some(source) = reader.error.take() {
            return Err(SourceError::Io {
                path: temp.path.clone(),
                source,
            });
        }
        sunk?;
        Ok(())
    }
}

/// Runs `PRAGMA integrity_check` on a restored database file; the error lists
/// the first problems SQLite reports.
pub fn check_restored(path: &Path) -> Result<(), SourceError> {
    check_header(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_error(path, "unable to open the restored database", e))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check(10)")
        .map_err(|e| sqlite_error(path, "unable to check the restored database", e))?;
    let problems: Result<Vec<String>, _> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect());
    drop(stmt);
    drop(conn);
    // Reading a WAL-mode image makes SQLite create an empty `-wal` and
    // `-shm` beside it, which a read-only connection leaves behind: they
    // belong to this private copy, not to anything live.
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = fs::remove_file(PathBuf::from(name));
    }
    let problems =
        problems.map_err(|e| sqlite_error(path, "unable to check the restored database", e))?;
    if problems == ["ok"] {
        Ok(())
    } else {
        Err(SourceError::Sqlite {
            path: path.to_owned(),
            message: format!("integrity check failed: {}", problems.join("; ")),
        })
    }
}

impl Source for SqliteSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Sqlite
    }

    /// Pages never move within a database file, so fixed chunks dedup as
    /// well as content-defined ones, without the rolling hash. 32 KiB (a
    /// whole number of pages up to SQLite's default 4 KiB and beyond, and
    /// compressed in bundles of three): one changed row stores two chunks
    /// (its page and page 1), where 1 MiB chunks stored two megabytes; much
    /// smaller chunks would make the manifest, not the data, the repeat
    /// backup's cost (docs/performance.md, *Bundles*).
    fn chunking(&self) -> Chunking {
        Chunking::Fixed { size: 32 << 10 }
    }

    fn estimate_bytes(&self) -> Option<u64> {
        let from_sqlite = || -> Option<u64> {
            let conn = self.open().ok()?;
            let size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).ok()?;
            let count: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).ok()?;
            Some(size * count)
        };
        from_sqlite().or_else(|| fs::metadata(&self.path).ok().map(|m| m.len()))
    }

    fn snapshot(&mut self, sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError> {
        check_header(&self.path)?;
        let stat = fs::metadata(&self.path).map_err(|e| SourceError::io(&self.path, e))?;
        let meta = EntryMeta {
            path: self.file_name.clone(),
            mode: stat.mode() & 0o7777,
            mtime_ns: Some(stat.mtime() * 1_000_000_000 + stat.mtime_nsec()),
            stamp: None,
        };

        let mut conn = self.open()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(self.err("unable to begin a read transaction"))?;
        // BEGIN takes no lock; the first read does, and fixes the snapshot
        // everything below sees. This is also where a file that is not a
        // database is refused.
        tx.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(self.err("unable to read the schema"))?;
        let facts = Facts::read(&tx).map_err(self.err("unable to read database facts"))?;

        let method = match self.method {
            SnapshotMethod::BackupApi => {
                self.stream_backup_api(&tx, &facts, &meta, sink)?;
                "backup_api"
            }
            SnapshotMethod::DbPage | SnapshotMethod::Auto => {
                if self.stream_dbpage(&tx, &facts, &meta, sink)? {
                    "dbpage"
                } else if self.method == SnapshotMethod::Auto {
                    tracing::warn!(
                        path = %self.path.display(),
                        "this SQLite lacks sqlite_dbpage; copying through a temporary file instead"
                    );
                    self.stream_backup_api(&tx, &facts, &meta, sink)?;
                    "backup_api"
                } else {
                    return Err(SourceError::Sqlite {
                        path: self.path.clone(),
                        message: "the sqlite_dbpage virtual table is missing \
                                  (SQLite built without SQLITE_ENABLE_DBPAGE_VTAB)"
                            .into(),
                    });
                }
            }
        };
        // Read-only: nothing to commit; ending the transaction releases the
        // snapshot (and, in rollback-journal mode, the writers).
        drop(tx);

        let mut md = SourceMetadata::new();
        md.insert("file_name".into(), json!(self.file_name));
        md.insert("sqlite_version".into(), json!(rusqlite::version()));
        md.insert("page_size".into(), json!(facts.page_size));
        md.insert("page_count".into(), json!(facts.page_count));
        md.insert("journal_mode".into(), json!(facts.journal_mode));
        md.insert("user_version".into(), json!(facts.user_version));
        md.insert("method".into(), json!(method));
        Ok(md)
    }
}

/// What the snapshot's read transaction says about the database.
struct Facts {
    page_size: u32,
    page_count: u32,
    journal_mode: String,
    user_version: i64,
}

impl Facts {
    fn read(conn: &Connection) -> rusqlite::Result<Facts> {
        Ok(Facts {
            page_size: conn.query_row("PRAGMA page_size", [], |r| r.get(0))?,
            page_count: conn.query_row("PRAGMA page_count", [], |r| r.get(0))?,
            journal_mode: conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
            user_version: conn.query_row("PRAGMA user_version", [], |r| r.get(0))?,
        })
    }

    fn image_len(&self) -> u64 {
        u64::from(self.page_size) * u64::from(self.page_count)
    }
}

/// Serves the rows of `SELECT pgno, data FROM sqlite_dbpage` as one byte
/// stream, checking that pages come in order, whole, and all of them.
struct PageReader<'s> {
    rows: rusqlite::Rows<'s>,
    page: Vec<u8>,
    pos: usize,
    next_pgno: u32,
    page_count: u32,
    page_size: usize,
    /// Our own failure, reported by the source instead of whatever the sink
    /// makes of the `io::Error` it was handed.
    error: Option<String>,
}

impl PageReader<'_> {
    /// Reads the next page into the page buffer.
    fn next_page(&mut self) -> Result<(), String> {
        let mut page = std::mem::take(&mut self.page);
        let r = self.next_page_with(|data| {
            page.clear();
            page.extend_from_slice(data);
        });
        self.page = page;
        self.pos = 0;
        r
    }

    /// Hands the next page's bytes to `take`, checked for order and size.
    fn next_page_with(&mut self, take: impl FnOnce(&[u8])) -> Result<(), String> {
        let row = self
            .rows
            .next()
            .map_err(|e| format!("unable to read page {}: {e}", self.next_pgno))?
            .ok_or_else(|| {
                format!(
                    "sqlite_dbpage ended before page {} of {}",
                    self.next_pgno, self.page_count
                )
            })?;
        let pgno: i64 = row.get(0).map_err(|e| e.to_string())?;
        if pgno != i64::from(self.next_pgno) {
            return Err(format!(
                "sqlite_dbpage returned page {pgno} where page {} was expected",
                self.next_pgno
            ));
        }
        let data = row
            .get_ref(1)
            .and_then(|v| v.as_blob().map_err(Into::into))
            .map_err(|e| format!("unable to read page {pgno}: {e}"))?;
        if data.len() != self.page_size {
            return Err(format!(
                "page {pgno} has {} bytes, expected {}",
                data.len(),
                self.page_size
            ));
        }
        take(data);
        self.next_pgno += 1;
        Ok(())
    }
}

impl Read for PageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(message) = &self.error {
            return Err(io::Error::other(message.clone()));
        }
        // Whole pages straight into the caller's buffer: one copy, not two.
        if self.pos == self.page.len() && buf.len() >= self.page_size {
            let mut n = 0;
            let size = self.page_size;
            while buf.len() - n >= size && self.next_pgno <= self.page_count {
                let dst = &mut buf[n..n + size];
                if let Err(message) = self.next_page_with(|data| dst.copy_from_slice(data)) {
                    self.error = Some(message.clone());
                    return Err(io::Error::other(message));
                }
                n += size;
            }
            return Ok(n);
        }
        if self.pos == self.page.len() {
            if self.next_pgno > self.page_count {
                return Ok(0);
            }
            if let Err(message) = self.next_page() {
                self.error = Some(message.clone());
                return Err(io::Error::other(message));
            }
        }
        let n = buf.len().min(self.page.len() - self.pos);
        buf[..n].copy_from_slice(&self.page[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Keeps the first read error so the source can name the file it came from.
struct ErrorKeepingReader<'a, R: Read> {
    inner: &'a mut R,
    error: Option<io::Error>,
}

impl<R: Read> Read for ErrorKeepingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if self.error.is_none() {
                self.error = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

/// The backup-API fallback's copy: created owner-only (it holds the whole
/// database) with a name nobody else has, removed with its side files on drop.
struct TempCopy {
    path: PathBuf,
}

impl TempCopy {
    fn create(dir: &Path) -> Result<TempCopy, SourceError> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| SourceError::Io {
            path: dir.to_owned(),
            source: io::Error::other(e.to_string()),
        })?;
        let path = dir.join(format!(
            "holdfast-sqlite-{}-{}.db",
            std::process::id(),
            hex::encode(random)
        ));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| SourceError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(TempCopy { path })
    }
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let p = PathBuf::from(p);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %p.display(), error = %e,
                    "unable to remove the temporary copy of a SQLite database"),
            }
        }
    }
}

/// Refuses a missing path, a directory, or a file that does not start with
/// the SQLite header (an empty file is a valid, empty database).
fn check_header(path: &Path) -> Result<(), SourceError> {
    let stat = fs::metadata(path).map_err(|e| SourceError::io(path, e))?;
    if !stat.is_file() {
        return Err(SourceError::Sqlite {
            path: path.to_owned(),
            message: "is not a regular file".into(),
        });
    }
    let mut head = Vec::with_capacity(16);
    File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| SourceError::io(path, e))?;
    if !head.is_empty() && head.as_slice() != SQLITE_HEADER {
        return Err(not_a_database(path));
    }
    Ok(())
}

fn not_a_database(path: &Path) -> SourceError {
    SourceError::Sqlite {
        path: path.to_owned(),
        message: "is not a SQLite database (no \"SQLite format 3\" header); \
                  check the plan's path"
            .into(),
    }
}

fn sqlite_error(path: &Path, doing: &str, e: rusqlite::Error) -> SourceError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => not_a_database(path),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => SourceError::Sqlite {
            path: path.to_owned(),
            message: format!(
                "{doing}: the database stayed locked past the busy timeout ({e}); \
                 a writer may be holding a long transaction"
            ),
        },
        Some(ErrorCode::ReadOnly) => SourceError::Sqlite {
            path: path.to_owned(),
            message: format!(
                "{doing}: {e}; a crashed writer may have left recovery work that a \
                 read-only connection cannot do: open the database once with its application"
            ),
        },
        _ => SourceError::Sqlite {
            path: path.to_owned(),
            message: format!("{doing}: {e}"),
        },
    }
}
/// SQLite: a consistent online copy of one database file, restored to a
/// file path (with `--check`, `PRAGMA integrity_check` before it is put in place).
pub struct SqliteEngine {
    pub path: PathBuf,
}

#[async_trait]
impl Engine for SqliteEngine {
    fn kind(&self) -> SourceKind {
        SourceKind::Sqlite
    }

    fn open_source(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(SqliteSource::new(self.path.clone())?))
    }

    async fn restore(
        &self,
        repo: &Repository,
        plan: &Plan,
        req: &RestoreRequest,
    ) -> Result<RestoreReport, RestoreError> {
        let snapshot = crate::engine::snapshot_only(plan, self.kind(), req)?;
        let target = absolute(&req.to);
        let force = req.force;
        let staged = staged_path(&target);
        let (t, st) = (target.clone(), staged.clone());
        tokio::task::spawn_blocking(move || {
            materialize::check_target(&t, true, force)?;
            refuse_companions(&t, force)?;
            let _ = fs::remove_file(&st);
            Ok::<_, MaterializeError>(())
        })
        .await
        .expect("target check panicked")?;
        // The new copy is restored and checked beside the target under a
        // name of its own; the live database and its `-wal`/`-journal` are
        // not touched until it has passed. Replacing a database (--force)
        // always runs `PRAGMA integrity_check`: a snapshot whose bytes match
        // its manifest can still be a broken database (taken from one).
        let opts = RestoreOptions {
            snapshot,
            to: staged.clone(),
            force: false,
            check_with: (req.check || req.force).then_some(check_restored as materialize::CheckFn),
            single_stream: true,
            keep_setid_bits: req.keep_setid_bits,
            progress: req.progress,
        };
        let mut report = match materialize::restore(repo, &plan.name, &opts).await {
            Ok(report) => report,
            Err(e) => {
                let st = staged.clone();
                let _ = tokio::task::spawn_blocking(move || fs::remove_file(st)).await;
                return Err(retarget(e, &staged, &target).into());
            }
        };
        let t = target.clone();
        tokio::task::spawn_blocking(move || put_in_place(&staged, &t))
            .await
            .expect("put in place panicked")?;
        report.target = target;
        Ok(RestoreReport::Snapshot(report))
    }
}

/// Where the new copy is restored and checked before it replaces the target.
fn staged_path(target: &Path) -> PathBuf {
    target.with_file_name(format!(
        ".{}.holdfast-new-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ))
}

/// The companions SQLite keeps beside a database: a `-wal` or `-journal`
/// is applied to whatever database file carries the name.
fn companions(target: &Path) -> Vec<PathBuf> {
    ["-wal", "-journal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut name = target.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        })
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect()
}

/// A stale `-wal` or `-journal` beside a restored database would be applied
/// to it on open and corrupt it: without --force, refuse before anything is
/// read from the repository.
fn refuse_companions(target: &Path, force: bool) -> Result<(), MaterializeError> {
    match companions(target).into_iter().next() {
        Some(path) if !force => Err(MaterializeError::TargetNotEmpty {
            path,
            hint: FORCE_HINT,
        }),
        _ => Ok(()),
    }
}

/// The checked copy replaces the target. The old `-wal`/`-journal`/`-shm`
/// are moved aside first (a `-wal` left beside the new file would be
/// replayed into it), the copy renamed over the target, the directory
/// synced, and only then are the old companions deleted. If a rename fails
/// they are put back, so the live database keeps its log.
fn put_in_place(staged: &Path, target: &Path) -> Result<(), MaterializeError> {
    let fail = |path: &Path, source| MaterializeError::Target {
        path: path.to_path_buf(),
        source,
    };
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let put_back = |moved: &[(PathBuf, PathBuf)]| {
        for (path, aside) in moved {
            let _ = fs::rename(aside, path);
        }
    };
    for path in companions(target) {
        let aside = path.with_file_name(format!(
            ".{}.holdfast-old-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        if let Err(e) = fs::rename(&path, &aside) {
            put_back(&moved);
            let _ = fs::remove_file(staged);
            return Err(fail(&path, e));
        }
        moved.push((path, aside));
    }
    if let Err(e) = fs::rename(staged, target) {
        put_back(&moved);
        let _ = fs::remove_file(staged);
        return Err(fail(target, e));
    }
    let dir = target.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(dir, e))?;
    for (_, aside) in moved {
        fs::remove_file(&aside).map_err(|e| fail(&aside, e))?;
    }
    Ok(())
}

/// A failed restore's error names the target asked for, not the staging path.
fn retarget(e: MaterializeError, staged: &Path, target: &Path) -> MaterializeError {
    let swap = |p: PathBuf| if p == staged { target.to_path_buf() } else { p };
    match e {
        MaterializeError::Read {
            snapshot,
            target: t,
            source,
        } => MaterializeError::Read {
            snapshot,
            target: swap(t),
            source,
        },
        MaterializeError::UnsafeEntry {
            manifest,
            path,
            why,
            target: t,
        } => MaterializeError::UnsafeEntry {
            manifest,
            path,
            why,
            target: swap(t),
        },
        MaterializeError::Check { target: t, source } => MaterializeError::Check {
            target: swap(t),
            source,
        },
        other => other,
    }
}
