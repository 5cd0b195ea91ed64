//! Pruning, planned first and executed second: keep the newest N usable snapshots of each database, and
//! remove unfinished leftovers older than the newest usable one.

use std::num::NonZeroU32;

use hitkeep_storage::Storage;
use serde::Serialize;

use crate::SnapshotId;
use crate::catalog::{Catalog, SnapshotState};
use crate::error::{Error, Result};
use crate::manifest::Database;

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

impl PrunePlan {
    /// Plans for keeping the newest `keep` committed cycles. Retention follows cycles, not folders: a
    /// tenant's snapshot stays while its cycle does, so every kept cycle restores whole. Also kept: each
    /// tenant's newest complete snapshot (its last good copy, even if its cycles failed since), anything
    /// newer than the newest committed cycle (it may still be running), `protect` (the snapshot just
    /// written), and every corrupt snapshot (it may be a newer format this build cannot read).
    pub fn new(catalog: &Catalog, keep: NonZeroU32, protect: Option<SnapshotId>) -> PrunePlan {
        let keep = usize::try_from(keep.get()).unwrap_or(usize::MAX);
        let usable =
            |s: &SnapshotState| matches!(s, SnapshotState::Complete | SnapshotState::Legacy);
        let usable_cycles: Vec<&crate::catalog::SnapshotInfo> = catalog
            .snapshots(Database::Shared)
            .iter()
            .rev()
            .filter(|s| usable(&s.state))
            .collect();
        let cycles: Vec<SnapshotId> = usable_cycles.iter().map(|s| s.id).collect();
        // `keep` counts cycles that restore whole: a split cycle whose default tenant failed (a wrong
        // HITKEEP_DATA_PATH for a day of hourly cycles) must not push the last whole one out. Those
        // newer than it are kept too.
        let mut whole = 0;
        let kept: Vec<SnapshotId> = usable_cycles
            .iter()
            .take_while(|s| {
                let more = whole < keep;
                whole += usize::from(restores_whole(s));
                more
            })
            .map(|s| s.id)
            .collect();
        let Some(newest) = cycles.first().copied() else {
            return PrunePlan::default();
        };
        let mut deletions = Vec::new();
        for db in &catalog.databases {
            let newest_complete = db
                .snapshots
                .iter()
                .rev()
                .find(|s| usable(&s.state))
                .map(|s| s.id);
            for snap in &db.snapshots {
                let spared = Some(snap.id) == protect
                    || kept.contains(&snap.id)
                    || snap.id > newest
                    || matches!(snap.state, SnapshotState::Corrupt(_))
                    || (db.database != Database::Shared && Some(snap.id) == newest_complete);
                if spared {
                    continue;
                }
                let reason = if usable(&snap.state) {
                    "older than the newest retained cycles"
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
        PrunePlan { deletions }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.deletions.is_empty()
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
                return Err(Error::NotFound(format!(
                    "{folder}: {} object(s) still listed after deleting; the storage did not delete them",
                    left.len()
                )));
            }
            tracing::info!(database = %d.database, snapshot = %d.id, reason = d.reason, "pruned snapshot");
        }
        Ok(objects)
    }
}
