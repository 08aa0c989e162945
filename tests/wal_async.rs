//! `wal-push --async`: PostgreSQL's `archive_command` answered from what a
//! pusher running ahead has stored. These tests play the server's archiver
//! over a `pg_wal` folder of their own (files, `archive_status/*.ready`,
//! one `archive_command` at a time, `.ready` renamed `.done` after each
//! success), with the real binary and a local repository;
//! `tests/postgres.rs` runs it under a real server and restores from it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::bin::{command, json_of, s, said_by, text};

/// A data directory with `pg_wal/` and a plan `pg` archiving from it.
struct Server {
    dir: tempfile::TempDir,
}

impl Server {
    fn new(repository: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/pg_wal/archive_status")).unwrap();
        let repository = repository.replace("ROOT", s(dir.path()));
        std::fs::write(
            dir.path().join("pg.yaml"),
            format!("name: pg\nsource: {{type: postgres, host: 127.0.0.1, port: 5432, user: postgres}}\nrepository: {repository}\nschedule: {{backup: '0 1 * * *'}}\nlock: {{mode: compliance, days: 8}}\nretention: {{keep_daily: 7}}\n"),
        )
        .unwrap();
        Server { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Segment `n` of timeline 1: 1 MiB of bytes no other segment has.
    /// `ready`: completed and waiting to be archived.
    fn segment(&self, n: u32, ready: bool) -> (String, Vec<u8>) {
        let name = format!("{:024X}", (1u128 << 64) | n as u128);
        let bytes: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(n * 7919) >> 13) as u8)
            .collect();
        std::fs::write(self.path(&format!("data/pg_wal/{name}")), &bytes).unwrap();
        if ready {
            std::fs::write(self.status(&name, "ready"), b"").unwrap();
        }
        (name, bytes)
    }

    fn status(&self, name: &str, what: &str) -> PathBuf {
        self.path(&format!("data/pg_wal/archive_status/{name}.{what}"))
    }

    /// `archive_command` for `name`, run from the data directory as the
    /// server runs it.
    fn archive(&self, name: &str, extra: &[&str]) -> Output {
        command()
            .current_dir(self.path("data"))
            .args(["wal-push", "--async", "--spool", s(&self.path("spool"))])
            .args(["--plan", s(&self.path("pg.yaml")), "--json"])
            .args(extra)
            .arg(format!("pg_wal/{name}"))
            .output()
            .unwrap()
    }

    /// What the archiver does after a success.
    fn done(&self, name: &str) {
        std::fs::rename(self.status(name, "ready"), self.status(name, "done")).unwrap();
    }

