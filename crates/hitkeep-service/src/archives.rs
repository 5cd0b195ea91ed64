//! Using the retention archives: what they hold ([`list`]), SQL over them ([`query`]) and their rows
//! back into the live tables ([`restore`]). The archive run itself is [`Engine::archive`].

use std::path::PathBuf;

use hitkeep_archive::LedgerEntry;
use hitkeep_data::OpenMode;
use hitkeep_storage::Storage;
use uuid::Uuid;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// One file of a site's ledger, in any state.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ArchiveFile {
    /// Its key in the archive location.
    pub key: String,
    /// The site whose rows it holds.
    pub site_id: Uuid,
    /// The site's tenant.
    pub tenant_id: Uuid,
    /// The ledger's entry: state, cutoff, time range, size, rows per table.
    pub entry: LedgerEntry,
}

/// Every file the ledgers of the archive location list, by site, for one site or all.
pub async fn list(engine: &Engine, site: Option<Uuid>) -> Result<Vec<ArchiveFile>> {
    let storage = open(engine).await?;
    let mut files = Vec::new();
    for (dir, ledger) in hitkeep_archive::ledgers(&storage).await? {
        if site.is_some_and(|s| s != ledger.site_id) {
            continue;
        }
        for entry in ledger.entries {
            let key = if dir.is_empty() {
                entry.file.clone()
            } else {
                format!("{dir}/{}", entry.file)
            };
            files.push(ArchiveFile {
                key,
                site_id: ledger.site_id,
                tenant_id: ledger.tenant_id,
                entry,
            });
        }
    }
    Ok(files)
}

/// The result of a query: its column names and every row, each cell as text (`NULL` for null).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryRows {
    /// The result's columns.
    pub columns: Vec<String>,
    /// The rows, one cell per column.
    pub rows: Vec<Vec<String>>,
}

/// Runs `sql` in an in-memory DuckDB over the committed archive files of `site` (of every site
/// when `None`), which the view `archive` shows (`_source` naming each row's table). Files on S3
/// are downloaded once into the data path's archive cache.
pub async fn query(engine: &Engine, site: Option<Uuid>, sql: &str) -> Result<QueryRows> {
    let storage = open(engine).await?;
    let paths = committed_copies(engine, &storage, site).await?;
    let sql = sql.to_owned();
    tokio::task::spawn_blocking(move || run_query(&paths, site, &sql))
        .await
        .map_err(|e| Error::Panicked {
            job: "archive query",
            why: e.to_string(),
        })?
}

