//! The lock keeper, as the runbook uses it: backups stop, the snapshots the
//! policy still keeps would lose their locks, `holdfast keep-locks` carries
//! them (and every object they need) forward; `--dry-run` changes nothing.
//! On a local repository with the time injected (`HOLDFAST_NOW`), and on
//! SeaweedFS with the locks read back through the S3 API.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use common::bin::{command, json_of, s};
use common::make_db;
use holdfast::store::local::LocalStore;
use holdfast::store::Store;

fn at(now: DateTime<Utc>) -> Command {
    let mut c = command();
    c.env(holdfast::clock::NOW_VAR, now.to_rfc3339());
    c
}

fn run_json(mut c: Command, args: &[&str]) -> serde_json::Value {
    json_of(&c.args(args).output().expect("holdfast runs"))
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn ts(v: &serde_json::Value) -> DateTime<Utc> {
    t(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
}

fn sqlite_plan(dir: &Path, repository: &str, extra: &str) -> PathBuf {
    let db = dir.join("app.db");
    make_db(&db, 3_000);
    let file = dir.join("app.yaml");
    std::fs::write(
        &file,
        format!(
            "name: app\nsource: {{type: sqlite, path: {db}}}\nrepository:\n  url: {repository}\n{extra}schedule:\n  backup: \"0 * * * *\"\nlock: {{mode: compliance, days: 10}}\nretention: {{keep_last: 1, keep_daily: 7}}\n",
            db = db.display()
        ),
    )
    .unwrap();
    file
}

/// Every key under `prefix` with the end of its lock, read from the store.
async fn locks(store: &dyn Store, prefix: &str) -> Vec<(String, DateTime<Utc>)> {
    let mut out = Vec::new();
    for info in store.list(prefix).await.unwrap() {
        let r = store.head(&info.key).await.unwrap().retention;
        let until = r
            .unwrap_or_else(|| panic!("{} is not locked", info.key))
            .until;
        out.push((info.key, until));
    }
    assert!(!out.is_empty(), "nothing under {prefix}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_snapshot_whose_lock_would_end_is_locked_again_with_its_packs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let plan = sqlite_plan(dir.path(), &format!("file://{}", repo.display()), "");
    let plan = s(&plan);

    // Two backups of the same data (so every pack is the day's snapshot's),
    // then none for a week: the day's snapshot is kept by keep_daily, the
    // hour's by keep_last, whatever the date.
    let t0 = t("2026-01-05T10:00:00Z");
    let daily = run_json(at(t0), &["backup", "--plan", plan, "--json"]);
    let last = run_json(
        at(t0 + Duration::hours(1)),
        &["backup", "--plan", plan, "--json"],
    );
    assert_eq!(daily["tier"], "daily", "{daily}");
    assert_eq!(last["tier"], "last", "{last}");
    // keep_daily 7 with hourly runs: 7 days and a day of margin.
    let daily_until = ts(&daily["retain_until"]);
    assert_eq!(daily_until, t0 + Duration::days(8));

    let now = t0 + Duration::days(7);
    let store = LocalStore::open(repo.clone()).unwrap();
    let before_packs = locks(&store, "packs/").await;
    let before_snaps = locks(&store, "snapshots/").await;

    // --dry-run reports the work and changes nothing.
    let dry = run_json(
        at(now),
        &["keep-locks", "--plan", plan, "--dry-run", "--json"],
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["snapshots_kept"], 2, "{dry}");
    assert!(dry["objects_extended"].as_u64().unwrap() >= 4, "{dry}");
    // The `last` snapshot's lock already ended six days ago: coverage is negative.
    assert!(dry["lock_coverage_seconds"].as_i64().unwrap() < 0, "{dry}");
    assert_eq!(locks(&store, "packs/").await, before_packs);
    assert_eq!(locks(&store, "snapshots/").await, before_snaps);

    let report = run_json(at(now), &["keep-locks", "--plan", plan, "--json"]);
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["snapshots_kept"], 2, "{report}");
    assert_eq!(
        report["objects_extended"], dry["objects_extended"],
        "{report}"
    );
    let snaps = report["snapshots"].as_array().unwrap();
    let short = snaps[0]["snapshot"].as_str().unwrap();
    assert!(
        daily["snapshot"].as_str().unwrap().starts_with(short),
        "{report}"
    );
    assert_eq!(snaps[0]["kept_by"], "keep_daily");
    // The day's snapshot: a fresh daily lock from now, a week past its old one.
    let new_daily = now + Duration::days(8);
    assert_eq!(ts(&snaps[0]["locked_until"]), new_daily, "{report}");
    assert_eq!(snaps[1]["kept_by"], "keep_last");
    let coverage = report["lock_coverage_seconds"].as_i64().unwrap();
    let earliest = snaps.iter().map(|s| ts(&s["locked_until"])).min().unwrap();
    assert_eq!(coverage, (earliest - now).num_seconds(), "{report}");
    assert!(coverage > 86_400, "a day or more ahead: {report}");

    // Read back from the store: the daily manifest and every pack it needs
    // (all of them: the second snapshot reuses the first's data).
    let key = daily["key"].as_str().unwrap();
    let got = store.head(key).await.unwrap().retention.unwrap();
    assert_eq!(got.until, new_daily, "{key}");
    for (key, until) in locks(&store, "packs/").await {
        assert!(
            until >= new_daily,
            "{key} locked until {until}, needs {new_daily}"
        );
    }
    for (key, until) in locks(&store, "index/").await {
        assert!(
            until >= new_daily,
            "{key} locked until {until}, needs {new_daily}"
        );
    }
    // And the daily snapshot's entries object (manifest version 4) and its
    // one chunk-list object (version 7), named by its start time.
    let entries = locks(&store, "entries/app/").await;
    let daily_entries: Vec<_> = entries
        .iter()
        .filter(|(k, _)| k.starts_with("entries/app/20260105T100000.000Z-"))
        .collect();
    assert_eq!(daily_entries.len(), 2, "{entries:?}");
    for (key, until) in daily_entries {
        assert_eq!(*until, new_daily, "{key}: {entries:?}");
    }

    // verify finds every lock consistent.
    let verify = run_json(at(now), &["verify", "--plan", plan, "--json"]);
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
    assert!(verify["objects_lock_checked"].as_u64().unwrap() > 0);

    // A second run within the slack has nothing to do.
    let again = run_json(
        at(now + Duration::hours(1)),
        &["keep-locks", "--plan", plan, "--json"],
    );
    assert_eq!(again["objects_extended"], 0, "{again}");

    // Backups resume half a day later: the hour's snapshot leaves the policy
    // (keep_last 1), its recorded lock ended a week ago, but the keeper's
    // lock still holds: prune keeps it, and names nothing as removed.
    let later = now + Duration::hours(12);
    let resumed = run_json(at(later), &["backup", "--plan", plan, "--json"]);
    assert_eq!(resumed["tier"], "daily", "{resumed}");
    let prune = run_json(at(later), &["prune", "--plan", plan, "--json"]);
    assert_eq!(prune["removed"], serde_json::json!([]), "{prune}");
    assert_eq!(prune["refused"], serde_json::json!([]), "{prune}");
    let held = prune["held_by_lock"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{prune}");
    assert!(
        last["snapshot"]
            .as_str()
            .unwrap()
            .starts_with(held[0]["snapshot"].as_str().unwrap()),
        "{prune}"
    );
    assert!(store.list("prunes/").await.unwrap().is_empty(), "{prune}");
    let verify = run_json(at(later), &["verify", "--plan", plan, "--json"]);
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}

/// A backup whose previous snapshot is locked at least as long as it skips
/// the packs that snapshot names (their locks already reach far enough),
/// and extends every other pack it reuses: here one another plan wrote with
/// a shorter lock, from the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_extends_the_locks_its_previous_snapshot_does_not_already_cover() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let url = format!("file://{}", repo.display());
    let app = sqlite_plan(dir.path(), &url, "");
    let app = s(&app);
    // A second plan over the same file, into the same repository.
    let db = dir.path().join("app.db");
    let copy = dir.path().join("copy.yaml");
    std::fs::write(
        &copy,
        format!(
            "name: copy\nsource: {{type: sqlite, path: {}}}\nrepository:\n  url: {url}\nschedule:\n  backup: \"0 * * * *\"\nlock: {{mode: compliance, days: 10}}\nretention: {{keep_last: 1}}\n",
            db.display()
        ),
    )
    .unwrap();
    let copy = s(&copy);
    let store = LocalStore::open(repo.clone()).unwrap();

    // app's daily snapshot, locked for 8 days.
    let t0 = t("2026-01-05T10:00:00Z");
    let daily = run_json(at(t0), &["backup", "--plan", app, "--json"]);
    let daily_until = ts(&daily["retain_until"]);
    let first_packs: Vec<String> = locks(&store, "packs/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();

    // New rows, backed up first by `copy`: the new pages go into packs of
    // its own, locked only as long as its hourly snapshot.
    let conn = rusqlite::Connection::open(&db).unwrap();
    common::add_rows(&conn, 2_000);
    drop(conn);
    let copied = run_json(
        at(t0 + Duration::hours(1)),
        &["backup", "--plan", copy, "--json"],
    );
    let copy_until = ts(&copied["retain_until"]);
    let copy_packs: Vec<(String, DateTime<Utc>)> = locks(&store, "packs/")
        .await
        .into_iter()
        .filter(|(k, _)| !first_packs.contains(k))
        .collect();
    assert!(!copy_packs.is_empty(), "copy wrote no pack of its own");

    // app's hourly snapshot of the same data reuses those packs. Its
    // previous snapshot (the daily) is locked longer than it, so the
    // daily's packs are skipped; copy's packs are not among them, and their
    // locks end before this snapshot's: they are extended.
    let hourly = run_json(
        at(t0 + Duration::hours(2)),
        &["backup", "--plan", app, "--json"],
    );
    let hourly_until = ts(&hourly["retain_until"]);
    assert!(hourly_until <= daily_until, "{hourly}");
    assert!(copy_until < hourly_until, "{copied} {hourly}");
    assert_eq!(hourly["new_chunks"].as_u64(), Some(0), "{hourly}");
    assert!(
        hourly["locks_extended"].as_u64().unwrap() >= copy_packs.len() as u64,
        "{hourly}"
    );
    for (key, until) in locks(&store, "packs/").await {
        let needed = if first_packs.contains(&key) {
            daily_until
        } else {
            hourly_until
        };
        assert!(
            until >= needed,
            "{key} locked until {until}, needs {needed}"
        );
    }
    // And verify, which checks every object each snapshot needs against
    // its retain-until, agrees for both plans.
    for plan in [app, copy] {
        let verify = run_json(
            at(t0 + Duration::hours(3)),
            &["verify", "--plan", plan, "--json"],
        );
        assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_locks_on_s3_lengthens_compliance_retention_read_back_through_the_api() {
    let s3 = common::s3_env();
    let dir = tempfile::tempdir().unwrap();
    let bucket = common::bucket_name("keep-locks");
    let plan = sqlite_plan(
        dir.path(),
        &format!("s3://{bucket}/prod"),
        &format!("  endpoint: {}\n", s3.endpoint),
    );
    let plan = s(&plan);
    let aws = [
        ("AWS_ACCESS_KEY_ID", s3.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let with_aws = |now: DateTime<Utc>| {
        let mut c = at(now);
        c.envs(aws);
        c
    };
    let mut init = command();
    init.envs(aws);
    run_json(init, &["repo", "init", "--plan", plan, "--json"]);

    // Object Lock dates must lie ahead of the server's clock: the backup is
    // taken "six days ago", so its eight-day lock ends in two days.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let backup = run_json(
        with_aws(now - Duration::days(6)),
        &["backup", "--plan", plan, "--json"],
    );
    assert_eq!(backup["tier"], "daily", "{backup}");
    assert_eq!(
        ts(&backup["retain_until"]),
        now + Duration::days(2),
        "{backup}"
    );

    let dry = run_json(
        with_aws(now),
        &["keep-locks", "--plan", plan, "--dry-run", "--json"],
    );
    assert!(dry["objects_extended"].as_u64().unwrap() >= 3, "{dry}");
    let report = run_json(with_aws(now), &["keep-locks", "--plan", plan, "--json"]);
    assert_eq!(
        report["objects_extended"], dry["objects_extended"],
        "{report}"
    );
    let target = now + Duration::days(8);
    assert_eq!(
        report["lock_coverage_seconds"].as_i64().unwrap(),
        (target - now).num_seconds(),
        "{report}"
    );

    // Read back from the server, not from anything holdfast remembers.
    let mut config = common::s3_config(&bucket, "prod");
    config.endpoint = Some(s3.endpoint.clone());
    let store = holdfast::store::s3::S3Store::open(config).await.unwrap();
    let mut checked = 0;
    for prefix in ["snapshots/", "packs/", "index/"] {
        for info in store.list(prefix).await.unwrap() {
            let out = store
                .client()
                .get_object_retention()
                .bucket(store.bucket())
                .key(store.full_key(&info.key))
                .send()
                .await
                .unwrap();
            let r = out.retention().unwrap();
            assert_eq!(
                r.mode().map(|m| m.as_str()),
                Some("COMPLIANCE"),
                "{}",
                info.key
            );
            let until = r.retain_until_date().unwrap().secs();
            assert_eq!(
                until,
                target.timestamp(),
                "{} is locked until {until}, the kept snapshot needs {target}",
                info.key
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} objects");
    // The config, locked by `repo init` a moment before `now`, was already
    // within a day of the target: left alone.
    let config = store.head("config").await.unwrap().retention.unwrap();
    assert!(config.until >= target - Duration::days(1), "{config:?}");
    // With the clock injected, as the backup "six days ago" was: the
    // server created its manifest today, which a real clock would reject
    // (`docs/repository-format.md`, *What makes a manifest acceptable*).
    let v = run_json(with_aws(now), &["verify", "--plan", plan, "--json"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_wal_a_kept_base_backup_replays_is_kept_locked_and_older_wal_is_not() {
    use common::bin::command_as;
    use common::postgres::Cluster;
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 2000) i");
    // WAL from before the base backup: no kept snapshot can replay it.
    let before = pg.archive_now();
    let as_pg = |now: Option<DateTime<Utc>>, args: &[&str]| {
        let vars: Vec<(&str, String)> = now
            .map(|n| vec![(holdfast::clock::NOW_VAR, n.to_rfc3339())])
            .unwrap_or_default();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        json_of(&command_as("postgres", &vars).args(args).output().unwrap())
    };
    let backup = as_pg(None, &["backup", "--plan", &plan, "--json"]);
    pg.sql("INSERT INTO orders(note) SELECT 'after ' || i FROM generate_series(1, 500) i");
    pg.archive_now();

    // Three days on, without another backup.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap() + Duration::days(3);
    let report = as_pg(Some(now), &["keep-locks", "--plan", &plan, "--json"]);
    assert_eq!(report["snapshots_kept"], 1, "{report}");
    let logs = report["log_files_extended"].as_u64().unwrap();
    assert!(logs >= 2, "{report}");
    let target = now + Duration::days(8);
    assert_eq!(
        ts(&report["snapshots"][0]["locked_until"]),
        target,
        "{report}"
    );

    let store = LocalStore::open(pg.path("repo")).unwrap();
    let key = backup["key"].as_str().unwrap();
    assert_eq!(
        store.head(key).await.unwrap().retention.unwrap().until,
        target
    );
    let wal = locks(&store, "wal/pg/").await;
    let at_target: Vec<&String> = wal
        .iter()
        .filter(|(_, until)| *until == target)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(at_target.len() as u64, logs, "{wal:?}");
    // The segment archived before the base backup keeps the lock it was
    // pushed with: prune would remove it, so nothing needs it locked longer.
    let (old_key, old_until) = wal
        .iter()
        .find(|(k, _)| k.ends_with(&before))
        .unwrap_or_else(|| panic!("{before} not archived: {wal:?}"));
    assert!(
        *old_until < target - Duration::days(1),
        "{old_key} {old_until}"
    );

    let verify = as_pg(Some(now), &["verify", "--plan", &plan, "--json"]);
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}

/// Files unchanged since the previous snapshot are taken from where that
/// snapshot placed their chunks, with no lookup in the index per chunk.
/// When the new snapshot is kept longer, its packs and every index object
/// naming them get the longer lock all the same: a restore that finds a
/// place wrong falls back on those objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_reused_from_the_previous_snapshot_s_places_keep_their_index_objects_locked() {
    use holdfast::plan::Tier;
    use holdfast::repository::backup::{backup, BackupOptions};
    use holdfast::store::{LockMode, Retention};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.bin"), common::data(7, 3_000_000)).unwrap();
    std::fs::write(data.join("b.bin"), common::data(8, 500_000)).unwrap();
    let store = std::sync::Arc::new(LocalStore::open(dir.path().join("repo")).unwrap());
    let repo = holdfast::repository::Repository::open_or_init(
        store.clone(),
        &common::bin::test_repo_key(),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    let plan: holdfast::plan::PlanName =
        serde_json::from_value(serde_json::json!("files")).unwrap();
    let source =
        || Box::new(holdfast::engine::files::FilesSource::new(data.clone(), Vec::new()).unwrap());
    let opts = |days: i64| BackupOptions {
        compression_level: 3,
        retention: Some(Retention {
            mode: LockMode::Compliance,
            until: DateTime::from_timestamp(Utc::now().timestamp() + days * 86_400, 0).unwrap(),
        }),
        tier: Tier::Last,
        progress: holdfast::progress::ProgressMode::Quiet,
    };
    let first = backup(&repo, &plan, source(), &opts(1)).await.unwrap();
    assert!(first.packs_written >= 1, "{first:?}");
    let long = opts(7).retention.unwrap().until;
    let second = backup(&repo, &plan, source(), &opts(7)).await.unwrap();
    assert_eq!(second.packs_written, 0, "{second:?}");
    assert_eq!(
        second.bytes_read, 0,
        "unchanged files are not read: {second:?}"
    );
    assert_eq!(second.packs_reused, first.packs_written, "{second:?}");
    let index = locks(store.as_ref(), "index/").await;
    let packs = locks(store.as_ref(), "packs/").await;
    assert!(!index.is_empty() && !packs.is_empty());
    for (key, until) in index.iter().chain(&packs) {
        assert!(
            until >= &long,
            "{key} is locked until {until}, the snapshot needs {long}"
        );
    }
    assert!(
        second.locks_extended >= (index.len() + packs.len()) as u64,
        "{second:?}"
    );
    common::assert_verifies(&repo, &plan).await;
}
