//! The repository format end to end on the local store: back up, restore,
//! compare; dedup; corruption is named, never restored.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Duration, Utc};
use common::{data, MemSource};
use holdfast::plan::{PlanName, Tier, VerifyDepth};
use holdfast::progress::ProgressMode;
use holdfast::repository::backup::{backup, BackupOptions};
use holdfast::repository::materialize::{restore, RestoreOptions};
use holdfast::repository::verify::{
    verify, verify_holding, ProblemKind, VerifyReport, HELD_CHUNKS,
};
use holdfast::repository::Repository;
use holdfast::store::{local::LocalStore, LockMode, Retention, Store};

fn plan_name(s: &str) -> PlanName {
    serde_json::from_value(serde_json::json!(s)).unwrap()
}

async fn repo_at(dir: &Path) -> Repository {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(dir.to_path_buf()).unwrap());
    Repository::open_or_init(store, &common::bin::test_repo_key(), None, Utc::now())
        .await
        .unwrap()
}

fn opts() -> BackupOptions {
    BackupOptions {
        compression_level: 3,
        retention: Some(Retention {
            mode: LockMode::Compliance,
            until: Utc::now() + Duration::days(7),
        }),
        tier: Tier::Daily,
        progress: ProgressMode::Quiet,
    }
}

/// [`opts`] without a lock: objects a test may replace or remove.
fn unlocked() -> BackupOptions {
    BackupOptions {
        retention: None,
        ..opts()
    }
}

/// `n` files `f000`, `f001`…, each of its own bytes (`seed` on), from
/// `min` to `min + spread` bytes long.
fn numbered_files(n: u64, seed: u64, min: usize, spread: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = min + (i as usize * 7919) % spread;
            (format!("f{i:03}"), data(seed + i, len))
        })
        .collect()
}

/// What a restore gives back.
type Restored = Result<
    holdfast::repository::materialize::RestoreReport,
    holdfast::repository::materialize::MaterializeError,
>;

/// Restores a plan's latest snapshot into `out`, as `holdfast restore` does.
async fn restore_latest(repo: &Repository, plan: &PlanName, out: &Path) -> Restored {
    restore_snapshot(repo, plan, "latest", out).await
}

/// Restores the snapshot `selector` names (an id prefix, or `latest`).
async fn restore_snapshot(
    repo: &Repository,
    plan: &PlanName,
    selector: &str,
    out: &Path,
) -> Restored {
    restore(
        repo,
        plan,
        &RestoreOptions {
            snapshot: selector.into(),
            to: out.to_path_buf(),
            force: false,
            check_with: None,
            single_stream: false,
            keep_setid_bits: false,
            progress: ProgressMode::Quiet,
        },
    )
    .await
}

