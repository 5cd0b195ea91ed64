//! Restore, planned then executed, and safe per database: download and verify into staging beside the
//! target, import into a temporary file (what `IMPORT DATABASE` would make, keys built after the data), check it, and only then move the old database aside
//! and the new one into place. Until that final rename the original database and WAL are untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hitkeep_data::{DataLayout, DuckDbLimits, TenantLayout};
use hitkeep_storage::{ListMode, ObjectInfo, Sha256Digest, Storage, TransferOptions};
use serde::Serialize;
use uuid::Uuid;

use crate::SnapshotId;
use crate::catalog::{Catalog, SnapshotState};
use crate::error::{CountMismatch, Error, Result};
use crate::lanes::{Lanes, Way};
use crate::manifest::{
    Database, FileEntry, IN_PROGRESS_NAME, MANIFEST_NAME, Manifest, ManifestError, SEALED_NAME,
    Sealed, TenantState,
};
use crate::scratch::{ScratchLock, StaleScratch, scratch_prefix};
use crate::swap::{Scratch, swap_into_place};
use futures::StreamExt as _;
use hitkeep_seal::{OpenFailure, Opener, Unopened};

/// DuckDB storage version written by restores: HitKeep Go ships DuckDB 1.5, which cannot read files
/// created at DuckDB 2.0's default.
pub const RESTORE_STORAGE_VERSION: &str = hitkeep_data::STORAGE_VERSION;

/// Which databases to restore.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RestoreSelection {
    /// Restore the shared database only.
    pub shared_only: bool,
    /// Restore only these tenants, and not the shared database (empty: the shared database and every
    /// tenant in the snapshot).
    pub tenants: Vec<Uuid>,
}

impl RestoreSelection {
    /// Every database in the snapshot, or a subset.
    pub fn new(shared_only: bool, tenants: Vec<Uuid>) -> Self {
        RestoreSelection {
            shared_only,
            tenants,
        }
    }
}

/// One database to restore.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RestoreItem {
    /// Which database.
    pub database: Database,
    /// Where it goes.
    pub target: PathBuf,
    /// Bytes to download.
    pub bytes: u64,
    /// Its manifest; `None` for a legacy snapshot, which cannot be verified.
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    /// The SHA-256 of its manifest as the cycle's shared manifest recorded it, for tenants.
    pub manifest_sha256: Option<String>,
}

/// What a restore will do. Nothing is changed until [`RestorePlan::commit_all`], and
/// [`RestorePlan::prepare_all`] prepares every database (and checks them together) before any commits.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RestorePlan {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Whether it is a manifest-less (HitKeep Go) snapshot.
    pub legacy: bool,
    /// The databases, the shared one (when selected) first.
    pub items: Vec<RestoreItem>,
    /// Tenants the cycle lists as failed: restoring them needs an older snapshot.
    pub unavailable: Vec<(Uuid, String)>,
    /// The cycle's layout, when its manifest records it (a legacy snapshot's is read from the shared
    /// database once imported, see [`RestorePlan::prepare_all`]).
    pub layout: Option<TenantLayout>,
    /// The default tenant, when the cycle's manifest records it.
    pub default_tenant: Option<Uuid>,
    /// Whether only the shared database was asked for.
    pub shared_only: bool,
    /// The installation that wrote the cycle, when its manifest records it. A whole restore into a
    /// data path without a source id of its own adopts it ([`DataLayout::adopt_source_id`]).
    pub source: Option<hitkeep_data::SourceId>,
    /// Where the default tenant's database goes, to say what HitKeep finds there.
    #[serde(skip)]
    data: DataLayout,
    /// DuckDB's limits for the imports, from the layout.
    #[serde(skip)]
    limits: DuckDbLimits,
    /// Turns for the imports, [`IMPORTS_AT_ONCE`] at once, however the plan's items are prepared
    /// (see [`RestorePlan::import_in_turn`]). Clones of the plan share them.
    #[serde(skip)]
    import_turn: Arc<tokio::sync::Semaphore>,
    /// Whether the last import to start may run alone ([`crate::lanes`]); off only where a test needs
    /// imports side by side.
    #[serde(skip)]
    last_alone: bool,
    /// Opens encrypted snapshots; `None` refuses them (nothing is changed).
    #[serde(skip)]
    opener: Option<Arc<Opener>>,
}

