//! Bounded resources against planted objects: a decompression bomb (16 GiB of
//! one byte value in a zstd frame of half a megabyte) planted as an index
//! object or as the newest manifest of a local repository. `restore`,
//! `verify` and `snapshots` run as child processes under GNU time, which
//! reports their peak resident size: each must name the planted object,
//! restore the real snapshot where one is asked for, and stay under
//! `RSS_BOUND`. Before the caps, reading such an index object alone went past
//! 4 GB. Also: objects over a caller's cap and ranges past an object's end
//! are refused by the local store before anything is allocated.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::bin::{command, json_of, ok, s, said_by, text};
use holdfast::ids::{Hash256, SnapshotId};
use holdfast::repository::index::IndexFile;
use holdfast::repository::prune::PruneRecord;
use holdfast::repository::{
    Crypto, Manifest, RepoError, INDEX_CAP, MANIFEST_CAP, PRUNE_RECORD_CAP,
};
use holdfast::store::local::LocalStore;
use holdfast::store::{PutOptions, Store, StoreError};

/// Peak resident size allowed to any one command facing a bomb.
const RSS_BOUND: u64 = 512 << 20;
/// What each bomb decompresses to.
const BOMB: u64 = 16 << 30;
const BLOCK: u64 = 128 << 10;

/// A zstd frame that decompresses to `prefix` followed by `total` bytes of
/// `fill`: one raw block, then run-length blocks of 128 KiB (4 bytes each),
/// so 16 GiB costs 512 KiB. Built by hand (RFC 8878) because compressing
/// 16 GiB in the test would take longer than the test.
fn bomb(prefix: &[u8], fill: u8, total: u64) -> Vec<u8> {
    assert!((prefix.len() as u64) < BLOCK);
    // Magic; frame header: no content size, no checksum, window 2^17.
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    let header = |size: u64, rle: bool, last: bool| {
        let h = (size << 3) | ((rle as u64) << 1) | last as u64;
        h.to_le_bytes()[..3].to_vec()
    };
    if !prefix.is_empty() {
        out.extend(header(prefix.len() as u64, false, false));
        out.extend_from_slice(prefix);
    }
    let blocks = total / BLOCK;
    for i in 0..blocks {
        out.extend(header(BLOCK, true, i + 1 == blocks));
        out.push(fill);
    }
    out
}

#[test]
fn the_hand_built_bomb_is_a_valid_zstd_frame_of_the_claimed_size() {
    // The first and last bytes of a small one, as zstd itself decodes them.
    let small = bomb(b"{\"version\":1", b' ', 4 * BLOCK);
    let raw = zstd::decode_all(&small[..]).unwrap();
    assert_eq!(raw.len() as u64, 12 + 4 * BLOCK);
    assert!(raw.starts_with(b"{\"version\":1") && raw.ends_with(b"  "));
    // The big one is the advertised 16 GiB in about half a megabyte.
    let big = bomb(b"", 0, BOMB);
    assert!(big.len() < 600 << 10, "{} bytes", big.len());
    let mut head = vec![0u8; 1 << 20];
    let mut d = zstd::stream::read::Decoder::new(&big[..]).unwrap();
    std::io::Read::read_exact(&mut d, &mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));
}

/// Unencrypted (`encryption: none`), so the planted objects reach the size
/// caps: in an encrypted repository authentication refuses them first
/// (tests/encryption.rs).
struct Repo {
    dir: tempfile::TempDir,
    plan: PathBuf,
}

impl Repo {
    /// A files plan, backed up once: two files in a local repository.
    fn backed_up() -> (Repo, String) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.bin"), common::data(7, 300_000)).unwrap();
        std::fs::write(src.join("sub/b.txt"), b"the real content").unwrap();
        let plan = dir.path().join("tree.yaml");
        std::fs::write(
            &plan,
            format!(
                "name: tree\nsource: {{type: files, path: {}}}\nrepository:\n  url: file://{}\n  encryption: none\nschedule:\n  backup: \"0 * * * *\"\nlock: {{mode: none}}\nretention: {{keep_last: 24}}\n",
                src.display(),
                dir.path().join("repo").display()
            ),
        )
        .unwrap();
        let repo = Repo { dir, plan };
        let report = json_of(
            &command()
                .args(["backup", "--plan", repo.plan(), "--json"])
                .output()
                .unwrap(),
        );
        let id = report["snapshot"].as_str().unwrap().to_string();
        (repo, id)
    }

    fn plan(&self) -> &str {
        s(&self.plan)
    }

    fn objects(&self) -> PathBuf {
        self.dir.path().join("repo/objects")
    }

    /// Writes `bytes` as object `key`, as anyone with the bucket's write
    /// credentials could.
    fn plant(&self, key: &str, bytes: &[u8]) {
        let path = self.objects().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// The one manifest key of the real backup.
    fn manifest_key(&self) -> String {
        let dir = self.objects().join("snapshots/tree");
        let name = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        format!("snapshots/tree/{}", name.to_string_lossy())
    }
}

