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

#[test]
fn a_damaged_length_cannot_make_a_reader_allocate_gigabytes() {
    let entry = BlobEntry {
        id: holdfast::ids::ChunkId(Hash256::digest(b"x")),
        offset: 8,
        length: 4,
        raw_length: u32::MAX,
        encoding: Encoding::Zstd,
    };
    assert!(decode_blob(&entry, b"\x28\xb5\x2f\xfd").is_err());
}