impl RestorePlan {
    /// Plans the restore of `snapshot` (or the newest committed cycle, else the newest legacy one).
    pub fn new(
        catalog: &Catalog,
        snapshot: Option<SnapshotId>,
        layout: &DataLayout,
        selection: &RestoreSelection,
    ) -> Result<RestorePlan> {
        // Restoring chosen tenants leaves the shared database alone (rolling it back would roll back every
        // other team's users and sites), so it needs only their snapshots, even if the cycle was pruned.
        let tenant_only = !selection.tenants.is_empty();
        let shared = match snapshot {
            Some(id) => catalog.find(Database::Shared, id),
            None => catalog.latest_committed().or_else(|| {
                catalog
                    .snapshots(Database::Shared)
                    .iter()
                    .rev()
                    .find(|s| s.state == SnapshotState::Legacy)
            }),
        };
        let (id, legacy, cycle) = match (shared, snapshot) {
            (Some(s), _) => match &s.state {
                SnapshotState::Complete => (s.id, false, s.manifest.clone()),
                SnapshotState::Legacy => (s.id, true, None),
                other => {
                    return Err(Error::SnapshotUnusable {
                        id: s.id,
                        state: other.clone(),
                    });
                }
            },
            (None, Some(id)) if tenant_only => (id, false, None),
            (None, Some(id)) => return Err(catalog.unknown(id)),
            (None, None) => return Err(Error::NoCompleteSnapshot),
        };
        let mut items = Vec::new();
        if let (false, Some(shared)) = (tenant_only, shared) {
            items.push(RestoreItem {
                database: Database::Shared,
                target: layout.db_path.clone(),
                bytes: shared.data_size(),
                manifest: shared.manifest.clone(),
                manifest_sha256: None,
            });
        }
        let listed: Vec<(Uuid, &TenantState)> = cycle
            .iter()
            .flat_map(|m| m.tenants.iter().map(|t| (t.tenant_id, &t.state)))
            .collect();
        let unavailable = listed.iter().filter_map(|(t, s)| match s {
            TenantState::Failed { error } => Some((*t, error.clone())),
            _ => None,
        });
        let unavailable: Vec<(Uuid, String)> = unavailable.collect();
        if !selection.shared_only {
            let wanted = |t: &Uuid| selection.tenants.is_empty() || selection.tenants.contains(t);
            for db in catalog
                .databases
                .iter()
                .filter(|d| d.database != Database::Shared)
            {
                let Database::Tenant { tenant_id } = db.database else {
                    continue;
                };
                let Some(snap) = db
                    .snapshots
                    .iter()
                    .find(|s| s.id == id)
                    .filter(|_| wanted(&tenant_id))
                else {
                    continue;
                };
                let usable = snap.state == SnapshotState::Complete
                    || (snap.state == SnapshotState::Legacy && (legacy || tenant_only));
                if !usable {
                    continue;
                }
                let manifest_sha256 = listed.iter().find_map(|(t, s)| match s {
                    TenantState::Complete { manifest_sha256 } if *t == tenant_id => {
                        Some(manifest_sha256.clone())
                    }
                    _ => None,
                });
                items.push(RestoreItem {
                    database: db.database,
                    target: layout.tenant_db(tenant_id),
                    bytes: snap.data_size(),
                    manifest: snap.manifest.clone(),
                    manifest_sha256,
                });
            }
            let has = |t: &Uuid| {
                items
                    .iter()
                    .any(|i| i.database == Database::Tenant { tenant_id: *t })
            };
            // Every tenant the cycle committed must be there: a whole restore never silently drops one.
            for (tenant, state) in &listed {
                if matches!(state, TenantState::Complete { .. }) && wanted(tenant) && !has(tenant) {
                    return Err(Error::TenantSnapshotMissing {
                        snapshot: id,
                        tenant: *tenant,
                    });
                }
            }
            for tenant in &selection.tenants {
                if !has(tenant) {
                    return Err(Error::NoTenantSnapshot {
                        snapshot: id,
                        tenant: *tenant,
                    });
                }
            }
        }
        if items.is_empty() {
            return Err(Error::NothingToRestore { snapshot: id });
        }
        let plan = RestorePlan {
            snapshot: id,
            legacy,
            items,
            unavailable,
            layout: cycle.as_ref().and_then(|m| m.layout),
            default_tenant: cycle.as_ref().and_then(|m| m.default_tenant),
            shared_only: selection.shared_only,
            source: cycle.as_ref().and_then(|m| m.source),
            data: layout.clone(),
            limits: layout.duckdb,
            import_turn: Arc::new(tokio::sync::Semaphore::new(IMPORTS_AT_ONCE)),
            last_alone: true,
            opener: None,
        };
        if let (Some(TenantLayout::Split), Some(tenant)) = (plan.layout, plan.default_tenant) {
            plan.check_default_tenant(tenant)?;
        }
        Ok(plan)
    }

    /// The same plan, opening encrypted snapshots with `opener`'s identities.
    pub fn with_opener(mut self, opener: Arc<Opener>) -> Self {
        self.opener = Some(opener);
        self
    }

    /// Whether some database of the plan is encrypted (its restore needs an identity).
    pub fn is_encrypted(&self) -> bool {
        (self.items.iter()).any(|i| i.manifest.as_ref().is_some_and(Manifest::is_encrypted))
    }

    /// A whole restore of a split cycle must bring back the default tenant. With `-shared-only` the
    /// user chose otherwise, and [`RestorePlan::notes`] says what HitKeep will find.
    fn check_default_tenant(&self, tenant: Uuid) -> Result<()> {
        let restores_shared = self.items.iter().any(|i| i.database == Database::Shared);
        let has_default = self
            .items
            .iter()
            .any(|i| i.database == Database::Tenant { tenant_id: tenant });
        if !restores_shared || self.shared_only || has_default {
            return Ok(());
        }
        Err(self.split_refusal(tenant))
    }

    /// The refusal of a whole split restore without `tenant`, the default one, saying what is on disk.
    fn split_refusal(&self, tenant: Uuid) -> Error {
        Error::SplitWithoutDefault {
            snapshot: self.snapshot,
            tenant,
            on_disk: if self.data.tenant_db(tenant).exists() {
                "not from this snapshot"
            } else {
                "missing"
            },
        }
    }

