//! A restore's scratch beside each target: `.{base}.restore-{stamp}/` (the downloaded snapshot),
//! `.{base}.restore-{stamp}.tmp` (the imported database, with its `.wal` and `.spill`) and
//! `.{base}.restore-{stamp}.lock`, which the restore holds locked (`flock`) from its start until its
//! database is swapped in or dropped. A restore that is killed leaves them, full-size on the data
//! disk; the next restore removes them before it downloads anything ([`sweep`]), unless a live
//! restore holds them.
//!
//! "Held" is asked of the lock file alone, which covers a restore's whole life (DuckDB locks the
//! temporary database only while importing). Not of `hitkeep_data::lock_holder`: it keeps a
//! descriptor of every file it asks about for the life of the process, so asking it about a file
//! about to be removed would keep that file's space allocated until this restore exits, the very
//! space it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use hitkeep_data::DataLayout;
use serde::Serialize;

use crate::SnapshotId;
use crate::error::{Error, Result};
use crate::swap::Scratch;

/// The name every scratch path of one restore of `base` starts with.
pub(crate) fn scratch_prefix(base: &str, stamp: SnapshotId) -> String {
    format!(".{base}.restore-{stamp}")
}

/// Held while one restore's scratch beside a target exists: the lock file, locked, removed (and
/// let go) when dropped.
#[derive(Debug)]
pub(crate) struct ScratchLock {
    /// Declared first, so the file is removed while still locked.
    _path: Scratch,
    _file: File,
}

impl ScratchLock {
    /// Takes `.{base}.restore-{stamp}.lock` in `dir`.
    pub(crate) fn take(dir: &Path, base: &str, stamp: SnapshotId) -> Result<ScratchLock> {
        let path = dir.join(format!("{}.lock", scratch_prefix(base, stamp)));
        let file = open_lock(&path, true).map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(ScratchLock {
                _path: Scratch(path),
                _file: file,
            }),
            Err(TryLockError::WouldBlock) => Err(Error::io(
                &path,
                std::io::Error::other(
                    "another restore with the same stamp is preparing this database",
                ),
            )),
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

/// What a restore found of earlier restores' scratch beside its targets, before it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StaleScratch {
    /// Removed: files and folders a killed restore left, and tenant folders only they were in.
    pub removed: Vec<PathBuf>,
    /// Left in place, with why: a running restore holds it, or it could not be removed.
    pub kept: Vec<(PathBuf, String)>,
}

/// Removes the scratch of restores that are gone from beside each of `targets`, and beside every
/// tenant database of `data` (a killed restore of another selection leaves its scratch there too).
pub(crate) fn sweep<'a>(
    data: &'a DataLayout,
    targets: impl Iterator<Item = &'a Path>,
) -> StaleScratch {
    let mut places: BTreeSet<(PathBuf, String)> = targets
        .chain(std::iter::once(data.db_path.as_path()))
        .filter_map(place_of)
        .collect();
    let tenants = data.data_path.join("tenants");
    if let Ok(entries) = std::fs::read_dir(&tenants) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            places.insert((entry.path(), "hitkeep.db".to_owned()));
        }
    }
    let mut report = StaleScratch::default();
    for (dir, base) in places {
        let removed_before = report.removed.len();
        sweep_place(&dir, &base, &mut report);
        // A killed restore of a new tenant leaves a folder that only its scratch was in.
        if report.removed.len() > removed_before
            && dir.parent() == Some(tenants.as_path())
            && std::fs::remove_dir(&dir).is_ok()
        {
            report.removed.push(dir);
        }
    }
    report
}

/// A target's folder and file name.
fn place_of(target: &Path) -> Option<(PathBuf, String)> {
    let base = target.file_name()?.to_string_lossy().into_owned();
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some((dir.to_owned(), base))
}

/// The scratch of `base` in `dir`, one restore (stamp) at a time.
fn sweep_place(dir: &Path, base: &str, report: &mut StaleScratch) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let start = format!(".{base}.restore-");
    let mut runs: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // The stamp (`2026-03-08T120000Z`) has no dot: what follows one is the kind of scratch.
        if let Some(rest) = name.strip_prefix(&start) {
            let stamp = rest.split('.').next().unwrap_or(rest).to_owned();
            runs.entry(stamp).or_default().push(entry.path());
        }
    }
    for (stamp, mut paths) in runs {
        let prefix = dir.join(format!("{start}{stamp}"));
        let lock_path = PathBuf::from(format!("{}.lock", prefix.display()));
        // Hold the dead restore's lock while removing, so a restore starting now cannot take it.
        let (lock, held) = match open_lock(&lock_path, false) {
            Ok(file) => match file.try_lock() {
                Ok(()) => (Some(file), None),
                Err(TryLockError::WouldBlock) => {
                    (None, Some("a running restore holds it".to_owned()))
                }
                Err(TryLockError::Error(e)) => (
                    None,
                    Some(format!("cannot lock {}: {e}", lock_path.display())),
                ),
            },
            Err(_) => (None, None),
        };
        paths.sort();
        // The lock file last: while it is there, the others are its.
        paths.sort_by_key(|p| *p == lock_path);
        for path in paths {
            if let Some(why) = &held {
                report.kept.push((path, why.clone()));
                continue;
            }
            let outcome = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match outcome {
                Ok(()) => report.removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report.kept.push((path, format!("cannot remove it: {e}"))),
            }
        }
        drop(lock);
    }
}

fn open_lock(path: &Path, create: bool) -> std::io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> SnapshotId {
        "2026-03-08T120000Z".parse().unwrap()
    }

    #[test]
    fn a_held_lock_keeps_its_scratch_and_a_released_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
        let lock = ScratchLock::take(dir.path(), "hitkeep.db", stamp()).unwrap();
        let folder = dir.path().join(scratch_prefix("hitkeep.db", stamp()));
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("hits.parquet"), b"x").unwrap();
        let target = dir.path().join("hitkeep.db");

        let report = sweep(&data, std::iter::once(target.as_path()));
        assert!(report.removed.is_empty(), "{report:?}");
        assert_eq!(report.kept.len(), 2, "{report:?}");
        assert!(folder.exists());
        drop(lock);
        assert!(
            !dir.path()
                .join(".hitkeep.db.restore-2026-03-08T120000Z.lock")
                .exists(),
            "a lock removes its file"
        );
        let report = sweep(&data, std::iter::once(target.as_path()));
        assert_eq!(report.removed, std::slice::from_ref(&folder), "{report:?}");
        assert!(!folder.exists());
        // Another file's scratch is not this target's.
        std::fs::write(
            dir.path().join(".other.db.restore-2026-03-08T120000Z.tmp"),
            b"x",
        )
        .unwrap();
        assert_eq!(
            sweep(&data, std::iter::once(target.as_path())),
            StaleScratch::default()
        );
    }
}
