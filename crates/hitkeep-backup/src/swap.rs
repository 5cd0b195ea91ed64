//! The last step of every restore, shared by `restore-backup` and `restore-database-bundle`: move the
//! current database and its WAL aside as `{db}.pre-restore.{stamp}`, rename the restored files into
//! place, make them private (0600, as HitKeep does), and put everything back as it was when a step
//! fails. Until the first rename the original database and WAL are untouched. The restored files are
//! fsynced before the first rename and their folder after the last, so once a swap has returned a
//! power loss brings back neither the old database nor a restored one without its bytes.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::SnapshotId;
use crate::error::{Error, Result};

/// `{path}.wal`: DuckDB's write-ahead log beside a database file.
pub(crate) fn wal_of(path: &Path) -> PathBuf {
    with_suffix(path, ".wal")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Moves the current database and WAL aside (never over an earlier aside copy), then renames
/// `restored`, and `{restored}.wal` when there is one, into place. A stale WAL is moved aside even
/// when the database file is missing: DuckDB would replay it into the restored file. When any step
/// fails, whatever was put in place is removed and the aside files are renamed back. Returns where
/// the previous database went, if there was one.
pub(crate) fn swap_into_place(
    restored: &Path,
    target: &Path,
    stamp: SnapshotId,
) -> Result<Option<PathBuf>> {
    sync_restored(restored)?;
    let aside = move_aside(target, stamp)?;
    if let Err(e) = activate(restored, target).and_then(|()| sync_folder_of(target)) {
        let _ = fs::remove_file(target);
        let _ = fs::remove_file(wal_of(target));
        if let Some(aside) = &aside {
            aside.put_back(target);
        }
        return Err(e);
    }
    Ok(aside.map(|a| a.db))
}

/// Undoes a completed swap: removes the restored database and WAL at `target` and renames the aside
/// copies (`aside`, as [`swap_into_place`] returned it) back. Used when another database of the same
/// restore fails to swap in, so that no restore leaves a mix of old and new databases.
pub(crate) fn undo_swap(target: &Path, aside: Option<&Path>) -> Result<()> {
    for path in [target.to_owned(), wal_of(target)] {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&path, e)),
            _ => {}
        }
    }
    if let Some(aside) = aside {
        for (from, to) in [
            (aside.to_owned(), target.to_owned()),
            (wal_of(aside), wal_of(target)),
        ] {
            if from.exists() {
                fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
            }
        }
    }
    sync_folder_of(target)
}

/// The restored database and WAL reach the disk before any name points at them. DuckDB's checkpoint
/// and a bundle's decompression fsync them already; then this costs nothing. A missing file is the
/// rename's to report, after which the swap puts the old files back.
fn sync_restored(restored: &Path) -> Result<()> {
    for path in [restored.to_owned(), wal_of(restored)] {
        match fs::File::open(&path) {
            Ok(file) => file.sync_all().map_err(|e| Error::io(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(())
}

/// Fsyncs the folder of `target`, which holds the renames of a swap: the old files aside, the new
/// ones in place.
fn sync_folder_of(target: &Path) -> Result<()> {
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    hitkeep_storage::sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// The previous database and WAL, moved aside.
struct Aside {
    db: PathBuf,
    moved_db: bool,
    moved_wal: bool,
}

impl Aside {
    /// Best effort: the error reported is the one that made the swap fail.
    fn put_back(&self, target: &Path) {
        if self.moved_db {
            let _ = fs::rename(&self.db, target);
        }
        if self.moved_wal {
            let _ = fs::rename(wal_of(&self.db), wal_of(target));
        }
        let _ = sync_folder_of(target);
    }
}

fn move_aside(target: &Path, stamp: SnapshotId) -> Result<Option<Aside>> {
    let wal = wal_of(target);
    let (has_db, has_wal) = (target.exists(), wal.exists());
    if !has_db && !has_wal {
        return Ok(None);
    }
    let mut db = with_suffix(target, &format!(".pre-restore.{stamp}"));
    let mut n = 1;
    while db.exists() || wal_of(&db).exists() {
        db = with_suffix(target, &format!(".pre-restore.{stamp}-{n}"));
        n += 1;
    }
    let mut aside = Aside {
        db,
        moved_db: false,
        moved_wal: false,
    };
    if has_db {
        fs::rename(target, &aside.db).map_err(|e| Error::io(target, e))?;
        aside.moved_db = true;
    }
    if has_wal {
        if let Err(e) = fs::rename(&wal, wal_of(&aside.db)) {
            aside.put_back(target);
            return Err(Error::io(&wal, e));
        }
        aside.moved_wal = true;
    }
    Ok(Some(aside))
}

fn activate(restored: &Path, target: &Path) -> Result<()> {
    fs::rename(restored, target).map_err(|e| Error::io(target, e))?;
    let (restored_wal, target_wal) = (wal_of(restored), wal_of(target));
    if restored_wal.exists() {
        fs::rename(&restored_wal, &target_wal).map_err(|e| Error::io(&target_wal, e))?;
    }
    for path in [target, target_wal.as_path()] {
        if path.exists() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(path, e))?;
        }
    }
    Ok(())
}

/// A temporary path (file or directory, and the file's WAL) removed when restoring ends, whichever way.
#[derive(Debug)]
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn remove(&self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(&self.0);
        let _ = fs::remove_file(wal_of(&self.0));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn stamp() -> SnapshotId {
        "2026-03-08T120000Z".parse().unwrap()
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_old_files_go_aside_and_the_new_ones_in_place_private() {
        let dir = tempfile::tempdir().unwrap();
        let (target, restored) = (dir.path().join("hitkeep.db"), dir.path().join(".new.tmp"));
        write(&target, "old");
        write(&wal_of(&target), "old wal");
        write(&restored, "new");
        write(&wal_of(&restored), "new wal");
        let aside = swap_into_place(&restored, &target, stamp())
            .unwrap()
            .unwrap();
        assert_eq!(
            aside,
            dir.path().join("hitkeep.db.pre-restore.2026-03-08T120000Z")
        );
        assert_eq!(
            (read(&aside), read(&wal_of(&aside))),
            ("old".into(), "old wal".into())
        );
        assert_eq!(
            (read(&target), read(&wal_of(&target))),
            ("new".into(), "new wal".into())
        );
        for path in [target.clone(), wal_of(&target)] {
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        assert!(!restored.exists() && !wal_of(&restored).exists());
        // A second swap with the same stamp never overwrites the first aside copy.
        write(&restored, "newer");
        let second = swap_into_place(&restored, &target, stamp())
            .unwrap()
            .unwrap();
        assert_ne!(second, aside);
        assert_eq!((read(&aside), read(&second)), ("old".into(), "new".into()));
        assert!(
            !wal_of(&target).exists(),
            "the WAL went aside with its database"
        );
    }

    #[test]
    fn a_failed_activation_puts_the_old_files_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("hitkeep.db");
        write(&target, "old");
        write(&wal_of(&target), "old wal");
        let missing = dir.path().join(".never-written.tmp");
        let err = swap_into_place(&missing, &target, stamp()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert_eq!(
            (read(&target), read(&wal_of(&target))),
            ("old".into(), "old wal".into())
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no aside copy left behind: {names:?}");
    }
}
