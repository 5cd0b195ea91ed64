//! A realistic, HitKeep-shaped demo data set, generated inside DuckDB (set-based SQL, not row by row),
//! so ten million hits take about a minute.
//!
//! The shared database gets users, tenants (the default one, `tenants` active ones and one archived),
//! sites, site_tenants and the default tenant's analytics; each active tenant gets its own database with
//! hits, events, web_vitals, ai_fetches, qr_code_opens, the imported_*_daily tables and the rollups,
//! spread over the two years before now.

use std::path::Path;

use duckdb::Connection;
use uuid::Uuid;

use crate::schema;
use crate::{DataError, DataLayout, OpenMode, open_database, quote_literal};

/// How much demo data to make.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct DemoOptions {
    /// Hits in total, shared between the default tenant and the others.
    pub hits: u64,
    /// Active (non-default) tenants, each with its own database.
    pub tenants: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            hits: 100_000,
            tenants: 2,
        }
    }
}

impl DemoOptions {
    /// Options for `hits` hits and `tenants` tenants.
    pub fn new(hits: u64, tenants: usize) -> Self {
        DemoOptions { hits, tenants }
    }
}

/// What was created.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DemoSummary {
    /// The default tenant (its data is in the shared database).
    pub default_tenant: Uuid,
    /// The active tenants, each with a database of its own.
    pub tenants: Vec<Uuid>,
    /// A tenant listed in `tenant_archives`, which backups skip; it has no database.
    pub archived_tenant: Uuid,
    /// Hits written, over all databases.
    pub hits: u64,
}

/// Creates the demo data set at `layout`. Refuses to touch existing databases: demo data never lands on
/// top of real data.
pub fn generate(layout: &DataLayout, options: &DemoOptions) -> Result<DemoSummary, DataError> {
    let tenants: Vec<Uuid> = (0..options.tenants).map(|_| Uuid::new_v4()).collect();
    let mut targets = vec![layout.db_path.clone()];
    targets.extend(tenants.iter().map(|t| layout.tenant_db(*t)));
    if let Some(existing) = targets.iter().find(|p| p.exists()) {
        return Err(DataError::DuckDb {
            path: existing.clone(),
            source: duckdb::Error::InvalidParameterName(format!(
                "{} already exists; demo data is only written to new paths (choose another HITKEEP_DB_PATH / HITKEEP_DATA_PATH)",
                existing.display()
            )),
        });
    }
    // Times are computed here and inlined: without DuckDB's ICU extension (which we do not build in, and
    // cannot download), TIMESTAMPTZ arithmetic and casts are unavailable, but to_timestamp(epoch) is core.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let default_tenant = Uuid::new_v4();
    let archived_tenant = Uuid::new_v4();
    // The default tenant keeps a share like every other tenant.
    let per_db = options.hits / (tenants.len() as u64 + 1);
    let shared_hits = options.hits - per_db * tenants.len() as u64;

    let shared_sites = [Uuid::new_v4(), Uuid::new_v4()];
    let shared = open_database(&layout.db_path, OpenMode::Create)?;
    let run = |conn: &Connection, path: &Path, sql: &str| {
        conn.execute_batch(sql)
            .map_err(|e| DataError::from_duckdb(path, e))
    };
    run(
        &shared,
        &layout.db_path,
        &format!(
            "{}\n{}\n{}",
            schema::SHARED,
            schema::ANALYTICS,
            schema::rollup_ddl()
        ),
    )?;
    run(
        &shared,
        &layout.db_path,
        &control_plane(
            now,
            default_tenant,
            archived_tenant,
            &tenants,
            &shared_sites,
        ),
    )?;
    fill_analytics(&shared, &layout.db_path, now, &shared_sites, shared_hits)?;

    for tenant in &tenants {
        let sites = [Uuid::new_v4(), Uuid::new_v4()];
        run(
            &shared,
            &layout.db_path,
            &site_rows(now, &sites, Some(*tenant)),
        )?;
        let path = layout.tenant_db(*tenant);
        let conn = open_database(&path, OpenMode::Create)?;
        run(
            &conn,
            &path,
            &format!(
                "{}\n{}\n{}",
                schema::TENANT_SITES,
                schema::ANALYTICS,
                schema::rollup_ddl()
            ),
        )?;
        let mirror: Vec<String> = sites
            .iter()
            .map(|s| format!("('{s}', '{s}.example.com', 365)"))
            .collect();
        run(
            &conn,
            &path,
            &format!("INSERT INTO sites VALUES {};", mirror.join(", ")),
        )?;
        fill_analytics(&conn, &path, now, &sites, per_db)?;
        run(&conn, &path, "CHECKPOINT;")?;
    }
    run(&shared, &layout.db_path, "CHECKPOINT;")?;
    Ok(DemoSummary {
        default_tenant,
        tenants,
        archived_tenant,
        hits: options.hits,
    })
}

