//! Index objects: which pack holds each chunk, and where in it.

use std::collections::HashMap;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use super::pack::{BlobEntry, Encoding, MAX_BUNDLE_RAW, MAX_CHUNK_LEN, PACK_MAGIC};
use super::{decode_json_zst, encode_json_zst, RepoError, FORMAT_VERSION};
use crate::ids::{ChunkId, PackId};

/// Where one chunk's blob lives, and which index object said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub blob: BlobEntry,
    /// The index object that named this location ([`Index::source`]).
    pub source: SourceId,
}

impl ChunkLocation {
    /// The same place in the same pack (whichever index object said so).
    pub fn same_place(&self, other: &ChunkLocation) -> bool {
        self.pack == other.pack && self.blob == other.blob
    }
}

/// An index object known to the in-memory [`Index`], by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u32);

/// At most this many distinct locations are kept per chunk (the first seen,
/// in listing order). Every index object a holdfast build writes for a
/// chunk names one place; a chunk has two only when two backups stored it at
/// once, a killed backup's pack is re-indexed, or somebody added an index
/// object. Duplicates of a place already known cost nothing. See
/// `docs/repository-format.md`, *Candidate locations*.
pub const MAX_CANDIDATES: usize = 8;

/// The union of all index objects, in memory.
///
/// Every distinct location any index object gives for a chunk is kept (up to
/// [`MAX_CANDIDATES`]): an index object is not authenticated, so the first
/// one listed is not more right than the others. Memory: one location per
/// chunk in `first`; only chunks with more than one distinct location have an
/// entry in `more`.
#[derive(Debug, Default, Clone)]
pub struct Index {
    first: HashMap<ChunkId, ChunkLocation>,
    more: HashMap<ChunkId, Vec<ChunkLocation>>,
    packs: HashMap<PackId, u64>,
    /// The index objects that name each pack, in listing order.
    described_by: HashMap<PackId, Vec<SourceId>>,
    /// Index object keys, by [`SourceId`].
    sources: Vec<String>,
    /// Locations dropped because their chunk already had [`MAX_CANDIDATES`].
    dropped: u64,
}

impl Index {
    /// The first location listed for `id`: where a reader tries first. Not
    /// to be trusted on its own (see [`Index::candidates`]).
    pub fn get(&self, id: &ChunkId) -> Option<&ChunkLocation> {
        self.first.get(id)
    }

    /// Every distinct location known for `id`, first listed first.
    pub fn candidates(&self, id: &ChunkId) -> impl Iterator<Item = &ChunkLocation> {
        self.first
            .get(id)
            .into_iter()
            .chain(self.more.get(id).into_iter().flatten())
    }

    /// The location of `id` when every index object naming it agrees on one
    /// place; `None` when it is unknown or its candidates disagree.
    pub fn agreed(&self, id: &ChunkId) -> Option<&ChunkLocation> {
        if self.more.contains_key(id) {
            return None;
        }
        self.first.get(id)
    }

    /// Whether some index object's locations for `id` disagree.
    pub fn is_disputed(&self, id: &ChunkId) -> bool {
        self.more.contains_key(id)
    }

    /// How many chunks have more than one distinct location.
    pub fn disputed_chunks(&self) -> usize {
        self.more.len()
    }

