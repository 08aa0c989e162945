//! An insider with the backup writer's credentials adds objects to the
//! repository; holdfast must not believe them (issue 11, *Checks that need no
//! key*). Each test plants one attack the way such an insider would (bytes
//! put through the store, as the bucket's credentials allow) and then runs
//! the binary as on-call would: restore gets the real newest snapshot,
//! `verify` exits 5 naming the planted key, the next backup links to the
//! real head and gets the lock of its real tier.
//!
//! Without the repository key a forgery consistent in every field (its plan
//! and time match its key, it links to the real head, and on S3 it was
//! written at the time it claims) cannot be told from a real snapshot: the
//! encrypted, authenticated repository closes that. Most tests here cover
//! what the checks that need no key can and must stop, under `encryption:
//! none` (they also guard that mode); the last ones plant the same kinds of
//! objects in an encrypted repository, where each is named as not authentic
//! and ignored like any other rejected object.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use common::bin::{command, json_of, said_by, stdout_of};
use common::{checksum, make_db};
use holdfast::ids::{Hash256, SnapshotId};
use holdfast::repository::prune::PruneRecord;
use holdfast::repository::{Crypto, Manifest, SNAPSHOT_TIME_FORMAT};
use holdfast::store::local::LocalStore;
use holdfast::store::{PutOptions, Store};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// What a plan's `repository:` block adds for the checks that need no key.
const NO_KEY: &str = "  encryption: none\n";

