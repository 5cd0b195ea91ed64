//! Retention archives on real DuckDB demo data, to a local directory and the in-process S3 server.

mod errors;
mod formats;
mod import;

use std::collections::BTreeMap;

use hitkeep_archive::{
    ArchiveOptions, EntryState, Ledger, SitePolicy, SiteReport, load_policies, run,
};
use hitkeep_data::demo::{DemoOptions, DemoSummary, generate};
use hitkeep_data::{DataLayout, OpenMode, TenantLayout, open_database};
use hitkeep_storage::{ListMode, Storage};
use hitkeep_testkit::{S3Server, local_storage};
use jiff::Timestamp;

struct Fixture {
    dir: tempfile::TempDir,
    layout: DataLayout,
    demo: DemoSummary,
    storage: Storage,
    _server: Option<S3Server>,
}

impl Fixture {
    async fn new(s3: bool) -> Fixture {
        Fixture::with_layout(s3, TenantLayout::Split).await
    }

    async fn with_layout(s3: bool, tenants: TenantLayout) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
        let demo = generate(&layout, &DemoOptions::new(6_000, 2).with_layout(tenants)).unwrap();
        // Varied windows: 30, 90 and 400 days, and one site with retention off.
        let shared = open_database(&layout.db_path, OpenMode::Existing).unwrap();
        shared
            .execute_batch(
                "UPDATE sites SET data_retention_days = 30 WHERE id = (SELECT min(id) FROM sites);
                 UPDATE sites SET data_retention_days = 0 WHERE id = (SELECT max(id) FROM sites);
                 UPDATE sites SET data_retention_days = 90 WHERE id IN (SELECT site_id FROM site_tenants ORDER BY site_id LIMIT 1);",
            )
            .unwrap();
        drop(shared);
        let (storage, server) = if s3 {
            let server = S3Server::start().await.unwrap();
            // A short prefix: s3s-fs (the test server) keeps per-object files whose names grow with the key
            // and fail past the filesystem's 255-byte limit; real S3 servers have no such limit.
            (server.storage("a").await, Some(server))
        } else {
            (local_storage(&dir.path().join("archive")).await, None)
        };
        Fixture {
            dir,
            layout,
            demo,
            storage,
            _server: server,
        }
    }

    fn options(&self, now: Timestamp) -> ArchiveOptions {
        let mut o = ArchiveOptions::for_layout(&self.layout, false);
        o.now = now;
        o
    }

    /// An archive run at `now`, and what it did for `site` (every site's run must have succeeded).
    async fn run_for(&self, now: Timestamp, site: uuid::Uuid) -> SiteReport {
        run(&self.storage, &self.layout, &self.options(now))
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .find(|r| r.policy.site_id == site)
            .unwrap()
    }

    fn policies(&self) -> Vec<SitePolicy> {
        load_policies(&open_database(&self.layout.db_path, OpenMode::Existing).unwrap()).unwrap()
    }

    /// The database that holds a site's rows: the default tenant's own after the split.
    fn db_of(&self, p: &SitePolicy) -> std::path::PathBuf {
        self.layout.analytics_db(
            self.demo.layout,
            Some(self.demo.default_tenant),
            p.tenant_id,
        )
    }

    /// The archived tables this site's database has (an older schema lacks some).
    fn tables_of(&self, p: &SitePolicy) -> Vec<&'static hitkeep_archive::ArchiveTable> {
        let conn = open_database(&self.db_of(p), OpenMode::Existing).unwrap();
        let present: Vec<String> = hitkeep_data::user_tables(&conn)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        hitkeep_archive::TABLES
            .iter()
            .filter(|t| present.iter().any(|p| p == t.name))
            .collect()
    }

    /// Marks the newest ledger entry of `key`'s site verified again, as if its delete had been interrupted;
    /// returns the site folder, the ledger key and the ledger.
    async fn reopen_last_entry(&self, key: &str, policy: &SitePolicy) -> (String, String, Ledger) {
        let dir = key.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        let ledger_key = hitkeep_archive::ledger_key(&dir, policy);
        let mut ledger: Ledger =
            serde_json::from_slice(&self.storage.read(&ledger_key).await.unwrap()).unwrap();
        ledger.entries.last_mut().unwrap().state = EntryState::Verified;
        self.storage
            .write(&ledger_key, serde_json::to_vec(&ledger).unwrap())
            .await
            .unwrap();
        (dir, ledger_key, ledger)
    }

    /// Rows per (site, table) in the live databases.
    fn live_rows(&self) -> BTreeMap<(String, String), i64> {
        let mut rows = BTreeMap::new();
        for p in self.policies() {
            let conn = open_database(&self.db_of(&p), OpenMode::Existing).unwrap();
            for t in self.tables_of(&p) {
                let n: i64 = conn
                    .query_row(
                        &format!(
                            "SELECT count(*) FROM {} WHERE site_id = '{}'",
                            t.name, p.site_id
                        ),
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                rows.insert((p.site_id.to_string(), t.name.to_owned()), n);
            }
        }
        rows
    }

    /// Rows per (site, table) in every archive file, read from storage.
    async fn archived_rows(&self) -> BTreeMap<(String, String), i64> {
        let download = self.dir.path().join("readback");
        std::fs::create_dir_all(&download).unwrap();
        let mut rows = BTreeMap::new();
        for entry in self.storage.list("", ListMode::Recursive).await.unwrap() {
            if !entry.key.ends_with(".parquet") {
                continue;
            }
            let local = download.join(entry.name());
            self.storage
                .download_file(&entry.key, &local, None, &Default::default())
                .await
                .unwrap();
            let conn = duckdb::Connection::open_in_memory().unwrap();
            let mut stmt = conn.prepare(&format!("SELECT CAST(site_id AS VARCHAR), _source, count(*) FROM read_parquet('{}') GROUP BY 1, 2", local.display())).unwrap();
            for r in stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .unwrap()
            {
                let (site, table, n) = r.unwrap();
                *rows.entry((site, table)).or_default() += n;
            }
        }
        rows
    }
}

