//! The two ways an archive entry is stored, on real DuckDB and storage: the per-table files this build
//! writes, and the one wide file (`UNION ALL BY NAME`, format 1 ledgers, HitKeep's own files) that
//! earlier builds wrote, which every reader must still take: recovery's delete by content, the
//! `archive` view, `archive restore` and `import-archives`, also with both kinds in one ledger.

use std::collections::BTreeMap;

use hitkeep_archive::{
    ArchiveObject, Cutoff, EntryFormat, EntryState, ImportPlan, Ledger, TABLES, create_view, files,
    ledger_key, local_copies, restore_rows, run,
};
use hitkeep_data::{OpenMode, open_database};
use jiff::{Timestamp, ToSpan};

use crate::Fixture;

/// Rows of `site` before `cutoff`, per table with any.
fn expired(conn: &duckdb::Connection, site: uuid::Uuid, cutoff: Cutoff) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in TABLES {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE site_id = '{site}' AND \"{}\" < {}",
            t.name,
            t.column,
            cutoff.bound(t.grain)
        );
        if let Ok(n) = conn.query_row(&sql, [], |r| r.get::<_, i64>(0))
            && n > 0
        {
            out.insert(t.name.to_owned(), n as u64);
        }
    }
    out
}

/// Rows per `_source` in the `archive` view over `paths`.
fn in_view(paths: &[std::path::PathBuf]) -> BTreeMap<String, u64> {
    let conn = duckdb::Connection::open_in_memory().unwrap();
    create_view(&conn, paths).unwrap();
    let mut stmt = conn
        .prepare("SELECT _source, count(*) FROM archive GROUP BY 1")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// A run writes one file per table: each holds `_source` and its table's own columns in their own
/// types (a DATE stays a DATE), and the ledger lists them under format 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writes_one_narrow_file_per_table_and_lists_them() {
    let f = Fixture::new(false).await;
    let reports = run(&f.storage, &f.layout, &f.options(Timestamp::now()))
        .await
        .unwrap();
    let report = reports
        .into_iter()
        .map(Result::unwrap)
        .find(|r| r.policy.tenant_id.is_some() && r.file.is_some())
        .unwrap();
    let tables: Vec<&String> = report
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(t, _)| t)
        .collect();
    assert_eq!(report.files.len(), tables.len(), "{report:?}");
    let dir = report.files[0].rsplit_once('/').unwrap().0.to_owned();
    let ledger: Ledger =
        serde_json::from_slice(&f.storage.read(&format!("{dir}/ledger.json")).await.unwrap())
            .unwrap();
    assert_eq!(ledger.format_version, 2);
    let entry = ledger.entries.last().unwrap();
    let EntryFormat::PerTable { parts } = &entry.format else {
        panic!("{entry:?}");
    };
    assert_eq!(parts.keys().collect::<Vec<_>>(), tables);
    let conn = open_database(&f.db_of(&report.policy), OpenMode::Existing).unwrap();
    let objects: Vec<_> = files(&f.storage, Some(report.policy.site_id))
        .await
        .unwrap()
        .into_iter()
        .map(|(object, _, _)| object)
        .collect();
    let keys: Vec<&String> = objects.iter().map(|o| &o.key).collect();
    assert_eq!(keys, report.files.iter().collect::<Vec<_>>());
    let copies = local_copies(&f.storage, &objects, &f.dir.path().join("c"), None)
        .await
        .unwrap();
    for (path, (table, object)) in copies.iter().zip(parts) {
        assert!(path.ends_with(object), "{path:?} {object}");
        let describe = |sql: &str| -> Vec<(String, String)> {
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let file = describe(&format!(
            "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{}'))",
            path.display()
        ));
        let live = describe(&format!(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = '{table}' ORDER BY column_index"
        ));
        assert_eq!(file[0], ("_source".to_owned(), "VARCHAR".to_owned()));
        assert_eq!(
            file[1..],
            live[..],
            "{table}: its own columns, in its own types"
        );
    }
}