    /// What people should know before a restore of this plan, in HitKeep's terms: where the default
    /// tenant's analytics will come from once HitKeep starts on the restored files.
    pub fn notes(&self) -> Vec<String> {
        let restores_shared = self.items.iter().any(|i| i.database == Database::Shared);
        match (self.layout, self.default_tenant, restores_shared) {
            (Some(TenantLayout::Split), Some(tenant), true) if self.shared_only => {
                vec![self.shared_only_note(tenant)]
            }
            (Some(TenantLayout::PreSplit), Some(tenant), true)
                if self.data.tenant_db(tenant).exists() =>
            {
                vec![format!(
                    "this cycle is pre-split (HitKeep 2.12 or older): the default tenant's analytics come back inside the shared database; on its next start HitKeep 2.13 splits them out again and keeps the existing {} aside as a stray copy",
                    self.data.tenant_db(tenant).display()
                )]
            }
            _ => Vec::new(),
        }
    }

    fn shared_only_note(&self, tenant: Uuid) -> String {
        let path = self.data.tenant_db(tenant);
        if path.exists() {
            format!(
                "-shared-only on a split cycle: HitKeep will start with the default tenant's analytics from the database already at {}, not from this snapshot",
                path.display()
            )
        } else {
            format!(
                "-shared-only on a split cycle: there is no default tenant database at {}, so HitKeep will refuse to start until one is restored (`-tenant {tenant}`) or rebuilt empty (`hitkeep recover rebuild-default-tenant`, with HitKeep's own binary)",
                path.display()
            )
        }
    }

    /// The slow, fallible half of a restore: downloads and imports one database beside its target
    /// without touching the target; dropping a prepared item removes its files. Not public: only
    /// [`RestorePlan::prepare_all`] prepares, every item before any commits, so that a network
    /// failure part-way leaves every database as it was. Imports of one plan take turns.
    async fn prepare_item(
        &self,
        storage: &Storage,
        item: &RestoreItem,
        stamp: SnapshotId,
        order: usize,
        turns: &Turns,
    ) -> Result<PreparedRestore> {
        let target = item.target.clone();
        refuse_if_locked(&target)?;
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        // Declared before the scratch files, so dropped after them: a refused restore leaves no
        // empty tenants/{id}/ folders behind either.
        let created = CreatedDirs::create(&dir)?;
        let base = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "hitkeep.db".into());
        // Held until the restored database is swapped in or dropped: a restore that starts meanwhile
        // leaves this one's scratch alone ([`RestorePlan::remove_stale_scratch`]).
        let scratch_lock = ScratchLock::take(&dir, &base, stamp)?;
        let staging = Scratch(dir.join(scratch_prefix(&base, stamp)));
        let temp_db = Scratch(dir.join(format!("{}.tmp", scratch_prefix(&base, stamp))));
        staging.remove();
        temp_db.remove();
        std::fs::create_dir_all(&staging.0).map_err(|e| Error::io(&staging.0, e))?;

