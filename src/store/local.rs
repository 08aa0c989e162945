//! The embedded default store: a directory on a local filesystem.
//!
//! Layout under the root:
//! * `objects/<key>` — the object's bytes, mode 0444.
//! * `retention/<key>` — `{"mode": …, "until": …}` for that object, mode 0444.
//! * `tmp/` — puts in flight; anything here is garbage from a killed writer.
//! * `locks/<name>.lock` — advisory `flock` locks, released by the kernel when
//!   the holder exits, however it exits.
//!
//! Puts write a temp file, fsync it, then hard-link it into place: `link(2)`
//! fails if the name exists, so create-only is atomic and a reader never sees
//! a partial object. Retention is enforced by every holdfast code path, but
//! anyone with write access to the directory can still delete files: only S3
//! Object Lock protects against an insider with filesystem access.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;

use super::{
    check_key, Capabilities, LockGuard, LockKind, ObjectInfo, PutOptions, Retention, Store,
    StoreError,
};

#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    url: String,
    seq: AtomicU64,
    /// Open handles of recently read objects. Objects never change once
    /// written, so a cached handle always reads the right bytes; a restore
    /// reads each pack many times, a range at a time.
    open_files: std::sync::Mutex<std::collections::HashMap<String, Arc<File>>>,
}

const OPEN_FILES_CACHED: usize = 64;

/// A held `flock`; an exclusive holder's stamp is cleared when it lets go,
/// so a later Busy message never names a holder that is gone.
struct FileLock {
    file: File,
    exclusive: bool,
}
impl LockGuard for FileLock {}
impl Drop for FileLock {
    fn drop(&mut self) {
        if self.exclusive {
            let _ = self.file.set_len(0);
        }
    }
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: PathBuf) -> Result<Self, StoreError> {
        let url = format!("file://{}", root.display());
        for sub in ["objects", "retention", "tmp", "locks"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                op: "create directory",
                store: url.clone(),
                key: dir.display().to_string(),
                source,
            })?;
        }
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root,
                url,
                seq: AtomicU64::new(0),
                open_files: Default::default(),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .expect("local store task panicked")
    }
}

impl Inner {
    fn io(&self, op: &'static str, key: &str, source: io::Error) -> StoreError {
        if source.kind() == io::ErrorKind::NotFound && matches!(op, "read" | "stat") {
            return StoreError::NotFound {
                store: self.url.clone(),
                key: key.to_string(),
            };
        }
        StoreError::Io {
            op,
            store: self.url.clone(),
            key: key.to_string(),
            source,
        }
    }

    fn object_path(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(key)
    }

    fn retention_path(&self, key: &str) -> PathBuf {
        self.root.join("retention").join(key)
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!(
            "{}-{}-{n}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ))
    }

    /// Writes `data` to a fresh temp file, fsyncs it and returns its path.
    fn write_temp(&self, key: &str, data: &[u8]) -> Result<PathBuf, StoreError> {
        let tmp = self.temp_path();
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.set_permissions(fs::Permissions::from_mode(0o444))?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(self.io("write", key, e));
        }
        Ok(tmp)
    }

    /// Hard-links `tmp` to `dest` (failing if `dest` exists), then drops `tmp`.
    fn link_into_place(&self, key: &str, tmp: &Path, dest: &Path) -> Result<(), StoreError> {
        let parent = dest.parent().expect("object paths have a parent");
        fs::create_dir_all(parent).map_err(|e| self.io("create directory for", key, e))?;
        let linked = fs::hard_link(tmp, dest);
        let _ = fs::remove_file(tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists {
                    store: self.url.clone(),
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(self.io("write", key, e)),
        }
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("sync directory of", key, e))
    }

    fn read_retention(&self, key: &str) -> Result<Option<Retention>, StoreError> {
        match fs::read(self.retention_path(key)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                self.io(
                    "parse retention of",
                    key,
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read retention of", key, e)),
        }
    }

    /// Replaces the retention record; the caller has checked it only extends.
    fn write_retention(&self, key: &str, retention: &Retention) -> Result<(), StoreError> {
        let body = serde_json::to_vec(retention).expect("retention serialises");
        let tmp = self.write_temp(key, &body)?;
        let dest = self.retention_path(key);
        let parent = dest.parent().expect("retention paths have a parent");
        fs::create_dir_all(parent).map_err(|e| self.io("create directory for", key, e))?;
        let renamed = fs::rename(&tmp, &dest);
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        renamed.map_err(|e| self.io("write retention of", key, e))?;
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("sync directory of", key, e))
    }

    fn put(&self, key: &str, data: &[u8], opts: &PutOptions) -> Result<(), StoreError> {
        let dest = self.object_path(key);
        if dest.exists() {
            return Err(StoreError::AlreadyExists {
                store: self.url.clone(),
                key: key.to_string(),
            });
        }
        // Retention first: an object must never exist without its retention.
        if let Some(r) = &opts.retention {
            match self.read_retention(key)? {
                // Left by a put killed between the two steps: keep the later date.
                Some(old) if old.until >= r.until => {}
                _ => self.write_retention(key, r)?,
            }
        }
        let tmp = self.write_temp(key, data)?;
        self.link_into_place(key, &tmp, &dest)
    }

