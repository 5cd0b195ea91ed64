//! A cycle's incremental snapshots ([`BackupMode::Incremental`], manifest format 2): each database's
//! changed partitions exported (`export/parts.rs`) and stored once in the pool under their SHA-256,
//! the unchanged ones named from the previous snapshot of the same database and source.
//!
//! Pool objects are never removed here, not even those of a failed snapshot: another snapshot may
//! name the same bytes. Only a mark-and-sweep over every manifest may remove one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use duckdb::Connection;
use futures::future::{BoxFuture, Shared};
use futures::{StreamExt as _, TryStreamExt as _};
use hitkeep_data::SourceId;
use hitkeep_storage::{ListMode, Sha256Digest, Storage};
use jiff::Timestamp;

use super::{
    BackupMode, BackupOptions, Pending, StagingDir, abandon, claim_folder, file_name, new_manifest,
    remove_stored, staged,
};
use crate::error::{Error, Result};
use crate::export::{PartedExport, export_parts};
use crate::manifest::{
    Database, FileEntry, INCREMENTAL_FORMAT_VERSION, MANIFEST_NAME, Manifest, POOL_FOLDER,
    TenantState, pool_key,
};

/// What a cycle may reuse: the source's newest committed cycle, when it was incremental, and what
/// the pool holds. Read once per cycle, beside the claim.
pub(super) type PreviousCycle<'a> = Shared<BoxFuture<'a, Option<Arc<Previous>>>>;

/// The previous cycle's shared manifest, and the pool's objects with their sizes.
pub(super) struct Previous {
    shared: Manifest,
    pool: HashMap<String, u64>,
}

/// The newest committed cycle of `source` and a listing of the pool, if that cycle was incremental.
/// A full one starts the chains again; one that cannot be read makes every partition be exported
/// again, and says so.
pub(super) async fn previous_cycle(storage: &Storage, source: SourceId) -> Option<Arc<Previous>> {
    let read = async {
        let newest = crate::catalog::newest_complete_by_id(storage, Some(source)).await?;
        let Some(shared) = newest
            .and_then(|s| s.manifest)
            .filter(Manifest::is_incremental)
        else {
            return Ok(None);
        };
        let pool = storage.list(POOL_FOLDER, ListMode::Recursive).await?;
        let pool = pool
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| (e.key, e.size))
            .collect();
        Ok::<_, Error>(Some(Arc::new(Previous { shared, pool })))
    };
    read.await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read the previous cycle: every partition is exported again");
        None
    })
}

/// The snapshot of `database` in the previous cycle (the shared manifest itself, or the tenant's,
/// whose bytes must match the digest the shared one records for it), without the files the pool no
/// longer holds whole (a lifecycle rule or a hand may have removed them): their partitions are
/// exported again. `None` (and every partition exported) when there is none or it cannot be
/// trusted, which is said.
async fn previous_of(
    storage: &Storage,
    previous: Option<&Previous>,
    database: Database,
) -> Option<Manifest> {
    let previous = previous?;
    let mut manifest = match database {
        Database::Shared => previous.shared.clone(),
        Database::Tenant { .. } => tenant_manifest(storage, &previous.shared, database).await?,
    };
    // Only pool objects are reused: a snapshot's own files go with it.
    manifest.files.retain(|f| f.object.is_some());
    let pooled = manifest.files.len();
    manifest.files.retain(|f| {
        f.object
            .as_ref()
            .is_some_and(|o| previous.pool.get(o) == Some(&f.size))
    });
    let missing = pooled - manifest.files.len();
    if missing > 0 {
        tracing::warn!(%database, missing, "files of the previous snapshot are missing from the pool: their partitions are exported again");
    }
    Some(manifest)
}

