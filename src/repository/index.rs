//! Index objects: which pack holds each chunk, and where in it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::pack::{BlobEntry, Encoding, MAX_CHUNK_LEN, PACK_MAGIC};
use super::{decode_json_zst, encode_json_zst, RepoError, FORMAT_VERSION};
use crate::ids::{ChunkId, PackId};

/// Where one chunk's blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub blob: BlobEntry,
}

/// The union of all index objects, in memory.
#[derive(Debug, Default, Clone)]
pub struct Index {
    chunks: HashMap<ChunkId, ChunkLocation>,
    packs: HashMap<PackId, u64>,
    /// The index object that first named each pack.
    described_by: HashMap<PackId, String>,
}

impl Index {
    pub fn get(&self, id: &ChunkId) -> Option<&ChunkLocation> {
        self.chunks.get(id)
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Known packs and their sizes.
    pub fn packs(&self) -> &HashMap<PackId, u64> {
        &self.packs
    }

    pub fn add_pack(&mut self, pack: &IndexedPack) {
        self.packs.insert(pack.id, pack.size);
        for c in &pack.chunks {
            self.chunks.entry(c.id).or_insert(ChunkLocation {
                pack: pack.id,
                blob: c.to_blob_entry(),
            });
        }
    }

    /// The key of the index object that names `pack`, if any does.
    pub fn described_by(&self, pack: &PackId) -> Option<&str> {
        self.described_by.get(pack).map(String::as_str)
    }

    pub fn add_file(&mut self, key: &str, file: &IndexFile) {
        for p in &file.packs {
            self.described_by
                .entry(p.id)
                .or_insert_with(|| key.to_string());
            self.add_pack(p);
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
}

impl IndexedChunk {
    pub fn to_blob_entry(self) -> BlobEntry {
        BlobEntry {
            id: self.id,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
            encoding: self.encoding,
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
