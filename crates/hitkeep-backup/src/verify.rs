//! Re-reading a snapshot: every object's size and SHA-256 against its manifest, and with `deep`, an
//! import (as a restore imports) into a scratch DuckDB file whose row counts must match the manifest.
//! Where the manifest records an S3 Object Lock still running, every object of the snapshot must
//! still be locked that long: a lock lifted (governance lets a privileged key do so) is a problem.

use std::path::Path;

use futures::StreamExt as _;
use hitkeep_data::{DuckDbLimits, TenantLayout};
use hitkeep_storage::{ObjectInfo, Sha256Digest, Storage, TransferOptions};
use jiff::Timestamp;
use serde::Serialize;

use crate::SnapshotId;
use crate::catalog::{Catalog, SnapshotState};
use crate::error::{Error, Result};
use crate::manifest::{Database, FileEntry, MANIFEST_NAME, Manifest, TenantState};
use hitkeep_seal::Opener;

/// The result for one database.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct DatabaseCheck {
    /// Which database.
    pub database: Database,
    /// Objects read back.
    pub files: usize,
    /// Bytes read back.
    pub bytes: u64,
    /// Tables whose row counts were compared (deep only).
    pub tables: usize,
    /// What is wrong; empty when all is well.
    pub problems: Vec<String>,
    /// Why a deep check did not open this database's snapshot though it found nothing wrong: its
    /// tenant key was forgotten (`hitkeep backup forget-tenant`). Its stored bytes were checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_opened: Option<String>,
}

/// The result for a snapshot.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The snapshot checked.
    pub snapshot_id: SnapshotId,
    /// Whether the import check ran.
    pub deep: bool,
    /// The cycle's layout, as its shared manifest records it.
    pub layout: Option<TenantLayout>,
    /// One entry per database.
    pub databases: Vec<DatabaseCheck>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.databases.iter().all(|d| d.problems.is_empty())
    }
}

/// Verifies the committed cycle `id`: the shared snapshot and every tenant it lists as complete.
/// `scratch` is a local directory for downloads (removed afterwards). An encrypted snapshot's stored
/// objects are checked without a key; `deep` opens them with `opener`, and fails without one.
pub async fn verify_snapshot(
    storage: &Storage,
    catalog: &Catalog,
    id: SnapshotId,
    deep: bool,
    scratch: &Path,
    opener: Option<&Opener>,
) -> Result<VerifyReport> {
    let shared = catalog
        .find(Database::Shared, id)
        .ok_or_else(|| catalog.unknown(id))?;
    let Some(manifest) = shared.manifest.clone() else {
        return Err(Error::NotVerifiable {
            id,
            state: shared.state.clone(),
        });
    };
    let deep = deep.then_some(opener);
    let mut first = check_database(storage, &manifest, deep, scratch).await?;
    first.problems.extend(split_default_missing(&manifest));
    let mut databases = vec![first];
    for tenant in &manifest.tenants {
        let database = Database::Tenant {
            tenant_id: tenant.tenant_id,
        };
        let TenantState::Complete { manifest_sha256 } = &tenant.state else {
            continue;
        };
        let check = match catalog.find(database, id) {
            Some(info) if info.state == SnapshotState::Complete => {
                let key = format!("{}/{id}/{MANIFEST_NAME}", database.folder());
                let actual = Sha256Digest::of(&storage.read(&key).await?).to_string();
                let mut check = check_database(
                    storage,
                    info.manifest.as_ref().expect("complete has a manifest"),
                    deep,
                    scratch,
                )
                .await?;
                if &actual != manifest_sha256 {
                    check.problems.insert(0, format!("{key}: SHA-256 {actual} differs from {manifest_sha256} recorded by the shared manifest"));
                }
                check
            }
            _ => DatabaseCheck {
                database,
                files: 0,
                bytes: 0,
                tables: 0,
                problems: vec![format!(
                    "the cycle lists {database} as complete, but its snapshot {id} is missing or unfinished"
                )],
                not_opened: None,
            },
        };
        databases.push(check);
    }
    Ok(VerifyReport {
        snapshot_id: id,
        deep: deep.is_some(),
        layout: manifest.layout,
        databases,
    })
}

