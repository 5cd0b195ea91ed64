//! Every import of a downloaded snapshot (a restore, `backup verify --deep`) goes through
//! [`import_snapshot`]: its SQL is checked against what EXPORT writes ([`crate::snapshot_sql`]), then it is
//! imported on a connection [`fence`]d to the snapshot's folder, so that what the check did not foresee
//! still cannot reach a file outside it, attach a database, load an extension or change a setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use duckdb::Connection;
use hitkeep_data::{DuckDbLimits, STORAGE_VERSION, quote_literal};

use crate::error::{Error, Result};
use crate::manifest::Database;
use crate::snapshot_sql::ImportPlan;
use crate::swap::Scratch;

mod build;

/// The name the new database is attached under.
const IMPORTED: &str = "restored";

/// One import: a downloaded snapshot into a new database file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Import<'a> {
    /// The downloaded snapshot (schema.sql, load.sql and the table files).
    pub(crate) snapshot_dir: &'a Path,
    /// The new database file (created at a storage version DuckDB 1.5 reads).
    pub(crate) db: &'a Path,
    /// DuckDB's limits, set before the fence locks them.
    pub(crate) limits: DuckDbLimits,
    /// Which database, for errors.
    pub(crate) database: Database,
    /// The snapshot's folder (`shared/2026-…`), for errors.
    pub(crate) folder: &'a str,
    /// What to tell people when DuckDB runs out of memory.
    pub(crate) memory_hint: &'static str,
}

/// Checks the snapshot's SQL, imports it on a fenced connection, `CHECKPOINT`s and closes the new
/// database; returns the row count of every table.
pub(crate) fn import_snapshot(import: &Import<'_>) -> Result<BTreeMap<String, u64>> {
    crate::snapshot_sql::check_export(import.snapshot_dir, import.folder)?;
    fenced_import(import)
}

/// The import itself, without the statement check: the fence alone stands between the snapshot's SQL
/// and the machine (tests call it so). Not `IMPORT DATABASE` but the same statements rearranged
/// ([`crate::snapshot_sql::ImportPlan`]): tables, then their data, then keys and indexes.
pub(crate) fn fenced_import(import: &Import<'_>) -> Result<BTreeMap<String, u64>> {
    let database = import.database;
    let db = utf8(import.db)?;
    // Absolute, so that the fence and the paths the load reads are the same text.
    let snapshot_dir =
        std::path::absolute(import.snapshot_dir).map_err(|e| Error::io(import.snapshot_dir, e))?;
    let plan = crate::snapshot_sql::import_plan(&snapshot_dir)?;
    // Spills go beside the new file (on the data disk), not into an in-memory database's default,
    // `.tmp` under whatever directory the command was started from. Declared before the connection,
    // so removed after DuckDB has closed.
    let spill = Scratch(PathBuf::from(format!("{db}.spill")));
    let conn =
        Connection::open_in_memory().map_err(|e| Error::duckdb(database, "opening DuckDB", e))?;
    import
        .limits
        .apply(&conn)
        .map_err(|e| Error::duckdb(database, "setting DuckDB's limits", e))?;
    conn.execute_batch(&format!(
        "SET temp_directory = {}",
        quote_literal(&spill.0.display().to_string())
    ))
    .map_err(|e| Error::duckdb(database, "setting DuckDB's spill directory", e))?;
    if plan.load.iter().any(|l| l.files.len() > 1) {
        // An incremental snapshot's tables come in many files, and read in order DuckDB loads them
        // at half the speed of one file (4M hits, 25 files of `hits`: 8.3–13.6 s against 3.7–4.3 s;
        // without the order 4.0 s). The rows' order is not data: every row arrives, each DuckDB
        // thread appends whole row groups as it reads them, so rows stay in runs of about a row
        // group (HitKeep's time-range scans keep their zone maps); only the order of the runs may
        // change. The next incremental cycle pays for it: its keys follow the write order, so it
        // exports once what it would otherwise reuse.
        conn.execute_batch("SET preserve_insertion_order = false")
            .map_err(|e| Error::duckdb(database, "setting DuckDB's insertion order", e))?;
    }
    // Attached before the fence: DuckDB opens the database's own files (the file, its WAL and
    // checkpoint files, spills) itself, while the fence governs what SQL reaches.
    conn.execute_batch(&format!(
        "ATTACH {} AS {IMPORTED} (STORAGE_VERSION '{STORAGE_VERSION}'); USE {IMPORTED};",
        quote_literal(db)
    ))
    .map_err(|e| Error::duckdb(database, "creating the new database", e))?;
    // The builders' connections choose the new database before the fence locks the settings; the
    // fence is the instance's, so it holds for them too.
    let builders = builders(&conn, import.limits, plan.builds.len())
        .map_err(|e| Error::duckdb(database, "opening connections to build indexes", e))?;
    fence(&conn, &[&snapshot_dir]).map_err(|e| Error::duckdb(database, "fencing the import", e))?;
    let started = std::time::Instant::now();
    load(&conn, &plan, import)?;
    let loaded = started.elapsed();
    build::build_all(builders, &plan, import)?;
    let built = started.elapsed();
    conn.execute_batch("CHECKPOINT;")
        .map_err(|e| Error::duckdb_or_memory(database, "CHECKPOINT", import.memory_hint, e))?;
    // Where a restore's time goes, for `HITKEEP_LOG_LEVEL=debug` and the bench's analysis.
    tracing::debug!(
        %database,
        load_s = loaded.as_secs_f64(),
        build_s = (built - loaded).as_secs_f64(),
        checkpoint_s = (started.elapsed() - built).as_secs_f64(),
        "imported"
    );
    let tables = row_counts(&conn).map_err(|e| Error::duckdb(database, "counting rows", e))?;
    conn.execute_batch(&format!("DETACH {IMPORTED};"))
        .map_err(|e| Error::duckdb(database, "closing the new database", e))?;
    drop(conn);
    Ok(tables)
}

