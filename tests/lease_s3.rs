//! S3 lease locks under contention, on SeaweedFS (`scripts/s3-server`):
//! two backups of one plan started together, a stale lease raced for by
//! several contenders, a lease judged by the server's clock and not the
//! times its holder wrote, a backup whose lease is taken over mid-run, a
//! release after a takeover, and a prune racing a backup of another plan.
//! Contenders are real `holdfast` processes where the claim is about
//! processes, and separate store instances (each its own S3 client) where
//! it is about the protocol.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::bin::{command, json_of, s, said_by, text};
use common::make_db;
use holdfast::store::s3::S3Store;
use holdfast::store::{LockKind, Store, StoreError};

struct Env {
    dir: tempfile::TempDir,
    endpoint: String,
    bucket: String,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(hint: &str) -> Self {
        let s3 = common::s3_env();
        Env {
            dir: tempfile::tempdir().unwrap(),
            endpoint: s3.endpoint,
            bucket: common::bucket_name(hint),
            vars: vec![
                ("AWS_ACCESS_KEY_ID".into(), s3.access_key_id),
                ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_access_key),
                ("AWS_REGION".into(), "us-east-1".into()),
            ],
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A SQLite plan `name` in this test's bucket; short locks, keep one.
    fn plan(&self, name: &str, db: &Path) -> PathBuf {
        let file = self.path(&format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}\nsource: {{type: sqlite, path: {db}}}\nrepository:\n  url: s3://{bucket}/prod\n  endpoint: {endpoint}\nschedule:\n  backup: \"*/2 * * * * *\"\nlock: {{mode: compliance, duration: 4s}}\nretention: {{keep_last: 1}}\n",
                db = db.display(),
                bucket = self.bucket,
                endpoint = self.endpoint,
            ),
        )
        .unwrap();
        file
    }

    fn command(&self) -> Command {
        let mut c = command();
        c.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("holdfast runs")
    }

    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("holdfast starts")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        json_of(&self.run(args))
    }

    fn snapshots(&self, plan: &Path) -> usize {
        self.json(&["snapshots", "--plan", s(plan), "--json"])
            .as_array()
            .unwrap()
            .len()
    }

    fn verifies(&self, plan: &Path) {
        let report = self.json(&["verify", "--plan", s(plan), "--json"]);
        assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    }

    /// The repository's store, as a separate client (another contender).
    async fn store(&self) -> S3Store {
        let mut c = common::s3_config(&self.bucket, "prod");
        c.endpoint = Some(self.endpoint.clone());
        S3Store::open(c).await.unwrap()
    }
}

/// Waits for `child` at most two minutes.
fn finish(mut child: std::process::Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "holdfast did not finish in 2 min"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A lock record as another holder would have written it.
fn record(host: &str, pid: u32, lease_secs: u64, expires: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "host": host, "pid": pid, "acquired": "2026-01-01T00:00:00Z",
        "expires": expires, "lease_secs": lease_secs, "holder": "someone-else", "refresh": 0,
    }))
    .unwrap()
}

/// Writes `body` at store key `key` unconditionally: another party.
async fn plant(store: &S3Store, key: &str, body: Vec<u8>) {
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(store.full_key(key))
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap();
}

/// The latest bytes of store key `key`, or `None` if it is gone.
async fn latest(store: &S3Store, key: &str) -> Option<Vec<u8>> {
    let out = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(store.full_key(key))
        .send()
        .await
        .ok()?;
    Some(out.body.collect().await.unwrap().to_vec())
}

