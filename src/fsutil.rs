//! Atomic file output: write to a temporary name beside the target, fsync, chmod, rename.
//! An interrupted run leaves either the old file or the new one, never half of either.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` atomically with `mode`. The file is created with `mode` from
/// the start, so a secret is never readable by others even for a moment.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = TempFile::beside(path, mode)?;
    tmp.file().write_all(bytes)?;
    tmp.file().sync_all()?;
    tmp.persist(path)
}

/// [`write_atomic`] without the fsync: readers see the old file or the whole new one
/// even if the writer is killed, but a power cut may leave an empty or short file. For
/// what is re-derived when it reads wrong (cached recompressions, build outputs).
pub fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = TempFile::beside(path, mode)?;
    tmp.file().write_all(bytes)?;
    tmp.persist(path)
}

/// Streams into `path` atomically: `fill` writes to a buffered temporary file beside it,
/// which is fsynced and renamed into place only if `fill` succeeds.
pub fn write_atomic_with<T>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<T>,
) -> io::Result<T> {
    let mut tmp = TempFile::beside(path, mode)?;
    let v = {
        let mut w = io::BufWriter::with_capacity(1 << 20, tmp.file());
        let v = fill(&mut w)?;
        w.flush()?;
        v
    };
    tmp.file().sync_all()?;
    tmp.persist(path)?;
    Ok(v)
}

/// Marks the temporary names this module gives (`.NAME.tmp-PID-N`): what
/// [`remove_stale`] looks for.
const TEMP_MARK: &str = ".tmp-";

/// A unique temporary name beside `path`: `.NAME.tmp-PID-N`, N counting up in this
/// process, so that threads writing the same target (two roles caching one blob) never
/// share a temporary file.
pub fn temp_name(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}{TEMP_MARK}{}-{n}", std::process::id()))
}

/// A new file under a [`temp_name`] beside its target, exclusively locked (flock) for as
/// long as it is open, so that [`remove_stale`] can tell a dead writer's leftovers from a
/// live writer's work (also across PID namespaces: two CI containers on one cache).
/// Removed when dropped unless [`TempFile::persist`]ed.
pub struct TempFile {
    file: fs::File,
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// Creates the temporary file for `target` with `mode` (exactly, whatever the umask).
    pub fn beside(target: &Path, mode: u32) -> io::Result<TempFile> {
        let path = temp_name(target);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)?;
        let t = TempFile {
            file,
            path,
            kept: false,
        };
        rustix::fs::flock(
            &t.file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )?;
        t.file.set_permissions(fs::Permissions::from_mode(mode))?;
        Ok(t)
    }

    pub fn file(&mut self) -> &mut fs::File {
        &mut self.file
    }

    /// Its temporary path (for tools that write to a path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to `target`.
    pub fn persist(mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A new directory under a [`temp_name`] beside `target`, locked like a [`TempFile`] for
/// as long as this value lives; removed with its contents when dropped unless
/// [`TempDir::persist`]ed or [`TempDir::keep`]t.
pub struct TempDir {
    handle: fs::File,
    path: PathBuf,
    kept: bool,
}

impl TempDir {
    pub fn beside(target: &Path, mode: u32) -> io::Result<TempDir> {
        let path = temp_name(target);
        fs::DirBuilder::new().mode(mode).create(&path)?;
        let handle = match fs::File::open(&path) {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(e);
            }
        };
        let d = TempDir {
            handle,
            path,
            kept: false,
        };
        rustix::fs::flock(
            &d.handle,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )?;
        fs::set_permissions(&d.path, fs::Permissions::from_mode(mode))?;
        Ok(d)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to `target` (which must not exist, or be an empty directory).
    pub fn persist(mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.kept = true;
        Ok(())
    }

    /// Swaps it in for the directory `target` ([`replace_dir`]). Whatever is left under
    /// the temporary name (the previous tree, should its removal fail) goes on drop.
    pub fn replace(self, target: &Path) -> io::Result<()> {
        replace_dir(&self.path, target)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes what dead writers left in `dir`: [`TempFile`]s and [`TempDir`]s (and the
/// older `.NAME.tmp-PID` files) whose lock nobody holds and that are at least `min_age`
/// old (a writer locks its file the moment it creates it; the age covers that moment).
/// Returns the bytes freed. A live writer's file is never touched.
pub fn remove_stale(dir: &Path, min_age: std::time::Duration) -> io::Result<u64> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut freed = 0;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.contains(TEMP_MARK)) {
            continue;
        }
        let p = e.path();
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !old || meta.file_type().is_symlink() {
            continue;
        }
        let Ok(handle) = fs::File::open(&p) else {
            continue;
        };
        if rustix::fs::flock(
            &handle,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_err()
        {
            continue;
        }
        freed += if meta.is_dir() {
            let size = tree_size(&p);
            fs::remove_dir_all(&p).map(|()| size)
        } else {
            fs::remove_file(&p).map(|()| meta.len())
        }
        .or_else(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ok(0)
            } else {
                Err(e)
            }
        })?;
    }
    Ok(freed)
}

