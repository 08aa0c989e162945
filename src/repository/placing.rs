//! Where a backup's chunks end up, for the file entries' chunk places
//! (manifest version 6, `docs/repository-format.md`, *Chunk places in the
//! entries*).
//!
//! A reused chunk's place is known when it is met. A new chunk's is not:
//! it waits in a bundle, the bundle in a pack, and a pack is named by the
//! hash of its bytes once it is finished. So a new chunk is noted by its
//! order among the new chunks of its kind (bundled, or stored alone); those
//! go into packs in that order, and each pack's entries, in order, say where
//! each one went. At the end every entry's runs are resolved against the
//! packs the manifest names. Memory: a run per stretch of chunks that
//! follow each other in a bundle (about one per 15 pages), never a place
//! per chunk.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::manifest::Placement;
use super::pack::{BlobEntry, Encoding};
use crate::ids::{ChunkId, ChunkMap, PackId};

/// A new chunk, by its order among the new chunks of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewChunk {
    Alone(u32),
    Bundled(u32),
}

/// How many new chunks a generation of [`RecentChunks`] holds: 7/8 of
/// 2^17, which fills a hash table of 2^17 slots of 41 bytes (5.4 MB)
/// without growing it again. Two generations, at most 11 MB, remember at
/// least the last 114,688 new chunks: 896 MiB of 8 KiB pages, or about
/// 112 GiB of content-defined chunks (1 MiB on average).
pub const RECENT_GENERATION: usize = 114_688;

/// How many chunks met more than once a backup remembers for its whole run
/// ([`RecentChunks`]): 7/8 of 2^16 (2.7 MB).
pub const PINNED_MAX: usize = 57_344;

/// The new chunks a backup remembers, so a chunk met twice is stored once,
/// in bounded memory whatever the size of the source.
///
/// At most two generations of `generation` chunks: when the current one is
/// full it becomes the old one and the old one is forgotten; a chunk found
/// in the old one moves to the current one. A chunk met more than once is
/// also kept for the whole backup (up to [`PINNED_MAX`]), because what
/// recurs recurs again: an all-zero page, or a catalog page that template1
/// and template0 share and every database created from them has a copy of,
/// read after gigabytes of another database's tables. A chunk met again
/// only after it was forgotten is stored again: the second copy costs its
/// bytes and gives the chunk two places (as the copies two concurrent
/// backups store do), so readers check which one holds it; never
/// correctness.
#[derive(Debug)]
pub struct RecentChunks {
    current: ChunkMap<NewChunk>,
    old: ChunkMap<NewChunk>,
    generation: usize,
    pinned: ChunkMap<NewChunk>,
}

impl RecentChunks {
    pub fn new(generation: usize) -> Self {
        RecentChunks {
            current: ChunkMap::default(),
            old: ChunkMap::default(),
            generation: generation.max(1),
            pinned: ChunkMap::default(),
        }
    }

    /// The order `id` was given when it was first met, if it is still
    /// remembered; otherwise remembers it as `new` and returns `None`. A
    /// new chunk costs a lookup in each table that holds any.
    pub fn seen_or_remember(&mut self, id: ChunkId, new: NewChunk) -> Option<NewChunk> {
        let (seen, added) = match self.current.entry(id) {
            Entry::Occupied(o) => (Some(*o.get()), false),
            Entry::Vacant(v) => match self.pinned.get(v.key()) {
                Some(pinned) => return Some(*pinned),
                None => {
                    let seen = self.old.remove(v.key());
                    v.insert(seen.unwrap_or(new));
                    (seen, true)
                }
            },
        };
        if let Some(seen) = seen {
            if self.pinned.len() < PINNED_MAX {
                self.pinned.insert(id, seen);
            }
        }
        if added && self.current.len() >= self.generation {
            // Full: it becomes the old generation, and the old one is
            // forgotten. The table just filled is the right size for the
            // next one.
            let next = ChunkMap::with_capacity_and_hasher(self.generation, Default::default());
            self.old = std::mem::replace(&mut self.current, next);
        }
        seen
    }

    /// New chunks remembered now in the generations (at most twice the
    /// generation), and those kept for the whole run.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.current.len() + self.old.len(), self.pinned.len())
    }
}

/// A stretch of a file's chunks, as the backup meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Already stored, at this place (its `pack` unused: `PackId` beside).
    At(PackId, Placement),
    /// New chunks stored alone, `count` from the `first`.
    Alone { first: u32, count: u32 },
    /// New bundled chunks, `count` from the `first`.
    Bundled { first: u32, count: u32 },
}