/// A split cycle whose default tenant has no complete snapshot cannot be restored as a whole: HitKeep
/// would not start on its shared database alone.
fn split_default_missing(shared: &Manifest) -> Option<String> {
    if shared.layout != Some(TenantLayout::Split) {
        return None;
    }
    let default = shared.default_tenant?;
    let complete = shared
        .tenants
        .iter()
        .any(|t| t.tenant_id == default && matches!(t.state, TenantState::Complete { .. }));
    (!complete).then(|| {
        format!(
            "the cycle is split (HitKeep 2.13) but the default tenant {default} has no complete snapshot in it: its analytics are not in this cycle"
        )
    })
}

async fn check_database(
    storage: &Storage,
    manifest: &Manifest,
    deep: Option<Option<&Opener>>,
    scratch: &Path,
) -> Result<DatabaseCheck> {
    let database = manifest.database;
    let folder = format!("{}/{}", database.folder(), manifest.snapshot_id);
    let dir = scratch
        .join(database.folder())
        .join(manifest.snapshot_id.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut check = DatabaseCheck {
        database,
        files: 0,
        bytes: 0,
        tables: 0,
        problems: Vec::new(),
        not_opened: None,
    };
    // A deep check of an encrypted snapshot opens it: with its sealed part's row counts, and each
    // object decrypted after its stored bytes are checked.
    // Without an identity that is an error for the whole check (the caller asked for a deep one);
    // a sealed part that does not open is this database's problem, and its deep check is skipped.
    let (manifest, opening, deep) = match (deep, manifest.is_encrypted()) {
        (Some(None), true) => {
            let refused = crate::restore::unseal(storage, &folder, manifest, None).await;
            return Err(refused.err().unwrap_or_else(|| {
                Error::Internal("an encrypted snapshot opened without an identity".into())
            }));
        }
        (Some(Some(opener)), true) => {
            let opened = match crate::tenant_keys::opener_for(storage, manifest, Some(opener)).await
            {
                Ok(Some(own)) => {
                    let opened =
                        crate::restore::unseal(storage, &folder, manifest, Some(&own)).await;
                    opened.map(|m| (m, own))
                }
                Ok(None) => Err(Error::Internal("an opener that vanished".into())),
                Err(e) => Err(e),
            };
            match opened {
                Ok((opened, own)) => (std::borrow::Cow::Owned(opened), Some(own), true),
                // Forgotten on purpose: not damage, but never a silent pass either.
                Err(
                    e @ Error::TenantKey {
                        forgotten_at: Some(_),
                        ..
                    },
                ) => {
                    check.not_opened = Some(e.to_string());
                    (std::borrow::Cow::Borrowed(manifest), None, false)
                }
                Err(e) => {
                    check.problems.push(e.to_string());
                    (std::borrow::Cow::Borrowed(manifest), None, false)
                }
            }
        }
        (deep, _) => (std::borrow::Cow::Borrowed(manifest), None, deep.is_some()),
    };
    let opening = opening.as_deref();
    // The tenant key a snapshot is sealed to is part of it: a key file lost by accident loses the
    // snapshot, and a plain check says so; a forgotten one is said, not a problem.
    if opening.is_none() && check.not_opened.is_none() && check.problems.is_empty() {
        match crate::tenant_keys::check_key_file(storage, &manifest).await {
            Ok(()) => {}
            Err(
                e @ Error::TenantKey {
                    forgotten_at: Some(_),
                    ..
                },
            ) => check.not_opened = Some(e.to_string()),
            Err(e) => check.problems.push(e.to_string()),
        }
    }
    let mut stored_files: Vec<(&FileEntry, bool)> = manifest
        .files
        .iter()
        .map(|f| (f, opening.is_some()))
        .collect();
    if let Some(encryption) = &manifest.encryption {
        // The sealed part: read and checked by the unsealing already when this check opens the
        // snapshot. The partition index opens with the writing host's key only: its stored bytes
        // are checked, never opened.
        if opening.is_none() {
            stored_files.push((&encryption.sealed, false));
        }
        stored_files.extend(encryption.index.iter().map(|index| (index, false)));
    }
    for (file, opens) in stored_files {
        let Ok(sha256) = file.sha256.parse() else {
            check.problems.push(format!(
                "{folder}/{}: the manifest's SHA-256 is malformed",
                file.name
            ));
            continue;
        };
        let expected = ObjectInfo {
            size: file.size,
            sha256,
        };
        let key = file.key(&folder);
        let plain = dir.join(&file.name);
        let stored = match (opens, opening) {
            (true, _) => dir.join(format!(".{}.age", file.name)),
            // Checked only, and kept out of the folder the deep check imports.
            (false, Some(_)) => dir.join(format!(".{}", file.name)),
            (false, None) => plain.clone(),
        };
        match storage
            .download_file(&key, &stored, Some(&expected), &TransferOptions::default())
            .await
        {
            Ok(info) => {
                check.files += 1;
                check.bytes += info.size;
            }
            Err(e) => {
                check.problems.push(e.to_string());
                continue;
            }
        }
        let Some(opener) = opening.filter(|_| opens) else {
            if opening.is_some() {
                let _ = std::fs::remove_file(&stored);
            }
            continue;
        };
        if let Err(failure) = crate::restore::open_file(opener, &stored, &plain).await {
            let recipients = manifest
                .encryption
                .as_ref()
                .map(|e| e.recipients.clone())
                .unwrap_or_default();
            let object = storage.describe(&key);
            let e = Error::NotOpened {
                object,
                failure,
                recipients,
            };
            check.problems.push(e.to_string());
        }
        let _ = std::fs::remove_file(&stored);
    }
    // Asked now, added after the import check: a lock lifted (or one this key may not see) says
    // nothing of whether the data restores, so it never stops that check from running.
    let lock_problems = check_locks(storage, &folder, &manifest).await;
    if deep && check.problems.is_empty() {
        let tables = manifest.tables.clone();
        let dir2 = dir.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            import_and_count(&dir2, &tables, database, &folder)
        })
        .await
        .map_err(|e| Error::Internal(format!("import task: {e}")))?;
        match outcome {
            Ok((compared, problems)) => {
                check.tables = compared;
                check.problems.extend(problems);
            }
            // Refused before anything was imported: the message says why.
            Err(e @ Error::ForeignStatement { .. }) => check.problems.push(e.describe()),
            Err(e) => check
                .problems
                .push(format!("import failed: {}", e.describe())),
        }
    }
    check.problems.extend(lock_problems);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(check)
}