    /// Locations not kept because their chunk already had [`MAX_CANDIDATES`].
    pub fn dropped_locations(&self) -> u64 {
        self.dropped
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.first.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// Known packs and their sizes (the largest any index object claims: a
    /// read is cut at the size, and a claim too small would hide the pack).
    pub fn packs(&self) -> &HashMap<PackId, u64> {
        &self.packs
    }

    /// The key of the index object `source` numbers.
    pub fn source(&self, source: SourceId) -> &str {
        self.sources
            .get(source.0 as usize)
            .map(String::as_str)
            .unwrap_or("(no index object)")
    }

    /// Adds a pack's locations as coming from no index object (a backup's
    /// own packs, or a test's).
    pub fn add_pack(&mut self, pack: &IndexedPack) {
        let source = self.add_source("(this process)");
        self.add_pack_from(pack, source);
    }

    fn add_source(&mut self, key: &str) -> SourceId {
        self.sources.push(key.to_string());
        SourceId((self.sources.len() - 1) as u32)
    }

    fn add_pack_from(&mut self, pack: &IndexedPack, source: SourceId) {
        let size = self.packs.entry(pack.id).or_insert(pack.size);
        *size = (*size).max(pack.size);
        let named = self.described_by.entry(pack.id).or_default();
        if !named.contains(&source) {
            named.push(source);
        }
        for c in &pack.chunks {
            let loc = ChunkLocation {
                pack: pack.id,
                blob: c.to_blob_entry(),
                source,
            };
            let Some(first) = self.first.get(&c.id) else {
                self.first.insert(c.id, loc);
                continue;
            };
            if first.same_place(&loc) {
                continue;
            }
            let more = self.more.entry(c.id).or_default();
            if more.iter().any(|m| m.same_place(&loc)) {
                continue;
            }
            if more.len() + 1 >= MAX_CANDIDATES {
                self.dropped += 1;
                continue;
            }
            more.push(loc);
        }
    }

    /// The key of the first index object that names `pack`, if any does.
    pub fn described_by(&self, pack: &PackId) -> Option<&str> {
        self.described_by
            .get(pack)
            .and_then(|v| v.first())
            .map(|s| self.source(*s))
    }

    /// Every index object that names `pack`.
    pub fn described_by_all(&self, pack: &PackId) -> impl Iterator<Item = &str> {
        self.described_by
            .get(pack)
            .into_iter()
            .flatten()
            .map(|s| self.source(*s))
    }

    /// Adds `other`'s locations (every candidate) for chunks this index does
    /// not hold, and their packs (for restores: see
    /// `Repository::load_index_for_restore`). Chunks this index holds keep
    /// only their own candidates.
    pub fn add_fallback(&mut self, other: &Index) {
        let mut mapped: HashMap<SourceId, SourceId> = HashMap::new();
        for id in other.first.keys() {
            if self.first.contains_key(id) {
                continue;
            }
            for loc in other.candidates(id) {
                let source = *mapped
                    .entry(loc.source)
                    .or_insert_with(|| self.add_source(other.source(loc.source)));
                let moved = ChunkLocation { source, ..*loc };
                match self.first.get(id) {
                    None => {
                        self.first.insert(*id, moved);
                    }
                    Some(_) => self.more.entry(*id).or_default().push(moved),
                }
                if let Some(size) = other.packs.get(&loc.pack) {
                    let known = self.packs.entry(loc.pack).or_insert(*size);
                    *known = (*known).max(*size);
                }
                let named = self.described_by.entry(loc.pack).or_default();
                if !named.contains(&source) {
                    named.push(source);
                }
            }
        }
    }

    pub fn add_file(&mut self, key: &str, file: &IndexFile) {
        let source = self.add_source(key);
        for p in &file.packs {
            self.add_pack_from(p, source);
        }
    }
}

/// The JSON inside an `index/<id>` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<IndexedPack>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedPack {
    pub id: PackId,
    pub size: u64,
    pub chunks: Vec<IndexedChunk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedChunk {
    pub id: ChunkId,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    pub encoding: Encoding,
    /// A chunk in a format 2 bundle: where it starts in the decompressed
    /// bundle (see [`BlobEntry::bundle_offset`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_offset: Option<NonZeroU32>,
}

impl IndexedChunk {
    pub fn to_blob_entry(self) -> BlobEntry {
        BlobEntry {
            id: self.id,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
            encoding: self.encoding,
            bundle_offset: self.bundle_offset,
        }
    }
}

impl From<BlobEntry> for IndexedChunk {
    fn from(e: BlobEntry) -> Self {
        IndexedChunk {
            id: e.id,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
            encoding: e.encoding,
            bundle_offset: e.bundle_offset,
        }
    }
}

impl IndexFile {
    pub fn new(packs: Vec<IndexedPack>) -> Self {
        IndexFile {
            version: FORMAT_VERSION,
            packs,
        }
    }

    /// The stored bytes: zstd JSON, sealed under `index/` in an encrypted
    /// repository.
    pub fn encode(&self, crypto: &super::Crypto) -> Vec<u8> {
        crypto.seal("index/", encode_json_zst(self))
    }

    /// [`IndexFile::encode`] with deterministic sealing: the same packs give
    /// the same object (and name) on every run, so `holdfast repair index`
    /// run twice finds its objects present instead of adding more.
    pub fn encode_deterministic(&self, crypto: &super::Crypto) -> Vec<u8> {
        crypto.seal_deterministic("index/", encode_json_zst(self))
    }

