//! A base backup read straight from the data directory, when holdfast runs on
//! the database host: a non-exclusive backup started and stopped on one held
//! session (`pg_backup_start` / `pg_backup_stop`), the files read in between
//! with the same exclusions as `pg_basebackup`, and the `backup_label` (and
//! `tablespace_map`) the server returns at the stop written into the
//! snapshot. No second process copies the data through a pipe, and a file
//! whose stamp (size, mtime, ctime, inode) has not changed since an earlier
//! backup read it is not read again.
//!
//! Why reading files while the server writes them is safe: the same as for
//! `pg_basebackup`, which reads them the same way. `pg_backup_start` forces
//! full-page writes until the stop, so every page changed during the copy
//! has a full image in the WAL from the backup's start to its stop, and
//! recovery replays that WAL (the server does not end the backup until it is
//! archived) over whatever torn or stale page the copy read.
//!
//! Why a stamp can stand for content: PostgreSQL changes relation files only
//! through `write`/`ftruncate`, which set mtime and ctime to the current
//! time, and a file replaced by another has another inode. A write in the
//! same clock tick as the one before it leaves mtime as it was, so a file
//! changed within [`STAMP_MARGIN`] of the read gets no stamp at all and is
//! read again by the next backup: a stamp is recorded only for a file whose
//! mtime and ctime are older than that, and any later write moves them.
//!
//! A relation's main fork is handed over as a file of pages, with its inode
//! and birth time: the writer hashes only the pages whose LSN shows a
//! change since the previous comparable base backup began, and takes the
//! others' chunks from that snapshot's entry for the same file
//! (`source::Pages`; docs/repository-format.md, *Pages unchanged by LSN*).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::backup::PGDATA_PREFIX;
use super::meta::PgSnapshotMeta;
use crate::repository::source::{EntryMeta, EntrySink, FileId, FileStamp, Pages, SourceError};

/// A file changed this recently when it is read gets no stamp (see the
/// module comment).
pub const STAMP_MARGIN: Duration = Duration::from_secs(2);

/// How much of a file one read(2) takes.
const READ_BUFFER: usize = 1 << 20;

/// Directories whose contents a base backup leaves out (they are rebuilt or
/// meaningless on another server), as `pg_basebackup` does; the directories
/// themselves are kept.
const EMPTY_DIRS: &[&str] = &[
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Top-level files a base backup leaves out: the running server's own
/// (`postmaster.*`), temporary ones, and a previous backup's leftovers.
const SKIPPED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
];

/// The data directory of the cluster the session is connected to, if it is
/// on this host and readable: its `global/pg_control` must carry the
/// server's system identifier (a directory of the same name on another
/// machine's cluster, or an old copy, does not). `Err` says why not.
pub fn locate(facts: &PgSnapshotMeta) -> Result<PathBuf, String> {
    let Some(dir) = &facts.data_directory else {
        return Err("the server does not show its data_directory to this role (a superuser or a member of pg_read_all_settings sees it)".into());
    };
    let root = PathBuf::from(dir);
    let control = root.join("global/pg_control");
    let bytes =
        fs::read(&control).map_err(|e| format!("cannot read {}: {e}", control.display()))?;
    // ControlFileData starts with the system identifier, in the server's
    // byte order (this host's, if it is this host's cluster).
    let ours = bytes
        .get(..8)
        .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("{} is {} bytes, too short", control.display(), bytes.len()))?;
    if facts.system_identifier != ours.to_string() {
        return Err(format!(
            "{} belongs to system {ours}, the server is system {}: not this cluster's data directory",
            control.display(),
            facts.system_identifier
        ));
    }
    let tablespaces = root.join("pg_tblspc");
    match fs::read_dir(&tablespaces) {
        Ok(mut entries) => {
            if let Some(Ok(first)) = entries.next() {
                return Err(format!(
                    "the cluster has tablespaces ({}), which a base backup read from the data directory does not carry yet",
                    first.path().display()
                ));
            }
        }
        Err(e) => return Err(format!("cannot list {}: {e}", tablespaces.display())),
    }
    Ok(root)
}

/// What a walk read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Walked {
    pub files: u64,
    /// Files recorded with a stamp (the next backup may skip them).
    pub stamped: u64,
    /// Relation main forks handed over as files of pages.
    pub paged: u64,
}

