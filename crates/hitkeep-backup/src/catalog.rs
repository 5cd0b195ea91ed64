//! What is in a backup location: every snapshot of every database, with its state. One listing per
//! database folder finds them; then each complete snapshot's manifest is read.
//!
//! A restore needs one cycle, not the history: [`Catalog::load_cycle`] finds the newest committed cycle
//! by listing only the most recent snapshot folders (widening the time window until one is complete), so
//! its cost does not grow with the number of snapshots kept.

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use hitkeep_data::SourceId;
use hitkeep_storage::{Entry, ListMode, Storage};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use uuid::Uuid;

use crate::SnapshotId;
use crate::cycle::CycleReport;
use crate::error::{Error, Result};
use crate::manifest::{Database, IN_PROGRESS_NAME, MANIFEST_NAME, Manifest, TenantState};

/// How far a snapshot got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "detail")]
pub enum SnapshotState {
    /// Its manifest exists and parses.
    Complete,
    /// No manifest: interrupted or still running. Never offered as a backup.
    Incomplete,
    /// HitKeep Go's snapshot: an export without a manifest, which cannot be verified.
    Legacy,
    /// A manifest exists but cannot be used.
    Corrupt(String),
}

/// One snapshot of one database.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// How far it got.
    pub state: SnapshotState,
    /// Bytes stored under its folder.
    pub size: u64,
    /// Objects stored under its folder.
    pub objects: usize,
    /// The manifest, for complete snapshots.
    pub manifest: Option<Manifest>,
    /// Who wrote it: from the manifest, or from the in-progress marker of an unfinished snapshot.
    /// `None` for snapshots written before sources were recorded, and HitKeep Go's.
    pub source: Option<SourceId>,
}

impl SnapshotInfo {
    /// Bytes a restore downloads: its manifest's files (an incremental snapshot's are mostly in the
    /// pool, not its folder), or what its folder holds when it has no manifest.
    pub fn data_size(&self) -> u64 {
        self.manifest
            .as_ref()
            .map_or(self.size, Manifest::total_size)
    }

    /// The cycle's sequence number, when its manifest records one.
    pub fn sequence(&self) -> Option<u64> {
        self.manifest.as_ref().and_then(|m| m.sequence)
    }

    /// The order cycles ran in: by sequence number, then by id (older manifests have none and come
    /// first). A cycle written by a clock set ahead sorts by when it ran, not by its name.
    pub fn run_order(&self) -> (u64, SnapshotId) {
        (self.sequence().unwrap_or(0), self.id)
    }

    /// Whether its id lies ahead of this machine's clock by more than a minute: written by a clock set
    /// ahead, or this clock is behind.
    pub fn in_future(&self) -> bool {
        self.id.timestamp() > Timestamp::now() + SignedDuration::from_mins(1)
    }
}

/// All snapshots of one database, oldest first.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DatabaseSnapshots {
    /// Which database.
    pub database: Database,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
}

/// The contents of a backup location.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Catalog {
    /// The shared database first, then tenants by id.
    pub databases: Vec<DatabaseSnapshots>,
    /// The pinned cycles ([`crate::pin`]); only [`Catalog::load`] and [`Catalog::load_after`] read
    /// them.
    pub pins: std::collections::BTreeSet<SnapshotId>,
}

impl Catalog {
    /// Lists `storage`. Folders are listed and manifests read [`READS_AT_ONCE`] at a time: one after
    /// another, a destination of 50 tenants keeping 24 cycles took over a thousand round trips in a
    /// row, and a cycle waits for this one after its commit (leftovers, the status).
    pub async fn load(storage: &Storage) -> Result<Catalog> {
        Catalog::load_knowing(storage, &Known::default()).await
    }

    /// [`Catalog::load`] right after the cycle of `report` (the clean-up after it). Where the
    /// cycle's tenants and manifests are is known, so they are listed and read beside the first
    /// listings instead of a level or two of round trips after them; every manifest is still read
    /// from the location, after the commit, as `load` reads it.
    pub async fn load_after(storage: &Storage, report: &CycleReport) -> Result<Catalog> {
        Catalog::load_knowing(storage, &Known::of(report)).await
    }

