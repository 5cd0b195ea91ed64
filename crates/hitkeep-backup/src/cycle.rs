//! One backup cycle: every database exported and uploaded under one snapshot id, tenants first, and the
//! shared database's manifest last, which commits the cycle.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use duckdb::Connection;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use hitkeep_data::{DataError, DataLayout, DuckDbLimits, OpenMode, SourceId, TenantLayout};
use hitkeep_storage::{ErrorKind, LockMode, Retention, Sha256Digest, Storage, TransferOptions};
use jiff::Timestamp;
use uuid::Uuid;

use crate::SnapshotId;
use crate::claim::{Claim, History, SourceRecord, record_source};
use crate::error::{Error, Result};
use crate::export::{Export, export_database};
use crate::follow::{ExportFile, ExportState, ExportWatch, Fingerprint, POLL, Tapped, follow};
use crate::lanes::{Lanes, Way};
use crate::lock::CycleLock;
use crate::manifest::{
    AGE_X25519, Database, ENCRYPTED_FORMAT_VERSION, ENCRYPTED_INCREMENTAL_FORMAT_VERSION,
    Encryption, FULL_FORMAT_VERSION, FileEntry, IN_PROGRESS_NAME, INDEX_NAME, LockRecord,
    MANIFEST_NAME, Manifest, PartitionIndex, SEALED_NAME, Sealed, TenantEntry, TenantState,
};
use crate::progress::{NoProgress, Progress};
use crate::tenant_keys::tenant_sealer;
use hitkeep_seal::{HostKey, Sealer};

mod incremental;

/// Where a cycle stages its exports and keeps its lock, and how it uploads.
#[derive(Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// The staging root ([`DataLayout::staging_root`]); each cycle claims a folder of its own in it
    /// ([`hitkeep_data::StagingDir`]), removed when it ends, and never touches another job's.
    pub staging_dir: PathBuf,
    /// The lock file that keeps cycles on the same data from overlapping.
    pub lock_file: PathBuf,
    /// The installation's source id file (`{data}/.hitkeep-source`), created by the first cycle.
    pub source_file: PathBuf,
    /// The host's key for the partition indexes of encrypted incremental snapshots
    /// (`{data}/.hitkeep-index-key`, [`crate::HostKey`]), created by the first such cycle.
    pub index_key_file: PathBuf,
    /// Multipart chunking per file.
    pub transfer: TransferOptions,
    /// Files uploaded at once, per database.
    pub file_concurrency: usize,
    /// Databases exported and uploaded at once, the shared one included (it starts first).
    pub concurrency: usize,
    /// One more at once when every database of the cycle is under [`SMALL_DATABASE_BYTES`]: for a
    /// concurrency nobody set (the default), and not inside a server that holds the databases, whose
    /// ingest the spare core is for. [`BackupOptions::with_concurrency`] turns it off.
    pub one_more_when_small: bool,
    /// DuckDB's limits, split between the tenants open at once.
    pub limits: DuckDbLimits,
    /// Whether the cycle sets those limits on the databases it backs up: not when they are a
    /// server's own instances ([`DataLayout::holds_databases`]), whose budget is the server's.
    pub apply_limits: bool,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
    /// Full snapshots (the default) or incremental ones.
    pub mode: BackupMode,
    /// When set, every object the cycle writes is encrypted to these recipients before it leaves
    /// the process, in either mode.
    pub sealer: Option<Arc<Sealer>>,
    /// When set (with a sealer), each tenant's snapshots are sealed to a key of the tenant's own,
    /// whose public half is recorded in this folder ([`DataLayout::tenant_keys_dir`]) and whose
    /// private half the location keeps wrapped to the sealer's recipients (`crate::tenant_keys`).
    pub tenant_keys_dir: Option<PathBuf>,
    /// When set, every object of each snapshot is kept by S3 Object Lock for these days after the
    /// cycle (by the server's clock); the cycle fails before it writes anything when the bucket has
    /// no Object Lock.
    pub lock_days: Option<NonZeroU32>,
    /// Who can lift that lock early.
    pub lock_mode: LockMode,
}

/// What a cycle's snapshots hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupMode {
    /// Every database exported whole into its snapshot's folder, as `EXPORT DATABASE` writes it
    /// (manifest format 1): what HitKeep's own `IMPORT DATABASE` reads.
    #[default]
    Full,
    /// Only the partitions that changed since the previous snapshot of the same database exported,
    /// stored once in the location's pool and shared by the snapshots that hold them (manifest
    /// format 2). Each snapshot still restores on its own.
    Incremental,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("staging_dir", &self.staging_dir)
            .field("lock_file", &self.lock_file)
            .field("source_file", &self.source_file)
            .field("index_key_file", &self.index_key_file)
            .field("transfer", &self.transfer)
            .field("file_concurrency", &self.file_concurrency)
            .field("concurrency", &self.concurrency)
            .field("one_more_when_small", &self.one_more_when_small)
            .field("limits", &self.limits)
            .field("apply_limits", &self.apply_limits)
            .field("mode", &self.mode)
            .field("sealer", &self.sealer)
            .field("tenant_keys_dir", &self.tenant_keys_dir)
            .field("lock_days", &self.lock_days)
            .field("lock_mode", &self.lock_mode)
            .finish_non_exhaustive()
    }
}

impl BackupOptions {
    /// Staging and lock inside the data directory, on the same disk as the databases; the layout's
    /// DuckDB limits; two databases at once, three when all are small and no server holds them.
    pub fn for_layout(layout: &DataLayout) -> Self {
        BackupOptions {
            staging_dir: layout.staging_root(),
            lock_file: layout.backup_lock_file(),
            source_file: layout.source_file(),
            index_key_file: layout.index_key_file(),
            transfer: TransferOptions::new(8 * 1024 * 1024, 3),
            file_concurrency: 4,
            concurrency: 2,
            one_more_when_small: !layout.holds_databases(),
            limits: layout.duckdb,
            apply_limits: !layout.holds_databases(),
            progress: Arc::new(NoProgress),
            mode: BackupMode::Full,
            sealer: None,
            tenant_keys_dir: None,
            lock_days: None,
            lock_mode: LockMode::Governance,
        }
    }

    /// The same options, locking every object of each snapshot with S3 Object Lock for `days`.
    pub fn with_object_lock(mut self, days: NonZeroU32, mode: LockMode) -> Self {
        self.lock_days = Some(days);
        self.lock_mode = mode;
        self
    }

    /// The same options, encrypting every object to `sealer`'s recipients.
    pub fn with_sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = Some(Arc::new(sealer));
        self
    }

    /// The same options, sealing each tenant's snapshots to a key of the tenant's own (wrapped to
    /// the sealer's recipients), with the tenants' public keys recorded in `dir`. Without a sealer
    /// it changes nothing.
    pub fn with_tenant_keys(mut self, dir: PathBuf) -> Self {
        self.tenant_keys_dir = Some(dir);
        self
    }

    /// The same options, writing snapshots of `mode`.
    pub fn with_mode(mut self, mode: BackupMode) -> Self {
        self.mode = mode;
        self
    }

    /// The same options, backing up exactly `n` databases at once (at least one).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self.one_more_when_small = false;
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
    /// The file looked at, named when it is missing.
    path: Option<PathBuf>,
    /// A missing database fails the tenant instead of skipping it: a split install's default tenant.
    required: bool,
}

impl std::fmt::Debug for TenantSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSource")
            .field("id", &self.id)
            .field("path", &self.path)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl TenantSource {
    /// A tenant with an opener. `Ok(None)` means "no database": the tenant is skipped, not failed.
    pub fn new(
        id: Uuid,
        open: impl FnOnce() -> Result<Option<Connection>, DataError> + Send + 'static,
    ) -> Self {
        TenantSource {
            id,
            open: Box::new(open),
            path: None,
            required: false,
        }
    }

    /// A tenant already open, e.g. by a HitKeep service that holds its connections.
    pub fn open(id: Uuid, conn: Connection) -> Self {
        TenantSource::new(id, move || Ok(Some(conn)))
    }

    /// A tenant at its place in the data layout. A missing file is skipped and reported with its path:
    /// it is never created just to be backed up (HitKeep Go creates an empty one).
    pub fn from_layout(layout: &DataLayout, id: Uuid) -> Self {
        let path = layout.tenant_db(id);
        let (opened, layout) = (path.clone(), layout.clone());
        let mut source =
            TenantSource::new(id, move || match layout.open(&opened, OpenMode::Existing) {
                Ok(conn) => Ok(Some(conn)),
                Err(DataError::Missing { .. }) => Ok(None),
                Err(e) => Err(e),
            });
        source.path = Some(path);
        source
    }

    /// The same tenant, failing instead of being skipped when its database is missing.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// What a missing database means for this tenant.
    fn missing(&self) -> TenantState {
        let at = self
            .path
            .as_ref()
            .map(|p| format!(" at {}", p.display()))
            .unwrap_or_default();
        if self.required {
            TenantState::Failed {
                error: format!(
                    "the default tenant's database is missing{at}, yet the shared database says its analytics were split out of it (HitKeep 2.13)\n  hint: check that HITKEEP_DATA_PATH points at the server's data directory (and that it persists, in Docker); HitKeep itself will not start without this file"
                ),
            }
        } else {
            TenantState::Skipped {
                reason: format!("no database file{at}"),
            }
        }
    }
}

