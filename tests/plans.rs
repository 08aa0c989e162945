//! Plans as an operator meets them: every shipped plan loads, and every
//! mistake is reported as `file:line:column: field: what is wrong`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Utc, Weekday};
use holdfast::plan::{self, Plan, PlanError, SourceSpec};

const BASE: &str = "\
name: app
source:
  type: sqlite
  path: app.db
repository:
  url: ./repo
schedule:
  backup: \"0 * * * *\"
lock:
  mode: compliance
  days: 7
retention:
  keep_last: 24
  keep_daily: 7
";

fn no_env(_: &str) -> Option<String> {
    None
}

/// Writes `text` as `plan.yaml` in a fresh folder and loads it.
fn load(text: &str) -> (tempfile::TempDir, PathBuf, Result<Plan, PlanError>) {
    load_env(text, &no_env)
}

fn load_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (tempfile::TempDir, PathBuf, Result<Plan, PlanError>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, text).unwrap();
    let result = Plan::load_with_env(&file, env);
    (dir, file, result)
}

/// BASE with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

/// Loads `text`, expects an error at `line:column` on `field`, returns its message.
fn expect_error(text: &str, line: usize, column: usize, field: &str) -> String {
    let (_dir, file, result) = load(text);
    let err = result.expect_err("plan should be refused");
    let msg = err.to_string();
    let prefix = format!("{}:{line}:{column}: {field}: ", file.display());
    assert!(
        msg.starts_with(&prefix),
        "expected {prefix:?}…, got:\n{msg}"
    );
    assert_eq!(err.field(), Some(field));
    assert_eq!(err.file(), file);
    msg
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

#[test]
fn every_shipped_plan_loads() {
    let mut files = Vec::new();
    yaml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("plans"),
        &mut files,
    );
    files.sort();
    assert!(
        files.len() >= 5,
        "expected quickstart and four examples, found {files:?}"
    );
    for file in &files {
        if let Err(e) = Plan::load(file) {
            panic!("shipped plan does not load:\n{e}");
        }
    }
    let kinds: Vec<&str> = files
        .iter()
        .map(|f| Plan::load(f).unwrap().source.kind().as_str())
        .collect();
    for kind in ["sqlite", "files", "postgres", "mariadb"] {
        assert!(kinds.contains(&kind), "no example plan for {kind}");
    }
}

#[test]
fn quickstart_points_into_dot_holdfast_and_needs_no_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plan = Plan::load(&root.join("plans/quickstart.yaml")).unwrap();
    assert_eq!(plan.name.as_str(), "quickstart");
    assert_eq!(
        plan.source,
        SourceSpec::Sqlite {
            path: root.join(".holdfast/quickstart/app.db")
        }
    );
    assert_eq!(
        plan.repository.url(),
        format!(
            "file://{}",
            root.join(".holdfast/quickstart/repo").display()
        )
    );
    let summary = plan.summary(at("2026-11-26T04:30:00Z"));
    assert!(
        summary.contains("backup \"0 * * * *\" UTC, next 2026-11-26T05:00:00Z, 06:00:00Z, 07:00:00Z; lock compliance 7d; keep last 24, daily 7"),
        "{summary}"
    );
    // The quickstart runs a drill with a SQL check of its own.
    assert!(summary.contains("drill \"0 3 1 * *\""), "{summary}");
    let drill = plan.drill.as_ref().expect("a drill section");
    assert_eq!(drill.checks.len(), 1);
}

#[test]
fn a_folder_stands_for_its_plans_and_an_empty_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.yml"), edit("name: app", "name: b")).unwrap();
    std::fs::write(dir.path().join("a.yaml"), edit("name: app", "name: a")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a plan").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let results = plan::load_paths(&[dir.path().to_path_buf(), empty.path().to_path_buf()]);
    let files: Vec<_> = results.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(
        files,
        vec![
            dir.path().join("a.yaml"),
            dir.path().join("b.yml"),
            empty.path().to_path_buf()
        ]
    );
    assert!(results[0].1.is_ok() && results[1].1.is_ok());
    let err = results[2].1.as_ref().unwrap_err().to_string();
    assert!(err.contains("no plan files"), "{err}");
}

