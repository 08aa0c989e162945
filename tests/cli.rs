//! The runbook, run: every command through the real binary against real
//! SQLite databases and file trees on the local repository, including the
//! faults an on-call engineer will meet.

mod common;

use common::bin::{command, fails, json, ok, BIN, TEST_KEY};
use common::files::{files_under, flip, set_mode, set_mtime};
use common::{add_rows, checksum, is_root, make_db};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

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

    /// Writes a plan backing up `source_yaml` into `repo/`.
    fn plan(&self, name: &str, source_yaml: &str) -> PathBuf {
        let file = self.path(&format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}\nsource: {source_yaml}\nrepository:\n  url: file://{repo}\nschedule:\n  backup: \"0 * * * *\"\nlock:\n  mode: compliance\n  days: 7\nretention:\n  keep_last: 24\n  keep_daily: 7\n",
                repo = self.path("repo").display()
            ),
        )
        .unwrap();
        file
    }

    fn sqlite_plan(&self, db: &Path) -> PathBuf {
        self.plan("app", &format!("{{type: sqlite, path: {}}}", db.display()))
    }

    fn object(&self, key: &str) -> PathBuf {
        self.path("repo/objects").join(key)
    }

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

#[test]
fn sqlite_back_up_change_restore_each_snapshot_and_verify() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 60_000);
    let plan = env.sqlite_plan(&db);
    let plan = plan.to_str().unwrap();

    let first = json(&["backup", "--plan", plan, "--json"]);
    let state1 = checksum(&db);
    add_rows(&Connection::open(&db).unwrap(), 100);
    let second = json(&["backup", "--plan", plan, "--json"]);
    let state2 = checksum(&db);
    assert!(
        second["new_bytes"].as_u64().unwrap() < first["total_bytes"].as_u64().unwrap() / 2,
        "a small change stores a fraction: {second}"
    );

    let listed = json(&["snapshots", "--plan", plan, "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["previous"], first["snapshot"]);

    let id1 = first["snapshot"].as_str().unwrap();
    let out1 = env.path("restore1.db");
    ok(&[
        "restore",
        "--plan",
        plan,
        "--snapshot",
        &id1[..8],
        "--to",
        out1.to_str().unwrap(),
    ]);
    assert_eq!(
        checksum(&out1),
        state1,
        "first snapshot restores the first state"
    );
    let out2 = env.path("restore2.db");
    ok(&["restore", "--plan", plan, "--to", out2.to_str().unwrap()]);
    assert_eq!(checksum(&out2), state2, "latest restores the latest state");

    let v = json(&["verify", "--plan", plan, "--json"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["snapshots_checked"], 2);

    // Restore refuses a non-empty target, and --force replaces it.
    let msg = fails(
        &["restore", "--plan", plan, "--to", out1.to_str().unwrap()],
        8,
    );
    assert!(
        msg.contains("not empty") && msg.contains("restore1.db"),
        "{msg}"
    );
    ok(&[
        "restore",
        "--plan",
        plan,
        "--to",
        out1.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(checksum(&out1), state2);
}

#[test]
fn files_tree_round_trip_keeps_modes_times_links_and_empties() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    std::fs::create_dir_all(src.join("drop")).unwrap();
    std::fs::write(src.join("a/b/data.bin"), common::data(9, 3_000_000)).unwrap();
    std::fs::write(src.join("a/secret"), b"top").unwrap();
    std::fs::write(src.join("a/tool"), b"#!/bin/sh\n").unwrap();
    std::fs::write(src.join("drop/note"), b"left here").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("skip.log"), b"noise").unwrap();
    std::os::unix::fs::symlink("a/b/data.bin", src.join("link")).unwrap();
    // Files, then directories (a directory's mtime moves when an entry is
    // created in it, so these come last): setuid, setgid and sticky bits
    // included, each with its own time.
    let modes: [(&str, u32, i64); 7] = [
        ("a/secret", 0o600, 1_600_000_000),
        ("a/tool", 0o4755, 1_600_000_100),
        ("a/b", 0o2750, 1_600_000_200),
        ("a", 0o700, 1_600_000_300),
        ("empty-dir", 0o555, 1_600_000_400),
        ("drop", 0o1777, 1_600_000_500),
        ("drop/note", 0o640, 1_600_000_600),
    ];
    for (path, mode, secs) in modes {
        set_mode(&src.join(path), mode);
        set_mtime(&src.join(path), secs, 123);
    }
    let plan = env.plan(
        "tree",
        &format!(
            "{{type: files, path: {}, exclude: [\"*.log\"]}}",
            src.display()
        ),
    );
    let plan = plan.to_str().unwrap();

    ok(&["backup", "--plan", plan]);
    let out = env.path("out");
    ok(&["restore", "--plan", plan, "--to", out.to_str().unwrap()]);

    assert_eq!(
        std::fs::read(out.join("a/b/data.bin")).unwrap(),
        common::data(9, 3_000_000)
    );
    assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
    assert!(out.join("empty-dir").is_dir());
    assert!(
        !out.join("skip.log").exists(),
        "excluded files are not backed up"
    );
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("a/b/data.bin")
    );
    // setuid and setgid come back only when asked; the sticky bit always.
    for (path, mode, secs) in modes {
        let m = std::fs::symlink_metadata(out.join(path)).unwrap();
        assert_eq!(
            (m.permissions().mode() & 0o7777, m.mtime(), m.mtime_nsec()),
            (mode & 0o1777, secs, 123),
            "mode and mtime of {path}"
        );
    }
    let kept = env.path("kept");
    ok(&[
        "restore",
        "--plan",
        plan,
        "--to",
        kept.to_str().unwrap(),
        "--keep-setid-bits",
    ]);
    for (path, mode, secs) in modes {
        let m = std::fs::symlink_metadata(kept.join(path)).unwrap();
        assert_eq!(
            (m.permissions().mode() & 0o7777, m.mtime(), m.mtime_nsec()),
            (mode, secs, 123),
            "mode and mtime of {path} with --keep-setid-bits"
        );
    }
}

#[test]
fn bad_plans_and_missing_sources_fail_with_the_thing_at_fault_named() {
    let env = Env::new();
    let bad = env.path("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\nsource: {type: sqlite, path: a.db}\nbogus: 1\n",
    )
    .unwrap();
    let msg = fails(&["plan", "check", bad.to_str().unwrap()], 3);
    assert!(msg.contains("bad.yaml") && msg.contains("bogus"), "{msg}");

    let missing = env.sqlite_plan(&env.path("nowhere.db"));
    let msg = fails(&["backup", "--plan", missing.to_str().unwrap()], 7);
    assert!(msg.contains("nowhere.db"), "{msg}");
    assert!(env.keys("snapshots").is_empty());
}

#[test]
fn an_unreadable_repository_is_named() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 10);
    let plan = env.sqlite_plan(&db);
    // The repository path is a plain file, not a directory.
    std::fs::write(env.path("repo"), b"not a repository").unwrap();
    let msg = fails(&["backup", "--plan", plan.to_str().unwrap()], 4);
    assert!(msg.contains(env.path("repo").to_str().unwrap()), "{msg}");
    let msg = fails(&["snapshots", "--plan", plan.to_str().unwrap()], 4);
    assert!(msg.contains("repo"), "{msg}");
}

