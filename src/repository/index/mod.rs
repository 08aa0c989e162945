//! Index objects: which pack holds each chunk, and where in it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::pack::{BlobEntry, Encoding, MAX_BUNDLE_RAW, MAX_CHUNK_LEN, PACK_MAGIC};
use super::{decode_json_zst, encode_json_zst, RepoError, FORMAT_VERSION};
use crate::ids::{ChunkId, ChunkMap, PackId};

mod by_pack;
mod table;

/// Chunks the index holds in memory before it keeps them on disk (see
/// [`table`]): 17 MB, a hash map of 2^18 slots at its most full (7/8), so
/// it never grows into 2^19 first.
pub const IN_MEMORY: usize = 7 << 15;

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

/// The union of all index objects: in memory, and on disk past [`IN_MEMORY`]
/// chunks.
///
/// Every distinct location any index object gives for a chunk is kept (up to
/// [`MAX_CANDIDATES`]): an index object is not authenticated, so the first
/// one listed is not more right than the others. Memory: one location per
/// chunk in `first`; only chunks with more than one distinct location have an
/// entry in `more`.
///
/// A database holds one chunk per 8 KiB page, so this is the largest thing a
/// command would hold for a big one: a location is kept as a [`Slot`] (the
/// chunk id only as the key, the pack by number), 64 bytes a chunk with its
/// key instead of 128 as a [`ChunkLocation`]. Past [`IN_MEMORY`] chunks the
/// first locations go to a sorted table on disk (see [`table`]): while
/// index objects are added they go there in runs of [`IN_MEMORY`], and
/// [`Index::finish`] merges the runs into one table, which holds each
/// chunk's first location once; what is added after that is looked up there
/// first. Every query needs a finished index. Only the disputed chunks'
/// further locations (`more`) stay in memory.
#[derive(Debug, Default, Clone)]
pub struct Index {
    first: ChunkMap<Slot>,
    more: ChunkMap<Vec<Slot>>,
    /// First locations kept on disk, merged, and a [`Index::mark_needed`]
    /// mark for each of its records.
    table: Option<Arc<table::Table>>,
    table_needed: Vec<u64>,
    /// Runs of first locations written while index objects were added, not
    /// yet merged into `table` ([`Index::finish`]).
    runs: Vec<Arc<table::Table>>,
    /// Chunks kept in memory before a run is written (0: [`IN_MEMORY`]).
    memory_cap: usize,
    /// Why a run could not be written: the index then stays in memory, and
    /// [`Index::finish`] fails with this.
    spill_failed: Option<(std::io::ErrorKind, String)>,
    packs: HashMap<PackId, u64>,
    /// Packs by number ([`Slot::pack`]), and their numbers.
    pack_ids: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
    /// The index objects that name each pack, in listing order.
    described_by: HashMap<PackId, Vec<SourceId>>,
    /// Index object keys, by [`SourceId`].
    sources: Vec<String>,
    /// Locations dropped because their chunk already had [`MAX_CANDIDATES`].
    dropped: u64,
}

/// The needed chunks of each pack, a pack at a time
/// ([`Index::needed_by_pack`]).
pub struct NeededByPack {
    groups: by_pack::Groups,
    pack_ids: Vec<PackId>,
}

impl Iterator for NeededByPack {
    type Item = Result<(PackId, Vec<ChunkId>), RepoError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.groups.next()? {
            Ok((n, ids)) => Ok((self.pack_ids[n as usize], ids)),
            Err(source) => Err(spill_failed(source)),
        })
    }
}

/// What the index could not keep on disk, naming the folder (`TMPDIR`).
fn spill_failed(source: std::io::Error) -> RepoError {
    RepoError::IndexSpill {
        dir: std::env::temp_dir().display().to_string(),
        source,
    }
}

/// A [`ChunkLocation`] as the [`Index`] holds it, under its chunk's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    offset: u64,
    /// The pack's number in [`Index::pack_ids`].
    pack: u32,
    source: SourceId,
    length: u32,
    raw_length: u32,
    bundle_offset: Option<NonZeroU32>,
    encoding: Encoding,
    /// Marked by [`Index::mark_needed`] (a snapshot being verified needs
    /// the chunk); in the slot's padding, so it costs no memory.
    needed: bool,
}

// The mark in the padding: a slot stays 32 bytes.
const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl Slot {
    fn at(pack: u32, source: SourceId, blob: &BlobEntry) -> Slot {
        Slot {
            offset: blob.offset,
            pack,
            source,
            length: blob.length,
            raw_length: blob.raw_length,
            bundle_offset: blob.bundle_offset,
            encoding: blob.encoding,
            needed: false,
        }
    }

    /// The same place in the same pack (whichever index object said so).
    fn same_place(&self, other: &Slot) -> bool {
        Slot {
            source: other.source,
            needed: other.needed,
            ..*self
        } == *other
    }
}

