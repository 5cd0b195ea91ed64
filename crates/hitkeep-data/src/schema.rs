//! HitKeep's table definitions, for the demo data set, in the shapes of two releases: 2.8 (before the
//! tenant split) and 2.13 (after it). Taken from HitKeep's migrations; the index names are HitKeep's own.
//!
//! What 2.13 changed (`0013_drop_analytics_art_indexes.sql` and its shared twin, then
//! `0016_drop_search_console_fact_art_indexes.sql`): hits, events, web_vitals and search_console_facts
//! were rebuilt with `CREATE TABLE … AS SELECT`, which leaves no primary key, index or CHECK behind; the
//! migration then restores `id DEFAULT uuidv7()` and the NOT NULL constraints. Everything else keeps the
//! keys and indexes of 2.8.
//!
//! Deviations, kept on purpose: HitKeep's shared database also has foreign keys from hits, events, goals
//! and funnels to `sites` (2.8 only for hits and events); the demo keeps only `ai_fetches`' one, which
//! HitKeep has in every database. The imported_* tables keep the demo's nullable counters and
//! `source_file` (HitKeep: NOT NULL, DEFAULT 0), so hand-written test rows can leave them out.
//! `events.properties` is JSON, as in HitKeep, which is why the duckdb crate is built with its `json`
//! feature (a JSON column cannot even be opened without it when offline).

use crate::TenantLayout;

/// The control (shared) database's own tables; 2.13 adds [`DATA_MIGRATIONS`] and [`CHECKPOINTS`].
pub(crate) const CONTROL: &str = r#"
CREATE TABLE migrations (migration VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL);
CREATE TABLE users (id UUID PRIMARY KEY DEFAULT uuidv7(), email VARCHAR UNIQUE NOT NULL, created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE sites (
    id UUID PRIMARY KEY DEFAULT uuidv7(), user_id UUID NOT NULL, domain VARCHAR UNIQUE NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, data_retention_days INTEGER DEFAULT 365);
CREATE TABLE tenants (
    id UUID PRIMARY KEY DEFAULT uuidv7(), name VARCHAR NOT NULL, is_default BOOLEAN DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), logo_url VARCHAR DEFAULT '');
CREATE TABLE site_tenants (
    site_id UUID PRIMARY KEY, tenant_id UUID NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    UNIQUE (site_id, tenant_id));
CREATE TABLE tenant_archives (tenant_id UUID PRIMARY KEY, archived_at TIMESTAMPTZ NOT NULL, archived_by UUID);
CREATE TABLE qr_codes (id UUID PRIMARY KEY DEFAULT uuidv7(), site_id UUID NOT NULL, name VARCHAR, archived_at TIMESTAMPTZ);
CREATE TABLE qr_code_assets (
    qr_code_id UUID PRIMARY KEY, site_id UUID NOT NULL, filename VARCHAR, content_type VARCHAR, byte_size BIGINT,
    width INTEGER, height INTEGER, checksum VARCHAR, storage_key VARCHAR NOT NULL DEFAULT '', data BLOB,
    created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ);
"#;

/// A tenant database's own tables: its migrations (no key, unlike the control database's) and the mirror
/// of its sites.
pub(crate) const TENANT: &str = r#"
CREATE TABLE migrations (migration VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL);
CREATE TABLE sites (id UUID PRIMARY KEY, domain VARCHAR NOT NULL, data_retention_days INTEGER DEFAULT 365);
"#;

/// 2.13's data-migration markers, where the split is recorded (control database only).
pub(crate) const DATA_MIGRATIONS: &str =
    "CREATE TABLE data_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL);\n";

/// 2.13's migration guard token, in the control database and every tenant database.
pub(crate) const CHECKPOINTS: &str =
    "CREATE TABLE hitkeep_migration_checkpoints (checkpoint_token VARCHAR NOT NULL);\n";