        let folder = format!("{}/{}", item.database.folder(), self.snapshot);
        if let Some(expected) = &item.manifest_sha256 {
            let actual = hitkeep_storage::Sha256Digest::of(
                &storage.read(&format!("{folder}/{MANIFEST_NAME}")).await?,
            )
            .to_string();
            if &actual != expected {
                return Err(Error::ManifestAltered {
                    key: format!("{folder}/{MANIFEST_NAME}"),
                    actual,
                    expected: expected.clone(),
                });
            }
        }
        // A snapshot sealed to a tenant's own key opens with that key, from its key file.
        let opener = match &item.manifest {
            Some(m) => crate::tenant_keys::opener_for(storage, m, self.opener.as_deref()).await?,
            None => self.opener.as_deref().map(std::borrow::Cow::Borrowed),
        };
        let opener = opener.as_deref();
        let manifest = match &item.manifest {
            Some(m) if m.is_encrypted() => Some(unseal(storage, &folder, m, opener).await?),
            other => other.clone(),
        };
        {
            let _turn = turns
                .download
                .acquire()
                .await
                .map_err(|e| Error::Internal(format!("download turn: {e}")))?;
            download(storage, &folder, manifest.as_ref(), &staging.0, opener).await?;
        }
        let job = ImportJob {
            staging: staging.0.clone(),
            temp_db: temp_db.0.clone(),
            manifest,
            database: item.database,
            folder,
        };
        let (tables, ran_again_alone) = self.import_in_turn(job, turns, order, item.bytes).await?;
        Ok(PreparedRestore {
            target,
            temp_db,
            _scratch_lock: scratch_lock,
            tables,
            ran_again_alone,
            created,
        })
    }

    /// Imports two databases side by side when the memory limit allows, each on an instance with its
    /// share of DuckDB's limits ([`side_by_side`]): the key and index builds are mostly
    /// single-threaded, so one database at a time left a core idle (measured at 16M hits, five
    /// databases: 88 s one after the other, 57 s two at once). Builds beside builds, not only beside
    /// loads: with one build at a time and the next database loading beside it the same restore took
    /// 90 s. An import that runs out of memory on its share runs again alone, with the whole limits,
    /// once the others are done: a restore that fits the limit one database at a time never fails for
    /// having tried two (the second value says it did). The last import to start (or one that only
    /// small ones follow) runs alone with the whole limits when the others are done or nearly
    /// ([`crate::lanes`]). When the limits cannot be shared
    /// ([`side_by_side`] is `None`), imports run alone, one at a time, with the whole limits.
    async fn import_in_turn(
        &self,
        job: ImportJob,
        turns: &Turns,
        id: usize,
        bytes: u64,
    ) -> Result<(BTreeMap<String, u64>, bool)> {
        let turn_failed = |e| Error::Internal(format!("import turn: {e}"));
        let alone = || self.import_turn.acquire_many(IMPORTS_AT_ONCE as u32);
        let Some(share) = side_by_side(self.limits, turns.imports) else {
            let _alone = alone().await.map_err(turn_failed)?;
            return Ok((job.run(self.limits).await?, false));
        };
        let turn = self.import_turn.acquire().await.map_err(turn_failed)?;
        if turns.lanes.start(id, bytes) == Way::Alone {
            drop(turn);
            let _alone = alone().await.map_err(turn_failed)?;
            tracing::debug!(database = %job.database, "the last import: alone, with the whole limits");
            return Ok((job.run(self.limits).await?, false));
        }
        let beside = job.run(share).await;
        turns.lanes.end(id, beside.is_ok());
        drop(turn);
        match beside {
            Err(e) if e.kind() == crate::error::ErrorKind::OutOfMemory => {
                tracing::info!(database = %job.database, error = %e, "out of memory beside another import; importing it again alone, with the whole memory limit");
                let _alone = alone().await.map_err(turn_failed)?;
                Ok((job.run(self.limits).await?, true))
            }
            other => Ok((other?, false)),
        }
    }

    /// Keeps every import side by side, the last one too, where a test needs one to run out of
    /// memory beside another.
    #[doc(hidden)]
    pub fn never_last_alone(mut self) -> Self {
        self.last_alone = false;
        self
    }

    /// Removes what killed restores left beside the targets and beside every tenant database (their
    /// downloads, temporary databases and lock files, full-size on the data disk), except what a
    /// running restore holds; says what it removed and what it left. Call it before
    /// [`RestorePlan::prepare_all`]: it changes no database.
    pub fn remove_stale_scratch(&self) -> StaleScratch {
        crate::scratch::sweep(&self.data, self.items.iter().map(|i| i.target.as_path()))
    }

    /// Prepares every item, downloads started largest first: `concurrency` downloading at a time and
    /// one item more in flight (it downloads while others import), up to two of them importing side
    /// by side with a share of DuckDB's limits each (in the order their downloads finish), one that
    /// runs out of memory on its share again alone with the whole of them, and the last to start (or
    /// one that only small ones follow) alone when the others are nearly done ([`RestorePlan::import_in_turn`]). On a failure, waits for the items
    /// already started, drops every prepared one (removing its files) and returns the failing
    /// database with its error: nothing has been changed.
    pub async fn prepare_all(
        &self,
        storage: &Storage,
        stamp: SnapshotId,
        concurrency: usize,
    ) -> std::result::Result<Vec<PreparedRestore>, (Database, Error)> {
        // Folders the targets need that do not exist yet: removed again (when empty) if the restore
        // is refused, whichever item created them first.
        let missing = self.missing_folders();
        let outcome = self.prepare_each(storage, stamp, concurrency).await;
        if outcome.is_err() {
            for dir in &missing {
                let _ = std::fs::remove_dir(dir);
            }
        }
        outcome
    }

    async fn prepare_each(
        &self,
        storage: &Storage,
        stamp: SnapshotId,
        concurrency: usize,
    ) -> std::result::Result<Vec<PreparedRestore>, (Database, Error)> {
        // Every started import runs to its end before anything is dropped: an import abandoned
        // mid-way would keep writing into a file its guard had already removed.
        // Imports that may run at once: no more than items prepared at once.
        let ways = IMPORTS_AT_ONCE
            .min(concurrency)
            .min(self.items.len())
            .max(1);
        // `concurrency` downloads at a time, and one database more in flight: it downloads while the
        // others import, so a lane that finishes an import finds the next one on disk. A lane takes
        // the next database as soon as its own is ready (with `buffered`, one that finished behind a
        // slower one kept its lane idle); the outcomes go back into plan order.
        let sizes: Vec<u64> = self.items.iter().map(|item| item.bytes).collect();
        let turns = Turns {
            download: tokio::sync::Semaphore::new(concurrency.max(1)),
            imports: ways,
            lanes: Lanes::sized(sizes, self.last_alone),
        };
        let turns = &turns;
        // Downloads start largest first, so that the big imports start early and the lanes end
        // closer together than in plan order (imports start as their downloads finish).
        let mut started: Vec<_> = self.items.iter().enumerate().collect();
        started.sort_by_key(|(_, item)| std::cmp::Reverse(item.bytes));
        let outcomes: Vec<_> = futures::stream::iter(started)
            .map(|(order, item)| async move {
                let prepared = self.prepare_item(storage, item, stamp, order, turns).await;
                (order, prepared.map_err(|e| (item.database, e)))
            })
            .buffer_unordered(concurrency.max(1) + 1)
            .collect()
            .await;
        let mut prepared = Vec::with_capacity(outcomes.len());
        for outcome in crate::in_order(outcomes) {
            prepared.push(outcome?);
        }
        self.check_prepared(&prepared)
            .map_err(|e| (Database::Shared, e))?;
        Ok(prepared)
    }

    /// Every missing folder above the targets, deepest first.
    fn missing_folders(&self) -> Vec<PathBuf> {
        let mut missing: Vec<PathBuf> = self
            .items
            .iter()
            .filter_map(|i| i.target.parent())
            .flat_map(Path::ancestors)
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(Path::to_owned)
            .collect();
        missing.sort_by_key(|d| (std::cmp::Reverse(d.components().count()), d.clone()));
        missing.dedup();
        missing
    }

    /// Swaps every prepared database (in plan order, as [`RestorePlan::prepare_all`] returns them)
    /// into place: the tenants first, the default one first among them, and the shared database last,
    /// because the shared database says where the analytics are. If one fails, those already swapped
    /// are put back, so a restore never leaves new and old databases side by side; the error names the
    /// database that failed (boxed: `Error` alone is already large).
    pub fn commit_all(
        &self,
        prepared: Vec<PreparedRestore>,
        stamp: SnapshotId,
    ) -> std::result::Result<Vec<(Database, RestoreOutcome)>, CommitFailure> {
        let rank = |d: &Database| match d {
            Database::Tenant { tenant_id } if Some(*tenant_id) == self.default_tenant => 0,
            Database::Tenant { .. } => 1,
            Database::Shared => 2,
        };
        let mut order: Vec<(Database, PreparedRestore)> = self
            .items
            .iter()
            .map(|i| i.database)
            .zip(prepared)
            .collect();
        order.sort_by_key(|(d, _)| rank(d));
        let mut done: Vec<(Database, RestoreOutcome)> = Vec::new();
        for (database, p) in order {
            match p.commit(stamp) {
                Ok(outcome) => done.push((database, outcome)),
                Err(e) => {
                    for (undone, outcome) in done.iter().rev() {
                        if let Err(undo) =
                            crate::swap::undo_swap(&outcome.target, outcome.aside.as_deref())
                        {
                            tracing::error!(database = %undone, error = %undo, "could not put the previous database back; it is kept aside");
                        }
                    }
                    return Err(Box::new((database, e)));
                }
            }
        }
        self.adopt_source(&done);
        Ok(done)
    }

    /// After the shared database came back: a data path with no source id of its own (a new machine
    /// taking over) goes on as the source that wrote the cycle, so its next backups are that
    /// installation's and "latest" and prune see one history. The restore stands either way.
    fn adopt_source(&self, done: &[(Database, RestoreOutcome)]) {
        let shared = done.iter().any(|(d, _)| *d == Database::Shared);
        let Some(source) = self.source.filter(|_| shared) else {
            return;
        };
        match self.data.adopt_source_id(source) {
            Ok(true) => {
                tracing::info!(%source, "this data path now backs up as the restored installation's source")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not record the restored installation's source id")
            }
        }
    }

    /// Asks the imported shared database what it says about its tenants, the way HitKeep will when it
    /// starts: a legacy (HitKeep Go) snapshot records no layout, and the manifest's word is not
    /// the data's. A split shared database whose default tenant is not restored is refused here, before
    /// anything is swapped in; other active tenants without a snapshot are logged (HitKeep creates
    /// their database, empty, on first use).
    fn check_prepared(&self, prepared: &[PreparedRestore]) -> Result<()> {
        let Some(shared) = self
            .items
            .iter()
            .zip(prepared)
            .find_map(|(i, p)| (i.database == Database::Shared).then_some(p))
        else {
            return Ok(());
        };
        let set = shared.tenant_set()?;
        let restored = |t: &Uuid| {
            self.items
                .iter()
                .any(|i| i.database == Database::Tenant { tenant_id: *t })
        };
        if set.layout == TenantLayout::Split
            && let Some(tenant) = set.default_tenant
        {
            if self.shared_only {
                tracing::warn!("{}", self.shared_only_note(tenant));
            } else if !restored(&tenant) {
                return Err(self.split_refusal(tenant));
            }
        }
        if !self.shared_only {
            for tenant in set.backed_up.iter().filter(|t| !restored(t)) {
                let path = self.data.tenant_db(*tenant);
                let what = if path.exists() {
                    "the database already there stays, and is not from this snapshot"
                } else {
                    "HitKeep will create it empty on first use"
                };
                tracing::warn!(%tenant, snapshot = %self.snapshot, path = %path.display(), "the restored shared database lists this tenant as active, but the snapshot has no database for it; {what}");
            }
        }
        Ok(())
    }
}