fn sample() -> MemSource {
    MemSource {
        files: vec![
            ("big.bin".into(), data(1, 9_000_000)),
            ("small.txt".into(), data(2, 1000)),
            ("empty".into(), Vec::new()),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_up_restore_and_compare_then_dedup_the_second_run() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_at(&tmp.path().join("repo")).await;
    let plan = plan_name("app");

    let first = backup(&repo, &plan, Box::new(sample()), &opts())
        .await
        .unwrap();
    assert_eq!(first.stats.files, 3);
    assert_eq!(first.stats.total_bytes, 9_001_000);
    assert!(first.stats.stored_bytes < first.stats.total_bytes);

    let second = backup(&repo, &plan, Box::new(sample()), &opts())
        .await
        .unwrap();
    assert_eq!(
        second.stats.new_bytes, 0,
        "unchanged data stores nothing new"
    );

    let snaps = repo.list_snapshots(&plan).await.unwrap();
    assert_eq!(snaps.len(), 2);
    let m2 = repo.load_manifest(&snaps[1]).await.unwrap();
    assert_eq!(
        m2.previous,
        Some(first.snapshot),
        "each manifest names the one before it"
    );

    let out = tmp.path().join("out");
    restore_snapshot(&repo, &plan, &first.snapshot.short(), &out)
        .await
        .unwrap();
    for (name, content) in &sample().files {
        assert_eq!(&std::fs::read(out.join(name)).unwrap(), content, "{name}");
    }
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);

    // The chain is verified: the first manifest removed behind holdfast's
    // back (no prune record) breaks the second snapshot's link to it.
    std::fs::remove_file(tmp.path().join("repo/objects").join(&snaps[0].key)).unwrap();
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    let broken: Vec<_> = report
        .problems
        .iter()
        .filter(|p| matches!(p.kind, ProblemKind::ChainBroken))
        .collect();
    assert_eq!(broken.len(), 1, "{:?}", report.problems);
    assert_eq!(broken[0].object, snaps[1].key, "{:?}", report.problems);
    assert!(
        broken[0].detail.contains(&first.snapshot.to_string()),
        "{:?}",
        report.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_pack_is_named_and_never_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let repo = repo_at(&root).await;
    let plan = plan_name("app");
    let snap = backup(&repo, &plan, Box::new(sample()), &opts())
        .await
        .unwrap();

    let packs = repo.store().list("packs/").await.unwrap();
    let victim = &packs[0].key;
    let path = root.join("objects").join(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(!report.ok());
    let p = report
        .problems
        .iter()
        .find(|p| &p.object == victim)
        .expect("the pack is named");
    assert_eq!(p.kind, ProblemKind::Corrupt);
    assert_eq!(p.snapshots, vec![snap.snapshot.short()]);

    let out = tmp.path().join("out");
    let err = restore_latest(&repo, &plan, &out).await.unwrap_err();
    assert!(err.to_string().contains(victim.as_str()), "{err}");
    assert!(!out.exists(), "a failed restore leaves no target behind");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("repo")],
        "no temp path left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_an_uncompressed_chunk_is_traced_to_its_pack() {
    // Random bytes do not compress, so the blob is stored raw: no
    // decompressor notices the flip. Under `encryption: none` the chunk's
    // SHA-256 against its id does (the file has no whole-file hash since
    // manifest version 3); in an encrypted repository the blob's tag does.
    // Either way restore names the pack.
    for key in [
        common::bin::test_repo_key(),
        holdfast::repository::RepoKey::Unencrypted,
    ] {
        a_flipped_raw_chunk_is_traced_to_its_pack(key).await;
    }
}

async fn a_flipped_raw_chunk_is_traced_to_its_pack(key: holdfast::repository::RepoKey) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(root.clone()).unwrap());
    let repo = Repository::open_or_init(store, &key, None, Utc::now())
        .await
        .unwrap();
    let plan = plan_name("noise");
    let mut noise = vec![0u8; 3_000_000];
    getrandom::fill(&mut noise).unwrap();
    let source = MemSource {
        files: vec![("noise.bin".into(), noise)],
    };
    backup(&repo, &plan, Box::new(source), &opts())
        .await
        .unwrap();
    let victim = repo.store().list("packs/").await.unwrap()[0].key.clone();
    let path = root.join("objects").join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();

    let out = tmp.path().join("out");
    let err = restore_latest(&repo, &plan, &out).await.unwrap_err();
    let msg = format!("{err:#}");
    let chain: Vec<String> =
        std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect();
    assert!(
        chain.iter().any(|m| m.contains(victim.as_str())),
        "{msg} / {chain:?}"
    );
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_hash_chain_is_named_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_at(&tmp.path().join("repo")).await;
    let plan = plan_name("app");
    // Unlocked, so the test can remove what it needs to.
    let unlocked = unlocked();
    let mut ids = Vec::new();
    for seed in 1..=3 {
        let source = MemSource {
            files: vec![("app.db".into(), data(seed, 200_000))],
        };
        let r = backup(&repo, &plan, Box::new(source), &unlocked)
            .await
            .unwrap();
        ids.push(r.snapshot);
    }
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    let snaps = repo.list_snapshots(&plan).await.unwrap();

    // A manifest written through the store, as a copy of the newest with its
    // `previous` pointing past it to the first: a valid object (its name is
    // its hash) whose chain skips two snapshots.
    let mut forged = repo.load_manifest(&snaps[2]).await.unwrap();
    forged.previous = Some(ids[0]);
    forged.started_at = snaps[2].started_at + Duration::seconds(10);
    let (id, bytes) = forged.encode(repo.crypto());
    let key = holdfast::repository::snapshot_key(&plan, forged.started_at, &id);
    repo.store()
        .put(
            &key,
            bytes.clone().into(),
            &holdfast::store::PutOptions {
                sha256: holdfast::ids::Hash256::digest(&bytes),
                retention: None,
            },
        )
        .await
        .unwrap();
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    // It forks the chain at the first snapshot, beside the real second
    // one, whose branch goes on: the copy is the branch rejected.
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert_eq!(p.kind, ProblemKind::Rejected);
    assert_eq!(p.object, key);
    assert_eq!(p.snapshots, vec![id.short()]);
    assert!(
        p.detail.contains(&ids[0].to_string())
            && p.detail.contains(&ids[1].to_string())
            && p.detail.contains("only one of them can be real"),
        "{}",
        p.detail
    );
    repo.store().delete(&key).await.unwrap();

    // The middle snapshot's manifest removed outside holdfast (no prune
    // record): the one after it names a snapshot that is gone.
    repo.store().delete(&snaps[1].key).await.unwrap();
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert_eq!(p.kind, ProblemKind::ChainBroken);
    assert_eq!(p.object, snaps[2].key);
    assert!(
        p.detail.contains(&ids[1].to_string()) && p.detail.contains("not in the repository"),
        "{}",
        p.detail
    );
    assert_eq!(report.snapshots_checked, 2);
}

/// verify of the whole plan at depth `chunks`, holding at most `held`
/// chunk ids between its passes (see `verify_holding`).
async fn verify_held(repo: &Repository, plan: &PlanName, held: usize) -> VerifyReport {
    verify_holding(
        repo,
        plan,
        None,
        None,
        None,
        VerifyDepth::Chunks,
        ProgressMode::Quiet,
        held,
    )
    .await
    .unwrap()
}

/// Replaces an unlocked object with its bytes, one bit of the middle byte
/// flipped: what an insider with the store's credentials can do to an
/// object no lock holds.
async fn replace_with_a_flipped_byte(repo: &Repository, key: &str) {
    let mut bytes = repo.store().get(key).await.unwrap().to_vec();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    repo.store().delete(key).await.unwrap();
    let put = holdfast::store::PutOptions {
        sha256: holdfast::ids::Hash256::digest(&bytes),
        retention: None,
    };
    repo.store().put(key, bytes.into(), &put).await.unwrap();
}

