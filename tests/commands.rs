//! One test per command or flag the runbook relies on, each checking what
//! the flag does (not only that the command exits 0): `verify --snapshot`,
//! `plan check --json`, `repo init` and `doctor` on a local repository,
//! `--log-format json`, `--quiet`, `restore --snapshot` for PostgreSQL and
//! `--force` refused on its data directory, `restore --force` on a directory
//! and when the new restore fails, stale `-wal`/`-shm` beside a SQLite
//! target, `restore --check` failing, and prune's weekly and monthly rules
//! (with the time injected through `HOLDFAST_NOW`, which debug builds
//! honour).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::bin::{command, fails, json, json_of, ok, s, said_by, text, BIN, TEST_KEY};
use common::files::{files_under, flip};
use common::postgres::{state, Cluster, Restored};
use common::{add_rows, checksum, free_port, make_db};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A plan backing up `source_yaml` into `repo/`.
    fn plan_with(&self, name: &str, source_yaml: &str, lock: &str, retention: &str) -> PathBuf {
        let file = self.path(&format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}\nsource: {source_yaml}\nrepository:\n  url: file://{repo}\nschedule:\n  backup: \"0 * * * *\"\nlock: {lock}\nretention: {retention}\n",
                repo = self.path("repo").display()
            ),
        )
        .unwrap();
        file
    }

    fn plan(&self, name: &str, source_yaml: &str) -> PathBuf {
        self.plan_with(
            name,
            source_yaml,
            "{mode: compliance, days: 7}",
            "{keep_last: 24, keep_daily: 7}",
        )
    }

    fn sqlite_plan(&self, db: &Path) -> PathBuf {
        self.plan("app", &format!("{{type: sqlite, path: {}}}", db.display()))
    }

    fn files_plan(&self, root: &Path) -> PathBuf {
        self.plan(
            "tree",
            &format!("{{type: files, path: {}}}", root.display()),
        )
    }

    /// Object keys under `prefix`, relative to the repository's objects.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let root = self.path("repo/objects");
        files_under(&root.join(prefix))
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// holdfast without `HOLDFAST_LOG`, so its own log level applies.
fn plain() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("HOLDFAST_LOG").env("HOLDFAST_KEY", TEST_KEY);
    c
}

fn run(mut c: Command, args: &[&str]) -> Output {
    c.args(args).output().expect("holdfast runs")
}

#[test]
fn verify_snapshot_checks_that_snapshot_alone() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("old.bin"), common::data(1, 400_000)).unwrap();
    let plan = env.files_plan(&src);
    let plan = s(&plan);
    let first = json(&["backup", "--plan", plan, "--json"]);
    let packs_of_first = env.keys("packs");
    std::fs::remove_file(src.join("old.bin")).unwrap();
    std::fs::write(src.join("new.bin"), common::data(2, 400_000)).unwrap();
    let second = json(&["backup", "--plan", plan, "--json"]);
    let id1 = first["snapshot"].as_str().unwrap();
    let id2 = second["snapshot"].as_str().unwrap();

    // Damage a pack only the first snapshot uses.
    assert_eq!(packs_of_first.len(), 1, "{packs_of_first:?}");
    let pack = &packs_of_first[0];
    flip(&env.path("repo/objects").join(pack), |len| len / 2, 0x10);

    let v = json(&["verify", "--plan", plan, "--snapshot", &id2[..8], "--json"]);
    assert_eq!(v["snapshots_checked"], 1, "{v}");
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");

    let out = run(
        command(),
        &["verify", "--plan", plan, "--snapshot", &id1[..8], "--json"],
    );
    let said = said_by(&out, 5);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots_checked"], 1, "{said}");
    assert_eq!(v["problems"][0]["object"], pack.as_str(), "{said}");
    let named = v["problems"][0]["snapshots"][0].as_str().unwrap();
    assert!(id1.starts_with(named) && named.len() >= 8, "{said}");

    let msg = fails(&["verify", "--plan", plan, "--snapshot", "ffffffff"], 2);
    assert!(msg.contains("ffffffff"), "{msg}");
}