/// The database whose swap failed in [`RestorePlan::commit_all`], and why (boxed: `Error` alone is
/// already large).
pub type CommitFailure = Box<(Database, Error)>;

/// A database downloaded, imported and checked beside its target, waiting to be swapped in.
#[derive(Debug)]
pub struct PreparedRestore {
    target: PathBuf,
    temp_db: Scratch,
    /// After `temp_db`, so let go once the temporary database is gone.
    _scratch_lock: ScratchLock,
    tables: BTreeMap<String, u64>,
    /// Whether its import ran out of memory beside another and was imported again alone.
    ran_again_alone: bool,
    /// Last, so removed after the scratch files in it.
    created: CreatedDirs,
}

/// The folders a restore created for its target, removed again (when empty) unless the restored
/// database was swapped in.
#[derive(Debug)]
struct CreatedDirs {
    /// The target's folder.
    leaf: PathBuf,
    /// The outermost folder this restore created; `None` when the leaf already existed.
    top: Option<PathBuf>,
    keep: bool,
}

impl CreatedDirs {
    fn create(dir: &Path) -> Result<CreatedDirs> {
        let top = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .last()
            .map(Path::to_owned);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(CreatedDirs {
            leaf: dir.to_owned(),
            top,
            keep: false,
        })
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        let Some(top) = self.top.as_deref().filter(|_| !self.keep) else {
            return;
        };
        for dir in self.leaf.ancestors() {
            // remove_dir refuses a folder that is not empty: whatever else is there stays.
            if std::fs::remove_dir(dir).is_err() || dir == top {
                break;
            }
        }
    }
}