impl Index {
    fn location(&self, id: &ChunkId, s: &Slot) -> ChunkLocation {
        ChunkLocation {
            pack: self.pack_ids[s.pack as usize],
            blob: BlobEntry {
                id: *id,
                offset: s.offset,
                length: s.length,
                raw_length: s.raw_length,
                encoding: s.encoding,
                bundle_offset: s.bundle_offset,
            },
            source: s.source,
        }
    }

    /// The pack's number in [`Index::pack_ids`], given on first sight.
    fn pack_number(&mut self, pack: PackId) -> u32 {
        let next = self.pack_ids.len();
        let number = *self
            .pack_numbers
            .entry(pack)
            .or_insert_with(|| u32::try_from(next).expect("fewer than 2^32 packs"));
        if number as usize == next {
            self.pack_ids.push(pack);
        }
        number
    }

    fn slot(&mut self, loc: &ChunkLocation) -> Slot {
        Slot::at(self.pack_number(loc.pack), loc.source, &loc.blob)
    }

    /// An empty index that keeps at most `chunks` first locations in memory
    /// before it writes them to disk ([`IN_MEMORY`] by default; tests: a
    /// table from a few chunks).
    pub fn with_memory_cap(chunks: usize) -> Self {
        Index {
            memory_cap: chunks.max(1),
            ..Index::default()
        }
    }

    fn cap(&self) -> usize {
        match self.memory_cap {
            0 => IN_MEMORY,
            n => n,
        }
    }

    fn assert_finished(&self) {
        assert!(
            self.runs.is_empty(),
            "an index is queried before Index::finish merged its runs"
        );
    }

    /// Whether some of the index is kept on disk (tests).
    pub fn on_disk(&self) -> bool {
        self.table.is_some() || !self.runs.is_empty()
    }

    /// The first location of `id`, with its mark.
    fn first_slot(&self, id: &ChunkId) -> Option<Slot> {
        self.assert_finished();
        if let Some(s) = self.first.get(id) {
            return Some(*s);
        }
        let (at, mut s) = self.table.as_ref()?.get(id)?;
        s.needed = bit(&self.table_needed, at);
        Some(s)
    }

