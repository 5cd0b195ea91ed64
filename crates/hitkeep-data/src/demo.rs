//! A realistic, HitKeep-shaped demo data set, generated inside DuckDB (set-based SQL, not row by row),
//! so ten million hits take about a minute.
//!
//! The shared (control) database gets users, tenants (the default one, `tenants` active ones and one
//! archived), sites and site_tenants. Every tenant's analytics (hits, events, web_vitals, ai_fetches,
//! qr_code_opens, goals, funnels, the imported_*_daily tables, the rollups and rollup_dirty_buckets, and
//! on 2.13 Search Console facts) are spread over the two years before now. Where the default tenant's
//! analytics go depends on [`TenantLayout`]: HitKeep 2.13 ([`TenantLayout::Split`], the default) gives it
//! `{data}/tenants/{default}/hitkeep.db` and leaves the control database's analytics tables empty, with
//! both split markers in `data_migrations`; HitKeep 2.8 ([`TenantLayout::PreSplit`]) keeps them in the
//! control database. Table shapes and index names are each release's own (see `schema.rs`).
//!
//! Every file is created at [`crate::STORAGE_VERSION`], so HitKeep's DuckDB 1.5 opens it.

use std::path::Path;

use duckdb::Connection;
use uuid::Uuid;

use crate::schema;
use crate::{
    DataError, DataLayout, OpenMode, SPLIT_COMPACTED_MARKER, SPLIT_MARKER, TenantLayout,
    open_database, quote_literal,
};

/// How much demo data to make, and in which HitKeep release's layout.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct DemoOptions {
    /// Hits in total, shared between the default tenant and the others.
    pub hits: u64,
    /// Active (non-default) tenants, each with its own database.
    pub tenants: usize,
    /// Where the default tenant's analytics live, and which release's table shapes to use.
    pub layout: TenantLayout,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions::new(100_000, 2)
    }
}

impl DemoOptions {
    /// Options for `hits` hits and `tenants` tenants, in HitKeep 2.13's layout.
    pub fn new(hits: u64, tenants: usize) -> Self {
        DemoOptions {
            hits,
            tenants,
            layout: TenantLayout::Split,
        }
    }

    /// The same options in `layout`.
    pub fn with_layout(mut self, layout: TenantLayout) -> Self {
        self.layout = layout;
        self
    }
}

/// What was created.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DemoSummary {
    /// The layout written.
    pub layout: TenantLayout,
    /// The default tenant: its analytics are in its own database on [`TenantLayout::Split`], in the
    /// shared database on [`TenantLayout::PreSplit`].
    pub default_tenant: Uuid,
    /// The active non-default tenants, each with a database of its own.
    pub tenants: Vec<Uuid>,
    /// A tenant listed in `tenant_archives`, which backups skip; it has no database.
    pub archived_tenant: Uuid,
    /// Hits written, over all databases.
    pub hits: u64,
}

/// The identities of one demo data set, drawn before anything is written.
struct Plan {
    layout: TenantLayout,
    now: i64,
    default_tenant: Uuid,
    archived_tenant: Uuid,
    default_sites: [Uuid; 2],
    tenants: Vec<(Uuid, [Uuid; 2])>,
}

/// Creates the demo data set at `layout`. Refuses to touch existing databases: demo data never lands on
/// top of real data.
pub fn generate(layout: &DataLayout, options: &DemoOptions) -> Result<DemoSummary, DataError> {
    let plan = Plan::new(options);
    refuse_existing(&plan.files(layout))?;
    // The default tenant keeps a share like every other tenant.
    let per_db = options.hits / (plan.tenants.len() as u64 + 1);
    let default_hits = options.hits - per_db * plan.tenants.len() as u64;

    let db = layout.db_path.as_path();
    let shared = open_database(db, OpenMode::Create)?;
    run(&shared, db, &control_ddl(plan.layout))?;
    run(&shared, db, &control_plane(&plan))?;
    match plan.layout {
        TenantLayout::PreSplit => fill(&shared, db, &plan, &plan.default_sites, default_hits)?,
        TenantLayout::Split => {
            run(&shared, db, &schema::analytics_indexes(plan.layout))?;
            let path = layout.tenant_db(plan.default_tenant);
            tenant_database(&path, &plan, &plan.default_sites, default_hits)?;
        }
    }
    for (tenant, sites) in &plan.tenants {
        tenant_database(&layout.tenant_db(*tenant), &plan, sites, per_db)?;
    }
    run(&shared, db, "CHECKPOINT;")?;
    Ok(DemoSummary {
        layout: plan.layout,
        default_tenant: plan.default_tenant,
        tenants: plan.tenants.iter().map(|(t, _)| *t).collect(),
        archived_tenant: plan.archived_tenant,
        hits: options.hits,
    })
}

