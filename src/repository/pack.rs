//! Pack objects: many blobs, then a trailer that makes the pack
//! self-describing. Byte layout in `docs/repository-format.md`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::crypto::{blob_ad, Crypto, PACK_TRAILER_AD};
use crate::ids::{ChunkId, Hash256, PackId};

/// Pack format 1. In an encrypted repository (format 2) each blob and the
/// trailer are sealed; the config says which, not the pack.
pub const PACK_MAGIC: &[u8; 8] = b"HFPACK\x00\x01";
pub const TRAILER_MAGIC: &[u8; 8] = b"HFPACKTR";
pub const TRAILER_ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 1;
pub const FOOTER_LEN: usize = 4 + 8;
/// No chunk is larger than this (FastCDC's largest maximum size).
pub const MAX_CHUNK_LEN: usize = 16 * 1024 * 1024;

/// How a blob's bytes encode its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Raw,
    Zstd,
}

impl Encoding {
    fn to_byte(self) -> u8 {
        match self {
            Encoding::Raw => 0,
            Encoding::Zstd => 1,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

/// One blob's place in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    pub encoding: Encoding,
}

/// A chunk made ready for a pack: its id and its encoded bytes.
#[derive(Debug)]
pub struct Blob {
    pub id: ChunkId,
    pub raw_length: u32,
    pub encoding: Encoding,
    pub data: Vec<u8>,
}

/// Compresses a chunk, keeping the raw bytes when zstd would not shrink them,
/// then seals it (compression first: ciphertext does not compress).
pub fn encode_chunk(id: ChunkId, raw: &[u8], level: i32, crypto: &Crypto) -> Blob {
    let compressed = zstd_compress(raw, level);
    let (encoding, data) = match compressed {
        Some(c) if c.len() < raw.len() => (Encoding::Zstd, c),
        _ => (Encoding::Raw, raw.to_vec()),
    };
    let data = crypto.seal(&blob_ad(&id), data);
    Blob {
        id,
        raw_length: raw.len() as u32,
        encoding,
        data,
    }
}

fn zstd_compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    thread_local! {
        static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            let mut c = zstd::bulk::Compressor::new(level).ok()?;
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(false))
                .ok()?;
            c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
                .ok()?;
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().expect("set above");
        c.compress(raw).ok()
    })
}

/// Why a blob could not be turned back into its chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("{0}")]
    Unauthenticated(super::crypto::OpenError),
    #[error("cannot decompress: {0}")]
    Decompress(String),
    #[error("decoded to {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("content hash is {got}, expected {expected}")]
    Hash { got: Hash256, expected: Hash256 },
}

/// Decodes a blob and checks it against its chunk id.
pub fn decode_blob(entry: &BlobEntry, data: &[u8], crypto: &Crypto) -> Result<Vec<u8>, BlobError> {
    decode_blob_checked(entry, data, true, crypto)
}

/// Decodes a blob; with `check_hash` false only its length is checked (for
/// callers that verify the whole stream's SHA-256 instead).
pub fn decode_blob_checked(
    entry: &BlobEntry,
    data: &[u8],
    check_hash: bool,
    crypto: &Crypto,
) -> Result<Vec<u8>, BlobError> {
    // A damaged index or trailer must not make us allocate gigabytes.
    if entry.raw_length as usize > MAX_CHUNK_LEN {
        return Err(BlobError::Length {
            got: entry.raw_length as usize,
            expected: MAX_CHUNK_LEN,
        });
    }
    // Authenticated before anything else reads it: a planted blob is refused
    // before it can reach the decompressor.
    let data = crypto
        .open(&blob_ad(&entry.id), data)
        .map_err(BlobError::Unauthenticated)?;
    let raw = match entry.encoding {
        Encoding::Raw => data.into_owned(),
        Encoding::Zstd => zstd_decompress(&data, entry.raw_length as usize)
            .map_err(|e| BlobError::Decompress(e.to_string()))?,
    };
    if raw.len() != entry.raw_length as usize {
        return Err(BlobError::Length {
            got: raw.len(),
            expected: entry.raw_length as usize,
        });
    }
    if !check_hash {
        return Ok(raw);
    }
    let got = crypto.chunk_id(&raw).0;
    if got != entry.id.0 {
        return Err(BlobError::Hash {
            got,
            expected: entry.id.0,
        });
    }
    Ok(raw)
}

