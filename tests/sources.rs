//! Sources against real data: a SQLite database another process keeps writing
//! to, and a directory tree with every kind of entry we promise to keep.
//!
//! The sinks here stand in for the repository writer: they collect entries (or
//! write the one database file into a restore directory) so each test can say
//! "snapshot, restore, compare".

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::files::{set_mode, set_mtime};
use filetime::FileTime;
use holdfast::engine::files::FilesSource;
use holdfast::engine::sqlite::{check_restored, SnapshotMethod, SqliteSource};
use holdfast::repository::source::{
    EntryMeta, EntrySink, SinkError, Source, SourceError, SourceMetadata,
};
use rusqlite::Connection;

// ---------------------------------------------------------------- test sinks

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir(EntryMeta),
    Symlink(EntryMeta, String),
    File(EntryMeta, Vec<u8>),
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir(m) | Entry::Symlink(m, _) | Entry::File(m, _) => &m.path,
        }
    }
    fn meta(&self) -> &EntryMeta {
        match self {
            Entry::Dir(m) | Entry::Symlink(m, _) | Entry::File(m, _) => m,
        }
    }
}

/// Collects every entry with its content in memory.
#[derive(Default)]
struct CollectSink {
    entries: Vec<Entry>,
}

impl EntrySink for CollectSink {
    fn dir(&mut self, meta: &EntryMeta) -> Result<(), SinkError> {
        self.entries.push(Entry::Dir(meta.clone()));
        Ok(())
    }
    fn symlink(&mut self, meta: &EntryMeta, target: &str) -> Result<(), SinkError> {
        self.entries
            .push(Entry::Symlink(meta.clone(), target.to_owned()));
        Ok(())
    }
    fn file(&mut self, meta: &EntryMeta, content: &mut dyn Read) -> Result<(), SinkError> {
        let mut data = Vec::new();
        content
            .read_to_end(&mut data)
            .map_err(|e| SinkError(Box::new(e)))?;
        self.entries.push(Entry::File(meta.clone(), data));
        Ok(())
    }
}

/// Writes each file entry into `dir` (the "restore" of a database snapshot).
struct RestoreSink {
    dir: PathBuf,
    files: Vec<EntryMeta>,
}

impl EntrySink for RestoreSink {
    fn dir(&mut self, meta: &EntryMeta) -> Result<(), SinkError> {
        panic!("a database source emitted a directory {meta:?}")
    }
    fn symlink(&mut self, meta: &EntryMeta, _: &str) -> Result<(), SinkError> {
        panic!("a database source emitted a symlink {meta:?}")
    }
    fn file(&mut self, meta: &EntryMeta, content: &mut dyn Read) -> Result<(), SinkError> {
        let mut out =
            fs::File::create(self.dir.join(&meta.path)).map_err(|e| SinkError(Box::new(e)))?;
        std::io::copy(content, &mut out).map_err(|e| SinkError(Box::new(e)))?;
        self.files.push(meta.clone());
        Ok(())
    }
}

/// Captures `tracing` output so a test can check that a warning names a path.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn with_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    (out, logs)
}

// ------------------------------------------------------------------- sqlite

/// Rows are written in transactions of this many rows, ids 1, 2, 3, … in
/// order, so any committed state holds ids 1..=k*BATCH and nothing else.
const BATCH: i64 = 50;
/// About 4.5 MB of rows before the writer starts.
const PREFILL_ROWS: i64 = 4000;

/// A row's payload is a function of its id, so a torn page shows up as a
/// payload that does not match.
fn payload(id: i64) -> Vec<u8> {
    format!("{id:08}").repeat(128).into_bytes()
}

const WRITER: &str = r#"
import os, sqlite3, sys, time
db, autocheckpoint, batch, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
con = sqlite3.connect(db, timeout=60, isolation_level=None)
if autocheckpoint >= 0:
    con.execute('PRAGMA wal_autocheckpoint=%d' % autocheckpoint)
