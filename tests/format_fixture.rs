//! The repository format, pinned: `tests/fixtures/repo-v2` is a repository
//! written by holdfast at format version 2 (`scripts/make-format-fixture`),
//! encrypted with the key file beside it, and every later build must list,
//! verify and restore it to exactly what `expected.json` says. So must it
//! `repo-v2-m3`, the same format with snapshot manifests version 3 (no
//! whole-file hashes), `repo-v2-m4`, whose manifests name their entries
//! as objects of their own (`entries/`), `repo-v2-m5`, whose manifests
//! also name the packs their chunks are in, `repo-v2-m6`, whose file
//! entries say where each chunk is, and `repo-v2-m7`, whose chunk lists
//! are objects of their own beside the entries' tree. The version 1
//! fixture (unencrypted, unauthenticated) is refused by name. A change made to writer and reader together passes
//! every round-trip test and still fails here, because these bytes were
//! written by the old writer. The fixture is copied to a temporary folder
//! first: nothing here writes under `tests/fixtures`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::bin::{fails, holdfast, json, json_of, s, text};
use common::postgres::{chown_postgres, sql_at, Restored};
use holdfast::ids::Hash256;
use holdfast::repository::source::EntryKind;
use serde_json::Value;

/// Every fixture of repository format 2: manifest versions 2 to 7.
const FIXTURES: [&str; 6] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v2"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v2-m3"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v2-m4"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v2-m5"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v2-m6"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v2-m7"),
];
const FIXTURE_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v1");

/// A private copy of the fixture (plans/ and repo/) and its expected.json.
struct Fixture {
    dir: tempfile::TempDir,
    expected: Value,
}