/// The tenants of a cycle and what the shared database says about them.
#[derive(Debug)]
#[non_exhaustive]
pub struct CycleTenants {
    /// Where the default tenant's analytics live; recorded in the shared manifest.
    pub layout: TenantLayout,
    /// The default tenant, when the schema has one.
    pub default_tenant: Option<Uuid>,
    /// The tenant databases to back up, in this order.
    pub sources: Vec<TenantSource>,
}

impl CycleTenants {
    /// Explicit tenants, e.g. from a HitKeep service that holds its own connections.
    pub fn new(
        layout: TenantLayout,
        default_tenant: Option<Uuid>,
        sources: Vec<TenantSource>,
    ) -> Self {
        CycleTenants {
            layout,
            default_tenant,
            sources,
        }
    }

    /// The tenants HitKeep would back up, read from the shared database, at their place in `layout`:
    /// on a split install every active tenant, the default one included (and required); before the
    /// split every active tenant but the default one, whose analytics are in the shared database.
    pub fn discover(layout: &DataLayout, shared: &Connection) -> Result<CycleTenants> {
        let set = hitkeep_data::tenant_set(shared)
            .map_err(|e| Error::duckdb(Database::Shared, "listing the tenants", e))?;
        if set.split_unfinished {
            tracing::warn!(
                "the shared database records HitKeep's tenant split but not its compaction; HitKeep finishes it on its next start. Backing up the default tenant's own database"
            );
        }
        let sources = set
            .backed_up
            .iter()
            .map(|&id| {
                let source = TenantSource::from_layout(layout, id);
                if Some(id) == set.default_tenant {
                    source.required()
                } else {
                    source
                }
            })
            .collect();
        Ok(CycleTenants::new(set.layout, set.default_tenant, sources))
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

    /// Tenants not backed up in this cycle because their database file is missing, with the reason.
    pub fn skipped_tenants(&self) -> impl Iterator<Item = (&Uuid, &str)> {
        self.shared.tenants.iter().filter_map(|t| match &t.state {
            TenantState::Skipped { reason } => Some((&t.tenant_id, reason.as_str())),
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
    tenants: CycleTenants,
    options: &BackupOptions,
) -> Result<CycleReport> {
    let CycleTenants {
        layout,
        default_tenant,
        sources: tenants,
    } = tenants;
    let _lock = CycleLock::acquire(&options.lock_file)?;
    let retention = match options.lock_days {
        Some(days) => Some(lock_until(storage, days, options.lock_mode).await?),
        None => None,
    };
    // Encrypted incremental snapshots keep their partitions in an index only this host opens.
    let index_key = match (&options.sealer, options.mode) {
        (Some(_), BackupMode::Incremental) => Some(Arc::new(
            HostKey::read_or_create(&options.index_key_file).map_err(|why| {
                Error::IndexKey(format!("{why}: remove it, and the next cycle makes a new one and exports every partition again"))
            })?,
        )),
        _ => None,
    };
    // Declared before the shared futures that borrow it, so that it outlives them.
    let reuse = &incremental::Reuse::new(options.sealer.as_deref(), index_key);
    let source = SourceId::read_or_create(&options.source_file)?;
    // A folder of this cycle's own: a concurrent `verify --deep` or archive run keeps its files, and
    // what killed cycles left is swept.
    let staging =
        hitkeep_data::StagingDir::claim(&options.staging_dir, hitkeep_data::JobKind::Backup)?;
    // The snapshot id is claimed while the first exports run: its requests (the history's listing,
    // the source record, the marker, or on a service that ignores If-None-Match an announcement and a
    // listing) are independent of an export, which writes only into local staging. No database
    // uploads or writes a marker before the claim is taken (`snapshot_database`).
    let failed_claim = std::sync::Mutex::new(None);
    let claim: PendingClaim<'_> = async {
        claim_id(storage, source, &options.source_file)
            .await
            .map_err(|e| {
                *failed_claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            })
            .ok()
    }
    .boxed()
    .shared();
    // What an incremental cycle's databases reuse: read while the first exports open, once.
    let incremental = options.mode == BackupMode::Incremental;
    let previous: incremental::PreviousCycle<'_> = async move {
        match incremental {
            true => {
                incremental::previous_cycle(storage, source, reuse, options.sealer.as_deref()).await
            }
            false => None,
        }
    }
    .boxed()
    .shared();
    tracing::info!(location = %storage.location(), tenants = tenants.len(), %layout, mode = ?options.mode, "backup cycle started");

    // Databases side by side, the shared one first: while one exports (CPU) another uploads (network),
    // and tenants' fixed costs (open, checkpoint, a few requests) overlap. Each DuckDB instance gets its
    // share of the limits (`export_share`), the shared one too, and the last database the whole
    // limits once the others are done or nearly (`ExportLanes`). A lane takes the next database as
    // soon as its own is done (`buffer_unordered`: with `buffered`, a finished tenant waiting behind a
    // slow one keeps its lane); the tenants are put back in order for the manifest below. A cycle of
    // one database gives it the whole budget.
    let small = options.one_more_when_small
        && one_more_fits(options.limits, options.concurrency + 1)
        && all_small(&shared, &tenants);
    let ways = (options.concurrency + usize::from(small)).clamp(1, 1 + tenants.len());
    tracing::debug!(ways, small, "databases exported at once");
    let lanes = ExportLanes::new(
        1 + tenants.len(),
        ways,
        options.apply_limits.then_some(options.limits),
        storage.location().is_s3(),
    );
    let lanes = &lanes;
    let jobs = std::iter::once(Job::Shared(shared)).chain(
        tenants
            .into_iter()
            .enumerate()
            .map(|(order, t)| Job::Tenant(order, t)),
    );
    let staging_path = staging.path();
    let pending = &Pending {
        claim: claim.clone(),
        previous,
        reuse,
        retention,
    };
    let mut done = futures::stream::iter(jobs)
        .map(|job| async move {
            match job {
                Job::Shared(conn) => Done::Shared(Box::new(
                    async {
                        let database = Database::Shared;
                        let (lane, conn) = lanes.enter_with(0, database, conn).await?;
                        let snapshot = snapshot_database(
                            storage,
                            conn,
                            database,
                            pending,
                            staging_path,
                            options,
                        )
                        .await;
                        lane.end(snapshot.is_ok());
                        snapshot
                    }
                    .await,
                )),
                Job::Tenant(order, t) => {
                    let (entry, counted) = backup_tenant(
                        storage,
                        t,
                        pending,
                        staging_path,
                        options,
                        (lanes, order + 1),
                    )
                    .await;
                    Done::Tenant(order, entry, counted)
                }
            }
        })
        .buffer_unordered(ways);
    // Every job runs to its end even when the shared one fails: an export abandoned mid-way would go
    // on writing into a staging folder already removed.
    let (mut shared_result, mut entries, mut files, mut bytes) = (None, Vec::new(), 0, 0);
    while let Some(outcome) = done.next().await {
        match outcome {
            Done::Shared(result) => shared_result = Some(*result),
            Done::Tenant(order, entry, counted) => {
                files += counted.0;
                bytes += counted.1;
                entries.push((order, entry));
            }
        }
    }
    drop(done);
    let entries: Vec<TenantEntry> = crate::in_order(entries);
    // A failed claim fails the cycle with its own error, whatever the jobs made of it.
    let Some(claim) = claim.await else {
        let failed = failed_claim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        return Err(failed.unwrap_or_else(|| Error::Internal("no snapshot id was claimed".into())));
    };
    let (id, claim) = (claim.id, &claim);
    let (mut shared_manifest, uploaded) = shared_result
        .ok_or_else(|| Error::Internal("the shared database's job did not run".into()))??;
    files += uploaded.0;
    bytes += uploaded.1;
    shared_manifest.tenants = entries;
    shared_manifest.layout = Some(layout);
    shared_manifest.default_tenant = default_tenant;
    shared_manifest.object_lock = retention;
    // The commit point: only now does the cycle exist for list, restore and "latest".
    claim.check(storage).await?;
    commit(storage, &shared_manifest).await?;
    tracing::info!(snapshot = %id, files, bytes, "backup cycle committed");
    Ok(CycleReport {
        id,
        shared: shared_manifest,
        files,
        bytes,
    })
}

/// The snapshot id being claimed, shared by the jobs, which export while it is taken and await it
/// before their first write to the destination. `None`: the claim failed (its error is kept for
/// `run_cycle` to return).
type PendingClaim<'a> = Shared<BoxFuture<'a, Option<Claim>>>;

/// What the jobs of a cycle wait on together: the claim, and in incremental mode the previous cycle.
struct Pending<'a> {
    claim: PendingClaim<'a>,
    previous: incremental::PreviousCycle<'a>,
    /// How an incremental cycle reads and writes partitions: in the clear, or sealed.
    reuse: &'a incremental::Reuse,
    /// The S3 Object Lock retention every object of the cycle gets, when it locks.
    retention: Option<LockRecord>,
}

/// Reads the source's history, checks the clock against it, records the source and claims the
/// snapshot id, numbered one above the source's newest cycle.
async fn claim_id(storage: &Storage, source: SourceId, source_file: &Path) -> Result<Claim> {
    let history = History::read(storage, source).await?;
    history.wait_for_clock().await?;
    let data_path = source_file.parent().unwrap_or(Path::new("."));
    record_source(storage, &SourceRecord::here(source, data_path)).await?;
    let mut claim = Claim::take(storage, source).await?;
    claim.sequence = history.next_sequence;
    tracing::info!(snapshot = %claim.id, sequence = claim.sequence, "snapshot id claimed");
    Ok(claim)
}

/// The claimed id, once the claim is over; a failed claim is an error here (and its own error is
/// what the cycle returns).
async fn claimed(claim: &PendingClaim<'_>) -> Result<Claim> {
    claim
        .clone()
        .await
        .ok_or_else(|| Error::Internal("no snapshot id was claimed".into()))
}

/// What a cycle backs up: the shared database, open, or a tenant to open.
enum Job {
    Shared(Connection),
    /// A tenant and its place in the cycle's order.
    Tenant(usize, TenantSource),
}

enum Done {
    Shared(Box<Result<(Manifest, (usize, u64))>>),
    Tenant(usize, TenantEntry, (usize, u64)),
}

/// One tenant's snapshot, committed on its own; a failure is recorded, never raised. Also returns the
/// files and bytes uploaded.
async fn backup_tenant(
    storage: &Storage,
    tenant: TenantSource,
    pending: &Pending<'_>,
    staging: &Path,
    options: &BackupOptions,
    (lanes, lane_id): (&ExportLanes, usize),
) -> (TenantEntry, (usize, u64)) {
    let database = Database::Tenant {
        tenant_id: tenant.id,
    };
    let missing = tenant.missing();
    let tenant_id = tenant.id;
    // Opening replays the WAL, which can take a while: not on the async workers.
    // A claim already failed: the cycle fails, so nothing more is opened or exported.
    if matches!(pending.claim.peek(), Some(None)) {
        lanes.forgo();
        let error = "no snapshot id was claimed".to_owned();
        return (
            TenantEntry {
                tenant_id,
                state: TenantState::Failed { error },
            },
            (0, 0),
        );
    }
    let opened =
        tokio::task::spawn_blocking(move || (tenant.open)().map_err(|e| Error::from(e).describe()))
            .await
            .unwrap_or_else(|e| Err(format!("opening the database: {e}")));
    let mut counted = (0, 0);
    if !matches!(opened, Ok(Some(_))) {
        lanes.forgo();
    }
    let state = match opened {
        Ok(None) => missing,
        Err(error) => TenantState::Failed { error },
        Ok(Some(conn)) => {
            let snapshot = async {
                let (lane, conn) = lanes.enter_with(lane_id, database, conn).await?;
                let done =
                    snapshot_and_commit(storage, conn, database, pending, staging, options).await;
                lane.end(done.is_ok());
                done
            };
            match snapshot.await {
                Ok((sha, uploaded)) => {
                    counted = uploaded;
                    TenantState::Complete {
                        manifest_sha256: sha.to_string(),
                    }
                }
                Err(e) => TenantState::Failed {
                    error: e.describe(),
                },
            }
        }
    };
    match &state {
        TenantState::Failed { error } => {
            tracing::error!(tenant = %tenant_id, error, "tenant backup failed")
        }
        // Not an error (HitKeep creates a tenant's file on first use), but never silent.
        TenantState::Skipped { reason } => {
            tracing::warn!(tenant = %tenant_id, reason, "tenant not backed up")
        }
        TenantState::Complete { .. } => tracing::info!(tenant = %tenant_id, "tenant backed up"),
    }
    let entry = TenantEntry { tenant_id, state };
    (entry, counted)
}

/// A tenant's snapshot, committed: its manifest's SHA-256, and the files and bytes uploaded.
async fn snapshot_and_commit(
    storage: &Storage,
    conn: Connection,
    database: Database,
    pending: &Pending<'_>,
    staging: &Path,
    options: &BackupOptions,
) -> Result<(Sha256Digest, (usize, u64))> {
    let own_key;
    let options = match (&options.sealer, &options.tenant_keys_dir, database) {
        (Some(operator), Some(dir), Database::Tenant { tenant_id }) => {
            let sealer = tenant_sealer(storage, dir, tenant_id, operator).await?;
            own_key = BackupOptions {
                sealer: Some(Arc::new(sealer)),
                ..options.clone()
            };
            &own_key
        }
        _ => options,
    };
    let (mut manifest, uploaded) =
        snapshot_database(storage, conn, database, pending, staging, options).await?;
    manifest.object_lock = pending.retention;
    claimed(&pending.claim).await?.check(storage).await?;
    let sha = commit(storage, &manifest).await?;
    Ok((sha, uploaded))
}

/// One export's share of `limits` when `ways` run side by side. The memory limit is split: each
/// DuckDB instance has its own. The threads are split only when they were configured; by default
/// an export gets every core and the kernel shares them. An export's thread idles whenever it
/// writes, and a lane idles between databases and after the last one, so one thread per lane left
/// a core unused: backing up 16M hits in five databases on 2 cores, two lanes took 24 to 27 s with
/// a thread each and 20 to 23 s with two (the bare exports, one after the other: 18 to 20 s). That
/// holds since exports keep no row order (`export.rs`); with it, DuckDB's `COPY` under a memory
/// limit made its threads wait on each other (16M hits in one database, 512 MiB: 6.2 to 12.2 s
/// with 2 threads, 5.8 to 6.6 s with 1). A configured thread count is a budget beside a live
/// server, and it is kept. Uploads to S3 (`uploads_use_cpu`) hash and send every byte and need the
/// cores DuckDB would take: with every core per export, a bench run of backups to S3 took 1.57× the
/// bare export at 4M hits where a thread per lane had taken 1.30×, so there the threads are split.
fn export_share(limits: DuckDbLimits, ways: usize, uploads_use_cpu: bool) -> DuckDbLimits {
    let share = limits.share(ways);
    let threads = match (limits.threads, share.memory_limit) {
        (Some(_), _) => share.threads,
        _ if uploads_use_cpu => share.threads,
        (None, Some(memory)) => Some(threads_within(memory)),
        (None, None) => None,
    };
    DuckDbLimits { threads, ..share }
}

/// Memory an export thread is given at least. Without insertion order, each thread of a `COPY`
/// fills a row group of its own, and nothing makes it wait for memory. Measured only on 2 cores: 2
/// threads in 512 MiB stayed within the limit. On more cores this keeps a share of the limit from
/// being cut into slices too small for a row group.
const MEMORY_PER_EXPORT_THREAD: u64 = 128 * 1024 * 1024;

/// Every core, or fewer when `memory` gives each less than [`MEMORY_PER_EXPORT_THREAD`].
fn threads_within(memory: u64) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    u32::try_from(cores.min(memory / MEMORY_PER_EXPORT_THREAD).max(1)).unwrap_or(1)
}

