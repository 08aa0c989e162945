//! One runbook scenario for every engine that runs here, through the built
//! binary and a plan file on a local repository: back up, change the source,
//! back up again, restore each snapshot into a new place (and, where the
//! engine archives its log, the point in time between the two backups), and
//! check each restore equals the source as it was at that point.
//!
//! An engine joins with one `Engine` implementation and one `#[test]`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::bin::{holdfast, json_of, s};
use common::files::{set_mode, set_mtime, tree_listing};
use common::postgres::{now_at, state, Cluster, Restored};

/// What the scenario needs from one kind of source.
trait Engine {
    /// The plan backing the source up into a local repository.
    fn plan(&self) -> &Path;

    /// A path nothing uses yet, for a restore to create.
    fn scratch(&self, name: &str) -> PathBuf;

    /// Changes the source so that it differs from every earlier state.
    fn change(&mut self, round: u32);

    /// The source's contents now: equal strings mean equal data.
    fn state(&self) -> String;

    /// The source's clock now (RFC 3339), where the engine can restore to a
    /// point in time; `None` where it restores snapshots only.
    fn now(&self) -> Option<String> {
        None
    }

    /// Arguments a restore into `to` needs beyond the plan, target and point.
    fn restore_args(&mut self, _to: &Path) -> Vec<String> {
        Vec::new()
    }

    /// The contents of what a restore put at `to`, compared with `state`.
    fn restored_state(&mut self, to: &Path) -> String;

    /// holdfast as the OS user that runs it for this engine.
    fn holdfast(&self, args: &[&str]) -> Output {
        holdfast(args)
    }
}

/// A point a restore goes to: `--snapshot ID` or `--at TIME`.
fn restore(engine: &mut dyn Engine, point: [&str; 2], to: &Path) -> String {
    let plan = s(engine.plan()).to_string();
    let mut args: Vec<String> = [
        "restore",
        "--plan",
        &plan,
        point[0],
        point[1],
        "--to",
        s(to),
    ]
    .map(String::from)
    .to_vec();
    args.extend(engine.restore_args(to));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = engine.holdfast(&args);
    assert!(
        out.status.success(),
        "holdfast {args:?}: {}",
        common::bin::text(&out)
    );
    engine.restored_state(to)
}

/// Back up, change, (note a point in time,) change, back up; restore each
/// snapshot and the point in time; each equals the source as it was then.
fn back_up_change_and_restore_every_point(engine: &mut dyn Engine) {
    let plan = s(engine.plan()).to_string();
    let backup = |engine: &dyn Engine| {
        let report = json_of(&engine.holdfast(&["backup", "--plan", &plan, "--json"]));
        report["snapshot"].as_str().unwrap().to_string()
    };

    let first = backup(engine);
    let at_first = engine.state();
    engine.change(1);
    // Commits a clear second away on either side of the point in time.
    let between = engine.now().map(|_| {
        std::thread::sleep(Duration::from_millis(1100));
        let t = engine.now().unwrap();
        let at_t = engine.state();
        std::thread::sleep(Duration::from_millis(1100));
        (t, at_t)
    });
    engine.change(2);
    let second = backup(engine);
    let at_second = engine.state();
    assert_ne!(at_first, at_second, "the change changed nothing");
    if let Some((_, at_t)) = &between {
        assert!(
            at_t != &at_first && at_t != &at_second,
            "the point in time is not between two different states: {at_t}"
        );
    }

    let listed = json_of(&engine.holdfast(&["snapshots", "--plan", &plan, "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    for (n, (id, expected)) in [(&first, &at_first), (&second, &at_second)]
        .into_iter()
        .enumerate()
    {
        let to = engine.scratch(&format!("restored-{}", n + 1));
        let restored = restore(engine, ["--snapshot", id], &to);
        assert_eq!(
            &restored, expected,
            "snapshot {id} does not restore the source as it was when it was taken"
        );
    }
    if let Some((t, at_t)) = between {
        let to = engine.scratch("restored-at-t");
        let restored = restore(engine, ["--at", &t], &to);
        assert_eq!(
            restored, at_t,
            "a restore to {t} does not give the source as it was then"
        );
    }
}

/// A plan for `source_yaml` in `dir`, backing up into `dir/repo`.
fn local_plan(dir: &Path, source_yaml: &str) -> PathBuf {
    let plan = dir.join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: conformance\nsource: {source_yaml}\nrepository: {{url: {}}}\nschedule: {{backup: '0 * * * *'}}\nlock: {{mode: none}}\nretention: {{keep_last: 10}}\n",
            dir.join("repo").display()
        ),
    )
    .unwrap();
    plan
}

// ------------------------------------------------------------------- sqlite

struct Sqlite {
    dir: tempfile::TempDir,
    db: PathBuf,
    plan: PathBuf,
}

impl Sqlite {
    fn new() -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        common::make_db(&db, 20_000);
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(
                "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, balance INTEGER);
                 INSERT INTO customers SELECT id, customer, id * 3 FROM orders WHERE id <= 977;",
            )
            .unwrap();
        let plan = local_plan(
            dir.path(),
            &format!("{{type: sqlite, path: {}}}", db.display()),
        );
        Sqlite { dir, db, plan }
    }
}