    async fn load_knowing(storage: &Storage, known: &Known) -> Result<Catalog> {
        let known_tenants = &known.tenants;
        let listing = |tenant_id| list_database(storage, Database::Tenant { tenant_id });
        let known_listed = futures::stream::iter(known_tenants.iter().copied())
            .map(|id| async move { Ok::<_, Error>((id, listing(id).await?)) })
            .buffered(READS_AT_ONCE)
            .try_collect::<Vec<_>>();
        let (shared, ids, pins, known_listed, fetched) = futures::try_join!(
            list_database(storage, Database::Shared),
            tenant_ids(storage),
            crate::keep::pinned(storage),
            known_listed,
            known.fetch(storage).map(Ok),
        )?;
        // A tenant of the cycle whose folder is gone by now is left out, as a listing leaves it.
        let listed = known_listed.into_iter().filter(|(id, _)| ids.contains(id));
        let others = ids.iter().copied().filter(|id| !known_tenants.contains(id));
        let fetched = &fetched;
        let tenants = listed
            .map(Ok)
            .chain(others.map(Err))
            .map(|tenant| async move {
                let (tenant_id, folders) = match tenant {
                    Ok(listed) => listed,
                    Err(id) => (id, listing(id).await?),
                };
                inspect_database(storage, Database::Tenant { tenant_id }, folders, fetched).await
            });
        let (shared, mut tenants) = futures::try_join!(
            inspect_database(storage, Database::Shared, shared, fetched),
            futures::stream::iter(tenants)
                .buffered(READS_AT_ONCE)
                .try_collect::<Vec<_>>(),
        )?;
        tenants.sort_by_key(|t| t.database.tenant_id());
        let mut databases = vec![shared];
        databases.extend(tenants);
        Ok(Catalog { databases, pins })
    }

    /// The catalog as it is once `deletions` (a prune just executed) are gone, without listing again.
    pub fn without(mut self, deletions: &[crate::retention::Deletion]) -> Catalog {
        for db in &mut self.databases {
            db.snapshots.retain(|s| {
                !deletions
                    .iter()
                    .any(|d| d.database == db.database && d.id == s.id)
            });
        }
        self
    }

    /// The shared database's snapshots only: what a new cycle needs to know of the ones before it.
    pub async fn load_shared(storage: &Storage) -> Result<Catalog> {
        Ok(Catalog {
            databases: vec![load_database(storage, Database::Shared).await?],
            ..Catalog::default()
        })
    }

    /// Only what restoring one cycle needs: its shared snapshot (`which`, or the newest committed one)
    /// and the tenant snapshots with the same id. Lists a bounded number of pages whatever the number of
    /// snapshots kept; falls back to [`Catalog::load`] when the cycle is not a committed one (legacy
    /// snapshots, unknown ids, a pruned shared snapshot), so errors and fallbacks stay the same.
    ///
    /// "The newest" is of one source: `source`, or else the destination's only one; when several
    /// installations write here it fails with [`Error::SeveralSources`], listing them.
    pub async fn load_cycle(
        storage: &Storage,
        which: Option<SnapshotId>,
        source: Option<SourceId>,
    ) -> Result<Catalog> {
        let shared = match which {
            Some(id) => Some(load_snapshot(storage, Database::Shared, id).await?),
            None => {
                let source = match source {
                    Some(s) => Some(s),
                    None => only_source(storage).await?,
                };
                newest_complete(storage, source).await?
            }
        };
        let Some(shared) = shared.filter(|s| s.state == SnapshotState::Complete) else {
            return Catalog::load(storage).await;
        };
        let id = shared.id;
        let mut databases = vec![DatabaseSnapshots {
            database: Database::Shared,
            snapshots: vec![shared],
        }];
        for tenant_id in tenant_ids(storage).await? {
            let database = Database::Tenant { tenant_id };
            let snapshot = load_snapshot(storage, database, id).await?;
            let snapshots = if snapshot.objects == 0 {
                Vec::new()
            } else {
                vec![snapshot]
            };
            databases.push(DatabaseSnapshots {
                database,
                snapshots,
            });
        }
        Ok(Catalog {
            databases,
            ..Catalog::default()
        })
    }

