//! Pack objects: many blobs, then a trailer that makes the pack
//! self-describing. Byte layout in `docs/repository-format.md`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::crypto::{blob_ad, Crypto, BUNDLE_AD, PACK_TRAILER_AD};
use crate::ids::{ChunkId, Hash256, PackId};
use std::num::NonZeroU32;

/// Pack format 4: format 3 whose bundles are bundle format 2 (a header of
/// lengths only; the index gives each chunk's place in its bundle). In an
/// encrypted repository (repository format 2) each blob and the trailer
/// are sealed; the config says which, not the pack.
pub const PACK_MAGIC: &[u8; 8] = b"HFPACK\x00\x04";
/// Pack format 3, still read: one trailer entry per bundle instead of one
/// per chunk; its bundles (format 1) name their chunks in their header.
pub const PACK_MAGIC_V3: &[u8; 8] = b"HFPACK\x00\x03";
/// Pack format 2, still read: bundles (encoding 2) with a trailer entry for
/// each chunk of each bundle.
pub const PACK_MAGIC_V2: &[u8; 8] = b"HFPACK\x00\x02";
/// Pack format 1, still read: the same layout without bundles.
pub const PACK_MAGIC_V1: &[u8; 8] = b"HFPACK\x00\x01";
/// What the chunk id field of a pack format 3 or 4 trailer entry for a
/// bundle holds: nothing (zeros).
pub const BUNDLE_BLOB_ID: ChunkId = ChunkId(Hash256([0; 32]));
pub const TRAILER_MAGIC: &[u8; 8] = b"HFPACKTR";
pub const TRAILER_ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 1;
pub const FOOTER_LEN: usize = 4 + 8;
/// No chunk is larger than this (FastCDC's largest maximum size).
pub const MAX_CHUNK_LEN: usize = 16 * 1024 * 1024;

/// Chunks up to this size are compressed together with their neighbours in
/// bundles (database pages, small files); larger ones get a frame each.
pub const BUNDLE_MEMBER_MAX: usize = 64 * 1024;
/// A bundle is closed before its bytes (header included) would pass this:
/// large enough that zstd compresses database pages as well as it does whole
/// files, small enough that reading one page decodes little else, and within
/// the source size for which zstd picks its parameters for sources of at
/// most 128 KiB, which compressed both PostgreSQL and InnoDB pages better
/// and faster than those for 256 KiB (docs/performance.md, *Bundles*).
pub const BUNDLE_TARGET: usize = 128 * 1024;
/// What a reader accepts: at most this many chunks in a bundle, and this
/// many bytes once decompressed (header included).
pub const MAX_BUNDLE_CHUNKS: usize = 4096;
pub const MAX_BUNDLE_RAW: usize = 4 * 1024 * 1024;
/// The magic at the start of a bundle's (decompressed) bytes: bundle
/// format 2, whose header gives each chunk's length only.
pub const BUNDLE_MAGIC: &[u8; 4] = b"HFB2";
pub const BUNDLE_MEMBER_LEN: usize = 4;
/// Bundle format 1 (pack formats 2 and 3), still read: each chunk's id and
/// length in the header.
pub const BUNDLE_MAGIC_V1: &[u8; 4] = b"HFBN";
pub const BUNDLE_MEMBER_LEN_V1: usize = 32 + 4;
/// A bundle's header: magic and count, then a member entry per chunk.
pub const BUNDLE_HEADER_LEN: usize = 8;

/// How a blob's bytes encode its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Raw,
    Zstd,
    /// The blob is a bundle: one zstd frame holding several chunks (pack
    /// format 2 and later), found in it by their place (bundle format 2)
    /// or id (bundle format 1).
    Bundle,
}

impl Encoding {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Encoding::Raw => 0,
            Encoding::Zstd => 1,
            Encoding::Bundle => 2,
        }
    }
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            2 => Some(Encoding::Bundle),
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
    /// For a chunk in a format 2 bundle: where its bytes start in the
    /// bundle once decompressed (after the header, so never 0). Index
    /// entries carry it; trailers do not.
    pub bundle_offset: Option<NonZeroU32>,
}

