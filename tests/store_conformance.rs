//! The object-store contract (see `src/store/mod.rs`), run against every
//! backend. Each backend gets the same suite; a new backend adds one line.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration, Utc};
use holdfast::ids::Hash256;
use holdfast::store::LockKind::{Exclusive, Shared};
use holdfast::store::{local::LocalStore, LockMode, PutOptions, Retention, Store, StoreError};

fn put_opts(data: &[u8], retain: Option<Duration>) -> PutOptions {
    PutOptions {
        sha256: Hash256::digest(data),
        retention: retain.map(|d| Retention {
            mode: LockMode::Compliance,
            until: Utc::now() + d,
        }),
    }
}

/// Runs the whole contract against a fresh, empty store.
async fn conformance(store: Arc<dyn Store>) {
    let url = store.url();

    // An object with a real, short retention: deleting it is refused until
    // the retention ends, then allowed (checked at the end of the suite).
    let short = Bytes::from_static(b"short-lived lock");
    store
        .put(
            "t/short",
            short.clone(),
            &put_opts(&short, Some(Duration::seconds(3))),
        )
        .await
        .unwrap();
    let short_until = store
        .head("t/short")
        .await
        .unwrap()
        .retention
        .expect("retention is recorded")
        .until;

    // Create-only: a second put of the same key fails and changes nothing.
    let a = Bytes::from_static(b"first version");
    store
        .put("t/a", a.clone(), &put_opts(&a, None))
        .await
        .unwrap();
    let b = Bytes::from_static(b"second version!");
    let err = store
        .put("t/a", b.clone(), &put_opts(&b, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { .. }),
        "{url}: {err}"
    );
    assert_eq!(
        store.get("t/a").await.unwrap(),
        a,
        "{url}: overwrite changed the object"
    );

    // Not found is NotFound, naming the key, for get, range, head.
    for err in [
        store.get("t/nope").await.unwrap_err(),
        store.get_range("t/nope", 0, 1).await.unwrap_err(),
        store.head("t/nope").await.unwrap_err(),
    ] {
        assert!(err.is_not_found(), "{url}: {err}");
        assert!(err.to_string().contains("t/nope"), "{url}: {err}");
    }

    // Ranged reads are exact; reading past the end is an error, not a short read.
    assert_eq!(&store.get_range("t/a", 6, 7).await.unwrap()[..], b"version");
    assert!(store.get_range("t/a", 6, 100).await.is_err(), "{url}");

    // A capped get: the whole object at or under the cap; over it,
    // `TooLarge` naming the key before any of it is read.
    assert_eq!(store.get_at_most("t/a", 13).await.unwrap(), a, "{url}");
    match store.get_at_most("t/a", 12).await {
        Err(StoreError::TooLarge { key, size, max, .. }) => {
            assert_eq!((key.as_str(), size, max), ("t/a", 13, 12), "{url}")
        }
        other => panic!("{url}: get_at_most over the cap: {other:?}"),
    }
    assert!(
        store
            .get_at_most("t/nope", 10)
            .await
            .unwrap_err()
            .is_not_found(),
        "{url}"
    );
    // Offsets and lengths as a hostile index could give them: huge, or
    // summing past 2^64. `Truncated`, never a panic or an allocation.
    for (offset, len) in [(0, u64::MAX), (u64::MAX - 1, 10), (1 << 40, 1 << 20)] {
        match store.get_range("t/a", offset, len).await {
            Err(StoreError::Truncated { key, size, .. }) => {
                assert_eq!((key.as_str(), size), ("t/a", 13), "{url}")
            }
            other => panic!("{url}: get_range {offset}+{len}: {other:?}"),
        }
    }

    // Listing is sorted, complete, and prefix-exact.
    for k in ["t/list/b", "t/list/a", "t/list/c/d", "t/lister"] {
        store
            .put(k, Bytes::from_static(b"x"), &put_opts(b"x", None))
            .await
            .unwrap();
    }
    let keys: Vec<String> = store
        .list("t/list/")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(keys, ["t/list/a", "t/list/b", "t/list/c/d"], "{url}");
    let keys: Vec<String> = store
        .list("t/list")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(
        keys,
        ["t/list/a", "t/list/b", "t/list/c/d", "t/lister"],
        "{url}"
    );
    assert!(store.list("t/none/").await.unwrap().is_empty());
    assert_eq!(store.head("t/a").await.unwrap().size, a.len() as u64);

    // Retention: delete and shortening refused while retained; extension allowed.
    let r = Bytes::from_static(b"locked");
    store
        .put(
            "t/locked",
            r.clone(),
            &put_opts(&r, Some(Duration::days(2))),
        )
        .await
        .unwrap();
    let info = store.head("t/locked").await.unwrap();
    let locked = info.retention.expect("retention is recorded");
    let until = locked.until;
    // Each attempt is judged by the error it gets (the lock's own refusal,
    // nothing else), and the lock is read back after it.
    let err = store.delete("t/locked").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Retained { key, until: u, .. } if key == "t/locked" && *u == until),
        "{url}: a delete of a locked object must be refused as Retained, naming it and its lock: {err}"
    );
    assert_eq!(
        store.head("t/locked").await.unwrap().retention,
        Some(locked),
        "{url}: the lock changed after a refused delete"
    );
    let shorter = Retention {
        mode: LockMode::Compliance,
        until: until - Duration::days(1),
    };
    let err = store
        .extend_retention("t/locked", &shorter)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::RetentionShortening { key, current, requested, .. }
            if key == "t/locked" && *current == until && *requested == shorter.until),
        "{url}: shortening must be refused as RetentionShortening: {err}"
    );
    assert_eq!(
        store.head("t/locked").await.unwrap().retention,
        Some(locked),
        "{url}: the lock changed although shortening it was refused"
    );
    let longer = Retention {
        mode: LockMode::Compliance,
        until: until + Duration::days(1),
    };
    store.extend_retention("t/locked", &longer).await.unwrap();
    assert_eq!(
        store
            .head("t/locked")
            .await
            .unwrap()
            .retention
            .unwrap()
            .until,
        longer.until
    );
    assert_eq!(store.get("t/locked").await.unwrap(), r);

    // An object that never had a retention can be deleted.
    store.delete("t/a").await.unwrap();
    assert!(store.get("t/a").await.unwrap_err().is_not_found());

    // Keys that could escape the namespace are refused.
    for bad in ["", "/abs", "a/../b", "a//b", "a/./b", "sp ace"] {
        let err = store
            .put(bad, Bytes::new(), &put_opts(b"", None))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::BadKey { .. }),
            "{url}: `{bad}` {err}"
        );
    }

    // Locks are exclusive while held and free once dropped.
    let held = store.try_lock("backup-x", Exclusive).await.unwrap();
    let err = store
        .try_lock("backup-x", Exclusive)
        .await
        .err()
        .expect("second holder refused");
    assert!(matches!(err, StoreError::Busy { .. }), "{url}: {err}");
    held.release().await;
    store
        .try_lock("backup-x", Exclusive)
        .await
        .unwrap()
        .release()
        .await;

    // Shared holders (backups of two plans) coexist; an exclusive holder (a
    // prune) is refused while either holds it, and excludes new shared ones.
    let a = store.try_lock("repo-x", Shared).await.unwrap();
    let b = store.try_lock("repo-x", Shared).await.unwrap();
    let err = store
        .try_lock("repo-x", Exclusive)
        .await
        .err()
        .expect("exclusive refused while shared holders run");
    assert!(matches!(err, StoreError::Busy { .. }), "{url}: {err}");
    a.release().await;
    assert!(
        store.try_lock("repo-x", Exclusive).await.is_err(),
        "{url}: one shared holder is enough to refuse"
    );
    b.release().await;
    let exclusive = store.try_lock("repo-x", Exclusive).await.unwrap();
    let err = store
        .try_lock("repo-x", Shared)
        .await
        .err()
        .expect("shared refused while an exclusive holder runs");
    assert!(matches!(err, StoreError::Busy { .. }), "{url}: {err}");
    exclusive.release().await;
    store
        .try_lock("repo-x", Shared)
        .await
        .unwrap()
        .release()
        .await;

    // Large objects (multipart and parallel ranged reads on S3) round-trip
    // exactly, and ranges across part boundaries are exact.
    let big = Bytes::from(
        (0..20 * 1024 * 1024 + 12_345)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );
    store
        .put(
            "t/big",
            big.clone(),
            &put_opts(&big, Some(Duration::days(1))),
        )
        .await
        .unwrap();
    assert_eq!(store.head("t/big").await.unwrap().size, big.len() as u64);
    assert!(
        store.get("t/big").await.unwrap() == big,
        "{url}: big object differs"
    );
    let (off, len) = (8 * 1024 * 1024 - 5, 9 * 1024 * 1024);
    assert!(
        store
            .get_range("t/big", off as u64, len as u64)
            .await
            .unwrap()
            == big.slice(off..off + len),
        "{url}: range across parts differs"
    );
    let err = store
        .put("t/big", big.clone(), &put_opts(&big, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { .. }),
        "{url}: {err}"
    );

    // Empty objects exist and read back empty.
    store
        .put("t/empty", Bytes::new(), &put_opts(b"", None))
        .await
        .unwrap();
    assert!(store.get("t/empty").await.unwrap().is_empty(), "{url}");
    assert_eq!(store.head("t/empty").await.unwrap().size, 0);

    // A put whose bytes do not match the SHA-256 it carries is refused where the
    // backend can check (S3 checks x-amz-checksum-sha256 on arrival).
    if store.capabilities().server_enforced_lock {
        let err = store
            .put(
                "t/liar",
                Bytes::from_static(b"real"),
                &put_opts(b"fake", None),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("t/liar"), "{url}: {err}");
        assert!(
            store.get("t/liar").await.unwrap_err().is_not_found(),
            "{url}"
        );
    }

    // The short retention: refused while it lasts, deleted once it has ended.
    // Waits on the store's answer, not on a clock; every refusal before the
    // end must be `Retained`.
    let waited_from = std::time::Instant::now();
    loop {
        match store.delete("t/short").await {
            Ok(()) => break,
            Err(StoreError::Retained { .. }) => {
                assert!(
                    waited_from.elapsed() < std::time::Duration::from_secs(120),
                    "{url}: t/short (retained until {short_until}) still refused at {}",
                    Utc::now()
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{url}: deleting t/short: {e}"),
        }
    }
    assert!(
        Utc::now() >= short_until,
        "{url}: t/short deleted before its retention ended ({short_until})"
    );
    assert!(
        store.get("t/short").await.unwrap_err().is_not_found(),
        "{url}: t/short still readable after delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_honours_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    conformance(Arc::new(
        LocalStore::open(tmp.path().to_path_buf()).unwrap(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_honours_the_contract() {
    let store = common::s3_bucket("conformance", true).await;
    conformance(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_puts_are_atomic_read_only_and_leave_no_temp_files() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(tmp.path().to_path_buf()).unwrap());
    const OBJECTS: usize = 4;
    const SIZE: usize = 32 * 1024 * 1024;
    let object = |i: usize| Bytes::from(vec![i as u8 + 1; SIZE]);

    // A reader watches each object's path while it is written: whenever the
    // file exists it must have the object's whole length and bytes, never a
    // prefix. The writer starts each put only once the reader is watching.
    let objects = tmp.path().join("objects/packs/aa");
    let (watching, ready) = std::sync::mpsc::channel::<usize>();
    let reader = std::thread::spawn(move || {
        let mut partial = Vec::new();
        for i in 0..OBJECTS {
            let path = objects.join(format!("x{i}"));
            watching.send(i).unwrap();
            loop {
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() == SIZE as u64 => {
                        let bytes = std::fs::read(&path).unwrap();
                        if bytes.len() != SIZE || bytes.iter().any(|b| *b != i as u8 + 1) {
                            partial.push((i, bytes.len()));
                        }
                        break;
                    }
                    Ok(m) => partial.push((i, m.len() as usize)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("reading {}: {e}", path.display()),
                }
            }
        }
        partial
    });
    for i in 0..OBJECTS {
        assert_eq!(ready.recv().unwrap(), i);
        let d = object(i);
        store
            .put(&format!("packs/aa/x{i}"), d.clone(), &put_opts(&d, None))
            .await
            .unwrap();
    }
    let partial = reader.join().unwrap();
    assert!(
        partial.is_empty(),
        "a reader saw partial objects (index, bytes): {:?}",
        &partial[..partial.len().min(5)]
    );

    let meta = std::fs::metadata(tmp.path().join("objects/packs/aa/x0")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
        0,
        "no temp files left"
    );
}

/// An object of more parts than the store keeps in flight (12 parts of
/// 5 MiB, 8 in flight): `get`, `get_at_most` and a ranged read across parts
/// return every byte in order, and the cap is still decided before reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_reads_of_many_parts_come_back_whole_and_in_order() {
    let mut config = common::s3_config(&common::bucket_name("parts"), "repo");
    config.part_size = 5 << 20;
    let store = holdfast::store::s3::S3Store::open(config).await.unwrap();
    store.create_bucket(false).await.unwrap();
    let parts = 12 * (5 << 20) + 12_345;
    let data = Bytes::from(common::data(11, parts));
    store
        .put("packs/big", data.clone(), &put_opts(&data, None))
        .await
        .unwrap();
    assert!(
        store.get("packs/big").await.unwrap() == data,
        "get of many parts differs"
    );
    assert!(
        store.get_at_most("packs/big", parts as u64).await.unwrap() == data,
        "get_at_most of many parts differs"
    );
    let (from, len) = ((5 << 20) - 7, 9 * (5 << 20) + 3);
    assert!(
        store
            .get_range("packs/big", from as u64, len as u64)
            .await
            .unwrap()
            == data.slice(from..from + len),
        "ranged read across parts differs"
    );
    match store.get_at_most("packs/big", parts as u64 - 1).await {
        Err(StoreError::TooLarge { key, size, .. }) => {
            assert_eq!((key.as_str(), size), ("packs/big", parts as u64))
        }
        other => panic!("{other:?}"),
    }
}
