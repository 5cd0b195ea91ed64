//! One database to Parquet files in a local directory, with row counts from the same transaction.
//! Blocking: DuckDB calls run on a blocking thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use duckdb::Connection;
use hitkeep_data::{
    PARQUET_WRITE_SETTINGS, Scope, Setting, quote_literal, row_counts, with_settings,
};

use crate::error::{Error, Result};
use crate::manifest::Database;

mod parts;

pub(crate) use parts::{PartedExport, export_parts};

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
    let duckdb_version = before_export(conn, database)?;
    // The settings around the transaction: inside one that failed, DuckDB refuses to put them back.
    let tables = with_export_settings(conn, database, || {
        in_transaction(conn, database, || count_and_export(conn, database, dir))
    })?;
    let mut files = files_in(dir)?;
    files.retain(|p| p.is_file());
    files.sort();
    Ok(Export {
        tables,
        files,
        duckdb_version,
    })
}

/// `CHECKPOINT` (a failed one, with another connection mid-transaction, only means a bigger WAL: the
/// export is still consistent, so it warns, as HitKeep does), then DuckDB's version.
fn before_export(conn: &Connection, database: Database) -> Result<String> {
    if let Err(e) = conn.execute_batch("CHECKPOINT") {
        tracing::warn!(%database, error = %e, "CHECKPOINT failed; exporting anyway");
    }
    conn.query_row("SELECT version()", [], |r| r.get(0))
        .map_err(|e| Error::duckdb(database, "reading the version", e))
}

/// The settings an export runs under ([`with_settings`]): Parquet's (rows in any order), and
/// `async_threads = 0`, each file written from start to end. DuckDB 2.0 hands Parquet writes to
/// asynchronous I/O threads that can finish out of order, so a file still being written can read as
/// zeros below its end; backing up 16M hits, one backup in four or five read 3 KB to 2.4 MB of zeros
/// that way and, caught by the check at rest, sent the whole file again. Uploads follow files as they
/// grow (`follow.rs`), so they need the bytes in order. Measured no slower for an export.
/// `async_threads` has no narrower scope than the instance.
const EXPORT_SETTINGS: [Setting; 2] = [
    PARQUET_WRITE_SETTINGS[0],
    Setting {
        name: "async_threads",
        value: "0",
        scope: Scope::Instance,
    },
];

fn with_export_settings<T>(
    conn: &Connection,
    database: Database,
    export: impl FnOnce() -> Result<T>,
) -> Result<T> {
    with_settings(conn, &EXPORT_SETTINGS, export)
        .map_err(|e| Error::duckdb(database, "changing DuckDB's settings for the export", e))?
}

/// Every entry of `dir`.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect()
}

/// `path` as a SQL string literal; a staging path that is not UTF-8 cannot be one.
fn literal_path(path: &Path) -> Result<String> {
    let text = path.to_str().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::other("the staging path is not valid UTF-8"),
        )
    })?;
    Ok(quote_literal(text))
}

/// Runs `work` in one transaction: everything it reads sees the same rows.
fn in_transaction<T>(
    conn: &Connection,
    database: Database,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| Error::duckdb(database, "starting the export transaction", e))?;
    let outcome = work();
    let end = if outcome.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    if let Err(e) = conn.execute_batch(end) {
        tracing::warn!(%database, error = %e, "could not end the export transaction");
    }
    outcome
}

fn count_and_export(
    conn: &Connection,
    database: Database,
    dir: &Path,
) -> Result<BTreeMap<String, u64>> {
    let tables = row_counts(conn).map_err(|e| Error::duckdb(database, "counting rows", e))?;
    conn.execute_batch(&format!(
        "EXPORT DATABASE {} (FORMAT PARQUET, COMPRESSION ZSTD)",
        literal_path(dir)?
    ))
    .map_err(|e| Error::duckdb_or_memory(database, "EXPORT DATABASE", EXPORT_MEMORY_HINT, e))?;
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(conn: &Connection, name: &str) -> String {
        let sql = format!("SELECT CAST(current_setting('{name}') AS VARCHAR)");
        conn.query_row(&sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn an_export_writes_in_order_and_keeps_no_row_order() {
        let conn = Connection::open_in_memory().unwrap();
        let during = with_export_settings(&conn, Database::Shared, || {
            Ok((
                setting(&conn, "async_threads"),
                setting(&conn, "preserve_insertion_order"),
            ))
        });
        assert_eq!(during.unwrap(), ("0".to_owned(), "false".to_owned()));
    }

    #[test]
    fn an_export_that_fails_in_duckdb_puts_the_settings_back() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("SET async_threads = 3; CREATE TABLE t AS SELECT 1 AS x")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A file where the export's folder should be: DuckDB fails inside the transaction.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, "not a folder").unwrap();
        assert!(export_database(&conn, Database::Shared, &blocked).is_err());
        assert_eq!(setting(&conn, "async_threads"), "3");
        assert_eq!(setting(&conn, "preserve_insertion_order"), "true");
    }
}
