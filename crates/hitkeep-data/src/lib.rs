//! HitKeep's DuckDB data layout: where the shared database and the tenant databases live, which tenants
//! are backed up, how a database file is opened, and a realistic demo data set.
//!
//! The shared (control-plane) database sits at `HITKEEP_DB_PATH` and holds users, sites and tenants; every
//! tenant has `{HITKEEP_DATA_PATH}/tenants/{uuid}/hitkeep.db`, except that before HitKeep 2.13's tenant
//! split the default tenant's analytics lived in the shared database ([`TenantLayout`]).
//! [`DataLayout`] knows these paths, [`open_database`] opens a file and turns
//! "another process holds this file" into [`DataError::Locked`], [`lock_holder`] asks the kernel who
//! holds a file (from any PID namespace) without opening it as a database, and [`tenant_set`] reads the layout and
//! lists the tenants to back up. [`demo::generate`] builds a HitKeep-shaped data set inside DuckDB.
//! [`DataLayout::claim_staging`] is the one owner of staging paths: a folder per job run
//! ([`StagingDir`]), locked for the job's life, so concurrent jobs never wipe each other's files.
//!
//! What this crate will not do: create a tenant database just to look at it (HitKeep Go does), run
//! migrations, or know anything about storage, snapshots or archives.

#![deny(missing_docs)]

pub mod demo;
mod error;
mod held;
mod lock;
mod paths;
mod schema;
mod settings;
mod source;
mod staging;
mod tenants;
mod timed;

pub use error::{DataError, ErrorKind};
pub use held::{Held, HeldDatabases, Paused};
pub use lock::{Holder, LockHolder, LockMode, lock_holder};
pub use paths::{ARCHIVE_CACHE_DIR, BACKUP_LOCK_FILE, STATUS_FILE};
pub use settings::{PARQUET_WRITE_SETTINGS, Scope, Setting, with_settings};
pub use source::{ARCHIVE_KEY_FILE, INDEX_KEY_FILE, SOURCE_FILE, SourceId, TENANT_KEYS_DIR};
pub use staging::{JobKind, STAGING_DIR, StagingDir};
pub use tenants::{
    SPLIT_COMPACTED_MARKER, SPLIT_MARKER, TenantLayout, TenantSet, default_tenant, detect_layout,
    tenant_set,
};
pub use timed::{Grain, TIMED_TABLES, TimedTable, row_hash, rows_fingerprint, timed_table};

use std::path::{Path, PathBuf};

use duckdb::Connection;
use uuid::Uuid;

/// Where HitKeep's databases live, and how they are opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataLayout {
    /// The shared database file (`HITKEEP_DB_PATH`).
    pub db_path: PathBuf,
    /// The data root (`HITKEEP_DATA_PATH`).
    pub data_path: PathBuf,
    /// Memory and threads for every database opened through [`DataLayout::open`].
    pub duckdb: DuckDbLimits,
    /// Databases this process holds open (an embedding server), used instead of their files.
    pub held: Option<Held>,
}

impl DataLayout {
    /// A layout from the two configured paths, opening databases with DuckDB's defaults.
    pub fn new(db_path: impl Into<PathBuf>, data_path: impl Into<PathBuf>) -> Self {
        DataLayout {
            db_path: db_path.into(),
            data_path: data_path.into(),
            duckdb: DuckDbLimits::default(),
            held: None,
        }
    }

    /// The same layout, opening databases with `limits`.
    pub fn with_limits(mut self, limits: DuckDbLimits) -> Self {
        self.duckdb = limits;
        self
    }

    /// [`open_database`] with this layout's limits applied, or a connection to the instance of the
    /// server that holds the file ([`DataLayout::with_held`]).
    pub fn open(&self, path: &Path, mode: OpenMode) -> Result<Connection, DataError> {
        if let Some(held) = self.held.as_ref().and_then(|h| h.0.connect(path)) {
            return held.map_err(|e| DataError::from_duckdb(path, e));
        }
        // DuckDB's lock is a POSIX lock, which a second open in this same process does not conflict
        // with: a server's own file would get a second DuckDB instance beside the server's, and two
        // instances writing one file corrupt it. The kernel's OFD query counts this process's locks
        // too, so a server that did not lend the file gets the "in use" error instead.
        if path.is_file()
            && let Some(holder) = lock_holder(path)?
        {
            return Err(DataError::Locked {
                path: path.to_owned(),
                holder: Some(holder),
            });
        }
        let conn = open_database(path, mode)?;
        self.duckdb
            .apply(&conn)
            .map_err(|e| DataError::from_duckdb(path, e))?;
        Ok(conn)
    }