fn sum(
    a: &BTreeMap<(String, String), i64>,
    b: &BTreeMap<(String, String), i64>,
) -> BTreeMap<(String, String), i64> {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_default() += v;
    }
    out.retain(|_, v| *v != 0);
    out
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod local { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Fixture::new(false).await).await })* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Fixture::new(true).await).await })* }
        /// HitKeep 2.12 and older: the default tenant's rows in the shared database, fewer tables.
        mod pre_split { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Fixture::with_layout(false, hitkeep_data::TenantLayout::PreSplit).await).await })* }
    };
}

on_every_backend!(
    every_row_is_in_the_database_or_the_archive_exactly_once,
    a_crash_after_upload_or_in_the_delete_is_recovered_without_duplicates,
    the_layout_is_hitkeeps,
    an_object_changed_at_rest_is_refused_by_every_reader
);

async fn every_row_is_in_the_database_or_the_archive_exactly_once(f: Fixture) {
    let before = f.live_rows();
    let now = Timestamp::now();
    let reports = run(&f.storage, &f.layout, &f.options(now)).await.unwrap();
    assert!(reports.iter().all(Result::is_ok), "{reports:?}");
    assert!(
        reports
            .iter()
            .flatten()
            .filter(|r| r.file.is_some())
            .count()
            >= 3,
        "{reports:?}"
    );
    let after = f.live_rows();
    let archived = f.archived_rows().await;
    assert!(archived.values().sum::<i64>() > 0);
    let mut before_nonzero = before.clone();
    before_nonzero.retain(|_, v| *v != 0);
    assert_eq!(
        sum(&after, &archived),
        before_nonzero,
        "rows before = rows after + rows archived, per site and table"
    );
    // Nothing expired is left in the live tables.
    for p in f.policies() {
        let conn = open_database(&f.db_of(&p), OpenMode::Existing).unwrap();
        let cutoff = hitkeep_archive::Cutoff::days_before(now, p.days).unwrap();
        for t in f.tables_of(&p) {
            let n: i64 = conn
                .query_row(
                    &format!(
                        "SELECT count(*) FROM {} WHERE site_id = '{}' AND \"{}\" < {}",
                        t.name,
                        p.site_id,
                        t.column,
                        cutoff.bound(t.grain)
                    ),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0, "{} {}", p.site_id, t.name);
        }
    }
    // A second run finds nothing to do.
    let again = run(&f.storage, &f.layout, &f.options(now)).await.unwrap();
    assert!(
        again
            .iter()
            .flatten()
            .all(|r| r.file.is_none() && r.counts.values().all(|n| *n == 0)),
        "{again:?}"
    );
    assert_eq!(f.archived_rows().await, archived);
}