#[test]
fn plan_check_json_reports_each_file_with_its_summary_or_error() {
    let env = Env::new();
    let good = env.sqlite_plan(&env.path("app.db"));
    let bad = env.path("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\nsource: {type: sqlite, path: a.db}\nbogus: 1\n",
    )
    .unwrap();

    let out = run(command(), &["plan", "check", s(&good), "--json"]);
    let v = json_of(&out);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["ok"], true, "{v}");
    assert_eq!(v[0]["file"], s(&good), "{v}");
    assert_eq!(v[0]["plan"]["name"], "app", "{v}");

    let out = run(command(), &["plan", "check", s(&good), s(&bad), "--json"]);
    let said = said_by(&out, 3);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], true, "{said}");
    assert_eq!(v[1]["ok"], false, "{said}");
    assert_eq!(v[1]["file"], s(&bad), "{said}");
    let err = v[1]["error"].as_str().unwrap();
    assert!(err.contains("bad.yaml") && err.contains("bogus"), "{err}");
}

#[test]
fn repo_init_and_doctor_on_a_local_repository() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 100);
    let plan = env.sqlite_plan(&db);
    let plan = s(&plan);

    let init = json(&["repo", "init", "--plan", plan, "--json"]);
    assert_eq!(init["repository_created"], true, "{init}");
    assert_eq!(init["bucket"], serde_json::Value::Null, "{init}");
    assert!(env.path("repo/objects").is_dir());
    let again = json(&["repo", "init", "--plan", plan, "--json"]);
    assert_eq!(again["repository_created"], false, "{again}");
    ok(&["backup", "--plan", plan]);

    let doc = json(&["doctor", "--plan", plan, "--json"]);
    let status = |name: &str| {
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {doc}"))["status"]
            .clone()
    };
    assert_eq!(status("repository"), "pass", "{doc}");
    assert_eq!(status("canary write"), "pass", "{doc}");
    assert_eq!(status("canary delete refused"), "pass", "{doc}");
    assert_eq!(status("local repository"), "warn", "{doc}");
    assert_eq!(doc["writer_policy"], serde_json::Value::Null, "{doc}");

    // A local plan that locks nothing is not immutable: exit 9.
    let unlocked = env.plan_with(
        "open",
        &format!("{{type: sqlite, path: {}}}", db.display()),
        "{mode: none}",
        "{keep_last: 3}",
    );
    let out = run(command(), &["doctor", "--plan", s(&unlocked)]);
    let said = said_by(&out, 9);
    assert!(said.contains("lock.mode is none"), "{said}");
}

#[test]
fn log_format_json_writes_every_stderr_line_as_json_including_the_final_error() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 1_000);
    let plan = env.sqlite_plan(&db);
    let out = run(
        plain(),
        &["--log-format", "json", "backup", "--plan", s(&plan)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "backup finished" && l["fields"]["plan"] == "app"),
        "{lines:?}"
    );

    // A failure ends with one JSON line naming what failed and the exit code.
    let missing = env.sqlite_plan(&env.path("nowhere.db"));
    let out = run(
        plain(),
        &["--log-format", "json", "backup", "--plan", s(&missing)],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().expect("an error line");
    let last: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["fields"]["exit_code"], 7, "{last}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("nowhere.db"),
        "{last}"
    );
}

#[test]
fn quiet_leaves_only_warnings_and_errors_on_stderr() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 1_000);
    let plan = env.sqlite_plan(&db);
    let loud = run(plain(), &["backup", "--plan", s(&plan)]);
    assert!(loud.status.success(), "{}", text(&loud));
    assert!(
        String::from_utf8_lossy(&loud.stderr).contains("backup finished"),
        "without --quiet the info lines are there: {}",
        text(&loud)
    );
    let quiet = run(plain(), &["--quiet", "backup", "--plan", s(&plan)]);
    assert!(quiet.status.success(), "{}", text(&quiet));
    assert_eq!(
        String::from_utf8_lossy(&quiet.stderr),
        "",
        "{}",
        text(&quiet)
    );
    assert!(
        String::from_utf8_lossy(&quiet.stdout).contains("saved to"),
        "the report still goes to stdout: {}",
        text(&quiet)
    );
    // Errors still show.
    let missing = env.sqlite_plan(&env.path("nowhere.db"));
    let out = run(plain(), &["-q", "backup", "--plan", s(&missing)]);
    let said = said_by(&out, 7);
    assert!(said.contains("nowhere.db"), "{said}");
}