/// Runs holdfast with `args` under GNU time: what it did and its peak RSS.
fn measured(args: &[&str]) -> (Output, u64) {
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o", s(rss_file.path())])
        .arg(common::bin::BIN)
        .args(args)
        .env("HOLDFAST_LOG", "warn")
        .env("HOLDFAST_KEY", common::bin::TEST_KEY)
        .output()
        .expect("/usr/bin/time runs holdfast");
    let kb: u64 = std::fs::read_to_string(rss_file.path())
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time gave no peak RSS: {}", text(&out)));
    (out, kb * 1024)
}

fn assert_bounded(what: &str, rss: u64) {
    eprintln!("{what}: peak RSS {} MiB", rss >> 20);
    assert!(
        rss < RSS_BOUND,
        "{what}: peak RSS {} MiB, over the {} MiB bound",
        rss >> 20,
        RSS_BOUND >> 20
    );
}

fn index_key_of(bytes: &[u8]) -> String {
    format!("index/{}", Hash256::digest(bytes))
}

#[test]
fn bomb_index_objects_are_skipped_by_name_restore_works_and_memory_stays_bounded() {
    let (repo, _) = Repo::backed_up();
    // 16 GiB of zeros, and well-formed JSON opening a string of 16 GiB
    // (which a JSON parser would buffer to its end).
    let zeros = bomb(b"", 0, BOMB);
    let spaces = bomb(b"{\"version\":1,\"packs\":[{\"id\":\"", b'a', BOMB);
    let (zeros_key, spaces_key) = (index_key_of(&zeros), index_key_of(&spaces));
    repo.plant(&zeros_key, &zeros);
    repo.plant(&spaces_key, &spaces);

    // The snapshot places its chunks (manifest version 6): its restore
    // reads no index object, planted ones included.
    let out_dir = repo.dir.path().join("out");
    let (out, rss) = measured(&["restore", "--plan", repo.plan(), "--to", s(&out_dir)]);
    let said = said_by(&out, 0);
    assert_bounded("restore", rss);
    assert!(
        !said.contains(&zeros_key) && !said.contains(&spaces_key),
        "{said}"
    );
    assert_eq!(
        std::fs::read(out_dir.join("a.bin")).unwrap(),
        common::data(7, 300_000)
    );
    assert_eq!(
        std::fs::read(out_dir.join("sub/b.txt")).unwrap(),
        b"the real content"
    );

    let (out, rss) = measured(&["verify", "--plan", repo.plan(), "--json"]);
    let said = said_by(&out, 5);
    assert_bounded("verify", rss);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let named: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["object"].as_str())
        .collect();
    assert!(
        named.contains(&zeros_key.as_str()) && named.contains(&spaces_key.as_str()),
        "verify names both planted index objects: {said}"
    );
    assert!(
        said.contains(&format!("over the {}-byte cap", INDEX_CAP.bytes)),
        "the string bomb is refused at the index cap: {said}"
    );

    // A second backup still works beside them.
    let (out, rss) = measured(&["backup", "--plan", repo.plan()]);
    said_by(&out, 0);
    assert_bounded("backup", rss);
}

#[test]
fn a_bomb_manifest_sorting_newest_is_refused_by_name_and_the_real_one_restores() {
    let (repo, real_id) = Repo::backed_up();
    // Newest by one second, named after its own SHA-256 so only its content
    // can give it away: a JSON start and 16 GiB of whitespace, which a JSON
    // parser would skip to the end (holdfast's compact JSON has none).
    let real_key = repo.manifest_key();
    let time = real_key
        .rsplit('/')
        .next()
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    let t = chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S%.3fZ").unwrap();
    let later = (t + chrono::Duration::seconds(1)).format("%Y%m%dT%H%M%S%.3fZ");
    let spaces = bomb(b"{\"format\":\"holdfast-snapshot\",", b' ', BOMB);
    let bomb_id = SnapshotId(Hash256::digest(&spaces));
    let bomb_key = format!("snapshots/tree/{later}-{bomb_id}");
    repo.plant(&bomb_key, &spaces);
    let cap = "whitespace outside a string";

    // `latest` is the newest snapshot holdfast believes: the bomb is
    // rejected, named in a warning, and the real one restores.
    let out_dir = repo.dir.path().join("latest");
    let (out, rss) = measured(&["restore", "--plan", repo.plan(), "--to", s(&out_dir)]);
    let said = said_by(&out, 0);
    assert_bounded("restore of the bomb", rss);
    assert!(said.contains(&bomb_key) && said.contains(cap), "{said}");
    assert_eq!(
        std::fs::read(out_dir.join("sub/b.txt")).unwrap(),
        b"the real content"
    );

    let out_dir = repo.dir.path().join("real");
    let (out, rss) = measured(&[
        "restore",
        "--plan",
        repo.plan(),
        "--snapshot",
        &real_id[..12],
        "--to",
        s(&out_dir),
    ]);
    said_by(&out, 0);
    assert_bounded("restore of the real snapshot", rss);
    assert_eq!(
        std::fs::read(out_dir.join("sub/b.txt")).unwrap(),
        b"the real content"
    );

    let (out, rss) = measured(&["snapshots", "--plan", repo.plan(), "--json"]);
    assert_bounded("snapshots", rss);
    let listed = text(&out);
    assert!(
        listed.contains(&bomb_key) && listed.contains(cap),
        "{listed}"
    );
    assert!(listed.contains(&real_id), "{listed}");

    let (out, rss) = measured(&["verify", "--plan", repo.plan()]);
    let said = said_by(&out, 5);
    assert_bounded("verify", rss);
    assert!(said.contains(&bomb_key), "{said}");
    // The real snapshot is still the plan's history to verify.
    ok(&[
        "verify",
        "--plan",
        repo.plan(),
        "--snapshot",
        &real_id[..12],
    ]);
}

