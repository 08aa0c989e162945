//! MariaDB physical backups against a real `mariadbd` of the test's own
//! (`tests/common/mariadb.rs`: a temp data directory, a free port, binlogs
//! on; never the shared server on 3306), through the built binary, as
//! on-call would run it: back up under load, restore into a new data
//! directory and start it, and see every committed row.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::bin::{command, json_of, s, said_by, text};
use common::mariadb::{checksums_at, client_sql, wait_archived, Archiver, Server};

/// A plan `maria` for `server` into `dir/repo` (encrypted; the test runner
/// gives every holdfast the test key).
fn plan(server: &Server, source: &str) -> PathBuf {
    let file = server.dir.path().join("maria.yaml");
    std::fs::write(
        &file,
        format!(
            "name: maria\nsource: {source}\nrepository: {{url: {}}}\nschedule: {{backup: '0 * * * *'}}\nlock: {{mode: none}}\nretention: {{keep_last: 10}}\n",
            server.dir.path().join("repo").display()
        ),
    )
    .unwrap();
    file
}

fn run(args: &[&str]) -> std::process::Output {
    command().args(args).output().unwrap()
}

/// Stops a server `restore --start` left running on `datadir`.
fn stop_restored(datadir: &Path) {
    let pid = std::fs::read_to_string(datadir.join("mariadbd.pid")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{}", pid.trim())).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "restored mariadbd did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn setup(server: &Server) {
    server.sql(
        "CREATE DATABASE app; USE app;
         CREATE TABLE accounts(id INT PRIMARY KEY, owner VARCHAR(200), balance BIGINT) ENGINE=InnoDB;
         INSERT INTO accounts SELECT seq, CONCAT(MD5(seq), SHA1(seq), MD5(seq * 7)), seq * 100 FROM seq_1_to_100000;
         CREATE TABLE events(id BIGINT PRIMARY KEY AUTO_INCREMENT, payload VARCHAR(200)) ENGINE=InnoDB;
         CREATE TABLE notes(id INT PRIMARY KEY, body TEXT) ENGINE=Aria;
         INSERT INTO notes SELECT seq, REPEAT('n', 100) FROM seq_1_to_300;",
    );
}

/// Inserts into app.events one row per transaction until stopped.
fn write_load(server: &Server, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let socket = server.socket();
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            client_sql(
                &socket,
                "INSERT INTO app.events(payload) VALUES (REPEAT('e', 150)); INSERT INTO app.events(payload) VALUES ('x');",
            )
            .unwrap();
            n += 2;
        }
        n
    })
}

