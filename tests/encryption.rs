//! The authenticated, encrypted repository (format version 2), as an
//! insider with the bucket's write credentials but not the repository key
//! would attack it: objects copied under other names, manifests sealed with
//! another key or not at all, and reading the bucket for content. Plus the
//! key's life: a wrong passphrase, no key at all, adding, listing and
//! removing keys, and `encryption: none`, which works and says loudly what
//! it gives up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use common::bin::{command, json_of, s, said_by, stdout_of, test_repo_key, text, TEST_KEY};
use holdfast::ids::{Hash256, SnapshotId};
use holdfast::plan::PlanName;
use holdfast::repository::{snapshot_key, Crypto, Manifest, RepoKey, Repository};
use holdfast::secret::Secret;
use holdfast::store::local::LocalStore;
use holdfast::store::{PutOptions, Store};

const MARKER: &str = "PLAINTEXT-MARKER-7f3a91c2-only-in-the-source";

struct Setup {
    dir: tempfile::TempDir,
    plan: PathBuf,
}

impl Setup {
    /// A files plan over a small tree holding `MARKER` (in a file's content
    /// and in a file's name), its repository beside it, lock-free so keys
    /// can be deleted. `extra` goes into the plan's `repository` map.
    fn new(extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("notes.txt"),
            format!("customer record: {MARKER}\n").repeat(3),
        )
        .unwrap();
        std::fs::write(src.join(format!("{MARKER}.txt")), b"named secret").unwrap();
        let plan = dir.path().join("plan.yaml");
        std::fs::write(
            &plan,
            format!(
                "name: app\nsource: {{type: files, path: src}}\nrepository: {{url: repo{extra}}}\nschedule: {{backup: '@daily'}}\nlock: {{mode: none}}\nretention: {{keep_last: 10}}\n"
            ),
        )
        .unwrap();
        Setup { dir, plan }
    }

    fn plan(&self) -> &str {
        s(&self.plan)
    }

    fn repo_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// The KDF of each key object in the repository, sorted.
    fn key_object_kdfs(&self) -> Vec<String> {
        let mut kdfs: Vec<String> = std::fs::read_dir(self.repo_dir().join("objects/keys"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_none())
            .map(|p| {
                let o: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                o["kdf"]["algorithm"].as_str().unwrap().to_string()
            })
            .collect();
        kdfs.sort();
        kdfs
    }

    fn run(&self, args: &[&str]) -> Output {
        command().args(args).output().unwrap()
    }

    fn run_with_key(&self, key: Option<&str>, args: &[&str]) -> Output {
        let mut c = command();
        match key {
            Some(k) => c.env("HOLDFAST_KEY", k),
            None => c.env_remove("HOLDFAST_KEY"),
        };
        c.args(args).output().unwrap()
    }

    fn backup(&self) -> String {
        let out = self.run(&["backup", "--plan", self.plan(), "--json"]);
        json_of(&out)["snapshot"].as_str().unwrap().to_string()
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::new(LocalStore::open(self.repo_dir()).unwrap())
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn put(store: &dyn Store, key: &str, bytes: Vec<u8>) {
    rt().block_on(store.put(
        key,
        bytes.clone().into(),
        &PutOptions {
            sha256: Hash256::digest(&bytes),
            retention: None,
        },
    ))
    .unwrap();
}

fn all_bytes_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_repository_bytes_never_contain_what_the_source_holds() {
    let enc = Setup::new("");
    enc.backup();
    let objects = enc.repo_dir().join("objects");
    for (path, bytes) in all_bytes_under(&objects) {
        assert!(
            !contains(&bytes, MARKER.as_bytes()),
            "{} holds the source's plaintext",
            path.display()
        );
    }
    // The check can fail: an unencrypted repository of the same tree shows it.
    let plain = Setup::new(", encryption: none");
    plain.backup();
    assert!(all_bytes_under(&plain.repo_dir().join("objects"))
        .iter()
        .any(|(_, b)| contains(b, MARKER.as_bytes())));
}

/// A sealed manifest replayed under a newer name fails authentication: restore
/// ignores it (naming it) and restores the real one; verify reports it.
#[test]
fn a_manifest_copied_under_a_newer_name_fails_authentication_and_is_named() {
    let st = Setup::new("");
    st.backup();
    let store = st.store();
    let infos = rt().block_on(store.list("snapshots/app/")).unwrap();
    let real = holdfast::repository::SnapshotRef::from_key(&infos[0].key).unwrap();
    let bytes = rt().block_on(store.get(&real.key)).unwrap().to_vec();
    // The same bytes (so the same id) under a later time: a replay of an
    // older snapshot as `latest` (minutes later, within the clock-skew
    // allowance, so only authentication can tell).
    let plan: PlanName = serde_json::from_value(serde_json::json!("app")).unwrap();
    let replay = snapshot_key(
        &plan,
        real.started_at + chrono::Duration::minutes(5),
        &real.id,
    );
    assert_ne!(replay, real.key);
    put(store.as_ref(), &replay, bytes);

    // Restore `latest`: the replay is ignored, named as not authentic, and
    // the real snapshot restored.
    let out = st.run(&[
        "restore",
        "--plan",
        st.plan(),
        "--to",
        s(&st.dir.path().join("out")),
    ]);
    let said = said_by(&out, 0);
    assert!(
        said.contains(&replay) && said.contains("not authentic"),
        "{said}"
    );
    assert!(st.dir.path().join("out/notes.txt").exists());

    let out = st.run(&["verify", "--plan", st.plan()]);
    let said = said_by(&out, 5);
    assert!(
        said.contains(&replay) && said.contains("not authentic"),
        "{said}"
    );
}

/// Plants a manifest copied from the real one, made the newest, sealed with
/// `crypto` (another repository's keys, or none), named by its own hash.
fn plant_manifest(st: &Setup, crypto: &Crypto) -> String {
    let store = st.store();
    let repo = rt()
        .block_on(Repository::open(store.clone(), &test_repo_key()))
        .unwrap();
    let plan: PlanName = serde_json::from_value(serde_json::json!("app")).unwrap();
    let snaps = rt().block_on(repo.list_snapshots(&plan)).unwrap();
    let mut m: Manifest = rt().block_on(repo.load_manifest(&snaps[0])).unwrap();
    // Minutes later (within the clock-skew allowance): only authentication
    // can tell it from a real snapshot.
    m.started_at = snaps[0].started_at + chrono::Duration::minutes(5);
    let (id, bytes): (SnapshotId, Vec<u8>) = m.encode(crypto);
    let key = snapshot_key(&plan, m.started_at, &id);
    put(store.as_ref(), &key, bytes);
    key
}

#[test]
fn a_hand_written_manifest_sealed_with_another_key_or_unsealed_is_ignored_by_restore_and_reported_by_verify(
) {
    let st = Setup::new("");
    st.backup();
    // Another repository's keys: a well-formed sealed object, wrong key.
    let other = Setup::new("");
    other.backup();
    let foreign = rt()
        .block_on(Repository::open(other.store(), &test_repo_key()))
        .unwrap()
        .crypto()
        .clone();
    for crypto in [foreign, Crypto::none()] {
        let key = plant_manifest(&st, &crypto);
        let out = st.run(&[
            "restore",
            "--plan",
            st.plan(),
            "--to",
            s(&st.dir.path().join("x")),
        ]);
        // Ignored with a warning naming it; the real snapshot restores.
        let said = said_by(&out, 0);
        assert!(
            said.contains(&key) && said.contains("not authentic"),
            "{said}"
        );
        assert!(st.dir.path().join("x/notes.txt").exists());
        std::fs::remove_dir_all(st.dir.path().join("x")).unwrap();
        let out = st.run(&["verify", "--plan", st.plan(), "--json"]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let problem = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["object"] == key.as_str())
            .unwrap_or_else(|| panic!("{report}"));
        assert_eq!(problem["kind"], "rejected", "{report}");
        std::fs::remove_file(st.repo_dir().join("objects").join(&key)).unwrap();
    }
}

#[test]
fn the_same_data_gets_different_chunk_ids_in_two_repositories() {
    let (a, b) = (Setup::new(""), Setup::new(""));
    a.backup();
    b.backup();
    let chunks = |st: &Setup| {
        let repo = rt()
            .block_on(Repository::open(st.store(), &test_repo_key()))
            .unwrap();
        let plan: PlanName = serde_json::from_value(serde_json::json!("app")).unwrap();
        let snap = rt().block_on(repo.find_snapshot(&plan, "latest")).unwrap();
        let m = rt().block_on(repo.load_manifest(&snap)).unwrap();
        let e = m
            .entries
            .into_iter()
            .find(|e| e.path == "notes.txt")
            .unwrap();
        e.chunks
    };
    let (ca, cb) = (chunks(&a), chunks(&b));
    let sha = Hash256::digest(format!("customer record: {MARKER}\n").repeat(3).as_bytes());
    assert_eq!(ca.len(), 1);
    assert_ne!(ca, cb, "chunk ids must be keyed per repository");
    // A keyed id is not the content's SHA-256 (which anyone can compute).
    assert_ne!(ca[0].0, sha);
}

#[test]
fn a_wrong_passphrase_or_no_key_is_refused_with_exit_4_and_never_printed() {
    let st = Setup::new("");
    st.backup();
    let out = st.run_with_key(
        Some("not-the-passphrase"),
        &["snapshots", "--plan", st.plan()],
    );
    let said = said_by(&out, 4);
    assert!(
        said.contains("no key object") && said.contains("opens"),
        "{said}"
    );
    assert!(!said.contains("not-the-passphrase"), "{said}");

    let out = st.run_with_key(None, &["snapshots", "--plan", st.plan()]);
    let said = said_by(&out, 4);
    assert!(said.contains(st.plan()), "names the plan file: {said}");
    assert!(
        said.contains("HOLDFAST_KEY_FILE") && said.contains("key_file"),
        "{said}"
    );

    // Nor does the key appear in `plan check` output, JSON or not.
    let out = st.run(&["plan", "check", st.plan(), "--json"]);
    assert!(!text(&out).contains(TEST_KEY), "{}", text(&out));
}

#[test]
fn a_plan_whose_encryption_setting_does_not_match_the_repository_fails_clearly() {
    let st = Setup::new("");
    st.backup();
    let none = st.dir.path().join("none.yaml");
    std::fs::write(
        &none,
        std::fs::read_to_string(&st.plan)
            .unwrap()
            .replace("url: repo", "url: repo, encryption: none"),
    )
    .unwrap();
    let said = said_by(&st.run(&["snapshots", "--plan", s(&none)]), 4);
    assert!(
        said.contains("is encrypted") && said.contains("encryption: none"),
        "{said}"
    );
}

#[test]
fn keys_are_added_listed_and_removed_but_never_the_last_or_the_one_in_use() {
    let st = Setup::new("");
    st.backup();
    let plan = st.plan();
    let list = |key: &str| {
        json_of(&st.run_with_key(Some(key), &["key", "list", "--plan", plan, "--json"]))
    };
    let first = list(TEST_KEY);
    assert_eq!(first.as_array().unwrap().len(), 1, "{first}");
    let first_id = first[0]["id"].as_str().unwrap().to_string();
    assert_eq!(first[0]["current"], true);

    // A second key, added with the first.
    let out = command()
        .env("NEW_KEY", "second-passphrase")
        .args([
            "key",
            "add",
            "--plan",
            plan,
            "--new-key-env",
            "NEW_KEY",
            "--json",
        ])
        .output()
        .unwrap();
    let second_id = json_of(&out)["added"].as_str().unwrap().to_string();
    // Passphrases are stretched (Argon2id).
    assert_eq!(st.key_object_kdfs(), ["argon2id", "argon2id"]);
    let both = list("second-passphrase");
    assert_eq!(both.as_array().unwrap().len(), 2, "{both}");
    let current: Vec<_> = both
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["current"] == true)
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(current, vec![second_id.as_str()]);

    // The key in use is not removed.
    let out = st.run_with_key(
        Some("second-passphrase"),
        &["key", "remove", "--plan", plan, &second_id[..10]],
    );
    let said = said_by(&out, 2);
    assert!(said.contains("is the one plan app is using"), "{said}");

    // The first key is removed (with the second), its object deleted on this
    // lock-free local repository: its passphrase no longer unlocks.
    let out = st.run_with_key(
        Some("second-passphrase"),
        &["key", "remove", "--plan", plan, &first_id[..10], "--json"],
    );
    let report = json_of(&out);
    assert_eq!(report["deleted"], true, "{report}");
    let said = said_by(
        &st.run_with_key(Some(TEST_KEY), &["snapshots", "--plan", plan]),
        4,
    );
    assert!(said.contains("no key object"), "{said}");
    stdout_of(&st.run_with_key(Some("second-passphrase"), &["snapshots", "--plan", plan]));

    // The last key is not removed, even by a plan holding another passphrase
    // that no longer opens anything: it cannot even open the repository.
    let out = st.run_with_key(
        Some("second-passphrase"),
        &["key", "remove", "--plan", plan, &second_id[..10]],
    );
    said_by(&out, 2);
    let left = list("second-passphrase");
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
}

#[test]
fn key_add_generates_a_key_file_that_does_not_exist_yet_and_it_unlocks() {
    let st = Setup::new("");
    st.backup();
    let plan = st.plan();
    let new = st.dir.path().join("custodian.key");
    let out = st.run_with_key(
        Some(TEST_KEY),
        &[
            "key",
            "add",
            "--plan",
            plan,
            "--new-key-file",
            s(&new),
            "--json",
        ],
    );
    let said = text(&out);
    assert!(said.contains("created the key file"), "{said}");
    json_of(&out);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&new).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&new).unwrap().trim().to_string();
    assert!(key.starts_with("hfkey1-") && key.len() == 71, "{key}");
    assert_eq!(st.key_object_kdfs(), ["argon2id", "hkdf-sha256"]);
    // The generated key opens the repository on its own.
    stdout_of(&st.run_with_key(Some(&key), &["snapshots", "--plan", plan]));

    // With a key that opens nothing, no key object is written and the new
    // file is not left behind.
    let other = st.dir.path().join("other.key");
    let out = st.run_with_key(
        Some("not the key"),
        &["key", "add", "--plan", plan, "--new-key-file", s(&other)],
    );
    said_by(&out, 4);
    assert!(!other.exists());
    assert_eq!(st.key_object_kdfs(), ["argon2id", "hkdf-sha256"]);
}