#[test]
fn corrupt_missing_and_truncated_objects_are_named_never_restored() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 200_000);
    let plan = env.sqlite_plan(&db);
    let plan = plan.to_str().unwrap();
    let snap = json(&["backup", "--plan", plan, "--json"]);
    let short = &snap["snapshot"].as_str().unwrap()[..8];
    let packs = env.keys("packs");
    assert!(packs.len() >= 2, "test needs two packs: {packs:?}");
    let out = env.path("out.db");
    let out_s = out.to_str().unwrap();

    // A flipped byte in one pack.
    flip(&env.object(&packs[0]), |len| len / 2, 0x01);
    let msg = fails(&["verify", "--plan", plan], 5);
    assert!(msg.contains(&packs[0]) && msg.contains(short), "{msg}");
    let msg = fails(&["restore", "--plan", plan, "--to", out_s], 5);
    assert!(msg.contains(&packs[0]), "{msg}");
    assert!(!out.exists(), "no file is written from a corrupt pack");

    // A missing pack.
    std::fs::remove_file(env.object(&packs[1])).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&fails(&["verify", "--plan", plan, "--json"], 5)).unwrap();
    let named: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["object"].as_str().unwrap())
        .collect();
    assert!(
        named.contains(&packs[0].as_str()) && named.contains(&packs[1].as_str()),
        "{v}"
    );
    let missing = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["object"] == packs[1].as_str())
        .unwrap();
    assert_eq!(missing["kind"], "missing");

    // A truncated manifest.
    let manifest = env.keys("snapshots").pop().unwrap();
    let path = env.object(&manifest);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = fails(&["verify", "--plan", plan], 5);
    assert!(
        msg.contains(&manifest) && msg.contains("truncated"),
        "{msg}"
    );
    let msg = fails(&["restore", "--plan", plan, "--to", out_s], 5);
    assert!(msg.contains(&manifest), "{msg}");
    let msg = fails(&["snapshots", "--plan", plan], 5);
    assert!(
        msg.contains(&manifest) && msg.contains("UNREADABLE"),
        "{msg}"
    );
    assert!(!out.exists());
}

