//! Writing beneath a restore target and nowhere else.
//!
//! Everything a restore creates from manifest entries goes through a
//! [`Confined`] directory handle: each path is walked one component at a
//! time with `openat(…, O_NOFOLLOW)` from the target's own descriptor, so a
//! symlink anywhere on the way (one the manifest restored, or one put there
//! while the restore ran) stops the write instead of being followed out of
//! the target. Files are created `O_CREAT | O_EXCL | O_NOFOLLOW` with mode
//! 0600 and directories 0700; their recorded modes are applied by the caller
//! once their content has been checked.
//!
//! Why `openat` through rustix rather than `cap-std`: rustix is already a
//! dependency, and `cap-std` follows symlinks that stay inside its directory,
//! where a restore wants to follow none at all: a manifest that places an
//! entry under one of its own symlinks is malformed, whatever the link points at.
//!
//! Manifest paths are checked before anything is written by [`check_path`]
//! and [`check_tree`], so a hostile manifest is refused with its entry and
//! key named, not halfway through.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, CWD};

use super::source::EntryKind;
use super::ManifestEntry;

/// Why a manifest entry's path cannot be restored, before anything is
/// written: the caller names the manifest.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path == "." {
        return Ok(());
    }
    if path.is_empty() {
        return Err("it is empty");
    }
    if path.starts_with('/') {
        return Err("it is absolute");
    }
    if path.contains('\0') {
        return Err("it contains a NUL byte");
    }
    for c in path.split('/') {
        match c {
            ".." => return Err("it has a `..` component"),
            "" | "." => {
                return Err("it is not a normalised relative path (empty or `.` component)")
            }
            _ => {}
        }
    }
    Ok(())
}

/// A tree's entries, checked as a whole before anything is written: every
/// path relative and normalised, none under a symlink or file entry of the
/// same manifest, no path listed twice, every file with a size (checked
/// against its chunks as it is read; a whole-file hash, where the manifest
/// has one, is checked too).
/// Returns the offending entry's path and why.
pub fn check_tree(entries: &[ManifestEntry]) -> Result<(), (String, String)> {
    let mut kinds: HashMap<&str, EntryKind> = HashMap::with_capacity(entries.len());
    for e in entries {
        check_path(&e.path).map_err(|why| (e.path.clone(), why.to_string()))?;
        if e.path == "." && e.kind != EntryKind::Dir {
            return Err((e.path.clone(), "the root entry is not a directory".into()));
        }
        if e.kind == EntryKind::File && e.size.is_none() {
            return Err((
                e.path.clone(),
                "a file entry without a size cannot be checked".into(),
            ));
        }
        if kinds.insert(&e.path, e.kind).is_some() {
            return Err((e.path.clone(), "the snapshot lists it twice".into()));
        }
    }
    // In any order: a link listed after the entries under it is caught too.
    for e in entries.iter().filter(|e| e.path != ".") {
        let mut at = 0;
        while let Some(slash) = e.path[at..].find('/') {
            let ancestor = &e.path[..at + slash];
            let under = match kinds.get(ancestor) {
                Some(EntryKind::Symlink) => "a symlink; it would be written through the link",
                Some(EntryKind::File) => "a file",
                _ => "",
            };
            if !under.is_empty() {
                return Err((
                    e.path.clone(),
                    format!(
                        "it lies under `{ancestor}`, which the same snapshot restores as {under}"
                    ),
                ));
            }
            at += slash + 1;
        }
    }
    Ok(())
}

/// A directory that restores write beneath, never outside.
pub struct Confined {
    root: PathBuf,
    fd: OwnedFd,
    /// The directory the last entry was created in, already walked: the
    /// files of one directory come one after another, and each would
    /// otherwise open every directory above it again.
    last_parent: std::cell::RefCell<Option<(String, OwnedFd)>>,
}

/// Mode bits a restore applies without being asked: permissions and the
/// sticky bit, not setuid/setgid (see [`restored_mode`]).
const PLAIN_BITS: u32 = 0o1777;

/// The mode to give a restored file or directory: setuid and setgid come
/// back only when asked (`restore --keep-setid-bits`), since anyone who can
/// add a manifest to the repository could otherwise plant a setuid binary.
/// The sticky bit is kept: it only restricts who may delete, and dropping it
/// from a shared 1777 directory would loosen the copy.
pub fn restored_mode(recorded: u32, keep_setid: bool) -> u32 {
    if keep_setid {
        recorded & 0o7777
    } else {
        recorded & PLAIN_BITS
    }
}

