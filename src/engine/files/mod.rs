//! The `files` source: a directory tree with modes, mtimes and symlinks.
//!
//! Entries come in a stable order, the same for the same tree: the root as a
//! `dir` entry `.`, then a depth-first walk with each directory's children
//! sorted by name (bytewise) and every directory before its contents. Paths
//! are relative to the root and `/`-separated (`a`, `a/b`, `a/b/c.txt`).
//!
//! What is kept: permission bits (`0o7777`, so setuid/setgid/sticky too),
//! modification times to the nanosecond, empty files, empty directories, and
//! symlinks with their target exactly as stored (never followed; dangling
//! links are kept). What is not: owners, xattrs, ACLs, hard-link identity
//! (each link is backed up as its own file; the repository's dedup keeps that
//! cheap). Sockets, FIFOs and device nodes are skipped with a warning: their
//! "content" is not data.
//!
//! Names must be UTF-8, because manifests and restore paths are strings. A
//! non-UTF-8 name fails the snapshot with [`SourceError::NonUtf8Path`] naming
//! it, rather than silently leaving the file out; exclude it to proceed.
//!
//! The root directory itself is followed if it is a symlink (the plan named
//! it); a root that is a regular file is backed up as one `file` entry named
//! after it, with no `.` entry.

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use serde_json::json;
use walkdir::WalkDir;

use async_trait::async_trait;

use crate::engine::{Engine, RestoreError, RestoreReport, RestoreRequest, SourceKind};
use crate::plan::Plan;
use crate::repository::materialize::{self, RestoreOptions};
use crate::repository::source::{
    EntryMeta, EntrySink, FileStamp, Source, SourceError, SourceMetadata,
};
use crate::repository::Repository;

pub struct FilesSource {
    root: PathBuf,
    exclude: Excludes,
}

impl FilesSource {
    /// `exclude` holds glob patterns; see [`Excludes`] for how they match.
    /// Invalid patterns are refused here, before any backup starts.
    pub fn new(root: PathBuf, exclude: Vec<String>) -> Result<Self, SourceError> {
        Ok(FilesSource {
            root,
            exclude: Excludes::new(&exclude)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn walk(&self, sink: &mut dyn EntrySink, counts: &mut Counts) -> Result<(), SourceError> {
        let root = &self.root;
        let mut excluded = 0u64;
        let walker = WalkDir::new(root)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                if e.depth() == 0 {
                    return true;
                }
                let rel = e.path().strip_prefix(root).unwrap_or(e.path());
                let keep = !self.exclude.is_excluded(rel, e.file_type().is_dir());
                if !keep {
                    excluded += 1;
                }
                keep
            });
        for entry in walker {
            let entry = entry.map_err(|e| walk_error(root, e))?;
            let path = entry.path();
            if entry.depth() == 0 {
                let stat = fs::metadata(path).map_err(|e| SourceError::io(path, e))?;
                sink.dir(&entry_meta(".".into(), &stat))?;
                counts.dirs += 1;
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("walkdir yields paths under its root");
            let rel = utf8(rel, path)?.to_owned();
            let stat = entry.metadata().map_err(|e| walk_error(root, e))?;
            let ft = stat.file_type();
            if ft.is_dir() {
                sink.dir(&entry_meta(rel, &stat))?;
                counts.dirs += 1;
            } else if ft.is_symlink() {
                let target = fs::read_link(path).map_err(|e| SourceError::io(path, e))?;
                let target = utf8(&target, path)?.to_owned();
                sink.symlink(&entry_meta(rel, &stat), &target)?;
                counts.symlinks += 1;
            } else if ft.is_file() {
                stream_file(path, entry_meta(rel, &stat), &stat, sink, counts)?;
            } else {
                tracing::warn!(
                    path = %path.display(),
                    kind = special_kind(&ft),
                    "skipping a {} (not backed up)",
                    special_kind(&ft)
                );
                counts.skipped_special += 1;
            }
        }
        counts.excluded = excluded;
        Ok(())
    }
}

impl Source for FilesSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Files
    }