/// What two verifies must agree on.
fn verdict(r: &VerifyReport) -> String {
    format!(
        "{} snapshots, {} packs, {} chunks, {} bytes, {} locks checked, problems {:?}",
        r.snapshots_checked,
        r.packs_checked,
        r.chunks_checked,
        r.bytes_read,
        r.objects_lock_checked,
        r.problems
    )
}

/// verify holds manifests between its passes only up to a budget, and reads
/// the others again: whether it holds every manifest or none, it finds the
/// same things, on a whole repository and on a damaged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_says_the_same_holding_every_manifest_or_reading_each_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let repo = repo_at(&root).await;
    let plan = plan_name("app");
    for round in 0..3u64 {
        let mut src = sample();
        src.files
            .push((format!("day-{round}"), data(10 + round, 300_000)));
        backup(&repo, &plan, Box::new(src), &opts()).await.unwrap();
    }
    let both = |repo: Repository, plan: PlanName| async move {
        let holding = verify_held(&repo, &plan, HELD_CHUNKS).await;
        (holding, verify_held(&repo, &plan, 0).await)
    };

    let (holding, reading) = both(repo_at(&root).await, plan.clone()).await;
    assert!(holding.ok(), "{:?}", holding.problems);
    assert_eq!(holding.snapshots_checked, 3);
    assert!(
        holding.objects_lock_checked > 3,
        "lock coverage counts packs and index objects, not only manifests: {}",
        holding.objects_lock_checked
    );
    assert_eq!(verdict(&holding), verdict(&reading));

    // A flipped byte in a pack the newest snapshot needs, and the middle
    // manifest gone: named alike.
    let snaps = repo.list_snapshots(&plan).await.unwrap();
    let newest = repo.load_manifest(&snaps[2]).await.unwrap();
    let big = newest.entries.iter().find(|e| e.path == "big.bin").unwrap();
    let index = repo.load_index().await.unwrap();
    let victim = holdfast::repository::pack_key(&index.get(&big.chunks[0]).unwrap().pack);
    let path = root.join("objects").join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(root.join("objects").join(&snaps[1].key)).unwrap();

    let (holding, reading) = both(repo_at(&root).await, plan.clone()).await;
    assert!(
        holding.problems.iter().any(|p| p.object == victim),
        "{:?}",
        holding.problems
    );
    assert!(
        holding
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::ChainBroken && p.object == snaps[2].key),
        "{:?}",
        holding.problems
    );
    assert_eq!(verdict(&holding), verdict(&reading));
}

/// Manifest version 4: a snapshot's entries are an object of their own
/// (`entries/<plan>/<time>-<sha256>`), named from its manifest by hash and
/// size. The listing reads only the small manifest; restore and verify read
/// both; prune deletes a removed snapshot's entries after its manifest, and
/// those of a backup killed before its manifest once their lock has ended;
/// a missing entries object is named, never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_live_apart_from_the_manifest_are_read_with_it_and_pruned_after_it() {
    use holdfast::plan::RetentionSpec;
    use holdfast::repository::manifest::{ENTRIES_PREFIX, MANIFEST_VERSION};
    use holdfast::repository::prune::{prune, PruneOptions};
    use holdfast::store::PutOptions;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let repo = repo_at(&root).await;
    let plan = plan_name("app");
    let unlocked = unlocked();
    for round in 0..2u64 {
        let mut src = sample();
        src.files
            .push((format!("day-{round}"), data(20 + round, 200_000)));
        backup(&repo, &plan, Box::new(src), &unlocked)
            .await
            .unwrap();
    }
    let snaps = repo.list_snapshots(&plan).await.unwrap();
    let (first, newest) = (&snaps[0], &snaps[1]);

    // The manifest object names its entries and holds none of them.
    let head = repo.load_manifest_head(newest).await.unwrap();
    assert_eq!(head.version, MANIFEST_VERSION);
    let entries = head
        .entries_object
        .clone()
        .expect("version 4 names its entries");
    assert!(entries.key.starts_with("entries/app/"), "{}", entries.key);
    assert!(entries.key.ends_with(&entries.sha256.to_string()));
    let manifest_size = repo.store().head(&newest.key).await.unwrap().size;
    let stored = repo.store().head(&entries.key).await.unwrap().size;
    assert_eq!(stored, entries.size);
    let m = repo.load_manifest(newest).await.unwrap();
    assert_eq!(
        m.entries.len(),
        5,
        "the root and four files: {:?}",
        m.entries
    );
    assert!(
        manifest_size < 2_000,
        "the manifest is its head only: {manifest_size} bytes"
    );

    // Orphans, as a backup killed between its entries and its manifest
    // leaves them: one whose lock ended, one still locked, one never locked.
    let orphan = |minutes: i64, lock: Option<i64>| {
        let mut m = m.clone();
        m.started_at += Duration::minutes(minutes);
        // Its entries object only: a backup killed after it.
        let (r, bytes) = m
            .encode_entries(
                repo.crypto(),
                holdfast::repository::manifest::LIST_PART_TARGET,
            )
            .unwrap()
            .tree;
        let retention = lock.map(|days| Retention {
            mode: LockMode::Compliance,
            until: Utc::now() + Duration::days(days),
        });
        let store = repo.store().clone();
        async move {
            store
                .put(
                    &r.key,
                    bytes.into(),
                    &PutOptions {
                        sha256: r.sha256,
                        retention,
                    },
                )
                .await
                .unwrap();
            r.key
        }
    };
    let ended = orphan(1, Some(-1)).await;
    let locked = orphan(2, Some(1)).await;
    let never = orphan(3, None).await;

    let first_entries = repo
        .load_manifest_head(first)
        .await
        .unwrap()
        .entries_object
        .unwrap()
        .key;
    let report = prune(
        &repo,
        &plan,
        &PruneOptions {
            logs: None,
            retention: RetentionSpec {
                keep_last: Some(1),
                ..Default::default()
            },
            timezone: chrono_tz::Tz::UTC,
            dry_run: false,
            record_lock: None,
            now: Utc::now(),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    // The first snapshot's entries object and chunk-list object, and the
    // orphan whose lock ended.
    assert_eq!(report.entries_objects_removed, 3, "{report:?}");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let mut left: Vec<String> = repo
        .store()
        .list(ENTRIES_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    left.sort();
    let lists: Vec<String> = head
        .chunk_lists
        .iter()
        .flatten()
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(lists.len(), 1, "four small files: one chunk-list object");
    let mut expected = vec![entries.key.clone(), locked, never];
    expected.extend(lists.iter().cloned());
    expected.sort();
    assert_eq!(left, expected, "gone: {first_entries} and {ended}");
    let out = tmp.path().join("restored");
    restore_latest(&repo, &plan, &out).await.unwrap();
    assert_eq!(std::fs::read(out.join("day-1")).unwrap(), data(21, 200_000));

    // A chunk-list object gone: restore and verify name it.
    let saved = repo.store().get(&lists[0]).await.unwrap();
    repo.store().delete(&lists[0]).await.unwrap();
    let err = restore_latest(&repo, &plan, &tmp.path().join("no-lists"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("chunk-list object {} is missing", lists[0])),
        "{err}"
    );
    assert!(!tmp.path().join("no-lists").exists());
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object == lists[0] && p.kind == ProblemKind::Missing),
        "{:?}",
        report.problems
    );
    repo.store()
        .put(
            &lists[0],
            saved,
            &PutOptions {
                sha256: head.chunk_lists.as_ref().unwrap()[0].sha256,
                retention: None,
            },
        )
        .await
        .unwrap();

    // The entries object gone: still listed (the listing reads heads only),
    // but restore and verify name the missing object.
    repo.store().delete(&entries.key).await.unwrap();
    assert_eq!(repo.list_snapshots(&plan).await.unwrap().len(), 1);
    let err = restore_latest(&repo, &plan, &tmp.path().join("again"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&entries.key) && err.contains("missing"),
        "{err}"
    );
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object == entries.key && p.kind == ProblemKind::Missing),
        "{:?}",
        report.problems
    );
}