async fn a_crash_after_upload_or_in_the_delete_is_recovered_without_duplicates(f: Fixture) {
    let before = f.live_rows();
    let now = Timestamp::now();
    let policy = f
        .policies()
        .into_iter()
        .find(|p| p.tenant_id.is_some())
        .unwrap();
    let conn = open_database(&f.db_of(&policy), OpenMode::Existing).unwrap();
    let default = None;
    // 1. A crash in the delete: the verified file exists, the rows are still there. Reproduce it by
    //    archiving, then putting the rows back and marking the ledger entry verified again.
    let report =
        hitkeep_archive::archive_site(&f.storage, &conn, &policy, default, &f.options(now))
            .await
            .unwrap();
    let key = report.files[0].clone();
    for (table, n) in &report.counts {
        if *n > 0 {
            let part = report
                .files
                .iter()
                .find(|k| k.ends_with(&format!(".{table}.parquet")))
                .unwrap();
            let local = f.dir.path().join(format!("put-back.{table}.parquet"));
            f.storage
                .download_file(part, &local, None, &Default::default())
                .await
                .unwrap();
            let mut stmt = conn
                .prepare(&format!("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = '{table}' ORDER BY column_index"))
                .unwrap();
            let cols: Vec<(String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let names = cols
                .iter()
                .map(|(c, _)| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            // A file per table holds the table's own types: the rows go back as they are.
            let values = &names;
            conn.execute_batch(&format!("INSERT INTO {table} ({names}) SELECT {values} FROM read_parquet('{}') WHERE _source = '{table}'", local.display()))
                .unwrap_or_else(|e| panic!("{table}: {e}"));
        }
    }
    let (dir, ledger_key, mut ledger) = f.reopen_last_entry(&key, &policy).await;
    // 2. A crash after upload, before verification: a pending entry and a stray object.
    let stray = if dir.is_empty() {
        "site_stray.parquet".to_owned()
    } else {
        format!("{dir}/site_stray.parquet")
    };
    f.storage
        .write(&stray, &b"half an upload"[..])
        .await
        .unwrap();
    ledger.entries.push(hitkeep_archive::LedgerEntry {
        file: stray.rsplit('/').next().unwrap().to_owned(),
        cutoff: now.to_string(),
        counts: BTreeMap::new(),
        oldest: None,
        newest: None,
        size: 0,
        state: EntryState::Pending,
        format: hitkeep_archive::EntryFormat::OneFile,
        stored: BTreeMap::new(),
    });
    f.storage
        .write(&ledger_key, serde_json::to_vec(&ledger).unwrap())
        .await
        .unwrap();
    drop(conn);

    let this = f.run_for(now, policy.site_id).await;
    assert_eq!(this.recovered.len(), 2, "{this:?}");
    assert!(
        this.file.is_none(),
        "the rows were finished by the recovered delete, not archived twice: {this:?}"
    );
    assert_eq!(
        f.storage.stat(&stray).await.unwrap(),
        None,
        "the unverified object is gone"
    );
    let mut before_nonzero = before.clone();
    before_nonzero.retain(|_, v| *v != 0);
    assert_eq!(
        sum(&f.live_rows(), &f.archived_rows().await),
        before_nonzero,
        "no row lost, none duplicated"
    );
}

async fn the_layout_is_hitkeeps(f: Fixture) {
    run(&f.storage, &f.layout, &f.options(Timestamp::now()))
        .await
        .unwrap();
    let keys: Vec<String> = f
        .storage
        .list("", ListMode::Recursive)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    let is_s3 = f.storage.location().is_s3();
    for p in f.policies().iter().filter(|p| p.days > 0) {
        // The flat root names the site in each file; a site's folder names it for its files.
        let file = keys.iter().find(|k| {
            let name = k.rsplit('/').next().unwrap();
            k.ends_with(".parquet")
                && name.starts_with("site_")
                && (k.contains(&format!("site_{}_", p.site_id))
                    || k.contains(&format!("/sites/{}/", p.site_id)))
        });
        let Some(file) = file else { continue };
        match (p.tenant_id, is_s3) {
            (None, false) => assert!(
                !file.contains('/'),
                "default tenant files sit flat on local disk: {file}"
            ),
            (None, true) => assert!(
                file.starts_with(&format!(
                    "tenants/{}/sites/{}/",
                    f.demo.default_tenant, p.site_id
                )),
                "{file}"
            ),
            (Some(t), _) => assert!(
                file.starts_with(&format!("tenants/{t}/sites/{}/", p.site_id)),
                "{file}"
            ),
        }
    }
}

/// Rows exactly at the cutoff stay; a microsecond earlier goes; a day bucket or date only goes once the
/// whole day is before the cutoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundaries_are_neither_lost_nor_archived_twice() {
    // Pre-split: the default tenant's rows are in the shared database, where this test puts them.
    let f = Fixture::with_layout(false, TenantLayout::PreSplit).await;
    let shared = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
    shared
        .execute_batch("UPDATE sites SET data_retention_days = 30 WHERE id = (SELECT min(id) FROM sites WHERE id NOT IN (SELECT site_id FROM site_tenants))")
        .unwrap();
    drop(shared);
    let policy = f
        .policies()
        .into_iter()
        .find(|p| p.tenant_id.is_none() && p.days == 30)
        .unwrap();
    let now: Timestamp = "2026-11-25T12:00:00.500000Z".parse().unwrap();
    let conn = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
    // Only the boundary rows, so the counts are exact.
    for t in f.tables_of(&policy) {
        conn.execute_batch(&format!(
            "DELETE FROM {} WHERE site_id = '{}'",
            t.name, policy.site_id
        ))
        .unwrap();
    }
    let site = policy.site_id;
    conn.execute_batch(&format!(
        "INSERT INTO hits (id, site_id, session_id, page_id, timestamp, path) VALUES
            (uuid(), '{site}', uuid(), uuid(), '2026-10-26 12:00:00.500000+00', '/at-cutoff'),
            (uuid(), '{site}', uuid(), uuid(), '2026-10-26 12:00:00.499999+00', '/one-microsecond-before'),
            (uuid(), '{site}', uuid(), uuid(), '2026-10-26 12:00:00.500001+00', '/one-microsecond-after');
         INSERT INTO imported_traffic_daily (site_id, import_id, date) VALUES
            ('{site}', uuid(), DATE '2026-10-26'), ('{site}', uuid(), DATE '2026-10-25');
         INSERT INTO hit_rollups_daily VALUES ('{site}', DATE '2026-10-26', 1, 1), ('{site}', DATE '2026-10-25', 1, 1);
         INSERT INTO hit_rollups_monthly VALUES ('{site}', DATE '2026-10-01', 1, 1), ('{site}', DATE '2026-09-01', 1, 1);
         INSERT INTO hit_rollups_hourly VALUES ('{site}', '2026-10-26 12:00:00+00', 1, 1), ('{site}', '2026-10-26 11:00:00+00', 1, 1);"
    ))
    .unwrap();
    let report = hitkeep_archive::archive_site(&f.storage, &conn, &policy, None, &f.options(now))
        .await
        .unwrap();
    let archived: BTreeMap<&str, u64> = report
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        archived,
        BTreeMap::from([
            ("hits", 1),
            ("imported_traffic_daily", 1),
            ("hit_rollups_daily", 1),
            ("hit_rollups_monthly", 1),
            ("hit_rollups_hourly", 1)
        ])
    );
    let left: Vec<String> = {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT path FROM hits WHERE site_id = '{site}' ORDER BY path"
            ))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(left, ["/at-cutoff", "/one-microsecond-after"]);
    let second = hitkeep_archive::archive_site(&f.storage, &conn, &policy, None, &f.options(now))
        .await
        .unwrap();
    assert!(second.counts.values().all(|n| *n == 0) && second.file.is_none());
}