/// True when `recorded` carries a setuid or setgid bit.
pub fn has_setid(recorded: u32) -> bool {
    recorded & 0o6000 != 0
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// For walking through: needs search permission only, not read.
fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn timestamps(ns: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Confined {
    /// Creates `path` (0700; its parent must exist) and holds it open. An
    /// existing `path` is refused: a restore writes into a path of its own.
    pub fn create(path: &Path) -> io::Result<Confined> {
        rustix::fs::mkdirat(CWD, path, Mode::from_raw_mode(0o700))
            .map_err(|e| named(e.into(), "unable to create", path))?;
        Confined::open(path)
    }

    /// Holds the directory `path` open; `path` itself must not be a symlink
    /// (its parents are the caller's choice and are followed).
    pub fn open(path: &Path) -> io::Result<Confined> {
        let fd = rustix::fs::openat(CWD, path, dir_flags(), Mode::empty()).map_err(|e| {
            if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a directory (a symlink or a file)",
                        path.display()
                    ),
                )
            } else {
                named(e.into(), "unable to open", path)
            }
        })?;
        Ok(Confined {
            root: path.to_path_buf(),
            fd,
            last_parent: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Runs `f` with the directory holding `rel` and `rel`'s last
    /// component, walking every component without following a symlink;
    /// missing directories on the way are created 0700 when `create`.
    fn in_parent<T>(
        &self,
        rel: &str,
        create: bool,
        f: impl FnOnce(BorrowedFd<'_>, &str) -> io::Result<T>,
    ) -> io::Result<T> {
        check_path(rel).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("refusing path `{rel}`: {why}"),
            )
        })?;
        let (dirs, name) = match rel.rsplit_once('/') {
            Some((dirs, name)) => (Some(dirs), name),
            None => (None, rel),
        };
        let Some(dirs) = dirs else {
            return f(self.fd.as_fd(), name);
        };
        let cached = self.last_parent.borrow_mut().take();
        if let Some((walked, fd)) = cached {
            if walked == dirs {
                let r = f(fd.as_fd(), name);
                *self.last_parent.borrow_mut() = Some((walked, fd));
                return r;
            }
        }
        let mut cur: Option<OwnedFd> = None;
        let mut walked = 0usize;
        for comp in dirs.split('/') {
            let at = cur.as_ref().map_or(self.fd.as_fd(), |c| c.as_fd());
            let prefix = &rel[..walked + comp.len()];
            let next = match rustix::fs::openat(at, comp, path_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(at, comp, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(named(e.into(), "unable to create", &self.at(prefix)))
                        }
                    }
                    rustix::fs::openat(at, comp, path_flags(), Mode::empty())
                        .map_err(|e| self.walk_error(at, comp, prefix, rel, e))?
                }
                Err(e) => return Err(self.walk_error(at, comp, prefix, rel, e)),
            };
            walked += comp.len() + 1;
            cur = Some(next);
        }
        let parent = cur.expect("a path with a `/` has a parent component");
        let r = f(parent.as_fd(), name);
        *self.last_parent.borrow_mut() = Some((dirs.to_string(), parent));
        r
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn walk_error(
        &self,
        at: BorrowedFd<'_>,
        comp: &str,
        prefix: &str,
        rel: &str,
        e: rustix::io::Errno,
    ) -> io::Error {
        let kind = rustix::fs::statat(at, comp, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|s| FileType::from_raw_mode(s.st_mode));
        match kind {
            Some(FileType::Symlink) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "refusing to write `{rel}` through `{prefix}`, a symlink in {}: a restore never follows links",
                    self.root.display()
                ),
            ),
            Some(k) if k != FileType::Directory => io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unable to write `{rel}`: `{prefix}` in {} is not a directory",
                    self.root.display()
                ),
            ),
            _ => named(e.into(), "unable to open", &self.at(prefix)),
        }
    }

    /// Creates directory `rel` (0700, parents too); an existing directory is
    /// fine, anything else there is refused.
    pub fn create_dir(&self, rel: &str) -> io::Result<()> {
        if rel == "." {
            return Ok(());
        }
        self.in_parent(rel, true, |dir, name| {
            match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
                Ok(()) => Ok(()),
                Err(rustix::io::Errno::EXIST) => {
                    // Only a real directory may already be there.
                    rustix::fs::openat(dir, name, path_flags(), Mode::empty())
                        .map(drop)
                        .map_err(|e| self.walk_error(dir, name, rel, rel, e))
                }
                Err(e) => Err(named(e.into(), "unable to create", &self.at(rel))),
            }
        })
    }

    /// Creates symlink `rel` pointing at `target` (stored as is, never
    /// followed) and gives the link itself `mtime_ns`.
    pub fn symlink(&self, rel: &str, target: &str, mtime_ns: Option<i64>) -> io::Result<()> {
        self.in_parent(rel, true, |dir, name| {
            rustix::fs::symlinkat(target, dir, name)
                .map_err(|e| named(e.into(), "unable to create symlink", &self.at(rel)))?;
            if let Some(ns) = mtime_ns {
                rustix::fs::utimensat(dir, name, &timestamps(ns), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| named(e.into(), "unable to set the time of", &self.at(rel)))?;
            }
            Ok(())
        })
    }

    /// Creates the new file `rel`, mode 0600; never opens an existing file
    /// or a symlink.
    pub fn create_file(&self, rel: &str) -> io::Result<File> {
        self.open_file(rel, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)
    }

    /// Opens file `rel` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`), creating
    /// it with `mode` where `flags` say so; parents must exist.
    pub fn open_file(&self, rel: &str, flags: OFlags, mode: u32) -> io::Result<File> {
        self.in_parent(rel, false, |dir, name| {
            let fd = rustix::fs::openat(
                dir,
                name,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )
            .map_err(|e| {
                if e == rustix::io::Errno::LOOP {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "refusing to write through `{rel}`, a symlink in {}",
                            self.root.display()
                        ),
                    )
                } else {
                    named(e.into(), "unable to create", &self.at(rel))
                }
            })?;
            Ok(File::from(fd))
        })
    }

    /// Sets directory `rel`'s mode and time (`.` is the root itself).
    pub fn set_dir_meta(&self, rel: &str, mode: u32, mtime_ns: Option<i64>) -> io::Result<()> {
        let apply = |fd: BorrowedFd<'_>| -> io::Result<()> {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
                .map_err(|e| named(e.into(), "unable to set the mode of", &self.at(rel)))?;
            if let Some(ns) = mtime_ns {
                rustix::fs::futimens(fd, &timestamps(ns))
                    .map_err(|e| named(e.into(), "unable to set the time of", &self.at(rel)))?;
            }
            Ok(())
        };
        if rel == "." {
            return apply(self.fd.as_fd());
        }
        self.in_parent(rel, false, |dir, name| {
            let fd = rustix::fs::openat(dir, name, dir_flags(), Mode::empty())
                .map_err(|e| self.walk_error(dir, name, rel, rel, e))?;
            apply(fd.as_fd())
        })
    }

    /// Moves `from` (a path outside, the caller's own) to `rel` beneath.
    pub fn rename_into(&self, from: &Path, rel: &str) -> io::Result<()> {
        self.in_parent(rel, false, |dir, name| {
            rustix::fs::renameat(CWD, from, dir, name)
                .map_err(|e| named(e.into(), "unable to move into place", &self.at(rel)))
        })
    }

    /// Flushes the directory itself (its entries) to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(|e| named(e.into(), "unable to flush", &self.root))
    }
}

