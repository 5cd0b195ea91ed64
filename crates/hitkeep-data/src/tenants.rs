//! Which tenants a HitKeep install has, and where the default tenant's analytics live.
//!
//! HitKeep 2.13 moved the default tenant's analytics out of the shared (control) database into a tenant
//! database of its own (`{data}/tenants/{default}/hitkeep.db`), and recorded it with rows in the control
//! table `data_migrations`. Everything that decides what to back up, restore or archive asks
//! [`detect_layout`] first: a pre-split install keeps those analytics in the shared database.

use duckdb::Connection;
use uuid::Uuid;

use crate::is_missing_schema;

/// The marker HitKeep writes into the rewritten control database before publishing it: from then on the
/// default tenant's own file is authoritative.
pub const SPLIT_MARKER: &str = "default_tenant_split_v1";
/// The marker written once the control database holds no default-tenant rows any more.
pub const SPLIT_COMPACTED_MARKER: &str = "default_tenant_split_compacted_v1";

/// Where the default tenant's analytics live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TenantLayout {
    /// HitKeep up to 2.12: in the shared database; `tenants/` holds the other teams only.
    PreSplit,
    /// HitKeep 2.13 and later: in `{data}/tenants/{default}/hitkeep.db`, like every other team.
    Split,
}

impl TenantLayout {
    /// `pre-split` or `split`, as manifests and `--json` output spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantLayout::PreSplit => "pre-split",
            TenantLayout::Split => "split",
        }
    }

    /// The HitKeep release that writes this layout, for people: `2.8` (pre-split) or `2.13` (split).
    pub fn hitkeep_version(self) -> &'static str {
        match self {
            TenantLayout::PreSplit => "2.8",
            TenantLayout::Split => "2.13",
        }
    }
}

impl std::fmt::Display for TenantLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the control database says about its tenants.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantSet {
    /// Where the default tenant's analytics live.
    pub layout: TenantLayout,
    /// The default tenant, when the schema has one.
    pub default_tenant: Option<Uuid>,
    /// Every tenant whose database is backed up, oldest first: on a split install every tenant without a
    /// `tenant_archives` row, the default one included; before the split the same without the default.
    pub backed_up: Vec<Uuid>,
    /// The split marker is present but the "compacted" one is not: HitKeep finishes the split on its next
    /// start. The default tenant's file is already authoritative, so it is backed up.
    pub split_unfinished: bool,
}