impl PreparedRestore {
    /// Whether its import ran out of memory beside another and was imported again alone, with the
    /// whole memory limit.
    pub fn ran_again_alone(&self) -> bool {
        self.ran_again_alone
    }

    /// The layout and tenants the imported (not yet swapped in) database records.
    fn tenant_set(&self) -> Result<hitkeep_data::TenantSet> {
        let database = Database::Shared;
        // Fenced: the snapshot's views are refused where they would stand for the tables read here
        // (`snapshot_sql`), and nothing a view or macro might reach lies outside the fence.
        let conn = crate::import::open_fenced(&self.temp_db.0)?;
        hitkeep_data::tenant_set(&conn)
            .map_err(|e| Error::duckdb(database, "reading the restored tenants", e))
    }

    /// The fast, local half: moves the current database aside and the restored one into place. Only
    /// through [`RestorePlan::commit_all`], which orders the swaps and undoes them on a failure.
    fn commit(mut self, stamp: SnapshotId) -> Result<RestoreOutcome> {
        // The server may have been started during the download.
        refuse_if_locked(&self.target)?;
        let aside = swap_into_place(&self.temp_db.0, &self.target, stamp)?;
        self.created.keep = true;
        Ok(RestoreOutcome {
            target: self.target.clone(),
            aside,
            tables: self.tables.clone(),
        })
    }
}

/// What restoring one database did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RestoreOutcome {
    /// The restored database.
    pub target: PathBuf,
    /// Where the previous database (and WAL) went, if there was one.
    pub aside: Option<PathBuf>,
    /// Row counts of the restored tables.
    pub tables: BTreeMap<String, u64>,
}

