//! The operator's snapshot operations: list, verify, prune (planned, then executed) and the S3
//! lifecycle rule that matches the retention.

use hitkeep_backup::{Catalog, CycleLock, PoolSweep, PrunePlan, SnapshotId, VerifyReport};
use hitkeep_config::Location;
use hitkeep_data::{JobKind, SourceId};
use hitkeep_storage::{Storage, SweepReport};

use crate::engine::{Engine, sweep_partial_uploads};
use crate::error::{Error, Result};

/// What a backup location holds, and which snapshots are "latest".
#[derive(Debug)]
#[non_exhaustive]
pub struct Listing {
    /// Every database's snapshots.
    pub catalog: Catalog,
    /// The newest committed cycle of each source writing to the location (one, usually).
    pub latest: Vec<SnapshotId>,
    /// The tenant key files `forget-tenant` deleted: snapshots sealed to them open no more.
    pub forgotten_keys: std::collections::BTreeSet<String>,
}

impl Engine {
    /// Lists the backup location.
    pub async fn list(&self) -> Result<Listing> {
        let storage = self.backup_storage().await?;
        let (catalog, forgotten_keys) = tokio::join!(
            Catalog::load(&storage),
            hitkeep_backup::forgotten_keys(&storage)
        );
        let catalog = catalog?;
        let latest = latest_per_source(&catalog);
        Ok(Listing {
            catalog,
            latest,
            forgotten_keys: forgotten_keys?,
        })
    }

    /// Re-reads a snapshot (`None` or "latest": this installation's newest) against its manifests;
    /// `deep` also restores it into scratch DuckDB databases next to the data.
    pub async fn verify(&self, snapshot: Option<&str>, deep: bool) -> Result<VerifyReport> {
        let storage = self.backup_storage().await?;
        let catalog = Catalog::load(&storage).await?;
        // "latest" is this installation's newest cycle when the destination holds several.
        let source = self.layout().source_id().ok().flatten();
        let id = catalog.resolve_for(snapshot, source)?.id;
        let scratch = self.layout().claim_staging(JobKind::Verify)?;
        // Read only where it is needed: a bad identity file never stops a check that needs none.
        let opener = if deep && encrypted(&catalog, id) {
            self.opener()?
        } else {
            None
        };
        Ok(hitkeep_backup::verify_snapshot(
            &storage,
            &catalog,
            id,
            deep,
            scratch.path(),
            opener.as_deref(),
        )
        .await?)
    }

    /// Plans the erasure of a tenant's backups: which of its key files `forget-tenant` deletes, and
    /// which of its snapshots that makes unreadable and which it leaves readable.
    pub async fn plan_forget_tenant(&self, tenant: uuid::Uuid) -> Result<ForgetJob> {
        let storage = self.backup_storage().await?;
        // As a prune: no cycle of this host seals to a key between the plan and the delete.
        let lock = CycleLock::acquire(&self.layout().backup_lock_file())?;
        let catalog = Catalog::load(&storage).await?;
        let plan = hitkeep_backup::plan_forget(&storage, &catalog, tenant).await?;
        let live = self.layout().tenant_db(tenant).is_file();
        Ok(ForgetJob {
            storage,
            plan,
            live,
            _lock: lock,
        })
    }

    /// Plans sealing every tenant key file to the current recipients (`HITKEEP_BACKUP_RECIPIENTS`),
    /// opening each with the identity (`HITKEEP_BACKUP_IDENTITY_FILE`): both are needed.
    pub async fn plan_rewrap(&self) -> Result<RewrapJob> {
        let sealer = self.sealer()?.ok_or_else(|| Error::Unsuitable {
            message: "rewrap seals the key files to HITKEEP_BACKUP_RECIPIENTS, which is not set".into(),
            hint: Some("set it to the new recipients (age1…), e.g. a key `hitkeep backup keygen FILE` printed".into()),
        })?;
        let opener = self.opener()?.ok_or_else(|| Error::Unsuitable {
            message:
                "rewrap opens the key files with HITKEEP_BACKUP_IDENTITY_FILE, which is not set"
                    .into(),
            hint: Some(
                "name the identity file of one of the recipients the key files are sealed to now"
                    .into(),
            ),
        })?;
        let storage = self.backup_storage().await?;
        // As a forget: no cycle or forget of this host writes or deletes a key file meanwhile (across
        // hosts, `rewrap` itself undoes a write a forget missed).
        let lock = CycleLock::acquire(&self.layout().backup_lock_file())?;
        let plan = hitkeep_backup::plan_rewrap(&storage, &opener, &sealer).await?;
        Ok(RewrapJob {
            storage,
            plan,
            _lock: lock,
        })
    }