    /// The snapshots of `database` (empty when it has none).
    pub fn snapshots(&self, database: Database) -> &[SnapshotInfo] {
        self.databases
            .iter()
            .find(|d| d.database == database)
            .map_or(&[], |d| &d.snapshots)
    }

    /// The newest committed cycle: the complete shared snapshot that ran last (see
    /// [`SnapshotInfo::run_order`]).
    pub fn latest_committed(&self) -> Option<&SnapshotInfo> {
        self.snapshots(Database::Shared)
            .iter()
            .filter(|s| s.state == SnapshotState::Complete)
            .max_by_key(|s| s.run_order())
    }

    /// The newest committed cycle of `source` (snapshots without a recorded source count as its own
    /// when no other source wrote here).
    pub fn latest_committed_of(&self, source: SourceId) -> Option<&SnapshotInfo> {
        let shared = self.snapshots(Database::Shared);
        let others = crate::claim::others_present(shared, source);
        shared
            .iter()
            .filter(|s| s.state == SnapshotState::Complete)
            .filter(|s| crate::claim::is_mine(s, source, others))
            .max_by_key(|s| s.run_order())
    }

    /// One snapshot of one database.
    pub fn find(&self, database: Database, id: SnapshotId) -> Option<&SnapshotInfo> {
        self.snapshots(database).iter().find(|s| s.id == id)
    }

    /// Resolves `latest` or an id to a committed shared snapshot. "latest" is `source`'s newest cycle
    /// when given, else the newest of all (sequence numbers of different sources do not compare, so
    /// callers that know their source pass it).
    pub fn resolve(&self, which: Option<&str>) -> Result<&SnapshotInfo> {
        self.resolve_for(which, None)
    }

    /// [`Catalog::resolve`] with "latest" taken among `source`'s cycles (when it has any here).
    pub fn resolve_for(
        &self,
        which: Option<&str>,
        source: Option<SourceId>,
    ) -> Result<&SnapshotInfo> {
        let latest = || {
            source
                .and_then(|s| self.latest_committed_of(s))
                .or_else(|| self.latest_committed())
        };
        match which {
            None | Some("latest") => latest().ok_or(Error::NoCompleteSnapshot),
            Some(text) => {
                let id: SnapshotId = text.parse()?;
                self.find(Database::Shared, id)
                    .ok_or_else(|| self.unknown(id))
            }
        }
    }

    /// The error for a shared snapshot `id` that is not here, naming the newest that are.
    pub(crate) fn unknown(&self, id: SnapshotId) -> Error {
        let newest = self
            .snapshots(Database::Shared)
            .iter()
            .rev()
            .take(5)
            .map(|s| s.id)
            .collect();
        Error::SnapshotNotFound { id, newest }
    }
}

/// What a cycle just wrote, for [`Catalog::load_after`]: its tenants, and the keys of its manifests
/// (the shared one and each complete tenant's), all derived from its report.
#[derive(Debug, Default)]
struct Known {
    tenants: BTreeSet<Uuid>,
    manifests: Vec<String>,
}

impl Known {
    fn of(report: &CycleReport) -> Known {
        let manifest =
            |database: Database| format!("{}/{}/{MANIFEST_NAME}", database.folder(), report.id);
        let tenants = &report.shared.tenants;
        let complete = tenants
            .iter()
            .filter(|t| matches!(t.state, TenantState::Complete { .. }))
            .map(|t| {
                manifest(Database::Tenant {
                    tenant_id: t.tenant_id,
                })
            });
        Known {
            tenants: tenants.iter().map(|t| t.tenant_id).collect(),
            manifests: std::iter::once(manifest(Database::Shared))
                .chain(complete)
                .collect(),
        }
    }

