//! The index's chunks on disk, for an index too large to hold in memory.
//!
//! A repository of a large database indexes one chunk per 8 KiB page: 268
//! million for 2 TB, 17 GB as the in-memory [`super::Index`] holds them. Past
//! a bound, the index keeps its chunks here instead: fixed-size records
//! sorted by chunk id in an unnamed temporary file in the system's
//! temporary directory (`TMPDIR`, as `super::super::spill` uses), and in
//! memory only the first 8 bytes of the first id of each block of
//! [`BLOCK`] records (0.125 bytes a chunk: 33 MB for 268 million). A lookup
//! finds its block by those and reads that one block (4 KiB, a page of the
//! page cache); two ids that share their first 8 bytes across a block's
//! edge (one chance in 2^64 between two honest ids; an insider can add ids
//! that do) cost a read of each block they share.
//!
//! The file is this process's own (unnamed: nobody else can open it, and it
//! disappears with the process however it ends), so what is read back is
//! what was written; a failed read of it is a failure of the machine's
//! disk, and panics with the reason rather than answering "not indexed",
//! which a caller could take for "not needed".
//!
//! Records are built a run at a time ([`TableWriter`], ids ascending), and
//! runs are merged into one table with [`merge`].

use std::collections::BinaryHeap;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::Slot;
use crate::ids::{ChunkId, Hash256};

/// Bytes a record takes: the chunk id, then its [`Slot`].
pub(super) const RECORD: usize = 64;

/// Records a block: what one lookup reads (4 KiB).
pub(super) const BLOCK: usize = 64;

/// Sorted records in a temporary file, with the first 8 bytes of the
/// first id of each block.
#[derive(Debug)]
pub(super) struct Table {
    file: std::fs::File,
    len: u64,
    fences: Vec<u64>,
}

impl Table {
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The record for `id`, and its place among the records.
    pub(super) fn get(&self, id: &ChunkId) -> Option<(u64, Slot)> {
        self.blocks_for(id).find_map(|block| {
            let records = self.read_block(block);
            find(&records, id).map(|(i, s)| ((block * BLOCK + i) as u64, s))
        })
    }

    /// The blocks that may hold `id`: from the last one whose first id has
    /// a lower prefix to the last one whose first id has the same.
    fn blocks_for(&self, id: &ChunkId) -> std::ops::Range<usize> {
        let p = id.0.prefix();
        let below = self.fences.partition_point(|f| *f < p);
        let up_to = below + self.fences[below..].partition_point(|f| *f == p);
        below.saturating_sub(1)..up_to
    }

    /// [`Table::get`] for each of `ids`, which come in ascending order:
    /// each block read once.
    pub(super) fn get_sorted<'a>(
        &self,
        ids: impl Iterator<Item = &'a ChunkId>,
    ) -> Vec<Option<(u64, Slot)>> {
        let mut held: Option<(usize, Vec<u8>)> = None;
        ids.map(|id| {
            for block in self.blocks_for(id) {
                if held.as_ref().is_none_or(|(b, _)| *b != block) {
                    held = Some((block, self.read_block(block)));
                }
                let (_, records) = held.as_ref()?;
                if id_of(records) > *id {
                    return None; // sorted: no later block holds it
                }
                if let Some((i, s)) = find(records, id) {
                    return Some(((block * BLOCK + i) as u64, s));
                }
            }
            None
        })
        .collect()
    }

    /// Every record in id order, with its place among the records.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, ChunkId, Slot)> + '_ {
        (0..self.fences.len()).flat_map(move |block| {
            let records = self.read_block(block);
            (0..records.len() / RECORD)
                .map(move |i| {
                    let at = &records[i * RECORD..(i + 1) * RECORD];
                    ((block * BLOCK + i) as u64, id_of(at), slot_of(at))
                })
                .collect::<Vec<_>>()
        })
    }

    /// The bytes of block `block` (its records, whole).
    fn read_block(&self, block: usize) -> Vec<u8> {
        let first = (block * BLOCK) as u64;
        let count = (self.len - first).min(BLOCK as u64) as usize;
        let mut buf = vec![0u8; count * RECORD];
        if let Err(e) = self.file.read_exact_at(&mut buf, first * RECORD as u64) {
            panic!(
                "unable to read the index back from its temporary file in {} (TMPDIR): {e}",
                std::env::temp_dir().display()
            );
        }
        buf
    }
}

/// Writes records, ids ascending, into a new [`Table`].
pub(super) struct TableWriter {
    file: BufWriter<std::fs::File>,
    len: u64,
    fences: Vec<u64>,
    last: Option<ChunkId>,
}

impl TableWriter {
    pub(super) fn new() -> io::Result<Self> {
        Ok(TableWriter {
            file: BufWriter::with_capacity(BLOCK * RECORD, tempfile::tempfile()?),
            len: 0,
            fences: Vec::new(),
            last: None,
        })
    }

    /// Appends a record; `id` must be above the last one appended.
    pub(super) fn push(&mut self, id: &ChunkId, slot: &Slot) -> io::Result<()> {
        assert!(
            self.last.is_none_or(|last| last < *id),
            "index table records out of order"
        );
        if self.len.is_multiple_of(BLOCK as u64) {
            self.fences.push(id.0.prefix());
        }
        self.file.write_all(&record(id, slot))?;
        self.len += 1;
        self.last = Some(*id);
        Ok(())
    }

    /// Records appended so far.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn finish(self) -> io::Result<Table> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        Ok(Table {
            file,
            len: self.len,
            fences: self.fences,
        })
    }
}

