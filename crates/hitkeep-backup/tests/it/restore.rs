//! Restores through the library under a DuckDB memory limit: an import must hold a table's indexes in
//! memory, so an import that fits the limit whole must never fail for having been given a share of it
//! beside another.

use hitkeep_backup::{Catalog, Database, Error, RestorePlan, RestoreSelection, SnapshotId};
use hitkeep_data::{DuckDbLimits, OpenMode, TenantLayout, open_database};
use hitkeep_storage::ListMode;

use crate::{Fixture, fingerprint, prepare_and_commit};

const MIB: u64 = 1024 * 1024;

/// Adds to the shared database and to one tenant's a table whose key and index need more than 96 MiB
/// and less than 128 MiB to build (1,500,000 rows; calibrated on DuckDB 2.0 building them after the
/// load, one at a time: 96 MiB fails, 128 MiB passes).
fn add_indexed_tables(f: &Fixture) {
    let tenant = f.layout.tenant_db(f.demo.tenants[0]);
    for db in [f.layout.db_path.clone(), tenant] {
        let conn = open_database(&db, OpenMode::Existing).unwrap();
        conn.execute_batch(
            "CREATE TABLE visits (id UUID PRIMARY KEY, site_id UUID NOT NULL, ts TIMESTAMPTZ NOT NULL);
             CREATE INDEX idx_visits_site_ts ON visits (site_id, ts);
             INSERT INTO visits SELECT uuid(), uuid(), to_timestamp(1767225600 + range) FROM range(1500000);",
        )
        .unwrap();
    }
}

async fn plan(f: &Fixture, memory_limit: u64) -> RestorePlan {
    let catalog = Catalog::load_cycle(&f.storage, None, None).await.unwrap();
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

/// Whether the imports then also run one at a time is not visible from here (DuckDB's limits are per
/// instance); `side_by_side` decides it and its unit test covers the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_too_small_to_share_gives_every_import_all_of_it() {
    let f = Fixture::new(false).await;
    add_indexed_tables(&f);
    f.cycle().await;
    let before = fingerprint(&f.layout.db_path);
    // `visits` alone needs more than 96 MiB.
    let plan = plan(&f, 160 * MIB).await;

    // Prepared two at a time: had the limit been split, each import would have had 80 MiB and failed.
    let outcomes = prepare_and_commit(&f, &plan).await;
    let order: Vec<_> = outcomes.iter().map(|(d, _)| *d).collect();
    assert_eq!(
        order.last(),
        Some(&Database::Shared),
        "the shared database goes last"
    );
    for (_, outcome) in outcomes {
        assert!(
            outcome.aside.is_some(),
            "the replaced database was kept aside"
        );
    }
    assert_eq!(fingerprint(&f.layout.db_path), before);
    let tenant = f.layout.tenant_db(f.demo.tenants[0]);
    assert_eq!(fingerprint(&tenant)["visits"].0, 1_500_000);
}

