//! Who holds DuckDB's lock on a database file, asked of the kernel about the file itself.
//!
//! DuckDB locks a database with `fcntl(F_SETLK)` over the whole file (`l_start` 0, `l_len` 0): a
//! write lock when it opens the file read-write, a read lock when it opens it read-only
//! (`TryAcquireFileLock` in DuckDB's `src/common/local_file_system.cpp`). `/proc/locks` only lists the
//! locks of processes in the reader's PID namespace, so a server in another container was invisible to
//! it. The kernel's own answer (`F_OFD_GETLK` for a write lock over the whole file, on a read-only
//! descriptor) covers every process, and it names the holder with a PID of this namespace, or 0 when
//! the holder cannot be seen from here. An open file description lock also conflicts with this
//! process's own POSIX locks, so a DuckDB connection of this very process (an embedding server) is
//! found too.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;

use crate::DataError;

/// A lock that stops DuckDB from opening a database for writing, and who holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockHolder {
    /// Who holds the lock.
    pub who: Holder,
    /// A read lock (DuckDB opened the file read-only) or a write lock.
    pub mode: LockMode,
}

/// The process behind a lock, as far as the kernel names it to this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A process this PID namespace can see (this process included), and its executable when
    /// `/proc/<pid>/exe` is readable.
    Process {
        /// Its PID in this namespace.
        pid: u32,
        /// `/proc/<pid>/exe`, e.g. `/usr/bin/hitkeep`.
        exe: Option<PathBuf>,
    },
    /// A process in a PID namespace this one cannot see into, such as another container: the
    /// kernel reports PID 0.
    OtherNamespace,
    /// An open file description lock, whose owner the kernel does not report (PID -1). DuckDB
    /// never takes one; some other program does.
    Unnamed,
}

/// A shared (read) or exclusive (write) lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// A read lock: DuckDB has the file open read-only. Readers coexist; a writer must wait.
    Read,
    /// A write lock: DuckDB has the file open for writing.
    Write,
}

impl fmt::Display for LockHolder {
    /// `/usr/bin/hitkeep (PID 4242)`, `this process, PID 4242`, `in another PID namespace, e.g.
    /// another container`; `, read-only` after a read lock. Written to follow "in use by another process".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.who {
            Holder::Process { pid, .. } if *pid == std::process::id() => {
                write!(f, "this process, PID {pid}")?;
            }
            Holder::Process {
                pid,
                exe: Some(exe),
            } => write!(f, "{} (PID {pid})", exe.display())?,
            Holder::Process { pid, exe: None } => write!(f, "PID {pid}")?,
            Holder::OtherNamespace => {
                f.write_str("in another PID namespace, e.g. another container")?
            }
            Holder::Unnamed => {
                f.write_str("an open file description lock the kernel does not name")?
            }
        }
        if self.mode == LockMode::Read {
            f.write_str(", read-only")?;
        }
        Ok(())
    }
}

/// Who holds a lock on `path` that would keep DuckDB from opening it for writing: any lock, a
/// read-only open's included. `Ok(None)` when nothing holds one, or when the file does not exist.
///
/// The check opens the file read-only and keeps that descriptor for the life of the process (one
/// per file): closing any descriptor of a file drops every POSIX lock this process holds on it, so
/// closing ours would silently release the lock of a DuckDB connection of this process.
pub fn lock_holder(path: &Path) -> Result<Option<LockHolder>, DataError> {
    let failed = |source: std::io::Error| DataError::LockCheck {
        path: path.to_owned(),
        source,
    };
    let file = match probe(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let mut lock = whole_file_write_lock();
    match fcntl(file, FcntlArg::F_OFD_GETLK(&mut lock)) {
        Ok(_) => {}
        // Kernels before 3.15 and some file systems know only process-owned locks; those still
        // see every other process, just not this one's own.
        Err(Errno::EINVAL) => {
            lock = whole_file_write_lock();
            fcntl(file, FcntlArg::F_GETLK(&mut lock)).map_err(|e| failed(e.into()))?;
        }
        Err(e) => return Err(failed(e.into())),
    }
    Ok(holder_of(&lock))
}

/// The kernel's answer in our terms; `None` when it found no conflicting lock.
fn holder_of(lock: &libc::flock) -> Option<LockHolder> {
    let mode = match i32::from(lock.l_type) {
        libc::F_UNLCK => return None,
        libc::F_RDLCK => LockMode::Read,
        _ => LockMode::Write,
    };
    let who = match lock.l_pid {
        0 => Holder::OtherNamespace,
        pid if pid < 0 => Holder::Unnamed,
        pid => Holder::Process {
            pid: pid.unsigned_abs(),
            exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
        },
    };
    Some(LockHolder { who, mode })
}

/// A write lock over the whole file, as DuckDB takes it: the question "could a writer open this?".
fn whole_file_write_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // F_OFD_GETLK requires 0 here.
        l_pid: 0,
    }
}

/// Descriptors kept open for lock checks, by device and inode. They are never closed (see
/// [`lock_holder`]); a process checks a handful of files, so a handful of descriptors.
static PROBES: Mutex<Option<HashMap<(u64, u64), &'static File>>> = Mutex::new(None);

/// A read-only descriptor of `path`'s file, opened once per process.
fn probe(path: &Path) -> std::io::Result<&'static File> {
    // stat, unlike open, cannot drop a lock: find a descriptor we already have without opening one.
    let meta = std::fs::metadata(path)?;
    let mut probes = PROBES.lock().unwrap_or_else(PoisonError::into_inner);
    let probes = probes.get_or_insert_with(HashMap::new);
    if let Some(&file) = probes.get(&(meta.dev(), meta.ino())) {
        return Ok(file);
    }
    let file: &'static File = Box::leak(Box::new(File::open(path)?));
    // Keyed by what was opened: the path may name a new file by now (a restore's swap).
    let opened = file.metadata()?;
    probes.insert((opened.dev(), opened.ino()), file);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flock(l_type: i32, l_pid: i32) -> libc::flock {
        libc::flock {
            l_type: l_type as libc::c_short,
            l_pid,
            ..whole_file_write_lock()
        }
    }

    #[test]
    fn the_kernels_answer_names_the_holder() {
        assert_eq!(holder_of(&flock(libc::F_UNLCK, 0)), None);
        let me = std::process::id();
        let mine = holder_of(&flock(libc::F_WRLCK, me as i32)).unwrap();
        assert_eq!(mine.mode, LockMode::Write);
        assert!(
            matches!(&mine.who, Holder::Process { pid, exe: Some(exe) } if *pid == me && *exe == std::env::current_exe().unwrap()),
            "{mine:?}"
        );
        assert_eq!(mine.to_string(), format!("this process, PID {me}"));
        let hidden = holder_of(&flock(libc::F_RDLCK, 0)).unwrap();
        assert_eq!(
            hidden.to_string(),
            "in another PID namespace, e.g. another container, read-only"
        );
        assert_eq!(
            holder_of(&flock(libc::F_WRLCK, -1)).unwrap().who,
            Holder::Unnamed
        );
        let other = LockHolder {
            who: Holder::Process {
                pid: 4242,
                exe: Some("/usr/bin/hitkeep".into()),
            },
            mode: LockMode::Write,
        };
        assert_eq!(other.to_string(), "/usr/bin/hitkeep (PID 4242)");
    }
}