/// Which database of a cycle exports beside another, with its share of the limits, and which alone
/// with the whole limits ([`crate::lanes`]): with a thread per lane for uploads to S3, the last of
/// five databases exported on one thread while the other core idled, a quarter of a cycle at 1M and
/// 4M hits.
struct ExportLanes {
    lanes: Lanes,
    /// A turn per lane; a database that runs alone takes them all.
    turns: tokio::sync::Semaphore,
    ways: usize,
    /// A database's limits beside others and alone; `None` where the limits are not ours to set (a
    /// server that holds the databases), and then no database waits to run alone either.
    limits: Option<(DuckDbLimits, DuckDbLimits)>,
}

/// A database's lane, held while it exports and commits.
struct ExportLane<'a> {
    lanes: &'a Lanes,
    id: usize,
    way: Way,
    _turns: tokio::sync::SemaphorePermit<'a>,
}

impl ExportLanes {
    fn new(databases: usize, ways: usize, limits: Option<DuckDbLimits>, to_s3: bool) -> Self {
        let limits = limits.map(|l| (export_share(l, ways, to_s3), export_share(l, 1, to_s3)));
        // Waiting to run alone only pays when alone means more threads or memory.
        let alone_gains = limits.is_some_and(|(beside, alone)| beside != alone);
        ExportLanes {
            lanes: Lanes::new(databases, ways > 1 && alone_gains),
            turns: tokio::sync::Semaphore::new(ways),
            ways,
            limits,
        }
    }

