//! The backup crate's error. Storage, DuckDB and file errors keep their own context (which object,
//! which file) and are wrapped, never flattened into strings, so callers can still branch on them.

use std::path::PathBuf;

use crate::manifest::{Database, ManifestError};

/// A backup, listing, verification or pruning failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Object storage failed. (Boxed, like the other large errors, to keep `Result` small.)
    #[error(transparent)]
    Storage(Box<hitkeep_storage::Error>),
    /// A database could not be opened.
    #[error(transparent)]
    Data(Box<hitkeep_data::DataError>),
    /// DuckDB failed on a database.
    #[error("{database}: {context}: {source}")]
    DuckDb {
        /// Which database.
        database: Database,
        /// What was being done.
        context: &'static str,
        /// DuckDB's error.
        #[source]
        source: duckdb::Error,
    },
    /// DuckDB ran out of the memory it was given (`HITKEEP_DUCKDB_MEMORY_LIMIT`). Only the first line
    /// of DuckDB's message is shown: the rest suggests SQL settings users cannot reach.
    #[error(
        "{database}: {context}: DuckDB ran out of memory ({})\n  hint: {hint}",
        first_line(&.source.to_string())
    )]
    OutOfMemory {
        /// Which database.
        database: Database,
        /// What was being done.
        context: &'static str,
        /// What the user can do about it.
        hint: &'static str,
        /// DuckDB's error (boxed: the hint would make every `Result` bigger).
        #[source]
        source: Box<duckdb::Error>,
    },
    /// A local file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another backup cycle holds the lock.
    #[error(
        "another backup cycle is running on this data (lock {0} is held); wait for it to finish"
    )]
    Busy(PathBuf),
    /// A manifest could not be used.
    #[error("{key}: {source}")]
    Manifest {
        /// The manifest's key.
        key: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// No snapshot matches.
    #[error("{0}")]
    NotFound(String),
    /// A whole restore of a split cycle (HitKeep 2.13) without its default tenant's snapshot: the shared
    /// database would say the analytics are in a file the restore does not bring back.
    #[error(
        "snapshot {snapshot}: the shared database is split (HitKeep 2.13) but the default tenant {tenant} has no usable snapshot in this cycle; restoring it would leave HitKeep unable to start (its split marker would point at a default tenant database that is {on_disk})\n  hint: restore an earlier cycle that has the default tenant (see `hitkeep backup list`), or pass -shared-only to restore the shared database alone and keep the default tenant database on disk"
    )]
    SplitWithoutDefault {
        /// The cycle.
        snapshot: crate::SnapshotId,
        /// The default tenant.
        tenant: uuid::Uuid,
        /// What is at the default tenant's path now: "missing" or "not from this snapshot".
        on_disk: &'static str,
    },
    /// A snapshot's `schema.sql` or `load.sql` holds something `EXPORT DATABASE` never writes: a
    /// snapshot is data, and one that would run code is refused before anything is imported.
    #[error(
        "snapshot {snapshot}: {file} holds a statement EXPORT DATABASE never writes: `{statement}` ({why}); refusing to import it\n  hint: the snapshot was changed after it was written; restore another snapshot (`hitkeep backup list`)"
    )]
    ForeignStatement {
        /// The snapshot's folder, e.g. `shared/2026-01-01T000000Z`.
        snapshot: String,
        /// `schema.sql` or `load.sql`.
        file: &'static str,
        /// The statement, shortened to one line.
        statement: String,
        /// What is wrong with it.
        why: String,
    },
    /// A recovery bundle's `manifest.json` cannot be used; nothing was changed.
    #[error(
        "{path}: {problem}\n  hint: -from must name a bundle directory as HitKeep writes them under {{data-path}}/recovery/ (manifest.json of version 1, database.zst, optionally wal.zst)"
    )]
    BundleManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A recovery bundle's artifact does not decompress to what its manifest records; nothing was changed.
    #[error(
        "{path}: {problem}\n  hint: the bundle is damaged or incomplete; use another bundle under {{data-path}}/recovery/, or restore a snapshot with `hitkeep recover restore-backup`"
    )]
    BundleArtifact {
        /// The artifact file (`database.zst` or `wal.zst`).
        path: PathBuf,
        /// What differs.
        problem: String,
    },
    /// This machine's clock is not past the newest cycle: a new snapshot would sort before it, so
    /// "latest" would not be the newest data. Nothing was written.
    #[error(
        "this machine's clock ({now}) is not past the newest snapshot in the destination ({newest}, {ahead} ahead): a cycle now would sort before it\n  hint: check this machine's clock (`timedatectl`, NTP); if it is right and {newest} was written by a clock set ahead, cycles run again by themselves once the clock passes {newest}, and `hitkeep backup list` marks it as in the future"
    )]
    ClockBehind {
        /// The newest committed cycle of this source.
        newest: crate::SnapshotId,
        /// The id this cycle would have had.
        now: crate::SnapshotId,
        /// How far ahead the newest one is, for a person.
        ahead: String,
    },
    /// Another writer took over this cycle's snapshot id while it ran (a service that ignores
    /// conditional writes); the cycle was not committed.
    #[error(
        "snapshot {snapshot}: another writer ({other}) took over this snapshot id while this cycle ran; not committing it, so no manifest lists objects another cycle may have replaced\n  hint: two installations back up to the same destination at the same moment; give each its own HITKEEP_BACKUP_PATH (see `hitkeep backup list`, column SOURCE)"
    )]
    ClaimLost {
        /// The cycle.
        snapshot: crate::SnapshotId,
        /// Who holds the marker now.
        other: String,
    },
    /// "latest" is ambiguous: several installations back up to this destination.
    #[error(
        "this destination holds backups of {} installations:\n{}\n  hint: choose one with -source ID (or restore one snapshot by id with -snapshot)",
        .0.len(),
        .0.iter().map(|s| format!("  - {}", s.describe())).collect::<Vec<_>>().join("\n")
    )]
    SeveralSources(Vec<crate::claim::SourceRecord>),
    /// A worker task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<hitkeep_storage::Error> for Error {
    fn from(e: hitkeep_storage::Error) -> Self {
        Error::Storage(Box::new(e))
    }
}