#[test]
fn a_backup_under_write_load_restores_to_a_consistent_started_server_and_a_repeat_stores_little() {
    let server = Server::start(&[]);
    setup(&server);
    let plan = plan(&server, &server.source_yaml());
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(&server, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let first = json_of(&run(&["backup", "--plan", s(&plan), "--json"]));
    stop.store(true, Ordering::SeqCst);
    let inserted = load.join().unwrap();
    assert!(inserted > 0);
    let accounts = server.checksums("app")["accounts"].clone();

    // Restore into a new data directory and start it.
    let to = server.dir.path().join("restored");
    let port = common::free_port();
    let out = run(&[
        "restore",
        "--plan",
        s(&plan),
        "--to",
        s(&to),
        "--start",
        "--port",
        &port.to_string(),
        "--json",
    ]);
    let report: serde_json::Value = json_of(&out);
    let socket = to.join("mariadbd.sock");
    assert_eq!(report["server"]["port"], port, "{report}");
    assert_eq!(report["snapshot"], first["snapshot"], "{report}");
    assert!(
        report["binlog_file"]
            .as_str()
            .unwrap()
            .starts_with("binlog."),
        "{report}"
    );
    assert!(report["gtid"].is_string(), "{report}");
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["fetch_restore", "prepare", "start"]);

    // A consistent cut: every row up to the newest is there (single-row
    // transactions in one session get consecutive ids), the untouched
    // tables are exactly as they were, and every table checks.
    let restored = checksums_at(&socket, "app");
    assert_eq!(restored["accounts"], accounts);
    let counts = client_sql(
        &socket,
        "SELECT COUNT(*), IFNULL(MAX(id), 0) FROM app.events",
    )
    .unwrap();
    let (count, max) = counts.trim().split_once('\t').unwrap();
    assert_eq!(count, max, "rows missing in the restored copy: {counts}");
    let total: u64 = server
        .sql("SELECT COUNT(*) FROM app.events")
        .trim()
        .parse()
        .unwrap();
    let count: u64 = count.parse().unwrap();
    assert!(count > 0 && count <= total, "{count} of {total}");
    let checked = client_sql(&socket, "CHECK TABLE app.accounts, app.events, app.notes").unwrap();
    assert!(checked.lines().all(|l| l.ends_with("\tOK")), "{checked}");
    // The copy writes no binlog: it can never archive into the plan.
    assert_eq!(client_sql(&socket, "SELECT @@log_bin").unwrap().trim(), "0");
    stop_restored(&to);

    // A repeat backup after a few writes stores a small fraction. (Once
    // InnoDB has written its dirty pages: until then the data files on disk
    // are still changing from the load, and a backup rightly stores that.)
    server.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0, innodb_max_dirty_pages_pct_lwm = 0");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server
        .sql("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DIRTY'")
        .trim()
        != "0"
    {
        assert!(std::time::Instant::now() < deadline, "InnoDB kept dirty pages for 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = json_of(&run(&["backup", "--plan", s(&plan), "--json"]));
    server.sql("UPDATE app.accounts SET balance = balance + 1 WHERE id < 50");
    let third = json_of(&run(&["backup", "--plan", s(&plan), "--json"]));
    let stored = |r: &serde_json::Value| r["stored_bytes"].as_u64().unwrap();
    let (all, repeat) = (stored(&first) + stored(&second), stored(&third));
    assert!(
        repeat * 20 < all,
        "the repeat backup stored {repeat} bytes, the repository held {all}"
    );
}

/// Flips the middle byte of a (write-once, read-only) repository file.
fn flip_middle_byte(file: &Path) {
    let mut perms = std::fs::metadata(file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(file, perms).unwrap();
    let mut bytes = std::fs::read(file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_damaged_pack_is_named_and_nothing_is_written() {
    let server = Server::start(&[]);
    setup(&server);
    let plan = plan(&server, &server.source_yaml());
    json_of(&run(&["backup", "--plan", s(&plan), "--json"]));
    let packs = server.dir.path().join("repo/objects/packs");
    let pack = walkdir::WalkDir::new(&packs)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .into_path();
    flip_middle_byte(&pack);

    let to = server.dir.path().join("restored");
    let out = run(&["restore", "--plan", s(&plan), "--to", s(&to)]);
    let said = text(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(said.contains(name), "the error names the pack: {said}");
    assert!(!to.exists(), "nothing is written to the target");
    let leftovers: Vec<_> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("holdfast"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `holdfast restore --plan PLAN --dump DB --into URL [extra…]`.
fn restore_dump(plan: &Path, db: &str, into: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", "--plan", s(plan), "--dump", db, "--into", into];
    args.extend_from_slice(extra);
    run(&args)
}

/// A logical dump, for a restore across versions or of one database apart:
/// `restore --dump app --into mysql://…/app_copy` loads it into a new
/// database, table for table equal to the original, with its routine and
/// trigger; a database with tables is refused; a damaged chunk is named and
/// reaches no server (the target database is never created).
#[test]
fn a_logical_dump_restores_into_a_new_database_and_a_damaged_chunk_reaches_no_server() {
    let server = Server::start(&[]);
    setup(&server);
    server.sql(
        "USE app;
         CREATE TABLE audit(id INT PRIMARY KEY AUTO_INCREMENT, what VARCHAR(50));
         CREATE TRIGGER accounts_audit AFTER UPDATE ON accounts FOR EACH ROW INSERT INTO audit(what) VALUES ('update');
         CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
         INSERT INTO notes VALUES (1000, 'bin \\0 \\n \\' end');",
    );
    let source = format!(
        "{{type: mariadb, host: 127.0.0.1, port: {}, user: root, mode: logical, logical_dumps: [app]}}",
        server.port
    );
    let plan = plan(&server, &source);
    let backup = json_of(&run(&["backup", "--plan", s(&plan), "--json"]));
    assert!(backup["files"].as_u64().unwrap() >= 1, "{backup}");
    let into = format!("mysql://root@127.0.0.1:{}/app_copy", server.port);

    let out = restore_dump(&plan, "app", &into, &["--json"]);
    let report = json_of(&out);
    assert_eq!(report["database"], "app", "{report}");
    assert!(
        report["into"].as_str().unwrap().ends_with("/app_copy"),
        "{report}"
    );
    assert_eq!(server.checksums("app_copy"), server.checksums("app"));
    assert_eq!(server.sql("SELECT app_copy.twice(21)").trim(), "42");
    server.sql("UPDATE app_copy.accounts SET balance = 0 WHERE id = 1");
    assert_eq!(
        server.sql("SELECT COUNT(*) FROM app_copy.audit").trim(),
        "1",
        "the trigger came along"
    );

    // Into a database that has tables: refused, nothing changed.
    let out = restore_dump(&plan, "app", &into, &[]);
    let said = text(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("already has tables"), "{said}");
    // A password in the URL would be on holdfast's command line.
    let with_pw = format!("mysql://root:hunter2@127.0.0.1:{}/x", server.port);
    let out = restore_dump(&plan, "app", &with_pw, &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("MYSQL_PWD") && !said.contains("hunter2"),
        "{said}"
    );
    // A database the snapshot has no dump of is named with the ones it has.
    let out = restore_dump(&plan, "shop", &into, &[]);
    let said = text(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("(it has: app)"), "{said}");

    // A damaged pack: named, and the target database is never created.
    let packs = server.dir.path().join("repo/objects/packs");
    for pack in walkdir::WalkDir::new(&packs)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
    {
        flip_middle_byte(pack.path());
    }
    let fresh = format!("mysql://root@127.0.0.1:{}/app_again", server.port);
    let out = restore_dump(&plan, "app", &fresh, &[]);
    let said = text(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("packs/"), "the error names the pack: {said}");
    assert_eq!(
        server
            .sql("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'app_again'")
            .trim(),
        "0",
        "no database was created"
    );
}

#[test]
fn a_plan_that_archives_binlogs_refuses_a_server_without_them() {
    let server = Server::start(&["--skip-log-bin"]);
    let plan = plan(&server, &server.source_yaml());
    let out = run(&["backup", "--plan", s(&plan)]);
    let said = said_by(&out, out.status.code().unwrap());
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("binary logging is off"), "{said}");
    assert!(said.contains("archive: false"), "{said}");
}

#[test]
fn the_password_reaches_mariadb_backup_and_mariadb_dump_only_through_their_environment() {
    let server = Server::start(&[]);
    setup(&server);
    let password = "Pw-ZX81-never-on-argv";
    server.sql(&format!(
        "CREATE USER 'backup'@'127.0.0.1' IDENTIFIED BY '{password}';
         GRANT ALL ON *.* TO 'backup'@'127.0.0.1';"
    ));
    let pw_file = server.dir.path().join("backup.pw");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let source = format!(
        "{{type: mariadb, host: 127.0.0.1, port: {}, user: backup, password_file: {}, logical_dumps: [app]}}",
        server.port,
        pw_file.display()
    );
    let plan = plan(&server, &source);
    let child = command()
        .args(["backup", "--plan", s(&plan), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let out = {
        let mut child = child;
        loop {
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    assert!(!cmdline.contains(password), "on a command line: {cmdline}");
                    for p in ["mariadb-backup", "mariadb-dump"] {
                        if cmdline.contains(p) && cmdline.contains("--user=backup") {
                            seen.insert(p);
                        }
                    }
                }
            }
            if child.try_wait().unwrap().is_some() {
                break child.wait_with_output().unwrap();
            }
        }
    };
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains(password), "{said}");
    assert!(
        seen.contains("mariadb-backup"),
        "never saw mariadb-backup run: {seen:?}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["files"].as_u64().unwrap() > 10, "{report}");
    // The repository holds no copy of it either (manifests are sealed, so
    // look at what `snapshots --json` shows of the source).
    let listed = run(&["snapshots", "--plan", s(&plan), "--json"]);
    assert!(!text(&listed).contains(password));
}

/// A restore drill of a MariaDB plan: the newest backup restored into a
/// scratch folder, prepared, started on a free port, the plan's SQL checks
/// and `CHECK TABLE` of every table run on it, timed, and everything torn
/// down; a check that fails fails the drill (exit 11) naming it.
#[test]
fn a_drill_restores_starts_checks_and_tears_down_a_scratch_server() {
    let server = Server::start(&[]);
    setup(&server);
    let scratch = server.dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let source = format!(
        "{{type: mariadb, host: 127.0.0.1, port: {}, user: root, database: app}}",
        server.port
    );
    let file = plan(&server, &source);
    let with_checks = |expect: &str| {
        let text = std::fs::read_to_string(&file).unwrap();
        let base = text.split("drill:").next().unwrap().to_string();
        std::fs::write(
            &file,
            format!(
                "{base}drill:\n  scratch_dir: {}\n  checks:\n    - name: accounts restored\n      sql: \"SELECT COUNT(*) FROM accounts\"\n      expect: {{{expect}}}\n",
                scratch.display()
            ),
        )
        .unwrap();
    };
    with_checks("at_least: 100000");
    json_of(&run(&["backup", "--plan", s(&file), "--json"]));

    let reports = server.dir.path().join("reports");
    let drill = |file: &Path| {
        command()
            .args(["drill", "--plan", s(file), "--json", "--reports"])
            .arg(&reports)
            .output()
            .unwrap()
    };
    let out = drill(&file);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sha256", "accounts restored", "check_table"],
        "{report}"
    );
    let check_table = &report["checks"][2];
    assert!(
        check_table["detail"]
            .as_str()
            .unwrap()
            .contains("table(s) OK"),
        "{report}"
    );
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["fetch_restore", "prepare", "start", "checks", "stop"],
        "{report}"
    );
    assert!(report["rto_seconds"].as_f64().unwrap() > 0.0, "{report}");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    // No scratch mariadbd runs on: only the test's own server is left.
    let running = std::process::Command::new("pgrep")
        .args(["-f", &format!("datadir={}", scratch.display())])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&running.stdout)
    );

    // A check that cannot pass fails the drill, naming it.
    with_checks("equals: \"-1\"");
    let out = drill(&file);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], false);
    let failed = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["passed"] == false)
        .unwrap();
    assert_eq!(failed["name"], "accounts restored", "{report}");
}

// ------------------------------------------------------ point in time

fn now_utc() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The runbook's scenario: a backup under load, more writes, time T, then
/// `DROP DATABASE` and more writes; a restore to T gives every table as it
/// was at T, and nothing written after T.
#[test]
fn a_dropped_database_comes_back_as_it_was_at_the_second_before_the_drop() {
    let server = Server::start(&[]);
    setup(&server);
    let plan = plan(&server, &server.source_yaml());
    let _archiver = Archiver::start(&plan, &server.dir.path().join("archiver"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(&server, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    json_of(&run(&["backup", "--plan", s(&plan), "--json"]));
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    server.sql("UPDATE app.accounts SET balance = 0 WHERE id <= 10; FLUSH BINARY LOGS;");
    server.sql("INSERT INTO app.events(payload) VALUES ('in the new binlog')");
    let at_t = server.checksums("app");
    std::thread::sleep(Duration::from_millis(1100));
    let t = now_utc();
    std::thread::sleep(Duration::from_millis(1100));
    server.sql("DROP DATABASE app; CREATE DATABASE later; CREATE TABLE later.t(id INT PRIMARY KEY); INSERT INTO later.t VALUES (1)");
    wait_archived(&server, "maria");

    // The restorable window reaches past T.
    let listed = text(&run(&["snapshots", "--plan", s(&plan)]));
    assert!(listed.contains("restorable window"), "{listed}");

    let to = server.dir.path().join("restored-at-t");
    let port = common::free_port().to_string();
    let out = run(&[
        "restore",
        "--plan",
        s(&plan),
        "--at",
        &t,
        "--to",
        s(&to),
        "--start",
        "--port",
        &port,
        "--json",
    ]);
    let report = json_of(&out);
    let socket = to.join("mariadbd.sock");
    assert_eq!(checksums_at(&socket, "app"), at_t, "{report}");
    assert_eq!(
        client_sql(&socket, "SHOW DATABASES LIKE 'later'")
            .unwrap()
            .trim(),
        "",
        "a database created after T is there: {report}"
    );
    let binlogs = report["binlogs"].as_array().unwrap();
    assert!(
        binlogs.len() >= 2,
        "the restore replays across a rotation: {report}"
    );
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "binlog_check",
            "fetch_restore",
            "prepare",
            "start",
            "replay"
        ],
        "{report}"
    );
    stop_restored(&to);
}

/// The data directory deleted outright: rebuilt from the repository alone
/// to the newest archived transaction.
#[test]
fn a_deleted_data_directory_is_rebuilt_to_the_last_archived_transaction() {
    let mut server = Server::start(&[]);
    setup(&server);
    let plan = plan(&server, &server.source_yaml());
    let _archiver = Archiver::start(&plan, &server.dir.path().join("archiver"));
    json_of(&run(&["backup", "--plan", s(&plan), "--json"]));
    server.sql("USE app; INSERT INTO app.events(payload) SELECT REPEAT('z', 100) FROM seq_1_to_5000; UPDATE app.accounts SET balance = balance * 2 WHERE id % 3 = 0;");
    let last = server.checksums("app");
    wait_archived(&server, "maria");
    server.kill();
    std::fs::remove_dir_all(server.data()).unwrap();

    let to = server.dir.path().join("rebuilt");
    let port = common::free_port().to_string();
    let report = json_of(&run(&[
        "restore",
        "--plan",
        s(&plan),
        "--latest",
        "--to",
        s(&to),
        "--start",
        "--port",
        &port,
        "--json",
    ]));
    assert_eq!(
        checksums_at(&to.join("mariadbd.sock"), "app"),
        last,
        "{report}"
    );
    stop_restored(&to);
}

/// A binlog missing from the archive, or damaged in it, is named before
/// anything is written; a target past the archive is refused with the window.
#[test]
fn a_missing_or_damaged_binlog_is_named_and_nothing_is_written() {
    let server = Server::start(&[]);
    setup(&server);
    let plan = plan(&server, &server.source_yaml());
    let archiver = Archiver::start(&plan, &server.dir.path().join("archiver"));
    json_of(&run(&["backup", "--plan", s(&plan), "--json"]));
    for n in 0..3 {
        server.sql(&format!(
            "INSERT INTO app.events(payload) VALUES ('round {n}'); FLUSH BINARY LOGS;"
        ));
    }
    wait_archived(&server, "maria");
    drop(archiver);
    let dir = server.dir.path().join("repo/objects/binlog/maria");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().contains(".part-"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let middle = files[1].clone();
    let name = middle.file_name().unwrap().to_str().unwrap().to_string();
    // (The local store keeps finished objects read-only, and lists only those.)
    let set_readonly = |p: &Path, readonly: bool| {
        let mut perms = std::fs::metadata(p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(readonly);
        std::fs::set_permissions(p, perms).unwrap();
    };

    // Damaged: one byte flipped in one part of the middle binlog (its
    // record is sound and lists the part): the part is named.
    let flip = |p: &Path| {
        set_readonly(p, false);
        let mut bad = std::fs::read(p).unwrap();
        let at = bad.len() - 10;
        bad[at] ^= 0x55;
        std::fs::write(p, &bad).unwrap();
        set_readonly(p, true);
    };
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{name}.part-"))
        })
        .collect();
    parts.sort();
    let damaged = parts.last().expect("a completed binlog has parts").clone();
    let damaged_name = damaged.file_name().unwrap().to_str().unwrap().to_string();
    flip(&damaged);
    let to = server.dir.path().join("restored");
    let out = run(&["restore", "--plan", s(&plan), "--latest", "--to", s(&to)]);
    let said = text(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&name) && said.contains(&damaged_name),
        "the damaged binlog and its damaged part are named: {said}"
    );
    assert!(!to.exists(), "nothing is written: {said}");

    // Missing: the same binlog removed, with its parts.
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_str().unwrap().starts_with(&name) {
            set_readonly(&p, false);
            std::fs::remove_file(&p).unwrap();
        }
    }
    let retention = server
        .dir
        .path()
        .join("repo/retention/binlog/maria")
        .join(&name);
    let _ = std::fs::remove_file(retention);
    let out = run(&["restore", "--plan", s(&plan), "--latest", "--to", s(&to)]);
    let said = text(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(said.contains(&name) && said.contains("missing"), "{said}");
    assert!(!to.exists(), "nothing is written: {said}");

    // A time past the newest archived event is refused with the window.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = run(&[
        "restore",
        "--plan",
        s(&plan),
        "--at",
        &later,
        "--to",
        s(&to),
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("Restorable window"), "{said}");
    assert!(!to.exists());
    let leftovers: Vec<_> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("holdfast"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