/// Creates the tables (keys deferred, no indexes) and loads them, in the snapshot's order.
fn load(conn: &Connection, plan: &ImportPlan, import: &Import<'_>) -> Result<()> {
    let database = import.database;
    let create: String = plan.create.iter().map(|s| format!("{s};\n")).collect();
    conn.execute_batch(&create)
        .map_err(|e| Error::duckdb(database, "creating the snapshot's tables", e))?;
    for load in &plan.load {
        conn.execute_batch(&load.sql).map_err(|e| {
            Error::duckdb_or_memory(
                database,
                "loading the snapshot's tables",
                import.memory_hint,
                e,
            )
        })?;
    }
    Ok(())
}

/// One connection per index build that may run at once: as many as DuckDB has threads (each build
/// is partly single-threaded, so two keep two cores busier than one), no more than there are tables.
fn builders(
    conn: &Connection,
    limits: DuckDbLimits,
    tables: usize,
) -> duckdb::Result<Vec<Connection>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = limits.threads.map_or(cores, |t| t as usize);
    (0..threads.min(tables).max(1))
        .map(|_| {
            let c = conn.try_clone()?;
            c.execute_batch(&format!("USE {IMPORTED};"))?;
            Ok(c)
        })
        .collect()
}

/// Opens a database restored from a snapshot read-only, fenced (reaching no file), to look at it.
pub(crate) fn open_fenced(path: &Path) -> Result<Connection> {
    let database = Database::Shared;
    let text = utf8(path)?;
    let conn =
        Connection::open_in_memory().map_err(|e| Error::duckdb(database, "opening DuckDB", e))?;
    conn.execute_batch(&format!(
        "ATTACH {} AS {IMPORTED} (READ_ONLY); USE {IMPORTED};",
        quote_literal(text)
    ))
    .map_err(|e| Error::duckdb(database, "opening the restored database", e))?;
    fence(&conn, &[]).map_err(|e| Error::duckdb(database, "fencing the restored database", e))?;
    Ok(conn)
}