/// The sources' records as one sorted stream: for each id, every source's
/// slot for it, in the sources' order (the first source first). Each source
/// is sorted and holds an id once.
pub(super) fn merge<'a>(
    mut sources: Vec<Box<dyn Iterator<Item = (ChunkId, Slot)> + 'a>>,
    mut each: impl FnMut(ChunkId, Vec<Slot>) -> io::Result<()>,
) -> io::Result<()> {
    // Min-heap by (id, source number): the earlier source first on a tie.
    // Each source's next slot waits beside it, under the source's number.
    let mut pending: Vec<Option<Slot>> = vec![None; sources.len()];
    let mut heap = BinaryHeap::new();
    for (n, s) in sources.iter_mut().enumerate() {
        if let Some((id, slot)) = s.next() {
            pending[n] = Some(slot);
            heap.push(std::cmp::Reverse((id, n)));
        }
    }
    let mut group: Option<(ChunkId, Vec<Slot>)> = None;
    while let Some(std::cmp::Reverse((id, n))) = heap.pop() {
        let slot = pending[n]
            .take()
            .expect("a slot waits for each source in the heap");
        if let Some((next, next_slot)) = sources[n].next() {
            pending[n] = Some(next_slot);
            heap.push(std::cmp::Reverse((next, n)));
        }
        match &mut group {
            Some((gid, slots)) if *gid == id => slots.push(slot),
            _ => {
                if let Some((gid, slots)) = group.take() {
                    each(gid, slots)?;
                }
                group = Some((id, vec![slot]));
            }
        }
    }
    if let Some((gid, slots)) = group {
        each(gid, slots)?;
    }
    Ok(())
}

/// The record for `id` among a block's, and its place in the block.
fn find(records: &[u8], id: &ChunkId) -> Option<(usize, Slot)> {
    let (mut lo, mut hi) = (0, records.len() / RECORD);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let at = &records[mid * RECORD..(mid + 1) * RECORD];
        match id_of(at).cmp(id) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some((mid, slot_of(at))),
        }
    }
    None
}

fn record(id: &ChunkId, s: &Slot) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..32].copy_from_slice(&id.0 .0);
    r[32..40].copy_from_slice(&s.offset.to_le_bytes());
    r[40..44].copy_from_slice(&s.pack.to_le_bytes());
    r[44..48].copy_from_slice(&s.source.0.to_le_bytes());
    r[48..52].copy_from_slice(&s.length.to_le_bytes());
    r[52..56].copy_from_slice(&s.raw_length.to_le_bytes());
    r[56..60].copy_from_slice(&s.bundle_offset.map_or(0, |o| o.get()).to_le_bytes());
    r[60] = s.encoding.to_byte();
    r
}

fn id_of(r: &[u8]) -> ChunkId {
    ChunkId(Hash256(r[..32].try_into().expect("32 bytes")))
}

fn u32_at(r: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(r[at..at + 4].try_into().expect("4 bytes"))
}

fn slot_of(r: &[u8]) -> Slot {
    Slot {
        offset: u64::from_le_bytes(r[32..40].try_into().expect("8 bytes")),
        pack: u32_at(r, 40),
        source: super::SourceId(u32_at(r, 44)),
        length: u32_at(r, 48),
        raw_length: u32_at(r, 52),
        bundle_offset: std::num::NonZeroU32::new(u32_at(r, 56)),
        encoding: super::super::pack::Encoding::from_byte(r[60])
            .expect("an encoding this process wrote"),
        needed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(n: u64) -> Slot {
        Slot {
            offset: n,
            pack: (n % 7) as u32,
            source: super::super::SourceId((n % 3) as u32),
            length: 100 + n as u32,
            raw_length: 8192,
            bundle_offset: std::num::NonZeroU32::new((n % 2) as u32),
            encoding: super::super::super::pack::Encoding::Bundle,
            needed: false,
        }
    }

    #[test]
    fn ids_that_share_their_first_bytes_across_blocks_are_all_found() {
        // 3 runs of 150 ids sharing their first 8 bytes (several blocks
        // each), between ids that do not, and absent ids among them.
        let id = |prefix: u64, rest: u64| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&prefix.to_be_bytes());
            b[24..].copy_from_slice(&rest.to_be_bytes());
            ChunkId(Hash256(b))
        };
        let mut present = Vec::new();
        for prefix in [5u64, 9, 10, 11, 1 << 40] {
            let shared = matches!(prefix, 9 | 11 | 1099511627776);
            for rest in 0..if shared { 150 } else { 3 } {
                present.push(id(prefix, rest * 2 + 1));
            }
        }
        present.sort();
        let mut w = TableWriter::new().unwrap();
        for (n, c) in present.iter().enumerate() {
            w.push(c, &slot(n as u64)).unwrap();
        }
        let table = w.finish().unwrap();
        assert_eq!(table.len(), present.len() as u64);
        for (n, c) in present.iter().enumerate() {
            assert_eq!(table.get(c), Some((n as u64, slot(n as u64))), "{c:?}");
        }
        let absent = [
            id(9, 0),
            id(9, 100),
            id(9, 1000),
            id(11, 298),
            id(0, 1),
            id(12, 1),
            id(u64::MAX, 0),
        ];
        for c in &absent {
            assert_eq!(table.get(c), None, "{c:?}");
        }
        // All at once, in order, present and absent mixed.
        let mut all: Vec<ChunkId> = present.iter().chain(&absent).copied().collect();
        all.sort();
        let found = table.get_sorted(all.iter());
        for (c, f) in all.iter().zip(found) {
            let want = present
                .binary_search(c)
                .ok()
                .map(|n| (n as u64, slot(n as u64)));
            assert_eq!(f, want, "{c:?}");
        }
        let listed: Vec<ChunkId> = table.iter().map(|(_, c, _)| c).collect();
        assert_eq!(listed, present);
    }
}
