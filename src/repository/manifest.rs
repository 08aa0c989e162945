//! Snapshot manifests: what a snapshot holds and how to put it back together.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::index::{ChunkLocation, SourceId};
use super::pack::{BlobEntry, Encoding, BUNDLE_MEMBER_MAX, MAX_BUNDLE_RAW, MAX_CHUNK_LEN};
use super::source::{EntryKind, FileId, FileStamp, SourceMetadata};
use super::{decode_json_zst, encode_json_zst, RepoError};
use crate::ids::{ChunkId, Hash256, PackId, SnapshotId};
use crate::plan::{PlanName, Tier};
use crate::store::Retention;

/// The manifest version this build writes. Version 3 (2026-12-05): a file
/// entry carries no whole-file `sha256`; its bytes are proven chunk by
/// chunk (each chunk against its id, or its blob's tag) and by its `size`.
/// Version 4 (2026-12-05): the entries are an object of their own
/// ([`ENTRIES_PREFIX`]), named from the manifest by key, SHA-256 and size,
/// so a listing reads a few hundred bytes a snapshot, not a chunk id per
/// page of the database.
/// Version 5 (2026-12-05): the manifest names the packs its chunks are in
/// (`packs`), so prune and keep-locks decide which packs a snapshot needs
/// from its manifest alone, without its entries or the chunk index.
/// Version 6 (2026-12-06): each file entry says where its chunks are
/// (`at`, runs of [`Placement`]s), so a restore reads them without the
/// chunk index.
/// Version 7 (2026-12-06): the entries object holds the tree (every entry
/// without its chunks), and the file entries' chunk lists are objects of
/// their own of about [`LIST_PART_TARGET`] each, named in order by the
/// manifest (`chunk_lists`), so a restore reads them a part at a time.
pub const MANIFEST_VERSION: u32 = 7;

/// The manifest versions this build reads: 2 (each file with its
/// whole-file SHA-256), 3, 4, 5, 6 and 7.
pub const MANIFEST_VERSIONS_READ: [u32; 6] = [2, 3, 4, 5, 6, 7];

/// The first manifest version whose chunk lists are objects apart from
/// its entries.
pub const LISTS_APART_FROM: u32 = 7;

/// About how many JSON bytes of chunk lists a chunk-list object holds: a
/// new object starts once this is reached, and one file's list is never
/// split, so an object is larger only when one file's list is (a 1 GiB
/// PostgreSQL segment, 131,072 pages, lists about 9 MB).
pub const LIST_PART_TARGET: usize = 4 << 20;

/// What a chunk-list object holds: its plan and start time make it one
/// snapshot's own, as an entries object; `first` is the number, among the
/// manifest's file entries in order, of the file its first list is for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListsFile<L> {
    format: String,
    plan: PlanName,
    started_at: DateTime<Utc>,
    first: u64,
    lists: L,
}

const LISTS_FORMAT: &str = "holdfast-chunk-lists";

/// One file entry's chunks and their places (manifest version 7), as its
/// chunk-list object holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkList {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Vec<Placement>>,
}

#[derive(Serialize)]
struct ChunkListRef<'a> {
    #[serde(skip_serializing_if = "<[ChunkId]>::is_empty")]
    chunks: std::borrow::Cow<'a, [ChunkId]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: &'a Option<Vec<Placement>>,
}

/// The stored objects of a manifest's entries: its entries object and,
/// from version 7, its chunk-list objects in order.
pub struct EncodedEntries {
    pub tree: (EntriesRef, Vec<u8>),
    pub lists: Vec<(EntriesRef, Vec<u8>)>,
}

/// What reading a version 7 manifest's chunk lists needs, apart from the
/// manifest: a restore reads them part by part while it writes.
#[derive(Debug, Clone)]
pub struct ListParts {
    /// The manifest's key, named in every error.
    pub manifest: String,
    pub plan: PlanName,
    pub started_at: DateTime<Utc>,
    pub version: u32,
    /// How many packs the manifest names (what places may number).
    pub packs: usize,
    pub parts: Vec<EntriesRef>,
    /// The manifest's file entries: one list each, in all.
    pub files: u64,
}

/// The first manifest version whose file entries place their chunks.
pub const PLACED_FROM: u32 = 6;

/// The first manifest version that names its packs.
pub const PACKS_NAMED_FROM: u32 = 5;

/// The first manifest version whose entries are an object of their own.
pub const ENTRIES_APART_FROM: u32 = 4;

/// Where entries objects live: `entries/<plan>/<time>-<sha256>`, the time
/// being the snapshot's start, as in its manifest's name.
pub const ENTRIES_PREFIX: &str = "entries/";

/// A manifest's entries object, as its manifest (version 4 on) names it.
/// The SHA-256 is of the stored bytes, so the manifest's id, a hash of its
/// own bytes, covers the entries too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesRef {
    pub key: String,
    pub sha256: Hash256,
    /// Stored bytes: read with this as its cap.
    pub size: u64,
}

impl EntriesRef {
    /// Whether its key is `entries/<plan>/<time>-<sha256>` for `plan` and
    /// its own hash. (The time is the writer's start time. It is not
    /// checked against the manifest's: the hash binds the object, and
    /// nothing reads the time from its name.)
    fn is_named_for(&self, plan: &PlanName) -> bool {
        let prefix = format!("{ENTRIES_PREFIX}{plan}/");
        let name = self.key.strip_prefix(&prefix).unwrap_or_default();
        name.ends_with(&format!("-{}", self.sha256)) && !name.contains('/')
    }

    /// Why `bytes` are not the stored bytes this names (their size and
    /// SHA-256), if they are not.
    fn mismatch(&self, bytes: &[u8]) -> Option<String> {
        let got = Hash256::digest(bytes);
        (bytes.len() as u64 != self.size || got != self.sha256).then(|| {
            format!(
                "it is {} bytes with SHA-256 {got}, its manifest says {} bytes with {}",
                bytes.len(),
                self.size,
                self.sha256
            )
        })
    }
}

/// The content of an entries object. Its plan and start time make it one
/// snapshot's own (two snapshots holding the same files still write two
/// objects), so prune deletes it with its manifest.
#[derive(Debug, Serialize, Deserialize)]
struct EntriesFile<E> {
    format: String,
    plan: PlanName,
    started_at: DateTime<Utc>,
    entries: E,
}

const ENTRIES_FORMAT: &str = "holdfast-entries";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub plan: PlanName,
    pub previous: Option<SnapshotId>,
    pub holdfast_version: String,
    pub hostname: Option<String>,
    pub source: SourceRecord,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The snapshot's own lock: every object it needs is locked at least
    /// this long ("lock coverage", checked by `verify`).
    pub retention: Option<Retention>,
    /// The retention tier it was taken for (format 1, since holdfast 0.1 with S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    pub stats: SnapshotStats,
    /// Version 4 on: where the entries are stored. The manifest object then
    /// holds no `entries`; [`super::Repository::load_manifest`] reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_object: Option<EntriesRef>,
    /// Version 5 on: every pack holding a chunk of this snapshot, as its
    /// backup found or wrote it, in ascending order. What prune keeps and
    /// keep-locks extends for the snapshot; `verify` checks that each chunk
    /// it finds is in one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs: Option<Vec<PackId>>,
    /// Version 7 on: the file entries' chunk lists, objects of their own in
    /// the entries' order ([`ListParts`]); filled into the entries when the
    /// manifest is loaded whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_lists: Option<Vec<EntriesRef>>,
    /// Inline up to version 3; from version 4, filled from the entries
    /// object when the manifest is loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<ManifestEntry>,
}