nxt = con.execute('SELECT coalesce(max(id), 0) FROM t').fetchone()[0] + 1
said = False
while not os.path.exists(stop):
    con.execute('BEGIN IMMEDIATE')
    for i in range(nxt, nxt + batch):
        con.execute('INSERT INTO t(id, payload) VALUES (?, ?)', (i, (b'%08d' % i) * 128))
    con.execute('COMMIT')
    nxt += batch
    time.sleep(0.005)  # a busy application, not a bulk load: keeps the file a few MB
    if not said:
        print('committing', flush=True)
        said = True
print(nxt - 1, flush=True)
"#;

/// A live database: prefilled in `journal_mode`, with a separate python3
/// process committing BATCH-row transactions until stopped.
struct LiveDb {
    _dir: tempfile::TempDir,
    db: PathBuf,
    stop: PathBuf,
    writer: Child,
}

impl LiveDb {
    fn start(journal_mode: &str, wal_autocheckpoint: i64) -> LiveDb {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        {
            let conn = Connection::open(&db).unwrap();
            let mode: String = conn
                .query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(mode, journal_mode);
            conn.execute_batch(
                "PRAGMA user_version = 7;
                 CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);",
            )
            .unwrap();
            for start in (1..=PREFILL_ROWS).step_by(BATCH as usize) {
                let tx = conn.unchecked_transaction().unwrap();
                for id in start..start + BATCH {
                    tx.execute(
                        "INSERT INTO t (id, payload) VALUES (?1, ?2)",
                        rusqlite::params![id, payload(id)],
                    )
                    .unwrap();
                }
                tx.commit().unwrap();
            }
        }
        set_mode(&db, 0o640);
        let stop = dir.path().join("stop");
        let writer = Command::new("python3")
            .arg("-c")
            .arg(WRITER)
            .arg(&db)
            .arg(wal_autocheckpoint.to_string())
            .arg(BATCH.to_string())
            .arg(&stop)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the concurrent-writer tests");
        let mut live = LiveDb {
            _dir: dir,
            db,
            stop,
            writer,
        };
        let mut first = String::new();
        BufReader::new(live.writer.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), "committing", "the writer did not start");
        // Let a few more transactions land (in WAL mode: in the WAL).
        let deadline = Instant::now() + Duration::from_secs(30);
        while live.committed_rows() < PREFILL_ROWS + 10 * BATCH {
            assert!(Instant::now() < deadline, "the writer makes no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
        live
    }

    /// What a fresh reader sees now.
    fn committed_rows(&self) -> i64 {
        let conn = Connection::open(&self.db).unwrap();
        conn.busy_timeout(Duration::from_secs(60)).unwrap();
        conn.query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Stops the writer and returns the last id it committed.
    fn stop(mut self) -> i64 {
        fs::write(&self.stop, b"").unwrap();
        let mut out = String::new();
        self.writer
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = self.writer.wait().unwrap();
        assert!(status.success(), "the writer failed: {status}");
        out.trim().parse().unwrap()
    }
}

/// A failed assertion must not leave the writer running forever (and holding
/// the test harness's output pipe open).
impl Drop for LiveDb {
    fn drop(&mut self) {
        if let Ok(None) = self.writer.try_wait() {
            let _ = self.writer.kill();
            let _ = self.writer.wait();
        }
    }
}

/// Snapshot `source` into a fresh restore directory; returns the restored
/// file, its entry metadata and the source metadata.
fn snapshot_to_file(source: &mut SqliteSource) -> (tempfile::TempDir, PathBuf, SourceMetadata) {
    let restore = tempfile::tempdir().unwrap();
    let mut sink = RestoreSink {
        dir: restore.path().to_owned(),
        files: vec![],
    };
    let md = source.snapshot(&mut sink).unwrap();
    assert_eq!(sink.files.len(), 1, "one database, one file entry");
    assert_eq!(sink.files[0].path, "app.db");
    assert_eq!(sink.files[0].mode, 0o640);
    let file = restore.path().join("app.db");
    (restore, file, md)
}

/// The restored file passes integrity_check and holds exactly the rows of
/// some committed state: ids 1..=n, n a multiple of BATCH, every payload
/// intact. Returns n.
fn assert_whole_transactions(restored: &Path) -> i64 {
    check_restored(restored).unwrap();
    let conn = Connection::open(restored).unwrap();
    let (count, min, max): (i64, i64, i64) = conn
        .query_row("SELECT count(*), min(id), max(id) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(count % BATCH, 0, "a torn transaction: {count} rows");
    assert_eq!((min, max), (1, count), "the rows are not contiguous");
    let mut stmt = conn.prepare("SELECT id, payload FROM t").unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(row) = rows.next().unwrap() {
        let id: i64 = row.get(0).unwrap();
        let data: Vec<u8> = row.get(1).unwrap();
        assert!(data == payload(id), "row {id} has a torn payload");
    }
    count
}

/// Back up a database three times while a writer commits, restore each
/// snapshot, and check it is one committed state, no older than what a reader
/// saw just before the snapshot and no newer than just after.
fn snapshots_during_writes(journal_mode: &str, wal_autocheckpoint: i64, method: SnapshotMethod) {
    let live = LiveDb::start(journal_mode, wal_autocheckpoint);
    let temp = tempfile::tempdir().unwrap();
    let mut source = SqliteSource::new(live.db.clone())
        .unwrap()
        .with_method(method)
        .with_temp_dir(temp.path().to_owned());
    // At least three snapshots, and more (up to 30) until one ran while the
    // writer committed: on a busy machine a fast snapshot can fall between
    // two commits, which proves nothing.
    let mut moved_during_a_snapshot = false;
    let mut taken = 0;
    while taken < 3 || (!moved_during_a_snapshot && taken < 30) {
        taken += 1;
        let before = live.committed_rows();
        let (_restore, restored, md) = snapshot_to_file(&mut source);
        let after = live.committed_rows();
        moved_during_a_snapshot |= after > before;

        let expected_method = match method {
            SnapshotMethod::BackupApi => "backup_api",
            _ => "dbpage",
        };
        assert_eq!(md["method"], expected_method);
        assert_eq!(md["journal_mode"], journal_mode);
        assert_eq!(md["user_version"], 7);
        assert_eq!(md["file_name"], "app.db");
        let image_len = md["page_size"].as_u64().unwrap() * md["page_count"].as_u64().unwrap();
        assert_eq!(fs::metadata(&restored).unwrap().len(), image_len);
        // The restore directory holds the database and nothing else: a WAL
        // image must open without its -wal file.
        assert_eq!(fs::read_dir(restored.parent().unwrap()).unwrap().count(), 1);

        let rows = assert_whole_transactions(&restored);
        assert!(
            before <= rows && rows <= after,
            "snapshot holds {rows} rows; a reader saw {before} before and {after} after"
        );
        assert_eq!(
            fs::read_dir(temp.path()).unwrap().count(),
            0,
            "the backup-API copy was left behind"
        );
    }
    let last = live.stop();
    assert!(
        moved_during_a_snapshot,
        "the writer never committed during a snapshot: the test proved nothing"
    );
    assert!(last % BATCH == 0 && last > PREFILL_ROWS);
}

#[test]
fn sqlite_wal_snapshot_during_writes_holds_whole_transactions_from_the_wal() {
    // No checkpoints: every row after the prefill exists only in app.db-wal,
    // so a snapshot that ignored the WAL would hold just PREFILL_ROWS rows and
    // fail the before <= rows check.
    snapshots_during_writes("wal", 0, SnapshotMethod::DbPage);
}

#[test]
fn sqlite_wal_snapshot_while_checkpoints_run() {
    // Frequent checkpoints copy WAL pages into app.db while we read it.
    snapshots_during_writes("wal", 20, SnapshotMethod::DbPage);
}

#[test]
fn sqlite_rollback_journal_snapshot_during_writes() {
    snapshots_during_writes("delete", -1, SnapshotMethod::DbPage);
}

#[test]
fn sqlite_backup_api_fallback_during_writes() {
    snapshots_during_writes("wal", 20, SnapshotMethod::BackupApi);
    snapshots_during_writes("delete", -1, SnapshotMethod::BackupApi);
}

#[test]
fn sqlite_auto_uses_dbpage_in_this_build() {
    // .cargo/config.toml builds SQLite with SQLITE_ENABLE_DBPAGE_VTAB; if that
    // is lost, every backup silently goes through a temporary copy.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let mtime = FileTime::from_unix_time(1_700_000_000, 123_456_789);
    filetime::set_file_mtime(&db, mtime).unwrap();
    let mut source = SqliteSource::new(db).unwrap();
    assert_eq!(source.kind().as_str(), "sqlite");
    let mut sink = CollectSink::default();
    let md = source.snapshot(&mut sink).unwrap();
    assert_eq!(md["method"], "dbpage");
    assert_eq!(md["journal_mode"], "delete");
    assert_eq!(md["sqlite_version"], rusqlite::version());
    let [Entry::File(meta, data)] = sink.entries.as_slice() else {
        panic!("expected one file entry, got {:?}", sink.entries);
    };
    assert_eq!(meta.mtime_ns, Some(1_700_000_000_123_456_789));
    assert_eq!(
        source.estimate_bytes(),
        Some(data.len() as u64),
        "estimate = page_count * page_size"
    );
}

#[test]
fn sqlite_missing_file_is_reported_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nope.db");
    match SqliteSource::new(db.clone()) {
        Err(SourceError::Missing { path }) => assert_eq!(path, db),
        other => panic!("expected Missing, got {:?}", other.map(|_| ())),
    }

    // Present when the plan was loaded, gone at backup time.
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x);")
        .unwrap();
    let mut source = SqliteSource::new(db.clone()).unwrap();
    fs::remove_file(&db).unwrap();
    match source.snapshot(&mut CollectSink::default()) {
        Err(SourceError::Missing { path }) => assert_eq!(path, db),
        other => panic!("expected Missing, got {other:?}"),
    }
}