    /// The cycle's manifests as the location holds them now; one that cannot be read here is left
    /// to the catalog's own read, which reports why.
    async fn fetch(&self, storage: &Storage) -> Fetched {
        let read = |key: String| async move { storage.read(&key).await.ok().map(|b| (key, b)) };
        let fetched = futures::stream::iter(self.manifests.iter().cloned())
            .map(read)
            .buffer_unordered(READS_AT_ONCE)
            .filter_map(std::future::ready)
            .collect()
            .await;
        Fetched(fetched)
    }
}

/// Manifests read ahead of the listings that find them, by key.
#[derive(Debug, Default)]
struct Fetched(BTreeMap<String, bytes::Bytes>);

/// Listings and manifest reads a catalog keeps in flight, in order: enough to hide a round trip,
/// few enough for any service's request limits.
const READS_AT_ONCE: usize = 8;

async fn tenant_ids(storage: &Storage) -> Result<Vec<Uuid>> {
    let mut ids: Vec<Uuid> = storage
        .list("tenants", ListMode::OneLevel)
        .await?
        .into_iter()
        .filter(|e| e.is_dir)
        .filter_map(|e| Uuid::parse_str(e.name()).ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// One snapshot folder, listed and inspected (no objects at all when it does not exist).
async fn load_snapshot(
    storage: &Storage,
    database: Database,
    id: SnapshotId,
) -> Result<SnapshotInfo> {
    let entries = storage
        .list(&format!("{}/{id}", database.folder()), ListMode::Recursive)
        .await?;
    inspect(storage, database, id, &entries, &Fetched::default()).await
}

/// The one source recorded in the destination; `None` when none is (older destinations); refuses when
/// several are.
async fn only_source(storage: &Storage) -> Result<Option<SourceId>> {
    let mut records = crate::claim::sources(storage).await?;
    match records.len() {
        0 => Ok(None),
        1 => Ok(records.pop().map(|r| r.source)),
        _ => Err(Error::SeveralSources(records)),
    }
}

/// The newest complete shared snapshot (of `source`, when given). Lists the snapshot folders newer than
/// a point in time, an hour back at first and four times further each round, newest first, so a
/// location with years of snapshots costs a handful of short listings. `None` when no snapshot is
/// complete. A newest one dated in the future (a clock set ahead) may not be the one that ran last:
/// then every shared snapshot is read and the one that ran last wins.
async fn newest_complete(
    storage: &Storage,
    source: Option<SourceId>,
) -> Result<Option<SnapshotInfo>> {
    let found = newest_complete_by_id(storage, source).await?;
    if !found.as_ref().is_some_and(SnapshotInfo::in_future) {
        return Ok(found);
    }
    let all = Catalog::load_shared(storage).await?;
    let latest = match source {
        Some(s) => all.latest_committed_of(s),
        None => all.latest_committed(),
    };
    Ok(latest.cloned())
}

pub(crate) async fn newest_complete_by_id(
    storage: &Storage,
    source: Option<SourceId>,
) -> Result<Option<SnapshotInfo>> {
    let folder = Database::Shared.folder();
    let now = Timestamp::now();
    let mut checked = std::collections::BTreeSet::new();
    let mut window = SignedDuration::from_hours(1);
    loop {
        // Past the year 1970, there is nothing older: list from the beginning.
        let from = now.checked_sub(window).ok().filter(|t| t.as_second() > 0);
        let listed = match from {
            Some(t) => {
                let after = format!("{folder}/{}", SnapshotId::at(t));
                storage
                    .list_after(&folder, ListMode::OneLevel, &after)
                    .await?
            }
            None => storage.list(&folder, ListMode::OneLevel).await?,
        };
        let mut ids: Vec<SnapshotId> = listed
            .iter()
            .filter(|e| e.is_dir)
            .filter_map(|e| e.name().parse().ok())
            .filter(|id| !checked.contains(id))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            checked.insert(id);
            let snapshot = load_snapshot(storage, Database::Shared, id).await?;
            // Unrecorded sources (older manifests) are the destination's only source's.
            let ours = source.is_none_or(|s| snapshot.source.is_none_or(|o| o == s));
            if snapshot.state == SnapshotState::Complete && ours {
                return Ok(Some(snapshot));
            }
        }
        if from.is_none() {
            return Ok(None);
        }
        window = window.saturating_mul(4);
    }
}

async fn load_database(storage: &Storage, database: Database) -> Result<DatabaseSnapshots> {
    let folders = list_database(storage, database).await?;
    inspect_database(storage, database, folders, &Fetched::default()).await
}

/// Every object of `database`'s folder, by the snapshot folder it is in.
async fn list_database(
    storage: &Storage,
    database: Database,
) -> Result<BTreeMap<SnapshotId, Vec<Entry>>> {
    let folder = database.folder();
    let mut by_id: BTreeMap<SnapshotId, Vec<Entry>> = BTreeMap::new();
    for entry in storage.list(&folder, ListMode::Recursive).await? {
        let rest = entry
            .key
            .strip_prefix(&format!("{folder}/"))
            .unwrap_or(&entry.key);
        let Some((first, _)) = rest.split_once('/') else {
            continue;
        };
        match first.parse::<SnapshotId>() {
            Ok(id) => by_id.entry(id).or_default().push(entry),
            Err(_) => tracing::debug!(
                key = entry.key,
                "ignoring an object outside any snapshot folder"
            ),
        }
    }
    Ok(by_id)
}

/// The snapshots in `folders`, each inspected (manifests read [`READS_AT_ONCE`] at a time, unless
/// `fetched` holds them already).
async fn inspect_database(
    storage: &Storage,
    database: Database,
    folders: BTreeMap<SnapshotId, Vec<Entry>>,
    fetched: &Fetched,
) -> Result<DatabaseSnapshots> {
    // Owned items: a closure over borrowed ones is not general enough for the `Send` futures that
    // a cycle's claim boxes.
    let snapshots = futures::stream::iter(folders)
        .map(|(id, entries)| async move { inspect(storage, database, id, &entries, fetched).await })
        .buffered(READS_AT_ONCE)
        .try_collect()
        .await?;
    Ok(DatabaseSnapshots {
        database,
        snapshots,
    })
}

async fn inspect(
    storage: &Storage,
    database: Database,
    id: SnapshotId,
    entries: &[Entry],
    fetched: &Fetched,
) -> Result<SnapshotInfo> {
    let has = |name: &str| entries.iter().any(|e| e.name() == name);
    let size = entries.iter().map(|e| e.size).sum();
    let mut source = None;
    let (state, manifest) = if has(MANIFEST_NAME) {
        let key = format!("{}/{id}/{MANIFEST_NAME}", database.folder());
        let bytes = match fetched.0.get(&key) {
            Some(bytes) => bytes.clone(),
            None => storage.read(&key).await?,
        };
        match Manifest::from_slice(&bytes) {
            Ok(m) if m.snapshot_id == id && m.database == database => {
                (SnapshotState::Complete, Some(m))
            }
            Ok(_) => (
                SnapshotState::Corrupt("the manifest belongs to another snapshot".into()),
                None,
            ),
            Err(e) => (SnapshotState::Corrupt(e.to_string()), None),
        }
    } else if !has(IN_PROGRESS_NAME) && has("schema.sql") && has("load.sql") {
        (SnapshotState::Legacy, None)
    } else {
        // The marker, or the claim announcement a run killed while claiming left (same content).
        let marker = entries
            .iter()
            .find(|e| e.name() == IN_PROGRESS_NAME)
            .or_else(|| {
                entries
                    .iter()
                    .find(|e| crate::claim::is_announcement(e.name()))
            });
        if let Some(marker) = marker {
            source = marker_source(storage, &marker.key).await;
        }
        (SnapshotState::Incomplete, None)
    };
    Ok(SnapshotInfo {
        id,
        state,
        size,
        objects: entries.len(),
        source: manifest.as_ref().and_then(|m| m.source).or(source),
        manifest,
    })
}

/// The source an unfinished snapshot's marker (at `key`) names; `None` when unreadable or from an
/// older version.
async fn marker_source(storage: &Storage, key: &str) -> Option<SourceId> {
    let bytes = storage.read(key).await.ok()?;
    serde_json::from_slice::<crate::claim::Marker>(&bytes)
        .ok()?
        .source
}