    /// Database `id` (of `bytes`) starts: how it runs (alone once the others are done), and the
    /// limits to set on its instance for that way (`None`: leave them). Takes no connection: a
    /// `&Connection` held across the wait would make the cycle's future not `Send`.
    async fn enter(
        &self,
        id: usize,
        database: Database,
        bytes: u64,
    ) -> Result<(ExportLane<'_>, Option<DuckDbLimits>)> {
        let turn_failed = |e| Error::Internal(format!("export turn: {e}"));
        let turn = self.turns.acquire().await.map_err(turn_failed)?;
        let (way, turns) = match self.lanes.start(id, bytes) {
            Way::Beside => (Way::Beside, turn),
            Way::Alone => {
                drop(turn);
                let all = u32::try_from(self.ways).unwrap_or(u32::MAX);
                let turns = self.turns.acquire_many(all).await.map_err(turn_failed)?;
                tracing::debug!(%database, "the last export: alone, with the whole limits");
                (Way::Alone, turns)
            }
        };
        let limits = self
            .limits
            .map(|(beside, alone)| if way == Way::Alone { alone } else { beside });
        let lane = ExportLane {
            lanes: &self.lanes,
            id,
            way,
            _turns: turns,
        };
        Ok((lane, limits))
    }

    /// Database `id`, open on `conn`, enters its lane with its limits set.
    async fn enter_with(
        &self,
        id: usize,
        database: Database,
        conn: Connection,
    ) -> Result<(ExportLane<'_>, Connection)> {
        let bytes = database_bytes(&conn);
        let (lane, limits) = self.enter(id, database, bytes).await?;
        if let Some(limits) = limits
            && let Err(e) = limits.apply(&conn)
        {
            lane.end(false);
            return Err(Error::duckdb(database, "setting DuckDB's limits", e));
        }
        Ok((lane, conn))
    }

    /// A database that will not export after all.
    fn forgo(&self) {
        self.lanes.forgo();
    }
}

impl ExportLane<'_> {
    /// The export and commit ended; one that `succeeded` beside others sets the pace.
    fn end(self, succeeded: bool) {
        if self.way == Way::Beside {
            self.lanes.end(self.id, succeeded);
        }
    }
}

/// A database under this size exports in a DuckDB row group or two per table: about one core's work,
/// whatever it is given, so a cycle of only such databases leaves a core idle at two at once.
/// Measured with uploads to S3 (Garage on a 2-core machine, alternating runs): five databases of
/// ~80 MiB (1M hits) took 1.59 s three at once against 1.72 s two at once (medians of 8); at ~220 MiB
/// each (4M hits) 4.08 s against 4.19 s (of 3), within the noise, for 100 MiB more peak RSS; at
/// ~800 MiB (16M hits) no faster, for 300 MiB more.
pub const SMALL_DATABASE_BYTES: u64 = 128 * 1024 * 1024;

