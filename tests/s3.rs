//! The runbook on S3, against a real SeaweedFS with Object Lock
//! (`scripts/s3-server`): back up and restore over S3, survive an insider
//! holding the backup credentials, prove immutability with `doctor`, survive
//! the server going away mid-upload, name damaged packs, and prune.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::bin::{command, json_of, s, said_by, stdout_of};
use common::{add_rows, checksum, make_db};

struct Env {
    dir: tempfile::TempDir,
    endpoint: String,
    bucket: String,
    /// AWS_* variables for the holdfast processes.
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(hint: &str) -> Self {
        Self::on(hint, common::s3_env().endpoint)
    }

    fn on(hint: &str, endpoint: String) -> Self {
        let s3 = common::s3_env();
        Env {
            dir: tempfile::tempdir().unwrap(),
            endpoint,
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

    /// A plan for `source_yaml` in this test's bucket, credentials from the
    /// environment (the default AWS chain).
    fn plan(&self, name: &str, source_yaml: &str, lock_yaml: &str, retention: &str) -> PathBuf {
        let file = self.path(&format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}\nsource: {source_yaml}\nrepository:\n  url: s3://{bucket}/prod\n  endpoint: {endpoint}\nschedule:\n  backup: \"0 * * * *\"\nlock: {lock_yaml}\nretention: {retention}\n",
                bucket = self.bucket,
                endpoint = self.endpoint,
            ),
        )
        .unwrap();
        file
    }

    fn sqlite_plan(&self, db: &Path) -> PathBuf {
        self.plan(
            "app",
            &format!("{{type: sqlite, path: {}}}", db.display()),
            "{mode: compliance, days: 7}",
            "{keep_last: 24, keep_daily: 7}",
        )
    }