fn control_plane(
    now: i64,
    default_tenant: Uuid,
    archived: Uuid,
    tenants: &[Uuid],
    shared_sites: &[Uuid],
) -> String {
    let mut sql = format!(
        "INSERT INTO users VALUES ('{user}', 'owner@example.com', to_timestamp({now} - 800 * 86400));
         INSERT INTO tenants VALUES ('{default_tenant}', 'Default Tenant', TRUE, to_timestamp({now} - 800 * 86400), '');
         INSERT INTO tenants VALUES ('{archived}', 'Archived Team', FALSE, to_timestamp({now} - 700 * 86400), '');
         INSERT INTO tenant_archives VALUES ('{archived}', to_timestamp({now} - 10 * 86400), '{user}');
         INSERT INTO migrations VALUES ('001_init.sql', to_timestamp({now} - 800 * 86400));\n",
        user = DEMO_USER,
    );
    for (i, tenant) in tenants.iter().enumerate() {
        sql.push_str(&format!("INSERT INTO tenants VALUES ('{tenant}', {}, FALSE, to_timestamp({now} - {days} * 86400), '');\n", quote_literal(&format!("Team {}", i + 1)), days = 600 - i));
    }
    sql.push_str(&site_rows(now, shared_sites, None));
    sql
}

const DEMO_USER: &str = "00000000-0000-7000-8000-00000000d3e0";

fn site_rows(now: i64, sites: &[Uuid], tenant: Option<Uuid>) -> String {
    let mut sql = String::new();
    for site in sites {
        sql.push_str(&format!("INSERT INTO sites VALUES ('{site}', '{DEMO_USER}', '{site}.example.com', to_timestamp({now} - 730 * 86400), 365);\n"));
        if let Some(tenant) = tenant {
            sql.push_str(&format!("INSERT INTO site_tenants VALUES ('{site}', '{tenant}', to_timestamp({now} - 730 * 86400));\n"));
        }
    }
    sql
}