#[test]
fn a_backup_killed_mid_way_leaves_no_snapshot_and_the_next_one_succeeds() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 150_000);
    let plan = env.sqlite_plan(&db);
    let plan_s = plan.to_str().unwrap();
    ok(&["backup", "--plan", plan_s]);
    // Enough new data for several packs, so the kill lands mid-way.
    add_rows(&Connection::open(&db).unwrap(), 400_000);

    let mut child = command()
        .args(["backup", "--plan", plan_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let before = env.keys("packs").len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.keys("packs").len() == before {
        assert!(Instant::now() < deadline, "backup wrote no pack within 60s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let listed = json(&["snapshots", "--plan", plan_s, "--json"]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "the killed backup is not listed"
    );
    ok(&["verify", "--plan", plan_s]);

    ok(&["backup", "--plan", plan_s]);
    let state = checksum(&db);
    let out = env.path("after-kill.db");
    ok(&["restore", "--plan", plan_s, "--to", out.to_str().unwrap()]);
    assert_eq!(checksum(&out), state);
    ok(&["verify", "--plan", plan_s]);
}

#[test]
fn two_backups_of_one_plan_at_once_one_fails_clearly() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 100_000);
    let plan = env.sqlite_plan(&db);
    let plan_s = plan.to_str().unwrap();
    ok(&["backup", "--plan", plan_s]); // creates the repository
    let spawn = || {
        command()
            .args(["backup", "--plan", plan_s])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = [a.status.code(), b.status.code()];
    if codes == [Some(0), Some(0)] {
        // The first finished before the second started: both are whole snapshots.
        assert_eq!(
            json(&["snapshots", "--plan", plan_s, "--json"])
                .as_array()
                .unwrap()
                .len(),
            3
        );
    } else {
        assert!(
            codes.contains(&Some(0)) && codes.contains(&Some(6)),
            "{codes:?}"
        );
        let loser = if a.status.code() == Some(6) { &a } else { &b };
        let msg = String::from_utf8_lossy(&loser.stderr);
        assert!(
            msg.contains("another backup of plan app is running"),
            "{msg}"
        );
        assert_eq!(
            json(&["snapshots", "--plan", plan_s, "--json"])
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    ok(&["verify", "--plan", plan_s]);
}

/// holdfast as an unprivileged user: as `nobody` when the tests run as root
/// (as CI does), as ourselves otherwise.
fn unprivileged() -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN]);
        c.env("HOLDFAST_LOG", "warn").env("HOLDFAST_KEY", TEST_KEY);
        c
    } else {
        command()
    }
}

/// Makes the test's files readable by `nobody`.
fn open_to_all(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
    {
        let mode = if e.file_type().is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn restore_into_a_folder_without_permission_fails_naming_it() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 20_000);
    let plan = env.sqlite_plan(&db);
    let plan_s = plan.to_str().unwrap();
    ok(&["backup", "--plan", plan_s]);
    open_to_all(env.dir.path());
    // A folder nobody may write to (its owner neither, unless root).
    std::fs::create_dir(env.path("locked")).unwrap();
    set_mode(&env.path("locked"), 0o555);
    let target = env.path("locked/out.db");
    let out = unprivileged()
        .args(["restore", "--plan", plan_s, "--to"])
        .arg(&target)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{msg}");
    assert!(
        msg.contains("locked") && msg.to_lowercase().contains("permission"),
        "{msg}"
    );
    assert!(!target.exists());
}

