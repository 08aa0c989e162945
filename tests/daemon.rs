//! `holdfast daemon` as a real process on SQLite + local plans with
//! seconds-level schedules: what an operator sees on /status and /metrics,
//! reloads with a broken plan, SIGTERM in the middle of a long backup, and a
//! daemon killed and restarted after a missed run. Real time throughout;
//! every wait is on a condition with a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use common::bin::{command, json, ok};
use common::daemon::Daemon;
use common::make_db;
use common::webhook::Receiver;
use serde_json::Value;

fn write_plan(dir: &Path, name: &str, schedule: &str) -> PathBuf {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!(
            "name: {name}\nsource: {{type: sqlite, path: ../{name}.db}}\nrepository: {{url: ../repo-{name}}}\nschedule: {{{schedule}}}\nlock: {{mode: none}}\nretention: {{keep_last: 3}}\n"
        ),
    )
    .unwrap();
    file
}

fn snapshot_count(plan: &Path) -> usize {
    let rows = json(&["snapshots", "--plan", plan.to_str().unwrap(), "--json"]);
    rows.as_array()
        .map(Vec::len)
        .unwrap_or_else(|| panic!("no snapshots list: {rows}"))
}

fn setup(names: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir(&plans).unwrap();
    for name in names {
        make_db(&dir.path().join(format!("{name}.db")), 200);
    }
    (dir, plans)
}

fn ran_ok(plan: &Value, job: &str) -> bool {
    plan["last_runs"][job]["outcome"] == "ok"
}

#[test]
fn scheduled_backup_verify_and_prune_show_on_status_and_metrics() {
    let (dir, plans) = setup(&["app"]);
    let plan = write_plan(
        &plans,
        "app",
        "backup: '*/2 * * * * *', verify: '*/3 * * * * *', prune: '*/3 * * * * *'",
    );
    let d = Daemon::start(&plans, &dir.path().join("state"), &[]);
    d.wait_for("a backup, a verify and a prune", |d| {
        let p = d.plan("app");
        ran_ok(&p, "backup") && ran_ok(&p, "verify") && ran_ok(&p, "prune")
    });
    d.wait_for("three snapshots", |d| d.plan("app")["snapshots"] == 3);
    let p = d.plan("app");
    assert_eq!(p["valid"], true, "{p}");
    assert!(p["last_backup"]["snapshot"].is_string(), "{p}");
    assert!(p["restorable"]["from"].is_string(), "{p}");
    for job in ["backup", "verify", "prune"] {
        let next: DateTime<Utc> = p["next_runs"][job].as_str().unwrap().parse().unwrap();
        assert!(next > Utc::now() - chrono::Duration::seconds(5), "{p}");
    }
    assert!(
        d.metric("holdfast_backup_last_success_timestamp_seconds{plan=\"app\"}")
            .unwrap()
            > 1.7e9
    );
    assert_eq!(d.metric("holdfast_plan_valid{plan=\"app\"}"), Some(1.0));
    assert_eq!(
        d.metric("holdfast_verify_last_success{plan=\"app\"}"),
        Some(1.0)
    );
    assert!(d
        .metric("holdfast_prune_last_timestamp_seconds{plan=\"app\"}")
        .is_some());
    assert!(
        d.metric("holdfast_backup_bytes_read{plan=\"app\"}")
            .unwrap()
            > 0.0
    );
    let snaps = d.metric("holdfast_snapshots{plan=\"app\"}").unwrap();
    assert!((2.0..=4.0).contains(&snaps), "{snaps}");
    // keep_last: 3 — the scheduled prune holds the repository to three or four.
    d.wait_for("more backups, pruned", |d| {
        d.get("/status").is_some_and(|_| snapshot_count(&plan) <= 4)
            && d.plan("app")["last_runs"]["prune"]["summary"]
                .as_str()
                .is_some_and(|s| !s.contains(" 0 removed"))
    });
}

