//! Chunk ids grouped by pack, for any number of them: what `verify` needs
//! of each pack it reads (the chunks a snapshot needs there), at a few
//! hundred million chunks for a 2 TB cluster.
//!
//! Pairs of (pack number, chunk id) are held in memory up to a cap, then
//! sorted and written as a run of fixed 36-byte records to an unnamed
//! temporary file in `TMPDIR` (as the index's table is: this process's
//! own, gone with it). Reading merges the runs and what is still in memory,
//! and hands over one pack's chunks at a time, packs in ascending number:
//! memory goes by the cap and one pack's chunks, not by the repository.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufReader, BufWriter, Read, Write};

use crate::ids::{ChunkId, Hash256};

/// Bytes a record takes: the pack number (big-endian), then the chunk id.
const RECORD: usize = 4 + 32;

/// What each run is read through while they are merged: at 2 TB of pages
/// (about 1,170 runs) 9.4 MB in all, where 64 KiB each took 75 MB.
const RUN_BUFFER: usize = 8 * 1024;

/// Collects (pack number, chunk id) pairs, in any order.
#[derive(Debug)]
pub struct ByPack {
    memory: Vec<(u32, ChunkId)>,
    runs: Vec<std::fs::File>,
    cap: usize,
}

impl ByPack {
    /// Keeps at most `cap` pairs in memory (the index's own cap: 229,376
    /// pairs, 8 MiB; tests: fewer).
    pub fn new(cap: usize) -> Self {
        ByPack {
            memory: Vec::new(),
            runs: Vec::new(),
            cap: cap.max(1),
        }
    }

    pub fn push(&mut self, pack: u32, id: ChunkId) -> io::Result<()> {
        self.memory.push((pack, id));
        if self.memory.len() >= self.cap {
            self.memory.sort_unstable();
            let mut w = BufWriter::with_capacity(64 * RECORD * 16, tempfile::tempfile()?);
            for (pack, id) in self.memory.drain(..) {
                w.write_all(&pack.to_be_bytes())?;
                w.write_all(&id.0 .0)?;
            }
            let mut file = w.into_inner().map_err(|e| e.into_error())?;
            io::Seek::rewind(&mut file)?;
            self.runs.push(file);
        }
        Ok(())
    }

    /// Whether some pairs went to disk (tests).
    #[cfg(test)]
    pub fn on_disk(&self) -> bool {
        !self.runs.is_empty()
    }

    /// The pairs by pack: each pack's chunk ids once, in id order.
    pub fn groups(mut self) -> Groups {
        self.memory.sort_unstable();
        let mut sources: Vec<Source> = self
            .runs
            .into_iter()
            .map(|f| Source::Run(BufReader::with_capacity(RUN_BUFFER, f)))
            .collect();
        sources.push(Source::Memory(self.memory.into_iter()));
        let mut groups = Groups {
            sources,
            heap: BinaryHeap::new(),
            error: None,
            failed: false,
        };
        for n in 0..groups.sources.len() {
            groups.refill(n);
        }
        groups
    }
}

enum Source {
    Run(BufReader<std::fs::File>),
    Memory(std::vec::IntoIter<(u32, ChunkId)>),
}

impl Source {
    fn next(&mut self) -> io::Result<Option<(u32, ChunkId)>> {
        match self {
            Source::Memory(m) => Ok(m.next()),
            Source::Run(r) => {
                let mut buf = [0u8; RECORD];
                match r.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e),
                }
                let pack = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
                let id = ChunkId(Hash256(buf[4..].try_into().expect("32 bytes")));
                Ok(Some((pack, id)))
            }
        }
    }
}

/// One pack's chunk ids at a time, packs ascending (see [`ByPack::groups`]).
pub struct Groups {
    sources: Vec<Source>,
    /// Each source's next pair, under the source's number.
    heap: BinaryHeap<Reverse<((u32, ChunkId), usize)>>,
    /// A run that could not be read: the next item is this error.
    error: Option<io::Error>,
    failed: bool,
}

impl Groups {
    /// Reads source `n`'s next pair into the heap (or its error aside).
    fn refill(&mut self, n: usize) {
        match self.sources[n].next() {
            Ok(Some(pair)) => self.heap.push(Reverse((pair, n))),
            Ok(None) => {}
            Err(e) => self.error = Some(e),
        }
    }
}

impl Iterator for Groups {
    type Item = io::Result<(u32, Vec<ChunkId>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(e) = self.error.take() {
            self.failed = true;
            return Some(Err(e));
        }
        let Reverse(((pack, first), n)) = self.heap.pop()?;
        self.refill(n);
        let mut ids = vec![first];
        while let Some(Reverse(((p, id), _))) = self.heap.peek() {
            if *p != pack {
                break;
            }
            let (id, m) = (*id, self.heap.pop().expect("peeked").0 .1);
            if ids.last() != Some(&id) {
                ids.push(id);
            }
            self.refill(m);
            if let Some(e) = self.error.take() {
                self.failed = true;
                return Some(Err(e));
            }
        }
        Some(Ok((pack, ids)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        ChunkId(Hash256::digest(&n.to_le_bytes()))
    }

    /// Runs on disk and what stays in memory read back as one grouping,
    /// the same as all of it held in memory: each pack once, ascending,
    /// each id once under it, ascending.
    #[test]
    fn pairs_spilled_in_runs_come_back_grouped_as_pairs_held_in_memory() {
        let pairs: Vec<(u32, ChunkId)> = (0..1000u32)
            .map(|i| ((i * 7919) % 13, id(i % 300)))
            .collect();
        let collect = |cap: usize| {
            let mut b = ByPack::new(cap);
            for (p, c) in &pairs {
                b.push(*p, *c).unwrap();
            }
            let on_disk = b.on_disk();
            let groups: Vec<(u32, Vec<ChunkId>)> = b.groups().map(Result::unwrap).collect();
            (on_disk, groups)
        };
        let (disk, spilled) = collect(37);
        let (memory, held) = collect(usize::MAX);
        assert!(disk && !memory);
        assert_eq!(spilled, held);
        let packs: Vec<u32> = held.iter().map(|(p, _)| *p).collect();
        assert_eq!(packs, (0..13).collect::<Vec<_>>());
        for (p, ids) in &held {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "pack {p}");
            let mut want: Vec<ChunkId> = pairs
                .iter()
                .filter(|(q, _)| q == p)
                .map(|(_, c)| *c)
                .collect();
            want.sort();
            want.dedup();
            assert_eq!(ids, &want, "pack {p}");
        }
        assert!(ByPack::new(5).groups().next().is_none());
    }
}
