//! The engine: settings, the data layout and the two jobs, backup and archive.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use hitkeep_backup::{
    BackupOptions, Catalog, CycleReport, CycleTenants, PoolSweep, Progress, PrunePlan,
};
use hitkeep_config::{Concurrency, Location, Settings};
use hitkeep_data::{DataLayout, DuckDbLimits, HeldDatabases, OpenMode};
use hitkeep_storage::{Storage, SweepReport};

use crate::error::{Error, Result};
use crate::notify::Notifier;

/// How old an S3 multipart upload must be, by the server's clock, before it counts as a dead
/// process's: another installation's cycle may be uploading to the same destination, and a large
/// file on a slow link takes hours. Local partial uploads are told apart by their owner's lock instead.
pub const PARTIAL_UPLOAD_AGE: Duration = Duration::from_secs(6 * 3600);

/// The settings and data layout the jobs and operations work with.
#[derive(Clone)]
pub struct Engine {
    settings: Arc<Settings>,
    layout: DataLayout,
    notifier: Arc<Notifier>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.settings)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine that opens the database files itself: the `hitkeep` binary, the only process
    /// opening them (HitKeep stopped, or a host where hitkeep owns the files).
    pub fn new(settings: Settings) -> Self {
        let layout =
            DataLayout::new(&settings.db_path, &settings.data_path).with_limits(DuckDbLimits {
                memory_limit: settings.duckdb.memory_limit,
                threads: settings.duckdb.threads.map(|t| t.get()),
            });
        Engine {
            notifier: Arc::new(Notifier::new(&settings)),
            settings: Arc::new(settings),
            layout,
        }
    }

    /// An engine inside a server that holds the databases open: jobs use connections to the server's
    /// instances ([`HeldDatabases`]) and leave their limits to the server.
    pub fn embedded(settings: Settings, held: Arc<dyn HeldDatabases>) -> Self {
        let mut engine = Engine::new(settings);
        engine.layout = engine.layout.with_held(held);
        engine
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Where the scheduled jobs send their heartbeat and failure notifications.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The data layout: every local path and how databases are opened.
    pub fn layout(&self) -> &DataLayout {
        &self.layout
    }

    /// Creates HitKeep-shaped demo data at the configured paths (refusing to touch existing files).
    pub fn create_demo(
        &self,
        options: &hitkeep_data::demo::DemoOptions,
    ) -> Result<hitkeep_data::demo::DemoSummary> {
        Ok(hitkeep_data::demo::generate(&self.layout, options)?)
    }

    /// The backup location, or the error that says how to set one.
    pub fn backup_location(&self) -> Result<&Location> {
        self.settings
            .backup
            .location
            .as_ref()
            .ok_or_else(Error::backups_disabled)
    }

    /// Opens the backup location, which must exist (for reading what is there).
    pub async fn backup_storage(&self) -> Result<Storage> {
        Ok(Storage::open_existing(self.backup_location()?, &self.settings.s3).await?)
    }

    /// What encrypts the cycles: the recipients of `HITKEEP_BACKUP_RECIPIENTS` (and its file), when
    /// there are any. The settings checked each one already; a failure here is a bug, not plaintext.
    pub fn sealer(&self) -> Result<Option<hitkeep_backup::Sealer>> {
        hitkeep_backup::Sealer::new(&self.settings.backup.recipients).map_err(|why| {
            Error::Unsuitable {
                message: format!("HITKEEP_BACKUP_RECIPIENTS: {why}"),
                hint: Some("give age X25519 public keys (age1…)".into()),
            }
        })
    }

    /// What opens encrypted snapshots: the identities of `HITKEEP_BACKUP_IDENTITY_FILE`, read now,
    /// when it is set. The error names the setting and the file, never the content.
    pub fn opener(&self) -> Result<Option<Arc<hitkeep_backup::Opener>>> {
        let Some(path) = &self.settings.backup.identity_file else {
            return Ok(None);
        };
        let opener = hitkeep_backup::Opener::from_file(path).map_err(|why| Error::Unsuitable {
            message: format!("HITKEEP_BACKUP_IDENTITY_FILE ({}): {why}", path.display()),
            hint: Some(
                "name an age identity file as age-keygen writes it (AGE-SECRET-KEY-1… lines)"
                    .into(),
            ),
        })?;
        Ok(Some(Arc::new(opener)))
    }

    /// How an archive run seals its files and reads them back: with recipients, each file is sealed
    /// to them and to the host's archive key (`{data}/.hitkeep-archive-key`, made by the first such
    /// run), which opens the read-backs. `(None, None)` without recipients: files stay plain.
    pub fn archive_sealing(&self) -> Result<ArchiveSealing> {
        let recipients = &self.settings.backup.recipients;
        if recipients.is_empty() {
            // Files sealed by earlier runs may still need their read-back in a recovery.
            return Ok((None, self.host_archive_key()?.as_ref().map(host_opener)));
        }
        let path = self.layout.archive_key_file();
        let key = hitkeep_backup::HostKey::read_or_create(&path)
            .map_err(|why| archive_key_problem(&why))?;
        let mut to = recipients.clone();
        to.push(key.recipient());
        let sealer = hitkeep_backup::Sealer::new(&to).map_err(|why| Error::Unsuitable {
            message: format!("HITKEEP_BACKUP_RECIPIENTS: {why}"),
            hint: None,
        })?;
        Ok((sealer.map(Arc::new), Some(host_opener(&key))))
    }

    /// What opens sealed archive files for `archive query`, `archive restore` and
    /// `import-archives`: the host's archive key when this host has one (never made here), and the
    /// identities of `HITKEEP_BACKUP_IDENTITY_FILE` when it is set. `None` when neither.
    pub fn archive_opener(&self) -> Result<Option<Arc<hitkeep_backup::Opener>>> {
        let host = self.host_archive_key()?;
        let opener = match (self.opener()?, host) {
            (Some(o), Some(key)) => Some((*o).clone().with_host_key(&key)),
            (Some(o), None) => Some((*o).clone()),
            (None, Some(key)) => Some(hitkeep_backup::Opener::new(Vec::new()).with_host_key(&key)),
            (None, None) => None,
        };
        Ok(opener.map(Arc::new))
    }

    fn host_archive_key(&self) -> Result<Option<hitkeep_backup::HostKey>> {
        hitkeep_backup::HostKey::read(&self.layout.archive_key_file())
            .map_err(|why| archive_key_problem(&why))
    }

    /// The backup job: one cycle of every database, then retention (when it applies) and the
    /// leftovers of interrupted runs. A failed clean-up after a committed cycle is a warning, never
    /// a failed backup.
    pub async fn backup(&self, progress: Option<Arc<dyn Progress>>) -> Result<CycleReport> {
        self.backup_and_list(progress)
            .await
            .map(|(report, _)| report)
    }

    /// [`Engine::backup`], and the location's snapshots as the clean-up left them (what the status
    /// counts), when it ran: the clean-up lists them anyway, so a caller need not list again.
    pub async fn backup_and_list(
        &self,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<(CycleReport, Option<Catalog>)> {
        let location = self.backup_location()?;
        // Opening the location (a request on S3) and the shared database with its tenant list (local
        // reads, and a WAL replay) are independent: side by side.
        let layout = self.layout.clone();
        let opening = tokio::task::spawn_blocking(move || -> Result<_> {
            let shared = layout.open(&layout.db_path, OpenMode::Existing)?;
            let tenants = CycleTenants::discover(&layout, &shared)?;
            Ok((shared, tenants))
        });
        let (storage, opened) = tokio::join!(Storage::open(location, &self.settings.s3), opening);
        let storage = storage?;
        let (shared, tenants) = opened.map_err(|e| Error::Panicked {
            job: "backup",
            why: e.to_string(),
        })??;
        let layout = &self.layout;
        let mode = match self.settings.backup.mode {
            hitkeep_config::BackupMode::Full => hitkeep_backup::BackupMode::Full,
            hitkeep_config::BackupMode::Incremental => hitkeep_backup::BackupMode::Incremental,
        };
        let mut options = BackupOptions::for_layout(layout).with_mode(mode);
        options.concurrency = Concurrency::AUTO as usize;
        if let Concurrency::Fixed(n) = self.settings.backup.concurrency {
            options = options.with_concurrency(n.get() as usize);
        }
        if let Some(sealer) = self.sealer()? {
            options = options.with_sealer(sealer);
            if self.settings.backup.tenant_keys {
                options = options.with_tenant_keys(layout.tenant_keys_dir());
            }
        }
        if let Some(lock) = self.settings.backup.object_lock {
            options = options.with_object_lock(lock.days, lock.mode);
        }
        if let Some(progress) = progress {
            options = options.with_progress(progress);
        }
        let report = hitkeep_backup::run_cycle(&storage, shared, tenants, &options).await?;
        let retention = (!location.is_s3() || self.settings.backup.prune_s3)
            .then_some(self.settings.backup.retention);
        let catalog = match self.prune_after_cycle(&storage, retention, &report).await {
            Ok(catalog) => catalog,
            Err(e) => {
                tracing::warn!(error = %crate::describe(&e), "pruning after the cycle failed; the new snapshot is complete");
                None
            }
        };
        Ok((report, catalog))
    }

    /// After a committed cycle (its lock is free again, but this process's cycles are the only ones
    /// of its source): retention when it applies, and in any case the leftovers of interrupted runs.
    /// Returns the snapshots left.
    async fn prune_after_cycle(
        &self,
        storage: &Storage,
        retention: Option<NonZeroU32>,
        report: &CycleReport,
    ) -> Result<Option<Catalog>> {
        let Some(source) = self.layout.source_id()? else {
            // The cycle creates the source id before it claims anything; without one, nothing of
            // this source can be a leftover.
            return Ok(None);
        };
        let _lock = hitkeep_backup::CycleLock::acquire(&self.layout.backup_lock_file())?;
        let prune = async {
            let catalog = Catalog::load_after(storage, report).await?;
            let mut plan = match retention {
                Some(keep) => PrunePlan::with_retention(
                    &catalog,
                    &self.retention(keep),
                    Some(report.id),
                    Some(source),
                ),
                None => PrunePlan::leftovers(&catalog, report.id, source),
            };
            plan.hold_locked(storage, &catalog).await?;
            let removed = plan.execute(storage).await?;
            if !plan.is_empty() {
                tracing::info!(
                    snapshots = plan.deletions.len(),
                    objects = removed,
                    "pruned old snapshots and leftovers of interrupted runs"
                );
            }
            let remaining = catalog.without(&plan.deletions);
            self.sweep_pool(storage, &plan, &remaining).await?;
            Ok(Some(remaining))
        };
        // Partial uploads are told apart by age (S3) or lock (local), not by snapshot: the sweep is
        // independent of the pruning and runs beside it.
        let (pruned, _) = tokio::join!(prune, sweep_partial_uploads(storage));
        pruned
    }
}

impl Engine {
    /// The retention policy of the settings, keeping the newest `newest` cycles.
    pub(crate) fn retention(&self, newest: NonZeroU32) -> hitkeep_backup::Retention {
        let k = &self.settings.backup.keep;
        let keep = hitkeep_backup::Keep::new(k.last, k.hourly, k.daily, k.weekly, k.monthly);
        hitkeep_backup::Retention::new(newest, keep)
    }

    /// Sweeps the pool after a prune, when the location holds incremental snapshots or this
    /// installation writes them (a killed first cycle leaves pool objects and no manifest).
    /// `remaining` is the location once the plan's deletions are done.
    pub(crate) async fn sweep_pool(
        &self,
        storage: &Storage,
        plan: &PrunePlan,
        remaining: &Catalog,
    ) -> Result<Option<PoolSweep>> {
        let incremental = self.settings.backup.mode == hitkeep_config::BackupMode::Incremental;
        if !plan.sweeps_pool && !incremental {
            return Ok(None);
        }
        let sweep =
            hitkeep_backup::sweep_pool(storage, remaining, hitkeep_backup::POOL_GRACE).await?;
        Ok(Some(sweep))
    }
}

/// Removes what killed processes left half-uploaded, logging what went; a failure is a warning,
/// never a failed backup or prune. Returns the sweep, when there was one, for callers that show it.
pub async fn sweep_partial_uploads(storage: &Storage) -> Option<SweepReport> {
    let report = match storage.sweep_partial_uploads(PARTIAL_UPLOAD_AGE).await {
        Ok(r) => r,
        Err(e) => {
            // A storage error's message already ends with its hint.
            tracing::warn!("could not look for partial uploads of killed runs: {e}");
            return None;
        }
    };
    for p in &report.removed {
        tracing::info!(key = p.key, bytes = ?p.bytes, "removed a partial upload left by a killed run");
    }
    for (p, e) in &report.failed {
        tracing::warn!(key = p.key, error = %e, "could not remove a partial upload left by a killed run");
    }
    Some(report)
}

/// An opener of the host's archive key alone.
fn host_opener(key: &hitkeep_backup::HostKey) -> Arc<hitkeep_backup::Opener> {
    Arc::new(hitkeep_backup::Opener::new(Vec::new()).with_host_key(key))
}

/// What seals an archive run's files, and what opens its read-backs.
pub type ArchiveSealing = (
    Option<Arc<hitkeep_backup::Sealer>>,
    Option<Arc<hitkeep_backup::Opener>>,
);

/// A damaged or unreadable archive key, and what to do.
fn archive_key_problem(why: &str) -> Error {
    Error::Unsuitable {
        message: format!("the archive key: {why}"),
        hint: Some("restore it from a copy; removed, a new one is made, and the archives sealed to the old one open only with HITKEEP_BACKUP_IDENTITY_FILE".into()),
    }
}
