//! Restores through the library under a DuckDB memory limit: an import must hold a table's indexes in
//! memory, so imports that would fit the limit whole must not be squeezed into a share of it.

use hitkeep_backup::{Catalog, Database, Error, RestorePlan, RestoreSelection, SnapshotId};
use hitkeep_data::{DuckDbLimits, OpenMode, open_database};

use crate::{Fixture, fingerprint};

const MIB: u64 = 1024 * 1024;

/// Adds to the shared database and to one tenant's a table whose two indexes need more than 64 MiB
/// and less than 128 MiB to import (600,000 rows; calibrated on DuckDB, where 64 MiB fails).
fn add_indexed_tables(f: &Fixture) {
    let tenant = f.layout.tenant_db(f.demo.tenants[0]);
    for db in [f.layout.db_path.clone(), tenant] {
        let conn = open_database(&db, OpenMode::Existing).unwrap();
        conn.execute_batch(
            "CREATE TABLE visits (id UUID PRIMARY KEY, site_id UUID NOT NULL, ts TIMESTAMPTZ NOT NULL);
             CREATE INDEX idx_visits_site_ts ON visits (site_id, ts);
             INSERT INTO visits SELECT uuid(), uuid(), to_timestamp(1767225600 + range) FROM range(600000);",
        )
        .unwrap();
    }
}

async fn plan(f: &Fixture, memory_limit: u64) -> RestorePlan {
    let catalog = Catalog::load_cycle(&f.storage, None).await.unwrap();
    let mut layout = f.layout.clone();
    layout.duckdb = DuckDbLimits {
        memory_limit: Some(memory_limit),
        threads: Some(2),
    };
    RestorePlan::new(
        &catalog,
        None,
        &layout,
        &RestoreSelection::new(false, Vec::new()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_side_by_side_each_get_the_whole_memory_limit() {
    let f = Fixture::new(false).await;
    add_indexed_tables(&f);
    f.cycle().await;
    let before = fingerprint(&f.layout.db_path);
    let plan = plan(&f, 128 * MIB).await;

    // Two databases at once: with the limit split, each import would have 64 MiB and fail.
    let stamp = SnapshotId::now();
    let prepared = plan
        .prepare_all(&f.storage, stamp, 2)
        .await
        .map_err(|(database, e)| format!("{database}: {e}"))
        .unwrap();
    assert_eq!(prepared.len(), plan.items.len());
    for p in prepared {
        let outcome = p.commit(stamp).unwrap();
        assert!(
            outcome.aside.is_some(),
            "the replaced database was kept aside"
        );
    }
    assert_eq!(fingerprint(&f.layout.db_path), before);
    let tenant = f.layout.tenant_db(f.demo.tenants[0]);
    assert_eq!(fingerprint(&tenant)["visits"].0, 600_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_out_of_memory_names_the_setting_to_raise() {
    let f = Fixture::new(false).await;
    add_indexed_tables(&f);
    f.cycle().await;
    let plan = plan(&f, 64 * MIB).await;

    let (database, e) = plan
        .prepare_all(&f.storage, SnapshotId::now(), 1)
        .await
        .unwrap_err();
    assert_eq!(database, Database::Shared);
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains("IMPORT DATABASE: DuckDB ran out of memory")
            && message.contains("hint:")
            && message.contains("HITKEEP_DUCKDB_MEMORY_LIMIT"),
        "{message}"
    );
    assert!(!message.contains("SET memory_limit"), "{message}");
    // Nothing was swapped in, and nothing of the attempt is left beside the database.
    let left: Vec<_> = std::fs::read_dir(f.layout.db_path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