/// A SQLite plan `app` backing up `dir/app.db` into `repository`.
fn sqlite_plan(dir: &Path, repository: &str, extra: &str) -> PathBuf {
    let db = dir.join("app.db");
    make_db(&db, 2_000);
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

/// holdfast at the injected time `now` (debug builds read `HOLDFAST_NOW`).
fn at(now: DateTime<Utc>, args: &[&str]) -> std::process::Output {
    command()
        .env(holdfast::clock::NOW_VAR, now.to_rfc3339())
        .args(args)
        .output()
        .unwrap()
}

fn backup_at(plan: &Path, now: DateTime<Utc>) -> serde_json::Value {
    json_of(&at(now, &["backup", "--plan", s(plan), "--json"]))
}

/// The key a manifest with these bytes would have, started at `when`.
fn key_for(plan: &str, when: DateTime<Utc>, bytes: &[u8]) -> String {
    let id = SnapshotId(Hash256::digest(bytes));
    format!(
        "snapshots/{plan}/{}-{id}",
        when.format(SNAPSHOT_TIME_FORMAT)
    )
}

/// A manifest encoded as holdfast writes them (compact JSON, zstd).
fn encode(m: &Manifest) -> Vec<u8> {
    zstd::bulk::compress(&serde_json::to_vec(m).unwrap(), 3).unwrap()
}

async fn put(store: &dyn Store, key: &str, bytes: Vec<u8>) {
    let opts = PutOptions {
        sha256: Hash256::digest(&bytes),
        retention: None,
    };
    store.put(key, Bytes::from(bytes), &opts).await.unwrap();
}

async fn manifest(store: &dyn Store, key: &str) -> (Vec<u8>, Manifest) {
    let bytes = store.get(key).await.unwrap().to_vec();
    let id = key.rsplit('-').next().unwrap().parse().unwrap();
    let m = Manifest::decode(key, &id, &bytes, &Crypto::none()).unwrap();
    (bytes, m)
}

fn restore_checksum(plan: &Path, dir: &Path, name: &str) -> (i64, String) {
    let to = dir.join(name);
    stdout_of(
        &command()
            .args(["restore", "--plan", s(plan), "--to", s(&to)])
            .output()
            .unwrap(),
    );
    checksum(&to)
}

/// `verify` fails with exit 5, naming each of `keys`; what it said.
fn verify_names(plan: &Path, keys: &[&str]) -> String {
    let out = command()
        .args(["verify", "--plan", s(plan)])
        .output()
        .unwrap();
    let said = said_by(&out, 5);
    for k in keys {
        assert!(said.contains(k), "verify does not name {k}:\n{said}");
    }
    said
}

fn snapshot_keys(plan: &Path) -> Vec<(String, Option<String>)> {
    let rows = json_of(
        &command()
            .args(["snapshots", "--plan", s(plan), "--json"])
            .output()
            .unwrap(),
    );
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["previous"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Two real backups an hour apart, the database changed between them.
struct TwoBackups {
    dir: tempfile::TempDir,
    plan: PathBuf,
    store: Arc<LocalStore>,
    first: serde_json::Value,
    second: serde_json::Value,
    /// The database as the second backup saw it.
    newest: (i64, String),
}

fn two_backups() -> TwoBackups {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let plan = sqlite_plan(dir.path(), s(&repo), NO_KEY);
    let first = backup_at(&plan, t("2026-11-02T10:00:00Z"));
    common::add_rows(
        &rusqlite::Connection::open(dir.path().join("app.db")).unwrap(),
        500,
    );
    let second = backup_at(&plan, t("2026-11-02T11:00:00Z"));
    let newest = checksum(&dir.path().join("app.db"));
    let store = Arc::new(LocalStore::open(repo.clone()).unwrap());
    TwoBackups {
        dir,
        plan,
        store,
        first,
        second,
        newest,
    }
}

/// No-key check, under `encryption: none`: a replayed manifest is caught by
/// its plan and time.
#[tokio::test]
async fn an_older_manifest_copied_under_a_newer_key_is_not_latest_and_verify_names_it() {
    let env = two_backups();
    let (old_bytes, old) = manifest(&*env.store, env.first["key"].as_str().unwrap()).await;
    // The insider's replay: an older snapshot's bytes, as they are, under a
    // key that sorts as the newest snapshot.
    let replay = key_for("app", t("2026-11-02T12:00:00Z"), &old_bytes);
    put(&*env.store, &replay, old_bytes.clone()).await;
    // And the same bytes under another plan's name.
    let other = key_for("billing", t("2026-11-02T12:00:00Z"), &old_bytes);
    put(&*env.store, &other, old_bytes).await;

    // On-call restores `latest`: the real newest, not the replay.
    let restored = restore_checksum(&env.plan, env.dir.path(), "latest.db");
    assert_eq!(restored, env.newest);
    assert_ne!(
        restored.0, 2_000,
        "the replayed first snapshot was restored"
    );
    let said = verify_names(&env.plan, &[&replay]);
    assert!(said.contains("its manifest says it started at"), "{said}");
    assert_eq!(old.plan.as_str(), "app");
    let keys: Vec<String> = snapshot_keys(&env.plan).into_iter().map(|k| k.0).collect();
    assert_eq!(
        keys,
        vec![
            env.first["key"].as_str().unwrap().to_string(),
            env.second["key"].as_str().unwrap().to_string()
        ]
    );
    // Plan `billing` has no snapshot: the copy under its name is named.
    let billing = env.dir.path().join("billing.yaml");
    let text = std::fs::read_to_string(&env.plan)
        .unwrap()
        .replace("name: app", "name: billing");
    std::fs::write(&billing, text).unwrap();
    let out = command()
        .args(["restore", "--plan", s(&billing), "--to"])
        .arg(env.dir.path().join("billing.db"))
        .output()
        .unwrap();
    let said = said_by(&out, 2);
    assert!(said.contains("no snapshot matching `latest`"), "{said}");
    assert!(
        said.contains(&other),
        "the plan-mismatch warning names the key:\n{said}"
    );
}

/// No-key checks, under `encryption: none`: a hand-written manifest lying
/// about its time or chain is rejected.
#[tokio::test]
async fn a_hand_forged_manifest_chained_to_the_real_head_is_rejected_and_the_next_backup_links_past_it(
) {
    let env = two_backups();
    let head_key = env.second["key"].as_str().unwrap();
    let head_id: SnapshotId = env.second["snapshot"].as_str().unwrap().parse().unwrap();
    let (_, first) = manifest(&*env.store, env.first["key"].as_str().unwrap()).await;
    let (_, head) = manifest(&*env.store, head_key).await;

    // Well-formed, holding the first snapshot's (older) entries, chained to
    // the real head, but its key's time is not the time it claims.
    let mut forged = head.clone();
    forged.entries = first.entries.clone();
    forged.entries_object = first.entries_object.clone();
    forged.previous = Some(head_id);
    forged.started_at = t("2026-11-02T11:30:00Z");
    forged.finished_at = t("2026-11-02T11:31:00Z");
    let bytes = encode(&forged);
    let lying_time = key_for("app", t("2026-11-02T12:00:00Z"), &bytes);
    put(&*env.store, &lying_time, bytes).await;

    // Consistent time, but older than the head it claims to follow.
    let mut backwards = forged.clone();
    backwards.started_at = t("2026-11-02T10:30:00Z");
    backwards.finished_at = t("2026-11-02T10:31:00Z");
    let bytes = encode(&backwards);
    let backwards_key = key_for("app", backwards.started_at, &bytes);
    put(&*env.store, &backwards_key, bytes).await;

    // Consistent time, linked to the first snapshot like the real second
    // one: a fork, and the real branch (the later one) is the one kept.
    let mut sibling = forged.clone();
    sibling.previous = Some(env.first["snapshot"].as_str().unwrap().parse().unwrap());
    sibling.started_at = t("2026-11-02T10:45:00Z");
    sibling.finished_at = t("2026-11-02T10:46:00Z");
    let bytes = encode(&sibling);
    let sibling_key = key_for("app", sibling.started_at, &bytes);
    put(&*env.store, &sibling_key, bytes).await;

    // (A forgery with consistent plan and time, linked to the real head and
    // dated after it, passes every check that needs no key: only a manifest
    // sealed under the repository key tells it apart. Not planted here.)

    let restored = restore_checksum(&env.plan, env.dir.path(), "latest.db");
    assert_eq!(restored, env.newest);
    let said = verify_names(&env.plan, &[&lying_time, &backwards_key, &sibling_key]);
    assert!(said.contains("not older than it"), "{said}");
    assert!(said.contains("only one of them can be real"), "{said}");

    // The next real backup links to the real head, not to any forgery.
    let next = backup_at(&env.plan, t("2026-11-02T13:00:00Z"));
    let listed = snapshot_keys(&env.plan);
    let (key, previous) = listed.last().unwrap();
    assert_eq!(key, next["key"].as_str().unwrap());
    assert_eq!(previous.as_deref(), Some(head_id.to_string().as_str()));
    assert_eq!(listed.len(), 3, "{listed:?}");
}

/// No-key check, under `encryption: none`: a future-dated key is ignored.
#[tokio::test]
async fn a_key_dated_in_the_future_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let plan = sqlite_plan(dir.path(), s(&repo), NO_KEY);
    let real = json_of(
        &command()
            .args(["backup", "--plan", s(&plan), "--json"])
            .output()
            .unwrap(),
    );
    let newest = checksum(&dir.path().join("app.db"));
    let store = LocalStore::open(repo.clone()).unwrap();
    let (_, mut m) = manifest(&store, real["key"].as_str().unwrap()).await;
    // Consistent in plan and time, linked to the real head, dated tomorrow.
    let tomorrow = Utc::now() + Duration::days(1);
    m.previous = Some(real["snapshot"].as_str().unwrap().parse().unwrap());
    m.entries.clear();
    m.started_at = tomorrow;
    m.finished_at = tomorrow;
    let bytes = encode(&m);
    let future = key_for("app", tomorrow, &bytes);
    put(&store, &future, bytes).await;

    let restored = restore_checksum(&plan, dir.path(), "latest.db");
    assert_eq!(restored, newest);
    let said = verify_names(&plan, &[&future]);
    assert!(said.contains("clock-skew allowance"), "{said}");
    // A backup now links to the real snapshot.
    let next = json_of(
        &command()
            .args(["backup", "--plan", s(&plan), "--json"])
            .output()
            .unwrap(),
    );
    let listed = snapshot_keys(&plan);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[1].0, next["key"].as_str().unwrap());
    assert_eq!(listed[1].1.as_deref(), real["snapshot"].as_str());
}

/// No-key check, under `encryption: none`: planted future-day keys do not
/// change a real backup's tier.
#[tokio::test]
async fn forged_keys_at_the_start_of_coming_days_do_not_shorten_a_real_backups_lock() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let plan = sqlite_plan(dir.path(), s(&repo), NO_KEY);
    let day0 = t("2026-11-02T10:00:00Z");
    let first = backup_at(&plan, day0);
    let store = LocalStore::open(repo.clone()).unwrap();
    let (bytes, _) = manifest(&store, first["key"].as_str().unwrap()).await;
    // The insider plants a key at midnight of each of the next five days
    // (the real manifest's bytes, so each is well-formed and hash-correct).
    let mut planted = Vec::new();
    for d in 1..=5 {
        let midnight = t("2026-11-02T00:00:00Z") + Duration::days(d);
        let key = key_for("app", midnight, &bytes);
        put(&store, &key, bytes.clone()).await;
        planted.push(key);
    }
    // The next day's backup is still that day's first: `daily`, locked for
    // the seven days `keep_daily` keeps it plus a day's margin (without the
    // checks it was the second of its day: `last`, locked for the shortest
    // tier).
    let now = t("2026-11-03T09:00:00Z");
    let out = at(now, &["backup", "--plan", s(&plan), "--json"]);
    let next = json_of(&out);
    assert_eq!(next["tier"], "daily", "{next}");
    assert_eq!(
        next["retain_until"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        now + Duration::days(8),
        "{next}"
    );
    // The backup warned about each planted key it could see as past.
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(said.contains(&planted[0]), "{said}");
    // Prune keeps the real ones and leaves the planted ones to verify.
    let pruned = json_of(&at(now, &["prune", "--plan", s(&plan), "--json"]));
    assert_eq!(pruned["kept"].as_array().unwrap().len(), 2, "{pruned}");
    verify_names(&plan, &[&planted[0]]);
}

/// No-key check, under `encryption: none`: a prune record cannot hide packs
/// in use.
#[tokio::test]
async fn a_forged_prune_record_does_not_hide_packs_kept_snapshots_use() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let plan = sqlite_plan(dir.path(), s(&repo), NO_KEY);
    let day0 = t("2026-11-02T10:00:00Z");
    backup_at(&plan, day0);
    let newest = checksum(&dir.path().join("app.db"));
    let store = LocalStore::open(repo.clone()).unwrap();
    // A record naming every pack, as if a prune had removed them all.
    let packs = store
        .list("packs/")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key.rsplit('/').next().unwrap().parse().unwrap())
        .collect::<Vec<_>>();
    assert!(!packs.is_empty());
    let record = PruneRecord {
        format: "holdfast-prune".into(),
        version: 1,
        plan: holdfast::plan::PlanName::new("app").unwrap(),
        at: day0 + Duration::hours(1),
        snapshots: Vec::new(),
        packs,
    };
    let bytes = zstd::bulk::compress(&serde_json::to_vec(&record).unwrap(), 3).unwrap();
    let key = format!(
        "prunes/20261102T110000.000Z-{}",
        Hash256::digest(&bytes).to_hex()
    );
    put(&store, &key, bytes).await;

    // Restore reads the packs the record claims are gone.
    assert_eq!(restore_checksum(&plan, dir.path(), "a.db"), newest);
    let said = verify_names(&plan, &[&key]);
    assert!(said.contains("still need"), "{said}");
    // A prune after every lock ended deletes none of them: the kept
    // snapshot still restores.
    let later = day0 + Duration::days(30);
    let pruned = json_of(&at(later, &["prune", "--plan", s(&plan), "--json"]));
    assert_eq!(pruned["packs_removed"], 0, "{pruned}");
    assert_eq!(pruned["index_objects_removed"], 0, "{pruned}");
    assert_eq!(restore_checksum(&plan, dir.path(), "b.db"), newest);
}