/// The manifest as stored: every field of [`Manifest`] in its order, the
/// entries left out where they are an object of their own.
#[derive(Serialize)]
struct StoredManifest<'a> {
    format: &'a str,
    version: u32,
    plan: &'a PlanName,
    previous: &'a Option<SnapshotId>,
    holdfast_version: &'a str,
    hostname: &'a Option<String>,
    source: &'a SourceRecord,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    retention: &'a Option<Retention>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: &'a Option<Tier>,
    stats: &'a SnapshotStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries_object: &'a Option<EntriesRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packs: &'a Option<Vec<PackId>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk_lists: &'a Option<Vec<EntriesRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<&'a [ManifestEntry]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub metadata: SourceMetadata,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Uncompressed bytes of all files.
    pub total_bytes: u64,
    /// Uncompressed bytes of chunks this snapshot added to the repository.
    pub new_bytes: u64,
    /// Stored (compressed) bytes of blobs this snapshot added.
    pub stored_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Hash256>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Size, mtime, ctime and inode of a regular file, so the next backup can
    /// reuse its chunks without reading it when none changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<FileStamp>,
    /// Inode and birth time of a file of pages (a PostgreSQL relation's
    /// main fork read from the data directory), whatever its age: the next
    /// backup takes a page's chunk from this entry only if the file is
    /// still this one (see `source::Pages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<FileId>,
    /// Version 6 on: where the chunks are, in their order, as runs
    /// ([`Placement`]); the pack numbers are places in the manifest's
    /// `packs`, so these belong to the manifest they were read from (a
    /// backup reusing an entry places it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Vec<Placement>>,
}

impl ManifestEntry {
    /// The entry without its chunks and their places: what a version 7
    /// entries object holds of it.
    pub fn without_chunks(&self) -> ManifestEntry {
        ManifestEntry {
            path: self.path.clone(),
            kind: self.kind,
            mode: self.mode,
            mtime_ns: self.mtime_ns,
            size: self.size,
            sha256: self.sha256,
            chunks: Vec::new(),
            target: self.target.clone(),
            stamp: self.stamp,
            file_id: self.file_id,
            at: None,
        }
    }
}

/// Where a run of a file's chunks is stored (manifest version 6): one blob
/// (`[pack, offset, length, 0 or 1, raw length]`: raw or zstd), or
/// `count` consecutive chunks of one bundle, each `raw_length` long, the
/// first starting at `bundle_offset` in the decompressed bundle
/// (`[pack, offset, length, 2, bundle offset, raw length, count]`). `pack`
/// is a place in the manifest's `packs`. See `docs/repository-format.md`,
/// *Chunk places in the entries*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub struct Placement {
    pub pack: u32,
    pub offset: u64,
    /// The blob's stored length (the whole bundle's, for a bundle).
    pub length: u32,
    pub encoding: Encoding,
    /// The chunk's length (each chunk's, in a bundle run).
    pub raw_length: u32,
    /// In a bundle: where the run's first chunk starts (never 0); else 0.
    pub bundle_offset: u32,
    /// Chunks in the run: 1 for a blob of its own.
    pub count: u32,
}

impl From<Placement> for Vec<u64> {
    fn from(p: Placement) -> Vec<u64> {
        let head = [
            p.pack as u64,
            p.offset,
            p.length as u64,
            p.encoding.to_byte() as u64,
        ];
        match p.encoding {
            Encoding::Bundle => [
                &head[..],
                &[p.bundle_offset as u64, p.raw_length as u64, p.count as u64],
            ]
            .concat(),
            _ => [&head[..], &[p.raw_length as u64]].concat(),
        }
    }
}

impl TryFrom<Vec<u64>> for Placement {
    type Error = String;
    fn try_from(v: Vec<u64>) -> Result<Self, String> {
        let small = |i: usize| {
            u32::try_from(v[i]).map_err(|_| format!("a chunk place {v:?} has {} past 2^32", v[i]))
        };
        let encoding = v
            .get(3)
            .and_then(|e| u8::try_from(*e).ok())
            .and_then(Encoding::from_byte)
            .ok_or_else(|| format!("a chunk place {v:?} has no known encoding"))?;
        let want = if encoding == Encoding::Bundle { 7 } else { 5 };
        if v.len() != want {
            return Err(format!(
                "a chunk place {v:?} has {} numbers, not {want}",
                v.len()
            ));
        }
        let (bundle_offset, raw_length, count) = match encoding {
            Encoding::Bundle => (small(4)?, small(5)?, small(6)?),
            _ => (0, small(4)?, 1),
        };
        Ok(Placement {
            pack: small(0)?,
            offset: v[1],
            length: small(2)?,
            encoding,
            raw_length,
            bundle_offset,
            count,
        })
    }
}

/// Where the chunk places of a manifest are said to come from, in
/// [`ChunkLocation::source`]: the snapshot's own manifest, not an index
/// object.
pub const FROM_MANIFEST: SourceId = SourceId(u32::MAX);

impl Placement {
    /// The place of one chunk: a blob of its own, or one place in a bundle.
    pub fn of(pack: u32, blob: &BlobEntry) -> Placement {
        Placement {
            pack,
            offset: blob.offset,
            length: blob.length,
            encoding: blob.encoding,
            raw_length: blob.raw_length,
            bundle_offset: blob.bundle_offset.map_or(0, |b| b.get()),
            count: 1,
        }
    }

    /// Adds `next` (one chunk's place) to this run when it is the next
    /// chunk of the same bundle, as long as this one; else `false`.
    pub fn extend(&mut self, next: &Placement) -> bool {
        let follows = self.encoding == Encoding::Bundle
            && next.encoding == Encoding::Bundle
            && (self.pack, self.offset, self.length, self.raw_length)
                == (next.pack, next.offset, next.length, next.raw_length)
            && self.bundle_offset as u64 + self.raw_length as u64 * self.count as u64
                == next.bundle_offset as u64;
        if follows {
            self.count += 1;
        }
        follows
    }

    /// Whether it lies where a reader may look: inside the pack, a bundle
    /// run inside a bundle's bounds; `None` if so, else why not.
    fn fault(&self, packs: usize) -> Option<String> {
        if self.pack as usize >= packs {
            return Some(format!(
                "pack number {} (the manifest names {packs})",
                self.pack
            ));
        }
        if self.offset < 8 || self.length == 0 || self.count == 0 {
            return Some(format!(
                "offset {}, length {}, {} chunks",
                self.offset, self.length, self.count
            ));
        }
        match self.encoding {
            Encoding::Bundle => {
                let end = self.bundle_offset as u64 + self.raw_length as u64 * self.count as u64;
                (self.bundle_offset < 8
                    || self.raw_length as usize > BUNDLE_MEMBER_MAX
                    || end > MAX_BUNDLE_RAW as u64)
                    .then(|| {
                        format!(
                            "{} chunks of {} bytes from offset {} in a bundle",
                            self.count, self.raw_length, self.bundle_offset
                        )
                    })
            }
            _ => (self.raw_length as usize > MAX_CHUNK_LEN)
                .then(|| format!("a chunk of {} bytes", self.raw_length)),
        }
    }