impl BlobEntry {
    /// A pack format 3 or 4 trailer entry for a whole bundle: it names no
    /// chunk ([`BUNDLE_BLOB_ID`]), and `raw_length` is the bundle's
    /// decompressed size. Its header lists its chunks ([`decode_bundle`]).
    pub fn is_whole_bundle(&self) -> bool {
        self.encoding == Encoding::Bundle && self.id == BUNDLE_BLOB_ID
    }
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

/// Several small chunks compressed as one frame, ready for a pack.
#[derive(Debug)]
pub struct EncodedBundle {
    /// Each chunk's id, length and place in the decompressed bundle, in
    /// bundle order.
    pub members: Vec<(ChunkId, u32, NonZeroU32)>,
    /// The bundle's decompressed size, header included.
    pub raw_length: u32,
    pub data: Vec<u8>,
}

/// Compresses `members` as one bundle (layout in docs/repository-format.md,
/// *Bundles*), then seals it.
pub fn encode_bundle(members: &[(ChunkId, &[u8])], level: i32, crypto: &Crypto) -> EncodedBundle {
    debug_assert!(members.len() <= MAX_BUNDLE_CHUNKS);
    let body: usize = members.iter().map(|(_, d)| d.len()).sum();
    let mut plain = Vec::with_capacity(8 + members.len() * BUNDLE_MEMBER_LEN + body);
    plain.extend_from_slice(BUNDLE_MAGIC);
    plain.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for (_, data) in members {
        plain.extend_from_slice(&(data.len() as u32).to_le_bytes());
    }
    let mut placed = Vec::with_capacity(members.len());
    for (id, data) in members {
        let at = NonZeroU32::new(plain.len() as u32).expect("after the header");
        placed.push((*id, data.len() as u32, at));
        plain.extend_from_slice(data);
    }
    // Always a frame: a reader finds the header inside it. Incompressible
    // data costs zstd's few bytes of block headers.
    let data = zstd_compress(&plain, level).unwrap_or_else(|| {
        zstd::bulk::compress(&plain, level).expect("zstd compresses a buffer in memory")
    });
    EncodedBundle {
        members: placed,
        raw_length: plain.len() as u32,
        data: crypto.seal(BUNDLE_AD, data),
    }
}

/// A bundle opened and decompressed.
#[derive(Debug)]
pub struct DecodedBundle {
    /// Each chunk's id, from the header of a format 1 bundle; a format 2
    /// bundle names none (its readers find a chunk by its place).
    ids: Option<Vec<ChunkId>>,
    /// Each chunk's (start, length) in `raw`, in bundle order (so by start).
    members: Vec<(usize, usize)>,
    raw: bytes::Bytes,
}

impl DecodedBundle {
    /// The chunk `entry` names, checked for length and, with `check_hash`,
    /// against its id. In a format 2 bundle the chunk is the one starting
    /// at `entry.bundle_offset`; in format 1, the one the header names so.
    pub fn chunk(
        &self,
        entry: &BlobEntry,
        check_hash: bool,
        crypto: &Crypto,
    ) -> Result<Vec<u8>, BlobError> {
        self.place(entry, check_hash, crypto)
            .map(|(start, len)| self.raw[start..start + len].to_vec())
    }

    /// [`DecodedBundle::chunk`] without a copy: a view into the decoded
    /// bundle, which it keeps alive.
    pub fn chunk_shared(
        &self,
        entry: &BlobEntry,
        check_hash: bool,
        crypto: &Crypto,
    ) -> Result<bytes::Bytes, BlobError> {
        self.place(entry, check_hash, crypto)
            .map(|(start, len)| self.raw.slice(start..start + len))
    }

    /// Where the chunk `entry` names lies in `raw`, checked.
    fn place(
        &self,
        entry: &BlobEntry,
        check_hash: bool,
        crypto: &Crypto,
    ) -> Result<(usize, usize), BlobError> {
        let found = match &self.ids {
            Some(ids) => ids.iter().position(|id| *id == entry.id),
            // Empty chunks share their start with the next: the length
            // tells them apart.
            None => entry.bundle_offset.and_then(|at| {
                let at = at.get() as usize;
                let first = self.members.partition_point(|&(start, _)| start < at);
                self.members[first..]
                    .iter()
                    .take_while(|&&(start, _)| start == at)
                    .position(|&(_, len)| len == entry.raw_length as usize)
                    .or(self.members.get(first).filter(|m| m.0 == at).map(|_| 0))
                    .map(|i| first + i)
            }),
        };
        let Some(&(start, len)) = found.and_then(|i| self.members.get(i)) else {
            return Err(BlobError::NotInBundle);
        };
        let raw = &self.raw[start..start + len];
        if len != entry.raw_length as usize {
            return Err(BlobError::Length {
                got: len,
                expected: entry.raw_length as usize,
            });
        }
        if check_hash {
            let got = crypto.chunk_id(raw).0;
            if got != entry.id.0 {
                return Err(BlobError::Hash {
                    got,
                    expected: entry.id.0,
                });
            }
        }
        Ok((start, len))
    }

    /// The bundle's size once decompressed, header included.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the bundle's header names its chunks (bundle format 1).
    pub fn names_its_chunks(&self) -> bool {
        self.ids.is_some()
    }