#[test]
fn sqlite_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    fs::write(&notes, "this is not a database\n".repeat(300)).unwrap();
    let err = SqliteSource::new(notes.clone()).err().expect("must refuse");
    assert!(matches!(&err, SourceError::Sqlite { path, .. } if *path == notes));
    let text = err.to_string();
    assert!(
        text.contains("notes.txt") && text.contains("not a SQLite database"),
        "{text}"
    );

    // The right header over garbage gets past the cheap check; SQLite itself
    // must then refuse it, naming the file.
    let fake = dir.path().join("fake.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend(std::iter::repeat_n(0xA5u8, 8192));
    fs::write(&fake, bytes).unwrap();
    let err = SqliteSource::new(fake.clone())
        .unwrap()
        .snapshot(&mut CollectSink::default())
        .expect_err("must refuse");
    assert!(
        matches!(&err, SourceError::Sqlite { path, .. } if *path == fake),
        "{err}"
    );
}

#[test]
fn sqlite_check_restored_reports_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
             CREATE INDEX t_v ON t (v);",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for id in 0..2000 {
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                rusqlite::params![id, format!("value {id}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    check_restored(&db).unwrap();

    // Scribble over the middle of the last page (an index page, say).
    let mut bytes = fs::read(&db).unwrap();
    let len = bytes.len();
    bytes[len - 3000..len - 1000].fill(0x5A);
    fs::write(&db, bytes).unwrap();
    let err = check_restored(&db).expect_err("corruption must be reported");
    assert!(
        matches!(&err, SourceError::Sqlite { path, .. } if *path == db),
        "{err}"
    );
}

// -------------------------------------------------------------------- files

/// A tree with one of everything the files source promises to handle.
fn build_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    for d in [
        "a/b",
        "a/build",
        "a/empty_dir",
        "build/out",
        "cache/x",
        "tmp/t",
        "shared",
    ] {
        fs::create_dir_all(p(d)).unwrap();
    }
    fs::write(p("a/b/deep.txt"), "deep\n").unwrap();
    fs::write(p("a/b/x.log"), "log\n").unwrap();
    fs::write(p("a/build/keep.txt"), "kept: /build is anchored\n").unwrap();
    fs::write(
        p("a/tmp"),
        "a file named tmp: tmp/ only excludes directories\n",
    )
    .unwrap();
    fs::write(p("app.log"), "log\n").unwrap();
    fs::write(p("build/out/bin"), "artifact").unwrap();
    fs::write(p("cache/x/y"), "cached").unwrap();
    fs::write(p("tmp/t/z"), "scratch").unwrap();
    fs::write(p("empty.txt"), "").unwrap();
    fs::write(p("script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::write(p("secret"), "hunter2").unwrap();
    fs::write(p("setuid"), "s").unwrap();
    symlink("script.sh", p("link_to_file")).unwrap();
    symlink("does/not/exist", p("dangling")).unwrap();
    let status = Command::new("mkfifo").arg(p("fifo")).status().unwrap();
    assert!(status.success());
    std::os::unix::net::UnixListener::bind(p("sock")).unwrap();

    set_mode(&p("empty.txt"), 0o644);
    set_mode(&p("script.sh"), 0o755);
    set_mode(&p("secret"), 0o600);
    set_mode(&p("setuid"), 0o4750);
    set_mode(&p("a/empty_dir"), 0o700);
    set_mode(&p("shared"), 0o1777);
    // Times last: creating children changes a directory's mtime.
    set_mtime(&p("a/b/deep.txt"), 1_600_000_000, 1);
    set_mtime(&p("empty.txt"), 1_600_000_001, 999_999_999);
    set_mtime(&p("link_to_file"), 1_600_000_002, 500);
    set_mtime(&p("a/empty_dir"), 1_600_000_003, 123_456_789);
    set_mtime(root, 1_600_000_004, 42);
}

const TREE_EXCLUDES: [&str; 4] = ["*.log", "cache/**", "/build", "tmp/"];

#[test]
fn files_snapshot_keeps_the_tree_in_order_with_modes_times_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    build_tree(&root);

    let mut source = FilesSource::new(
        root.clone(),
        TREE_EXCLUDES.iter().map(|s| s.to_string()).collect(),
    )
    .unwrap();
    assert_eq!(source.kind().as_str(), "files");
    let mut sink = CollectSink::default();
    let (md, logs) = with_logs(|| source.snapshot(&mut sink).unwrap());

    let listing: Vec<String> = sink
        .entries
        .iter()
        .map(|e| match e {
            Entry::Dir(m) => format!("dir {}", m.path),
            Entry::Symlink(m, t) => format!("link {} -> {t}", m.path),
            Entry::File(m, d) => format!("file {} ({} bytes)", m.path, d.len()),
        })
        .collect();
    assert_eq!(
        listing,
        [
            "dir .",
            "dir a",
            "dir a/b",
            "file a/b/deep.txt (5 bytes)",
            // a/b/x.log: *.log matches names at any depth.
            "dir a/build",
            "file a/build/keep.txt (25 bytes)",
            "dir a/empty_dir",
            "file a/tmp (49 bytes)",
            // app.log excluded; build/ excluded by /build with its subtree.
            "dir cache", // cache/** keeps the directory, drops its contents
            "link dangling -> does/not/exist",
            "file empty.txt (0 bytes)",
            // fifo skipped
            "link link_to_file -> script.sh",
            "file script.sh (18 bytes)",
            "file secret (7 bytes)",
            "file setuid (1 bytes)",
            "dir shared",
            // sock skipped; tmp/ excluded (a directory).
        ]
    );

    let find = |path: &str| {
        sink.entries
            .iter()
            .find(|e| e.path() == path)
            .unwrap_or_else(|| panic!("{path} missing"))
    };
    let m = |path: &str| find(path).meta().clone();
    assert_eq!(m("secret").mode, 0o600);
    assert_eq!(m("script.sh").mode, 0o755);
    assert_eq!(m("setuid").mode, 0o4750);
    assert_eq!(m("shared").mode, 0o1777);
    assert_eq!(m("a/empty_dir").mode, 0o700);
    assert_eq!(m("a/b/deep.txt").mtime_ns, Some(1_600_000_000_000_000_001));
    assert_eq!(m("empty.txt").mtime_ns, Some(1_600_000_001_999_999_999));
    assert_eq!(m("link_to_file").mtime_ns, Some(1_600_000_002_000_000_500));
    assert_eq!(m("a/empty_dir").mtime_ns, Some(1_600_000_003_123_456_789));
    assert_eq!(m(".").mtime_ns, Some(1_600_000_004_000_000_042));
    assert_eq!(
        find("a/b/deep.txt"),
        &Entry::File(m("a/b/deep.txt"), b"deep\n".to_vec())
    );

    assert_eq!(md["root"], root.to_str().unwrap());
    assert_eq!(md["files"], 7);
    assert_eq!(md["dirs"], 7);
    assert_eq!(md["symlinks"], 2);
    // a/b/x.log, app.log, build, cache/x, tmp: each excluded directory once.
    assert_eq!(md["excluded"], 5);
    assert_eq!(md["skipped_special"], 2);
    assert_eq!(md["changed_while_read"], 0);
    assert!(
        logs.contains("fifo") && logs.contains(&root.join("fifo").display().to_string()),
        "{logs}"
    );
    assert!(
        logs.contains(&root.join("sock").display().to_string()),
        "{logs}"
    );

    // Same tree, same listing: the order is stable.
    let mut again = CollectSink::default();
    source.snapshot(&mut again).unwrap();
    assert_eq!(again.entries, sink.entries);
}

#[test]
fn files_a_directory_pattern_excludes_the_whole_subtree() {
    let dir = tempfile::tempdir().unwrap();
    build_tree(dir.path());
    let mut sink = CollectSink::default();
    FilesSource::new(dir.path().to_owned(), vec!["a".into(), "cache".into()])
        .unwrap()
        .snapshot(&mut sink)
        .unwrap();
    let paths: Vec<&str> = sink.entries.iter().map(Entry::path).collect();
    assert!(
        !paths.iter().any(|p| *p == "a" || p.starts_with("a/")),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.starts_with("cache")), "{paths:?}");
    assert!(paths.contains(&"build/out/bin"), "{paths:?}");
}

