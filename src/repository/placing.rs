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

use std::collections::HashMap;

use super::manifest::Placement;
use super::pack::{BlobEntry, Encoding};
use crate::ids::PackId;

/// A new chunk, by its order among the new chunks of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewChunk {
    Alone(u32),
    Bundled(u32),
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
    use crate::ids::{ChunkId, Hash256};
    use std::num::NonZeroU32;

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
