//! A snapshot is data: a `schema.sql` or `load.sql` changed to run code is refused before anything is
//! imported, by a restore and by `verify --deep`, whether the snapshot has no manifest (HitKeep Go's) or
//! a manifest recomputed to match (its digests are not signed).

use std::path::Path;

use hitkeep_backup::{
    Catalog, Database, Error, RestorePlan, RestoreSelection, SnapshotId, verify_snapshot,
};
use hitkeep_data::{OpenMode, open_database};
use hitkeep_storage::{ListMode, Sha256Digest};

use crate::{Fixture, fingerprint};

on_local_and_s3!(
    code_in_a_legacy_snapshots_schema_is_refused_and_nothing_is_written,
    code_under_a_consistent_manifest_is_refused_by_restore_and_deep_verify,
);

/// A file of the cycle's shared snapshot, replaced; with `manifest`, its entry in `manifest.json`
/// recomputed (size and SHA-256) so that only the statement check can stop it.
async fn replace(f: &Fixture, id: SnapshotId, name: &str, bytes: Vec<u8>, manifest: bool) {
    let folder = format!("shared/{id}");
    if manifest {
        let key = format!("{folder}/manifest.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&f.storage.read(&key).await.unwrap()).unwrap();
        let entry = json["files"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|e| e["name"] == name)
            .unwrap();
        entry["size"] = bytes.len().into();
        entry["sha256"] = Sha256Digest::of(&bytes).to_string().into();
        f.storage
            .write(&key, serde_json::to_vec_pretty(&json).unwrap())
            .await
            .unwrap();
    }
    f.storage
        .write(&format!("{folder}/{name}"), bytes)
        .await
        .unwrap();
}

/// `shared/{id}/schema.sql` with `sql` appended.
async fn append_to_schema(f: &Fixture, id: SnapshotId, sql: &str, manifest: bool) {
    let key = format!("shared/{id}/schema.sql");
    let mut schema = f.storage.read(&key).await.unwrap().to_vec();
    schema.extend_from_slice(sql.as_bytes());
    replace(f, id, "schema.sql", schema, manifest).await;
}

/// Every manifest of the cycle removed: a snapshot as HitKeep Go writes them.
async fn make_legacy(f: &Fixture) {
    for entry in f.storage.list("", ListMode::Recursive).await.unwrap() {
        if entry.key.ends_with("/manifest.json") {
            f.storage.delete(&entry.key).await.unwrap();
        }
    }
}

/// Prepares a restore of cycle `id` (the shared database alone with `shared_only`); the refusal.
async fn refused_restore(f: &Fixture, id: SnapshotId, shared_only: bool) -> Error {
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let plan = RestorePlan::new(
        &catalog,
        Some(id),
        &f.layout,
        &RestoreSelection::new(shared_only, Vec::new()),
    )
    .unwrap();
    let (database, e) = plan
        .prepare_all(&f.storage, SnapshotId::now(), 2)
        .await
        .map(|_| "prepared")
        .unwrap_err();
    assert_eq!(database, Database::Shared, "{e}");
    e
}

/// The target's bytes, and that nothing of a restore is left beside it.
fn assert_untouched(f: &Fixture, before: &[u8]) {
    assert_eq!(std::fs::read(&f.layout.db_path).unwrap(), before);
    let left: Vec<_> = std::fs::read_dir(f.layout.db_path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn quoted(path: &Path) -> String {
    hitkeep_data::quote_literal(path.to_str().unwrap())
}

fn assert_refusal(e: &Error, file: &str, needle: &str) {
    assert!(
        matches!(e, Error::ForeignStatement { file: f, statement, .. } if *f == file && statement.contains(needle)),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("holds a statement EXPORT DATABASE never writes") && text.contains(needle),
        "{text}"
    );
    assert_eq!(e.kind(), hitkeep_backup::ErrorKind::Foreign);
    assert!(
        e.hint()
            .is_some_and(|h| h.starts_with("the snapshot was changed after it was written")),
        "{:?}",
        e.hint()
    );
}

async fn code_in_a_legacy_snapshots_schema_is_refused_and_nothing_is_written(f: Fixture) {
    let id = f.cycle().await.id;
    make_legacy(&f).await;
    let pwned = f.dir.path().join("pwned");
    append_to_schema(
        &f,
        id,
        &format!("COPY (SELECT 42) TO {};\n", quoted(&pwned)),
        false,
    )
    .await;
    let before = std::fs::read(&f.layout.db_path).unwrap();

    let e = refused_restore(&f, id, false).await;
    assert_refusal(&e, "schema.sql", "COPY (SELECT 42) TO");
    assert!(
        e.to_string()
            .contains(&format!("snapshot shared/{id}: schema.sql")),
        "{e}"
    );
    assert!(!pwned.exists(), "the statement never ran");
    assert_untouched(&f, &before);
}

async fn code_under_a_consistent_manifest_is_refused_by_restore_and_deep_verify(f: Fixture) {
    let id = f.cycle().await.id;
    let other = f.dir.path().join("other.db");
    append_to_schema(
        &f,
        id,
        &format!(
            "ATTACH {} AS other;\nCREATE TABLE other.t AS SELECT 1 AS x;\n",
            quoted(&other)
        ),
        true,
    )
    .await;
    let before = std::fs::read(&f.layout.db_path).unwrap();
    let catalog = Catalog::load(&f.storage).await.unwrap();
    let scratch = f.dir.path().join("scratch");
    let shallow = verify_snapshot(&f.storage, &catalog, id, false, &scratch, None)
        .await
        .unwrap();
    assert!(
        shallow.is_ok(),
        "the digests match, so only the statement check stops it: {shallow:?}"
    );

    let e = refused_restore(&f, id, false).await;
    assert_refusal(&e, "schema.sql", "ATTACH");
    assert!(!other.exists(), "nothing attached");
    assert_untouched(&f, &before);

    let deep = verify_snapshot(&f.storage, &catalog, id, true, &scratch, None)
        .await
        .unwrap();
    assert!(!deep.is_ok());
    let problems = &deep.databases[0].problems;
    assert!(
        problems.len() == 1
            && problems[0].contains("schema.sql holds a statement EXPORT DATABASE never writes")
            && problems[0].contains("ATTACH"),
        "{problems:?}"
    );
    assert!(
        deep.databases[1..].iter().all(|d| d.problems.is_empty()),
        "the tenants are intact: {deep:?}"
    );
    assert!(!other.exists(), "nothing attached");
}

/// Each kind of statement that would run code, one at a time, under a consistent manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_install_load_pragma_set_and_call_are_refused() {
    let f = Fixture::new(false).await;
    let id = f.cycle().await.id;
    let original = f
        .storage
        .read(&format!("shared/{id}/schema.sql"))
        .await
        .unwrap()
        .to_vec();
    let before = std::fs::read(&f.layout.db_path).unwrap();
    let outside = f.dir.path().join("outside.db");
    for (sql, needle) in [
        (format!("ATTACH {} AS o;", quoted(&outside)), "ATTACH"),
        ("INSTALL httpfs;".to_owned(), "INSTALL httpfs"),
        ("LOAD httpfs;".to_owned(), "LOAD httpfs"),
        ("PRAGMA enable_profiling;".to_owned(), "PRAGMA"),
        (
            "SET enable_external_access = true;".to_owned(),
            "SET enable_external_access",
        ),
        ("CALL checkpoint();".to_owned(), "CALL checkpoint()"),
        (
            "create or replace table hits(x integer);".to_owned(),
            "create or replace",
        ),
        (
            "CREATE TABLE t2 AS SELECT * FROM read_text('/etc/hostname');".to_owned(),
            "CREATE TABLE t2 AS",
        ),
        (
            "CREATE VIEW tenants_copy AS SELECT 1;\nCREATE VIEW Tenants AS SELECT 1;".to_owned(),
            "CREATE VIEW Tenants",
        ),
    ] {
        let mut schema = original.clone();
        schema.extend_from_slice(sql.as_bytes());
        replace(&f, id, "schema.sql", schema, true).await;
        let e = refused_restore(&f, id, true).await;
        assert_refusal(&e, "schema.sql", needle);
    }
    assert!(!outside.exists());
    assert_untouched(&f, &before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_sql_that_reads_outside_the_snapshot_is_refused() {
    let f = Fixture::new(false).await;
    let id = f.cycle().await.id;
    let load = f
        .storage
        .read(&format!("shared/{id}/load.sql"))
        .await
        .unwrap();
    let load = String::from_utf8(load.to_vec()).unwrap();
    let before = std::fs::read(&f.layout.db_path).unwrap();
    let secret = f.dir.path().join("secret.parquet");
    let from = "/hits.parquet'";
    assert!(load.contains(from), "{load}");
    for to in [
        "../../secret.parquet'".to_owned(),
        format!("{}'", &secret.display().to_string()[1..]),
        "hits.parquet/..'".to_owned(),
    ] {
        // The whole path: `'<staging>/…/hits.parquet'` becomes `'<to>`.
        let start = load.find(from).unwrap();
        let open = load[..start].rfind('\'').unwrap();
        let changed = format!("{}'{}{}", &load[..open], to, &load[start + from.len()..]);
        replace(&f, id, "load.sql", changed.into_bytes(), true).await;
        let e = refused_restore(&f, id, true).await;
        assert_refusal(&e, "load.sql", "COPY hits FROM");
    }
    assert_untouched(&f, &before);
}

/// Views and macros are data too: a real export of them restores, and the restore runs neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_and_a_macro_restore_and_are_not_run() {
    let f = Fixture::new(false).await;
    {
        let conn = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
        conn.execute_batch(
            "CREATE MACRO site_label(d) AS upper(d);
             CREATE MACRO recent_sites(n) AS TABLE SELECT * FROM sites ORDER BY created_at DESC LIMIT n;
             CREATE VIEW site_labels AS SELECT site_label(domain) AS label FROM sites;
             -- Fails whenever it is run: a restore that selected from it would fail.
             CREATE VIEW boom AS SELECT error('a restore ran this view') AS x FROM sites;",
        )
        .unwrap();
    }
    let before = fingerprint(&f.layout.db_path);
    let id = f.cycle().await.id;
    let schema = f
        .storage
        .read(&format!("shared/{id}/schema.sql"))
        .await
        .unwrap();
    let schema = String::from_utf8(schema.to_vec()).unwrap();
    assert!(
        schema.contains("CREATE VIEW site_labels") && schema.contains("CREATE MACRO recent_sites"),
        "{schema}"
    );

    let catalog = Catalog::load(&f.storage).await.unwrap();
    let plan = RestorePlan::new(
        &catalog,
        Some(id),
        &f.layout,
        &RestoreSelection::new(false, Vec::new()),
    )
    .unwrap();
    crate::prepare_and_commit(&f, &plan).await;
    assert_eq!(fingerprint(&f.layout.db_path), before);
    let conn = open_database(&f.layout.db_path, OpenMode::Existing).unwrap();
    let (views, macros, labels): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM duckdb_views() WHERE NOT internal AND view_name IN ('site_labels', 'boom')),
                    (SELECT count(*) FROM duckdb_functions() WHERE NOT internal AND function_name IN ('site_label', 'recent_sites')),
                    (SELECT count(*) FROM site_labels)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((views, macros), (2, 2));
    assert_eq!(labels, before["sites"].0, "the restored view works");
    let boom = conn.query_row("SELECT x FROM boom", [], |r| r.get::<_, String>(0));
    assert!(boom.is_err(), "the view fails when run, as it did before");
}