/// One file's chunks, as runs of [`Pending`].
#[derive(Debug, Default, Clone)]
pub struct FilePlaces(Vec<Pending>);

impl FilePlaces {
    /// A chunk already stored at `blob` in `pack`.
    pub fn stored(&mut self, pack: PackId, blob: &BlobEntry) {
        let next = Placement::of(0, blob);
        if let Some(Pending::At(p, run)) = self.0.last_mut() {
            if *p == pack && run.extend(&next) {
                return;
            }
        }
        self.0.push(Pending::At(pack, next));
    }

    /// A new chunk (or one new earlier in this backup).
    pub fn new_chunk(&mut self, chunk: NewChunk) {
        match (self.0.last_mut(), chunk) {
            (Some(Pending::Alone { first, count }), NewChunk::Alone(n))
            | (Some(Pending::Bundled { first, count }), NewChunk::Bundled(n))
                if first.checked_add(*count) == Some(n) =>
            {
                *count += 1
            }
            (_, NewChunk::Alone(n)) => self.0.push(Pending::Alone { first: n, count: 1 }),
            (_, NewChunk::Bundled(n)) => self.0.push(Pending::Bundled { first: n, count: 1 }),
        }
    }
}

/// Where the new chunks went, pack by pack, as the writer finished packs.
#[derive(Debug, Default)]
pub struct Placing {
    /// Runs of bundled chunks: the first one's order, and the run's place
    /// (its `pack` the pack's order among this backup's packs).
    bundled: Vec<(u32, Placement)>,
    bundled_seen: u32,
    /// Chunks stored alone, in their order (`pack` as above).
    alone: Vec<Placement>,
    packs: u32,
}

impl Placing {
    /// Notes a finished pack's chunks (its index entries, in order); returns
    /// the pack's order among this backup's packs.
    pub fn pack_finished(&mut self, entries: &[BlobEntry]) -> u32 {
        let seq = self.packs;
        self.packs += 1;
        for e in entries {
            let p = Placement::of(seq, e);
            if e.encoding == Encoding::Bundle {
                let extended = self
                    .bundled
                    .last_mut()
                    .is_some_and(|(_, run)| run.extend(&p));
                if !extended {
                    self.bundled.push((self.bundled_seen, p));
                }
                self.bundled_seen += 1;
            } else {
                self.alone.push(p);
            }
        }
        seq
    }

