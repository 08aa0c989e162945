//! Whatever bytes arrive from a damaged repository or a mistyped plan, the
//! parsers answer with an error, never a panic. (A stand-in for a fuzz target
//! on a stable toolchain: proptest feeds them arbitrary and mutated input.)

use std::path::Path;

use holdfast::ids::{Hash256, SnapshotId};
use holdfast::plan::Plan;
use holdfast::repository::index::IndexFile;
use holdfast::repository::pack::{decode_blob, parse_trailer, BlobEntry, Encoding};
use holdfast::repository::{Crypto, Manifest};
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
        prop_assert!(Manifest::decode("snapshots/app/x", &id, &bytes, &Crypto::none()).is_err());
        let key = format!("index/{}", Hash256::digest(&bytes));
        prop_assert!(IndexFile::decode(&key, &bytes, &Crypto::none()).is_err());
    }

    #[test]
    fn pack_trailers_and_blobs_of_arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4000),
        raw_length in 0u32..100_000,
    ) {
        let _ = parse_trailer(&bytes, &Crypto::none());
        let entry = BlobEntry {
            id: holdfast::ids::ChunkId(Hash256::digest(b"x")),
            offset: 8,
            length: bytes.len() as u32,
            raw_length,
            encoding: Encoding::Zstd,
            bundle_offset: None,
        };
        let _ = decode_blob(&entry, &bytes, &Crypto::none());
        // The same bytes as a bundle, the chunk at any place in it.
        let in_bundle = BlobEntry {
            encoding: Encoding::Bundle,
            bundle_offset: std::num::NonZeroU32::new(raw_length),
            ..entry
        };
        let _ = decode_blob(&in_bundle, &bytes, &Crypto::none());
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
        bundle_offset: None,
    };
    let err = decode_blob(&entry, b"\x28\xb5\x2f\xfd", &Crypto::none())
        .expect_err("a 4 GiB claim is refused");
    assert!(
        err.to_string().contains(&u32::MAX.to_string()),
        "the error names the claimed length: {err}"
    );
}

/// Mutations of real objects: the valid pack, index, manifest and archived
/// WAL objects of the format fixture (`tests/fixtures/repo-v1`, read only),
/// damaged past their magic and header by byte flips, truncations,
/// insertions and field-targeted changes (counts, offsets, lengths, numbers
/// in the JSON), so the later stages of each parser run. JSON objects are
/// renamed after their new SHA-256, so the name check passes and decoding
/// itself is exercised. Each property: no panic, no allocation beyond a cap
/// (the process's peak virtual size grows by less than `ALLOC_CAP`), and
/// either the original content or a typed error naming the object. Each test
/// counts the cases that got past the header and asserts a floor, so it
/// proves that it reached the later stages.
mod mutations {
    use std::cell::Cell;
    use std::io::Read;
    use std::path::Path;

