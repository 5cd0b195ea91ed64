//! Incremental cycles (`HITKEEP_BACKUP_MODE=incremental`): a cycle stores only the partitions that
//! changed, in the pool, and each snapshot still restores and verifies on its own.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use hitkeep_backup::manifest::pool_key;
use hitkeep_backup::{
    BackupMode, Catalog, CycleReport, Database, Error, POOL_GRACE, Progress, PrunePlan,
    RestorePlan, RestoreSelection, export_plain, run_cycle, sweep_pool, verify_snapshot,
};
use hitkeep_data::{OpenMode, TenantLayout, open_database};
use hitkeep_storage::{ListMode, Storage};
use jiff::SignedDuration;

use crate::{Fixture, fingerprint, prepare_and_commit};

on_local_and_s3!(
    an_incremental_cycle_stores_what_changed_and_restores_whole,
    a_sweep_removes_only_old_objects_no_snapshot_names
);

/// HitKeep 2.12 and older: the default tenant's analytics in the shared database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_split_install_backs_up_incrementally() {
    let f = Fixture::with_layout(false, TenantLayout::PreSplit).await;
    an_incremental_cycle_stores_what_changed_and_restores_whole(f).await;
}

async fn incremental_cycle(f: &Fixture) -> CycleReport {
    let (shared, tenants) = f.shared_and_tenants();
    let options = f.options().with_mode(BackupMode::Incremental);
    let report = run_cycle(&f.storage, shared, tenants, &options)
        .await
        .unwrap();
    assert!(report.is_success());
    report
}

async fn pool_objects(f: &Fixture) -> Vec<String> {
    let mut keys: Vec<String> = f
        .storage
        .list("pool", ListMode::Recursive)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    keys.sort();
    keys
}

/// Every database a restore of the cycle brings back, with its rows.
fn databases(f: &Fixture) -> Vec<std::path::PathBuf> {
    let tenants = f.backed_up().into_iter().map(|t| f.layout.tenant_db(t));
    std::iter::once(f.layout.db_path.clone())
        .chain(tenants)
        .collect()
}

async fn an_incremental_cycle_stores_what_changed_and_restores_whole(f: Fixture) {
    let first = incremental_cycle(&f).await;
    assert!(first.shared.is_incremental());
    let stored = pool_objects(&f).await;
    assert!(stored.len() > 20, "{stored:?}");

    // Nothing changed: nothing is stored but each snapshot's schema.sql and load.sql.
    let same = incremental_cycle(&f).await;
    assert_eq!(pool_objects(&f).await, stored);
    assert_eq!(same.files, 2 * databases(&f).len(), "{same:?}");

    // New hits in one database: only some of its partitions are stored again.
    add_hits(&f, 50);
    let before: Vec<_> = databases(&f).iter().map(|db| fingerprint(db)).collect();
    let second = incremental_cycle(&f).await;
    let now_stored = pool_objects(&f).await;
    let new = now_stored.len() - stored.len();
    assert!((1..=3).contains(&new), "{new} new objects");
    assert_eq!(second.files, 2 * databases(&f).len() + new);

    // Each snapshot verifies on its own; the one of old and new files imports, too.
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let scratch = f.dir.path().join("scratch");
    for (id, deep) in [(first.id, false), (second.id, true)] {
        let report = verify_snapshot(&f.storage, &catalog, id, deep, &scratch, None)
            .await
            .unwrap();
        assert!(report.is_ok(), "{report:?}");
    }

    // The latest restores every database to the rows it holds.
    for db in databases(&f) {
        std::fs::remove_file(&db).unwrap();
    }
    let plan = RestorePlan::new(
        &catalog,
        None,
        &f.layout,
        &RestoreSelection::new(false, Vec::new()),
    )
    .unwrap();
    prepare_and_commit(&f, &plan).await;
    let after: Vec<_> = databases(&f).iter().map(|db| fingerprint(db)).collect();
    assert_eq!(after, before);

    // A damaged pool object is named for every snapshot that holds it.
    let shared_object = first
        .shared
        .files
        .iter()
        .filter(|file| !file.name.starts_with("hits."))
        .find_map(|file| file.object.clone())
        .unwrap();
    f.storage
        .write(&shared_object, &b"not parquet"[..])
        .await
        .unwrap();
    for id in [first.id, same.id, second.id] {
        let report = verify_snapshot(&f.storage, &catalog, id, false, &scratch, None)
            .await
            .unwrap();
        // Tenants whose file is byte for byte the same name the same object, and report it too.
        let problems: Vec<&String> = report.databases.iter().flat_map(|d| &d.problems).collect();
        assert!(!problems.is_empty(), "{id}: nothing reported");
        assert!(
            problems.iter().all(|p| p.contains(&shared_object)),
            "{id}: {problems:?}"
        );
        let shared = &report
            .databases
            .iter()
            .find(|d| d.database == Database::Shared);
        assert_eq!(
            shared.map(|d| d.problems.len()),
            Some(1),
            "{id}: {problems:?}"
        );
    }
}