/// One file of a snapshot, checked against its manifest entry; an encrypted one is decrypted as it
/// downloads and moved into place only once the stored bytes' digest matches. Returns what is on
/// disk.
async fn download_one(
    storage: &Storage,
    folder: &str,
    file: &FileEntry,
    dir: &Path,
    transfer: &TransferOptions,
    sealed: Option<(&Opener, &[String])>,
) -> Result<ObjectInfo> {
    let sha256 = file.sha256.parse().map_err(|_| Error::Manifest {
        key: format!("{folder}/{MANIFEST_NAME}"),
        source: ManifestError::MalformedSha256 {
            file: file.name.clone(),
        },
    })?;
    let expected = ObjectInfo {
        size: file.size,
        sha256,
    };
    let key = file.key(folder);
    let dest = dir.join(&file.name);
    let Some((opener, recipients)) = sealed else {
        return Ok(storage
            .download_file(&key, &dest, Some(&expected), transfer)
            .await?);
    };
    // Decrypted as it downloads (age authenticates every chunk), into a name no import reads, and
    // renamed into place only once the stored bytes' digest matches: the ciphertext never touches
    // the disk, which at 16M hits cost a restore 14% more time.
    let partial = dir.join(format!(".{}.opening", file.name));
    let stream = storage.read_stream(&key, transfer).await?;
    let source = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let (by, to) = (opener.clone(), partial.clone());
    let opened = tokio::task::spawn_blocking(move || by.open_from(source, &to)).await;
    let outcome = match opened {
        Err(e) => Err(Error::Internal(format!("decrypt task: {e}"))),
        Ok(opened) => opened_or_not(opened, &expected, storage.describe(&key), recipients),
    };
    match outcome {
        Ok(info) => {
            std::fs::rename(&partial, &dest).map_err(|e| Error::io(&dest, e))?;
            Ok(info)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// What a streamed decryption of `object` means for the restore: the plaintext when the stored
/// bytes are what the manifest records, else why not.
fn opened_or_not(
    opened: std::result::Result<hitkeep_seal::Opened, Unopened>,
    expected: &ObjectInfo,
    object: String,
    recipients: &[String],
) -> Result<ObjectInfo> {
    let not_opened = |failure| Error::NotOpened {
        object: object.clone(),
        failure,
        recipients: recipients.to_vec(),
    };
    match opened {
        Ok(opened) if opened.stored == *expected => Ok(opened.plain),
        Ok(opened) => Err(hitkeep_storage::Error::damaged(object, expected, &opened.stored).into()),
        Err(Unopened::Source(e)) => Err(
            match e
                .into_inner()
                .map(|e| e.downcast::<hitkeep_storage::Error>())
            {
                Some(Ok(e)) => Error::Storage(e),
                Some(Err(e)) => Error::Internal(format!("{object}: {e}")),
                None => Error::Internal(format!("{object}: the download failed")),
            },
        ),
        // The snapshot's sealed part opened with these identities already, and every object of it
        // is sealed to the same recipients: one that says "not yours" was damaged or replaced.
        Err(Unopened::Failure(OpenFailure::WrongIdentity)) => Err(not_opened(OpenFailure::Damaged)),
        Err(Unopened::Failure(failure)) => Err(not_opened(failure)),
    }
}

/// [`Opener::open_file`] off the async threads.
pub(crate) async fn open_file(
    opener: &Opener,
    sealed: &Path,
    plain: &Path,
) -> std::result::Result<ObjectInfo, OpenFailure> {
    let (opener, sealed, plain) = (opener.clone(), sealed.to_owned(), plain.to_owned());
    tokio::task::spawn_blocking(move || opener.open_file(&sealed, &plain))
        .await
        .unwrap_or(Err(OpenFailure::Unwritable))
}

/// `manifest` (encrypted, of the snapshot in `folder`) with its sealed part read, checked against
/// the digest the clear part records, and opened.
pub(crate) async fn unseal(
    storage: &Storage,
    folder: &str,
    manifest: &Manifest,
    opener: Option<&Opener>,
) -> Result<Manifest> {
    let Some(encryption) = &manifest.encryption else {
        return Ok(manifest.clone());
    };
    let key = format!("{folder}/{SEALED_NAME}");
    let refuse = |failure| Error::NotOpened {
        object: storage.describe(&key),
        failure,
        recipients: encryption.recipients.clone(),
    };
    let opener = opener.ok_or_else(|| refuse(OpenFailure::NoIdentity))?;
    let bytes = storage.read(&key).await?;
    if bytes.len() as u64 != encryption.sealed.size
        || Sha256Digest::of(&bytes).to_string() != encryption.sealed.sha256
    {
        return Err(refuse(OpenFailure::Damaged));
    }
    let plain = opener.open_bytes(&bytes).map_err(refuse)?;
    let sealed: Sealed =
        serde_json::from_slice(&plain).map_err(|_| refuse(OpenFailure::Damaged))?;
    let mut opened = manifest.clone();
    opened.unseal(sealed);
    Ok(opened)
}

/// Files downloaded at once per database.
const DOWNLOAD_CONCURRENCY: usize = 4;

/// Downloads the snapshot's files, each checked against the manifest (and opened with `opener`
/// when it is encrypted); a legacy snapshot's files as listed. Returns, for a manifest's files, what
/// is on disk of each, in the manifest's order.
pub(crate) async fn download(
    storage: &Storage,
    folder: &str,
    manifest: Option<&Manifest>,
    dir: &Path,
    opener: Option<&Opener>,
) -> Result<Vec<ObjectInfo>> {
    let transfer = TransferOptions::default();
    match manifest {
        Some(m) => {
            let sealed = match &m.encryption {
                None => None,
                Some(e) => Some((
                    opener.ok_or_else(|| Error::NotOpened {
                        object: storage.describe(folder),
                        failure: OpenFailure::NoIdentity,
                        recipients: e.recipients.clone(),
                    })?,
                    e.recipients.as_slice(),
                )),
            };
            // Several files at once: one stream per file leaves a fast link mostly idle. After a
            // failure no new file starts, but those in flight run to their end: a download dropped
            // mid-way can still create its partial file after the staging folder was removed (the
            // e2e run's corrupting network left one behind).
            let failed = std::sync::atomic::AtomicBool::new(false);
            let failed = &failed;
            // Unordered, so that a large file never holds the other slots; put back in order after.
            let outcomes: Vec<(usize, Result<Option<ObjectInfo>>)> =
                futures::stream::iter(m.files.iter().enumerate())
                    .map(|(place, file)| async move {
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            return (place, Ok(None)); // skipped: another file already failed
                        }
                        let outcome =
                            download_one(storage, folder, file, dir, &transfer, sealed).await;
                        failed.fetch_or(outcome.is_err(), std::sync::atomic::Ordering::Relaxed);
                        (place, outcome.map(Some))
                    })
                    .buffer_unordered(DOWNLOAD_CONCURRENCY)
                    .collect()
                    .await;
            let got = crate::in_order(outcomes)
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            Ok(got.into_iter().flatten().collect())
        }
        None => {
            tracing::warn!(
                folder,
                "legacy snapshot without a manifest: its files cannot be verified"
            );
            for entry in storage.list(folder, ListMode::Recursive).await? {
                let name = entry.name().to_owned();
                if name == IN_PROGRESS_NAME
                    || entry
                        .key
                        .trim_start_matches(&format!("{folder}/"))
                        .contains('/')
                {
                    continue;
                }
                storage
                    .download_file(&entry.key, &dir.join(&name), None, &transfer)
                    .await?;
            }
            Ok(Vec::new())
        }
    }
}

/// Databases imported at once (see [`RestorePlan::import_in_turn`]).
const IMPORTS_AT_ONCE: usize = 2;

/// What a restore's items take turns at: downloads (the configured concurrency) and imports (how many
/// may run side by side, and which runs alone: [`RestorePlan::import_in_turn`]).
struct Turns {
    download: tokio::sync::Semaphore,
    imports: usize,
    lanes: Lanes,
}

/// Taken off each side-by-side import's half of the memory limit. An instance holds more than its
/// limit while it builds keys (peak RSS of one 3M-hit database: 441 MiB under a 256 MiB limit, 549
/// under 384, 780 under 512), so two halves would together exceed the limit by twice that; with this
/// taken off both stay within the limit plus 256 MiB, the bound the bench holds us to.
const SIDE_BY_SIDE_HEADROOM: u64 = 160 << 20;

/// Below this memory limit per instance a side-by-side import would mostly fail and run again alone.
const SIDE_BY_SIDE_MIN: u64 = 256 << 20;

/// The limits of each of `ways` imports side by side: its share of the threads, and its share of the
/// memory limit less [`SIDE_BY_SIDE_HEADROOM`]. `None` (one import at a time, with the whole limits)
/// when that share would be below [`SIDE_BY_SIDE_MIN`], and without a memory limit: each instance
/// would then take DuckDB's default, 80% of the machine's memory, and two would overcommit it.
fn side_by_side(limits: DuckDbLimits, ways: usize) -> Option<DuckDbLimits> {
    limits.memory_limit?;
    if ways < 2 {
        return None;
    }
    let share = limits.share(ways);
    let each = share.memory_limit?.saturating_sub(SIDE_BY_SIDE_HEADROOM);
    (each >= SIDE_BY_SIDE_MIN).then_some(DuckDbLimits {
        memory_limit: Some(each),
        ..share
    })
}

/// One database's import, from its checked download into a new file; may run twice.
#[derive(Clone)]
struct ImportJob {
    staging: PathBuf,
    temp_db: PathBuf,
    manifest: Option<Manifest>,
    database: Database,
    folder: String,
}

impl ImportJob {
    /// Imports on a blocking thread into a new file; whatever an earlier attempt left is removed first.
    async fn run(&self, limits: DuckDbLimits) -> Result<BTreeMap<String, u64>> {
        let job = self.clone();
        tokio::task::spawn_blocking(move || {
            drop(Scratch(job.temp_db.clone())); // removes the file and its WAL
            import(&job, limits)
        })
        .await
        .map_err(|e| Error::Internal(format!("import task: {e}")))?
    }
}

const IMPORT_MEMORY_HINT: &str = "DuckDB holds each table's indexes in memory while it builds them; the server is stopped during a restore, so give this command more with HITKEEP_DUCKDB_MEMORY_LIMIT (e.g. 4GiB), or unset it to let DuckDB use 80% of RAM";

/// Imports (as `IMPORT DATABASE` would, keys and indexes built after the load) into a new file at a storage version DuckDB 1.5 reads (its SQL checked first, the
/// import fenced: [`crate::import`]), `CHECKPOINT`, close, require that no WAL is left, and compare row
/// counts with the manifest.
fn import(job: &ImportJob, limits: DuckDbLimits) -> Result<BTreeMap<String, u64>> {
    let (temp_db, manifest) = (&job.temp_db, job.manifest.as_ref());
    let tables = crate::import::import_snapshot(&crate::import::Import {
        snapshot_dir: &job.staging,
        db: temp_db,
        limits,
        database: job.database,
        folder: &job.folder,
        memory_hint: IMPORT_MEMORY_HINT,
    })?;
    let temp = temp_db.display();
    let wal = PathBuf::from(format!("{temp}.wal"));
    if wal.exists() {
        return Err(Error::WalLeft { path: wal });
    }
    if let Some(m) = manifest {
        let mismatched: Vec<CountMismatch> = m
            .tables
            .iter()
            .filter(|(t, want)| tables.get(*t) != Some(want))
            .map(|(t, want)| CountMismatch {
                table: t.clone(),
                restored: tables.get(t).copied(),
                recorded: *want,
            })
            .collect();
        if !mismatched.is_empty() {
            return Err(Error::RowCountsDiffer { tables: mismatched });
        }
    }
    Ok(tables)
}

/// Refuses a target that a process holds, in this PID namespace or another (a server in its
/// container): a reader's lock too, since the swap would leave it reading the old file.
pub(crate) fn refuse_if_locked(target: &Path) -> Result<()> {
    match hitkeep_data::lock_holder(target)? {
        Some(holder) => Err(hitkeep_data::DataError::Locked {
            path: target.to_owned(),
            holder: Some(holder),
        }
        .into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn limits(memory: Option<u64>) -> DuckDbLimits {
        DuckDbLimits {
            memory_limit: memory.map(|m| m * MIB),
            threads: Some(2),
        }
    }

    #[test]
    fn side_by_side_imports_share_the_limit_less_the_headroom() {
        let each = side_by_side(limits(Some(1024)), 2).unwrap();
        assert_eq!(each.memory_limit, Some(352 * MIB));
        assert_eq!(each.threads, Some(1));
        // The smallest limit that is shared, and the largest that is not.
        let smallest = side_by_side(limits(Some(832)), 2).unwrap();
        assert_eq!(smallest.memory_limit, Some(256 * MIB));
        assert_eq!(side_by_side(limits(Some(831)), 2), None);
        // One at a time: a single database, or no memory limit to share.
        assert_eq!(side_by_side(limits(Some(4096)), 1), None);
        assert_eq!(side_by_side(limits(None), 2), None);
    }
}