/// Format 1 (one wide file, a ledger without `format` fields) left verified by an interrupted run
/// of an earlier build: this build finishes its delete by content, keeps reading the file through
/// the view, restore and import, and writes its own next entry per table into the same ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_archive_is_still_recovered_queried_restored_and_imported() {
    let f = Fixture::new(false).await;
    let now = Timestamp::now();
    let policy = f
        .policies()
        .into_iter()
        .filter(|p| p.tenant_id.is_some())
        .min_by_key(|p| p.days)
        .unwrap();
    let site = policy.site_id;
    let cutoff = Cutoff::days_before(now, policy.days).unwrap();
    let conn = open_database(&f.db_of(&policy), OpenMode::Existing).unwrap();
    let archived = expired(&conn, site, cutoff);
    assert!(archived.contains_key("hits") && archived.contains_key("hit_rollups_daily"));

    // The earlier build's file: every table's rows in one COPY of a UNION ALL BY NAME.
    let dir = format!("tenants/{}/sites/{site}", policy.tenant_id.unwrap());
    let name = format!("site_{site}_{}.parquet", now.as_second());
    let local = f.dir.path().join(&name);
    let parts: Vec<String> = TABLES
        .iter()
        .filter(|t| archived.contains_key(t.name))
        .map(|t| {
            format!(
                "SELECT '{0}' AS _source, * FROM {0} WHERE site_id = '{site}' AND \"{1}\" < {2}",
                t.name,
                t.column,
                cutoff.bound(t.grain)
            )
        })
        .collect();
    conn.execute_batch(&format!(
        "COPY ({}) TO '{}' (FORMAT PARQUET, COMPRESSION ZSTD)",
        parts.join(" UNION ALL BY NAME "),
        local.display()
    ))
    .unwrap();
    let key = format!("{dir}/{name}");
    let info = f
        .storage
        .upload_file(&local, &key, &Default::default())
        .await
        .unwrap();
    let ledger = serde_json::json!({
        "format_version": 1,
        "site_id": site,
        "tenant_id": policy.tenant_id.unwrap(),
        "entries": [{
            "file": name, "cutoff": cutoff.instant().to_string(), "counts": archived,
            "oldest": null, "newest": null, "size": info.size, "state": "verified"
        }]
    });
    let ledger_key = ledger_key(&dir, &policy);
    f.storage
        .write(&ledger_key, serde_json::to_vec(&ledger).unwrap())
        .await
        .unwrap();
    drop(conn);

    // Recovery compares the live rows with the wide file (DATE columns widened in it) and deletes.
    let this = f.run_for(now, site).await;
    assert!(
        this.recovered
            .iter()
            .any(|n| n.contains("finished the delete"))
            && this.file.is_none(),
        "{this:?}"
    );
    let conn = open_database(&f.db_of(&policy), OpenMode::Existing).unwrap();
    assert_eq!(expired(&conn, site, cutoff), BTreeMap::new(), "deleted");
    let stored: Ledger =
        serde_json::from_slice(&f.storage.read(&ledger_key).await.unwrap()).unwrap();
    assert_eq!(stored.format_version, 2);
    assert_eq!(
        (stored.entries[0].state, &stored.entries[0].format),
        (EntryState::Deleted, &EntryFormat::OneFile),
        "the old entry keeps its format in the rewritten ledger"
    );

    // The view and `archive restore` read the wide file.
    let keys: Vec<_> = files(&f.storage, Some(site))
        .await
        .unwrap()
        .into_iter()
        .map(|(object, _, _)| object)
        .collect();
    let unrecorded = ArchiveObject {
        key: key.clone(),
        recorded: None,
    };
    assert_eq!(
        keys,
        [unrecorded],
        "a HitKeep entry has no digests: read unchecked"
    );
    let paths = local_copies(&f.storage, &keys, &f.dir.path().join("cache"), None)
        .await
        .unwrap();
    assert_eq!(in_view(&paths), archived);
    let restored: BTreeMap<String, u64> = restore_rows(&conn, &paths, None, None)
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(restored, archived, "restore puts every row back");
    assert_eq!(expired(&conn, site, cutoff), archived);

    // `import-archives` reads it too: rows deleted again come back, and only once.
    for t in TABLES.iter().filter(|t| archived.contains_key(t.name)) {
        conn.execute_batch(&format!(
            "DELETE FROM {} WHERE site_id = '{site}' AND \"{}\" < {}",
            t.name,
            t.column,
            cutoff.bound(t.grain)
        ))
        .unwrap();
    }
    drop(conn);
    let plan = ImportPlan::new(&f.storage, &f.layout, policy.tenant_id)
        .await
        .unwrap();
    assert!(plan.files.contains(&key), "{:?}", plan.files);
    plan.execute(&f.storage, &f.layout, None).await.unwrap();
    let conn = open_database(&f.db_of(&policy), OpenMode::Existing).unwrap();
    assert_eq!(expired(&conn, site, cutoff), archived, "imported back");
    drop(conn);

    // The next run, a year on, writes per table into the same ledger; the view reads both kinds.
    let later = now + (24 * 365).hours();
    let conn = open_database(&f.db_of(&policy), OpenMode::Existing).unwrap();
    let next = expired(
        &conn,
        site,
        Cutoff::days_before(later, policy.days).unwrap(),
    );
    drop(conn);
    let this = f.run_for(later, site).await;
    assert!(this.file.is_some(), "{this:?}");
    let stored: Ledger =
        serde_json::from_slice(&f.storage.read(&ledger_key).await.unwrap()).unwrap();
    assert!(matches!(
        stored.entries[1].format,
        EntryFormat::PerTable { .. }
    ));
    let keys: Vec<_> = files(&f.storage, Some(site))
        .await
        .unwrap()
        .into_iter()
        .map(|(object, _, _)| object)
        .collect();
    assert_eq!(keys.len(), 1 + this.files.len());
    let recorded = keys.iter().filter(|o| o.recorded.is_some()).count();
    assert_eq!(
        recorded,
        this.files.len(),
        "the new entry records its digests"
    );
    let paths = local_copies(&f.storage, &keys, &f.dir.path().join("cache"), None)
        .await
        .unwrap();
    let mut counted = this.counts.clone();
    counted.retain(|_, n| *n > 0);
    assert_eq!(counted, next);
    assert_eq!(
        in_view(&paths),
        sum(&archived, &next),
        "the view shows the wide file's rows and the per-table files' (the imported rows again)"
    );
}

fn sum(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_default() += v;
    }
    out.retain(|_, v| *v > 0);
    out
}