#[test]
fn restore_force_replaces_a_directory_and_its_absence_refuses_it() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/a.txt"), b"restored").unwrap();
    let plan = env.files_plan(&src);
    let plan = s(&plan);
    ok(&["backup", "--plan", plan]);

    let out = env.path("out");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("sub/a.txt"), b"old").unwrap();
    std::fs::write(out.join("stray"), b"not in the snapshot").unwrap();
    let msg = fails(&["restore", "--plan", plan, "--to", s(&out)], 8);
    assert!(msg.contains("not empty") && msg.contains(s(&out)), "{msg}");
    assert_eq!(
        std::fs::read(out.join("stray")).unwrap(),
        b"not in the snapshot"
    );

    ok(&["restore", "--plan", plan, "--to", s(&out), "--force"]);
    assert_eq!(std::fs::read(out.join("sub/a.txt")).unwrap(), b"restored");
    assert!(
        !out.join("stray").exists(),
        "the old tree is replaced, not merged"
    );
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("holdfast"))
        .collect();
    assert!(left.is_empty(), "temp or old paths left: {left:?}");
}

#[test]
fn restore_force_that_fails_leaves_the_old_target_and_its_wal_as_they_were() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 50_000);
    let plan = env.sqlite_plan(&db);
    let plan = s(&plan);
    ok(&["backup", "--plan", plan]);

    // The old target: a database with its -wal and -shm beside it.
    let target = env.path("live.db");
    make_db(&target, 10);
    std::fs::write(env.path("live.db-wal"), b"old wal").unwrap();
    std::fs::write(env.path("live.db-shm"), b"old shm").unwrap();
    let before = [
        std::fs::read(&target).unwrap(),
        std::fs::read(env.path("live.db-wal")).unwrap(),
        std::fs::read(env.path("live.db-shm")).unwrap(),
    ];

    // The new restore fails: a damaged pack.
    let pack = env.keys("packs").remove(0);
    flip(&env.path("repo/objects").join(&pack), |len| len / 2, 0x01);
    let msg = fails(
        &["restore", "--plan", plan, "--to", s(&target), "--force"],
        5,
    );
    assert!(msg.contains(&pack), "{msg}");
    let after = [
        std::fs::read(&target).unwrap(),
        std::fs::read(env.path("live.db-wal")).unwrap_or_default(),
        std::fs::read(env.path("live.db-shm")).unwrap_or_default(),
    ];
    assert!(before == after, "the old database, -wal or -shm changed");
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("holdfast"))
        .collect();
    assert!(left.is_empty(), "temp or aside paths left: {left:?}");
}

/// A live database in WAL mode, held open by its application, whose
/// committed rows are still only in its `-wal` (no checkpoint yet).
fn live_db_with_rows_in_its_wal(path: &Path) -> rusqlite::Connection {
    make_db(path, 20);
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    add_rows(&conn, 300);
    conn
}

/// Runs `holdfast args` while sampling, every millisecond, whether `watched`
/// exists; returns the output and how many samples found it missing.
fn run_watching(args: &[&str], watched: &Path) -> (Output, usize) {
    let mut child = command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut missing = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "restore hung");
        if !watched.exists() {
            missing += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    (child.wait_with_output().unwrap(), missing)
}

#[test]
fn restore_force_from_a_corrupt_snapshot_never_moves_the_live_wal_and_every_committed_row_stays_readable(
) {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 60_000);
    let plan = env.sqlite_plan(&db);
    let plan = s(&plan);
    ok(&["backup", "--plan", plan]);
    let pack = env.keys("packs").remove(0);
    flip(&env.path("repo/objects").join(&pack), |len| len / 2, 0x01);

    let live = env.path("live.db");
    let app = live_db_with_rows_in_its_wal(&live);
    let wal = env.path("live.db-wal");
    let wal_before = std::fs::read(&wal).unwrap();
    assert!(wal_before.len() > 4096, "the rows are in the -wal");
    let rows_before = checksum(&live);
    assert_eq!(rows_before.0, 320);

    let (out, missing) = run_watching(
        &["restore", "--plan", plan, "--to", s(&live), "--force"],
        &wal,
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains(&pack), "{}", text(&out));
    assert_eq!(missing, 0, "the live -wal was moved while the restore ran");
    assert_eq!(std::fs::read(&wal).unwrap(), wal_before);
    // The application's own connection and a new one both read every row.
    let n: i64 = app
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 320);
    assert_eq!(checksum(&live), rows_before);
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("holdfast"))
        .collect();
    assert!(left.is_empty(), "temp or aside paths left: {left:?}");
}

