//! The archive crate's error: every failure has a [`kind`](Error::kind) to branch on and, where
//! there is advice, a [`hint`](Error::hint). The message never holds the hint, so a caller prints
//! both where it wants them (the CLI: message, causes, then the hint last).

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What kind of failure an [`Error`] is, coarsely enough to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// What was asked for does not exist: archive files for a selection, a tenant's database, the
    /// default tenant, an object.
    NotFound,
    /// Another process (usually the HitKeep server) holds a database file.
    InUse,
    /// An archive file did not read back as written; it was removed and nothing was deleted.
    Integrity,
    /// A ledger, or a file in the archive location, cannot be read as what it should be.
    Corrupt,
    /// Written by a newer hitkeep (a ledger format).
    Unsupported,
    /// Another connection changed the rows being archived; the delete was rolled back and the next
    /// run archives them afresh.
    Conflict,
    /// Object storage failed: unreachable, refused, timed out.
    Storage,
    /// DuckDB failed.
    DuckDb,
    /// A local file operation failed.
    Io,
    /// A check that cannot fail did: a bug. Nothing was deleted.
    Internal,
    /// A sealed (encrypted) archive file needs an identity that was not given, or a recipient's.
    Refused,
}

/// Archiving, listing, querying or restoring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A sealed archive file did not open.
    #[error("{key}: {}", match failure {
        hitkeep_seal::OpenFailure::NoIdentity => "the archive file is encrypted and no identity was given",
        hitkeep_seal::OpenFailure::WrongIdentity => "none of the identities given opens this encrypted archive file",
        hitkeep_seal::OpenFailure::Unwritable => "its plaintext could not be written to local disk",
        _ => "the encrypted archive file is damaged or was replaced (it fails authentication)",
    })]
    Sealed {
        /// The object.
        key: String,
        /// Why.
        failure: hitkeep_seal::OpenFailure,
    },
    /// Object storage failed.
    #[error(transparent)]
    Storage(Box<hitkeep_storage::Error>),
    /// A database could not be opened.
    #[error(transparent)]
    Data(Box<hitkeep_data::DataError>),
    /// DuckDB failed.
    #[error("{context}: {source}")]
    DuckDb {
        /// What was being done.
        context: &'static str,
        /// DuckDB's error.
        #[source]
        source: duckdb::Error,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A site's ledger cannot be read; nothing was deleted.
    #[error("{key}: {why}")]
    LedgerCorrupt {
        /// The ledger's key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A site's ledger was written by a newer hitkeep; nothing was changed.
    #[error("{key}: ledger format {version} is newer than this hitkeep")]
    LedgerTooNew {
        /// The ledger's key.
        key: String,
        /// Its format version.
        version: u32,
    },
    /// The archive holds no files for what was asked (a site, a time range).
    #[error("the archive holds no files for this selection")]
    NothingArchived,
    /// An archive file did not read back with the rows that were exported; the object was removed
    /// and nothing was deleted.
    #[error(
        "{key}: read back {found:?}, expected {expected:?}; the object was removed and nothing deleted"
    )]
    ReadBackMismatch {
        /// The archive object.
        key: String,
        /// Rows per table in the file as read back.
        found: BTreeMap<String, u64>,
        /// Rows per table that were exported.
        expected: BTreeMap<String, u64>,
    },
    /// An archive object read back with other bytes than were uploaded (damaged on the way or at the
    /// provider); the object was removed and nothing was deleted.
    #[error(
        "{key}: read back with other bytes than were uploaded; the object was removed and nothing deleted"
    )]
    ReadBackDiffers {
        /// The archive object.
        key: String,
    },
    /// An archive object no longer holds the bytes its ledger entry recorded when it was archived
    /// (size or SHA-256): changed or damaged at rest. Nothing was read from it.
    #[error(
        "{key}: holds other bytes than were archived (its size or SHA-256 differs from its ledger entry); nothing was read from it"
    )]
    ArchiveChanged {
        /// The archive object.
        key: String,
    },
    /// A delete would remove a different number of rows than were compared with the archive, in
    /// the same snapshot: a bug, not a race. Rolled back.
    #[error(
        "{table}: deleting would remove {deleting} rows but {compared} were compared with the archive; rolled back"
    )]
    DeleteCountMismatch {
        /// The table.
        table: &'static str,
        /// Rows the delete matched.
        deleting: u64,
        /// Rows compared with the archive.
        compared: u64,
    },
    /// The rows a delete would remove are not the rows of the verified archive file: another connection
    /// (an embedding server's) rewrote, added or removed expired rows after the export. The delete was
    /// rolled back and nothing was deleted; `table` is the first table that differs.
    #[error(
        "{file}: site {site}: {not_archived} row(s) of {table} before the cutoff are not in this verified archive, and {gone} archived row(s) are no longer in the database; rolled back, nothing was deleted"
    )]
    RowsChanged {
        /// The site.
        site: uuid::Uuid,
        /// The table.
        table: String,
        /// Live rows before the cutoff that the file does not hold.
        not_archived: u64,
        /// Rows of the file that are no longer in the database.
        gone: u64,
        /// The archive object.
        file: String,
        /// What happens next, or what to do.
        hint: &'static str,
    },
    /// `recover import-archives` without a tenant, and the shared database names no default tenant:
    /// nothing was imported.
    #[error("{} has no default tenant (no tenants row with is_default = TRUE)", .db.display())]
    NoDefaultTenant {
        /// The shared database.
        db: PathBuf,
    },
    /// `recover import-archives` into a tenant whose database does not exist: nothing was imported.
    #[error(
        "tenant {tenant} has no database at {}; import-archives never creates one",
        .path.display()
    )]
    NoTenantDatabase {
        /// The tenant.
        tenant: uuid::Uuid,
        /// Where its database would be.
        path: PathBuf,
    },
    /// A file in the archive location is not a HitKeep retention archive.
    #[error("no _source column: not a HitKeep retention archive")]
    NotAnArchive,
    /// Importing one archive file failed and its rows were rolled back; the files before it stay
    /// imported.
    #[error("{key}: {source}")]
    ImportFile {
        /// The archive object.
        key: String,
        /// Files imported before it.
        before: usize,
        /// Why.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    pub(crate) fn duckdb(context: &'static str, source: duckdb::Error) -> Self {
        Error::DuckDb { context, source }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// What kind of failure this is. A wrapped storage or data error has the kind its own kind maps
    /// to; a failed archive file's import, the kind of why it failed.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Storage(e) => from_storage(e.kind()),
            Error::Data(e) => from_data(e.kind()),
            Error::DuckDb { .. } => ErrorKind::DuckDb,
            Error::Io { .. } => ErrorKind::Io,
            Error::LedgerCorrupt { .. } | Error::NotAnArchive => ErrorKind::Corrupt,
            Error::LedgerTooNew { .. } => ErrorKind::Unsupported,
            Error::NothingArchived
            | Error::NoDefaultTenant { .. }
            | Error::NoTenantDatabase { .. } => ErrorKind::NotFound,
            Error::ReadBackMismatch { .. }
            | Error::ReadBackDiffers { .. }
            | Error::ArchiveChanged { .. } => ErrorKind::Integrity,
            Error::DeleteCountMismatch { .. } => ErrorKind::Internal,
            Error::RowsChanged { .. } => ErrorKind::Conflict,
            Error::ImportFile { source, .. } => source.kind(),
            Error::Sealed { failure, .. } => match failure {
                hitkeep_seal::OpenFailure::Unwritable => ErrorKind::Io,
                hitkeep_seal::OpenFailure::Damaged => ErrorKind::Integrity,
                _ => ErrorKind::Refused,
            },
        }
    }

    /// What a person can do about it, when there is something to say; a wrapped storage or data
    /// error's own hint is passed through.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Error::Storage(e) => return e.hint().map(str::to_owned),
            Error::Data(e) => return e.hint(),
            Error::RowsChanged { hint, .. } => *hint,
            Error::LedgerTooNew { .. } => "upgrade hitkeep",
            Error::NothingArchived => "`hitkeep archive list` shows what the archive holds",
            Error::NoDefaultTenant { .. } => "name the tenant to import into with -tenant UUID",
            Error::NoTenantDatabase { .. } => {
                "restore it first (`hitkeep recover restore-backup -tenant UUID`), or start HitKeep once so that it creates the tenant's database"
            }
            Error::NotAnArchive => "move files that are not archives out of the archive location",
            Error::ReadBackDiffers { .. } => {
                "the storage, or the network on the way to or from it, changed the object: the next run tries again; if it happens again, check the storage (and, on S3, that HITKEEP_S3_CHECKSUM is not off)"
            }
            Error::ArchiveChanged { .. } => {
                "put the object back from a copy (an earlier version on a versioned bucket, a replica); `hitkeep archive list` shows which runs it holds. With no copy, deleting the entry's `stored` record from its ledger has it read as it is, damage and all"
            }
            Error::Sealed { failure, .. } => match failure {
                hitkeep_seal::OpenFailure::Unwritable => {
                    "check the free space and permissions of the local folder it was opened into"
                }
                hitkeep_seal::OpenFailure::Damaged => {
                    "restore the file from a copy; `hitkeep archive list` shows which runs it holds"
                }
                _ => {
                    "set HITKEEP_BACKUP_IDENTITY_FILE to an identity of the recipients it was sealed to; on the host that archived it, its {data}/.hitkeep-archive-key opens it too (if that key was replaced, only the identity does)"
                }
            },
            Error::ImportFile { before, source, .. } => {
                let rest = format!(
                    "{before} earlier archive file(s) stay imported; running the command again imports the rest and skips their rows"
                );
                return Some(match source.hint() {
                    Some(first) => format!("{first}; {rest}"),
                    None => rest,
                });
            }
            Error::DuckDb { .. }
            | Error::Io { .. }
            | Error::LedgerCorrupt { .. }
            | Error::ReadBackMismatch { .. }
            | Error::DeleteCountMismatch { .. } => return None,
        };
        Some(hint.to_owned())
    }
}

