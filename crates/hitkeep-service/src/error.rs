//! The service's error: the libraries' errors, kept whole, plus the few failures of its own, each
//! with a [`kind`](Error::kind) that callers branch on and a [`hint`](Error::hint) that says what to do.

/// What kind of failure, for a caller that decides what to do (an exit code, a retry, a health state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting is missing or does not fit the command: the operator must change the configuration.
    Config,
    /// Something asked for does not exist: a snapshot, a site, an archive.
    NotFound,
    /// Another process holds what the job needs: a database file, the cycle lock.
    InUse,
    /// Stored data failed a check: a digest, a manifest, a count.
    Integrity,
    /// Storage failed: unreachable, refused, timed out.
    Storage,
    /// DuckDB or the local file system failed.
    Local,
    /// The job was stopped by a shutdown before it finished; nothing half-written remains.
    Interrupted,
    /// Anything else.
    Other,
}

/// A job or operation of the service failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting the operation needs is not set.
    #[error("{what}: {setting} is not set")]
    NotConfigured {
        /// What needs it, e.g. "backups are disabled".
        what: &'static str,
        /// The variable, e.g. `HITKEEP_BACKUP_PATH`.
        setting: &'static str,
        /// How to set it.
        hint: &'static str,
    },
    /// A setting does not fit the operation.
    #[error("{message}")]
    Unsuitable {
        /// What is wrong, naming the setting.
        message: String,
        /// How to fix it, when there is something to do.
        hint: Option<String>,
    },
    /// The job was stopped by a shutdown.
    #[error("{job} stopped by shutdown before it finished; {state}")]
    Interrupted {
        /// The job.
        job: &'static str,
        /// What is left behind, e.g. "the snapshot lists as incomplete and the next cycle removes it".
        state: &'static str,
    },
    /// A job panicked (a bug); the scheduler goes on with the next run.
    #[error("the {job} job panicked: {why}")]
    Panicked {
        /// The job.
        job: &'static str,
        /// The panic's message.
        why: String,
    },
    /// A local file the service keeps (status, lock) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// DuckDB failed on a connection of the service's own (`archive query`'s in-memory database),
    /// often on the caller's SQL.
    #[error("{what}")]
    DuckDb {
        /// What was being done, e.g. "the query".
        what: &'static str,
        /// DuckDB's error.
        #[source]
        source: duckdb::Error,
    },
    /// A storage failure.
    #[error(transparent)]
    Storage(#[from] hitkeep_storage::Error),
    /// A backup, restore or verify failure.
    #[error(transparent)]
    Backup(#[from] hitkeep_backup::Error),
    /// An archive failure.
    #[error(transparent)]
    Archive(#[from] hitkeep_archive::Error),
    /// A database could not be opened or read.
    #[error(transparent)]
    Data(#[from] hitkeep_data::DataError),
}

/// The service's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A backup error's kind as the service sorts it. A snapshot id that does not parse is the
/// operator's to fix (a usage error); a refusal (a clock behind, several sources, a split cycle
/// without its default tenant) is a failed run, not a usage error.
fn from_backup(kind: hitkeep_backup::ErrorKind) -> ErrorKind {
    use hitkeep_backup::ErrorKind as B;
    match kind {
        B::NotFound => ErrorKind::NotFound,
        B::InUse => ErrorKind::InUse,
        B::Integrity | B::Corrupt | B::Foreign => ErrorKind::Integrity,
        B::InvalidInput => ErrorKind::Config,
        B::Storage => ErrorKind::Storage,
        B::DuckDb | B::OutOfMemory | B::Io => ErrorKind::Local,
        _ => ErrorKind::Other,
    }
}

/// An archive error's kind as the service sorts it.
fn from_archive(kind: hitkeep_archive::ErrorKind) -> ErrorKind {
    use hitkeep_archive::ErrorKind as A;
    match kind {
        A::NotFound => ErrorKind::NotFound,
        A::InUse => ErrorKind::InUse,
        A::Integrity | A::Corrupt => ErrorKind::Integrity,
        A::Storage => ErrorKind::Storage,
        A::DuckDb | A::Io => ErrorKind::Local,
        _ => ErrorKind::Other,
    }
}

/// A data error's kind as the service sorts it.
fn from_data(kind: hitkeep_data::ErrorKind) -> ErrorKind {
    use hitkeep_data::ErrorKind as D;
    match kind {
        D::NotFound => ErrorKind::NotFound,
        D::InUse => ErrorKind::InUse,
        D::Corrupt => ErrorKind::Integrity,
        D::DuckDb | D::Io => ErrorKind::Local,
        _ => ErrorKind::Other,
    }
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use hitkeep_storage::ErrorKind as S;
        match self {
            Error::NotConfigured { .. } | Error::Unsuitable { .. } => ErrorKind::Config,
            Error::Interrupted { .. } => ErrorKind::Interrupted,
            Error::Panicked { .. } => ErrorKind::Other,
            Error::Io { .. } | Error::DuckDb { .. } => ErrorKind::Local,
            Error::Storage(e) => match e.kind() {
                S::NotFound => ErrorKind::NotFound,
                S::Integrity => ErrorKind::Integrity,
                S::LocalIo => ErrorKind::Local,
                _ => ErrorKind::Storage,
            },
            // The libraries' own kinds, mapped below.
            Error::Backup(e) => from_backup(e.kind()),
            Error::Archive(e) => from_archive(e.kind()),
            Error::Data(e) => from_data(e.kind()),
        }
    }

    /// What to do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::NotConfigured { hint, .. } => Some((*hint).to_owned()),
            Error::Unsuitable { hint, .. } => hint.clone(),
            Error::Panicked { .. } => {
                Some("this is a bug in hitkeep; please report it with the log".to_owned())
            }
            Error::Interrupted { .. } | Error::Io { .. } | Error::DuckDb { .. } => None,
            Error::Storage(e) => e.hint().map(str::to_owned),
            // Passed through: a transparent variant's `source()` skips the library error itself,
            // so a printer walking the chain would not find its hint.
            Error::Backup(e) => e.hint(),
            Error::Archive(e) => e.hint(),
            Error::Data(e) => e.hint(),
        }
    }

    /// One line for records that outlive the run (the status file, HitKeep's status JSON, a failure
    /// notification): the message with its causes, then the hint, if the message does not hold it.
    pub fn summary(&self) -> String {
        let text = crate::describe(self);
        match self.hint() {
            Some(hint) if !text.contains(&hint) => format!("{text} (hint: {hint})"),
            _ => text,
        }
    }

    /// The usage error for a missing backup location.
    pub fn backups_disabled() -> Self {
        Error::NotConfigured {
            what: "backups are disabled",
            setting: "HITKEEP_BACKUP_PATH (--backup-path)",
            hint: "set it to a directory or s3://bucket/prefix, e.g. HITKEEP_BACKUP_PATH=/var/lib/hitkeep/backups",
        }
    }
}
