//! The backup crate's error. Storage, DuckDB and file errors keep their own context (which object,
//! which file) and are wrapped, never flattened into strings, so callers can still branch on them.
//! Every error has a [`kind`](Error::kind) to branch on and, where there is advice, a
//! [`hint`](Error::hint); the message never holds the hint, so a caller prints both where it wants
//! them (the CLI: message, causes, then the hint last).

use std::fmt;
use std::path::PathBuf;

use crate::catalog::SnapshotState;
use crate::manifest::{Database, ManifestError};
use crate::snapshot_id::{SnapshotId, SnapshotIdError};

/// What kind of failure an [`Error`] is, coarsely enough to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// What was asked for does not exist: a snapshot, a tenant's snapshot, an object, a database.
    NotFound,
    /// Another process holds what is needed: the cycle lock, a database file.
    InUse,
    /// Stored data does not match what was recorded of it: a digest, a row count, a cycle's list of
    /// tenants, a bundle's artifact.
    Integrity,
    /// Stored data cannot be read as what it should be: a manifest, a recovery bundle's manifest.
    Corrupt,
    /// Written by a newer hitkeep (a manifest format).
    Unsupported,
    /// A snapshot holds SQL that `EXPORT DATABASE` never writes; refused before anything ran.
    Foreign,
    /// Doing it would leave HitKeep broken, or what was meant is ambiguous; nothing was changed.
    Refused,
    /// This machine's clock is not past the newest snapshot; nothing was written.
    Clock,
    /// Another writer took over this cycle's snapshot id; the cycle was not committed.
    Conflict,
    /// Input that does not parse (a snapshot id).
    InvalidInput,
    /// Object storage failed: unreachable, refused, timed out, or it did not do what it said.
    Storage,
    /// DuckDB failed on a database.
    DuckDb,
    /// DuckDB ran out of the memory it was given (`HITKEEP_DUCKDB_MEMORY_LIMIT`).
    OutOfMemory,
    /// A local file or directory operation failed.
    Io,
    /// A worker task died: a bug.
    Internal,
}

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
        "{database}: {context}: DuckDB ran out of memory ({})",
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
    /// Building a restored table's key or index failed after its data loaded: a key the snapshot's
    /// rows violate (`Constraint Error`), or another DuckDB failure.
    #[error("{database}: building the key and indexes of table {table}: {source}")]
    TableBuild {
        /// Which database.
        database: Database,
        /// The table, as the snapshot's schema names it.
        table: String,
        /// DuckDB's error.
        #[source]
        source: duckdb::Error,
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
    #[error("another backup cycle is running on this data (lock {0} is held)")]
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
    /// A tenant's `manifest.json` is not the one its cycle recorded: it was changed after the cycle.
    #[error(
        "{key}: SHA-256 {actual} differs from {expected} recorded by the cycle; the tenant snapshot was altered"
    )]
    ManifestAltered {
        /// The manifest's key.
        key: String,
        /// Its SHA-256 now.
        actual: String,
        /// The SHA-256 the shared manifest recorded.
        expected: String,
    },
    /// Not a snapshot id.
    #[error(transparent)]
    InvalidSnapshotId(#[from] SnapshotIdError),
    /// No shared snapshot has this id.
    #[error("{}", snapshot_not_found(.id, .newest))]
    SnapshotNotFound {
        /// The id asked for.
        id: SnapshotId,
        /// The newest snapshots the location does hold, newest first (at most five).
        newest: Vec<SnapshotId>,
    },
    /// The location holds no complete snapshot ("latest" was asked for).
    #[error("no complete snapshot in this location")]
    NoCompleteSnapshot,
    /// The shared snapshot is not complete, so there is no manifest to verify it against.
    #[error("shared snapshot {id} is {state:?}: only complete snapshots can be verified")]
    NotVerifiable {
        /// The snapshot.
        id: SnapshotId,
        /// How far it got.
        state: SnapshotState,
    },
    /// The snapshot asked for is not a usable backup (incomplete or corrupt).
    #[error("snapshot {id} is {state:?}, not a usable backup")]
    SnapshotUnusable {
        /// The snapshot.
        id: SnapshotId,
        /// How far it got.
        state: SnapshotState,
    },
    /// The shared manifest lists a tenant as complete, but its snapshot is missing or unfinished.
    #[error(
        "the cycle {snapshot} lists tenant {tenant} as complete, but its snapshot is missing or unfinished"
    )]
    TenantSnapshotMissing {
        /// The cycle.
        snapshot: SnapshotId,
        /// The tenant.
        tenant: uuid::Uuid,
    },
    /// A tenant asked for has no usable snapshot in this cycle.
    #[error("tenant {tenant} has no usable snapshot {snapshot}")]
    NoTenantSnapshot {
        /// The cycle.
        snapshot: SnapshotId,
        /// The tenant.
        tenant: uuid::Uuid,
    },
    /// The selection leaves no database to restore.
    #[error("nothing to restore from snapshot {snapshot}")]
    NothingToRestore {
        /// The cycle.
        snapshot: SnapshotId,
    },
    /// The import left a WAL beside the restored database: it would be replayed on the next open.
    #[error(
        "the restored database left a WAL file {path}; aborting rather than keep a partly replayable state"
    )]
    WalLeft {
        /// The WAL file.
        path: PathBuf,
    },
    /// The restored tables do not hold the rows the manifest counted.
    #[error(
        "row counts differ from the manifest: {}",
        .tables.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    RowCountsDiffer {
        /// Each table whose count differs.
        tables: Vec<CountMismatch>,
    },
    /// Objects of a pruned snapshot are still listed after they were deleted.
    #[error(
        "{folder}: {left} object(s) still listed after deleting; the storage did not delete them"
    )]
    NotDeleted {
        /// The snapshot's folder.
        folder: String,
        /// How many objects are still listed.
        left: usize,
    },
    /// A manifest in the location cannot be read, so the pool objects it names cannot be told from
    /// unused ones: the pool was not swept.
    #[error(
        "the pool was not swept: the manifest of {folder} cannot be read ({why}), and the objects it names must not be taken for unused ones"
    )]
    PoolNotSwept {
        /// The snapshot's folder.
        folder: String,
        /// Why it cannot be read.
        why: String,
    },
    /// The storage gave no modification time to the object a sweep wrote: ages cannot be told.
    #[error(
        "the pool was not swept: the storage reported no modification time for {key}, so the age of unused objects cannot be told"
    )]
    NoStorageClock {
        /// The object written.
        key: String,
    },
    /// A pool object a snapshot is about to name is gone: removed while the cycle ran.
    #[error(
        "{object}, which the snapshot of {database} names, is no longer in the pool (or not at the size recorded); the snapshot was not committed"
    )]
    PoolObjectMissing {
        /// The database.
        database: Database,
        /// The object's key.
        object: String,
    },
    /// `HITKEEP_BACKUP_OBJECT_LOCK_DAYS` asks for S3 Object Lock and the bucket has none (or the
    /// store does not implement it).
    #[error(
        "{location} has no S3 Object Lock, which HITKEEP_BACKUP_OBJECT_LOCK_DAYS asks for; nothing was backed up"
    )]
    ObjectLockOff {
        /// The backup location.
        location: String,
    },
    /// The host's index key (encrypted incremental cycles) cannot be read or made; the message says
    /// what to do.
    #[error("{0}")]
    IndexKey(String),
    /// A tenant's key file (or the host's record of a tenant key) is forgotten, missing, or not
    /// what the snapshot needs.
    #[error("the tenant key {object} {why}")]
    TenantKey {
        /// The key file (or the local record).
        object: String,
        /// What is wrong with it.
        why: String,
        /// When it was forgotten, when it was.
        forgotten_at: Option<jiff::Timestamp>,
    },
    /// An object of an encrypted snapshot (or its sealed manifest part) did not open.
    #[error("{object}: {}", open_failure(*failure))]
    NotOpened {
        /// The object.
        object: String,
        /// Why.
        failure: hitkeep_seal::OpenFailure,
        /// The snapshot's recipients (public keys), to say which identity would open it.
        recipients: Vec<String>,
    },
    /// A whole restore of a split cycle (HitKeep 2.13) without its default tenant's snapshot: the shared
    /// database would say the analytics are in a file the restore does not bring back.
    #[error(
        "snapshot {snapshot}: the shared database is split (HitKeep 2.13) but the default tenant {tenant} has no usable snapshot in this cycle; restoring it would leave HitKeep unable to start (its split marker would point at a default tenant database that is {on_disk})"
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
        "snapshot {snapshot}: {file} holds a statement EXPORT DATABASE never writes: `{statement}` ({why}); refusing to import it"
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
    #[error("{path}: {problem}")]
    BundleManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A recovery bundle's artifact does not decompress to what its manifest records; nothing was changed.
    #[error("{path}: {problem}")]
    BundleArtifact {
        /// The artifact file (`database.zst` or `wal.zst`).
        path: PathBuf,
        /// What differs.
        problem: String,
    },
    /// This machine's clock is not past the newest cycle: a new snapshot would sort before it, so
    /// "latest" would not be the newest data. Nothing was written.
    #[error(
        "this machine's clock ({now}) is not past the newest snapshot in the destination ({newest}, {ahead} ahead): a cycle now would sort before it"
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
        "snapshot {snapshot}: another writer ({other}) took over this snapshot id while this cycle ran; not committing it, so no manifest lists objects another cycle may have replaced"
    )]
    ClaimLost {
        /// The cycle.
        snapshot: crate::SnapshotId,
        /// Who holds the marker now.
        other: String,
    },
    /// "latest" is ambiguous: several installations back up to this destination.
    #[error(
        "this destination holds backups of {} installations:\n{}",
        .0.len(),
        .0.iter().map(|s| format!("  - {}", s.describe())).collect::<Vec<_>>().join("\n")
    )]
    SeveralSources(Vec<crate::claim::SourceRecord>),
    /// A worker task died.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A table whose restored row count differs from its manifest's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountMismatch {
    /// The table, as manifests name it.
    pub table: String,
    /// Rows restored (`None`: the table is not in the restored database).
    pub restored: Option<u64>,
    /// Rows the manifest recorded.
    pub recorded: u64,
}

