//! Snapshots of HitKeep's DuckDB databases: complete, verifiable, and committed a cycle at a time.
//!
//! A cycle ([`run_cycle`]) exports the shared database and every tenant database with `EXPORT DATABASE`
//! (Parquet, zstd) under one [`SnapshotId`], uploads every file through hitkeep-storage with its size and
//! SHA-256, and writes each database's [`Manifest`] last. Tenants are committed first; the shared
//! manifest, which lists every tenant's outcome and manifest digest, is written last and commits the
//! cycle. A [`Catalog`] lists what a location holds, [`verify_snapshot`] re-reads a cycle, and a
//! [`PrunePlan`] keeps the newest N;
//! [`sweep_pool`] then removes the shared table files (incremental snapshots) no snapshot names. The layout is HitKeep's (`shared/{id}/`, `tenants/{uuid}/{id}/`), so
//! HitKeep Go's plain `IMPORT DATABASE` restores our snapshots, and we read its manifest-less ones.
//!
//! What this crate will not do: talk to object storage except through hitkeep-storage, read settings
//! from the environment, or open databases it was not handed (callers pass connections or openers).

#![deny(missing_docs)]

mod bundle;
mod catalog;
mod claim;
mod cycle;
mod error;
mod export;
mod follow;
mod import;
mod keep;
mod lanes;
mod lock;
pub mod manifest;
mod partition;
mod plain;
mod progress;
mod restore;
mod retention;
mod scratch;
mod snapshot_id;
mod snapshot_sql;
mod swap;
mod sweep;
mod tenant_keys;
mod verify;

pub use hitkeep_seal::{
    HostKey, OpenFailure, Opened, Opener, Sealer, Unopened, write_new_identity,
};

pub use crate::{
    bundle::{BUNDLE_MANIFEST, Bundle, BundleArtifact, BundleOutcome},
    catalog::{Catalog, DatabaseSnapshots, SnapshotInfo, SnapshotState},
    claim::{FUTURE_BOUND, SOURCES_FOLDER, SourceRecord, sources},
    cycle::{
        BackupMode, BackupOptions, CycleReport, CycleTenants, SMALL_DATABASE_BYTES, TenantSource,
        run_cycle,
    },
    error::{CountMismatch, Error, ErrorKind, OBJECT_LOCK_HOWTO, Result},
    keep::{Keep, PINS_FOLDER, pin, unpin},
    lock::CycleLock,
    manifest::{Database, LockRecord, Manifest},
    plain::{PlainExport, export_plain},
    progress::{NoProgress, Progress},
    restore::{
        CommitFailure, PreparedRestore, RESTORE_STORAGE_VERSION, RestoreItem, RestoreOutcome,
        RestorePlan, RestoreSelection,
    },
    retention::{Deletion, Held, PrunePlan, Retention},
    scratch::StaleScratch,
    snapshot_id::{SnapshotId, SnapshotIdError},
    sweep::{CLOCK_KEY, POOL_GRACE, PoolSweep, sweep_pool},
    tenant_keys::{
        ForgetPlan, Rewrap, RewrapPlan, TENANT_KEYS_FOLDER, forget, forgotten_keys, key_object,
        plan_forget, plan_rewrap, rewrap,
    },
    verify::{DatabaseCheck, VerifyReport, verify_snapshot},
};

/// Outcomes of work run out of order (`buffer_unordered`), each with its place, put back in order.
pub(crate) fn in_order<T>(mut placed: Vec<(usize, T)>) -> Vec<T> {
    placed.sort_by_key(|(place, _)| *place);
    placed.into_iter().map(|(_, item)| item).collect()
}