/// Whether the shared database and every tenant's file (with its WAL) are under
/// [`SMALL_DATABASE_BYTES`]; a tenant whose file is missing exports nothing, and one whose file is
/// not known (lent by a server) counts as large.
fn all_small(shared: &Connection, tenants: &[TenantSource]) -> bool {
    let small = |bytes: u64| bytes < SMALL_DATABASE_BYTES;
    let file_bytes = |path: &Path| -> Option<u64> {
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len());
        match len(path) {
            Ok(bytes) => Some(bytes + len(&path.with_extension("db.wal")).unwrap_or(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
            Err(_) => None,
        }
    };
    small(database_bytes(shared))
        && tenants
            .iter()
            .all(|t| t.path.as_deref().and_then(file_bytes).is_some_and(small))
}

/// Whether `ways` databases at once stay within a thread or memory budget that was set: each
/// gets at least a thread and [`hitkeep_data::MIN_MEMORY_LIMIT`], so one more could exceed it.
fn one_more_fits(limits: DuckDbLimits, ways: usize) -> bool {
    let ways_u64 = u64::try_from(ways).unwrap_or(u64::MAX);
    limits.threads.is_none_or(|t| t as usize >= ways)
        && limits
            .memory_limit
            .is_none_or(|m| m / ways_u64 >= hitkeep_data::MIN_MEMORY_LIMIT)
}

/// The size of the data in the database open on `conn`, the measure of its export; 0 when DuckDB
/// cannot say.
fn database_bytes(conn: &Connection) -> u64 {
    conn.query_row(
        "SELECT used_blocks * block_size FROM pragma_database_size() WHERE database_name = current_database()",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map_or(0, |bytes| u64::try_from(bytes).unwrap_or(0))
}

/// How an export's files are uploaded. DuckDB only appends to a file while its upload reads it, and
/// nothing writes it after, so a local location on the staging folder's filesystem may link it
/// instead of copying it. Should a file change all the same, the check at rest reads it again and
/// stores it again, as for a copy.
fn staged(options: &BackupOptions) -> TransferOptions {
    options.transfer.linking()
}

/// Exports one database and uploads its files; returns its manifest, not yet written, and the files
/// and bytes uploaded (an incremental snapshot names files stored before). The export starts at once,
/// into local staging; the uploads, and before them the folder's in-progress marker, wait for the
/// claim.
async fn snapshot_database(
    storage: &Storage,
    conn: Connection,
    database: Database,
    pending: &Pending<'_>,
    staging: &Path,
    options: &BackupOptions,
) -> Result<(Manifest, (usize, u64))> {
    if options.mode == BackupMode::Incremental {
        return incremental::snapshot_parts(storage, conn, database, pending, staging, options)
            .await;
    }
    let created_at = Timestamp::now();
    let dir = staging.join(database.folder());
    // Removed as soon as this database is done, so exports of many tenants never pile up on the data disk.
    let _export_dir = StagingDir(dir.clone());
    std::fs::create_dir_all(dir.parent().unwrap_or(staging)).map_err(|e| Error::io(&dir, e))?;
    let watch = ExportWatch::new(&dir).map_err(|e| Error::io(&dir, e))?;
    let export_dir = watch.dir().to_owned();
    let interrupt = conn.interrupt_handle();
    let mut exporting =
        tokio::task::spawn_blocking(move || export_database(&conn, database, &export_dir));
    let (claim, folder) = match claim_folder(storage, &pending.claim, database).await {
        Ok(claimed) => claimed,
        Err(e) => {
            watch.set(ExportState::Failed);
            abandon(&mut exporting, &interrupt).await;
            return Err(e);
        }
    };
    let (export, mut files, followed) = upload_while_exporting(
        storage, database, &folder, &claim, exporting, &watch, options,
    )
    .await?;
    tracing::debug!(%database, files = files.len(), followed, "uploaded while exporting");
    files.sort_by(|a, b| a.name.cmp(&b.name));
    options.progress.upload_finished(database);
    let mut manifest = new_manifest(database, created_at, &claim, export.duckdb_version, files);
    manifest.tables = export.tables;
    if let Some(sealer) = &options.sealer {
        seal_manifest(storage, &folder, &mut manifest, sealer, None).await?;
    }
    let uploaded = (manifest.files.len(), manifest.total_size());
    Ok((manifest, uploaded))
}

/// Writes what describes the data in `manifest` as its sealed part, encrypted, into `folder`, and
/// records to whom (format 3); an incremental one's partitions, too, as its index sealed to
/// `index_key` (format 4). The row counts and partitions stay in memory for the cycle's report;
/// [`Manifest::to_bytes`] never writes them in the clear once the manifest is encrypted.
pub(super) async fn seal_manifest(
    storage: &Storage,
    folder: &str,
    manifest: &mut Manifest,
    sealer: &Sealer,
    index_key: Option<&HostKey>,
) -> Result<()> {
    let sealed = Sealed {
        tables: manifest.tables.clone(),
    };
    let json = serde_json::to_vec(&sealed).expect("sealed parts always serialise");
    let bytes = sealer.seal_bytes(&json);
    let entry = write_sealed(storage, folder, SEALED_NAME, bytes).await?;
    let index = match manifest.is_incremental() {
        true => {
            let key = index_key.ok_or_else(|| {
                Error::Internal("an encrypted incremental snapshot without its index key".into())
            })?;
            let index = PartitionIndex {
                partitions: manifest.partitions.clone(),
            };
            let json = serde_json::to_vec(&index).expect("indexes always serialise");
            Some(write_sealed(storage, folder, INDEX_NAME, key.seal(&json)).await?)
        }
        false => None,
    };
    manifest.format_version = match index {
        Some(_) => ENCRYPTED_INCREMENTAL_FORMAT_VERSION,
        None => ENCRYPTED_FORMAT_VERSION,
    };
    manifest.encryption = Some(Encryption {
        scheme: AGE_X25519.to_owned(),
        recipients: sealer.recipients(),
        sealed: entry,
        index,
        tenant_key: sealer.tenant_key().map(str::to_owned),
    });
    Ok(())
}

/// A part of the manifest, sealed into `bytes`, written as `name` in `folder`; its entry.
async fn write_sealed(
    storage: &Storage,
    folder: &str,
    name: &str,
    bytes: std::io::Result<Vec<u8>>,
) -> Result<FileEntry> {
    let bytes = bytes.map_err(|e| Error::Internal(format!("sealing {name}: {e}")))?;
    let entry = FileEntry {
        name: name.to_owned(),
        size: bytes.len() as u64,
        sha256: Sha256Digest::of(&bytes).to_string(),
        object: None,
    };
    storage.write(&format!("{folder}/{name}"), bytes).await?;
    Ok(entry)
}

/// Uploads the local file `path` whole as `key`: encrypted as it streams when the cycle has a
/// sealer. A request the server refused as damaged is sent again, as [`Storage::upload_file`] does.
async fn store_file(
    storage: &Storage,
    path: &Path,
    key: &str,
    options: &BackupOptions,
) -> Result<hitkeep_storage::ObjectInfo> {
    let Some(sealer) = &options.sealer else {
        return Ok(storage.upload_file(path, key, &staged(options)).await?);
    };
    let mut attempt = 1;
    loop {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(path, e))?;
        let chunks = hitkeep_storage::file_chunks(file, options.transfer.chunk_size);
        let sealed = sealer
            .seal_stream(chunks, options.transfer.chunk_size)
            .map_err(|e| Error::io(path, e))?;
        // Never linked: the object holds other bytes than the file.
        match storage
            .upload_stream(path, key, sealed, &options.transfer)
            .await
        {
            Err(e) if e.kind() == ErrorKind::Integrity && attempt < 3 => {
                tracing::warn!(key, attempt, error = %e, "the server refused a damaged upload; sending it again");
                attempt += 1;
            }
            other => return Ok(other?),
        }
    }
}

/// The claimed id and the database's snapshot folder, once the claim is over; for a tenant, with the
/// folder's in-progress marker written (the shared folder's marker is the claim itself).
async fn claim_folder(
    storage: &Storage,
    claim: &PendingClaim<'_>,
    database: Database,
) -> Result<(Claim, String)> {
    let claim = claimed(claim).await?;
    let folder = format!("{}/{}", database.folder(), claim.id);
    if database != Database::Shared {
        storage
            .write(&format!("{folder}/{IN_PROGRESS_NAME}"), claim.marker())
            .await?;
    }
    Ok((claim, folder))
}

/// A full snapshot's manifest of `files` (sorted by name), before its tables are counted in.
fn new_manifest(
    database: Database,
    created_at: Timestamp,
    claim: &Claim,
    duckdb_version: String,
    files: Vec<FileEntry>,
) -> Manifest {
    Manifest {
        format: "hitkeep-snapshot".to_owned(),
        format_version: FULL_FORMAT_VERSION,
        snapshot_id: claim.id,
        database,
        created_at,
        tool: tool(),
        duckdb_version,
        files,
        tables: Default::default(),
        tenants: Vec::new(),
        layout: None,
        default_tenant: None,
        source: Some(claim.source),
        sequence: Some(claim.sequence),
        partitions: Vec::new(),
        encryption: None,
        object_lock: None,
    }
}

/// Stops an export that nothing will upload, and waits for its end: it must not go on writing into a
/// staging folder about to be removed. DuckDB's interrupt stops the statement running when it
/// comes, so it is repeated until the export has returned.
async fn abandon<T>(
    exporting: &mut tokio::task::JoinHandle<Result<T>>,
    interrupt: &duckdb::InterruptHandle,
) {
    loop {
        interrupt.interrupt();
        if tokio::time::timeout(POLL, &mut *exporting).await.is_ok() {
            return;
        }
    }
}

/// Uploads the files of an export as DuckDB writes them (see `follow.rs`), and returns the export's
/// outcome, an entry per file and how many files were followed while being written. Every upload runs
/// to its end, or is aborted, before this returns: nothing keeps writing into a staging folder about
/// to be removed. On a failure, what was stored is removed while `owner` still holds the folder.
async fn upload_while_exporting(
    storage: &Storage,
    database: Database,
    folder: &str,
    owner: &Claim,
    mut exporting: tokio::task::JoinHandle<Result<Export>>,
    watch: &ExportWatch,
    options: &BackupOptions,
) -> Result<(Export, Vec<FileEntry>, usize)> {
    let mut uploads = futures::stream::FuturesUnordered::new();
    let mut started = HashSet::new();
    let (mut export, mut failure, mut followed) = (None, None, 0);
    let mut uploaded: Vec<Uploaded> = Vec::new();
    let mut progress = DeferredProgress::new(database, options.progress.as_ref());
    loop {
        let free = options
            .file_concurrency
            .max(1)
            .saturating_sub(uploads.len());
        let found = if free == 0 {
            // Nothing to start, and what waits does not matter while uploads run: skip the scan.
            Ok((Vec::new(), 0))
        } else {
            next_files(watch, &started, options, free)
        };
        let (next, waiting) = match found {
            Ok(found) => found,
            // Not returned at once: the export and the uploads must end before the folder goes.
            Err(e) => {
                watch.set(ExportState::Failed);
                failure.get_or_insert(e);
                (Vec::new(), 0)
            }
        };
        // After a failure nothing new starts: a failed export's files would only be removed again.
        let failed = failure.is_some() || matches!(export, Some(Err(_)));
        if !failed {
            for file in next {
                followed += usize::from(file.open);
                started.insert(file.path.clone());
                let during_export = export.is_none();
                uploads.push(upload_export_file(
                    storage,
                    folder,
                    file,
                    during_export,
                    watch,
                    options,
                ));
            }
        }
        if export.is_some() && uploads.is_empty() && (failed || waiting == 0) {
            break;
        }
        tokio::select! {
            joined = &mut exporting, if export.is_none() => {
                let result = joined
                    .map_err(|e| Error::Internal(format!("export task: {e}")))
                    .and_then(|r| r);
                if watch.state() == ExportState::Running {
                    watch.set(if result.is_ok() { ExportState::Finished } else { ExportState::Failed });
                }
                if let Some(Err(e)) = result.as_ref().ok().map(|export| progress.announce(export)) {
                    watch.set(ExportState::Failed);
                    failure.get_or_insert(e);
                }
                export = Some(result);
            }
            Some(done) = uploads.next() => match done {
                Ok(file) => {
                    progress.file_uploaded(&file.entry);
                    uploaded.push(file);
                }
                Err(e) => {
                    // Stop the followers (their uploads abort) and start nothing new.
                    watch.set(ExportState::Failed);
                    failure.get_or_insert(e);
                }
            },
            () = tokio::time::sleep(POLL) => {}
        }
    }
    // Every upload started, finished or not: one can be stored and still fail on its way back.
    let stored: Vec<String> = started
        .iter()
        .map(|path| format!("{folder}/{}", file_name(path)))
        .collect();
    let export = export.unwrap_or_else(|| Err(Error::Internal("the export did not run".into())));
    let outcome = match (export, failure) {
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(export), None) => check_uploads(storage, folder, export, uploaded, options).await,
    };
    if outcome.is_err() {
        remove_stored(storage, folder, owner, &stored).await;
    }
    outcome.map(|(export, files)| (export, files, followed))
}

/// Checks the uploads of a finished export at rest, and that every exported file was uploaded.
async fn check_uploads(
    storage: &Storage,
    folder: &str,
    export: Export,
    uploaded: Vec<Uploaded>,
    options: &BackupOptions,
) -> Result<(Export, Vec<FileEntry>)> {
    let files = check_at_rest(storage, folder, uploaded, options).await?;
    let names: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    if let Some(missed) = export
        .files
        .iter()
        .find(|p| !names.contains(file_name(p).as_str()))
    {
        return Err(Error::Internal(format!(
            "{} was exported but not uploaded",
            missed.display()
        )));
    }
    Ok((export, files))
}

