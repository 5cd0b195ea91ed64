//! Staging folders: every job that stages files on the data disk (a backup cycle's exports, an archive
//! run's Parquet files, a `backup verify --deep`'s downloads) gets a folder of its own,
//! `{data}/.hitkeep-staging/{kind}-{run}`, so jobs that run at once never share or wipe each other's
//! files.
//!
//! Each folder holds a lock file, locked (`flock`) for as long as its job lives. Claiming a folder
//! first sweeps the folders of the same kind whose lock nobody holds: their job died (the kernel lets
//! go of a dead process's lock), so a kill never leaves a full staging folder for good, and a live
//! job's folder is never removed. Sweeping and creating happen under a lock on the staging root, so a
//! sweep never meets a folder whose lock file is not locked yet.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{DataError, DataLayout};

/// The folder under the data path that holds every staging folder.
pub const STAGING_DIR: &str = ".hitkeep-staging";

/// The lock file inside each job's folder.
const LOCK_FILE: &str = ".lock";

/// The lock file in the staging root, held while a folder is swept or created.
const ROOT_LOCK: &str = ".claim.lock";

/// A job that stages files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobKind {
    /// A backup cycle: the databases' exports.
    Backup,
    /// An archive run: a site's Parquet file and its read-back copy.
    Archive,
    /// `backup verify --deep`: a snapshot's downloads and the database it is imported into.
    Verify,
}

impl JobKind {
    /// The folder name's prefix: `backup`, `archive` or `verify`.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Archive => "archive",
            JobKind::Verify => "verify",
        }
    }

    const ALL: [JobKind; 3] = [JobKind::Backup, JobKind::Archive, JobKind::Verify];
}

impl DataLayout {
    /// `{data}/.hitkeep-staging`, the root of every job's staging folder.
    pub fn staging_root(&self) -> PathBuf {
        self.data_path.join(STAGING_DIR)
    }

    /// `{data}/.hitkeep-staging/{kind}-{run}`: where one run of a job stages its files.
    pub fn staging_dir(&self, kind: JobKind, run: &str) -> PathBuf {
        staging_path(&self.staging_root(), kind, run)
    }

    /// A new staging folder for one run of `kind`, held until the value is dropped (see
    /// [`StagingDir::claim`]).
    pub fn claim_staging(&self, kind: JobKind) -> Result<StagingDir, DataError> {
        StagingDir::claim(&self.staging_root(), kind)
    }
}

fn staging_path(root: &Path, kind: JobKind, run: &str) -> PathBuf {
    root.join(format!("{}-{run}", kind.name()))
}

/// One run's staging folder: locked while this value lives, removed when it is dropped.
#[derive(Debug)]
pub struct StagingDir {
    path: PathBuf,
    /// Held for the job's life; released (also by the kernel, if the process dies) after the folder
    /// is removed.
    _lock: File,
}

impl StagingDir {
    /// Claims a new folder `{root}/{kind}-{run}` for one run of `kind` (`run` is unique: process id,
    /// a counter and the time), after removing the folders of `kind` whose job died. A backup's
    /// claim also removes what older versions of hitkeep left in the root (folders named after no
    /// kind), since their cycles wiped the whole root.
    pub fn claim(root: &Path, kind: JobKind) -> Result<StagingDir, DataError> {
        std::fs::create_dir_all(root).map_err(|e| staging_error(root, e))?;
        let root_lock = root.join(ROOT_LOCK);
        let guard = open_lock(&root_lock, true).map_err(|e| staging_error(&root_lock, e))?;
        guard.lock().map_err(|e| staging_error(&root_lock, e))?;
        for removed in sweep(root, kind) {
            tracing::info!(path = %removed.display(), "removed the staging folder of a job that is gone");
        }
        let (path, lock) = create(root, kind)?;
        drop(guard);
        Ok(StagingDir { path, _lock: lock })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the staging folder; the next job of its kind removes it");
        }
    }
}