impl Plan {
    fn new(options: &DemoOptions) -> Plan {
        let sites = || [Uuid::new_v4(), Uuid::new_v4()];
        Plan {
            layout: options.layout,
            // Times are computed here and inlined: without DuckDB's ICU extension (which we do not build
            // in, and cannot download), TIMESTAMPTZ arithmetic and casts are unavailable, but
            // to_timestamp(epoch) is core.
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            default_tenant: Uuid::new_v4(),
            archived_tenant: Uuid::new_v4(),
            default_sites: sites(),
            tenants: (0..options.tenants)
                .map(|_| (Uuid::new_v4(), sites()))
                .collect(),
        }
    }

    /// Every database file this plan creates.
    fn files(&self, layout: &DataLayout) -> Vec<std::path::PathBuf> {
        let mut files = vec![layout.db_path.clone()];
        if self.layout == TenantLayout::Split {
            files.push(layout.tenant_db(self.default_tenant));
        }
        files.extend(self.tenants.iter().map(|(t, _)| layout.tenant_db(*t)));
        files
    }
}

fn refuse_existing(files: &[std::path::PathBuf]) -> Result<(), DataError> {
    match files.iter().find(|p| p.exists()) {
        Some(existing) => Err(DataError::Exists {
            path: existing.clone(),
        }),
        None => Ok(()),
    }
}

fn run(conn: &Connection, path: &Path, sql: &str) -> Result<(), DataError> {
    conn.execute_batch(sql)
        .map_err(|e| DataError::from_duckdb(path, e))
}

/// The control database's tables: its own, then every analytics table (empty after the split).
fn control_ddl(layout: TenantLayout) -> String {
    let mut sql = String::from(schema::CONTROL);
    if layout == TenantLayout::Split {
        sql.push_str(schema::DATA_MIGRATIONS);
        sql.push_str(schema::CHECKPOINTS);
    }
    sql + &schema::analytics_tables(layout)
}

/// A tenant database with its sites mirror and its analytics.
fn tenant_database(path: &Path, plan: &Plan, sites: &[Uuid], hits: u64) -> Result<(), DataError> {
    let conn = open_database(path, OpenMode::Create)?;
    let mut ddl = String::from(schema::TENANT);
    if plan.layout == TenantLayout::Split {
        ddl.push_str(schema::CHECKPOINTS);
    }
    run(&conn, path, &(ddl + &schema::analytics_tables(plan.layout)))?;
    let mirror: Vec<String> = sites
        .iter()
        .map(|s| format!("('{s}', '{s}.example.com', 365)"))
        .collect();
    let mut rows = format!("INSERT INTO sites VALUES {};\n", mirror.join(", "));
    rows.push_str(&migration_rows(plan, TENANT_MIGRATIONS));
    rows.push_str(guard_token(plan.layout));
    run(&conn, path, &rows)?;
    fill(&conn, path, plan, sites, hits)?;
    run(&conn, path, "CHECKPOINT;")
}

/// Migrations applied, oldest first: HitKeep 2.8's, then (on 2.13) the index drops.
const CONTROL_MIGRATIONS: [&[&str]; 2] = [
    &[
        "0000_00_00_000000_create_migrations_table.sql",
        "2025_05_11_000000_create_base_tables.sql",
        "2026_05_18_000000_create_rollup_dirty_buckets.sql",
        "2026_06_02_000000_create_qr_campaigns.sql",
    ],
    &[
        "2026_07_08_000000_drop_analytics_art_indexes.sql",
        "2026_07_30_010000_drop_search_console_fact_art_indexes.sql",
    ],
];
/// The same for a tenant database.
const TENANT_MIGRATIONS: [&[&str]; 2] = [
    &[
        "0001_create_analytics_tables.sql",
        "0012_create_qr_campaign_analytics.sql",
    ],
    &[
        "0013_drop_analytics_art_indexes.sql",
        "0016_drop_search_console_fact_art_indexes.sql",
    ],
];

