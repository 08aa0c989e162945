//! Index objects are not trusted on their own, as the runbook relies on: an
//! index object somebody added (whose key sorts first, mapping real chunk ids
//! to garbage) no longer breaks restores or makes backups skip chunks, and
//! `verify` names it; when every index object is lost or damaged, `holdfast
//! repair index` rebuilds the index from the packs' own trailers, adding
//! objects only. Real binary, real local repository.
//!
//! The planted-index test runs under `encryption: none`: it proves the
//! candidate checks that need no key (in an encrypted repository such an
//! object fails authentication before its locations are looked at; see
//! tests/forgery.rs). The repair test runs on an encrypted repository: repair
//! unlocks with the plan's key, opens sealed trailers and blobs, and writes
//! sealed index objects.

mod common;

use std::path::PathBuf;

use common::bin::{command, fails, json, ok, s, text};
use common::files::{files_under, flip, tree_listing};
use holdfast::ids::Hash256;
use holdfast::repository::index::{IndexFile, IndexedChunk, IndexedPack};
use holdfast::repository::Crypto;
use serde_json::Value;

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    /// A files plan over `src/` (one 3 MB file of several chunks and a few
    /// small ones) and one backup of it; `repository` adds to the plan's
    /// repository fields (e.g. `encryption: none`).
    fn backed_up(lock: &str, repository: &str) -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        let src = repo.path("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("big.bin"), common::data(1, 3_000_000)).unwrap();
        std::fs::write(src.join("small.txt"), b"a small file\n".repeat(50)).unwrap();
        std::fs::write(src.join("sub/other.bin"), common::data(2, 300_000)).unwrap();
        std::fs::write(
            repo.plan(),
            format!(
                "name: app\nsource: {{type: files, path: {}}}\nrepository: {{url: {}{repository}}}\nschedule: {{backup: '0 * * * *'}}\nlock: {lock}\nretention: {{keep_last: 24}}\n",
                src.display(),
                repo.path("repo").display()
            ),
        )
        .unwrap();
        ok(&["backup", "--plan", s(&repo.plan())]);
        repo
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn plan(&self) -> PathBuf {
        self.path("app.yaml")
    }

    fn object(&self, key: &str) -> PathBuf {
        self.path("repo/objects").join(key)
    }

    /// Keys under `prefix` (`index/`, `packs/`), sorted.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let root = self.path("repo/objects");
        files_under(&root.join(prefix))
            .into_iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect()
    }

    fn index_files(&self) -> Vec<(String, IndexFile)> {
        self.keys("index/")
            .into_iter()
            .filter_map(|k| {
                let bytes = std::fs::read(self.object(&k)).unwrap();
                IndexFile::decode(&k, &bytes, &Crypto::none())
                    .ok()
                    .map(|f| (k, f))
            })
            .collect()
    }

    /// Adds an object the way anyone with write access to the repository can.
    fn plant(&self, key: &str, bytes: &[u8]) {
        let path = self.object(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn restore(&self, snapshot: &str, to: &str) -> std::process::Output {
        command()
            .args([
                "restore",
                "--plan",
                s(&self.plan()),
                "--snapshot",
                snapshot,
                "--to",
                s(&self.path(to)),
            ])
            .output()
            .unwrap()
    }

    fn verify(&self) -> (i32, Value) {
        let out = command()
            .args(["verify", "--plan", s(&self.plan()), "--json"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    }
}

/// An index object mapping every chunk of `real` to a wrong place in the
/// same pack (one byte off), whose key sorts before every key in `before`.
fn forged_index(real: &[(String, IndexFile)], before: &str) -> (String, Vec<u8>) {
    for shift in 1u64.. {
        let packs = real
            .iter()
            .flat_map(|(_, f)| &f.packs)
            .map(|p| IndexedPack {
                id: p.id,
                size: p.size,
                chunks: p
                    .chunks
                    .iter()
                    .map(|c| {
                        let fits = c.offset + shift + c.length as u64 <= p.size;
                        IndexedChunk {
                            offset: if fits { c.offset + shift } else { 8 },
                            ..*c
                        }
                    })
                    .filter(|c| !p.chunks.iter().any(|r| r == c))
                    .collect(),
            })
            .collect();
        let bytes = IndexFile::new(packs).encode(&Crypto::none());
        let key = format!("index/{}", Hash256::digest(&bytes));
        if key.as_str() < before {
            return (key, bytes);
        }
    }
    unreachable!()
}

/// A pack-shaped object of garbage that an index object can point at: real
/// chunk ids at offset 8 of random bytes, under the key its bytes hash to.
fn garbage_pack(real: &[(String, IndexFile)]) -> (String, Vec<u8>, IndexFile) {
    let bytes = common::data(99, 400_000);
    let id = holdfast::repository::pack::pack_id(&bytes);
    let chunks: Vec<IndexedChunk> = real
        .iter()
        .flat_map(|(_, f)| &f.packs)
        .flat_map(|p| &p.chunks)
        .map(|c| IndexedChunk {
            offset: 8,
            length: c.length.min(300_000),
            ..*c
        })
        .collect();
    let file = IndexFile::new(vec![IndexedPack {
        id,
        size: bytes.len() as u64,
        chunks,
    }]);
    (holdfast::repository::pack_key(&id), bytes, file)
}

#[test]
fn a_first_sorting_forged_index_neither_breaks_restore_nor_makes_backups_skip_chunks() {
    let repo = Repo::backed_up("{mode: compliance, days: 7}", ", encryption: none");
    let real = repo.index_files();
    let first_real = real
        .iter()
        .map(|(k, _)| k.as_str())
        .min()
        .unwrap()
        .to_string();

    // The attack: one index object sorting first, every chunk one byte off,
    // and one pointing every chunk at a pack of garbage.
    let (junk_pack, junk, junk_index) = garbage_pack(&real);
    repo.plant(&junk_pack, &junk);
    let junk_bytes = junk_index.encode(&Crypto::none());
    let junk_key = format!("index/{}", Hash256::digest(&junk_bytes));
    repo.plant(&junk_key, &junk_bytes);
    let (forged, bytes) = forged_index(&real, first_real.as_str().min(junk_key.as_str()));
    repo.plant(&forged, &bytes);
    assert_eq!(
        repo.keys("index/")[0],
        forged,
        "the forged index sorts first"
    );

    // Restore: the snapshot's manifest places its chunks (version 6), so
    // the index, forged objects and all, is not even read.
    let out = repo.restore("latest", "restored");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(
        tree_listing(&repo.path("restored")),
        tree_listing(&repo.path("src"))
    );
    assert!(!said.contains(&forged), "the index is not read: {said}");

    // Verify: a non-zero exit naming both planted index objects.
    let (code, report) = repo.verify();
    assert_eq!(code, 5, "{report:#}");
    let named: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["object"].as_str().unwrap())
        .collect();
    assert!(named.contains(&forged.as_str()), "{report:#}");
    assert!(named.contains(&junk_key.as_str()), "{report:#}");
    for real_key in real.iter().map(|(k, _)| k) {
        assert!(!named.contains(&real_key.as_str()), "{report:#}");
    }

    // A new backup with the forged index present: what it does not store
    // again it links to a location that passed its check, so its restore is
    // whole.
    std::fs::write(repo.path("src/new.txt"), b"added after the attack\n").unwrap();
    let out = command()
        .args(["backup", "--plan", s(&repo.plan()), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let backup: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snapshot = backup["snapshot"].as_str().unwrap();
    let out = repo.restore(snapshot, "restored-after");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        tree_listing(&repo.path("restored-after")),
        tree_listing(&repo.path("src"))
    );
    // The forged objects were read, never changed.
    assert_eq!(std::fs::read(repo.object(&forged)).unwrap(), bytes);
}

#[test]
fn with_every_index_object_removed_or_corrupted_repair_index_rebuilds_it_and_restore_works() {
    let repo = Repo::backed_up("{mode: none}", "");
    std::fs::write(repo.path("src/second.bin"), common::data(3, 500_000)).unwrap();
    ok(&["backup", "--plan", s(&repo.plan())]);
    let old = repo.keys("index/");
    assert_eq!(old.len(), 2, "one index object per backup: {old:?}");
    let packs = repo.keys("packs/");

    // One index object gone, the other damaged.
    std::fs::remove_file(repo.object(&old[0])).unwrap();
    flip(&repo.object(&old[1]), |n| n / 2, 0x40);
    let damaged = std::fs::read(repo.object(&old[1])).unwrap();
    // The snapshot's manifest places its own chunks (version 6): it still
    // restores; verify, which checks those places against the index, fails.
    let out = repo.restore("latest", "before-repair");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        tree_listing(&repo.path("before-repair")),
        tree_listing(&repo.path("src"))
    );
    assert_eq!(repo.verify().0, 5, "the index is missing and damaged");

    // --dry-run reads and checks every pack, and writes nothing.
    let plan = repo.plan();
    let dry = json(&["repair", "index", "--plan", s(&plan), "--dry-run", "--json"]);
    assert_eq!(
        dry["packs_indexed"].as_u64(),
        Some(packs.len() as u64),
        "{dry:#}"
    );
    assert_eq!(
        repo.keys("index/"),
        vec![old[1].clone()],
        "--dry-run wrote nothing"
    );

    let report = json(&["repair", "index", "--plan", s(&plan), "--json"]);
    assert_eq!(
        report["packs_indexed"].as_u64(),
        Some(packs.len() as u64),
        "{report:#}"
    );
    assert!(
        report["chunks_indexed"].as_u64().unwrap() >= 5,
        "{report:#}"
    );
    assert_eq!(report["unreadable"], serde_json::json!([]));
    assert_eq!(
        report["index_objects"], dry["index_objects"],
        "the dry run said what it would write"
    );
    let written: Vec<String> = report["index_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for k in &written {
        let bytes = std::fs::read(repo.object(k)).unwrap();
        assert!(
            bytes.starts_with(holdfast::repository::crypto::SEAL_MAGIC),
            "{k} written, sealed"
        );
        assert!(
            IndexFile::decode(k, &bytes, &Crypto::none()).is_err(),
            "{k} does not read without the key"
        );
    }
    // Old objects untouched: the damaged one is still there, byte for byte.
    assert_eq!(std::fs::read(repo.object(&old[1])).unwrap(), damaged);

    let out = repo.restore("latest", "restored");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        tree_listing(&repo.path("restored")),
        tree_listing(&repo.path("src"))
    );

    // Run again: the same index objects, already there; nothing new.
    let again = json(&["repair", "index", "--plan", s(&plan), "--json"]);
    assert_eq!(again["index_objects"], report["index_objects"]);
    assert_eq!(
        again["index_objects_existing"].as_u64(),
        Some(written.len() as u64)
    );

    // A pack that is not what its name says is named and left out (exit 5).
    let fake = format!("packs/00/{}", "0".repeat(64));
    repo.plant(&fake, b"HFPACK\x00\x01 not a pack");
    let said = fails(&["repair", "index", "--plan", s(&plan)], 5);
    assert!(said.contains(&format!("not indexed: {fake}")), "{said}");
    assert!(said.contains("1 pack(s) could not be indexed"), "{said}");
}

#[test]
fn a_snapshot_restores_from_its_own_chunk_places_and_falls_back_to_the_index_where_one_fails() {
    let repo = Repo::backed_up("{mode: none}", "");
    let first = json(&["snapshots", "--plan", s(&repo.plan()), "--json"]);
    let first = first[0]["id"].as_str().unwrap().to_string();

    // Every index object gone: the manifest (version 6) says where each
    // chunk is, so the restore needs none.
    for k in repo.keys("index/") {
        std::fs::remove_file(repo.object(&k)).unwrap();
    }
    let out = repo.restore("latest", "without-index");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        tree_listing(&repo.path("without-index")),
        tree_listing(&repo.path("src"))
    );

    // A backup now finds no chunk in the index and stores them all again,
    // in new packs, with an index object for those only.
    let old_packs = repo.keys("packs/");
    ok(&["backup", "--plan", s(&repo.plan())]);
    assert!(repo.keys("packs/").len() > old_packs.len());

    // The first snapshot's packs damaged: where a place its manifest gives
    // fails its check, the chunk is read from the index's place, and the
    // manifest's bad place is named.
    for k in &old_packs {
        flip(&repo.object(k), |n| n / 2, 0x40);
    }
    let out = repo.restore(&first, "fallen-back");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(
        tree_listing(&repo.path("fallen-back")),
        tree_listing(&repo.path("src"))
    );
    assert!(
        said.contains("the snapshot's manifest gives chunk"),
        "names the place that failed: {said}"
    );

    // With no other place to read a chunk from, the restore fails, naming
    // the place its manifest gives and the index found nothing better.
    for k in repo.keys("index/") {
        std::fs::remove_file(repo.object(&k)).unwrap();
    }
    let out = repo.restore(&first, "nowhere");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(5), "{said}");
    assert!(
        said.contains("from the snapshot's manifest") && said.contains("packs/"),
        "{said}"
    );
    assert!(!repo.path("nowhere").exists(), "nothing left half-restored");
}
