//! `recover import-archives`: a tenant's archived rows back into the database HitKeep reads them from,
//! as HitKeep 2.13 does it, and idempotently: a second run imports nothing.
//!
//! The files are HitKeep's layout (`tenants/{tenant}/sites/*/site_*.parquet`, plus the flat
//! `site_*.parquet` of the default tenant at the root), read from local disk or, unlike HitKeep, from
//! S3 (one object at a time, downloaded beside the target database). Each file is imported in one
//! transaction: its rows go, by their `_source` column, into the table of that name, parents before
//! foreign-key children, only the columns both sides have (cast to the table's types), only rows whose
//! site is in the tenant's `sites` and whose foreign-key parents exist, and only rows not already
//! there (`EXCEPT ALL`, so tables without keys are covered too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use duckdb::Connection;
use hitkeep_data::{DataLayout, OpenMode, TenantLayout, quote_ident, quote_literal};
use hitkeep_storage::{ListMode, ObjectInfo, Storage};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};

/// What an import will read and where the rows go. Nothing is changed until [`ImportPlan::execute`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ImportPlan {
    /// The tenant whose archives are imported.
    pub tenant: Uuid,
    /// Whether it is the default tenant (which also owns the flat files at the archive's root).
    pub is_default: bool,
    /// The install's layout: before HitKeep 2.13's split the default tenant's rows go into the shared
    /// database.
    pub layout: TenantLayout,
    /// The database the rows go into; it must exist and is never created.
    pub target: PathBuf,
    /// The archive files, as keys in the archive location, sorted.
    pub files: Vec<String>,
    /// What their ledgers recorded of the files' bytes, by key; checked before each import.
    #[serde(skip)]
    recorded: BTreeMap<String, ObjectInfo>,
    /// Ledgers beside the files that did not parse (logged): what they record goes unchecked.
    pub unreadable_ledgers: Vec<String>,
}

/// Rows of one table over all the files imported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TableCounts {
    /// Inserted.
    pub imported: u64,
    /// Already in the table, so not inserted again.
    pub present: u64,
    /// Left out: the site or a foreign-key parent is gone, or the table does not exist here.
    pub skipped: u64,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct ImportSummary {
    /// Archive files imported.
    pub files: usize,
    /// Per table (by `_source`).
    pub tables: BTreeMap<String, TableCounts>,
}

impl ImportPlan {
    /// Resolves the tenant (`None`: the default tenant, `tenants.is_default`), its database and the
    /// archive files. Refuses when that database does not exist.
    pub async fn new(
        storage: &Storage,
        layout: &DataLayout,
        tenant: Option<Uuid>,
    ) -> Result<ImportPlan> {
        let (default, tenant_layout) = {
            // Read-only: this is HitKeep's control database, only looked at here.
            let control = hitkeep_data::open_read_only(&layout.db_path)?;
            let default = hitkeep_data::default_tenant(&control)
                .map_err(|e| Error::duckdb("reading the default tenant", e))?;
            let (tenant_layout, _) = hitkeep_data::detect_layout(&control)
                .map_err(|e| Error::duckdb("reading the data layout", e))?;
            (default, tenant_layout)
        };
        let tenant = tenant.or(default).ok_or_else(|| Error::NoDefaultTenant {
            db: layout.db_path.clone(),
        })?;
        let target = layout.analytics_db(tenant_layout, default, Some(tenant));
        if !target.is_file() {
            return Err(Error::NoTenantDatabase {
                tenant,
                path: target,
            });
        }
        let is_default = Some(tenant) == default;
        let (files, ledgers) = archive_files(storage, tenant, is_default).await?;
        let (recorded, unreadable_ledgers) = recorded(storage, &ledgers).await?;
        Ok(ImportPlan {
            tenant,
            is_default,
            layout: tenant_layout,
            recorded,
            unreadable_ledgers,
            files,
            target,
        })
    }

    /// How many of [`ImportPlan::files`] have a recorded size and SHA-256 to be checked against:
    /// HitKeep's own files, and those archived before hitkeep recorded them, have none.
    pub fn checked(&self) -> usize {
        self.files
            .iter()
            .filter(|key| self.recorded.contains_key(*key))
            .count()
    }