/// Objects whose retention is asked at once.
const LOCKS_AT_ONCE: usize = 16;

/// Objects named one by one when they are not locked as recorded; the rest are counted.
const LOCK_PROBLEMS_SHOWN: usize = 5;

/// Where `manifest` records an Object Lock, each object of the snapshot (the manifest included)
/// that is not locked as firmly and as long, while the recorded date is still ahead by the
/// server's clock. A lock that has run out is no problem; a check that cannot be made is one.
async fn check_locks(storage: &Storage, folder: &str, manifest: &Manifest) -> Vec<String> {
    let Some(record) = manifest.object_lock else {
        return Vec::new();
    };
    if !storage.location().is_s3() {
        // A copy out of the bucket: no lock came with it, and none can be asked for here.
        tracing::warn!(folder, until = %record.retain_until, "the manifest records an S3 Object Lock, but this location is a directory: the lock is not checked");
        return Vec::new();
    }
    let recorded = format!(
        "the manifest records an S3 Object Lock in {} mode until {}",
        record.mode, record.retain_until
    );
    // A copy in a bucket without Object Lock: one problem, not one per object.
    match storage.bucket_object_lock().await {
        Ok(bucket) if bucket.enabled => {}
        Ok(_) => {
            return vec![format!(
                "{folder}: {recorded}, but this bucket has no Object Lock: nothing of it is locked here"
            )];
        }
        Err(e) if e.kind() == hitkeep_storage::ErrorKind::Unsupported => {
            return vec![format!(
                "{folder}: {recorded}, but this S3 service has no Object Lock: nothing of it is locked here"
            )];
        }
        // Not allowed to ask the bucket: the objects are asked one by one.
        Err(e) if e.kind() == hitkeep_storage::ErrorKind::AccessDenied => {}
        Err(e) => {
            return vec![format!(
                "{folder}: the lock it records could not be checked: {e}"
            )];
        }
    }
    let want = hitkeep_storage::Retention {
        mode: record.mode,
        // The request that set it carried whole seconds.
        until: Timestamp::from_second(record.retain_until.as_second())
            .unwrap_or(record.retain_until),
    };
    let mut keys = manifest.stored_objects(folder);
    keys.push(format!("{folder}/{MANIFEST_NAME}"));
    let recorded = &recorded;
    let found: Vec<Option<String>> = futures::stream::iter(keys)
        .map(|key| async move {
            let retained = match storage.retained(&key).await {
                Ok(retained) => retained,
                // Missing objects are named by the size and digest check already.
                Err(e) if e.kind() == hitkeep_storage::ErrorKind::NotFound => return None,
                Err(e) => return Some(format!("{}: its lock could not be checked: {e}", storage.describe(&key))),
            };
            let ended = retained.server_time.is_some_and(|now| want.until <= now);
            let held = retained.retention.filter(|held| held.covers(want));
            (held.is_none() && !ended).then(|| {
                let found = match retained.retention {
                    Some(r) => format!("it is locked in {} mode until {}", r.mode, r.until),
                    None => "it has no lock".to_owned(),
                };
                format!(
                    "{}: {recorded}, but {found} (or this key may not read retention: s3:GetObjectRetention)",
                    storage.describe(&key),
                )
            })
        })
        .buffer_unordered(LOCKS_AT_ONCE)
        .collect()
        .await;
    let mut problems: Vec<String> = found.into_iter().flatten().collect();
    problems.sort();
    // A lock lifted on a whole snapshot would name every object: a few say it.
    if problems.len() > LOCK_PROBLEMS_SHOWN {
        let more = problems.len() - LOCK_PROBLEMS_SHOWN;
        problems.truncate(LOCK_PROBLEMS_SHOWN);
        problems.push(format!(
            "{folder}: and {more} more objects not locked as the manifest records"
        ));
    }
    problems
}

const VERIFY_MEMORY_HINT: &str = "DuckDB holds each table's indexes in memory while it builds them; give this command more with HITKEEP_DUCKDB_MEMORY_LIMIT (e.g. 4GiB), or unset it to let DuckDB use 80% of RAM";

fn import_and_count(
    dir: &Path,
    tables: &std::collections::BTreeMap<String, u64>,
    database: Database,
    folder: &str,
) -> Result<(usize, Vec<String>)> {
    // Checked and fenced like a restore's import (`crate::import`).
    let got = crate::import::import_snapshot(&crate::import::Import {
        snapshot_dir: dir,
        db: &dir.join("verify.duckdb"),
        limits: DuckDbLimits::default(),
        database,
        folder,
        memory_hint: VERIFY_MEMORY_HINT,
    })?;
    let mut problems = Vec::new();
    for (table, want) in tables {
        match got.get(table) {
            Some(n) if n == want => {}
            Some(n) => problems.push(format!(
                "table {table}: {n} rows after import, manifest says {want}"
            )),
            None => problems.push(format!("table {table}: missing after import")),
        }
    }
    Ok((tables.len(), problems))
}