/// Hands the data directory at `root` to `sink` under `pgdata/`, leaving out
/// what `pg_basebackup` leaves out; `global/pg_control` goes last. A file
/// or directory that disappears while it is walked (a dropped table or
/// database) is left out: its removal is in the WAL replayed after.
///
/// Each relation's main fork under `base/<database>/` and `global/` goes
/// as a file of pages (with its inode and birth time), with
/// `unchanged_below` (the previous comparable snapshot's start LSN, see
/// [`Pages`]) when there is one.
pub fn walk(
    root: &Path,
    sink: &mut dyn EntrySink,
    unchanged_below: Option<u64>,
) -> Result<Walked, SourceError> {
    walk_stamping_before(
        root,
        sink,
        now_ns() - STAMP_MARGIN.as_nanos() as i64,
        unchanged_below,
    )
}

/// [`walk`], recording stamps for files whose mtime and ctime are before
/// `stamp_before_ns`.
fn walk_stamping_before(
    root: &Path,
    sink: &mut dyn EntrySink,
    stamp_before_ns: i64,
    unchanged_below: Option<u64>,
) -> Result<Walked, SourceError> {
    let mut w = Walker {
        sink,
        walked: Walked::default(),
        stamp_before_ns,
        unchanged_below,
    };
    let top = fs::symlink_metadata(root).map_err(|e| SourceError::io(root, e))?;
    w.sink.dir(&meta(PGDATA_PREFIX.into(), &top, None))?;
    w.dir(root, "")?;
    let control = root.join("global/pg_control");
    let stat = fs::symlink_metadata(&control).map_err(|e| SourceError::io(&control, e))?;
    w.file(
        &control,
        format!("{PGDATA_PREFIX}/global/pg_control"),
        &stat,
        false,
    )?;
    Ok(w.walked)
}

struct Walker<'a> {
    sink: &'a mut dyn EntrySink,
    walked: Walked,
    stamp_before_ns: i64,
    unchanged_below: Option<u64>,
}

impl Walker<'_> {
    /// The entries of directory `abs` (`rel` under the data directory, "" at
    /// its top), in name order.
    fn dir(&mut self, abs: &Path, rel: &str) -> Result<(), SourceError> {
        let listing = match fs::read_dir(abs) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => return Ok(()),
            Err(e) => return Err(SourceError::io(abs, e)),
        };
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| SourceError::io(abs, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(SourceError::NonUtf8Path { path: entry.path() });
            };
            names.push(name.to_string());
        }
        names.sort();
        // In a database's folder: relations that are unlogged (an `_init`
        // fork marks them; only that fork is kept) or temporary.
        let in_database = rel.starts_with("base/") && rel.matches('/').count() == 1;
        let unlogged: std::collections::HashSet<&str> = if in_database {
            names
                .iter()
                .filter_map(|n| n.strip_suffix("_init"))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .collect()
        } else {
            Default::default()
        };
        for name in &names {
            if name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init") {
                continue;
            }
            if rel.is_empty() && SKIPPED_FILES.contains(&name.as_str()) {
                continue;
            }
            if rel == "global" && name == "pg_control" {
                continue; // last, see `walk`
            }
            if in_database && (is_temp_relation(name) || is_unlogged_fork(name, &unlogged)) {
                continue;
            }
            let path = abs.join(name);
            let rel_child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let stat = match fs::symlink_metadata(&path) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SourceError::io(&path, e)),
            };
            let key = format!("{PGDATA_PREFIX}/{rel_child}");
            let ft = stat.file_type();
            if rel.is_empty() && name == "pg_wal" {
                // Never its contents (the WAL is archived on its own); a
                // pg_wal that is a symlink comes back as a directory.
                let stat = fs::metadata(&path).map_err(|e| SourceError::io(&path, e))?;
                self.sink.dir(&meta(key.clone(), &stat, None))?;
                let status = path.join("archive_status");
                let stat = fs::metadata(&status).unwrap_or(stat);
                self.sink
                    .dir(&meta(format!("{key}/archive_status"), &stat, None))?;
            } else if ft.is_dir() {
                self.sink.dir(&meta(key, &stat, None))?;
                if !(rel.is_empty() && EMPTY_DIRS.contains(&name.as_str())) {
                    self.dir(&path, &rel_child)?;
                }
            } else if ft.is_file() {
                // A relation's main fork, in a database's folder or
                // `global/`: its pages carry their LSN. Not the free
                // space map (never WAL-logged) nor the visibility map (a
                // bit cleared there is logged in the heap page's record,
                // not on the map's page), which are always read whole.
                let paged = (in_database || rel == "global")
                    && relfilenode(name).is_some_and(|(_, fork)| fork.is_empty());
                self.file(&path, key, &stat, paged)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| SourceError::io(&path, e))?;
                let Some(target) = target.to_str() else {
                    return Err(SourceError::NonUtf8Path { path: target });
                };
                self.sink.symlink(&meta(key, &stat, None), target)?;
            } else {
                tracing::debug!(path = %path.display(), "not a file, directory or symlink: left out of the base backup");
            }
        }
        Ok(())
    }

    fn file(
        &mut self,
        path: &Path,
        key: String,
        stat: &fs::Metadata,
        paged: bool,
    ) -> Result<(), SourceError> {
        let mut f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io(path, e)),
        };
        // The stamp of the file as opened (a file replaced since the listing
        // is another inode).
        let stat = f.metadata().unwrap_or_else(|_| stat.clone());
        let stamp = (mtime_ns(&stat) < self.stamp_before_ns
            && ctime_ns(&stat) < self.stamp_before_ns)
            .then(|| FileStamp {
                size: stat.len(),
                mtime_ns: mtime_ns(&stat),
                ctime_ns: ctime_ns(&stat),
                inode: stat.ino(),
            });
        self.walked.files += 1;
        self.walked.stamped += u64::from(stamp.is_some());
        // Pages are taken 8 KiB at a time: through a buffer, that is a
        // copy each instead of a read(2) each.
        let mut reader = std::io::BufReader::with_capacity(READ_BUFFER, &mut f);
        // Its identity as opened; none where the file system keeps no
        // birth time, and then it is read as any file.
        let id = stat.created().ok().and_then(|born| {
            let born = born.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some(FileId {
                inode: stat.ino(),
                birth_ns: i64::try_from(born.as_nanos()).ok()?,
            })
        });
        match id.filter(|_| paged) {
            Some(id) => {
                self.walked.paged += 1;
                let pages = Pages {
                    id,
                    unchanged_below: self.unchanged_below,
                };
                self.sink
                    .paged_file(&meta(key, &stat, stamp), &pages, &mut reader)?
            }
            None => self.sink.file(&meta(key, &stat, stamp), &mut reader)?,
        }
        Ok(())
    }
}