/// Manifest version 7: the chunk lists are objects of their own, and a
/// restore reads them one at a time while it writes (here cut small, so
/// forty files make a dozen objects). Every file comes back byte for byte;
/// a damaged object in the middle fails the restore, naming it, with
/// nothing left behind, and verify names it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reads_the_chunk_lists_a_part_at_a_time_and_a_damaged_part_fails_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_at(&tmp.path().join("repo"))
        .await
        .with_list_part_target(300);
    let plan = plan_name("app");
    let files = numbered_files(40, 100, 1000, 300_000);
    let unlocked = unlocked();
    let source = MemSource {
        files: files.clone(),
    };
    backup(&repo, &plan, Box::new(source), &unlocked)
        .await
        .unwrap();
    let snap = repo.list_snapshots(&plan).await.unwrap().remove(0);
    let head = repo.load_manifest_head(&snap).await.unwrap();
    let parts = head.chunk_lists.clone().unwrap();
    assert!(parts.len() >= 10, "{} chunk-list objects", parts.len());
    let whole = repo.load_manifest(&snap).await.unwrap();
    let tree = repo.load_manifest_tree(&snap).await.unwrap();
    assert_eq!(whole.entries.len(), tree.entries.len());
    assert!(tree.entries.iter().all(|e| e.chunks.is_empty()));
    assert!(whole
        .entries
        .iter()
        .filter(|e| e.size.unwrap_or(0) > 0)
        .all(|e| !e.chunks.is_empty() && e.at.is_some()));

    let out = tmp.path().join("restored");
    let report = restore_latest(&repo, &plan, &out).await.unwrap();
    assert_eq!(report.files, 40);
    for (name, bytes) in &files {
        assert!(std::fs::read(out.join(name)).unwrap() == *bytes, "{name}");
    }

    // One object in the middle damaged (an insider replaced it: the local
    // store has no lock here).
    let mid = &parts[parts.len() / 2];
    replace_with_a_flipped_byte(&repo, &mid.key).await;
    let again = tmp.path().join("again");
    let err = restore_latest(&repo, &plan, &again).await.unwrap_err();
    let said = err.to_string();
    assert!(
        said.contains(&format!("chunk-list object {}", mid.key)) && said.contains(&snap.key),
        "{said}"
    );
    assert_eq!(
        holdfast::error::HasExit::exit(&err),
        holdfast::error::Exit::Verify
    );
    assert!(!again.exists(), "nothing at the target");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "nothing beside it: {left:?}");
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object == mid.key && p.kind == ProblemKind::Corrupt),
        "{:?}",
        report.problems
    );
}

