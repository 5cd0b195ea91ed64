//! `export-plain`: any committed cycle, full or incremental, written to a local folder in the form
//! HitKeep's own restore and a bare `IMPORT DATABASE` read: `shared/{id}/` and `tenants/{uuid}/{id}/`,
//! each folder holding `schema.sql`, `load.sql` and its table files, with no pool.
//!
//! Every file is checked against its manifest as it is downloaded (a tenant's manifest against the
//! digest its cycle records), and each folder gets a format 1 manifest naming its own files, so the
//! copy is also a destination `hitkeep` lists, verifies and restores from. It is written beside its
//! target and renamed into place at the end: a failure leaves nothing at the target.

use std::path::{Path, PathBuf};

use hitkeep_storage::{Sha256Digest, Storage};
use serde::Serialize;
use uuid::Uuid;

use crate::SnapshotId;
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::manifest::{Database, FULL_FORMAT_VERSION, MANIFEST_NAME, Manifest, TenantState};
use hitkeep_seal::Opener;

/// What [`export_plain`] wrote.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct PlainExport {
    /// The cycle.
    pub snapshot: SnapshotId,
    /// The folder written.
    pub dir: PathBuf,
    /// The databases written, the shared one first.
    pub databases: Vec<Database>,
    /// Files written, manifests included.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Tenants the cycle holds no snapshot of (failed or skipped when it ran), with why.
    pub missing: Vec<(Uuid, String)>,
}

/// Writes the committed cycle `id` of `storage` as plain folders under `dir`, which must not exist;
/// an encrypted cycle is opened with `opener` (and refused without one, before anything is written).
pub async fn export_plain(
    storage: &Storage,
    catalog: &Catalog,
    id: SnapshotId,
    dir: &Path,
    opener: Option<&Opener>,
) -> Result<PlainExport> {
    let shared = catalog
        .find(Database::Shared, id)
        .ok_or_else(|| catalog.unknown(id))?;
    let Some(shared_manifest) = shared.manifest.clone() else {
        return Err(Error::SnapshotUnusable {
            id,
            state: shared.state.clone(),
        });
    };
    if dir.exists() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the folder exists already; name a new one",
            ),
        ));
    }
    let partial = partial_dir(dir);
    let _cleanup = RemoveOnDrop(partial.clone());
    let _ = std::fs::remove_dir_all(&partial);
    let mut export = PlainExport {
        snapshot: id,
        dir: dir.to_owned(),
        databases: Vec::new(),
        files: 0,
        bytes: 0,
        missing: Vec::new(),
    };
    let mut shared_manifest = shared_manifest;
    for entry in &mut shared_manifest.tenants {
        let TenantState::Complete { manifest_sha256 } = &mut entry.state else {
            export
                .missing
                .push((entry.tenant_id, tenant_note(&entry.state)));
            continue;
        };
        let database = Database::Tenant {
            tenant_id: entry.tenant_id,
        };
        let manifest = tenant_manifest(storage, database, id, manifest_sha256).await?;
        let digest = write_database(storage, &partial, manifest, opener, &mut export).await?;
        *manifest_sha256 = digest.to_string();
    }
    // The shared manifest last, naming the tenants' new manifests: as a cycle commits.
    write_database(storage, &partial, shared_manifest, opener, &mut export).await?;
    export.databases.rotate_right(1);
    std::fs::rename(&partial, dir).map_err(|e| Error::io(dir, e))?;
    Ok(export)
}

/// Where the export is written until it is whole: beside `dir`, so the rename stays on one disk.
fn partial_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!(".{name}.hitkeep-partial"))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tenant_note(state: &TenantState) -> String {
    match state {
        TenantState::Failed { error } => format!("failed when the cycle ran: {error}"),
        TenantState::Skipped { reason } => format!("skipped when the cycle ran: {reason}"),
        TenantState::Complete { .. } => "complete".into(),
    }
}

/// A tenant's manifest, read again and checked against the digest the cycle records.
async fn tenant_manifest(
    storage: &Storage,
    database: Database,
    id: SnapshotId,
    expected: &str,
) -> Result<Manifest> {
    let key = format!("{}/{id}/{MANIFEST_NAME}", database.folder());
    let bytes = storage.read(&key).await?;
    let actual = Sha256Digest::of(&bytes).to_string();
    if actual != expected {
        return Err(Error::ManifestAltered {
            key,
            actual,
            expected: expected.to_owned(),
        });
    }
    match Manifest::from_slice(&bytes) {
        Ok(m) if m.database == database && m.snapshot_id == id => Ok(m),
        Ok(_) => Err(Error::SnapshotUnusable {
            id,
            state: crate::catalog::SnapshotState::Corrupt(format!(
                "{key} belongs to another snapshot"
            )),
        }),
        Err(source) => Err(Error::Manifest { key, source }),
    }
}

/// Downloads one database's files (checked) into its folder under `root` and writes its format 1
/// manifest; returns the manifest's digest.
async fn write_database(
    storage: &Storage,
    root: &Path,
    manifest: Manifest,
    opener: Option<&Opener>,
    export: &mut PlainExport,
) -> Result<Sha256Digest> {
    let database = manifest.database;
    let folder = format!("{}/{}", database.folder(), manifest.snapshot_id);
    let dir = root.join(&folder);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let opener = crate::tenant_keys::opener_for(storage, &manifest, opener).await?;
    let opener = opener.as_deref();
    let mut manifest = crate::restore::unseal(storage, &folder, &manifest, opener).await?;
    let on_disk = crate::restore::download(storage, &folder, Some(&manifest), &dir, opener).await?;
    if manifest.encryption.take().is_some() {
        // The plain copy's manifest describes the plaintext it holds.
        for (file, plain) in manifest.files.iter_mut().zip(&on_disk) {
            file.size = plain.size;
            file.sha256 = plain.sha256.to_string();
        }
    }
    manifest.format_version = FULL_FORMAT_VERSION;
    manifest.partitions.clear();
    for file in &mut manifest.files {
        file.object = None;
        export.files += 1;
        export.bytes += file.size;
    }
    let bytes = manifest.to_bytes();
    let digest = Sha256Digest::of(&bytes);
    let path = dir.join(MANIFEST_NAME);
    export.files += 1;
    export.bytes += bytes.len() as u64;
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    export.databases.push(database);
    Ok(digest)
}
