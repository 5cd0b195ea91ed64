//! The data crate's error: which file, what went wrong with it, a [`kind`](DataError::kind) to
//! branch on and a [`hint`](DataError::hint) for a person. The message never holds the hint, so a
//! caller prints both where it wants them (the CLI: message, causes, then the hint last).

use std::path::{Path, PathBuf};

use crate::lock::{Holder, LockHolder, LockMode, lock_holder};

/// What kind of failure a [`DataError`] is, coarsely enough to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A database file does not exist.
    NotFound,
    /// Another process (usually the HitKeep server) holds the database file.
    InUse,
    /// A file this crate keeps holds something it cannot use (the installation's source id).
    Corrupt,
    /// A file is already where a new one was to be written; nothing was changed.
    Exists,
    /// A local file or folder operation failed.
    Io,
    /// DuckDB failed on a database.
    DuckDb,
}

/// Failures opening or reading HitKeep's databases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Another process (usually a running HitKeep server) has the file open.
    #[error(
        "{path} is in use by another process{}: DuckDB allows one writer per file",
        holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// Who holds the lock, as the kernel names it (DuckDB's own words when the kernel no longer
        /// sees it): `/usr/bin/hitkeep (PID 4242)`, or a process in another PID namespace.
        holder: Option<LockHolder>,
    },
    /// Whether another process holds the file could not be found out.
    #[error("{path}: cannot tell whether another process has it open: {source}")]
    LockCheck {
        /// The database file.
        path: PathBuf,
        /// Why the kernel could not be asked.
        #[source]
        source: std::io::Error,
    },
    /// The database file does not exist.
    #[error("{path} does not exist")]
    Missing {
        /// The database file.
        path: PathBuf,
    },
    /// The installation's source id file (`{data}/.hitkeep-source`) cannot be read or written.
    /// A file that holds no id is [`ErrorKind::Corrupt`] (its error is of kind `InvalidData`).
    #[error("{path}: {source}")]
    SourceFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: std::io::Error,
    },
    /// A job's staging folder (`{data}/.hitkeep-staging/{kind}-{run}`) could not be set up.
    #[error("{path}: {source}")]
    Staging {
        /// The folder or lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A database's folder could not be created, or its path cannot be given to DuckDB.
    #[error("{path}: {source}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Demo data is only written to new paths, and this one exists.
    #[error("{path} already exists; demo data is only written to new paths")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Any other DuckDB failure, with the file it concerned.
    #[error("{path}: {source}")]
    DuckDb {
        /// The database file.
        path: PathBuf,
        /// DuckDB's error.
        #[source]
        source: duckdb::Error,
    },
}

impl DataError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DataError::Locked { .. } => ErrorKind::InUse,
            DataError::Missing { .. } => ErrorKind::NotFound,
            DataError::SourceFile { source, .. }
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                ErrorKind::Corrupt
            }
            DataError::SourceFile { .. }
            | DataError::LockCheck { .. }
            | DataError::Staging { .. }
            | DataError::Io { .. } => ErrorKind::Io,
            DataError::Exists { .. } => ErrorKind::Exists,
            DataError::DuckDb { .. } => ErrorKind::DuckDb,
        }
    }

    /// What a person can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            DataError::Locked { .. } => {
                "stop the HitKeep server first, or let the server run the backups (set HITKEEP_BACKUP_PATH where it runs)"
            }
            DataError::LockCheck { .. } => "run this as a user who can read the file",
            DataError::Missing { .. } => {
                "check HITKEEP_DB_PATH / HITKEEP_DATA_PATH (run `hitkeep demo` to create demo data)"
            }
            DataError::SourceFile { .. } => {
                "this file holds the id that marks this installation's snapshots; if it is damaged, remove it and a new id is made on the next backup (older snapshots then count as another source's: restore them with `-source`)"
            }
            DataError::Staging { .. } => {
                "jobs stage their files under HITKEEP_DATA_PATH/.hitkeep-staging; check that this user can write there"
            }
            DataError::Exists { .. } => "choose another HITKEEP_DB_PATH / HITKEEP_DATA_PATH",
            DataError::Io { .. } | DataError::DuckDb { .. } => return None,
        };
        Some(hint.to_owned())
    }

    /// Wraps a DuckDB error about `path`, recognising lock conflicts. The holder is named by the
    /// kernel ([`lock_holder`]): DuckDB's own text says `PID 0` for a holder in another container.
    pub fn from_duckdb(path: &Path, source: duckdb::Error) -> Self {
        let text = source.to_string();
        if text.contains("Could not set lock") || text.contains("Conflicting lock") {
            let holder = match lock_holder(path) {
                Ok(Some(holder)) => Some(holder),
                // The holder let go in between, or the kernel cannot be asked: DuckDB's words.
                _ => holder_from_duckdb(&text),
            };
            return DataError::Locked {
                path: path.to_owned(),
                holder,
            };
        }
        DataError::DuckDb {
            path: path.to_owned(),
            source,
        }
    }

    /// A source id file that holds no id (empty, or not a UUID): [`ErrorKind::Corrupt`].
    pub(crate) fn source_corrupt(path: &Path, what: &'static str) -> Self {
        DataError::SourceFile {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
        }
    }
}