    /// The run's chunks' bytes, all told.
    fn raw_bytes(&self) -> u64 {
        self.raw_length as u64 * self.count as u64
    }
}

impl ManifestEntry {
    /// Each chunk's place, in order, from [`ManifestEntry::at`] (which the
    /// manifest's checks matched to `chunks` and `packs`); `None` without,
    /// or when `packs` is not the list they number (a reader not told it).
    pub fn placed<'a>(
        &'a self,
        packs: &'a [PackId],
    ) -> Option<impl Iterator<Item = ChunkLocation> + 'a> {
        placements(&self.chunks, self.at.as_deref()?, packs)
    }
}

/// Each of `chunks`' place, in order, from the runs `at` numbered by
/// `packs` (an entry's, or its chunk list's); `None` when a run names a
/// pack past `packs`. Where the runs hold fewer chunks than `chunks`, the
/// rest have none.
pub fn placements<'a>(
    chunks: &'a [ChunkId],
    at: &'a [Placement],
    packs: &'a [PackId],
) -> Option<impl Iterator<Item = ChunkLocation> + 'a> {
    if at.iter().any(|p| p.pack as usize >= packs.len()) {
        return None;
    }
    let mut start = 0usize;
    Some(at.iter().flat_map(move |p| {
        let pack = packs[p.pack as usize];
        let from = start;
        start += p.count as usize;
        let ids = chunks.get(from..start).unwrap_or_default();
        ids.iter().enumerate().map(move |(j, id)| ChunkLocation {
            pack,
            blob: BlobEntry {
                id: *id,
                offset: p.offset,
                length: p.length,
                raw_length: p.raw_length,
                encoding: p.encoding,
                bundle_offset: std::num::NonZeroU32::new(p.bundle_offset + p.raw_length * j as u32)
                    .filter(|_| p.encoding == Encoding::Bundle),
            },
            source: FROM_MANIFEST,
        })
    }))
}

impl Manifest {
    /// The entries under folder `prefix` (`pgdata`, `mariadb`), re-rooted at
    /// `.`, and the bytes they hold: a database engine's data directory
    /// inside a snapshot that may also hold dumps.
    /// They are moved out, not copied: the manifest holds no entries after
    /// (a chunk id per page is the largest thing a restore holds).
    pub fn take_entries_under(&mut self, prefix: &str) -> (Vec<ManifestEntry>, u64) {
        let inside = format!("{prefix}/");
        let mut total = 0;
        let entries = std::mem::take(&mut self.entries)
            .into_iter()
            .filter_map(|mut e| {
                e.path = if e.path == prefix {
                    ".".to_string()
                } else {
                    e.path.strip_prefix(&inside)?.to_string()
                };
                total += e.size.unwrap_or_default();
                Some(e)
            })
            .collect();
        (entries, total)
    }

    /// Everything but the entries.
    pub fn head(&self) -> ManifestHead {
        ManifestHead {
            format: self.format.clone(),
            version: self.version,
            plan: self.plan.clone(),
            previous: self.previous,
            started_at: self.started_at,
            finished_at: self.finished_at,
            retention: self.retention,
            tier: self.tier,
            source: self.source.clone(),
            stats: self.stats,
            entries_object: self.entries_object.clone(),
            packs: self.packs.clone(),
            chunk_lists: self.chunk_lists.clone(),
        }
    }