fn zstd_decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().expect("set above").decompress(data, capacity)
    })
}

/// Accumulates blobs into one pack.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(PACK_MAGIC);
        PackBuilder {
            buf,
            entries: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes so far, trailer excluded.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn add(&mut self, blob: Blob) {
        self.entries.push(BlobEntry {
            id: blob.id,
            offset: self.buf.len() as u64,
            length: blob.data.len() as u32,
            raw_length: blob.raw_length,
            encoding: blob.encoding,
        });
        self.buf.extend_from_slice(&blob.data);
    }

    /// Appends the trailer (sealed in an encrypted repository); returns the
    /// pack bytes and its blob entries.
    pub fn finish(mut self, crypto: &Crypto) -> (Vec<u8>, Vec<BlobEntry>) {
        let mut trailer = Vec::with_capacity(self.entries.len() * TRAILER_ENTRY_LEN);
        for e in &self.entries {
            trailer.extend_from_slice(&e.id.0 .0);
            trailer.extend_from_slice(&e.offset.to_le_bytes());
            trailer.extend_from_slice(&e.length.to_le_bytes());
            trailer.extend_from_slice(&e.raw_length.to_le_bytes());
            trailer.push(e.encoding.to_byte());
        }
        self.buf
            .extend_from_slice(&crypto.seal(PACK_TRAILER_AD, trailer));
        self.buf
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(TRAILER_MAGIC);
        (self.buf, self.entries)
    }
}

pub fn pack_id(bytes: &[u8]) -> PackId {
    PackId(Hash256(Sha256::digest(bytes).into()))
}