    /// holdfast with this test's AWS_* variables.
    fn command(&self) -> Command {
        let mut c = command();
        c.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("holdfast runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_of(&self.run(args))
    }

    fn fails(&self, args: &[&str], code: i32) -> String {
        said_by(&self.run(args), code)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        json_of(&self.run(args))
    }

    /// A raw client with the same credentials the plan uses: the insider's.
    async fn raw(&self) -> holdfast::store::s3::S3Store {
        let mut c = common::s3_config(&self.bucket, "prod");
        c.endpoint = Some(self.endpoint.clone());
        holdfast::store::s3::S3Store::open(c).await.unwrap()
    }
}

#[test]
fn sqlite_and_files_back_up_and_restore_over_s3() {
    let env = Env::new("roundtrip");
    let db = env.path("app.db");
    make_db(&db, 20_000);
    let plan = env.sqlite_plan(&db);
    let init = env.json(&["repo", "init", "--plan", s(&plan), "--json"]);
    assert_eq!(init["bucket_created"], true);
    assert_eq!(init["bucket"]["object_lock"], true);
    assert_eq!(init["bucket"]["versioning"], "Enabled");

    // Both backups on one UTC day whenever the test runs (a real clock
    // could cross midnight between them and make both "daily"), and not in
    // the future: a restore by the real clock does not believe a snapshot
    // dated later than now (noon of today failed every morning).
    let now = chrono::Utc::now();
    let midnight = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let at = (now - chrono::Duration::seconds(60)).max(midnight);
    let backup_at = |at: chrono::DateTime<chrono::Utc>| {
        let mut c = env.command();
        c.env(holdfast::clock::NOW_VAR, at.to_rfc3339());
        json_of(
            &c.args(["backup", "--plan", s(&plan), "--json"])
                .output()
                .unwrap(),
        )
    };
    let first = backup_at(at);
    let state1 = checksum(&db);
    add_rows(&rusqlite::Connection::open(&db).unwrap(), 2_000);
    let second = backup_at(at + chrono::Duration::seconds(1));
    let state2 = checksum(&db);
    assert_eq!(first["tier"], "daily");
    assert_eq!(second["tier"], "last");
    // The hourly-kept snapshot is locked for days, the daily one for a week.
    let until = |r: &serde_json::Value| {
        r["retain_until"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    assert!(until(&first) - until(&second) > chrono::Duration::days(4));

    let out1 = env.path("out1.db");
    let id1 = first["snapshot"].as_str().unwrap();
    env.ok(&[
        "restore",
        "--plan",
        s(&plan),
        "--snapshot",
        &id1[..8],
        "--to",
        s(&out1),
    ]);
    assert_eq!(checksum(&out1), state1);
    let out2 = env.path("out2.db");
    env.ok(&["restore", "--plan", s(&plan), "--to", s(&out2), "--check"]);
    assert_eq!(checksum(&out2), state2);
    let report = env.json(&["verify", "--plan", s(&plan), "--json"]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert!(report["objects_lock_checked"].as_u64().unwrap() >= 4);

    // A files tree in the same bucket, another plan, with the plan's own
    // credentials (access_key_id + secret_access_key_file) and none in the
    // environment.
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("etc/conf.d")).unwrap();
    std::fs::write(tree.join("etc/app.conf"), "listen = 8080\n").unwrap();
    std::fs::write(tree.join("etc/conf.d/big.bin"), common::data(7, 30 << 20)).unwrap();
    std::os::unix::fs::symlink("app.conf", tree.join("etc/current.conf")).unwrap();
    let keys = common::s3_env();
    std::fs::write(env.path("s3.key"), format!("{}\n", keys.secret_access_key)).unwrap();
    let files = env.path("etc.yaml");
    let files_plan = |key_id: &str| {
        std::fs::write(
            &files,
            format!(
                "name: etc\nsource: {{type: files, path: {tree}}}\nrepository:\n  url: s3://{bucket}/prod\n  endpoint: {endpoint}\n  region: us-east-1\n  access_key_id: {key_id}\n  secret_access_key_file: s3.key\nschedule:\n  backup: \"0 * * * *\"\nlock: {{mode: governance, days: 7}}\nretention: {{keep_last: 24, keep_daily: 7}}\n",
                tree = tree.display(),
                bucket = env.bucket,
                endpoint = env.endpoint,
            ),
        )
        .unwrap();
    };
    let bare = |args: &[&str]| {
        command()
            .args(args)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap()
    };
    // Wrong key id: refused by the server, named, exit 4.
    files_plan("not-a-key");
    let out = bare(&["backup", "--plan", s(&files)]);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{msg}");
    assert!(msg.contains("403") && msg.contains(&env.bucket), "{msg}");
    files_plan(&keys.access_key_id);
    let out = bare(&["backup", "--plan", s(&files), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.path("tree-out");
    assert!(bare(&["restore", "--plan", s(&files), "--to", s(&out)])
        .status
        .success());
    assert_eq!(
        std::fs::read(out.join("etc/conf.d/big.bin")).unwrap(),
        common::data(7, 30 << 20)
    );
    assert_eq!(
        std::fs::read_link(out.join("etc/current.conf")).unwrap(),
        Path::new("app.conf")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insider_with_the_backup_credentials_cannot_destroy_locked_backups() {
    let env = Env::new("insider");
    let db = env.path("app.db");
    make_db(&db, 20_000);
    let plan = env.sqlite_plan(&db);
    env.ok(&["repo", "init", "--plan", s(&plan)]);
    env.ok(&["backup", "--plan", s(&plan)]);
    let state = checksum(&db);

    // The insider, with the very same credentials: delete every version of
    // every object, hide every key behind a delete marker, overwrite every key
    // with garbage, and try to shorten the locks.
    let raw = env.raw().await;
    let client = raw.client().clone();
    let keys: Vec<String> = {
        let out = client
            .list_object_versions()
            .bucket(&env.bucket)
            .send()
            .await
            .unwrap();
        out.versions()
            .iter()
            .filter_map(|v| v.key().map(str::to_string))
            .collect()
    };
    assert!(keys.len() >= 4, "config, index, pack, manifest: {keys:?}");
    // A refusal counts only as S3's Object Lock refusal (403 AccessDenied),
    // and only when the version's lock reads back unchanged afterwards.
    let lock_of = |key: String, version: String| {
        let client = client.clone();
        let bucket = env.bucket.clone();
        async move {
            let out = client
                .head_object()
                .bucket(bucket)
                .key(&key)
                .version_id(&version)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!("version {version} of {key} cannot be read back: {e:?}")
                });
            (
                out.object_lock_mode().map(|m| m.as_str().to_string()),
                out.object_lock_retain_until_date().cloned(),
            )
        }
    };
    let mut refused = 0;
    for key in &keys {
        let versions = client
            .list_object_versions()
            .bucket(&env.bucket)
            .prefix(key)
            .send()
            .await
            .unwrap();
        for v in versions.versions() {
            let version = v.version_id().unwrap().to_string();
            let before = lock_of(key.clone(), version.clone()).await;
            assert!(before.1.is_some(), "{key} {version} is not locked");
            let res = client
                .delete_object()
                .bucket(&env.bucket)
                .key(key)
                .version_id(&version)
                .bypass_governance_retention(true)
                .send()
                .await;
            match res {
                Ok(_) => panic!("version {version} of {key} was deleted"),
                Err(e) => {
                    let f = holdfast::store::s3::failure(&e);
                    assert!(
                        f.is_lock_refusal(),
                        "deleting version {version} of {key} failed, but not with the lock's refusal: {f}"
                    );
                }
            }
            assert_eq!(
                lock_of(key.clone(), version.clone()).await,
                before,
                "the lock of {key} {version} changed"
            );
            refused += 1;

            let shorten = client
                .put_object_retention()
                .bucket(&env.bucket)
                .key(key)
                .version_id(&version)
                .retention(
                    aws_sdk_s3::types::ObjectLockRetention::builder()
                        .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Compliance)
                        .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                            before.1.unwrap().secs() - 86_400,
                        ))
                        .build(),
                )
                .send()
                .await;
            match shorten {
                Ok(_) => panic!("the lock of {key} {version} was shortened"),
                Err(e) => {
                    let f = holdfast::store::s3::failure(&e);
                    assert!(
                        f.is_lock_refusal(),
                        "shortening the lock of {key} {version} failed, but not with the lock's refusal: {f}"
                    );
                }
            }
            assert_eq!(
                lock_of(key.clone(), version.clone()).await,
                before,
                "the lock of {key} {version} changed although shortening it was refused"
            );
        }
        client
            .delete_object()
            .bucket(&env.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        client
            .put_object()
            .bucket(&env.bucket)
            .key(key)
            .body(ByteStream::from_static(b"ransom note: pay us"))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(refused, keys.len(), "every locked version refused deletion");
    let plain_get = client
        .get_object()
        .bucket(&env.bucket)
        .key(&keys[0])
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(
        &plain_get[..],
        b"ransom note: pay us",
        "the attack did land"
    );

    // New junk keys where holdfast looks for index objects and prune records.
    let junk_index = format!("index/{}", "0".repeat(64));
    for key in [junk_index.as_str(), "prunes/20261126T000000.000Z-junk"] {
        client
            .put_object()
            .bucket(&env.bucket)
            .key(raw.full_key(key))
            .body(ByteStream::from_static(b"not what you think"))
            .send()
            .await
            .unwrap();
    }

    // On-call restores from what the locks kept; verify names the junk.
    let snaps = env.json(&["snapshots", "--plan", s(&plan), "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    let out = env.run(&["verify", "--plan", s(&plan), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(5), "{report}");
    // Both named: the index object as corrupt (its bytes are not its name),
    // the prune record as rejected (not authentic).
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{report}");
    assert_eq!(problems[0]["object"], junk_index.as_str());
    assert_eq!(problems[0]["kind"], "corrupt");
    assert_eq!(problems[1]["object"], "prunes/20261126T000000.000Z-junk");
    assert_eq!(problems[1]["kind"], "rejected");
    let out = env.path("restored.db");
    env.ok(&["restore", "--plan", s(&plan), "--to", s(&out), "--check"]);
    assert_eq!(checksum(&out), state);
    // And backups go on in the attacked bucket.
    add_rows(&rusqlite::Connection::open(&db).unwrap(), 500);
    env.ok(&["backup", "--plan", s(&plan)]);
    let out = env.path("restored2.db");
    env.ok(&["restore", "--plan", s(&plan), "--to", s(&out)]);
    assert_eq!(checksum(&out), checksum(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_locked_bucket_and_fails_on_an_unlocked_one() {
    let env = Env::new("doctor-locked");
    let db = env.path("app.db");
    make_db(&db, 100);
    let plan = env.sqlite_plan(&db);
    env.ok(&["repo", "init", "--plan", s(&plan)]);
    let report = env.json(&["doctor", "--plan", s(&plan), "--json"]);
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report}"))["status"]
            .clone()
    };
    assert_eq!(status("canary delete refused"), "pass", "{report}");
    assert_eq!(status("canary lock cannot be shortened"), "pass");
    assert_eq!(status("bucket object lock"), "pass");
    assert_eq!(status("lock mode"), "pass");
    // SeaweedFS honours the conditions lease locks rely on.
    assert_eq!(status("lock conditional writes"), "pass", "{report}");
    assert_eq!(report["verdict"], "pass", "{report}");
    // Each pass names the refusal it rests on.
    for name in ["canary delete refused", "canary lock cannot be shortened"] {
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert!(
            check["error"]
                .as_str()
                .unwrap()
                .contains("403 AccessDenied"),
            "{check}"
        );
    }
    let writer = report["writer_policy"].to_string();
    assert!(writer.contains("s3:PutObject") && writer.contains("s3:BypassGovernanceRetention"));
    assert!(
        !report["writer_policy"]["Statement"][0]["Action"]
            .to_string()
            .contains("Delete"),
        "the writer may not delete backups: {writer}"
    );
    assert!(report["prune_policy"]
        .to_string()
        .contains("s3:DeleteObjectVersion"));

    // A bucket made without Object Lock: init refuses a locking plan, and
    // doctor fails it; a plan that says `mode: none` is let in, loudly.
    let bare = Env::new("doctor-bare");
    let store = bare.raw().await;
    store.create_bucket(false).await.unwrap();
    let db = bare.path("app.db");
    make_db(&db, 100);
    let locked = bare.sqlite_plan(&db);
    let msg = bare.fails(&["repo", "init", "--plan", s(&locked)], 4);
    assert!(
        msg.contains(&bare.bucket) && msg.contains("no Object Lock"),
        "{msg}"
    );
    let msg = bare.fails(&["doctor", "--plan", s(&locked)], 9);
    assert!(msg.contains("FAIL bucket object lock"), "{msg}");
    let unlocked = bare.plan(
        "open",
        &format!("{{type: sqlite, path: {}}}", db.display()),
        "{mode: none}",
        "{keep_last: 3}",
    );
    let out = bare.run(&["repo", "init", "--plan", s(&unlocked)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT immutable"));
    let msg = bare.fails(&["doctor", "--plan", s(&unlocked)], 9);
    assert!(msg.contains("FAIL immutability"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_missing_or_corrupt_pack() {
    // Without locks, so the test can damage what it needs to.
    let env = Env::new("damage");
    let db = env.path("app.db");
    make_db(&db, 20_000);
    let plan = env.plan(
        "app",
        &format!("{{type: sqlite, path: {}}}", db.display()),
        "{mode: none}",
        "{keep_last: 3}",
    );
    env.ok(&["repo", "init", "--plan", s(&plan)]);
    env.ok(&["backup", "--plan", s(&plan)]);
    let raw = env.raw().await;
    use holdfast::store::Store;
    let packs = raw.list("packs/").await.unwrap();
    assert_eq!(packs.len(), 1);
    let pack = &packs[0].key;

    // Corrupt: replace the pack's only version with other bytes of its size.
    let good = raw.get(pack).await.unwrap();
    raw.delete(pack).await.unwrap();
    let mut bad = good.to_vec();
    bad[100] ^= 0xff;
    raw.client()
        .put_object()
        .bucket(&env.bucket)
        .key(raw.full_key(pack))
        .body(ByteStream::from(bad))
        .send()
        .await
        .unwrap();
    let report = env.run(&["verify", "--plan", s(&plan), "--json"]);
    assert_eq!(report.status.code(), Some(5));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["problems"][0]["object"], pack.as_str(), "{report}");
    assert_eq!(report["problems"][0]["kind"], "corrupt");
    let msg = env.fails(
        &["restore", "--plan", s(&plan), "--to", s(&env.path("x.db"))],
        5,
    );
    assert!(msg.contains(pack.as_str()), "{msg}");
    assert!(!env.path("x.db").exists(), "nothing restored silently");

    // Missing.
    raw.delete(pack).await.unwrap();
    let report = env.run(&["verify", "--plan", s(&plan), "--json"]);
    assert_eq!(report.status.code(), Some(5));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["problems"][0]["object"], pack.as_str(), "{report}");
    assert_eq!(report["problems"][0]["kind"], "missing");
}

#[test]
fn prune_reports_under_dry_run_and_removes_after_a_short_lock_ends() {
    let env = Env::new("prune");
    let db = env.path("app.db");
    make_db(&db, 5_000);
    // Every 5 s, keep the last one: a lock of 8 s covers it.
    let plan = env.path("app.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: app\nsource: {{type: sqlite, path: {db}}}\nrepository:\n  url: s3://{bucket}/prod\n  endpoint: {endpoint}\nschedule:\n  backup: \"*/5 * * * * *\"\nlock: {{mode: compliance, duration: 8s}}\nretention: {{keep_last: 1}}\n",
            db = db.display(),
            bucket = env.bucket,
            endpoint = env.endpoint
        ),
    )
    .unwrap();
    env.ok(&["repo", "init", "--plan", s(&plan)]);
    let first = env.json(&["backup", "--plan", s(&plan), "--json"]);
    // Rewrite every row so the second snapshot shares no chunk with the first.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE orders SET note = hex(randomblob(120))", [])
        .unwrap();
    drop(conn);
    let second = env.json(&["backup", "--plan", s(&plan), "--json"]);
    let state = checksum(&db);
    let time = |r: &serde_json::Value, field: &str| -> chrono::DateTime<chrono::Utc> {
        r[field].as_str().unwrap().parse().unwrap()
    };
    let until = time(&first, "retain_until");

    assert!(time(&second, "started_at") > time(&first, "started_at"));

    // While the first snapshot's lock holds (the prune's clock injected just
    // before it ends, however long the backups took): out of policy, held by
    // its lock, nothing removed.
    let during = (until - chrono::Duration::milliseconds(1)).to_rfc3339();
    let prune_at = |args: &[&str]| {
        let mut c = env.command();
        c.env(holdfast::clock::NOW_VAR, &during);
        json_of(&c.args(args).output().unwrap())
    };
    let dry = prune_at(&["prune", "--plan", s(&plan), "--dry-run", "--json"]);
    assert_eq!(dry["held_by_lock"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(dry["removed"].as_array().unwrap().len(), 0);
    let real = prune_at(&["prune", "--plan", s(&plan), "--json"]);
    assert_eq!(real["removed"].as_array().unwrap().len(), 0, "{real}");
    assert_eq!(real["refused"], serde_json::json!([]), "{real}");
    assert_eq!(
        env.json(&["snapshots", "--plan", s(&plan), "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // After the lock ends (the server's clock, which is this machine's): dry
    // run removes nothing, the real run removes it.
    while chrono::Utc::now() <= until + chrono::Duration::seconds(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let dry = env.json(&["prune", "--plan", s(&plan), "--dry-run", "--json"]);
    assert_eq!(dry["removed"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(
        env.json(&["snapshots", "--plan", s(&plan), "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let real = env.json(&["prune", "--plan", s(&plan), "--json"]);
    assert_eq!(real["removed"].as_array().unwrap().len(), 1, "{real}");
    assert!(real["packs_removed"].as_u64().unwrap() >= 1, "{real}");
    assert_eq!(real["refused"], serde_json::json!([]), "{real}");
    let snaps = env.json(&["snapshots", "--plan", s(&plan), "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    // What is left verifies (the chain names a pruned snapshot: recorded) and restores.
    let report = env.json(&["verify", "--plan", s(&plan), "--json"]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    let out = env.path("out.db");
    env.ok(&["restore", "--plan", s(&plan), "--to", s(&out)]);
    assert_eq!(checksum(&out), state);
}

/// A server of this test's own, so it can be stopped mid-backup.
struct OwnServer {
    dir: PathBuf,
    port: u16,
}

impl OwnServer {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server")
    }

    fn start(dir: &Path, port: u16) -> OwnServer {
        let out = Command::new(Self::script())
            .args(["start", s(dir)])
            .env("HOLDFAST_S3_PORT", port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/s3-server start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        OwnServer {
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn stop(&self) {
        let out = Command::new(Self::script())
            .args(["stop", s(&self.dir)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", s(&self.dir)])
            .output();
    }
}

#[test]
fn an_upload_cut_off_by_the_server_stopping_leaves_no_snapshot() {
    // A port block of its own: S3 port + 4, each + 10000 for gRPC.
    let port = 21_000 + (std::process::id() % 400) as u16 * 10;
    let state_dir = tempfile::tempdir().unwrap();
    let server = OwnServer::start(state_dir.path(), port);
    let env = Env::on("cutoff", format!("http://127.0.0.1:{}", server.port));
    let db = env.path("app.db");
    make_db(&db, 400_000);
    let plan = env.sqlite_plan(&db);
    env.ok(&["repo", "init", "--plan", s(&plan)]);

    let mut child = env
        .command()
        .args(["backup", "--plan", s(&plan)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the server once the first pack is up, while the backup runs.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw = rt.block_on(env.raw());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        use holdfast::store::Store;
        let packs = rt
            .block_on(raw.list("packs/"))
            .unwrap_or_else(|e| panic!("listing packs/ while the backup runs: {e}"));
        if !packs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup put no pack within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup finished before the cut"
    );
    server.stop();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the backup cannot succeed without its server"
    );
    assert!(stderr.contains("no snapshot was recorded"), "{stderr}");

    // Back up: nothing half-written is visible, and the next backup works.
    let _server = OwnServer::start(state_dir.path(), port);
    // A SeaweedFS just restarted answers 500 until its filer and its volume
    // server are back (seen under CI load: a listing can already work while
    // a read still fails): wait until it serves both, as an operator would.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        use holdfast::store::Store;
        let listed = rt.block_on(raw.list("snapshots/")).map(|_| ());
        match listed.and_then(|()| rt.block_on(raw.get("config")).map(|_| ())) {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the restarted server did not serve a listing and a read within 60 s: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let snaps = env.json(&["snapshots", "--plan", s(&plan), "--json"]);
    assert_eq!(snaps, serde_json::json!([]));
    env.ok(&["backup", "--plan", s(&plan)]);
    let report = env.json(&["verify", "--plan", s(&plan), "--json"]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    let out = env.path("out.db");
    env.ok(&["restore", "--plan", s(&plan), "--to", s(&out)]);
    assert_eq!(checksum(&out), checksum(&db));
}

#[test]
fn with_no_credentials_anywhere_the_error_says_where_they_go_without_the_sdks_noise() {
    let env = Env::new("nocreds");
    let db = env.path("app.db");
    make_db(&db, 1);
    let plan = env.sqlite_plan(&db);
    let home = env.path("home");
    std::fs::create_dir(&home).unwrap();
    // As a newcomer's shell: no AWS_* at all (AWS_EC2_METADATA_DISABLED
    // unset, so the chain asks instance metadata too), an empty HOME, and
    // the default log level.
    let mut cmd = Command::new(common::bin::BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("HOLDFAST_LOG")
        .env("HOME", &home)
        .args(["backup", "--plan", s(&plan)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // A hang guard, not a measurement: the chain must give up on its own.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("holdfast without credentials did not end within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let said = said_by(&out, 4);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: no S3 credentials for s3://{}/prod",
            env.bucket
        )),
        "{said}"
    );
    for hint in [
        "access_key_id",
        "secret_access_key_file",
        "AWS_ACCESS_KEY_ID",
        "set -a; . FILE; set +a",
        "AWS_PROFILE",
        &format!("HOME={}", home.display()),
    ] {
        assert!(stderr.contains(hint), "no {hint:?} in: {said}");
    }
    assert_eq!(
        stderr.lines().count(),
        1,
        "one error line, no SDK warnings or debug dumps: {said}"
    );
    assert!(!stderr.contains("raw: Response"), "{said}");
}

/// A proxy in front of the S3 server that answers the requests a rule
/// matches with the error the rule gives, and passes every other request
/// through byte for byte (one request per connection, so each is seen). The
/// Host header is kept, so request signatures still verify.
struct FaultyProxy {
    port: u16,
}

/// Answers requests whose request line starts with `method` and contains
/// every string in `needles` with HTTP `status` and S3 error `code`.
struct Fault {
    method: &'static str,
    needles: &'static [&'static str],
    status: u16,
    code: &'static str,
    message: &'static str,
    /// Done (with the request line) before the error is answered: what a
    /// lying refusal hides.
    meanwhile: Option<fn(&str)>,
}

impl FaultyProxy {
    fn start(upstream: String, faults: Vec<Fault>) -> FaultyProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = std::sync::Arc::new(faults);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (upstream, faults) = (upstream.clone(), faults.clone());
                std::thread::spawn(move || Self::serve(conn, &upstream, &faults));
            }
        });
        FaultyProxy { port }
    }

    fn serve(mut client: std::net::TcpStream, upstream: &str, faults: &[Fault]) {
        use std::io::{Read, Write};
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let line = text.lines().next().unwrap_or("").to_string();
        if let Some(f) = faults
            .iter()
            .find(|f| line.starts_with(f.method) && f.needles.iter().all(|n| line.contains(n)))
        {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = client.read_exact(&mut body);
            if let Some(act) = f.meanwhile {
                act(&line);
            }
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><RequestId>faulty-proxy</RequestId></Error>",
                f.code, f.message
            );
            let _ = write!(
                client,
                "HTTP/1.1 {} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                f.status,
                xml.len()
            );
            return;
        }
        let Ok(mut up) = std::net::TcpStream::connect(upstream) else {
            return;
        };
        let head = text.replacen("\r\n", "\r\nConnection: close\r\n", 1);
        if up.write_all(head.as_bytes()).is_err() {
            return;
        }
        let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
        let forward = std::thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut u2);
        });
        let _ = std::io::copy(&mut up, &mut client);
        let _ = client.shutdown(std::net::Shutdown::Both);
        let _ = up.shutdown(std::net::Shutdown::Both);
        let _ = forward.join();
    }
}

#[test]
fn doctor_never_passes_when_the_attacks_fail_for_another_reason() {
    let upstream = common::s3_env()
        .endpoint
        .trim_start_matches("http://")
        .to_string();
    // The delete answered 500 (retried by the SDK, then given up), the lock
    // change 403 ExpiredToken: neither is the lock's refusal.
    let proxy = FaultyProxy::start(
        upstream.clone(),
        vec![
            Fault {
                method: "DELETE",
                needles: &["doctor/canary-", "versionId="],
                status: 500,
                code: "InternalError",
                message: "We encountered an internal error. Please try again.",
                meanwhile: None,
            },
            Fault {
                method: "PUT",
                needles: &["doctor/canary-", "retention"],
                status: 403,
                code: "ExpiredToken",
                message: "The provided token has expired.",
                meanwhile: None,
            },
        ],
    );
    let env = Env::on("doctor-faulty", format!("http://127.0.0.1:{}", proxy.port));
    let db = env.path("app.db");
    make_db(&db, 100);
    let plan = env.sqlite_plan(&db);
    env.ok(&["repo", "init", "--plan", s(&plan)]);
    let out = env.run(&["doctor", "--plan", s(&plan)]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(10), "{text}");
    assert!(!text.contains("PASS"), "{text}");
    assert!(
        text.contains("UNKNOWN canary delete refused") && text.contains("InternalError"),
        "{text}"
    );
    assert!(
        text.contains("UNKNOWN canary lock cannot be shortened")
            && text.contains("error: HTTP 403 ExpiredToken: The provided token has expired."),
        "{text}"
    );
    assert!(text.contains("\nUNKNOWN: repository"), "{text}");

    // A malformed request (400 InvalidRequest) on both: unknown too, in --json.
    let proxy = FaultyProxy::start(
        upstream,
        vec![
            Fault {
                method: "DELETE",
                needles: &["doctor/canary-", "versionId="],
                status: 400,
                code: "InvalidRequest",
                message: "Missing required header for this request: Content-MD5",
                meanwhile: None,
            },
            Fault {
                method: "PUT",
                needles: &["doctor/canary-", "retention"],
                status: 400,
                code: "InvalidRequest",
                message: "Bucket is missing Object Lock Configuration",
                meanwhile: None,
            },
        ],
    );
    let env = Env {
        endpoint: format!("http://127.0.0.1:{}", proxy.port),
        ..env
    };
    let plan = env.sqlite_plan(&db);
    let out = env.run(&["doctor", "--plan", s(&plan), "--json"]);
    assert_eq!(out.status.code(), Some(10));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "unknown", "{report}");
    for name in ["canary delete refused", "canary lock cannot be shortened"] {
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert_eq!(check["status"], "unknown", "{check}");
        assert!(
            check["error"]
                .as_str()
                .unwrap()
                .contains("HTTP 400 InvalidRequest"),
            "{check}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_locks_warn_and_a_bypassed_lock_is_named_by_verify() {
    let env = Env::new("governance");
    let db = env.path("app.db");
    make_db(&db, 20_000);
    let plan = env.plan(
        "app",
        &format!("{{type: sqlite, path: {}}}", db.display()),
        "{mode: governance, days: 7}",
        "{keep_last: 24, keep_daily: 7}",
    );
    env.ok(&["repo", "init", "--plan", s(&plan)]);
    // The test server's one identity may bypass governance locks: doctor
    // warns about the mode, and fails the plan on the permission.
    let out = env.run(&["doctor", "--plan", s(&plan), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(9), "{report}");
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report}"))["status"]
            .clone()
    };
    assert_eq!(status("lock mode"), "warn", "{report}");
    assert_eq!(status("canary delete refused"), "pass", "{report}");
    assert_eq!(status("canary lock cannot be shortened"), "pass");
    assert_eq!(status("s3:BypassGovernanceRetention"), "fail");
    assert_eq!(report["verdict"], "fail");

    env.ok(&["backup", "--plan", s(&plan)]);
    let clean = env.json(&["verify", "--plan", s(&plan), "--json"]);
    assert_eq!(clean["problems"], serde_json::json!([]), "{clean}");

    // Whoever holds the bypass shortens a pack's lock to an hour.
    let raw = env.raw().await;
    use holdfast::store::Store;
    let packs = raw.list("packs/").await.unwrap();
    let pack = &packs[0].key;
    let version = raw.versions(pack).await.unwrap()[0].0.clone();
    let before = raw.head(pack).await.unwrap().retention.unwrap();
    let shorter = chrono::Utc::now() + chrono::Duration::hours(1);
    raw.client()
        .put_object_retention()
        .bucket(&env.bucket)
        .key(raw.full_key(pack))
        .version_id(&version)
        .bypass_governance_retention(true)
        .retention(
            aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Governance)
                .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                    shorter.timestamp(),
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let after = raw.head(pack).await.unwrap().retention.unwrap();
    assert!(after.until < before.until, "{before:?} -> {after:?}");

    let out = env.run(&["verify", "--plan", s(&plan), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(5), "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["kind"], "retention_too_short");
    assert_eq!(problems[0]["object"], pack.as_str());
    assert!(
        problems[0]["detail"]
            .as_str()
            .unwrap()
            .contains("locked (governance) until"),
        "{report}"
    );

    // A refusal that lies: the canary's version is deleted (with the bypass
    // these credentials hold) and the answer is the lock's 403 AccessDenied.
    // The read-back finds the canary gone: FAIL, not PASS.
    fn delete_with_bypass(request_line: &str) {
        // DELETE /<bucket>/<key>?versionId=<v>&x-id=DeleteObject HTTP/1.1
        let target = request_line.split(' ').nth(1).unwrap();
        let (path, query) = target.split_once('?').unwrap();
        let (bucket, key) = path.trim_start_matches('/').split_once('/').unwrap();
        let version = query
            .split('&')
            .find_map(|p| p.strip_prefix("versionId="))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = holdfast::store::s3::S3Store::open(common::s3_config(bucket, ""))
                .await
                .unwrap();
            store
                .client()
                .delete_object()
                .bucket(bucket)
                .key(key)
                .version_id(version)
                .bypass_governance_retention(true)
                .send()
                .await
                .unwrap();
        });
    }
    let proxy = FaultyProxy::start(
        common::s3_env()
            .endpoint
            .trim_start_matches("http://")
            .to_string(),
        vec![Fault {
            method: "DELETE",
            needles: &["doctor/canary-", "versionId="],
            status: 403,
            code: "AccessDenied",
            message: "Access Denied.",
            meanwhile: Some(delete_with_bypass),
        }],
    );
    let liar = Env {
        endpoint: format!("http://127.0.0.1:{}", proxy.port),
        ..env
    };
    let plan = liar.plan(
        "app",
        &format!("{{type: sqlite, path: {}}}", db.display()),
        "{mode: governance, days: 7}",
        "{keep_last: 24, keep_daily: 7}",
    );
    let out = liar.run(&["doctor", "--plan", s(&plan), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(9), "{report}");
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "canary delete refused")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "fail", "{report}");
    assert!(
        check["detail"].as_str().unwrap().contains("is GONE")
            && check["error"]
                .as_str()
                .unwrap()
                .contains("403 AccessDenied"),
        "{check}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_reused_by_a_snapshot_kept_longer_gets_its_lock_extended() {
    use holdfast::plan::Tier;
    use holdfast::repository::backup::{backup, BackupOptions};
    use holdfast::store::{LockMode, Retention, Store};
    let store = common::s3_bucket("extend", true).await;
    let repo = holdfast::repository::Repository::open_or_init(
        std::sync::Arc::new(store.clone()),
        &common::bin::test_repo_key(),
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let plan: holdfast::plan::PlanName = serde_json::from_value(serde_json::json!("app")).unwrap();
    let source = || {
        Box::new(common::MemSource {
            files: vec![("app.db".into(), common::data(5, 3_000_000))],
        })
    };
    let whole = |days: i64| Retention {
        mode: LockMode::Compliance,
        until: chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + days * 86_400, 0)
            .unwrap(),
    };
    let opts = |tier: Tier, retention: Retention| BackupOptions {
        compression_level: 3,
        retention: Some(retention),
        tier,
        progress: holdfast::progress::ProgressMode::Quiet,
    };
    // First a snapshot kept briefly (`last`), then the same data as the day's
    // snapshot, kept a week: every pack is reused, and must be locked a week.
    let short = whole(1);
    let first = backup(&repo, &plan, source(), &opts(Tier::Last, short))
        .await
        .unwrap();
    assert!(first.packs_written >= 1);
    let long = whole(7);
    let second = backup(&repo, &plan, source(), &opts(Tier::Daily, long))
        .await
        .unwrap();
    assert_eq!(second.packs_written, 0, "{second:?}");
    assert_eq!(second.packs_reused, first.packs_written);
    let packs = store.list("packs/").await.unwrap();
    let index = store.list("index/").await.unwrap();
    assert!(!packs.is_empty() && !index.is_empty());
    for info in packs.iter().chain(&index) {
        // Read back from the server, not from anything holdfast remembers.
        let full = store.full_key(&info.key);
        let out = store
            .client()
            .get_object_retention()
            .bucket(store.bucket())
            .key(&full)
            .send()
            .await
            .unwrap();
        let until = out.retention().unwrap().retain_until_date().unwrap().secs();
        assert_eq!(
            until,
            long.until.timestamp(),
            "{} is locked until {until}, the daily snapshot needs {}",
            info.key,
            long.until
        );
    }
    assert!(second.locks_extended >= (packs.len() + index.len()) as u64);
    common::assert_verifies(&repo, &plan).await;
}