/// A verified file whose delete was interrupted, and rows changed since (a re-import with the same
/// count): the rerun compares contents, refuses to delete rows that are in no archive, and keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_delete_never_removes_rows_that_changed_since() {
    let f = Fixture::new(false).await;
    let now = Timestamp::now();
    let policy = f
        .policies()
        .into_iter()
        .find(|p| p.tenant_id.is_some())
        .unwrap();
    let conn = open_database(&f.db_of(&policy), OpenMode::Existing).unwrap();
    let report = hitkeep_archive::archive_site(&f.storage, &conn, &policy, None, &f.options(now))
        .await
        .unwrap();
    let key = report
        .files
        .iter()
        .find(|k| k.ends_with(".hits.parquet"))
        .unwrap()
        .clone();
    let local = f.dir.path().join("put-back.parquet");
    f.storage
        .download_file(&key, &local, None, &Default::default())
        .await
        .unwrap();
    // Put the hits back, then change one of them: same count, different content.
    conn.execute_batch(&format!(
        "INSERT INTO hits BY NAME SELECT id, site_id, session_id, page_id, timestamp, path FROM read_parquet('{}') WHERE _source = 'hits';
         UPDATE hits SET path = '/re-imported' WHERE id = (SELECT min(id) FROM hits WHERE site_id = '{}');",
        local.display(),
        policy.site_id
    ))
    .unwrap();
    f.reopen_last_entry(&key, &policy).await;
    let hits_before: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM hits WHERE site_id = '{}'",
                policy.site_id
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();

    let err = hitkeep_archive::archive_site(&f.storage, &conn, &policy, None, &f.options(now))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not in this verified archive"),
        "{err}"
    );
    let hits_after: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM hits WHERE site_id = '{}'",
                policy.site_id
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hits_after, hits_before, "nothing was deleted");
}