/// Locks `conn` down to reading and writing files under `allowed` (through SQL): no other file, no
/// `ATTACH` outside, no extension installed or loaded (those linked in are already loaded), and no
/// setting changed afterwards. Attach databases, set limits and choose the database in use before:
/// once `lock_configuration` is on, nothing can change. DuckDB refuses what crosses it with "Permission
/// Error: … file system operations are disabled by configuration".
pub(crate) fn fence(conn: &Connection, allowed: &[&Path]) -> duckdb::Result<()> {
    let dirs: Vec<String> = allowed
        .iter()
        .map(|d| {
            let mut dir = d.display().to_string();
            if !dir.ends_with('/') {
                dir.push('/'); // a prefix: `/a/b/` must not allow `/a/bc`
            }
            quote_literal(&dir)
        })
        .collect();
    // allowed_directories first: it cannot be changed once external access is off.
    conn.execute_batch(&format!(
        "SET allowed_directories = [{}];
         SET enable_external_access = false;
         SET autoload_known_extensions = false;
         SET autoinstall_known_extensions = false;
         SET lock_configuration = true;",
        dirs.join(", ")
    ))
}

/// The row count of every table of the new database, keyed as manifests key them (`table`, or
/// `schema.table` outside `main`). Asked from the in-memory database, with the tables' full names:
/// inside the restored one, `count(*)` would call a snapshot's macro named `count_star`, and the
/// snapshot's views and macros are never run by a restore. Only base tables are counted.
fn row_counts(conn: &Connection) -> duckdb::Result<BTreeMap<String, u64>> {
    conn.execute_batch("USE memory;")?;
    let mut stmt = conn.prepare(
        "SELECT schema_name, table_name FROM duckdb_tables() \
         WHERE database_name = ? AND NOT internal AND NOT temporary \
         ORDER BY schema_name, table_name",
    )?;
    let tables: Vec<(String, String)> = stmt
        .query_map([IMPORTED], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<duckdb::Result<_>>()?;
    hitkeep_data::count_rows(conn, Some(IMPORTED), tables)
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::io(path, std::io::Error::other("path is not valid UTF-8")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const NO_HINT: &str = "";

    /// A real export of a small database with a view and a macro, into `dir/snapshot`.
    fn export(dir: &Path) -> PathBuf {
        let snapshot = dir.join("snapshot");
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name VARCHAR);
             INSERT INTO t SELECT range, 'n' || range FROM range(1000);
             CREATE MACRO count_star() AS 42;
             CREATE VIEW v AS SELECT count(*) AS n FROM t;
             EXPORT DATABASE {} (FORMAT PARQUET);",
            quote_literal(snapshot.to_str().unwrap())
        ))
        .unwrap();
        snapshot
    }

    pub(crate) fn import<'a>(snapshot: &'a Path, db: &'a Path, limits: DuckDbLimits) -> Import<'a> {
        Import {
            snapshot_dir: snapshot,
            db,
            limits,
            database: Database::Shared,
            folder: "shared/2026-01-01T000000Z",
            memory_hint: NO_HINT,
        }
    }

    /// What DuckDB's catalog says of a database's tables: constraints, indexes, columns. A key
    /// added after the load is listed after its table's NOT NULLs instead of before them, so
    /// constraints are compared as a set per table, without DuckDB's running index.
    pub(crate) fn catalog_of(db: &Path) -> Vec<String> {
        let conn = Connection::open(db).unwrap();
        let mut out = Vec::new();
        for sql in [
            "SELECT table_name, constraint_type, constraint_text, constraint_column_names::VARCHAR, \
             constraint_name, expression FROM duckdb_constraints() ORDER BY ALL",
            "SELECT table_name, index_name, is_unique::VARCHAR, is_primary::VARCHAR, expressions, \
             sql FROM duckdb_indexes() ORDER BY ALL",
            "SELECT table_name, column_name, column_index::VARCHAR, is_nullable::VARCHAR, \
             column_default, data_type FROM duckdb_columns() WHERE NOT internal ORDER BY ALL",
        ] {
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt
                .query_map([], |r| {
                    (0..6)
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect::<duckdb::Result<Vec<_>>>()
                })
                .unwrap();
            out.extend(rows.map(|r| format!("{:?}", r.unwrap())));
        }
        out
    }

    /// The same snapshot through a plain `IMPORT DATABASE`: what a restore must equal.
    pub(crate) fn plain_import(snapshot: &Path, db: &Path) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "ATTACH {} AS r (STORAGE_VERSION '{STORAGE_VERSION}'); USE r; IMPORT DATABASE {}; CHECKPOINT;",
            quote_literal(db.to_str().unwrap()),
            quote_literal(snapshot.to_str().unwrap())
        ))
        .unwrap();
    }

    #[test]
    fn keys_built_after_the_load_equal_a_plain_import_in_both_layouts() {
        use hitkeep_data::demo::{DemoOptions, generate};
        use hitkeep_data::{DataLayout, OpenMode, TenantLayout, open_database};
        for tenants in [TenantLayout::PreSplit, TenantLayout::Split] {
            let dir = tempfile::tempdir().unwrap();
            let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
            let demo =
                generate(&layout, &DemoOptions::new(20_000, 1).with_layout(tenants)).unwrap();
            // The shared database and the default tenant's analytics (one file before the split).
            let mut sources = vec![layout.db_path.clone()];
            if tenants == TenantLayout::Split {
                sources.push(layout.tenant_db(demo.default_tenant));
            }
            for (i, source) in sources.iter().enumerate() {
                let snapshot = dir.path().join(format!("snapshot{i}"));
                open_database(source, OpenMode::Existing)
                    .unwrap()
                    .execute_batch(&format!(
                        "EXPORT DATABASE {} (FORMAT PARQUET)",
                        quote_literal(snapshot.to_str().unwrap())
                    ))
                    .unwrap();
                let plan = crate::snapshot_sql::import_plan(&snapshot).unwrap();
                assert!(
                    plan.builds.iter().any(|b| b.key.is_some()),
                    "{tenants:?} {i}: some key is deferred"
                );
                let (ours, plain) = (dir.path().join("ours.db"), dir.path().join("plain.db"));
                let limits = DuckDbLimits {
                    memory_limit: None,
                    threads: Some(2),
                };
                let counts = import_snapshot(&import(&snapshot, &ours, limits)).unwrap();
                plain_import(&snapshot, &plain);
                assert_eq!(catalog_of(&ours), catalog_of(&plain), "{tenants:?} {i}");
                let conn = Connection::open(&plain).unwrap();
                let want = hitkeep_data::count_rows(
                    &conn,
                    None,
                    hitkeep_data::user_tables(&conn).unwrap(),
                )
                .unwrap();
                assert_eq!(counts, want, "{tenants:?} {i}");
                std::fs::remove_file(&ours).unwrap();
                std::fs::remove_file(&plain).unwrap();
            }
        }
    }

    /// Rows a key forbids fail the restore as they fail `IMPORT`, naming the table, and as the
    /// snapshot's fault (choose another), not the machine's.
    #[test]
    fn a_duplicate_key_fails_the_restore_naming_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("snapshot");
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE big (id INTEGER, v VARCHAR);
             INSERT INTO big SELECT range % 999, 'x' FROM range(1000);
             CREATE INDEX big_v ON big (v);
             EXPORT DATABASE {} (FORMAT PARQUET);",
            quote_literal(snapshot.to_str().unwrap())
        ))
        .unwrap();
        // The snapshot says `id` is a key; its rows say otherwise (one id twice).
        let schema = snapshot.join("schema.sql");
        let sql = std::fs::read_to_string(&schema).unwrap();
        std::fs::write(&schema, sql.replace("id INTEGER", "id INTEGER PRIMARY KEY")).unwrap();

        let db = dir.path().join("new.db");
        let e = import_snapshot(&import(&snapshot, &db, DuckDbLimits::default())).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("building the key and indexes of table big")
                && text.contains("Constraint Error"),
            "{text}"
        );
        assert_eq!(e.kind(), crate::ErrorKind::Integrity);
        assert!(e.hint().is_some_and(|h| h.contains("another snapshot")));
        let plain = Connection::open_in_memory()
            .unwrap()
            .execute_batch(&format!(
                "IMPORT DATABASE {}",
                quote_literal(snapshot.to_str().unwrap())
            ))
            .unwrap_err();
        assert!(plain.to_string().contains("Constraint Error"), "{plain}");
    }

    #[test]
    fn the_fence_alone_refuses_a_write_outside_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = export(dir.path());
        let pwned = dir.path().join("pwned");
        let schema = snapshot.join("schema.sql");
        let mut sql = std::fs::read_to_string(&schema).unwrap();
        sql.push_str(&format!(
            "COPY (SELECT 42) TO {};\n",
            quote_literal(pwned.to_str().unwrap())
        ));
        std::fs::write(&schema, sql).unwrap();
        let db = dir.path().join("new.db");

        // The check refuses it first...
        let e = import_snapshot(&import(&snapshot, &db, DuckDbLimits::default())).unwrap_err();
        assert!(matches!(e, Error::ForeignStatement { .. }), "{e}");
        assert!(!db.exists(), "refused before the new database is created");
        // ...and without the check, DuckDB itself refuses it inside the fence.
        let e = fenced_import(&import(&snapshot, &db, DuckDbLimits::default())).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("Permission Error") && text.contains("disabled by configuration"),
            "{text}"
        );
        assert!(!pwned.exists(), "nothing written outside the snapshot");
    }

    #[test]
    fn the_fence_refuses_attach_extensions_and_settings() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        let conn = Connection::open_in_memory().unwrap();
        fence(&conn, &[&allowed]).unwrap();
        let outside = dir.path().join("outside.db");
        for sql in [
            format!("ATTACH {} AS o", quote_literal(outside.to_str().unwrap())),
            "INSTALL httpfs".to_owned(),
            "LOAD httpfs".to_owned(),
            "SET enable_external_access = true".to_owned(),
            "SET allowed_directories = ['/']".to_owned(),
            "SET autoinstall_known_extensions = true".to_owned(),
            "SELECT * FROM read_text('/etc/hostname')".to_owned(),
            "COPY (SELECT 1) TO '/tmp/../tmp/hitkeep-fence-test'".to_owned(),
            format!(
                "COPY (SELECT 1) TO {}",
                quote_literal(&format!("{}/../escaped", allowed.display()))
            ),
        ] {
            let e = conn.execute_batch(&sql).expect_err(&sql).to_string();
            assert!(
                e.contains("disabled") || e.contains("locked") || e.contains("Permission"),
                "{sql}: {e}"
            );
        }
        assert!(!outside.exists() && !dir.path().join("escaped").exists());
        // Inside the allowed folder, files work.
        let inside = allowed.join("inside.csv");
        conn.execute_batch(&format!(
            "COPY (SELECT 1) TO {}",
            quote_literal(inside.to_str().unwrap())
        ))
        .unwrap();
        assert!(inside.exists());
    }

    #[test]
    fn a_fenced_import_restores_views_and_macros_without_running_them() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = export(dir.path());
        let db = dir.path().join("new.db");
        let tables = import_snapshot(&import(&snapshot, &db, DuckDbLimits::default())).unwrap();
        // The snapshot's `count_star` macro would make every count 42 if restore's counting used it.
        assert_eq!(tables, BTreeMap::from([("t".to_owned(), 1000)]));
        let conn = open_fenced(&db).unwrap();
        // From the in-memory database: inside the restored one, `count(*)` is the snapshot's macro.
        conn.execute_batch("USE memory").unwrap();
        let (view, macros): (String, i64) = conn
            .query_row(
                "SELECT (SELECT sql FROM duckdb_views() WHERE database_name = 'restored' AND view_name = 'v'),
                        (SELECT count(*) FROM duckdb_functions() WHERE database_name = 'restored' AND function_name = 'count_star')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(view.contains("count"), "{view}");
        assert_eq!(macros, 1);
        let inside: i64 = conn
            .query_row("SELECT count(*) FROM restored.main.t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(inside, 1000);
        conn.execute_batch("USE restored").unwrap();
        let shadowed: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            shadowed, 42,
            "why restore counts from the in-memory database"
        );
        assert!(!PathBuf::from(format!("{}.wal", db.display())).exists());
    }

    /// A table in several files loads through DuckDB's own `read_parquet`, never a snapshot's macro of
    /// that name (created before the load, in the database the load runs in).
    #[test]
    fn a_snapshot_macro_named_like_the_reader_is_not_run_by_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = export(dir.path());
        let conn = Connection::open_in_memory().unwrap();
        let file = |name: &str| quote_literal(snapshot.join(name).to_str().unwrap());
        conn.execute_batch(&format!(
            "COPY (SELECT * FROM {t} WHERE id < 500) TO {a} (FORMAT PARQUET);
             COPY (SELECT * FROM {t} WHERE id >= 500) TO {b} (FORMAT PARQUET);",
            t = file("t.parquet"),
            a = file("t.1.parquet"),
            b = file("t.2.parquet"),
        ))
        .unwrap();
        std::fs::remove_file(snapshot.join("t.parquet")).unwrap();
        std::fs::write(
            snapshot.join("load.sql"),
            "COPY t FROM 't.1.parquet' (FORMAT 'parquet');\nCOPY t FROM 't.2.parquet' (FORMAT 'parquet');\n",
        )
        .unwrap();
        let mut schema = std::fs::read_to_string(snapshot.join("schema.sql")).unwrap();
        schema.push_str(
            "CREATE MACRO read_parquet(f, hive_partitioning := false) AS TABLE SELECT 42 AS id, 'macro' AS name;\n",
        );
        std::fs::write(snapshot.join("schema.sql"), schema).unwrap();
        let plan = crate::snapshot_sql::import_plan(&snapshot).unwrap();
        assert_eq!(plan.load.len(), 1, "the two files load in one statement");

        let db = dir.path().join("new.db");
        let tables = import_snapshot(&import(&snapshot, &db, DuckDbLimits::default())).unwrap();
        assert_eq!(tables, BTreeMap::from([("t".to_owned(), 1000)]));
        let conn = open_fenced(&db).unwrap();
        conn.execute_batch("USE memory").unwrap(); // the snapshot's `count_star` shadows `count(*)`
        let from_macro: i64 = conn
            .query_row(
                "SELECT count(*) FILTER (WHERE name = 'macro') FROM restored.main.t",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(from_macro, 0);
    }

    /// Spilling still works inside the fence: DuckDB writes its spill files itself, not through SQL.
    #[test]
    fn a_fenced_connection_spills_under_a_small_memory_limit() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        let conn = Connection::open_in_memory().unwrap();
        DuckDbLimits {
            memory_limit: Some(64 * 1024 * 1024),
            threads: Some(2),
        }
        .apply(&conn)
        .unwrap();
        conn.execute_batch(&format!(
            "SET temp_directory = {}; ATTACH {} AS {IMPORTED}; USE {IMPORTED};",
            quote_literal(spill.to_str().unwrap()),
            quote_literal(dir.path().join("db").to_str().unwrap())
        ))
        .unwrap();
        fence(&conn, &[&dir.path().join("staging")]).unwrap();
        conn.execute_batch(
            "CREATE TABLE s AS SELECT range AS a, md5(range::VARCHAR) AS b FROM range(3000000) ORDER BY b;",
        )
        .unwrap();
        let spilled: i64 = conn
            .query_row("SELECT count(*) FROM duckdb_temporary_files()", [], |r| {
                r.get(0)
            })
            .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM s", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3_000_000);
        assert!(
            spilled > 0 || spill.exists(),
            "the sort spilled to {}",
            spill.display()
        );
    }
}