fn run_query(paths: &[PathBuf], site: Option<Uuid>, sql: &str) -> Result<QueryRows> {
    let failed = |what| move |source| Error::DuckDb { what, source };
    let conn = duckdb::Connection::open_in_memory().map_err(failed("an in-memory database"))?;
    hitkeep_archive::create_view(&conn, paths)?;
    if let Some(site) = site {
        // Several sites can share files on older layouts: the view shows only the one asked for.
        let list = paths
            .iter()
            .map(|p| hitkeep_data::quote_literal(&p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        conn.execute_batch(&format!("CREATE OR REPLACE TEMP VIEW archive AS SELECT * FROM read_parquet([{list}], union_by_name = true) WHERE site_id = '{site}'"))
            .map_err(failed("the archive view of one site"))?;
    }
    let mut stmt = conn.prepare(sql).map_err(failed("the query"))?;
    let mut rows = stmt.query([]).map_err(failed("the query"))?;
    // A column of DuckDB's NULL type (`SELECT NULL`) holds nothing else, and reading its cells
    // would panic in duckdb-rs: such columns are shown as NULL without being read.
    let (columns, untyped): (Vec<String>, Vec<bool>) = rows
        .as_ref()
        .map(|stmt| {
            let schema = stmt.schema();
            let untyped = schema
                .fields()
                .iter()
                .map(|f| f.data_type() == &duckdb::arrow::datatypes::DataType::Null);
            stmt.column_names().into_iter().zip(untyped).unzip()
        })
        .unwrap_or_default();
    let mut out = QueryRows {
        columns,
        rows: Vec::new(),
    };
    while let Some(row) = rows.next().map_err(failed("the query"))? {
        let cells = untyped
            .iter()
            .enumerate()
            .map(|(i, untyped)| {
                if *untyped {
                    return "NULL".to_owned();
                }
                row.get::<_, duckdb::types::Value>(i)
                    .map(|v| cell(&v))
                    .unwrap_or_default()
            })
            .collect();
        out.rows.push(cells);
    }
    Ok(out)
}

/// A value as text, the way DuckDB's Rust types show it without their wrapper (`Int(3)` is `3`).
fn cell(v: &duckdb::types::Value) -> String {
    use duckdb::types::Value as V;
    match v {
        V::Null => "NULL".to_owned(),
        V::Text(s) => s.clone(),
        other => format!("{other:?}").split_once('(').map_or_else(
            || format!("{other:?}"),
            |(_, rest)| rest.trim_end_matches(')').to_owned(),
        ),
    }
}

/// What [`restore`] put back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoredRows {
    /// Rows inserted per table, in the archive's table order (rows already present are skipped).
    pub tables: Vec<(String, u64)>,
    /// Files marked restored, after a restore of everything: queries stop counting them and the
    /// next run archives their rows afresh. `None` after a ranged restore, which leaves the files
    /// as the archive of record.
    pub retired: Option<usize>,
}

impl RestoredRows {
    /// Rows inserted over all tables.
    pub fn total(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// Puts the archived rows of `site` back into the database its rows came from, idempotently
/// (rows already present are skipped); `from`/`to` (`YYYY-MM-DD`, from inclusive, to exclusive)
/// limit it by each table's time column. A restore of everything retires the site's files.
pub async fn restore(
    engine: &Engine,
    site: Uuid,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<RestoredRows> {
    let storage = open(engine).await?;
    // The ledger knows whose database the rows came from, even if the site's retention is off now.
    let tenant = hitkeep_archive::ledgers(&storage)
        .await?
        .into_iter()
        .find(|(_, l)| l.site_id == site)
        .map(|(_, l)| l.tenant_id);
    let paths = committed_copies(engine, &storage, Some(site)).await?;
    let (layout, range) = (
        engine.layout().clone(),
        (from.map(str::to_owned), to.map(str::to_owned)),
    );
    let tables = tokio::task::spawn_blocking(move || {
        put_back(
            &layout,
            tenant,
            &paths,
            range.0.as_deref(),
            range.1.as_deref(),
        )
    })
    .await
    .map_err(|e| Error::Panicked {
        job: "archive restore",
        why: e.to_string(),
    })??;
    let retired = if from.is_none() && to.is_none() {
        Some(hitkeep_archive::mark_restored(&storage, site).await?)
    } else {
        None
    };
    Ok(RestoredRows { tables, retired })
}

/// Inserts the rows of `paths` into the analytics database of `tenant`: by the same rule as
/// archiving, the shared database for the default tenant before HitKeep's split and its own
/// database after; any other tenant must have its database, or the rows would land where the
/// server never reads them.
fn put_back(
    layout: &hitkeep_data::DataLayout,
    tenant: Option<Uuid>,
    paths: &[PathBuf],
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<(String, u64)>> {
    let shared = layout.open(&layout.db_path, OpenMode::Existing)?;
    let default = hitkeep_archive::default_tenant(&shared);
    let (split, _) = hitkeep_data::detect_layout(&shared)
        .map_err(|e| hitkeep_data::DataError::from_duckdb(&layout.db_path, e))?;
    let path = layout.analytics_db(split, default, tenant);
    let conn = if path == layout.db_path {
        shared
    } else {
        layout.open(&path, OpenMode::Existing)?
    };
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    Ok(hitkeep_archive::restore_rows(&conn, paths, from, to)?)
}

/// Opens the archive location, which must exist.
async fn open(engine: &Engine) -> Result<Storage> {
    let settings = engine.settings();
    Ok(Storage::open_existing(&settings.archive, &settings.s3).await?)
}

/// Local copies of the committed files (rows gone from the database) of `site`, or of all sites.
async fn committed_copies(
    engine: &Engine,
    storage: &Storage,
    site: Option<Uuid>,
) -> Result<Vec<PathBuf>> {
    let objects: Vec<_> = hitkeep_archive::files(storage, site)
        .await?
        .into_iter()
        .map(|(object, _, _)| object)
        .collect();
    let cache = engine.layout().archive_cache_dir();
    let opener = engine.archive_opener()?;
    Ok(hitkeep_archive::local_copies(storage, &objects, &cache, opener.as_deref()).await?)
}