    /// Decodes an index object, checking its bytes against the id in its key,
    /// then its authenticity.
    pub fn decode(key: &str, bytes: &[u8], crypto: &super::Crypto) -> Result<Self, RepoError> {
        let expected = key.rsplit('/').next().unwrap_or_default();
        let got = crate::ids::Hash256::digest(bytes).to_hex();
        if got != expected {
            return Err(RepoError::Corrupt {
                what: "index object",
                key: key.to_string(),
                why: format!("its SHA-256 is {got}, its name says {expected}"),
            });
        }
        let ad = super::crypto::content_addressed_ad(key);
        let plain = super::open_sealed(crypto, super::INDEX_CAP, key, ad, bytes)?;
        let file: IndexFile = decode_json_zst(super::INDEX_CAP, key, &plain)?;
        if file.version != FORMAT_VERSION {
            return Err(RepoError::Corrupt {
                what: "index object",
                key: key.to_string(),
                why: format!("unknown version {}", file.version),
            });
        }
        // Every chunk must lie inside its pack: readers slice packs by these
        // numbers, and a decoder sizes its buffer by `raw_length`.
        for p in &file.packs {
            for c in &p.chunks {
                let end = c.offset.checked_add(c.length as u64);
                let why = if c.offset < PACK_MAGIC.len() as u64 || end.is_none_or(|e| e > p.size) {
                    format!(
                        "chunk {} at offset {} ({} bytes) lies outside pack {} ({} bytes)",
                        c.id, c.offset, c.length, p.id, p.size
                    )
                } else if c.raw_length as usize > MAX_CHUNK_LEN || c.length as usize > MAX_CHUNK_LEN
                {
                    format!(
                        "chunk {} claims {} bytes ({} stored), more than a chunk can hold ({MAX_CHUNK_LEN})",
                        c.id, c.raw_length, c.length
                    )
                } else if let Some(at) = c.bundle_offset {
                    if c.encoding != Encoding::Bundle {
                        format!(
                            "chunk {} is not bundled but names a place in a bundle",
                            c.id
                        )
                    } else if at.get() as usize >= MAX_BUNDLE_RAW {
                        format!(
                            "chunk {} claims to start at byte {at} of its bundle (bundles hold at most {MAX_BUNDLE_RAW})",
                            c.id
                        )
                    } else {
                        continue;
                    }
                } else {
                    continue;
                };
                return Err(RepoError::Corrupt {
                    what: "index object",
                    key: key.to_string(),
                    why,
                });
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash256;
    use crate::repository::Crypto;

    fn object(chunks: Vec<IndexedChunk>) -> (String, Vec<u8>) {
        let bytes = IndexFile::new(vec![IndexedPack {
            id: PackId(Hash256::digest(b"pack")),
            size: 1000,
            chunks,
        }])
        .encode(&Crypto::none());
        (format!("index/{}", Hash256::digest(&bytes)), bytes)
    }

    fn chunk(encoding: Encoding, bundle_offset: Option<u32>) -> IndexedChunk {
        IndexedChunk {
            id: ChunkId(Hash256::digest(b"chunk")),
            offset: 8,
            length: 100,
            raw_length: 8192,
            encoding,
            bundle_offset: bundle_offset.and_then(NonZeroU32::new),
        }
    }

    #[test]
    fn a_place_in_a_bundle_is_kept_only_for_a_bundled_chunk_inside_a_bundle_s_size() {
        let decode = |c| {
            let (key, bytes) = object(vec![c]);
            IndexFile::decode(&key, &bytes, &Crypto::none()).map(|f| f.packs[0].chunks[0])
        };
        let bundled = chunk(Encoding::Bundle, Some(68));
        assert_eq!(decode(bundled).unwrap(), bundled);
        // Index objects written before bundle format 2 have no place.
        let (key, bytes) = object(vec![chunk(Encoding::Bundle, None)]);
        let plain = crate::repository::decode_json_zst::<serde_json::Value>(
            crate::repository::INDEX_CAP,
            &key,
            &bytes,
        )
        .unwrap();
        assert!(plain["packs"][0]["chunks"][0]
            .get("bundle_offset")
            .is_none());
        assert_eq!(
            IndexFile::decode(&key, &bytes, &Crypto::none())
                .unwrap()
                .packs[0]
                .chunks[0]
                .bundle_offset,
            None
        );
        let why = |c| match decode(c) {
            Err(RepoError::Corrupt { why, .. }) => why,
            other => panic!("accepted: {other:?}"),
        };
        assert!(why(chunk(Encoding::Zstd, Some(68))).contains("is not bundled"));
        assert!(why(chunk(Encoding::Bundle, Some(MAX_BUNDLE_RAW as u32)))
            .contains("claims to start at byte"));
    }
}