/// The analytics tables of one database, without their secondary indexes ([`analytics_indexes`]): a
/// tenant's, or the control database's copies (empty there after the split).
pub(crate) fn analytics_tables(layout: TenantLayout) -> String {
    let mut sql = raw_tables(layout);
    sql.push_str(KEYED_TABLES);
    sql.push_str(&rollup_tables());
    if layout == TenantLayout::Split {
        sql.push_str(SEARCH_CONSOLE);
    }
    sql
}

/// HitKeep's secondary indexes on the analytics tables: created after the bulk insert, which is faster
/// than keeping them up to date row by row (primary keys are in the table definitions).
pub(crate) fn analytics_indexes(layout: TenantLayout) -> String {
    let mut sql = String::from(KEYED_INDEXES);
    sql.push_str(&rollup_indexes());
    if layout == TenantLayout::PreSplit {
        sql.push_str(PRE_SPLIT_RAW_INDEXES);
    }
    sql
}

/// hits, events and web_vitals: keyed, indexed and checked in 2.8; in 2.13 only the NOT NULLs and the
/// `uuidv7()` default of `id` are left.
fn raw_tables(layout: TenantLayout) -> String {
    let (id, metric_check, rating_check) = match layout {
        TenantLayout::PreSplit => (
            "id UUID PRIMARY KEY DEFAULT uuidv7()",
            " CHECK (metric IN ('LCP', 'INP', 'CLS', 'FCP', 'TTFB'))",
            " CHECK (rating IN ('good', 'needs_improvement', 'poor'))",
        ),
        TenantLayout::Split => ("id UUID NOT NULL DEFAULT uuidv7()", "", ""),
    };
    format!(
        r#"
CREATE TABLE hits (
    {id}, site_id UUID NOT NULL, session_id UUID NOT NULL, page_id UUID NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL, path VARCHAR NOT NULL, hostname VARCHAR, referrer VARCHAR, user_agent VARCHAR,
    viewport_width INTEGER, viewport_height INTEGER, screen_width INTEGER, screen_height INTEGER, language VARCHAR,
    is_unique BOOLEAN, country_code VARCHAR, utm_source VARCHAR, utm_medium VARCHAR, utm_campaign VARCHAR,
    utm_term VARCHAR, utm_content VARCHAR, region VARCHAR, city VARCHAR, provider VARCHAR, asn INTEGER,
    asn_org VARCHAR, qr_code_id UUID);
CREATE TABLE events (
    {id}, site_id UUID NOT NULL, session_id UUID NOT NULL, name VARCHAR NOT NULL,
    properties JSON, timestamp TIMESTAMPTZ NOT NULL);
CREATE TABLE web_vitals (
    {id}, site_id UUID NOT NULL, session_id UUID NOT NULL, page_id UUID NOT NULL,
    metric VARCHAR NOT NULL{metric_check}, metric_id VARCHAR, value DOUBLE NOT NULL,
    rating VARCHAR NOT NULL{rating_check}, path VARCHAR NOT NULL, navigation_type VARCHAR,
    timestamp TIMESTAMPTZ NOT NULL, tracker_source VARCHAR, tracker_version VARCHAR);
"#
    )
}

/// The indexes 2.13 dropped (`0013_drop_analytics_art_indexes.sql` names them).
const PRE_SPLIT_RAW_INDEXES: &str = r#"
CREATE INDEX hits_site_id_timestamp_idx ON hits (site_id, timestamp);
CREATE INDEX hits_qr_code_id_idx ON hits (site_id, qr_code_id, timestamp);
CREATE INDEX events_site_id_timestamp_idx ON events (site_id, timestamp);
CREATE INDEX web_vitals_site_time_idx ON web_vitals (site_id, timestamp);
CREATE INDEX web_vitals_site_metric_time_idx ON web_vitals (site_id, metric, timestamp);
CREATE INDEX web_vitals_site_path_time_idx ON web_vitals (site_id, path, timestamp);
"#;