fn from_storage(kind: hitkeep_storage::ErrorKind) -> ErrorKind {
    use hitkeep_storage::ErrorKind as S;
    match kind {
        S::NotFound => ErrorKind::NotFound,
        S::Integrity => ErrorKind::Integrity,
        S::LocalIo => ErrorKind::Io,
        _ => ErrorKind::Storage,
    }
}

fn from_data(kind: hitkeep_data::ErrorKind) -> ErrorKind {
    use hitkeep_data::ErrorKind as D;
    match kind {
        D::NotFound => ErrorKind::NotFound,
        D::InUse => ErrorKind::InUse,
        D::Corrupt => ErrorKind::Corrupt,
        D::DuckDb => ErrorKind::DuckDb,
        _ => ErrorKind::Io,
    }
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

/// The archive crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// What took the place of the catch-all `Ledger(String)` and of `Import { problem, hint }`: each
    /// situation its own variant, the message as before without its advice, and a kind.
    #[test]
    fn each_failure_has_its_kind_and_the_advice_is_the_hint() {
        let site = uuid::Uuid::from_u128(7);
        let counts = |n| BTreeMap::from([("hits".to_owned(), n)]);
        let cases: Vec<(Error, ErrorKind, &str, Option<&str>)> = vec![
            (
                Error::LedgerCorrupt {
                    key: "t/s/ledger.json".into(),
                    why: "bad cutoff \"x\"".into(),
                },
                ErrorKind::Corrupt,
                "t/s/ledger.json: bad cutoff \"x\"",
                None,
            ),
            (
                Error::LedgerTooNew {
                    key: "t/s/ledger.json".into(),
                    version: 9,
                },
                ErrorKind::Unsupported,
                "t/s/ledger.json: ledger format 9 is newer than this hitkeep",
                Some("upgrade hitkeep"),
            ),
            (
                Error::NothingArchived,
                ErrorKind::NotFound,
                "the archive holds no files for this selection",
                Some("hitkeep archive list"),
            ),
            (
                Error::ReadBackMismatch {
                    key: "t/s/site_1.parquet".into(),
                    found: counts(1),
                    expected: counts(2),
                },
                ErrorKind::Integrity,
                "t/s/site_1.parquet: read back {\"hits\": 1}, expected {\"hits\": 2}; the object was removed and nothing deleted",
                None,
            ),
            (
                Error::ReadBackDiffers {
                    key: "t/s/site_1.hits.parquet".into(),
                },
                ErrorKind::Integrity,
                "t/s/site_1.hits.parquet: read back with other bytes than were uploaded; the object was removed and nothing deleted",
                Some(
                    "the storage, or the network on the way to or from it, changed the object: the next run tries again; if it happens again, check the storage (and, on S3, that HITKEEP_S3_CHECKSUM is not off)",
                ),
            ),
            (
                Error::ArchiveChanged {
                    key: "t/s/site_1.hits.parquet".into(),
                },
                ErrorKind::Integrity,
                "t/s/site_1.hits.parquet: holds other bytes than were archived (its size or SHA-256 differs from its ledger entry); nothing was read from it",
                Some("hitkeep archive list"),
            ),
            (
                Error::DeleteCountMismatch {
                    table: "hits",
                    deleting: 3,
                    compared: 2,
                },
                ErrorKind::Internal,
                "hits: deleting would remove 3 rows but 2 were compared with the archive; rolled back",
                None,
            ),
            (
                Error::RowsChanged {
                    site,
                    table: "hits".into(),
                    not_archived: 1,
                    gone: 0,
                    file: "t/s/site_1.parquet".into(),
                    hint: "the next run archives them",
                },
                ErrorKind::Conflict,
                "t/s/site_1.parquet: site 00000000-0000-0000-0000-000000000007: 1 row(s) of hits before the cutoff are not in this verified archive, and 0 archived row(s) are no longer in the database; rolled back, nothing was deleted",
                Some("the next run archives them"),
            ),
            (
                Error::NoDefaultTenant {
                    db: "/d/hitkeep.db".into(),
                },
                ErrorKind::NotFound,
                "/d/hitkeep.db has no default tenant (no tenants row with is_default = TRUE)",
                Some("-tenant UUID"),
            ),
            (
                Error::NoTenantDatabase {
                    tenant: site,
                    path: "/d/t/hitkeep.db".into(),
                },
                ErrorKind::NotFound,
                "tenant 00000000-0000-0000-0000-000000000007 has no database at /d/t/hitkeep.db; import-archives never creates one",
                Some("restore it first"),
            ),
            (
                Error::NotAnArchive,
                ErrorKind::Corrupt,
                "no _source column: not a HitKeep retention archive",
                Some("move files that are not archives"),
            ),
        ];
        hitkeep_testkit::assert_error_contract(cases, Error::kind, Error::hint);
    }

    /// A failed file's import has the kind of why it failed, and its hint says what to do about that
    /// and what became of the files before it.
    #[test]
    fn a_failed_files_import_adds_what_stays_imported_to_the_hint() {
        let err = Error::ImportFile {
            key: "t/s/site_2.parquet".into(),
            before: 1,
            source: Box::new(Error::NotAnArchive),
        };
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert_eq!(
            err.to_string(),
            "t/s/site_2.parquet: no _source column: not a HitKeep retention archive"
        );
        assert_eq!(
            err.hint().as_deref(),
            Some(
                "move files that are not archives out of the archive location; 1 earlier archive file(s) stay imported; running the command again imports the rest and skips their rows"
            )
        );
        let storage = Error::from(hitkeep_storage::Error::integrity("t/s/site_2.parquet"));
        assert_eq!(storage.kind(), ErrorKind::Integrity);
        let in_file = Error::ImportFile {
            key: "t/s/site_2.parquet".into(),
            before: 0,
            source: Box::new(storage),
        };
        let hint = in_file.hint().unwrap();
        assert!(
            hint.starts_with("the storage service returns different data"),
            "{hint}"
        );
        let shown = hitkeep_storage::report::render(&in_file, Some(&hint));
        assert_eq!(shown.matches("hint: ").count(), 1, "{shown}");
    }
}
