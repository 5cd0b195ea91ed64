//! Pruning, planned first and executed second: keep the newest N usable snapshots of each database
//! (and what the period rules and pins of `keep.rs` keep), and remove unfinished leftovers older than
//! the newest usable one.

use std::num::NonZeroU32;

use futures::{StreamExt as _, TryStreamExt as _};
use hitkeep_storage::Storage;
use serde::Serialize;

use crate::SnapshotId;
use crate::catalog::{Catalog, SnapshotInfo, SnapshotState};
use crate::claim::is_mine;
use crate::error::{Error, Result};
use crate::keep::Keep;
use crate::manifest::Database;
use hitkeep_data::SourceId;

const OLDER: &str = "older than the newest retained cycles";

/// A snapshot to delete, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Deletion {
    /// Which database.
    pub database: Database,
    /// Which snapshot.
    pub id: SnapshotId,
    /// Why it goes.
    pub reason: &'static str,
    /// Bytes it holds.
    pub size: u64,
}

/// What pruning would delete. Nothing is deleted until [`PrunePlan::execute`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct PrunePlan {
    /// The snapshots to delete.
    pub deletions: Vec<Deletion>,
    /// The location holds incremental snapshots, whose table files are shared objects in its pool:
    /// deleting a snapshot leaves them, and [`crate::sweep_pool`] removes those no snapshot left
    /// names, once the deletions are done.
    pub sweeps_pool: bool,
    /// Snapshots retention would delete but S3 Object Lock still keeps ([`PrunePlan::hold_locked`]):
    /// left in place, never reported as deleted.
    pub held: Vec<Held>,
}

/// A snapshot past retention that S3 Object Lock still keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Held {
    /// Which database.
    pub database: Database,
    /// Which snapshot.
    pub id: SnapshotId,
    /// Until when (the server's clock) one of its objects at least is locked.
    pub until: jiff::Timestamp,
    /// Bytes it holds.
    pub size: u64,
}

/// Whether a cycle restores whole: not a split cycle (HitKeep 2.13) whose default tenant has no
/// complete snapshot in it. A legacy cycle (no manifest) is taken as whole.
fn restores_whole(cycle: &crate::catalog::SnapshotInfo) -> bool {
    let Some(m) = &cycle.manifest else {
        return true;
    };
    match (m.layout, m.default_tenant) {
        (Some(hitkeep_data::TenantLayout::Split), Some(default)) => m.tenants.iter().any(|t| {
            t.tenant_id == default
                && matches!(t.state, crate::manifest::TenantState::Complete { .. })
        }),
        _ => true,
    }
}

/// What a prune keeps: the newest N cycles that restore whole (`HITKEEP_BACKUP_RETENTION`), and
/// whatever the period rules keep besides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// The newest cycles kept.
    pub newest: NonZeroU32,
    /// Restic's rules, kept on top.
    pub keep: Keep,
}

impl Retention {
    /// The newest `newest` cycles, and what `keep` keeps.
    pub fn new(newest: NonZeroU32, keep: Keep) -> Retention {
        Retention { newest, keep }
    }
}

impl PrunePlan {
    /// [`PrunePlan::with_retention`] of the newest `keep` cycles and no period rules.
    pub fn new(
        catalog: &Catalog,
        keep: NonZeroU32,
        protect: Option<SnapshotId>,
        source: Option<SourceId>,
    ) -> PrunePlan {
        let retention = Retention::new(keep, Keep::default());
        PrunePlan::with_retention(catalog, &retention, protect, source)
    }