/// On a split install the default tenant's expired rows leave its own database (the shared one holds
/// none), `search_console_facts` is archived with the rest, and expired `rollup_dirty_buckets` markers
/// are deleted, not archived, as HitKeep's retention does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_install_archives_the_default_tenant_from_its_own_database() {
    let f = Fixture::new(false).await;
    let default_db = f.layout.tenant_db(f.demo.default_tenant);
    let count = |db: &std::path::Path, sql: &str| -> i64 {
        open_database(db, OpenMode::Existing)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    let dirty = "SELECT count(*) FROM rollup_dirty_buckets";
    let dirty_before = count(&default_db, dirty);
    assert!(dirty_before > 0, "the demo marks some buckets dirty");
    let now = Timestamp::now();
    let reports = run(&f.storage, &f.layout, &f.options(now)).await.unwrap();
    let reports: Vec<_> = reports.into_iter().map(Result::unwrap).collect();
    let default_sites: Vec<_> = reports
        .iter()
        .filter(|r| r.policy.tenant_id.is_none())
        .collect();
    assert!(
        default_sites
            .iter()
            .any(|r| r.file.is_some() && r.counts["hits"] > 0),
        "a default-tenant site was archived: {default_sites:?}"
    );
    let archived = f.archived_rows().await;
    assert!(
        archived.keys().any(|(_, t)| t == "search_console_facts"),
        "{archived:?}"
    );
    assert!(!archived.keys().any(|(_, t)| t == "rollup_dirty_buckets"));
    assert!(reports.iter().map(|r| r.dirty_buckets_pruned).sum::<u64>() > 0);
    assert!(count(&default_db, dirty) < dirty_before);
    // No marker of a wholly expired bucket is left for an archived site.
    for r in reports.iter().filter(|r| r.policy.days > 0) {
        let cutoff = hitkeep_archive::Cutoff::days_before(now, r.policy.days).unwrap();
        let db = f.db_of(&r.policy);
        let left = count(
            &db,
            &format!(
                "SELECT count(*) FROM rollup_dirty_buckets WHERE site_id = '{}' AND bucket < CAST({} AS TIMESTAMPTZ)",
                r.policy.site_id,
                cutoff.bound(hitkeep_archive::Grain::Month)
            ),
        );
        assert_eq!(left, 0, "{}", r.policy.site_id);
    }
    let shared_hits = count(&f.layout.db_path, "SELECT count(*) FROM hits");
    assert_eq!(
        shared_hits, 0,
        "the split shared database holds no analytics"
    );
}

