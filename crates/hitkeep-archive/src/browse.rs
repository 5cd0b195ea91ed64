//! Using the archive: list what is in it, query it with SQL, and put rows back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use duckdb::Connection;
use hitkeep_data::{quote_ident, quote_literal};
use hitkeep_storage::{ListMode, ObjectInfo, Storage};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::ledger::{EntryState, Ledger, LedgerEntry};
use crate::sealed::Expect;
use crate::tables::TABLES;

/// An archive object to read: its key in the archive location, and the size and SHA-256 its ledger
/// entry recorded when it was archived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveObject {
    /// The key.
    pub key: String,
    /// `None` for HitKeep's own files and for entries archived before hitkeep recorded it: read
    /// unchecked ([`local_copies`] logs how many).
    pub recorded: Option<ObjectInfo>,
}

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
) -> Result<Vec<(ArchiveObject, Uuid, LedgerEntry)>> {
    let mut out = Vec::new();
    for (dir, ledger) in ledgers(storage).await? {
        if site.is_some_and(|s| s != ledger.site_id) {
            continue;
        }
        let committed = objects_of(&dir, &ledger).filter(|(e, _)| e.state == EntryState::Deleted);
        out.extend(committed.map(|(e, object)| (object, ledger.site_id, e.clone())));
    }
    Ok(out)
}

/// Every object of `ledger`, whose folder is `dir`, with its entry and what the entry recorded of it.
pub(crate) fn objects_of<'a>(
    dir: &'a str,
    ledger: &'a Ledger,
) -> impl Iterator<Item = (&'a LedgerEntry, ArchiveObject)> + 'a {
    ledger.entries.iter().flat_map(move |entry| {
        entry.objects().into_iter().map(move |object| {
            let key = crate::run::join(dir, object);
            let recorded = entry.stored_info(object);
            (entry, ArchiveObject { key, recorded })
        })
    })
}

/// Local paths of archive objects: files in place on local disk, S3 objects downloaded into `cache` once.
/// Sealed (encrypted) files are opened into `cache` with `opener`, wherever they are. Each object with
/// a recorded size and SHA-256 must still hold those bytes ([`Error::ArchiveChanged`] otherwise),
/// checked before DuckDB reads it or it is opened: in place each time, downloaded when it is fetched.
pub async fn local_copies(
    storage: &Storage,
    objects: &[ArchiveObject],
    cache: &Path,
    opener: Option<&hitkeep_seal::Opener>,
) -> Result<Vec<PathBuf>> {
    let unrecorded = objects.iter().filter(|o| o.recorded.is_none()).count();
    if unrecorded > 0 {
        tracing::info!(
            unrecorded,
            of = objects.len(),
            "archive files without a recorded SHA-256 (HitKeep's own, or archived before hitkeep recorded one) are read unchecked"
        );
    }
    let mut paths = Vec::new();
    for object in objects {
        paths.push(local_copy(storage, object, cache, opener).await?);
    }
    Ok(paths)
}

/// One object of [`local_copies`], unreported when it is unrecorded.
pub(crate) async fn local_copy(
    storage: &Storage,
    object: &ArchiveObject,
    cache: &Path,
    opener: Option<&hitkeep_seal::Opener>,
) -> Result<PathBuf> {
    let (key, expect) = (&object.key, Expect::archived(object.recorded.as_ref()));
    // A copy in `cache` was checked when it was made, so it goes under the digest it was checked
    // against: one that an earlier build made unchecked, at the bare key, is never taken for it.
    let copy = match &object.recorded {
        Some(recorded) => cache.join(recorded.sha256.to_string()).join(key),
        None => cache.join(key),
    };
    let into_cache = |copy: &Path| {
        std::fs::create_dir_all(copy.parent().unwrap_or(cache)).map_err(|e| Error::io(cache, e))
    };
    let hitkeep_config::Location::Local(root) = storage.location() else {
        if !copy.exists() {
            into_cache(&copy)?;
            crate::sealed::fetch(storage, key, &copy, opener, expect).await?;
        }
        return Ok(copy);
    };
    let in_place = root.join(key);
    let sealed = crate::sealed::is_sealed(&in_place)?;
    if sealed && copy.exists() {
        return Ok(copy);
    }
    crate::sealed::check_in_place(&in_place, &storage.describe(key), expect).await?;
    if !sealed {
        return Ok(in_place);
    }
    into_cache(&copy)?;
    crate::sealed::open(opener, &in_place, &copy, &storage.describe(key)).await?;
    Ok(copy)
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