    fn fetch(&self, name: &str) -> Vec<u8> {
        let to = self.path(&format!("fetched-{name}"));
        let out = command()
            .args([
                "wal-fetch",
                "--plan",
                s(&self.path("pg.yaml")),
                name,
                s(&to),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        std::fs::read(to).unwrap()
    }

    /// The plan's spool folder for this server (created by the first
    /// `archive_command`).
    fn spool(&self) -> PathBuf {
        let plan = self.path("spool/pg");
        let mut servers: Vec<_> = std::fs::read_dir(&plan)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(servers.len(), 1, "{servers:?}");
        servers.pop().unwrap()
    }

    /// Waits until the pusher has logged that it is done, `times` times in
    /// all.
    fn wait_pusher_done(&self, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(self.spool().join("pusher.log")).unwrap_or_default();
            if log.matches("pusher done").count() >= times {
                return log;
            }
            assert!(Instant::now() < deadline, "the pusher never ended:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn records(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ok") || n.ends_with(".error"))
        .collect();
    names.sort();
    names
}

#[test]
fn each_archive_command_is_answered_from_what_the_pusher_stored_ahead_and_fetches_back_exact() {
    let server = Server::new("{url: ROOT/repo, encryption: none}");
    let segments: Vec<(String, Vec<u8>)> = (1..=6).map(|n| server.segment(n, true)).collect();

    for (name, bytes) in &segments {
        let out = server.archive(name, &["--workers", "3"]);
        let report = json_of(&out);
        assert_eq!(report["file"], name.as_str(), "{report}");
        assert_eq!(report["object"], format!("wal/pg/{name}"), "{report}");
        assert_eq!(report["bytes"], bytes.len() as u64, "{report}");
        // Stored by the pusher, not by the command itself.
        assert_eq!(report["pushed_by"], "pusher", "{report}");
        server.done(name);
    }
    for (name, bytes) in &segments {
        assert!(server.fetch(name) == *bytes, "{name} fetched back differs");
    }
    let log = server.wait_pusher_done(1);
    assert_eq!(log.matches("WAL archived ahead").count(), 6, "{log}");
    // Every record was answered and removed.
    assert_eq!(records(&server.spool()), Vec::<String>::new());
}

#[test]
fn a_record_for_other_content_is_not_trusted_and_the_file_is_stored_by_the_command_itself() {
    let server = Server::new("{url: ROOT/repo, encryption: none}");
    let (first, _) = server.segment(1, true);
    assert!(server.archive(&first, &[]).status.success());
    server.done(&first);
    server.wait_pusher_done(1);

    // Segment 2 is not marked ready (the pusher never sees it), and the spool
    // holds a record of the right size and name for other bytes: left from a
    // data directory that is gone, say.
    let (second, bytes) = server.segment(2, false);
    let planted = format!(
        "{{\"size\":{},\"sha256\":\"{}\",\"object\":\"wal/pg/{second}\"}}",
        bytes.len(),
        "ab".repeat(32)
    );
    std::fs::write(server.spool().join(format!("{second}.ok")), planted).unwrap();
    let out = server.archive(&second, &[]);
    let report = json_of(&out);
    assert_eq!(report["pushed_by"], "this_command", "{report}");
    assert!(
        text(&out).contains("not trusted"),
        "the stale record is named: {}",
        text(&out)
    );
    assert!(
        server.fetch(&second) == bytes,
        "{second} fetched back differs"
    );
    assert_eq!(records(&server.spool()), Vec::<String>::new());
}

#[test]
fn a_repository_the_pusher_cannot_open_fails_archive_command_with_the_reason_at_once() {
    // The repository's folder would be inside a regular file.
    let server = Server::new("{url: ROOT/a-file/repo, encryption: none}");
    std::fs::write(server.path("a-file"), b"not a folder").unwrap();
    let (name, _) = server.segment(1, true);
    let started = Instant::now();
    let out = server.archive(&name, &["--timeout", "50s"]);
    let said = said_by(&out, 1);
    assert!(
        said.contains(&format!("unable to archive pg_wal/{name} for plan pg"))
            && said.contains("PostgreSQL keeps it and retries")
            && said.contains("the pusher could not store it")
            && said.contains("a-file"),
        "{said}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "answered only at the timeout"
    );
    // Nothing was stored, nothing recorded as stored; the server retries.
    assert!(server.status(&name, "ready").exists());
    assert_eq!(records(&server.spool()), Vec::<String>::new());
}

#[test]
fn a_file_the_store_refuses_is_reported_and_tried_again_on_the_next_request() {
    let server = Server::new("{url: ROOT/repo, encryption: none}");
    let (name, bytes) = server.segment(1, true);
    // Archived before with other content under the same name: the store
    // must refuse this one, and say so to the server.
    let other = server.path("other");
    std::fs::create_dir(&other).unwrap();
    let mut changed = bytes.clone();
    changed[100] ^= 0xff;
    std::fs::write(other.join(&name), &changed).unwrap();
    let out = command()
        .args(["wal-push", "--plan", s(&server.path("pg.yaml"))])
        .arg(other.join(&name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let said = said_by(&server.archive(&name, &[]), 1);
    assert!(
        said.contains("the pusher could not store it")
            && said.contains("already archived with different content"),
        "{said}"
    );
    // The error was read once; the next request asks the pusher again.
    assert_eq!(records(&server.spool()), Vec::<String>::new());
    let said = said_by(&server.archive(&name, &[]), 1);
    assert!(
        said.contains("already archived with different content"),
        "{said}"
    );
    assert!(server.fetch(&name) == changed, "the archived file was kept");
}