/// Lock coverage counts the entries object: locked for less than its
/// snapshot, it is named by verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entries_object_locked_for_less_than_its_snapshot_is_named_by_verify() {
    use holdfast::store::PutOptions;

    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_at(&tmp.path().join("repo")).await;
    let plan = plan_name("app");
    backup(&repo, &plan, Box::new(sample()), &opts())
        .await
        .unwrap();
    let real = repo.list_snapshots(&plan).await.unwrap().remove(0);
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);

    // The same snapshot written again a minute later, its entries object
    // locked for one day where the manifest is locked for seven.
    let mut m = repo.load_manifest(&real).await.unwrap();
    m.previous = Some(real.id);
    m.started_at += Duration::minutes(1);
    m.finished_at = m.started_at;
    let encoded = m
        .encode_entries(
            repo.crypto(),
            holdfast::repository::manifest::LIST_PART_TARGET,
        )
        .unwrap();
    let (r, bytes) = encoded.tree;
    let short = Retention {
        mode: LockMode::Compliance,
        until: Utc::now() + Duration::days(1),
    };
    let put = |key: String, bytes: Vec<u8>, sha256, retention| {
        let store = repo.store().clone();
        async move {
            let opts = PutOptions {
                sha256,
                retention: Some(retention),
            };
            store.put(&key, bytes.into(), &opts).await.unwrap();
        }
    };
    put(r.key.clone(), bytes, r.sha256, short).await;
    m.entries_object = Some(r.clone());
    m.chunk_lists = Some(encoded.lists.iter().map(|(l, _)| l.clone()).collect());
    for (l, bytes) in encoded.lists {
        put(l.key.clone(), bytes, l.sha256, m.retention.unwrap()).await;
    }
    let (id, bytes) = m.encode(repo.crypto());
    let key = holdfast::repository::snapshot_key(&plan, m.started_at, &id);
    put(key, bytes, id.0, m.retention.unwrap()).await;

    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert_eq!(report.snapshots_checked, 2);
    assert_eq!(
        problems_of(&report),
        [(r.key.as_str(), ProblemKind::RetentionTooShort)],
        "{:?}",
        report.problems
    );
}

/// Each problem verify reports: its object and kind.
fn problems_of(report: &VerifyReport) -> Vec<(&str, ProblemKind)> {
    report
        .problems
        .iter()
        .map(|p| (p.object.as_str(), p.kind))
        .collect()
}

/// The packs holding each chunk of `m`, as the index objects give them.
fn packs_holding(
    m: &holdfast::repository::Manifest,
    index: &holdfast::repository::Index,
) -> std::collections::BTreeSet<holdfast::ids::PackId> {
    m.entries
        .iter()
        .flat_map(|e| &e.chunks)
        .flat_map(|c| index.candidates(c).map(|l| l.pack).collect::<Vec<_>>())
        .collect()
}

