//! HitKeep's table definitions (section 3 of the behaviour reference), for the demo data set.
//!
//! Deviation: HitKeep declares `events.properties` as JSON; so do we, which is why the duckdb crate is
//! built with its `json` feature (a JSON column cannot even be opened without it when offline).

/// Tables every database has: the analytics of one tenant.
pub(crate) const ANALYTICS: &str = r#"
CREATE TABLE IF NOT EXISTS migrations (name VARCHAR, applied_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS hits (
    id UUID PRIMARY KEY, site_id UUID NOT NULL, session_id UUID NOT NULL, page_id UUID NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL, path VARCHAR NOT NULL, hostname VARCHAR, referrer VARCHAR, user_agent VARCHAR,
    viewport_width INTEGER, viewport_height INTEGER, screen_width INTEGER, screen_height INTEGER, language VARCHAR,
    is_unique BOOLEAN, country_code VARCHAR, utm_source VARCHAR, utm_medium VARCHAR, utm_campaign VARCHAR,
    utm_term VARCHAR, utm_content VARCHAR, region VARCHAR, city VARCHAR, provider VARCHAR, asn INTEGER,
    asn_org VARCHAR, qr_code_id UUID);
CREATE INDEX IF NOT EXISTS idx_hits_site_ts ON hits(site_id, timestamp);
CREATE TABLE IF NOT EXISTS events (
    id UUID PRIMARY KEY, site_id UUID NOT NULL, session_id UUID NOT NULL, name VARCHAR NOT NULL,
    properties JSON, timestamp TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS web_vitals (
    id UUID PRIMARY KEY, site_id UUID NOT NULL, session_id UUID, page_id UUID,
    metric VARCHAR CHECK (metric IN ('LCP','INP','CLS','FCP','TTFB')), metric_id VARCHAR, value DOUBLE,
    rating VARCHAR CHECK (rating IN ('good','needs_improvement','poor')), path VARCHAR, navigation_type VARCHAR,
    timestamp TIMESTAMPTZ NOT NULL, tracker_source VARCHAR, tracker_version VARCHAR);
CREATE TABLE IF NOT EXISTS ai_fetches (
    id UUID PRIMARY KEY, site_id UUID NOT NULL, timestamp TIMESTAMPTZ NOT NULL, assistant_name VARCHAR,
    assistant_family VARCHAR, path VARCHAR, hostname VARCHAR, status_code INTEGER, content_type VARCHAR,
    resource_type VARCHAR, response_ms INTEGER, bytes_served BIGINT, user_agent VARCHAR);
CREATE TABLE IF NOT EXISTS qr_code_opens (
    id UUID PRIMARY KEY, site_id UUID NOT NULL, qr_code_id UUID, timestamp TIMESTAMPTZ NOT NULL, referrer VARCHAR,
    user_agent VARCHAR, country_code VARCHAR, region VARCHAR, city VARCHAR, provider VARCHAR, asn INTEGER, asn_org VARCHAR);
CREATE TABLE IF NOT EXISTS imported_traffic_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    visitors BIGINT, visits BIGINT, pageviews BIGINT, bounces BIGINT, visit_duration BIGINT);
CREATE TABLE IF NOT EXISTS imported_dimension_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    dimension VARCHAR, name VARCHAR, detail VARCHAR, visitors BIGINT, visits BIGINT, pageviews BIGINT,
    bounces BIGINT, visit_duration BIGINT, events BIGINT, entrances BIGINT, exits BIGINT);
CREATE TABLE IF NOT EXISTS imported_event_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    event_name VARCHAR, path VARCHAR, link_url VARCHAR, visitors BIGINT, events BIGINT);
CREATE TABLE IF NOT EXISTS imported_event_dimensions_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    event_name VARCHAR, dimension VARCHAR, name VARCHAR, detail VARCHAR, visitors BIGINT, events BIGINT);
CREATE TABLE IF NOT EXISTS imported_event_properties_daily (
    site_id UUID NOT NULL, import_id UUID NOT NULL, date DATE NOT NULL, source_file VARCHAR,
    event_name VARCHAR NOT NULL DEFAULT '', property_key VARCHAR, property_value VARCHAR, visitors BIGINT, events BIGINT);
CREATE TABLE IF NOT EXISTS rollup_dirty_buckets (site_id UUID, bucket TIMESTAMPTZ);
"#;

/// The twelve rollup tables: (name, bucket type, value columns).
pub(crate) fn rollup_ddl() -> String {
    let kinds = [
        ("hit", "pageviews BIGINT, visitors BIGINT", ""),
        (
            "session",
            "sessions BIGINT, bounced_sessions BIGINT, duration_sum_seconds DOUBLE, pageviews BIGINT",
            "",
        ),
        (
            "goal",
            "goal_id UUID NOT NULL, conversions BIGINT",
            ", goal_id",
        ),
        (
            "funnel",
            "funnel_id UUID NOT NULL, entries BIGINT, completions BIGINT",
            ", funnel_id",
        ),
    ];
    let grains = [
        ("hourly", "TIMESTAMPTZ"),
        ("daily", "DATE"),
        ("monthly", "DATE"),
    ];
    let mut sql = String::new();
    for (kind, columns, key) in kinds {
        for (grain, bucket) in grains {
            sql.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {kind}_rollups_{grain} (site_id UUID NOT NULL, bucket {bucket} NOT NULL, {columns}, PRIMARY KEY (site_id, bucket{key}));\n"
            ));
        }
    }
    sql
}

/// A tenant database's mirror of its sites.
pub(crate) const TENANT_SITES: &str = "CREATE TABLE IF NOT EXISTS sites (id UUID PRIMARY KEY, domain VARCHAR NOT NULL, data_retention_days INTEGER DEFAULT 365);";

/// Control-plane tables that only the shared database has.
pub(crate) const SHARED: &str = r#"
CREATE TABLE IF NOT EXISTS sites (
    id UUID PRIMARY KEY, user_id UUID NOT NULL, domain VARCHAR UNIQUE NOT NULL, created_at TIMESTAMPTZ NOT NULL,
    data_retention_days INTEGER DEFAULT 365);
CREATE TABLE IF NOT EXISTS users (id UUID PRIMARY KEY, email VARCHAR UNIQUE NOT NULL, created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS tenants (
    id UUID PRIMARY KEY, name VARCHAR NOT NULL, is_default BOOLEAN DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL, logo_url VARCHAR DEFAULT '');
CREATE TABLE IF NOT EXISTS site_tenants (
    site_id UUID PRIMARY KEY, tenant_id UUID NOT NULL, created_at TIMESTAMPTZ NOT NULL, UNIQUE (site_id, tenant_id));
CREATE TABLE IF NOT EXISTS tenant_archives (tenant_id UUID PRIMARY KEY, archived_at TIMESTAMPTZ NOT NULL, archived_by UUID);
CREATE TABLE IF NOT EXISTS qr_codes (id UUID PRIMARY KEY, site_id UUID NOT NULL, name VARCHAR, archived_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS qr_code_assets (
    qr_code_id UUID PRIMARY KEY, site_id UUID NOT NULL, filename VARCHAR, content_type VARCHAR, byte_size BIGINT,
    width INTEGER, height INTEGER, checksum VARCHAR, storage_key VARCHAR NOT NULL DEFAULT '', data BLOB,
    created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ);
"#;