    /// Imports every file in order, each in one transaction, then checkpoints. A failing file is
    /// rolled back and ends the import ([`Error::ImportFile`] says how many went before it).
    pub async fn execute(
        &self,
        storage: &Storage,
        layout: &DataLayout,
        opener: Option<&hitkeep_seal::Opener>,
    ) -> Result<ImportSummary> {
        let conn = layout.open(&self.target, OpenMode::Existing)?;
        let schema = tokio::task::block_in_place(|| Schema::read(&conn))?;
        // S3 objects are downloaded beside the target, on the disk that will hold their rows anyway.
        let dir = self
            .target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let scratch = tempfile::Builder::new()
            .prefix(".hitkeep-import-")
            .tempdir_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let mut summary = ImportSummary::default();
        for key in &self.files {
            let in_file = |e: Error| Error::ImportFile {
                key: storage.describe(key),
                before: summary.files,
                source: Box::new(e),
            };
            let object = crate::ArchiveObject {
                key: key.clone(),
                recorded: self.recorded.get(key).copied(),
            };
            // Unrecorded files are reported by the plan, not once each here.
            let local = crate::browse::local_copy(storage, &object, scratch.path(), opener)
                .await
                .map_err(in_file)?;
            let counts = tokio::task::block_in_place(|| import_file(&conn, &schema, &local))
                .map_err(in_file)?;
            // A copy (downloaded, or opened): removed; a plain local file read in place: kept.
            if local.starts_with(scratch.path()) {
                let _ = std::fs::remove_file(&local);
            }
            for (table, c) in counts {
                let total = summary.tables.entry(table).or_default();
                total.imported += c.imported;
                total.present += c.present;
                total.skipped += c.skipped;
            }
            summary.files += 1;
        }
        conn.execute_batch("CHECKPOINT")
            .map_err(|e| Error::duckdb("checkpointing after the import", e))?;
        Ok(summary)
    }
}

/// `tenants/{tenant}/sites/{site}/site_*.parquet`, and for the default tenant `site_*.parquet` at the
/// root (HitKeep's flat local layout), sorted; and the ledgers beside them, from the same listings.
async fn archive_files(
    storage: &Storage,
    tenant: Uuid,
    is_default: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let is_archive = |name: &str| name.starts_with("site_") && name.ends_with(".parquet");
    let is_ledger = |name: &str| name.starts_with("site_") && name.ends_with(".ledger.json");
    let prefix = format!("tenants/{tenant}/sites");
    let (mut files, mut ledgers) = (Vec::new(), Vec::new());
    for key in list(storage, &prefix, ListMode::Recursive).await? {
        let rest = key.strip_prefix(&format!("{prefix}/")).unwrap_or_default();
        match rest.split('/').collect::<Vec<_>>()[..] {
            [_site, name] if is_archive(name) => files.push(key),
            [_site, "ledger.json"] => ledgers.push(key),
            _ => {}
        }
    }
    if is_default {
        for key in list(storage, "", ListMode::OneLevel).await? {
            if key.contains('/') {
                continue;
            }
            if is_archive(&key) {
                files.push(key);
            } else if is_ledger(&key) {
                ledgers.push(key);
            }
        }
    }
    files.sort();
    Ok((files, ledgers))
}

/// What the ledgers at `keys` recorded of their objects' bytes, by object key, and the ledgers that
/// did not parse. Those are logged and returned, and their files imported unchecked, as HitKeep's
/// are: a recovery is not refused for the bookkeeping of later runs.
async fn recorded(
    storage: &Storage,
    keys: &[String],
) -> Result<(BTreeMap<String, ObjectInfo>, Vec<String>)> {
    let (mut out, mut unreadable) = (BTreeMap::new(), Vec::new());
    for key in keys {
        let ledger = match crate::Ledger::parse(key, &storage.read(key).await?) {
            Ok(ledger) => ledger,
            Err(e) => {
                tracing::warn!(key, error = %e, "a ledger that does not parse: its files are imported without a check of their bytes");
                unreadable.push(key.clone());
                continue;
            }
        };
        let dir = key.rsplit_once('/').map_or("", |(dir, _)| dir);
        let objects = crate::browse::objects_of(dir, &ledger).map(|(_, object)| object);
        out.extend(objects.filter_map(|o| Some((o.key, o.recorded?))));
    }
    Ok((out, unreadable))
}