impl Engine for Sqlite {
    fn plan(&self) -> &Path {
        &self.plan
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    /// New rows, changed rows, deleted rows, a new table and a dropped one.
    fn change(&mut self, round: u32) {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        common::add_rows(&conn, 500);
        conn.execute_batch(&format!(
            "UPDATE customers SET balance = balance + {round} WHERE id % 7 = {round};
             DELETE FROM orders WHERE id % 11 = {round};
             CREATE TABLE refunds_{round}(id INTEGER PRIMARY KEY, amount REAL);
             INSERT INTO refunds_{round} SELECT id, amount FROM orders WHERE id % 13 = 0;
             DROP TABLE IF EXISTS refunds_{};",
            round - 1
        ))
        .unwrap();
    }

    fn state(&self) -> String {
        common::sqlite_state(&self.db)
    }

    fn restored_state(&mut self, to: &Path) -> String {
        common::sqlite_state(to)
    }
}

#[test]
fn sqlite_restores_each_snapshot_as_it_was() {
    back_up_change_and_restore_every_point(&mut Sqlite::new());
}

// -------------------------------------------------------------------- files

struct Files {
    dir: tempfile::TempDir,
    src: PathBuf,
    plan: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let p = |rel: &str| src.join(rel);
        for d in ["etc/conf.d", "var/data", "empty"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        std::fs::write(p("etc/app.conf"), "listen = 8080\n").unwrap();
        std::fs::write(p("etc/conf.d/secret"), "hunter2").unwrap();
        std::fs::write(p("var/data/big.bin"), common::data(11, 3_000_000)).unwrap();
        std::fs::write(p("var/empty-file"), "").unwrap();
        std::fs::write(p("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("etc/app.conf", p("current.conf")).unwrap();
        set_mode(&p("etc/conf.d/secret"), 0o600);
        set_mode(&p("run.sh"), 0o755);
        set_mode(&p("empty"), 0o700);
        set_mtime(&p("etc/app.conf"), 1_600_000_000, 123);
        let plan = local_plan(
            dir.path(),
            &format!("{{type: files, path: {}}}", src.display()),
        );
        Files { dir, src, plan }
    }
}

impl Engine for Files {
    fn plan(&self) -> &Path {
        &self.plan
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A rewritten file, a new one, a removed one, a new mode, a moved link
    /// and a few changed bytes in the middle of the big file.
    fn change(&mut self, round: u32) {
        let p = |rel: &str| self.src.join(rel);
        std::fs::write(p("etc/app.conf"), format!("listen = {}\n", 8080 + round)).unwrap();
        std::fs::write(
            p(&format!("var/new-{round}")),
            common::data(round as u64, 5000),
        )
        .unwrap();
        let _ = std::fs::remove_file(p(&format!("var/new-{}", round - 1)));
        set_mode(&p("run.sh"), [0o755, 0o700, 0o750][round as usize % 3]);
        std::fs::remove_file(p("current.conf")).unwrap();
        std::os::unix::fs::symlink(format!("var/new-{round}"), p("current.conf")).unwrap();
        let mut big = std::fs::read(p("var/data/big.bin")).unwrap();
        big[1_500_000 + round as usize] ^= 0xff;
        std::fs::write(p("var/data/big.bin"), big).unwrap();
    }

    fn state(&self) -> String {
        tree_listing(&self.src)
    }

    fn restored_state(&mut self, to: &Path) -> String {
        tree_listing(to)
    }
}

#[test]
fn files_restores_each_snapshot_as_it_was() {
    back_up_change_and_restore_every_point(&mut Files::new());
}

// ----------------------------------------------------------------- postgres

/// A cluster archiving its WAL into the plan; restores are started on ports
/// of their own, without archiving (scratch copies must not add a timeline
/// later restores would follow), and stopped at the end.
struct Postgres {
    /// First, so the restored servers stop before the cluster's folder,
    /// which holds theirs, goes.
    restored: Vec<(PathBuf, u16, Restored)>,
    pg: Cluster,
}

impl Postgres {
    fn new() -> Postgres {
        let pg = Cluster::start_with("{mode: none}", "{keep_last: 10}");
        pg.sql(
            "CREATE TABLE orders(id serial PRIMARY KEY, customer int, note text);
             INSERT INTO orders(customer, note) SELECT i % 97, md5(i::text) FROM generate_series(1, 20000) i;
             CREATE TABLE customers AS SELECT i AS id, 'customer ' || i AS name, 0 AS balance FROM generate_series(1, 97) i;",
        );
        Postgres {
            restored: Vec::new(),
            pg,
        }
    }
}

impl Engine for Postgres {
    fn plan(&self) -> &Path {
        &self.pg.plan
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.pg.path(name)
    }

    /// New rows, changed rows, deleted rows, a new table and a dropped one.
    fn change(&mut self, round: u32) {
        self.pg.sql(&format!(
            "INSERT INTO orders(customer, note) SELECT i % 97, 'round {round} ' || i FROM generate_series(1, 1000) i;
             UPDATE customers SET balance = balance + {round} WHERE id % 7 = {round};
             DELETE FROM orders WHERE id % 11 = {round};
             CREATE TABLE refunds_{round} AS SELECT id, customer FROM orders WHERE id % 13 = 0;
             DROP TABLE IF EXISTS refunds_{};",
            round - 1
        ));
    }

    fn state(&self) -> String {
        state(self.pg.port())
    }

    fn now(&self) -> Option<String> {
        Some(now_at(self.pg.port()))
    }

    fn restore_args(&mut self, to: &Path) -> Vec<String> {
        let port = common::free_port();
        self.restored.push((
            to.to_path_buf(),
            port,
            Restored {
                data: to.to_path_buf(),
            },
        ));
        ["--start", "--port", &port.to_string(), "--no-archive"]
            .map(String::from)
            .to_vec()
    }

    fn restored_state(&mut self, to: &Path) -> String {
        let (_, port, _) = self.restored.iter().find(|(p, ..)| p == to).unwrap();
        state(*port)
    }

    fn holdfast(&self, args: &[&str]) -> Output {
        self.pg.holdfast(args)
    }
}

#[test]
fn postgres_restores_each_base_backup_and_a_point_in_time_between_them() {
    back_up_change_and_restore_every_point(&mut Postgres::new());
}

// ------------------------------------------------------------------ mariadb

struct Mariadb {
    server: common::mariadb::Server,
    plan: PathBuf,
    /// `holdfast binlog-archive` for the plan, so a point in time restores.
    _archiver: common::mariadb::Archiver,
}

impl Mariadb {
    fn new() -> Mariadb {
        let server = common::mariadb::Server::start(&[]);
        server.sql(
            "CREATE DATABASE app;
             USE app;
             CREATE TABLE app.customers(id INT PRIMARY KEY, name VARCHAR(64), balance BIGINT) ENGINE=InnoDB;
             INSERT INTO app.customers SELECT seq, CONCAT('customer ', seq), seq * 3 FROM seq_1_to_977;
             CREATE TABLE app.orders(id INT PRIMARY KEY AUTO_INCREMENT, customer INT, amount DECIMAL(10,2)) ENGINE=InnoDB;
             INSERT INTO app.orders(customer, amount) SELECT seq % 977 + 1, seq / 7 FROM seq_1_to_20000;",
        );
        let plan = local_plan(server.dir.path(), &server.source_yaml());
        let _archiver =
            common::mariadb::Archiver::start(&plan, &server.dir.path().join("archiver"));
        Mariadb {
            server,
            plan,
            _archiver,
        }
    }
}

/// Stops a server `restore --start` left running on `datadir`.
fn stop_restored_mariadb(datadir: &Path) {
    if let Ok(pid) = std::fs::read_to_string(datadir.join("mariadbd.pid")) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", pid.trim()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{}", pid.trim())).exists()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Engine for Mariadb {
    fn plan(&self) -> &Path {
        &self.plan
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.server.dir.path().join(name)
    }

    /// New rows, changed rows, deleted rows, a new table and a dropped one.
    fn change(&mut self, round: u32) {
        self.server.sql(&format!(
            "USE app;
             INSERT INTO app.orders(customer, amount) SELECT seq % 977 + 1, seq / 3 FROM seq_1_to_500;
             UPDATE app.customers SET balance = balance + {round} WHERE id % 7 = {round};
             DELETE FROM app.orders WHERE id % 11 = {round};
             CREATE TABLE app.refunds_{round}(id INT PRIMARY KEY, amount DECIMAL(10,2));
             INSERT INTO app.refunds_{round} SELECT id, amount FROM app.orders WHERE id % 13 = 0;
             DROP TABLE IF EXISTS app.refunds_{};",
            round - 1
        ));
    }

    fn state(&self) -> String {
        format!("{:?}", self.server.checksums("app"))
    }

    fn now(&self) -> Option<String> {
        Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    fn restore_args(&mut self, _to: &Path) -> Vec<String> {
        // A point in time needs the binlogs up to it in the archive.
        common::mariadb::wait_archived(&self.server, "conformance");
        vec![
            "--start".into(),
            "--port".into(),
            common::free_port().to_string(),
        ]
    }

    fn restored_state(&mut self, to: &Path) -> String {
        let state = format!(
            "{:?}",
            common::mariadb::checksums_at(&to.join("mariadbd.sock"), "app")
        );
        stop_restored_mariadb(to);
        state
    }
}

#[test]
fn mariadb_restores_each_physical_backup_and_a_point_in_time_between_them() {
    back_up_change_and_restore_every_point(&mut Mariadb::new());
}
