//! One backup cycle: every database exported and uploaded under one snapshot id, tenants first, and the
//! shared database's manifest last, which commits the cycle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use duckdb::Connection;
use futures::{StreamExt as _, TryStreamExt as _};
use hitkeep_data::{DataError, DataLayout, DuckDbLimits, OpenMode, open_database};
use hitkeep_storage::{ListMode, Sha256Digest, Storage, TransferOptions};
use jiff::Timestamp;
use uuid::Uuid;

use crate::SnapshotId;
use crate::error::{Error, Result};
use crate::export::{Export, export_database};
use crate::lock::CycleLock;
use crate::manifest::{
    Database, FORMAT_VERSION, FileEntry, IN_PROGRESS_NAME, MANIFEST_NAME, Manifest, TenantEntry,
    TenantState,
};
use crate::progress::{NoProgress, Progress};

/// Where a cycle stages its exports and keeps its lock, and how it uploads.
#[derive(Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// Local directory for exports; each cycle uses (and removes) a subdirectory.
    pub staging_dir: PathBuf,
    /// The lock file that keeps cycles on the same data from overlapping.
    pub lock_file: PathBuf,
    /// Multipart chunking per file.
    pub transfer: TransferOptions,
    /// Files uploaded at once, per database.
    pub file_concurrency: usize,
    /// Databases exported and uploaded at once, the shared one included (it starts first).
    pub concurrency: usize,
    /// DuckDB's limits, split between the tenants open at once.
    pub limits: DuckDbLimits,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("staging_dir", &self.staging_dir)
            .field("lock_file", &self.lock_file)
            .field("transfer", &self.transfer)
            .field("file_concurrency", &self.file_concurrency)
            .field("concurrency", &self.concurrency)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl BackupOptions {
    /// Staging and lock inside the data directory, on the same disk as the databases; the layout's
    /// DuckDB limits; two databases at once.
    pub fn for_layout(layout: &DataLayout) -> Self {
        BackupOptions {
            staging_dir: layout.data_path.join(".hitkeep-staging"),
            lock_file: layout.data_path.join(".hitkeep-backup.lock"),
            transfer: TransferOptions::new(8 * 1024 * 1024, 3),
            file_concurrency: 4,
            concurrency: 2,
            limits: layout.duckdb,
            progress: Arc::new(NoProgress),
        }
    }

    /// The same options, backing up `n` databases at once (at least one).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The same options, reporting progress to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }
}

type Opener = Box<dyn FnOnce() -> Result<Option<Connection>, DataError> + Send>;

/// A tenant database to back up, opened only when its turn comes.
pub struct TenantSource {
    id: Uuid,
    open: Opener,
}

impl std::fmt::Debug for TenantSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSource")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl TenantSource {
    /// A tenant with an opener. `Ok(None)` means "no database yet": the tenant is skipped, not failed.
    pub fn new(
        id: Uuid,
        open: impl FnOnce() -> Result<Option<Connection>, DataError> + Send + 'static,
    ) -> Self {
        TenantSource {
            id,
            open: Box::new(open),
        }
    }

    /// A tenant already open, e.g. by a HitKeep service that holds its connections.
    pub fn open(id: Uuid, conn: Connection) -> Self {
        TenantSource::new(id, move || Ok(Some(conn)))
    }

    /// A tenant at its place in the data layout. A missing file is skipped: it is never created just to
    /// be backed up.
    pub fn from_layout(layout: &DataLayout, id: Uuid) -> Self {
        let path = layout.tenant_db(id);
        TenantSource::new(id, move || match open_database(&path, OpenMode::Existing) {
            Ok(conn) => Ok(Some(conn)),
            Err(DataError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        })
    }
}

/// What a cycle did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CycleReport {
    /// The snapshot id of every database in the cycle.
    pub id: SnapshotId,
    /// The shared database's manifest, which lists the tenants.
    pub shared: Manifest,
    /// Files uploaded, over all databases.
    pub files: usize,
    /// Bytes uploaded, over all databases.
    pub bytes: u64,
}

impl CycleReport {
    /// Tenants whose snapshot failed in this cycle.
    pub fn failed_tenants(&self) -> impl Iterator<Item = (&Uuid, &str)> {
        self.shared.tenants.iter().filter_map(|t| match &t.state {
            TenantState::Failed { error } => Some((&t.tenant_id, error.as_str())),
            _ => None,
        })
    }

    /// Whether every database was backed up.
    pub fn is_success(&self) -> bool {
        self.failed_tenants().next().is_none()
    }
}