impl fmt::Display for CountMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let restored = self.restored.map_or("no".to_owned(), |n| n.to_string());
        write!(
            f,
            "{}: {restored} rows restored, manifest says {}",
            self.table, self.recorded
        )
    }
}

fn snapshot_not_found(id: &SnapshotId, newest: &[SnapshotId]) -> String {
    if newest.is_empty() {
        return format!("no snapshot {id}: this location has no snapshots at all");
    }
    let newest: Vec<String> = newest.iter().map(ToString::to_string).collect();
    format!("no snapshot {id}; the newest are: {}", newest.join(", "))
}

fn open_failure(failure: hitkeep_seal::OpenFailure) -> &'static str {
    use hitkeep_seal::OpenFailure;
    match failure {
        OpenFailure::NoIdentity => "the snapshot is encrypted and no identity was given to open it",
        OpenFailure::WrongIdentity => {
            "none of the identities in HITKEEP_BACKUP_IDENTITY_FILE is one of the snapshot's recipients"
        }
        OpenFailure::Unwritable => "its plaintext could not be written to local disk",
        _ => "it does not open whole: the stored object is damaged or was replaced",
    }
}

fn open_hint(failure: hitkeep_seal::OpenFailure, recipients: &[String]) -> String {
    use hitkeep_seal::OpenFailure;
    let to = recipients.join(", ");
    match failure {
        OpenFailure::NoIdentity => format!(
            "set HITKEEP_BACKUP_IDENTITY_FILE to the age identity file (AGE-SECRET-KEY-1…) of one of its recipients: {to}"
        ),
        OpenFailure::WrongIdentity => {
            format!("use the identity file of one of its recipients: {to}; nothing was changed")
        }
        OpenFailure::Unwritable => {
            "check the free space and permissions of the restore's scratch folder".to_owned()
        }
        _ => format!(
            "{CHOOSE_ANOTHER}; `hitkeep backup verify` checks every stored object's digest without a key"
        ),
    }
}