    /// The database that holds a tenant's analytics: its own file, except the default tenant's (`None`,
    /// nil or `default`) before HitKeep 2.13's split, which live in the shared database.
    pub fn analytics_db(
        &self,
        layout: TenantLayout,
        default: Option<Uuid>,
        tenant: Option<Uuid>,
    ) -> PathBuf {
        let tenant = tenant.filter(|t| !t.is_nil()).or(default);
        match tenant {
            Some(t) if Some(t) != default || layout == TenantLayout::Split => self.tenant_db(t),
            _ => self.db_path.clone(),
        }
    }

    /// `{data}/tenants/{uuid}/hitkeep.db`.
    pub fn tenant_db(&self, tenant: Uuid) -> PathBuf {
        self.data_path
            .join("tenants")
            .join(tenant.to_string())
            .join("hitkeep.db")
    }
}

/// DuckDB's memory limit and worker threads for one database, so that a backup or an archive run can
/// share a machine with a live server. `None` keeps DuckDB's default (80% of RAM, every core).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DuckDbLimits {
    /// `memory_limit`, in bytes.
    pub memory_limit: Option<u64>,
    /// `threads`.
    pub threads: Option<u32>,
}

impl DuckDbLimits {
    /// The share of these limits for one of `ways` databases open at once: each DuckDB instance has a
    /// budget of its own, so running tenants side by side must split the configured one, not multiply it.
    /// Threads are split even when unset (DuckDB would give every instance every core, and instances
    /// side by side then fight over them).
    pub fn share(self, ways: usize) -> Self {
        if ways <= 1 {
            return self;
        }
        let ways = u64::try_from(ways).unwrap_or(u64::MAX);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let threads = u64::from(self.threads.unwrap_or(cores));
        DuckDbLimits {
            memory_limit: self.memory_limit.map(|m| (m / ways).max(MIN_MEMORY_LIMIT)),
            threads: Some(u32::try_from(threads / ways).unwrap_or(1).max(1)),
        }
    }

    /// Sets the limits on `conn` (both are per database instance in DuckDB).
    pub fn apply(&self, conn: &Connection) -> Result<(), duckdb::Error> {
        if let Some(bytes) = self.memory_limit {
            conn.execute_batch(&format!("SET memory_limit = '{}KiB'", bytes / 1024))?;
        }
        if let Some(threads) = self.threads {
            conn.execute_batch(&format!("SET threads = {threads}"))?;
        }
        Ok(())
    }
}

/// The smallest memory limit a share is cut down to: below this DuckDB cannot export a table at all.
pub const MIN_MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// How to open a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// Create the file (and its directory) when missing.
    Create,
}