/// Reads a whole pack's trailer, checking its structure.
pub fn parse_trailer(pack: &[u8], crypto: &Crypto) -> Result<Vec<BlobEntry>, String> {
    if pack.len() < PACK_MAGIC.len() + FOOTER_LEN || &pack[..8] != PACK_MAGIC {
        return Err("does not start with the pack magic".into());
    }
    let footer = &pack[pack.len() - FOOTER_LEN..];
    if &footer[4..] != TRAILER_MAGIC {
        return Err("does not end with the trailer magic (truncated?)".into());
    }
    let n = u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")) as usize;
    let trailer_len = n
        .checked_mul(TRAILER_ENTRY_LEN)
        .and_then(|l| l.checked_add(crypto.overhead()))
        .ok_or("trailer entry count overflows")?;
    let blobs_end = pack
        .len()
        .checked_sub(FOOTER_LEN + trailer_len)
        .filter(|&end| end >= PACK_MAGIC.len())
        .ok_or_else(|| format!("trailer claims {n} entries, more than the pack can hold"))?;
    let trailer = crypto
        .open(PACK_TRAILER_AD, &pack[blobs_end..pack.len() - FOOTER_LEN])
        .map_err(|e| format!("its trailer: {e}"))?;
    let mut out = Vec::with_capacity(n);
    for raw in trailer.chunks_exact(TRAILER_ENTRY_LEN) {
        let id = ChunkId(Hash256(raw[..32].try_into().expect("32 bytes")));
        let offset = u64::from_le_bytes(raw[32..40].try_into().expect("8 bytes"));
        let length = u32::from_le_bytes(raw[40..44].try_into().expect("4 bytes"));
        let raw_length = u32::from_le_bytes(raw[44..48].try_into().expect("4 bytes"));
        let encoding = Encoding::from_byte(raw[48])
            .ok_or_else(|| format!("blob {id} has unknown encoding {}", raw[48]))?;
        // Checked: a damaged offset near u64::MAX must not wrap into range.
        let end = offset.checked_add(length as u64);
        if offset < PACK_MAGIC.len() as u64 || end.is_none_or(|end| end > blobs_end as u64) {
            return Err(format!("blob {id} lies outside the pack's blob area"));
        }
        out.push(BlobEntry {
            id,
            offset,
            length,
            raw_length,
            encoding,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn crypto() -> Crypto {
        Crypto::with_keys(crate::repository::crypto::DataKeys::derive(
            &crate::repository::crypto::MasterSecret::random(),
            "test",
        ))
    }

    fn blob_of(data: &[u8]) -> Blob {
        encode_chunk(ChunkId(Hash256::digest(data)), data, 3, &Crypto::none())
    }

    #[test]
    fn incompressible_chunks_are_stored_raw() {
        let mut noise = vec![0u8; 4096];
        getrandom::fill(&mut noise).unwrap();
        assert_eq!(blob_of(&noise).encoding, Encoding::Raw);
        assert_eq!(blob_of(&[7u8; 4096]).encoding, Encoding::Zstd);
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_chunk_hash() {
        let data = b"row 1, row 2, row 3".repeat(100);
        let mut pb = PackBuilder::new();
        pb.add(blob_of(&data));
        let (mut bytes, entries) = pb.finish(&Crypto::none());
        let e = entries[0];
        let at = e.offset as usize + e.length as usize / 2;
        bytes[at] ^= 0x01;
        let blob = &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
        assert!(decode_blob(&e, blob, &Crypto::none()).is_err());
    }

    #[test]
    fn sealed_packs_round_trip_and_a_blob_under_another_chunk_id_fails_authentication() {
        let c = crypto();
        let (a, b) = (b"first chunk".repeat(50), b"second chunk".repeat(50));
        let mut pb = PackBuilder::new();
        pb.add(encode_chunk(c.chunk_id(&a), &a, 3, &c));
        pb.add(encode_chunk(c.chunk_id(&b), &b, 3, &c));
        let (bytes, entries) = pb.finish(&c);
        assert_eq!(parse_trailer(&bytes, &c).unwrap(), entries);
        assert!(parse_trailer(&bytes, &crypto())
            .unwrap_err()
            .contains("fails authentication"));
        let slice =
            |e: &BlobEntry| &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
        assert_eq!(decode_blob(&entries[0], slice(&entries[0]), &c).unwrap(), a);
        // Blob 1's bytes presented as chunk 0.
        let swapped = BlobEntry {
            id: entries[0].id,
            ..entries[1]
        };
        assert!(matches!(
            decode_blob(&swapped, slice(&entries[1]), &c),
            Err(BlobError::Unauthenticated(_))
        ));
        // The plaintext appears nowhere in the pack.
        assert!(!bytes.windows(11).any(|w| w == b"first chunk"));
    }

    proptest! {
        #[test]
        fn packs_round_trip(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 0..20)) {
            let mut pb = PackBuilder::new();
            for c in &chunks {
                pb.add(blob_of(c));
            }
            let (bytes, entries) = pb.finish(&Crypto::none());
            let parsed = parse_trailer(&bytes, &Crypto::none()).unwrap();
            prop_assert_eq!(&parsed, &entries);
            for (e, c) in parsed.iter().zip(&chunks) {
                let blob = &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
                prop_assert_eq!(&decode_blob(e, blob, &Crypto::none()).unwrap(), c);
            }
        }

        #[test]
        fn truncated_packs_are_rejected(len in 0usize..200) {
            let mut pb = PackBuilder::new();
            pb.add(blob_of(b"some chunk"));
            let c = crypto();
            let (bytes, _) = pb.finish(&c);
            let cut = len.min(bytes.len() - 1);
            prop_assert!(parse_trailer(&bytes[..cut], &c).is_err());
        }
    }
}