    /// Every chunk in bundle order: the id its header gives (format 1
    /// only), its place in the decompressed bundle, its bytes.
    pub fn chunks(&self) -> impl Iterator<Item = (Option<ChunkId>, NonZeroU32, &[u8])> {
        self.members.iter().enumerate().map(|(i, &(start, len))| {
            (
                self.ids.as_ref().map(|ids| ids[i]),
                NonZeroU32::new(start as u32).expect("after the header"),
                &self.raw[start..start + len],
            )
        })
    }
}

/// Opens (in an encrypted repository) and decompresses a bundle, checking
/// its header against the caps before allocating: a hostile frame can make
/// a reader spend at most [`MAX_BUNDLE_RAW`] bytes.
pub fn decode_bundle(data: &[u8], crypto: &Crypto) -> Result<DecodedBundle, BlobError> {
    let data = crypto
        .open(BUNDLE_AD, data)
        .map_err(BlobError::Unauthenticated)?;
    let declared = match zstd::zstd_safe::get_frame_content_size(&data) {
        Ok(Some(n)) => n,
        _ => {
            return Err(BlobError::Decompress(
                "the bundle's frame does not state its size".into(),
            ))
        }
    };
    if declared > MAX_BUNDLE_RAW as u64 {
        return Err(BlobError::Length {
            got: declared.min(usize::MAX as u64) as usize,
            expected: MAX_BUNDLE_RAW,
        });
    }
    let raw = zstd_decompress(&data, declared as usize)
        .map_err(|e| BlobError::Decompress(e.to_string()))?;
    let bad = |why: String| BlobError::Bundle(why);
    let named = match raw.get(..4) {
        Some(m) if m == BUNDLE_MAGIC => false,
        Some(m) if m == BUNDLE_MAGIC_V1 => true,
        _ => return Err(bad("does not start with the bundle magic".into())),
    };
    let Some(n) = raw.get(4..8) else {
        return Err(bad("its header is cut short".into()));
    };
    let n = u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize;
    if n == 0 || n > MAX_BUNDLE_CHUNKS {
        return Err(bad(format!(
            "claims {n} chunks (1 to {MAX_BUNDLE_CHUNKS} allowed)"
        )));
    }
    let member_len = if named {
        BUNDLE_MEMBER_LEN_V1
    } else {
        BUNDLE_MEMBER_LEN
    };
    let header_end = BUNDLE_HEADER_LEN + n * member_len;
    if raw.len() < header_end {
        return Err(bad(format!("its header of {n} chunks is cut short")));
    }
    let mut ids = named.then(|| Vec::with_capacity(n));
    let mut members = Vec::with_capacity(n);
    let mut at = header_end;
    for m in raw[BUNDLE_HEADER_LEN..header_end].chunks_exact(member_len) {
        let (id, len) = m.split_at(member_len - 4);
        if let Some(ids) = ids.as_mut() {
            ids.push(ChunkId(Hash256(id.try_into().expect("32 bytes"))));
        }
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        members.push((at, len));
        at = at.saturating_add(len);
    }
    if at != raw.len() {
        return Err(bad(format!(
            "its header accounts for {at} bytes, it decompressed to {}",
            raw.len()
        )));
    }
    Ok(DecodedBundle {
        ids,
        members,
        raw: raw.into(),
    })
}

/// Decoded bundles, kept so that the chunks of one bundle cost one
/// decompression, not one each. Keyed by where the bundle was read: stored
/// objects are never rewritten, so one place holds one content.
pub struct BundleCache {
    capacity: usize,
    slots: std::sync::Mutex<std::collections::VecDeque<(BundleKey, std::sync::Arc<DecodedBundle>)>>,
}

/// Where a bundle lies: pack, offset and stored length.
pub type BundleKey = (PackId, u64, u32);

impl BundleCache {
    pub fn new(capacity: usize) -> Self {
        BundleCache {
            capacity: capacity.max(1),
            slots: Default::default(),
        }
    }

    /// Decodes the blob `entry` names from `data` (its stored bytes, read
    /// from `pack`): a bundle once per place, any other blob as
    /// [`decode_blob_checked`] does. A bundled chunk comes as a view into
    /// its decoded bundle (no copy) while `share` has room for that bundle,
    /// as a copy of its own after.
    pub fn decode(
        &self,
        pack: &PackId,
        entry: &BlobEntry,
        data: &[u8],
        check_hash: bool,
        crypto: &Crypto,
        share: &mut ShareBudget,
    ) -> Result<bytes::Bytes, BlobError> {
        if entry.encoding != Encoding::Bundle {
            return decode_blob_checked(entry, data, check_hash, crypto).map(bytes::Bytes::from);
        }
        let key = (*pack, entry.offset, entry.length);
        let found = {
            let slots = self.slots.lock().expect("bundle cache lock");
            slots
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, b)| b.clone())
        };
        let bundle = match found {
            Some(b) => b,
            None => {
                let b = std::sync::Arc::new(decode_bundle(data, crypto)?);
                let mut slots = self.slots.lock().expect("bundle cache lock");
                slots.push_back((key, b.clone()));
                while slots.len() > self.capacity {
                    slots.pop_front();
                }
                b
            }
        };
        if share.admits(key, bundle.raw_len()) {
            bundle.chunk_shared(entry, check_hash, crypto)
        } else {
            bundle
                .chunk(entry, check_hash, crypto)
                .map(bytes::Bytes::from)
        }
    }
}

/// How many bytes of decoded bundles the chunks handed out by
/// [`BundleCache::decode`] may keep alive: a chunk shared with its bundle
/// holds the whole bundle, so a reader that keeps a run of chunks bounds
/// the bundles behind them with one of these per run.
pub struct ShareBudget {
    left: usize,
    last: Option<BundleKey>,
}