    /// Plans a prune of this installation's snapshots beyond the retention, holding the cycle lock
    /// until the plan is executed or dropped (so no cycle starts meanwhile).
    pub async fn plan_prune(&self) -> Result<PruneJob> {
        let storage = self.backup_storage().await?;
        // Holding the cycle lock, this source's unfinished snapshots are all leftovers.
        let lock = CycleLock::acquire(&self.layout().backup_lock_file())?;
        let catalog = Catalog::load(&storage).await?;
        let source = self.layout().source_id()?;
        let sourced = catalog
            .databases
            .iter()
            .flat_map(|d| &d.snapshots)
            .any(|s| s.source.is_some());
        if source.is_none() && sourced {
            return Err(Error::Unsuitable {
                message: format!(
                    "prune removes only this installation's snapshots, and {} has no source id (no backup ran from this data path)",
                    self.layout().data_path.display()
                ),
                hint: Some(
                    "run prune where the backups are made (the same HITKEEP_DATA_PATH)".into(),
                ),
            });
        }
        let protect = match source {
            Some(s) => catalog.latest_committed_of(s),
            None => catalog.latest_committed(),
        }
        .map(|s| s.id);
        let retention = self.retention(self.settings().backup.retention);
        let mut plan = PrunePlan::with_retention(&catalog, &retention, protect, source);
        plan.hold_locked(&storage, &catalog).await?;
        Ok(PruneJob {
            engine: self.clone(),
            storage,
            plan,
            pins: catalog.pins.clone(),
            _lock: lock,
        })
    }

    /// Writes a committed cycle (`None` or "latest": this installation's newest) as plain folders
    /// under `dir` (which must not exist): HitKeep's layout, each folder read by a bare
    /// `IMPORT DATABASE`, whatever the mode it was written in.
    pub async fn export_plain(
        &self,
        snapshot: Option<&str>,
        dir: &std::path::Path,
    ) -> Result<hitkeep_backup::PlainExport> {
        let storage = self.backup_storage().await?;
        let catalog = Catalog::load(&storage).await?;
        let source = self.layout().source_id().ok().flatten();
        let id = catalog.resolve_for(snapshot, source)?.id;
        let opener = if encrypted(&catalog, id) {
            self.opener()?
        } else {
            None
        };
        Ok(hitkeep_backup::export_plain(&storage, &catalog, id, dir, opener.as_deref()).await?)
    }

    /// Pins a committed cycle (`None` or "latest": this installation's newest) so that no prune
    /// deletes it; returns its id.
    pub async fn pin(&self, snapshot: Option<&str>) -> Result<SnapshotId> {
        let storage = self.backup_storage().await?;
        let catalog = Catalog::load(&storage).await?;
        let source = self.layout().source_id().ok().flatten();
        let cycle = catalog.resolve_for(snapshot, source)?;
        if cycle.state != hitkeep_backup::SnapshotState::Complete {
            return Err(Error::Unsuitable {
                message: format!(
                    "snapshot {} is not a committed cycle, so there is nothing a pin would keep whole",
                    cycle.id
                ),
                hint: Some("pin a complete snapshot (see `hitkeep backup list`)".into()),
            });
        }
        hitkeep_backup::pin(&storage, cycle.id).await?;
        Ok(cycle.id)
    }