    /// Known cheaply only for a single-file root; a tree would need a walk.
    fn estimate_bytes(&self) -> Option<u64> {
        fs::metadata(&self.root)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    fn snapshot(&mut self, sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError> {
        let stat = fs::metadata(&self.root).map_err(|e| SourceError::io(&self.root, e))?;
        let mut counts = Counts::default();
        if stat.is_file() {
            let name = self
                .root
                .file_name()
                .ok_or_else(|| {
                    SourceError::Unsupported(format!(
                        "source path {} has no file name",
                        self.root.display()
                    ))
                })
                .and_then(|n| utf8(Path::new(n), &self.root))?
                .to_owned();
            stream_file(
                &self.root,
                entry_meta(name, &stat),
                &stat,
                sink,
                &mut counts,
            )?;
        } else if stat.is_dir() {
            self.walk(sink, &mut counts)?;
        } else {
            return Err(SourceError::Unsupported(format!(
                "source path {} is a {}, not a directory or a regular file",
                self.root.display(),
                special_kind(&stat.file_type())
            )));
        }
        let mut md = SourceMetadata::new();
        md.insert("root".into(), json!(self.root.to_string_lossy()));
        md.insert("files".into(), json!(counts.files));
        md.insert("dirs".into(), json!(counts.dirs));
        md.insert("symlinks".into(), json!(counts.symlinks));
        md.insert("bytes".into(), json!(counts.bytes));
        md.insert("excluded".into(), json!(counts.excluded));
        md.insert("skipped_special".into(), json!(counts.skipped_special));
        md.insert(
            "changed_while_read".into(),
            json!(counts.changed_while_read),
        );
        Ok(md)
    }
}

/// The `exclude` patterns of a `files` source.
///
/// Matching rules (gitignore-like, but plain globs: no negation):
/// - A pattern is a glob (`*`, `?`, `[a-z]`, `{a,b}`, `**`) matched against an
///   entry's path relative to the root, `/`-separated, with no leading `./`.
///   `*` and `?` never match `/`; `**` matches across directories. Matching
///   is case-sensitive. `\` escapes a special character.
/// - A pattern without `/` matches an entry's *name* at any depth: `*.log`
///   excludes `app.log` and `var/log/app.log`; `node_modules` excludes every
///   directory (or file) of that name.
/// - A pattern with a `/` matches the whole relative path from the root:
///   `var/*.tmp` excludes `var/a.tmp` but not `var/x/a.tmp`. A leading `/`
///   only anchors: `/build` excludes the top-level `build`, not `src/build`.
/// - A trailing `/` restricts the pattern to directories: `tmp/` excludes
///   directories named `tmp` but not a file named `tmp`.
/// - An excluded directory is not entered: its whole subtree is left out.
///   `cache` leaves out the directory and everything under it; `cache/**`
///   keeps an empty `cache` directory and leaves out its contents.
/// - The root itself is never excluded.
#[derive(Debug, Default)]
pub struct Excludes {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    matcher: GlobMatcher,
    /// No `/` in the pattern: match the entry's name, at any depth.
    on_name: bool,
    dir_only: bool,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Excludes, SourceError> {
        let rules = patterns
            .iter()
            .map(|pattern| {
                let invalid = |message: String| SourceError::InvalidExclude {
                    pattern: pattern.clone(),
                    message,
                };
                let dir_only = pattern.ends_with('/');
                let body = pattern.trim_end_matches('/');
                let on_name = !body.contains('/');
                let body = body.strip_prefix('/').unwrap_or(body);
                if body.is_empty() {
                    return Err(invalid("the pattern matches no path".into()));
                }
                let matcher = GlobBuilder::new(body)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| invalid(e.kind().to_string()))?
                    .compile_matcher();
                Ok(Rule {
                    matcher,
                    on_name,
                    dir_only,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Excludes { rules })
    }

    /// `rel` is the entry's path relative to the root.
    pub fn is_excluded(&self, rel: &Path, is_dir: bool) -> bool {
        self.rules.iter().any(|rule| {
            if rule.dir_only && !is_dir {
                return false;
            }
            if rule.on_name {
                rel.file_name().is_some_and(|n| rule.matcher.is_match(n))
            } else {
                rule.matcher.is_match(rel)
            }
        })
    }
}

#[derive(Default)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    excluded: u64,
    skipped_special: u64,
    changed_while_read: u64,
}

/// Hands one regular file to the sink. A file that changes while we read it
/// (a log being appended to) is kept as read, with a warning: refusing it
/// would make busy trees impossible to back up.
fn stream_file(
    path: &Path,
    meta: EntryMeta,
    before: &Metadata,
    sink: &mut dyn EntrySink,
    counts: &mut Counts,
) -> Result<(), SourceError> {
    let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
    let mut reader = CountingReader {
        inner: file,
        read: 0,
        error: None,
    };
    let sunk = sink.file(&meta, &mut reader);
    if let Some(source) = reader.error.take() {
        return Err(SourceError::Io {
            path: path.to_owned(),
            source,
        });
    }
    sunk?;
    let after = reader
        .inner
        .metadata()
        .map_err(|e| SourceError::io(path, e))?;
    let changed = reader.read != before.len()
        || after.len() != before.len()
        || after.mtime() != before.mtime()
        || after.mtime_nsec() != before.mtime_nsec();
    if changed {
        tracing::warn!(
            path = %path.display(),
            size_before = before.len(),
            bytes_read = reader.read,
            size_after = after.len(),
            "file changed while being read; kept what was read"
        );
        counts.changed_while_read += 1;
    }
    counts.files += 1;
    counts.bytes += reader.read;
    Ok(())
}

/// Counts bytes and keeps the first read error so the source can report it
/// against the file, whatever the sink makes of it.
struct CountingReader {
    inner: File,
    read: u64,
    error: Option<io::Error>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error.get_or_insert(e);
                Err(copy)
            }
        }
    }
}