/// The holder in DuckDB's lock error: "… Conflicting lock is held in /usr/bin/hitkeep (PID 4242) by
/// user root. See also …", or "… held in PID 0. …" when DuckDB cannot see the holder either. The
/// program's path may itself hold parentheses (a replaced binary reads "… (deleted)").
fn holder_from_duckdb(text: &str) -> Option<LockHolder> {
    let (_, rest) = text.split_once("Conflicting lock is held in ")?;
    let at = match rest.find("(PID ") {
        Some(open) => open + 1,
        None => rest.find("PID ").filter(|&at| at == 0)?,
    };
    let digits: String = rest[at + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    let pid: i32 = digits.parse().ok()?;
    let exe = rest[..at]
        .strip_suffix('(')
        .map(|p| PathBuf::from(p.trim_end()));
    let who = match u32::try_from(pid) {
        Ok(0) => Holder::OtherNamespace,
        Ok(pid) => Holder::Process { pid, exe },
        Err(_) => Holder::Unnamed,
    };
    // DuckDB adds this when the holder only reads, i.e. a read-only open would succeed.
    let mode = if text.contains("would be able to open this database in read-only mode") {
        LockMode::Read
    } else {
        LockMode::Write
    };
    Some(LockHolder { who, mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_conflicts_name_the_holder() {
        let e = duckdb::Error::InvalidParameterName(
            "IO Error: Could not set lock on file \"/x/hitkeep.db\": Conflicting lock is held in /usr/bin/hitkeep (PID 4242). See also https://duckdb.org".into(),
        );
        let err = DataError::from_duckdb(Path::new("/x/hitkeep.db"), e);
        assert!(
            matches!(&err, DataError::Locked { holder: Some(h), .. } if h.to_string() == "/usr/bin/hitkeep (PID 4242)"),
            "{err:?}"
        );
        let replaced = duckdb::Error::InvalidParameterName(
            "IO Error: Could not set lock on file \"/x/hitkeep.db\": Conflicting lock is held in /usr/bin/hitkeep (deleted) (PID 7). See also https://duckdb.org".into(),
        );
        let err = DataError::from_duckdb(Path::new("/x/hitkeep.db"), replaced);
        assert!(
            matches!(&err, DataError::Locked { holder: Some(h), .. } if h.to_string() == "/usr/bin/hitkeep (deleted) (PID 7)"),
            "a replaced binary keeps its PID: {err:?}"
        );
        // DuckDB's words for a holder it cannot see either, and for a reader.
        let hidden = duckdb::Error::InvalidParameterName(
            "IO Error: Could not set lock on file \"/x/hitkeep.db\": Conflicting lock is held in PID 0. However, you would be able to open this database in read-only mode, e.g. by using the -readonly parameter in the CLI. See also https://duckdb.org".into(),
        );
        let err = DataError::from_duckdb(Path::new("/x/hitkeep.db"), hidden);
        assert!(
            matches!(
                &err,
                DataError::Locked {
                    holder: Some(LockHolder {
                        who: Holder::OtherNamespace,
                        mode: LockMode::Read
                    }),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("/x/hitkeep.db is in use by another process (in another PID namespace, e.g. another container, read-only): "),
            "{err}"
        );
    }

    /// The message is the message alone; what to do is the hint, and the kind says which failure
    /// it is without reading either.
    #[test]
    fn every_error_has_a_kind_and_the_hint_is_not_in_the_message() {
        let path = || PathBuf::from("/d/hitkeep.db");
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let cases = [
            (
                DataError::Locked {
                    path: path(),
                    holder: None,
                },
                ErrorKind::InUse,
                Some("stop the HitKeep server first"),
            ),
            (
                DataError::LockCheck {
                    path: path(),
                    source: io(),
                },
                ErrorKind::Io,
                Some("run this as a user who can read the file"),
            ),
            (
                DataError::Missing { path: path() },
                ErrorKind::NotFound,
                Some("HITKEEP_DB_PATH / HITKEEP_DATA_PATH"),
            ),
            (
                DataError::source_corrupt(&path(), "not a UUID"),
                ErrorKind::Corrupt,
                Some("remove it and a new id is made"),
            ),
            (
                DataError::SourceFile {
                    path: path(),
                    source: io(),
                },
                ErrorKind::Io,
                Some("remove it and a new id is made"),
            ),
            (
                DataError::Staging {
                    path: path(),
                    source: io(),
                },
                ErrorKind::Io,
                Some(".hitkeep-staging"),
            ),
            (
                DataError::Io {
                    path: path(),
                    source: io(),
                },
                ErrorKind::Io,
                None,
            ),
            (
                DataError::Exists { path: path() },
                ErrorKind::Exists,
                Some("choose another HITKEEP_DB_PATH"),
            ),
        ];
        for (err, kind, hint) in cases {
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(
                err.hint().is_some_and(|h| h.contains(hint.unwrap_or("-"))),
                hint.is_some(),
                "{err}: {:?}",
                err.hint()
            );
            let text = err.to_string();
            assert!(
                text.starts_with("/d/hitkeep.db") && !text.contains("hint") && !text.contains('\n'),
                "{text}"
            );
        }
        assert_eq!(
            DataError::source_corrupt(&path(), "not a UUID").to_string(),
            "/d/hitkeep.db: not a UUID",
            "the same text as before the id file's problems had a kind"
        );
    }
}