/// Removes what a failed database stored. A file can be uploaded whole before the failure shows
/// (DuckDB closes it, and a closed file is complete to its follower), and nothing will ever list it
/// in a manifest. Only while `owner` still holds the snapshot id and the folder has no manifest: on a
/// service that ignores conditional writes a lost claim shows late, and the keys are then another
/// writer's too. Best effort: the folder keeps its in-progress marker, so retention clears what is
/// left once the folder is abandoned.
async fn remove_stored(storage: &Storage, folder: &str, owner: &Claim, keys: &[String]) {
    let committed = storage.stat(&format!("{folder}/{MANIFEST_NAME}")).await;
    let ours = match (owner.check(storage).await, committed) {
        (Ok(()), Ok(None)) => Ok(()),
        (Ok(()), Ok(Some(_))) => Err("the folder has a manifest".to_owned()),
        (Err(e), _) => Err(e.to_string()),
        (_, Err(e)) => Err(e.to_string()),
    };
    if let Err(why) = ours {
        tracing::warn!(
            folder,
            why,
            "the objects of a failed snapshot are left in place: the folder may be another writer's"
        );
        return;
    }
    for key in keys {
        if let Err(e) = storage.delete(key).await {
            tracing::warn!(key, error = %e, "could not remove an object of a failed snapshot");
        }
    }
}

/// The files to start uploading now, at most `free`: closed ones first (they finish fast), then growing
/// ones, biggest first, once they hold a part's worth. Also how many are not started yet.
fn next_files(
    watch: &ExportWatch,
    started: &HashSet<PathBuf>,
    options: &BackupOptions,
    free: usize,
) -> Result<(Vec<ExportFile>, usize)> {
    let mut files: Vec<ExportFile> = watch.scan(started).map_err(|e| Error::io(watch.dir(), e))?;
    let waiting = files.len();
    let part = options.transfer.chunk_size as u64;
    files.retain(|f| !f.open || f.size >= part);
    files.sort_by_key(|f| (f.open, std::cmp::Reverse(f.size)));
    files.truncate(free);
    Ok((files, waiting))
}

/// A file as uploaded.
struct Uploaded {
    path: PathBuf,
    entry: FileEntry,
    sent: Sent,
}

/// What the check at rest must do with an uploaded file.
enum Sent {
    /// Its upload began after the export ended: the file was at rest already, nothing to check.
    AtRest,
    /// Its upload began while the export ran: these bytes were sent, and the file at rest must hold
    /// exactly them.
    WhileExporting(Fingerprint),
    /// The server refused it as damaged; a stream cannot be replayed, so it is sent again at rest.
    Refused,
}

