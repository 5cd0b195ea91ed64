//! A cycle's incremental snapshots ([`BackupMode::Incremental`], manifest format 2): each database's
//! changed partitions exported (`export/parts.rs`) and stored once in the pool under their SHA-256,
//! the unchanged ones named from the previous snapshot of the same database and source.
//!
//! Encrypted (format 4): each new table file is sealed to a local file first, and stored in the
//! encrypted pool under the SHA-256 of its ciphertext, which says nothing of its content; its name
//! in the manifest is random. The partitions go into an index sealed to the host's own key
//! ([`HostKey`]), read back by the next cycle. Only a previous snapshot encrypted to the same
//! recipients is reused: another's objects would not open with this cycle's identities.
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
    remove_stored, seal_manifest, staged, store_file,
};
use crate::error::{Error, Result};
use crate::export::{PartedExport, export_parts};
use crate::manifest::{
    Database, FileEntry, INCREMENTAL_FORMAT_VERSION, MANIFEST_NAME, Manifest, POOL_FOLDER,
    PartitionIndex, SEALED_POOL_FOLDER, TenantState, pool_key, sealed_pool_key,
};
use hitkeep_seal::{HostKey, Sealer};

/// How a cycle's incremental snapshots are written and what they may reuse: plain, or sealed with
/// the host's index key.
pub(super) struct Reuse {
    sealed: Option<Arc<HostKey>>,
}

impl Reuse {
    pub(super) fn new(sealer: Option<&Sealer>, key: Option<Arc<HostKey>>) -> Reuse {
        Reuse {
            sealed: sealer.and(key),
        }
    }

    /// The index key, when snapshots are sealed.
    pub(super) fn index_key(&self) -> Option<&HostKey> {
        self.sealed.as_deref()
    }

    fn pool_folder(&self) -> &'static str {
        match self.sealed {
            Some(_) => SEALED_POOL_FOLDER,
            None => POOL_FOLDER,
        }
    }

    /// `manifest` (of the snapshot in `folder`) as a snapshot sealed by `sealer` (the database's:
    /// the cycle's, or a tenant's own key) may reuse it: its partitions read from its index when it
    /// is sealed. Why not, otherwise.
    async fn reusable(
        &self,
        storage: &Storage,
        folder: &str,
        mut manifest: Manifest,
        sealer: Option<&Sealer>,
    ) -> std::result::Result<Manifest, String> {
        let (key, encryption, sealer) = match (&self.sealed, &manifest.encryption, sealer) {
            (None, None, _) => return Ok(manifest),
            (None, Some(_), _) => return Err("it is encrypted and this cycle is not".into()),
            (Some(_), None, _) => return Err("it is not encrypted and this cycle is".into()),
            (Some(key), Some(encryption), Some(sealer)) => (key, encryption, sealer),
            (Some(_), Some(_), None) => return Err("this database is not sealed".into()),
        };
        let mut ours = sealer.recipients();
        ours.sort();
        let mut theirs = encryption.recipients.clone();
        theirs.sort();
        if theirs != ours || encryption.tenant_key.as_deref() != sealer.tenant_key() {
            return Err("it is encrypted to other recipients, whose identities would be needed to restore this cycle".into());
        }
        let index = encryption
            .index
            .as_ref()
            .ok_or("it has no partition index")?;
        let object = format!("{folder}/{}", index.name);
        let bytes = storage.read(&object).await.map_err(|e| e.to_string())?;
        if Sha256Digest::of(&bytes).to_string() != index.sha256 {
            return Err("its index does not match the digest its manifest records".into());
        }
        let plain = key.open(&bytes).map_err(|failure| {
            format!("its index does not open with this host's index key ({failure:?}); it was written by another host or before the key was replaced")
        })?;
        let index: PartitionIndex = serde_json::from_slice(&plain)
            .map_err(|e| format!("its index is not readable: {e}"))?;
        manifest.partitions = index.partitions;
        Ok(manifest)
    }
}

/// What a cycle may reuse: the source's newest committed cycle, when it was incremental, and what
/// the pool holds. Read once per cycle, beside the claim.
pub(super) type PreviousCycle<'a> = Shared<BoxFuture<'a, Option<Arc<Previous>>>>;

/// The previous cycle's shared manifest, and the pool's objects with their sizes.
pub(super) struct Previous {
    shared: Manifest,
    pool: HashMap<String, u64>,
}