/// Reads the layout from the control database's `data_migrations` table. [`SPLIT_MARKER`] alone is
/// enough to call it split: HitKeep treats the tenant file as authoritative from that row on, and
/// backing up the shared database alone would then leave the default tenant's analytics out.
pub fn detect_layout(shared: &Connection) -> Result<(TenantLayout, bool), duckdb::Error> {
    let sql = "SELECT name FROM data_migrations WHERE name IN (?, ?)";
    let mut stmt = match shared.prepare(sql) {
        Ok(stmt) => stmt,
        Err(e) if is_missing_schema(&e) => return Ok((TenantLayout::PreSplit, false)),
        Err(e) => return Err(e),
    };
    let names = stmt
        .query_map([SPLIT_MARKER, SPLIT_COMPACTED_MARKER], |row| {
            row.get::<_, String>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let split = names.iter().any(|n| n == SPLIT_MARKER);
    let compacted = names.iter().any(|n| n == SPLIT_COMPACTED_MARKER);
    if split {
        Ok((TenantLayout::Split, !compacted))
    } else {
        Ok((TenantLayout::PreSplit, false))
    }
}

/// The layout, the default tenant and the tenants to back up, as HitKeep's backup worker picks them
/// (`ListActiveTenantIDs` on a split install, the non-default ones before). An older schema without the
/// tenant tables means "shared database only" (logged at debug).
pub fn tenant_set(shared: &Connection) -> Result<TenantSet, duckdb::Error> {
    let (layout, split_unfinished) = detect_layout(shared)?;
    let default_tenant = default_tenant(shared)?;
    let filter = match layout {
        TenantLayout::Split => "",
        TenantLayout::PreSplit => "t.is_default = FALSE AND",
    };
    let sql = format!(
        "SELECT CAST(t.id AS VARCHAR) FROM tenants t \
         WHERE {filter} t.id NOT IN (SELECT tenant_id FROM tenant_archives) \
         ORDER BY t.created_at, t.id"
    );
    let backed_up = match query_ids(shared, &sql) {
        Ok(ids) => ids,
        Err(e) if is_missing_schema(&e) => {
            tracing::debug!(error = %e, "no tenant tables in this schema; backing up the shared database only");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok(TenantSet {
        layout,
        default_tenant,
        backed_up,
        split_unfinished,
    })
}

/// The default tenant: `is_default = TRUE`, the oldest if several; as HitKeep does, the oldest tenant
/// when the schema has no `is_default`; `None` without a tenants table.
pub fn default_tenant(shared: &Connection) -> Result<Option<Uuid>, duckdb::Error> {
    let flagged = "SELECT CAST(id AS VARCHAR) FROM tenants WHERE is_default = TRUE ORDER BY created_at, id LIMIT 1";
    let oldest = "SELECT CAST(id AS VARCHAR) FROM tenants ORDER BY created_at, id LIMIT 1";
    for sql in [flagged, oldest] {
        match query_ids(shared, sql) {
            Ok(ids) => return Ok(ids.into_iter().next()),
            Err(e) if is_missing_schema(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn query_ids(conn: &Connection, sql: &str) -> Result<Vec<Uuid>, duckdb::Error> {
    let mut stmt = conn.prepare(sql)?;
    let ids = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids
        .into_iter()
        .filter_map(|id| match Uuid::parse_str(&id) {
            Ok(uuid) => Some(uuid),
            Err(_) => {
                tracing::warn!(tenant = id, "skipping a tenant whose id is not a UUID");
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL: &str = "CREATE TABLE tenants (id UUID, name VARCHAR, is_default BOOLEAN, created_at TIMESTAMPTZ);
         CREATE TABLE tenant_archives (tenant_id UUID);
         INSERT INTO tenants VALUES ('00000000-0000-0000-0000-000000000001', 'default', TRUE, '2026-01-01 00:00:00+00'),
             ('00000000-0000-0000-0000-000000000003', 'b', FALSE, '2026-01-03 00:00:00+00'),
             ('00000000-0000-0000-0000-000000000002', 'a', FALSE, '2026-01-02 00:00:00+00'),
             ('00000000-0000-0000-0000-000000000004', 'archived', FALSE, '2026-01-04 00:00:00+00'),
             ('00000000-0000-0000-0000-000000000005', 'null default', NULL, '2026-01-05 00:00:00+00');
         INSERT INTO tenant_archives VALUES ('00000000-0000-0000-0000-000000000004');";

    fn ids(set: &TenantSet) -> Vec<String> {
        set.backed_up
            .iter()
            .map(|u| u.to_string()[34..].to_owned())
            .collect()
    }

    #[test]
    fn an_old_schema_means_shared_only() {
        let conn = Connection::open_in_memory().unwrap();
        let set = tenant_set(&conn).unwrap();
        assert_eq!(
            set.layout,
            TenantLayout::PreSplit,
            "no data_migrations table"
        );
        assert!(set.backed_up.is_empty(), "no tenants table at all");
        conn.execute_batch("CREATE TABLE tenants (id UUID, name VARCHAR);")
            .unwrap();
        let set = tenant_set(&conn).unwrap();
        assert!(set.backed_up.is_empty(), "no is_default column");
        assert_eq!(set.default_tenant, None);
    }

    #[test]
    fn before_the_split_the_default_and_archived_tenants_are_not_backed_up() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CONTROL).unwrap();
        conn.execute_batch(
            "CREATE TABLE data_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL);
             INSERT INTO data_migrations VALUES ('something_else_v1', now());",
        )
        .unwrap();
        let set = tenant_set(&conn).unwrap();
        assert_eq!(set.layout, TenantLayout::PreSplit);
        assert_eq!(
            ids(&set),
            ["02", "03"],
            "oldest first, NULL is_default is not FALSE"
        );
        assert_eq!(
            set.default_tenant.unwrap().to_string(),
            "00000000-0000-0000-0000-000000000001"
        );
    }

    #[test]
    fn after_the_split_every_active_tenant_is_backed_up_the_default_included() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CONTROL).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE data_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL);
             INSERT INTO data_migrations VALUES ('{SPLIT_MARKER}', now());"
        ))
        .unwrap();
        let set = tenant_set(&conn).unwrap();
        assert_eq!(set.layout, TenantLayout::Split);
        assert!(set.split_unfinished, "only the first marker");
        assert_eq!(ids(&set), ["01", "02", "03", "05"]);
        conn.execute_batch(&format!(
            "INSERT INTO data_migrations VALUES ('{SPLIT_COMPACTED_MARKER}', now());"
        ))
        .unwrap();
        let set = tenant_set(&conn).unwrap();
        assert_eq!(
            (set.layout, set.split_unfinished),
            (TenantLayout::Split, false)
        );
    }
}