    /// Every chunk's first location with its mark: in memory, then on disk.
    fn firsts(&self) -> impl Iterator<Item = (ChunkId, Slot)> + '_ {
        self.assert_finished();
        let on_disk = self.table.iter().flat_map(move |t| {
            t.iter().map(move |(at, id, mut s)| {
                s.needed = bit(&self.table_needed, at);
                (id, s)
            })
        });
        self.first.iter().map(|(id, s)| (*id, *s)).chain(on_disk)
    }

    /// Takes `slot` as a location of `id`: its first, or one more if it is
    /// another place than those known.
    fn insert(&mut self, id: &ChunkId, slot: Slot) {
        let first = match self.first.get(id) {
            Some(s) => Some(*s),
            None => self.table.as_ref().and_then(|t| t.get(id)).map(|(_, s)| s),
        };
        let Some(first) = first else {
            self.first.insert(*id, slot);
            self.spill_if_full();
            return;
        };
        if first.same_place(&slot) {
            return;
        }
        let more = self.more.entry(*id).or_default();
        if more.iter().any(|m| m.same_place(&slot)) {
            return;
        }
        if more.len() + 1 >= MAX_CANDIDATES {
            self.dropped += 1;
            return;
        }
        more.push(slot);
    }

    /// Writes the first locations in memory as a run once they reach the
    /// cap. A chunk already in an earlier run is not looked for there: the
    /// runs are reconciled when they are merged ([`Index::finish`]).
    fn spill_if_full(&mut self) {
        if self.first.len() < self.cap() || self.spill_failed.is_some() {
            return;
        }
        let mut run: Vec<(ChunkId, Slot)> = self.first.drain().collect();
        run.sort_unstable_by_key(|a| a.0);
        let written = (|| {
            let mut w = table::TableWriter::new()?;
            for (id, s) in &run {
                w.push(id, s)?;
            }
            w.finish()
        })();
        match written {
            Ok(t) => self.runs.push(Arc::new(t)),
            Err(e) => {
                self.spill_failed = Some((e.kind(), e.to_string()));
                self.first.extend(run);
            }
        }
    }

    /// Merges the runs written while index objects were added into the
    /// table on disk, each chunk once: its first location is the one listed
    /// first (the table's, then each run's in order, then memory's), and its
    /// other places join `more`. Nothing to do when nothing was written
    /// since the last merge. Fails if a run or the table could not be
    /// written (a full or unwritable `TMPDIR`).
    pub fn finish(&mut self) -> Result<(), RepoError> {
        let failed = |kind, why: &str| spill_failed(std::io::Error::new(kind, why.to_string()));
        if let Some((kind, why)) = &self.spill_failed {
            return Err(failed(*kind, why));
        }
        if self.runs.is_empty() {
            return Ok(());
        }
        let old = self.table.take();
        let old_needed = std::mem::take(&mut self.table_needed);
        let runs = std::mem::take(&mut self.runs);
        let mut memory: Vec<(ChunkId, Slot)> = self.first.drain().collect();
        memory.sort_unstable_by_key(|a| a.0);
        // Empty from here on, but for what a fallback adds.
        self.first.shrink_to_fit();
        let mut sources: Vec<Box<dyn Iterator<Item = (ChunkId, Slot)> + '_>> = Vec::new();
        if let Some(t) = &old {
            sources.push(Box::new(t.iter().map(|(at, id, mut s)| {
                s.needed = bit(&old_needed, at);
                (id, s)
            })));
        }
        for r in &runs {
            sources.push(Box::new(r.iter().map(|(_, id, s)| (id, s))));
        }
        sources.push(Box::new(memory.into_iter()));
        let (more, dropped) = (&mut self.more, &mut self.dropped);
        let mut needed = Vec::new();
        let merged = (|| {
            let mut w = table::TableWriter::new()?;
            table::merge(sources, |id, mut slots| {
                if let Some(m) = more.remove(&id) {
                    slots.extend(m);
                }
                let marked = slots.iter().any(|s| s.needed);
                let mut kept: Vec<Slot> = Vec::with_capacity(1);
                for s in slots {
                    if kept.iter().any(|k| k.same_place(&s)) {
                        continue;
                    }
                    if kept.len() >= MAX_CANDIDATES {
                        *dropped += 1;
                        continue;
                    }
                    kept.push(Slot {
                        needed: marked,
                        ..s
                    });
                }
                let first = kept.remove(0);
                set_bit(&mut needed, w.len(), marked);
                w.push(&id, &first)?;
                if !kept.is_empty() {
                    more.insert(id, kept);
                }
                Ok(())
            })?;
            w.finish()
        })();
        match merged {
            Ok(t) => {
                self.table = Some(Arc::new(t));
                self.table_needed = needed;
                Ok(())
            }
            Err(e) => {
                let err = failed(e.kind(), &e.to_string());
                self.spill_failed = Some((e.kind(), e.to_string()));
                Err(err)
            }
        }
    }

    /// The first location listed for `id`: where a reader tries first. Not
    /// to be trusted on its own (see [`Index::candidates`]).
    pub fn get(&self, id: &ChunkId) -> Option<ChunkLocation> {
        self.first_slot(id).map(|s| self.location(id, &s))
    }

    /// Every distinct location known for `id`, first listed first.
    pub fn candidates<'a>(&'a self, id: &'a ChunkId) -> impl Iterator<Item = ChunkLocation> + 'a {
        self.get(id).into_iter().chain(self.more_candidates(id))
    }

    /// Marks `id` as needed, with each of its candidates (verify: a
    /// snapshot needs it). Cheaper than a set of its own: the slot was just
    /// looked up, and the mark sits in its padding.
    pub fn mark_needed(&mut self, id: &ChunkId) {
        self.assert_finished();
        if let Some(s) = self.first.get_mut(id) {
            s.needed = true;
        } else if let Some((at, _)) = self.table.as_ref().and_then(|t| t.get(id)) {
            set_bit(&mut self.table_needed, at, true);
        }
        if self.more.is_empty() {
            return;
        }
        if let Some(more) = self.more.get_mut(id) {
            more.iter_mut().for_each(|s| s.needed = true);
        }
    }

    /// [`Index::mark_needed`] for each of `ids`, returning the first
    /// location of each (`None` for one in no index object; its other
    /// candidates are [`Index::more_candidates`]), read as
    /// [`Index::get_all`] reads them.
    pub fn mark_needed_all(&mut self, ids: &[ChunkId]) -> Vec<Option<ChunkLocation>> {
        let slots = self.slots_all(ids);
        let mut out = Vec::with_capacity(ids.len());
        for (id, found) in ids.iter().zip(slots) {
            match found {
                Some((None, _)) => {
                    if let Some(s) = self.first.get_mut(id) {
                        s.needed = true;
                    }
                }
                Some((Some(at), _)) => set_bit(&mut self.table_needed, at, true),
                None => {}
            }
            if found.is_some() && !self.more.is_empty() {
                if let Some(more) = self.more.get_mut(id) {
                    more.iter_mut().for_each(|s| s.needed = true);
                }
            }
            out.push(found.map(|(_, s)| self.location(id, &s)));
        }
        out
    }

    /// The first slot of each of `ids`, with its record's place when it is
    /// on disk. Those on disk are looked up in id order, each block read
    /// once for all of `ids` in it.
    #[allow(clippy::type_complexity)]
    fn slots_all(&self, ids: &[ChunkId]) -> Vec<Option<(Option<u64>, Slot)>> {
        self.assert_finished();
        let mut out: Vec<Option<(Option<u64>, Slot)>> = ids
            .iter()
            .map(|c| self.first.get(c).map(|s| (None, *s)))
            .collect();
        let Some(table) = &self.table else {
            return out;
        };
        let mut order: Vec<usize> = (0..ids.len()).filter(|i| out[*i].is_none()).collect();
        order.sort_unstable_by(|a, b| ids[*a].cmp(&ids[*b]));
        let on_disk = table.get_sorted(order.iter().map(|i| &ids[*i]));
        for (i, found) in order.into_iter().zip(on_disk) {
            out[i] = found.map(|(at, s)| (Some(at), s));
        }
        out
    }

    /// The locations of `id` after its first ([`Index::candidates`] but the
    /// first): none unless it is disputed.
    pub fn more_candidates<'a>(
        &'a self,
        id: &'a ChunkId,
    ) -> impl Iterator<Item = ChunkLocation> + 'a {
        // No second lookup where no chunk is disputed (nearly always).
        let more = if self.more.is_empty() {
            None
        } else {
            self.more.get(id)
        };
        more.into_iter()
            .flatten()
            .map(move |s| self.location(id, s))
    }

    /// The chunks [`Index::mark_needed`] marked, under each pack one of
    /// their candidates is in (each chunk once a pack, in id order), a pack
    /// at a time. Past as many pairs as the index keeps chunks in memory
    /// they are grouped on disk ([`by_pack`]): verify's memory then goes
    /// by one pack's chunks, not by the repository's. Reads the whole
    /// index: on a blocking thread. Fails if `TMPDIR` cannot hold them.
    pub fn needed_by_pack(&self) -> Result<NeededByPack, RepoError> {
        let mut by_pack = by_pack::ByPack::new(self.cap());
        let pushed = (|| {
            for (id, s) in self.firsts().filter(|(_, s)| s.needed) {
                by_pack.push(s.pack, id)?;
                let more = if self.more.is_empty() {
                    None
                } else {
                    self.more.get(&id)
                };
                let Some(more) = more else { continue };
                let mut packs: Vec<u32> = more.iter().map(|m| m.pack).collect();
                packs.sort_unstable();
                packs.dedup();
                for p in packs.into_iter().filter(|p| *p != s.pack) {
                    by_pack.push(p, id)?;
                }
            }
            Ok(())
        })();
        pushed.map_err(spill_failed)?;
        Ok(NeededByPack {
            groups: by_pack.groups(),
            pack_ids: self.pack_ids.clone(),
        })
    }

    /// The location of `id` when every index object naming it agrees on one
    /// place; `None` when it is unknown or its candidates disagree.
    pub fn agreed(&self, id: &ChunkId) -> Option<ChunkLocation> {
        if self.is_disputed(id) {
            return None;
        }
        self.get(id)
    }

    /// [`Index::get`] for each of `ids`, in their order. On disk, each
    /// block is read once for all of `ids` in it, where one lookup at a
    /// time reads a block each (a file of pages, a pack's chunks: a block
    /// per chunk).
    pub fn get_all(&self, ids: &[ChunkId]) -> Vec<Option<ChunkLocation>> {
        ids.iter()
            .zip(self.slots_all(ids))
            .map(|(id, found)| found.map(|(_, s)| self.location(id, &s)))
            .collect()
    }

    /// [`Index::agreed`] for each of `ids`, in their order, as
    /// [`Index::get_all`] reads them.
    pub fn agreed_all(&self, ids: &[ChunkId]) -> Vec<Option<ChunkLocation>> {
        let mut all = self.get_all(ids);
        if !self.more.is_empty() {
            for (at, id) in all.iter_mut().zip(ids) {
                if self.is_disputed(id) {
                    *at = None;
                }
            }
        }
        all
    }

    /// Whether some index object's locations for `id` disagree.
    pub fn is_disputed(&self, id: &ChunkId) -> bool {
        !self.more.is_empty() && self.more.contains_key(id)
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
        self.first_slot(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.assert_finished();
        self.first.len() + self.table.as_ref().map_or(0, |t| t.len() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        self.add_pack_where(pack, source, &|_| true);
    }

    /// [`Index::add_pack_from`] for the chunks `keep` says yes to (the pack
    /// itself is known whatever it holds).
    fn add_pack_where(
        &mut self,
        pack: &IndexedPack,
        source: SourceId,
        keep: &dyn Fn(&ChunkId) -> bool,
    ) {
        let size = self.packs.entry(pack.id).or_insert(pack.size);
        *size = (*size).max(pack.size);
        let named = self.described_by.entry(pack.id).or_default();
        if !named.contains(&source) {
            named.push(source);
        }
        // Numbered once: every chunk of the pack shares it.
        let number = self.pack_number(pack.id);
        for c in pack.chunks.iter().filter(|c| keep(&c.id)) {
            self.insert(&c.id, Slot::at(number, source, &c.to_blob_entry()));
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
    pub fn add_fallback(&mut self, other: &Index) -> Result<(), RepoError> {
        self.assert_finished();
        let mut mapped: HashMap<SourceId, SourceId> = HashMap::new();
        for (id, first) in other.firsts() {
            // Not `contains`: runs this writes hold only `other`'s chunks,
            // each once.
            let held = self.first.contains_key(&id)
                || self.table.as_ref().is_some_and(|t| t.get(&id).is_some());
            if held {
                continue;
            }
            let more = other.more.get(&id).into_iter().flatten();
            for (nth, s) in std::iter::once(&first).chain(more).enumerate() {
                let loc = other.location(&id, s);
                let source = *mapped
                    .entry(loc.source)
                    .or_insert_with(|| self.add_source(other.source(loc.source)));
                let moved = self.slot(&ChunkLocation { source, ..loc });
                if nth == 0 {
                    self.first.insert(id, moved);
                    self.spill_if_full();
                } else {
                    self.more.entry(id).or_default().push(moved);
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
        self.finish()
    }

    pub fn add_file(&mut self, key: &str, file: &IndexFile) {
        self.add_file_where(key, file, &|_| true);
    }

    /// [`Index::add_file`] for the chunks `keep` says yes to.
    pub fn add_file_where(&mut self, key: &str, file: &IndexFile, keep: &dyn Fn(&ChunkId) -> bool) {
        let source = self.add_source(key);
        for p in &file.packs {
            self.add_pack_where(p, source, keep);
        }
    }
}

fn bit(bits: &[u64], at: u64) -> bool {
    bits.get((at / 64) as usize)
        .is_some_and(|w| w & (1 << (at % 64)) != 0)
}

fn set_bit(bits: &mut Vec<u64>, at: u64, on: bool) {
    let word = (at / 64) as usize;
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    if on {
        bits[word] |= 1 << (at % 64);
    } else {
        bits[word] &= !(1 << (at % 64));
    }
}

/// Index objects of another version than this build's are refused.
fn check_version(key: &str, version: u32) -> Result<(), RepoError> {
    if version == FORMAT_VERSION {
        return Ok(());
    }
    Err(RepoError::Corrupt {
        what: "index object",
        key: key.to_string(),
        why: format!("unknown version {version}"),
    })
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

    /// [`IndexFile::decode`] on a blocking thread: an index object is up to
    /// 100k chunks of JSON to parse (and a seal to open), too much for an
    /// async worker.
    pub async fn decode_blocking<B>(
        key: &str,
        bytes: B,
        crypto: &super::Crypto,
    ) -> Result<Self, RepoError>
    where
        B: AsRef<[u8]> + Send + 'static,
    {
        let (key, crypto) = (key.to_string(), crypto.clone());
        tokio::task::spawn_blocking(move || IndexFile::decode(&key, bytes.as_ref(), &crypto))
            .await
            .expect("index object decode panicked")
    }

    /// The packs an index object describes, with the checks of
    /// [`IndexFile::decode`] but its chunks skipped as the JSON streams by,
    /// on a blocking thread: what prune and keep-locks need of it. Holds the
    /// stored bytes and a small buffer, not the JSON of up to 100k chunks
    /// and their parsed entries.
    pub async fn decode_pack_ids<B>(
        key: &str,
        bytes: B,
        crypto: &super::Crypto,
    ) -> Result<Vec<PackId>, RepoError>
    where
        B: AsRef<[u8]> + Send + 'static,
    {
        #[derive(Deserialize)]
        struct Packs {
            version: u32,
            packs: Vec<Pack>,
        }
        #[derive(Deserialize)]
        struct Pack {
            id: PackId,
        }
        let (key, crypto) = (key.to_string(), crypto.clone());
        tokio::task::spawn_blocking(move || {
            let plain = IndexFile::open(&key, bytes.as_ref(), &crypto)?;
            let file: Packs =
                super::decode_json_zst_buffering(super::INDEX_CAP, &key, &plain, 1 << 20)?;
            check_version(&key, file.version)?;
            Ok(file.packs.into_iter().map(|p| p.id).collect())
        })
        .await
        .expect("index object decode panicked")
    }

    /// An index object's stored bytes checked against the id in its key,
    /// then opened (authenticated): its zstd JSON.
    fn open<'a>(
        key: &str,
        bytes: &'a [u8],
        crypto: &super::Crypto,
    ) -> Result<std::borrow::Cow<'a, [u8]>, RepoError> {
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
        super::open_sealed(crypto, super::INDEX_CAP, key, ad, bytes)
    }

    /// Decodes an index object, checking its bytes against the id in its key,
    /// then its authenticity.
    pub fn decode(key: &str, bytes: &[u8], crypto: &super::Crypto) -> Result<Self, RepoError> {
        let plain = IndexFile::open(key, bytes, crypto)?;
        let file: IndexFile = decode_json_zst(super::INDEX_CAP, key, &plain)?;
        check_version(key, file.version)?;
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

    #[tokio::test]
    async fn the_packs_of_an_index_object_are_read_past_its_chunks_with_every_check() {
        // 40k chunks: more JSON than the 1 MiB read at once, so it streams.
        let pack = |name: &[u8], n: u32| IndexedPack {
            id: PackId(Hash256::digest(name)),
            size: 1 << 30,
            chunks: (0..n)
                .map(|i| IndexedChunk {
                    id: ChunkId(Hash256::digest(&i.to_le_bytes())),
                    offset: 8 + u64::from(i) * 100,
                    ..chunk(Encoding::Zstd, None)
                })
                .collect(),
        };
        let file = IndexFile::new(vec![pack(b"a", 20_000), pack(b"b", 20_000)]);
        let bytes = file.encode(&Crypto::none());
        let key = format!("index/{}", Hash256::digest(&bytes));
        let ids = IndexFile::decode_pack_ids(&key, bytes.clone(), &Crypto::none())
            .await
            .unwrap();
        assert_eq!(ids, [file.packs[0].id, file.packs[1].id]);
        // Other bytes than the key names: refused, naming it.
        let mut flipped = bytes;
        flipped[100] ^= 1;
        let e = IndexFile::decode_pack_ids(&key, flipped, &Crypto::none())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&key) && e.contains("SHA-256"), "{e}");
        // Another version: refused as decode refuses it.
        let other = crate::repository::encode_json_zst(&serde_json::json!({
            "version": FORMAT_VERSION + 1,
            "packs": [{"id": file.packs[0].id, "size": 1, "chunks": []}],
        }));
        let key = format!("index/{}", Hash256::digest(&other));
        let e = IndexFile::decode_pack_ids(&key, other, &Crypto::none())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown version"), "{e}");
    }

    /// [`Index::needed_by_pack`], packs and each pack's chunks sorted.
    fn needed_sorted(index: &Index) -> Vec<(PackId, Vec<ChunkId>)> {
        let mut v: Vec<(PackId, Vec<ChunkId>)> = index
            .needed_by_pack()
            .unwrap()
            .map(|group| {
                let (p, ids) = group.unwrap();
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "{p}: ids in order");
                (p, ids)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_chunks_marked_needed_are_listed_once_under_each_pack_they_may_be_in() {
        let id = |n: u8| ChunkId(Hash256::digest(&[n]));
        let pack = |name: &[u8], chunks: Vec<(ChunkId, u64)>| IndexedPack {
            id: PackId(Hash256::digest(name)),
            size: 1 << 20,
            chunks: chunks
                .into_iter()
                .map(|(id, offset)| IndexedChunk {
                    id,
                    offset,
                    ..chunk(Encoding::Zstd, None)
                })
                .collect(),
        };
        let (a, b) = (
            pack(b"a", vec![(id(1), 8), (id(2), 108), (id(3), 208)]),
            pack(b"b", vec![(id(1), 8), (id(4), 108)]),
        );
        // A second place for chunk 1 in pack a: disputed, two candidates there.
        let a_again = pack(b"a", vec![(id(1), 308)]);
        let mut index = Index::default();
        index.add_pack(&a);
        index.add_pack(&b);
        index.add_pack(&a_again);
        assert_eq!(index.candidates(&id(1)).count(), 3);
        assert!(
            index.needed_by_pack().unwrap().next().is_none(),
            "nothing is needed until marked"
        );

        index.mark_needed(&id(1));
        index.mark_needed(&id(4));
        index.mark_needed(&id(1));
        index.mark_needed(&id(9)); // in no index object: nothing to mark
        let got = needed_sorted(&index);
        let mut want = vec![(a.id, vec![id(1)]), (b.id, vec![id(1), id(4)])];
        want.iter_mut().for_each(|(_, ids)| ids.sort());
        want.sort();
        assert_eq!(got, want);
        // The mark is not part of a place: the same places listed again
        // (by another index object) are no new candidates.
        index.add_pack(&a);
        index.add_pack(&a_again);
        assert_eq!(index.candidates(&id(1)).count(), 3);
        assert!(!index.is_disputed(&id(4)));
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

    fn pack(name: &str, chunks: &[(&str, u64)]) -> IndexedPack {
        IndexedPack {
            id: PackId(Hash256::digest(name.as_bytes())),
            size: 1 << 20,
            chunks: chunks
                .iter()
                .map(|(c, offset)| IndexedChunk {
                    id: ChunkId(Hash256::digest(c.as_bytes())),
                    offset: *offset,
                    length: 100,
                    raw_length: 8192,
                    encoding: Encoding::Zstd,
                    bundle_offset: None,
                })
                .collect(),
        }
    }

    fn id(c: &str) -> ChunkId {
        ChunkId(Hash256::digest(c.as_bytes()))
    }

    #[test]
    fn an_index_loaded_for_some_chunks_holds_their_places_and_still_knows_every_pack() {
        let file = IndexFile::new(vec![
            pack("p1", &[("a", 8), ("b", 108)]),
            pack("p2", &[("c", 8)]),
        ]);
        let mut other = IndexFile::new(vec![pack("p3", &[("b", 508)])]);
        other.version = file.version;
        let wanted = [id("b")];
        let keep = |c: &ChunkId| wanted.contains(c);
        let mut index = Index::default();
        index.add_file_where("index/one", &file, &keep);
        index.add_file_where("index/two", &other, &keep);
        assert_eq!(index.len(), 1, "only b");
        assert!(!index.contains(&id("a")) && !index.contains(&id("c")));
        // Every place of a kept chunk, from every object.
        let b: Vec<(PackId, u64)> = index
            .candidates(&id("b"))
            .map(|l| (l.pack, l.blob.offset))
            .collect();
        assert_eq!(
            b,
            vec![(pack("p1", &[]).id, 108), (pack("p3", &[]).id, 508)]
        );
        // Packs stay known, with their sizes, whatever they hold.
        assert_eq!(index.packs().len(), 3);
        assert_eq!(index.described_by(&pack("p2", &[]).id), Some("index/one"));
    }

    #[test]
    fn a_chunk_s_places_come_back_whole_from_the_compact_index_with_their_pack_and_source() {
        let mut index = Index::default();
        index.add_file(
            "index/one",
            &IndexFile::new(vec![
                pack("p1", &[("a", 8), ("b", 108)]),
                pack("p2", &[("c", 8)]),
            ]),
        );
        // A second object: the same place for `a` again (nothing new), and
        // another place for `b` in a pack the first never named.
        index.add_file(
            "index/two",
            &IndexFile::new(vec![pack("p1", &[("a", 8)]), pack("p3", &[("b", 508)])]),
        );
        let a: Vec<ChunkLocation> = index.candidates(&id("a")).collect();
        assert_eq!(a.len(), 1, "the same place twice is one candidate");
        assert_eq!(a[0].pack, pack("p1", &[]).id);
        assert_eq!(a[0].blob.id, id("a"));
        assert_eq!(index.source(a[0].source), "index/one");
        assert_eq!(index.agreed(&id("a")), Some(a[0]));

        let b: Vec<(PackId, u64, String)> = index
            .candidates(&id("b"))
            .map(|l| (l.pack, l.blob.offset, index.source(l.source).to_string()))
            .collect();
        assert_eq!(
            b,
            vec![
                (pack("p1", &[]).id, 108, "index/one".to_string()),
                (pack("p3", &[]).id, 508, "index/two".to_string()),
            ]
        );
        assert!(index.is_disputed(&id("b")) && index.agreed(&id("b")).is_none());
        assert_eq!(
            index.get(&id("c")).map(|l| l.pack),
            Some(pack("p2", &[]).id)
        );

        // A fallback index numbers its packs its own way: its places keep
        // their packs when taken over, and chunks already known are left.
        let mut fallback = Index::default();
        fallback.add_file(
            "index/pruned",
            &IndexFile::new(vec![pack("p9", &[("d", 8)]), pack("p2", &[("c", 908)])]),
        );
        index.add_fallback(&fallback).unwrap();
        let d = index.get(&id("d")).expect("taken from the fallback");
        assert_eq!((d.pack, d.blob.offset), (pack("p9", &[]).id, 8));
        assert_eq!(index.source(d.source), "index/pruned");
        assert_eq!(index.candidates(&id("c")).count(), 1);
        assert_eq!(index.packs().len(), 4);
    }

    /// The same index objects, read into an index in memory and into one
    /// that keeps all but two chunks on disk.
    fn both(objects: &[(String, IndexFile)]) -> (Index, Index) {
        let (mut memory, mut disk) = (Index::default(), Index::with_memory_cap(2));
        for (key, file) in objects {
            memory.add_file(key, file);
            disk.add_file(key, file);
        }
        disk.finish().unwrap();
        assert!(!memory.on_disk() && disk.on_disk());
        (memory, disk)
    }

    /// A place as the tests compare them: pack, offset, index object.
    type Place = (PackId, u64, String);

    /// Where `index` places `c`: the first place, then the others, sorted.
    fn places(index: &Index, c: &ChunkId) -> (Option<Place>, Vec<Place>) {
        let mut all = index
            .candidates(c)
            .map(|l| (l.pack, l.blob.offset, index.source(l.source).to_string()));
        let first = all.next();
        let mut rest: Vec<_> = all.collect();
        rest.sort();
        (first, rest)
    }

    #[test]
    fn an_index_kept_on_disk_answers_as_the_same_index_in_memory() {
        // 40 chunks over 30 objects, each naming 6 of them at one of eight
        // places (two packs, four offsets; no more than a chunk keeps):
        // chunks named again, at the same place or another one, across runs
        // written two chunks at a time.
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let objects: Vec<(String, IndexFile)> = (0..30)
            .map(|o| {
                let chunks: Vec<(&str, u64)> = (0..6)
                    .map(|_| (names[next(40) as usize].as_str(), 8 + 100 * next(4)))
                    .collect();
                let file = IndexFile::new(vec![pack(&format!("p{}", next(2)), &chunks)]);
                (format!("index/{o:02}"), file)
            })
            .collect();
        let (mut memory, mut disk) = both(&objects);
        assert_eq!(disk.len(), memory.len());
        assert_eq!(disk.disputed_chunks(), memory.disputed_chunks());
        assert!(
            memory.disputed_chunks() > 0,
            "the test names chunks at several places"
        );
        for c in names.iter().map(|n| id(n)).chain([id("nowhere")]) {
            assert_eq!(places(&disk, &c), places(&memory, &c), "{c}");
            assert_eq!(disk.contains(&c), memory.contains(&c));
            assert_eq!(disk.is_disputed(&c), memory.is_disputed(&c));
            assert_eq!(disk.agreed(&c), memory.agreed(&c));
        }
        // All at once, in any order, as one at a time.
        let mut ids: Vec<ChunkId> = names.iter().map(|n| id(n)).collect();
        ids.extend([id("nowhere"), id("c3"), id("c0")]);
        let one_by_one: Vec<_> = ids.iter().map(|c| memory.agreed(c)).collect();
        assert!(one_by_one.iter().any(Option::is_some) && one_by_one.iter().any(Option::is_none));
        assert_eq!(disk.agreed_all(&ids), one_by_one);
        assert_eq!(memory.agreed_all(&ids), one_by_one);
        // Marks (verify's) on records on disk and in memory alike, one at a
        // time or a file's at once.
        for n in ["c1", "c5", "c17"] {
            memory.mark_needed(&id(n));
            disk.mark_needed(&id(n));
        }
        let file = ["c39", "nowhere", "c2", "c39"].map(id);
        let firsts: Vec<_> = file.iter().map(|c| memory.get(c)).collect();
        assert_eq!(memory.mark_needed_all(&file), firsts);
        assert_eq!(disk.mark_needed_all(&file), firsts);
        let sorted = needed_sorted;
        assert!(!sorted(&memory).is_empty());
        assert_eq!(sorted(&disk), sorted(&memory));

        // A fallback taken over into an index on disk, itself on disk: its
        // chunks join, those already held keep their own places.
        let fallback_objects = vec![(
            "index/pruned".to_string(),
            IndexFile::new(vec![pack(
                "p9",
                &[("d1", 8), ("d2", 108), ("d3", 208), ("c1", 908)],
            )]),
        )];
        let (memory_fallback, disk_fallback) = both(&fallback_objects);
        memory.add_fallback(&memory_fallback).unwrap();
        disk.add_fallback(&disk_fallback).unwrap();
        assert_eq!(disk.len(), memory.len());
        for c in ["d1", "d2", "d3", "c1"].map(id) {
            assert_eq!(places(&disk, &c), places(&memory, &c), "{c}");
        }
        assert_eq!(disk.packs(), memory.packs());
        // Marks made before the fallback was merged in are kept.
        assert_eq!(sorted(&disk), sorted(&memory));
    }

    #[test]
    fn a_chunk_named_at_too_many_places_across_runs_keeps_the_first_ones() {
        // One chunk at 12 places, one object each; runs of one chunk.
        let objects: Vec<(String, IndexFile)> = (0..12u64)
            .map(|n| {
                (
                    format!("index/{n:02}"),
                    IndexFile::new(vec![pack("p", &[("x", 8 + 100 * n), ("y", 5000 + n)])]),
                )
            })
            .collect();
        let mut disk = Index::with_memory_cap(1);
        for (key, file) in &objects {
            disk.add_file(key, file);
        }
        disk.finish().unwrap();
        let (first, rest) = places(&disk, &id("x"));
        assert_eq!(first.map(|f| (f.1, f.2)), Some((8, "index/00".to_string())));
        assert_eq!(rest.len(), MAX_CANDIDATES - 1);
        assert_eq!(disk.dropped_locations(), 2 * (12 - MAX_CANDIDATES as u64));
        assert_eq!(disk.len(), 2);
    }
}