    use holdfast::ids::{Hash256, SnapshotId};
    use holdfast::repository::index::IndexFile;
    use holdfast::repository::log_archive::{self, LogError};
    use holdfast::repository::pack::{decode_blob, parse_trailer, MAX_CHUNK_LEN};
    use holdfast::repository::{Crypto, Manifest, RepoError};
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestRunner};

    const OBJECTS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/repo-v1/repo/objects"
    );
    const CASES: u32 = 384;
    const ALLOC_CAP: u64 = 256 << 20;

    /// Every object under `prefix` of the fixture: (key, bytes).
    fn objects(prefix: &str) -> Vec<(String, Vec<u8>)> {
        let root = Path::new(OBJECTS);
        let mut out: Vec<_> = walkdir::WalkDir::new(root.join(prefix))
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let key = e.path().strip_prefix(root).unwrap().display().to_string();
                (key, std::fs::read(e.path()).unwrap())
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no objects under {prefix} in {OBJECTS}");
        out
    }

    /// The process's peak virtual size (VmPeak), in bytes.
    fn vm_peak() -> u64 {
        status_kb("VmPeak:") * 1024
    }

    /// Peak resident memory: what was touched, not what was reserved.
    fn vm_hwm() -> u64 {
        status_kb("VmHWM:") * 1024
    }

    fn status_kb(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// One mutation, applied by `mutate` within `from..` of an object.
    #[derive(Debug, Clone)]
    struct Mutation {
        kind: u8,
        object: Index,
        at: Index,
        value: u64,
        pick: usize,
        bytes: Vec<u8>,
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        (
            0u8..6,
            any::<Index>(),
            any::<Index>(),
            any::<u64>(),
            0usize..12,
            proptest::collection::vec(any::<u8>(), 1..24),
        )
            .prop_map(|(kind, object, at, value, pick, bytes)| Mutation {
                kind,
                object,
                at,
                value,
                pick,
                bytes,
            })
    }

    /// Values that break lengths and offsets: around the object's size, the
    /// integer limits, the original plus or minus one, or anything.
    fn interesting(m: &Mutation, len: usize, original: u64) -> u64 {
        let len = len as u64;
        [
            0,
            1,
            7,
            8,
            len.saturating_sub(1),
            len,
            len + 1,
            u32::MAX as u64,
            u64::MAX,
            original.wrapping_add(1),
            original.wrapping_sub(1),
            m.value,
        ][m.pick % 12]
    }

    /// Kinds 0-2: a flipped byte, a truncation, an insertion, all at or
    /// after `from`. Other kinds are the caller's field-targeted ones.
    fn mutate_bytes(bytes: &[u8], from: usize, m: &Mutation) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let at = from + m.at.index(bytes.len().saturating_sub(from).max(1));
        let at = at.min(bytes.len());
        match m.kind % 3 {
            0 if at < out.len() => out[at] ^= (m.value as u8).max(1),
            0 | 1 => out.truncate(at),
            _ => {
                out.splice(at..at, m.bytes.iter().copied());
            }
        }
        out
    }

    /// Writes `value` little-endian into `width` bytes at `at`.
    fn set_le(bytes: &mut [u8], at: usize, width: usize, value: u64) {
        bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    }

    fn get_le(bytes: &[u8], at: usize, width: usize) -> u64 {
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(&bytes[at..at + width]);
        u64::from_le_bytes(b)
    }

    fn runner() -> TestRunner {
        TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        })
    }

    #[test]
    fn mutated_packs_give_their_chunks_or_a_typed_error_and_stay_in_bounds() {
        let packs = objects("packs");
        let peak = vm_peak();
        let past_header = Cell::new(0u32);
        runner()
            .run(&mutation(), |m| {
                let (key, pack) = &packs[m.object.index(packs.len())];
                let originals = parse_trailer(pack, &Crypto::none()).unwrap();
                let n = originals.len();
                let trailer = pack.len() - 12 - n * 49;
                let bad = if m.kind < 3 {
                    mutate_bytes(pack, 8, &m)
                } else {
                    // A field of the footer or of one trailer entry.
                    let mut bad = pack.clone();
                    let entry = trailer + (m.value as usize % n) * 49;
                    let (at, width) = match m.kind {
                        3 => (pack.len() - 12, 4),               // blob count
                        4 => (entry + 32, 8),                    // offset
                        _ if m.pick % 2 == 0 => (entry + 40, 4), // stored length
                        _ => (entry + 44, 4),                    // raw length
                    };
                    let v = interesting(&m, pack.len(), get_le(pack, at, width));
                    set_le(&mut bad, at, width, v);
                    bad
                };
                let entries = match parse_trailer(&bad, &Crypto::none()) {
                    Err(why) => {
                        if !why.contains("magic") {
                            past_header.set(past_header.get() + 1);
                        }
                        return Ok(());
                    }
                    Ok(entries) => entries,
                };
                past_header.set(past_header.get() + 1);
                for e in entries {
                    // Every entry the parser accepts lies inside the pack.
                    let end = e.offset.checked_add(e.length as u64);
                    prop_assert!(
                        e.offset >= 8 && end.is_some_and(|end| end <= bad.len() as u64),
                        "{key}: entry {e:?} outside a pack of {} bytes",
                        bad.len()
                    );
                    let data = &bad[e.offset as usize..end.unwrap() as usize];
                    if let Ok(raw) = decode_blob(&e, data, &Crypto::none()) {
                        // Decoded means its SHA-256 is its id: the original chunk.
                        let orig = originals.iter().find(|o| o.id == e.id);
                        prop_assert!(orig.is_some(), "{key}: decoded a chunk it never held");
                        let o = orig.unwrap();
                        let want = decode_blob(
                            o,
                            &pack[o.offset as usize..(o.offset + o.length as u64) as usize],
                            &Crypto::none(),
                        )
                        .unwrap();
                        prop_assert_eq!(raw, want);
                    }
                }
                Ok(())
            })
            .unwrap();
        let grew = vm_peak() - peak;
        eprintln!(
            "{} of {CASES} cases past the header; peak virtual size grew by {grew} bytes",
            past_header.get()
        );
        assert!(grew < ALLOC_CAP, "peak virtual size grew by {grew} bytes");
        assert!(
            past_header.get() >= CASES / 2,
            "only {} of {CASES} mutated packs got past the magic",
            past_header.get()
        );
    }

    #[test]
    fn mutated_archived_wal_gives_the_file_or_an_error_naming_the_object() {
        let wal: Vec<_> = objects("wal")
            .into_iter()
            .map(|(key, object)| {
                let raw = log_archive::decode(&key, &object, &Crypto::none()).unwrap();
                (key, object, raw)
            })
            .collect();
        let peak = vm_peak();
        let past_header = Cell::new(0u32);
        runner()
            .run(&mutation(), |m| {
                let (key, object, raw) = &wal[m.object.index(wal.len())];
                let bad = match m.kind {
                    0..=2 => mutate_bytes(object, 8, &m),
                    3 | 4 => {
                        // The length field of the header.
                        let mut bad = object.clone();
                        let v = match m.pick % 4 {
                            0 => 1 << 30,
                            1 => (1 << 30) - 1,
                            _ => interesting(&m, raw.len(), raw.len() as u64),
                        };
                        set_le(&mut bad, 8, 8, v);
                        bad
                    }
                    _ => {
                        // The SHA-256 in the header.
                        let mut bad = object.clone();
                        bad[16 + m.at.index(32)] ^= (m.value as u8).max(1);
                        bad
                    }
                };
                let header_ok = bad.len() >= 48 && get_le(&bad, 8, 8) <= 1 << 30;
                if header_ok {
                    past_header.set(past_header.get() + 1);
                }
                match log_archive::decode(key, &bad, &Crypto::none()) {
                    Ok(got) => prop_assert!(&got == raw, "{key}: decoded to other content"),
                    Err(LogError::Corrupt { key: named, .. }) => prop_assert_eq!(&named, key),
                    Err(e) => prop_assert!(false, "{key}: untyped failure {e}"),
                }
                Ok(())
            })
            .unwrap();
        let grew = vm_peak() - peak;
        eprintln!(
            "{} of {CASES} cases past the header; peak virtual size grew by {grew} bytes",
            past_header.get()
        );
        assert!(grew < ALLOC_CAP, "peak virtual size grew by {grew} bytes");
        assert!(
            past_header.get() >= CASES / 2,
            "only {} of {CASES} mutated WAL objects got past the header",
            past_header.get()
        );
    }

    /// A mutation of a zstd JSON object: kinds 0-2 on the compressed bytes
    /// (after the zstd magic), 3 and 4 on the JSON itself, 5 a number in the
    /// JSON replaced by an interesting one. Recompressed when the JSON changed.
    fn mutate_json_zst(object: &[u8], m: &Mutation) -> Vec<u8> {
        if m.kind < 3 {
            return mutate_bytes(object, 4, m);
        }
        let json = zstd::decode_all(object).unwrap();
        let json = match m.kind {
            3 | 4 => mutate_bytes(
                &json,
                0,
                &Mutation {
                    kind: m.kind - 3 + (m.pick as u8 % 2) * 2,
                    ..m.clone()
                },
            ),
            _ => {
                let text = String::from_utf8(json).unwrap();
                let numbers: Vec<(usize, usize)> = number_spans(&text);
                if numbers.is_empty() {
                    return text.into_bytes();
                }
                let (start, end) = numbers[m.at.index(numbers.len())];
                let original: u64 = text[start..end].parse().unwrap_or(0);
                let replacement = match m.pick % 4 {
                    0 => "-1".to_string(),
                    1 => "1e400".to_string(),
                    2 => "99999999999999999999999".to_string(),
                    _ => interesting(m, text.len(), original).to_string(),
                };
                format!("{}{replacement}{}", &text[..start], &text[end..]).into_bytes()
            }
        };
        zstd::bulk::compress(&json, 3).unwrap()
    }

    /// Byte spans of the unquoted numbers in a JSON text.
    fn number_spans(text: &str) -> Vec<(usize, usize)> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let (mut i, mut in_string) = (0, false);
        while i < b.len() {
            match b[i] {
                b'"' if !in_string => in_string = true,
                b'\\' if in_string => i += 1,
                b'"' => in_string = false,
                c if !in_string && c.is_ascii_digit() => {
                    let start = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    out.push((start, i));
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        out
    }

    /// Whether the mutated object still decompresses, so decoding reached
    /// the JSON parser (read at most 64 MiB, as no fixture object is near it).
    fn decompresses(bytes: &[u8]) -> bool {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(bytes)
            .and_then(|d| d.take(64 << 20).read_to_end(&mut out))
            .is_ok()
    }

    #[test]
    fn mutated_index_objects_are_refused_by_name_or_describe_blobs_inside_their_packs() {
        let indexes = objects("index");
        let peak = vm_peak();
        let past_header = Cell::new(0u32);
        runner()
            .run(&mutation(), |m| {
                let (_, object) = &indexes[m.object.index(indexes.len())];
                let bad = mutate_json_zst(object, &m);
                if decompresses(&bad) {
                    past_header.set(past_header.get() + 1);
                }
                let key = format!("index/{}", Hash256::digest(&bad));
                match IndexFile::decode(&key, &bad, &Crypto::none()) {
                    Ok(file) => {
                        for p in &file.packs {
                            for c in &p.chunks {
                                let end = c.offset.checked_add(c.length as u64);
                                prop_assert!(
                                    c.offset >= 8
                                        && end.is_some_and(|end| end <= p.size)
                                        && c.raw_length as usize <= MAX_CHUNK_LEN,
                                    "{key} accepted chunk {c:?} of pack {} ({} bytes)",
                                    p.id,
                                    p.size
                                );
                            }
                        }
                    }
                    Err(RepoError::Corrupt {
                        what, key: named, ..
                    }) => {
                        prop_assert_eq!(what, "index object");
                        prop_assert_eq!(named, key);
                    }
                    Err(e) => prop_assert!(false, "{key}: untyped failure {e}"),
                }
                Ok(())
            })
            .unwrap();
        let grew = vm_peak() - peak;
        eprintln!(
            "{} of {CASES} cases past the header; peak virtual size grew by {grew} bytes",
            past_header.get()
        );
        assert!(grew < ALLOC_CAP, "peak virtual size grew by {grew} bytes");
        assert!(
            // Half the mutations hit the compressed bytes, which then rarely
            // decompress; the other half change the JSON itself.
            past_header.get() >= CASES * 2 / 5,
            "only {} of {CASES} mutated index objects reached the JSON parser",
            past_header.get()
        );
    }

    #[test]
    fn mutated_manifests_are_refused_naming_the_snapshot_or_read_whole() {
        let manifests = objects("snapshots");
        let peak = vm_peak();
        let past_header = Cell::new(0u32);
        runner()
            .run(&mutation(), |m| {
                let (key, object) = &manifests[m.object.index(manifests.len())];
                let bad = mutate_json_zst(object, &m);
                if decompresses(&bad) {
                    past_header.set(past_header.get() + 1);
                }
                let id = SnapshotId(Hash256::digest(&bad));
                let (dir, name) = key.rsplit_once('/').unwrap();
                let key = format!("{dir}/{}-{id}", &name[..name.len() - 65]);
                match Manifest::decode(&key, &id, &bad, &Crypto::none()) {
                    // A mutation serde cannot see (a number within range, a
                    // flip inside a string) is a different, well-formed manifest.
                    Ok(manifest) => prop_assert_eq!(manifest.format, "holdfast-snapshot"),
                    Err(RepoError::Corrupt {
                        what, key: named, ..
                    }) => {
                        prop_assert_eq!(what, "snapshot manifest");
                        prop_assert_eq!(named, key);
                    }
                    Err(e) => prop_assert!(false, "{key}: untyped failure {e}"),
                }
                Ok(())
            })
            .unwrap();
        let grew = vm_peak() - peak;
        eprintln!(
            "{} of {CASES} cases past the header; peak virtual size grew by {grew} bytes",
            past_header.get()
        );
        assert!(grew < ALLOC_CAP, "peak virtual size grew by {grew} bytes");
        assert!(
            // Half the mutations hit the compressed bytes, which then rarely
            // decompress; the other half change the JSON itself.
            past_header.get() >= CASES * 2 / 5,
            "only {} of {CASES} mutated manifests reached the JSON parser",
            past_header.get()
        );
    }

    /// Real prune records as `holdfast prune` writes them: zstd compact JSON
    /// naming snapshots and packs. (The format fixture holds none.)
    fn prune_records() -> Vec<(String, Vec<u8>)> {
        use holdfast::ids::PackId;
        use holdfast::plan::PlanName;
        use holdfast::repository::prune::PruneRecord;
        (0..3u8)
            .map(|n| {
                let record = PruneRecord {
                    format: "holdfast-prune".into(),
                    version: 1,
                    plan: PlanName::new("app").unwrap(),
                    at: "2026-03-02T08:00:00.123Z".parse().unwrap(),
                    snapshots: (0..n).map(|i| SnapshotId(Hash256::digest(&[i]))).collect(),
                    packs: (0..n * 3 + 1)
                        .map(|i| PackId(Hash256::digest(&[i, n])))
                        .collect(),
                };
                let bytes = zstd::bulk::compress(&serde_json::to_vec(&record).unwrap(), 3).unwrap();
                // A record decodes to itself before any mutation.
                assert_eq!(
                    PruneRecord::decode("prunes/x", &bytes, &Crypto::none()).unwrap(),
                    record
                );
                (
                    format!("prunes/20260302T080000.123Z-{}", Hash256::digest(&bytes)),
                    bytes,
                )
            })
            .collect()
    }

    #[test]
    fn mutated_prune_records_are_refused_naming_the_record_or_read_whole() {
        use holdfast::repository::prune::PruneRecord;
        let records = prune_records();
        let peak = vm_peak();
        let past_header = Cell::new(0u32);
        let cases = 192;
        TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        })
        .run(&mutation(), |m| {
            let (key, object) = &records[m.object.index(records.len())];
            let bad = mutate_json_zst(object, &m);
            if decompresses(&bad) {
                past_header.set(past_header.get() + 1);
            }
            match PruneRecord::decode(key, &bad, &Crypto::none()) {
                // A mutation serde cannot see is another well-formed record.
                Ok(r) => prop_assert_eq!(r.format, "holdfast-prune"),
                Err(RepoError::Corrupt {
                    what, key: named, ..
                }) => {
                    prop_assert_eq!(what, "prune record");
                    prop_assert_eq!(&named, key);
                }
                Err(e) => prop_assert!(false, "{key}: untyped failure {e}"),
            }
            Ok(())
        })
        .unwrap();
        let grew = vm_peak() - peak;
        eprintln!(
            "{} of {cases} cases past the header; peak virtual size grew by {grew} bytes",
            past_header.get()
        );
        assert!(grew < ALLOC_CAP, "peak virtual size grew by {grew} bytes");
        assert!(
            past_header.get() >= cases * 2 / 5,
            "only {} of {cases} mutated prune records reached the JSON parser",
            past_header.get()
        );
    }

    /// Key objects are plain JSON (they unlock the rest) that anyone with
    /// the bucket's credentials can add: the format fixture's key object
    /// (`tests/fixtures/repo-v2`), mutated and planted under its new SHA-256
    /// as such a writer would, is either refused naming it, or read with KDF
    /// parameters inside the caps and then opens with the fixture's key only
    /// when what the unwrapping uses is unchanged. The KDF's memory is the
    /// largest allocation: peak virtual size grows by less than its cap plus
    /// a margin.
    #[test]
    fn mutated_key_objects_are_refused_by_name_or_open_only_as_the_original() {
        use holdfast::repository::crypto::{self, MAX_KDF_MEMORY_KIB};
        use holdfast::repository::keys::{read_key_object, KeyObject};
        use holdfast::store::{local::LocalStore, PutOptions, Store};

        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v2");
        let keys: Vec<_> = walkdir::WalkDir::new(format!("{fixture}/repo/objects/keys"))
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        assert_eq!(keys.len(), 1, "the fixture has one key object");
        let original_bytes = keys[0].clone();
        let original: KeyObject = serde_json::from_slice(&original_bytes).unwrap();
        let pass = std::fs::read_to_string(format!("{fixture}/repo.key")).unwrap();
        let pass = pass.trim().as_bytes().to_vec();
        let wrapped = hex::decode(&original.wrapped).unwrap();
        assert!(
            crypto::unwrap(&original.kdf, &pass, &original.repository, &wrapped)
                .unwrap()
                .is_some(),
            "the fixture's key opens its key object"
        );

        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().to_path_buf()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Resident, not virtual: Argon2id touches every byte it allocates,
        // while the virtual peak also counts address space malloc reserves
        // and never uses (it once read 330 MiB here for a 256 MiB KDF).
        let peak = vm_hwm();
        let (parsed, opened) = (Cell::new(0u32), Cell::new(0u32));
        let cases = 96;
        TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        })
        .run(&mutation(), |m| {
            let bad = match m.kind {
                0..=2 => mutate_bytes(&original_bytes, 0, &m),
                // One hex digit of the salt, the wrapped secret or the
                // repository id changed: well-formed, and must not open.
                3 | 4 => {
                    let text = String::from_utf8(original_bytes.clone()).unwrap();
                    let field =
                        ["\"salt\": \"", "\"wrapped\": \"", "\"repository\": \""][m.pick % 3];
                    let start = text.find(field).unwrap() + field.len();
                    let len = text[start..].find('"').unwrap();
                    let at = start + m.at.index(len);
                    let was = text.as_bytes()[at];
                    let hex = b"0123456789abcdef";
                    let mut now = hex[(m.value % 16) as usize];
                    if now == was {
                        now = hex[((m.value + 1) % 16) as usize];
                    }
                    let mut out = original_bytes.clone();
                    out[at] = now;
                    out
                }
                _ => {
                    let text = String::from_utf8(original_bytes.clone()).unwrap();
                    let numbers = number_spans(&text);
                    let (start, end) = numbers[m.at.index(numbers.len())];
                    let was: u64 = text[start..end].parse().unwrap_or(0);
                    let now = match m.pick % 4 {
                        0 => "-1".to_string(),
                        1 => "1e400".to_string(),
                        2 => "99999999999999999999999".to_string(),
                        _ => interesting(&m, text.len(), was).to_string(),
                    };
                    format!("{}{now}{}", &text[..start], &text[end..]).into_bytes()
                }
            };
            let id = Hash256::digest(&bad);
            let key = format!("keys/{id}");
            let opts = PutOptions {
                sha256: id,
                retention: None,
            };
            match rt.block_on(store.put(&key, bytes::Bytes::from(bad.clone()), &opts)) {
                Ok(()) | Err(holdfast::store::StoreError::AlreadyExists { .. }) => {}
                Err(e) => prop_assert!(false, "planting {key}: {e}"),
            }
            match rt.block_on(read_key_object(&store, &id)) {
                Err(RepoError::Corrupt {
                    what,
                    key: named,
                    why,
                }) => {
                    prop_assert_eq!(what, "key object");
                    prop_assert_eq!(&named, &key);
                    if !why.starts_with("cannot parse") {
                        parsed.set(parsed.get() + 1);
                    }
                }
                Err(e) => prop_assert!(false, "{key}: untyped failure {e}"),
                Ok(object) => {
                    parsed.set(parsed.get() + 1);
                    prop_assert!(object.kdf.check().is_ok());
                    prop_assert!(object.kdf.memory_kib <= MAX_KDF_MEMORY_KIB);
                    let Ok(w) = hex::decode(&object.wrapped) else {
                        return Ok(());
                    };
                    let same = object.kdf.memory_kib == original.kdf.memory_kib
                        && object.kdf.iterations == original.kdf.iterations
                        && object.kdf.parallelism == original.kdf.parallelism
                        && object.kdf.salt == original.kdf.salt
                        && object.repository == original.repository
                        && w == wrapped;
                    match crypto::unwrap(&object.kdf, &pass, &object.repository, &w) {
                        Ok(Some(_)) => {
                            opened.set(opened.get() + 1);
                            prop_assert!(same, "{key} opened though it differs: {object:?}");
                        }
                        Ok(None) => prop_assert!(!same, "{key} is the original's and did not open"),
                        Err(why) => prop_assert!(!same, "{key}: {why}"),
                    }
                }
            }
            Ok(())
        })
        .unwrap();
        let grew = vm_hwm() - peak;
        eprintln!(
            "{} of {cases} mutated key objects got past the JSON parser, {} opened; peak resident size grew by {grew} bytes",
            parsed.get(),
            opened.get()
        );
        let cap = u64::from(MAX_KDF_MEMORY_KIB) * 1024 + (64 << 20);
        assert!(grew < cap, "peak resident size grew by {grew} bytes");
        assert!(
            parsed.get() >= cases / 4,
            "only {} of {cases} mutated key objects got past the JSON parser",
            parsed.get()
        );
    }
}
