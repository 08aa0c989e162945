//! Whatever bytes arrive from a damaged repository or a mistyped plan, the
//! parsers answer with an error, never a panic. (A stand-in for a fuzz target
//! on a stable toolchain: proptest feeds them arbitrary and mutated input.)

use std::path::Path;

use holdfast::ids::{Hash256, SnapshotId};
use holdfast::plan::Plan;
use holdfast::repository::index::IndexFile;
use holdfast::repository::pack::{decode_blob, parse_trailer, BlobEntry, Encoding};
use holdfast::repository::Manifest;
use proptest::prelude::*;

const PLAN: &str = "name: app\nsource: {type: sqlite, path: /tmp/app.db}\nrepository: {url: file:///tmp/repo}\nschedule: {backup: \"0 * * * *\"}\nlock: {mode: compliance, days: 7}\nretention: {keep_last: 24, keep_daily: 7}\n";

fn no_env(_: &str) -> Option<String> {
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plan_parsing_never_panics(text in ".{0,400}") {
        let _ = Plan::parse(&text, Path::new("fuzz.yaml"), &no_env);
    }

    #[test]
    fn mutated_plans_never_panic(at in 0usize..PLAN.len(), insert in "[ :{}\\[\\]\"#*0-9a-z\n-]{0,8}") {
        let mut text = PLAN.to_string();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &insert);
        let _ = Plan::parse(&text, Path::new("fuzz.yaml"), &no_env);
    }

    #[test]
    fn manifests_and_indexes_of_arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let id = SnapshotId(Hash256::digest(&bytes));
        // The name matches the bytes, so only decoding can refuse them.
        prop_assert!(Manifest::decode("snapshots/app/x", &id, &bytes).is_err());
        let key = format!("index/{}", Hash256::digest(&bytes));
        prop_assert!(IndexFile::decode(&key, &bytes).is_err());
    }

    #[test]
    fn pack_trailers_and_blobs_of_arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4000),
        raw_length in 0u32..100_000,
    ) {
        let _ = parse_trailer(&bytes);
        let entry = BlobEntry {
            id: holdfast::ids::ChunkId(Hash256::digest(b"x")),
            offset: 8,
            length: bytes.len() as u32,
            raw_length,
            encoding: Encoding::Zstd,
        };
        let _ = decode_blob(&entry, &bytes);
    }
}

/// Set in the copy of this test binary that runs under an address-space limit.
const UNDER_LIMIT: &str = "HOLDFAST_TEST_UNDER_ADDRESS_LIMIT";

#[test]
fn a_damaged_length_cannot_make_a_reader_allocate_gigabytes() {
    // A blob claiming 4 GiB decompressed. Linux overcommits, so an
    // unguarded 4 GiB allocation would succeed here unnoticed: the check runs
    // again in a copy of this test under a 1 GiB address-space limit, where
    // such an allocation aborts the process.
    if std::env::var_os(UNDER_LIMIT).is_none() {
        let out = std::process::Command::new("prlimit")
            .arg("--as=1073741824")
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .args([
                "a_damaged_length_cannot_make_a_reader_allocate_gigabytes",
                "--exact",
                "--test-threads=1",
            ])
            .env(UNDER_LIMIT, "1")
            .output()
            .expect("prlimit runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "under a 1 GiB limit: {:?}\n{said}",
            out.status
        );
        assert!(
            said.contains("1 passed"),
            "the limited copy ran the test: {said}"
        );
    }
    let entry = BlobEntry {
        id: holdfast::ids::ChunkId(Hash256::digest(b"x")),
        offset: 8,
        length: 4,
        raw_length: u32::MAX,
        encoding: Encoding::Zstd,
    };
    let err = decode_blob(&entry, b"\x28\xb5\x2f\xfd").expect_err("a 4 GiB claim is refused");
    assert!(
        err.to_string().contains(&u32::MAX.to_string()),
        "the error names the claimed length: {err}"
    );
}