/// 832 MiB is the smallest limit two imports share (256 MiB each, after the headroom); a table of
/// 4,500,000 rows needs more than that to build its key and index (about 80 bytes a row) and less
/// than the whole limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_out_of_memory_beside_another_runs_again_alone_and_succeeds() {
    let f = Fixture::new(false).await;
    let conn = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
    conn.execute_batch(
        "CREATE TABLE visits (id UUID PRIMARY KEY, site_id UUID NOT NULL, ts TIMESTAMPTZ NOT NULL);
         CREATE INDEX idx_visits_site_ts ON visits (site_id, ts);
         INSERT INTO visits SELECT uuid(), uuid(), to_timestamp(1767225600 + range) FROM range(4500000);",
    )
    .unwrap();
    drop(conn);
    f.cycle().await;
    let before = fingerprint(&f.layout.db_path);
    // Every import beside another, the last one too: which one is last depends on the downloads.
    let plan = plan(&f, 832 * MIB).await.never_last_alone();
    assert!(
        plan.items.len() > 1,
        "the tenants import beside the shared database"
    );

    let stamp = SnapshotId::now();
    let prepared = plan.prepare_all(&f.storage, stamp, 2).await.unwrap();
    let again: Vec<bool> = prepared.iter().map(|p| p.ran_again_alone()).collect();
    assert_eq!(
        again.iter().filter(|a| **a).count(),
        1,
        "only the shared database ran out of memory beside another: {again:?}"
    );
    assert!(again[0], "the shared database comes first in plan order");
    plan.commit_all(prepared, stamp).unwrap();
    assert_eq!(fingerprint(&f.layout.db_path), before);
    assert_eq!(fingerprint(&f.layout.db_path)["visits"].0, 4_500_000);
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
        message.contains("building keys and indexes: DuckDB ran out of memory")
            && e.kind() == hitkeep_backup::ErrorKind::OutOfMemory
            && e.hint()
                .is_some_and(|h| h.contains("HITKEEP_DUCKDB_MEMORY_LIMIT")),
        "{message}: {:?}",
        e.hint()
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

/// A whole restore of a split cycle brings back the default tenant's own database with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_cycle_restores_the_default_tenant_with_every_other() {
    let f = Fixture::new(false).await;
    f.cycle().await;
    let default_db = f.default_analytics();
    assert_eq!(default_db, f.layout.tenant_db(f.demo.default_tenant));
    let before = fingerprint(&default_db);
    assert!(before["hits"].0 > 0, "the default tenant has analytics");
    std::fs::remove_file(&default_db).unwrap();

    let plan = plan(&f, 512 * MIB).await;
    assert_eq!(plan.layout, Some(TenantLayout::Split));
    assert_eq!(plan.items.len(), 1 + f.backed_up().len());
    let stamp = SnapshotId::now();
    let prepared = plan.prepare_all(&f.storage, stamp, 2).await.unwrap();
    plan.commit_all(prepared, stamp).unwrap();
    assert_eq!(fingerprint(&default_db), before);
}

/// Without the default tenant's snapshot, a split cycle is refused unless -shared-only is asked for;
/// the check holds for cycles without a manifest too (HitKeep Go's), read from the imported database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_cycle_without_its_default_tenant_is_refused_unless_shared_only() {
    let f = Fixture::new(false).await;
    let id = f.cycle().await.id;
    let default = f.demo.default_tenant;
    // As HitKeep Go writes them: no manifests, no default tenant folder.
    for key in f.storage.list("", ListMode::Recursive).await.unwrap() {
        if key.name() == "manifest.json" || key.key.starts_with(&format!("tenants/{default}/")) {
            f.storage.delete(&key.key).await.unwrap();
        }
    }
    let shared_before = fingerprint(&f.layout.db_path);
    let catalog = Catalog::load_cycle(&f.storage, Some(id), None)
        .await
        .unwrap();
    let whole =
        RestorePlan::new(&catalog, Some(id), &f.layout, &RestoreSelection::default()).unwrap();
    assert!(whole.legacy);
    let (database, e) = whole
        .prepare_all(&f.storage, SnapshotId::now(), 2)
        .await
        .unwrap_err();
    assert_eq!(database, Database::Shared);
    assert!(
        matches!(e, Error::SplitWithoutDefault { tenant, .. } if tenant == default),
        "{e}"
    );
    assert!(
        e.hint().is_some_and(|h| h.contains("-shared-only")),
        "{e}: {:?}",
        e.hint()
    );
    assert_eq!(
        fingerprint(&f.layout.db_path),
        shared_before,
        "nothing changed"
    );
    // Into an empty data path: refused the same way, with no folder left behind.
    let fresh = hitkeep_data::DataLayout::new(
        f.dir.path().join("fresh/hitkeep.db"),
        f.dir.path().join("fresh/data"),
    );
    let into_fresh =
        RestorePlan::new(&catalog, Some(id), &fresh, &RestoreSelection::default()).unwrap();
    let (_, e) = into_fresh
        .prepare_all(&f.storage, SnapshotId::now(), 2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SplitWithoutDefault {
                on_disk: "missing",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        !fresh.data_path.exists(),
        "no empty tenants/{{id}}/ folders are left: {:?}",
        std::fs::read_dir(&fresh.data_path).map(|d| d.count())
    );

    let shared_only = RestorePlan::new(
        &catalog,
        Some(id),
        &f.layout,
        &RestoreSelection::new(true, Vec::new()),
    )
    .unwrap();
    let stamp = SnapshotId::now();
    let prepared = shared_only.prepare_all(&f.storage, stamp, 2).await.unwrap();
    assert_eq!(prepared.len(), 1);
}