/// How to choose again, for the errors that name a snapshot that cannot be used.
const CHOOSE_ANOTHER: &str = "choose another snapshot (see `hitkeep backup list`)";

impl Error {
    /// What kind of failure this is. A wrapped storage or data error has the kind its own kind maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Storage(e) => from_storage(e.kind()),
            Error::Data(e) => from_data(e.kind()),
            Error::DuckDb { .. } | Error::WalLeft { .. } => ErrorKind::DuckDb,
            Error::TableBuild { source, .. } if is_constraint_violation(source) => {
                ErrorKind::Integrity
            }
            Error::TableBuild { .. } => ErrorKind::DuckDb,
            Error::OutOfMemory { .. } => ErrorKind::OutOfMemory,
            Error::Io { .. } => ErrorKind::Io,
            Error::Busy(_) => ErrorKind::InUse,
            Error::Manifest {
                source: ManifestError::TooNew(_),
                ..
            } => ErrorKind::Unsupported,
            Error::Manifest { .. } | Error::BundleManifest { .. } => ErrorKind::Corrupt,
            Error::ManifestAltered { .. }
            | Error::TenantSnapshotMissing { .. }
            | Error::RowCountsDiffer { .. }
            | Error::BundleArtifact { .. } => ErrorKind::Integrity,
            Error::InvalidSnapshotId(_) => ErrorKind::InvalidInput,
            Error::SnapshotNotFound { .. }
            | Error::NoCompleteSnapshot
            | Error::NoTenantSnapshot { .. }
            | Error::NothingToRestore { .. } => ErrorKind::NotFound,
            Error::NotVerifiable { state, .. } | Error::SnapshotUnusable { state, .. } => {
                match state {
                    SnapshotState::Corrupt(_) => ErrorKind::Corrupt,
                    _ => ErrorKind::NotFound,
                }
            }
            Error::NotDeleted { .. } | Error::NoStorageClock { .. } => ErrorKind::Storage,
            Error::PoolNotSwept { .. } | Error::ObjectLockOff { .. } => ErrorKind::Refused,
            Error::PoolObjectMissing { .. } => ErrorKind::Integrity,
            Error::IndexKey(_) => ErrorKind::Io,
            Error::TenantKey {
                forgotten_at: Some(_),
                ..
            } => ErrorKind::Refused,
            Error::TenantKey { .. } => ErrorKind::Integrity,
            Error::NotOpened { failure, .. } => match failure {
                hitkeep_seal::OpenFailure::Damaged => ErrorKind::Integrity,
                hitkeep_seal::OpenFailure::Unwritable => ErrorKind::Io,
                _ => ErrorKind::Refused,
            },
            Error::SplitWithoutDefault { .. } | Error::SeveralSources(_) => ErrorKind::Refused,
            Error::ForeignStatement { .. } => ErrorKind::Foreign,
            Error::ClockBehind { .. } => ErrorKind::Clock,
            Error::ClaimLost { .. } => ErrorKind::Conflict,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// What a person can do about it, when there is something to say; a wrapped storage or data
    /// error's own hint is passed through.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Error::Storage(e) => return e.hint().map(str::to_owned),
            Error::Data(e) => return e.hint(),
            Error::OutOfMemory { hint, .. } => *hint,
            Error::Busy(_) => "wait for it to finish",
            Error::ManifestAltered { .. }
            | Error::Manifest {
                source:
                    ManifestError::Invalid(_)
                    | ManifestError::MalformedSha256 { .. }
                    | ManifestError::ForeignFile { .. },
                ..
            }
            | Error::SnapshotUnusable { .. }
            | Error::NotVerifiable { .. }
            | Error::SnapshotNotFound { .. }
            | Error::NoTenantSnapshot { .. }
            | Error::RowCountsDiffer { .. } => CHOOSE_ANOTHER,
            Error::TableBuild { source, .. } if is_constraint_violation(source) => CHOOSE_ANOTHER,
            Error::NoCompleteSnapshot => {
                "run `hitkeep backup run` first, or check that this is where the backups go (`hitkeep backup list` shows what a location holds)"
            }
            Error::TenantSnapshotMissing { snapshot, .. } => {
                return Some(format!("run `hitkeep backup verify -snapshot {snapshot}`"));
            }
            Error::NotDeleted { .. } => {
                "the storage acknowledged deletes it did not perform; check the bucket's object lock and retention settings, then prune again"
            }
            Error::PoolNotSwept { .. } => {
                "if a newer hitkeep wrote it, run the sweep with that version; otherwise check it with `hitkeep backup verify` and remove the folder by hand if it is damaged"
            }
            Error::NoStorageClock { .. } => {
                "this storage does not report modification times; pool objects stay until one that does sweeps them"
            }
            Error::PoolObjectMissing { .. } => {
                "the next cycle exports the partition again; check that no lifecycle rule covers pool/ (`hitkeep backup lifecycle` writes rules that do not) and that only hitkeep prunes this location"
            }
            Error::NotOpened {
                failure,
                recipients,
                ..
            } => return Some(open_hint(*failure, recipients)),
            Error::TenantKey {
                forgotten_at: Some(at),
                ..
            } => {
                return Some(format!(
                    "the tenant was forgotten on {}: its snapshots sealed to that key cannot be opened by anyone; restore the cycle's other databases with -shared-only or -tenant",
                    at.strftime("%Y-%m-%d %H:%M:%S UTC")
                ));
            }
            Error::TenantKey { .. } => {
                "put the key file back from a copy if one exists (without it, no one can open the tenant's snapshots sealed to that key), or restore another snapshot (see `hitkeep backup list`)"
            }
            Error::SplitWithoutDefault { .. } => {
                "restore an earlier cycle that has the default tenant (see `hitkeep backup list`), or pass -shared-only to restore the shared database alone and keep the default tenant database on disk"
            }
            Error::ForeignStatement { .. } => {
                "the snapshot was changed after it was written; restore another snapshot (`hitkeep backup list`)"
            }
            Error::BundleManifest { .. } => {
                "-from must name a bundle directory as HitKeep writes them under {data-path}/recovery/ (manifest.json of version 1, database.zst, optionally wal.zst)"
            }
            Error::BundleArtifact { .. } => {
                "the bundle is damaged or incomplete; use another bundle under {data-path}/recovery/, or restore a snapshot with `hitkeep recover restore-backup`"
            }
            Error::ClockBehind { newest, .. } => {
                return Some(format!(
                    "check this machine's clock (`timedatectl`, NTP); if it is right and {newest} was written by a clock set ahead, cycles run again by themselves once the clock passes {newest}, and `hitkeep backup list` marks it as in the future"
                ));
            }
            Error::ClaimLost { .. } => {
                "two installations back up to the same destination at the same moment; give each its own HITKEEP_BACKUP_PATH (see `hitkeep backup list`, column SOURCE)"
            }
            Error::ObjectLockOff { .. } => OBJECT_LOCK_HOWTO,
            Error::SeveralSources(_) => {
                "choose one with -source ID (or restore one snapshot by id with -snapshot)"
            }
            Error::DuckDb { .. }
            | Error::TableBuild { .. }
            | Error::Io { .. }
            | Error::Manifest { .. }
            | Error::InvalidSnapshotId(_)
            | Error::NothingToRestore { .. }
            | Error::WalLeft { .. }
            | Error::IndexKey(_)
            | Error::Internal(_) => return None,
        };
        Some(hint.to_owned())
    }

    /// The message and then the hint, without the causes: one entry of a list, as a failed
    /// tenant's entry in a manifest and a problem `verify` found record it. (A storage error's
    /// message holds its hint already.)
    pub fn describe(&self) -> String {
        let message = self.to_string();
        match self.hint() {
            Some(hint) if !message.contains(&hint) => format!("{message}\n  hint: {hint}"),
            _ => message,
        }
    }
}