#[test]
fn restore_onto_a_full_filesystem_fails_and_leaves_nothing() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 20_000);
    let plan = env.sqlite_plan(&db);
    let plan_s = plan.to_str().unwrap();
    ok(&["backup", "--plan", plan_s]);
    // A 1 MiB tmpfs in a mount namespace of the restore's own (a user
    // namespace too when not root), gone when it ends; the listing is taken
    // inside it.
    let small = env.path("small");
    std::fs::create_dir(&small).unwrap();
    let mut unshare = Command::new("unshare");
    unshare.env("HOLDFAST_KEY", TEST_KEY);
    if !is_root() {
        unshare.arg("--map-root-user");
    }
    let out = unshare
        .args(["--mount", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=1m tmpfs \"$1\" || exit 99; \
             HOLDFAST_LOG=warn \"$2\" restore --plan \"$3\" --to \"$1/out.db\"; rc=$?; \
             echo \"listing: $(ls -A \"$1\")\"; exit $rc",
        )
        .args(["sh", small.to_str().unwrap(), BIN, plan_s])
        .output()
        .unwrap();
    let msg = common::bin::text(&out);
    assert_eq!(out.status.code(), Some(8), "{msg}");
    assert!(msg.contains("No space left"), "{msg}");
    assert!(
        msg.contains("listing: \n"),
        "no partial file or temp path left: {msg}"
    );
}

#[test]
fn unchanged_files_are_not_reread_but_a_rewrite_that_keeps_size_and_mtime_is_caught() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), common::data(3, 5_000_000)).unwrap();
    std::fs::write(src.join("config"), b"mode=primary").unwrap();
    let plan = env.plan("tree", &format!("{{type: files, path: {}}}", src.display()));
    let plan = plan.to_str().unwrap();
    let first = json(&["backup", "--plan", plan, "--json"]);
    assert_eq!(first["bytes_read"], 5_000_012, "{first}");

    // Same size, same mtime, different bytes: only the change time tells.
    let mtime = filetime::FileTime::from_last_modification_time(
        &std::fs::metadata(src.join("config")).unwrap(),
    );
    std::fs::write(src.join("config"), b"mode=REPLICA").unwrap();
    filetime::set_file_mtime(src.join("config"), mtime).unwrap();
    let second = json(&["backup", "--plan", plan, "--json"]);
    assert_eq!(
        second["bytes_read"], 12,
        "only the rewritten file is read again, not big.bin: {second}"
    );
    assert!(
        second["new_bytes"].as_u64().unwrap() <= 12,
        "only the rewritten file is new: {second}"
    );
    assert_eq!(second["total_bytes"], 5_000_012, "{second}");

    let out = env.path("out");
    ok(&["restore", "--plan", plan, "--to", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("config")).unwrap(), b"mode=REPLICA");
    assert_eq!(
        std::fs::read(out.join("big.bin")).unwrap(),
        common::data(3, 5_000_000)
    );
    let v = json(&["verify", "--plan", plan, "--json"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
}

#[test]
fn a_prune_never_runs_beside_a_backup_of_another_plan_sharing_the_repository() {
    use holdfast::store::{local::LocalStore, LockKind, Store};
    // Two plans, one repository: their snapshots share packs.
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 5_000);
    let app = env.sqlite_plan(&db);
    let app = app.to_str().unwrap();
    std::fs::create_dir(env.path("tree")).unwrap();
    std::fs::write(env.path("tree/a.txt"), "shared by nobody").unwrap();
    let other = env.plan(
        "other",
        &format!("{{type: files, path: {}}}", env.path("tree").display()),
    );
    let other = other.to_str().unwrap();
    ok(&["backup", "--plan", app]);
    ok(&["backup", "--plan", other]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = LocalStore::open(env.path("repo")).unwrap();
    // A backup of `other` is running (it holds the repository shared): a
    // prune of `app` must not decide which packs are dead under it.
    let backup_running = rt
        .block_on(store.try_lock("repository", LockKind::Shared))
        .unwrap();
    let msg = fails(&["prune", "--plan", app], 6);
    assert!(msg.contains("lock `repository`"), "{msg}");
    drop(backup_running);

    // A prune is running (it holds the repository alone): a backup of the
    // other plan waits for another run instead of reusing packs it deletes.
    let prune_running = rt
        .block_on(store.try_lock("repository", LockKind::Exclusive))
        .unwrap();
    let msg = fails(&["backup", "--plan", other], 6);
    assert!(
        msg.contains("a prune is running in the repository"),
        "{msg}"
    );
    drop(prune_running);
    assert_eq!(
        json(&["snapshots", "--plan", other, "--json"])
            .as_array()
            .unwrap()
            .len(),
        1,
        "the refused backup recorded nothing"
    );

    ok(&["backup", "--plan", other]);
    ok(&["prune", "--plan", app]);
    ok(&["verify", "--plan", other]);
}

#[test]
fn a_panic_in_wal_fetch_stops_recovery_instead_of_ending_it() {
    // PostgreSQL reads 101 (Rust's panic exit) as "not in the archive" and
    // would promote early; anything above 125 stops recovery.
    let env = Env::new();
    let plan = env.plan("pg", "{type: postgres, host: 127.0.0.1}");
    let out = command()
        .args(["wal-fetch", "--plan", plan.to_str().unwrap()])
        .args([
            "000000010000000000000003",
            "/nonexistent/pg_wal/RECOVERYXLOG",
        ])
        .env("HOLDFAST_FAULT", "panic-in-wal-fetch")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("fault injected"));
}

