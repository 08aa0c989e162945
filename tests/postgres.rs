//! PostgreSQL WAL archiving against a real PostgreSQL 15 cluster of the
//! test's own (initdb into a temp folder, a free port, `archive_command` =
//! the built holdfast), never the shared server on 5432.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(program: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", program])
        .args(args)
        .output()
        .expect("runuser runs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cluster that archives through `holdfast wal-push` into a local repository.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    plan: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let root = dir.path();
        let plan = root.join("pg.yaml");
        std::fs::write(
            &plan,
            format!(
                "name: pg\nsource: {{type: postgres, host: 127.0.0.1, port: {port}, user: postgres}}\nrepository: {{url: {repo}}}\nschedule: {{backup: '0 1 * * *'}}\nlock: {{mode: compliance, days: 8}}\nretention: {{keep_daily: 7}}\n",
                repo = root.join("repo").display()
            ),
        )
        .unwrap();
        std::fs::create_dir(root.join("repo")).unwrap();
        chown_postgres(root);
        let data = root.join("data");
        let out = as_postgres(
            &format!("{PG_BIN}/initdb"),
            &[
                "-D",
                s(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\nwal_level = replica\narchive_mode = on\narchive_command = 'HOLDFAST_LOG=warn {BIN} wal-push --plan {plan} %p'\nfsync = off\n",
            root = root.display(),
            plan = plan.display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        let cluster = Cluster { dir, port, plan };
        let out = as_postgres(
            &format!("{PG_BIN}/pg_ctl"),
            &["-D", s(&data), "-l", s(&cluster.path("log")), "-w", "start"],
        );
        assert!(out.status.success(), "pg_ctl start: {}", cluster.log());
        cluster
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }

    fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAtqc",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Writes some rows and switches to a new WAL segment; returns the
    /// segment that was switched away from.
    fn fill_segment(&self, n: u32) -> String {
        self.sql(&format!(
            "CREATE TABLE IF NOT EXISTS orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, {}) i",
            1000 * n
        ));
        self.sql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until `segment` is archived; panics with the server log if not.
    fn wait_archived(&self, segment: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            if last.as_str() >= segment && !last.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{segment} not archived (last: {last}); server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn archived(&self) -> Vec<String> {
        let dir = self.path("repo/objects/wal/pg");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn holdfast(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("HOLDFAST_LOG", "warn")
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(
            &format!("{PG_BIN}/pg_ctl"),
            &["-D", s(&self.path("data")), "-m", "immediate", "-w", "stop"],
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn chown_postgres(p: &Path) {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres", s(p)])
        .output()
        .unwrap();
    assert!(out.status.success());
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

#[test]
fn wal_push_archives_each_segment_and_wal_fetch_restores_it_checked() {
    let pg = Cluster::start();
    let mut segments = Vec::new();
    for i in 1..=3 {
        segments.push(pg.fill_segment(i));
    }
    let last = segments.last().unwrap().clone();
    pg.wait_archived(&last, Duration::from_secs(60));
    let archived = pg.archived();
    for seg in &segments {
        assert!(archived.contains(seg), "{seg} missing from {archived:?}");
    }

    // wal-fetch gives back exactly what PostgreSQL wrote.
    let plan = s(&pg.plan).to_string();
    let original = pg.path(&format!("data/pg_wal/{last}"));
    let fetched = pg.path("fetched");
    let out = pg.holdfast(&["wal-fetch", "--plan", &plan, &last, s(&fetched)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read(&fetched).unwrap() == std::fs::read(&original).unwrap(),
        "fetched {last} differs from pg_wal"
    );

    // Pushing the same file again is fine (PostgreSQL retries after a crash).
    let out = pg.holdfast(&["wal-push", "--plan", &plan, s(&original), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["already_archived"], true);

    // The same name with other content is refused, loudly.
    std::fs::create_dir(pg.path("other")).unwrap();
    let forged = pg.path(&format!("other/{last}"));
    let mut bytes = std::fs::read(&original).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&forged, &bytes).unwrap();
    let out = pg.holdfast(&["wal-push", "--plan", &plan, s(&forged)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("already archived with different content"),
        "{}",
        text(&out)
    );

    // Not archived: exit 1, so recovery ends there.
    let out = pg.holdfast(&[
        "wal-fetch",
        "--plan",
        &plan,
        "0000000100000000000000FF",
        s(&pg.path("nope")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not in the archive"));
    assert!(!pg.path("nope").exists());

    // Corrupt in the repository: exit 126, so recovery stops instead of
    // ending early; the segment is named and nothing is written.
    let object = pg.path(&format!("repo/objects/wal/pg/{}", segments[0]));
    let mut stored = std::fs::read(&object).unwrap();
    let at = stored.len() - 20;
    stored[at] ^= 0x55;
    std::fs::remove_file(&object).unwrap();
    std::fs::write(&object, &stored).unwrap();
    let out = pg.holdfast(&[
        "wal-fetch",
        "--plan",
        &plan,
        &segments[0],
        s(&pg.path("bad")),
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("wal/pg/{} is corrupt", segments[0])),
        "{}",
        text(&out)
    );
    assert!(!pg.path("bad").exists());
}

#[test]
fn nothing_is_lost_while_the_store_is_down() {
    let pg = Cluster::start();
    let first = pg.fill_segment(1);
    pg.wait_archived(&first, Duration::from_secs(60));

    // The store goes away: the repository cannot be written.
    let repo = pg.path("repo");
    let out = Command::new("chmod")
        .args(["000", s(&repo)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut during = Vec::new();
    for i in 0..3 {
        during.push(pg.fill_segment(i + 2));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(
            Instant::now() < deadline,
            "archive_command never failed:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = pg.log();
    assert!(log.contains("archive command failed"), "{log}");
    assert!(
        log.contains("unable to archive"),
        "holdfast's reason reaches the server log:\n{log}"
    );

    // Back: PostgreSQL retries, and every segment arrives, in order, none skipped.
    let out = Command::new("chmod")
        .args(["700", s(&repo)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let last = during.last().unwrap().clone();
    pg.wait_archived(&last, Duration::from_secs(120));
    let archived = pg.archived();
    let position = |seg: &str| u64::from_str_radix(&seg[16..], 16).unwrap();
    for seg in during.iter().chain(std::iter::once(&first)) {
        assert!(archived.contains(seg), "{seg} missing from {archived:?}");
    }
    let segs: Vec<u64> = archived
        .iter()
        .filter(|n| n.len() == 24)
        .map(|n| position(n))
        .collect();
    for pair in segs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap in the archive: {archived:?}");
    }
}
