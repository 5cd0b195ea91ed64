//! The archive crate's error.

use std::path::PathBuf;

/// Archiving, listing, querying or restoring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    /// The ledger or an archive disagrees with the database; nothing was deleted.
    #[error("{0}")]
    Ledger(String),
    /// The rows a delete would remove are not the rows of the verified archive file: another connection
    /// (an embedding server's) rewrote, added or removed expired rows after the export. The delete was
    /// rolled back and nothing was deleted; `table` is the first table that differs.
    #[error(
        "{file}: site {site}: {not_archived} row(s) of {table} before the cutoff are not in this verified archive, and {gone} archived row(s) are no longer in the database; rolled back, nothing was deleted\n  hint: {hint}"
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
    /// `recover import-archives` cannot start: nothing was imported.
    #[error("{problem}\n  hint: {hint}")]
    Import {
        /// What is wrong.
        problem: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// Importing one archive file failed and its rows were rolled back; the files before it stay
    /// imported.
    #[error(
        "{key}: {source}\n  note: {before} earlier archive file(s) stay imported; running the command again imports the rest and skips their rows"
    )]
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
