//! One archive run: per site, count the expired rows, export them to one Parquet file, upload it, read it
//! back and check it, and only then delete them in one transaction that first checks, by content, that
//! the rows it deletes are the rows of that file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use duckdb::Connection;
use futures::StreamExt;
use hitkeep_data::{
    DataLayout, OpenMode, PARQUET_WRITE_SETTINGS, Paused, is_missing_schema, quote_ident,
    quote_literal, with_settings,
};
use hitkeep_storage::{ObjectInfo, Storage, TransferOptions};
use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

use crate::compare::{Comparison, CopyPrint, read_copy, rows_not_in};
use crate::error::{Error, Result};
use crate::ledger::{EntryFormat, EntryState, LEDGER_VERSION, Ledger, LedgerEntry};
use crate::sealed::Expect;
use crate::tables::{Cutoff, Grain, TABLES};

/// A site with a retention window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SitePolicy {
    /// The site.
    pub site_id: Uuid,
    /// Its tenant; `None` for the default tenant, whose rows live in the shared database before
    /// HitKeep 2.13's split and in the default tenant's own database after it.
    pub tenant_id: Option<Uuid>,
    /// Retention in days.
    pub days: u32,
}

/// Options for a run.
#[derive(Clone)]
#[non_exhaustive]
pub struct ArchiveOptions {
    /// The staging root ([`DataLayout::staging_root`]): each site's export and read-back go into a
    /// folder of their own in it ([`hitkeep_data::StagingDir`]), removed when the site is done.
    pub staging_dir: PathBuf,
    /// Count only; change nothing.
    pub dry_run: bool,
    /// The run's "now"; each site's cutoff is this minus its retention.
    pub now: Timestamp,
    /// Told what the run does as it goes.
    pub events: Arc<dyn ArchiveEvents>,
    /// When set, every file is sealed to these recipients (the operator's, and the host's archive
    /// key) before its upload.
    pub sealer: Option<Arc<hitkeep_seal::Sealer>>,
    /// What opens sealed files: the run's read-backs and the recovery of a run that stopped before
    /// its delete.
    pub opener: Option<Arc<hitkeep_seal::Opener>>,
}

impl std::fmt::Debug for ArchiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveOptions")
            .field("staging_dir", &self.staging_dir)
            .field("dry_run", &self.dry_run)
            .field("now", &self.now)
            .field("sealer", &self.sealer)
            .field("opener", &self.opener)
            .finish_non_exhaustive()
    }
}

impl ArchiveOptions {
    /// Staging inside the data directory; now is now.
    pub fn for_layout(layout: &DataLayout, dry_run: bool) -> Self {
        ArchiveOptions {
            staging_dir: layout.staging_root(),
            dry_run,
            now: Timestamp::now(),
            events: Arc::new(NoEvents),
            sealer: None,
            opener: None,
        }
    }

    /// The same options, telling `events` what the run does.
    pub fn with_events(mut self, events: Arc<dyn ArchiveEvents>) -> Self {
        self.events = events;
        self
    }
}

/// Hears what an archive run does, as it does it; every method has a no-op default. An embedding
/// server can log or meter with it. It is called on the run's own task, between two steps of a site,
/// so it should return quickly; whatever it does to the database in the meantime is what the next
/// step meets (the delete checks the rows by content, whoever changed them).
pub trait ArchiveEvents: Send + Sync {
    /// The archive object `key` holds `counts` rows per table of `site`, uploaded, read back and
    /// recorded as verified in the ledger; the delete of those rows starts next.
    fn verified(&self, _site: Uuid, _key: &str, _counts: &BTreeMap<String, u64>) {}
    /// Asked before each site: `true` ends the run there (a shutdown), the site in progress done.
    fn should_stop(&self) -> bool {
        false
    }
    /// A site the run did not start because it was asked to stop; the next run archives it.
    fn not_started(&self, _site: Uuid) {}
}

/// Hears nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl ArchiveEvents for NoEvents {}

/// What happened to one site.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SiteReport {
    /// The policy.
    pub policy: SitePolicy,
    /// The cutoff instant.
    pub cutoff: String,
    /// Expired rows per table (those archived, or that would be in a dry run).
    pub counts: BTreeMap<String, u64>,
    /// The archive written, if any: the pattern its objects' keys match, `{dir}/{run}.*.parquet`.
    pub file: Option<String>,
    /// The archive objects written, one per table with rows.
    pub files: Vec<String>,
    /// Unfinished work of an earlier run that this run completed or discarded.
    pub recovered: Vec<String>,
    /// `rollup_dirty_buckets` rows dropped: markers of expired buckets, which HitKeep deletes (not
    /// archives) with the rest of the site's expired rows.
    pub dirty_buckets_pruned: u64,
}

/// The default tenant's id (the oldest tenant on older schemas), or `None` without a tenants table.
pub fn default_tenant(shared: &Connection) -> Option<Uuid> {
    hitkeep_data::default_tenant(shared).ok().flatten()
}

/// Sites with `data_retention_days > 0`, each mapped to its tenant (no mapping: the default tenant).
pub fn load_policies(shared: &Connection) -> Result<Vec<SitePolicy>> {
    let default = default_tenant(shared);
    let joined = "SELECT CAST(s.id AS VARCHAR), s.data_retention_days, CAST(st.tenant_id AS VARCHAR) FROM sites s \
                  LEFT JOIN site_tenants st ON st.site_id = s.id WHERE s.data_retention_days > 0 ORDER BY s.id";
    let legacy = "SELECT CAST(s.id AS VARCHAR), s.data_retention_days, NULL FROM sites s WHERE s.data_retention_days > 0 ORDER BY s.id";
    let mut stmt = match shared.prepare(joined) {
        Ok(s) => s,
        Err(e) if is_missing_schema(&e) => shared
            .prepare(legacy)
            .map_err(|e| Error::duckdb("loading retention policies", e))?,
        Err(e) => return Err(Error::duckdb("loading retention policies", e)),
    };
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(|e| Error::duckdb("loading retention policies", e))?;
    let mut policies = Vec::new();
    for row in rows {
        let (site, days, tenant) =
            row.map_err(|e| Error::duckdb("loading retention policies", e))?;
        let (Ok(site_id), Ok(days)) = (Uuid::parse_str(&site), u32::try_from(days)) else {
            continue;
        };
        let tenant_id = tenant
            .and_then(|t| Uuid::parse_str(&t).ok())
            .filter(|t| Some(*t) != default);
        policies.push(SitePolicy {
            site_id,
            tenant_id,
            days,
        });
    }
    Ok(policies)
}