    fn stored(&self) -> StoredManifest<'_> {
        StoredManifest {
            format: &self.format,
            version: self.version,
            plan: &self.plan,
            previous: &self.previous,
            holdfast_version: &self.holdfast_version,
            hostname: &self.hostname,
            source: &self.source,
            started_at: self.started_at,
            finished_at: self.finished_at,
            retention: &self.retention,
            tier: &self.tier,
            stats: &self.stats,
            entries_object: &self.entries_object,
            packs: &self.packs,
            chunk_lists: &self.chunk_lists,
            entries: (self.version < ENTRIES_APART_FROM).then_some(&self.entries[..]),
        }
    }

    /// The key of this snapshot's entries object whose stored bytes hash to
    /// `sha256`.
    pub fn entries_key(&self, sha256: &Hash256) -> String {
        format!("{}{sha256}", self.entries_ad())
    }

    /// What the entries object is sealed under: its key without the hash,
    /// `entries/<plan>/<time>-`.
    fn entries_ad(&self) -> String {
        format!(
            "{ENTRIES_PREFIX}{}/{}-",
            self.plan,
            self.started_at.format(super::SNAPSHOT_TIME_FORMAT)
        )
    }

    /// The entries object of this manifest (version 4 on), refused over
    /// [`super::ENTRIES_CAP`], sealed under its key without the hash, and
    /// from version 7 its chunk-list objects of about `part_target` JSON
    /// bytes each ([`LIST_PART_TARGET`]), sealed the same way: their
    /// references (to set as `entries_object` and `chunk_lists` before the
    /// manifest is encoded) and their stored bytes.
    pub fn encode_entries(
        &self,
        crypto: &super::Crypto,
        part_target: usize,
    ) -> Result<EncodedEntries, RepoError> {
        let mut lists = Vec::new();
        let tree = self.encode_entries_each(crypto, part_target, None, &mut |r, bytes| {
            lists.push((r, bytes));
            true
        })?;
        let tree = tree.expect("the parts were all taken");
        Ok(EncodedEntries { tree, lists })
    }

    /// [`Manifest::encode_entries`], handing each chunk-list object to
    /// `part`, in order, as soon as it is sealed, so a writer can put it
    /// and let it go instead of holding every one (about 35 bytes a chunk).
    /// The chunk lists of entries with none of their own are read from
    /// `spilled` when given (a backup's, see [`super::spill`]), a part's
    /// worth at a time. Returns the entries object, or `None` when `part`
    /// said to stop (by returning false: the writer failed).
    pub fn encode_entries_each(
        &self,
        crypto: &super::Crypto,
        part_target: usize,
        spilled: Option<&super::spill::SpilledLists>,
        part: &mut dyn FnMut(EntriesRef, Vec<u8>) -> bool,
    ) -> Result<Option<(EntriesRef, Vec<u8>)>, RepoError> {
        let ad = self.entries_ad();
        let seal = |bytes: Vec<u8>| {
            let bytes = crypto.seal(&ad, bytes);
            let sha256 = Hash256::digest(&bytes);
            let r = EntriesRef {
                key: self.entries_key(&sha256),
                sha256,
                size: bytes.len() as u64,
            };
            (r, bytes)
        };
        let what = format!("the new entries object of plan {}", self.plan);
        if self.version < LISTS_APART_FROM {
            let file = EntriesFile {
                format: ENTRIES_FORMAT.into(),
                plan: self.plan.clone(),
                started_at: self.started_at,
                entries: &self.entries[..],
            };
            let bytes = super::encode_json_zst_within(super::ENTRIES_CAP, &what, &file)?;
            return Ok(Some(seal(bytes)));
        }
        let tree: Vec<ManifestEntry> = self.entries.iter().map(|e| e.without_chunks()).collect();
        let file = EntriesFile {
            format: ENTRIES_FORMAT.into(),
            plan: self.plan.clone(),
            started_at: self.started_at,
            entries: &tree[..],
        };
        let tree = seal(super::encode_json_zst_within(
            super::ENTRIES_CAP,
            &what,
            &file,
        )?);
        let what = format!("a new chunk-list object of plan {}", self.plan);
        let (mut lists, mut first, mut estimate) = (Vec::new(), 0u64, 0usize);
        let files = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::File);
        let mut put = |lists: &mut Vec<ChunkListRef<'_>>, first: &mut u64| {
            let file = ListsFile {
                format: LISTS_FORMAT.into(),
                plan: self.plan.clone(),
                started_at: self.started_at,
                first: *first,
                lists: &lists[..],
            };
            let bytes = super::encode_json_zst_within(super::LISTS_CAP, &what, &file)?;
            let (r, bytes) = seal(bytes);
            let taken = part(r, bytes);
            *first += lists.len() as u64;
            lists.clear();
            Ok::<_, RepoError>(taken)
        };
        for (i, e) in files {
            let chunks = match spilled {
                Some(spilled) if e.chunks.is_empty() => {
                    let ids = spilled.chunks_of(i).map_err(|source| RepoError::Spill {
                        dir: std::env::temp_dir().display().to_string(),
                        source,
                    })?;
                    std::borrow::Cow::Owned(ids)
                }
                _ => std::borrow::Cow::Borrowed(&e.chunks[..]),
            };
            // About the JSON: 67 bytes a chunk id, at most 45 a place.
            estimate += 8 + 67 * chunks.len() + 45 * e.at.as_ref().map_or(0, Vec::len);
            lists.push(ChunkListRef { chunks, at: &e.at });
            if estimate >= part_target {
                if !put(&mut lists, &mut first)? {
                    return Ok(None);
                }
                estimate = 0;
            }
        }
        if !lists.is_empty() && !put(&mut lists, &mut first)? {
            return Ok(None);
        }
        Ok(Some(tree))
    }

    /// What reading this manifest's chunk lists a part at a time needs
    /// (version 7 on; `None` before): `key` is the manifest's own.
    pub fn list_parts(&self, key: &str) -> Option<ListParts> {
        Some(ListParts {
            manifest: key.to_string(),
            plan: self.plan.clone(),
            started_at: self.started_at,
            version: self.version,
            packs: self.packs.as_ref().map_or(0, Vec::len),
            parts: self.chunk_lists.clone()?,
            files: self
                .entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .count() as u64,
        })
    }

    /// Every object beside the manifest that its snapshot needs: its
    /// entries object and (version 7 on) its chunk-list objects.
    pub fn entries_keys(&self) -> impl Iterator<Item = &str> {
        entries_keys(&self.entries_object, &self.chunk_lists)
    }

    /// For each file entry under folder `prefix` (as
    /// [`Manifest::take_entries_under`] takes them), its number among all
    /// the manifest's file entries: which chunk list is its own.
    pub fn file_numbers_under(&self, prefix: &str) -> Vec<u32> {
        let inside = format!("{prefix}/");
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .enumerate()
            .filter(|(_, e)| e.path == prefix || e.path.starts_with(&inside))
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Reads this manifest's entries from the stored bytes of its entries
    /// object (`bytes` fetched from `self.entries_object`'s key with its
    /// size as the cap): the hash and size its manifest gives, then its
    /// authenticity, then its format and plan, which must be the manifest's.
    /// In an encrypted repository the stored bytes are let go once opened:
    /// they are as large as the opened ones (tens of MB for a 3 GB
    /// database), and need not stay beside them while the JSON is parsed.
    pub fn decode_entries(
        &mut self,
        manifest_key: &str,
        bytes: Vec<u8>,
        crypto: &super::Crypto,
    ) -> Result<(), RepoError> {
        let r = self
            .entries_object
            .as_ref()
            .expect("called on a manifest naming an entries object");
        let corrupt = |why: String| RepoError::Corrupt {
            what: "entries object",
            key: r.key.clone(),
            why: format!("{why} (named by {manifest_key})"),
        };
        if let Some(why) = r.mismatch(&bytes) {
            return Err(corrupt(why));
        }
        let ad = super::crypto::content_addressed_ad(&r.key);
        let opened = match super::open_sealed(crypto, super::ENTRIES_CAP, &r.key, ad, &bytes)? {
            std::borrow::Cow::Owned(plain) => Some(plain),
            std::borrow::Cow::Borrowed(_) => None,
        };
        let plain = match opened {
            Some(plain) => {
                drop(bytes);
                plain
            }
            None => bytes,
        };
        let file: EntriesFile<Vec<ManifestEntry>> =
            decode_json_zst(super::ENTRIES_CAP, &r.key, &plain)?;
        if file.format != ENTRIES_FORMAT || file.plan != self.plan {
            return Err(corrupt(format!(
                "it is {} of plan {}, not entries of plan {}",
                file.format, file.plan, self.plan
            )));
        }
        if self.version >= LISTS_APART_FROM {
            if let Some(e) = file
                .entries
                .iter()
                .find(|e| !e.chunks.is_empty() || e.at.is_some())
            {
                return Err(corrupt(format!(
                    "entry {:?} holds chunks, which version {} keeps in chunk-list objects",
                    e.path, self.version
                )));
            }
        }
        check_placements(self.version, self.packs.as_deref(), &file.entries).map_err(corrupt)?;
        self.entries = file.entries;
        Ok(())
    }

    /// The associated data the manifest is sealed under: its key without the
    /// id, `snapshots/<plan>/<time>-`, so it binds the plan and start time.
    pub fn sealing_ad(&self) -> String {
        format!(
            "snapshots/{}/{}-",
            self.plan,
            self.started_at.format(super::SNAPSHOT_TIME_FORMAT)
        )
    }

    /// The stored bytes (zstd JSON, sealed in an encrypted repository) and
    /// the id they give. From version 4, the entries are not among them:
    /// the manifest names `entries_object` as it is (see
    /// [`super::Repository::put_manifest`], which writes both).
    pub fn encode(&self, crypto: &super::Crypto) -> (SnapshotId, Vec<u8>) {
        let bytes = crypto.seal(&self.sealing_ad(), encode_json_zst(&self.stored()));
        (SnapshotId(Hash256::digest(&bytes)), bytes)
    }

    /// [`Manifest::encode`] for a manifest about to be written, refusing one
    /// over [`super::MANIFEST_CAP`] (`what` names it in the error).
    pub fn encode_within_cap(
        &self,
        what: &str,
        crypto: &super::Crypto,
    ) -> Result<(SnapshotId, Vec<u8>), RepoError> {
        let bytes = super::encode_json_zst_within(super::MANIFEST_CAP, what, &self.stored())?;
        let bytes = crypto.seal(&self.sealing_ad(), bytes);
        Ok((SnapshotId(Hash256::digest(&bytes)), bytes))
    }

    /// Decodes a manifest, checking its bytes against the id in its name,
    /// then its authenticity (under its name without the id).
    pub fn decode(
        key: &str,
        id: &SnapshotId,
        bytes: &[u8],
        crypto: &super::Crypto,
    ) -> Result<Self, RepoError> {
        check_id(key, id, bytes)?;
        let ad = super::crypto::content_addressed_ad(key);
        let plain = super::open_sealed(crypto, super::MANIFEST_CAP, key, ad, bytes)?;
        let m: Manifest = decode_json_zst(super::MANIFEST_CAP, key, &plain)?;
        check_format(key, &m.format, m.version)?;
        check_entries_apart(key, &m.plan, m.version, m.entries_object.as_ref())?;
        check_packs(key, m.version, m.packs.as_deref())?;
        check_lists_apart(key, &m.plan, m.version, m.chunk_lists.as_deref())?;
        if m.entries_object.is_some() && !m.entries.is_empty() {
            return Err(RepoError::Corrupt {
                what: "snapshot manifest",
                key: key.to_string(),
                why: "it holds entries and names an entries object too".into(),
            });
        }
        Ok(m)
    }
}