/// An embedding server's own connection, rewriting one expired hit once its archive is verified and
/// before the run deletes the archived rows.
struct RewriteOneHit {
    conn: std::sync::Mutex<duckdb::Connection>,
    bound: String,
    rewritten: std::sync::Mutex<Option<String>>,
}

impl hitkeep_archive::ArchiveEvents for RewriteOneHit {
    fn verified(&self, site: uuid::Uuid, _key: &str, _counts: &BTreeMap<String, u64>) {
        let conn = self.conn.lock().unwrap();
        let id: String = conn
            .query_row(
                &format!(
                    "SELECT CAST(min(id) AS VARCHAR) FROM hits WHERE site_id = '{site}' AND timestamp < {}",
                    self.bound
                ),
                [],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            &format!("UPDATE hits SET path = '/rewritten-after-export' WHERE id = '{id}'"),
            [],
        )
        .unwrap();
        *self.rewritten.lock().unwrap() = Some(id);
    }
}

/// Another connection rewrites an expired row between the export and the delete, keeping the count:
/// the delete compares contents, rolls back and names the table; no row leaves DuckDB that is not in
/// an archive, and the next run archives the row as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_rewritten_between_export_and_delete_is_never_deleted() {
    let f = Fixture::new(false).await;
    let now = Timestamp::now();
    let before = f.live_rows();
    let policy = f
        .policies()
        .into_iter()
        .find(|p| p.tenant_id.is_some())
        .unwrap();
    let conn = open_database(&f.db_of(&policy), OpenMode::Existing).unwrap();
    let server = std::sync::Arc::new(RewriteOneHit {
        conn: std::sync::Mutex::new(conn.try_clone().unwrap()),
        bound: hitkeep_archive::Cutoff::days_before(now, policy.days)
            .unwrap()
            .bound(hitkeep_archive::Grain::Instant),
        rewritten: std::sync::Mutex::new(None),
    });
    let options = f.options(now).with_events(server.clone());

    let err = hitkeep_archive::archive_site(&f.storage, &conn, &policy, None, &options)
        .await
        .unwrap_err();
    let hitkeep_archive::Error::RowsChanged {
        site,
        table,
        not_archived,
        gone,
        file,
        ..
    } = &err
    else {
        panic!("expected RowsChanged, got {err:?}");
    };
    assert_eq!(
        (*site, table.as_str(), *not_archived, *gone),
        (policy.site_id, "hits", 1, 1),
        "{err}"
    );
    assert!(
        err.to_string().contains("hits")
            && err.kind() == hitkeep_archive::ErrorKind::Conflict
            && err
                .hint()
                .is_some_and(|h| h.contains("the next run discards this file")),
        "{err}: {:?}",
        err.hint()
    );
    let id = server.rewritten.lock().unwrap().clone().unwrap();
    let path: String = conn
        .query_row(
            &format!("SELECT path FROM hits WHERE id = '{id}'"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        path, "/rewritten-after-export",
        "the rewritten row survives"
    );
    // The file stays for now; its entry is pending, so the next run discards it and starts over.
    assert!(f.storage.stat(file).await.unwrap().is_some());
    let ledger_key =
        hitkeep_archive::ledger_key(file.rsplit_once('/').map_or("", |(d, _)| d), &policy);
    let ledger: Ledger =
        serde_json::from_slice(&f.storage.read(&ledger_key).await.unwrap()).unwrap();
    assert_eq!(
        ledger.entries.last().unwrap().state,
        EntryState::Pending,
        "{ledger:?}"
    );
    drop((conn, server, options));
    assert_eq!(f.live_rows(), before, "nothing was deleted");

    let this = f.run_for(now, policy.site_id).await;
    assert_eq!(this.recovered.len(), 1, "{this:?}");
    assert!(this.file.is_some(), "{this:?}");
    let site_files: Vec<String> = f
        .storage
        .list("", ListMode::Recursive)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .filter(|k| k.contains(&format!("/sites/{}/", policy.site_id)) && k.ends_with(".parquet"))
        .collect();
    let (mut site_files, mut files) = (site_files, this.files.clone());
    site_files.sort();
    files.sort();
    assert_eq!(
        site_files, files,
        "the stale files were replaced, not kept beside the new ones"
    );
    let mut before_nonzero = before.clone();
    before_nonzero.retain(|_, v| *v != 0);
    assert_eq!(
        sum(&f.live_rows(), &f.archived_rows().await),
        before_nonzero,
        "every row is in the database or an archive, exactly once"
    );
    let local = f.dir.path().join("rearchived.parquet");
    f.storage
        .download_file(
            this.files
                .iter()
                .find(|k| k.ends_with(".hits.parquet"))
                .unwrap(),
            &local,
            None,
            &Default::default(),
        )
        .await
        .unwrap();
    let archived_path: String = duckdb::Connection::open_in_memory()
        .unwrap()
        .query_row(
            &format!(
                "SELECT path FROM read_parquet('{}') WHERE _source = 'hits' AND CAST(id AS VARCHAR) = '{id}'",
                local.display()
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(archived_path, "/rewritten-after-export");
}

// After `on_every_backend!`, which it uses.
mod sealed;

/// A provider (or a network) that damages bodies, with no integrity header to refuse them
/// (`HITKEEP_S3_CHECKSUM=off`): the read-back finds other bytes than were sent, what the run stored is
/// removed, and no row leaves DuckDB. Plain, the damaged files would parse to the same rows (the flipped
/// bit is in the header's magic, which DuckDB does not check); sealed, the object would no longer look
/// sealed. Only the comparison with what was sent catches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_stored_damaged_fails_the_read_back_and_nothing_is_deleted() {
    for sealed in [false, true] {
        damaged_uploads_delete_nothing(sealed).await;
    }
}

async fn damaged_uploads_delete_nothing(sealed: bool) {
    use hitkeep_testkit::{BUCKET, ServerOptions};
    let mut f = Fixture::new(false).await;
    let server = S3Server::start_with(ServerOptions::damaging_uploads())
        .await
        .unwrap();
    let mut env = server.hitkeep_env();
    env.push(("HITKEEP_S3_CHECKSUM".into(), "off".into()));
    let settings = hitkeep_config::Config::load(&hitkeep_config::Sources::with_env(env))
        .unwrap()
        .settings
        .s3;
    let location = format!("s3://{BUCKET}/a").parse().unwrap();
    f.storage = Storage::open(&location, &settings).await.unwrap();
    let mut options = f.options(Timestamp::now());
    if sealed {
        let host = hitkeep_seal::HostKey::read_or_create(&f.dir.path().join("host.key")).unwrap();
        let sealer = hitkeep_seal::Sealer::new(&[host.recipient()])
            .unwrap()
            .unwrap();
        options.sealer = Some(std::sync::Arc::new(sealer));
        let opener = hitkeep_seal::Opener::new(Vec::new()).with_host_key(&host);
        options.opener = Some(std::sync::Arc::new(opener));
    }
    let before = f.live_rows();

    // The ledgers are damaged too (every body is); this run never reads them back.
    let reports = run(&f.storage, &f.layout, &options).await.unwrap();
    let failed: Vec<_> = reports.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!failed.is_empty(), "sealed {sealed}: {reports:?}");
    for e in &failed {
        assert!(
            matches!(e, hitkeep_archive::Error::ReadBackDiffers { .. }),
            "sealed {sealed}: {e}"
        );
        assert_eq!(e.kind(), hitkeep_archive::ErrorKind::Integrity);
    }
    let archived = reports.iter().flatten().filter(|r| r.file.is_some());
    assert_eq!(archived.count(), 0, "sealed {sealed}: {reports:?}");
    assert_eq!(f.live_rows(), before, "sealed {sealed}: no row left DuckDB");
    let stored = f.storage.list("", ListMode::Recursive).await.unwrap();
    let parquet: Vec<_> = stored
        .iter()
        .filter(|e| e.key.ends_with(".parquet"))
        .collect();
    assert!(parquet.is_empty(), "sealed {sealed}: {parquet:?}");
}