/// No-key check, under `encryption: none`: S3's creation time betrays a
/// manifest backdated at write.
#[tokio::test]
async fn on_s3_a_manifest_written_now_under_a_past_time_is_rejected_by_its_creation_time() {
    let s3 = common::s3_env();
    let dir = tempfile::tempdir().unwrap();
    let bucket = common::bucket_name("forgery");
    let plan = sqlite_plan(
        dir.path(),
        &format!("s3://{bucket}/prod"),
        &format!("  endpoint: {}\n{NO_KEY}", s3.endpoint),
    );
    let aws = [
        ("AWS_ACCESS_KEY_ID", s3.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let run = |args: &[&str]| command().envs(aws).args(args).output().unwrap();
    json_of(&run(&["repo", "init", "--plan", s(&plan), "--json"]));
    let real = json_of(&run(&["backup", "--plan", s(&plan), "--json"]));

    let mut config = common::s3_config(&bucket, "prod");
    config.endpoint = Some(s3.endpoint.clone());
    let store = holdfast::store::s3::S3Store::open(config).await.unwrap();
    let (_, mut m) = manifest(&store, real["key"].as_str().unwrap()).await;
    // Consistent in plan and time, the start of a chain of its own, three
    // days in the past: history nobody took, written today.
    let past = Utc::now() - Duration::days(3);
    m.previous = None;
    m.started_at = past;
    m.finished_at = past + Duration::minutes(1);
    let bytes = encode(&m);
    let forged = key_for("app", past, &bytes);
    put(&store, &forged, bytes).await;

    let out = run(&["verify", "--plan", s(&plan)]);
    let said = said_by(&out, 5);
    assert!(said.contains(&forged), "{said}");
    assert!(said.contains("the store created it at"), "{said}");
    let rows = json_of(&run(&["snapshots", "--plan", s(&plan), "--json"]));
    let keys: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec![real["key"].as_str().unwrap()]);
}

/// Authentication, on an encrypted repository: hand-written objects of each
/// kind are not authentic and ignored, named by restore, prune and backup,
/// and reported by verify (exit 5). The manifest is the forgery the no-key
/// checks cannot catch: consistent in plan, time and chain, linked to the
/// real head and dated after it. A real sealed manifest replayed under a
/// newer key fails too (its name is its associated data).
#[tokio::test]
async fn on_an_encrypted_repository_hand_written_manifests_index_objects_and_prune_records_are_not_authentic(
) {
    use holdfast::repository::index::{IndexFile, IndexedPack};
    use holdfast::repository::{Repository, SnapshotRef};

    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let plan = sqlite_plan(dir.path(), s(&repo_dir), "");
    let day0 = t("2026-11-02T10:00:00Z");
    let first = backup_at(&plan, day0);
    common::add_rows(
        &rusqlite::Connection::open(dir.path().join("app.db")).unwrap(),
        500,
    );
    let second = backup_at(&plan, day0 + Duration::hours(1));
    let newest = checksum(&dir.path().join("app.db"));
    let head_id: SnapshotId = second["snapshot"].as_str().unwrap().parse().unwrap();
    let store = Arc::new(LocalStore::open(repo_dir.clone()).unwrap());
    // The test holds the key (to build a perfect forgery); the insider who
    // writes the objects below does not, so writes them unsealed.
    let repo = Repository::open(store.clone(), &common::bin::test_repo_key())
        .await
        .unwrap();
    let head_ref = SnapshotRef::from_key(second["key"].as_str().unwrap()).unwrap();
    let head = repo.load_manifest(&head_ref).await.unwrap();
    let first_ref = SnapshotRef::from_key(first["key"].as_str().unwrap()).unwrap();
    let first_m = repo.load_manifest(&first_ref).await.unwrap();

    let mut forged = head.clone();
    forged.entries = first_m.entries.clone();
    forged.previous = Some(head_id);
    forged.started_at = day0 + Duration::hours(2);
    forged.finished_at = day0 + Duration::hours(2) + Duration::minutes(1);
    let bytes = encode(&forged);
    let forged_key = key_for("app", forged.started_at, &bytes);
    put(&*store, &forged_key, bytes).await;

    let sealed_first = store.get(first["key"].as_str().unwrap()).await.unwrap();
    let replay = key_for("app", day0 + Duration::hours(3), &sealed_first);
    put(&*store, &replay, sealed_first.to_vec()).await;

    // An index object naming every real pack (with no chunks in them).
    let (index, _) = repo.load_index_lenient().await.unwrap();
    let packs: Vec<IndexedPack> = index
        .packs()
        .iter()
        .map(|(id, size)| IndexedPack {
            id: *id,
            size: *size,
            chunks: Vec::new(),
        })
        .collect();
    assert!(!packs.is_empty());
    let index_bytes = IndexFile::new(packs.clone()).encode(&Crypto::none());
    let index_key = format!("index/{}", Hash256::digest(&index_bytes));
    put(&*store, &index_key, index_bytes).await;

    // A prune record naming every pack.
    let record = PruneRecord {
        format: "holdfast-prune".into(),
        version: holdfast::repository::FORMAT_VERSION,
        plan: holdfast::plan::PlanName::new("app").unwrap(),
        at: day0 + Duration::hours(1),
        snapshots: Vec::new(),
        packs: packs.iter().map(|p| p.id).collect(),
    };
    let bytes = zstd::bulk::compress(&serde_json::to_vec(&record).unwrap(), 3).unwrap();
    let record_key = format!(
        "prunes/20261102T110000.000Z-{}",
        Hash256::digest(&bytes).to_hex()
    );
    put(&*store, &record_key, bytes).await;

    // Restore `latest`: the real head, and the warnings name the manifests
    // ignored. The snapshot's manifest places its chunks (version 6), so
    // the index and the prune records are not read at all.
    let to = dir.path().join("latest.db");
    let out = at(
        day0 + Duration::hours(4),
        &["restore", "--plan", s(&plan), "--to", s(&to)],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(checksum(&to), newest);
    for k in [&forged_key, &replay] {
        assert!(
            said.contains(k.as_str()),
            "restore does not name {k}:\n{said}"
        );
    }
    for k in [&index_key, &record_key] {
        assert!(!said.contains(k.as_str()), "restore read {k}:\n{said}");
    }
    assert!(said.contains("not authentic"), "{said}");

    // Verify names each as not authentic, exit 5.
    let out = at(
        day0 + Duration::hours(4),
        &["verify", "--plan", s(&plan), "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [&forged_key, &replay, &index_key, &record_key] {
        let p = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["object"] == k.as_str())
            .unwrap_or_else(|| panic!("verify does not report {k}: {report:#}"));
        assert_eq!(p["kind"], "rejected", "{p}");
        assert!(
            p["detail"].as_str().unwrap().contains("not authentic"),
            "{p}"
        );
    }

    // The next backup links to the real head; prune goes on past them.
    let next = backup_at(&plan, day0 + Duration::hours(5));
    let listed = snapshot_keys(&plan);
    assert_eq!(listed.last().unwrap().0, next["key"].as_str().unwrap());
    assert_eq!(
        listed.last().unwrap().1.as_deref(),
        Some(head_id.to_string().as_str())
    );
    let out = at(
        day0 + Duration::hours(5),
        &["prune", "--plan", s(&plan), "--json"],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&index_key) && said.contains(&record_key),
        "{said}"
    );
    let to = dir.path().join("after-prune.db");
    let out = at(
        day0 + Duration::hours(5),
        &["restore", "--plan", s(&plan), "--to", s(&to)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(checksum(&to), newest);
}

/// Key objects are what anyone with the bucket's credentials can add most
/// cheaply: a key object's name is the SHA-256 of content they choose, and
/// unlocking tries at most 32. Forty planted objects whose names sort before
/// the real key's, each well-formed and bound to this repository but opening
/// with nothing, must not lock the key holder out: on S3 key objects are
/// tried oldest first by the server's creation time, so the repository's own
/// key comes first and backup, restore and verify go on.
#[tokio::test]
async fn on_s3_key_objects_planted_to_sort_first_do_not_lock_the_key_holder_out() {
    use holdfast::repository::keys::{key_id_of, read_key_object, KeyObject};
    let s3 = common::s3_env();
    let dir = tempfile::tempdir().unwrap();
    let bucket = common::bucket_name("keycrowd");
    let plan = sqlite_plan(
        dir.path(),
        &format!("s3://{bucket}/prod"),
        &format!("  endpoint: {}\n", s3.endpoint),
    );
    let aws = [
        ("AWS_ACCESS_KEY_ID", s3.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let run = |args: &[&str]| command().envs(aws).args(args).output().unwrap();
    json_of(&run(&["repo", "init", "--plan", s(&plan), "--json"]));
    json_of(&run(&["backup", "--plan", s(&plan), "--json"]));

    let mut config = common::s3_config(&bucket, "prod");
    config.endpoint = Some(s3.endpoint.clone());
    let store = holdfast::store::s3::S3Store::open(config).await.unwrap();
    let listed = store.list("keys/").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let real_id = key_id_of(&listed[0].key).unwrap();
    let real: KeyObject = read_key_object(&store, &real_id).await.unwrap();
    // S3 creation times have one-second resolution: the insider comes later
    // than the repository's creation (objects created within the same
    // second tie, and fall back to name order).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // Cheap to try (8 KiB, one pass), bound to this repository, opening
    // with nothing; salts ground until each name sorts before the real one.
    let mut planted = Vec::new();
    let mut n = 0u64;
    while planted.len() < 40 {
        n += 1;
        let mut forged = real.clone();
        forged.kdf.memory_kib = 8;
        forged.kdf.iterations = 1;
        forged.kdf.salt = format!("{n:032x}");
        forged.wrapped = hex::encode([7u8; 72]);
        let bytes = serde_json::to_vec_pretty(&forged).unwrap();
        let id = Hash256::digest(&bytes);
        if id.to_string() < real_id.to_string() {
            let key = format!("keys/{id}");
            put(&store, &key, bytes).await;
            planted.push(key);
        }
    }
    let names: Vec<String> = store
        .list("keys/")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(names.len(), 41);
    assert!(
        names.iter().take(40).all(|k| planted.contains(k)),
        "in name order the planted objects come first"
    );

    let out = run(&["backup", "--plan", s(&plan), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let to = dir.path().join("restored.db");
    let out = run(&["restore", "--plan", s(&plan), "--to", s(&to)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(checksum(&to), checksum(&dir.path().join("app.db")));
    let out = run(&["key", "list", "--plan", s(&plan), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