/// A manifest's fields other than its entries: what the checks in
/// [`super::trust`], the listings, prune's policy and the choice of a base
/// backup need, decoded without holding the entries (a PostgreSQL
/// manifest's entries are a chunk id per 8 KiB page: 12 MB for a 3 GB
/// cluster, and a plan keeps dozens of snapshots).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ManifestHead {
    pub format: String,
    pub version: u32,
    pub plan: PlanName,
    pub previous: Option<SnapshotId>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub retention: Option<Retention>,
    #[serde(default)]
    pub tier: Option<Tier>,
    pub source: SourceRecord,
    pub stats: SnapshotStats,
    /// Version 4 on: the object holding the entries.
    #[serde(default)]
    pub entries_object: Option<EntriesRef>,
    /// Version 5 on: the packs holding its chunks ([`Manifest::packs`]).
    #[serde(default)]
    pub packs: Option<Vec<PackId>>,
    /// Version 7 on: its chunk-list objects ([`Manifest::chunk_lists`]).
    #[serde(default)]
    pub chunk_lists: Option<Vec<EntriesRef>>,
}

impl ManifestHead {
    /// Decodes a manifest's head, with the checks of [`Manifest::decode`]
    /// (authenticity included).
    pub fn decode(
        key: &str,
        id: &SnapshotId,
        bytes: &[u8],
        crypto: &super::Crypto,
    ) -> Result<Self, RepoError> {
        check_id(key, id, bytes)?;
        let ad = super::crypto::content_addressed_ad(key);
        let plain = super::open_sealed(crypto, super::MANIFEST_CAP, key, ad, bytes)?;
        let m: ManifestHead = decode_json_zst(super::MANIFEST_CAP, key, &plain)?;
        check_format(key, &m.format, m.version)?;
        check_entries_apart(key, &m.plan, m.version, m.entries_object.as_ref())?;
        check_packs(key, m.version, m.packs.as_deref())?;
        check_lists_apart(key, &m.plan, m.version, m.chunk_lists.as_deref())?;
        Ok(m)
    }

    /// Every object beside the manifest that its snapshot needs: its
    /// entries object and (version 7 on) its chunk-list objects.
    pub fn entries_keys(&self) -> impl Iterator<Item = &str> {
        entries_keys(&self.entries_object, &self.chunk_lists)
    }

    #[cfg(test)]
    pub fn example() -> Self {
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        ManifestHead {
            format: "holdfast-snapshot".into(),
            version: MANIFEST_VERSION,
            plan: PlanName::new("p").unwrap(),
            previous: None,
            started_at: at,
            finished_at: at,
            retention: None,
            tier: None,
            source: SourceRecord {
                kind: "files".into(),
                metadata: Default::default(),
            },
            stats: SnapshotStats::default(),
            entries_object: None,
            packs: Some(Vec::new()),
            chunk_lists: None,
        }
    }
}

fn entries_keys<'a>(
    entries: &'a Option<EntriesRef>,
    lists: &'a Option<Vec<EntriesRef>>,
) -> impl Iterator<Item = &'a str> {
    entries
        .iter()
        .chain(lists.iter().flatten())
        .map(|r| r.key.as_str())
}

fn check_id(key: &str, id: &SnapshotId, bytes: &[u8]) -> Result<(), RepoError> {
    let got = Hash256::digest(bytes);
    if got != id.0 {
        return Err(RepoError::Corrupt {
            what: "snapshot manifest",
            key: key.to_string(),
            why: format!(
                "its SHA-256 is {got}, its name says {} ({} bytes; truncated or altered)",
                id,
                bytes.len()
            ),
        });
    }
    Ok(())
}

fn check_format(key: &str, format: &str, version: u32) -> Result<(), RepoError> {
    if format != "holdfast-snapshot" || !MANIFEST_VERSIONS_READ.contains(&version) {
        return Err(RepoError::Corrupt {
            what: "snapshot manifest",
            key: key.to_string(),
            why: format!(
                "unknown format {format} version {version} (this holdfast reads holdfast-snapshot versions {} to {})",
                MANIFEST_VERSIONS_READ[0],
                MANIFEST_VERSIONS_READ[MANIFEST_VERSIONS_READ.len() - 1]
            ),
        });
    }
    Ok(())
}

/// Version 4 on, a manifest names its entries object, under its plan's
/// prefix and named by its hash (`entries/<plan>/<time>-<sha256>`); before,
/// it names none ([`EntriesRef::is_named_for`]).
fn check_entries_apart(
    key: &str,
    plan: &PlanName,
    version: u32,
    entries: Option<&EntriesRef>,
) -> Result<(), RepoError> {
    let why = match (version >= ENTRIES_APART_FROM, entries) {
        (true, None) => "it names no entries object".to_string(),
        (false, Some(_)) => format!("version {version} names an entries object"),
        (false, None) => return Ok(()),
        (true, Some(r)) if r.is_named_for(plan) => return Ok(()),
        (true, Some(r)) => format!(
            "it names the entries object {}, which is not named {ENTRIES_PREFIX}{plan}/<time>-{}",
            r.key, r.sha256
        ),
    };
    Err(RepoError::Corrupt {
        what: "snapshot manifest",
        key: key.to_string(),
        why,
    })
}

/// From version 5 a manifest names its packs, each once, in ascending order
/// (one way to write a set, so its bytes and id are the backup's alone);
/// before, it names none.
fn check_packs(key: &str, version: u32, packs: Option<&[PackId]>) -> Result<(), RepoError> {
    let why = match (version >= PACKS_NAMED_FROM, packs) {
        (true, None) => "it names no packs".to_string(),
        (false, Some(_)) => format!("version {version} names packs"),
        (false, None) => return Ok(()),
        (true, Some(p)) => match p.windows(2).find(|w| w[0] >= w[1]) {
            None => return Ok(()),
            Some(w) => format!(
                "its packs are not each named once in ascending order: {} before {}",
                w[0], w[1]
            ),
        },
    };
    Err(RepoError::Corrupt {
        what: "snapshot manifest",
        key: key.to_string(),
        why,
    })
}

/// From version 7 a manifest names its chunk-list objects (none for a
/// snapshot without files), each under its plan's entries prefix and named
/// by its hash, as its entries object; before, it names none.
fn check_lists_apart(
    key: &str,
    plan: &PlanName,
    version: u32,
    lists: Option<&[EntriesRef]>,
) -> Result<(), RepoError> {
    let why = match (version >= LISTS_APART_FROM, lists) {
        (true, None) => "it names no chunk-list objects".to_string(),
        (false, Some(_)) => format!("version {version} names chunk-list objects"),
        (false, None) => return Ok(()),
        (true, Some(parts)) => match parts.iter().find(|r| !r.is_named_for(plan)) {
            None => return Ok(()),
            Some(r) => format!(
                "it names the chunk-list object {}, which is not named {ENTRIES_PREFIX}{plan}/<time>-{}",
                r.key, r.sha256
            ),
        }
    };
    Err(RepoError::Corrupt {
        what: "snapshot manifest",
        key: key.to_string(),
        why,
    })
}