    /// Plans for keeping the newest `retention.newest` committed cycles, the cycles its period rules
    /// keep (chosen among the cycles that restore whole), and every pinned cycle. Retention follows cycles, not folders: a
    /// tenant's snapshot stays while its cycle does, so every kept cycle restores whole. Also kept: each
    /// tenant's newest complete snapshot (its last good copy, even if its cycles failed since), anything
    /// newer than the newest committed cycle (it may still be running), `protect` (the snapshot just
    /// written), and every corrupt snapshot (it may be a newer format this build cannot read).
    ///
    /// With `source` (this installation's), only its own snapshots are counted or deleted, and cycles
    /// go by the order they ran in (a cycle dated ahead by a wrong clock leaves in its turn); its
    /// unfinished snapshots other than `protect` are leftovers of interrupted runs and go at once,
    /// since the caller holds the cycle lock. Snapshots with no source recorded (older manifests,
    /// HitKeep Go's) count as its own only while no other source writes to the destination.
    pub fn with_retention(
        catalog: &Catalog,
        retention: &Retention,
        protect: Option<SnapshotId>,
        source: Option<SourceId>,
    ) -> PrunePlan {
        let keep = usize::try_from(retention.newest.get()).unwrap_or(usize::MAX);
        let usable =
            |s: &SnapshotState| matches!(s, SnapshotState::Complete | SnapshotState::Legacy);
        let all = catalog.databases.iter().flat_map(|d| d.snapshots.iter());
        let others = source.is_some_and(|s| crate::claim::others_present(all, s));
        let mine = |snap: &SnapshotInfo| source.is_none_or(|s| is_mine(snap, s, others));
        let mut usable_cycles: Vec<&SnapshotInfo> = catalog
            .snapshots(Database::Shared)
            .iter()
            .filter(|s| usable(&s.state) && mine(s))
            .collect();
        usable_cycles.sort_by_key(|s| std::cmp::Reverse(s.run_order()));
        let cycles: Vec<SnapshotId> = usable_cycles.iter().map(|s| s.id).collect();
        // `keep` counts cycles that restore whole: a split cycle whose default tenant failed (a wrong
        // HITKEEP_DATA_PATH for a day of hourly cycles) must not push the last whole one out. Those
        // newer than it are kept too.
        let mut whole = 0;
        let mut kept: Vec<SnapshotId> = usable_cycles
            .iter()
            .take_while(|s| {
                let more = whole < keep;
                whole += usize::from(restores_whole(s));
                more
            })
            .map(|s| s.id)
            .collect();
        let wholes: Vec<SnapshotId> = usable_cycles
            .iter()
            .filter(|s| restores_whole(s))
            .map(|s| s.id)
            .collect();
        kept.extend(retention.keep.select(&wholes));
        kept.extend(catalog.pins.iter().copied());
        let Some(newest) = cycles.iter().max().copied() else {
            return PrunePlan::default();
        };
        let mut deletions = Vec::new();
        for db in &catalog.databases {
            let newest_complete = db
                .snapshots
                .iter()
                .filter(|s| usable(&s.state) && mine(s))
                .max_by_key(|s| s.run_order())
                .map(|s| s.id);
            for snap in db.snapshots.iter().filter(|s| mine(s)) {
                // An unfinished snapshot of this source is an interrupted run's (the caller holds the
                // lock); one of unknown source may be a run still going, unless a newer cycle exists.
                let abandoned = source.is_some() && snap.source == source;
                let spared = Some(snap.id) == protect
                    || kept.contains(&snap.id)
                    || (snap.id > newest && !abandoned)
                    || matches!(snap.state, SnapshotState::Corrupt(_))
                    || (db.database != Database::Shared && Some(snap.id) == newest_complete);
                if spared {
                    continue;
                }
                let reason = if usable(&snap.state) {
                    OLDER
                } else if abandoned {
                    "unfinished: left by an interrupted run"
                } else {
                    "unfinished and superseded"
                };
                deletions.push(Deletion {
                    database: db.database,
                    id: snap.id,
                    reason,
                    size: snap.size,
                });
            }
        }
        PrunePlan {
            deletions,
            sweeps_pool: crate::sweep::has_pool(catalog),
            held: Vec::new(),
        }
    }

    /// Only the leftovers of this source's interrupted runs (and unfinished snapshots of unknown source
    /// older than the newest cycle): what a successful cycle removes even where retention is off (S3
    /// without `HITKEEP_BACKUP_PRUNE_S3`), so that a killed run's objects do not stay forever. The
    /// caller holds the cycle lock.
    pub fn leftovers(catalog: &Catalog, protect: SnapshotId, source: SourceId) -> PrunePlan {
        let mut plan = PrunePlan::new(catalog, NonZeroU32::MAX, Some(protect), Some(source));
        plan.deletions.retain(|d| d.reason != OLDER);
        plan
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.deletions.is_empty()
    }

    /// Moves to [`PrunePlan::held`] each planned deletion that S3 Object Lock still keeps, by the
    /// server's clock: deleting it would only hide it behind a delete marker (the bucket keeps the
    /// locked version) and report as deleted what is not. A snapshot is held while the lock its
    /// manifest records runs (untrusted, but it can only keep more), else while any of its objects
    /// is locked (asked of the bucket: snapshots without a record, unfinished ones). Asks only
    /// where the bucket has Object Lock; a store without it (or a key not allowed to ask) holds
    /// nothing, with a warning for the latter.
    pub async fn hold_locked(&mut self, storage: &Storage, catalog: &Catalog) -> Result<()> {
        if self.deletions.is_empty() {
            return Ok(());
        }
        let Some(bucket) = bucket_lock(storage, "snapshots").await? else {
            return Ok(());
        };
        let now = bucket.server_time;
        let mut kept = Vec::new();
        for d in std::mem::take(&mut self.deletions) {
            let recorded = catalog
                .snapshots(d.database)
                .iter()
                .find(|s| s.id == d.id)
                .and_then(|s| s.manifest.as_ref()?.object_lock)
                .map(|l| l.retain_until)
                .filter(|until| now.is_none_or(|now| *until > now));
            let folder = format!("{}/{}", d.database.folder(), d.id);
            let until = match recorded {
                Some(until) => Some(until),
                None => locked_until(storage, &folder).await?,
            };
            match until {
                Some(until) => {
                    tracing::info!(database = %d.database, snapshot = %d.id, %until, "past retention but locked by S3 Object Lock: kept");
                    self.held.push(Held {
                        database: d.database,
                        id: d.id,
                        until,
                        size: d.size,
                    });
                }
                None => kept.push(d),
            }
        }
        self.deletions = kept;
        Ok(())
    }

