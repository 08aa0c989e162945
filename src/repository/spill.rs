//! A backup's chunk lists, kept off the heap as it goes.
//!
//! A backup learns one chunk id (32 bytes) per chunk of every file it
//! writes, read or reused: 8 GB for a 2 TB cluster of 8 KiB pages. They are needed
//! only at the end, when the chunk-list objects are encoded (see
//! `Manifest::encode_entries_each`), so the writer appends them here in the
//! order it takes them: the first [`IN_MEMORY`] stay in memory, and past
//! that they go, [`IN_MEMORY`] at a time, to an unnamed temporary file in
//! the system's temporary directory (`TMPDIR`), which disappears with the
//! process however it ends. Each file's ids are read back when its list is
//! encoded. A file's ids follow each other: the writer takes chunks in the
//! order the source gives them, one file after another.

use std::io;
use std::os::unix::fs::FileExt;

use crate::ids::{ChunkId, Hash256};

/// Ids kept in memory before they go to the temporary file: 8 MB.
pub const IN_MEMORY: usize = 1 << 18;

const ID: usize = 32;

/// The ids, in order: those on disk first, then those in memory.
#[derive(Debug)]
pub struct ChunkSpill {
    /// Holds exactly the first `on_disk` ids, created at the first spill.
    file: Option<std::fs::File>,
    on_disk: u64,
    tail: Vec<ChunkId>,
    limit: usize,
}

/// Where a file's ids are among a spill's: `count` from the `start`-th.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub count: u64,
}

/// A backup's spilled chunk lists: the spill, and where each entry's ids
/// are in it, by the entry's place among the manifest's entries (a count of
/// 0 for an entry with none: a folder, a symlink, an empty file).
#[derive(Debug)]
pub struct SpilledLists {
    pub spill: ChunkSpill,
    pub spans: Vec<Span>,
}

impl SpilledLists {
    /// The ids of the `entry`-th entry spilled here (none if it has none
    /// here).
    pub fn chunks_of(&self, entry: usize) -> io::Result<Vec<ChunkId>> {
        match self.spans.get(entry) {
            Some(span) if span.count > 0 => self.spill.read(*span),
            _ => Ok(Vec::new()),
        }
    }
}

impl ChunkSpill {
    /// Keeps `limit` ids in memory at most ([`IN_MEMORY`] but in tests).
    pub fn new(limit: usize) -> Self {
        ChunkSpill {
            file: None,
            on_disk: 0,
            tail: Vec::new(),
            limit: limit.max(1),
        }
    }

    /// How many ids it holds.
    pub fn len(&self) -> u64 {
        self.on_disk + self.tail.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `id` to `span`, which must end where the spill does (a
    /// file's ids follow each other).
    pub fn push(&mut self, span: &mut Span, id: ChunkId) -> io::Result<()> {
        if span.count == 0 {
            span.start = self.len();
        }
        assert_eq!(
            span.start + span.count,
            self.len(),
            "a file's chunk ids follow each other"
        );
        self.tail.push(id);
        span.count += 1;
        if self.tail.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile()?),
        };
        let bytes: Vec<u8> = self.tail.iter().flat_map(|id| id.0 .0).collect();
        file.write_all_at(&bytes, self.on_disk * ID as u64)?;
        self.on_disk += self.tail.len() as u64;
        self.tail.clear();
        Ok(())
    }

    /// The ids `span` covers, read back from the file where they were
    /// spilled.
    pub fn read(&self, span: Span) -> io::Result<Vec<ChunkId>> {
        let end = span
            .start
            .checked_add(span.count)
            .filter(|e| *e <= self.len());
        let Some(end) = end else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "ids {}..+{} asked of a spill of {}",
                    span.start,
                    span.count,
                    self.len()
                ),
            ));
        };
        let mut ids = Vec::with_capacity(span.count as usize);
        if span.start < self.on_disk {
            let upto = end.min(self.on_disk);
            let mut bytes = vec![0u8; ((upto - span.start) as usize) * ID];
            let file = self.file.as_ref().expect("ids on disk are in the file");
            file.read_exact_at(&mut bytes, span.start * ID as u64)?;
            ids.extend(
                bytes
                    .chunks_exact(ID)
                    .map(|b| ChunkId(Hash256(b.try_into().expect("32 bytes")))),
            );
        }
        if end > self.on_disk {
            let from = span.start.max(self.on_disk) - self.on_disk;
            let to = end - self.on_disk;
            ids.extend_from_slice(&self.tail[from as usize..to as usize]);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        b[31] = 0x5A;
        ChunkId(Hash256(b))
    }

    #[test]
    fn each_files_ids_come_back_in_order_from_disk_memory_or_both() {
        let mut spill = ChunkSpill::new(4);
        let mut spans = [Span::default(); 4];
        let sizes = [3u32, 0, 6, 2];
        let mut n = 0;
        for (span, size) in spans.iter_mut().zip(sizes) {
            for _ in 0..size {
                spill.push(span, id(n)).unwrap();
                n += 1;
            }
        }
        // 11 ids, 4 a spill: 8 on disk, 3 in memory.
        assert_eq!(spill.len(), 11);
        assert_eq!(spill.on_disk, 8);
        let mut n = 0;
        for (span, size) in spans.iter().zip(sizes) {
            let want: Vec<ChunkId> = (n..n + size).map(id).collect();
            assert_eq!(spill.read(*span).unwrap(), want);
            n += size;
        }
        // Past the end: refused, not a short read.
        let past = Span { start: 9, count: 3 };
        assert!(spill.read(past).is_err());
    }

    #[test]
    #[should_panic(expected = "a file's chunk ids follow each other")]
    fn a_files_ids_cannot_be_split() {
        let mut spill = ChunkSpill::new(4);
        let (mut a, mut b) = (Span::default(), Span::default());
        spill.push(&mut a, id(0)).unwrap();
        spill.push(&mut b, id(1)).unwrap();
        spill.push(&mut a, id(2)).unwrap();
    }
}
