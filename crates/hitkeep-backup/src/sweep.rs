//! Mark and sweep of the pool, where incremental snapshots keep their table files once for all the
//! snapshots that name them. An object goes only when no manifest in the location names it and it
//! is older than a grace period by the storage's own clock.
//!
//! Why that is safe with a cycle in flight, a killed run and a wrong clock (see also
//! `cycle/incremental.rs`):
//! - A cycle names two kinds of objects: ones it uploads now (young: the grace period keeps them
//!   until its manifest names them; an upload of bytes already stored writes them again, which makes
//!   them young too), and ones it reuses from its own source's newest committed cycle, whose manifest
//!   only a prune of that same source deletes, under the cycle lock it holds.
//! - A manifest listed but gone when read (another source pruned it meanwhile) fails the catalog and
//!   with it the sweep; one that cannot be read (corrupt, or a newer format) stops the sweep: the
//!   objects it names cannot be told from unused ones.
//! - Ages compare the objects' modification times with that of an object the sweep writes, both by
//!   the storage's clock, never this machine's.
//! - Each step can be killed: what is left is objects no manifest names, which the next sweep removes.
//! - On a bucket with S3 Object Lock, an object still locked is left alone: a delete would only hide
//!   it behind a delete marker (the bucket keeps the locked version) and count as removed what is
//!   not. It stays listed, for a cycle to reuse or a sweep after its lock ends to remove.
//!
//! A cycle still checks, before each manifest, that every object it names is there (`commit`): a
//! person or a lifecycle rule may have removed one.

use std::collections::HashSet;

use futures::{StreamExt as _, TryStreamExt as _};
use hitkeep_storage::{ListMode, Sha256Digest, Storage};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::catalog::{Catalog, SnapshotState};
use crate::error::{Error, Result};
use crate::manifest::{POOL_FOLDER, SEALED_POOL_FOLDER, pool_key, sealed_pool_key};

/// How long an object no manifest names stays in the pool: a cycle in flight names its new objects
/// only when it commits, so this bounds how long a cycle may take between an upload and its
/// manifest. A day, far above any cycle; the cost is a day's unused objects.
pub const POOL_GRACE: SignedDuration = SignedDuration::from_hours(24);

/// The object whose modification time tells the storage's "now"; written by each sweep.
pub const CLOCK_KEY: &str = "pool/clock.json";

/// Deletions and checks kept in flight.
const AT_ONCE: usize = 8;

/// What a sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolSweep {
    /// Objects in the pool.
    pub objects: usize,
    /// Of those, named by a manifest.
    pub referenced: usize,
    /// Removed: named by none, and older than the grace period.
    pub removed: usize,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Named by none but younger than the grace period: a cycle in flight may name them yet.
    pub young: usize,
    /// Named by none and old enough, but still locked by S3 Object Lock (by the server's clock).
    pub locked: usize,
}

/// Whether `catalog` holds any incremental snapshot, so that there is a pool to sweep.
pub fn has_pool(catalog: &Catalog) -> bool {
    catalog
        .databases
        .iter()
        .flat_map(|d| &d.snapshots)
        .any(|s| s.manifest.as_ref().is_some_and(|m| m.is_incremental()))
}

/// Sweeps the pool of `storage`, marking what `catalog` (the location as it is now: listed after
/// any snapshot was deleted) names. Objects named by no manifest and last modified at least `grace`
/// before the storage's clock are deleted.
pub async fn sweep_pool(
    storage: &Storage,
    catalog: &Catalog,
    grace: SignedDuration,
) -> Result<PoolSweep> {
    let marked = marks(catalog)?;
    let now = storage_now(storage).await?;
    // Both pools, plain and encrypted: snapshots of either kind may sit side by side.
    let mut listed = storage.list(POOL_FOLDER, ListMode::Recursive).await?;
    listed.extend(
        storage
            .list(SEALED_POOL_FOLDER, ListMode::Recursive)
            .await?,
    );
    let pooled: Vec<Pooled> = listed
        .into_iter()
        .filter(|e| !e.is_dir && is_pool_object(&e.key))
        .map(|e| (e.key, e.size, e.modified))
        .collect();
    let mut sweep = PoolSweep {
        objects: pooled.len(),
        ..PoolSweep::default()
    };
    let unmarked: Vec<Pooled> = pooled
        .into_iter()
        .filter(|(key, ..)| !marked.contains(key))
        .collect();
    sweep.referenced = sweep.objects - unmarked.len();
    let cutoff = now - grace;
    // Young by the listing: no request. The time that decides a delete is read again just before
    // it, though: the object may have been written since. Compared in whole seconds: a listing's
    // times have milliseconds, the clock's (a `Last-Modified` header) not, and an object of the
    // clock's own second is not younger than it.
    let (young, old): (Vec<Pooled>, Vec<Pooled>) = unmarked
        .into_iter()
        .partition(|(_, _, listed)| listed.is_some_and(|t| t.as_second() > cutoff.as_second()));
    sweep.young = young.len();
    // The bucket is asked only when something may go.
    let locks = !old.is_empty()
        && crate::retention::bucket_lock(storage, "pool objects")
            .await?
            .is_some();
    let outcomes: Vec<Outcome> = futures::stream::iter(old)
        .map(|(key, size, _)| async move { sweep_one(storage, &key, size, cutoff, locks).await })
        .buffer_unordered(AT_ONCE)
        .try_collect()
        .await?;
    for outcome in outcomes {
        match outcome {
            Outcome::Removed(bytes) => {
                sweep.removed += 1;
                sweep.removed_bytes += bytes;
            }
            Outcome::Young => sweep.young += 1,
            Outcome::Locked => sweep.locked += 1,
        }
    }
    tracing::info!(
        objects = sweep.objects,
        removed = sweep.removed,
        bytes = sweep.removed_bytes,
        young = sweep.young,
        locked = sweep.locked,
        "swept the pool"
    );
    Ok(sweep)
}