    /// Deletes the planned snapshots, then lists each folder again to check it is really gone (some
    /// providers acknowledge deletes they do not perform).
    pub async fn execute(&self, storage: &Storage) -> Result<usize> {
        let mut objects = 0;
        for d in &self.deletions {
            let folder = format!("{}/{}", d.database.folder(), d.id);
            objects += storage.delete_prefix(&folder).await?;
            let left = storage
                .list(&folder, hitkeep_storage::ListMode::Recursive)
                .await?;
            if !left.is_empty() {
                return Err(Error::NotDeleted {
                    folder,
                    left: left.len(),
                });
            }
            tracing::info!(database = %d.database, snapshot = %d.id, reason = d.reason, "pruned snapshot");
        }
        Ok(objects)
    }
}

/// The bucket's Object Lock when `storage` is an S3 bucket that has it enabled; `None` for a
/// directory, a store without Object Lock, or a key not allowed to ask (with a warning naming
/// `what` a delete would then only hide).
pub(crate) async fn bucket_lock(
    storage: &Storage,
    what: &str,
) -> Result<Option<hitkeep_storage::BucketLock>> {
    if !storage.location().is_s3() {
        return Ok(None);
    }
    match storage.bucket_object_lock().await {
        Ok(bucket) => Ok(bucket.enabled.then_some(bucket)),
        Err(e) if e.kind() == hitkeep_storage::ErrorKind::Unsupported => Ok(None),
        Err(e) if e.kind() == hitkeep_storage::ErrorKind::AccessDenied => {
            tracing::warn!(error = %e, "could not ask whether the bucket has Object Lock; {what} it locks would be hidden by delete markers, not deleted");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A date until which an object in `folder` is still locked, if one is (the first found).
async fn locked_until(storage: &Storage, folder: &str) -> Result<Option<jiff::Timestamp>> {
    let objects = storage
        .list(folder, hitkeep_storage::ListMode::Recursive)
        .await?;
    let keys = objects.into_iter().filter(|e| !e.is_dir).map(|e| e.key);
    let first = futures::stream::iter(keys)
        .map(|key| async move { storage.retained(&key).await.map(|r| r.locked_until()) })
        .buffer_unordered(16)
        .try_filter_map(|until| std::future::ready(Ok(until)))
        .boxed()
        .try_next()
        .await?;
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::DatabaseSnapshots;

    /// HitKeep Go's snapshots (usable, whole) every hour of ten days from 2026-03-01 00:00 UTC.
    fn hourly_catalog() -> Catalog {
        let start: jiff::Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let snapshots = (0..240)
            .map(|h| SnapshotInfo {
                id: SnapshotId::at(start + jiff::SignedDuration::from_hours(h)),
                state: SnapshotState::Legacy,
                size: 1,
                objects: 1,
                manifest: None,
                source: None,
            })
            .collect();
        Catalog {
            databases: vec![DatabaseSnapshots {
                database: Database::Shared,
                snapshots,
            }],
            ..Catalog::default()
        }
    }

    fn kept(catalog: &Catalog, plan: &PrunePlan) -> Vec<String> {
        let all = catalog.snapshots(Database::Shared).iter().map(|s| s.id);
        all.filter(|id| !plan.deletions.iter().any(|d| d.id == *id))
            .map(|id| id.to_string())
            .collect()
    }

    #[test]
    fn period_rules_and_pins_keep_cycles_beside_the_newest_n() {
        let mut catalog = hourly_catalog();
        let newest = NonZeroU32::new(2).unwrap();
        let plan = PrunePlan::new(&catalog, newest, None, None);
        assert_eq!(
            kept(&catalog, &plan),
            ["2026-03-10T220000Z", "2026-03-10T230000Z"]
        );

        // Three days and two ISO weeks (2026-03-08 is a Sunday) beside the newest two, and a pin.
        catalog.pins.insert("2026-03-01T050000Z".parse().unwrap());
        let retention = Retention::new(newest, Keep::new(0, 0, 3, 2, 0));
        let plan = PrunePlan::with_retention(&catalog, &retention, None, None);
        assert_eq!(
            kept(&catalog, &plan),
            [
                "2026-03-01T050000Z",
                "2026-03-08T230000Z",
                "2026-03-09T230000Z",
                "2026-03-10T220000Z",
                "2026-03-10T230000Z",
            ]
        );
        assert_eq!(plan.deletions.len(), 240 - 5);
        assert!(plan.deletions.iter().all(|d| d.reason == OLDER));
    }
}
