//! Shared test helpers: deterministic data and a synthetic source.
#![allow(dead_code)]

use std::io::Read;

use holdfast::source::{EntryMeta, EntrySink, Source, SourceError, SourceMetadata};

/// Deterministic pseudo-random bytes (xorshift), half of them text-like so
/// they compress like real data.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words: [&[u8]; 8] = [
        b"customer ",
        b"order ",
        b"42 ",
        b"paid ",
        b"2026-11-26 ",
        b"refund ",
        b"shipped ",
        b"\n",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(words[(x >> 8) as usize % words.len()]);
        }
    }
    out.truncate(len);
    out
}

/// A source of named in-memory files, for repository-level tests.
pub struct MemSource {
    pub files: Vec<(String, Vec<u8>)>,
}

impl Source for MemSource {
    fn kind(&self) -> &'static str {
        "files"
    }
    fn estimate_bytes(&self) -> Option<u64> {
        Some(self.files.iter().map(|(_, d)| d.len() as u64).sum())
    }
    fn snapshot(&mut self, sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError> {
        sink.dir(&EntryMeta {
            path: ".".into(),
            mode: 0o755,
            mtime_ns: Some(1_700_000_000_000_000_000),
            stamp: None,
        })?;
        for (name, content) in &self.files {
            let mut r: &[u8] = content;
            sink.file(
                &EntryMeta {
                    path: name.clone(),
                    mode: 0o640,
                    mtime_ns: Some(1_700_000_000_123_456_789),
                    stamp: None,
                },
                &mut r as &mut dyn Read,
            )?;
        }
        Ok(SourceMetadata::new())
    }
}