/// Tables whose shape is the same in 2.8 and 2.13.
const KEYED_TABLES: &str = r#"
CREATE TABLE goals (
    id UUID PRIMARY KEY DEFAULT uuidv7(), site_id UUID NOT NULL, name VARCHAR NOT NULL,
    type VARCHAR NOT NULL CHECK (type IN ('event', 'path')), value VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE funnels (
    id UUID PRIMARY KEY DEFAULT uuidv7(), site_id UUID NOT NULL, name VARCHAR NOT NULL, steps JSON NOT NULL,
    created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE ai_fetches (
    id UUID PRIMARY KEY DEFAULT uuidv7(), site_id UUID NOT NULL REFERENCES sites(id), timestamp TIMESTAMPTZ NOT NULL,
    assistant_name VARCHAR NOT NULL, assistant_family VARCHAR NOT NULL, path VARCHAR NOT NULL, hostname VARCHAR,
    status_code INTEGER NOT NULL, content_type VARCHAR, resource_type VARCHAR NOT NULL, response_ms INTEGER,
    bytes_served BIGINT, user_agent VARCHAR);
CREATE TABLE qr_code_opens (
    id UUID PRIMARY KEY DEFAULT uuidv7(), site_id UUID NOT NULL, qr_code_id UUID NOT NULL, timestamp TIMESTAMPTZ NOT NULL,
    referrer VARCHAR, user_agent VARCHAR, country_code VARCHAR, region VARCHAR, city VARCHAR, provider VARCHAR,
    asn INTEGER, asn_org VARCHAR);
CREATE TABLE imported_traffic_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    visitors BIGINT, visits BIGINT, pageviews BIGINT, bounces BIGINT, visit_duration BIGINT);
CREATE TABLE imported_dimension_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    dimension VARCHAR, name VARCHAR, detail VARCHAR, visitors BIGINT, visits BIGINT, pageviews BIGINT,
    bounces BIGINT, visit_duration BIGINT, events BIGINT, entrances BIGINT, exits BIGINT);
CREATE TABLE imported_event_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    event_name VARCHAR, path VARCHAR, link_url VARCHAR, visitors BIGINT, events BIGINT);
CREATE TABLE imported_event_dimensions_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    event_name VARCHAR, dimension VARCHAR, name VARCHAR, detail VARCHAR, visitors BIGINT, events BIGINT);
CREATE TABLE imported_event_properties_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    event_name VARCHAR NOT NULL DEFAULT '', property_key VARCHAR, property_value VARCHAR, visitors BIGINT, events BIGINT);
CREATE TABLE rollup_dirty_buckets (
    site_id UUID NOT NULL, rollup_type VARCHAR NOT NULL CHECK (rollup_type IN ('hit', 'session')),
    bucket_unit VARCHAR NOT NULL CHECK (bucket_unit IN ('hour', 'day', 'month')), bucket TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (site_id, rollup_type, bucket_unit, bucket));
"#;

const KEYED_INDEXES: &str = r#"
CREATE INDEX goals_site_id_idx ON goals (site_id);
CREATE INDEX funnels_site_id_idx ON funnels (site_id);
CREATE INDEX ai_fetches_site_id_timestamp_idx ON ai_fetches (site_id, timestamp);
CREATE INDEX qr_code_opens_site_time_idx ON qr_code_opens (site_id, timestamp);
CREATE INDEX qr_code_opens_qr_time_idx ON qr_code_opens (qr_code_id, timestamp);
CREATE INDEX imported_traffic_daily_site_date_idx ON imported_traffic_daily (site_id, date);
CREATE INDEX imported_traffic_daily_import_idx ON imported_traffic_daily (import_id);
CREATE INDEX imported_dimension_daily_site_dim_date_idx ON imported_dimension_daily (site_id, dimension, date);
CREATE INDEX imported_dimension_daily_import_idx ON imported_dimension_daily (import_id);
CREATE INDEX imported_event_daily_site_event_date_idx ON imported_event_daily (site_id, event_name, date);
CREATE INDEX imported_event_daily_import_idx ON imported_event_daily (import_id);
CREATE INDEX imported_event_dimensions_daily_site_dim_date_idx ON imported_event_dimensions_daily (site_id, event_name, dimension, date);
CREATE INDEX imported_event_dimensions_daily_import_idx ON imported_event_dimensions_daily (import_id);
CREATE INDEX imported_event_properties_daily_site_event_date_idx ON imported_event_properties_daily (site_id, event_name, date);
CREATE INDEX imported_event_properties_daily_key_idx ON imported_event_properties_daily (site_id, property_key, date);
CREATE INDEX imported_event_properties_daily_import_idx ON imported_event_properties_daily (import_id);
CREATE INDEX rollup_dirty_buckets_site_updated_idx ON rollup_dirty_buckets (site_id, updated_at);
"#;

