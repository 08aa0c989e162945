//! A streaming reader of `mariadb-backup --stream=xbstream` output, so a
//! physical backup goes into the repository file by file with no local copy.
//!
//! The format (MariaDB's `extra/mariabackup/xbstream.h`): a sequence of
//! chunks, each `XBSTCK01`, a flags byte, a type byte (`P` payload, `E` end
//! of file), the path's length (u32 LE) and the path; a payload chunk then
//! has its length (u64 LE), its offset in the file (u64 LE), the CRC-32 of
//! the payload (u32 LE) and the payload. Each file's chunks come in order,
//! ending with its `E` chunk (an empty file is an `E` chunk alone). With
//! `--parallel=1` the data files come one after another, but the redo log
//! (`ib_logfile0`), copied by a thread of its own while the files are, is
//! interleaved with them: the file being read is handed on as it streams,
//! and chunks of any other file that arrive meanwhile (and every chunk of
//! the redo log) are spooled to a local temporary file, handed on once that
//! file's `E` chunk has come. So the local copy is at most the redo written
//! during the backup. An offset that is not where a file got to, a payload
//! whose CRC-32 does not match, or a stream ending inside a file is an
//! error naming the file, never bytes stored under a wrong name or place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"XBSTCK01";
/// Paths longer than this are refused (the server's own limit is far lower).
const MAX_PATH: u32 = 4096;
/// mariadb-backup writes payloads of at most 10 MiB; anything near this cap
/// is a damaged stream.
const MAX_PAYLOAD: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    kind: u8,
    path: String,
    /// Payload chunks: (length, offset, crc).
    payload: Option<(u64, u64, u32)>,
}

/// Files whose chunks are always spooled: the redo log, streamed by its own
/// thread alongside the data files.
fn always_spooled(path: &str) -> bool {
    path == "ib_logfile0" || path.starts_with("ib_logfile")
}

/// A file whose chunks were set aside while another one streamed.
struct Spool {
    file: File,
    written: u64,
    ended: bool,
    /// Arrival order, so ended spools are handed on in the order they began.
    order: u64,
}

/// Reads files out of an xbstream, one at a time.
pub struct XbReader<R> {
    inner: R,
    /// A header read but not yet consumed (the first chunk of the next file).
    pending: Option<Header>,
    /// Bytes of the whole stream read so far (for error messages).
    position: u64,
    spool_dir: PathBuf,
    spools: HashMap<String, Spool>,
    spooled: u64,
    next_order: u64,
}

/// A file's bytes: streamed from the backup, or read back from its spool.
pub enum XbContent<'a, R> {
    Streamed(XbFile<'a, R>),
    Spooled(io::Take<File>),
}