/// Decodes `bytes` as a `what`, named after its own SHA-256.
fn decode(what: &str, bytes: &[u8]) -> (String, Result<(), RepoError>) {
    let id = SnapshotId(Hash256::digest(bytes));
    match what {
        "index object" => {
            let key = index_key_of(bytes);
            let got = IndexFile::decode(&key, bytes, &Crypto::none()).map(|_| ());
            (key, got)
        }
        "snapshot manifest" => {
            let key = format!("snapshots/app/20260101T000000.000Z-{id}");
            let got = Manifest::decode(&key, &id, bytes, &Crypto::none()).map(|_| ());
            (key, got)
        }
        _ => {
            let key = format!("prunes/20260101T000000.000Z-{id}");
            let got = PruneRecord::decode(&key, bytes, &Crypto::none()).map(|_| ());
            (key, got)
        }
    }
}

#[test]
fn decoders_refuse_bombs_at_their_first_byte_or_at_the_cap_naming_the_object() {
    let kinds: [(&str, &[u8]); 3] = [
        ("index object", b"{\"version\":1,\"packs\":["),
        ("snapshot manifest", b"{\"format\":\"holdfast-snapshot\","),
        ("prune record", b"{\"format\":\"holdfast-prune\","),
    ];
    for (what, prefix) in kinds {
        // 16 GiB of zeros, or of whitespace after a JSON start: refused at
        // their first byte.
        for (fill, says) in [(0u8, "cannot parse"), (b' ', "whitespace outside a string")] {
            let (key, got) = decode(what, &bomb(prefix, fill, BOMB));
            match got {
                Err(RepoError::Corrupt {
                    what: w,
                    key: k,
                    why,
                }) => {
                    assert_eq!((w, k.as_str()), (what, key.as_str()));
                    assert!(why.contains(says), "{what} of {fill}: {why}");
                }
                other => panic!("{what} of {fill}: {other:?}"),
            }
        }
    }
    // A string that never ends: read up to the cap, then refused by name.
    // (Manifests have the same code path with a 4 GiB cap, too slow to fill
    // here.)
    for (what, cap) in [
        ("index object", INDEX_CAP.bytes),
        ("prune record", PRUNE_RECORD_CAP.bytes),
    ] {
        let prefix = b"{\"format\":\"";
        let (key, got) = decode(what, &bomb(prefix, b'a', cap + 4 * BLOCK));
        match &got {
            Err(RepoError::OverCap {
                what: w,
                key: k,
                cap: c,
                ..
            }) => {
                assert_eq!((*w, k.as_str(), *c), (what, key.as_str(), cap))
            }
            other => panic!("{what}: not OverCap: {other:?}"),
        }
        // Just under the cap it is read to its (unterminated) end.
        let (key, got) = decode(what, &bomb(prefix, b'a', cap - BLOCK));
        assert!(
            matches!(&got, Err(RepoError::Corrupt { key: k, why, .. }) if *k == key && why.contains("EOF")),
            "{what} under its cap: {got:?}"
        );
    }
    assert_eq!(MANIFEST_CAP.what, "snapshot manifest");
}

#[tokio::test]
async fn the_local_store_refuses_objects_over_a_cap_and_ranges_past_the_end_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().to_path_buf()).unwrap();
    let data = vec![7u8; 1000];
    store
        .put(
            "index/x",
            data.clone().into(),
            &PutOptions {
                sha256: Hash256::digest(&data),
                retention: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.get_at_most("index/x", 1000).await.unwrap(), data);
    match store.get_at_most("index/x", 999).await {
        Err(StoreError::TooLarge { key, size, max, .. }) => {
            assert_eq!((key.as_str(), size, max), ("index/x", 1000, 999))
        }
        other => panic!("{other:?}"),
    }
    assert!(store
        .get_at_most("index/none", 10)
        .await
        .unwrap_err()
        .is_not_found());
    // Offsets and lengths read from a hostile index: huge, or wrapping.
    for (offset, len) in [
        (0, u64::MAX),
        (u64::MAX - 1, 10),
        (1 << 40, 1 << 32),
        (999, 2),
    ] {
        match store.get_range("index/x", offset, len).await {
            Err(StoreError::Truncated { key, size, .. }) => {
                assert_eq!((key.as_str(), size), ("index/x", 1000))
            }
            other => panic!("{offset}+{len}: {other:?}"),
        }
    }
}
