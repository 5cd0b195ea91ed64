//! Incremental cycles (`HITKEEP_BACKUP_MODE=incremental`): a cycle stores only the partitions that
//! changed, in the pool, and each snapshot still restores and verifies on its own.

use hitkeep_backup::{
    BackupMode, Catalog, CycleReport, Database, RestorePlan, RestoreSelection, run_cycle,
    verify_snapshot,
};
use hitkeep_data::{OpenMode, TenantLayout, open_database};
use hitkeep_storage::ListMode;

use crate::{Fixture, fingerprint, prepare_and_commit};

on_local_and_s3!(an_incremental_cycle_stores_what_changed_and_restores_whole);

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
    let changed_db = f.default_analytics();
    open_database(&changed_db, OpenMode::Existing)
        .unwrap()
        .execute_batch(
            "INSERT INTO hits SELECT * REPLACE (uuidv7() AS id) FROM hits ORDER BY \"timestamp\" DESC LIMIT 50",
        )
        .unwrap();
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
        let report = verify_snapshot(&f.storage, &catalog, id, deep, &scratch)
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
        let report = verify_snapshot(&f.storage, &catalog, id, false, &scratch)
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