/// Creates and locks a folder with a name no other run has; the caller holds the root lock.
fn create(root: &Path, kind: JobKind) -> Result<(PathBuf, File), DataError> {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    loop {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let run = format!(
            "{}-{}-{millis}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let path = staging_path(root, kind, &run);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // A process of the same id in another PID namespace, at the same millisecond.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(staging_error(&path, e)),
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = open_lock(&lock_path, true).map_err(|e| staging_error(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => return Ok((path, lock)),
            Err(TryLockError::WouldBlock) => {
                return Err(staging_error(
                    &lock_path,
                    std::io::Error::other("a new lock file is locked by someone else"),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(staging_error(&lock_path, e)),
        }
    }
}

/// Removes the folders of `kind` in `root` that no live job holds (and, for a backup, what older
/// versions left); returns what it removed. A folder that cannot be removed is logged and left for
/// the next sweep.
fn sweep(root: &Path, kind: JobKind) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let of_kind = |k: JobKind| name.starts_with(&format!("{}-", k.name()));
        let stale = if of_kind(kind) {
            !is_held(&path)
        } else {
            kind == JobKind::Backup && name != ROOT_LOCK && !JobKind::ALL.into_iter().any(of_kind)
        };
        if !stale {
            continue;
        }
        let outcome = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match outcome {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a stale staging folder");
            }
        }
    }
    removed
}

/// Whether a live job holds the folder's lock. A folder without a lock file is not held: claims
/// create and lock it under the root lock, which the sweeper holds.
fn is_held(folder: &Path) -> bool {
    let Ok(file) = open_lock(&folder.join(LOCK_FILE), false) else {
        return false;
    };
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

fn open_lock(path: &Path, create: bool) -> std::io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

fn staging_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Staging {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ROOT_LOCK)
            .collect();
        names.sort();
        names
    }

    /// A folder as a job that was killed leaves it: its lock file, unlocked, and a file.
    fn dead(root: &Path, name: &str, with_lock_file: bool) -> PathBuf {
        let path = root.join(name);
        std::fs::create_dir_all(&path).unwrap();
        if with_lock_file {
            std::fs::write(path.join(LOCK_FILE), b"").unwrap();
        }
        std::fs::write(path.join("hits.parquet"), b"half an export").unwrap();
        path
    }

    #[test]
    fn a_live_jobs_folder_survives_a_claim_and_a_dead_ones_of_the_same_kind_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
        let root = layout.staging_root();
        let verify = layout.claim_staging(JobKind::Verify).unwrap();
        std::fs::write(verify.path().join("manifest.json"), b"{}").unwrap();
        assert!(verify.path().starts_with(&root));
        assert!(
            verify
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("verify-")
        );
        let dead_backup = dead(&root, "backup-1-0-1", true);
        let no_lock = dead(&root, "backup-2-0-1", false);
        let dead_verify = dead(&root, "verify-3-0-1", true);
        let legacy_cycle = dead(&root, "2026-03-08T120000Z", false);
        let legacy_archive = dead(&root, "archive", false);

        let backup = layout.claim_staging(JobKind::Backup).unwrap();
        assert!(
            verify.path().join("manifest.json").exists(),
            "the live verify's folder is left alone"
        );
        assert!(
            dead_verify.exists(),
            "another kind's folders are that kind's to sweep"
        );
        for gone in [&dead_backup, &no_lock, &legacy_cycle, &legacy_archive] {
            assert!(!gone.exists(), "{}", gone.display());
        }
        let backup_name = backup.path().file_name().unwrap().to_string_lossy();
        // Sorted like `names`: where "verify-3-0-1" falls depends on this process's PID.
        let mut expected = vec![
            backup_name.to_string(),
            verify
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            "verify-3-0-1".to_owned(),
        ];
        expected.sort();
        assert_eq!(names(&root), expected);

        // The next verify sweeps the dead one, never the live one; dropping a claim removes it.
        let second = layout.claim_staging(JobKind::Verify).unwrap();
        assert!(!dead_verify.exists());
        assert!(verify.path().exists() && second.path() != verify.path());
        let (first, second_path) = (verify.path().to_owned(), second.path().to_owned());
        drop(verify);
        drop(second);
        drop(backup);
        assert!(!first.exists() && !second_path.exists());
        assert!(names(&root).is_empty(), "{:?}", names(&root));
    }

    #[test]
    fn the_path_of_a_run_is_named_after_its_kind() {
        let layout = DataLayout::new("/d/hitkeep.db", "/d/data");
        assert_eq!(
            layout.staging_dir(JobKind::Verify, "42-0-7"),
            PathBuf::from("/d/data/.hitkeep-staging/verify-42-0-7")
        );
    }
}
