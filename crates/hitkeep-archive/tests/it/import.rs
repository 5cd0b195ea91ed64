//! `recover import-archives` on real DuckDB demo data: what retention archived comes back equal, on
//! both layouts and from local disk and S3; a second run imports nothing; rows whose site or parent row
//! is gone are skipped and counted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hitkeep_archive::{ArchiveOptions, Error, ImportPlan, TableCounts, run};
use hitkeep_data::demo::{DemoOptions, DemoSummary, generate};
use hitkeep_data::{DataLayout, OpenMode, TenantLayout, open_database};
use hitkeep_storage::{ListMode, Storage};
use hitkeep_testkit::{S3Server, local_storage};
use uuid::Uuid;

struct Setup {
    dir: tempfile::TempDir,
    layout: DataLayout,
    demo: DemoSummary,
    storage: Storage,
    _server: Option<S3Server>,
}

impl Setup {
    /// Demo data where every site keeps 200 days, so about a third of its rows expire.
    async fn new(tenants: TenantLayout, s3: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
        let demo = generate(&layout, &DemoOptions::new(6_000, 2).with_layout(tenants)).unwrap();
        open_database(&layout.db_path, OpenMode::Existing)
            .unwrap()
            .execute_batch("UPDATE sites SET data_retention_days = 200")
            .unwrap();
        let (storage, server) = if s3 {
            let server = S3Server::start().await.unwrap();
            (server.storage("a").await, Some(server))
        } else {
            (local_storage(&dir.path().join("archive")).await, None)
        };
        Setup {
            dir,
            layout,
            demo,
            storage,
            _server: server,
        }
    }

    /// The default tenant (`None`) and every active tenant, with the database its rows live in.
    fn targets(&self) -> Vec<(Option<Uuid>, PathBuf)> {
        let default = Some(self.demo.default_tenant);
        std::iter::once(None)
            .chain(self.demo.tenants.iter().copied().map(Some))
            .map(|t| (t, self.layout.analytics_db(self.demo.layout, default, t)))
            .collect()
    }

    fn fingerprints(&self) -> Vec<BTreeMap<String, (i64, i128)>> {
        self.targets()
            .iter()
            .map(|(_, db)| fingerprint(db))
            .collect()
    }

    async fn archive(&self) {
        let reports = run(
            &self.storage,
            &self.layout,
            &ArchiveOptions::for_layout(&self.layout, false),
        )
        .await
        .unwrap();
        let files = reports
            .iter()
            .filter(|r| r.as_ref().unwrap().file.is_some());
        assert!(files.count() >= 4, "{reports:?}");
    }

    async fn import(&self, tenant: Option<Uuid>) -> BTreeMap<String, TableCounts> {
        let plan = ImportPlan::new(&self.storage, &self.layout, tenant)
            .await
            .unwrap();
        let summary = plan
            .execute(&self.storage, &self.layout, None)
            .await
            .unwrap();
        assert_eq!(summary.files, plan.files.len());
        summary.tables
    }
}

/// Count and an order-independent hash of the rows of every archived table in `db`.
fn fingerprint(db: &Path) -> BTreeMap<String, (i64, i128)> {
    let conn = open_database(db, OpenMode::Existing).unwrap();
    let present: Vec<String> = hitkeep_data::user_tables(&conn)
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    hitkeep_archive::TABLES
        .iter()
        .filter(|t| present.iter().any(|p| p == t.name))
        .map(|t| {
            let sql = format!(
                "SELECT count(*), coalesce(sum(hash(x)::HUGEINT), 0) FROM {} x",
                t.name
            );
            let v = conn
                .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            (t.name.to_owned(), v)
        })
        .collect()
}

fn total(tables: &BTreeMap<String, TableCounts>, f: fn(&TableCounts) -> u64) -> u64 {
    tables.values().map(f).sum()
}

macro_rules! on_both_layouts_and_backends {
    ($($test:ident),* $(,)?) => {
        mod split_local { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Setup::new(hitkeep_data::TenantLayout::Split, false).await).await })* }
        mod split_s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Setup::new(hitkeep_data::TenantLayout::Split, true).await).await })* }
        mod pre_split_local { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Setup::new(hitkeep_data::TenantLayout::PreSplit, false).await).await })* }
        mod pre_split_s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Setup::new(hitkeep_data::TenantLayout::PreSplit, true).await).await })* }
    };
}