#[test]
fn restore_force_runs_the_integrity_check_before_replacing_a_live_database_even_without_check() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 2_000);
    // A broken database whose snapshot is faithful to it: only SQLite's own
    // check can tell (the damage is in its last pages, an index or table).
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .unwrap();
    let mut bytes = std::fs::read(&db).unwrap();
    let len = bytes.len();
    bytes[len - 3000..len - 1000].fill(0x5A);
    std::fs::write(&db, bytes).unwrap();
    let plan = env.sqlite_plan(&db);
    let plan = s(&plan);
    ok(&["backup", "--plan", plan]);

    let live = env.path("live.db");
    let _app = live_db_with_rows_in_its_wal(&live);
    let wal = env.path("live.db-wal");
    let wal_before = std::fs::read(&wal).unwrap();
    let rows_before = checksum(&live);
    let msg = fails(&["restore", "--plan", plan, "--to", s(&live), "--force"], 5);
    assert!(
        msg.contains("failed its check") && msg.contains("live.db"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&wal).unwrap(), wal_before);
    assert_eq!(checksum(&live), rows_before);

    // A good snapshot replaces it: the old -wal goes with the old database.
    let good = env.path("good.db");
    make_db(&good, 700);
    let good_plan = env.plan(
        "good",
        &format!("{{type: sqlite, path: {}}}", good.display()),
    );
    let good_plan = s(&good_plan);
    ok(&["backup", "--plan", good_plan]);
    let good_state = checksum(&good);
    drop(_app);
    std::fs::write(&wal, &wal_before).unwrap();
    ok(&["restore", "--plan", good_plan, "--to", s(&live), "--force"]);
    assert!(
        !wal.exists(),
        "the old -wal was left beside the new database"
    );
    assert_eq!(checksum(&live), good_state);
}

#[test]
fn a_stale_wal_and_shm_beside_a_sqlite_target_are_refused_or_replaced_with_force() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 5_000);
    let plan = env.sqlite_plan(&db);
    let plan = s(&plan);
    ok(&["backup", "--plan", plan]);
    let state = checksum(&db);

    let target = env.path("out.db");
    std::fs::write(env.path("out.db-wal"), b"a stale log").unwrap();
    std::fs::write(env.path("out.db-shm"), b"stale shared memory").unwrap();
    let msg = fails(&["restore", "--plan", plan, "--to", s(&target)], 8);
    assert!(
        msg.contains("out.db-wal") && msg.contains("--force"),
        "{msg}"
    );
    assert!(!target.exists());
    assert_eq!(
        std::fs::read(env.path("out.db-wal")).unwrap(),
        b"a stale log"
    );

    ok(&["restore", "--plan", plan, "--to", s(&target), "--force"]);
    assert!(!env.path("out.db-wal").exists(), "the stale -wal was left");
    assert!(!env.path("out.db-shm").exists(), "the stale -shm was left");
    assert_eq!(checksum(&target), state);
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("holdfast"))
        .collect();
    assert!(left.is_empty(), "aside paths left: {left:?}");
}