async fn upload_export_file(
    storage: &Storage,
    folder: &str,
    file: ExportFile,
    during_export: bool,
    watch: &ExportWatch,
    options: &BackupOptions,
) -> Result<Uploaded> {
    let name = file_name(&file.path);
    let key = format!("{folder}/{name}");
    if !during_export && !file.open {
        let info = store_file(storage, &file.path, &key, options).await?;
        tracing::debug!(file = name, size = info.size, "uploaded at rest");
        return Ok(Uploaded {
            path: file.path,
            entry: FileEntry {
                name,
                size: info.size,
                sha256: info.sha256.to_string(),
                object: None,
            },
            sent: Sent::AtRest,
        });
    }
    // While the export runs, even a closed file is read through the tap: the check at rest compares
    // the file with what was sent, fingerprinted on the way, never with a second SHA-256 pass.
    let mut bytes = Tapped::new(follow(
        file.path.clone(),
        options.transfer.chunk_size,
        watch.clone(),
        !file.open,
    ));
    let info = match &options.sealer {
        None => {
            storage
                .upload_stream(&file.path, &key, &mut bytes, &staged(options))
                .await
        }
        Some(sealer) => {
            let sealed = sealer
                .seal_stream(&mut bytes, options.transfer.chunk_size)
                .map_err(|e| Error::io(&file.path, e))?;
            // Never linked: the object holds other bytes than the file.
            storage
                .upload_stream(&file.path, &key, sealed, &options.transfer)
                .await
        }
    };
    let (size, sha256, sent) = match info {
        Ok(info) => (
            info.size,
            info.sha256.to_string(),
            Sent::WhileExporting(bytes.fingerprint()),
        ),
        Err(e) if e.kind() == ErrorKind::Integrity => {
            tracing::warn!(key, error = %e, "the upload did not store what was read; it is sent again once the export ends");
            (0, String::new(), Sent::Refused)
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(file = name, size, followed = file.open, "uploaded");
    Ok(Uploaded {
        path: file.path,
        entry: FileEntry {
            name,
            size,
            sha256,
            object: None,
        },
        sent,
    })
}

/// Fingerprints again, once the export is over, every file whose upload began while it ran, and
/// uploads again whole any whose bytes at rest differ from what was sent.
async fn check_at_rest(
    storage: &Storage,
    folder: &str,
    uploaded: Vec<Uploaded>,
    options: &BackupOptions,
) -> Result<Vec<FileEntry>> {
    futures::stream::iter(uploaded)
        .map(|file| async move {
            match file.sent {
                Sent::AtRest => return Ok(file.entry),
                Sent::Refused => {}
                Sent::WhileExporting(sent) => {
                    let path = file.path.clone();
                    let at_rest = tokio::task::spawn_blocking(move || Fingerprint::of_file(&path))
                        .await
                        .map_err(|e| Error::Internal(format!("fingerprint task: {e}")))?
                        .map_err(|e| Error::io(&file.path, e))?;
                    if at_rest == sent {
                        return Ok(file.entry);
                    }
                    tracing::warn!(
                        file = file.entry.name,
                        sent = sent.size(),
                        at_rest = at_rest.size(),
                        "the file changed after its upload began; sending it again"
                    );
                }
            }
            let key = format!("{folder}/{}", file.entry.name);
            let info = store_file(storage, &file.path, &key, options).await?;
            Ok(FileEntry {
                size: info.size,
                sha256: info.sha256.to_string(),
                ..file.entry
            })
        })
        .buffer_unordered(2)
        .try_collect()
        .await
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Progress for a database whose files upload while it is exported: the totals are known only when
/// the export ends, so files done before that are reported right after the announcement.
struct DeferredProgress<'a> {
    database: Database,
    progress: &'a dyn Progress,
    early: Option<Vec<(String, u64)>>,
}

impl<'a> DeferredProgress<'a> {
    fn new(database: Database, progress: &'a dyn Progress) -> Self {
        DeferredProgress {
            database,
            progress,
            early: Some(Vec::new()),
        }
    }

    fn announce(&mut self, export: &Export) -> Result<()> {
        let mut total = 0;
        for path in &export.files {
            total += std::fs::metadata(path)
                .map_err(|e| Error::io(path, e))?
                .len();
        }
        self.progress
            .upload_started(self.database, export.files.len(), total);
        for (name, size) in self.early.take().unwrap_or_default() {
            self.progress.file_uploaded(self.database, &name, size);
        }
        Ok(())
    }

    fn file_uploaded(&mut self, entry: &FileEntry) {
        match &mut self.early {
            Some(early) => early.push((entry.name.clone(), entry.size)),
            None => self
                .progress
                .file_uploaded(self.database, &entry.name, entry.size),
        }
    }
}

/// Writes the manifest (the snapshot now exists; an incremental one once its pool objects are
/// confirmed), then removes the in-progress marker. A locked snapshot's objects are locked before
/// the manifest names them, and the manifest after it is written: a snapshot that lists as complete
/// is locked whole.
async fn commit(storage: &Storage, manifest: &Manifest) -> Result<Sha256Digest> {
    if manifest.is_incremental() {
        incremental::check_pool(storage, manifest).await?;
    }
    let folder = format!("{}/{}", manifest.database.folder(), manifest.snapshot_id);
    if let Some(lock) = manifest.object_lock {
        lock_objects(storage, manifest.stored_objects(&folder), lock).await?;
    }
    let bytes = manifest.to_bytes();
    let sha = Sha256Digest::of(&bytes);
    let key = format!("{folder}/{MANIFEST_NAME}");
    storage.write(&key, bytes).await?;
    if let Some(lock) = manifest.object_lock {
        lock_objects(storage, vec![key], lock).await?;
    }
    if let Err(e) = storage
        .delete(&format!("{folder}/{IN_PROGRESS_NAME}"))
        .await
    {
        tracing::warn!(error = %e, "could not remove the in-progress marker; the snapshot is complete regardless");
    }
    Ok(sha)
}

/// The retention this cycle's objects get: `days` from the server's clock (this machine's
/// only when the server sends no `Date`), once the bucket is seen to have Object Lock at all.
async fn lock_until(storage: &Storage, days: NonZeroU32, mode: LockMode) -> Result<LockRecord> {
    let bucket = storage.bucket_object_lock().await?;
    if !bucket.enabled {
        return Err(Error::ObjectLockOff {
            location: storage.location().to_string(),
        });
    }
    let now = bucket.server_time.unwrap_or_else(|| {
        tracing::warn!("the S3 service sent no Date header; Object Lock days are counted from this machine's clock");
        Timestamp::now()
    });
    let days = jiff::SignedDuration::from_hours(24 * i64::from(days.get()));
    let until = now
        .checked_add(days)
        .map_err(|e| Error::Internal(format!("retain-until date: {e}")))?;
    Ok(LockRecord {
        mode,
        retain_until: until,
    })
}

/// Sets `lock` on each of `keys` (a few at a time).
async fn lock_objects(storage: &Storage, keys: Vec<String>, lock: LockRecord) -> Result<()> {
    let want = Retention {
        mode: lock.mode,
        until: lock.retain_until,
    };
    futures::stream::iter(keys)
        .map(|key| async move { storage.retain(&key, want).await })
        .buffer_unordered(LOCKS_AT_ONCE)
        .try_collect::<()>()
        .await
        .map_err(Error::from)
}

/// Retention requests sent at once.
const LOCKS_AT_ONCE: usize = 16;

pub(crate) fn tool() -> String {
    format!("hitkeep-rs {}", env!("CARGO_PKG_VERSION"))
}

/// A database's export folder inside the cycle's staging folder, removed when it is done, whichever
/// way it ends.
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove the staging directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{Seek as _, Write as _};

    use hitkeep_storage::ListMode;
    use hitkeep_testkit::S3Server;

    use super::*;

    /// `auto` concurrency adds a lane only when every database is measurably small.
    #[test]
    fn a_cycle_is_small_only_when_every_database_is_measured_under_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Connection::open(dir.path().join("shared.db")).unwrap();
        shared
            .execute_batch("CREATE TABLE t AS SELECT range AS i FROM range(1000)")
            .unwrap();
        let layout = DataLayout::new(dir.path().join("shared.db"), dir.path().join("data"));
        let tenant = |bytes: u64| {
            let id = Uuid::new_v4();
            let path = layout.tenant_db(id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            // Sparse: only its length is looked at.
            std::fs::File::create(&path)
                .unwrap()
                .set_len(bytes)
                .unwrap();
            TenantSource::from_layout(&layout, id)
        };
        let small = || tenant(SMALL_DATABASE_BYTES - 1);
        assert!(all_small(&shared, &[]));
        assert!(all_small(&shared, &[small(), small()]));
        assert!(!all_small(
            &shared,
            &[small(), tenant(SMALL_DATABASE_BYTES)]
        ));
        // A tenant with no file to measure (lent by a server without one) counts as large.
        let lent = TenantSource::open(Uuid::new_v4(), Connection::open_in_memory().unwrap());
        assert!(!all_small(&shared, &[small(), lent]));
        // A tenant whose file is missing exports nothing: it does not count.
        let missing = TenantSource::from_layout(&layout, Uuid::new_v4());
        assert!(all_small(&shared, &[small(), missing]));
        // A tenant's WAL counts with its file.
        let walled = small();
        let wal = layout.tenant_db(walled.id).with_extension("db.wal");
        std::fs::File::create(wal).unwrap().set_len(2).unwrap();
        assert!(!all_small(&shared, &[walled]));

        // Not past a budget that was set: each database gets a thread and 64 MiB at least.
        let mib = 1024 * 1024;
        let limits = |threads, memory| DuckDbLimits {
            memory_limit: memory,
            threads,
        };
        assert!(one_more_fits(limits(None, None), 3));
        assert!(one_more_fits(limits(Some(3), Some(192 * mib)), 3));
        assert!(!one_more_fits(limits(Some(2), None), 3));
        assert!(!one_more_fits(limits(None, Some(191 * mib)), 3));

        // Only for a concurrency nobody set, and not inside a server that holds the databases.
        struct Lends;
        impl hitkeep_data::HeldDatabases for Lends {
            fn connect(&self, _: &Path) -> Option<Result<Connection, duckdb::Error>> {
                None
            }
        }
        assert!(BackupOptions::for_layout(&layout).one_more_when_small);
        let set = BackupOptions::for_layout(&layout).with_concurrency(2);
        assert!(!set.one_more_when_small);
        let held = layout.clone().with_held(Arc::new(Lends));
        assert!(!BackupOptions::for_layout(&held).one_more_when_small);
    }

    #[test]
    fn exports_side_by_side_split_memory_and_threads_when_configured_or_uploading_to_s3() {
        let mib = 1024 * 1024;
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        let share = |memory_limit, threads, ways| {
            export_share(
                DuckDbLimits {
                    memory_limit,
                    threads,
                },
                ways,
                false,
            )
        };
        assert_eq!(
            share(Some(1024 * mib), None, 2),
            DuckDbLimits {
                memory_limit: Some(512 * mib),
                threads: Some(cores.min(4)),
            },
            "every core, as long as each thread keeps 128 MiB"
        );
        assert_eq!(share(Some(256 * mib), None, 4).threads, Some(1));
        assert_eq!(
            share(None, None, 2).threads,
            None,
            "no limit: DuckDB's default"
        );
        assert_eq!(
            share(None, Some(4), 2).threads,
            Some(2),
            "a budget is split"
        );
        assert_eq!(share(None, Some(4), 1).threads, Some(4));
        let to_s3 = export_share(DuckDbLimits::default(), 2, true);
        assert_eq!(
            to_s3.threads,
            Some((cores / 2).max(1)),
            "uploads to S3 need cores too"
        );
    }

    #[tokio::test]
    async fn the_last_export_runs_alone_with_the_whole_limits_once_the_others_are_done() {
        let mib = 1024 * 1024;
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        let limits = DuckDbLimits {
            memory_limit: Some(1024 * mib),
            threads: None,
        };
        let (mb, shared) = (1 << 20, Database::Shared);
        let tenant = Database::Tenant {
            tenant_id: Uuid::nil(),
        };
        let lanes = ExportLanes::new(3, 2, Some(limits), true);
        let beside = DuckDbLimits {
            memory_limit: Some(512 * mib),
            threads: Some((cores / 2).max(1)),
        };
        // The second starts first and is smaller: once the first has finished, the pace it set
        // says the second is overdue, whatever the timing.
        let (two, two_limits) = lanes.enter(1, tenant, 50 * mb).await.unwrap();
        let (one, one_limits) = lanes.enter(0, shared, 100 * mb).await.unwrap();
        assert_eq!((one.way, one_limits), (Way::Beside, Some(beside)));
        assert_eq!((two.way, two_limits), (Way::Beside, Some(beside)));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        one.end(true);
        let third_enters = lanes.enter(2, tenant, 100 * mb);
        tokio::pin!(third_enters);
        assert!(
            futures::poll!(third_enters.as_mut()).is_pending(),
            "the last waits for the second to end"
        );
        two.end(true);
        let (three, three_limits) = third_enters.await.unwrap();
        let whole = DuckDbLimits {
            memory_limit: Some(1024 * mib),
            threads: None,
        };
        assert_eq!((three.way, three_limits), (Way::Alone, Some(whole)));

        // Limits that are not ours to set, or that alone would not raise: nobody waits.
        for limits in [None, Some(DuckDbLimits::default())] {
            let lanes = ExportLanes::new(2, 2, limits, false);
            let (one, _) = lanes.enter(0, shared, mb).await.unwrap();
            one.end(true);
            let (two, set) = lanes.enter(1, tenant, mb).await.unwrap();
            assert_eq!(two.way, Way::Beside);
            assert_eq!(set, limits.map(|_| DuckDbLimits::default()));
        }
    }

    #[tokio::test]
    async fn an_export_lane_sets_its_limits_on_the_instance() {
        let lanes = ExportLanes::new(
            1,
            1,
            Some(DuckDbLimits {
                memory_limit: Some(300 << 20),
                threads: Some(1),
            }),
            true,
        );
        let conn = Connection::open_in_memory().unwrap();
        let (lane, conn) = lanes.enter_with(0, Database::Shared, conn).await.unwrap();
        let setting = |name: &str| -> String {
            conn.query_row(
                &format!("SELECT current_setting('{name}')::VARCHAR"),
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(setting("memory_limit"), "300.0 MiB");
        assert_eq!(setting("threads"), "1");
        lane.end(true);
    }

    /// The in-process S3 server, a storage on it and a scratch directory, with parts small enough
    /// that a table of a few MiB is followed while DuckDB writes it.
    struct Setup {
        _server: S3Server,
        storage: Storage,
        dir: tempfile::TempDir,
        options: BackupOptions,
        /// A real claim on the server: what a failed upload checks before it removes anything.
        claim: Claim,
    }

    impl Setup {
        async fn new() -> Setup {
            let server = S3Server::start().await.unwrap();
            let storage = server.storage("follow").await;
            let dir = tempfile::tempdir().unwrap();
            let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
            let mut options = BackupOptions::for_layout(&layout);
            options.transfer = TransferOptions::new(256 * 1024, 2);
            let claim = Claim::take(&storage, SourceId::random()).await.unwrap();
            Setup {
                _server: server,
                storage,
                dir,
                options,
                claim,
            }
        }

        fn export_dir(&self) -> PathBuf {
            self.dir.path().join("export")
        }

        /// Runs `export` (given the directory to write) as the export, uploading under `folder`
        /// while it runs.
        async fn upload(
            &self,
            folder: &str,
            export: impl FnOnce(PathBuf) -> Result<Export> + Send + 'static,
        ) -> Result<(Export, Vec<FileEntry>, usize)> {
            let watch = ExportWatch::new(&self.export_dir()).unwrap();
            let target = watch.dir().to_owned();
            let exporting = tokio::task::spawn_blocking(move || export(target));
            let storage = &self.storage;
            upload_while_exporting(
                storage,
                Database::Shared,
                folder,
                &self.claim,
                exporting,
                &watch,
                &self.options,
            )
            .await
        }

        /// Waits (from the export's thread) until `key` is stored; fails the test after a minute.
        fn wait_until_stored(storage: &Storage, runtime: &tokio::runtime::Handle, key: &str) {
            runtime.block_on(async {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
                while storage.stat(key).await.unwrap().is_none() {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{key} was never stored"
                    );
                    tokio::time::sleep(POLL).await;
                }
            });
        }

        /// The bytes stored under `key`.
        async fn stored(&self, key: &str) -> Vec<u8> {
            let local = self.dir.path().join("stored");
            self.storage
                .download_file(key, &local, None, &TransferOptions::default())
                .await
                .unwrap();
            std::fs::read(local).unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_table_is_uploaded_while_duckdb_exports_it() {
        let setup = Setup::new().await;
        let conn = Connection::open(setup.dir.path().join("src.db")).unwrap();
        conn.execute_batch(
            "SET threads = 1;
             SET async_threads = 3;
             CREATE TABLE hits AS SELECT range AS id, md5(range::VARCHAR) AS path FROM range(1500000);
             CREATE TABLE sites AS SELECT range AS id FROM range(3);",
        )
        .unwrap();
        let (export, files, followed) = setup
            .upload("s", move |dir| {
                let export = export_database(&conn, Database::Shared, &dir);
                let after: i64 = conn
                    .query_row("SELECT current_setting('async_threads')", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(after, 3, "the caller's async_threads is put back");
                export
            })
            .await
            .unwrap();

        assert!(followed >= 1, "the hits table was followed while written");
        assert_eq!(export.tables["hits"], 1_500_000);
        assert_eq!(files.len(), export.files.len());
        for file in &files {
            let local = std::fs::read(setup.export_dir().join(&file.name)).unwrap();
            assert_eq!(file.size, local.len() as u64, "{}", file.name);
            assert_eq!(
                file.sha256,
                Sha256Digest::of(&local).to_string(),
                "{}",
                file.name
            );
            let key = format!("s/{}", file.name);
            assert!(setup.stored(&key).await == local, "{key} is the file");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_rewritten_after_its_upload_began_is_sent_again() {
        let setup = Setup::new().await;
        // Not an append-only writer: the head of the file changes after most of it was sent.
        let (_, files, followed) = setup
            .upload("r", |dir| {
                std::fs::create_dir(&dir).unwrap();
                let path = dir.join("t.parquet");
                let mut file = std::fs::File::create(&path).unwrap();
                for _ in 0..12 {
                    file.write_all(&[7u8; 128 * 1024]).unwrap();
                    std::thread::sleep(POLL * 2);
                }
                file.rewind().unwrap();
                file.write_all(b"rewritten").unwrap();
                drop(file);
                Ok(Export {
                    tables: BTreeMap::new(),
                    files: vec![path],
                    duckdb_version: "test".into(),
                })
            })
            .await
            .unwrap();

        assert_eq!(followed, 1);
        let local = std::fs::read(setup.export_dir().join("t.parquet")).unwrap();
        assert!(local.starts_with(b"rewritten"));
        assert_eq!(files[0].sha256, Sha256Digest::of(&local).to_string());
        assert!(setup.stored("r/t.parquet").await == local);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_file_changed_after_its_upload_while_the_export_runs_is_sent_again() {
        let setup = Setup::new().await;
        let (storage, runtime) = (setup.storage.clone(), tokio::runtime::Handle::current());
        let (_, files, followed) = setup
            .upload("c", move |dir| {
                std::fs::create_dir(&dir).unwrap();
                let path = dir.join("t.parquet");
                // Written whole and closed before the uploader sees it: uploaded as a closed file.
                let original = vec![3u8; 300 * 1024];
                std::fs::write(&path, &original).unwrap();
                // Once it is stored, the export (still running) changes it in place, same size.
                Setup::wait_until_stored(&storage, &runtime, "c/t.parquet");
                let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                file.seek(std::io::SeekFrom::Start(100 * 1024)).unwrap();
                file.write_all(b"changed in place").unwrap();
                drop(file);
                Ok(Export {
                    tables: BTreeMap::new(),
                    files: vec![path],
                    duckdb_version: "test".into(),
                })
            })
            .await
            .unwrap();

        assert_eq!(followed, 0, "uploaded as a closed file, not followed");
        let local = std::fs::read(setup.export_dir().join("t.parquet")).unwrap();
        assert_eq!(local.len(), 300 * 1024);
        assert_eq!(files[0].size, local.len() as u64);
        assert_eq!(files[0].sha256, Sha256Digest::of(&local).to_string());
        assert!(
            setup.stored("c/t.parquet").await == local,
            "the stored object is the file at rest, not what was first sent"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_export_fails_the_database_after_its_uploads_end() {
        let setup = Setup::new().await;
        let err = setup
            .upload("f", |dir| {
                std::fs::create_dir(&dir).unwrap();
                let mut file = std::fs::File::create(dir.join("t.parquet")).unwrap();
                file.write_all(&[1u8; 600 * 1024]).unwrap();
                std::thread::sleep(POLL * 10);
                Err(Error::Internal("disk full".into()))
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let left = setup.storage.list("f", ListMode::Recursive).await.unwrap();
        assert!(left.is_empty(), "no object of an aborted upload: {left:?}");
    }

    /// An export into `folder` that writes one closed file, waits until it is stored whole, runs
    /// `meanwhile` and fails; returns the objects left under `folder`.
    async fn fail_once_stored(
        setup: &Setup,
        folder: &'static str,
        meanwhile: impl FnOnce(&Storage, &tokio::runtime::Handle) + Send + 'static,
    ) -> Vec<hitkeep_storage::Entry> {
        let storage = setup.storage.clone();
        let runtime = tokio::runtime::Handle::current();
        let err = setup
            .upload(folder, move |dir| {
                std::fs::create_dir(&dir).unwrap();
                std::fs::write(dir.join("t.parquet"), vec![2u8; 600 * 1024]).unwrap();
                // Closed, so complete to the uploader: it is stored whole before the export fails.
                Setup::wait_until_stored(&storage, &runtime, &format!("{folder}/t.parquet"));
                meanwhile(&storage, &runtime);
                Err(Error::Internal("disk full".into()))
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        setup
            .storage
            .list(folder, ListMode::Recursive)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_stored_whole_before_its_export_fails_is_removed() {
        let setup = Setup::new().await;
        let left = fail_once_stored(&setup, "w", |_, _| {}).await;
        assert!(
            left.is_empty(),
            "a failed database leaves no object: {left:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_database_whose_claim_was_taken_over_removes_nothing() {
        let setup = Setup::new().await;
        let marker = setup.claim.marker_key();
        let left = fail_once_stored(&setup, "l", move |storage, runtime| {
            // Another writer, on a service that ignores If-None-Match, took the id meanwhile: the
            // keys are its files too.
            let theirs = br#"{"tool":"hitkeep","started_at":"2026-12-01T00:00:00Z","run":"other"}"#;
            runtime
                .block_on(storage.write(&marker, theirs.to_vec()))
                .unwrap();
        })
        .await;
        assert_eq!(
            left.len(),
            1,
            "another writer's file is left alone: {left:?}"
        );
    }
}
