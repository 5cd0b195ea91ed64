//! One database to Parquet files in a local directory, with row counts from the same transaction.
//! Blocking: DuckDB calls run on a blocking thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use duckdb::Connection;
use hitkeep_data::{quote_literal, row_counts};

use crate::error::{Error, Result};
use crate::manifest::Database;

/// What an export produced.
#[derive(Debug)]
pub(crate) struct Export {
    /// Row counts by table (`name`, or `schema.name` outside `main`).
    pub tables: BTreeMap<String, u64>,
    /// Every file written, in name order.
    pub files: Vec<PathBuf>,
    /// DuckDB's version.
    pub duckdb_version: String,
}

const EXPORT_MEMORY_HINT: &str = "give backups more memory with HITKEEP_DUCKDB_MEMORY_LIMIT, or back up fewer databases at once (HITKEEP_BACKUP_CONCURRENCY=1 gives each the whole limit)";

/// `CHECKPOINT`, then in one transaction: count every table and `EXPORT DATABASE` (Parquet, zstd) into
/// `dir`. Counting inside the transaction makes the counts describe exactly the exported rows.
pub(crate) fn export_database(conn: &Connection, database: Database, dir: &Path) -> Result<Export> {
    // A failed checkpoint (another connection mid-transaction) only means a bigger WAL; the export is
    // still consistent, so it warns, as HitKeep does.
    if let Err(e) = conn.execute_batch("CHECKPOINT") {
        tracing::warn!(%database, error = %e, "CHECKPOINT failed; exporting anyway");
    }
    let duckdb_version: String = conn
        .query_row("SELECT version()", [], |r| r.get(0))
        .map_err(|e| Error::duckdb(database, "reading the version", e))?;
    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| Error::duckdb(database, "starting the export transaction", e))?;
    let outcome = with_ordered_writes(conn, database, || count_and_export(conn, database, dir));
    let end = if outcome.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    if let Err(e) = conn.execute_batch(end) {
        tracing::warn!(%database, error = %e, "could not end the export transaction");
    }
    let tables = outcome?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    files.retain(|p| p.is_file());
    files.sort();
    Ok(Export {
        tables,
        files,
        duckdb_version,
    })
}

/// Runs `export` with DuckDB writing each file from start to end. DuckDB 2.0 hands Parquet writes
/// to asynchronous I/O threads that can finish out of order, so a file still being written can read
/// as zeros below its end; backing up 16M hits, one backup in four or five read 3 KB to 2.4 MB of
/// zeros that way and, caught by the check at rest, sent the whole file again. Uploads follow files
/// as they grow (`follow.rs`), so they need the bytes in order. `async_threads = 0` makes the writes
/// synchronous, measured no slower for an export; the caller's setting (a server's, when it backs
/// itself up) is put back afterwards.
fn with_ordered_writes<T>(
    conn: &Connection,
    database: Database,
    export: impl FnOnce() -> Result<T>,
) -> Result<T> {
    // A DuckDB without the setting has no asynchronous writes to turn off.
    let Ok(previous) = conn.query_row("SELECT current_setting('async_threads')", [], |r| {
        r.get::<_, i64>(0)
    }) else {
        return export();
    };
    conn.execute_batch("SET async_threads = 0")
        .map_err(|e| Error::duckdb(database, "setting async_threads", e))?;
    let outcome = export();
    if let Err(e) = conn.execute_batch(&format!("SET async_threads = {previous}")) {
        tracing::warn!(%database, error = %e, "could not put async_threads back");
    }
    outcome
}

fn count_and_export(
    conn: &Connection,
    database: Database,
    dir: &Path,
) -> Result<BTreeMap<String, u64>> {
    let tables = row_counts(conn).map_err(|e| Error::duckdb(database, "counting rows", e))?;
    let target = dir.to_str().ok_or_else(|| {
        Error::io(
            dir,
            std::io::Error::other("the staging path is not valid UTF-8"),
        )
    })?;
    conn.execute_batch(&format!(
        "EXPORT DATABASE {} (FORMAT PARQUET, COMPRESSION ZSTD)",
        quote_literal(target)
    ))
    .map_err(|e| Error::duckdb_or_memory(database, "EXPORT DATABASE", EXPORT_MEMORY_HINT, e))?;
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn async_threads(conn: &Connection) -> i64 {
        conn.query_row("SELECT current_setting('async_threads')", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn writes_are_in_order_during_the_export_and_the_callers_setting_comes_back() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("SET async_threads = 3").unwrap();
        let during = with_ordered_writes(&conn, Database::Shared, || Ok(async_threads(&conn)));
        assert_eq!(during.unwrap(), 0, "no asynchronous writes while exporting");
        assert_eq!(async_threads(&conn), 3, "the caller's setting is put back");
        let failed: Result<()> =
            with_ordered_writes(&conn, Database::Shared, || Err(Error::Internal("x".into())));
        assert!(failed.is_err());
        assert_eq!(async_threads(&conn), 3, "put back after a failure too");
    }
}