/// A tenant's manifest in the cycle `shared` commits, checked against the digest `shared` records.
async fn tenant_manifest(
    storage: &Storage,
    shared: &Manifest,
    database: Database,
) -> Option<Manifest> {
    let Database::Tenant { tenant_id } = database else {
        return None;
    };
    let sha256 = shared
        .tenants
        .iter()
        .find(|t| t.tenant_id == tenant_id)
        .and_then(|t| match &t.state {
            TenantState::Complete { manifest_sha256 } => Some(manifest_sha256),
            _ => None,
        });
    let Some(sha256) = sha256 else {
        tracing::info!(%database, "no snapshot in the previous cycle: every partition is exported");
        return None;
    };
    let key = format!(
        "{}/{}/{MANIFEST_NAME}",
        database.folder(),
        shared.snapshot_id
    );
    let read = match storage.read(&key).await {
        Ok(bytes) if Sha256Digest::of(&bytes).to_string() == *sha256 => {
            Manifest::from_slice(&bytes).map_err(|e| e.to_string())
        }
        Ok(_) => Err("it does not match the digest its cycle records".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let why = match read {
        Ok(m) if m.is_incremental() && m.database == database => return Some(m),
        Ok(_) => "it is not an incremental snapshot of this database".to_owned(),
        Err(why) => why,
    };
    tracing::warn!(%database, key, why, "the previous snapshot cannot be reused: every partition is exported again");
    None
}

/// Confirms that every pool object `manifest` names is stored at its recorded size, just before the
/// manifest is written: reused objects belong to a manifest only this source's prune deletes, and new
/// ones are young, so the sweep leaves both; this catches a person, a lifecycle rule, or a cycle that
/// took longer than the grace period.
pub(super) async fn check_pool(storage: &Storage, manifest: &Manifest) -> Result<()> {
    let database = manifest.database;
    // Owned items: see `store`.
    let named: Vec<(String, u64)> = manifest
        .files
        .iter()
        .filter_map(|f| Some((f.object.clone()?, f.size)))
        .collect();
    futures::stream::iter(named)
        .map(|(object, size)| async move {
            match storage.stat(&object).await? {
                Some(stored) if stored == size => Ok(()),
                _ => Err(Error::PoolObjectMissing { database, object }),
            }
        })
        .buffer_unordered(CHECKS_AT_ONCE)
        .try_collect::<()>()
        .await
}

/// Pool objects checked at once before a manifest.
const CHECKS_AT_ONCE: usize = 16;

/// [`super::snapshot_database`] in incremental mode: the export (which compares with the previous
/// snapshot) starts at once; the uploads wait for the claim. New table files go to the pool,
/// `schema.sql` and `load.sql` to the snapshot's folder.
pub(super) async fn snapshot_parts(
    storage: &Storage,
    conn: Connection,
    database: Database,
    pending: &Pending<'_>,
    staging: &Path,
    options: &BackupOptions,
) -> Result<(Manifest, (usize, u64))> {
    debug_assert_eq!(options.mode, BackupMode::Incremental);
    let created_at = Timestamp::now();
    let dir = staging.join(database.folder());
    let _export_dir = StagingDir(dir.clone());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let previous = previous_of(storage, pending.previous.clone().await.as_deref(), database).await;
    let interrupt = conn.interrupt_handle();
    let export_dir = dir.clone();
    let mut exporting = tokio::task::spawn_blocking(move || {
        export_parts(&conn, database, &export_dir, previous.as_ref())
    });
    let (claim, folder) = match claim_folder(storage, &pending.claim, database).await {
        Ok(claimed) => claimed,
        Err(e) => {
            abandon(&mut exporting, &interrupt).await;
            return Err(e);
        }
    };
    let export = exporting
        .await
        .map_err(|e| Error::Internal(format!("export task: {e}")))??;
    let mut files = match store(storage, &folder, &export, database, options).await {
        Ok(files) => files,
        Err(e) => {
            let own: Vec<String> = own_files(&export.written)
                .map(|name| format!("{folder}/{name}"))
                .collect();
            remove_stored(storage, &folder, &claim, &own).await;
            return Err(e);
        }
    };
    let uploaded = (files.len(), files.iter().map(|f| f.size).sum());
    files.extend(export.reused);
    files.sort_by(|a, b| a.name.cmp(&b.name));
    options.progress.upload_finished(database);
    let mut manifest = new_manifest(database, created_at, &claim, export.duckdb_version, files);
    manifest.format_version = INCREMENTAL_FORMAT_VERSION;
    manifest.tables = export.tables;
    manifest.partitions = export.partitions;
    Ok((manifest, uploaded))
}

/// The names of the files that go to the snapshot's own folder: all but table data.
fn own_files(written: &[PathBuf]) -> impl Iterator<Item = String> + '_ {
    written
        .iter()
        .map(|p| file_name(p))
        .filter(|name| !is_table_data(name))
}

fn is_table_data(name: &str) -> bool {
    name.ends_with(".parquet")
}

/// Uploads what the export wrote: table files to the pool, the rest to `folder`.
async fn store(
    storage: &Storage,
    folder: &str,
    export: &PartedExport,
    database: Database,
    options: &BackupOptions,
) -> Result<Vec<FileEntry>> {
    let mut total = 0;
    for path in &export.written {
        total += std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
    }
    let progress = options.progress.as_ref();
    progress.upload_started(database, export.written.len(), total);
    // Owned paths: a closure over borrowed ones is not general enough for the `Send` future a
    // server boxes the cycle in.
    futures::stream::iter(export.written.clone())
        .map(|path| async move {
            let entry = store_one(storage, folder, &path, options).await?;
            progress.file_uploaded(database, &entry.name, entry.size);
            Ok::<_, Error>(entry)
        })
        .buffer_unordered(options.file_concurrency.max(1))
        .try_collect()
        .await
}

/// One file: a table file under the pool key of its SHA-256, read before the upload (the key must be
/// known first) and checked against what the upload read; anything else in `folder`.
async fn store_one(
    storage: &Storage,
    folder: &str,
    path: &Path,
    options: &BackupOptions,
) -> Result<FileEntry> {
    let name = file_name(path);
    if !is_table_data(&name) {
        let info = storage
            .upload_file(path, &format!("{folder}/{name}"), &staged(options))
            .await?;
        return Ok(FileEntry {
            name,
            size: info.size,
            sha256: info.sha256.to_string(),
            object: None,
        });
    }
    let hashed = path.to_owned();
    let sha256 = tokio::task::spawn_blocking(move || Sha256Digest::of_file(&hashed))
        .await
        .map_err(|e| Error::Internal(format!("hash task: {e}")))?
        .map_err(|e| Error::io(path, e))?
        .to_string();
    let object = pool_key(&sha256);
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    // Bytes already stored (a partition that changed and changed back) are written again all the
    // same: an object no manifest names may be about to be swept, and a fresh write makes it young.
    // Its content key means it is the same bytes, so a snapshot naming it reads what it recorded.
    let info = storage.upload_file(path, &object, &staged(options)).await?;
    if info.sha256.to_string() != sha256 || info.size != size {
        // Nothing writes a closed partition file; if something did, its key no longer names it.
        return Err(hitkeep_storage::Error::integrity(&object).into());
    }
    tracing::debug!(file = name, object, size, "stored in the pool");
    Ok(FileEntry {
        name,
        size,
        sha256,
        object: Some(object),
    })
}
