//! A restore writes only inside its target, whatever the repository says.
//!
//! Each test is an attack by an insider who holds the bucket's write
//! credentials: back up a real tree, then add a well-formed manifest through
//! the repository's own API (chained to the real head, as a forger would)
//! whose entries try to reach outside the target, and run `holdfast restore`
//! on it as on-call would. The tests run as root, so a write that escaped
//! would succeed: they check that nothing landed outside. The last one does
//! the same to a PostgreSQL base backup, restored as the `postgres` user.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Duration;
use common::bin::{command, fails, ok, s, text};
use common::files::{files_under, set_mode};
use common::postgres::{chown_postgres, Cluster};
use holdfast::ids::Hash256;
use holdfast::plan::PlanName;
use holdfast::repository::source::EntryKind;
use holdfast::repository::{ManifestEntry, Repository};
use holdfast::store::{local::LocalStore, Store};

/// Exit code of a restore refused because the snapshot cannot be trusted.
const VERIFY: i32 = 5;

struct Env {
    dir: tempfile::TempDir,
    /// The repository is `encryption: none`.
    plain: bool,
}

impl Env {
    /// A files plan over `src/` (a small real tree), backed up once into an
    /// encrypted repository.
    fn backed_up() -> Env {
        Env::backed_up_as(false)
    }

    /// [`Env::backed_up`], into an `encryption: none` repository when `plain`.
    fn backed_up_as(plain: bool) -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            plain,
        };
        let src = env.path("src");
        std::fs::create_dir_all(src.join("app")).unwrap();
        std::fs::write(src.join("app/payload"), b"* * * * * root /tmp/evil\n").unwrap();
        std::fs::write(src.join("app/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        set_mode(&src.join("app/tool"), 0o755);
        std::fs::write(
            env.path("plan.yaml"),
            format!(
                "name: tree\nsource: {{type: files, path: {}}}\nrepository:\n  url: file://{}\n{}schedule:\n  backup: \"0 * * * *\"\nlock: {{mode: compliance, days: 7}}\nretention: {{keep_last: 24}}\n",
                src.display(),
                env.path("repo").display(),
                if plain { "  encryption: none\n" } else { "" }
            ),
        )
        .unwrap();
        ok(&["backup", "--plan", &env.plan()]);
        // What the attacks must not touch.
        std::fs::create_dir(env.path("outside")).unwrap();
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn plan(&self) -> String {
        s(&self.path("plan.yaml")).to_string()
    }

    fn forge(&self, edit: impl FnOnce(&mut Vec<ManifestEntry>)) -> (String, String) {
        let key = if self.plain {
            holdfast::repository::RepoKey::Unencrypted
        } else {
            common::bin::test_repo_key()
        };
        forge_with(&self.path("repo"), "tree", &key, edit)
    }

    fn restore(&self, snapshot: &str, to: &Path, extra: &[&str], code: i32) -> String {
        let plan = self.plan();
        let mut args = vec![
            "restore",
            "--plan",
            &plan,
            "--snapshot",
            snapshot,
            "--to",
            to.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fails(&args, code)
    }

    /// Nothing under `outside/`, and nothing but `names` beside the target.
    fn assert_untouched(&self, names: &[&str]) {
        assert_eq!(files_under(&self.path("outside")), Vec::<PathBuf>::new());
        let mut beside: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        beside.sort();
        let mut want: Vec<String> = ["outside", "plan.yaml", "repo", "src"]
            .iter()
            .chain(names)
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(beside, want, "no temporary or escaped path left behind");
    }
}

/// Adds a manifest made from the plan's real (first) backup with `edit`
/// applied to its entries, chained to the newest snapshot and dated after it;
/// returns its key and short id.
fn forge(
    repo_dir: &Path,
    plan: &str,
    edit: impl FnOnce(&mut Vec<ManifestEntry>),
) -> (String, String) {
    forge_with(repo_dir, plan, &common::bin::test_repo_key(), edit)
}

/// [`forge`] in a repository opened with `key`.
fn forge_with(
    repo_dir: &Path,
    plan: &str,
    key: &holdfast::repository::RepoKey,
    edit: impl FnOnce(&mut Vec<ManifestEntry>),
) -> (String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(LocalStore::open(repo_dir.to_path_buf()).unwrap());
        let repo = Repository::open(store, key).await.unwrap();
        let plan: PlanName = serde_json::from_value(serde_json::json!(plan)).unwrap();
        let snaps = repo.list_snapshots(&plan).await.unwrap();
        // Made from the real backup's entries, chained to the newest snapshot
        // (earlier forgeries included) so it is consistent with its key, its
        // time and the hash chain: what these tests attack is the restore's
        // confinement, not the checks that reject inconsistent manifests.
        let real = &snaps[0];
        let mut m = repo.load_manifest(real).await.unwrap();
        edit(&mut m.entries);
        m.previous = Some(snaps.last().unwrap().id);
        m.started_at = snaps.last().unwrap().started_at + Duration::seconds(1);
        m.finished_at = m.started_at;
        // Written as a backup writes it: the edited entries as an object
        // of their own, then the manifest naming it.
        let retention = m.retention;
        let (key, id) = repo
            .put_manifest(m, retention, || async { Ok(()) })
            .await
            .unwrap();
        (key, id.short())
    })
}

