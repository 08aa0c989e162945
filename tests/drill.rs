//! Restore drills, run through the real binary: back up, drill (restore into
//! scratch space, check, measure, record), and see what an on-call engineer
//! would see when a drill fails — a check that cannot hold, a drill over its
//! time, a corrupted pack — and that a killed drill's scratch folder goes.

mod common;

use common::bin::{command, holdfast, json, ok, said_by, text};
use common::files::{files_under, flip};
use common::make_db;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

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

    /// A plan named `app` backing up `source_yaml` into `repo/`, with `drill_yaml`
    /// (the drill section's body, indented by two spaces).
    fn plan(&self, file: &str, source_yaml: &str, drill_yaml: &str) -> PathBuf {
        let path = self.path(file);
        std::fs::write(
            &path,
            format!(
                "name: app\nsource: {source_yaml}\nrepository:\n  url: file://{repo}\nschedule:\n  backup: \"0 * * * *\"\nlock:\n  mode: compliance\n  days: 7\nretention:\n  keep_last: 24\n  keep_daily: 7\ndrill:\n  scratch_dir: {scratch}\n{drill_yaml}",
                repo = self.path("repo").display(),
                scratch = self.path("scratch").display()
            ),
        )
        .unwrap();
        path
    }

    fn sqlite_plan(&self, file: &str, drill_yaml: &str) -> PathBuf {
        let db = self.path("app.db");
        self.plan(
            file,
            &format!("{{type: sqlite, path: {}}}", db.display()),
            drill_yaml,
        )
    }

    fn reports(&self) -> PathBuf {
        self.path("reports")
    }

    /// `holdfast drill --plan FILE --json --reports DIR`.
    fn drill(&self, plan: &Path) -> std::process::Output {
        holdfast(&[
            "drill",
            "--plan",
            plan.to_str().unwrap(),
            "--json",
            "--reports",
            self.reports().to_str().unwrap(),
        ])
    }

    /// The scratch folders left in `scratch/`.
    fn scratch_left(&self) -> Vec<String> {
        std::fs::read_dir(self.path("scratch"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

const CHECKS: &str = "  checks:\n    - name: has orders\n      sql: \"SELECT count(*) FROM orders\"\n      expect: {at_least: 500}\n";

fn report_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[test]
fn a_sqlite_drill_passes_its_checks_is_recorded_write_once_and_listed_with_a_trend() {
    let env = Env::new();
    make_db(&env.path("app.db"), 800);
    let plan = env.sqlite_plan("app.yaml", CHECKS);
    let plan_s = plan.to_str().unwrap();
    ok(&["backup", "--plan", plan_s]);

    let out = env.drill(&plan);
    let report = report_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(check(&report, "has orders")["passed"], true, "{report}");
    assert!(check(&report, "has orders")["detail"]
        .as_str()
        .unwrap()
        .contains("800"));
    assert_eq!(check(&report, "integrity_check")["passed"], true);
    assert_eq!(check(&report, "sha256")["passed"], true);
    assert_eq!(report["checks_failed"], 0);
    assert_eq!(report["checks_passed"], 3);
    assert_eq!(report["target"]["kind"], "latest");
    assert!(
        report["bytes_restored"].as_u64().unwrap() > 100_000,
        "{report}"
    );
    assert!(report["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(report["rpo_seconds"].as_f64().unwrap() >= 0.0);
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["fetch_restore", "checks"], "{report}");
    assert!(env.scratch_left().is_empty(), "{:?}", env.scratch_left());

    // The local reports: JSON and Markdown.
    let local: Vec<PathBuf> = files_under(&env.reports());
    assert_eq!(local.len(), 2, "{local:?}");
    let md = local
        .iter()
        .find(|p| p.extension().unwrap() == "md")
        .unwrap();
    let md = std::fs::read_to_string(md).unwrap();
    assert!(md.contains("PASSED") && md.contains("has orders"), "{md}");

    // The record in the repository, write-once and locked.
    let key = report["record_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("drills/app/"), "{key}");
    let store = holdfast::store::local::LocalStore::open(env.path("repo")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    use holdfast::store::Store;
    let deleted = rt.block_on(store.delete(&key)).unwrap_err().to_string();
    assert!(deleted.contains(&key), "{deleted}");
    let bytes = rt.block_on(store.get(&key)).unwrap();
    let opts = holdfast::store::PutOptions {
        sha256: holdfast::ids::Hash256::digest(b"{}"),
        retention: None,
    };
    let overwrite = rt
        .block_on(store.put(&key, bytes::Bytes::from_static(b"{}"), &opts))
        .unwrap_err();
    assert!(
        matches!(overwrite, holdfast::store::StoreError::AlreadyExists { .. }),
        "{overwrite}"
    );
    assert_eq!(rt.block_on(store.get(&key)).unwrap(), bytes);

    // A second drill; `drills` lists both, the second with its trend.
    let second = report_of(&env.drill(&plan));
    let list = json(&["drills", "--plan", plan_s, "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["key"], key.as_str());
    assert_eq!(list[0]["report"]["id"], report["id"]);
    assert_eq!(list[1]["report"]["id"], second["id"]);
    assert!(list[0].get("trend").is_none());
    let trend = &list[1]["trend"];
    let delta = second["rto_seconds"].as_f64().unwrap() - report["rto_seconds"].as_f64().unwrap();
    assert!(
        (trend["vs_previous_seconds"].as_f64().unwrap() - delta).abs() < 1e-6,
        "{trend}"
    );
    let table = ok(&["drills", "--plan", plan_s]);
    assert!(
        table.contains("passed") && table.contains(report["id"].as_str().unwrap()),
        "{table}"
    );

    // A record that is not a drill report (here not even sealed with the
    // repository's key) is named, never trusted.
    let bad = env.path("repo/objects/drills/app/20990101T000000.000Z-ffffffffffffffff.json");
    std::fs::write(&bad, b"{\"format\": 1").unwrap();
    let out = holdfast(&["drills", "--plan", plan_s]);
    let said = said_by(&out, 5);
    assert!(
        said.contains("drills/app/20990101T000000.000Z-ffffffffffffffff.json")
            && said.contains("not authentic"),
        "{said}"
    );
}

#[test]
fn a_check_that_cannot_hold_fails_the_drill_naming_the_check() {
    let env = Env::new();
    make_db(&env.path("app.db"), 100);
    let plan = env.sqlite_plan(
        "app.yaml",
        "  checks:\n    - name: a million orders\n      sql: \"SELECT count(*) FROM orders\"\n      expect: {at_least: 1000000}\n",
    );
    ok(&["backup", "--plan", plan.to_str().unwrap()]);
    let out = env.drill(&plan);
    let said = said_by(&out, 11);
    assert!(
        said.contains("check a million orders failed: returned 100, expected at least 1000000"),
        "{said}"
    );
    let report = report_of(&out);
    assert_eq!(report["passed"], false);
    assert_eq!(report["checks_failed"], 1);
    assert_eq!(check(&report, "integrity_check")["passed"], true);
    // The failure is recorded too.
    assert!(report["record_key"]
        .as_str()
        .unwrap()
        .starts_with("drills/app/"));
    assert!(env.scratch_left().is_empty(), "{:?}", env.scratch_left());
}

#[test]
fn a_drill_over_max_duration_fails_even_with_the_data_right() {
    let env = Env::new();
    make_db(&env.path("app.db"), 100);
    let plan = env.sqlite_plan("app.yaml", "  max_duration: 1ns\n");
    ok(&["backup", "--plan", plan.to_str().unwrap()]);
    let out = env.drill(&plan);
    let said = said_by(&out, 11);
    // Stopped at the deadline ("ran past"), or finished and then judged ("took").
    assert!(
        said.contains("max_duration") && said.contains("1ns"),
        "{said}"
    );
    let report = report_of(&out);
    assert_eq!(report["over_time"], true);
    assert_eq!(report["passed"], false);
    assert!(env.scratch_left().is_empty(), "{:?}", env.scratch_left());
}

#[test]
fn a_corrupted_pack_fails_the_drill_naming_the_object() {
    let env = Env::new();
    make_db(&env.path("app.db"), 300);
    let plan = env.sqlite_plan("app.yaml", CHECKS);
    ok(&["backup", "--plan", plan.to_str().unwrap()]);
    let packs = files_under(&env.path("repo/objects/packs"));
    assert!(!packs.is_empty());
    for p in &packs {
        flip(p, |len| len / 2, 0x40);
    }
    let out = env.drill(&plan);
    let said = said_by(&out, 11);
    let named = packs.iter().any(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        said.contains(&name[..16.min(name.len())])
    });
    assert!(named && said.contains("pack"), "{said}");
    let report = report_of(&out);
    assert_eq!(report["passed"], false);
    assert!(env.scratch_left().is_empty(), "{:?}", env.scratch_left());
}

#[test]
fn a_killed_drills_scratch_folder_is_removed_by_the_next_drill() {
    let env = Env::new();
    make_db(&env.path("app.db"), 600);
    // A check that never ends holds the drill in its checks phase.
    let slow = env.sqlite_plan("slow.yaml", FOREVER);
    ok(&["backup", "--plan", slow.to_str().unwrap()]);
    let mut child = command()
        .args(["drill", "--plan", slow.to_str().unwrap(), "--reports"])
        .arg(env.reports())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let leftover = env.path(&format!("scratch/holdfast-drill-app-{}", child.id()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !leftover.join("restored.db").exists() {
        assert!(
            Instant::now() < deadline,
            "the drill restored nothing in 120s"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drill ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(leftover.exists(), "a killed drill cannot clean up");

    let plan = env.sqlite_plan("app.yaml", CHECKS);
    let out = env.drill(&plan);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = report_of(&out);
    let notes = report["notes"].to_string();
    assert!(
        notes.contains(&leftover.display().to_string()) && notes.contains("which is gone"),
        "{notes}"
    );
    assert!(!leftover.exists());
    assert!(env.scratch_left().is_empty(), "{:?}", env.scratch_left());
}

#[test]
fn a_files_drill_checks_the_files_and_counts_the_verified_ones() {
    let env = Env::new();
    let tree = env.path("site");
    std::fs::create_dir_all(tree.join("conf")).unwrap();
    std::fs::write(tree.join("conf/app.toml"), b"port = 8080\n").unwrap();
    std::fs::write(tree.join("index.html"), common::data(7, 300_000)).unwrap();
    std::fs::write(tree.join("notes.txt"), b"hello\n").unwrap();
    let plan = env.plan(
        "app.yaml",
        &format!("{{type: files, path: {}}}", tree.display()),
        "  checks:\n    - name: config\n      file: conf/app.toml\n    - file: index.html\n",
    );
    ok(&["backup", "--plan", plan.to_str().unwrap()]);
    let out = env.drill(&plan);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = report_of(&out);
    assert_eq!(report["files_verified"], 3, "{report}");
    assert_eq!(report["checks_passed"], 3, "{report}");
    assert_eq!(check(&report, "config")["passed"], true);
    assert_eq!(check(&report, "checks[1]")["passed"], true);
    assert!(check(&report, "sha256")["detail"]
        .as_str()
        .unwrap()
        .starts_with("3 restored file(s)"));

    // A file the snapshot does not have fails the drill, named.
    std::fs::remove_file(tree.join("notes.txt")).unwrap();
    let missing = env.plan(
        "missing.yaml",
        &format!("{{type: files, path: {}}}", tree.display()),
        "  checks:\n    - name: the ledger\n      file: ledger.csv\n",
    );
    let out = env.drill(&missing);
    let said = said_by(&out, 11);
    assert!(
        said.contains("check the ledger failed: ledger.csv is not in the restored tree"),
        "{said}"
    );
}

#[test]
fn a_postgres_drill_starts_a_scratch_server_runs_the_sql_check_and_reports_phases() {
    use common::postgres::Cluster;
    let pg = Cluster::start();
    pg.sql("CREATE TABLE orders AS SELECT i AS id FROM generate_series(1, 5000) i");
    let plan = common::bin::s(&pg.plan).to_string();
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    // Written after the base backup: only WAL replay brings these back.
    pg.sql("INSERT INTO orders SELECT generate_series(5001, 6000)");
    let archived_before = pg.archive_now();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&pg.plan)
        .unwrap();
    std::io::Write::write_all(
        &mut file,
        format!(
            "drill:\n  scratch_dir: {}\n  checks:\n    - name: every order\n      sql: \"SELECT count(*) FROM orders\"\n      expect: {{equals: \"6000\"}}\n",
            pg.path("scratch").display()
        )
        .as_bytes(),
    )
    .unwrap();
    let reports = pg.path("reports");
    let out = pg.holdfast(&[
        "drill",
        "--plan",
        &plan,
        "--json",
        "--reports",
        common::bin::s(&reports),
    ]);
    let report = report_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report["passed"], true, "{report}");
    let every = check(&report, "every order");
    assert_eq!(every["passed"], true, "{report}");
    assert!(every["detail"].as_str().unwrap().contains("6000"));
    assert_eq!(check(&report, "pg_amcheck")["passed"], true, "{report}");
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "wal_check",
            "fetch_restore",
            "start_wal_replay",
            "checks",
            "stop"
        ],
        "{report}"
    );
    let sum: f64 = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] != "stop")
        .map(|p| p["seconds"].as_f64().unwrap())
        .sum();
    assert!(sum <= report["rto_seconds"].as_f64().unwrap(), "{report}");
    assert!(report["rpo_seconds"].as_f64().unwrap() >= 0.0, "{report}");
    assert!(report["bytes_restored"].as_u64().unwrap() > 1_000_000);
    // Torn down: no scratch folder, no server; the scratch copy never
    // archived into the plan (archiving off: no new timeline's history).
    let left: Vec<_> = std::fs::read_dir(pg.path("scratch"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        !pg.archived().iter().any(|f| f.ends_with(".history")),
        "{:?}",
        pg.archived()
    );
    assert!(pg.archived().contains(&archived_before));
    let listed = common::bin::json_of(&pg.holdfast(&["drills", "--plan", &plan, "--json"]));
    assert_eq!(listed[0]["report"]["id"], report["id"]);
    eprintln!(
        "PostgreSQL drill: RTO {}s, RPO {}s, phases {}, {} bytes",
        report["rto_seconds"], report["rpo_seconds"], report["phases"], report["bytes_restored"]
    );
}

/// `holdfast drill` at the injected time `now` (debug builds read `HOLDFAST_NOW`).
fn drill_at(env: &Env, plan: &Path, now: &str, extra: &[&str]) -> std::process::Output {
    command()
        .env("HOLDFAST_NOW", now)
        .args([
            "drill",
            "--plan",
            plan.to_str().unwrap(),
            "--json",
            "--reports",
        ])
        .arg(env.reports())
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_target_is_the_newest_point_the_plans_rewind_clamped_or_at() {
    let env = Env::new();
    make_db(&env.path("app.db"), 100);
    let plan = env.sqlite_plan("app.yaml", "  rewind: 1h\n");
    let backup_at = |now: &str| {
        let out = command()
            .env("HOLDFAST_NOW", now)
            .args(["backup", "--plan", plan.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    backup_at("2026-03-02T08:00:00Z");
    common::add_rows(&rusqlite::Connection::open(env.path("app.db")).unwrap(), 50);
    backup_at("2026-03-02T10:00:00Z");
    let point = |r: &serde_json::Value| {
        (
            r["target"]["kind"].as_str().unwrap().to_string(),
            r["target"]["at"].as_str().unwrap()[..19].to_string(),
            r["restored_point"].as_str().unwrap()[..19].to_string(),
            r["rpo_seconds"].as_f64().unwrap(),
        )
    };
    let s =
        |k: &str, t: &str, p: &str, rpo: f64| (k.to_string(), t.to_string(), p.to_string(), rpo);

    // The plan's rewind: 10:30 - 1h = 09:30, whose state is the 08:00 snapshot's.
    let r = report_of(&drill_at(&env, &plan, "2026-03-02T10:30:00Z", &[]));
    assert_eq!(
        point(&r),
        s(
            "rewind",
            "2026-03-02T09:30:00",
            "2026-03-02T08:00:00",
            5400.0
        ),
        "{r}"
    );
    // --latest ignores the rewind.
    let r = report_of(&drill_at(
        &env,
        &plan,
        "2026-03-02T10:30:00Z",
        &["--latest"],
    ));
    assert_eq!(
        point(&r),
        s(
            "latest",
            "2026-03-02T10:30:00",
            "2026-03-02T10:00:00",
            1800.0
        ),
        "{r}"
    );
    // --at.
    let r = report_of(&drill_at(
        &env,
        &plan,
        "2026-03-02T10:30:00Z",
        &["--at", "2026-03-02T09:59:00Z"],
    ));
    assert_eq!(
        point(&r),
        s("at", "2026-03-02T09:59:00", "2026-03-02T08:00:00", 7140.0),
        "{r}"
    );
    // A rewind before the oldest snapshot is clamped to it, and says so.
    let r = report_of(&drill_at(&env, &plan, "2026-03-02T08:30:00Z", &[]));
    assert_eq!(
        point(&r),
        s("rewind", "2026-03-02T08:00:00", "2026-03-02T08:00:00", 0.0),
        "{r}"
    );
    assert!(r["notes"].to_string().contains("clamped"), "{r}");
    // An --at before every snapshot is refused, naming the oldest.
    let out = drill_at(
        &env,
        &plan,
        "2026-03-02T10:30:00Z",
        &["--at", "2026-03-01T00:00:00Z"],
    );
    let said = said_by(&out, 2);
    assert!(
        said.contains("oldest snapshot is from 2026-03-02T08:00:00"),
        "{said}"
    );
}

/// The first column of the check `name`'s value, as its detail prints it
/// (`returned "150"`).
fn returned(report: &serde_json::Value, name: &str) -> String {
    let detail = check(report, name)["detail"].as_str().unwrap().to_string();
    detail
        .strip_prefix("returned \"")
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or_else(|| panic!("check {name}: {detail}"))
        .to_string()
}

#[test]
fn a_random_drill_restores_one_of_the_snapshots_an_older_one_for_some_seed() {
    let env = Env::new();
    make_db(&env.path("app.db"), 100);
    let plan = env.sqlite_plan(
        "app.yaml",
        "  target: random\n  checks:\n    - name: orders\n      sql: \"SELECT count(*) FROM orders\"\n",
    );
    let plan_s = plan.to_str().unwrap();
    // Three snapshots: 100, 150 and 200 orders.
    let mut rows_at = Vec::new();
    for (i, at) in ["08:00:00", "09:00:00", "10:00:00"].iter().enumerate() {
        if i > 0 {
            common::add_rows(&rusqlite::Connection::open(env.path("app.db")).unwrap(), 50);
        }
        let out = command()
            .env("HOLDFAST_NOW", format!("2026-03-02T{at}Z"))
            .args(["backup", "--plan", plan_s])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        rows_at.push((format!("2026-03-02T{at}"), (100 + 50 * i).to_string()));
    }
    let listed = json(&["snapshots", "--plan", plan_s, "--json"]);
    let oldest = listed[0]["short_id"].as_str().unwrap().to_string();
    let now = "2026-03-02T10:30:00Z";
    let head = |r: &serde_json::Value, field: &str| r[field].as_str().unwrap()[..19].to_string();

    // The plan's random target, a fresh seed each time: one of the three
    // snapshots, restored as it was, and the report says how it was chosen.
    for _ in 0..3 {
        let out = drill_at(&env, &plan, now, &[]);
        let r = report_of(&out);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(r["target"]["kind"], "random", "{r}");
        assert!(r["target"]["seed"].is_u64(), "{r}");
        assert!(
            r["target"]["drawn_from"]
                .as_str()
                .unwrap()
                .ends_with(" of 3, oldest first"),
            "{r}"
        );
        let at = head(&r["target"], "at");
        assert_eq!(head(&r, "restored_point"), at, "{r}");
        assert_eq!(r["rpo_seconds"], 0.0, "{r}");
        let rows = &rows_at
            .iter()
            .find(|(t, _)| *t == at)
            .unwrap_or_else(|| panic!("{at} is no snapshot's time: {r}"))
            .1;
        assert_eq!(&returned(&r, "orders"), rows, "{r}");
    }

    // A seed that draws the oldest snapshot (by the draw holdfast makes):
    // the oldest, every time it is given.
    let seed = (0u64..)
        .find(|s| holdfast::drill::target::snapshot_index(3, *s) == Some(0))
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = drill_at(&env, &plan, now, &["--random", "--seed", &seed]);
        let r = report_of(&out);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(r["passed"], true, "{r}");
        assert_eq!(r["target"]["seed"].to_string(), seed, "{r}");
        assert_eq!(r["target"]["drawn_from"], "snapshot 1 of 3, oldest first");
        assert_eq!(head(&r["target"], "at"), "2026-03-02T08:00:00", "{r}");
        assert_eq!(r["snapshot"], oldest.as_str(), "{r}");
        assert_eq!(returned(&r, "orders"), "100", "{r}");
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    // The Markdown report says how the target was chosen.
    let md = std::fs::read_dir(env.reports())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!("{}.md", ids[0])))
        .expect("the drill's Markdown report");
    let md = std::fs::read_to_string(md).unwrap();
    assert!(
        md.contains(&format!(
            "| target | 2026-03-02T08:00:00+00:00 (random, seed {seed}, drawn from snapshot 1 of 3, oldest first) |"
        )),
        "{md}"
    );
    // --latest overrides the plan's random target; --seed needs --random.
    let r = report_of(&drill_at(&env, &plan, now, &["--latest"]));
    assert_eq!(r["target"]["kind"], "latest", "{r}");
    assert!(r["target"].get("seed").is_none(), "{r}");
    let said = said_by(&drill_at(&env, &plan, now, &["--seed", "7"]), 2);
    assert!(said.contains("--random"), "{said}");
}

#[test]
fn a_postgres_drill_at_a_random_point_restores_inside_the_window_and_a_rewind_past_it_the_newest_point(
) {
    use chrono::{DateTime, Utc};
    use common::postgres::Cluster;
    let time = |s: &str| -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc)
    };
    let pg = Cluster::start();
    pg.sql("CREATE TABLE orders AS SELECT i AS id FROM generate_series(1, 5000) i");
    let plan = common::bin::s(&pg.plan).to_string();
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    // Three batches after the base backup, each between two readings of the
    // server's clock: a restore to a time has every batch committed before
    // it and none begun after it.
    let mut batches = Vec::new();
    for k in 0..3 {
        let before = time(&pg.now());
        pg.sql(&format!(
            "INSERT INTO orders SELECT generate_series({}, {})",
            5001 + 500 * k,
            5500 + 500 * k
        ));
        batches.push((before, time(&pg.now())));
    }
    pg.archive_now();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&pg.plan)
        .unwrap();
    std::io::Write::write_all(
        &mut file,
        format!(
            "drill:\n  scratch_dir: {}\n  target: random\n  checks:\n    - name: orders\n      sql: \"SELECT count(*) FROM orders\"\n",
            pg.path("scratch").display()
        )
        .as_bytes(),
    )
    .unwrap();
    drop(file);
    let reports = pg.path("reports");
    let drill = |now: Option<&str>| {
        let vars: Vec<(&str, &str)> = now.map(|n| ("HOLDFAST_NOW", n)).into_iter().collect();
        common::bin::command_as("postgres", &vars)
            .args(["drill", "--plan", &plan, "--json", "--reports"])
            .arg(&reports)
            .output()
            .unwrap()
    };

    // The window as `holdfast snapshots` shows it.
    let listed = text(&pg.holdfast(&["snapshots", "--plan", &plan]));
    let window = listed
        .lines()
        .find_map(|l| l.strip_prefix("restorable window: "))
        .unwrap_or_else(|| panic!("no window in:\n{listed}"))
        .to_string();
    let (from, to) = window.split_once(" to ").unwrap();
    let (from, to) = (time(from), time(to));

    let out = drill(None);
    let r = report_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(r["target"]["kind"], "random", "{r}");
    assert_eq!(
        r["target"]["drawn_from"],
        format!("the restorable window {window}").as_str(),
        "{r}"
    );
    let at = time(r["target"]["at"].as_str().unwrap());
    assert!(from <= at && at < to, "{at} outside {window}: {r}");
    assert_eq!(time(r["restored_point"].as_str().unwrap()), at, "{r}");
    let committed = batches.iter().filter(|(_, after)| *after <= at).count();
    let begun = batches.iter().filter(|(before, _)| *before <= at).count();
    let rows: usize = returned(&r, "orders").parse().unwrap();
    assert!(
        5000 + 500 * committed <= rows && rows <= 5000 + 500 * begun,
        "{rows} orders at {at}, batches {batches:?}: {r}"
    );
    eprintln!(
        "random PostgreSQL drill: target {at} in {window}, {rows} orders, RTO {}s",
        r["rto_seconds"]
    );

    // A rewind whose target is after the newest archived transaction drills
    // the newest point, as its note says (there is no later transaction for
    // recovery to stop at).
    let plan_text = std::fs::read_to_string(&pg.plan)
        .unwrap()
        .replace("  target: random\n", "  rewind: 1m\n");
    std::fs::write(&pg.plan, plan_text).unwrap();
    let later = (to + chrono::Duration::hours(1)).to_rfc3339();
    let out = drill(Some(&later));
    let r = report_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(r["target"]["kind"], "rewind", "{r}");
    assert_eq!(time(r["restored_point"].as_str().unwrap()), to, "{r}");
    assert_eq!(returned(&r, "orders"), "6500", "{r}");
    assert!(
        r["notes"]
            .to_string()
            .contains("after the newest restorable point"),
        "{r}"
    );
    assert!(r["rpo_seconds"].as_f64().unwrap() >= 3540.0, "{r}");
}

#[test]
fn a_drill_without_room_in_the_scratch_space_is_refused_up_front_with_the_figures() {
    let env = Env::new();
    make_db(&env.path("app.db"), 20_000);
    let small = env.path("small");
    std::fs::create_dir(&small).unwrap();
    let plan = env.plan(
        "app.yaml",
        &format!("{{type: sqlite, path: {}}}", env.path("app.db").display()),
        "",
    );
    // scratch_dir: the 1 MiB tmpfs below.
    let text_ = std::fs::read_to_string(&plan).unwrap().replace(
        &env.path("scratch").display().to_string(),
        small.to_str().unwrap(),
    );
    std::fs::write(&plan, text_).unwrap();
    ok(&["backup", "--plan", plan.to_str().unwrap()]);
    let mut unshare = std::process::Command::new("unshare");
    unshare.env("HOLDFAST_KEY", common::bin::TEST_KEY);
    if !common::is_root() {
        unshare.arg("--map-root-user");
    }
    let out = unshare
        .args(["--mount", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=1m tmpfs \"$1\" || exit 99; \
             HOLDFAST_LOG=warn \"$2\" drill --plan \"$3\" --reports \"$4\"; rc=$?; \
             echo \"listing: $(ls -A \"$1\")\"; exit $rc",
        )
        .args([
            "sh",
            small.to_str().unwrap(),
            common::bin::BIN,
            plan.to_str().unwrap(),
            env.reports().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let said = said_by(&out, 8);
    assert!(
        said.contains("not enough scratch space for a drill of plan app")
            && said.contains(&format!("{} has ", small.display()))
            && said.contains("MiB) free, snapshot ")
            && said.contains("needs "),
        "{said}"
    );
    assert!(said.contains("listing: \n"), "nothing written: {said}");
}

#[test]
fn on_s3_the_drill_record_is_under_object_lock_and_cannot_be_deleted() {
    let env = Env::new();
    let s3 = common::s3_env();
    let bucket = common::bucket_name("drill");
    make_db(&env.path("app.db"), 600);
    let plan = env.path("app.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: app\nsource: {{type: sqlite, path: {db}}}\nrepository:\n  url: s3://{bucket}/prod\n  endpoint: {endpoint}\n  region: us-east-1\nschedule:\n  backup: \"0 * * * *\"\nlock: {{mode: compliance, days: 7}}\nretention: {{keep_last: 24, keep_daily: 7}}\ndrill:\n  scratch_dir: {scratch}\n{CHECKS}",
            db = env.path("app.db").display(),
            endpoint = s3.endpoint,
            scratch = env.path("scratch").display(),
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        command()
            .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
            .args(args)
            .output()
            .unwrap()
    };
    let plan_s = plan.to_str().unwrap();
    let reports = env.reports();
    for args in [
        &["repo", "init", "--plan", plan_s][..],
        &["backup", "--plan", plan_s][..],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = run(&[
        "drill",
        "--plan",
        plan_s,
        "--json",
        "--reports",
        reports.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = report_of(&out);
    let key = report["record_key"].as_str().unwrap().to_string();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use holdfast::store::Store;
        let store = holdfast::store::s3::S3Store::open(common::s3_config(&bucket, "prod"))
            .await
            .unwrap();
        let head = store.head(&key).await.unwrap();
        let lock = head.retention.expect("the record is locked");
        assert_eq!(lock.mode, holdfast::store::LockMode::Compliance);
        assert!(
            lock.until > chrono::Utc::now() + chrono::Duration::days(6),
            "{lock:?}"
        );
        let refused = store.delete(&key).await.unwrap_err();
        assert!(
            matches!(refused, holdfast::store::StoreError::Retained { .. }),
            "{refused}"
        );
        assert_eq!(store.list("drills/app/").await.unwrap().len(), 1);
    });
    let out = run(&["drills", "--plan", plan_s, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["report"]["id"], report["id"], "{}", text(&out));
}

/// A plan whose only check never ends: the drill sits in its checks phase.
const FOREVER: &str = "  checks:\n    - name: forever\n      sql: \"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c\"\n";

#[test]
fn a_check_that_never_ends_is_stopped_at_max_duration_and_sigterm_cleans_up() {
    let env = Env::new();
    make_db(&env.path("app.db"), 100);
    let plan = env.sqlite_plan("app.yaml", &format!("  max_duration: 2s\n{FOREVER}"));
    ok(&["backup", "--plan", plan.to_str().unwrap()]);
    // Stopped at max_duration: the query is interrupted, the process exits.
    let child = command()
        .args([
            "drill",
            "--plan",
            plan.to_str().unwrap(),
            "--json",
            "--reports",
        ])
        .arg(env.reports())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = exits_within(child, 60);
    let said = said_by(&out, 11);
    assert!(said.contains("ran past max_duration (2s)"), "{said}");
    assert!(env.scratch_left().is_empty(), "{:?}", env.scratch_left());

    // SIGTERM in the middle: the scratch folder is removed before exit.
    let plan = env.sqlite_plan("slow.yaml", FOREVER);
    let mut child = command()
        .args(["drill", "--plan", plan.to_str().unwrap(), "--reports"])
        .arg(env.reports())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let scratch = env.path(&format!("scratch/holdfast-drill-app-{}", child.id()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !scratch.join("restored.db").exists() {
        assert!(
            Instant::now() < deadline,
            "the drill restored nothing in 120s"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drill ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = exits_within(child, 60);
    let said = said_by(&out, 1);
    assert!(said.contains("interrupted by SIGTERM"), "{said}");
    assert!(!scratch.exists(), "{:?}", env.scratch_left());
}

/// The child's output once it exits; killed, and the test failed, if it is
/// still running after `secs` (a drill that hangs is the bug under test).
fn exits_within(mut child: std::process::Child, secs: u64) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("the drill was still running after {secs}s: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