/// How to give a bucket Object Lock, for every message that finds it missing.
pub const OBJECT_LOCK_HOWTO: &str = "Object Lock is turned on when a bucket is created (`aws s3api create-bucket --bucket NAME --object-lock-enabled-for-bucket`, `mc mb --with-lock`), on AWS S3 also later on a versioned bucket (`aws s3api put-object-lock-configuration --bucket NAME --object-lock-configuration ObjectLockEnabled=Enabled`); `hitkeep doctor` checks it. Or set HITKEEP_BACKUP_OBJECT_LOCK_DAYS=0";

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
        D::Exists => ErrorKind::Refused,
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

    /// A restored table's key or index failed to build (see [`Error::TableBuild`]); out of memory, it
    /// is [`Error::OutOfMemory`] with `hint`.
    pub(crate) fn table_build(
        database: Database,
        table: &str,
        hint: &'static str,
        source: duckdb::Error,
    ) -> Self {
        if is_out_of_memory(&source) {
            return Error::duckdb_or_memory(database, "building keys and indexes", hint, source);
        }
        Error::TableBuild {
            database,
            table: table.to_owned(),
            source,
        }
    }
}

/// Whether DuckDB refused rows for a key: the snapshot's data, not the machine, is at fault.
fn is_constraint_violation(e: &duckdb::Error) -> bool {
    e.to_string().contains("Constraint Error")
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

    fn id(text: &str) -> SnapshotId {
        text.parse().unwrap()
    }

    /// What took the place of the catch-all `NotFound(String)`: each situation its own variant, the
    /// same message as before without its advice, and a kind that tells "not there" from "damaged".
    #[test]
    fn snapshot_failures_have_their_own_kinds_and_keep_their_messages() {
        let (a, b) = (id("2026-03-08T120000Z"), id("2026-03-07T120000Z"));
        let tenant = uuid::Uuid::from_u128(7);
        let cases: Vec<(Error, ErrorKind, &str, Option<&str>)> = vec![
            (
                Error::SnapshotNotFound {
                    id: a,
                    newest: vec![],
                },
                ErrorKind::NotFound,
                "no snapshot 2026-03-08T120000Z: this location has no snapshots at all",
                Some("hitkeep backup list"),
            ),
            (
                Error::SnapshotNotFound {
                    id: a,
                    newest: vec![b, b],
                },
                ErrorKind::NotFound,
                "no snapshot 2026-03-08T120000Z; the newest are: 2026-03-07T120000Z, 2026-03-07T120000Z",
                Some("hitkeep backup list"),
            ),
            (
                Error::NoCompleteSnapshot,
                ErrorKind::NotFound,
                "no complete snapshot in this location",
                Some("run `hitkeep backup run` first"),
            ),
            (
                Error::NotVerifiable {
                    id: a,
                    state: SnapshotState::Legacy,
                },
                ErrorKind::NotFound,
                "shared snapshot 2026-03-08T120000Z is Legacy: only complete snapshots can be verified",
                Some("choose another snapshot"),
            ),
            (
                Error::SnapshotUnusable {
                    id: a,
                    state: SnapshotState::Corrupt("not JSON".into()),
                },
                ErrorKind::Corrupt,
                "snapshot 2026-03-08T120000Z is Corrupt(\"not JSON\"), not a usable backup",
                Some("choose another snapshot (see `hitkeep backup list`)"),
            ),
            (
                Error::SnapshotUnusable {
                    id: a,
                    state: SnapshotState::Incomplete,
                },
                ErrorKind::NotFound,
                "snapshot 2026-03-08T120000Z is Incomplete, not a usable backup",
                Some("choose another snapshot"),
            ),
            (
                Error::TenantSnapshotMissing {
                    snapshot: a,
                    tenant,
                },
                ErrorKind::Integrity,
                "the cycle 2026-03-08T120000Z lists tenant 00000000-0000-0000-0000-000000000007 as complete, but its snapshot is missing or unfinished",
                Some("run `hitkeep backup verify -snapshot 2026-03-08T120000Z`"),
            ),
            (
                Error::NoTenantSnapshot {
                    snapshot: a,
                    tenant,
                },
                ErrorKind::NotFound,
                "tenant 00000000-0000-0000-0000-000000000007 has no usable snapshot 2026-03-08T120000Z",
                Some("choose another snapshot"),
            ),
            (
                Error::NothingToRestore { snapshot: a },
                ErrorKind::NotFound,
                "nothing to restore from snapshot 2026-03-08T120000Z",
                None,
            ),
            (
                Error::ManifestAltered {
                    key: "tenants/t/x/manifest.json".into(),
                    actual: "aa".into(),
                    expected: "bb".into(),
                },
                ErrorKind::Integrity,
                "tenants/t/x/manifest.json: SHA-256 aa differs from bb recorded by the cycle; the tenant snapshot was altered",
                Some("choose another snapshot"),
            ),
            (
                Error::Manifest {
                    key: "shared/x/manifest.json".into(),
                    source: ManifestError::MalformedSha256 {
                        file: "hits.parquet".into(),
                    },
                },
                ErrorKind::Corrupt,
                "shared/x/manifest.json: malformed SHA-256 for hits.parquet",
                Some("choose another snapshot"),
            ),
            (
                Error::Manifest {
                    key: "shared/x/manifest.json".into(),
                    source: ManifestError::TooNew(9),
                },
                ErrorKind::Unsupported,
                "shared/x/manifest.json: manifest format version 9 is newer than this hitkeep understands (4); upgrade hitkeep",
                None,
            ),
            (
                Error::WalLeft {
                    path: "/d/.hitkeep.db.tmp.wal".into(),
                },
                ErrorKind::DuckDb,
                "the restored database left a WAL file /d/.hitkeep.db.tmp.wal; aborting rather than keep a partly replayable state",
                None,
            ),
            (
                Error::RowCountsDiffer {
                    tables: vec![
                        CountMismatch {
                            table: "hits".into(),
                            restored: Some(2),
                            recorded: 3,
                        },
                        CountMismatch {
                            table: "goals".into(),
                            restored: None,
                            recorded: 1,
                        },
                    ],
                },
                ErrorKind::Integrity,
                "row counts differ from the manifest: hits: 2 rows restored, manifest says 3; goals: no rows restored, manifest says 1",
                Some("choose another snapshot"),
            ),
            (
                Error::NotDeleted {
                    folder: "shared/x".into(),
                    left: 2,
                },
                ErrorKind::Storage,
                "shared/x: 2 object(s) still listed after deleting; the storage did not delete them",
                Some("object lock"),
            ),
            (
                Error::InvalidSnapshotId("../x".parse::<SnapshotId>().unwrap_err()),
                ErrorKind::InvalidInput,
                "\"../x\" is not a snapshot id: expected YYYY-MM-DDTHHMMSSZ, e.g. 2026-03-08T120000Z",
                None,
            ),
            (
                Error::Busy("/d/.hitkeep-backup.lock".into()),
                ErrorKind::InUse,
                "another backup cycle is running on this data (lock /d/.hitkeep-backup.lock is held)",
                Some("wait for it to finish"),
            ),
            (
                Error::ClockBehind {
                    newest: a,
                    now: b,
                    ahead: "1d".into(),
                },
                ErrorKind::Clock,
                "this machine's clock (2026-03-07T120000Z) is not past the newest snapshot in the destination (2026-03-08T120000Z, 1d ahead): a cycle now would sort before it",
                Some("once the clock passes 2026-03-08T120000Z"),
            ),
            (
                Error::ClaimLost {
                    snapshot: a,
                    other: "source x".into(),
                },
                ErrorKind::Conflict,
                "snapshot 2026-03-08T120000Z: another writer (source x) took over this snapshot id while this cycle ran; not committing it, so no manifest lists objects another cycle may have replaced",
                Some("give each its own HITKEEP_BACKUP_PATH"),
            ),
        ];
        hitkeep_testkit::assert_error_contract(cases, Error::kind, Error::hint);
    }

    /// A wrapped storage or data error keeps its kind and its hint.
    #[test]
    fn wrapped_errors_pass_their_kind_and_hint_through() {
        let storage = hitkeep_storage::Error::integrity("shared/x/hits.parquet");
        let hint = storage.hint().map(str::to_owned);
        let err = Error::from(storage);
        assert_eq!((err.kind(), err.hint()), (ErrorKind::Integrity, hint));
        let err = Error::from(hitkeep_data::DataError::Locked {
            path: "/d/hitkeep.db".into(),
            holder: None,
        });
        assert_eq!(err.kind(), ErrorKind::InUse);
        assert!(
            err.hint()
                .is_some_and(|h| h.contains("stop the HitKeep server"))
        );
        assert!(!err.to_string().contains("hint"), "{err}");
    }

    /// A failed tenant's record and a verify problem keep the advice the message no longer holds,
    /// once, also for a storage error whose message holds its hint already.
    #[test]
    fn describe_is_the_message_then_the_hint_once() {
        let err = Error::Busy("/d/lock".into());
        assert_eq!(
            err.describe(),
            "another backup cycle is running on this data (lock /d/lock is held)\n  hint: wait for it to finish"
        );
        let err = Error::from(hitkeep_storage::Error::integrity("k"));
        assert_eq!(
            err.describe().matches("hint: ").count(),
            1,
            "{}",
            err.describe()
        );
    }
}