/// The newest committed cycle of `source` and a listing of the pool, if that cycle was incremental
/// and written as `reuse` writes. A full one starts the chains again; one that cannot be read or
/// reused makes every partition be exported again, and says so.
pub(super) async fn previous_cycle(
    storage: &Storage,
    source: SourceId,
    reuse: &Reuse,
    sealer: Option<&Sealer>,
) -> Option<Arc<Previous>> {
    let read = async {
        let newest = crate::catalog::newest_complete_by_id(storage, Some(source)).await?;
        let Some(shared) = newest
            .and_then(|s| s.manifest)
            .filter(Manifest::is_incremental)
        else {
            return Ok(None);
        };
        let folder = format!("{}/{}", Database::Shared.folder(), shared.snapshot_id);
        let shared = match reuse.reusable(storage, &folder, shared, sealer).await {
            Ok(shared) => shared,
            Err(why) => {
                tracing::warn!(
                    why,
                    "the previous cycle cannot be reused: every partition is exported again"
                );
                return Ok(None);
            }
        };
        let pool = storage
            .list(reuse.pool_folder(), ListMode::Recursive)
            .await?;
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
    reuse: &Reuse,
    sealer: Option<&Sealer>,
) -> Option<Manifest> {
    let previous = previous?;
    let mut manifest = match database {
        Database::Shared => previous.shared.clone(),
        Database::Tenant { .. } => {
            tenant_manifest(storage, &previous.shared, database, reuse, sealer).await?
        }
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
    reuse: &Reuse,
    sealer: Option<&Sealer>,
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
    let folder = format!("{}/{}", database.folder(), shared.snapshot_id);
    let why = match read {
        Ok(m) if m.is_incremental() && m.database == database => {
            match reuse.reusable(storage, &folder, m, sealer).await {
                Ok(m) => return Some(m),
                Err(why) => why,
            }
        }
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
    let reuse = pending.reuse;
    let previous = previous_of(
        storage,
        pending.previous.clone().await.as_deref(),
        database,
        reuse,
        options.sealer.as_deref(),
    )
    .await;
    let interrupt = conn.interrupt_handle();
    let export_dir = dir.clone();
    // Encrypted, file names are random: the clear manifest lists them, and `<table>.<key>.<n>`
    // would tell the bucket's owner which months hold rows and how many.
    let opaque_names = options.sealer.is_some();
    let mut exporting = tokio::task::spawn_blocking(move || {
        export_parts(
            &conn,
            database,
            &export_dir,
            previous.as_ref(),
            opaque_names,
        )
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
    if let Some(sealer) = &options.sealer {
        seal_manifest(storage, &folder, &mut manifest, sealer, reuse.index_key()).await?;
    }
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
/// known first) and checked against what the upload read; anything else in `folder` (encrypted as
/// it streams, when the cycle is). Encrypted, a table file goes to [`store_sealed`].
async fn store_one(
    storage: &Storage,
    folder: &str,
    path: &Path,
    options: &BackupOptions,
) -> Result<FileEntry> {
    let name = file_name(path);
    if !is_table_data(&name) {
        let info = store_file(storage, path, &format!("{folder}/{name}"), options).await?;
        return Ok(FileEntry {
            name,
            size: info.size,
            sha256: info.sha256.to_string(),
            object: None,
        });
    }
    if let Some(sealer) = &options.sealer {
        return store_sealed(storage, path, sealer, options).await;
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

/// A table file of an encrypted cycle: sealed into a local file beside it (its object is named by
/// the ciphertext's SHA-256, so the ciphertext must exist before the upload), uploaded, checked
/// against what the upload read, and the local ciphertext removed. Each sealing differs, so the
/// object is new and never replaces one a snapshot names.
async fn store_sealed(
    storage: &Storage,
    path: &Path,
    sealer: &Arc<Sealer>,
    options: &BackupOptions,
) -> Result<FileEntry> {
    let name = file_name(path);
    let sealed_path = path.with_extension("parquet.age");
    let (plain, out, by) = (path.to_owned(), sealed_path.clone(), Arc::clone(sealer));
    let sealed = tokio::task::spawn_blocking(move || by.seal_file(&plain, &out))
        .await
        .map_err(|e| Error::Internal(format!("seal task: {e}")))?;
    let stored = match sealed {
        Ok(info) => {
            let object = sealed_pool_key(&info.sha256.to_string());
            storage
                .upload_file(&sealed_path, &object, &staged(options))
                .await
                .map_err(Error::from)
                .and_then(|uploaded| match uploaded == info {
                    true => Ok((info, object)),
                    false => Err(hitkeep_storage::Error::integrity(&object).into()),
                })
        }
        Err(e) => Err(Error::io(path, e)),
    };
    let _ = std::fs::remove_file(&sealed_path);
    let (info, object) = stored?;
    tracing::debug!(
        file = name,
        object,
        size = info.size,
        "stored in the encrypted pool"
    );
    Ok(FileEntry {
        name,
        size: info.size,
        sha256: info.sha256.to_string(),
        object: Some(object),
    })
}