impl Fixture {
    fn copy_of(fixture: &str) -> Fixture {
        let src = Path::new(fixture);
        let expected: Value =
            serde_json::from_slice(&std::fs::read(src.join("expected.json")).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for sub in ["plans", "repo"] {
            copy_tree(&src.join(sub), &dir.path().join(sub));
        }
        if src.join("repo.key").exists() {
            std::fs::copy(src.join("repo.key"), dir.path().join("repo.key")).unwrap();
        }
        Fixture { dir, expected }
    }

    fn plan(&self, name: &str) -> String {
        s(&self.dir.path().join(format!("plans/{name}.yaml"))).to_string()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn snapshot(&self, plan: &str) -> &str {
        self.expected[plan]["snapshot"].as_str().unwrap()
    }

    /// The snapshot manifest version its writer wrote (2 when unsaid).
    fn manifest_version(&self) -> u64 {
        self.expected["manifest_version"].as_u64().unwrap_or(2)
    }
}

/// A private copy of each format 2 fixture.
fn each_fixture() -> impl Iterator<Item = Fixture> {
    FIXTURES.iter().map(|f| Fixture::copy_of(f))
}

fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
fn the_version_1_fixture_is_refused_naming_its_version() {
    let fx = Fixture::copy_of(FIXTURE_V1);
    assert_eq!(fx.expected["format_version"], 1);
    for plan in ["sqlite", "files", "pg"] {
        let said = fails(&["snapshots", "--plan", &fx.plan(plan)], 4);
        assert!(
            said.contains("has format version 1") && said.contains("reads version 2"),
            "{said}"
        );
    }
}

#[test]
fn every_snapshot_of_each_version_2_fixture_is_listed_and_verifies() {
    for fx in each_fixture() {
        listed_and_verified(&fx);
    }
}

/// prune and keep-locks find what each snapshot needs, whichever manifest
/// version wrote it: from its chunks through the index before version 5,
/// from the packs it names from then. Each plan keeps its one snapshot, so
/// nothing may go, and every object it needs is counted.
#[test]
fn prune_and_keep_locks_keep_every_snapshot_of_each_fixture_whole() {
    for fx in each_fixture() {
        for plan in ["sqlite", "files", "pg"] {
            let v = fx.manifest_version();
            let report = json(&["prune", "--plan", &fx.plan(plan), "--dry-run", "--json"]);
            assert_eq!(
                report["removed"],
                serde_json::json!([]),
                "v{v} {plan}: {report}"
            );
            assert_eq!(report["packs_removed"], 0, "v{v} {plan}: {report}");
            assert_eq!(
                report["kept"].as_array().unwrap().len(),
                1,
                "v{v} {plan}: {report}"
            );
            let locks = json(&[
                "keep-locks",
                "--plan",
                &fx.plan(plan),
                "--dry-run",
                "--json",
            ]);
            assert_eq!(locks["snapshots_kept"], 1, "v{v} {plan}: {locks}");
            // The manifest, the config, the key object, and at least a
            // pack and the index object describing it.
            assert!(
                locks["objects_checked"].as_u64().unwrap() >= 5,
                "v{v} {plan}: {locks}"
            );
        }
    }
}

fn listed_and_verified(fx: &Fixture) {
    assert_eq!(fx.expected["format_version"], 2);
    for (plan, source) in [("sqlite", "sqlite"), ("files", "files"), ("pg", "postgres")] {
        let rows = json(&["snapshots", "--plan", &fx.plan(plan), "--json"]);
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 1, "plan {plan}: {rows:?}");
        assert_eq!(rows[0]["id"], fx.snapshot(plan), "plan {plan}: {rows:?}");
        assert_eq!(rows[0]["source"], source, "plan {plan}: {rows:?}");

        let out = holdfast(&["verify", "--plan", &fx.plan(plan), "--json"]);
        let report = json_of(&out);
        assert_eq!(report["problems"], serde_json::json!([]), "plan {plan}");
        assert_eq!(report["snapshots_checked"], 1, "plan {plan}: {report}");
        assert!(report["chunks_checked"].as_u64().unwrap() > 0, "{report}");
        assert!(
            report["objects_lock_checked"].as_u64().unwrap() > 0,
            "{report}"
        );
        if plan == "pg" {
            assert!(
                report["wal_files_checked"].as_u64().unwrap() >= 2,
                "{report}"
            );
            // The window reaches past T, through the last archived segment.
            let window = &rows[0]["restorable"];
            let at = fx.expected["pg"]["at"].as_str().unwrap();
            assert!(window["from"].as_str().unwrap() < at, "{window} vs {at}");
            assert!(window["to"].as_str().unwrap() > at, "{window} vs {at}");
        }
    }
}

/// Each fixture holds the manifest version it names: whole-file hashes in
/// version 2, none in version 3, entries in an object of their own from
/// version 4, so every read path stays pinned.
#[test]
fn each_fixture_holds_the_manifest_version_it_names() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut seen = Vec::new();
    for fx in each_fixture() {
        let version = fx.manifest_version();
        seen.push(version);
        let key = std::fs::read_to_string(fx.path("repo.key")).unwrap();
        let key =
            holdfast::repository::RepoKey::Passphrase(holdfast::secret::Secret::new(key.trim()));
        rt.block_on(async {
            let store: std::sync::Arc<dyn holdfast::store::Store> = std::sync::Arc::new(
                holdfast::store::local::LocalStore::open(fx.path("repo")).unwrap(),
            );
            let repo = holdfast::repository::Repository::open(store, &key)
                .await
                .unwrap();
            for plan in ["sqlite", "files", "pg"] {
                let plan: holdfast::plan::PlanName =
                    serde_json::from_value(serde_json::json!(plan)).unwrap();
                let snap = repo.find_snapshot(&plan, "latest").await.unwrap();
                let m = repo.load_manifest(&snap).await.unwrap();
                assert_eq!(u64::from(m.version), version, "plan {plan}");
                assert_eq!(m.entries_object.is_some(), version >= 4, "plan {plan}");
                if let Some(r) = &m.entries_object {
                    let stored = fx.path(&format!("repo/objects/{}", r.key));
                    assert_eq!(std::fs::metadata(&stored).unwrap().len(), r.size);
                }
                // From version 7 the chunk lists are objects of their own,
                // and the entries object holds the tree without them.
                assert_eq!(m.chunk_lists.is_some(), version >= 7, "plan {plan}");
                for r in m.chunk_lists.iter().flatten() {
                    let stored = fx.path(&format!("repo/objects/{}", r.key));
                    assert_eq!(std::fs::metadata(&stored).unwrap().len(), r.size);
                }
                if version >= 7 {
                    let tree = repo.load_manifest_tree(&snap).await.unwrap();
                    assert_eq!(tree.entries.len(), m.entries.len(), "plan {plan}");
                    assert!(
                        tree.entries
                            .iter()
                            .all(|e| e.chunks.is_empty() && e.at.is_none()),
                        "plan {plan}"
                    );
                    assert!(!m.chunk_lists.as_ref().unwrap().is_empty(), "plan {plan}");
                }
                // From version 5 the manifest names its packs: exactly those
                // its chunks are in.
                assert_eq!(m.packs.is_some(), version >= 5, "plan {plan}");
                if let Some(packs) = &m.packs {
                    let index = repo.load_index().await.unwrap();
                    let holding: std::collections::BTreeSet<_> = m
                        .entries
                        .iter()
                        .flat_map(|e| &e.chunks)
                        .filter_map(|c| index.get(c).map(|l| l.pack))
                        .collect();
                    assert_eq!(
                        packs
                            .iter()
                            .copied()
                            .collect::<std::collections::BTreeSet<_>>(),
                        holding,
                        "plan {plan}"
                    );
                    assert!(!packs.is_empty(), "plan {plan}");
                }
                assert!(!m.entries.is_empty(), "plan {plan}");
                for e in m.entries.iter().filter(|e| e.kind == EntryKind::File) {
                    assert_eq!(e.sha256.is_some(), version == 2, "{plan}: {}", e.path);
                    assert!(e.size.is_some(), "{plan}: {}", e.path);
                    // From version 6 each file places its chunks, at the
                    // places the index gives them.
                    assert_eq!(e.at.is_some(), version >= 6, "{plan}: {}", e.path);
                    if let Some(placed) = e.placed(m.packs.as_deref().unwrap_or_default()) {
                        let index = repo.load_index().await.unwrap();
                        let placed: Vec<_> = placed.collect();
                        assert_eq!(placed.len(), e.chunks.len(), "{plan}: {}", e.path);
                        for p in placed {
                            assert!(
                                index.candidates(&p.blob.id).any(|l| l.same_place(&p)),
                                "{plan}: {}",
                                e.path
                            );
                        }
                    }
                }
            }
        });
    }
    assert_eq!(seen, [2, 3, 4, 5, 6, 7]);
}

