//! One backup cycle at a time per data directory, across threads and processes.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held while a cycle runs; released on drop (and by the OS if the process dies, so a crash never leaves
/// a stale lock behind).
#[derive(Debug)]
pub struct CycleLock {
    _file: File,
    path: PathBuf,
}

impl CycleLock {
    /// Takes the lock at `path`, or fails at once with [`Error::Busy`].
    pub fn acquire(path: &Path) -> Result<CycleLock> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(CycleLock {
                _file: file,
                path: path.to_owned(),
            }),
            Err(TryLockError::WouldBlock) => Err(Error::Busy(path.to_owned())),
            Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.lock");
        let first = CycleLock::acquire(&path).unwrap();
        assert!(matches!(CycleLock::acquire(&path), Err(Error::Busy(_))));
        drop(first);
        CycleLock::acquire(&path).unwrap();
    }
}