/// Runs one cycle. Fails as a whole when the shared database cannot be backed up; a failing tenant is
/// recorded in the shared manifest (and [`CycleReport::is_success`] is false) while the others go on.
pub async fn run_cycle(
    storage: &Storage,
    shared: Connection,
    tenants: Vec<TenantSource>,
    options: &BackupOptions,
) -> Result<CycleReport> {
    let _lock = CycleLock::acquire(&options.lock_file)?;
    let id = pick_id(storage).await?;
    // Holding the lock, nothing else uses the staging root: clear what interrupted cycles left behind.
    if options.staging_dir.exists() {
        std::fs::remove_dir_all(&options.staging_dir)
            .map_err(|e| Error::io(&options.staging_dir, e))?;
    }
    let staging = StagingDir::create(options.staging_dir.join(id.to_string()))?;
    tracing::info!(snapshot = %id, location = %storage.location(), tenants = tenants.len(), "backup cycle started");

    // Databases side by side, the shared one first: while one exports (CPU) another uploads (network),
    // and tenants' fixed costs (open, checkpoint, a few requests) overlap. Each DuckDB instance gets its
    // share of the limits; `buffered` keeps the tenants in order for the manifest.
    let limits = options.limits.share(options.concurrency);
    // The shared database is usually the big one and outlives the tenants' exports: it keeps every
    // thread it was given (oversubscription costs a little time, never memory).
    let shared_limits = DuckDbLimits {
        threads: options.limits.threads,
        ..limits
    };
    shared_limits
        .apply(&shared)
        .map_err(|e| Error::duckdb(Database::Shared, "setting DuckDB's limits", e))?;
    let jobs = std::iter::once(Job::Shared(shared)).chain(tenants.into_iter().map(Job::Tenant));
    let staging_path = staging.path();
    let mut done = futures::stream::iter(jobs)
        .map(|job| async move {
            match job {
                Job::Shared(conn) => Done::Shared(
                    snapshot_database(storage, conn, Database::Shared, id, staging_path, options)
                        .await,
                ),
                Job::Tenant(t) => {
                    let (entry, counted) =
                        backup_tenant(storage, t, id, staging_path, options, limits).await;
                    Done::Tenant(entry, counted)
                }
            }
        })
        .buffered(options.concurrency.max(1));
    // Every job runs to its end even when the shared one fails: an export abandoned mid-way would go
    // on writing into a staging folder already removed.
    let (mut shared_result, mut entries, mut files, mut bytes) = (None, Vec::new(), 0, 0);
    while let Some(outcome) = done.next().await {
        match outcome {
            Done::Shared(result) => shared_result = Some(result),
            Done::Tenant(entry, counted) => {
                files += counted.0;
                bytes += counted.1;
                entries.push(entry);
            }
        }
    }
    let mut shared_manifest = shared_result
        .ok_or_else(|| Error::Internal("the shared database's job did not run".into()))??;
    files += shared_manifest.files.len();
    bytes += shared_manifest.total_size();
    shared_manifest.tenants = entries;
    // The commit point: only now does the cycle exist for list, restore and "latest".
    commit(storage, &shared_manifest).await?;
    tracing::info!(snapshot = %id, files, bytes, "backup cycle committed");
    Ok(CycleReport {
        id,
        shared: shared_manifest,
        files,
        bytes,
    })
}

/// What a cycle backs up: the shared database, open, or a tenant to open.
enum Job {
    Shared(Connection),
    Tenant(TenantSource),
}

enum Done {
    Shared(Result<Manifest>),
    Tenant(TenantEntry, (usize, u64)),
}

/// One tenant's snapshot, committed on its own; a failure is recorded, never raised. Also returns the
/// files and bytes uploaded.
async fn backup_tenant(
    storage: &Storage,
    tenant: TenantSource,
    id: SnapshotId,
    staging: &Path,
    options: &BackupOptions,
    limits: DuckDbLimits,
) -> (TenantEntry, (usize, u64)) {
    let database = Database::Tenant {
        tenant_id: tenant.id,
    };
    // Opening replays the WAL, which can take a while: not on the async workers.
    let opened = tokio::task::spawn_blocking(move || {
        let conn = (tenant.open)().map_err(|e| e.to_string())?;
        if let Some(conn) = &conn {
            limits
                .apply(conn)
                .map_err(|e| format!("setting DuckDB's limits: {e}"))?;
        }
        Ok(conn)
    })
    .await
    .unwrap_or_else(|e| Err(format!("opening the database: {e}")));
    let mut counted = (0, 0);
    let state = match opened {
        Ok(None) => TenantState::Skipped {
            reason: "no database file yet".to_owned(),
        },
        Err(error) => TenantState::Failed { error },
        Ok(Some(conn)) => {
            match snapshot_and_commit(storage, conn, database, id, staging, options).await {
                Ok((manifest, sha)) => {
                    counted = (manifest.files.len(), manifest.total_size());
                    TenantState::Complete {
                        manifest_sha256: sha.to_string(),
                    }
                }
                Err(e) => TenantState::Failed {
                    error: e.to_string(),
                },
            }
        }
    };
    match &state {
        TenantState::Failed { error } => {
            tracing::error!(tenant = %tenant.id, error, "tenant backup failed")
        }
        TenantState::Skipped { reason } => {
            tracing::info!(tenant = %tenant.id, reason, "tenant skipped")
        }
        TenantState::Complete { .. } => tracing::info!(tenant = %tenant.id, "tenant backed up"),
    }
    let entry = TenantEntry {
        tenant_id: tenant.id,
        state,
    };
    (entry, counted)
}

