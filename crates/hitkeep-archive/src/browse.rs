//! Using the archive: list what is in it, query it with SQL, and put rows back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use duckdb::Connection;
use hitkeep_data::{quote_ident, quote_literal};
use hitkeep_storage::{ListMode, Storage};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::ledger::{EntryState, Ledger, LedgerEntry};
use crate::tables::TABLES;

/// Every ledger in the archive location, with the folder its files sit in.
pub async fn ledgers(storage: &Storage) -> Result<Vec<(String, Ledger)>> {
    let mut out = Vec::new();
    for entry in storage.list("", ListMode::Recursive).await? {
        if !entry.key.ends_with("ledger.json") {
            continue;
        }
        let ledger = Ledger::parse(&entry.key, &storage.read(&entry.key).await?)?;
        let dir = entry
            .key
            .rsplit_once('/')
            .map_or(String::new(), |(d, _)| d.to_owned());
        out.push((dir, ledger));
    }
    out.sort_by_key(|(_, l)| l.site_id);
    Ok(out)
}

/// The committed archive objects (rows gone from the database) of one site, or of all: each with
/// its site and its ledger entry (an entry stored as one file per table lists once per file).
pub async fn files(
    storage: &Storage,
    site: Option<Uuid>,
) -> Result<Vec<(String, Uuid, LedgerEntry)>> {
    let mut out = Vec::new();
    for (dir, ledger) in ledgers(storage).await? {
        if site.is_some_and(|s| s != ledger.site_id) {
            continue;
        }
        for e in ledger
            .entries
            .into_iter()
            .filter(|e| e.state == EntryState::Deleted)
        {
            for object in e.objects() {
                let key = if dir.is_empty() {
                    object.to_owned()
                } else {
                    format!("{dir}/{object}")
                };
                out.push((key, ledger.site_id, e.clone()));
            }
        }
    }
    Ok(out)
}

/// Local paths of archive objects: files in place on local disk, S3 objects downloaded into `cache` once.
/// Sealed (encrypted) files are opened into `cache` with `opener`, wherever they are.
pub async fn local_copies(
    storage: &Storage,
    keys: &[String],
    cache: &Path,
    opener: Option<&hitkeep_seal::Opener>,
) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for key in keys {
        let path = cache.join(key);
        if let hitkeep_config::Location::Local(root) = storage.location() {
            let in_place = root.join(key);
            if !crate::sealed::is_sealed(&in_place)? {
                paths.push(in_place);
                continue;
            }
            if !path.exists() {
                std::fs::create_dir_all(path.parent().unwrap_or(cache))
                    .map_err(|e| Error::io(cache, e))?;
                crate::sealed::open(opener, &in_place, &path, &storage.describe(key)).await?;
            }
            paths.push(path);
            continue;
        }
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap_or(cache))
                .map_err(|e| Error::io(cache, e))?;
            crate::sealed::fetch(storage, key, &path, opener).await?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Marks a site's archive files as restored after `archive restore` put all their rows back, so queries
/// stop counting them and the next run archives the rows afresh.
pub async fn mark_restored(storage: &Storage, site: Uuid) -> Result<usize> {
    let mut marked = 0;
    for (dir, mut ledger) in ledgers(storage)
        .await?
        .into_iter()
        .filter(|(_, l)| l.site_id == site)
    {
        for e in ledger
            .entries
            .iter_mut()
            .filter(|e| e.state == EntryState::Deleted)
        {
            e.state = EntryState::Restored;
            marked += 1;
        }
        crate::run::save_ledger(storage, &crate::run::ledger_key_for(&dir, site), &ledger).await?;
    }
    Ok(marked)
}

/// Creates the view `archive` over `paths` (every table's rows, `_source` naming the table), files of
/// either format together: `union_by_name` gives one column per name over all of them.
pub fn create_view(conn: &Connection, paths: &[PathBuf]) -> Result<()> {
    if paths.is_empty() {
        return Err(Error::NothingArchived);
    }
    let list = paths
        .iter()
        .map(|p| quote_literal(&p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute_batch(&format!("CREATE OR REPLACE TEMP VIEW archive AS SELECT * FROM read_parquet([{list}], union_by_name = true)"))
        .map_err(|e| Error::duckdb("creating the archive view", e))
}

/// Puts archived rows back into `conn`'s live tables, idempotently: rows whose primary key is present are
/// skipped (tables without a key skip identical rows). `from`/`to` limit by the table's time column
/// (`from` inclusive, `to` exclusive, as `YYYY-MM-DD`). Returns rows inserted per table.
pub fn restore_rows(
    conn: &Connection,
    paths: &[PathBuf],
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<(String, u64)>> {
    create_view(conn, paths)?;
    let mut out = Vec::new();
    for table in TABLES {
        let columns = table_columns(conn, table.name)?;
        if columns.is_empty() {
            continue;
        }
        let names = columns
            .iter()
            .map(|(c, _)| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        // UNION BY NAME widened DATE columns to TIMESTAMPTZ (midnight UTC); without ICU that cast has no
        // way back, so the date is taken from the text.
        let values = columns
            .iter()
            .map(|(c, t)| {
                if t == "DATE" {
                    format!(
                        "CAST(left(CAST({0} AS VARCHAR), 10) AS DATE)",
                        quote_ident(c)
                    )
                } else {
                    quote_ident(c)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let col = quote_ident(table.column);
        let mut filter = format!("_source = '{}'", table.name);
        if let Some(from) = from {
            filter.push_str(&format!(
                " AND CAST({col} AS VARCHAR) >= {}",
                quote_literal(from)
            ));
        }
        if let Some(to) = to {
            filter.push_str(&format!(
                " AND CAST({col} AS VARCHAR) < {}",
                quote_literal(to)
            ));
        }
        let source = format!("SELECT {values} FROM archive WHERE {filter}");
        let sql = if has_primary_key(conn, table.name)? {
            format!(
                "INSERT OR IGNORE INTO {} ({names}) {source}",
                quote_ident(table.name)
            )
        } else {
            format!(
                "INSERT INTO {} ({names}) ({source} EXCEPT ALL SELECT {names} FROM {})",
                quote_ident(table.name),
                quote_ident(table.name)
            )
        };
        let n = conn
            .execute(&sql, [])
            .map_err(|e| Error::duckdb("restoring archived rows", e))?;
        out.push((table.name.to_owned(), u64::try_from(n).unwrap_or_default()));
    }
    Ok(out)
}

pub(crate) fn table_columns(conn: &Connection, table: &str) -> Result<Vec<(String, String)>> {
    let mut tables = hitkeep_data::table_columns(conn, "main", Some(table))
        .map_err(|e| Error::duckdb("reading columns", e))?;
    Ok(tables.remove(table).unwrap_or_default())
}

/// Every table's columns and their types, in order, in one query.
pub(crate) fn tables_columns(conn: &Connection) -> Result<BTreeMap<String, Vec<(String, String)>>> {
    hitkeep_data::table_columns(conn, "main", None).map_err(|e| Error::duckdb("reading columns", e))
}

fn has_primary_key(conn: &Connection, table: &str) -> Result<bool> {
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM duckdb_constraints() WHERE database_name = current_database() AND table_name = ? AND constraint_type = 'PRIMARY KEY'",
            [table],
            |r| r.get(0),
        )
        .map_err(|e| Error::duckdb("reading constraints", e))?;
    Ok(n > 0)
}
