//! Local staging folders: one per opened location, locked for as long as it lives, so that a sweep
//! can tell a dead process's leftovers from a live one's work by the lock alone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{PartialKind, PartialUpload, SweepReport};
use crate::backend::FS_STAGING_DIR;
use crate::error::{Error, ErrorKind, Result};

/// The lock file of a staging folder. It is created as [`LOCK_STARTING`] and gets this name only once
/// locked, so a sweep that finds `lock` unlocked knows its owner is gone, not still starting.
const LOCK: &str = "lock";
const LOCK_STARTING: &str = "lock.starting";

/// Loose files, and folders without a lock, are left alone until unmodified for at least this long
/// whatever the bound: a process of an older version may still be writing them.
pub(crate) const LOOSE_MIN_AGE: Duration = Duration::from_secs(3600);

/// Where one opened location stages its writes: `{root}/.hitkeep-tmp/{pid}-{random}/`, shared by its
/// clones and removed with the last of them.
#[derive(Clone, Debug)]
pub(crate) struct Staging {
    /// `{root}/.hitkeep-tmp`.
    shared: PathBuf,
    /// This storage's own folder; `None` when none could be made (a read-only location, a full disk),
    /// and then writes are staged in `shared`, as before, and fail there if they must.
    own: Option<Arc<OwnFolder>>,
}

#[derive(Debug)]
struct OwnFolder {
    path: PathBuf,
    name: String,
    /// Open and locked for as long as the folder is in use; closing it releases the lock.
    _lock: File,
}

impl Drop for OwnFolder {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this), so no sweep takes it half-way.
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::debug!(path = %self.path.display(), error = %e, "could not remove a staging folder; a later sweep will");
        }
    }
}

impl Staging {
    /// Makes and locks a staging folder of this storage's own under `root`.
    pub(crate) fn open(root: &Path) -> Staging {
        let shared = root.join(FS_STAGING_DIR);
        let own = match OwnFolder::create(&shared) {
            Ok(folder) => Some(Arc::new(folder)),
            // A restore may read from a read-only mount or a full disk; it writes nothing there.
            Err(e) => {
                tracing::debug!(path = %shared.display(), error = %e, "no staging folder of its own; writes are staged in the shared one");
                None
            }
        };
        Staging { shared, own }
    }

    /// The folder OpenDAL stages writes in.
    pub(crate) fn dir(&self) -> &Path {
        self.own.as_ref().map_or(&self.shared, |own| &own.path)
    }

    pub(crate) async fn sweep(&self, older_than: Duration) -> Result<SweepReport> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.sweep_now(older_than))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    "sweep",
                    self.shared.display().to_string(),
                    format!("the sweep stopped: {e}"),
                )
            })?
    }

    fn sweep_now(&self, older_than: Duration) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let entries = match std::fs::read_dir(&self.shared) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(Error::local("sweep", &self.shared, e)),
        };
        let loose_age = older_than.max(LOOSE_MIN_AGE);
        for entry in entries {
            let entry = entry.map_err(|e| Error::local("sweep", &self.shared, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if self.own.as_ref().is_some_and(|own| own.name == name) {
                continue;
            }
            let path = entry.path();
            let outcome = match entry.file_type() {
                Ok(t) if t.is_dir() => sweep_folder(&path, &name, loose_age),
                Ok(_) => sweep_loose(&path, &name, loose_age),
                Err(e) => Outcome::failed(&name, PartialKind::LooseFile, &path, e),
            };
            outcome.tally(&mut report);
        }
        Ok(report)
    }
}