/// From manifest version 5 a manifest names the packs its chunks are in,
/// and prune keeps the packs the kept snapshots name without reading their
/// entries or the index's chunks. Beside an older manifest (version 4, no
/// packs named), prune finds that one's packs from its chunks, as before.
/// verify names a manifest that leaves out a pack one of its chunks is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_names_its_packs_and_prune_keeps_those_every_kept_snapshot_needs() {
    use holdfast::plan::RetentionSpec;
    use holdfast::repository::manifest::MANIFEST_VERSION;
    use holdfast::repository::pack_key;
    use holdfast::repository::prune::{prune, PruneOptions};
    use std::collections::BTreeSet;

    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_at(&tmp.path().join("repo")).await;
    let (app, old) = (plan_name("app"), plan_name("old"));
    let unlocked = unlocked();
    let day = |r: u64| (format!("day-{r}"), data(20 + r, 1_000_000));
    let shared = || ("shared".to_string(), data(1, 1_000_000));
    let back_up = |plan: PlanName, files: Vec<(String, Vec<u8>)>| {
        let (repo, unlocked) = (&repo, &unlocked);
        async move {
            backup(repo, &plan, Box::new(MemSource { files }), unlocked)
                .await
                .unwrap();
        }
    };
    let prune_to = |plan: PlanName, last: u32| {
        let repo = &repo;
        async move {
            let opts = PruneOptions {
                logs: None,
                retention: RetentionSpec {
                    keep_last: Some(last),
                    ..Default::default()
                },
                timezone: chrono_tz::Tz::UTC,
                dry_run: false,
                record_lock: None,
                now: Utc::now(),
            };
            let report = prune(repo, &plan, &opts).await.unwrap();
            assert!(report.refused.is_empty(), "{report:?}");
            report
        }
    };
    let stored_packs = || async {
        repo.store()
            .list("packs/")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.key)
            .collect::<BTreeSet<String>>()
    };
    // Each snapshot's named packs, checked against its chunks' packs.
    let named = |plan: PlanName| {
        let repo = &repo;
        async move {
            let index = repo.load_index().await.unwrap();
            let mut out = Vec::new();
            for snap in repo.list_snapshots(&plan).await.unwrap() {
                let m = repo.load_manifest(&snap).await.unwrap();
                let holding: BTreeSet<String> =
                    packs_holding(&m, &index).iter().map(pack_key).collect();
                if let Some(packs) = &m.packs {
                    let packs: BTreeSet<String> = packs.iter().map(pack_key).collect();
                    assert_eq!(packs, holding, "{}", snap.key);
                }
                out.push(holding);
            }
            out
        }
    };

    // Day 0 alone; from day 1 a file every later day shares.
    back_up(app.clone(), vec![day(0)]).await;
    back_up(app.clone(), vec![shared(), day(1)]).await;
    back_up(app.clone(), vec![shared(), day(2)]).await;
    let snaps = repo.list_snapshots(&app).await.unwrap();
    let head = repo.load_manifest_head(&snaps[2]).await.unwrap();
    assert_eq!(head.version, MANIFEST_VERSION);
    let packs = head.packs.clone().expect("version 5 names its packs");
    assert!(packs.windows(2).all(|w| w[0] < w[1]), "{packs:?}");
    let p = named(app.clone()).await;
    assert_eq!(p.len(), 3);
    assert!(p[0].is_disjoint(&p[1]) && !p[1].is_disjoint(&p[2]), "{p:?}");

    // Keeping the last two: day 0's packs go, and only they.
    let before = stored_packs().await;
    let report = prune_to(app.clone(), 2).await;
    assert_eq!(report.removed.len(), 1, "{report:?}");
    let after = stored_packs().await;
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    let expected: BTreeSet<String> = p[0].difference(&(&p[1] | &p[2])).cloned().collect();
    assert!(!expected.is_empty());
    assert_eq!(gone, expected);
    assert_eq!(report.packs_removed, expected.len());

    // Another plan's snapshot of day 1's file, written as manifest version 4
    // (no packs named): prune finds its packs from its chunks.
    back_up(old.clone(), vec![("legacy".into(), data(21, 1_000_000))]).await;
    let snap = repo.list_snapshots(&old).await.unwrap().remove(0);
    let mut m = repo.load_manifest(&snap).await.unwrap();
    let lists = m.chunk_lists.take().unwrap().into_iter().map(|r| r.key);
    for key in [snap.key.clone(), m.entries_object.take().unwrap().key]
        .into_iter()
        .chain(lists)
    {
        repo.store().delete(&key).await.unwrap();
    }
    m.version = 4;
    m.packs = None;
    for e in &mut m.entries {
        e.at = None;
    }
    repo.put_manifest(m, None, || async { Ok(()) })
        .await
        .unwrap();
    let snap = repo.list_snapshots(&old).await.unwrap().remove(0);
    let m = repo.load_manifest(&snap).await.unwrap();
    assert_eq!((m.version, m.packs.is_none()), (4, true));
    let legacy = named(old.clone()).await.remove(0);

    // Day 3 alone, keeping the last one: days 1 and 2 go, but the pack the
    // version 4 snapshot needs stays.
    back_up(app.clone(), vec![day(3)]).await;
    let p = named(app.clone()).await;
    let before = stored_packs().await;
    prune_to(app.clone(), 1).await;
    let after = stored_packs().await;
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    let expected: BTreeSet<String> = (&p[0] | &p[1])
        .difference(&(&p[2] | &legacy))
        .cloned()
        .collect();
    assert!(
        !expected.is_empty() && !(&p[0] & &legacy).is_empty(),
        "{p:?} {legacy:?}"
    );
    assert_eq!(gone, expected);
    let out = tmp.path().join("old");
    restore_latest(&repo, &old, &out).await.unwrap();
    assert_eq!(
        std::fs::read(out.join("legacy")).unwrap(),
        data(21, 1_000_000)
    );
    let out = tmp.path().join("app");
    restore_latest(&repo, &app, &out).await.unwrap();
    assert_eq!(
        std::fs::read(out.join("day-3")).unwrap(),
        data(23, 1_000_000)
    );
    for plan in [&app, &old] {
        let report = verify(&repo, plan, None, None, ProgressMode::Quiet)
            .await
            .unwrap();
        assert!(report.ok(), "{plan}: {:?}", report.problems);
    }

    // A manifest naming fewer packs than its chunks are in: named by verify,
    // since prune would let the others go.
    let latest = repo.list_snapshots(&app).await.unwrap().remove(0);
    let mut m = repo.load_manifest(&latest).await.unwrap();
    m.previous = Some(latest.id);
    m.started_at += Duration::minutes(1);
    m.finished_at = m.started_at;
    let left_out = m.packs.as_mut().unwrap().remove(0);
    // Without chunk places, which number the packs and so would no longer
    // read (refused with the entries object).
    for e in &mut m.entries {
        e.at = None;
    }
    let (key, _) = repo
        .put_manifest(m, None, || async { Ok(()) })
        .await
        .unwrap();
    let report = verify(&repo, &app, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert_eq!(
        problems_of(&report),
        [(key.as_str(), ProblemKind::Corrupt)],
        "{:?}",
        report.problems
    );
    let detail = &report.problems[0].detail;
    assert!(
        detail.contains("in no pack the manifest names") && detail.contains(&pack_key(&left_out)),
        "{detail}"
    );
}