/// The object keys under `prefix`; a prefix that does not exist holds none.
async fn list(storage: &Storage, prefix: &str, mode: ListMode) -> Result<Vec<String>> {
    match storage.list(prefix, mode).await {
        Ok(entries) => Ok(entries
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| e.key)
            .collect()),
        Err(e) if e.kind() == hitkeep_storage::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// What the target database has: tables with their columns, foreign keys, and which tables have a
/// primary key or unique constraint.
struct Schema {
    columns: BTreeMap<String, Vec<(String, String)>>,
    foreign_keys: Vec<ForeignKey>,
    keyed: Vec<String>,
}

/// `table (columns) REFERENCES parent (parent_columns)`.
struct ForeignKey {
    table: String,
    columns: Vec<String>,
    parent: String,
    parent_columns: Vec<String>,
}

impl Schema {
    fn read(conn: &Connection) -> Result<Schema> {
        let mut columns = BTreeMap::new();
        for (schema, table) in
            hitkeep_data::user_tables(conn).map_err(|e| Error::duckdb("listing tables", e))?
        {
            if schema == "main" {
                let cols = crate::browse::table_columns(conn, &table)?;
                columns.insert(table, cols);
            }
        }
        let sql = "SELECT table_name, constraint_type, constraint_index, referenced_table, \
                   unnest(constraint_column_names), unnest(referenced_column_names) \
                   FROM duckdb_constraints() WHERE database_name = current_database() \
                   AND schema_name = 'main' AND constraint_type IN ('FOREIGN KEY', 'PRIMARY KEY', 'UNIQUE') \
                   ORDER BY table_name, constraint_index";
        let rows = query(conn, sql, "reading constraints", |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let (mut foreign_keys, mut keyed): (Vec<ForeignKey>, Vec<String>) = Default::default();
        let mut last: Option<(String, i64)> = None;
        for (table, kind, index, parent, column, parent_column) in rows {
            if kind != "FOREIGN KEY" {
                keyed.push(table);
                continue;
            }
            let same = last.as_ref() == Some(&(table.clone(), index));
            if !same {
                foreign_keys.push(ForeignKey {
                    table: table.clone(),
                    columns: Vec::new(),
                    parent: parent.unwrap_or_default(),
                    parent_columns: Vec::new(),
                });
                last = Some((table, index));
            }
            let fk = foreign_keys.last_mut().expect("pushed above");
            fk.columns.push(column);
            fk.parent_columns.extend(parent_column);
        }
        Ok(Schema {
            columns,
            foreign_keys,
            keyed,
        })
    }

    /// `tables` ordered so that every foreign-key parent comes before its children (a cycle, which
    /// HitKeep's schema does not have, falls back to name order).
    fn parents_first(&self, mut tables: Vec<String>) -> Vec<String> {
        let mut ordered = Vec::new();
        while !tables.is_empty() {
            let ready = tables.iter().position(|t| {
                self.foreign_keys
                    .iter()
                    .filter(|fk| &fk.table == t && &fk.parent != t)
                    .all(|fk| !tables.contains(&fk.parent))
            });
            ordered.push(tables.remove(ready.unwrap_or(0)));
        }
        ordered
    }
}

fn query<T>(
    conn: &Connection,
    sql: &str,
    context: &'static str,
    row: impl FnMut(&duckdb::Row<'_>) -> duckdb::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare(sql).map_err(|e| Error::duckdb(context, e))?;
    let rows = stmt
        .query_map([], row)
        .map_err(|e| Error::duckdb(context, e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| Error::duckdb(context, e))
}

/// One archive file in one transaction; returns its counts per `_source`.
fn import_file(
    conn: &Connection,
    schema: &Schema,
    path: &Path,
) -> Result<BTreeMap<String, TableCounts>> {
    let file = quote_literal(&path.display().to_string());
    let describe = format!("SELECT column_name FROM (DESCRIBE SELECT * FROM read_parquet({file}))");
    let file_columns = query(conn, &describe, "reading the archive file", |r| {
        r.get::<_, String>(0)
    })?;
    if !file_columns.iter().any(|c| c == "_source") {
        return Err(Error::NotAnArchive);
    }
    let sources_sql =
        format!("SELECT _source, count(*) FROM read_parquet({file}) GROUP BY 1 ORDER BY 1");
    let sources: BTreeMap<String, u64> =
        query(conn, &sources_sql, "reading the archive file", |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .into_iter()
        .map(|(t, n)| (t, u64::try_from(n).unwrap_or_default()))
        .collect();
    let tables = schema.parents_first(
        sources
            .keys()
            .filter(|t| schema.columns.contains_key(*t))
            .cloned()
            .collect(),
    );
    let mut counts: BTreeMap<String, TableCounts> = sources
        .iter()
        .filter(|(t, _)| !schema.columns.contains_key(*t))
        .map(|(t, n)| {
            (
                t.clone(),
                TableCounts {
                    skipped: *n,
                    ..Default::default()
                },
            )
        })
        .collect();
    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| Error::duckdb("starting the import", e))?;
    let outcome = tables.iter().try_for_each(|table| -> Result<()> {
        let c = import_table(conn, schema, &file, &file_columns, table, sources[table])?;
        counts.insert(table.clone(), c);
        Ok(())
    });
    crate::run::end_transaction(conn, outcome, "ending the import").map(|()| counts)
}

/// The rows of `table` in the file that belong here and are not here yet.
fn import_table(
    conn: &Connection,
    schema: &Schema,
    file: &str,
    file_columns: &[String],
    table: &str,
    total: u64,
) -> Result<TableCounts> {
    let shared: Vec<&(String, String)> = schema.columns[table]
        .iter()
        .filter(|(c, _)| file_columns.contains(c))
        .collect();
    // Site-scoped rows only: a row that names no site cannot be checked against the tenant.
    if !shared.iter().any(|(c, _)| c == "site_id") || !schema.columns.contains_key("sites") {
        return Ok(TableCounts {
            skipped: total,
            ..Default::default()
        });
    }
    let names = shared
        .iter()
        .map(|(c, _)| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let casts = shared
        .iter()
        .map(|(c, t)| format!("{} AS {}", cast(c, t), quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut guards = vec!["EXISTS (SELECT 1 FROM sites s WHERE s.id = k.site_id)".to_owned()];
    guards.extend(parent_guards(schema, table, &shared));
    let kept = format!(
        "SELECT {names} FROM (SELECT {casts} FROM read_parquet({file}) WHERE _source = {}) k WHERE {}",
        quote_literal(table),
        guards.join(" AND ")
    );
    let n: i64 = conn
        .query_row(&format!("SELECT count(*) FROM ({kept})"), [], |r| r.get(0))
        .map_err(|e| Error::duckdb("reading archived rows", e))?;
    let kept_rows = u64::try_from(n).unwrap_or_default();
    // A table with a key could hold a changed row under the same key: keep the live one.
    let or_ignore = if schema.keyed.iter().any(|t| t == table) {
        "OR IGNORE "
    } else {
        ""
    };
    let insert = format!(
        "INSERT {or_ignore}INTO {t} ({names}) SELECT * FROM ({kept} EXCEPT ALL SELECT {names} FROM {t})",
        t = quote_ident(table)
    );
    let imported = conn
        .execute(&insert, [])
        .map_err(|e| Error::duckdb("inserting archived rows", e))?;
    let imported = u64::try_from(imported).unwrap_or_default();
    Ok(TableCounts {
        imported,
        present: kept_rows.saturating_sub(imported),
        skipped: total.saturating_sub(kept_rows),
    })
}

/// For every foreign key of `table` whose columns travel with the row: a NULL, or an existing parent.
fn parent_guards(schema: &Schema, table: &str, shared: &[&(String, String)]) -> Vec<String> {
    let travels = |c: &String| shared.iter().any(|(s, _)| s == c);
    schema
        .foreign_keys
        .iter()
        .filter(|fk| fk.table == table && fk.parent != table)
        .filter(|fk| fk.columns.iter().all(travels) && fk.columns.len() == fk.parent_columns.len())
        .map(|fk| {
            let nulls = fk
                .columns
                .iter()
                .map(|c| format!("k.{} IS NULL", quote_ident(c)));
            let matches = fk
                .columns
                .iter()
                .zip(&fk.parent_columns)
                .map(|(c, p)| format!("p.{} = k.{}", quote_ident(p), quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let exists = format!(
                "EXISTS (SELECT 1 FROM {} p WHERE {matches})",
                quote_ident(&fk.parent)
            );
            format!(
                "({})",
                nulls.chain([exists]).collect::<Vec<_>>().join(" OR ")
            )
        })
        .collect()
}

/// The archived column as the table's type. Archives widen DATE columns to TIMESTAMPTZ (the export's
/// UNION BY NAME meets TIMESTAMPTZ buckets); without ICU that cast has no way back, so the date is
/// taken from the text, as `archive restore` does.
fn cast(column: &str, data_type: &str) -> String {
    let c = quote_ident(column);
    if data_type == "DATE" {
        format!("CAST(left(CAST({c} AS VARCHAR), 10) AS DATE)")
    } else {
        format!("CAST({c} AS {data_type})")
    }
}