impl From<hitkeep_data::DataError> for Error {
    fn from(e: hitkeep_data::DataError) -> Self {
        Error::Data(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn duckdb(database: Database, context: &'static str, source: duckdb::Error) -> Self {
        Error::DuckDb {
            database,
            context,
            source,
        }
    }

    /// [`Error::duckdb`], or [`Error::OutOfMemory`] with `hint` when DuckDB ran out of memory.
    pub(crate) fn duckdb_or_memory(
        database: Database,
        context: &'static str,
        hint: &'static str,
        source: duckdb::Error,
    ) -> Self {
        if is_out_of_memory(&source) {
            Error::OutOfMemory {
                database,
                context,
                hint,
                source: Box::new(source),
            }
        } else {
            Error::duckdb(database, context, source)
        }
    }
}

/// Whether DuckDB failed for want of memory: its out-of-memory errors, also when rewrapped as a
/// transaction or I/O error at commit, which drops the "Out of Memory" prefix. duckdb-rs gives no
/// distinct code, so this reads the text: the buffer manager's phrases, and the "(63.9 MiB/64.0 MiB
/// used)" every one of them ends with.
fn is_out_of_memory(e: &duckdb::Error) -> bool {
    let text = e.to_string();
    [
        "Out of Memory",
        "failed to pin block",
        "could not allocate block",
        "failed to allocate data",
        "failed to reserve memory",
        "failed to offload data block",
        "iB used)",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The backup crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(text: &str) -> duckdb::Error {
        duckdb::Error::DuckDBFailure(duckdb::ffi::Error::new(1), Some(text.to_owned()))
    }

    #[test]
    fn out_of_memory_is_recognised_also_when_rewrapped_at_commit() {
        for text in [
            "Out of Memory Error: could not allocate block of size 256.0 KiB (1.0 GiB/1.0 GiB used)",
            "TransactionContext Error: Failed to commit: failed to pin block of size 256.0 KiB (511.8 MiB/512.0 MiB used)",
            "TransactionContext Error: Failed to commit: failed to allocate data of size 64.0 KiB (63.9 MiB/64.0 MiB used)",
        ] {
            assert!(is_out_of_memory(&failure(text)), "{text}");
        }
        for text in [
            "Catalog Error: Table with name hits does not exist!",
            "IO Error: No space left on device",
        ] {
            assert!(!is_out_of_memory(&failure(text)), "{text}");
        }
    }
}
