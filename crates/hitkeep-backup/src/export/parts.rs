//! An incremental snapshot's export (manifest format 2): every table cut into partitions
//! (`partition.rs`), the partitions that changed since the previous snapshot written as Parquet, and
//! `schema.sql` written by `EXPORT DATABASE` from an empty copy of the database, all read in one
//! transaction. Partitions whose rule, row count and fingerprint equal the previous snapshot's are
//! not written again: their files are that snapshot's pool objects.
//!
//! The folder it leaves is what a restore reads: `schema.sql`, a `load.sql` of one
//! `COPY <table> FROM '<file>'` per file (in the order `EXPORT DATABASE` loads tables, referenced
//! tables first), and the new files, named `<table>.<key>.<n>.parquet`. Reused files keep their names
//! in the manifest, where they point into the pool, so a restore lays out the same folder.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use duckdb::Connection;
use hitkeep_data::{quote_ident, quote_literal, row_counts, table_key, user_tables};

use super::{
    EXPORT_MEMORY_HINT, before_export, files_in, in_transaction, literal_path, with_export_settings,
};
use crate::error::{Error, Result};
use crate::manifest::{Database, FileEntry, Manifest, PartitionEntry, TablePartitions};
use crate::partition::{
    Cutting, MONTH, PartitionPrint, PartitionRule, RANGE, TableName, key_parts, key_text, quoted,
};

/// What an incremental export produced.
#[derive(Debug)]
pub(crate) struct PartedExport {
    /// Row counts by table, as [`row_counts`] keys them.
    pub tables: BTreeMap<String, u64>,
    /// DuckDB's version.
    pub duckdb_version: String,
    /// Every table in load order, with its partitions and their files' names.
    pub partitions: Vec<TablePartitions>,
    /// The files written into the folder, to upload: `schema.sql`, `load.sql` and the new partitions'.
    pub written: Vec<PathBuf>,
    /// The files of unchanged partitions, stored already, under their names in this snapshot.
    pub reused: Vec<FileEntry>,
}

/// The in-memory database the schema is copied into, so that `EXPORT DATABASE` writes `schema.sql`
/// (one grammar for every snapshot's checked SQL) without exporting a row.
const SCHEMA_COPY: &str = "__hitkeep_schema_copy";
/// Where the partitions' files are written before they are named; removed once they are.
const WRITING: &str = ".writing";

/// `CHECKPOINT`, then in one transaction: count every table, fingerprint its partitions, write those
/// that differ from `previous` (this database's last committed snapshot, if incremental) and the
/// schema into `dir`. Then names the files (`opaque`: by random names that say nothing of their
/// table and partition, for an encrypted snapshot's clear manifest) and writes `load.sql`.
pub(crate) fn export_parts(
    conn: &Connection,
    database: Database,
    dir: &Path,
    previous: Option<&Manifest>,
    opaque: bool,
) -> Result<PartedExport> {
    let duckdb_version = before_export(conn, database)?;
    let writing = dir.join(WRITING);
    let (tables, cuts) = with_export_settings(conn, database, || {
        with_schema_copy(conn, database, || {
            in_transaction(conn, database, || {
                let counts =
                    row_counts(conn).map_err(|e| Error::duckdb(database, "counting rows", e))?;
                let cuts = cut_tables(conn, database, &counts, previous, &writing)?;
                write_schema(conn, database, dir)?;
                Ok((counts, cuts))
            })
        })
    })?;
    let (partitions, written, reused) = name_files(cuts, dir, opaque)?;
    std::fs::remove_dir_all(&writing).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(Error::io(&writing, e)),
    })?;
    let load = dir.join("load.sql");
    std::fs::write(&load, load_sql(&partitions)).map_err(|e| Error::io(&load, e))?;
    let mut written = written;
    written.extend([dir.join("schema.sql"), load]);
    written.sort();
    Ok(PartedExport {
        tables,
        duckdb_version,
        partitions,
        written,
        reused,
    })
}

/// One table as cut in the export's transaction.
struct Cut {
    schema: String,
    table: String,
    columns: Vec<(String, String)>,
    rule: PartitionRule,
    prints: BTreeMap<String, PartitionPrint>,
    /// Unchanged partitions: the previous snapshot's entries for their files.
    reused: BTreeMap<String, Vec<FileEntry>>,
    /// Where the changed partitions were written, if any were.
    written: Option<PathBuf>,
}