#[test]
fn the_sqlite_snapshot_restores_byte_for_byte_with_its_rows() {
    for fx in each_fixture() {
        sqlite_restored(&fx);
    }
}

fn sqlite_restored(fx: &Fixture) {
    let to = fx.path("restored/app.db");
    let out = holdfast(&[
        "restore",
        "--plan",
        &fx.plan("sqlite"),
        "--snapshot",
        fx.snapshot("sqlite"),
        "--to",
        s(&to),
        "--check",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let want = &fx.expected["sqlite"];
    assert_eq!(
        Hash256::digest(&std::fs::read(&to).unwrap()).to_hex(),
        want["sha256"].as_str().unwrap()
    );
    let conn = rusqlite::Connection::open(&to).unwrap();
    let mut stmt = conn
        .prepare("SELECT id || '|' || note FROM orders ORDER BY id")
        .unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(serde_json::json!(rows), want["rows"]);
}

#[test]
fn the_files_snapshot_restores_every_entry_with_its_mode_time_and_content() {
    for fx in each_fixture() {
        files_restored(&fx);
    }
}

fn files_restored(fx: &Fixture) {
    let to = fx.path("restored");
    let out = holdfast(&[
        "restore",
        "--plan",
        &fx.plan("files"),
        "--snapshot",
        fx.snapshot("files"),
        "--to",
        s(&to),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let want = &fx.expected["files"];
    let mtime = chrono::DateTime::parse_from_rfc3339(want["mtime"].as_str().unwrap())
        .unwrap()
        .timestamp();
    let mut got = Vec::new();
    for e in walkdir::WalkDir::new(&to).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let path = e.path().strip_prefix(&to).unwrap().display().to_string();
        let m = e.path().symlink_metadata().unwrap();
        if !m.is_symlink() {
            assert_eq!(m.mtime(), mtime, "mtime of {path}");
        }
        let mode = format!("{:o}", m.permissions().mode() & 0o7777);
        got.push(if m.is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap();
            serde_json::json!({"path": path, "type": "symlink", "target": s(&target)})
        } else if m.is_dir() {
            serde_json::json!({"path": path, "type": "dir", "mode": mode})
        } else {
            let bytes = std::fs::read(e.path()).unwrap();
            serde_json::json!({"path": path, "type": "file", "mode": mode, "size": bytes.len(),
                               "sha256": Hash256::digest(&bytes).to_hex()})
        });
    }
    assert_eq!(serde_json::json!(got), want["entries"]);
}

#[test]
fn the_postgres_base_backup_restores_to_a_time_inside_its_window_and_starts() {
    for fx in each_fixture() {
        postgres_restored(&fx);
    }
}

fn postgres_restored(fx: &Fixture) {
    chown_postgres(fx.dir.path());
    let want = &fx.expected["pg"];
    let at = want["at"].as_str().unwrap();
    let to = fx.path("restored");
    let port = common::free_port();
    let _restored = Restored { data: to.clone() };
    let report = json_of(&common::postgres::as_postgres(
        common::bin::BIN,
        &[
            "restore",
            "--plan",
            &fx.plan("pg"),
            "--at",
            at,
            "--to",
            s(&to),
            "--start",
            "--port",
            &port.to_string(),
            "--no-archive",
            "--json",
        ],
    ));
    assert_eq!(report["base_backup"], fx.snapshot("pg"), "{report}");
    let rows: Vec<String> = sql_at(port, "SELECT id || '|' || note FROM orders ORDER BY id")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(serde_json::json!(rows), want["rows_at"], "{report}");
    assert_ne!(want["rows_at"], want["rows_latest"]);
}

#[test]
fn the_fixture_is_what_the_writer_left_and_a_damaged_copy_is_refused() {
    // The fixture itself is whole: a flipped byte in the copy fails verify,
    // naming the object, so the test above cannot pass on an empty check.
    for fx in each_fixture() {
        damaged_copy_refused(&fx);
    }
    // From manifest version 4, so is a flipped byte in an entries object.
    let fx = Fixture::copy_of(FIXTURES[2]);
    assert_eq!(fx.manifest_version(), 4);
    let entries = std::fs::read_dir(fx.path("repo/objects/entries/sqlite"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    common::files::flip(&entries, |len| len / 2, 0x01);
    let said = fails(&["verify", "--plan", &fx.plan("sqlite")], 5);
    let key = format!(
        "entries/sqlite/{}",
        entries.file_name().unwrap().to_str().unwrap()
    );
    assert!(said.contains(&key), "{said}");
    let said = fails(
        &[
            "restore",
            "--plan",
            &fx.plan("sqlite"),
            "--to",
            s(&fx.path("restored.db")),
        ],
        5,
    );
    assert!(said.contains(&key), "{said}");
}

fn damaged_copy_refused(fx: &Fixture) {
    let snaps = fx.path("repo/objects/snapshots/sqlite");
    let manifest = std::fs::read_dir(&snaps)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    common::files::flip(&manifest, |len| len / 2, 0x01);
    let said = fails(&["verify", "--plan", &fx.plan("sqlite")], 5);
    let key = format!(
        "snapshots/sqlite/{}",
        manifest.file_name().unwrap().to_str().unwrap()
    );
    assert!(said.contains(&key), "{said}");
}
