//! Continuous binlog archiving against a real MariaDB server of the test's
//! own (`common::mariadb::Server`: a temp datadir, a free port, binlogs
//! on), never the shared server on 3306. `holdfast binlog-archive` runs in
//! the foreground as an operator without the daemon would run it, with a
//! one-second flush interval; what it stored is read back in process with
//! the library's reading side (`read_binlog`, `archived`).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::bin::{command, exits_saying, ok, s, test_repo_key};
use common::mariadb::Server;
use holdfast::engine::mariadb::binlog::{self, Archived};
use holdfast::ids::Hash256;
use holdfast::plan::PlanName;
use holdfast::repository::Repository;
use holdfast::store::local::LocalStore;
use holdfast::store::{PutOptions, Store};

const FLUSH_SECS: u64 = 1;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A server, a plan archiving its binlogs into a local repository, and the
/// archiver's state folder.
struct Setup {
    server: Server,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let server = Server::start(&[]);
        let dir = tempfile::tempdir().unwrap();
        let plan = format!(
            "name: mdb\nsource: {{type: mariadb, host: 127.0.0.1, port: {}, user: root, archive: true}}\nrepository: {{url: {}}}\nschedule: {{backup: '0 1 * * *'}}\nlock: {{mode: compliance, days: 8}}\nretention: {{keep_daily: 7}}\n",
            server.port,
            dir.path().join("repo").display()
        );
        std::fs::write(dir.path().join("plan.yaml"), plan).unwrap();
        server.sql("CREATE DATABASE app; CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200))");
        Setup { server, dir }
    }

    fn plan(&self) -> PathBuf {
        self.dir.path().join("plan.yaml")
    }

    fn plan_name() -> PlanName {
        PlanName::new("mdb").unwrap()
    }

    /// `holdfast binlog-archive --plan … --state-dir … --json`, started.
    fn start_archiver(&self, run: &str) -> Archiver {
        self.start_archiver_with(run, &[])
    }

    /// [`Self::start_archiver`] with more environment variables.
    fn start_archiver_with(&self, run: &str, env: &[(&str, &str)]) -> Archiver {
        let log = self.dir.path().join(format!("archiver-{run}.log"));
        let child = command()
            .envs(env.iter().copied())
            .env("HOLDFAST_BINLOG_FLUSH_SECS", FLUSH_SECS.to_string())
            .args(["binlog-archive", "--plan", s(&self.plan()), "--json"])
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("holdfast runs");
        Archiver { child, log }
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::new(LocalStore::open(self.dir.path().join("repo")).unwrap())
    }

    fn archived(&self) -> Option<Archived> {
        let rt = rt();
        let repo = rt
            .block_on(Repository::open(self.store(), &test_repo_key()))
            .ok()?;
        Some(
            rt.block_on(binlog::archived(
                repo.store().as_ref(),
                repo.crypto(),
                &Self::plan_name(),
            ))
            .unwrap(),
        )
    }

    /// Binlog `file` as the archive gives it back, and whether whole.
    fn read(&self, file: &str) -> (Vec<u8>, bool) {
        let rt = rt();
        let repo = rt
            .block_on(Repository::open(self.store(), &test_repo_key()))
            .unwrap();
        let (r, bytes) = rt
            .block_on(binlog::read_binlog(
                repo.store().as_ref(),
                repo.crypto(),
                &Self::plan_name(),
                file,
                Vec::new(),
            ))
            .unwrap();
        (bytes, r.complete)
    }

    /// The server's own copy of binlog `file`.
    fn server_file(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.server.data().join(file)).unwrap()
    }

    fn server_logs(&self) -> Vec<String> {
        self.server
            .sql("SHOW BINARY LOGS")
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    }

    /// `PURGE BINARY LOGS TO file`, repeated until the server has really
    /// purged (it keeps binlogs its crash recovery still needs until the
    /// binlog checkpoint moves past them), at most 30 s.
    fn purge_to(&self, file: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.server.sql(&format!("PURGE BINARY LOGS TO '{file}'"));
            let logs = self.server_logs();
            if logs.first().map(String::as_str) == Some(file) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server still has {logs:?} 30 s after PURGE BINARY LOGS TO '{file}'"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn gtid_pos(&self) -> String {
        self.server
            .sql("SELECT @@gtid_binlog_pos")
            .trim()
            .to_string()
    }

    /// Waits until `ok` holds of the archive, at most `secs`.
    fn wait_archive(&self, what: &str, secs: u64, ok: impl Fn(&Archived) -> bool) -> Archived {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(a) = self.archived() {
                if ok(&a) {
                    return a;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what} not within {secs}s; archive: {a:#?}"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "{what}: no repository within {secs}s"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `file` is archived complete and equals the server's copy.
    fn wait_complete_and_equal(&self, file: &str) {
        self.wait_archive(&format!("{file} complete"), 60, |a| {
            a.files.iter().any(|f| f.file == file && f.complete)
        });
        let (bytes, complete) = self.read(file);
        assert!(complete);
        assert!(
            bytes == self.server_file(file),
            "archived {file} ({} bytes) differs from the server's ({} bytes)",
            bytes.len(),
            self.server_file(file).len()
        );
    }

    fn insert(&self, n: usize) {
        let values: Vec<String> = (0..n).map(|i| format!("('row {i}')")).collect();
        self.server.sql(&format!(
            "INSERT INTO app.t (v) VALUES {}",
            values.join(",")
        ));
    }
}

struct Archiver {
    child: Child,
    log: PathBuf,
}

impl Archiver {
    /// SIGTERM, as systemd stops it; exits 0 within 30 s with its report.
    fn stop(mut self) -> (serde_json::Value, String) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "binlog-archive did not stop within 30 s of SIGTERM: {}",
                self.said()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let said = self.said();
        assert!(status.success(), "{status:?}: {said}");
        let report =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{said}"));
        (report, said)
    }

    /// SIGKILL, as a crash or the OOM killer would.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.said()
    }

    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A write load in a thread until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn load(socket: &Path) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, socket) = (stop.clone(), socket.to_path_buf());
    let thread = std::thread::spawn(move || {
        let mut i = 0u64;
        while !s2.load(Ordering::Relaxed) {
            i += 1;
            let _ = common::mariadb::client_sql(
                &socket,
                &format!("INSERT INTO app.t (v) VALUES ('load {i}'), ('load {i} b')"),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Load {
        stop,
        thread: Some(thread),
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn completed_binlogs_are_archived_byte_for_byte_and_the_growing_one_within_seconds() {
    let st = Setup::new();
    let archiver = st.start_archiver("1");
    let writes = load(&st.server.socket());

    // Rotate under the write load: binlog.000001 is complete, and what the
    // repository holds is exactly the server's file.
    std::thread::sleep(Duration::from_secs(2));
    st.server.sql("FLUSH BINARY LOGS");
    st.wait_complete_and_equal("binlog.000001");

    // RPO: a committed transaction is in the repository within the flush
    // interval plus slack, long before the next rotation.
    drop(writes);
    st.insert(3);
    let gtid = st.gtid_pos();
    let committed = Instant::now();
    let a = st.wait_archive(&format!("GTID {gtid} archived"), FLUSH_SECS + 15, |a| {
        a.files
            .iter()
            .any(|f| f.file == "binlog.000002" && f.last_gtid.as_deref() == Some(&gtid))
    });
    let rpo = committed.elapsed();
    assert!(
        rpo < Duration::from_secs(FLUSH_SECS + 10),
        "RPO {rpo:?} for a {FLUSH_SECS}s flush interval"
    );
    let growing = a.files.iter().find(|f| f.file == "binlog.000002").unwrap();
    assert!(!growing.complete, "{growing:?}");
    assert!(growing.last_event.is_some() && growing.problem.is_none());
    // The parts hold a prefix of the server's file, ending on an event.
    // The parts hold a prefix of the server's file, ending on an event;
    // the one byte that differs is the in-use flag of the file's format
    // description event, which the server clears in what it streams (and
    // in its own file once it rotates).
    let (mut bytes, complete) = st.read("binlog.000002");
    assert!(!complete);
    let mut server = st.server_file("binlog.000002");
    for b in [&mut bytes, &mut server] {
        b[4 + 17] &= !1;
    }
    assert!(
        server.starts_with(&bytes),
        "archived parts of binlog.000002 ({} bytes) are no prefix of the server's file ({} bytes); first difference at {:?}",
        bytes.len(),
        server.len(),
        bytes.iter().zip(&server).position(|(a, b)| a != b)
    );

    // SIGTERM: pushes what is complete and reports, no gap.
    let (report, said) = archiver.stop();
    assert!(report["completed"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["parts"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["gap"], serde_json::json!([]), "{report}");
    assert!(!said.contains("ERROR"), "{said}");
    let a = st.archived().unwrap();
    assert!(a.gaps.is_empty(), "{a:#?}");
    let first = &a.files[0];
    assert_eq!(first.file, "binlog.000001");
    assert!(
        first.first_event.is_some() && first.first_gtid.is_some(),
        "{first:?}"
    );
}

#[test]
fn killed_and_restarted_the_archiver_leaves_no_gap_and_no_conflict() {
    let st = Setup::new();
    let archiver = st.start_archiver("1");
    st.insert(10);
    let gtid = st.gtid_pos();
    st.wait_archive("the first part", 20, |a| {
        a.files
            .iter()
            .any(|f| f.last_gtid.as_deref() == Some(gtid.as_str()))
    });
    // Crash it mid-file: the growing binlog has parts, not a whole object.
    archiver.kill();

    // The server goes on without it: more writes, two rotations.
    st.insert(10);
    st.server.sql("FLUSH BINARY LOGS");
    st.insert(10);
    st.server.sql("FLUSH BINARY LOGS");
    st.insert(10);
    let gtid = st.gtid_pos();

    // Restarted, it resumes after the parts already stored: every completed
    // binlog whole and equal to the server's, the growing one up to date.
    let archiver = st.start_archiver("2");
    for file in ["binlog.000001", "binlog.000002"] {
        st.wait_complete_and_equal(file);
    }
    st.wait_archive("the newest GTID", 20, |a| {
        a.files
            .iter()
            .any(|f| f.file == "binlog.000003" && f.last_gtid.as_deref() == Some(&gtid))
    });
    let (report, said) = archiver.stop();
    assert_eq!(report["gap"], serde_json::json!([]), "{report}");
    assert!(!said.contains("different content"), "{said}");
    let a = st.archived().unwrap();
    assert!(a.gaps.is_empty(), "{a:#?}");
    assert!(a.files.iter().all(|f| f.problem.is_none()), "{a:#?}");
    assert_eq!(
        a.files.iter().map(|f| f.file.as_str()).collect::<Vec<_>>(),
        ["binlog.000001", "binlog.000002", "binlog.000003"]
    );
}

#[test]
fn binlogs_purged_on_the_server_before_archiving_are_named_and_archiving_goes_on() {
    let st = Setup::new();
    let archiver = st.start_archiver("1");
    st.insert(5);
    st.server.sql("FLUSH BINARY LOGS");
    st.wait_complete_and_equal("binlog.000001");
    archiver.stop();

    // While the archiver is stopped the server rotates twice and purges
    // binlog.000002 and binlog.000003, which were never archived.
    st.insert(5);
    st.server.sql("FLUSH BINARY LOGS");
    st.insert(5);
    st.server.sql("FLUSH BINARY LOGS");
    st.insert(5);
    st.purge_to("binlog.000004");
    assert_eq!(st.server_logs(), ["binlog.000004"]);

    let archiver = st.start_archiver("2");
    let gtid = st.gtid_pos();
    st.wait_archive("binlog.000004 archived", 30, |a| {
        a.files
            .iter()
            .any(|f| f.file == "binlog.000004" && f.last_gtid.as_deref() == Some(&gtid))
    });
    let (report, said) = archiver.stop();
    // Named, in the log and the report; archiving went on from the oldest
    // binlog the server still had.
    assert_eq!(
        report["gap"],
        serde_json::json!(["binlog.000002", "binlog.000003"]),
        "{report}"
    );
    assert!(
        said.contains(
            "binlog.000002, binlog.000003 were purged on the server before holdfast archived them"
        ),
        "{said}"
    );
    // The archive itself shows the hole, from the repository alone: the
    // stopped archiver had stored binlog.000002 up to its stop, not its
    // end, and binlog.000003 not at all.
    let a = st.archived().unwrap();
    assert_eq!(a.gaps, ["binlog.000002"], "{a:#?}");
    let second = a.files.iter().find(|f| f.file == "binlog.000002").unwrap();
    assert!(!second.complete, "{second:?}");
    assert!(!a.files.iter().any(|f| f.file == "binlog.000003"), "{a:#?}");
}

#[test]
fn a_planted_foreign_object_at_a_binlog_key_does_not_stop_archiving() {
    let st = Setup::new();
    // Someone with write access to the bucket plants objects at the names
    // the archiver is about to use: the first binlog whole, and the first
    // part of the second.
    let store = st.store();
    for key in [
        "binlog/mdb/binlog.000001",
        "binlog/mdb/binlog.000002.part-0000000000000000",
    ] {
        let bytes = b"planted by an insider".to_vec();
        let opts = PutOptions {
            sha256: Hash256::digest(&bytes),
            retention: None,
        };
        rt().block_on(store.put(key, Bytes::from(bytes), &opts))
            .unwrap();
    }

    let archiver = st.start_archiver("1");
    st.insert(5);
    st.server.sql("FLUSH BINARY LOGS");
    st.insert(5);
    let gtid = st.gtid_pos();
    st.wait_complete_and_equal("binlog.000001");
    let a = st.wait_archive("binlog.000002's first part", 30, |a| {
        a.files
            .iter()
            .any(|f| f.file == "binlog.000002" && f.last_gtid.as_deref() == Some(&gtid))
    });
    assert!(a.files.iter().all(|f| f.problem.is_none()), "{a:#?}");
    let (report, said) = archiver.stop();
    assert_eq!(report["gap"], serde_json::json!([]), "{report}");
    assert!(said.contains("FOREIGN OBJECT"), "{said}");
    assert!(said.contains("binlog/mdb/binlog.000001"), "{said}");
}

#[test]
fn a_plan_that_does_not_archive_binlogs_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: files\nsource: {{type: files, path: {}}}\nrepository: {{url: {}}}\nschedule: {{backup: '0 1 * * *'}}\nlock: {{mode: compliance, days: 8}}\nretention: {{keep_daily: 7}}\n",
            dir.path().display(),
            dir.path().join("repo").display()
        ),
    )
    .unwrap();
    let out = command()
        .args(["binlog-archive", "--plan", s(&plan)])
        .output()
        .unwrap();
    exits_saying(&out, 2, "plan files does not archive binlogs");
}

#[test]
fn the_daemon_archives_binlogs_and_alerts_on_binlogs_purged_before_archiving() {
    use common::daemon::Daemon;
    use common::webhook::Receiver;

    let st = Setup::new();
    // Archived up to binlog.000001, then the archiver is down while the
    // server rotates twice and purges what holdfast never saw.
    let archiver = st.start_archiver("1");
    st.insert(5);
    st.server.sql("FLUSH BINARY LOGS");
    st.wait_complete_and_equal("binlog.000001");
    archiver.stop();
    st.insert(5);
    st.server.sql("FLUSH BINARY LOGS");
    st.insert(5);
    st.server.sql("FLUSH BINARY LOGS");
    st.purge_to("binlog.000004");
    st.insert(5);

    // The daemon runs the archiver for the plan: it names the gap on
    // /status, exports holdfast_binlog_gap = 1 and sends binlog_gap.
    let hook = Receiver::start();
    let mut d = Daemon::start(
        &st.plan(),
        &st.dir.path().join("daemon-state"),
        &["--alert-webhook", &hook.url, "--alert-repeat", "1h"],
    );
    d.wait_for("holdfast_binlog_gap = 1", |d| {
        d.metric("holdfast_binlog_gap{plan=\"mdb\"}") == Some(1.0)
    });
    let status = d.plan("mdb");
    assert_eq!(
        status["binlog"]["gap"],
        serde_json::json!(["binlog.000002", "binlog.000003"]),
        "{status}"
    );
    d.wait_for("a binlog_gap alert", |_| {
        hook.count("HoldfastBinlogGap", "mdb", "firing") >= 1
    });
    // Archiving goes on from the oldest binlog the server has: its newest
    // event reaches the archive within the default interval (10 s).
    d.wait_for("holdfast_binlog_archived_timestamp_seconds", |d| {
        d.metric("holdfast_binlog_archived_timestamp_seconds{plan=\"mdb\"}")
            .is_some()
    });
    d.signal("-TERM");
    assert!(d.wait_exit().success(), "{}", d.log());
    let a = st.archived().unwrap();
    assert!(a.files.iter().any(|f| f.file == "binlog.000004"), "{a:#?}");
}

#[test]
fn a_server_restart_ends_the_stream_and_the_archiver_resumes_on_its_own() {
    let mut st = Setup::new();
    let archiver = st.start_archiver("1");
    st.insert(5);
    let gtid = st.gtid_pos();
    st.wait_archive("the first rows", 20, |a| {
        a.files
            .iter()
            .any(|f| f.last_gtid.as_deref() == Some(gtid.as_str()))
    });

    // A clean restart: mariadb-binlog loses its connection and exits; the
    // server starts binlog.000002.
    st.server.stop();
    st.server.start_on(&[]);
    st.insert(5);
    let gtid = st.gtid_pos();

    // The archiver restarts it (with backoff) and goes on: binlog.000001
    // complete and equal to the server's, the new rows archived.
    st.wait_complete_and_equal("binlog.000001");
    st.wait_archive("the rows after the restart", 60, |a| {
        a.files
            .iter()
            .any(|f| f.file == "binlog.000002" && f.last_gtid.as_deref() == Some(&gtid))
    });
    let (report, said) = archiver.stop();
    assert!(report["restarts"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["gap"], serde_json::json!([]), "{report}");
    assert!(said.contains("mariadb-binlog exited"), "{said}");
    assert!(st.archived().unwrap().gaps.is_empty());
}

/// A binlog's record lists at most 100,000 parts, and a lightly loaded
/// server can keep one file open for weeks, a part every flush interval.
/// Well before the limit (here, `HOLDFAST_BINLOG_ROTATE_PARTS`: after 4
/// parts) the archiver has the server rotate, so the file completes with a
/// record that lists every part, and archiving goes on in the next file.
#[test]
fn a_binlog_growing_part_by_part_is_rotated_before_its_record_could_not_list_the_parts() {
    let st = Setup::new();
    let first = st.server_logs().last().unwrap().clone();
    let archiver = st.start_archiver_with(
        "1",
        &[
            ("HOLDFAST_BINLOG_ROTATE_PARTS", "4"),
            ("HOLDFAST_LOG", "info"),
        ],
    );
    // A trickle: a row, then a flush interval with nothing, so each part
    // holds one transaction.
    let deadline = Instant::now() + Duration::from_secs(60);
    while st.server_logs().last() == Some(&first) {
        assert!(
            Instant::now() < deadline,
            "the server never rotated {first} within 60 s: {}",
            archiver.said()
        );
        st.insert(1);
        std::thread::sleep(Duration::from_millis(FLUSH_SECS * 1000 + 300));
    }
    st.wait_complete_and_equal(&first);
    st.insert(1);
    let newest = st.server_logs().last().unwrap().clone();
    let gtid = st.gtid_pos();
    st.wait_archive("the next file's newest GTID", 30, |a| {
        a.files
            .iter()
            .any(|f| f.file == newest && f.last_gtid.as_deref() == Some(&gtid))
    });
    let (_, said) = archiver.stop();
    assert!(
        said.contains("asked the server to rotate (FLUSH BINARY LOGS)"),
        "{said}"
    );
}

/// Parts of at most this many bytes (`HOLDFAST_BINLOG_MAX_PART`), so a
/// binlog of a few MB shows what a 1 GiB one does with 64 MiB parts.
const SMALL_PART: u64 = 256 << 10;

/// Issue 12: a completed binlog was read whole into memory and uploaded
/// twice (its parts, then again whole). Now it is its parts, each at most
/// the part size, plus a small record; every byte is uploaded once; and a
/// point-in-time restore reads it back through the record.
#[test]
fn a_large_completed_binlog_is_stored_once_as_capped_parts_and_a_record_and_restores() {
    let st = Setup::new();
    ok(&["backup", "--plan", s(&st.plan())]);
    let archiver = st.start_archiver_with(
        "1",
        &[("HOLDFAST_BINLOG_MAX_PART", &SMALL_PART.to_string())],
    );
    // About 6 MB of binlog in one transaction (one flush would otherwise
    // make it one part), then more small ones and a rotation.
    st.server
        .sql("USE app; INSERT INTO app.t (v) SELECT REPEAT(CHAR(65 + seq % 26), 200) FROM seq_1_to_30000");
    st.insert(20);
    st.server.sql("FLUSH BINARY LOGS");
    st.insert(5);
    let logs = st.server_logs();
    let big = logs[logs.len() - 2].clone();
    let newest = logs[logs.len() - 1].clone();
    let gtid = st.gtid_pos();
    st.wait_complete_and_equal(&big);
    st.wait_archive("the newest GTID", 30, |a| {
        a.files
            .iter()
            .any(|f| f.file == newest && f.last_gtid.as_deref() == Some(&gtid))
    });
    let (report, said) = archiver.stop();
    assert!(!said.contains("ERROR"), "{said}");

    // From the repository: the big file is a record listing parts of at
    // most the part size that tile it, each one a listed object.
    let rt = rt();
    let repo = rt
        .block_on(Repository::open(st.store(), &test_repo_key()))
        .unwrap();
    let name = binlog::BinlogName::parse(&big).unwrap();
    let listed = rt
        .block_on(binlog::list(repo.store().as_ref(), &Setup::plan_name()))
        .unwrap();
    let (_, record) = rt
        .block_on(binlog::read_record(
            repo.store().as_ref(),
            repo.crypto(),
            &Setup::plan_name(),
            &name,
        ))
        .unwrap()
        .expect("a record for the completed binlog");
    let len = st.server_file(&big).len() as u64;
    assert_eq!(record.length, len);
    assert!(len > 8 * SMALL_PART, "{big} is only {len} bytes");
    assert!(
        record.parts.len() as u64 >= len.div_ceil(SMALL_PART),
        "{} parts for {len} bytes",
        record.parts.len()
    );
    assert!(
        record.parts.iter().all(|p| p.length <= SMALL_PART),
        "a part over {SMALL_PART} bytes: {:?}",
        record.parts.iter().map(|p| p.length).max()
    );
    let l = &listed[&name];
    assert!(l.complete, "{l:?}");
    for p in &record.parts {
        assert!(l.parts.contains(&p.start), "part at {} not listed", p.start);
    }

    // Every byte uploaded once: the report's bytes are the archived
    // binlogs' lengths, not twice the completed one's.
    let a = st.archived().unwrap();
    let archived: u64 = a.files.iter().map(|f| f.bytes).sum();
    assert_eq!(report["bytes"].as_u64().unwrap(), archived, "{report}");
    assert!(a.files.iter().all(|f| f.problem.is_none()), "{a:#?}");

    // A restore to the newest archived transaction replays through it.
    let want = st.server.sql("SELECT COUNT(*), MAX(id) FROM app.t");
    let to = st.dir.path().join("restored");
    let port = common::free_port().to_string();
    let out = command()
        .args([
            "restore",
            "--plan",
            s(&st.plan()),
            "--latest",
            "--to",
            s(&to),
        ])
        .args(["--start", "--port", &port, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["binlogs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == big.as_str()),
        "{report}"
    );
    let got = common::mariadb::client_sql(
        &to.join("mariadbd.sock"),
        "SELECT COUNT(*), MAX(id) FROM app.t",
    );
    let pid = std::fs::read_to_string(to.join("mariadbd.pid")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{}", pid.trim())).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got.unwrap(), want, "{report}");
}