    fn open_cached(&self, key: &str) -> Result<Arc<File>, StoreError> {
        let mut cache = self.open_files.lock().expect("file cache lock");
        if let Some(f) = cache.get(key) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.object_path(key)).map_err(|e| self.io("read", key, e))?);
        if cache.len() >= OPEN_FILES_CACHED {
            cache.clear();
        }
        cache.insert(key.to_string(), f.clone());
        Ok(f)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        use std::os::unix::fs::FileExt;
        let f = self.open_cached(key)?;
        let size = f.metadata().map_err(|e| self.io("stat", key, e))?.len();
        if offset.saturating_add(len) > size {
            return Err(StoreError::Truncated {
                store: self.url.clone(),
                key: key.to_string(),
                offset,
                end: offset.saturating_add(len),
                size,
            });
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| self.io("read", key, e))?;
        Ok(Bytes::from(buf))
    }

    fn get_at_most(&self, key: &str, max: u64) -> Result<Bytes, StoreError> {
        use std::io::Read;
        let f = File::open(self.object_path(key)).map_err(|e| self.io("read", key, e))?;
        let size = f.metadata().map_err(|e| self.io("stat", key, e))?.len();
        let too_large = |size| StoreError::TooLarge {
            store: self.url.clone(),
            key: key.to_string(),
            size,
            max,
        };
        if size > max {
            return Err(too_large(size));
        }
        // The file may grow between the stat and the read: read one byte past
        // the cap at most, never trusting the stat for the allocation alone.
        let mut buf = Vec::with_capacity(size as usize);
        f.take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| self.io("read", key, e))?;
        if buf.len() as u64 > max {
            return Err(too_large(buf.len() as u64));
        }
        Ok(Bytes::from(buf))
    }

    fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let meta = fs::metadata(self.object_path(key)).map_err(|e| self.io("stat", key, e))?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: meta.len(),
            retention: self.read_retention(key)?,
            created: None,
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let objects = self.root.join("objects");
        // Walk from the deepest directory the prefix names fully.
        let start = match prefix.rfind('/') {
            Some(i) => objects.join(&prefix[..i]),
            None => objects.clone(),
        };
        let mut out = Vec::new();
        if !start.exists() {
            return Ok(out);
        }
        for entry in walkdir::WalkDir::new(&start).sort_by_file_name() {
            let entry = entry.map_err(|e| self.io("list", prefix, e.into()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&objects)
                .expect("walk stays under objects/");
            let Some(key) = rel.to_str() else { continue };
            if !key.starts_with(prefix) {
                continue;
            }
            let size = entry
                .metadata()
                .map_err(|e| self.io("stat", key, e.into()))?
                .len();
            out.push(ObjectInfo {
                key: key.to_string(),
                size,
                retention: self.read_retention(key)?,
                created: None,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn extend_retention(&self, key: &str, retention: &Retention) -> Result<(), StoreError> {
        self.head(key)?;
        if let Some(current) = self.read_retention(key)? {
            if retention.until < current.until {
                return Err(StoreError::RetentionShortening {
                    store: self.url.clone(),
                    key: key.to_string(),
                    current: current.until,
                    requested: retention.until,
                });
            }
            if retention.until == current.until && retention.mode == current.mode {
                return Ok(());
            }
        }
        self.write_retention(key, retention)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.head(key)?;
        if let Some(r) = self.read_retention(key)? {
            if r.until > Utc::now() {
                return Err(StoreError::Retained {
                    store: self.url.clone(),
                    key: key.to_string(),
                    mode: r.mode,
                    until: r.until,
                });
            }
        }
        self.open_files.lock().expect("file cache lock").remove(key);
        fs::remove_file(self.object_path(key)).map_err(|e| self.io("delete", key, e))?;
        match fs::remove_file(self.retention_path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(self.io("delete retention of", key, e))
            }
            _ => Ok(()),
        }
    }

    fn try_lock(&self, name: &str, kind: LockKind) -> Result<Box<dyn LockGuard>, StoreError> {
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| self.io("open lock", name, e))?;
        let locked = match kind {
            LockKind::Exclusive => file.try_lock(),
            LockKind::Shared => file.try_lock_shared(),
        };
        match locked {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StoreError::Busy {
                    what: format!("lock `{name}` in {}", self.url),
                    holder: if holder.trim().is_empty() {
                        "shared holders (backups of other plans)".into()
                    } else {
                        holder.trim().to_string()
                    },
                    location: path.display().to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(self.io("lock", name, e)),
        }
        // The holder, for a later process's Busy message; shared holders
        // would overwrite each other's, so only an exclusive holder writes.
        if kind == LockKind::Exclusive {
            let stamp = format!(
                "pid {} since {}",
                std::process::id(),
                Utc::now().to_rfc3339()
            );
            let _ = file
                .set_len(0)
                .and_then(|_| file.write_all(stamp.as_bytes()))
                .and_then(|_| file.flush());
        }
        Ok(Box::new(FileLock {
            file,
            exclusive: kind == LockKind::Exclusive,
        }))
    }
}

#[async_trait]
impl Store for LocalStore {
    fn url(&self) -> String {
        self.inner.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            server_enforced_lock: false,
            atomic_create: true,
            versioning: false,
            parallel_reads: 0,
        }
    }

    async fn put(&self, key: &str, data: Bytes, opts: &PutOptions) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_string();
        let opts = opts.clone();
        self.blocking(move |s| s.put(&key, &data, &opts)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| {
            fs::read(s.object_path(&key))
                .map(Bytes::from)
                .map_err(|e| s.io("read", &key, e))
        })
        .await
    }

    async fn get_at_most(&self, key: &str, max: u64) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| s.get_at_most(&key, max)).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| s.get_range(&key, offset, len)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| s.head(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.list(&prefix)).await
    }

    async fn extend_retention(&self, key: &str, retention: &Retention) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_string();
        let retention = *retention;
        self.blocking(move |s| s.extend_retention(&key, &retention))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| s.delete(&key)).await
    }

    async fn try_lock(&self, name: &str, kind: LockKind) -> Result<Box<dyn LockGuard>, StoreError> {
        check_key(name)?;
        let name = name.to_string();
        self.blocking(move |s| s.try_lock(&name, kind)).await
    }
}
