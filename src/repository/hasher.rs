//! The whole-file SHA-256 of a manifest version 2 file, computed on a
//! thread of its own so that a reader's single sequential hash of a stream
//! overlaps decoding and writing. (Backups write no whole-file hash since
//! manifest version 3.)

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};
use sha2::{Digest, Sha256};

use crate::ids::Hash256;

/// Something that can be fed to the hash: a chunk, or a run of chunks.
pub trait HashInput: Send + Sync + 'static {
    fn feed(&self, hasher: &mut Sha256);
}

impl HashInput for Vec<u8> {
    fn feed(&self, hasher: &mut Sha256) {
        hasher.update(self);
    }
}

impl HashInput for Vec<bytes::Bytes> {
    fn feed(&self, hasher: &mut Sha256) {
        self.iter().for_each(|c| hasher.update(c));
    }
}

enum Msg<T> {
    Data(Arc<T>),
    End(Sender<Hash256>),
}

/// Hashes one stream at a time, in the order its pieces are fed.
pub struct StreamHasher<T: HashInput> {
    tx: Option<Sender<Msg<T>>>,
    thread: Option<JoinHandle<()>>,
}

/// The hasher thread is gone (it only stops when its owner drops it).
#[derive(Debug)]
pub struct HasherGone;

impl<T: HashInput> StreamHasher<T> {
    /// Starts the thread; at most `queue` pieces wait to be hashed.
    pub fn start(queue: usize) -> Self {
        let (tx, rx) = bounded::<Msg<T>>(queue);
        let thread = std::thread::Builder::new()
            .name("hf-file-hash".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for msg in rx {
                    match msg {
                        Msg::Data(d) => d.feed(&mut h),
                        Msg::End(reply) => {
                            let _ = reply.send(Hash256(std::mem::take(&mut h).finalize().into()));
                        }
                    }
                }
            })
            .expect("spawn hasher thread");
        StreamHasher {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn feed(&self, data: Arc<T>) -> Result<(), HasherGone> {
        self.tx
            .as_ref()
            .ok_or(HasherGone)?
            .send(Msg::Data(data))
            .map_err(|_| HasherGone)
    }

    /// The hash of everything fed since the last call; starts a new stream.
    pub fn finish(&self) -> Result<Hash256, HasherGone> {
        let (tx, rx) = bounded(1);
        self.tx
            .as_ref()
            .ok_or(HasherGone)?
            .send(Msg::End(tx))
            .map_err(|_| HasherGone)?;
        rx.recv().map_err(|_| HasherGone)
    }
}

impl<T: HashInput> Drop for StreamHasher<T> {
    /// Stops the thread and waits for it.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_sha256_of_the_concatenation_and_restarts_per_stream() {
        let h = StreamHasher::<Vec<u8>>::start(2);
        h.feed(Arc::new(b"hold".to_vec())).unwrap();
        h.feed(Arc::new(b"fast".to_vec())).unwrap();
        assert_eq!(h.finish().unwrap(), Hash256::digest(b"holdfast"));
        assert_eq!(h.finish().unwrap(), Hash256::digest(b""));
    }
}