    /// Removes the pin of `snapshot`; `false` when it was not pinned.
    pub async fn unpin(&self, snapshot: &str) -> Result<bool> {
        let storage = self.backup_storage().await?;
        let id: SnapshotId = snapshot.parse().map_err(hitkeep_backup::Error::from)?;
        Ok(hitkeep_backup::unpin(&storage, id).await?)
    }

    /// The S3 lifecycle rules that expire snapshots a day after the retention stops covering them
    /// (never the pool of shared table files), and abort multipart uploads left for a day.
    pub fn lifecycle_rules(&self) -> Result<LifecycleRules> {
        let location = self.backup_location()?;
        let Location::S3(s3) = location else {
            return Err(Error::Unsuitable {
                message: format!(
                    "lifecycle rules are an S3 feature; HITKEEP_BACKUP_PATH is the local directory {location}, which `hitkeep backup run` prunes itself"
                ),
                hint: None,
            });
        };
        if s3.prefix().is_empty() {
            return Err(Error::Unsuitable {
                message: format!(
                    "HITKEEP_BACKUP_PATH {location} is a whole bucket; a lifecycle rule for it would expire every object in the bucket"
                ),
                hint: Some(format!(
                    "keep backups under a prefix, e.g. s3://{}/hitkeep/backups",
                    s3.bucket()
                )),
            });
        }
        let backup = &self.settings().backup;
        // Lifecycle rules expire by age, not count: keep a day more than the retention covers, so
        // the rule never removes one of the newest N.
        let minutes = backup.interval.as_secs() / 60 * u64::from(backup.retention.get());
        let mut days = minutes.div_ceil(24 * 60) + 1;
        // Under Object Lock, an expiry before the lock ends would hide a locked snapshot behind a
        // delete marker (the bucket keeps it, listings lose it); and a locked bucket is versioned, so
        // expired versions must go too, or nothing is ever freed (S3 removes none still locked).
        let lock_days = backup.object_lock.map(|l| u64::from(l.days.get()));
        if let Some(lock) = lock_days {
            days = days.max(lock + 1);
        }
        // Snapshot folders expire by age; `pool/` and `pool-e/` never do: their objects are shared by snapshots of
        // every age (incremental mode), and each cycle sweeps the ones no snapshot names any more.
        // `sources/` records are rewritten by every cycle and stay out of the rules too.
        let p = s3.prefix();
        let expire = |id: &str, folder: &str| {
            serde_json::json!({
                "ID": id,
                "Filter": { "Prefix": format!("{p}/{folder}/") },
                "Status": "Enabled",
                "Expiration": { "Days": days },
            })
        };
        let mut rules = serde_json::json!({
            "Rules": [
                expire("hitkeep-backup-retention-shared", "shared"),
                expire("hitkeep-backup-retention-tenants", "tenants"),
                {
                    "ID": "hitkeep-backup-partial-uploads",
                    "Filter": { "Prefix": format!("{p}/") },
                    "Status": "Enabled",
                    "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": 1 }
                }
            ]
        });
        // Deletes on a versioned bucket (prune, the pool sweep, forget-tenant's key files, lifecycle
        // expiry) leave the old version: a day later it goes, once no lock holds it.
        if lock_days.is_some()
            && let Some(list) = rules["Rules"].as_array_mut()
        {
            list.push(serde_json::json!({
                "ID": "hitkeep-backup-old-versions",
                "Filter": { "Prefix": format!("{p}/") },
                "Status": "Enabled",
                "NoncurrentVersionExpiration": { "NoncurrentDays": 1 }
            }));
        }
        Ok(LifecycleRules {
            rules,
            covered_minutes: minutes,
            days,
            bucket: s3.bucket().to_owned(),
        })
    }
}

/// A planned forget of a tenant's keys.
#[derive(Debug)]
pub struct ForgetJob {
    storage: Storage,
    /// What it deletes, and what that makes unreadable.
    pub plan: hitkeep_backup::ForgetPlan,
    /// Whether the tenant still has a database on this host: its next backup is then sealed to a
    /// new key, readable again.
    pub live: bool,
    _lock: CycleLock,
}

impl ForgetJob {
    /// The location, as shown to people.
    pub fn location(&self) -> String {
        self.storage.location().to_string()
    }