impl<R: Read> Read for XbContent<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            XbContent::Streamed(f) => f.read(buf),
            XbContent::Spooled(f) => f.read(buf),
        }
    }
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl<R: Read> XbReader<R> {
    /// `spool_dir` holds interleaved files until they are complete (the
    /// caller removes it).
    pub fn new(inner: R, spool_dir: &Path) -> Self {
        XbReader {
            inner,
            pending: None,
            position: 0,
            spool_dir: spool_dir.to_path_buf(),
            spools: HashMap::new(),
            spooled: 0,
            next_order: 0,
        }
    }

    /// Bytes set aside in spools so far (for the log).
    pub fn spooled_bytes(&self) -> u64 {
        self.spooled
    }

    /// Sets one chunk aside in its file's spool (its payload copied, its
    /// CRC-32 checked), or marks the spool ended.
    fn spool(&mut self, header: Header) -> io::Result<()> {
        if !self.spools.contains_key(&header.path) {
            let n = self.next_order;
            self.next_order += 1;
            let file = tempfile::tempfile_in(&self.spool_dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot spool {} in {}: {e}",
                        header.path,
                        self.spool_dir.display()
                    ),
                )
            })?;
            self.spools.insert(
                header.path.clone(),
                Spool {
                    file,
                    written: 0,
                    ended: false,
                    order: n,
                },
            );
        }
        let spool = self.spools.get_mut(&header.path).expect("just inserted");
        if spool.ended {
            return Err(bad(format!("a chunk of {} after its end", header.path)));
        }
        let Some((len, offset, crc)) = header.payload else {
            spool.ended = true;
            return Ok(());
        };
        if offset != spool.written {
            return Err(bad(format!(
                "{}: a chunk at offset {offset}, where the file has {} bytes so far",
                header.path, spool.written
            )));
        }
        let mut left = len;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            let want = buf.len().min(left as usize);
            self.inner.read_exact(&mut buf[..want]).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    bad(format!(
                        "the stream ends inside a payload of {}",
                        header.path
                    ))
                } else {
                    e
                }
            })?;
            hasher.update(&buf[..want]);
            spool.file.write_all(&buf[..want])?;
            left -= want as u64;
        }
        self.position += len;
        let got = hasher.finalize();
        if got != crc {
            return Err(bad(format!(
                "{}: the payload at offset {offset} has CRC-32 {got:08x}, its chunk says {crc:08x}",
                header.path
            )));
        }
        spool.written += len;
        self.spooled += len;
        Ok(())
    }

    /// The ended spool that began first, if any.
    fn take_ended(&mut self) -> io::Result<Option<(String, io::Take<File>)>> {
        let Some(path) = self
            .spools
            .iter()
            .filter(|(_, s)| s.ended)
            .min_by_key(|(_, s)| s.order)
            .map(|(p, _)| p.clone())
        else {
            return Ok(None);
        };
        let mut spool = self.spools.remove(&path).expect("listed");
        spool.file.flush()?;
        spool.file.rewind()?;
        Ok(Some((path, spool.file.take(spool.written))))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.position += buf.len() as u64;
        Ok(())
    }

    /// The next chunk header; `None` at a clean end of stream.
    fn header(&mut self) -> io::Result<Option<Header>> {
        let mut magic = [0u8; 8];
        // A clean end is the end of the stream before any byte of a header.
        let mut got = 0;
        while got < magic.len() {
            match self.inner.read(&mut magic[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(bad(format!(
                        "the stream ends inside a chunk header at byte {}",
                        self.position
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.position += 8;
        if &magic != MAGIC {
            return Err(bad(format!(
                "no chunk magic at byte {} (found {:02x?}): not an xbstream, or a damaged one",
                self.position - 8,
                magic
            )));
        }
        let mut fixed = [0u8; 6];
        self.read_exact(&mut fixed)?;
        let kind = fixed[1];
        let path_len = u32::from_le_bytes(fixed[2..6].try_into().unwrap());
        if path_len == 0 || path_len > MAX_PATH {
            return Err(bad(format!(
                "a chunk at byte {} has a path of {path_len} bytes",
                self.position - 14
            )));
        }
        let mut path = vec![0u8; path_len as usize];
        self.read_exact(&mut path)?;
        let path = String::from_utf8(path).map_err(|_| {
            bad(format!(
                "a chunk at byte {} names a path that is not UTF-8",
                self.position
            ))
        })?;
        let payload = match kind {
            b'E' => None,
            b'P' => {
                let mut rest = [0u8; 20];
                self.read_exact(&mut rest)?;
                let len = u64::from_le_bytes(rest[0..8].try_into().unwrap());
                let offset = u64::from_le_bytes(rest[8..16].try_into().unwrap());
                let crc = u32::from_le_bytes(rest[16..20].try_into().unwrap());
                if len > MAX_PAYLOAD {
                    return Err(bad(format!("{path}: a payload chunk claims {len} bytes")));
                }
                Some((len, offset, crc))
            }
            other => {
                return Err(bad(format!(
                    "{path}: unknown chunk type {:?} (this reader knows P and E; was the backup taken with --compress or --encrypt?)",
                    other as char
                )))
            }
        };
        Ok(Some(Header {
            kind,
            path,
            payload,
        }))
    }

    /// The next file's path and a reader of its bytes, which must be read to
    /// its end before the next call; `None` when the stream has ended.
    pub fn next_file(&mut self) -> io::Result<Option<(String, XbContent<'_, R>)>> {
        loop {
            if let Some((path, file)) = self.take_ended()? {
                return Ok(Some((path, XbContent::Spooled(file))));
            }
            let header = match self.pending.take() {
                Some(h) => h,
                None => match self.header()? {
                    Some(h) => h,
                    None => {
                        if let Some(path) = self.spools.keys().next() {
                            return Err(bad(format!(
                                "the stream ends inside {path} (no end-of-file chunk)"
                            )));
                        }
                        return Ok(None);
                    }
                },
            };
            if self.spools.contains_key(&header.path) || always_spooled(&header.path) {
                self.spool(header)?;
                continue;
            }
            let path = header.path.clone();
            return Ok(Some((
                path.clone(),
                XbContent::Streamed(XbFile {
                    reader: self,
                    path,
                    current: Some(header),
                    left: 0,
                    crc: crc32fast::Hasher::new(),
                    expect_crc: 0,
                    written: 0,
                    done: false,
                }),
            )));
        }
    }
}

/// One file's bytes, across its payload chunks.
pub struct XbFile<'a, R> {
    reader: &'a mut XbReader<R>,
    path: String,
    /// The chunk header to act on next (the file's first, or one just read).
    current: Option<Header>,
    /// Payload bytes left in the chunk being read.
    left: u64,
    crc: crc32fast::Hasher,
    expect_crc: u32,
    /// Bytes of the file so far.
    written: u64,
    done: bool,
}

impl<R: Read> XbFile<'_, R> {
    /// Moves to the next payload with bytes; `false` at the file's end.
    fn advance(&mut self) -> io::Result<bool> {
        loop {
            let header = match self.current.take() {
                Some(h) => h,
                None => self.reader.header()?.ok_or_else(|| {
                    bad(format!(
                        "the stream ends inside {} (no end-of-file chunk)",
                        self.path
                    ))
                })?,
            };
            if header.path != self.path {
                // Another file's chunk, interleaved: set aside until its end.
                self.reader.spool(header)?;
                continue;
            }
            match header.payload {
                None => {
                    debug_assert_eq!(header.kind, b'E');
                    self.done = true;
                    return Ok(false);
                }
                Some((len, offset, crc)) => {
                    if offset != self.written {
                        return Err(bad(format!(
                            "{}: a chunk at offset {offset}, where the file has {} bytes so far",
                            self.path, self.written
                        )));
                    }
                    if len == 0 {
                        continue;
                    }
                    self.left = len;
                    self.expect_crc = crc;
                    self.crc = crc32fast::Hasher::new();
                    return Ok(true);
                }
            }
        }
    }
}

impl<R: Read> Read for XbFile<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 && !self.advance()? {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.reader.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(bad(format!(
                "the stream ends inside a payload of {}",
                self.path
            )));
        }
        self.reader.position += n as u64;
        self.crc.update(&buf[..n]);
        self.left -= n as u64;
        self.written += n as u64;
        if self.left == 0 {
            let got = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
            if got != self.expect_crc {
                return Err(bad(format!(
                    "{}: the payload ending at offset {} has CRC-32 {got:08x}, its chunk says {:08x}",
                    self.path, self.written, self.expect_crc
                )));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(path: &str, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([0, b'P']);
        out.extend((path.len() as u32).to_le_bytes());
        out.extend(path.as_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        out.extend(offset.to_le_bytes());
        out.extend(crc32fast::hash(data).to_le_bytes());
        out.extend(data);
        out
    }

    fn end(path: &str) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([0, b'E']);
        out.extend((path.len() as u32).to_le_bytes());
        out.extend(path.as_bytes());
        out
    }

    fn files(stream: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
        let dir = tempfile::tempdir().unwrap();
        let mut r = XbReader::new(stream, dir.path());
        let mut out = Vec::new();
        while let Some((path, mut f)) = r.next_file()? {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            out.push((path, bytes));
        }
        Ok(out)
    }

    #[test]
    fn files_come_out_whole_in_order_with_empty_ones() {
        let mut s = payload("ibdata1", 0, b"hello ");
        s.extend(payload("ibdata1", 6, b"world"));
        s.extend(end("ibdata1"));
        s.extend(end("app/db.opt"));
        s.extend(payload("app/t.ibd", 0, &[7u8; 100_000]));
        s.extend(end("app/t.ibd"));
        let got = files(&s).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("ibdata1".into(), b"hello world".to_vec()));
        assert_eq!(got[1], ("app/db.opt".into(), Vec::new()));
        assert_eq!(got[2].1.len(), 100_000);
    }

    #[test]
    fn interleaved_files_and_the_redo_log_come_out_whole() {
        let mut s = payload("ib_logfile0", 0, b"redo-1 ");
        s.extend(payload("ibdata1", 0, b"hello "));
        s.extend(payload("ib_logfile0", 7, b"redo-2 "));
        s.extend(payload("other", 0, b"o1"));
        s.extend(payload("ibdata1", 6, b"world"));
        s.extend(end("ibdata1"));
        s.extend(payload("other", 2, b"o2"));
        s.extend(end("other"));
        s.extend(payload("ib_logfile0", 14, b"redo-3"));
        s.extend(end("ib_logfile0"));
        let got = files(&s).unwrap();
        assert_eq!(
            got,
            vec![
                ("ibdata1".into(), b"hello world".to_vec()),
                ("other".into(), b"o1o2".to_vec()),
                ("ib_logfile0".into(), b"redo-1 redo-2 redo-3".to_vec()),
            ]
        );
    }

    #[test]
    fn damage_is_named() {
        let mut s = payload("ibdata1", 0, b"hello");
        let crc_at = s.len() - 5 - 4;
        s[crc_at] ^= 1;
        s.extend(end("ibdata1"));
        let e = files(&s).unwrap_err().to_string();
        assert!(e.contains("ibdata1") && e.contains("CRC-32"), "{e}");

        let mut s = payload("a", 0, b"x");
        s.extend(payload("b", 0, b"y"));
        s.extend(end("a"));
        let e = files(&s).unwrap_err().to_string();
        assert!(e.contains("ends inside b"), "{e}");
        let mut s = payload("a", 0, b"x");
        s.extend(payload("a", 5, b"y"));
        let e = files(&s).unwrap_err().to_string();
        assert!(e.contains("offset 5"), "{e}");

        let s = payload("a", 0, b"xyz");
        let e = files(&s[..s.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("a"), "{e}");
        let e = files(&s).unwrap_err().to_string();
        assert!(e.contains("no end-of-file chunk"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn mutated_streams_never_panic(at in 0usize..200, value in proptest::prelude::any::<u8>(), cut in 0usize..200) {
            let mut s = payload("ibdata1", 0, b"hello world");
            s.extend(end("ibdata1"));
            s.extend(payload("x/y", 0, &[1u8; 50]));
            s.extend(end("x/y"));
            let at = at % s.len();
            s[at] ^= value.max(1);
            let cut = cut % (s.len() + 1);
            let _ = files(&s[..cut]);
            let _ = files(&s);
        }
    }
}