/// Every table in load order, cut, fingerprinted and compared with `previous`; the changed
/// partitions written under `writing/<n>`.
fn cut_tables(
    conn: &Connection,
    database: Database,
    counts: &BTreeMap<String, u64>,
    previous: Option<&Manifest>,
    writing: &Path,
) -> Result<Vec<Cut>> {
    let fail = |context| move |e| Error::duckdb(database, context, e);
    let order = load_order(conn).map_err(fail("listing the tables"))?;
    let files: HashMap<&str, &FileEntry> = previous
        .iter()
        .flat_map(|m| &m.files)
        .map(|f| (f.name.as_str(), f))
        .collect();
    let mut columns: HashMap<String, BTreeMap<String, Vec<(String, String)>>> = HashMap::new();
    let mut cuts = Vec::with_capacity(order.len());
    for (n, (schema, name)) in order.into_iter().enumerate() {
        if !columns.contains_key(&schema) {
            let read = hitkeep_data::table_columns(conn, &schema, None)
                .map_err(fail("reading the columns"))?;
            columns.insert(schema.clone(), read);
        }
        let typed = columns[&schema].get(&name).cloned().unwrap_or_default();
        let names: Vec<String> = typed.iter().map(|(c, _)| c.clone()).collect();
        let table = TableName {
            schema: &schema,
            name: &name,
        };
        let rows = counts.get(&table_key(&schema, &name)).copied();
        let before = previous
            .and_then(|m| recorded(m, &schema, &name))
            .filter(|t| t.columns == typed);
        let rule = match before {
            Some(t) if t.rule.applies_to(&names) && t.rule.fits(rows.unwrap_or(0)) => {
                t.rule.clone()
            }
            _ => PartitionRule::starting(table, rows.unwrap_or(0), &names),
        };
        let cutting = Cutting::read(conn, table, &names, &rule).map_err(fail("fingerprinting"))?;
        let prints = &cutting.prints;
        let in_prints: u64 = prints.values().map(|p| p.rows).sum();
        if rows != Some(in_prints) {
            return Err(Error::Internal(format!(
                "{database}: {table} counts {rows:?} rows but its partitions {in_prints}"
            )));
        }
        let reused = unchanged(before.filter(|t| t.rule == rule), &files, prints);
        let changed: Vec<&str> = prints
            .keys()
            .filter(|k| !reused.contains_key(*k))
            .map(String::as_str)
            .collect();
        let written = if changed.is_empty() {
            None
        } else {
            let out = writing.join(n.to_string());
            write_rows(
                conn,
                database,
                (table, &names),
                (&rule, &cutting),
                &changed,
                &out,
            )?;
            Some(out)
        };
        let prints = cutting.prints;
        cuts.push(Cut {
            schema,
            table: name,
            columns: typed,
            rule,
            prints,
            reused,
            written,
        });
    }
    Ok(cuts)
}

/// The table as `manifest` recorded it.
fn recorded<'m>(manifest: &'m Manifest, schema: &str, table: &str) -> Option<&'m TablePartitions> {
    manifest
        .partitions
        .iter()
        .find(|t| t.schema == schema && t.table == table)
}

/// The partitions of `prints` that `before` (same rule) holds with the same rows and fingerprint,
/// with its entries for their files (`files`: the previous manifest's, by name). Only pool objects are
/// reused: a file in the previous snapshot's own folder goes with that snapshot.
fn unchanged(
    before: Option<&TablePartitions>,
    files: &HashMap<&str, &FileEntry>,
    prints: &BTreeMap<String, PartitionPrint>,
) -> BTreeMap<String, Vec<FileEntry>> {
    let Some(table) = before else {
        return BTreeMap::new();
    };
    let mut reused = BTreeMap::new();
    for (key, print) in prints {
        let Some(entry) = table.partitions.get(key) else {
            continue;
        };
        if entry.rows != print.rows || entry.fingerprint != print.fingerprint {
            continue;
        }
        let stored: Option<Vec<FileEntry>> = entry
            .files
            .iter()
            .map(|name| files.get(name.as_str()).filter(|f| f.object.is_some()))
            .map(|f| f.map(|f| (*f).clone()))
            .collect();
        if let Some(stored) = stored.filter(|s| !s.is_empty()) {
            reused.insert(key.clone(), stored);
        }
    }
    reused
}