impl OwnFolder {
    fn create(shared: &Path) -> io::Result<OwnFolder> {
        std::fs::create_dir_all(shared)?;
        let name = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
        let path = shared.join(&name);
        std::fs::create_dir(&path)?;
        match lock_in(&path) {
            Ok(lock) => Ok(OwnFolder {
                path,
                name,
                _lock: lock,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }
}

/// Creates the lock file under a passing name, locks it, and only then names it `lock`.
fn lock_in(folder: &Path) -> io::Result<File> {
    let starting = folder.join(LOCK_STARTING);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&starting)?;
    file.try_lock().map_err(|e| match e {
        TryLockError::Error(e) => e,
        TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
    })?;
    std::fs::rename(&starting, folder.join(LOCK))?;
    Ok(file)
}

/// What became of one entry of `.hitkeep-tmp/`.
enum Outcome {
    Removed(PartialUpload),
    Kept,
    /// Removed by its owner while we looked.
    Gone,
    Failed(PartialUpload, Error),
}

impl Outcome {
    fn failed(name: &str, kind: PartialKind, path: &Path, e: io::Error) -> Outcome {
        Outcome::Failed(
            upload(name, kind, None, None),
            Error::local("sweep", path, e),
        )
    }

    fn tally(self, report: &mut SweepReport) {
        match self {
            Outcome::Removed(p) => report.removed.push(p),
            Outcome::Kept => report.kept += 1,
            Outcome::Gone => {}
            Outcome::Failed(p, e) => report.failed.push((p, e)),
        }
    }
}

fn upload(
    name: &str,
    kind: PartialKind,
    bytes: Option<u64>,
    started: Option<SystemTime>,
) -> PartialUpload {
    PartialUpload {
        key: format!("{FS_STAGING_DIR}/{name}"),
        kind,
        bytes,
        started: started.and_then(|t| jiff::Timestamp::try_from(t).ok()),
    }
}

/// A staging folder goes when its lock can be taken: whoever held it is gone. One without a lock is
/// still starting or was never ours, and goes only by age.
fn sweep_folder(path: &Path, name: &str, loose_age: Duration) -> Outcome {
    let kind = PartialKind::StagingFolder;
    let lock_path = path.join(LOCK);
    let lock = match File::open(&lock_path) {
        Ok(lock) => lock,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match age(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::Gone,
                Err(e) => Outcome::failed(name, kind, path, e),
                Ok(age) if age < loose_age => Outcome::Kept,
                Ok(_) => remove_folder(path, name, None),
            };
        }
        Err(e) => return Outcome::failed(name, kind, &lock_path, e),
    };
    match lock.try_lock() {
        Ok(()) => {
            // Held until the folder is gone, so that two sweeps never both take it.
            let started = lock.metadata().and_then(|m| m.modified()).ok();
            remove_folder(path, name, started)
        }
        Err(TryLockError::WouldBlock) => Outcome::Kept,
        Err(TryLockError::Error(e)) => Outcome::failed(name, kind, &lock_path, e),
    }
}

fn remove_folder(path: &Path, name: &str, started: Option<SystemTime>) -> Outcome {
    let bytes = size_of(path);
    match std::fs::remove_dir_all(path) {
        Ok(()) => Outcome::Removed(upload(
            name,
            PartialKind::StagingFolder,
            Some(bytes),
            started,
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::Gone,
        Err(e) => Outcome::failed(name, PartialKind::StagingFolder, path, e),
    }
}

/// A file staged directly in `.hitkeep-tmp/` by an older version goes once nobody has written to it
/// for `loose_age`.
fn sweep_loose(path: &Path, name: &str, loose_age: Duration) -> Outcome {
    let kind = PartialKind::LooseFile;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Outcome::Gone,
        Err(e) => return Outcome::failed(name, kind, path, e),
    };
    match age(path) {
        Ok(age) if age < loose_age => return Outcome::Kept,
        Ok(_) => {}
        Err(e) => return Outcome::failed(name, kind, path, e),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Outcome::Removed(upload(name, kind, Some(meta.len()), None)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::Gone,
        Err(e) => Outcome::failed(name, kind, path, e),
    }
}

/// Time since the entry was last modified; zero when that is in the future.
fn age(path: &Path) -> io::Result<Duration> {
    let modified = std::fs::symlink_metadata(path)?.modified()?;
    Ok(SystemTime::now()
        .duration_since(modified)
        .unwrap_or(Duration::ZERO))
}

/// Bytes of the files under `path`, as far as they can be read.
fn size_of(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => size_of(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