#[test]
fn two_plans_with_one_name_are_refused_because_they_would_share_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), BASE).unwrap();
    std::fs::write(dir.path().join("b.yaml"), BASE).unwrap();
    let results = plan::load_paths(&[dir.path().to_path_buf()]);
    assert!(results[0].1.is_ok());
    let err = results[1].1.as_ref().unwrap_err().to_string();
    assert!(
        err.contains("b.yaml: name: plan name `app` is already used by"),
        "{err}"
    );
}

#[test]
fn a_typo_in_a_field_name_is_refused_at_the_typo() {
    let msg = expect_error(&edit("schedule:", "shedule:"), 7, 1, "shedule");
    assert!(msg.contains("unknown field `shedule`"), "{msg}");
    expect_error(
        &edit("  days: 7", "  days: 7\n  dayz: 3"),
        12,
        3,
        "lock.dayz",
    );
}

#[test]
fn a_typo_inside_the_source_is_refused_with_its_path() {
    let msg = expect_error(&edit("  path: app.db", "  pth: app.db"), 4, 3, "source.pth");
    assert!(msg.contains("unknown field `pth`"), "{msg}");
}

#[test]
fn a_missing_required_field_is_named() {
    let msg = expect_error(&edit("  mode: compliance\n", ""), 10, 3, "lock.mode");
    assert!(msg.contains("missing field `mode`"), "{msg}");
}

#[test]
fn a_value_of_the_wrong_type_is_refused_where_it_stands() {
    let msg = expect_error(&edit("  days: 7", "  days: seven"), 11, 9, "lock.days");
    assert!(msg.contains("invalid type"), "{msg}");
    let pg = edit(
        "  type: sqlite\n  path: app.db",
        "  type: postgres\n  port: fivefourthreetwo",
    );
    expect_error(&pg, 4, 3, "source.port");
}