/// A backup remembers the new chunks it met in bounded memory (two
/// generations, `placing::RECENT_GENERATION` each): a chunk met again soon
/// is stored once; one met again only after it was forgotten is stored a
/// second time, and the snapshot restores byte for byte and verifies
/// either way. Its chunks stored twice have two places (disputed): verify
/// keeps only those aside between its passes, and finds the same, locks
/// included, as when it reads the whole snapshot again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_forgets_a_new_chunk_stores_it_again_and_still_restores_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = plan_name("app");
    // The same 3 MB at the start and the end, 20 MB apart.
    let files = vec![
        ("first.bin".to_string(), data(7, 3_000_000)),
        ("between.bin".to_string(), data(8, 20_000_000)),
        ("again.bin".to_string(), data(7, 3_000_000)),
    ];
    let source = || {
        Box::new(MemSource {
            files: files.clone(),
        })
    };

    // Remembering everything: the repeat costs nothing.
    let repo = repo_at(&tmp.path().join("remembers")).await;
    let whole = backup(&repo, &plan, source(), &opts()).await.unwrap();
    assert_eq!(whole.stats.new_bytes, 23_000_000);

    // Two chunks a generation: the first file's chunks are forgotten by
    // the time the last file repeats them.
    let repo = repo_at(&tmp.path().join("forgets"))
        .await
        .with_recent_generation(2);
    let forgot = backup(&repo, &plan, source(), &opts()).await.unwrap();
    assert_eq!(forgot.stats.total_bytes, 26_000_000);
    assert_eq!(
        forgot.stats.new_bytes, 26_000_000,
        "a forgotten chunk is stored again"
    );
    assert!(forgot.stats.new_chunks > whole.stats.new_chunks);

    let index = repo.load_index().await.unwrap();
    assert!(index.disputed_chunks() >= 3, "{}", index.disputed_chunks());
    let aside = verify_held(&repo, &plan, HELD_CHUNKS).await;
    let reading = verify_held(&repo, &plan, 0).await;
    assert!(aside.ok(), "{:?}", aside.problems);
    assert!(
        aside.objects_lock_checked > 3,
        "{}",
        aside.objects_lock_checked
    );
    assert_eq!(verdict(&aside), verdict(&reading));
    let out = tmp.path().join("out");
    let restored = restore_latest(&repo, &plan, &out).await.unwrap();
    assert_eq!(restored.files, 3);
    for (name, bytes) in &files {
        assert!(std::fs::read(out.join(name)).unwrap() == *bytes, "{name}");
    }

    // The next backup of the same data finds every chunk in the index.
    let repeat = backup(&repo, &plan, source(), &opts()).await.unwrap();
    assert_eq!(repeat.stats.new_bytes, 0);
}

/// A store that refuses the `fail_at`-th put of a chunk-list or entries
/// object, and counts those it was asked for.
#[derive(Debug)]
struct RefusingStore {
    inner: LocalStore,
    fail_at: usize,
    entries_puts: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for RefusingStore {
    fn url(&self) -> String {
        self.inner.url()
    }
    fn capabilities(&self) -> holdfast::store::Capabilities {
        self.inner.capabilities()
    }
    async fn put(
        &self,
        key: &str,
        data: bytes::Bytes,
        opts: &holdfast::store::PutOptions,
    ) -> Result<(), holdfast::store::StoreError> {
        if key.starts_with("entries/") {
            let n = 1 + self
                .entries_puts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == self.fail_at {
                return Err(holdfast::store::StoreError::Denied {
                    op: "put",
                    key: key.to_string(),
                    store: self.url(),
                    detail: "refused by the test".into(),
                });
            }
        }
        self.inner.put(key, data, opts).await
    }
    async fn get(&self, key: &str) -> Result<bytes::Bytes, holdfast::store::StoreError> {
        self.inner.get(key).await
    }
    async fn get_at_most(
        &self,
        key: &str,
        max: u64,
    ) -> Result<bytes::Bytes, holdfast::store::StoreError> {
        self.inner.get_at_most(key, max).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, holdfast::store::StoreError> {
        self.inner.get_range(key, offset, len).await
    }
    async fn head(
        &self,
        key: &str,
    ) -> Result<holdfast::store::ObjectInfo, holdfast::store::StoreError> {
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<holdfast::store::ObjectInfo>, holdfast::store::StoreError> {
        self.inner.list(prefix).await
    }
    async fn extend_retention(
        &self,
        key: &str,
        retention: &Retention,
    ) -> Result<(), holdfast::store::StoreError> {
        self.inner.extend_retention(key, retention).await
    }
    async fn delete(&self, key: &str) -> Result<(), holdfast::store::StoreError> {
        self.inner.delete(key).await
    }
    async fn try_lock(
        &self,
        name: &str,
        kind: holdfast::store::LockKind,
    ) -> Result<Box<dyn holdfast::store::LockGuard>, holdfast::store::StoreError> {
        self.inner.try_lock(name, kind).await
    }
}

/// The chunk-list objects are put while the rest are still encoded, and
/// let go once put. When one put is refused, the backup stops encoding,
/// fails naming the object, and commits no snapshot; the repository still
/// verifies, and the next backup completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chunk_list_put_stops_the_backup_before_its_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = plan_name("app");
    let files = numbered_files(150, 300, 2000, 9000);
    let unlocked = unlocked();
    // A repository on a store refusing its `fail_at`-th entries put.
    let open = |dir: PathBuf, fail_at: usize| async move {
        let store = Arc::new(RefusingStore {
            inner: LocalStore::open(dir).unwrap(),
            fail_at,
            entries_puts: Default::default(),
        });
        let as_store: Arc<dyn Store> = store.clone();
        let repo =
            Repository::open_or_init(as_store, &common::bin::test_repo_key(), None, Utc::now())
                .await
                .unwrap()
                .with_list_part_target(300);
        (store, repo)
    };
    let source = || {
        Box::new(MemSource {
            files: files.clone(),
        })
    };

    // How many objects the entries take when nothing is refused.
    let (counting, repo) = open(tmp.path().join("whole"), usize::MAX).await;
    backup(&repo, &plan, source(), &unlocked).await.unwrap();
    let all = counting
        .entries_puts
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(all >= 30, "{all} entries and chunk-list objects");

    // The third refused: the backup fails naming it, and stops putting.
    let (refusing, repo) = open(tmp.path().join("refused"), 3).await;
    let err = backup(&repo, &plan, source(), &unlocked)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused by the test") && err.contains("entries/app/"),
        "{err}"
    );
    let tried = refusing
        .entries_puts
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(tried < all, "{tried} of {all} puts tried after the refusal");
    assert!(repo.list_snapshots(&plan).await.unwrap().is_empty());
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);