#[test]
fn a_key_file_is_created_0600_at_init_with_a_loud_warning_and_read_afterwards() {
    let st = Setup::new(", key_file: secret/repo.key");
    let out = st.run_with_key(None, &["repo", "init", "--plan", st.plan()]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let key_file = st.dir.path().join("secret/repo.key");
    assert!(
        said.contains(s(&key_file)) && said.contains("LOSING THIS FILE"),
        "{said}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // `hfkey1-` and 256 random bits as hex: a generated key, so its key
    // object is wrapped under HKDF, not Argon2id (nothing to stretch), and
    // every archive_command is spared the Argon2id run.
    let generated = std::fs::read_to_string(&key_file).unwrap();
    let hex = generated
        .trim()
        .strip_prefix("hfkey1-")
        .expect("hfkey1- prefix");
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{generated}"
    );
    assert_eq!(st.key_object_kdfs(), ["hkdf-sha256"]);
    // The plan's key file wins over the environment's key.
    let out = st.run_with_key(Some("something else"), &["backup", "--plan", st.plan()]);
    stdout_of(&out);
    // Without the file, nothing opens.
    std::fs::remove_file(&key_file).unwrap();
    let out = st.run_with_key(None, &["snapshots", "--plan", st.plan()]);
    let said = said_by(&out, 3);
    assert!(said.contains(s(&key_file)), "{said}");
}

#[test]
fn encryption_none_works_and_warns_that_snapshots_can_be_forged() {
    let st = Setup::new(", encryption: none");
    let out = st.run(&["plan", "check", st.plan()]);
    let said = text(&out);
    assert!(
        said.contains("NOT encrypted") && said.contains("forge"),
        "{said}"
    );
    let out = st.run(&["repo", "init", "--plan", st.plan()]);
    assert!(text(&out).contains("forge"), "{}", text(&out));
    st.backup();
    stdout_of(&st.run(&[
        "restore",
        "--plan",
        st.plan(),
        "--to",
        s(&st.dir.path().join("out")),
    ]));
    assert!(std::fs::read_to_string(st.dir.path().join("out/notes.txt"))
        .unwrap()
        .contains(MARKER));
    // Chunk ids are plain SHA-256 there.
    let repo = rt()
        .block_on(Repository::open(st.store(), &RepoKey::Unencrypted))
        .unwrap();
    assert!(!repo.crypto().is_encrypted());
    assert_eq!(repo.config().chunk_id, "sha256");
    // And a key for it is a clear error, not a silent downgrade.
    let err = rt()
        .block_on(Repository::open(
            st.store(),
            &RepoKey::Passphrase(Secret::new("x")),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("not encrypted"), "{err}");
}