#[test]
fn two_backups_of_one_plan_at_once_one_wins_the_other_exits_busy_naming_it() {
    let env = Env::new("lease-two-backups");
    let db = env.path("app.db");
    // Big enough that one backup is still running when the other, which
    // first unlocks the repository key (Argon2id, a fraction of a second),
    // asks for the lease.
    make_db(&db, 300_000);
    let plan = env.plan("app", &db);
    said_by(&env.run(&["repo", "init", "--plan", s(&plan)]), 0);

    // The second starts once the first holds its lease (else, on a busy
    // machine, the first could finish before the second starts).
    let a = env.spawn(&["backup", "--plan", s(&plan), "--json"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(env.store());
    let key = store.full_key("locks/backup-app");
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt
        .block_on(
            store
                .client()
                .head_object()
                .bucket(store.bucket())
                .key(&key)
                .send(),
        )
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the first backup never took its lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let b = env.spawn(&["backup", "--plan", s(&plan), "--json"]);
    let (pid_a, pid_b) = (a.id(), b.id());
    let (a, b) = (finish(a), finish(b));
    let codes = (a.status.code(), b.status.code());
    let (winner, loser) = match codes {
        (Some(0), Some(6)) => (pid_a, &b),
        (Some(6), Some(0)) => (pid_b, &a),
        _ => panic!(
            "expected one success and one exit 6, got {codes:?}:\n{}\n---\n{}",
            text(&a),
            text(&b)
        ),
    };
    let said = text(loser);
    assert!(
        said.contains("another backup of plan app is running")
            && said.contains(&format!("pid {winner} on ")),
        "the loser names the winner (pid {winner}): {said}"
    );
    assert_eq!(env.snapshots(&plan), 1);
    env.verifies(&plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_lease_raced_for_by_four_contenders_at_once_goes_to_exactly_one() {
    let env = Env::new("lease-stale-race");
    let first = env.store().await;
    first.create_bucket(true).await.unwrap();
    // Holders long gone (another host), whose own clock claimed leases far
    // into the future: only the server's clock can tell they are stale.
    let rounds = 8;
    for r in 0..rounds {
        plant(
            &first,
            &format!("locks/race-{r}"),
            record("gone-host", 1, 1, "2099-01-01T00:00:00Z"),
        )
        .await;
    }
    // One second of lease, the clock allowance, and a second for the whole
    // seconds of Last-Modified and Date.
    tokio::time::sleep(Duration::from_secs(1) + holdfast::store::s3::CLOCK_ALLOWANCE * 2).await;
    let mut contenders = Vec::new();
    for _ in 0..4 {
        contenders.push(env.store().await);
    }
    let mut kept = Vec::new();
    for r in 0..rounds {
        let name = format!("race-{r}");
        let mut tries = tokio::task::JoinSet::new();
        for c in &contenders {
            let (c, name) = (c.clone(), name.clone());
            tries.spawn(async move { c.try_lock(&name, LockKind::Exclusive).await });
        }
        let mut won = 0;
        while let Some(res) = tries.join_next().await {
            let res = res.unwrap();
            match res {
                Ok(guard) => {
                    won += 1;
                    kept.push(guard);
                }
                Err(StoreError::Busy { holder, .. }) => {
                    assert!(
                        holder.contains(&format!("pid {} on ", std::process::id())),
                        "a loser names the winner, not the stale holder: {holder}"
                    );
                }
                Err(e) => panic!("round {r}: {e}"),
            }
        }
        assert_eq!(
            won, 1,
            "round {r}: exactly one contender takes the lease over"
        );
    }
    for guard in kept {
        guard.check().unwrap();
        guard.release().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_judged_by_the_servers_clock_not_the_times_its_holder_wrote() {
    let env = Env::new("lease-server-clock");
    let store = env.store().await;
    store.create_bucket(true).await.unwrap();
    // Written just now with a 15-minute lease, by a holder whose clock is
    // a year behind: its `expires` has long passed by anybody's clock.
    plant(
        &store,
        "locks/backup-app",
        record("db-elsewhere", 4242, 900, "2025-01-01T00:00:00Z"),
    )
    .await;
    match store.try_lock("backup-app", LockKind::Exclusive).await {
        Err(StoreError::Busy { holder, .. }) => {
            assert!(holder.contains("pid 4242 on db-elsewhere"), "{holder}");
            assert!(holder.contains("by the storage server's clock"), "{holder}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a fresh lease was taken over because its holder's clock was behind"),
    }
    // The same for a shared holder, from the exclusive side.
    plant(
        &store,
        "locks/repository.shared.db-elsewhere-4242-0000aaaa",
        record("db-elsewhere", 4242, 900, "2025-01-01T00:00:00Z"),
    )
    .await;
    match store.try_lock("repository", LockKind::Exclusive).await {
        Err(StoreError::Busy { holder, .. }) => {
            assert!(holder.contains("pid 4242 on db-elsewhere"), "{holder}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a fresh shared lease was ignored because its holder's clock was behind"),
    }
    assert!(latest(&store, "locks/repository").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_is_taken_over_finds_out_and_its_release_leaves_the_new_holders_object(
) {
    let env = Env::new("lease-takeover");
    let store = env.store().await;
    store.create_bucket(true).await.unwrap();
    let lease = Duration::from_secs(3);
    let a = env
        .store()
        .await
        .with_lease(lease)
        .try_lock("backup-app", LockKind::Exclusive)
        .await
        .unwrap();
    a.check().unwrap();
    a.confirm().await.unwrap();
    // Someone else takes the lock object over, conditionally on the version
    // the holder wrote last (as a contender that judged it stale would).
    let key = store.full_key("locks/backup-app");
    let head = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key(&key)
        .send()
        .await
        .unwrap();
    let taker = record("taker", 7, 900, "2099-01-01T00:00:00Z");
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(&key)
        .if_match(head.e_tag().unwrap())
        .body(ByteStream::from(taker.clone()))
        .send()
        .await
        .unwrap();
    // The holder's next refresh (every lease/3, in the background) is
    // refused: it knows without being asked to refresh.
    tokio::time::sleep(lease / 3 + Duration::from_millis(700)).await;
    match a.check() {
        Err(StoreError::LeaseLost { lock, detail, .. }) => {
            assert_eq!(lock, "backup-app");
            assert!(detail.contains("changed by someone else"), "{detail}");
        }
        other => panic!("the holder still thinks it holds the lock: {other:?}"),
    }
    assert!(matches!(
        a.confirm().await,
        Err(StoreError::LeaseLost { .. })
    ));
    a.release().await;
    assert_eq!(
        latest(&store, "locks/backup-app").await.as_deref(),
        Some(&taker[..]),
        "the release removed only the old holder's own versions"
    );
    // And the new holder's lease is live: nobody else gets the lock.
    assert!(matches!(
        store.try_lock("backup-app", LockKind::Exclusive).await,
        Err(StoreError::Busy { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_lease_is_taken_over_mid_run_stops_before_its_manifest_and_the_repository_verifies(
) {
    let env = Env::new("lease-lost-backup");
    let db = env.path("app.db");
    make_db(&db, 60_000);
    let plan = env.plan("app", &db);
    said_by(&env.run(&["repo", "init", "--plan", s(&plan)]), 0);
    let store = env.store().await;
    let key = store.full_key("locks/backup-app");

    let child = env.spawn(&["backup", "--plan", s(&plan), "--json"]);
    // As soon as the backup's lock object appears, take it over
    // conditionally on its version: that succeeds only while the backup
    // holds it (its release removes it).
    let taker = record("taker", 7, 900, "2099-01-01T00:00:00Z");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the backup never took its lock");
        if let Ok(head) = store
            .client()
            .head_object()
            .bucket(store.bucket())
            .key(&key)
            .send()
            .await
        {
            let put = store
                .client()
                .put_object()
                .bucket(store.bucket())
                .key(&key)
                .if_match(head.e_tag().unwrap())
                .body(ByteStream::from(taker.clone()))
                .send()
                .await;
            if put.is_ok() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap();
    let said = said_by(&out, 6);
    assert!(said.contains("lost lock `backup-app`"), "{said}");
    assert!(said.contains("changed by someone else"), "{said}");
    // No snapshot, the taker's lock object untouched, the repository sound.
    assert_eq!(env.snapshots(&plan), 0);
    assert_eq!(
        latest(&store, "locks/backup-app").await.as_deref(),
        Some(&taker[..])
    );
    env.verifies(&plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_a_backup_of_another_plan_exclude_each_other_and_leave_nothing_half_done() {
    let env = Env::new("lease-prune-race");
    let app_db = env.path("app.db");
    let other_db = env.path("other.db");
    make_db(&app_db, 5_000);
    make_db(&other_db, 5_000);
    let app = env.plan("app", &app_db);
    let other = env.plan("other", &other_db);
    said_by(&env.run(&["repo", "init", "--plan", s(&app)]), 0);
    // Two snapshots of `app` with nothing in common; keep_last 1 and a 2 s
    // lock: once it ends, a prune has a snapshot and packs to remove.
    let first = env.json(&["backup", "--plan", s(&app), "--json"]);
    let conn = rusqlite::Connection::open(&app_db).unwrap();
    conn.execute("UPDATE orders SET note = hex(randomblob(120))", [])
        .unwrap();
    drop(conn);
    env.json(&["backup", "--plan", s(&app), "--json"]);
    let until: chrono::DateTime<chrono::Utc> =
        first["retain_until"].as_str().unwrap().parse().unwrap();
    while chrono::Utc::now() <= until + chrono::Duration::seconds(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let store = env.store().await;
    let prunes = || async { env.store().await.list("prunes/").await.unwrap().len() };

    // A backup of another plan is running (its shared repository lease):
    // the prune exits 6 naming it, and has written and removed nothing.
    let backup_running = store
        .try_lock("repository", LockKind::Shared)
        .await
        .unwrap();
    let said = said_by(&env.run(&["prune", "--plan", s(&app), "--json"]), 6);
    assert!(
        said.contains(&format!("pid {} on ", std::process::id())),
        "{said}"
    );
    assert_eq!(env.snapshots(&app), 2);
    assert_eq!(prunes().await, 0);
    backup_running.release().await;

    // A prune is running (the exclusive repository lease): a backup of the
    // other plan exits 6 and records no snapshot.
    let prune_running = store
        .try_lock("repository", LockKind::Exclusive)
        .await
        .unwrap();
    let said = said_by(&env.run(&["backup", "--plan", s(&other), "--json"]), 6);
    assert!(said.contains("a prune is running"), "{said}");
    assert_eq!(env.snapshots(&other), 0);
    prune_running.release().await;

    // Both for real, started together: each finishes or exits 6, and
    // whatever happened, both plans verify.
    let p = env.spawn(&["prune", "--plan", s(&app), "--json"]);
    let b = env.spawn(&["backup", "--plan", s(&other), "--json"]);
    let (p, b) = tokio::task::spawn_blocking(move || (finish(p), finish(b)))
        .await
        .unwrap();
    for out in [&p, &b] {
        assert!(
            matches!(out.status.code(), Some(0) | Some(6)),
            "{}",
            text(out)
        );
    }
    if p.status.code() == Some(0) {
        assert_eq!(env.snapshots(&app), 1, "{}", text(&p));
    }
    if b.status.code() == Some(0) {
        assert_eq!(env.snapshots(&other), 1);
    }
    env.verifies(&app);
    env.verifies(&other);
    // Every lock object is gone: each holder released its own.
    let left = store
        .client()
        .list_objects_v2()
        .bucket(store.bucket())
        .prefix(store.full_key("locks/"))
        .send()
        .await
        .unwrap();
    assert_eq!(left.key_count(), Some(0), "{left:?}");
}