#[test]
fn a_reader_that_stops_early_ends_the_listing_quietly() {
    // `holdfast snapshots | head -1`: the pipe closes under the listing.
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 2_000);
    let plan = env.sqlite_plan(&db);
    let plan = plan.to_str().unwrap();
    for _ in 0..3 {
        ok(&["backup", "--plan", plan]);
    }
    for args in [
        vec!["snapshots", "--plan", plan],
        vec!["snapshots", "--plan", plan, "--json"],
    ] {
        let mut child = command()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before the first line
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_missing_plan_is_named_with_its_cause_once_and_wal_push_says_unable_to_archive() {
    let env = Env::new();
    let missing = env.path("pg.yml");
    let msg = fails(&["snapshots", "--plan", missing.to_str().unwrap()], 3);
    assert!(
        msg.contains(&format!("unable to read plan {}", missing.display())),
        "{msg}"
    );
    assert_eq!(
        msg.matches("No such file or directory").count(),
        1,
        "the cause is said once: {msg}"
    );
    // In the server log, runbook section 9 says to look for `unable to archive`.
    let wal = "pg_wal/000000010000000000000003";
    let msg = fails(&["wal-push", "--plan", missing.to_str().unwrap(), wal], 3);
    assert!(
        msg.starts_with(&format!("error: unable to archive {wal}")) && msg.contains("pg.yml"),
        "{msg}"
    );
    assert_eq!(msg.matches("No such file or directory").count(), 1, "{msg}");
    // A plan that does not archive WAL: the same first words.
    let files = env.plan(
        "f",
        &format!("{{type: files, path: {}}}", env.path("").display()),
    );
    let msg = fails(&["wal-push", "--plan", files.to_str().unwrap(), wal], 3);
    assert!(
        msg.starts_with(&format!("error: unable to archive {wal}"))
            && msg.contains("does not archive WAL"),
        "{msg}"
    );
}

#[test]
fn restore_at_takes_a_time_as_psql_prints_it_and_a_bare_time_in_the_plans_timezone() {
    let env = Env::new();
    std::fs::create_dir(env.path("repo")).unwrap();
    let plan = env.path("pg.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: pg\nsource: {{type: postgres, host: 127.0.0.1, port: 5432, user: postgres}}\nrepository: {{url: file://{}}}\nschedule: {{backup: '0 1 * * *', timezone: Europe/Berlin}}\nlock: {{mode: compliance, days: 7}}\nretention: {{keep_last: 3}}\n",
            env.path("repo").display()
        ),
    )
    .unwrap();
    let to = env.path("restored");
    let restore = |at: &str| {
        command()
            .args(["restore", "--plan", plan.to_str().unwrap(), "--to"])
            .arg(&to)
            .args(["--at", at])
            .output()
            .unwrap()
    };
    // The time is read; the restore then stops at the empty repository (exit 4).
    for at in [
        "2026-12-01 23:50:36+00",
        "2026-12-01 23:50:36.123456+05:30",
        "2026-12-01 23:50:36.123 UTC",
    ] {
        let out = restore(at);
        let said = common::bin::said_by(&out, 4);
        assert!(said.contains("no holdfast repository"), "{at}: {said}");
    }
    let said = common::bin::said_by(&restore("2026-12-01 23:50:36"), 4);
    assert!(
        said.contains("note: --at \"2026-12-01 23:50:36\" has no zone: read in the plan's timezone Europe/Berlin (schedule.timezone) as +01:00, i.e. 2026-12-01T22:50:36Z"),
        "{said}"
    );
    let said = common::bin::said_by(&restore("2026-03-29 02:30"), 2);
    assert!(
        said.contains("2026-03-29T02:30:00+01:00 (2026-03-29T01:30:00Z) or 2026-03-29T02:30:00+02:00 (2026-03-29T00:30:00Z)"),
        "{said}"
    );
    let said = common::bin::said_by(&restore("yesterday 18:55"), 2);
    assert!(
        said.contains("--at \"yesterday 18:55\" is not a time")
            && said.contains("2026-02-23 18:55:59.123456+00"),
        "{said}"
    );
    assert!(!to.exists());
}