/// A pool object as listed: key, size, and modification time where the listing gives it.
type Pooled = (String, u64, Option<Timestamp>);

/// Every pool object a manifest in `catalog` names, or the first manifest that cannot be read.
fn marks(catalog: &Catalog) -> Result<HashSet<String>> {
    let mut marked = HashSet::new();
    for db in &catalog.databases {
        for snap in &db.snapshots {
            if let SnapshotState::Corrupt(why) = &snap.state {
                return Err(Error::PoolNotSwept {
                    folder: format!("{}/{}", db.database.folder(), snap.id),
                    why: why.clone(),
                });
            }
            let objects = snap.manifest.iter().flat_map(|m| &m.files);
            marked.extend(objects.filter_map(|f| f.object.clone()));
        }
    }
    Ok(marked)
}

/// What became of an object no manifest names.
enum Outcome {
    /// Deleted: its bytes.
    Removed(u64),
    /// Kept: written within the grace period (or gone, or of unknown age).
    Young,
    /// Kept: S3 Object Lock still holds it.
    Locked,
}

/// Deletes `key` when it was last modified before `cutoff` and, where the bucket `locks`, no lock
/// holds it any more; the time is read now, not from the listing, so an object a cycle wrote again
/// since is kept.
async fn sweep_one(
    storage: &Storage,
    key: &str,
    size: u64,
    cutoff: Timestamp,
    locks: bool,
) -> Result<Outcome> {
    let Some(modified) = storage.modified_at(key).await? else {
        // Gone already (another sweep), or the storage does not say: leave it.
        return Ok(Outcome::Young);
    };
    if modified.parse::<Timestamp>().map_or(true, |t| t > cutoff) {
        return Ok(Outcome::Young);
    }
    if locks {
        match storage.retained(key).await {
            Ok(retained) if retained.locked_until().is_some() => return Ok(Outcome::Locked),
            Ok(_) => {}
            Err(e) if e.kind() == hitkeep_storage::ErrorKind::NotFound => {
                return Ok(Outcome::Young);
            }
            Err(e) => return Err(e.into()),
        }
    }
    storage.delete(key).await?;
    tracing::debug!(key, size, "removed an object no snapshot names");
    Ok(Outcome::Removed(size))
}

/// The storage's clock: the modification time it gives an object written now.
async fn storage_now(storage: &Storage) -> Result<Timestamp> {
    let note = serde_json::json!({
        "format": "hitkeep-pool-clock",
        "written_by": crate::cycle::tool(),
        "host_time": Timestamp::now(),
    });
    storage.write(CLOCK_KEY, note.to_string()).await?;
    let modified = storage.modified_at(CLOCK_KEY).await?;
    modified
        .and_then(|m| m.parse::<Timestamp>().ok())
        .ok_or(Error::NoStorageClock {
            key: CLOCK_KEY.to_owned(),
        })
}

/// Whether `key` is a pool object (`pool/ab/ab….parquet`, or encrypted `pool-e/ab/ab….age`), not
/// anything else stored under either folder.
fn is_pool_object(key: &str) -> bool {
    let named = |folder: &str, ext: &str, key_of: fn(&str) -> String| {
        key.strip_prefix(&format!("{folder}/"))
            .and_then(|rest| rest.rsplit_once('/'))
            .and_then(|(_, name)| name.strip_suffix(ext))
            .is_some_and(|sha| sha.parse::<Sha256Digest>().is_ok() && key_of(sha) == key)
    };
    named(POOL_FOLDER, ".parquet", pool_key) || named(SEALED_POOL_FOLDER, ".age", sealed_pool_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_keys_count_as_pool_objects() {
        let sha = "ab".repeat(32);
        assert!(is_pool_object(&pool_key(&sha)));
        assert!(is_pool_object(&sealed_pool_key(&sha)));
        assert!(!is_pool_object(&format!("pool-e/ab/{sha}.parquet")));
        assert!(!is_pool_object(&format!("pool/ab/{sha}.age")));
        assert!(!is_pool_object(CLOCK_KEY));
        assert!(!is_pool_object(&format!("pool/cd/{sha}.parquet")));
        assert!(!is_pool_object(&format!("pool/ab/{sha}.csv")));
        assert!(!is_pool_object("pool/ab/notahash.parquet"));
    }
}
