//! The production path: a PostgreSQL 15 cluster of the test's own archiving
//! through `holdfast wal-push` into an S3 repository (SeaweedFS, bucket with
//! Object Lock), base backups into it, and point-in-time restores from it.
//! Every holdfast process — the server's `archive_command` and
//! `restore_command` included — runs as the `postgres` OS user with no AWS_*
//! variables: the plan's `access_key_id` + `secret_access_key_file` are the
//! only way in, as on a database host whose server systemd started.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::bin::{command_as, json_of, s, text};
use common::free_port;
use common::postgres::{chown_postgres, state, without_aws, Cluster, Restored};
use common::s3_server::OwnS3;
use common::S3Env;
use holdfast::plan::{Plan, Tier};
use holdfast::store::s3::S3Store;
use holdfast::store::Store;

/// A cluster whose plan names an S3 repository in a new bucket on `s3`,
/// with the plan's own credentials in a key file only `postgres` reads;
/// `repo init` has made the bucket (Object Lock on). Not started yet.
struct S3Cluster {
    pg: Cluster,
    s3: S3Env,
    bucket: String,
}

impl S3Cluster {
    fn create(s3: S3Env, hint: &str) -> S3Cluster {
        let bucket = common::bucket_name(hint);
        // The key file is relative to the plan's folder.
        let pg = Cluster::create(
            Some(&format!(
                "{{url: 's3://{bucket}/prod', endpoint: '{endpoint}', region: us-east-1, access_key_id: '{key_id}', secret_access_key_file: s3.key}}",
                endpoint = s3.endpoint,
                key_id = s3.access_key_id,
            )),
            "{mode: compliance, days: 8}",
            "{keep_daily: 7}",
        );
        let key = pg.path("s3.key");
        std::fs::write(&key, format!("{}\n", s3.secret_access_key)).unwrap();
        chown_postgres(&key);
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let cluster = S3Cluster { pg, s3, bucket };
        let init =
            json_of(&cluster.holdfast(&["repo", "init", "--plan", &cluster.plan(), "--json"]));
        assert_eq!(init["bucket"]["object_lock"], true, "{init}");
        cluster
    }

    fn plan(&self) -> String {
        s(&self.pg.plan).to_string()
    }

    /// holdfast as `postgres`, without the test's AWS_* variables.
    fn holdfast(&self, args: &[&str]) -> Output {
        without_aws(&mut command_as("postgres", &[]))
            .args(args)
            .output()
            .expect("runuser runs")
    }

    /// A client of the bucket with the test identity, for what the plan's
    /// `holdfast` does not show: listings and Object Lock headers.
    async fn raw(&self) -> S3Store {
        use holdfast::store::s3::{S3Config, SecretSource, StaticCredentials};
        let mut c = S3Config::new(&self.bucket, "prod");
        c.endpoint = Some(self.s3.endpoint.clone());
        c.region = Some("us-east-1".into());
        c.path_style = true;
        c.credentials = Some(StaticCredentials {
            access_key_id: self.s3.access_key_id.clone(),
            secret: SecretSource::Value(holdfast::secret::Secret::new(
                self.s3.secret_access_key.clone(),
            )),
        });
        S3Store::open(c).await.unwrap()
    }