fn migration_rows(plan: &Plan, lists: [&[&str]; 2]) -> String {
    let names = match plan.layout {
        TenantLayout::PreSplit => lists[0].to_vec(),
        TenantLayout::Split => lists.concat(),
    };
    let now = plan.now;
    let rows: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let days = 800 - 10 * i;
            format!("('{name}', to_timestamp({now} - {days} * 86400))")
        })
        .collect();
    format!("INSERT INTO migrations VALUES {};\n", rows.join(", "))
}

fn control_plane(plan: &Plan) -> String {
    let (now, default, archived) = (plan.now, plan.default_tenant, plan.archived_tenant);
    let mut sql = format!(
        "INSERT INTO users VALUES ('{DEMO_USER}', 'owner@example.com', to_timestamp({now} - 800 * 86400));
         INSERT INTO tenants VALUES ('{default}', 'Default Tenant', TRUE, to_timestamp({now} - 800 * 86400), '');
         INSERT INTO tenants VALUES ('{archived}', 'Archived Team', FALSE, to_timestamp({now} - 700 * 86400), '');
         INSERT INTO tenant_archives VALUES ('{archived}', to_timestamp({now} - 10 * 86400), '{DEMO_USER}');\n"
    );
    sql.push_str(&migration_rows(plan, CONTROL_MIGRATIONS));
    sql.push_str(&site_rows(now, &plan.default_sites, None));
    for (i, (tenant, sites)) in plan.tenants.iter().enumerate() {
        let name = quote_literal(&format!("Team {}", i + 1));
        let days = 600 - i;
        sql.push_str(&format!("INSERT INTO tenants VALUES ('{tenant}', {name}, FALSE, to_timestamp({now} - {days} * 86400), '');\n"));
        sql.push_str(&site_rows(now, sites, Some(*tenant)));
    }
    if plan.layout == TenantLayout::Split {
        // The split's two markers, five days ago (the second once the control rewrite is checked,
        // moments later). `applied_at` is a TIMESTAMP: make_timestamp(µs).
        let split = (now - 5 * 86400) * 1_000_000;
        sql.push_str(&format!(
            "INSERT INTO data_migrations VALUES ('{SPLIT_MARKER}', make_timestamp({split})), ('{SPLIT_COMPACTED_MARKER}', make_timestamp({split} + 90000000));\n"
        ));
    }
    sql.push_str(guard_token(plan.layout));
    sql
}

/// 2.13's migration guard token row, in every database (2.8 has no such table).
fn guard_token(layout: TenantLayout) -> &'static str {
    match layout {
        TenantLayout::PreSplit => "",
        TenantLayout::Split => {
            "INSERT INTO hitkeep_migration_checkpoints VALUES (CAST(uuidv7() AS VARCHAR));\n"
        }
    }
}

const DEMO_USER: &str = "00000000-0000-7000-8000-00000000d3e0";

/// Control rows of `sites`; a site without a tenant is the default tenant's (no site_tenants row).
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