fn named(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime_ns: None,
            size: (kind == EntryKind::File).then_some(0),
            sha256: None,
            chunks: Vec::new(),
            target: (kind == EntryKind::Symlink).then(|| "/tmp".into()),
            stamp: None,
            file_id: None,
            at: None,
        }
    }

    #[test]
    fn paths_that_leave_the_target_are_refused() {
        for (path, ok) in [
            (".", true),
            ("a", true),
            ("a/b.c", true),
            ("..a/b..", true),
            ("", false),
            ("/etc/passwd", false),
            ("..", false),
            ("a/../../x", false),
            ("a/..", false),
            ("./a", false),
            ("a//b", false),
            ("a/", false),
            ("a\0b", false),
        ] {
            assert_eq!(check_path(path).is_ok(), ok, "{path:?}");
        }
    }

    #[test]
    fn entries_under_a_symlink_or_file_of_the_same_snapshot_are_refused() {
        let ok = [
            entry(".", EntryKind::Dir),
            entry("etc", EntryKind::Dir),
            entry("etc/x", EntryKind::File),
            entry("link", EntryKind::Symlink),
        ];
        assert!(check_tree(&ok).is_ok());
        let bad = [
            entry(".", EntryKind::Dir),
            entry("etc", EntryKind::Symlink),
            entry("etc/cron.d/x", EntryKind::File),
        ];
        let (path, why) = check_tree(&bad).unwrap_err();
        assert_eq!(path, "etc/cron.d/x");
        assert!(why.contains("`etc`") && why.contains("symlink"), "{why}");
        let twice = [entry("a", EntryKind::File), entry("a", EntryKind::File)];
        assert!(check_tree(&twice).unwrap_err().1.contains("twice"));
        let mut unsized_file = entry("a", EntryKind::File);
        unsized_file.size = None;
        assert!(check_tree(&[unsized_file]).unwrap_err().1.contains("size"));
    }

    #[test]
    fn a_symlink_on_the_way_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = Confined::create(&tmp.path().join("root")).unwrap();
        root.symlink("etc", outside.to_str().unwrap(), None)
            .unwrap();
        let err = root.create_file("etc/x").unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let err = root.create_dir("etc/cron.d").unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        // The link's own name is not opened as a file either.
        let err = root.create_file("etc").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        let err = root
            .open_file(
                "etc",
                OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
                0o600,
            )
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn files_are_created_0600_and_directories_0700() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = Confined::create(&tmp.path().join("root")).unwrap();
        root.create_dir("a/b").unwrap();
        drop(root.create_file("a/b/f").unwrap());
        let mode = |p: &str| {
            std::fs::symlink_metadata(tmp.path().join("root").join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("a"), 0o700);
        assert_eq!(mode("a/b"), 0o700);
        assert_eq!(mode("a/b/f"), 0o600);
        assert_eq!(restored_mode(0o4755, false), 0o755);
        assert_eq!(restored_mode(0o2750, false), 0o750);
        assert_eq!(restored_mode(0o1777, false), 0o1777);
        assert_eq!(restored_mode(0o4755, true), 0o4755);
    }
}