/// Two years of analytics for `sites`, `hits` hits and the other tables in proportion.
fn fill_analytics(
    conn: &Connection,
    path: &Path,
    now: i64,
    sites: &[Uuid],
    hits: u64,
) -> Result<(), DataError> {
    let site_list = sites
        .iter()
        .map(|s| format!("'{s}'::UUID"))
        .collect::<Vec<_>>()
        .join(", ");
    let ns = sites.len();
    // Timestamps fall in the two years before now, as TIMESTAMPTZ in UTC.
    let ts = |seed: &str| format!("to_timestamp({now} - hk_hash({seed}) % 63072000)");
    let today = format!("(DATE '1970-01-01' + CAST({now} // 86400 AS INTEGER))");
    let sql = format!(
        r#"
        -- hash() is UBIGINT; list indexes and arithmetic want BIGINT.
        CREATE OR REPLACE TEMP MACRO hk_hash(x) AS CAST(hash(x) >> 1 AS BIGINT);
        CREATE TEMP TABLE demo_c AS SELECT
            [{site_list}] AS sites,
            ['/', '/pricing', '/blog', '/blog/duckdb-backups', '/docs', '/docs/s3', '/about', '/contact'] AS paths,
            ['', 'https://www.google.com/', 'https://news.ycombinator.com/', 'https://duckduckgo.com/', 'https://github.com/'] AS referrers,
            ['DE', 'US', 'FR', 'GB', 'NL', 'SE', 'JP', 'BR'] AS countries,
            ['Berlin', 'New York', 'Paris', 'London', 'Amsterdam', 'Stockholm', 'Tokyo', 'São Paulo'] AS cities,
            ['en-US', 'de-DE', 'fr-FR', 'en-GB', 'nl-NL', 'sv-SE', 'ja-JP', 'pt-BR'] AS languages;
        INSERT INTO hits SELECT
            gen_random_uuid(), c.sites[1 + i % {ns}], gen_random_uuid(), gen_random_uuid(), {hit_ts},
            c.paths[1 + hk_hash(i * 7) % 8], 'example.com', c.referrers[1 + hk_hash(i * 11) % 5],
            'Mozilla/5.0 (X11; Linux x86_64) HitKeepDemo', 1280, 720, 1920, 1080, c.languages[1 + hk_hash(i * 13) % 8],
            hk_hash(i * 3) % 3 = 0, c.countries[1 + hk_hash(i * 13) % 8],
            CASE WHEN i % 10 = 0 THEN 'newsletter' END, CASE WHEN i % 10 = 0 THEN 'email' END,
            CASE WHEN i % 10 = 0 THEN 'launch' END, NULL, NULL,
            'Region ' || (hk_hash(i * 13) % 8), c.cities[1 + hk_hash(i * 13) % 8], 'ISP ' || (hk_hash(i * 17) % 20),
            CAST(64500 + hk_hash(i * 17) % 20 AS INTEGER), 'AS Org ' || (hk_hash(i * 17) % 20), NULL
        FROM range({hits}) t(i), demo_c c;
        INSERT INTO events SELECT gen_random_uuid(), c.sites[1 + i % {ns}], gen_random_uuid(),
            ['signup', 'download', 'outbound_click'][1 + i % 3], json_object('plan', ['free', 'pro'][1 + i % 2], 'n', i), {ev_ts}
        FROM range({events}) t(i), demo_c c;
        INSERT INTO web_vitals SELECT gen_random_uuid(), c.sites[1 + i % {ns}], gen_random_uuid(), gen_random_uuid(),
            ['LCP', 'INP', 'CLS', 'FCP', 'TTFB'][1 + i % 5], 'v' || i, (hk_hash(i) % 4000) / 1000.0,
            ['good', 'needs_improvement', 'poor'][1 + hk_hash(i * 5) % 3], c.paths[1 + hk_hash(i * 7) % 8], 'navigate', {wv_ts},
            'script', '2.8.1'
        FROM range({vitals}) t(i), demo_c c;
        INSERT INTO ai_fetches SELECT gen_random_uuid(), c.sites[1 + i % {ns}], {ai_ts},
            ['ChatGPT-User', 'ClaudeBot', 'PerplexityBot'][1 + i % 3], ['openai', 'anthropic', 'perplexity'][1 + i % 3],
            c.paths[1 + hk_hash(i * 7) % 8], 'example.com', 200, 'text/html', 'page', CAST(hk_hash(i) % 500 AS INTEGER),
            CAST(hk_hash(i) % 100000 AS BIGINT), 'Mozilla/5.0 (compatible; bot)'
        FROM range({ai}) t(i), demo_c c;
        INSERT INTO qr_code_opens SELECT gen_random_uuid(), c.sites[1 + i % {ns}], gen_random_uuid(), {qr_ts},
            '', 'Mozilla/5.0 (iPhone)', c.countries[1 + hk_hash(i) % 8], 'Region ' || (hk_hash(i) % 8),
            c.cities[1 + hk_hash(i) % 8], 'Mobile ISP', 64512, 'AS Mobile'
        FROM range({qr}) t(i), demo_c c;
        INSERT INTO imported_traffic_daily SELECT s.site, '00000000-0000-7000-8000-0000000001a0', {today} - 730 + CAST(d.i AS INTEGER),
            'plausible-export.zip', 100 + d.i % 50, 120 + d.i % 60, 300 + d.i % 90, 40, 9000
        FROM range(365) d(i), (SELECT unnest(sites) AS site FROM demo_c) s;
        INSERT INTO imported_dimension_daily SELECT s.site, '00000000-0000-7000-8000-0000000001a0', {today} - 730 + CAST(d.i AS INTEGER),
            'plausible-export.zip', 'country', 'DE', 'Dortmund', 10, 12, 30, 4, 900, 2, 10, 9
        FROM range(365) d(i), (SELECT unnest(sites) AS site FROM demo_c) s;
        INSERT INTO imported_event_daily SELECT s.site, '00000000-0000-7000-8000-0000000001a0', {today} - 730 + CAST(d.i AS INTEGER),
            'plausible-export.zip', 'signup', '/pricing', '', 3, 4
        FROM range(365) d(i), (SELECT unnest(sites) AS site FROM demo_c) s;
        INSERT INTO imported_event_dimensions_daily SELECT s.site, '00000000-0000-7000-8000-0000000001a0', {today} - 730 + CAST(d.i AS INTEGER),
            'plausible-export.zip', 'signup', 'city', 'Dortmund', '', 2, 2
        FROM range(365) d(i), (SELECT unnest(sites) AS site FROM demo_c) s;
        INSERT INTO imported_event_properties_daily SELECT s.site, '00000000-0000-7000-8000-0000000001a0', {today} - 730 + CAST(d.i AS INTEGER),
            'plausible-export.zip', 'signup', 'plan', 'pro', 1, 1
        FROM range(365) d(i), (SELECT unnest(sites) AS site FROM demo_c) s;
        {rollups}
        DROP TABLE demo_c;
        "#,
        hit_ts = ts("i"),
        ev_ts = ts("i * 19"),
        wv_ts = ts("i * 23"),
        ai_ts = ts("i * 29"),
        qr_ts = ts("i * 31"),
        events = hits / 5,
        vitals = hits / 10,
        ai = hits / 50,
        qr = hits / 100,
        rollups = rollups(now),
    );
    conn.execute_batch(&sql)
        .map_err(|e| DataError::from_duckdb(path, e))
}