/// Two years of analytics for `sites`, `hits` hits and the other tables in proportion, then the indexes.
fn fill(
    conn: &Connection,
    path: &Path,
    plan: &Plan,
    sites: &[Uuid],
    hits: u64,
) -> Result<(), DataError> {
    let site_list = sites
        .iter()
        .map(|s| format!("'{s}'::UUID"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
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
        CREATE TEMP TABLE demo_s AS SELECT unnest(sites) AS site FROM demo_c;
        "#
    );
    sql.push_str(&raw_rows(plan.now, sites.len(), hits));
    sql.push_str(&daily_rows(plan));
    sql.push_str(&rollups(plan.now));
    sql.push_str("DROP TABLE demo_c; DROP TABLE demo_s;\n");
    sql.push_str(&schema::analytics_indexes(plan.layout));
    run(conn, path, &sql)
}

/// hits, events, web_vitals, ai_fetches and qr_code_opens: `hits` hits, the others in proportion, at
/// times spread over the two years before `now`, each table's rows in the order of their times.
fn raw_rows(now: i64, ns: usize, hits: u64) -> String {
    // HitKeep appends rows as they arrive, so a table's rows are stored oldest first (the uuidv7 ids
    // here roughly follow the storage order, by when they were generated). Random times in random
    // order may make index builds and time-range scans slower than on a real installation, and the
    // bench would measure that instead. Row i of `count` falls at its share of the two years before
    // now, less up to five minutes of jitter (a late batch), so the times stay within those two
    // years, as TIMESTAMPTZ in UTC.
    let ts = |seed: &str, count: u64| {
        let count = count.max(1);
        format!("to_timestamp({now} - ({count} - i) * 63071700 // {count} - hk_hash({seed}) % 300)")
    };
    format!(
        r#"
        INSERT INTO hits SELECT
            uuidv7(), c.sites[1 + i % {ns}], gen_random_uuid(), gen_random_uuid(), {hit_ts},
            c.paths[1 + hk_hash(i * 7) % 8], 'example.com', c.referrers[1 + hk_hash(i * 11) % 5],
            'Mozilla/5.0 (X11; Linux x86_64) HitKeepDemo', 1280, 720, 1920, 1080, c.languages[1 + hk_hash(i * 13) % 8],
            hk_hash(i * 3) % 3 = 0, c.countries[1 + hk_hash(i * 13) % 8],
            CASE WHEN i % 10 = 0 THEN 'newsletter' END, CASE WHEN i % 10 = 0 THEN 'email' END,
            CASE WHEN i % 10 = 0 THEN 'launch' END, NULL, NULL,
            'Region ' || (hk_hash(i * 13) % 8), c.cities[1 + hk_hash(i * 13) % 8], 'ISP ' || (hk_hash(i * 17) % 20),
            CAST(64500 + hk_hash(i * 17) % 20 AS INTEGER), 'AS Org ' || (hk_hash(i * 17) % 20), NULL
        FROM range({hits}) t(i), demo_c c;
        INSERT INTO events SELECT uuidv7(), c.sites[1 + i % {ns}], gen_random_uuid(),
            ['signup', 'download', 'outbound_click'][1 + i % 3], json_object('plan', ['free', 'pro'][1 + i % 2], 'n', i), {ev_ts}
        FROM range({events}) t(i), demo_c c;
        INSERT INTO web_vitals SELECT uuidv7(), c.sites[1 + i % {ns}], gen_random_uuid(), gen_random_uuid(),
            ['LCP', 'INP', 'CLS', 'FCP', 'TTFB'][1 + i % 5], 'v' || i, (hk_hash(i) % 4000) / 1000.0,
            ['good', 'needs_improvement', 'poor'][1 + hk_hash(i * 5) % 3], c.paths[1 + hk_hash(i * 7) % 8], 'navigate', {wv_ts},
            'script', '2.8.1'
        FROM range({vitals}) t(i), demo_c c;
        INSERT INTO ai_fetches SELECT uuidv7(), c.sites[1 + i % {ns}], {ai_ts},
            ['ChatGPT-User', 'ClaudeBot', 'PerplexityBot'][1 + i % 3], ['openai', 'anthropic', 'perplexity'][1 + i % 3],
            c.paths[1 + hk_hash(i * 7) % 8], 'example.com', 200, 'text/html', 'page', CAST(hk_hash(i) % 500 AS INTEGER),
            CAST(hk_hash(i) % 100000 AS BIGINT), 'Mozilla/5.0 (compatible; bot)'
        FROM range({ai}) t(i), demo_c c;
        INSERT INTO qr_code_opens SELECT uuidv7(), c.sites[1 + i % {ns}], gen_random_uuid(), {qr_ts},
            '', 'Mozilla/5.0 (iPhone)', c.countries[1 + hk_hash(i) % 8], 'Region ' || (hk_hash(i) % 8),
            c.cities[1 + hk_hash(i) % 8], 'Mobile ISP', 64512, 'AS Mobile'
        FROM range({qr}) t(i), demo_c c;
        "#,
        hit_ts = ts("i", hits),
        ev_ts = ts("i * 19", hits / 5),
        wv_ts = ts("i * 23", hits / 10),
        ai_ts = ts("i * 29", hits / 50),
        qr_ts = ts("i * 31", hits / 100),
        events = hits / 5,
        vitals = hits / 10,
        ai = hits / 50,
        qr = hits / 100,
    )
}

/// Per-site rows by day: imports (the older year), goals and funnels, the dirty-bucket queue (from today
/// back two years) and, on 2.13, Search Console facts and totals for every day of the two years.
fn daily_rows(plan: &Plan) -> String {
    let now = plan.now;
    let today = format!("(DATE '1970-01-01' + CAST({now} // 86400 AS INTEGER))");
    let import = "'00000000-0000-7000-8000-0000000001a0'";
    let imported = |table: &str, values: &str| {
        format!(
            "INSERT INTO {table} SELECT s.site, {import}, {today} - 730 + CAST(d.i AS INTEGER), 'plausible-export.zip', {values} FROM range(365) d(i), demo_s s;\n"
        )
    };
    let mut sql = [
        imported(
            "imported_traffic_daily",
            "100 + d.i % 50, 120 + d.i % 60, 300 + d.i % 90, 40, 9000",
        ),
        imported(
            "imported_dimension_daily",
            "'country', 'DE', 'Dortmund', 10, 12, 30, 4, 900, 2, 10, 9",
        ),
        imported("imported_event_daily", "'signup', '/pricing', '', 3, 4"),
        imported(
            "imported_event_dimensions_daily",
            "'signup', 'city', 'Dortmund', '', 2, 2",
        ),
        imported(
            "imported_event_properties_daily",
            "'signup', 'plan', 'pro', 1, 1",
        ),
    ]
    .concat();
    let day0 = now - now % 86400;
    sql.push_str(&format!(
        r#"
        INSERT INTO goals SELECT uuidv7(), s.site, 'Signup', 'event', 'signup', to_timestamp({now} - 700 * 86400) FROM demo_s s;
        INSERT INTO funnels SELECT uuidv7(), s.site, 'Pricing to signup', '[{{"type": "path", "value": "/pricing"}}, {{"type": "event", "value": "signup"}}]',
            to_timestamp({now} - 700 * 86400) FROM demo_s s;
        -- Every (type, unit) pair once per group; a group every 61 days from today back two years.
        INSERT INTO rollup_dirty_buckets SELECT s.site, ['hit', 'session'][1 + d.i % 2], ['hour', 'day', 'month'][1 + (d.i // 2) % 3],
            to_timestamp({day0} - (d.i // 6) * 61 * 86400), to_timestamp({now} - (d.i // 6) * 61 * 86400)
        FROM range(72) d(i), demo_s s;
        "#
    ));
    if plan.layout == TenantLayout::Split {
        sql.push_str(&search_console_rows(now, &today));
    }
    sql
}

/// Three facts a day per site (one per query) and the day's totals marker, for two years.
fn search_console_rows(now: i64, today: &str) -> String {
    format!(
        r#"
        INSERT INTO search_console_facts SELECT s.site, 'sc-domain:' || CAST(s.site AS VARCHAR) || '.example.com',
            {today} - 730 + CAST(d.i // 3 AS INTEGER), ['hitkeep', 'duckdb backup', 'self-hosted analytics'][1 + d.i % 3],
            'https://' || CAST(s.site AS VARCHAR) || '.example.com' || c.paths[1 + hk_hash(d.i) % 8], 'deu',
            ['DESKTOP', 'MOBILE'][1 + hk_hash(d.i * 3) % 2], hk_hash(d.i) % 40, 40 + hk_hash(d.i * 5) % 400,
            (hk_hash(d.i) % 40) / (40.0 + hk_hash(d.i * 5) % 400), 1 + (hk_hash(d.i * 7) % 300) / 10.0, 'byPage', 'final',
            to_timestamp({now} - (729 - d.i // 3) * 86400)
        FROM range(730 * 3) d(i), demo_s s, demo_c c;
        INSERT INTO search_console_totals_days SELECT s.site, 'sc-domain:' || CAST(s.site AS VARCHAR) || '.example.com', 'final',
            {today} - 730 + CAST(d.i AS INTEGER)
        FROM range(730) d(i), demo_s s;
        "#
    )
}

/// Rollups for every hour, day and month of the two years, per site, with plausible counts; goal and
/// funnel rollups count each site's goal and funnel.
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
        let range = format!("range({count}) g(i)");
        sql.push_str(&format!(
            "INSERT INTO hit_rollups_{grain} SELECT s.site, {bucket}, 10 + hk_hash(g.i) % 90, 5 + hk_hash(g.i * 3) % 40 FROM {range}, demo_s s;
             INSERT INTO session_rollups_{grain} SELECT s.site, {bucket}, 8 + hk_hash(g.i) % 50, hk_hash(g.i * 5) % 8, (hk_hash(g.i) % 5000) * 1.5, 10 + hk_hash(g.i) % 90 FROM {range}, demo_s s;
             INSERT INTO goal_rollups_{grain} SELECT o.site_id, o.id, {bucket}, hk_hash(g.i * 7) % 10 FROM {range}, goals o;
             INSERT INTO funnel_rollups_{grain} SELECT o.site_id, o.id, {bucket}, hk_hash(g.i * 11) % 20, hk_hash(g.i * 13) % 5 FROM {range}, funnels o;\n"
        ));
    }
    sql
}