/// Appends `n` copies of the newest hits (new ids) to the default tenant's analytics.
pub(crate) fn add_hits(f: &Fixture, n: usize) {
    open_database(&f.default_analytics(), OpenMode::Existing)
        .unwrap()
        .execute_batch(&format!(
            "INSERT INTO hits SELECT * REPLACE (uuidv7() AS id) FROM hits ORDER BY \"timestamp\" DESC LIMIT {n}"
        ))
        .unwrap();
}

/// Every pool object the manifests in the location name.
async fn named(storage: &Storage) -> BTreeSet<String> {
    let catalog = Catalog::load(storage).await.unwrap();
    catalog
        .databases
        .iter()
        .flat_map(|d| &d.snapshots)
        .flat_map(|s| s.manifest.iter().flat_map(|m| &m.files))
        .filter_map(|file| file.object.clone())
        .collect()
}

async fn a_sweep_removes_only_old_objects_no_snapshot_names(f: Fixture) {
    let first = incremental_cycle(&f).await;
    add_hits(&f, 50);
    let second = incremental_cycle(&f).await;
    // What a killed cycle leaves: an object no manifest names.
    let orphan = pool_key(&"ab".repeat(32));
    f.storage.write(&orphan, &b"orphan"[..]).await.unwrap();
    let all = pool_objects(&f).await;
    let catalog = Catalog::load(&f.storage).await.unwrap();

    // Within the grace period nothing goes; past it (a grace of zero), only the orphan.
    let sweep = sweep_pool(&f.storage, &catalog, POOL_GRACE).await.unwrap();
    assert_eq!(
        (sweep.objects, sweep.removed, sweep.young),
        (all.len(), 0, 1)
    );
    assert_eq!(pool_objects(&f).await, all);
    let sweep = sweep_pool(&f.storage, &catalog, SignedDuration::ZERO)
        .await
        .unwrap();
    assert_eq!((sweep.removed, sweep.removed_bytes, sweep.young), (1, 6, 0));
    assert_eq!(sweep.referenced, all.len() - 1);
    assert!(!pool_objects(&f).await.contains(&orphan));

    // A manifest that cannot be read stops the sweep before anything goes: the objects it names
    // cannot be told from unused ones.
    let plan = PrunePlan::new(&catalog, NonZeroU32::MIN, Some(second.id), None);
    assert!(plan.sweeps_pool);
    let first_manifest = format!("shared/{}/manifest.json", first.id);
    let kept = f.storage.read(&first_manifest).await.unwrap();
    f.storage.write(&first_manifest, &b"{"[..]).await.unwrap();
    let damaged = Catalog::load(&f.storage).await.unwrap();
    let err = sweep_pool(&f.storage, &damaged, SignedDuration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PoolNotSwept { ref folder, .. } if folder == &format!("shared/{}", first.id)),
        "{err}"
    );
    f.storage.write(&first_manifest, kept).await.unwrap();

    // Pruned to the newest cycle: exactly the objects its snapshots name stay, and it restores.
    plan.execute(&f.storage).await.unwrap();
    let remaining = catalog.without(&plan.deletions);
    let sweep = sweep_pool(&f.storage, &remaining, SignedDuration::ZERO)
        .await
        .unwrap();
    assert!(sweep.removed >= 1, "{sweep:?}");
    let left: BTreeSet<String> = pool_objects(&f).await.into_iter().collect();
    assert_eq!(left, named(&f.storage).await);
    let scratch = f.dir.path().join("scratch");
    let report = verify_snapshot(&f.storage, &remaining, second.id, true, &scratch, None)
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    exports_plain(&f, &remaining, second.id).await;
}