/// Opens a DuckDB file. Refuses, without touching the file, when
/// another process holds it, and (in [`OpenMode::Existing`]) when it does not exist.
pub fn open_database(path: &Path, mode: OpenMode) -> Result<Connection, DataError> {
    if mode == OpenMode::Existing && !path.is_file() {
        return Err(DataError::Missing {
            path: path.to_owned(),
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
    }
    if mode == OpenMode::Create && !path.exists() {
        create_compatible(path)?;
    }
    let conn = Connection::open(path).map_err(|e| DataError::from_duckdb(path, e))?;
    Ok(conn)
}

/// Opens an existing DuckDB file read-only: no WAL replay and no checkpoint into someone else's file,
/// for looking at a database (its layout, its tenants) without changing it.
pub fn open_read_only(path: &Path) -> Result<Connection, DataError> {
    if !path.is_file() {
        return Err(DataError::Missing {
            path: path.to_owned(),
        });
    }
    let config = duckdb::Config::default()
        .access_mode(duckdb::AccessMode::ReadOnly)
        .map_err(|e| DataError::from_duckdb(path, e))?;
    Connection::open_with_flags(path, config).map_err(|e| DataError::from_duckdb(path, e))
}

/// DuckDB storage version for files we create: HitKeep Go ships DuckDB 1.5, which cannot open files made at
/// DuckDB 2.0's default version. A file keeps the version it was created with.
pub const STORAGE_VERSION: &str = "v1.5.0";

fn create_compatible(path: &Path) -> Result<(), DataError> {
    let text = path.to_str().ok_or_else(|| DataError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not valid UTF-8"),
    })?;
    let conn = Connection::open_in_memory().map_err(|e| DataError::from_duckdb(path, e))?;
    conn.execute_batch(&format!(
        "ATTACH {} AS created (STORAGE_VERSION '{STORAGE_VERSION}'); DETACH created;",
        quote_literal(text)
    ))
    .map_err(|e| DataError::from_duckdb(path, e))
}

/// A Catalog or Binder error: the table or column does not exist in this (older) schema.
pub fn is_missing_schema(e: &duckdb::Error) -> bool {
    let text = e.to_string();
    text.contains("Catalog Error") || text.contains("Binder Error")
}

/// Every user table of the connection's database as `(schema, table)`, the way EXPORT DATABASE sees them.
pub fn user_tables(conn: &Connection) -> Result<Vec<(String, String)>, duckdb::Error> {
    let mut stmt = conn.prepare(
        "SELECT schema_name, table_name FROM duckdb_tables() \
         WHERE database_name = current_database() AND NOT internal AND NOT temporary \
         ORDER BY schema_name, table_name",
    )?;
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect()
}

/// The row count of every user table, keyed `table` (or `schema.table` outside `main`): the names
/// manifests use, so counts taken at backup and at restore compare directly.
pub fn row_counts(
    conn: &Connection,
) -> Result<std::collections::BTreeMap<String, u64>, duckdb::Error> {
    count_rows(conn, None, user_tables(conn)?)
}

/// How manifests and row counts name a table: `table` in `main`, `schema.table` elsewhere.
pub fn table_key(schema: &str, table: &str) -> String {
    if schema == "main" {
        table.to_owned()
    } else {
        format!("{schema}.{table}")
    }
}

/// The row count of each `(schema, table)`, in `catalog` (an attached database) when given, keyed as
/// [`row_counts`] keys them.
pub fn count_rows(
    conn: &Connection,
    catalog: Option<&str>,
    tables: impl IntoIterator<Item = (String, String)>,
) -> Result<std::collections::BTreeMap<String, u64>, duckdb::Error> {
    let prefix = catalog
        .map(|c| format!("{}.", quote_ident(c)))
        .unwrap_or_default();
    let mut counts = std::collections::BTreeMap::new();
    for (schema, table) in tables {
        let sql = format!(
            "SELECT count(*) FROM {prefix}{}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let n: i64 = conn.query_row(&sql, [], |r| r.get(0))?;
        counts.insert(
            table_key(&schema, &table),
            u64::try_from(n).unwrap_or_default(),
        );
    }
    Ok(counts)
}

/// The columns of every user table in `schema` (or of `table` alone), with their types, in order: one
/// query, for every crate that reads a table's shape.
pub fn table_columns(
    conn: &Connection,
    schema: &str,
    table: Option<&str>,
) -> Result<std::collections::BTreeMap<String, Vec<(String, String)>>, duckdb::Error> {
    let mut stmt = conn.prepare(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() \
         WHERE database_name = current_database() AND schema_name = ? \
         AND table_name = coalesce(?, table_name) ORDER BY table_name, column_index",
    )?;
    let rows = stmt.query_map(duckdb::params![schema, table], |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?;
    let mut tables: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for row in rows {
        let (table, column, data_type) = row?;
        tables.entry(table).or_default().push((column, data_type));
    }
    Ok(tables)
}

/// Quotes an identifier for DuckDB SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for DuckDB SQL.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_reach_duckdb_and_are_split_between_databases_open_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let limits = DuckDbLimits {
            memory_limit: Some(1024 * 1024 * 1024),
            threads: Some(3),
        };
        let layout =
            DataLayout::new(dir.path().join("a.db"), dir.path()).with_limits(limits.share(2));
        let conn = layout.open(&layout.db_path, OpenMode::Create).unwrap();
        let setting = |name: &str| -> String {
            conn.query_row(
                &format!("SELECT current_setting('{name}')::VARCHAR"),
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(setting("memory_limit"), "512.0 MiB");
        assert_eq!(setting("threads"), "1");
        let tiny = DuckDbLimits {
            memory_limit: Some(100 * 1024 * 1024),
            threads: None,
        };
        assert_eq!(tiny.share(8).memory_limit, Some(MIN_MEMORY_LIMIT));
        assert_eq!(DuckDbLimits::default().share(1), DuckDbLimits::default());
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        let split = DuckDbLimits::default().share(2);
        assert_eq!(
            split.threads,
            Some((cores / 2).max(1)),
            "unset threads are split too"
        );
        assert_eq!(split.memory_limit, None);
    }

    #[test]
    fn the_default_tenants_analytics_move_with_the_split() {
        let layout = DataLayout::new("/d/hitkeep.db", "/d/data");
        let (default, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let at = |l, t| layout.analytics_db(l, Some(default), t);
        for t in [None, Some(Uuid::nil()), Some(default)] {
            assert_eq!(at(TenantLayout::PreSplit, t), layout.db_path);
            assert_eq!(at(TenantLayout::Split, t), layout.tenant_db(default));
        }
        for l in [TenantLayout::PreSplit, TenantLayout::Split] {
            assert_eq!(at(l, Some(other)), layout.tenant_db(other));
        }
        assert_eq!(
            layout.analytics_db(TenantLayout::Split, None, None),
            layout.db_path,
            "no tenants table: everything is in the shared database"
        );
    }
}