async fn snapshot_and_commit(
    storage: &Storage,
    conn: Connection,
    database: Database,
    id: SnapshotId,
    staging: &Path,
    options: &BackupOptions,
) -> Result<(Manifest, Sha256Digest)> {
    let manifest = snapshot_database(storage, conn, database, id, staging, options).await?;
    let sha = commit(storage, &manifest).await?;
    Ok((manifest, sha))
}

/// The newest id that no cycle has used: a second cycle within the same second waits for the next one.
async fn pick_id(storage: &Storage) -> Result<SnapshotId> {
    loop {
        let id = SnapshotId::now();
        if storage
            .list(&format!("shared/{id}"), ListMode::Recursive)
            .await?
            .is_empty()
        {
            return Ok(id);
        }
        let into_second = Timestamp::now().subsec_nanosecond();
        tokio::time::sleep(std::time::Duration::from_nanos(
            1_000_000_000 - u64::try_from(into_second).unwrap_or(0),
        ))
        .await;
    }
}

/// Exports one database and uploads its files; returns its manifest, not yet written.
async fn snapshot_database(
    storage: &Storage,
    conn: Connection,
    database: Database,
    id: SnapshotId,
    staging: &Path,
    options: &BackupOptions,
) -> Result<Manifest> {
    let folder = format!("{}/{id}", database.folder());
    let created_at = Timestamp::now();
    let marker = serde_json::json!({ "tool": tool(), "started_at": created_at.to_string() });
    storage
        .write(
            &format!("{folder}/{IN_PROGRESS_NAME}"),
            serde_json::to_vec(&marker).unwrap_or_default(),
        )
        .await?;

    let dir = staging.join(database.folder());
    // Removed as soon as this database is done, so exports of many tenants never pile up on the data disk.
    let _export_dir = StagingDir(dir.clone());
    std::fs::create_dir_all(dir.parent().unwrap_or(staging)).map_err(|e| Error::io(&dir, e))?;
    let export_dir = dir.clone();
    let export: Export =
        tokio::task::spawn_blocking(move || export_database(&conn, database, &export_dir))
            .await
            .map_err(|e| Error::Internal(format!("export task: {e}")))??;

    let total: u64 = export
        .files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    options
        .progress
        .upload_started(database, export.files.len(), total);
    let mut files: Vec<FileEntry> = futures::stream::iter(export.files.iter())
        .map(|path| upload_one(storage, database, &folder, path, options))
        .buffer_unordered(options.file_concurrency.max(1))
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    options.progress.upload_finished(database);
    Ok(Manifest {
        format: "hitkeep-snapshot".to_owned(),
        format_version: FORMAT_VERSION,
        snapshot_id: id,
        database,
        created_at,
        tool: tool(),
        duckdb_version: export.duckdb_version,
        files,
        tables: export.tables,
        tenants: Vec::new(),
    })
}

async fn upload_one(
    storage: &Storage,
    database: Database,
    folder: &str,
    path: &Path,
    options: &BackupOptions,
) -> Result<FileEntry> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let info = storage
        .upload_file(path, &format!("{folder}/{name}"), &options.transfer)
        .await?;
    tracing::debug!(file = name, size = info.size, "uploaded");
    options.progress.file_uploaded(database, &name, info.size);
    Ok(FileEntry {
        name,
        size: info.size,
        sha256: info.sha256.to_string(),
    })
}

/// Writes the manifest (the snapshot now exists), then removes the in-progress marker.
async fn commit(storage: &Storage, manifest: &Manifest) -> Result<Sha256Digest> {
    let folder = format!("{}/{}", manifest.database.folder(), manifest.snapshot_id);
    let bytes = manifest.to_bytes();
    let sha = Sha256Digest::of(&bytes);
    storage
        .write(&format!("{folder}/{MANIFEST_NAME}"), bytes)
        .await?;
    if let Err(e) = storage
        .delete(&format!("{folder}/{IN_PROGRESS_NAME}"))
        .await
    {
        tracing::warn!(error = %e, "could not remove the in-progress marker; the snapshot is complete regardless");
    }
    Ok(sha)
}

pub(crate) fn tool() -> String {
    format!("hitkeep-rs {}", env!("CARGO_PKG_VERSION"))
}

/// A staging directory removed when the cycle ends, whichever way it ends.
struct StagingDir(PathBuf);

impl StagingDir {
    fn create(path: PathBuf) -> Result<Self> {
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(StagingDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove the staging directory");
        }
    }
}
