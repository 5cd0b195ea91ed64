//! The demo data set in both of HitKeep's layouts, read back with real DuckDB the way the backup,
//! archive and restore code will read it.

mod errors;
mod lock;

use std::path::Path;

use duckdb::Connection;
use hitkeep_data::demo::{DemoOptions, DemoSummary, generate};
use hitkeep_data::{DataLayout, OpenMode, TenantLayout, open_database, tenant_set};

/// Tables every tenant database has that are not analytics: bookkeeping and the sites mirror.
const NOT_ANALYTICS: [&str; 3] = ["migrations", "sites", "hitkeep_migration_checkpoints"];

fn demo(layout: TenantLayout) -> (tempfile::TempDir, DataLayout, DemoSummary) {
    let dir = tempfile::tempdir().unwrap();
    let data = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
    let options = DemoOptions::new(3_000, 2).with_layout(layout);
    let summary = generate(&data, &options).unwrap();
    assert_eq!(summary.layout, layout);
    (dir, data, summary)
}

fn open(path: &Path) -> Connection {
    open_database(path, OpenMode::Existing).unwrap()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn strings(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn rows(conn: &Connection, table: &str) -> i64 {
    count(conn, &format!("SELECT count(*) FROM {table}"))
}

/// The analytics tables of a tenant database.
fn analytics_tables(tenant: &Connection) -> Vec<String> {
    hitkeep_data::user_tables(tenant)
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| !NOT_ANALYTICS.contains(&t.as_str()))
        .collect()
}

/// Primary, unique and foreign keys and CHECKs on `table` (NOT NULL is not a key).
fn keys(conn: &Connection, table: &str) -> Vec<String> {
    strings(
        conn,
        &format!(
            "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = '{table}' \
             AND constraint_type <> 'NOT NULL' ORDER BY ALL"
        ),
    )
}

fn indexes(conn: &Connection, table: &str) -> Vec<String> {
    strings(
        conn,
        &format!(
            "SELECT index_name FROM duckdb_indexes() WHERE table_name = '{table}' ORDER BY ALL"
        ),
    )
}

/// `table`'s rows are stored oldest first, as HitKeep appends them, over the two years before now: no
/// row is more than five minutes (the demo's jitter) older than the one stored before it.
fn assert_written_in_time_order(conn: &Connection, table: &str) {
    let sql = format!(
        "SELECT count(*) FILTER (WHERE t < prev - INTERVAL 5 MINUTE),
                count(*) FILTER (WHERE t <= now - INTERVAL 730 DAY OR t > now),
                date_diff('day', min(t), max(t)), count(*)
         FROM (SELECT t, lag(t) OVER (ORDER BY rowid) AS prev, CAST(now() AS TIMESTAMP) AS now
               FROM (SELECT rowid, CAST(\"timestamp\" AS TIMESTAMP) AS t FROM {table}))"
    );
    let (late, outside, days, rows): (i64, i64, i64, i64) = conn
        .query_row(&sql, [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert!(rows > 1, "{table} has {rows} rows");
    assert_eq!(late, 0, "{table}: rows stored out of time order");
    assert_eq!(outside, 0, "{table}: rows outside the two years before now");
    assert!(
        days > 600,
        "{table}: its rows span {days} days, not two years"
    );
}

/// Nothing that is not HitKeep's, and the keys and indexes both releases have.
fn assert_common_shapes(conn: &Connection) {
    assert_eq!(
        count(
            conn,
            "SELECT count(*) FROM duckdb_indexes() WHERE index_name = 'idx_hits_site_ts'"
        ),
        0,
        "idx_hits_site_ts is not HitKeep's"
    );
    assert_eq!(indexes(conn, "goals"), ["goals_site_id_idx"]);
    assert_eq!(indexes(conn, "funnels"), ["funnels_site_id_idx"]);
    assert_eq!(
        indexes(conn, "goal_rollups_daily"),
        [
            "goal_rollups_daily_goal_bucket_idx",
            "goal_rollups_daily_site_bucket_idx"
        ]
    );
    assert_eq!(
        indexes(conn, "hit_rollups_hourly"),
        ["hit_rollups_hourly_site_bucket_idx"]
    );
    assert_eq!(
        indexes(conn, "ai_fetches"),
        ["ai_fetches_site_id_timestamp_idx"]
    );
    assert_eq!(
        indexes(conn, "qr_code_opens"),
        ["qr_code_opens_qr_time_idx", "qr_code_opens_site_time_idx"]
    );
    assert_eq!(
        indexes(conn, "rollup_dirty_buckets"),
        ["rollup_dirty_buckets_site_updated_idx"]
    );
    assert!(keys(conn, "funnel_rollups_monthly").contains(&"PRIMARY KEY".to_owned()));
    assert!(keys(conn, "imported_traffic_daily").is_empty());
}

#[test]
fn demo_layout_2_13_splits_the_default_tenant_out_of_the_control_database() {
    let (_dir, data, demo) = demo(TenantLayout::Split);
    assert_eq!(DemoOptions::default().layout, TenantLayout::Split);
    let control = open(&data.db_path);
    let set = tenant_set(&control).unwrap();
    assert_eq!(
        (set.layout, set.split_unfinished),
        (TenantLayout::Split, false)
    );
    assert_eq!(set.default_tenant, Some(demo.default_tenant));
    let mut expected = vec![demo.default_tenant];
    expected.extend(&demo.tenants);
    assert_eq!(
        set.backed_up, expected,
        "the default first (oldest), then the teams"
    );
    assert!(!set.backed_up.contains(&demo.archived_tenant));

    let default_db = data.tenant_db(demo.default_tenant);
    assert!(default_db.is_file(), "{}", default_db.display());
    let tenant = open(&default_db);
    let mirror = strings(&tenant, "SELECT CAST(id AS VARCHAR) FROM sites ORDER BY 1");
    let scope = strings(
        &control,
        "SELECT CAST(id AS VARCHAR) FROM sites WHERE id NOT IN (SELECT site_id FROM site_tenants) ORDER BY 1",
    );
    assert_eq!(mirror, scope, "the mirror holds the default-scope sites");

    let tables = analytics_tables(&tenant);
    assert_eq!(tables.len(), 27, "{tables:?}");
    for table in &tables {
        assert_eq!(rows(&control, table), 0, "{table} is empty in control");
    }
    for table in [
        "hits",
        "search_console_facts",
        "search_console_totals_days",
        "rollup_dirty_buckets",
        "goal_rollups_hourly",
    ] {
        assert!(rows(&tenant, table) > 0, "{table} has default-tenant rows");
    }
    let hits: i64 = std::iter::once(default_db)
        .chain(demo.tenants.iter().map(|t| data.tenant_db(*t)))
        .map(|p| rows(&open(&p), "hits"))
        .sum();
    assert_eq!(hits, 3_000);
    // Search Console and the dirty-bucket queue reach back past any retention window, and up to now.
    assert!(
        count(
            &tenant,
            "SELECT count(DISTINCT date_part('year', date)) FROM search_console_facts"
        ) >= 2
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dirty = |when: &str| {
        count(
            &tenant,
            &format!("SELECT count(*) FROM rollup_dirty_buckets WHERE bucket {when}"),
        )
    };
    assert!(dirty(&format!("< to_timestamp({now} - 400 * 86400)")) > 0);
    assert!(dirty(&format!(">= to_timestamp({now} - 86400)")) > 0);
    assert_eq!(
        strings(
            &control,
            "SELECT name FROM data_migrations ORDER BY applied_at"
        ),
        [
            hitkeep_data::SPLIT_MARKER,
            hitkeep_data::SPLIT_COMPACTED_MARKER
        ]
    );

    for conn in [&control, &tenant] {
        for table in ["hits", "events", "web_vitals", "search_console_facts"] {
            assert!(
                keys(conn, table).is_empty(),
                "{table}: {:?}",
                keys(conn, table)
            );
            assert!(indexes(conn, table).is_empty(), "{table}");
        }
        assert_eq!(
            count(
                conn,
                "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'hits' AND constraint_type = 'NOT NULL'"
            ),
            6,
            "id, site_id, session_id, page_id, timestamp, path"
        );
        assert!(rows(conn, "hitkeep_migration_checkpoints") > 0);
        assert_common_shapes(conn);
    }
    // The id default survives the 2.13 rebuild: an insert without an id gets one.
    tenant
        .execute_batch("INSERT INTO hits (site_id, session_id, page_id, timestamp, path) VALUES (uuid(), uuid(), uuid(), to_timestamp(0), '/')")
        .unwrap();
    assert_eq!(
        count(&tenant, "SELECT count(*) FROM hits WHERE id IS NULL"),
        0
    );
}

#[test]
fn demo_layout_2_8_keeps_the_default_tenant_in_the_control_database() {
    let (_dir, data, demo) = demo(TenantLayout::PreSplit);
    let control = open(&data.db_path);
    let set = tenant_set(&control).unwrap();
    assert_eq!(set.layout, TenantLayout::PreSplit);
    assert_eq!(set.default_tenant, Some(demo.default_tenant));
    assert_eq!(
        set.backed_up, demo.tenants,
        "the default tenant is not backed up on its own"
    );
    assert!(!data.tenant_db(demo.default_tenant).exists());
    assert!(
        !data
            .data_path
            .join("tenants")
            .join(demo.default_tenant.to_string())
            .exists()
    );

    let other = open(&data.tenant_db(demo.tenants[0]));
    let tables = analytics_tables(&other);
    assert_eq!(tables.len(), 25, "{tables:?}");
    for table in &tables {
        assert!(
            rows(&control, table) > 0,
            "{table} holds the default tenant's rows"
        );
    }
    let hits: i64 = std::iter::once(data.db_path.clone())
        .chain(demo.tenants.iter().map(|t| data.tenant_db(*t)))
        .map(|p| rows(&open(&p), "hits"))
        .sum();
    assert_eq!(hits, 3_000);
    for table in [
        "hits",
        "events",
        "web_vitals",
        "ai_fetches",
        "qr_code_opens",
    ] {
        assert_written_in_time_order(&control, table);
    }

    for conn in [&control, &other] {
        for missing in [
            "data_migrations",
            "hitkeep_migration_checkpoints",
            "search_console_facts",
            "search_console_totals_days",
        ] {
            assert_eq!(
                count(
                    conn,
                    &format!("SELECT count(*) FROM duckdb_tables() WHERE table_name = '{missing}'")
                ),
                0,
                "{missing} is not in 2.8"
            );
        }
        assert_eq!(keys(conn, "hits"), ["PRIMARY KEY"]);
        assert_eq!(
            indexes(conn, "hits"),
            ["hits_qr_code_id_idx", "hits_site_id_timestamp_idx"]
        );
        assert_eq!(indexes(conn, "events"), ["events_site_id_timestamp_idx"]);
        assert_eq!(keys(conn, "web_vitals"), ["CHECK", "CHECK", "PRIMARY KEY"]);
        assert_eq!(indexes(conn, "web_vitals").len(), 3);
        assert_common_shapes(conn);
    }
}