/// Writes the partitions `keys` of `table` under `out`: `PARTITION_BY` the key's two columns (which
/// DuckDB leaves out of the files), or a whole table into `out/all/`.
fn write_rows(
    conn: &Connection,
    database: Database,
    (table, columns): (TableName<'_>, &[String]),
    (rule, cutting): (&PartitionRule, &Cutting),
    keys: &[&str],
    out: &Path,
) -> Result<()> {
    let sql = match rule {
        PartitionRule::Whole => {
            let dir = out.join("all");
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            format!(
                "COPY (SELECT {} FROM {table}) TO {} (FORMAT PARQUET, COMPRESSION ZSTD)",
                quoted(columns),
                literal_path(&dir.join("data_0.parquet"))?
            )
        }
        _ => {
            let select = cutting
                .rows_in(table, columns, rule, keys, true)
                .ok_or_else(|| {
                    Error::Internal(format!("{table}: no partition to write among {keys:?}"))
                })?;
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            format!(
                "COPY ({select}) TO {} (FORMAT PARQUET, COMPRESSION ZSTD, PARTITION_BY ({MONTH}, {RANGE}))",
                literal_path(out)?
            )
        }
    };
    conn.execute_batch(&sql)
        .map_err(|e| Error::duckdb_or_memory(database, "writing partitions", EXPORT_MEMORY_HINT, e))
}

/// `schema.sql`, as `EXPORT DATABASE` writes it, from an empty copy of the database made in the
/// export's transaction (sequences at their current values, as a full export has them).
fn write_schema(conn: &Connection, database: Database, dir: &Path) -> Result<()> {
    let fail = |e| Error::duckdb(database, "exporting the schema", e);
    let source: String = conn
        .query_row("SELECT current_database()", [], |r| r.get(0))
        .map_err(fail)?;
    let exported = dir.join(".schema");
    conn.execute_batch(&format!(
        "COPY FROM DATABASE {} TO {SCHEMA_COPY} (SCHEMA); EXPORT DATABASE {SCHEMA_COPY} TO {} (FORMAT PARQUET)",
        quote_ident(&source),
        literal_path(&exported)?
    ))
    .map_err(fail)?;
    let (from, to) = (exported.join("schema.sql"), dir.join("schema.sql"));
    std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
    std::fs::remove_dir_all(&exported).map_err(|e| Error::io(&exported, e))
}

/// Runs `work` with [`SCHEMA_COPY`] attached, empty (`ATTACH` cannot run inside the transaction).
/// A connection the server keeps may still have one from an export that was killed: it goes first.
fn with_schema_copy<T>(
    conn: &Connection,
    database: Database,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    conn.execute_batch(&format!(
        "DETACH DATABASE IF EXISTS {SCHEMA_COPY}; ATTACH ':memory:' AS {SCHEMA_COPY}"
    ))
    .map_err(|e| Error::duckdb(database, "attaching an empty database for the schema", e))?;
    let outcome = work();
    if let Err(e) = conn.execute_batch(&format!("DETACH DATABASE IF EXISTS {SCHEMA_COPY}")) {
        tracing::warn!(%database, error = %e, "could not detach the schema's copy");
    }
    outcome
}

/// Every user table, referenced tables before those whose foreign keys refer to them (as
/// `EXPORT DATABASE` orders `load.sql`: a table restored with its foreign key needs its target's
/// rows first), otherwise by schema and name.
fn load_order(conn: &Connection) -> duckdb::Result<Vec<(String, String)>> {
    let tables = user_tables(conn)?;
    let mut stmt = conn.prepare(
        "SELECT schema_name, table_name, referenced_table FROM duckdb_constraints() \
         WHERE database_name = current_database() AND constraint_type = 'FOREIGN KEY'",
    )?;
    let references: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<duckdb::Result<_>>()?;
    let mut waits: BTreeMap<(String, String), BTreeSet<(String, String)>> = BTreeMap::new();
    for (schema, table, target) in references {
        if target != table {
            let target = (schema.clone(), target);
            waits.entry((schema, table)).or_default().insert(target);
        }
    }
    let mut order = Vec::with_capacity(tables.len());
    let mut left = tables;
    while !left.is_empty() {
        let ready = |t: &(String, String)| {
            waits.get(t).is_none_or(|targets| {
                targets
                    .iter()
                    .all(|x| order.contains(x) || !left.contains(x))
            })
        };
        // A cycle (which DuckDB's foreign keys cannot make) would otherwise never end: take the first.
        let at = left.iter().position(ready).unwrap_or(0);
        order.push(left.remove(at));
    }
    Ok(order)
}

/// Moves each written file to `<table>.<key>.<n>.parquet` in `dir` (`opaque`: to a random
/// `<32 hex>.parquet`), gives reused files their names in this snapshot (opaque: the names they
/// had), and records every partition.
fn name_files(
    cuts: Vec<Cut>,
    dir: &Path,
    opaque: bool,
) -> Result<(Vec<TablePartitions>, Vec<PathBuf>, Vec<FileEntry>)> {
    // Opaque: a reused file keeps its random name, a new one gets a fresh one (128 random bits,
    // checked unique all the same).
    let mut random_names = BTreeSet::new();
    let mut random = |kept: Option<&str>| -> String {
        if let Some(kept) = kept.filter(|k| random_names.insert(k.to_string())) {
            return kept.to_owned();
        }
        loop {
            let name = format!("{}.parquet", uuid::Uuid::new_v4().simple());
            if random_names.insert(name.clone()) {
                return name;
            }
        }
    };
    let mut stems = BTreeSet::new();
    let (mut tables, mut written, mut reused) = (Vec::new(), Vec::new(), Vec::new());
    for (n, cut) in cuts.into_iter().enumerate() {
        let plain = file_stem(&cut.schema, &cut.table);
        let mut stem = plain.clone();
        // Two tables whose names differ only in what `file_stem` replaces: the later one numbered.
        let mut suffix = n;
        while !stems.insert(stem.clone()) {
            stem = format!("{plain}-{suffix}");
            suffix += 1;
        }
        let mut exported = match &cut.written {
            Some(out) => written_files(out, &cut.rule)?,
            None => BTreeMap::new(),
        };
        let mut partitions = BTreeMap::new();
        for (key, print) in cut.prints {
            let name = |i: usize| format!("{stem}.{key}.{i}.parquet");
            let mut files = Vec::new();
            if let Some(entries) = cut.reused.get(&key) {
                for (i, entry) in entries.iter().enumerate() {
                    let name = match opaque {
                        true => random(Some(&entry.name)),
                        false => name(i),
                    };
                    files.push(name.clone());
                    reused.push(FileEntry {
                        name,
                        ..entry.clone()
                    });
                }
            } else {
                let paths = exported.remove(&key).unwrap_or_default();
                if paths.is_empty() {
                    return Err(Error::Internal(format!(
                        "{}.{}: partition {key} holds {} rows but no file was written",
                        cut.schema, cut.table, print.rows
                    )));
                }
                for (i, path) in paths.into_iter().enumerate() {
                    let name = match opaque {
                        true => random(None),
                        false => name(i),
                    };
                    let to = dir.join(&name);
                    std::fs::rename(&path, &to).map_err(|e| Error::io(&path, e))?;
                    files.push(name);
                    written.push(to);
                }
            }
            partitions.insert(
                key,
                PartitionEntry {
                    rows: print.rows,
                    fingerprint: print.fingerprint,
                    files,
                },
            );
        }
        if let Some(key) = exported.keys().next() {
            return Err(Error::Internal(format!(
                "{}.{}: a file was written for partition {key}, which has no rows",
                cut.schema, cut.table
            )));
        }
        tables.push(TablePartitions {
            schema: cut.schema,
            table: cut.table,
            columns: cut.columns,
            rule: cut.rule,
            partitions,
        });
    }
    Ok((tables, written, reused))
}

/// A file name part for a table: its name (and schema outside `main`) with anything but ASCII
/// letters, digits, `_` and `-` replaced, so that no name of a database can make a path.
fn file_stem(schema: &str, table: &str) -> String {
    let plain = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    if schema == "main" {
        plain(table)
    } else {
        format!("{}.{}", plain(schema), plain(table))
    }
}

/// The files a [`write_rows`] left under `out`, by partition key, each key's in name order.
fn written_files(out: &Path, rule: &PartitionRule) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut found: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let number = |dir: &Path, column: &str| -> Option<i64> {
        let name = dir.file_name()?.to_str()?;
        name.strip_prefix(column)?.strip_prefix('=')?.parse().ok()
    };
    for (month_dir, range_dir) in partition_dirs(out, rule)? {
        let key = match rule {
            PartitionRule::Whole => "all".to_owned(),
            _ => {
                let month = number(&month_dir, MONTH);
                let range = number(&range_dir, RANGE);
                let (Some(month), Some(range)) = (month, range) else {
                    return Err(Error::Internal(format!(
                        "{} is not a partition DuckDB writes",
                        range_dir.display()
                    )));
                };
                key_text(rule, month, range)
            }
        };
        let mut files = files_in(&range_dir)?;
        files.sort();
        found.entry(key).or_default().extend(files);
    }
    Ok(found)
}