#[test]
fn yaml_syntax_errors_carry_a_position() {
    let (_dir, file, result) = load("name: app\nsource: [unclosed\n");
    let msg = result.unwrap_err().to_string();
    assert!(msg.starts_with(&format!("{}:", file.display())), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn an_out_of_range_cron_field_is_named() {
    let msg = expect_error(
        &edit("\"0 * * * *\"", "\"61 * * * *\""),
        8,
        3,
        "schedule.backup",
    );
    assert!(
        msg.contains("\"61 * * * *\" is not a valid cron expression: minute 61 out of range 0-59"),
        "{msg}"
    );
}

#[test]
fn a_cron_that_never_fires_is_refused() {
    let msg = expect_error(
        &edit("\"0 * * * *\"", "\"0 0 31 2 *\""),
        8,
        3,
        "schedule.backup",
    );
    assert!(msg.contains("never fires"), "{msg}");
}

#[test]
fn day_of_week_one_means_monday_as_in_crontab() {
    let text = edit("\"0 * * * *\"", "\"0 3 * * 1\"").replace("keep_last: 24\n", "");
    let (_dir, _file, result) = load(&text.replace("days: 7", "days: 49"));
    let plan = result.unwrap();
    let runs = plan.schedule.next_runs(at("2026-01-01T00:00:00Z"), 3);
    assert!(runs.iter().all(|r| r.weekday() == Weekday::Mon), "{runs:?}");
    assert_eq!(runs[0], at("2026-01-05T03:00:00Z"));
}

#[test]
fn an_unknown_timezone_is_refused_with_a_hint() {
    let text = edit(
        "  backup: \"0 * * * *\"",
        "  backup: \"0 * * * *\"\n  timezone: Europe/Atlantis",
    );
    let msg = expect_error(&text, 9, 3, "schedule.timezone");
    assert!(
        msg.contains("not a known IANA timezone") && msg.contains("hint:"),
        "{msg}"
    );
}

#[test]
fn schedules_run_in_the_plan_timezone() {
    let text = edit(
        "  backup: \"0 * * * *\"",
        "  backup: \"0 3 * * *\"\n  timezone: Europe/Berlin",
    )
    .replace("keep_last: 24\n", "");
    let (_dir, _file, result) = load(&text);
    let plan = result.unwrap();
    assert_eq!(
        plan.schedule.next_runs(at("2026-07-01T00:00:00Z"), 1),
        vec![at("2026-07-01T01:00:00Z")]
    );
}

#[test]
fn a_zstd_level_out_of_range_is_refused() {
    let msg = expect_error(
        &format!("{BASE}compression:\n  level: 23\n"),
        16,
        3,
        "compression.level",
    );
    assert!(msg.contains("23 is out of range 1..=22"), "{msg}");
}

#[test]
fn a_retention_that_keeps_nothing_is_refused() {
    let text = BASE.replace("  keep_last: 24\n  keep_daily: 7\n", "  {}\n");
    let msg = expect_error(&text, 12, 1, "retention");
    assert!(msg.contains("keeps nothing"), "{msg}");
    let without = BASE.replace("retention:\n  keep_last: 24\n  keep_daily: 7\n", "");
    let (_dir, _file, result) = load(&without);
    let msg = result.unwrap_err().to_string();
    assert!(msg.contains(": retention: keeps nothing"), "{msg}");
}

#[test]
fn a_lock_shorter_than_the_retention_is_refused_naming_the_rule_and_days() {
    let msg = expect_error(&edit("keep_daily: 7", "keep_daily: 30"), 11, 3, "lock.days");
    assert!(
        msg.contains("retention.keep_daily: 30 keeps snapshots for up to 30 days, so lock.days must be at least 30"),
        "{msg}"
    );
    let weekly = edit("keep_daily: 7", "keep_weekly: 2");
    let msg = expect_error(&weekly, 11, 3, "lock.days");
    assert!(msg.contains("at least 14"), "{msg}");
    let monthly = edit("keep_daily: 7", "keep_monthly: 1");
    assert!(expect_error(&monthly, 11, 3, "lock.days").contains("at least 31"));
}

#[test]
fn keep_last_needs_the_longest_gap_between_backups() {
    // Weekdays only: the 6 snapshots from one Friday to the next are kept
    // until the Monday after, 10 days after the first Friday.
    let text = edit("\"0 * * * *\"", "\"0 1 * * 1-5\"")
        .replace("keep_last: 24", "keep_last: 6")
        .replace("  keep_daily: 7\n", "");
    let msg = expect_error(&text, 11, 3, "lock.days");
    assert!(
        msg.contains("retention.keep_last: 6 keeps snapshots for up to 10 days, so lock.days must be at least 10"),
        "{msg}"
    );
}

#[test]
fn a_lock_of_zero_days_is_refused() {
    expect_error(&edit("days: 7", "days: 0"), 11, 3, "lock.days");
}

#[test]
fn a_bad_plan_name_is_refused() {
    let msg = expect_error(&edit("name: app", "name: Orders DB"), 1, 1, "name");
    assert!(msg.contains("not a valid plan name"), "{msg}");
}

#[test]
fn a_missing_environment_variable_names_field_and_variable() {
    let text = edit(
        "  type: sqlite\n  path: app.db",
        "  type: postgres\n  host: db\n  password: ${HOLDFAST_TEST_PW}",
    );
    let msg = expect_error(&text, 5, 3, "source.password");
    assert!(
        msg.contains("environment variable HOLDFAST_TEST_PW is not set"),
        "{msg}"
    );
    let env = |n: &str| (n == "HOLDFAST_TEST_PW").then(|| "pw".to_string());
    let (_dir, _file, result) = load_env(&text, &env);
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn a_password_written_in_clear_is_refused() {
    let text = edit(
        "  type: sqlite\n  path: app.db",
        "  type: mariadb\n  password: hunter2",
    );
    let msg = expect_error(&text, 4, 3, "source.password");
    assert!(!msg.contains("hunter2"), "{msg}");
    let dsn = edit(
        "  type: sqlite\n  path: app.db",
        "  type: postgres\n  dsn: postgresql://app:hunter2@db/app",
    );
    let msg = expect_error(&dsn, 4, 3, "source.dsn");
    assert!(
        msg.contains("password written in clear") && !msg.contains("hunter2"),
        "{msg}"
    );
}

#[test]
fn an_invalid_exclude_glob_is_refused() {
    let text = edit(
        "  type: sqlite\n  path: app.db",
        "  type: files\n  path: data\n  exclude:\n    - \"*.tmp\"\n    - \"a[\"",
    );
    let msg = expect_error(&text, 7, 7, "source.exclude[1]");
    assert!(msg.contains("not a valid glob"), "{msg}");
}

#[test]
fn an_s3_repository_is_read_with_its_endpoint_and_credentials() {
    use holdfast::store::s3::SecretSource;
    use holdfast::store::StoreConfig;
    let s3 = edit(
        "  url: ./repo",
        "  url: s3://backups/prod/db/\n  region: eu-west-1\n  endpoint: https://s3.example.net\n  access_key_id: AKIATEST\n  secret_access_key_file: ../s3.key",
    );
    let (_dir, file, result) = load(&s3);
    let plan = result.unwrap();
    let StoreConfig::S3(c) = &plan.repository else {
        panic!("not S3: {:?}", plan.repository)
    };
    assert_eq!(
        (c.bucket.as_str(), c.prefix.as_str()),
        ("backups", "prod/db")
    );
    assert_eq!(c.endpoint.as_deref(), Some("https://s3.example.net"));
    assert_eq!(c.region.as_deref(), Some("eu-west-1"));
    assert!(c.path_style, "a custom endpoint defaults to path-style");
    let creds = c.credentials.as_ref().unwrap();
    assert_eq!(creds.access_key_id, "AKIATEST");
    assert_eq!(
        creds.secret,
        SecretSource::File(file.parent().unwrap().parent().unwrap().join("s3.key"))
    );
    assert_eq!(plan.repository.url(), "s3://backups/prod/db");

    // A secret written in clear is refused; only one of key and key file.
    let clear = edit(
        "  url: ./repo",
        "  url: s3://backups\n  access_key_id: AKIATEST\n  secret_access_key: hunter2",
    );
    assert!(expect_error(&clear, 8, 3, "repository.secret_access_key").contains("in clear"));
    let half = edit(
        "  url: ./repo",
        "  url: s3://backups\n  access_key_id: AKIATEST",
    );
    expect_error(&half, 7, 3, "repository.access_key_id");
    let bad_bucket = edit("  url: ./repo", "  url: s3://Bad_Bucket/x");
    assert!(expect_error(&bad_bucket, 6, 3, "repository.url").contains("not a valid S3 bucket"));
    let bad_endpoint = edit(
        "  url: ./repo",
        "  url: s3://backups\n  endpoint: s3.example.net",
    );
    expect_error(&bad_endpoint, 7, 3, "repository.endpoint");
    let s3_field_on_file = edit("  url: ./repo", "  url: ./repo\n  region: eu-west-1");
    expect_error(&s3_field_on_file, 7, 3, "repository.region");
}

#[test]
fn a_bad_drill_duration_is_refused() {
    let text = format!("{BASE}drill:\n  max_duration: two hours\n");
    let msg = expect_error(&text, 16, 3, "drill.max_duration");
    assert!(msg.contains("is not a duration"), "{msg}");
}

#[test]
fn the_drill_target_is_latest_rewind_or_random_and_mistakes_are_named() {
    use holdfast::plan::DrillPoint;
    use std::time::Duration;
    let target = |drill: &str| {
        let (_dir, _file, result) = load(&format!("{BASE}drill:\n{drill}"));
        result.unwrap().drill.unwrap().target
    };
    assert_eq!(target("  max_duration: 1h\n"), DrillPoint::Latest);
    assert_eq!(target("  target: latest\n"), DrillPoint::Latest);
    assert_eq!(target("  target: random\n"), DrillPoint::Random);
    // `rewind` alone means what it always meant.
    let hour = DrillPoint::Rewind(Duration::from_secs(3600));
    assert_eq!(target("  rewind: 1h\n"), hour);
    assert_eq!(target("  target: rewind\n  rewind: 1h\n"), hour);

    let msg = expect_error(
        &format!("{BASE}drill:\n  target: rewind\n"),
        16,
        3,
        "drill.target",
    );
    assert!(msg.contains("drill.rewind is not set"), "{msg}");
    for other in ["latest", "random"] {
        let msg = expect_error(
            &format!("{BASE}drill:\n  target: {other}\n  rewind: 1h\n"),
            17,
            3,
            "drill.rewind",
        );
        assert!(msg.contains(&format!("drill.target is {other}")), "{msg}");
    }
    let msg = expect_error(
        &format!("{BASE}drill:\n  target: newest\n"),
        16,
        11,
        "drill.target",
    );
    assert!(msg.contains("latest") && msg.contains("random"), "{msg}");
}

#[test]
fn a_drill_check_must_fit_the_source() {
    let text = format!("{BASE}drill:\n  checks:\n    - sql: \"PRAGMA integrity_check\"\n      expect: {{equals: ok}}\n    - file: etc/app.conf\n");
    expect_error(&text, 19, 7, "drill.checks[1].file");
}

#[test]
fn a_missing_source_path_loads_but_is_warned_about() {
    let (_dir, file, result) = load(BASE);
    let plan = result.unwrap();
    let warnings = plan.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("source.path") && warnings[0].contains("does not exist"));
    std::fs::write(file.parent().unwrap().join("app.db"), b"").unwrap();
    assert!(plan.warnings().is_empty());
}

#[test]
fn the_json_summary_never_holds_a_secret() {
    let text = edit(
        "  type: sqlite\n  path: app.db",
        "  type: postgres\n  dsn: postgresql://app:${PW}@db/app",
    );
    let env = |n: &str| (n == "PW").then(|| "hunter2".to_string());
    let (_dir, _file, result) = load_env(&text, &env);
    let plan = result.unwrap();
    let json = plan.summary_json(at("2026-01-01T00:00:00Z")).to_string();
    assert!(json.contains("***") && !json.contains("hunter2"), "{json}");
    assert!(!plan.summary(at("2026-01-01T00:00:00Z")).contains("hunter2"));
}

#[test]
fn a_dsn_password_from_the_environment_is_percent_encoded_so_none_of_it_lands_in_host_or_database()
{
    let text = edit(
        "  type: sqlite\n  path: app.db",
        "  type: postgres\n  dsn: postgresql://app:${PW}@db:5433/app?sslmode=require",
    );
    let env = |n: &str| (n == "PW").then(|| "p/w?x@y:z%".to_string());
    let (_dir, _file, result) = load_env(&text, &env);
    let plan = result.unwrap();
    let SourceSpec::Postgres { connection, .. } = &plan.source else {
        panic!("a postgres source");
    };
    let dsn = connection.dsn.as_ref().unwrap().expose();
    assert_eq!(
        dsn,
        "postgresql://app:p%2Fw%3Fx%40y%3Az%25@db:5433/app?sslmode=require"
    );
    let vars = holdfast::engine::postgres::client::url_env(dsn).unwrap();
    let var = |k: &str| vars.iter().find(|(v, _)| *v == k).map(|(_, x)| x.as_str());
    assert_eq!(var("PGPASSWORD"), Some("p/w?x@y:z%"));
    assert_eq!((var("PGHOST"), var("PGPORT")), (Some("db"), Some("5433")));
    assert_eq!(var("PGDATABASE"), Some("app"));
}

#[test]
fn a_mysql_source_is_a_mariadb_source() {
    let text = edit(
        "  type: sqlite\n  path: app.db",
        "  type: mysql\n  host: db.internal\n  user: backup",
    );
    let (_dir, _file, result) = load(&text);
    let plan = result.unwrap();
    assert_eq!(plan.source.kind().as_str(), "mariadb");
    assert!(plan.source.to_string().contains("backup@db.internal:3306"));
}