/// Rollups for every hour, day and month of the two years, per site, with plausible counts.
fn rollups(now: i64) -> String {
    let start = now - now % 3600 - 730 * 86400;
    let day0 = format!("(DATE '1970-01-01' + CAST({start} // 86400 AS INTEGER))");
    let mut sql = String::new();
    for (grain, count, bucket) in [
        (
            "hourly",
            730 * 24,
            format!("to_timestamp({start} + g.i * 3600)"),
        ),
        ("daily", 730, format!("{day0} + CAST(g.i AS INTEGER)")),
        (
            "monthly",
            24,
            format!("CAST(date_trunc('month', {day0}) + to_months(CAST(g.i AS INTEGER)) AS DATE)"),
        ),
    ] {
        let from =
            format!("FROM range({count}) g(i), (SELECT unnest(sites) AS site FROM demo_c) s");
        sql.push_str(&format!(
            "INSERT INTO hit_rollups_{grain} SELECT s.site, {bucket}, 10 + hk_hash(g.i) % 90, 5 + hk_hash(g.i * 3) % 40 {from};
             INSERT INTO session_rollups_{grain} SELECT s.site, {bucket}, 8 + hk_hash(g.i) % 50, hk_hash(g.i * 5) % 8, (hk_hash(g.i) % 5000) * 1.5, 10 + hk_hash(g.i) % 90 {from};
             INSERT INTO goal_rollups_{grain} SELECT s.site, {bucket}, '00000000-0000-7000-8000-00000000a001', hk_hash(g.i * 7) % 10 {from};
             INSERT INTO funnel_rollups_{grain} SELECT s.site, {bucket}, '00000000-0000-7000-8000-00000000f001', hk_hash(g.i * 11) % 20, hk_hash(g.i * 13) % 5 {from};\n"
        ));
    }
    sql
}