/// The real `app/payload` entry, moved to `path`.
fn payload_at(entries: &[ManifestEntry], path: &str) -> ManifestEntry {
    let mut e = entries
        .iter()
        .find(|e| e.path == "app/payload")
        .unwrap()
        .clone();
    e.path = path.into();
    e
}

fn link(path: &str, target: &Path) -> ManifestEntry {
    ManifestEntry {
        path: path.into(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        mtime_ns: None,
        size: None,
        sha256: None,
        chunks: Vec::new(),
        target: Some(target.to_str().unwrap().into()),
        stamp: None,
        file_id: None,
        at: None,
    }
}

#[test]
fn a_symlink_entry_cannot_carry_a_later_file_outside_the_target() {
    let env = Env::backed_up();
    let outside = env.path("outside");
    // `etc -> <outside>`, then `etc/cron.d/` and `etc/cron.d/x`: the
    // classic escape.
    let (key, id) = env.forge(|entries| {
        let file = payload_at(entries, "etc/cron.d/x");
        let mut dir = entries.iter().find(|e| e.path == "app").unwrap().clone();
        dir.path = "etc/cron.d".into();
        entries.push(link("etc", &outside));
        entries.push(dir);
        entries.push(file);
    });
    let out = env.path("out");
    let msg = env.restore(&id, &out, &[], VERIFY);
    assert!(
        msg.contains("`etc/cron.d`") && msg.contains("under `etc`") && msg.contains("symlink"),
        "{msg}"
    );
    assert!(msg.contains(&key), "names the manifest: {msg}");
    assert!(!out.exists());
    env.assert_untouched(&[]);

    // The link listed after the file it would carry: caught all the same.
    let (_, id) = env.forge(|entries| {
        let file = payload_at(entries, "var/x");
        entries.push(file);
        entries.push(link("var", &outside));
    });
    let msg = env.restore(&id, &out, &[], VERIFY);
    assert!(msg.contains("`var/x`") && msg.contains("`var`"), "{msg}");
    env.assert_untouched(&[]);

    // A link alone is restored as a link, pointing where it says, and
    // nothing is written through it.
    let (_, id) = env.forge(|entries| entries.push(link("etc", &outside)));
    ok(&[
        "restore",
        "--plan",
        &env.plan(),
        "--snapshot",
        &id,
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_link(out.join("etc")).unwrap(), outside);
    assert_eq!(
        std::fs::read(out.join("app/payload")).unwrap(),
        b"* * * * * root /tmp/evil\n"
    );
    env.assert_untouched(&["out"]);
}

#[test]
fn dot_dot_and_absolute_entries_are_refused_by_name() {
    let env = Env::backed_up();
    let out = env.path("out");
    let escape = env.path("outside/escape");
    for path in [
        "../escape".to_string(),
        "app/../../outside/escape".to_string(),
        escape.to_str().unwrap().to_string(),
    ] {
        let (key, id) = env.forge(|entries| {
            let file = payload_at(entries, &path);
            entries.push(file);
        });
        let msg = env.restore(&id, &out, &[], VERIFY);
        assert!(msg.contains(&format!("`{path}`")), "{path}: {msg}");
        assert!(msg.contains(&key), "names the manifest: {msg}");
        let why = if path.starts_with('/') {
            "absolute"
        } else {
            "`..`"
        };
        assert!(msg.contains(why), "{path}: {msg}");
        assert!(!out.exists());
        assert!(!env.path("escape").exists());
        env.assert_untouched(&[]);
    }
}

#[test]
fn a_setuid_file_is_restored_without_the_bit_unless_asked() {
    let env = Env::backed_up();
    // The real `app/tool`, made setuid root by the forger; its directory setgid.
    let (_, id) = env.forge(|entries| {
        for e in entries.iter_mut() {
            match e.path.as_str() {
                "app/tool" => e.mode = 0o4755,
                "app" => e.mode = 0o2755,
                _ => {}
            }
        }
    });
    let out = env.path("out");
    let restored = command()
        .args(["restore", "--plan", &env.plan(), "--snapshot", &id, "--to"])
        .arg(&out)
        .output()
        .unwrap();
    let msg = text(&restored);
    assert!(restored.status.success(), "{msg}");
    assert!(
        msg.contains("--keep-setid-bits") && msg.contains("2 entries"),
        "says which bits were dropped: {msg}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&out.join("app/tool")), 0o755);
    assert_eq!(mode(&out.join("app")), 0o755);

    let kept = env.path("kept");
    ok(&[
        "restore",
        "--plan",
        &env.plan(),
        "--snapshot",
        &id,
        "--to",
        kept.to_str().unwrap(),
        "--keep-setid-bits",
    ]);
    assert_eq!(mode(&kept.join("app/tool")), 0o4755);
    assert_eq!(mode(&kept.join("app")), 0o2755);
}

/// Under `encryption: none` the whole-file SHA-256 is the restore's content
/// check. (In an encrypted repository each chunk's tag is, and a manifest
/// whose recorded hash disagrees with its authentic chunks can only come
/// from the key's holder or a writer's bug: `verify` names it, below.)
#[test]
fn a_file_failing_its_content_check_is_never_left_with_its_recorded_mode() {
    let env = Env::backed_up_as(true);
    // Real chunks, a recorded hash they do not match, and a setuid mode.
    let (_, id) = env.forge(|entries| {
        let e = entries.iter_mut().find(|e| e.path == "app/tool").unwrap();
        e.mode = 0o4755;
        e.sha256 = Some(Hash256::digest(b"something else"));
    });
    let out = env.path("out");
    let msg = env.restore(&id, &out, &["--keep-setid-bits"], VERIFY);
    assert!(
        msg.contains("app/tool") && msg.contains("does not match its snapshot"),
        "{msg}"
    );
    assert!(!out.exists());
    env.assert_untouched(&[]);

    // Without a whole-file hash (manifest version 3) each chunk is checked
    // against its id, and the recorded size against the chunks: a size
    // the chunks do not add up to fails the same way (an entry without
    // chunk places, read through the index).
    let (_, id) = env.forge(|entries| {
        let e = entries.iter_mut().find(|e| e.path == "app/tool").unwrap();
        e.mode = 0o4755;
        e.sha256 = None;
        e.at = None;
        e.size = e.size.map(|n| n + 1);
    });
    let msg = env.restore(&id, &out, &["--keep-setid-bits"], VERIFY);
    assert!(
        msg.contains("app/tool") && msg.contains("its chunks hold"),
        "{msg}"
    );
    assert!(!out.exists());
    env.assert_untouched(&[]);

    // With its chunk places (manifest version 6), the places must add up
    // to the size too: refused as the entries object is read.
    let (_, id) = env.forge(|entries| {
        let e = entries.iter_mut().find(|e| e.path == "app/tool").unwrap();
        e.mode = 0o4755;
        e.size = e.size.map(|n| n + 1);
    });
    let msg = env.restore(&id, &out, &["--keep-setid-bits"], VERIFY);
    assert!(
        msg.contains("\"app/tool\"") && msg.contains("its places hold 18 bytes, its size is 19"),
        "{msg}"
    );
    assert!(!out.exists());
    env.assert_untouched(&[]);

    // A file entry with no size cannot be checked: refused up front.
    let (key, id) = env.forge(|entries| {
        let e = entries.iter_mut().find(|e| e.path == "app/tool").unwrap();
        e.mode = 0o4755;
        e.size = None;
    });
    let msg = env.restore(&id, &out, &["--keep-setid-bits"], VERIFY);
    assert!(
        msg.contains("`app/tool`") && msg.contains("without a size") && msg.contains(&key),
        "{msg}"
    );
    env.assert_untouched(&[]);
}

/// A file without a whole-file hash (every snapshot since manifest
/// version 3) whose chunks do not add up to its recorded size is named by
/// `verify`, in both modes, without reading the file again.
#[test]
fn verify_names_a_file_whose_chunks_do_not_add_up_to_its_size() {
    for plain in [false, true] {
        let env = Env::backed_up_as(plain);
        let (key, _) = env.forge(|entries| {
            let e = entries.iter_mut().find(|e| e.path == "app/tool").unwrap();
            assert_eq!(e.sha256, None, "a version 3 manifest records no file hash");
            // Without chunk places: with them, reading the entries refuses
            // the size already (above).
            e.at = None;
            e.size = e.size.map(|n| n - 1);
        });
        let msg = fails(&["verify", "--plan", &env.plan()], VERIFY);
        assert!(
            msg.contains(&key)
                && msg.contains("app/tool")
                && msg.contains("its chunks hold 18 bytes, the manifest says 17"),
            "{msg}"
        );
    }
}

/// In an encrypted repository a manifest whose recorded file hash disagrees
/// with its (authentic) chunks is found by `verify`, which compares
/// whole-file hashes in both modes.
#[test]
fn in_an_encrypted_repository_verify_names_a_file_whose_recorded_hash_disagrees() {
    let env = Env::backed_up();
    let (key, _) = env.forge(|entries| {
        let e = entries.iter_mut().find(|e| e.path == "app/tool").unwrap();
        e.sha256 = Some(Hash256::digest(b"something else"));
    });
    let msg = fails(&["verify", "--plan", &env.plan()], VERIFY);
    assert!(
        msg.contains(&key)
            && msg.contains("app/tool")
            && msg.contains("does not match its snapshot"),
        "{msg}"
    );
}

/// PostgreSQL: the recovery set-up writes into the restored data directory
/// (the spool's move into `pg_wal`, `postgresql.auto.conf`,
/// `recovery.signal`); a forged base backup that makes those symlinks must
/// not get holdfast to write through them, even as the `postgres` user that
/// owns the place they point at.
#[test]
fn a_forged_base_backup_cannot_redirect_the_recovery_set_up() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    pg.archive_now();
    let outside = pg.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim.conf"), "untouched\n").unwrap();
    chown_postgres(&outside);

    // `pg_wal` a link to the outside: the WAL spool would be moved there.
    let (_, wal_link) = forge(&pg.path("repo"), "pg", |entries| {
        entries.retain(|e| !e.path.starts_with("pgdata/pg_wal"));
        entries.push(link("pgdata/pg_wal", &outside));
    });
    // `postgresql.auto.conf` a link to a file outside: the recovery settings
    // would be appended to it.
    let (_, conf_link) = forge(&pg.path("repo"), "pg", |entries| {
        entries.retain(|e| e.path != "pgdata/postgresql.auto.conf");
        entries.push(link(
            "pgdata/postgresql.auto.conf",
            &outside.join("victim.conf"),
        ));
    });
    chown_postgres(&pg.path("repo"));
    for (id, what) in [(wal_link, "pg_wal"), (conf_link, "postgresql.auto.conf")] {
        let to = pg.path(&format!("restored-{what}"));
        let out = pg.holdfast(&[
            "restore",
            "--plan",
            &plan,
            "--snapshot",
            &id,
            "--to",
            s(&to),
        ]);
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(8), "{what}: {msg}");
        assert!(
            msg.contains(&format!("`{what}`")) && msg.contains("symlink"),
            "{what}: {msg}"
        );
        let mut left: Vec<String> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["victim.conf"], "{what}: nothing moved outside");
        assert_eq!(
            std::fs::read_to_string(outside.join("victim.conf")).unwrap(),
            "untouched\n",
            "{what}"
        );
    }
}