/// Our own manifest records the layout, so the refusal comes at planning, before any download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_cycle_whose_default_tenant_failed_is_refused_at_planning() {
    let f = Fixture::new(false).await;
    std::fs::rename(
        f.default_analytics(),
        f.dir.path().join("default-elsewhere.db"),
    )
    .unwrap();
    let report = f.cycle().await;
    let failed: Vec<_> = report.failed_tenants().collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(*failed[0].0, f.demo.default_tenant);
    assert!(
        failed[0].1.contains("HITKEEP_DATA_PATH"),
        "a missing default tenant database on a split install fails with a hint: {}",
        failed[0].1
    );
    let catalog = Catalog::load_cycle(&f.storage, None, None).await.unwrap();
    let e = RestorePlan::new(&catalog, None, &f.layout, &RestoreSelection::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SplitWithoutDefault {
                on_disk: "missing",
                ..
            }
        ),
        "{e}"
    );
    let plan = RestorePlan::new(
        &catalog,
        None,
        &f.layout,
        &RestoreSelection::new(true, Vec::new()),
    )
    .unwrap();
    let notes = plan.notes();
    assert!(
        notes.len() == 1 && notes[0].contains("refuse to start"),
        "{notes:?}"
    );
}

/// A swap that fails part-way (here: the shared database is held by a server started during the
/// restore) puts back the tenant databases already swapped in: never new tenants beside an old
/// shared database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_swap_puts_back_the_databases_already_swapped() {
    let f = Fixture::new(false).await;
    f.cycle().await;
    let before: Vec<_> = std::iter::once(f.layout.db_path.clone())
        .chain(f.backed_up().iter().map(|t| f.layout.tenant_db(*t)))
        .map(|p| std::fs::read(&p).unwrap())
        .collect();
    // Differ from the snapshot, so a swap that stayed would show.
    let default_db = f.default_analytics();
    open_database(&default_db, OpenMode::Existing)
        .unwrap()
        .execute_batch("DELETE FROM hits; CHECKPOINT;")
        .unwrap();
    let changed = std::fs::read(&default_db).unwrap();
    let plan = plan(&f, 512 * MIB).await;
    let stamp = SnapshotId::now();
    let prepared = plan.prepare_all(&f.storage, stamp, 2).await.unwrap();
    let held = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
    let (database, e) = *plan.commit_all(prepared, stamp).unwrap_err();
    drop(held);
    assert_eq!(database, Database::Shared, "{e}");
    assert!(
        std::fs::read(&default_db).unwrap() == changed,
        "the default tenant was put back"
    );
    for (i, t) in f.backed_up().iter().enumerate() {
        let path = f.layout.tenant_db(*t);
        if path != default_db {
            assert!(
                std::fs::read(&path).unwrap() == before[i + 1],
                "tenant {t} was put back"
            );
        }
    }
}