fn entry_meta(path: String, stat: &Metadata) -> EntryMeta {
    let mtime_ns = stat.mtime() * 1_000_000_000 + stat.mtime_nsec();
    EntryMeta {
        path,
        mode: stat.mode() & 0o7777,
        mtime_ns: Some(mtime_ns),
        stamp: stat.is_file().then(|| FileStamp {
            size: stat.len(),
            mtime_ns,
            ctime_ns: stat.ctime() * 1_000_000_000 + stat.ctime_nsec(),
            inode: stat.ino(),
        }),
    }
}

fn utf8<'a>(name: &'a Path, full: &Path) -> Result<&'a str, SourceError> {
    name.to_str().ok_or_else(|| SourceError::NonUtf8Path {
        path: full.to_owned(),
    })
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

fn walk_error(root: &Path, e: walkdir::Error) -> SourceError {
    let path = e.path().unwrap_or(root).to_owned();
    let source = e
        .into_io_error()
        .unwrap_or_else(|| io::Error::other("filesystem loop"));
    SourceError::io(&path, source)
}

/// Files: a directory tree (or one file), restored with modes, times and
/// links into an empty or new path.
pub struct FilesEngine {
    pub path: PathBuf,
    pub exclude: Vec<String>,
}

#[async_trait]
impl Engine for FilesEngine {
    fn kind(&self) -> SourceKind {
        SourceKind::Files
    }

    fn open_source(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(FilesSource::new(
            self.path.clone(),
            self.exclude.clone(),
        )?))
    }

    async fn restore(
        &self,
        repo: &Repository,
        plan: &Plan,
        req: &RestoreRequest,
    ) -> Result<RestoreReport, RestoreError> {
        let snapshot = crate::engine::snapshot_only(plan, self.kind(), req)?;
        let opts = RestoreOptions {
            snapshot,
            to: req.to.clone(),
            force: req.force,
            check_with: None,
            single_stream: false,
            keep_setid_bits: req.keep_setid_bits,
            progress: req.progress,
        };
        Ok(RestoreReport::Snapshot(
            materialize::restore(repo, &plan.name, &opts).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excludes(patterns: &[&str]) -> Excludes {
        Excludes::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exclude_rules_match_as_documented() {
        // (patterns, relative path, is a directory, excluded?)
        let cases: &[(&[&str], &str, bool, bool)] = &[
            (&["*.log"], "app.log", false, true),
            (&["*.log"], "var/log/app.log", false, true),
            (&["*.log"], "app.log.1", false, false),
            (&["var/*.tmp"], "var/a.tmp", false, true),
            (&["var/*.tmp"], "var/x/a.tmp", false, false),
            (&["var/**/*.tmp"], "var/x/y/a.tmp", false, true),
            (&["/build"], "build", true, true),
            (&["/build"], "src/build", true, false),
            (&["build"], "src/build", true, true),
            (&["tmp/"], "tmp", true, true),
            (&["tmp/"], "a/tmp", true, true),
            (&["tmp/"], "tmp", false, false),
            (&["cache/**"], "cache", true, false),
            (&["cache/**"], "cache/x", true, true),
            (&["cache/**"], "cache/x/y", false, true),
            (&["Cache"], "cache", true, false),
            (&["\\*"], "*", false, true),
            (&["\\*"], "x", false, false),
            (&["{a,b}.txt"], "d/b.txt", false, true),
        ];
        for (patterns, rel, is_dir, want) in cases {
            assert_eq!(
                excludes(patterns).is_excluded(Path::new(rel), *is_dir),
                *want,
                "{patterns:?} on {rel} (dir: {is_dir})"
            );
        }
    }
}