/// The folders holding a table's written files: `(month folder, range folder)`, or `out/all` twice.
fn partition_dirs(out: &Path, rule: &PartitionRule) -> Result<Vec<(PathBuf, PathBuf)>> {
    if *rule == PartitionRule::Whole {
        let all = out.join("all");
        return Ok(vec![(all.clone(), all)]);
    }
    let mut dirs = Vec::new();
    for month in files_in(out)? {
        for range in files_in(&month)? {
            dirs.push((month.clone(), range));
        }
    }
    Ok(dirs)
}

/// `load.sql`: a `COPY` per file, tables in load order, each table's partitions by month and range
/// (numbers, not text: `.10` after `.9`), so that a restored table's rows keep their order and the
/// next cycle's partitions after a restore are those before it.
fn load_sql(tables: &[TablePartitions]) -> String {
    let mut sql = String::new();
    for t in tables {
        let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let mut parts: Vec<(&String, &PartitionEntry)> = t.partitions.iter().collect();
        parts.sort_by_key(|(key, _)| key_parts(&t.rule, key));
        for file in parts.iter().flat_map(|(_, p)| &p.files) {
            sql.push_str(&format!(
                "COPY {table} FROM {} (FORMAT 'parquet');\n",
                quote_literal(file)
            ));
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::import_snapshot;
    use crate::import::tests::{catalog_of, import, plain_import};
    use crate::manifest::{INCREMENTAL_FORMAT_VERSION, pool_key};
    use hitkeep_data::demo::{DemoOptions, generate};
    use hitkeep_data::{
        DataLayout, DuckDbLimits, OpenMode, TenantLayout, open_database, rows_fingerprint,
    };
    use hitkeep_storage::Sha256Digest;

    /// Every table's rows and the fingerprint of its rows.
    fn contents(conn: &Connection) -> BTreeMap<String, (i64, String)> {
        let mut out = BTreeMap::new();
        for (schema, table) in user_tables(conn).unwrap() {
            let columns = hitkeep_data::table_columns(conn, &schema, Some(&table)).unwrap();
            let names: Vec<String> = columns[&table].iter().map(|(c, _)| c.clone()).collect();
            let sql = format!(
                "SELECT count(*), coalesce({}, 0)::VARCHAR FROM {}.{}",
                rows_fingerprint(&quoted(&names)),
                quote_ident(&schema),
                quote_ident(&table)
            );
            let read = conn.query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)));
            out.insert(table_key(&schema, &table), read.unwrap());
        }
        out
    }

    fn contents_of(db: &Path) -> BTreeMap<String, (i64, String)> {
        contents(&Connection::open(db).unwrap())
    }

    /// Stores the export's new table files in `pool` by SHA-256, as a cycle does, and returns its
    /// manifest.
    fn commit(export: &PartedExport, pool: &Path) -> Manifest {
        let mut files = export.reused.clone();
        for path in &export.written {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let sha256 = Sha256Digest::of_file(path).unwrap().to_string();
            let object = name.ends_with(".parquet").then(|| pool_key(&sha256));
            if let Some(object) = &object {
                let to = pool.join(object);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(path, to).unwrap();
            }
            let size = std::fs::metadata(path).unwrap().len();
            files.push(FileEntry {
                name,
                size,
                sha256,
                object,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Manifest {
            format: "hitkeep-snapshot".into(),
            format_version: INCREMENTAL_FORMAT_VERSION,
            snapshot_id: "2026-01-01T000000Z".parse().unwrap(),
            database: Database::Shared,
            created_at: jiff::Timestamp::now(),
            tool: "test".into(),
            duckdb_version: export.duckdb_version.clone(),
            files,
            tables: export.tables.clone(),
            tenants: Vec::new(),
            layout: None,
            default_tenant: None,
            source: None,
            sequence: None,
            partitions: export.partitions.clone(),
            encryption: None,
            object_lock: None,
        }
    }

    /// A snapshot's folder as a restore downloads it: its own files from `staging`, the rest from
    /// `pool`.
    fn lay_out(manifest: &Manifest, staging: &Path, pool: &Path, into: &Path) {
        std::fs::create_dir_all(into).unwrap();
        for f in &manifest.files {
            let from = match &f.object {
                Some(object) => pool.join(object),
                None => staging.join(&f.name),
            };
            std::fs::copy(&from, into.join(&f.name)).unwrap();
        }
    }

    fn limits() -> DuckDbLimits {
        DuckDbLimits {
            memory_limit: None,
            threads: Some(2),
        }
    }

    /// Restored through our checked import and through a bare `IMPORT DATABASE` (the plain form
    /// HitKeep reads), an incremental snapshot equals a full export's plain import: catalog and rows.
    #[test]
    fn an_incremental_snapshot_restores_as_a_full_export_does_in_both_layouts() {
        for release in [TenantLayout::PreSplit, TenantLayout::Split] {
            let dir = tempfile::tempdir().unwrap();
            let at = |name: &str| dir.path().join(name);
            let layout = DataLayout::new(at("hitkeep.db"), at("data"));
            let demo =
                generate(&layout, &DemoOptions::new(20_000, 1).with_layout(release)).unwrap();
            let mut sources = vec![layout.db_path.clone()];
            if release == TenantLayout::Split {
                sources.push(layout.tenant_db(demo.default_tenant));
            }
            for (i, source) in sources.iter().enumerate() {
                let case = format!("{release:?} {i}");
                let (full, staging, pool, laid) =
                    (at("full"), at("staging"), at("pool"), at("laid"));
                let conn = open_database(source, OpenMode::Existing).unwrap();
                conn.execute_batch(&format!(
                    "EXPORT DATABASE {} (FORMAT PARQUET)",
                    literal_path(&full).unwrap()
                ))
                .unwrap();
                std::fs::create_dir_all(&staging).unwrap();
                let export = export_parts(&conn, Database::Shared, &staging, None, false).unwrap();
                let source_contents = contents(&conn);
                drop(conn);
                assert!(export.reused.is_empty(), "{case}");
                assert!(!staging.join(WRITING).exists(), "{case}");
                let schema = |d: &Path| std::fs::read_to_string(d.join("schema.sql")).unwrap();
                assert_eq!(schema(&staging), schema(&full), "{case}: schema.sql");
                let manifest = commit(&export, &pool);
                let parsed = Manifest::from_slice(&manifest.to_bytes()).unwrap();
                assert_eq!(parsed, manifest, "{case}: the manifest reads back");
                lay_out(&manifest, &staging, &pool, &laid);

                let (ours, plain, bare) = (at("ours.db"), at("plain.db"), at("bare.db"));
                let counts = import_snapshot(&import(&laid, &ours, limits())).unwrap();
                plain_import(&full, &plain);
                plain_import(&laid, &bare);
                assert_eq!(counts, export.tables, "{case}: counts");
                assert_eq!(catalog_of(&ours), catalog_of(&plain), "{case}: catalog");
                assert_eq!(
                    catalog_of(&bare),
                    catalog_of(&plain),
                    "{case}: bare catalog"
                );
                assert_eq!(contents_of(&ours), source_contents, "{case}: rows");
                assert_eq!(contents_of(&bare), source_contents, "{case}: bare rows");
                for path in [full, staging, pool, laid, ours, plain, bare] {
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
        }
    }

    /// The parquet files an export wrote, by name.
    fn written_tables(export: &PartedExport) -> Vec<String> {
        let mut names: Vec<String> = export
            .written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .filter(|n| n.ends_with(".parquet"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_second_export_writes_only_the_partitions_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let layout = DataLayout::new(at("hitkeep.db"), at("data"));
        let options = DemoOptions::new(20_000, 1).with_layout(TenantLayout::Split);
        let demo = generate(&layout, &options).unwrap();
        let conn =
            open_database(&layout.tenant_db(demo.default_tenant), OpenMode::Existing).unwrap();
        let pool = at("pool");
        let export = |name: &str, previous: Option<&Manifest>| {
            std::fs::create_dir_all(at(name)).unwrap();
            export_parts(&conn, Database::Shared, &at(name), previous, false).unwrap()
        };
        let first = export("first", None);
        let first_manifest = commit(&first, &pool);
        let files = written_tables(&first);
        assert!(
            files.iter().filter(|f| f.starts_with("hits.")).count() > 12,
            "{files:?}"
        );

        // Nothing changed: nothing but the schema and load.sql is written.
        let same = export("same", Some(&first_manifest));
        assert_eq!(written_tables(&same), Vec::<String>::new());
        assert_eq!(same.reused.len(), files.len());
        assert_eq!(same.partitions, first.partitions);

        // New hits in the newest months, and one old hit changed in place.
        conn.execute_batch(
            "CREATE TEMP TABLE added AS SELECT * REPLACE (uuidv7() AS id) FROM hits ORDER BY \"timestamp\" DESC LIMIT 100;
             INSERT INTO hits SELECT * FROM added;
             UPDATE hits SET path = '/changed' WHERE id = (SELECT id FROM hits ORDER BY \"timestamp\" LIMIT 1);",
        )
        .unwrap();
        let mut months: Vec<String> = {
            let mut stmt = conn
                .prepare(
                    "SELECT DISTINCT strftime(\"timestamp\"::TIMESTAMP, '%Y-%m') FROM added \
                     UNION SELECT strftime(min(\"timestamp\")::TIMESTAMP, '%Y-%m') FROM hits",
                )
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<duckdb::Result<_>>()
                .unwrap()
        };
        months.sort();
        let second = export("second", Some(&first_manifest));
        let changed = written_tables(&second);
        assert!(!changed.is_empty());
        for name in &changed {
            let month = name.strip_prefix("hits.").map(|k| &k[..7]);
            assert!(
                month.is_some_and(|m| months.iter().any(|x| x == m)),
                "{name} was written, but only hits of {months:?} changed"
            );
        }
        assert!(changed.len() < files.len() / 4, "{changed:?}");
        assert_eq!(second.reused.len() + changed.len(), second_files(&second));

        // The mixed snapshot restores to the rows the database holds now.
        let second_manifest = commit(&second, &pool);
        lay_out(&second_manifest, &at("second"), &pool, &at("laid"));
        let ours = at("ours.db");
        import_snapshot(&import(&at("laid"), &ours, limits())).unwrap();
        assert_eq!(contents_of(&ours), contents(&conn));
    }

    /// How many files the export's partitions name.
    fn second_files(export: &PartedExport) -> usize {
        export
            .partitions
            .iter()
            .flat_map(|t| t.partitions.values())
            .map(|p| p.files.len())
            .sum()
    }

    #[test]
    fn tables_load_after_the_tables_their_foreign_keys_refer_to() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE m_grand (id INT PRIMARY KEY);
             CREATE TABLE z_parent (id INT PRIMARY KEY, g INT REFERENCES m_grand(id));
             CREATE TABLE a_child (id INT, p INT REFERENCES z_parent(id));
             CREATE TABLE b_alone (id INT);",
        )
        .unwrap();
        let order: Vec<String> = load_order(&conn)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(order, ["b_alone", "m_grand", "z_parent", "a_child"]);
    }

    #[test]
    fn file_names_are_plain_whatever_the_table_is_called() {
        assert_eq!(file_stem("main", "hits"), "hits");
        assert_eq!(file_stem("main", "../etc/x y"), "___etc_x_y");
        assert_eq!(file_stem("odd schema", "t"), "odd_schema.t");
    }
}