/// Where a site's archive files go, relative to the archive location. HitKeep's layout: on local disk the
/// default tenant's files sit in the root; everything else (and everything on S3) under
/// `tenants/{tenant}/sites/{site}/`.
pub fn site_dir(storage: &Storage, policy: &SitePolicy, default_tenant: Option<Uuid>) -> String {
    match (policy.tenant_id, storage.location().is_s3()) {
        (None, false) => String::new(),
        (tenant, _) => format!(
            "tenants/{}/sites/{}",
            tenant.or(default_tenant).unwrap_or(Uuid::nil()),
            policy.site_id
        ),
    }
}

/// The ledger sits next to the site's files: `ledger.json` in a site folder, `site_{id}.ledger.json` in the
/// flat local root that the default tenant's sites share.
pub fn ledger_key(dir: &str, policy: &SitePolicy) -> String {
    ledger_key_for(dir, policy.site_id)
}

pub(crate) fn ledger_key_for(dir: &str, site: Uuid) -> String {
    if dir.is_empty() {
        format!("site_{site}.ledger.json")
    } else {
        format!("{dir}/ledger.json")
    }
}

/// A run's name, which its objects' names begin with (`{name}.{table}.parquet`, HitKeep's
/// `site_*.parquet`): `site_{site}_{unix}` in the flat local root that several sites share, and
/// `site_{unix}` in a site's own folder, which names the site already. Keys stay as short as
/// HitKeep's one-file names: S3 allows 1024 bytes, but servers that keep a key in one file name
/// (s3s-fs) have 255.
fn run_name(dir: &str, site: Uuid, now: Timestamp) -> String {
    if dir.is_empty() {
        format!("site_{site}_{}", now.as_second())
    } else {
        format!("site_{}", now.as_second())
    }
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Runs retention for every site, each on its own database; one site's failure does not stop the others.
/// On a split install (HitKeep 2.13) the default tenant's sites are read from its own database.
pub async fn run(
    storage: &Storage,
    layout: &DataLayout,
    options: &ArchiveOptions,
) -> Result<Vec<Result<SiteReport>>> {
    let shared = layout.open(&layout.db_path, OpenMode::Existing)?;
    let policies = load_policies(&shared)?;
    let default = default_tenant(&shared);
    let (tenant_layout, _) = hitkeep_data::detect_layout(&shared)
        .map_err(|e| Error::duckdb("reading the data layout", e))?;
    let default_db = Some(layout.analytics_db(tenant_layout, default, None))
        .filter(|path| *path != layout.db_path);
    let mut default_conn: Option<Connection> = None;
    let mut reports = Vec::new();
    for policy in policies {
        if options.events.should_stop() {
            tracing::warn!(site = %policy.site_id, "not archived in this run: stopping for shutdown; the next run archives it");
            options.events.not_started(policy.site_id);
            continue;
        }
        let (path, conn) = match (policy.tenant_id, &default_db) {
            (None, None) => (
                layout.db_path.clone(),
                shared
                    .try_clone()
                    .map_err(|e| Error::duckdb("opening the shared database", e)),
            ),
            // The default tenant's file must exist on a split install: HitKeep would not start without it.
            (None, Some(path)) => (
                path.clone(),
                default_tenant_conn(layout, path, &mut default_conn),
            ),
            (Some(t), _) => {
                let path = layout.tenant_db(t);
                match layout.open(&path, OpenMode::Existing) {
                    Err(hitkeep_data::DataError::Missing { path }) => {
                        tracing::warn!(site = %policy.site_id, tenant = %t, path = %path.display(), "tenant has no database; nothing to archive");
                        continue;
                    }
                    other => (path, other.map_err(Error::from)),
                }
            }
        };
        let report = match conn {
            Ok(conn) => {
                let pause = || layout.pause_rewrites(&path);
                archive_site_pausing(storage, &conn, &policy, default, options, &pause).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &report {
            tracing::error!(site = %policy.site_id, error = %e, "archiving the site failed");
        }
        reports.push(report);
    }
    Ok(reports)
}

/// A connection to the default tenant's database at `path` on a split install: opened for its first
/// site and kept in `kept` for the next ones (an open that failed is tried again by the next site).
fn default_tenant_conn(
    layout: &DataLayout,
    path: &Path,
    kept: &mut Option<Connection>,
) -> Result<Connection> {
    let conn = match kept.take() {
        Some(conn) => conn,
        None => layout.open(path, OpenMode::Existing)?,
    };
    let clone = conn
        .try_clone()
        .map_err(|e| Error::duckdb("opening the default tenant's database", e));
    *kept = Some(conn);
    clone
}

/// Archives one site's expired rows from `conn` (the database that holds them). Nothing holds back
/// rewrites of those rows by other connections during the delete ([`HeldDatabases::pause_rewrites`]
/// does, through [`run`]).
///
/// [`HeldDatabases::pause_rewrites`]: hitkeep_data::HeldDatabases::pause_rewrites
pub async fn archive_site(
    storage: &Storage,
    conn: &Connection,
    policy: &SitePolicy,
    default_tenant: Option<Uuid>,
    options: &ArchiveOptions,
) -> Result<SiteReport> {
    archive_site_pausing(storage, conn, policy, default_tenant, options, &|| None).await
}

/// What holds back a server's in-place rewrites of the site's database while its delete runs.
type Pause<'a> = dyn Fn() -> Option<Box<dyn Paused + 'a>> + Sync + 'a;

async fn archive_site_pausing(
    storage: &Storage,
    conn: &Connection,
    policy: &SitePolicy,
    default_tenant: Option<Uuid>,
    options: &ArchiveOptions,
    pause: &Pause<'_>,
) -> Result<SiteReport> {
    let Some(cutoff) = Cutoff::days_before(options.now, policy.days) else {
        tracing::info!(site = %policy.site_id, days = policy.days, "the retention window reaches before any data; nothing expires");
        return Ok(SiteReport {
            policy: *policy,
            cutoff: "-".into(),
            counts: BTreeMap::new(),
            file: None,
            files: Vec::new(),
            recovered: Vec::new(),
            dirty_buckets_pruned: 0,
        });
    };
    let dir = site_dir(storage, policy, default_tenant);
    let ledger_key = ledger_key(&dir, policy);
    let mut ledger = load_ledger(storage, &ledger_key, policy, default_tenant).await?;
    let mut recovered = Vec::new();
    if !options.dry_run {
        recover(
            storage,
            conn,
            policy,
            (&dir, &ledger_key),
            &mut ledger,
            &mut recovered,
            (options.opener.as_deref(), pause),
        )
        .await?;
    }
    tracing::debug!(site = %policy.site_id, "ledger read and earlier runs recovered");
    let (counts, oldest, newest) =
        tokio::task::block_in_place(|| count(conn, policy.site_id, cutoff))?;
    tracing::debug!(site = %policy.site_id, "expired rows counted");
    let mut report = SiteReport {
        policy: *policy,
        cutoff: cutoff.instant().to_string(),
        counts: counts.clone(),
        file: None,
        files: Vec::new(),
        recovered,
        dirty_buckets_pruned: 0,
    };
    if options.dry_run {
        return Ok(report);
    }
    if counts.values().all(|n| *n == 0) {
        report.dirty_buckets_pruned =
            tokio::task::block_in_place(|| prune_dirty_buckets(conn, policy.site_id, cutoff))?;
        return Ok(report);
    }
    let mut name = run_name(&dir, policy.site_id, options.now);
    if ledger.entries.iter().any(|e| e.file == name) {
        name = format!("{name}_{}", ledger.entries.len());
    }
    let parts: BTreeMap<String, String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(table, _)| (table.clone(), format!("{name}.{table}.parquet")))
        .collect();
    // What the run's objects' keys match, as a glob (DuckDB's `read_parquet` takes it too).
    let pattern = format!("{}.*.parquet", join(&dir, &name));
    ledger.entries.push(LedgerEntry {
        file: name.clone(),
        cutoff: cutoff.instant().to_string(),
        counts: counts.clone(),
        oldest,
        newest,
        size: 0,
        state: EntryState::Pending,
        format: EntryFormat::PerTable {
            parts: parts.clone(),
        },
        stored: BTreeMap::new(),
    });

    let staging =
        hitkeep_data::StagingDir::claim(&options.staging_dir, hitkeep_data::JobKind::Archive)?;
    let exported = export_and_verify(
        storage,
        conn,
        ExportPlan {
            site: policy.site_id,
            cutoff,
            dir: &dir,
            parts: &parts,
            counts: &counts,
            scratch: staging.path(),
            sealer: options.sealer.as_deref(),
            opener: options.opener.as_deref(),
        },
        save_ledger(storage, &ledger_key, &ledger),
    )
    .await?;
    tracing::debug!(site = %policy.site_id, "exported, uploaded and read back");
    let entry = ledger.entries.last_mut().expect("just pushed");
    entry.size = exported.size;
    entry.stored = exported.stored;
    entry.state = EntryState::Verified;
    save_ledger(storage, &ledger_key, &ledger).await?;
    tracing::debug!(site = %policy.site_id, "ledger entry verified");
    options.events.verified(policy.site_id, &pattern, &counts);

    let verified = VerifiedFile {
        key: &pattern,
        parts: parts
            .iter()
            .map(|(table, part)| (table.clone(), join(&dir, part)))
            .collect(),
        copies: &exported.copies,
        prints: &exported.prints,
        exact: true,
        hint: "another connection changed expired rows after they were exported (an embedding server rewriting old rows); the next run discards this file and archives the rows as they are then",
    };
    let delete = || delete_archived(conn, policy.site_id, cutoff, &verified, pause);
    match tokio::task::block_in_place(delete) {
        Ok(()) => {}
        // Nothing was deleted: the file is no archive of record. Pending, the next run removes it
        // and archives afresh; left verified, its recovery would refuse the changed rows for ever.
        Err(DeleteFailure::RolledBack(e)) => {
            ledger.entries.last_mut().expect("just pushed").state = EntryState::Pending;
            save_ledger(storage, &ledger_key, &ledger).await?;
            return Err(e);
        }
        // The rows may be gone: the entry stays verified, and the next run's recovery compares.
        Err(DeleteFailure::Commit(e)) => return Err(e),
    }
    ledger.entries.last_mut().expect("just pushed").state = EntryState::Deleted;
    save_ledger(storage, &ledger_key, &ledger).await?;
    report.dirty_buckets_pruned =
        tokio::task::block_in_place(|| prune_dirty_buckets(conn, policy.site_id, cutoff))?;
    tracing::info!(site = %policy.site_id, files = pattern, rows = counts.values().sum::<u64>(), "archived expired rows");
    report.file = Some(pattern);
    report.files = parts.values().map(|part| join(&dir, part)).collect();
    Ok(report)
}

/// Finishes or discards what an earlier run left: verified files get their delete, pending ones
/// (unverified, or whose rows changed before their delete) are removed with their ledger entry.
async fn recover(
    storage: &Storage,
    conn: &Connection,
    policy: &SitePolicy,
    (dir, ledger_key): (&str, &str),
    ledger: &mut Ledger,
    recovered: &mut Vec<String>,
    (opener, pause): (Option<&hitkeep_seal::Opener>, &Pause<'_>),
) -> Result<()> {
    let mut i = 0;
    while i < ledger.entries.len() {
        let entry = ledger.entries[i].clone();
        match entry.state {
            EntryState::Pending => {
                for object in entry.objects() {
                    storage.delete(&join(dir, object)).await?;
                }
                ledger.entries.remove(i);
                save_ledger(storage, ledger_key, ledger).await?;
                recovered.push(format!(
                    "discarded {}, whose rows were never deleted",
                    entry.file
                ));
            }
            EntryState::Deleted | EntryState::Restored => i += 1,
            EntryState::Verified => {
                let instant: Timestamp =
                    entry.cutoff.parse().map_err(|_| Error::LedgerCorrupt {
                        key: ledger_key.to_owned(),
                        why: format!("bad cutoff {:?}", entry.cutoff),
                    })?;
                let cutoff = Cutoff::at(instant);
                let scratch =
                    tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
                let key = match entry.format {
                    EntryFormat::OneFile => join(dir, &entry.file),
                    EntryFormat::PerTable { .. } => format!("{}.*.parquet", join(dir, &entry.file)),
                };
                let copies = download_copies(storage, dir, &entry, scratch.path(), opener).await?;
                // Not exact: the interrupted delete may have committed (its rows are gone, and the
                // file holds more than is live). Every live row before the cutoff must still be in
                // the file: rows replaced since, e.g. by a re-import, are in no archive.
                let verified = VerifiedFile {
                    key: &key,
                    parts: match &entry.format {
                        EntryFormat::OneFile => BTreeMap::new(),
                        EntryFormat::PerTable { parts } => parts
                            .iter()
                            .map(|(table, part)| (table.clone(), join(dir, part)))
                            .collect(),
                    },
                    copies: &copies,
                    prints: &BTreeMap::new(),
                    exact: false,
                    hint: "these rows changed after an earlier run verified this file and stopped before its delete; nothing is deleted until they are looked into (archive them into a file of their own first, or put the file's rows back with `hitkeep archive restore`)",
                };
                tokio::task::block_in_place(|| {
                    delete_archived(conn, policy.site_id, cutoff, &verified, pause)
                })
                .map_err(DeleteFailure::into_error)?;
                ledger.entries[i].state = EntryState::Deleted;
                save_ledger(storage, ledger_key, ledger).await?;
                recovered.push(format!("finished the delete for verified {}", entry.file));
                i += 1;
            }
        }
    }
    Ok(())
}

async fn load_ledger(
    storage: &Storage,
    key: &str,
    policy: &SitePolicy,
    default_tenant: Option<Uuid>,
) -> Result<Ledger> {
    if storage.stat(key).await?.is_none() {
        return Ok(Ledger {
            format_version: LEDGER_VERSION,
            site_id: policy.site_id,
            tenant_id: policy.tenant_id.or(default_tenant).unwrap_or(Uuid::nil()),
            entries: Vec::new(),
        });
    }
    Ledger::parse(key, &storage.read(key).await?)
}

/// Writes `ledger` in this build's format: entries carry their `format` field, which a format 1
/// ledger must not have, so one read in format 1 is written back as format [`LEDGER_VERSION`].
pub(crate) async fn save_ledger(storage: &Storage, key: &str, ledger: &Ledger) -> Result<()> {
    let current = Ledger {
        format_version: LEDGER_VERSION,
        ..ledger.clone()
    };
    let bytes = serde_json::to_vec_pretty(&current).expect("ledgers serialise");
    storage.write(key, bytes).await?;
    Ok(())
}

/// The tables of [`TABLES`] that exist in this database (older schemas lack some).
pub(crate) fn present_tables(
    conn: &Connection,
) -> Result<Vec<&'static crate::tables::ArchiveTable>> {
    let existing: Vec<String> = hitkeep_data::user_tables(conn)
        .map_err(|e| Error::duckdb("listing tables", e))?
        .into_iter()
        .filter(|(schema, _)| schema == "main")
        .map(|(_, t)| t)
        .collect();
    Ok(TABLES
        .iter()
        .filter(|t| {
            let present = existing.iter().any(|e| e == t.name);
            if !present {
                tracing::debug!(table = t.name, "table missing in this schema; skipped");
            }
            present
        })
        .collect())
}

pub(crate) fn predicate(site: Uuid, table: &crate::tables::ArchiveTable, cutoff: Cutoff) -> String {
    format!(
        "site_id = '{site}' AND {} < {}",
        quote_ident(table.column),
        cutoff.bound(table.grain)
    )
}

/// One query over every table of `tables`: per table its name, its rows before `cutoff`, and
/// `more(table)` (further aggregates over those rows), as one `UNION ALL`.
pub(crate) fn per_table_query(
    tables: &[&crate::tables::ArchiveTable],
    site: Uuid,
    cutoff: Cutoff,
    more: impl Fn(&crate::tables::ArchiveTable) -> String,
) -> String {
    tables
        .iter()
        .map(|table| {
            format!(
                "SELECT {}, count(*), {} FROM {} WHERE {}",
                quote_literal(table.name),
                more(table),
                quote_ident(table.name),
                predicate(site, table, cutoff)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

type Counts = (BTreeMap<String, u64>, Option<String>, Option<String>);

/// Rows before `cutoff` per present table, with the oldest and newest time among them: one query
/// over every table (a query each cost a few milliseconds apiece, 23 per count).
fn count(conn: &Connection, site: Uuid, cutoff: Cutoff) -> Result<Counts> {
    let (mut counts, mut oldest, mut newest): (
        BTreeMap<String, u64>,
        Option<String>,
        Option<String>,
    ) = Default::default();
    let tables = present_tables(conn)?;
    if tables.is_empty() {
        return Ok((counts, oldest, newest));
    }
    let sql = per_table_query(&tables, site, cutoff, |table| {
        let col = quote_ident(table.column);
        format!("CAST(min({col}) AS VARCHAR), CAST(max({col}) AS VARCHAR)")
    });
    let failed = |e| Error::duckdb("counting expired rows", e);
    let mut stmt = conn.prepare(&sql).map_err(failed)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(failed)?;
    for row in rows {
        let (table, n, lo, hi) = row.map_err(failed)?;
        counts.insert(table, u64::try_from(n).unwrap_or_default());
        oldest = [oldest, lo].into_iter().flatten().min();
        newest = [newest, hi].into_iter().flatten().max();
    }
    Ok((counts, oldest, newest))
}

/// Local copies of an entry's objects, as read back from storage.
#[derive(Clone, Debug)]
pub(crate) enum Copies {
    /// One file with every table's rows, told apart by `_source` (format 1 entries, HitKeep's).
    OneFile(PathBuf),
    /// One file per table with rows.
    PerTable(BTreeMap<String, PathBuf>),
}

impl Copies {
    fn paths(&self) -> Vec<&Path> {
        match self {
            Copies::OneFile(path) => vec![path.as_path()],
            Copies::PerTable(parts) => parts.values().map(PathBuf::as_path).collect(),
        }
    }

    /// Rows per `_source` over all the copies.
    pub(crate) fn counts(&self, conn: &Connection) -> Result<BTreeMap<String, u64>> {
        let paths = self.paths();
        if paths.is_empty() {
            return Ok(BTreeMap::new());
        }
        source_counts(
            conn,
            &format!("read_parquet({}, union_by_name = true)", path_list(&paths)),
        )
    }

    /// The SQL that reads `table`'s rows from the copies, or `None` when they hold none of its rows.
    pub(crate) fn rows_of(&self, table: &str) -> Option<String> {
        match self {
            Copies::OneFile(path) => Some(format!(
                "read_parquet({}) WHERE _source = {}",
                quote_literal(&path.display().to_string()),
                quote_literal(table)
            )),
            Copies::PerTable(parts) => parts.get(table).map(|path| {
                format!(
                    "read_parquet({}) WHERE _source = {}",
                    quote_literal(&path.display().to_string()),
                    quote_literal(table)
                )
            }),
        }
    }
}

/// `[ 'a', 'b' ]` for `read_parquet`.
fn path_list(paths: &[&Path]) -> String {
    let list = paths
        .iter()
        .map(|p| quote_literal(&p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[{list}]")
}

/// `SELECT _source, count(*) FROM {from} GROUP BY 1` as a map.
fn source_counts(conn: &Connection, from: &str) -> Result<BTreeMap<String, u64>> {
    let sql = format!("SELECT _source, count(*) FROM {from} GROUP BY 1");
    let counts: BTreeMap<String, i64> = named_values(conn, &sql, "reading the archive back")?;
    Ok(counts
        .into_iter()
        .map(|(t, n)| (t, u64::try_from(n).unwrap_or_default()))
        .collect())
}

/// The rows of `sql`, a name and a value each, as a map.
pub(crate) fn named_values<T: duckdb::types::FromSql>(
    conn: &Connection,
    sql: &str,
    context: &'static str,
) -> Result<BTreeMap<String, T>> {
    let failed = |e| Error::duckdb(context, e);
    let mut stmt = conn.prepare(sql).map_err(failed)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, T>(1)?)))
        .map_err(failed)?;
    rows.collect::<std::result::Result<_, _>>().map_err(failed)
}

/// Downloads an entry's objects into `scratch`, for the delete to compare with; each must hold what
/// the entry recorded of it, when it did.
async fn download_copies(
    storage: &Storage,
    dir: &str,
    entry: &LedgerEntry,
    scratch: &Path,
    opener: Option<&hitkeep_seal::Opener>,
) -> Result<Copies> {
    if entry.stored.is_empty() {
        tracing::warn!(
            entry = entry.file,
            "this entry records no size and SHA-256 of its objects (written before hitkeep recorded them): they are compared as they are"
        );
    }
    let fetch = |object: &str, local: PathBuf| {
        let (key, recorded) = (join(dir, object), entry.stored_info(object));
        async move {
            let expect = Expect::archived(recorded.as_ref());
            crate::sealed::fetch(storage, &key, &local, opener, expect).await?;
            Ok::<_, Error>(local)
        }
    };
    match &entry.format {
        EntryFormat::OneFile => Ok(Copies::OneFile(
            fetch(&entry.file, scratch.join("verified.parquet")).await?,
        )),
        EntryFormat::PerTable { parts } => {
            let mut copies = BTreeMap::new();
            for (table, object) in parts {
                let local = scratch.join(format!("verified.{table}.parquet"));
                copies.insert(table.clone(), fetch(object, local).await?);
            }
            Ok(Copies::PerTable(copies))
        }
    }
}

/// What [`export_and_verify`] writes: one file per table with rows, into the site's folder.
struct ExportPlan<'a> {
    site: Uuid,
    cutoff: Cutoff,
    /// The site's folder in the archive location.
    dir: &'a str,
    /// Table to object name.
    parts: &'a BTreeMap<String, String>,
    /// Rows per table counted before the export; every part must read back with its table's.
    counts: &'a BTreeMap<String, u64>,
    /// The site's staging folder: the exports and their read-back copies.
    scratch: &'a Path,
    /// Seals each file before its upload, when set.
    sealer: Option<&'a hitkeep_seal::Sealer>,
    /// Opens the sealed read-backs.
    opener: Option<&'a hitkeep_seal::Opener>,
}

/// The verified objects of an entry.
struct Exported {
    /// Their read-back copies.
    copies: Copies,
    /// What the read-back learned of each copy, for the delete's comparison.
    prints: BTreeMap<String, CopyPrint>,
    /// Bytes over all of them.
    size: u64,
    /// Object name to what it holds, as uploaded and read back: for the ledger.
    stored: BTreeMap<String, ObjectInfo>,
}

/// Exports the site's expired rows, one file per table, on a blocking thread, while `pending` (the
/// ledger's pending entry) is saved; then uploads each file as soon as DuckDB has written it, and
/// reads it back and counts it, several tables side by side while the next ones are exported: each
/// object is a few round trips, and one after the other they left the run waiting on the network
/// (23 tables per site). Nothing is uploaded before the pending entry is saved, so a crash leaves no
/// object the ledger does not name. On a failure, the objects uploaded so far are removed (the
/// pending entry would have the next run remove them).
async fn export_and_verify(
    storage: &Storage,
    conn: &Connection,
    plan: ExportPlan<'_>,
    pending: impl std::future::Future<Output = Result<()>>,
) -> Result<Exported> {
    let exporter = conn
        .try_clone()
        .map_err(|e| Error::duckdb("opening a connection for the export", e))?;
    let tables: Vec<(&'static crate::tables::ArchiveTable, PathBuf)> = present_tables(conn)?
        .into_iter()
        .filter_map(|t| {
            let object = plan.parts.get(t.name)?;
            Some((t, plan.scratch.join(object)))
        })
        .collect();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (site, cutoff) = (plan.site, plan.cutoff);
    let job = tokio::task::spawn_blocking(move || export(&exporter, site, cutoff, &tables, &tx));
    // Every key an upload was started for, finished or not: all are removed on a failure.
    let uploaded = std::sync::Mutex::new(Vec::new());
    let outcome = async {
        // While the first table exports (~20 ms at 1M hits, on the async thread). Past the spawn every
        // return waits for the export, which stops at its next table once this block has ended and
        // dropped `rx`. The live columns make each read-back's print ([`CopyPrint`]); read after the
        // export began they are still only a shortcut: a table whose columns differ at the delete is
        // compared the long way.
        let reader = ReadBack::open()?;
        let live_columns = crate::browse::tables_columns(conn)?;
        pending.await?;
        // After a failure no new table starts (the export then stops: nobody receives), but the
        // transfers in flight run to their end: one dropped mid-way can leave a multipart upload
        // open on the server or create a file after the scratch folder was removed.
        let failed = AtomicBool::new(false);
        let (failed, plan, uploaded) = (&failed, &plan, &uploaded);
        let readers = (&reader, &live_columns);
        let sent = tokio_stream_of(rx)
            .take_while(|_| std::future::ready(!failed.load(Ordering::Relaxed)))
            .map(|(table, local)| async move {
                let outcome =
                    send_and_check(storage, plan, (table, local), uploaded, readers).await;
                failed.fetch_or(outcome.is_err(), Ordering::Relaxed);
                outcome
            })
            .buffer_unordered(TABLES_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        reader.close_aside();
        let (mut size, mut copies, mut prints) = (0, BTreeMap::new(), BTreeMap::new());
        let mut stored = BTreeMap::new();
        for (table, copy, info, print) in sent {
            size += info.size;
            stored.insert(plan.parts[table].clone(), info);
            copies.insert(table.to_owned(), copy);
            if let Some(print) = print {
                prints.insert(table.to_owned(), print);
            }
        }
        Ok(Exported {
            size,
            copies: Copies::PerTable(copies),
            prints,
            stored,
        })
    }
    .await;
    // The export thread stops at its next table once nobody receives; it is always waited for.
    // A panic in the export is a bug, and goes on as one (as it did when the export ran inline).
    let exported = job
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    // The uploads' failure says why first; when they all went well, the export's own outcome.
    let outcome = outcome.and_then(|done| exported.map(|()| done));
    if outcome.is_err() {
        let uploaded = uploaded.into_inner().unwrap_or_else(|e| e.into_inner());
        for key in &uploaded {
            if let Err(e) = storage.delete(key).await {
                tracing::warn!(key, error = %e, "removing an unverified archive object failed; the next run removes it");
            }
        }
    }
    outcome
}

/// Each table's columns and their types, as the export's read-backs print them.
type LiveColumns = BTreeMap<String, Vec<(String, String)>>;

/// Tables sent and read back at once. Most of a site's 23 tables are small, each a few round trips
/// (upload, download, one query): 4 at once left ~0.15 s of them after the export at 1M hits, 12
/// leave ~0.05 s (measured). The export does not wait for them: this bounds connections and
/// read-back queries, not disk.
const TABLES_AT_ONCE: usize = 12;

/// The export's files as a stream, ended when the export thread drops its sender (or stops early).
fn tokio_stream_of<T>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Uploads one table's file, removes the local export (its space is the next table's) and reads the
/// object back into a copy that must hold exactly the bytes sent and the table's expected rows.
async fn send_and_check(
    storage: &Storage,
    plan: &ExportPlan<'_>,
    (table, local): (&'static str, PathBuf),
    uploaded: &std::sync::Mutex<Vec<String>>,
    (reader, live_columns): (&ReadBack, &LiveColumns),
) -> Result<(&'static str, PathBuf, ObjectInfo, Option<CopyPrint>)> {
    let object = &plan.parts[table];
    let key = join(plan.dir, object);
    let sent = send_file(storage, plan.sealer, &local, &key, uploaded).await;
    let _ = std::fs::remove_file(&local);
    let sent = sent?;
    tracing::trace!(table, size = sent.size, "uploaded");
    let expected = plan.counts.get(table).copied().unwrap_or(0);
    let copy = plan.scratch.join(format!("readback.{object}"));
    let print = verify_object(
        storage,
        &key,
        (table, expected, live_columns.get(table)),
        (&sent, &copy),
        (reader, plan.opener),
    )
    .await;
    if print.is_err() {
        let _ = std::fs::remove_file(&copy);
    }
    let print = print?;
    tracing::trace!(table, "read back");
    Ok((table, copy, sent, print))
}

/// Uploads `local` as `key`, sealed first when the run seals (no plaintext is uploaded then; the
/// read-back opens the stored object with the host's archive key): what was stored.
async fn send_file(
    storage: &Storage,
    sealer: Option<&hitkeep_seal::Sealer>,
    local: &Path,
    key: &str,
    uploaded: &std::sync::Mutex<Vec<String>>,
) -> Result<ObjectInfo> {
    let sealed = local.with_extension("parquet.age");
    let source = match sealer {
        Some(sealer) => {
            if let Err(e) = crate::sealed::seal(sealer, local, &sealed).await {
                let _ = std::fs::remove_file(&sealed);
                return Err(e);
            }
            sealed.as_path()
        }
        None => local,
    };
    uploaded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(key.to_owned());
    let info = storage
        .upload_file(source, key, &TransferOptions::default())
        .await;
    if sealer.is_some() {
        let _ = std::fs::remove_file(&sealed);
    }
    Ok(info?)
}

/// One `COPY` per table, `_source` first (the contract every reader of an archive relies on), all in
/// one transaction: the files are one snapshot. Each file is sent to `done` once written; a closed
/// channel (the uploads failed) ends the export.
fn export(
    conn: &Connection,
    site: Uuid,
    cutoff: Cutoff,
    tables: &[(&'static crate::tables::ArchiveTable, PathBuf)],
    done: &tokio::sync::mpsc::UnboundedSender<(&'static str, PathBuf)>,
) -> Result<()> {
    // Rows in any order: every check of an archive compares rows as sets.
    with_settings(conn, &PARQUET_WRITE_SETTINGS, || {
        export_in_one_transaction(conn, site, cutoff, tables, done)
    })
    .map_err(|e| Error::duckdb("changing DuckDB's settings for the export", e))?
}

fn export_in_one_transaction(
    conn: &Connection,
    site: Uuid,
    cutoff: Cutoff,
    tables: &[(&'static crate::tables::ArchiveTable, PathBuf)],
    done: &tokio::sync::mpsc::UnboundedSender<(&'static str, PathBuf)>,
) -> Result<()> {
    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| Error::duckdb("starting the export", e))?;
    // A closed channel: the uploads failed (and say why); the rest is not exported.
    let outcome = tables.iter().take_while(|_| !done.is_closed()).try_for_each(|(table, path)| {
        let target = path
            .to_str()
            .ok_or_else(|| Error::io(path, std::io::Error::other("path is not valid UTF-8")))?;
        let sql = format!(
            "COPY (SELECT {} AS _source, * FROM {} WHERE {}) TO {} (FORMAT PARQUET, COMPRESSION ZSTD)",
            quote_literal(table.name),
            quote_ident(table.name),
            predicate(site, table, cutoff),
            quote_literal(target)
        );
        conn.execute_batch(&sql)
            .map_err(|e| Error::duckdb("exporting expired rows", e))?;
        tracing::trace!(table = table.name, "exported");
        let _ = done.send((table.name, path.clone()));
        Ok(())
    });
    end_transaction(conn, outcome, "ending the export")
}

/// Reads the uploaded object back into `copy` and checks that it holds exactly the bytes `sent`
/// ([`crate::sealed::fetch`]) and `expected` rows of `table` and nothing else; returns the
/// copy's print when the table's live columns are given. A copy that fails is removed from the
/// bucket here (and by the caller's clean-up, should this removal fail).
async fn verify_object(
    storage: &Storage,
    key: &str,
    (table, expected, live_columns): (&str, u64, Option<&Vec<(String, String)>>),
    (sent, copy): (&ObjectInfo, &Path),
    (reader, opener): (&ReadBack, Option<&hitkeep_seal::Opener>),
) -> Result<Option<CopyPrint>> {
    let fetched = crate::sealed::fetch(storage, key, copy, opener, Expect::Sent(sent)).await;
    if let Err(e @ Error::ReadBackDiffers { .. }) = fetched {
        remove_unproven(storage, key).await;
        return Err(e);
    }
    fetched?;
    // On a blocking thread of its own, so that other tables' transfers go on meanwhile.
    let from = format!(
        "read_parquet({})",
        quote_literal(&copy.display().to_string())
    );
    let conn = reader.connection()?;
    let (name, columns) = (table.to_owned(), live_columns.cloned());
    let (found, print) =
        tokio::task::spawn_blocking(move || read_copy(&conn, &name, columns.as_deref(), &from))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let expected = BTreeMap::from([(table.to_owned(), expected)]);
    if found != expected {
        remove_unproven(storage, key).await;
        return Err(Error::ReadBackMismatch {
            key: key.to_owned(),
            found,
            expected,
        });
    }
    Ok(print)
}

/// Removes an object that failed its read-back. A failure is logged, not returned: the read-back's
/// own error is the one to report, and the run's clean-up tries again.
async fn remove_unproven(storage: &Storage, key: &str) {
    if let Err(e) = storage.delete(key).await {
        tracing::warn!(key, error = %e, "could not remove an archive object that failed its read-back; the run's clean-up tries again");
    }
}

/// The in-memory DuckDB instance that counts what every object of a site's run read back holds, one
/// connection per table: opening an instance costs tens of milliseconds, which a run paid per
/// table (up to 23) before.
struct ReadBack(std::sync::Mutex<Connection>);

impl ReadBack {
    fn open() -> Result<ReadBack> {
        let conn = Connection::open_in_memory().map_err(|e| Error::duckdb("opening DuckDB", e))?;
        Ok(ReadBack(std::sync::Mutex::new(conn)))
    }

    fn connection(&self) -> Result<Connection> {
        let conn = self.0.lock().unwrap_or_else(|e| e.into_inner());
        conn.try_clone()
            .map_err(|e| Error::duckdb("opening a connection for the read-back", e))
    }

    /// Closes the instance on a blocking thread: closing took ~8 ms (1M hits) that the delete need not
    /// wait for. Every read-back has ended and dropped its connection by then.
    fn close_aside(self) {
        tokio::task::spawn_blocking(move || drop(self));
    }
}

/// Deletes the site's `rollup_dirty_buckets` markers whose whole bucket has expired, as HitKeep's
/// retention does: they only ask for a rollup to be recomputed, and the rows it would be computed from
/// are gone. A marker's period is its `bucket_unit` (HitKeep 2.13); a schema without that column is
/// treated as hourly. Missing table: nothing to do.
fn prune_dirty_buckets(conn: &Connection, site: Uuid, cutoff: Cutoff) -> Result<u64> {
    let columns = match crate::browse::table_columns(conn, "rollup_dirty_buckets") {
        Ok(c) if c.iter().any(|(name, _)| name == "bucket") => c,
        _ => return Ok(0),
    };
    let hour = cutoff.bound(Grain::Hour);
    let bound = if columns.iter().any(|(name, _)| name == "bucket_unit") {
        format!(
            "CASE bucket_unit WHEN 'day' THEN CAST({} AS TIMESTAMPTZ) WHEN 'month' THEN CAST({} AS TIMESTAMPTZ) ELSE {hour} END",
            cutoff.bound(Grain::Day),
            cutoff.bound(Grain::Month)
        )
    } else {
        hour
    };
    let sql =
        format!("DELETE FROM rollup_dirty_buckets WHERE site_id = '{site}' AND bucket < {bound}");
    let n = conn
        .execute(&sql, [])
        .map_err(|e| Error::duckdb("pruning expired rollup_dirty_buckets", e))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// An archive (one object, or one per table) verified as holding a site's rows before a cutoff,
/// about to have them deleted.
struct VerifiedFile<'a> {
    /// The entry's key: its one object, or the pattern of its objects per table.
    key: &'a str,
    /// Per table, the key of the object that holds its rows, where there is one per table.
    parts: BTreeMap<String, String>,
    /// Local copies of its objects as read back from storage.
    copies: &'a Copies,
    /// What this run's read-backs learned of each copy (none for a recovery's download).
    prints: &'a BTreeMap<String, CopyPrint>,
    /// The live rows must be exactly the file's (the run that wrote it); otherwise a subset (a
    /// recovery, whose earlier delete may have committed).
    exact: bool,
    /// What a mismatch means, for [`Error::RowsChanged`].
    hint: &'static str,
}

/// How a delete that did not happen ended.
enum DeleteFailure {
    /// Rolled back before its COMMIT: every row is still in the database.
    RolledBack(Error),
    /// The COMMIT failed: the rows may be gone; only comparing contents again can tell.
    Commit(Error),
}

impl DeleteFailure {
    fn into_error(self) -> Error {
        match self {
            DeleteFailure::RolledBack(e) | DeleteFailure::Commit(e) => e,
        }
    }
}

/// Deletes `site`'s rows before `cutoff` in one transaction, and only when that transaction sees the
/// rows of the verified file, by content ([`rows_not_in`]): no live row that the file lacks, and when
/// `exact`, none of the file's rows missing either, so the rows deleted are the file's rows. DuckDB's
/// MVCC makes the check hold for the delete: both read one snapshot; rows another connection commits
/// later are not seen (they stay, for the next run), and a row it deletes, or rewrites through an
/// indexed column (a delete and an insert to DuckDB), makes one of the two fail with a conflict. A row
/// it rewrites in place is no conflict to DuckDB (duckdb/duckdb#17223, measured in 1.5): committed
/// while this transaction is open, before its DELETE or after it, such a rewrite goes with the row.
/// So `pause` holds back the server's rewrites from before the snapshot until after the commit
/// ([`hitkeep_data::HeldDatabases::pause_rewrites`]); no other process can write the file meanwhile
/// (DuckDB's lock).
fn delete_archived(
    conn: &Connection,
    site: Uuid,
    cutoff: Cutoff,
    file: &VerifiedFile<'_>,
    pause: &Pause<'_>,
) -> std::result::Result<(), DeleteFailure> {
    let waited = std::time::Instant::now();
    // Held until this function returns, after the COMMIT or ROLLBACK below.
    let paused = pause();
    tracing::debug!(%site, paused = paused.is_some(), wait_s = waited.elapsed().as_secs_f64(), "the server's rewrites held back");
    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| DeleteFailure::RolledBack(Error::duckdb("starting the delete", e)))?;
    let started = std::time::Instant::now();
    let outcome = (|| {
        let compared = rows_not_in(conn, site, cutoff, file.copies, file.prints)?;
        tracing::debug!(%site, compare_s = started.elapsed().as_secs_f64(), "compared with the archive");
        let differs = |c: &Comparison| c.not_archived > 0 || (file.exact && c.gone() > 0);
        if let Some((table, c)) = compared.iter().find(|(_, c)| differs(c)) {
            return Err(Error::RowsChanged {
                site,
                table: table.clone(),
                not_archived: c.not_archived,
                gone: c.gone(),
                file: file
                    .parts
                    .get(table)
                    .map_or(file.key, String::as_str)
                    .to_owned(),
                hint: file.hint,
            });
        }
        for table in present_tables(conn)? {
            let want = compared.get(table.name).map_or(0, |c| c.live);
            if want == 0 {
                continue;
            }
            let sql = format!(
                "DELETE FROM {} WHERE {}",
                quote_ident(table.name),
                predicate(site, table, cutoff)
            );
            let got = conn
                .execute(&sql, [])
                .map_err(|e| Error::duckdb("deleting archived rows", e))?;
            // The snapshot compared is the snapshot deleted from; a difference is a bug, not a race.
            let deleting = u64::try_from(got).unwrap_or(u64::MAX);
            if deleting != want {
                return Err(Error::DeleteCountMismatch {
                    table: table.name,
                    deleting,
                    compared: want,
                });
            }
        }
        Ok(())
    })();
    let rolled_back = outcome.is_err();
    let deleted = started.elapsed();
    let ended = end_transaction(conn, outcome, "ending the delete");
    tracing::debug!(%site, compare_and_delete_s = deleted.as_secs_f64(), end_s = (started.elapsed() - deleted).as_secs_f64(), "deleted archived rows");
    ended.map_err(|e| {
        if rolled_back {
            DeleteFailure::RolledBack(e)
        } else {
            DeleteFailure::Commit(e)
        }
    })
}

/// Commits when `outcome` is Ok, else rolls back; then returns `outcome`.
pub(crate) fn end_transaction<T>(
    conn: &Connection,
    outcome: Result<T>,
    what: &'static str,
) -> Result<T> {
    let end = if outcome.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    conn.execute_batch(end)
        .map_err(|e| Error::duckdb(what, e))?;
    outcome
}