/// Version 6 on, a file entry's chunk places (`at`) must cover its chunks
/// exactly, add up to its size and lie where a reader may look, in packs
/// the manifest names; before, there are none. Checked before anything is
/// read from them, so a reader may index `packs` and `chunks` by them.
fn check_placements(
    version: u32,
    packs: Option<&[PackId]>,
    entries: &[ManifestEntry],
) -> Result<(), String> {
    let packs = packs.map_or(0, |p| p.len());
    entries
        .iter()
        .try_for_each(|e| check_places(version, packs, e))
}

/// [`check_placements`] for one entry, in a manifest naming `packs` packs.
fn check_places(version: u32, packs: usize, e: &ManifestEntry) -> Result<(), String> {
    let Some(at) = &e.at else { return Ok(()) };
    let fault = if version < PLACED_FROM {
        Some(format!("version {version} places chunks"))
    } else if e.kind != EntryKind::File {
        Some("it is not a file".to_string())
    } else if let Some(why) = at.iter().find_map(|p| p.fault(packs)) {
        Some(format!("a chunk place with {why}"))
    } else {
        let chunks: u64 = at.iter().map(|p| p.count as u64).sum();
        let bytes: u64 = at.iter().map(Placement::raw_bytes).sum();
        if chunks != e.chunks.len() as u64 {
            Some(format!(
                "its places are for {chunks} chunks, it has {}",
                e.chunks.len()
            ))
        } else {
            // (A file without a size is refused by every reader.)
            e.size
                .filter(|s| *s != bytes)
                .map(|size| format!("its places hold {bytes} bytes, its size is {size}"))
        }
    };
    match fault {
        Some(why) => Err(format!("entry {:?}: {why}", e.path)),
        None => Ok(()),
    }
}

impl ListParts {
    /// Reads part `part` from its stored `bytes` (fetched with its size as
    /// the cap): the hash and size the manifest gives, its authenticity,
    /// its format, plan and start, and that its first list is for file
    /// number `first`. Blocking (decompression): off async workers.
    pub fn decode(
        &self,
        part: usize,
        first: u64,
        bytes: Vec<u8>,
        crypto: &super::Crypto,
    ) -> Result<Vec<ChunkList>, RepoError> {
        let started_at = self.started_at;
        let r = &self.parts[part];
        let corrupt = |why: String| RepoError::Corrupt {
            what: "chunk-list object",
            key: r.key.clone(),
            why: format!("{why} (named by {})", self.manifest),
        };
        if let Some(why) = r.mismatch(&bytes) {
            return Err(corrupt(why));
        }
        let ad = super::crypto::content_addressed_ad(&r.key);
        let plain = super::open_sealed(crypto, super::LISTS_CAP, &r.key, ad, &bytes)?;
        let file: ListsFile<Vec<ChunkList>> = decode_json_zst(super::LISTS_CAP, &r.key, &plain)?;
        if file.format != LISTS_FORMAT || file.plan != self.plan || file.started_at != started_at {
            return Err(corrupt(format!(
                "it is {} of plan {} started {}, not chunk lists of plan {} started {}",
                file.format, file.plan, file.started_at, self.plan, started_at
            )));
        }
        if file.first != first {
            return Err(corrupt(format!(
                "its lists start at file {}, where part {part} of its manifest starts at file {first}",
                file.first
            )));
        }
        if first + file.lists.len() as u64 > self.files {
            return Err(corrupt(format!(
                "it lists files {first} to {}, its manifest has {} files",
                first + file.lists.len() as u64 - 1,
                self.files
            )));
        }
        Ok(file.lists)
    }

    /// Gives file entry `e` its chunk list from part `part`, checking its
    /// places against it as [`check_placements`] does.
    pub fn fill(
        &self,
        part: usize,
        e: &mut ManifestEntry,
        list: ChunkList,
    ) -> Result<(), RepoError> {
        e.chunks = list.chunks;
        e.at = list.at;
        check_places(self.version, self.packs, e).map_err(|why| RepoError::Corrupt {
            what: "chunk-list object",
            key: self.parts[part].key.clone(),
            why: format!("{why} (named by {})", self.manifest),
        })
    }

    /// Fills part `part`'s `lists` (the first of them for file number
    /// `first`) into the file entries of `entries` from index `from` on, in
    /// order, stepping over entries of other kinds; returns the index after
    /// the last entry filled, where the next part's files are looked for.
    pub fn fill_files(
        &self,
        part: usize,
        lists: Vec<ChunkList>,
        entries: &mut [ManifestEntry],
        from: usize,
        first: u64,
    ) -> Result<usize, RepoError> {
        let count = lists.len() as u64;
        let mut at = from;
        for list in lists {
            while entries.get(at).is_some_and(|e| e.kind != EntryKind::File) {
                at += 1;
            }
            let Some(e) = entries.get_mut(at) else {
                return Err(self.miscounted(first + count));
            };
            self.fill(part, e, list)?;
            at += 1;
        }
        Ok(at)
    }

    /// The error for lists that do not come to one per file entry.
    pub fn miscounted(&self, lists: u64) -> RepoError {
        RepoError::Corrupt {
            what: "snapshot manifest",
            key: self.manifest.clone(),
            why: format!(
                "its chunk-list objects hold {lists} lists, it has {} file entries",
                self.files
            ),
        }
    }
}

/// A snapshot as its object name describes it, before its manifest is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    pub key: String,
    pub id: SnapshotId,
    pub started_at: DateTime<Utc>,
}