/// What a restore killed during its download and import leaves beside a target: the snapshot's
/// folder with a partial download, the temporary database and its WAL and spill folder, and its lock
/// file, no longer locked (the kernel let go with the process).
fn killed_restore_scratch(
    dir: &std::path::Path,
    base: &str,
    stamp: &str,
) -> Vec<std::path::PathBuf> {
    let prefix = dir.join(format!(".{base}.restore-{stamp}"));
    let with = |suffix: &str| std::path::PathBuf::from(format!("{}{suffix}", prefix.display()));
    std::fs::create_dir_all(&prefix).unwrap();
    std::fs::write(prefix.join("hits.parquet"), vec![7u8; 4096]).unwrap();
    std::fs::write(prefix.join(".events.parquet.partial-4242"), b"half").unwrap();
    std::fs::write(with(".tmp"), vec![0u8; 8192]).unwrap();
    std::fs::write(with(".tmp.wal"), b"wal").unwrap();
    std::fs::create_dir_all(with(".tmp.spill")).unwrap();
    std::fs::write(with(".lock"), b"").unwrap();
    vec![
        prefix.clone(),
        with(".lock"),
        with(".tmp"),
        with(".tmp.spill"),
        with(".tmp.wal"),
    ]
}

/// The scratch of a restore that was killed, beside the shared database and in tenant folders (one
/// of them a tenant the killed restore created), is removed when the next restore starts and is
/// reported; a running restore's scratch (its lock held) is kept and reported as held; the restore
/// then goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_restores_scratch_is_removed_by_the_next_and_reported() {
    let f = Fixture::new(false).await;
    f.cycle().await;
    let before = fingerprint(&f.layout.db_path);
    let shared_dir = f.layout.db_path.parent().unwrap().to_owned();
    let tenant_dir = f
        .layout
        .tenant_db(f.demo.tenants[0])
        .parent()
        .unwrap()
        .to_owned();
    let new_tenant_dir = f
        .layout
        .data_path
        .join("tenants")
        .join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&new_tenant_dir).unwrap();
    let mut killed = killed_restore_scratch(&shared_dir, "hitkeep.db", "2026-01-01T000000Z");
    killed.extend(killed_restore_scratch(
        &tenant_dir,
        "hitkeep.db",
        "2026-01-01T000000Z",
    ));
    killed.extend(killed_restore_scratch(
        &new_tenant_dir,
        "hitkeep.db",
        "2026-01-02T000000Z",
    ));
    killed.push(new_tenant_dir.clone());
    // A restore still running in another process: its lock is held.
    let running = killed_restore_scratch(&shared_dir, "hitkeep.db", "2026-01-03T000000Z");
    let held = std::fs::File::options()
        .write(true)
        .open(&running[1])
        .unwrap();
    held.try_lock().unwrap();

    let plan = plan(&f, 512 * MIB).await;
    let stale = plan.remove_stale_scratch();
    let mut removed = stale.removed.clone();
    removed.sort();
    killed.sort();
    assert_eq!(removed, killed, "{stale:#?}");
    for path in &killed {
        assert!(!path.exists(), "{}", path.display());
    }
    let mut kept: Vec<_> = stale.kept.iter().map(|(p, _)| p.clone()).collect();
    kept.sort();
    assert_eq!(kept, running, "{stale:#?}");
    assert!(
        stale
            .kept
            .iter()
            .all(|(_, why)| why.contains("running restore")),
        "{stale:#?}"
    );
    assert!(running.iter().all(|p| p.exists()));

    let stamp = SnapshotId::now();
    let prepared = plan.prepare_all(&f.storage, stamp, 2).await.unwrap();
    plan.commit_all(prepared, stamp).unwrap();
    assert_eq!(fingerprint(&f.layout.db_path), before);
    drop(held);
    // Released, the other restore's scratch goes at the next start; this restore left none.
    let again = plan.remove_stale_scratch();
    let mut removed = again.removed.clone();
    removed.sort();
    assert_eq!(removed, running, "{again:#?}");
    assert!(again.kept.is_empty(), "{again:#?}");
}