fn meta(path: String, stat: &fs::Metadata, stamp: Option<FileStamp>) -> EntryMeta {
    EntryMeta {
        path,
        mode: stat.mode() & 0o7777,
        mtime_ns: Some(mtime_ns(stat)),
        stamp,
    }
}

fn mtime_ns(stat: &fs::Metadata) -> i64 {
    stat.mtime() * 1_000_000_000 + stat.mtime_nsec()
}

fn ctime_ns(stat: &fs::Metadata) -> i64 {
    stat.ctime() * 1_000_000_000 + stat.ctime_nsec()
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

/// `t3_16384`, `t3_16384.1`, `t3_16384_fsm`: a temporary relation's file.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, rel)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) && relfilenode(rel).is_some()
}

/// A fork of an unlogged relation other than its `_init` fork.
fn is_unlogged_fork(name: &str, unlogged: &std::collections::HashSet<&str>) -> bool {
    match relfilenode(name) {
        Some((node, fork)) => unlogged.contains(node) && fork != "_init",
        None => false,
    }
}

/// `16384` / `16384.2` / `16384_vm` / `16384_fsm.1` / `16384_init`: the
/// relfilenode and the fork (`""` for the main fork).
fn relfilenode(name: &str) -> Option<(&str, &str)> {
    let base = name.split_once('.').map_or(name, |(b, seg)| {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            b
        } else {
            ""
        }
    });
    let digits = base.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let (node, fork) = base.split_at(digits);
    matches!(fork, "" | "_fsm" | "_vm" | "_init").then_some((node, fork))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_told_apart_by_name() {
        assert_eq!(relfilenode("16384"), Some(("16384", "")));
        assert_eq!(relfilenode("16384.12"), Some(("16384", "")));
        assert_eq!(relfilenode("16384_fsm"), Some(("16384", "_fsm")));
        assert_eq!(relfilenode("16384_vm.1"), Some(("16384", "_vm")));
        assert_eq!(relfilenode("16384_init"), Some(("16384", "_init")));
        assert_eq!(relfilenode("PG_VERSION"), None);
        assert_eq!(relfilenode("16384_foo"), None);
        assert_eq!(relfilenode("16384."), None);
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t12_16384_fsm.2"));
        assert!(!is_temp_relation("t_16384"));
        assert!(!is_temp_relation("16384"));
        let unlogged = ["16390"].into_iter().collect();
        assert!(is_unlogged_fork("16390", &unlogged));
        assert!(is_unlogged_fork("16390.1", &unlogged));
        assert!(is_unlogged_fork("16390_vm", &unlogged));
        assert!(!is_unlogged_fork("16390_init", &unlogged));
        assert!(!is_unlogged_fork("16391", &unlogged));
    }

    /// Records what a walk hands over.
    #[derive(Default)]
    struct Seen(Vec<(String, char, Option<FileStamp>, usize)>);

    impl EntrySink for Seen {
        fn dir(&mut self, m: &EntryMeta) -> Result<(), crate::repository::source::SinkError> {
            self.0.push((m.path.clone(), 'd', None, 0));
            Ok(())
        }
        fn symlink(
            &mut self,
            m: &EntryMeta,
            _: &str,
        ) -> Result<(), crate::repository::source::SinkError> {
            self.0.push((m.path.clone(), 'l', None, 0));
            Ok(())
        }
        fn file(
            &mut self,
            m: &EntryMeta,
            content: &mut dyn std::io::Read,
        ) -> Result<(), crate::repository::source::SinkError> {
            let mut buf = Vec::new();
            content.read_to_end(&mut buf).expect("readable");
            self.0.push((m.path.clone(), 'f', m.stamp, buf.len()));
            Ok(())
        }
    }

    #[test]
    fn a_walk_leaves_out_what_pg_basebackup_leaves_out_and_stamps_only_settled_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "global",
            "base/5",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot/slot",
            "pg_tblspc",
            "base/pgsql_tmp",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (f, len) in [
            ("PG_VERSION", 3),
            ("postmaster.pid", 10),
            ("postmaster.opts", 10),
            ("backup_label", 10),
            ("global/pg_control", 8192),
            ("global/1262", 8192),
            ("global/pg_internal.init", 100),
            ("base/5/16384", 16384),
            ("base/5/16384_fsm", 8192),
            ("base/5/16390", 8192),
            ("base/5/16390_vm", 8192),
            ("base/5/16390_init", 8192),
            ("base/5/t3_16400", 8192),
            ("base/pgsql_tmp/pgsql_tmp123.0", 100),
            ("pg_wal/000000010000000000000001", 1000),
            ("pg_wal/archive_status/000000010000000000000001.done", 0),
            ("pg_stat_tmp/global.stat", 100),
            ("pg_replslot/slot/state", 100),
        ] {
            fs::write(root.join(f), vec![1u8; len]).unwrap();
        }
        let mut seen = Seen::default();
        let walked = walk(root, &mut seen, None).unwrap();
        let paths: Vec<&str> = seen.0.iter().map(|(p, ..)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "pgdata",
                "pgdata/PG_VERSION",
                "pgdata/base",
                "pgdata/base/5",
                "pgdata/base/5/16384",
                "pgdata/base/5/16384_fsm",
                "pgdata/base/5/16390_init",
                "pgdata/global",
                "pgdata/global/1262",
                "pgdata/pg_replslot",
                "pgdata/pg_stat_tmp",
                "pgdata/pg_tblspc",
                "pgdata/pg_wal",
                "pgdata/pg_wal/archive_status",
                "pgdata/global/pg_control",
            ]
        );
        assert_eq!(walked.files, 6);
        // Every file was just written: none gets a stamp, the next backup
        // reads them all again.
        assert_eq!(walked.stamped, 0);
        assert!(seen.0.iter().all(|(_, _, stamp, _)| stamp.is_none()));
        assert_eq!(seen.0[4].3, 16384);
        // Files settled before the cutoff get their stamp, with their size.
        let mut seen = Seen::default();
        let walked =
            walk_stamping_before(root, &mut seen, now_ns() + 10_000_000_000, None).unwrap();
        assert_eq!(walked.stamped, 6);
        let (_, _, stamp, len) = &seen.0[4];
        assert_eq!(stamp.map(|s| s.size), Some(*len as u64));
    }

    #[test]
    fn the_data_directory_is_used_only_for_the_servers_own_system() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("global")).unwrap();
        fs::create_dir_all(root.join("pg_tblspc")).unwrap();
        let mut control = 7_123_456_789u64.to_ne_bytes().to_vec();
        control.resize(8192, 0);
        fs::write(root.join("global/pg_control"), &control).unwrap();
        let mut facts = PgSnapshotMeta {
            data_directory: Some(root.display().to_string()),
            system_identifier: "7123456789".into(),
            ..Default::default()
        };
        assert_eq!(locate(&facts).unwrap(), root);
        facts.system_identifier = "42".into();
        let why = locate(&facts).unwrap_err();
        assert!(
            why.contains("system 7123456789") && why.contains("system 42"),
            "{why}"
        );
        facts.system_identifier = "7123456789".into();
        std::os::unix::fs::symlink("/tmp", root.join("pg_tblspc/16500")).unwrap();
        let why = locate(&facts).unwrap_err();
        assert!(why.contains("tablespaces"), "{why}");
        facts.data_directory = None;
        assert!(locate(&facts).unwrap_err().contains("data_directory"));
        facts.data_directory = Some("/nonexistent/holdfast".into());
        assert!(locate(&facts)
            .unwrap_err()
            .contains("cannot read /nonexistent/holdfast/global/pg_control"));
    }
}