#[test]
fn files_a_single_file_root_is_one_entry_named_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.sql");
    fs::write(&file, "SELECT 1;\n").unwrap();
    set_mode(&file, 0o640);
    let mut source = FilesSource::new(file, vec![]).unwrap();
    assert_eq!(source.estimate_bytes(), Some(10));
    let mut sink = CollectSink::default();
    let md = source.snapshot(&mut sink).unwrap();
    let [Entry::File(meta, data)] = sink.entries.as_slice() else {
        panic!("expected one file, got {:?}", sink.entries);
    };
    assert_eq!((meta.path.as_str(), meta.mode), ("dump.sql", 0o640));
    assert_eq!(data, b"SELECT 1;\n");
    assert_eq!(md["files"], 1);
}

#[test]
fn files_missing_root_and_bad_patterns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    match FilesSource::new(gone.clone(), vec![])
        .unwrap()
        .snapshot(&mut CollectSink::default())
    {
        Err(SourceError::Missing { path }) => assert_eq!(path, gone),
        other => panic!("expected Missing, got {other:?}"),
    }
    for bad in ["a[", "/", ""] {
        match FilesSource::new(dir.path().to_owned(), vec![bad.into()]) {
            Err(SourceError::InvalidExclude { pattern, .. }) => assert_eq!(pattern, bad),
            other => panic!(
                "{bad:?}: expected InvalidExclude, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[test]
fn files_non_utf8_name_fails_naming_it_unless_excluded() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    fs::write(&bad, "latin-1").unwrap();
    let err = FilesSource::new(dir.path().to_owned(), vec![])
        .unwrap()
        .snapshot(&mut CollectSink::default())
        .expect_err("must refuse");
    match &err {
        SourceError::NonUtf8Path { path } => assert_eq!(path, &bad),
        other => panic!("expected NonUtf8Path, got {other:?}"),
    }
    assert!(err.to_string().contains("caf"), "{err}");

    let mut sink = CollectSink::default();
    FilesSource::new(dir.path().to_owned(), vec!["caf*".into()])
        .unwrap()
        .snapshot(&mut sink)
        .unwrap();
    assert_eq!(sink.entries.len(), 1, "only the root: {:?}", sink.entries);
}

#[test]
fn files_unreadable_file_fails_naming_it() {
    // A read error mid-file: /proc/self/mem is a regular file whose first
    // bytes (address 0) are never mapped, so read() fails with EIO even for
    // root.
    let mem = PathBuf::from("/proc/self/mem");
    match FilesSource::new(mem.clone(), vec![])
        .unwrap()
        .snapshot(&mut CollectSink::default())
    {
        Err(SourceError::Io { path, .. }) => assert_eq!(path, mem),
        other => panic!("expected Io naming {}, got {other:?}", mem.display()),
    }
}

/// Set in the copy of this test binary that runs as `nobody`.
const UNPRIVILEGED: &str = "HOLDFAST_TEST_UNPRIVILEGED";

#[test]
fn files_a_file_we_may_not_open_fails_naming_it() {
    // Root may open anything, so as root (CI) the check runs in a copy of
    // this test as `nobody`.
    if common::is_root() {
        let out = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "files_a_file_we_may_not_open_fails_naming_it",
                "--exact",
                "--test-threads=1",
            ])
            .env(UNPRIVILEGED, "1")
            .env("TMPDIR", "/tmp")
            .output()
            .expect("setpriv runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "as nobody: {said}");
        assert!(said.contains("1 passed"), "the copy as nobody ran: {said}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    fs::write(&locked, "no").unwrap();
    set_mode(&locked, 0o000);
    assert!(
        fs::File::open(&locked).is_err(),
        "{} opened: this part must run unprivileged",
        locked.display()
    );
    match FilesSource::new(dir.path().to_owned(), vec![])
        .unwrap()
        .snapshot(&mut CollectSink::default())
    {
        Err(SourceError::Io { path, .. }) => assert_eq!(path, locked),
        other => panic!("expected Io naming {}, got {other:?}", locked.display()),
    }
}

/// Appends to the file it is reading, like a log being written during backup.
struct AppendingSink {
    path: PathBuf,
    got: Vec<u8>,
}

impl EntrySink for AppendingSink {
    fn dir(&mut self, _: &EntryMeta) -> Result<(), SinkError> {
        Ok(())
    }
    fn symlink(&mut self, _: &EntryMeta, _: &str) -> Result<(), SinkError> {
        Ok(())
    }
    fn file(&mut self, _: &EntryMeta, content: &mut dyn Read) -> Result<(), SinkError> {
        let mut head = [0u8; 4];
        content.read_exact(&mut head).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap()
            .write_all(b" and more")
            .unwrap();
        self.got.extend_from_slice(&head);
        content.read_to_end(&mut self.got).unwrap();
        Ok(())
    }
}

#[test]
fn files_a_file_growing_while_read_is_kept_as_read_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("growing.log");
    fs::write(&log, "first line").unwrap();
    let mut sink = AppendingSink {
        path: log.clone(),
        got: vec![],
    };
    let (md, logs) = with_logs(|| {
        FilesSource::new(dir.path().to_owned(), vec![])
            .unwrap()
            .snapshot(&mut sink)
            .unwrap()
    });
    assert_eq!(sink.got, b"first line and more");
    assert_eq!(md["changed_while_read"], 1);
    assert!(
        logs.contains("changed while being read") && logs.contains(&log.display().to_string()),
        "{logs}"
    );
}