    /// A file's places against `packs` (the manifest's, sorted), given
    /// each of this backup's packs by its order; `None` when one cannot be
    /// placed (then readers find its chunks through the index).
    pub fn resolve(
        &self,
        file: &FilePlaces,
        ids: &HashMap<u32, PackId>,
        packs: &[PackId],
    ) -> Option<Vec<Placement>> {
        let number = |pack: &PackId| packs.binary_search(pack).ok().map(|i| i as u32);
        let mut out: Vec<Placement> = Vec::new();
        let mut push = |p: Placement| {
            if !out.last_mut().is_some_and(|last| last.extend(&p)) {
                out.push(p);
            }
        };
        for pending in &file.0 {
            match *pending {
                Pending::At(pack, run) => push(Placement {
                    pack: number(&pack)?,
                    ..run
                }),
                Pending::Alone { first, count } => {
                    for n in first..first.checked_add(count)? {
                        let p = *self.alone.get(n as usize)?;
                        push(Placement {
                            pack: number(ids.get(&p.pack)?)?,
                            ..p
                        });
                    }
                }
                Pending::Bundled { first, count } => {
                    let mut i = self.bundled.partition_point(|(f, _)| *f <= first);
                    for n in first..first.checked_add(count)? {
                        let (start, run) = loop {
                            let (start, run) = *self.bundled.get(i.checked_sub(1)?)?;
                            if n < start + run.count {
                                break (start, run);
                            }
                            i += 1;
                        };
                        let k = n - start;
                        push(Placement {
                            pack: number(ids.get(&run.pack)?)?,
                            bundle_offset: run.bundle_offset + run.raw_length * k,
                            count: 1,
                            ..run
                        });
                    }
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash256;
    use std::num::NonZeroU32;

    fn id(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        ChunkId(Hash256(b))
    }

    #[test]
    fn a_backup_remembers_two_generations_of_new_chunks_and_for_good_those_met_twice() {
        let b = NewChunk::Bundled;
        let mut recent = RecentChunks::new(3);
        for n in 0..3 {
            assert_eq!(recent.seen_or_remember(id(n), b(n)), None);
        }
        // The first generation is full: it is the old one now, still known.
        // Met again, a chunk keeps the order it was first given, moves to
        // the current generation, and is kept for good.
        assert_eq!(recent.seen_or_remember(id(1), b(9)), Some(b(1)));
        assert_eq!(recent.seen_or_remember(id(3), NewChunk::Alone(0)), None);
        assert_eq!(recent.len(), (4, 1));
        // Chunk 4 fills the current generation (1, 3, 4), which becomes the
        // old one: 0 and 2, met once, are forgotten.
        assert_eq!(recent.seen_or_remember(id(4), b(3)), None);
        assert_eq!(recent.len(), (3, 1));
        // Forgotten: met again, it is new again, under its new order.
        assert_eq!(recent.seen_or_remember(id(2), b(4)), None);
        assert_eq!(recent.seen_or_remember(id(2), b(9)), Some(b(4)));
        // Two more turns of the generations: chunk 3, met once, is gone;
        // chunk 1, met twice, is still known under its first order.
        for n in 5..11 {
            assert_eq!(recent.seen_or_remember(id(n), b(n)), None);
        }
        assert_eq!(recent.seen_or_remember(id(1), b(9)), Some(b(1)));
        assert_eq!(recent.seen_or_remember(id(3), b(11)), None);
        // Never more than two generations, and never more than
        // PINNED_MAX kept for good.
        for n in 100..(100 + PINNED_MAX as u32 + 50) {
            assert_eq!(recent.seen_or_remember(id(n), b(n)), None);
            assert_eq!(recent.seen_or_remember(id(n), b(0)), Some(b(n)));
            let (generations, pinned) = recent.len();
            assert!(generations < 6, "{generations} remembered");
            assert!(pinned <= PINNED_MAX, "{pinned} kept");
        }
        assert_eq!(recent.len().1, PINNED_MAX);
    }

    fn pack(n: u8) -> PackId {
        PackId(Hash256([n; 32]))
    }

    fn member(offset: u64, at: u32, len: u32) -> BlobEntry {
        BlobEntry {
            id: ChunkId(Hash256([at as u8; 32])),
            offset,
            length: 900,
            raw_length: len,
            encoding: Encoding::Bundle,
            bundle_offset: NonZeroU32::new(at),
        }
    }

    #[test]
    fn new_chunks_are_placed_by_their_order_in_runs_per_bundle() {
        let mut placing = Placing::default();
        // Pack 0: a bundle of three 8 KiB pages, a blob alone, a bundle of two.
        let alone = BlobEntry {
            id: ChunkId(Hash256([9; 32])),
            offset: 908,
            length: 70_000,
            raw_length: 100_000,
            encoding: Encoding::Zstd,
            bundle_offset: None,
        };
        let seq = placing.pack_finished(&[
            member(8, 20, 8192),
            member(8, 20 + 8192, 8192),
            member(8, 20 + 2 * 8192, 8192),
            alone,
            member(70_908, 16, 8192),
            member(70_908, 16 + 8192, 8192),
        ]);
        assert_eq!(seq, 0);
        assert_eq!(placing.pack_finished(&[member(8, 12, 500)]), 1);
        let ids = HashMap::from([(0, pack(7)), (1, pack(3))]);
        let packs = [pack(1), pack(3), pack(7)];

        // A file of bundled chunks 1..=5, chunk 0 reused from pack 1, the
        // lone blob, and bundled chunk 5 (in the second pack).
        let mut file = FilePlaces::default();
        file.stored(pack(1), &member(8, 12, 8192));
        for n in 1..5 {
            file.new_chunk(NewChunk::Bundled(n));
        }
        file.new_chunk(NewChunk::Alone(0));
        file.new_chunk(NewChunk::Bundled(5));
        let at = placing.resolve(&file, &ids, &packs).unwrap();
        let runs: Vec<Vec<u64>> = at.into_iter().map(Into::into).collect();
        assert_eq!(
            runs,
            vec![
                vec![0, 8, 900, 2, 12, 8192, 1],
                vec![2, 8, 900, 2, 20 + 8192, 8192, 2],
                vec![2, 70_908, 900, 2, 16, 8192, 2],
                vec![2, 908, 70_000, 1, 100_000],
                vec![1, 8, 900, 2, 12, 500, 1],
            ]
        );
    }

    #[test]
    fn a_chunk_in_no_named_pack_leaves_the_file_unplaced() {
        let placing = Placing::default();
        let mut file = FilePlaces::default();
        file.stored(pack(4), &member(8, 12, 8192));
        assert_eq!(placing.resolve(&file, &HashMap::new(), &[pack(1)]), None);
        let mut file = FilePlaces::default();
        file.new_chunk(NewChunk::Bundled(0));
        assert_eq!(placing.resolve(&file, &HashMap::new(), &[pack(1)]), None);
    }
}