    /// The archived WAL file names in the bucket, sorted.
    async fn archived(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .raw()
            .await
            .list("wal/pg/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.trim_start_matches("wal/pg/").to_string())
            .collect();
        names.sort();
        names
    }

    /// `restore … --start` as `postgres` into a new folder on a free port;
    /// its report, the started server (stopped when dropped), and how long it took.
    fn restore(&self, to: &str, extra: &[&str]) -> (serde_json::Value, Restored, u16, Duration) {
        let to = self.pg.path(to);
        let port = free_port();
        let restored = Restored { data: to.clone() };
        let started = Instant::now();
        let plan = self.plan();
        let port_s = port.to_string();
        let mut args: Vec<&str> = vec!["restore", "--plan", &plan, "--to", s(&to), "--start"];
        args.extend(["--port", &port_s, "--json"]);
        args.extend(extra);
        let out = self.holdfast(&args);
        let took = started.elapsed();
        (json_of(&out), restored, port, took)
    }
}

/// Waits until the archiver has archived `segment` (or a later one).
fn wait_archived(pg: &Cluster, segment: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    pg.wait_archived(segment, timeout);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_table_comes_back_from_s3_as_it_was_at_t_and_every_wal_object_is_locked() {
    let c = S3Cluster::create(common::s3_env(), "pg-pitr");
    let plan = c.plan();
    let before_first_push = Utc::now();
    c.pg.start_server();
    let pg = &c.pg;
    pg.pgbench_init(1);
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 5000) i");

    // A base backup into S3, then more writes; T, the state at T, the drop.
    let out = c.holdfast(&["backup", "--plan", &plan, "--json"]);
    let backup = json_of(&out);
    let snap = backup["snapshot"].as_str().unwrap().to_string();
    pg.sql("INSERT INTO orders(note) SELECT 'after backup ' || i FROM generate_series(1, 1000) i; UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 10 = 0");
    std::thread::sleep(Duration::from_millis(1100));
    let t = pg.now();
    let at_t = state(pg.port());
    assert!(at_t.contains("orders: 6000 rows"), "{at_t}");
    std::thread::sleep(Duration::from_millis(1100));
    pg.sql("DROP TABLE orders");
    pg.sql("UPDATE pgbench_accounts SET abalance = -1 WHERE aid <= 500");
    let last = pg.archive_now();
    let after_last_push = Utc::now();

    // Restore to T from S3 into a new data directory, started on its own port.
    let (report, _restored, port, took) = c.restore("restored", &["--at", &t]);
    assert_eq!(report["base_backup"].as_str().unwrap(), snap, "{report}");
    assert!(
        report["reached"]
            .as_str()
            .unwrap()
            .contains("stopped before"),
        "{report}"
    );
    assert!(
        report["segments_replayed"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(
        state(port),
        at_t,
        "the cluster restored from S3 differs from the state at {t}"
    );
    eprintln!(
        "measured: restore --at from S3 --start took {:.1} s (check WAL {:.1} s, base {:.1} s, recovery {:.1} s; {} bytes, {} segments checked)",
        took.as_secs_f64(),
        report["phases"]["check_wal_seconds"].as_f64().unwrap(),
        report["phases"]["restore_base_seconds"].as_f64().unwrap(),
        report["phases"]["recovery_seconds"].as_f64().unwrap(),
        report["bytes"],
        report["segments_checked"],
    );

    // Every WAL object the server archived is locked in COMPLIANCE mode for
    // as long as the plan promises a file pushed between the server's start
    // and the last push, and no longer; a locked version cannot be deleted.
    let archived = c.archived().await;
    assert!(archived.contains(&last), "{last} not in {archived:?}");
    assert!(
        archived.iter().any(|n| n.ends_with(".backup")),
        "the base backup's label is archived: {archived:?}"
    );
    let plan_model = Plan::load(&pg.plan).unwrap();
    let promised = |at: DateTime<Utc>| plan_model.lock_for(Tier::Monthly, at).unwrap();
    let (earliest, latest) = (
        promised(before_first_push),
        promised(after_last_push).until + chrono::Duration::seconds(1),
    );
    let raw = c.raw().await;
    let client = raw.client();
    for name in &archived {
        let key = raw.full_key(&format!("wal/pg/{name}"));
        let head = client
            .head_object()
            .bucket(&c.bucket)
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("HEAD {key}: {e:?}"));
        assert_eq!(
            head.object_lock_mode(),
            Some(&aws_sdk_s3::types::ObjectLockMode::Compliance),
            "{key}"
        );
        let until = head
            .object_lock_retain_until_date()
            .unwrap_or_else(|| panic!("{key} has no retain-until date"));
        let until = DateTime::<Utc>::from_timestamp(until.secs(), 0).unwrap();
        assert!(
            until >= earliest.until && until <= latest,
            "{key} is locked until {until}; the plan promises {} to {latest}",
            earliest.until
        );
    }
    let key = raw.full_key(&format!("wal/pg/{last}"));
    let versions = client
        .list_object_versions()
        .bucket(&c.bucket)
        .prefix(&key)
        .send()
        .await
        .unwrap();
    let version = versions.versions()[0].version_id().unwrap().to_string();
    let delete = client
        .delete_object()
        .bucket(&c.bucket)
        .key(&key)
        .version_id(&version)
        .bypass_governance_retention(true)
        .send()
        .await;
    assert!(delete.is_err(), "locked WAL object {key} was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_s3_is_down_wal_push_fails_nothing_is_lost_and_the_archive_catches_up_without_a_gap()
{
    let server = OwnS3::start();
    let c = S3Cluster::create(server.env(), "pg-outage");
    let plan = c.plan();
    c.pg.start_server();
    let pg = &c.pg;
    let first = pg.fill_segment(1);
    pg.wait_archived(&first, Duration::from_secs(60));
    let out = c.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "backup: {}", text(&out));

    // S3 goes away while the cluster keeps writing and switching segments.
    server.stop();
    let failed_before: u64 = pg
        .sql("SELECT failed_count FROM pg_stat_archiver")
        .parse()
        .unwrap();
    let during: Vec<String> = (2..=4).map(|i| pg.fill_segment(i)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let failed: u64 = pg
            .sql("SELECT failed_count FROM pg_stat_archiver")
            .parse()
            .unwrap();
        if failed > failed_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archive_command never failed with S3 down:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        pg.sql("SELECT last_failed_wal FROM pg_stat_archiver"),
        during[0],
        "the archiver retries the oldest waiting segment first"
    );
    let log = pg.log();
    assert!(
        log.contains("unable to archive") && log.contains("PostgreSQL keeps it and retries"),
        "holdfast's reason reaches the server log:\n{log}"
    );
    // Nothing is lost: the segments wait in pg_wal, marked ready.
    for seg in &during {
        assert!(
            pg.path(&format!("data/pg_wal/{seg}")).exists(),
            "{seg} left pg_wal"
        );
    }
    assert!(
        pg.path(&format!("data/pg_wal/archive_status/{}.ready", during[0]))
            .exists(),
        "{} is not waiting to be archived",
        during[0]
    );

    // S3 back: PostgreSQL retries on its own, every segment arrives, none skipped.
    server.start_again();
    let last = during.last().unwrap();
    let catch_up = wait_archived(pg, last, Duration::from_secs(180));
    let archived = c.archived().await;
    let number = |seg: &str| u64::from_str_radix(&seg[8..], 16).unwrap();
    let segments: Vec<u64> = archived
        .iter()
        .filter(|n| n.len() == 24)
        .map(|n| number(n))
        .collect();
    for seg in std::iter::once(&first).chain(&during) {
        assert!(archived.contains(seg), "{seg} missing from {archived:?}");
    }
    for pair in segments.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap in the archive: {archived:?}");
    }
    eprintln!(
        "measured: archive caught up {:.1} s after S3 came back ({} segments waited)",
        catch_up.as_secs_f64(),
        during.len()
    );

    // The latest point, restored from S3, is exactly the cluster's state.
    let now = state(pg.port());
    assert!(now.contains("orders: 10000 rows"), "{now}");
    let (report, _restored, port, took) = c.restore("restored", &["--latest"]);
    assert_eq!(state(port), now, "restore to the latest point: {report}");
    eprintln!(
        "measured: restore to latest from S3 --start took {:.1} s",
        took.as_secs_f64()
    );
}

/// Issue 11, as an S3 operation: with the bucket writer's credentials, an
/// insider puts garbage at the name of the WAL segment being written and at
/// `00000002.history`. Archiving to S3 goes on (the segment lands under its
/// alternative name, no archive_command fails), and a point-in-time restore
/// past that segment reaches its target on timeline 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_planted_in_the_bucket_at_wal_names_stop_neither_archiving_to_s3_nor_a_restore() {
    use bytes::Bytes;
    use holdfast::ids::Hash256;
    use holdfast::store::PutOptions;

    let c = S3Cluster::create(common::s3_env(), "pg-planted");
    let plan = c.plan();
    c.pg.start_server();
    let pg = &c.pg;
    let out = c.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 2000) i");
    let next = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let raw = c.raw().await;
    for (key, bytes) in [
        (format!("wal/pg/{next}"), &b"planted by an insider"[..]),
        ("wal/pg/00000002.history".to_string(), b"not a history"),
    ] {
        let opts = PutOptions {
            sha256: Hash256::digest(bytes),
            retention: None,
        };
        raw.put(&key, Bytes::copy_from_slice(bytes), &opts)
            .await
            .unwrap();
    }

    pg.sql("INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 2000) i");
    assert_eq!(pg.archive_now(), next);
    let archived = c.archived().await;
    assert!(
        archived
            .iter()
            .any(|n| n.starts_with(&format!("{next}.alt-"))),
        "no alternative for {next}: {archived:?}"
    );
    assert_eq!(pg.sql("SELECT failed_count FROM pg_stat_archiver"), "0");

    pg.sql("INSERT INTO orders(note) SELECT 'past the planted key ' || i FROM generate_series(1, 500) i");
    std::thread::sleep(Duration::from_millis(1100));
    let t = pg.now();
    let at_t = state(pg.port());
    std::thread::sleep(Duration::from_millis(1100));
    pg.sql("DELETE FROM orders WHERE id % 2 = 0");
    pg.archive_now();

    let (report, _restored, port, _) = c.restore("restored", &["--at", &t, "--no-archive"]);
    assert_eq!(report["timeline_path"], serde_json::json!([1]), "{report}");
    assert_eq!(
        state(port),
        at_t,
        "the restore differs from the state at {t}"
    );
}
