//! Files on disk: setting modes and times, damaging a stored object, listing
//! the files under a folder, and describing a tree so two can be compared.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets the access and modification time of `path` itself (a symlink, not
/// what it points to).
pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// Flips the bits of `mask` in the byte at `at(length)` of `path`, writing a
/// new file (stored objects are read-only); returns the bytes as they were.
pub fn flip(path: &Path, at: impl FnOnce(usize) -> usize, mask: u8) -> Vec<u8> {
    let good = std::fs::read(path).unwrap();
    let mut bad = good.clone();
    bad[at(good.len())] ^= mask;
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, &bad).unwrap();
    good
}

/// Every file under `dir`, sorted; none if `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

/// One line per entry under `root` (itself included), in path order: kind,
/// path, mode, modification time, and a file's length and SHA-256 or a
/// link's target. Equal listings mean equal trees.
pub fn tree_listing(root: &Path) -> String {
    use sha2::Digest;
    let mut lines = Vec::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let what = if m.is_symlink() {
            format!(
                "link -> {}",
                std::fs::read_link(e.path()).unwrap().display()
            )
        } else if m.is_dir() {
            "dir".to_string()
        } else {
            let bytes = std::fs::read(e.path()).unwrap();
            format!(
                "file {} bytes sha256 {}",
                bytes.len(),
                hex::encode(sha2::Sha256::digest(&bytes))
            )
        };
        lines.push(format!(
            "/{rel} {what} mode {:o} mtime {}.{:09}",
            m.mode() & 0o7777,
            m.mtime(),
            m.mtime_nsec()
        ));
    }
    lines.join("\n")
}