fn tree_size(dir: &Path) -> u64 {
    let mut size = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => size += tree_size(&e.path()),
            Ok(_) => size += e.metadata().map_or(0, |m| m.len()),
            Err(_) => {}
        }
    }
    size
}

/// An exclusive lock on a directory that one process at a time writes (a build's output):
/// `DIR/.slipway.lock`, flock'ed for as long as this value lives and released by the
/// kernel when the process dies, however it dies.
pub struct DirLock {
    _file: fs::File,
}

impl DirLock {
    /// Takes the lock on `dir` (created if missing), or fails at once, saying so, when
    /// another process holds it.
    pub fn acquire(dir: &Path) -> io::Result<DirLock> {
        fs::create_dir_all(dir)?;
        let path = dir.join(".slipway.lock");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another slipway process is writing {} (it holds {}); wait for it to finish or choose another directory",
                    dir.display(),
                    path.display()
                ),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes a new file inside a staging tree that is renamed into place whole; no fsync.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
}

/// Creates `dir` and any missing parents with `mode` (so a secrets tree never has a
/// world-readable level), then sets `dir`'s own mode exactly.
pub fn create_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Replaces the directory `target` with the fully written directory `staged`, so readers
/// see either the old tree or the new one. Uses renameat2(RENAME_EXCHANGE) where the
/// target exists, then removes the old tree.
pub fn replace_dir(staged: &Path, target: &Path) -> io::Result<()> {
    if target.exists() {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            staged,
            rustix::fs::CWD,
            target,
            rustix::fs::RenameFlags::EXCHANGE,
        )?;
        // `staged` now holds the previous tree.
        fs::remove_dir_all(staged)
    } else {
        fs::rename(staged, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn temporary_names_are_unique_within_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("blob");
        let a = TempFile::beside(&target, 0o644).unwrap();
        let b = TempFile::beside(&target, 0o644).unwrap();
        assert_ne!(a.path(), b.path());
        a.persist(&target).unwrap();
        b.persist(&target).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_a_dead_writers_temporary_files_are_removed() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        // A live writer: locked.
        let live = TempFile::beside(&target, 0o644).unwrap();
        let live_dir = TempDir::beside(&dir.path().join("nodes"), 0o700).unwrap();
        // A dead writer's: the same names, nobody holding a lock.
        let dead = temp_name(&target);
        fs::write(&dead, b"left by kill -9").unwrap();
        let dead_dir = temp_name(&dir.path().join("nodes"));
        fs::create_dir(&dead_dir).unwrap();
        fs::write(dead_dir.join("f"), b"x").unwrap();
        let other = dir.path().join("keep.raw");
        fs::write(&other, b"an output").unwrap();

        // Too young: kept (a writer may be between creating and locking it).
        assert_eq!(
            remove_stale(dir.path(), Duration::from_secs(3600)).unwrap(),
            0
        );
        assert!(dead.exists());
        let freed = remove_stale(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(freed, 16);
        assert!(!dead.exists() && !dead_dir.exists());
        assert!(live.path().exists() && live_dir.path().exists() && other.exists());
        drop(live);
        drop(live_dir);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only keep.raw"
        );
    }

    #[test]
    fn a_directory_lock_is_exclusive_and_released_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).err().unwrap();
        assert!(e.to_string().contains("another slipway process"), "{e}");
        drop(held);
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn replace_dir_swaps_trees() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let staged = dir.path().join("staged");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("old"), "old").unwrap();
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("new"), "new").unwrap();
        replace_dir(&staged, &target).unwrap();
        assert!(target.join("new").exists());
        assert!(!target.join("old").exists());
        assert!(!staged.exists());
    }
}