on_both_layouts_and_backends!(archived_rows_come_back_equal_and_a_second_run_imports_nothing);

async fn archived_rows_come_back_equal_and_a_second_run_imports_nothing(s: Setup) {
    let before = s.fingerprints();
    s.archive().await;
    assert_ne!(s.fingerprints(), before, "retention moved rows out");
    for (tenant, db) in s.targets() {
        let plan = ImportPlan::new(&s.storage, &s.layout, tenant)
            .await
            .unwrap();
        assert_eq!(plan.target, db, "{tenant:?}");
        assert_eq!(plan.is_default, tenant.is_none());
        assert!(!plan.files.is_empty(), "{tenant:?}");
        let tables = s.import(tenant).await;
        assert!(total(&tables, |c| c.imported) > 0, "{tables:?}");
        assert_eq!(total(&tables, |c| c.present + c.skipped), 0, "{tables:?}");
    }
    assert_eq!(s.fingerprints(), before, "every archived row is back, once");
    for (tenant, _) in s.targets() {
        let again = s.import(tenant).await;
        assert_eq!(total(&again, |c| c.imported), 0, "{tenant:?}: {again:?}");
        assert!(total(&again, |c| c.present) > 0, "{again:?}");
    }
    assert_eq!(s.fingerprints(), before, "the second run changed nothing");
    // Nothing is left beside the target: S3 objects were downloaded into a scratch folder there.
    for (_, db) in s.targets() {
        let dir = db.parent().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".hitkeep-import-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// Deleting a site (its rows and its mirror row, as HitKeep does) after its rows were archived: the
/// import skips them and counts them per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_deleted_site_are_skipped_and_counted() {
    let s = Setup::new(TenantLayout::Split, false).await;
    s.archive().await;
    let tenant = s.demo.tenants[0];
    let db = s.layout.tenant_db(tenant);
    let plan = ImportPlan::new(&s.storage, &s.layout, Some(tenant))
        .await
        .unwrap();
    let site: String = open_database(&db, OpenMode::Existing)
        .unwrap()
        .query_row("SELECT CAST(min(id) AS VARCHAR) FROM sites", [], |r| {
            r.get(0)
        })
        .unwrap();
    let archived = archived_rows_of(&s, &plan.files, &site).await;
    assert!(archived.values().sum::<u64>() > 0);
    delete_site(&db, &site);

    let tables = s.import(Some(tenant)).await;
    for (table, n) in &archived {
        assert!(
            tables[table].skipped >= *n,
            "{table}: {n} archived rows of the deleted site, {tables:?}"
        );
    }
    assert_eq!(
        total(&tables, |c| c.skipped),
        archived.values().sum::<u64>(),
        "only the deleted site's rows are skipped"
    );
    let conn = open_database(&db, OpenMode::Existing).unwrap();
    for table in archived.keys() {
        let n: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE site_id = '{site}'"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
}

/// Rows per `_source` of one site in the given archive files.
async fn archived_rows_of(s: &Setup, keys: &[String], site: &str) -> BTreeMap<String, u64> {
    let objects: Vec<_> = keys
        .iter()
        .map(|key| hitkeep_archive::ArchiveObject {
            key: key.clone(),
            recorded: None,
        })
        .collect();
    let copies = s.dir.path().join("copies");
    let paths = hitkeep_archive::local_copies(&s.storage, &objects, &copies, None)
        .await
        .unwrap();
    let list = paths
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect::<Vec<_>>()
        .join(", ");
    let conn = duckdb::Connection::open_in_memory().unwrap();
    let sql = format!(
        "SELECT _source, count(*) FROM read_parquet([{list}], union_by_name = true) WHERE site_id = '{site}' GROUP BY 1"
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
        .map(|r| r.map(|(t, n)| (t, n as u64)).unwrap())
        .collect()
}

/// Every row of `site` in every table that has a `site_id`, then its mirror row.
fn delete_site(db: &Path, site: &str) {
    let conn = open_database(db, OpenMode::Existing).unwrap();
    let mut stmt = conn
        .prepare("SELECT DISTINCT table_name FROM duckdb_columns() WHERE database_name = current_database() AND column_name = 'site_id'")
        .unwrap();
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for table in tables {
        conn.execute_batch(&format!("DELETE FROM {table} WHERE site_id = '{site}'"))
            .unwrap();
    }
    conn.execute_batch(&format!("DELETE FROM sites WHERE id = '{site}'"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tenant_database_is_refused_and_never_created() {
    let s = Setup::new(TenantLayout::Split, false).await;
    s.archive().await;
    let db = s.layout.tenant_db(s.demo.tenants[1]);
    std::fs::remove_file(&db).unwrap();
    let err = ImportPlan::new(&s.storage, &s.layout, Some(s.demo.tenants[1]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::NoTenantDatabase { .. })
            && err.kind() == hitkeep_archive::ErrorKind::NotFound
            && text.contains("never creates")
            && err
                .hint()
                .is_some_and(|h| h.contains("hitkeep recover restore-backup")),
        "{text}"
    );
    assert!(!db.exists());
}

/// A hand-made archive file: foreign-key parents come first whatever their names, a child whose
/// parent is in neither the file nor the table is skipped, a NULL reference is kept, a row of a site
/// this tenant does not have and a table it does not have are skipped. A file that is not an archive
/// stops the import there, the files before it staying imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_come_first_and_rows_without_a_parent_are_skipped() {
    let s = Setup::new(TenantLayout::Split, false).await;
    let tenant = s.demo.tenants[0];
    let db = s.layout.tenant_db(tenant);
    let conn = open_database(&db, OpenMode::Existing).unwrap();
    let site: String = conn
        .query_row("SELECT CAST(min(id) AS VARCHAR) FROM sites", [], |r| {
            r.get(0)
        })
        .unwrap();
    // The child sorts first by name: the import must still insert parents first.
    conn.execute_batch(
        "CREATE TABLE z_parents (id UUID PRIMARY KEY, site_id UUID);
         CREATE TABLE a_children (site_id UUID, parent_id UUID REFERENCES z_parents(id), n INTEGER);",
    )
    .unwrap();
    drop(conn);
    let (p1, gone, other_site) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let folder = s
        .dir
        .path()
        .join(format!("archive/tenants/{tenant}/sites/{site}"));
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join(format!("site_{site}_1.parquet"));
    let rows = format!(
        "SELECT 'z_parents' AS _source, '{p1}'::UUID AS id, '{site}'::UUID AS site_id, NULL::UUID AS parent_id, NULL::INTEGER AS n
         UNION ALL SELECT 'a_children', NULL, '{site}', '{p1}', 1
         UNION ALL SELECT 'a_children', NULL, '{site}', NULL, 2
         UNION ALL SELECT 'a_children', NULL, '{site}', '{gone}', 3
         UNION ALL SELECT 'a_children', NULL, '{other_site}', '{p1}', 4
         UNION ALL SELECT 'no_such_table', NULL, '{site}', NULL, 5"
    );
    duckdb::Connection::open_in_memory()
        .unwrap()
        .execute_batch(&format!(
            "COPY ({rows}) TO '{}' (FORMAT PARQUET)",
            file.display()
        ))
        .unwrap();

    let tables = s.import(Some(tenant)).await;
    let counts = |c: &TableCounts| (c.imported, c.present, c.skipped);
    assert_eq!(counts(&tables["z_parents"]), (1, 0, 0));
    assert_eq!(counts(&tables["a_children"]), (2, 0, 2));
    assert_eq!(counts(&tables["no_such_table"]), (0, 0, 1));
    let again = s.import(Some(tenant)).await;
    assert_eq!(counts(&again["z_parents"]), (0, 1, 0));
    assert_eq!(counts(&again["a_children"]), (0, 2, 2));

    std::fs::copy(&file, folder.join("site_zzz.bin")).unwrap();
    duckdb::Connection::open_in_memory()
        .unwrap()
        .execute_batch(&format!(
            "COPY (SELECT 1 AS x) TO '{}' (FORMAT PARQUET)",
            folder.join(format!("site_{site}_2.parquet")).display()
        ))
        .unwrap();
    let plan = ImportPlan::new(&s.storage, &s.layout, Some(tenant))
        .await
        .unwrap();
    assert_eq!(plan.files.len(), 2, "only site_*.parquet: {:?}", plan.files);
    let err = plan.execute(&s.storage, &s.layout, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::ImportFile { before: 1, .. })
            && text.contains(&format!("site_{site}_2.parquet"))
            && text.contains("no _source column"),
        "{text}"
    );
    let listed = s.storage.list("", ListMode::Recursive).await.unwrap();
    assert_eq!(
        listed.len(),
        3,
        "the import wrote nothing to the archive: {listed:?}"
    );
}