impl SnapshotRef {
    /// Parses `snapshots/<plan>/<YYYYMMDDTHHMMSS.fffZ>-<id>`.
    pub fn from_key(key: &str) -> Option<Self> {
        let name = key.rsplit('/').next()?;
        let (time, id) = name.split_once('-')?;
        let started_at = chrono::NaiveDateTime::parse_from_str(time, super::SNAPSHOT_TIME_FORMAT)
            .ok()?
            .and_utc();
        Some(SnapshotRef {
            key: key.to_string(),
            id: id.parse().ok()?,
            started_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_2_to_7_are_read_and_others_refused_by_number() {
        assert_eq!(MANIFEST_VERSION, 7, "what a backup writes");
        for v in [2, 3, 4, 5, 6, 7] {
            check_format("snapshots/p/x", "holdfast-snapshot", v).unwrap();
        }
        for v in [1, 8] {
            let e = check_format("snapshots/p/x", "holdfast-snapshot", v).unwrap_err();
            let said = e.to_string();
            assert!(
                said.contains(&format!("version {v}")) && said.contains("snapshots/p/x"),
                "{said}"
            );
        }
        assert!(check_format("snapshots/p/x", "holdfast-index", 3).is_err());
    }

    /// A version 6 manifest: its entries object holds the chunk lists.
    fn example() -> Manifest {
        let h = ManifestHead::example();
        Manifest {
            format: h.format,
            version: 6,
            plan: h.plan,
            previous: None,
            holdfast_version: "0".into(),
            hostname: None,
            source: h.source,
            started_at: h.started_at,
            finished_at: h.finished_at,
            retention: None,
            tier: None,
            stats: h.stats,
            entries_object: None,
            packs: Some(vec![PackId(Hash256([1; 32])), PackId(Hash256([2; 32]))]),
            chunk_lists: None,
            entries: vec![ManifestEntry {
                path: "a".into(),
                kind: EntryKind::File,
                mode: 0o600,
                mtime_ns: None,
                size: Some(3),
                sha256: None,
                chunks: vec![ChunkId(Hash256::digest(b"abc"))],
                target: None,
                stamp: None,
                file_id: None,
                at: None,
            }],
        }
    }

    #[test]
    fn version_4_stores_the_entries_apart_and_reads_them_back_only_by_hash_and_plan() {
        let crypto = crate::repository::Crypto::none();
        let mut m = example();
        let (r, bytes) = m.encode_entries(&crypto, LIST_PART_TARGET).unwrap().tree;
        assert_eq!(
            r.key,
            format!("entries/p/20261201T100000.000Z-{}", r.sha256)
        );
        assert_eq!(r.size, bytes.len() as u64);
        m.entries_object = Some(r.clone());
        let (id, stored) = m.encode(&crypto);
        let key = "snapshots/p/20261201T100000.000Z-x";
        let mut back = Manifest::decode(key, &id, &stored, &crypto).unwrap();
        assert!(
            back.entries.is_empty(),
            "the manifest object holds no entries"
        );
        let head = ManifestHead::decode(key, &id, &stored, &crypto).unwrap();
        assert_eq!(head.entries_object, Some(r.clone()));
        back.decode_entries(key, bytes.clone(), &crypto).unwrap();
        assert_eq!(back, m);

        // Other bytes than the manifest names: refused by hash, naming both.
        let mut flipped = bytes.clone();
        flipped[5] ^= 1;
        let e = back
            .decode_entries(key, flipped, &crypto)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&r.key) && e.contains(key), "{e}");
        // Another plan's entries, even with a matching hash.
        let mut other = example();
        other.plan = PlanName::new("q").unwrap();
        let (theirs, their_bytes) = other
            .encode_entries(&crypto, LIST_PART_TARGET)
            .unwrap()
            .tree;
        back.entries_object = Some(EntriesRef {
            key: format!("entries/p/20261201T100000.000Z-{}", theirs.sha256),
            ..theirs
        });
        let e = back
            .decode_entries(key, their_bytes, &crypto)
            .unwrap_err()
            .to_string();
        assert!(e.contains("of plan q"), "{e}");
    }

    #[test]
    fn a_version_4_manifest_names_an_entries_object_of_its_own_plan_and_earlier_ones_none() {
        let plan = PlanName::new("p").unwrap();
        let r = |key: &str| EntriesRef {
            key: key.into(),
            sha256: Hash256([7; 32]),
            size: 1,
        };
        let good = r(&format!(
            "entries/p/20261201T100000.000Z-{}",
            Hash256([7; 32])
        ));
        check_entries_apart("k", &plan, 4, Some(&good)).unwrap();
        check_entries_apart("k", &plan, 3, None).unwrap();
        for (version, named) in [
            (4, None),
            (3, Some(good.clone())),
            (4, Some(r("packs/ab"))),
            (4, Some(r(&good.key.replace("entries/p/", "entries/q/")))),
            (4, Some(r(&good.key.replace("-0707", "-0808")))),
            (4, Some(r(&good.key.replace("entries/p/", "entries/p/x/")))),
        ] {
            let e = check_entries_apart("snapshots/p/k", &plan, version, named.as_ref());
            let said = e.unwrap_err().to_string();
            assert!(said.contains("snapshots/p/k"), "{said}");
        }
    }

    #[test]
    fn a_version_5_manifest_names_its_packs_once_each_in_order_and_earlier_ones_none() {
        let (a, b) = (PackId(Hash256([1; 32])), PackId(Hash256([2; 32])));
        check_packs("k", 5, Some(&[a, b])).unwrap();
        check_packs("k", 5, Some(&[])).unwrap();
        check_packs("k", 4, None).unwrap();
        for (version, packs, why) in [
            (5, None, "names no packs".to_string()),
            (4, Some(vec![a]), "version 4 names packs".to_string()),
            (5, Some(vec![b, a]), format!("{b} before {a}")),
            (5, Some(vec![a, a]), format!("{a} before {a}")),
        ] {
            let e = check_packs("snapshots/p/k", version, packs.as_deref());
            let said = e.unwrap_err().to_string();
            assert!(
                said.contains("snapshots/p/k") && said.contains(&why),
                "{said}"
            );
        }
        // Through decoding: the stored manifest is refused by name.
        let crypto = crate::repository::Crypto::none();
        let mut m = example();
        m.packs = Some(vec![b, a]);
        m.entries_object = Some(m.encode_entries(&crypto, LIST_PART_TARGET).unwrap().tree.0);
        let (id, stored) = m.encode(&crypto);
        let key = "snapshots/p/20261201T100000.000Z-x";
        let e = ManifestHead::decode(key, &id, &stored, &crypto).unwrap_err();
        assert!(e.to_string().contains("ascending order"), "{e}");
        assert!(Manifest::decode(key, &id, &stored, &crypto).is_err());
    }

    /// A bundle run of `n` pages from bundle offset 12, in pack number `pack`.
    fn pages(pack: u32, n: u32) -> Placement {
        Placement {
            pack,
            offset: 8,
            length: 4000,
            encoding: Encoding::Bundle,
            raw_length: 8192,
            bundle_offset: 12,
            count: n,
        }
    }

    #[test]
    fn a_version_6_entry_places_its_chunks_in_runs_as_short_arrays() {
        let run = pages(1, 15);
        let json = serde_json::to_string(&run).unwrap();
        assert_eq!(json, "[1,8,4000,2,12,8192,15]");
        assert_eq!(serde_json::from_str::<Placement>(&json).unwrap(), run);
        let alone = Placement {
            encoding: Encoding::Zstd,
            raw_length: 100_000,
            bundle_offset: 0,
            count: 1,
            ..run
        };
        let json = serde_json::to_string(&alone).unwrap();
        assert_eq!(json, "[1,8,4000,1,100000]");
        assert_eq!(serde_json::from_str::<Placement>(&json).unwrap(), alone);
        for bad in [
            "[1,8,4000,2,12,8192]",
            "[1,8,4000,1,5,6]",
            "[1,8,4000,3,5]",
            "[1,8,4000,0,4294967296]",
            "[]",
        ] {
            assert!(serde_json::from_str::<Placement>(bad).is_err(), "{bad}");
        }

        // Expanded to one place per chunk, a bundle's pages one after another.
        let mut e = example().entries.remove(0);
        let ids: Vec<ChunkId> = (0..3u8).map(|i| ChunkId(Hash256([i; 32]))).collect();
        e.chunks = ids.clone();
        e.size = Some(3 * 8192);
        e.at = Some(vec![pages(1, 2), pages(0, 1)]);
        let packs = [PackId(Hash256([1; 32])), PackId(Hash256([2; 32]))];
        let got: Vec<(PackId, ChunkId, u32)> = e
            .placed(&packs)
            .unwrap()
            .map(|l| (l.pack, l.blob.id, l.blob.bundle_offset.unwrap().get()))
            .collect();
        assert_eq!(
            got,
            vec![
                (packs[1], ids[0], 12),
                (packs[1], ids[1], 12 + 8192),
                (packs[0], ids[2], 12)
            ]
        );
        assert!(e.placed(&packs[..1]).is_none(), "another manifest's packs");
        check_placements(6, Some(&packs), std::slice::from_ref(&e)).unwrap();
    }

    #[test]
    fn chunk_places_that_do_not_fit_the_entry_or_the_packs_are_refused_by_entry() {
        let packs = [PackId(Hash256([1; 32])), PackId(Hash256([2; 32]))];
        let mut e = example().entries.remove(0);
        e.chunks = vec![e.chunks[0]; 2];
        e.size = Some(2 * 8192);
        let with = |at: Vec<Placement>, f: &dyn Fn(&mut ManifestEntry)| {
            let mut e = e.clone();
            e.at = Some(at);
            f(&mut e);
            e
        };
        let keep = |_: &mut ManifestEntry| {};
        check_placements(6, Some(&packs), &[with(vec![pages(1, 2)], &keep)]).unwrap();
        for (version, entry, why) in [
            (5, with(vec![pages(1, 2)], &keep), "version 5 places chunks"),
            (6, with(vec![pages(2, 2)], &keep), "pack number 2"),
            (
                6,
                with(vec![pages(1, 1)], &keep),
                "places are for 1 chunks, it has 2",
            ),
            (
                6,
                with(vec![pages(1, 1), pages(0, 1)], &|e| e.size = Some(3)),
                "hold 16384 bytes, its size is 3",
            ),
            (
                6,
                with(
                    vec![Placement {
                        offset: 4,
                        ..pages(1, 2)
                    }],
                    &keep,
                ),
                "offset 4",
            ),
            (
                6,
                with(
                    vec![Placement {
                        bundle_offset: 4 << 20,
                        ..pages(1, 2)
                    }],
                    &keep,
                ),
                "in a bundle",
            ),
            (
                6,
                with(vec![pages(1, 2)], &|e| e.kind = EntryKind::Dir),
                "not a file",
            ),
        ] {
            let said = check_placements(version, Some(&packs), &[entry]).unwrap_err();
            assert!(said.contains("entry \"a\"") && said.contains(why), "{said}");
        }

        // Through decoding: the entries object is refused, naming it and its manifest.
        let crypto = crate::repository::Crypto::none();
        let mut m = example();
        m.version = 6;
        m.entries = vec![with(vec![pages(1, 1)], &keep)];
        let (r, bytes) = m.encode_entries(&crypto, LIST_PART_TARGET).unwrap().tree;
        m.entries_object = Some(r.clone());
        let e = m
            .decode_entries("snapshots/p/k", bytes, &crypto)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&r.key) && e.contains("snapshots/p/k") && e.contains("1 chunks"),
            "{e}"
        );
    }

    /// Version 7: the entries object holds the tree; the chunk lists are
    /// objects of their own, cut at about 4 MiB of JSON without splitting
    /// a file's list, read back in the manifest's order, each checked.
    #[test]
    fn version_7_keeps_the_chunk_lists_in_objects_of_their_own_read_back_in_order() {
        let crypto = crate::repository::Crypto::none();
        let key = "snapshots/p/20261201T100000.000Z-x";
        let mut m = example();
        m.version = 7;
        let file = |path: &str, chunks: usize| ManifestEntry {
            path: path.into(),
            size: Some(chunks as u64 * 8192),
            chunks: (0..chunks)
                .map(|i| ChunkId(Hash256::digest(&(i as u64).to_le_bytes())))
                .collect(),
            // (A bundle run holds at most 4 MiB: the big file is unplaced.)
            at: (1..=15)
                .contains(&chunks)
                .then(|| vec![pages(1, chunks as u32)]),
            ..m.entries[0].clone()
        };
        let mut dir = file("d", 0);
        (dir.kind, dir.size, dir.at) = (EntryKind::Dir, None, None);
        // 70,000 ids are over 4 MiB of JSON: a part of their own.
        m.entries = vec![
            dir,
            file("d/big", 70_000),
            file("d/empty", 0),
            file("d/small", 3),
        ];
        let encoded = m.encode_entries(&crypto, LIST_PART_TARGET).unwrap();
        assert_eq!(encoded.lists.len(), 2, "the big list, then the rest");
        let (tree, tree_bytes) = encoded.tree.clone();
        let mut back = m.clone();
        back.entries_object = Some(tree);
        back.chunk_lists = Some(encoded.lists.iter().map(|(r, _)| r.clone()).collect());
        back.decode_entries(key, tree_bytes.clone(), &crypto)
            .unwrap();
        assert!(back
            .entries
            .iter()
            .all(|e| e.chunks.is_empty() && e.at.is_none()));
        assert_eq!(
            back.entries[1].size, m.entries[1].size,
            "the tree keeps sizes"
        );
        let parts = back.list_parts(key).unwrap();
        assert_eq!(parts.files, 3);
        let read = |i: usize, first: u64, bytes: Vec<u8>| parts.decode(i, first, bytes, &crypto);
        let first = read(0, 0, encoded.lists[0].1.clone()).unwrap();
        let rest = read(1, 1, encoded.lists[1].1.clone()).unwrap();
        let mut files = back
            .entries
            .iter_mut()
            .filter(|e| e.kind == EntryKind::File);
        for (part, list) in [(0, first), (1, rest)]
            .into_iter()
            .flat_map(|(p, l)| l.into_iter().map(move |x| (p, x)))
        {
            parts.fill(part, files.next().unwrap(), list).unwrap();
        }
        assert_eq!(back.entries, m.entries, "whole again");

        // Out of order (the second part where the first belongs), another
        // object's bytes, a list whose places do not fit its entry: each
        // refused, naming the object and the manifest.
        let e = read(0, 0, encoded.lists[1].1.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&encoded.lists[0].0.key) && e.contains(key),
            "{e}"
        );
        let mut swapped = parts.clone();
        swapped.parts.swap(0, 1);
        let e = swapped
            .decode(0, 0, encoded.lists[1].1.clone(), &crypto)
            .unwrap_err()
            .to_string();
        assert!(e.contains("start at file 1") && e.contains(key), "{e}");
        let mut short = back.entries[3].without_chunks();
        let e = parts
            .fill(
                1,
                &mut short,
                ChunkList {
                    chunks: m.entries[3].chunks[..2].to_vec(),
                    at: m.entries[3].at.clone(),
                },
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d/small") && e.contains(&encoded.lists[1].0.key),
            "{e}"
        );
        assert!(parts.miscounted(1).to_string().contains("1 lists"));

        // A tree holding a chunk list is refused; so is a version 6
        // manifest naming chunk lists, and a version 7 one naming none.
        let mut holding = m.clone();
        holding.version = 6;
        let (r, bytes) = holding
            .encode_entries(&crypto, LIST_PART_TARGET)
            .unwrap()
            .tree;
        let mut as_7 = back.clone();
        as_7.entries_object = Some(r);
        let e = as_7
            .decode_entries(key, bytes, &crypto)
            .unwrap_err()
            .to_string();
        assert!(e.contains("keeps in chunk-list objects"), "{e}");
        let plan = PlanName::new("p").unwrap();
        let named = back.chunk_lists.clone().unwrap();
        check_lists_apart(key, &plan, 7, Some(&named)).unwrap();
        check_lists_apart(key, &plan, 7, Some(&[])).unwrap();
        assert!(check_lists_apart(key, &plan, 6, Some(&named)).is_err());
        assert!(check_lists_apart(key, &plan, 7, None).is_err());
        let mut elsewhere = named.clone();
        elsewhere[1].key = elsewhere[1].key.replace("entries/p/", "entries/q/");
        let e = check_lists_apart(key, &plan, 7, Some(&elsewhere)).unwrap_err();
        assert!(e.to_string().contains("entries/q/"), "{e}");
    }
}