    // Nothing else refused: the next backup commits and restores.
    backup(&repo, &plan, source(), &unlocked).await.unwrap();
    let out = tmp.path().join("out");
    restore_latest(&repo, &plan, &out).await.unwrap();
    for (name, bytes) in &files {
        assert!(std::fs::read(out.join(name)).unwrap() == *bytes, "{name}");
    }
}

/// A backup keeps the chunk ids of its files off the heap past a bound
/// (here five ids), in a temporary file, and reads them back a part at a
/// time to write the chunk lists; it reads the previous snapshot's lists
/// a part at a time too, as the files come up. Files reused whole by their
/// stamp, in between files written anew: every file of each snapshot comes
/// back byte for byte, and they verify. The index too is kept on disk past
/// a bound (here seven chunks), by backups, verify and restores alike: a
/// file read again finds its chunks there and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_lists_spilled_to_disk_come_back_in_order_around_files_reused_whole() {
    use holdfast::engine::files::FilesSource;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir(&root).unwrap();
    let content = |i: u64, round: u64| {
        data(
            500 + i + 1000 * round,
            1000 + (i as usize * 7919) % 2_500_000,
        )
    };
    for i in 0..24u64 {
        std::fs::write(root.join(format!("f{i:02}")), content(i, 0)).unwrap();
    }
    let repo = repo_at(&tmp.path().join("repo"))
        .await
        .with_spill_after(5)
        .with_index_in_memory(7)
        .with_list_part_target(300);
    let plan = plan_name("app");
    let unlocked = unlocked();
    let source = || Box::new(FilesSource::new(root.clone(), Vec::new()).unwrap());
    let first = backup(&repo, &plan, source(), &unlocked).await.unwrap();
    assert!(first.stats.chunks > 20, "{} chunks", first.stats.chunks);
    let index = repo.load_index().await.unwrap();
    assert!(
        index.on_disk() && index.len() > 20,
        "{} chunks indexed",
        index.len()
    );

    // Every third file changes; the others are reused whole.
    for i in (0..24u64).step_by(3) {
        std::fs::write(root.join(format!("f{i:02}")), content(i, 1)).unwrap();
    }
    let second = backup(&repo, &plan, source(), &unlocked).await.unwrap();
    assert!(second.bytes_read < first.bytes_read / 2);

    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    for (snap, round) in [(first.snapshot, 0), (second.snapshot, 1)] {
        let out = tmp.path().join(format!("out-{round}"));
        restore_snapshot(&repo, &plan, &snap.short(), &out)
            .await
            .unwrap();
        for i in 0..24u64 {
            let want = content(i, if round == 1 && i % 3 == 0 { 1 } else { 0 });
            let got = std::fs::read(out.join(format!("f{i:02}"))).unwrap();
            assert!(got == want, "f{i:02} of snapshot {round}");
        }
    }

    // The next backup reads the second snapshot's chunk lists a part at a
    // time as the files come up. One part in the middle damaged (the local
    // store has no lock here): reuse stops there, the files after it are
    // read again, and the snapshot is whole.
    let snaps = repo.list_snapshots(&plan).await.unwrap();
    let parts = repo
        .load_manifest_head(&snaps[1])
        .await
        .unwrap()
        .chunk_lists
        .unwrap();
    assert!(parts.len() >= 6, "{} chunk-list objects", parts.len());
    replace_with_a_flipped_byte(&repo, &parts[parts.len() / 2].key).await;
    let third = backup(&repo, &plan, source(), &unlocked).await.unwrap();
    assert!(
        third.bytes_read > second.bytes_read,
        "{} bytes read",
        third.bytes_read
    );
    assert!(
        third.bytes_read < first.bytes_read,
        "{} bytes read",
        third.bytes_read
    );
    assert_eq!(third.stats.new_bytes, 0, "read again, stored before");
    let out = tmp.path().join("out-2");
    restore_latest(&repo, &plan, &out).await.unwrap();
    for i in 0..24u64 {
        let want = content(i, if i % 3 == 0 { 1 } else { 0 });
        let got = std::fs::read(out.join(format!("f{i:02}"))).unwrap();
        assert!(got == want, "f{i:02} of the third snapshot");
    }

    // verify reads the lists a part at a time too: the damaged part is
    // named, with the snapshot it breaks, and the others verify.
    let damaged = &parts[parts.len() / 2].key;
    let report = verify(&repo, &plan, None, None, ProgressMode::Quiet)
        .await
        .unwrap();
    let named: Vec<_> = report
        .problems
        .iter()
        .filter(|p| &p.object == damaged)
        .collect();
    assert_eq!(named.len(), 1, "{:#?}", report.problems);
    assert_eq!(named[0].snapshots, vec![snaps[1].id.short()]);
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.snapshots.iter().all(|s| *s == snaps[1].id.short())),
        "{:#?}",
        report.problems
    );
}