    /// Deletes the key files and confirms they are gone; returns how many.
    pub async fn execute(self) -> Result<usize> {
        Ok(hitkeep_backup::forget(&self.storage, &self.plan).await?)
    }
}

/// Planned rewrites of the tenant key files.
#[derive(Debug)]
pub struct RewrapJob {
    storage: Storage,
    /// The key files, each already opened and sealed to the new recipients.
    pub plan: hitkeep_backup::RewrapPlan,
    _lock: CycleLock,
}

impl RewrapJob {
    /// The location, as shown to people.
    pub fn location(&self) -> String {
        self.storage.location().to_string()
    }

    /// Writes the key files, each read back; returns how many.
    pub async fn execute(self) -> Result<usize> {
        Ok(hitkeep_backup::rewrap(&self.storage, &self.plan).await?)
    }
}

/// A planned prune, holding the cycle lock.
#[derive(Debug)]
pub struct PruneJob {
    engine: Engine,
    storage: Storage,
    /// What would be deleted, and why.
    pub plan: PrunePlan,
    pins: std::collections::BTreeSet<SnapshotId>,
    _lock: CycleLock,
}

/// What a prune did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Pruned {
    /// Objects deleted with the planned snapshots.
    pub objects: usize,
    /// Partial uploads of killed runs removed, when that sweep ran.
    pub partial: Option<SweepReport>,
    /// The pool's mark and sweep, when the location has a pool.
    pub pool: Option<PoolSweep>,
}

impl PruneJob {
    /// The pinned cycles the plan spared.
    pub fn pins(&self) -> &std::collections::BTreeSet<SnapshotId> {
        &self.pins
    }

    /// Where it prunes.
    pub fn location(&self) -> &Location {
        self.storage.location()
    }

    /// Deletes the planned snapshots (a fresh listing confirms them gone), then the pool objects no
    /// remaining snapshot names (past the grace period), then partial uploads of killed runs.
    pub async fn execute(self) -> Result<Pruned> {
        let objects = if self.plan.is_empty() {
            0
        } else {
            self.plan.execute(&self.storage).await?
        };
        // Listed again: the operator may have taken long to confirm, and marks must be as new as
        // the sweep (see `hitkeep_backup::sweep_pool`).
        let remaining = Catalog::load(&self.storage).await?;
        let pool = self
            .engine
            .sweep_pool(&self.storage, &self.plan, &remaining)
            .await?;
        let partial = sweep_partial_uploads(&self.storage).await;
        Ok(Pruned {
            objects,
            partial,
            pool,
        })
    }
}

/// The lifecycle rule, and what it covers.
#[derive(Debug)]
#[non_exhaustive]
pub struct LifecycleRules {
    /// The JSON for `aws s3api put-bucket-lifecycle-configuration`.
    pub rules: serde_json::Value,
    /// Minutes the retention covers.
    pub covered_minutes: u64,
    /// Days after which the rule expires objects.
    pub days: u64,
    /// The bucket.
    pub bucket: String,
}

/// The newest committed cycle of each source writing to the destination (one, usually).
fn latest_per_source(catalog: &Catalog) -> Vec<SnapshotId> {
    let shared = catalog.snapshots(hitkeep_backup::Database::Shared);
    let mut sources: Vec<SourceId> = shared.iter().filter_map(|s| s.source).collect();
    sources.sort();
    sources.dedup();
    if sources.is_empty() {
        return catalog
            .latest_committed()
            .map(|s| s.id)
            .into_iter()
            .collect();
    }
    sources
        .into_iter()
        .filter_map(|source| catalog.latest_committed_of(source).map(|s| s.id))
        .collect()
}

/// Whether cycle `id` of `catalog` is encrypted (its databases are, all or none).
fn encrypted(catalog: &Catalog, id: SnapshotId) -> bool {
    catalog
        .databases
        .iter()
        .flat_map(|d| &d.snapshots)
        .filter(|s| s.id == id)
        .any(|s| s.manifest.as_ref().is_some_and(|m| m.is_encrypted()))
}