/// Each object's size and SHA-256 are in its ledger entry, and every later reader checks them before
/// it uses the object: the view and `archive restore` (`local_copies`), `import-archives`, and the
/// recovery of a run whose delete was interrupted. One flipped bit in the first byte (which DuckDB
/// never checks, so the file still parses to the same rows) and the object is refused as changed,
/// and nothing is read from it.
async fn an_object_changed_at_rest_is_refused_by_every_reader(f: Fixture) {
    use hitkeep_archive::{Error, ErrorKind, ImportPlan, files, local_copies};
    let now = Timestamp::now();
    let reports = run(&f.storage, &f.layout, &f.options(now)).await.unwrap();
    assert!(reports.iter().all(Result::is_ok), "{reports:?}");
    let committed = files(&f.storage, None).await.unwrap();
    assert!(committed.len() > 3, "{committed:?}");
    assert!(
        committed.iter().all(|(o, _, _)| o.recorded.is_some()),
        "{committed:?}"
    );
    let objects: Vec<_> = committed.iter().map(|(o, _, _)| o.clone()).collect();
    let read = local_copies(&f.storage, &objects, &f.dir.path().join("c1"), None).await;
    assert_eq!(
        read.unwrap().len(),
        objects.len(),
        "unchanged, every object reads"
    );

    // The first byte of one object flipped, its size unchanged.
    let (victim, site, _) = &committed[0];
    let policy = f
        .policies()
        .into_iter()
        .find(|p| p.site_id == *site)
        .unwrap();
    let mut bytes = f.storage.read(&victim.key).await.unwrap().to_vec();
    bytes[0] ^= 1;
    f.storage.write(&victim.key, bytes).await.unwrap();
    let changed =
        |e: &Error| matches!(e, Error::ArchiveChanged { key } if key.contains(&victim.key));

    let refused = local_copies(&f.storage, &objects, &f.dir.path().join("c2"), None)
        .await
        .unwrap_err();
    assert!(changed(&refused), "{refused}");
    assert_eq!(refused.kind(), ErrorKind::Integrity);
    assert!(refused.hint().unwrap().contains("copy"), "{refused:?}");

    let plan = ImportPlan::new(&f.storage, &f.layout, policy.tenant_id)
        .await
        .unwrap();
    assert!(plan.files.contains(&victim.key), "{:?}", plan.files);
    assert_eq!(plan.checked(), plan.files.len(), "{:?}", plan.files);
    let imported = plan.execute(&f.storage, &f.layout, None).await.unwrap_err();
    let Error::ImportFile { source, .. } = &imported else {
        panic!("{imported:?}");
    };
    assert!(changed(source), "{imported}");
    assert_eq!(imported.kind(), ErrorKind::Integrity);

    // A run whose delete was interrupted: the next run's recovery refuses the changed object, and
    // leaves its entry verified (its delete not finished) and the object in place.
    let (_, ledger_key, _) = f.reopen_last_entry(&victim.key, &policy).await;
    let again = run(&f.storage, &f.layout, &f.options(now)).await.unwrap();
    let refusals = again.iter().filter(|r| matches!(r, Err(e) if changed(e)));
    assert_eq!(refusals.count(), 1, "{again:?}");
    assert!(
        again
            .iter()
            .flatten()
            .all(|r| r.policy.site_id != policy.site_id),
        "{again:?}"
    );
    let ledger: Ledger =
        serde_json::from_slice(&f.storage.read(&ledger_key).await.unwrap()).unwrap();
    assert_eq!(ledger.entries.last().unwrap().state, EntryState::Verified);
    assert!(f.storage.stat(&victim.key).await.unwrap().is_some());
}