#[test]
fn restore_check_refuses_a_corrupt_database_and_writes_nothing() {
    let env = Env::new();
    let db = env.path("app.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = DELETE; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t (v);",
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
    // Damage the database itself (an index page): the snapshot's bytes are
    // faithful, only SQLite's own check can tell.
    let mut bytes = std::fs::read(&db).unwrap();
    let len = bytes.len();
    bytes[len - 3000..len - 1000].fill(0x5A);
    std::fs::write(&db, bytes).unwrap();
    let plan = env.sqlite_plan(&db);
    let plan = s(&plan);
    ok(&["backup", "--plan", plan]);

    let target = env.path("checked.db");
    let msg = fails(
        &["restore", "--plan", plan, "--to", s(&target), "--check"],
        5,
    );
    assert!(
        msg.contains("failed its check") && msg.contains("checked.db"),
        "{msg}"
    );
    assert!(!target.exists(), "nothing is written when the check fails");

    // Without --check the same bytes restore: the check is what refused them.
    let unchecked = env.path("unchecked.db");
    ok(&["restore", "--plan", plan, "--to", s(&unchecked)]);
    assert!(unchecked.exists());
}

#[test]
fn prune_keeps_the_first_snapshot_of_each_week_and_month_by_the_injected_clock() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 500);
    let plan = env.plan_with(
        "app",
        &format!("{{type: sqlite, path: {}}}", db.display()),
        "{mode: none}",
        "{keep_last: 1, keep_weekly: 3, keep_monthly: 3}",
    );
    let plan = s(&plan);
    let at = |now: &str, args: &[&str]| {
        let mut c = command();
        c.env(holdfast::clock::NOW_VAR, now);
        json_of(&run(c, args))
    };
    // (when, the tier that time gives it); ISO weeks 2, 2, 3, 4, 6, 6, 10.
    let runs = [
        ("2026-01-05T10:00:00Z", "monthly"),
        ("2026-01-06T10:00:00Z", "last"),
        ("2026-01-13T10:00:00Z", "weekly"),
        ("2026-01-20T10:00:00Z", "weekly"),
        ("2026-02-03T10:00:00Z", "monthly"),
        ("2026-02-04T10:00:00Z", "last"),
        ("2026-03-02T10:00:00Z", "monthly"),
    ];
    let mut ids = Vec::new();
    for (i, (when, tier)) in runs.iter().enumerate() {
        add_rows(&rusqlite::Connection::open(&db).unwrap(), 10);
        let r = at(when, &["backup", "--plan", plan, "--json"]);
        assert_eq!(r["tier"], *tier, "run {i} at {when}: {r}");
        assert_eq!(r["started_at"].as_str().unwrap()[..19], when[..19], "{r}");
        ids.push(r["snapshot"].as_str().unwrap().to_string());
    }

    let report = at("2026-03-03T09:00:00Z", &["prune", "--plan", plan, "--json"]);
    let by = |list: &str| -> Vec<(String, String)> {
        let mut v: Vec<_> = report[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let short = s["snapshot"].as_str().unwrap();
                let i = ids.iter().position(|id| id.starts_with(short)).unwrap();
                (
                    format!("run {i}"),
                    s["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let kept: Vec<String> = by("kept")
        .into_iter()
        .map(|(r, why)| format!("{r}: {why}"))
        .collect();
    assert_eq!(
        kept,
        [
            "run 0: keep_monthly",
            "run 3: keep_weekly",
            "run 4: keep_monthly",
            "run 6: keep_last",
        ],
        "{report}"
    );
    let removed: Vec<String> = by("removed").into_iter().map(|(r, _)| r).collect();
    assert_eq!(removed, ["run 1", "run 2", "run 5"], "{report}");
    assert_eq!(
        json(&["snapshots", "--plan", plan, "--json"])
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn restore_snapshot_rebuilds_postgres_at_that_base_backup_and_force_never_replaces_a_data_directory(
) {
    let pg = Cluster::start_with("{mode: none}", "{keep_last: 10}");
    let plan = s(&pg.plan).to_string();
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 3000) i");
    let first = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    let at_first = state(pg.port());
    pg.sql("INSERT INTO orders(note) SELECT 'later ' || i FROM generate_series(1, 500) i; DELETE FROM orders WHERE id <= 100");
    let second = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    let at_second = state(pg.port());
    pg.sql("DROP TABLE orders");
    pg.archive_now();
    let id1 = first["snapshot"].as_str().unwrap();
    let id2 = second["snapshot"].as_str().unwrap();

    // --snapshot alone: the end of that base backup, not the latest state.
    let to = pg.path("copy");
    let port = free_port();
    let restored = Restored { data: to.clone() };
    let report = json_of(&pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--snapshot",
        &id1[..8],
        "--to",
        s(&to),
        "--start",
        "--port",
        &port.to_string(),
        "--no-archive",
        "--json",
    ]));
    assert_eq!(report["base_backup"].as_str().unwrap(), id1, "{report}");
    assert_eq!(state(port), at_first);
    drop(restored);

    // A data directory is never replaced, with or without --force: the old
    // cluster stays exactly as it was (move it aside first).
    let before = common::files::tree_listing(&to);
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--snapshot",
        &id2[..8],
        "--to",
        s(&to),
        "--no-archive",
    ]);
    let said = said_by(&out, 8);
    assert!(
        said.contains(s(&to)) && said.contains("move the old one aside"),
        "{said}"
    );
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--snapshot",
        &id2[..8],
        "--to",
        s(&to),
        "--no-archive",
        "--force",
    ]);
    let said = said_by(&out, 2);
    assert!(said.contains("--force is not accepted"), "{said}");
    assert_eq!(
        common::files::tree_listing(&to),
        before,
        "the data directory changed"
    );

    // The second base backup, into a new directory, is the state at its end.
    let to2 = pg.path("copy2");
    let port = free_port();
    let _restored = Restored { data: to2.clone() };
    let report = json_of(&pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--snapshot",
        &id2[..8],
        "--to",
        s(&to2),
        "--start",
        "--port",
        &port.to_string(),
        "--no-archive",
        "--json",
    ]));
    assert_eq!(report["base_backup"].as_str().unwrap(), id2, "{report}");
    assert_eq!(state(port), at_second);
}