impl ShareBudget {
    pub fn new(bytes: usize) -> Self {
        ShareBudget {
            left: bytes,
            last: None,
        }
    }

    /// For a caller that keeps no chunk past the next one.
    pub fn unbounded() -> Self {
        ShareBudget::new(usize::MAX)
    }

    /// Whether a chunk of the bundle at `key` (`raw_len` bytes decoded) may
    /// be shared; the bundle is counted once for consecutive chunks.
    fn admits(&mut self, key: BundleKey, raw_len: usize) -> bool {
        if self.last == Some(key) {
            return true;
        }
        if raw_len > self.left {
            return false;
        }
        self.left -= raw_len;
        self.last = Some(key);
        true
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
    #[error("the bundle at this place does not hold the chunk")]
    NotInBundle,
    #[error("bundle {0}")]
    Bundle(String),
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
    if entry.encoding == Encoding::Bundle {
        return decode_bundle(data, crypto)?.chunk(entry, check_hash, crypto);
    }
    let data = crypto
        .open(&blob_ad(&entry.id), data)
        .map_err(BlobError::Unauthenticated)?;
    let raw = match entry.encoding {
        Encoding::Raw => data.into_owned(),
        Encoding::Zstd => zstd_decompress(&data, entry.raw_length as usize)
            .map_err(|e| BlobError::Decompress(e.to_string()))?,
        Encoding::Bundle => unreachable!("decoded above"),
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
    /// Every chunk's place, for the index.
    entries: Vec<BlobEntry>,
    /// Every blob's place, for the trailer: a bundle is one.
    blobs: Vec<BlobEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    pub fn new() -> Self {
        Self::with_capacity(1 << 20)
    }

    /// A builder whose buffer is allocated once for `bytes`: a backup's
    /// packs are filled to their target and a little past it (the last blob
    /// and the trailer), so growing the buffer by doubling would copy the
    /// pack four times over and leave it holding twice its size.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(PACK_MAGIC.len()));
        buf.extend_from_slice(PACK_MAGIC);
        PackBuilder {
            buf,
            entries: Vec::new(),
            blobs: Vec::new(),
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
        let entry = BlobEntry {
            id: blob.id,
            offset: self.buf.len() as u64,
            length: blob.data.len() as u32,
            raw_length: blob.raw_length,
            encoding: blob.encoding,
            bundle_offset: None,
        };
        self.entries.push(entry);
        self.blobs.push(entry);
        self.buf.extend_from_slice(&blob.data);
    }

    /// Adds a bundle: one blob and one trailer entry, an index entry per
    /// chunk it holds.
    pub fn add_bundle(&mut self, bundle: EncodedBundle) {
        let offset = self.buf.len() as u64;
        self.blobs.push(BlobEntry {
            id: BUNDLE_BLOB_ID,
            offset,
            length: bundle.data.len() as u32,
            raw_length: bundle.raw_length,
            encoding: Encoding::Bundle,
            bundle_offset: None,
        });
        for (id, raw_length, at) in bundle.members {
            self.entries.push(BlobEntry {
                id,
                offset,
                length: bundle.data.len() as u32,
                raw_length,
                encoding: Encoding::Bundle,
                bundle_offset: Some(at),
            });
        }
        self.buf.extend_from_slice(&bundle.data);
    }

    /// Appends the trailer (sealed in an encrypted repository); returns the
    /// pack bytes and the place of each chunk it holds.
    pub fn finish(mut self, crypto: &Crypto) -> (Vec<u8>, Vec<BlobEntry>) {
        let mut trailer = Vec::with_capacity(self.blobs.len() * TRAILER_ENTRY_LEN);
        for e in &self.blobs {
            trailer.extend_from_slice(&e.id.0 .0);
            trailer.extend_from_slice(&e.offset.to_le_bytes());
            trailer.extend_from_slice(&e.length.to_le_bytes());
            trailer.extend_from_slice(&e.raw_length.to_le_bytes());
            trailer.push(e.encoding.to_byte());
        }
        self.buf
            .extend_from_slice(&crypto.seal(PACK_TRAILER_AD, trailer));
        self.buf
            .extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(TRAILER_MAGIC);
        (self.buf, self.entries)
    }
}

pub fn pack_id(bytes: &[u8]) -> PackId {
    PackId(Hash256(Sha256::digest(bytes).into()))
}

/// Reads a whole pack's trailer, checking its structure. Its entries are
/// blobs: in pack formats 3 and 4 a bundle is one entry naming no chunk
/// ([`BlobEntry::is_whole_bundle`]); in format 2 each chunk of a bundle has
/// an entry with the bundle's offset and length.
pub fn parse_trailer(pack: &[u8], crypto: &Crypto) -> Result<Vec<BlobEntry>, String> {
    let format = match pack.get(..8) {
        _ if pack.len() < PACK_MAGIC.len() + FOOTER_LEN => None,
        Some(m) if m == PACK_MAGIC => Some(4),
        Some(m) if m == PACK_MAGIC_V3 => Some(3),
        Some(m) if m == PACK_MAGIC_V2 => Some(2),
        Some(m) if m == PACK_MAGIC_V1 => Some(1),
        _ => None,
    };
    let Some(format) = format else {
        return Err("does not start with the pack magic".into());
    };
    let bundles_allowed = format >= 2;
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
            .filter(|e| *e != Encoding::Bundle || bundles_allowed)
            .ok_or_else(|| format!("blob {id} has unknown encoding {}", raw[48]))?;
        // Checked: a damaged offset near u64::MAX must not wrap into range.
        let end = offset.checked_add(length as u64);
        if offset < PACK_MAGIC.len() as u64 || end.is_none_or(|end| end > blobs_end as u64) {
            return Err(format!("blob {id} lies outside the pack's blob area"));
        }
        // Formats 3 and 4 list a bundle's chunks only in the bundle;
        // format 2 named each in the trailer, and no other blob may name
        // none.
        let whole_bundles = format >= 3;
        if (encoding == Encoding::Bundle && whole_bundles) != (id == BUNDLE_BLOB_ID) {
            return Err(format!(
                "blob at offset {offset}: a pack format {format} {} entry with chunk id {id}",
                if encoding == Encoding::Bundle {
                    "bundle"
                } else {
                    "chunk"
                }
            ));
        }
        if encoding == Encoding::Bundle && whole_bundles && raw_length as usize > MAX_BUNDLE_RAW {
            return Err(format!(
                "bundle at offset {offset} claims {raw_length} bytes decompressed (at most {MAX_BUNDLE_RAW})"
            ));
        }
        out.push(BlobEntry {
            id,
            offset,
            length,
            raw_length,
            encoding,
            bundle_offset: None,
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

    fn bundle_pack(chunks: &[Vec<u8>], c: &Crypto) -> (Vec<u8>, Vec<BlobEntry>) {
        let members: Vec<(ChunkId, &[u8])> =
            chunks.iter().map(|d| (c.chunk_id(d), &d[..])).collect();
        let mut pb = PackBuilder::new();
        pb.add(encode_chunk(c.chunk_id(b"alone"), b"alone", 3, c));
        pb.add_bundle(encode_bundle(&members, 3, c));
        pb.finish(c)
    }

    fn slice<'a>(bytes: &'a [u8], e: &BlobEntry) -> &'a [u8] {
        &bytes[e.offset as usize..(e.offset + e.length as u64) as usize]
    }

    #[test]
    fn pages_in_a_bundle_share_one_frame_and_each_is_found_by_its_place() {
        for c in [Crypto::none(), crypto()] {
            // Rows like pgbench's: a key, a branch, a blank-padded filler.
            let pages: Vec<Vec<u8>> = (0..14u64)
                .map(|i| {
                    (0..80u64)
                        .map(|r| format!("{:>10}|{:>4}|{:>84}\n", i * 80 + r, (i * 80 + r) % 7, ""))
                        .collect::<String>()
                        .into_bytes()
                })
                .collect();
            let (bytes, entries) = bundle_pack(&pages, &c);
            assert_eq!(&bytes[..8], PACK_MAGIC);
            assert_eq!(entries.len(), 15);
            let bundle = &entries[1..];
            // The trailer: the lone chunk, then the bundle as one blob.
            let trailer = parse_trailer(&bytes, &c).unwrap();
            assert_eq!(trailer.len(), 2);
            assert_eq!(trailer[0], entries[0]);
            assert!(trailer[1].is_whole_bundle());
            assert_eq!(
                (trailer[1].offset, trailer[1].length),
                (bundle[0].offset, bundle[0].length)
            );
            let decoded = decode_bundle(slice(&bytes, &trailer[1]), &c).unwrap();
            assert_eq!(decoded.raw_len(), trailer[1].raw_length as usize);
            assert!(!decoded.names_its_chunks());
            // The header lists lengths; each index entry gives the place.
            assert_eq!(
                decoded
                    .chunks()
                    .map(|(named, at, raw)| (named, Some(at), c.chunk_id(raw)))
                    .collect::<Vec<_>>(),
                bundle
                    .iter()
                    .map(|e| (None, e.bundle_offset, e.id))
                    .collect::<Vec<_>>()
            );
            assert!(bundle.iter().all(|e| e.encoding == Encoding::Bundle
                && e.offset == bundle[0].offset
                && e.length == bundle[0].length));
            // Similar pages compress better together than alone.
            let alone: usize = pages
                .iter()
                .map(|p| {
                    encode_chunk(ChunkId(Hash256::digest(p)), p, 3, &c)
                        .data
                        .len()
                })
                .sum();
            assert!(
                (bundle[0].length as usize) < alone,
                "{} vs {alone}",
                bundle[0].length
            );
            let cache = BundleCache::new(1);
            let pack = pack_id(&bytes);
            // In any order, and through the one-shot decoder too.
            // Shared with the bundle, and copied where the budget has no
            // room for the bundle: the same bytes either way.
            let mut share = ShareBudget::new(1);
            for (e, page) in bundle.iter().zip(&pages).rev() {
                for budget in [&mut ShareBudget::unbounded(), &mut share] {
                    assert_eq!(
                        &cache
                            .decode(&pack, e, slice(&bytes, e), true, &c, budget)
                            .unwrap(),
                        page
                    );
                }
                assert_eq!(&decode_blob(e, slice(&bytes, e), &c).unwrap(), page);
            }
            assert_eq!(
                decode_blob(&entries[0], slice(&bytes, &entries[0]), &c).unwrap(),
                b"alone"
            );
            // A chunk the bundle does not hold at that place, no place, a
            // place inside another chunk, and a length that disagrees.
            let stranger = BlobEntry {
                id: c.chunk_id(b"other"),
                ..bundle[0]
            };
            assert!(matches!(
                decode_blob(&stranger, slice(&bytes, &stranger), &c),
                Err(BlobError::Hash { .. })
            ));
            for at in [
                None,
                NonZeroU32::new(4),
                NonZeroU32::new(100),
                NonZeroU32::new(1 << 30),
            ] {
                let misplaced = BlobEntry {
                    bundle_offset: at,
                    ..bundle[0]
                };
                assert_eq!(
                    decode_blob(&misplaced, slice(&bytes, &misplaced), &c),
                    Err(BlobError::NotInBundle),
                    "{at:?}"
                );
            }
            // Without the hash check (a restore that checks whole files
            // instead), the place alone decides.
            let next = BlobEntry {
                id: bundle[0].id,
                ..bundle[1]
            };
            assert_eq!(
                cache
                    .decode(
                        &pack,
                        &next,
                        slice(&bytes, &next),
                        false,
                        &c,
                        &mut ShareBudget::unbounded()
                    )
                    .unwrap(),
                pages[1]
            );
            let longer = BlobEntry {
                raw_length: bundle[0].raw_length + 1,
                ..bundle[0]
            };
            assert!(matches!(
                decode_blob(&longer, slice(&bytes, &longer), &c),
                Err(BlobError::Length { .. })
            ));
        }
    }

    #[test]
    fn shared_chunks_keep_at_most_the_budget_of_bundles_alive() {
        let (a, b) = (
            (pack_id(b"a"), 10u64, 100u32),
            (pack_id(b"a"), 110u64, 100u32),
        );
        let mut share = ShareBudget::new(300);
        // One bundle counts once, however many of its chunks follow.
        assert!(share.admits(a, 200));
        assert!(share.admits(a, 200));
        // Another does not fit what is left; the first still shares.
        assert!(!share.admits(b, 200));
        assert!(share.admits(a, 200));
        assert!(share.admits(b, 100));
        assert!(!share.admits((pack_id(b"c"), 0, 1), 1));
    }

    #[test]
    fn a_sealed_bundle_altered_or_presented_as_a_single_chunk_fails_authentication() {
        let c = crypto();
        let pages = vec![b"first page".repeat(100), b"second page".repeat(100)];
        let (mut bytes, entries) = bundle_pack(&pages, &c);
        let e = entries[1];
        // Its bytes under a plain blob's entry: another associated data.
        let as_single = BlobEntry {
            encoding: Encoding::Zstd,
            ..e
        };
        assert!(matches!(
            decode_blob(&as_single, slice(&bytes, &e), &c),
            Err(BlobError::Unauthenticated(_))
        ));
        bytes[e.offset as usize + e.length as usize / 2] ^= 1;
        assert!(matches!(
            decode_blob(&e, slice(&bytes, &e), &c),
            Err(BlobError::Unauthenticated(_))
        ));
        assert!(!bytes.windows(10).any(|w| w == b"first page"));
    }

    /// A bundle frame built by hand from `plain` (no sealing).
    fn frame(plain: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(plain, 1).unwrap()
    }

    /// A bundle format 1 header (ids and lengths).
    fn header(members: &[(ChunkId, u32)]) -> Vec<u8> {
        let mut h = BUNDLE_MAGIC_V1.to_vec();
        h.extend_from_slice(&(members.len() as u32).to_le_bytes());
        for (id, len) in members {
            h.extend_from_slice(&id.0 .0);
            h.extend_from_slice(&len.to_le_bytes());
        }
        h
    }

    #[test]
    fn hostile_bundles_are_refused_before_they_cost_memory() {
        let none = Crypto::none();
        let id = ChunkId(Hash256::digest(b"x"));
        let bad = |data: &[u8]| match decode_bundle(data, &none) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        // A frame that claims 1 GiB, made of a few bytes.
        let mut big = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        big.set_pledged_src_size(Some(1 << 30)).unwrap();
        big.include_contentsize(true).unwrap();
        let huge = {
            use std::io::Write;
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..1024 {
                big.write_all(&zeros).unwrap();
            }
            big.finish().unwrap()
        };
        assert!(huge.len() < 1 << 20);
        assert!(bad(&huge).contains(&MAX_BUNDLE_RAW.to_string()));
        // No size in the frame header.
        let mut sizeless = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        sizeless.include_contentsize(false).unwrap();
        let sizeless = {
            use std::io::Write;
            sizeless.write_all(&header(&[(id, 0)])).unwrap();
            sizeless.finish().unwrap()
        };
        assert!(bad(&sizeless).contains("does not state its size"));
        assert!(bad(&frame(b"HFBX\x01\0\0\0")).contains("magic"));
        let mut too_many = BUNDLE_MAGIC.to_vec();
        too_many.extend_from_slice(&(MAX_BUNDLE_CHUNKS as u32 + 1).to_le_bytes());
        assert!(bad(&frame(&too_many)).contains("claims 4097 chunks"));
        assert!(bad(&frame(&header(&[(id, 0)])[..20])).contains("cut short"));
        let mut short = header(&[(id, 10), (id, u32::MAX)]);
        short.extend_from_slice(b"0123456789");
        assert!(bad(&frame(&short)).contains("accounts for"));
        // Well formed, with an id listed twice (holdfast never writes that):
        // the first copy is the one read, and its hash decides.
        let mut twice = header(&[(id, 1), (id, 1)]);
        twice.extend_from_slice(b"xy");
        let b = decode_bundle(&frame(&twice), &none).unwrap();
        assert_eq!(
            b.chunks().map(|(id, _, raw)| (id, raw)).collect::<Vec<_>>(),
            vec![(Some(id), &b"x"[..]), (Some(id), &b"y"[..])]
        );
        let entry = BlobEntry {
            id,
            offset: 8,
            length: 0,
            raw_length: 1,
            encoding: Encoding::Bundle,
            bundle_offset: None,
        };
        assert_eq!(b.chunk(&entry, true, &none).unwrap(), b"x");
        let other = BlobEntry {
            id: ChunkId(Hash256::digest(b"y")),
            ..entry
        };
        assert_eq!(b.chunk(&other, true, &none), Err(BlobError::NotInBundle));
        // Format 2 (lengths only): an empty chunk shares its place with the
        // next; the length tells them apart.
        let mut lengths = BUNDLE_MAGIC.to_vec();
        lengths.extend_from_slice(&3u32.to_le_bytes());
        for len in [0u32, 2, 1] {
            lengths.extend_from_slice(&len.to_le_bytes());
        }
        lengths.extend_from_slice(b"xyz");
        let b = decode_bundle(&frame(&lengths), &none).unwrap();
        let at = |at: u32, data: &[u8]| BlobEntry {
            id: ChunkId(Hash256::digest(data)),
            raw_length: data.len() as u32,
            bundle_offset: NonZeroU32::new(at),
            ..entry
        };
        assert_eq!(b.chunk(&at(20, b""), true, &none).unwrap(), b"");
        assert_eq!(b.chunk(&at(20, b"xy"), true, &none).unwrap(), b"xy");
        assert_eq!(b.chunk(&at(22, b"z"), true, &none).unwrap(), b"z");
        assert!(matches!(
            b.chunk(&at(20, b"xyz"), true, &none),
            Err(BlobError::Length { .. })
        ));
        assert_eq!(
            b.chunk(&at(21, b"y"), true, &none),
            Err(BlobError::NotInBundle)
        );
        // A format 2 header that claims more chunks than it holds.
        let mut cut = BUNDLE_MAGIC.to_vec();
        cut.extend_from_slice(&3u32.to_le_bytes());
        cut.extend_from_slice(&1u32.to_le_bytes());
        assert!(bad(&frame(&cut)).contains("cut short"));
    }

    /// The pack format 4 layout, byte by byte, as docs/repository-format.md
    /// (*Packs*, *Bundles*) gives it: a changed writer fails here, not only
    /// in a round trip with a changed reader.
    #[test]
    fn a_format_4_pack_is_laid_out_as_documented() {
        let none = Crypto::none();
        let (bytes, entries) = bundle_pack(&[b"page one".to_vec(), b"page two".to_vec()], &none);
        let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        assert_eq!(&bytes[..8], b"HFPACK\x00\x04");
        assert_eq!(&bytes[bytes.len() - 8..], b"HFPACKTR");
        assert_eq!(
            le32(&bytes, bytes.len() - 12),
            2,
            "two blobs: a chunk, a bundle"
        );
        let trailer = bytes.len() - 12 - 2 * 49;
        // Entry 0: the chunk "alone", a zstd frame or raw, at offset 8.
        assert_eq!(&bytes[trailer..trailer + 32], &none.chunk_id(b"alone").0 .0);
        assert_eq!(le64(trailer + 32), 8);
        assert_eq!(le32(&bytes, trailer + 44), 5);
        // Entry 1: the bundle, right after it; no chunk id, encoding 2,
        // raw length = header (8 + 2 x 4) + the two pages.
        let b = trailer + 49;
        assert_eq!(&bytes[b..b + 32], &[0u8; 32]);
        assert_eq!(le64(b + 32), 8 + le32(&bytes, trailer + 40) as u64);
        assert_eq!(le32(&bytes, b + 40), entries[1].length);
        assert_eq!(le32(&bytes, b + 44), 8 + 2 * 4 + 16);
        assert_eq!(bytes[b + 48], 2);
        // The bundle: one zstd frame of magic, count, lengths, pages.
        let plain = zstd::bulk::decompress(slice(&bytes, &entries[1]), 1000).unwrap();
        assert_eq!(&plain[..8], b"HFB2\x02\0\0\0");
        assert_eq!((le32(&plain, 8), le32(&plain, 12)), (8, 8));
        assert_eq!(&plain[16..], b"page onepage two");
        // The index gets one entry per chunk: the bundle's place in the
        // pack, the chunk's in the bundle.
        assert_eq!(entries.len(), 3);
        for (e, at) in entries[1..].iter().zip([16, 24]) {
            assert_eq!(e.offset, le64(b + 32));
            assert_eq!(e.encoding, Encoding::Bundle);
            assert_eq!(e.bundle_offset, NonZeroU32::new(at));
        }
    }

    /// A pack as builds before pack format 4 wrote it: `pages` in one
    /// bundle format 1 frame (ids in its header); the trailer lists the
    /// bundle once (format 3) or each chunk at the bundle's place (format
    /// 2). Returns the pack and its chunks' index entries.
    fn old_pack(format: u8, pages: &[&[u8]]) -> (Vec<u8>, Vec<BlobEntry>) {
        let members: Vec<_> = pages
            .iter()
            .map(|p| (ChunkId(Hash256::digest(p)), p.len() as u32))
            .collect();
        let mut plain = header(&members);
        plain.extend(pages.concat());
        let bundle = frame(&plain);
        let mut bytes = b"HFPACK\x00".to_vec();
        bytes.push(format);
        let entry = |id, raw_length| BlobEntry {
            id,
            offset: 8,
            length: bundle.len() as u32,
            raw_length,
            encoding: Encoding::Bundle,
            bundle_offset: None,
        };
        let chunks: Vec<_> = members.iter().map(|&(id, len)| entry(id, len)).collect();
        let trailer = match format {
            2 => chunks.clone(),
            _ => vec![entry(BUNDLE_BLOB_ID, plain.len() as u32)],
        };
        bytes.extend_from_slice(&bundle);
        for e in &trailer {
            bytes.extend_from_slice(&e.id.0 .0);
            bytes.extend_from_slice(&e.offset.to_le_bytes());
            bytes.extend_from_slice(&e.length.to_le_bytes());
            bytes.extend_from_slice(&e.raw_length.to_le_bytes());
            bytes.push(e.encoding.to_byte());
        }
        bytes.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        bytes.extend_from_slice(TRAILER_MAGIC);
        (bytes, chunks)
    }

    /// Packs of formats 2 and 3, with format 1 bundles, are still read:
    /// each chunk is found by the id the bundle's header gives it.
    #[test]
    fn format_2_and_3_packs_with_bundles_that_name_their_chunks_are_still_read() {
        let none = Crypto::none();
        let pages: [&[u8]; 2] = [b"page one", b"page two"];
        for format in [2, 3] {
            let (bytes, entries) = old_pack(format, &pages);
            let parsed = parse_trailer(&bytes, &none).unwrap();
            if format == 2 {
                assert_eq!(parsed, entries);
            } else {
                assert!(parsed.len() == 1 && parsed[0].is_whole_bundle());
                let b = decode_bundle(slice(&bytes, &parsed[0]), &none).unwrap();
                assert!(b.names_its_chunks());
                assert_eq!(
                    b.chunks().map(|(id, _, _)| id).collect::<Vec<_>>(),
                    entries.iter().map(|e| Some(e.id)).collect::<Vec<_>>()
                );
            }
            for (e, page) in entries.iter().zip(pages).rev() {
                assert_eq!(decode_blob(e, slice(&bytes, e), &none).unwrap(), page);
                assert_eq!(
                    decode_blob_checked(e, slice(&bytes, e), false, &none).unwrap(),
                    page
                );
            }
        }
        // A whole-bundle entry (no chunk id) is format 3 and later only; a
        // format 3 or 4 bundle entry must name no chunk.
        let (bytes, _) = old_pack(3, &pages);
        let mut mixed = bytes.clone();
        mixed[..8].copy_from_slice(PACK_MAGIC_V2);
        assert!(parse_trailer(&mixed, &none)
            .unwrap_err()
            .contains("pack format 2 bundle entry with chunk id 0000"));
        let (bytes, _) = old_pack(2, &pages);
        for magic in [PACK_MAGIC_V3, PACK_MAGIC] {
            let mut named = bytes.clone();
            named[..8].copy_from_slice(magic);
            let format = magic[7];
            assert!(parse_trailer(&named, &none)
                .unwrap_err()
                .contains(&format!("pack format {format} bundle entry with chunk id")));
        }
    }

    #[test]
    fn a_format_1_pack_holding_a_bundle_entry_is_refused() {
        let none = Crypto::none();
        let (mut bytes, _) = bundle_pack(&[b"page".to_vec()], &none);
        bytes[..8].copy_from_slice(PACK_MAGIC_V1);
        assert!(parse_trailer(&bytes, &none)
            .unwrap_err()
            .contains("unknown encoding 2"));
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