/// Search Console, 2.13's shape (the 2.8 demo has none, so that archives learn to skip missing tables):
/// facts without their old key and indexes, and the per-day totals table, which never had keys.
const SEARCH_CONSOLE: &str = r#"
CREATE TABLE search_console_facts (
    site_id UUID NOT NULL, property_uri VARCHAR NOT NULL, date DATE NOT NULL,
    query VARCHAR NOT NULL DEFAULT '', page VARCHAR NOT NULL DEFAULT '', country VARCHAR NOT NULL DEFAULT '',
    device VARCHAR NOT NULL DEFAULT '', clicks BIGINT NOT NULL DEFAULT 0, impressions BIGINT NOT NULL DEFAULT 0,
    ctr DOUBLE NOT NULL DEFAULT 0, position DOUBLE NOT NULL DEFAULT 0, aggregation_type VARCHAR NOT NULL DEFAULT '',
    data_state VARCHAR NOT NULL DEFAULT 'final', imported_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE search_console_totals_days (
    site_id UUID NOT NULL, property_uri VARCHAR NOT NULL, data_state VARCHAR NOT NULL, date DATE NOT NULL);
"#;

/// The rollup kinds: name, the columns between `site_id` and `bucket` (part of the key), and the counters.
const ROLLUP_KINDS: [(&str, &str, &str); 4] = [
    (
        "hit",
        "",
        "pageviews BIGINT NOT NULL, visitors BIGINT NOT NULL",
    ),
    (
        "session",
        "",
        "sessions BIGINT NOT NULL, bounced_sessions BIGINT NOT NULL, duration_sum_seconds DOUBLE NOT NULL, pageviews BIGINT NOT NULL",
    ),
    ("goal", "goal_id", "conversions BIGINT NOT NULL"),
    (
        "funnel",
        "funnel_id",
        "entries BIGINT NOT NULL, completions BIGINT NOT NULL",
    ),
];

/// Rollup grains and their bucket type.
const ROLLUP_GRAINS: [(&str, &str); 3] = [
    ("hourly", "TIMESTAMPTZ"),
    ("daily", "DATE"),
    ("monthly", "DATE"),
];

/// The twelve rollup tables, keyed on (site_id[, goal_id | funnel_id], bucket).
fn rollup_tables() -> String {
    let mut sql = String::new();
    for (kind, key, counters) in ROLLUP_KINDS {
        let (key_column, key) = match key {
            "" => (String::new(), String::new()),
            k => (format!("{k} UUID NOT NULL, "), format!(", {k}")),
        };
        for (grain, bucket) in ROLLUP_GRAINS {
            sql.push_str(&format!(
                "CREATE TABLE {kind}_rollups_{grain} (site_id UUID NOT NULL, {key_column}bucket {bucket} NOT NULL, {counters}, PRIMARY KEY (site_id{key}, bucket));\n"
            ));
        }
    }
    sql
}

/// `<table>_site_bucket_idx` on every rollup, and `<table>_goal_bucket_idx` / `_funnel_bucket_idx`.
fn rollup_indexes() -> String {
    let mut sql = String::new();
    for (kind, key, _) in ROLLUP_KINDS {
        for (grain, _) in ROLLUP_GRAINS {
            let table = format!("{kind}_rollups_{grain}");
            sql.push_str(&format!(
                "CREATE INDEX {table}_site_bucket_idx ON {table} (site_id, bucket);\n"
            ));
            if let Some(short) = key.strip_suffix("_id") {
                sql.push_str(&format!(
                    "CREATE INDEX {table}_{short}_bucket_idx ON {table} ({key}, bucket);\n"
                ));
            }
        }
    }
    sql
}