#[test]
fn a_broken_plan_on_sighup_keeps_running_its_previous_version_and_others_go_on() {
    let (dir, plans) = setup(&["a", "b"]);
    write_plan(&plans, "a", "backup: '*/2 * * * * *'");
    let b = write_plan(&plans, "b", "backup: '*/2 * * * * *'");
    let d = Daemon::start(&plans, &dir.path().join("state"), &[]);
    d.wait_for("backups of a and b", |d| {
        ran_ok(&d.plan("a"), "backup") && ran_ok(&d.plan("b"), "backup")
    });

    let text = std::fs::read_to_string(&b).unwrap();
    std::fs::write(&b, text.replace("keep_last: 3", "keep_lsat: 3")).unwrap();
    d.signal("-HUP");
    d.wait_for("b reported invalid", |d| d.plan("b")["valid"] == false);
    let pb = d.plan("b");
    let error = pb["error"].as_str().unwrap();
    assert!(
        error.contains("b.yaml") && error.contains("keep_lsat"),
        "{error}"
    );
    assert_eq!(d.metric("holdfast_plan_valid{plan=\"b\"}"), Some(0.0));
    assert_eq!(d.metric("holdfast_plan_valid{plan=\"a\"}"), Some(1.0));
    let log = d.log();
    assert!(
        log.contains("plan invalid, its previous version keeps running")
            && log.contains("keep_lsat"),
        "{log}"
    );
    // Both go on: b on its previous version.
    let since = |p: &Value| -> DateTime<Utc> {
        p["last_runs"]["backup"]["started_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let broke = Utc::now();
    d.wait_for("new backups of a and of b", |d| {
        since(&d.plan("a")) > broke && since(&d.plan("b")) > broke
    });
    // A new plan in the folder starts without a signal.
    make_db(&dir.path().join("c.db"), 10);
    write_plan(&plans, "c", "backup: '*/2 * * * * *'");
    d.wait_for("plan c backed up", |d| {
        d.status()["plans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["plan"] == "c" && ran_ok(p, "backup"))
    });
}

#[test]
fn sigterm_during_a_long_backup_exits_cleanly_leaving_no_partial_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir(&plans).unwrap();
    // 400 MB of incompressible pages: a backup that takes seconds.
    let conn = rusqlite::Connection::open(dir.path().join("big.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000)
         INSERT INTO blobs SELECT x, randomblob(4000) FROM c;",
    )
    .unwrap();
    drop(conn);
    let plan = write_plan(&plans, "big", "backup: '0 0 1 1 *'");
    let mut d = Daemon::start(&plans, &dir.path().join("state"), &["--grace", "0s"]);
    // Running, past creating the repository (its key's Argon2id takes a
    // moment): the cancellation is to hit the backup itself.
    let config = dir.path().join("repo-big/objects/config");
    d.wait_for("the backup running", |d| {
        d.metric("holdfast_job_running{plan=\"big\",job=\"backup\"}") == Some(1.0)
            && config.exists()
    });
    let asked = Instant::now();
    d.signal("-TERM");
    let st = d.wait_exit();
    let took = asked.elapsed();
    assert!(st.success(), "{st:?}\n{}", d.log());
    let log = d.log();
    assert!(log.contains("backup cancelled at shutdown"), "{log}");
    eprintln!("SIGTERM to exit: {took:?}");
    assert_eq!(
        snapshot_count(&plan),
        0,
        "a cancelled backup left a snapshot"
    );
    ok(&["verify", "--plan", plan.to_str().unwrap()]);
    // Not recorded as run: the next start backs up at once.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state/daemon-state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        state["plans"]["big"]["jobs"].get("backup").is_none(),
        "{state}"
    );
}

#[test]
fn killed_and_restarted_after_missed_runs_catches_up_exactly_once() {
    let (dir, plans) = setup(&["app"]);
    // Two runs a few seconds from now, in one minute; then not until tomorrow.
    let mut now = Utc::now();
    if now.second() > 45 {
        std::thread::sleep(Duration::from_secs(61 - u64::from(now.second())));
        now = Utc::now();
    }
    let (s1, s2) = (now.second() + 4, now.second() + 7);
    let schedule = format!("backup: '{s1},{s2} {} {} * * *'", now.minute(), now.hour());
    let plan = write_plan(&plans, "app", &schedule);
    let state = dir.path().join("state");
    let mut d = Daemon::start(&plans, &state, &[]);
    d.wait_for("the first backup", |d| ran_ok(&d.plan("app"), "backup"));
    d.child.kill().unwrap();
    d.wait_exit();
    assert!(
        Utc::now().second() < s1,
        "the first backup took too long for this test's schedule"
    );
    assert_eq!(snapshot_count(&plan), 1);
    while Utc::now().second() <= s2 {
        std::thread::sleep(Duration::from_millis(200));
    }

    let restarted = Utc::now();
    let d = Daemon::start(&plans, &state, &[]);
    d.wait_for("the catch-up backup", |d| {
        let p = d.plan("app");
        p["running"].is_null()
            && p["last_runs"]["backup"]["started_at"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                .is_some_and(|t| t >= restarted)
    });
    let next: DateTime<Utc> = d.plan("app")["next_runs"]["backup"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        next > Utc::now() + chrono::Duration::hours(20),
        "next run {next}"
    );
    // Two scheduler rounds later, still one catch-up: no burst.
    std::thread::sleep(2 * Duration::from_secs(2));
    assert_eq!(snapshot_count(&plan), 2, "{}", d.log());
    assert_eq!(d.log().matches("starting backup").count(), 1, "{}", d.log());
}

#[test]
fn scheduled_drills_record_their_outcome_rto_and_checks_in_status_and_metrics() {
    let (dir, plans) = setup(&["good", "bad"]);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    for (name, expect) in [("good", "at_least: 1"), ("bad", "equals: \"-1\"")] {
        std::fs::write(
            plans.join(format!("{name}.yaml")),
            format!(
                "name: {name}\nsource: {{type: sqlite, path: ../{name}.db}}\nrepository: {{url: ../repo-{name}}}\n\
                 schedule: {{backup: '*/2 * * * * *', drill: '*/3 * * * * *'}}\nlock: {{mode: none}}\nretention: {{keep_last: 3}}\n\
                 drill:\n  scratch_dir: {}\n  checks:\n    - name: orders exist\n      sql: \"SELECT count(*) FROM orders\"\n      expect: {{{expect}}}\n",
                scratch.display()
            ),
        )
        .unwrap();
    }
    let d = Daemon::start(&plans, &dir.path().join("state"), &[]);
    d.wait_for("a drill of each plan", |d| {
        d.plan("good")["last_runs"]["drill"]["outcome"].is_string()
            && d.plan("bad")["last_runs"]["drill"]["outcome"].is_string()
    });
    let good = d.plan("good");
    assert!(ran_ok(&good, "drill"), "{good}");
    let bad = d.plan("bad");
    assert!(!ran_ok(&bad, "drill"), "{bad}");
    let why = bad["last_runs"]["drill"].to_string();
    assert!(
        why.contains("orders exist"),
        "the failed check is named: {why}"
    );
    assert_eq!(
        d.metric("holdfast_drill_last_success{plan=\"good\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.metric("holdfast_drill_last_success{plan=\"bad\"}"),
        Some(0.0)
    );
    assert!(
        d.metric("holdfast_drill_rto_seconds{plan=\"good\"}")
            .unwrap()
            > 0.0
    );
    // The plan's check and the built-ins (integrity_check, the restore's checksums).
    assert!(
        d.metric("holdfast_drill_checks_passed{plan=\"good\"}")
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        d.metric("holdfast_drill_checks_failed{plan=\"bad\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.metric("holdfast_drill_checks_failed{plan=\"good\"}"),
        Some(0.0)
    );
    // The drills are recorded in each plan's repository, as `holdfast drill` records them.
    for (name, passed) in [("good", true), ("bad", false)] {
        let plan = plans.join(format!("{name}.yaml"));
        let listed = json(&["drills", "--plan", plan.to_str().unwrap(), "--json"]);
        let first = &listed.as_array().unwrap_or_else(|| panic!("{listed}"))[0];
        assert_eq!(first["report"]["passed"], passed, "{listed}");
    }
    // Nothing is left in the scratch space once the daemon has stopped (a
    // drill every 3 s may be running right now, in a scratch folder of its own).
    let mut d = d;
    d.signal("-TERM");
    assert!(d.wait_exit().success(), "{}", d.log());
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the scratch space: {left:?}");
}

#[test]
fn a_failing_drill_and_an_rpo_over_its_limit_are_alerted_repeated_and_resolved() {
    let (dir, plans) = setup(&["shop", "late"]);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let shop = plans.join("shop.yaml");
    let shop_plan = |expect: &str| {
        format!(
            "name: shop\nsource: {{type: sqlite, path: ../shop.db}}\nrepository: {{url: ../repo-shop}}\n\
             schedule: {{backup: '*/2 * * * * *', drill: '*/2 * * * * *'}}\nlock: {{mode: none}}\nretention: {{keep_last: 3}}\n\
             drill:\n  scratch_dir: {}\n  checks:\n    - name: orders exist\n      sql: \"SELECT count(*) FROM orders\"\n      expect: {{{expect}}}\n",
            scratch.display()
        )
    };
    std::fs::write(&shop, shop_plan("at_least: 1000000")).unwrap();
    // Backs up once (at start), then not for a year: its RPO grows past 3 s.
    std::fs::write(
        plans.join("late.yaml"),
        "name: late\nsource: {type: sqlite, path: ../late.db}\nrepository: {url: ../repo-late}\n\
         schedule: {backup: '0 0 1 1 *'}\nrpo_limit: 3s\nlock: {mode: none}\nretention: {keep_last: 3}\n",
    )
    .unwrap();
    let hook = Receiver::start();
    let commands = dir.path().join("alert-commands.jsonl");
    let d = Daemon::start(
        &plans,
        &dir.path().join("state"),
        &[
            "--alert-webhook",
            &hook.url,
            "--alert-command",
            &format!(
                "printf '%s %s %s\\n' \"$HOLDFAST_ALERT_STATUS\" \"$HOLDFAST_ALERT_NAME\" \"$HOLDFAST_ALERT_PLAN\" >> {}",
                commands.display()
            ),
            "--alert-repeat",
            "3s",
        ],
    );
    d.wait_for("the failed drill alerted", |_| {
        hook.count("HoldfastDrillFailed", "shop", "firing") >= 1
    });
    d.wait_for("the RPO alert, and one repeat of it", |_| {
        hook.count("HoldfastRpoExceeded", "late", "firing") >= 2
    });
    let late = d.plan("late");
    assert!(
        late["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "rpo_exceeded"),
        "/status lists the firing alert: {late}"
    );
    assert!(late["rpo_seconds"].as_i64().unwrap() >= 3, "{late}");
    let drill = hook
        .alerts()
        .into_iter()
        .find(|a| a.0 == "HoldfastDrillFailed")
        .unwrap();
    assert_eq!(drill.3, "drill of plan shop failed", "{drill:?}");

    // The check is fixed: the next drill passes and the alert resolves.
    std::fs::write(&shop, shop_plan("at_least: 1")).unwrap();
    d.wait_for("the drill alert resolved", |_| {
        hook.count("HoldfastDrillFailed", "shop", "resolved") == 1
    });
    assert!(ran_ok(&d.plan("shop"), "drill"), "{}", d.plan("shop"));
    assert!(
        d.plan("shop")["alerts"].as_array().unwrap().is_empty(),
        "{}",
        d.plan("shop")
    );
    // A passing drill repeats nothing.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(hook.count("HoldfastDrillFailed", "shop", "resolved"), 1);
    assert_eq!(hook.count("HoldfastBackupFailed", "shop", "firing"), 0);
    // The command got the same alerts.
    let lines = std::fs::read_to_string(&commands).unwrap();
    assert!(lines.contains("firing HoldfastDrillFailed shop"), "{lines}");
    assert!(
        lines.contains("resolved HoldfastDrillFailed shop"),
        "{lines}"
    );
    assert!(lines.contains("firing HoldfastRpoExceeded late"), "{lines}");
}

#[test]
fn the_lock_keeper_lengthens_the_locks_of_kept_snapshots_and_exports_the_coverage() {
    let (dir, plans) = setup(&["vault"]);
    let plan = plans.join("vault.yaml");
    std::fs::write(
        &plan,
        "name: vault\nsource: {type: sqlite, path: ../vault.db}\nrepository: {url: ../repo-vault}\n\
         schedule: {backup: '0 3 * * *', keep_locks: '*/2 * * * * *'}\n\
         lock: {mode: compliance, days: 10}\nretention: {keep_daily: 7}\n",
    )
    .unwrap();
    // A snapshot taken five days ago: its lock ends in at most five days,
    // while a daily snapshot kept now should stay locked for eight (seven
    // days of keep_daily and a day's margin).
    let five_days_ago = Utc::now() - chrono::Duration::days(5);
    let out = command()
        .env(holdfast::clock::NOW_VAR, five_days_ago.to_rfc3339())
        .args(["backup", "--plan", plan.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Daemon::start(&plans, &dir.path().join("state"), &[]);
    d.wait_for("a keep-locks run", |d| {
        ran_ok(&d.plan("vault"), "keep-locks")
    });
    let extended = d
        .metric("holdfast_lock_extensions_total{plan=\"vault\"}")
        .unwrap_or(0.0);
    assert!(
        extended >= 2.0,
        "the old snapshot's objects were lengthened: {extended}\n{}",
        d.log()
    );
    let coverage = d
        .metric("holdfast_lock_coverage_seconds{plan=\"vault\"}")
        .unwrap();
    assert!(
        coverage > 6.0 * 86400.0 && coverage <= 10.0 * 86400.0 + 60.0,
        "kept snapshots locked as long as a daily snapshot taken now (7 days and a day's margin): {coverage}"
    );
    let p = d.plan("vault");
    assert!(
        p["lock_coverage"]["seconds"].as_i64().unwrap() > 6 * 86400,
        "{p}"
    );
    assert!(p["alerts"].as_array().unwrap().is_empty(), "{p}");
    // Each later run finds the locks current: nothing more to lengthen.
    let runs = |d: &Daemon| d.log().matches("keep-locks done").count();
    let seen = runs(&d);
    d.wait_for("two more keep-locks runs", |d| runs(d) >= seen + 2);
    assert_eq!(
        d.metric("holdfast_lock_extensions_total{plan=\"vault\"}"),
        Some(extended)
    );
}

/// An insider with the bucket's credentials replays a real, sealed manifest
/// under a newer snapshot name. The daemon's next look at the repository
/// ignores it (the snapshot count and the last backup stay the real ones)
/// and shows it where on-call looks: `holdfast_rejected_objects`, the plan's
/// `rejected` list on `/status`, and a red line on the status page naming
/// the object.
#[test]
fn a_planted_manifest_is_counted_in_metrics_and_named_on_status_and_the_page() {
    use holdfast::store::{local::LocalStore, PutOptions, Store};
    let (dir, plans) = setup(&["app"]);
    let plan = write_plan(&plans, "app", "backup: '*/2 * * * * *'");
    let d = Daemon::start(&plans, &dir.path().join("state"), &[]);
    d.wait_for("a backup", |d| ran_ok(&d.plan("app"), "backup"));
    assert_eq!(
        d.metric("holdfast_rejected_objects{plan=\"app\"}"),
        Some(0.0)
    );

    let rows = json(&["snapshots", "--plan", plan.to_str().unwrap(), "--json"]);
    let real = rows[0]["key"].as_str().unwrap().to_string();
    // `snapshots/app/<time>-<id>`: one second later, the same bytes.
    let (prefix, rest) = real.rsplit_once('/').unwrap();
    let (time, id) = rest.split_once('-').unwrap();
    let started: DateTime<Utc> =
        chrono::NaiveDateTime::parse_from_str(time, holdfast::repository::SNAPSHOT_TIME_FORMAT)
            .unwrap()
            .and_utc();
    let later = (started + chrono::Duration::seconds(1))
        .format(holdfast::repository::SNAPSHOT_TIME_FORMAT)
        .to_string();
    let planted = format!("{prefix}/{later}-{id}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = LocalStore::open(dir.path().join("repo-app")).unwrap();
    rt.block_on(async {
        let bytes = store.get(&real).await.unwrap();
        let opts = PutOptions {
            sha256: holdfast::ids::Hash256::digest(&bytes),
            retention: None,
        };
        store.put(&planted, bytes, &opts).await.unwrap();
    });

    d.wait_for("the planted manifest counted", |d| {
        d.metric("holdfast_rejected_objects{plan=\"app\"}") == Some(1.0)
    });
    let p = d.plan("app");
    let rejected = p["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{p}");
    assert_eq!(rejected[0]["object"], planted.as_str(), "{p}");
    assert!(
        rejected[0]["detail"]
            .as_str()
            .unwrap()
            .contains("not authentic"),
        "{p}"
    );
    assert_ne!(p["last_backup"]["time"], Value::Null, "{p}");
    let last: DateTime<Utc> = p["last_backup"]["time"].as_str().unwrap().parse().unwrap();
    assert!(
        last.format(holdfast::repository::SNAPSHOT_TIME_FORMAT)
            .to_string()
            != later,
        "the planted manifest is not the last backup: {p}"
    );
    let page = d.get("/").unwrap();
    assert!(page.contains("1 rejected object(s)"), "{page}");
    assert!(page.contains(&planted), "{page}");
}