/// `export-plain` of the cycle `id` (the databases have not changed since): every folder a bare
/// `IMPORT DATABASE` reads back to the rows of its database, and the copy is itself a destination of
/// full snapshots that verifies deep.
async fn exports_plain(f: &Fixture, catalog: &Catalog, id: hitkeep_backup::SnapshotId) {
    let dir = f.dir.path().join("plain");
    let export = export_plain(&f.storage, catalog, id, &dir, None)
        .await
        .unwrap();
    assert_eq!(export.databases.len(), databases(f).len());
    assert_eq!(export.databases[0], Database::Shared);
    assert!(export.missing.is_empty());
    let folders = std::iter::once(format!("shared/{id}")).chain(
        f.backed_up()
            .into_iter()
            .map(|t| format!("tenants/{t}/{id}")),
    );
    for (folder, db) in folders.zip(databases(f)) {
        let imported = f
            .dir
            .path()
            .join(format!("{}.imported.db", folder.replace('/', "_")));
        let conn = open_database(&imported, OpenMode::Create).unwrap();
        conn.execute_batch(&format!(
            "IMPORT DATABASE '{}'",
            dir.join(&folder).display()
        ))
        .unwrap();
        drop(conn);
        assert_eq!(fingerprint(&imported), fingerprint(&db), "{folder}");
    }
    let copy = hitkeep_testkit::local_storage(&dir).await;
    let copied = Catalog::load(&copy).await.unwrap();
    assert!(
        copied
            .databases
            .iter()
            .flat_map(|d| &d.snapshots)
            .all(|s| s.manifest.as_ref().is_some_and(|m| !m.is_incremental()))
    );
    let scratch = f.dir.path().join("plain-scratch");
    let report = verify_snapshot(&copy, &copied, id, true, &scratch, None)
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    // The folder exists now: a second export into it is refused, and leaves it as it was.
    let err = export_plain(&f.storage, catalog, id, &dir, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");
}

/// Deletes one pool object when the shared database's uploads end: after the cycle chose to reuse
/// it, before its manifest.
struct RemoveWhenUploaded {
    storage: Storage,
    object: String,
}

impl Progress for RemoveWhenUploaded {
    fn upload_finished(&self, database: Database) {
        if database == Database::Shared {
            let (storage, object) = (self.storage.clone(), self.object.clone());
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(storage.delete(&object))
                    .unwrap();
            });
        }
    }
}

/// An object removed while a cycle runs (by hand, a lifecycle rule, a sweep elsewhere) is found
/// before the manifest that would name it: the snapshot is not committed, and the next cycle
/// exports the partition again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_object_removed_during_a_cycle_stops_its_commit() {
    let f = Fixture::new(false).await;
    let first = incremental_cycle(&f).await;
    // Reused by the next cycle, which changes nothing. A tenant naming the same bytes may fail on
    // it too; the shared manifest, written last, fails the cycle.
    let object = first
        .shared
        .files
        .iter()
        .find_map(|file| file.object.clone())
        .unwrap();
    let remove = Arc::new(RemoveWhenUploaded {
        storage: f.storage.clone(),
        object: object.clone(),
    });
    let (shared, tenants) = f.shared_and_tenants();
    let options = f
        .options()
        .with_mode(BackupMode::Incremental)
        .with_progress(remove);
    let err = run_cycle(&f.storage, shared, tenants, &options)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PoolObjectMissing { database: Database::Shared, object: ref o } if *o == object),
        "{err}"
    );
    let catalog = Catalog::load(&f.storage).await.unwrap();
    assert_eq!(catalog.latest_committed().map(|s| s.id), Some(first.id));

    let next = incremental_cycle(&f).await;
    assert!(next.is_success());
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let scratch = f.dir.path().join("scratch");
    let report = verify_snapshot(&f.storage, &catalog, next.id, true, &scratch, None)
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
}
